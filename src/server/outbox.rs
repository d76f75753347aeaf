//! The chat's outbox onto the connections: the chat hands payloads, and
//! this side frames each once (plain, and compressed per server window for
//! permessage-deflate peers), shared by every recipient's queue.

use super::{Conn, Endpoint, Phase, Server, storage};
use crate::chat::{Chat, ConnId, Now, Outbox};
use crate::ws::deflate;
use crate::ws::frame::{MAX_HEADER_LEN, OpCode, encode_header};
use slab::Slab;
use std::rc::Rc;

/// The reason given to a client whose output overflowed.
const SLOW_CONSUMER: &str = "slow consumer";

impl Server {
    /// Calls into the chat with an outbox onto the connections' queues, then
    /// carries out the closes it asked for or that overflowing queues need.
    pub(super) fn with_chat(&mut self, f: impl FnOnce(&mut Chat, Now, &mut dyn Outbox)) {
        let now = self.chat_now();
        let mut closes = Vec::new();
        let mut dead = Vec::new();
        let mut out = ServerOutbox {
            conns: &mut self.conns,
            dead: &mut dead,
            dirty: &mut self.dirty,
            max_pending: self.cfg.max_pending_output,
            closes: &mut closes,
            storage: self.storage.as_mut(),
            frames: Frames::default(),
            runs: RunFrames::default(),
            deflate_threshold: self.cfg.deflate_threshold,
            delivered: 0,
        };
        f(&mut self.chat, now, &mut out);
        self.metrics.message_out(Endpoint::Chat, out.delivered);
        self.chat_drops.extend(dead);
        self.chat_closes.extend(closes);
        // Each drop or close calls back into the chat (its members leave
        // their rooms), which may find more: work through them in a loop
        // here rather than by recursion, whose depth a crowd could choose.
        if self.settling {
            return;
        }
        self.settling = true;
        loop {
            if let Some(k) = self.chat_drops.pop() {
                self.drop_conn(k);
            } else if let Some((k, code, reason)) = self.chat_closes.pop() {
                if code == 1008
                    && reason == SLOW_CONSUMER
                    && let Some(c) = self.conns.get_mut(k)
                {
                    // Its backlog is dropped; the client recovers it with `since`.
                    c.out.discard_unsent_data();
                    self.metrics.slow_consumer_drops += 1;
                }
                self.start_close(k, code, &reason);
            } else {
                break;
            }
        }
        self.settling = false;
    }
}

/// The chat's view of the connections: it hands payloads, the outbox
/// queues shared frames of them.
struct ServerOutbox<'a> {
    conns: &'a mut Slab<Conn>,
    dead: &'a mut Vec<usize>,
    dirty: &'a mut Vec<usize>,
    max_pending: usize,
    closes: &'a mut Vec<(usize, u16, String)>,
    storage: Option<&'a mut storage::Storage>,
    frames: Frames,
    runs: RunFrames,
    deflate_threshold: usize,
    /// Frames queued (`/metrics`).
    delivered: u64,
}

/// The frames of the payload being sent. The chat sends a broadcast's one
/// payload to its recipients one after another, so remembering the last
/// payload makes one plain frame and at most one compressed frame per
/// broadcast, each built only when a first recipient needs it and shared
/// by every queue (RFC 7692 §7.1.1.1: with `server_no_context_takeover`
/// the compressed bytes are the same for every deflate peer).
#[derive(Default)]
pub(super) struct Frames {
    payload: Option<Rc<[u8]>>,
    plain: Option<Rc<[u8]>>,
    /// The compressed frame per window (RFC 7692 §7.1.2.1: 8 to 15 bits),
    /// so peers that negotiated different windows, in any order, cost one
    /// compression per window, never one per recipient.
    compressed: PerWindow,
}

/// One compressed frame per server window size, 8 to 15 bits.
type PerWindow = [Option<Rc<[u8]>>; 8];

/// The slot of window `bits` in a [`PerWindow`].
fn window_slot(bits: u8) -> usize {
    usize::from(bits.clamp(8, 15) - 8)
}

impl Frames {
    pub(super) fn get(&mut self, payload: &Rc<[u8]>, deflate: Option<u8>) -> Rc<[u8]> {
        // Holding the payload keeps its address from being reused.
        if !self
            .payload
            .as_ref()
            .is_some_and(|p| Rc::ptr_eq(p, payload))
        {
            *self = Frames {
                payload: Some(Rc::clone(payload)),
                ..Frames::default()
            };
        }
        match deflate {
            None => Rc::clone(self.plain.get_or_insert_with(|| text_frame(payload, false))),
            Some(bits) => Rc::clone(self.compressed[window_slot(bits)].get_or_insert_with(|| {
                let mut z = Vec::with_capacity(payload.len() / 2 + 16);
                deflate::compress(payload, bits, &mut z);
                text_frame(&z, true)
            })),
        }
    }
}

