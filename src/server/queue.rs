//! A connection's bounded write queue.
//!
//! Frames wait here until the socket takes them; everything queued in one
//! loop turn leaves in one vectored write. A broadcast frame is one shared
//! `Rc<[u8]>`, so a queue entry costs a pointer, not a copy. Control frames
//! (ping, pong) go ahead of queued data, but never into the middle of a
//! frame already partly written, nor between a frame's header and its
//! [`Chunk::Tail`] (RFC 6455 §5.4: control frames may be injected between
//! fragments, not inside a frame), nor ahead of a [`Chunk::Fence`]: the 101
//! answer must come first, and a close frame must come after every data
//! frame queued before it (§5.5.1: nothing follows a close). Neither control
//! frames nor fences count against the output limit.

use crate::ws::frame::{MAX_HEADER_LEN, OpCode, encode_frame_rsv1};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

#[derive(Debug)]
pub enum Chunk {
    /// A frame shared with other connections' queues.
    Shared(Rc<[u8]>),
    /// Bytes for this connection only.
    Owned(Vec<u8>),
    /// Small frames for this connection, appended to one buffer per turn.
    Coalesced(Vec<u8>),
    /// A body compiled into the binary (the web client).
    Static(&'static [u8]),
    /// The payload of the frame whose header is the chunk before it:
    /// nothing may be put between them.
    Tail(Vec<u8>),
    /// A control frame: ahead of data, outside the limit.
    Control(Vec<u8>),
    /// Bytes that keep their place in the stream: control frames are never
    /// put ahead of them. The 101 answer and close frames; outside the limit.
    Fence(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(b) => b,
            Chunk::Owned(v)
            | Chunk::Coalesced(v)
            | Chunk::Tail(v)
            | Chunk::Control(v)
            | Chunk::Fence(v) => v,
            Chunk::Static(s) => s,
        }
    }

    /// Whether the chunk counts against the output limit.
    fn is_data(&self) -> bool {
        !matches!(self, Chunk::Control(_) | Chunk::Fence(_))
    }
}

/// Frames up to this size are copied into a shared tail buffer rather than
/// queued one allocation each; the buffer stops growing past it.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Unsent pongs kept before the older ones are dropped (see `push_pong`).
const MAX_QUEUED_PONGS: u32 = 16;

fn is_pong(c: &Chunk) -> bool {
    #[cfg(test)]
    tests::count_visits(1);
    // RFC 6455 §5.2: FIN set, opcode 0xA.
    matches!(c, Chunk::Control(v) if v.first() == Some(&0x8a))
}

/// Most slices handed to one `writev` (well under any IOV_MAX).
const MAX_IOV: usize = 64;

/// [`encode_frame_rsv1`] for a frame of at most `COALESCE_LIMIT` bytes
/// (so a 2- or 4-byte header, RFC 6455 §5.2), with one capacity check and
/// fixed-size header copies: the general encoder's two variable-length
/// copies and its reserve were 130 instructions per echoed 64-byte message.
fn encode_small_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], compressed: bool) {
    debug_assert!(payload.len() + MAX_HEADER_LEN <= COALESCE_LIMIT);
    // FIN, RSV1 (RFC 7692 §6: the message is compressed), the opcode.
    let b0 = 0x80 | if compressed { 0x40 } else { 0 } | opcode.as_u8();
    let len = payload.len();
    out.reserve(4 + len);
    // The header a byte at a time: `push` is inlined at opt-level "s",
    // where `extend_from_slice` of two bytes stays a call and a `memcpy`.
    out.push(b0);
    if len < 126 {
        out.push(len as u8);
    } else {
        let l = (len as u16).to_be_bytes();
        out.push(126);
        out.push(l[0]);
        out.push(l[1]);
    }
    out.extend_from_slice(payload);
}

