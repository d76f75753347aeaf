//! A connection's I/O: reading until the socket would block, WebSocket
//! bytes through the engine to events, the echo, closing (RFC 6455 §7), and
//! flushing the write queue with one vectored write.

use super::files::StaticFiles;
use super::queue::Chunk;
use super::{Conn, Endpoint, Phase, READS_PER_TURN, Responding, Server, ms};
use crate::ws::close::close_payload;
use crate::ws::deflate;
use crate::ws::frame::{MAX_HEADER_LEN, OpCode, encode_frame, encode_header};
use crate::ws::receive::{Event, Payload, ProtocolError};
use log::debug;
use mio::{Interest, Token};
use std::io::{self, Read};

impl Server {
    pub(super) fn on_readable(&mut self, k: usize, to_eof: bool) {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let mut budget = READS_PER_TURN;
        while let Some(c) = self.conns.get_mut(k) {
            // While an answer is sent, input waits in the socket (see
            // `Phase::Responding`).
            if c.paused || matches!(c.phase, Phase::Responding(_)) {
                break;
            }
            if budget == 0 {
                self.again.push(k);
                break;
            }
            budget -= 1;
            match (&c.sock).read(&mut rbuf) {
                Ok(0) => {
                    self.on_eof(k);
                    break;
                }
                Ok(n) => {
                    // Only bytes received keep a connection alive (--idle-timeout).
                    c.last_rx = self.now;
                    self.metrics.bytes_in += n as u64;
                    if c.tls.is_some() {
                        self.on_tls_bytes(k, &mut rbuf[..n]);
                    } else {
                        self.on_bytes(k, &mut rbuf[..n]);
                    }
                    // A short read emptied the socket: skip the read that
                    // would only say EAGAIN. With edge-triggered epoll, bytes
                    // arriving after this read raise a new event.
                    if n < rbuf.len() && !to_eof {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_conn(k);
                    break;
                }
            }
        }
        self.rbuf = rbuf;
        // An echo's replies leave as soon as its input is read, not with
        // the rest at the end of the turn: still one write per connection
        // and turn, but the coalescing buffer just filled is written while
        // it is in the cache and goes back to the pool for the next
        // connection, as one buffer serves them all. (Echo touches no
        // store, so nothing waits for the turn's commit; /ws does.)
        if let Some(c) = self.conns.get(k)
            && c.dirty
            && matches!(&c.phase, Phase::Ws(ws) if ws.endpoint == Endpoint::Echo)
        {
            self.flush(k);
        }
    }

    pub(super) fn on_eof(&mut self, k: usize) {
        // Try once to get out what is queued (the peer may only have half-closed).
        if let Some(c) = self.conns.get_mut(k) {
            c.write_final();
        }
        self.drop_conn(k);
    }

    pub(super) fn on_bytes(&mut self, k: usize, data: &mut [u8]) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        match &mut c.phase {
            Phase::Http { .. } => self.on_http_bytes(k, data),
            Phase::Ws(_) => self.on_ws_bytes(k, data),
            Phase::Upload(_) => self.on_upload_bytes(k, data),
            Phase::Responding(_) | Phase::Linger => {}
        }
    }

