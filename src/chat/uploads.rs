//! Uploaded images (extension: images), sans-IO like the rest of the chat.
//!
//! The server reads an upload over HTTP, sniffs its type and asks the chat
//! ([`Chat::upload_admit`] once the head is read, [`Chat::upload_add`] once
//! the body is): the chat keeps the accounts (who may upload), the quota,
//! the rate and the total budget, and says what to store
//! ([`UploadRecord`]); the bytes themselves never pass through the chat. A
//! `send` may then name the upload (`image`): it must exist, be the
//! sender's and not be shown by another message. When that message is
//! deleted (a tombstone), dropped by retention, or its room forgotten, the
//! upload is deleted with it; an upload no message shows expires after
//! [`UploadLimits::ttl_ms`]. See docs/protocol.md, "Images".

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU64;

use super::durable::Record;
use super::room::RoomName;
use super::{Chat, ConnId, Now};

/// The limits of [`Chat`]'s uploads (all from flags).
#[derive(Clone, Copy, Debug)]
pub struct UploadLimits {
    /// Uploads are accepted at all (`--no-uploads` turns them off).
    pub enabled: bool,
    /// Largest upload in bytes (`--max-upload-size`).
    pub max_size: u64,
    /// All uploads together, in bytes (`--max-upload-disk`).
    pub max_total: u64,
    /// One account's uploads together, in bytes (`--upload-quota`).
    pub per_account: u64,
    /// Uploads one account may make per minute (`--upload-rate`); 0: no limit.
    pub per_minute: u32,
    /// How long an upload no message shows is kept, in ms (`--upload-ttl`).
    pub ttl_ms: u64,
}

impl Default for UploadLimits {
    fn default() -> UploadLimits {
        UploadLimits {
            enabled: true,
            max_size: 5 << 20,
            max_total: 1 << 30,
            per_account: 100 << 20,
            per_minute: 10,
            ttl_ms: 3_600_000,
        }
    }
}

/// What the store must do for uploads (see [`Record::Upload`]).
#[derive(Clone, Debug)]
pub enum UploadRecord {
    /// A new upload: the server adds its bytes to the commit.
    Put {
        id: u64,
        owner: Box<str>,
        mime: &'static str,
        created: u64,
    },
    /// The upload and its bytes are gone.
    Delete { id: u64 },
}

/// Why an upload is refused (each has its HTTP status, see the server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadRefusal {
    /// `--no-uploads`.
    Disabled,
    /// No session of a registered account.
    Unauthenticated,
    /// Over `--max-upload-size`.
    TooLarge,
    /// The account's quota is used up.
    Quota,
    /// Too many uploads this minute: try again in this many ms.
    Rate(u64),
    /// The server's budget for uploads is used up.
    Full,
    /// The account is banned from the server.
    Banned,
}

/// One upload, as the chat keeps it (the bytes are in the store).
#[derive(Clone, Debug)]
pub(super) struct Upload {
    owner: Box<str>,
    mime: &'static str,
    bytes: u64,
    created: u64,
    /// Committed: it may be served and attached.
    stored: bool,
    /// The message showing it: (room, message id).
    attached: Option<(RoomName, u64)>,
}

#[derive(Default)]
pub(super) struct Uploads {
    by_id: HashMap<u64, Upload>,
    /// Bytes per owner (account key).
    per_owner: HashMap<Box<str>, u64>,
    total: u64,
    /// Each account's upload times (wall ms) within the last minute.
    recent: HashMap<Box<str>, VecDeque<u64>>,
    /// Added this turn, awaiting their commit.
    pending: Vec<u64>,
}

const MINUTE_MS: u64 = 60_000;

/// The sniffed types the server serves, by name (a `&'static str` keeps
/// [`Upload`] small and the type closed).
pub fn known_mime(mime: &str) -> Option<&'static str> {
    ["image/png", "image/jpeg", "image/gif", "image/webp"]
        .into_iter()
        .find(|m| *m == mime)
}

impl Uploads {
    fn insert(&mut self, id: u64, u: Upload) {
        *self.per_owner.entry(u.owner.clone()).or_default() += u.bytes;
        self.total += u.bytes;
        self.by_id.insert(id, u);
    }

    fn remove(&mut self, id: u64) -> Option<Upload> {
        let u = self.by_id.remove(&id)?;
        self.total = self.total.saturating_sub(u.bytes);
        if let Some(b) = self.per_owner.get_mut(&u.owner) {
            *b = b.saturating_sub(u.bytes);
            if *b == 0 {
                self.per_owner.remove(&u.owner);
            }
        }
        Some(u)
    }
}

