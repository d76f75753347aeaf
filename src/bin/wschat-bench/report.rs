//! Per-thread counters, their merge, and the final report (table or JSON).

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::conn::CloseReason;

/// Latencies are kept in nanoseconds, 3 significant digits, up to 100 s.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static histogram bounds are valid")
}

/// One worker thread's counters.
pub struct Stats {
    /// Message latency (echo round trip, broadcast delivery), ns.
    pub lat: Histogram<u64>,
    /// Connect → 101 (→ `joined` where a join is part of setup), ns.
    pub hs: Histogram<u64>,
    pub opened: u64,
    pub connect_failed: u64,
    pub handshake_failed: u64,
    pub protocol_errors: u64,
    pub server_closes: u64,
    pub io_closes: u64,
    pub chat_errors: u64,
    pub rate_limited: u64,
    pub verify_failed: u64,
    /// Sends skipped because the connection's own write queue was full.
    pub client_backlog: u64,
    /// Messages sent during the measured period.
    pub sent: u64,
    /// Messages completed (echo) or received (broadcast) during the measured period.
    pub completed: u64,
    /// Payload bytes of `completed`.
    pub bytes: u64,
    /// Of `completed`, those that arrived compressed and were counted
    /// without being inflated (broadcast receivers outside the inflating
    /// sample), and their payload bytes as received.
    pub compressed: u64,
    pub compressed_bytes: u64,
    /// Broadcast: deliveries of messages sent during the measured period,
    /// whenever they arrived before the end of the drain.
    pub window_deliveries: u64,
    /// Setup: when this thread's last connection settled, ns since origin.
    pub settled_ns: u64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            lat: new_hist(),
            hs: new_hist(),
            opened: 0,
            connect_failed: 0,
            handshake_failed: 0,
            protocol_errors: 0,
            server_closes: 0,
            io_closes: 0,
            chat_errors: 0,
            rate_limited: 0,
            verify_failed: 0,
            client_backlog: 0,
            sent: 0,
            completed: 0,
            bytes: 0,
            compressed: 0,
            compressed_bytes: 0,
            window_deliveries: 0,
            settled_ns: 0,
        }
    }
}

impl Stats {
    pub fn count_close(&mut self, why: CloseReason) {
        match why {
            CloseReason::ConnectFailed => self.connect_failed += 1,
            CloseReason::Handshake(e) => {
                log::debug!("handshake failed: {e:?}");
                self.handshake_failed += 1
            }
            CloseReason::Protocol(e) => {
                log::debug!("protocol error: {e:?}");
                self.protocol_errors += 1
            }
            CloseReason::ServerClose(code) => {
                log::debug!("server closed with {code}");
                self.server_closes += 1
            }
            CloseReason::Io => self.io_closes += 1,
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        // Both histograms share bounds, so add() cannot fail.
        let _ = self.lat.add(&o.lat);
        let _ = self.hs.add(&o.hs);
        self.opened += o.opened;
        self.connect_failed += o.connect_failed;
        self.handshake_failed += o.handshake_failed;
        self.protocol_errors += o.protocol_errors;
        self.server_closes += o.server_closes;
        self.io_closes += o.io_closes;
        self.chat_errors += o.chat_errors;
        self.rate_limited += o.rate_limited;
        self.verify_failed += o.verify_failed;
        self.client_backlog += o.client_backlog;
        self.sent += o.sent;
        self.completed += o.completed;
        self.bytes += o.bytes;
        self.compressed += o.compressed;
        self.compressed_bytes += o.compressed_bytes;
        self.window_deliveries += o.window_deliveries;
        self.settled_ns = self.settled_ns.max(o.settled_ns);
    }

    pub fn errors(&self) -> u64 {
        self.connect_failed
            + self.handshake_failed
            + self.protocol_errors
            + self.server_closes
            + self.io_closes
            + self.chat_errors
            + self.verify_failed
    }
}

/// The results of one run. `None` fields do not apply to the mode.
#[derive(Serialize, Default)]
pub struct Report {
    pub scenario: String,
    pub connections: u64,
    pub threads: usize,
    pub duration_s: f64,
    pub opened: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    pub messages: u64,
    pub msgs_per_s: f64,
    pub bytes: u64,
    pub mb_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Latency>,
    pub handshake_us: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshakes_per_s: Option<f64>,
    pub client_cpu_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerUse>,
    pub errors: u64,
    pub error_detail: ErrorDetail,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<i64>,
    /// Mean payload bytes of a message that arrived compressed (the bytes
    /// on the wire are these plus the frame header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compressed_payload_mean: Option<f64>,
}

#[derive(Serialize, Default, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Latency {
            p50: us(h.value_at_quantile(0.50)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
            count: h.len(),
        })
    }
}

