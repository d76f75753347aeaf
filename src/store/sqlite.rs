//! The [`Store`] on SQLite (rusqlite, bundled): one file `wschat.db` in the
//! data directory, WAL journal, one transaction per commit. The schema and
//! its versions are in docs/storage.md; [`MIGRATIONS`] brings an older file
//! forward on open.
//!
//! Durability: with `synchronous=NORMAL` (the default) a commit is in the
//! WAL, in the OS, when it returns: it survives the process being killed,
//! not a power cut. `fsync: true` (`--fsync`) uses `synchronous=FULL`, so
//! each commit is on the disk before it returns.
//!
//! Checkpoints (copying the WAL back into the database file, where SQLite
//! syncs the disk in either mode) are not run inside a commit, as SQLite's
//! auto-checkpoint does, but by the caller between commits
//! ([`Store::checkpoint`]), on the same connection.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    AccountRow, AuditRow, BanRow, Limits, MessageRow, MuteRow, Op, ReadRow, Result, RoomRow,
    RoomSettings, SessionRow, Store, StoreError, Trimmed, UploadRow, row_bytes,
};

/// The database file inside the data directory.
pub const DB_FILE: &str = "wschat.db";
/// Held with an exclusive `flock` for as long as a server uses the directory.
pub const LOCK_FILE: &str = "wschat.lock";

/// Schema migrations: `MIGRATIONS[n]` takes a file from `user_version` n to
/// n + 1. Append only; never edit a released step.
pub const MIGRATIONS: &[&str] = &[
    // 0 -> 1: rooms and their messages.
    "CREATE TABLE rooms (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        epoch       TEXT NOT NULL,
        next_id     INTEGER NOT NULL,
        last_active INTEGER NOT NULL,
        bytes       INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE messages (
        seq       INTEGER PRIMARY KEY,
        room      INTEGER NOT NULL REFERENCES rooms(id),
        id        INTEGER NOT NULL,
        from_nick TEXT NOT NULL,
        text      TEXT NOT NULL,
        ts        INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX messages_room_id ON messages(room, id);",
    // 1 -> 2: full-text search (FTS5) over the messages' text, kept in step
    // by triggers; the existing messages are indexed on the way.
    "CREATE VIRTUAL TABLE messages_fts USING fts5(text, content='messages', content_rowid='seq', columnsize=0);
    INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, text) VALUES (new.seq, new.text);
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.seq, old.text);
    END;",
    // 2 -> 3: accounts (Argon2id PHC strings) and their sessions (BLAKE2b
    // hashes of the tokens, never the tokens).
    "CREATE TABLE accounts (
        name    TEXT NOT NULL UNIQUE COLLATE NOCASE,
        hash    TEXT NOT NULL,
        op      INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL
    );
    CREATE TABLE sessions (
        token_hash BLOB PRIMARY KEY,
        account    TEXT NOT NULL COLLATE NOCASE,
        created    INTEGER NOT NULL
    );
    CREATE INDEX sessions_account ON sessions(account);",
    // 3 -> 4: moderation: bans (room '' = the whole server; until 0 = for
    // good) and the audit log.
    "CREATE TABLE bans (
        room    TEXT NOT NULL,
        nick    TEXT NOT NULL,
        account TEXT NOT NULL,
        ip      TEXT NOT NULL,
        until   INTEGER NOT NULL,
        by      TEXT NOT NULL,
        reason  TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TABLE audit (
        seq    INTEGER PRIMARY KEY,
        ts     INTEGER NOT NULL,
        actor  TEXT NOT NULL,
        action TEXT NOT NULL,
        room   TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TABLE moderators (
        room    TEXT NOT NULL,
        account TEXT NOT NULL,
        PRIMARY KEY (room, account)
    );
    CREATE TABLE topics (
        room  TEXT PRIMARY KEY,
        topic TEXT NOT NULL
    );",
    // 4 -> 5: the account that created each room (its owner, who may
    // appoint moderators), and mutes and slow mode, which a restart used to
    // lift.
    "CREATE TABLE room_creators (
        room    TEXT PRIMARY KEY,
        account TEXT NOT NULL
    );
    CREATE TABLE mutes (
        room    TEXT NOT NULL,
        nick    TEXT NOT NULL,
        account TEXT NOT NULL,
        until   INTEGER NOT NULL,
        PRIMARY KEY (room, nick, account)
    );
    CREATE TABLE slow_mode (
        room        TEXT PRIMARY KEY,
        interval_ms INTEGER NOT NULL
    );",
    // 5 -> 6: replies, edits and reactions (issue 13): who may edit or
    // delete a message, the message it answers with a quote of it, when it
    // was last edited; reactions by message row, gone with their message.
    "ALTER TABLE messages ADD COLUMN author TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN reply_to INTEGER;
    ALTER TABLE messages ADD COLUMN reply_from TEXT;
    ALTER TABLE messages ADD COLUMN reply_text TEXT;
    ALTER TABLE messages ADD COLUMN edited INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX messages_reply ON messages(room, reply_to) WHERE reply_to IS NOT NULL;
    CREATE TABLE reactions (
        seq   INTEGER NOT NULL,
        emoji TEXT NOT NULL,
        who   TEXT NOT NULL COLLATE NOCASE,
        PRIMARY KEY (seq, emoji, who)
    );
    CREATE TRIGGER messages_reactions_delete AFTER DELETE ON messages BEGIN
        DELETE FROM reactions WHERE seq = old.seq;
    END;",
    // 6 -> 7: uploaded images (extension: images), their bytes in the row;
    // a message names the one it shows. A message dropped by retention
    // takes its image with it (the trigger); a tombstone or an expired
    // upload is deleted by the chat's own records.
    "CREATE TABLE uploads (
        id       INTEGER PRIMARY KEY,
        owner    TEXT NOT NULL,
        mime     TEXT NOT NULL,
        bytes    INTEGER NOT NULL,
        created  INTEGER NOT NULL,
        room     TEXT,
        msg      INTEGER,
        data     BLOB NOT NULL
    );
    ALTER TABLE messages ADD COLUMN image INTEGER;
    CREATE TRIGGER uploads_message_gone AFTER DELETE ON messages
        WHEN old.image IS NOT NULL BEGIN
        DELETE FROM uploads WHERE id = old.image;
    END;",
    // 7 -> 8: read positions, per account and room (DM conversations are
    // rooms too); deleted with their room.
    "CREATE TABLE reads (
        account TEXT NOT NULL,
        room    INTEGER NOT NULL REFERENCES rooms(id),
        id      INTEGER NOT NULL,
        PRIMARY KEY (account, room)
    ) WITHOUT ROWID;
    CREATE INDEX reads_room ON reads(room);",
    // 8 -> 9: new messages are indexed for search by the commit, with one
    // statement for each run of inserted messages, not by a trigger per
    // row: FTS5 writes its pending terms to disk as a new segment (and
    // merges segments) at every statement savepoint, so the trigger wrote a
    // segment per message, which made a commit of 32 messages cost 80% of a
    // broadcast's instructions (docs/benchmarks.md). Deletions still go
    // through `messages_fts_delete`.
    "DROP TRIGGER messages_fts_insert;",
    // 9 -> 10: a ban replaces the nick's ban in its room and `unban`
    // deletes it (`DELETE_BAN`, once per ban and unban): found by this
    // index, not by a pass over every ban ever given.
    "CREATE INDEX bans_room_nick ON bans(room, nick);",
];