impl Chat {
    /// Loads the stored uploads (at start, before any connection).
    pub fn restore_uploads(&mut self, rows: Vec<crate::store::UploadRow>) {
        for r in rows {
            let Some(mime) = known_mime(&r.mime) else {
                continue;
            };
            let attached = r.attached.map(|(room, id)| (RoomName::new(&room), id));
            self.uploads.insert(
                r.id,
                Upload {
                    owner: r.owner.into_boxed_str(),
                    mime,
                    bytes: r.bytes,
                    created: r.created,
                    stored: true,
                    attached,
                },
            );
        }
    }

    /// Uploads kept, and their bytes (`/metrics`, tests).
    pub fn upload_totals(&self) -> (usize, u64) {
        (self.uploads.by_id.len(), self.uploads.total)
    }

    /// The account of a session token, when it may upload.
    pub fn upload_account(&self, token: &[u8; 32]) -> Option<String> {
        self.session_account(token)
    }

    /// Whether `account` may upload `len` bytes now (the request head is
    /// read, the body not yet): takes one from the account's rate.
    pub fn upload_admit(&mut self, account: &str, len: u64, now: Now) -> Result<(), UploadRefusal> {
        // A server ban keeps its session (a ban ends no session) but not
        // the right to fill the disk.
        if self.check_account_ban(account, now).is_err() {
            return Err(UploadRefusal::Banned);
        }
        self.upload_room_for(account, len)?;
        let per_minute = self.cfg.uploads.per_minute as usize;
        if per_minute == 0 {
            return Ok(());
        }
        let times = self.uploads.recent.entry(account.into()).or_default();
        while times.front().is_some_and(|&t| t + MINUTE_MS <= now.wall_ms) {
            times.pop_front();
        }
        if times.len() >= per_minute {
            let oldest = times.front().copied().unwrap_or(now.wall_ms);
            return Err(UploadRefusal::Rate(
                (oldest + MINUTE_MS).saturating_sub(now.wall_ms).max(1),
            ));
        }
        times.push_back(now.wall_ms);
        Ok(())
    }

    fn upload_room_for(&self, account: &str, len: u64) -> Result<(), UploadRefusal> {
        let l = &self.cfg.uploads;
        if !l.enabled {
            return Err(UploadRefusal::Disabled);
        }
        if len > l.max_size {
            return Err(UploadRefusal::TooLarge);
        }
        let mine = self.uploads.per_owner.get(account).copied().unwrap_or(0);
        if mine + len > l.per_account {
            return Err(UploadRefusal::Quota);
        }
        if self.uploads.total + len > l.max_total {
            return Err(UploadRefusal::Full);
        }
        Ok(())
    }

    /// The body is read and is an image of type `mime`: records upload
    /// `id` (random, chosen by the server; `false` if taken) for the
    /// turn's commit. [`Chat::upload_committed`] or
    /// [`Chat::upload_failed`] follows.
    pub fn upload_add(
        &mut self,
        id: u64,
        account: &str,
        len: u64,
        mime: &'static str,
        now: Now,
    ) -> Result<bool, UploadRefusal> {
        self.upload_room_for(account, len)?;
        if id == 0 || self.uploads.by_id.contains_key(&id) {
            return Ok(false);
        }
        self.uploads.insert(
            id,
            Upload {
                owner: account.into(),
                mime,
                bytes: len,
                created: now.wall_ms,
                stored: false,
                attached: None,
            },
        );
        self.uploads.pending.push(id);
        self.records.push(Record::Upload(UploadRecord::Put {
            id,
            owner: account.into(),
            mime,
            created: now.wall_ms,
        }));
        Ok(true)
    }

    /// The turn's uploads were committed: they may be served and shown.
    pub fn upload_committed(&mut self) {
        for id in std::mem::take(&mut self.uploads.pending) {
            if let Some(u) = self.uploads.by_id.get_mut(&id) {
                u.stored = true;
            }
        }
    }

    /// The turn's commit failed: its uploads never existed.
    pub fn upload_failed(&mut self) {
        for id in std::mem::take(&mut self.uploads.pending) {
            self.uploads.remove(id);
        }
    }

