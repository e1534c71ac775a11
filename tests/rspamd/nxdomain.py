#!/usr/bin/env python3
"""The private rspamd's resolver: answers every DNS query on 127.0.0.1:PORT (UDP) at once with
NXDOMAIN, so rspamd runs offline without waiting for timeouts (an absent PTR is then what it is
offline: RDNS_NONE) and nothing is ever asked of a real resolver. Bounded: one socket, one
datagram at a time, malformed queries dropped. Usage: nxdomain.py PORT PIDFILE (daemonizes)."""
import os
import socket
import sys


def answer(query: bytes) -> bytes | None:
    if len(query) < 12 or query[2] & 0x80:  # too short, or a response
        return None
    flags = bytes([0x80 | (query[2] & 0x79), 0x83])  # QR, same opcode and RD; RA; NXDOMAIN
    qdcount = int.from_bytes(query[4:6], "big")
    if qdcount != 1:
        return query[:2] + bytes([0x80 | (query[2] & 0x79), 0x81]) + b"\0\0" * 4  # FORMERR
    # Echo the question (name labels, then type and class).
    i = 12
    while i < len(query) and query[i] != 0:
        if query[i] & 0xC0:
            return None
        i += 1 + query[i]
    end = i + 5
    if end > len(query):
        return None
    return query[:2] + flags + b"\0\1\0\0\0\0\0\0" + query[12:end]


def main() -> None:
    port, pidfile = int(sys.argv[1]), sys.argv[2]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    if os.fork():
        os._exit(0)
    os.setsid()
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    while True:
        data, peer = s.recvfrom(4096)
        reply = answer(data)
        if reply:
            s.sendto(reply, peer)


if __name__ == "__main__":
    main()
