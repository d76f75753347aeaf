//! Receiving frames and assembling messages (RFC 6455 §5.2–§5.6, §6.2).
//!
//! [`Receiver`] is fed whatever bytes the socket produced, in any chunking.
//! It unmasks payloads in place, checks every rule as soon as the bytes that
//! decide it are present (a bad opcode fails on the first byte of a header,
//! bad UTF-8 on the byte that proves it), and yields one [`Event`] at a time.
//! A message wholly inside the input is handed out without a copy; one that
//! spans reads or frames is assembled in a buffer that grows with the bytes
//! actually received, never with the length a header announces.

use super::close::{ClosePayloadError, parse_close_payload};
use super::deflate::{InflateError, Inflater, TAIL};
use super::frame::{MAX_HEADER_LEN, OpCode, apply_mask};
use super::utf8::Utf8Validator;
use std::ops::Deref;

/// Payload bytes of an event: borrowed from the input when they were all in
/// it, owned when they had to be assembled.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Deref for Payload<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Borrowed(b) => b,
            Payload::Owned(v) => v,
        }
    }
}

impl Payload<'_> {
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Payload::Borrowed(b) => b.to_vec(),
            Payload::Owned(v) => v,
        }
    }
}

/// What a peer's bytes amounted to.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message, already checked to be UTF-8 (§8.1).
    Text(Payload<'a>),
    /// A complete binary message.
    Binary(Payload<'a>),
    /// §5.5.2: to be answered with a pong carrying the same payload.
    Ping(Payload<'a>),
    /// §5.5.3: a pong, solicited or not.
    Pong(Payload<'a>),
    /// §5.5.1: the peer starts or answers the closing handshake. The code, if
    /// any, is valid (§7.4) and the reason UTF-8. Nothing after it is read.
    Close(Option<u16>),
}

impl Event<'_> {
    /// A data message's opcode and payload; `None` for the others.
    pub fn as_data(&self) -> Option<(OpCode, &[u8])> {
        match self {
            Event::Text(p) => Some((OpCode::Text, p)),
            Event::Binary(p) => Some((OpCode::Binary, p)),
            _ => None,
        }
    }
}

/// A violation that fails the connection (§7.1.7), with the close code it
/// calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// §5.2: RSV1–3 set while no extension was negotiated.
    ReservedBits,
    /// §5.2: opcodes 0x3–0x7 and 0xB–0xF are reserved.
    ReservedOpcode(u8),
    /// §5.1: "a client MUST mask all frames that it sends to the server".
    Unmasked,
    /// §5.5: "All control frames MUST NOT be fragmented".
    FragmentedControl,
    /// §5.5: "All control frames MUST have a payload length of 125 bytes or less".
    ControlTooLong,
    /// §5.4: a continuation frame with no fragmented message open.
    UnexpectedContinuation,
    /// §5.4: a new data frame while a fragmented message is still open.
    ExpectedContinuation,
    /// §5.2: "the most significant bit MUST be 0" in a 64-bit length.
    LengthOverflow,
    /// §7.4.1 1009: the message would exceed the configured limit.
    MessageTooBig,
    /// §8.1: a text message that is not valid UTF-8 (close 1007).
    InvalidUtf8,
    /// §5.5.1, §7.4: a malformed close frame body.
    InvalidClose(ClosePayloadError),
    /// RFC 7692 §6: RSV1 ("Per-Message Compressed") on a control frame or
    /// on a continuation frame.
    MisplacedRsv1,
    /// RFC 7692 §7.2.2: a compressed message that does not inflate (close
    /// 1007: data inconsistent with the message).
    InvalidDeflate,
}

impl ProtocolError {
    /// The status code to close with (§7.4.1).
    pub fn close_code(self) -> u16 {
        match self {
            ProtocolError::MessageTooBig => 1009,
            ProtocolError::InvalidUtf8
            | ProtocolError::InvalidDeflate
            | ProtocolError::InvalidClose(ClosePayloadError::InvalidReason) => 1007,
            _ => 1002,
        }
    }

    /// A short reason for the close frame and the log.
    pub fn reason(self) -> &'static str {
        match self {
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::ReservedOpcode(_) => "reserved opcode",
            ProtocolError::Unmasked => "client frames must be masked",
            ProtocolError::FragmentedControl => "fragmented control frame",
            ProtocolError::ControlTooLong => "control frame longer than 125 bytes",
            ProtocolError::UnexpectedContinuation => "continuation without a message",
            ProtocolError::ExpectedContinuation => "expected a continuation frame",
            ProtocolError::LengthOverflow => "payload length with the top bit set",
            ProtocolError::MessageTooBig => "message too big",
            ProtocolError::InvalidUtf8 => "invalid UTF-8 in text message",
            ProtocolError::InvalidClose(ClosePayloadError::OneByte) => "close payload of 1 byte",
            ProtocolError::InvalidClose(ClosePayloadError::InvalidCode(_)) => "invalid close code",
            ProtocolError::InvalidClose(ClosePayloadError::InvalidReason) => {
                "invalid UTF-8 in close reason"
            }
            ProtocolError::MisplacedRsv1 => "RSV1 on a control or continuation frame",
            ProtocolError::InvalidDeflate => "invalid compressed data",
        }
    }
}

