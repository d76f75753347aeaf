//! The chat state machine driven by arbitrary command sequences over a few
//! connections, with a recording outbox that checks every frame and every
//! close the chat asks for.
//!
//! Input: 6 config bytes, then records, each an op byte and its operands:
//!
//! ```text
//! op % 8 = 0 connect     [conn] [nick]         nick 0: none, 1..: a pool pick,
//!                                              >= 0x80: [len] raw bytes
//!          1, 7 text     [conn] [len u16 LE] bytes     (on_text with raw bytes)
//!          2, 6 json     [conn] [len u8] bytes         (a request built from them)
//!          3 disconnect  [conn]
//!          4 tick        [ms u16 LE]           mono time advances, then tick
//!          5 clock step  [ms u16 LE]           mono advances, wall steps back
//! ```
//! (`ms` has its top bit meaning "seconds".) Raw text records make the seeds
//! readable: they are the JSON lines of `docs/protocol.md`.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use wschat::chat::{CLOSE_POLICY, Chat, ChatConfig, ConnId, Now, Outbox};

const CONNS: u8 = 6;

#[derive(Default)]
struct Rec {
    sent: Vec<(ConnId, Rc<[u8]>)>,
    closed: Vec<(ConnId, u16)>,
}

impl Outbox for Rec {
    fn send(&mut self, to: ConnId, frame: &Rc<[u8]>) {
        self.sent.push((to, frame.clone()));
    }
    fn close(&mut self, to: ConnId, code: u16, reason: &str) {
        assert!(
            !reason.is_empty() && reason.len() <= 123,
            "close reason fits"
        );
        self.closed.push((to, code));
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        let lo = self.byte()?;
        let hi = self.byte().unwrap_or(0);
        Some(u16::from_le_bytes([lo, hi]))
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn ms(&mut self) -> u64 {
        let v = self.u16().unwrap_or(0);
        u64::from(v & 0x7fff) * if v & 0x8000 != 0 { 1000 } else { 1 }
    }
}

const NICKS: &[&str] = &[
    "alice",
    "Bob",
    "ALICE",
    "bob",
    "guest-1",
    "guest-2",
    "x",
    "a.b-c_d",
    "abcdefghijklmnopqrstuvwxyz012345",
    "abcdefghijklmnopqrstuvwxyz0123456",
    "bad nick",
    "é",
    "",
];
const ROOMS: &[&str] = &[
    "general",
    "General",
    "random",
    "a",
    "r-1_x",
    "a.b",
    "0123456789012345678901234567890123456789012345678901234567890123",
    "01234567890123456789012345678901234567890123456789012345678901234",
    "",
    "bad room",
];
const TEXTS: &[&str] = &[
    "hi",
    "hi all",
    " ",
    "\t\n",
    "\u{7}",
    "a\nb\tc",
    "😀😀😀",
    "\u{85}",
    "\u{3000}x",
    "\u{200b}",
    "abcdefghijklmnopqrstuvwxyz",
    "",
];
const TYPES: &[&str] = &[
    "nick", "join", "leave", "message", "dm", "typing", "history", "rooms", "Join", "", "bogus",
];
const FIELDS: &[&str] = &[
    "ref", "nick", "room", "since", "epoch", "text", "to", "active", "before", "limit", "extra",
];

fn pick<'s>(u: &mut Unstructured, pool: &[&'s str]) -> AResult<&'s str> {
    Ok(pool[u.choose_index(pool.len())?])
}

fn int(u: &mut Unstructured) -> AResult<Value> {
    Ok(match u.choose_index(12)? {
        0 => json!(0),
        1 => json!(1),
        2 => json!(u.int_in_range(2u64..=120)?),
        3 => json!((1u64 << 53) - 1),
        4 => json!(1u64 << 53),
        5 => json!(u64::MAX),
        6 => json!(-1),
        7 => json!(i64::MIN),
        8 => json!(-0.0),
        9 => json!(1.0),
        10 => json!(1e3),
        _ => json!(u.arbitrary::<u64>()?),
    })
}

