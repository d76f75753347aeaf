//! The opening handshake, server side (RFC 6455 §4.2).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// §1.3: the GUID appended to the client's key before hashing.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Most request headers parsed; more is answered 431.
pub const MAX_HEADERS: usize = 32;

/// §4.2.2 item 5.4: `Sec-WebSocket-Accept` is base64(SHA-1(key ++ GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID.as_bytes());
    BASE64.encode(h.finalize())
}

/// Finds the end of a request head as its bytes arrive. Each call resumes
/// where the last one stopped, so a head dribbled in byte by byte costs
/// linear work in total (tungstenite's CVE-2023-43669 rescanned it all).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadScanner {
    scanned: usize,
}

impl HeadScanner {
    /// Returns the length of the head, blank line included, once `buf`
    /// holds it. `buf` must be the same buffer, only ever appended to.
    pub fn scan(&mut self, buf: &[u8]) -> Option<usize> {
        let mut i = self.scanned;
        while i < buf.len() {
            if buf[i] == b'\n' {
                // RFC 9112 §2.2 lets a recipient accept a bare LF line end.
                if i >= 1 && buf[i - 1] == b'\n' {
                    return Some(i + 1);
                }
                if i >= 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n' {
                    return Some(i + 1);
                }
            }
            i += 1;
        }
        self.scanned = i;
        None
    }
}

/// Why a request head cannot be used, with the HTTP status it calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// Not parseable as HTTP/1.x.
    Malformed,
    /// More than [`MAX_HEADERS`] header fields.
    TooManyHeaders,
}

/// The parts of a request head the server looks at.
#[derive(Debug, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target, query included.
    pub target: &'a str,
    /// The minor version of HTTP/1.x.
    pub minor_version: u8,
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub upgrade: Option<&'a [u8]>,
    pub connection: Option<&'a [u8]>,
    pub version: Option<&'a [u8]>,
    pub key: Option<&'a [u8]>,
    /// Set when a header that must appear once appeared twice.
    pub duplicate: Option<&'static str>,
    /// Every `Sec-WebSocket-Protocol` value, comma lists unsplit.
    pub protocols: Vec<&'a [u8]>,
    /// Every `Forwarded` (RFC 7239) and `X-Forwarded-For` value, in order:
    /// read only from a trusted proxy (the server's business, not RFC 6455's).
    pub forwarded: Vec<&'a [u8]>,
    pub x_forwarded_for: Vec<&'a [u8]>,
    /// Every `Sec-WebSocket-Extensions` value, in order (RFC 6455 §9.1).
    pub extensions: Vec<&'a [u8]>,
}

impl<'a> Request<'a> {
    /// Parses a complete head as found by [`HeadScanner`].
    pub fn parse(head: &'a [u8]) -> Result<Request<'a>, RequestError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(RequestError::Malformed),
            Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
            Err(_) => return Err(RequestError::Malformed),
        }
        let mut out = Request {
            method: req.method.unwrap_or(""),
            target: req.path.unwrap_or(""),
            minor_version: req.version.unwrap_or(0),
            ..Request::default()
        };
        for h in req.headers.iter() {
            let name = h.name;
            let slot: &mut Option<&'a [u8]> = if name.eq_ignore_ascii_case("sec-websocket-protocol")
            {
                out.protocols.push(h.value);
                continue;
            } else if name.eq_ignore_ascii_case("forwarded") {
                out.forwarded.push(h.value);
                continue;
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                out.x_forwarded_for.push(h.value);
                continue;
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
                out.extensions.push(h.value);
                continue;
            } else if name.eq_ignore_ascii_case("host") {
                let v = std::str::from_utf8(h.value).map_err(|_| RequestError::Malformed)?;
                if out.host.replace(v).is_some() {
                    out.duplicate = Some("Host");
                }
                continue;
            } else if name.eq_ignore_ascii_case("origin") {
                let v = std::str::from_utf8(h.value).map_err(|_| RequestError::Malformed)?;
                if out.origin.replace(v).is_some() {
                    out.duplicate = Some("Origin");
                }
                continue;
            } else if name.eq_ignore_ascii_case("upgrade") {
                &mut out.upgrade
            } else if name.eq_ignore_ascii_case("connection") {
                &mut out.connection
            } else if name.eq_ignore_ascii_case("sec-websocket-version") {
                &mut out.version
            } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                &mut out.key
            } else {
                continue;
            };
            if slot.replace(h.value).is_some() {
                out.duplicate = Some("a WebSocket header");
            }
        }
        Ok(out)
    }

    /// The path, without the query.
    pub fn path(&self) -> &'a str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query string, if any.
    pub fn query(&self) -> Option<&'a str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// Whether the client asks for a WebSocket at all (an `Upgrade` header).
    pub fn wants_upgrade(&self) -> bool {
        self.upgrade.is_some()
    }

    /// Whether the client offered `name` in `Sec-WebSocket-Protocol` (§4.1).
    pub fn offers_protocol(&self, name: &str) -> bool {
        self.protocols
            .iter()
            .any(|v| tokens(v).any(|t| t == name.as_bytes()))
    }
}

