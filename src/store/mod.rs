//! The durable store, behind one small interface in row terms: rooms (name,
//! epoch, next id, last activity) and their messages (id, from, text, ts).
//!
//! Neither this module nor the chat names the other: the server loads the
//! chat from a [`Store`] at start, turns the chat's records of each loop
//! turn into one [`Store::commit`], and only then lets the turn's output go
//! (see docs/storage.md). [`sqlite::SqliteStore`] is the real one;
//! [`memory::MemoryStore`] serves tests (and fault injection), and another
//! backend (a shared one for several nodes) can implement the same trait.

pub mod memory;
pub mod sqlite;

#[cfg(test)]
mod tests;

use std::fmt;

/// A room as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRow {
    pub name: String,
    pub epoch: String,
    /// Id the room's next message gets.
    pub next_id: u64,
    /// Oldest message id still stored (`next_id` when none is).
    pub first_id: u64,
    /// Wall-clock ms of the room's last activity (a message, or its last
    /// member leaving): the start of its retention once memberless.
    pub last_active: u64,
}

/// A stored message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageRow {
    pub id: u64,
    pub from: String,
    pub text: String,
    pub ts: u64,
    /// Who may edit or delete it (see `chat::edits`): `a:ACCOUNT`,
    /// `g:RUN:N` (one guest connection of one run), or empty (nobody).
    pub author: String,
    /// The message it answers, as (id, its sender, an excerpt of its text;
    /// empty once that message is deleted).
    pub reply: Option<(u64, String, String)>,
    /// Wall-clock ms of its last edit; 0: never edited.
    pub edited: u64,
    /// Its reactions as (emoji, who), in the order they were added
    /// (`messages` only; `search` leaves them out).
    pub reactions: Vec<(String, String)>,
    /// Extension (images): the upload the message shows.
    pub image: Option<u64>,
}

/// An uploaded image as stored, without its bytes (see
/// [`Store::upload_data`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRow {
    /// Random, below 2^63 (an SQLite integer key).
    pub id: u64,
    /// The account (lowercase) that uploaded it.
    pub owner: String,
    /// The sniffed type, e.g. `image/png`.
    pub mime: String,
    pub bytes: u64,
    /// Wall-clock ms of the upload.
    pub created: u64,
    /// The message showing it, once a message does: (room, message id).
    pub attached: Option<(String, u64)>,
}

