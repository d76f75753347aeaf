//! End-to-end tests of the chat protocol (`/work/shared/chat-protocol.md`,
//! `docs/protocol.md`): a real server, real sockets, and the independent
//! `tungstenite` client (or raw frames from `common` where the exact bytes
//! on the wire matter).
//!
//! Replies are compared as whole JSON objects, so a missing, extra or
//! misspelt field fails. Where the sequence matters, [`sync`] proves that
//! nothing else arrived: it sends a `rooms` request with a fresh `ref` and
//! requires its answer to be the very next frame. The server handles one
//! connection's frames in order, and everything a frame causes is queued
//! before that frame's sender gets its answer, so no sleeping is needed.
mod common;
use common::*;

use serde_json::{Value, json};
use std::io::Write;
use std::net::TcpStream;
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

// ---- helpers -------------------------------------------------------------

/// A server with the rate limit off (tests post many messages) and a motd.
fn server(extra: &[&str]) -> Server {
    let mut args = vec!["--rate-burst", "0", "--motd", "Be nice."];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// The `limits` of `welcome` from a [`server`]: the defaults, rate limit off.
fn limits() -> Value {
    json!({"text_chars":4000,"message_bytes":65536,"rate_burst":0,"rate_per_sec":2,"rooms_per_conn":32})
}

/// Connects to `/ws?nick=NICK` and returns the client with its welcome,
/// which must be the first frame.
fn connect_as(server: &Server, nick: &str) -> Ws {
    let mut ws = client(server, &format!("/ws?nick={nick}"));
    let mut w = recv(&mut ws);
    // The limits depend on the server's flags (checked in
    // welcome_carries_the_servers_limits); here only that they are there.
    let l = w.as_object_mut().and_then(|o| o.remove("limits"));
    assert!(l.is_some_and(|l| l.is_object()), "no limits in {w}");
    assert_eq!(
        w,
        json!({"type":"welcome","nick":nick,"motd":"Be nice.","protocol":1})
    );
    ws
}

fn send_text(ws: &mut Ws, s: &str) {
    ws.send(Message::text(s)).expect("send");
}

/// Reads until the server's close frame and returns its code.
fn recv_close(ws: &mut Ws) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return u16::from(f.code),
            Ok(Message::Close(None)) => panic!("close frame without a code"),
            Ok(Message::Text(t)) => panic!("expected a close, got text {t}"),
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
}

static SYNC: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Asserts that nothing is pending for this client: a `rooms` request with
/// a fresh ref must be answered by the very next frame.
fn sync(ws: &mut Ws) {
    let r = format!(
        "sync-{}",
        SYNC.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    send(ws, json!({"type":"rooms","ref":r}));
    let v = recv(ws);
    assert_eq!(v["type"], "rooms", "unexpected frame before the sync: {v}");
    assert_eq!(v["ref"], r, "unexpected frame before the sync: {v}");
}

/// Joins `room` (ref "j") and returns the `joined` answer after checking
/// its shape.
fn join(ws: &mut Ws, room: &str) -> Value {
    send(ws, json!({"type":"join","room":room,"ref":"j"}));
    let v = recv(ws);
    check_joined(&v, room, Some("j"));
    v
}

/// Shape of a `joined`: exactly its fields, of the right types.
fn check_joined(v: &Value, room: &str, r: Option<&str>) {
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort_unstable();
    let mut want = vec!["complete", "epoch", "history", "members", "room", "type"];
    if r.is_some() {
        want.push("ref");
        want.sort_unstable();
    }
    assert_eq!(keys, want, "joined fields: {v}");
    assert_eq!(v["type"], "joined");
    assert_eq!(v["room"], room);
    assert!(v["epoch"].is_string(), "{v}");
    assert!(
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(Value::is_string)
    );
    assert!(v["complete"].is_boolean());
    for m in v["history"].as_array().unwrap() {
        check_message(m, room, None);
    }
    if let Some(r) = r {
        assert_eq!(v["ref"], r);
    }
}

/// Shape of a `message` object: exactly its fields; returns (id, ts).
fn check_message(v: &Value, room: &str, r: Option<&str>) -> (u64, u64) {
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort_unstable();
    let mut want = vec!["from", "id", "room", "text", "ts", "type"];
    if r.is_some() {
        want.push("ref");
        want.sort_unstable();
    }
    assert_eq!(keys, want, "message fields: {v}");
    assert_eq!(v["type"], "message");
    assert_eq!(v["room"], room);
    assert!(v["from"].is_string() && v["text"].is_string(), "{v}");
    if let Some(r) = r {
        assert_eq!(v["ref"], r);
    }
    (
        v["id"].as_u64().expect("integer id"),
        v["ts"].as_u64().expect("integer ts"),
    )
}

/// `v` with `ts` removed after checking that it is an integer.
fn without_ts(v: &Value) -> Value {
    let mut v = v.clone();
    let ts = v.as_object_mut().unwrap().remove("ts");
    assert!(ts.and_then(|t| t.as_u64()).is_some(), "integer ts: {v}");
    v
}

/// Posts `text` to `room` (ref "m") and returns the sender's copy.
fn post(ws: &mut Ws, room: &str, text: &str) -> Value {
    send(
        ws,
        json!({"type":"message","room":room,"text":text,"ref":"m"}),
    );
    let v = recv(ws);
    check_message(&v, room, Some("m"));
    v
}

/// An `error` answer with exactly `code`, a human `message`, and `ref` iff given.
fn assert_error(v: &Value, code: &str, r: Option<&str>) {
    let mut want = json!({"type":"error","code":code,"message":v["message"]});
    if let Some(r) = r {
        want["ref"] = json!(r);
    }
    assert_eq!(v, &want, "expected error {code} with ref {r:?}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error message for humans: {v}"
    );
}

/// An `invalid` error that names `field`.
fn assert_invalid(v: &Value, field: &str, r: Option<&str>) {
    assert_error(v, "invalid", r);
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains(&format!("\"{field}\"")),
        "invalid error should name {field:?}: {m}"
    );
}

/// Sends `frame` (with `ref` "e") and expects an `invalid` naming `field`.
fn expect_invalid(ws: &mut Ws, mut frame: Value, field: &str) {
    frame["ref"] = json!("e");
    send(ws, frame.clone());
    let v = recv(ws);
    assert_invalid(&v, field, Some("e"));
}

