//! Replies, reactions, and edits and deletes by a message's own author
//! (docs/protocol.md, "Replies, reactions and edits"). Like moderation,
//! every change is a record of the turn: stored first, then applied to the
//! in-memory window and announced to the room, one shared payload per event.
//!
//! **Who wrote a message** (`Msg::author`): `a:ACCOUNT` when its sender was
//! logged in, so any connection logged in to that account may edit or
//! delete it, now or after a restart; `g:RUN:N` for a guest: the one
//! connection that sent it (`N` counts this run's guest connections, `RUN`
//! is the run's epoch seed), so a guest's messages are theirs until they
//! disconnect, and nobody's after. A nick proves nothing (a guest nick is
//! anyone's once free), so it never grants the right.

use std::rc::Rc;

use super::durable::Record;
use super::protocol::{ChatError, Out, ReactionOut, frame};
use super::room::{Draft, Msg, MsgExtra, Reply, Span};
use super::{Chat, ConnId, Now, Outbox};

/// The reactions a message may get, in the order they are listed. Fixed, so
/// that a reaction costs an index in memory and every client can offer the
/// same picker.
pub const REACTIONS: [&str; 8] = [
    "\u{1F44D}",        // 👍
    "\u{2764}\u{FE0F}", // ❤️
    "\u{1F602}",        // 😂
    "\u{1F389}",        // 🎉
    "\u{1F62E}",        // 😮
    "\u{1F622}",        // 😢
    "\u{1F440}",        // 👀
    "\u{1F64F}",        // 🙏
];

/// Reactions one message may hold, all emoji and people together: the
/// bound on what one message costs in memory and in a `joined` answer.
pub const MAX_REACTIONS: usize = 256;

/// Characters of the parent's text quoted in a reply.
pub const EXCERPT_CHARS: usize = 100;

/// The index of a reaction emoji. U+2764 without its variation selector
/// (as some keyboards send it) counts as ❤️.
pub fn emoji(s: &str) -> Option<usize> {
    if s == "\u{2764}" {
        return Some(1);
    }
    REACTIONS.iter().position(|e| *e == s)
}

/// The quote of `text` in a reply: its first [`EXCERPT_CHARS`] characters
/// on one line, with `…` when cut.
pub fn excerpt(text: &str) -> Box<str> {
    let mut out: String = text
        .chars()
        .take(EXCERPT_CHARS)
        .map(|c| if c == '\n' || c == '\t' { ' ' } else { c })
        .collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    out.into_boxed_str()
}

/// A message's reactions as sent: by emoji in [`REACTIONS`] order.
pub fn reactions_out(v: &[(u8, Box<str>)]) -> Vec<ReactionOut<'_>> {
    let mut out = Vec::new();
    for (i, e) in REACTIONS.iter().enumerate() {
        let nicks: Vec<&str> = v
            .iter()
            .filter(|(k, _)| usize::from(*k) == i)
            .map(|(_, w)| &**w)
            .collect();
        if !nicks.is_empty() {
            out.push(ReactionOut {
                emoji: e,
                count: nicks.len(),
                nicks,
            });
        }
    }
    out
}

/// A stored message's extras as the chat keeps them (unknown emoji, from a
/// newer build's set, are left out).
pub fn extra_from_row(
    reply: Option<(u64, String, String)>,
    edited: u64,
    reactions: Vec<(String, String)>,
) -> Option<Box<MsgExtra>> {
    let reactions: Vec<(u8, Box<str>)> = reactions
        .into_iter()
        .filter_map(|(e, w)| Some((u8::try_from(emoji(&e)?).ok()?, w.into_boxed_str())))
        .collect();
    if reply.is_none() && edited == 0 && reactions.is_empty() {
        return None;
    }
    Some(Box::new(MsgExtra {
        reply: reply.map(|(id, from, text)| Reply {
            id,
            from: from.into_boxed_str(),
            text: text.into_boxed_str(),
        }),
        edited,
        reactions,
    }))
}

/// A change to store (see [`Chat::take_records`]).
#[derive(Clone, Debug)]
pub enum EditRecord {
    React {
        room: Box<str>,
        id: u64,
        emoji: &'static str,
        who: Box<str>,
        on: bool,
    },
    Edit {
        room: Box<str>,
        id: u64,
        text: Box<str>,
        edited: u64,
        excerpt: Box<str>,
    },
}

/// What to do once the turn is committed.
enum Apply {
    React {
        actor: ConnId,
        r#ref: Option<Box<str>>,
        room: Box<str>,
        id: u64,
        emoji: u8,
        who: Box<str>,
        on: bool,
        count: usize,
    },
    Edit {
        actor: ConnId,
        r#ref: Option<Box<str>>,
        room: Box<str>,
        id: u64,
        text: Box<str>,
        edited: u64,
        excerpt: Box<str>,
    },
}

