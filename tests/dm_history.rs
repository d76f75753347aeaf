//! End-to-end tests of DM history and read positions (docs/protocol.md,
//! "DM history and read positions"): real servers on real sockets,
//! restarted and killed on the same `--data-dir`.
mod common;
use common::*;

use serde_json::{Value, json};
use std::net::TcpStream;
use std::time::Duration;
use tungstenite::Message;

/// A new connection logged in with `token`; returns it and its `reads`.
fn login(server: &Server, token: &str) -> (Ws, Value) {
    let mut ws = connect_as(server, "x");
    let v = ask(&mut ws, json!({"type":"login","token":token}), "tok");
    assert_eq!(v["type"], "session", "{v}");
    let reads = recv_type(&mut ws, "reads");
    (ws, reads)
}

fn dm_history(ws: &mut Ws, with: &str, page: Value) -> Value {
    let mut req = json!({"type":"dm_history","with":with,"limit":100});
    for (k, v) in page.as_object().unwrap() {
        req[k] = v.clone();
    }
    let v = ask(ws, req, "dh");
    assert_eq!(v["type"], "dm_history", "{v}");
    v
}

fn texts(page: &Value) -> Vec<(u64, String, String)> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["from"].as_str().unwrap().to_string(),
                m["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn dm_history_survives_a_restart_and_only_its_two_parties_read_it() {
    let dir = TempDir::new("dm-history");
    let s = start(dir.path(), &[]);
    let (mut alice, alice_tok) = registered(&s, "alice");
    let (mut bob, bob_tok) = registered(&s, "Bob");
    let (carol, carol_tok) = registered(&s, "carol");
    // Bob's phone: a second connection of his account.
    let (mut phone, _) = login(&s, &bob_tok);

    let v = ask(
        &mut alice,
        json!({"type":"dm","to":"bob","text":"hi bob"}),
        "d1",
    );
    assert_eq!(
        (&v["type"], &v["id"], &v["from"], &v["to"]),
        (&json!("dm"), &json!(1), &json!("alice"), &json!("Bob")),
        "{v}"
    );
    for ws in [&mut bob, &mut phone] {
        let d = recv_type(ws, "dm");
        assert_eq!((&d["id"], &d["text"]), (&json!(1), &json!("hi bob")), "{d}");
        assert!(d["ref"].is_null());
    }
    let v = ask(
        &mut phone,
        json!({"type":"dm","to":"alice","text":"hello"}),
        "d2",
    );
    assert_eq!(v["id"], 2, "{v}");
    assert_eq!(recv_type(&mut bob, "dm")["text"], "hello");
    assert_eq!(recv_type(&mut alice, "dm")["from"], "Bob");
    // To an account with no connection: kept, and there at its login.
    drop(carol);
    std::thread::sleep(Duration::from_millis(100));
    let v = ask(
        &mut alice,
        json!({"type":"dm","to":"carol","text":"for later"}),
        "d3",
    );
    assert_eq!((&v["type"], &v["id"]), (&json!("dm"), &json!(1)), "{v}");
    // A guest's DMs stay live only, as the contract has them.
    let mut guest = connect_as(&s, "gus");
    let v = ask(
        &mut guest,
        json!({"type":"dm","to":"alice","text":"psst"}),
        "g",
    );
    assert_eq!(v["type"], "dm");
    assert!(v["id"].is_null(), "a guest's DM is not kept: {v}");
    let v = ask(
        &mut guest,
        json!({"type":"dm_history","with":"alice","before":10}),
        "gh",
    );
    assert_eq!(v["code"], "not_logged_in", "{v}");
    drop((alice, bob, phone, guest));
    drop(s);

    let s = start(dir.path(), &[]);
    let (mut alice, reads) = login(&s, &alice_tok);
    let dms = reads["dms"].as_array().unwrap();
    assert_eq!(dms.len(), 2, "{reads}");
    assert_eq!(dms[0]["with"], "carol", "newest first: {reads}");
    assert_eq!(
        (&dms[1]["with"], &dms[1]["last"]),
        (&json!("Bob"), &json!(2))
    );
    let h = dm_history(&mut alice, "BOB", json!({"before": 100}));
    assert_eq!(
        texts(&h),
        [
            (1, "alice".into(), "hi bob".into()),
            (2, "Bob".into(), "hello".into())
        ]
    );
    assert_eq!(h["messages"][0]["to"], "Bob");
    assert_eq!(h["complete"], true);
    let h = dm_history(&mut alice, "bob", json!({"after": 1}));
    assert_eq!(texts(&h).len(), 1);
    assert_eq!(h["latest"], true);
    // Bob sees the same conversation; carol sees only hers.
    let (mut bob, _) = login(&s, &bob_tok);
    assert_eq!(
        texts(&dm_history(&mut bob, "alice", json!({"before": 100}))).len(),
        2
    );
    let (mut carol, reads) = login(&s, &carol_tok);
    assert_eq!(reads["dms"][0]["with"], "alice", "{reads}");
    assert_eq!(reads["dms"][0]["read"], 0);
    assert!(texts(&dm_history(&mut carol, "bob", json!({"before": 100}))).is_empty());
    let h = dm_history(&mut carol, "alice", json!({"before": 100}));
    assert_eq!(texts(&h), [(1, "alice".into(), "for later".into())]);
    let v = ask(
        &mut carol,
        json!({"type":"dm_history","with":"nobody","before":5}),
        "x",
    );
    assert_eq!(v["code"], "no_such_account", "{v}");
}

