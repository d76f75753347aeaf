//! Accounts and sessions, sans-IO like the rest of the chat: it decides,
//! the server hashes and stores.
//!
//! - Passwords are never hashed here: a `register`, `login` or `passwd`
//!   becomes an [`AuthJob`] the server runs on a worker thread (Argon2id is
//!   slow on purpose); its [`AuthDone`] comes back through
//!   [`Chat::auth_done`]. At most `ChatConfig::max_auth_jobs` run at once;
//!   past that a request is answered `busy`.
//! - Whatever changes the accounts is an [`AccountRecord`] committed with the
//!   turn like a message, and answered only once committed
//!   ([`Chat::committed`]); a failed commit answers `storage_failed` and
//!   changes nothing.
//! - Session tokens are 32 random bytes from the worker; the chat keeps,
//!   and the store holds, only their BLAKE2b-256 hash. A token login is a
//!   hash and a lookup, done at once.
//! - Failed logins count per address and per account: past
//!   [`FREE_FAILURES`], each further failure locks that key for twice as
//!   long as the last (1 s, 2 s, … up to [`MAX_LOCK_MS`]), and a login then
//!   is `login_limited` with the seconds to wait.

use std::collections::{HashMap, HashSet};

use blake2::{Blake2b, Digest, digest::consts::U32};

use super::nick::Nick;
use super::protocol::{ChatError, Credentials, Out, frame};
use super::{AddrKey, Chat, ConnId, Limit, Now, Outbox, durable::Record, send_error};

/// Failed logins per key before they lock it.
pub const FREE_FAILURES: u32 = 5;
/// The first lock; each further failure doubles it.
pub const FIRST_LOCK_MS: u64 = 1000;
/// The longest lock.
pub const MAX_LOCK_MS: u64 = 15 * 60 * 1000;
/// A key's failures are forgotten this long after its last one.
const FORGET_FAILURES_MS: u64 = 60 * 60 * 1000;
/// Failure entries kept at most (the stalest go first past it).
const MAX_FAILURE_KEYS: usize = 100_000;
/// Sessions per account; a new login past it ends the oldest.
pub const MAX_SESSIONS: usize = 32;
/// The window of `--registrations-per-hour`.
pub const REGISTRATION_WINDOW_MS: u64 = 60 * 60 * 1000;

/// A change to store.
#[derive(Clone, Debug)]
pub enum AccountRecord {
    Put {
        name: Box<str>,
        hash: Box<str>,
        op: bool,
        created: u64,
    },
    SetPassword {
        name: Box<str>,
        hash: Box<str>,
    },
    PutSession {
        token_hash: [u8; 32],
        name: Box<str>,
        created: u64,
    },
    DeleteSession {
        token_hash: [u8; 32],
    },
    DeleteSessions {
        name: Box<str>,
    },
}

/// Work for the server's hashing thread.
#[derive(Debug)]
pub struct AuthJob {
    pub id: u64,
    pub work: Work,
}

#[derive(Debug)]
pub enum Work {
    /// Hash a new password (and make a session token).
    Hash { password: String },
    /// Check `password` against `hash` (an Argon2id PHC string); when it
    /// matches, hash `new_password` if given, and make a session token.
    Verify {
        hash: String,
        password: String,
        new_password: Option<String>,
    },
}

/// What the hashing thread found.
#[derive(Debug)]
pub struct AuthDone {
    pub id: u64,
    /// The password matched (always true for `Hash`); false too when the
    /// job could not run (the server answers it `busy`).
    pub ok: bool,
    /// The job could not run at all (queue full, worker gone).
    pub refused: bool,
    /// The new PHC string, for `Hash` and for `Verify` with `new_password`.
    pub hash: Option<String>,
    /// A fresh random session token.
    pub token: [u8; 32],
}

impl AuthDone {
    /// The answer for a job the server could not hand to its worker.
    pub fn refused(id: u64) -> AuthDone {
        AuthDone {
            id,
            ok: false,
            refused: true,
            hash: None,
            token: [0; 32],
        }
    }
}

/// A logged-in connection's session.
#[derive(Debug)]
struct Auth {
    /// The account's key (lowercase name).
    pub key: Box<str>,
    pub token_hash: [u8; 32],
}

struct Account {
    name: Box<str>,
    hash: String,
    op: bool,
    /// Token hashes, oldest first.
    sessions: Vec<[u8; 32]>,
}

enum JobKind {
    Register { name: String, for_self: bool },
    Login { key: String },
    Passwd { key: String },
}

struct Job {
    conn: ConnId,
    r#ref: Option<Box<str>>,
    kind: JobKind,
    addr: Option<AddrKey>,
}

