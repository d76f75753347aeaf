//! The store contract, run against both implementations, and the SQLite
//! file's versions and refusals.

use std::path::PathBuf;

use super::memory::MemoryStore;
use super::sqlite::{self, Options, SqliteStore};
use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "wschat-store-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn room(name: &str, epoch: &str) -> Op<'static> {
    let (name, epoch) = (leak(name), leak(epoch));
    Op::PutRoom {
        name,
        epoch,
        next_id: 1,
        last_active: 5,
    }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn msg(room: &str, id: u64, text: &str) -> Op<'static> {
    Op::PutMessage {
        room: leak(room),
        id,
        from: "al",
        text: leak(text),
        ts: 100 + id,
        author: "",
        reply: None,
        image: None,
    }
}

fn texts(s: &mut dyn Store, room: &str) -> Vec<(u64, String)> {
    s.messages(room, 0, u64::MAX, usize::MAX >> 1)
        .unwrap()
        .into_iter()
        .map(|m| (m.id, m.text))
        .collect()
}

fn contract(s: &mut dyn Store) {
    s.commit(&[room("a", "e1"), msg("a", 1, "x"), msg("a", 2, "y")])
        .unwrap();
    s.commit(&[room("b", "e2"), msg("b", 1, "z"), msg("a", 3, "w")])
        .unwrap();
    let mut rooms = s.rooms().unwrap();
    rooms.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(
        rooms[0],
        RoomRow {
            name: "a".into(),
            epoch: "e1".into(),
            next_id: 4,
            first_id: 1,
            last_active: 103,
        }
    );
    assert_eq!(rooms[1].next_id, 2);
    // Ranges: newest `limit` of `from..to`, oldest first.
    let page = s.messages("a", 1, 4, 2).unwrap();
    assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(page[0].from, "al");
    assert_eq!(page[0].ts, 102);
    assert!(s.messages("nowhere", 0, 9, 9).unwrap().is_empty());
    // A touch changes only the activity; unknown rooms are ignored.
    s.commit(&[
        Op::Touch {
            room: "b",
            last_active: 999,
        },
        Op::Touch {
            room: "zz",
            last_active: 1,
        },
    ])
    .unwrap();
    let b = s
        .rooms()
        .unwrap()
        .into_iter()
        .find(|r| r.name == "b")
        .unwrap();
    assert_eq!(b.last_active, 999);
    // A room stored again (forgotten and created anew) starts empty.
    s.commit(&[
        Op::DeleteRoom { room: "b" },
        room("b", "e3"),
        msg("b", 1, "new"),
    ])
    .unwrap();
    assert_eq!(texts(s, "b"), [(1, "new".to_string())]);
    s.commit(&[Op::DeleteRoom { room: "a" }]).unwrap();
    assert!(texts(s, "a").is_empty());
    assert_eq!(s.rooms().unwrap().len(), 1);
}

fn search(s: &mut dyn Store) {
    s.commit(&[
        room("a", "e"),
        msg("a", 1, "Hello world"),
        msg("a", 2, "nothing here"),
        msg("a", 3, "hello again, WORLD"),
        msg("a", 4, "helicopter"),
        room("b", "e"),
        msg("b", 1, "hello world"),
    ])
    .unwrap();
    let ids = |v: Vec<MessageRow>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
    // Every word, as a prefix, ignoring case; newest first; this room only.
    assert_eq!(
        ids(s.search("a", "hello world", u64::MAX, 10).unwrap()),
        [3, 1]
    );
    assert_eq!(ids(s.search("a", "hel", u64::MAX, 10).unwrap()), [4, 3, 1]);
    assert_eq!(ids(s.search("a", "hel", 4, 1).unwrap()), [3]);
    assert_eq!(
        ids(s.search("a", "zebra", u64::MAX, 10).unwrap()),
        [] as [u64; 0]
    );
    // Deleted messages are no longer found.
    s.commit(&[Op::DeleteRoom { room: "b" }]).unwrap();
    assert!(s.search("b", "hello", u64::MAX, 10).unwrap().is_empty());
}

