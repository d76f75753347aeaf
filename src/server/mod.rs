//! The server: one `mio::Poll`, a `slab` of connections keyed by `Token`.
//!
//! Each loop turn reads every ready socket until it would block (or until a
//! fairness budget runs out), turns bytes into events with the sans-IO engine
//! in [`crate::ws`], hands chat messages to [`crate::chat`], and then flushes
//! every connection that got output with one vectored write. Writable
//! interest is registered only while output is pending, so an idle server
//! sleeps in `epoll_wait` until the next timer sweep.

mod addr;
pub mod auth;
mod config;
pub mod config_file;
mod files;
pub mod http;
pub mod json_log;
mod metrics;
mod notify;
mod queue;
mod storage;
mod tls;

pub use config::{AccountCommand, Command, Config, LogFormat, Registration, parse_size};

use crate::chat::rate::{BucketTable, MAX_IDLE_ENTRIES, Verdict};
use crate::chat::{Chat, ChatConfig, ConnId, Now, Outbox};
use crate::ws::close::close_payload;
use crate::ws::deflate;
use crate::ws::frame::{MAX_HEADER_LEN, OpCode, encode_frame, encode_header};
use crate::ws::handshake::{self, HandshakeError, HeadScanner, Request, RequestError};
use crate::ws::receive::{Event, Payload, ProtocolError, Receiver};
use files::{Content, FileStream, StaticFiles};
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use queue::{Chunk, WriteQueue};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// The password worker has answers (see auth.rs).
const AUTH_WAKER: Token = Token(usize::MAX - 4);
/// One read buffer for the whole server: connections hold bytes only while
/// a message is in progress. Large enough that a 64 KiB message usually
/// arrives whole and is handled in place, without being assembled.
const READ_BUF: usize = 256 * 1024;
/// Reads per connection per loop turn before others get their turn.
const READS_PER_TURN: usize = 16;
/// Connections accepted past `--max-connections` only to be told 503 or 429.
const REJECT_SLACK: usize = 64;
/// How long accepting pauses when the process is out of file descriptors.
const EMFILE_PAUSE_MS: u64 = 100;
/// How often freed memory is handed back to the system.
const TRIM_EVERY_MS: u64 = 5_000;
/// Connection slots reserved at start (see `Server::bind`); past this many
/// the tables grow as needed.
const MAX_RESERVED_CONNS: usize = 1 << 16;
/// Distinct refused Host names logged (once each), so an operator sees why
/// a name is refused without a scan of names filling the log.
const MAX_LOGGED_HOSTS: usize = 32;
/// The subprotocol of the chat (see docs/protocol.md).
pub const CHAT_PROTOCOL: &str = "wschat.v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Echo,
    Chat,
}

#[derive(Debug)]
struct WsConn {
    rx: Receiver,
    endpoint: Endpoint,
    /// §5.5.1: once our close frame is queued nothing else is sent.
    close_sent: bool,
    /// The chat knows this connection (until it closes or is dropped).
    in_chat: bool,
    /// permessage-deflate negotiated (RFC 7692): the window our compressor
    /// keeps to. No zlib state is held here between messages.
    deflate: Option<u8>,
}

/// A plain HTTP answer being sent.
#[derive(Debug, Default)]
struct Responding {
    /// The rest of a file too large to cache, read as the socket drains.
    stream: Option<Box<FileStream>>,
    /// Keep-alive: once the answer is out, read the next request.
    keep_alive: bool,
    /// Requests answered on this connection, this one included.
    served: u32,
    /// Bytes received behind the request: the start of the next ones
    /// (pipelining), at most --max-head-size of them.
    next: Vec<u8>,
}

#[derive(Debug)]
enum Phase {
    /// Reading the request head; `served` requests were answered before
    /// on this connection (keep-alive, --keepalive-requests).
    Http {
        head: Vec<u8>,
        scanner: HeadScanner,
        served: u32,
    },
    /// A plain HTTP answer is queued; once it is out the connection ends,
    /// or with keep-alive goes back to `Http`. Nothing is read meanwhile:
    /// a client that half-closes after its request still gets the whole
    /// answer, and TCP holds back whatever else it sends.
    Responding(Responding),
    /// An open (or closing) WebSocket.
    Ws(WsConn),
    /// Our side is shut down; waiting for the peer's FIN before dropping, so
    /// that unread input does not turn our last bytes into a reset.
    Linger,
}

#[derive(Debug)]
struct Conn {
    sock: TcpStream,
    /// The client's address key (`addr::key`): the peer's, or behind a
    /// trusted proxy the forwarded client's once the head is read.
    ip: IpAddr,
    /// The per-address rules apply to this client (it is not exempt
    /// loopback), and it is counted in `Server::per_ip` under `ip`.
    counted: bool,
    phase: Phase,
    out: WriteQueue,
    /// Milliseconds (server clock) of the last byte received.
    last_rx: u64,
    last_ping: u64,
    /// When the current phase runs out: handshake, closing or lingering;
    /// on an open WebSocket, when the frame or message in progress must be
    /// complete (`u64::MAX` while none is).
    deadline: u64,
    dirty: bool,
    writable: bool,
    /// Reading stopped until output drains (backpressure on /echo).
    paused: bool,
    shutdown_when_flushed: bool,
    /// Admitted only to be answered 503 or 429 (counted in `refusing`).
    refused: bool,
    /// Set on the TLS port (see tls.rs).
    tls: Option<Box<tls::TlsConn>>,
    /// Accepted on --metrics-addr: only /metrics is served.
    metrics: bool,
}

/// An answer after which the connection may stay open.
struct Response {
    /// Without its final blank line (see `http::open_head`).
    head: Vec<u8>,
    body: Option<Chunk>,
    stream: Option<Box<FileStream>>,
    /// The request allows another after it (RFC 9112 §9.3, and no body).
    keep_alive: bool,
}

/// What a request head asks for.
enum Route {
    /// An answer after which the connection closes (errors, refusals).
    Respond(Vec<u8>, Option<Chunk>),
    /// A file, a 304 or 404 for one, or `/healthz`.
    Serve(Response),
    Upgrade {
        endpoint: Endpoint,
        response: Vec<u8>,
        nick: Option<String>,
        deflate: Option<u8>,
    },
}