fn ids(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

fn nick_ok(n: &str) -> bool {
    (1..=32).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// Posts `n` messages "m1".."mn" to `room` and consumes the sender's copies.
fn post_many(ws: &mut Ws, room: &str, n: usize) {
    for i in 1..=n {
        post(ws, room, &format!("m{i}"));
    }
}

/// A raw text frame round trip on a raw socket: the next frame as JSON.
fn raw_recv(s: &mut TcpStream) -> Value {
    let (fin, op, payload) = read_frame(s).expect("a frame");
    assert!(
        fin && op == 0x1,
        "expected a whole text frame, got opcode {op}: {:?}",
        String::from_utf8_lossy(&payload)
    );
    serde_json::from_slice(&payload).expect("JSON")
}

// ---- transport -----------------------------------------------------------

#[test]
fn subprotocol_wschat_v1_selected_when_offered() {
    let server = server(&[]);
    let mut req = server.url("/ws?nick=alice").into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "foo, wschat.v1".parse().unwrap());
    let (mut ws, resp) =
        tungstenite::client(req, connect(server.addr)).expect("handshake with subprotocols");
    assert_eq!(
        resp.headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect::<Vec<_>>(),
        ["wschat.v1"]
    );
    assert_eq!(recv(&mut ws)["type"], "welcome");
}

#[test]
fn no_subprotocol_selected_when_only_others_offered() {
    let server = server(&[]);
    // Raw, to see the exact response head.
    let mut s = connect(server.addr);
    let req = format!(
        "GET /ws?nick=alice HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: foo, wschat.v2\r\nSec-WebSocket-Protocol: chat\r\n\r\n",
        server.addr
    );
    s.write_all(req.as_bytes()).unwrap();
    let (status, head) = read_http_response(&mut s);
    assert_eq!(status, 101, "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "no subprotocol may be selected: {head}"
    );
    // The server serves it anyway (the client decides whether to go on).
    let w = raw_recv(&mut s);
    assert_eq!(w["type"], "welcome");

    // The independent client agrees that none was selected.
    let mut req = server.url("/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "foo".parse().unwrap());
    match tungstenite::client(req, connect(server.addr)) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(
                tungstenite::error::SubProtocolError::NoSubProtocol,
            ),
        ))) => {}
        other => panic!("expected no subprotocol, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn no_subprotocol_offered_is_served_without_one() {
    let server = server(&[]);
    let (mut ws, resp) =
        tungstenite::client(server.url("/ws?nick=alice"), connect(server.addr)).expect("handshake");
    assert!(resp.headers().get("Sec-WebSocket-Protocol").is_none());
    assert_eq!(
        recv(&mut ws),
        json!({"type":"welcome","nick":"alice","motd":"Be nice.","protocol":1,"limits":limits()})
    );
}

#[test]
fn binary_message_on_ws_closes_1003() {
    let server = server(&[]);
    let mut ws = connect_as(&server, "alice");
    ws.send(Message::binary(br#"{"type":"rooms"}"#.to_vec()))
        .unwrap();
    assert_eq!(recv_close(&mut ws), 1003);

    // The same with raw frames, and /echo still takes binary.
    let mut s = raw_ws(server.addr, "/ws", "");
    assert_eq!(raw_recv(&mut s)["type"], "welcome");
    s.write_all(&frame(true, 0x2, b"\x00\x01")).unwrap();
    assert_eq!(expect_close(&mut s), Some(1003));
    let mut e = client(&server, "/echo");
    e.send(Message::binary(vec![0u8, 1])).unwrap();
    assert_eq!(e.read().unwrap(), Message::binary(vec![0u8, 1]));
}

/// A `rooms` request padded with an unknown field to exactly `len` bytes.
fn padded_rooms(len: usize) -> Vec<u8> {
    let base = r#"{"type":"rooms","ref":"big","pad":""}"#.len();
    format!(
        r#"{{"type":"rooms","ref":"big","pad":"{}"}}"#,
        "x".repeat(len - base)
    )
    .into_bytes()
}

#[test]
fn message_over_64_kib_closes_1009_and_64_kib_is_accepted() {
    let server = server(&[]);
    // Exactly 64 KiB: accepted; the unknown field is ignored.
    let mut ws = connect_as(&server, "alice");
    let ok = padded_rooms(65536);
    ws.send(Message::text(String::from_utf8(ok).unwrap()))
        .unwrap();
    assert_eq!(
        recv(&mut ws),
        json!({"type":"rooms","rooms":[],"ref":"big"})
    );
    // One byte more: 1009.
    let big = padded_rooms(65537);
    ws.send(Message::text(String::from_utf8(big.clone()).unwrap()))
        .unwrap();
    assert_eq!(recv_close(&mut ws), 1009);

    // All fragments together count: two fragments of 40000 bytes.
    let mut s = raw_ws(server.addr, "/ws", "");
    assert_eq!(raw_recv(&mut s)["type"], "welcome");
    let mut bytes = frame(false, 0x1, &big[..40000]);
    bytes.extend(frame(true, 0x0, &big[40000..]));
    s.write_all(&bytes).unwrap();
    assert_eq!(expect_close(&mut s), Some(1009));
}

#[test]
fn max_ws_message_size_flag_is_respected() {
    let server = server(&["--max-ws-message-size", "1KiB"]);
    let mut ws = connect_as(&server, "alice");
    ws.send(Message::text(
        String::from_utf8(padded_rooms(1024)).unwrap(),
    ))
    .unwrap();
    assert_eq!(recv(&mut ws)["ref"], "big");
    ws.send(Message::text(
        String::from_utf8(padded_rooms(1025)).unwrap(),
    ))
    .unwrap();
    assert_eq!(recv_close(&mut ws), 1009);
}

#[test]
fn type_is_case_sensitive_and_unknown_fields_are_ignored() {
    let server = server(&[]);
    let mut ws = connect_as(&server, "alice");
    send(&mut ws, json!({"type":"Rooms","ref":"u"}));
    assert_error(&recv(&mut ws), "unknown_type", Some("u"));
    send(
        &mut ws,
        json!({"type":"join","room":"r","ref":"j","colour":"blue","since_v2":{"x":1}}),
    );
    check_joined(&recv(&mut ws), "r", Some("j"));
}

// ---- welcome and nicks -----------------------------------------------------

#[test]
fn welcome_is_first_with_nick_motd_and_protocol() {
    let server = Server::start(&["--motd", "Hello, «friends» \u{1F600}"]);
    let mut ws = client(&server, "/ws?nick=alice");
    let limits = json!({"text_chars":4000,"message_bytes":65536,"rate_burst":20,"rate_per_sec":2,"rooms_per_conn":32});
    assert_eq!(
        recv(&mut ws),
        json!({"type":"welcome","nick":"alice","motd":"Hello, «friends» \u{1F600}","protocol":1,"limits":limits})
    );
}

/// The `limits` extension of `welcome` tells a client the limits the
/// server was started with (docs/protocol.md, "Limits in `welcome`").
#[test]
fn welcome_carries_the_servers_limits() {
    let server = Server::start(&[
        "--max-text-chars",
        "100",
        "--max-ws-message-size",
        "2KiB",
        "--rate-burst",
        "5",
        "--rate-per-sec",
        "1",
        "--max-rooms-per-conn",
        "3",
    ]);
    let mut ws = client(&server, "/ws?nick=alice");
    assert_eq!(
        recv(&mut ws)["limits"],
        json!({"text_chars":100,"message_bytes":2048,"rate_burst":5,"rate_per_sec":1,"rooms_per_conn":3})
    );
    // And the server holds to what it announced: 100 characters pass, 101 do not.
    send(&mut ws, json!({"type":"join","room":"r","ref":"j"}));
    assert_eq!(recv(&mut ws)["type"], "joined");
    send(
        &mut ws,
        json!({"type":"message","room":"r","text":"é".repeat(100),"ref":"ok"}),
    );
    assert_eq!(recv(&mut ws)["ref"], "ok");
    send(
        &mut ws,
        json!({"type":"message","room":"r","text":"é".repeat(101),"ref":"long"}),
    );
    let e = recv(&mut ws);
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("invalid"), Some("long"))
    );
}

#[test]
fn requested_nick_is_percent_decoded() {
    let server = server(&[]);
    let mut ws = client(&server, "/ws?nick=al%69ce");
    assert_eq!(recv(&mut ws)["nick"], "alice");
    // Among other parameters, and with the characters nicks allow.
    let mut ws = client(&server, "/ws?x=1&nick=B.o_b-2&y=2");
    assert_eq!(recv(&mut ws)["nick"], "B.o_b-2");
}