/// A frame whose header has been read and whose payload is being read.
#[derive(Clone, Copy, Debug)]
struct Frame {
    opcode: OpCode,
    fin: bool,
    key: [u8; 4],
    /// Payload bytes still to come.
    remaining: u64,
    /// Position in the masking key of the next payload byte (§5.3: i MOD 4).
    mask_pos: u8,
    /// Whether any payload byte was seen yet (for the zero-copy fast path).
    started: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame arrived: §5.5.1 says no more data follows it.
    Closed,
    /// A protocol error failed the connection: the rest is not parsed.
    Failed,
}

/// Bytes kept between reads: a message spanning reads or frames, and a
/// control frame's payload spanning reads (at most 125 bytes).
#[derive(Debug, Default)]
struct Held {
    message: Vec<u8>,
    control: Vec<u8>,
    /// The inflater of a compressed message in progress (RFC 7692 §7.2.2).
    inflater: Option<Inflater>,
    /// Compressed bytes of that message not yet given to the inflater:
    /// less than [`INFLATE_STEP`] of them.
    compressed: Vec<u8>,
}

/// The inflater takes a compressed message in pieces of this many bytes,
/// counted from the message's first compressed byte (see
/// `Receiver::inflate_frame`).
pub const INFLATE_STEP: usize = 1024;

/// Frame decoder and message assembler for the server side of a connection.
#[derive(Debug)]
pub struct Receiver {
    max_message_size: u64,
    state: State,
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: u8,
    frame: Option<Frame>,
    /// Opcode of the data message open (Text or Binary), fragmented or not.
    message: Option<OpCode>,
    /// Bytes announced so far by the open message's frames.
    message_len: u64,
    utf8: Utf8Validator,
    /// permessage-deflate was negotiated: RSV1 may mark a message compressed.
    deflate: bool,
    /// The open data message is compressed (RSV1 on its first frame).
    compressed: bool,
    /// Payload bytes held between reads; boxed so that an idle connection
    /// pays one pointer for it.
    held: Option<Box<Held>>,
}

impl Receiver {
    pub fn new(max_message_size: usize) -> Self {
        Receiver {
            max_message_size: max_message_size as u64,
            state: State::Open,
            hdr: [0; MAX_HEADER_LEN],
            hdr_len: 0,
            frame: None,
            message: None,
            message_len: 0,
            utf8: Utf8Validator::new(),
            deflate: false,
            compressed: false,
            held: None,
        }
    }

    /// Lets RSV1 mark compressed messages (RFC 7692 §6), once the handshake
    /// negotiated permessage-deflate.
    pub fn with_deflate(mut self, on: bool) -> Self {
        self.deflate = on;
        self
    }

    /// Whether a message is partly received (for the server's buffer accounting).
    pub fn buffered(&self) -> usize {
        self.held.as_ref().map_or(0, |h| {
            h.message.capacity() + h.control.capacity() + h.compressed.capacity()
        })
    }

    /// Whether a frame (its header included) or a fragmented message has
    /// started and not yet completed. The engine reads no clock: the server
    /// gives what is in progress a deadline (`--message-timeout`).
    pub fn in_progress(&self) -> bool {
        self.state == State::Open
            && (self.hdr_len > 0 || self.frame.is_some() || self.message.is_some())
    }

    /// True once a close frame or an error ended parsing; further input is ignored.
    pub fn is_done(&self) -> bool {
        self.state != State::Open
    }

