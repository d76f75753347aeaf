//! A room: its members, its history ring and its epoch.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::ops::Deref;
use std::rc::Rc;

use hashbrown::HashTable;
use smallvec::SmallVec;

use super::ConnId;

/// A room's members. Many rooms have one or two (a room per person, a
/// direct conversation): those fit inline, with no allocation of their own;
/// past two the list moves to the heap as a `Vec` would.
pub type Members = SmallVec<[ConnId; 2]>;

/// One kept room message. `from` is the sender's nick when it was posted,
/// shared by the message's copies (the ring and the frames' serialiser).
#[derive(Clone, Debug)]
pub struct Msg {
    pub id: u64,
    pub ts: u64,
    pub from: Rc<str>,
    pub text: Box<str>,
    /// Who may edit or delete it (see [`super::edits`]): `a:ACCOUNT`,
    /// `g:RUN:N` (one guest connection), or empty (nobody).
    pub author: Rc<str>,
    /// Replies, edits and reactions: most messages have none.
    pub extra: Option<Box<MsgExtra>>,
    /// Extension (images): the upload the message shows.
    pub image: Option<std::num::NonZeroU64>,
}

/// What a message may carry beyond its text (see [`super::edits`]).
#[derive(Clone, Debug, Default)]
pub struct MsgExtra {
    pub reply: Option<Reply>,
    /// Wall-clock ms of the last edit; 0: never edited.
    pub edited: u64,
    /// (index into [`super::edits::REACTIONS`], who), in the order added.
    pub reactions: Vec<(u8, Box<str>)>,
}

/// The message a reply answers: its id, sender and the start of its text
/// (empty once it is deleted).
#[derive(Clone, Debug)]
pub struct Reply {
    pub id: u64,
    pub from: Box<str>,
    pub text: Box<str>,
}

impl MsgExtra {
    /// Heap bytes it holds, as [`Msg::cost`] counts them.
    fn cost(&self) -> usize {
        let reply = self
            .reply
            .as_ref()
            .map_or(0, |q| q.from.len() + q.text.len() + 2 * ALLOC_HEADER);
        let reactions = self.reactions.capacity() * std::mem::size_of::<(u8, Box<str>)>()
            + self
                .reactions
                .iter()
                .map(|(_, w)| w.len() + ALLOC_HEADER)
                .sum::<usize>();
        std::mem::size_of::<MsgExtra>() + 2 * ALLOC_HEADER + reply + reactions
    }
}

/// One slot of the server-wide posting-order queue (`Chat::order`): which
/// room (slot and creation serial) and which message id.
#[derive(Clone, Copy, Debug)]
pub struct Order {
    pub slot: u32,
    pub serial: u64,
    pub id: u64,
}

/// Heap bytes the allocator adds per allocation, as a round upper figure
/// (glibc malloc: 8–16).
const ALLOC_HEADER: usize = 16;

/// The fixed part of [`Msg::cost`], an upper bound on what one kept message
/// holds beyond its text and nick bytes:
/// - 2 ring slots (`Msg`): a room's ring grows by doubling and is shrunk
///   back whenever its capacity passes 2 × len + 4 (see [`Room::pop_oldest`]);
///   the 4 spare slots per room are part of the room's own fixed cost, which
///   `--max-rooms` bounds;
/// - 8 [`Order`] slots: the queue holds one live entry per kept message
///   and at most as many stale ones again (+ a constant) before `Chat`
///   compacts it, and its capacity is shrunk back whenever it passes 4 ×
///   that (growth by doubling and the shrink hysteresis);
/// - the `Rc` counts (strong + weak) of the nick and of the author;
/// - allocator headers of the text, the nick and the author.
pub const MSG_OVERHEAD: usize = 2 * std::mem::size_of::<Msg>()
    + 8 * std::mem::size_of::<Order>()
    + 4 * std::mem::size_of::<usize>()
    + 3 * ALLOC_HEADER;

