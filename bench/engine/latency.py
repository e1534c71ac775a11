#!/usr/bin/env python3
"""The time a sender waits for its 250: N messages of 4 KiB sent one after another in one SMTP
session to 127.0.0.1:PORT, each timed from the end-of-data dot to the reply. Prints
`p50 p90 p99 mean` in milliseconds (bench/engine/run.sh, rspamd mode, runs it on each peer with
and without rspamd; the difference is what scanning adds to the 250)."""
import socket
import statistics
import sys
import time

port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port), timeout=120)
f = s.makefile("rb")


def reply():
    while True:
        line = f.readline()
        if not line:
            raise SystemExit("connection closed")
        if line[3:4] != b"-":
            return line.decode("latin-1").strip()


def cmd(line, want):
    s.sendall(line.encode() + b"\r\n")
    r = reply()
    if not r.startswith(want):
        raise SystemExit(f"{line!r}: {r}")


reply()
cmd("EHLO latency.bench.example", "250")
body = "".join(f"{i}{'X' * 78}\r\n" for i in range(50))
times = []
for i in range(n):
    cmd("MAIL FROM:<from@bench.example>", "250")
    cmd("RCPT TO:<to@tenant.example>", "250")
    cmd("DATA", "354")
    s.sendall((f"From: <from@bench.example>\r\nTo: <to@tenant.example>\r\nSubject: latency {i}\r\n"
               f"Message-Id: <{i}.{time.time()}@bench.example>\r\n\r\n{body}").encode())
    t0 = time.monotonic()
    s.sendall(b".\r\n")
    r = reply()
    times.append((time.monotonic() - t0) * 1000)
    if not r.startswith("250"):
        raise SystemExit(f"message {i}: {r}")
cmd("QUIT", "221")
q = statistics.quantiles(times, n=100)
print(f"{q[49]:.2f} {q[89]:.2f} {q[98]:.2f} {statistics.mean(times):.2f}")