/// The frames of the run of payloads being sent (`Outbox::send_run`): the
/// run's text frames back to back in one shared buffer, plain and at most
/// one compressed variant per window, each built when a first member needs it. A
/// member's queue then holds one entry for the run, and its write is one
/// slice, whatever the number of messages.
#[derive(Default)]
struct RunFrames {
    /// The run's first payload (held, so its address is not reused) and
    /// its length: a run is sent to all its members before the next.
    first: Option<Rc<[u8]>>,
    len: usize,
    plain: Option<Rc<[u8]>>,
    compressed: PerWindow,
}

impl RunFrames {
    pub(super) fn get(
        &mut self,
        run: &[Rc<[u8]>],
        deflate: Option<u8>,
        threshold: usize,
    ) -> Rc<[u8]> {
        let same = run.len() == self.len
            && match (&self.first, run.first()) {
                (Some(a), Some(b)) => Rc::ptr_eq(a, b),
                _ => false,
            };
        if !same {
            *self = RunFrames {
                first: run.first().cloned(),
                len: run.len(),
                ..RunFrames::default()
            };
        }
        match deflate {
            None => Rc::clone(self.plain.get_or_insert_with(|| run_frames(run, None, 0))),
            Some(bits) => Rc::clone(
                self.compressed[window_slot(bits)]
                    .get_or_insert_with(|| run_frames(run, Some(bits), threshold)),
            ),
        }
    }
}

/// The text frames of `run` back to back; with `deflate`, each payload of
/// at least `threshold` bytes compressed (RFC 7692 §7.2.1: each message
/// its own compressed frame, as `Frames::get` makes them one by one).
fn run_frames(run: &[Rc<[u8]>], deflate: Option<u8>, threshold: usize) -> Rc<[u8]> {
    let mut out = Vec::with_capacity(run.iter().map(|p| p.len() + MAX_HEADER_LEN).sum());
    let mut z = Vec::new();
    let mut hdr = [0u8; MAX_HEADER_LEN];
    for p in run {
        let (body, compressed): (&[u8], bool) = match deflate {
            Some(bits) if p.len() >= threshold => {
                z.clear();
                deflate::compress(p, bits, &mut z);
                (&z, true)
            }
            _ => (p, false),
        };
        let n = encode_header(&mut hdr, true, OpCode::Text, body.len() as u64, None);
        if compressed {
            hdr[0] |= 0x40;
        }
        out.extend_from_slice(&hdr[..n]);
        out.extend_from_slice(body);
    }
    Rc::from(out)
}

/// One complete text frame of `payload`, in one exact allocation.
fn text_frame(payload: &[u8], compressed: bool) -> Rc<[u8]> {
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut hdr, true, OpCode::Text, payload.len() as u64, None);
    if compressed {
        hdr[0] |= 0x40;
    }
    // An exact-size iterator: one allocation, no intermediate buffer.
    hdr[..n].iter().chain(payload).copied().collect()
}

impl ServerOutbox<'_> {
    /// Queues the shared frame (or run of frames) that `frame` makes (from
    /// the frame caches, the deflate threshold and the connection's
    /// permessage-deflate window) for one connection: `n` messages, counted
    /// as deliveries.
    pub(super) fn queue(
        &mut self,
        to: ConnId,
        n: u64,
        frame: impl FnOnce(&mut Frames, &mut RunFrames, usize, Option<u8>) -> Rc<[u8]>,
    ) {
        let Some(c) = self.conns.get_mut(to) else {
            return;
        };
        let Phase::Ws(ws) = &c.phase else { return };
        if ws.close_sent {
            return;
        }
        // Checked before queueing, so one large answer (a `joined` with long
        // history) never trips the limit on its own: the bound is the limit
        // plus one frame (or one run of at most `durable::MAX_RUN` frames).
        if c.out.pending() > self.max_pending {
            self.closes.push((to, 1008, SLOW_CONSUMER.to_string()));
            return;
        }
        let f = frame(
            &mut self.frames,
            &mut self.runs,
            self.deflate_threshold,
            ws.deflate,
        );
        c.out.push_shared(f);
        self.delivered += n;
        if c.out.batch_just_filled() {
            // A burst (say presence for a thousand joins in one turn) would
            // otherwise pile up queue entries for every member until the end
            // of the turn: write a full batch now.
            if c.write_queue().is_err() {
                // The peer is gone: queue nothing more, drop it after this call.
                if let Phase::Ws(ws) = &mut c.phase {
                    ws.close_sent = true;
                }
                self.dead.push(to);
                return;
            }
        }
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(to);
        }
    }
}

