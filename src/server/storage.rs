//! The server's side of the store: opens it, loads the chat from it at
//! start, and commits each loop turn's records in one transaction before
//! the turn's output is flushed (see docs/storage.md).

use std::io;
use std::rc::Rc;
use std::time::Instant;

use log::{info, warn};

use super::{Config, Server};
use crate::chat::accounts::{AccountRecord, RestoredAccount};
use crate::chat::durable::{Record, Restored};
use crate::chat::edits::EditRecord;
use crate::chat::moderation::{Ban, ModRecord, Mute};
use crate::chat::room::Msg;
use crate::chat::uploads::UploadRecord;
use crate::chat::{ArchiveError, Chat, Now};
use crate::store::memory::MemoryStore;
use crate::store::sqlite::{Options, SqliteStore};
use crate::store::{Limits, Op, Store};

/// Records kept for the next turn after a failed commit (rooms, touches and
/// deletions; failed messages are refused, never retried). Past this many
/// the oldest touches are dropped: only a retention start gets less exact.
const MAX_RETRY: usize = 100_000;

pub(super) struct Storage {
    store: Box<dyn Store>,
    /// What a failed commit left to try again, in order.
    retry: Vec<Record>,
    /// The last commit failed (logged once, and again on recovery).
    failing: bool,
    commits: u64,
    commit_us_total: u64,
    commit_us_max: u64,
    /// CPU time of the loop's thread in commits (with a clock from
    /// [`Server::with_cpu_clock`]): unlike the wall time, it does not grow
    /// when other processes take the machine.
    commit_cpu_us_total: u64,
    /// WAL checkpoints run between turns, and the longest one.
    checkpoints: u64,
    checkpoint_us_max: u64,
    /// The last checkpoint failed (logged once, and again on recovery).
    checkpoint_failing: bool,
}

fn op<'a>(r: &'a Record, blobs: &'a super::upload::Committing) -> Op<'a> {
    match r {
        Record::Upload(u) => match u {
            UploadRecord::Put {
                id,
                owner,
                mime,
                created,
            } => Op::PutUpload {
                id: *id,
                owner,
                mime,
                data: blobs.data(*id),
                created: *created,
            },
            UploadRecord::Delete { id } => Op::DeleteUpload { id: *id },
        },
        Record::Room {
            name,
            epoch,
            next_id,
            last_active,
        } => Op::PutRoom {
            name,
            epoch,
            next_id: *next_id,
            last_active: *last_active,
        },
        Record::Message { room, msg } => Op::PutMessage {
            room,
            id: msg.id,
            from: &msg.from,
            text: &msg.text,
            ts: msg.ts,
            author: &msg.author,
            reply: msg
                .extra
                .as_ref()
                .and_then(|x| x.reply.as_ref())
                .map(|q| (q.id, &*q.from, &*q.text)),
            image: msg.image.map(|i| i.get()),
        },
        Record::Edit(EditRecord::React {
            room,
            id,
            emoji,
            who,
            on,
        }) => Op::React {
            room,
            id: *id,
            emoji,
            who,
            on: *on,
        },
        Record::Edit(EditRecord::Edit {
            room,
            id,
            text,
            edited,
            excerpt,
        }) => Op::EditMessage {
            room,
            id: *id,
            text,
            edited: *edited,
            excerpt,
        },
        Record::Touch { room, last_active } => Op::Touch {
            room,
            last_active: *last_active,
        },
        Record::Forget { room } => Op::DeleteRoom { room },
        Record::Read { room, account, id } => Op::PutRead {
            room,
            account,
            id: *id,
        },
        Record::Account(a) => match a {
            AccountRecord::Put {
                name,
                hash,
                op,
                created,
            } => Op::PutAccount {
                name,
                hash,
                op: *op,
                created: *created,
            },
            AccountRecord::SetPassword { name, hash } => Op::SetPassword { name, hash },
            AccountRecord::PutSession {
                token_hash,
                name,
                created,
            } => Op::PutSession {
                token_hash,
                name,
                created: *created,
            },
            AccountRecord::DeleteSession { token_hash } => Op::DeleteSession { token_hash },
            AccountRecord::DeleteSessions { name } => Op::DeleteSessions { name },
        },
        Record::Moderation(m) => match m {
            ModRecord::Ban(b, by, created) => Op::PutBan {
                room: &b.room,
                nick: &b.nick,
                account: &b.account,
                ip: b.ip_text(),
                until: b.until,
                by,
                reason: &b.reason,
                created: *created,
            },
            ModRecord::Unban { room, nick } => Op::DeleteBan { room, nick },
            ModRecord::Topic { room, topic } => Op::PutTopic { room, topic },
            ModRecord::Creator { room, account } => Op::PutCreator { room, account },
            ModRecord::Mute {
                room,
                nick,
                account,
                until,
                now,
            } => Op::PutMute {
                room,
                nick,
                account,
                until: *until,
                now: *now,
            },
            ModRecord::Slow { room, interval_ms } => Op::PutSlow {
                room,
                interval_ms: *interval_ms,
            },
            ModRecord::Delete { room, id } => Op::DeleteMessage { room, id: *id },
            ModRecord::Moderator { room, account, on } => Op::PutModerator {
                room,
                account,
                on: *on,
            },
            ModRecord::Audit {
                ts,
                actor,
                action,
                room,
                target,
                detail,
            } => Op::Audit {
                ts: *ts,
                actor,
                action,
                room,
                target,
                detail,
            },
        },
    }
}

