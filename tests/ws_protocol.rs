//! RFC 6455 over real sockets: the opening handshake and its refusals, the
//! plain HTTP routes, echo of every length form, fragmentation, control
//! frames, every malformed frame with its close code, and the closing
//! handshake down to the end of the TCP connection.
mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

// ---- helpers ---------------------------------------------------------------

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The accept value of [`KEY`] (RFC 6455 §1.3).
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn send(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).expect("write to server");
}

/// A close frame payload: the code, then the reason.
fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Reads everything up to the server's end of the stream and returns it.
/// Panics if the 10 s safety net runs out first (the server kept it open).
fn read_until_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return rest,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return rest,
            Err(e) => panic!("the server did not end the connection: {e}"),
        }
    }
}

/// The very next frame must be a close with `code` (nothing before it) and
/// the server must then end the TCP connection with nothing after it,
/// without waiting for our close (RFC 6455 §7.1.7: it failed the connection).
fn expect_fail(s: &mut TcpStream, code: u16) {
    let (fin, op, payload) = read_frame(s).expect("a close frame");
    assert!(fin, "close frames are never fragmented");
    assert_eq!(
        op, OP_CLOSE,
        "expected a close, got opcode {op}: {payload:?}"
    );
    assert!(payload.len() >= 2, "close without a status code");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
    assert!(payload.len() <= 125, "control frame over 125 bytes");
    assert!(
        std::str::from_utf8(&payload[2..]).is_ok(),
        "close reason must be UTF-8"
    );
    let rest = read_until_eof(s);
    assert!(rest.is_empty(), "bytes after the close frame: {rest:?}");
}

/// Upgrades to /echo, writes `bytes` in one write and expects the server to
/// fail the connection with `code`.
fn fails_with(server: &Server, bytes: &[u8], code: u16) {
    let mut s = raw_ws(server.addr, "/echo", "");
    send(&mut s, bytes);
    expect_fail(&mut s, code);
}

