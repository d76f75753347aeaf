//! Images over HTTP (extension: images; docs/protocol.md, "Images"):
//! `POST /upload` reads a body of at most `--max-upload-size`, sniffs it,
//! and stores it with the turn's commit before answering 201; `GET
//! /uploads/ID` serves it back with its sniffed type and headers that keep
//! a browser from running anything in it. The chat decides who may upload
//! and how much ([`crate::chat::uploads`]); the bytes stay here and in the
//! store.

use std::collections::HashMap;

use log::warn;

use super::queue::Chunk;
use super::{Phase, Response, Route, Server, http, ms};
use crate::chat::uploads::{self, UploadRefusal};
use crate::ws::handshake::Request;

/// An upload whose head is read: its body is being received, or once
/// complete waits for the turn's commit.
#[derive(Debug)]
pub(super) struct Receiving {
    account: String,
    /// The body's length (`Content-Length`).
    need: usize,
    body: Vec<u8>,
    /// Bytes behind the body (the next request), at most --max-head-size.
    next: Vec<u8>,
    keep_alive: bool,
    /// Requests answered on this connection, this one included.
    served: u32,
    /// The body is complete and `id` is in the turn's commit.
    id: Option<u64>,
}

/// The turn's complete uploads: the bytes each commit stores.
#[derive(Default)]
pub(super) struct Committing {
    blobs: HashMap<u64, Vec<u8>>,
    waiting: Vec<(usize, u64)>,
}

impl Committing {
    pub fn data(&self, id: u64) -> &[u8] {
        self.blobs.get(&id).map_or(&[], Vec::as_slice)
    }
}

/// The fields of an upload's head (the handshake parser skips them).
#[derive(Default)]
struct Fields<'a> {
    content_length: Vec<&'a [u8]>,
    transfer_encoding: bool,
    authorization: Option<&'a [u8]>,
}

fn fields(head: &[u8]) -> Fields<'_> {
    let mut headers = [httparse::EMPTY_HEADER; crate::ws::handshake::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let mut f = Fields::default();
    if req.parse(head).is_err() {
        f.transfer_encoding = true; // unreachable after Request::parse: refuse
        return f;
    }
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            f.content_length.push(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            f.transfer_encoding = true;
        } else if h.name.eq_ignore_ascii_case("authorization") {
            f.authorization = Some(h.value);
        }
    }
    f
}

