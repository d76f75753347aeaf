//! HTTP: a request head read to its end, routed to a static file,
//! `/healthz`, an error, or the WebSocket upgrade of `/ws` and `/echo`;
//! answers queued, keep-alive and pipelining.

use super::files::Content;
use super::queue::Chunk;
use super::{
    CHAT_PROTOCOL, Endpoint, Phase, Responding, Response, Route, Server, WsConn, http, ms,
};
use crate::ws::deflate;
use crate::ws::handshake::{self, HandshakeError, HeadScanner, Request, RequestError};
use crate::ws::receive::Receiver;

impl Server {
    pub(super) fn on_http_bytes(&mut self, k: usize, data: &[u8]) {
        let max_head = self.cfg.max_head_size;
        let handshake_timeout = ms(self.cfg.handshake_timeout);
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let Phase::Http {
            head,
            scanner,
            served,
        } = &mut c.phase
        else {
            return;
        };
        let served = *served;
        if head.is_empty() && !data.is_empty() && served > 0 {
            // Keep-alive: the next request's head has --handshake-timeout
            // from its first byte, as the first one had from the accept.
            c.deadline = self.now + handshake_timeout;
        }
        head.extend_from_slice(data);
        let end = match scanner.scan(head) {
            Some(end) if end <= max_head => end,
            None if head.len() <= max_head => return,
            _ => {
                self.respond(k, http::error(431, "request head too large", ""), None);
                return;
            }
        };
        let mut bytes = std::mem::take(head);
        let route = if self.conns.get(k).is_some_and(|c| c.metrics) {
            self.metrics_route(&bytes[..end])
        } else if self.is_redirect(k) {
            self.redirect_route(&bytes[..end])
        } else {
            self.route(k, &bytes[..end])
        };
        match route {
            Route::Respond(head, body) => self.respond(k, head, body),
            Route::Serve(r) => {
                bytes.drain(..end);
                self.serve(k, r, bytes, served.saturating_add(1));
            }
            Route::Body(r) => self.start_upload(k, r, &bytes[end..], served.saturating_add(1)),
            Route::Upgrade {
                endpoint,
                response,
                nick,
                deflate,
            } => {
                self.upgrade(k, endpoint, response, nick.as_deref(), deflate);
                // RFC 6455 §4.1: the client may send frames right behind its
                // handshake; they may share this read with the head.
                if bytes.len() > end {
                    self.on_ws_bytes(k, &mut bytes[end..]);
                }
            }
        }
    }

    pub(super) fn route(&mut self, k: usize, head: &[u8]) -> Route {
        let req = match Request::parse(head) {
            Ok(r) => r,
            Err(RequestError::TooManyHeaders) => {
                return Route::Respond(http::error(431, "too many header fields", ""), None);
            }
            Err(RequestError::Malformed) => {
                return Route::Respond(http::error(400, "malformed HTTP request", ""), None);
            }
        };
        let path = req.path();
        // Every route but /healthz (a monitor may use any name): a
        // rebinding page must not read our pages either.
        if path != "/healthz"
            && let Some(refusal) = self
                .check_host(req.host)
                .or_else(|| self.resolve_client(k, &req))
        {
            return Route::Respond(refusal, None);
        }
        if let Some(r) = self.route_uploads(&req, head) {
            return r;
        }
        let endpoint = match path {
            "/ws" => Endpoint::Chat,
            "/echo" => Endpoint::Echo,
            "/healthz" => return route_healthz(&req, head),
            _ => return self.route_static(&req, head),
        };
        if !req.wants_upgrade() && req.method == "GET" {
            let extra = "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n";
            return Route::Respond(
                http::error(426, "this is a WebSocket endpoint", extra),
                None,
            );
        }
        let accept = match handshake::check_upgrade(&req) {
            Ok(a) => a,
            Err(e) => {
                let extra = match e {
                    HandshakeError::BadVersion => "Sec-WebSocket-Version: 13\r\n",
                    HandshakeError::NotGet => "Allow: GET\r\n",
                    _ => "",
                };
                return Route::Respond(http::error(e.status(), e.reason(), extra), None);
            }
        };
        let mut protocol = None;
        let mut nick = None;
        if endpoint == Endpoint::Chat {
            if !http::origin_allowed(req.origin, req.host, &self.cfg.allow_origin) {
                return Route::Respond(http::error(403, "origin not allowed", ""), None);
            }
            // The chat protocol's subprotocol, when offered; none otherwise.
            if req.offers_protocol(CHAT_PROTOCOL) {
                protocol = Some(CHAT_PROTOCOL);
            }
            nick = req.query().and_then(query_nick);
        }
        if let Some(refusal) = self.take_handshake(k) {
            return Route::Respond(refusal, None);
        }
        // RFC 7692 §5: accept the first acceptable permessage-deflate offer.
        let deflate = if self.cfg.no_deflate {
            None
        } else {
            deflate::negotiate(&req.extensions)
        };
        let answer = deflate.map(|p| p.emit());
        Route::Upgrade {
            endpoint,
            response: handshake::response_101(&accept, protocol, answer.as_deref()),
            nick,
            deflate: deflate.map(|p| p.compress_window_bits()),
        }
    }

