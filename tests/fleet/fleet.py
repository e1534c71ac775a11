#!/usr/bin/env python3
"""Fleet in a box: the whole service on one machine, real MTAs on both ends, faults injected
while mail flows, and an account of every message. See bench/fleet/README.md.

    sudo tests/fleet/fleet.py --short                 # CI: every core scenario, a few minutes
    sudo tests/fleet/fleet.py                         # longer traffic per scenario
    sudo tests/fleet/fleet.py --scenario silo-stop    # one scenario (repeat the flag for more)
    sudo tests/fleet/fleet.py --soak 30               # steady traffic, RSS/FD sampled per process

Needs root (network, mount and PID namespaces), postfix and the maildistiller binary
(--bin, default target/debug/maildistiller under CARGO_TARGET_DIR or the checkout).

The script re-executes itself inside fresh network + mount + PID namespaces (`unshare`): every
address below is private to it, /etc/resolv.conf is bind-mounted to point at the fleet's
resolver, and when the script ends -- normally, by exception or killed -- the kernel ends every
process it started and drops every mount (the PID namespace dies with its first process).

Per scenario a fresh fleet is built under a temp directory:

    silo lon1 (London, region uk):     edge 127.0.1.1:25  dns 127.0.1.53:53  engines 127.0.1.11-13
    silo man1 (Manchester, region uk): edge 127.0.2.1:25  dns 127.0.2.53:53  engines 127.0.2.11-12
    silo fra1 (Frankfurt, region de):  edge 127.0.3.1:25  dns 127.0.3.53:53  engines 127.0.3.11-12
    tenants' servers (sink.py):        acme 127.0.10.1, globex .2, initech .3, hansa .4
    the sender's domain MX (sink.py):  127.0.20.1 (DSNs and Postfix's own bounces land here)
    the sending Postfix:               127.0.30.1:25, smtp_host_lookup = dns
    the resolver (resolver.py):        127.0.0.53:53, queries GeoDNS from 127.0.9.1 ("London")

Mail follows MX -> GeoDNS -> edge -> engine -> tenant exactly as on the internet: Postfix looks up
the tenant domain's MX (`acme.in.example.net`, `mx.in.example.net`...), the resolver forwards that
zone to the GeoDNS nodes, Postfix connects to the edge address GeoDNS handed out.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from account import *  # noqa: F403 - one harness in four files
from deploy import *  # noqa: F403
from scenarios import *  # noqa: F403

# ---------------------------------------------------------------------------------------------
# Soak

def proc_sample(pid):
    try:
        rss = 0
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds
    except OSError:
        return None


def slope(points):
    """Least-squares slope of (t, y) points, per hour."""
    n = len(points)
    if n < 3:
        return 0.0
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mt) * (y - my) for t, y in points) / den * 3600


def run_soak(args, workdir):
    base = os.path.join(workdir, "soak")
    os.makedirs(base)
    os.chmod(base, 0o755)
    fleet = Fleet(base, args.bin)
    samples = {}
    try:
        log(f"== soak: {args.soak} minutes at {args.rate} msg/s")
        fleet.start()
        pids = fleet.pids()
        traffic = Traffic(args.rate, seed=7)
        traffic.start()
        end = time.time() + args.soak * 60
        csv = open(os.path.join(workdir, "soak-samples.csv"), "w")
        csv.write("time,process,rss_kib,fds\n")
        while time.time() < end:
            now = time.time()
            for name, pid in pids.items():
                s = proc_sample(pid)
                if s:
                    samples.setdefault(name, []).append((now, s[0], s[1]))
                    csv.write(f"{now:.0f},{name},{s[0]},{s[1]}\n")
            csv.flush()
            time.sleep(min(args.sample, max(0, end - time.time())))
        traffic.stop()
        acct = Account(fleet, traffic, False)
        out = acct.wait_final(args.drain)
        row, v = acct.report("soak", out, [])
        log("== soak: RSS/FD per process (first half vs second half mean; slope per hour)")
        growth = []
        for name, pts in sorted(samples.items()):
            if len(pts) < 6:
                continue
            # The first tenth is warm-up (allocator, caches); the trend is judged on the rest.
            pts = pts[len(pts) // 10:]
            half = len(pts) // 2
            r1 = statistics.mean(p[1] for p in pts[:half])
            r2 = statistics.mean(p[1] for p in pts[half:])
            f1 = statistics.mean(p[2] for p in pts[:half])
            f2 = statistics.mean(p[2] for p in pts[half:])
            rs = slope([(p[0], p[1]) for p in pts])
            fs = slope([(p[0], p[2]) for p in pts])
            flag = ""
            if r2 > r1 * 1.10 and rs > 0.05 * r1:
                flag += " RSS-GROWTH"
            if f2 > f1 + 5 and fs > 5:
                flag += " FD-GROWTH"
            print(f"   {name:<14} rss {r1 / 1024:7.1f} -> {r2 / 1024:7.1f} MiB "
                  f"({rs / 1024:+.2f} MiB/h)  fds {f1:6.1f} -> {f2:6.1f} ({fs:+.1f}/h){flag}")
            if flag:
                growth.append(name + flag)
        row["growth"] = growth
        return row, v + [f"growth: {g}" for g in growth]
    finally:
        fleet.stop()


# ---------------------------------------------------------------------------------------------
# Entry points

def default_bin():
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    return os.path.join(target, "debug", "maildistiller")


def outer(argv):
    """Re-executes inside new network, mount and PID namespaces; their death is our cleanup."""
    if os.geteuid() != 0:
        sys.exit("fleet.py needs root (network, mount and PID namespaces, port 25 and 53)")
    for tool in ("unshare", "ip", "postfix", "mount"):
        if not shutil.which(tool):
            sys.exit(f"fleet.py needs {tool}")
    env = dict(os.environ, FLEET_INNER="1")
    cmd = ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
           sys.executable, os.path.abspath(__file__)] + argv
    p = subprocess.Popen(cmd, env=env)
    try:
        return p.wait()
    except KeyboardInterrupt:
        p.send_signal(signal.SIGINT)
        return p.wait()


def setup_namespace(workdir):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # Postfix listens only on addresses an interface has; 127/8 routes to lo but is not "had".
    subprocess.run(["ip", "addr", "add", f"{POSTFIX_IP}/32", "dev", "lo"], check=True)
    resolv = os.path.join(workdir, "resolv.conf")
    with open(resolv, "w") as f:
        f.write(f"nameserver {RESOLVER_IP}\noptions timeout:2 attempts:2\n")
    os.chmod(resolv, 0o644)
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "--bind", resolv, "/etc/resolv.conf"], check=True)


def inner(args):
    if not os.path.exists(args.bin):
        sys.exit(f"no maildistiller binary at {args.bin} (cargo build, or --bin)")
    workdir = args.keep or tempfile.mkdtemp(prefix="maildistiller-fleet-")
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o755)
    setup_namespace(workdir)
    log(f"work directory {workdir}; binary {args.bin}")
    rows, failures = [], []
    started = time.time()
    try:
        if args.soak:
            row, v = run_soak(args, workdir)
            rows.append(row)
            failures += v
        else:
            names = args.scenario or (SHORT if args.short else list(SCENARIOS))
            for n in names:
                if n not in SCENARIOS:
                    sys.exit(f"unknown scenario {n}; known: {', '.join(SCENARIOS)}")
            for n in names:
                try:
                    row = run_scenario(SCENARIOS[n], args, workdir)
                except Exception as e:  # noqa: BLE001 - a broken scenario is a failure, not a crash
                    log(f"scenario {n} failed to run: {e!r}")
                    row = {"scenario": n, "violations": 1, "error": repr(e)}
                rows.append(row)
                if row.get("violations"):
                    failures.append(n)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    cols = ["scenario", "submitted", "delivered", "quarantined", "rejected", "dsn",
            "pending_at_sender", "lost", "lost_both_copies", "duplicates", "unexpected", "region_violations",
            "p50_s", "p99_s", "violations"]
    print()
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "-")) for c in cols))
    print(f"\nfleet: {len(rows)} run(s) in {time.time() - started:.0f}s; "
          f"{'FAILED: ' + ', '.join(map(str, failures)) if failures else 'every message accounted for'}")
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--short", action="store_true", help="CI size: the core scenarios, short traffic")
    p.add_argument("--scenario", action="append", help=f"run only these: {', '.join(SCENARIOS)}")
    p.add_argument("--soak", type=float, metavar="MINUTES", help="steady traffic, RSS/FD sampled")
    p.add_argument("--rate", type=float, help="messages per second (default 8, 10 with --soak)")
    p.add_argument("--duration", type=float, help="traffic seconds per scenario (20; 60 full)")
    p.add_argument("--drain", type=float, default=90, help="seconds allowed for the account")
    p.add_argument("--sample", type=float, default=10, help="soak sampling interval, seconds")
    p.add_argument("--bin", default=default_bin(), help="the maildistiller binary")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (logs, spools, sinks)")
    args = p.parse_args()
    args.bin = os.path.abspath(args.bin)
    if args.rate is None:
        args.rate = 10 if args.soak else 8
    if args.duration is None:
        args.duration = 20 if args.short else 60
    if os.environ.get("FLEET_INNER") != "1":
        sys.exit(outer(sys.argv[1:]))
    sys.exit(inner(args))


if __name__ == "__main__":
    main()
