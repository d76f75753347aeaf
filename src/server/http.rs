//! Plain HTTP: the answers the server gives outside WebSocket, the static
//! files' request paths, keep-alive, validators and content negotiation
//! (RFC 9110, RFC 9112), and the Origin check. Sans-IO: heads in, heads out.

use percent_encoding::percent_decode_str;
use std::path::{Component, Path};

pub fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        304 => "Not Modified",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Error",
    }
}

/// A response head after which the connection closes.
pub fn head(status: u16, content_type: &str, len: usize, extra: &str) -> Vec<u8> {
    let mut h = open_head(status, Some(content_type), Some(len as u64), extra);
    h.extend_from_slice(b"Connection: close\r\n\r\n");
    h
}

/// A response head without its final blank line, for the server to end
/// with or without `Connection: close` (see [`finish_head`]).
pub fn open_head(
    status: u16,
    content_type: Option<&str>,
    len: Option<u64>,
    extra: &str,
) -> Vec<u8> {
    let mut h = format!("HTTP/1.1 {status} {}\r\n", status_text(status));
    if let Some(t) = content_type {
        h.push_str("Content-Type: ");
        h.push_str(t);
        h.push_str("\r\n");
    }
    if let Some(n) = len {
        h.push_str(&format!("Content-Length: {n}\r\n"));
    }
    h.push_str(extra);
    h.into_bytes()
}

/// Ends a head from [`open_head`]: the connection stays open for another
/// request (the HTTP/1.1 default, RFC 9112 §9.3) or closes after it.
pub fn finish_head(head: &mut Vec<u8>, keep_alive: bool) {
    if !keep_alive {
        head.extend_from_slice(b"Connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

/// A short plain-text error answer, without the head's final line.
pub fn open_error(status: u16, reason: &str, extra: &str) -> (Vec<u8>, Vec<u8>) {
    let body = format!("{status} {}: {reason}\n", status_text(status));
    let head = open_head(
        status,
        Some("text/plain; charset=utf-8"),
        Some(body.len() as u64),
        extra,
    );
    (head, body.into_bytes())
}

/// A short plain-text error answer with a one-line reason.
pub fn error(status: u16, reason: &str, extra: &str) -> Vec<u8> {
    let body = format!("{status} {}: {reason}\n", status_text(status));
    let mut r = head(status, "text/plain; charset=utf-8", body.len(), extra);
    r.extend_from_slice(body.as_bytes());
    r
}

pub fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// Headers that keep the web client's page to itself. `no-cache`: the
/// browser keeps every file but asks each time whether it is still current
/// (If-None-Match, answered 304 on the same kept-alive connection), so a new
/// version after an upgrade shows at once, under the same fixed names.
pub const PAGE_HEADERS: &str = "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n\
Referrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\n\
Content-Security-Policy: default-src 'self'; connect-src 'self'; img-src 'self' data:; \
style-src 'self'; script-src 'self'; frame-ancestors 'none'\r\n";

/// Why a path is not served.
#[derive(Debug, PartialEq, Eq)]
pub enum StaticError {
    NotFound,
    /// The path tries to leave the static directory.
    Forbidden,
    /// Out of file descriptors: try again later.
    Busy,
}

/// The relative file name a request path asks for: percent-decoded, `/`
/// meaning `index.html`, with no way out of the directory (`..`, absolute
/// parts, backslashes, NUL) and no dot-file (see [`check_dot_components`]).
pub fn file_name(path: &str) -> Result<String, StaticError> {
    let decoded = percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| StaticError::NotFound)?;
    let rel = decoded.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    if rel.contains(['\\', '\0']) {
        return Err(StaticError::Forbidden);
    }
    for c in Path::new(rel).components() {
        if !matches!(c, Component::Normal(_)) {
            return Err(StaticError::Forbidden);
        }
    }
    check_dot_components(rel)?;
    Ok(rel.to_string())
}

/// Dot-files and dot-directories (`.env`, `.git/`, `.htpasswd`) are never
/// served: 404, as if absent. The one exception is a top-level
/// `.well-known/` (RFC 8615; ACME HTTP-01 challenges live there).
pub fn check_dot_components(rel: &str) -> Result<(), StaticError> {
    for (i, part) in rel.split('/').enumerate() {
        if part.starts_with('.') && !(i == 0 && part == ".well-known") {
            return Err(StaticError::NotFound);
        }
    }
    Ok(())
}

/// What plain HTTP looks at in a request besides what the WebSocket
/// handshake parses ([`crate::ws::handshake::Request`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Meta<'a> {
    /// The request has (or may have) a body: `Transfer-Encoding`, or a
    /// `Content-Length` other than 0 (RFC 9112 §6.3).
    pub has_body: bool,
    pub if_none_match: Option<&'a str>,
    pub accept_encoding: Option<&'a str>,
}

impl<'a> Meta<'a> {
    /// Reads the fields from a head that [`crate::ws::handshake::Request`]
    /// has already parsed (so it is well-formed).
    pub fn parse(head: &'a [u8]) -> Meta<'a> {
        let mut headers = [httparse::EMPTY_HEADER; crate::ws::handshake::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let mut meta = Meta::default();
        if req.parse(head).is_err() {
            meta.has_body = true; // unreachable after Request::parse; be safe
            return meta;
        }
        for h in req.headers.iter() {
            let value = std::str::from_utf8(h.value).ok();
            if h.name.eq_ignore_ascii_case("content-length") {
                meta.has_body |= value.map(str::trim) != Some("0");
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                meta.has_body = true;
            } else if h.name.eq_ignore_ascii_case("if-none-match") {
                meta.if_none_match = value;
            } else if h.name.eq_ignore_ascii_case("accept-encoding") {
                // Several fields combine as one list (RFC 9110 §5.3); the
                // last is kept, a browser sends one.
                meta.accept_encoding = value;
            }
        }
        meta
    }

    /// Whether the connection may carry another request after this one:
    /// [`persistent`], and no body (which would otherwise be read as the
    /// next request; it is not skipped, the connection closes instead).
    pub fn keep_alive(&self, minor_version: u8, connection: Option<&[u8]>) -> bool {
        persistent(minor_version, connection) && !self.has_body
    }
}

/// Whether the connection may carry another request after this one (RFC
/// 9112 §9.3): HTTP/1.1 without `Connection: close`. HTTP/1.0 closes
/// (its `keep-alive` extension is not spoken).
pub fn persistent(minor_version: u8, connection: Option<&[u8]>) -> bool {
    minor_version >= 1
        && !connection.is_some_and(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        })
}

/// A content coding the server can send (RFC 9110 §8.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Br,
}

impl Encoding {
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Br => "br",
        }
    }
}

