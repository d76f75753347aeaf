//! The JSON of the chat protocol: client frames parsed into typed requests
//! (with the contract's error precedence), server messages serialised.

use std::fmt;
use std::rc::Rc;

use serde::Serialize;
use serde_json::{Map, Value};

use super::room::Msg;
use super::validate::{self, TextError};

/// Version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Why a client frame had no effect. Declared in precedence order: when
/// several apply, the first wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatError {
    RateLimited,
    BadJson,
    UnknownType,
    Invalid {
        field: &'static str,
        reason: Reason,
    },
    NickTaken,
    NotInRoom,
    NoSuchUser,
    TooManyRooms {
        /// true: the server's room cap; false: this connection's.
        server: bool,
    },
    /// The rooms created from this client's address are at their cap.
    TooManyRoomsFromAddress,
    /// Extension (moderation): the account owns `--max-rooms-per-addr`
    /// rooms already (ownership is kept after a room is forgotten).
    TooManyOwnedRooms,
    /// Extension (accounts): the nick is registered to an account this
    /// connection is not logged in to (code `nick_taken`).
    NickRegistered,
    /// A password check is already running for this connection, or the
    /// server's queue of them is full.
    Busy,
    /// Too many failed logins from this address or for this account.
    LoginLimited {
        retry_after_s: u64,
    },
    /// `logout` or `passwd` without being logged in.
    NotLoggedIn,
    /// The connection lacks the right (an operator's).
    Forbidden,
    /// `register` while the server's registration is closed.
    RegistrationClosed,
    /// `register` of a nick that has an account already.
    AlreadyRegistered,
    /// `register` past `--max-accounts` accounts on the server.
    TooManyAccounts,
    /// `register` past `--registrations-per-hour` from this address.
    RegistrationLimited {
        retry_after_s: u64,
    },
    /// Wrong account, password or token.
    LoginFailed,
    /// `--require-account`: `join` and `dm` need a login.
    AccountRequired,
    /// A ban holds this user (from the room, or the server).
    Banned {
        until: u64,
        reason: String,
    },
    /// `moderator` for a nick that has no account.
    NoSuchAccount,
    /// Extension (moderation): the room has `MAX_ROOM_MODERATORS`.
    TooManyModerators,
    /// Extension (moderation): the room has `MAX_ROOM_BANS` bans in force.
    TooManyBans,
    /// Extension (moderation): an `unban` of a nick no ban in force names
    /// (in that room, or server-wide).
    NotBanned,
    /// `delete` of an id the room does not keep (and, extension, a
    /// `reply_to`, `react` or `edit` of one, or of a tombstone).
    NoSuchMessage,
    /// Extension (reactions): the message has as many reactions as it may.
    TooManyReactions,
    /// Muted in this room until `until` (wall-clock ms).
    Muted {
        until: u64,
    },
    /// Slow mode: the next message may come in this many seconds.
    SlowMode {
        retry_after_s: u64,
    },
    /// The store could not write (or read) what the frame needed.
    StorageFailed,
    /// Extension (images): `send` names an upload that does not exist, is
    /// not the sender's, or is shown by another message already.
    NoSuchUpload,
}

/// What is wrong with an `invalid` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Missing,
    NotString,
    NotBool,
    NotInteger,
    OutOfRange {
        min: u64,
        max: u64,
    },
    RefTooLong,
    Nick,
    Room,
    Text(TextError),
    Query,
    /// Given beside another field that excludes it (the one named here).
    Excludes(&'static str),
    Password,
    Token,
    /// Not one of the server's reaction emoji.
    Emoji,
    /// Extension (images): not an upload id.
    Image,
}

