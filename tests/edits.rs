//! End-to-end tests of replies, reactions, and edits and deletes by a
//! message's author (docs/protocol.md, "Replies, reactions and edits"):
//! real servers on real sockets, restarted and killed with SIGKILL on the
//! same `--data-dir`.
mod common;
use common::*;

use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tungstenite::Message;

const THUMBS: &str = "\u{1F44D}";
const PARTY: &str = "\u{1F389}";

/// The next frame that is not presence or typing.
fn next(ws: &mut Ws) -> Value {
    loop {
        let v = recv(ws);
        if !["presence", "typing"].contains(&v["type"].as_str().unwrap_or("")) {
            return v;
        }
    }
}

fn post(ws: &mut Ws, room: &str, text: &str) -> u64 {
    let v = ask(ws, json!({"type":"message","room":room,"text":text}), "p");
    assert_eq!(v["type"], "message", "{v}");
    v["id"].as_u64().unwrap()
}

/// Message `id` as `joined` (or, past its 50, `history` around it) shows it.
fn kept(ws: &mut Ws, room: &str, id: u64) -> Value {
    let h = ask(
        ws,
        json!({"type":"history","room":room,"around":id,"limit":3}),
        "k",
    );
    h["messages"]
        .as_array()
        .and_then(|l| l.iter().find(|m| m["id"] == id).cloned())
        .unwrap_or_else(|| panic!("message {id} kept: {h}"))
}

/// alice and bob, both in room `r`.
fn alice_and_bob(s: &Server) -> (Ws, Ws) {
    let mut alice = connect_as(s, "alice");
    let mut bob = connect_as(s, "bob");
    joined(&mut alice, "r");
    joined(&mut bob, "r");
    (alice, bob)
}

fn restart(mut s: Server, dir: &Path, sig: &str) -> Server {
    s.signal(sig);
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
    drop(s);
    start(dir, &[])
}

