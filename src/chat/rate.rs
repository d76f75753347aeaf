//! Per-connection token bucket and the "3 refusals within 60 s" rule.

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
    nstrikes: u8,
}

impl Bucket {
    /// A full bucket.
    pub fn new(burst: u32, now_ms: u64) -> Bucket {
        Bucket {
            milli: u64::from(burst) * 1000,
            last_ms: now_ms,
            strikes: [0; MAX_STRIKES],
            nstrikes: 0,
        }
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
        let recent = self.strikes[..usize::from(self.nstrikes)]
            .iter()
            .filter(|&&t| now_ms.saturating_sub(t) < STRIKE_WINDOW_MS)
            .count();
        if recent >= MAX_STRIKES {
            return Verdict::Close;
        }
        if usize::from(self.nstrikes) == MAX_STRIKES {
            self.strikes.rotate_left(1);
            self.strikes[MAX_STRIKES - 1] = now_ms;
        } else {
            self.strikes[usize::from(self.nstrikes)] = now_ms;
            self.nstrikes += 1;
        }
        Verdict::Refuse
    }
}
