//! Chat service, sans-IO: rooms, nicknames, presence, history, rate limits
//! and the JSON protocol of `docs/protocol.md`. It never touches a socket and
//! never reads a clock; it tells an [`Outbox`] what to send to whom.
//!
//! Every broadcast is serialised and framed once into an `Rc<[u8]>` shared
//! by all its recipients.

pub mod accounts;
pub mod dms;
pub mod durable;
pub mod edits;
pub mod moderation;
pub mod nick;
pub mod protocol;
pub mod rate;
pub mod room;
pub mod uploads;
pub mod validate;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use nick::{Nick, NickIndex};
use protocol::{ChatError, HitOut, MsgOut, Out, Page, Parsed, Request, RoomInfo, Target, frame};
use rate::{Bucket, BucketTable, Verdict};
use room::{Members, Msg, Order, Room, RoomIndex, Span};

pub type ConnId = usize;

/// What the per-client limits (rate bucket and strikes, rooms created) are
/// kept by: the client's address as the server counts it (an IPv4 address,
/// an IPv6 prefix, the forwarded address behind a trusted proxy).
///
/// This is the seam for accounts: once they exist, a signed-in connection
/// will be limited by its account as well, through a second key handed in
/// the same way, so that neither changing address nor changing account
/// gives a fresh bucket.
pub type AddrKey = std::net::IpAddr;

/// Time passed in by the server (the chat never reads a clock).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic milliseconds, any origin.
    pub mono_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
}

/// Where the chat puts its output.
pub trait Outbox {
    /// `payload` is the JSON of one text message, built once per logical
    /// message and shared by every recipient; the server frames it.
    fn send(&mut self, to: ConnId, payload: &Rc<[u8]>);
    /// `payloads`, in order, to one connection: a run of a room's
    /// broadcasts that every member but their senders receives alike (see
    /// [`Chat::committed`]). The server frames the run once and shares the
    /// bytes between the members' queues: one queue entry and one slice of
    /// a write per member and turn, not one per message.
    fn send_run(&mut self, to: ConnId, payloads: &[Rc<[u8]>]) {
        for p in payloads {
            self.send(to, p);
        }
    }
    /// [`Outbox::send_run`] to each of `members`, in order: one call per
    /// stretch of a room's members rather than one per member.
    fn send_run_to_members(&mut self, members: &[ConnId], payloads: &[Rc<[u8]>]) {
        for &m in members {
            self.send_run(m, payloads);
        }
    }
    /// Ask the server to close this connection with a WebSocket close code
    /// and reason. The server will later call [`Chat::disconnect`] for it.
    fn close(&mut self, to: ConnId, code: u16, reason: &str);
    /// The stored messages of `room` with `lo <= id < hi`, oldest first: a
    /// durable chat asks when its in-memory window does not reach back far
    /// enough. Only committed messages are there.
    fn archive(&mut self, room: &str, lo: u64, hi: u64) -> Result<Vec<Msg>, ArchiveError> {
        let _ = (room, lo, hi);
        Ok(Vec::new())
    }
    /// Full-text search of `room`'s stored messages (a durable chat's
    /// `search`): the newest `limit` matches of `query` with `id < before`,
    /// newest first.
    fn search(
        &mut self,
        room: &str,
        query: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Msg>, ArchiveError> {
        let _ = (room, query, before, limit);
        Ok(Vec::new())
    }
}

/// The store could not be read (answered `storage_failed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveError;

#[derive(Clone, Debug)]
pub struct ChatConfig {
    /// Sent in `welcome`.
    pub motd: String,
    /// Messages kept per room.
    pub history: usize,
    /// Rooms one connection may be in.
    pub max_rooms_per_conn: usize,
    /// Rooms the server keeps (with members or retained history).
    pub max_rooms: usize,
    /// Rooms created from one address that may exist at once; 0: no cap.
    pub max_rooms_per_addr: usize,
    /// Longest `text`, in Unicode scalar values.
    pub max_text_chars: usize,
    /// Longest client message on /ws in bytes: the server enforces it, the
    /// chat only announces it in `welcome`.
    pub max_message_bytes: usize,
    /// Token bucket size; 0 turns the rate limit off.
    pub rate_burst: u32,
    /// Tokens refilled per second.
    pub rate_per_sec: u32,
    /// How long an empty room keeps its history, in ms.
    pub room_retention_ms: u64,
    /// Budget for room history across all rooms, in bytes as counted by
    /// [`room::Msg::cost`]; past it the server-wide oldest messages go first.
    pub max_history_bytes: usize,
    /// History lives in a store (see [`durable`]): a message is kept and
    /// sent only once committed, memory holds the newest messages of each
    /// room ([`Chat::window`]) within `max_history_bytes`, and `history`
    /// then counts what the store keeps per room.
    pub durable: bool,
    /// `--require-account`: only logged-in users may `join` or `dm`.
    pub require_account: bool,
    /// `--registration open`: anyone may register their nick (closed:
    /// only operators register accounts).
    pub registration_open: bool,
    /// Password hashing jobs running at once, at most (past it: `busy`).
    pub max_auth_jobs: usize,
    /// Accounts a non-operator `register` may bring the server to.
    pub max_accounts: usize,
    /// Registrations one address may start per hour; 0: no limit.
    pub registrations_per_hour: u32,
    /// Extension (images): who may upload how much (see [`uploads`]).
    pub uploads: uploads::UploadLimits,
}

impl Default for ChatConfig {
    fn default() -> ChatConfig {
        ChatConfig {
            motd: String::new(),
            history: 1000,
            max_rooms_per_conn: 32,
            max_rooms: 10_000,
            max_rooms_per_addr: 64,
            max_text_chars: 4000,
            max_message_bytes: 64 << 10,
            rate_burst: 20,
            rate_per_sec: 2,
            room_retention_ms: 24 * 60 * 60 * 1000,
            max_history_bytes: 64 << 20,
            durable: false,
            require_account: false,
            registration_open: true,
            max_auth_jobs: 32,
            max_accounts: 10_000,
            registrations_per_hour: 5,
            uploads: uploads::UploadLimits::default(),
        }
    }
}

/// Close code for rate-limit abuse (RFC 6455 §7.4.1: policy violation).
pub const CLOSE_POLICY: u16 = 1008;

/// Per-connection state, kept small: thousands of idle connections are normal.
struct Conn {
    nick: Nick,
    /// Indices into `Chat::rooms`; at most `max_rooms_per_conn`. Most
    /// people are in a few rooms: those fit inline, with no allocation.
    rooms: smallvec::SmallVec<[u32; 4]>,
    limit: Limit,
    /// A close was requested: ignore whatever still arrives.
    closing: bool,
    /// An account request (a password being hashed, or its commit) is
    /// under way: another is answered `busy`.
    busy: bool,
}

/// Where a connection's rate-limit bucket lives.
enum Limit {
    /// Its own (a client the server exempts from per-address rules, such as
    /// loopback without `--limit-loopback`), made at its first message: a
    /// new bucket is full, and a full bucket stays full until a message
    /// takes a token, so one made later holds exactly what one made at
    /// connect would. Boxed: an idle connection (or one with a shared
    /// bucket) pays 16 bytes here, not the bucket's 48.
    Own(Option<Box<Bucket>>),
    /// Shared with the other connections of its address: a slot of
    /// `Chat::limits`, holding one reference.
    Shared(u32),
}

/// Connections by id. The server's ids are slab keys, small and dense, so a
/// vector indexed by id is smaller and faster than a hash map.
#[derive(Default)]
struct ConnTable {
    slots: Vec<Option<Conn>>,
    len: usize,
}

/// Ids past this are refused: a table this large means a caller bug, not load.
const MAX_CONN_ID: ConnId = 1 << 24;

impl ConnTable {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, id: &ConnId) -> Option<&Conn> {
        self.slots.get(*id).and_then(Option::as_ref)
    }

