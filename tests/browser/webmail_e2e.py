#!/usr/bin/python3
"""Webmail end to end in headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): the real `maildistiller --role engine` binary with a config written here, mail seeded
over SMTP (held, quarantined, hostile), then a browser signs in with the keyboard, opens a held
message, releases a quarantined one, opens the hostile one and proves that none of its script
ran and nothing it points at was fetched (a canary HTTP server on loopback counts requests).
Then a plain user cannot release a quarantined virus (no button; a forged request is refused),
and another user clicks "Always allow" on a quarantined newsletter: the sender's next message
is delivered to the tenant's server (a small SMTP sink here), not quarantined.
Screenshots go to $ARTIFACTS_DIR (default target/artifacts/webmail).

Usage: tests/browser/webmail_e2e.py [path/to/maildistiller]   (default: $CARGO_TARGET_DIR or
target, then debug/maildistiller). Prints `N passed, N failed` and exits non-zero on failure.
Everything listens on 127.0.0.1 with ports the kernel picks; every wait is bounded.
"""

import http.server
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PASSWORD = "browser test password"
RESULTS = []


def check(name, ok, detail=""):
    RESULTS.append((name, bool(ok)))
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f"  -- {detail}"), flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, fn, limit=30.0):
    """Polls fn() until truthy (state changes, never readiness by sleeping blindly)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            v = fn()
            if v:
                return v
        except Exception:  # not up yet
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


class Canary(http.server.BaseHTTPRequestHandler):
    """Records every request: a hostile message must never make the browser ask for anything."""

    hits = []

    def do_GET(self):
        Canary.hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


def hostile(canary):
    c = f"http://127.0.0.1:{canary}"
    html = f"""<html><head>
<script>document.title='pwned';window.name='pwned';fetch('{c}/script-ran')</script>
<script src="{c}/script-src"></script>
<link rel="stylesheet" href="{c}/link-css"><link rel="prefetch" href="{c}/prefetch">
<style>@import url({c}/import); body {{ background: url({c}/style-bg) }}</style>
<meta http-equiv="refresh" content="0;url={c}/refresh">
<base href="{c}/base/">
</head><body onload="window.name='pwned';fetch('{c}/onload')">
<p style="position:fixed;top:0;left:0;width:100%;background:red;color:white">Your account is locked</p>
<img src="{c}/remote-image.png" alt="tracker">
<img src="x" onerror="window.name='pwned';fetch('{c}/onerror')">
<div style="background-image:url({c}/div-bg)">styled</div>
<a id="js" href="javascript:fetch('{c}/js-link')">click me</a>
<a href="https://login.evil.example/bank">https://bank.example/</a>
<form action="{c}/form"><input name="pw"><button>Log in</button></form>
<iframe src="{c}/iframe"></iframe><object data="{c}/object"></object>
<svg><script>fetch('{c}/svg-script')</script></svg>
<video poster="{c}/poster"></video><embed src="{c}/embed">
</body></html>"""
    return (
        "From: Mallory <m@evil.example>\r\nTo: bob@acme.example\r\nSubject: Hostile test message\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=zz\r\n\r\n"
        "--zz\r\nContent-Type: text/plain\r\n\r\nplain part\r\n"
        "--zz\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html + "\r\n--zz--\r\n"
    )


class Sink:
    """A tenant's mail server stand-in: takes every message, records (recipients, data)."""

    def __init__(self):
        self.got = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    def session(self, conn):
        f = conn.makefile("rb")
        send = lambda line: conn.sendall(line.encode() + b"\r\n")
        send("220 sink.test ESMTP")
        rcpts = []
        try:
            for raw in f:
                cmd = raw.decode(errors="replace").strip().upper()
                if cmd.startswith("EHLO") or cmd.startswith("HELO"):
                    send("250 sink.test")
                elif cmd.startswith("MAIL"):
                    rcpts = []
                    send("250 ok")
                elif cmd.startswith("RCPT"):
                    rcpts.append(raw.decode().split(":", 1)[1].strip().strip("<>"))
                    send("250 ok")
                elif cmd == "DATA":
                    send("354 go")
                    data = b""
                    for line in f:
                        if line == b".\r\n":
                            break
                        data += line[1:] if line.startswith(b"..") else line
                    self.got.append((rcpts, data.decode(errors="replace")))
                    send("250 ok")
                elif cmd == "QUIT":
                    send("221 bye")
                    return
                else:
                    send("250 ok")
        except OSError:
            pass
        finally:
            conn.close()