/// Loads the store's accounts and sessions into the chat.
fn load_accounts(store: &mut dyn Store, chat: &mut Chat) -> crate::store::Result<()> {
    let accounts = store
        .accounts()?
        .into_iter()
        .map(|a| RestoredAccount {
            name: a.name,
            hash: a.hash,
            op: a.op,
        })
        .collect();
    let sessions = store
        .sessions()?
        .into_iter()
        .map(|s| (s.token_hash, s.name))
        .collect();
    chat.restore_accounts(accounts, sessions);
    let bans = store
        .bans(super::wall_ms())?
        .into_iter()
        .map(|b| Ban {
            ip: b.ip.parse().ok(),
            ip_shown: b.ip,
            room: b.room,
            nick: b.nick,
            account: b.account,
            until: b.until,
            reason: b.reason,
        })
        .collect();
    chat.restore_bans(bans);
    chat.restore_moderators(store.moderators()?);
    chat.restore_topics(store.topics()?);
    let settings = store.room_settings(super::wall_ms())?;
    chat.restore_creators(settings.creators);
    let mutes = settings
        .mutes
        .into_iter()
        .map(|m| Mute {
            room: m.room,
            nick: m.nick,
            account: m.account,
            until: m.until,
        })
        .collect();
    chat.restore_mutes(mutes, settings.slow);
    chat.restore_uploads(store.uploads()?);
    chat.restore_reads(
        store
            .reads()?
            .into_iter()
            .map(|r| (r.room, r.account, r.id)),
    );
    Ok(())
}

impl Storage {
    /// Opens the store of `--data-dir` and loads `chat` from it: every room
    /// with the newest messages its `joined` answers need.
    pub fn open(cfg: &Config, chat: &mut Chat, now: Now) -> io::Result<Storage> {
        let fail = |e: crate::store::StoreError| io::Error::other(e.to_string());
        let t0 = Instant::now();
        let mut store = SqliteStore::open(
            &cfg.data_dir,
            Options {
                fsync: cfg.fsync,
                limits: Some(Limits {
                    per_room: cfg.history() as u64,
                    max_bytes: cfg.max_disk as u64,
                }),
                audit_rows: cfg.max_audit_rows,
                fault_file: cfg.fault_file.clone(),
            },
        )
        .map_err(fail)?;
        let window = chat.window();
        let rows = store.rooms().map_err(fail)?;
        let mut rooms = Vec::with_capacity(rows.len());
        let mut loaded = 0;
        for r in rows {
            let messages: Vec<Msg> = store
                .messages(&r.name, r.first_id, r.next_id, window)
                .map_err(fail)?
                .into_iter()
                .map(to_msg)
                .collect();
            loaded += messages.len();
            rooms.push(Restored {
                name: r.name,
                epoch: r.epoch,
                next_id: r.next_id,
                first_id: r.first_id,
                last_active: r.last_active,
                messages,
            });
        }
        let n = rooms.len();
        chat.restore(rooms, now);
        load_accounts(&mut store, chat).map_err(fail)?;
        info!(
            "store {}: {n} rooms, {loaded} recent messages, {} accounts loaded in {} ms",
            store.path().display(),
            chat.account_count(),
            t0.elapsed().as_millis()
        );
        Ok(Storage {
            store: Box::new(store),
            retry: Vec::new(),
            failing: false,
            commits: 0,
            commit_us_total: 0,
            commit_us_max: 0,
            commit_cpu_us_total: 0,
            checkpoints: 0,
            checkpoint_us_max: 0,
            checkpoint_failing: false,
        })
    }

    /// With --no-persist: a store in memory, for the accounts only (the
    /// chat keeps its rooms in memory itself), so that account changes go
    /// through the same commit-then-answer path.
    pub fn memory(audit_rows: u64) -> Storage {
        Storage {
            store: Box::new(
                MemoryStore::new(Limits {
                    per_room: 0,
                    max_bytes: 0,
                })
                .with_audit_rows(audit_rows),
            ),
            retry: Vec::new(),
            failing: false,
            commits: 0,
            commit_us_total: 0,
            commit_us_max: 0,
            commit_cpu_us_total: 0,
            checkpoints: 0,
            checkpoint_us_max: 0,
            checkpoint_failing: false,
        }
    }

