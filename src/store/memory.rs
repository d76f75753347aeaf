//! A [`Store`] in memory, with the same contract as the SQLite one: for
//! tests, and with `fail_commits` as a fault-injection seam.

use std::collections::{BTreeMap, VecDeque};

use super::{
    AccountRow, AuditRow, BanRow, Limits, MessageRow, Op, ReadRow, Result, RoomRow, SessionRow,
    Store, StoreError, Trimmed, row_bytes,
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
    audit: Vec<AuditRow>,
    moderators: std::collections::BTreeSet<(String, String)>,
    topics: BTreeMap<String, String>,
    /// While set, every commit fails (and changes nothing).
    pub fail_commits: bool,
}

impl MemoryStore {
    pub fn new(limits: Limits) -> MemoryStore {
        MemoryStore {
            rooms: BTreeMap::new(),
            seq: 0,
            bytes: 0,
            limits,
            accounts: BTreeMap::new(),
            sessions: Vec::new(),
            bans: Vec::new(),
            audit: Vec::new(),
            moderators: Default::default(),
            topics: BTreeMap::new(),
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

impl Store for MemoryStore {
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
            .cloned()
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
        let (mut bans, mut audit) = (Vec::new(), Vec::new());
        let mut moderators = self.moderators.clone();
        let mut topics = self.topics.clone();
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
                } => {
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
                } => bans.push(BanRow {
                    room: room.into(),
                    nick: nick.into(),
                    account: account.into(),
                    ip: ip.into(),
                    until,
                    reason: reason.into(),
                }),
                Op::DeleteMessage { room, id } => {
                    if let Some(r) = self.rooms.get_mut(room)
                        && let Some((_, m)) = r.msgs.iter_mut().find(|(_, m)| m.id == id)
                    {
                        self.bytes -= m.text.len() as u64;
                        m.text.clear();
                    }
                }
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
        self.accounts = accounts;
        self.sessions = sessions;
        self.bans.extend(bans);
        self.moderators = moderators;
        self.topics = topics;
        self.audit.extend(audit);
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