impl Msg {
    /// What this message counts against `--max-history-bytes`:
    ///
    /// `text.len() + from.len() + author.len() + MSG_OVERHEAD`, plus what
    /// its replies, edits and reactions hold ([`MsgExtra`]).
    ///
    /// Each message holds its own `from` allocation (a connection keeps its
    /// nick inline), so its nick bytes, `Rc` counts and allocator header are
    /// all charged here.
    pub fn cost(&self) -> usize {
        self.text.len()
            + self.from.len()
            + self.author.len()
            + MSG_OVERHEAD
            + self.extra.as_ref().map_or(0, |x| x.cost())
    }
}

/// A message before it has an id and a `ts`.
#[derive(Debug)]
pub struct Draft {
    pub from: Rc<str>,
    pub text: Box<str>,
    pub author: Rc<str>,
    pub extra: Option<Box<MsgExtra>>,
    /// Extension (images): the upload it shows.
    pub image: Option<std::num::NonZeroU64>,
}

/// A room. Kept small: a room per person is normal, and most rooms are
/// idle. What only a room that has had a message needs (its history ring,
/// ids, timestamps, its store state) is in [`Log`], boxed and made with the
/// first message; an idle room holds its name, members and a few words.
/// The fan-out reads `members`, inline here: no extra indirection per
/// delivery.
#[derive(Debug)]
pub struct Room {
    pub name: RoomName,
    /// Unique per room creation within a run: tells a recreated room in a
    /// reused slot from the one an old `Order` entry points to.
    pub serial: u64,
    /// The epoch (see [`Room::epoch`]): the number whose base 36 form it
    /// is, when it is one (every epoch this server makes is); else 0, and
    /// [`Log::epoch_text`] holds it.
    epoch: u64,
    /// In the order `joined` lists them (see `insert_member`).
    pub members: Members,
    /// `None` until the first message (or a restore from the store): every
    /// field then holds its [`Log::default`] value, which the accessors
    /// below answer without allocating.
    pub log: Option<Box<Log>>,
    /// The address that created the room (`None`: an exempt client); the
    /// room counts against its `max_rooms_per_addr` while it exists.
    pub owner: Option<super::AddrKey>,
    /// Durable rooms only (see `ChatConfig::durable`): the store keeps its
    /// messages, and [`Log::durable`] tracks what it holds.
    pub durable: bool,
}

/// A room's messages and what goes with them (see [`Room::log`]).
#[derive(Debug)]
pub struct Log {
    /// Kept messages, ids contiguous and increasing. Changed only through
    /// [`Room::post`] and [`Room::pop_oldest`], which keep `bytes` exact.
    pub history: VecDeque<Msg>,
    /// Sum of [`Msg::cost`] over `history`.
    pub bytes: usize,
    /// Id of the next message (ids start at 1).
    pub next_id: u64,
    /// `ts` of the last message, so that `ts` never decreases as `id` grows.
    pub last_ts: u64,
    /// Monotonic time the last member left; meaningful while the room has
    /// no members. Here, not in `Room`: a room with neither members nor
    /// messages is forgotten at once, so a memberless room has a `Log`.
    pub empty_since: u64,
    /// Retention already used up before `empty_since` (a room restored from
    /// the store was memberless before the server started).
    pub aged: u64,
    /// Meaningful for durable rooms only.
    pub durable: Durable,
    /// An epoch that is not the base 36 form of a u64 (from a store
    /// written otherwise): only a restored room has one, and a restored
    /// room has a `Log`.
    pub epoch_text: Option<Box<str>>,
}

impl Default for Log {
    fn default() -> Log {
        Log {
            history: VecDeque::new(),
            bytes: 0,
            next_id: 1,
            last_ts: 0,
            empty_since: 0,
            aged: 0,
            durable: NO_MESSAGES,
            epoch_text: None,
        }
    }
}