#[test]
fn absent_invalid_or_taken_nick_gets_a_guest_nick() {
    let server = server(&[]);
    // Someone already holds "guest-1": generated nicks must skip it.
    let _g = connect_as(&server, "guest-1");
    let _alice = connect_as(&server, "alice");
    let long = "a".repeat(33);
    let paths = [
        "/ws".to_string(),
        "/ws?nick=".to_string(),
        "/ws?nick=bad%20nick".to_string(),
        "/ws?nick=caf%C3%A9".to_string(),
        format!("/ws?nick={long}"),
        "/ws?nick=alice".to_string(),
        "/ws?nick=ALICE".to_string(),
        "/ws?nick=GUEST-1".to_string(),
    ];
    let mut seen = vec!["guest-1".to_string(), "alice".to_string()];
    let mut keep = Vec::new();
    for p in &paths {
        let mut ws = client(&server, p);
        let w = recv(&mut ws);
        let n = w["nick"].as_str().unwrap().to_string();
        assert_eq!(
            w,
            json!({"type":"welcome","nick":n,"motd":"Be nice.","protocol":1,"limits":limits()})
        );
        assert!(n.starts_with("guest-"), "{p}: {n}");
        assert!(nick_ok(&n), "{p}: generated nick breaks the rules: {n}");
        assert!(
            !seen.iter().any(|s| s.eq_ignore_ascii_case(&n)),
            "{p}: {n} is taken"
        );
        seen.push(n);
        keep.push(ws);
    }
    // 32 characters is still a valid nick.
    let ok = "b".repeat(32);
    let mut ws = client(&server, &format!("/ws?nick={ok}"));
    assert_eq!(recv(&mut ws)["nick"], ok.as_str());
}

#[test]
fn nick_change_goes_to_owner_with_ref_and_once_to_each_room_sharer() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "bob");
    let mut c = connect_as(&server, "carol");
    let mut d = connect_as(&server, "dave");
    join(&mut a, "one");
    join(&mut a, "two");
    join(&mut b, "one");
    join(&mut b, "two");
    join(&mut c, "two");
    join(&mut d, "other");
    for _ in 0..2 {
        recv(&mut a); // presence of bob (one, two)
    }
    recv(&mut a); // presence of carol (two)
    recv(&mut b); // presence of carol (two)
    sync(&mut a);
    sync(&mut b);

    send(&mut a, json!({"type":"nick","nick":"alicia","ref":"n1"}));
    assert_eq!(
        recv(&mut a),
        json!({"type":"nick","old":"alice","nick":"alicia","ref":"n1"})
    );
    // bob shares two rooms: once.
    assert_eq!(
        recv(&mut b),
        json!({"type":"nick","old":"alice","nick":"alicia"})
    );
    sync(&mut b);
    assert_eq!(
        recv(&mut c),
        json!({"type":"nick","old":"alice","nick":"alicia"})
    );
    sync(&mut c);
    sync(&mut d); // shares nothing: nothing.
    sync(&mut a);

    // The new nick is in force, the old one is free.
    let m = post(&mut a, "one", "hi");
    assert_eq!(m["from"], "alicia");
    let _x = connect_as(&server, "alice");

    // Without a ref, the owner's copy has none either.
    send(&mut a, json!({"type":"nick","nick":"al"}));
    assert_eq!(
        recv(&mut a),
        json!({"type":"nick","old":"alicia","nick":"al"})
    );
}

#[test]
fn nick_change_to_the_same_nick_goes_to_its_owner_only() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "bob");
    join(&mut a, "r");
    join(&mut b, "r");
    recv(&mut a); // presence of bob
    send(&mut a, json!({"type":"nick","nick":"alice","ref":"n"}));
    assert_eq!(
        recv(&mut a),
        json!({"type":"nick","old":"alice","nick":"alice","ref":"n"})
    );
    sync(&mut a);
    sync(&mut b);
}

#[test]
fn nick_change_to_a_case_variant_of_ones_own_is_allowed() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "bob");
    join(&mut a, "r");
    join(&mut b, "r");
    recv(&mut a);
    send(&mut a, json!({"type":"nick","nick":"ALICE","ref":"n"}));
    assert_eq!(
        recv(&mut a),
        json!({"type":"nick","old":"alice","nick":"ALICE","ref":"n"})
    );
    assert_eq!(
        recv(&mut b),
        json!({"type":"nick","old":"alice","nick":"ALICE"})
    );
    sync(&mut b);
}

#[test]
fn nick_taken_is_case_insensitive_and_changes_nothing() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "Bob");
    join(&mut a, "r");
    join(&mut b, "r");
    recv(&mut a);
    for n in ["Bob", "bob", "BOB"] {
        send(&mut a, json!({"type":"nick","nick":n,"ref":"n"}));
        assert_error(&recv(&mut a), "nick_taken", Some("n"));
    }
    sync(&mut b); // no nick announcement
    assert_eq!(post(&mut a, "r", "still me")["from"], "alice");
}

#[test]
fn invalid_nick_is_refused() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    for n in [
        json!(""),
        json!("bad nick"),
        json!("café"),
        json!("a/b"),
        json!("a".repeat(33)),
        json!(5),
        json!(null),
    ] {
        expect_invalid(&mut a, json!({"type":"nick","nick":n}), "nick");
    }
    expect_invalid(&mut a, json!({"type":"nick"}), "nick");
    // 32 characters and every allowed character are fine.
    let n = format!("A-z_0.{}", "x".repeat(26));
    send(&mut a, json!({"type":"nick","nick":n,"ref":"n"}));
    assert_eq!(
        recv(&mut a),
        json!({"type":"nick","old":"alice","nick":n,"ref":"n"})
    );
}

// ---- join, presence, leave ---------------------------------------------------

#[test]
fn joined_lists_members_sorted_by_lowercase_and_presence_goes_to_others() {
    let server = server(&[]);
    let mut bob = connect_as(&server, "bob");
    let mut dave = connect_as(&server, "Dave");
    let mut alice = connect_as(&server, "Alice");
    let mut carl = connect_as(&server, "carl");

    let j = join(&mut bob, "general");
    assert_eq!(
        j,
        json!({"type":"joined","room":"general","epoch":j["epoch"],"members":["bob"],
               "history":[],"complete":true,"ref":"j"})
    );
    let epoch = j["epoch"].clone();
    let j = join(&mut dave, "general");
    assert_eq!(j["members"], json!(["bob", "Dave"]));
    assert_eq!(j["epoch"], epoch);
    assert_eq!(
        recv(&mut bob),
        json!({"type":"presence","room":"general","nick":"Dave","event":"join"})
    );
    let j = join(&mut alice, "general");
    assert_eq!(j["members"], json!(["Alice", "bob", "Dave"]));
    let j = join(&mut carl, "general");
    // Byte order would put "Alice", "Dave" before "bob", "carl".
    assert_eq!(
        j,
        json!({"type":"joined","room":"general","epoch":epoch,
               "members":["Alice","bob","carl","Dave"],"history":[],"complete":true,"ref":"j"})
    );
    for (ws, joiners) in [
        (&mut bob, &["Alice", "carl"][..]),
        (&mut dave, &["Alice", "carl"][..]),
        (&mut alice, &["carl"][..]),
    ] {
        for n in joiners {
            assert_eq!(
                recv(ws),
                json!({"type":"presence","room":"general","nick":n,"event":"join"})
            );
        }
        sync(ws);
    }
    // The joiner gets no presence about itself.
    sync(&mut carl);
}

