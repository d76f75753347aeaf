//! `echo`: every connection keeps `in_flight` messages outstanding on an
//! echo endpoint; each echo is checked and its round trip timed.
//!
//! By default the frames are prepared once (see [`Prepared`]): sending is
//! one copy of a run of ready masked frames per connection and turn, and
//! checking an echo is one comparison of the bytes received with the frame
//! expected, so the generator spends a few dozen instructions per message
//! and the server, not the generator, sets the pace. `--classic` encodes,
//! masks, parses and checks every message on its own (length, sequence
//! prefix, last byte), as before.

use std::time::Duration;

use wschat::ws::frame::{MAX_HEADER_LEN, OpCode, encode_header};

use crate::conn::{Conn, Event, Handler};
use crate::report::Stats;
use crate::wire::{self, Target, XorShift};
use crate::{Common, Mode, Shared};

pub struct Config {
    pub size: usize,
    pub in_flight: u32,
    pub binary: bool,
    pub warmup: Duration,
    pub duration: Duration,
    /// Encode and parse every message on its own (no prepared frames).
    pub classic: bool,
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
    /// The prepared frames, unless `--classic` (or permessage-deflate,
    /// whose frames are compressed, is on for a connection).
    prepared: Option<Prepared>,
}

/// Client frames and the server's expected echoes, made once for `slots`
/// sequence numbers: message `seq` carries `seq mod slots` in its prefix
/// (hex), so its frame is slot `seq mod slots`. `slots` is at least twice
/// the window, so a lost, repeated or reordered echo never matches the
/// frame expected. All frames are the same length, so a run of consecutive
/// slots is one slice; `tx` holds every slot twice over so that a run
/// never wraps. Each slot has its own masking key (RFC 6455 §5.3): fixed,
/// which costs the server the same to unmask as fresh keys would; for a
/// loopback benchmark nothing needs them unpredictable.
struct Prepared {
    slots: usize,
    tx_len: usize,
    rx_len: usize,
    tx: Vec<u8>,
    rx: Vec<u8>,
}

/// Prepared frames are not used past this many bytes (huge windows of
/// large messages): those runs go the classic way.
const MAX_PREPARED: usize = 256 << 20;

impl Prepared {
    fn new(opcode: OpCode, template: &[u8], in_flight: u32) -> Option<Prepared> {
        let slots = (2 * in_flight as usize).max(16).next_power_of_two();
        let mut rng = XorShift::new(0x5eed ^ template.len() as u64);
        let (mut tx, mut rx) = (Vec::new(), Vec::new());
        let mut payload = template.to_vec();
        for slot in 0..slots {
            stamp(&mut payload, slot as u64);
            if slot == 0 && (slots * 3).saturating_mul(payload.len() + 14) > MAX_PREPARED {
                return None;
            }
            wire::push_frame(&mut tx, opcode, &payload, rng.mask_key());
            push_server_frame(&mut rx, opcode, &payload);
        }
        let tx_len = tx.len() / slots;
        let rx_len = rx.len() / slots;
        tx.extend_from_within(..);
        Some(Prepared {
            slots,
            tx_len,
            rx_len,
            tx,
            rx,
        })
    }

    /// The client frames of messages `seq..seq + n` (n <= slots), in one slice.
    fn frames(&self, seq: u64, n: usize) -> &[u8] {
        let first = seq as usize & (self.slots - 1);
        &self.tx[first * self.tx_len..(first + n) * self.tx_len]
    }

    /// The frame the server must send back for message `seq`: the payload
    /// unchanged, unmasked (RFC 6455 §5.1), in one frame.
    fn echo_of(&self, seq: u64) -> &[u8] {
        let slot = seq as usize & (self.slots - 1);
        &self.rx[slot * self.rx_len..(slot + 1) * self.rx_len]
    }
}

/// Writes `n` in hex over the last digits of the payload's prefix (as many
/// of its `SEQ_LEN` digits as the payload holds).
fn stamp(payload: &mut [u8], n: u64) {
    let k = SEQ_LEN.min(payload.len());
    payload[..k].copy_from_slice(&seq_hex(n)[SEQ_LEN - k..]);
}

/// An unmasked server frame, as an echo server sends it.
fn push_server_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut hdr, true, opcode, payload.len() as u64, None);
    out.extend_from_slice(&hdr[..n]);
    out.extend_from_slice(payload);
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
        if c.raw
            && let Some(p) = &self.prepared
        {
            // A connection never has more than `in_flight` (< slots) out.
            let n = self.in_flight.saturating_sub(c.outstanding) as usize;
            if n == 0 {
                return;
            }
            c.send_raw(p.frames(c.seq_sent, n));
            c.times.extend(std::iter::repeat_n(now, n));
            c.seq_sent += n as u64;
            c.outstanding += n as u32;
            if now >= self.m0 && now < self.m1 {
                self.stats.sent += n as u64;
            }
            return;
        }
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

