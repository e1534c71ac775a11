#!/usr/bin/env python3
"""Reads `dnsperf -v` output on stdin and prints `p50 p90 p99 p99.9` latencies in microseconds."""
import sys

lat = []
for line in sys.stdin:
    parts = line.split()
    if len(parts) >= 4 and parts[0] == ">":
        try:
            lat.append(float(parts[-1]))
        except ValueError:
            pass
lat.sort()
if not lat:
    print("- - - -")
    sys.exit(0)
pick = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6
print(" ".join(f"{pick(p):.0f}" for p in (0.50, 0.90, 0.99, 0.999)))
