//! One client connection (connect, handshake, frames) and the per-thread
//! mio loop that drives many of them.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use wschat::ws::deflate;
use wschat::ws::frame::OpCode;

use crate::wire::{self, DecodeError, HandshakeError, XorShift};

/// Largest server message this client buffers (broadcast frames, echoes).
pub const MAX_MESSAGE: usize = 16 << 20;
/// Size of the per-thread read buffer: large reads, few syscalls.
const SCRATCH: usize = 256 * 1024;

/// `--deflate`: every connection offers permessage-deflate (set once at start).
pub static OFFER_DEFLATE: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Connecting,
    Handshaking,
    Open,
    Closed,
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    ConnectFailed,
    Handshake(HandshakeError),
    Protocol(DecodeError),
    /// The server sent a close frame; carries its status code (0 if none).
    ServerClose(u16),
    /// EOF or a socket error without a close frame.
    Io,
}

pub enum Event<'a> {
    Open,
    /// `compressed`: a compressed message this connection does not inflate
    /// (see `Conn::inflate`); its payload is the compressed bytes.
    Message {
        opcode: OpCode,
        payload: &'a [u8],
        compressed: bool,
    },
    Closed(CloseReason),
    /// Only for a connection with `raw` set: the unparsed bytes of an open
    /// connection, whole frames and a partial one at the end. The handler
    /// sets `used` to the bytes of the whole frames it took; the frame
    /// after them, if complete, goes the ordinary way (as `Message`, or a
    /// ping answered, a close), then the handler gets the rest.
    Raw {
        bytes: &'a [u8],
        used: &'a mut usize,
    },
}

pub struct Conn {
    pub stream: TcpStream,
    pub state: State,
    /// Global index of this connection across all threads.
    pub id: usize,
    /// Unparsed bytes are `rbuf[rlo..rhi]`; the whole Vec is initialised storage.
    rbuf: Vec<u8>,
    rlo: usize,
    rhi: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    frag: Vec<u8>,
    frag_op: Option<OpCode>,
    frag_rsv1: bool,
    /// permessage-deflate was negotiated: data frames go compressed.
    pub deflate: bool,
    /// Inflate compressed messages (a broadcast inflates on a sample only).
    pub inflate: bool,
    /// Hand the received bytes to the handler first (`Event::Raw`).
    pub raw: bool,
    zbuf: Vec<u8>,
    accept: String,
    rng: XorShift,
    in_dirty: bool,
    /// When the connect started, ns since the run's origin.
    pub started_ns: u64,
    // Per-mode state, kept here to avoid a second lookup per event.
    pub ready: bool,
    pub outstanding: u32,
    pub seq_sent: u64,
    pub seq_recv: u64,
    pub next_due_ns: u64,
    pub times: VecDeque<u64>,
}