/// Why an upgrade request is refused (§4.2.1), each with its HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// §4.1: "The method of the request MUST be GET".
    NotGet,
    /// §4.1: "the HTTP version MUST be at least 1.1".
    NotHttp11,
    /// §4.2.1 item 2: a `Host` header field.
    NoHost,
    /// §4.2.1 item 3: `Upgrade` must include the "websocket" keyword.
    NotWebSocket,
    /// §4.2.1 item 4: `Connection` must include the "Upgrade" token.
    NoConnectionUpgrade,
    /// §4.2.1 item 5: a `Sec-WebSocket-Key` that decodes to 16 bytes.
    BadKey,
    /// §4.2.2 item 4: anything but version 13 gets 426 and the version we speak.
    BadVersion,
    /// A header that must appear once appeared more than once.
    Duplicate(&'static str),
}

impl HandshakeError {
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::NotGet => 405,
            HandshakeError::BadVersion => 426,
            _ => 400,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            HandshakeError::NotGet => "WebSocket upgrades must use GET",
            HandshakeError::NotHttp11 => "WebSocket upgrades need HTTP/1.1",
            HandshakeError::NoHost => "missing Host header",
            HandshakeError::NotWebSocket => "Upgrade header must be websocket",
            HandshakeError::NoConnectionUpgrade => "Connection header must include upgrade",
            HandshakeError::BadKey => "Sec-WebSocket-Key must be base64 of 16 bytes",
            HandshakeError::BadVersion => "unsupported Sec-WebSocket-Version (13 is spoken)",
            HandshakeError::Duplicate(_) => "a header appears more than once",
        }
    }
}

/// Comma-separated tokens of a header value, trimmed (RFC 9110 §5.6.1).
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Checks a request against §4.2.1 and returns the `Sec-WebSocket-Accept`
/// value for the 101 answer.
pub fn check_upgrade(req: &Request<'_>) -> Result<String, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::NotGet);
    }
    if req.minor_version < 1 {
        return Err(HandshakeError::NotHttp11);
    }
    if let Some(which) = req.duplicate {
        return Err(HandshakeError::Duplicate(which));
    }
    if req.host.is_none_or(|h| h.trim().is_empty()) {
        return Err(HandshakeError::NoHost);
    }
    let upgrade = req.upgrade.unwrap_or(b"");
    if !tokens(upgrade).any(|t| t.eq_ignore_ascii_case(b"websocket")) {
        return Err(HandshakeError::NotWebSocket);
    }
    let connection = req.connection.unwrap_or(b"");
    if !tokens(connection).any(|t| t.eq_ignore_ascii_case(b"upgrade")) {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if req.version.map(|v| v.trim_ascii()) != Some(b"13") {
        return Err(HandshakeError::BadVersion);
    }
    let key = req
        .key
        .map(|k| k.trim_ascii())
        .ok_or(HandshakeError::BadKey)?;
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => Ok(accept_key(key)),
        _ => Err(HandshakeError::BadKey),
    }
}