    pub(super) fn on_ws_bytes(&mut self, k: usize, data: &mut [u8]) {
        let max_pending = self.cfg.max_pending_output;
        let threshold = self.cfg.deflate_threshold;
        let mut pos = 0;
        while pos < data.len() {
            let Some(c) = self.conns.get_mut(k) else {
                return;
            };
            let Phase::Ws(ws) = &mut c.phase else { return };
            let endpoint = ws.endpoint;
            let (n, r) = ws.rx.read(&mut data[pos..]);
            pos += n;
            match r {
                Ok(Some(ev)) => {
                    // The echo of a small message that goes uncompressed,
                    // queued as `echo` would, without looking the
                    // connection up again for each step.
                    if let Some((opcode, p)) = ev.as_data()
                        && endpoint == Endpoint::Echo
                        && !ws.close_sent
                        && p.len() < 4096
                        && (ws.deflate.is_none() || p.len() < threshold)
                    {
                        self.metrics.message_in(Endpoint::Echo);
                        c.out.push_frame(opcode, p);
                        // Backpressure: stop reading until the peer takes its echoes.
                        if c.out.pending() > max_pending {
                            c.paused = true;
                        }
                        self.metrics.message_out(Endpoint::Echo, 1);
                        if !c.dirty {
                            c.dirty = true;
                            self.dirty.push(k);
                        }
                        continue;
                    }
                    self.on_event(k, endpoint, ev)
                }
                Ok(None) if n == 0 => break,
                Ok(None) => {}
                Err(e) => {
                    debug!("connection {k}: {}", e.reason());
                    self.fail(k, e);
                    return;
                }
            }
        }
        self.track_message_deadline(k);
    }

    /// A frame or message in progress must complete within
    /// `--message-timeout` of the read that started it: bytes trickled now
    /// and then keep the idle timeout at bay, so without this deadline they
    /// could hold a partial message's buffer, a nick and rooms forever.
    /// The engine reads no clock; the server keeps the deadline.
    fn track_message_deadline(&mut self, k: usize) {
        let timeout = ms(self.cfg.message_timeout);
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let Phase::Ws(ws) = &c.phase else { return };
        if ws.close_sent {
            return; // the deadline is now the close timeout's
        }
        if !ws.rx.in_progress() {
            c.deadline = u64::MAX;
        } else if c.deadline == u64::MAX {
            c.deadline = self.now.saturating_add(timeout);
        }
    }

    fn on_event(&mut self, k: usize, endpoint: Endpoint, ev: Event<'_>) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let Phase::Ws(ws) = &mut c.phase else { return };
        if matches!(ev, Event::Text(_) | Event::Binary(_)) {
            self.metrics.message_in(endpoint);
        }
        match ev {
            // §7.1.3: after our close frame, data is read but discarded.
            Event::Text(_) | Event::Binary(_) if ws.close_sent => {}
            Event::Text(p) if endpoint == Endpoint::Chat => {
                self.with_chat(|chat, now, out| chat.on_text(k, &p, now, out));
            }
            Event::Binary(_) if endpoint == Endpoint::Chat => {
                self.start_close(k, 1003, "binary messages are not accepted on /ws");
            }
            Event::Text(p) => self.echo(k, OpCode::Text, p),
            Event::Binary(p) => self.echo(k, OpCode::Binary, p),
            Event::Ping(p) => {
                // §5.5.2: answer with a pong carrying the same payload, at once.
                if !ws.close_sent {
                    let mut frame = Vec::with_capacity(2 + p.len());
                    encode_frame(&mut frame, OpCode::Pong, &p);
                    c.out.push_pong(frame);
                    self.mark_dirty(k);
                }
            }
            Event::Pong(_) => {}
            Event::Close(code) => {
                self.metrics.close_received(code);
                // §5.5.1: answer a close with a close, echoing its status code;
                // §7.1.1: then the server closes the TCP connection first.
                if !ws.close_sent {
                    self.metrics.close_sent(code.unwrap_or(1005));
                    ws.close_sent = true;
                    let payload = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                    let mut frame = Vec::with_capacity(4);
                    encode_frame(&mut frame, OpCode::Close, &payload);
                    // After the echoes already queued: nothing follows a close.
                    c.out.push(Chunk::Fence(frame));
                }
                c.shutdown_when_flushed = true;
                c.deadline = self.now + ms(self.cfg.close_timeout);
                self.mark_dirty(k);
                self.leave_chat(k);
            }
        }
    }

