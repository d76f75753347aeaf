//! Unit tests of the chat state machine through a recording [`Outbox`].

use std::rc::Rc;

use serde_json::{Value, json};

use super::*;

#[derive(Default)]
struct Rec {
    sent: Vec<(ConnId, Rc<[u8]>)>,
    closed: Vec<(ConnId, u16, String)>,
}

impl Outbox for Rec {
    fn send(&mut self, to: ConnId, frame: &Rc<[u8]>) {
        self.sent.push((to, frame.clone()));
    }
    fn close(&mut self, to: ConnId, code: u16, reason: &str) {
        self.closed.push((to, code, reason.to_owned()));
    }
}

/// Decodes one server payload into its JSON.
fn decode(f: &[u8]) -> Value {
    serde_json::from_slice(f).expect("payload is JSON")
}

struct H {
    chat: Chat,
    out: Rec,
    now: Now,
}

/// Config for most tests: the rate limit off, so it does not interfere.
fn cfg() -> ChatConfig {
    ChatConfig {
        motd: "hello".into(),
        rate_burst: 0,
        ..ChatConfig::default()
    }
}

impl H {
    fn new() -> H {
        H::with(cfg())
    }

    fn with(cfg: ChatConfig) -> H {
        H {
            chat: Chat::new(cfg, 42),
            out: Rec::default(),
            now: Now {
                mono_ms: 1_000_000,
                wall_ms: 1_763_780_000_000,
            },
        }
    }

    /// Connects and returns the welcome.
    fn connect(&mut self, id: ConnId, nick: Option<&str>) -> Value {
        self.chat.connect(id, nick, self.now, &mut self.out);
        let mut f = self.drain();
        assert_eq!(f.len(), 1);
        let (to, v) = f.remove(0);
        assert_eq!(to, id);
        v
    }

    /// Connects with a nick that must be granted.
    fn user(&mut self, id: ConnId, nick: &str) {
        let w = self.connect(id, Some(nick));
        assert_eq!(w["nick"], nick);
    }

    fn send(&mut self, id: ConnId, v: Value) {
        self.raw(id, v.to_string().as_bytes());
    }

    fn raw(&mut self, id: ConnId, msg: &[u8]) {
        self.chat.on_text(id, msg, self.now, &mut self.out);
    }

    fn drain(&mut self) -> Vec<(ConnId, Value)> {
        self.out
            .sent
            .drain(..)
            .map(|(to, f)| (to, decode(&f)))
            .collect()
    }

    fn frames(&mut self) -> Vec<(ConnId, Rc<[u8]>)> {
        std::mem::take(&mut self.out.sent)
    }

    /// Sends and expects exactly one answer, to the sender.
    fn ask(&mut self, id: ConnId, v: Value) -> Value {
        self.send(id, v);
        let mut f = self.drain();
        assert_eq!(f.len(), 1, "exactly one answer: {f:?}");
        let (to, v) = f.remove(0);
        assert_eq!(to, id);
        v
    }

    /// Sends and returns the one frame the sender gets; others may hear more.
    fn answer(&mut self, id: ConnId, v: Value) -> Value {
        self.send(id, v);
        let mut mine: Vec<_> = self
            .drain()
            .into_iter()
            .filter(|(to, _)| *to == id)
            .collect();
        assert_eq!(mine.len(), 1, "exactly one answer: {mine:?}");
        mine.remove(0).1
    }

    fn ask_raw(&mut self, id: ConnId, msg: &[u8]) -> Value {
        self.raw(id, msg);
        let mut f = self.drain();
        assert_eq!(f.len(), 1, "exactly one answer: {f:?}");
        assert_eq!(f[0].0, id);
        f.remove(0).1
    }

    fn join(&mut self, id: ConnId, room: &str) -> Value {
        self.send(id, json!({"type": "join", "room": room}));
        let f = self.drain();
        let mine: Vec<_> = f.into_iter().filter(|(to, _)| *to == id).collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].1["type"], "joined", "{:?}", mine[0].1);
        mine[0].1.clone()
    }

    fn post(&mut self, id: ConnId, room: &str, text: &str) {
        self.send(id, json!({"type": "message", "room": room, "text": text}));
        let f = self.drain();
        assert!(
            f.iter().any(|(to, v)| *to == id && v["type"] == "message"),
            "{f:?}"
        );
    }

    fn advance(&mut self, ms: u64) {
        self.now.mono_ms += ms;
        self.now.wall_ms += ms;
    }
}

fn err(v: &Value, code: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
}

fn invalid(v: &Value, field: &str) {
    err(v, "invalid");
    let m = v["message"].as_str().unwrap();
    assert!(m.contains(&format!("\"{field}\"")), "names {field}: {m}");
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

// ---- welcome and nicks ----

#[test]
fn chat_welcome_is_first_frame() {
    let mut h = H::new();
    let w = h.connect(1, Some("alice"));
    assert_eq!(
        w,
        json!({"type": "welcome", "nick": "alice", "motd": "hello", "protocol": 1,
            "limits": {"text_chars": 4000, "message_bytes": 65536, "rate_burst": 0,
                       "rate_per_sec": 2, "rooms_per_conn": 32}})
    );
    assert_eq!(h.chat.connections(), 1);
}

#[test]
fn chat_bad_requested_nicks_get_guest() {
    let mut h = H::new();
    h.user(1, "alice");
    let long = "a".repeat(33);
    let mut seen = std::collections::HashSet::new();
    for (i, n) in [
        None,
        Some(""),
        Some("a b"),
        Some("é"),
        Some(long.as_str()),
        Some("ALICE"),
        Some("alice"),
    ]
    .into_iter()
    .enumerate()
    {
        let w = h.connect(10 + i, n);
        let nick = w["nick"].as_str().unwrap().to_owned();
        assert!(nick.starts_with("guest-"), "{nick}");
        assert!(validate::valid_nick(&nick));
        assert!(seen.insert(nick.to_ascii_lowercase()), "unique");
    }
    // 32 characters is the longest allowed nick.
    let max = "b".repeat(32);
    h.user(30, &max);
}

#[test]
fn chat_guest_nick_skips_taken_names() {
    let mut h = H::new();
    h.user(1, "GUEST-1");
    let w = h.connect(2, None);
    assert_ne!(w["nick"].as_str().unwrap().to_ascii_lowercase(), "guest-1");
    h.user(3, "guest-3");
    let a = h.connect(4, None)["nick"].as_str().unwrap().to_owned();
    let b = h.connect(5, None)["nick"].as_str().unwrap().to_owned();
    assert_ne!(a, b);
    assert_ne!(a, "guest-3");
    assert_ne!(b, "guest-3");
}

#[test]
fn chat_nick_change_reaches_room_mates_once() {
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "bob");
    h.user(3, "carol");
    h.join(1, "r1");
    h.join(1, "r2");
    h.join(2, "r1");
    h.join(2, "r2");
    h.drain();
    h.send(1, json!({"type": "nick", "nick": "alicia", "ref": "n1"}));
    let f = h.frames();
    assert_eq!(f.len(), 2, "owner + bob once; carol shares no room");
    let own = f.iter().find(|(to, _)| *to == 1).unwrap();
    let bob = f.iter().find(|(to, _)| *to == 2).unwrap();
    assert_eq!(
        decode(&own.1),
        json!({"type": "nick", "old": "alice", "nick": "alicia", "ref": "n1"})
    );
    assert_eq!(
        decode(&bob.1),
        json!({"type": "nick", "old": "alice", "nick": "alicia"})
    );
    // The new nick is in use and the old one is free.
    err(
        &h.ask(3, json!({"type": "nick", "nick": "ALICIA", "ref": "x"})),
        "nick_taken",
    );
    assert_eq!(
        h.ask(3, json!({"type": "nick", "nick": "alice"}))["nick"],
        "alice"
    );
}

#[test]
fn chat_nick_change_without_ref_is_one_shared_frame() {
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "bob");
    h.user(3, "carol");
    for id in 1..=3 {
        h.join(id, "r");
    }
    h.drain();
    h.send(1, json!({"type": "nick", "nick": "al"}));
    let f = h.frames();
    assert_eq!(f.len(), 3);
    assert!(
        f.windows(2).all(|w| Rc::ptr_eq(&w[0].1, &w[1].1)),
        "one frame shared"
    );
}

#[test]
fn chat_nick_same_answers_owner_only_and_case_variant_is_allowed() {
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "bob");
    h.join(1, "r");
    h.join(2, "r");
    h.drain();
    let v = h.ask(1, json!({"type": "nick", "nick": "alice", "ref": "s"}));
    assert_eq!(
        v,
        json!({"type": "nick", "old": "alice", "nick": "alice", "ref": "s"})
    );
    h.send(1, json!({"type": "nick", "nick": "Alice"}));
    let f = h.drain();
    assert_eq!(f.len(), 2);
    for (_, v) in &f {
        assert_eq!(*v, json!({"type": "nick", "old": "alice", "nick": "Alice"}));
    }
    // Members are now listed under the new spelling.
    assert_eq!(h.join(2, "r")["members"], json!(["Alice", "bob"]));
}

#[test]
fn chat_nick_taken_and_invalid() {
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "bob");
    let v = h.ask(2, json!({"type": "nick", "nick": "Alice", "ref": "r"}));
    err(&v, "nick_taken");
    assert_eq!(v["ref"], "r");
    invalid(&h.ask(2, json!({"type": "nick", "nick": "al ice"})), "nick");
    invalid(&h.ask(2, json!({"type": "nick", "nick": ""})), "nick");
    invalid(
        &h.ask(2, json!({"type": "nick", "nick": "x".repeat(33)})),
        "nick",
    );
    invalid(&h.ask(2, json!({"type": "nick"})), "nick");
    invalid(&h.ask(2, json!({"type": "nick", "nick": 5})), "nick");
    assert_eq!(
        h.ask(2, json!({"type": "nick", "nick": "A-z_0.9"}))["nick"],
        "A-z_0.9"
    );
}