/// Messages are indexed for search by their commit, a run at a time
/// (migration 9): one edited, deleted or trimmed in the same commit that
/// inserted it leaves the index as if each had been committed alone, and
/// FTS5's own integrity check agrees.
#[test]
fn sqlite_search_index_follows_a_commits_own_edits_and_deletes() {
    let d = Dir::new("fts-batch");
    let mut s = SqliteStore::open(
        &d.0,
        Options {
            limits: Some(Limits {
                per_room: 3,
                max_bytes: 0,
            }),
            ..Options::default()
        },
    )
    .unwrap();
    let ids = |v: Vec<MessageRow>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
    s.commit(&[
        room("a", "e"),
        msg("a", 1, "apple one"),
        msg("a", 2, "banana two"),
        Op::DeleteMessage { room: "a", id: 1 },
        Op::EditMessage {
            room: "a",
            id: 2,
            text: "cherry two",
            edited: 7,
            excerpt: "cherry two",
        },
        msg("a", 3, "apple three"),
        msg("a", 4, "apple four"),
        msg("a", 5, "apple five"),
    ])
    .unwrap();
    // Retention (3 per room) dropped 1 and 2 in the same commit.
    assert_eq!(
        ids(s.search("a", "apple", u64::MAX, 10).unwrap()),
        [5, 4, 3]
    );
    assert!(s.search("a", "banana", u64::MAX, 10).unwrap().is_empty());
    assert!(s.search("a", "cherry", u64::MAX, 10).unwrap().is_empty());
    s.commit(&[msg("a", 6, "date six"), msg("a", 7, "date seven")])
        .unwrap();
    assert_eq!(ids(s.search("a", "date", u64::MAX, 10).unwrap()), [7, 6]);
    drop(s);
    let c = rusqlite::Connection::open(d.0.join(sqlite::DB_FILE)).unwrap();
    c.execute_batch("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
        .unwrap();
}

#[test]
fn memory_store_search() {
    search(&mut MemoryStore::new(Limits {
        per_room: 100,
        max_bytes: 0,
    }));
}

#[test]
fn sqlite_store_search() {
    let d = Dir::new("search");
    let mut s = SqliteStore::open(&d.0, Options::default()).unwrap();
    search(&mut s);
    // Words that are FTS5 syntax are only words.
    for q in ["\"", "AND", "a OR b", "NEAR(x y)", "*", "-", "col:x", "^x"] {
        assert!(s.search("a", q, u64::MAX, 10).is_ok(), "{q}");
    }
}

#[test]
fn memory_store_keeps_the_contract() {
    contract(&mut MemoryStore::new(Limits {
        per_room: 100,
        max_bytes: 0,
    }));
}

#[test]
fn sqlite_store_keeps_the_contract() {
    let d = Dir::new("contract");
    contract(&mut SqliteStore::open(&d.0, Options::default()).unwrap());
}

fn retention(s: &mut dyn Store) {
    // Per room: at most 3.
    let ops: Vec<Op<'_>> = std::iter::once(room("a", "e"))
        .chain((1..=5).map(|i| msg("a", i, "0123456789")))
        .collect();
    let t = s.commit(&ops).unwrap();
    assert_eq!(t.rooms, [("a".to_string(), 3)]);
    assert_eq!(
        texts(s, "a").iter().map(|m| m.0).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    // The disk budget: 3 rows of 2 + 10 + 64 bytes fit in 250; a fourth
    // (in another room) evicts the server-wide oldest, a's id 3.
    let t = s
        .commit(&[room("b", "e"), msg("b", 1, "0123456789")])
        .unwrap();
    assert_eq!(t.rooms, [("a".to_string(), 4)]);
    assert_eq!(
        texts(s, "a").iter().map(|m| m.0).collect::<Vec<_>>(),
        [4, 5]
    );
    let a = s
        .rooms()
        .unwrap()
        .into_iter()
        .find(|r| r.name == "a")
        .unwrap();
    assert_eq!((a.first_id, a.next_id), (4, 6));
}

const LIMITS: Limits = Limits {
    per_room: 3,
    max_bytes: 250,
};

#[test]
fn memory_store_retention() {
    retention(&mut MemoryStore::new(LIMITS));
}

#[test]
fn sqlite_store_retention() {
    let d = Dir::new("retention");
    let opts = Options {
        limits: Some(LIMITS),
        ..Options::default()
    };
    retention(&mut SqliteStore::open(&d.0, opts.clone()).unwrap());
    // The budget's count survives a reopen.
    let mut s = SqliteStore::open(&d.0, opts).unwrap();
    s.commit(&[msg("b", 2, "0123456789")]).unwrap();
    assert_eq!(texts(&mut s, "a").len(), 1);
}

#[test]
fn a_failed_commit_changes_nothing() {
    let d = Dir::new("fault");
    let fault = d.0.with_extension("fault");
    let mut s = SqliteStore::open(
        &d.0,
        Options {
            fault_file: Some(fault.clone()),
            ..Options::default()
        },
    )
    .unwrap();
    s.commit(&[room("a", "e"), msg("a", 1, "kept")]).unwrap();
    std::fs::write(&fault, b"").unwrap();
    assert!(matches!(
        s.commit(&[msg("a", 2, "lost"), room("b", "e"), msg("b", 1, "lost")]),
        Err(StoreError::Io(_))
    ));
    // A failed deletion or replacement keeps the room readable.
    assert!(s.commit(&[Op::DeleteRoom { room: "a" }]).is_err());
    assert!(s.commit(&[room("a", "e2")]).is_err());
    std::fs::remove_file(&fault).unwrap();
    assert_eq!(texts(&mut s, "a"), [(1, "kept".to_string())]);
    assert_eq!(s.rooms().unwrap().len(), 1);
    // The id is free again, and a room of the failed commit can be stored.
    s.commit(&[msg("a", 2, "again"), room("b", "e"), msg("b", 1, "b1")])
        .unwrap();
    assert_eq!(texts(&mut s, "a").len(), 2);
    assert_eq!(texts(&mut s, "b").len(), 1);

    let mut m = MemoryStore::new(LIMITS);
    m.commit(&[room("a", "e")]).unwrap();
    m.fail_commits = true;
    assert!(m.commit(&[msg("a", 1, "lost")]).is_err());
    m.fail_commits = false;
    assert!(texts(&mut m, "a").is_empty());
}

/// A file of the first schema version, written the way that version wrote
/// it, is opened, migrated to the current version, and keeps its data.
#[test]
fn a_first_version_file_is_migrated_forward() {
    let d = Dir::new("v1");
    std::fs::create_dir_all(&d.0).unwrap();
    {
        let c = rusqlite::Connection::open(d.0.join(sqlite::DB_FILE)).unwrap();
        c.execute_batch(sqlite::MIGRATIONS[0]).unwrap();
        c.execute_batch(
            "INSERT INTO rooms (id, name, epoch, next_id, last_active, bytes)
                 VALUES (7, 'old', 'ep', 3, 42, 134);
             INSERT INTO messages (room, id, from_nick, text, ts) VALUES
                 (7, 1, 'al', 'one', 10), (7, 2, 'bo', 'two', 11);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let mut s = SqliteStore::open(&d.0, Options::default()).unwrap();
    let v: u32 = rusqlite::Connection::open(d.0.join(sqlite::DB_FILE))
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, sqlite::SCHEMA_VERSION);
    let rooms = s.rooms().unwrap();
    assert_eq!(
        rooms,
        [RoomRow {
            name: "old".into(),
            epoch: "ep".into(),
            next_id: 3,
            first_id: 1,
            last_active: 42,
        }]
    );
    assert_eq!(
        texts(&mut s, "old"),
        [(1, "one".to_string()), (2, "two".to_string())]
    );
    s.commit(&[msg("old", 3, "three")]).unwrap();
    assert_eq!(s.rooms().unwrap()[0].next_id, 4);
    // Messages written before the search index existed are found.
    let found = s.search("old", "two", u64::MAX, 10).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, 2);
}

#[test]
fn files_that_are_not_ours_are_refused() {
    let d = Dir::new("foreign");
    std::fs::create_dir_all(&d.0).unwrap();
    let db = d.0.join(sqlite::DB_FILE);
    // A newer schema than this build knows.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA user_version = 999;").unwrap();
    }
    let e = SqliteStore::open(&d.0, Options::default()).err().unwrap();
    assert!(e.to_string().contains("newer"), "{e}");
    std::fs::remove_file(&db).unwrap();
    // Some other program's database.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE accounts (x);").unwrap();
    }
    let e = SqliteStore::open(&d.0, Options::default()).err().unwrap();
    assert!(e.to_string().contains("something else"), "{e}");
}

