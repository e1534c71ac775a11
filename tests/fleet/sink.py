#!/usr/bin/env python3
"""A tenant's mail server for the fleet: an SMTP server that records every message to disk.

    sink.py --listen 127.0.10.1:25 --dir DIR [--refuse-prefix nobody] [--tls-cert C --tls-key K]

Each accepted message becomes DIR/<ns>-<n>.eml (the DATA bytes, dot-unstuffed, exactly as
received) beside DIR/<ns>-<n>.json (envelope, peer, time of the end of DATA, and the TLS
version of the session or null when it was in clear). With --tls-cert/--tls-key the sink offers
STARTTLS (RFC 3207: the session starts over after the handshake). Files are written
to a temporary name and renamed, so a reader never sees half a message. Recipients whose local
part starts with --refuse-prefix get `550 5.1.1` (the fleet's way of making the service bounce
with a DSN). Stdlib only; one thread per connection, at most MAX_CONNS at once.
"""

import argparse
import json
import os
import socket
import socketserver
import ssl
import threading
import time

MAX_CONNS = 200
MAX_LINE = 4096
MAX_MESSAGE = 50 << 20

counter = 0
counter_lock = threading.Lock()
slots = threading.BoundedSemaphore(MAX_CONNS)


def next_name():
    global counter
    with counter_lock:
        counter += 1
        return f"{time.time_ns()}-{os.getpid()}-{counter}"


class Handler(socketserver.StreamRequestHandler):
    timeout = 60

    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def readline(self):
        line = self.rfile.readline(MAX_LINE)
        if not line:
            raise EOFError
        return line

    def handle(self):
        if not slots.acquire(blocking=False):
            self.reply("421 4.3.2 too many connections")
            return
        try:
            self.session()
        except (EOFError, OSError, socket.timeout):
            pass
        finally:
            slots.release()

    def starttls(self):
        """The 220 and the handshake; the session's files now read and write over TLS."""
        self.reply("220 2.0.0 ready to start TLS")
        self.connection = self.server.tls.wrap_socket(self.connection, server_side=True)
        self.rfile = self.connection.makefile("rb")
        self.wfile = self.connection.makefile("wb")
        self.tls = self.connection.version()

    def session(self):
        srv = self.server
        self.tls = None
        self.reply(f"220 {srv.hostname} ESMTP fleet sink")
        mail_from, rcpts = None, []
        while True:
            line = self.readline().rstrip(b"\r\n")
            verb = line[:4].upper()
            arg = line[5:].decode("utf-8", "replace") if len(line) > 5 else ""
            if verb in (b"EHLO", b"HELO"):
                mail_from, rcpts = None, []
                if verb == b"EHLO":
                    starttls = "250-STARTTLS\r\n" if srv.tls and not self.tls else ""
                    self.wfile.write(
                        f"250-{srv.hostname}\r\n{starttls}250-PIPELINING\r\n250-8BITMIME\r\n"
                        f"250 SIZE {MAX_MESSAGE}\r\n".encode()
                    )
                    self.wfile.flush()
                else:
                    self.reply(f"250 {srv.hostname}")
            elif line.upper() == b"STARTTLS":
                if not srv.tls or self.tls:
                    self.reply("502 5.5.1 STARTTLS not available")
                    continue
                self.starttls()
                mail_from, rcpts = None, []
            elif verb == b"MAIL":
                mail_from, rcpts = addr(arg), []
                self.reply("250 2.1.0 ok")
            elif verb == b"RCPT":
                if mail_from is None:
                    self.reply("503 5.5.1 MAIL first")
                    continue
                to = addr(arg)
                if srv.refuse_prefix and to.lower().startswith(srv.refuse_prefix):
                    self.reply("550 5.1.1 no such user here")
                else:
                    rcpts.append(to)
                    self.reply("250 2.1.5 ok")
            elif verb == b"DATA":
                if not rcpts:
                    self.reply("554 5.5.1 no valid recipients")
                    continue
                self.reply("354 go ahead")
                data = self.read_data()
                if data is None:
                    self.reply("552 5.3.4 message too big")
                else:
                    self.store(mail_from, rcpts, data)
                    self.reply("250 2.0.0 stored")
                mail_from, rcpts = None, []
            elif verb == b"RSET":
                mail_from, rcpts = None, []
                self.reply("250 2.0.0 ok")
            elif verb == b"NOOP":
                self.reply("250 2.0.0 ok")
            elif verb == b"QUIT":
                self.reply("221 2.0.0 bye")
                return
            else:
                self.reply("502 5.5.2 not implemented")

    def read_data(self):
        parts, size = [], 0
        while True:
            line = self.rfile.readline(1 << 20)
            if not line:
                raise EOFError
            if line == b".\r\n":
                break
            if line.startswith(b"."):
                line = line[1:]
            size += len(line)
            if size <= MAX_MESSAGE:
                parts.append(line)
        return b"".join(parts) if size <= MAX_MESSAGE else None

    def store(self, mail_from, rcpts, data):
        srv = self.server
        name = next_name()
        meta = {
            "from": mail_from,
            "rcpts": rcpts,
            "peer": self.client_address[0],
            "time": time.time(),
            "sink": srv.label,
            "tls": self.tls,
        }
        for suffix, content in ((".eml", data), (".json", json.dumps(meta).encode())):
            tmp = os.path.join(srv.dir, f".{name}{suffix}.tmp")
            with open(tmp, "wb") as f:
                f.write(content)
            os.rename(tmp, os.path.join(srv.dir, name + suffix))


def addr(arg):
    start, end = arg.find("<"), arg.find(">")
    if start >= 0 and end > start:
        return arg[start + 1 : end]
    return arg.split(":", 1)[-1].strip()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--label", default="sink")
    p.add_argument("--hostname", default="sink.fleet.test")
    p.add_argument("--refuse-prefix", default="")
    p.add_argument("--tls-cert", help="PEM certificate chain: offer STARTTLS")
    p.add_argument("--tls-key", help="PEM key of --tls-cert")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    os.makedirs(a.dir, exist_ok=True)
    srv = Server((host, int(port)), Handler)
    srv.dir, srv.label, srv.hostname = a.dir, a.label, a.hostname
    srv.refuse_prefix = a.refuse_prefix.lower()
    srv.tls = None
    if a.tls_cert:
        srv.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        srv.tls.load_cert_chain(a.tls_cert, a.tls_key)
    srv.serve_forever()


if __name__ == "__main__":
    main()