#[test]
fn chat_rename_frees_the_old_nick_and_dms_follow_the_new_one() {
    let mut h = H::new();
    // Enough users that the nick index grows (and rehashes) along the way.
    for id in 10..300 {
        h.user(id, &format!("User{id}"));
    }
    h.user(1, "Alice");
    h.user(2, "bob");
    assert_eq!(
        h.ask(1, json!({"type": "nick", "nick": "carol"}))["nick"],
        "carol"
    );
    h.user(3, "ALICE");
    err(
        &h.ask(2, json!({"type": "nick", "nick": "Carol"})),
        "nick_taken",
    );
    h.send(2, json!({"type": "dm", "to": "CAROL", "text": "hi"}));
    let f = h.drain();
    assert!(
        f.iter()
            .any(|(to, v)| *to == 1 && v["type"] == "dm" && v["to"] == "carol")
    );
    h.send(2, json!({"type": "dm", "to": "user299", "text": "hi"}));
    assert!(
        h.drain()
            .iter()
            .any(|(to, v)| *to == 299 && v["from"] == "bob")
    );
    h.chat.disconnect(299, h.now, &mut h.out);
    err(
        &h.ask(2, json!({"type": "dm", "to": "User299", "text": "hi"})),
        "no_such_user",
    );
    h.user(4, "user299");
}

#[test]
fn chat_member_lists_stay_sorted_through_joins_renames_and_leaves() {
    let mut h = H::new();
    let mut expect: Vec<String> = Vec::new();
    // Joins in a scrambled order, mixed case.
    for i in 0..60u32 {
        let id = (i * 37 % 61) as ConnId + 1;
        let nick = if id.is_multiple_of(3) {
            format!("N{id:02}")
        } else {
            format!("n{id:02}")
        };
        h.user(id, &nick);
        h.join(id, "r");
        expect.push(nick);
    }
    // A rename moves its holder; a leave and a disconnect take theirs out.
    h.send(5, json!({"type": "nick", "nick": "AAA"}));
    expect.retain(|n| n != "n05");
    expect.push("AAA".into());
    h.send(7, json!({"type": "leave", "room": "r"}));
    expect.retain(|n| n != "n07");
    h.chat.disconnect(9, h.now, &mut h.out);
    expect.retain(|n| n != "N09");
    h.drain();
    h.user(100, "zed");
    expect.push("zed".into());
    expect.sort_by_key(|n| n.to_ascii_lowercase());
    assert_eq!(h.join(100, "r")["members"], json!(expect));
}

#[test]
fn chat_disconnect_frees_nick_and_leaves_rooms() {
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "bob");
    h.join(1, "a");
    h.join(1, "b");
    h.join(2, "a");
    h.join(2, "b");
    h.drain();
    h.chat.disconnect(1, h.now, &mut h.out);
    let f = h.drain();
    assert_eq!(f.len(), 2);
    let mut rooms: Vec<_> = f
        .iter()
        .map(|(to, v)| {
            assert_eq!(*to, 2);
            assert_eq!(v["type"], "presence");
            assert_eq!(v["nick"], "alice");
            assert_eq!(v["event"], "leave");
            v["room"].as_str().unwrap().to_owned()
        })
        .collect();
    rooms.sort();
    assert_eq!(rooms, ["a", "b"]);
    assert_eq!(h.chat.connections(), 1);
    h.user(3, "ALICE");
    // Frames from a gone connection are ignored.
    h.send(1, json!({"type": "rooms"}));
    assert!(h.drain().is_empty());
}

// ---- JSON errors and precedence ----

#[test]
fn chat_bad_json() {
    let mut h = H::new();
    h.user(1, "alice");
    for m in [
        &b"nope"[..],
        b"",
        b"[]",
        b"\"join\"",
        b"42",
        b"null",
        b"{}",
        b"{\"type\":1}",
        b"{\"type\":null}",
        b"{\"type\":[\"join\"]}",
        b"{\"type\":\"rooms\"",
        b"{\"type\":\"rooms\"} x",
        // Lone surrogate escapes are not valid JSON text for us.
        br#"{"type":"rooms","x":"\ud800"}"#,
        br#"{"type":"message","room":"r","text":"a\udc00b"}"#,
        br#"{"type":"rooms","ref":"\ud83d"}"#,
    ] {
        let v = h.ask_raw(1, m);
        err(&v, "bad_json");
        assert!(v.get("ref").is_none());
    }
    // A bad_json never carries a ref, even a valid one.
    let v = h.ask(1, json!({"type": 7, "ref": "r"}));
    err(&v, "bad_json");
    assert!(v.get("ref").is_none());
    // A surrogate pair is fine.
    h.join(1, "r");
    h.raw(1, br#"{"type":"message","room":"r","text":"\ud83d\ude00"}"#);
    assert_eq!(h.drain()[0].1["text"], "\u{1F600}");
}

#[test]
fn chat_unknown_type() {
    let mut h = H::new();
    h.user(1, "alice");
    let v = h.ask(1, json!({"type": "Join", "room": "r", "ref": "u"}));
    err(&v, "unknown_type");
    assert_eq!(v["ref"], "u");
    // unknown_type wins over an invalid ref, and carries no ref then.
    let v = h.ask(1, json!({"type": "shout", "ref": 5}));
    err(&v, "unknown_type");
    assert!(v.get("ref").is_none());
    let v = h.ask(1, json!({"type": "", "ref": "x".repeat(65)}));
    err(&v, "unknown_type");
    assert!(v.get("ref").is_none());
}

#[test]
fn chat_ref_rules() {
    let mut h = H::new();
    h.user(1, "alice");
    for bad in [
        json!(5),
        json!(true),
        json!({}),
        json!(["a"]),
        json!("x".repeat(65)),
        json!("é".repeat(33)),
    ] {
        let v = h.ask(1, json!({"type": "rooms", "ref": bad}));
        invalid(&v, "ref");
        assert!(v.get("ref").is_none(), "an invalid ref is not echoed");
    }
    // 64 bytes, and 32 two-byte characters, are fine; null is absent.
    for good in ["x".repeat(64), "é".repeat(32), String::new()] {
        let v = h.ask(1, json!({"type": "rooms", "ref": good}));
        assert_eq!(v["type"], "rooms");
        assert_eq!(v["ref"], json!(good));
    }
    let v = h.ask(1, json!({"type": "rooms", "ref": null}));
    assert_eq!(v, json!({"type": "rooms", "rooms": []}));
}

#[test]
fn chat_invalid_field_order() {
    let mut h = H::new();
    h.user(1, "alice");
    // ref first, before every other field.
    let v = h.ask(
        1,
        json!({"type": "message", "room": "bad room", "text": "", "ref": 1}),
    );
    invalid(&v, "ref");
    // Then the contract's order; the error carries the valid ref.
    let v = h.ask(
        1,
        json!({"type": "message", "text": "", "room": "bad room", "ref": "m"}),
    );
    invalid(&v, "room");
    assert_eq!(v["ref"], "m");
    invalid(
        &h.ask(1, json!({"type": "message", "room": "r", "text": " "})),
        "text",
    );
    invalid(&h.ask(1, json!({"type": "message", "room": "r"})), "text");
    invalid(&h.ask(1, json!({"type": "message", "text": "hi"})), "room");
    invalid(
        &h.ask(
            1,
            json!({"type": "join", "room": "r", "since": -1, "epoch": 3}),
        ),
        "since",
    );
    invalid(
        &h.ask(
            1,
            json!({"type": "join", "room": "r", "since": 1, "epoch": 3}),
        ),
        "epoch",
    );
    invalid(
        &h.ask(1, json!({"type": "join", "room": 1, "since": "x"})),
        "room",
    );
    invalid(&h.ask(1, json!({"type": "dm", "to": 1, "text": ""})), "to");
    invalid(&h.ask(1, json!({"type": "dm", "text": "hi"})), "to");
    invalid(
        &h.ask(1, json!({"type": "dm", "to": "bob", "text": "\u{0}"})),
        "text",
    );
    invalid(
        &h.ask(1, json!({"type": "typing", "room": "", "active": 1})),
        "room",
    );
    invalid(
        &h.ask(1, json!({"type": "typing", "room": "r", "active": 1})),
        "active",
    );
    invalid(
        &h.ask(1, json!({"type": "typing", "room": "r", "active": "true"})),
        "active",
    );
    invalid(&h.ask(1, json!({"type": "typing", "room": "r"})), "active");
    invalid(
        &h.ask(
            1,
            json!({"type": "history", "room": "r", "before": 0, "limit": 0}),
        ),
        "before",
    );
    invalid(
        &h.ask(1, json!({"type": "history", "room": "r", "limit": 0})),
        "before",
    );
    invalid(
        &h.ask(
            1,
            json!({"type": "history", "room": "r", "before": 5, "limit": 0}),
        ),
        "limit",
    );
    invalid(
        &h.ask(
            1,
            json!({"type": "history", "room": "r", "before": 5, "limit": 101}),
        ),
        "limit",
    );
    invalid(&h.ask(1, json!({"type": "leave"})), "room");
    invalid(&h.ask(1, json!({"type": "leave", "room": null})), "room");
}

#[test]
fn chat_invalid_beats_later_errors() {
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "bob");
    // Not in room "r", but the text is invalid: invalid wins.
    invalid(
        &h.ask(1, json!({"type": "message", "room": "r", "text": "\u{7}"})),
        "text",
    );
    invalid(
        &h.ask(1, json!({"type": "typing", "room": "r", "active": null})),
        "active",
    );
    invalid(
        &h.ask(1, json!({"type": "history", "room": "r", "before": 1.5})),
        "before",
    );
    // No such user, but the text is invalid.
    invalid(
        &h.ask(1, json!({"type": "dm", "to": "nobody", "text": ""})),
        "text",
    );
    // nick: invalid before taken.
    invalid(&h.ask(1, json!({"type": "nick", "nick": "bob!"})), "nick");
    // With valid fields the semantic errors appear, with ref.
    let v = h.ask(
        1,
        json!({"type": "message", "room": "r", "text": "x", "ref": "q"}),
    );
    err(&v, "not_in_room");
    assert_eq!(v["ref"], "q");
}