#[test]
fn one_store_per_directory() {
    let d = Dir::new("lock");
    let _a = SqliteStore::open(&d.0, Options::default()).unwrap();
    let e = SqliteStore::open(&d.0, Options::default()).err().unwrap();
    assert!(e.to_string().contains("in use"), "{e}");
}

fn accounts(s: &mut dyn Store) {
    let acct = |name: &'static str, hash: &'static str| Op::PutAccount {
        name,
        hash,
        op: false,
        created: 7,
    };
    s.commit(&[
        acct("Alice", "h1"),
        acct("bob", "h2"),
        Op::PutSession {
            token_hash: b"t1",
            name: "Alice",
            created: 8,
        },
        Op::PutSession {
            token_hash: b"t2",
            name: "alice",
            created: 9,
        },
        Op::PutSession {
            token_hash: b"t3",
            name: "bob",
            created: 10,
        },
    ])
    .unwrap();
    let mut a = s.accounts().unwrap();
    a.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(a.len(), 2);
    assert_eq!((a[0].name.as_str(), a[0].hash.as_str()), ("Alice", "h1"));
    let tokens = |s: &mut dyn Store| -> Vec<Vec<u8>> {
        s.sessions()
            .unwrap()
            .into_iter()
            .map(|r| r.token_hash)
            .collect()
    };
    assert_eq!(tokens(s), [b"t1".to_vec(), b"t2".to_vec(), b"t3".to_vec()]);
    // Names match ignoring case.
    s.commit(&[
        Op::SetPassword {
            name: "ALICE",
            hash: "h9",
        },
        Op::DeleteSession { token_hash: b"t3" },
    ])
    .unwrap();
    let a = s.accounts().unwrap();
    assert!(
        a.iter().any(|r| r.name == "Alice" && r.hash == "h9"),
        "{a:?}"
    );
    s.commit(&[Op::DeleteSessions { name: "aLiCe" }]).unwrap();
    assert!(tokens(s).is_empty());
    // A password for no account is an error, and the commit changes nothing.
    assert!(
        s.commit(&[
            Op::DeleteSessions { name: "bob" },
            Op::SetPassword {
                name: "nobody",
                hash: "x"
            }
        ])
        .is_err()
    );
    assert_eq!(s.accounts().unwrap().len(), 2);
}

