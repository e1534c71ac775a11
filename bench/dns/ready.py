#!/usr/bin/env python3
"""Waits (at most 30 s) until a DNS server on 127.0.0.1:PORT answers `ZONE SOA`; exit 1 if not."""
import socket
import struct
import sys
import time

port, zone = int(sys.argv[1]), sys.argv[2]
q = struct.pack(">HHHHHH", 0x4242, 0, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in zone.split(".")) + b"\0" + struct.pack(">HH", 6, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
deadline = time.time() + 30
while time.time() < deadline:
    s.sendto(q, ("127.0.0.1", port))
    try:
        data = s.recv(4096)
        if data[:2] == b"\x42\x42":
            sys.exit(0)
    except socket.timeout:
        pass
sys.exit(1)