/// A whole HTTP response: status, head, body (the server closes after each).
fn http_full(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = connect(addr);
    s.write_all(request).unwrap();
    let (status, head) = read_http_response(&mut s);
    let body = read_until_eof(&mut s);
    (status, head, body)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    http_full(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
}

/// The value of header `name` in a response head (case-insensitive name).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An upgrade request to /echo whose header lines are `lines` (each
/// without its CRLF), e.g. to leave one out or change it.
fn upgrade_request(lines: &[&str]) -> String {
    let mut r = String::from("GET /echo HTTP/1.1\r\n");
    for l in lines {
        r.push_str(l);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

const GOOD_LINES: [&str; 5] = [
    "Host: localhost",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
];

/// GOOD_LINES with the line starting with `prefix` replaced (or removed
/// when `with` is None).
fn lines_with(prefix: &str, with: Option<&'static str>) -> Vec<&'static str> {
    let mut found = false;
    let out = GOOD_LINES
        .iter()
        .filter_map(|l| {
            if l.starts_with(prefix) {
                found = true;
                with
            } else {
                Some(*l)
            }
        })
        .collect();
    assert!(found, "no line starts with {prefix}");
    out
}

/// Expects an error answer with `status`, a plain-text one-line reason, and
/// the connection closed after it. Returns the head.
fn refused(server: &Server, request: &[u8], status: u16) -> String {
    let (got, head, body) = http_full(server.addr, request);
    assert_eq!(got, status, "{head}");
    let body = String::from_utf8(body).expect("UTF-8 body");
    assert_eq!(
        body.lines().count(),
        1,
        "one-line reason expected: {body:?}"
    );
    assert!(
        body.starts_with(&format!("{status} ")),
        "reason names the status: {body:?}"
    );
    assert_eq!(
        header(&head, "content-length").and_then(|v| v.parse().ok()),
        Some(body.len()),
        "{head}"
    );
    head
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32 * 31 + seed as u32) as u8)
        .collect()
}

// ---- echo with an independent client ---------------------------------------

#[test]
fn echo_text_binary_and_empty() {
    let server = Server::start(&[]);
    let mut ws = client(&server, "/echo");
    for m in [
        Message::text("hello, wörld ✓"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text(""),
        Message::binary(Vec::new()),
    ] {
        ws.send(m.clone()).unwrap();
        assert_eq!(ws.read().unwrap(), m);
    }
}

#[test]
fn echo_every_length_form_and_a_mebibyte() {
    let server = Server::start(&[]);
    let mut ws = client(&server, "/echo");
    for (i, len) in [125usize, 126, 65535, 65536, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let data = pattern(len, i as u8);
        ws.send(Message::binary(data.clone())).unwrap();
        match ws.read().unwrap() {
            Message::Binary(got) => assert!(got[..] == data[..], "binary echo of {len} bytes"),
            other => panic!("expected binary of {len} bytes, got {other:?}"),
        }
        let text = "é".repeat(len / 2) + &"x".repeat(len % 2);
        ws.send(Message::text(text.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(text), "text of {len}");
    }
}

#[test]
fn ping_is_answered_with_the_same_payload() {
    let server = Server::start(&[]);
    let mut ws = client(&server, "/echo");
    for payload in [&b""[..], b"x", &[7u8; 125]] {
        ws.send(Message::Ping(payload.to_vec().into())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Pong(payload.to_vec().into()));
    }
}

#[test]
fn unsolicited_pong_is_ignored() {
    let server = Server::start(&[]);
    let mut ws = client(&server, "/echo");
    ws.send(Message::Pong(b"unasked".to_vec().into())).unwrap();
    ws.send(Message::text("after")).unwrap();
    // The pong gets no answer: the next thing back is the echo.
    assert_eq!(ws.read().unwrap(), Message::text("after"));
}

#[test]
fn client_close_is_echoed_then_the_server_closes_tcp() {
    let server = Server::start(&[]);
    let mut ws = client(&server, "/echo");
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .unwrap();
    match ws.read().unwrap() {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("expected the close echoed, got {other:?}"),
    }
    // RFC 6455 §7.1.1: the server closes the TCP connection first.
    let rest = read_until_eof(ws.get_mut());
    assert!(rest.is_empty(), "bytes after the close: {rest:?}");
}

#[test]
fn raw_close_handshake_echoes_the_code_and_ends_tcp() {
    let server = Server::start(&[]);
    let mut s = raw_ws(server.addr, "/echo", "");
    send(&mut s, &frame(true, OP_CLOSE, &close_body(1000, b"bye")));
    let (fin, op, payload) = read_frame(&mut s).unwrap();
    assert!(fin);
    assert_eq!(op, OP_CLOSE);
    assert_eq!(payload[..2], 1000u16.to_be_bytes());
    assert!(read_until_eof(&mut s).is_empty());

    // An empty close is answered with an empty close (§5.5.1: no code to echo).
    let mut s = raw_ws(server.addr, "/echo", "");
    send(&mut s, &frame(true, OP_CLOSE, b""));
    assert_eq!(read_frame(&mut s).unwrap(), (true, OP_CLOSE, vec![]));
    assert!(read_until_eof(&mut s).is_empty());
}

// ---- fragmentation and framing over a raw socket -----------------------------

#[test]
fn fragmented_messages_are_reassembled_around_a_ping() {
    let server = Server::start(&[]);
    let mut s = raw_ws(server.addr, "/echo", "");
    let mut bytes = frame(false, OP_TEXT, b"Hel");
    bytes.extend(frame(false, OP_CONT, b"lo w\xc3")); // 'ö' cut in two
    bytes.extend(frame(true, OP_PING, b"mid"));
    bytes.extend(frame(false, OP_CONT, b""));
    bytes.extend(frame(true, OP_CONT, b"\xb6rld"));
    send(&mut s, &bytes);
    // The ping is answered at once, before the message completes.
    assert_eq!(
        read_frame(&mut s).unwrap(),
        (true, OP_PONG, b"mid".to_vec())
    );
    assert_eq!(
        read_frame(&mut s).unwrap(),
        (true, OP_TEXT, "Hello wörld".as_bytes().to_vec())
    );

    // Fragments sent in separate writes; a binary message this time.
    send(&mut s, &frame(false, OP_BINARY, &[1, 2]));
    send(&mut s, &frame(false, OP_CONT, &[3]));
    send(&mut s, &frame(true, OP_CONT, &[4, 5]));
    assert_eq!(
        read_frame(&mut s).unwrap(),
        (true, OP_BINARY, vec![1, 2, 3, 4, 5])
    );
}

#[test]
fn frames_in_the_same_write_as_the_handshake_are_not_lost() {
    let server = Server::start(&[]);
    let mut s = connect(server.addr);
    let mut bytes = upgrade_request(&GOOD_LINES).into_bytes();
    bytes.extend(frame(true, OP_TEXT, b"right behind"));
    bytes.extend(frame(true, OP_PING, b"p"));
    send(&mut s, &bytes);
    let (status, head) = read_http_response(&mut s);
    // The 101 answer comes first, whole: nothing may be sent ahead of it.
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    assert_eq!(status, 101, "{head}");
    assert_eq!(header(&head, "sec-websocket-accept"), Some(ACCEPT));
    // The pong may go ahead of the echo (§5.5.2: "as soon as practical").
    let mut got = vec![read_frame(&mut s).unwrap(), read_frame(&mut s).unwrap()];
    got.sort();
    assert_eq!(
        got,
        vec![
            (true, OP_TEXT, b"right behind".to_vec()),
            (true, OP_PONG, b"p".to_vec()),
        ]
    );
}

#[test]
fn a_head_dribbled_byte_by_byte_still_upgrades() {
    let server = Server::start(&[]);
    let mut s = connect(server.addr);
    for b in upgrade_request(&GOOD_LINES).bytes() {
        s.write_all(&[b]).unwrap();
        s.flush().unwrap();
    }
    let (status, head) = read_http_response(&mut s);
    assert_eq!(status, 101, "{head}");
    assert_eq!(header(&head, "sec-websocket-accept"), Some(ACCEPT));
    // And the connection works as a WebSocket, also fed byte by byte.
    for b in frame(true, OP_TEXT, b"slow") {
        s.write_all(&[b]).unwrap();
    }
    assert_eq!(
        read_frame(&mut s).unwrap(),
        (true, OP_TEXT, b"slow".to_vec())
    );
}

// ---- the opening handshake: accepted and refused ----------------------------

#[test]
fn upgrade_answer_and_token_matching() {
    let server = Server::start(&[]);
    // `Connection` as a list, tokens in any case.
    let lines = [
        "Host: localhost",
        "Upgrade: WebSocket",
        "Connection: keep-alive, UPGRADE",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];
    let mut s = connect(server.addr);
    send(&mut s, upgrade_request(&lines).as_bytes());
    let (status, head) = read_http_response(&mut s);
    assert_eq!(status, 101, "{head}");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(header(&head, "sec-websocket-accept"), Some(ACCEPT));
    assert!(
        header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{head}"
    );
    assert!(
        header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
        "{head}"
    );
    send(&mut s, &frame(true, OP_TEXT, b"ok"));
    assert_eq!(read_frame(&mut s).unwrap(), (true, OP_TEXT, b"ok".to_vec()));
}

/// How many header lines of a response head are named `name`.
fn header_count(head: &str, name: &str) -> usize {
    head.lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        })
        .count()
}

#[test]
fn no_extension_is_answered_that_the_client_did_not_offer() {
    // RFC 6455 §9 and §4.2.2 /extensions/: a server MUST NOT answer with an
    // extension the client did not ask for; one it does not know it
    // declines by leaving it out.
    let server = Server::start(&[]);
    for extra in ["", "Sec-WebSocket-Extensions: x-unknown-extension; p=1\r\n"] {
        for path in ["/echo", "/ws"] {
            let mut s = connect(server.addr);
            let (status, head) = upgrade_on(&mut s, server.addr, path, extra);
            assert_eq!(status, 101, "{head}");
            assert_eq!(
                header_count(&head, "sec-websocket-extensions"),
                0,
                "{path} {extra:?}: {head}"
            );
        }
    }
}

#[test]
fn the_101_names_each_websocket_header_once() {
    // RFC 6455 §11.3.3, §11.3.4: Sec-WebSocket-Accept and
    // Sec-WebSocket-Protocol MUST NOT appear more than once in a response,
    // however often the client offers the subprotocol.
    let server = Server::start(&[]);
    let extra =
        "Sec-WebSocket-Protocol: wschat.v1, wschat.v1\r\nSec-WebSocket-Protocol: wschat.v1\r\n";
    let mut s = connect(server.addr);
    let (status, head) = upgrade_on(&mut s, server.addr, "/ws", extra);
    assert_eq!(status, 101, "{head}");
    for (name, n) in [
        ("upgrade", 1),
        ("connection", 1),
        ("sec-websocket-accept", 1),
        ("sec-websocket-protocol", 1),
    ] {
        assert_eq!(header_count(&head, name), n, "{name}: {head}");
    }
    assert_eq!(header(&head, "sec-websocket-protocol"), Some("wschat.v1"));
}

#[test]
fn a_repeated_key_or_version_is_400() {
    // RFC 6455 §11.3.1, §11.3.5: Sec-WebSocket-Key and Sec-WebSocket-Version
    // MUST NOT appear more than once in a request; such a request does not
    // match §4.2.1 and is answered 400, even when both copies agree.
    let server = Server::start(&[]);
    for line in [
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ] {
        let mut lines = GOOD_LINES.to_vec();
        lines.push(line);
        refused(&server, upgrade_request(&lines).as_bytes(), 400);
    }
}

#[test]
fn wrong_or_missing_version_is_426_with_the_version_spoken() {
    let server = Server::start(&[]);
    for lines in [
        lines_with("Sec-WebSocket-Version", None),
        lines_with("Sec-WebSocket-Version", Some("Sec-WebSocket-Version: 8")),
        lines_with("Sec-WebSocket-Version", Some("Sec-WebSocket-Version: 14")),
    ] {
        let head = refused(&server, upgrade_request(&lines).as_bytes(), 426);
        assert_eq!(header(&head, "sec-websocket-version"), Some("13"), "{head}");
    }
}

#[test]
fn each_bad_handshake_header_is_400_with_a_reason() {
    let server = Server::start(&[]);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("no Host", lines_with("Host", None)),
        (
            "Upgrade not websocket",
            lines_with("Upgrade", Some("Upgrade: h2c")),
        ),
        (
            "Connection without upgrade",
            lines_with("Connection", Some("Connection: keep-alive")),
        ),
        ("no Connection", lines_with("Connection", None)),
        (
            "key not base64",
            lines_with(
                "Sec-WebSocket-Key",
                Some("Sec-WebSocket-Key: !!not*base64!!"),
            ),
        ),
        (
            "key of 10 bytes",
            lines_with(
                "Sec-WebSocket-Key",
                Some("Sec-WebSocket-Key: dGhlIHNhbXBsZQ=="),
            ),
        ),
        (
            "key of 17 bytes",
            lines_with(
                "Sec-WebSocket-Key",
                Some("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA="),
            ),
        ),
        ("no key", lines_with("Sec-WebSocket-Key", None)),
    ];
    for (what, lines) in cases {
        let (status, head, body) = http_full(server.addr, upgrade_request(&lines).as_bytes());
        assert_eq!(status, 400, "{what}: {head}");
        let body = String::from_utf8_lossy(&body);
        assert_eq!(body.lines().count(), 1, "{what}: {body:?}");
        assert!(body.starts_with("400 "), "{what}: {body:?}");
    }
}

#[test]
fn http_1_0_upgrade_is_400() {
    let server = Server::start(&[]);
    let req = upgrade_request(&GOOD_LINES).replacen("HTTP/1.1", "HTTP/1.0", 1);
    refused(&server, req.as_bytes(), 400);
}

#[test]
fn post_to_echo_is_405() {
    let server = Server::start(&[]);
    let req = upgrade_request(&GOOD_LINES).replacen("GET", "POST", 1);
    let head = refused(&server, req.as_bytes(), 405);
    assert!(header(&head, "allow").is_some(), "{head}");
}

#[test]
fn get_echo_without_upgrade_is_426() {
    let server = Server::start(&[]);
    let head = refused(
        &server,
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n",
        426,
    );
    assert_eq!(header(&head, "sec-websocket-version"), Some("13"), "{head}");
}

#[test]
fn unknown_path_is_404() {
    let server = Server::start(&[]);
    refused(
        &server,
        b"GET /no/such/thing HTTP/1.1\r\nHost: localhost\r\n\r\n",
        404,
    );
    // An upgrade to an unknown path is no upgrade either.
    let req = upgrade_request(&GOOD_LINES).replacen("/echo", "/nope", 1);
    refused(&server, req.as_bytes(), 404);
}

#[test]
fn garbage_request_line_is_400() {
    let server = Server::start(&[]);
    refused(&server, b"\x01\x02 garbage \xff\r\n\r\n", 400);
    refused(&server, b"GET\r\n\r\n", 400);
}

#[test]
fn head_over_the_limit_is_431() {
    let server = Server::start(&[]);
    // A complete head of 9 KiB, and one that never ends.
    let pad = format!("X-Pad: {}", "a".repeat(9 * 1024));
    let mut lines = GOOD_LINES.to_vec();
    lines.push(&pad);
    refused(&server, upgrade_request(&lines).as_bytes(), 431);
    let endless = format!("GET /echo HTTP/1.1\r\nX-Pad: {}", "a".repeat(9 * 1024));
    refused(&server, endless.as_bytes(), 431);

    // A 2 KiB head passes by default and is refused under --max-head-size 1KiB.
    let pad = format!("X-Pad: {}", "b".repeat(2 * 1024));
    let mut lines = GOOD_LINES.to_vec();
    lines.push(&pad);
    let req = upgrade_request(&lines);
    let mut s = connect(server.addr);
    send(&mut s, req.as_bytes());
    assert_eq!(read_http_response(&mut s).0, 101);
    let small = Server::start(&["--max-head-size", "1KiB"]);
    refused(&small, req.as_bytes(), 431);
}

#[test]
fn the_web_client_and_health_routes() {
    let server = Server::start(&[]);
    let (status, head, body) = get(server.addr, "/");
    assert_eq!(status, 200, "{head}");
    assert!(
        header(&head, "content-type").is_some_and(|v| v.starts_with("text/html")),
        "{head}"
    );
    let html = String::from_utf8_lossy(&body).to_ascii_lowercase();
    assert!(html.contains("<html") || html.contains("<!doctype html"));
    assert_eq!(
        header(&head, "content-length").and_then(|v| v.parse().ok()),
        Some(body.len())
    );

    let (status, head, body) = get(server.addr, "/app.js");
    assert_eq!(status, 200, "{head}");
    assert!(
        header(&head, "content-type").is_some_and(|v| v.contains("javascript")),
        "{head}"
    );
    assert!(!body.is_empty());

    let (status, head, body) = get(server.addr, "/healthz");
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"ok\n");
}