#[test]
fn read_positions_follow_the_account_move_forward_and_coalesce() {
    let dir = TempDir::new("dm-reads");
    let s = start(dir.path(), &[]);
    let (mut a, tok) = registered(&s, "alice");
    let (mut b, _) = login(&s, &tok);
    let mut poster = connect_as(&s, "poster");
    for ws in [&mut a, &mut b, &mut poster] {
        let j = ask(ws, json!({"type":"join","room":"general"}), "j");
        assert_eq!(j["type"], "joined", "{j}");
    }
    for i in 1..=5 {
        let v = ask(
            &mut poster,
            json!({"type":"message","room":"general","text":format!("m{i}")}),
            "m",
        );
        assert_eq!(v["id"], i);
    }
    // The guest has no position, and cannot set one.
    let v = ask(
        &mut poster,
        json!({"type":"read","room":"general","id":1}),
        "r",
    );
    assert_eq!(v["code"], "not_logged_in", "{v}");

    let v = ask(&mut a, json!({"type":"read","room":"general","id":3}), "r1");
    assert_eq!((&v["type"], &v["id"]), (&json!("read"), &json!(3)), "{v}");
    let e = recv_type_past(&mut b, "read", &["message"]);
    assert_eq!(
        (&e["room"], &e["id"]),
        (&json!("general"), &json!(3)),
        "{e}"
    );
    assert!(e["ref"].is_null());
    // Backwards: answered with the position as it is, nobody else told.
    let v = ask(&mut a, json!({"type":"read","room":"general","id":2}), "r2");
    assert_eq!(v["id"], 3, "{v}");
    // Past the newest message: clamped to it.
    let v = ask(
        &mut a,
        json!({"type":"read","room":"general","id":999}),
        "r3",
    );
    assert_eq!(v["id"], 5, "{v}");
    // The next `read` event `b` sees is 5: the backward one told nothing.
    let e = recv_type_past(&mut b, "read", &["message"]);
    assert_eq!(e["id"], 5, "{e}");

    // Coalescing: reads sent in one write are handled in one loop turn;
    // the other connection hears the final position once.
    for i in 6..=9 {
        let v = ask(
            &mut poster,
            json!({"type":"message","room":"general","text":format!("m{i}")}),
            "m",
        );
        assert_eq!(v["id"], i);
    }
    for id in 6..=9 {
        let req = json!({"type":"read","room":"general","id":id});
        a.write(Message::text(req.to_string())).expect("write");
    }
    a.flush().expect("flush");
    let e = recv_type_past(&mut b, "read", &["message"]);
    assert_eq!(e["id"], 9, "one event, the final position: {e}");
    send(&mut b, json!({"type":"rooms"}));
    let v = recv_type_past(&mut b, "rooms", &["message"]);
    assert_eq!(v["type"], "rooms", "no second read event came first: {v}");

    // A DM conversation's position too, named by the other party.
    let (mut bob, _) = registered(&s, "bob");
    let v = ask(&mut bob, json!({"type":"dm","to":"alice","text":"yo"}), "d");
    assert_eq!(v["id"], 1);
    let v = ask(&mut a, json!({"type":"read","with":"bob","id":1}), "rd");
    assert_eq!((&v["with"], &v["id"]), (&json!("bob"), &json!(1)), "{v}");
    let v = ask(
        &mut a,
        json!({"type":"read","room":"general","with":"bob","id":1}),
        "rx",
    );
    assert_eq!(v["code"], "invalid", "{v}");
    let v = ask(
        &mut a,
        json!({"type":"read","room":"elsewhere","id":1}),
        "ry",
    );
    assert_eq!(v["code"], "not_in_room", "{v}");
    drop((a, b, bob, poster));
    drop(s);

    // After a restart: joined and the login carry the positions.
    let s = start(dir.path(), &[]);
    let (mut c, reads) = login(&s, &tok);
    assert_eq!(reads["dms"][0]["with"], "bob", "{reads}");
    assert_eq!(reads["dms"][0]["read"], 1, "{reads}");
    let j = ask(&mut c, json!({"type":"join","room":"general"}), "j");
    assert_eq!(j["read"], 9, "{j}");
    let mut guest = connect_as(&s, "guest");
    let j = ask(&mut guest, json!({"type":"join","room":"general"}), "j");
    assert!(j.get("read").is_none(), "a guest's joined has no read: {j}");
}

