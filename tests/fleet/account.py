"""Traffic into the sending Postfix and the account of every message it submitted.

Part of tests/fleet (see fleet.py and bench/fleet/README.md).
"""

import hashlib
import http.client as httpclient
import json
import os
import random
import re
import smtplib
import ssl
import threading
import time
import urllib.parse
import urllib.request

from deploy import *  # noqa: F403 - the topology's constants and helpers

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

    def wait_final(self, timeout, lost_ok=None):
        """Polls until every message has a final outcome (or is in `lost_ok(self)`, a loss the
        scenario explains) or timeout; returns the outcomes."""
        end = time.time() + timeout
        while True:
            self.gather()
            out = self.outcomes()
            pending = {f for f, (o, _) in out.items() if o.startswith("pending")}
            if pending and lost_ok and pending <= lost_ok(self):
                return out
            if not pending or time.time() >= end:
                return out
            self.fleet.postfix.flush()
            time.sleep(2)

    def report(self, name, out, notes, lost_ok=frozenset()):
        """Prints the table; returns a list of violations. `lost_ok`: messages whose loss the
        scenario explains (both copies destroyed): reported, not violations."""
        v = []
        counts = {}
        for fid, (o, _) in out.items():
            counts[o] = counts.get(o, 0) + 1
        expected = {k[0]: k[2] for k in KINDS}
        by_id = {s["id"]: s for s in self.traffic.submitted}
        dup = 0
        latencies = []
        hops_bad = body_bad = wrong_tenant = region_bad = unexpected = clear = 0
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
                    if not m.get("tls"):
                        clear += 1
                        v.append(f"{fid}: delivered to {tenant}'s server in clear text")
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
            elif o.startswith("pending") and fid in lost_ok:
                pass
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
            "lost_both_copies": sum(1 for f, (o, _) in out.items()
                                    if o.startswith("pending") and f in lost_ok),
            "duplicates": dup, "unexpected": unexpected, "wrong_tenant": wrong_tenant,
            "body_mismatch": body_bad, "hops_mismatch": hops_bad, "region_violations": region_bad,
            "delivered_in_clear": clear,
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
