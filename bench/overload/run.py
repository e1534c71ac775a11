#!/usr/bin/env python3
"""Overload: offer an edge + engine pair twice the load it can take, and show what it does.

Starts, on loopback, an `smtp-sink` that appends every message it receives to a dump file (the
tenant's server), one `maildistiller --role engine` (in-process scanners; SPF/DKIM/DMARC and
DNS lists off: no DNS here) and one `maildistiller --role edge` in front of it, each its own
process so each has its own RSS. Then, with one message per connection from many distinct
source addresses (127.P.Q.H: 256 /24 prefixes x 32 hosts, so the edge's per-address and
per-prefix admission applies as it would in the field):

1. capacity: CAP_CONCURRENCY senders back to back for CAP_SECONDS -> messages/s acknowledged;
2. unloaded: an open-loop stream at UNLOADED_FRACTION of that capacity for UNLOADED_SECONDS ->
   the p99 of the `250` after the final dot;
3. overload: an open-loop stream at OVERLOAD_FACTOR x capacity for OVERLOAD_SECONDS (new
   sessions on schedule, whatever happens to earlier ones), sampling both processes' RSS;
4. drain: until every message that got a `250` is at the sink (or DRAIN_MAX seconds).

Prints, for the overload phase: reply codes by the stage they came at (banner, EHLO, MAIL,
RCPT, DATA, the final dot), the p99 of admitted sessions' `250` against the unloaded p99, the
peak RSS of edge and engine, acknowledged vs delivered (lost, duplicates), and the engine's
per-check scan counters next to the count of `250`s. Every goal line says PASS or FAIL; the
script asserts nothing else (the figures go into README.md beside it).

    bench/overload/run.py                         # builds the release binary if missing
    MAILDISTILLER_BIN=target/release/maildistiller OVERLOAD_SECONDS=20 bench/overload/run.py

Needs smtp-sink (package postfix). Runs as root or not (as root smtp-sink drops to nobody).
"""
import asyncio, json, multiprocessing as mp, os, re, shutil, socket, subprocess, sys, tempfile
import threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = os.environ.get
# Closed-loop sender counts tried for the capacity; the best throughput is the capacity.
CAP_CONCURRENCY = [int(x) for x in ENV("CAP_CONCURRENCY", "16,64").split(",")]
CAP_SECONDS = float(ENV("CAP_SECONDS", "10"))
UNLOADED_FRACTION = float(ENV("UNLOADED_FRACTION", "0.1"))
UNLOADED_SECONDS = float(ENV("UNLOADED_SECONDS", "10"))
OVERLOAD_FACTOR = float(ENV("OVERLOAD_FACTOR", "2"))
OVERLOAD_SECONDS = float(ENV("OVERLOAD_SECONDS", "60"))
DRAIN_MAX = float(ENV("DRAIN_MAX", "300"))
CLIENT_PROCS = int(ENV("CLIENT_PROCS", "2"))   # load generator processes (asyncio each)
# The load generator: "rust" (bench/overload/load.rs, one thread: the default, built when
# missing) or "python" (the asyncio one below, CLIENT_PROCS processes; it fell seconds behind
# its schedule at 2x capacity and counted its own event loop's lag in the 250's latency).
LOADGEN = ENV("LOADGEN", "rust")
LOADGEN_BIN = None  # set by main()
REPLY_TIMEOUT = float(ENV("REPLY_TIMEOUT", "60"))  # a client waits this long for any reply
BODY_BYTES = int(ENV("BODY_BYTES", "4096"))
BASE_PORT = int(ENV("BASE_PORT", "28900"))
KEEP = ENV("KEEP", "0") == "1"
EDGE_EXTRA = ENV("EDGE_EXTRA", "")      # extra lines for [edge] (A/B runs of a setting)
ENGINE_EXTRA = ENV("ENGINE_EXTRA", "")  # extra lines for [engine]
# The engine's max_connections in the topology: sessions the edge sends it at once (500 by
# default); past it a recipient finds no engine and the edge sheds at the banner.
ENGINE_MAX_CONNECTIONS = ENV("ENGINE_MAX_CONNECTIONS", "")

EDGE, EDGE_OPS, ENGINE, ENGINE_OPS, SINK, DIRECT = (BASE_PORT + i for i in range(1, 7))
STAGES = ("connect", "banner", "ehlo", "mail", "rcpt", "data", "dot")


