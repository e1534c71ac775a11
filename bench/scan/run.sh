#!/usr/bin/env bash
# Scanning throughput per core (issue #6): Scanner::scan on one thread over a mixed corpus that
# bench/scan/throughput.rs generates, and over 4 KiB messages alone; built-in scanners, then
# with SPF/DKIM/DMARC against a loopback DNS server. Prints msgs/s, MB/s and µs per message.
#
#   bench/scan/run.sh                                  # 3 rounds of 3 s per measurement
#   SCAN_BENCH_SECONDS=1 SCAN_BENCH_ROUNDS=1 bench/scan/run.sh   # quick look
#
# The engine's accept rate with scanning on vs off is bench/engine/run.sh (SCANNERS=local|off).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo test --release --test it -- --ignored --exact scan::bench_scan_throughput --nocapture --test-threads 1