#[test]
fn only_the_author_edits_or_deletes_and_every_member_sees_it() {
    let dir = TempDir::new("edits-author");
    let s = start(dir.path(), &[]);
    let (mut alice, mut bob) = alice_and_bob(&s);
    let id = post(&mut alice, "r", "helo");
    assert_eq!(next(&mut bob)["text"], "helo");

    let edit = |t: &str| json!({"type":"edit","room":"r","id":id,"text":t});
    let v = ask(&mut bob, edit("mine now"), "e");
    assert_eq!(v["code"], "forbidden", "{v}");
    let v = ask(&mut bob, json!({"type":"delete","room":"r","id":id}), "d");
    assert_eq!(v["code"], "forbidden", "{v}");
    let v = ask(
        &mut alice,
        json!({"type":"edit","room":"r","id":99,"text":"x"}),
        "e",
    );
    assert_eq!(v["code"], "no_such_message", "{v}");
    let v = ask(
        &mut alice,
        json!({"type":"edit","room":"r","id":id,"text":" "}),
        "e",
    );
    assert_eq!(v["code"], "invalid", "the text rules hold for edits: {v}");
    let v = ask(
        &mut alice,
        json!({"type":"edit","room":"nope","id":id,"text":"x"}),
        "e",
    );
    assert_eq!(v["code"], "not_in_room", "{v}");

    let v = ask(&mut alice, edit("hello"), "e1");
    assert_eq!(
        (v["type"].as_str(), v["id"].as_u64(), v["text"].as_str()),
        (Some("edited"), Some(id), Some("hello")),
        "{v}"
    );
    let edited = v["edited"].as_u64().expect("edited: ms");
    let e = next(&mut bob);
    assert_eq!(
        (e["type"].as_str(), e["text"].as_str()),
        (Some("edited"), Some("hello"))
    );
    assert!(e.get("ref").is_none(), "{e}");
    let m = kept(&mut bob, "r", id);
    assert_eq!(
        (m["text"].as_str(), m["edited"].as_u64()),
        (Some("hello"), Some(edited))
    );

    // A guest's messages are its connection's: the same nick later is
    // someone else.
    drop(alice);
    std::thread::sleep(Duration::from_millis(200));
    let mut again = connect_as(&s, "alice");
    joined(&mut again, "r");
    let v = ask(&mut again, edit("impostor"), "e");
    assert_eq!(v["code"], "forbidden", "{v}");

    // A logged-in author is its account, on any connection, after a restart.
    let v = ask(
        &mut bob,
        json!({"type":"register","password":"correct horse battery"}),
        "reg",
    );
    assert_eq!(v["type"], "session", "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let bid = post(&mut bob, "r", "from an account");
    drop((bob, again));
    let s = restart(s, dir.path(), "TERM");
    let mut bob = connect_as(&s, "guest-b");
    let v = ask(&mut bob, json!({"type":"login","token":token}), "l");
    assert_eq!(v["type"], "session", "{v}");
    joined(&mut bob, "r");
    let v = ask(
        &mut bob,
        json!({"type":"edit","room":"r","id":bid,"text":"edited later"}),
        "e",
    );
    assert_eq!(v["type"], "edited", "{v}");
    let v = ask(&mut bob, json!({"type":"delete","room":"r","id":id}), "d");
    assert_eq!(v["code"], "forbidden", "not bob's: {v}");
    let mut carol = connect_as(&s, "carol");
    joined(&mut carol, "r");
    let v = ask(&mut bob, json!({"type":"delete","room":"r","id":bid}), "d");
    assert_eq!(
        (v["type"].as_str(), v["action"].as_str(), v["id"].as_u64()),
        (Some("moderation"), Some("delete"), Some(bid)),
        "{v}"
    );
    let e = next(&mut carol);
    assert_eq!(
        (e["action"].as_str(), e["id"].as_u64()),
        (Some("delete"), Some(bid)),
        "{e}"
    );
    let v = ask(
        &mut bob,
        json!({"type":"edit","room":"r","id":bid,"text":"back"}),
        "e",
    );
    assert_eq!(v["code"], "no_such_message", "a tombstone stays one: {v}");
    let tomb = kept(&mut carol, "r", bid);
    assert_eq!(
        (tomb["text"].as_str(), tomb["deleted"].as_bool()),
        (Some(""), Some(true))
    );
    assert!(tomb.get("edited").is_none(), "{tomb}");
    drop((bob, carol));
    let s = restart(s, dir.path(), "KILL");
    let mut dan = connect_as(&s, "dan");
    joined(&mut dan, "r");
    assert_eq!(kept(&mut dan, "r", id)["text"], "hello");
    assert_eq!(kept(&mut dan, "r", bid)["deleted"], true);
}

#[test]
fn reactions_toggle_count_who_and_persist() {
    let dir = TempDir::new("edits-react");
    let s = start(dir.path(), &[]);
    let (mut alice, mut bob) = alice_and_bob(&s);
    let id = post(&mut alice, "r", "ship it?");
    next(&mut bob);
    let react = |e: &str| json!({"type":"react","room":"r","id":id,"emoji":e});

    let v = ask(&mut bob, react(THUMBS), "a");
    assert_eq!(
        (
            v["type"].as_str(),
            v["on"].as_bool(),
            v["count"].as_u64(),
            v["nick"].as_str()
        ),
        (Some("reaction"), Some(true), Some(1), Some("bob")),
        "{v}"
    );
    let e = next(&mut alice);
    assert_eq!(
        (e["type"].as_str(), e["count"].as_u64()),
        (Some("reaction"), Some(1)),
        "{e}"
    );
    assert_eq!(ask(&mut alice, react(THUMBS), "b")["count"], 2);
    assert_eq!(next(&mut bob)["count"], 2);
    assert_eq!(ask(&mut alice, react(PARTY), "c")["count"], 1);
    next(&mut bob);
    // Toggled off.
    let v = ask(&mut bob, react(THUMBS), "d");
    assert_eq!(
        (v["on"].as_bool(), v["count"].as_u64()),
        (Some(false), Some(1)),
        "{v}"
    );
    assert_eq!(next(&mut alice)["on"], false);
    // Asking for what already holds changes nothing and tells nobody else.
    let mut on = react(THUMBS);
    on["on"] = json!(true);
    let v = ask(&mut alice, on, "e");
    assert_eq!(
        (v["on"].as_bool(), v["count"].as_u64()),
        (Some(true), Some(1)),
        "{v}"
    );
    post(&mut alice, "r", "marker");
    assert_eq!(
        next(&mut bob)["text"],
        "marker",
        "no reaction event for bob"
    );

    let v = ask(&mut bob, react("\u{1F4A9}"), "f");
    assert_eq!(v["code"], "invalid", "{v}");
    assert!(v["message"].as_str().unwrap().contains("\"emoji\""), "{v}");
    let v = ask(
        &mut bob,
        json!({"type":"react","room":"r","id":99,"emoji":THUMBS}),
        "g",
    );
    assert_eq!(v["code"], "no_such_message", "{v}");

    // A deleted message loses its reactions; reacting to it is refused.
    let gone = post(&mut alice, "r", "oops");
    next(&mut bob);
    let v = ask(
        &mut bob,
        json!({"type":"react","room":"r","id":gone,"emoji":THUMBS}),
        "h",
    );
    assert_eq!(v["count"], 1, "{v}");
    next(&mut alice);
    let v = ask(
        &mut alice,
        json!({"type":"delete","room":"r","id":gone}),
        "i",
    );
    assert_eq!(v["action"], "delete", "{v}");
    let v = ask(
        &mut bob,
        json!({"type":"react","room":"r","id":gone,"emoji":THUMBS}),
        "j",
    );
    assert_eq!(v["code"], "no_such_message", "{v}");
    assert!(kept(&mut bob, "r", gone).get("reactions").is_none());

    let want = json!([
        {"emoji":THUMBS,"count":1,"nicks":["alice"]},
        {"emoji":PARTY,"count":1,"nicks":["alice"]}
    ]);
    let j = joined(&mut bob, "r");
    assert_eq!(j["history"][0]["reactions"], want, "{j}");
    assert!(j["history"][1].get("reactions").is_none(), "{j}");
    drop((alice, bob));
    let s = restart(s, dir.path(), "TERM");
    let mut carol = connect_as(&s, "carol");
    assert_eq!(joined(&mut carol, "r")["history"][0]["reactions"], want);
    assert_eq!(kept(&mut carol, "r", id)["reactions"], want);
    assert!(kept(&mut carol, "r", gone).get("reactions").is_none());
}

#[test]
fn a_reply_quotes_its_parent_which_follows_edits_and_deletes() {
    let dir = TempDir::new("edits-reply");
    let s = start(dir.path(), &[]);
    let (mut alice, mut bob) = alice_and_bob(&s);
    let parent = post(&mut alice, "r", "lunch at noon?\nor at one");
    next(&mut bob);

    let reply = |to: u64| json!({"type":"message","room":"r","text":"noon works","reply_to":to});
    let v = ask(&mut bob, reply(99), "r0");
    assert_eq!(v["code"], "no_such_message", "{v}");
    let v = ask(&mut bob, reply(parent), "r1");
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["reply_to"], parent);
    assert_eq!(
        v["reply"],
        json!({"from":"alice","text":"lunch at noon? or at one"})
    );
    let rid = v["id"].as_u64().unwrap();
    let e = next(&mut alice);
    assert_eq!(
        (e["reply_to"].as_u64(), &e["reply"]["from"]),
        (Some(parent), &json!("alice"))
    );

    let v = ask(
        &mut alice,
        json!({"type":"edit","room":"r","id":parent,"text":"lunch at half past twelve?"}),
        "e",
    );
    assert_eq!(v["type"], "edited", "{v}");
    assert_eq!(
        kept(&mut bob, "r", rid)["reply"]["text"],
        "lunch at half past twelve?"
    );

    // A reply to a deleted message keeps its link, not the deleted words.
    let doomed = post(&mut alice, "r", "something regrettable");
    next(&mut bob);
    let v = ask(&mut bob, reply(doomed), "r2");
    let rid2 = v["id"].as_u64().unwrap();
    next(&mut alice);
    let v = ask(
        &mut alice,
        json!({"type":"delete","room":"r","id":doomed}),
        "d",
    );
    assert_eq!(v["action"], "delete", "{v}");
    let quote = json!({"from":"alice","text":"","deleted":true});
    assert_eq!(kept(&mut bob, "r", rid2)["reply"], quote);
    assert_eq!(kept(&mut bob, "r", rid2)["reply_to"], doomed);

    drop((alice, bob));
    let s = restart(s, dir.path(), "KILL");
    let mut carol = connect_as(&s, "carol");
    joined(&mut carol, "r");
    assert_eq!(
        kept(&mut carol, "r", rid)["reply"]["text"],
        "lunch at half past twelve?"
    );
    assert_eq!(kept(&mut carol, "r", rid2)["reply"], quote);
}