    fn get_mut(&mut self, id: &ConnId) -> Option<&mut Conn> {
        self.slots.get_mut(*id).and_then(Option::as_mut)
    }

    fn contains_key(&self, id: &ConnId) -> bool {
        self.get(id).is_some()
    }

    /// Returns false (and keeps nothing) for an id past `MAX_CONN_ID`.
    fn insert(&mut self, id: ConnId, conn: Conn) -> bool {
        if id >= MAX_CONN_ID {
            return false;
        }
        if id >= self.slots.len() {
            self.slots.resize_with(id + 1, || None);
        }
        if self.slots[id].replace(conn).is_none() {
            self.len += 1;
        }
        true
    }

    fn nick(&self, id: ConnId) -> Option<&str> {
        self.get(&id).map(|c| c.nick.as_str())
    }

    fn remove(&mut self, id: &ConnId) -> Option<Conn> {
        let c = self.slots.get_mut(*id)?.take()?;
        self.len -= 1;
        Some(c)
    }
}

pub struct Chat {
    cfg: ChatConfig,
    conns: ConnTable,
    /// Nick (any case) -> holder.
    nicks: NickIndex,
    /// Room slab; a slot is reused only after the room is forgotten, when no
    /// connection refers to it any more.
    rooms: Vec<Option<Room>>,
    free_rooms: Vec<u32>,
    room_names: RoomIndex,
    /// Every kept message in posting order, server-wide, plus stale entries
    /// (see [`Chat::trim_order`]): the eviction order of the history budget.
    order: VecDeque<Order>,
    /// Sum of `Room::bytes` over all rooms; at most `max_history_bytes`
    /// between calls.
    history_bytes: usize,
    /// Sum of `history.len()` over all rooms: the live entries of `order`.
    kept: usize,
    epoch_seed: u64,
    epoch_counter: u64,
    guest_counter: u64,
    /// Rate-limit buckets by address, shared by that address's connections.
    limits: BucketTable<AddrKey>,
    /// Rooms kept that were created from each address (≤ `max_rooms` keys).
    room_owners: HashMap<AddrKey, u32>,
    /// Durable chats: what to store, and the messages awaiting their commit.
    records: Vec<durable::Record>,
    pending: Vec<durable::Pending>,
    /// Accounts, sessions, hashing jobs and failed logins.
    acct: accounts::Accounts,
    /// Bans and moderation actions awaiting their commit.
    moder: moderation::Moderation,
    /// Reactions and edits awaiting their commit; guest authors.
    edits: edits::Edits,
    /// DM conversations kept as history, and read positions.
    dms: dms::Dms,
    /// Messages refused by the rate limit since start (`/metrics`).
    rate_limited: u64,
    /// Extension (images): the uploads and their accounting.
    uploads: uploads::Uploads,
}

/// Stale entries `order` may hold beyond one per kept message before it is
/// compacted (so that tiny histories do not compact on every post).
const ORDER_SLACK: usize = 64;

/// Whether a queue entry still points at a kept message: its room was not
/// forgotten (same slot and serial) and the message not dropped.
fn order_live(rooms: &[Option<Room>], e: &Order) -> bool {
    rooms
        .get(e.slot as usize)
        .and_then(Option::as_ref)
        .is_some_and(|r| r.serial == e.serial && r.keeps(e.id))
}

/// splitmix64 finaliser: a bijection on u64, so distinct inputs give
/// distinct epochs within one run.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` in base 36, lowercase: the digits of a room's epoch.
fn base36(n: u64) -> String {
    room::Epoch::base36(n).as_str().to_owned()
}

/// Puts `conn` (not yet a member) into a room's member list, which is kept
/// in the order `joined` lists it: by nick, ignoring case (nicks are unique
/// in that form). A join then costs a binary search and a move, not a sort
/// of the whole room, which a reconnect storm into a large room repeats for
/// every member.
fn insert_member(conns: &ConnTable, members: &mut Members, conn: ConnId) {
    let nick_of = |m: ConnId| conns.nick(m).unwrap_or_default();
    let nick = nick_of(conn);
    let pos = members.partition_point(|&m| validate::cmp_lowercase(nick_of(m), nick).is_lt());
    members.insert(pos, conn);
}

/// Takes `conn` out of a member list, keeping the order.
fn remove_member_id(members: &mut Members, conn: ConnId) {
    if let Some(pos) = members.iter().position(|&m| m == conn) {
        members.remove(pos);
    }
}

/// Sends `frame` to every member of `members` but `except`.
fn broadcast(out: &mut dyn Outbox, members: &[ConnId], except: Option<ConnId>, f: &Rc<[u8]>) {
    for &m in members {
        if Some(m) != except {
            out.send(m, f);
        }
    }
}

