//! The chat's token bucket and the "3 refusals within 60 s" rule, and a
//! bounded table of buckets shared by client address across connections.

/// Window in which refusals are counted.
pub const STRIKE_WINDOW_MS: u64 = 60_000;
/// Refusals within the window after which the next refused frame closes.
pub const MAX_STRIKES: usize = 3;

/// What the rate limit decided for one client message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A token was taken: process the frame.
    Pass,
    /// No token: answer `rate_limited`, no other effect.
    Refuse,
    /// No token, and already refused `MAX_STRIKES` times in the window:
    /// close the connection with 1008.
    Close,
}

/// A token bucket counted in thousandths of a token, so that a refill of
/// `per_sec` tokens per second is exactly `per_sec` milli-tokens per ms.
#[derive(Clone, Debug)]
pub struct Bucket {
    milli: u64,
    last_ms: u64,
    /// Monotonic times of the most recent refusals, oldest first.
    strikes: [u64; MAX_STRIKES],
    /// How many of `strikes` are set, plus one: the zero this never holds
    /// lets a connection's `Limit` enum keep its tag there, so it costs no
    /// more than the bucket alone.
    nstrikes_plus_one: std::num::NonZeroU8,
}

impl Bucket {
    /// A full bucket.
    pub fn new(burst: u32, now_ms: u64) -> Bucket {
        Bucket {
            // With the limit off, full for whatever burst a reload (SIGHUP)
            // turns it on with: `take` cuts it to the burst.
            milli: if burst == 0 {
                u64::MAX
            } else {
                u64::from(burst) * 1000
            },
            last_ms: now_ms,
            strikes: [0; MAX_STRIKES],
            nstrikes_plus_one: std::num::NonZeroU8::MIN,
        }
    }

    fn nstrikes(&self) -> usize {
        usize::from(self.nstrikes_plus_one.get() - 1)
    }

    /// Takes a token for one client message. `burst == 0` turns the limit off.
    pub fn take(&mut self, now_ms: u64, burst: u32, per_sec: u32) -> Verdict {
        if burst == 0 {
            return Verdict::Pass;
        }
        let cap = u64::from(burst) * 1000;
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.milli = self
            .milli
            .saturating_add(elapsed.saturating_mul(u64::from(per_sec)))
            .min(cap);
        // A clock that goes backwards must not grant tokens later.
        self.last_ms = self.last_ms.max(now_ms);
        if self.milli >= 1000 {
            self.milli -= 1000;
            return Verdict::Pass;
        }
        let recent = self.strikes[..self.nstrikes()]
            .iter()
            .filter(|&&t| now_ms.saturating_sub(t) < STRIKE_WINDOW_MS)
            .count();
        if recent >= MAX_STRIKES {
            return Verdict::Close;
        }
        let n = self.nstrikes();
        if n == MAX_STRIKES {
            self.strikes.rotate_left(1);
            self.strikes[MAX_STRIKES - 1] = now_ms;
        } else {
            self.strikes[n] = now_ms;
            self.nstrikes_plus_one = self.nstrikes_plus_one.saturating_add(1);
        }
        Verdict::Refuse
    }
}

impl Bucket {
    /// Whether the bucket is full again and no refusal is still counted: an
    /// entry in this state is indistinguishable from a fresh one, so a
    /// [`BucketTable`] may forget it.
    pub fn settled(&self, now_ms: u64, burst: u32, per_sec: u32) -> bool {
        let cap = u64::from(burst) * 1000;
        let elapsed = now_ms.saturating_sub(self.last_ms);
        let full = self
            .milli
            .saturating_add(elapsed.saturating_mul(u64::from(per_sec)))
            >= cap;
        let striking = self.strikes[..self.nstrikes()]
            .iter()
            .any(|&t| now_ms.saturating_sub(t) < STRIKE_WINDOW_MS);
        full && !striking
    }

    /// Milliseconds until the next token (for `Retry-After`); 0 if one is there.
    pub fn wait_ms(&self, now_ms: u64, per_sec: u32) -> u64 {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        let have = self
            .milli
            .saturating_add(elapsed.saturating_mul(u64::from(per_sec)));
        if have >= 1000 {
            0
        } else if per_sec == 0 {
            u64::MAX
        } else {
            (1000 - have).div_ceil(u64::from(per_sec))
        }
    }
}

/// Idle entries (no holder) a [`BucketTable`] keeps at most by default.
pub const MAX_IDLE_ENTRIES: usize = 16_384;