def log(msg):
    print(f"{time.strftime('%H:%M:%S')}  {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The load: one message per connection, from a rotating set of source addresses.

def source(k):
    p, h = k % 256, (k // 256) % 32
    return f"127.{10 + p // 256}.{p}.{h + 1}"


def message(run, i):
    head = (f"From: <s{i}@sender{i % 97}.example>\r\nTo: <user@tenant.example>\r\n"
            f"Subject: overload run {run}\r\nMessage-ID: <ovl-{run}-{i}@bench.example>\r\n"
            f"Date: Mon, 07 Dec 2026 18:00:00 +0000\r\n\r\n")
    line = "The quarterly figures are attached to the minutes of the meeting as agreed.\r\n"
    body = line * max(1, (BODY_BYTES - len(head)) // len(line))
    return (head + body + ".\r\n").encode()


async def read_reply(reader):
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
        if not line:
            raise ConnectionError("closed")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            text = line.decode(errors="replace").strip()
            return text[:3], " ".join(text.split()[:2])


async def one_session(run, i, port, stats):
    """Returns (stage, reply, dot_to_reply_seconds or None, i): `stage` is where the session
    ended (the step whose reply was not the expected one, or `dot` when the message was
    answered), `reply` the code and enhanced code of that reply."""
    stage, writer = "connect", None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source(i), 0)), REPLY_TIMEOUT)
        stage = "banner"
        code, full = await read_reply(reader)
        if code != "220":
            return stage, full, None, i
        for stage, cmd, want in (("ehlo", b"EHLO client.example\r\n", "250"),
                                 ("mail", f"MAIL FROM:<s{i}@sender{i % 97}.example>\r\n".encode(), "250"),
                                 ("rcpt", b"RCPT TO:<user@tenant.example>\r\n", "250"),
                                 ("data", b"DATA\r\n", "354")):
            writer.write(cmd)
            code, full = await read_reply(reader)
            if code != want:
                return stage, full, None, i
        stage = "dot"
        writer.write(message(run, i))
        t = time.monotonic()
        code, full = await read_reply(reader)
        took = time.monotonic() - t
        writer.write(b"QUIT\r\n")
        return stage, full, took if code == "250" else None, i
    except asyncio.TimeoutError:
        return stage, "timeout", None, i
    except (OSError, ConnectionError) as e:
        return stage, "io:" + type(e).__name__, None, i
    finally:
        if writer is not None:
            writer.close()


async def open_loop(run, port, rate, seconds, first, step, out):
    """Starts session first, first+step, ... at `rate`/s (this process's share) on schedule."""
    tasks, n, t0 = [], 0, time.monotonic()
    late = 0.0
    while True:
        due = t0 + n / rate
        if due - t0 >= seconds:
            break
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        else:
            late = max(late, now - due)
        tasks.append(asyncio.ensure_future(one_session(run, first + n * step, port, None)))
        n += 1
    out["late"] = late
    out["offered_seconds"] = time.monotonic() - t0
    return await asyncio.gather(*tasks)


async def closed_loop(run, port, workers, seconds, first, step):
    end, results, nxt = time.monotonic() + seconds, [], [0]

    async def worker():
        while time.monotonic() < end:
            k = nxt[0]
            nxt[0] += 1
            results.append(await one_session(run, first + k * step, port, None))
    await asyncio.gather(*(worker() for _ in range(workers)))
    return results


def client_proc(kind, args, q):
    out = {}
    if kind == "open":
        res = asyncio.run(open_loop(*args, out))
    else:
        res = asyncio.run(closed_loop(*args))
    q.put((res, out))


