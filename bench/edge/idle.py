"""Opens N idle SMTP connections to the edge, waits for every banner, then prints the edge's
memory (VmRSS, VmHWM) and closes them. Usage: idle.py HOST PORT N PID"""
import resource
import selectors
import socket
import sys
import time

host, port, n, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = n + 100 if hard == resource.RLIM_INFINITY else min(n + 100, hard)
if want > soft:
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
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
status = open(f"/proc/{pid}/status").read()
field = lambda k: int([l for l in status.splitlines() if l.startswith(k)][0].split()[1])
print(f"  {banners}/{n} connections greeted; edge VmRSS {field('VmRSS') / 1024:.0f} MiB, VmHWM {field('VmHWM') / 1024:.0f} MiB")
for s in socks:
    s.close()
