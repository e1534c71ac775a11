"""The fleet's deployment: addresses, per-node configs, processes, the sending Postfix.

Part of tests/fleet (see fleet.py and bench/fleet/README.md). Constants here describe the
topology every other file checks against.
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request


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
# Cluster redundancy: every engine keeps a shadow copy of each message on another engine of its
# cluster before its 250 (src/shadow/). Takeover after 15 s: longer than any scenario keeps an
# engine stopped or frozen and then brings it back (those must cause no takeover), short enough
# for the account to see a destroyed engine's mail delivered by its shadows.
SHADOW_SECRET = "fleet-shadow-secret-0123456789abcdef-0123456789"
SHADOW_PORT = 2627
TAKEOVER_AFTER = 15
_webmail_hash = None  # argon2 PHC string, made once per run by `maildistiller user add`
# Delivery TLS: every tenant's server offers STARTTLS with a certificate of the fleet's test CA
# (for its address and mx.<domain>); this tenant requires it, verified against that CA.
TLS_REQUIRED = "acme"


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

# The operator token every node's `ops.token_file` holds (the queue API, drains, reload need it).
OPS_TOKEN = "fleet-operator-token"


def http(addr, path, method="GET", timeout=2.0):
    """(status, body) or (None, error). Sent as the operator."""
    req = urllib.request.Request(f"http://{addr}{path}", method=method,
                                 headers={"Authorization": f"Bearer {OPS_TOKEN}"})
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
    def __init__(self, base, binary, spool_limits=None, rspamd=None, shared=False):
        self.base = base
        # tests/rspamd/start.sh's exports, when the fleet scans with one shared rspamd (its Bayes
        # and fuzzy storage in one Redis, as a fleet shares them): every engine asks it and
        # learns through its controller.
        self.rspamd = rspamd
        # The `campaign` scenario: [shared] on one redis-server, the outbreak scanner on.
        self.shared = shared
        self.bin = binary
        self.nodes = {}
        self.aux = {}  # sinks, resolver: name -> Popen
        self.spool_limits = spool_limits or {}  # engine -> tmpfs size, e.g. "6m"
        self.mounts = []
        self.token_file = os.path.join(base, "etc", "ops.token")
        for d in ("etc", "logs", "spool", "sinks", "postfix"):
            os.makedirs(os.path.join(base, d), exist_ok=True)
        with open(self.token_file, "w") as f:
            f.write(OPS_TOKEN + "\n")
        os.chmod(self.token_file, 0o600)

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
                    f'    shadow = "{addr}:{SHADOW_PORT}"',
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
            if tid == TLS_REQUIRED:
                out += ['tls = "required"', f'tls_ca = "{os.path.join(self.base, "etc", "ca.pem")}"']
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
        if self.rspamd:
            pw = os.path.join(self.base, "etc", "rspamd.password")
            with open(pw, "w") as f:
                f.write(self.rspamd["MAILDISTILLER_RSPAMD_PASSWORD"] + "\n")
            out += [
                "[policy.default.scanners]",
                "rspamd = true",
                "[policy.default.rspamd]",
                f'address = "{self.rspamd["MAILDISTILLER_RSPAMD"]}"',
                'timeout = "20s"',
                "[policy.default.learning]",
                f'controller = "{self.rspamd["MAILDISTILLER_RSPAMD_CONTROLLER"]}"',
                f'password_file = "{pw}"',
                'timeout = "20s"',
            ]
        if self.shared:
            from campaign import OUTBREAK_POLICY
            out += OUTBREAK_POLICY
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
            f'token_file = "{self.token_file}"',
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
                "listen = []",
                f'proxy_listen = ["{node.addr}:25"]',
                f'spool_dir = "{os.path.join(self.base, "spool", node.name)}"',
                f'hostname = "{host}"',
                f"trusted_proxies = {json.dumps(edges)}",
                'redundancy = "shadow"',
                'on_shadow_failure = "tempfail"',
                f'takeover_after = "{TAKEOVER_AFTER}s"',
                "  [engine.shadow]",
                f'  listen = ["{node.addr}:{SHADOW_PORT}"]',
                f'  secret = "{SHADOW_SECRET}"',
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
        if self.shared and node.role in ("edge", "engine"):
            from campaign import SHARED_NODE_TOML
            out += SHARED_NODE_TOML
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
        self.tls_setup()
        self.webmail_setup()
        self.write_configs()

    def openssl(self, *args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    def tls_setup(self):
        """The fleet's test CA, a certificate of it for each tenant's server (its address and
        mx.<domain>), and a self-signed one for the same names (what a broken renewal gives)."""
        etc = os.path.join(self.base, "etc")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        ca, ca_key = os.path.join(etc, "ca.pem"), os.path.join(etc, "ca.key")
        self.openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=fleet test CA",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                     "-keyout", ca_key, "-out", ca)
        for tid, dom, _, _, sink, _, _ in TENANTS:
            names = f"subjectAltName=IP:{sink},DNS:mx.{dom}"
            cert, key = self.sink_cert(tid), self.sink_cert(tid, "key")
            csr, ext = os.path.join(etc, f"{tid}.csr"), os.path.join(etc, f"{tid}.ext")
            with open(ext, "w") as f:
                f.write(f"{names}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
            self.openssl("req", "-new", *ec, "-subj", f"/CN=mx.{dom}", "-keyout", key,
                         "-out", csr)
            self.openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
                         "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", cert)
            self.openssl("req", "-x509", *ec, "-days", "2", "-subj", f"/CN=mx.{dom}",
                         "-addext", names, "-keyout", self.sink_cert(tid, "key", True),
                         "-out", self.sink_cert(tid, "pem", True))

    def sink_cert(self, tenant, kind="pem", bad=False):
        return os.path.join(self.base, "etc", f"sink-{tenant}{'-bad' if bad else ''}.{kind}")

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

    def start_sink(self, tenant, bad_cert=False):
        """The tenant's server, offering STARTTLS with its CA-signed certificate, or with the
        self-signed one (`bad_cert`)."""
        t = next(x for x in TENANTS if x[0] == tenant)
        self.start_aux(f"sink-{tenant}", [
            sys.executable, os.path.join(HERE, "sink.py"), "--listen", f"{t[4]}:25",
            "--dir", self.sink_dir(tenant), "--label", tenant, "--hostname", f"mx.{t[1]}",
            "--refuse-prefix", "nobody",
            "--tls-cert", self.sink_cert(tenant, "pem", bad_cert),
            "--tls-key", self.sink_cert(tenant, "key", bad_cert)])
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
        if self.shared:
            from campaign import start_redis
            start_redis(self)
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