/// A durable room's state beside its in-memory window: `history` holds only
/// the newest messages, the store all of them from `first_id` on.
#[derive(Debug, Default)]
pub struct Durable {
    /// Oldest id the store keeps (`next_id` when none).
    pub first_id: u64,
    /// Ids handed out this loop turn whose commit is still to come: the
    /// last `pending` ids below `next_id`.
    pub pending: u64,
    /// The store has this room (its row is written with its first message).
    pub stored: bool,
    /// Monotonic ms of the last `Touch` record (or of the room's row) while
    /// the room had members; meaningful once `stored`.
    pub touched: u64,
}

/// The store state of a durable room without a [`Log`].
const NO_MESSAGES: Durable = Durable {
    first_id: 1,
    pending: 0,
    stored: false,
    touched: 0,
};

/// The history of a room without a [`Log`].
const NO_HISTORY: &VecDeque<Msg> = &VecDeque::new();

/// A run of kept message ids, `lo..hi`, and whether it reaches as far back
/// as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub lo: u64,
    pub hi: u64,
    pub complete: bool,
}

impl Room {
    pub fn new(name: RoomName, serial: u64, epoch: &str) -> Room {
        let mut room = Room {
            name,
            serial,
            epoch: 0,
            members: Members::new(),
            log: None,
            owner: None,
            durable: false,
        };
        match parse_base36(epoch) {
            Some(n) => room.epoch = n,
            None => room.log_mut().epoch_text = Some(epoch.into()),
        }
        room
    }

    /// The room's epoch, as `joined` sends it.
    pub fn epoch(&self) -> Epoch {
        match self.log.as_ref().and_then(|l| l.epoch_text.as_deref()) {
            Some(text) => Epoch::new(text),
            None => Epoch::base36(self.epoch),
        }
    }

    /// The room's [`Log`], made now if it has none.
    pub fn log_mut(&mut self) -> &mut Log {
        self.log.get_or_insert_with(Box::default)
    }

    /// Kept messages (see [`Log::history`]).
    pub fn history(&self) -> &VecDeque<Msg> {
        self.log.as_ref().map_or(NO_HISTORY, |l| &l.history)
    }

    /// Sum of [`Msg::cost`] over the kept messages.
    pub fn bytes(&self) -> usize {
        self.log.as_ref().map_or(0, |l| l.bytes)
    }

    /// Id of the next message.
    pub fn next_id(&self) -> u64 {
        self.log.as_ref().map_or(1, |l| l.next_id)
    }

    /// `ts` of the last message (0: none yet).
    pub fn last_ts(&self) -> u64 {
        self.log.as_ref().map_or(0, |l| l.last_ts)
    }

    /// When the last member left (see [`Log::empty_since`]).
    pub fn empty_since(&self) -> u64 {
        self.log.as_ref().map_or(0, |l| l.empty_since)
    }

    /// Retention used up before `empty_since` (see [`Log::aged`]).
    pub fn aged(&self) -> u64 {
        self.log.as_ref().map_or(0, |l| l.aged)
    }

    /// A durable room's store state; `None` for a room that is not durable.
    pub fn durable(&self) -> Option<&Durable> {
        self.durable
            .then(|| self.log.as_ref().map_or(&NO_MESSAGES, |l| &l.durable))
    }

    /// Whether the store has this durable room (its first message was
    /// stored): reads, never makes a [`Log`].
    pub fn stored(&self) -> bool {
        self.durable().is_some_and(|d| d.stored)
    }

    /// A durable room's store state, to change (makes its [`Log`] if it has
    /// none); `None` for a room that is not durable.
    pub fn durable_mut(&mut self) -> Option<&mut Durable> {
        if self.durable {
            Some(&mut self.log_mut().durable)
        } else {
            None
        }
    }

    /// Hands out the next id and `ts` (`ts` never decreases as ids grow).
    pub fn assign(&mut self, draft: Draft, wall_ms: u64) -> Msg {
        let log = self.log_mut();
        let ts = wall_ms.max(log.last_ts);
        log.last_ts = ts;
        let msg = Msg {
            id: log.next_id,
            ts,
            from: draft.from,
            text: draft.text,
            author: draft.author,
            extra: draft.extra,
            image: draft.image,
        };
        log.next_id += 1;
        msg
    }

