//! A room: its members, its history ring and its epoch.

use std::collections::VecDeque;
use std::rc::Rc;

use super::ConnId;

/// One kept room message. `from` shares the sender's nick allocation.
#[derive(Clone, Debug)]
pub struct Msg {
    pub id: u64,
    pub ts: u64,
    pub from: Rc<str>,
    pub text: Box<str>,
}

#[derive(Debug)]
pub struct Room {
    pub name: Rc<str>,
    pub epoch: Box<str>,
    /// Unordered; sorted only when a member list is sent.
    pub members: Vec<ConnId>,
    /// Kept messages, ids contiguous and increasing.
    pub history: VecDeque<Msg>,
    /// Id of the next message (ids start at 1).
    pub next_id: u64,
    /// `ts` of the last message, so that `ts` never decreases as `id` grows.
    pub last_ts: u64,
    /// Monotonic time the last member left; meaningful while `members` is empty.
    pub empty_since: u64,
}

/// A run of kept messages and whether it reaches as far back as asked.
pub struct Page<'a> {
    pub messages: std::collections::vec_deque::Iter<'a, Msg>,
    pub complete: bool,
}

impl Room {
    pub fn new(name: Rc<str>, epoch: Box<str>, now_ms: u64) -> Room {
        Room {
            name,
            epoch,
            members: Vec::new(),
            history: VecDeque::new(),
            next_id: 1,
            last_ts: 0,
            empty_since: now_ms,
        }
    }

    /// Posts a message: assigns its id and `ts`, keeps at most `keep`.
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
                self.history.pop_front();
            }
            self.history.push_back(msg.clone());
        }
        msg
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
