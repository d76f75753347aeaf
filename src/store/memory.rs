//! A [`Store`] in memory, with the same contract as the SQLite one: for
//! tests, and with `fail_commits` as a fault-injection seam.

use std::collections::{BTreeMap, VecDeque};

use super::{
    AccountRow, AuditRow, BanRow, Limits, MessageRow, MuteRow, Op, ReadRow, Result, RoomRow,
    RoomSettings, SessionRow, Store, StoreError, Trimmed, UploadRow, row_bytes,
};

struct MemRoom {
    row: RoomRow,
    /// (posting sequence, message), ids contiguous and increasing.
    msgs: VecDeque<(u64, MessageRow)>,
    /// Read positions by account.
    reads: BTreeMap<String, u64>,
}

pub struct MemoryStore {
    rooms: BTreeMap<String, MemRoom>,
    seq: u64,
    bytes: u64,
    limits: Limits,
    /// Accounts by lowercase name.
    accounts: BTreeMap<String, AccountRow>,
    /// Sessions in creation order.
    sessions: Vec<SessionRow>,
    bans: Vec<BanRow>,
    /// Oldest first; a ring, so that dropping the oldest past
    /// `audit_rows` moves nothing.
    audit: std::collections::VecDeque<AuditRow>,
    /// As [`super::sqlite::Options::audit_rows`] (0: every row).
    audit_rows: usize,
    moderators: std::collections::BTreeSet<(String, String)>,
    topics: BTreeMap<String, String>,
    creators: BTreeMap<String, String>,
    /// (room, nick, account) -> until.
    mutes: BTreeMap<(String, String, String), u64>,
    slow: BTreeMap<String, u64>,
    /// Uploaded images with their bytes (with --no-persist, the only copy).
    uploads: BTreeMap<u64, (UploadRow, Vec<u8>)>,
    /// While set, every commit fails (and changes nothing).
    pub fail_commits: bool,
}

impl MemoryStore {
    /// Keeps the newest `n` audit rows (0: every row).
    pub fn with_audit_rows(mut self, n: u64) -> MemoryStore {
        self.audit_rows = usize::try_from(n).unwrap_or(usize::MAX);
        self
    }

    pub fn new(limits: Limits) -> MemoryStore {
        MemoryStore {
            rooms: BTreeMap::new(),
            seq: 0,
            bytes: 0,
            limits,
            accounts: BTreeMap::new(),
            sessions: Vec::new(),
            bans: Vec::new(),
            audit: std::collections::VecDeque::new(),
            audit_rows: 0,
            moderators: Default::default(),
            topics: BTreeMap::new(),
            creators: BTreeMap::new(),
            mutes: BTreeMap::new(),
            slow: BTreeMap::new(),
            uploads: BTreeMap::new(),
            fail_commits: false,
        }
    }

    fn drop_oldest(&mut self, room: &str) -> Option<u64> {
        let r = self.rooms.get_mut(room)?;
        let (_, m) = r.msgs.pop_front()?;
        self.bytes -= row_bytes(&m.from, &m.text);
        r.row.first_id = r.msgs.front().map_or(r.row.next_id, |(_, m)| m.id);
        Some(r.row.first_id)
    }
}

/// Message `id` of `r`, unless it is not kept or is a tombstone.
fn live(r: &mut MemRoom, id: u64) -> Option<&mut MessageRow> {
    r.msgs
        .iter_mut()
        .map(|(_, m)| m)
        .find(|m| m.id == id && !m.text.is_empty())
}

/// The quotes of the messages of `r` answering `id` become `excerpt`.
fn requote(r: &mut MemRoom, id: u64, excerpt: &str) {
    for (_, m) in r.msgs.iter_mut() {
        if let Some(q) = m.reply.as_mut().filter(|q| q.0 == id) {
            q.2 = excerpt.to_string();
        }
    }
}

impl Store for MemoryStore {
    fn uploads(&mut self) -> Result<Vec<UploadRow>> {
        Ok(self.uploads.values().map(|(r, _)| r.clone()).collect())
    }