/// Drained queues kept for the next connection that has something to send,
/// so that a broadcast's recipients, each busy again every turn, allocate
/// nothing. At most this many, each with at most `SPARE_SLOTS` slots: a
/// bounded, server-wide cost (about 600 KiB when full, handed back at the
/// periodic trim). As many as a large room's members: with 256, a turn's
/// broadcast to 1000 receivers allocated and freed 744 queues (callgrind).
const SPARE_QUEUES: usize = 1024;
const SPARE_SLOTS: usize = 16;

/// Written coalescing buffers kept for the next turn's small frames, so
/// that an echo (or any run of small frames) allocates nothing per turn:
/// with 100 busy echo connections, a malloc, a realloc (16 echoes of 64 B
/// outgrew the old 1 KiB first buffer) and a free per connection and turn
/// were 60 of the 767 instructions per echoed message (callgrind). At most
/// `SPARE_BUFS` of `COALESCE_START` bytes: 1 MiB server-wide, handed back
/// at the periodic trim with the queues.
const SPARE_BUFS: usize = 256;
const COALESCE_START: usize = 4096;

thread_local! {
    // Boxed: a queue is reused in its own allocation, taken out whole.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<Queue>>> = const { RefCell::new(Vec::new()) };
    static SPARE_BUF: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A coalescing buffer for at least `need` bytes, a kept one if it fits.
fn take_buf(need: usize) -> Vec<u8> {
    if need <= COALESCE_START
        && let Some(v) = SPARE_BUF.with_borrow_mut(Vec::pop)
    {
        return v;
    }
    Vec::with_capacity(need.max(COALESCE_START))
}

/// Keeps a written coalescing buffer of the usual size for reuse.
fn give_back_buf(mut v: Vec<u8>) {
    if v.capacity() != COALESCE_START {
        return;
    }
    v.clear();
    SPARE_BUF.with_borrow_mut(|spare| {
        if spare.len() < SPARE_BUFS {
            spare.push(v);
        }
    });
}

/// A connection's output. While nothing is queued it is one null pointer:
/// thousands of idle connections are normal, and each pays for its slab
/// entry whether or not it has anything to send.
#[derive(Debug, Default)]
pub struct WriteQueue {
    q: Option<Box<Queue>>,
}

impl WriteQueue {
    /// Unsent data bytes, the figure the output limit applies to.
    pub fn pending(&self) -> usize {
        self.q.as_ref().map_or(0, |q| q.data_pending)
    }

    /// Whether the queue has just filled another `writev` batch: worth
    /// writing at once. True once per batch, not for every entry past the
    /// first one, so a peer whose socket is full costs one failed write per
    /// batch, not one per message.
    pub fn batch_just_filled(&self) -> bool {
        self.q
            .as_ref()
            .is_some_and(|q| !q.chunks.is_empty() && q.chunks.len().is_multiple_of(MAX_IOV))
    }

    pub fn push(&mut self, chunk: Chunk) {
        self.queue().push(chunk);
    }

    /// Queues a frame shared with other queues (a broadcast): the one push
    /// made per delivery, so it skips `push`'s look at the chunk's kind.
    pub fn push_shared(&mut self, frame: std::rc::Rc<[u8]>) {
        let q = self.queue();
        q.data_pending += frame.len();
        q.chunks.push_back(Chunk::Shared(frame));
    }

    /// Queues a pong; at most `MAX_QUEUED_PONGS` wait (RFC 6455 §5.5.3).
    pub fn push_pong(&mut self, frame: Vec<u8>) {
        self.queue().push_pong(frame);
    }

    /// Queues a data frame, small ones encoded into a shared tail buffer.
    pub fn push_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        self.queue().push_frame(opcode, payload, false);
    }

    /// [`WriteQueue::push_frame`] for a compressed payload (RSV1 set).
    pub fn push_compressed_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        self.queue().push_frame(opcode, payload, true);
    }

    /// Drops every data frame not yet started (before a close that must get
    /// out), keeping the stream well-framed.
    pub fn discard_unsent_data(&mut self) {
        if let Some(q) = self.q.as_mut() {
            q.discard_unsent_data();
        }
    }

    /// Writes as much as the socket takes. `Ok(true)` when the queue is
    /// empty, its storage given back.
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<bool> {
        let Some(q) = self.q.as_mut() else {
            return Ok(true);
        };
        let drained = q.write_to(w)?;
        if drained && let Some(q) = self.q.take() {
            recycle(q);
        }
        Ok(drained)
    }

    fn queue(&mut self) -> &mut Queue {
        self.q
            .get_or_insert_with(|| SPARE.with_borrow_mut(Vec::pop).unwrap_or_default())
    }
}

