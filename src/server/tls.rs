//! TLS termination inside the one `mio` loop (rustls, ring provider).
//!
//! This file owns the certificate (loading, SIGHUP reload), each
//! connection's rustls state and the conversion between ciphertext and
//! plaintext; `ws/` and `chat/` never learn that TLS exists. Three seams:
//! - read: ciphertext read into the server's shared buffer is fed to rustls
//!   ([`Server::on_tls_bytes`]) and the plaintext goes to `on_bytes`
//!   unchanged;
//! - write: write queues keep plaintext frames (a broadcast is still framed
//!   once) and are encrypted per connection as they are flushed
//!   ([`Conn::write_out`]);
//! - end: our close_notify before our FIN ([`Conn::shutdown_write`]).
//!
//! Every rustls call is in this file: its API is moving (rustls' main branch
//! has made the caller-owned "unbuffered" API its main one).
//!
//! The `--redirect-http` listener lives here too: plain connections on the
//! same loop whose every request is answered 308 to the https URL.

use super::{Conn, Phase, Route, Server, http, listen};
use crate::ws::handshake::Request;
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use rustls::ServerConnection;
use rustls::server::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{self, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The plain listener of `--redirect-http`.
pub(super) const REDIRECT: Token = Token(usize::MAX - 3);

/// Ciphertext rustls may hold for one connection that the socket has not
/// taken yet. With the write queue's own limit this bounds a slow reader.
const TLS_OUT_LIMIT: usize = 32 * 1024;

/// `Strict-Transport-Security` on every TLS answer: a year, this host only
/// (other names under the same domain may not have TLS).
const HSTS: &str = "Strict-Transport-Security: max-age=31536000\r\n";

/// The server's TLS side: configuration, scratch space, redirect listener.
pub(super) struct Tls {
    cert: PathBuf,
    key: PathBuf,
    /// New connections get this; a reload replaces it, and connections
    /// already open keep the `Arc` they were made with.
    config: Arc<ServerConfig>,
    hsts: bool,
    /// Plaintext out of rustls, shared by every connection (like `rbuf`).
    plain: Vec<u8>,
    redirect: Option<TcpListener>,
    /// The port https URLs name (that of `--addr`).
    https_port: u16,
}

/// One connection's TLS state, boxed in `Conn` (most of a connection's
/// memory while idle).
#[derive(Debug)]
pub(super) struct TlsConn(ServerConnection);

/// Why a certificate or key could not be used.
#[derive(Debug)]
pub(super) struct LoadError(String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads the PEM certificate chain and key and builds a server config.
fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, LoadError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| LoadError(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(LoadError(format!(
            "{}: no certificate in the file",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| LoadError(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LoadError(e.to_string()))?
        .with_no_client_auth()
        // Also checks that the key belongs to the certificate.
        .with_single_cert(chain, key)
        .map_err(|e| LoadError(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Tls {
    /// The TLS side asked for by the configuration, if any.
    /// `https_port`: the port of the TLS listener, for redirects.
    pub(super) fn new(
        cfg: &super::Config,
        registry: &Registry,
        https_port: u16,
    ) -> io::Result<Option<Tls>> {
        let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
            return Ok(None);
        };
        let config = load(cert, key).map_err(|e| io::Error::other(e.to_string()))?;
        let redirect = match cfg.redirect_http {
            Some(addr) => {
                let mut l = listen(addr, cfg.backlog)?;
                registry.register(&mut l, REDIRECT, Interest::READABLE)?;
                info!("redirecting plain HTTP on {} to https", l.local_addr()?);
                Some(l)
            }
            None => None,
        };
        Ok(Some(Tls {
            cert: cert.clone(),
            key: key.clone(),
            config,
            hsts: !cfg.no_hsts,
            plain: vec![0; super::READ_BUF],
            redirect,
            https_port,
        }))
    }

    /// A new connection's TLS state.
    pub(super) fn accept(&self) -> Option<Box<TlsConn>> {
        match ServerConnection::new(Arc::clone(&self.config)) {
            Ok(mut c) => {
                c.set_buffer_limit(Some(TLS_OUT_LIMIT));
                Some(Box::new(TlsConn(c)))
            }
            Err(e) => {
                warn!("TLS: {e}");
                None
            }
        }
    }

    /// Stops taking plain connections (shutting down).
    pub(super) fn close_redirect(&mut self) {
        self.redirect = None;
    }
}

/// Writes what rustls holds for the socket; `Ok(true)` once nothing is left.
fn flush_tls(tls: &mut ServerConnection, mut sock: &TcpStream) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(&mut sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The write queue's view of a TLS connection: plaintext in, each write
/// encrypted and sent on. Says `WouldBlock` while rustls still holds
/// ciphertext the socket did not take, so the queue keeps the rest.
struct Encrypt<'a> {
    tls: &'a mut ServerConnection,
    sock: &'a TcpStream,
}

impl Encrypt<'_> {
    fn sent(&mut self, n: usize) -> io::Result<usize> {
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        flush_tls(self.tls, self.sock)?;
        Ok(n)
    }
}

impl Write for Encrypt<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !flush_tls(self.tls, self.sock)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tls.writer().write(buf)?;
        self.sent(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if !flush_tls(self.tls, self.sock)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // Records span the slices: small frames share records.
        let n = self.tls.writer().write_vectored(bufs)?;
        self.sent(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Conn {
    /// Writes as much of the queue as the socket takes, through TLS when the
    /// connection has it. `Ok(true)` when nothing is left to send.
    pub(super) fn write_out(&mut self) -> io::Result<bool> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return self.out.write_to(&mut self.sock);
        };
        if !flush_tls(&mut tls.0, &self.sock)? {
            return Ok(false);
        }
        let drained = self.out.write_to(&mut Encrypt {
            tls: &mut tls.0,
            sock: &self.sock,
        })?;
        Ok(drained && flush_tls(&mut tls.0, &self.sock)?)
    }

    /// Ends our side: TLS's close_notify (RFC 8446 §6.1), then our FIN.
    pub(super) fn shutdown_write(&mut self) {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.0.send_close_notify();
            let _ = flush_tls(&mut tls.0, &self.sock);
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }

    /// The last try to get the queue out before the connection is dropped
    /// (the peer ended its side), with our close_notify behind it.
    pub(super) fn write_final(&mut self) {
        let _ = self.write_out();
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.0.send_close_notify();
            let _ = flush_tls(&mut tls.0, &self.sock);
        }
    }
}

impl Server {
    /// Ciphertext from connection `k`: through rustls, plaintext to `on_bytes`.
    pub(super) fn on_tls_bytes(&mut self, k: usize, mut input: &[u8]) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        let mut plain = std::mem::take(&mut tls.plain);
        while let Some(c) = self.conns.get_mut(k) {
            // Our side is closed: what arrives is only waited out.
            if matches!(c.phase, Phase::Linger) {
                break;
            }
            let Some(t) = c.tls.as_deref_mut() else {
                break;
            };
            let tls = &mut t.0;
            let was_handshaking = tls.is_handshaking();
            if !input.is_empty()
                && let Err(e) = tls.read_tls(&mut input)
            {
                // Only when plaintext is left unread, which never happens:
                // each pass below takes all of it.
                debug!("connection {k}: TLS read: {e}");
                self.drop_conn(k);
                break;
            }
            let state = match tls.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    // Plain HTTP, a garbage or unacceptable ClientHello, a
                    // renegotiation, a bad record: rustls has queued an
                    // alert; send it once, then close.
                    debug!("connection {k}: TLS error: {e}");
                    let _ = flush_tls(tls, &c.sock);
                    self.drop_conn(k);
                    break;
                }
            };
            if was_handshaking && !tls.is_handshaking() {
                debug!(
                    "connection {k}: TLS handshake done ({:?}, {:?})",
                    tls.protocol_version(),
                    tls.negotiated_cipher_suite().map(|s| s.suite())
                );
            }
            let wants_write = tls.wants_write();
            let n = state.plaintext_bytes_to_read().min(plain.len());
            if n > 0 && tls.reader().read_exact(&mut plain[..n]).is_err() {
                self.drop_conn(k);
                break;
            }
            if wants_write {
                self.mark_dirty(k);
            }
            if n > 0 {
                self.on_bytes(k, &mut plain[..n]);
                continue;
            }
            if state.peer_has_closed() {
                debug!("connection {k}: TLS close_notify from the peer");
                self.on_eof(k);
                break;
            }
            if input.is_empty() {
                break;
            }
        }
        if let Some(tls) = self.tls.as_mut() {
            tls.plain = plain;
        }
    }

    /// SIGHUP: the certificate and key are read again. New connections get
    /// the new ones; a file that does not load leaves the old ones in use.
    pub(super) fn reload_tls(&mut self) {
        let Some(tls) = self.tls.as_mut() else {
            info!("SIGHUP: no TLS certificate to reload");
            return;
        };
        match load(&tls.cert, &tls.key) {
            Ok(config) => {
                tls.config = config;
                info!(
                    "SIGHUP: TLS certificate reloaded from {}",
                    tls.cert.display()
                );
            }
            Err(e) => warn!("SIGHUP: TLS certificate not reloaded, the old one stays: {e}"),
        }
    }

    /// Accepts on the `--redirect-http` listener.
    pub(super) fn accept_redirect(&mut self) {
        loop {
            let Some(l) = self.tls.as_ref().and_then(|t| t.redirect.as_ref()) else {
                return;
            };
            match l.accept() {
                Ok((sock, addr)) => self.admit(sock, addr, false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!("redirect listener: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Whether connection `k` is a plain one beside the TLS port, whose
    /// every request is redirected.
    pub(super) fn is_redirect(&self, k: usize) -> bool {
        self.tls.is_some() && self.conns.get(k).is_some_and(|c| c.tls.is_none())
    }

    /// The 308 to the https URL of the request (RFC 9110 §15.4.9: the method
    /// and body are kept, unlike 301).
    pub(super) fn redirect_route(&self, head: &[u8]) -> Route {
        let port = self.tls.as_ref().map_or(443, |t| t.https_port);
        let Ok(req) = Request::parse(head) else {
            return Route::Respond(http::error(400, "malformed HTTP request", ""), None);
        };
        let Some(host) = req.host.and_then(host_name) else {
            return Route::Respond(http::error(400, "no valid Host header", ""), None);
        };
        let authority = if port == 443 {
            host.to_string()
        } else {
            format!("{host}:{port}")
        };
        // The request target as sent (path and query), kept only if it is
        // origin-form and has no bytes that could end the header line.
        let target = req
            .target
            .strip_prefix('/')
            .filter(|t| t.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or("");
        let location = format!("Location: https://{authority}/{target}\r\n");
        debug!("redirecting to https://{authority}/{target}");
        Route::Respond(http::error(308, "use https", &location), None)
    }

    /// `Strict-Transport-Security` on an answer to a TLS connection (RFC
    /// 6797 §7.2: never on plain HTTP).
    pub(super) fn with_hsts(&self, k: usize, mut head: Vec<u8>) -> Vec<u8> {
        let on = self.tls.as_ref().is_some_and(|t| t.hsts)
            && self.conns.get(k).is_some_and(|c| c.tls.is_some());
        if on && let Some(i) = head.windows(2).position(|w| w == b"\r\n") {
            head.splice(i + 2..i + 2, HSTS.bytes());
        }
        head
    }
}

/// The host part of a Host header (no port), if it is a plausible name or
/// address (RFC 3986 §3.2.2: reg-name or bracketed IPv6).
fn host_name(host: &str) -> Option<&str> {
    let name = if host.starts_with('[') {
        &host[..=host.find(']')?]
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
    ok.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn host_names_lose_their_port_and_bad_ones_are_refused() {
        assert_eq!(host_name("chat.example.org:80"), Some("chat.example.org"));
        assert_eq!(host_name("chat.example.org"), Some("chat.example.org"));
        assert_eq!(host_name("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_name("evil\r\nSet-Cookie: x"), None);
        assert_eq!(host_name("a/b"), None);
        assert_eq!(host_name(""), None);
        assert_eq!(host_name("[::1"), None);
    }
}