/// A secret one level above the directory served; what a traversal would reach.
const SECRET: &str = "TOP-SECRET-9f3c1d";

#[test]
fn path_traversal_never_returns_the_file() {
    // Built-in client: the crate's own files sit next to nothing served.
    let server = Server::start(&[]);
    let cargo_toml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    for path in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/%2E%2E%2FCargo.toml",
        "/static/../../Cargo.toml",
    ] {
        let (status, head, body) = get(server.addr, path);
        assert!(matches!(status, 403 | 404), "{path}: {head}");
        assert!(
            !String::from_utf8_lossy(&body).contains("[package]"),
            "{path} leaked Cargo.toml"
        );
    }
    assert!(cargo_toml.contains("[package]"));

    // --static-dir: a file above the directory, and a symlink inside it to that file.
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("traversal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let www = base.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(base.join("secret.txt"), SECRET).unwrap();
    std::fs::write(www.join("hello.txt"), "hello from the static dir\n").unwrap();
    std::os::unix::fs::symlink(base.join("secret.txt"), www.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(&base, www.join("up")).unwrap();
    let server = Server::start(&["--static-dir", www.to_str().unwrap()]);

    let (status, head, body) = get(server.addr, "/hello.txt");
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"hello from the static dir\n");
    assert!(
        header(&head, "content-type").is_some_and(|v| v.starts_with("text/plain")),
        "{head}"
    );

    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/link.txt",
        "/up/secret.txt",
        "/up/www/link.txt",
    ] {
        let (status, head, body) = get(server.addr, path);
        assert!(matches!(status, 403 | 404), "{path}: {head}");
        assert!(
            !String::from_utf8_lossy(&body).contains(SECRET),
            "{path} leaked the secret"
        );
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// Reads one server frame and checks the two header rules a server must
/// follow: no mask (RFC 6455 §5.1) and the shortest length form (§5.2).
/// Returns the first header byte (FIN and opcode) and the payload length.
fn read_checked_frame(s: &mut TcpStream) -> (u8, usize) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("a frame header");
    assert_eq!(h[1] & 0x80, 0, "a masked server frame: {h:x?}");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            let n = u16::from_be_bytes(b) as usize;
            assert!(n >= 126, "{n} bytes sent in the 16-bit length form");
            n
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            let n = u64::from_be_bytes(b);
            assert!(n > 0xffff, "{n} bytes sent in the 64-bit length form");
            n as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (h[0], len)
}