#[test]
fn chat_integers_are_json_integers_in_range() {
    let mut h = H::new();
    h.user(1, "alice");
    h.join(1, "r");
    for bad in [
        "1.0",
        "1e3",
        "1E0",
        "-1",
        "-0.0",
        "9007199254740992",
        "18446744073709551616",
        "\"5\"",
        "true",
        "[1]",
    ] {
        let m = format!(r#"{{"type":"join","room":"r","since":{bad}}}"#);
        invalid(&h.ask_raw(1, m.as_bytes()), "since");
        let m = format!(r#"{{"type":"history","room":"r","before":{bad}}}"#);
        invalid(&h.ask_raw(1, m.as_bytes()), "before");
    }
    let v = h.ask_raw(1, br#"{"type":"join","room":"r","since":9007199254740991}"#);
    assert_eq!(v["type"], "joined");
    let v = h.ask_raw(
        1,
        br#"{"type":"history","room":"r","before":9007199254740991,"limit":100}"#,
    );
    assert_eq!(v["type"], "history");
    // null counts as absent: the default limit applies.
    let v = h.ask_raw(
        1,
        br#"{"type":"join","room":"r","since":null,"epoch":null}"#,
    );
    assert_eq!(v["type"], "joined");
}

#[test]
fn chat_unknown_fields_are_ignored() {
    let mut h = H::new();
    h.user(1, "alice");
    let v = h.ask(
        1,
        json!({"type": "join", "room": "r", "extra": {"deep": [1, 2.5, null]}, "ref": "j"}),
    );
    assert_eq!(v["type"], "joined");
    assert_eq!(v["ref"], "j");
    let v = h.ask(1, json!({"type": "rooms", "room": 5, "nick": null}));
    assert_eq!(v["type"], "rooms");
}

#[test]
fn chat_text_rules() {
    let mut h = H::new();
    h.user(1, "alice");
    h.join(1, "r");
    let max = "é".repeat(4000); // 4000 scalar values, 8000 bytes
    let too_long = "a".repeat(4001);
    for good in ["x", "a\nb\tc", " a ", max.as_str(), "\u{1F600}"] {
        h.send(1, json!({"type": "message", "room": "r", "text": good}));
        let f = h.drain();
        assert_eq!(f[0].1["text"], good);
    }
    for bad in [
        "",
        " ",
        "\n\t\r",
        "\u{3000}\u{a0}\u{2028}",
        "a\u{0}",
        "a\rb",
        "a\u{1b}",
        "a\u{7f}",
        "a\u{85}",
        "a\u{9f}",
        too_long.as_str(),
    ] {
        invalid(
            &h.ask(1, json!({"type": "message", "room": "r", "text": bad})),
            "text",
        );
    }
}

/// Issue 15, item 9: a text must show something, and may not reorder
/// what is shown with an explicit bidi control. Both refusals are
/// `invalid` on the `text` field with their own wording; nothing is posted.
#[test]
fn chat_text_must_be_visible_and_free_of_bidi_controls() {
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "bob");
    h.join(1, "r");
    h.join(2, "r");
    h.drain();
    let invisible = [
        "\u{200b}",
        "\u{ad}\u{2060}\u{feff}",
        "\u{200c}\u{200d}",
        " \u{200b}\n\u{2063}\t",
        "\u{e0041}\u{e007f}", // tags
        "\u{fe0f}",           // a variation selector alone
        "\u{3164}\u{115f}",   // Hangul fillers
        "\u{2800}",           // braille pattern blank
        "\u{200e}\u{200f}",   // implicit marks: allowed, but not alone
    ];
    for bad in invisible {
        let v = h.ask(
            1,
            json!({"type": "message", "room": "r", "text": bad, "ref": "i"}),
        );
        invalid(&v, "text");
        assert_eq!(v["ref"], "i");
        let m = v["message"].as_str().unwrap();
        assert!(m.contains("visible character"), "{bad:?}: {m}");
        let v = h.ask(1, json!({"type": "dm", "to": "bob", "text": bad}));
        invalid(&v, "text");
    }
    let bidi = [
        "\u{202e}gpj.exe",
        "abc\u{202a}",
        "abc\u{202b}def\u{202c}",
        "x\u{202d}",
        "\u{2066}x\u{2069}",
        "\u{2067}x",
        "\u{2068}x",
        "\u{200b}\u{202e}", // bidi is named even when nothing is visible
    ];
    for bad in bidi {
        let v = h.ask(1, json!({"type": "message", "room": "r", "text": bad}));
        invalid(&v, "text");
        let m = v["message"].as_str().unwrap();
        assert!(m.contains("bidirectional"), "{bad:?}: {m}");
        invalid(
            &h.ask(1, json!({"type": "dm", "to": "bob", "text": bad})),
            "text",
        );
    }
    // Nothing of the above reached bob.
    assert!(h.drain().iter().all(|(to, _)| *to == 1));
    // Invisible characters beside visible ones, and the implicit marks
    // (which open no embedding), are fine: emoji sequences need U+200D and
    // U+FE0F, Persian text U+200C, mixed-direction text U+200F.
    for good in [
        "a\u{200b}b",
        "\u{1F469}\u{200D}\u{1F4BB}",
        "\u{2764}\u{FE0F}",
        "\u{645}\u{200c}\u{6cc}",
        "\u{5e9}\u{200f} ok",
        "soft\u{ad}hyphen",
    ] {
        h.send(1, json!({"type": "message", "room": "r", "text": good}));
        let f = h.drain();
        assert!(
            f.iter().any(|(to, v)| *to == 2 && v["text"] == good),
            "{good:?}"
        );
    }
}

#[test]
fn invisible_characters_include_every_format_character() {
    use super::validate::{is_bidi_control, is_invisible};
    // Every format character (Cf) of Unicode 15.1, by range.
    let cf = [
        (0xAD, 0xAD),
        (0x600, 0x605),
        (0x61C, 0x61C),
        (0x6DD, 0x6DD),
        (0x70F, 0x70F),
        (0x890, 0x891),
        (0x8E2, 0x8E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let mut n = 0;
    for (lo, hi) in cf {
        for c in (lo..=hi).filter_map(char::from_u32) {
            assert!(is_invisible(c), "U+{:04X}", u32::from(c));
            n += 1;
        }
    }
    assert_eq!(n, 170, "Unicode 15.1 has 170 Cf characters");
    for c in [
        'a',
        ' ',
        '\u{ac}',
        '\u{ae}',
        '\u{200a}',
        '\u{2010}',
        '\u{fffd}',
        '\u{1F600}',
    ] {
        assert!(!is_invisible(c), "U+{:04X}", u32::from(c));
    }
    for c in (0x202A..=0x202E)
        .chain(0x2066..=0x2069)
        .filter_map(char::from_u32)
    {
        assert!(is_bidi_control(c));
    }
    for c in ['\u{200e}', '\u{200f}', '\u{61c}', '\u{2029}', '\u{206a}'] {
        assert!(!is_bidi_control(c));
    }
}

#[test]
fn chat_max_text_chars_is_configurable() {
    let mut h = H::with(ChatConfig {
        max_text_chars: 3,
        ..cfg()
    });
    h.user(1, "alice");
    h.join(1, "r");
    h.post(1, "r", "abc");
    invalid(
        &h.ask(1, json!({"type": "message", "room": "r", "text": "abcd"})),
        "text",
    );
}

#[test]
fn chat_room_name_rules() {
    let mut h = H::new();
    h.user(1, "alice");
    let max = "R".repeat(64);
    for good in ["a", "A-z_09", max.as_str()] {
        assert_eq!(h.join(1, good)["room"], good);
    }
    for bad in ["", "a.b", "a b", "é", "#general"] {
        invalid(&h.ask(1, json!({"type": "join", "room": bad})), "room");
    }
    invalid(
        &h.ask(1, json!({"type": "join", "room": "R".repeat(65)})),
        "room",
    );
    // Case-sensitive: "General" and "general" are two rooms.
    h.join(1, "general");
    h.join(1, "General");
    let v = h.ask(1, json!({"type": "rooms"}));
    let names: Vec<&str> = v["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"general") && names.contains(&"General"));
}

// ---- join, leave, presence ----

#[test]
fn chat_join_answer_and_presence() {
    let mut h = H::new();
    h.user(1, "bob");
    h.user(2, "Alice");
    h.user(3, "carol");
    h.user(4, "dave");
    let v = h.ask(1, json!({"type": "join", "room": "general", "ref": "j1"}));
    let epoch = v["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());
    assert_eq!(
        v,
        json!({"type": "joined", "room": "general", "epoch": epoch, "members": ["bob"], "history": [], "complete": true, "ref": "j1"})
    );
    h.join(3, "general");
    h.send(2, json!({"type": "join", "room": "general"}));
    let f = h.frames();
    assert_eq!(f.len(), 3);
    let joined = f.iter().find(|(to, _)| *to == 2).unwrap();
    let v = decode(&joined.1);
    assert_eq!(
        v["members"],
        json!(["Alice", "bob", "carol"]),
        "sorted by lowercase"
    );
    assert_eq!(v["epoch"], epoch.as_str());
    assert!(v.get("ref").is_none());
    let pres: Vec<_> = f.iter().filter(|(to, _)| *to != 2).collect();
    assert_eq!(pres.len(), 2);
    assert!(
        Rc::ptr_eq(&pres[0].1, &pres[1].1),
        "one presence frame shared"
    );
    assert_eq!(
        decode(&pres[0].1),
        json!({"type": "presence", "room": "general", "nick": "Alice", "event": "join"})
    );
    // dave is in no room: hears nothing.
    assert!(f.iter().all(|(to, _)| *to != 4));
}

#[test]
fn chat_refresh_join_sends_no_presence() {
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "bob");
    h.join(1, "r");
    h.join(2, "r");
    h.drain();
    h.post(1, "r", "one");
    let v = h.ask(2, json!({"type": "join", "room": "r", "ref": "again"}));
    assert_eq!(v["type"], "joined");
    assert_eq!(v["ref"], "again");
    assert_eq!(v["members"], json!(["alice", "bob"]));
    assert_eq!(ids(&v["history"]), [1]);
}

#[test]
fn chat_leave() {
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "bob");
    h.join(1, "r");
    h.join(2, "r");
    h.drain();
    h.send(1, json!({"type": "leave", "room": "r", "ref": "l"}));
    let f = h.drain();
    assert_eq!(f.len(), 2);
    assert!(f.contains(&(1, json!({"type": "left", "room": "r", "ref": "l"}))));
    assert!(f.contains(&(
        2,
        json!({"type": "presence", "room": "r", "nick": "alice", "event": "leave"})
    )));
    let v = h.ask(1, json!({"type": "leave", "room": "r", "ref": "again"}));
    err(&v, "not_in_room");
    assert_eq!(v["ref"], "again");
    err(
        &h.ask(1, json!({"type": "leave", "room": "never"})),
        "not_in_room",
    );
    // Not a member any more: posting is refused.
    err(
        &h.ask(1, json!({"type": "message", "room": "r", "text": "x"})),
        "not_in_room",
    );
}

#[test]
fn chat_too_many_rooms_per_connection() {
    let mut h = H::new();
    h.user(1, "alice");
    for i in 0..32 {
        h.join(1, &format!("r{i}"));
    }
    let v = h.ask(1, json!({"type": "join", "room": "r32", "ref": "t"}));
    err(&v, "too_many_rooms");
    assert_eq!(v["ref"], "t");
    // A refresh of a joined room is still fine at the limit.
    h.join(1, "r5");
    // The refused join created no room.
    assert_eq!(h.chat.rooms(), 32);
    h.ask(1, json!({"type": "leave", "room": "r0"}));
    h.join(1, "r32");
}

#[test]
fn chat_server_room_cap() {
    let mut h = H::with(ChatConfig {
        max_rooms: 2,
        ..cfg()
    });
    h.user(1, "alice");
    h.user(2, "bob");
    h.join(1, "a");
    h.join(1, "b");
    err(
        &h.ask(2, json!({"type": "join", "room": "c"})),
        "too_many_rooms",
    );
    // Existing rooms can still be joined.
    h.join(2, "a");
    assert_eq!(h.chat.rooms(), 2);
    // An empty room kept only for its history makes way for a live one.
    h.post(1, "b", "keep me");
    h.ask(1, json!({"type": "leave", "room": "b"}));
    assert_eq!(h.chat.rooms(), 2);
    let v = h.join(2, "c");
    assert_eq!(v["history"], json!([]));
    assert_eq!(h.chat.rooms(), 2);
    err(
        &h.ask(1, json!({"type": "join", "room": "b"})),
        "too_many_rooms",
    );
}

#[test]
fn chat_empty_room_without_history_is_forgotten_at_once() {
    let mut h = H::new();
    h.user(1, "alice");
    let e1 = h.join(1, "r")["epoch"].clone();
    assert_eq!(h.chat.rooms(), 1);
    h.ask(1, json!({"type": "leave", "room": "r"}));
    assert_eq!(h.chat.rooms(), 0);
    let e2 = h.join(1, "r")["epoch"].clone();
    assert_ne!(e1, e2, "a room created anew has a new epoch");
    h.chat.disconnect(1, h.now, &mut h.out);
    assert_eq!(h.chat.rooms(), 0);
}

#[test]
fn chat_retention_keeps_then_forgets_history() {
    let mut h = H::with(ChatConfig {
        room_retention_ms: 10_000,
        ..cfg()
    });
    h.user(1, "alice");
    let e1 = h.join(1, "r")["epoch"].clone();
    h.post(1, "r", "one");
    h.post(1, "r", "two");
    h.chat.disconnect(1, h.now, &mut h.out);
    assert_eq!(h.chat.rooms(), 1);
    // Kept, but not listed: it has no members.
    h.user(2, "bob");
    assert_eq!(h.ask(2, json!({"type": "rooms"}))["rooms"], json!([]));
    h.advance(9_999);
    h.chat.tick(h.now);
    assert_eq!(h.chat.rooms(), 1);
    let v = h.join(2, "r");
    assert_eq!(v["epoch"], e1);
    assert_eq!(ids(&v["history"]), [1, 2]);
    // The retention restarts when the last member leaves again.
    h.ask(2, json!({"type": "leave", "room": "r"}));
    h.advance(9_999);
    h.chat.tick(h.now);
    assert_eq!(h.chat.rooms(), 1);
    h.advance(1);
    h.chat.tick(h.now);
    assert_eq!(h.chat.rooms(), 0);
    let v = h.join(2, "r");
    assert_ne!(v["epoch"], e1);
    assert_eq!(v["history"], json!([]));
    h.post(2, "r", "fresh");
    let v = h.join(2, "r");
    assert_eq!(ids(&v["history"]), [1], "ids start again at 1");
}

#[test]
fn chat_expired_room_is_new_even_before_tick() {
    let mut h = H::with(ChatConfig {
        room_retention_ms: 1_000,
        ..cfg()
    });
    h.user(1, "alice");
    let e1 = h.join(1, "r")["epoch"].clone();
    h.post(1, "r", "old");
    h.ask(1, json!({"type": "leave", "room": "r"}));
    h.advance(1_000);
    let v = h.join(1, "r");
    assert_ne!(v["epoch"], e1);
    assert_eq!(v["history"], json!([]));
}

#[test]
fn chat_epochs_differ_across_seeds() {
    let mut a = H::new();
    let mut b = H::new();
    b.chat = Chat::new(cfg(), 43);
    a.user(1, "alice");
    b.user(1, "alice");
    assert_ne!(a.join(1, "r")["epoch"], b.join(1, "r")["epoch"]);
}

// ---- messages ----

#[test]
fn chat_message_broadcast_and_ack() {
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "bob");
    h.user(3, "carol");
    h.user(4, "dave");
    for id in 1..=3 {
        h.join(id, "general");
    }
    h.drain();
    h.send(
        1,
        json!({"type": "message", "room": "general", "text": "hi all", "ref": "c1"}),
    );
    let f = h.frames();
    assert_eq!(f.len(), 3);
    let ts = h.now.wall_ms;
    let own = f.iter().find(|(to, _)| *to == 1).unwrap();
    assert_eq!(
        decode(&own.1),
        json!({"type": "message", "room": "general", "id": 1, "from": "alice", "text": "hi all", "ts": ts, "ref": "c1"})
    );
    let others: Vec<_> = f.iter().filter(|(to, _)| *to != 1).collect();
    assert!(Rc::ptr_eq(&others[0].1, &others[1].1));
    assert_eq!(
        decode(&others[0].1),
        json!({"type": "message", "room": "general", "id": 1, "from": "alice", "text": "hi all", "ts": ts})
    );
    // Without a ref, the sender gets the shared frame too.
    h.send(
        2,
        json!({"type": "message", "room": "general", "text": "yo"}),
    );
    let f = h.frames();
    assert_eq!(f.len(), 3);
    assert!(f.windows(2).all(|w| Rc::ptr_eq(&w[0].1, &w[1].1)));
    assert_eq!(decode(&f[0].1)["id"], 2);
    // History holds the same objects without ref.
    let v = h.join(4, "general");
    assert_eq!(
        v["history"],
        json!([
            {"type": "message", "room": "general", "id": 1, "from": "alice", "text": "hi all", "ts": ts},
            {"type": "message", "room": "general", "id": 2, "from": "bob", "text": "yo", "ts": ts},
        ])
    );
}

#[test]
fn chat_ts_never_decreases() {
    let mut h = H::new();
    h.user(1, "alice");
    h.join(1, "r");
    h.post(1, "r", "a");
    h.now.wall_ms -= 5_000; // the wall clock stepped back
    h.send(1, json!({"type": "message", "room": "r", "text": "b"}));
    let v = h.drain().remove(0).1;
    assert_eq!(v["id"], 2);
    assert_eq!(v["ts"], h.now.wall_ms + 5_000);
    h.now.wall_ms += 10_000;
    h.send(1, json!({"type": "message", "room": "r", "text": "c"}));
    assert_eq!(h.drain().remove(0).1["ts"], h.now.wall_ms);
}

#[test]
fn chat_history_ring_keeps_last_n() {
    let mut h = H::with(ChatConfig {
        history: 5,
        ..cfg()
    });
    h.user(1, "alice");
    h.join(1, "r");
    for i in 0..12 {
        h.post(1, "r", &format!("m{i}"));
    }
    let v = h.join(1, "r");
    assert_eq!(ids(&v["history"]), [8, 9, 10, 11, 12]);
    assert_eq!(v["complete"], true, "no older kept message");
}

#[test]
fn chat_history_zero_keeps_nothing() {
    let mut h = H::with(ChatConfig {
        history: 0,
        ..cfg()
    });
    h.user(1, "alice");
    h.join(1, "r");
    h.post(1, "r", "a");
    h.post(1, "r", "b");
    let v = h.join(1, "r");
    assert_eq!(v["history"], json!([]));
    h.send(1, json!({"type": "message", "room": "r", "text": "c"}));
    assert_eq!(h.drain()[0].1["id"], 3, "ids still grow");
    h.ask(1, json!({"type": "leave", "room": "r"}));
    assert_eq!(h.chat.rooms(), 0, "nothing kept: forgotten at once");
}

// ---- since / epoch recovery ----

fn room_with(n: usize, history: usize) -> H {
    let mut h = H::with(ChatConfig { history, ..cfg() });
    h.user(1, "alice");
    h.user(2, "bob");
    h.join(1, "r");
    for i in 0..n {
        h.post(1, "r", &format!("m{i}"));
    }
    h.drain();
    h
}

fn join_since(h: &mut H, since: Value, epoch: Value) -> Value {
    h.answer(
        2,
        json!({"type": "join", "room": "r", "since": since, "epoch": epoch}),
    )
}

#[test]
fn chat_join_without_since_gives_newest_50() {
    let mut h = room_with(120, 1000);
    let v = h.answer(2, json!({"type": "join", "room": "r"}));
    assert_eq!(ids(&v["history"]), (71..=120).collect::<Vec<_>>());
    assert_eq!(v["complete"], false);
    let mut h = room_with(50, 1000);
    let v = h.answer(2, json!({"type": "join", "room": "r"}));
    assert_eq!(ids(&v["history"]).len(), 50);
    assert_eq!(v["complete"], true);
    let mut h = room_with(51, 1000);
    let v = h.answer(2, json!({"type": "join", "room": "r"}));
    assert_eq!(v["complete"], false);
}

#[test]
fn chat_join_since_current_epoch() {
    let mut h = room_with(120, 1000);
    let epoch = h.join(1, "r")["epoch"].clone();
    h.drain();
    let v = join_since(&mut h, json!(100), epoch.clone());
    assert_eq!(ids(&v["history"]), (101..=120).collect::<Vec<_>>());
    assert_eq!(v["complete"], true);
    // Without epoch, since refers to the current one.
    let v = join_since(&mut h, json!(110), Value::Null);
    assert_eq!(ids(&v["history"]), (111..=120).collect::<Vec<_>>());
    assert_eq!(v["complete"], true);
    // More than 100 after since: the newest 100, incomplete.
    let v = join_since(&mut h, json!(0), epoch.clone());
    assert_eq!(ids(&v["history"]), (21..=120).collect::<Vec<_>>());
    assert_eq!(v["complete"], false);
    let v = join_since(&mut h, json!(20), epoch.clone());
    assert_eq!(ids(&v["history"]).len(), 100);
    assert_eq!(v["complete"], true);
    // At or past the newest id: empty, complete.
    for s in [120, 121, 9_007_199_254_740_991u64] {
        let v = join_since(&mut h, json!(s), epoch.clone());
        assert_eq!(v["history"], json!([]));
        assert_eq!(v["complete"], true);
    }
}

#[test]
fn chat_join_since_other_epoch_gives_newest_50() {
    let mut h = room_with(120, 1000);
    let v = join_since(&mut h, json!(119), json!("not-the-epoch"));
    assert_eq!(ids(&v["history"]), (71..=120).collect::<Vec<_>>());
    assert_eq!(v["complete"], false);
    // An epoch without since is ignored: the newest 50 as usual.
    let v = h.answer(2, json!({"type": "join", "room": "r", "epoch": v["epoch"]}));
    assert_eq!(ids(&v["history"]).len(), 50);
}

#[test]
fn chat_join_since_with_dropped_messages_is_incomplete() {
    let mut h = room_with(30, 10);
    let epoch = h.join(1, "r")["epoch"].clone();
    h.drain();
    let v = join_since(&mut h, json!(5), epoch.clone());
    assert_eq!(ids(&v["history"]), (21..=30).collect::<Vec<_>>());
    assert_eq!(v["complete"], false, "ids 6..=20 were dropped");
    let v = join_since(&mut h, json!(20), epoch.clone());
    assert_eq!(ids(&v["history"]), (21..=30).collect::<Vec<_>>());
    assert_eq!(v["complete"], true);
    let v = join_since(&mut h, json!(25), epoch);
    assert_eq!(ids(&v["history"]), (26..=30).collect::<Vec<_>>());
    assert_eq!(v["complete"], true);
}

#[test]
fn chat_recovery_after_reconnect() {
    // A client that saw up to id 3, reconnects and catches up by since+epoch.
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "bob");
    let epoch = h.join(2, "r")["epoch"].clone();
    h.join(1, "r");
    for i in 0..3 {
        h.post(1, "r", &format!("{i}"));
    }
    h.chat.disconnect(2, h.now, &mut h.out);
    for i in 3..6 {
        h.post(1, "r", &format!("{i}"));
    }
    h.user(2, "bob");
    let v = join_since(&mut h, json!(3), epoch);
    assert_eq!(ids(&v["history"]), [4, 5, 6]);
    assert_eq!(v["complete"], true);
}

// ---- history paging ----

#[test]
fn chat_history_paging() {
    let mut h = room_with(120, 1000);
    err(
        &h.ask(2, json!({"type": "history", "room": "r", "before": 10})),
        "not_in_room",
    );
    let v = h.ask(
        1,
        json!({"type": "history", "room": "r", "before": 71, "ref": "h"}),
    );
    assert_eq!(v["type"], "history");
    assert_eq!(v["room"], "r");
    assert_eq!(v["ref"], "h");
    assert_eq!(
        ids(&v["messages"]),
        (21..=70).collect::<Vec<_>>(),
        "default limit 50"
    );
    assert_eq!(v["complete"], false);
    let v = h.ask(
        1,
        json!({"type": "history", "room": "r", "before": 21, "limit": 100}),
    );
    assert_eq!(ids(&v["messages"]), (1..=20).collect::<Vec<_>>());
    assert_eq!(v["complete"], true);
    let v = h.ask(
        1,
        json!({"type": "history", "room": "r", "before": 11, "limit": 10}),
    );
    assert_eq!(ids(&v["messages"]), (1..=10).collect::<Vec<_>>());
    assert_eq!(v["complete"], true);
    let v = h.ask(1, json!({"type": "history", "room": "r", "before": 1}));
    assert_eq!(v["messages"], json!([]));
    assert_eq!(v["complete"], true);
    let v = h.ask(
        1,
        json!({"type": "history", "room": "r", "before": 1_000_000, "limit": 3}),
    );
    assert_eq!(ids(&v["messages"]), [118, 119, 120]);
    assert_eq!(v["complete"], false);
    let m = &v["messages"][0];
    assert_eq!(m["type"], "message");
    assert_eq!(m["from"], "alice");
    assert_eq!(m["text"], "m117");
    assert!(m.get("ref").is_none());
}

#[test]
fn chat_history_after_ring_drop() {
    let mut h = room_with(30, 10);
    let v = h.ask(
        1,
        json!({"type": "history", "room": "r", "before": 25, "limit": 100}),
    );
    assert_eq!(ids(&v["messages"]), [21, 22, 23, 24]);
    assert_eq!(v["complete"], true, "no older kept message");
    let v = h.ask(1, json!({"type": "history", "room": "r", "before": 15}));
    assert_eq!(v["messages"], json!([]));
    assert_eq!(v["complete"], true);
}

// ---- global history budget ----

/// What one kept message counts against `max_history_bytes`, for the
/// first guest that posts (its author key, `g:RUN:1`, with the run seed 42
/// of [`H`] in base 36).
fn cost(nick: &str, text: &str) -> usize {
    text.len() + nick.len() + "g:16:1".len() + room::MSG_OVERHEAD
}

/// Recomputes the budget's bookkeeping from the rooms themselves.
fn check_budget(chat: &Chat) {
    let rooms: Vec<&room::Room> = chat.rooms.iter().flatten().collect();
    let bytes: usize = rooms
        .iter()
        .flat_map(|r| r.history().iter())
        .map(room::Msg::cost)
        .sum();
    let kept: usize = rooms.iter().map(|r| r.history().len()).sum();
    assert_eq!(chat.history_bytes(), bytes);
    assert!(chat.history_bytes() <= chat.cfg.max_history_bytes);
    assert_eq!(chat.kept, kept);
    for r in &rooms {
        assert_eq!(
            r.bytes(),
            r.history().iter().map(room::Msg::cost).sum::<usize>()
        );
        assert!(r.history().capacity() <= 2 * r.history().len() + 4);
    }
    // One live queue entry per kept message, in posting order per room.
    let live: Vec<&Order> = chat
        .order
        .iter()
        .filter(|e| order_live(&chat.rooms, e))
        .collect();
    assert_eq!(live.len(), kept);
    assert!(chat.order.len() <= 2 * kept + ORDER_SLACK);
    for r in &rooms {
        let ids: Vec<u64> = live
            .iter()
            .filter(|e| e.serial == r.serial)
            .map(|e| e.id)
            .collect();
        let kept_ids: Vec<u64> = r.history().iter().map(|m| m.id).collect();
        assert_eq!(ids, kept_ids, "room {}", r.name);
    }
}

/// Ids of the messages `room` keeps, through the protocol.
fn kept_ids(h: &mut H, id: ConnId, room: &str) -> Vec<u64> {
    let v = h.ask(
        id,
        json!({"type": "history", "room": room, "before": 9_007_199_254_740_991u64, "limit": 100}),
    );
    ids(&v["messages"])
}

#[test]
fn chat_history_budget_holds_across_many_rooms() {
    let text = "x".repeat(100);
    let one = cost("alice", &text);
    let budget = 50 * one + one / 2;
    let mut h = H::with(ChatConfig {
        max_history_bytes: budget,
        ..cfg()
    });
    h.user(1, "alice");
    for r in 0..30 {
        h.join(1, &format!("r{r}"));
    }
    for i in 0..40 {
        for r in 0..30 {
            h.post(1, &format!("r{r}"), &text);
            let posted = i * 30 + r + 1;
            assert_eq!(h.chat.history_bytes(), posted.min(50) * one);
        }
        check_budget(&h.chat);
    }
    // 1200 posted, the newest 50 kept: the last round (id 40 in all 30
    // rooms) and the last 20 rooms of the round before (id 39).
    for r in 0..30 {
        let want: Vec<u64> = if r >= 10 { vec![39, 40] } else { vec![40] };
        assert_eq!(kept_ids(&mut h, 1, &format!("r{r}")), want, "r{r}");
    }
}

#[test]
fn chat_history_budget_evicts_oldest_first_across_rooms() {
    let one = cost("alice", "m");
    let mut h = H::with(ChatConfig {
        max_history_bytes: 4 * one,
        ..cfg()
    });
    h.user(1, "alice");
    for r in ["a", "b", "c"] {
        h.join(1, r);
    }
    // Posting order: a1 b1 c1 a2 b2 c2; the budget keeps the newest four.
    for _ in 0..2 {
        for r in ["a", "b", "c"] {
            h.post(1, r, "m");
            check_budget(&h.chat);
        }
    }
    assert_eq!(h.chat.history_bytes(), 4 * one);
    assert_eq!(kept_ids(&mut h, 1, "a"), [2]);
    assert_eq!(kept_ids(&mut h, 1, "b"), [2]);
    assert_eq!(kept_ids(&mut h, 1, "c"), [1, 2]);
    // A long message pushes out as many old ones as it needs.
    let long = "y".repeat(3 * one);
    h.post(1, "b", &long);
    check_budget(&h.chat);
    assert_eq!(kept_ids(&mut h, 1, "a"), Vec::<u64>::new());
    assert_eq!(kept_ids(&mut h, 1, "b"), [3]);
    assert_eq!(kept_ids(&mut h, 1, "c"), Vec::<u64>::new());
    assert_eq!(h.chat.history_bytes(), cost("alice", &long));
    // One message past the whole budget is delivered but not kept.
    let huge = "z".repeat(4 * one);
    h.send(1, json!({"type": "message", "room": "a", "text": huge}));
    assert_eq!(h.drain()[0].1["id"], 3);
    assert_eq!(h.chat.history_bytes(), 0);
    check_budget(&h.chat);
}

#[test]
fn chat_history_budget_incomplete_after_global_eviction() {
    let one = cost("alice", "m");
    let mut h = H::with(ChatConfig {
        max_history_bytes: 5 * one,
        ..cfg()
    });
    h.user(1, "alice");
    h.user(2, "bob");
    let epoch = h.join(1, "r")["epoch"].clone();
    h.join(1, "other");
    for _ in 0..20 {
        h.post(1, "r", "m");
    }
    // Two newer posts elsewhere take the place of r's ids 16 and 17.
    h.post(1, "other", "m");
    h.post(1, "other", "m");
    h.drain();
    let v = join_since(&mut h, json!(0), epoch.clone());
    assert_eq!(ids(&v["history"]), [18, 19, 20]);
    assert_eq!(v["complete"], false, "ids 1..=17 were evicted");
    let v = join_since(&mut h, json!(17), epoch.clone());
    assert_eq!(ids(&v["history"]), [18, 19, 20]);
    assert_eq!(v["complete"], true);
    // Paging back answers like after a per-room drop (decision 12).
    let v = h.ask(1, json!({"type": "history", "room": "r", "before": 18}));
    assert_eq!(v["messages"], json!([]));
    assert_eq!(v["complete"], true);
}

#[test]
fn chat_history_budget_forgets_emptied_memberless_room() {
    let one = cost("alice", "m");
    let mut h = H::with(ChatConfig {
        max_history_bytes: 3 * one,
        ..cfg()
    });
    h.user(1, "alice");
    let epoch = h.join(1, "old")["epoch"].clone();
    h.post(1, "old", "m");
    h.ask(1, json!({"type": "leave", "room": "old"}));
    assert_eq!(h.chat.rooms(), 1, "kept for its history");
    h.join(1, "new");
    for _ in 0..3 {
        h.post(1, "new", "m");
    }
    check_budget(&h.chat);
    assert_eq!(h.chat.rooms(), 1, "neither members nor messages: forgotten");
    assert_ne!(h.join(1, "old")["epoch"], epoch, "created anew");
}

#[test]
fn chat_history_bytes_return_to_zero_when_rooms_are_forgotten() {
    let mut h = H::with(ChatConfig {
        room_retention_ms: 1000,
        ..cfg()
    });
    h.user(1, "alice");
    h.user(2, "bob");
    for r in 0..10 {
        let room = format!("r{r}");
        h.join(1, &room);
        h.join(2, &room);
        for i in 0..=r {
            h.post(1 + i % 2, &room, &format!("message {i}"));
        }
    }
    assert!(h.chat.history_bytes() > 0);
    check_budget(&h.chat);
    // Renamed and gone: the messages keep the old nicks, still counted.
    h.answer(1, json!({"type": "nick", "nick": "alicia"}));
    h.chat.disconnect(1, h.now, &mut h.out);
    h.chat.disconnect(2, h.now, &mut h.out);
    check_budget(&h.chat);
    h.advance(1000);
    h.chat.tick(h.now);
    assert_eq!(h.chat.rooms(), 0);
    assert_eq!(h.chat.history_bytes(), 0);
    assert_eq!(h.chat.kept, 0);
    assert!(h.chat.order.is_empty(), "all stale entries gone");
    check_budget(&h.chat);
}

#[test]
fn chat_history_order_does_not_accumulate_stale_entries() {
    let mut h = H::with(ChatConfig {
        history: 10,
        ..cfg()
    });
    h.user(1, "alice");
    h.join(1, "pinned");
    h.join(1, "r");
    // A live entry at the front of the queue: stale ones behind it cannot
    // simply be popped from the front, they need compaction.
    h.post(1, "pinned", "first");
    let mut peak = 0;
    for i in 0..1_000_000u32 {
        let draft = room::Draft {
            from: Rc::from("alice"),
            text: format!("{i}").into_boxed_str(),
            author: Rc::from(""),
            extra: None,
            image: None,
        };
        h.chat
            .message(1, "r", draft, None, h.now, &mut h.out)
            .unwrap();
        h.out.sent.clear();
        peak = peak.max(h.chat.order.len());
    }
    assert!(peak <= 2 * 11 + ORDER_SLACK + 1, "peak {peak}");
    assert!(h.chat.order.capacity() <= 4 * (2 * 11 + ORDER_SLACK));
    check_budget(&h.chat);
    assert_eq!(kept_ids(&mut h, 1, "pinned"), [1]);
    assert_eq!(
        kept_ids(&mut h, 1, "r"),
        (999_991..=1_000_000).collect::<Vec<_>>()
    );
}

// ---- dm, typing, rooms ----

#[test]
fn chat_dm() {
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "Bob");
    h.user(3, "carol");
    h.send(
        1,
        json!({"type": "dm", "to": "BOB", "text": "psst", "ref": "d"}),
    );
    let f = h.drain();
    assert_eq!(f.len(), 2, "no shared room needed; carol hears nothing");
    let ts = h.now.wall_ms;
    assert!(f.contains(&(
        2,
        json!({"type": "dm", "from": "alice", "to": "Bob", "text": "psst", "ts": ts})
    )));
    assert!(f.contains(&(
        1,
        json!({"type": "dm", "from": "alice", "to": "Bob", "text": "psst", "ts": ts, "ref": "d"})
    )));
    // Without ref: one shared frame.
    h.send(1, json!({"type": "dm", "to": "bob", "text": "x"}));
    let f = h.frames();
    assert_eq!(f.len(), 2);
    assert!(Rc::ptr_eq(&f[0].1, &f[1].1));
    // To oneself: once.
    let v = h.ask(
        1,
        json!({"type": "dm", "to": "ALICE", "text": "note", "ref": "me"}),
    );
    assert_eq!(
        v,
        json!({"type": "dm", "from": "alice", "to": "alice", "text": "note", "ts": ts, "ref": "me"})
    );
    let v = h.ask(1, json!({"type": "dm", "to": "alice", "text": "note"}));
    assert!(v.get("ref").is_none());
    // No such user, whether or not the name obeys the nick rules.
    for to in ["dave", "not a nick!", ""] {
        let v = h.ask(1, json!({"type": "dm", "to": to, "text": "x", "ref": "n"}));
        err(&v, "no_such_user");
        assert_eq!(v["ref"], "n");
    }
    h.chat.disconnect(2, h.now, &mut h.out);
    err(
        &h.ask(1, json!({"type": "dm", "to": "bob", "text": "x"})),
        "no_such_user",
    );
}

#[test]
fn chat_typing_goes_to_the_others() {
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "bob");
    h.user(3, "carol");
    h.join(1, "r");
    h.join(2, "r");
    h.join(3, "r");
    h.drain();
    h.send(
        1,
        json!({"type": "typing", "room": "r", "active": true, "ref": "t"}),
    );
    let f = h.frames();
    assert_eq!(f.len(), 2);
    assert!(f.iter().all(|(to, _)| *to != 1));
    assert!(Rc::ptr_eq(&f[0].1, &f[1].1));
    assert_eq!(
        decode(&f[0].1),
        json!({"type": "typing", "room": "r", "nick": "alice", "active": true})
    );
    h.send(1, json!({"type": "typing", "room": "r", "active": false}));
    assert_eq!(h.drain()[0].1["active"], false);
    let v = h.ask(
        1,
        json!({"type": "typing", "room": "other", "active": true, "ref": "t"}),
    );
    err(&v, "not_in_room");
    assert_eq!(v["ref"], "t");
}