/// What a commit makes true, and whom it answers.
enum Apply {
    Register {
        conn: ConnId,
        r#ref: Option<Box<str>>,
        name: String,
        hash: String,
        token: Option<[u8; 32]>,
    },
    Login {
        conn: ConnId,
        r#ref: Option<Box<str>>,
        key: String,
        token: [u8; 32],
        ended: Vec<[u8; 32]>,
    },
    Logout {
        conn: ConnId,
        r#ref: Option<Box<str>>,
        key: String,
        all: bool,
    },
    Passwd {
        conn: ConnId,
        r#ref: Option<Box<str>>,
        key: String,
        hash: String,
        token: [u8; 32],
    },
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last_ms: u64,
    locked_until: u64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum FailKey {
    Addr(AddrKey),
    Account(String),
}

#[derive(Default)]
pub(super) struct Accounts {
    by_key: HashMap<String, Account>,
    /// Logged-in connections (kept out of `Conn`, which idle guests fill
    /// by the thousand).
    auth: HashMap<ConnId, Auth>,
    /// Account key -> its logged-in connections (the keys of `auth`, by
    /// account): a DM, a read position or a role change reaches an
    /// account's connections without a pass over every logged-in one.
    by_account: HashMap<Box<str>, Vec<ConnId>>,
    /// Token hash -> account key.
    sessions: HashMap<[u8; 32], String>,
    /// Names being registered (hash running or commit pending).
    reserved: HashSet<String>,
    jobs: HashMap<u64, Job>,
    next_job: u64,
    queued: Vec<AuthJob>,
    pending: Vec<Apply>,
    failures: HashMap<FailKey, Failures>,
    /// Address -> (registrations started, monotonic ms the window began).
    /// An entry needs a registration started, and those are capped by
    /// `max_accounts` (and the window forgets them), so this stays small.
    registrations: HashMap<AddrKey, (u32, u64)>,
}

impl Accounts {
    /// `conn` is logged in as `auth` (replacing what it was logged in to).
    fn auth_insert(&mut self, conn: ConnId, auth: Auth) {
        self.auth_remove(conn);
        self.by_account
            .entry(auth.key.clone())
            .or_default()
            .push(conn);
        self.auth.insert(conn, auth);
    }