    /// A file of the web client: 200 (in the coding `Accept-Encoding`
    /// prefers), 304 when `If-None-Match` names the version held, 404.
    fn route_static(&self, req: &Request<'_>, head: &[u8]) -> Route {
        let head_only = match req.method {
            "GET" => false,
            "HEAD" => true,
            _ => return Route::Respond(http::error(405, "use GET", "Allow: GET, HEAD\r\n"), None),
        };
        let meta = http::Meta::parse(head);
        let keep_alive = meta.keep_alive(req.minor_version, req.connection);
        let found = match self.files.lookup(req.path()) {
            Ok(found) => found,
            Err(http::StaticError::Forbidden) => {
                return Route::Respond(
                    http::error(403, "path leaves the static directory", ""),
                    None,
                );
            }
            Err(http::StaticError::NotFound) => {
                return error_response(404, "no such file", head_only, keep_alive);
            }
            Err(http::StaticError::Busy) => {
                return Route::Respond(http::error(503, "server busy", "Retry-After: 5\r\n"), None);
            }
        };
        use http::Encoding::{Gzip, Identity};
        let offered: &[http::Encoding] = if found.gzip.is_some() { &[Gzip] } else { &[] };
        let Some(encoding) = http::negotiate(meta.accept_encoding, offered) else {
            return error_response(
                406,
                "identity refused and no other coding offered",
                head_only,
                keep_alive,
            );
        };
        let (content, len) = match (encoding, found.gzip, found.content) {
            (Gzip, Some(b), _) => (Content::Static(b), b.len() as u64),
            // A client that takes no gzip (rare: every browser does), not
            // for a HEAD: the file inflated, once, shared from then on.
            (_, _, Content::Embedded(i)) if !head_only => match self.files.identity(i) {
                Some(b) => (Content::Shared(b), found.len),
                None => return error_response(500, "built-in file damaged", false, keep_alive),
            },
            (_, _, content) => (content, found.len),
        };
        // Each coding is a representation of its own, with its own tag
        // (RFC 9110 §8.8.3).
        let etag = match encoding {
            Identity => format!("\"{}\"", found.tag),
            e => format!("\"{}-{}\"", found.tag, e.token()),
        };
        let mut cache = format!("ETag: {etag}\r\n");
        if !offered.is_empty() {
            cache.push_str("Vary: Accept-Encoding\r\n");
        }
        if meta
            .if_none_match
            .is_some_and(|v| http::none_match_hits(v, &etag))
        {
            // RFC 9110 §15.4.5: the fields a 200 would have had for
            // caching, no body.
            cache.push_str("Cache-Control: no-cache\r\n");
            return Route::Serve(Response {
                head: http::open_head(304, None, None, &cache),
                body: None,
                stream: None,
                keep_alive,
            });
        }
        if encoding != Identity {
            cache.push_str(&format!("Content-Encoding: {}\r\n", encoding.token()));
        }
        cache.push_str(http::PAGE_HEADERS);
        let head = http::open_head(200, Some(found.content_type), Some(len), &cache);
        let (body, stream) = match content {
            _ if head_only => (None, None),
            Content::Static(b) => (Some(Chunk::Static(b)), None),
            Content::Shared(b) => (Some(Chunk::Shared(b)), None),
            Content::Stream(s) => (None, Some(Box::new(s))),
            Content::Embedded(_) => (None, None),
        };
        Route::Serve(Response {
            head,
            body,
            stream,
            keep_alive,
        })
    }