impl Outbox for ServerOutbox<'_> {
    fn send(&mut self, to: ConnId, payload: &Rc<[u8]>) {
        self.queue(to, 1, |frames, _, threshold, deflate| {
            frames.get(payload, deflate.filter(|_| payload.len() >= threshold))
        });
    }

    fn send_run(&mut self, to: ConnId, payloads: &[Rc<[u8]>]) {
        match payloads {
            [] => {}
            [p] => self.send(to, p),
            run => self.queue(to, run.len() as u64, |_, runs, threshold, deflate| {
                runs.get(run, deflate, threshold)
            }),
        }
    }

    fn send_run_to_members(&mut self, members: &[ConnId], payloads: &[Rc<[u8]>]) {
        // The loop here rather than in the chat: one call through the
        // `dyn Outbox` per stretch of members, not one per member.
        for &m in members {
            self.send_run(m, payloads);
        }
    }

    fn close(&mut self, to: ConnId, code: u16, reason: &str) {
        self.closes.push((to, code, reason.to_string()));
    }

    fn archive(
        &mut self,
        room: &str,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<crate::chat::room::Msg>, crate::chat::ArchiveError> {
        match self.storage.as_mut() {
            Some(st) => st.archive(room, lo, hi),
            None => Ok(Vec::new()),
        }
    }

    fn search(
        &mut self,
        room: &str,
        query: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<crate::chat::room::Msg>, crate::chat::ArchiveError> {
        match self.storage.as_mut() {
            Some(st) => st.search(room, query, before, limit),
            None => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    /// The outbox frames the chat's payloads: shortest length form (RFC
    /// 6455 §5.2), RSV1 only on compressed ones (RFC 7692 §6).
    #[test]
    fn text_frames_of_every_length_form() {
        for (len, hdr) in [
            (0usize, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
        ] {
            let f = super::text_frame(&vec![b'x'; len], false);
            assert_eq!(f.len(), hdr + len);
            assert_eq!(f[0], 0x81);
        }
        assert_eq!(&super::text_frame(b"z", true)[..], b"\xc1\x01z");
    }

    /// A run is its messages' frames back to back, built once per variant;
    /// with deflate only the payloads at or over the threshold are
    /// compressed, each into a frame of its own (RFC 7692 §6: RSV1 on it).
    #[test]
    fn a_run_is_its_frames_back_to_back() {
        use std::rc::Rc;
        let a: Rc<[u8]> = Rc::from(&b"{\"t\":1}"[..]);
        let b: Rc<[u8]> = Rc::from(vec![b'x'; 200]);
        let run = [a.clone(), b.clone()];
        let mut runs = super::RunFrames::default();
        let plain = runs.get(&run, None, 0);
        let (fa, fb) = (super::text_frame(&a, false), super::text_frame(&b, false));
        assert_eq!(&plain[..], &[&fa[..], &fb[..]].concat()[..]);
        assert!(Rc::ptr_eq(&plain, &runs.get(&run, None, 0)));
        let z = runs.get(&run, Some(15), 100);
        assert_eq!(&z[..fa.len()], &fa[..]);
        assert_eq!(z[fa.len()], 0xc1);
        assert!(z.len() < plain.len());
        assert!(Rc::ptr_eq(&z, &runs.get(&run, Some(15), 100)));
    }

    /// Recipients that negotiated different server windows, interleaved in
    /// the member list: one compression per window, not per recipient.
    #[test]
    fn interleaved_windows_compress_once_each() {
        use std::rc::Rc;
        let p: Rc<[u8]> = Rc::from(&b"{\"type\":\"message\",\"text\":\"hello hello hello\"}"[..]);
        let mut frames = super::Frames::default();
        let (a15, a9) = (frames.get(&p, Some(15)), frames.get(&p, Some(9)));
        assert!(Rc::ptr_eq(&a15, &frames.get(&p, Some(15))));
        assert!(Rc::ptr_eq(&a9, &frames.get(&p, Some(9))));
        let run = [Rc::clone(&p), Rc::clone(&p)];
        let mut runs = super::RunFrames::default();
        let (r15, r9) = (runs.get(&run, Some(15), 0), runs.get(&run, Some(9), 0));
        assert!(Rc::ptr_eq(&r15, &runs.get(&run, Some(15), 0)));
        assert!(Rc::ptr_eq(&r9, &runs.get(&run, Some(9), 0)));
    }

    /// One plain and one compressed frame per payload, whoever asks.
    #[test]
    fn frames_are_built_once_per_payload() {
        let mut frames = super::Frames::default();
        let p: std::rc::Rc<[u8]> =
            std::rc::Rc::from(&b"{\"type\":\"message\",\"text\":\"hello hello hello\"}"[..]);
        let a = frames.get(&p, Some(15));
        let b = frames.get(&p, None);
        let c = frames.get(&p, Some(15));
        let d = frames.get(&p, None);
        assert!(std::rc::Rc::ptr_eq(&a, &c) && std::rc::Rc::ptr_eq(&b, &d));
        assert_eq!(a[0], 0xc1);
        assert_eq!(&b[2..], &p[..]);
        let q: std::rc::Rc<[u8]> = std::rc::Rc::from(&b"other"[..]);
        assert_eq!(&frames.get(&q, None)[2..], b"other");
    }
}
