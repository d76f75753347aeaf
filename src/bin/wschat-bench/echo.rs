//! `echo`: every connection keeps `in_flight` messages outstanding on an
//! echo endpoint; each echo is checked (length, sequence prefix, last byte)
//! and its round trip timed.

use std::time::Duration;

use wschat::ws::frame::OpCode;

use crate::conn::{Conn, Event, Handler};
use crate::report::Stats;
use crate::wire::Target;
use crate::{Common, Mode, Shared};

pub struct Config {
    pub size: usize,
    pub in_flight: u32,
    pub binary: bool,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Bytes of the sequence-number prefix (hex) written into each payload.
const SEQ_LEN: usize = 16;

struct Echo {
    stats: Stats,
    settled: usize,
    opcode: OpCode,
    in_flight: u32,
    /// The payload; its first bytes are overwritten with the sequence number.
    template: Vec<u8>,
    /// Measured period [m0, m1), ns since origin; nothing is sent after m1.
    m0: u64,
    m1: u64,
    sending: bool,
}

fn seq_hex(seq: u64) -> [u8; SEQ_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; SEQ_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((seq >> (60 - 4 * i)) & 0xF) as usize];
    }
    out
}

impl Echo {
    fn fill(&mut self, c: &mut Conn, now: u64) {
        let k = SEQ_LEN.min(self.template.len());
        while c.outstanding < self.in_flight {
            self.template[..k].copy_from_slice(&seq_hex(c.seq_sent)[..k]);
            c.send(self.opcode, &self.template);
            c.times.push_back(now);
            c.seq_sent += 1;
            c.outstanding += 1;
            if now >= self.m0 && now < self.m1 {
                self.stats.sent += 1;
            }
        }
    }

    fn verify(&self, c: &Conn, opcode: OpCode, p: &[u8]) -> bool {
        let t = &self.template;
        let k = SEQ_LEN.min(t.len());
        opcode == self.opcode
            && p.len() == t.len()
            && p[..k] == seq_hex(c.seq_recv)[..k]
            && (t.len() <= SEQ_LEN || p[t.len() - 1] == t[t.len() - 1])
    }
}

impl Handler for Echo {
    fn event(&mut self, c: &mut Conn, ev: Event<'_>, now: u64) {
        match ev {
            Event::Open => {
                c.ready = true;
                self.settled += 1;
                self.stats.opened += 1;
                self.stats.hs.saturating_record(now - c.started_ns);
                if self.sending {
                    self.fill(c, now);
                }
            }
            Event::Message {
                opcode, payload, ..
            } => {
                if !self.verify(c, opcode, payload) {
                    self.stats.verify_failed += 1;
                }
                c.seq_recv += 1;
                c.outstanding = c.outstanding.saturating_sub(1);
                if let Some(t) = c.times.pop_front()
                    && now >= self.m0
                    && now < self.m1
                {
                    self.stats
                        .lat
                        .saturating_record(now.saturating_sub(t).max(1));
                    self.stats.completed += 1;
                    self.stats.bytes += payload.len() as u64;
                }
                if self.sending && now < self.m1 {
                    self.fill(c, now);
                }
            }
            Event::Closed(why) => {
                if !c.ready {
                    self.settled += 1;
                }
                self.stats.count_close(why);
            }
        }
    }
}

impl Mode for Echo {
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
    let template: Vec<u8> = (0..cfg.size).map(|i| b'a' + (i % 26) as u8).collect();
    let mut m = Echo {
        stats: Stats::default(),
        settled: 0,
        opcode: if cfg.binary {
            OpCode::Binary
        } else {
            OpCode::Text
        },
        in_flight: cfg.in_flight,
        template,
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
    m.sending = true;
    let now = net.now_ns();
    for i in 0..net.conns.len() {
        if net.conns[i].ready && net.conns[i].is_open() {
            m.fill(&mut net.conns[i], now);
            net.mark(i);
        }
    }
    net.flush(&mut m);
    loop {
        let now = net.now_ns();
        if now >= m.m1 {
            break;
        }
        let left = Duration::from_nanos(m.m1 - now).min(Duration::from_millis(10));
        net.turn(left, &mut m);
        net.flush(&mut m);
    }
    net.close_all();
    m.stats
}
