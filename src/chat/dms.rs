//! DM history and read positions for logged-in users (extensions: see
//! "DM history and read positions" in docs/protocol.md). Sans-IO like the
//! rest of the chat.
//!
//! A DM conversation between two accounts is kept as a hidden room named
//! `@a:b` (the two account keys, lowercase, in order). No room name can
//! hold `@` or `:`, so no client can `join` it or name it in a room
//! request; and as a room it gets the rooms' ids, in-memory window, memory
//! budget (`--max-history-bytes`), store, paging and retention by count
//! and bytes (`--history`, `--max-disk`) without a second implementation.
//! It is never listed, never expires by time (`--room-retention` is for
//! rooms people left), and does not count against `--max-rooms`: the
//! conversations have their own cap of the same size. DMs with a guest on
//! either side stay live only, as the contract has them.
//!
//! A read position is an account's last-read message id per room (DM
//! conversations included). It only moves forward; the turn's moves are
//! coalesced into one store write per account and room ([`Record::Read`],
//! committed with the turn), then answered and told to the account's other
//! connections.

use std::collections::HashMap;
use std::rc::Rc;

use serde::Serialize;

use super::durable::{Pending, Record};
use super::protocol::{ChatError, HitOut, Page, Target, frame};
use super::room::{Draft, Msg, Room, RoomName};
use super::{Chat, ConnId, Hit, Now, Outbox, archive, send_error, span_msgs};

/// Whether a room name is a DM conversation's.
pub fn is_dm(name: &str) -> bool {
    name.starts_with('@')
}

/// The room name of the conversation between the account keys `a` and `b`.
pub fn conv_name(a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("@{lo}:{hi}")
}

/// The two account keys of a conversation's room name.
fn parties(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix('@')?.split_once(':')
}

/// The party of conversation `name` that is not `key` (`key` itself when
/// one writes to oneself).
fn other<'a>(name: &'a str, key: &str) -> &'a str {
    match parties(name) {
        Some((a, b)) if a == key => b,
        Some((a, _)) => a,
        None => "",
    }
}

/// Most conversations listed in `reads` at login (the most recent ones);
/// older ones still answer `dm_history`.
pub const MAX_LISTED: usize = 500;

#[derive(Default)]
pub(super) struct Dms {
    /// Account key -> the room names of its conversations.
    convs: HashMap<Box<str>, Vec<RoomName>>,
    /// Conversations kept (at most `--max-rooms`).
    count: usize,
    /// Room name -> account key -> last-read id.
    reads: HashMap<RoomName, HashMap<Box<str>, u64>>,
    /// Positions moved this turn, one entry per account and room.
    dirty: Vec<Moved>,
    /// Positions whose commit is under way.
    inflight: Vec<Moved>,
}

struct Moved {
    room: RoomName,
    key: Box<str>,
    /// The position before this turn's moves: back to it if the commit fails.
    old: u64,
    /// Who asked, with the `ref` each answer carries.
    askers: Vec<(ConnId, Option<Box<str>>)>,
}

impl Dms {
    /// Conversations kept.
    pub fn count(&self) -> usize {
        self.count
    }

    /// A room was restored from the store or created: index it when it is
    /// a conversation.
    pub fn restored(&mut self, name: &RoomName) {
        let Some((a, b)) = parties(name) else {
            return;
        };
        self.count += 1;
        for k in [a, b] {
            let v = self.convs.entry(Box::from(k)).or_default();
            if !v.contains(name) {
                v.push(name.clone());
            }
        }
    }

    /// A room was forgotten: so are its read positions and, for a
    /// conversation, its index entries.
    pub fn forgotten(&mut self, name: &str) {
        self.reads.remove(name);
        let Some((a, b)) = parties(name) else {
            return;
        };
        self.count = self.count.saturating_sub(1);
        for k in [a, b] {
            if let Some(v) = self.convs.get_mut(k) {
                v.retain(|n| &**n != name);
                if v.is_empty() {
                    self.convs.remove(k);
                }
            }
        }
    }
}