/// A value for `field`: usually of the right type from a pool that covers
/// the rules' edges, sometimes anything.
fn value(u: &mut Unstructured, field: &str, epochs: &[String]) -> AResult<Value> {
    if u.ratio(1, 8)? {
        return Ok(match u.choose_index(6)? {
            0 => Value::Null,
            1 => json!(u.arbitrary::<bool>()?),
            2 => json!([1, "a"]),
            3 => json!({"a": 1}),
            4 => json!(u.arbitrary::<String>()?),
            _ => int(u)?,
        });
    }
    Ok(match field {
        "nick" | "to" => json!(pick(u, NICKS)?),
        "room" => json!(pick(u, ROOMS)?),
        "text" => {
            if u.ratio(1, 4)? {
                json!(u.arbitrary::<String>()?)
            } else {
                json!(pick(u, TEXTS)?)
            }
        }
        "epoch" if !epochs.is_empty() && u.ratio(3, 4)? => {
            json!(epochs[u.choose_index(epochs.len())?])
        }
        "epoch" => json!("1x8kq0d2mfz3a"),
        "active" => json!(u.arbitrary::<bool>()?),
        "ref" => json!(pick(
            u,
            &[
                "",
                "r1",
                "ééééééééééééééééééééééééééééééé", // 62 bytes
                "0123456789012345678901234567890123456789012345678901234567890123",
                "01234567890123456789012345678901234567890123456789012345678901234",
            ]
        )?),
        _ => int(u)?,
    })
}

/// A client request built from arbitrary choices: a plausible shape most of
/// the time, so the fuzzer reaches the chat logic behind the parser.
fn request(u: &mut Unstructured, epochs: &[String]) -> AResult<Vec<u8>> {
    let mut map = Map::new();
    match u.choose_index(8)? {
        0 => {}
        1 => {
            map.insert("type".into(), int(u)?);
        }
        _ => {
            map.insert("type".into(), json!(pick(u, TYPES)?));
        }
    }
    for f in FIELDS {
        if u.ratio(1, 2)? {
            map.insert((*f).into(), value(u, f, epochs)?);
        }
    }
    Ok(serde_json::to_vec(&Value::Object(map)).unwrap_or_default())
}

struct Harness {
    chat: Chat,
    cfg: ChatConfig,
    out: Rec,
    now: Now,
    /// Live connections and the nick each was last told it has.
    live: HashMap<ConnId, String>,
    /// Connections the chat asked to close.
    closing: HashSet<ConnId>,
    epochs: Vec<String>,
    /// Per room name: its epoch and the newest message id and ts seen.
    rooms: HashMap<String, (String, u64, u64)>,
}