    /// Appends a message to the in-memory window, keeping at most `keep`.
    pub fn keep(&mut self, msg: Msg, keep: usize) {
        if keep > 0 {
            let log = self.log_mut();
            while log.history.len() >= keep {
                if let Some(old) = log.history.pop_front() {
                    log.bytes -= old.cost();
                }
            }
            log.bytes += msg.cost();
            log.history.push_back(msg);
        }
    }

    /// The id after the last message stored (or, for a room that is not
    /// durable, kept): ids still pending commit are not yet part of it.
    pub fn stored_next(&self) -> u64 {
        self.next_id() - self.durable().map_or(0, |d| d.pending)
    }

    /// Oldest id kept anywhere (memory or store); `stored_next` when none.
    pub fn first_kept(&self) -> u64 {
        match self.durable() {
            Some(d) => d.first_id,
            None => self.window_first(),
        }
    }

    /// Oldest id in the in-memory window; `stored_next` when empty.
    pub fn window_first(&self) -> u64 {
        self.history()
            .front()
            .map_or_else(|| self.stored_next(), |m| m.id)
    }

    /// Whether the room has messages (kept, or pending commit): a room with
    /// neither members nor messages is forgotten.
    pub fn has_messages(&self) -> bool {
        match self.durable() {
            Some(d) => d.first_id < self.next_id(),
            None => !self.history().is_empty(),
        }
    }