#[test]
fn joined_carries_history_and_rooms_are_case_sensitive() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    join(&mut a, "general");
    let m1 = post(&mut a, "general", "one");
    let m2 = post(&mut a, "general", "two");
    let mut b = connect_as(&server, "bob");
    let j = join(&mut b, "general");
    // The same objects as broadcast, without ref.
    let strip = |m: &Value| {
        let mut m = m.clone();
        m.as_object_mut().unwrap().remove("ref");
        m
    };
    assert_eq!(j["history"], json!([strip(&m1), strip(&m2)]));
    assert_eq!(j["complete"], true);
    assert_eq!(j["members"], json!(["alice", "bob"]));
    // "General" is another room: its own epoch, no history, no members.
    let j2 = join(&mut b, "General");
    assert_eq!(j2["history"], json!([]));
    assert_eq!(j2["members"], json!(["bob"]));
    assert_ne!(j2["epoch"], j["epoch"]);
    // And its ids start at 1.
    let m = post(&mut b, "General", "x");
    assert_eq!(m["id"], 1);
}

#[test]
fn join_without_since_gives_newest_50() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    join(&mut a, "r");
    post_many(&mut a, "r", 50);
    let mut b = connect_as(&server, "bob");
    let j = join(&mut b, "r");
    assert_eq!(ids(&j["history"]), (1..=50).collect::<Vec<_>>());
    assert_eq!(j["complete"], true);
    recv(&mut a); // presence
    post_many(&mut a, "r", 10);
    let mut c = connect_as(&server, "carol");
    let j = join(&mut c, "r");
    assert_eq!(ids(&j["history"]), (11..=60).collect::<Vec<_>>());
    assert_eq!(j["complete"], false);
    assert_eq!(j["history"][0]["text"], "m11");
}

#[test]
fn refresh_join_answers_joined_and_sends_no_presence() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "bob");
    join(&mut a, "r");
    let first = join(&mut b, "r");
    recv(&mut a);
    post(&mut a, "r", "hello");
    recv(&mut b);
    send(&mut b, json!({"type":"join","room":"r","ref":"again"}));
    let again = recv(&mut b);
    check_joined(&again, "r", Some("again"));
    assert_eq!(again["members"], json!(["alice", "bob"]));
    assert_eq!(again["epoch"], first["epoch"]);
    assert_eq!(ids(&again["history"]), vec![1]);
    sync(&mut a);
    sync(&mut b);
    // Still one membership: one leave, one left.
    send(&mut b, json!({"type":"leave","room":"r","ref":"l"}));
    assert_eq!(recv(&mut b), json!({"type":"left","room":"r","ref":"l"}));
    send(&mut b, json!({"type":"leave","room":"r","ref":"l2"}));
    assert_error(&recv(&mut b), "not_in_room", Some("l2"));
}

#[test]
fn leave_answers_left_and_tells_the_others() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "bob");
    join(&mut a, "r");
    join(&mut b, "r");
    recv(&mut a);
    send(&mut b, json!({"type":"leave","room":"r","ref":"l1"}));
    assert_eq!(recv(&mut b), json!({"type":"left","room":"r","ref":"l1"}));
    assert_eq!(
        recv(&mut a),
        json!({"type":"presence","room":"r","nick":"bob","event":"leave"})
    );
    sync(&mut a);
    sync(&mut b);
    // No longer a member: messages are refused and no longer received.
    send(
        &mut b,
        json!({"type":"message","room":"r","text":"x","ref":"m"}),
    );
    assert_error(&recv(&mut b), "not_in_room", Some("m"));
    post(&mut a, "r", "after");
    sync(&mut b);
    // Without a ref.
    send(&mut a, json!({"type":"leave","room":"r"}));
    assert_eq!(recv(&mut a), json!({"type":"left","room":"r"}));
}

#[test]
fn closing_the_connection_leaves_every_room() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "bob");
    let mut c = connect_as(&server, "carol");
    join(&mut a, "one");
    join(&mut a, "two");
    join(&mut b, "one");
    join(&mut b, "two");
    join(&mut c, "two");
    recv(&mut a);
    recv(&mut a);
    recv(&mut a);
    recv(&mut b);
    // A clean close handshake.
    b.close(None).unwrap();
    while b.read().is_ok() {}
    let mut got = vec![recv(&mut a), recv(&mut a)];
    got.sort_by_key(|v| v["room"].as_str().unwrap().to_string());
    assert_eq!(
        got,
        vec![
            json!({"type":"presence","room":"one","nick":"bob","event":"leave"}),
            json!({"type":"presence","room":"two","nick":"bob","event":"leave"}),
        ]
    );
    assert_eq!(
        recv(&mut c),
        json!({"type":"presence","room":"two","nick":"bob","event":"leave"})
    );
    // An abrupt end of TCP does the same.
    drop(c);
    assert_eq!(
        recv(&mut a),
        json!({"type":"presence","room":"two","nick":"carol","event":"leave"})
    );
    sync(&mut a);
    // The nick is free again.
    let _bob = connect_as(&server, "bob");
}

// ---- messages -------------------------------------------------------------

#[test]
fn message_goes_to_every_member_with_ref_only_on_the_senders_copy() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "bob");
    let mut out = connect_as(&server, "outsider");
    join(&mut a, "r");
    join(&mut b, "r");
    recv(&mut a);
    join(&mut a, "s");
    let mut last_ts = 0;
    for (i, text) in ["hi all", "line one\nline\ttwo", "ünïcödé ✓"]
        .into_iter()
        .enumerate()
    {
        let own = post(&mut a, "r", text);
        let ts = own["ts"].as_u64().unwrap();
        assert_eq!(
            own,
            json!({"type":"message","room":"r","id":i + 1,"from":"alice","text":text,"ts":ts,"ref":"m"})
        );
        assert_eq!(
            recv(&mut b),
            json!({"type":"message","room":"r","id":i + 1,"from":"alice","text":text,"ts":ts})
        );
        assert!(ts >= last_ts, "ts decreased");
        last_ts = ts;
    }
    // bob posts without a ref: both copies are identical, without ref.
    send(&mut b, json!({"type":"message","room":"r","text":"yo"}));
    let mine = recv(&mut b);
    let theirs = recv(&mut a);
    assert_eq!(mine, theirs);
    check_message(&mine, "r", None);
    assert_eq!(mine["id"], 4);
    assert!(mine["ts"].as_u64().unwrap() >= last_ts);
    // Ids are per room.
    assert_eq!(post(&mut a, "s", "other room")["id"], 1);
    sync(&mut b);
    sync(&mut out);
}

#[test]
fn message_to_a_room_not_joined_is_not_in_room() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "bob");
    join(&mut b, "r");
    for room in ["r", "nowhere"] {
        send(
            &mut a,
            json!({"type":"message","room":room,"text":"x","ref":"m"}),
        );
        assert_error(&recv(&mut a), "not_in_room", Some("m"));
    }
    sync(&mut b);
}

#[test]
fn invalid_message_text_is_refused() {
    let server = server(&["--max-text-chars", "10"]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "bob");
    join(&mut a, "r");
    join(&mut b, "r");
    recv(&mut a);
    for text in [
        json!(""),
        json!("   "),
        json!(" \n\t\u{3000}\u{a0}\u{2028}"),
        json!("a\u{7}b"),
        json!("a\rb"),
        json!("a\u{85}b"),
        json!("0123456789x"),
        json!("ééééééééééé"),
        json!(7),
        json!(null),
    ] {
        expect_invalid(
            &mut a,
            json!({"type":"message","room":"r","text":text}),
            "text",
        );
    }
    expect_invalid(&mut a, json!({"type":"message","room":"r"}), "text");
    sync(&mut b); // none of them had an effect
    // 10 scalar values are fine, however many bytes they take.
    assert_eq!(post(&mut a, "r", "0123456789")["id"], 1);
    assert_eq!(post(&mut a, "r", "😀😀😀😀😀😀😀😀😀😀")["id"], 2);
    assert_eq!(post(&mut a, "r", "\ttab\n")["id"], 3);
}