/// The quality value of a `q=` parameter (RFC 9110 §12.4.2), in thousandths.
fn qvalue(v: &str) -> Option<u16> {
    let v = v.trim();
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

/// Picks the coding to send from `Accept-Encoding` (RFC 9110 §12.5.3):
/// the acceptable one with the highest weight among those `offered`
/// (identity always is), preferring the smaller (br, then gzip) on a tie.
/// No header: identity. `None`: nothing offered is acceptable (406); that
/// takes `identity;q=0` or `*;q=0` with no other coding allowed.
pub fn negotiate(accept: Option<&str>, offered: &[Encoding]) -> Option<Encoding> {
    let Some(accept) = accept else {
        return Some(Encoding::Identity);
    };
    let mut star = None;
    let mut listed: [Option<u16>; 3] = [None; 3];
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        if coding.is_empty() {
            continue;
        }
        let mut q = Some(1000);
        for p in parts {
            if let Some((k, v)) = p.split_once('=')
                && k.trim().eq_ignore_ascii_case("q")
            {
                q = qvalue(v);
            }
        }
        let Some(q) = q else { continue }; // a malformed weight: ignored
        let slot = if coding == "*" {
            &mut star
        } else if coding.eq_ignore_ascii_case("identity") {
            &mut listed[0]
        } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            &mut listed[1]
        } else if coding.eq_ignore_ascii_case("br") {
            &mut listed[2]
        } else {
            continue;
        };
        *slot = Some(q);
    }
    let weight = |e: Encoding| -> u16 {
        let i = match e {
            Encoding::Identity => 0,
            Encoding::Gzip => 1,
            Encoding::Br => 2,
        };
        // Identity is acceptable unless excluded (RFC 9110 §12.5.3).
        let default = if e == Encoding::Identity { 1 } else { 0 };
        listed[i].or(star).unwrap_or(default)
    };
    [Encoding::Br, Encoding::Gzip, Encoding::Identity]
        .into_iter()
        .filter(|e| *e == Encoding::Identity || offered.contains(e))
        .map(|e| (weight(e), e))
        .filter(|(w, _)| *w > 0)
        // max_by_key keeps the last of equals: reverse the preference.
        .rev()
        .max_by_key(|(w, _)| *w)
        .map(|(_, e)| e)
}

/// Whether `If-None-Match` names `etag` (RFC 9110 §13.1.2: weak
/// comparison, `*` matches any current representation).
pub fn none_match_hits(if_none_match: &str, etag: &str) -> bool {
    let opaque = |t: &str| -> String { t.trim().trim_start_matches("W/").to_string() };
    let want = opaque(etag);
    if_none_match
        .split(',')
        .any(|t| t.trim() == "*" || opaque(t) == want)
}

