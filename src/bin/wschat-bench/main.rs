//! wschat-bench: a mio-based WebSocket client load generator for wschat.
//!
//! Scenarios: `echo` (pipelined round trips on /echo), `broadcast` (room
//! fan-out on /ws with delivery latency) and `idle` (many open connections:
//! handshake rate and server memory per connection). Loopback targets only.

mod broadcast;
mod conn;
mod echo;
mod idle;
mod report;
mod sys;
mod wire;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use crate::conn::{Handler, Net};
use crate::report::{ErrorDetail, Report, ServerUse, Stats};
use crate::sys::ProcSample;
use crate::wire::Target;

#[derive(Parser)]
#[command(
    name = "wschat-bench",
    version,
    about = "Load generator for the wschat WebSocket server (loopback targets only)",
    long_about = "Load generator for the wschat WebSocket server (loopback targets only).\n\n\
        Each scenario connects, performs the RFC 6455 handshake, runs a warm-up \
        (not measured), then measures for --duration. Pin the server and the \
        bench to different cores, e.g. `taskset -c 0 wschat …` and \
        `taskset -c 1 wschat-bench …`."
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Pipelined round trips on an echo endpoint.
    Echo(EchoArgs),
    /// Room fan-out: senders post, every receiver gets each message.
    Broadcast(BroadcastArgs),
    /// Open many connections and hold them: handshake rate, server memory.
    Idle(IdleArgs),
}

/// Options shared by every scenario.
#[derive(Args, Clone)]
pub struct Common {
    /// Print one JSON object with the results instead of the table.
    #[arg(long)]
    pub json: bool,
    /// PID of the server: its CPU time (/proc/PID/task/*/schedstat) and RSS
    /// (/proc/PID/status) are sampled at the start and end of the measured period.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Warm-up after setup, before the measured period (traffic flows, nothing is counted).
    /// Not used by `idle`.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DUR")]
    pub warmup: Duration,
    /// Worker threads; connections are spread over them round-robin.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// Time allowed for connecting, handshaking (and joining) every connection;
    /// whatever is not open by then counts as failed.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DUR")]
    pub setup_timeout: Duration,
    /// Connections in the connect/handshake/join stage at once, per thread
    /// (keeps the server's listen backlog from overflowing).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_pending: usize,
    /// Bind each connection to a source address among 127.0.0.2–127.0.0.254
    /// (automatic past 25,000 connections, the limit of one source address's ports).
    #[arg(long)]
    pub spread_sources: bool,
    /// Offer permessage-deflate as Chromium does; once accepted, client
    /// messages go compressed and server messages are inflated (in a
    /// broadcast, by one receiver in ten).
    #[arg(long)]
    pub deflate: bool,
}