#[test]
fn memory_store_accounts() {
    accounts(&mut MemoryStore::new(Limits {
        per_room: 10,
        max_bytes: 0,
    }));
}

#[test]
fn sqlite_store_accounts() {
    let d = Dir::new("accounts");
    accounts(&mut SqliteStore::open(&d.0, Options::default()).unwrap());
    // And they are there after reopening.
    let mut s = SqliteStore::open(&d.0, Options::default()).unwrap();
    assert_eq!(s.accounts().unwrap().len(), 2);
}

/// Read positions: forward only, ignored for a room not stored, gone with
/// their room (and with a room replaced under the same name).
fn reads(s: &mut dyn Store) {
    let read = |room: &'static str, account: &'static str, id| Op::PutRead { room, account, id };
    s.commit(&[
        room("r", "e1"),
        msg("r", 1, "a"),
        msg("r", 2, "b"),
        room("q", "e2"),
        msg("q", 1, "c"),
    ])
    .unwrap();
    s.commit(&[
        read("r", "al", 2),
        read("r", "al", 1),
        read("q", "bo", 1),
        read("nope", "al", 3),
    ])
    .unwrap();
    let mut got: Vec<(String, String, u64)> = s
        .reads()
        .unwrap()
        .into_iter()
        .map(|r| (r.room, r.account, r.id))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("q".into(), "bo".into(), 1), ("r".into(), "al".into(), 2)]
    );
    s.commit(&[Op::DeleteRoom { room: "q" }, room("r", "e3")])
        .unwrap();
    assert!(s.reads().unwrap().is_empty());
}

