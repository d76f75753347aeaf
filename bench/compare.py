#!/usr/bin/env python3
"""Run wschat-bench's scenarios against wschat and, side by side, against
the uWebSockets.js reference server (bench/reference) and, given its
binary, the uWebSockets C++ reference (docs/benchmarks.md says what it is
and why it is not shipped), and print a table.

    bench/compare.py [--servers wschat,uws,uws-cpp] [--uws-cpp PATH] [--runs 2] [--quick]

A server name ending in `+deflate` runs with permessage-deflate: the bench
gets `--deflate` (it offers what Chromium offers, compresses its messages
and inflates the server's) and the uWebSockets C++ reference is started
with `deflate` (its SHARED_COMPRESSOR, every send and publish compressed).
`wschat-t0` is wschat with `--deflate-threshold 0` (every message
compressed, however short), `wschat-nodeflate` with `--no-deflate`:

    bench/compare.py --servers wschat-t0+deflate,uws-cpp+deflate,wschat,uws-cpp --only deflate

Each scenario gets a fresh server pinned to core 0 (`taskset -c 0`); the
load generator runs on core 1. Figures are medians of --runs runs. Needs a
release build (`cargo build --release`) and, for uws, `npm ci` in
bench/reference. Loopback only.
"""
import argparse, atexit, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target/release/wschat-bench")
TASKSET = ["taskset", "-c"] if shutil.which("taskset") else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# wschat variants: the default (persisting, each run in a fresh data
# directory), in memory only, and with every commit fsynced.
WSCHAT_FLAGS = {"wschat": [], "wschat-nopersist": ["--no-persist"], "wschat-fsync": ["--fsync"],
                "wschat-t0": ["--deflate-threshold", "0"], "wschat-nodeflate": ["--no-deflate"]}


def split(server):
    """`name+deflate` -> (name, True)."""
    name, plus, opt = server.partition("+")
    if plus and opt != "deflate":
        sys.exit(f"{server}: the only option is +deflate")
    return name, bool(plus)


UWS_CPP = os.environ.get("UWS_CPP", "")


def start(server, port):
    server, deflate = split(server)
    if server in WSCHAT_FLAGS:
        data = tempfile.mkdtemp(prefix="wschat-bench-")
        atexit.register(shutil.rmtree, data, True)
        cmd = [os.path.join(ROOT, "target/release/wschat"), "--addr", f"127.0.0.1:{port}", "--rate-burst", "0",
               "--data-dir", data] + WSCHAT_FLAGS[server]
    elif server == "uws-cpp":
        if not UWS_CPP or not os.access(UWS_CPP, os.X_OK):
            sys.exit("uws-cpp: pass the reference's binary with --uws-cpp PATH (docs/benchmarks.md)")
        cmd = [UWS_CPP, str(port)] + (["deflate"] if deflate else [])
    else:
        cmd = ["node", os.path.join(ROOT, "bench/reference/uws.mjs"), str(port)]
    if TASKSET:
        cmd = TASKSET + ["0"] + cmd
    if deflate and server not in WSCHAT_FLAGS and server != "uws-cpp":
        sys.exit(f"{server}+deflate: not supported")
    # wschat logs its commit times (count, mean, max) at a clean stop: keep
    # its log to read them back (see stop()).
    log = tempfile.TemporaryFile() if server in WSCHAT_FLAGS else subprocess.DEVNULL
    env = dict(os.environ, RUST_LOG="info" if server in WSCHAT_FLAGS else "warn")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    p.log = log
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p
        except OSError:
            time.sleep(0.05)
    p.kill()
    sys.exit(f"{server} did not start")


STORE_STATS = re.compile(rb"store: (\d+) commits, mean (\d+) us, max (\d+) us, mean CPU (\d+) us")


def stop(p):
    """Stops a server; for wschat, cleanly (SIGINT), returning the store's
    commit figures of the run ({} in memory or for other servers)."""
    if p.log == subprocess.DEVNULL:
        p.kill(); p.wait()
        return {}
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill(); p.wait()
    p.log.seek(0)
    m = STORE_STATS.search(p.log.read())
    p.log.close()
    return {"commits": int(m[1]), "mean_us": int(m[2]), "max_us": int(m[3]), "cpu_us": int(m[4])} if m else {}