#[test]
fn chat_rooms_list() {
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "bob");
    h.join(1, "gamma");
    h.join(1, "Beta");
    h.join(2, "Beta");
    h.join(2, "alpha");
    h.join(1, "kept");
    h.post(1, "kept", "x");
    h.ask(1, json!({"type": "leave", "room": "kept"}));
    let v = h.ask(1, json!({"type": "rooms", "ref": "l"}));
    assert_eq!(
        v,
        json!({"type": "rooms", "rooms": [
            {"name": "alpha", "members": 1},
            {"name": "Beta", "members": 2},
            {"name": "gamma", "members": 1},
        ], "ref": "l"})
    );
    assert_eq!(h.chat.rooms(), 4);
}

// ---- rate limiting ----

fn limited(burst: u32, per_sec: u32) -> H {
    let mut h = H::with(ChatConfig {
        rate_burst: burst,
        rate_per_sec: per_sec,
        ..cfg()
    });
    h.user(1, "alice");
    h.user(2, "bob");
    h
}

#[test]
fn chat_rate_limit_bucket() {
    let mut h = limited(3, 2);
    for _ in 0..3 {
        assert_eq!(h.ask(1, json!({"type": "rooms"}))["type"], "rooms");
    }
    let v = h.ask(1, json!({"type": "rooms", "ref": "r"}));
    err(&v, "rate_limited");
    assert!(v.get("ref").is_none(), "rate_limited never carries a ref");
    // Checked before parsing.
    err(&h.ask_raw(1, b"not json"), "rate_limited");
    // Another connection has its own bucket.
    assert_eq!(h.ask(2, json!({"type": "rooms"}))["type"], "rooms");
    // Three refusals so far (at t = 0): wait out the 60 s window.
    h.advance(60_000);
    for _ in 0..3 {
        assert_eq!(h.ask(1, json!({"type": "rooms"}))["type"], "rooms");
    }
    // The bucket refilled up to its size only: the 4th is refused.
    err(&h.ask(1, json!({"type": "rooms"})), "rate_limited");
    // 2 tokens per second: one after 500 ms.
    h.advance(499);
    err(&h.ask(1, json!({"type": "rooms"})), "rate_limited");
    h.advance(1);
    assert_eq!(h.ask(1, json!({"type": "rooms"}))["type"], "rooms");
    assert!(h.out.closed.is_empty());
}