impl ChatError {
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::RateLimited => "rate_limited",
            ChatError::BadJson => "bad_json",
            ChatError::UnknownType => "unknown_type",
            ChatError::Invalid { .. } => "invalid",
            ChatError::NickTaken => "nick_taken",
            ChatError::NotInRoom => "not_in_room",
            ChatError::NoSuchUser => "no_such_user",
            ChatError::TooManyRooms { .. }
            | ChatError::TooManyRoomsFromAddress
            | ChatError::TooManyOwnedRooms => "too_many_rooms",
            ChatError::NickRegistered => "nick_taken",
            ChatError::Busy => "busy",
            ChatError::LoginLimited { .. } => "login_limited",
            ChatError::NotLoggedIn => "not_logged_in",
            ChatError::Forbidden => "forbidden",
            ChatError::RegistrationClosed => "registration_closed",
            ChatError::AlreadyRegistered => "already_registered",
            ChatError::TooManyAccounts => "too_many_accounts",
            ChatError::RegistrationLimited { .. } => "registration_limited",
            ChatError::LoginFailed => "login_failed",
            ChatError::AccountRequired => "account_required",
            ChatError::Banned { .. } => "banned",
            ChatError::Muted { .. } => "muted",
            ChatError::NoSuchAccount => "no_such_account",
            ChatError::TooManyModerators => "too_many_moderators",
            ChatError::TooManyBans => "too_many_bans",
            ChatError::NotBanned => "not_banned",
            ChatError::NoSuchMessage => "no_such_message",
            ChatError::TooManyReactions => "too_many_reactions",
            ChatError::NoSuchUpload => "no_such_upload",
            ChatError::SlowMode { .. } => "slow_mode",
            ChatError::StorageFailed => "storage_failed",
        }
    }

    /// Seconds after which a refused login may be tried again.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ChatError::LoginLimited { retry_after_s }
            | ChatError::SlowMode { retry_after_s }
            | ChatError::RegistrationLimited { retry_after_s } => Some(*retry_after_s),
            _ => None,
        }
    }
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatError::RateLimited => f.write_str("too many messages: slow down"),
            ChatError::BadJson => {
                f.write_str("not a JSON object with a string \"type\" field")
            }
            ChatError::UnknownType => f.write_str(
                "unknown \"type\": expected nick, join, leave, message, dm, typing, history, rooms, search, register, login, logout, passwd, kick, ban, mute, slow, moderator, topic, delete, react, edit, dm_history or read",
            ),
            ChatError::Invalid { field, reason } => {
                write!(f, "invalid field \"{field}\": ")?;
                match reason {
                    Reason::Missing => f.write_str("missing"),
                    Reason::NotString => f.write_str("must be a string"),
                    Reason::NotBool => f.write_str("must be true or false"),
                    Reason::NotInteger => f.write_str(
                        "must be an integer (no fraction or exponent) from 0 to 2^53-1",
                    ),
                    Reason::OutOfRange { min, max } => {
                        write!(f, "must be an integer from {min} to {max}")
                    }
                    Reason::RefTooLong => write!(
                        f,
                        "must be at most {} bytes of UTF-8",
                        validate::MAX_REF_BYTES
                    ),
                    Reason::Nick => write!(
                        f,
                        "must be 1 to {} characters from A-Z a-z 0-9 _ - .",
                        validate::MAX_NICK_LEN
                    ),
                    Reason::Room => write!(
                        f,
                        "must be 1 to {} characters from A-Z a-z 0-9 _ -",
                        validate::MAX_ROOM_LEN
                    ),
                    Reason::Query => write!(
                        f,
                        "must be 1 to {} characters, not all white space, without control characters",
                        validate::MAX_QUERY_CHARS
                    ),
                    Reason::Excludes(other) => {
                        write!(f, "cannot be given together with \"{other}\"")
                    }
                    Reason::Password => write!(
                        f,
                        "must be {} to {} characters",
                        validate::MIN_PASSWORD_CHARS,
                        validate::MAX_PASSWORD_CHARS
                    ),
                    Reason::Token => f.write_str("must be the 64 hex digits of a session token"),
                    Reason::Emoji => write!(
                        f,
                        "must be one of {}",
                        super::edits::REACTIONS.join(" ")
                    ),
                    Reason::Image => f.write_str("must be the 16 hex digits of an upload id"),
                    Reason::Text(TextError::Empty) => f.write_str("must not be empty"),
                    Reason::Text(TextError::TooLong) => f.write_str("is too long"),
                    Reason::Text(TextError::Blank) => {
                        f.write_str("must contain something other than white space")
                    }
                    Reason::Text(TextError::Control) => f.write_str(
                        "must not contain control characters other than newline and tab",
                    ),
                    Reason::Text(TextError::Invisible) => f.write_str(
                        "must contain a visible character (format characters such as U+200B do not count)",
                    ),
                    Reason::Text(TextError::Bidi) => f.write_str(
                        "must not contain bidirectional embeddings, overrides or isolates (U+202A to U+202E, U+2066 to U+2069)",
                    ),
                }
            }
            ChatError::NickTaken => f.write_str("that nick is taken"),
            ChatError::NotInRoom => f.write_str("you have not joined that room"),
            ChatError::NoSuchUser => f.write_str("no connected user has that nick"),
            ChatError::TooManyRooms { server: false } => {
                f.write_str("you have joined too many rooms: leave one first")
            }
            ChatError::TooManyRooms { server: true } => {
                f.write_str("the server has too many rooms: join an existing one")
            }
            ChatError::TooManyRoomsFromAddress => f.write_str(
                "too many rooms were created from your address: join an existing one",
            ),
            ChatError::TooManyOwnedRooms => f.write_str(
                "your account owns as many rooms as it may: join an existing one",
            ),
            ChatError::NickRegistered => {
                f.write_str("that nick is registered: log in to its account to use it")
            }
            ChatError::Busy => {
                f.write_str("the server is busy checking passwords: try again in a moment")
            }
            ChatError::LoginLimited { retry_after_s } => write!(
                f,
                "too many failed logins: try again in {retry_after_s} s"
            ),
            ChatError::NotLoggedIn => f.write_str("you are not logged in"),
            ChatError::Forbidden => f.write_str("you are not allowed to do that"),
            ChatError::RegistrationClosed => {
                f.write_str("registration is closed: ask an operator for an account")
            }
            ChatError::AlreadyRegistered => f.write_str("that nick is registered already"),
            ChatError::TooManyAccounts => f.write_str(
                "the server has as many accounts as it allows: ask an operator",
            ),
            ChatError::RegistrationLimited { retry_after_s } => write!(
                f,
                "too many registrations from your address: try again in {retry_after_s} s"
            ),
            ChatError::LoginFailed => f.write_str("wrong account, password or token"),
            ChatError::AccountRequired => {
                f.write_str("this server requires an account: log in or register first")
            }
            ChatError::NoSuchAccount => f.write_str("no account has that nick"),
            ChatError::TooManyModerators => write!(
                f,
                "the room has {} moderators, as many as it may: remove one first",
                super::validate::MAX_ROOM_MODERATORS
            ),
            ChatError::TooManyBans => write!(
                f,
                "the room has {} bans in force, as many as it may: ask an operator",
                super::validate::MAX_ROOM_BANS
            ),
            ChatError::NotBanned => f.write_str("no ban in force names that nick there"),
            ChatError::NoSuchMessage => f.write_str("the room keeps no message with that id"),
            ChatError::TooManyReactions => write!(
                f,
                "that message has {} reactions already, the most it may have",
                super::edits::MAX_REACTIONS
            ),
            ChatError::NoSuchUpload => {
                f.write_str("no upload of yours with that id that no other message shows")
            }
            ChatError::Muted { until } => write!(
                f,
                "you are muted in this room until {until} (ms since the Unix epoch)"
            ),
            ChatError::SlowMode { retry_after_s } => write!(
                f,
                "slow mode: your next message may come in {retry_after_s} s"
            ),
            ChatError::Banned { until, reason } => {
                f.write_str("you are banned")?;
                if *until > 0 {
                    write!(f, " until {until} (ms since the Unix epoch)")?;
                }
                if !reason.is_empty() {
                    write!(f, ": {reason}")?;
                }
                Ok(())
            }
            ChatError::StorageFailed => f.write_str(
                "the server could not store or read messages (disk full or failing); nothing was sent: try again",
            ),
        }
    }
}