/// One change in a commit, applied in order.
#[derive(Clone, Copy, Debug)]
pub enum Op<'a> {
    /// A room is stored from now on (its first message follows); a room of
    /// that name still stored is replaced, messages and all.
    PutRoom {
        name: &'a str,
        epoch: &'a str,
        next_id: u64,
        last_active: u64,
    },
    /// A message of a stored room; the room's `next_id` follows it.
    /// `author` and `reply` as in [`MessageRow`].
    PutMessage {
        room: &'a str,
        id: u64,
        from: &'a str,
        text: &'a str,
        ts: u64,
        author: &'a str,
        reply: Option<(u64, &'a str, &'a str)>,
        /// Extension (images): the upload it shows, attached to it here.
        image: Option<u64>,
    },
    /// Message `id` of `room` gets a new text (out of and back into the
    /// search index), edited at `edited` (wall-clock ms); the messages
    /// that answer it get `excerpt` as their quote. No effect on a
    /// tombstone or a message not stored.
    EditMessage {
        room: &'a str,
        id: u64,
        text: &'a str,
        edited: u64,
        excerpt: &'a str,
    },
    /// `who` reacted to message `id` of `room` with `emoji` (`on`), or no
    /// longer does. `who` is compared ignoring ASCII case.
    React {
        room: &'a str,
        id: u64,
        emoji: &'a str,
        who: &'a str,
        on: bool,
    },
    /// The room's last activity (no effect on a room not stored).
    Touch { room: &'a str, last_active: u64 },
    /// The room and all its messages are gone.
    DeleteRoom { room: &'a str },
    /// An account (its name as registered; unique ignoring ASCII case) with
    /// its password hash (an Argon2id PHC string); replaces one of that name.
    PutAccount {
        name: &'a str,
        hash: &'a str,
        op: bool,
        created: u64,
    },
    /// A new password hash for an existing account.
    SetPassword { name: &'a str, hash: &'a str },
    /// A session: the BLAKE2b-256 hash of its token (the token itself is
    /// never stored), for the account `name`.
    PutSession {
        token_hash: &'a [u8],
        name: &'a str,
        created: u64,
    },
    /// One session ends.
    DeleteSession { token_hash: &'a [u8] },
    /// Every session of the account ends.
    DeleteSessions { name: &'a str },
    /// A ban (moderation): from `room`, or from the server when `room` is
    /// empty; of `nick` and `account` (lowercase; empty: none) and, when
    /// not empty, of the address `ip`; until `until` (wall-clock ms; 0:
    /// for good).
    PutBan {
        room: &'a str,
        nick: &'a str,
        account: &'a str,
        ip: &'a str,
        until: u64,
        by: &'a str,
        reason: &'a str,
        created: u64,
    },
    /// The ban of `nick` (lowercase) in `room` ("": the server) is lifted.
    DeleteBan { room: &'a str, nick: &'a str },
    /// `account` (lowercase) moderates `room` (`on`), or no longer does.
    PutModerator {
        room: &'a str,
        account: &'a str,
        on: bool,
    },
    /// Message `id` of `room` keeps its row with an empty text (a
    /// tombstone), out of the search index, without its reply, edit mark
    /// and reactions; the quotes of the messages answering it are emptied.
    /// No effect when not stored.
    DeleteMessage { room: &'a str, id: u64 },
    /// A room's topic; "" removes it.
    PutTopic { room: &'a str, topic: &'a str },
    /// `account` (lowercase) created `room`: kept unless one is recorded
    /// already (the first creator stays the room's owner).
    PutCreator { room: &'a str, account: &'a str },
    /// A mute of `nick` and `account` (lowercase; empty: none) in `room`
    /// until `until` (wall-clock ms); replaces one of the same three. Mutes
    /// that ended by `now` are dropped in the same commit.
    PutMute {
        room: &'a str,
        nick: &'a str,
        account: &'a str,
        until: u64,
        now: u64,
    },
    /// Slow mode of `room`: `interval_ms` between one user's messages; 0
    /// turns it off.
    PutSlow { room: &'a str, interval_ms: u64 },
    /// An uploaded image (extension: images), not yet shown by a message.
    PutUpload {
        id: u64,
        owner: &'a str,
        mime: &'a str,
        data: &'a [u8],
        created: u64,
    },
    /// The upload and its bytes are gone (no effect when not stored).
    DeleteUpload { id: u64 },
    /// `account` (lowercase) has read `room` up to message `id`; the
    /// position only moves forward. No effect on a room not stored; gone
    /// with the room.
    PutRead {
        room: &'a str,
        account: &'a str,
        id: u64,
    },
    /// A line of the audit log: who did what, when.
    Audit {
        ts: u64,
        actor: &'a str,
        action: &'a str,
        room: &'a str,
        target: &'a str,
        detail: &'a str,
    },
}

/// A read position as stored (see [`Op::PutRead`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRow {
    pub room: String,
    pub account: String,
    pub id: u64,
}

/// A line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    pub ts: u64,
    pub actor: String,
    pub action: String,
    pub room: String,
    pub target: String,
    pub detail: String,
}

/// A ban as stored (see [`Op::PutBan`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanRow {
    pub room: String,
    pub nick: String,
    pub account: String,
    pub ip: String,
    pub until: u64,
    pub reason: String,
}

/// A mute as stored (see [`Op::PutMute`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MuteRow {
    pub room: String,
    pub nick: String,
    pub account: String,
    pub until: u64,
}

/// Per-room moderation settings beside topics and moderators, as loaded at
/// start (see [`Store::room_settings`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomSettings {
    /// (room, account): the account that created the room.
    pub creators: Vec<(String, String)>,
    /// Mutes still in force.
    pub mutes: Vec<MuteRow>,
    /// (room, interval in ms): rooms in slow mode.
    pub slow: Vec<(String, u64)>,
}