    /// The window's messages with ids in `lo..hi`, when it holds them all.
    pub fn window(&self, lo: u64, hi: u64) -> Option<std::collections::vec_deque::Iter<'_, Msg>> {
        let first = self.window_first();
        if lo < first && lo < hi {
            return None;
        }
        let history = self.history();
        let len = history.len();
        let a = usize::try_from(lo.saturating_sub(first)).map_or(len, |n| n.min(len));
        let b = usize::try_from(hi.saturating_sub(first)).map_or(len, |n| n.min(len));
        Some(history.range(a..b.max(a)))
    }

    /// Ids of the newest `n` kept messages; complete when no older kept one
    /// exists.
    pub fn newest_span(&self, n: usize) -> Span {
        let hi = self.stored_next();
        let first = self.first_kept();
        let lo = hi.saturating_sub(n as u64).max(first);
        Span {
            lo,
            hi,
            complete: lo == first,
        }
    }

    /// Ids of the newest `max` kept messages with `id > since`; complete when
    /// they are all the messages ever posted after `since`.
    pub fn after_span(&self, since: u64, max: usize) -> Span {
        let hi = self.stored_next();
        let last = hi - 1;
        if since >= last {
            return Span {
                lo: hi,
                hi,
                complete: true,
            };
        }
        let lo = (since + 1)
            .max(self.first_kept())
            .max(hi.saturating_sub(max as u64));
        Span {
            lo,
            hi,
            complete: hi - lo == last - since,
        }
    }

    /// Ids of the newest `limit` kept messages with `id < before`; complete
    /// when no older kept message exists.
    pub fn before_span(&self, before: u64, limit: usize) -> Span {
        let first = self.first_kept();
        let hi = before.min(self.stored_next()).max(first);
        let lo = hi.saturating_sub(limit as u64).max(first);
        Span {
            lo,
            hi,
            complete: lo == first,
        }
    }

    /// Ids of the oldest `limit` kept messages with `id > after` (the
    /// `history` extension `after`); complete when no kept message is older
    /// than the page. The flag: the page reaches the newest message.
    pub fn forward_span(&self, after: u64, limit: usize) -> (Span, bool) {
        let first = self.first_kept();
        let next = self.stored_next();
        let lo = after.saturating_add(1).max(first).min(next);
        let hi = lo.saturating_add(limit as u64).min(next);
        let span = Span {
            lo,
            hi,
            complete: lo == first,
        };
        (span, hi == next)
    }

    /// Ids of `limit` kept messages centred on `around` (the `history`
    /// extension `around`): half of them older than it, the rest from it
    /// on, one side making up for what the other lacks. Complete and the
    /// flag as for [`Room::forward_span`].
    pub fn around_span(&self, around: u64, limit: usize) -> (Span, bool) {
        let first = self.first_kept();
        let next = self.stored_next();
        let limit = limit as u64;
        let pivot = around.clamp(first, next);
        let (older, newer) = (pivot - first, next - pivot);
        let from_on = newer.min(limit - older.min(limit / 2));
        let below = older.min(limit - from_on);
        let span = Span {
            lo: pivot - below,
            hi: pivot + from_on,
            complete: pivot - below == first,
        };
        (span, pivot + from_on == next)
    }

    /// The ids of a `history` page, and its `latest` flag: only the
    /// extensions (`after`, `around`) answer one, so that a `before` answer
    /// stays exactly the contract's.
    pub fn page_span(&self, page: super::protocol::Page, limit: usize) -> (Span, Option<bool>) {
        use super::protocol::Page;
        match page {
            Page::Before(before) => (self.before_span(before, limit), None),
            Page::After(after) => {
                let (span, latest) = self.forward_span(after, limit);
                (span, Some(latest))
            }
            Page::Around(id) => {
                let (span, latest) = self.around_span(id, limit);
                (span, Some(latest))
            }
        }
    }

    /// Posts a message: assigns its id and `ts`, keeps at most `keep`
    /// (dropping the oldest).
    pub fn post(&mut self, draft: Draft, wall_ms: u64, keep: usize) -> Msg {
        let msg = self.assign(draft, wall_ms);
        self.keep(msg.clone(), keep);
        msg
    }

    /// Drops the oldest kept message. The ring is shrunk when its capacity
    /// passes 2 × len + 4 (to 1.5 × len, so the next shrink needs at least
    /// a quarter of the messages gone: amortised O(1)); growth by doubling
    /// never passes that bound either. So a ring emptied by the global
    /// budget does not keep its peak allocation.
    pub fn pop_oldest(&mut self) -> Option<Msg> {
        let log = self.log.as_mut()?;
        let old = log.history.pop_front()?;
        log.bytes -= old.cost();
        let len = log.history.len();
        if log.history.capacity() > 2 * len + 4 {
            log.history.shrink_to(len + len / 2);
        }
        Some(old)
    }

    /// Whether the message `id` is still in the window.
    pub fn keeps(&self, id: u64) -> bool {
        self.window_first() <= id && id < self.stored_next()
    }
}

/// A room's epoch as text, inline: the epochs this server makes are at
/// most 13 characters (a u64 in base 36). A room keeps the number (8
/// bytes: idle rooms are many, a room per person is normal) and makes this
/// when it is asked; a longer epoch, from a store written otherwise, is
/// boxed.
#[derive(Clone, PartialEq, Eq)]
pub enum Epoch {
    Inline { len: u8, bytes: [u8; EPOCH_INLINE] },
    Boxed(Box<str>),
}

/// Bytes an [`Epoch`] holds inline: as many as fit beside its tag and
/// length in the 24 bytes the boxed form takes anyway.
const EPOCH_INLINE: usize = 22;

/// The base 36 digits, in order.
const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// `n` when `s` is exactly `n`'s base 36 form (lowercase, no leading
/// zero), as [`Epoch::base36`] writes it; so the text reads back the same.
fn parse_base36(s: &str) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.bytes().try_fold(0u64, |n, b| {
        let d = DIGITS.iter().position(|&c| c == b)?;
        n.checked_mul(36)?.checked_add(d as u64)
    })
}