#[test]
fn text_of_4000_multibyte_scalar_values_is_accepted_and_4001_is_not() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    join(&mut a, "r");
    let text = "😀".repeat(4000);
    assert_eq!(text.len(), 16000);
    let m = post(&mut a, "r", &text);
    assert_eq!(m["text"], text.as_str());
    expect_invalid(
        &mut a,
        json!({"type":"message","room":"r","text":"😀".repeat(4001)}),
        "text",
    );
}

// ---- dm -------------------------------------------------------------------

#[test]
fn dm_goes_to_the_recipient_and_back_to_the_sender() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "Bob");
    let mut c = connect_as(&server, "carol");
    // `to` matched ignoring case, answered in the recipient's own spelling.
    send(
        &mut a,
        json!({"type":"dm","to":"bOB","text":"psst","ref":"d1"}),
    );
    let own = recv(&mut a);
    let ts = own["ts"].as_u64().expect("integer ts");
    assert_eq!(
        own,
        json!({"type":"dm","from":"alice","to":"Bob","text":"psst","ts":ts,"ref":"d1"})
    );
    let got = recv(&mut b);
    assert_eq!(
        without_ts(&got),
        json!({"type":"dm","from":"alice","to":"Bob","text":"psst"})
    );
    sync(&mut c);
    sync(&mut a);
    sync(&mut b);
    // Without a ref.
    send(&mut b, json!({"type":"dm","to":"alice","text":"ok"}));
    let x = recv(&mut b);
    let y = recv(&mut a);
    assert_eq!(x, y);
    assert_eq!(
        without_ts(&x),
        json!({"type":"dm","from":"Bob","to":"alice","text":"ok"})
    );
}

#[test]
fn dm_to_oneself_arrives_once() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    send(
        &mut a,
        json!({"type":"dm","to":"ALICE","text":"note","ref":"d"}),
    );
    assert_eq!(
        without_ts(&recv(&mut a)),
        json!({"type":"dm","from":"alice","to":"alice","text":"note","ref":"d"})
    );
    sync(&mut a);
}

#[test]
fn dm_to_nobody_is_no_such_user() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let _b = connect_as(&server, "bob");
    // `to` is not checked against the nick rules.
    for to in ["nobody", "no such user!", "", "bób", "bob2"] {
        send(&mut a, json!({"type":"dm","to":to,"text":"x","ref":"d"}));
        assert_error(&recv(&mut a), "no_such_user", Some("d"));
    }
    // A nick that was given up is nobody's.
    send(&mut a, json!({"type":"nick","nick":"alicia"}));
    recv(&mut a);
    send(
        &mut a,
        json!({"type":"dm","to":"alice","text":"x","ref":"d"}),
    );
    assert_error(&recv(&mut a), "no_such_user", Some("d"));
    // Fields: `to` then `text`.
    expect_invalid(&mut a, json!({"type":"dm","text":"x"}), "to");
    expect_invalid(&mut a, json!({"type":"dm","to":1,"text":""}), "to");
    expect_invalid(&mut a, json!({"type":"dm","to":"bob","text":" "}), "text");
    expect_invalid(&mut a, json!({"type":"dm","to":"nobody","text":""}), "text");
}

// ---- typing ---------------------------------------------------------------

#[test]
fn typing_is_relayed_to_the_others_only() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "bob");
    let mut c = connect_as(&server, "carol");
    join(&mut a, "r");
    join(&mut b, "r");
    join(&mut c, "elsewhere");
    recv(&mut a);
    for active in [true, false] {
        send(
            &mut a,
            json!({"type":"typing","room":"r","active":active,"ref":"t"}),
        );
        sync(&mut a); // no answer, no echo
        assert_eq!(
            recv(&mut b),
            json!({"type":"typing","room":"r","nick":"alice","active":active})
        );
        sync(&mut b);
    }
    sync(&mut c);
    send(
        &mut c,
        json!({"type":"typing","room":"r","active":true,"ref":"t"}),
    );
    assert_error(&recv(&mut c), "not_in_room", Some("t"));
    for active in [json!("yes"), json!(1), json!(null)] {
        expect_invalid(
            &mut a,
            json!({"type":"typing","room":"r","active":active}),
            "active",
        );
    }
    expect_invalid(&mut a, json!({"type":"typing","room":"r"}), "active");
    sync(&mut b);
}

// ---- history --------------------------------------------------------------

fn history(ws: &mut Ws, room: &str, before: u64, limit: Option<u64>) -> Value {
    let mut req = json!({"type":"history","room":room,"before":before,"ref":"h"});
    if let Some(l) = limit {
        req["limit"] = json!(l);
    }
    send(ws, req);
    let v = recv(ws);
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["complete", "messages", "ref", "room", "type"], "{v}");
    assert_eq!(v["type"], "history");
    assert_eq!(v["room"], room);
    assert_eq!(v["ref"], "h");
    for m in v["messages"].as_array().unwrap() {
        check_message(m, room, None);
    }
    v
}

#[test]
fn history_pages_back_with_before_and_limit() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    join(&mut a, "r");
    post_many(&mut a, "r", 60);
    let h = history(&mut a, "r", 61, Some(3));
    assert_eq!(ids(&h["messages"]), vec![58, 59, 60]);
    assert_eq!(h["messages"][0]["text"], "m58");
    assert_eq!(h["complete"], false);
    let h = history(&mut a, "r", 58, None); // default limit 50
    assert_eq!(ids(&h["messages"]), (8..=57).collect::<Vec<_>>());
    assert_eq!(h["complete"], false);
    let h = history(&mut a, "r", 8, Some(100));
    assert_eq!(ids(&h["messages"]), (1..=7).collect::<Vec<_>>());
    assert_eq!(h["complete"], true);
    let h = history(&mut a, "r", 4, Some(3));
    assert_eq!(ids(&h["messages"]), vec![1, 2, 3]);
    assert_eq!(h["complete"], true);
    let h = history(&mut a, "r", 1, None);
    assert_eq!(h["messages"], json!([]));
    assert_eq!(h["complete"], true);
    // `before` past the newest: the newest `limit`.
    let h = history(&mut a, "r", 1000, Some(2));
    assert_eq!(ids(&h["messages"]), vec![59, 60]);
    // limit null is the default.
    send(
        &mut a,
        json!({"type":"history","room":"r","before":61,"limit":null,"ref":"h"}),
    );
    assert_eq!(
        ids(&recv(&mut a)["messages"]),
        (11..=60).collect::<Vec<_>>()
    );
}

#[test]
fn history_complete_reflects_kept_messages_under_retention() {
    // 1000 is the lowest --history the protocol allows.
    let server = server(&["--history", "1000"]);
    let mut a = connect_as(&server, "alice");
    join(&mut a, "r");
    post_many(&mut a, "r", 1010);
    let h = history(&mut a, "r", 1011, Some(3));
    assert_eq!(ids(&h["messages"]), vec![1008, 1009, 1010]);
    assert_eq!(h["complete"], false);
    let h = history(&mut a, "r", 111, Some(100));
    assert_eq!(ids(&h["messages"]), (11..=110).collect::<Vec<_>>());
    assert_eq!(h["complete"], true);
}

