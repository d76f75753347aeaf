//! The chat's side of durability (`ChatConfig::durable`), still sans-IO: it
//! says what to store, the server stores it, and the chat hears the outcome.
//!
//! How to drive it, once per loop turn:
//! 1. feed the turn's input (`on_text`, `connect`, `tick`, …): a posted
//!    message gets its id at once but is neither kept nor sent yet;
//! 2. [`Chat::take_records`]: everything to store, in order; commit it in
//!    one transaction;
//! 3. [`Chat::committed`] (the messages are kept and their copies sent,
//!    the sender's acknowledgement included) or [`Chat::failed`] (each
//!    sender gets `storage_failed`, and the ids are handed out again, so
//!    that ids stay gap-free in memory and on disk);
//! 4. [`Chat::trimmed`] for what the store's retention dropped.
//!
//! At start, [`Chat::restore`] loads the stored rooms with the newest
//! messages of each (the window a `joined` answer needs); older pages are
//! read through [`Outbox::archive`].

use std::rc::Rc;

use super::protocol::{ChatError, MsgOut};
use super::room::{Durable, Log, Msg, Order, Room, RoomName};
use super::{Chat, ConnId, Now, Outbox, protocol::frame, send_error};

/// Something the store must keep, in the order the chat decided it.
#[derive(Clone, Debug)]
pub enum Record {
    /// A room is stored from now on (its first message follows).
    Room {
        name: RoomName,
        epoch: Box<str>,
        next_id: u64,
        last_active: u64,
    },
    /// A message of a stored room.
    Message { room: RoomName, msg: Msg },
    /// Wall-clock ms of a stored room's last activity (its last member left,
    /// or it still has members): its retention starts there.
    Touch { room: RoomName, last_active: u64 },
    /// The room was forgotten: delete it with its messages.
    Forget { room: RoomName },
    /// A change to the accounts (see [`super::accounts`]).
    Account(super::accounts::AccountRecord),
    /// A ban or an audit line (see [`super::moderation`]).
    Moderation(super::moderation::ModRecord),
    /// A reaction or an edit (see [`super::edits`]).
    Edit(super::edits::EditRecord),
    /// An upload stored or deleted (see [`super::uploads`]).
    Upload(super::uploads::UploadRecord),
    /// An account's read position in a room or DM conversation (see
    /// [`super::dms`]); one per account and room per turn.
    Read {
        room: RoomName,
        account: Box<str>,
        id: u64,
    },
}

impl Record {
    /// A message or account record: failed ones are refused to their
    /// senders (`storage_failed`), never tried again. The others can be
    /// retried as they are.
    pub fn is_answered(&self) -> bool {
        matches!(
            self,
            Record::Message { .. }
                | Record::Account(_)
                | Record::Moderation(_)
                | Record::Edit(_)
                | Record::Upload(_)
                | Record::Read { .. }
        ) && !matches!(
            self,
            // Who created a room answers no one: kept to try again.
            Record::Moderation(super::moderation::ModRecord::Creator { .. })
        )
    }
}

/// A stored room as loaded at start.
#[derive(Clone, Debug)]
pub struct Restored {
    pub name: String,
    pub epoch: String,
    pub next_id: u64,
    /// Oldest stored id (`next_id` when none).
    pub first_id: u64,
    /// Wall-clock ms of its last activity.
    pub last_active: u64,
    /// Its newest messages, oldest first, at most [`Chat::window`].
    pub messages: Vec<Msg>,
}

/// A message whose commit is still to come.
#[derive(Debug)]
pub(super) struct Pending {
    pub slot: u32,
    pub serial: u64,
    pub room: RoomName,
    pub msg: Msg,
    pub sender: ConnId,
    pub r#ref: Option<Box<str>>,
}

/// Most messages sent as one run (see [`Chat::committed`]): the bound on how
/// far one run can take a queue past the output limit, which is checked
/// before each run.
pub const MAX_RUN: usize = 64;