/// The ban of a nick in a room ("": the server), before a new one of the
/// nick (one per room and nick) and for `unban`.
const DELETE_BAN: &str = "DELETE FROM bans WHERE room = ?1 AND nick = ?2";

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `synchronous=FULL`: every commit reaches the disk before it returns.
    pub fsync: bool,
    pub limits: Option<Limits>,
    /// The audit log keeps its newest this many rows (older ones are
    /// deleted as new ones come); 0: every row.
    pub audit_rows: u64,
    /// Fault injection for tests: while this file exists, every commit
    /// fails after its writes (which are rolled back).
    pub fault_file: Option<PathBuf>,
}

pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// Room name -> row id, for every stored room.
    ids: HashMap<String, i64>,
    /// Sum of `rooms.bytes`.
    bytes: u64,
    limits: Limits,
    audit_rows: u64,
    fault_file: Option<PathBuf>,
    /// The WAL's size in pages after the last commit, from the WAL hook.
    wal_pages: Arc<AtomicI32>,
    /// Holds the directory's lock while open.
    _lock: File,
}

/// WAL pages (4 KiB) past which a checkpoint is due: SQLite's own
/// auto-checkpoint threshold. Each checkpoint syncs the disk twice (the
/// WAL, then the database file).
const CHECKPOINT_PAGES: i32 = 1000;

/// Past this many WAL pages a commit checkpoints inline after all: a safety
/// net for a caller that never calls [`Store::checkpoint`] (64 MiB).
const INLINE_CHECKPOINT_PAGES: i32 = 16_384;

/// Replaces SQLite's auto-checkpoint, which copied the WAL into the
/// database and synced both inside the commit that passed 1000 pages: that
/// loop turn's messages, and the turns behind it, waited for two disk syncs
/// and the copy (the p99 of a steady broadcast). The hook, run after each
/// commit with the WAL's size, only notes the size; the server checkpoints
/// after the turn's output is flushed (`Store::checkpoint`). A checkpoint
/// copies what is already durable in the WAL, so a crash at any point of
/// it loses nothing a commit returned; it runs on the one connection, so
/// no commit ever finds the database busy (a checkpoint thread with a
/// connection of its own did: docs/benchmarks.md).
fn hook_wal(conn: &mut Connection, pages: &Arc<AtomicI32>) -> rusqlite::Result<()> {
    let seen = Arc::clone(pages);
    conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, n: i32| {
        seen.store(n, Ordering::Relaxed);
        if n >= INLINE_CHECKPOINT_PAGES {
            // The hook runs after the commit is in the WAL, and an error it
            // returns becomes COMMIT's: the turn's stored messages would be
            // refused to their senders as not stored, and their ids reused
            // (a UNIQUE failure at every later commit). A checkpoint that
            // fails here (busy behind a reader, an I/O error) is only
            // logged; the loop's checkpoint, or the next commit, tries again.
            match wal.checkpoint() {
                Ok(()) => seen.store(0, Ordering::Relaxed),
                Err(e) => log::warn!("store: checkpoint inside a commit failed: {e}"),
            }
        }
        Ok(())
    }))
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Takes the data directory's lock, or says who holds it.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::Open(format!("{}: cannot open: {e}", path.display())))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(StoreError::Open(format!(
                "{}: in use by another running wschat (pid {}); stop it or use another --data-dir",
                dir.display(),
                holder.trim()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(StoreError::Open(format!(
                "{}: cannot lock: {e}",
                path.display()
            )));
        }
    }
    let _ = f.set_len(0);
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}