    pub(super) fn echo(&mut self, k: usize, opcode: OpCode, p: Payload<'_>) {
        let max_pending = self.cfg.max_pending_output;
        let threshold = self.cfg.deflate_threshold;
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let deflate = match &c.phase {
            Phase::Ws(ws) => ws.deflate.filter(|_| p.len() >= threshold),
            _ => None,
        };
        match (deflate, p) {
            // RFC 7692 §6.1, §7.2.1: compressed, RSV1 on the (only) frame.
            (Some(bits), p) => {
                let mut z = std::mem::take(&mut self.zbuf);
                z.clear();
                deflate::compress(&p, bits, &mut z);
                if z.len() >= 4096 {
                    let mut hdr = [0u8; MAX_HEADER_LEN];
                    let n = encode_header(&mut hdr, true, opcode, z.len() as u64, None);
                    hdr[0] |= 0x40;
                    c.out.push(Chunk::Owned(hdr[..n].to_vec()));
                    c.out.push(Chunk::Tail(z));
                } else {
                    c.out.push_compressed_frame(opcode, &z);
                    self.zbuf = z;
                }
            }
            (None, p) => match p {
                // A large assembled message is queued as is, behind its own header.
                Payload::Owned(v) if v.len() >= 4096 => {
                    let mut hdr = [0u8; MAX_HEADER_LEN];
                    let n = encode_header(&mut hdr, true, opcode, v.len() as u64, None);
                    c.out.push(Chunk::Owned(hdr[..n].to_vec()));
                    c.out.push(Chunk::Tail(v));
                }
                p => c.out.push_frame(opcode, &p),
            },
        }
        // Backpressure: stop reading until the peer takes its echoes.
        if c.out.pending() > max_pending {
            c.paused = true;
        }
        self.metrics.message_out(Endpoint::Echo, 1);
        self.mark_dirty(k);
    }

    // ---- closing ---------------------------------------------------------

    /// Fails the connection (§7.1.7): a close frame with the error's code,
    /// then our side of TCP closes, since the rest of the stream cannot be parsed.
    pub(super) fn fail(&mut self, k: usize, e: ProtocolError) {
        self.start_close(k, e.close_code(), e.reason());
        if let Some(c) = self.conns.get_mut(k) {
            c.shutdown_when_flushed = true;
        }
    }

    /// Starts the closing handshake from our side (§7.1.2).
    pub(super) fn start_close(&mut self, k: usize, code: u16, reason: &str) {
        let close_timeout = ms(self.cfg.close_timeout);
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let Phase::Ws(ws) = &mut c.phase else { return };
        if ws.close_sent {
            return;
        }
        ws.close_sent = true;
        let mut frame = Vec::with_capacity(4 + reason.len());
        encode_frame(&mut frame, OpCode::Close, &close_payload(code, reason));
        // After the data already queued (§5.5.1: no data frame follows a close).
        c.out.push(Chunk::Fence(frame));
        c.deadline = self.now + close_timeout;
        // Nothing more is read from a paused peer, but its close must get through.
        c.paused = false;
        self.metrics.close_sent(code);
        self.mark_dirty(k);
        self.leave_chat(k);
    }

    fn leave_chat(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let Phase::Ws(ws) = &mut c.phase else { return };
        if std::mem::replace(&mut ws.in_chat, false) {
            self.with_chat(|chat, now, out| chat.disconnect(k, now, out));
        }
    }

    pub(super) fn drop_conn(&mut self, k: usize) {
        let Some(c) = self.conns.try_remove(k) else {
            return;
        };
        if c.refused {
            self.refusing -= 1;
        } else if c.metrics {
            self.metrics_open -= 1;
        } else if c.counted {
            self.uncount(c.ip);
        }
        if let Phase::Ws(ws) = &c.phase
            && ws.in_chat
        {
            self.with_chat(|chat, now, out| chat.disconnect(k, now, out));
        }
        // Dropping the stream closes the socket and removes it from the poll.
    }

    // ---- writing ---------------------------------------------------------