def bench(args, pid, deflate=False):
    cmd = [BENCH] + args + ["--server-pid", str(pid), "--json"] + (["--deflate"] if deflate else [])
    if TASKSET:
        cmd = TASKSET + ["1"] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        print(out.stdout, out.stderr, file=sys.stderr)
        return None


def scenarios(d):
    """(name, path, bench args, {column: extractor})"""
    return [
        ("echo ping-pong 64 B, 100 conns x 1 in flight", "echo",
         ["echo", "--connections", "100", "--size", "64", "--in-flight", "1", "--duration", d],
         {"msg per server cpu-s": lambda r: r["server"]["msgs_per_cpu_s"], "msg/s": lambda r: r["msgs_per_s"],
          "server cpu": lambda r: r["server"]["cpu_util"]}),
        ("echo 64 B, 100 conns x 16 in flight", "echo",
         ["echo", "--connections", "100", "--size", "64", "--in-flight", "16", "--duration", d],
         {"msg/s": lambda r: r["msgs_per_s"], "msg per server cpu-s": lambda r: r["server"]["msgs_per_cpu_s"],
          "server cpu": lambda r: r["server"]["cpu_util"]}),
        *[(f"broadcast 1 -> 1000 receivers, 64 B, window {w}", "ws",
           ["broadcast", "--receivers", "1000", "--senders", "1", "--size", "64", "--window", str(w), "--duration", d],
           {"deliveries per server cpu-s": lambda r: r["server"]["msgs_per_cpu_s"],
            "p50 ms": lambda r: r["latency_us"]["p50"] / 1000, "p99 ms": lambda r: r["latency_us"]["p99"] / 1000,
            "deliveries/s": lambda r: r["msgs_per_s"], "lost": lambda r: r.get("lost", 0),
            "server cpu": lambda r: r["server"]["cpu_util"],
            "commits": lambda r: r["store"]["commits"], "commit mean us": lambda r: r["store"]["mean_us"],
            "commit max us": lambda r: r["store"]["max_us"], "commit cpu us": lambda r: r["store"]["cpu_us"]})
          for w in (32, 1, 8, 64)],
        ("broadcast 50 msg/s -> 1000 receivers: latency", "ws",
         ["broadcast", "--receivers", "1000", "--senders", "1", "--size", "64", "--rate", "50", "--duration", d],
         {"p50 ms": lambda r: r["latency_us"]["p50"] / 1000, "p99 ms": lambda r: r["latency_us"]["p99"] / 1000,
          "lost": lambda r: r.get("lost", 0), "msg per server cpu-s": lambda r: r["server"]["msgs_per_cpu_s"],
          "commit mean us": lambda r: r["store"]["mean_us"], "commit max us": lambda r: r["store"]["max_us"],
          "commit cpu us": lambda r: r["store"]["cpu_us"]}),
        ("large: 10 conns x 4 in flight, 64 KiB", "echo",
         ["echo", "--connections", "10", "--size", "65536", "--in-flight", "4", "--binary", "--duration", d],
         {"GB/s": lambda r: r["mb_per_s"] / 1000, "GB per server cpu-s": lambda r: r["server"]["bytes_per_cpu_s"] / 1e9}),
        # permessage-deflate (issue 16): run with +deflate servers.
        ("deflate: echo 64 B, 100 conns x 16 in flight", "echo",
         ["echo", "--connections", "100", "--size", "64", "--in-flight", "16", "--duration", d],
         {"msg per server cpu-s": lambda r: r["server"]["msgs_per_cpu_s"], "msg/s": lambda r: r["msgs_per_s"],
          "server us per msg": lambda r: 1e6 / r["server"]["msgs_per_cpu_s"],
          "server cpu": lambda r: r["server"]["cpu_util"]}),
        *[(f"deflate: broadcast 1 -> 1000 receivers, {size} B, window 32", "ws",
           ["broadcast", "--receivers", "1000", "--senders", "1", "--size", str(size), "--window", "32", "--duration", d],
           {"deliveries per server cpu-s": lambda r: r["server"]["msgs_per_cpu_s"],
            "server us per delivery": lambda r: 1e6 / r["server"]["msgs_per_cpu_s"],
            "deliveries/s": lambda r: r["msgs_per_s"], "p50 ms": lambda r: r["latency_us"]["p50"] / 1000,
            "lost": lambda r: r.get("lost", 0), "server cpu": lambda r: r["server"]["cpu_util"],
            "payload B per delivery": lambda r: r.get("compressed_payload_mean") or r["bytes"] / r["messages"]})
          for size in (64, 440)],
        ("deflate: idle 10,000 /ws connections, each joined one room", "ws",
         ["idle", "--connections", "10000", "--hold", "12s", "--join", "idle"],
         {"RSS per conn B": lambda r: r["server"]["rss_per_conn_bytes"]}),
        ("idle: 10,000 /echo connections", "echo",
         ["idle", "--connections", "10000", "--hold", "12s"],
         {"handshakes/s": lambda r: r["handshakes_per_s"], "RSS per conn B": lambda r: r["server"]["rss_per_conn_bytes"]}),
        ("idle: 10,000 /ws connections, each joined one room", "ws",
         ["idle", "--connections", "10000", "--hold", "12s", "--join", "idle"],
         {"RSS per conn B": lambda r: r["server"]["rss_per_conn_bytes"]}),
        ("idle: 10,000 /ws connections, each in a room of its own", "ws",
         ["idle", "--connections", "10000", "--hold", "12s", "--join", "own", "--room-each"],
         {"RSS per conn B": lambda r: r["server"]["rss_per_conn_bytes"]}),
    ]


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1e6:
            return f"{v/1e6:.2f} M"
        if abs(v) >= 1e4:
            return f"{v/1e3:.0f} k"
        return f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def main():
    global UWS_CPP
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="wschat,uws")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="3 s runs instead of 10 s")
    ap.add_argument("--only", default="", help="run scenarios whose name contains this")
    ap.add_argument("--uws-cpp", default=os.environ.get("UWS_CPP", ""), help="the uWebSockets C++ reference binary (server uws-cpp)")
    a = ap.parse_args()
    UWS_CPP = a.uws_cpp
    servers = [s for s in a.servers.split(",") if s]
    rows = []
    for name, path, args, cols in scenarios("3s" if a.quick else "10s"):
        if a.only and a.only not in name:
            continue
        # Runs interleaved (A B A B …), so that drifting machine load falls
        # on every server alike.
        vals_of = {server: {c: [] for c in cols} for server in servers}
        # The machine's load average at each run's start: figures from a
        # shared machine mean little without it.
        loads = []
        for _ in range(a.runs):
            for server in servers:
                vals = vals_of[server]
                port = free_port()
                loads.append(os.getloadavg()[0])
                p = start(server, port)
                r = bench([args[0], "--url", f"ws://127.0.0.1:{port}/{path}"] + args[1:], p.pid, split(server)[1])
                store = stop(p)
                if r is not None and store:
                    r["store"] = store
                if r is None or r.get("errors"):
                    print(f"  {server}: {name}: errors {r and r.get('error_detail')}", file=sys.stderr)
                if r is None:
                    continue
                for c, f in cols.items():
                    try:
                        vals[c].append(f(r))
                    except (KeyError, TypeError):
                        pass
        for server in servers:
            vals = vals_of[server]
            cells = {c: (statistics.median(v) if v else None) for c, v in vals.items()}
            rows.append((name, server, cells))
            # Every run's figure too: on a shared machine the spread says
            # how far a difference between medians can be trusted.
            print(f"{name} | {server} | " + ", ".join(
                f"{c} {fmt(cells[c])}" + (f" ({'/'.join(fmt(x) for x in v)})" if len(v) > 1 else "")
                for c, v in vals.items()), flush=True)
        if loads:
            print(f"{name} | load average {min(loads):.1f}-{max(loads):.1f} over its runs", flush=True)
    print()
    print("| scenario | server | figures |")
    print("| --- | --- | --- |")
    for name, server, cells in rows:
        print(f"| {name} | {server} | " + "; ".join(f"{c}: {fmt(v)}" for c, v in cells.items()) + " |")


if __name__ == "__main__":
    main()