/// A kept DM: the contract's `dm` with its `id` in the conversation.
#[derive(Serialize)]
struct DmOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    from: &'a str,
    to: &'a str,
    text: &'a str,
    ts: u64,
    id: u64,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    r#ref: Option<&'a str>,
}

#[derive(Serialize)]
struct DmSearchOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    with: &'a str,
    query: &'a str,
    /// Newest first.
    messages: Vec<HitOut<DmOut<'a>>>,
    complete: bool,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    r#ref: Option<&'a str>,
}

#[derive(Serialize)]
struct DmHistoryOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    with: &'a str,
    messages: Vec<DmOut<'a>>,
    complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    latest: Option<bool>,
    read: u64,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    r#ref: Option<&'a str>,
}

#[derive(Serialize)]
struct ReadOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    with: Option<&'a str>,
    id: u64,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    r#ref: Option<&'a str>,
}

#[derive(Serialize)]
struct RoomRead<'a> {
    room: &'a str,
    read: u64,
}

#[derive(Serialize)]
struct DmRead<'a> {
    with: &'a str,
    read: u64,
    /// Id and `ts` of the conversation's newest message.
    last: u64,
    ts: u64,
}

#[derive(Serialize)]
struct ReadsOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    rooms: Vec<RoomRead<'a>>,
    dms: Vec<DmRead<'a>>,
}

impl Chat {
    /// Loads the stored read positions, as (room, account key, id), after
    /// the rooms.
    pub fn restore_reads(&mut self, rows: impl IntoIterator<Item = (String, String, u64)>) {
        for (room, account, id) in rows {
            let Some(name) = self
                .room_index(&room)
                .and_then(|i| self.room(i))
                .map(|r| r.name.clone())
            else {
                continue;
            };
            self.dms
                .reads
                .entry(name.clone())
                .or_default()
                .insert(account.into_boxed_str(), id);
        }
    }

    /// The account's name as registered (its key if unknown).
    fn shown<'a>(&'a self, key: &'a str) -> &'a str {
        self.account_name(key).unwrap_or(key)
    }

    fn position(&self, room: &str, key: &str) -> u64 {
        self.dms
            .reads
            .get(room)
            .and_then(|m| m.get(key))
            .copied()
            .unwrap_or(0)
    }

    /// The read position of `conn`'s account in `room`: `joined` carries
    /// it for logged-in connections.
    pub(super) fn read_of(&self, conn: ConnId, room: &str) -> Option<u64> {
        let key = self.account_of(conn)?;
        Some(self.position(room, &key))
    }

    /// For a `dm` from `conn` to `to`: when both sides are accounts (the
    /// recipient connected, or only registered), the sender's and the
    /// recipient's account keys: the DM is kept. None: live only.
    pub(super) fn dm_peer(&self, conn: ConnId, to: &str) -> Option<(String, String)> {
        let key = self.account_of(conn)?;
        let peer = match self.holder(to) {
            Some(h) => self.account_of(h)?,
            None => {
                let k = to.to_ascii_lowercase();
                self.is_registered(&k).then_some(k)?
            }
        };
        // Past the cap a new conversation is live only.
        let exists = self.room_index(&conv_name(&key, &peer)).is_some();
        (exists || self.dms.count < self.cfg.max_rooms).then_some((key, peer))
    }

