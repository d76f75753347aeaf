//! A connection's bounded write queue.
//!
//! Frames wait here until the socket takes them; everything queued in one
//! loop turn leaves in one vectored write. A broadcast frame is one shared
//! `Rc<[u8]>`, so a queue entry costs a pointer, not a copy. Control frames
//! (pong, close) go ahead of queued data, but never into the middle of a
//! frame already partly written (RFC 6455 §5.4: control frames may be
//! injected between fragments, not inside a frame), and they are not
//! counted against the output limit.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

#[derive(Debug)]
pub enum Chunk {
    /// A frame shared with other connections' queues.
    Shared(Rc<[u8]>),
    /// Bytes for this connection only.
    Owned(Vec<u8>),
    /// A body compiled into the binary (the web client).
    Static(&'static [u8]),
    /// A control frame: ahead of data, outside the limit.
    Control(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(b) => b,
            Chunk::Owned(v) | Chunk::Control(v) => v,
            Chunk::Static(s) => s,
        }
    }
}

/// Most slices handed to one `writev` (well under any IOV_MAX).
const MAX_IOV: usize = 64;

/// Pongs that may wait unsent before only the newest is kept (see
/// `push_pong`); more than a well-behaved peer ever has in flight.
const MAX_QUEUED_PONGS: usize = 16;

fn is_pong(c: &Chunk) -> bool {
    // RFC 6455 §5.2: FIN set, opcode 0xA.
    matches!(c, Chunk::Control(v) if v.first() == Some(&0x8a))
}

#[derive(Debug, Default)]
pub struct WriteQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head_written: usize,
    /// Data bytes queued and not yet written (control frames excluded).
    data_pending: usize,
}

impl WriteQueue {
    /// Unsent data bytes, the figure the output limit applies to.
    pub fn pending(&self) -> usize {
        self.data_pending
    }

    pub fn push(&mut self, chunk: Chunk) {
        if let Chunk::Control(_) = chunk {
            // After a partly written frame and after earlier control frames.
            let mut i = usize::from(self.head_written > 0);
            while matches!(self.chunks.get(i), Some(Chunk::Control(_))) {
                i += 1;
            }
            self.chunks.insert(i.min(self.chunks.len()), chunk);
        } else {
            self.data_pending += chunk.bytes().len();
            self.chunks.push_back(chunk);
        }
        // An idle connection keeps no queue storage (see `write_to`).
    }

    /// Queues a pong. Pongs are control frames, outside the output limit,
    /// so a peer that floods pings and never reads would otherwise grow
    /// the queue without bound. RFC 6455 §5.5.3 lets an endpoint that has
    /// not yet sent the pongs for earlier pings answer only the most
    /// recent one: once `MAX_QUEUED_PONGS` wait, the waiting ones go.
    pub fn push_pong(&mut self, frame: Vec<u8>) {
        // Control frames sit together at the front, behind a partly
        // written frame if any.
        let start = usize::from(self.head_written > 0);
        let end = start
            + self
                .chunks
                .iter()
                .skip(start)
                .take_while(|c| matches!(c, Chunk::Control(_)))
                .count();
        let waiting = self.chunks.range(start..end).filter(|c| is_pong(c)).count();
        if waiting >= MAX_QUEUED_PONGS {
            let others: Vec<Chunk> = self
                .chunks
                .drain(start..end)
                .filter(|c| !is_pong(c))
                .collect();
            for (i, c) in others.into_iter().enumerate() {
                self.chunks.insert(start + i, c);
            }
        }
        self.push(Chunk::Control(frame));
    }

    /// Drops every data frame not yet started, keeping a partly written one
    /// so the stream stays well-framed. Used before a close that must get out.
    pub fn discard_unsent_data(&mut self) {
        let keep_head = self.head_written > 0;
        let mut i = 0;
        self.chunks.retain(|c| {
            let keep = (i == 0 && keep_head) || matches!(c, Chunk::Control(_));
            i += 1;
            keep
        });
        self.data_pending = self
            .chunks
            .iter()
            .filter(|c| !matches!(c, Chunk::Control(_)))
            .map(|c| c.bytes().len())
            .sum::<usize>()
            .saturating_sub(if keep_head { self.head_written } else { 0 });
    }

    /// Writes as much as the socket takes. `Ok(true)` when the queue is empty.
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<bool> {
        while !self.chunks.is_empty() {
            let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, c) in self.chunks.iter().take(MAX_IOV).enumerate() {
                let b = c.bytes();
                iov[i] = IoSlice::new(if i == 0 { &b[self.head_written..] } else { b });
                n += 1;
            }
            let written = match w.write_vectored(&iov[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            self.consume(written);
        }
        // Give the ring's storage back: idle connections should cost nothing.
        self.chunks = VecDeque::new();
        Ok(true)
    }

    fn consume(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let is_data = !matches!(front, Chunk::Control(_));
            let left = front.bytes().len() - self.head_written;
            let step = left.min(written);
            written -= step;
            if is_data {
                self.data_pending -= step;
            }
            if step == left {
                self.chunks.pop_front();
                self.head_written = 0;
            } else {
                self.head_written += step;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn unsent_pongs_are_bounded_and_the_newest_is_kept() {
        let mut q = WriteQueue::default();
        q.push(Chunk::Owned(b"DATA".to_vec()));
        q.consume(1);
        q.push(Chunk::Control(b"\x88close".to_vec()));
        for i in 0..1000u16 {
            let mut pong = vec![0x8a];
            pong.extend_from_slice(&i.to_be_bytes());
            q.push_pong(pong);
        }
        let mut w = Trickle {
            out: Vec::new(),
            cap: usize::MAX,
        };
        assert!(q.chunks.len() <= 2 + MAX_QUEUED_PONGS);
        assert!(q.write_to(&mut w).unwrap());
        // The partial frame first, then the close, then the newest pongs.
        assert!(w.out.starts_with(b"ATA\x88close\x8a"));
        assert!(w.out.ends_with(&[0x8a, 0x03, 0xe7]));
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
