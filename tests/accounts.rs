//! End-to-end tests of accounts and sessions (docs/protocol.md,
//! "Accounts"): real servers on real sockets, restarted and killed on the
//! same `--data-dir`.
mod common;
use common::*;

use serde_json::{Value, json};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;
use tungstenite::Message;

fn login_pw(ws: &mut Ws, account: &str, pw: &str) -> Value {
    ask(
        ws,
        json!({"type":"login","account":account,"password":pw}),
        "login",
    )
}

fn login_token(ws: &mut Ws, token: &str) -> Value {
    ask(ws, json!({"type":"login","token":token}), "tok")
}

fn nick_of(ws: &mut Ws) -> String {
    // A `nick` to one's own current nick answers it, to oneself only.
    let v = ask(ws, json!({"type":"rooms"}), "probe");
    assert_eq!(v["type"], "rooms");
    let w = ask(ws, json!({"type":"nick","nick":"probe-nick-x"}), "n");
    let old = w["old"].as_str().unwrap_or_default().to_string();
    let back = ask(ws, json!({"type":"nick","nick":old}), "n2");
    assert_eq!(back["type"], "nick", "{back}");
    old
}

#[test]
fn a_registered_nick_cannot_be_impersonated() {
    let dir = TempDir::new("impersonate");
    let s = start(dir.path(), &[]);
    let (mut alice, nick) = connect_nick(&s, "alice");
    assert_eq!(nick, "alice");
    let token = register(&mut alice);
    assert_eq!(token.len(), 64);
    drop(alice);
    std::thread::sleep(Duration::from_millis(100));

    // Asking for it at connect gives a guest nick, as a taken nick does.
    let (mut mallory, nick) = connect_nick(&s, "Alice");
    assert!(nick.starts_with("guest-"), "{nick}");
    let v = ask(&mut mallory, json!({"type":"nick","nick":"ALICE"}), "n");
    assert_eq!(v["code"], "nick_taken", "{v}");
    let v = login_pw(&mut mallory, "alice", "not the password");
    assert_eq!(v["code"], "login_failed", "{v}");
    let v = ask(&mut mallory, json!({"type":"register","password":PW}), "r");
    assert_eq!(v["type"], "session", "a guest nick can be registered: {v}");
    let v = ask(
        &mut mallory,
        json!({"type":"register","nick":"alice","password":PW}),
        "r2",
    );
    assert_eq!(v["code"], "forbidden", "{v}");

    // Alice, back with her token, gets her nick.
    let (mut alice, _) = connect_nick(&s, "alice");
    let v = login_token(&mut alice, &token);
    assert_eq!(v["type"], "session", "{v}");
    assert_eq!(v["account"], "alice");
    assert_eq!(nick_of(&mut alice), "alice");
}

#[test]
fn a_token_logs_in_across_a_restart_and_logout_ends_it() {
    let dir = TempDir::new("restart");
    let mut s = start(dir.path(), &[]);
    let (mut c, _) = connect_nick(&s, "bob");
    let token = register(&mut c);
    drop(c);
    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
    drop(s);

    let s = start(dir.path(), &[]);
    let (mut g, nick) = connect_nick(&s, "bob");
    assert!(nick.starts_with("guest-"), "still registered: {nick}");
    let v = login_token(&mut g, &token);
    assert_eq!(v["type"], "session", "{v}");
    assert_eq!(nick_of(&mut g), "bob");
    let v = ask(&mut g, json!({"type":"logout"}), "out");
    assert_eq!(v["type"], "logged_out", "{v}");
    assert!(
        nick_of(&mut g).starts_with("guest-"),
        "the nick went with it"
    );
    let v = login_token(&mut g, &token);
    assert_eq!(v["code"], "login_failed", "{v}");
    let v = ask(&mut g, json!({"type":"logout"}), "out2");
    assert_eq!(v["code"], "not_logged_in", "{v}");
}

#[test]
fn a_password_change_ends_the_other_sessions() {
    let s = Server::start(&["--no-persist", "--rate-burst", "0"]);
    let (mut a1, _) = connect_nick(&s, "carol");
    let t1 = register(&mut a1);
    let (mut a2, _) = connect_nick(&s, "x");
    let v = login_pw(&mut a2, "carol", PW);
    assert_eq!(v["type"], "session", "{v}");
    let t2 = v["token"].as_str().unwrap().to_string();
    assert_ne!(t1, t2);

    let v = ask(
        &mut a1,
        json!({"type":"passwd","password":"wrong password","new_password":"new secret 123"}),
        "p0",
    );
    assert_eq!(v["code"], "login_failed", "{v}");
    let v = ask(
        &mut a1,
        json!({"type":"passwd","password":PW,"new_password":"new secret 123"}),
        "p",
    );
    assert_eq!(v["type"], "session", "{v}");
    let t3 = v["token"].as_str().unwrap().to_string();
    let out = recv_type(&mut a2, "logged_out");
    assert_eq!(out["account"], "carol");

    let (mut c, _) = connect_nick(&s, "y");
    for old in [&t1, &t2] {
        let v = login_token(&mut c, old);
        assert_eq!(v["code"], "login_failed", "{v}");
    }
    assert_eq!(login_pw(&mut c, "carol", PW)["code"], "login_failed");
    assert_eq!(login_token(&mut c, &t3)["type"], "session");
    // a1 still holds the nick: c is logged in but keeps its own.
    assert_eq!(
        login_pw(&mut c, "carol", "new secret 123")["type"],
        "session"
    );

    // Log out everywhere: every connection of the account hears it.
    let v = ask(&mut c, json!({"type":"logout","all":true}), "all");
    assert_eq!(v["type"], "logged_out", "{v}");
    let out = recv_type(&mut a1, "logged_out");
    assert_eq!(out["account"], "carol");
    let (mut d, _) = connect_nick(&s, "z");
    assert_eq!(login_token(&mut d, &t3)["code"], "login_failed");
}

#[test]
fn failed_logins_are_limited_per_account_and_per_address() {
    let s = Server::start(&["--no-persist", "--rate-burst", "0", "--limit-loopback"]);
    let (mut owner, _) = connect_nick(&s, "dave");
    register(&mut owner);
    let (mut m, _) = connect_nick(&s, "m");
    for i in 0..6 {
        let v = login_pw(&mut m, "dave", &format!("guess number {i}"));
        assert_eq!(v["code"], "login_failed", "attempt {i}: {v}");
    }
    // Locked now: even the right password waits, and the error says how long.
    let (mut other, _) = connect_nick(&s, "o");
    let v = login_pw(&mut other, "dave", PW);
    assert_eq!(v["code"], "login_limited", "{v}");
    let wait = v["retry_after"].as_u64().expect("retry_after");
    assert!((1..=900).contains(&wait), "{v}");
    assert!(v["message"].as_str().unwrap().contains("try again in"));
    std::thread::sleep(Duration::from_millis(wait * 1000 + 200));
    // Per address too (this address failed 6 times): the address's lock
    // was the same length, so both have run out.
    let v = login_pw(&mut other, "dave", PW);
    assert_eq!(v["type"], "session", "{v}");

    // Per address: a success resets the account's count, not the
    // address's, so one more failure, against an account that does not
    // exist, locks the address again (twice as long) for every account.
    let v = login_pw(&mut m, "nobody", PW);
    assert_eq!(v["code"], "login_failed", "{v}");
    let v = login_pw(&mut m, "dave", PW);
    assert_eq!(v["code"], "login_limited", "{v}");
    assert_eq!(v["retry_after"], 2, "{v}");
}