#[test]
fn chat_exempt_bucket_is_made_at_the_first_message_and_holds_the_burst() {
    let mut h = limited(3, 2);
    // Idle: no bucket held (an idle connection is kept small).
    assert!(matches!(
        h.chat.conns.get(&1).map(|c| &c.limit),
        Some(Limit::Own(None))
    ));
    // Made full at the first message, however long the connection waited:
    // the burst, and not a token more.
    h.advance(600_000);
    for _ in 0..3 {
        assert_eq!(h.ask(1, json!({"type": "rooms"}))["type"], "rooms");
    }
    assert!(matches!(
        h.chat.conns.get(&1).map(|c| &c.limit),
        Some(Limit::Own(Some(_)))
    ));
    err(&h.ask(1, json!({"type": "rooms"})), "rate_limited");
}

#[test]
fn chat_rate_limited_frame_has_no_effect() {
    let mut h = limited(1, 0);
    h.join(1, "r");
    h.join(2, "r");
    h.drain();
    err(
        &h.ask(1, json!({"type": "message", "room": "r", "text": "x"})),
        "rate_limited",
    );
    h.user(3, "carol");
    let v = h.join(3, "r");
    assert_eq!(v["history"], json!([]));
}

#[test]
fn chat_rate_limit_closes_after_three_refusals() {
    let mut h = limited(1, 0);
    h.ask(1, json!({"type": "rooms"}));
    for _ in 0..3 {
        err(&h.ask(1, json!({"type": "rooms"})), "rate_limited");
        h.advance(10_000);
    }
    h.send(1, json!({"type": "rooms"}));
    assert!(h.drain().is_empty(), "closed instead of answered");
    assert_eq!(h.out.closed, [(1, 1008, "rate limit exceeded".to_owned())]);
    // Nothing more is processed; the close is asked once.
    h.send(1, json!({"type": "rooms"}));
    assert!(h.drain().is_empty());
    assert_eq!(h.out.closed.len(), 1);
    h.chat.disconnect(1, h.now, &mut h.out);
    assert_eq!(h.chat.connections(), 1);
}