/// `Authorization: Bearer <64 hex digits>`: a session token.
fn bearer(value: Option<&[u8]>) -> Option<[u8; 32]> {
    let v = std::str::from_utf8(value?).ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim().as_bytes();
    if token.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in token.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// The length of a body, from every `Content-Length` (RFC 9112 §6.3: a
/// list of equal values counts as one; anything else is malformed).
fn content_length(values: &[&[u8]]) -> Result<Option<u64>, ()> {
    let mut len = None;
    for v in values {
        for part in v.split(|&b| b == b',') {
            let t = part.trim_ascii();
            if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n: u64 = std::str::from_utf8(t)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(())?;
            if len.is_some_and(|l| l != n) {
                return Err(());
            }
            len = Some(n);
        }
    }
    Ok(len)
}

fn refusal(r: UploadRefusal) -> Route {
    let (status, reason, extra) = match r {
        UploadRefusal::Disabled => (
            404,
            "uploads are off on this server".to_string(),
            String::new(),
        ),
        UploadRefusal::Unauthenticated => (
            401,
            "log in to upload images".to_string(),
            "WWW-Authenticate: Bearer\r\n".to_string(),
        ),
        UploadRefusal::TooLarge => (413, "the image is too large".to_string(), String::new()),
        UploadRefusal::Quota => (
            429,
            "your upload quota is used up; delete some images first".to_string(),
            String::new(),
        ),
        UploadRefusal::Rate(wait_ms) => {
            let s = wait_ms.div_ceil(1000).max(1);
            (
                429,
                format!("too many uploads; try again in {s} s"),
                format!("Retry-After: {s}\r\n"),
            )
        }
        UploadRefusal::Full => (
            507,
            "the server's space for images is full".to_string(),
            String::new(),
        ),
        UploadRefusal::Banned => (
            403,
            "this account is banned from the server".to_string(),
            String::new(),
        ),
    };
    Route::Respond(http::error(status, &reason, &extra), None)
}

impl Server {
    /// `/upload` and `/uploads/ID` (the Host and client checks are done).
    pub(super) fn route_uploads(&mut self, req: &Request<'_>, head: &[u8]) -> Option<Route> {
        let path = req.path();
        if path == "/upload" {
            return Some(self.route_upload(req, head));
        }
        let id = path.strip_prefix("/uploads/")?;
        Some(self.route_uploaded(req, head, id))
    }

    fn route_upload(&mut self, req: &Request<'_>, head: &[u8]) -> Route {
        if !self.chat_uploads_enabled() {
            return refusal(UploadRefusal::Disabled);
        }
        if req.method != "POST" {
            return Route::Respond(http::error(405, "use POST", "Allow: POST\r\n"), None);
        }
        if !http::origin_allowed(req.origin, req.host, &self.cfg.allow_origin) {
            return Route::Respond(http::error(403, "origin not allowed", ""), None);
        }
        let f = fields(head);
        if f.transfer_encoding {
            // Chunked bodies are not read: a length is required up front,
            // so that the limits apply before a byte is buffered.
            return Route::Respond(
                http::error(411, "send the image with a Content-Length", ""),
                None,
            );
        }
        let len = match content_length(&f.content_length) {
            Ok(Some(0)) => return Route::Respond(http::error(400, "the body is empty", ""), None),
            Ok(Some(n)) => n,
            Ok(None) => {
                return Route::Respond(
                    http::error(411, "send the image with a Content-Length", ""),
                    None,
                );
            }
            Err(()) => {
                return Route::Respond(http::error(400, "malformed Content-Length", ""), None);
            }
        };
        let Some(account) = bearer(f.authorization).and_then(|t| self.chat.upload_account(&t))
        else {
            return refusal(UploadRefusal::Unauthenticated);
        };
        if len > self.cfg.max_upload_size as u64 {
            return refusal(UploadRefusal::TooLarge);
        }
        let in_flight = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Upload(_)))
            .count();
        if in_flight >= self.cfg.max_uploads_in_flight as usize {
            return Route::Respond(
                http::error(
                    503,
                    "too many uploads at once; try again",
                    "Retry-After: 2\r\n",
                ),
                None,
            );
        }
        let now = self.chat_now();
        if let Err(r) = self.chat.upload_admit(&account, len, now) {
            return refusal(r);
        }
        let keep_alive = http::persistent(req.minor_version, req.connection);
        let need = usize::try_from(len).unwrap_or(usize::MAX);
        Route::Body(Box::new(Receiving {
            account,
            need,
            // Bounded by --max-upload-size and --max-uploads-in-flight.
            body: Vec::with_capacity(need),
            next: Vec::new(),
            keep_alive,
            served: 0,
            id: None,
        }))
    }

    fn chat_uploads_enabled(&self) -> bool {
        !self.cfg.no_uploads
    }

    /// The head of an upload is read: the body follows (`rest` is its start).
    pub(super) fn start_upload(
        &mut self,
        k: usize,
        mut r: Box<Receiving>,
        rest: &[u8],
        served: u32,
    ) {
        let deadline = self.now + ms(self.cfg.upload_timeout);
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        r.served = served;
        c.phase = Phase::Upload(r);
        c.deadline = deadline;
        self.on_upload_bytes(k, rest);
    }

    /// Body bytes: kept up to the announced length; once complete, sniffed
    /// and handed to the chat for the turn's commit.
    pub(super) fn on_upload_bytes(&mut self, k: usize, data: &[u8]) {
        let max_head = self.cfg.max_head_size;
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let Phase::Upload(r) = &mut c.phase else {
            return;
        };
        let take = (r.need - r.body.len()).min(data.len());
        r.body.extend_from_slice(&data[..take]);
        let behind = &data[take..];
        if r.next.len() + behind.len() > max_head {
            r.keep_alive = false;
        } else {
            r.next.extend_from_slice(behind);
        }
        if r.body.len() < r.need || r.id.is_some() {
            return;
        }
        let body = std::mem::take(&mut r.body);
        let account = std::mem::take(&mut r.account);
        let Some(mime) = uploads::sniff(&body) else {
            self.respond(
                k,
                http::error(415, "only PNG, JPEG, GIF and WebP images are accepted", ""),
                None,
            );
            return;
        };
        let now = self.chat_now();
        let len = body.len() as u64;
        // A random id: the URL is the capability to see the image.
        let added = loop {
            let mut b = [0u8; 8];
            if getrandom::getrandom(&mut b).is_err() {
                break Err(None);
            }
            // Below 2^63: an SQLite integer key.
            let id = u64::from_le_bytes(b) >> 1;
            match self.chat.upload_add(id, &account, len, mime, now) {
                Ok(true) => break Ok(id),
                Ok(false) => continue,
                Err(e) => break Err(Some(e)),
            }
        };
        match added {
            Ok(id) => {
                let Some(c) = self.conns.get_mut(k) else {
                    return;
                };
                let Phase::Upload(r) = &mut c.phase else {
                    return;
                };
                r.id = Some(id);
                self.committing.blobs.insert(id, body);
                self.committing.waiting.push((k, id));
            }
            Err(Some(e)) => self.respond_route(k, refusal(e)),
            Err(None) => {
                warn!("upload: no randomness from the system");
                self.respond(k, http::error(500, "no randomness for an id", ""), None);
            }
        }
    }

    fn respond_route(&mut self, k: usize, route: Route) {
        if let Route::Respond(head, body) = route {
            self.respond(k, head, body);
        }
    }

    /// After the turn's commit: each complete upload is answered, 201 with
    /// its id when stored (an acknowledgement means stored), 503 when not.
    pub(super) fn uploads_committed(&mut self, stored: bool) {
        if self.committing.waiting.is_empty() {
            return;
        }
        if stored {
            self.chat.upload_committed();
        } else {
            self.chat.upload_failed();
        }
        let Committing { blobs, waiting } = std::mem::take(&mut self.committing);
        for (k, id) in waiting {
            let Some(c) = self.conns.get_mut(k) else {
                continue;
            };
            let Phase::Upload(r) = &mut c.phase else {
                continue;
            };
            if r.id != Some(id) {
                continue;
            }
            if !stored {
                self.respond(
                    k,
                    http::error(
                        503,
                        "the image could not be stored; try again",
                        "Retry-After: 5\r\n",
                    ),
                    None,
                );
                continue;
            }
            let mime = self
                .chat
                .upload_mime(id)
                .unwrap_or("application/octet-stream");
            let len = blobs.get(&id).map_or(0, Vec::len);
            let text = uploads::id_text(id);
            let body = format!(
                "{{\"id\":\"{text}\",\"url\":\"/uploads/{text}\",\"type\":\"{mime}\",\"bytes\":{len}}}\n"
            );
            let extra = format!("Location: /uploads/{text}\r\nCache-Control: no-store\r\n");
            let head = http::open_head(
                201,
                Some("application/json"),
                Some(body.len() as u64),
                &extra,
            );
            let (keep_alive, served, next) = (r.keep_alive, r.served, std::mem::take(&mut r.next));
            self.serve(
                k,
                Response {
                    head,
                    body: Some(Chunk::Owned(body.into_bytes())),
                    stream: None,
                    keep_alive,
                },
                next,
                served,
            );
        }
    }

    /// `GET /uploads/ID`: the image as stored, with its sniffed type, never
    /// rendered as anything else, cached for good (the id names one content).
    fn route_uploaded(&mut self, req: &Request<'_>, head: &[u8], id: &str) -> Route {
        let head_only = match req.method {
            "GET" => false,
            "HEAD" => true,
            _ => return Route::Respond(http::error(405, "use GET", "Allow: GET, HEAD\r\n"), None),
        };
        let meta = http::Meta::parse(head);
        let keep_alive = meta.keep_alive(req.minor_version, req.connection);
        let not_found = || {
            let (head, body) = http::open_error(404, "no such image", "");
            Route::Serve(Response {
                head,
                body: (!head_only).then_some(Chunk::Owned(body)),
                stream: None,
                keep_alive,
            })
        };
        let Some((id, mime)) =
            uploads::parse_id(id).and_then(|i| Some((i, self.chat.upload_mime(i)?)))
        else {
            return not_found();
        };
        let text = uploads::id_text(id);
        let etag = format!("\"{text}\"");
        let ext = mime.trim_start_matches("image/");
        let fields = format!(
            "ETag: {etag}\r\nCache-Control: private, max-age=31536000, immutable\r\n\
Content-Disposition: inline; filename=\"image-{text}.{ext}\"\r\n{UPLOAD_HEADERS}"
        );
        if meta
            .if_none_match
            .is_some_and(|v| http::none_match_hits(v, &etag))
        {
            return Route::Serve(Response {
                head: http::open_head(304, None, None, &fields),
                body: None,
                stream: None,
                keep_alive,
            });
        }
        let data = match self.storage.as_mut().map(|s| s.upload_data(id)) {
            Some(Ok(Some(d))) => d,
            Some(Ok(None)) | None => return not_found(),
            Some(Err(())) => {
                return Route::Respond(
                    http::error(503, "the image could not be read", "Retry-After: 5\r\n"),
                    None,
                );
            }
        };
        Route::Serve(Response {
            head: http::open_head(200, Some(mime), Some(data.len() as u64), &fields),
            body: (!head_only).then_some(Chunk::Owned(data)),
            stream: None,
            keep_alive,
        })
    }
}

