"""The faults injected while mail flows, and the checks each scenario adds to the account.

Part of tests/fleet (see fleet.py and bench/fleet/README.md).
"""

import calendar
import glob
import json
import http.client as httpclient
import os
import random
import re
import shutil
import signal
import smtplib
import subprocess
import time
import urllib.request
import zlib

from account import *  # noqa: F403
from deploy import *  # noqa: F403
from campaign import check_campaign, step_campaign

# ---------------------------------------------------------------------------------------------
# Scenarios

class Scenario:
    """Traffic for `duration` seconds; `fault(ctx, at)` callbacks at fractions of it."""

    def __init__(self, name, steps, kills=False, spool_limits=None, check=None, doc="",
                 rspamd=False, shared=False, lost_ok=None):
        self.name, self.steps, self.kills = name, steps, kills
        self.rspamd = rspamd  # the fleet scans with one shared rspamd (tests/rspamd/start.sh)
        self.shared = shared  # the fleet runs [shared] on a redis-server (campaign.py)
        self.spool_limits = spool_limits or {}
        self.check = check
        self.doc = doc
        # lost_ok(state) -> (acct -> set of fleet ids whose loss the scenario explains)
        self.lost_ok = lost_ok


def step_kill_engine(fleet, notes, state):
    fleet.stop_node("lon1-uk-e1", signal.SIGKILL)
    notes.append("SIGKILL lon1-uk-e1")


def step_restart(*names):
    # All at once, then wait: with shadow redundancy an engine is ready only once a peer of its
    # cluster is up to hold its copies (`/readyz`: no-shadow), so a whole cluster started one
    # engine at a time would wait on itself.
    def f(fleet, notes, state):
        for n in names:
            fleet.start_node(n, wait=False)
        fleet.wait_ready(list(names))
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


def step_tenant_held(fleet, notes, state, why="acme's server is down"):
    counts = engine_queue_counts(fleet)
    held = {e: c for e, c in counts.items() if sum(c.values())}
    state["held_while_down"] = held
    notes.append(f"while {why}, engines hold: {held}")
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


def step_bad_cert(fleet, notes, state):
    fleet.stop_aux(f"sink-{TLS_REQUIRED}")
    state["bad_since"] = time.time()
    fleet.start_sink(TLS_REQUIRED, bad_cert=True)
    notes.append(f"{TLS_REQUIRED}'s server (tls = \"required\") now shows a self-signed certificate")


def step_bad_cert_held(fleet, notes, state):
    step_tenant_held(fleet, notes, state, why=f"{TLS_REQUIRED}'s certificate does not verify")
    got = [m for m in read_sink(fleet.sink_dir(TLS_REQUIRED)) if m["time"] >= state["bad_since"]]
    state["sent_to_bad_cert"] = len(got)
    refused = 0
    for n in fleet.nodes.values():
        if n.role == "engine":
            m = http(n.ops, "/metrics")[1]
            refused += metric(m, "maildistiller_engine_delivery_tls_total",
                              {"tenant": TLS_REQUIRED, "result": "failed_required"})
    state["failed_required"] = refused
    notes.append(f"messages the server with the bad certificate got: {len(got)}; deliveries "
                 f"deferred for TLS (failed_required): {refused:g}")


def step_good_cert(fleet, notes, state):
    fleet.stop_aux(f"sink-{TLS_REQUIRED}")
    fleet.start_sink(TLS_REQUIRED)
    notes.append(f"{TLS_REQUIRED}'s server shows its CA-signed certificate again")


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


# Learning across silos: a user of acme (uk: London or Manchester) forwards a pitch to acme's
# report address; a near-copy sent to hansa (de only: Frankfurt) must then be quarantined there.
LEARN_WORDS = ("offer bonus deposit returns partners exclusive membership claim account confirm "
               "deadline limited guarantee today places reward investment profit secure instant "
               "access premium winner selected opportunity cash credit approved free trial").split()


# Function words linking the drawn ones, so that rspamd always takes the text for English: it
# stems the words it hashes by the language it detects from words sampled at random, and the
# bare salad was now and then taken for French, hashing to another key, so the near-copy missed
# its learnt hash (see `pitch` in tests/it/scan/rspamd.rs). Stop words stay out of the hashes.
LEARN_LINKS = ["The", "and the", "of your", "for the", "is", "to", "with", "by the", "on",
               "as your", "from the", "at", "so that your", "in"]