#[test]
fn history_errors() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "bob");
    join(&mut b, "r");
    send(
        &mut a,
        json!({"type":"history","room":"r","before":5,"ref":"h"}),
    );
    assert_error(&recv(&mut a), "not_in_room", Some("h"));
    join(&mut a, "r");
    for before in [json!(0), json!(-1), json!(1.0), json!("5"), json!(null)] {
        expect_invalid(
            &mut a,
            json!({"type":"history","room":"r","before":before}),
            "before",
        );
    }
    expect_invalid(&mut a, json!({"type":"history","room":"r"}), "before");
    for limit in [json!(0), json!(101), json!(2.5), json!(true)] {
        expect_invalid(
            &mut a,
            json!({"type":"history","room":"r","before":5,"limit":limit}),
            "limit",
        );
    }
    assert_eq!(history(&mut a, "r", 5, Some(100))["complete"], true);
    // Field order: room, before, limit.
    expect_invalid(
        &mut a,
        json!({"type":"history","room":"no way","before":0,"limit":0}),
        "room",
    );
    expect_invalid(
        &mut a,
        json!({"type":"history","room":"r","before":0,"limit":0}),
        "before",
    );
}

// ---- recovery with since and epoch -------------------------------------------

/// alice posts `first` messages with bob in the room; bob leaves (keeping
/// the epoch and id 'first'); alice posts `missed` more.
fn with_missed(extra: &[&str], first: usize, missed: usize) -> (Server, Ws, Ws, Value) {
    let server = server(extra);
    let mut a = connect_as(&server, "alice");
    join(&mut a, "r");
    let mut b = connect_as(&server, "bob");
    let epoch = join(&mut b, "r")["epoch"].clone();
    recv(&mut a);
    post_many(&mut a, "r", first);
    for _ in 0..first {
        recv(&mut b);
    }
    drop(b);
    assert_eq!(recv(&mut a)["event"], "leave");
    for i in first + 1..=first + missed {
        post(&mut a, "r", &format!("m{i}"));
    }
    let b = connect_as(&server, "bob");
    (server, a, b, epoch)
}

#[test]
fn join_with_since_and_epoch_recovers_exactly_the_missed_messages() {
    let (_s, mut a, mut b, epoch) = with_missed(&[], 5, 3);
    send(
        &mut b,
        json!({"type":"join","room":"r","since":5,"epoch":epoch,"ref":"j"}),
    );
    let j = recv(&mut b);
    check_joined(&j, "r", Some("j"));
    assert_eq!(j["epoch"], epoch);
    assert_eq!(ids(&j["history"]), vec![6, 7, 8]);
    assert_eq!(j["history"][0]["text"], "m6");
    assert_eq!(j["complete"], true);
    assert_eq!(j["members"], json!(["alice", "bob"]));
    assert_eq!(recv(&mut a)["event"], "join");
    // Without an epoch, since refers to the current one.
    send(&mut b, json!({"type":"leave","room":"r"}));
    recv(&mut b);
    send(
        &mut b,
        json!({"type":"join","room":"r","since":6,"epoch":null,"ref":"j"}),
    );
    assert_eq!(ids(&recv(&mut b)["history"]), vec![7, 8]);
    // since 0: everything.
    send(
        &mut b,
        json!({"type":"join","room":"r","since":0,"ref":"j"}),
    );
    let j = recv(&mut b);
    assert_eq!(ids(&j["history"]), (1..=8).collect::<Vec<_>>());
    assert_eq!(j["complete"], true);
}

#[test]
fn join_with_since_at_or_past_newest_gives_empty_complete_history() {
    let (_s, _a, mut b, epoch) = with_missed(&[], 5, 3);
    for since in [8u64, 9, 1000, (1 << 53) - 1] {
        send(
            &mut b,
            json!({"type":"join","room":"r","since":since,"epoch":epoch,"ref":"j"}),
        );
        let j = recv(&mut b);
        check_joined(&j, "r", Some("j"));
        assert_eq!(j["history"], json!([]), "since {since}");
        assert_eq!(j["complete"], true, "since {since}");
    }
}

#[test]
fn join_with_since_more_than_100_missed_is_incomplete() {
    let (_s, mut a, mut b, epoch) = with_missed(&[], 2, 130);
    send(
        &mut b,
        json!({"type":"join","room":"r","since":2,"epoch":epoch,"ref":"j"}),
    );
    let j = recv(&mut b);
    assert_eq!(ids(&j["history"]), (33..=132).collect::<Vec<_>>());
    assert_eq!(j["complete"], false);
    recv(&mut a);
    // Paging back fills the gap exactly.
    let h = history(&mut b, "r", 33, Some(100));
    assert_eq!(ids(&h["messages"]), (1..=32).collect::<Vec<_>>());
    // Exactly 100 missed is complete.
    send(
        &mut b,
        json!({"type":"join","room":"r","since":32,"epoch":epoch,"ref":"j"}),
    );
    let j = recv(&mut b);
    assert_eq!(ids(&j["history"]), (33..=132).collect::<Vec<_>>());
    assert_eq!(j["complete"], true);
}

#[test]
fn join_with_since_is_incomplete_when_retention_dropped_some() {
    // 1010 messages, the newest 1000 kept: 3..=10 are gone.
    let (_s, _a, mut b, epoch) = with_missed(&["--history", "1000"], 2, 1008);
    send(
        &mut b,
        json!({"type":"join","room":"r","since":2,"epoch":epoch,"ref":"j"}),
    );
    let j = recv(&mut b);
    assert_eq!(ids(&j["history"]), (911..=1010).collect::<Vec<_>>());
    assert_eq!(j["complete"], false);
    // Paging back to fill the gap stops at the oldest kept message.
    let mut got = ids(&j["history"]);
    loop {
        let h = history(&mut b, "r", got[0], Some(100));
        got.splice(0..0, ids(&h["messages"]));
        if h["complete"] == true {
            break;
        }
    }
    assert_eq!(got, (11..=1010).collect::<Vec<_>>());
    // Missed only kept ones: complete.
    send(
        &mut b,
        json!({"type":"join","room":"r","since":910,"epoch":epoch,"ref":"j"}),
    );
    let j = recv(&mut b);
    assert_eq!(ids(&j["history"]), (911..=1010).collect::<Vec<_>>());
    assert_eq!(j["complete"], true);
}

#[test]
fn join_with_a_wrong_epoch_gives_the_newest_50() {
    let (_s, _a, mut b, epoch) = with_missed(&[], 5, 55);
    let wrong = format!("{}x", epoch.as_str().unwrap());
    send(
        &mut b,
        json!({"type":"join","room":"r","since":5,"epoch":wrong,"ref":"j"}),
    );
    let j = recv(&mut b);
    check_joined(&j, "r", Some("j"));
    assert_eq!(j["epoch"], epoch);
    assert_eq!(ids(&j["history"]), (11..=60).collect::<Vec<_>>());
    assert_eq!(j["complete"], false);
}

#[test]
fn join_field_rules() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    for since in [
        json!(1.0),
        json!(-1),
        json!(9007199254740992u64),
        json!("1"),
        json!(true),
    ] {
        expect_invalid(
            &mut a,
            json!({"type":"join","room":"r","since":since}),
            "since",
        );
    }
    // Floats spelled as such in the raw text, too.
    for raw in [
        r#"{"type":"join","room":"r","since":1e0,"ref":"e"}"#,
        r#"{"type":"join","room":"r","since":5.0,"ref":"e"}"#,
        r#"{"type":"join","room":"r","since":-0.0,"ref":"e"}"#,
    ] {
        send_text(&mut a, raw);
        assert_invalid(&recv(&mut a), "since", Some("e"));
    }
    expect_invalid(
        &mut a,
        json!({"type":"join","room":"r","since":1,"epoch":5}),
        "epoch",
    );
    for room in [
        json!(""),
        json!("a b"),
        json!("a.b"),
        json!("é"),
        json!("r".repeat(65)),
        json!(3),
        json!(null),
    ] {
        expect_invalid(&mut a, json!({"type":"join","room":room}), "room");
    }
    expect_invalid(&mut a, json!({"type":"join"}), "room");
    // Field order: room, since, epoch.
    expect_invalid(
        &mut a,
        json!({"type":"join","room":"a b","since":-1,"epoch":1}),
        "room",
    );
    expect_invalid(
        &mut a,
        json!({"type":"join","room":"r","since":-1,"epoch":1}),
        "since",
    );
    // None of them joined anything.
    sync(&mut a);
    send(&mut a, json!({"type":"rooms","ref":"x"}));
    assert_eq!(recv(&mut a), json!({"type":"rooms","rooms":[],"ref":"x"}));
    // 64 characters, every allowed character; null optionals are absent.
    let room = format!("A-z_09{}", "r".repeat(58));
    send(
        &mut a,
        json!({"type":"join","room":room,"since":null,"epoch":null,"ref":"ok"}),
    );
    check_joined(&recv(&mut a), &room, Some("ok"));
}

