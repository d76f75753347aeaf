//! The static server over real sockets: HTTP/1.1 keep-alive and its
//! bounds, pipelining, validators (ETag, If-None-Match → 304) and content
//! negotiation (gzip, identity), each against a real `wschat`.
mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;

const INDEX: &[u8] = include_bytes!("../static/index.html");
const APP_JS: &[u8] = include_bytes!("../static/app.js");

/// The value of header `name` in a response head (case-insensitive name).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads one response: status, head, and its body (by `Content-Length`;
/// none for 304 and for HEAD, when `head_only`).
fn read_response(s: &mut TcpStream, head_only: bool) -> (u16, String, Vec<u8>) {
    let (status, head) = read_http_response(s);
    assert_ne!(status, 0, "no response: {head:?}");
    if status == 304 || head_only {
        return (status, head, Vec::new());
    }
    let len: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length: {head}"));
    let mut body = vec![0; len];
    s.read_exact(&mut body).expect("the whole body");
    (status, head, body)
}

/// Sends `GET path` with extra header lines and reads the answer.
fn get(s: &mut TcpStream, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n").as_bytes())
        .unwrap();
    read_response(s, false)
}

fn closes(head: &str) -> bool {
    header(head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = Server::start(&[]);
    let mut s = connect(server.addr);
    let (status, head, body) = get(&mut s, "/", "");
    assert_eq!(status, 200, "{head}");
    assert!(!closes(&head), "{head}");
    assert_eq!(body, INDEX);
    let (status, head, body) = get(&mut s, "/app.js", "");
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, APP_JS);
    // A 404 and /healthz keep it open too.
    let (status, head, _) = get(&mut s, "/nope.png", "");
    assert_eq!(status, 404, "{head}");
    assert!(!closes(&head), "{head}");
    let (status, _, body) = get(&mut s, "/healthz", "");
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));
    // HEAD: the head alone, then the next answer.
    s.write_all(b"HEAD /app.js HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (status, head, _) = read_response(&mut s, true);
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "content-length"),
        Some(APP_JS.len().to_string().as_str())
    );
    let (status, _, body) = get(&mut s, "/healthz", "");
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut s = connect(server.addr);
    s.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n\
          GET /app.js HTTP/1.1\r\nHost: localhost\r\n\r\n\
          GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n\
          GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut s, false).2, b"ok\n");
    assert_eq!(read_response(&mut s, false).2, APP_JS);
    assert_eq!(read_response(&mut s, false).0, 404);
    let (status, head, body) = read_response(&mut s, false);
    assert_eq!(status, 200);
    assert!(closes(&head), "{head}");
    assert_eq!(body, INDEX);
    assert!(wait_eof(&mut s));
}

#[test]
fn the_request_bound_closes_after_the_last() {
    let server = Server::start(&["--keepalive-requests", "3"]);
    let mut s = connect(server.addr);
    for i in 1..=3 {
        let (status, head, _) = get(&mut s, "/healthz", "");
        assert_eq!(status, 200);
        assert_eq!(closes(&head), i == 3, "request {i}: {head}");
    }
    assert!(wait_eof(&mut s), "open after the last request allowed");
}

#[test]
fn an_idle_kept_alive_connection_is_closed() {
    let server = Server::start(&["--keepalive-timeout", "300ms", "--handshake-timeout", "60s"]);
    let mut s = connect(server.addr);
    assert_eq!(get(&mut s, "/healthz", "").0, 200);
    assert_eq!(get(&mut s, "/healthz", "").0, 200);
    // Nothing more is sent: the server ends the connection (long before
    // the handshake timeout, which the safety net would outlast).
    assert!(wait_eof(&mut s), "the idle connection stayed open");
}

#[test]
fn connection_close_and_http_1_0_close() {
    let server = Server::start(&[]);
    let mut s = connect(server.addr);
    assert!(!closes(&get(&mut s, "/", "").1));
    let (status, head, body) = get(&mut s, "/healthz", "Connection: close\r\n");
    assert_eq!(status, 200);
    assert!(closes(&head), "{head}");
    assert_eq!(body, b"ok\n");
    assert!(wait_eof(&mut s));

    let mut s = connect(server.addr);
    assert!(!closes(&get(&mut s, "/", "").1));
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let (status, head, body) = read_response(&mut s, false);
    assert_eq!(status, 200);
    assert!(closes(&head), "{head}");
    assert_eq!(body, b"ok\n");
    assert!(wait_eof(&mut s));
}