def load_rust(kind, run, port, rate_or_workers, seconds, base):
    """Runs the load in one `overload-load` process (bench/overload/load.rs)."""
    out = subprocess.run([LOADGEN_BIN, kind, str(port), str(rate_or_workers), str(seconds),
                          str(base), "1", run, str(BODY_BYTES), str(REPLY_TIMEOUT)],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    results, late = [], 0.0
    for line in out.splitlines():
        f = line.split("\t")
        if f[0] == "late":
            late = float(f[1])
        elif len(f) == 4:
            results.append((f[0], f[1], None if f[2] == "-" else float(f[2]), int(f[3])))
    return results, late


def load(kind, run, port, rate_or_workers, seconds, base):
    """Runs the load in CLIENT_PROCS processes; session ids base, base+1, ... interleaved."""
    if LOADGEN_BIN:
        return load_rust(kind, run, port, rate_or_workers, seconds, base)
    q, procs = mp.Queue(), []
    for p in range(CLIENT_PROCS):
        if kind == "open":
            args = (run, port, rate_or_workers / CLIENT_PROCS, seconds, base + p, CLIENT_PROCS)
        else:
            args = (run, port, max(1, rate_or_workers // CLIENT_PROCS), seconds, base + p, CLIENT_PROCS)
        pr = mp.Process(target=client_proc, args=(kind, args, q))
        pr.start()
        procs.append(pr)
    results, late = [], 0.0
    for _ in procs:
        r, out = q.get()
        results.extend(r)
        late = max(late, out.get("late", 0.0))
    for pr in procs:
        pr.join()
    return results, late


# --------------------------------------------------------------------------------------------
# The servers

def config(w, role):
    ops = EDGE_OPS if role == "edge" else ENGINE_OPS
    return f"""# Written by bench/overload/run.py ({role}).
[node]
silo = "bench"
[ops]
listen = "127.0.0.1:{ops}"
grace_period = "5s"
token_file = "{w}/ops-{role}.token"
[regions.bench]
[[silo]]
name = "bench"
hostname = "bench.test"
lat = 0.0
lon = 0.0
edge_addresses = ["127.0.0.1"]
edge_port = {EDGE}
  [[silo.cluster]]
  name = "c1"
  region = "bench"
    [[silo.cluster.engine]]
    address = "127.0.0.1:{ENGINE}"
    ops = "127.0.0.1:{ENGINE_OPS}"
    {f"max_connections = {ENGINE_MAX_CONNECTIONS}" if ENGINE_MAX_CONNECTIONS else ""}
[[tenant]]
id = "bench"
domains = ["tenant.example"]
regions = ["bench"]
delivery = ["127.0.0.1:{SINK}"]
tls = "none"
[policy.default.scanners]
auth = false   # SPF/DKIM/DMARC would query DNS
dnsbl = false
[edge]
listen = ["127.0.0.1:{EDGE}"]
hostname = "edge.bench"
{EDGE_EXTRA}
[engine]
listen = ["127.0.0.1:{DIRECT}"]
proxy_listen = ["127.0.0.1:{ENGINE}"]
trusted_proxies = ["127.0.0.0/8"]
spool_dir = "{w}/spool"
hostname = "engine.bench"
{ENGINE_EXTRA}
"""


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


def wait_until(pred, limit, what):
    end = time.time() + limit
    while time.time() < end:
        if pred():
            return
        time.sleep(0.1)
    sys.exit(f"{what}: not within {limit}s")


def http(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def metrics(port):
    """{name{labels}: value} of a /metrics page."""
    out = {}
    for line in http(port, "/metrics").splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def rss_kib(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """RSS of each process, sampled every 100 ms: the peak, and the series (to tell a plateau
    from growth)."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.stop = pids, False
        self.peak = {k: 0 for k in pids}
        self.series = {k: [] for k in pids}

    def run(self):
        t0 = time.monotonic()
        while not self.stop:
            for k, pid in self.pids.items():
                v = rss_kib(pid)
                self.peak[k] = max(self.peak[k], v)
                self.series[k].append((time.monotonic() - t0, v))
            time.sleep(0.1)

    def plateau(self, k, until):
        """Peak in the first and in the last third of [0, until] (KiB)."""
        s = [v for t, v in self.series[k] if t <= until]
        n = max(1, len(s) // 3)
        return max(s[:n], default=0), max(s[-n:], default=0)


# --------------------------------------------------------------------------------------------
# Reading the results

def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def acked(results):
    return [r for r in results if r[0] == "dot" and r[2] is not None]


def sink_ids(dump, run):
    try:
        data = open(dump, "rb").read()
    except OSError:
        return {}
    ids = {}
    for m in re.finditer(rb"<ovl-" + run.encode() + rb"-(\d+)@", data):
        k = int(m.group(1))
        ids[k] = ids.get(k, 0) + 1
    return ids


def codes_by_stage(results):
    table = {}
    for stage, reply, _, _ in results:
        table[(stage, reply)] = table.get((stage, reply), 0) + 1
    return sorted(table.items(), key=lambda kv: (STAGES.index(kv[0][0]), -kv[1]))


def checks(before, after):
    """Per-check scan counters (scan_checks_total{check,result}) run during a phase."""
    out = {}
    for k, v in after.items():
        if k.startswith("maildistiller_scan_checks_total{"):
            c = re.search(r'check="([^"]*)"', k).group(1)
            r = re.search(r'result="([^"]*)"', k).group(1)
            out[(c, r)] = out.get((c, r), 0) + v - before.get(k, 0)
    return out


def main():
    binary = ENV("MAILDISTILLER_BIN")
    if not binary:
        target = ENV("CARGO_TARGET_DIR", f"{ROOT}/target")
        binary = f"{target}/release/maildistiller"
        if not os.path.exists(binary):
            log("cargo build --release")
            subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.abspath(binary)
    global LOADGEN_BIN
    if LOADGEN == "rust":
        target = ENV("CARGO_TARGET_DIR", f"{ROOT}/target")
        LOADGEN_BIN = f"{target}/release/examples/overload-load"
        if not os.path.exists(LOADGEN_BIN):
            log("cargo build --release --example overload-load")
            subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "overload-load"],
                           cwd=ROOT, check=True)
    log(f"load generator: {LOADGEN_BIN or f'python, {CLIENT_PROCS} processes'}")
    sink_bin = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not os.path.exists(sink_bin):
        sys.exit("smtp-sink not found (apt-get install postfix)")
    for p in (EDGE, EDGE_OPS, ENGINE, ENGINE_OPS, SINK, DIRECT):
        if listening(p):
            sys.exit(f"127.0.0.1:{p} is in use (set BASE_PORT)")
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
    except (ValueError, OSError):
        pass
    run = f"{int(time.time()) % 100000}"
    w = tempfile.mkdtemp(prefix="md-overload-")
    os.chmod(w, 0o777)  # smtp-sink runs as nobody under root
    procs = []
    try:
        for role in ("edge", "engine"):
            open(f"{w}/{role}.toml", "w").write(config(w, role))
            subprocess.run([binary, "check", "--config", f"{w}/{role}.toml"], check=True,
                           stdout=subprocess.DEVNULL)
        dump = f"{w}/sink/dump"
        os.makedirs(f"{w}/sink", mode=0o777)
        os.chmod(f"{w}/sink", 0o777)
        user = ["-u", "nobody"] if os.getuid() == 0 else []
        procs.append(subprocess.Popen([sink_bin, *user, "-D", dump, f"127.0.0.1:{SINK}", "1024"],
                                      stderr=open(f"{w}/sink.log", "w")))
        wait_until(lambda: listening(SINK), 10, "smtp-sink")
        engine = subprocess.Popen([binary, "--role", "engine", "--config", f"{w}/engine.toml"],
                                  stderr=open(f"{w}/engine.log", "w"))
        procs.append(engine)
        wait_until(lambda: listening(ENGINE_OPS), 30, "engine ops")
        edge = subprocess.Popen([binary, "--role", "edge", "--config", f"{w}/edge.toml"],
                                stderr=open(f"{w}/edge.log", "w"))
        procs.append(edge)
        wait_until(lambda: listening(EDGE) and listening(ENGINE) and listening(EDGE_OPS), 30,
                   "edge and engine listeners")
        # Warm-up: until a message gets its 250 through the edge (the edge's health checks
        # must have seen the engine up), then a few more.
        base = 0

        def warm():
            nonlocal base
            r, _ = load("closed", run, EDGE, CLIENT_PROCS, 0.5, base)
            base += 100000
            return any(x[2] is not None for x in r)
        wait_until(warm, 60, "first 250 through the edge")
        log(f"pair up (work dir {w})")
        capacity, cap_p99, cap_n = 0.0, float("nan"), 0
        for n in CAP_CONCURRENCY:
            res, _ = load("closed", run, EDGE, n, CAP_SECONDS, base)
            base += 10_000_000
            cap_ok = acked(res)
            got_rate = len(cap_ok) / CAP_SECONDS
            p = pct([r[2] for r in cap_ok], 0.99)
            log(f"closed loop, {n} senders, {CAP_SECONDS:.0f}s: {got_rate:.0f} msg/s ({len(cap_ok)} "
                f"of {len(res)} sessions acknowledged, p99 of the 250 {p * 1000:.1f} ms)")
            if got_rate > capacity:
                capacity, cap_p99, cap_n = got_rate, p, n
        if capacity < 1:
            sys.exit("no capacity measured; see the logs in " + w)

        light = max(2.0, capacity * UNLOADED_FRACTION)
        res, _ = load("open", run, EDGE, light, UNLOADED_SECONDS, base)
        base += 10_000_000
        un_ok = acked(res)
        un_p50, un_p99 = pct([r[2] for r in un_ok], 0.5), pct([r[2] for r in un_ok], 0.99)
        log(f"unloaded ({light:.0f}/s for {UNLOADED_SECONDS:.0f}s): {len(un_ok)} of {len(res)} "
            f"acknowledged, p50 {un_p50 * 1000:.1f} ms, p99 {un_p99 * 1000:.1f} ms")

        rate = capacity * OVERLOAD_FACTOR
        log(f"overload: {rate:.0f} sessions/s for {OVERLOAD_SECONDS:.0f}s")
        m_before = metrics(ENGINE_OPS)
        e_before = metrics(EDGE_OPS)
        sampler = Sampler({"edge": edge.pid, "engine": engine.pid})
        rss_before = {"edge": rss_kib(edge.pid), "engine": rss_kib(engine.pid)}
        sampler.start()
        t0 = time.monotonic()
        res, late = load("open", run, EDGE, rate, OVERLOAD_SECONDS, base)
        took = time.monotonic() - t0
        m_after = metrics(ENGINE_OPS)
        e_after = metrics(EDGE_OPS)
        ok = acked(res)
        ok_ids = {r[3] for r in ok}
        log(f"overload done in {took:.0f}s: {len(ok)} of {len(res)} acknowledged; draining")

        # Drain: every acknowledged id at the sink, or no progress for 60 s, or DRAIN_MAX.
        t_drain, last, last_t = time.monotonic(), -1, time.monotonic()
        while True:
            got = sink_ids(dump, run)
            have = sum(1 for k in ok_ids if k in got)
            if have == len(ok_ids):
                break
            if have != last:
                last, last_t = have, time.monotonic()
            if time.monotonic() - last_t > 60 or time.monotonic() - t_drain > DRAIN_MAX:
                break
            time.sleep(1)
        drain_s = time.monotonic() - t_drain
        time.sleep(2)  # anything still in flight to the sink
        sampler.stop = True
        sampler.join()
        got = sink_ids(dump, run)
        hwm = {"edge": rss_kib(edge.pid, "VmHWM"), "engine": rss_kib(engine.pid, "VmHWM")}

        # ---- report
        lat = [r[2] for r in ok]
        p50, p99 = pct(lat, 0.5), pct(lat, 0.99)
        print()
        print(f"# bench/overload/run.py  (binary {binary})")
        print(f"capacity (closed loop, best of {CAP_CONCURRENCY} senders: {cap_n}, {CAP_SECONDS:.0f}s): "
              f"{capacity:.0f} msg/s; p99 of the 250 at capacity {cap_p99 * 1000:.1f} ms")
        print(f"unloaded ({light:.0f} msg/s, {UNLOADED_SECONDS:.0f}s): p50 {un_p50 * 1000:.1f} ms, "
              f"p99 {un_p99 * 1000:.1f} ms ({len(un_ok)} messages)")
        print(f"overload: offered {len(res)} sessions in {OVERLOAD_SECONDS:.0f}s = "
              f"{len(res) / OVERLOAD_SECONDS:.0f}/s ({OVERLOAD_FACTOR:g}x capacity; the load "
              f"generator fell behind its schedule by at most {late * 1000:.0f} ms)")
        print(f"  acknowledged (250 after the dot): {len(ok)} = {len(ok) / OVERLOAD_SECONDS:.0f}/s "
              f"= {len(ok) / OVERLOAD_SECONDS / capacity:.2f}x capacity")
        print("  replies by stage (where each session ended):")
        for (stage, reply), n in codes_by_stage(res):
            print(f"    {stage:<8} {reply:<22} {n:>8}")
        ratio = p99 / un_p99 if un_p99 == un_p99 and un_p99 > 0 else float("nan")
        print(f"  250 latency of admitted sessions: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
              f"= {ratio:.2f}x the unloaded p99")
        refused = {k.split('reason="')[1].split('"')[0]: v - e_before.get(k, 0)
                   for k, v in e_after.items() if k.startswith("maildistiller_edge_refused_total{")}
        routed = {k.split('result="')[1].split('"')[0]: v - e_before.get(k, 0)
                  for k, v in e_after.items() if k.startswith("maildistiller_edge_routed_total{")}
        print(f"  edge refusals by reason: { {k: int(v) for k, v in refused.items() if v} }")
        print(f"  edge routing outcomes: { {k: int(v) for k, v in routed.items() if v} }")
        print(f"  peak RSS: edge {sampler.peak['edge'] // 1024} MiB (before {rss_before['edge'] // 1024}, "
              f"VmHWM {hwm['edge'] // 1024}), engine {sampler.peak['engine'] // 1024} MiB "
              f"(before {rss_before['engine'] // 1024}, VmHWM {hwm['engine'] // 1024})")
        lost = sorted(k for k in ok_ids if k not in got)
        dups = sum(1 for k in ok_ids if got.get(k, 0) > 1)
        unacked = sum(1 for k in got if k not in ok_ids and k >= base and k < base + 10_000_000)
        print(f"  delivered: {len(ok_ids) - len(lost)} of {len(ok_ids)} acknowledged "
              f"(lost {len(lost)}, duplicates {dups}; {unacked} delivered without a 250 seen by "
              f"the client); drained in {drain_s:.0f}s")
        ch = checks(m_before, m_after)
        verdicts = sum(v - m_before.get(k, 0) for k, v in m_after.items()
                       if k.startswith("maildistiller_scan_verdicts_total{"))
        print(f"  scans during the overload: {int(verdicts)} verdicts; per check (result: count) "
              f"next to {len(ok)} acknowledged:")
        names = sorted({c for c, _ in ch})
        for c in names:
            parts = ", ".join(f"{r}: {int(v)}" for (cc, r), v in sorted(ch.items()) if cc == c and v)
            print(f"    {c:<12} {parts}")
        if not names:
            print("    (no scan_checks_total on the engine's /metrics)")
        print()
        early = sum(n for (s, rep), n in codes_by_stage(res)
                    if (rep.startswith("421 4.3.2") or rep.startswith("451")) and s != "dot")
        late_refusals = sum(n for (s, rep), n in codes_by_stage(res)
                            if s == "dot" and not rep.startswith("250"))
        other = len(res) - len(ok) - early - late_refusals
        skipped = any(r != "done" and v for (c, r), v in ch.items())
        every = names and all(ch.get((c, "done"), 0) >= len(ok) for c in names)

        def goal(ok_, text):
            print(f"{'PASS' if ok_ else 'FAIL'}  {text}")
        goal(ratio <= 2.0, f"p99 of admitted 250s {p99 * 1000:.1f} ms <= 2x unloaded p99 "
             f"{un_p99 * 1000:.1f} ms (ratio {ratio:.2f})")
        goal(late_refusals == 0 and other == 0,
             f"the excess refused early: {early} sessions with 421 4.3.2 / 451 before DATA, "
             f"{late_refusals} refused after the dot, {other} ended otherwise "
             f"(timeouts, resets, other codes)")
        # Bounded: no growth while the overload lasts (the last third's peak within 20 % +
        # 16 MiB of the first third's) and the peak no more than 2 x the RSS before + 256 MiB.
        for k in ("edge", "engine"):
            first, last_ = sampler.plateau(k, took)
            bounded = (last_ <= first * 1.2 + 16 * 1024
                       and sampler.peak[k] <= 2 * rss_before[k] + 256 * 1024)
            goal(bounded, f"{k} RSS bounded: {rss_before[k] // 1024} MiB before, peak "
                 f"{sampler.peak[k] // 1024} MiB; peak in the first third of the overload "
                 f"{first // 1024} MiB, in the last third {last_ // 1024} MiB")
        goal(not lost, f"0 lost: {len(lost)} of {len(ok_ids)} acknowledged messages missing at "
             f"the sink, {dups} duplicates")
        goal(bool(every) and not skipped,
             f"no scanner skipped: every configured check ran to completion on >= the "
             f"{len(ok)} acknowledged messages")
        if lost:
            print(f"  first lost ids: {lost[:10]}")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if KEEP:
            log(f"kept {w}")
        else:
            shutil.rmtree(w, ignore_errors=True)


if __name__ == "__main__":
    main()
