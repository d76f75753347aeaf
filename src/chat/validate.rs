//! The name, text and number rules of the chat protocol (docs/protocol.md, "Limits").

/// Longest nickname, in characters (all ASCII, so also bytes).
pub const MAX_NICK_LEN: usize = 32;
/// Longest room name, in characters (all ASCII, so also bytes).
pub const MAX_ROOM_LEN: usize = 64;
/// Longest `ref`, in bytes of UTF-8.
pub const MAX_REF_BYTES: usize = 64;
/// Largest integer a client may send: 2^53 − 1, the largest that every JSON
/// implementation (JavaScript's `Number` included) represents exactly.
pub const MAX_INT: u64 = (1 << 53) - 1;
/// Largest `limit` of a `history` request.
pub const MAX_HISTORY_LIMIT: u64 = 100;
/// `limit` of a `history` request that gives none.
pub const DEFAULT_HISTORY_LIMIT: u64 = 50;
/// Messages in a `joined` without a usable `since`.
pub const JOIN_NEWEST: usize = 50;
/// Most messages in a `joined` answering a `since` in the current epoch.
pub const JOIN_SINCE_MAX: usize = 100;
/// Longest `search` query, in Unicode scalar values.
pub const MAX_QUERY_CHARS: usize = 200;
/// `search`'s default `limit`.
pub const DEFAULT_SEARCH_LIMIT: u64 = 20;
/// Most messages of context on each side of a `search` hit.
pub const MAX_SEARCH_CONTEXT: u64 = 3;
/// Passwords, in Unicode scalar values (the upper bound keeps a hash job
/// small; Argon2 costs the same for any length).
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 256;
/// Moderators one room may have (appointed by its owner or an operator;
/// operators are not held to it): the table outlives the room.
pub const MAX_ROOM_MODERATORS: usize = 100;
/// Room bans in force in one room, set by its owner or moderators
/// (operators are not held to it).
pub const MAX_ROOM_BANS: usize = 1000;

/// Nick rule: 1–32 characters from `A–Z a–z 0–9 _ - .`.
pub fn valid_nick(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NICK_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Room rule: 1–64 characters from `A–Z a–z 0–9 _ -`.
pub fn valid_room(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ROOM_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Why a text breaks the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextError {
    Empty,
    TooLong,
    Blank,
    Control,
    /// Nothing but white space and invisible characters (`is_invisible`).
    Invisible,
    /// An explicit bidirectional embedding, override or isolate.
    Bidi,
}

/// Characters that show nothing, as sorted inclusive ranges: every format
/// character (General_Category Cf, Unicode 15.1: U+200B zero width space,
/// U+00AD soft hyphen, U+2060 word joiner, U+FEFF, tags, …), the rest of
/// Default_Ignorable_Code_Point (variation selectors, Hangul fillers,
/// U+034F, U+2065, U+FFF0–U+FFF8, the U+E0000 block), and U+2800 BRAILLE
/// PATTERN BLANK, a printable character that prints nothing.
const INVISIBLE: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
];

/// Whether `c` shows nothing (see `INVISIBLE`); white space is apart.
pub fn is_invisible(c: char) -> bool {
    let c = u32::from(c);
    if c < 0xAD {
        return false;
    }
    INVISIBLE
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// The explicit directional embeddings, overrides and isolates (UAX #9
/// §2.1, §2.2: LRE RLE PDF LRO RLO, LRI RLI FSI PDI). An unclosed override
/// reverses what follows it ("gpj.exe" shown as "exe.jpg"), so they are
/// refused; the implicit marks (U+200E, U+200F, U+061C) open nothing and
/// are kept.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Text rule: 1..=`max_chars` Unicode scalar values, at least one of them
/// neither White_Space nor invisible (`is_invisible`), no character of
/// category Cc except newline and tab, no explicit bidi control.
pub fn check_text(s: &str, max_chars: usize) -> Result<(), TextError> {
    if s.is_empty() {
        return Err(TextError::Empty);
    }
    let mut count = 0usize;
    let mut blank = true;
    let mut visible = false;
    for c in s.chars() {
        count += 1;
        if count > max_chars {
            return Err(TextError::TooLong);
        }
        // `char::is_control` is exactly General_Category Cc.
        if c.is_control() && c != '\n' && c != '\t' {
            return Err(TextError::Control);
        }
        if is_bidi_control(c) {
            return Err(TextError::Bidi);
        }
        // `char::is_whitespace` is exactly the White_Space property.
        if !c.is_whitespace() {
            blank = false;
            visible = visible || !is_invisible(c);
        }
    }
    if blank {
        return Err(TextError::Blank);
    }
    if !visible {
        return Err(TextError::Invisible);
    }
    Ok(())
}

/// Orders names by their lowercase form, then by the name itself so that
/// room names differing only in case (rooms are case-sensitive) sort stably.
pub fn cmp_lowercase(a: &str, b: &str) -> std::cmp::Ordering {
    let la = a.bytes().map(|c| c.to_ascii_lowercase());
    let lb = b.bytes().map(|c| c.to_ascii_lowercase());
    la.cmp(lb).then_with(|| a.cmp(b))
}
