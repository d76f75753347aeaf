//! permessage-deflate (RFC 7692), sans-IO: the offer and the answer of the
//! handshake, and message compression and decompression, slices in and
//! slices out.
//!
//! wschat always answers `server_no_context_takeover` and
//! `client_no_context_takeover` (§7.1.1.1, §7.1.1.2: a server may add both
//! whether or not they were offered), so that no zlib state lives between
//! messages: a broadcast is compressed once and the same bytes go to every
//! deflate peer, and an idle connection holds no compressor or inflater.
//! Both come from a small per-thread pool while a message is being
//! compressed or inflated.

use super::deflate_short;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;

/// The extension's name (RFC 7692 §7).
pub const NAME: &str = "permessage-deflate";

/// §7.2.1: the empty stored block a sync flush ends with, removed by the
/// sender and appended again by the receiver (§7.2.2).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The smallest LZ77 window our compressor can keep to. zlib (and zlib-rs)
/// cannot deflate raw data with an 8-bit window (it uses 9 instead, which
/// may refer 512 bytes back), so an offer of `server_max_window_bits=8` is
/// declined rather than answered with a window we would not honour.
pub const MIN_SERVER_WINDOW_BITS: u8 = 9;

/// The parameters of one `permessage-deflate` offer or answer (§7.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// §7.1.1.1.
    pub server_no_context_takeover: bool,
    /// §7.1.1.2.
    pub client_no_context_takeover: bool,
    /// §7.1.2.1: 8 to 15.
    pub server_max_window_bits: Option<u8>,
    /// §7.1.2.2: `Some(None)` when offered without a value (the client
    /// supports the parameter), `Some(Some(n))` with one.
    pub client_max_window_bits: Option<Option<u8>>,
}

/// Why an offer is declined (§7.1: the server "MUST decline" each of these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decline {
    /// A parameter not defined for an offer.
    UnknownParameter,
    /// A parameter with an invalid value (or a value where none is allowed).
    InvalidValue,
    /// A parameter given more than once.
    Repeated,
    /// A configuration the server does not support (an 8-bit server window).
    Unsupported,
}

/// §7.1.2.1, §7.1.2.2: "a decimal integer value without leading zeroes
/// between 8 to 15, inclusive".
fn window_bits(v: &[u8]) -> Result<u8, Decline> {
    match v {
        [d @ b'8'..=b'9'] => Ok(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Ok(10 + d - b'0'),
        _ => Err(Decline::InvalidValue),
    }
}

impl Params {
    /// Parses the parameters of one `permessage-deflate` element (§7.1).
    pub fn parse(ext: &Extension<'_>) -> Result<Params, Decline> {
        let mut p = Params::default();
        let mut seen = [false; 4];
        for (name, value) in &ext.params {
            let i = match name.to_ascii_lowercase().as_slice() {
                b"server_no_context_takeover" => 0,
                b"client_no_context_takeover" => 1,
                b"server_max_window_bits" => 2,
                b"client_max_window_bits" => 3,
                _ => return Err(Decline::UnknownParameter),
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(Decline::Repeated);
            }
            match (i, value.as_deref()) {
                // §7.1.1.1, §7.1.1.2: "This parameter has no value."
                (0, None) => p.server_no_context_takeover = true,
                (1, None) => p.client_no_context_takeover = true,
                (2, Some(v)) => p.server_max_window_bits = Some(window_bits(v)?),
                (3, None) => p.client_max_window_bits = Some(None),
                (3, Some(v)) => p.client_max_window_bits = Some(Some(window_bits(v)?)),
                _ => return Err(Decline::InvalidValue),
            }
        }
        Ok(p)
    }

    /// The element as it goes on the wire: `permessage-deflate; ...`.
    pub fn emit(&self) -> String {
        let mut s = String::from(NAME);
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if let Some(n) = self.server_max_window_bits {
            s.push_str(&format!("; server_max_window_bits={n}"));
        }
        match self.client_max_window_bits {
            Some(Some(n)) => s.push_str(&format!("; client_max_window_bits={n}")),
            Some(None) => s.push_str("; client_max_window_bits"),
            None => {}
        }
        s
    }

    /// The answer to an acceptable offer, or why it is declined.
    ///
    /// - both `*_no_context_takeover` are always answered (§7.1.1.1,
    ///   §7.1.1.2 let a server add them unoffered);
    /// - `server_max_window_bits`, when offered, is answered with the same
    ///   value (§7.1.2.1: "the same or smaller"), and our compressor keeps
    ///   to it; 8 is declined (see [`MIN_SERVER_WINDOW_BITS`]);
    /// - `client_max_window_bits` is never answered: our inflater has a
    ///   32 KiB window, which decodes whatever window the client uses
    ///   (§7.1.2.2 lets the server leave it out).
    pub fn answer(offer: &Params) -> Result<Params, Decline> {
        if offer
            .server_max_window_bits
            .is_some_and(|n| n < MIN_SERVER_WINDOW_BITS)
        {
            return Err(Decline::Unsupported);
        }
        Ok(Params {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: offer.server_max_window_bits,
            client_max_window_bits: None,
        })
    }

    /// The LZ77 window our compressor uses under these parameters.
    pub fn compress_window_bits(&self) -> u8 {
        self.server_max_window_bits.unwrap_or(15)
    }
}

/// One element of a `Sec-WebSocket-Extensions` list (RFC 6455 §9.1): a
/// name and its parameters, values unquoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension<'a> {
    pub name: &'a [u8],
    pub params: Vec<(&'a [u8], Option<Vec<u8>>)>,
}

/// The header value does not follow the grammar of RFC 6455 §9.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntaxError;

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn ows(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn token(&mut self) -> Result<&'a [u8], SyntaxError> {
        let start = self.i;
        while self.s.get(self.i).is_some_and(|&b| is_tchar(b)) {
            self.i += 1;
        }
        if self.i == start {
            return Err(SyntaxError);
        }
        Ok(&self.s[start..self.i])
    }

    /// RFC 9110 §5.6.4 `quoted-string`, unescaped.
    fn quoted(&mut self) -> Result<Vec<u8>, SyntaxError> {
        self.i += 1; // the opening quote
        let mut v = Vec::new();
        loop {
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(v);
                }
                Some(b'\\') => {
                    let &b = self.s.get(self.i + 1).ok_or(SyntaxError)?;
                    v.push(b);
                    self.i += 2;
                }
                Some(&b) => {
                    v.push(b);
                    self.i += 1;
                }
                None => return Err(SyntaxError),
            }
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }
}