/// Frees the kept queues (the server does so when it trims the heap): after
/// a burst, an idle server holds none.
pub fn release_spares() {
    SPARE.with_borrow_mut(|spare| *spare = Vec::new());
    SPARE_BUF.with_borrow_mut(|spare| *spare = Vec::new());
}

/// Keeps a drained (so empty) queue for reuse, unless enough are kept or it
/// grew large; its counters start again from zero.
fn recycle(mut q: Box<Queue>) {
    if q.chunks.capacity() > SPARE_SLOTS {
        return;
    }
    // Drained: `chunks` is empty, and only the counters start again.
    q.head_written = 0;
    q.data_pending = 0;
    q.fence_end = 0;
    q.pongs_waiting = 0;
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_QUEUES {
            spare.push(q);
        }
    });
}

#[derive(Debug, Default)]
struct Queue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head_written: usize,
    /// Data bytes queued and not yet written (control frames excluded).
    data_pending: usize,
    /// Chunks at the front that a control frame may not go ahead of: up to
    /// and including the last fence.
    fence_end: u32,
    /// Pongs queued and not yet started.
    pongs_waiting: u32,
}

impl Queue {
    pub fn push(&mut self, chunk: Chunk) {
        match chunk {
            Chunk::Control(_) => {
                // After the last fence, a partly written frame (with its tail)
                // and earlier control frames.
                let i = self.control_run_end(self.control_run_start());
                self.chunks.insert(i.min(self.chunks.len()), chunk);
            }
            Chunk::Fence(_) => {
                self.chunks.push_back(chunk);
                self.fence_end = self.chunks.len() as u32;
            }
            _ => {
                self.data_pending += chunk.bytes().len();
                self.chunks.push_back(chunk);
            }
        }
    }

    /// Queues a pong. Pongs are control frames, outside the output limit,
    /// so a peer that floods pings and never reads would otherwise grow the
    /// queue (and the cost of placing each control frame) without bound.
    /// RFC 6455 §5.5.3 lets an endpoint that has not yet sent the pongs for
    /// earlier pings answer only the most recent one: once
    /// `MAX_QUEUED_PONGS` wait, the oldest one not started goes.
    ///
    /// The cost does not depend on what else is queued: waiting pongs are
    /// in the run of control frames after the last fence (see `push`),
    /// which holds at most `MAX_QUEUED_PONGS` pongs, the server's own
    /// pings (one per `--ping-interval` of silence) and a started frame's
    /// tail; only that run is looked at, never the data behind it.
    pub fn push_pong(&mut self, frame: Vec<u8>) {
        if self.pongs_waiting >= MAX_QUEUED_PONGS {
            let start = self.control_run_start();
            let end = self.control_run_end(start);
            // None only for pongs left ahead of a later fence (a close,
            // after which the server answers no ping): then one more waits.
            if let Some(i) = (start..end).find(|&i| self.chunks.get(i).is_some_and(is_pong)) {
                self.chunks.remove(i);
                self.pongs_waiting -= 1;
            }
        }
        self.pongs_waiting += 1;
        self.push(Chunk::Control(frame));
    }