def eicar(sender, to):
    """The EICAR test file as eicar.com (a virus, and a blocked extension too)."""
    with open(os.path.join(ROOT, "tests/fixtures/scan/eicar.eml")) as f:
        text = f.read().replace("\r\n", "\n")
    return (text.replace("From: alice@good.test", f"From: {sender}")
            .replace("To: bob@acme.example", f"To: {to}").replace("\n", "\r\n"))


def plain(subject, body):
    return (
        f"From: Alice Sender <alice@sender.example>\r\nTo: bob@acme.example\r\nSubject: {subject}\r\n"
        f"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n{body}\r\n"
    )


def config(d, ports, cert, key, sink):
    return f"""
[ops]
listen = "127.0.0.1:{ports['ops']}"
token_file = "{d}/ops.token"
[regions.uk]
[[silo]]
name = "lon1"
hostname = "lon1.test"
lat = 51.5
lon = -0.1
  [[silo.cluster]]
  name = "uk"
  region = "uk"
    [[silo.cluster.engine]]
    address = "127.0.0.1:{ports['smtp']}"
    proxy = "none"   # the test is the sender: it talks to the engine's direct listener
# The tenant's server is down: nothing listens on its port, so its mail is held.
[[tenant]]
id = "acme"
domains = ["acme.example"]
regions = ["uk"]
delivery = ["127.0.0.1:{ports['down']}"]
# Globex's server is up (the sink here): its released and allowed mail is delivered.
[[tenant]]
id = "globex"
domains = ["globex.example"]
regions = ["uk"]
delivery = ["127.0.0.1:{sink}"]
[policy.default]
scanners = {{ auth = false, dnsbl = false }}
rule = [{{ name = "suspicious", target = "subject", pattern = "(?i)quarantine|hostile", action = "quarantine" }}]
# Viruses are kept for an administrator (admin_release_only = ["virus"], the default).
actions = {{ virus = "quarantine" }}
[engine]
listen = ["127.0.0.1:{ports['smtp']}"]
spool_dir = "{d}/spool"
hostname = "mde.test"
[engine.delivery]
dead_after = 1
retry_base = "1h"
retry_max = "1h"
probe_interval = "1h"
connect_timeout = "1s"
[engine.webmail]
listen = ["127.0.0.1:{ports['https']}"]
http_redirect_listen = ["127.0.0.1:{ports['http']}"]
tls_cert = "{cert}"
tls_key = "{key}"
"""