#[test]
fn memory_store_reads() {
    reads(&mut MemoryStore::new(Limits {
        per_room: 10,
        max_bytes: 0,
    }));
}

#[test]
fn sqlite_store_reads() {
    let d = Dir::new("reads");
    reads(&mut SqliteStore::open(&d.0, Options::default()).unwrap());
}

/// The audit log keeps its newest `audit_rows` entries, whether they come
/// one per commit or several in one.
fn audit_cap(s: &mut dyn Store) {
    let entry = |ts: u64| Op::Audit {
        ts,
        actor: "boss",
        action: "ban",
        room: "r",
        target: "t",
        detail: "",
    };
    for ts in 1..=4 {
        s.commit(&[entry(ts)]).unwrap();
    }
    s.commit(&[entry(5), entry(6)]).unwrap();
    let kept: Vec<u64> = s.audit(100).unwrap().iter().map(|a| a.ts).collect();
    assert_eq!(kept, [6, 5, 4], "newest first, three kept");
}

#[test]
fn memory_store_audit_cap() {
    audit_cap(&mut MemoryStore::new(LIMITS).with_audit_rows(3));
}

#[test]
fn sqlite_store_audit_cap() {
    let d = Dir::new("audit");
    let opts = || Options {
        audit_rows: 3,
        ..Options::default()
    };
    audit_cap(&mut SqliteStore::open(&d.0, opts()).unwrap());
    let mut s = SqliteStore::open(&d.0, opts()).unwrap();
    assert_eq!(s.audit(100).unwrap().len(), 3, "after reopening");
}

/// One ban per room and nick: a new one replaces it (within one commit
/// too), `DeleteBan` lifts it, and other rooms' bans of the nick stay.
fn bans(s: &mut dyn Store) {
    let ban = |room: &'static str, until: u64| Op::PutBan {
        room,
        nick: "troll",
        account: "",
        ip: "",
        until,
        by: "boss",
        reason: "",
        created: 1,
    };
    let held = |s: &mut dyn Store| -> Vec<(String, u64)> {
        let mut v: Vec<_> = s
            .bans(0)
            .unwrap()
            .into_iter()
            .map(|b| (b.room, b.until))
            .collect();
        v.sort();
        v
    };
    s.commit(&[ban("r", 0), ban("", 0)]).unwrap();
    s.commit(&[ban("r", 5), ban("r", 9)]).unwrap();
    assert_eq!(held(s), [(String::new(), 0), ("r".into(), 9)]);
    s.commit(&[Op::DeleteBan {
        room: "r",
        nick: "troll",
    }])
    .unwrap();
    assert_eq!(held(s), [(String::new(), 0)], "the server ban stays");
    s.commit(&[
        ban("r", 7),
        Op::DeleteBan {
            room: "r",
            nick: "troll",
        },
        ban("r", 8),
    ])
    .unwrap();
    assert_eq!(held(s), [(String::new(), 0), ("r".into(), 8)], "in order");
}

#[test]
fn memory_store_bans() {
    bans(&mut MemoryStore::new(LIMITS));
}

#[test]
fn sqlite_store_bans() {
    let d = Dir::new("bans");
    bans(&mut SqliteStore::open(&d.0, Options::default()).unwrap());
}