    pub(super) fn mark_dirty(&mut self, k: usize) {
        if let Some(c) = self.conns.get_mut(k)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(k);
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        // The two lists swap, keeping their capacity: a turn's broadcast to
        // a thousand members no longer grows a fresh list from nothing.
        let mut batch = std::mem::take(&mut self.flushing);
        while !self.dirty.is_empty() {
            std::mem::swap(&mut batch, &mut self.dirty);
            for &k in &batch {
                self.flush(k);
            }
            batch.clear();
        }
        self.flushing = batch;
    }

    pub(super) fn flush(&mut self, k: usize) {
        let max_pending = self.cfg.max_pending_output;
        // Converted where used: a flush per receiver per turn is the common
        // case, and each conversion is a 128-bit division.
        let close_timeout = self.cfg.close_timeout;
        // A streamed file's unsent bytes count against --max-pending-output.
        let chunk = super::files::STREAM_CHUNK.min(max_pending).max(1);
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        c.dirty = false;
        let w = match write_out(c, &self.files, chunk) {
            Ok(w) => w,
            Err(_) => {
                self.drop_conn(k);
                return;
            }
        };
        if w.starved {
            self.refill.push(k);
        }
        let responding = matches!(c.phase, Phase::Responding(_));
        if w.progress && responding {
            // An answer gets --close-timeout between two pieces the client
            // takes, however long it is in all.
            c.deadline = self.now + ms(close_timeout);
        }
        let drained = w.queue_empty;
        // Writable interest only while output waits.
        if drained == c.writable {
            let interest = if drained {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            if self
                .poll
                .registry()
                .reregister(&mut c.sock, Token(k), interest)
                .is_err()
            {
                self.drop_conn(k);
                return;
            }
            c.writable = !drained;
        }
        if c.paused && c.out.pending() <= max_pending / 2 {
            c.paused = false;
            self.again.push(k);
            // A message cut short by our not reading gets its time again.
            if matches!(&c.phase, Phase::Ws(ws) if !ws.close_sent) && c.deadline != u64::MAX {
                c.deadline = self.now.saturating_add(ms(self.cfg.message_timeout));
            }
        }
        if w.done && responding && !c.shutdown_when_flushed {
            if self.shutdown_deadline.is_none() {
                self.next_request(k);
                return;
            }
            c.shutdown_when_flushed = true; // shutting down: no next request
        }
        if w.done && c.shutdown_when_flushed {
            c.shutdown_when_flushed = false;
            c.shutdown_write();
            c.phase = Phase::Linger;
            c.deadline = self.now + ms(close_timeout);
            if responding {
                // Input that waited while we answered (the peer's FIN, say)
                // raises no new event: look at it next turn.
                self.again.push(k);
            }
        }
    }
}

/// What one `write_out` did.
#[derive(Default)]
struct Written {
    /// The queue is empty.
    queue_empty: bool,
    /// Everything is out, a streamed file included.
    done: bool,
    /// Some bytes left, or a piece of the file was read.
    progress: bool,
    /// A file's next piece waits for the next turn's read budget.
    starved: bool,
}

/// Writes what the socket takes. While a file is streamed, its next piece
/// (at most `chunk` bytes) is read each time the queue drains, within the
/// turn's read budget: one connection's unsent file bytes are at most one
/// piece, and the loop never blocks on a large read.
fn write_out(c: &mut Conn, files: &StaticFiles, chunk: usize) -> io::Result<Written> {
    let mut w = Written::default();
    loop {
        let before = c.out.pending();
        let empty = c.write_queue()?;
        w.progress |= c.out.pending() < before;
        w.queue_empty = empty;
        let Phase::Responding(Responding { stream, .. }) = &mut c.phase else {
            w.done = empty;
            return Ok(w);
        };
        let Some(s) = stream.as_mut().filter(|s| !s.is_done()) else {
            *stream = None;
            w.done = empty;
            return Ok(w);
        };
        if !empty {
            return Ok(w);
        }
        let n = s.next_len(chunk);
        if !files.take_read_budget(n) {
            w.starved = true;
            return Ok(w);
        }
        let piece = s.read_chunk(n)?;
        w.progress = true;
        c.out.push(Chunk::Owned(piece));
    }
}