/// An account as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRow {
    pub name: String,
    /// Argon2id PHC string (parameters and salt included).
    pub hash: String,
    /// A server operator.
    pub op: bool,
    /// Wall-clock ms of its registration.
    pub created: u64,
}

/// A session as stored: the hash of its token, never the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub token_hash: Vec<u8>,
    pub name: String,
    pub created: u64,
}

/// Rooms whose oldest stored message changed in a commit (retention: the
/// per-room cap or the disk budget): messages below `first_id` are gone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    pub rooms: Vec<(String, u64)>,
}

/// Retention, enforced by the store on every commit.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Messages kept per room (oldest dropped first); 0: none.
    pub per_room: u64,
    /// Budget for all rooms' messages in bytes as [`row_bytes`] counts them;
    /// past it the server-wide oldest messages go first. 0: no budget.
    pub max_bytes: u64,
}

/// What one message counts against [`Limits::max_bytes`]: its text and nick
/// plus a fixed share for the row, its keys and index entries. A round upper
/// figure of SQLite's cost, so the file stays near the budget (it does not
/// shrink: freed pages are reused).
pub fn row_bytes(from: &str, text: &str) -> u64 {
    (from.len() + text.len()) as u64 + ROW_OVERHEAD
}

/// See [`row_bytes`].
pub const ROW_OVERHEAD: u64 = 64;

#[derive(Debug)]
pub enum StoreError {
    /// The store cannot be used at all (start-up refuses).
    Open(String),
    /// A read or a commit failed; nothing of a failed commit is kept.
    Io(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Open(s) | StoreError::Io(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for StoreError {}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The interface the server drives. Reads see only committed data.
pub trait Store {
    /// Every stored room.
    fn rooms(&mut self) -> Result<Vec<RoomRow>>;
    /// The stored messages of `room` with `from <= id < to`, oldest first,
    /// at most `limit` of them (the newest of the range).
    fn messages(&mut self, room: &str, from: u64, to: u64, limit: usize)
    -> Result<Vec<MessageRow>>;
    /// Applies `ops` in one transaction, then retention: all or nothing.
    fn commit(&mut self, ops: &[Op<'_>]) -> Result<Trimmed>;
    /// Whether [`Store::checkpoint`] has work: cheap, asked once per turn.
    fn checkpoint_due(&self) -> bool {
        false
    }
    /// Housekeeping the caller runs between its commits, once their results
    /// are out (the server: after a loop turn's flush), so that no commit
    /// waits for it: for SQLite, the WAL checkpoint.
    fn checkpoint(&mut self) -> Result<()> {
        Ok(())
    }
    /// Every account.
    fn accounts(&mut self) -> Result<Vec<AccountRow>>;
    /// Every session, oldest first.
    fn sessions(&mut self) -> Result<Vec<SessionRow>>;
    /// Every room topic, as (room, topic).
    fn topics(&mut self) -> Result<Vec<(String, String)>>;
    /// Every read position.
    fn reads(&mut self) -> Result<Vec<ReadRow>>;
    /// Every room moderator, as (room, account).
    fn moderators(&mut self) -> Result<Vec<(String, String)>>;
    /// Every ban still in force at wall-clock `now_ms`.
    fn bans(&mut self, now_ms: u64) -> Result<Vec<BanRow>>;
    /// Room creators, mutes in force at wall-clock `now_ms` (ended ones
    /// are deleted) and slow modes.
    fn room_settings(&mut self, now_ms: u64) -> Result<RoomSettings>;
    /// The newest `limit` audit lines, newest first, as
    /// (ts, actor, action, room, target, detail).
    fn audit(&mut self, limit: usize) -> Result<Vec<AuditRow>>;
    /// Every stored upload, without its bytes.
    fn uploads(&mut self) -> Result<Vec<UploadRow>>;
    /// The bytes of upload `id`, `None` when it is not stored.
    fn upload_data(&mut self, id: u64) -> Result<Option<Vec<u8>>>;
    /// Messages of `room` with `id < before` holding every word of `query`
    /// (as a word prefix, ignoring case), newest first, at most `limit`.
    fn search(
        &mut self,
        room: &str,
        query: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<MessageRow>>;
}
