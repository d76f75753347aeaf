//! `broadcast`: everyone joins one room; senders post messages whose text
//! starts with the send time (ns since the run's origin, one monotonic clock
//! for the whole process), receivers time each delivery.

use std::time::Duration;

use wschat::ws::frame::OpCode;

use crate::conn::{Conn, Event, Handler};
use crate::report::Stats;
use crate::wire::{self, Target};
use crate::{Common, Mode, Shared};

pub struct Config {
    pub receivers: usize,
    pub senders: usize,
    pub room: String,
    /// Bytes of `text`.
    pub size: usize,
    pub rate: Option<f64>,
    pub window: u32,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
}

/// A sender skips a send (counted) rather than queue past this.
const MAX_BACKLOG: usize = 8 << 20;
/// Rate mode: at most this many sends per sender per turn when catching up.
const MAX_BURST: u32 = 1024;

struct Bcast {
    stats: Stats,
    settled: usize,
    receivers: usize,
    size: usize,
    window: u32,
    windowed: bool,
    join: Vec<u8>,
    /// `{"type":"message","room":"…","ref":"b","text":"`; the sender's copy
    /// carries the `ref`, which is how a sender recognises its own messages.
    prefix: Vec<u8>,
    msg: Vec<u8>,
    m0: u64,
    m1: u64,
    sending: bool,
}

/// With permessage-deflate, one receiver in this many inflates what it
/// gets (and measures latency), so the load generator is not the limit;
/// the others count compressed deliveries.
pub const INFLATE_SAMPLE: usize = 10;

/// Padding for the message text: chat-like words.
const FILLER: &[u8] = b"did anyone see the release notes? the reconnect logic looks solid, \
and the numbers for the second quarter are in the appendix. ";

/// The value of the first `"type":"…"` field (compact JSON, as wschat sends).
fn msg_type(p: &[u8]) -> &[u8] {
    const K: &[u8] = br#""type":""#;
    let Some(i) = wire::find(p, K) else {
        return b"";
    };
    let v = &p[i + K.len()..];
    let end = v.iter().position(|&b| b == b'"').unwrap_or(v.len());
    &v[..end]
}

impl Bcast {
    fn is_receiver(&self, c: &Conn) -> bool {
        c.id < self.receivers
    }

    /// Queues one message stamped with `now`.
    fn send_one(&mut self, c: &mut Conn, now: u64) {
        self.msg.clear();
        self.msg.extend_from_slice(&self.prefix);
        let text_start = self.msg.len();
        wire::push_u64(&mut self.msg, now);
        self.msg.push(b' ');
        let pad = self.size.saturating_sub(self.msg.len() - text_start);
        // Words rather than one repeated byte, so that with --deflate the
        // text compresses about as chat does, not a thousandfold.
        self.msg.extend(FILLER.iter().cycle().take(pad));
        self.msg.extend_from_slice(b"\"}");
        c.send(OpCode::Text, &self.msg);
        c.outstanding += 1;
        if now >= self.m0 && now < self.m1 {
            self.stats.sent += 1;
        }
    }

    fn fill_window(&mut self, c: &mut Conn, now: u64) {
        while c.outstanding < self.window && now < self.m1 && c.is_open() {
            self.send_one(c, now);
        }
    }

    fn on_message(&mut self, c: &mut Conn, p: &[u8], now: u64) {
        let in_window = now >= self.m0 && now < self.m1;
        if self.is_receiver(c) {
            const K: &[u8] = br#""text":""#;
            let ts = wire::find(p, K).and_then(|i| wire::parse_digits(&p[i + K.len()..]));
            let Some(ts) = ts else {
                self.stats.verify_failed += 1;
                return;
            };
            if in_window {
                self.stats.completed += 1;
                self.stats.bytes += p.len() as u64;
            }
            if ts >= self.m0 && ts < self.m1 {
                self.stats.window_deliveries += 1;
                self.stats
                    .lat
                    .saturating_record(now.saturating_sub(ts).max(1));
            }
        } else if wire::find(p, br#""ref":"b""#).is_some() {
            c.outstanding = c.outstanding.saturating_sub(1);
            if self.windowed && self.sending {
                self.fill_window(c, now);
            }
        }
    }
}