/// How long a room with members goes between two `Touch` records, at most:
/// after a crash its retention starts at most this long before it.
const TOUCH_EVERY_MS: u64 = 60 * 60 * 1000;

impl Chat {
    /// Messages of each durable room kept in memory: enough for any `joined`
    /// answer.
    pub fn window(&self) -> usize {
        self.cfg.history.min(super::validate::JOIN_SINCE_MAX)
    }

    /// Loads stored rooms (before any connection). A room whose retention
    /// ran out while the server was down is forgotten (and deleted).
    pub fn restore(&mut self, rooms: Vec<Restored>, now: Now) {
        let mut order: Vec<(u64, Order)> = Vec::new();
        let window = self.window();
        for r in rooms {
            if self.room_names.contains(&self.rooms, &r.name) {
                continue;
            }
            self.epoch_counter += 1;
            let name = RoomName::new(&r.name);
            let mut room = Room::new(name.clone(), self.epoch_counter, &r.epoch);
            room.durable = true;
            let next_id = r.next_id.max(1);
            let log = room.log_mut();
            *log = Log {
                epoch_text: log.epoch_text.take(),
                empty_since: now.mono_ms,
                next_id,
                aged: now.wall_ms.saturating_sub(r.last_active),
                durable: Durable {
                    first_id: r.first_id.min(next_id),
                    pending: 0,
                    stored: true,
                    touched: now.mono_ms,
                },
                ..Log::default()
            };
            let idx = self.rooms.len() as u32;
            let skip = r.messages.len().saturating_sub(window);
            for m in r.messages.into_iter().skip(skip) {
                let log = room.log_mut();
                log.last_ts = log.last_ts.max(m.ts);
                order.push((
                    m.ts,
                    Order {
                        slot: idx,
                        serial: room.serial,
                        id: m.id,
                    },
                ));
                room.keep(m, window);
            }
            self.history_bytes += room.bytes();
            self.kept += room.history().len();
            self.rooms.push(Some(room));
            self.dms.restored(&name);
            self.room_names.insert(&self.rooms, idx);
        }
        // The memory budget drops the server-wide oldest first.
        order.sort_by_key(|(ts, _)| *ts);
        self.order.extend(order.into_iter().map(|(_, o)| o));
        self.enforce_budget();
        self.tick(now);
    }

    /// What to store since the last call, in order.
    pub fn take_records(&mut self) -> Vec<Record> {
        self.flush_reads();
        std::mem::take(&mut self.records)
    }

    /// Whether messages wait for their commit.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The records taken last were committed: keep the messages and send
    /// their copies (the sender's, with its `ref`, is its acknowledgement).
    ///
    /// Consecutive messages of one room go out as a run (at most
    /// [`MAX_RUN`]): a member that sent none of them gets the run's shared
    /// copies in one [`Outbox::send_run`], so that the server frames them
    /// once for everyone; a sender gets each message separately, its own
    /// ones with their `ref`. Every connection still receives the messages
    /// in commit order.
    pub fn committed(&mut self, out: &mut dyn Outbox) {
        self.auth_committed(out);
        self.mod_committed(out);
        self.edits_committed(out);
        self.reads_committed(out);
        let window = self.window();
        let mut pending = std::mem::take(&mut self.pending).into_iter().peekable();
        let mut run: Vec<Pending> = Vec::new();
        while let Some(first) = pending.next() {
            let (slot, serial) = (first.slot, first.serial);
            run.push(first);
            while run.len() < MAX_RUN
                && let Some(p) = pending.next_if(|p| p.slot == slot && p.serial == serial)
            {
                run.push(p);
            }
            self.deliver_run(&mut run, window, out);
        }
        self.enforce_budget();
    }