/// Parses one `Sec-WebSocket-Extensions` value (RFC 6455 §9.1):
/// `extension *( "," extension )`, `extension = name *( ";" param )`,
/// `param = token [ "=" ( token / quoted-string ) ]`. Empty list elements
/// are skipped (RFC 9110 §5.6.1). A quoted value must unquote to a token
/// (RFC 6455 §9.1: "the value after quoted-string unescaping MUST conform to the
/// 'token' ABNF").
pub fn parse_extensions(value: &[u8]) -> Result<Vec<Extension<'_>>, SyntaxError> {
    let mut sc = Scanner { s: value, i: 0 };
    let mut out = Vec::new();
    loop {
        sc.ows();
        if sc.i == value.len() {
            return Ok(out);
        }
        if sc.eat(b',') {
            continue;
        }
        let mut ext = Extension {
            name: sc.token()?,
            params: Vec::new(),
        };
        loop {
            sc.ows();
            if !sc.eat(b';') {
                break;
            }
            sc.ows();
            let name = sc.token()?;
            sc.ows();
            let v = if sc.eat(b'=') {
                sc.ows();
                if sc.s.get(sc.i) == Some(&b'"') {
                    let v = sc.quoted()?;
                    if v.is_empty() || !v.iter().all(|&b| is_tchar(b)) {
                        return Err(SyntaxError);
                    }
                    Some(v)
                } else {
                    Some(sc.token()?.to_vec())
                }
            } else {
                None
            };
            ext.params.push((name, v));
        }
        out.push(ext);
        sc.ows();
        if sc.i < value.len() && !sc.eat(b',') {
            return Err(SyntaxError);
        }
    }
}

/// Picks the first acceptable `permessage-deflate` offer among the
/// `Sec-WebSocket-Extensions` values, in order (RFC 7692 §5: the offers are
/// in the client's order of preference), and returns its answer. A value
/// that does not parse offers nothing; other extensions are ignored.
pub fn negotiate(values: &[&[u8]]) -> Option<Params> {
    values
        .iter()
        .filter_map(|v| parse_extensions(v).ok())
        .flatten()
        .filter(|e| e.name.eq_ignore_ascii_case(NAME.as_bytes()))
        .find_map(|e| Params::parse(&e).and_then(|p| Params::answer(&p)).ok())
}

// ---- compression -------------------------------------------------------

