//! Client side of the wire: a cheap PRNG for mask keys, word-at-a-time
//! masking, masked frame encoding, a minimal decoder for (unmasked) server
//! frames, the opening handshake and `ws://` URL parsing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use base64::Engine;
use sha1::{Digest, Sha1};
use wschat::ws::frame::{MAX_HEADER_LEN, OpCode, encode_header};

/// xorshift64*: plenty for mask keys and handshake nonces. RFC 6455 §5.3
/// asks for unpredictable keys to defeat proxy cache poisoning; a benchmark
/// that only ever talks to loopback does not need a CSPRNG.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        // Any non-zero state works; mix the seed so nearby seeds diverge.
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn mask_key(&mut self) -> [u8; 4] {
        ((self.next_u64() >> 32) as u32).to_ne_bytes()
    }
}

/// XORs `buf` with the 4-byte `key`, the key's phase starting at `buf[0]`
/// (RFC 6455 §5.3). Eight bytes at a time; the compiler vectorises the loop.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let k8 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ k8).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the key phase is 0 again.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Appends one whole masked client frame (RFC 6455 §5.1: a client MUST
/// mask every frame it sends).
pub fn push_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], key: [u8; 4]) {
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut hdr, true, opcode, payload.len() as u64, Some(key));
    out.reserve(n + payload.len());
    out.extend_from_slice(&hdr[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key);
}

/// One complete server frame found at the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RFC 7692 §6: a compressed message's first frame.
    pub rsv1: bool,
    pub opcode: OpCode,
    /// Offset of the payload from the start of the frame.
    pub payload_start: usize,
    pub payload_len: usize,
}

impl Frame {
    pub fn total_len(&self) -> usize {
        self.payload_start + self.payload_len
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// RSV1–3 set without a negotiated extension (RFC 6455 §5.2).
    ReservedBits,
    /// A reserved opcode (RFC 6455 §5.2).
    BadOpcode(u8),
    /// RFC 6455 §5.1: a client closes on a masked frame from the server.
    Masked,
    /// RFC 6455 §5.5: control frames are unfragmented, payload ≤ 125.
    BadControl,
    /// Larger than this client is willing to buffer.
    TooLarge(u64),
}

/// Decodes the frame at the front of `buf`: `Ok(None)` while it is not all
/// there yet (header and payload).
pub fn decode_frame(buf: &[u8], max_payload: usize) -> Result<Option<Frame>, DecodeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    // RSV1 is permessage-deflate's (RFC 7692 §6); the caller checks it was
    // negotiated.
    if b0 & 0x30 != 0 {
        return Err(DecodeError::ReservedBits);
    }
    let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(DecodeError::BadOpcode(b0 & 0x0F))?;
    if b1 & 0x80 != 0 {
        return Err(DecodeError::Masked);
    }
    let fin = b0 & 0x80 != 0;
    let (len, hlen) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(DecodeError::BadControl);
    }
    if len > max_payload as u64 {
        return Err(DecodeError::TooLarge(len));
    }
    let len = len as usize;
    if buf.len() < hlen + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin,
        rsv1: b0 & 0x40 != 0,
        opcode,
        payload_start: hlen,
        payload_len: len,
    }))
}

/// A parsed `ws://host:port/path` loopback target.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// Value of the `Host` header.
    pub host: String,
    /// Path and query, e.g. `/ws?x=1`.
    pub path: String,
}

impl Target {
    /// The path with an extra query parameter appended.
    pub fn path_with_query(&self, kv: &str) -> String {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        format!("{}{}{}", self.path, sep, kv)
    }
}

/// Parses a `ws://` URL. Only loopback targets are accepted: this tool is
/// a local benchmark, not a way to load someone else's server.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let end = h
            .find(']')
            .ok_or_else(|| format!("{url}: bad IPv6 literal"))?;
        let port = h[end + 1..].strip_prefix(':').unwrap_or("80");
        (&h[..end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (authority, "80"),
        }
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{url}: bad port {port:?}"))?;
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| format!("{url}: host must be an IP literal or localhost"))?
    };
    if !ip.is_loopback() {
        return Err(format!("{url}: only loopback targets are allowed"));
    }
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host: authority.to_string(),
        path: path.to_string(),
    })
}

/// A fresh `Sec-WebSocket-Key` (16 random bytes, base64: RFC 6455 §4.1).
pub fn new_key(rng: &mut XorShift) -> String {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&rng.next_u64().to_ne_bytes());
    raw[8..].copy_from_slice(&rng.next_u64().to_ne_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The `Sec-WebSocket-Accept` the server must answer for `key` (RFC 6455 §4.2.2).
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Appends the opening handshake request (RFC 6455 §4.1).
/// With `deflate`, offers what Chromium offers (RFC 7692 §7.1.2.2).
pub fn push_request(out: &mut Vec<u8>, host: &str, path: &str, key: &str, deflate: bool) {
    use std::io::Write;
    let ext = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
    );
}

/// Whether a response head accepted permessage-deflate.
pub fn accepts_deflate(head: &[u8]) -> bool {
    find(
        &head.to_ascii_lowercase(),
        b"\nsec-websocket-extensions: permessage-deflate",
    )
    .is_some()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    Malformed,
    /// Not `101 Switching Protocols`; carries the status code.
    Status(u16),
    BadAccept,
    TooLong,
}