/// Guesses sent together are not all hashed before the first one's failure
/// sets the lock: past the free failures, one guess at a time.
#[test]
fn guesses_sent_together_do_not_escape_the_lock() {
    let s = Server::start(&["--no-persist", "--rate-burst", "0", "--limit-loopback"]);
    let (mut owner, _) = connect_nick(&s, "gina");
    register(&mut owner);
    let (mut m, _) = connect_nick(&s, "m");
    for i in 0..5 {
        let v = login_pw(&mut m, "gina", &format!("guess number {i}"));
        assert_eq!(v["code"], "login_failed", "attempt {i}: {v}");
    }
    let mut many: Vec<Ws> = (0..4)
        .map(|i| connect_nick(&s, &format!("g{i}")).0)
        .collect();
    for (i, w) in many.iter_mut().enumerate() {
        send(
            w,
            json!({"type":"login","account":"gina","password":format!("together {i}"),"ref":"l"}),
        );
    }
    let codes: Vec<String> = many
        .iter_mut()
        .map(|w| {
            loop {
                let v = recv(w);
                if v["ref"] == "l" {
                    break v["code"].as_str().unwrap_or("").to_string();
                }
            }
        })
        .collect();
    let hashed = codes.iter().filter(|c| *c == "login_failed").count();
    assert_eq!(hashed, 1, "only one guess is checked: {codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| c == "login_failed" || c == "busy" || c == "login_limited"),
        "{codes:?}"
    );
}

#[test]
fn guests_are_refused_with_require_account_and_registration_closed() {
    let dir = TempDir::new("policy");
    // The first operator, made on the server's machine (stdin not a terminal).
    let add = |args: &[&str], pw: &str| account_cmd(dir.path(), args, pw);
    let (ok, msg) = add(&["account", "add", "boss", "--op"], "first password");
    assert!(ok, "{msg}");
    let (ok, msg) = add(&["account", "add", "Boss"], "first password");
    assert!(!ok && msg.contains("exists"), "{msg}");
    let (ok, msg) = add(&["account", "passwd", "boss"], PW);
    assert!(ok, "{msg}");
    let (ok, msg) = add(&["account", "add", "short"], "2short");
    assert!(!ok && msg.contains("password"), "{msg}");

    let s = start(
        dir.path(),
        &["--require-account", "--registration", "closed"],
    );
    let (mut g, _) = connect_nick(&s, "guest");
    let v = ask(&mut g, json!({"type":"join","room":"general"}), "j");
    assert_eq!(v["code"], "account_required", "{v}");
    let v = ask(&mut g, json!({"type":"register","password":PW}), "r");
    assert_eq!(v["code"], "registration_closed", "{v}");

    let (mut op, _) = connect_nick(&s, "x");
    assert_eq!(
        login_pw(&mut op, "boss", "first password")["code"],
        "login_failed"
    );
    let v = login_pw(&mut op, "boss", PW);
    assert_eq!(v["type"], "session", "{v}");
    assert_eq!(v["op"], true);
    let v = ask(&mut op, json!({"type":"join","room":"general"}), "j");
    assert_eq!(v["type"], "joined", "{v}");
    // An operator registers someone else: the guest holding the nick loses it.
    let v = ask(
        &mut op,
        json!({"type":"register","nick":"guest","password":PW}),
        "r",
    );
    assert_eq!(v["type"], "registered", "{v}");
    let n = recv_type(&mut g, "nick");
    assert!(n["nick"].as_str().unwrap().starts_with("guest-"), "{n}");
    assert_eq!(login_pw(&mut g, "guest", PW)["type"], "session");
    let v = ask(&mut g, json!({"type":"join","room":"general"}), "j2");
    assert_eq!(v["type"], "joined", "{v}");
}