#[test]
fn server_frames_are_unmasked_and_use_the_shortest_length_form() {
    let server = Server::start(&[]);
    // Echoes in every length form, a pong and a close on /echo.
    let mut s = raw_ws(server.addr, "/echo", "");
    let mut bytes = Vec::new();
    for len in [0usize, 125, 126, 65535, 65536] {
        bytes.extend(frame(true, OP_BINARY, &pattern(len, 1)));
    }
    bytes.extend(frame(true, OP_PING, b"p"));
    bytes.extend(frame(true, OP_CLOSE, &close_body(1000, b"")));
    send(&mut s, &bytes);
    let mut got: Vec<(u8, usize)> = (0..7).map(|_| read_checked_frame(&mut s)).collect();
    got.sort_unstable();
    let fin = 0x80;
    assert_eq!(
        got,
        vec![
            (fin | OP_BINARY, 0),
            (fin | OP_BINARY, 125),
            (fin | OP_BINARY, 126),
            (fin | OP_BINARY, 65535),
            (fin | OP_BINARY, 65536),
            (fin | OP_CLOSE, 2),
            (fin | OP_PONG, 1),
        ]
    );
    // The chat's own frames (built apart from the echo path) on /ws.
    let mut s = raw_ws(server.addr, "/ws?nick=masktest", "");
    let (b0, _) = read_checked_frame(&mut s);
    assert_eq!(b0, fin | OP_TEXT, "the welcome");
    send(&mut s, &frame(true, OP_BINARY, b"\x00"));
    let (b0, _) = read_checked_frame(&mut s);
    assert_eq!(b0, fin | OP_CLOSE, "the 1003 close");
}

