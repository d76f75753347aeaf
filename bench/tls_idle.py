#!/usr/bin/env python3
"""Idle memory per connection and handshake cost, over wss:// or ws://.

    bench/tls_idle.py --port P --pid PID [-n 10000] [--tls] [--path /echo]

Opens N WebSocket connections to a running wschat (PID is the server's
process, read in /proc), TLS ones with --tls (certificates are not checked:
the run uses a self-signed one), holds them, and reports:
- the server's resident memory per open connection (VmRSS after the crowd is
  open and the server's 5 s heap trim has run, less VmRSS before);
- handshakes per second of wall time and per second of the server's CPU time
  (utime+stime over the opening phase), the second being the one that does
  not depend on this Python client's own speed.
"""
import argparse
import asyncio
import os
import resource
import ssl
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


REQ = (
    "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


async def open_one(host, port, ctx, path, held, sem):
    async with sem:
        r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost" if ctx else None)
        w.write(REQ.format(path=path).encode())
        head = await r.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(head[:40])
        held.append((r, w))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--path", default="/echo")
    ap.add_argument("--settle", type=float, default=6.0)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = None
    if a.tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    await asyncio.sleep(a.settle)  # a trim before the baseline, too
    rss0, cpu0, t0 = rss_kib(a.pid), cpu_s(a.pid), time.monotonic()
    held, sem = [], asyncio.Semaphore(a.concurrency)
    await asyncio.gather(*(open_one(a.host, a.port, ctx, a.path, held, sem) for _ in range(a.n)))
    t1, cpu1 = time.monotonic(), cpu_s(a.pid)
    await asyncio.sleep(a.settle)
    rss1 = rss_kib(a.pid)
    scheme = "wss" if a.tls else "ws"
    print(f"{scheme}{a.path}: {len(held)} connections open")
    print(f"  server RSS {rss0} KiB -> {rss1} KiB: {(rss1 - rss0) * 1024 / len(held):.0f} B per idle connection")
    print(f"  opened in {t1 - t0:.2f} s ({len(held) / (t1 - t0):.0f}/s wall), server CPU {cpu1 - cpu0:.2f} s "
          f"({len(held) / max(cpu1 - cpu0, 1e-9):.0f} handshakes per server CPU-second)")
    for _, w in held:
        w.transport.abort()


asyncio.run(main())