    fn upload_data(&mut self, id: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.uploads.get(&id).map(|(_, d)| d.clone()))
    }

    fn reads(&mut self) -> Result<Vec<ReadRow>> {
        Ok(self
            .rooms
            .iter()
            .flat_map(|(name, r)| {
                r.reads.iter().map(|(a, &id)| ReadRow {
                    room: name.clone(),
                    account: a.clone(),
                    id,
                })
            })
            .collect())
    }

    fn accounts(&mut self) -> Result<Vec<AccountRow>> {
        Ok(self.accounts.values().cloned().collect())
    }

    fn sessions(&mut self) -> Result<Vec<SessionRow>> {
        Ok(self.sessions.clone())
    }

    fn topics(&mut self) -> Result<Vec<(String, String)>> {
        Ok(self.topics.clone().into_iter().collect())
    }

    fn room_settings(&mut self, now_ms: u64) -> Result<RoomSettings> {
        self.mutes.retain(|_, until| *until > now_ms);
        Ok(RoomSettings {
            creators: self.creators.clone().into_iter().collect(),
            mutes: self
                .mutes
                .iter()
                .map(|((room, nick, account), until)| MuteRow {
                    room: room.clone(),
                    nick: nick.clone(),
                    account: account.clone(),
                    until: *until,
                })
                .collect(),
            slow: self.slow.clone().into_iter().collect(),
        })
    }

    fn moderators(&mut self) -> Result<Vec<(String, String)>> {
        Ok(self.moderators.iter().cloned().collect())
    }

    fn bans(&mut self, now_ms: u64) -> Result<Vec<BanRow>> {
        Ok(self
            .bans
            .iter()
            .filter(|b| b.until == 0 || b.until > now_ms)
            .cloned()
            .collect())
    }

    fn audit(&mut self, limit: usize) -> Result<Vec<AuditRow>> {
        Ok(self.audit.iter().rev().take(limit).cloned().collect())
    }

    fn rooms(&mut self) -> Result<Vec<RoomRow>> {
        Ok(self.rooms.values().map(|r| r.row.clone()).collect())
    }

    fn messages(
        &mut self,
        room: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<MessageRow>> {
        let Some(r) = self.rooms.get(room) else {
            return Ok(Vec::new());
        };
        let mut v: Vec<MessageRow> = r
            .msgs
            .iter()
            .rev()
            .map(|(_, m)| m)
            .filter(|m| from <= m.id && m.id < to)
            .take(limit)
            .cloned()
            .collect();
        v.reverse();
        Ok(v)
    }

    fn search(
        &mut self,
        room: &str,
        query: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<MessageRow>> {
        let Some(r) = self.rooms.get(room) else {
            return Ok(Vec::new());
        };
        let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
        Ok(r.msgs
            .iter()
            .rev()
            .map(|(_, m)| m)
            .filter(|m| m.id < before)
            .filter(|m| {
                let t = m.text.to_lowercase();
                words.iter().all(|w| {
                    t.split(|c: char| !c.is_alphanumeric())
                        .any(|tok| tok.starts_with(w.as_str()))
                })
            })
            .take(limit)
            .map(|m| MessageRow {
                reactions: Vec::new(),
                ..m.clone()
            })
            .collect())
    }

    fn commit(&mut self, ops: &[Op<'_>]) -> Result<Trimmed> {
        if self.fail_commits {
            return Err(StoreError::Io("injected fault: commit refused".into()));
        }
        let mut touched: Vec<String> = Vec::new();
        // All or nothing: the account tables change only if every op applies.
        let mut accounts = self.accounts.clone();
        let mut sessions = self.sessions.clone();
        // Ban changes in order, applied at the end: (room, nick) goes, and
        // with a row, that row comes (a new ban replaces the nick's).
        let mut bans: Vec<(&str, &str, Option<BanRow>)> = Vec::new();
        let mut audit = Vec::new();
        let mut moderators = self.moderators.clone();
        let mut topics = self.topics.clone();
        let mut creators = self.creators.clone();
        let mut mutes = self.mutes.clone();
        let mut slow = self.slow.clone();
        // Upload changes, applied at the end (all or nothing).
        let mut upload_ops: Vec<&Op<'_>> = Vec::new();
        for op in ops {
            match *op {
                Op::PutRoom {
                    name,
                    epoch,
                    next_id,
                    last_active,
                } => {
                    if let Some(old) = self.rooms.remove(name) {
                        self.bytes -= old
                            .msgs
                            .iter()
                            .map(|(_, m)| row_bytes(&m.from, &m.text))
                            .sum::<u64>();
                    }
                    let row = RoomRow {
                        name: name.to_string(),
                        epoch: epoch.to_string(),
                        next_id,
                        first_id: next_id,
                        last_active,
                    };
                    self.rooms.insert(
                        name.to_string(),
                        MemRoom {
                            row,
                            msgs: VecDeque::new(),
                            reads: BTreeMap::new(),
                        },
                    );
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
                    if image.is_some() {
                        upload_ops.push(op);
                    }
                    let Some(r) = self.rooms.get_mut(room) else {
                        return Err(StoreError::Io(format!("message for unknown room {room}")));
                    };
                    self.seq += 1;
                    self.bytes += row_bytes(from, text);
                    if r.msgs.is_empty() {
                        r.row.first_id = id;
                    }
                    r.msgs.push_back((
                        self.seq,
                        MessageRow {
                            id,
                            from: from.to_string(),
                            text: text.to_string(),
                            ts,
                            author: author.to_string(),
                            reply: reply.map(|(i, f, t)| (i, f.to_string(), t.to_string())),
                            edited: 0,
                            reactions: Vec::new(),
                            image,
                        },
                    ));
                    r.row.next_id = r.row.next_id.max(id + 1);
                    r.row.last_active = r.row.last_active.max(ts);
                    touched.push(room.to_string());
                }
                Op::PutRead { room, account, id } => {
                    if let Some(r) = self.rooms.get_mut(room) {
                        let e = r.reads.entry(account.to_string()).or_insert(0);
                        *e = (*e).max(id);
                    }
                }
                Op::Touch { room, last_active } => {
                    if let Some(r) = self.rooms.get_mut(room) {
                        r.row.last_active = last_active;
                    }
                }
                Op::DeleteRoom { room } => {
                    if let Some(old) = self.rooms.remove(room) {
                        self.bytes -= old
                            .msgs
                            .iter()
                            .map(|(_, m)| row_bytes(&m.from, &m.text))
                            .sum::<u64>();
                    }
                }
                Op::PutAccount {
                    name,
                    hash,
                    op,
                    created,
                } => {
                    let key = name.to_ascii_lowercase();
                    sessions.retain(|s| s.name.to_ascii_lowercase() != key);
                    accounts.insert(
                        key,
                        AccountRow {
                            name: name.to_string(),
                            hash: hash.to_string(),
                            op,
                            created,
                        },
                    );
                }
                Op::SetPassword { name, hash } => {
                    match accounts.get_mut(&name.to_ascii_lowercase()) {
                        Some(a) => a.hash = hash.to_string(),
                        None => return Err(StoreError::Io(format!("no account {name}"))),
                    }
                }
                Op::PutSession {
                    token_hash,
                    name,
                    created,
                } => {
                    if !accounts.contains_key(&name.to_ascii_lowercase()) {
                        return Err(StoreError::Io(format!("session for no account {name}")));
                    }
                    sessions.push(SessionRow {
                        token_hash: token_hash.to_vec(),
                        name: name.to_string(),
                        created,
                    });
                }
                Op::DeleteSession { token_hash } => {
                    sessions.retain(|s| s.token_hash != token_hash);
                }
                Op::DeleteSessions { name } => {
                    let key = name.to_ascii_lowercase();
                    sessions.retain(|s| s.name.to_ascii_lowercase() != key);
                }
                Op::PutBan {
                    room,
                    nick,
                    account,
                    ip,
                    until,
                    reason,
                    ..
                } => {
                    // One ban per nick and room: a new one replaces it.
                    bans.push((
                        room,
                        nick,
                        Some(BanRow {
                            room: room.into(),
                            nick: nick.into(),
                            account: account.into(),
                            ip: ip.into(),
                            until,
                            reason: reason.into(),
                        }),
                    ));
                }
                Op::DeleteBan { room, nick } => {
                    bans.push((room, nick, None));
                }
                Op::DeleteMessage { room, id } => {
                    if let Some(r) = self.rooms.get_mut(room)
                        && let Some((_, m)) = r.msgs.iter_mut().find(|(_, m)| m.id == id)
                    {
                        self.bytes -= m.text.len() as u64;
                        m.text.clear();
                        m.reply = None;
                        m.edited = 0;
                        m.reactions.clear();
                        m.image = None;
                        requote(r, id, "");
                    }
                }
                Op::EditMessage {
                    room,
                    id,
                    text,
                    edited,
                    excerpt,
                } => {
                    if let Some(r) = self.rooms.get_mut(room)
                        && let Some(m) = live(r, id)
                    {
                        self.bytes = self.bytes - m.text.len() as u64 + text.len() as u64;
                        m.text = text.to_string();
                        m.edited = edited;
                        requote(r, id, excerpt);
                    }
                }
                Op::React {
                    room,
                    id,
                    emoji,
                    who,
                    on,
                } => {
                    if let Some(r) = self.rooms.get_mut(room)
                        && let Some(m) = live(r, id)
                    {
                        let at = m
                            .reactions
                            .iter()
                            .position(|(e, w)| e == emoji && w.eq_ignore_ascii_case(who));
                        match (on, at) {
                            (true, None) => m.reactions.push((emoji.to_string(), who.to_string())),
                            (false, Some(i)) => {
                                m.reactions.remove(i);
                            }
                            _ => {}
                        }
                    }
                }
                Op::PutUpload { .. } | Op::DeleteUpload { .. } => upload_ops.push(op),
                Op::PutTopic { room, topic } => {
                    if topic.is_empty() {
                        topics.remove(room);
                    } else {
                        topics.insert(room.to_string(), topic.to_string());
                    }
                }
                Op::PutModerator { room, account, on } => {
                    let k = (room.to_string(), account.to_string());
                    if on {
                        moderators.insert(k);
                    } else {
                        moderators.remove(&k);
                    }
                }
                Op::PutCreator { room, account } => {
                    creators
                        .entry(room.to_string())
                        .or_insert_with(|| account.to_string());
                }
                Op::PutMute {
                    room,
                    nick,
                    account,
                    until,
                    now,
                } => {
                    mutes.retain(|_, u| *u > now);
                    mutes.insert((room.into(), nick.into(), account.into()), until);
                }
                Op::PutSlow { room, interval_ms } => {
                    if interval_ms == 0 {
                        slow.remove(room);
                    } else {
                        slow.insert(room.to_string(), interval_ms);
                    }
                }
                Op::Audit {
                    ts,
                    actor,
                    action,
                    room,
                    target,
                    detail,
                } => audit.push(AuditRow {
                    ts,
                    actor: actor.into(),
                    action: action.into(),
                    room: room.into(),
                    target: target.into(),
                    detail: detail.into(),
                }),
            }
        }
        for op in upload_ops {
            match *op {
                Op::PutUpload {
                    id,
                    owner,
                    mime,
                    data,
                    created,
                } => {
                    let row = UploadRow {
                        id,
                        owner: owner.to_string(),
                        mime: mime.to_string(),
                        bytes: data.len() as u64,
                        created,
                        attached: None,
                    };
                    self.uploads.insert(id, (row, data.to_vec()));
                }
                Op::DeleteUpload { id } => {
                    self.uploads.remove(&id);
                }
                Op::PutMessage {
                    room,
                    id,
                    image: Some(image),
                    ..
                } => {
                    if let Some((row, _)) = self.uploads.get_mut(&image) {
                        row.attached = Some((room.to_string(), id));
                    }
                }
                _ => {}
            }
        }
        self.accounts = accounts;
        self.sessions = sessions;
        for (room, nick, row) in bans {
            self.bans.retain(|b| !(b.room == room && b.nick == nick));
            self.bans.extend(row);
        }
        self.moderators = moderators;
        self.topics = topics;
        self.creators = creators;
        self.mutes = mutes;
        self.slow = slow;
        self.audit.extend(audit);
        while self.audit_rows > 0 && self.audit.len() > self.audit_rows {
            self.audit.pop_front();
        }
        let mut trimmed: BTreeMap<String, u64> = BTreeMap::new();
        touched.sort();
        touched.dedup();
        for name in touched {
            while self
                .rooms
                .get(&name)
                .is_some_and(|r| r.msgs.len() as u64 > self.limits.per_room)
            {
                if let Some(first) = self.drop_oldest(&name) {
                    trimmed.insert(name.clone(), first);
                }
            }
        }
        while self.limits.max_bytes > 0 && self.bytes > self.limits.max_bytes {
            let oldest = self
                .rooms
                .iter()
                .filter_map(|(n, r)| r.msgs.front().map(|(s, _)| (*s, n.clone())))
                .min();
            let Some((_, name)) = oldest else { break };
            if let Some(first) = self.drop_oldest(&name) {
                trimmed.insert(name, first);
            }
        }
        Ok(Trimmed {
            rooms: trimmed.into_iter().collect(),
        })
    }
}
