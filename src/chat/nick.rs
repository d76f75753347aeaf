//! Nicknames: held inline by each connection, indexed case-insensitively.
//!
//! Thousands of idle users are normal, so a user's nick costs no allocation
//! of its own: a small object per user, made while a join storm fills the
//! heap with short-lived frames, would pin pages long after the storm.

use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::ops::Deref;

use hashbrown::HashTable;

use super::validate::MAX_NICK_LEN;

/// A nickname, stored inline (nicks are at most `MAX_NICK_LEN` bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nick {
    len: u8,
    bytes: [u8; MAX_NICK_LEN],
}

impl Nick {
    /// `None` when `s` is longer than any nick may be.
    pub fn new(s: &str) -> Option<Nick> {
        if s.len() > MAX_NICK_LEN {
            return None;
        }
        let mut bytes = [0u8; MAX_NICK_LEN];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Some(Nick {
            len: s.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        // Copied whole from a `&str` in `new`, so always UTF-8.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl Deref for Nick {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Nick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Nick → holder, ignoring ASCII case. The table keeps only the holder's id
/// (4 bytes a user); the nick itself is read back from the holder's state
/// through the `nick_of` argument.
#[derive(Default)]
pub struct NickIndex {
    table: HashTable<u32>,
    hasher: RandomState,
}

fn hash(hasher: &RandomState, nick: &str) -> u64 {
    let mut lower = [0u8; MAX_NICK_LEN];
    let n = nick.len().min(MAX_NICK_LEN);
    for (d, s) in lower.iter_mut().zip(nick.bytes()) {
        *d = s.to_ascii_lowercase();
    }
    let mut h = hasher.build_hasher();
    h.write(&lower[..n]);
    h.finish()
}

impl NickIndex {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The holder of `nick` (in any case), if any.
    pub fn get<'a>(&self, nick: &str, nick_of: impl Fn(u32) -> Option<&'a str>) -> Option<u32> {
        if nick.len() > MAX_NICK_LEN {
            return None;
        }
        self.table
            .find(hash(&self.hasher, nick), |&id| {
                nick_of(id).is_some_and(|n| n.eq_ignore_ascii_case(nick))
            })
            .copied()
    }

    /// Records `id` as the holder of `nick`, which must be free. `nick_of`
    /// must already answer for `id` and every holder in the table: growing
    /// the table rehashes them.
    pub fn insert<'a>(&mut self, nick: &str, id: u32, nick_of: impl Fn(u32) -> Option<&'a str>) {
        let NickIndex { table, hasher } = self;
        table.insert_unique(hash(hasher, nick), id, |&i| {
            hash(hasher, nick_of(i).unwrap_or_default())
        });
    }

    /// Forgets `id`, which was inserted under `nick`; false if `id` is not
    /// in the index. A holder has one nick, so `id` is in the table at most
    /// once and comparing ids along `nick`'s probe sequence finds exactly its
    /// entry. Given a nick `id` does not hold, it may or may not find it:
    /// another nick's entry can share the probe sequence.
    pub fn remove(&mut self, nick: &str, id: u32) -> bool {
        match self
            .table
            .find_entry(hash(&self.hasher, nick), |&i| i == id)
        {
            Ok(e) => {
                e.remove();
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicks_are_found_in_any_case_and_removed_by_holder() {
        let names = ["Alice", "bob", "CAROL-1.x", "d_"];
        let held: Vec<Nick> = names.iter().map(|n| Nick::new(n).unwrap()).collect();
        let nick_of = |id: u32| held.get(id as usize).map(|n| n.as_str());
        let mut idx = NickIndex::default();
        for (i, n) in names.iter().enumerate() {
            idx.insert(n, i as u32, nick_of);
        }
        assert_eq!(idx.len(), 4);
        assert_eq!(idx.get("alice", nick_of), Some(0));
        assert_eq!(idx.get("BOB", nick_of), Some(1));
        assert_eq!(idx.get("carol-1.X", nick_of), Some(2));
        assert_eq!(idx.get("carol", nick_of), None);
        assert_eq!(idx.get(&"a".repeat(40), nick_of), None);
        // Only the holder's own entry goes, whatever the case it is named in.
        assert!(!idx.remove("alice", 9));
        assert!(idx.remove("ALICE", 0));
        assert!(!idx.remove("alice", 0));
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.get("alice", nick_of), None);
        assert_eq!(idx.get("bob", nick_of), Some(1));
        assert_eq!(idx.get("d_", nick_of), Some(3));
    }

    /// Random joins, renames and departures, checked against a plain map at
    /// every step. Over this many steps, hash tags collide within probe
    /// groups many times, so a lookup or removal that trusted the hash alone
    /// (or a removal that ignored the id) fails.
    #[test]
    fn the_index_agrees_with_a_plain_map_through_renames_and_departures() {
        use std::collections::HashMap;
        const IDS: usize = 256;
        let mut held: Vec<Option<Nick>> = vec![None; IDS];
        let mut model: HashMap<String, u32> = HashMap::new();
        let mut idx = NickIndex::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for step in 0..200_000 {
            let id = next(IDS as u64) as u32;
            // Fewer names than ids, each in two spellings, so joins and
            // renames often find the name taken.
            let k = next(384);
            let name = if k % 2 == 0 {
                format!("User{k}")
            } else {
                format!("uSER{}", k - 1)
            };
            let holder = {
                let held = &held;
                idx.get(&name, |i| held[i as usize].as_ref().map(|n| n.as_str()))
            };
            assert_eq!(
                holder,
                model.get(&name.to_lowercase()).copied(),
                "step {step}"
            );
            let old = held[id as usize];
            if next(4) == 0 {
                // Departure.
                if let Some(old) = old {
                    assert!(idx.remove(&old, id), "step {step}");
                    model.remove(&old.to_lowercase());
                    held[id as usize] = None;
                }
            } else if holder.is_none() {
                // Join or rename to a free name.
                let new = Nick::new(&name).unwrap();
                held[id as usize] = Some(new);
                if let Some(old) = old {
                    assert!(idx.remove(&old, id), "step {step}");
                    model.remove(&old.to_lowercase());
                }
                let held = &held;
                idx.insert(&new, id, |i| held[i as usize].as_ref().map(|n| n.as_str()));
                model.insert(name.to_lowercase(), id);
            }
            assert_eq!(idx.len(), model.len(), "step {step}");
        }
    }

    #[test]
    fn a_nick_holds_up_to_the_longest_allowed() {
        let long = "x".repeat(MAX_NICK_LEN);
        assert_eq!(Nick::new(&long).unwrap().as_str(), long);
        assert!(Nick::new(&format!("{long}y")).is_none());
        assert_eq!(&*Nick::new("").unwrap(), "");
    }
}