impl Chat {
    /// `epoch_seed` varies per server start so epochs differ across restarts.
    pub fn new(cfg: ChatConfig, epoch_seed: u64) -> Chat {
        Chat {
            cfg,
            conns: ConnTable::default(),
            nicks: NickIndex::default(),
            rooms: Vec::new(),
            free_rooms: Vec::new(),
            room_names: RoomIndex::default(),
            order: VecDeque::new(),
            history_bytes: 0,
            kept: 0,
            epoch_seed,
            epoch_counter: 0,
            guest_counter: 0,
            limits: BucketTable::new(rate::MAX_IDLE_ENTRIES),
            room_owners: HashMap::new(),
            records: Vec::new(),
            pending: Vec::new(),
            acct: accounts::Accounts::default(),
            moder: moderation::Moderation::default(),
            edits: edits::Edits::default(),
            dms: dms::Dms::default(),
            rate_limited: 0,
            uploads: uploads::Uploads::default(),
        }
    }

    /// Makes room for connection ids below `n` without growing later (see
    /// the server's `bind`).
    pub fn reserve_connections(&mut self, n: usize) {
        let n = n.min(MAX_CONN_ID);
        self.conns
            .slots
            .reserve_exact(n.saturating_sub(self.conns.slots.len()));
        // Not the nick index: its entries land anywhere in the table, so a
        // table reserved for 65,536 nicks had all its pages resident with
        // a few thousand users (640 KiB, 64 B per connection at 10,000);
        // grown by doubling it stays about 2.3 buckets of 5 bytes per nick.
    }

    /// Makes room for `max_rooms` rooms (at most `n`) without growing later,
    /// as [`Chat::reserve_connections`] does for connections: the room slab,
    /// grown by doubling while a join storm fills the heap, left its old
    /// copies as holes among long-lived allocations. Only the slots in use
    /// are resident. (Not the name index, for the nick index's reason.)
    pub fn reserve_rooms(&mut self, n: usize) {
        let n = n.min(self.cfg.max_rooms);
        self.rooms.reserve_exact(n.saturating_sub(self.rooms.len()));
    }

    /// Connections currently open.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Rooms kept: with members, or empty with retained history (DM
    /// conversations, kept as hidden rooms, not counted).
    pub fn rooms(&self) -> usize {
        self.room_names.len() - self.dms.count()
    }

    /// Bytes of room history kept server-wide, as counted against
    /// `max_history_bytes` ([`room::Msg::cost`]).
    pub fn history_bytes(&self) -> usize {
        self.history_bytes
    }

    /// Messages of room history kept server-wide.
    pub fn history_messages(&self) -> usize {
        self.kept
    }