    /// Sends an answer that may keep the connection open: what follows the
    /// request (`next`) is the next request's (pipelining).
    pub(super) fn serve(&mut self, k: usize, r: Response, next: Vec<u8>, served: u32) {
        let max_head = self.cfg.max_head_size;
        let limit = self.cfg.keepalive_requests;
        let stopping = self.shutdown_deadline.is_some();
        // More pipelined bytes than one head may hold are not kept: the
        // connection closes after this answer instead.
        let keep_alive = r.keep_alive && served < limit && next.len() <= max_head && !stopping;
        let mut head = r.head;
        http::finish_head(&mut head, keep_alive);
        self.respond(k, head, r.body);
        if let Some(c) = self.conns.get_mut(k)
            && let Phase::Responding(resp) = &mut c.phase
        {
            resp.stream = r.stream;
            resp.served = served;
            if keep_alive {
                resp.keep_alive = true;
                resp.next = next;
                c.shutdown_when_flushed = false;
            }
        }
    }

    /// Keep-alive: the answer is out; back to reading a request head, with
    /// the bytes that came behind the last one.
    pub(super) fn next_request(&mut self, k: usize) {
        let keepalive_timeout = ms(self.cfg.keepalive_timeout);
        let handshake_timeout = ms(self.cfg.handshake_timeout);
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let Phase::Responding(r) = &mut c.phase else {
            return;
        };
        let next = std::mem::take(&mut r.next);
        let started = !next.is_empty();
        c.phase = Phase::Http {
            head: next,
            scanner: HeadScanner::default(),
            served: r.served,
        };
        c.deadline = self.now
            + if started {
                handshake_timeout
            } else {
                keepalive_timeout
            };
        // Bytes that waited in the socket while we answered raise no new
        // event: read them next turn.
        self.again.push(k);
        if started {
            self.on_http_bytes(k, &[]);
        }
    }

    pub(super) fn respond(&mut self, k: usize, head: Vec<u8>, body: Option<Chunk>) {
        let close_timeout = ms(self.cfg.close_timeout);
        let head = self.with_hsts(k, head);
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        c.phase = Phase::Responding(Responding::default());
        c.out.push(Chunk::Owned(head));
        if let Some(b) = body {
            c.out.push(b);
        }
        c.shutdown_when_flushed = true;
        c.deadline = self.now + close_timeout;
        self.mark_dirty(k);
    }

    pub(super) fn upgrade(
        &mut self,
        k: usize,
        endpoint: Endpoint,
        response: Vec<u8>,
        nick: Option<&str>,
        deflate: Option<u8>,
    ) {
        let max = match endpoint {
            Endpoint::Echo => self.cfg.max_message_size,
            Endpoint::Chat => self.cfg.max_ws_message_size,
        };
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let addr = c.counted.then_some(c.ip);
        c.phase = Phase::Ws(WsConn {
            rx: Receiver::new(max).with_deflate(deflate.is_some()),
            endpoint,
            close_sent: false,
            in_chat: endpoint == Endpoint::Chat,
            deflate,
        });
        c.deadline = u64::MAX;
        c.last_ping = self.now;
        self.metrics.handshake(endpoint);
        // A fence: a pong for a ping sent right behind the head must follow it.
        c.out.push(Chunk::Fence(response));
        self.mark_dirty(k);
        if endpoint == Endpoint::Chat {
            self.with_chat(|chat, now, out| chat.connect_from(k, nick, addr, now, out));
        }
    }
}

/// `/healthz`: 200 while the server runs.
fn route_healthz(req: &Request<'_>, head: &[u8]) -> Route {
    let body = match req.method {
        "GET" => Some(Chunk::Static(b"ok\n")),
        "HEAD" => None,
        _ => return Route::Respond(http::error(405, "use GET", "Allow: GET, HEAD\r\n"), None),
    };
    let keep_alive = http::Meta::parse(head).keep_alive(req.minor_version, req.connection);
    Route::Serve(Response {
        head: http::open_head(
            200,
            Some("text/plain; charset=utf-8"),
            Some(3),
            "Cache-Control: no-store\r\n",
        ),
        body,
        stream: None,
        keep_alive,
    })
}

/// A plain-text error that need not close the connection (404, 406).
fn error_response(status: u16, reason: &str, head_only: bool, keep_alive: bool) -> Route {
    let (head, body) = http::open_error(status, reason, "");
    Route::Serve(Response {
        head,
        body: (!head_only).then_some(Chunk::Owned(body)),
        stream: None,
        keep_alive,
    })
}

/// The `nick` query parameter, percent-decoded.
fn query_nick(query: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        if k != "nick" {
            return None;
        }
        let v = v.replace('+', " ");
        percent_encoding::percent_decode_str(&v)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    })
}