/// Parses the server's handshake response at the front of `buf`; on success
/// returns the length of the head (the bytes after it are frames).
pub fn parse_response(buf: &[u8], accept: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 24];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > 16 * 1024 {
                Err(HandshakeError::TooLong)
            } else {
                Ok(None)
            }
        }
        Err(_) => Err(HandshakeError::Malformed),
        Ok(httparse::Status::Complete(n)) => {
            let code = resp.code.unwrap_or(0);
            if code != 101 {
                return Err(HandshakeError::Status(code));
            }
            let ok = resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("sec-websocket-accept")
                    && h.value.trim_ascii() == accept.as_bytes()
            });
            if ok {
                Ok(Some(n))
            } else {
                Err(HandshakeError::BadAccept)
            }
        }
    }
}

/// Position of `needle` in `hay` (first-byte scan; the needles are short).
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        let off = hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        i += off;
        if &hay[i + 1..i + needle.len()] == rest {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Parses the leading ASCII digits of `s` (no sign); `None` if there are none.
pub fn parse_digits(s: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        n += 1;
    }
    (n > 0).then_some(v)
}

/// Appends the decimal form of `v` without allocating.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_mask(buf: &mut [u8], key: [u8; 4]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }

    #[test]
    fn word_mask_matches_bytewise_mask_for_every_length_and_offset() {
        let key = [0x12, 0x34, 0xAB, 0xCD];
        let data: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37)).collect();
        for start in 0..8 {
            for len in 0..(data.len() - start) {
                let mut a = data[start..start + len].to_vec();
                let mut b = a.clone();
                apply_mask(&mut a, key);
                naive_mask(&mut b, key);
                assert_eq!(a, b, "start {start} len {len}");
                apply_mask(&mut a, key);
                assert_eq!(a, &data[start..start + len]);
            }
        }
    }

    #[test]
    fn pushed_frame_is_masked_and_unmasks_to_payload() {
        let payload = vec![b'z'; 300];
        let key = [1, 2, 3, 4];
        let mut out = Vec::new();
        push_frame(&mut out, OpCode::Binary, &payload, key);
        assert_eq!(out[0], 0x82);
        assert_eq!(out[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 300);
        assert_eq!(&out[4..8], &key);
        let mut body = out[8..].to_vec();
        assert_ne!(body, payload);
        naive_mask(&mut body, key);
        assert_eq!(body, payload);
    }

    fn server_frame(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut hdr = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut hdr, fin, op, payload.len() as u64, None);
        let mut v = hdr[..n].to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decoder_waits_for_whole_frame_then_reports_it() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let payload = vec![7u8; len];
            let f = server_frame(OpCode::Text, true, &payload);
            for cut in [0, 1, 2, 3, 9, f.len() - 1] {
                if cut < f.len() {
                    assert_eq!(
                        decode_frame(&f[..cut], 1 << 20),
                        Ok(None),
                        "len {len} cut {cut}"
                    );
                }
            }
            let mut two = f.clone();
            two.extend_from_slice(&server_frame(OpCode::Ping, true, b"p"));
            let fr = decode_frame(&two, 1 << 20).unwrap().unwrap();
            assert!(fr.fin);
            assert_eq!(fr.opcode, OpCode::Text);
            assert_eq!(fr.payload_len, len);
            assert_eq!(fr.total_len(), f.len());
            let next = decode_frame(&two[fr.total_len()..], 1 << 20)
                .unwrap()
                .unwrap();
            assert_eq!(next.opcode, OpCode::Ping);
        }
    }

    #[test]
    fn decoder_rejects_protocol_violations() {
        let mut masked = server_frame(OpCode::Text, true, b"hi");
        masked[1] |= 0x80;
        assert_eq!(decode_frame(&masked, 100), Err(DecodeError::Masked));
        let mut rsv = server_frame(OpCode::Text, true, b"hi");
        rsv[0] |= 0x20;
        assert_eq!(decode_frame(&rsv, 100), Err(DecodeError::ReservedBits));
        rsv[0] ^= 0x60;
        assert!(decode_frame(&rsv, 100).unwrap().unwrap().rsv1);
        assert_eq!(
            decode_frame(&[0x83, 0], 100),
            Err(DecodeError::BadOpcode(3))
        );
        let frag_ping = server_frame(OpCode::Ping, false, b"");
        assert_eq!(decode_frame(&frag_ping, 100), Err(DecodeError::BadControl));
        let big = server_frame(OpCode::Binary, true, &[0; 200]);
        assert_eq!(decode_frame(&big, 100), Err(DecodeError::TooLarge(200)));
    }

    #[test]
    fn url_parsing_is_loopback_only() {
        let t = parse_url("ws://127.0.0.1:9000/ws?a=b").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(t.path_with_query("nick=x"), "/ws?a=b&nick=x");
        assert_eq!(parse_url("ws://[::1]:80/echo").unwrap().addr.port(), 80);
        assert!(parse_url("ws://10.0.0.1:80/").is_err());
        assert!(parse_url("wss://127.0.0.1/").is_err());
    }

    #[test]
    fn handshake_accept_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x00";
        let n = parse_response(resp, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .unwrap()
            .unwrap();
        assert_eq!(&resp[n..], b"\x81\x00");
    }

    #[test]
    fn find_and_digits() {
        let m = br#"{"type":"message","text":"123456 xxx"}"#;
        let i = find(m, br#""text":""#).unwrap();
        assert_eq!(parse_digits(&m[i + 8..]), Some(123456));
        assert_eq!(find(m, b"nope"), None);
        let mut v = Vec::new();
        push_u64(&mut v, 0);
        push_u64(&mut v, 18446744073709551615);
        assert_eq!(v, b"018446744073709551615");
    }
}