    /// `conn` is logged in to nothing.
    fn auth_remove(&mut self, conn: ConnId) {
        let Some(old) = self.auth.remove(&conn) else {
            return;
        };
        if let Some(v) = self.by_account.get_mut(&old.key) {
            v.retain(|&c| c != conn);
            if v.is_empty() {
                self.by_account.remove(&old.key);
            }
        }
    }
}

/// The keys a failed password check of a job counts against.
fn job_fail_keys(addr: Option<AddrKey>, account: &str) -> Vec<FailKey> {
    let mut k = Vec::with_capacity(2);
    if let Some(a) = addr {
        k.push(FailKey::Addr(a));
    }
    k.push(FailKey::Account(account.to_string()));
    k
}

/// The BLAKE2b-256 of a session token: what is kept and stored.
pub fn token_hash(token: &[u8; 32]) -> [u8; 32] {
    Blake2b::<U32>::digest(token).into()
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An account as loaded at start.
pub struct RestoredAccount {
    pub name: String,
    pub hash: String,
    pub op: bool,
}

impl Chat {
    /// Loads the stored accounts and sessions (before any connection).
    pub fn restore_accounts(
        &mut self,
        accounts: Vec<RestoredAccount>,
        sessions: Vec<(Vec<u8>, String)>,
    ) {
        for a in accounts {
            self.acct.by_key.insert(
                a.name.to_ascii_lowercase(),
                Account {
                    name: a.name.into_boxed_str(),
                    hash: a.hash,
                    op: a.op,
                    sessions: Vec::new(),
                },
            );
        }
        for (h, name) in sessions {
            let (Ok(h), key) = (
                <[u8; 32]>::try_from(h.as_slice()),
                name.to_ascii_lowercase(),
            ) else {
                continue;
            };
            if let Some(a) = self.acct.by_key.get_mut(&key) {
                a.sessions.push(h);
                self.acct.sessions.insert(h, key);
            }
        }
    }

    /// Accounts known.
    pub fn account_count(&self) -> usize {
        self.acct.by_key.len()
    }

    /// Hashing work for the server's worker, since the last call.
    pub fn take_auth_jobs(&mut self) -> Vec<AuthJob> {
        std::mem::take(&mut self.acct.queued)
    }

    /// Whether `nick` is registered to an account `conn` is not logged in to.
    pub(super) fn nick_reserved_from(&self, nick: &str, conn: Option<ConnId>) -> bool {
        let key = nick.to_ascii_lowercase();
        if !self.acct.by_key.contains_key(&key) {
            return false;
        }
        conn.and_then(|c| self.acct.auth.get(&c))
            .is_none_or(|a| *a.key != *key)
    }

    /// Whether any connection is logged in (else nobody is registered or
    /// moderates, and the per-member checks can be skipped).
    pub(super) fn anyone_logged_in(&self) -> bool {
        !self.acct.auth.is_empty()
    }

    pub(super) fn is_logged_in(&self, conn: ConnId) -> bool {
        self.acct.auth.contains_key(&conn)
    }

    /// The account key `conn` is logged in to.
    /// The account (key) of a session token, if the session is live.
    pub(super) fn session_account(&self, token: &[u8; 32]) -> Option<String> {
        self.acct.sessions.get(&token_hash(token)).cloned()
    }

    pub(super) fn account_of(&self, conn: ConnId) -> Option<String> {
        self.acct.auth.get(&conn).map(|a| a.key.to_string())
    }

    /// The account key `conn` is logged in to, borrowed.
    pub(super) fn account_key(&self, conn: ConnId) -> Option<&str> {
        self.acct.auth.get(&conn).map(|a| &*a.key)
    }

    /// Whether `conn` holds its account's own nick: what a client shows as
    /// a registered (verified) nick. A logged-in connection using another
    /// nick is not: that nick is nobody's account.
    pub(super) fn verified(&self, conn: ConnId) -> bool {
        match (self.account_key(conn), self.conns.nick(conn)) {
            (Some(key), Some(nick)) => nick.eq_ignore_ascii_case(key),
            _ => false,
        }
    }

    /// The address key of `conn` (None: exempt from per-address rules).
    pub(super) fn ip_of(&self, conn: ConnId) -> Option<AddrKey> {
        self.addr_of(conn)
    }

    pub(super) fn is_registered(&self, key: &str) -> bool {
        self.acct.by_key.contains_key(key)
    }

    /// Whether the account `key` is a server operator.
    pub(super) fn account_is_op(&self, key: &str) -> bool {
        self.acct.by_key.get(key).is_some_and(|a| a.op)
    }

    /// The account's name as registered, from its key (lowercase).
    pub(super) fn account_name(&self, key: &str) -> Option<&str> {
        self.acct.by_key.get(key).map(|a| &*a.name)
    }

    pub(super) fn is_op(&self, conn: ConnId) -> bool {
        self.acct
            .auth
            .get(&conn)
            .and_then(|a| self.acct.by_key.get(&*a.key))
            .is_some_and(|a| a.op)
    }

    fn addr_of(&self, conn: ConnId) -> Option<AddrKey> {
        match self.conns.get(&conn)?.limit {
            Limit::Shared(slot) => self.limits.key(slot),
            Limit::Own(_) => None,
        }
    }

    /// A job for the worker, or `busy`.
    fn start_job(
        &mut self,
        conn: ConnId,
        r: Option<&str>,
        kind: JobKind,
        work: Work,
    ) -> Result<(), ChatError> {
        if self.acct.jobs.len() >= self.cfg.max_auth_jobs {
            return Err(ChatError::Busy);
        }
        let addr = self.addr_of(conn);
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        c.busy = true;
        self.acct.next_job += 1;
        let id = self.acct.next_job;
        self.acct.jobs.insert(
            id,
            Job {
                conn,
                r#ref: r.map(Box::from),
                kind,
                addr,
            },
        );
        self.acct.queued.push(AuthJob { id, work });
        Ok(())
    }

    fn check_busy(&self, conn: ConnId) -> Result<(), ChatError> {
        if self.conns.get(&conn).is_some_and(|c| c.busy) {
            Err(ChatError::Busy)
        } else {
            Ok(())
        }
    }

    pub(super) fn register(
        &mut self,
        conn: ConnId,
        nick: Option<String>,
        password: String,
        r: Option<&str>,
        now: Now,
    ) -> Result<(), ChatError> {
        self.check_busy(conn)?;
        let Some(own) = self.conns.nick(conn).map(str::to_string) else {
            return Ok(());
        };
        let name = nick.unwrap_or_else(|| own.clone());
        let for_self = name.eq_ignore_ascii_case(&own);
        let op = self.is_op(conn);
        if !for_self && !op {
            return Err(ChatError::Forbidden);
        }
        if !self.cfg.registration_open && !op {
            return Err(ChatError::RegistrationClosed);
        }
        let key = name.to_ascii_lowercase();
        if self.acct.by_key.contains_key(&key) || self.acct.reserved.contains(&key) {
            return Err(ChatError::AlreadyRegistered);
        }
        // Operators are trusted with both budgets (they make accounts for
        // others, as `wschat account add` does).
        let addr = if op { None } else { self.addr_of(conn) };
        if !op {
            if self.acct.by_key.len() + self.acct.reserved.len() >= self.cfg.max_accounts {
                return Err(ChatError::TooManyAccounts);
            }
            self.check_registration_budget(addr, now)?;
        }
        self.start_job(
            conn,
            r,
            JobKind::Register {
                name: name.clone(),
                for_self,
            },
            Work::Hash { password },
        )?;
        self.acct.reserved.insert(key);
        if let Some(a) = addr
            && self.cfg.registrations_per_hour > 0
        {
            // Counted when started: a registration the store then refuses
            // still spent it, so failures cannot be used to probe for free.
            let e = self.acct.registrations.entry(a).or_insert((0, now.mono_ms));
            e.0 += 1;
        }
        Ok(())
    }

    /// `--registrations-per-hour`: one address starts at most that many
    /// registrations in an hour (a fixed window from its first one).
    fn check_registration_budget(
        &mut self,
        addr: Option<AddrKey>,
        now: Now,
    ) -> Result<(), ChatError> {
        let limit = self.cfg.registrations_per_hour;
        let Some(a) = addr.filter(|_| limit > 0) else {
            return Ok(());
        };
        let Some(e) = self.acct.registrations.get_mut(&a) else {
            return Ok(());
        };
        let ends = e.1.saturating_add(REGISTRATION_WINDOW_MS);
        if now.mono_ms >= ends {
            *e = (0, now.mono_ms);
            return Ok(());
        }
        if e.0 >= limit {
            return Err(ChatError::RegistrationLimited {
                retry_after_s: (ends - now.mono_ms).div_ceil(1000),
            });
        }
        Ok(())
    }

    /// The lock in force on a key, in ms from now.
    fn locked_for(&self, key: &FailKey, now: Now) -> Option<u64> {
        let f = self.acct.failures.get(key)?;
        (f.locked_until > now.mono_ms).then(|| f.locked_until - now.mono_ms)
    }

    /// A password guess may start beside others still being hashed only
    /// while every key's failures plus those guesses stay within the free
    /// ones (any of them may fail); alone, the lock decides. A
    /// lock is set when a check fails, so guesses hashed together would all
    /// escape it (32 connections, 32 guesses per lock). Past the free
    /// failures this is one guess at a time, each behind the lock of the
    /// last. Scans at most `max_auth_jobs` jobs.
    fn check_guesses_in_flight(&self, keys: &[FailKey]) -> Result<(), ChatError> {
        for key in keys {
            let failed = self.acct.failures.get(key).map_or(0, |f| f.count);
            let in_flight = self
                .acct
                .jobs
                .values()
                .filter(|j| match (&j.kind, key) {
                    (JobKind::Register { .. }, _) => false,
                    (_, FailKey::Addr(a)) => j.addr.as_ref() == Some(a),
                    (
                        JobKind::Login { key: k } | JobKind::Passwd { key: k },
                        FailKey::Account(acc),
                    ) => k == acc,
                })
                .count();
            if in_flight > 0 && failed as usize + in_flight > FREE_FAILURES as usize {
                return Err(ChatError::Busy);
            }
        }
        Ok(())
    }

    fn check_locks(&self, keys: &[FailKey], now: Now) -> Result<(), ChatError> {
        let wait = keys.iter().filter_map(|k| self.locked_for(k, now)).max();
        match wait {
            Some(ms) => Err(ChatError::LoginLimited {
                retry_after_s: ms.div_ceil(1000),
            }),
            None => Ok(()),
        }
    }

    fn fail(&mut self, keys: &[FailKey], now: Now) {
        if self.acct.failures.len() + keys.len() > MAX_FAILURE_KEYS {
            self.expire_failures(now, true);
        }
        for k in keys {
            let f = self.acct.failures.entry(k.clone()).or_insert(Failures {
                count: 0,
                last_ms: now.mono_ms,
                locked_until: 0,
            });
            f.count = f.count.saturating_add(1);
            f.last_ms = now.mono_ms;
            if f.count > FREE_FAILURES {
                let doublings = (f.count - FREE_FAILURES - 1).min(20);
                let lock = (FIRST_LOCK_MS << doublings).min(MAX_LOCK_MS);
                f.locked_until = now.mono_ms + lock;
            }
        }
    }

    /// Forgets failures older than an hour (with `all_stale`, when the
    /// table is full, the older half of them too).
    pub(super) fn expire_failures(&mut self, now: Now, full: bool) {
        let t = now.mono_ms;
        self.acct
            .registrations
            .retain(|_, (_, start)| t < start.saturating_add(REGISTRATION_WINDOW_MS));
        self.acct
            .failures
            .retain(|_, f| f.locked_until > t || t.saturating_sub(f.last_ms) < FORGET_FAILURES_MS);
        if full && self.acct.failures.len() >= MAX_FAILURE_KEYS / 2 {
            let mut lasts: Vec<u64> = self.acct.failures.values().map(|f| f.last_ms).collect();
            let mid = lasts.len() / 2;
            let (_, median, _) = lasts.select_nth_unstable(mid);
            let median = *median;
            self.acct.failures.retain(|_, f| f.last_ms > median);
        }
    }

    fn fail_keys(&self, conn: ConnId, account: Option<&str>) -> Vec<FailKey> {
        let mut keys = Vec::with_capacity(2);
        if let Some(a) = self.addr_of(conn) {
            keys.push(FailKey::Addr(a));
        }
        if let Some(a) = account {
            keys.push(FailKey::Account(a.to_ascii_lowercase()));
        }
        keys
    }

    pub(super) fn login(
        &mut self,
        conn: ConnId,
        creds: Credentials,
        r: Option<&str>,
        now: Now,
        out: &mut dyn Outbox,
    ) -> Result<(), ChatError> {
        self.check_busy(conn)?;
        match creds {
            Credentials::Token(token) => {
                let keys = self.fail_keys(conn, None);
                self.check_locks(&keys, now)?;
                let h = token_hash(&token);
                let Some(key) = self.acct.sessions.get(&h).cloned() else {
                    self.fail(&keys, now);
                    return Err(ChatError::LoginFailed);
                };
                self.check_account_ban(&key, now)?;
                // A token login changes nothing stored: answered at once.
                self.end_local_session(conn);
                self.log_in(conn, &key, h, &token, r, out);
                Ok(())
            }
            Credentials::Password { account, password } => {
                let keys = self.fail_keys(conn, Some(&account));
                self.check_locks(&keys, now)?;
                let key = account.to_ascii_lowercase();
                let Some(a) = self.acct.by_key.get(&key) else {
                    self.fail(&keys, now);
                    return Err(ChatError::LoginFailed);
                };
                self.check_account_ban(&key, now)?;
                self.check_guesses_in_flight(&keys)?;
                let hash = a.hash.clone();
                self.start_job(
                    conn,
                    r,
                    JobKind::Login { key },
                    Work::Verify {
                        hash,
                        password,
                        new_password: None,
                    },
                )
            }
        }
    }

    pub(super) fn logout(
        &mut self,
        conn: ConnId,
        all: bool,
        r: Option<&str>,
    ) -> Result<(), ChatError> {
        self.check_busy(conn)?;
        let Some(auth) = self.acct.auth.get(&conn) else {
            return Err(ChatError::NotLoggedIn);
        };
        let key = auth.key.to_string();
        let rec = if all {
            let name = self
                .acct
                .by_key
                .get(&key)
                .map_or_else(|| Box::from(key.as_str()), |a| a.name.clone());
            AccountRecord::DeleteSessions { name }
        } else {
            AccountRecord::DeleteSession {
                token_hash: auth.token_hash,
            }
        };
        self.records.push(Record::Account(rec));
        if let Some(c) = self.conns.get_mut(&conn) {
            c.busy = true;
        }
        self.acct.pending.push(Apply::Logout {
            conn,
            r#ref: r.map(Box::from),
            key,
            all,
        });
        Ok(())
    }

    pub(super) fn passwd(
        &mut self,
        conn: ConnId,
        password: String,
        new_password: String,
        r: Option<&str>,
        now: Now,
    ) -> Result<(), ChatError> {
        self.check_busy(conn)?;
        let Some(key) = self.acct.auth.get(&conn).map(|a| a.key.to_string()) else {
            return Err(ChatError::NotLoggedIn);
        };
        let keys = self.fail_keys(conn, Some(&key));
        self.check_locks(&keys, now)?;
        self.check_guesses_in_flight(&keys)?;
        let Some(a) = self.acct.by_key.get(&key) else {
            return Err(ChatError::NotLoggedIn);
        };
        let hash = a.hash.clone();
        self.start_job(
            conn,
            r,
            JobKind::Passwd { key },
            Work::Verify {
                hash,
                password,
                new_password: Some(new_password),
            },
        )
    }

    /// A hashing job finished (or could not run).
    pub fn auth_done(&mut self, done: AuthDone, now: Now, out: &mut dyn Outbox) {
        let Some(job) = self.acct.jobs.remove(&done.id) else {
            return;
        };
        if let JobKind::Register { name, .. } = &job.kind
            && (done.refused || !self.conns.contains_key(&job.conn))
        {
            self.acct.reserved.remove(&name.to_ascii_lowercase());
        }
        let Some(c) = self.conns.get_mut(&job.conn) else {
            // Gone meanwhile: nobody to answer, nothing to do.
            return;
        };
        c.busy = false;
        let conn = job.conn;
        let r = job.r#ref.as_deref();
        if done.refused {
            send_error(out, conn, r, &ChatError::Busy);
            return;
        }
        match job.kind {
            JobKind::Register { name, for_self } => {
                let Some(hash) = done.hash else {
                    self.acct.reserved.remove(&name.to_ascii_lowercase());
                    send_error(out, conn, r, &ChatError::Busy);
                    return;
                };
                self.records.push(Record::Account(AccountRecord::Put {
                    name: Box::from(name.as_str()),
                    hash: Box::from(hash.as_str()),
                    op: false,
                    created: now.wall_ms,
                }));
                if for_self {
                    self.records
                        .push(Record::Account(AccountRecord::PutSession {
                            token_hash: token_hash(&done.token),
                            name: Box::from(name.as_str()),
                            created: now.wall_ms,
                        }));
                }
                self.mark_busy(conn);
                self.acct.pending.push(Apply::Register {
                    conn,
                    r#ref: job.r#ref,
                    name,
                    hash,
                    token: for_self.then_some(done.token),
                });
            }
            JobKind::Login { key } => {
                let keys = job_fail_keys(job.addr, &key);
                let Some(a) = self.acct.by_key.get(&key).filter(|_| done.ok) else {
                    self.fail(&keys, now);
                    send_error(out, conn, r, &ChatError::LoginFailed);
                    return;
                };
                self.acct.failures.remove(&FailKey::Account(key.clone()));
                let name = a.name.clone();
                let mut ended: Vec<[u8; 32]> = Vec::new();
                if let Some(old) = self.acct.auth.get(&conn) {
                    ended.push(old.token_hash);
                }
                let live = a.sessions.iter().filter(|s| !ended.contains(s)).count();
                if live >= MAX_SESSIONS {
                    ended.extend(
                        a.sessions
                            .iter()
                            .filter(|s| !ended.contains(s))
                            .take(live + 1 - MAX_SESSIONS)
                            .copied()
                            .collect::<Vec<_>>(),
                    );
                }
                for h in &ended {
                    self.records
                        .push(Record::Account(AccountRecord::DeleteSession {
                            token_hash: *h,
                        }));
                }
                self.records
                    .push(Record::Account(AccountRecord::PutSession {
                        token_hash: token_hash(&done.token),
                        name,
                        created: now.wall_ms,
                    }));
                self.mark_busy(conn);
                self.acct.pending.push(Apply::Login {
                    conn,
                    r#ref: job.r#ref,
                    key,
                    token: done.token,
                    ended,
                });
            }
            JobKind::Passwd { key } => {
                let keys = job_fail_keys(job.addr, &key);
                let (Some(a), Some(hash)) = (
                    self.acct.by_key.get(&key).filter(|_| done.ok),
                    done.hash.filter(|_| done.ok),
                ) else {
                    self.fail(&keys, now);
                    send_error(out, conn, r, &ChatError::LoginFailed);
                    return;
                };
                let name = a.name.clone();
                self.records
                    .push(Record::Account(AccountRecord::SetPassword {
                        name: name.clone(),
                        hash: Box::from(hash.as_str()),
                    }));
                self.records
                    .push(Record::Account(AccountRecord::DeleteSessions {
                        name: name.clone(),
                    }));
                self.records
                    .push(Record::Account(AccountRecord::PutSession {
                        token_hash: token_hash(&done.token),
                        name,
                        created: now.wall_ms,
                    }));
                self.mark_busy(conn);
                self.acct.pending.push(Apply::Passwd {
                    conn,
                    r#ref: job.r#ref,
                    key,
                    hash,
                    token: done.token,
                });
            }
        }
    }

    fn mark_busy(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.busy = true;
        }
    }

    fn unbusy(&mut self, conn: ConnId) -> bool {
        match self.conns.get_mut(&conn) {
            Some(c) => {
                c.busy = false;
                true
            }
            None => false,
        }
    }

    /// Ends this connection's session in memory (a new login replaces it).
    fn end_local_session(&mut self, conn: ConnId) {
        // The session stays valid for its other holders (a token login):
        // only this connection leaves it.
        self.acct.auth_remove(conn);
    }

    /// `conn` is logged in to `key` with the session `h`: it takes the
    /// account's nick (whoever holds it without being logged in to it gets
    /// a guest nick) and hears `session`.
    fn log_in(
        &mut self,
        conn: ConnId,
        key: &str,
        h: [u8; 32],
        token: &[u8; 32],
        r: Option<&str>,
        out: &mut dyn Outbox,
    ) {
        let Some(a) = self.acct.by_key.get(key) else {
            return;
        };
        let (name, op) = (a.name.clone(), a.op);
        if !self.conns.contains_key(&conn) {
            return;
        }
        let roles = self.roles_of(conn);
        let kept_nick = self.conns.nick(conn) == Some(&*name);
        let again = self.acct.auth.get(&conn).is_some_and(|a| *a.key == *key);
        self.acct.auth_insert(
            conn,
            Auth {
                key: Box::from(key),
                token_hash: h,
            },
        );
        let tok = hex(token);
        out.send(
            conn,
            &frame(&Out::Session {
                account: &name,
                op,
                token: &tok,
                r#ref: r,
            }),
        );
        self.claim_nick(&name, Some(conn), out);
        // A nick that changed told its room-mates in its `nick` event; one
        // that stayed (a registration of one's own nick) tells them here.
        if kept_nick && self.verified(conn) {
            let f = frame(&Out::Member {
                nick: &name,
                registered: true,
            });
            for m in self.roommates(conn) {
                out.send(m, &f);
            }
        }
        self.send_role_changes(conn, &roles, out);
        if !again {
            // A new login (not a password change): the read positions.
            self.send_reads(conn, out);
        }
    }

    /// Everyone sharing at least one room with `conn`, once each.
    fn roommates(&self, conn: ConnId) -> Vec<ConnId> {
        let Some(c) = self.conns.get(&conn) else {
            return Vec::new();
        };
        let mut v: Vec<ConnId> = c
            .rooms
            .iter()
            .filter_map(|&i| self.room(i))
            .flat_map(|r| r.members.iter().copied())
            .filter(|&m| m != conn)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Gives the registered `name` to `conn` (if it is free or held by
    /// someone not logged in to it); with `conn` None, only takes it from
    /// such a holder.
    fn claim_nick(&mut self, name: &str, conn: Option<ConnId>, out: &mut dyn Outbox) {
        let key = name.to_ascii_lowercase();
        if let Some(holder) = self.holder(name)
            && Some(holder) != conn
        {
            let owner = self.acct.auth.get(&holder).is_some_and(|a| *a.key == *key);
            if owner {
                // Another connection of the account has it: keep ours.
                return;
            }
            let guest = self.guest_nick();
            self.rename(holder, guest, None, out);
        }
        if let (Some(conn), Some(n)) = (conn, Nick::new(name))
            && self.conns.nick(conn) != Some(name)
        {
            self.rename(conn, n, None, out);
        }
    }

    /// `conn` is no longer logged in: it hears `logged_out`, and loses the
    /// account's nick if it had it.
    fn log_out(&mut self, conn: ConnId, name: &str, r: Option<&str>, out: &mut dyn Outbox) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let had = c.nick.as_str().eq_ignore_ascii_case(name);
        let roles = self.roles_of(conn);
        self.acct.auth_remove(conn);
        out.send(
            conn,
            &frame(&Out::LoggedOut {
                account: name,
                r#ref: r,
            }),
        );
        if had {
            let guest = self.guest_nick();
            self.rename(conn, guest, None, out);
        }
        self.send_role_changes(conn, &roles, out);
    }

    /// Connections logged in to `key`, but `except`.
    pub(super) fn account_conns(&self, key: &str, except: ConnId) -> Vec<ConnId> {
        let mut v: Vec<ConnId> = self
            .acct
            .by_account
            .get(key)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .copied()
            .filter(|&c| c != except)
            .collect();
        v.sort_unstable();
        v
    }

    /// The turn's account records were committed: make them true in
    /// memory and answer.
    pub(super) fn auth_committed(&mut self, out: &mut dyn Outbox) {
        for p in std::mem::take(&mut self.acct.pending) {
            match p {
                Apply::Register {
                    conn,
                    r#ref,
                    name,
                    hash,
                    token,
                } => {
                    let key = name.to_ascii_lowercase();
                    self.acct.reserved.remove(&key);
                    let mut sessions = Vec::new();
                    if let Some(t) = &token {
                        sessions.push(token_hash(t));
                        self.acct.sessions.insert(token_hash(t), key.clone());
                    }
                    self.acct.by_key.insert(
                        key.clone(),
                        Account {
                            name: Box::from(name.as_str()),
                            hash,
                            op: false,
                            sessions,
                        },
                    );
                    let here = self.unbusy(conn);
                    match token {
                        Some(t) if here => {
                            self.end_local_session(conn);
                            self.log_in(conn, &key, token_hash(&t), &t, r#ref.as_deref(), out);
                        }
                        _ => {
                            if here {
                                out.send(
                                    conn,
                                    &frame(&Out::Registered {
                                        account: &name,
                                        r#ref: r#ref.as_deref(),
                                    }),
                                );
                            }
                            self.claim_nick(&name, None, out);
                        }
                    }
                }
                Apply::Login {
                    conn,
                    r#ref,
                    key,
                    token,
                    ended,
                } => {
                    for h in &ended {
                        self.drop_session(h, conn, out);
                    }
                    let h = token_hash(&token);
                    if let Some(a) = self.acct.by_key.get_mut(&key) {
                        a.sessions.push(h);
                        self.acct.sessions.insert(h, key.clone());
                    }
                    if self.unbusy(conn) {
                        self.end_local_session(conn);
                        self.log_in(conn, &key, h, &token, r#ref.as_deref(), out);
                    }
                }
                Apply::Logout {
                    conn,
                    r#ref,
                    key,
                    all,
                } => {
                    self.unbusy(conn);
                    let name = self
                        .acct
                        .by_key
                        .get(&key)
                        .map_or_else(|| key.clone(), |a| a.name.to_string());
                    let mine = self.acct.auth.get(&conn).map(|a| a.token_hash);
                    if all {
                        if let Some(a) = self.acct.by_key.get_mut(&key) {
                            for h in std::mem::take(&mut a.sessions) {
                                self.acct.sessions.remove(&h);
                            }
                        }
                        for other in self.account_conns(&key, conn) {
                            self.log_out(other, &name, None, out);
                        }
                    } else if let Some(h) = mine {
                        self.forget_session(&h);
                        // Other connections that logged in with the same
                        // token share the session: it ends for them too.
                        for other in self.account_conns(&key, conn) {
                            if self.session_of(other) == Some(h) {
                                self.log_out(other, &name, None, out);
                            }
                        }
                    }
                    self.log_out(conn, &name, r#ref.as_deref(), out);
                }
                Apply::Passwd {
                    conn,
                    r#ref,
                    key,
                    hash,
                    token,
                } => {
                    let h = token_hash(&token);
                    let name = match self.acct.by_key.get_mut(&key) {
                        Some(a) => {
                            a.hash = hash;
                            for old in std::mem::take(&mut a.sessions) {
                                self.acct.sessions.remove(&old);
                            }
                            a.sessions.push(h);
                            self.acct.sessions.insert(h, key.clone());
                            a.name.to_string()
                        }
                        None => key.clone(),
                    };
                    for other in self.account_conns(&key, conn) {
                        self.log_out(other, &name, None, out);
                    }
                    if self.unbusy(conn) {
                        self.end_local_session(conn);
                        self.log_in(conn, &key, h, &token, r#ref.as_deref(), out);
                    }
                }
            }
        }
    }

    fn session_of(&self, conn: ConnId) -> Option<[u8; 32]> {
        self.acct.auth.get(&conn).map(|a| a.token_hash)
    }

    fn forget_session(&mut self, h: &[u8; 32]) {
        if let Some(key) = self.acct.sessions.remove(h)
            && let Some(a) = self.acct.by_key.get_mut(&key)
        {
            a.sessions.retain(|s| s != h);
        }
    }

    /// A session ended by a login past `MAX_SESSIONS` (or replaced by a
    /// new login on `conn`): its other connections are logged out.
    fn drop_session(&mut self, h: &[u8; 32], conn: ConnId, out: &mut dyn Outbox) {
        let Some(key) = self.acct.sessions.get(h).cloned() else {
            return;
        };
        self.forget_session(h);
        let name = self
            .acct
            .by_key
            .get(&key)
            .map_or_else(|| key.clone(), |a| a.name.to_string());
        for other in self.account_conns(&key, conn) {
            if self.session_of(other) == Some(*h) {
                self.log_out(other, &name, None, out);
            }
        }
    }

    /// The turn's account records could not be stored: nothing changes,
    /// each asker hears `storage_failed`.
    pub(super) fn auth_failed(&mut self, out: &mut dyn Outbox) {
        for p in std::mem::take(&mut self.acct.pending) {
            let (conn, r) = match p {
                Apply::Register {
                    conn, r#ref, name, ..
                } => {
                    self.acct.reserved.remove(&name.to_ascii_lowercase());
                    (conn, r#ref)
                }
                Apply::Login { conn, r#ref, .. }
                | Apply::Logout { conn, r#ref, .. }
                | Apply::Passwd { conn, r#ref, .. } => (conn, r#ref),
            };
            if self.unbusy(conn) {
                send_error(out, conn, r.as_deref(), &ChatError::StorageFailed);
            }
        }
    }

    /// `--require-account`: refuses guests.
    pub(super) fn require_account(&self, conn: ConnId) -> Result<(), ChatError> {
        if self.cfg.require_account && !self.is_logged_in(conn) {
            Err(ChatError::AccountRequired)
        } else {
            Ok(())
        }
    }

    /// A connection is gone: its jobs are answered to nobody.
    pub(super) fn forget_jobs_of(&mut self, conn: ConnId) {
        self.acct.auth_remove(conn);
        // Bounded by max_auth_jobs; the job ids keep a reused id from
        // getting another connection's answer.
        let gone: Vec<u64> = self
            .acct
            .jobs
            .iter()
            .filter(|(_, j)| j.conn == conn)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(j) = self.acct.jobs.get_mut(&id) {
                j.conn = usize::MAX;
            }
        }
        for p in &mut self.acct.pending {
            match p {
                Apply::Register { conn: c, .. }
                | Apply::Login { conn: c, .. }
                | Apply::Logout { conn: c, .. }
                | Apply::Passwd { conn: c, .. } => {
                    if *c == conn {
                        *c = usize::MAX;
                    }
                }
            }
        }
    }
}