    /// Reads from the start of `input`, unmasking it in place, until an event
    /// completes or the input is used up. Returns the bytes consumed and the
    /// event, if any; call again with the rest of the input after an event.
    /// After a close frame or an error every byte is consumed and ignored.
    pub fn read<'a>(
        &mut self,
        input: &'a mut [u8],
    ) -> (usize, Result<Option<Event<'a>>, ProtocolError>) {
        if let Some((text, hlen, len)) = self.whole_frame(input) {
            return self.read_whole_frame(input, text, hlen, len);
        }
        let mut pos = 0;
        loop {
            if self.state != State::Open {
                return (input.len(), Ok(None));
            }
            let frame = match self.frame {
                Some(f) => f,
                None => match self.read_header(input, &mut pos) {
                    Ok(Some(f)) => {
                        self.frame = Some(f);
                        f
                    }
                    Ok(None) => return (pos, Ok(None)),
                    Err(e) => return (pos, Err(self.fail(e))),
                },
            };
            let take =
                (input.len() - pos).min(usize::try_from(frame.remaining).unwrap_or(usize::MAX));
            let start = pos;
            pos += take;
            apply_mask(
                &mut input[start..pos],
                frame.key,
                usize::from(frame.mask_pos),
            );
            let whole = !frame.started && take as u64 == frame.remaining;
            let done = take as u64 == frame.remaining;
            if let Some(f) = self.frame.as_mut() {
                f.remaining -= take as u64;
                f.mask_pos = ((usize::from(f.mask_pos) + take) % 4) as u8;
                f.started = true;
            }

            if frame.opcode.is_control() {
                if !done {
                    self.held().control.extend_from_slice(&input[start..pos]);
                    return (pos, Ok(None));
                }
                self.frame = None;
                let payload = if whole {
                    Payload::Borrowed(&input[start..pos])
                } else {
                    let held = self.held();
                    held.control.extend_from_slice(&input[start..pos]);
                    let p = Payload::Owned(std::mem::take(&mut held.control));
                    self.release_if_empty();
                    p
                };
                return match self.control_event(frame.opcode, payload) {
                    Ok(ev) => (pos, Ok(Some(ev))),
                    Err(e) => (pos, Err(self.fail(e))),
                };
            }

            // RFC 7692 §7.2.2: a compressed message is inflated as it arrives.
            if self.compressed {
                match self.inflate_frame(&input[start..pos], done && frame.fin) {
                    Err(e) => return (pos, Err(self.fail(e))),
                    Ok(None) if !done => return (pos, Ok(None)),
                    Ok(None) => {
                        self.frame = None;
                        continue;
                    }
                    Ok(Some(v)) => {
                        self.frame = None;
                        self.message_len = 0;
                        let ev = if self.message.take() == Some(OpCode::Text) {
                            Event::Text(Payload::Owned(v))
                        } else {
                            Event::Binary(Payload::Owned(v))
                        };
                        return (pos, Ok(Some(ev)));
                    }
                }
            }
            // A data frame (§5.6): check text as it arrives, not at the end.
            if self.message == Some(OpCode::Text) && self.utf8.feed(&input[start..pos]).is_err() {
                return (pos, Err(self.fail(ProtocolError::InvalidUtf8)));
            }
            if !(done && frame.fin) {
                let max = self.max_message_size;
                append_capped(&mut self.held().message, &input[start..pos], max);
                if !done {
                    return (pos, Ok(None));
                }
                self.frame = None;
                continue;
            }
            // The final frame of the message is complete.
            self.frame = None;
            let opcode = self.message.take().unwrap_or(OpCode::Binary);
            self.message_len = 0;
            if opcode == OpCode::Text && self.utf8.finish().is_err() {
                return (pos, Err(self.fail(ProtocolError::InvalidUtf8)));
            }
            let held_empty = self.held.as_ref().is_none_or(|h| h.message.is_empty());
            let payload = if whole && held_empty {
                Payload::Borrowed(&input[start..pos])
            } else {
                let max = self.max_message_size;
                let held = self.held();
                append_capped(&mut held.message, &input[start..pos], max);
                let p = Payload::Owned(std::mem::take(&mut held.message));
                self.release_if_empty();
                p
            };
            let ev = if opcode == OpCode::Text {
                Event::Text(payload)
            } else {
                Event::Binary(payload)
            };
            return (pos, Ok(Some(ev)));
        }
    }

    /// The common case, taken in one step: between messages, the input
    /// starts with a whole unfragmented, uncompressed text or binary frame
    /// of under 64 KiB, masked (§5.1), its header in the shortest form.
    /// Anything else (or a message over the limit) returns `None` and goes
    /// through [`Receiver::read`]'s general path, which checks every rule
    /// byte by byte; for a frame this path takes, the outcome is the same
    /// (the same event or the same error, the same bytes consumed), which
    /// the `frames` fuzz target checks by splitting the input every way.
    /// Returns (text, header length, payload length).
    #[inline]
    fn whole_frame(&self, input: &[u8]) -> Option<(bool, usize, usize)> {
        if self.state != State::Open
            || self.frame.is_some()
            || self.hdr_len != 0
            || self.message.is_some()
            || input.len() < 6
        {
            return None;
        }
        // FIN, no RSV bit, opcode 1 or 2 (§5.2); the mask bit (§5.1).
        let b0 = input[0];
        let text = match b0 {
            0x81 => true,
            0x82 => false,
            _ => return None,
        };
        let (len, hlen) = match input[1] {
            b @ 0x80..=0xfd => (usize::from(b & 0x7f), 6),
            0xfe if input.len() >= 8 => {
                let len = usize::from(u16::from_be_bytes([input[2], input[3]]));
                // §5.2: "the minimal number of bytes MUST be used"; the
                // general path decides what a longer form means.
                if len < 126 {
                    return None;
                }
                (len, 8)
            }
            _ => return None,
        };
        if len as u64 > self.max_message_size || input.len() - hlen < len {
            return None;
        }
        Some((text, hlen, len))
    }

    /// Takes the frame [`Receiver::whole_frame`] found.
    #[inline]
    fn read_whole_frame<'a>(
        &mut self,
        input: &'a mut [u8],
        text: bool,
        hlen: usize,
        len: usize,
    ) -> (usize, Result<Option<Event<'a>>, ProtocolError>) {
        let key = [
            input[hlen - 4],
            input[hlen - 3],
            input[hlen - 2],
            input[hlen - 1],
        ];
        let end = hlen + len;
        let payload = &mut input[hlen..end];
        apply_mask(payload, key, 0);
        // §8.1: a text message is valid UTF-8 as a whole.
        if text
            && !payload.is_ascii()
            && (self.utf8.feed(payload).is_err() || self.utf8.finish().is_err())
        {
            return (end, Err(self.fail(ProtocolError::InvalidUtf8)));
        }
        let payload = Payload::Borrowed(&input[hlen..end]);
        (
            end,
            Ok(Some(if text {
                Event::Text(payload)
            } else {
                Event::Binary(payload)
            })),
        )
    }

    /// Inflates a compressed message's payload bytes as they arrive: the
    /// inflated bytes count against the message limit as they appear (1009
    /// before they are buffered) and text is checked on them (§8.1). `last`:
    /// these end the message, so the tail goes in behind them (§7.2.2).
    ///
    /// The inflater is fed the message's compressed bytes in pieces that
    /// start at fixed offsets ([`INFLATE_STEP`] apart), not as the reads
    /// split them: how far zlib gets into corrupt input before it notices
    /// depends on the pieces it is given, so only thus is the fault
    /// reported (and the event it ends) the same however the bytes arrived.
    fn inflate_frame(
        &mut self,
        mut data: &[u8],
        last: bool,
    ) -> Result<Option<Vec<u8>>, ProtocolError> {
        let limit = usize::try_from(self.max_message_size).unwrap_or(usize::MAX);
        let held = self.held.get_or_insert_with(Box::default);
        let inf = held.inflater.get_or_insert_with(Inflater::take);
        let before = held.message.len();
        let out = &mut held.message;
        let pending = &mut held.compressed;
        let mut inflated = Ok(());
        // Complete the piece begun by earlier reads.
        if !pending.is_empty() {
            let take = (INFLATE_STEP - pending.len()).min(data.len());
            pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if pending.len() == INFLATE_STEP || last {
                inflated = inf.inflate(pending, out, limit);
                *pending = Vec::new();
            }
        }
        while inflated.is_ok() && data.len() >= INFLATE_STEP {
            inflated = inf.inflate(&data[..INFLATE_STEP], out, limit);
            data = &data[INFLATE_STEP..];
        }
        if inflated.is_ok() && !data.is_empty() {
            if last {
                inflated = inf.inflate(data, out, limit);
            } else {
                pending.reserve_exact(INFLATE_STEP);
                pending.extend_from_slice(data);
            }
        }
        if inflated.is_ok() && last {
            inflated = inf.inflate(&TAIL, out, limit);
        }
        // The text inflated before a failure is checked first, up to the
        // limit: the first fault in the stream is the one reported, however
        // the frame's bytes were split across reads (the frames fuzz target
        // compares every chunking).
        if self.message == Some(OpCode::Text) {
            let end = held.message.len().min(limit);
            if before < end {
                self.utf8
                    .feed(&held.message[before..end])
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
        }
        inflated.map_err(|e| match e {
            InflateError::TooBig => ProtocolError::MessageTooBig,
            InflateError::Invalid => ProtocolError::InvalidDeflate,
        })?;
        if self.message == Some(OpCode::Text) && last {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        if !last {
            return Ok(None);
        }
        self.compressed = false;
        if let Some(inf) = held.inflater.take() {
            inf.give_back();
        }
        let v = std::mem::take(&mut held.message);
        self.release_if_empty();
        Ok(Some(v))
    }

    fn held(&mut self) -> &mut Held {
        self.held.get_or_insert_with(Box::default)
    }

    /// Frees the held buffers once nothing is in progress.
    fn release_if_empty(&mut self) {
        if self.held.as_ref().is_some_and(|h| {
            // A compressed message in progress keeps its inflater and
            // its pending bytes across a control frame.
            h.message.is_empty()
                && h.control.is_empty()
                && h.inflater.is_none()
                && h.compressed.is_empty()
        }) {
            self.held = None;
        }
    }

    fn fail(&mut self, e: ProtocolError) -> ProtocolError {
        self.state = State::Failed;
        self.held = None;
        e
    }

    /// Accumulates header bytes and checks each field as soon as it is
    /// present. Returns the frame once its header is complete.
    fn read_header(
        &mut self,
        input: &[u8],
        pos: &mut usize,
    ) -> Result<Option<Frame>, ProtocolError> {
        // Fast path: the whole header is in the input (the usual case), so
        // take it in one copy; the checks are the same either way.
        if self.hdr_len == 0 && input.len() - *pos >= 2 {
            let need = match input[*pos + 1] & 0x7f {
                126 => 8,
                127 => 14,
                _ => 6,
            };
            if input.len() - *pos >= need {
                self.hdr[..need].copy_from_slice(&input[*pos..*pos + need]);
                *pos += need;
                self.hdr_len = need as u8;
                self.check_first_byte()?;
                self.check_second_byte()?;
            }
        }
        while *pos < input.len() {
            let have = self.hdr_len as usize;
            let need = self.header_len();
            if have >= need {
                break;
            }
            let take = (need - have).min(input.len() - *pos);
            self.hdr[have..have + take].copy_from_slice(&input[*pos..*pos + take]);
            *pos += take;
            let before = have;
            self.hdr_len += take as u8;
            // Check the first two bytes the moment they arrive (fail fast).
            if before == 0 {
                self.check_first_byte()?;
            }
            if before < 2 && self.hdr_len >= 2 {
                self.check_second_byte()?;
            }
        }
        let need = self.header_len();
        if (self.hdr_len as usize) < need {
            return Ok(None);
        }
        let b0 = self.hdr[0];
        let b1 = self.hdr[1];
        let (len, ext) = match b1 & 0x7f {
            126 => (u64::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]])), 2),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.hdr[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthOverflow);
                }
                (len, 8)
            }
            n => (u64::from(n), 0),
        };
        let mut key = [0u8; 4];
        key.copy_from_slice(&self.hdr[2 + ext..6 + ext]);
        self.hdr_len = 0;
        let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0f))?;
        if !opcode.is_control() {
            if opcode != OpCode::Continuation {
                self.message = Some(opcode);
                // RFC 7692 §6: RSV1 on the first frame marks the message
                // compressed (checked allowed in `check_first_byte`).
                self.compressed = b0 & 0x40 != 0;
            }
            // §10.4: refuse before buffering anything of an oversized message.
            self.message_len = self.message_len.saturating_add(len);
            if self.message_len > self.max_message_size {
                return Err(ProtocolError::MessageTooBig);
            }
        }
        Ok(Some(Frame {
            opcode,
            fin: b0 & 0x80 != 0,
            key,
            remaining: len,
            mask_pos: 0,
            started: false,
        }))
    }

    /// Header length known so far: 2 until the length byte is in, then exact.
    fn header_len(&self) -> usize {
        if self.hdr_len < 2 {
            return 2;
        }
        // Every client frame has a 4-byte masking key (checked in byte 2).
        match self.hdr[1] & 0x7f {
            126 => 2 + 2 + 4,
            127 => 2 + 8 + 4,
            _ => 2 + 4,
        }
    }

    fn check_first_byte(&self) -> Result<(), ProtocolError> {
        let b0 = self.hdr[0];
        // §5.2: RSV1-3 "MUST be 0 unless an extension is negotiated";
        // permessage-deflate owns RSV1 (RFC 7692 §6).
        if b0 & 0x30 != 0 || (b0 & 0x40 != 0 && !self.deflate) {
            return Err(ProtocolError::ReservedBits);
        }
        let raw = b0 & 0x0f;
        let opcode = OpCode::from_u8(raw).ok_or(ProtocolError::ReservedOpcode(raw))?;
        // RFC 7692 §6: never on control frames nor on continuations.
        if b0 & 0x40 != 0 && (opcode.is_control() || opcode == OpCode::Continuation) {
            return Err(ProtocolError::MisplacedRsv1);
        }
        let fin = b0 & 0x80 != 0;
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControl);
            }
        } else if opcode == OpCode::Continuation {
            if self.message.is_none() {
                return Err(ProtocolError::UnexpectedContinuation);
            }
        } else if self.message.is_some() {
            return Err(ProtocolError::ExpectedContinuation);
        }
        Ok(())
    }

    fn check_second_byte(&self) -> Result<(), ProtocolError> {
        let b1 = self.hdr[1];
        if b1 & 0x80 == 0 {
            return Err(ProtocolError::Unmasked);
        }
        if self.hdr[0] & 0x08 != 0 && b1 & 0x7f > 125 {
            return Err(ProtocolError::ControlTooLong);
        }
        Ok(())
    }

    fn control_event<'a>(
        &mut self,
        opcode: OpCode,
        payload: Payload<'a>,
    ) -> Result<Event<'a>, ProtocolError> {
        Ok(match opcode {
            OpCode::Ping => Event::Ping(payload),
            OpCode::Pong => Event::Pong(payload),
            _ => {
                let code = parse_close_payload(&payload)
                    .map_err(ProtocolError::InvalidClose)?
                    .map(|(code, _reason)| code);
                self.state = State::Closed;
                self.held = None;
                Event::Close(code)
            }
        })
    }
}