/// zlib's default level: chat-sized JSON compresses 10–20% better than at
/// level 1, at a cost that is paid once per broadcast.
const LEVEL: u32 = 6;
/// Compressors kept for the next message: one per window size in use, and
/// all but one window size is rare (a compressor is about 300 KiB).
const COMPRESSOR_POOL: usize = 2;
/// Inflaters kept (about 40 KiB each once their window is allocated).
const INFLATER_POOL: usize = 4;

thread_local! {
    static COMPRESSORS: RefCell<Vec<(u8, Compress)>> = const { RefCell::new(Vec::new()) };
    static INFLATERS: RefCell<Vec<Decompress>> = const { RefCell::new(Vec::new()) };
}

/// Compresses one whole message (§7.2.1): DEFLATE with a sync flush, the
/// trailing `00 00 ff ff` removed. Appends to `out`. No context is kept
/// (`server_no_context_takeover`), so the bytes are the same whoever
/// receives them.
pub fn compress(payload: &[u8], window_bits: u8, out: &mut Vec<u8>) {
    let bits = window_bits.clamp(MIN_SERVER_WINDOW_BITS, 15);
    if payload.len() <= SHORT_MAX {
        deflate_short::compress(payload, bits, out);
        return;
    }
    zlib_compress(payload, bits, out);
}

/// Messages up to this size are compressed by our own encoder
/// ([`deflate_short`]), whose fresh state costs nothing; longer ones by
/// zlib, whose dynamic codes and longer chains pay there.
pub const SHORT_MAX: usize = 4096;