// ---- malformed frames and their close codes ----------------------------------

#[test]
fn unmasked_frame_is_1002() {
    let server = Server::start(&[]);
    fails_with(&server, b"\x81\x05hello", 1002);
}

#[test]
fn reserved_bits_are_1002() {
    let server = Server::start(&[]);
    for rsv in [0x40u8, 0x20, 0x10] {
        let mut f = frame(true, OP_TEXT, b"x");
        f[0] |= rsv;
        fails_with(&server, &f, 1002);
    }
}

#[test]
fn reserved_opcodes_are_1002() {
    let server = Server::start(&[]);
    for op in [0x3u8, 0x7, 0xB, 0xF] {
        fails_with(&server, &frame(true, op, b""), 1002);
    }
}

#[test]
fn control_frame_rules_are_1002() {
    let server = Server::start(&[]);
    // §5.5: at most 125 bytes (the 126 uses the 16-bit length form).
    fails_with(&server, &frame(true, OP_PING, &[0; 126]), 1002);
    // §5.5: never fragmented.
    fails_with(&server, &frame(false, OP_PING, b"x"), 1002);
    fails_with(
        &server,
        &frame(false, OP_CLOSE, &close_body(1000, b"")),
        1002,
    );
}

#[test]
fn fragmentation_rules_are_1002() {
    let server = Server::start(&[]);
    // A continuation with no message open.
    fails_with(&server, &frame(true, OP_CONT, b"x"), 1002);
    // A new text while a fragmented message is open.
    let mut bytes = frame(false, OP_TEXT, b"a");
    bytes.extend(frame(true, OP_TEXT, b"b"));
    fails_with(&server, &bytes, 1002);
    let mut bytes = frame(false, OP_BINARY, b"a");
    bytes.extend(frame(true, OP_BINARY, b"b"));
    fails_with(&server, &bytes, 1002);
}

