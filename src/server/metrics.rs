//! `/metrics` in the Prometheus text format (exposition format 0.0.4) on
//! `--metrics-addr`: a listener of its own on the same loop, so the numbers
//! are never on the public port by accident.
//!
//! The counters are plain `u64`s on the server (`Metrics`), bumped by
//! one-line hooks where the event happens: one thread, so no atomics, no
//! locks, no registry, nothing allocated per message. Gauges (connections,
//! rooms, history) are read from their owners when scraped; the scrape
//! itself is the only thing that formats or allocates. Arrows run from
//! here to the counters, never back.

use super::{Endpoint, Phase, Route, Server, http, listen};
use crate::server::queue::Chunk;
use crate::ws::handshake::Request;
use log::{debug, info};
use mio::net::TcpListener;
use mio::{Interest, Registry, Token};
use std::cell::Cell;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

/// The metrics listener's token.
pub(super) const METRICS: Token = Token(usize::MAX - 5);

thread_local! {
    /// Bytes handed to sockets (with TLS: to the encryption), counted in
    /// the write queue, which has no way back to the server. The server is
    /// one thread; a `Cell` is an add.
    static BYTES_OUT: Cell<u64> = const { Cell::new(0) };
}

/// Counts bytes written (the write queue's hook).
#[inline]
pub fn wrote(n: usize) {
    BYTES_OUT.with(|b| b.set(b.get().wrapping_add(n as u64)));
}

/// A histogram with fixed bucket bounds in microseconds.
#[derive(Debug)]
pub struct Histogram {
    bounds_us: &'static [u64],
    /// Observations per bucket (not cumulative); the last is +Inf.
    counts: Vec<u64>,
    sum_us: u64,
}

impl Histogram {
    fn new(bounds_us: &'static [u64]) -> Histogram {
        Histogram {
            bounds_us,
            counts: vec![0; bounds_us.len() + 1],
            sum_us: 0,
        }
    }

    /// Records one observation of `us` microseconds.
    #[inline]
    pub fn observe(&mut self, us: u64) {
        let i = self
            .bounds_us
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(self.bounds_us.len());
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in self.bounds_us.iter().enumerate() {
            cum += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cum}", seconds(*b));
        }
        cum += self.counts[self.bounds_us.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(out, "{name}_sum {}", seconds(self.sum_us));
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

fn seconds(us: u64) -> String {
    format!("{}", us as f64 / 1e6)
}

const COMMIT_BOUNDS_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];
const TURN_BOUNDS_US: &[u64] = &[
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 100_000,
];

/// Close codes counted one by one (RFC 6455 §7.4.1 and the IANA registry,
/// 1000-1015); others are counted as "other".
const CLOSE_CODES: usize = 16;

fn endpoint_index(e: Endpoint) -> usize {
    match e {
        Endpoint::Echo => 0,
        Endpoint::Chat => 1,
    }
}

const ENDPOINTS: [&str; 2] = ["echo", "chat"];

/// The server's counters (see the module comment).
#[derive(Debug)]
pub struct Metrics {
    pub accepted: u64,
    handshakes: [u64; 2],
    messages_in: [u64; 2],
    messages_out: [u64; 2],
    pub bytes_in: u64,
    /// Close frames by code: sent by us and received from peers; the last
    /// slot of each is "other".
    closes_sent: [u64; CLOSE_CODES + 1],
    closes_received: [u64; CLOSE_CODES + 1],
    pub slow_consumer_drops: u64,
    pub commit_failures: u64,
    pub commit: Histogram,
    pub turn: Histogram,
    /// When the current loop turn's work began (only with --metrics-addr).
    turn_start: Option<Instant>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            accepted: 0,
            handshakes: [0; 2],
            messages_in: [0; 2],
            messages_out: [0; 2],
            bytes_in: 0,
            closes_sent: [0; CLOSE_CODES + 1],
            closes_received: [0; CLOSE_CODES + 1],
            slow_consumer_drops: 0,
            commit_failures: 0,
            commit: Histogram::new(COMMIT_BOUNDS_US),
            turn: Histogram::new(TURN_BOUNDS_US),
            turn_start: None,
        }
    }
}

fn close_slot(code: u16) -> usize {
    match code {
        1000..=1015 => usize::from(code - 1000),
        _ => CLOSE_CODES,
    }
}

fn close_label(slot: usize) -> String {
    if slot == CLOSE_CODES {
        "other".into()
    } else {
        (1000 + slot).to_string()
    }
}