def learn_pitch(seed, greeting, to):
    rng = random.Random(seed)
    lines = [" ".join(f"{link} {rng.choice(LEARN_WORDS)}" for link in LEARN_LINKS) + f" (step {i})."
             for i in range(30)]
    return (f"From: Offers <deals@{SENDER_DOMAIN}>\r\nTo: <{to}>\r\nSubject: learn-{seed} bonus\r\n"
            f"Message-ID: <{greeting.replace(' ', '')}.{seed}@{SENDER_DOMAIN}>\r\n"
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{greeting},\r\n\r\n" + "\r\n".join(lines) + "\r\n")


def submit(mail_from, rcpt, data):
    with smtplib.SMTP(POSTFIX_IP, 25, timeout=30) as c:
        c.ehlo("client.fleet.test")
        c.sendmail(mail_from, [rcpt], data.encode())


def step_report(fleet, notes, state):
    seed = f"{int(time.time())}{os.getpid()}"
    state["learn_seed"] = seed
    original = learn_pitch(seed, "Dear Bob", "user0@acme.example")
    report = ("From: <user0@acme.example>\r\nTo: <report-spam@acme.example>\r\n"
              "Subject: Fwd: spam\r\nMIME-Version: 1.0\r\n"
              "Content-Type: multipart/mixed; boundary=\"r\"\r\n\r\n--r\r\n"
              "Content-Type: text/plain\r\n\r\nThis got through.\r\n--r\r\n"
              f"Content-Type: message/rfc822\r\n\r\n{original}\r\n--r--\r\n")
    submit("user0@acme.example", "report-spam@acme.example", report)
    state["reported_at"] = time.time()
    learnt = wait_for("an engine of acme to learn the report", lambda: any(
        f"learn-{seed} bonus" in open(p, errors="replace").read()
        for p in glob.glob(os.path.join(fleet.base, "spool", "*", "learning", "audit.log"))), 30)
    where = [os.path.basename(os.path.dirname(os.path.dirname(p))) for p in
             glob.glob(os.path.join(fleet.base, "spool", "*", "learning", "audit.log"))]
    notes.append(f"report learnt by {where} {time.time() - state['reported_at']:.1f}s after "
                 f"submission" if learnt else "report NOT learnt within 30 s")
    state["learnt"] = bool(learnt)


def fuzzy_hit(fleet, message):
    """True when rspamd (the fleet's shared one) already knows `message` by its fuzzy hash."""
    try:
        req = urllib.request.Request(f"http://{fleet.rspamd['MAILDISTILLER_RSPAMD']}/checkv2",
                                     data=message.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            symbols = json.load(r).get("symbols", {})
    except (OSError, ValueError):
        return False
    return any(k.startswith("LOCAL_FUZZY_") and k != "LOCAL_FUZZY_UNKNOWN" for k in symbols)


def step_near_copy(fleet, notes, state):
    seed = state.get("learn_seed")
    if not seed:
        return
    copy = learn_pitch(seed, "Dear customer", "user1@hansa.example")
    # rspamd's fuzzy storage makes a learnt hash visible after its sync (1 s here, 60 s by
    # default); on a loaded machine it has taken 15 s. The scenario measures that delay and
    # sends the copy once rspamd answers for it, so what it checks is the fleet's path, not the
    # scheduler.
    t0 = time.time()
    seen = wait_for("rspamd to know the reported message's fuzzy hash",
                    lambda: fuzzy_hit(fleet, copy), 45)
    notes.append(f"fuzzy hash visible to rspamd {time.time() - state.get('reported_at', t0):.1f}s "
                 f"after the report's submission" if seen else "fuzzy hash NOT visible within 45 s")
    submit(f"deals@{SENDER_DOMAIN}", "user1@hansa.example", copy)
    state["copy_sent"] = time.time()


def copy_quarantined_on(fleet, seed):
    for n in fleet.nodes.values():
        if n.role != "engine":
            continue
        st, body = http(n.ops, "/queue?state=quarantined")
        for line in (body or "").splitlines() if st == 200 else []:
            qid = line.split()[0] if line and not line.startswith("--") else None
            if qid and f"learn-{seed}" in (http(n.ops, f"/queue/{qid}")[1] or ""):
                return n.name
    return None


def delivered_copy_verdict(fleet, seed):
    """The X-Maildistiller-Verdict of the near-copy if it reached hansa's server, else None."""
    for p in glob.glob(os.path.join(fleet.sink_dir("hansa"), "*.eml")):
        text = open(p, errors="replace").read()
        if f"learn-{seed}" in text:
            # The whole header, its folded lines too (the findings say why it was delivered).
            m = re.search(r"^X-Maildistiller-Verdict: (.*(?:\r?\n[ \t].*)*)", text, re.M)
            return " ".join(m.group(1).split()) if m else ""
    return None


def check_learn(fleet, state, acct, out):
    """Caught, as issue 16 counts it: any action but plain delivery. Quarantine (the usual
    outcome: fuzzy hit ~10 + the rest >= 10) or, when the near-copy's fuzzy similarity is
    lower, tagged on its way to hansa. Delivered untouched is the violation."""
    seed = state.get("learn_seed")
    v = []
    if not state.get("learnt"):
        return ["the report to report-spam@acme.example was not learnt"]
    found = wait_for("the near-copy to be quarantined or delivered", lambda: (
        copy_quarantined_on(fleet, seed) or delivered_copy_verdict(fleet, seed) is not None), 30)
    where = copy_quarantined_on(fleet, seed) if found else None
    verdict = delivered_copy_verdict(fleet, seed)
    after = state["copy_sent"] - state["reported_at"]
    if where:
        if not where.startswith("fra1"):
            v.append(f"the near-copy was quarantined on {where}, not in hansa's Frankfurt silo")
        else:
            state["note"] = (f"near-copy to hansa quarantined on {where} (another silo, another "
                             f"tenant) {after:.1f}s after the report was sent")
    elif verdict is not None and not verdict.startswith("action=deliver"):
        state["note"] = (f"near-copy to hansa caught ({verdict}) {after:.1f}s after the report "
                         f"was sent")
    elif verdict is not None:
        v.append(f"the near-copy reached hansa's server untouched ({verdict})")
    else:
        v.append("the near-copy to hansa was neither quarantined nor delivered within 30 s")
    return v


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


def check_bad_cert(fleet, state, acct, out):
    v = check_tenant(fleet, state, acct, out)
    if state.get("sent_to_bad_cert"):
        v.append(f"{state['sent_to_bad_cert']} message(s) sent to a server whose certificate "
                 "does not verify, under tls = \"required\"")
    if not state.get("failed_required"):
        v.append("no delivery was counted failed_required while the certificate was bad")
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


# ---------------------------------------------------------------------------------------------
# Cluster redundancy: engines destroyed with their disks

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def engine_log(fleet, name):
    try:
        text = open(os.path.join(fleet.base, "logs", name + ".log"), errors="replace").read()
    except OSError:
        return []
    return ANSI.sub("", text).splitlines()


def node_of(addr):
    """The engine node of an engine id (`127.0.1.12:25`), or None."""
    return ENGINE_ADDRS.get(addr.rsplit(":", 1)[0]) if addr and addr != "-" else None


def shadow_history(fleet):
    """{engine queue id: (primary node, t queued, [(t, shadow node)])} from the engines' logs: the
    shadow named when the message was queued, and every later re-shadowing."""
    hist = {}
    for n in fleet.nodes.values():
        if n.role != "engine":
            continue
        for line in engine_log(fleet, n.name):
            m = re.search(r"message queued .*\bid=([0-9A-F]{24})\b.*\bshadow=(\S+)", line)
            if m:
                t = log_time(line)
                hist[m.group(1)] = (n.name, t, [(t, node_of(m.group(2)))])
                continue
            m = re.search(r"re-shadowed .*\bid=([0-9A-F]{24})\b.*\bpeer=(\S+)", line)
            if m and m.group(1) in hist and hist[m.group(1)][0] == n.name:
                hist[m.group(1)][2].append((log_time(line), node_of(m.group(2))))
    return hist


def queue_id(acct, sub):
    """The engine queue id the sender's 250 named for a submitted message (Postfix's log)."""
    m = re.search(r"queued as ([0-9A-F]{24})", acct.pf.get(sub["pf_qid"] or "", {}).get("reason")
                  or "")
    return m.group(1) if m else None


def step_destroy(*names, gap=0.0):
    """SIGKILL each engine and delete its spool directory (its own mail and the copies it held
    for others): the machine and its disk are gone. `gap` seconds between two."""
    def f(fleet, notes, state):
        for k, n in enumerate(names):
            if k and gap:
                time.sleep(gap)
            fleet.stop_node(n, signal.SIGKILL)
            shutil.rmtree(os.path.join(fleet.base, "spool", n), ignore_errors=True)
            state.setdefault("destroyed", {})[n] = time.time()
            notes.append(f"SIGKILL {n} and deleted its spool (its mail and the copies it held)")
    return f


def step_destroy_holding(name, wait=8.0):
    """step_destroy(name), once it holds acme mail it could not deliver (acme's server is down):
    which engine a message lands on is random, and an engine that happened to hold none leaves
    its shadows nothing to take over (it happened once in CI). Waits up to `wait` seconds."""
    def f(fleet, notes, state):
        n = fleet.nodes[name]

        def holds():
            held = 0
            for st in ("deferred", "held", "queued"):
                code, body = http(n.ops, f"/queue?tenant=acme&state={st}")
                if code == 200:
                    held += sum(1 for line in (body or "").splitlines()
                                if line and not line.startswith("--"))
            return held
        t0 = time.time()
        held = wait_for(f"{name} to hold undelivered acme mail", holds, wait)
        notes.append(f"{name} held {held or 0} undelivered acme message(s) "
                     f"{time.time() - t0:.1f}s after the step began")
        step_destroy(name)(fleet, notes, state)
    return f


def step_destroy_shadow_of(primary):
    """Destroys the engine of the primary's cluster that holds most of its copies right now."""
    def f(fleet, notes, state):
        silo = fleet.nodes[primary].silo
        pid = f"{fleet.nodes[primary].addr}:25"
        best, most = None, -1
        for n in fleet.nodes.values():
            if n.role != "engine" or n.silo != silo or n.name == primary:
                continue
            held = metric(http(n.ops, "/metrics")[1], "maildistiller_engine_shadow_copies_held",
                          {"peer": pid})
            if held > most:
                best, most = n.name, held
        state["shadow_victim"] = (best, most)
        notes.append(f"{best} held {most:g} copies of {primary}'s mail")
        step_destroy(best)(fleet, notes, state)
    return f


def lost_to_both_copies(state):
    """Messages whose every copy was on destroyed engines when the last of them died: their
    primary was destroyed, and so was the last shadow it had copied them to before then."""
    def f(acct):
        killed = state.get("destroyed", {})
        if not killed:
            return set()
        t_last = max(killed.values())
        hist = shadow_history(acct.fleet)
        out = set()
        for sub in acct.traffic.submitted:
            h = hist.get(queue_id(acct, sub) or "")
            if not h or h[0] not in killed:
                continue
            shadows = [sh for t, sh in h[2] if t is None or t <= t_last]
            if shadows and shadows[-1] in killed:
                out.add(sub["id"])
        state["lost_explained"] = out
        return out
    return f


def explain_duplicates(fleet, state, out):
    """Notes what each duplicate delivery was."""
    killed = set(state.get("destroyed", {}))
    kinds = {}
    for fid, (o, d) in out.items():
        if o != "delivered" or len(d) < 2:
            continue
        engines = [ENGINE_HOSTS.get(m["engine_host"], (m["engine_host"],))[0] for _, m in d]
        if killed & set(engines) and len(set(engines)) > 1:
            k = ("delivered by a destroyed engine before it died, and again by the shadow that "
                 "took it over (its discard had not reached the shadow)")
        elif len(set(engines)) > 1:
            k = "accepted twice: the sender got no 250 from the first engine and retried"
        else:
            k = "delivered twice by one engine (a kill between the server's 250 and its record)"
        kinds.setdefault(k, []).append(fid)
    return [f"{len(v)} duplicate(s): {k} (e.g. {v[0]})" for k, v in kinds.items()]


def check_destroyed(fleet, state, acct, out):
    """Someone delivered what the destroyed engines had acknowledged; any loss is explained."""
    v = []
    killed = state.get("destroyed", {})
    adopted = 0.0
    for n in fleet.nodes.values():
        if n.role == "engine" and n.name not in killed and n.proc and n.proc.poll() is None:
            m = http(n.ops, "/metrics")[1]
            for k in killed:
                adopted += metric(m, "maildistiller_engine_shadow_taken_over_messages_total",
                                  {"from": f"{fleet.nodes[k].addr}:25"})
    notes = [f"the destroyed engines' shadows took over and delivered {adopted:g} message(s)"]
    victim = state.get("shadow_victim")
    if victim:
        e1 = fleet.nodes["lon1-uk-e1"].name
        resh = sum(1 for line in engine_log(fleet, e1) if "re-shadowed" in line
                   and (log_time(line) or 0) >= killed[victim[0]])
        notes.append(f"lon1-uk-e1 copied {resh} message(s) again after its shadow {victim[0]} "
                     "was destroyed")
    lost = {f for f, (o, _) in out.items() if o == "pending"}
    explained = state.get("lost_explained", set())
    if killed and len(killed) > 1:
        t_first = min(killed.values())
        hist = shadow_history(fleet)
        late = []
        for sub in acct.traffic.submitted:
            if sub["id"] in lost:
                h = hist.get(queue_id(acct, sub) or "")
                if h and h[1] and h[1] > t_first + 0.5:
                    late.append(sub["id"])
        notes.append(f"{len(lost)} message(s) lost, each with both copies on the destroyed "
                     f"engines ({len(lost & explained)} explained); acknowledged after the first "
                     f"death and lost: {len(late)} (tempfail was in force: must be 0)")
        if late:
            v.append(f"{len(late)} message(s) acknowledged after the first death were lost, e.g. "
                     f"{late[:3]}")
    elif adopted == 0 and not victim:
        v.append("nothing was taken over: the destroyed engine held no undelivered mail")
    notes += explain_duplicates(fleet, state, out)
    state["note"] = "; ".join(notes)
    return v


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
    "tls-bad-cert": Scenario(
        "tls-bad-cert", [(0.2, step_bad_cert), (0.65, step_bad_cert_held),
                         (0.7, step_good_cert)],
        check=check_bad_cert,
        doc="acme (tls = required) shows a self-signed certificate: its mail is held, never "
            "sent; the right certificate back: it drains over TLS"),
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
    "engine-destroyed": Scenario(
        "engine-destroyed", [(0.1, step_tenant_down), (0.35, step_destroy_holding("lon1-uk-e1")),
                             (0.6, step_tenant_up)], kills=True, check=check_destroyed,
        doc="an engine SIGKILLed and its spool deleted while acme's server is down: its shadows "
            "deliver every message it acknowledged"),
    "shadow-destroyed": Scenario(
        "shadow-destroyed", [(0.1, step_tenant_down), (0.35, step_destroy_shadow_of("lon1-uk-e1")),
                             (0.6, step_tenant_up)], kills=True, check=check_destroyed,
        doc="the engine holding most of lon1-uk-e1's copies destroyed: they are copied again, "
            "its own mail is taken over"),
    "both-destroyed": Scenario(
        "both-destroyed", [(0.1, step_tenant_down),
                           (0.35, step_destroy("lon1-uk-e1", "lon1-uk-e2", gap=2.0)),
                           (0.6, step_tenant_up)], kills=True, check=check_destroyed,
        lost_ok=lost_to_both_copies,
        doc="two engines of one cluster destroyed 2 s apart: only messages whose both copies "
            "were on them may be lost, none acknowledged after the first death"),
    "campaign": Scenario(
        "campaign", [(0.2, step_campaign)], check=check_campaign, shared=True,
        doc="a campaign of varied copies into all three silos: acted on everywhere within 2 s"),
}
SCENARIOS["learn"] = Scenario(
    "learn", [(0.2, step_report), (0.5, step_near_copy)], check=check_learn, rspamd=True,
    doc="one shared rspamd: acme's user reports a pitch in the UK, its near-copy to hansa is "
        "caught in Frankfurt (quarantined; tagged when its fuzzy similarity is lower)")

SHORT = ["steady", "engine-kill", "cluster-stop", "silo-stop", "tenant-down", "tls-bad-cert",
         "reload-broken", "spool-full", "engine-flap", "engine-destroyed", "shadow-destroyed",
         "learn", "campaign"]


def run_scenario(sc, args, workdir):
    base = os.path.join(workdir, sc.name)
    os.makedirs(base)
    os.chmod(base, 0o755)
    rspamd = None
    if sc.rspamd:
        started = subprocess.run(["bash", os.path.join(REPO, "tests/rspamd/start.sh")],
                                 stdout=subprocess.PIPE, text=True, check=True).stdout
        rspamd = dict(re.findall(r"^export (\w+)=(\S*)$", started, re.M))
    fleet = Fleet(base, args.bin, sc.spool_limits, rspamd, shared=sc.shared)
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
        lost_ok = sc.lost_ok(state) if sc.lost_ok else None
        out = acct.wait_final(args.drain, lost_ok)
        allowed = lost_ok(acct) if lost_ok else frozenset()
        extra = sc.check(fleet, state, acct, out) if sc.check else []
        if state.get("note"):
            notes.append(state["note"])
        notes.append(f"engines' queues at the end: {engine_queue_counts(fleet)}")
        row, v = acct.report(sc.name, out, notes, allowed)
        for x in extra:
            print("   VIOLATION:", x)
        v += extra
        row["violations"] = len(v)
        return row
    finally:
        fleet.stop()
        if rspamd:
            subprocess.run(["bash", os.path.join(REPO, "tests/rspamd/stop.sh"),
                            rspamd["MAILDISTILLER_RSPAMD_DIR"]], check=False)