#[test]
fn a_request_with_a_body_is_answered_and_closed() {
    let server = Server::start(&[]);
    let mut s = connect(server.addr);
    assert!(!closes(&get(&mut s, "/", "").1));
    // Were the body not accounted for, "GET /healthz..." inside it would
    // be answered as a request of its own.
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    s.write_all(
        format!(
            "GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let (status, head, body) = read_response(&mut s, false);
    assert_eq!(status, 200);
    assert!(closes(&head), "{head}");
    assert_eq!(body, INDEX);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "answered the body as a request: {rest:?}");

    let mut s = connect(server.addr);
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .unwrap();
    let (status, head, _) = read_response(&mut s, false);
    assert_eq!(status, 200);
    assert!(closes(&head), "{head}");
    assert!(wait_eof(&mut s));
}

#[test]
fn upgrade_after_a_kept_alive_request() {
    let server = Server::start(&[]);
    let mut s = connect(server.addr);
    assert_eq!(get(&mut s, "/", "").0, 200);
    let (status, head) = upgrade_on(&mut s, server.addr, "/echo", "");
    assert_eq!(status, 101, "{head}");
    s.write_all(&frame(true, 0x1, b"after keep-alive")).unwrap();
    let (fin, op, payload) = read_frame(&mut s).unwrap();
    assert!(fin);
    assert_eq!((op, payload.as_slice()), (0x1, &b"after keep-alive"[..]));
}

#[test]
fn if_none_match_gets_304_for_the_version_held() {
    let server = Server::start(&[]);
    let mut s = connect(server.addr);
    let (_, head, _) = get(&mut s, "/app.js", "");
    let etag = header(&head, "etag").expect("an ETag").to_string();
    assert_eq!(header(&head, "cache-control"), Some("no-cache"));
    let (status, head, _) = get(&mut s, "/app.js", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(status, 304, "{head}");
    assert_eq!(header(&head, "etag"), Some(etag.as_str()));
    assert!(header(&head, "content-length").is_none(), "{head}");
    // Weak comparison, and a list.
    let (status, _, _) = get(
        &mut s,
        "/app.js",
        &format!("If-None-Match: \"x\", W/{etag}\r\n"),
    );
    assert_eq!(status, 304);
    // Another version: the whole file, on the same connection.
    let (status, _, body) = get(&mut s, "/app.js", "If-None-Match: \"stale\"\r\n");
    assert_eq!(status, 200);
    assert_eq!(body, APP_JS);
    // Another file's tag is not this one's.
    let (status, _, _) = get(&mut s, "/", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(status, 200);

    // --static-dir: the tag follows the file on disk.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("etag-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), "one\n").unwrap();
    let server = Server::start(&["--static-dir", dir.to_str().unwrap()]);
    let mut s = connect(server.addr);
    let (_, head, _) = get(&mut s, "/a.txt", "");
    let etag = header(&head, "etag").expect("an ETag").to_string();
    let inm = format!("If-None-Match: {etag}\r\n");
    assert_eq!(get(&mut s, "/a.txt", &inm).0, 304);
    std::fs::write(dir.join("a.txt"), "two, longer\n").unwrap();
    let (status, head, body) = get(&mut s, "/a.txt", &inm);
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"two, longer\n");
    assert_ne!(header(&head, "etag"), Some(etag.as_str()));
    let _ = std::fs::remove_dir_all(&dir);
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("gzip");
    out
}

#[test]
fn accept_encoding_chooses_gzip_or_identity() {
    let server = Server::start(&[]);
    let mut s = connect(server.addr);
    let mut ask = |accept: &str| {
        let extra = if accept.is_empty() {
            String::new()
        } else {
            format!("Accept-Encoding: {accept}\r\n")
        };
        let (status, head, body) = get(&mut s, "/app.js", &extra);
        let coding = header(&head, "content-encoding").map(str::to_string);
        assert!(
            status != 200 || header(&head, "vary").is_some_and(|v| v.contains("Accept-Encoding")),
            "{head}"
        );
        (
            status,
            coding,
            body,
            header(&head, "etag").map(str::to_string),
        )
    };
    let (status, coding, body, gz_tag) = ask("gzip");
    assert_eq!((status, coding.as_deref()), (200, Some("gzip")));
    assert!(body.len() < APP_JS.len());
    assert_eq!(gunzip(&body), APP_JS);

    // The built-in client is kept gzipped only: brotli is not offered.
    let (_, coding, body, tag) = ask("gzip, deflate, br");
    assert_eq!(coding.as_deref(), Some("gzip"));
    assert_eq!(gunzip(&body), APP_JS);
    assert_eq!(tag, gz_tag);

    assert_eq!(ask("br;q=0.4, gzip;q=0.5").1.as_deref(), Some("gzip"));
    // No header, or gzip refused: identity, inflated from the gzip copy,
    // with an ETag of its own.
    let (_, coding, body, id_tag) = ask("");
    assert_eq!((coding, body.as_slice()), (None, APP_JS));
    assert_ne!(gz_tag, id_tag, "each coding has its own ETag");
    assert_eq!(ask("gzip;q=0, br;q=0").1, None);
    let (_, coding, body, _) = ask("br");
    assert_eq!(
        (coding, body.as_slice()),
        (None, APP_JS),
        "inflated again: the kept copy"
    );
    // Identity refused: a coding that is accepted, or 406.
    assert_eq!(ask("identity;q=0, gzip").1.as_deref(), Some("gzip"));
    assert_eq!(ask("identity;q=0").0, 406);
    // 406 kept the connection: one more.
    assert_eq!(ask("gzip").0, 200);
}