#[test]
fn chat_rate_limit_refusals_outside_window_do_not_close() {
    let mut h = limited(1, 0);
    h.ask(1, json!({"type": "rooms"}));
    // Refusals at 0 s, 1 s and 2 s.
    for _ in 0..3 {
        err(&h.ask(1, json!({"type": "rooms"})), "rate_limited");
        h.advance(1_000);
    }
    // At 60.5 s the first is outside the window: answered, not closed.
    h.advance(57_500);
    err(&h.ask(1, json!({"type": "rooms"})), "rate_limited");
    assert!(h.out.closed.is_empty());
    // Refusals at 1, 2 and 60.5 s are all within 60 s: the next one closes.
    h.send(1, json!({"type": "rooms"}));
    assert!(h.drain().is_empty());
    assert_eq!(h.out.closed.len(), 1);
    assert_eq!(h.out.closed[0].1, 1008);
}

#[test]
fn chat_rate_limit_off_when_burst_zero() {
    let mut h = limited(0, 0);
    for _ in 0..1000 {
        assert_eq!(h.ask(1, json!({"type": "rooms"}))["type"], "rooms");
    }
}

#[test]
fn chat_default_config_matches_contract() {
    let c = ChatConfig::default();
    assert_eq!(c.history, 1000);
    assert_eq!(c.max_rooms_per_conn, 32);
    assert_eq!(c.max_rooms, 10_000);
    assert_eq!(c.max_text_chars, 4000);
    assert_eq!(c.rate_burst, 20);
    assert_eq!(c.rate_per_sec, 2);
    assert_eq!(c.room_retention_ms, 86_400_000);
    assert_eq!(c.max_history_bytes, 64 << 20);
    // 20 frames pass, the 21st is refused.
    let mut h = H::with(c);
    h.user(1, "alice");
    for _ in 0..20 {
        assert_eq!(h.ask(1, json!({"type": "rooms"}))["type"], "rooms");
    }
    err(&h.ask(1, json!({"type": "rooms"})), "rate_limited");
}