/// A well-formed client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Nick {
        nick: String,
    },
    Join {
        room: String,
        since: Option<u64>,
        epoch: Option<String>,
    },
    Leave {
        room: String,
    },
    Message {
        room: String,
        text: String,
        /// Extension (replies): the id of the message this one answers.
        reply_to: Option<u64>,
        /// Extension (images): the upload the message shows.
        image: Option<u64>,
    },
    Dm {
        to: String,
        text: String,
    },
    Typing {
        room: String,
        active: bool,
    },
    History {
        room: String,
        page: Page,
        limit: u64,
    },
    Rooms,
    /// Extension: full-text search of a joined room's history, or of the
    /// DM conversation with an account.
    Search {
        target: Target,
        query: String,
        before: Option<u64>,
        limit: u64,
        /// Messages on each side of a match sent with it (0: none).
        context: u64,
    },
    /// Extension (accounts): register `nick` (default: one's own).
    Register {
        nick: Option<String>,
        password: String,
    },
    /// Extension: log in with a password, or with a session token.
    Login(Credentials),
    /// Extension: end this session, or with `all` every one of the account.
    Logout {
        all: bool,
    },
    /// Extension: change the password (ends the account's other sessions).
    Passwd {
        password: String,
        new_password: String,
    },
    /// Extension (moderation, operators): take `nick` out of `room`.
    Kick {
        room: String,
        nick: String,
        reason: Option<String>,
    },
    /// Extension (moderation, operators): `nick` may not post in `room`
    /// for `duration` seconds.
    Mute {
        room: String,
        nick: String,
        duration: u64,
        reason: Option<String>,
    },
    /// Extension (moderation, operators): slow mode, `interval` seconds
    /// between one user's messages in `room` (0: off).
    Slow {
        room: String,
        interval: u64,
    },
    /// Extension (operators): appoint the account `nick` moderator of
    /// `room` (`on` false: remove it).
    Moderator {
        room: String,
        nick: String,
        on: bool,
    },
    /// Extension (moderators): set the room's topic ("" clears it).
    Topic {
        room: String,
        topic: String,
    },
    /// Extension (moderators, and the message's author): delete message
    /// `id` of `room` (a tombstone stays in the history).
    Delete {
        room: String,
        id: u64,
    },
    /// Extension (reactions): react to message `id` with `emoji`; `on`
    /// None toggles.
    React {
        room: String,
        id: u64,
        emoji: &'static str,
        on: Option<bool>,
    },
    /// Extension (edits): the author gives message `id` a new text.
    Edit {
        room: String,
        id: u64,
        text: String,
    },
    /// Extension (DM history): a page of the DM conversation with the
    /// account `with` (logged-in users).
    DmHistory {
        with: String,
        page: Page,
        limit: u64,
    },
    /// Extension (read positions): the account has read up to `id` of a
    /// room or of a DM conversation.
    Read {
        target: Target,
        id: u64,
    },
    /// Extension (moderation, operators): ban `nick` (and its account, and
    /// with `ip` its address) from `room`, or without `room` the server.
    Ban {
        room: Option<String>,
        nick: String,
        duration: Option<u64>,
        ip: bool,
        reason: Option<String>,
    },
    /// Extension (moderation): lift the ban of `nick` in `room`, or without
    /// `room` the server ban (operators).
    Unban {
        room: Option<String>,
        nick: String,
    },
}

/// How a `login` proves who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    Password {
        account: String,
        password: String,
    },
    /// The 32 bytes of a session token (sent as 64 hex digits).
    Token([u8; 32]),
}

/// What a `read` or a `search` is about: a room, or (extension) a DM
/// conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Room(String),
    /// The DM conversation with this account.
    Dm(String),
}

