//! Plain HTTP: the answers the server gives outside WebSocket, the static
//! files of the web client, and the Origin check.

use percent_encoding::percent_decode_str;
use std::path::{Component, Path, PathBuf};

/// The web client, built into the binary so that one file is all a user
/// copies to a Raspberry Pi.
const EMBEDDED: &[(&str, &[u8])] = &[
    ("index.html", include_bytes!("../../static/index.html")),
    ("app.css", include_bytes!("../../static/app.css")),
    ("app.js", include_bytes!("../../static/app.js")),
    ("favicon.svg", include_bytes!("../../static/favicon.svg")),
];

/// Largest file served from `--static-dir`.
const MAX_STATIC_FILE: u64 = 16 << 20;

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

/// A file to serve.
pub enum Body {
    Embedded(&'static [u8]),
    Loaded(Vec<u8>),
}

/// Why a path is not served.
#[derive(Debug, PartialEq, Eq)]
pub enum StaticError {
    NotFound,
    /// The path tries to leave the static directory.
    Forbidden,
}

/// The relative file name a request path asks for: percent-decoded, `/`
/// meaning `index.html`, with no way out of the directory (`..`, absolute
/// parts, backslashes, NUL).
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
    Ok(rel.to_string())
}

/// Looks a file up in the built-in client, or under `dir`.
pub fn lookup(dir: Option<&Path>, path: &str) -> Result<(Body, &'static str), StaticError> {
    let name = file_name(path)?;
    let ctype = content_type(&name);
    let Some(dir) = dir else {
        return EMBEDDED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| (Body::Embedded(b), ctype))
            .ok_or(StaticError::NotFound);
    };
    // Symlinks are resolved and the result must still lie inside the directory.
    let root = dir.canonicalize().map_err(|_| StaticError::NotFound)?;
    let full: PathBuf = root
        .join(&name)
        .canonicalize()
        .map_err(|_| StaticError::NotFound)?;
    if !full.starts_with(&root) {
        return Err(StaticError::Forbidden);
    }
    let meta = std::fs::metadata(&full).map_err(|_| StaticError::NotFound)?;
    if !meta.is_file() || meta.len() > MAX_STATIC_FILE {
        return Err(StaticError::NotFound);
    }
    let data = std::fs::read(&full).map_err(|_| StaticError::NotFound)?;
    Ok((Body::Loaded(data), ctype))
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
    fn embedded_files_are_found() {
        assert!(lookup(None, "/").is_ok());
        assert!(lookup(None, "/app.js").is_ok());
        assert!(lookup(None, "/nope").is_err());
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