impl SqliteStore {
    /// Opens (or creates) the store in `dir`, creating the directory when
    /// missing. Refuses a path that is not a directory, a directory another
    /// wschat holds, a file that is not a wschat store or is unreadable, and
    /// a schema newer than this build.
    pub fn open(dir: &Path, opts: Options) -> Result<SqliteStore> {
        let open_err = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Open(format!("{}: {what}: {e}", dir.display()))
        };
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::Open(format!(
                "{}: not a directory (--data-dir must name a directory)",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| open_err("cannot create", &e))?;
        let lock = lock(dir)?;
        let path = dir.join(DB_FILE);
        let shown = path.display().to_string();
        let bad = |e: &dyn std::fmt::Display| {
            StoreError::Open(format!(
                "{shown}: not a readable wschat store ({e}); refusing to start over it"
            ))
        };
        let conn = Connection::open(&path).map_err(|e| bad(&e))?;
        // Reading the header is the first access: a file that is not SQLite
        // fails here ("file is not a database").
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| bad(&e))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| bad(&e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(bad(&format!("journal mode {mode}, WAL refused")));
        }
        let sync = if opts.fsync { "FULL" } else { "NORMAL" };
        conn.execute_batch(&format!(
            "PRAGMA synchronous={sync}; PRAGMA foreign_keys=OFF;"
        ))
        .map_err(|e| bad(&e))?;
        if version == 0 {
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(|e| bad(&e))?;
            if tables > 0 {
                return Err(bad(
                    &"a database of something else (user_version 0 with tables)",
                ));
            }
        }
        if version > SCHEMA_VERSION {
            return Err(bad(&format!(
                "schema version {version} is newer than this wschat's {SCHEMA_VERSION}"
            )));
        }
        let mut store = SqliteStore {
            conn,
            path,
            ids: HashMap::new(),
            bytes: 0,
            limits: opts.limits.unwrap_or(Limits {
                per_room: u64::MAX,
                max_bytes: 0,
            }),
            audit_rows: opts.audit_rows,
            fault_file: opts.fault_file,
            wal_pages: Arc::new(AtomicI32::new(0)),
            _lock: lock,
        };
        store.migrate(version)?;
        store.load_ids().map_err(|e| bad(&e))?;
        hook_wal(&mut store.conn, &store.wal_pages).map_err(|e| bad(&e))?;
        Ok(store)
    }

    /// Applies the migrations past `from`, each in its own transaction with
    /// its `user_version`.
    fn migrate(&mut self, from: u32) -> Result<()> {
        for (v, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let to = v + 1;
            let path = self.path.display().to_string();
            let tx = self
                .conn
                .transaction()
                .map_err(|e| StoreError::Open(format!("{path}: {e}")))?;
            tx.execute_batch(sql)
                .and_then(|()| tx.execute_batch(&format!("PRAGMA user_version={to}")))
                .and_then(|()| tx.commit())
                .map_err(|e| {
                    StoreError::Open(format!(
                        "{path}: migration to schema version {to} failed: {e}"
                    ))
                })?;
            if from > 0 {
                log::info!("{}: migrated to schema version {to}", self.path.display());
            }
        }
        Ok(())
    }

    fn load_ids(&mut self) -> rusqlite::Result<()> {
        let mut st = self.conn.prepare("SELECT id, name, bytes FROM rooms")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut bytes = 0;
        let mut ids = HashMap::new();
        for row in rows {
            let (id, name, b) = row?;
            bytes += uint(b);
            ids.insert(name, id);
        }
        drop(st);
        self.ids = ids;
        self.bytes = bytes;
        Ok(())
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Io(format!("{}: {e}", self.path.display()))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Per-room sums of one commit.
struct Touched {
    name: String,
    max_id: u64,
    max_ts: u64,
    bytes: u64,
}

impl Store for SqliteStore {
    fn checkpoint_due(&self) -> bool {
        self.wal_pages.load(Ordering::Relaxed) >= CHECKPOINT_PAGES
    }

    fn checkpoint(&mut self) -> Result<()> {
        // Passive: nothing else holds the database, so it copies the whole
        // WAL, and the next commit starts the WAL again from its beginning.
        self.wal_pages.store(0, Ordering::Relaxed);
        self.conn
            .wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE)
            .map_err(|e| StoreError::Io(format!("{}: checkpoint: {e}", self.path.display())))?;
        Ok(())
    }

    fn uploads(&mut self) -> Result<Vec<UploadRow>> {
        let run = || -> rusqlite::Result<Vec<UploadRow>> {
            let mut st = self
                .conn
                .prepare("SELECT id, owner, mime, bytes, created, room, msg FROM uploads")?;
            let rows = st.query_map([], |r| {
                let room: Option<String> = r.get(5)?;
                let msg: Option<i64> = r.get(6)?;
                Ok(UploadRow {
                    id: uint(r.get(0)?),
                    owner: r.get(1)?,
                    mime: r.get(2)?,
                    bytes: uint(r.get(3)?),
                    created: uint(r.get(4)?),
                    attached: room.zip(msg.map(uint)),
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    fn upload_data(&mut self, id: u64) -> Result<Option<Vec<u8>>> {
        let run = || -> rusqlite::Result<Option<Vec<u8>>> {
            self.conn
                .prepare_cached("SELECT data FROM uploads WHERE id = ?1")?
                .query_row(params![int(id)], |r| r.get(0))
                .optional()
        };
        run().map_err(|e| self.err(e))
    }

    fn accounts(&mut self) -> Result<Vec<AccountRow>> {
        let run = || -> rusqlite::Result<Vec<AccountRow>> {
            let mut st = self
                .conn
                .prepare("SELECT name, hash, op, created FROM accounts")?;
            let rows = st.query_map([], |r| {
                Ok(AccountRow {
                    name: r.get(0)?,
                    hash: r.get(1)?,
                    op: r.get::<_, i64>(2)? != 0,
                    created: uint(r.get(3)?),
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    fn sessions(&mut self) -> Result<Vec<SessionRow>> {
        let run = || -> rusqlite::Result<Vec<SessionRow>> {
            let mut st = self.conn.prepare(
                "SELECT token_hash, account, created FROM sessions ORDER BY created, rowid",
            )?;
            let rows = st.query_map([], |r| {
                Ok(SessionRow {
                    token_hash: r.get(0)?,
                    name: r.get(1)?,
                    created: uint(r.get(2)?),
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    fn topics(&mut self) -> Result<Vec<(String, String)>> {
        let run = || -> rusqlite::Result<Vec<(String, String)>> {
            let mut st = self.conn.prepare("SELECT room, topic FROM topics")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    fn reads(&mut self) -> Result<Vec<ReadRow>> {
        let run = || -> rusqlite::Result<Vec<ReadRow>> {
            let mut st = self.conn.prepare(
                "SELECT r.name, x.account, x.id FROM reads x JOIN rooms r ON r.id = x.room",
            )?;
            let rows = st.query_map([], |r| {
                Ok(ReadRow {
                    room: r.get(0)?,
                    account: r.get(1)?,
                    id: uint(r.get(2)?),
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    fn moderators(&mut self) -> Result<Vec<(String, String)>> {
        let run = || -> rusqlite::Result<Vec<(String, String)>> {
            let mut st = self.conn.prepare("SELECT room, account FROM moderators")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    fn bans(&mut self, now_ms: u64) -> Result<Vec<BanRow>> {
        let run = || -> rusqlite::Result<Vec<BanRow>> {
            let mut st = self.conn.prepare(
                "SELECT room, nick, account, ip, until, reason FROM bans
                 WHERE until = 0 OR until > ?1",
            )?;
            let rows = st.query_map([int(now_ms)], |r| {
                Ok(BanRow {
                    room: r.get(0)?,
                    nick: r.get(1)?,
                    account: r.get(2)?,
                    ip: r.get(3)?,
                    until: uint(r.get(4)?),
                    reason: r.get(5)?,
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    fn room_settings(&mut self, now_ms: u64) -> Result<RoomSettings> {
        let run = || -> rusqlite::Result<RoomSettings> {
            let pairs = |sql: &str| -> rusqlite::Result<Vec<(String, String)>> {
                let mut st = self.conn.prepare(sql)?;
                let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            };
            let creators = pairs("SELECT room, account FROM room_creators")?;
            // Ended mutes hold no one: they go, not into memory.
            self.conn
                .execute("DELETE FROM mutes WHERE until <= ?1", [int(now_ms)])?;
            let mut st = self
                .conn
                .prepare("SELECT room, nick, account, until FROM mutes")?;
            let mutes = st
                .query_map([], |r| {
                    Ok(MuteRow {
                        room: r.get(0)?,
                        nick: r.get(1)?,
                        account: r.get(2)?,
                        until: uint(r.get(3)?),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut st = self
                .conn
                .prepare("SELECT room, interval_ms FROM slow_mode")?;
            let slow = st
                .query_map([], |r| Ok((r.get(0)?, uint(r.get(1)?))))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(RoomSettings {
                creators,
                mutes,
                slow,
            })
        };
        run().map_err(|e| self.err(e))
    }

    fn audit(&mut self, limit: usize) -> Result<Vec<AuditRow>> {
        let run = || -> rusqlite::Result<Vec<AuditRow>> {
            let mut st = self.conn.prepare(
                "SELECT ts, actor, action, room, target, detail FROM audit
                 ORDER BY seq DESC LIMIT ?1",
            )?;
            let rows = st.query_map([int(limit as u64)], |r| {
                Ok(AuditRow {
                    ts: uint(r.get(0)?),
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    room: r.get(3)?,
                    target: r.get(4)?,
                    detail: r.get(5)?,
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    fn rooms(&mut self) -> Result<Vec<RoomRow>> {
        let run = || -> rusqlite::Result<Vec<RoomRow>> {
            let mut st = self.conn.prepare(
                "SELECT name, epoch, next_id, last_active,
                        (SELECT min(m.id) FROM messages m WHERE m.room = r.id)
                 FROM rooms r",
            )?;
            let rows = st.query_map([], |r| {
                let next_id = uint(r.get(2)?);
                Ok(RoomRow {
                    name: r.get(0)?,
                    epoch: r.get(1)?,
                    next_id,
                    last_active: uint(r.get(3)?),
                    first_id: r.get::<_, Option<i64>>(4)?.map_or(next_id, uint),
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    fn messages(
        &mut self,
        room: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<MessageRow>> {
        let Some(&rid) = self.ids.get(room) else {
            return Ok(Vec::new());
        };
        let run = || -> rusqlite::Result<Vec<MessageRow>> {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages
                 WHERE room = ?1 AND id >= ?2 AND id < ?3 ORDER BY id DESC LIMIT ?4"
            ))?;
            let rows = st.query_map(
                params![rid, int(from), int(to), int(limit as u64)],
                message_row,
            )?;
            let mut v: Vec<MessageRow> = rows.collect::<rusqlite::Result<_>>()?;
            v.reverse();
            if let (Some(lo), Some(hi)) = (v.first().map(|m| m.id), v.last().map(|m| m.id)) {
                // One more read for the page's reactions (most pages have
                // none: the primary key's range is empty).
                let mut st = self.conn.prepare_cached(
                    "SELECT m.id, r.emoji, r.who FROM reactions r JOIN messages m ON m.seq = r.seq
                     WHERE m.room = ?1 AND m.id >= ?2 AND m.id <= ?3 ORDER BY r.rowid",
                )?;
                let mut rows = st.query(params![rid, int(lo), int(hi)])?;
                while let Some(r) = rows.next()? {
                    let id = uint(r.get(0)?);
                    if let Some(m) = id
                        .checked_sub(lo)
                        .and_then(|i| v.get_mut(usize::try_from(i).ok()?))
                        .filter(|m| m.id == id)
                    {
                        m.reactions.push((r.get(1)?, r.get(2)?));
                    }
                }
            }
            Ok(v)
        };
        run().map_err(|e| self.err(e))
    }

    fn search(
        &mut self,
        room: &str,
        query: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<MessageRow>> {
        let Some(&rid) = self.ids.get(room) else {
            return Ok(Vec::new());
        };
        let Some(q) = fts_query(query) else {
            return Ok(Vec::new());
        };
        let run = || -> rusqlite::Result<Vec<MessageRow>> {
            // FTS5 walks its matches by rowid (`seq`, posting order, so id
            // order within a room), newest first, and stops at the limit.
            let mut st = self.conn.prepare_cached(
                "SELECT m.id, m.from_nick, m.text, m.ts, m.author, m.reply_to, m.reply_from,
                        m.reply_text, m.edited, m.image
                 FROM messages_fts f JOIN messages m ON m.seq = f.rowid
                 WHERE messages_fts MATCH ?1 AND m.room = ?2 AND m.id < ?3
                 ORDER BY f.rowid DESC LIMIT ?4",
            )?;
            let rows =
                st.query_map(params![q, rid, int(before), int(limit as u64)], message_row)?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    fn commit(&mut self, ops: &[Op<'_>]) -> Result<Trimmed> {
        // The room ids change in place, each change logged so that a failed
        // transaction can take it back: a copy of the whole map per commit
        // cost O(rooms) every loop turn.
        let ids = &mut self.ids;
        let mut undo: Vec<(String, Option<i64>)> = Vec::new();
        let mut bytes = self.bytes;
        let limits = self.limits;
        let audit_rows = self.audit_rows;
        let fault = self.fault_file.as_ref().is_some_and(|f| f.exists());
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| {
            StoreError::Io(format!(
                "{}: cannot begin a transaction: {e}",
                path.display()
            ))
        })?;
        let result = (|| -> rusqlite::Result<Trimmed> {
            let mut touched: HashMap<i64, Touched> = HashMap::new();
            // Rows (seq) inserted and not yet in the search index: indexed
            // before any other op, which may edit or delete them, and
            // before retention.
            let mut unindexed: Option<(i64, i64)> = None;
            for op in ops {
                if !matches!(op, Op::PutMessage { .. }) {
                    index_new(&tx, &mut unindexed)?;
                }
                match *op {
                    Op::PutRoom {
                        name,
                        epoch,
                        next_id,
                        last_active,
                    } => {
                        if let Some(&old) = ids.get(name) {
                            bytes = bytes.saturating_sub(delete_room(&tx, old)?);
                            touched.remove(&old);
                        }
                        tx.prepare_cached(
                            "INSERT INTO rooms (name, epoch, next_id, last_active) VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![name, epoch, int(next_id), int(last_active)])?;
                        let was = ids.insert(name.to_string(), tx.last_insert_rowid());
                        undo.push((name.to_string(), was));
                    }
                    Op::PutMessage {
                        room,
                        id,
                        from,
                        text,
                        ts,
                        author,
                        reply,
                        image,
                    } => {
                        let Some(&rid) = ids.get(room) else {
                            // The chat stores a room before its messages.
                            log::error!("store: message {id} for room {room} not stored");
                            continue;
                        };
                        let (reply_to, reply_from, reply_text) = match reply {
                            Some((i, f, t)) => (Some(int(i)), Some(f), Some(t)),
                            None => (None, None, None),
                        };
                        tx.prepare_cached(
                            "INSERT INTO messages (room, id, from_nick, text, ts, author, reply_to, reply_from, reply_text, image)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                        )?
                        .execute(params![
                            rid,
                            int(id),
                            from,
                            text,
                            int(ts),
                            author,
                            reply_to,
                            reply_from,
                            reply_text,
                            image.map(int)
                        ])?;
                        let seq = tx.last_insert_rowid();
                        unindexed = Some(unindexed.map_or((seq, seq), |(lo, _)| (lo, seq)));
                        if let Some(image) = image {
                            tx.prepare_cached(
                                "UPDATE uploads SET room = ?2, msg = ?3 WHERE id = ?1",
                            )?
                            .execute(params![
                                int(image),
                                room,
                                int(id)
                            ])?;
                        }
                        let t = touched.entry(rid).or_insert_with(|| Touched {
                            name: room.to_string(),
                            max_id: 0,
                            max_ts: 0,
                            bytes: 0,
                        });
                        t.max_id = t.max_id.max(id);
                        t.max_ts = t.max_ts.max(ts);
                        t.bytes += row_bytes(from, text);
                        bytes += row_bytes(from, text);
                    }
                    Op::Touch { room, last_active } => {
                        if let Some(&rid) = ids.get(room) {
                            tx.prepare_cached("UPDATE rooms SET last_active = ?2 WHERE id = ?1")?
                                .execute(params![rid, int(last_active)])?;
                        }
                    }
                    Op::DeleteRoom { room } => {
                        if let Some(old) = ids.remove(room) {
                            undo.push((room.to_string(), Some(old)));
                            bytes = bytes.saturating_sub(delete_room(&tx, old)?);
                            touched.remove(&old);
                        }
                    }
                    Op::PutAccount {
                        name,
                        hash,
                        op,
                        created,
                    } => {
                        // A replaced account's sessions end with it.
                        tx.prepare_cached("DELETE FROM sessions WHERE account = ?1")?
                            .execute([name])?;
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO accounts (name, hash, op, created) VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![name, hash, i64::from(op), int(created)])?;
                    }
                    Op::SetPassword { name, hash } => {
                        let n = tx
                            .prepare_cached("UPDATE accounts SET hash = ?2 WHERE name = ?1")?
                            .execute([name, hash])?;
                        if n == 0 {
                            return Err(rusqlite::Error::QueryReturnedNoRows);
                        }
                    }
                    Op::PutSession {
                        token_hash,
                        name,
                        created,
                    } => {
                        tx.prepare_cached(
                            "INSERT INTO sessions (token_hash, account, created) VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![token_hash, name, int(created)])?;
                    }
                    Op::DeleteSession { token_hash } => {
                        tx.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
                            .execute([token_hash])?;
                    }
                    Op::DeleteSessions { name } => {
                        tx.prepare_cached("DELETE FROM sessions WHERE account = ?1")?
                            .execute([name])?;
                    }
                    Op::PutBan {
                        room,
                        nick,
                        account,
                        ip,
                        until,
                        by,
                        reason,
                        created,
                    } => {
                        // One ban per nick and room: a new one replaces it
                        // (the chat replaces it in memory the same way).
                        tx.prepare_cached(DELETE_BAN)?.execute([room, nick])?;
                        tx.prepare_cached(
                            "INSERT INTO bans (room, nick, account, ip, until, by, reason, created)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        )?
                        .execute(params![
                            room,
                            nick,
                            account,
                            ip,
                            int(until),
                            by,
                            reason,
                            int(created)
                        ])?;
                    }
                    Op::DeleteBan { room, nick } => {
                        tx.prepare_cached(DELETE_BAN)?.execute([room, nick])?;
                    }
                    Op::DeleteMessage { room, id } => {
                        if let Some(&rid) = ids.get(room) {
                            // Out of the external-content FTS index first
                            // (it needs the old text), then emptied.
                            tx.prepare_cached(
                                "INSERT INTO messages_fts(messages_fts, rowid, text)
                                 SELECT 'delete', seq, text FROM messages WHERE room = ?1 AND id = ?2",
                            )?
                            .execute(params![rid, int(id)])?;
                            let freed: i64 = tx
                                .prepare_cached(
                                    "SELECT coalesce(sum(length(CAST(text AS BLOB))), 0) FROM messages WHERE room = ?1 AND id = ?2",
                                )?
                                .query_row(params![rid, int(id)], |r| r.get(0))?;
                            tx.prepare_cached(
                                "UPDATE messages SET text = '', reply_to = NULL, reply_from = NULL,
                                 reply_text = NULL, edited = 0, image = NULL WHERE room = ?1 AND id = ?2",
                            )?
                            .execute(params![rid, int(id)])?;
                            tx.prepare_cached(
                                "DELETE FROM reactions WHERE seq IN
                                 (SELECT seq FROM messages WHERE room = ?1 AND id = ?2)",
                            )?
                            .execute(params![rid, int(id)])?;
                            tx.prepare_cached(
                                "UPDATE messages SET reply_text = '' WHERE room = ?1 AND reply_to = ?2",
                            )?
                            .execute(params![rid, int(id)])?;
                            tx.prepare_cached(
                                "UPDATE rooms SET bytes = max(0, bytes - ?2) WHERE id = ?1",
                            )?
                            .execute(params![rid, freed])?;
                            bytes = bytes.saturating_sub(uint(freed));
                        }
                    }
                    Op::EditMessage {
                        room,
                        id,
                        text,
                        edited,
                        excerpt,
                    } => {
                        if let Some(&rid) = ids.get(room) {
                            bytes = edit_message(&tx, rid, id, text, edited, excerpt, bytes)?;
                        }
                    }
                    Op::React {
                        room,
                        id,
                        emoji,
                        who,
                        on,
                    } => {
                        if let Some(&rid) = ids.get(room) {
                            let sql = if on {
                                "INSERT OR IGNORE INTO reactions (seq, emoji, who)
                                 SELECT seq, ?3, ?4 FROM messages WHERE room = ?1 AND id = ?2 AND text != ''"
                            } else {
                                "DELETE FROM reactions WHERE emoji = ?3 AND who = ?4 AND seq IN
                                 (SELECT seq FROM messages WHERE room = ?1 AND id = ?2)"
                            };
                            tx.prepare_cached(sql)?
                                .execute(params![rid, int(id), emoji, who])?;
                        }
                    }
                    Op::PutUpload {
                        id,
                        owner,
                        mime,
                        data,
                        created,
                    } => {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO uploads (id, owner, mime, bytes, created, data)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![
                            int(id),
                            owner,
                            mime,
                            int(data.len() as u64),
                            int(created),
                            data
                        ])?;
                    }
                    Op::DeleteUpload { id } => {
                        tx.prepare_cached("DELETE FROM uploads WHERE id = ?1")?
                            .execute(params![int(id)])?;
                    }
                    Op::PutTopic { room, topic } => {
                        if topic.is_empty() {
                            tx.prepare_cached("DELETE FROM topics WHERE room = ?1")?
                                .execute([room])?;
                        } else {
                            tx.prepare_cached(
                                "INSERT OR REPLACE INTO topics (room, topic) VALUES (?1, ?2)",
                            )?
                            .execute([room, topic])?;
                        }
                    }
                    Op::PutModerator { room, account, on } => {
                        let sql = if on {
                            "INSERT OR IGNORE INTO moderators (room, account) VALUES (?1, ?2)"
                        } else {
                            "DELETE FROM moderators WHERE room = ?1 AND account = ?2"
                        };
                        tx.prepare_cached(sql)?.execute([room, account])?;
                    }
                    Op::PutCreator { room, account } => {
                        tx.prepare_cached(
                            "INSERT OR IGNORE INTO room_creators (room, account) VALUES (?1, ?2)",
                        )?
                        .execute([room, account])?;
                    }
                    Op::PutMute {
                        room,
                        nick,
                        account,
                        until,
                        now,
                    } => {
                        tx.prepare_cached("DELETE FROM mutes WHERE until <= ?1")?
                            .execute([int(now)])?;
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO mutes (room, nick, account, until)
                             VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![
                            room,
                            nick,
                            account,
                            int(until)
                        ])?;
                    }
                    Op::PutSlow { room, interval_ms } => {
                        if interval_ms == 0 {
                            tx.prepare_cached("DELETE FROM slow_mode WHERE room = ?1")?
                                .execute([room])?;
                        } else {
                            tx.prepare_cached(
                                "INSERT OR REPLACE INTO slow_mode (room, interval_ms) VALUES (?1, ?2)",
                            )?
                            .execute(params![room, int(interval_ms)])?;
                        }
                    }
                    Op::PutRead { room, account, id } => {
                        if let Some(&rid) = ids.get(room) {
                            tx.prepare_cached(
                                "INSERT INTO reads (account, room, id) VALUES (?1, ?2, ?3)
                                 ON CONFLICT (account, room) DO UPDATE SET id = max(id, excluded.id)",
                            )?
                            .execute(params![account, rid, int(id)])?;
                        }
                    }
                    Op::Audit {
                        ts,
                        actor,
                        action,
                        room,
                        target,
                        detail,
                    } => {
                        tx.prepare_cached(
                            "INSERT INTO audit (ts, actor, action, room, target, detail)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![
                            int(ts),
                            actor,
                            action,
                            room,
                            target,
                            detail
                        ])?;
                        // `seq` only grows (the newest row is never
                        // deleted), so the newest `audit_rows` are those
                        // above this one.
                        if audit_rows > 0 {
                            tx.prepare_cached("DELETE FROM audit WHERE seq <= ?1")?
                                .execute([tx
                                    .last_insert_rowid()
                                    .saturating_sub(int(audit_rows))])?;
                        }
                    }
                }
            }
            index_new(&tx, &mut unindexed)?;
            let mut trimmed = Trimmed::default();
            for (&rid, t) in &touched {
                tx.prepare_cached(
                    "UPDATE rooms SET next_id = max(next_id, ?2), last_active = max(last_active, ?3),
                     bytes = bytes + ?4 WHERE id = ?1",
                )?
                .execute(params![rid, int(t.max_id + 1), int(t.max_ts), int(t.bytes)])?;
                // The per-room cap: ids are contiguous, so the oldest kept is
                // next_id - per_room.
                let first = (t.max_id + 1).saturating_sub(limits.per_room);
                if first > 0 {
                    let freed = trim_room(&tx, rid, first)?;
                    if freed > 0 {
                        bytes = bytes.saturating_sub(freed);
                        trimmed.rooms.push((t.name.clone(), first));
                    }
                }
            }
            if limits.max_bytes > 0 && bytes > limits.max_bytes {
                let freed = evict_oldest(&tx, bytes - limits.max_bytes, ids, &mut trimmed)?;
                bytes = bytes.saturating_sub(freed);
            }
            if fault {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                    Some("injected fault (--fault-file exists)".into()),
                ));
            }
            Ok(trimmed)
        })();
        match result.and_then(|t| tx.commit().map(|()| t)) {
            Ok(trimmed) => {
                self.bytes = bytes;
                Ok(trimmed)
            }
            Err(e) => {
                // Rolled back (dropping the transaction): so are the ids.
                for (name, was) in undo.into_iter().rev() {
                    match was {
                        Some(id) => ids.insert(name, id),
                        None => ids.remove(&name),
                    };
                }
                Err(StoreError::Io(format!(
                    "{}: commit failed: {e}",
                    path.display()
                )))
            }
        }
    }
}

/// Adds the messages `lo..=hi` (by `seq`) inserted by this commit to the
/// search index, in one statement (see migration 9), and clears the range.
fn index_new(
    tx: &rusqlite::Transaction<'_>,
    range: &mut Option<(i64, i64)>,
) -> rusqlite::Result<()> {
    if let Some((lo, hi)) = range.take() {
        tx.prepare_cached(
            "INSERT INTO messages_fts(rowid, text) SELECT seq, text FROM messages WHERE seq BETWEEN ?1 AND ?2",
        )?
        .execute(params![lo, hi])?;
    }
    Ok(())
}

/// The columns [`message_row`] reads, in its order.
const MESSAGE_COLUMNS: &str =
    "id, from_nick, text, ts, author, reply_to, reply_from, reply_text, edited, image";

/// A message from a row of [`MESSAGE_COLUMNS`] (without its reactions).
fn message_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
    let reply = match r.get::<_, Option<i64>>(5)? {
        Some(id) => Some((
            uint(id),
            r.get::<_, Option<String>>(6)?.unwrap_or_default(),
            r.get::<_, Option<String>>(7)?.unwrap_or_default(),
        )),
        None => None,
    };
    Ok(MessageRow {
        id: uint(r.get(0)?),
        from: r.get(1)?,
        text: r.get(2)?,
        ts: uint(r.get(3)?),
        author: r.get(4)?,
        reply,
        edited: uint(r.get(8)?),
        reactions: Vec::new(),
        image: r.get::<_, Option<i64>>(9)?.map(uint),
    })
}

/// A user's words as an FTS5 query: each word a quoted prefix (so no word
/// is read as FTS5 syntax), all of them required. None when no word is left.
fn fts_query(query: &str) -> Option<String> {
    let terms: Vec<String> = query
        .split_whitespace()
        // A word with neither letter nor digit has no token to match.
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

/// [`Op::EditMessage`]: the new text replaces the old one in the row and
/// in the external-content search index (which needs the old text to
/// delete it), the room's byte count follows, and the replies' quotes are
/// renewed. A tombstone stays one. Returns the store's new byte total.
fn edit_message(
    tx: &rusqlite::Transaction<'_>,
    rid: i64,
    id: u64,
    text: &str,
    edited: u64,
    excerpt: &str,
    bytes: u64,
) -> rusqlite::Result<u64> {
    let row: Option<(i64, i64)> = tx
        .prepare_cached(
            "SELECT seq, length(CAST(text AS BLOB)) FROM messages
             WHERE room = ?1 AND id = ?2 AND text != ''",
        )?
        .query_row(params![rid, int(id)], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((seq, old_len)) = row else {
        return Ok(bytes);
    };
    tx.prepare_cached(
        "INSERT INTO messages_fts(messages_fts, rowid, text) SELECT 'delete', seq, text FROM messages WHERE seq = ?1",
    )?
    .execute([seq])?;
    tx.prepare_cached("UPDATE messages SET text = ?2, edited = ?3 WHERE seq = ?1")?
        .execute(params![seq, text, int(edited)])?;
    tx.prepare_cached("INSERT INTO messages_fts(rowid, text) VALUES (?1, ?2)")?
        .execute(params![seq, text])?;
    tx.prepare_cached("UPDATE messages SET reply_text = ?3 WHERE room = ?1 AND reply_to = ?2")?
        .execute(params![rid, int(id), excerpt])?;
    let delta = text.len() as i64 - old_len;
    tx.prepare_cached("UPDATE rooms SET bytes = max(0, bytes + ?2) WHERE id = ?1")?
        .execute(params![rid, delta])?;
    Ok(bytes.saturating_add_signed(delta))
}

/// Deletes a room and its messages; returns the bytes they counted.
fn delete_room(tx: &rusqlite::Transaction<'_>, rid: i64) -> rusqlite::Result<u64> {
    let b: i64 = tx
        .prepare_cached("SELECT bytes FROM rooms WHERE id = ?1")?
        .query_row([rid], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    tx.prepare_cached("DELETE FROM messages WHERE room = ?1")?
        .execute([rid])?;
    tx.prepare_cached("DELETE FROM reads WHERE room = ?1")?
        .execute([rid])?;
    tx.prepare_cached("DELETE FROM rooms WHERE id = ?1")?
        .execute([rid])?;
    Ok(uint(b))
}

const ROW_BYTES_SQL: &str = "length(CAST(from_nick AS BLOB)) + length(CAST(text AS BLOB))";

/// Deletes a room's messages below `first`; returns the bytes freed.
fn trim_room(tx: &rusqlite::Transaction<'_>, rid: i64, first: u64) -> rusqlite::Result<u64> {
    let (n, b): (i64, Option<i64>) = tx
        .prepare_cached(&format!(
            "SELECT count(*), sum({ROW_BYTES_SQL}) FROM messages WHERE room = ?1 AND id < ?2"
        ))?
        .query_row(params![rid, int(first)], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if n == 0 {
        return Ok(0);
    }
    let freed = uint(b.unwrap_or(0)) + uint(n) * super::ROW_OVERHEAD;
    tx.prepare_cached("DELETE FROM messages WHERE room = ?1 AND id < ?2")?
        .execute(params![rid, int(first)])?;
    tx.prepare_cached("UPDATE rooms SET bytes = max(0, bytes - ?2) WHERE id = ?1")?
        .execute(params![rid, int(freed)])?;
    Ok(freed)
}

/// The disk budget: deletes the server-wide oldest messages (lowest `seq`)
/// until at least `excess` bytes are freed; returns the bytes freed.
fn evict_oldest(
    tx: &rusqlite::Transaction<'_>,
    excess: u64,
    ids: &HashMap<String, i64>,
    trimmed: &mut Trimmed,
) -> rusqlite::Result<u64> {
    let mut freed = 0u64;
    // Room row id -> (first id kept, bytes freed).
    let mut per_room: HashMap<i64, (u64, u64)> = HashMap::new();
    let mut last_seq = None;
    {
        let mut st = tx.prepare_cached(&format!(
            "SELECT seq, room, id, {ROW_BYTES_SQL} FROM messages ORDER BY seq"
        ))?;
        let mut rows = st.query([])?;
        while freed < excess {
            let Some(r) = rows.next()? else { break };
            let (seq, rid, id, b): (i64, i64, i64, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let cost = uint(b) + super::ROW_OVERHEAD;
            freed += cost;
            let e = per_room.entry(rid).or_insert((0, 0));
            e.0 = uint(id) + 1;
            e.1 += cost;
            last_seq = Some(seq);
        }
    }
    let Some(last_seq) = last_seq else {
        return Ok(0);
    };
    tx.prepare_cached("DELETE FROM messages WHERE seq <= ?1")?
        .execute([last_seq])?;
    for (rid, (first, b)) in per_room {
        tx.prepare_cached("UPDATE rooms SET bytes = max(0, bytes - ?2) WHERE id = ?1")?
            .execute(params![rid, int(b)])?;
        if let Some((name, _)) = ids.iter().find(|(_, v)| **v == rid) {
            match trimmed.rooms.iter_mut().find(|(n, _)| n == name) {
                Some(t) => t.1 = t.1.max(first),
                None => trimmed.rooms.push((name.clone(), first)),
            }
        }
    }
    Ok(freed)
}
