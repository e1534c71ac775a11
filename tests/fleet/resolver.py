#!/usr/bin/env python3
"""The fleet's "internet" resolver: what a sending MTA's recursive resolver does, in 150 lines.

    resolver.py --listen 127.0.0.53:53 --zone in.example.net --upstream 127.0.1.53:53 ... \
                --source 127.0.9.1 --records records.json

* Names inside --zone are forwarded, packet for packet, to the zone's name servers (our GeoDNS
  nodes), tried in the order given with a short timeout each, from --source (the address GeoDNS
  locates; the fleet config places it in London). Like a real resolver, a dead name server costs
  one timeout and the next is asked, and one that timed out is asked last for the next DEAD_FOR
  seconds (real resolvers keep such memory of servers too). No answer caching: every lookup
  sees GeoDNS's current answer.
* Other names come from --records, a JSON object {"name": {"MX": [[pref, "host"]], "A": ["ip"]}}:
  the tenants' own zones (MX pointing at the service) and the sender's domain.
Answers NXDOMAIN for unknown names, SERVFAIL when no name server of the zone answers.
UDP and TCP. Stdlib only.
"""

import argparse
import json
import socket
import socketserver
import struct
import threading
import time

TYPES = {"A": 1, "MX": 15, "TXT": 16, "AAAA": 28}
FORWARD_TIMEOUT = 0.7
DEAD_FOR = 5.0


def parse_question(pkt):
    """(id, flags, qname lowercased, qtype, end offset of the question) or None."""
    if len(pkt) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", pkt[:6])
    if qd != 1:
        return None
    labels, i = [], 12
    while i < len(pkt):
        n = pkt[i]
        if n == 0:
            i += 1
            break
        if n & 0xC0:
            return None
        labels.append(pkt[i + 1 : i + 1 + n].decode("ascii", "replace").lower())
        i += 1 + n
    if i + 4 > len(pkt):
        return None
    qtype = struct.unpack("!H", pkt[i : i + 2])[0]
    return qid, flags, ".".join(labels), qtype, i + 4


def encode_name(name):
    out = b""
    for label in name.strip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def static_answer(pkt, q, records):
    qid, flags, qname, qtype, qend = q
    entry = records.get(qname)
    rcode = 0 if entry is not None else 3
    answers = []
    for tname, values in (entry or {}).items():
        if TYPES.get(tname) != qtype:
            continue
        for v in values:
            if tname == "A":
                rdata = socket.inet_aton(v)
            elif tname == "AAAA":
                rdata = socket.inet_pton(socket.AF_INET6, v)
            elif tname == "MX":
                rdata = struct.pack("!H", v[0]) + encode_name(v[1])
            else:
                b = v.encode()
                rdata = bytes([len(b)]) + b
            answers.append(struct.pack("!HHHIH", 0xC00C, qtype, 1, 30, len(rdata)) + rdata)
    rd = flags & 0x0100
    hdr = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | 0x0080 | rd | rcode, 1, len(answers), 0, 0)
    return hdr + pkt[12:qend] + b"".join(answers)


def servfail(pkt, q):
    qid, flags, _, _, qend = q
    return struct.pack("!HHHHHH", qid, 0x8000 | 0x0080 | (flags & 0x0100) | 2, 1, 0, 0, 0) + pkt[12:qend]


class Resolver:
    def __init__(self, zone, upstream, source, records):
        self.zone = zone.lower().strip(".")
        self.upstream = upstream
        self.source = source
        self.records = records
        self.lock = threading.Lock()
        self.dead_until = {}  # upstream -> time before which it is tried last

    def in_zone(self, name):
        return name == self.zone or name.endswith("." + self.zone)

    def answer(self, pkt, tcp=False):
        q = parse_question(pkt)
        if q is None:
            return None
        if not self.in_zone(q[2]):
            return static_answer(pkt, q, self.records)
        now = time.time()
        with self.lock:
            order = sorted(self.upstream, key=lambda u: self.dead_until.get(u, 0) > now)
        for host, port in order:
            try:
                got = self.forward_tcp(pkt, host, port) if tcp else self.forward_udp(pkt, host, port)
                if got and got[:2] == pkt[:2]:
                    with self.lock:
                        self.dead_until.pop((host, port), None)
                    return got
            except OSError:
                with self.lock:
                    self.dead_until[(host, port)] = time.time() + DEAD_FOR
        return servfail(pkt, q)

    def forward_udp(self, pkt, host, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((self.source, 0))
            s.settimeout(FORWARD_TIMEOUT)
            s.sendto(pkt, (host, port))
            return s.recv(65535)

    def forward_tcp(self, pkt, host, port):
        with socket.create_connection((host, port), FORWARD_TIMEOUT, (self.source, 0)) as s:
            s.settimeout(FORWARD_TIMEOUT)
            s.sendall(struct.pack("!H", len(pkt)) + pkt)
            n = struct.unpack("!H", recv_exact(s, 2))[0]
            return recv_exact(s, n)


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("short read")
        buf += chunk
    return buf


class Udp(socketserver.ThreadingUDPServer):
    daemon_threads = True


class Tcp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True)
    p.add_argument("--zone", required=True)
    p.add_argument("--upstream", action="append", default=[])
    p.add_argument("--source", default="0.0.0.0")
    p.add_argument("--records", required=True)
    a = p.parse_args()
    with open(a.records) as f:
        records = {k.lower().strip("."): v for k, v in json.load(f).items()}
    ups = [(u.rsplit(":", 1)[0], int(u.rsplit(":", 1)[1])) for u in a.upstream]
    res = Resolver(a.zone, ups, a.source, records)

    class UdpHandler(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            out = res.answer(data)
            if out is not None:
                sock.sendto(out, self.client_address)

    class TcpHandler(socketserver.BaseRequestHandler):
        def handle(self):
            s = self.request
            s.settimeout(5)
            try:
                while True:
                    n = struct.unpack("!H", recv_exact(s, 2))[0]
                    out = res.answer(recv_exact(s, n), tcp=True)
                    if out is None:
                        return
                    s.sendall(struct.pack("!H", len(out)) + out)
            except (OSError, struct.error):
                return

    host, port = a.listen.rsplit(":", 1)
    udp = Udp((host, int(port)), UdpHandler)
    tcp = Tcp((host, int(port)), TcpHandler)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    udp.serve_forever()


if __name__ == "__main__":
    main()
