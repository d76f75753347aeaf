//! End-to-end tests of the durable store (docs/storage.md): real servers on
//! real sockets, stopped cleanly or killed with SIGKILL, restarted on the
//! same `--data-dir`.
mod common;
use common::*;

use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tungstenite::Message;

fn join(ws: &mut Ws, room: &str, extra: Value) -> Value {
    let mut req = json!({"type":"join","room":room,"ref":"j"});
    if let (Some(r), Some(e)) = (req.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    send(ws, req);
    recv_type(ws, "joined")
}

/// Posts and waits for the acknowledgement (the sender's copy); returns it.
fn post(ws: &mut Ws, room: &str, text: &str) -> Value {
    send(
        ws,
        json!({"type":"message","room":room,"text":text,"ref":"p"}),
    );
    let v = recv_type(ws, "message");
    assert_eq!(v["ref"], "p", "{v}");
    assert_eq!(v["text"], text, "{v}");
    v
}

fn ids(v: &Value, field: &str) -> Vec<u64> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
        .iter()
        .map(|m| m["id"].as_u64().expect("id"))
        .collect()
}

/// Every kept message of `room`, oldest first, paged back with `history`.
fn all_history(ws: &mut Ws, room: &str, next_id: u64) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut before = next_id;
    loop {
        send(
            ws,
            json!({"type":"history","room":room,"before":before,"limit":100,"ref":"h"}),
        );
        let v = recv_type(ws, "history");
        let page = v["messages"].as_array().expect("messages").clone();
        if let Some(first) = page.first() {
            before = first["id"].as_u64().unwrap();
        }
        let complete = v["complete"] == true;
        out.splice(0..0, page);
        if complete {
            return out;
        }
    }
}

fn stop(server: &mut Server, sig: &str) {
    server.signal(sig);
    assert!(
        server.wait_exit(Duration::from_secs(10)).is_some(),
        "server did not exit on {sig}"
    );
}

fn restart_keeps_everything(sig: &str) {
    let dir = TempDir::new("restart");
    let mut s = start(dir.path(), &[]);
    let mut alice = connect_as(&s, "alice");
    let first = join(&mut alice, "r", json!({}));
    let epoch = first["epoch"].as_str().unwrap().to_string();
    for i in 1..=150 {
        let ack = post(&mut alice, "r", &format!("m{i}"));
        assert_eq!(ack["id"], i);
    }
    stop(&mut s, sig);
    drop(s);

    let s = start(dir.path(), &[]);
    let mut bob = connect_as(&s, "bob");
    let j = join(&mut bob, "r", json!({}));
    assert_eq!(j["epoch"], epoch.as_str(), "the epoch survives");
    assert_eq!(ids(&j, "history"), (101..=150).collect::<Vec<_>>());
    assert_eq!(j["complete"], false);
    assert_eq!(j["history"][49]["text"], "m150");
    // Older pages come from the store.
    send(
        &mut bob,
        json!({"type":"history","room":"r","before":101,"limit":100,"ref":"h"}),
    );
    let h = recv_type(&mut bob, "history");
    assert_eq!(ids(&h, "messages"), (1..=100).collect::<Vec<_>>());
    assert_eq!(h["messages"][0]["text"], "m1");
    assert_eq!(h["complete"], true);
    // `since` + `epoch` recovery across the restart is gap-free.
    let mut carol = connect_as(&s, "carol");
    let r = join(&mut carol, "r", json!({"since":120,"epoch":epoch}));
    assert_eq!(ids(&r, "history"), (121..=150).collect::<Vec<_>>());
    assert_eq!(r["complete"], true);
    // Ids go on.
    let ack = post(&mut bob, "r", "after");
    assert_eq!(ack["id"], 151);
    let copy = recv_type(&mut carol, "message");
    assert_eq!(copy["id"], 151);
}

#[test]
fn restart_after_sigterm_keeps_rooms_epochs_ids_and_history() {
    restart_keeps_everything("TERM");
}

#[test]
fn restart_after_sigkill_keeps_rooms_epochs_ids_and_history() {
    restart_keeps_everything("KILL");
}

/// A raw client that posts without waiting while another thread reads its
/// acknowledgements: returns (id, text) of every acknowledged message.
fn flood(
    addr: std::net::SocketAddr,
    nick: &str,
    room: &str,
) -> std::thread::JoinHandle<Vec<(u64, String)>> {
    flood_padded(addr, nick, room, 0, None, Default::default())
}

/// Kills the server with SIGKILL while `flooders` post, then gathers every
/// message they saw acknowledged before it died.
fn kill_mid_flood(
    mut s: Server,
    flooders: Vec<std::thread::JoinHandle<Vec<(u64, String)>>>,
) -> Vec<(u64, String)> {
    s.signal("KILL");
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
    drop(s);
    flooders
        .into_iter()
        .flat_map(|h| h.join().expect("flooder"))
        .collect()
}

