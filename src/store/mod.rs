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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRow {
    pub id: u64,
    pub from: String,
    pub text: String,
    pub ts: u64,
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
    PutMessage {
        room: &'a str,
        id: u64,
        from: &'a str,
        text: &'a str,
        ts: u64,
    },
    /// The room's last activity (no effect on a room not stored).
    Touch { room: &'a str, last_active: u64 },
    /// The room and all its messages are gone.
    DeleteRoom { room: &'a str },
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