/// Which page of a room's history a `history` request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// The newest `limit` with `id < before` (the protocol's own).
    Before(u64),
    /// Extension: the oldest `limit` with `id > after` (paging forward).
    After(u64),
    /// Extension: `limit` messages centred on the id `around` (a search
    /// hit, a quoted message).
    Around(u64),
}

/// A client frame that was refused, with the `ref` its answer carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub r#ref: Option<String>,
    pub error: ChatError,
}

/// A parsed client frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub r#ref: Option<String>,
    pub request: Request,
}

#[derive(Clone, Copy)]
enum Kind {
    Nick,
    Join,
    Leave,
    Message,
    Dm,
    Typing,
    History,
    Rooms,
    Search,
    Register,
    Login,
    Logout,
    Passwd,
    Kick,
    Ban,
    Unban,
    Mute,
    Slow,
    Moderator,
    Topic,
    Delete,
    React,
    Edit,
    DmHistory,
    Read,
}

impl Kind {
    fn from_type(t: &str) -> Option<Kind> {
        Some(match t {
            "nick" => Kind::Nick,
            "join" => Kind::Join,
            "leave" => Kind::Leave,
            "message" => Kind::Message,
            "dm" => Kind::Dm,
            "typing" => Kind::Typing,
            "history" => Kind::History,
            "rooms" => Kind::Rooms,
            "search" => Kind::Search,
            "register" => Kind::Register,
            "login" => Kind::Login,
            "logout" => Kind::Logout,
            "passwd" => Kind::Passwd,
            "kick" => Kind::Kick,
            "ban" => Kind::Ban,
            "unban" => Kind::Unban,
            "mute" => Kind::Mute,
            "slow" => Kind::Slow,
            "moderator" => Kind::Moderator,
            "topic" => Kind::Topic,
            "delete" => Kind::Delete,
            "react" => Kind::React,
            "edit" => Kind::Edit,
            "dm_history" => Kind::DmHistory,
            "read" => Kind::Read,
            _ => return None,
        })
    }
}

fn invalid(field: &'static str, reason: Reason) -> ChatError {
    ChatError::Invalid { field, reason }
}

/// `room` or `with`, exactly one (`room` checked first): a `read` or a
/// `search` of a room or of the DM conversation with an account.
fn target(map: &mut Map<String, Value>) -> Result<Target, ChatError> {
    match (opt_room(map)?, nick_field(map, "with")?) {
        (Some(_), Some(_)) => Err(invalid("with", Reason::Excludes("room"))),
        (Some(r), None) => Ok(Target::Room(r)),
        (None, Some(w)) => Ok(Target::Dm(w)),
        (None, None) => Err(invalid("room", Reason::Missing)),
    }
}

/// An optional `room` (a `ban` or `unban` without one is server-wide).
fn opt_room(map: &mut Map<String, Value>) -> Result<Option<String>, ChatError> {
    match take(map, "room") {
        None => Ok(None),
        Some(Value::String(r)) if validate::valid_room(&r) => Ok(Some(r)),
        Some(Value::String(_)) => Err(invalid("room", Reason::Room)),
        Some(_) => Err(invalid("room", Reason::NotString)),
    }
}

/// Removes a field; `null` counts as absent.
fn take(map: &mut Map<String, Value>, field: &str) -> Option<Value> {
    match map.remove(field) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v),
    }
}

fn opt_string(
    map: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, ChatError> {
    match take(map, field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(field, Reason::NotString)),
    }
}

fn string(map: &mut Map<String, Value>, field: &'static str) -> Result<String, ChatError> {
    opt_string(map, field)?.ok_or(invalid(field, Reason::Missing))
}

fn room(map: &mut Map<String, Value>) -> Result<String, ChatError> {
    let r = string(map, "room")?;
    if validate::valid_room(&r) {
        Ok(r)
    } else {
        Err(invalid("room", Reason::Room))
    }
}

fn password(map: &mut Map<String, Value>, field: &'static str) -> Result<String, ChatError> {
    let p = string(map, field)?;
    let n = p.chars().count();
    if (validate::MIN_PASSWORD_CHARS..=validate::MAX_PASSWORD_CHARS).contains(&n) {
        Ok(p)
    } else {
        Err(invalid(field, Reason::Password))
    }
}

fn nick_field(
    map: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, ChatError> {
    match opt_string(map, field)? {
        Some(n) if !validate::valid_nick(&n) => Err(invalid(field, Reason::Nick)),
        other => Ok(other),
    }
}

/// A moderation reason: optional, a text of at most 200 characters.
fn reason(map: &mut Map<String, Value>) -> Result<Option<String>, ChatError> {
    match opt_string(map, "reason")? {
        Some(t) => {
            validate::check_text(&t, validate::MAX_QUERY_CHARS)
                .map_err(|e| invalid("reason", Reason::Text(e)))?;
            Ok(Some(t))
        }
        None => Ok(None),
    }
}

/// A session token: 64 hex digits (either case) for 32 bytes.
pub fn parse_token(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hex = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(hex(pair[0])? * 16 + hex(pair[1])?).ok()?;
    }
    Some(out)
}