fn nick_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn ids_increase(list: &Value) {
    let ids: Vec<u64> = list
        .as_array()
        .expect("a list of messages")
        .iter()
        .map(|m| m["id"].as_u64().expect("an id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
}

impl Harness {
    /// Checks what one command made the chat send, and returns the decoded
    /// frames.
    fn check_output(&mut self) -> Vec<(ConnId, Value)> {
        let mut frames = Vec::new();
        for (to, f) in std::mem::take(&mut self.out.sent) {
            assert!(
                self.live.contains_key(&to),
                "frame to a gone connection {to}"
            );
            let v: Value = serde_json::from_slice(&f).expect("server payload is JSON");
            let ty = v["type"].as_str().expect("a string \"type\"");
            match ty {
                "welcome" | "error" | "left" | "presence" | "dm" | "typing" | "rooms" => {}
                "nick" => {
                    let (old, new) = (v["old"].as_str().unwrap(), v["nick"].as_str().unwrap());
                    assert!(nick_ok(new));
                    if self.live[&to] == old {
                        self.live.insert(to, new.to_owned());
                    }
                }
                "joined" => {
                    // Members: the live nicks in the room, the joiner's among
                    // them, sorted ignoring case (and so without repeats).
                    let members: Vec<&str> = v["members"]
                        .as_array()
                        .expect("a list of members")
                        .iter()
                        .map(|m| m.as_str().expect("a nick"))
                        .collect();
                    let lower: Vec<String> =
                        members.iter().map(|m| m.to_ascii_lowercase()).collect();
                    assert!(
                        lower.windows(2).all(|w| w[0] < w[1]),
                        "members in order: {members:?}"
                    );
                    assert!(
                        members.contains(&self.live[&to].as_str()),
                        "the joiner is a member"
                    );
                    assert!(
                        members.iter().all(|m| self.live.values().any(|n| n == m)),
                        "members are live: {members:?}"
                    );
                    let room = v["room"].as_str().unwrap().to_owned();
                    let epoch = v["epoch"].as_str().unwrap().to_owned();
                    ids_increase(&v["history"]);
                    let e = self.rooms.entry(room).or_insert((epoch.clone(), 0, 0));
                    if e.0 != epoch {
                        *e = (epoch.clone(), 0, 0);
                    }
                    if !self.epochs.contains(&epoch) && self.epochs.len() < 16 {
                        self.epochs.push(epoch);
                    }
                }
                "history" => ids_increase(&v["messages"]),
                "message" => {
                    let room = v["room"].as_str().unwrap();
                    let id = v["id"].as_u64().unwrap();
                    let ts = v["ts"].as_u64().unwrap();
                    if let Some(e) = self.rooms.get_mut(room) {
                        // Every recipient gets the same id; a later message
                        // a larger one, with a `ts` that never decreases.
                        assert!(id >= e.1, "room {room}: id {id} after {}", e.1);
                        if id > e.1 {
                            assert!(ts >= e.2, "room {room}: ts went back");
                            e.1 = id;
                            e.2 = ts;
                        }
                    }
                }
                other => panic!("unknown server frame type {other:?}"),
            }
            frames.push((to, v));
        }
        for (to, code) in std::mem::take(&mut self.out.closed) {
            assert!(
                self.live.contains_key(&to),
                "close of a gone connection {to}"
            );
            assert_eq!(code, CLOSE_POLICY);
            self.closing.insert(to);
        }
        // Nicks are unique ignoring case.
        let mut keys: Vec<String> = self.live.values().map(|n| n.to_ascii_lowercase()).collect();
        keys.sort_unstable();
        let n = keys.len();
        keys.dedup();
        assert_eq!(
            keys.len(),
            n,
            "two connections share a nick: {:?}",
            self.live
        );
        assert_eq!(self.chat.connections(), self.live.len());
        assert!(self.chat.rooms() <= self.cfg.max_rooms);
        frames
    }

    fn connect(&mut self, conn: ConnId, nick: Option<&str>) {
        self.chat.connect(conn, nick, self.now, &mut self.out);
        // A reused id: the chat forgets the old connection first.
        self.live.insert(conn, String::new());
        self.closing.remove(&conn);
        let frames = self.check_output();
        let (to, w) = frames.last().expect("a welcome");
        assert_eq!(*to, conn);
        assert_eq!(w["type"], "welcome");
        let got = w["nick"].as_str().unwrap();
        assert!(nick_ok(got), "granted nick {got:?} breaks the rules");
        if let Some(n) = nick.filter(|n| nick_ok(n)) {
            // A valid requested nick is granted unless someone holds it.
            let taken = self
                .live
                .iter()
                .any(|(c, h)| *c != conn && h.eq_ignore_ascii_case(n));
            assert_eq!(got == n, !taken, "requested {n:?}, got {got:?}");
        }
        self.live.insert(conn, got.to_owned());
        self.check_output();
    }

    fn text(&mut self, conn: ConnId, msg: &[u8]) {
        let was_live = self.live.contains_key(&conn);
        let was_closing = self.closing.contains(&conn);
        self.chat.on_text(conn, msg, self.now, &mut self.out);
        let closed = self.out.closed.iter().any(|&(c, _)| c == conn);
        let frames = self.check_output();
        if !was_live || was_closing {
            assert!(
                frames.is_empty() && !closed,
                "output for an ignored connection"
            );
            return;
        }
        if closed {
            assert!(self.cfg.rate_burst > 0, "closed without a rate limit");
            return;
        }
        // Every message is answered, but a successful `typing`.
        if !frames.iter().any(|(to, _)| *to == conn) {
            let v: Value = serde_json::from_slice(msg).expect("unanswered only if JSON");
            assert_eq!(v["type"], "typing", "no answer to {v}");
            assert!(frames.iter().all(|(_, f)| f["type"] == "typing"));
        }
    }

    fn disconnect(&mut self, conn: ConnId) {
        self.chat.disconnect(conn, self.now, &mut self.out);
        self.live.remove(&conn);
        self.closing.remove(&conn);
        let frames = self.check_output();
        assert!(frames.iter().all(|(_, f)| f["type"] == "presence"));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor(data);
    let mut cfgb = [0u8; 6];
    for b in &mut cfgb {
        *b = c.byte().unwrap_or(0);
    }
    let cfg = ChatConfig {
        motd: "Be nice.".into(),
        history: [3, 0, 1, 2, 5, 1000][usize::from(cfgb[0] % 6)],
        max_rooms_per_conn: 1 + usize::from(cfgb[1] % 4),
        max_rooms: 1 + usize::from(cfgb[2] % 6),
        max_rooms_per_addr: 1 + usize::from((cfgb[2] >> 4) % 4),
        max_text_chars: [4000, 1, 2, 5, 16][usize::from(cfgb[3] % 5)],
        max_message_bytes: 64 << 10,
        rate_burst: u32::from(cfgb[4] % 4),
        rate_per_sec: u32::from((cfgb[4] >> 2) % 3),
        room_retention_ms: [60_000, 0, 1, 1000][usize::from(cfgb[5] % 4)],
        // From "keeps nothing" to roomy, so global eviction is exercised.
        max_history_bytes: [64 << 20, 0, 400, 2000][usize::from((cfgb[5] >> 2) % 4)],
        durable: false,
        // Accounts need the server's hashing worker: none here, so the
        // requests exercise their field checks and refusals only.
        require_account: false,
        registration_open: true,
        max_auth_jobs: 32,
        max_accounts: 10_000,
        registrations_per_hour: 5,
        uploads: Default::default(),
    };
    let mut h = Harness {
        chat: Chat::new(cfg.clone(), 42),
        cfg,
        out: Rec::default(),
        now: Now {
            mono_ms: 1_000_000,
            wall_ms: 1_763_780_000_000,
        },
        live: HashMap::new(),
        closing: HashSet::new(),
        epochs: Vec::new(),
        rooms: HashMap::new(),
    };

    while let Some(op) = c.byte() {
        match op % 8 {
            0 => {
                let conn = usize::from(c.byte().unwrap_or(0) % CONNS);
                let sel = c.byte().unwrap_or(0);
                let raw;
                let nick = match sel {
                    0 => None,
                    0x80.. => {
                        let n = usize::from(c.byte().unwrap_or(0));
                        raw = String::from_utf8_lossy(c.take(n)).into_owned();
                        Some(raw.as_str())
                    }
                    s => Some(NICKS[usize::from(s - 1) % NICKS.len()]),
                };
                h.connect(conn, nick);
            }
            1 | 7 => {
                let conn = usize::from(c.byte().unwrap_or(0) % CONNS);
                let n = usize::from(c.u16().unwrap_or(0));
                let msg = c.take(n);
                h.text(conn, msg);
            }
            2 | 6 => {
                let conn = usize::from(c.byte().unwrap_or(0) % CONNS);
                let n = usize::from(c.byte().unwrap_or(0));
                let mut u = Unstructured::new(c.take(n));
                let Ok(msg) = request(&mut u, &h.epochs) else {
                    continue;
                };
                h.text(conn, &msg);
            }
            3 => {
                let conn = usize::from(c.byte().unwrap_or(0) % CONNS);
                h.disconnect(conn);
            }
            4 => {
                let ms = c.ms();
                h.now.mono_ms += ms;
                h.now.wall_ms += ms;
                h.chat.tick(h.now);
                h.check_output();
            }
            _ => {
                let ms = c.ms();
                h.now.mono_ms += ms;
                h.now.wall_ms = h.now.wall_ms.saturating_sub(ms);
            }
        }
        // The global history budget holds between calls.
        assert!(
            h.chat.history_bytes() <= h.cfg.max_history_bytes,
            "history {} over budget {}",
            h.chat.history_bytes(),
            h.cfg.max_history_bytes
        );
    }
});