impl Conn {
    pub fn new(stream: TcpStream, id: usize, host: &str, path: String, now_ns: u64) -> Conn {
        let mut rng = XorShift::new(id as u64 ^ now_ns.rotate_left(17));
        let key = wire::new_key(&mut rng);
        let accept = wire::accept_for(&key);
        // Queued now, written once the connect completes.
        let mut wbuf = Vec::new();
        wire::push_request(
            &mut wbuf,
            host,
            &path,
            &key,
            OFFER_DEFLATE.load(Ordering::Relaxed),
        );
        Conn {
            stream,
            state: State::Connecting,
            id,
            rbuf: Vec::new(),
            rlo: 0,
            rhi: 0,
            wbuf,
            wpos: 0,
            frag: Vec::new(),
            frag_op: None,
            frag_rsv1: false,
            deflate: false,
            inflate: true,
            raw: false,
            zbuf: Vec::new(),
            accept,
            rng,
            in_dirty: false,
            started_ns: now_ns,
            ready: false,
            outstanding: 0,
            seq_sent: 0,
            seq_recv: 0,
            next_due_ns: 0,
            times: VecDeque::new(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Bytes queued but not yet written.
    pub fn pending_write(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Queues one masked data or control frame; flushed at the end of the turn.
    /// Data frames are compressed when permessage-deflate was negotiated.
    pub fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        let key = self.rng.mask_key();
        if self.deflate && !opcode.is_control() {
            self.zbuf.clear();
            deflate::compress(payload, 15, &mut self.zbuf);
            let start = self.wbuf.len();
            wire::push_frame(&mut self.wbuf, opcode, &self.zbuf, key);
            // RFC 7692 §6: RSV1 marks the message compressed.
            self.wbuf[start] |= 0x40;
        } else {
            wire::push_frame(&mut self.wbuf, opcode, payload, key);
        }
    }

    /// Queues bytes already framed and masked by the caller (RFC 6455 §5.1:
    /// every frame a client sends is masked); flushed at the end of the turn.
    pub fn send_raw(&mut self, frames: &[u8]) {
        self.wbuf.extend_from_slice(frames);
    }

    /// Delivers one whole message, inflated if it is compressed and this
    /// connection inflates.
    fn deliver(
        &mut self,
        opcode: OpCode,
        p: &[u8],
        rsv1: bool,
        on: &mut dyn FnMut(&mut Conn, Event<'_>),
    ) -> bool {
        if rsv1 && !self.deflate {
            self.close(on, CloseReason::Protocol(DecodeError::ReservedBits));
            return false;
        }
        if rsv1 && self.inflate {
            let Ok(v) = deflate::inflate_message(p, MAX_MESSAGE) else {
                self.close(on, CloseReason::Protocol(DecodeError::BadControl));
                return false;
            };
            on(
                self,
                Event::Message {
                    opcode,
                    payload: &v,
                    compressed: false,
                },
            );
        } else {
            on(
                self,
                Event::Message {
                    opcode,
                    payload: p,
                    compressed: rsv1,
                },
            );
        }
        true
    }

    /// Queues a close frame (RFC 6455 §5.5.1) and stops reading data.
    pub fn send_close(&mut self, code: u16) {
        if self.state == State::Open {
            self.send(OpCode::Close, &code.to_be_bytes());
        }
    }

    /// Connect completed (first writable event): queue the handshake.
    fn on_connected(&mut self) -> bool {
        if !matches!(self.stream.take_error(), Ok(None)) || self.stream.peer_addr().is_err() {
            return false;
        }
        self.state = State::Handshaking;
        true
    }

    /// Writes what is queued (normally one syscall). Returns false on a
    /// fatal error.
    pub fn flush(&mut self) -> bool {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return false,
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        } else if self.wpos > 1 << 20 {
            // Keep the queue from creeping forward through memory.
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        true
    }

    /// Reads everything available, reporting events to `on`. Reads go to
    /// the thread's scratch buffer and are parsed in place; only a partial
    /// frame left at the end is kept in the connection's own buffer, and
    /// while one is kept, reads go straight into that buffer behind it.
    fn on_readable(&mut self, scratch: &mut [u8], on: &mut dyn FnMut(&mut Conn, Event<'_>)) {
        loop {
            if self.state == State::Closed {
                return;
            }
            let buffered = self.rhi > self.rlo;
            let res = if buffered {
                self.make_room();
                let hi = self.rhi;
                self.stream.read(&mut self.rbuf[hi..])
            } else {
                self.stream.read(scratch)
            };
            match res {
                Ok(0) => {
                    self.close(on, CloseReason::Io);
                    return;
                }
                Ok(n) => {
                    let room = if buffered {
                        let room = self.rbuf.len() - self.rhi;
                        self.rhi += n;
                        let buf = std::mem::take(&mut self.rbuf);
                        let used = self.process(&buf[self.rlo..self.rhi], on);
                        if self.state == State::Closed {
                            return;
                        }
                        self.rbuf = buf;
                        self.rlo += used;
                        if self.rlo == self.rhi {
                            self.rlo = 0;
                            self.rhi = 0;
                            if self.rbuf.len() > 4 << 20 {
                                self.rbuf = Vec::new();
                            }
                        }
                        room
                    } else {
                        let used = self.process(&scratch[..n], on);
                        if self.state == State::Closed {
                            return;
                        }
                        if used < n {
                            self.stash(&scratch[used..n]);
                        }
                        scratch.len()
                    };
                    if n < room {
                        // A short read drained the socket; data arriving
                        // later raises a new (edge-triggered) event.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(on, CloseReason::Io);
                    return;
                }
            }
        }
    }

    /// Keeps the unparsed tail of a scratch read (the connection's buffer is empty).
    fn stash(&mut self, data: &[u8]) {
        if self.rbuf.len() < data.len() {
            self.rbuf.resize(data.len().max(4096), 0);
        }
        self.rbuf[..data.len()].copy_from_slice(data);
        self.rlo = 0;
        self.rhi = data.len();
    }

    /// Makes at least `MIN_ROOM` bytes of space after the buffered bytes:
    /// first by moving them to the front, then by growing (doubling).
    fn make_room(&mut self) {
        const MIN_ROOM: usize = 16 * 1024;
        if self.rbuf.len() - self.rhi >= MIN_ROOM {
            return;
        }
        if self.rlo > 0 {
            self.rbuf.copy_within(self.rlo..self.rhi, 0);
            self.rhi -= self.rlo;
            self.rlo = 0;
        }
        if self.rbuf.len() - self.rhi < MIN_ROOM {
            let len = (self.rbuf.len() * 2).max(self.rhi + MIN_ROOM);
            self.rbuf.resize(len, 0);
        }
    }

    fn close(&mut self, on: &mut dyn FnMut(&mut Conn, Event<'_>), why: CloseReason) {
        if self.state != State::Closed {
            self.state = State::Closed;
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
            self.rbuf = Vec::new();
            self.rlo = 0;
            self.rhi = 0;
            self.frag = Vec::new();
            on(self, Event::Closed(why));
        }
    }

    /// Consumes whole units (handshake head, frames) from `buf`; returns
    /// how many bytes were used.
    fn process(&mut self, buf: &[u8], on: &mut dyn FnMut(&mut Conn, Event<'_>)) -> usize {
        let mut used = 0;
        if self.state == State::Handshaking {
            match wire::parse_response(buf, &self.accept) {
                Ok(None) => return 0,
                Ok(Some(n)) => {
                    used = n;
                    self.deflate =
                        OFFER_DEFLATE.load(Ordering::Relaxed) && wire::accepts_deflate(&buf[..n]);
                    self.state = State::Open;
                    on(self, Event::Open);
                }
                Err(e) => {
                    self.close(on, CloseReason::Handshake(e));
                    return buf.len();
                }
            }
        }
        while self.state == State::Open {
            if self.raw {
                let mut n = 0;
                on(
                    self,
                    Event::Raw {
                        bytes: &buf[used..],
                        used: &mut n,
                    },
                );
                used += n.min(buf.len() - used);
                if self.state != State::Open {
                    return buf.len();
                }
            }
            let f = match wire::decode_frame(&buf[used..], MAX_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    self.close(on, CloseReason::Protocol(e));
                    return buf.len();
                }
            };
            let p = &buf[used + f.payload_start..used + f.total_len()];
            used += f.total_len();
            match f.opcode {
                OpCode::Text | OpCode::Binary if self.frag_op.is_some() => {
                    // RFC 6455 §5.4: no new message inside a fragmented one.
                    self.close(on, CloseReason::Protocol(DecodeError::BadControl));
                    return buf.len();
                }
                OpCode::Text | OpCode::Binary if f.fin => {
                    if !self.deliver(f.opcode, p, f.rsv1, on) {
                        return buf.len();
                    }
                }
                OpCode::Text | OpCode::Binary => {
                    self.frag_op = Some(f.opcode);
                    self.frag_rsv1 = f.rsv1;
                    self.frag.extend_from_slice(p);
                }
                OpCode::Continuation => {
                    let Some(op) = self.frag_op else {
                        self.close(on, CloseReason::Protocol(DecodeError::BadControl));
                        return buf.len();
                    };
                    if self.frag.len() + p.len() > MAX_MESSAGE {
                        let len = (self.frag.len() + p.len()) as u64;
                        self.close(on, CloseReason::Protocol(DecodeError::TooLarge(len)));
                        return buf.len();
                    }
                    self.frag.extend_from_slice(p);
                    if f.fin {
                        let whole = std::mem::take(&mut self.frag);
                        self.frag_op = None;
                        if !self.deliver(op, &whole, self.frag_rsv1, on) {
                            return buf.len();
                        }
                        self.frag = whole;
                        self.frag.clear();
                    }
                }
                // RFC 6455 §5.5.2: answer a ping with a pong of the same payload.
                OpCode::Ping => self.send(OpCode::Pong, p),
                OpCode::Pong => {}
                OpCode::Close => {
                    // RFC 6455 §5.5.1: echo the status code back.
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        0
                    };
                    if p.len() >= 2 {
                        self.send(OpCode::Close, &p[..2]);
                    } else {
                        self.send(OpCode::Close, &[]);
                    }
                    let _ = self.flush();
                    self.close(on, CloseReason::ServerClose(code));
                    return buf.len();
                }
            }
        }
        used
    }
}

/// What a mode does with connection events.
pub trait Handler {
    fn event(&mut self, conn: &mut Conn, ev: Event<'_>, now_ns: u64);
}

/// One thread's connections and poller.
pub struct Net {
    poll: Poll,
    events: Events,
    pub conns: Vec<Conn>,
    scratch: Vec<u8>,
    dirty: Vec<usize>,
    pub origin: Instant,
    target: SocketAddr,
    host: String,
    spread: bool,
}

impl Net {
    pub fn new(origin: Instant, target: SocketAddr, host: String, spread: bool) -> io::Result<Net> {
        Ok(Net {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            conns: Vec::new(),
            scratch: vec![0; SCRATCH],
            dirty: Vec::new(),
            origin,
            target,
            host,
            spread,
        })
    }

    pub fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Starts connecting connection `id` to `path`. On immediate failure the
    /// connection is still added (closed) so every id is accounted for, and
    /// `false` is returned.
    pub fn open(&mut self, id: usize, path: String) -> bool {
        let src: Option<Ipv4Addr> = self.spread.then(|| crate::sys::spread_source(id));
        let now = self.now_ns();
        match crate::sys::connect(self.target, src) {
            Ok(mut s) => {
                let tok = Token(self.conns.len());
                if self
                    .poll
                    .registry()
                    .register(&mut s, tok, Interest::READABLE | Interest::WRITABLE)
                    .is_err()
                {
                    return false;
                }
                self.conns.push(Conn::new(s, id, &self.host, path, now));
                true
            }
            Err(_) => false,
        }
    }

    /// Marks a connection for flushing at the end of this turn.
    pub fn mark(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        if !c.in_dirty && c.pending_write() > 0 {
            c.in_dirty = true;
            self.dirty.push(idx);
        }
    }

    /// One poll and the dispatch of its events to `h`.
    pub fn turn(&mut self, timeout: Duration, h: &mut dyn Handler) {
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::warn!("poll: {e}");
            }
            return;
        }
        let origin = self.origin;
        for ev in self.events.iter() {
            let idx = ev.token().0;
            let Some(c) = self.conns.get_mut(idx) else {
                continue;
            };
            let now = origin.elapsed().as_nanos() as u64;
            let mut on = |c: &mut Conn, e: Event<'_>| h.event(c, e, now);
            if c.state == State::Connecting {
                if ev.is_writable() || ev.is_readable() || ev.is_error() {
                    if !c.on_connected() {
                        c.state = State::Closed;
                        on(c, Event::Closed(CloseReason::ConnectFailed));
                        continue;
                    }
                } else {
                    continue;
                }
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                c.on_readable(&mut self.scratch, &mut on);
            }
            if !c.in_dirty && c.pending_write() > 0 && c.state != State::Closed {
                c.in_dirty = true;
                self.dirty.push(idx);
            }
        }
    }

    /// Flushes every connection that has queued output: one write per
    /// connection per turn.
    pub fn flush(&mut self, h: &mut dyn Handler) {
        let now = self.now_ns();
        for idx in self.dirty.drain(..) {
            let c = &mut self.conns[idx];
            c.in_dirty = false;
            if c.state == State::Closed || c.state == State::Connecting {
                continue;
            }
            if !c.flush() {
                c.state = State::Closed;
                h.event(c, Event::Closed(CloseReason::Io), now);
            } else if c.pending_write() > 0 {
                // The kernel buffer is full: mio reports writable on the
                // next edge, and turn() re-marks the connection then.
            }
        }
    }

    /// Polite shutdown: a close frame to every open connection, one flush.
    pub fn close_all(&mut self) {
        for c in &mut self.conns {
            if c.state == State::Open {
                c.send_close(1000);
                let _ = c.flush();
            }
            c.state = State::Closed;
        }
    }
}
