#!/usr/bin/env python3
"""Start-up with a large store: how long wschat takes to answer, and its RSS
then, over a data directory holding N messages in R rooms (issue 9's figure:
1,000,000 messages in 1,000 rooms, under 2 s, RSS bounded).

    bench/startup.py [--messages 1000000] [--rooms 1000] [--runs 3]

The schema is made by wschat itself (one start on an empty directory);
this script only fills the tables docs/storage.md documents, so the
full-text index is filled by the schema's own triggers. Needs a release
build and Python's sqlite3 with FTS5.
"""
import argparse, http.client, os, re, shutil, socket, sqlite3, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/wschat")
ROW_OVERHEAD = 64  # src/store/mod.rs: what --max-disk counts per message beyond its text and nick


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(data):
    """Starts wschat on `data`; returns (process, seconds until it answers
    GET /healthz: the store loaded and the loop running; the listening
    socket itself accepts connections into its backlog earlier)."""
    port = free_port()
    t0 = time.monotonic()
    p = subprocess.Popen([BIN, "--addr", f"127.0.0.1:{port}", "--data-dir", data],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                c.close()
                return p, time.monotonic() - t0
            c.close()
        except OSError:
            if p.poll() is not None:
                sys.exit(f"wschat exited with {p.returncode}")
            if time.monotonic() - t0 > 120:
                p.kill()
                sys.exit("wschat did not listen within 120 s")
            time.sleep(0.005)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read())[1])


def stop(p):
    p.terminate()
    p.wait(timeout=30)


def fill(data, rooms, messages):
    db = sqlite3.connect(os.path.join(data, "wschat.db"))
    per_room = messages // rooms
    now = int(time.time() * 1000)
    t0 = time.monotonic()
    with db:
        for r in range(rooms):
            rows, counted = [], 0
            for i in range(1, per_room + 1):
                nick, text = f"nick{i % 50}", f"message {i} of room {r}: some ordinary chat text to index and keep"
                rows.append((r + 1, i, nick, text, now - (per_room - i) * 1000))
                counted += len(nick) + len(text) + ROW_OVERHEAD
            db.execute("INSERT INTO rooms (id, name, epoch, next_id, last_active, bytes) VALUES (?, ?, ?, ?, ?, ?)",
                       (r + 1, f"room-{r}", f"e{r}", per_room + 1, now, counted))
            db.executemany("INSERT INTO messages (room, id, from_nick, text, ts) VALUES (?, ?, ?, ?, ?)", rows)
    db.close()
    size = os.path.getsize(os.path.join(data, "wschat.db"))
    print(f"filled {rooms} rooms x {per_room} messages in {time.monotonic() - t0:.0f} s; wschat.db {size / 2**20:.0f} MiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--rooms", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", metavar="DIR", help="fill DIR unless it holds a store already, and keep it for later runs")
    a = ap.parse_args()
    data = a.keep or tempfile.mkdtemp(prefix="wschat-startup-")
    try:
        if not os.path.exists(os.path.join(data, "wschat.db")):
            os.makedirs(data, exist_ok=True)
            p, t = start(data)  # wschat makes its schema
            print(f"empty store: answering after {t * 1000:.0f} ms, RSS {rss_kib(p.pid) / 1024:.1f} MiB")
            stop(p)
            fill(data, a.rooms, a.messages)
        for run in range(a.runs):
            p, t = start(data)
            time.sleep(0.2)
            rss = rss_kib(p.pid)
            stop(p)
            print(f"run {run + 1}: answering after {t * 1000:.0f} ms, RSS {rss / 1024:.1f} MiB")
    finally:
        if not a.keep:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
