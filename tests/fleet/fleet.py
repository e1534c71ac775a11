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
import calendar
import hashlib
import http.client as httpclient
import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ZONE = "in.example.net"
SENDER_DOMAIN = "sender.fleet.test"
POSTFIX_IP = "127.0.30.1"
RESOLVER_IP = "127.0.0.53"
RESOLVER_SOURCE = "127.0.9.1"
SENDER_SINK = "127.0.20.1"

# (silo, lat, lon, region, third octet, engines)
SILOS = [
    ("lon1", 51.5074, -0.1278, "uk", 1, 3),
    ("man1", 53.4808, -2.2426, "uk", 2, 2),
    ("fra1", 50.1109, 8.6821, "de", 3, 2),
]
# (tenant, domain, regions, failover, sink address, MX host in the service's zone, share of traffic)
TENANTS = [
    ("acme", "acme.example", ["uk"], "region-only", "127.0.10.1", f"acme.{ZONE}", 4),
    ("globex", "globex.example", ["de", "uk"], "any", "127.0.10.2", f"globex.{ZONE}", 3),
    ("initech", "initech.example", [], "any", "127.0.10.3", f"mx.{ZONE}", 2),
    ("hansa", "hansa.example", ["de"], "region-only", "127.0.10.4", f"hansa.{ZONE}", 2),
]
REGION_ONLY = {t[0]: set(t[2]) for t in TENANTS if t[3] == "region-only"}
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
QUARANTINE_PHRASE = "FLEET-PLEASE-QUARANTINE-THIS"
# kind -> (share in 100, expected outcome)
KINDS = [("clean", 85, "delivered"), ("gtube", 5, "rejected"), ("quarantine", 5, "quarantined"),
         ("norcpt", 5, "dsn")]
RECEIVED_HOPS = 2  # the sending Postfix + the engine (the edge relays SMTP, it adds none)
# Webmail: acme's administrator, on every engine's HTTPS page (port 8443), cluster-wide lists.
WEBMAIL_USER = "admin@acme.example"
WEBMAIL_PASSWORD = "fleet-webmail-password-1"
WEBMAIL_PORT = 8443
PEER_SECRET = "fleet-peer-secret-0123456789abcdef-0123456789"
_webmail_hash = None  # argon2 PHC string, made once per run by `maildistiller user add`


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def ip(octet, host):
    return f"127.0.{octet}.{host}"


def engines_of(silo):
    name, _, _, region, o, n = silo
    return [(f"{name}-{region}-e{i}", ip(o, 10 + i), f"e{i}.{region}.{name}.fleet.test")
            for i in range(1, n + 1)]


ENGINE_HOSTS = {}  # Received "by" host -> (engine node, silo, region)
for _s in SILOS:
    for _n, _a, _h in engines_of(_s):
        ENGINE_HOSTS[_h] = (_n, _s[0], _s[3])
ENGINE_ADDRS = {a: n for s in SILOS for n, a, _ in engines_of(s)}


# ---------------------------------------------------------------------------------------------
# HTTP helpers (ops listeners)