/// Appends to a message buffer that doubles as it grows but never past the
/// message limit, so a connection's buffer is bounded by `--max-message-size`
/// (the header check has already made sure the data fits). The first
/// allocation is what arrived, neither a length a header announces nor a
/// fixed reserve: a peer that opens a message with a few bytes holds a few
/// bytes, and a large message, arriving a read buffer at a time, is copied
/// O(1) times per byte all the same.
fn append_capped(buf: &mut Vec<u8>, data: &[u8], limit: u64) {
    let need = buf.len() + data.len();
    if need > buf.capacity() {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let want = (buf.capacity() * 2).min(limit).max(need);
        buf.reserve_exact(want - buf.len());
    }
    buf.extend_from_slice(data);
}

/// Builds a masked client frame: for tests, fuzzing and the load generator.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + MAX_HEADER_LEN);
    let len = payload.len() as u64;
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key, 0);
    out
}

/// What a whole input amounts to, for comparing chunkings: owned events
/// and the error that ended it, if any.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Outcome {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
    Error(ProtocolError),
}

/// Feeds `input` to a fresh receiver in the chunks given by `cuts` (offsets
/// into `input`) and collects the outcomes.
pub fn run_chunked(max: usize, input: &[u8], cuts: &[usize]) -> Vec<Outcome> {
    run_chunked_with(max, false, input, cuts)
}