#[derive(Default)]
pub(super) struct Edits {
    /// Guest connections that posted, by connection: their `g:RUN:N`.
    guests: std::collections::HashMap<ConnId, u64>,
    guest_counter: u64,
    pending: Vec<Apply>,
}

impl Chat {
    /// Who `conn` is as an author (see the module's comment). A guest gets
    /// its number on its first message.
    fn author_key(&mut self, conn: ConnId) -> Rc<str> {
        if let Some(a) = self.account_of(conn) {
            return Rc::from(format!("a:{a}"));
        }
        let next = self.edits.guest_counter + 1;
        let n = *self.edits.guests.entry(conn).or_insert(next);
        if n == next {
            self.edits.guest_counter = next;
        }
        Rc::from(format!("g:{}:{n}", super::base36(self.epoch_seed)))
    }

    /// Whether `conn` wrote a message of `author`.
    fn is_author(&self, conn: ConnId, author: &str) -> bool {
        if let Some(a) = author.strip_prefix("a:") {
            return self.account_of(conn).is_some_and(|k| k == a);
        }
        match (author.strip_prefix("g:"), self.edits.guests.get(&conn)) {
            (Some(g), Some(n)) => g == format!("{}:{n}", super::base36(self.epoch_seed)),
            _ => false,
        }
    }

    /// The name a reaction of `conn` is kept under: its account (spelt as
    /// its nick when that is the account's), else its nick.
    fn reactor(&self, conn: ConnId) -> Box<str> {
        let nick = self.conns.nick(conn).unwrap_or_default();
        match self.account_of(conn) {
            Some(a) if !a.eq_ignore_ascii_case(nick) => a.into_boxed_str(),
            _ => nick.into(),
        }
    }

    /// The connection is gone: its guest messages are nobody's from now.
    pub(super) fn edits_disconnect(&mut self, conn: ConnId) {
        self.edits.guests.remove(&conn);
    }

    /// Message `id` of room `idx` as kept (window or store); a tombstone,
    /// an id not kept and one still awaiting its commit are
    /// `no_such_message`.
    fn kept_message(&self, idx: u32, id: u64, out: &mut dyn Outbox) -> Result<Msg, ChatError> {
        let room = self.room(idx).ok_or(ChatError::NoSuchMessage)?;
        if id < room.first_kept() || id >= room.stored_next() {
            return Err(ChatError::NoSuchMessage);
        }
        let msg = match room.window(id, id + 1).and_then(|mut w| w.next().cloned()) {
            Some(m) => m,
            None => super::archive(
                out,
                &room.name,
                Span {
                    lo: id,
                    hi: id + 1,
                    complete: false,
                },
            )?
            .into_iter()
            .find(|m| m.id == id)
            .ok_or(ChatError::NoSuchMessage)?,
        };
        if msg.text.is_empty() {
            return Err(ChatError::NoSuchMessage);
        }
        Ok(msg)
    }

    /// A `message`'s draft: its sender, author, and with `reply_to` the
    /// quote of the message it answers (`no_such_message` when that one
    /// is not kept).
    pub(super) fn draft(
        &mut self,
        conn: ConnId,
        idx: u32,
        text: String,
        reply_to: Option<u64>,
        out: &mut dyn Outbox,
    ) -> Result<Draft, ChatError> {
        let extra = match reply_to {
            Some(pid) => {
                let p = self.kept_message(idx, pid, out)?;
                Some(Box::new(MsgExtra {
                    reply: Some(Reply {
                        id: pid,
                        from: Box::from(&*p.from),
                        text: excerpt(&p.text),
                    }),
                    ..MsgExtra::default()
                }))
            }
            None => None,
        };
        let from = Rc::from(self.conns.nick(conn).unwrap_or_default());
        Ok(Draft {
            from,
            text: text.into_boxed_str(),
            author: self.author_key(conn),
            extra,
            image: None,
        })
    }