/// Edits and reactions as fast as the server answers them, on messages
/// both in the memory window and past it (read from the store), until
/// SIGKILL: after the restart every acknowledged edit and reaction is there.
#[test]
fn sigkill_during_edits_and_reactions_keeps_every_acknowledged_one() {
    let dir = TempDir::new("edits-kill");
    let s = start(dir.path(), &[]);
    let mut author = connect_as(&s, "author");
    let mut fan = connect_as(&s, "fan");
    joined(&mut author, "load");
    joined(&mut fan, "load");
    const N: u64 = 150;
    for i in 1..=N {
        post(&mut author, "load", &format!("message {i}"));
    }
    // Answers carry the ref; events from the other thread are skipped.
    fn run(
        mut ws: Ws,
        make: impl Fn(u64) -> Value + Send + 'static,
    ) -> std::thread::JoinHandle<Vec<(u64, Value)>> {
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for n in 1u64.. {
                let r = format!("x{n}");
                let mut req = make(n);
                req["ref"] = json!(r);
                if ws.send(Message::text(req.to_string())).is_err() {
                    break;
                }
                let answer = loop {
                    match ws.read() {
                        Ok(Message::Text(t)) => {
                            let v: Value = serde_json::from_str(t.as_str()).unwrap();
                            if v["ref"] == r.as_str() {
                                break Some(v);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break None,
                    }
                };
                match answer {
                    Some(v) => {
                        assert_ne!(v["type"], "error", "{v}");
                        acked.push((n, v));
                    }
                    None => break,
                }
            }
            acked
        })
    }
    let target = |n: u64| 1 + (n * 7) % N;
    let editor = run(
        author,
        move |n| json!({"type":"edit","room":"load","id":target(n),"text":format!("edit {n}")}),
    );
    let reactor = run(
        fan,
        move |n| json!({"type":"react","room":"load","id":target(n),"emoji":THUMBS,"on":true}),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let s = restart(s, dir.path(), "KILL");
    let edits = editor.join().expect("editor");
    let reactions = reactor.join().expect("reactor");
    assert!(
        edits.len() > 20 && reactions.len() > 20,
        "{} edits, {} reactions",
        edits.len(),
        reactions.len()
    );

    let mut c = connect_as(&s, "checker");
    joined(&mut c, "load");
    let mut all = Vec::new();
    for before in [101, 151] {
        let h = ask(
            &mut c,
            json!({"type":"history","room":"load","before":before,"limit":100}),
            "h",
        );
        all.extend(h["messages"].as_array().unwrap().iter().cloned());
    }
    let by_id: std::collections::HashMap<u64, &Value> =
        all.iter().map(|m| (m["id"].as_u64().unwrap(), m)).collect();
    assert_eq!(by_id.len() as u64, N);
    // The newest acknowledged edit of each message, or one sent after it.
    let mut newest: std::collections::HashMap<u64, u64> = Default::default();
    for (n, _) in &edits {
        newest.insert(target(*n), *n);
    }
    for (id, n) in &newest {
        let m = by_id[id];
        let got: u64 = m["text"]
            .as_str()
            .unwrap()
            .strip_prefix("edit ")
            .expect("edited")
            .parse()
            .unwrap();
        assert!(
            got >= *n,
            "message {id}: {m} older than acknowledged edit {n}"
        );
        assert!(m["edited"].as_u64().is_some(), "{m}");
    }
    for (n, _) in &reactions {
        let m = by_id[&target(*n)];
        assert_eq!(m["reactions"][0]["nicks"], json!(["fan"]), "{m}");
    }
}

/// A store that cannot write refuses an edit and a reaction with
/// `storage_failed`, tells nobody else, and the next ones go through.
#[test]
fn a_failing_store_refuses_edits_and_reactions_and_recovers() {
    let dir = TempDir::new("edits-fault");
    let fault = dir.path().join("fail-now");
    let data = dir.path().join("data");
    let s = Server::start(&[
        "--rate-burst",
        "0",
        "--data-dir",
        data.to_str().unwrap(),
        "--fault-file",
        fault.to_str().unwrap(),
    ]);
    let (mut alice, mut bob) = alice_and_bob(&s);
    let id = post(&mut alice, "r", "first");
    next(&mut bob);
    std::fs::write(&fault, b"").unwrap();
    let v = ask(
        &mut alice,
        json!({"type":"edit","room":"r","id":id,"text":"lost"}),
        "e",
    );
    assert_eq!(v["code"], "storage_failed", "{v}");
    let v = ask(
        &mut bob,
        json!({"type":"react","room":"r","id":id,"emoji":THUMBS}),
        "r",
    );
    assert_eq!(v["code"], "storage_failed", "{v}");
    std::fs::remove_file(&fault).unwrap();
    let v = ask(
        &mut bob,
        json!({"type":"react","room":"r","id":id,"emoji":THUMBS}),
        "r2",
    );
    assert_eq!(
        (v["on"].as_bool(), v["count"].as_u64()),
        (Some(true), Some(1)),
        "{v}"
    );
    // Alice's next frame is that reaction: neither refused change reached her.
    let e = next(&mut alice);
    assert_eq!(
        (e["type"].as_str(), e["count"].as_u64()),
        (Some("reaction"), Some(1)),
        "{e}"
    );
    let m = kept(&mut alice, "r", id);
    assert_eq!(m["text"], "first", "{m}");
    assert!(m.get("edited").is_none(), "{m}");
}

/// Without a store (`--no-persist`) the same rules hold in memory.
#[test]
fn replies_reactions_and_edits_work_without_a_store() {
    let s = Server::start(&["--rate-burst", "0", "--no-persist"]);
    let (mut alice, mut bob) = alice_and_bob(&s);
    let id = post(&mut alice, "r", "in memory");
    next(&mut bob);
    let v = ask(
        &mut bob,
        json!({"type":"message","room":"r","text":"yes","reply_to":id}),
        "p",
    );
    assert_eq!(v["reply"]["text"], "in memory", "{v}");
    next(&mut alice);
    let v = ask(
        &mut bob,
        json!({"type":"edit","room":"r","id":id,"text":"x"}),
        "e",
    );
    assert_eq!(v["code"], "forbidden", "{v}");
    assert_eq!(
        ask(
            &mut alice,
            json!({"type":"edit","room":"r","id":id,"text":"still in memory"}),
            "e"
        )["type"],
        "edited"
    );
    assert_eq!(
        ask(
            &mut bob,
            json!({"type":"react","room":"r","id":id,"emoji":PARTY}),
            "r"
        )["count"],
        1
    );
    let j = joined(&mut bob, "r");
    assert_eq!(j["history"][0]["text"], "still in memory", "{j}");
    assert_eq!(
        j["history"][0]["reactions"][0]["nicks"],
        json!(["bob"]),
        "{j}"
    );
    assert_eq!(j["history"][1]["reply"]["text"], "still in memory", "{j}");
    assert_eq!(
        ask(&mut alice, json!({"type":"delete","room":"r","id":id}), "d")["action"],
        "delete"
    );
    let j = joined(&mut bob, "r");
    assert_eq!(j["history"][0]["deleted"], true, "{j}");
    assert_eq!(j["history"][1]["reply"]["deleted"], true, "{j}");
}