/// A message's `id` (required, at least 1).
fn message_id(map: &mut Map<String, Value>) -> Result<u64, ChatError> {
    opt_int(map, "id", 1, validate::MAX_INT)?.ok_or(invalid("id", Reason::Missing))
}

fn text(map: &mut Map<String, Value>, max_chars: usize) -> Result<String, ChatError> {
    let t = string(map, "text")?;
    validate::check_text(&t, max_chars).map_err(|e| invalid("text", Reason::Text(e)))?;
    Ok(t)
}

/// An optional integer field in `min..=max` (`max` at most 2^53 − 1).
/// Only JSON integers count: `1.0` and `1e3` are floats to serde_json.
fn opt_int(
    map: &mut Map<String, Value>,
    field: &'static str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ChatError> {
    let Some(v) = take(map, field) else {
        return Ok(None);
    };
    let Value::Number(n) = v else {
        return Err(invalid(field, Reason::NotInteger));
    };
    let n = match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => u,
        // A negative integer: a JSON integer, but below every minimum.
        (None, Some(_)) => return Err(invalid(field, Reason::OutOfRange { min, max })),
        (None, None) => return Err(invalid(field, Reason::NotInteger)),
    };
    if n < min || n > max {
        return Err(invalid(field, Reason::OutOfRange { min, max }));
    }
    Ok(Some(n))
}

/// A `history` page (also `dm_history`'s): `before` is the protocol's;
/// `after` and `around` extend it. Exactly one of them: none is the
/// contract's missing `before`. Then `limit`.
fn page(map: &mut Map<String, Value>) -> Result<(Page, u64), ChatError> {
    let before = opt_int(map, "before", 1, validate::MAX_INT)?.map(Page::Before);
    let after = opt_int(map, "after", 0, validate::MAX_INT)?.map(Page::After);
    let around = opt_int(map, "around", 1, validate::MAX_INT)?.map(Page::Around);
    let mut page = None;
    for (field, p) in [("before", before), ("after", after), ("around", around)] {
        match (page, p) {
            (Some((first, _)), Some(_)) => {
                return Err(invalid(field, Reason::Excludes(first)));
            }
            (None, Some(p)) => page = Some((field, p)),
            _ => {}
        }
    }
    let (_, page) = page.ok_or(invalid("before", Reason::Missing))?;
    let limit = opt_int(map, "limit", 1, validate::MAX_HISTORY_LIMIT)?
        .unwrap_or(validate::DEFAULT_HISTORY_LIMIT);
    Ok((page, limit))
}

