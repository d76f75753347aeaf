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
}

/// Text rule: 1..=`max_chars` Unicode scalar values, at least one of them
/// not White_Space, no character of category Cc except newline and tab.
pub fn check_text(s: &str, max_chars: usize) -> Result<(), TextError> {
    if s.is_empty() {
        return Err(TextError::Empty);
    }
    let mut count = 0usize;
    let mut blank = true;
    for c in s.chars() {
        count += 1;
        if count > max_chars {
            return Err(TextError::TooLong);
        }
        // `char::is_control` is exactly General_Category Cc.
        if c.is_control() && c != '\n' && c != '\t' {
            return Err(TextError::Control);
        }
        // `char::is_whitespace` is exactly the White_Space property.
        if !c.is_whitespace() {
            blank = false;
        }
    }
    if blank {
        return Err(TextError::Blank);
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