#[test]
fn length_with_the_top_bit_set_is_1002() {
    let server = Server::start(&[]);
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
    f.extend_from_slice(&[1, 2, 3, 4]);
    fails_with(&server, &f, 1002);
}

#[test]
fn invalid_utf8_text_is_1007() {
    let server = Server::start(&[]);
    fails_with(&server, &frame(true, OP_TEXT, b"ok \xff"), 1007);
    fails_with(&server, &frame(true, OP_TEXT, b"\xed\xa0\x80"), 1007); // surrogate
    // A character left incomplete at the end of the message.
    let mut bytes = frame(false, OP_TEXT, b"ok");
    bytes.extend(frame(true, OP_CONT, b"\xe2\x82"));
    fails_with(&server, &bytes, 1007);
}

#[test]
fn utf8_cut_between_fragments_fails_before_the_final_fragment() {
    let server = Server::start(&[]);
    let mut s = raw_ws(server.addr, "/echo", "");
    // "caf" + the lead byte of 'é', then a byte that cannot continue it.
    send(&mut s, &frame(false, OP_TEXT, b"caf\xc3"));
    send(&mut s, &frame(false, OP_CONT, b"("));
    // The final fragment is never sent: the close must come without it.
    expect_fail(&mut s, 1007);

    // §8.1 fail fast: 0xF4 0x90 can start no character, even mid-frame.
    let mut s = raw_ws(server.addr, "/echo", "");
    send(&mut s, &frame(false, OP_TEXT, b"ok\xf4"));
    send(&mut s, &frame(false, OP_CONT, b"\x90"));
    expect_fail(&mut s, 1007);
}