/// Parses one client text message, applying the contract's precedence:
/// `bad_json`, `unknown_type`, then `invalid` (`ref` first, then the fields in
/// the contract's order).
pub fn parse(msg: &[u8], max_text_chars: usize) -> Result<Parsed, Rejected> {
    let bad = |error| Rejected { r#ref: None, error };
    // serde_json rejects lone surrogate escapes when building a `String`.
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(msg) else {
        return Err(bad(ChatError::BadJson));
    };
    let kind = match map.get("type") {
        Some(Value::String(t)) => Kind::from_type(t),
        _ => return Err(bad(ChatError::BadJson)),
    };
    let r#ref = match opt_string(&mut map, "ref") {
        Ok(Some(r)) if r.len() > validate::MAX_REF_BYTES => Err(invalid("ref", Reason::RefTooLong)),
        other => other,
    };
    let Some(kind) = kind else {
        return Err(Rejected {
            r#ref: r#ref.ok().flatten(),
            error: ChatError::UnknownType,
        });
    };
    let r#ref = r#ref.map_err(bad)?;
    match request(kind, &mut map, max_text_chars) {
        Ok(request) => Ok(Parsed { r#ref, request }),
        Err(error) => Err(Rejected { r#ref, error }),
    }
}

fn request(
    kind: Kind,
    map: &mut Map<String, Value>,
    max_text: usize,
) -> Result<Request, ChatError> {
    Ok(match kind {
        Kind::Nick => {
            let nick = string(map, "nick")?;
            if !validate::valid_nick(&nick) {
                return Err(invalid("nick", Reason::Nick));
            }
            Request::Nick { nick }
        }
        Kind::Join => Request::Join {
            room: room(map)?,
            since: opt_int(map, "since", 0, validate::MAX_INT)?,
            epoch: opt_string(map, "epoch")?,
        },
        Kind::Leave => Request::Leave { room: room(map)? },
        Kind::Message => Request::Message {
            room: room(map)?,
            text: text(map, max_text)?,
            reply_to: opt_int(map, "reply_to", 1, validate::MAX_INT)?,
            image: match opt_string(map, "image")? {
                None => None,
                Some(s) => {
                    Some(super::uploads::parse_id(&s).ok_or(invalid("image", Reason::Image))?)
                }
            },
        },
        Kind::React => Request::React {
            room: room(map)?,
            id: message_id(map)?,
            emoji: match take(map, "emoji") {
                None => return Err(invalid("emoji", Reason::Missing)),
                Some(Value::String(e)) => super::edits::emoji(&e)
                    .map(|i| super::edits::REACTIONS[i])
                    .ok_or(invalid("emoji", Reason::Emoji))?,
                Some(_) => return Err(invalid("emoji", Reason::NotString)),
            },
            on: match take(map, "on") {
                None => None,
                Some(Value::Bool(b)) => Some(b),
                Some(_) => return Err(invalid("on", Reason::NotBool)),
            },
        },
        Kind::Edit => Request::Edit {
            room: room(map)?,
            id: message_id(map)?,
            text: text(map, max_text)?,
        },
        Kind::Dm => Request::Dm {
            to: string(map, "to")?,
            text: text(map, max_text)?,
        },
        Kind::Typing => {
            let room = room(map)?;
            let active = match take(map, "active") {
                Some(Value::Bool(b)) => b,
                Some(_) => return Err(invalid("active", Reason::NotBool)),
                None => return Err(invalid("active", Reason::Missing)),
            };
            Request::Typing { room, active }
        }
        Kind::History => {
            let room = room(map)?;
            let (page, limit) = page(map)?;
            Request::History { room, page, limit }
        }
        Kind::Rooms => Request::Rooms,
        Kind::Search => {
            let target = target(map)?;
            let query = string(map, "query")?;
            if validate::check_text(&query, validate::MAX_QUERY_CHARS).is_err() {
                return Err(invalid("query", Reason::Query));
            }
            let before = opt_int(map, "before", 1, validate::MAX_INT)?;
            let limit = opt_int(map, "limit", 1, validate::MAX_HISTORY_LIMIT)?
                .unwrap_or(validate::DEFAULT_SEARCH_LIMIT);
            let context = opt_int(map, "context", 0, validate::MAX_SEARCH_CONTEXT)?.unwrap_or(0);
            Request::Search {
                target,
                query,
                before,
                limit,
                context,
            }
        }
        Kind::Register => Request::Register {
            nick: nick_field(map, "nick")?,
            password: password(map, "password")?,
        },
        Kind::Login => match opt_string(map, "token")? {
            Some(t) => Request::Login(Credentials::Token(
                parse_token(&t).ok_or(invalid("token", Reason::Token))?,
            )),
            None => {
                let account =
                    nick_field(map, "account")?.ok_or(invalid("account", Reason::Missing))?;
                Request::Login(Credentials::Password {
                    account,
                    password: password(map, "password")?,
                })
            }
        },
        Kind::Logout => Request::Logout {
            all: match take(map, "all") {
                None => false,
                Some(Value::Bool(b)) => b,
                Some(_) => return Err(invalid("all", Reason::NotBool)),
            },
        },
        Kind::Passwd => Request::Passwd {
            password: password(map, "password")?,
            new_password: password(map, "new_password")?,
        },
        Kind::Kick => Request::Kick {
            room: room(map)?,
            nick: nick_field(map, "nick")?.ok_or(invalid("nick", Reason::Missing))?,
            reason: reason(map)?,
        },
        Kind::Mute => Request::Mute {
            room: room(map)?,
            nick: nick_field(map, "nick")?.ok_or(invalid("nick", Reason::Missing))?,
            duration: opt_int(map, "duration", 1, validate::MAX_INT / 1000)?
                .ok_or(invalid("duration", Reason::Missing))?,
            reason: reason(map)?,
        },
        Kind::Topic => {
            let room = room(map)?;
            let topic = string(map, "topic")?;
            // Empty clears it; else the text rules, at most 200 characters.
            if !topic.is_empty() {
                validate::check_text(&topic, validate::MAX_QUERY_CHARS)
                    .map_err(|e| invalid("topic", Reason::Text(e)))?;
            }
            Request::Topic { room, topic }
        }
        Kind::Delete => Request::Delete {
            room: room(map)?,
            id: message_id(map)?,
        },
        Kind::Moderator => Request::Moderator {
            room: room(map)?,
            nick: nick_field(map, "nick")?.ok_or(invalid("nick", Reason::Missing))?,
            on: match take(map, "on") {
                None => true,
                Some(Value::Bool(b)) => b,
                Some(_) => return Err(invalid("on", Reason::NotBool)),
            },
        },
        Kind::Slow => Request::Slow {
            room: room(map)?,
            interval: opt_int(map, "interval", 0, 24 * 60 * 60)?
                .ok_or(invalid("interval", Reason::Missing))?,
        },
        Kind::DmHistory => {
            let with = nick_field(map, "with")?.ok_or(invalid("with", Reason::Missing))?;
            let (page, limit) = page(map)?;
            Request::DmHistory { with, page, limit }
        }
        Kind::Read => {
            let target = target(map)?;
            let id =
                opt_int(map, "id", 0, validate::MAX_INT)?.ok_or(invalid("id", Reason::Missing))?;
            Request::Read { target, id }
        }
        Kind::Unban => Request::Unban {
            room: opt_room(map)?,
            nick: nick_field(map, "nick")?.ok_or(invalid("nick", Reason::Missing))?,
        },
        Kind::Ban => {
            let room = opt_room(map)?;
            Request::Ban {
                room,
                nick: nick_field(map, "nick")?.ok_or(invalid("nick", Reason::Missing))?,
                duration: opt_int(map, "duration", 1, validate::MAX_INT / 1000)?,
                ip: match take(map, "ip") {
                    None => false,
                    Some(Value::Bool(b)) => b,
                    Some(_) => return Err(invalid("ip", Reason::NotBool)),
                },
                reason: reason(map)?,
            }
        }
    })
}

// ---- server -> client ----

/// A `message` object: broadcast, acknowledgement (with `ref`) and history entry.
#[derive(Serialize)]
pub struct MsgOut<'a> {
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub room: &'a str,
    pub id: u64,
    pub from: &'a str,
    pub text: &'a str,
    pub ts: u64,
    /// Extension (moderation): a deleted message's tombstone (its `text`
    /// is then empty; a real message never has an empty text).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Extension (accounts): the sender was logged in to the account of
    /// the nick it was sent under, live and in history alike: read from
    /// the stored author (`a:ACCOUNT` and `from` that account's nick).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub registered: bool,
    /// Extension (replies): the id of the message this one answers, and
    /// a quote of it (for a client that does not hold it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyOut<'a>>,
    /// Extension (edits): wall-clock ms of the last edit; absent: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited: Option<u64>,
    /// Extension (reactions): by emoji, in the server's order; absent: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionOut<'a>>,
    /// Extension (images): the upload it shows, served at `/uploads/ID`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<&'a str>,
}

/// The quote of the message a reply answers: its sender and the start of
/// its text (empty, with `deleted`, once it is deleted).
#[derive(Serialize)]
pub struct ReplyOut<'a> {
    pub from: &'a str,
    pub text: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// One emoji's reactions to a message: how many, and who.
#[derive(Serialize)]
pub struct ReactionOut<'a> {
    pub emoji: &'static str,
    pub count: usize,
    pub nicks: Vec<&'a str>,
}

/// A `search` hit: the message (a room's `message`, or a DM
/// conversation's kept `dm`), and with `context` the kept messages just
/// before and after it (oldest first), present only when asked for.
#[derive(Serialize)]
pub struct HitOut<M> {
    #[serde(flatten)]
    pub msg: M,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_before: Option<Vec<M>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_after: Option<Vec<M>>,
}

impl<'a> MsgOut<'a> {
    pub fn new(room: &'a str, m: &'a Msg, r#ref: Option<&'a str>) -> MsgOut<'a> {
        MsgOut {
            ty: "message",
            room,
            id: m.id,
            from: &m.from,
            text: &m.text,
            ts: m.ts,
            deleted: m.text.is_empty(),
            registered: !m.text.is_empty() && sent_registered(m),
            reply_to: m
                .extra
                .as_ref()
                .and_then(|x| x.reply.as_ref())
                .map(|q| q.id),
            reply: m
                .extra
                .as_ref()
                .and_then(|x| x.reply.as_ref())
                .map(|q| ReplyOut {
                    from: &q.from,
                    text: &q.text,
                    deleted: q.text.is_empty(),
                }),
            edited: m.extra.as_ref().map(|x| x.edited).filter(|&t| t > 0),
            reactions: m
                .extra
                .as_ref()
                .map(|x| super::edits::reactions_out(&x.reactions))
                .unwrap_or_default(),
            image: m.image.map(|i| super::uploads::id_text(i.get())),
            r#ref,
        }
    }
}

/// Whether `m` was sent under its author's own account nick: what
/// [`super::Chat::verified`] said of its sender when it posted (the author
/// key is `a:` and the account key, lowercase; the nick matched it
/// ignoring ASCII case). A guest's (`g:…`) and older rows without an
/// author (`""`) are not.
fn sent_registered(m: &Msg) -> bool {
    m.author
        .strip_prefix("a:")
        .is_some_and(|key| m.from.eq_ignore_ascii_case(key))
}

/// `joined`'s `roles`: (nick, role) pairs in the order of `members`,
/// written as one JSON object keyed by nick.
pub struct RolesOut<'a>(pub Vec<(&'a str, &'static str)>);

impl RolesOut<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for RolesOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (nick, role) in &self.0 {
            m.serialize_entry(nick, role)?;
        }
        m.end()
    }
}

