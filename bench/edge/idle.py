"""Opens N idle SMTP connections to a proxy, waits for every banner, then prints the proxy's
memory (VmRSS before and with the clients, per client) and closes them. The last field is the
RSS with the clients in KiB (run.sh compares it across proxies).
Usage: idle.py HOST PORT N PID LABEL"""
import resource
import selectors
import socket
import sys
import time

host, port, n, pid, label = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]


def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = n + 100 if hard == resource.RLIM_INFINITY else min(n + 100, hard)
if want > soft:
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
before = rss_kib()
sel = selectors.DefaultSelector()
socks = []
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((host, port))
    sel.register(s, selectors.EVENT_READ)
    socks.append(s)
banners = 0
deadline = time.time() + 120
while banners < n and time.time() < deadline:
    for key, _ in sel.select(timeout=1):
        try:
            data = key.fileobj.recv(512)
        except BlockingIOError:
            continue
        if data.startswith(b"220"):
            banners += 1
        sel.unregister(key.fileobj)
time.sleep(1)  # let the proxy settle (buffers released after the banner went out)
with_clients = rss_kib()
per = (with_clients - before) / max(banners, 1)
print(f"{label:<10} {banners}/{n} greeted; RSS before {before / 1024:.0f} MiB, with the clients "
      f"{with_clients / 1024:.0f} MiB ({per:.1f} KiB per client); rss_kib {with_clients}")
for s in socks:
    s.close()