#[test]
fn close_payload_rules() {
    let server = Server::start(&[]);
    // Invalid UTF-8 in the reason.
    fails_with(
        &server,
        &frame(true, OP_CLOSE, &close_body(1000, b"\xff")),
        1007,
    );
    // One byte: neither empty nor a code.
    fails_with(&server, &frame(true, OP_CLOSE, &[0x03]), 1002);
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        let mut s = raw_ws(server.addr, "/echo", "");
        send(&mut s, &frame(true, OP_CLOSE, &close_body(code, b"")));
        let (_, op, payload) = read_frame(&mut s).unwrap();
        assert_eq!(op, OP_CLOSE, "code {code}");
        assert_eq!(payload[..2], 1002u16.to_be_bytes(), "code {code}");
        assert!(read_until_eof(&mut s).is_empty(), "code {code}");
    }
    for code in [1000u16, 1001, 1003, 1011, 3000, 4000, 4999] {
        let mut s = raw_ws(server.addr, "/echo", "");
        send(&mut s, &frame(true, OP_CLOSE, &close_body(code, b"why")));
        let (_, op, payload) = read_frame(&mut s).unwrap();
        assert_eq!(op, OP_CLOSE, "code {code}");
        assert_eq!(payload[..2], code.to_be_bytes(), "code {code} echoed");
        assert!(read_until_eof(&mut s).is_empty(), "code {code}");
    }
}

