#!/usr/bin/env python3
"""Hostile DATA: many senders each send a large body and stall before the final dot.

Starts `maildistiller --role all` on the shipped loopback config (in a scratch copy: its own
spool and certificates), then for each target — the engine's direct listener (2526) and the
edge (2525, which relays to the engines) — opens SESSIONS sessions, sends BODY_MIB MiB of
DATA on each without the final dot, waits, then finishes them all. Prints the process's RSS
(sampled every 50 ms: peak while the bodies stall, peak overall) and how many messages got a
250. Nothing is asserted here: the figures go into the issue note (goal: peak < 300 MiB,
every message answered 250 or a 4xx, none lost).

    bench/overload/hostile_data.py target/release/maildistiller [SESSIONS] [BODY_MIB]
"""
import os, re, shutil, socket, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, False

    def run(self):
        while not self.stop:
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return
            time.sleep(0.05)


def reply(f):
    lines = []
    while True:
        line = f.readline()
        if not line:
            return "EOF"
        lines.append(line.decode(errors="replace"))
        if len(line) < 4 or line[3:4] == b" ":
            return "".join(lines)


def wait_port(port, limit=60):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"port {port} never answered")


def start_session(port, i):
    s = socket.create_connection(("127.0.0.1", port), 30)
    f = s.makefile("rb")
    assert reply(f).startswith("220"), "banner"
    for cmd, want in ((f"EHLO hostile{i}.example", "250"), ("MAIL FROM:<x@hostile.example>", "250"),
                      ("RCPT TO:<bob@acme.example>", "250"), ("DATA", "354")):
        s.sendall(cmd.encode() + b"\r\n")
        r = reply(f)
        if not r.startswith(want):
            s.close()
            return None, r.strip()
    return (s, f), None


def run(port, label, pid, sessions, body_mib):
    line = b"X" * 998 + b"\r\n"
    chunk = b"Subject: hostile\r\n\r\n" + line * 1024  # ~1 MiB
    opened, refused = [], []
    sampler = Sampler(pid)
    base = rss_kib(pid)
    sampler.start()
    t0 = time.time()
    for i in range(sessions):
        conn, why = start_session(port, i)
        (opened.append(conn) if conn else refused.append(why))

    def feed(conn):
        try:
            for k in range(body_mib):
                conn[0].sendall(chunk if k == 0 else line * 1024)
        except OSError:
            pass
    threads = [threading.Thread(target=feed, args=(c,)) for c in opened]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(2)  # every body stalls before its dot
    stalled_peak = sampler.peak
    answers = {}
    for s, f in opened:
        try:
            s.sendall(b".\r\n")
        except OSError:
            pass
    for s, f in opened:
        try:
            s.settimeout(300)
            r = reply(f)[:3]
        except OSError:
            r = "io-error"
        answers[r] = answers.get(r, 0) + 1
        s.close()
    took = time.time() - t0
    time.sleep(1)
    sampler.stop = True
    sampler.join()
    print(f"{label:<24} sessions={len(opened)} refused_before_data={len(refused)} "
          f"body={body_mib} MiB  rss_before={base // 1024} MiB  peak_stalled={stalled_peak // 1024} MiB  "
          f"peak={sampler.peak // 1024} MiB  answers={answers}  {took:.1f}s")
    if refused:
        print(f"  first refusal: {refused[0]}")


def main():
    binary = os.path.abspath(sys.argv[1])
    sessions = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    body_mib = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    work = tempfile.mkdtemp(prefix="hostile-")
    os.makedirs(f"{work}/config")
    os.makedirs(f"{work}/target")
    text = open(f"{ROOT}/config/maildistiller.toml").read()
    text = text.replace('"../geo/', f'"{ROOT}/geo/')
    # Every session comes from 127.0.0.1: exempt loopback from the edge's per-address limits
    # (edge.exempt), so the edge admits the whole crowd and the engine's memory is what is measured.
    text = re.sub(r"^\[edge\]\n", '[edge]\nexempt = ["127.0.0.0/8"]\n', text, count=1, flags=re.M)
    open(f"{work}/config/maildistiller.toml", "w").write(text)
    log = open(f"{work}/log", "w")
    p = subprocess.Popen([binary, "--role", "all", "--config", f"{work}/config/maildistiller.toml"],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(2525)
        wait_port(2526)
        time.sleep(1)
        run(2526, "engine (direct 2526)", p.pid, sessions, body_mib)
        run(2525, "through the edge (2525)", p.pid, sessions, body_mib)
    finally:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