    /// A DM between two accounts: kept in their conversation (stored first
    /// when durable) and sent to every connection of both accounts.
    pub(super) fn dm_stored(
        &mut self,
        conn: ConnId,
        (key, peer): (String, String),
        text: &str,
        r: Option<&str>,
        now: Now,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        let name = conv_name(&key, &peer);
        let idx = match self.room_index(name.as_str()) {
            Some(i) => i,
            None => {
                let i = self.new_room(&name, None);
                if let Some(n) = self.room(i).map(|r| r.name.clone()) {
                    self.dms.restored(&n);
                }
                i
            }
        };
        // A DM has no author key: no request edits or reacts in a
        // conversation (it is not a joined room).
        let draft = Draft {
            from: Rc::from(self.shown(&key)),
            text: Box::from(text),
            author: Rc::from(""),
            extra: None,
            image: None,
        };
        if self.cfg.durable {
            self.post_durable(idx, conn, draft, r, now);
            return Ok(());
        }
        let Some(msg) = self.post_in_memory(idx, draft, now) else {
            return Ok(());
        };
        let Some(name) = self.room(idx).map(|room| room.name.clone()) else {
            return Ok(());
        };
        self.send_dm(&name, &msg, conn, r, out);
        self.enforce_budget();
        Ok(())
    }

    /// Sends a kept DM: to its sender (with `r`, the acknowledgement) and
    /// to every connection logged in to either party.
    fn send_dm(
        &self,
        room: &str,
        msg: &Msg,
        sender: ConnId,
        r: Option<&str>,
        out: &mut dyn Outbox,
    ) {
        let Some((a, b)) = parties(room) else {
            return;
        };
        let to_key = if msg.from.eq_ignore_ascii_case(a) {
            b
        } else {
            a
        };
        let to = self.shown(to_key);
        let dm = |r| {
            frame(&DmOut {
                ty: "dm",
                from: &msg.from,
                to,
                text: &msg.text,
                ts: msg.ts,
                id: msg.id,
                r#ref: r,
            })
        };
        let shared = dm(None);
        out.send(sender, &if r.is_some() { dm(r) } else { shared.clone() });
        let mut conns = self.account_conns(a, sender);
        if a != b {
            conns.extend(self.account_conns(b, sender));
        }
        for c in conns {
            out.send(c, &shared);
        }
    }