// ---- rooms ----------------------------------------------------------------

#[test]
fn rooms_lists_rooms_with_members_sorted_with_counts() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "bob");
    send(&mut a, json!({"type":"rooms","ref":"r0"}));
    assert_eq!(recv(&mut a), json!({"type":"rooms","rooms":[],"ref":"r0"}));
    for room in ["beta", "alpha", "Gamma", "Alpha", "delta", "kept"] {
        join(&mut a, room);
    }
    for room in ["beta", "Gamma"] {
        join(&mut b, room);
        recv(&mut a);
    }
    // "kept" keeps its history but has no members: not listed.
    post(&mut a, "kept", "x");
    send(&mut a, json!({"type":"leave","room":"kept"}));
    recv(&mut a);
    // "delta" is forgotten at once.
    send(&mut a, json!({"type":"leave","room":"delta"}));
    recv(&mut a);
    send(&mut b, json!({"type":"rooms","ref":"r1"}));
    assert_eq!(
        recv(&mut b),
        json!({"type":"rooms","rooms":[
            {"name":"Alpha","members":1},
            {"name":"alpha","members":1},
            {"name":"beta","members":2},
            {"name":"Gamma","members":2},
        ],"ref":"r1"})
    );
    send(&mut b, json!({"type":"rooms"}));
    assert_eq!(recv(&mut b)["ref"], Value::Null);
}

// ---- errors ---------------------------------------------------------------

/// Raw frames written in one go, so that the server reads them in one turn
/// (no refill between them: that is not a timing assertion, only a way to
/// make the bucket's state known).
fn burst(s: &mut TcpStream, payloads: &[&[u8]]) {
    let mut bytes = Vec::new();
    for p in payloads {
        bytes.extend(frame(true, 0x1, p));
    }
    s.write_all(&bytes).unwrap();
}

fn raw_chat(server: &Server, nick: &str) -> TcpStream {
    let mut s = raw_ws(server.addr, &format!("/ws?nick={nick}"), "");
    assert_eq!(raw_recv(&mut s)["nick"], nick);
    s
}

#[test]
fn rate_limited_before_parsing_without_ref_and_without_effect() {
    let server = Server::start(&["--rate-burst", "3", "--rate-per-sec", "1"]);
    let mut watcher = client(&server, "/ws?nick=watcher");
    recv(&mut watcher);
    send(&mut watcher, json!({"type":"join","room":"r"}));
    recv(&mut watcher);
    let mut s = raw_chat(&server, "alice");
    // Pings take no token.
    let mut bytes = Vec::new();
    for _ in 0..5 {
        bytes.extend(frame(true, 0x9, b"p"));
    }
    s.write_all(&bytes).unwrap();
    burst(
        &mut s,
        &[
            br#"{"type":"join","room":"r","ref":"1"}"#,
            br#"{"type":"rooms","ref":"2"}"#,
            b"not json",
            br#"{"type":"message","room":"r","text":"lost","ref":"4"}"#,
            b"not json either",
        ],
    );
    let mut got = Vec::new();
    while got.len() < 5 {
        let (_, op, p) = read_frame(&mut s).unwrap();
        match op {
            0xA => assert_eq!(p, b"p"),
            0x1 => got.push(serde_json::from_slice::<Value>(&p).unwrap()),
            _ => panic!("unexpected opcode {op}"),
        }
    }
    assert_eq!(got[0]["type"], "joined");
    assert_eq!(got[0]["ref"], "1");
    assert_eq!(got[1]["type"], "rooms");
    assert_error(&got[2], "bad_json", None);
    // Refused before parsing: not bad_json, no ref, no effect.
    assert_error(&got[3], "rate_limited", None);
    assert_error(&got[4], "rate_limited", None);
    assert_eq!(
        recv(&mut watcher),
        json!({"type":"presence","room":"r","nick":"alice","event":"join"})
    );
    sync(&mut watcher); // the refused message never arrived
}

#[test]
fn third_strike_closes_with_1008_at_the_next_refused_frame() {
    let server = Server::start(&["--rate-burst", "3", "--rate-per-sec", "1"]);
    let mut s = raw_chat(&server, "alice");
    let rooms: &[u8] = br#"{"type":"rooms","ref":"r"}"#;
    burst(
        &mut s,
        &[
            rooms, rooms, rooms, // the bucket
            rooms, b"[", rooms, // three refusals
            rooms, // closes
            rooms, // ignored
        ],
    );
    for _ in 0..3 {
        assert_eq!(raw_recv(&mut s)["type"], "rooms");
    }
    for _ in 0..3 {
        assert_error(&raw_recv(&mut s), "rate_limited", None);
    }
    let (_, op, payload) = read_frame(&mut s).unwrap();
    assert_eq!(op, 0x8, "expected the close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008);
    // Nothing follows the close frame: our close reply ends the connection.
    s.write_all(&frame(true, 0x8, &1000u16.to_be_bytes()))
        .unwrap();
    assert!(wait_eof(&mut s), "the server should close TCP");
}

#[test]
fn bad_json_variants_and_no_ref() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    join(&mut a, "r");
    let mut b = connect_as(&server, "bob");
    join(&mut b, "r");
    recv(&mut a);
    for raw in [
        "not json",
        "",
        "[1,2]",
        r#"["type","rooms"]"#,
        r#""rooms""#,
        "42",
        "null",
        r#"{}"#,
        r#"{"ref":"x"}"#,
        r#"{"type":5,"ref":"x"}"#,
        r#"{"type":null,"ref":"x"}"#,
        r#"{"type":["rooms"],"ref":"x"}"#,
        r#"{"type":"rooms","ref":"x"} trailing"#,
        r#"{"type":"rooms","ref":"x""#,
        r#"{"type":"message","room":"r","text":"\ud800","ref":"x"}"#,
        r#"{"type":"message","room":"r","text":"a\udc00b","ref":"x"}"#,
    ] {
        send_text(&mut a, raw);
        let v = recv(&mut a);
        assert_error(&v, "bad_json", None);
    }
    sync(&mut b); // nothing was posted
    // A valid surrogate pair is fine.
    send_text(
        &mut a,
        r#"{"type":"message","room":"r","text":"\ud83d\ude00","ref":"m"}"#,
    );
    assert_eq!(recv(&mut a)["text"], "😀");
}

#[test]
fn unknown_type_with_ref_and_before_invalid() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    send(&mut a, json!({"type":"shout","text":"","ref":"u1"}));
    assert_error(&recv(&mut a), "unknown_type", Some("u1"));
    send(&mut a, json!({"type":"","ref":"u2"}));
    assert_error(&recv(&mut a), "unknown_type", Some("u2"));
    send(&mut a, json!({"type":"welcome"}));
    assert_error(&recv(&mut a), "unknown_type", None);
    // unknown_type wins over an invalid ref; the ref is not echoed.
    send(&mut a, json!({"type":"shout","ref":"x".repeat(65)}));
    assert_error(&recv(&mut a), "unknown_type", None);
}