pub struct Server {
    cfg: Config,
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Signals,
    conns: Slab<Conn>,
    files: StaticFiles,
    /// Connections streaming a file whose reads wait for the next turn's
    /// budget (see `files::READ_PER_TURN`).
    refill: Vec<usize>,
    per_ip: HashMap<IpAddr, u32>,
    /// WebSocket handshakes by address key (`--handshake-rate-*`).
    handshakes: BucketTable<IpAddr>,
    /// The machine's own names, accepted as Host (see `addr::host_allowed`).
    own_names: Vec<String>,
    /// Refused Host names already logged, at most `MAX_LOGGED_HOSTS`.
    logged_hosts: HashSet<String>,
    max_connections: usize,
    chat: Chat,
    rbuf: Vec<u8>,
    dirty: Vec<usize>,
    again: Vec<usize>,
    start: Instant,
    now: u64,
    sweep_every: u64,
    next_sweep: u64,
    accept_paused_until: Option<u64>,
    spare_fd: Option<std::fs::File>,
    shutdown_deadline: Option<u64>,
    memory_trim: Option<fn()>,
    /// This thread's CPU time in µs (see [`Server::with_cpu_clock`]).
    cpu_clock: Option<fn() -> u64>,
    next_trim: u64,
    /// Connections the chat's output found dead, or asked to close, still
    /// to be dealt with (see `with_chat`).
    chat_drops: Vec<usize>,
    chat_closes: Vec<(usize, u16, String)>,
    settling: bool,
    /// Connections admitted only to be refused, at most `REJECT_SLACK`.
    refusing: usize,
    /// Wall-clock milliseconds at the start of this turn (chat timestamps).
    wall: u64,
    /// The store (none with --no-persist) and what it still has to take.
    storage: Option<storage::Storage>,
    /// With --tls-cert: the port speaks only TLS.
    tls: Option<tls::Tls>,
    /// Scratch space for compressing an echo.
    zbuf: Vec<u8>,
    /// systemd's notification socket, when run as a `Type=notify` service.
    notifier: Option<notify::Notifier>,
    /// When the next `WATCHDOG=1` is due (server clock, ms).
    next_watchdog: u64,
    /// The password-hashing thread.
    auth: auth::Worker,
    /// Where the configuration came from, read again on SIGHUP.
    config_source: Option<config_file::Source>,
    /// Counters for /metrics, and its listener (--metrics-addr).
    metrics: metrics::Metrics,
    metrics_listener: Option<TcpListener>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(ms)
        .unwrap_or(0)
}

/// A non-blocking listener with our backlog (mio's `bind` uses 128, which a
/// burst of connects overflows).
fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // Restarting must not wait for the old connections' TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// How often the timers are swept: a quarter of the shortest timeout.
fn sweep_every(cfg: &Config) -> u64 {
    let shortest = [
        cfg.handshake_timeout,
        cfg.keepalive_timeout,
        cfg.ping_interval,
        cfg.idle_timeout,
        cfg.message_timeout,
        cfg.close_timeout,
    ]
    .into_iter()
    .min()
    .unwrap_or(Duration::from_secs(1));
    (ms(shortest) / 4).clamp(5, 1000)
}

/// Raises the open-file limit to its hard limit; returns the soft limit in force.
fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            warn!("could not raise the open-file limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(s, _)| s)
                .unwrap_or(1024)
        }
    }
}

impl Server {
    pub fn bind(cfg: Config) -> io::Result<Server> {
        let nofile = raise_nofile_limit();
        // Keep a reserve of descriptors for the listener, files, logs and the 503s.
        let derived = usize::try_from(nofile.saturating_sub(100 + REJECT_SLACK as u64))
            .unwrap_or(usize::MAX)
            .max(16);
        let max_connections = cfg.max_connections.unwrap_or(derived);
        let poll = Poll::new()?;
        let mut listener = listen(cfg.addr, cfg.backlog)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let tls = tls::Tls::new(&cfg, poll.registry(), local_addr.port())?;
        let metrics_listener = metrics::bind(cfg.metrics_addr, poll.registry())?;
        // SIGHUP reloads the certificate. It is caught without TLS too, so
        // that `systemctl reload` (the unit's ExecReload sends SIGHUP) never
        // stops a server that has nothing to reload.
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let sweep_every = sweep_every(&cfg);
        let mut chat = Chat::new(
            ChatConfig {
                motd: cfg.motd.clone(),
                history: cfg.history(),
                max_rooms_per_conn: cfg.max_rooms_per_conn,
                max_rooms: cfg.max_rooms,
                max_rooms_per_addr: cfg.max_rooms_per_addr,
                max_text_chars: cfg.max_text_chars,
                max_message_bytes: cfg.max_ws_message_size,
                rate_burst: cfg.rate_burst,
                rate_per_sec: cfg.rate_per_sec,
                room_retention_ms: ms(cfg.room_retention),
                max_history_bytes: cfg.max_history_bytes,
                durable: !cfg.no_persist,
                require_account: cfg.require_account,
                registration_open: cfg.registration == Registration::Open,
                max_auth_jobs: cfg.max_auth_jobs as usize,
                max_accounts: cfg.max_accounts as usize,
                registrations_per_hour: cfg.registrations_per_hour,
            },
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        );
        let storage = if cfg.no_persist {
            Some(storage::Storage::memory())
        } else {
            let now = Now {
                mono_ms: 0,
                wall_ms: wall_ms(),
            };
            Some(storage::Storage::open(&cfg, &mut chat, now)?)
        };
        info!("max connections {max_connections} (open-file limit {nofile})");
        // Per-connection tables are reserved now, while the heap is empty, so
        // that each gets a mapping of its own where only the entries in use
        // are resident. Grown by doubling later, they were copied into heap
        // space that a join storm had dirtied, and their spare capacity
        // stayed resident: 150 B per idle connection, measured.
        let reserve = max_connections
            .saturating_add(REJECT_SLACK)
            .min(MAX_RESERVED_CONNS);
        chat.reserve_connections(reserve);
        let auth = auth::Worker::start(
            cfg.max_auth_jobs as usize,
            mio::Waker::new(poll.registry(), AUTH_WAKER)?,
        )?;
        let files = StaticFiles::new(cfg.static_dir.clone(), cfg.static_cache_size);
        Ok(Server {
            cfg,
            files,
            refill: Vec::new(),
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            conns: Slab::with_capacity(reserve),
            per_ip: HashMap::new(),
            handshakes: BucketTable::new(MAX_IDLE_ENTRIES),
            own_names: Vec::new(),
            logged_hosts: HashSet::new(),
            max_connections,
            chat,
            rbuf: vec![0; READ_BUF],
            dirty: Vec::new(),
            again: Vec::new(),
            start: Instant::now(),
            now: 0,
            sweep_every,
            next_sweep: sweep_every,
            accept_paused_until: None,
            spare_fd: std::fs::File::open("/dev/null").ok(),
            shutdown_deadline: None,
            memory_trim: None,
            cpu_clock: None,
            next_trim: 0,
            chat_drops: Vec::new(),
            chat_closes: Vec::new(),
            settling: false,
            refusing: 0,
            wall: wall_ms(),
            storage,
            tls,
            zbuf: Vec::new(),
            notifier: notify::Notifier::from_env(),
            next_watchdog: 0,
            auth,
            config_source: None,
            metrics: metrics::Metrics::default(),
            metrics_listener,
        })
    }

    /// A function that hands freed memory back to the system, called every
    /// few seconds (the binary passes glibc's `malloc_trim`; the library
    /// itself has no unsafe code).
    pub fn with_memory_trim(mut self, f: fn()) -> Server {
        self.memory_trim = Some(f);
        self
    }

    /// A clock of this thread's CPU time in µs (the binary passes
    /// `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`), for the commit CPU time
    /// the store logs at shutdown.
    pub fn with_cpu_clock(mut self, f: fn() -> u64) -> Server {
        self.cpu_clock = Some(f);
        self
    }

    /// The machine's host name (the binary reads it with `gethostname`):
    /// it and `NAME.local` are accepted as Host without `--allowed-host`.
    pub fn with_hostname(mut self, name: &str) -> Server {
        self.own_names = addr::own_names(name);
        self
    }