// ---- framing ----

#[test]
fn chat_large_messages_are_sent_whole() {
    let mut h = H::new();
    h.user(1, "alice");
    h.join(1, "r");
    let big = "\u{1F600}".repeat(4000); // 16000 bytes
    h.send(1, json!({"type": "message", "room": "r", "text": big}));
    let f = h.frames();
    assert_eq!(decode(&f[0].1)["text"], big.as_str());
    for _ in 0..10 {
        h.post(1, "r", &big);
    }
    // A joined with 11 such messages is past 64 KiB.
    h.send(1, json!({"type": "join", "room": "r"}));
    let f = h.frames();
    assert!(f[0].1.len() > 1 << 16);
    assert_eq!(ids(&decode(&f[0].1)["history"]).len(), 11);
}

#[test]
fn chat_connection_state_is_compact() {
    // Idle connections must stay small (< 0.5 KiB with the server's own
    // state and a room): nick (inline, no allocation), room list, where the
    // bucket is and two flags, no per-connection maps.
    assert!(std::mem::size_of::<super::Conn>() <= 80);
    // An exempt client's own bucket is boxed (and made at its first
    // message): 16 bytes, as a shared bucket's slot.
    #[cfg(target_pointer_width = "64")]
    assert_eq!(std::mem::size_of::<super::Limit>(), 16);
    // id, ts, nick, text, author, the pointer to the rare extras (replies,
    // edits, reactions) and the image id (a NonZeroU64 niche, 8 bytes).
    assert!(std::mem::size_of::<room::Msg>() <= 80);
    // As docs/protocol.md (decision 16) states it.
    #[cfg(target_pointer_width = "64")]
    assert_eq!(room::MSG_OVERHEAD, 432);
}