#[derive(Args)]
struct EchoArgs {
    /// Echo endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/echo")]
    url: String,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 100)]
    connections: usize,
    /// Payload bytes per message.
    #[arg(long, short = 's', default_value_t = 64)]
    size: usize,
    /// Messages outstanding per connection (pipelining depth).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65536))]
    in_flight: u32,
    /// Measured period.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    duration: Duration,
    /// Send binary messages instead of text.
    #[arg(long)]
    binary: bool,
    /// Encode, mask, parse and check every message on its own instead of
    /// sending prepared frames and comparing each echo with the frame
    /// expected (the generator costs more per message; the figures should
    /// agree while the server is the limit).
    #[arg(long)]
    classic: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct BroadcastArgs {
    /// Chat endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Connections that only receive.
    #[arg(long, short = 'r', default_value_t = 1000)]
    receivers: usize,
    /// Connections that post (they receive too, but only their own copy counts, as an ack).
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Room everyone joins (1–64 of A–Z a–z 0–9 _ -).
    #[arg(long, default_value = "bench")]
    room: String,
    /// Text bytes per message (the timestamp plus padding; 22–4000).
    #[arg(long, short = 's', default_value_t = 64)]
    size: usize,
    /// Total messages per second over all senders (open loop). Without it,
    /// senders go as fast as --window allows.
    #[arg(long, value_name = "MSGS_PER_S")]
    rate: Option<f64>,
    /// Messages outstanding per sender (awaiting the sender's own copy) when no --rate is given.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65536))]
    window: u32,
    /// Measured period.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    duration: Duration,
    /// After the measured period, how long receivers keep collecting before losses are counted.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DUR")]
    drain: Duration,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct IdleArgs {
    /// Endpoint (use /ws with --join).
    #[arg(long, default_value = "ws://127.0.0.1:8080/echo")]
    url: String,
    /// Connections to open.
    #[arg(long, short = 'c', default_value_t = 10_000)]
    connections: usize,
    /// How long to hold the connections open once all are open.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    hold: Duration,
    /// Join this room on every connection (chat endpoint); a connection counts as open once `joined`.
    #[arg(long, value_name = "ROOM")]
    join: Option<String>,
    /// With --join: each connection joins a room of its own, ROOM-N for
    /// connection N (N rooms of one member each).
    #[arg(long, requires = "join")]
    room_each: bool,
    #[command(flatten)]
    common: Common,
}

/// Parses `250ms`, `10s`, `2m` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 500ms, 10s, 2m)"))?;
    if !(0.0..=86_400.0).contains(&(v * mult)) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

fn valid_room(r: &str) -> bool {
    (1..=64).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Cross-thread start line: setup ends when every thread has settled all
/// its connections; the last one to arrive fixes the start time.
pub struct Shared {
    pub origin: Instant,
    threads: usize,
    ready: AtomicUsize,
    start_ns: AtomicU64,
}

impl Shared {
    fn new(threads: usize) -> Shared {
        Shared {
            origin: Instant::now(),
            threads,
            ready: AtomicUsize::new(0),
            start_ns: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn mark_ready(&self) {
        if self.ready.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.start_ns.store(self.now_ns().max(1), Ordering::Release);
        }
    }

    pub fn start_ns(&self) -> Option<u64> {
        match self.start_ns.load(Ordering::Acquire) {
            0 => None,
            v => Some(v),
        }
    }
}

/// A mode's handler, as seen by the shared setup phase.
/// This thread's poll and connection set; logs why when there is none.
pub fn open_net(t: &Target, shared: &Shared, spread: bool) -> Option<Net> {
    Net::new(shared.origin, t.addr, t.host.clone(), spread)
        .map_err(|e| log::error!("poll: {e}"))
        .ok()
}

pub trait Mode: Handler {
    /// Connections that are ready or have failed for good.
    fn settled(&self) -> usize {
        self.progress().0
    }
    /// Counts a connection whose socket could not even be created.
    fn open_failed(&mut self) {
        let (settled, stats) = self.progress_mut();
        *settled += 1;
        stats.connect_failed += 1;
    }
    fn stats(&mut self) -> &mut Stats {
        self.progress_mut().1
    }
    /// The mode's settled count and its stats.
    fn progress(&self) -> (usize, &Stats);
    fn progress_mut(&mut self) -> (&mut usize, &mut Stats);
}

/// Opens this thread's connections (at most `max_pending` in progress),
/// waits until all are settled or the setup timeout passes, then waits at
/// the start line while keeping the connections serviced. Returns the
/// start time (ns since origin) or `None` if the start line never came.
pub fn setup<M: Mode>(
    net: &mut Net,
    m: &mut M,
    paths: &[(usize, String)],
    common: &Common,
    shared: &Shared,
) -> Option<u64> {
    let deadline = shared.now_ns() + common.setup_timeout.as_nanos() as u64;
    let mut next = 0;
    while m.settled() < paths.len() && shared.now_ns() < deadline {
        while next < paths.len() && next - m.settled().min(next) < common.max_pending {
            let (id, path) = &paths[next];
            if !net.open(*id, path.clone()) {
                m.open_failed();
            }
            next += 1;
        }
        net.turn(Duration::from_millis(5), m);
        net.flush(m);
    }
    let settled = shared.now_ns();
    m.stats().settled_ns = settled;
    shared.mark_ready();
    // Other threads may still be setting up; stay responsive meanwhile.
    let give_up = deadline.max(settled) + 5_000_000_000;
    loop {
        if let Some(s) = shared.start_ns() {
            return Some(s);
        }
        if shared.now_ns() > give_up {
            return None;
        }
        net.turn(Duration::from_millis(1), m);
        net.flush(m);
    }
}

/// Sleeps until `t_ns` since the origin.
fn sleep_until(shared: &Shared, t_ns: u64) {
    let now = shared.now_ns();
    if t_ns > now {
        std::thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

/// Waits (bounded) for the start line; `None` if setup never finished.
fn wait_start(shared: &Shared, limit: Duration) -> Option<u64> {
    let give_up = Instant::now() + limit;
    loop {
        if let Some(s) = shared.start_ns() {
            return Some(s);
        }
        if Instant::now() > give_up {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Samples taken by the main thread around the measured period.
#[derive(Default)]
struct Samples {
    server0: Option<ProcSample>,
    server1: Option<ProcSample>,
    client0: f64,
    client1: f64,
    /// Measured wall time, seconds.
    wall_s: f64,
}

/// Runs `work` on `threads` threads; meanwhile the main thread samples the
/// server and this process at the start and end of the measured period
/// (start line + warm-up … + duration).
fn run_measured<F>(common: &Common, shared: &Shared, measure: Duration, work: F) -> (Stats, Samples)
where
    F: Fn(usize) -> Stats + Sync,
{
    let mut samples = Samples::default();
    let mut total = Stats::default();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..shared.threads)
            .map(|t| {
                let work = &work;
                s.spawn(move || work(t))
            })
            .collect();
        let limit = common.setup_timeout + Duration::from_secs(10);
        if let Some(start) = wait_start(shared, limit) {
            let m0 = start + common.warmup.as_nanos() as u64;
            let m1 = m0 + measure.as_nanos() as u64;
            sleep_until(shared, m0);
            // At info level, for a profiler to count only the measured period.
            log::info!("measured period starts");
            samples.server0 = common.server_pid.and_then(sys::sample_proc);
            samples.client0 = sys::self_cpu_s();
            let t0 = Instant::now();
            sleep_until(shared, m1);
            log::info!("measured period ends");
            samples.server1 = common.server_pid.and_then(sys::sample_proc);
            samples.client1 = sys::self_cpu_s();
            samples.wall_s = t0.elapsed().as_secs_f64();
        }
        for h in handles {
            match h.join() {
                Ok(st) => total.merge(&st),
                Err(_) => eprintln!("a worker thread panicked"),
            }
        }
    });
    (total, samples)
}

fn server_use(s: &Samples, msgs: u64, bytes: u64) -> Option<ServerUse> {
    let (a, b) = (s.server0?, s.server1?);
    let cpu = (b.cpu_s - a.cpu_s).max(0.0);
    let per = |v: u64| (cpu > 0.0).then(|| v as f64 / cpu);
    Some(ServerUse {
        cpu_s: cpu,
        cpu_util: if s.wall_s > 0.0 { cpu / s.wall_s } else { 0.0 },
        msgs_per_cpu_s: per(msgs),
        bytes_per_cpu_s: per(bytes),
        rss_start_kb: a.rss_kb,
        rss_end_kb: b.rss_kb,
        rss_after_open_kb: None,
        rss_per_conn_bytes: None,
    })
}

/// Fills in the fields every measured report shares.
fn base_report(scenario: String, conns: usize, common: &Common, st: &Stats, s: &Samples) -> Report {
    let secs = if s.wall_s > 0.0 { s.wall_s } else { f64::NAN };
    Report {
        scenario,
        connections: conns as u64,
        threads: common.threads as usize,
        duration_s: s.wall_s,
        opened: st.opened,
        messages: st.completed,
        msgs_per_s: st.completed as f64 / secs,
        bytes: st.bytes,
        mb_per_s: st.bytes as f64 / secs / 1e6,
        latency_us: report::Latency::of(&st.lat),
        handshake_us: report::Latency::of(&st.hs),
        client_cpu_s: s.client1 - s.client0,
        server: server_use(s, st.completed, st.bytes),
        compressed_payload_mean: (st.compressed > 0)
            .then(|| st.compressed_bytes as f64 / st.compressed as f64),
        errors: st.errors(),
        error_detail: ErrorDetail::of(st),
        ..Report::default()
    }
}

fn target(url: &str) -> Target {
    match wire::parse_url(url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wschat-bench: {e}");
            std::process::exit(2);
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("wschat-bench: {msg}");
    std::process::exit(2);
}

/// This thread's share of ids `0..n`: every `threads`-th one.
fn ids_for(thread: usize, threads: usize, n: usize) -> impl Iterator<Item = usize> {
    (thread..n).step_by(threads)
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let deflate = match &cli.scenario {
        Scenario::Echo(a) => a.common.deflate,
        Scenario::Broadcast(a) => a.common.deflate,
        Scenario::Idle(a) => a.common.deflate,
    };
    conn::OFFER_DEFLATE.store(deflate, std::sync::atomic::Ordering::Relaxed);
    let nofile = sys::raise_nofile();
    let (report, json) = match cli.scenario {
        Scenario::Echo(a) => {
            let t = target(&a.url);
            if a.size > conn::MAX_MESSAGE {
                fail("--size too large");
            }
            check_fds(a.connections, nofile);
            let spread = a.common.spread_sources || a.connections > 25_000;
            let shared = Shared::new(a.common.threads as usize);
            let cfg = echo::Config {
                size: a.size,
                in_flight: a.in_flight,
                binary: a.binary,
                warmup: a.common.warmup,
                duration: a.duration,
                classic: a.classic,
            };
            let (st, s) = run_measured(&a.common, &shared, a.duration, |th| {
                let paths: Vec<(usize, String)> = ids_for(th, shared.threads, a.connections)
                    .map(|id| (id, t.path.clone()))
                    .collect();
                echo::run(&cfg, &t, spread, &paths, &a.common, &shared)
            });
            let kind = if a.binary { "binary" } else { "text" };
            let scenario = format!(
                "echo {}B {kind}, {} conns x {} in flight",
                a.size, a.connections, a.in_flight
            );
            (
                base_report(scenario, a.connections, &a.common, &st, &s),
                a.common.json,
            )
        }
        Scenario::Broadcast(a) => {
            let t = target(&a.url);
            if !valid_room(&a.room) {
                fail("--room: 1-64 characters of A-Z a-z 0-9 _ -");
            }
            if !(22..=4000).contains(&a.size) {
                fail("--size must be 22..=4000 (text holds a timestamp and padding)");
            }
            if a.senders == 0 {
                fail("--senders must be at least 1");
            }
            if let Some(r) = a.rate
                && !(r > 0.0 && r.is_finite())
            {
                fail("--rate must be positive");
            }
            let n = a.receivers + a.senders;
            check_fds(n, nofile);
            let spread = a.common.spread_sources || n > 25_000;
            let shared = Shared::new(a.common.threads as usize);
            let cfg = broadcast::Config {
                receivers: a.receivers,
                senders: a.senders,
                room: a.room.clone(),
                size: a.size,
                rate: a.rate,
                window: a.window,
                warmup: a.common.warmup,
                duration: a.duration,
                drain: a.drain,
            };
            let (st, s) = run_measured(&a.common, &shared, a.duration, |th| {
                let paths: Vec<(usize, String)> = ids_for(th, shared.threads, n)
                    .map(|id| {
                        let nick = if id < a.receivers {
                            format!("nick=b-r{id}")
                        } else {
                            format!("nick=b-s{}", id - a.receivers)
                        };
                        (id, t.path_with_query(&nick))
                    })
                    .collect();
                broadcast::run(&cfg, &t, spread, &paths, &a.common, &shared)
            });
            let mode = match a.rate {
                Some(r) => format!("{r} msgs/s"),
                None => format!("window {}", a.window),
            };
            let scenario = format!(
                "broadcast {}B, {} receivers, {} senders, {mode}",
                a.size, a.receivers, a.senders
            );
            let mut r = base_report(scenario, n, &a.common, &st, &s);
            r.sent = Some(st.sent);
            // With deflate only the inflating sample sees what it gets.
            let checked = if a.common.deflate {
                a.receivers.div_ceil(broadcast::INFLATE_SAMPLE)
            } else {
                a.receivers
            };
            let expected = st.sent.saturating_mul(checked as u64);
            r.lost = Some(expected as i64 - st.window_deliveries as i64);
            (r, a.common.json)
        }
        Scenario::Idle(a) => {
            let t = target(&a.url);
            if let Some(room) = &a.join
                && (!valid_room(room) || (a.room_each && room.len() > 58))
            {
                fail("--join: 1-64 characters of A-Z a-z 0-9 _ - (58 with --room-each)");
            }
            check_fds(a.connections, nofile);
            let spread = a.common.spread_sources || a.connections > 25_000;
            let r = idle::run(
                &t,
                a.connections,
                a.hold,
                a.join.as_deref(),
                a.room_each,
                spread,
                &a.common,
            );
            (r, a.common.json)
        }
    };
    report.print(json);
    if report.opened == 0 {
        // Nothing was measured: make scripts notice.
        std::process::exit(1);
    }
}

fn check_fds(n: usize, nofile: u64) {
    if (n as u64) + 64 > nofile {
        eprintln!(
            "wschat-bench: warning: {n} connections but RLIMIT_NOFILE is {nofile}; \
             connections past the limit will fail"
        );
    }
}
