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
//!   ([`Conn::write_queue`]);
//! - end: our close_notify before our FIN ([`Conn::shutdown_write`]).
//!
//! rustls' caller-owned ("unbuffered") API, not its buffered
//! `ServerConnection`: the buffered one keeps a 4 KiB receive buffer per
//! connection for good once it has read (5.0-7.7 KiB per idle wss
//! connection, measured, against 2.7-3.7 KiB here: rustls' state and keys). Here a connection holds bytes only while
//! a record is incomplete (`held_in`) or the socket refuses ciphertext
//! (`held_out`). One rule of that API shapes the code: rustls may keep
//! offsets into the input it has not told us to discard (a handshake
//! message spanning records), so every call gets exactly those bytes.
//!
//! Every rustls call is in this file: its API is moving (rustls' main branch
//! has made the caller-owned API its main one).
//!
//! The `--redirect-http` listener lives here too: plain connections on the
//! same loop whose every request is answered 308 to the https URL.

use super::{Conn, Phase, Route, Server, http, listen};
use crate::ws::handshake::Request;
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use rustls::server::{ServerConfig, ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::cell::RefCell;
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The plain listener of `--redirect-http`.
pub(super) const REDIRECT: Token = Token(usize::MAX - 3);

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

/// Why a certificate or key could not be used.
#[derive(Debug)]
pub(super) struct LoadError(String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// ring's provider with only what a server uses, so that the link leaves
/// out the rest: every cipher suite (TLS 1.3, and TLS 1.2 ECDHE with
/// AES-GCM or ChaCha20-Poly1305), key exchange by X25519 or P-256 (every
/// browser and TLS library offers one of them; P-384 is left out), keys of
/// every kind a certificate has (ECDSA P-256/P-384, RSA, Ed25519). No
/// signature verification: that is for client certificates, which the
/// server never asks for (`with_no_client_auth`).
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::{self, kx_group};
    let mut p = ring::default_provider();
    p.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1];
    p.signature_verification_algorithms = rustls::crypto::WebPkiSupportedAlgorithms {
        all: &[],
        mapping: &[],
    };
    p
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
    let provider = Arc::new(provider());
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
        match TlsConn::new(Arc::clone(&self.config)) {
            Ok(c) => Some(Box::new(c)),
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

/// One connection's TLS state, boxed in `Conn`. rustls' caller-owned
/// ("unbuffered") API: ciphertext is handed to rustls where it was read
/// (the server's shared read buffer; rustls 0.23 still copies each
/// decrypted record out once, for as long as it is read) and encrypted into
/// a shared scratch buffer, so an idle connection holds its keys and no
/// buffer at all.
pub(super) struct TlsConn {
    conn: UnbufferedServerConnection,
    /// The start of a record not yet complete (or of a handshake message
    /// spanning records), kept between reads; unallocated otherwise.
    held_in: Vec<u8>,
    /// Ciphertext the socket has not taken yet; unallocated when empty.
    held_out: Vec<u8>,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("held_in", &self.held_in.len())
            .field("held_out", &self.held_out.len())
            .finish()
    }
}

/// Plaintext encrypted per write: four full records.
const ENCRYPT_BATCH: usize = 4 * MAX_RECORD;
/// Largest TLS plaintext record (RFC 8446 §5.1).
const MAX_RECORD: usize = 16 * 1024;

thread_local! {
    /// Scratch for encryption, shared by every connection: (plaintext
    /// gathered from the queue's slices, ciphertext).
    static SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

fn tls_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl TlsConn {
    fn new(config: Arc<ServerConfig>) -> Result<TlsConn, rustls::Error> {
        Ok(TlsConn {
            conn: UnbufferedServerConnection::new(config)?,
            held_in: Vec::new(),
            held_out: Vec::new(),
        })
    }

    /// Writes `held_out`; `Ok(true)` once it is all out.
    fn flush_held(&mut self, mut sock: &TcpStream) -> io::Result<bool> {
        let mut done = 0;
        let res = loop {
            if done == self.held_out.len() {
                break Ok(true);
            }
            match sock.write(&self.held_out[done..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) => break Err(e),
            }
        };
        if done == self.held_out.len() {
            self.held_out = Vec::new();
        } else {
            self.held_out.drain(..done);
        }
        res
    }

    /// Appends what rustls wants sent (the alert after an error) to
    /// `held_out`, until it has nothing more to send. `input`: the bytes
    /// not yet discarded, which rustls may still point into.
    fn encode_pending(&mut self, input: &mut [u8]) -> Result<(), rustls::Error> {
        // Only while rustls holds output, which it hands out before it looks
        // at the input again: the input would raise the same error again.
        while self.conn.wants_write() {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(input);
            match state? {
                ConnectionState::EncodeTlsData(mut e) => encode_into(&mut e, &mut self.held_out),
                _ => break,
            }
        }
        Ok(())
    }

    /// Encrypts `plain` onto the end of `out`. Only once the handshake is done.
    fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            // rustls is always handed the bytes it has not consumed: it may
            // keep offsets into them (a handshake message across records).
            // They hold no whole record, so nothing is read here.
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.held_in);
            match state.map_err(tls_err)? {
                ConnectionState::WriteTraffic(mut w) => {
                    let start = out.len();
                    // Room for the records' headers, tags and content types.
                    let mut room = plain.len() + 64 * plain.len().div_ceil(MAX_RECORD).max(1);
                    loop {
                        out.resize(start + room, 0);
                        match w.encrypt(plain, &mut out[start..]) {
                            Ok(n) => {
                                out.truncate(start + n);
                                return Ok(());
                            }
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) if required_size > room => room = required_size,
                            Err(e) => {
                                out.truncate(start);
                                return Err(tls_err(e));
                            }
                        }
                    }
                }
                // A key update (or an answer to the peer's) goes first.
                ConnectionState::EncodeTlsData(mut e) => encode_into(&mut e, out),
                ConnectionState::TransmitTlsData(t) => t.done(),
                _ => return Err(io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    /// Queues our close_notify (RFC 8446 §6.1) once keys are set: during the
    /// handshake there is nothing to close but the TCP connection.
    fn close_notify(&mut self) {
        if self.conn.is_handshaking() {
            return;
        }
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.held_in);
        if let Ok(ConnectionState::WriteTraffic(mut w)) = state {
            let start = self.held_out.len();
            self.held_out.resize(start + 64, 0);
            match w.queue_close_notify(&mut self.held_out[start..]) {
                Ok(n) => self.held_out.truncate(start + n),
                Err(_) => self.held_out.truncate(start),
            }
        }
    }
}

fn encode_into(e: &mut EncodeTlsData<'_, ServerConnectionData>, out: &mut Vec<u8>) {
    let start = out.len();
    let mut room = 4096;
    loop {
        out.resize(start + room, 0);
        match e.encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return;
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size;
            }
            Err(_) => {
                out.truncate(start);
                return;
            }
        }
    }
}