#[test]
fn chat_negative_zero_is_not_accepted() {
    // serde_json reads `-0` as the float -0.0, indistinguishable from `-0.0`.
    let mut h = H::new();
    h.user(1, "alice");
    invalid(
        &h.ask_raw(1, br#"{"type":"join","room":"r","since":-0}"#),
        "since",
    );
}

#[test]
fn chat_deep_nesting_is_bad_json_not_a_crash() {
    let mut h = H::new();
    h.user(1, "alice");
    let deep = format!(
        r#"{{"type":"rooms","x":{}1{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    err(&h.ask_raw(1, deep.as_bytes()), "bad_json");
}

#[test]
fn chat_reused_connection_id_starts_fresh() {
    let mut h = H::new();
    h.user(1, "alice");
    h.user(2, "bob");
    h.join(1, "r");
    h.join(2, "r");
    h.drain();
    // The server reports a new connection under an id it never closed.
    h.chat.connect(1, Some("alice"), h.now, &mut h.out);
    let f = h.drain();
    assert!(f.contains(&(
        2,
        json!({"type": "presence", "room": "r", "nick": "alice", "event": "leave"})
    )));
    assert!(f.contains(&(
        1,
        json!({"type": "welcome", "nick": "alice", "motd": "hello", "protocol": 1,
            "limits": {"text_chars": 4000, "message_bytes": 65536, "rate_burst": 0,
                       "rate_per_sec": 2, "rooms_per_conn": 32}})
    )));
    assert_eq!(h.chat.connections(), 2);
    assert_eq!(h.join(2, "r")["members"], json!(["bob"]));
}

// ---- per-address limits ----

fn addr(last: u8) -> AddrKey {
    AddrKey::from([192, 0, 2, last])
}

impl H {
    fn user_from(&mut self, id: ConnId, nick: &str, a: AddrKey) {
        self.chat
            .connect_from(id, Some(nick), Some(a), self.now, &mut self.out);
        let f = self.drain();
        assert_eq!(f[0].1["nick"], nick);
    }
}

#[test]
fn chat_bucket_is_shared_by_an_address_and_survives_reconnects() {
    let mut h = H::with(ChatConfig {
        rate_burst: 3,
        rate_per_sec: 1,
        ..cfg()
    });
    let mut passed = 0;
    // Ten sequential connections from one address, each trying 5 messages.
    for id in 1..=10 {
        h.user_from(id, &format!("u{id}"), addr(1));
        for _ in 0..5 {
            h.send(id, json!({"type": "rooms"}));
            passed += h
                .drain()
                .iter()
                .filter(|(_, v)| v["type"] == "rooms")
                .count();
        }
        h.chat.disconnect(id, h.now, &mut h.out);
        h.out.closed.clear();
    }
    assert_eq!(
        passed, 3,
        "one bucket for the address, not one per connection"
    );
    // Another address has its own; an exempt connection too.
    h.user_from(20, "other", addr(2));
    assert_eq!(h.ask(20, json!({"type": "rooms"}))["type"], "rooms");
    h.user(21, "local");
    assert_eq!(h.ask(21, json!({"type": "rooms"}))["type"], "rooms");
    // Strikes are shared too: the address already had three, so its next
    // connection is closed at its first refusal.
    h.user_from(30, "again", addr(1));
    h.send(30, json!({"type": "rooms"}));
    assert_eq!(h.out.closed, [(30, 1008, "rate limit exceeded".to_owned())]);
}

#[test]
fn chat_idle_address_buckets_expire_once_full_again() {
    let mut h = H::with(ChatConfig {
        rate_burst: 2,
        rate_per_sec: 1,
        ..cfg()
    });
    h.user_from(1, "a", addr(1));
    h.ask(1, json!({"type": "rooms"}));
    h.ask(1, json!({"type": "rooms"}));
    h.chat.disconnect(1, h.now, &mut h.out);
    assert_eq!(h.chat.limits.len(), 1, "kept while not full");
    h.advance(1_000);
    h.chat.tick(h.now);
    assert_eq!(h.chat.limits.len(), 1, "one token short");
    h.advance(1_000);
    h.chat.tick(h.now);
    assert_eq!(h.chat.limits.len(), 0, "full again: forgotten");
    // A held entry is never forgotten.
    h.user_from(2, "b", addr(1));
    h.advance(100_000);
    h.chat.tick(h.now);
    assert_eq!(h.chat.limits.len(), 1);
}

#[test]
fn bucket_table_bounds_idle_entries() {
    let mut t: BucketTable<u32> = BucketTable::new(4);
    let held = t.acquire(1000, 5, 0);
    for k in 0..100 {
        t.take(k, 0, 5, 1);
        assert!(t.idle() <= 4);
    }
    assert_eq!(t.len(), 5, "4 idle + 1 held");
    // The held one survived the evictions.
    assert_eq!(t.key(held), Some(1000));
    t.release(held);
    assert_eq!(t.idle(), 5);
    // A key that is refused tells how long until its next token.
    let mut t: BucketTable<u32> = BucketTable::new(4);
    assert_eq!(t.take(7, 0, 1, 2).0, rate::Verdict::Pass);
    assert_eq!(t.take(7, 0, 1, 2), (rate::Verdict::Refuse, 500));
}

#[test]
fn chat_rooms_per_address_are_capped() {
    let mut h = H::with(ChatConfig {
        max_rooms_per_addr: 2,
        ..cfg()
    });
    h.user_from(1, "a", addr(1));
    h.user_from(2, "b", addr(1));
    h.join(1, "r1");
    h.join(2, "r2");
    let v = h.ask(1, json!({"type": "join", "room": "r3"}));
    err(&v, "too_many_rooms");
    assert!(
        v["message"].as_str().unwrap().contains("your address"),
        "{v}"
    );
    // Existing rooms are open to it; other addresses and exempt clients
    // still create rooms.
    assert_eq!(
        h.answer(1, json!({"type": "join", "room": "r2"}))["type"],
        "joined"
    );
    h.user_from(3, "c", addr(2));
    h.join(3, "r3");
    h.user(4, "d");
    h.join(4, "r4");
    // A room forgotten no longer counts.
    h.send(1, json!({"type": "leave", "room": "r1"}));
    h.drain();
    h.join(2, "r5");
}

#[test]
fn chat_full_server_never_evicts_history_for_a_hoarder() {
    let mut h = H::with(ChatConfig {
        max_rooms: 6,
        max_rooms_per_addr: 3,
        ..cfg()
    });
    // `general` has history and no members.
    h.user_from(1, "l", addr(9));
    h.join(1, "general");
    h.post(1, "general", "keep me");
    h.send(1, json!({"type": "leave", "room": "general"}));
    h.drain();
    // A: three rooms with history, left.
    h.user_from(2, "a", addr(2));
    for r in ["a1", "a2", "a3"] {
        h.join(2, r);
        h.post(2, r, "x");
        h.send(2, json!({"type": "leave", "room": r}));
        h.drain();
    }
    h.advance(1);
    // B: two rooms, held: the server is full.
    h.user_from(3, "b", addr(3));
    h.join(3, "b1");
    h.join(3, "b2");
    assert_eq!(h.chat.rooms(), 6);
    // B holds its share (6 rooms / 3 addresses): no eviction for it.
    let v = h.ask(3, json!({"type": "join", "room": "b3"}));
    err(&v, "too_many_rooms");
    assert!(v["message"].as_str().unwrap().contains("server"), "{v}");
    // A newcomer gets a room, and the one that goes is a hoarder's.
    h.user_from(4, "n", addr(4));
    h.join(4, "n1");
    assert_eq!(h.chat.rooms(), 6);
    let v = h.join(1, "general");
    assert_eq!(v["history"][0]["text"], "keep me");
}

/// Accounts and roles (docs/protocol.md, "Roles" and "Registered members"):
/// with nobody logged in no frame carries the new fields; a logged-in
/// creator owns its room, every frame says so, and the record naming the
/// owner is one a failed commit retries (it answers no one).
#[test]
fn chat_room_owner_and_registered_marks() {
    let mut h = H::new();
    let token = [7u8; 32];
    h.chat.restore_accounts(
        vec![accounts::RestoredAccount {
            name: "bob".into(),
            hash: "unused: token logins hash nothing".into(),
            op: false,
        }],
        vec![(accounts::token_hash(&token).to_vec(), "bob".into())],
    );
    h.user(1, "ann");
    h.user(2, "cy");
    let j = h.join(1, "guests");
    for k in ["registered", "moderators", "role"] {
        assert!(j.get(k).is_none(), "{k} in {j}");
    }
    h.send(2, json!({"type": "join", "room": "guests"}));
    let f = h.drain();
    let p = &f.iter().find(|(to, _)| *to == 1).unwrap().1;
    assert_eq!(
        p,
        &json!({"type":"presence","room":"guests","nick":"cy","event":"join"})
    );
    h.send(
        1,
        json!({"type": "message", "room": "guests", "text": "hi"}),
    );
    let f = h.drain();
    assert!(
        f.iter().all(|(_, v)| v.get("registered").is_none()),
        "{f:?}"
    );
    assert!(
        h.chat.take_records().is_empty(),
        "no owner for a guest's room"
    );

    let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
    h.connect(3, Some("x"));
    h.send(3, json!({"type": "login", "token": hex}));
    let f = h.drain();
    assert_eq!(f[0].1["type"], "session", "{f:?}");
    assert_eq!(
        f[1].1,
        json!({"type":"nick","old":"x","nick":"bob","registered":true})
    );
    let j = h.join(3, "club");
    assert_eq!(j["role"], "owner", "{j}");
    assert_eq!(j["registered"], json!(["bob"]), "{j}");
    assert_eq!(j["moderators"], json!(["bob"]), "{j}");
    let recs = h.chat.take_records();
    assert!(
        matches!(&recs[..], [durable::Record::Moderation(moderation::ModRecord::Creator { room, account })]
            if &**room == "club" && &**account == "bob"),
        "{recs:?}"
    );
    assert!(!recs[0].is_answered(), "kept to try again");
    h.send(1, json!({"type": "join", "room": "club"}));
    h.drain();
    h.send(
        3,
        json!({"type": "message", "room": "club", "text": "mine"}),
    );
    let f = h.drain();
    assert!(
        f.iter()
            .filter(|(_, v)| v["type"] == "message")
            .all(|(_, v)| v["registered"] == true),
        "{f:?}"
    );
    // A member who joins later is told the owner moderates; a guest owns
    // nothing and appoints no one.
    let v = h.ask(
        1,
        json!({"type": "moderator", "room": "club", "nick": "bob"}),
    );
    err(&v, "forbidden");
}

/// The moderators and room bans a room's owner (or its moderators) can add
/// outlive the room, so each room has a cap (`MAX_ROOM_MODERATORS`,
/// `MAX_ROOM_BANS`), with a clear error past it; ended bans do not count,
/// and operators are not held to either.
#[test]
fn chat_moderators_and_room_bans_are_capped_per_room() {
    use validate::{MAX_ROOM_BANS, MAX_ROOM_MODERATORS};
    let mut h = H::new();
    let (owner_tok, op_tok) = ([7u8; 32], [8u8; 32]);
    let mut accounts: Vec<_> = (0..=MAX_ROOM_MODERATORS)
        .map(|i| accounts::RestoredAccount {
            name: format!("m{i}"),
            hash: "unused".into(),
            op: false,
        })
        .collect();
    for (name, op) in [("bob", false), ("boss", true)] {
        accounts.push(accounts::RestoredAccount {
            name: name.into(),
            hash: "unused".into(),
            op,
        });
    }
    h.chat.restore_accounts(
        accounts,
        vec![
            (accounts::token_hash(&owner_tok).to_vec(), "bob".into()),
            (accounts::token_hash(&op_tok).to_vec(), "boss".into()),
        ],
    );
    h.chat.restore_creators(vec![("club".into(), "bob".into())]);
    h.chat.restore_moderators(
        (0..MAX_ROOM_MODERATORS)
            .map(|i| ("club".to_string(), format!("m{i}")))
            .collect(),
    );
    let ban = |nick: String, until: u64| moderation::Ban {
        room: "club".into(),
        nick,
        account: String::new(),
        ip: None,
        until,
        reason: String::new(),
        ip_shown: String::new(),
    };
    // All but one in force; the last ended an hour ago.
    let ended = h.now.wall_ms - 3_600_000;
    h.chat.restore_bans(
        (0..MAX_ROOM_BANS)
            .map(|i| ban(format!("t{i}"), if i == 0 { ended } else { 0 }))
            .collect(),
    );
    let hex = |t: &[u8; 32]| -> String { t.iter().map(|b| format!("{b:02x}")).collect() };
    for (id, tok) in [(1, &owner_tok), (2, &op_tok)] {
        h.connect(id, Some("x"));
        h.send(id, json!({"type": "login", "token": hex(tok)}));
        assert_eq!(h.drain()[0].1["type"], "session");
    }
    h.join(1, "club");
    h.drain();
    h.chat.take_records();

    let v = h.ask(
        1,
        json!({"type": "moderator", "room": "club", "nick": format!("m{MAX_ROOM_MODERATORS}")}),
    );
    err(&v, "too_many_moderators");
    // Appointing one already there, or removing one, is not adding.
    for on in [true, false] {
        h.send(
            1,
            json!({"type": "moderator", "room": "club", "nick": "m1", "on": on}),
        );
        assert!(h.drain().is_empty());
        assert!(!h.chat.take_records().is_empty(), "stored");
    }
    // An operator is not held to it.
    h.send(
        2,
        json!({"type": "moderator", "room": "club", "nick": format!("m{MAX_ROOM_MODERATORS}")}),
    );
    assert!(h.drain().is_empty());
    assert!(!h.chat.take_records().is_empty());

    // The ended ban leaves room for one more; then the room is full.
    h.send(1, json!({"type": "ban", "room": "club", "nick": "zed"}));
    assert!(h.drain().iter().all(|(_, v)| v["type"] != "error"));
    assert!(!h.chat.take_records().is_empty());
    h.chat.committed(&mut h.out);
    assert!(h.drain().iter().any(|(_, v)| v["action"] == "ban"));
    let v = h.ask(1, json!({"type": "ban", "room": "club", "nick": "zoe"}));
    err(&v, "too_many_bans");
    // Banning a nick banned already replaces its ban: not one more, so
    // the room being full does not stop it, and it stays full after.
    h.send(
        1,
        json!({"type": "ban", "room": "club", "nick": "t5", "duration": 60}),
    );
    assert!(h.drain().iter().all(|(_, v)| v["type"] != "error"));
    assert!(!h.chat.take_records().is_empty());
    h.chat.committed(&mut h.out);
    assert!(h.drain().iter().any(|(_, v)| v["action"] == "ban"));
    let v = h.ask(1, json!({"type": "ban", "room": "club", "nick": "zoe"}));
    err(&v, "too_many_bans");
    // Nor is an operator held to this one.
    h.send(2, json!({"type": "ban", "room": "club", "nick": "zoe"}));
    assert!(h.drain().iter().all(|(_, v)| v["type"] != "error"));
}