#[derive(Serialize, Default)]
pub struct ServerUse {
    pub cpu_s: f64,
    /// cpu_s over the measured wall time (1.0 = one core busy).
    pub cpu_util: f64,
    pub msgs_per_cpu_s: Option<f64>,
    pub bytes_per_cpu_s: Option<f64>,
    pub rss_start_kb: u64,
    pub rss_end_kb: u64,
    /// Idle mode: RSS right after the last connection opened, before the
    /// hold (includes what opening them used transiently).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after_open_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_conn_bytes: Option<f64>,
}

#[derive(Serialize, Default)]
pub struct ErrorDetail {
    pub connect_failed: u64,
    pub handshake_failed: u64,
    pub protocol_errors: u64,
    pub server_closes: u64,
    pub io_closes: u64,
    pub chat_errors: u64,
    pub rate_limited: u64,
    pub verify_failed: u64,
    pub client_backlog: u64,
}

impl ErrorDetail {
    pub fn of(s: &Stats) -> ErrorDetail {
        ErrorDetail {
            connect_failed: s.connect_failed,
            handshake_failed: s.handshake_failed,
            protocol_errors: s.protocol_errors,
            server_closes: s.server_closes,
            io_closes: s.io_closes,
            chat_errors: s.chat_errors,
            rate_limited: s.rate_limited,
            verify_failed: s.verify_failed,
            client_backlog: s.client_backlog,
        }
    }
}

fn si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

fn lat(l: &Option<Latency>) -> String {
    match l {
        Some(l) => format!(
            "{:.0} / {:.0} / {:.0} / {:.0} µs (n={})",
            l.p50, l.p99, l.p999, l.max, l.count
        ),
        None => "-".into(),
    }
}

impl Report {
    pub fn print(&self, json: bool) {
        if json {
            match serde_json::to_string(self) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("json: {e}"),
            }
            return;
        }
        let mut rows: Vec<(&str, String)> = vec![
            ("scenario", self.scenario.clone()),
            (
                "connections",
                format!("{} ({} opened)", self.connections, self.opened),
            ),
            ("threads", self.threads.to_string()),
            ("measured", format!("{:.2} s", self.duration_s)),
        ];
        if let Some(s) = self.setup_s {
            rows.push(("setup (open all)", format!("{s:.3} s")));
        }
        if let Some(h) = self.handshakes_per_s {
            rows.push(("handshakes/s", si(h)));
        }
        rows.push(("handshake p50/p99/p99.9/max", lat(&self.handshake_us)));
        if self.latency_us.is_some() || self.messages > 0 {
            if let Some(s) = self.sent {
                rows.push(("sent", s.to_string()));
            }
            rows.push(("messages", self.messages.to_string()));
            rows.push(("msgs/s", si(self.msgs_per_s)));
            rows.push((
                "payload MB/s",
                format!("{:.1} ({:.3} GB/s)", self.mb_per_s, self.mb_per_s / 1000.0),
            ));
            rows.push(("latency p50/p99/p99.9/max", lat(&self.latency_us)));
        }
        rows.push(("client cpu s", format!("{:.2}", self.client_cpu_s)));
        if let Some(s) = &self.server {
            rows.push((
                "server cpu s",
                format!("{:.2} ({:.0}% of a core)", s.cpu_s, s.cpu_util * 100.0),
            ));
            if let Some(m) = s.msgs_per_cpu_s {
                rows.push(("msgs per server cpu-s", si(m)));
            }
            if let Some(b) = s.bytes_per_cpu_s {
                rows.push(("bytes per server cpu-s", format!("{}B", si(b))));
            }
            rows.push((
                "server rss",
                format!(
                    "{:.1} MiB -> {:.1} MiB",
                    s.rss_start_kb as f64 / 1024.0,
                    s.rss_end_kb as f64 / 1024.0
                ),
            ));
            if let Some(a) = s.rss_after_open_kb {
                rows.push((
                    "server rss after open",
                    format!("{:.1} MiB (before the hold)", a as f64 / 1024.0),
                ));
            }
            if let Some(p) = s.rss_per_conn_bytes {
                rows.push((
                    "server rss per conn",
                    format!("{p:.0} B (at the end of the hold)"),
                ));
            }
        }
        let d = &self.error_detail;
        rows.push((
            "errors",
            format!(
                "{} (connect {}, handshake {}, protocol {}, server close {}, io {}, chat {} [rate_limited {}], verify {})",
                self.errors,
                d.connect_failed,
                d.handshake_failed,
                d.protocol_errors,
                d.server_closes,
                d.io_closes,
                d.chat_errors,
                d.rate_limited,
                d.verify_failed
            ),
        ));
        if d.client_backlog > 0 {
            rows.push((
                "sends skipped (client backlog)",
                d.client_backlog.to_string(),
            ));
        }
        if let Some(l) = self.lost {
            rows.push(("lost", l.to_string()));
        }
        if let Some(b) = self.compressed_payload_mean {
            rows.push(("compressed payload per message", format!("{b:.1} B")));
        }
        let w = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (k, v) in rows {
            println!("{k:<w$}  {v}");
        }
    }
}