    /// `react`: adds or takes back (`on` None: toggles) `conn`'s reaction.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn react(
        &mut self,
        conn: ConnId,
        room: &str,
        id: u64,
        emoji: &'static str,
        on: Option<bool>,
        r: Option<&str>,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        let idx = self.joined_room(conn, room)?;
        let msg = self.kept_message(idx, id, out)?;
        let e = self::emoji(emoji).unwrap_or(0) as u8;
        let who = self.reactor(conn);
        let list = msg.extra.as_ref().map(|x| &x.reactions[..]).unwrap_or(&[]);
        let mut has = list
            .iter()
            .any(|(k, w)| *k == e && w.eq_ignore_ascii_case(&who));
        let mut count = list.iter().filter(|(k, _)| *k == e).count();
        let mut total = list.len();
        // This turn's changes not yet committed count already.
        for p in &self.edits.pending {
            if let Apply::React {
                room: pr,
                id: pid,
                emoji: pe,
                who: pw,
                on: pon,
                ..
            } = p
                && **pr == *room
                && *pid == id
            {
                let delta = if *pon { 1 } else { usize::MAX };
                total = total.wrapping_add(delta);
                if *pe == e {
                    count = count.wrapping_add(delta);
                    if pw.eq_ignore_ascii_case(&who) {
                        has = *pon;
                    }
                }
            }
        }
        let on = on.unwrap_or(!has);
        if on == has {
            // Already so: nothing to store (so no commit to wait for), and
            // only the asker hears the state.
            let f = frame(&Out::Reaction {
                room,
                id,
                emoji: REACTIONS[usize::from(e)],
                nick: &who,
                on,
                count,
                r#ref: r,
            });
            out.send(conn, &f);
            return Ok(());
        }
        if on && total >= MAX_REACTIONS {
            return Err(ChatError::TooManyReactions);
        }
        let count = if on {
            count + 1
        } else {
            count.saturating_sub(1)
        };
        self.records.push(Record::Edit(EditRecord::React {
            room: room.into(),
            id,
            emoji: REACTIONS[usize::from(e)],
            who: who.clone(),
            on,
        }));
        self.edits.pending.push(Apply::React {
            actor: conn,
            r#ref: r.map(Box::from),
            room: room.into(),
            id,
            emoji: e,
            who,
            on,
            count,
        });
        Ok(())
    }

    /// `edit`: the author gives a message a new text.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn edit(
        &mut self,
        conn: ConnId,
        room: &str,
        id: u64,
        text: String,
        r: Option<&str>,
        now: Now,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        let idx = self.joined_room(conn, room)?;
        let msg = self.kept_message(idx, id, out)?;
        if !self.is_author(conn, &msg.author) {
            return Err(ChatError::Forbidden);
        }
        if let Some(until) = self.muted_until(conn, room, now) {
            return Err(ChatError::Muted { until });
        }
        let excerpt = excerpt(&text);
        let text = text.into_boxed_str();
        self.records.push(Record::Edit(EditRecord::Edit {
            room: room.into(),
            id,
            text: text.clone(),
            edited: now.wall_ms,
            excerpt: excerpt.clone(),
        }));
        self.edits.pending.push(Apply::Edit {
            actor: conn,
            r#ref: r.map(Box::from),
            room: room.into(),
            id,
            text,
            edited: now.wall_ms,
            excerpt,
        });
        Ok(())
    }

    /// `delete` by someone who does not moderate the room: allowed to the
    /// message's author (`refused`, the moderator check's error, otherwise),
    /// through moderation's tombstone path, without an audit line.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn delete_own(
        &mut self,
        conn: ConnId,
        room: &str,
        id: u64,
        r: Option<&str>,
        now: Now,
        out: &mut dyn Outbox,
        refused: ChatError,
    ) -> Result<(), ChatError> {
        let idx = self.joined_room(conn, room)?;
        let msg = self.kept_message(idx, id, out)?;
        if !self.is_author(conn, &msg.author) {
            return Err(refused);
        }
        let by = self.conns.nick(conn).unwrap_or_default().to_string();
        self.queue_delete(conn, room, id, r, now, by);
        Ok(())
    }

    /// Changes message `id` of room `idx` in the window, if it is there,
    /// keeping the history byte counts exact.
    fn change_kept(&mut self, idx: u32, id: u64, f: impl FnOnce(&mut Msg)) {
        let Some(room) = self.rooms.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        if !room.keeps(id) {
            return;
        }
        let first = room.window_first();
        let Some(log) = room.log.as_deref_mut() else {
            return;
        };
        let Some(m) = usize::try_from(id - first)
            .ok()
            .and_then(|i| log.history.get_mut(i))
        else {
            return;
        };
        let before = m.cost();
        f(m);
        let after = m.cost();
        log.bytes = log.bytes - before + after;
        self.history_bytes = self.history_bytes - before + after;
    }

    /// The kept replies to message `id` of room `idx` quote `excerpt` now
    /// (empty: it was deleted). Replies come after their parent: the walk
    /// stops there.
    fn requote(&mut self, idx: u32, id: u64, excerpt: &str) {
        let Some(log) = self
            .rooms
            .get_mut(idx as usize)
            .and_then(Option::as_mut)
            .and_then(|r| r.log.as_deref_mut())
        else {
            return;
        };
        let mut delta: isize = 0;
        for m in log.history.iter_mut().rev() {
            if m.id <= id {
                break;
            }
            if let Some(q) = m
                .extra
                .as_mut()
                .and_then(|x| x.reply.as_mut())
                .filter(|q| q.id == id)
            {
                delta += excerpt.len() as isize - q.text.len() as isize;
                q.text = Box::from(excerpt);
            }
        }
        log.bytes = log.bytes.saturating_add_signed(delta);
        self.history_bytes = self.history_bytes.saturating_add_signed(delta);
    }

    /// Moderation's delete, committed: the kept message becomes a
    /// tombstone (no text, reply, edit mark or reactions), and the quotes
    /// of its replies are emptied.
    pub(super) fn tombstone(&mut self, idx: u32, id: u64) {
        self.change_kept(idx, id, |m| {
            m.text = Box::from("");
            m.extra = None;
            m.image = None;
        });
        self.requote(idx, id, "");
    }

    pub(super) fn edits_committed(&mut self, out: &mut dyn Outbox) {
        for p in std::mem::take(&mut self.edits.pending) {
            match p {
                Apply::React {
                    actor,
                    r#ref,
                    room,
                    id,
                    emoji,
                    who,
                    on,
                    count,
                } => {
                    let idx = self.room_index(&room);
                    if let Some(i) = idx {
                        let w = who.clone();
                        self.change_kept(i, id, |m| {
                            let x = m.extra.get_or_insert_with(Box::default);
                            match x
                                .reactions
                                .iter()
                                .position(|(k, n)| *k == emoji && n.eq_ignore_ascii_case(&w))
                            {
                                Some(at) if !on => {
                                    x.reactions.remove(at);
                                }
                                None if on => x.reactions.push((emoji, w)),
                                _ => {}
                            }
                        });
                    }
                    let ev = |r| Out::Reaction {
                        room: &room,
                        id,
                        emoji: REACTIONS[usize::from(emoji)],
                        nick: &who,
                        on,
                        count,
                        r#ref: r,
                    };
                    let shared = frame(&ev(None));
                    let mine = frame(&ev(r#ref.as_deref()));
                    self.to_room_and_actor(idx, actor, &shared, &mine, out);
                }
                Apply::Edit {
                    actor,
                    r#ref,
                    room,
                    id,
                    text,
                    edited,
                    excerpt,
                } => {
                    let idx = self.room_index(&room);
                    if let Some(i) = idx {
                        let t = text.clone();
                        self.change_kept(i, id, |m| {
                            // A tombstone stays one (a delete of the same turn).
                            if !m.text.is_empty() {
                                m.text = t;
                                m.extra.get_or_insert_with(Box::default).edited = edited;
                            }
                        });
                        self.requote(i, id, &excerpt);
                    }
                    let ev = |r| Out::Edited {
                        room: &room,
                        id,
                        text: &text,
                        edited,
                        r#ref: r,
                    };
                    let shared = frame(&ev(None));
                    let mine = frame(&ev(r#ref.as_deref()));
                    self.to_room_and_actor(idx, actor, &shared, &mine, out);
                }
            }
        }
        self.enforce_budget();
    }

    /// `shared` to every member of room `idx` but `actor`, `mine` to it.
    fn to_room_and_actor(
        &self,
        idx: Option<u32>,
        actor: ConnId,
        shared: &Rc<[u8]>,
        mine: &Rc<[u8]>,
        out: &mut dyn Outbox,
    ) {
        if let Some(room) = idx.and_then(|i| self.room(i)) {
            super::broadcast(out, &room.members, Some(actor), shared);
        }
        out.send(actor, mine);
    }

    pub(super) fn edits_failed(&mut self, out: &mut dyn Outbox) {
        for p in std::mem::take(&mut self.edits.pending) {
            let (Apply::React { actor, r#ref, .. } | Apply::Edit { actor, r#ref, .. }) = p;
            super::send_error(out, actor, r#ref.as_deref(), &ChatError::StorageFailed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_one_line_and_cut_with_an_ellipsis() {
        assert_eq!(&*excerpt("a\nb\tc"), "a b c");
        let long = "é".repeat(EXCERPT_CHARS + 5);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert!(e.ends_with('…'));
        assert_eq!(
            &*excerpt(&"x".repeat(EXCERPT_CHARS)),
            "x".repeat(EXCERPT_CHARS)
        );
    }

    #[test]
    fn the_heart_counts_with_or_without_its_variation_selector() {
        assert_eq!(emoji("\u{2764}"), Some(1));
        assert_eq!(emoji("\u{2764}\u{FE0F}"), Some(1));
        assert_eq!(emoji("\u{1F44D}"), Some(0));
        assert_eq!(emoji("x"), None);
    }
}
