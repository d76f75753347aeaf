//! Moderation by server operators (accounts with `op`), a room's owner (the
//! account that created it) and the moderators they appoint: `kick` from a
//! room, `ban` from a room or the server (by nick and account, optionally
//! by address; for a duration or for good), `mute`, `slow`, `topic`,
//! `delete`. Each action is refused `forbidden` to anyone else, announced
//! to the room as a `moderation` event, written to the audit log in the
//! store, and, like account changes, carried out only once committed.

use std::net::IpAddr;

use super::durable::Record;
use super::protocol::{ChatError, Out, frame};
use super::{Chat, ConnId, Now, Outbox, send_error, validate};

/// A `moderation` event's fields; `until`, `interval` and `id` only for
/// the actions that have them.
#[derive(Default)]
struct Event<'a> {
    action: &'static str,
    room: Option<&'a str>,
    nick: &'a str,
    by: &'a str,
    reason: &'a str,
    until: Option<u64>,
    interval: Option<u64>,
    id: Option<u64>,
}

impl<'a> Event<'a> {
    /// The event, with `r` for the actor's own copy.
    fn out(&self, r: Option<&'a str>) -> Out<'a> {
        Out::Moderation {
            action: self.action,
            room: self.room,
            nick: self.nick,
            by: self.by,
            reason: self.reason,
            until: self.until,
            interval: self.interval,
            id: self.id,
            r#ref: r,
        }
    }
}

/// A connection's role in each room it has joined (see [`Chat::role_in`]).
pub(super) type Roles = Vec<(u32, Option<&'static str>)>;

/// A ban in force.
#[derive(Clone, Debug)]
pub struct Ban {
    /// Empty: the whole server.
    pub room: String,
    /// Lowercase; empty: none.
    pub nick: String,
    pub account: String,
    pub ip: Option<IpAddr>,
    /// Wall-clock ms; 0: for good.
    pub until: u64,
    pub reason: String,
    /// `ip` as stored (empty: none).
    pub ip_shown: String,
}

impl Ban {
    /// The address as the store keeps it (empty: none).
    pub fn ip_text(&self) -> &str {
        &self.ip_shown
    }
}

/// A change to store (see [`Chat::take_records`]).
#[derive(Clone, Debug)]
pub enum ModRecord {
    Ban(Ban, Box<str>, u64),
    /// The ban of `nick` (lowercase) in `room` ("": the server) is lifted.
    Unban {
        room: Box<str>,
        nick: Box<str>,
    },
    Moderator {
        room: Box<str>,
        account: Box<str>,
        on: bool,
    },
    /// A room's topic ("" clears it).
    Topic {
        room: Box<str>,
        topic: Box<str>,
    },
    /// The account that created `room` (kept only if none is yet).
    Creator {
        room: Box<str>,
        account: Box<str>,
    },
    /// A mute (see [`crate::store::Op::PutMute`]); `now` drops ended ones.
    Mute {
        room: Box<str>,
        nick: Box<str>,
        account: Box<str>,
        until: u64,
        now: u64,
    },
    /// Slow mode of a room, ms between one user's messages (0: off).
    Slow {
        room: Box<str>,
        interval_ms: u64,
    },
    /// Message `id` of `room` becomes a tombstone (its text emptied).
    Delete {
        room: Box<str>,
        id: u64,
    },
    Audit {
        ts: u64,
        actor: Box<str>,
        action: &'static str,
        room: Box<str>,
        target: Box<str>,
        detail: Box<str>,
    },
}

pub(super) enum ModApply {
    Unban {
        actor: ConnId,
        r#ref: Option<Box<str>>,
        by: String,
        room: String,
        nick: String,
    },
    Delete {
        actor: ConnId,
        r#ref: Option<Box<str>>,
        by: String,
        room: String,
        id: u64,
    },
    Topic {
        actor: ConnId,
        r#ref: Option<Box<str>>,
        by: String,
        room: String,
        topic: String,
    },
    Moderator {
        actor: ConnId,
        r#ref: Option<Box<str>>,
        by: String,
        room: String,
        account: String,
        on: bool,
    },
    Kick {
        actor: ConnId,
        r#ref: Option<Box<str>>,
        by: String,
        room: String,
        target: ConnId,
        nick: String,
        reason: String,
    },
    Ban {
        actor: ConnId,
        r#ref: Option<Box<str>>,
        by: String,
        ban: Ban,
        target_nick: String,
    },
    Mute {
        actor: ConnId,
        r#ref: Option<Box<str>>,
        by: String,
        mute: Mute,
        target_nick: String,
        reason: String,
    },
    Slow {
        actor: ConnId,
        r#ref: Option<Box<str>>,
        by: String,
        room: String,
        interval_s: u64,
    },
}

/// A mute in force (stored: a restart keeps it until it ends).
#[derive(Clone, Debug)]
pub struct Mute {
    pub room: String,
    /// Lowercase.
    pub nick: String,
    /// Lowercase; empty: none.
    pub account: String,
    /// Wall-clock ms.
    pub until: u64,
}

#[derive(Default)]
pub(super) struct Moderation {
    bans: Vec<Ban>,
    mutes: Vec<Mute>,
    /// Room -> topic.
    topics: std::collections::HashMap<String, String>,
    /// (room, account key): room moderators.
    mods: std::collections::HashSet<(String, String)>,
    /// Room -> the account key that created it: its owner.
    creators: std::collections::HashMap<String, String>,
    /// Account key -> how many rooms of `creators` it owns (at most
    /// `max_rooms_per_addr` each, operators aside): `creators`, and the
    /// topics and moderators only owners (or operators) can set, grow
    /// with the accounts, not with every room name a user tries.
    owned: std::collections::HashMap<String, u32>,
    /// Room -> slow-mode interval, ms.
    slow: std::collections::HashMap<String, u64>,
    /// (room, nick lowercase) -> monotonic ms of the last message posted
    /// in a slow room.
    last_post: std::collections::HashMap<(String, String), u64>,
    pending: Vec<(Now, ModApply)>,
}

impl Ban {
    fn live(&self, now: Now) -> bool {
        self.until == 0 || self.until > now.wall_ms
    }

    fn matches(&self, nick: &str, account: Option<&str>, ip: Option<IpAddr>) -> bool {
        (!self.nick.is_empty() && self.nick.eq_ignore_ascii_case(nick))
            || (!self.account.is_empty() && account.is_some_and(|a| self.account == a))
            || (self.ip.is_some() && self.ip == ip)
    }
}

impl Chat {
    /// Loads the bans in force (before any connection).
    pub fn restore_bans(&mut self, bans: Vec<Ban>) {
        self.moder.bans = bans;
    }

    /// The ban that keeps `conn` (as `nick`) out of `room` ("" for the
    /// server: only server bans), if any.
    fn ban_for(&self, conn: ConnId, nick: &str, room: &str, now: Now) -> Option<&Ban> {
        let account = self.account_of(conn);
        let ip = self.ip_of(conn);
        self.moder.bans.iter().find(|b| {
            b.live(now)
                && (b.room.is_empty() || b.room == room)
                && b.matches(nick, account.as_deref(), ip)
        })
    }

    pub(super) fn check_banned(
        &self,
        conn: ConnId,
        room: &str,
        nick: Option<&str>,
        now: Now,
    ) -> Result<(), ChatError> {
        let own = self.conns.nick(conn).unwrap_or_default();
        match self.ban_for(conn, nick.unwrap_or(own), room, now) {
            Some(b) => Err(ChatError::Banned {
                until: b.until,
                reason: b.reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// A login to the account `key` while a server ban holds it.
    pub(super) fn check_account_ban(&self, key: &str, now: Now) -> Result<(), ChatError> {
        match self
            .moder
            .bans
            .iter()
            .find(|b| b.live(now) && b.room.is_empty() && b.matches(key, Some(key), None))
        {
            Some(b) => Err(ChatError::Banned {
                until: b.until,
                reason: b.reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Whether a server ban holds the nick `nick` (a guest asking for it
    /// at connect gets a guest nick).
    pub(super) fn nick_banned(&self, nick: &str, now: Now) -> bool {
        self.moder
            .bans
            .iter()
            .any(|b| b.live(now) && b.room.is_empty() && b.matches(nick, None, None))
    }

    /// A connection just admitted: closed at once when a server ban holds
    /// its address.
    pub(super) fn enforce_on_connect(&mut self, conn: ConnId, now: Now, out: &mut dyn Outbox) {
        if let Err(e) = self.check_banned(conn, "", None, now) {
            send_error(out, conn, None, &e);
            if let Some(c) = self.conns.get_mut(&conn) {
                c.closing = true;
            }
            out.close(conn, super::CLOSE_POLICY, "banned");
        }
    }

    fn operator_name(&self, conn: ConnId) -> Result<String, ChatError> {
        if !self.is_op(conn) {
            return Err(ChatError::Forbidden);
        }
        Ok(self.conns.nick(conn).unwrap_or_default().to_string())
    }

    /// The nick of `conn` when it may moderate `room`: an operator, the
    /// room's owner, or a moderator of the room (logged in to an appointed
    /// account).
    fn moderator_name(&self, conn: ConnId, room: &str) -> Result<String, ChatError> {
        if self.role_in(conn, room).is_none() {
            return Err(ChatError::Forbidden);
        }
        Ok(self.conns.nick(conn).unwrap_or_default().to_string())
    }

    /// A moderator acts only on those below them (docs/protocol.md,
    /// "Roles"): not on another moderator, the room's owner or an operator;
    /// an owner not on an operator. Operators act on anyone. The target's
    /// rank is its connection's role, or that of the account its nick is
    /// registered to (a registered nick is held only by its account, so
    /// kicking or banning an absent owner by nick is refused too).
    fn check_outranks(
        &self,
        conn: ConnId,
        room: &str,
        target: Option<ConnId>,
        nick: &str,
    ) -> Result<(), ChatError> {
        fn rank(role: Option<&str>) -> u8 {
            match role {
                Some("operator") => 3,
                Some("owner") => 2,
                Some("moderator") => 1,
                _ => 0,
            }
        }
        let actor = rank(self.role_in(conn, room));
        if actor == 3 {
            return Ok(());
        }
        let key = nick.to_ascii_lowercase();
        let by_nick = if self.is_registered(&key) {
            rank(self.account_role(&key, room))
        } else {
            0
        };
        let by_conn = target.map_or(0, |t| rank(self.role_in(t, room)));
        if by_nick.max(by_conn) >= actor {
            return Err(ChatError::Forbidden);
        }
        Ok(())
    }

    /// The role in `room` of the account `key` (whether or not it is
    /// connected): as [`Chat::role_in`] for a connection logged in to it.
    fn account_role(&self, key: &str, room: &str) -> Option<&'static str> {
        if self.account_is_op(key) {
            return Some("operator");
        }
        if self.moder.creators.get(room).is_some_and(|c| c == key) {
            return Some("owner");
        }
        self.moder
            .mods
            .contains(&(room.to_string(), key.to_string()))
            .then_some("moderator")
    }

    /// What `conn` may do in `room` (docs/protocol.md, "Roles"):
    /// `operator` (everything, everywhere), `owner` (the account that
    /// created the room: moderates it and appoints its moderators),
    /// `moderator`; None: a plain member.
    pub(super) fn role_in(&self, conn: ConnId, room: &str) -> Option<&'static str> {
        if self.is_op(conn) {
            return Some("operator");
        }
        let account = self.account_key(conn)?;
        if self.moder.creators.get(room).is_some_and(|c| c == account) {
            return Some("owner");
        }
        // The set is keyed by owned pairs; this runs once per moderation
        // request or join, not per message.
        self.moder
            .mods
            .contains(&(room.to_string(), account.to_string()))
            .then_some("moderator")
    }

    /// The role of `conn` in each room it has joined.
    pub(super) fn roles_of(&self, conn: ConnId) -> Roles {
        let Some(c) = self.conns.get(&conn) else {
            return Vec::new();
        };
        c.rooms
            .iter()
            .filter_map(|&i| self.room(i).map(|r| (i, self.role_in(conn, &r.name))))
            .collect()
    }

    /// Sends `conn` a `role` event for each joined room whose role is no
    /// longer the one in `before` (a login, a logout, an appointment), and
    /// the room's other members a `rank` event naming it, so that their
    /// clients offer kick, mute and ban by the rank the server now checks
    /// (docs/protocol.md, "Roles").
    pub(super) fn send_role_changes(
        &self,
        conn: ConnId,
        before: &[(u32, Option<&'static str>)],
        out: &mut dyn Outbox,
    ) {
        let nick = self.conns.nick(conn).unwrap_or_default();
        for (idx, now) in self.roles_of(conn) {
            let was = before.iter().find(|(i, _)| *i == idx).and_then(|(_, r)| *r);
            if was == now {
                continue;
            }
            let Some(room) = self.room(idx) else {
                continue;
            };
            let role = now.unwrap_or("member");
            out.send(
                conn,
                &frame(&Out::Role {
                    room: &room.name,
                    role,
                }),
            );
            // One frame for the whole room, as for every broadcast.
            let f = frame(&Out::Rank {
                room: &room.name,
                nick,
                role,
            });
            for &m in room.members.iter().filter(|&&m| m != conn) {
                out.send(m, &f);
            }
        }
    }

    /// Loads the rooms' creators, (room, account) pairs.
    pub fn restore_creators(&mut self, creators: Vec<(String, String)>) {
        self.moder.creators = creators.into_iter().collect();
        self.moder.owned.clear();
        for account in self.moder.creators.values() {
            *self.moder.owned.entry(account.clone()).or_insert(0) += 1;
        }
    }

    /// Whether `conn` creating `room` now would make its account own more
    /// rooms than `max_rooms_per_addr` (0: no limit). Operators, guests and
    /// a room that has an owner already (it keeps it) are not held to it.
    pub(super) fn check_owned_rooms(&self, conn: ConnId, room: &str) -> Result<(), ChatError> {
        let cap = self.cfg.max_rooms_per_addr;
        let Some(account) = self.account_key(conn) else {
            return Ok(());
        };
        let owned = self.moder.owned.get(account).copied().unwrap_or(0) as usize;
        if cap > 0 && owned >= cap && !self.moder.creators.contains_key(room) && !self.is_op(conn) {
            return Err(ChatError::TooManyOwnedRooms);
        }
        Ok(())
    }

    /// Loads the mutes in force and the rooms' slow modes (ms).
    pub fn restore_mutes(&mut self, mutes: Vec<Mute>, slow: Vec<(String, u64)>) {
        self.moder.mutes = mutes;
        self.moder.slow = slow.into_iter().filter(|(_, ms)| *ms > 0).collect();
    }

    /// A logged-in `conn` creates `room`: its account owns the room unless
    /// an owner is recorded already (a room forgotten and made anew keeps
    /// its first owner, as it keeps its topic and moderators).
    pub(super) fn record_creator(&mut self, conn: ConnId, room: &str) {
        let Some(account) = self.account_key(conn).map(str::to_string) else {
            return;
        };
        if self.moder.creators.contains_key(room) {
            return;
        }
        self.records.push(Record::Moderation(ModRecord::Creator {
            room: room.into(),
            account: account.as_str().into(),
        }));
        *self.moder.owned.entry(account.clone()).or_insert(0) += 1;
        self.moder.creators.insert(room.to_string(), account);
    }

    /// The topic of `room`, if it has one.
    pub(super) fn topic_of(&self, room: &str) -> Option<&str> {
        self.moder.topics.get(room).map(String::as_str)
    }

    /// Loads the rooms' topics.
    pub fn restore_topics(&mut self, topics: Vec<(String, String)>) {
        self.moder.topics = topics.into_iter().collect();
    }

    /// `topic`: a moderator of the room sets (or clears) it; stored first.
    pub(super) fn set_topic(
        &mut self,
        conn: ConnId,
        room: &str,
        topic: String,
        r: Option<&str>,
        now: Now,
    ) -> Result<(), ChatError> {
        let by = self.moderator_name(conn, room)?;
        self.records.push(Record::Moderation(ModRecord::Topic {
            room: room.into(),
            topic: topic.as_str().into(),
        }));
        self.audit(now, &by, "topic", room, "", &topic);
        self.moder.pending.push((
            now,
            ModApply::Topic {
                actor: conn,
                r#ref: r.map(Box::from),
                by,
                room: room.to_string(),
                topic,
            },
        ));
        Ok(())
    }

    /// `delete`: a moderator of the room deletes message `id`; stored
    /// first, then the tombstone replaces it in memory and every member
    /// hears it. Anyone else may delete only their own (see
    /// [`Chat::delete_own`]).
    pub(super) fn delete_message(
        &mut self,
        conn: ConnId,
        room: &str,
        id: u64,
        r: Option<&str>,
        now: Now,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        let by = match self.moderator_name(conn, room) {
            Ok(by) => by,
            Err(e) => return self.delete_own(conn, room, id, r, now, out, e),
        };
        let idx = self.room_index(room).ok_or(ChatError::NoSuchMessage)?;
        let r0 = self.room(idx).ok_or(ChatError::NoSuchMessage)?;
        if id < r0.first_kept() || id >= r0.stored_next() {
            return Err(ChatError::NoSuchMessage);
        }
        self.audit(now, &by, "delete", room, "", &format!("id={id}"));
        self.queue_delete(conn, room, id, r, now, by);
        Ok(())
    }

    /// A delete decided (by a moderator, or by the author): stored with
    /// the turn, applied and announced once committed.
    pub(super) fn queue_delete(
        &mut self,
        conn: ConnId,
        room: &str,
        id: u64,
        r: Option<&str>,
        now: Now,
        by: String,
    ) {
        self.records.push(Record::Moderation(ModRecord::Delete {
            room: room.into(),
            id,
        }));
        // Its image goes in the same commit (extension: images).
        self.delete_image_of(room, id);
        self.moder.pending.push((
            now,
            ModApply::Delete {
                actor: conn,
                r#ref: r.map(Box::from),
                by,
                room: room.to_string(),
                id,
            },
        ));
    }

    /// Loads the room moderators, (room, account) pairs.
    pub fn restore_moderators(&mut self, mods: Vec<(String, String)>) {
        self.moder.mods = mods.into_iter().collect();
    }

    /// `moderator`: an operator or the room's owner appoints (or, with `on`
    /// false, removes) the account `nick` as a moderator of `room`. Stored
    /// before it holds.
    pub(super) fn appoint(
        &mut self,
        conn: ConnId,
        room: &str,
        nick: &str,
        on: bool,
        r: Option<&str>,
        now: Now,
    ) -> Result<(), ChatError> {
        if !matches!(self.role_in(conn, room), Some("operator" | "owner")) {
            return Err(ChatError::Forbidden);
        }
        let by = self.conns.nick(conn).unwrap_or_default().to_string();
        let account = nick.to_ascii_lowercase();
        if !self.is_registered(&account) {
            return Err(ChatError::NoSuchAccount);
        }
        // The table outlives the room: bounded per room. One pass over
        // the moderators, once per appointment.
        if on
            && !self.is_op(conn)
            && !self
                .moder
                .mods
                .contains(&(room.to_string(), account.clone()))
            && self.moder.mods.iter().filter(|(r, _)| r == room).count()
                >= validate::MAX_ROOM_MODERATORS
        {
            return Err(ChatError::TooManyModerators);
        }
        self.records.push(Record::Moderation(ModRecord::Moderator {
            room: room.into(),
            account: account.as_str().into(),
            on,
        }));
        let action = if on { "moderator" } else { "unmoderator" };
        self.audit(now, &by, action, room, &account, "");
        self.moder.pending.push((
            now,
            ModApply::Moderator {
                actor: conn,
                r#ref: r.map(Box::from),
                by,
                room: room.to_string(),
                account,
                on,
            },
        ));
        Ok(())
    }

    fn audit(
        &mut self,
        now: Now,
        actor: &str,
        action: &'static str,
        room: &str,
        target: &str,
        detail: &str,
    ) {
        self.records.push(Record::Moderation(ModRecord::Audit {
            ts: now.wall_ms,
            actor: actor.into(),
            action,
            room: room.into(),
            target: target.into(),
            detail: detail.into(),
        }));
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn kick(
        &mut self,
        conn: ConnId,
        room: &str,
        nick: &str,
        reason: Option<String>,
        r: Option<&str>,
        now: Now,
    ) -> Result<(), ChatError> {
        let by = self.moderator_name(conn, room)?;
        let target = self.holder(nick).ok_or(ChatError::NoSuchUser)?;
        self.check_outranks(conn, room, Some(target), nick)?;
        let idx = self.room_index(room).ok_or(ChatError::NotInRoom)?;
        if !self
            .conns
            .get(&target)
            .is_some_and(|c| c.rooms.contains(&idx))
        {
            return Err(ChatError::NotInRoom);
        }
        let nick = self.conns.nick(target).unwrap_or_default().to_string();
        let reason = reason.unwrap_or_default();
        self.audit(now, &by, "kick", room, &nick, &reason);
        self.moder.pending.push((
            now,
            ModApply::Kick {
                actor: conn,
                r#ref: r.map(Box::from),
                by,
                room: room.to_string(),
                target,
                nick,
                reason,
            },
        ));
        Ok(())
    }

    /// The nick of `conn` when it may ban (and unban) in `room`, or with
    /// None server-wide (operators only).
    fn banner_name(&self, conn: ConnId, room: Option<&str>) -> Result<String, ChatError> {
        match room {
            Some(room) => self.moderator_name(conn, room),
            None => self.operator_name(conn),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn ban(
        &mut self,
        conn: ConnId,
        room: Option<String>,
        nick: &str,
        duration_s: Option<u64>,
        ip: bool,
        reason: Option<String>,
        r: Option<&str>,
        now: Now,
    ) -> Result<(), ChatError> {
        let by = self.banner_name(conn, room.as_deref())?;
        let target = self.holder(nick);
        let key = nick.to_ascii_lowercase();
        if let Some(room) = &room {
            self.check_outranks(conn, room, target, nick)?;
            // A ban of a nick already banned here replaces that one (see
            // `ModApply::Ban`), so it is not one more.
            if !self.is_op(conn)
                && self
                    .moder
                    .bans
                    .iter()
                    .filter(|b| b.room == *room && b.live(now) && b.nick != key)
                    .count()
                    >= validate::MAX_ROOM_BANS
            {
                return Err(ChatError::TooManyBans);
            }
        }
        // The account: the one the target is logged in to, or the one the
        // nick is registered to.
        let account = target
            .and_then(|t| self.account_of(t))
            .or_else(|| self.is_registered(&key).then(|| key.clone()))
            .unwrap_or_default();
        let ip = if ip {
            Some(
                target
                    .and_then(|t| self.ip_of(t))
                    .ok_or(ChatError::NoSuchUser)?,
            )
        } else {
            None
        };
        let until = match duration_s {
            Some(d) => now.wall_ms.saturating_add(d.saturating_mul(1000)),
            None => 0,
        };
        let ban = Ban {
            ip_shown: ip.map(|i| i.to_string()).unwrap_or_default(),
            room: room.unwrap_or_default(),
            nick: key,
            account,
            ip,
            until,
            reason: reason.unwrap_or_default(),
        };
        self.records.push(Record::Moderation(ModRecord::Ban(
            ban.clone(),
            by.as_str().into(),
            now.wall_ms,
        )));
        let detail = format!(
            "until={} ip={} reason={}",
            ban.until,
            ban.ip.map(|i| i.to_string()).unwrap_or_default(),
            ban.reason
        );
        let room = ban.room.clone();
        self.audit(now, &by, "ban", &room, nick, &detail);
        self.moder.pending.push((
            now,
            ModApply::Ban {
                actor: conn,
                r#ref: r.map(Box::from),
                by,
                ban,
                target_nick: nick.to_string(),
            },
        ));
        Ok(())
    }

    /// Lifts the ban of `nick` in `room` (None: the server ban), for those
    /// who may ban there. Stored first, like the ban; then the room (or,
    /// for a server ban, the operator) hears `"action":"unban"`.
    pub(super) fn unban(
        &mut self,
        conn: ConnId,
        room: Option<String>,
        nick: &str,
        r: Option<&str>,
        now: Now,
    ) -> Result<(), ChatError> {
        let by = self.banner_name(conn, room.as_deref())?;
        let room = room.unwrap_or_default();
        let key = nick.to_ascii_lowercase();
        if !self
            .moder
            .bans
            .iter()
            .any(|b| b.room == room && b.nick == key && b.live(now))
        {
            return Err(ChatError::NotBanned);
        }
        self.records.push(Record::Moderation(ModRecord::Unban {
            room: room.as_str().into(),
            nick: key.as_str().into(),
        }));
        self.audit(now, &by, "unban", &room, nick, "");
        self.moder.pending.push((
            now,
            ModApply::Unban {
                actor: conn,
                r#ref: r.map(Box::from),
                by,
                room,
                nick: nick.to_string(),
            },
        ));
        Ok(())
    }

    /// Sends the `moderation` event to a room's members and to the actor
    /// (its own copy `own`, with its `ref`; once, member or not).
    fn announce(
        &self,
        idx: Option<u32>,
        actor: ConnId,
        ev: &Event<'_>,
        r: Option<&str>,
        out: &mut dyn Outbox,
    ) {
        let shared = frame(&ev.out(None));
        let mine = frame(&ev.out(r));
        if let Some(room) = idx.and_then(|i| self.room(i)) {
            for &m in &room.members {
                if m != actor {
                    out.send(m, &shared);
                }
            }
        }
        out.send(actor, &mine);
    }

    pub(super) fn mod_committed(&mut self, out: &mut dyn Outbox) {
        for (now, p) in std::mem::take(&mut self.moder.pending) {
            match p {
                ModApply::Unban {
                    actor,
                    r#ref,
                    by,
                    room,
                    nick,
                } => {
                    let key = nick.to_ascii_lowercase();
                    self.moder
                        .bans
                        .retain(|b| b.live(now) && !(b.room == room && b.nick == key));
                    let ev = Event {
                        action: "unban",
                        room: (!room.is_empty()).then_some(room.as_str()),
                        nick: &nick,
                        by: &by,
                        ..Event::default()
                    };
                    let idx = if room.is_empty() {
                        None
                    } else {
                        self.room_index(room.as_str())
                    };
                    self.announce(idx, actor, &ev, r#ref.as_deref(), out);
                }
                ModApply::Delete {
                    actor,
                    r#ref,
                    by,
                    room,
                    id,
                } => {
                    let idx = self.room_index(room.as_str());
                    if let Some(i) = idx {
                        self.tombstone(i, id);
                    }
                    let ev = Event {
                        action: "delete",
                        room: Some(&room),
                        by: &by,
                        id: Some(id),
                        ..Event::default()
                    };
                    self.announce(idx, actor, &ev, r#ref.as_deref(), out);
                }
                ModApply::Topic {
                    actor,
                    r#ref,
                    by,
                    room,
                    topic,
                } => {
                    let idx = self.room_index(room.as_str());
                    let ev = Event {
                        action: "topic",
                        room: Some(&room),
                        by: &by,
                        reason: &topic,
                        ..Event::default()
                    };
                    self.announce(idx, actor, &ev, r#ref.as_deref(), out);
                    if topic.is_empty() {
                        self.moder.topics.remove(&room);
                    } else {
                        self.moder.topics.insert(room, topic);
                    }
                }
                ModApply::Moderator {
                    actor,
                    r#ref,
                    by,
                    room,
                    account,
                    on,
                } => {
                    // The account's connections in the room hear their
                    // new role (an owner or operator keeps theirs).
                    let theirs: Vec<(ConnId, Roles)> = self
                        .account_conns(&account, usize::MAX)
                        .into_iter()
                        .map(|c| (c, self.roles_of(c)))
                        .collect();
                    let k = (room.clone(), account.clone());
                    if on {
                        self.moder.mods.insert(k);
                    } else {
                        self.moder.mods.remove(&k);
                    }
                    for (c, before) in &theirs {
                        self.send_role_changes(*c, before, out);
                    }
                    let idx = self.room_index(room.as_str());
                    let ev = Event {
                        action: if on { "moderator" } else { "unmoderator" },
                        room: Some(&room),
                        nick: &account,
                        by: &by,
                        ..Event::default()
                    };
                    self.announce(idx, actor, &ev, r#ref.as_deref(), out);
                }
                ModApply::Kick {
                    actor,
                    r#ref,
                    by,
                    room,
                    target,
                    nick,
                    reason,
                } => {
                    let idx = self.room_index(room.as_str());
                    let ev = Event {
                        action: "kick",
                        room: Some(&room),
                        nick: &nick,
                        by: &by,
                        reason: &reason,
                        ..Event::default()
                    };
                    self.announce(idx, actor, &ev, r#ref.as_deref(), out);
                    if let Some(i) = idx {
                        self.expel(target, i, now, out);
                    }
                }
                ModApply::Mute {
                    actor,
                    r#ref,
                    by,
                    mute,
                    target_nick,
                    reason,
                } => {
                    let t = now.wall_ms;
                    self.moder.mutes.retain(|m| {
                        m.until > t
                            && !(m.room == mute.room
                                && m.nick == mute.nick
                                && m.account == mute.account)
                    });
                    let idx = self.room_index(mute.room.as_str());
                    let ev = Event {
                        action: "mute",
                        room: Some(&mute.room),
                        nick: &target_nick,
                        by: &by,
                        reason: &reason,
                        until: Some(mute.until),
                        ..Event::default()
                    };
                    self.announce(idx, actor, &ev, r#ref.as_deref(), out);
                    self.moder.mutes.push(mute);
                }
                ModApply::Slow {
                    actor,
                    r#ref,
                    by,
                    room,
                    interval_s,
                } => {
                    if interval_s == 0 {
                        self.moder.slow.remove(&room);
                        self.moder.last_post.retain(|(rm, _), _| *rm != room);
                    } else {
                        self.moder.slow.insert(room.clone(), interval_s * 1000);
                    }
                    let idx = self.room_index(room.as_str());
                    let ev = Event {
                        action: "slow",
                        room: Some(&room),
                        by: &by,
                        interval: Some(interval_s),
                        ..Event::default()
                    };
                    self.announce(idx, actor, &ev, r#ref.as_deref(), out);
                }
                ModApply::Ban {
                    actor,
                    r#ref,
                    by,
                    ban,
                    target_nick,
                } => {
                    // Ended bans hold nothing: dropped as a new one comes.
                    // A ban of the same nick in the same room (or server-
                    // wide) is replaced, as the store replaces its row.
                    self.moder
                        .bans
                        .retain(|b| b.live(now) && !(b.room == ban.room && b.nick == ban.nick));
                    self.moder.bans.push(ban.clone());
                    let idx = if ban.room.is_empty() {
                        None
                    } else {
                        self.room_index(ban.room.as_str())
                    };
                    let ev = Event {
                        action: "ban",
                        room: (!ban.room.is_empty()).then_some(ban.room.as_str()),
                        nick: &target_nick,
                        by: &by,
                        reason: &ban.reason,
                        until: Some(ban.until),
                        ..Event::default()
                    };
                    // Everyone the ban holds goes: from the room, or off
                    // the server.
                    let hit: Vec<ConnId> = self
                        .conns
                        .slots
                        .iter()
                        .enumerate()
                        .filter_map(|(i, c)| c.as_ref().map(|c| (i, c.nick)))
                        .filter(|(i, n)| {
                            ban.matches(n.as_str(), self.account_of(*i).as_deref(), self.ip_of(*i))
                        })
                        .map(|(i, _)| i)
                        .collect();
                    match idx {
                        Some(i) => {
                            self.announce(Some(i), actor, &ev, r#ref.as_deref(), out);
                            for t in hit {
                                self.expel(t, i, now, out);
                            }
                        }
                        None if ban.room.is_empty() => {
                            let shared = frame(&ev.out(None));
                            for &t in &hit {
                                let rooms = self
                                    .conns
                                    .get(&t)
                                    .map(|c| c.rooms.clone())
                                    .unwrap_or_default();
                                for ri in rooms {
                                    if let Some(room) = self.room(ri) {
                                        for &m in &room.members {
                                            if m != actor {
                                                out.send(m, &shared);
                                            }
                                        }
                                    }
                                }
                            }
                            out.send(actor, &frame(&ev.out(r#ref.as_deref())));
                            for t in hit {
                                if t == actor {
                                    continue;
                                }
                                if let Some(c) = self.conns.get_mut(&t) {
                                    c.closing = true;
                                }
                                out.close(t, super::CLOSE_POLICY, "banned");
                            }
                        }
                        None => out.send(actor, &frame(&ev.out(r#ref.as_deref()))),
                    }
                }
            }
        }
    }

    /// Takes `conn` out of room `idx` (its copy of the event already sent).
    fn expel(&mut self, conn: ConnId, idx: u32, now: Now, out: &mut dyn Outbox) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.rooms.contains(&idx) {
            return;
        }
        c.rooms.retain(|i| *i != idx);
        let nick = c.nick;
        self.remove_member(idx, conn, &nick, now, out);
    }

    /// `mute`: stored first, then it holds (a restart keeps it until it
    /// ends). Muting the same nick and account again replaces the end, so
    /// a mute of 1 s lifts a longer one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mute(
        &mut self,
        conn: ConnId,
        room: &str,
        nick: &str,
        duration_s: u64,
        reason: Option<String>,
        r: Option<&str>,
        now: Now,
    ) -> Result<(), ChatError> {
        let by = self.moderator_name(conn, room)?;
        let target = self.holder(nick);
        self.check_outranks(conn, room, target, nick)?;
        let key = nick.to_ascii_lowercase();
        let account = target.and_then(|t| self.account_of(t)).unwrap_or_default();
        let until = now.wall_ms.saturating_add(duration_s.saturating_mul(1000));
        let mute = Mute {
            room: room.to_string(),
            nick: key,
            account,
            until,
        };
        self.records.push(Record::Moderation(ModRecord::Mute {
            room: room.into(),
            nick: mute.nick.as_str().into(),
            account: mute.account.as_str().into(),
            until,
            now: now.wall_ms,
        }));
        let reason = reason.unwrap_or_default();
        self.audit(
            now,
            &by,
            "mute",
            room,
            nick,
            &format!("until={until} reason={reason}"),
        );
        self.moder.pending.push((
            now,
            ModApply::Mute {
                actor: conn,
                r#ref: r.map(Box::from),
                by,
                mute,
                target_nick: nick.to_string(),
                reason,
            },
        ));
        Ok(())
    }

    /// `slow`: stored first, then it holds, across restarts too.
    pub(super) fn slow(
        &mut self,
        conn: ConnId,
        room: &str,
        interval_s: u64,
        r: Option<&str>,
        now: Now,
    ) -> Result<(), ChatError> {
        let by = self.moderator_name(conn, room)?;
        self.records.push(Record::Moderation(ModRecord::Slow {
            room: room.into(),
            interval_ms: interval_s * 1000,
        }));
        self.audit(
            now,
            &by,
            "slow",
            room,
            "",
            &format!("interval={interval_s}"),
        );
        self.moder.pending.push((
            now,
            ModApply::Slow {
                actor: conn,
                r#ref: r.map(Box::from),
                by,
                room: room.to_string(),
                interval_s,
            },
        ));
        Ok(())
    }

    /// A `message` to `room` (joined): refused while muted, or sooner than
    /// the room's slow mode allows (its moderators are exempt from it).
    pub(super) fn check_post(
        &mut self,
        conn: ConnId,
        room: &str,
        now: Now,
    ) -> Result<(), ChatError> {
        if let Some(until) = self.muted_until(conn, room, now) {
            return Err(ChatError::Muted { until });
        }
        let nick = self
            .conns
            .nick(conn)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let account = self.account_of(conn);
        let Some(&interval) = self.moder.slow.get(room) else {
            return Ok(());
        };
        if self.moderator_name(conn, room).is_ok() {
            return Ok(());
        }
        let key = (room.to_string(), account.unwrap_or(nick));
        if let Some(&last) = self.moder.last_post.get(&key)
            && now.mono_ms < last + interval
        {
            return Err(ChatError::SlowMode {
                retry_after_s: (last + interval - now.mono_ms).div_ceil(1000),
            });
        }
        self.moder.last_post.insert(key, now.mono_ms);
        Ok(())
    }

    /// When a mute of `conn` in `room` ends, if one holds it.
    pub(super) fn muted_until(&self, conn: ConnId, room: &str, now: Now) -> Option<u64> {
        let nick = self
            .conns
            .nick(conn)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let account = self.account_of(conn);
        self.moder
            .mutes
            .iter()
            .find(|m| {
                m.until > now.wall_ms
                    && m.room == room
                    && (m.nick == nick
                        || (!m.account.is_empty() && account.as_deref() == Some(&*m.account)))
            })
            .map(|m| m.until)
    }

    /// Forgets slow-mode marks that no longer hold anyone back, and mutes
    /// that ran out.
    pub(super) fn expire_moderation(&mut self, now: Now) {
        let slow = &self.moder.slow;
        self.moder
            .last_post
            .retain(|(room, _), last| slow.get(room).is_some_and(|iv| now.mono_ms < *last + iv));
        self.moder.mutes.retain(|m| m.until > now.wall_ms);
    }

    pub(super) fn mod_failed(&mut self, out: &mut dyn Outbox) {
        for (_, p) in std::mem::take(&mut self.moder.pending) {
            let (actor, r) = match p {
                ModApply::Kick { actor, r#ref, .. }
                | ModApply::Ban { actor, r#ref, .. }
                | ModApply::Unban { actor, r#ref, .. }
                | ModApply::Moderator { actor, r#ref, .. }
                | ModApply::Topic { actor, r#ref, .. }
                | ModApply::Delete { actor, r#ref, .. }
                | ModApply::Mute { actor, r#ref, .. }
                | ModApply::Slow { actor, r#ref, .. } => (actor, r#ref),
            };
            send_error(out, actor, r.as_deref(), &ChatError::StorageFailed);
        }
    }
}