    /// The type of stored upload `id`, if it may be served.
    pub fn upload_mime(&self, id: u64) -> Option<&'static str> {
        self.uploads
            .by_id
            .get(&id)
            .filter(|u| u.stored)
            .map(|u| u.mime)
    }

    /// `send` with `image`: the upload exists, is `conn`'s account's, and
    /// no other message shows it. Marks it shown by (room, id) when the
    /// message is posted ([`Chat::attach_image`]).
    pub(super) fn check_image(&self, conn: ConnId, image: u64) -> Result<NonZeroU64, ()> {
        let account = self.account_of(conn).ok_or(())?;
        let u = self.uploads.by_id.get(&image).ok_or(())?;
        if !u.stored || u.attached.is_some() || *u.owner != *account {
            return Err(());
        }
        NonZeroU64::new(image).ok_or(())
    }

    pub(super) fn attach_image(&mut self, image: Option<NonZeroU64>, room: &RoomName, id: u64) {
        if let Some(u) = image.and_then(|i| self.uploads.by_id.get_mut(&i.get())) {
            u.attached = Some((room.clone(), id));
        }
    }

    /// A message that was to show `image` was refused: the upload is free
    /// again.
    pub(super) fn detach_image(&mut self, image: Option<NonZeroU64>) {
        if let Some(u) = image.and_then(|i| self.uploads.by_id.get_mut(&i.get())) {
            u.attached = None;
        }
    }

    /// Message `id` of `room` is deleted (tombstone): its upload goes with
    /// it, in the same commit. Returns the upload's id, if it had one.
    pub(super) fn delete_image_of(&mut self, room: &str, id: u64) -> Option<u64> {
        let image = self
            .uploads
            .by_id
            .iter()
            .find(|(_, u)| {
                u.attached
                    .as_ref()
                    .is_some_and(|(r, m)| **r == *room && *m == id)
            })
            .map(|(i, _)| *i)?;
        self.uploads.remove(image);
        self.records
            .push(Record::Upload(UploadRecord::Delete { id: image }));
        Some(image)
    }

    /// Messages of `room` below `first_id` are gone (retention, or with
    /// `u64::MAX` the whole room): their uploads go too.
    pub(super) fn drop_images_below(&mut self, room: &str, first_id: u64) {
        let gone: Vec<u64> = self
            .uploads
            .by_id
            .iter()
            .filter(|(_, u)| {
                u.attached
                    .as_ref()
                    .is_some_and(|(r, m)| **r == *room && *m < first_id)
            })
            .map(|(i, _)| *i)
            .collect();
        for id in gone {
            self.uploads.remove(id);
            self.records
                .push(Record::Upload(UploadRecord::Delete { id }));
        }
    }

    /// Uploads no message shows, older than the TTL, are deleted; rate
    /// windows that have passed are forgotten. From `tick`.
    pub(super) fn expire_uploads(&mut self, now: Now) {
        let ttl = self.cfg.uploads.ttl_ms;
        // Without a store, a message that left the in-memory history is
        // gone for good, and its image with it.
        let durable = self.cfg.durable;
        let kept = |room: &str, id: u64| {
            self.room_index(room)
                .and_then(|i| self.room(i))
                .is_some_and(|r| r.keeps(id))
        };
        let expired: Vec<u64> = self
            .uploads
            .by_id
            .iter()
            .filter(|(_, u)| match &u.attached {
                None => u.stored && u.created + ttl <= now.wall_ms,
                Some((room, id)) => !durable && !kept(room, *id),
            })
            .map(|(i, _)| *i)
            .collect();
        for id in expired {
            self.uploads.remove(id);
            self.records
                .push(Record::Upload(UploadRecord::Delete { id }));
        }
        self.uploads
            .recent
            .retain(|_, t| t.back().is_some_and(|&t| t + MINUTE_MS > now.wall_ms));
    }
}

/// The image type of `data` by its magic bytes, or `None`: PNG, JPEG, GIF
/// and WebP only (SVG can carry scripts and is never accepted).
pub fn sniff(data: &[u8]) -> Option<&'static str> {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if data.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if data.len() >= 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// An upload id as it appears in URLs and messages: 16 hex digits.
pub fn id_text(id: u64) -> String {
    format!("{id:016x}")
}

/// The id of [`id_text`], or `None`.
pub fn parse_id(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok().filter(|&i| i != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_the_four_types_only() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff(&[0xff, 0xd8, 0xff, 0xe0]), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a...."), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"<svg xmlns='http://www.w3.org/2000/svg'/>"), None);
        assert_eq!(sniff(b"<html><script>"), None);
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVE"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn ids_round_trip() {
        assert_eq!(parse_id(&id_text(0x1234)), Some(0x1234));
        assert_eq!(parse_id("0000000000000000"), None);
        assert_eq!(parse_id("123"), None);
        assert_eq!(parse_id("zzzzzzzzzzzzzzzz"), None);
    }
}