/// A raw WebSocket as `nick`, joined to `room` (before any load starts,
/// and so before a kill).
fn joined_raw(addr: std::net::SocketAddr, nick: &str, room: &str) -> std::net::TcpStream {
    let mut s = raw_ws(addr, &format!("/ws?nick={nick}"), "");
    let (_, _, w) = read_frame(&mut s).expect("welcome");
    assert!(String::from_utf8_lossy(&w).contains("welcome"));
    let join = json!({"type":"join","room":room,"ref":"j"}).to_string();
    s.write_all(&frame(true, 1, join.as_bytes())).unwrap();
    loop {
        let (_, _, p) = read_frame(&mut s).expect("joined");
        let v: Value = serde_json::from_slice(&p).unwrap();
        if v["type"] == "joined" {
            return s;
        }
    }
}

/// A poster that keeps `window` messages unacknowledged, no more: load
/// that never outruns the server, so that its loop turns stay short even
/// unoptimised under an emulator, and another client's requests get their
/// turn. Returns the messages it saw acknowledged (counted in `acks`).
fn paced_poster(
    addr: std::net::SocketAddr,
    nick: &str,
    room: &str,
    window: u64,
    acks: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<(u64, String)>> {
    let mut s = joined_raw(addr, nick, room);
    let (room, nick) = (room.to_string(), nick.to_string());
    std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut sent = 0u64;
        loop {
            while sent - (acked.len() as u64) < window {
                let m = json!({"type":"message","room":room,"text":format!("{nick} {sent}"),"ref":format!("{sent}")});
                if s.write_all(&frame(true, 1, m.to_string().as_bytes()))
                    .is_err()
                {
                    return acked;
                }
                sent += 1;
            }
            match read_frame(&mut s) {
                Ok((_, 1, p)) => {
                    let v: Value = serde_json::from_slice(&p).unwrap();
                    if v["type"] == "message" && v.get("ref").is_some() {
                        acked.push((
                            v["id"].as_u64().unwrap(),
                            v["text"].as_str().unwrap().to_string(),
                        ));
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok((_, 8, _)) | Err(_) => return acked,
                Ok(_) => {}
            }
        }
    })
}

/// [`flood`] with `pad` bytes of padding in each text, starting to post
/// once `gate` opens (when given): after every flooder has joined. Each
/// acknowledgement read adds one to `acks`.
fn flood_padded(
    addr: std::net::SocketAddr,
    nick: &str,
    room: &str,
    pad: usize,
    gate: Option<Arc<std::sync::Barrier>>,
    acks: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<(u64, String)>> {
    let mut s = joined_raw(addr, nick, room);
    let room = room.to_string();
    let nick = nick.to_string();
    std::thread::spawn(move || {
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            if let Some(g) = gate {
                g.wait();
            }
            for i in 0.. {
                let text = format!("{nick} {i} {}", "p".repeat(pad));
                let m = json!({"type":"message","room":room,"text":text.trim_end(),"ref":format!("{i}")});
                if w.write_all(&frame(true, 1, m.to_string().as_bytes()))
                    .is_err()
                {
                    return;
                }
                if i % 20 == 19 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let mut acked = Vec::new();
        while let Ok((_, op, p)) = read_frame(&mut s) {
            if op != 1 {
                break;
            }
            let v: Value = serde_json::from_slice(&p).unwrap();
            if v["type"] == "message" && v.get("ref").is_some() {
                acked.push((
                    v["id"].as_u64().unwrap(),
                    v["text"].as_str().unwrap().to_string(),
                ));
                acks.fetch_add(1, Ordering::Relaxed);
            }
        }
        let _ = writer.join();
        acked
    })
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_message() {
    let dir = TempDir::new("kill");
    let s = start(dir.path(), &[]);
    let flooders: Vec<_> = (0..3)
        .map(|i| flood(s.addr, &format!("f{i}"), "load"))
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let acked = kill_mid_flood(s, flooders);
    assert!(
        acked.len() > 100,
        "too few messages acknowledged: {}",
        acked.len()
    );

    assert_acked_kept(dir.path(), "load", &acked);
}

/// Restarts on `dir` and checks that `room`'s ids are gap-free from 1,
/// that every acknowledged message is stored as acknowledged, and that
/// the next message continues the sequence.
fn assert_acked_kept(dir: &Path, room: &str, acked: &[(u64, String)]) {
    let s = start(dir, &[]);
    let mut c = connect_as(&s, "checker");
    let j = join(&mut c, room, json!({}));
    let newest = j["history"]
        .as_array()
        .and_then(|h| h.last())
        .and_then(|m| m["id"].as_u64())
        .expect("messages survived");
    let all = all_history(&mut c, room, newest + 1);
    let stored: Vec<(u64, String)> = all
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Gap-free from 1.
    for (i, (id, _)) in stored.iter().enumerate() {
        assert_eq!(*id, i as u64 + 1, "ids gap-free");
    }
    let by_id: std::collections::HashMap<u64, &str> =
        stored.iter().map(|(i, t)| (*i, t.as_str())).collect();
    for (id, text) in acked {
        assert_eq!(
            by_id.get(id).copied(),
            Some(text.as_str()),
            "acknowledged message {id} kept"
        );
    }
    // The next message continues the sequence.
    let ack = post(&mut c, room, "after the crash");
    assert_eq!(ack["id"], newest + 1);
}

/// WAL checkpoints run by the loop between turns (src/store/sqlite.rs):
/// killed mid-flood of long messages, after checkpoints have copied the WAL
/// into the database (and perhaps during one), the store loses no
/// acknowledged message. Until a first
/// checkpoint the database file keeps its empty size (every commit is in
/// the WAL), so its growth shows that checkpoints ran before the kill.
#[test]
fn sigkill_while_checkpointing_loses_no_acknowledged_message() {
    let dir = TempDir::new("kill-ckpt");
    // Each flooder reads every flooder's 3 KB copies: a debug-built test
    // client on a loaded machine lags, and at the default 1 MiB of pending
    // output the server would close it as a slow consumer mid-flood.
    let s = start(dir.path(), &["--max-pending-output", "256MiB"]);
    let db = dir.path().join("wschat.db");
    let empty = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    let gate = Arc::new(std::sync::Barrier::new(4));
    let acks = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (0..3)
        .map(|i| {
            let f = format!("f{i}");
            flood_padded(s.addr, &f, "ckpt", 3000, Some(gate.clone()), acks.clone())
        })
        .collect();
    gate.wait();
    // Past 1000 WAL pages (4 MiB) a checkpoint is due; kill the server
    // once the database has grown by 2 MiB (only a checkpoint grows it:
    // so at least one has copied the WAL into it) and the flooders have
    // read 1000 acknowledgements, mid-flood. The test waits for what it
    // needs, not for a time: the deadline is for a server that never gets
    // there (an unoptimised one beside a CI's other suites is slow).
    let grown = || std::fs::metadata(&db).is_ok_and(|m| m.len() >= empty + (2 << 20));
    let ready = || grown() && acks.load(Ordering::Relaxed) > 1000;
    let t0 = std::time::Instant::now();
    while !ready() && t0.elapsed() < Duration::from_secs(240) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(grown(), "no checkpoint ran under load");
    let acked = kill_mid_flood(s, flooders);
    assert!(acked.len() > 1000, "too few acknowledged: {}", acked.len());
    assert_acked_kept(dir.path(), "ckpt", &acked);
}

/// Moderation records go into the turn's one commit with its messages:
/// killed mid-flood while an operator bans nicks from the room and lifts
/// every other ban, one request after another, the store keeps every
/// acknowledged message, and for every nick whose actions were all
/// acknowledged, exactly what they left: its ban row, or none.
#[test]
fn sigkill_under_load_keeps_acknowledged_bans_and_unbans() {
    let dir = TempDir::new("kill-bans");
    let (ok, msg) = account_cmd(dir.path(), &["account", "add", "boss", "--op"], PW);
    assert!(ok, "{msg}");
    let s = start(dir.path(), &[]);
    let mut op = connect_as(&s, "x");
    let v = ask(
        &mut op,
        json!({"type":"login","account":"boss","password":PW}),
        "login",
    );
    assert_eq!(v["type"], "session", "{v}");
    let acks = Arc::new(AtomicUsize::new(0));
    // Paced posters, not a free flood: the test servers run without the
    // rate limit, and under a flood an unoptimised server's loop turns
    // (each reading a backlog of thousands of messages) grew to seconds,
    // under qemu to minutes, and every ban waited for a turn.
    let flooders: Vec<_> = (0..2)
        .map(|i| paced_poster(s.addr, &format!("f{i}"), "load", 32, acks.clone()))
        .collect();
    // Nick t{i}: banned, and for odd i then unbanned; each answer read
    // before the next request. Returns the nicks whose every action was
    // acknowledged (the one in flight at the kill is not among them).
    let settled = Arc::new(AtomicUsize::new(0));
    let moderator = {
        let settled = settled.clone();
        std::thread::spawn(move || {
            let mut done = Vec::new();
            for i in 0u64.. {
                let nick = format!("t{i}");
                let mut reqs = vec![json!({"type":"ban","room":"load","nick":nick})];
                if i % 2 == 1 {
                    reqs.push(json!({"type":"unban","room":"load","nick":nick}));
                }
                for (k, mut req) in reqs.into_iter().enumerate() {
                    let r = format!("{i}-{k}");
                    req["ref"] = json!(r);
                    if op.send(Message::text(req.to_string())).is_err() {
                        return done;
                    }
                    loop {
                        match op.read() {
                            Ok(Message::Text(t)) => {
                                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                                if v["ref"] == r.as_str() {
                                    assert_eq!(v["type"], "moderation", "{v}");
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return done,
                        }
                    }
                }
                done.push(i);
                settled.fetch_add(1, Ordering::Relaxed);
            }
            done
        })
    };
    // Killed once both streams are well under way (a deadline only for a
    // server that never gets there).
    let t0 = std::time::Instant::now();
    while (settled.load(Ordering::Relaxed) < 20 || acks.load(Ordering::Relaxed) < 200)
        && t0.elapsed() < Duration::from_secs(240)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let acked = kill_mid_flood(s, flooders);
    let done = moderator.join().expect("moderator");
    assert!(
        acked.len() >= 200,
        "too few messages acknowledged: {}",
        acked.len()
    );
    assert!(done.len() >= 20, "too few nicks settled: {}", done.len());
    assert_acked_kept(dir.path(), "load", &acked);

    let db = rusqlite::Connection::open(dir.path().join("wschat.db")).unwrap();
    let mut rows = db
        .prepare("SELECT count(*) FROM bans WHERE room = 'load' AND nick = ?1")
        .unwrap();
    for i in &done {
        let n: i64 = rows.query_row([format!("t{i}")], |r| r.get(0)).unwrap();
        let want = if i % 2 == 0 { 1 } else { 0 };
        assert_eq!(n, want, "t{i}: banned {}", i % 2 == 0);
    }
    // And the server reads them so: the first banned nick is refused the
    // room, the first lifted one joins.
    let s = start(dir.path(), &[]);
    assert_eq!(
        try_join(&mut connect_as(&s, "t0"), "load")["code"],
        "banned"
    );
    assert_eq!(
        try_join(&mut connect_as(&s, "t1"), "load")["type"],
        "joined"
    );
}

#[test]
fn a_failing_store_refuses_messages_and_recovers() {
    let dir = TempDir::new("fault");
    let fault = dir.path().join("fail-now");
    let data = dir.path().join("data");
    let fault_arg = fault.to_str().unwrap();
    let data_arg = data.to_str().unwrap();
    let mut s = Server::start(&[
        "--rate-burst",
        "0",
        "--data-dir",
        data_arg,
        "--fault-file",
        fault_arg,
    ]);
    let mut alice = connect_as(&s, "alice");
    let mut bob = connect_as(&s, "bob");
    join(&mut alice, "r", json!({}));
    join(&mut bob, "r", json!({}));
    recv_type(&mut alice, "presence");
    assert_eq!(post(&mut alice, "r", "one")["id"], 1);
    assert_eq!(recv_type(&mut bob, "message")["id"], 1);

    std::fs::write(&fault, b"").unwrap();
    send(
        &mut alice,
        json!({"type":"message","room":"r","text":"lost","ref":"x"}),
    );
    let e = recv(&mut alice);
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "storage_failed");
    assert_eq!(e["ref"], "x");
    // Bob got no copy, and the rest of the chat goes on.
    send(&mut bob, json!({"type":"typing","room":"r","active":true}));
    let t = recv(&mut alice);
    assert_eq!(t["type"], "typing", "{t}");
    send(&mut bob, json!({"type":"rooms","ref":"k"}));
    assert_eq!(recv(&mut bob)["type"], "rooms");

    std::fs::remove_file(&fault).unwrap();
    let ack = post(&mut alice, "r", "two");
    assert_eq!(ack["id"], 2, "the refused message left no gap");
    assert_eq!(recv(&mut bob)["text"], "two");
    stop(&mut s, "KILL");
    drop(s);

    let s = start(&data, &[]);
    let mut c = connect_as(&s, "c");
    let j = join(&mut c, "r", json!({}));
    let texts: Vec<&str> = j["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one", "two"]);
    assert_eq!(ids(&j, "history"), [1, 2]);
}

#[test]
fn a_corrupt_store_is_refused_and_left_alone() {
    let dir = TempDir::new("corrupt");
    let db = dir.path().join("wschat.db");
    let garbage = b"this is not an SQLite database, but it is someone's data".repeat(100);
    std::fs::write(&db, &garbage).unwrap();
    let (st, err) = Server::refuse(&["--data-dir", dir.path().to_str().unwrap()]);
    assert!(!st.success());
    assert!(err.contains(db.to_str().unwrap()), "names the file: {err}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "the file is untouched"
    );
}

#[test]
fn a_data_dir_that_is_a_file_is_refused() {
    let dir = TempDir::new("file");
    let f = dir.path().join("not-a-dir");
    std::fs::write(&f, b"x").unwrap();
    let (st, err) = Server::refuse(&["--data-dir", f.to_str().unwrap()]);
    assert!(!st.success());
    assert!(
        err.contains(f.to_str().unwrap()) && err.contains("not a directory"),
        "{err}"
    );
}

#[test]
fn a_second_server_on_the_same_dir_is_refused() {
    let dir = TempDir::new("twice");
    let s = start(dir.path(), &[]);
    let (st, err) = Server::refuse(&["--data-dir", dir.path().to_str().unwrap()]);
    assert!(!st.success());
    assert!(err.contains("in use by another running wschat"), "{err}");
    assert!(err.contains(dir.path().to_str().unwrap()), "{err}");
    // The first one is unharmed.
    let mut a = connect_as(&s, "a");
    join(&mut a, "r", json!({}));
    assert_eq!(post(&mut a, "r", "still here")["id"], 1);
}

#[test]
fn memberless_rooms_expire_on_disk_too() {
    let dir = TempDir::new("expire");
    let mut s = start(dir.path(), &[]);
    let mut a = connect_as(&s, "a");
    let epoch = join(&mut a, "gone", json!({}))["epoch"].clone();
    post(&mut a, "gone", "old news");
    join(&mut a, "kept", json!({}));
    post(&mut a, "kept", "still news");
    send(&mut a, json!({"type":"leave","room":"gone","ref":"l"}));
    recv_type(&mut a, "left");
    std::thread::sleep(Duration::from_millis(3000));
    s.signal("TERM");
    // Answer the server's close, so that it stops at once.
    while a.read().is_ok() {}
    drop(a);
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
    drop(s);
    // Started again with a retention shorter than the room's time without
    // members: "gone" is forgotten (and deleted); "kept" had a member until
    // the shutdown.
    let s = start(dir.path(), &["--room-retention", "2s"]);
    let mut b = connect_as(&s, "b");
    let j = join(&mut b, "kept", json!({}));
    assert_eq!(j["history"][0]["text"], "still news");
    drop(b);
    drop(s);
    let s = start(dir.path(), &[]);
    let mut c = connect_as(&s, "c");
    let j = join(&mut c, "gone", json!({}));
    assert_ne!(j["epoch"], epoch, "a forgotten room starts again");
    assert_eq!(j["history"], json!([]));
}

fn search_ids(ws: &mut Ws, req: Value) -> (Vec<u64>, Value) {
    send(ws, req);
    let v = recv_type(ws, "search");
    (ids(&v, "messages"), v)
}

fn searches(s: &Server) {
    let mut a = connect_as(s, "a");
    join(&mut a, "r", json!({}));
    for t in [
        "the quick fox",
        "a lazy dog",
        "Quick thinking",
        "quickly now",
        "fox again",
    ] {
        post(&mut a, "r", t);
    }
    let (found, v) = search_ids(
        &mut a,
        json!({"type":"search","room":"r","query":"quick","ref":"s"}),
    );
    assert_eq!(found, [4, 3, 1], "newest first: {v}");
    assert_eq!(v["ref"], "s");
    assert_eq!(v["query"], "quick");
    assert_eq!(v["complete"], true);
    assert_eq!(v["messages"][0]["text"], "quickly now");
    let (found, v) = search_ids(
        &mut a,
        json!({"type":"search","room":"r","query":"quick","limit":1,"before":4}),
    );
    assert_eq!(found, [3]);
    assert_eq!(v["complete"], false);
    let (found, _) = search_ids(
        &mut a,
        json!({"type":"search","room":"r","query":"fox the"}),
    );
    assert_eq!(found, [1]);
    send(
        &mut a,
        json!({"type":"search","room":"elsewhere","query":"x","ref":"n"}),
    );
    let e = recv(&mut a);
    assert_eq!(
        (&e["code"], &e["ref"]),
        (&json!("not_in_room"), &json!("n"))
    );
    send(
        &mut a,
        json!({"type":"search","room":"r","query":"  ","ref":"b"}),
    );
    let e = recv(&mut a);
    assert_eq!(e["code"], "invalid", "{e}");
}

#[test]
fn search_finds_words_newest_first() {
    let dir = TempDir::new("search");
    let mut s = start(dir.path(), &[]);
    searches(&s);
    // Across a restart, through the store.
    stop(&mut s, "KILL");
    drop(s);
    let s = start(dir.path(), &[]);
    let mut b = connect_as(&s, "b");
    join(&mut b, "r", json!({}));
    let (found, _) = search_ids(&mut b, json!({"type":"search","room":"r","query":"lazy"}));
    assert_eq!(found, [2]);
}

#[test]
fn search_without_a_store() {
    searches(&Server::start(&["--rate-burst", "0", "--no-persist"]));
}

/// Mounts a tmpfs of `size` on `dir` (root only); unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A real full disk: a small tmpfs (where this machine lets the test mount
/// one: as root; elsewhere the fault-injection test above covers the logic).
#[test]
fn a_full_disk_refuses_without_acknowledging_and_recovers() {
    let dir = TempDir::new("full");
    let Some(fs) = Tmpfs::mount(dir.path(), "700k") else {
        eprintln!(
            "SKIPPED a_full_disk_refuses_without_acknowledging_and_recovers: cannot mount a tmpfs here (needs root)"
        );
        return;
    };
    let mut s = start(dir.path(), &[]);
    let mut a = connect_as(&s, "a");
    let mut b = connect_as(&s, "b");
    join(&mut a, "r", json!({}));
    join(&mut b, "r", json!({}));
    recv_type(&mut a, "presence");
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut refused = false;
    for i in 0..5000 {
        let text = format!("{i} {}", "x".repeat(3000));
        send(
            &mut a,
            json!({"type":"message","room":"r","text":text,"ref":"f"}),
        );
        let v = recv(&mut a);
        match v["type"].as_str() {
            Some("message") => {
                acked.push((v["id"].as_u64().unwrap(), text));
                assert_eq!(recv(&mut b)["id"], v["id"]);
            }
            Some("error") => {
                assert_eq!(v["code"], "storage_failed", "{v}");
                assert_eq!(v["ref"], "f");
                refused = true;
                break;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(refused, "the disk never filled");
    assert!(!acked.is_empty());
    // Bob got no copy of the refused message, and can still use the chat.
    send(&mut b, json!({"type":"rooms","ref":"k"}));
    assert_eq!(recv(&mut b)["type"], "rooms");
    // Space comes back: the next message is stored, with the next id.
    fs.resize("64m");
    let ack = post(&mut a, "r", "space again");
    let last = acked.last().unwrap().0;
    assert_eq!(ack["id"], last + 1);
    stop(&mut s, "KILL");
    drop(s);
    let s = start(dir.path(), &[]);
    let mut c = connect_as(&s, "c");
    join(&mut c, "r", json!({}));
    let all = all_history(&mut c, "r", last + 2);
    let stored: Vec<(u64, String)> = all
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(stored.len(), acked.len() + 1);
    assert_eq!(&stored[..acked.len()], &acked[..]);
    drop(c);
    drop(s);
    drop(fs);
}

/// Posts `n` messages at once (all sent, then every acknowledgement read):
/// message `i` says `text(i)`.
fn post_batch(ws: &mut Ws, room: &str, n: u64, text: impl Fn(u64) -> String) {
    for i in 1..=n {
        send(
            ws,
            json!({"type":"message","room":room,"text":text(i),"ref":"b"}),
        );
    }
    for i in 1..=n {
        let v = recv_type(ws, "message");
        assert_eq!(v["text"], text(i), "{v}");
    }
}

fn page(ws: &mut Ws, req: Value) -> (Vec<u64>, Value) {
    send(ws, req);
    let v = recv_type(ws, "history");
    (ids(&v, "messages"), v)
}

/// The `history` extensions `after` and `around` (docs/protocol.md) and
/// `search` with `context`, on 300 messages: with a store the older pages
/// come from disk (memory holds the newest 100), without one from memory.
fn pages_forward_and_around(s: &Server) {
    let mut a = connect_as(s, "a");
    join(&mut a, "r", json!({}));
    let text = |i: u64| match i {
        1 | 150 | 250 | 300 => format!("needle {i}"),
        _ => format!("m{i}"),
    };
    post_batch(&mut a, "r", 300, text);
    let range = |lo: u64, hi: u64| (lo..=hi).collect::<Vec<_>>();

    // after: the oldest `limit` newer than `after`, oldest first.
    let (got, v) = page(
        &mut a,
        json!({"type":"history","room":"r","after":0,"limit":100,"ref":"f"}),
    );
    assert_eq!(got, range(1, 100));
    assert_eq!(
        (&v["complete"], &v["latest"], &v["ref"]),
        (&json!(true), &json!(false), &json!("f"))
    );
    assert_eq!(v["messages"][49]["text"], "m50");
    let (got, v) = page(
        &mut a,
        json!({"type":"history","room":"r","after":100,"limit":100}),
    );
    assert_eq!(got, range(101, 200));
    assert_eq!(
        (&v["complete"], &v["latest"]),
        (&json!(false), &json!(false))
    );
    let (got, v) = page(&mut a, json!({"type":"history","room":"r","after":250}));
    assert_eq!(got, range(251, 300), "the default limit is 50");
    assert_eq!(v["latest"], true);
    let (got, v) = page(&mut a, json!({"type":"history","room":"r","after":300}));
    assert!(got.is_empty());
    assert_eq!(v["latest"], true);

    // around: centred, one side making up for the other near the ends;
    // across the edge of the in-memory window too (200 | 201).
    for (around, limit, lo, hi, complete, latest) in [
        (150, 11, 145, 155, false, false),
        (200, 10, 195, 204, false, false),
        (2, 10, 1, 10, true, false),
        (299, 10, 291, 300, false, true),
        (1, 1, 1, 1, true, false),
        (5000, 3, 298, 300, false, true),
    ] {
        let (got, v) = page(
            &mut a,
            json!({"type":"history","room":"r","around":around,"limit":limit}),
        );
        assert_eq!(got, range(lo, hi), "around {around} limit {limit}: {v}");
        assert_eq!(
            (&v["complete"], &v["latest"]),
            (&json!(complete), &json!(latest)),
            "around {around} limit {limit}"
        );
    }
    let (_, v) = page(
        &mut a,
        json!({"type":"history","room":"r","around":150,"limit":3}),
    );
    assert_eq!(v["messages"][1]["text"], "needle 150");

    // The contract's `before` answers exactly as before: no `latest`.
    let (got, v) = page(&mut a, json!({"type":"history","room":"r","before":3}));
    assert_eq!(got, range(1, 2));
    assert!(v.get("latest").is_none(), "{v}");

    // One of before, after, around; the second one given is refused.
    for (req, field) in [
        (
            json!({"type":"history","room":"r","before":5,"after":1,"ref":"e"}),
            "after",
        ),
        (
            json!({"type":"history","room":"r","after":1,"around":5,"ref":"e"}),
            "around",
        ),
        (
            json!({"type":"history","room":"r","before":5,"around":5,"ref":"e"}),
            "around",
        ),
        (
            json!({"type":"history","room":"r","after":-1,"ref":"e"}),
            "after",
        ),
        (
            json!({"type":"history","room":"r","after":1.5,"ref":"e"}),
            "after",
        ),
        (
            json!({"type":"history","room":"r","around":0,"ref":"e"}),
            "around",
        ),
        (
            json!({"type":"history","room":"r","after":null,"ref":"e"}),
            "before",
        ),
        (
            json!({"type":"history","room":"r","after":1,"limit":101,"ref":"e"}),
            "limit",
        ),
    ] {
        send(&mut a, req.clone());
        let e = recv(&mut a);
        assert_eq!(
            (&e["code"], &e["ref"]),
            (&json!("invalid"), &json!("e")),
            "{req}: {e}"
        );
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains(&format!("\"{field}\"")),
            "{req}: {e}"
        );
    }

    // search with context: each hit with its kept neighbours, oldest first,
    // clipped at the room's ends.
    send(
        &mut a,
        json!({"type":"search","room":"r","query":"needle","context":2,"ref":"s"}),
    );
    let v = recv_type(&mut a, "search");
    assert_eq!(ids(&v, "messages"), [300, 250, 150, 1], "{v}");
    let hits = v["messages"].as_array().unwrap();
    let ctx = |h: &Value, f: &str| ids(h, f);
    assert_eq!(ctx(&hits[0], "context_before"), [298, 299]);
    assert_eq!(ctx(&hits[0], "context_after"), Vec::<u64>::new());
    assert_eq!(ctx(&hits[1], "context_before"), [248, 249]);
    assert_eq!(ctx(&hits[1], "context_after"), [251, 252]);
    assert_eq!(ctx(&hits[2], "context_before"), [148, 149]);
    assert_eq!(hits[2]["context_after"][0]["text"], "m151");
    assert_eq!(hits[2]["context_after"][0]["type"], "message");
    assert_eq!(ctx(&hits[3], "context_before"), Vec::<u64>::new());
    assert_eq!(ctx(&hits[3], "context_after"), [2, 3]);
    // Without context, the answer is as it was.
    send(
        &mut a,
        json!({"type":"search","room":"r","query":"needle","limit":1}),
    );
    let v = recv_type(&mut a, "search");
    assert!(v["messages"][0].get("context_before").is_none(), "{v}");
    for context in [json!(4), json!(-1), json!("2")] {
        send(
            &mut a,
            json!({"type":"search","room":"r","query":"needle","context":context,"ref":"c"}),
        );
        let e = recv(&mut a);
        assert_eq!(e["code"], "invalid", "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("\"context\""),
            "{e}"
        );
    }
}

#[test]
fn history_pages_forward_and_around_from_the_store() {
    let dir = TempDir::new("around");
    let mut s = start(dir.path(), &[]);
    pages_forward_and_around(&s);
    // After a restart everything but the newest 100 is read from disk.
    stop(&mut s, "KILL");
    drop(s);
    let s = start(dir.path(), &[]);
    let mut b = connect_as(&s, "b");
    join(&mut b, "r", json!({}));
    let (got, v) = page(
        &mut b,
        json!({"type":"history","room":"r","around":150,"limit":5}),
    );
    assert_eq!(got, (148..=152).collect::<Vec<_>>(), "{v}");
}

#[test]
fn history_pages_forward_and_around_in_memory() {
    pages_forward_and_around(&Server::start(&["--rate-burst", "0", "--no-persist"]));
}

/// What a client sees of a room of 1005 messages on a server started with
/// `--history 1000`, in the order asked, without `ts` and `epoch` (they
/// differ between runs). Each answer is checked against
/// ../shared/chat-protocol.md on the way.
fn answers_with_history_1000(s: &Server) -> Vec<Value> {
    let mut a = connect_as(s, "a");
    join(&mut a, "r", json!({}));
    post_batch(&mut a, "r", 1005, |i| format!("m{i}"));
    let mut b = connect_as(s, "b");
    let mut seen = Vec::new();
    let mut ask = |b: &mut Ws, req: Value, ty: &str, list: &str, want: Vec<u64>, complete: bool| {
        send(b, req.clone());
        let mut v = recv_type(b, ty);
        assert_eq!(ids(&v, list), want, "{req}");
        assert_eq!(v["complete"], complete, "{req}");
        assert_eq!(v["ref"], "q", "{req}");
        let epoch = v["epoch"].clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("epoch");
        }
        for m in v[list].as_array_mut().unwrap() {
            m.as_object_mut().unwrap().remove("ts");
        }
        seen.push(v);
        epoch
    };
    let r = |lo: u64, hi: u64| (lo..=hi).collect::<Vec<u64>>();
    // joined without since: the newest 50 kept, complete false (older kept).
    let epoch = ask(
        &mut b,
        json!({"type":"join","room":"r","ref":"q"}),
        "joined",
        "history",
        r(956, 1005),
        false,
    );
    let join_since =
        |since: u64| json!({"type":"join","room":"r","since":since,"epoch":epoch,"ref":"q"});
    // since in the current epoch: the newest 100 after it; complete when
    // they are all of the messages after it.
    ask(
        &mut b,
        join_since(5),
        "joined",
        "history",
        r(906, 1005),
        false,
    );
    ask(
        &mut b,
        join_since(905),
        "joined",
        "history",
        r(906, 1005),
        true,
    );
    ask(
        &mut b,
        join_since(1004),
        "joined",
        "history",
        r(1005, 1005),
        true,
    );
    ask(&mut b, join_since(1005), "joined", "history", vec![], true);
    ask(&mut b, join_since(9999), "joined", "history", vec![], true);
    // Another epoch: the newest 50.
    ask(
        &mut b,
        json!({"type":"join","room":"r","since":5,"epoch":"other","ref":"q"}),
        "joined",
        "history",
        r(956, 1005),
        false,
    );
    let hist = |before: u64, limit: Option<u64>| {
        let mut h = json!({"type":"history","room":"r","before":before,"ref":"q"});
        if let Some(l) = limit {
            h["limit"] = json!(l);
        }
        h
    };
    // history: the newest `limit` (default 50) below `before`; exactly the
    // 1000 newest are kept, so paging back ends at 6, complete.
    ask(
        &mut b,
        hist(1006, None),
        "history",
        "messages",
        r(956, 1005),
        false,
    );
    ask(
        &mut b,
        hist(99_999, Some(100)),
        "history",
        "messages",
        r(906, 1005),
        false,
    );
    ask(
        &mut b,
        hist(206, Some(100)),
        "history",
        "messages",
        r(106, 205),
        false,
    );
    ask(
        &mut b,
        hist(106, Some(100)),
        "history",
        "messages",
        r(6, 105),
        true,
    );
    ask(
        &mut b,
        hist(50, Some(100)),
        "history",
        "messages",
        r(6, 49),
        true,
    );
    // Nothing kept below 6: empty and complete (the contract's `complete`:
    // no older kept message exists).
    ask(
        &mut b,
        hist(6, Some(100)),
        "history",
        "messages",
        vec![],
        true,
    );
    ask(&mut b, hist(1, None), "history", "messages", vec![], true);
    seen
}

/// `--history 1000`, the protocol's floor, answers exactly as the shared
/// contract says, and the same with the store as in memory.
#[test]
fn history_1000_answers_as_the_contract_says() {
    let dir = TempDir::new("h1000");
    let stored = answers_with_history_1000(&start(dir.path(), &["--history", "1000"]));
    let memory = answers_with_history_1000(&Server::start(&[
        "--rate-burst",
        "0",
        "--no-persist",
        "--history",
        "1000",
    ]));
    assert_eq!(stored, memory);
}

/// Below the floor, the server refuses to start and says why.
#[test]
fn history_below_the_protocols_floor_is_refused() {
    for low in ["999", "0"] {
        let (st, err) = Server::refuse(&["--no-persist", "--history", low]);
        assert!(!st.success());
        assert!(
            err.contains("--history") && err.contains("below 1000"),
            "{err}"
        );
    }
}