impl Handler for Bcast {
    fn event(&mut self, c: &mut Conn, ev: Event<'_>, now: u64) {
        match ev {
            Event::Open => c.send(OpCode::Text, &self.join),
            Event::Message {
                opcode,
                payload,
                compressed,
            } => {
                if opcode != OpCode::Text {
                    self.stats.verify_failed += 1;
                    return;
                }
                if compressed {
                    // A receiver outside the inflating sample: only
                    // messages arrive once it is ready.
                    if now >= self.m0 && now < self.m1 {
                        self.stats.completed += 1;
                        self.stats.bytes += payload.len() as u64;
                        self.stats.compressed += 1;
                        self.stats.compressed_bytes += payload.len() as u64;
                    }
                    return;
                }
                match msg_type(payload) {
                    b"message" => self.on_message(c, payload, now),
                    b"joined" if !c.ready => {
                        c.ready = true;
                        if self.is_receiver(c) && !c.id.is_multiple_of(INFLATE_SAMPLE) {
                            c.inflate = false;
                        }
                        self.settled += 1;
                        self.stats.opened += 1;
                        self.stats.hs.saturating_record(now - c.started_ns);
                        if self.windowed && self.sending && !self.is_receiver(c) {
                            self.fill_window(c, now);
                        }
                    }
                    b"error" => {
                        self.stats.chat_errors += 1;
                        if wire::find(payload, b"rate_limited").is_some() {
                            self.stats.rate_limited += 1;
                        }
                        log::debug!("chat error: {}", String::from_utf8_lossy(payload));
                        if !c.ready {
                            // The join failed: this connection is settled, not ready.
                            c.ready = true;
                            self.settled += 1;
                        } else if !self.is_receiver(c) {
                            // The refused message will never be acknowledged.
                            c.outstanding = c.outstanding.saturating_sub(1);
                            if self.windowed && self.sending {
                                self.fill_window(c, now);
                            }
                        }
                    }
                    _ => {}
                }
            }
            // Only echo sets `raw`.
            Event::Raw { .. } => {}
            Event::Closed(why) => {
                if !c.ready {
                    self.settled += 1;
                }
                self.stats.count_close(why);
            }
        }
    }
}

impl Mode for Bcast {
    fn progress(&self) -> (usize, &Stats) {
        (self.settled, &self.stats)
    }
    fn progress_mut(&mut self) -> (&mut usize, &mut Stats) {
        (&mut self.settled, &mut self.stats)
    }
}

pub fn run(
    cfg: &Config,
    t: &Target,
    spread: bool,
    paths: &[(usize, String)],
    common: &Common,
    shared: &Shared,
) -> Stats {
    let Some(mut net) = crate::open_net(t, shared, spread) else {
        return Stats::default();
    };
    let room = &cfg.room;
    let mut m = Bcast {
        stats: Stats::default(),
        settled: 0,
        receivers: cfg.receivers,
        size: cfg.size,
        window: cfg.window,
        windowed: cfg.rate.is_none(),
        join: format!(r#"{{"type":"join","room":"{room}"}}"#).into_bytes(),
        prefix: format!(r#"{{"type":"message","room":"{room}","ref":"b","text":""#).into_bytes(),
        msg: Vec::with_capacity(cfg.size + 128),
        m0: u64::MAX,
        m1: u64::MAX,
        sending: false,
    };
    let Some(start) = crate::setup(&mut net, &mut m, paths, common, shared) else {
        net.close_all();
        return m.stats;
    };
    m.m0 = start + cfg.warmup.as_nanos() as u64;
    m.m1 = m.m0 + cfg.duration.as_nanos() as u64;
    let end = m.m1 + cfg.drain.as_nanos() as u64;
    m.sending = true;
    let senders: Vec<usize> = (0..net.conns.len())
        .filter(|&i| !m.is_receiver(&net.conns[i]) && net.conns[i].ready)
        .collect();
    // Rate mode: each sender gets an equal share of the total rate.
    let interval = cfg
        .rate
        .map(|r| ((cfg.senders as f64 / r) * 1e9).max(1.0) as u64);
    let now = net.now_ns();
    for &i in &senders {
        net.conns[i].next_due_ns = now;
        if m.windowed {
            m.fill_window(&mut net.conns[i], now);
            net.mark(i);
        }
    }
    net.flush(&mut m);
    loop {
        let now = net.now_ns();
        if now >= end {
            break;
        }
        if now >= m.m1 {
            m.sending = false;
        }
        let mut timeout = Duration::from_nanos(end - now).min(Duration::from_millis(10));
        if let (Some(iv), true) = (interval, m.sending) {
            for &i in &senders {
                let c = &mut net.conns[i];
                let mut burst = 0;
                while c.next_due_ns <= now && burst < MAX_BURST && c.is_open() {
                    if c.pending_write() > MAX_BACKLOG {
                        m.stats.client_backlog += 1;
                    } else {
                        m.send_one(c, now);
                    }
                    c.next_due_ns += iv;
                    burst += 1;
                }
                if now.saturating_sub(c.next_due_ns) > 1_000_000_000 {
                    // More than a second behind: the generator cannot keep
                    // the rate; do not burst to catch up.
                    c.next_due_ns = now;
                }
                net.mark(i);
                let c = &net.conns[i];
                if c.next_due_ns > now {
                    timeout = timeout.min(Duration::from_nanos(c.next_due_ns - now));
                }
            }
            net.flush(&mut m);
        }
        net.turn(timeout, &mut m);
        net.flush(&mut m);
    }
    net.close_all();
    m.stats
}