impl Echo {
    /// The prepared path: takes the run of echoes at the front of `bytes`
    /// that match, byte for byte, the frames expected next; stops at the
    /// first that does not (a ping, a close, a wrong echo: the connection
    /// parses that one, and a data frame then counts as failed).
    fn take_echoes(&mut self, c: &mut Conn, bytes: &[u8], now: u64) -> usize {
        let Some(p) = &self.prepared else { return 0 };
        let counted = now >= self.m0 && now < self.m1;
        let size = self.template.len() as u64;
        let mut off = 0;
        let mut k = 0u64;
        // Latencies in runs of the same send time: one histogram update
        // per run (the echoes of one write share their send time).
        let mut run: Option<(u64, u64)> = None;
        while bytes.len() - off >= p.rx_len && bytes[off..off + p.rx_len] == *p.echo_of(c.seq_recv)
        {
            off += p.rx_len;
            c.seq_recv += 1;
            k += 1;
            if let Some(t) = c.times.pop_front()
                && counted
            {
                run = match run {
                    Some((rt, n)) if rt == t => Some((rt, n + 1)),
                    Some((rt, n)) => {
                        record(&mut self.stats, size, now, rt, n);
                        Some((t, 1))
                    }
                    None => Some((t, 1)),
                };
            }
        }
        if let Some((rt, n)) = run {
            record(&mut self.stats, size, now, rt, n);
        }
        c.outstanding = c.outstanding.saturating_sub(k as u32);
        if k > 0 && self.sending && now < self.m1 {
            self.fill(c, now);
        }
        off
    }
}

/// `n` echoes of `size` bytes sent at `sent` arrived at `now`.
fn record(stats: &mut Stats, size: u64, now: u64, sent: u64, n: u64) {
    let _ = stats.lat.record_n(now.saturating_sub(sent).max(1), n);
    stats.completed += n;
    stats.bytes += n * size;
}

impl Handler for Echo {
    fn event(&mut self, c: &mut Conn, ev: Event<'_>, now: u64) {
        match ev {
            Event::Raw { bytes, used } => *used = self.take_echoes(c, bytes, now),
            Event::Open => {
                // permessage-deflate compresses each frame: those go the classic way.
                c.raw = self.prepared.is_some() && !c.deflate;
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
                // On the prepared path only a frame that is not the echo
                // expected gets here.
                if c.raw || !self.verify(c, opcode, payload) {
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
    let opcode = if cfg.binary {
        OpCode::Binary
    } else {
        OpCode::Text
    };
    let prepared = (!cfg.classic)
        .then(|| Prepared::new(opcode, &template, cfg.in_flight))
        .flatten();
    let mut m = Echo {
        stats: Stats::default(),
        settled: 0,
        opcode,
        in_flight: cfg.in_flight,
        template,
        m0: u64::MAX,
        m1: u64::MAX,
        sending: false,
        prepared,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_frames_unmask_to_their_echo_and_runs_never_wrap() {
        let template: Vec<u8> = (0..64).map(|i| b'a' + (i % 26) as u8).collect();
        let p = Prepared::new(OpCode::Text, &template, 16).expect("small enough");
        assert_eq!(p.slots, 32);
        // The run from the last slot onwards is one slice of whole frames.
        let run = p.frames(31, 16);
        assert_eq!(run.len(), 16 * p.tx_len);
        for (i, f) in run.chunks(p.tx_len).enumerate() {
            let seq = 31 + i as u64;
            // 64 B: two header bytes, the masking key, the masked payload.
            assert_eq!(&f[..2], &[0x81, 0x80 | 64]);
            let mut d = f[6..].to_vec();
            wire::apply_mask(&mut d, [f[2], f[3], f[4], f[5]]);
            let echo = p.echo_of(seq);
            assert_eq!(&echo[2..], &d[..], "seq {seq}");
            assert_eq!(&echo[..2], &[0x81, 64]);
            assert_eq!(&d[..SEQ_LEN], &seq_hex(seq % 32)[..]);
        }
        // Neighbouring sequence numbers expect different frames.
        assert_ne!(p.echo_of(5), p.echo_of(6));
        assert_eq!(p.echo_of(5), p.echo_of(5 + 32));
    }

    #[test]
    fn short_payloads_carry_the_low_digits() {
        let mut b = *b"xyz";
        stamp(&mut b, 0x1ab);
        assert_eq!(&b, b"1ab");
    }
}