/// The limits announced in `welcome` (see docs/protocol.md, "Limits in
/// `welcome`").
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Limits {
    /// Longest `text`, in Unicode scalar values.
    pub text_chars: usize,
    /// Longest client message in bytes (all fragments); larger closes 1009.
    pub message_bytes: usize,
    /// Token bucket size; 0: no rate limit.
    pub rate_burst: u32,
    /// Tokens refilled per second.
    pub rate_per_sec: u32,
    /// Rooms one connection may be in.
    pub rooms_per_conn: usize,
}

/// An entry of `rooms`.
#[derive(Serialize)]
pub struct RoomInfo<'a> {
    pub name: &'a str,
    pub members: usize,
}

/// Every other server frame. `ref` is serialised only when present.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Out<'a> {
    Welcome {
        nick: &'a str,
        motd: &'a str,
        protocol: u32,
        /// Extension (accounts): `closed` when only operators register
        /// accounts (absent: open).
        #[serde(skip_serializing_if = "Option::is_none")]
        registration: Option<&'static str>,
        /// Extension: `true` when `join` and `dm` need a login (absent: no).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        require_account: bool,
        /// The server's limits, so that a client checks what it sends
        /// before sending it (an extension: new field only).
        limits: Limits,
    },
    /// Extension: a login (or registration) succeeded.
    Session {
        account: &'a str,
        op: bool,
        /// 64 hex digits; log in with it on reconnect.
        token: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    /// Extension: an operator registered an account for someone else.
    Registered {
        account: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    /// Extension: an operator's action, to the room's members (and the
    /// operator, with `ref`).
    Moderation {
        action: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        nick: &'a str,
        by: &'a str,
        reason: &'a str,
        /// Bans and mutes: wall-clock ms when it ends; 0: for good.
        #[serde(skip_serializing_if = "Option::is_none")]
        until: Option<u64>,
        /// Slow mode: seconds between one user's messages (0: off).
        #[serde(skip_serializing_if = "Option::is_none")]
        interval: Option<u64>,
        /// `delete`: the id of the message deleted.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    /// Extension: this connection is no longer logged in (`logout`, or its
    /// session ended elsewhere: `logout` with `all`, a password change).
    LoggedOut {
        account: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    Nick {
        old: &'a str,
        nick: &'a str,
        /// Extension (accounts): the new nick is its holder's account.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        registered: bool,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    /// Extension (accounts): a member's nick became registered (a login
    /// or registration that kept the nick it had), to those sharing a room.
    Member { nick: &'a str, registered: bool },
    /// Extension (moderation): this connection's role in a joined room
    /// changed (`operator`, `owner`, `moderator` or `member`).
    Role { room: &'a str, role: &'a str },
    /// Extension (moderation): a member's role in a room changed, to the
    /// room's other members (the member itself hears `role`).
    Rank {
        room: &'a str,
        nick: &'a str,
        role: &'a str,
    },
    Joined {
        room: &'a str,
        epoch: &'a str,
        members: Vec<&'a str>,
        /// Extension (accounts): the members holding their account's nick,
        /// in the order of `members` (absent when none).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        registered: Vec<&'a str>,
        /// Extension (moderation): the members who may moderate the room
        /// (operators, its owner, its moderators), in the order of
        /// `members` (absent when none).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        moderators: Vec<&'a str>,
        /// Extension (moderation): each of `moderators` with its rank
        /// (`operator`, `owner`, `moderator`), so that a client shows
        /// kick, mute and ban only where its user outranks the member.
        #[serde(skip_serializing_if = "RolesOut::is_empty")]
        roles: RolesOut<'a>,
        history: Vec<MsgOut<'a>>,
        complete: bool,
        /// Extension (moderation): the room's topic, when it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        /// Extension (moderation): your role in the room, when you have
        /// one (`operator`, `owner`, `moderator`; absent: a plain member).
        #[serde(skip_serializing_if = "Option::is_none")]
        role: Option<&'static str>,
        /// Extension (read positions): the account's last-read id of the
        /// room (logged-in connections only).
        #[serde(skip_serializing_if = "Option::is_none")]
        read: Option<u64>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    Left {
        room: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    Presence {
        room: &'a str,
        nick: &'a str,
        event: &'static str,
        /// Extension (accounts): a joining member holding its account's
        /// nick.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        registered: bool,
        /// Extension (moderation): a joining member's role in the room,
        /// when it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        role: Option<&'static str>,
    },
    Dm {
        from: &'a str,
        to: &'a str,
        text: &'a str,
        ts: u64,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    Typing {
        room: &'a str,
        nick: &'a str,
        active: bool,
    },
    History {
        room: &'a str,
        messages: Vec<MsgOut<'a>>,
        complete: bool,
        /// Extension, only in answers to `after` and `around`: the page
        /// reaches the room's newest message.
        #[serde(skip_serializing_if = "Option::is_none")]
        latest: Option<bool>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    Search {
        room: &'a str,
        query: &'a str,
        /// Newest first.
        messages: Vec<HitOut<MsgOut<'a>>>,
        /// No older match exists.
        complete: bool,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    Rooms {
        rooms: Vec<RoomInfo<'a>>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    /// Extension (reactions): `nick` reacted to message `id` with `emoji`
    /// (`on`), or took it back; `count`: how many now have.
    Reaction {
        room: &'a str,
        id: u64,
        emoji: &'static str,
        nick: &'a str,
        on: bool,
        count: usize,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    /// Extension (edits): message `id` has a new text, edited at `edited`.
    Edited {
        room: &'a str,
        id: u64,
        text: &'a str,
        edited: u64,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
    Error {
        code: &'static str,
        message: String,
        /// Extension: `login_limited` says when to try again (seconds).
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a str>,
    },
}

/// Serialises `v`: the payload of one server text message, built once and
/// shared by every recipient. The server frames it (plainly, or compressed
/// for permessage-deflate peers), so the chat never writes WebSocket bytes.
pub fn frame<T: Serialize>(v: &T) -> Rc<[u8]> {
    // Serialise into a buffer kept across calls, then copy into one exact
    // allocation: a payload costs one allocation however long its member
    // list or history.
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        // Only strings, integers, booleans and arrays: serialising cannot fail,
        // but a failure must still not panic.
        if let Err(e) = serde_json::to_writer(&mut *buf, v) {
            log::error!("chat: cannot serialise a server frame: {e}");
            buf.clear();
            buf.extend_from_slice(
                br#"{"type":"error","code":"internal","message":"internal error"}"#,
            );
        }
        let payload: Rc<[u8]> = Rc::from(&buf[..]);
        // A rare huge payload should not pin its memory for good.
        if buf.capacity() > 1 << 20 {
            *buf = Vec::new();
        }
        payload
    })
}