impl Metrics {
    #[inline]
    pub(super) fn handshake(&mut self, e: Endpoint) {
        self.handshakes[endpoint_index(e)] += 1;
    }
    #[inline]
    pub(super) fn message_in(&mut self, e: Endpoint) {
        self.messages_in[endpoint_index(e)] += 1;
    }
    #[inline]
    pub(super) fn message_out(&mut self, e: Endpoint, n: u64) {
        self.messages_out[endpoint_index(e)] += n;
    }
    #[inline]
    pub(super) fn close_sent(&mut self, code: u16) {
        self.closes_sent[close_slot(code)] += 1;
    }
    /// A peer's close frame; one without a code counts as 1005 (§7.1.5).
    #[inline]
    pub(super) fn close_received(&mut self, code: Option<u16>) {
        self.closes_received[close_slot(code.unwrap_or(1005))] += 1;
    }
}

/// The metrics listener, when `--metrics-addr` is set.
pub(super) fn bind(
    addr: Option<SocketAddr>,
    registry: &Registry,
) -> io::Result<Option<TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    let mut l = listen(addr, 64)?;
    registry.register(&mut l, METRICS, Interest::READABLE)?;
    info!("metrics on http://{}/metrics", l.local_addr()?);
    Ok(Some(l))
}

impl Server {
    /// The address `/metrics` is served on, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Accepts on the metrics listener.
    pub(super) fn accept_metrics(&mut self) {
        loop {
            let Some(l) = self.metrics_listener.as_ref() else {
                return;
            };
            match l.accept() {
                Ok((sock, addr)) => self.admit(sock, addr, false, true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!("metrics listener: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Called as a loop turn's work begins and ends (after `poll` returns,
    /// after the flush): the event-loop turn histogram.
    #[inline]
    pub(super) fn turn_begins(&mut self) {
        if self.metrics_listener.is_some() {
            self.metrics.turn_start = Some(Instant::now());
        }
    }

    #[inline]
    pub(super) fn turn_ends(&mut self) {
        if let Some(t0) = self.metrics.turn_start.take() {
            let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.metrics.turn.observe(us);
        }
    }

    /// The only route of the metrics port.
    pub(super) fn metrics_route(&self, head: &[u8]) -> Route {
        let Ok(req) = Request::parse(head) else {
            return Route::Respond(http::error(400, "malformed HTTP request", ""), None);
        };
        if req.path() != "/metrics" {
            return Route::Respond(http::error(404, "only /metrics here", ""), None);
        }
        let head_only = match req.method {
            "GET" => false,
            "HEAD" => true,
            _ => return Route::Respond(http::error(405, "use GET", "Allow: GET, HEAD\r\n"), None),
        };
        let body = self.render_metrics();
        let keep_alive = http::Meta::parse(head).keep_alive(req.minor_version, req.connection);
        Route::Serve(super::Response {
            head: http::open_head(
                200,
                Some("text/plain; version=0.0.4; charset=utf-8"),
                Some(body.len() as u64),
                "Cache-Control: no-store\r\n",
            ),
            body: (!head_only).then(|| Chunk::Owned(body.into_bytes())),
            stream: None,
            keep_alive,
        })
    }

    /// The text format of every metric.
    pub(super) fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let mut o = String::with_capacity(8192);
        let mut http_conns = 0u64;
        let mut ws = [0u64; 2];
        for (_, c) in self.conns.iter() {
            match &c.phase {
                Phase::Ws(w) => ws[endpoint_index(w.endpoint)] += 1,
                _ => http_conns += 1,
            }
        }
        header(
            &mut o,
            "wschat_connections",
            "gauge",
            "Open connections: HTTP (before an upgrade, or answered) and WebSocket by endpoint.",
        );
        let _ = writeln!(o, "wschat_connections{{endpoint=\"http\"}} {http_conns}");
        for (i, e) in ENDPOINTS.iter().enumerate() {
            let _ = writeln!(o, "wschat_connections{{endpoint=\"{e}\"}} {}", ws[i]);
        }
        counter(
            &mut o,
            "wschat_connections_accepted_total",
            "TCP connections accepted (every port).",
            m.accepted,
        );
        by_endpoint(
            &mut o,
            "wschat_handshakes_total",
            "WebSocket handshakes completed (101 sent), by endpoint.",
            &m.handshakes,
        );
        by_endpoint(
            &mut o,
            "wschat_messages_in_total",
            "WebSocket data messages received, by endpoint.",
            &m.messages_in,
        );
        by_endpoint(
            &mut o,
            "wschat_messages_out_total",
            "WebSocket data messages queued: echoes on /echo; on /ws, deliveries (one per recipient of a broadcast or answer).",
            &m.messages_out,
        );
        counter(
            &mut o,
            "wschat_received_bytes_total",
            "Bytes read from client sockets (with TLS, ciphertext).",
            m.bytes_in,
        );
        counter(
            &mut o,
            "wschat_sent_bytes_total",
            "Bytes written to client sockets (with TLS, the plaintext handed to it).",
            BYTES_OUT.with(Cell::get),
        );
        header(
            &mut o,
            "wschat_closes_total",
            "counter",
            "WebSocket close frames by code; by=server (sent first or echoed) or client (received).",
        );
        for (by, arr) in [("server", &m.closes_sent), ("client", &m.closes_received)] {
            for (slot, n) in arr.iter().enumerate() {
                if *n > 0 {
                    let _ = writeln!(
                        o,
                        "wschat_closes_total{{by=\"{by}\",code=\"{}\"}} {n}",
                        close_label(slot)
                    );
                }
            }
        }
        counter(
            &mut o,
            "wschat_slow_consumer_drops_total",
            "Chat clients closed (1008) because their unsent output passed --max-pending-output.",
            m.slow_consumer_drops,
        );
        counter(
            &mut o,
            "wschat_rate_limited_total",
            "Chat messages refused by the rate limit.",
            self.chat.rate_limited(),
        );
        gauge(
            &mut o,
            "wschat_rooms",
            "Rooms kept (with members, or empty with retained history).",
            self.chat.rooms() as u64,
        );
        gauge(
            &mut o,
            "wschat_history_messages",
            "Messages of room history held in memory, all rooms.",
            self.chat.history_messages() as u64,
        );
        gauge(
            &mut o,
            "wschat_history_bytes",
            "Bytes of room history held in memory, as counted against --max-history-bytes.",
            self.chat.history_bytes() as u64,
        );
        counter(
            &mut o,
            "wschat_store_commit_failures_total",
            "Store commits that failed.",
            m.commit_failures,
        );
        m.commit.render(
            &mut o,
            "wschat_store_commit_duration_seconds",
            "Time of one store commit (one transaction per loop turn that has records).",
        );
        m.turn.render(
            &mut o,
            "wschat_event_loop_turn_duration_seconds",
            "Work of one event-loop turn, from poll's return to the end of the flush.",
        );
        if let Some(p) = process() {
            counter_f(
                &mut o,
                "process_cpu_seconds_total",
                "User and system CPU time.",
                p.cpu_seconds,
            );
            gauge(
                &mut o,
                "process_resident_memory_bytes",
                "Resident memory.",
                p.rss_bytes,
            );
            gauge(
                &mut o,
                "process_virtual_memory_bytes",
                "Virtual memory.",
                p.vsize_bytes,
            );
            gauge(
                &mut o,
                "process_open_fds",
                "Open file descriptors.",
                p.open_fds,
            );
        }
        o
    }
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    header(o, name, "counter", help);
    let _ = writeln!(o, "{name} {v}");
}

fn counter_f(o: &mut String, name: &str, help: &str, v: f64) {
    header(o, name, "counter", help);
    let _ = writeln!(o, "{name} {v}");
}

fn gauge(o: &mut String, name: &str, help: &str, v: u64) {
    header(o, name, "gauge", help);
    let _ = writeln!(o, "{name} {v}");
}

fn by_endpoint(o: &mut String, name: &str, help: &str, v: &[u64; 2]) {
    header(o, name, "counter", help);
    for (i, e) in ENDPOINTS.iter().enumerate() {
        let _ = writeln!(o, "{name}{{endpoint=\"{e}\"}} {}", v[i]);
    }
}

struct Process {
    cpu_seconds: f64,
    rss_bytes: u64,
    vsize_bytes: u64,
    open_fds: u64,
}

/// Clock ticks per second of /proc's CPU times: USER_HZ, which Linux fixes
/// at 100 for user space on every architecture (`sysconf(_SC_CLK_TCK)`
/// would need unsafe code, which the library forbids).
const USER_HZ: f64 = 100.0;

/// The process's CPU and memory from /proc (Linux; elsewhere none).
fn process() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the ")" that ends the command name (which may hold
    // spaces): state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    Some(Process {
        cpu_seconds: (field(14)? + field(15)?) as f64 / USER_HZ,
        rss_bytes: kib("VmRSS:")? * 1024,
        vsize_bytes: kib("VmSize:")? * 1024,
        open_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[10, 100]);
        for us in [5, 10, 50, 1000] {
            h.observe(us);
        }
        let mut o = String::new();
        h.render(&mut o, "x", "help");
        assert!(o.contains("x_bucket{le=\"0.00001\"} 2\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"0.0001\"} 3\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"+Inf\"} 4\n"), "{o}");
        assert!(o.contains("x_sum 0.001065\n"), "{o}");
        assert!(o.contains("x_count 4\n"), "{o}");
    }

    #[test]
    fn close_codes_have_slots() {
        assert_eq!(close_label(close_slot(1000)), "1000");
        assert_eq!(close_label(close_slot(1015)), "1015");
        assert_eq!(close_label(close_slot(4000)), "other");
        assert!(process().is_some_and(|p| p.rss_bytes > 0));
    }
}