/// [`run_chunked`] with permessage-deflate negotiated or not.
pub fn run_chunked_with(max: usize, deflate: bool, input: &[u8], cuts: &[usize]) -> Vec<Outcome> {
    let mut rx = Receiver::new(max).with_deflate(deflate);
    let mut out = Vec::new();
    let mut data = input.to_vec();
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c <= data.len()).collect();
    bounds.push(data.len());
    bounds.sort_unstable();
    let mut start = 0;
    for end in bounds {
        let mut chunk = &mut data[start..end];
        while !chunk.is_empty() {
            let (n, r) = rx.read(chunk);
            match r {
                Ok(Some(ev)) => out.push(match ev {
                    Event::Text(p) => Outcome::Text(p.into_vec()),
                    Event::Binary(p) => Outcome::Binary(p.into_vec()),
                    Event::Ping(p) => Outcome::Ping(p.into_vec()),
                    Event::Pong(p) => Outcome::Pong(p.into_vec()),
                    Event::Close(c) => Outcome::Close(c),
                }),
                Ok(None) => {}
                Err(e) => out.push(Outcome::Error(e)),
            }
            if n == 0 {
                break;
            }
            chunk = &mut chunk[n..];
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the frames fuzz target: a compressed text message whose
    /// inflated bytes turn invalid as UTF-8 just before its compressed
    /// bytes turn invalid too. Whole, the inflater met the bad block in the
    /// same call that produced the bad text and its error was reported
    /// first; in pieces, the text was checked first. The text inflated
    /// before an inflater error is now checked first, so here every
    /// chunking names the same fault (the fuzz target's `same` says where
    /// zlib leaves that open).
    #[test]
    fn a_fault_in_compressed_text_is_reported_alike_in_every_chunking() {
        let input: &[u8] = &[
            0x41, 0x9b, 0x37, 0xfa, 0x21, 0x3d, 0x9d, 0xac, 0x0b, 0x94, 0x1b, 0xb2, 0x74, 0x8f,
            0x65, 0x30, 0x6c, 0x10, 0x19, 0xb4, 0x6d, 0x72, 0x62, 0x28, 0x70, 0x17, 0xfd, 0x35,
            0xee, 0x68, 0x85, 0xa8, 0x6b, 0x89, 0x81, 0x37, 0xfa, 0x21, 0x3d, 0x47, 0x80, 0x9c,
            0x37, 0xfa, 0x21, 0x3d, 0x78, 0x37, 0x6a, 0x10, 0x7d, 0x36, 0x70, 0xef, 0x66, 0xd0,
            0x68, 0x90, 0x1f, 0xab, 0xff, 0xff, 0xff, 0xff, 0x93, 0x6f, 0xfd, 0xb2, 0xec, 0xf4,
            0xfe, 0xad, 0x61, 0x1f, 0xa2, 0x90, 0x20, 0x3d,
        ];
        let whole = run_chunked_with(64 * 1024, true, input, &[]);
        assert_eq!(
            whole.last(),
            Some(&Outcome::Error(ProtocolError::InvalidUtf8))
        );
        let bytewise: Vec<usize> = (0..input.len()).collect();
        assert_eq!(run_chunked_with(64 * 1024, true, input, &bytewise), whole);
        for cut in 0..input.len() {
            assert_eq!(
                run_chunked_with(64 * 1024, true, input, &[cut]),
                whole,
                "cut {cut}"
            );
        }
    }
    const K: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

    fn all(input: &[u8]) -> Vec<Outcome> {
        run_chunked(1 << 20, input, &[])
    }

    /// The outcome must not depend on how the bytes were split.
    fn same_for_every_split(input: &[u8]) -> Vec<Outcome> {
        let whole = all(input);
        for a in 0..=input.len() {
            assert_eq!(run_chunked(1 << 20, input, &[a]), whole, "split at {a}");
        }
        let bytewise: Vec<usize> = (0..input.len()).collect();
        assert_eq!(
            run_chunked(1 << 20, input, &bytewise),
            whole,
            "byte by byte"
        );
        whole
    }

    /// A whole small frame is taken in one step (`Receiver::whole_frame`),
    /// the same bytes split anyhow go the general way: the outcome is the same.
    #[test]
    fn whole_frames_and_split_frames_agree() {
        let mut input = Vec::new();
        let frames: [(u8, &[u8]); 6] = [
            (1, b"ascii"),
            (1, "h\u{e9}llo \u{1f600}".as_bytes()),
            (2, &[0xff; 200]),
            (1, &[b'a'; 126]),
            (1, b""),
            (1, b"bad \xc3\x28 text"),
        ];
        for (op, p) in frames {
            input.extend(client_frame(true, op, p, K));
        }
        let out = same_for_every_split(&input);
        assert_eq!(out.len(), 6);
        assert_eq!(out[1], Outcome::Text("h\u{e9}llo \u{1f600}".into()));
        assert_eq!(out[5], Outcome::Error(ProtocolError::InvalidUtf8));
        // A text message cut inside a character is not valid on its own.
        let f = client_frame(true, 1, b"cut \xe2\x82", K);
        assert_eq!(all(&f), vec![Outcome::Error(ProtocolError::InvalidUtf8)]);
        // Over the limit: refused, whole or not.
        let f = client_frame(true, 2, &[0; 100], K);
        assert_eq!(
            run_chunked(99, &f, &[]),
            vec![Outcome::Error(ProtocolError::MessageTooBig)]
        );
    }

    #[test]
    fn round_trips_every_length_form() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let f = client_frame(true, 2, &payload, K);
            assert_eq!(all(&f), vec![Outcome::Binary(payload.clone())], "len {len}");
            let cuts: Vec<usize> = (0..f.len()).step_by(997).collect();
            assert_eq!(
                run_chunked(1 << 20, &f, &cuts),
                vec![Outcome::Binary(payload)]
            );
        }
    }

    #[test]
    fn fragmented_message_with_interleaved_ping() {
        let mut input = client_frame(false, 1, b"Hel", K);
        input.extend(client_frame(true, 9, b"p", K));
        input.extend(client_frame(false, 0, "lo é".as_bytes(), K));
        input.extend(client_frame(true, 0, b"!", K));
        let out = same_for_every_split(&input);
        assert_eq!(
            out,
            vec![
                Outcome::Ping(b"p".to_vec()),
                Outcome::Text("Hello é!".into())
            ]
        );
    }

    #[test]
    fn rule_violations_map_to_their_close_codes() {
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (vec![0x81, 0x00], ProtocolError::Unmasked),
            (vec![0xC1, 0x80, 0, 0, 0, 0], ProtocolError::ReservedBits),
            (
                vec![0x83, 0x80, 0, 0, 0, 0],
                ProtocolError::ReservedOpcode(3),
            ),
            (
                vec![0x8B, 0x80, 0, 0, 0, 0],
                ProtocolError::ReservedOpcode(0xB),
            ),
            (
                client_frame(false, 9, b"", K),
                ProtocolError::FragmentedControl,
            ),
            (
                client_frame(true, 9, &[0; 126], K),
                ProtocolError::ControlTooLong,
            ),
            (
                client_frame(true, 0, b"x", K),
                ProtocolError::UnexpectedContinuation,
            ),
            (
                [
                    client_frame(false, 1, b"a", K),
                    client_frame(true, 1, b"b", K),
                ]
                .concat(),
                ProtocolError::ExpectedContinuation,
            ),
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ProtocolError::LengthOverflow,
            ),
            (
                client_frame(true, 1, b"\xff", K),
                ProtocolError::InvalidUtf8,
            ),
            (
                client_frame(true, 8, b"\x03", K),
                ProtocolError::InvalidClose(ClosePayloadError::OneByte),
            ),
            (
                client_frame(true, 8, b"\x03\xec", K),
                ProtocolError::InvalidClose(ClosePayloadError::InvalidCode(1004)),
            ),
            (
                client_frame(true, 8, b"\x03\xe8\xc0", K),
                ProtocolError::InvalidClose(ClosePayloadError::InvalidReason),
            ),
        ];
        for (input, err) in cases {
            let out = same_for_every_split(&input);
            assert_eq!(out.last(), Some(&Outcome::Error(err)), "{input:x?}");
        }
        assert_eq!(ProtocolError::InvalidUtf8.close_code(), 1007);
        assert_eq!(ProtocolError::MessageTooBig.close_code(), 1009);
        assert_eq!(ProtocolError::Unmasked.close_code(), 1002);
    }

    #[test]
    fn oversized_message_is_refused_at_the_header() {
        // Only the header arrives: the refusal must not wait for the payload.
        let f = client_frame(true, 2, &[0; 300], K);
        assert_eq!(
            run_chunked(100, &f[..8], &[]),
            vec![Outcome::Error(ProtocolError::MessageTooBig)]
        );
        // Fragments add up.
        let mut input = client_frame(false, 2, &[0; 60], K);
        input.extend(client_frame(true, 0, &[0; 60], K));
        assert_eq!(
            run_chunked(100, &input, &[]),
            vec![Outcome::Error(ProtocolError::MessageTooBig)]
        );
    }

    #[test]
    fn bad_utf8_fails_mid_frame_before_the_frame_ends() {
        let f = client_frame(true, 1, b"ok\xf4\x90\x80\x80 and more", K);
        // Up to and including the byte that proves it (0x90 after 0xF4).
        let upto = f.len() - b"\x80\x80 and more".len();
        assert_eq!(
            run_chunked(1 << 20, &f[..upto], &[]),
            vec![Outcome::Error(ProtocolError::InvalidUtf8)]
        );
        assert_eq!(run_chunked(1 << 20, &f[..upto - 1], &[]), vec![]);
    }

    #[test]
    fn valid_message_before_a_bad_frame_is_delivered() {
        let mut input = client_frame(true, 1, b"first", K);
        input.extend(client_frame(true, 0x5, b"", K));
        assert_eq!(
            all(&input),
            vec![
                Outcome::Text(b"first".to_vec()),
                Outcome::Error(ProtocolError::ReservedOpcode(5))
            ]
        );
    }

    fn deflated(payload: &[u8]) -> Vec<u8> {
        let mut z = Vec::new();
        crate::ws::deflate::compress(payload, 15, &mut z);
        z
    }

    /// A compressed frame: RSV1 set (RFC 7692 §6).
    fn rsv1(mut f: Vec<u8>) -> Vec<u8> {
        f[0] |= 0x40;
        f
    }

    fn with_deflate(input: &[u8]) -> Vec<Outcome> {
        let whole = run_chunked_with(1 << 20, true, input, &[]);
        for a in 0..=input.len() {
            assert_eq!(
                run_chunked_with(1 << 20, true, input, &[a]),
                whole,
                "split at {a}"
            );
        }
        whole
    }

    #[test]
    fn compressed_message_fragmented_with_a_ping_between() {
        let text = "Hello é, hello hello hello!".repeat(3);
        let z = deflated(text.as_bytes());
        let (a, b) = z.split_at(z.len() / 2);
        let mut input = rsv1(client_frame(false, 1, a, K));
        input.extend(client_frame(true, 9, b"p", K));
        input.extend(client_frame(false, 0, &b[..1], K));
        input.extend(client_frame(true, 0, &b[1..], K));
        // An uncompressed message on the same connection.
        input.extend(client_frame(true, 2, b"plain", K));
        assert_eq!(
            with_deflate(&input),
            vec![
                Outcome::Ping(b"p".to_vec()),
                Outcome::Text(text.into_bytes()),
                Outcome::Binary(b"plain".to_vec()),
            ]
        );
    }

    /// A compressed message whose first fragment is a single byte (too
    /// little to inflate anything, so it waits) keeps its inflater and that
    /// byte across a ping.
    #[test]
    fn a_ping_after_one_compressed_byte_loses_nothing() {
        let text = "hello hello, compressed hello".repeat(4);
        let z = deflated(text.as_bytes());
        let mut input = rsv1(client_frame(false, 1, &z[..1], K));
        input.extend(client_frame(true, 9, b"p", K));
        input.extend(client_frame(true, 0, &z[1..], K));
        assert_eq!(
            with_deflate(&input),
            vec![
                Outcome::Ping(b"p".to_vec()),
                Outcome::Text(text.into_bytes())
            ]
        );
    }

    #[test]
    fn rsv1_rules() {
        let z = deflated(b"x");
        // Not negotiated: RSV1 is a reserved bit like the others (§5.2).
        assert_eq!(
            run_chunked(1 << 20, &rsv1(client_frame(true, 1, &z, K)), &[]),
            vec![Outcome::Error(ProtocolError::ReservedBits)]
        );
        // RFC 7692 §6: never on control frames nor continuations.
        let cases = [
            rsv1(client_frame(true, 9, b"", K)),
            [
                client_frame(false, 1, b"a", K),
                rsv1(client_frame(true, 0, b"b", K)),
            ]
            .concat(),
            [
                rsv1(client_frame(false, 1, &z, K)),
                rsv1(client_frame(true, 0, b"", K)),
            ]
            .concat(),
        ];
        for input in cases {
            assert_eq!(
                with_deflate(&input).last(),
                Some(&Outcome::Error(ProtocolError::MisplacedRsv1))
            );
        }
        // RSV2 and RSV3 stay reserved.
        assert_eq!(
            with_deflate(&[0xA1, 0x80, 0, 0, 0, 0]),
            vec![Outcome::Error(ProtocolError::ReservedBits)]
        );
        assert_eq!(ProtocolError::MisplacedRsv1.close_code(), 1002);
    }

    #[test]
    fn compressed_bomb_is_refused_at_the_limit() {
        let z = deflated(&vec![0u8; 1 << 20]);
        let f = rsv1(client_frame(true, 2, &z, K));
        assert!(f.len() < 2000);
        assert_eq!(
            run_chunked_with(64 * 1024, true, &f, &[]),
            vec![Outcome::Error(ProtocolError::MessageTooBig)]
        );
        // Within the limit, the same message is delivered whole.
        assert_eq!(
            run_chunked_with(1 << 20, true, &f, &[]),
            vec![Outcome::Binary(vec![0; 1 << 20])]
        );
    }

    #[test]
    fn compressed_errors_map_to_their_close_codes() {
        let bad = rsv1(client_frame(true, 2, b"\xff\xff\xff\xff", K));
        assert_eq!(
            with_deflate(&bad),
            vec![Outcome::Error(ProtocolError::InvalidDeflate)]
        );
        assert_eq!(ProtocolError::InvalidDeflate.close_code(), 1007);
        let not_utf8 = rsv1(client_frame(true, 1, &deflated(b"ok \xc0\xaf"), K));
        assert_eq!(
            with_deflate(&not_utf8),
            vec![Outcome::Error(ProtocolError::InvalidUtf8)]
        );
    }

    #[test]
    fn a_small_first_fragment_holds_only_its_bytes() {
        let mut rx = Receiver::new(16 << 20);
        let mut f = client_frame(false, 2, b"7 bytes", K);
        let len = f.len();
        assert_eq!(rx.read(&mut f), (len, Ok(None)));
        assert!(rx.buffered() < 64, "{} bytes held", rx.buffered());
        // Growth doubles from there: 10,000 more fragments, few allocations.
        let mut grows = 0;
        let mut cap = rx.buffered();
        for _ in 0..10_000 {
            let mut f = client_frame(false, 0, b"7 bytes", K);
            assert_eq!(rx.read(&mut f).1, Ok(None));
            grows += usize::from(rx.buffered() != cap);
            cap = rx.buffered();
        }
        assert!(grows <= 20, "{grows} reallocations");
        let mut f = client_frame(true, 0, b"", K);
        match rx.read(&mut f).1 {
            Ok(Some(Event::Binary(p))) => assert_eq!(p.len(), 7 * 10_001),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.buffered(), 0);
    }

    #[test]
    fn in_progress_from_the_first_header_byte_to_the_end_of_the_message() {
        let mut rx = Receiver::new(1 << 20);
        assert!(!rx.in_progress());
        let mut input = client_frame(false, 1, b"Hel", K);
        input.extend(client_frame(true, 9, b"p", K));
        input.extend(client_frame(true, 0, b"lo", K));
        let mut seen = Vec::new();
        for &b in &input {
            let mut byte = [b];
            assert!(rx.read(&mut byte).1.is_ok());
            seen.push(rx.in_progress());
        }
        // In progress after every byte but the last; idle at the end.
        assert!(seen[..input.len() - 1].iter().all(|&p| p), "{seen:?}");
        assert!(!rx.in_progress());
        // A lone control frame is in progress only while it is partial.
        let mut rx = Receiver::new(1 << 20);
        let ping = client_frame(true, 9, b"abc", K);
        let mut head = ping[..3].to_vec();
        assert_eq!(rx.read(&mut head).1, Ok(None));
        assert!(rx.in_progress());
        let mut rest = ping[3..].to_vec();
        assert!(matches!(rx.read(&mut rest).1, Ok(Some(Event::Ping(_)))));
        assert!(!rx.in_progress());
    }

    #[test]
    fn nothing_is_read_after_close() {
        let mut input = client_frame(true, 8, b"\x03\xe8", K);
        input.extend(client_frame(true, 1, b"late", K));
        assert_eq!(
            same_for_every_split(&input),
            vec![Outcome::Close(Some(1000))]
        );
    }
}
