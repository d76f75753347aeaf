//! A room: its members, its history ring and its epoch.

use std::collections::VecDeque;
use std::rc::Rc;

use super::ConnId;

/// One kept room message. `from` is the sender's nick when it was posted,
/// shared by the message's copies (the ring and the frames' serialiser).
#[derive(Clone, Debug)]
pub struct Msg {
    pub id: u64,
    pub ts: u64,
    pub from: Rc<str>,
    pub text: Box<str>,
}

/// One slot of the server-wide posting-order queue (`Chat::order`): which
/// room (slot and creation serial) and which message id.
#[derive(Clone, Copy, Debug)]
pub struct Order {
    pub slot: u32,
    pub serial: u64,
    pub id: u64,
}

/// Heap bytes the allocator adds per allocation, as a round upper figure
/// (glibc malloc: 8–16).
const ALLOC_HEADER: usize = 16;

/// The fixed part of [`Msg::cost`], an upper bound on what one kept message
/// holds beyond its text and nick bytes:
/// - 2 ring slots (`Msg`): a room's ring grows by doubling and is shrunk
///   back whenever its capacity passes 2 × len + 4 (see [`Room::pop_oldest`]);
///   the 4 spare slots per room are part of the room's own fixed cost, which
///   `--max-rooms` bounds;
/// - 8 [`Order`] slots: the queue holds one live entry per kept message
///   and at most as many stale ones again (+ a constant) before `Chat`
///   compacts it, and its capacity is shrunk back whenever it passes 4 ×
///   that (growth by doubling and the shrink hysteresis);
/// - the nick's `Rc` counts (strong + weak);
/// - allocator headers of the text and of the nick.
pub const MSG_OVERHEAD: usize = 2 * std::mem::size_of::<Msg>()
    + 8 * std::mem::size_of::<Order>()
    + 2 * std::mem::size_of::<usize>()
    + 2 * ALLOC_HEADER;

impl Msg {
    /// What this message counts against `--max-history-bytes`:
    ///
    /// `text.len() + from.len() + MSG_OVERHEAD`
    ///
    /// Each message holds its own `from` allocation (a connection keeps its
    /// nick inline), so its nick bytes, `Rc` counts and allocator header are
    /// all charged here.
    pub fn cost(&self) -> usize {
        self.text.len() + self.from.len() + MSG_OVERHEAD
    }
}

#[derive(Debug)]
pub struct Room {
    pub name: Rc<str>,
    /// Unique per room creation within a run: tells a recreated room in a
    /// reused slot from the one an old `Order` entry points to.
    pub serial: u64,
    pub epoch: Box<str>,
    /// Unordered; sorted only when a member list is sent.
    pub members: Vec<ConnId>,
    /// Kept messages, ids contiguous and increasing. Changed only through
    /// [`Room::post`] and [`Room::pop_oldest`], which keep `bytes` exact.
    pub history: VecDeque<Msg>,
    /// Sum of [`Msg::cost`] over `history`.
    pub bytes: usize,
    /// Id of the next message (ids start at 1).
    pub next_id: u64,
    /// `ts` of the last message, so that `ts` never decreases as `id` grows.
    pub last_ts: u64,
    /// Monotonic time the last member left; meaningful while `members` is empty.
    pub empty_since: u64,
    /// The address that created the room (`None`: an exempt client); the
    /// room counts against its `max_rooms_per_addr` while it exists.
    pub owner: Option<super::AddrKey>,
}

/// A run of kept messages and whether it reaches as far back as asked.
pub struct Page<'a> {
    pub messages: std::collections::vec_deque::Iter<'a, Msg>,
    pub complete: bool,
}

impl Room {
    pub fn new(name: Rc<str>, serial: u64, epoch: Box<str>, now_ms: u64) -> Room {
        Room {
            name,
            serial,
            epoch,
            members: Vec::new(),
            history: VecDeque::new(),
            bytes: 0,
            next_id: 1,
            last_ts: 0,
            empty_since: now_ms,
            owner: None,
        }
    }

    /// Posts a message: assigns its id and `ts`, keeps at most `keep`
    /// (dropping the oldest).
    pub fn post(&mut self, from: Rc<str>, text: Box<str>, wall_ms: u64, keep: usize) -> Msg {
        let ts = wall_ms.max(self.last_ts);
        self.last_ts = ts;
        let msg = Msg {
            id: self.next_id,
            ts,
            from,
            text,
        };
        self.next_id += 1;
        if keep > 0 {
            while self.history.len() >= keep {
                if let Some(old) = self.history.pop_front() {
                    self.bytes -= old.cost();
                }
            }
            self.bytes += msg.cost();
            self.history.push_back(msg.clone());
        }
        msg
    }

    /// Drops the oldest kept message. The ring is shrunk when its capacity
    /// passes 2 × len + 4 (to 1.5 × len, so the next shrink needs at least
    /// a quarter of the messages gone: amortised O(1)); growth by doubling
    /// never passes that bound either. So a ring emptied by the global
    /// budget does not keep its peak allocation.
    pub fn pop_oldest(&mut self) -> Option<Msg> {
        let old = self.history.pop_front()?;
        self.bytes -= old.cost();
        let len = self.history.len();
        if self.history.capacity() > 2 * len + 4 {
            self.history.shrink_to(len + len / 2);
        }
        Some(old)
    }

    /// Whether the message `id` is still kept. Ids are contiguous, so it is
    /// kept when it lies between the oldest kept id and the newest id.
    pub fn keeps(&self, id: u64) -> bool {
        self.first_id()
            .is_some_and(|first| first <= id && id <= self.last_id())
    }

    fn first_id(&self) -> Option<u64> {
        self.history.front().map(|m| m.id)
    }

    fn last_id(&self) -> u64 {
        self.next_id - 1
    }

    /// The newest `n` kept messages; complete when no older kept one exists.
    pub fn newest(&self, n: usize) -> Page<'_> {
        let len = self.history.len();
        let start = len.saturating_sub(n);
        Page {
            messages: self.history.range(start..),
            complete: start == 0,
        }
    }

    /// The newest `max` kept messages with `id > since`; complete when they
    /// are all the messages ever posted after `since`.
    pub fn after(&self, since: u64, max: usize) -> Page<'_> {
        let len = self.history.len();
        let last = self.last_id();
        if since >= last {
            return Page {
                messages: self.history.range(len..),
                complete: true,
            };
        }
        let first_idx = match self.first_id() {
            Some(first) if first <= since => usize::try_from(since - first + 1).unwrap_or(len),
            _ => 0,
        };
        let available = len - first_idx.min(len);
        let take = available.min(max);
        let start = len - take;
        Page {
            messages: self.history.range(start..),
            complete: take as u64 == last - since,
        }
    }

    /// The newest `limit` kept messages with `id < before`; complete when no
    /// older kept message exists.
    pub fn before(&self, before: u64, limit: usize) -> Page<'_> {
        let len = self.history.len();
        let end = match self.first_id() {
            Some(first) if before > first => {
                usize::try_from(before - first).map_or(len, |n| n.min(len))
            }
            _ => 0,
        };
        let start = end.saturating_sub(limit);
        Page {
            messages: self.history.range(start..end),
            complete: start == 0,
        }
    }
}
