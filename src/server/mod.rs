//! The server: one `mio::Poll`, a `slab` of connections keyed by `Token`.
//!
//! Each loop turn reads every ready socket until it would block (or until a
//! fairness budget runs out), turns bytes into events with the sans-IO engine
//! in [`crate::ws`], hands chat messages to [`crate::chat`], and then flushes
//! every connection that got output with one vectored write. Writable
//! interest is registered only while output is pending, so an idle server
//! sleeps in `epoll_wait` until the next timer sweep.
//!
//! What each file owns:
//! - `mod.rs`: the connection and server types, start-up, the loop itself;
//! - `accept.rs`: the listener, per-address limits, admission;
//! - `routes.rs`: HTTP requests, static files, `/healthz`, the upgrade;
//! - `conn.rs`: a connection's reads, WebSocket events, echo, close, flush;
//! - `outbox.rs`: the chat's output framed once per payload (and window);
//! - `timers.rs`: the sweep of deadlines, the watchdog, signals;
//! - `storage.rs`, `tls.rs`, `metrics.rs`, `auth.rs`, `config_file.rs`: the
//!   store, TLS, `/metrics`, the password worker, the config file's reload.

mod accept;
mod addr;
mod args;
pub mod auth;
pub mod config;
pub mod config_file;
mod conn;
mod files;
pub mod http;
pub mod json_log;
mod metrics;
mod notify;
mod outbox;
mod queue;
mod routes;
mod storage;
mod timers;
mod tls;
mod upload;

pub use config::{AccountCommand, Command, Config, LogFormat, Registration, parse_size};

use crate::chat::rate::{BucketTable, MAX_IDLE_ENTRIES};
use crate::chat::{Chat, ChatConfig, Now};
use crate::ws::handshake::HeadScanner;
use crate::ws::receive::Receiver;
use files::{FileStream, StaticFiles};
use log::{info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use queue::{Chunk, WriteQueue};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
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
/// Connections to `--metrics-addr` open at once. They are not counted in
/// `--max-connections`, so a full public port never blinds the scraper;
/// past this many, a new one is told 503.
const METRICS_SLOTS: usize = 8;
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
    /// Receiving an image's body, or waiting for its commit (upload.rs).
    Upload(Box<upload::Receiving>),
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
    /// An upload's body follows the head (upload.rs).
    Body(Box<upload::Receiving>),
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
    /// The dirty list being flushed (see `flush_dirty`), kept for its
    /// capacity; both lists are shrunk at the periodic trim.
    flushing: Vec<usize>,
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
    /// Connections to `--metrics-addr` admitted (not refused), at most
    /// `METRICS_SLOTS`: outside `--max-connections`.
    metrics_open: usize,
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
    /// The turn's complete uploads, stored with its commit (upload.rs).
    committing: upload::Committing,
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
        let derived = usize::try_from(
            nofile.saturating_sub(100 + REJECT_SLACK as u64 + METRICS_SLOTS as u64),
        )
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
                uploads: crate::chat::uploads::UploadLimits {
                    enabled: !cfg.no_uploads,
                    max_size: cfg.max_upload_size as u64,
                    max_total: cfg.max_upload_disk as u64,
                    per_account: cfg.upload_quota as u64,
                    per_minute: cfg.upload_rate,
                    ttl_ms: ms(cfg.upload_ttl),
                },
            },
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        );
        let storage = if cfg.no_persist {
            Some(storage::Storage::memory(cfg.max_audit_rows))
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
        chat.reserve_rooms(MAX_RESERVED_CONNS);
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
            flushing: Vec::new(),
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
            metrics_open: 0,
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
            committing: upload::Committing::default(),
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
            // After the flush: the turn's messages are out before the
            // store copies its WAL and syncs the disk.
            self.checkpoint_if_due();
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
}