#[test]
fn message_over_the_limit_is_1009_at_the_header() {
    let server = Server::start(&["--max-message-size", "1000"]);
    // Just the header of a 2000-byte frame: 16-bit length and a mask key.
    let f = frame(true, OP_BINARY, &[0; 2000]);
    let mut s = raw_ws(server.addr, "/echo", "");
    send(&mut s, &f[..8]);
    expect_fail(&mut s, 1009);

    // Fragments add up: 600 + 600 > 1000, each alone within it.
    let mut s = raw_ws(server.addr, "/echo", "");
    send(&mut s, &frame(false, OP_TEXT, &[b'a'; 600]));
    send(&mut s, &frame(true, OP_CONT, &[b'a'; 600]));
    expect_fail(&mut s, 1009);

    // Exactly at the limit is fine.
    let mut s = raw_ws(server.addr, "/echo", "");
    send(&mut s, &frame(true, OP_BINARY, &[9; 1000]));
    assert_eq!(
        read_frame(&mut s).unwrap(),
        (true, OP_BINARY, vec![9; 1000])
    );
}

#[test]
fn valid_message_then_bad_frame_in_one_write() {
    let server = Server::start(&[]);
    let mut s = raw_ws(server.addr, "/echo", "");
    let mut bytes = frame(true, OP_TEXT, b"first");
    bytes.extend(frame(true, 0x5, b""));
    bytes.extend(frame(true, OP_TEXT, b"never echoed"));
    send(&mut s, &bytes);
    assert_eq!(
        read_frame(&mut s).unwrap(),
        (true, OP_TEXT, b"first".to_vec())
    );
    expect_fail(&mut s, 1002);
}

// ---- after the server's close -----------------------------------------------

#[test]
fn after_a_failure_nothing_is_answered_and_tcp_ends() {
    let server = Server::start(&[]);
    let mut s = raw_ws(server.addr, "/echo", "");
    send(&mut s, &frame(true, 0x3, b""));
    let (_, op, payload) = read_frame(&mut s).unwrap();
    assert_eq!((op, &payload[..2]), (OP_CLOSE, &1002u16.to_be_bytes()[..]));
    // Whatever the client still sends is neither echoed nor answered
    // (the write may race the server's shutdown; only what we read matters).
    let mut more = frame(true, OP_TEXT, b"late");
    more.extend(frame(true, OP_PING, b"late"));
    more.extend(frame(true, OP_CLOSE, &close_body(1000, b"")));
    let _ = s.write_all(&more);
    assert!(read_until_eof(&mut s).is_empty());
}

#[test]
fn after_a_server_close_only_the_close_arrives_then_tcp_ends() {
    // /ws refuses binary with 1003: not a failure, so the server starts the
    // closing handshake (§7.1.2) and ends TCP once the client answers it.
    let server = Server::start(&[]);
    let mut s = raw_ws(server.addr, "/ws", "");
    send(&mut s, &frame(true, OP_BINARY, b"\x00"));
    assert_eq!(expect_close(&mut s), Some(1003));
    // Data and pings after our close get nothing back (§5.5.1, §7.1.3).
    send(&mut s, &frame(true, OP_PING, b"after close"));
    send(
        &mut s,
        &frame(true, OP_TEXT, br#"{"type":"join","room":"x"}"#),
    );
    send(&mut s, &frame(true, OP_CLOSE, &close_body(1003, b"")));
    let rest = read_until_eof(&mut s);
    assert!(rest.is_empty(), "bytes after the server's close: {rest:?}");
}

#[test]
fn shutdown_signal_closes_with_1001_and_ends_tcp() {
    let mut server = Server::start(&[]);
    let mut s = raw_ws(server.addr, "/echo", "");
    send(&mut s, &frame(true, OP_TEXT, b"before"));
    assert_eq!(
        read_frame(&mut s).unwrap(),
        (true, OP_TEXT, b"before".to_vec())
    );
    server.signal("TERM");
    let (_, op, payload) = read_frame(&mut s).unwrap();
    assert_eq!((op, &payload[..2]), (OP_CLOSE, &1001u16.to_be_bytes()[..]));
    send(&mut s, &frame(true, OP_CLOSE, &close_body(1001, b"")));
    assert!(read_until_eof(&mut s).is_empty());
    // Our FIN ends the server's linger; then it has no connection left.
    drop(s);
    let status = server
        .wait_exit(IO_TIMEOUT)
        .expect("the server exits once its connections are closed");
    assert!(status.success(), "{status:?}");
}