    /// Messages `lo..hi` of `room`, for a page the chat's window lacks.
    pub fn archive(&mut self, room: &str, lo: u64, hi: u64) -> Result<Vec<Msg>, ArchiveError> {
        let limit = usize::try_from(hi.saturating_sub(lo)).unwrap_or(usize::MAX);
        match self.store.messages(room, lo, hi, limit) {
            Ok(rows) => Ok(rows.into_iter().map(to_msg).collect()),
            Err(e) => {
                warn!("store: reading history of {room}: {e}");
                Err(ArchiveError)
            }
        }
    }

    /// The newest `limit` messages of `room` matching `query` below `before`.
    pub fn search(
        &mut self,
        room: &str,
        query: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Msg>, ArchiveError> {
        match self.store.search(room, query, before, limit) {
            Ok(rows) => Ok(rows.into_iter().map(to_msg).collect()),
            Err(e) => {
                warn!("store: searching {room}: {e}");
                Err(ArchiveError)
            }
        }
    }

    /// The bytes of upload `id` (`Err` when the store cannot be read).
    pub fn upload_data(&mut self, id: u64) -> Result<Option<Vec<u8>>, ()> {
        self.store
            .upload_data(id)
            .map_err(|e| warn!("store: reading upload: {e}"))
    }

    pub fn log_stats(&self) {
        if self.commits > 0 {
            info!(
                "store: {} commits, mean {} us, max {} us, mean CPU {} us",
                self.commits,
                self.commit_us_total / self.commits,
                self.commit_us_max,
                self.commit_cpu_us_total / self.commits
            );
        }
        if self.checkpoints > 0 {
            info!(
                "store: {} checkpoints between turns, max {} us",
                self.checkpoints, self.checkpoint_us_max
            );
        }
    }
}

fn to_msg(m: crate::store::MessageRow) -> Msg {
    Msg {
        id: m.id,
        ts: m.ts,
        from: Rc::from(m.from),
        text: m.text.into_boxed_str(),
        author: Rc::from(m.author),
        extra: crate::chat::edits::extra_from_row(m.reply, m.edited, m.reactions),
        image: m.image.and_then(std::num::NonZeroU64::new),
    }
}

impl Server {
    /// The store's WAL checkpoint, when one is due, between two turns (see
    /// `Store::checkpoint`). A failed one is logged and tried again after a
    /// later commit: the WAL keeps everything meanwhile.
    pub(super) fn checkpoint_if_due(&mut self) {
        let Some(st) = self.storage.as_mut().filter(|st| st.store.checkpoint_due()) else {
            return;
        };
        let t0 = Instant::now();
        let result = st.store.checkpoint();
        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        st.checkpoints += 1;
        st.checkpoint_us_max = st.checkpoint_us_max.max(us);
        match result {
            Ok(()) if std::mem::replace(&mut st.checkpoint_failing, false) => {
                info!("store: checkpoints succeed again");
            }
            Ok(()) => {}
            Err(e) if !std::mem::replace(&mut st.checkpoint_failing, true) => {
                warn!("store: {e}");
            }
            Err(_) => {}
        }
    }

    /// Commits the turn's records in one transaction, then tells the chat:
    /// on success it keeps and sends the turn's messages; on failure it
    /// refuses them (`storage_failed`) and everyone else goes on. The next
    /// turn tries again with what is left.
    pub(super) fn commit_turn(&mut self) {
        let Some(st) = self.storage.as_mut() else {
            return;
        };
        let mut records = std::mem::take(&mut st.retry);
        records.extend(self.chat.take_records());
        if records.is_empty() {
            return;
        }
        let blobs = &self.committing;
        let ops: Vec<Op<'_>> = records.iter().map(|r| op(r, blobs)).collect();
        let cpu = self.cpu_clock.unwrap_or(|| 0);
        let (t0, cpu0) = (Instant::now(), cpu());
        let result = st.store.commit(&ops);
        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        st.commit_cpu_us_total += cpu().saturating_sub(cpu0);
        drop(ops);
        st.commits += 1;
        st.commit_us_total += us;
        st.commit_us_max = st.commit_us_max.max(us);
        self.metrics.commit.observe(us);
        match result {
            Ok(trimmed) => {
                if std::mem::replace(&mut st.failing, false) {
                    info!("store: commits succeed again");
                }
                self.uploads_committed(true);
                self.with_chat(|chat, _, out| chat.committed(out));
                for (room, first) in trimmed.rooms {
                    self.chat.trimmed(&room, first);
                }
            }
            Err(e) => {
                self.metrics.commit_failures += 1;
                if !std::mem::replace(&mut st.failing, true) {
                    warn!("store: {e}; refusing messages until a commit succeeds");
                }
                records.retain(|r| !r.is_answered());
                if records.len() > MAX_RETRY {
                    let mut excess = records.len() - MAX_RETRY;
                    records.retain(|r| {
                        let drop = excess > 0 && matches!(r, Record::Touch { .. });
                        excess -= usize::from(drop);
                        !drop
                    });
                }
                st.retry = records;
                self.uploads_committed(false);
                self.with_chat(|chat, _, out| chat.failed(out));
            }
        }
    }
}