def queue(ops, token_file):
    """The engine's queue listing, asked as the operator (the engine wrote the token file)."""
    with open(token_file) as f:
        token = f.read().strip()
    req = urllib.request.Request(f"http://127.0.0.1:{ops}/queue",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode()


def main():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(target, "debug", "maildistiller")
    artifacts = os.environ.get("ARTIFACTS_DIR", os.path.join(ROOT, "target", "artifacts", "webmail"))
    os.makedirs(artifacts, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="mdw-browser-")
    engine = driver = None
    canary_srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canary)
    threading.Thread(target=canary_srv.serve_forever, daemon=True).start()
    canary = canary_srv.server_address[1]
    sink = Sink()
    try:
        ports = {k: free_port() for k in ("ops", "smtp", "https", "http", "down")}
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-keyout", key, "-out", cert], check=True, capture_output=True)
        cfg = os.path.join(tmp, "engine.toml")
        with open(cfg, "w") as f:
            f.write(config(tmp, ports, cert, key, sink.port))
        # The users are added the way an operator does it (both plain users, no admins).
        for tenant, addr in (("acme", "bob@acme.example"), ("globex", "boss@globex.example")):
            r = subprocess.run([binary, "user", "add", "--config", cfg, "--tenant", tenant, addr],
                               input=PASSWORD + "\n", capture_output=True, text=True)
            check(f"user add {addr}", r.returncode == 0, r.stderr)
        log = open(os.path.join(artifacts, "engine.log"), "w")
        engine = subprocess.Popen([binary, "--role", "engine", "--config", cfg], stdout=log, stderr=log)
        wait_for("the engine's /readyz", lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{ports['ops']}/readyz", timeout=2).status == 200)

        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as s:
            s.sendmail("alice@sender.example", ["bob@acme.example"],
                       plain("Quarterly report (held)", "The report is attached in spirit."))
            s.sendmail("promo@sender.example", ["bob@acme.example"],
                       plain("Please QUARANTINE test", "A message the policy quarantined."))
            s.sendmail("m@evil.example", ["bob@acme.example"], hostile(canary))
        wait_for("1 held + 2 quarantined", lambda: queue(ports["ops"], os.path.join(tmp, "ops.token")).count(" held ") == 1
                 and queue(ports["ops"], os.path.join(tmp, "ops.token")).count(" quarantined ") == 2)

        opts = Options()
        opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--ignore-certificate-errors",
                  "--window-size=1280,900", "--disable-gpu", "--no-first-run"):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                                  options=opts)
        driver.set_page_load_timeout(30)
        wait = WebDriverWait(driver, 15)
        shot = lambda name: driver.save_screenshot(os.path.join(artifacts, f"{name}.png"))
        base = f"https://127.0.0.1:{ports['https']}"

        # Controls: the probes used below can see what they look for. The browser reaches the
        # canary, and a script that runs is seen through window.name, so an empty canary and an
        # untouched window.name later mean something.
        driver.get(f"http://127.0.0.1:{canary}/control")
        wait_for("the browser's request to the canary", lambda: "/control" in Canary.hits, 10)
        driver.get("data:text/html,<script>window.name='pwned';document.title='pwned'</script>")
        seen = driver.execute_script("return [window.name, document.title]")
        check("controls: canary reachable, running script detectable", seen == ["pwned", "pwned"], seen)
        driver.execute_script("window.name = ''")
        Canary.hits.clear()

        # Plain HTTP lands on the HTTPS sign-in page.
        driver.get(f"http://127.0.0.1:{ports['http']}/")
        wait.until(EC.url_contains("/login"))
        check("http redirects to https sign-in", driver.current_url.startswith(base + "/login"), driver.current_url)
        shot("01-login")

        # Sign in with the keyboard only.
        driver.find_element(By.ID, "address").send_keys("bob@acme.example" + Keys.TAB)
        driver.switch_to.active_element.send_keys(PASSWORD + Keys.ENTER)
        wait.until(EC.url_contains("/inbox"))
        body = driver.find_element(By.TAG_NAME, "body").text
        check("signed in and sees the inbox", "Quarterly report (held)" in body and "All (3)" in body, body)
        shot("02-inbox")

        # Open the held message.
        driver.find_element(By.LINK_TEXT, "Quarterly report (held)").click()
        wait.until(EC.presence_of_element_located((By.TAG_NAME, "pre")))
        text = driver.find_element(By.TAG_NAME, "body").text
        check("held message opens", "The report is attached in spirit." in text and "Held:" in text, text)
        shot("03-held-message")

        # Release the quarantined one.
        driver.get(base + "/inbox?view=quarantine")
        driver.find_element(By.LINK_TEXT, "Please QUARANTINE test").click()
        wait.until(EC.presence_of_element_located((By.XPATH, "//button[contains(., 'Release')]"))).click()
        wait.until(EC.url_contains("done=released"))
        flash = driver.find_element(By.CSS_SELECTOR, "[role=status]").text
        check("release says so", "released" in flash, flash)
        q = queue(ports["ops"], os.path.join(tmp, "ops.token"))
        check("released message is no longer quarantined", q.count(" quarantined ") == 1, q)
        shot("04-released")

        # The hostile message: nothing runs, nothing is fetched.
        driver.get(base + "/inbox?view=quarantine")
        driver.find_element(By.LINK_TEXT, "Hostile test message").click()
        frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe.body")))
        sandbox = frame.get_attribute("sandbox") or ""
        check("message frame is sandboxed without scripts", "allow-scripts" not in sandbox
              and "allow-same-origin" not in sandbox and frame.get_attribute("sandbox") is not None, sandbox)
        driver.switch_to.frame(frame)
        wait.until(EC.presence_of_element_located((By.TAG_NAME, "p")))
        inner = driver.find_element(By.TAG_NAME, "body").text
        check("hostile content is shown as text", "Your account is locked" in inner, inner)
        check("links show their real target", "[https://login.evil.example/bank]" in inner, inner)
        frame_name = driver.execute_script("return window.name")
        frame_title = driver.execute_script("return document.title")
        check("no script ran in the frame", frame_name == "" and frame_title != "pwned", f"{frame_name!r} {frame_title!r}")
        hrefs = [a.get_attribute("href") or "" for a in driver.find_elements(By.TAG_NAME, "a")]
        check("no javascript: link survives", not any(h.lower().startswith("javascript:") for h in hrefs), hrefs)
        forms = driver.find_elements(By.TAG_NAME, "form") + driver.find_elements(By.TAG_NAME, "iframe")
        check("no form or frame survives", not forms, forms)
        # Clicking the former javascript: link does nothing either.
        for a in driver.find_elements(By.TAG_NAME, "a"):
            if a.text == "click me":
                a.click()
        driver.switch_to.default_content()
        top = driver.execute_script("return [document.title, window.name]")
        check("no script ran in the page", top[0] != "pwned" and top[1] != "pwned", top)
        shot("05-hostile")
        # A forbidden request would have been made while the frame loaded; give one in flight
        # a moment to land before counting (this proves an absence, so there is no event to wait for).
        time.sleep(1)
        check("nothing was fetched from the canary", Canary.hits == [], Canary.hits)

        # Remote images only when asked; still no script and no other fetch.
        driver.find_element(By.PARTIAL_LINK_TEXT, "Show remote images").click()
        frame = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe.body")))
        driver.switch_to.frame(frame)
        imgs = [i.get_attribute("src") or "" for i in driver.find_elements(By.TAG_NAME, "img")]
        check("remote image kept when asked", any("remote-image.png" in s for s in imgs), imgs)
        check("still no script in the frame", driver.execute_script("return window.name") == "")
        driver.switch_to.default_content()
        time.sleep(1)
        check("only the remote image may be fetched", all(h == "/remote-image.png" for h in Canary.hits), Canary.hits)
        # The browser console (CSP reports among it) is kept with the screenshots; reading it drains it.
        with open(os.path.join(artifacts, "console.json"), "w") as f:
            json.dump(driver.get_log("browser"), f, indent=1)

        # Readable on a phone.
        driver.set_window_size(390, 844)
        driver.get(base + "/inbox")
        wide = driver.execute_script("return document.documentElement.scrollWidth")
        check("no horizontal scrolling on a phone", wide <= 400, wide)
        shot("06-phone-inbox")

        # A quarantined virus (EICAR in eicar.com, a blocked extension too): a plain user sees
        # no release button, and a release forged from the page is refused.
        driver.set_window_size(1280, 900)
        token_file = os.path.join(tmp, "ops.token")
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as s:
            s.sendmail("alice@sender.example", ["bob@acme.example"], eicar("alice@sender.example", "bob@acme.example"))
        wait_for("the virus quarantined", lambda: queue(ports["ops"], token_file).count(" quarantined ") == 2)
        driver.get(base + "/inbox?view=quarantine")
        driver.find_element(By.LINK_TEXT, "test file").click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "p.notice")))
        page = driver.find_element(By.TAG_NAME, "body").text
        check("no release button for a virus", "Release to my mailbox" not in page
              and "Only an administrator" in page, page)
        shot("07-virus-no-release")
        driver.execute_script("""
            const f = document.createElement('form');
            f.method = 'POST';
            f.action = location.pathname + '/release';
            const t = document.createElement('input');
            t.name = 'csrf';
            t.value = document.querySelector('input[name=csrf]').value;
            f.appendChild(t);
            document.body.appendChild(f);
            f.submit();""")
        wait.until(EC.url_contains("/release"))
        refused = driver.find_element(By.TAG_NAME, "body").text
        check("a forged release of the virus is refused", "only an administrator" in refused, refused)
        q = queue(ports["ops"], token_file)
        check("the virus stays quarantined", q.count(" quarantined ") == 2 and not sink.got, q)
        shot("08-virus-release-refused")

        # Sign out.
        driver.find_element(By.XPATH, "//button[.='Sign out']").click()
        wait.until(EC.url_contains("/login"))
        driver.get(base + "/inbox")
        check("signed out", "/login" in driver.current_url, driver.current_url)

        # "Always allow" the sender of a quarantined newsletter: the next one is delivered.
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as s:
            s.sendmail("news@partner.example", ["boss@globex.example"],
                       plain("Weekly news (QUARANTINE test)", "Issue 1.").replace(
                           "alice@sender.example", "news@partner.example").replace(
                           "bob@acme.example", "boss@globex.example"))
        wait_for("the newsletter quarantined", lambda: queue(ports["ops"], token_file).count(" quarantined ") == 3)
        driver.find_element(By.ID, "address").send_keys("boss@globex.example" + Keys.TAB)
        driver.switch_to.active_element.send_keys(PASSWORD + Keys.ENTER)
        wait.until(EC.url_contains("/inbox"))
        driver.find_element(By.LINK_TEXT, "Weekly news (QUARANTINE test)").click()
        wait.until(EC.presence_of_element_located(
            (By.XPATH, "//button[contains(., 'Always allow news@partner.example')]"))).click()
        wait.until(EC.url_contains("done=allowed"))
        flash = driver.find_element(By.CSS_SELECTOR, "[role=status]").text
        check("allow says so", "allowed senders" in flash, flash)
        shot("09-allowed")
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as s:
            s.sendmail("news@partner.example", ["boss@globex.example"],
                       plain("Weekly news (QUARANTINE test) 2", "Issue 2.").replace(
                           "alice@sender.example", "news@partner.example").replace(
                           "bob@acme.example", "boss@globex.example"))
        got = wait_for("the next newsletter delivered", lambda: [d for _, d in sink.got if "Issue 2." in d], 20)
        check("the allowed sender's next message is delivered, and its verdict says why",
              "listed=webmail allow sender news@partner.example" in got[0].replace("\r\n\t", " "), got[0])
        q = queue(ports["ops"], token_file)
        check("and it is not quarantined", q.count(" quarantined ") == 3, q)
        driver.get(base + "/inbox")
        body = driver.find_element(By.TAG_NAME, "body").text
        check("the inbox holds only the first newsletter", "All (1)" in body
              and "Weekly news (QUARANTINE test)" in body, body)
        shot("10-allowed-next-delivered")
    except Exception as e:  # a failed wait or a crash counts as a failure, with a screenshot
        check("no unexpected error", False, repr(e))
        if driver:
            try:
                driver.save_screenshot(os.path.join(artifacts, "error.png"))
            except Exception:
                pass
    finally:
        if driver:
            driver.quit()
        if engine:
            engine.send_signal(signal.SIGTERM)
            try:
                engine.wait(timeout=30)
            except subprocess.TimeoutExpired:
                engine.kill()
        canary_srv.shutdown()
        sink.sock.close()
        shutil.rmtree(tmp, ignore_errors=True)
    passed = sum(1 for _, ok in RESULTS if ok)
    failed = len(RESULTS) - passed
    print(f"screenshots: {artifacts}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