/// Cross-site WebSocket hijacking defence: a browser always sends `Origin`,
/// and a page from another site must not ride on the user's access to this
/// one. Accept no Origin (non-browser clients), an Origin whose host is the
/// request's Host, or one listed (`*` lists all).
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.trim().trim_end_matches('/');
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
    if let Some(host) = host
        && !origin_host.is_empty()
        && origin_host.eq_ignore_ascii_case(host.trim())
    {
        return true;
    }
    allowed.iter().any(|a| {
        let a = a.trim().trim_end_matches('/');
        a == "*"
            || a.eq_ignore_ascii_case(origin)
            || (!origin_host.is_empty() && a.eq_ignore_ascii_case(origin_host))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused() {
        for p in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/a/../../b",
            "/%2E%2E%2fx",
            "//etc/passwd",
            "/a\\..\\b",
            "/./x",
        ] {
            assert!(
                file_name(p).is_err() || !file_name(p).unwrap().contains(".."),
                "{p}"
            );
        }
        assert_eq!(file_name("/%2e%2e/etc/passwd"), Err(StaticError::Forbidden));
        assert_eq!(file_name("/"), Ok("index.html".into()));
        assert_eq!(file_name("/app.js"), Ok("app.js".into()));
    }

    #[test]
    fn dot_paths_are_not_found() {
        for p in [
            "/.env",
            "/.git/config",
            "/a/.htpasswd",
            "/%2eenv",
            "/a/.well-known/x",
        ] {
            assert_eq!(file_name(p), Err(StaticError::NotFound), "{p}");
        }
        assert_eq!(
            file_name("/.well-known/acme-challenge/tok"),
            Ok(".well-known/acme-challenge/tok".into())
        );
        assert_eq!(file_name("/.well-known/.x"), Err(StaticError::NotFound));
        assert_eq!(file_name("/a.b/c.txt"), Ok("a.b/c.txt".into()));
    }

    #[test]
    fn keep_alive_rules() {
        assert!(persistent(1, None));
        assert!(persistent(1, Some(b"keep-alive")));
        assert!(!persistent(1, Some(b"close")));
        assert!(!persistent(1, Some(b"Upgrade, Close")));
        assert!(!persistent(0, None));
        assert!(!persistent(0, Some(b"keep-alive")));
    }

    #[test]
    fn accept_encoding_is_negotiated() {
        use Encoding::*;
        let all = [Gzip, Br];
        let pick = |a: Option<&str>| negotiate(a, &all);
        assert_eq!(pick(None), Some(Identity));
        assert_eq!(pick(Some("")), Some(Identity));
        assert_eq!(pick(Some("gzip, deflate, br, zstd")), Some(Br));
        assert_eq!(pick(Some("gzip")), Some(Gzip));
        assert_eq!(pick(Some("x-gzip")), Some(Gzip));
        assert_eq!(pick(Some("br;q=0.5, gzip")), Some(Gzip));
        assert_eq!(pick(Some("br;q=0.5, gzip;q=0.5")), Some(Br));
        assert_eq!(pick(Some("gzip;q=0, br;q=0")), Some(Identity));
        assert_eq!(pick(Some("*")), Some(Br));
        assert_eq!(pick(Some("identity;q=0")), None);
        assert_eq!(pick(Some("*;q=0")), None);
        assert_eq!(pick(Some("*;q=0, identity")), Some(Identity));
        assert_eq!(pick(Some("identity;q=0, gzip")), Some(Gzip));
        assert_eq!(pick(Some("identity;q=0.9, gzip;q=0.8")), Some(Identity));
        assert_eq!(pick(Some("GZIP;Q=1.000")), Some(Gzip));
        // Malformed weights are ignored, not taken as 1.
        assert_eq!(pick(Some("br;q=2, gzip;q=x")), Some(Identity));
        // Nothing compressed on offer (a --static-dir file).
        assert_eq!(negotiate(Some("br, gzip"), &[]), Some(Identity));
        assert_eq!(negotiate(Some("br, identity;q=0"), &[]), None);
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        assert!(none_match_hits("\"abc\"", "\"abc\""));
        assert!(none_match_hits("W/\"abc\"", "\"abc\""));
        assert!(none_match_hits("\"x\", \"abc\"", "\"abc\""));
        assert!(none_match_hits("*", "\"abc\""));
        assert!(!none_match_hits("\"abc-br\"", "\"abc\""));
        assert!(!none_match_hits("", "\"abc\""));
    }

    #[test]
    fn meta_finds_bodies_and_validators() {
        let m = Meta::parse(
            b"GET / HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"x\"\r\nAccept-Encoding: br\r\n\r\n",
        );
        assert_eq!(m.if_none_match, Some("\"x\""));
        assert_eq!(m.accept_encoding, Some("br"));
        assert!(!m.has_body);
        assert!(!Meta::parse(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").has_body);
        assert!(Meta::parse(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").has_body);
        assert!(Meta::parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").has_body);
    }

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        assert!(origin_allowed(None, Some("a:8080"), &none));
        assert!(origin_allowed(Some("http://a:8080"), Some("A:8080"), &none));
        assert!(!origin_allowed(
            Some("http://evil.example"),
            Some("a:8080"),
            &none
        ));
        assert!(!origin_allowed(Some("null"), Some("a:8080"), &none));
        assert!(origin_allowed(
            Some("https://chat.example"),
            Some("a"),
            &["https://chat.example".into()]
        ));
        assert!(origin_allowed(Some("http://x"), Some("a"), &["*".into()]));
    }
}
