//! Plain HTTP: the answers the server gives outside WebSocket, the static
//! files of the web client, and the Origin check.

use percent_encoding::percent_decode_str;
use std::path::{Component, Path};

pub fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A response head; the connection closes after every plain HTTP answer.
pub fn head(status: u16, content_type: &str, len: usize, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
         Connection: close\r\n{extra}\r\n",
        status_text(status)
    )
    .into_bytes()
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

/// Headers that keep the web client's page to itself.
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