/// The 101 answer (§4.2.2 item 5), with the selected subprotocol and the
/// accepted extensions (§9.1), if any.
pub fn response_101(accept: &str, protocol: Option<&str>, extensions: Option<&str>) -> Vec<u8> {
    let mut r = Vec::with_capacity(160);
    r.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    r.extend_from_slice(accept.as_bytes());
    if let Some(p) = protocol {
        r.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        r.extend_from_slice(p.as_bytes());
    }
    if let Some(e) = extensions {
        r.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        r.extend_from_slice(e.as_bytes());
    }
    r.extend_from_slice(b"\r\n\r\n");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn accept_key_of_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_good_request_is_accepted() {
        let req = Request::parse(GOOD).unwrap();
        assert_eq!(
            check_upgrade(&req),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into())
        );
        assert!(req.offers_protocol("superchat") && !req.offers_protocol("super"));
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.origin, Some("http://example.com"));
        assert!(req.extensions.is_empty());
    }

    #[test]
    fn extension_offers_are_collected_in_order() {
        let text = String::from_utf8(GOOD.to_vec()).unwrap().replace(
            "Origin",
            "Sec-WebSocket-Extensions: x-foo\r\nsec-websocket-extensions: permessage-deflate\r\nOrigin",
        );
        let req = Request::parse(text.as_bytes()).unwrap();
        assert_eq!(req.extensions, vec![&b"x-foo"[..], b"permessage-deflate"]);
        let r = response_101("k", None, Some("permessage-deflate"));
        assert!(r.ends_with(b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"));
    }

    fn refused(from: &str, to: &str) -> HandshakeError {
        let text = String::from_utf8(GOOD.to_vec()).unwrap().replace(from, to);
        check_upgrade(&Request::parse(text.as_bytes()).unwrap()).unwrap_err()
    }

    #[test]
    fn each_rule_is_checked() {
        assert_eq!(refused("GET", "POST"), HandshakeError::NotGet);
        assert_eq!(refused("HTTP/1.1", "HTTP/1.0"), HandshakeError::NotHttp11);
        assert_eq!(
            refused("Host: server.example.com\r\n", ""),
            HandshakeError::NoHost
        );
        assert_eq!(
            refused("Upgrade: websocket", "Upgrade: h2c"),
            HandshakeError::NotWebSocket
        );
        assert_eq!(
            refused("keep-alive, Upgrade", "keep-alive"),
            HandshakeError::NoConnectionUpgrade
        );
        assert_eq!(
            refused("Version: 13", "Version: 8"),
            HandshakeError::BadVersion
        );
        assert_eq!(
            refused("Sec-WebSocket-Version: 13\r\n", ""),
            HandshakeError::BadVersion
        );
        assert_eq!(
            refused("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ=="),
            HandshakeError::BadKey
        );
        assert_eq!(
            refused("dGhlIHNhbXBsZSBub25jZQ==", "!!!"),
            HandshakeError::BadKey
        );
        assert_eq!(
            refused(
                "Origin",
                "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nOrigin"
            ),
            HandshakeError::Duplicate("a WebSocket header")
        );
        assert_eq!(HandshakeError::BadVersion.status(), 426);
        // Token matching is case-insensitive.
        assert!(
            check_upgrade(
                &Request::parse(
                    String::from_utf8(GOOD.to_vec())
                        .unwrap()
                        .replace("keep-alive, Upgrade", "UPGRADE")
                        .as_bytes()
                )
                .unwrap()
            )
            .is_ok()
        );
    }

    #[test]
    fn host_or_origin_not_utf8_is_malformed() {
        // RFC 6455 §8.1 applies "during the opening handshake" too: the
        // fields read as text must be UTF-8, or the request is a 400.
        let text = String::from_utf8(GOOD.to_vec()).unwrap();
        for name in ["Host: ", "Origin: "] {
            let mut bytes = text.clone().into_bytes();
            let at = text.find(name).unwrap() + name.len();
            bytes.insert(at, 0xff);
            assert_eq!(
                Request::parse(&bytes).err(),
                Some(RequestError::Malformed),
                "{name}"
            );
        }
    }

    #[test]
    fn scanner_finds_the_head_end_in_any_chunking() {
        for split in 0..GOOD.len() {
            let mut s = HeadScanner::default();
            assert_eq!(s.scan(&GOOD[..split]), None);
            assert_eq!(s.scan(GOOD), Some(GOOD.len()));
        }
        let mut s = HeadScanner::default();
        assert_eq!(s.scan(b"GET / HTTP/1.1\n\nrest"), Some(16));
    }

    #[test]
    fn scanning_byte_by_byte_is_linear() {
        // Each call looks only at new bytes: the scanned mark advances.
        let mut s = HeadScanner::default();
        let big = vec![b'a'; 4096];
        for n in 1..=big.len() {
            assert_eq!(s.scan(&big[..n]), None);
            assert_eq!(s.scanned, n);
        }
    }
}