/// Registers accounts as fast as the server takes them until SIGKILL:
/// every registration that was answered can log in after the restart.
#[test]
fn sigkill_during_registrations_keeps_every_answered_account() {
    let dir = TempDir::new("kill-accounts");
    let mut s = start(dir.path(), &[]);
    let addr = s.addr;
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let url = s.url("/ws");
            std::thread::spawn(move || {
                let mut done: Vec<(String, String)> = Vec::new();
                for i in 0.. {
                    let nick = format!("u{w}x{i}");
                    let Ok(stream) = TcpStream::connect(addr) else {
                        break;
                    };
                    let Ok((mut ws, _)) = tungstenite::client(format!("{url}?nick={nick}"), stream)
                    else {
                        break;
                    };
                    let ok = (|| -> Option<String> {
                        ws.read().ok()?;
                        let req = json!({"type":"register","password":PW,"ref":"r"});
                        ws.send(Message::text(req.to_string())).ok()?;
                        loop {
                            let Message::Text(t) = ws.read().ok()? else {
                                continue;
                            };
                            let v: Value = serde_json::from_str(t.as_str()).ok()?;
                            if v["ref"] == "r" {
                                assert_eq!(v["type"], "session", "{v}");
                                return v["token"].as_str().map(str::to_string);
                            }
                        }
                    })();
                    match ok {
                        Some(t) => done.push((nick, t)),
                        None => break,
                    }
                }
                done
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    s.signal("KILL");
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
    drop(s);
    let done: Vec<(String, String)> = workers
        .into_iter()
        .flat_map(|h| h.join().expect("worker"))
        .collect();
    assert!(done.len() >= 3, "too few registrations: {}", done.len());

    let s = start(dir.path(), &[]);
    let (mut c, _) = connect_nick(&s, "checker");
    for (nick, token) in &done {
        let v = login_token(&mut c, token);
        assert_eq!(v["type"], "session", "{nick}: {v}");
        assert_eq!(v["account"], nick.as_str());
    }
    let (nick, _) = &done[0];
    let v = login_pw(&mut c, nick, PW);
    assert_eq!(v["type"], "session", "{v}");
}

#[test]
fn a_registration_the_store_refuses_is_storage_failed_and_changes_nothing() {
    let dir = TempDir::new("fault");
    let fault = dir.path().join("fault");
    let s = start(dir.path(), &["--fault-file", fault.to_str().unwrap()]);
    let (mut c, _) = connect_nick(&s, "erin");
    std::fs::write(&fault, b"").unwrap();
    let v = ask(&mut c, json!({"type":"register","password":PW}), "r");
    assert_eq!(v["code"], "storage_failed", "{v}");
    let v = ask(&mut c, json!({"type":"logout"}), "o");
    assert_eq!(v["code"], "not_logged_in", "not logged in: {v}");
    let (mut other, nick) = connect_nick(&s, "Erin2");
    assert_eq!(nick, "Erin2");
    let v = ask(&mut other, json!({"type":"nick","nick":"ERIN"}), "n");
    assert_eq!(v["code"], "nick_taken", "held by c, not registered: {v}");
    std::fs::remove_file(&fault).unwrap();
    assert_eq!(register(&mut c).len(), 64);
}

/// Hashing runs off the event loop: while six logins wait for the worker,
/// a room message goes round at once. The last login's connection sees the
/// message (posted after its login) before its own `session`.
#[test]
fn logins_being_hashed_do_not_hold_up_the_chat() {
    let s = Server::start(&["--no-persist", "--rate-burst", "0"]);
    let (mut owner, _) = connect_nick(&s, "frank");
    register(&mut owner);
    let mut waiting: Vec<Ws> = (0..6)
        .map(|i| connect_nick(&s, &format!("w{i}")).0)
        .collect();
    let last = waiting.last_mut().unwrap();
    assert_eq!(
        ask(last, json!({"type":"join","room":"r"}), "j")["type"],
        "joined"
    );
    for w in &mut waiting {
        send(
            w,
            json!({"type":"login","account":"frank","password":PW,"ref":"l"}),
        );
    }
    let (mut poster, _) = connect_nick(&s, "poster");
    assert_eq!(
        ask(&mut poster, json!({"type":"join","room":"r"}), "j")["type"],
        "joined"
    );
    let ack = ask(
        &mut poster,
        json!({"type":"message","room":"r","text":"still here"}),
        "m",
    );
    assert_eq!(ack["type"], "message", "{ack}");
    let last = waiting.last_mut().unwrap();
    let first = loop {
        let v = recv(last);
        if v["type"] == "message" || v["ref"] == "l" {
            break v;
        }
    };
    assert_eq!(
        first["type"], "message",
        "the login was answered first: {first}"
    );
    for w in &mut waiting {
        let v = loop {
            let v = recv(w);
            if v["ref"] == "l" {
                break v;
            }
        };
        assert_eq!(v["type"], "session", "{v}");
    }
}

// ---- moderation ----

/// A server on `dir` with the operator `boss` (password PW), logged in.
fn with_operator(dir: &Path, extra: &[&str]) -> (Server, Ws) {
    let (ok, msg) = account_cmd(dir, &["account", "add", "boss", "--op"], PW);
    assert!(ok || msg.contains("exists"), "{msg}");
    let s = start(dir, extra);
    let (mut op, _) = connect_nick(&s, "x");
    assert_eq!(login_pw(&mut op, "boss", PW)["type"], "session");
    (s, op)
}

#[test]
fn an_operator_kicks_and_a_plain_user_cannot() {
    let dir = TempDir::new("kick");
    let (s, mut op) = with_operator(dir.path(), &[]);
    let (mut bob, _) = connect_nick(&s, "bob");
    let (mut carol, _) = connect_nick(&s, "carol");
    assert_eq!(try_join(&mut bob, "r")["type"], "joined");
    assert_eq!(try_join(&mut carol, "r")["type"], "joined");

    let v = ask(
        &mut carol,
        json!({"type":"kick","room":"r","nick":"bob"}),
        "k",
    );
    assert_eq!(v["code"], "forbidden", "{v}");
    let m = ask(
        &mut bob,
        json!({"type":"message","room":"r","text":"still in"}),
        "m",
    );
    assert_eq!(m["type"], "message", "nothing happened: {m}");

    let v = ask(
        &mut op,
        json!({"type":"kick","room":"r","nick":"Bob","reason":"spam"}),
        "k",
    );
    assert_eq!(v["type"], "moderation", "{v}");
    assert_eq!(
        (v["action"].as_str(), v["nick"].as_str()),
        (Some("kick"), Some("bob"))
    );
    let e = recv_type(&mut bob, "moderation");
    assert_eq!(
        (e["by"].as_str(), e["reason"].as_str()),
        (Some("boss"), Some("spam"))
    );
    let e = loop {
        let v = recv(&mut carol);
        if v["type"] == "moderation" {
            break v;
        }
    };
    assert_eq!(e["room"], "r");
    let p = recv_type(&mut carol, "presence");
    assert_eq!(
        (p["nick"].as_str(), p["event"].as_str()),
        (Some("bob"), Some("leave"))
    );
    let v = ask(
        &mut bob,
        json!({"type":"message","room":"r","text":"x"}),
        "m2",
    );
    assert_eq!(v["code"], "not_in_room", "{v}");
    // A kick is not a ban: bob may come back.
    assert_eq!(try_join(&mut bob, "r")["type"], "joined");
}

#[test]
fn a_room_ban_holds_across_reconnects_a_new_nick_and_a_restart() {
    let dir = TempDir::new("ban");
    let (mut s, mut op) = with_operator(dir.path(), &["--limit-loopback"]);
    let (mut bob, _) = connect_nick(&s, "bob");
    let token = register(&mut bob);
    assert_eq!(try_join(&mut bob, "r")["type"], "joined");
    let (mut plain, _) = connect_nick(&s, "plain");
    let v = ask(
        &mut plain,
        json!({"type":"ban","room":"r","nick":"bob"}),
        "b",
    );
    assert_eq!(v["code"], "forbidden", "{v}");

    let v = ask(
        &mut op,
        json!({"type":"ban","room":"r","nick":"bob","reason":"trolling"}),
        "b",
    );
    assert_eq!(v["type"], "moderation", "{v}");
    assert_eq!(v["until"], 0);
    let e = recv_type(&mut bob, "moderation");
    assert_eq!(e["action"], "ban");
    let v = try_join(&mut bob, "r");
    assert_eq!(v["code"], "banned", "{v}");
    assert!(v["message"].as_str().unwrap().contains("trolling"), "{v}");
    assert_eq!(
        try_join(&mut bob, "elsewhere")["type"],
        "joined",
        "only room r"
    );
    drop(bob);

    // Reconnect: logged in, same account.
    let (mut bob, _) = connect_nick(&s, "x");
    assert_eq!(login_token(&mut bob, &token)["type"], "session");
    assert_eq!(try_join(&mut bob, "r")["code"], "banned");
    // A new nick, logged out: an IP ban catches that.
    let v = ask(
        &mut op,
        json!({"type":"ban","room":"r","nick":"bob","ip":true}),
        "b2",
    );
    assert_eq!(v["type"], "moderation", "{v}");
    let (mut other, nick) = connect_nick(&s, "robert");
    assert_eq!(nick, "robert");
    assert_eq!(try_join(&mut other, "r")["code"], "banned");
    drop((op, bob, other, plain));

    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
    drop(s);
    let s = start(dir.path(), &["--limit-loopback"]);
    let (mut bob, _) = connect_nick(&s, "x");
    assert_eq!(login_token(&mut bob, &token)["type"], "session");
    assert_eq!(try_join(&mut bob, "r")["code"], "banned", "after a restart");
    drop(bob);
    drop(s);

    // The audit log says who did what.
    let db = rusqlite::Connection::open(dir.path().join("wschat.db")).unwrap();
    let rows: Vec<(String, String, String, String)> = db
        .prepare("SELECT actor, action, room, target FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let want = |a: &str, r: &str, t: &str| ("boss".into(), a.into(), r.into(), t.into());
    assert_eq!(rows, vec![want("ban", "r", "bob"), want("ban", "r", "bob")]);
}

/// A ban of a nick already banned in the room replaces that ban, in memory
/// and in the store (one row); `unban` lifts a room ban or a server ban,
/// and both outlive a SIGKILL.
#[test]
fn a_ban_again_replaces_the_ban_and_unban_lifts_it_across_a_kill() {
    let dir = TempDir::new("unban");
    let (s, mut op) = with_operator(dir.path(), &[]);
    let (mut bob, _) = connect_nick(&s, "bob");
    assert_eq!(try_join(&mut bob, "r")["type"], "joined");
    let (mut plain, _) = connect_nick(&s, "plain");
    assert_eq!(try_join(&mut plain, "r")["type"], "joined");
    let v = ask(
        &mut op,
        json!({"type":"unban","room":"r","nick":"bob"}),
        "u0",
    );
    assert_eq!(v["code"], "not_banned", "{v}");
    let v = ask(
        &mut op,
        json!({"type":"ban","room":"r","nick":"bob","duration":3600}),
        "b",
    );
    assert_eq!(v["type"], "moderation", "{v}");
    let v = ask(
        &mut op,
        json!({"type":"ban","room":"r","nick":"bob","reason":"again"}),
        "b2",
    );
    assert_eq!(v["until"], 0, "for good now: {v}");
    assert_eq!(try_join(&mut bob, "r")["code"], "banned");
    // Also a server ban of another nick, to lift after the restart.
    let v = ask(&mut op, json!({"type":"ban","nick":"troll"}), "b3");
    assert_eq!(v["type"], "moderation", "{v}");
    drop(op);
    let s = restart(s, dir.path(), "KILL", &[]);
    let (mut bob, _) = connect_nick(&s, "bob");
    assert_eq!(try_join(&mut bob, "r")["code"], "banned", "after the kill");
    let rows: i64 = rusqlite::Connection::open(dir.path().join("wschat.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM bans WHERE room = 'r' AND nick = 'bob'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 1, "the second ban replaced the first");
    let (mut plain, _) = connect_nick(&s, "plain");
    assert_eq!(try_join(&mut plain, "r")["type"], "joined");
    let v = ask(
        &mut plain,
        json!({"type":"unban","room":"r","nick":"bob"}),
        "u1",
    );
    assert_eq!(v["code"], "forbidden", "{v}");
    let (mut op, _) = connect_nick(&s, "x");
    assert_eq!(login_pw(&mut op, "boss", PW)["type"], "session");
    let v = ask(
        &mut op,
        json!({"type":"unban","room":"r","nick":"BOB"}),
        "u2",
    );
    assert_eq!(
        v,
        json!({"type":"moderation","action":"unban","room":"r","nick":"BOB","by":"boss","reason":"","ref":"u2"})
    );
    let e = recv_type(&mut plain, "moderation");
    assert_eq!((e["action"].as_str(), e.get("ref")), (Some("unban"), None));
    assert_eq!(try_join(&mut bob, "r")["type"], "joined", "lifted");
    let v = ask(&mut plain, json!({"type":"unban","nick":"troll"}), "u3");
    assert_eq!(
        v["code"], "forbidden",
        "server bans are the operators': {v}"
    );
    let v = ask(&mut op, json!({"type":"unban","nick":"troll"}), "u4");
    assert_eq!(v["action"], "unban", "{v}");
    assert!(v.get("room").is_none(), "{v}");
    drop((op, bob, plain));

    let s = restart(s, dir.path(), "KILL", &[]);
    let (mut bob, _) = connect_nick(&s, "bob");
    assert_eq!(try_join(&mut bob, "r")["type"], "joined", "still lifted");
    let (_, nick) = connect_nick(&s, "troll");
    assert_eq!(nick, "troll", "the server ban is lifted too");
    drop((bob, s));
    let db = rusqlite::Connection::open(dir.path().join("wschat.db")).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM bans", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "no ban rows left");
    let actions: Vec<String> = db
        .prepare("SELECT action FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(actions, ["ban", "ban", "ban", "unban", "unban"]);
}

#[test]
fn a_server_ban_closes_the_connection_and_runs_out() {
    let dir = TempDir::new("server-ban");
    let (s, mut op) = with_operator(dir.path(), &[]);
    let (mut troll, _) = connect_nick(&s, "troll");
    assert_eq!(try_join(&mut troll, "r")["type"], "joined");
    let v = ask(
        &mut op,
        json!({"type":"ban","nick":"troll","duration":2,"reason":"flood"}),
        "b",
    );
    assert_eq!(v["type"], "moderation", "{v}");
    assert!(v.get("room").is_none(), "{v}");
    // The troll hears the ban in its room, then the close.
    let closed = loop {
        match troll.read() {
            Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    assert_eq!(closed, Some(1008));
    let (_, nick) = connect_nick(&s, "troll");
    assert!(nick.starts_with("guest-"), "the nick is banned: {nick}");
    std::thread::sleep(Duration::from_millis(2300));
    let (_, nick) = connect_nick(&s, "troll");
    assert_eq!(nick, "troll", "the ban ran out");
}

#[test]
fn a_mute_runs_out_and_slow_mode_spaces_messages() {
    let dir = TempDir::new("mute");
    let (s, mut op) = with_operator(dir.path(), &[]);
    let (mut bob, _) = connect_nick(&s, "bob");
    assert_eq!(try_join(&mut bob, "r")["type"], "joined");
    let (mut plain, _) = connect_nick(&s, "plain");
    let v = ask(
        &mut plain,
        json!({"type":"mute","room":"r","nick":"bob","duration":60}),
        "m",
    );
    assert_eq!(v["code"], "forbidden", "{v}");
    let v = ask(
        &mut plain,
        json!({"type":"slow","room":"r","interval":60}),
        "s",
    );
    assert_eq!(v["code"], "forbidden", "{v}");
    let post = |ws: &mut Ws, t: &str| ask(ws, json!({"type":"message","room":"r","text":t}), "p");
    assert_eq!(
        post(&mut bob, "one")["type"],
        "message",
        "slow mode is not on yet"
    );

    let v = ask(
        &mut op,
        json!({"type":"mute","room":"r","nick":"bob","duration":1}),
        "m",
    );
    assert_eq!(v["type"], "moderation", "{v}");
    assert_eq!(recv_type(&mut bob, "moderation")["action"], "mute");
    let v = post(&mut bob, "muted?");
    assert_eq!(v["code"], "muted", "{v}");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(post(&mut bob, "back").get("type"), Some(&json!("message")));

    let v = ask(&mut op, json!({"type":"slow","room":"r","interval":2}), "s");
    assert_eq!(
        (v["action"].as_str(), v["interval"].as_u64()),
        (Some("slow"), Some(2))
    );
    assert_eq!(recv_type(&mut bob, "moderation")["interval"], 2);
    assert_eq!(post(&mut bob, "first")["type"], "message");
    let v = post(&mut bob, "too soon");
    assert_eq!(v["code"], "slow_mode", "{v}");
    assert!((1..=2).contains(&v["retry_after"].as_u64().unwrap()), "{v}");
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(post(&mut bob, "later")["type"], "message");
    let v = ask(
        &mut op,
        json!({"type":"slow","room":"r","interval":0}),
        "s0",
    );
    assert_eq!(v["interval"], 0);
    assert_eq!(post(&mut bob, "a")["type"], "message");
    assert_eq!(post(&mut bob, "b")["type"], "message", "slow mode off");
}

#[test]
fn a_room_moderator_acts_in_that_room_only_and_stays_one_after_a_restart() {
    let dir = TempDir::new("moderator");
    let (mut s, mut op) = with_operator(dir.path(), &[]);
    let (mut bob, _) = connect_nick(&s, "bob");
    let token = register(&mut bob);
    let (mut carol, _) = connect_nick(&s, "carol");
    let v = ask(
        &mut carol,
        json!({"type":"moderator","room":"r","nick":"bob"}),
        "a",
    );
    assert_eq!(v["code"], "forbidden", "{v}");
    let v = ask(
        &mut op,
        json!({"type":"moderator","room":"r","nick":"nobody"}),
        "a",
    );
    assert_eq!(v["code"], "no_such_account", "{v}");
    let v = ask(
        &mut bob,
        json!({"type":"kick","room":"r","nick":"carol"}),
        "k",
    );
    assert_eq!(v["code"], "forbidden", "not yet a moderator: {v}");
    let v = ask(
        &mut op,
        json!({"type":"moderator","room":"r","nick":"bob"}),
        "a",
    );
    assert_eq!(
        (v["action"].as_str(), v["nick"].as_str()),
        (Some("moderator"), Some("bob"))
    );
    drop((op, bob, carol));
    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
    drop(s);

    let s = start(dir.path(), &[]);
    let (mut bob, _) = connect_nick(&s, "x");
    assert_eq!(login_token(&mut bob, &token)["type"], "session");
    let (mut carol, _) = connect_nick(&s, "carol");
    assert_eq!(try_join(&mut carol, "r")["type"], "joined");
    assert_eq!(try_join(&mut carol, "other")["type"], "joined");
    let v = ask(
        &mut bob,
        json!({"type":"kick","room":"r","nick":"carol"}),
        "k",
    );
    assert_eq!(v["type"], "moderation", "{v}");
    let v = ask(
        &mut bob,
        json!({"type":"kick","room":"other","nick":"carol"}),
        "k2",
    );
    assert_eq!(v["code"], "forbidden", "another room: {v}");
    let v = ask(&mut bob, json!({"type":"ban","nick":"carol"}), "b");
    assert_eq!(
        v["code"], "forbidden",
        "server bans are the operators': {v}"
    );
    let v = ask(
        &mut bob,
        json!({"type":"mute","room":"r","nick":"carol","duration":5}),
        "m",
    );
    assert_eq!(v["type"], "moderation", "{v}");
}

#[test]
fn a_topic_set_by_a_moderator_is_in_joined_after_a_restart() {
    let dir = TempDir::new("topic");
    let (mut s, mut op) = with_operator(dir.path(), &[]);
    let (mut carol, _) = connect_nick(&s, "carol");
    assert_eq!(try_join(&mut carol, "r")["type"], "joined");
    assert!(
        try_join(&mut carol, "r").get("topic").is_none(),
        "no topic yet"
    );
    let v = ask(
        &mut carol,
        json!({"type":"topic","room":"r","topic":"mine"}),
        "t",
    );
    assert_eq!(v["code"], "forbidden", "{v}");
    let v = ask(
        &mut op,
        json!({"type":"topic","room":"r","topic":"Release on Friday"}),
        "t",
    );
    assert_eq!(
        (v["action"].as_str(), v["reason"].as_str()),
        (Some("topic"), Some("Release on Friday"))
    );
    assert_eq!(recv_type(&mut carol, "moderation")["action"], "topic");
    assert_eq!(try_join(&mut carol, "r")["topic"], "Release on Friday");
    drop((op, carol));
    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
    drop(s);
    let s = start(dir.path(), &[]);
    let (mut c, _) = connect_nick(&s, "dan");
    assert_eq!(try_join(&mut c, "r")["topic"], "Release on Friday");
    let (mut op, _) = connect_nick(&s, "x");
    assert_eq!(login_pw(&mut op, "boss", PW)["type"], "session");
    let v = ask(&mut op, json!({"type":"topic","room":"r","topic":""}), "t0");
    assert_eq!(v["type"], "moderation", "{v}");
    assert!(try_join(&mut c, "r").get("topic").is_none(), "cleared");
}

#[test]
fn a_deleted_message_leaves_a_tombstone_live_in_history_and_after_a_restart() {
    let dir = TempDir::new("delete");
    let (mut s, mut op) = with_operator(dir.path(), &[]);
    let (mut bob, _) = connect_nick(&s, "bob");
    let (mut carol, _) = connect_nick(&s, "carol");
    assert_eq!(try_join(&mut bob, "r")["type"], "joined");
    assert_eq!(try_join(&mut carol, "r")["type"], "joined");
    for t in ["one", "two secret", "three"] {
        let v = ask(&mut bob, json!({"type":"message","room":"r","text":t}), "p");
        assert_eq!(v["type"], "message", "{v}");
    }
    let v = ask(&mut carol, json!({"type":"delete","room":"r","id":2}), "d");
    assert_eq!(v["code"], "forbidden", "{v}");
    let v = ask(&mut op, json!({"type":"delete","room":"r","id":99}), "d");
    assert_eq!(v["code"], "no_such_message", "{v}");
    let v = ask(&mut op, json!({"type":"delete","room":"r","id":2}), "d");
    assert_eq!(
        (v["action"].as_str(), v["id"].as_u64()),
        (Some("delete"), Some(2))
    );
    let e = loop {
        let v = recv(&mut carol);
        if v["type"] == "moderation" {
            break v;
        }
    };
    assert_eq!(
        (e["action"].as_str(), e["id"].as_u64()),
        (Some("delete"), Some(2))
    );
    let tomb = json!({"type":"message","room":"r","id":2,"from":"bob","text":"","deleted":true});
    let check = |ws: &mut Ws| {
        let j = try_join(ws, "r");
        let mut m = j["history"][1].clone();
        m.as_object_mut().unwrap().remove("ts");
        assert_eq!(m, tomb, "{j}");
        assert_eq!(j["history"][2]["text"], "three");
        let h = ask(ws, json!({"type":"history","room":"r","before":3}), "h");
        let mut m = h["messages"][1].clone();
        m.as_object_mut().unwrap().remove("ts");
        assert_eq!(m, tomb, "{h}");
        let f = ask(
            ws,
            json!({"type":"search","room":"r","query":"secret"}),
            "s",
        );
        assert_eq!(
            f["messages"],
            json!([]),
            "the text is gone from the index: {f}"
        );
    };
    check(&mut carol);
    drop((op, bob, carol));
    s.signal("KILL");
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
    drop(s);
    let s = start(dir.path(), &[]);
    let (mut c, _) = connect_nick(&s, "dan");
    check(&mut c);
}

// ---- the remaining gaps of issue 12: who is registered, room owners and
// roles, mutes and slow mode kept, registration budgets ----

/// The next frame satisfying `pred`, skipping the others.
fn recv_until(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> Value {
    loop {
        let v = recv(ws);
        if pred(&v) {
            return v;
        }
    }
}

fn post(ws: &mut Ws, room: &str, text: &str) -> Value {
    ask(
        ws,
        json!({"type":"message","room":room,"text":text}),
        "post",
    )
}

fn restart(mut s: Server, dir: &Path, sig: &str, extra: &[&str]) -> Server {
    s.signal(sig);
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
    drop(s);
    start(dir, extra)
}

#[test]
fn other_members_see_who_is_registered() {
    let dir = TempDir::new("badge");
    let s = start(dir.path(), &[]);
    let (mut bob, _) = connect_nick(&s, "bob");
    assert!(
        try_join(&mut bob, "r").get("registered").is_none(),
        "none yet"
    );
    let (mut alice, _) = connect_nick(&s, "alice");
    assert_eq!(try_join(&mut alice, "r")["type"], "joined");
    let p = recv_type(&mut bob, "presence");
    assert!(p.get("registered").is_none(), "a guest: {p}");
    // Registering one's own nick keeps it: the room hears `member`.
    let token = register(&mut alice);
    let m = recv_until(&mut bob, |v| v["type"] == "member");
    assert_eq!(m, json!({"type":"member","nick":"alice","registered":true}));
    let v = post(&mut alice, "r", "it is me");
    assert_eq!(v["registered"], true, "{v}");
    let v = recv_until(&mut bob, |v| v["type"] == "message");
    assert_eq!(
        (v["text"].as_str(), v["registered"].as_bool()),
        (Some("it is me"), Some(true))
    );
    let v = post(&mut bob, "r", "a guest");
    assert!(v.get("registered").is_none(), "{v}");

    // A newcomer sees it in `joined`, and a login that takes the nick says
    // it in `nick`.
    let (mut carol, _) = connect_nick(&s, "carol");
    let j = try_join(&mut carol, "r");
    assert_eq!(j["registered"], json!(["alice"]), "{j}");
    drop(alice);
    let p = recv_until(&mut carol, |v| v["type"] == "presence");
    assert_eq!(p["event"], "leave");
    let (mut again, _) = connect_nick(&s, "x");
    assert_eq!(try_join(&mut again, "r")["type"], "joined");
    let p = recv_until(&mut carol, |v| v["type"] == "presence");
    assert!(p.get("registered").is_none(), "not logged in yet: {p}");
    assert_eq!(login_token(&mut again, &token)["type"], "session");
    let n = recv_until(&mut carol, |v| v["type"] == "nick");
    assert_eq!(
        n,
        json!({"type":"nick","old":"x","nick":"alice","registered":true})
    );
    assert_eq!(try_join(&mut carol, "r")["registered"], json!(["alice"]));
    // Logging out gives the nick up: the guest nick is nobody's account.
    let v = ask(&mut again, json!({"type":"logout"}), "o");
    assert_eq!(v["type"], "logged_out", "{v}");
    let n = recv_until(&mut carol, |v| v["type"] == "nick");
    assert_eq!(n["old"], "alice");
    assert!(n.get("registered").is_none(), "{n}");
    assert!(try_join(&mut carol, "r").get("registered").is_none());
}

#[test]
fn a_rooms_owner_appoints_moderators_who_hear_their_role_across_a_restart() {
    let dir = TempDir::new("owner");
    let (ok, msg) = account_cmd(dir.path(), &["account", "add", "carol"], PW);
    assert!(ok, "{msg}");
    let s = start(dir.path(), &[]);
    let (mut bob, _) = connect_nick(&s, "bob");
    let bob_token = register(&mut bob);
    let j = try_join(&mut bob, "club");
    assert_eq!(j["role"], "owner", "its creator owns it: {j}");
    let (mut carol, _) = connect_nick(&s, "x");
    assert_eq!(login_pw(&mut carol, "carol", PW)["type"], "session");
    let j = try_join(&mut carol, "club");
    assert!(j.get("role").is_none(), "a plain member: {j}");
    let (mut dan, _) = connect_nick(&s, "dan");
    assert_eq!(try_join(&mut dan, "club")["type"], "joined");

    // Only the owner (or an operator) appoints.
    let v = ask(
        &mut carol,
        json!({"type":"moderator","room":"club","nick":"carol"}),
        "a",
    );
    assert_eq!(v["code"], "forbidden", "{v}");
    let v = ask(
        &mut dan,
        json!({"type":"kick","room":"club","nick":"carol"}),
        "k",
    );
    assert_eq!(v["code"], "forbidden", "{v}");
    let v = ask(
        &mut bob,
        json!({"type":"moderator","room":"club","nick":"carol"}),
        "a",
    );
    assert_eq!(
        (v["action"].as_str(), v["nick"].as_str()),
        (Some("moderator"), Some("carol"))
    );
    let r = recv_until(&mut carol, |v| v["type"] == "role");
    assert_eq!(r, json!({"type":"role","room":"club","role":"moderator"}));
    // A moderator moderates but does not appoint.
    let v = ask(
        &mut carol,
        json!({"type":"mute","room":"club","nick":"dan","duration":60}),
        "m",
    );
    assert_eq!(v["type"], "moderation", "{v}");
    let v = ask(
        &mut carol,
        json!({"type":"moderator","room":"club","nick":"bob","on":false}),
        "a",
    );
    assert_eq!(v["code"], "forbidden", "{v}");
    // ... and acts only on those below: not on the room's owner.
    for req in [
        json!({"type":"kick","room":"club","nick":"bob"}),
        json!({"type":"mute","room":"club","nick":"bob","duration":60}),
        json!({"type":"ban","room":"club","nick":"bob"}),
    ] {
        let v = ask(&mut carol, req.clone(), "o");
        assert_eq!(v["code"], "forbidden", "{req}: {v}");
    }
    // The owner acts on a moderator.
    let v = ask(
        &mut bob,
        json!({"type":"mute","room":"club","nick":"carol","duration":1}),
        "m",
    );
    assert_eq!(v["type"], "moderation", "{v}");
    // The owner's room is the owner's only.
    let v = ask(
        &mut bob,
        json!({"type":"moderator","room":"elsewhere","nick":"carol"}),
        "a",
    );
    assert_eq!(v["code"], "forbidden", "{v}");
    drop((bob, carol, dan));

    let s = restart(s, dir.path(), "KILL", &[]);
    let (mut bob, _) = connect_nick(&s, "x");
    assert_eq!(try_join(&mut bob, "club").get("role"), None, "a guest now");
    let (mut eve, _) = connect_nick(&s, "eve");
    let j = try_join(&mut eve, "club");
    assert!(j.get("roles").is_none(), "nobody ranks yet: {j}");
    // Logging in tells the role in the rooms already joined, and their
    // members the new rank, under the nick the login gave.
    assert_eq!(login_token(&mut bob, &bob_token)["type"], "session");
    let r = recv_until(&mut bob, |v| v["type"] == "role");
    assert_eq!(r, json!({"type":"role","room":"club","role":"owner"}));
    let r = recv_until(&mut eve, |v| v["type"] == "rank");
    assert_eq!(
        r,
        json!({"type":"rank","room":"club","nick":"bob","role":"owner"})
    );
    let (mut carol, _) = connect_nick(&s, "x");
    assert_eq!(login_pw(&mut carol, "carol", PW)["type"], "session");
    assert_eq!(try_join(&mut carol, "club")["role"], "moderator");
    let v = ask(
        &mut bob,
        json!({"type":"moderator","room":"club","nick":"carol","on":false}),
        "a",
    );
    assert_eq!(v["action"], "unmoderator", "{v}");
    let r = recv_until(&mut carol, |v| v["type"] == "role");
    assert_eq!(r["role"], "member");
    let r = recv_until(&mut eve, |v| v["type"] == "rank");
    assert_eq!(
        r,
        json!({"type":"rank","room":"club","nick":"carol","role":"member"})
    );
    let (mut dan, _) = connect_nick(&s, "dan");
    assert_eq!(try_join(&mut dan, "club")["type"], "joined");
    let v = ask(
        &mut carol,
        json!({"type":"kick","room":"club","nick":"dan"}),
        "k",
    );
    assert_eq!(v["code"], "forbidden", "no longer a moderator: {v}");
    // A logout drops the role.
    let v = ask(&mut bob, json!({"type":"logout"}), "o");
    assert_eq!(v["type"], "logged_out");
    let r = recv_until(&mut bob, |v| v["type"] == "role");
    assert_eq!(r["role"], "member");
    // The room hears the rename to a guest nick, then that nick's rank.
    let n = recv_until(&mut eve, |v| v["type"] == "nick" && v["old"] == "bob");
    let r = recv_until(&mut eve, |v| v["type"] == "rank");
    assert_eq!(
        r,
        json!({"type":"rank","room":"club","nick":n["nick"],"role":"member"})
    );

    // A room a guest created has no owner: only operators appoint there.
    let (mut g, _) = connect_nick(&s, "guesty");
    assert_eq!(try_join(&mut g, "open")["type"], "joined");
    assert_eq!(login_pw(&mut carol, "carol", PW)["type"], "session");
    let j = try_join(&mut carol, "open");
    assert!(j.get("role").is_none(), "{j}");
    let v = ask(
        &mut carol,
        json!({"type":"moderator","room":"open","nick":"carol"}),
        "a",
    );
    assert_eq!(v["code"], "forbidden", "{v}");
}

#[test]
fn mutes_and_slow_mode_hold_across_a_restart_and_a_sigkill() {
    let dir = TempDir::new("mute-kept");
    let (s, mut op) = with_operator(dir.path(), &[]);
    assert_eq!(try_join(&mut op, "r")["type"], "joined");
    // Mutes acknowledged one after another, the server killed right after
    // the last: every acknowledged one is there after the restart.
    let nicks: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    for n in &nicks {
        let v = ask(
            &mut op,
            json!({"type":"mute","room":"r","nick":n,"duration":3600}),
            "m",
        );
        assert_eq!(v["type"], "moderation", "{v}");
    }
    let v = ask(
        &mut op,
        json!({"type":"mute","room":"r","nick":"brief","duration":1}),
        "m",
    );
    assert_eq!(v["type"], "moderation", "{v}");
    let v = ask(
        &mut op,
        json!({"type":"slow","room":"r","interval":600}),
        "s",
    );
    assert_eq!(v["interval"], 600, "{v}");
    drop(op);
    let s = restart(s, dir.path(), "KILL", &[]);
    for n in ["m0", "m19"] {
        let (mut c, nick) = connect_nick(&s, n);
        assert_eq!(nick, n);
        assert_eq!(try_join(&mut c, "r")["type"], "joined");
        let v = post(&mut c, "r", "after the kill");
        assert_eq!(v["code"], "muted", "{n}: {v}");
    }
    let (mut dan, _) = connect_nick(&s, "dan");
    assert_eq!(try_join(&mut dan, "r")["type"], "joined");
    assert_eq!(post(&mut dan, "r", "one")["type"], "message");
    let v = post(&mut dan, "r", "two");
    assert_eq!(v["code"], "slow_mode", "slow mode survived: {v}");
    drop(dan);

    // A clean restart too, and the mute that ended is gone from the store.
    std::thread::sleep(Duration::from_millis(1100));
    let s = restart(s, dir.path(), "TERM", &[]);
    let (mut c, _) = connect_nick(&s, "m7");
    assert_eq!(try_join(&mut c, "r")["type"], "joined");
    assert_eq!(post(&mut c, "r", "still?")["code"], "muted");
    let (mut b, _) = connect_nick(&s, "brief");
    assert_eq!(try_join(&mut b, "r")["type"], "joined");
    assert_eq!(
        post(&mut b, "r", "free")["type"],
        "message",
        "the mute ended"
    );
    let (mut op, _) = connect_nick(&s, "x");
    assert_eq!(login_pw(&mut op, "boss", PW)["type"], "session");
    let v = ask(&mut op, json!({"type":"slow","room":"r","interval":0}), "s");
    assert_eq!(v["interval"], 0);
    drop((c, b, op));
    drop(s);
    let db = rusqlite::Connection::open(dir.path().join("wschat.db")).unwrap();
    let (muted, brief, slow): (i64, i64, i64) = db
        .query_row(
            "SELECT (SELECT count(*) FROM mutes), (SELECT count(*) FROM mutes WHERE nick = 'brief'),
                    (SELECT count(*) FROM slow_mode)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((muted, brief, slow), (20, 0, 0));
}

#[test]
fn registrations_are_limited_per_address_and_by_max_accounts() {
    let dir = TempDir::new("reg-budget");
    let s = start(
        dir.path(),
        &["--limit-loopback", "--registrations-per-hour", "2"],
    );
    for n in ["a1", "a2"] {
        let (mut c, _) = connect_nick(&s, n);
        register(&mut c);
    }
    let (mut c, _) = connect_nick(&s, "a3");
    let v = ask(&mut c, json!({"type":"register","password":PW}), "r");
    assert_eq!(v["code"], "registration_limited", "{v}");
    let wait = v["retry_after"].as_u64().unwrap();
    assert!((3500..=3600).contains(&wait), "{v}");
    drop((c, s));

    let dir = TempDir::new("max-accounts");
    let (s, mut op) = with_operator(dir.path(), &["--max-accounts", "2"]);
    let (mut c, _) = connect_nick(&s, "a1");
    register(&mut c);
    let (mut c, _) = connect_nick(&s, "a2");
    let v = ask(&mut c, json!({"type":"register","password":PW}), "r");
    assert_eq!(v["code"], "too_many_accounts", "{v}");
    // Operators are not held to it.
    let v = ask(
        &mut op,
        json!({"type":"register","nick":"a2","password":PW}),
        "r",
    );
    assert_eq!(v["type"], "registered", "{v}");
}

#[test]
fn each_moderation_action_by_an_operator_and_a_moderator_and_refused_to_a_plain_user() {
    let dir = TempDir::new("each-action");
    let (s, mut op) = with_operator(dir.path(), &[]);
    let (mut m, _) = connect_nick(&s, "mod");
    register(&mut m);
    let v = ask(
        &mut op,
        json!({"type":"moderator","room":"r","nick":"mod"}),
        "a",
    );
    assert_eq!(v["type"], "moderation", "{v}");
    let (mut plain, _) = connect_nick(&s, "plain");
    for ws in [&mut op, &mut m, &mut plain] {
        assert_eq!(try_join(ws, "r")["type"], "joined");
    }
    assert_eq!(try_join(&mut m, "r")["role"], "moderator");
    // Everyone is told who moderates: the operator and the moderator.
    let j = try_join(&mut plain, "r");
    assert_eq!(j["moderators"], json!(["boss", "mod"]), "{j}");
    assert!(j.get("role").is_none(), "{j}");
    // The actions, each with its target (a fresh member per actor).
    let actions = |t: &str, id: u64| {
        vec![
            json!({"type":"topic","room":"r","topic":format!("set for {t}")}),
            json!({"type":"slow","room":"r","interval":0}),
            json!({"type":"delete","room":"r","id":id}),
            json!({"type":"mute","room":"r","nick":t,"duration":60}),
            json!({"type":"kick","room":"r","nick":t}),
            json!({"type":"ban","room":"r","nick":t,"duration":60}),
        ]
    };
    for (who, allowed) in [("op", true), ("mod", true), ("plain", false)] {
        let target = format!("t-{who}");
        let (mut t, _) = connect_nick(&s, &target);
        assert_eq!(try_join(&mut t, "r")["type"], "joined");
        let id = post(&mut t, "r", "to be deleted")["id"].as_u64().unwrap();
        let actor = match who {
            "op" => &mut op,
            "mod" => &mut m,
            _ => &mut plain,
        };
        for a in actions(&target, id) {
            let ty = a["type"].as_str().unwrap().to_string();
            let v = ask(actor, a, "act");
            if allowed {
                assert_eq!(v["type"], "moderation", "{who} {ty}: {v}");
            } else {
                assert_eq!(v["code"], "forbidden", "{who} {ty}: {v}");
            }
        }
        // Nothing happened for the plain user's attempts: still in, not
        // muted, the message kept; for the others, banned.
        let j = try_join(&mut t, "r");
        if allowed {
            assert_eq!(j["code"], "banned", "{who}: {j}");
        } else {
            assert_eq!(j["type"], "joined", "{j}");
            assert_eq!(post(&mut t, "r", "not muted")["type"], "message");
            let h = j["history"].as_array().unwrap();
            assert!(
                h.iter()
                    .any(|m| m["id"] == id && m["text"] == "to be deleted"),
                "{j}"
            );
            assert_eq!(j["topic"], "set for t-mod", "{j}");
        }
    }
    // A server ban and an appointment are the operators' (and owner's).
    for a in [
        json!({"type":"ban","nick":"plain"}),
        json!({"type":"moderator","room":"r","nick":"mod","on":false}),
    ] {
        let v = ask(&mut m, a, "x");
        assert_eq!(v["code"], "forbidden", "{v}");
    }
    let v = ask(
        &mut op,
        json!({"type":"ban","nick":"plain","duration":60}),
        "b",
    );
    assert_eq!(v["type"], "moderation", "{v}");
}

/// The registered mark of a message (docs/protocol.md, "Registered
/// members") is read from its stored author, so `joined`, `history` and
/// `search` carry it as the live copies did, across a SIGKILL too: only a
/// message sent under its author's own account nick has it.
#[test]
fn history_keeps_who_posted_registered_across_a_restart() {
    let dir = TempDir::new("reghist");
    let s = start(dir.path(), &[]);
    let (mut alice, _) = connect_nick(&s, "alice");
    register(&mut alice);
    assert_eq!(joined(&mut alice, "r")["type"], "joined");
    assert_eq!(post(&mut alice, "r", "signed words")["registered"], true);
    // Logged in under another nick: that nick is nobody's account.
    let v = ask(&mut alice, json!({"type":"nick","nick":"ally"}), "n");
    assert_eq!(v["nick"], "ally", "{v}");
    let v = post(&mut alice, "r", "unsigned words by ally");
    assert!(v.get("registered").is_none(), "{v}");
    let (mut bob, _) = connect_nick(&s, "bob");
    assert_eq!(joined(&mut bob, "r")["type"], "joined");
    assert!(
        post(&mut bob, "r", "unsigned words by a guest")
            .get("registered")
            .is_none()
    );
    drop((alice, bob));
    let s = restart(s, dir.path(), "KILL", &[]);

    let marks = |msgs: &Value| -> Vec<(String, bool)> {
        msgs.as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                let r = m.get("registered");
                assert!(r.is_none() || r == Some(&json!(true)), "{m}");
                (m["text"].as_str().unwrap().to_string(), r.is_some())
            })
            .collect()
    };
    let want = vec![
        ("signed words".to_string(), true),
        ("unsigned words by ally".to_string(), false),
        ("unsigned words by a guest".to_string(), false),
    ];
    let (mut carol, _) = connect_nick(&s, "carol");
    let j = joined(&mut carol, "r");
    assert_eq!(marks(&j["history"]), want, "{j}");
    let h = ask(
        &mut carol,
        json!({"type":"history","room":"r","before":1_000_000}),
        "h",
    );
    assert_eq!(marks(&h["messages"]), want, "{h}");
    let f = ask(
        &mut carol,
        json!({"type":"search","room":"r","query":"words"}),
        "s",
    );
    let mut hits = marks(&f["messages"]);
    hits.reverse(); // newest first
    assert_eq!(hits, want, "{f}");
}

/// `joined` names each moderating member's rank (`roles`), so a client can
/// offer kick, mute and ban only where its user outranks the member.
#[test]
fn joined_names_the_rank_of_each_moderating_member() {
    let dir = TempDir::new("ranks");
    let (ok, msg) = account_cmd(dir.path(), &["account", "add", "carol"], PW);
    assert!(ok, "{msg}");
    let (s, mut boss) = with_operator(dir.path(), &[]);
    let (mut bob, _) = connect_nick(&s, "bob");
    register(&mut bob);
    assert_eq!(joined(&mut bob, "club")["role"], "owner");
    let (mut carol, _) = connect_nick(&s, "x");
    assert_eq!(login_pw(&mut carol, "carol", PW)["type"], "session");
    assert_eq!(joined(&mut carol, "club")["type"], "joined");
    let v = ask(
        &mut bob,
        json!({"type":"moderator","room":"club","nick":"carol"}),
        "m",
    );
    assert_eq!(v["action"], "moderator", "{v}");
    assert_eq!(joined(&mut boss, "club")["role"], "operator");
    let (mut dan, _) = connect_nick(&s, "dan");
    let j = joined(&mut dan, "club");
    assert_eq!(j["moderators"], json!(["bob", "boss", "carol"]), "{j}");
    assert_eq!(
        j["roles"],
        json!({"bob":"owner","boss":"operator","carol":"moderator"}),
        "{j}"
    );
    // A plain room has neither field.
    let j = joined(&mut dan, "plain");
    assert!(
        j.get("roles").is_none() && j.get("moderators").is_none(),
        "{j}"
    );
}

/// The owners table outlives the rooms (a room forgotten and made anew
/// keeps its owner), so what one account may own is capped, with
/// `--max-rooms-per-addr`: else one account could grow it without bound,
/// a room name at a time.
#[test]
fn the_rooms_an_account_owns_are_capped_across_forgetting_and_a_restart() {
    let dir = TempDir::new("owned-cap");
    let cap = ["--max-rooms-per-addr", "2"];
    let (s, mut op) = with_operator(dir.path(), &cap);
    let (mut bob, _) = connect_nick(&s, "bob");
    let token = register(&mut bob);
    for r in ["b1", "b2"] {
        assert_eq!(try_join(&mut bob, r)["role"], "owner");
        // Left empty, the room is forgotten; its owner is kept.
        let v = ask(&mut bob, json!({"type":"leave","room":r}), "l");
        assert_eq!(v["type"], "left", "{v}");
    }
    let v = try_join(&mut bob, "b3");
    assert_eq!(v["code"], "too_many_rooms", "{v}");
    assert!(v["message"].as_str().unwrap().contains("account"), "{v}");
    // A room it owns it may make anew; others and operators create rooms.
    assert_eq!(try_join(&mut bob, "b1")["role"], "owner");
    let (mut carol, _) = connect_nick(&s, "carol");
    register(&mut carol);
    assert_eq!(try_join(&mut carol, "c1")["role"], "owner");
    for r in ["o1", "o2", "o3"] {
        assert_eq!(try_join(&mut op, r)["role"], "operator");
    }
    // A guest owns nothing, so is not held to it (loopback is exempt
    // from the per-address cap).
    let (mut g, _) = connect_nick(&s, "guest");
    for r in ["g1", "g2", "g3"] {
        assert_eq!(try_join(&mut g, r)["type"], "joined");
    }
    drop((bob, carol, op, g));

    // The count is the store's: a restart (SIGKILL) keeps it.
    let s = restart(s, dir.path(), "KILL", &cap);
    let (mut bob, _) = connect_nick(&s, "x");
    assert_eq!(login_token(&mut bob, &token)["type"], "session");
    assert_eq!(try_join(&mut bob, "b4")["code"], "too_many_rooms");
    assert_eq!(try_join(&mut bob, "b2")["role"], "owner");
}