    /// Chat messages refused by the rate limit (answered `rate_limited` or
    /// closed) since start.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited
    }

    /// A /ws connection opened; `requested_nick` is the percent-decoded
    /// `?nick=` value if any. Sends `welcome`. The connection is exempt from
    /// the per-address limits: see [`Chat::connect_from`].
    pub fn connect(
        &mut self,
        conn: ConnId,
        requested_nick: Option<&str>,
        now: Now,
        out: &mut dyn Outbox,
    ) {
        self.connect_from(conn, requested_nick, None, now, out);
    }

    /// [`Chat::connect`] for a client at `addr`: its rate-limit bucket and
    /// strikes are those of every connection from `addr` (and outlive them
    /// until the bucket is full again), and the rooms it creates count
    /// against `max_rooms_per_addr`. `None`: a bucket of its own and no room
    /// cap (clients the server exempts, such as loopback by default).
    pub fn connect_from(
        &mut self,
        conn: ConnId,
        requested_nick: Option<&str>,
        addr: Option<AddrKey>,
        now: Now,
        out: &mut dyn Outbox,
    ) {
        if self.conns.contains_key(&conn) {
            // The server reused an id without telling us: forget the old one.
            self.disconnect(conn, now, out);
        }
        if conn >= MAX_CONN_ID {
            log::error!("chat: connection id {conn} out of range; not admitted");
            out.close(conn, 1011, "internal error");
            return;
        }
        let nick = match requested_nick.and_then(Nick::new) {
            Some(n)
                if validate::valid_nick(&n)
                    && self.holder(&n).is_none()
                    && !self.nick_reserved_from(&n, None)
                    && !self.nick_banned(&n, now) =>
            {
                n
            }
            _ => self.guest_nick(),
        };
        self.conns.insert(
            conn,
            Conn {
                nick,
                rooms: smallvec::SmallVec::new(),
                limit: match addr {
                    Some(a) => {
                        Limit::Shared(self.limits.acquire(a, self.cfg.rate_burst, now.mono_ms))
                    }
                    None => Limit::Own(None),
                },
                closing: false,
                busy: false,
            },
        );
        // After the insert: the index reads nicks back from `conns`.
        let conns = &self.conns;
        self.nicks
            .insert(&nick, conn as u32, |id| conns.nick(id as ConnId));
        let f = frame(&Out::Welcome {
            nick: &nick,
            motd: &self.cfg.motd,
            protocol: protocol::PROTOCOL_VERSION,
            registration: (!self.cfg.registration_open).then_some("closed"),
            require_account: self.cfg.require_account,
            limits: protocol::Limits {
                text_chars: self.cfg.max_text_chars,
                message_bytes: self.cfg.max_message_bytes,
                rate_burst: self.cfg.rate_burst,
                rate_per_sec: self.cfg.rate_per_sec,
                rooms_per_conn: self.cfg.max_rooms_per_conn,
            },
        });
        out.send(conn, &f);
        self.enforce_on_connect(conn, now, out);
    }

    fn guest_nick(&mut self) -> Nick {
        loop {
            self.guest_counter += 1;
            // "guest-" and a u64 fit in MAX_NICK_LEN.
            if let Some(n) = Nick::new(&format!("guest-{}", self.guest_counter))
                && self.holder(&n).is_none()
                && !self.nick_reserved_from(&n, None)
            {
                return n;
            }
        }
    }

    /// Who holds `nick` (in any case).
    fn holder(&self, nick: &str) -> Option<ConnId> {
        let conns = &self.conns;
        self.nicks
            .get(nick, |id| conns.nick(id as ConnId))
            .map(|id| id as ConnId)
    }

    /// The connection is gone: leave every room (presence `leave` to the
    /// others) and free the nick.
    pub fn disconnect(&mut self, conn: ConnId, now: Now, out: &mut dyn Outbox) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.nicks.remove(&c.nick, conn as u32);
        self.forget_jobs_of(conn);
        self.edits_disconnect(conn);
        if let Limit::Shared(slot) = c.limit {
            self.limits.release(slot);
        }
        for idx in c.rooms {
            self.remove_member(idx, conn, &c.nick, now, out);
        }
    }

    /// Forgets empty rooms whose retention has passed, and the buckets of
    /// addresses with no connection that are full again.
    pub fn tick(&mut self, now: Now) {
        self.limits
            .expire(now.mono_ms, self.cfg.rate_burst, self.cfg.rate_per_sec);
        self.expire_failures(now, false);
        self.expire_moderation(now);
        self.expire_uploads(now);
        let expired: Vec<u32> = self
            .rooms
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                Some(r) if self.expired(r, now) => Some(i as u32),
                _ => None,
            })
            .collect();
        for idx in expired {
            self.forget(idx);
        }
        if self.cfg.durable {
            self.touch_active(now);
        }
    }

    fn expired(&self, r: &Room, now: Now) -> bool {
        r.members.is_empty()
            && (!r.has_messages()
                // DM history is kept until retention by count or bytes
                // drops it, not for a time.
                || !dms::is_dm(&r.name)
                    && now
                    .mono_ms
                    .saturating_sub(r.empty_since())
                    .saturating_add(r.aged())
                    >= self.cfg.room_retention_ms)
    }

    fn forget(&mut self, idx: u32) {
        if let Some(r) = self.rooms.get_mut(idx as usize).and_then(Option::take) {
            self.forget_stored(&r);
            self.drop_images_below(&r.name, u64::MAX);
            self.dms.forgotten(&r.name);
            self.room_names.remove(&r.name, idx);
            if let Some(owner) = r.owner
                && let Some(n) = self.room_owners.get_mut(&owner)
            {
                *n -= 1;
                if *n == 0 {
                    self.room_owners.remove(&owner);
                }
            }
            self.free_rooms.push(idx);
            self.history_bytes -= r.bytes();
            self.kept -= r.history().len();
            self.trim_order();
        }
    }

    /// Evicts the server-wide oldest kept messages until the history is
    /// within `max_history_bytes`. Each turn pops one `order` entry, and each
    /// entry was pushed once by a post: amortised O(1) per message.
    fn enforce_budget(&mut self) {
        while self.history_bytes > self.cfg.max_history_bytes {
            let Some(e) = self.order.pop_front() else {
                break;
            };
            let Some(room) = self.rooms.get_mut(e.slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            // Entries older than `e` are all gone from the queue, and a room's
            // messages were queued in id order, so a live `e` is its room's
            // oldest kept message; anything else is stale.
            if room.serial != e.serial || room.history().front().map(|m| m.id) != Some(e.id) {
                continue;
            }
            if let Some(m) = room.pop_oldest() {
                self.history_bytes -= m.cost();
                self.kept -= 1;
            }
            // Same rule as on leave: neither members nor kept messages.
            if !room.has_messages() && room.members.is_empty() {
                self.forget(e.slot);
            }
        }
        self.trim_order();
    }

    /// Keeps `order` from holding stale entries (room forgotten or
    /// recreated, or message dropped by the per-room cap) without bound:
    /// - stale entries at the front are popped at once;
    /// - when `order` passes 2 × kept + `ORDER_SLACK` entries, it is
    ///   compacted. At least half of it is then stale, so the O(len) pass
    ///   removes ≥ len / 2 entries that were each pushed once: amortised O(1).
    ///
    /// So after every call there are at most kept + `ORDER_SLACK` stale
    /// entries: an entry outlives its message by at most that many other
    /// entries going stale (or until it reaches the front), and the queue's
    /// size follows the kept messages, whatever the traffic. Its capacity is
    /// shrunk back past 4 × that bound, halving it, so the shrink costs
    /// amortised O(1) too; `room::MSG_OVERHEAD` charges the worst case.
    fn trim_order(&mut self) {
        while let Some(e) = self.order.front() {
            if order_live(&self.rooms, e) {
                break;
            }
            self.order.pop_front();
        }
        let bound = 2 * self.kept + ORDER_SLACK;
        if self.order.len() > bound {
            let rooms = &self.rooms;
            self.order.retain(|e| order_live(rooms, e));
        }
        if self.order.capacity() > 4 * bound {
            self.order.shrink_to(2 * bound);
        }
    }

    fn room(&self, idx: u32) -> Option<&Room> {
        self.rooms.get(idx as usize).and_then(Option::as_ref)
    }

    fn room_mut(&mut self, idx: u32) -> Option<&mut Room> {
        self.rooms.get_mut(idx as usize).and_then(Option::as_mut)
    }

    /// The slot of the room named `name`.
    fn room_index(&self, name: &str) -> Option<u32> {
        self.room_names.get(&self.rooms, name)
    }

    /// Removes `conn` from a room, tells the others, and forgets the room at
    /// once when it is left with neither members nor history.
    fn remove_member(
        &mut self,
        idx: u32,
        conn: ConnId,
        nick: &str,
        now: Now,
        out: &mut dyn Outbox,
    ) {
        let Some(r) = self.room_mut(idx) else {
            return;
        };
        remove_member_id(&mut r.members, conn);
        if r.members.is_empty() {
            if let Some(l) = r.log.as_mut() {
                l.empty_since = now.mono_ms;
                l.aged = 0;
            }
            if !r.has_messages() {
                self.forget(idx);
            } else if r.stored() {
                let room = r.name.clone();
                self.records.push(durable::Record::Touch {
                    room,
                    last_active: now.wall_ms,
                });
            }
            return;
        }
        let f = frame(&Out::Presence {
            room: &r.name,
            nick,
            event: "leave",
            registered: false,
            role: None,
        });
        broadcast(out, &r.members, None, &f);
    }

    /// One complete text message from the client.
    pub fn on_text(&mut self, conn: ConnId, msg: &[u8], now: Now, out: &mut dyn Outbox) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        // The rate limit comes first, before parsing.
        let (burst, per_sec) = (self.cfg.rate_burst, self.cfg.rate_per_sec);
        let verdict = match &mut c.limit {
            Limit::Own(_) if burst == 0 => Verdict::Pass,
            Limit::Own(b) => b
                .get_or_insert_with(|| Box::new(Bucket::new(burst, now.mono_ms)))
                .take(now.mono_ms, burst, per_sec),
            Limit::Shared(slot) => self
                .limits
                .bucket_mut(*slot)
                .map_or(Verdict::Pass, |b| b.take(now.mono_ms, burst, per_sec)),
        };
        if verdict != Verdict::Pass {
            self.rate_limited += 1;
        }
        match verdict {
            Verdict::Pass => {}
            Verdict::Refuse => {
                send_error(out, conn, None, &ChatError::RateLimited);
                return;
            }
            Verdict::Close => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.closing = true;
                }
                out.close(conn, CLOSE_POLICY, "rate limit exceeded");
                return;
            }
        }
        match protocol::parse(msg, self.cfg.max_text_chars) {
            Err(rej) => send_error(out, conn, rej.r#ref.as_deref(), &rej.error),
            Ok(Parsed { r#ref, request }) => {
                let r = r#ref.as_deref();
                if let Err(e) = self.handle(conn, request, r, now, out) {
                    send_error(out, conn, r, &e);
                }
            }
        }
    }

    fn handle(
        &mut self,
        conn: ConnId,
        req: Request,
        r: Option<&str>,
        now: Now,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        match req {
            Request::Nick { nick } => {
                self.check_banned(conn, "", Some(&nick), now)?;
                self.set_nick(conn, nick, r, out)
            }
            Request::Join { room, since, epoch } => {
                self.require_account(conn)?;
                self.check_banned(conn, &room, None, now)?;
                self.join(conn, &room, since, epoch.as_deref(), r, now, out)
            }
            Request::Leave { room } => self.leave(conn, &room, r, now, out),
            Request::Message {
                room,
                text,
                reply_to,
                image,
            } => {
                let idx = self.joined_room(conn, &room)?;
                let mut draft = self.draft(conn, idx, text, reply_to, out)?;
                draft.image = match image {
                    Some(i) => Some(
                        self.check_image(conn, i)
                            .map_err(|()| ChatError::NoSuchUpload)?,
                    ),
                    None => None,
                };
                self.check_post(conn, &room, now)?;
                self.message(conn, &room, draft, r, now, out)
            }
            Request::Dm { to, text } => {
                self.require_account(conn)?;
                self.dm(conn, &to, &text, r, now, out)
            }
            Request::Typing { room, active } => self.typing(conn, &room, active, out),
            Request::History { room, page, limit } => {
                self.history(conn, &room, page, limit, r, out)
            }
            Request::Rooms => {
                self.list_rooms(conn, r, out);
                Ok(())
            }
            Request::Search {
                target,
                query,
                before,
                limit,
                context,
            } => self.search(conn, &target, &query, (before, limit, context), r, out),
            Request::Register { nick, password } => self.register(conn, nick, password, r, now),
            Request::Login(creds) => self.login(conn, creds, r, now, out),
            Request::Logout { all } => self.logout(conn, all, r),
            Request::Passwd {
                password,
                new_password,
            } => self.passwd(conn, password, new_password, r, now),
            Request::Kick { room, nick, reason } => self.kick(conn, &room, &nick, reason, r, now),
            Request::Ban {
                room,
                nick,
                duration,
                ip,
                reason,
            } => self.ban(conn, room, &nick, duration, ip, reason, r, now),
            Request::Unban { room, nick } => self.unban(conn, room, &nick, r, now),
            Request::Mute {
                room,
                nick,
                duration,
                reason,
            } => self.mute(conn, &room, &nick, duration, reason, r, now),
            Request::Slow { room, interval } => self.slow(conn, &room, interval, r, now),
            Request::Moderator { room, nick, on } => self.appoint(conn, &room, &nick, on, r, now),
            Request::Topic { room, topic } => self.set_topic(conn, &room, topic, r, now),
            Request::Delete { room, id } => self.delete_message(conn, &room, id, r, now, out),
            Request::React {
                room,
                id,
                emoji,
                on,
            } => self.react(conn, &room, id, emoji, on, r, out),
            Request::Edit { room, id, text } => self.edit(conn, &room, id, text, r, now, out),
            Request::DmHistory { with, page, limit } => {
                self.dm_history(conn, &with, page, limit, r, out)
            }
            Request::Read { target, id } => self.read(conn, target, id, r, out),
        }
    }

    /// The index of a room `conn` has joined.
    fn joined_room(&self, conn: ConnId, name: &str) -> Result<u32, ChatError> {
        let idx = self.room_index(name).ok_or(ChatError::NotInRoom)?;
        let c = self.conns.get(&conn).ok_or(ChatError::NotInRoom)?;
        if c.rooms.contains(&idx) {
            Ok(idx)
        } else {
            Err(ChatError::NotInRoom)
        }
    }

    fn set_nick(
        &mut self,
        conn: ConnId,
        nick: String,
        r: Option<&str>,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        if let Some(holder) = self.holder(&nick)
            && holder != conn
        {
            return Err(ChatError::NickTaken);
        }
        if self.nick_reserved_from(&nick, Some(conn)) {
            return Err(ChatError::NickRegistered);
        }
        // Parsing checked the nick rule, so this holds; answer as it would.
        let Some(new) = Nick::new(&nick) else {
            return Err(ChatError::Invalid {
                field: "nick",
                reason: protocol::Reason::Nick,
            });
        };
        self.rename(conn, new, r, out);
        Ok(())
    }

    /// Gives `conn` the nick `new` (free, or a case variant of its own):
    /// `nick` to it (with `r`) and once to everyone sharing a room with it.
    fn rename(&mut self, conn: ConnId, new: Nick, r: Option<&str>, out: &mut dyn Outbox) {
        let nick = new.as_str().to_string();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let old = c.nick;
        if old == new {
            let f = frame(&Out::Nick {
                old: &old,
                nick: &nick,
                registered: self.verified(conn),
                r#ref: r,
            });
            out.send(conn, &f);
            return;
        }
        c.nick = new;
        let rooms = c.rooms.clone();
        let mut others: Vec<ConnId> = Vec::new();
        for &i in &rooms {
            if let Some(room) = self.rooms.get_mut(i as usize).and_then(Option::as_mut) {
                // The new nick sorts elsewhere in the member list.
                remove_member_id(&mut room.members, conn);
                others.extend_from_slice(&room.members);
                insert_member(&self.conns, &mut room.members, conn);
            }
        }
        others.sort_unstable();
        others.dedup();
        self.nicks.remove(&old, conn as u32);
        let conns = &self.conns;
        self.nicks
            .insert(&new, conn as u32, |id| conns.nick(id as ConnId));

        let registered = self.verified(conn);
        let shared = frame(&Out::Nick {
            old: &old,
            nick: &new,
            registered,
            r#ref: None,
        });
        let own = match r {
            Some(_) => frame(&Out::Nick {
                old: &old,
                nick: &new,
                registered,
                r#ref: r,
            }),
            None => shared.clone(),
        };
        out.send(conn, &own);
        broadcast(out, &others, None, &shared);
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        conn: ConnId,
        name: &str,
        since: Option<u64>,
        epoch: Option<&str>,
        r: Option<&str>,
        now: Now,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let existing = self.room_index(name);
        let member_of = existing.filter(|i| c.rooms.contains(i));
        let refresh = member_of.is_some();
        let nick = c.nick;
        let joined_count = c.rooms.len();
        let owner = match c.limit {
            Limit::Shared(slot) => self.limits.key(slot),
            Limit::Own(_) => None,
        };
        let idx = if let Some(i) = member_of {
            i
        } else {
            if joined_count >= self.cfg.max_rooms_per_conn {
                return Err(ChatError::TooManyRooms { server: false });
            }
            // A room past its retention that `tick` has not reached yet is
            // already gone: it starts again with a new epoch.
            let existing = match existing {
                Some(i) if self.room(i).is_some_and(|room| self.expired(room, now)) => {
                    self.forget(i);
                    None
                }
                other => other,
            };
            match existing {
                Some(i) => i,
                None => {
                    self.check_owned_rooms(conn, name)?;
                    let i = self.create_room(name, owner)?;
                    self.record_creator(conn, name);
                    i
                }
            }
        };
        let span = match self.room(idx) {
            Some(room) => match since {
                Some(s) if epoch.is_none_or(|e| e == &*room.epoch()) => {
                    room.after_span(s, validate::JOIN_SINCE_MAX)
                }
                _ => room.newest_span(validate::JOIN_NEWEST),
            },
            None => return Ok(()),
        };
        // Read from the store before anything changes, so that a failed
        // read leaves the membership as it was.
        let loaded = match self.room(idx) {
            Some(room) if room.window(span.lo, span.hi).is_none() => {
                Some(archive(out, &room.name, span)?)
            }
            _ => None,
        };
        if !refresh {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.rooms.push(idx);
            }
            if let Some(room) = self.rooms.get_mut(idx as usize).and_then(Option::as_mut) {
                insert_member(&self.conns, &mut room.members, conn);
            }
        }
        let Some(room) = self.room(idx) else {
            return Ok(());
        };

        // Already in order (see `insert_member`).
        let members: Vec<&str> = room
            .members
            .iter()
            .filter_map(|&m| self.conns.nick(m))
            .collect();
        // Only logged-in members can be either: with nobody logged in on the
        // server, neither list costs a pass over the members.
        let (registered, ranked): (Vec<&str>, Vec<(&str, &'static str)>) =
            if self.anyone_logged_in() {
                let nick = |m: ConnId| self.conns.nick(m);
                (
                    room.members
                        .iter()
                        .filter(|&&m| self.verified(m))
                        .filter_map(|&m| nick(m))
                        .collect(),
                    room.members
                        .iter()
                        .filter(|&&m| self.is_logged_in(m))
                        .filter_map(|&m| Some((nick(m)?, self.role_in(m, &room.name)?)))
                        .collect(),
                )
            } else {
                (Vec::new(), Vec::new())
            };
        let moderators = ranked.iter().map(|&(n, _)| n).collect();
        let epoch = room.epoch();
        let f = frame(&Out::Joined {
            room: &room.name,
            epoch: &epoch,
            members,
            registered,
            moderators,
            roles: protocol::RolesOut(ranked),
            history: page_out(room, span, loaded.as_deref()),
            complete: span.complete,
            topic: self.topic_of(&room.name),
            role: self.role_in(conn, &room.name),
            read: self.read_of(conn, &room.name),
            r#ref: r,
        });
        out.send(conn, &f);
        if !refresh {
            let f = frame(&Out::Presence {
                room: &room.name,
                nick: &nick,
                event: "join",
                registered: self.verified(conn),
                role: self.role_in(conn, &room.name),
            });
            broadcast(out, &room.members, Some(conn), &f);
        }
        Ok(())
    }

    /// SIGHUP (README, "Command line"): the chat's settings that may
    /// change while it runs. The motd is read at each welcome; the rate
    /// limit at each message (a bucket past the new burst is cut to it on
    /// its next message), so both hold for everyone at once. Connections
    /// already open keep the `limits` their welcome told them.
    pub fn reconfigure(
        &mut self,
        motd: &str,
        rate_burst: u32,
        rate_per_sec: u32,
        max_message_bytes: usize,
    ) {
        if self.cfg.motd != motd {
            self.cfg.motd = motd.to_string();
        }
        self.cfg.rate_burst = rate_burst;
        self.cfg.rate_per_sec = rate_per_sec;
        // What the welcome advertises must be what the receiver enforces.
        self.cfg.max_message_bytes = max_message_bytes;
    }

    /// Creates a room for a client at `owner` (`None`: an exempt client).
    ///
    /// Past `max_rooms_per_addr` rooms from one address, creation is refused.
    /// When the server is full, a memberless room (which has history:
    /// without, it is already gone) is forgotten to make space, but never for
    /// a client already holding its share, `max_rooms` divided among the
    /// addresses holding rooms: a crowd of connections, or of addresses, can
    /// fill the server, but not make `general` go for yet more rooms of its
    /// own, while a newcomer still gets a room. The room forgotten is the
    /// longest memberless one of an address over its share if there is one,
    /// else the longest memberless one.
    fn create_room(&mut self, name: &str, owner: Option<AddrKey>) -> Result<u32, ChatError> {
        let held = owner
            .and_then(|k| self.room_owners.get(&k).copied())
            .unwrap_or(0) as usize;
        let cap = self.cfg.max_rooms_per_addr;
        if owner.is_some() && cap > 0 && held >= cap {
            return Err(ChatError::TooManyRoomsFromAddress);
        }
        if self.room_names.len() - self.dms.count() >= self.cfg.max_rooms {
            let owners = self.room_owners.len() + usize::from(owner.is_some() && held == 0);
            let share = (self.cfg.max_rooms / owners.max(1)).max(1);
            if owner.is_some() && held >= share {
                return Err(ChatError::TooManyRooms { server: true });
            }
            let room_owners = &self.room_owners;
            let over_share = |r: &Room| {
                r.owner
                    .and_then(|k| room_owners.get(&k))
                    .is_some_and(|&n| n as usize > share)
            };
            // Live rooms come before stale history; of the stale, the
            // hoarders' go first, then the one whose last member left
            // longest ago.
            let oldest = self
                .rooms
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.as_ref().map(|r| (i, r)))
                .filter(|(_, r)| r.members.is_empty() && !dms::is_dm(&r.name))
                .min_by_key(|(_, r)| (!over_share(r), r.empty_since()))
                .map(|(i, _)| i as u32);
            match oldest {
                Some(i) => self.forget(i),
                None => return Err(ChatError::TooManyRooms { server: true }),
            }
        }
        Ok(self.new_room(name, owner))
    }

    /// Puts a new room in the slab (caps already checked).
    fn new_room(&mut self, name: &str, owner: Option<AddrKey>) -> u32 {
        self.epoch_counter += 1;
        let epoch = base36(mix(self
            .epoch_seed
            .wrapping_add(self.epoch_counter.wrapping_mul(0x9e37_79b9_7f4a_7c15))));
        let name = room::RoomName::new(name);
        let room = Room::new(name, self.epoch_counter, &epoch);
        let mut room = room;
        room.owner = owner;
        if let Some(k) = owner {
            *self.room_owners.entry(k).or_insert(0) += 1;
        }
        room.durable = self.cfg.durable;
        let idx = match self.free_rooms.pop() {
            Some(i) => {
                self.rooms[i as usize] = Some(room);
                i
            }
            None => {
                self.rooms.push(Some(room));
                (self.rooms.len() - 1) as u32
            }
        };
        self.room_names.insert(&self.rooms, idx);
        idx
    }

    fn leave(
        &mut self,
        conn: ConnId,
        name: &str,
        r: Option<&str>,
        now: Now,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        let idx = self.joined_room(conn, name)?;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        c.rooms.retain(|i| *i != idx);
        let nick = c.nick;
        let f = frame(&Out::Left {
            room: name,
            r#ref: r,
        });
        out.send(conn, &f);
        self.remove_member(idx, conn, &nick, now, out);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn message(
        &mut self,
        conn: ConnId,
        name: &str,
        draft: room::Draft,
        r: Option<&str>,
        now: Now,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        let idx = self.joined_room(conn, name)?;
        if self.cfg.durable {
            self.post_durable(idx, conn, draft, r, now);
            return Ok(());
        }
        let Some(msg) = self.post_in_memory(idx, draft, now) else {
            return Ok(());
        };
        let Some(room) = self.room(idx) else {
            return Ok(());
        };
        let shared = frame(&MsgOut::new(&room.name, &msg, None));
        let own = match r {
            Some(_) => frame(&MsgOut::new(&room.name, &msg, r)),
            None => shared.clone(),
        };
        for &m in &room.members {
            out.send(m, if m == conn { &own } else { &shared });
        }
        self.enforce_budget();
        Ok(())
    }

    /// Posts to a room that is not durable: kept at once (at most
    /// `--history`), counted in the server's totals and posting order. The
    /// caller sends it, then enforces the budget.
    fn post_in_memory(&mut self, idx: u32, draft: room::Draft, now: Now) -> Option<Msg> {
        let keep = self.cfg.history;
        let room = self.room_mut(idx)?;
        let (bytes_before, kept_before) = (room.bytes(), room.history().len());
        let msg = room.post(draft, now.wall_ms, keep);
        let (bytes_after, kept_after, serial) = (room.bytes(), room.history().len(), room.serial);
        let name = room.name.clone();
        self.attach_image(msg.image, &name, msg.id);
        // The room's totals are part of the server's, so these never underflow.
        self.history_bytes = self.history_bytes - bytes_before + bytes_after;
        self.kept = self.kept - kept_before + kept_after;
        if keep > 0 {
            self.order.push_back(Order {
                slot: idx,
                serial,
                id: msg.id,
            });
        }
        Some(msg)
    }

    fn dm(
        &mut self,
        conn: ConnId,
        to: &str,
        text: &str,
        r: Option<&str>,
        now: Now,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        // Between two accounts: kept as history (see `dms`).
        if let Some(peer) = self.dm_peer(conn, to) {
            return self.dm_stored(conn, peer, text, r, now, out);
        }
        let target = self.holder(to).ok_or(ChatError::NoSuchUser)?;
        let (Some(from), Some(recipient)) = (self.conns.get(&conn), self.conns.get(&target)) else {
            return Err(ChatError::NoSuchUser);
        };
        let dm = |r| {
            frame(&Out::Dm {
                from: &from.nick,
                to: &recipient.nick,
                text,
                ts: now.wall_ms,
                r#ref: r,
            })
        };
        let shared = dm(None);
        if target != conn {
            out.send(target, &shared);
        }
        let own = if r.is_some() { dm(r) } else { shared };
        out.send(conn, &own);
        Ok(())
    }

    fn typing(
        &mut self,
        conn: ConnId,
        name: &str,
        active: bool,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        let idx = self.joined_room(conn, name)?;
        let (Some(room), Some(c)) = (self.room(idx), self.conns.get(&conn)) else {
            return Ok(());
        };
        let f = frame(&Out::Typing {
            room: &room.name,
            nick: &c.nick,
            active,
        });
        broadcast(out, &room.members, Some(conn), &f);
        Ok(())
    }

    fn history(
        &mut self,
        conn: ConnId,
        name: &str,
        page: Page,
        limit: u64,
        r: Option<&str>,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        let idx = self.joined_room(conn, name)?;
        let Some(room) = self.room(idx) else {
            return Ok(());
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let (span, latest) = room.page_span(page, limit);
        let loaded = match room.window(span.lo, span.hi) {
            Some(_) => None,
            None => Some(archive(out, &room.name, span)?),
        };
        let f = frame(&Out::History {
            room: &room.name,
            messages: page_out(room, span, loaded.as_deref()),
            complete: span.complete,
            latest,
            r#ref: r,
        });
        out.send(conn, &f);
        Ok(())
    }

    /// `search`: in the store when durable, else in the kept messages
    /// (every word, ignoring case, as a substring). With `context`, each hit
    /// comes with up to that many kept messages on each side. A room must
    /// be joined; a DM conversation (extension) is the logged-in account's
    /// with `with`, answered with `with` and its messages as `dm` objects.
    fn search(
        &mut self,
        conn: ConnId,
        target: &Target,
        query: &str,
        (before, limit, context): (Option<u64>, u64, u64),
        r: Option<&str>,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        // For a DM conversation, the other party's account key.
        let (peer, idx) = match target {
            Target::Room(name) => (None, Some(self.joined_room(conn, name)?)),
            Target::Dm(with) => {
                let (peer, idx) = self.dm_conversation(conn, with)?;
                (Some(peer), idx)
            }
        };
        let Some(room) = idx.and_then(|i| self.room(i)) else {
            // A DM conversation never written in: nothing to find.
            if let Some(peer) = &peer {
                out.send(conn, &self.dm_search_out(peer, None, query, &[], true, r));
            }
            return Ok(());
        };
        let before = before.unwrap_or(u64::MAX);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        // One more than asked tells whether older matches exist.
        let mut found: Vec<Msg> = if room.durable {
            out.search(&room.name, query, before, limit + 1)
                .map_err(|ArchiveError| ChatError::StorageFailed)?
        } else {
            let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
            room.history()
                .iter()
                .rev()
                .filter(|m| m.id < before)
                .filter(|m| {
                    let t = m.text.to_lowercase();
                    words.iter().all(|w| t.contains(w.as_str()))
                })
                .take(limit + 1)
                .cloned()
                .collect()
        };
        let complete = found.len() <= limit;
        found.truncate(limit);
        // Each hit's neighbours: one span of kept ids around it, from the
        // window or, past it, from the store.
        let mut around: Vec<(Span, Option<Vec<Msg>>)> = Vec::new();
        if context > 0 {
            let (first, next) = (room.first_kept(), room.stored_next());
            for m in &found {
                let span = Span {
                    lo: m.id.saturating_sub(context).max(first),
                    hi: m.id.saturating_add(context + 1).min(next),
                    complete: false,
                };
                let loaded = match room.window(span.lo, span.hi) {
                    Some(_) => None,
                    None => Some(archive(out, &room.name, span)?),
                };
                around.push((span, loaded));
            }
        }
        // Newest first: (hit, the kept messages before it and after it,
        // each oldest first).
        let hits: Vec<Hit<'_>> = found
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let (before, after) = match around.get(i) {
                    Some((span, loaded)) => {
                        let (b, a): (Vec<&Msg>, Vec<&Msg>) =
                            span_msgs(room, *span, loaded.as_deref())
                                .into_iter()
                                .filter(|x| x.id != m.id)
                                .partition(|x| x.id < m.id);
                        (Some(b), Some(a))
                    }
                    None => (None, None),
                };
                (m, before, after)
            })
            .collect();
        let f = match &peer {
            Some(peer) => self.dm_search_out(peer, Some(room), query, &hits, complete, r),
            None => {
                let messages = hits
                    .iter()
                    .map(|(m, b, a)| HitOut {
                        msg: MsgOut::new(&room.name, m, None),
                        context_before: msgs_out(&room.name, b),
                        context_after: msgs_out(&room.name, a),
                    })
                    .collect();
                frame(&Out::Search {
                    room: &room.name,
                    query,
                    messages,
                    complete,
                    r#ref: r,
                })
            }
        };
        out.send(conn, &f);
        Ok(())
    }

    fn list_rooms(&self, conn: ConnId, r: Option<&str>, out: &mut dyn Outbox) {
        let mut rooms: Vec<RoomInfo<'_>> = self
            .rooms
            .iter()
            .flatten()
            .filter(|room| !room.members.is_empty())
            .map(|room| RoomInfo {
                name: &room.name,
                members: room.members.len(),
            })
            .collect();
        rooms.sort_unstable_by(|a, b| validate::cmp_lowercase(a.name, b.name));
        out.send(conn, &frame(&Out::Rooms { rooms, r#ref: r }));
    }
}

/// Reads a span of history the in-memory window does not hold.
fn archive(out: &mut dyn Outbox, room: &str, span: Span) -> Result<Vec<Msg>, ChatError> {
    out.archive(room, span.lo, span.hi)
        .map_err(|ArchiveError| ChatError::StorageFailed)
}

/// The `message` objects of a span: read from the store (`loaded`) or from
/// the room's window.
fn page_out<'a>(room: &'a Room, span: Span, loaded: Option<&'a [Msg]>) -> Vec<MsgOut<'a>> {
    span_msgs(room, span, loaded)
        .into_iter()
        .map(|m| MsgOut::new(&room.name, m, None))
        .collect()
}

/// The messages of `span`: those `loaded` from the store, else the room's
/// kept window.
fn span_msgs<'a>(room: &'a Room, span: Span, loaded: Option<&'a [Msg]>) -> Vec<&'a Msg> {
    match loaded {
        Some(v) => v.iter().collect(),
        None => room
            .window(span.lo, span.hi)
            .into_iter()
            .flatten()
            .collect(),
    }
}

/// A hit's context as `message` objects.
fn msgs_out<'a>(room: &'a str, v: &Option<Vec<&'a Msg>>) -> Option<Vec<MsgOut<'a>>> {
    v.as_ref()
        .map(|v| v.iter().map(|&m| MsgOut::new(room, m, None)).collect())
}

/// A `search` hit, with the kept messages before and after it when
/// `context` asked for them.
type Hit<'a> = (&'a Msg, Option<Vec<&'a Msg>>, Option<Vec<&'a Msg>>);

fn send_error(out: &mut dyn Outbox, conn: ConnId, r: Option<&str>, e: &ChatError) {
    let f = frame(&Out::Error {
        code: e.code(),
        message: e.to_string(),
        retry_after: e.retry_after(),
        r#ref: r,
    });
    out.send(conn, &f);
}