/// What keeps an uploaded file from being anything but an image: no type
/// guessing, no script, no plugin, no frame, sandboxed even when opened
/// alone (a tab of its own).
pub const UPLOAD_HEADERS: &str = "X-Content-Type-Options: nosniff\r\n\
Content-Security-Policy: default-src 'none'; sandbox\r\n\
Referrer-Policy: no-referrer\r\nCross-Origin-Resource-Policy: same-origin\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let t = "ab".repeat(32);
        assert_eq!(
            bearer(Some(format!("Bearer {t}").as_bytes())),
            Some([0xab; 32])
        );
        assert_eq!(
            bearer(Some(format!("bearer  {t}").as_bytes())),
            Some([0xab; 32])
        );
        assert_eq!(bearer(Some(b"Basic abc")), None);
        assert_eq!(bearer(Some(b"Bearer 12")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn content_lengths() {
        assert_eq!(content_length(&[b"12"]), Ok(Some(12)));
        assert_eq!(content_length(&[b"12", b"12"]), Ok(Some(12)));
        assert_eq!(content_length(&[b"12, 12"]), Ok(Some(12)));
        assert_eq!(content_length(&[]), Ok(None));
        assert_eq!(content_length(&[b"12", b"13"]), Err(()));
        assert_eq!(content_length(&[b"-1"]), Err(()));
        assert_eq!(content_length(&[b"1e3"]), Err(()));
        assert_eq!(content_length(&[b"99999999999999999999"]), Err(()));
    }
}