/// The write queue's view of a TLS connection: plaintext in, encrypted in
/// batches of up to four records and sent on. Says `WouldBlock` while
/// ciphertext waits that the socket did not take, so the queue keeps the rest.
struct Encrypt<'a> {
    tls: &'a mut TlsConn,
    sock: &'a TcpStream,
}

impl Write for Encrypt<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.tls.flush_held(self.sock)? || self.tls.conn.is_handshaking() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        SCRATCH.with(|s| {
            let (plain, out) = &mut *s.borrow_mut();
            plain.clear();
            out.clear();
            // Small frames share records: the slices are gathered first.
            for b in bufs {
                let take = b.len().min(ENCRYPT_BATCH - plain.len());
                plain.extend_from_slice(&b[..take]);
                if plain.len() == ENCRYPT_BATCH {
                    break;
                }
            }
            self.tls.encrypt(plain, out)?;
            let mut sent = 0;
            while sent < out.len() {
                match (&mut &*self.sock).write(&out[sent..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            // The plaintext is taken either way: what the socket refused
            // waits, encrypted, for the next flush.
            self.tls.held_out.extend_from_slice(&out[sent..]);
            let n = plain.len();
            // The scratch stays only while it is of a usual size.
            if plain.capacity() > 2 * ENCRYPT_BATCH {
                *plain = Vec::new();
            }
            if out.capacity() > 4 * ENCRYPT_BATCH {
                *out = Vec::new();
            }
            Ok(n)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Conn {
    /// Writes as much of the queue as the socket takes, through TLS when the
    /// connection has it. `Ok(true)` when nothing is left to send.
    pub(super) fn write_queue(&mut self) -> io::Result<bool> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return self.out.write_to(&mut self.sock);
        };
        if !tls.flush_held(&self.sock)? {
            return Ok(false);
        }
        let drained = self.out.write_to(&mut Encrypt {
            tls,
            sock: &self.sock,
        })?;
        Ok(drained && tls.flush_held(&self.sock)?)
    }

    /// Ends our side: TLS's close_notify (RFC 8446 §6.1), then our FIN.
    pub(super) fn shutdown_write(&mut self) {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.close_notify();
            let _ = tls.flush_held(&self.sock);
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }

    /// The last try to get the queue out before the connection is dropped
    /// (the peer ended its side), with our close_notify behind it.
    pub(super) fn write_final(&mut self) {
        let _ = self.write_queue();
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.close_notify();
            let _ = tls.flush_held(&self.sock);
        }
    }
}

/// How many more bytes complete the first record in `held`, given that
/// `more` follows it (all of `more` while even its header is incomplete).
fn record_remainder(held: &[u8], more: &[u8]) -> usize {
    const HEADER: usize = 5; // RFC 8446 §5.1: type, version, length
    let mut hdr = [0u8; HEADER];
    let have = held.len().min(HEADER);
    hdr[..have].copy_from_slice(&held[..have]);
    let Some(rest) = more.get(..HEADER - have) else {
        return more.len();
    };
    hdr[have..].copy_from_slice(rest);
    let total = HEADER + usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
    total.saturating_sub(held.len())
}

/// What one pass of rustls over the input left to do.
#[derive(Default)]
struct Pass {
    plain: usize,
    fatal: Option<rustls::Error>,
    peer_closed: bool,
    needs_input: bool,
}

/// One call of rustls on `input`: decrypts records in place (their
/// plaintext copied to `plain`), encodes handshake output into `held_out`.
/// Returns what it did and how many input bytes are consumed.
fn pass(t: &mut TlsConn, input: &mut [u8], plain: &mut [u8]) -> (Pass, usize) {
    let mut p = Pass::default();
    let UnbufferedStatus { mut discard, state } = t.conn.process_tls_records(input);
    match state {
        Err(e) => p.fatal = Some(e),
        Ok(ConnectionState::ReadTraffic(mut r)) => {
            while let Some(len) = r.peek_len() {
                if p.plain + len.get() > plain.len() {
                    break; // delivered first, then the next pass
                }
                match r.next_record() {
                    Some(Ok(rec)) => {
                        plain[p.plain..p.plain + rec.payload.len()].copy_from_slice(rec.payload);
                        p.plain += rec.payload.len();
                        discard += rec.discard;
                    }
                    Some(Err(e)) => {
                        p.fatal = Some(e);
                        break;
                    }
                    None => break,
                }
            }
        }
        Ok(ConnectionState::EncodeTlsData(mut e)) => encode_into(&mut e, &mut t.held_out),
        Ok(ConnectionState::TransmitTlsData(tt)) => tt.done(),
        Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => p.peer_closed = true,
        Ok(ConnectionState::ReadEarlyData(_)) => {
            // Never offered (no 0-RTT in our config): a protocol error.
            p.fatal = Some(rustls::Error::General("early data".into()));
        }
        Ok(_) => p.needs_input = true,
    }
    (p, discard)
}

impl Server {
    /// Ciphertext from connection `k`: through rustls, plaintext to `on_bytes`.
    pub(super) fn on_tls_bytes(&mut self, k: usize, data: &mut [u8]) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        let mut plain = std::mem::take(&mut tls.plain);
        let held = self
            .conns
            .get_mut(k)
            .and_then(|c| c.tls.as_deref_mut())
            .map(|t| std::mem::take(&mut t.held_in))
            .unwrap_or_default();
        if let Some(left) = self.feed_after(k, held, data, &mut plain)
            && !left.is_empty()
            && let Some(t) = self.conns.get_mut(k).and_then(|c| c.tls.as_deref_mut())
        {
            t.held_in = left;
        }
        if let Some(tls) = self.tls.as_mut() {
            tls.plain = plain;
        }
    }

    /// Feeds `data` behind the bytes `held` from earlier reads. The held
    /// record is completed with the bytes it lacks and the rest of `data` is
    /// decrypted where it lies, unless rustls keeps bytes (a handshake
    /// message spanning records): then all of it goes on behind them.
    /// Returns what to hold for the next read; `None` once the connection
    /// is gone or closing.
    fn feed_after(
        &mut self,
        k: usize,
        mut held: Vec<u8>,
        data: &mut [u8],
        plain: &mut [u8],
    ) -> Option<Vec<u8>> {
        let mut rest = data;
        if !held.is_empty() {
            let take = record_remainder(&held, rest).min(rest.len());
            held.extend_from_slice(&rest[..take]);
            let pos = self.feed(k, &mut held, plain)?;
            if pos < held.len() {
                held.drain(..pos);
                held.extend_from_slice(&rest[take..]);
                let pos = self.feed(k, &mut held, plain)?;
                held.drain(..pos);
                return Some(held);
            }
            rest = &mut rest[take..];
        }
        let pos = self.feed(k, rest, plain)?;
        Some(rest[pos..].to_vec())
    }

    /// Runs rustls over `input` until it needs more. The plaintext of all
    /// the records it holds goes to `on_bytes` at once, as a plain read's
    /// bytes do: a request pipelined behind another in a record of its own
    /// is the next request's, not input during the answer. Returns how many
    /// bytes rustls consumed (the rest is the start of a record, to be
    /// held), or `None` once the connection is gone or closing.
    fn feed(&mut self, k: usize, input: &mut [u8], plain: &mut [u8]) -> Option<usize> {
        let mut pos = 0;
        let mut filled = 0;
        loop {
            let c = self.conns.get_mut(k)?;
            // Our side is closed: what arrives is only waited out.
            if matches!(c.phase, Phase::Linger) {
                return None;
            }
            let t = c.tls.as_deref_mut()?;
            let was_handshaking = t.conn.is_handshaking();
            let (p, used) = pass(t, &mut input[pos..], &mut plain[filled..]);
            pos += used;
            filled += p.plain;
            if let Some(e) = p.fatal {
                // Plain HTTP, a garbage or unacceptable ClientHello, a
                // renegotiation, a bad record: send rustls' alert once, then close.
                debug!("connection {k}: TLS error: {e}");
                let _ = t.encode_pending(&mut input[pos..]);
                let _ = t.flush_held(&c.sock);
                self.drop_conn(k);
                return None;
            }
            if was_handshaking && !t.conn.is_handshaking() {
                debug!(
                    "connection {k}: TLS handshake done ({:?}, {:?})",
                    t.conn.protocol_version(),
                    t.conn.negotiated_cipher_suite().map(|s| s.suite())
                );
                // Output queued meanwhile (a 503) can go now.
                self.mark_dirty(k);
            } else if !t.held_out.is_empty() {
                self.mark_dirty(k);
            }
            // Gather while another whole record fits.
            if p.plain > 0 && plain.len() - filled >= MAX_RECORD {
                continue;
            }
            if filled > 0 {
                self.on_bytes(k, &mut plain[..filled]);
                filled = 0;
                if p.plain > 0 {
                    continue;
                }
            }
            if p.peer_closed {
                debug!("connection {k}: TLS close_notify from the peer");
                // An answer being sent is finished first, as after a FIN
                // (see `Phase::Responding`); TCP's end follows.
                if self
                    .conns
                    .get(k)
                    .is_some_and(|c| matches!(c.phase, Phase::Responding(_)))
                {
                    return Some(pos);
                }
                self.on_eof(k);
                return None;
            }
            if p.needs_input {
                return Some(pos);
            }
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
                Ok((sock, addr)) => self.admit(sock, addr, false, false),
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
    use super::{host_name, record_remainder};

    #[test]
    fn a_held_record_is_completed_with_what_it_lacks() {
        // A 0x20-byte record of which the header and 3 bytes are held.
        let held = [0x17, 3, 3, 0, 0x20, 1, 2, 3];
        assert_eq!(record_remainder(&held, &[0; 100]), 0x20 - 3);
        // Only 2 header bytes held: the length comes from what follows.
        assert_eq!(record_remainder(&[0x17, 3], &[3, 0, 0x20, 9, 9]), 3 + 0x20);
        // Not even the header completes: all of it.
        assert_eq!(record_remainder(&[0x17], &[3, 3]), 2);
        // More than one record held (a handshake message across records).
        assert_eq!(record_remainder(&[0x16, 3, 3, 0, 1, 0, 0x16], &[0; 9]), 0);
    }

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