    /// Where control frames may go: after the last fence and after a chunk
    /// already partly written (which is never dropped or split).
    fn control_run_start(&self) -> usize {
        (self.fence_end as usize).max(usize::from(self.head_written > 0))
    }

    /// The end of the run of control frames (and a started frame's tail)
    /// that begins at `from`: the place for the next control frame.
    fn control_run_end(&self, from: usize) -> usize {
        let mut i = from;
        while matches!(self.chunks.get(i), Some(Chunk::Control(_) | Chunk::Tail(_))) {
            i += 1;
        }
        #[cfg(test)]
        tests::count_visits(i - from + 1);
        i
    }

    /// Queues a data frame, encoding it straight into the tail buffer when it
    /// is small: a burst of echoes costs one allocation and one iovec.
    pub fn push_frame(&mut self, opcode: OpCode, payload: &[u8], compressed: bool) {
        let need = MAX_HEADER_LEN + payload.len();
        if need > COALESCE_LIMIT {
            let mut v = Vec::with_capacity(need);
            encode_frame_rsv1(&mut v, opcode, payload, compressed);
            self.push(Chunk::Owned(v));
            return;
        }
        if !matches!(self.chunks.back(), Some(Chunk::Coalesced(v)) if v.len() + need <= COALESCE_LIMIT)
        {
            self.chunks.push_back(Chunk::Coalesced(take_buf(need)));
        }
        if let Some(Chunk::Coalesced(v)) = self.chunks.back_mut() {
            let before = v.len();
            encode_small_frame(v, opcode, payload, compressed);
            self.data_pending += v.len() - before;
        }
    }

    /// Drops every data frame not yet started, keeping a partly written one
    /// so the stream stays well-framed. Used before a close that must get out.
    pub fn discard_unsent_data(&mut self) {
        let keep_head = self.head_written > 0;
        let mut i = 0;
        // A tail stays when its header stays (or was already written).
        let mut data_kept = true;
        self.chunks.retain(|c| {
            let keep = match c {
                Chunk::Control(_) | Chunk::Fence(_) => true,
                Chunk::Tail(_) => data_kept,
                _ => {
                    data_kept = i == 0 && keep_head;
                    data_kept
                }
            };
            i += 1;
            keep
        });
        self.fence_end = self
            .chunks
            .iter()
            .rposition(|c| matches!(c, Chunk::Fence(_)))
            .map_or(0, |p| p as u32 + 1);
        let front_written = match self.chunks.front() {
            Some(c) if c.is_data() => self.head_written,
            _ => 0,
        };
        self.data_pending = self
            .chunks
            .iter()
            .filter(|c| c.is_data())
            .map(|c| c.bytes().len())
            .sum::<usize>()
            - front_written;
    }