/// [`compress`] through zlib (flate2), for any size.
pub fn zlib_compress(payload: &[u8], bits: u8, out: &mut Vec<u8>) {
    let mut c = COMPRESSORS
        .with_borrow_mut(|pool| {
            let i = pool.iter().position(|(b, _)| *b == bits)?;
            Some(pool.swap_remove(i).1)
        })
        .unwrap_or_else(|| {
            // flate2 keeps zlib's state on the heap: moving it is cheap.
            Compress::new_with_window_bits(Compression::new(LEVEL), false, bits)
        });
    let start = out.len();
    out.reserve(payload.len() / 2 + 64);
    let base = c.total_in();
    loop {
        let done = (c.total_in() - base) as usize;
        // zlib fails only on a corrupted stream state, which it never
        // reaches here; should it, the message goes in stored blocks.
        if c.compress_vec(&payload[done..], out, FlushCompress::Sync)
            .is_err()
        {
            out.truncate(start);
            stored(payload, out);
            return;
        }
        if (c.total_in() - base) as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out[start..].ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    c.reset();
    COMPRESSORS.with_borrow_mut(|pool| {
        if pool.len() < COMPRESSOR_POOL {
            pool.push((bits, c));
        }
    });
}

/// `payload` as DEFLATE stored blocks (RFC 1951 §3.2.4), ending as a sync
/// flush does once its tail is removed (§7.2.1): valid for any window.
pub(super) fn stored(payload: &[u8], out: &mut Vec<u8>) {
    for chunk in payload.chunks(usize::from(u16::MAX)) {
        let len = chunk.len() as u16;
        // BFINAL 0, BTYPE 00, padding; then LEN and NLEN, little-endian.
        out.push(0);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    // The empty stored block whose LEN and NLEN are the removed tail.
    out.push(0);
}

/// Frees the pooled compressors and inflaters and the short-message
/// encoder's tables (the server does so when it trims the heap): an idle
/// server holds no compression state.
pub fn release_pools() {
    deflate_short::release_scratch();
    COMPRESSORS.with_borrow_mut(|p| *p = Vec::new());
    INFLATERS.with_borrow_mut(|p| *p = Vec::new());
}

/// Why a compressed message cannot be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// Not DEFLATE data (or a reference past the window).
    Invalid,
    /// The inflated message would pass the limit.
    TooBig,
}

/// The inflater of one message in progress (§7.2.2): taken from the pool
/// when a compressed message starts, given back when it ends.
#[derive(Debug)]
pub struct Inflater {
    d: Decompress,
}

/// First output reserve of a message: small, so that the inflated size, not
/// the compressed one, drives the allocation.
const FIRST_OUT: usize = 4096;

impl Inflater {
    pub fn take() -> Inflater {
        let d = INFLATERS
            .with_borrow_mut(Vec::pop)
            // A 32 KiB window decodes every client window (§7.1.2.2).
            .unwrap_or_else(|| Decompress::new(false));
        Inflater { d }
    }

    /// Returns the inflater to the pool, reset for the next message
    /// (`client_no_context_takeover`: nothing is carried over).
    pub fn give_back(mut self) {
        self.d.reset(false);
        INFLATERS.with_borrow_mut(|pool| {
            if pool.len() < INFLATER_POOL {
                pool.push(self.d);
            }
        });
    }

    /// Inflates `input`, appending to `out`, which never grows past
    /// `limit + 1` bytes: the output is produced in bounded steps, and a
    /// message that inflates past `limit` fails as soon as it does, before
    /// the memory for the rest is spent (a decompression bomb).
    pub fn inflate(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), InflateError> {
        loop {
            if out.len() == out.capacity() {
                let room = (out.capacity().max(FIRST_OUT / 2) * 2)
                    .min(limit.saturating_add(1))
                    .saturating_sub(out.len())
                    .max(1);
                out.reserve_exact(room);
            }
            let (in0, out0) = (self.d.total_in(), out.len());
            let status = self
                .d
                .decompress_vec(input, out, FlushDecompress::None)
                .map_err(|_| InflateError::Invalid)?;
            input = &input[(self.d.total_in() - in0) as usize..];
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            let progress = self.d.total_in() != in0 || out.len() != out0;
            if status == Status::StreamEnd {
                // §7.2.3.4: a sender may end a message with a BFINAL block;
                // what follows (our appended tail at least) starts afresh.
                self.d.reset(false);
                if input.is_empty() {
                    return Ok(());
                }
            } else if !progress && out.len() < out.capacity() {
                // Room to spare and nothing moved: done if all the input
                // was taken, stuck otherwise.
                return if input.is_empty() {
                    Ok(())
                } else {
                    Err(InflateError::Invalid)
                };
            }
            // Room left over means zlib holds nothing more for this input.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

/// Inflates a whole compressed message payload (the tail appended), for
/// tests and the load generator.
pub fn inflate_message(payload: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut inf = Inflater::take();
    let mut out = Vec::new();
    let r = inf
        .inflate(payload, &mut out, limit)
        .and_then(|()| inf.inflate(&TAIL, &mut out, limit));
    inf.give_back();
    r.map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(s: &str) -> Result<Params, Decline> {
        let exts = parse_extensions(s.as_bytes()).expect("parses");
        assert_eq!(exts.len(), 1);
        Params::parse(&exts[0])
    }

    #[test]
    fn params_round_trip() {
        for s in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=8",
            "permessage-deflate; client_max_window_bits=15",
        ] {
            let p = offer(s).unwrap();
            assert_eq!(p.emit(), s);
            assert_eq!(offer(&p.emit()), Ok(p));
        }
    }

    #[test]
    fn syntax_of_the_header() {
        let e = parse_extensions(
            b" foo , permessage-deflate ;client_max_window_bits ; server_max_window_bits = \"1\\2\",,x-webkit-deflate-frame",
        )
        .unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].name, b"foo");
        assert_eq!(e[1].params[0], (&b"client_max_window_bits"[..], None));
        assert_eq!(
            e[1].params[1],
            (&b"server_max_window_bits"[..], Some(b"12".to_vec()))
        );
        for bad in [
            "permessage-deflate;",
            "permessage-deflate; a=",
            "permessage-deflate; a=\"unterminated",
            "permessage-deflate; a=\"not a token\"",
            "permessage-deflate x",
            "; a",
        ] {
            assert_eq!(parse_extensions(bad.as_bytes()), Err(SyntaxError), "{bad}");
        }
        assert_eq!(parse_extensions(b"  ,  "), Ok(vec![]));
    }

    #[test]
    fn bad_offers_are_declined() {
        use Decline::*;
        for (s, why) in [
            ("permessage-deflate; foo", UnknownParameter),
            (
                "permessage-deflate; server_no_context_takeover=1",
                InvalidValue,
            ),
            (
                "permessage-deflate; client_no_context_takeover=\"x\"",
                InvalidValue,
            ),
            ("permessage-deflate; server_max_window_bits", InvalidValue),
            ("permessage-deflate; server_max_window_bits=7", InvalidValue),
            (
                "permessage-deflate; server_max_window_bits=16",
                InvalidValue,
            ),
            (
                "permessage-deflate; server_max_window_bits=010",
                InvalidValue,
            ),
            (
                "permessage-deflate; client_max_window_bits=0x9",
                InvalidValue,
            ),
            (
                "permessage-deflate; client_max_window_bits; client_max_window_bits=9",
                Repeated,
            ),
            (
                "permessage-deflate; server_no_context_takeover; SERVER_NO_CONTEXT_TAKEOVER",
                Repeated,
            ),
        ] {
            assert_eq!(offer(s), Err(why), "{s}");
        }
        assert_eq!(
            Params::answer(&offer("permessage-deflate; server_max_window_bits=8").unwrap()),
            Err(Unsupported)
        );
    }

    #[test]
    fn the_first_acceptable_offer_is_answered() {
        // Chromium's offer.
        let a = negotiate(&[b"permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(
            a.emit(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        // A bad first offer (an 8-bit server window), a good second one.
        let a = negotiate(&[
            b"permessage-deflate; server_max_window_bits=8; server_no_context_takeover",
            b"x-foo, permessage-deflate; server_max_window_bits=10, permessage-deflate",
        ])
        .unwrap();
        assert_eq!(a.server_max_window_bits, Some(10));
        assert!(a.emit().ends_with("server_max_window_bits=10"));
        // A malformed value offers nothing, the next value still does.
        assert!(negotiate(&[b"permessage-deflate; x=\"", b"permessage-deflate"]).is_some());
        assert_eq!(negotiate(&[b"permessage-deflate; unknown"]), None);
        assert_eq!(negotiate(&[b"x-webkit-deflate-frame"]), None);
        assert_eq!(negotiate(&[]), None);
    }

    #[test]
    fn compress_then_inflate() {
        let text =
            br#"{"type":"message","room":"general","nick":"alice","text":"hello hello hello"}"#;
        for bits in [9, 12, 15] {
            let mut z = Vec::new();
            compress(text, bits, &mut z);
            assert!(!z.ends_with(&TAIL), "tail stripped (§7.2.1)");
            assert!(z.len() < text.len());
            assert_eq!(inflate_message(&z, 1 << 20).unwrap(), text);
        }
        // §7.2.1: no reference reaches further back than the agreed window.
        // Random bytes repeated 1000 bytes apart: a 15-bit window finds the
        // repeat, a 9-bit one (512 bytes) cannot, so nothing compresses.
        let mut x = 0x2545_f491_u32;
        let block: Vec<u8> = (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let twice = [&block[..], &block[..]].concat();
        let mut wide = Vec::new();
        compress(&twice, 15, &mut wide);
        let mut narrow = Vec::new();
        compress(&twice, 9, &mut narrow);
        assert!(
            wide.len() < 1100 && narrow.len() > 1900,
            "{} {}",
            wide.len(),
            narrow.len()
        );
        assert_eq!(inflate_message(&narrow, 4096).unwrap(), twice);
        let mut z = Vec::new();
        compress(b"", 15, &mut z);
        assert_eq!(inflate_message(&z, 10).unwrap(), b"");
        // Independent of the message before (no context takeover).
        let mut a = Vec::new();
        compress(text, 15, &mut a);
        let mut b = Vec::new();
        compress(text, 15, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn the_stored_fallback_inflates() {
        for len in [0, 1, 65535, 65536, 70000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut z = Vec::new();
            stored(&data, &mut z);
            assert_eq!(inflate_message(&z, 1 << 20).unwrap(), data, "{len}");
        }
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let big = vec![b'a'; 1 << 20];
        let mut z = Vec::new();
        compress(&big, 15, &mut z);
        assert!(z.len() < 8 * 1024);
        assert_eq!(inflate_message(&z, big.len()).unwrap().len(), big.len());
        let mut inf = Inflater::take();
        let mut out = Vec::new();
        assert_eq!(inf.inflate(&z, &mut out, 1000), Err(InflateError::TooBig));
        assert!(out.capacity() <= 1001, "never more than the limit");
        assert_eq!(
            inflate_message(b"\xff\xff\xff", 100),
            Err(InflateError::Invalid)
        );
    }

    #[test]
    fn a_message_ending_in_a_final_block_inflates() {
        // Raw DEFLATE of "hi" in one final fixed-Huffman block, as a sender
        // without a sync flush may produce (RFC 7692 §7.2.3.4).
        let mut c = Compress::new(Compression::new(6), false);
        let mut z = Vec::with_capacity(64);
        c.compress_vec(b"hi", &mut z, FlushCompress::Finish)
            .unwrap();
        assert_eq!(inflate_message(&z, 100).unwrap(), b"hi");
    }
}