#[test]
fn invalid_ref_is_checked_first_and_answered_without_ref() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    join(&mut a, "r");
    // 65 bytes; 22 three-byte characters (66 bytes, 22 characters).
    for r in [
        json!("x".repeat(65)),
        json!("€".repeat(22)),
        json!(5),
        json!({}),
    ] {
        for frame in [
            json!({"type":"rooms","ref":r}),
            json!({"type":"message","ref":r}),
            json!({"type":"nick","nick":"bad nick","ref":r}),
            json!({"type":"join","room":"","since":-1,"ref":r}),
        ] {
            send(&mut a, frame);
            assert_invalid(&recv(&mut a), "ref", None);
        }
    }
    // 64 bytes of UTF-8 are fine, and echoed as given; so is "".
    for r in ["x".repeat(64), "é".repeat(32), String::new()] {
        send(&mut a, json!({"type":"rooms","ref":r}));
        assert_eq!(recv(&mut a)["ref"], r.as_str());
    }
    // ref null is absent.
    send(
        &mut a,
        json!({"type":"message","room":"r","text":"x","ref":null}),
    );
    check_message(&recv(&mut a), "r", None);
}

#[test]
fn invalid_fields_in_table_order() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    join(&mut a, "r");
    // message: room, then text.
    expect_invalid(&mut a, json!({"type":"message","text":""}), "room");
    expect_invalid(
        &mut a,
        json!({"type":"message","room":"a b","text":""}),
        "room",
    );
    expect_invalid(&mut a, json!({"type":"message","room":"r"}), "text");
    // leave, typing.
    expect_invalid(&mut a, json!({"type":"leave","room":null}), "room");
    expect_invalid(&mut a, json!({"type":"leave","room":"x y"}), "room");
    expect_invalid(
        &mut a,
        json!({"type":"typing","room":"","active":"x"}),
        "room",
    );
    // invalid comes before not_in_room.
    expect_invalid(
        &mut a,
        json!({"type":"message","room":"notjoined","text":" "}),
        "text",
    );
    expect_invalid(
        &mut a,
        json!({"type":"typing","room":"notjoined","active":1}),
        "active",
    );
    expect_invalid(
        &mut a,
        json!({"type":"history","room":"notjoined"}),
        "before",
    );
    expect_invalid(
        &mut a,
        json!({"type":"dm","to":"nobody","text":"\u{0}"}),
        "text",
    );
}

#[test]
fn too_many_rooms_per_connection() {
    let server = server(&["--max-rooms-per-conn", "2"]);
    let mut a = connect_as(&server, "alice");
    join(&mut a, "a");
    join(&mut a, "b");
    send(&mut a, json!({"type":"join","room":"c","ref":"j3"}));
    assert_error(&recv(&mut a), "too_many_rooms", Some("j3"));
    // A refresh is not a new room.
    join(&mut a, "a");
    // invalid comes first.
    expect_invalid(&mut a, json!({"type":"join","room":"c d"}), "room");
    send(&mut a, json!({"type":"rooms","ref":"x"}));
    assert_eq!(
        recv(&mut a),
        json!({"type":"rooms","rooms":[{"name":"a","members":1},{"name":"b","members":1}],"ref":"x"})
    );
    send(&mut a, json!({"type":"leave","room":"a"}));
    recv(&mut a);
    join(&mut a, "c");
    // Another connection has its own allowance.
    let mut b = connect_as(&server, "bob");
    join(&mut b, "d");
    join(&mut b, "e");
}

#[test]
fn too_many_rooms_on_the_server() {
    let server = server(&["--max-rooms", "2"]);
    let mut a = connect_as(&server, "alice");
    let mut b = connect_as(&server, "bob");
    join(&mut a, "one");
    join(&mut b, "two");
    send(&mut b, json!({"type":"join","room":"three","ref":"j"}));
    assert_error(&recv(&mut b), "too_many_rooms", Some("j"));
    // Existing rooms can still be joined.
    join(&mut b, "one");
    recv(&mut a);
    send(&mut a, json!({"type":"rooms","ref":"x"}));
    assert_eq!(
        recv(&mut a),
        json!({"type":"rooms","rooms":[{"name":"one","members":2},{"name":"two","members":1}],"ref":"x"})
    );
    // An emptied room without history is forgotten at once: room for a new one.
    send(&mut b, json!({"type":"leave","room":"two"}));
    recv(&mut b);
    join(&mut a, "three");
}

#[test]
fn error_precedence_among_the_non_invalid_codes() {
    let server = server(&[]);
    let mut a = connect_as(&server, "alice");
    let _b = connect_as(&server, "bob");
    // bad_json wins over everything after it, even with a valid ref.
    send(&mut a, json!({"type":7,"nick":"bob","ref":"r"}));
    assert_error(&recv(&mut a), "bad_json", None);
    // invalid wins over nick_taken / not_in_room / no_such_user.
    send(&mut a, json!({"type":"nick","nick":"bob!","ref":"r"}));
    assert_invalid(&recv(&mut a), "nick", Some("r"));
    send(&mut a, json!({"type":"leave","room":"a b","ref":"r"}));
    assert_invalid(&recv(&mut a), "room", Some("r"));
    send(
        &mut a,
        json!({"type":"dm","to":"nobody","text":"","ref":"r"}),
    );
    assert_invalid(&recv(&mut a), "text", Some("r"));
}

// ---- ref echo ---------------------------------------------------------------

#[test]
fn every_direct_answer_carries_ref_and_nothing_else_does() {
    let server = server(&[]);
    let mut a = client(&server, "/ws?nick=alice");
    let w = recv(&mut a);
    assert!(w.get("ref").is_none());
    let mut b = connect_as(&server, "bob");
    join(&mut b, "r");

    let answers = [
        (json!({"type":"join","room":"r","ref":"1"}), "joined"),
        (
            json!({"type":"message","room":"r","text":"t","ref":"2"}),
            "message",
        ),
        (json!({"type":"dm","to":"bob","text":"t","ref":"3"}), "dm"),
        (
            json!({"type":"history","room":"r","before":10,"ref":"4"}),
            "history",
        ),
        (json!({"type":"rooms","ref":"5"}), "rooms"),
        (json!({"type":"nick","nick":"al","ref":"6"}), "nick"),
        (json!({"type":"nick","nick":"al","ref":"7"}), "nick"),
        (json!({"type":"leave","room":"r","ref":"8"}), "left"),
        (json!({"type":"leave","room":"r","ref":"9"}), "error"),
    ];
    for (req, ty) in answers {
        let r = req["ref"].clone();
        send(&mut a, req);
        let v = recv(&mut a);
        assert_eq!(v["type"], ty, "{v}");
        assert_eq!(v["ref"], r, "{v}");
    }
    // What bob saw: presence, message, dm, nick, presence; none with ref.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let v = recv(&mut b);
        assert!(v.get("ref").is_none(), "not a direct answer: {v}");
        seen.push(v["type"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ["presence", "message", "dm", "nick", "presence"]);
    sync(&mut b);
    // typing: no answer at all, and the relay has no ref.
    send(&mut a, json!({"type":"join","room":"r"}));
    recv(&mut a);
    recv(&mut b);
    send(
        &mut a,
        json!({"type":"typing","room":"r","active":true,"ref":"t"}),
    );
    sync(&mut a);
    assert_eq!(
        recv(&mut b),
        json!({"type":"typing","room":"r","nick":"al","active":true})
    );
}