impl Epoch {
    /// `n` in base 36, lowercase (at most 13 digits).
    pub fn base36(mut n: u64) -> Epoch {
        let mut buf = [0u8; 13];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = DIGITS[(n % 36) as usize];
            n /= 36;
            if n == 0 {
                break;
            }
        }
        let mut bytes = [0u8; EPOCH_INLINE];
        let len = buf.len() - i;
        bytes[..len].copy_from_slice(&buf[i..]);
        Epoch::Inline {
            len: len as u8,
            bytes,
        }
    }

    pub fn new(s: &str) -> Epoch {
        if s.len() <= EPOCH_INLINE {
            let mut bytes = [0u8; EPOCH_INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Epoch::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            Epoch::Boxed(s.into())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `&str` in `new`, so always UTF-8.
            Epoch::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Epoch::Boxed(s) => s,
        }
    }
}

impl Deref for Epoch {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A room's name. Names of up to [`NAME_INLINE`] bytes (most: `lobby`,
/// a name per person) are held inline, so an idle room pays no allocation
/// for its name; longer ones share one `Rc<str>`. Cloned into the store's
/// records and the pending messages: a copy of 24 bytes, or a count.
#[derive(Clone)]
pub enum RoomName {
    Inline { len: u8, bytes: [u8; NAME_INLINE] },
    Shared(Rc<str>),
}

/// Bytes a [`RoomName`] holds inline: as many as fit beside its tag and
/// length in 24 bytes (the `Rc<str>` takes 16 at an 8-byte offset).
pub const NAME_INLINE: usize = 22;

impl RoomName {
    pub fn new(s: &str) -> RoomName {
        if s.len() <= NAME_INLINE {
            let mut bytes = [0u8; NAME_INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            RoomName::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            RoomName::Shared(Rc::from(s))
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `&str` in `new`, so always UTF-8.
            RoomName::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            RoomName::Shared(s) => s,
        }
    }
}

impl From<&str> for RoomName {
    fn from(s: &str) -> RoomName {
        RoomName::new(s)
    }
}

impl Deref for RoomName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for RoomName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for RoomName {
    fn eq(&self, other: &RoomName) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RoomName {}

/// As `str` hashes, which `Borrow<str>` requires of map keys.
impl std::hash::Hash for RoomName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Room name → slot of `Chat::rooms`. The table keeps only the slot (4
/// bytes a room, where a map keyed by the name kept a 16-byte pointer beside
/// it); the name is read back from the room in its slot.
#[derive(Default)]
pub struct RoomIndex {
    table: HashTable<u32>,
    hasher: RandomState,
}

fn slot_name(rooms: &[Option<Room>], idx: u32) -> Option<&str> {
    rooms
        .get(idx as usize)
        .and_then(Option::as_ref)
        .map(|r| &*r.name)
}

impl RoomIndex {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The slot of the room named `name`.
    pub fn get(&self, rooms: &[Option<Room>], name: &str) -> Option<u32> {
        self.table
            .find(self.hasher.hash_one(name), |&i| {
                slot_name(rooms, i) == Some(name)
            })
            .copied()
    }

    /// Whether a room named `name` is indexed.
    pub fn contains(&self, rooms: &[Option<Room>], name: &str) -> bool {
        self.get(rooms, name).is_some()
    }

    /// Indexes the room in slot `idx` under its name, which no indexed room
    /// has. Every indexed slot must hold its room: growing rehashes them.
    pub fn insert(&mut self, rooms: &[Option<Room>], idx: u32) {
        let RoomIndex { table, hasher } = self;
        let Some(name) = slot_name(rooms, idx) else {
            return;
        };
        table.insert_unique(hasher.hash_one(name), idx, |&i| {
            hasher.hash_one(slot_name(rooms, i).unwrap_or_default())
        });
    }

    /// Forgets slot `idx`, indexed under `name` (its room may already be
    /// out of the slot): slots are unique, so comparing them along `name`'s
    /// probe sequence finds exactly its entry.
    pub fn remove(&mut self, name: &str, idx: u32) {
        if let Ok(e) = self
            .table
            .find_entry(self.hasher.hash_one(name), |&i| i == idx)
        {
            e.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle room's cost is mostly this struct (README, Performance: a
    /// connection and its room in ≤ 512 B): keep it from growing unnoticed.
    /// Its messages' state is in a `Log` of its own.
    #[test]
    fn room_state_stays_small() {
        assert!(std::mem::size_of::<Option<Room>>() <= 96);
        // The name inline, no allocation (see `RoomName`).
        // The figures of a 64-bit machine (armv7's are smaller).
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(std::mem::size_of::<Option<Room>>(), 96);
            assert_eq!(std::mem::size_of::<Epoch>(), 24);
            assert_eq!(std::mem::size_of::<RoomName>(), 24);
            assert_eq!(std::mem::size_of::<Members>(), 24);
            // Boxed, made with the first message: not part of an idle room.
            assert_eq!(std::mem::size_of::<Option<Box<Log>>>(), 8);
        }
    }

    #[test]
    fn epochs_of_any_length_read_back() {
        for s in [
            "",
            "ep",
            "3w5e11264sgsf",
            "0123456789012345678901",
            "a longer epoch than fits inline",
        ] {
            assert_eq!(Epoch::new(s).as_str(), s);
        }
        // A room keeps the number of a base 36 epoch, the text of any
        // other, and gives back what it was given.
        for (s, as_number) in [
            ("0", true),
            ("ep", true),
            ("3w5e11264sgsf", true), // u64::MAX
            ("3w5e11264sgsg", false),
            ("", false),
            ("00", false),
            ("0ep", false),
            ("EP", false),
            ("e-p", false),
            ("a longer epoch than fits inline", false),
        ] {
            let room = Room::new(RoomName::new("r"), 1, s);
            assert_eq!(room.epoch().as_str(), s);
            assert_eq!(room.log.is_none(), as_number, "{s:?}");
        }
        assert_eq!(Epoch::base36(u64::MAX).as_str(), "3w5e11264sgsf");
        assert_eq!(Epoch::base36(0).as_str(), "0");
        assert!(matches!(Epoch::new("3w5e11264sgsf"), Epoch::Inline { .. }));
        assert!(matches!(
            Epoch::new("a longer epoch than fits inline"),
            Epoch::Boxed(_)
        ));
    }

    #[test]
    fn room_names_of_any_length_read_back() {
        let long = "a-room-name-longer-than-22";
        for s in ["", "r", "own-9999", "0123456789012345678901", long] {
            assert_eq!(RoomName::new(s).as_str(), s);
            assert_eq!(RoomName::new(s), RoomName::new(s));
        }
        assert!(matches!(
            RoomName::new("0123456789012345678901"),
            RoomName::Inline { .. }
        ));
        assert!(matches!(RoomName::new(long), RoomName::Shared(_)));
        // A map keyed by names finds them by `&str` (`Borrow`).
        let mut m = std::collections::HashMap::new();
        m.insert(RoomName::new("own-1"), 1);
        m.insert(RoomName::new(long), 2);
        assert_eq!((m.get("own-1"), m.get(long)), (Some(&1), Some(&2)));
    }

    #[test]
    fn the_index_finds_rooms_by_name_and_forgets_them_by_slot() {
        let mut rooms: Vec<Option<Room>> = Vec::new();
        let mut index = RoomIndex::default();
        for i in 0..100u32 {
            rooms.push(Some(Room::new(
                RoomName::new(&format!("r{i}")),
                u64::from(i),
                "e",
            )));
            index.insert(&rooms, i);
        }
        assert_eq!(index.len(), 100);
        assert_eq!(index.get(&rooms, "r42"), Some(42));
        assert_eq!(index.get(&rooms, "r100"), None);
        // Forgotten after its room left the slot, as `Chat::forget` does.
        let gone = rooms[42].take().map(|r| r.name);
        index.remove(gone.as_deref().unwrap_or_default(), 42);
        assert_eq!(index.get(&rooms, "r42"), None);
        assert_eq!(index.get(&rooms, "r41"), Some(41));
        assert_eq!(index.len(), 99);
    }
}
