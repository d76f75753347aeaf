//! End-to-end tests of permessage-deflate (RFC 7692): a real server, raw
//! sockets, and compression done with flate2 directly, independently of the
//! server's own code (tungstenite 0.30 has no permessage-deflate).
mod common;
use common::*;

use serde_json::{Value, json};
use std::io::Write;
use std::net::TcpStream;

const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

fn offer(server: &Server, path: &str, extensions: &str) -> (u16, String) {
    let mut s = connect(server.addr);
    upgrade_on(&mut s, server.addr, path, extensions)
}

#[test]
fn deflate_negotiation_answers() {
    let server = Server::start(&[]);
    // Chromium's offer: both no_context_takeover answered (§7.1.1.1,
    // §7.1.1.2), no client_max_window_bits (§7.1.2.2 leaves it to us).
    let (st, head) = offer(&server, "/echo", CHROMIUM_OFFER);
    assert_eq!(st, 101);
    assert_eq!(extensions_header(&head), Some(ANSWER));
    // The first acceptable offer wins: an unknown parameter declines the
    // first, a repeated one the second, the third is answered with its
    // window (§7.1.2.1).
    let (_, head) = offer(
        &server,
        "/ws",
        "Sec-WebSocket-Extensions: x-foo, permessage-deflate; bogus\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits; client_max_window_bits, \
         permessage-deflate; server_max_window_bits=\"10\"\r\n",
    );
    assert_eq!(
        extensions_header(&head),
        Some(format!("{ANSWER}; server_max_window_bits=10").as_str())
    );
    // An 8-bit server window, which zlib cannot keep to, is declined.
    let (st, head) = offer(
        &server,
        "/echo",
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n",
    );
    assert_eq!(st, 101);
    assert_eq!(extensions_header(&head), None);
    // No offer, no answer.
    let (_, head) = offer(&server, "/echo", "");
    assert_eq!(extensions_header(&head), None);

    let off = Server::start(&["--no-deflate"]);
    let (st, head) = offer(&off, "/echo", CHROMIUM_OFFER);
    assert_eq!(st, 101);
    assert_eq!(extensions_header(&head), None);
}

fn deflate_echo(server: &Server) -> TcpStream {
    let mut s = connect(server.addr);
    let (st, head) = upgrade_on(&mut s, server.addr, "/echo", CHROMIUM_OFFER);
    assert_eq!(st, 101);
    assert_eq!(extensions_header(&head), Some(ANSWER));
    s
}

#[test]
fn deflate_echo_both_ways() {
    let server = Server::start(&[]);
    let mut s = deflate_echo(&server);
    let text = r#"{"type":"message","room":"general","text":"hello, hello, hello"}"#.repeat(20);
    s.write_all(&frame_rsv1(true, 1, &deflate_raw(text.as_bytes())))
        .unwrap();
    let (fin, rsv1, op, payload) = read_frame_rsv(&mut s).unwrap();
    assert!(fin && rsv1 && op == 1, "a compressed text frame");
    assert!(payload.len() < text.len() / 5);
    assert_eq!(inflate_raw(&payload), text.as_bytes());
    // Below --deflate-threshold the echo goes uncompressed; a client may
    // send uncompressed too.
    s.write_all(&frame(true, 2, b"tiny")).unwrap();
    assert_eq!(
        read_frame_rsv(&mut s).unwrap(),
        (true, false, 2, b"tiny".to_vec())
    );
    // A compressed message in fragments, a ping between them (§6: RSV1 on
    // the first frame only).
    let z = deflate_raw(text.as_bytes());
    let (a, b) = z.split_at(z.len() / 3);
    s.write_all(&frame_rsv1(false, 1, a)).unwrap();
    s.write_all(&frame(true, 9, b"between")).unwrap();
    s.write_all(&frame(true, 0, b)).unwrap();
    assert_eq!(
        read_frame_rsv(&mut s).unwrap(),
        (true, false, 0xA, b"between".to_vec())
    );
    let (_, rsv1, op, payload) = read_frame_rsv(&mut s).unwrap();
    assert!(rsv1 && op == 1);
    assert_eq!(inflate_raw(&payload), text.as_bytes());
}