def http(addr, path, method="GET", timeout=2.0):
    """(status, body) or (None, error)."""
    req = urllib.request.Request(f"http://{addr}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (OSError, ValueError) as e:
        return None, str(e)


def metric(text, name, labels=None):
    """Sum of a Prometheus metric's samples whose labels include `labels`."""
    total = 0.0
    for line in (text or "").splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        if labels and not all(f'{k}="{v}"' in (m.group(2) or "") for k, v in labels.items()):
            continue
        try:
            total += float(m.group(3))
        except ValueError:
            pass
    return total


def wait_for(what, pred, timeout, interval=0.2):
    """Polls pred() until truthy or timeout; returns its last value (every wait is bounded)."""
    end = time.time() + timeout
    while True:
        v = pred()
        if v or time.time() >= end:
            if not v:
                log(f"timed out after {timeout}s waiting for {what}")
            return v
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# The fleet: configs, processes

class Node:
    def __init__(self, name, role, silo, config, ops, addr):
        self.name, self.role, self.silo, self.config, self.ops, self.addr = (
            name, role, silo, config, ops, addr)
        self.proc = None


class Fleet:
    def __init__(self, base, binary, spool_limits=None):
        self.base = base
        self.bin = binary
        self.nodes = {}
        self.aux = {}  # sinks, resolver: name -> Popen
        self.spool_limits = spool_limits or {}  # engine -> tmpfs size, e.g. "6m"
        self.mounts = []
        for d in ("etc", "logs", "spool", "sinks", "postfix"):
            os.makedirs(os.path.join(base, d), exist_ok=True)

    # -- configuration -------------------------------------------------------------------------

    def fleet_toml(self, extra_tenant=False):
        geo = os.path.join(REPO, "geo", "geo-whois-asn-country.mmdb")
        out = [
            "# Written by tests/fleet/fleet.py: the topology every node includes.",
            "[geo]",
            f'database = "{geo}"',
            "[[geo.override]]  # the sender's resolver, as GeoDNS sees it",
            f'cidr = "{RESOLVER_SOURCE}/32"',
            'country = "GB"',
            "lat = 51.5",
            "lon = -0.12",
            "[[geo.override]]  # the sending MTA, as the edges see it",
            f'cidr = "{POSTFIX_IP}/32"',
            'country = "GB"',
            "lat = 51.5",
            "lon = -0.12",
            "[regions.uk]",
            'name = "United Kingdom"',
            "[regions.de]",
            'name = "Germany"',
        ]
        for s in SILOS:
            name, lat, lon, region, o, _ = s
            out += [
                "[[silo]]",
                f'name = "{name}"',
                f'hostname = "{name}.{ZONE}"',
                f"lat = {lat}",
                f"lon = {lon}",
                f'edge_addresses = ["{ip(o, 1)}"]',
                "edge_port = 25",
                f'egress = ["127.0.{o}.0/24"]',
                "  [[silo.cluster]]",
                f'  name = "{region}"',
                f'  region = "{region}"',
            ]
            for _, addr, _ in engines_of(s):
                out += [
                    "    [[silo.cluster.engine]]",
                    f'    address = "{addr}:25"',
                    f'    ops = "{addr}:9125"',
                    "    max_connections = 200",
                ]
        tenants = list(TENANTS)
        if extra_tenant:
            tenants.append(("newco", "newco.example", ["uk"], "region-only", "127.0.10.9",
                            f"newco.{ZONE}", 0))
        for tid, dom, regions, failover, sink, _, _ in tenants:
            out += [
                "[[tenant]]",
                f'id = "{tid}"',
                f'domains = ["{dom}"]',
                f"regions = {json.dumps(regions)}",
                f'failover = "{failover}"',
                f'delivery = ["{sink}:25"]',
            ]
            if tid == "acme" and _webmail_hash:
                out += ["  [[tenant.user]]", f'  address = "{WEBMAIL_USER}"',
                        f"  password_hash = '{_webmail_hash}'", "  admin = true"]
        out += [
            "[policy.default]",
            'description = "fleet: reject GTUBE and viruses, quarantine the marker phrase"',
            "thresholds = { tag = 5.0, quarantine = 10.0, reject = 20.0 }",
            'dns = { timeout = "1s" }',
            "[[policy.default.rule]]",
            'name = "fleet-quarantine"',
            'target = "body"',
            f'pattern = "{QUARANTINE_PHRASE}"',
            "score = 12.0",
        ]
        return "\n".join(out) + "\n"

    def node_toml(self, node, broken=False):
        s = next(x for x in SILOS if x[0] == node.silo)
        edges = [f"{ip(x[4], 1)}/32" for x in SILOS]
        out = [
            'include = ["fleet.toml"]',
            "[node]",
            f'silo = "{node.silo}"',
            f'name = "{node.name}"',
            "[ops]",
            f'listen = "{node.ops}"',
            'grace_period = "3s"',
        ]
        if node.role == "edge":
            out += [
                "[edge]",
                f'listen = ["{node.addr}:25"]',
                f'hostname = "edge.{node.silo}.fleet.test"',
                "max_connections_per_ip = 500",
                "max_connections_per_prefix = 1000",
                "connect_rate_per_ip = 1000",
                "connect_rate_per_prefix = 1000",
                'connect_timeout = "1s"',
                f'source_addresses = ["{node.addr}"]  # engines trust this address only',
                "  [edge.health]",
                '  interval = "500ms"',
                '  timeout = "400ms"',
                "  rise = 2",
                "  fall = 2",
            ]
        elif node.role == "dns":
            out += [
                "[dns]",
                f'listen = ["{node.addr}:53"]',
                f'zone = "{ZONE}"',
                'service_names = ["mx"]',
                'mx_names = ["@"]',
                "tenant_names = true",
                "next_silos = 1",
                'ttl = "5s"',
                f'nsid = "{node.name}"',
                "  [dns.health]",
                '  interval = "500ms"',
                '  timeout = "400ms"',
                "  rise = 2",
                "  fall = 2",
            ]
            for x in SILOS:
                out += ["[[dns.ns]]", f'name = "ns-{x[0]}"', f'addresses = ["{ip(x[4], 53)}"]']
        else:
            host = next(h for n, _, h in engines_of(s) if n == node.name)
            out += [
                "[engine]",
                f'listen = ["{node.addr}:25"]',
                f'spool_dir = "{os.path.join(self.base, "spool", node.name)}"',
                f'hostname = "{host}"',
                f"trusted_proxies = {json.dumps(edges)}",
                "require_proxy = true",
                "  [engine.delivery]",
                '  retry_base = "1s"',
                '  retry_max = "4s"',
                '  probe_interval = "500ms"',
                '  connect_timeout = "2s"',
                "  dead_after = 2",
                f'  source_addresses = ["{node.addr}"]',
                "  [engine.webmail]",
                f'  listen = ["{node.addr}:{WEBMAIL_PORT}"]',
                f'  tls_cert = "{os.path.join(self.base, "etc", "webmail.pem")}"',
                f'  tls_key = "{os.path.join(self.base, "etc", "webmail.key")}"',
                "  page_size = 500",
                f'  peer_secret = "{PEER_SECRET}"',
            ]
        if broken:
            out += ["[edge]", 'listen = "this is not a list of addresses"', "no_such_key = 1"]
        return "\n".join(out) + "\n"

    def write_configs(self, extra_tenant=False):
        etc = os.path.join(self.base, "etc")
        with open(os.path.join(etc, "fleet.toml"), "w") as f:
            f.write(self.fleet_toml(extra_tenant))
        for n in self.nodes.values():
            with open(n.config, "w") as f:
                f.write(self.node_toml(n))

    def define(self):
        etc = os.path.join(self.base, "etc")
        for s in SILOS:
            name, o = s[0], s[4]
            for role, addr in (("edge", ip(o, 1)), ("dns", ip(o, 53))):
                n = f"{name}-{role}"
                self.nodes[n] = Node(n, role, name, os.path.join(etc, n + ".toml"),
                                     f"{addr}:9125", addr)
            for n, addr, _ in engines_of(s):
                self.nodes[n] = Node(n, "engine", name, os.path.join(etc, n + ".toml"),
                                     f"{addr}:9125", addr)
        self.webmail_setup()
        self.write_configs()

    def webmail_setup(self):
        """A self-signed certificate for the engines' webmail, and acme's admin user (its
        argon2 hash made by `maildistiller user add` on a scratch copy of the configs)."""
        global _webmail_hash
        etc = os.path.join(self.base, "etc")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=webmail.fleet.test", "-keyout",
                        os.path.join(etc, "webmail.key"), "-out", os.path.join(etc, "webmail.pem")],
                       check=True, capture_output=True, timeout=60)
        if _webmail_hash:
            return
        self.write_configs()
        scratch = os.path.join(self.base, "etc-user")
        shutil.copytree(etc, scratch)
        r = subprocess.run([self.bin, "user", "add", "--config",
                            os.path.join(scratch, "lon1-uk-e1.toml"), "--tenant", "acme",
                            "--admin", WEBMAIL_USER], input=WEBMAIL_PASSWORD + "\n", text=True,
                           capture_output=True, timeout=60)
        m = re.search(r"password_hash\s*=\s*[\"']([^\"']+)[\"']",
                      open(os.path.join(scratch, "fleet.toml")).read())
        if r.returncode != 0 or not m:
            raise RuntimeError(f"maildistiller user add failed: {r.stdout}{r.stderr}")
        _webmail_hash = m.group(1)
        shutil.rmtree(scratch)

    # -- processes -----------------------------------------------------------------------------

    def start_node(self, name, wait=True):
        n = self.nodes[name]
        if n.role == "engine":
            spool = os.path.join(self.base, "spool", name)
            if name in self.spool_limits and spool not in self.mounts:
                os.makedirs(spool, exist_ok=True)
                subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.spool_limits[name]}",
                                "fleet-spool", spool], check=True)
                self.mounts.append(spool)
        logf = open(os.path.join(self.base, "logs", name + ".log"), "ab")
        n.proc = subprocess.Popen(
            [self.bin, "--role", n.role, "--config", n.config, "--log-level", "info"],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logf.close()
        if wait:
            self.wait_ready([name])

    def wait_ready(self, names, timeout=30):
        for name in names:
            n = self.nodes[name]
            ok = wait_for(f"{name} /readyz", lambda: http(n.ops, "/readyz")[0] == 200 or
                          (n.proc and n.proc.poll() is not None), timeout)
            if not ok or n.proc.poll() is not None:
                raise RuntimeError(f"{name} did not start (see logs/{name}.log)")

    def stop_node(self, name, sig=signal.SIGTERM, wait=10):
        n = self.nodes[name]
        if n.proc is None or n.proc.poll() is not None:
            return
        n.proc.send_signal(sig)
        try:
            n.proc.wait(wait)
        except subprocess.TimeoutExpired:
            n.proc.kill()
            n.proc.wait(5)

    def signal_node(self, name, sig):
        n = self.nodes[name]
        if n.proc and n.proc.poll() is None:
            n.proc.send_signal(sig)

    def start_aux(self, name, argv):
        logf = open(os.path.join(self.base, "logs", name + ".log"), "ab")
        self.aux[name] = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        logf.close()

    def sink_dir(self, label):
        return os.path.join(self.base, "sinks", label)

    def start_sink(self, tenant):
        t = next(x for x in TENANTS if x[0] == tenant)
        self.start_aux(f"sink-{tenant}", [
            sys.executable, os.path.join(HERE, "sink.py"), "--listen", f"{t[4]}:25",
            "--dir", self.sink_dir(tenant), "--label", tenant, "--hostname", f"mx.{t[1]}",
            "--refuse-prefix", "nobody"])
        wait_for(f"sink {tenant}", lambda: port_open(t[4], 25), 10)

    def stop_aux(self, name):
        p = self.aux.get(name)
        if p and p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def start(self):
        self.define()
        records = {}
        for tid, dom, _, _, _, mx, _ in TENANTS:
            records[dom] = {"MX": [[10, mx]]}
        records[SENDER_DOMAIN] = {"MX": [[10, f"mx.{SENDER_DOMAIN}"]]}
        records[f"mx.{SENDER_DOMAIN}"] = {"A": [SENDER_SINK]}
        with open(os.path.join(self.base, "etc", "records.json"), "w") as f:
            json.dump(records, f)
        argv = [sys.executable, os.path.join(HERE, "resolver.py"), "--listen", f"{RESOLVER_IP}:53",
                "--zone", ZONE, "--source", RESOLVER_SOURCE,
                "--records", os.path.join(self.base, "etc", "records.json")]
        for s in SILOS:
            argv += ["--upstream", f"{ip(s[4], 53)}:53"]
        self.start_aux("resolver", argv)
        for t in TENANTS:
            self.start_sink(t[0])
        self.start_aux("sink-sender", [
            sys.executable, os.path.join(HERE, "sink.py"), "--listen", f"{SENDER_SINK}:25",
            "--dir", self.sink_dir("sender"), "--label", "sender",
            "--hostname", f"mx.{SENDER_DOMAIN}"])
        for name in self.nodes:
            self.start_node(name, wait=False)
        self.wait_ready(list(self.nodes))
        # The whole path is up when GeoDNS hands out London for the service name and every edge
        # sees its engines healthy (a message routed now would be accepted).
        wait_for("GeoDNS answering lon1", lambda: ip(1, 1) in dig(f"mx.{ZONE}", "A"), 30)
        wait_for("edges seeing engines up", self.edges_see_engines, 30)
        self.postfix = Postfix(os.path.join(self.base, "postfix"))
        self.postfix.start()

    def edges_see_engines(self):
        """Every edge has probed every engine successfully and counts it up."""
        engines = [f"{a}:25" for s in SILOS for _, a, _ in engines_of(s)]
        for n in self.nodes.values():
            if n.role != "edge":
                continue
            st, m = http(n.ops, "/metrics")
            if st != 200:
                return False
            for e in engines:
                if metric(m, "maildistiller_edge_engine_up", {"engine": e}) != 1 or metric(
                        m, "maildistiller_edge_probes_total", {"engine": e, "result": "ok"}) < 2:
                    return False
        return True

    def stop(self):
        try:
            if getattr(self, "postfix", None):
                self.postfix.stop()
        except Exception as e:  # noqa: BLE001 - cleanup must go on
            log("postfix stop:", e)
        for name in self.nodes:
            try:
                self.stop_node(name, signal.SIGTERM, wait=5)
            except Exception as e:  # noqa: BLE001
                log("stop", name, e)
        for name in list(self.aux):
            self.stop_aux(name)
        for m in reversed(self.mounts):
            subprocess.run(["umount", "-l", m], check=False)
        self.mounts = []

    def pids(self):
        out = {n: x.proc.pid for n, x in self.nodes.items() if x.proc and x.proc.poll() is None}
        out.update({n: p.pid for n, p in self.aux.items() if p.poll() is None})
        return out


def port_open(host, port):
    try:
        with socket.create_connection((host, port), 0.5):
            return True
    except OSError:
        return False


def dig(name, qtype):
    """A tiny stub query through the fleet's resolver; returns the answer's addresses/hosts."""
    import struct
    qid = random.randrange(65536)
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", {"A": 1, "MX": 15}[qtype], 1)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(q, (RESOLVER_IP, 53))
            r = s.recv(4096)
    except OSError:
        return []
    an = struct.unpack("!H", r[6:8])[0]
    i = len(q)
    out = []
    for _ in range(an):
        while r[i] != 0 and r[i] & 0xC0 != 0xC0:
            i += 1 + r[i]
        i += 2 if r[i] & 0xC0 == 0xC0 else 1
        rtype, _, _, rdlen = struct.unpack("!HHIH", r[i:i + 10])
        i += 10
        if rtype == 1:
            out.append(socket.inet_ntoa(r[i:i + 4]))
        i += rdlen
    return out


# ---------------------------------------------------------------------------------------------
# The sending Postfix

class Postfix:
    def __init__(self, base):
        self.base = base
        self.etc = os.path.join(base, "etc")
        self.log = os.path.join(base, "postfix.log")

    def start(self):
        for d in ("etc", "queue", "data"):
            os.makedirs(os.path.join(self.base, d), exist_ok=True)
        shutil.chown(os.path.join(self.base, "data"), "postfix")
        main = f"""# Written by tests/fleet/fleet.py: the sending MTA of the fleet.
compatibility_level = 3.6
queue_directory = {self.base}/queue
data_directory = {self.base}/data
maillog_file = {self.log}
maillog_file_prefixes = {self.base}
myhostname = {SENDER_DOMAIN}
mydomain = {SENDER_DOMAIN}
myorigin = {SENDER_DOMAIN}
mydestination =
inet_interfaces = {POSTFIX_IP}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost =
# Every next hop comes from DNS: MX of the tenant's domain, then A of the exchange (GeoDNS).
smtp_host_lookup = dns
disable_dns_lookups = no
smtp_bind_address = {POSTFIX_IP}
# GeoDNS orders the addresses (nearest silo first); keep its order.
smtp_randomize_addresses = no
smtp_connect_timeout = 5s
alias_maps =
alias_database =
local_recipient_maps =
# Retry deferred mail quickly so a scenario's account completes in seconds.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 4s
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
default_destination_concurrency_limit = 20
smtp_tls_security_level = none
"""
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(main)
        services = [
            f"{POSTFIX_IP}:25 inet n - n - - smtpd",
            "pickup unix n - n 60 1 pickup", "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr", "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce", "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce", "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush", "proxymap unix - - n - - proxymap",
            "smtp unix - - n - - smtp", "relay unix - - n - - smtp",
            "showq unix n - n - - showq", "error unix - - n - - error",
            "retry unix - - n - - error", "discard unix - - n - - discard",
            "anvil unix - - n - 1 anvil", "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write("\n".join(services) + "\n")
        r = subprocess.run(["postfix", "-c", self.etc, "start"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed: {r.stdout}{r.stderr} (see {self.log})")
        wait_for("postfix smtpd", lambda: port_open(POSTFIX_IP, 25), 20)

    def stop(self):
        subprocess.run(["postfix", "-c", self.etc, "stop"], capture_output=True, timeout=30)

    def flush(self):
        subprocess.run(["postqueue", "-c", self.etc, "-f"], capture_output=True, timeout=30)

    def queue_ids(self):
        r = subprocess.run(["postqueue", "-c", self.etc, "-j"], capture_output=True, text=True,
                           timeout=30)
        ids = set()
        for line in r.stdout.splitlines():
            try:
                ids.add(json.loads(line)["queue_id"])
            except (ValueError, KeyError):
                pass
        return ids

    def parse_log(self):
        """{postfix queue id: {"msgid", "status", "relay", "reason", "relays": [..]}}."""
        out = {}
        try:
            text = open(self.log, encoding="utf-8", errors="replace").read()
        except OSError:
            return out
        for line in text.splitlines():
            m = re.search(r" postfix/\w+\[\d+\]: ([0-9A-F]{6,}): (.*)$", line)
            if not m:
                continue
            qid, rest = m.groups()
            e = out.setdefault(qid, {"msgid": None, "status": None, "relay": None,
                                     "reason": None, "relays": [], "deferrals": 0})
            mm = re.match(r"message-id=<([^>]*)>", rest)
            if mm:
                e["msgid"] = mm.group(1)
                continue
            mm = re.search(r"relay=([^,]+), .*status=(\w+) \((.*)\)$", rest)
            if mm:
                e["relay"], e["status"], e["reason"] = mm.groups()
                e["relays"].append(mm.group(1))
                if e["status"] == "deferred":
                    e["deferrals"] += 1
        return out


# ---------------------------------------------------------------------------------------------
# Traffic

class Traffic:
    """Submits messages to the sending Postfix at `rate` per second from a few threads."""

    def __init__(self, rate, workers=4, seed=1):
        self.rate = rate
        self.workers = workers
        self.rng = random.Random(seed)
        self.submitted = []  # dicts
        self.failed_submissions = []
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.next = 0
        self.threads = []
        self.t0 = None
        self.prefix = f"{int(time.time())}{seed}"

    def plan(self, i):
        rng = random.Random(f"{self.prefix}-{i}")
        weights = [t[6] for t in TENANTS]
        tenant = rng.choices(TENANTS, weights=weights)[0]
        kind = rng.choices([k[0] for k in KINDS], weights=[k[1] for k in KINDS])[0]
        local = f"nobody{i}" if kind == "norcpt" else f"user{i % 7}"
        fid = f"f{self.prefix}-{i:06d}"
        lines = [f"Message {i} of the fleet, kind {kind}, tenant {tenant[0]}.", ""]
        for j in range(rng.randint(3, 120)):
            lines.append("".join(rng.choice("abcdefghij klmnopqrstuvwxyz0123456789")
                                 for _ in range(rng.randint(0, 76))))
            if j % 17 == 5:
                lines.append(".a line that starts with a dot, and one that is just a dot:")
                lines.append(".")
        if kind == "gtube":
            lines.append(GTUBE)
        if kind == "quarantine":
            lines.append(QUARANTINE_PHRASE)
        body = ("\r\n".join(lines) + "\r\n").encode()
        headers = (
            f"From: Fleet Sender <sender@{SENDER_DOMAIN}>\r\n"
            f"To: <{local}@{tenant[1]}>\r\n"
            f"Subject: fleet {fid} {kind}\r\n"
            f"Message-ID: <{fid}@{SENDER_DOMAIN}>\r\n"
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
            f"X-Fleet-Id: {fid}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        ).encode()
        return {"id": fid, "i": i, "kind": kind, "tenant": tenant[0],
                "rcpt": f"{local}@{tenant[1]}", "body_sha": hashlib.sha256(body).hexdigest(),
                "message": headers + body}

    def worker(self):
        conn = None
        while not self.stop_flag.is_set():
            with self.lock:
                i = self.next
                self.next += 1
            due = self.t0 + i / self.rate
            delay = due - time.time()
            if delay > 0 and self.stop_flag.wait(delay):
                return
            m = self.plan(i)
            for attempt in range(3):
                try:
                    if conn is None:
                        conn = smtplib.SMTP(POSTFIX_IP, 25, timeout=30)
                        conn.ehlo("client.fleet.test")
                    t = time.time()
                    conn.mail(f"sender@{SENDER_DOMAIN}")
                    code, _ = conn.rcpt(m["rcpt"])
                    if code != 250:
                        raise smtplib.SMTPException(f"RCPT {code}")
                    code, resp = conn.data(m["message"])
                    if code != 250:
                        raise smtplib.SMTPException(f"DATA {code} {resp!r}")
                    qid = re.search(rb"queued as ([0-9A-F]+)", resp)
                    rec = {k: v for k, v in m.items() if k != "message"}
                    rec.update(t_submit=t, pf_qid=qid.group(1).decode() if qid else None)
                    with self.lock:
                        self.submitted.append(rec)
                    break
                except (smtplib.SMTPException, OSError) as e:
                    try:
                        conn and conn.close()
                    except OSError:
                        pass
                    conn = None
                    if attempt == 2:
                        with self.lock:
                            self.failed_submissions.append((m["id"], str(e)))
        if conn:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                pass

    def start(self):
        self.t0 = time.time()
        for _ in range(self.workers):
            t = threading.Thread(target=self.worker, daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(40)


# ---------------------------------------------------------------------------------------------
# The account

def read_sink(d):
    """Every message a sink stored: list of dicts."""
    out = []
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return out
    for n in names:
        if not n.endswith(".eml") or n.startswith("."):
            continue
        p = os.path.join(d, n)
        try:
            data = open(p, "rb").read()
            meta = json.load(open(p[:-4] + ".json"))
        except (OSError, ValueError):
            continue
        head, _, body = data.partition(b"\r\n\r\n")
        headers = head.decode("utf-8", "replace")
        unfolded = re.sub(r"\r\n[ \t]+", " ", headers)
        fid = re.search(r"^X-Fleet-Id: (\S+)", unfolded, re.M | re.I)
        received = re.findall(r"^Received:(.*)$", unfolded, re.M | re.I)
        by = re.search(r"\bby (\S+) \(maildistiller\)", received[0]) if received else None
        meta.update(
            fid=fid.group(1) if fid else None,
            body_sha=hashlib.sha256(body).hexdigest(),
            received=len(received),
            engine_host=by.group(1) if by else None,
            raw=data,
        )
        out.append(meta)
    return out


def quarantined(fleet):
    """{fleet id: engine node} for every quarantined message on every running engine."""
    out = {}
    for n in fleet.nodes.values():
        if n.role != "engine":
            continue
        st, body = http(n.ops, "/queue?state=quarantined")
        if st != 200:
            continue
        for line in body.splitlines():
            qid = line.split()[0] if line and not line.startswith("--") else None
            if not qid:
                continue
            st2, show = http(n.ops, f"/queue/{qid}")
            m = re.search(r"^subject:\s+fleet (\S+)", show or "", re.M)
            if m:
                out[m.group(1)] = n.name
    return out


def engine_ids(fleet, state):
    """{fleet id: engine node} of the messages in `state` on every running engine."""
    out = {}
    for n in fleet.nodes.values():
        if n.role != "engine":
            continue
        st, body = http(n.ops, f"/queue?state={state}")
        if st != 200:
            continue
        for line in body.splitlines():
            if not line or line.startswith("--"):
                continue
            st2, show = http(n.ops, f"/queue/{line.split()[0]}")
            m = re.search(r"^subject:\s+fleet (\S+)", show or "", re.M)
            if m:
                out[m.group(1)] = n.name
    return out


def webmail_held(addr, view="held"):
    """Signs in to an engine's webmail as acme's admin; the fleet ids its inbox shows."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def req(method, path, body=None, cookie=""):
        c = httpclient.HTTPSConnection(addr, WEBMAIL_PORT, context=ctx, timeout=10)
        headers = {"Cookie": cookie} if cookie else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read().decode("utf-8", "replace")
        cookies = [h.split(";", 1)[0] for k, h in r.getheaders() if k.lower() == "set-cookie"]
        c.close()
        return r.status, data, cookies

    _, page, cookies = req("GET", "/login")
    pre = re.search(r'name="pre" value="([^"]+)"', page)
    if not pre:
        raise RuntimeError("webmail: no sign-in form")
    form = urllib.parse.urlencode({"address": WEBMAIL_USER, "password": WEBMAIL_PASSWORD,
                                   "pre": pre.group(1)})
    st, page, session = req("POST", "/login", form, "; ".join(cookies))
    if not session:
        raise RuntimeError(f"webmail: sign-in refused ({st})")
    st, page, _ = req("GET", f"/inbox?view={view}", cookie="; ".join(session))
    if st != 200:
        raise RuntimeError(f"webmail: inbox answered {st}")
    return set(re.findall(r"fleet (f\d+-\d+)", page))


def engine_queue_counts(fleet):
    """{engine: {state: count}} of the engines' queues (what is still inside the service)."""
    out = {}
    for n in fleet.nodes.values():
        if n.role != "engine":
            continue
        st, body = http(n.ops, "/queue")
        if st != 200:
            continue
        counts = {}
        for line in body.splitlines():
            parts = line.split()
            if len(parts) > 2 and not line.startswith("--"):
                counts[parts[1]] = counts.get(parts[1], 0) + 1
        out[n.name] = counts
    return out


class Account:
    def __init__(self, fleet, traffic, allow_duplicates):
        self.fleet, self.traffic, self.allow_duplicates = fleet, traffic, allow_duplicates

    def gather(self):
        self.sinks = {t[0]: read_sink(self.fleet.sink_dir(t[0])) for t in TENANTS}
        self.sender_box = read_sink(self.fleet.sink_dir("sender"))
        self.quarantine = quarantined(self.fleet)
        self.pf = self.fleet.postfix.parse_log()
        self.pf_queue = self.fleet.postfix.queue_ids()

    def outcomes(self):
        """{fid: outcome} for the submitted messages; 'pending' while not final."""
        delivered = {}
        for tenant, msgs in self.sinks.items():
            for m in msgs:
                delivered.setdefault(m["fid"], []).append((tenant, m))
        dsn, pf_bounce = {}, {}
        for m in self.sender_box:
            raw = m["raw"].decode("utf-8", "replace")
            ids = set(re.findall(r"X-Fleet-Id: (\S+)", raw, re.I))
            engine = "X-Maildistiller-Queue-ID" in raw
            for fid in ids:
                (dsn if engine else pf_bounce).setdefault(fid, []).append(raw)
        out = {}
        for s in self.traffic.submitted:
            fid = s["id"]
            pf = self.pf.get(s["pf_qid"] or "", {})
            if fid in delivered:
                out[fid] = ("delivered", delivered[fid])
            elif fid in self.quarantine:
                out[fid] = ("quarantined", self.quarantine[fid])
            elif fid in dsn:
                out[fid] = ("dsn", dsn[fid])
            elif pf.get("status") == "bounced":
                out[fid] = ("rejected", pf.get("reason"))
            elif s["pf_qid"] in self.pf_queue:
                out[fid] = ("pending-at-sender", pf.get("reason"))
            else:
                out[fid] = ("pending", pf.get("reason"))
        self.dsn, self.pf_bounce, self.delivered = dsn, pf_bounce, delivered
        return out

    def wait_final(self, timeout):
        """Polls until every message has a final outcome or timeout; returns the outcomes."""
        end = time.time() + timeout
        while True:
            self.gather()
            out = self.outcomes()
            pending = [f for f, (o, _) in out.items() if o.startswith("pending")]
            if not pending or time.time() >= end:
                return out
            self.fleet.postfix.flush()
            time.sleep(2)

    def report(self, name, out, notes):
        """Prints the table; returns a list of violations."""
        v = []
        counts = {}
        for fid, (o, _) in out.items():
            counts[o] = counts.get(o, 0) + 1
        expected = {k[0]: k[2] for k in KINDS}
        by_id = {s["id"]: s for s in self.traffic.submitted}
        dup = 0
        latencies = []
        hops_bad = body_bad = wrong_tenant = region_bad = unexpected = 0
        for fid, (o, detail) in out.items():
            s = by_id[fid]
            if o == "delivered":
                copies = detail
                dup += len(copies) - 1
                first = min(m["time"] for _, m in copies)
                latencies.append(first - s["t_submit"])
                for tenant, m in copies:
                    if tenant != s["tenant"] or s["rcpt"] not in m["rcpts"]:
                        wrong_tenant += 1
                        v.append(f"{fid}: delivered to {tenant} {m['rcpts']}, meant {s['rcpt']}")
                    if m["body_sha"] != s["body_sha"]:
                        body_bad += 1
                        v.append(f"{fid}: body differs from what was submitted")
                    if m["received"] != RECEIVED_HOPS:
                        hops_bad += 1
                        v.append(f"{fid}: {m['received']} Received headers, expected {RECEIVED_HOPS}")
                    eng = ENGINE_HOSTS.get(m["engine_host"])
                    if eng is None:
                        v.append(f"{fid}: top Received is not one of our engines: {m['engine_host']}")
                    elif s["tenant"] in REGION_ONLY and eng[2] not in REGION_ONLY[s["tenant"]]:
                        region_bad += 1
                        v.append(f"{fid}: region-only {s['tenant']} processed by {eng[0]} ({eng[2]})")
            elif o == "quarantined":
                eng = self.fleet.nodes[detail]
                region = next(x[3] for x in SILOS if x[0] == eng.silo)
                if s["tenant"] in REGION_ONLY and region not in REGION_ONLY[s["tenant"]]:
                    region_bad += 1
                    v.append(f"{fid}: region-only {s['tenant']} quarantined on {detail} ({region})")
            elif o == "dsn":
                for raw in detail:
                    m = re.search(r"Reporting-MTA: dns; (\S+)", raw)
                    eng = ENGINE_HOSTS.get(m.group(1) if m else "")
                    if eng and s["tenant"] in REGION_ONLY and eng[2] not in REGION_ONLY[s["tenant"]]:
                        region_bad += 1
                        v.append(f"{fid}: region-only {s['tenant']} DSN from {eng[0]}")
            elif o.startswith("pending"):
                v.append(f"{fid}: {o} ({s['kind']} to {s['rcpt']}): last sender-side status "
                         f"{detail}")
            if not o.startswith("pending") and o != expected[s["kind"]]:
                unexpected += 1
                v.append(f"{fid}: {s['kind']} message ended {o}, expected {expected[s['kind']]}")
            if o == "rejected" and not detail:
                v.append(f"{fid}: rejected without a reason the sender saw")
        if dup and not self.allow_duplicates:
            v.append(f"{dup} duplicate deliveries in a scenario that kills nothing")
        for fid, err in self.traffic.failed_submissions:
            v.append(f"{fid}: the sending Postfix refused the submission: {err}")
        latencies.sort()

        def pct(p):
            if not latencies:
                return float("nan")
            return latencies[min(len(latencies) - 1, int(round(p / 100 * (len(latencies) - 1))))]

        relays = {}
        for s in self.traffic.submitted:
            for r in self.pf.get(s["pf_qid"] or "", {}).get("relays", []):
                relays[r] = relays.get(r, 0) + 1
        lost = counts.get("pending", 0)
        row = {
            "scenario": name, "submitted": len(self.traffic.submitted),
            "delivered": counts.get("delivered", 0), "quarantined": counts.get("quarantined", 0),
            "rejected": counts.get("rejected", 0), "dsn": counts.get("dsn", 0),
            "pending_at_sender": counts.get("pending-at-sender", 0), "lost": lost,
            "duplicates": dup, "unexpected": unexpected, "wrong_tenant": wrong_tenant,
            "body_mismatch": body_bad, "hops_mismatch": hops_bad, "region_violations": region_bad,
            "p50_s": round(pct(50), 3), "p99_s": round(pct(99), 3),
            "max_s": round(latencies[-1], 3) if latencies else None,
        }
        log(f"== account: {name}")
        for k, val in row.items():
            if k != "scenario":
                print(f"   {k:<18} {val}")
        print("   sender-side deliveries by edge (Postfix relay=): " +
              ", ".join(f"{k} {n}" for k, n in sorted(relays.items())))
        dups = [(fid, [m["engine_host"] for _, m in d])
                for fid, (o, d) in out.items() if o == "delivered" and len(d) > 1]
        if dups:
            # A duplicate is a message an engine had spooled and delivered but whose 250 the
            # sender never saw (a kill mid-DATA reply): the sender retried elsewhere.
            notes.append("duplicates (fleet id: engines that delivered a copy): " +
                         "; ".join(f"{f}: {', '.join(e)}" for f, e in dups[:5]))
        for n in notes:
            print("   note:", n)
        for x in v[:25]:
            print("   VIOLATION:", x)
        if len(v) > 25:
            print(f"   ... and {len(v) - 25} more violations")
        row["violations"] = len(v)
        return row, v


# ---------------------------------------------------------------------------------------------
# Scenarios

class Scenario:
    """Traffic for `duration` seconds; `fault(ctx, at)` callbacks at fractions of it."""

    def __init__(self, name, steps, kills=False, spool_limits=None, check=None, doc=""):
        self.name, self.steps, self.kills = name, steps, kills
        self.spool_limits = spool_limits or {}
        self.check = check
        self.doc = doc


def step_kill_engine(fleet, notes, state):
    fleet.stop_node("lon1-uk-e1", signal.SIGKILL)
    notes.append("SIGKILL lon1-uk-e1")


def step_restart(*names):
    def f(fleet, notes, state):
        for n in names:
            fleet.start_node(n)
        notes.append(f"restarted {', '.join(names)}")
    return f


def step_stop(*names, sig=signal.SIGTERM):
    def f(fleet, notes, state):
        for n in names:
            fleet.stop_node(n, sig)
        notes.append(f"stopped ({signal.Signals(sig).name}) {', '.join(names)}")
        state["down_since"] = time.time()
    return f


def step_silo_stopped(fleet, notes, state):
    # GeoDNS (of the silos still up) must leave lon1 out within interval x fall.
    t = time.time()
    moved = wait_for("GeoDNS to leave lon1 out", lambda: (a := dig(f"mx.{ZONE}", "A")) and
                     ip(1, 1) not in a, 10)
    notes.append(f"GeoDNS answer for mx.{ZONE} after lon1 stopped: {dig(f'mx.{ZONE}', 'A')} "
                 f"({'moved' if moved else 'NOT moved'} in {time.time() - t:.1f}s)")
    state["silo_moved"] = bool(moved)
    state["silo_window"] = (time.time(), None)


def step_silo_back(fleet, notes, state):
    state["silo_window"] = (state["silo_window"][0], time.time())


def step_tenant_down(fleet, notes, state):
    fleet.stop_aux("sink-acme")
    notes.append("acme's mail server stopped")


def step_tenant_held(fleet, notes, state):
    counts = engine_queue_counts(fleet)
    held = {e: c for e, c in counts.items() if sum(c.values())}
    state["held_while_down"] = held
    notes.append(f"while acme's server is down, engines hold: {held}")
    # Webmail meanwhile: acme's admin, signed in on one engine of each uk cluster, must see
    # every message held on that cluster (its engines answer each other's pages).
    ids = engine_ids(fleet, "held")
    for page_engine, cluster in (("lon1-uk-e1", "lon1"), ("man1-uk-e1", "man1")):
        want = {f for f, e in ids.items() if fleet.nodes[e].silo == cluster}
        try:
            seen = webmail_held(fleet.nodes[page_engine].addr)
        except (OSError, RuntimeError, httpclient.HTTPException) as e:
            state.setdefault("webmail_bad", []).append(f"{page_engine}: {e}")
            continue
        missing = want - seen
        notes.append(f"webmail on {page_engine}: shows {len(seen & want)} of the {len(want)} "
                     f"messages held in {cluster}")
        if missing:
            state.setdefault("webmail_bad", []).append(
                f"{page_engine}: {len(missing)} held message(s) not shown, e.g. {sorted(missing)[:3]}")


def step_tenant_up(fleet, notes, state):
    fleet.start_sink("acme")
    notes.append("acme's mail server back")


def step_reload_all(broken_node):
    def f(fleet, notes, state):
        before = {n: http(x.ops, "/metrics")[1] for n, x in fleet.nodes.items()}
        state["reload_before"] = before
        fleet.write_configs(extra_tenant=True)
        with open(fleet.nodes[broken_node].config, "w") as fh:
            fh.write(fleet.node_toml(fleet.nodes[broken_node], broken=True))
        for n in fleet.nodes:
            fleet.signal_node(n, signal.SIGHUP)
        notes.append(f"SIGHUP to every node with a new tenant; {broken_node} given a broken file")
    return f


def step_reload_check(broken_node):
    def f(fleet, notes, state):
        bad = []
        for n, x in fleet.nodes.items():
            m = http(x.ops, "/metrics")[1]
            ok = metric(m, "maildistiller_config_reload_total", {"result": "ok"}) - metric(
                state["reload_before"][n], "maildistiller_config_reload_total", {"result": "ok"})
            err = metric(m, "maildistiller_config_reload_total", {"result": "error"}) - metric(
                state["reload_before"][n], "maildistiller_config_reload_total",
                {"result": "error"})
            alive = x.proc.poll() is None
            want = (0, 1) if n == broken_node else (1, 0)
            if (ok, err) != want or not alive:
                bad.append(f"{n}: reload ok +{ok:g} error +{err:g} alive={alive}")
        state["reload_bad"] = bad
        notes.append("reload results: " + ("as expected on every node" if not bad
                                           else "; ".join(bad)))
        with open(fleet.nodes[broken_node].config, "w") as fh:
            fh.write(fleet.node_toml(fleet.nodes[broken_node]))
        fleet.signal_node(broken_node, signal.SIGHUP)
    return f


def step_fill_spool(engine):
    def f(fleet, notes, state):
        spool = os.path.join(fleet.base, "spool", engine)
        filler = os.path.join(spool, "zz-filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            block = b"\0" * 65536
            while True:
                try:
                    if os.write(fd, block) == 0:
                        break
                except OSError:
                    if len(block) == 1:
                        break
                    block = block[: len(block) // 2]  # fill the last bytes too
        finally:
            os.close(fd)
        st = os.statvfs(spool)
        notes.append(f"{engine} spool filled: {st.f_bavail * st.f_frsize} bytes left")
    return f


def step_free_spool(engine):
    def f(fleet, notes, state):
        os.remove(os.path.join(fleet.base, "spool", engine, "zz-filler"))
        notes.append(f"{engine} spool freed")
    return f


def step_flap(engine, period=1.0, cycles=6):
    def f(fleet, notes, state):
        state["flap_window"] = (time.time(), time.time() + 2 * period * cycles + 10)
        p = fleet.nodes[engine].proc
        for _ in range(cycles):
            p.send_signal(signal.SIGSTOP)
            time.sleep(period)
            p.send_signal(signal.SIGCONT)
            time.sleep(period)
        notes.append(f"{engine} stopped/continued {cycles} times ({period}s each)")
    return f


def check_silo(fleet, state, acct, out):
    v = []
    if not state.get("silo_moved"):
        v.append("GeoDNS did not move the service name away from the stopped silo")
    start, end = state.get("silo_window", (None, None))
    if start and end:
        during = [s for s in acct.traffic.submitted if start + 2 <= s["t_submit"] <= end - 1]
        via_other = sum(1 for s in during
                        if any(f"[{ip(2, 1)}]" in r or f"[{ip(3, 1)}]" in r
                               for r in acct.pf.get(s["pf_qid"] or "", {}).get("relays", [])))
        if during and via_other == 0:
            v.append("no message submitted while lon1 was down went through another silo's edge")
        # The other silos' edges must not try lon1's engines once their probes saw them down
        # (fall x interval = 1 s; the window opens after GeoDNS moved, later still): no
        # session routed there and no connection attempt failing there.
        stale = 0
        for edge in ("man1-edge", "fra1-edge"):
            text = open(os.path.join(fleet.base, "logs", edge + ".log"), errors="replace").read()
            for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
                m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)Z .*"
                             r"(\brouted\b|engine connection failed).*engine=127\.0\.1\.\d+:",
                             line)
                if m:
                    t = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) \
                        + float(m.group(2))
                    if start + 1 <= t <= end - 1:
                        stale += 1
        if stale:
            v.append(f"{stale} session(s) routed or attempted by man1/fra1 edges to stopped "
                     "lon1 engines")
        state["note"] = (f"{via_other} of {len(during)} messages submitted while lon1 was down "
                         f"entered through man1/fra1 edges; {stale} sessions routed or "
                         "attempted to lon1's engines by them")
    return v


def check_cluster(fleet, state, acct, out):
    # globex (de, then uk) must have failed over to uk while fra1/de was down; hansa (de only)
    # must have waited at the sender (451 4.4.0) rather than go anywhere else.
    by_id = {s["id"]: s for s in acct.traffic.submitted}
    globex_uk = 0
    for fid, (o, d) in out.items():
        if o == "delivered" and by_id[fid]["tenant"] == "globex":
            eng = ENGINE_HOSTS.get(d[0][1]["engine_host"])
            globex_uk += bool(eng and eng[2] == "uk")
    hansa_waited = sum(1 for s in acct.traffic.submitted if s["tenant"] == "hansa"
                       and acct.pf.get(s["pf_qid"] or "", {}).get("deferrals"))
    state["note"] = (f"globex messages processed in uk (failover): {globex_uk}; hansa messages "
                     f"that waited at the sender (451 4.4.0, later processed in de): {hansa_waited}")
    v = []
    if not globex_uk:
        v.append("globex never failed over to uk while its de cluster was down")
    if not hansa_waited:
        v.append("no hansa message was deferred while its only cluster was down")
    return v


def check_tenant(fleet, state, acct, out):
    held = state.get("held_while_down") or {}
    v = [f"webmail: {b}" for b in state.get("webmail_bad", [])]
    if not held:
        v.append("no engine held acme's mail while its server was down")
    return v


def check_reload(fleet, state, acct, out):
    return [f"reload: {b}" for b in state.get("reload_bad", [])]


def check_spool(fleet, state, acct, out):
    # The full engine must have answered 4xx (Postfix deferred and retried, possibly elsewhere)
    # and never 250 for what it could not store; the account (nothing lost) covers the rest.
    logtext = open(os.path.join(fleet.base, "logs", "lon1-uk-e3.log"), errors="replace").read()
    refused = len(re.findall(r"cannot spool message: answering 4xx", logtext))
    deferred = sum(1 for s in acct.traffic.submitted
                   if acct.pf.get(s["pf_qid"] or "", {}).get("deferrals"))
    elsewhere = sum(1 for s in acct.traffic.submitted
                    if any(f"[{ip(1, 1)}]" not in r
                           for r in acct.pf.get(s["pf_qid"] or "", {}).get("relays", []))
                    and s["tenant"] != "hansa")
    state["note"] = (f"lon1-uk-e3 answered 4xx for {refused} message(s) it could not spool; "
                     f"the sender deferred {deferred} and moved {elsewhere} on to the next MX "
                     "address (another silo's edge) in the same attempt")
    if refused == 0:
        return ["the full engine was never offered a message: the fault was not exercised"]
    return []


def log_time(line):
    """Epoch seconds of a maildistiller log line (UTC ISO timestamp first), or None."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", line)
    if not m:
        return None
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(m.group(2) or 0)


def edge_transitions(fleet, engine_addr, window=None):
    """{edge: (downs, ups)} of one engine's health in the edges' logs, within `window`."""
    out = {}
    for n in fleet.nodes.values():
        if n.role != "edge":
            continue
        text = open(os.path.join(fleet.base, "logs", n.name + ".log"), errors="replace").read()
        lines = re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()
        if window:
            lines = [x for x in lines if window[0] <= (log_time(x) or 0) <= window[1]]
        text = "\n".join(lines)
        downs = len(re.findall(rf"engine down.*engine={re.escape(engine_addr)}", text))
        ups = len(re.findall(rf"engine up.*engine={re.escape(engine_addr)}", text))
        out[n.name] = (downs, ups)
    return out


def check_flap(fleet, state, acct, out):
    # Frozen for 2 s, thawed for 2 s, six times. Without damping each edge follows every cycle
    # (7 downs); with it (each quick relapse doubles the probes needed to come back) an edge
    # lets it back at most twice, then keeps it out until it has been steady.
    t = edge_transitions(fleet, f"{ip(1, 12)}:25", state.get("flap_window"))
    state["note"] = f"lon1-uk-e2 health transitions seen by each edge (down, up): {t}"
    worst = max(d for d, _ in t.values())
    if worst > 3:
        return [f"health thrashed: an edge marked the flapping engine down {worst} times"]
    return []


SCENARIOS = {
    "steady": Scenario("steady", [], doc="no fault: the baseline"),
    "engine-kill": Scenario("engine-kill", [(0.3, step_kill_engine),
                                            (0.6, step_restart("lon1-uk-e1"))], kills=True,
                            doc="SIGKILL an engine mid-traffic, restart it on the same spool"),
    "cluster-stop": Scenario(
        "cluster-stop", [(0.25, step_stop("fra1-de-e1", "fra1-de-e2")),
                         (0.7, step_restart("fra1-de-e1", "fra1-de-e2"))], check=check_cluster,
        doc="every engine of fra1/de stopped: globex fails over to uk, hansa (de only) waits"),
    "silo-stop": Scenario(
        "silo-stop", [(0.25, step_stop("lon1-edge", "lon1-dns", "lon1-uk-e1", "lon1-uk-e2",
                                       "lon1-uk-e3")),
                      (0.27, step_silo_stopped),
                      (0.7, step_silo_back),
                      (0.7, step_restart("lon1-uk-e1", "lon1-uk-e2", "lon1-uk-e3", "lon1-dns",
                                         "lon1-edge"))],
        check=check_silo, doc="the whole London silo stopped: GeoDNS sends new mail elsewhere"),
    "tenant-down": Scenario(
        "tenant-down", [(0.2, step_tenant_down), (0.65, step_tenant_held),
                        (0.7, step_tenant_up)],
        check=check_tenant, doc="acme's own server down, then back: held mail drains"),
    "reload-broken": Scenario(
        "reload-broken", [(0.3, step_reload_all("man1-edge")),
                          (0.5, step_reload_check("man1-edge"))],
        check=check_reload, doc="SIGHUP on every node during traffic, one config broken"),
    "spool-full": Scenario(
        "spool-full", [(0.25, step_fill_spool("lon1-uk-e3")), (0.65, step_free_spool("lon1-uk-e3"))],
        spool_limits={"lon1-uk-e3": "16m"}, check=check_spool,
        doc="one engine's spool disk full: it must 4xx, never 250 and lose"),
    "engine-stall": Scenario(
        "engine-stall", [(0.3, step_flap("lon1-uk-e1", period=8.0, cycles=1))],
        doc="an engine frozen for 8 s once (SIGSTOP): sessions on it wait, new ones go around"),
    "engine-flap": Scenario(
        "engine-flap", [(0.1, step_flap("lon1-uk-e2", period=2.0, cycles=6))], check=check_flap,
        doc="an engine frozen and thawed every second (SIGSTOP/SIGCONT): slow and flapping"),
}
SHORT = ["steady", "engine-kill", "cluster-stop", "silo-stop", "tenant-down", "reload-broken",
         "spool-full", "engine-flap"]


def run_scenario(sc, args, workdir):
    base = os.path.join(workdir, sc.name)
    os.makedirs(base)
    os.chmod(base, 0o755)
    fleet = Fleet(base, args.bin, sc.spool_limits)
    notes, state = [], {}
    try:
        log(f"== scenario {sc.name}: {sc.doc}")
        fleet.start()
        traffic = Traffic(args.rate, seed=zlib.crc32(sc.name.encode()) & 0xFFFF)
        traffic.start()
        t0 = time.time()
        for frac, fn in sc.steps:
            delay = t0 + frac * args.duration - time.time()
            if delay > 0:
                time.sleep(delay)
            fn(fleet, notes, state)
        delay = t0 + args.duration - time.time()
        if delay > 0:
            time.sleep(delay)
        traffic.stop()
        log(f"submitted {len(traffic.submitted)} in {time.time() - t0:.0f}s; waiting for the account")
        acct = Account(fleet, traffic, sc.kills)
        out = acct.wait_final(args.drain)
        extra = sc.check(fleet, state, acct, out) if sc.check else []
        if state.get("note"):
            notes.append(state["note"])
        notes.append(f"engines' queues at the end: {engine_queue_counts(fleet)}")
        row, v = acct.report(sc.name, out, notes)
        for x in extra:
            print("   VIOLATION:", x)
        v += extra
        row["violations"] = len(v)
        return row
    finally:
        fleet.stop()


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
            "pending_at_sender", "lost", "duplicates", "unexpected", "region_violations",
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