    /// Writes as much as the socket takes. `Ok(true)` when the queue is empty.
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<bool> {
        while !self.chunks.is_empty() {
            // One chunk (a broadcast to an idle reader, usually) goes by
            // send(2), with no slice array to fill: the kernel's writev path
            // costs more per call, and filling (or even zeroing) 64 slices
            // for one was the larger part of a delivery's own instructions
            // (callgrind, window 1).
            let res = match self.chunks.len() {
                1 => match self.chunks.front() {
                    Some(c) => w.write(&c.bytes()[self.head_written..]),
                    None => break,
                },
                2..=8 => self.write_batch::<8, W>(w),
                _ => self.write_batch::<MAX_IOV, W>(w),
            };
            let written = match res {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            super::metrics::wrote(written);
            self.consume(written);
        }
        Ok(true)
    }

    /// One `writev` of the first `N` chunks at most.
    fn write_batch<const N: usize, W: Write>(&self, w: &mut W) -> io::Result<usize> {
        let mut iov: [IoSlice<'_>; N] = [IoSlice::new(&[]); N];
        let mut n = 0;
        for (i, c) in self.chunks.iter().take(N).enumerate() {
            let b = c.bytes();
            iov[i] = IoSlice::new(if i == 0 { &b[self.head_written..] } else { b });
            n += 1;
        }
        w.write_vectored(&iov[..n])
    }

    fn consume(&mut self, mut written: usize) {
        // The common case, everything written: one chunk, whole.
        if self.chunks.len() == 1
            && let Some(front) = self.chunks.front()
            && front.bytes().len() - self.head_written == written
        {
            if front.is_data() {
                self.data_pending -= written;
            } else if self.head_written == 0 && is_pong(front) {
                self.pongs_waiting -= 1;
            }
            // pop_front, not clear: clear's truncate costs three times as
            // much for the one chunk (callgrind). A written coalescing
            // buffer goes back to the pool for the next connection.
            if let Some(Chunk::Coalesced(v)) = self.chunks.pop_front() {
                give_back_buf(v);
            }
            self.head_written = 0;
            self.fence_end = 0;
            return;
        }
        while written > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let is_data = front.is_data();
            let left = front.bytes().len() - self.head_written;
            let step = left.min(written);
            written -= step;
            if is_data {
                self.data_pending -= step;
            }
            if step == left {
                if self.head_written == 0 && is_pong(front) {
                    self.pongs_waiting -= 1;
                }
                if let Some(Chunk::Coalesced(v)) = self.chunks.pop_front() {
                    give_back_buf(v);
                }
                self.head_written = 0;
                self.fence_end = self.fence_end.saturating_sub(1);
            } else {
                if self.head_written == 0 && is_pong(front) {
                    self.pongs_waiting -= 1; // started: it stays
                }
                self.head_written += step;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Queue slots looked at while placing control frames (each test
        /// runs on a thread of its own).
        static VISITS: Cell<usize> = const { Cell::new(0) };
    }

    pub(super) fn count_visits(n: usize) {
        VISITS.with(|v| v.set(v.get() + n));
    }

    impl WriteQueue {
        fn consume(&mut self, n: usize) {
            self.queue().consume(n);
        }
    }

    fn chunks(q: &WriteQueue) -> usize {
        q.q.as_ref().map_or(0, |q| q.chunks.len())
    }

    fn pongs(q: &WriteQueue) -> u32 {
        q.q.as_ref().map_or(0, |q| q.pongs_waiting)
    }

    /// A writer that takes at most `cap` bytes per call.
    struct Trickle {
        out: Vec<u8>,
        cap: usize,
    }
    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.cap == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.cap);
            self.out.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn control_goes_ahead_of_data_but_not_inside_a_frame() {
        let mut q = WriteQueue::default();
        q.push(Chunk::Owned(b"AAAA".to_vec()));
        q.push(Chunk::Shared(Rc::from(&b"BBBB"[..])));
        assert_eq!(q.pending(), 8);
        let mut w = Trickle {
            out: Vec::new(),
            cap: 2,
        };
        // Write half of the first frame only.
        q.consume(2);
        w.out.extend_from_slice(b"AA");
        q.push(Chunk::Control(b"p1".to_vec()));
        q.push(Chunk::Control(b"p2".to_vec()));
        assert_eq!(q.pending(), 6);
        while !q.write_to(&mut w).unwrap() {}
        assert_eq!(w.out, b"AAAAp1p2BBBB");
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn discard_keeps_the_partial_frame_and_controls() {
        let mut q = WriteQueue::default();
        q.push(Chunk::Owned(b"AAAA".to_vec()));
        q.push(Chunk::Owned(b"BBBB".to_vec()));
        q.consume(1);
        q.push(Chunk::Control(b"c".to_vec()));
        q.discard_unsent_data();
        assert_eq!(q.pending(), 3);
        let mut w = Trickle {
            out: Vec::new(),
            cap: 100,
        };
        assert!(q.write_to(&mut w).unwrap());
        assert_eq!(w.out, b"AAAc");
    }

    fn drain(q: &mut WriteQueue) -> Vec<u8> {
        let mut w = Trickle {
            out: Vec::new(),
            cap: 100,
        };
        assert!(q.write_to(&mut w).unwrap());
        w.out
    }

    #[test]
    fn a_drained_queue_is_reused_clean() {
        let spare = || SPARE.with_borrow(Vec::len);
        let mut a = WriteQueue::default();
        a.push(Chunk::Fence(b"F".to_vec()));
        a.push_frame(OpCode::Text, b"x");
        a.push_pong(vec![0x8a, 0]);
        assert_eq!(drain(&mut a), b"F\x8a\x00\x81\x01x");
        let kept = spare();
        assert!(kept >= 1);
        let mut b = WriteQueue::default();
        b.push_frame(OpCode::Text, b"y");
        assert_eq!(spare(), kept - 1, "taken from the spares");
        assert_eq!(b.pending(), 3);
        // No fence left over from the queue's last use: the pong goes first.
        b.push_pong(vec![0x8a, 0]);
        assert_eq!(drain(&mut b), b"\x8a\x00\x81\x01y");
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn released_spares_are_freed_and_large_queues_not_kept() {
        let spare = || SPARE.with_borrow(Vec::len);
        let mut a = WriteQueue::default();
        a.push_frame(OpCode::Text, b"x");
        drain(&mut a);
        assert!(spare() >= 1);
        release_spares();
        assert_eq!(spare(), 0);
        // A queue that grew past SPARE_SLOTS goes back to the allocator.
        for i in 0..=SPARE_SLOTS {
            a.push(Chunk::Owned(vec![i as u8]));
        }
        drain(&mut a);
        assert_eq!(spare(), 0);
    }

    #[test]
    fn control_never_goes_ahead_of_a_fence() {
        // The 101 answer first, even for a pong queued in the same turn.
        let mut q = WriteQueue::default();
        q.push(Chunk::Fence(b"101".to_vec()));
        q.push(Chunk::Owned(b"echo".to_vec()));
        q.push(Chunk::Control(b"pong".to_vec()));
        assert_eq!(q.pending(), 4);
        assert_eq!(drain(&mut q), b"101pongecho");

        // A close after the data queued before it (§5.5.1).
        let mut q = WriteQueue::default();
        q.push(Chunk::Owned(b"echo".to_vec()));
        q.push(Chunk::Fence(b"close".to_vec()));
        assert_eq!(q.pending(), 4);
        assert_eq!(drain(&mut q), b"echoclose");

        // Once the fence is written, controls go ahead of data again.
        let mut q = WriteQueue::default();
        q.push(Chunk::Fence(b"101".to_vec()));
        q.push(Chunk::Owned(b"AAAA".to_vec()));
        q.consume(3);
        q.push(Chunk::Control(b"p".to_vec()));
        assert_eq!(drain(&mut q), b"pAAAA");
    }

    #[test]
    fn control_never_goes_between_a_header_and_its_tail() {
        // The header partly written.
        let mut q = WriteQueue::default();
        q.push(Chunk::Owned(b"HDR".to_vec()));
        q.push(Chunk::Tail(b"payload".to_vec()));
        q.push(Chunk::Owned(b"next".to_vec()));
        q.consume(1);
        q.push(Chunk::Control(b"p".to_vec()));
        assert_eq!(q.pending(), 13);
        assert_eq!(drain(&mut q), b"DRpayloadpnext");

        // The header wholly written, the tail not started.
        let mut q = WriteQueue::default();
        q.push(Chunk::Owned(b"HDR".to_vec()));
        q.push(Chunk::Tail(b"payload".to_vec()));
        q.consume(3);
        q.push(Chunk::Control(b"p".to_vec()));
        assert_eq!(drain(&mut q), b"payloadp");

        // Nothing written yet: the control goes ahead of the whole frame.
        let mut q = WriteQueue::default();
        q.push(Chunk::Owned(b"HDR".to_vec()));
        q.push(Chunk::Tail(b"payload".to_vec()));
        q.push(Chunk::Control(b"p".to_vec()));
        assert_eq!(drain(&mut q), b"pHDRpayload");
    }

    #[test]
    fn discard_keeps_a_started_frame_whole_and_the_fences() {
        let mut q = WriteQueue::default();
        q.push(Chunk::Fence(b"101".to_vec()));
        q.push(Chunk::Owned(b"HDR".to_vec()));
        q.push(Chunk::Tail(b"payload".to_vec()));
        q.push(Chunk::Owned(b"H2".to_vec()));
        q.push(Chunk::Tail(b"p2".to_vec()));
        q.discard_unsent_data();
        // Nothing of the data had started: only the fence stays.
        assert_eq!(q.pending(), 0);
        assert_eq!(drain(&mut q), b"101");

        let mut q = WriteQueue::default();
        q.push(Chunk::Owned(b"HDR".to_vec()));
        q.push(Chunk::Tail(b"payload".to_vec()));
        q.push(Chunk::Owned(b"H2".to_vec()));
        q.push(Chunk::Tail(b"p2".to_vec()));
        q.consume(3); // the header is out: its tail must follow
        q.discard_unsent_data();
        q.push(Chunk::Fence(b"close".to_vec()));
        assert_eq!(q.pending(), 7);
        assert_eq!(drain(&mut q), b"payloadclose");
    }

    #[test]
    fn small_frames_encode_as_the_general_encoder_does() {
        for len in [0usize, 1, 125, 126, 127, 1000, 16 * 1024 - MAX_HEADER_LEN] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for (op, z) in [(OpCode::Text, false), (OpCode::Binary, true)] {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                encode_small_frame(&mut a, op, &payload, z);
                encode_frame_rsv1(&mut b, op, &payload, z);
                assert_eq!(a, b, "len {len}");
            }
        }
    }

    #[test]
    fn a_written_coalescing_buffer_is_reused_and_the_spares_are_bounded() {
        release_spares();
        let mut q = WriteQueue::default();
        q.push_frame(OpCode::Text, &[b'x'; 64]);
        let first = match q.q.as_ref().and_then(|q| q.chunks.front()) {
            Some(Chunk::Coalesced(v)) => v.as_ptr(),
            other => panic!("{other:?}"),
        };
        assert_eq!(drain(&mut q).len(), 66);
        // Back in the pool (not only freed and handed out again by malloc).
        assert_eq!(SPARE_BUF.with_borrow(Vec::len), 1);
        q.push_frame(OpCode::Text, &[b'y'; 64]);
        match q.q.as_ref().and_then(|q| q.chunks.front()) {
            Some(Chunk::Coalesced(v)) => {
                assert_eq!(v.as_ptr(), first);
                assert_eq!(&v[..3], b"\x81\x40y");
            }
            other => panic!("{other:?}"),
        }
        for _ in 0..SPARE_BUFS + 10 {
            give_back_buf(Vec::with_capacity(COALESCE_START));
        }
        // Only buffers of the usual size are kept, and no more than SPARE_BUFS.
        give_back_buf(Vec::with_capacity(COALESCE_LIMIT));
        assert_eq!(SPARE_BUF.with_borrow(Vec::len), SPARE_BUFS);
        release_spares();
        assert_eq!(SPARE_BUF.with_borrow(Vec::len), 0);
    }

    #[test]
    fn small_frames_share_one_buffer() {
        let mut q = WriteQueue::default();
        for _ in 0..100 {
            q.push_frame(OpCode::Text, b"hi");
        }
        assert_eq!(chunks(&q), 1);
        assert_eq!(q.pending(), 400);
        q.push_frame(OpCode::Binary, &[7; 20_000]);
        q.push_frame(OpCode::Text, b"x");
        assert_eq!(chunks(&q), 3);
        let mut w = Trickle {
            out: Vec::new(),
            cap: 1000,
        };
        assert!(q.write_to(&mut w).unwrap());
        assert_eq!(&w.out[..4], b"\x81\x02hi");
        assert_eq!(w.out.len(), 400 + 4 + 20_000 + 3);
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn unsent_pongs_are_bounded_and_the_newest_is_kept() {
        let mut q = WriteQueue::default();
        q.push(Chunk::Owned(b"DATA".to_vec()));
        q.consume(1);
        q.push(Chunk::Fence(b"\x88close".to_vec()));
        for i in 0..1000u16 {
            let mut pong = vec![0x8a];
            pong.extend_from_slice(&i.to_be_bytes());
            q.push_pong(pong);
        }
        assert!(chunks(&q) <= 2 + MAX_QUEUED_PONGS as usize);
        let out = drain(&mut q);
        // The partial frame first, then the close, then the newest pongs.
        assert!(out.starts_with(b"ATA\x88close\x8a"));
        assert!(out.ends_with(&[0x8a, 0x03, 0xe7]));
        assert_eq!(pongs(&q), 0);
    }

    /// A ping flood into a queue full of data costs the same per ping as
    /// into an empty one: placing a pong looks at the control frames ahead
    /// of the data, never at the data (issue 15, item 2: a `retain` over
    /// 7,000 queued frames every 16 pings made such a flood cost 14 times
    /// the CPU).
    #[test]
    fn pong_bookkeeping_does_not_scan_the_queued_data() {
        const PINGS: usize = 100_000;
        let per_pong = |data_frames: usize| {
            let mut q = WriteQueue::default();
            q.push(Chunk::Fence(b"101".to_vec()));
            let frame: Rc<[u8]> = Rc::from(&b"\x81\x01x"[..]);
            for _ in 0..data_frames {
                q.push(Chunk::Shared(Rc::clone(&frame)));
            }
            q.consume(4); // the 101 and the first byte of a data frame
            VISITS.with(|v| v.set(0));
            for i in 0..PINGS {
                q.push_pong(vec![0x8a, 1, i as u8]);
            }
            assert_eq!(pongs(&q), MAX_QUEUED_PONGS);
            assert_eq!(chunks(&q), data_frames + MAX_QUEUED_PONGS as usize);
            VISITS.with(Cell::get) as f64 / PINGS as f64
        };
        let empty = per_pong(1);
        let full = per_pong(7_000);
        assert!(
            full <= 3.0 * f64::from(MAX_QUEUED_PONGS),
            "{full:.1} slots looked at per pong with 7,000 frames queued"
        );
        assert!(
            full <= empty + 1.0,
            "{full:.1} slots per pong with a full queue, {empty:.1} with an empty one"
        );
    }

    #[test]
    fn a_started_pong_is_never_dropped() {
        let mut q = WriteQueue::default();
        q.push_pong(b"\x8a\x01A".to_vec());
        q.consume(1);
        for _ in 0..40 {
            q.push_pong(b"\x8a\x01B".to_vec());
        }
        let out = drain(&mut q);
        assert!(out.starts_with(b"\x01A\x8a\x01B"));
    }

    #[test]
    fn a_full_batch_is_signalled_once_per_batch() {
        let mut q = WriteQueue::default();
        let frame: Rc<[u8]> = Rc::from(&b"x"[..]);
        let mut signals = 0;
        for _ in 0..(3 * MAX_IOV + 5) {
            q.push(Chunk::Shared(Rc::clone(&frame)));
            signals += usize::from(q.batch_just_filled());
        }
        assert_eq!(signals, 3);
    }

    #[test]
    fn would_block_keeps_everything() {
        let mut q = WriteQueue::default();
        q.push(Chunk::Static(b"xyz"));
        let mut w = Trickle {
            out: Vec::new(),
            cap: 0,
        };
        assert!(!q.write_to(&mut w).unwrap());
        assert_eq!(q.pending(), 3);
    }
}