    /// Keeps and sends a run of committed messages of one room (see
    /// [`Chat::committed`]); leaves `run` empty.
    fn deliver_run(&mut self, run: &mut Vec<Pending>, window: usize, out: &mut dyn Outbox) {
        if super::dms::is_dm(&run[0].room) {
            self.deliver_dms(run, window, out);
            return;
        }
        let shared: Vec<Rc<[u8]>> = run
            .iter()
            .map(|p| frame(&MsgOut::new(&p.room, &p.msg, None)))
            .collect();
        let own: Vec<Rc<[u8]>> = run
            .iter()
            .zip(&shared)
            .map(|(p, s)| match &p.r#ref {
                Some(r) => frame(&MsgOut::new(&p.room, &p.msg, Some(r))),
                None => s.clone(),
            })
            .collect();
        // The run's distinct senders (a few people talking).
        let mut senders: Vec<ConnId> = Vec::new();
        for p in run.iter() {
            if !senders.contains(&p.sender) {
                senders.push(p.sender);
            }
        }
        let (slot, serial) = (run[0].slot, run[0].serial);
        let room = self
            .rooms
            .get_mut(slot as usize)
            .and_then(Option::as_mut)
            .filter(|r| r.serial == serial);
        let Some(room) = room else {
            // Forgotten in the same turn: the senders still hear that
            // their messages were stored.
            for (p, f) in run.iter().zip(&own) {
                out.send(p.sender, f);
            }
            run.clear();
            return;
        };
        // Every member but the senders gets the run alike, a stretch of
        // members per call; the senders that are members get each message,
        // their own with its `ref`, in their place in the member order.
        let mut senders_in = vec![false; senders.len()];
        let mut from = 0;
        for (at, &m) in room.members.iter().enumerate() {
            if let Some(i) = senders.iter().position(|&s| s == m) {
                out.send_run_to_members(&room.members[from..at], &shared);
                from = at + 1;
                senders_in[i] = true;
                for (j, p) in run.iter().enumerate() {
                    out.send(m, if p.sender == m { &own[j] } else { &shared[j] });
                }
            }
        }
        out.send_run_to_members(&room.members[from..], &shared);
        for (p, f) in run.iter().zip(&own) {
            let member = senders
                .iter()
                .position(|&s| s == p.sender)
                .is_some_and(|i| senders_in[i]);
            if !member {
                out.send(p.sender, f);
            }
        }
        self.keep_run(run, window);
    }

    /// Keeps a delivered run of committed messages of one room in its
    /// window; leaves `run` empty.
    pub(super) fn keep_run(&mut self, run: &mut Vec<Pending>, window: usize) {
        let Some(first) = run.first() else { return };
        let (slot, serial) = (first.slot, first.serial);
        let Some(room) = self
            .rooms
            .get_mut(slot as usize)
            .and_then(Option::as_mut)
            .filter(|r| r.serial == serial)
        else {
            run.clear();
            return;
        };
        if let Some(d) = room.durable_mut() {
            d.pending = d.pending.saturating_sub(run.len() as u64);
        }
        let (bytes_before, kept_before) = (room.bytes(), room.history().len());
        for p in run.drain(..) {
            let id = p.msg.id;
            room.keep(p.msg, window);
            if window > 0 {
                self.order.push_back(Order { slot, serial, id });
            }
        }
        self.history_bytes = self.history_bytes - bytes_before + room.bytes();
        self.kept = self.kept - kept_before + room.history().len();
    }

    /// The records taken last could not be stored: every pending message is
    /// refused to its sender with `storage_failed` and its id handed out
    /// again (the room's ids go back to the first refused one: all of the
    /// turn's messages failed together, so they are the newest ids).
    pub fn failed(&mut self, out: &mut dyn Outbox) {
        self.auth_failed(out);
        self.mod_failed(out);
        self.edits_failed(out);
        self.reads_failed(out);
        let mut emptied = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            self.detach_image(p.msg.image);
            if let Some(room) = self
                .rooms
                .get_mut(p.slot as usize)
                .and_then(Option::as_mut)
                .filter(|r| r.serial == p.serial)
            {
                let log = room.log_mut();
                log.next_id = log.next_id.min(p.msg.id);
                log.durable.pending = 0;
                log.durable.first_id = log.durable.first_id.min(log.next_id);
                if room.members.is_empty() && !room.has_messages() {
                    emptied.push(p.slot);
                }
            }
            send_error(out, p.sender, p.r#ref.as_deref(), &ChatError::StorageFailed);
        }
        for idx in emptied {
            if self
                .room(idx)
                .is_some_and(|r| r.members.is_empty() && !r.has_messages())
            {
                self.forget(idx);
            }
        }
    }

    /// The store's retention dropped the messages of `room` below `first_id`.
    pub fn trimmed(&mut self, room: &str, first_id: u64) {
        let Some(idx) = self.room_index(room) else {
            return;
        };
        let Some(r) = self.rooms.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        if !r.durable {
            return;
        }
        let log = r.log_mut();
        log.durable.first_id = log.durable.first_id.max(first_id.min(log.next_id));
        self.drop_images_below(room, first_id);
        let Some(r) = self.rooms.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        let (bytes_before, kept_before) = (r.bytes(), r.history().len());
        while r.history().front().is_some_and(|m| m.id < first_id) {
            r.pop_oldest();
        }
        let gone = r.members.is_empty() && !r.has_messages();
        self.history_bytes = self.history_bytes - bytes_before + r.bytes();
        self.kept = self.kept - kept_before + r.history().len();
        if gone {
            self.forget(idx);
        } else {
            self.trim_order();
        }
    }

    /// The server is stopping: every stored room with members was active
    /// until now (its retention starts at the next start).
    pub fn shutdown(&mut self, now: Now) {
        for r in self.rooms.iter().flatten() {
            if !r.members.is_empty() && r.stored() {
                self.records.push(Record::Touch {
                    room: r.name.clone(),
                    last_active: now.wall_ms,
                });
            }
        }
    }

    /// `tick`'s part: stored rooms with members say now and then that they
    /// are still active, so that a crash does not expire them early.
    pub(super) fn touch_active(&mut self, now: Now) {
        let every = TOUCH_EVERY_MS.min(self.cfg.room_retention_ms / 8).max(1000);
        for r in self.rooms.iter_mut().flatten() {
            if r.members.is_empty() {
                continue;
            }
            // Read first: an idle room without messages has no `Log` to
            // make here.
            if let Some(d) = r.log.as_deref_mut().map(|l| &mut l.durable)
                && d.stored
                && now.mono_ms.saturating_sub(d.touched) >= every
            {
                d.touched = now.mono_ms;
                self.records.push(Record::Touch {
                    room: r.name.clone(),
                    last_active: now.wall_ms,
                });
            }
        }
    }

    /// `message`'s part for a durable room: the id is handed out now, the
    /// message kept and sent once it is committed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn post_durable(
        &mut self,
        idx: u32,
        conn: ConnId,
        draft: super::room::Draft,
        r: Option<&str>,
        now: Now,
    ) {
        let Some(room) = self.rooms.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        if !room.durable {
            return;
        }
        let epoch = room.epoch();
        let log = room.log.get_or_insert_with(Box::default);
        let d = &mut log.durable;
        if !d.stored {
            d.stored = true;
            // The row says the room was active now: its next `Touch` is
            // due a period from here.
            d.touched = now.mono_ms;
            self.records.push(Record::Room {
                name: room.name.clone(),
                epoch: epoch.as_str().into(),
                next_id: log.next_id,
                last_active: now.wall_ms,
            });
        }
        d.pending += 1;
        let msg = room.assign(draft, now.wall_ms);
        let name = room.name.clone();
        self.attach_image(msg.image, &name, msg.id);
        let Some(room) = self.rooms.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        self.records.push(Record::Message {
            room: room.name.clone(),
            msg: msg.clone(),
        });
        self.pending.push(Pending {
            slot: idx,
            serial: room.serial,
            room: room.name.clone(),
            msg,
            sender: conn,
            r#ref: r.map(Box::from),
        });
    }

    /// A durable room was forgotten: the store forgets it too.
    pub(super) fn forget_stored(&mut self, room: &Room) {
        if room.stored() {
            self.records.push(Record::Forget {
                room: room.name.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ChatConfig;
    use serde_json::Value;

    /// Records what is sent; `archive` answers from `stored` (or fails).
    #[derive(Default)]
    struct Out {
        sent: Vec<(ConnId, Value)>,
        stored: Vec<Msg>,
        archive_fails: bool,
        archived: usize,
    }

    impl Outbox for Out {
        fn send(&mut self, to: ConnId, payload: &Rc<[u8]>) {
            // The chat hands payloads (JSON); the server frames them.
            self.sent
                .push((to, serde_json::from_slice(payload).unwrap()));
        }
        fn close(&mut self, _: ConnId, _: u16, _: &str) {}
        fn archive(
            &mut self,
            _: &str,
            lo: u64,
            hi: u64,
        ) -> Result<Vec<Msg>, crate::chat::ArchiveError> {
            self.archived += 1;
            if self.archive_fails {
                return Err(crate::chat::ArchiveError);
            }
            Ok(self
                .stored
                .iter()
                .filter(|m| lo <= m.id && m.id < hi)
                .cloned()
                .collect())
        }
    }

    const NOW: Now = Now {
        mono_ms: 1000,
        wall_ms: 1_763_780_000_000,
    };

    fn chat() -> Chat {
        Chat::new(
            ChatConfig {
                rate_burst: 0,
                durable: true,
                history: 100_000,
                ..ChatConfig::default()
            },
            7,
        )
    }

    fn text(chat: &mut Chat, conn: ConnId, v: &str, out: &mut Out) {
        chat.on_text(conn, v.as_bytes(), NOW, out);
    }

    #[test]
    fn messages_leave_only_after_their_commit_and_failed_ids_are_reused() {
        let mut c = chat();
        let mut out = Out::default();
        c.connect(1, Some("al"), NOW, &mut out);
        c.connect(2, Some("bo"), NOW, &mut out);
        text(&mut c, 1, r#"{"type":"join","room":"r"}"#, &mut out);
        text(&mut c, 2, r#"{"type":"join","room":"r"}"#, &mut out);
        out.sent.clear();
        text(
            &mut c,
            1,
            r#"{"type":"message","room":"r","text":"a","ref":"x"}"#,
            &mut out,
        );
        assert!(out.sent.is_empty(), "nothing before the commit");
        let recs = c.take_records();
        assert!(matches!(&recs[0], Record::Room { name, next_id: 1, .. } if &**name == "r"));
        assert!(matches!(&recs[1], Record::Message { msg, .. } if msg.id == 1));
        c.failed(&mut out);
        assert_eq!(out.sent.len(), 1);
        assert_eq!(out.sent[0].0, 1);
        assert_eq!(out.sent[0].1["code"], "storage_failed");
        assert_eq!(out.sent[0].1["ref"], "x");
        out.sent.clear();
        text(
            &mut c,
            1,
            r#"{"type":"message","room":"r","text":"b","ref":"y"}"#,
            &mut out,
        );
        let recs = c.take_records();
        // The room record was retried by the server; only the message here.
        assert!(matches!(&recs[..], [Record::Message { msg, .. }] if msg.id == 1));
        c.committed(&mut out);
        let ids: Vec<(ConnId, &Value, &Value)> = out
            .sent
            .iter()
            .map(|(to, v)| (*to, &v["id"], &v["ref"]))
            .collect();
        assert_eq!(
            ids,
            [
                (1, &Value::from(1), &Value::from("y")),
                (2, &Value::from(1), &Value::Null)
            ]
        );
    }

    #[test]
    fn an_idle_room_holds_no_log_and_its_first_message_makes_one() {
        let mut c = chat();
        let mut out = Out::default();
        c.connect(1, Some("al"), NOW, &mut out);
        text(&mut c, 1, r#"{"type":"join","room":"r"}"#, &mut out);
        let idx = c.room_index("r").unwrap();
        // Ticks past the touch period: a room without messages has nothing
        // stored to touch, and its state stays inline.
        let mut later = NOW;
        for _ in 0..3 {
            later.mono_ms += TOUCH_EVERY_MS;
            later.wall_ms += TOUCH_EVERY_MS;
            c.tick(later);
        }
        assert!(c.room(idx).unwrap().log.is_none());
        assert!(c.take_records().is_empty());
        c.on_text(
            1,
            br#"{"type":"message","room":"r","text":"a"}"#,
            later,
            &mut out,
        );
        let recs = c.take_records();
        assert!(matches!(
            &recs[..],
            [Record::Room { .. }, Record::Message { .. }]
        ));
        c.committed(&mut out);
        let r = c.room(idx).unwrap();
        assert!(r.log.is_some() && r.stored());
        assert_eq!((r.next_id(), r.history().len()), (2, 1));
        // The room's row said "active now": the next touch is a period on.
        later.mono_ms += TOUCH_EVERY_MS - 1;
        c.tick(later);
        assert!(c.take_records().is_empty());
        later.mono_ms += 1;
        c.tick(later);
        assert!(matches!(&c.take_records()[..], [Record::Touch { .. }]));
    }

    /// Records each `send_run` apart from single sends.
    #[derive(Default)]
    struct Runs {
        /// (to, ids of the messages, run or not)
        got: Vec<(ConnId, Vec<u64>, bool)>,
    }

    impl Outbox for Runs {
        fn send(&mut self, to: ConnId, payload: &Rc<[u8]>) {
            let v: Value = serde_json::from_slice(payload).unwrap();
            let id = v["id"].as_u64().unwrap_or(0);
            assert_eq!(v["ref"].is_string(), id % 2 == 1 && to == 1, "{v}");
            self.got.push((to, vec![id], false));
        }
        fn send_run(&mut self, to: ConnId, payloads: &[Rc<[u8]>]) {
            let ids = payloads
                .iter()
                .map(|p| {
                    let v: Value = serde_json::from_slice(p).unwrap();
                    assert!(v["ref"].is_null(), "a run holds shared copies only");
                    v["id"].as_u64().unwrap()
                })
                .collect();
            self.got.push((to, ids, true));
        }
        fn close(&mut self, _: ConnId, _: u16, _: &str) {}
    }

    /// A turn's messages to one room reach each member that sent none of
    /// them as one run, in order, and a sender message by message with its
    /// own `ref`s; a second room's message ends the run (commit order).
    #[test]
    fn a_turns_messages_to_a_room_go_out_as_one_run() {
        let mut c = chat();
        let mut out = Out::default();
        for (k, nick) in [(1, "al"), (2, "bo"), (3, "cy")] {
            c.connect(k, Some(nick), NOW, &mut out);
            text(&mut c, k, r#"{"type":"join","room":"r"}"#, &mut out);
        }
        text(&mut c, 2, r#"{"type":"join","room":"s"}"#, &mut out);
        c.take_records();
        for m in [
            r#"{"type":"message","room":"r","text":"a","ref":"x"}"#,
            r#"{"type":"message","room":"r","text":"b"}"#,
            r#"{"type":"message","room":"r","text":"c","ref":"y"}"#,
        ] {
            text(&mut c, 1, m, &mut out);
        }
        text(
            &mut c,
            2,
            r#"{"type":"message","room":"s","text":"d"}"#,
            &mut out,
        );
        c.take_records();
        let mut runs = Runs::default();
        c.committed(&mut runs);
        // Members by nick: al (the sender), bo, cy.
        assert_eq!(
            runs.got,
            [
                (1, vec![1], false),
                (1, vec![2], false),
                (1, vec![3], false),
                (2, vec![1, 2, 3], true),
                (3, vec![1, 2, 3], true),
                (2, vec![1], false),
            ]
        );
    }

    #[test]
    fn a_restored_room_keeps_its_epoch_in_either_form() {
        let mut c = chat();
        let mut out = Out::default();
        let room = |name: &str, epoch: &str| Restored {
            name: name.into(),
            epoch: epoch.into(),
            // Four stored messages, none restored into the window.
            next_id: 5,
            first_id: 1,
            last_active: NOW.wall_ms,
            messages: Vec::new(),
        };
        // Base 36 (kept as its number) and not (kept as text).
        c.restore(vec![room("a", "3w5e11264sgsf"), room("b", "Ep-01")], NOW);
        c.connect(1, Some("al"), NOW, &mut out);
        for (name, epoch) in [("a", "3w5e11264sgsf"), ("b", "Ep-01")] {
            let join = format!(r#"{{"type":"join","room":"{name}","since":4,"epoch":"{epoch}"}}"#);
            text(&mut c, 1, &join, &mut out);
            let j = &out.sent.last().unwrap().1;
            assert_eq!(
                (j["type"].as_str(), j["epoch"].as_str()),
                (Some("joined"), Some(epoch))
            );
            assert_eq!(j["complete"], true, "the same epoch: `since` holds");
        }
    }

    #[test]
    fn pages_past_the_window_come_from_the_archive() {
        let mut c = chat();
        let mut out = Out::default();
        // A stored room of 300 messages: the newest 100 are restored.
        let all: Vec<Msg> = (1..=300)
            .map(|id| Msg {
                id,
                ts: id,
                from: Rc::from("al"),
                text: format!("m{id}").into_boxed_str(),
                author: Rc::from(""),
                extra: None,
                image: None,
            })
            .collect();
        c.restore(
            vec![Restored {
                name: "r".into(),
                epoch: "ep".into(),
                next_id: 301,
                first_id: 1,
                last_active: NOW.wall_ms,
                messages: all[200..].to_vec(),
            }],
            NOW,
        );
        out.stored = all;
        c.connect(1, Some("al"), NOW, &mut out);
        text(
            &mut c,
            1,
            r#"{"type":"join","room":"r","since":10,"epoch":"ep"}"#,
            &mut out,
        );
        let j = &out.sent.last().unwrap().1;
        assert_eq!(j["epoch"], "ep");
        assert_eq!(j["history"][0]["id"], 201);
        assert_eq!(j["complete"], false);
        assert_eq!(out.archived, 0, "joined is answered from memory");
        text(
            &mut c,
            1,
            r#"{"type":"history","room":"r","before":201,"limit":100}"#,
            &mut out,
        );
        let h = &out.sent.last().unwrap().1;
        assert_eq!(h["messages"][0]["id"], 101);
        assert_eq!(h["messages"][99]["text"], "m200");
        assert_eq!(h["complete"], false);
        assert_eq!(out.archived, 1);
        text(
            &mut c,
            1,
            r#"{"type":"history","room":"r","before":51,"limit":100}"#,
            &mut out,
        );
        assert_eq!(out.sent.last().unwrap().1["complete"], true);
        // Retention dropped everything below 151: pages end there.
        c.trimmed("r", 151);
        text(
            &mut c,
            1,
            r#"{"type":"history","room":"r","before":201,"limit":100}"#,
            &mut out,
        );
        let h = &out.sent.last().unwrap().1;
        assert_eq!(h["messages"][0]["id"], 151);
        assert_eq!(h["complete"], true);
        // A store that cannot be read: the answer says so.
        out.archive_fails = true;
        text(
            &mut c,
            1,
            r#"{"type":"history","room":"r","before":201,"limit":10,"ref":"h"}"#,
            &mut out,
        );
        let e = &out.sent.last().unwrap().1;
        assert_eq!(
            (&e["code"], &e["ref"]),
            (&Value::from("storage_failed"), &Value::from("h"))
        );
    }
}