struct Entry<K> {
    key: K,
    bucket: Bucket,
    /// Connections using this bucket; 0 means idle.
    holders: u32,
}

/// Token buckets shared by key (a client address today; an account later),
/// so that a client's bucket and strikes survive its reconnects.
///
/// Bound: an entry lives while a holder uses it; an idle one is forgotten
/// once its bucket is full again (see [`Bucket::settled`]), and at most
/// `max_idle` idle entries are kept: past that, one idle entry is forgotten
/// (the next in slot order after the last one forgotten, a clock sweep that
/// costs amortised O(1)) for each new key. So entries ≤ holders + `max_idle`.
/// Forgetting an idle entry early only hands a full bucket back to a client
/// that already commands more than `max_idle` addresses.
pub struct BucketTable<K> {
    index: std::collections::HashMap<K, u32>,
    slots: Vec<Option<Entry<K>>>,
    free: Vec<u32>,
    idle: usize,
    max_idle: usize,
    cursor: usize,
}

impl<K: std::hash::Hash + Eq + Copy> BucketTable<K> {
    pub fn new(max_idle: usize) -> BucketTable<K> {
        BucketTable {
            index: std::collections::HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            idle: 0,
            max_idle,
            cursor: 0,
        }
    }

    /// Keys held, idle or not.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Idle entries kept.
    pub fn idle(&self) -> usize {
        self.idle
    }

    /// The slot of `key`'s bucket (a full one if it had none), with one
    /// holder more. Each `acquire` is matched by one [`BucketTable::release`].
    pub fn acquire(&mut self, key: K, burst: u32, now_ms: u64) -> u32 {
        if let Some(&slot) = self.index.get(&key) {
            if let Some(e) = self.slots[slot as usize].as_mut() {
                if e.holders == 0 {
                    self.idle -= 1;
                }
                e.holders += 1;
            }
            return slot;
        }
        if self.idle >= self.max_idle {
            self.evict_one_idle();
        }
        let entry = Entry {
            key,
            bucket: Bucket::new(burst, now_ms),
            holders: 1,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(entry);
                s
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, slot);
        slot
    }

    /// One holder of `slot` is gone; the entry stays, idle, until it expires.
    pub fn release(&mut self, slot: u32) {
        if let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::as_mut)
            && e.holders > 0
        {
            e.holders -= 1;
            if e.holders == 0 {
                self.idle += 1;
            }
        }
    }

    pub fn bucket_mut(&mut self, slot: u32) -> Option<&mut Bucket> {
        self.slots
            .get_mut(slot as usize)
            .and_then(Option::as_mut)
            .map(|e| &mut e.bucket)
    }

    pub fn key(&self, slot: u32) -> Option<K> {
        self.slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map(|e| e.key)
    }

    /// Takes a token from `key`'s bucket without holding it (for events
    /// such as handshakes, which hold nothing). Returns the verdict and, when
    /// refused, the milliseconds until the next token.
    pub fn take(&mut self, key: K, now_ms: u64, burst: u32, per_sec: u32) -> (Verdict, u64) {
        let slot = self.acquire(key, burst, now_ms);
        let mut out = (Verdict::Pass, 0);
        if let Some(b) = self.bucket_mut(slot) {
            let v = b.take(now_ms, burst, per_sec);
            out = (
                v,
                if v == Verdict::Pass {
                    0
                } else {
                    b.wait_ms(now_ms, per_sec)
                },
            );
        }
        self.release(slot);
        out
    }

    /// Forgets the idle entries whose buckets are full again. O(entries):
    /// called from the server's periodic sweep, not per message.
    pub fn expire(&mut self, now_ms: u64, burst: u32, per_sec: u32) {
        for slot in 0..self.slots.len() {
            if self.slots[slot]
                .as_ref()
                .is_some_and(|e| e.holders == 0 && e.bucket.settled(now_ms, burst, per_sec))
            {
                self.remove(slot);
            }
        }
    }

    fn evict_one_idle(&mut self) {
        for _ in 0..self.slots.len() {
            self.cursor = (self.cursor + 1) % self.slots.len();
            if self.slots[self.cursor]
                .as_ref()
                .is_some_and(|e| e.holders == 0)
            {
                self.remove(self.cursor);
                return;
            }
        }
    }

    fn remove(&mut self, slot: usize) {
        if let Some(e) = self.slots[slot].take() {
            self.index.remove(&e.key);
            if e.holders == 0 {
                self.idle -= 1;
            }
            self.free.push(slot as u32);
        }
    }
}