    /// The command line, environment and file the configuration came from:
    /// SIGHUP reads them again (see `config_file::Source::reload`).
    pub fn with_config_source(mut self, source: config_file::Source) -> Server {
        self.config_source = Some(source);
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs until a signal asks the server to stop and the connections are closed.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // Bound and registered: connections from here on are served (those
        // that came since the bind wait in the backlog).
        if let Some(n) = &self.notifier {
            n.send(&format!("READY=1\nSTATUS=listening on {}", self.local_addr));
        }
        loop {
            let timeout = if self.again.is_empty() && self.refill.is_empty() {
                Duration::from_millis(self.next_wake().saturating_sub(self.now))
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(e);
            }
            self.turn_begins();
            // The clocks are read once per turn, not per message.
            self.now = ms(self.start.elapsed());
            self.wall = wall_ms();
            self.files.new_turn();
            for k in std::mem::take(&mut self.refill) {
                self.mark_dirty(k);
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(),
                    tls::REDIRECT => self.accept_redirect(),
                    metrics::METRICS => self.accept_metrics(),
                    SIGNALS => self.on_signal(),
                    AUTH_WAKER => self.on_auth_done(),
                    Token(k) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            // Read to the end when the peer closed: no later
                            // event would tell us about its FIN.
                            let to_eof = ev.is_read_closed() || ev.is_error();
                            self.on_readable(k, to_eof);
                        }
                        if ev.is_writable() {
                            self.mark_dirty(k);
                        }
                    }
                }
            }
            for k in std::mem::take(&mut self.again) {
                self.on_readable(k, true);
            }
            if self.now >= self.next_sweep {
                self.sweep();
                self.next_sweep = self.now + self.sweep_every;
            }
            self.submit_auth_jobs();
            // The turn's messages are committed before any of their copies
            // is queued: an acknowledgement means stored.
            self.commit_turn();
            self.watchdog();
            self.flush_dirty();
            self.turn_ends();
            if let Some(deadline) = self.shutdown_deadline
                && (self.conns.is_empty() || self.now >= deadline)
            {
                if let Some(st) = &self.storage {
                    st.log_stats();
                }
                info!("shut down with {} connections left", self.conns.len());
                return Ok(());
            }
        }
    }

    /// Answers from the password worker.
    fn on_auth_done(&mut self) {
        for d in self.auth.ready() {
            self.with_chat(|chat, now, out| chat.auth_done(d, now, out));
        }
    }

    /// The turn's hashing work, to the worker (a full queue answers `busy`).
    fn submit_auth_jobs(&mut self) {
        for job in self.chat.take_auth_jobs() {
            if let Some(d) = self.auth.submit(job) {
                self.with_chat(|chat, now, out| chat.auth_done(d, now, out));
            }
        }
    }

    fn chat_now(&self) -> Now {
        Now {
            mono_ms: self.now,
            wall_ms: self.wall,
        }
    }

    // ---- accepting -------------------------------------------------------

    fn accept_all(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((sock, addr)) => self.admit(sock, addr, true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    self.out_of_descriptors();
                    return;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    /// EMFILE: free the spare descriptor to accept one client and tell it 503,
    /// then stop accepting for a moment so the loop does not spin on a
    /// listener that stays readable.
    fn out_of_descriptors(&mut self) {
        warn!("out of file descriptors: refusing connections for {EMFILE_PAUSE_MS} ms");
        self.spare_fd = None;
        if let Some(Ok((sock, _))) = self.listener.as_ref().map(|l| l.accept()) {
            let _ = (&sock).write(&http::error(503, "server is full", ""));
        }
        self.spare_fd = std::fs::File::open("/dev/null").ok();
        if let Some(l) = self.listener.as_mut() {
            let _ = self.poll.registry().deregister(l);
        }
        self.accept_paused_until = Some(self.now + EMFILE_PAUSE_MS);
    }

    fn ip_is_limited(&self, ip: IpAddr) -> bool {
        self.cfg.limit_loopback || !ip.is_loopback()
    }

    fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        self.cfg.trusted_proxy.iter().any(|c| c.contains(peer))
    }

    fn over_ip(&self, key: IpAddr) -> bool {
        self.per_ip.get(&key).copied().unwrap_or(0) as usize >= self.cfg.max_connections_per_ip
    }

    /// For a connection from a trusted proxy, takes the client's address
    /// from the forwarding headers and counts it against
    /// `--max-connections-per-ip`. Forwarded addresses are always limited,
    /// loopback ones included; without the headers the proxy itself is the
    /// client. Done per request: a proxy may carry another client's request
    /// on a kept-alive connection. Returns the refusal if over the limit.
    fn resolve_client(&mut self, k: usize, req: &Request<'_>) -> Option<Vec<u8>> {
        let prefix = self.cfg.ipv6_prefix_len;
        if self.cfg.trusted_proxy.is_empty() {
            return None;
        }
        let c = self.conns.get(k)?;
        // Asked of the socket rather than kept: only with proxies configured.
        let peer = c.sock.peer_addr().ok()?.ip().to_canonical();
        if !self.is_trusted_proxy(peer) {
            return None;
        }
        let (ip, limited) = match addr::forwarded_client(
            peer,
            &req.forwarded,
            &req.x_forwarded_for,
            &self.cfg.trusted_proxy,
        ) {
            Some(client) => (addr::key(client, prefix), true),
            None => (addr::key(peer, prefix), self.ip_is_limited(peer)),
        };
        if c.counted && c.ip == ip {
            return None;
        }
        if c.counted {
            self.uncount(c.ip);
        }
        let over = limited && self.over_ip(ip);
        let c = self.conns.get_mut(k)?;
        c.ip = ip;
        c.counted = limited && !over;
        if over {
            return Some(http::error(
                429,
                "too many connections from your address",
                "Retry-After: 5\r\n",
            ));
        }
        if limited {
            *self.per_ip.entry(ip).or_insert(0) += 1;
        }
        None
    }

    fn uncount(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// The DNS-rebinding check (`--allowed-host`); a refusal is logged once
    /// per name so that an operator sees which flag to add.
    fn check_host(&mut self, host: Option<&str>) -> Option<Vec<u8>> {
        let host = host?;
        if addr::host_allowed(host, &self.own_names, &self.cfg.allowed_host) {
            return None;
        }
        let shown = addr::shown_name(host);
        if self.logged_hosts.len() < MAX_LOGGED_HOSTS && self.logged_hosts.insert(shown.into()) {
            info!(
                "refused a request for Host {shown:?} (421, DNS-rebinding guard); \
                 to serve this name, start wschat with --allowed-host {shown}"
            );
            if self.logged_hosts.len() == MAX_LOGGED_HOSTS {
                info!("further refused Host names are not logged");
            }
        }
        Some(http::error(
            421,
            &format!(
                "this server does not answer to the name {shown:?}; \
                 its operator can start wschat with --allowed-host {shown}"
            ),
            "X-Content-Type-Options: nosniff\r\n",
        ))
    }

    /// One WebSocket handshake from the connection's address
    /// (`--handshake-rate-*`); the 429 to answer when over the limit.
    fn take_handshake(&mut self, k: usize) -> Option<Vec<u8>> {
        let (burst, per_sec) = (
            self.cfg.handshake_rate_burst,
            self.cfg.handshake_rate_per_sec,
        );
        let c = self.conns.get(k)?;
        if !c.counted || burst == 0 {
            return None;
        }
        let (verdict, wait_ms) = self.handshakes.take(c.ip, self.now, burst, per_sec);
        if verdict == Verdict::Pass {
            return None;
        }
        let secs = wait_ms.div_ceil(1000).clamp(1, 3600);
        Some(http::error(
            429,
            "too many handshakes from your address",
            &format!("Retry-After: {secs}\r\n"),
        ))
    }

    /// `secure`: from the main listener, which speaks TLS when configured.
    fn admit(&mut self, mut sock: TcpStream, addr: SocketAddr, secure: bool) {
        // On a dual-stack listener IPv4 clients appear as ::ffff:a.b.c.d;
        // count them (and recognise loopback) by their IPv4 address.
        let peer = addr.ip().to_canonical();
        self.metrics.accepted += 1;
        let limited = self.ip_is_limited(peer);
        let ip = addr::key(peer, self.cfg.ipv6_prefix_len);
        // A trusted proxy carries many clients: they are counted by their
        // forwarded addresses once the request head is read.
        let counted = limited && !self.is_trusted_proxy(peer);
        // Connections only being told 503/429 live in the slack, not in the
        // table proper: otherwise one address, refused over and over, could
        // fill the table and lock everyone else out.
        let over_total = self.conns.len() - self.refusing >= self.max_connections;
        let over_ip = counted && self.over_ip(ip);
        let refusal = if over_total {
            Some((503, "too many connections"))
        } else if over_ip {
            Some((429, "too many connections from your address"))
        } else {
            None
        };
        if refusal.is_some() && self.refusing >= REJECT_SLACK {
            return; // Not even room to say no: drop it.
        }
        let _ = sock.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let k = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut sock, Token(k), Interest::READABLE)
        {
            warn!("register: {e}");
            return;
        }
        entry.insert(Conn {
            sock,
            ip,
            counted: counted && refusal.is_none(),
            phase: Phase::Http {
                head: Vec::new(),
                scanner: HeadScanner::default(),
                served: 0,
            },
            out: WriteQueue::default(),
            last_rx: self.now,
            last_ping: self.now,
            deadline: self.now + ms(self.cfg.handshake_timeout),
            dirty: false,
            writable: false,
            paused: false,
            shutdown_when_flushed: false,
            refused: refusal.is_some(),
            metrics: false,
            tls: match &self.tls {
                // Never plain on the TLS port: without its state, no connection.
                Some(t) if secure => match t.accept() {
                    Some(state) => Some(state),
                    None => return,
                },
                _ => None,
            },
        });
        if refusal.is_some() {
            self.refusing += 1;
        } else if counted {
            *self.per_ip.entry(ip).or_insert(0) += 1;
        }
        if let Some((status, reason)) = refusal {
            debug!("refusing {addr}: {status}");
            self.respond(k, http::error(status, reason, "Retry-After: 5\r\n"), None);
        }
    }

    // ---- reading ---------------------------------------------------------

    fn on_readable(&mut self, k: usize, to_eof: bool) {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let mut budget = READS_PER_TURN;
        while let Some(c) = self.conns.get_mut(k) {
            // While an answer is sent, input waits in the socket (see
            // `Phase::Responding`).
            if c.paused || matches!(c.phase, Phase::Responding(_)) {
                break;
            }
            if budget == 0 {
                self.again.push(k);
                break;
            }
            budget -= 1;
            match (&c.sock).read(&mut rbuf) {
                Ok(0) => {
                    self.on_eof(k);
                    break;
                }
                Ok(n) => {
                    // Only bytes received keep a connection alive (--idle-timeout).
                    c.last_rx = self.now;
                    self.metrics.bytes_in += n as u64;
                    if c.tls.is_some() {
                        self.on_tls_bytes(k, &mut rbuf[..n]);
                    } else {
                        self.on_bytes(k, &mut rbuf[..n]);
                    }
                    // A short read emptied the socket: skip the read that
                    // would only say EAGAIN. With edge-triggered epoll, bytes
                    // arriving after this read raise a new event.
                    if n < rbuf.len() && !to_eof {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_conn(k);
                    break;
                }
            }
        }
        self.rbuf = rbuf;
    }

    fn on_eof(&mut self, k: usize) {
        // Try once to get out what is queued (the peer may only have half-closed).
        if let Some(c) = self.conns.get_mut(k) {
            c.write_final();
        }
        self.drop_conn(k);
    }

    fn on_bytes(&mut self, k: usize, data: &mut [u8]) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        match &mut c.phase {
            Phase::Http { .. } => self.on_http_bytes(k, data),
            Phase::Ws(_) => self.on_ws_bytes(k, data),
            Phase::Responding(_) | Phase::Linger => {}
        }
    }

    fn on_http_bytes(&mut self, k: usize, data: &[u8]) {
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

    fn route(&mut self, k: usize, head: &[u8]) -> Route {
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
        use http::Encoding::{Br, Gzip, Identity};
        let offered: &[http::Encoding] = match (found.br.is_some(), found.gzip.is_some()) {
            (true, true) => &[Br, Gzip],
            (true, false) => &[Br],
            (false, true) => &[Gzip],
            (false, false) => &[],
        };
        let Some(encoding) = http::negotiate(meta.accept_encoding, offered) else {
            return error_response(
                406,
                "identity refused and no other coding offered",
                head_only,
                keep_alive,
            );
        };
        let (content, len) = match (encoding, found.br, found.gzip) {
            (Br, Some(b), _) | (Gzip, _, Some(b)) => (Content::Static(b), b.len() as u64),
            _ => (found.content, found.len),
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
    fn serve(&mut self, k: usize, r: Response, next: Vec<u8>, served: u32) {
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
    fn next_request(&mut self, k: usize) {
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

    fn respond(&mut self, k: usize, head: Vec<u8>, body: Option<Chunk>) {
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

    fn upgrade(
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

    fn on_ws_bytes(&mut self, k: usize, data: &mut [u8]) {
        let mut pos = 0;
        while pos < data.len() {
            let Some(c) = self.conns.get_mut(k) else {
                return;
            };
            let Phase::Ws(ws) = &mut c.phase else { return };
            let endpoint = ws.endpoint;
            let (n, r) = ws.rx.read(&mut data[pos..]);
            pos += n;
            match r {
                Ok(Some(ev)) => self.on_event(k, endpoint, ev),
                Ok(None) if n == 0 => break,
                Ok(None) => {}
                Err(e) => {
                    debug!("connection {k}: {}", e.reason());
                    self.fail(k, e);
                    return;
                }
            }
        }
        self.track_message_deadline(k);
    }

    /// A frame or message in progress must complete within
    /// `--message-timeout` of the read that started it: bytes trickled now
    /// and then keep the idle timeout at bay, so without this deadline they
    /// could hold a partial message's buffer, a nick and rooms forever.
    /// The engine reads no clock; the server keeps the deadline.
    fn track_message_deadline(&mut self, k: usize) {
        let timeout = ms(self.cfg.message_timeout);
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let Phase::Ws(ws) = &c.phase else { return };
        if ws.close_sent {
            return; // the deadline is now the close timeout's
        }
        if !ws.rx.in_progress() {
            c.deadline = u64::MAX;
        } else if c.deadline == u64::MAX {
            c.deadline = self.now.saturating_add(timeout);
        }
    }

    fn on_event(&mut self, k: usize, endpoint: Endpoint, ev: Event<'_>) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let Phase::Ws(ws) = &mut c.phase else { return };
        if matches!(ev, Event::Text(_) | Event::Binary(_)) {
            self.metrics.message_in(endpoint);
        }
        match ev {
            // §7.1.3: after our close frame, data is read but discarded.
            Event::Text(_) | Event::Binary(_) if ws.close_sent => {}
            Event::Text(p) if endpoint == Endpoint::Chat => {
                self.with_chat(|chat, now, out| chat.on_text(k, &p, now, out));
            }
            Event::Binary(_) if endpoint == Endpoint::Chat => {
                self.start_close(k, 1003, "binary messages are not accepted on /ws");
            }
            Event::Text(p) => self.echo(k, OpCode::Text, p),
            Event::Binary(p) => self.echo(k, OpCode::Binary, p),
            Event::Ping(p) => {
                // §5.5.2: answer with a pong carrying the same payload, at once.
                if !ws.close_sent {
                    let mut frame = Vec::with_capacity(2 + p.len());
                    encode_frame(&mut frame, OpCode::Pong, &p);
                    c.out.push_pong(frame);
                    self.mark_dirty(k);
                }
            }
            Event::Pong(_) => {}
            Event::Close(code) => {
                self.metrics.close_received(code);
                // §5.5.1: answer a close with a close, echoing its status code;
                // §7.1.1: then the server closes the TCP connection first.
                if !ws.close_sent {
                    self.metrics.close_sent(code.unwrap_or(1005));
                    ws.close_sent = true;
                    let payload = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                    let mut frame = Vec::with_capacity(4);
                    encode_frame(&mut frame, OpCode::Close, &payload);
                    // After the echoes already queued: nothing follows a close.
                    c.out.push(Chunk::Fence(frame));
                }
                c.shutdown_when_flushed = true;
                c.deadline = self.now + ms(self.cfg.close_timeout);
                self.mark_dirty(k);
                self.leave_chat(k);
            }
        }
    }

    fn echo(&mut self, k: usize, opcode: OpCode, p: Payload<'_>) {
        let max_pending = self.cfg.max_pending_output;
        let threshold = self.cfg.deflate_threshold;
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let deflate = match &c.phase {
            Phase::Ws(ws) => ws.deflate.filter(|_| p.len() >= threshold),
            _ => None,
        };
        match (deflate, p) {
            // RFC 7692 §6.1, §7.2.1: compressed, RSV1 on the (only) frame.
            (Some(bits), p) => {
                let mut z = std::mem::take(&mut self.zbuf);
                z.clear();
                deflate::compress(&p, bits, &mut z);
                if z.len() >= 4096 {
                    let mut hdr = [0u8; MAX_HEADER_LEN];
                    let n = encode_header(&mut hdr, true, opcode, z.len() as u64, None);
                    hdr[0] |= 0x40;
                    c.out.push(Chunk::Owned(hdr[..n].to_vec()));
                    c.out.push(Chunk::Tail(z));
                } else {
                    c.out.push_compressed_frame(opcode, &z);
                    self.zbuf = z;
                }
            }
            (None, p) => match p {
                // A large assembled message is queued as is, behind its own header.
                Payload::Owned(v) if v.len() >= 4096 => {
                    let mut hdr = [0u8; MAX_HEADER_LEN];
                    let n = encode_header(&mut hdr, true, opcode, v.len() as u64, None);
                    c.out.push(Chunk::Owned(hdr[..n].to_vec()));
                    c.out.push(Chunk::Tail(v));
                }
                p => c.out.push_frame(opcode, &p),
            },
        }
        // Backpressure: stop reading until the peer takes its echoes.
        if c.out.pending() > max_pending {
            c.paused = true;
        }
        self.metrics.message_out(Endpoint::Echo, 1);
        self.mark_dirty(k);
    }

    // ---- closing ---------------------------------------------------------

    /// Fails the connection (§7.1.7): a close frame with the error's code,
    /// then our side of TCP closes, since the rest of the stream cannot be parsed.
    fn fail(&mut self, k: usize, e: ProtocolError) {
        self.start_close(k, e.close_code(), e.reason());
        if let Some(c) = self.conns.get_mut(k) {
            c.shutdown_when_flushed = true;
        }
    }

    /// Starts the closing handshake from our side (§7.1.2).
    fn start_close(&mut self, k: usize, code: u16, reason: &str) {
        let close_timeout = ms(self.cfg.close_timeout);
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let Phase::Ws(ws) = &mut c.phase else { return };
        if ws.close_sent {
            return;
        }
        ws.close_sent = true;
        let mut frame = Vec::with_capacity(4 + reason.len());
        encode_frame(&mut frame, OpCode::Close, &close_payload(code, reason));
        // After the data already queued (§5.5.1: no data frame follows a close).
        c.out.push(Chunk::Fence(frame));
        c.deadline = self.now + close_timeout;
        // Nothing more is read from a paused peer, but its close must get through.
        c.paused = false;
        self.metrics.close_sent(code);
        self.mark_dirty(k);
        self.leave_chat(k);
    }

    fn leave_chat(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        let Phase::Ws(ws) = &mut c.phase else { return };
        if std::mem::replace(&mut ws.in_chat, false) {
            self.with_chat(|chat, now, out| chat.disconnect(k, now, out));
        }
    }

    fn drop_conn(&mut self, k: usize) {
        let Some(c) = self.conns.try_remove(k) else {
            return;
        };
        if c.refused {
            self.refusing -= 1;
        } else if c.counted {
            self.uncount(c.ip);
        }
        if let Phase::Ws(ws) = &c.phase
            && ws.in_chat
        {
            self.with_chat(|chat, now, out| chat.disconnect(k, now, out));
        }
        // Dropping the stream closes the socket and removes it from the poll.
    }

    // ---- the chat --------------------------------------------------------

    /// Calls into the chat with an outbox onto the connections' queues, then
    /// carries out the closes it asked for or that overflowing queues need.
    fn with_chat(&mut self, f: impl FnOnce(&mut Chat, Now, &mut dyn Outbox)) {
        let now = self.chat_now();
        let mut closes = Vec::new();
        let mut dead = Vec::new();
        let mut out = ServerOutbox {
            conns: &mut self.conns,
            dead: &mut dead,
            dirty: &mut self.dirty,
            max_pending: self.cfg.max_pending_output,
            closes: &mut closes,
            storage: self.storage.as_mut(),
            frames: Frames::default(),
            runs: RunFrames::default(),
            deflate_threshold: self.cfg.deflate_threshold,
            delivered: 0,
        };
        f(&mut self.chat, now, &mut out);
        self.metrics.message_out(Endpoint::Chat, out.delivered);
        self.chat_drops.extend(dead);
        self.chat_closes.extend(closes);
        // Each drop or close calls back into the chat (its members leave
        // their rooms), which may find more: work through them in a loop
        // here rather than by recursion, whose depth a crowd could choose.
        if self.settling {
            return;
        }
        self.settling = true;
        loop {
            if let Some(k) = self.chat_drops.pop() {
                self.drop_conn(k);
            } else if let Some((k, code, reason)) = self.chat_closes.pop() {
                if code == 1008
                    && reason == SLOW_CONSUMER
                    && let Some(c) = self.conns.get_mut(k)
                {
                    // Its backlog is dropped; the client recovers it with `since`.
                    c.out.discard_unsent_data();
                    self.metrics.slow_consumer_drops += 1;
                }
                self.start_close(k, code, &reason);
            } else {
                break;
            }
        }
        self.settling = false;
    }

    // ---- writing ---------------------------------------------------------

    fn mark_dirty(&mut self, k: usize) {
        if let Some(c) = self.conns.get_mut(k)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(k);
        }
    }

    fn flush_dirty(&mut self) {
        while !self.dirty.is_empty() {
            for k in std::mem::take(&mut self.dirty) {
                self.flush(k);
            }
        }
    }

    fn flush(&mut self, k: usize) {
        let max_pending = self.cfg.max_pending_output;
        let close_timeout = ms(self.cfg.close_timeout);
        let message_timeout = ms(self.cfg.message_timeout);
        // A streamed file's unsent bytes count against --max-pending-output.
        let chunk = files::STREAM_CHUNK.min(max_pending).max(1);
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        c.dirty = false;
        let w = match write_out(c, &self.files, chunk) {
            Ok(w) => w,
            Err(_) => {
                self.drop_conn(k);
                return;
            }
        };
        if w.starved {
            self.refill.push(k);
        }
        let responding = matches!(c.phase, Phase::Responding(_));
        if w.progress && responding {
            // An answer gets --close-timeout between two pieces the client
            // takes, however long it is in all.
            c.deadline = self.now + close_timeout;
        }
        let drained = w.queue_empty;
        // Writable interest only while output waits.
        if drained == c.writable {
            let interest = if drained {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            if self
                .poll
                .registry()
                .reregister(&mut c.sock, Token(k), interest)
                .is_err()
            {
                self.drop_conn(k);
                return;
            }
            c.writable = !drained;
        }
        if c.paused && c.out.pending() <= max_pending / 2 {
            c.paused = false;
            self.again.push(k);
            // A message cut short by our not reading gets its time again.
            if matches!(&c.phase, Phase::Ws(ws) if !ws.close_sent) && c.deadline != u64::MAX {
                c.deadline = self.now.saturating_add(message_timeout);
            }
        }
        if w.done && responding && !c.shutdown_when_flushed {
            if self.shutdown_deadline.is_none() {
                self.next_request(k);
                return;
            }
            c.shutdown_when_flushed = true; // shutting down: no next request
        }
        if w.done && c.shutdown_when_flushed {
            c.shutdown_when_flushed = false;
            c.shutdown_write();
            c.phase = Phase::Linger;
            c.deadline = self.now + close_timeout;
            if responding {
                // Input that waited while we answered (the peer's FIN, say)
                // raises no new event: look at it next turn.
                self.again.push(k);
            }
        }
    }

    // ---- timers and signals -----------------------------------------------

    fn sweep(&mut self) {
        let now = self.now;
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
            if let Some(l) = self.listener.as_mut() {
                let _ = self
                    .poll
                    .registry()
                    .register(l, LISTENER, Interest::READABLE);
            }
            self.accept_all();
        }
        let idle = ms(self.cfg.idle_timeout);
        let ping = ms(self.cfg.ping_interval);
        let mut expired = Vec::new();
        let mut late = Vec::new();
        let mut silent = Vec::new();
        let mut to_ping = Vec::new();
        for (k, c) in self.conns.iter() {
            match &c.phase {
                Phase::Ws(ws) if !ws.close_sent => {
                    // Not while we are the ones not reading (backpressure).
                    if now >= c.deadline && !c.paused {
                        late.push(k);
                    } else if now.saturating_sub(c.last_rx) >= idle {
                        silent.push(k);
                    } else if now.saturating_sub(c.last_rx.max(c.last_ping)) >= ping {
                        to_ping.push(k);
                    }
                }
                _ if now >= c.deadline => expired.push(k),
                _ => {}
            }
        }
        for k in expired {
            debug!("connection {k}: timed out");
            self.drop_conn(k);
        }
        for k in late {
            debug!("connection {k}: message not complete in time");
            self.start_close(k, 1008, "message timeout");
        }
        for k in silent {
            self.start_close(k, 1001, "idle timeout");
        }
        for k in to_ping {
            if let Some(c) = self.conns.get_mut(k) {
                c.last_ping = now;
                c.out.push(Chunk::Control(vec![0x89, 0]));
                self.mark_dirty(k);
            }
        }
        self.handshakes.expire(
            self.now,
            self.cfg.handshake_rate_burst,
            self.cfg.handshake_rate_per_sec,
        );
        let now = self.chat_now();
        self.chat.tick(now);
        // After a burst (a crowd joining, each answered with a long member
        // list) the allocator holds freed pages, and the queue pool the
        // queues of the burst; hand them back now and then.
        if self.now >= self.next_trim {
            self.next_trim = self.now + TRIM_EVERY_MS;
            queue::release_spares();
            deflate::release_pools();
            if let Some(trim) = self.memory_trim {
                trim();
            }
        }
    }

    /// When the loop must wake without events: the next sweep, or the next
    /// watchdog notice if that comes first.
    fn next_wake(&self) -> u64 {
        match self.notifier.as_ref().and_then(|n| n.watchdog_every()) {
            Some(_) => self.next_sweep.min(self.next_watchdog),
            None => self.next_sweep,
        }
    }

    /// `WATCHDOG=1` from the loop's timer, every half of systemd's
    /// `WatchdogSec`: a loop that stops turning is restarted by systemd.
    fn watchdog(&mut self) {
        let Some(n) = &self.notifier else { return };
        let Some(every) = n.watchdog_every() else {
            return;
        };
        if self.now >= self.next_watchdog {
            n.send("WATCHDOG=1");
            self.next_watchdog = self.now + ms(every).max(1);
        }
    }

    fn on_signal(&mut self) {
        let (hup, signals): (Vec<i32>, Vec<i32>) =
            self.signals.pending().partition(|&s| s == SIGHUP);
        if !hup.is_empty() {
            self.reload_config();
            self.reload_tls();
        }
        if signals.is_empty() {
            return;
        }
        if self.shutdown_deadline.is_some() {
            info!("second signal: exiting now");
            std::process::exit(130);
        }
        info!(
            "signal {}: closing connections (up to {:?})",
            signals[0], self.cfg.shutdown_timeout
        );
        if let Some(n) = &self.notifier {
            n.send("STOPPING=1\nSTATUS=closing connections");
        }
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.metrics_listener = None;
        let now = self.chat_now();
        self.chat.shutdown(now);
        if let Some(t) = self.tls.as_mut() {
            t.close_redirect();
        }
        // Everyone is leaving: telling each member about every other one's
        // departure would cost the square of the members for nothing.
        for (_, c) in self.conns.iter_mut() {
            if let Phase::Ws(ws) = &mut c.phase {
                ws.in_chat = false;
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            match self
                .conns
                .get(k)
                .map(|c| matches!(c.phase, Phase::Ws(_) | Phase::Responding(_)))
            {
                Some(true) => self.start_close(k, 1001, "server shutting down"),
                Some(false) => self.drop_conn(k),
                None => {}
            }
        }
        self.shutdown_deadline = Some(self.now + ms(self.cfg.shutdown_timeout));
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

/// What one `write_out` did.
#[derive(Default)]
struct Written {
    /// The queue is empty.
    queue_empty: bool,
    /// Everything is out, a streamed file included.
    done: bool,
    /// Some bytes left, or a piece of the file was read.
    progress: bool,
    /// A file's next piece waits for the next turn's read budget.
    starved: bool,
}

/// Writes what the socket takes. While a file is streamed, its next piece
/// (at most `chunk` bytes) is read each time the queue drains, within the
/// turn's read budget: one connection's unsent file bytes are at most one
/// piece, and the loop never blocks on a large read.
fn write_out(c: &mut Conn, files: &StaticFiles, chunk: usize) -> io::Result<Written> {
    let mut w = Written::default();
    loop {
        let before = c.out.pending();
        let empty = c.write_queue()?;
        w.progress |= c.out.pending() < before;
        w.queue_empty = empty;
        let Phase::Responding(Responding { stream, .. }) = &mut c.phase else {
            w.done = empty;
            return Ok(w);
        };
        let Some(s) = stream.as_mut().filter(|s| !s.is_done()) else {
            *stream = None;
            w.done = empty;
            return Ok(w);
        };
        if !empty {
            return Ok(w);
        }
        let n = s.next_len(chunk);
        if !files.take_read_budget(n) {
            w.starved = true;
            return Ok(w);
        }
        let piece = s.read_chunk(n)?;
        w.progress = true;
        c.out.push(Chunk::Owned(piece));
    }
}

/// The reason given to a client whose output overflowed.
const SLOW_CONSUMER: &str = "slow consumer";

/// The chat's view of the connections: it hands payloads, the outbox
/// queues shared frames of them.
struct ServerOutbox<'a> {
    conns: &'a mut Slab<Conn>,
    dead: &'a mut Vec<usize>,
    dirty: &'a mut Vec<usize>,
    max_pending: usize,
    closes: &'a mut Vec<(usize, u16, String)>,
    storage: Option<&'a mut storage::Storage>,
    frames: Frames,
    runs: RunFrames,
    deflate_threshold: usize,
    /// Frames queued (`/metrics`).
    delivered: u64,
}

/// The frames of the payload being sent. The chat sends a broadcast's one
/// payload to its recipients one after another, so remembering the last
/// payload makes one plain frame and at most one compressed frame per
/// broadcast, each built only when a first recipient needs it and shared
/// by every queue (RFC 7692 §7.1.1.1: with `server_no_context_takeover`
/// the compressed bytes are the same for every deflate peer).
#[derive(Default)]
struct Frames {
    payload: Option<Rc<[u8]>>,
    plain: Option<Rc<[u8]>>,
    /// The compressed frame per window (RFC 7692 §7.1.2.1: 8 to 15 bits),
    /// so peers that negotiated different windows, in any order, cost one
    /// compression per window, never one per recipient.
    compressed: PerWindow,
}

/// One compressed frame per server window size, 8 to 15 bits.
type PerWindow = [Option<Rc<[u8]>>; 8];

/// The slot of window `bits` in a [`PerWindow`].
fn window_slot(bits: u8) -> usize {
    usize::from(bits.clamp(8, 15) - 8)
}

impl Frames {
    fn get(&mut self, payload: &Rc<[u8]>, deflate: Option<u8>) -> Rc<[u8]> {
        // Holding the payload keeps its address from being reused.
        if !self
            .payload
            .as_ref()
            .is_some_and(|p| Rc::ptr_eq(p, payload))
        {
            *self = Frames {
                payload: Some(Rc::clone(payload)),
                ..Frames::default()
            };
        }
        match deflate {
            None => Rc::clone(self.plain.get_or_insert_with(|| text_frame(payload, false))),
            Some(bits) => Rc::clone(self.compressed[window_slot(bits)].get_or_insert_with(|| {
                let mut z = Vec::with_capacity(payload.len() / 2 + 16);
                deflate::compress(payload, bits, &mut z);
                text_frame(&z, true)
            })),
        }
    }
}

/// The frames of the run of payloads being sent (`Outbox::send_run`): the
/// run's text frames back to back in one shared buffer, plain and at most
/// one compressed variant per window, each built when a first member needs it. A
/// member's queue then holds one entry for the run, and its write is one
/// slice, whatever the number of messages.
#[derive(Default)]
struct RunFrames {
    /// The run's first payload (held, so its address is not reused) and
    /// its length: a run is sent to all its members before the next.
    first: Option<Rc<[u8]>>,
    len: usize,
    plain: Option<Rc<[u8]>>,
    compressed: PerWindow,
}

impl RunFrames {
    fn get(&mut self, run: &[Rc<[u8]>], deflate: Option<u8>, threshold: usize) -> Rc<[u8]> {
        let same = run.len() == self.len
            && match (&self.first, run.first()) {
                (Some(a), Some(b)) => Rc::ptr_eq(a, b),
                _ => false,
            };
        if !same {
            *self = RunFrames {
                first: run.first().cloned(),
                len: run.len(),
                ..RunFrames::default()
            };
        }
        match deflate {
            None => Rc::clone(self.plain.get_or_insert_with(|| run_frames(run, None, 0))),
            Some(bits) => Rc::clone(
                self.compressed[window_slot(bits)]
                    .get_or_insert_with(|| run_frames(run, Some(bits), threshold)),
            ),
        }
    }
}

/// The text frames of `run` back to back; with `deflate`, each payload of
/// at least `threshold` bytes compressed (RFC 7692 §7.2.1: each message
/// its own compressed frame, as `Frames::get` makes them one by one).
fn run_frames(run: &[Rc<[u8]>], deflate: Option<u8>, threshold: usize) -> Rc<[u8]> {
    let mut out = Vec::with_capacity(run.iter().map(|p| p.len() + MAX_HEADER_LEN).sum());
    let mut z = Vec::new();
    let mut hdr = [0u8; MAX_HEADER_LEN];
    for p in run {
        let (body, compressed): (&[u8], bool) = match deflate {
            Some(bits) if p.len() >= threshold => {
                z.clear();
                deflate::compress(p, bits, &mut z);
                (&z, true)
            }
            _ => (p, false),
        };
        let n = encode_header(&mut hdr, true, OpCode::Text, body.len() as u64, None);
        if compressed {
            hdr[0] |= 0x40;
        }
        out.extend_from_slice(&hdr[..n]);
        out.extend_from_slice(body);
    }
    Rc::from(out)
}

/// One complete text frame of `payload`, in one exact allocation.
fn text_frame(payload: &[u8], compressed: bool) -> Rc<[u8]> {
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut hdr, true, OpCode::Text, payload.len() as u64, None);
    if compressed {
        hdr[0] |= 0x40;
    }
    // An exact-size iterator: one allocation, no intermediate buffer.
    hdr[..n].iter().chain(payload).copied().collect()
}

impl ServerOutbox<'_> {
    /// Queues the shared frame (or run of frames) that `frame` makes (from
    /// the frame caches, the deflate threshold and the connection's
    /// permessage-deflate window) for one connection: `n` messages, counted
    /// as deliveries.
    fn queue(
        &mut self,
        to: ConnId,
        n: u64,
        frame: impl FnOnce(&mut Frames, &mut RunFrames, usize, Option<u8>) -> Rc<[u8]>,
    ) {
        let Some(c) = self.conns.get_mut(to) else {
            return;
        };
        let Phase::Ws(ws) = &c.phase else { return };
        if ws.close_sent {
            return;
        }
        // Checked before queueing, so one large answer (a `joined` with long
        // history) never trips the limit on its own: the bound is the limit
        // plus one frame (or one run of at most `durable::MAX_RUN` frames).
        if c.out.pending() > self.max_pending {
            self.closes.push((to, 1008, SLOW_CONSUMER.to_string()));
            return;
        }
        let f = frame(
            &mut self.frames,
            &mut self.runs,
            self.deflate_threshold,
            ws.deflate,
        );
        c.out.push(Chunk::Shared(f));
        self.delivered += n;
        if c.out.batch_just_filled() {
            // A burst (say presence for a thousand joins in one turn) would
            // otherwise pile up queue entries for every member until the end
            // of the turn: write a full batch now.
            if c.write_queue().is_err() {
                // The peer is gone: queue nothing more, drop it after this call.
                if let Phase::Ws(ws) = &mut c.phase {
                    ws.close_sent = true;
                }
                self.dead.push(to);
                return;
            }
        }
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(to);
        }
    }
}

impl Outbox for ServerOutbox<'_> {
    fn send(&mut self, to: ConnId, payload: &Rc<[u8]>) {
        self.queue(to, 1, |frames, _, threshold, deflate| {
            frames.get(payload, deflate.filter(|_| payload.len() >= threshold))
        });
    }

    fn send_run(&mut self, to: ConnId, payloads: &[Rc<[u8]>]) {
        match payloads {
            [] => {}
            [p] => self.send(to, p),
            run => self.queue(to, run.len() as u64, |_, runs, threshold, deflate| {
                runs.get(run, deflate, threshold)
            }),
        }
    }

    fn close(&mut self, to: ConnId, code: u16, reason: &str) {
        self.closes.push((to, code, reason.to_string()));
    }

    fn archive(
        &mut self,
        room: &str,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<crate::chat::room::Msg>, crate::chat::ArchiveError> {
        match self.storage.as_mut() {
            Some(st) => st.archive(room, lo, hi),
            None => Ok(Vec::new()),
        }
    }

    fn search(
        &mut self,
        room: &str,
        query: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<crate::chat::room::Msg>, crate::chat::ArchiveError> {
        match self.storage.as_mut() {
            Some(st) => st.search(room, query, before, limit),
            None => Ok(Vec::new()),
        }
    }
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
#[cfg(test)]
mod tests {
    /// An idle connection's whole cost is mostly this struct (plus the
    /// chat's entry): keep it from growing unnoticed (README, Performance).
    #[test]
    fn per_connection_state_stays_small() {
        // 152 with the pointer to the TLS state (tls.rs), which is boxed:
        // without TLS it costs those 8 bytes and nothing more.
        assert!(std::mem::size_of::<super::Conn>() <= 152);
        assert!(std::mem::size_of::<crate::ws::receive::Receiver>() <= 64);
    }

    /// The outbox frames the chat's payloads: shortest length form (RFC
    /// 6455 §5.2), RSV1 only on compressed ones (RFC 7692 §6).
    #[test]
    fn text_frames_of_every_length_form() {
        for (len, hdr) in [
            (0usize, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
        ] {
            let f = super::text_frame(&vec![b'x'; len], false);
            assert_eq!(f.len(), hdr + len);
            assert_eq!(f[0], 0x81);
        }
        assert_eq!(&super::text_frame(b"z", true)[..], b"\xc1\x01z");
    }

    /// A run is its messages' frames back to back, built once per variant;
    /// with deflate only the payloads at or over the threshold are
    /// compressed, each into a frame of its own (RFC 7692 §6: RSV1 on it).
    #[test]
    fn a_run_is_its_frames_back_to_back() {
        use std::rc::Rc;
        let a: Rc<[u8]> = Rc::from(&b"{\"t\":1}"[..]);
        let b: Rc<[u8]> = Rc::from(vec![b'x'; 200]);
        let run = [a.clone(), b.clone()];
        let mut runs = super::RunFrames::default();
        let plain = runs.get(&run, None, 0);
        let (fa, fb) = (super::text_frame(&a, false), super::text_frame(&b, false));
        assert_eq!(&plain[..], &[&fa[..], &fb[..]].concat()[..]);
        assert!(Rc::ptr_eq(&plain, &runs.get(&run, None, 0)));
        let z = runs.get(&run, Some(15), 100);
        assert_eq!(&z[..fa.len()], &fa[..]);
        assert_eq!(z[fa.len()], 0xc1);
        assert!(z.len() < plain.len());
        assert!(Rc::ptr_eq(&z, &runs.get(&run, Some(15), 100)));
    }

    /// Recipients that negotiated different server windows, interleaved in
    /// the member list: one compression per window, not per recipient.
    #[test]
    fn interleaved_windows_compress_once_each() {
        use std::rc::Rc;
        let p: Rc<[u8]> = Rc::from(&b"{\"type\":\"message\",\"text\":\"hello hello hello\"}"[..]);
        let mut frames = super::Frames::default();
        let (a15, a9) = (frames.get(&p, Some(15)), frames.get(&p, Some(9)));
        assert!(Rc::ptr_eq(&a15, &frames.get(&p, Some(15))));
        assert!(Rc::ptr_eq(&a9, &frames.get(&p, Some(9))));
        let run = [Rc::clone(&p), Rc::clone(&p)];
        let mut runs = super::RunFrames::default();
        let (r15, r9) = (runs.get(&run, Some(15), 0), runs.get(&run, Some(9), 0));
        assert!(Rc::ptr_eq(&r15, &runs.get(&run, Some(15), 0)));
        assert!(Rc::ptr_eq(&r9, &runs.get(&run, Some(9), 0)));
    }

    /// One plain and one compressed frame per payload, whoever asks.
    #[test]
    fn frames_are_built_once_per_payload() {
        let mut frames = super::Frames::default();
        let p: std::rc::Rc<[u8]> =
            std::rc::Rc::from(&b"{\"type\":\"message\",\"text\":\"hello hello hello\"}"[..]);
        let a = frames.get(&p, Some(15));
        let b = frames.get(&p, None);
        let c = frames.get(&p, Some(15));
        let d = frames.get(&p, None);
        assert!(std::rc::Rc::ptr_eq(&a, &c) && std::rc::Rc::ptr_eq(&b, &d));
        assert_eq!(a[0], 0xc1);
        assert_eq!(&b[2..], &p[..]);
        let q: std::rc::Rc<[u8]> = std::rc::Rc::from(&b"other"[..]);
        assert_eq!(&frames.get(&q, None)[2..], b"other");
    }
}