#[test]
fn deflate_rsv1_on_a_continuation_is_1002() {
    let server = Server::start(&[]);
    let mut s = deflate_echo(&server);
    s.write_all(&frame_rsv1(false, 1, &deflate_raw(b"hello")))
        .unwrap();
    s.write_all(&frame_rsv1(true, 0, &deflate_raw(b" world")))
        .unwrap();
    assert_eq!(expect_close(&mut s), Some(1002));
    // Without the extension, RSV1 is a reserved bit (RFC 6455 §5.2).
    let mut plain = raw_ws(server.addr, "/echo", "");
    plain
        .write_all(&frame_rsv1(true, 1, &deflate_raw(b"hello")))
        .unwrap();
    assert_eq!(expect_close(&mut plain), Some(1002));
}

#[test]
fn deflate_bomb_is_closed_1009() {
    let server = Server::start(&["--max-message-size", "1MiB"]);
    let mut s = deflate_echo(&server);
    // 48 MiB of zeros in about 48 KiB on the wire.
    let z = deflate_raw(&vec![0u8; 48 << 20]);
    assert!(z.len() < 64 << 10);
    s.write_all(&frame_rsv1(true, 2, &z)).unwrap();
    assert_eq!(expect_close(&mut s), Some(1009));
    assert!(
        server.rss_kib() < 16 * 1024,
        "the server did not inflate the bomb: {} KiB",
        server.rss_kib()
    );
    // Invalid DEFLATE data: 1007.
    let mut s = deflate_echo(&server);
    s.write_all(&frame_rsv1(true, 2, b"\xff\xff\xff\xff"))
        .unwrap();
    assert_eq!(expect_close(&mut s), Some(1007));
}

/// The next JSON object from a raw chat socket, inflated if compressed.
fn recv_json(s: &mut TcpStream) -> (bool, Value) {
    loop {
        let (fin, rsv1, op, payload) = read_frame_rsv(s).expect("a frame");
        assert!(fin, "the server sends whole messages");
        if op != 1 {
            continue;
        }
        let text = if rsv1 { inflate_raw(&payload) } else { payload };
        return (rsv1, serde_json::from_slice(&text).expect("JSON"));
    }
}

fn chat_peer(server: &Server, nick: &str, extensions: &str) -> TcpStream {
    let mut s = raw_ws(server.addr, &format!("/ws?nick={nick}"), extensions);
    assert_eq!(recv_json(&mut s).1["type"], "welcome");
    s.write_all(&frame(true, 1, br#"{"type":"join","room":"r"}"#))
        .unwrap();
    loop {
        if recv_json(&mut s).1["type"] == "joined" {
            return s;
        }
    }
}

/// The next `message` event, skipping presence.
fn recv_message(s: &mut TcpStream) -> (bool, Value) {
    loop {
        let (rsv1, v) = recv_json(s);
        if v["type"] == "message" {
            return (rsv1, v);
        }
    }
}

#[test]
fn deflate_broadcast_compressed_to_deflate_peers_plain_to_others() {
    // The threshold above the short message's frame (about 80 bytes).
    let server = Server::start(&["--rate-burst", "0", "--deflate-threshold", "120"]);
    let mut zed = chat_peer(&server, "zed", CHROMIUM_OFFER);
    let mut pat = chat_peer(&server, "pat", "");
    let mut amy = chat_peer(&server, "amy", CHROMIUM_OFFER);
    let text = "the quick brown fox jumps over the lazy dog; ".repeat(8);
    let msg = json!({"type": "message", "room": "r", "text": text});
    amy.write_all(&frame_rsv1(
        true,
        1,
        &deflate_raw(msg.to_string().as_bytes()),
    ))
    .unwrap();
    let (z_rsv1, z) = recv_message(&mut zed);
    let (p_rsv1, p) = recv_message(&mut pat);
    let (a_rsv1, a) = recv_message(&mut amy);
    assert!(z_rsv1 && a_rsv1, "deflate peers get the compressed frame");
    assert!(!p_rsv1, "the other peer gets the plain frame");
    assert_eq!(z, p);
    assert_eq!(z["text"], text.as_str());
    assert_eq!(a["id"], z["id"]);
    // A short message goes plain to everyone (--deflate-threshold).
    let short = json!({"type": "message", "room": "r", "text": "hi"});
    amy.write_all(&frame(true, 1, short.to_string().as_bytes()))
        .unwrap();
    assert!(!recv_message(&mut zed).0);
    assert!(!recv_message(&mut pat).0);
}