/// Two accounts DM each other, and one moves its read position, as fast
/// as the server takes it until SIGKILL: after the restart every
/// acknowledged DM is in the history with its id and text, ids gap-free,
/// and the read position is at least the last one answered.
#[test]
fn sigkill_during_dms_and_reads_keeps_every_answered_one() {
    let dir = TempDir::new("kill-dms");
    let mut s = start(dir.path(), &[]);
    let (_alice, alice_tok) = registered(&s, "alice");
    let (_bob, bob_tok) = registered(&s, "bob");
    let workers: Vec<_> = [(alice_tok.clone(), "bob"), (bob_tok, "alice")]
        .into_iter()
        .map(|(tok, to)| {
            let url = s.url("/ws");
            let addr = s.addr;
            std::thread::spawn(move || {
                let mut acked: Vec<(u64, String)> = Vec::new();
                let mut read = 0;
                let Ok(stream) = TcpStream::connect(addr) else {
                    return (acked, read);
                };
                let Ok((mut ws, _)) = tungstenite::client(format!("{url}?nick=w{to}"), stream)
                else {
                    return (acked, read);
                };
                let mut ask = |req: Value| -> Option<Value> {
                    ws.send(Message::text(req.to_string())).ok()?;
                    loop {
                        let Message::Text(t) = ws.read().ok()? else {
                            continue;
                        };
                        let v: Value = serde_json::from_str(t.as_str()).ok()?;
                        if v["ref"] == "k" {
                            return Some(v);
                        }
                    }
                };
                if ask(json!({"type":"login","token":tok,"ref":"k"})).is_none() {
                    return (acked, read);
                }
                for i in 0.. {
                    let text = format!("{to} {i}");
                    let Some(v) = ask(json!({"type":"dm","to":to,"text":text,"ref":"k"})) else {
                        break;
                    };
                    assert_eq!(v["type"], "dm", "{v}");
                    let id = v["id"].as_u64().unwrap();
                    acked.push((id, text));
                    let Some(v) = ask(json!({"type":"read","with":to,"id":id,"ref":"k"})) else {
                        break;
                    };
                    assert_eq!(v["type"], "read", "{v}");
                    read = v["id"].as_u64().unwrap();
                }
                (acked, read)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    s.signal("KILL");
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
    drop(s);
    let results: Vec<_> = workers
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect();
    let mut acked: Vec<(u64, String)> = results.iter().flat_map(|r| r.0.clone()).collect();
    acked.sort();
    assert!(acked.len() >= 4, "too few DMs: {}", acked.len());
    let alice_read = results[0].1;

    let s = start(dir.path(), &[]);
    let (mut alice, reads) = login(&s, &alice_tok);
    assert!(
        reads["dms"][0]["read"].as_u64().unwrap() >= alice_read,
        "answered read {alice_read} lost: {reads}"
    );
    let mut kept: Vec<(u64, String)> = Vec::new();
    let mut after = 0;
    loop {
        let h = dm_history(&mut alice, "bob", json!({"after": after}));
        for (id, _, text) in texts(&h) {
            kept.push((id, text));
            after = id;
        }
        if h["latest"] == true {
            break;
        }
    }
    let ids: Vec<u64> = kept.iter().map(|k| k.0).collect();
    assert_eq!(ids, (1..=kept.len() as u64).collect::<Vec<_>>(), "gap-free");
    for a in &acked {
        assert!(kept.contains(a), "acknowledged {a:?} lost");
    }
}

/// With --no-persist, DM history and read positions live in memory: the
/// same requests and answers, gone at a restart like rooms' history.
#[test]
fn without_a_store_dm_history_and_reads_are_kept_in_memory() {
    let s = Server::start(&["--no-persist", "--rate-burst", "0"]);
    let (mut alice, tok) = registered(&s, "alice");
    let (mut bob, _) = registered(&s, "bob");
    for i in 1..=3 {
        let v = ask(
            &mut alice,
            json!({"type":"dm","to":"bob","text":format!("t{i}")}),
            "d",
        );
        assert_eq!(v["id"], i, "{v}");
    }
    let h = dm_history(&mut bob, "alice", json!({"before": 3, "limit": 1}));
    assert_eq!(texts(&h), [(2, "alice".into(), "t2".into())]);
    assert_eq!(h["complete"], false);
    let v = ask(&mut alice, json!({"type":"read","with":"bob","id":3}), "r");
    assert_eq!(v["id"], 3, "{v}");
    let (_, reads) = login(&s, &tok);
    assert_eq!(
        (&reads["dms"][0]["read"], &reads["dms"][0]["last"]),
        (&json!(3), &json!(3))
    );
}

/// A store that refuses commits: a DM between accounts is `storage_failed`
/// to its sender and reaches nobody; a `read` is `storage_failed` and the
/// position stays where it was; both work again once the store does.
#[test]
fn a_failing_store_refuses_dms_and_reads_and_keeps_the_old_position() {
    let dir = TempDir::new("dm-fault");
    let fault = dir.path().join("fault");
    let fault_arg = fault.to_str().unwrap().to_string();
    let s = Server::start_in(
        dir.path(),
        &["--rate-burst", "0", "--fault-file", &fault_arg],
    );
    let (mut alice, _) = registered(&s, "alice");
    let (mut bob, _) = registered(&s, "bob");
    let v = ask(
        &mut alice,
        json!({"type":"dm","to":"bob","text":"one"}),
        "d1",
    );
    assert_eq!(v["id"], 1, "{v}");
    assert_eq!(recv_type(&mut bob, "dm")["text"], "one");
    std::fs::write(&fault, b"").unwrap();
    let v = ask(
        &mut alice,
        json!({"type":"dm","to":"bob","text":"lost"}),
        "d2",
    );
    assert_eq!(v["code"], "storage_failed", "{v}");
    let v = ask(&mut bob, json!({"type":"read","with":"alice","id":1}), "r1");
    assert_eq!(v["code"], "storage_failed", "{v}");
    std::fs::remove_file(&fault).unwrap();
    // The refused read left the position at 0; the refused DM reached nobody.
    let h = dm_history(&mut bob, "alice", json!({"before": 100}));
    assert_eq!(h["read"], 0, "{h}");
    assert_eq!(texts(&h), [(1, "alice".into(), "one".into())]);
    let v = ask(
        &mut alice,
        json!({"type":"dm","to":"bob","text":"two"}),
        "d3",
    );
    assert_eq!(v["id"], 2, "the refused id is handed out again: {v}");
    assert_eq!(recv_type(&mut bob, "dm")["text"], "two");
    let v = ask(&mut bob, json!({"type":"read","with":"alice","id":2}), "r2");
    assert_eq!((&v["type"], &v["id"]), (&json!("read"), &json!(2)), "{v}");
}

/// A DM reaches every connection logged in to its account and none that
/// left it, by a login to another account or a logout (the server keeps an
/// index account → connections, kept with every login and logout).
#[test]
fn a_dm_reaches_exactly_the_connections_logged_in_to_the_account() {
    let dir = TempDir::new("dm-index");
    let s = start(dir.path(), &[]);
    let (mut alice, a_tok) = registered(&s, "alice");
    let (_bob, b_tok) = registered(&s, "bob");
    let (mut carol, _) = registered(&s, "carol");
    let (mut phone, _) = login(&s, &a_tok);
    let (mut moved, _) = login(&s, &a_tok);
    let v = ask(&mut moved, json!({"type":"login","token":b_tok}), "m");
    assert_eq!(v["type"], "session", "{v}");
    // A session of its own (a logout ends the session for all its holders).
    let mut gone = connect_as(&s, "x");
    let v = ask(
        &mut gone,
        json!({"type":"login","account":"alice","password":PW}),
        "p",
    );
    assert_eq!(v["type"], "session", "{v}");
    let v = ask(&mut gone, json!({"type":"logout"}), "o");
    assert_eq!(v["type"], "logged_out", "{v}");
    let v = ask(
        &mut carol,
        json!({"type":"dm","to":"alice","text":"hello"}),
        "d",
    );
    assert_eq!(v["type"], "dm", "{v}");
    for ws in [&mut alice, &mut phone] {
        assert_eq!(recv_type(ws, "dm")["text"], "hello");
    }
    // Nothing but events before the answer to a request sent after it.
    for ws in [&mut moved, &mut gone] {
        send(ws, json!({"type":"rooms","ref":"sync"}));
        assert_eq!(recv_type(ws, "rooms")["ref"], "sync");
    }
    // A connection that logs in to alice again hears the next one.
    let v = ask(&mut gone, json!({"type":"login","token":a_tok}), "l");
    assert_eq!(v["type"], "session", "{v}");
    let v = ask(
        &mut carol,
        json!({"type":"dm","to":"alice","text":"again"}),
        "d2",
    );
    assert_eq!(v["type"], "dm", "{v}");
    for ws in [&mut alice, &mut phone, &mut gone] {
        assert_eq!(recv_type(ws, "dm")["text"], "again");
    }
    send(&mut moved, json!({"type":"rooms","ref":"sync2"}));
    assert_eq!(recv_type(&mut moved, "rooms")["ref"], "sync2");
}

/// `search` with `with` (extension): the logged-in account's DM
/// conversation with that account, newest first, as `dm` objects (with
/// `context` their neighbours), found again after a SIGKILL; a guest, an
/// unknown account, and a third account (whose conversation with alice is
/// another) find nothing of it.
#[test]
fn dm_search_finds_the_accounts_own_conversation_across_a_kill() {
    let dir = TempDir::new("dm-search");
    let s = start(dir.path(), &[]);
    let (mut alice, alice_tok) = registered(&s, "alice");
    let (mut bob, _) = registered(&s, "Bob");
    let (mut carol, _) = registered(&s, "carol");
    for (from_alice, text) in [
        (true, "pizza tonight?"),
        (false, "sure, after eight"),
        (true, "the usual pizza place"),
        (false, "see you"),
    ] {
        let (ws, to) = if from_alice {
            (&mut alice, "bob")
        } else {
            (&mut bob, "alice")
        };
        let v = ask(ws, json!({"type":"dm","to":to,"text":text}), "d");
        assert_eq!(v["type"], "dm", "{v}");
    }
    let search = |ws: &mut Ws, req: Value| ask(ws, req, "s");
    let want = |v: &Value| {
        assert_eq!(
            (&v["type"], &v["with"]),
            (&json!("search"), &json!("Bob")),
            "{v}"
        );
        assert!(v.get("room").is_none(), "{v}");
        assert_eq!(v["complete"], true);
        let hits: Vec<(u64, &str, &str)> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m["type"], "dm", "{m}");
                (
                    m["id"].as_u64().unwrap(),
                    m["from"].as_str().unwrap(),
                    m["to"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(hits, [(3, "alice", "Bob"), (1, "alice", "Bob")]);
    };
    let v = search(
        &mut alice,
        json!({"type":"search","with":"BOB","query":"pizza","context":1}),
    );
    want(&v);
    let hit = &v["messages"][0];
    assert_eq!(
        hit["context_before"][0]["text"], "sure, after eight",
        "{hit}"
    );
    assert_eq!(hit["context_after"][0]["text"], "see you", "{hit}");
    let v = search(
        &mut carol,
        json!({"type":"search","with":"alice","query":"pizza"}),
    );
    assert_eq!(
        (&v["with"], &v["messages"]),
        (&json!("alice"), &json!([])),
        "{v}"
    );
    let v = search(
        &mut carol,
        json!({"type":"search","with":"nobody","query":"pizza"}),
    );
    assert_eq!(v["code"], "no_such_account", "{v}");
    let v = search(
        &mut carol,
        json!({"type":"search","room":"r","with":"alice","query":"x"}),
    );
    assert_eq!(
        v["code"], "invalid",
        "room and with exclude each other: {v}"
    );
    let mut guest = connect_as(&s, "guest");
    let v = search(
        &mut guest,
        json!({"type":"search","with":"alice","query":"pizza"}),
    );
    assert_eq!(v["code"], "not_logged_in", "{v}");
    drop((alice, bob, carol, guest));

    let mut s = s;
    s.signal("KILL");
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
    drop(s);
    let s = start(dir.path(), &[]);
    let (mut alice, _) = login(&s, &alice_tok);
    want(&search(
        &mut alice,
        json!({"type":"search","with":"bob","query":"pizza"}),
    ));
}