    /// `durable::committed`'s part for a run of committed DMs of one
    /// conversation: sent, then kept.
    pub(super) fn deliver_dms(
        &mut self,
        run: &mut Vec<Pending>,
        window: usize,
        out: &mut dyn Outbox,
    ) {
        for p in run.iter() {
            self.send_dm(&p.room, &p.msg, p.sender, p.r#ref.as_deref(), out);
        }
        self.keep_run(run, window);
    }

    /// `dm_history`: a page of `conn`'s conversation with the account
    /// `with`, like `history` of a room. Only the two parties can read it:
    /// the conversation is named by the asker's own account.
    pub(super) fn dm_history(
        &mut self,
        conn: ConnId,
        with: &str,
        page: Page,
        limit: u64,
        r: Option<&str>,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        let key = self.account_of(conn).ok_or(ChatError::NotLoggedIn)?;
        let peer = self.peer_account(with)?;
        let name = conv_name(&key, &peer);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let room = self.room_index(name.as_str()).and_then(|i| self.room(i));
        let Some(room) = room else {
            let f = frame(&DmHistoryOut {
                ty: "dm_history",
                with: self.shown(&peer),
                messages: Vec::new(),
                complete: true,
                latest: (!matches!(page, Page::Before(_))).then_some(true),
                read: 0,
                r#ref: r,
            });
            out.send(conn, &f);
            return Ok(());
        };
        let (span, latest) = room.page_span(page, limit);
        let loaded = match room.window(span.lo, span.hi) {
            Some(_) => None,
            None => Some(archive(out, &room.name, span)?),
        };
        let messages = span_msgs(room, span, loaded.as_deref())
            .into_iter()
            .map(|m| self.kept_dm(&room.name, m))
            .collect();
        let f = frame(&DmHistoryOut {
            ty: "dm_history",
            with: self.shown(&peer),
            messages,
            complete: span.complete,
            latest,
            read: self.position(&room.name, &key),
            r#ref: r,
        });
        out.send(conn, &f);
        Ok(())
    }

    /// Message `m` of conversation `conv` as a kept `dm`: `to` is the other
    /// party's account name.
    fn kept_dm<'m>(&'m self, conv: &'m str, m: &'m Msg) -> DmOut<'m> {
        let (a, b) = parties(conv).unwrap_or_default();
        DmOut {
            ty: "dm",
            from: &m.from,
            to: if m.from.eq_ignore_ascii_case(a) {
                self.shown(b)
            } else {
                self.shown(a)
            },
            text: &m.text,
            ts: m.ts,
            id: m.id,
            r#ref: None,
        }
    }

    /// The account `with` names (its key), which must exist: the other
    /// party of a conversation a request asks about.
    fn peer_account(&self, with: &str) -> Result<String, ChatError> {
        let peer = with.to_ascii_lowercase();
        if !self.is_registered(&peer) {
            return Err(ChatError::NoSuchAccount);
        }
        Ok(peer)
    }

    /// The conversation a DM `search` (`with`) is about, the logged-in
    /// account's with the account `with`: the peer's key, and the
    /// conversation's room (None when never written in).
    pub(super) fn dm_conversation(
        &self,
        conn: ConnId,
        with: &str,
    ) -> Result<(String, Option<u32>), ChatError> {
        let key = self.account_of(conn).ok_or(ChatError::NotLoggedIn)?;
        let peer = self.peer_account(with)?;
        let idx = self.room_index(conv_name(&key, &peer).as_str());
        Ok((peer, idx))
    }

    /// A DM `search`'s answer: `search` with `with` (the account's name as
    /// registered) in place of `room`, and each hit (and its context) a
    /// kept `dm`, as `dm_history` has them.
    pub(super) fn dm_search_out<'h>(
        &'h self,
        peer: &str,
        room: Option<&'h Room>,
        query: &str,
        hits: &[Hit<'h>],
        complete: bool,
        r: Option<&str>,
    ) -> Rc<[u8]> {
        let conv = room.map_or("", |room| room.name.as_str());
        let dm = |m: &'h Msg| self.kept_dm(conv, m);
        let side =
            |v: &Option<Vec<&'h Msg>>| v.as_ref().map(|v| v.iter().map(|&m| dm(m)).collect());
        frame(&DmSearchOut {
            ty: "search",
            with: self.shown(peer),
            query,
            messages: hits
                .iter()
                .map(|(m, before, after)| HitOut {
                    msg: dm(m),
                    context_before: side(before),
                    context_after: side(after),
                })
                .collect(),
            complete,
            r#ref: r,
        })
    }

    /// The `read` frame for `key`'s position in `room`.
    fn read_frame(&self, room: &str, key: &str, id: u64, r: Option<&str>) -> Rc<[u8]> {
        let dm = is_dm(room);
        frame(&ReadOut {
            ty: "read",
            room: (!dm).then_some(room),
            with: dm.then(|| self.shown(other(room, key))),
            id,
            r#ref: r,
        })
    }

    /// `read`: the account has read up to `id` (clamped to the newest
    /// message). Forward only; answered (and told to the account's other
    /// connections) once stored, at the end of the turn.
    pub(super) fn read(
        &mut self,
        conn: ConnId,
        target: Target,
        id: u64,
        r: Option<&str>,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        let key = self.account_of(conn).ok_or(ChatError::NotLoggedIn)?;
        let name = match target {
            Target::Room(room) => {
                let idx = self.joined_room(conn, &room)?;
                room_name_of(self, idx)
            }
            Target::Dm(peer) => conv_name(&key, &self.peer_account(&peer)?),
        };
        let room = self.room_index(name.as_str()).and_then(|i| self.room(i));
        let cur = self.position(&name, &key);
        let Some(room) = room.filter(|room| id.min(room.stored_next().saturating_sub(1)) > cur)
        else {
            // Nothing moves: answered at once with the position as it is.
            out.send(conn, &self.read_frame(&name, &key, cur, r));
            return Ok(());
        };
        let id = id.min(room.stored_next().saturating_sub(1));
        let room = room.name.clone();
        self.dms
            .reads
            .entry(room.clone())
            .or_default()
            .insert(Box::from(key.as_str()), id);
        let asker = (conn, r.map(Box::from));
        match self
            .dms
            .dirty
            .iter_mut()
            .find(|m| m.room == room && *m.key == *key)
        {
            // One answer per connection and `ref`.
            Some(m) if !m.askers.contains(&asker) => m.askers.push(asker),
            Some(_) => {}
            None => self.dms.dirty.push(Moved {
                room,
                key: key.into_boxed_str(),
                old: cur,
                askers: vec![asker],
            }),
        }
        Ok(())
    }

    /// `take_records`' part: one write per account and room moved this
    /// turn, with its newest position.
    pub(super) fn flush_reads(&mut self) {
        for m in std::mem::take(&mut self.dms.dirty) {
            let id = self.position(&m.room, &m.key);
            self.records.push(Record::Read {
                room: m.room.clone(),
                account: m.key.clone(),
                id,
            });
            self.dms.inflight.push(m);
        }
    }

    /// The positions are stored: answer the askers and tell the accounts'
    /// other connections.
    pub(super) fn reads_committed(&mut self, out: &mut dyn Outbox) {
        for m in std::mem::take(&mut self.dms.inflight) {
            let id = self.position(&m.room, &m.key);
            let shared = self.read_frame(&m.room, &m.key, id, None);
            let mut told: Vec<ConnId> = Vec::new();
            for (c, r) in &m.askers {
                match r {
                    Some(r) => out.send(*c, &self.read_frame(&m.room, &m.key, id, Some(r))),
                    None => out.send(*c, &shared),
                }
                told.push(*c);
            }
            for c in self.account_conns(&m.key, usize::MAX) {
                if !told.contains(&c) {
                    out.send(c, &shared);
                }
            }
        }
    }

    /// The positions could not be stored: they go back, and the askers
    /// hear `storage_failed`.
    pub(super) fn reads_failed(&mut self, out: &mut dyn Outbox) {
        for m in std::mem::take(&mut self.dms.inflight) {
            if let Some(v) = self
                .dms
                .reads
                .get_mut(&m.room)
                .and_then(|x| x.get_mut(&m.key))
            {
                *v = m.old;
            }
            for (c, r) in &m.askers {
                send_error(out, *c, r.as_deref(), &ChatError::StorageFailed);
            }
        }
    }

    /// After a login: the account's positions in the rooms this connection
    /// is in, and its conversations (the newest [`MAX_LISTED`]) with their
    /// positions and newest ids, so that unread counts are right at once.
    pub(super) fn send_reads(&self, conn: ConnId, out: &mut dyn Outbox) {
        let (Some(key), Some(c)) = (self.account_of(conn), self.conns.get(&conn)) else {
            return;
        };
        let rooms = c
            .rooms
            .iter()
            .filter_map(|&i| self.room(i))
            .map(|room| RoomRead {
                room: &room.name,
                read: self.position(&room.name, &key),
            })
            .collect();
        let mut dms: Vec<DmRead<'_>> = self
            .dms
            .convs
            .get(key.as_str())
            .into_iter()
            .flatten()
            .filter_map(|n| self.room_index(n).and_then(|i| self.room(i)))
            .map(|room| DmRead {
                with: self.shown(other(&room.name, &key)),
                read: self.position(&room.name, &key),
                last: room.stored_next().saturating_sub(1),
                ts: room.last_ts(),
            })
            .collect();
        dms.sort_unstable_by_key(|d| std::cmp::Reverse(d.ts));
        dms.truncate(MAX_LISTED);
        out.send(
            conn,
            &frame(&ReadsOut {
                ty: "reads",
                rooms,
                dms,
            }),
        );
    }
}

fn room_name_of(chat: &Chat, idx: u32) -> String {
    chat.room(idx)
        .map(|r| r.name.to_string())
        .unwrap_or_default()
}
