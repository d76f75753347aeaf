//! Command-line configuration: every limit has a flag and a default.
//!
//! One table, [`FLAGS`], is the single source of truth for every setting:
//! its flag (`--max-message-size`), its `--config` key (the flag without
//! its dashes), its environment variable (`WSCHAT_MAX_MESSAGE_SIZE`), its
//! default, its `--help` text, whether a SIGHUP applies it, and the parser
//! that turns its text into the field of [`Config`]. The command line, the
//! environment, the file and the defaults all go through the same parser.
//! (Hand-written rather than clap: clap and the formatting it pulled in
//! were 0.3 MiB of a binary meant for a Raspberry Pi; README, "Raspberry
//! Pi, musl, the .deb and the service".)

use super::addr::Cidr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use super::args::{Args, Early, UsageError, help, parse_args};

/// Parses sizes such as `65536`, `64KiB`, `16MiB` or `1GiB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown size unit in {s:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 500ms, 10s, 2m, 24h)"))
}

/// A whole number of type `T`, at least `min`.
fn parse_num<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    s: &str,
    min: T,
    max: T,
) -> Result<T, String> {
    let n: T = s
        .trim()
        .parse()
        .map_err(|_| format!("not a whole number from {min} to {max}"))?;
    if n < min || n > max {
        return Err(format!("{n} is not in {min}..={max}"));
    }
    Ok(n)
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| "not an IP address and port (e.g. 0.0.0.0:8080, [::]:443)".to_owned())
}

/// The whole configuration: one field per flag.
#[derive(Debug, Clone)]
pub struct Config {
    pub config: Option<PathBuf>,
    pub log_format: LogFormat,
    pub metrics_addr: Option<SocketAddr>,
    pub addr: SocketAddr,
    pub static_dir: Option<PathBuf>,
    pub static_cache_size: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub redirect_http: Option<SocketAddr>,
    pub no_hsts: bool,
    pub max_message_size: usize,
    pub max_ws_message_size: usize,
    pub max_head_size: usize,
    pub handshake_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub keepalive_requests: u32,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub message_timeout: Duration,
    pub close_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_connections: Option<usize>,
    pub backlog: u32,
    pub max_connections_per_ip: usize,
    pub limit_loopback: bool,
    pub handshake_rate_burst: u32,
    pub handshake_rate_per_sec: u32,
    pub trusted_proxy: Vec<Cidr>,
    pub ipv6_prefix_len: u8,
    pub max_pending_output: usize,
    pub allowed_host: Vec<String>,
    pub no_deflate: bool,
    pub deflate_threshold: usize,
    pub allow_origin: Vec<String>,
    pub motd: String,
    pub history: Option<usize>,
    pub data_dir: PathBuf,
    pub no_persist: bool,
    pub fsync: bool,
    pub max_disk: usize,
    pub max_audit_rows: u64,
    pub no_uploads: bool,
    pub max_upload_size: usize,
    pub max_upload_disk: usize,
    pub upload_quota: usize,
    pub upload_rate: u32,
    pub upload_ttl: Duration,
    pub upload_timeout: Duration,
    pub max_uploads_in_flight: u32,
    pub fault_file: Option<PathBuf>,
    pub max_rooms_per_conn: usize,
    pub max_rooms: usize,
    pub max_rooms_per_addr: usize,
    pub max_text_chars: usize,
    pub rate_burst: u32,
    pub rate_per_sec: u32,
    pub room_retention: Duration,
    pub max_history_bytes: usize,
    pub require_account: bool,
    pub registration: Registration,
    pub max_auth_jobs: u32,
    pub max_accounts: u32,
    pub registrations_per_hour: u32,
    /// A subcommand (without one, wschat serves).
    pub command: Option<Command>,
}

/// `--registration`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Registration {
    #[default]
    Open,
    Closed,
}

/// Subcommands (without one, wschat serves).
#[derive(Debug, Clone)]
pub enum Command {
    /// `wschat account ...`: accounts in --data-dir, the server stopped.
    Account(AccountCommand),
}

#[derive(Debug, Clone)]
pub enum AccountCommand {
    /// `wschat account add NAME [--op]`.
    Add { name: String, op: bool },
    /// `wschat account passwd NAME`.
    Passwd { name: String },
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How a flag takes its value, and where it goes in [`Config`].
#[derive(Clone, Copy)]
pub enum Kind {
    /// A switch (`--no-hsts`): no value on the command line; true or false
    /// in the file and the environment.
    Switch(fn(&mut Config) -> &mut bool),
    /// One value, named in `--help` by the string.
    One(&'static str, fn(&mut Config, &str) -> Result<(), String>),
    /// A repeatable flag: all its values at once (a list in the file,
    /// separated by commas in the environment).
    List(
        &'static str,
        fn(&mut Config, &[String]) -> Result<(), String>,
    ),
}

/// One setting.
#[derive(Clone, Copy)]
pub struct Flag {
    /// The flag without its dashes, which is also its key in the file.
    pub long: &'static str,
    pub kind: Kind,
    /// The default, as text through the flag's parser; `None`: unset.
    pub default: Option<&'static str>,
    /// `--help`'s text (`\` line continuations: one paragraph).
    pub help: &'static str,
    /// A SIGHUP applies it to the running server (read where it is used,
    /// `Server::cfg`, never copied at start); others need a restart.
    pub live: bool,
    /// Left out of `--help` (for tests).
    pub hidden: bool,
    /// Refused unless this flag is set too.
    pub requires: Option<&'static str>,
}

const fn one(
    long: &'static str,
    value: &'static str,
    default: &'static str,
    help: &'static str,
    set: fn(&mut Config, &str) -> Result<(), String>,
) -> Flag {
    Flag {
        long,
        kind: Kind::One(value, set),
        default: if default.is_empty() {
            None
        } else {
            Some(default)
        },
        help,
        live: false,
        hidden: false,
        requires: None,
    }
}

const fn switch(long: &'static str, help: &'static str, get: fn(&mut Config) -> &mut bool) -> Flag {
    Flag {
        long,
        kind: Kind::Switch(get),
        default: None,
        help,
        live: false,
        hidden: false,
        requires: None,
    }
}

const fn list(
    long: &'static str,
    value: &'static str,
    help: &'static str,
    set: fn(&mut Config, &[String]) -> Result<(), String>,
) -> Flag {
    Flag {
        long,
        kind: Kind::List(value, set),
        default: None,
        help,
        live: false,
        hidden: false,
        requires: None,
    }
}

impl Flag {
    const fn live(mut self) -> Flag {
        self.live = true;
        self
    }
    const fn hidden(mut self) -> Flag {
        self.hidden = true;
        self
    }
    const fn requires(mut self, other: &'static str) -> Flag {
        self.requires = Some(other);
        self
    }

    /// The environment variable: `--max-message-size` is
    /// `WSCHAT_MAX_MESSAGE_SIZE`.
    pub fn env(&self) -> String {
        format!(
            "WSCHAT_{}",
            self.long.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// `--long <VALUE>`, as errors and `--help` name it.
    pub fn usage(&self) -> String {
        match self.kind {
            Kind::Switch(_) => format!("--{}", self.long),
            Kind::One(v, _) | Kind::List(v, _) => format!("--{} <{v}>", self.long),
        }
    }

    /// Sets the field from the setting's words (none: the default, or
    /// unset): the last word of a single value, all of a list, `true` or
    /// `false` for a switch.
    pub fn apply(&self, c: &mut Config, words: &[String]) -> Result<(), String> {
        match self.kind {
            Kind::Switch(get) => {
                *get(c) = words.last().is_some_and(|w| w == "true");
                Ok(())
            }
            Kind::One(_, set) => match words.last().map(String::as_str).or(self.default) {
                Some(w) => set(c, w),
                None => Ok(()),
            },
            Kind::List(_, set) => set(c, words),
        }
    }

    /// Runs one word through the flag's parser, for a clear error early.
    pub fn check(&self, word: &str) -> Result<(), String> {
        let mut scratch = Config::blank();
        match self.kind {
            Kind::Switch(_) => match word {
                "true" | "false" => Ok(()),
                _ => Err("expects true or false".into()),
            },
            Kind::One(_, set) => set(&mut scratch, word),
            Kind::List(_, set) => set(&mut scratch, &[word.to_owned()]),
        }
    }
}

/// Stores a parsed value.
fn put<T>(slot: &mut T, v: Result<T, String>) -> Result<(), String> {
    *slot = v?;
    Ok(())
}

fn path(s: &str) -> Result<Option<PathBuf>, String> {
    Ok(Some(PathBuf::from(s)))
}

/// Every setting, in `--help`'s order. The `--config` key of each is its
/// `long`, its variable `WSCHAT_` + `long` in capitals.
pub static FLAGS: &[Flag] = &[
    one(
        "config",
        "PATH",
        "",
        "Read settings from this TOML file, one key per flag \
        (/etc/wschat/wschat.toml in the Debian package). SIGHUP reads it again and applies \
        what can change while running; the log names the settings that need a restart. An \
        unknown key or a bad value is an error naming the line, at start and on SIGHUP \
        (which then keeps the running configuration).",
        |c, v| put(&mut c.config, path(v)),
    ),
    one(
        "log-format",
        "FORMAT",
        "text",
        "Log format on stderr: `text` (env_logger's) or \
        `json` (one object per line: ts, level, target, message; for journald and log \
        shippers). The level is set by RUST_LOG (default info).",
        |c, v| {
            put(
                &mut c.log_format,
                match v {
                    "text" => Ok(LogFormat::Text),
                    "json" => Ok(LogFormat::Json),
                    _ => Err("possible values: text, json".into()),
                },
            )
        },
    ),
    one(
        "metrics-addr",
        "ADDR",
        "",
        "Serve Prometheus metrics at /metrics on this address \
        (e.g. 127.0.0.1:9090): a listener of its own, never the public port. Off by default.",
        |c, v| put(&mut c.metrics_addr, parse_addr(v).map(Some)),
    ),
    one(
        "addr",
        "ADDR",
        "0.0.0.0:8080",
        "Address and port to listen on.",
        |c, v| put(&mut c.addr, parse_addr(v)),
    ),
    one(
        "static-dir",
        "DIR",
        "",
        "Serve the web client from this directory instead of the \
        copy built into the binary (for people editing the client).",
        |c, v| put(&mut c.static_dir, path(v)),
    ),
    one(
        "static-cache-size",
        "SIZE",
        "8MiB",
        "Memory for cached --static-dir files (each up \
        to 1 MiB), shared by every response; larger files, and files past the budget, are \
        read from disk in 64 KiB pieces as the client takes them.",
        |c, v| put(&mut c.static_cache_size, parse_size(v)),
    ),
    one(
        "tls-cert",
        "PATH",
        "",
        "Speak only TLS on --addr (https, wss) with this certificate \
        (PEM; the chain may follow the leaf in the same file). Needs --tls-key. SIGHUP \
        reloads both files; open connections keep the certificate they got.",
        |c, v| put(&mut c.tls_cert, path(v)),
    )
    .requires("tls-key"),
    one(
        "tls-key",
        "PATH",
        "",
        "The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).",
        |c, v| put(&mut c.tls_key, path(v)),
    )
    .requires("tls-cert"),
    one(
        "redirect-http",
        "ADDR",
        "",
        "With TLS: also listen here for plain HTTP and answer \
        every request with a 308 to the https URL (the request's Host, the port of --addr).",
        |c, v| put(&mut c.redirect_http, parse_addr(v).map(Some)),
    )
    .requires("tls-cert"),
    switch(
        "no-hsts",
        "With TLS: leave out the Strict-Transport-Security header.",
        |c| &mut c.no_hsts,
    ),
    one(
        "max-message-size",
        "SIZE",
        "16MiB",
        "Largest message on /echo, all fragments \
        together; larger is closed with 1009.",
        |c, v| put(&mut c.max_message_size, parse_size(v)),
    )
    .live(),
    one(
        "max-ws-message-size",
        "SIZE",
        "64KiB",
        "Largest message on /ws (chat), all \
        fragments together; larger is closed with 1009.",
        |c, v| put(&mut c.max_ws_message_size, parse_size(v)),
    )
    .live(),
    one(
        "max-head-size",
        "SIZE",
        "8KiB",
        "Largest HTTP request head; larger is answered 431.",
        |c, v| put(&mut c.max_head_size, parse_size(v)),
    )
    .live(),
    one(
        "handshake-timeout",
        "DURATION",
        "10s",
        "Time from accept to a complete request head; \
        slower clients are dropped.",
        |c, v| put(&mut c.handshake_timeout, parse_duration(v)),
    )
    .live(),
    one(
        "keepalive-timeout",
        "DURATION",
        "5s",
        "Keep-alive: how long a connection may sit \
        idle between two HTTP requests before it is closed.",
        |c, v| put(&mut c.keepalive_timeout, parse_duration(v)),
    )
    .live(),
    one(
        "keepalive-requests",
        "N",
        "100",
        "Keep-alive: most HTTP requests on one connection; \
        the answer to the last says `Connection: close`. 1 turns keep-alive off.",
        |c, v| put(&mut c.keepalive_requests, parse_num(v, 1, u32::MAX)),
    )
    .live(),
    one(
        "ping-interval",
        "DURATION",
        "30s",
        "Ping a WebSocket from which nothing arrived for \
        this long.",
        |c, v| put(&mut c.ping_interval, parse_duration(v)),
    )
    .live(),
    one(
        "idle-timeout",
        "DURATION",
        "75s",
        "Close (1001) a WebSocket from which nothing, pong \
        included, arrived for this long.",
        |c, v| put(&mut c.idle_timeout, parse_duration(v)),
    )
    .live(),
    one(
        "message-timeout",
        "DURATION",
        "60s",
        "A frame or fragmented message, once its first \
        byte arrived, must be complete within this long, or the connection is closed (1008 \
        \"message timeout\"): trickled bytes count against --idle-timeout but cannot keep a \
        partial message alive past this.",
        |c, v| put(&mut c.message_timeout, parse_duration(v)),
    )
    .live(),
    one(
        "close-timeout",
        "DURATION",
        "5s",
        "After sending a close frame, wait this long for \
        the peer's close and its end of the TCP connection before dropping it.",
        |c, v| put(&mut c.close_timeout, parse_duration(v)),
    )
    .live(),
    one(
        "shutdown-timeout",
        "DURATION",
        "5s",
        "On SIGINT/SIGTERM, wait this long for close \
        handshakes before exiting.",
        |c, v| put(&mut c.shutdown_timeout, parse_duration(v)),
    )
    .live(),
    one(
        "max-connections",
        "N",
        "",
        "Most open connections; more are answered 503. Default: \
        the open-file limit (raised to its hard limit at start) less a reserve.",
        |c, v| {
            put(
                &mut c.max_connections,
                parse_num(v, 0, usize::MAX).map(Some),
            )
        },
    ),
    one(
        "backlog",
        "N",
        "1024",
        "Length of the kernel's queue of connections not yet \
        accepted (the kernel caps it at net.core.somaxconn). Bursts of connects past it wait \
        a second for SYN retransmission.",
        |c, v| put(&mut c.backlog, parse_num(v, 0, u32::MAX)),
    ),
    one(
        "max-connections-per-ip",
        "N",
        "100",
        "Most open connections from one IP address; \
        more are answered 429.",
        |c, v| put(&mut c.max_connections_per_ip, parse_num(v, 0, usize::MAX)),
    )
    .live(),
    switch(
        "limit-loopback",
        "Apply the per-address rules (--max-connections-per-ip, the \
        handshake and chat rate limits, --max-rooms-per-addr) to loopback clients too (by \
        default they are exempt: a reverse proxy on the same machine is one address). \
        Forwarded addresses from a --trusted-proxy are always limited.",
        |c| &mut c.limit_loopback,
    )
    .live(),
    one(
        "handshake-rate-burst",
        "N",
        "100",
        "WebSocket handshakes one address may make in a \
        burst; past it, and past the refill, upgrades are answered 429 with Retry-After. 0 \
        turns this limit off.",
        |c, v| put(&mut c.handshake_rate_burst, parse_num(v, 0, u32::MAX)),
    )
    .live(),
    one(
        "handshake-rate-per-sec",
        "N",
        "10",
        "WebSocket handshakes per second refilled to \
        each address's bucket.",
        |c, v| put(&mut c.handshake_rate_per_sec, parse_num(v, 0, u32::MAX)),
    )
    .live(),
    list(
        "trusted-proxy",
        "ADDR",
        "A reverse proxy (an IP address or a network, e.g. \
        127.0.0.1 or 10.0.0.0/8; repeatable). For requests from it, the client address is \
        the right-most one in `Forwarded` (RFC 7239), else `X-Forwarded-For`, that is not \
        itself a trusted proxy, and every per-address rule applies to that address. From \
        other peers these headers are ignored.",
        |c, v| put(&mut c.trusted_proxy, v.iter().map(|s| s.parse()).collect()),
    )
    .live(),
    one(
        "ipv6-prefix-len",
        "BITS",
        "64",
        "IPv6 clients are counted by this many leading bits \
        of their address for every per-address rule (a subscriber usually holds a /64).",
        |c, v| put(&mut c.ipv6_prefix_len, parse_num(v, 0, 128)),
    ),
    one(
        "max-pending-output",
        "SIZE",
        "1MiB",
        "Unsent output one connection may hold. Over \
        it, /echo stops reading from that connection until its output drains; a /ws client \
        is closed with 1008 \"slow consumer\".",
        |c, v| put(&mut c.max_pending_output, parse_size(v)),
    )
    .live(),
    list(
        "allowed-host",
        "NAME",
        "Also answer requests whose Host is this name (repeatable; \
        `*` turns the check off). Accepted anyway: IP literals, `localhost` and \
        `*.localhost`, the machine's host name and HOSTNAME.local. Others get 421, which \
        stops DNS-rebinding pages from reaching the server.",
        |c, v| put(&mut c.allowed_host, Ok(v.to_vec())),
    )
    .live(),
    switch(
        "no-deflate",
        "Do not negotiate permessage-deflate (RFC 7692) on /ws and /echo.",
        |c| &mut c.no_deflate,
    )
    .live(),
    one(
        "deflate-threshold",
        "SIZE",
        "80",
        "With permessage-deflate, messages shorter than \
        this go uncompressed: below it, compressing saves under a tenth of the bytes (a \
        64-byte presence saves 6) for about 1.5 µs each; the shortest chat messages (about \
        90 bytes) save 12 % (docs/benchmarks.md, section 6).",
        |c, v| put(&mut c.deflate_threshold, parse_size(v)),
    )
    .live(),
    list(
        "allow-origin",
        "ORIGIN",
        "Also accept WebSocket upgrades to /ws from this Origin \
        (repeatable; `*` allows every origin). An Origin whose host is the request's Host is \
        always accepted, and so are requests with no Origin.",
        |c, v| put(&mut c.allow_origin, Ok(v.to_vec())),
    )
    .live(),
    one(
        "motd",
        "MOTD",
        "Welcome to wschat!",
        "Welcome text sent to every chat client.",
        |c, v| put(&mut c.motd, Ok(v.to_owned())),
    )
    .live(),
    one(
        "history",
        "N",
        "",
        "Messages kept per room. Default: 100000 (on disk) with the \
        store, 1000 with --no-persist. At least 1000: the chat protocol promises clients the \
        last 1000 of each room.",
        |c, v| put(&mut c.history, parse_history(v).map(Some)),
    ),
    one(
        "data-dir",
        "DIR",
        "wschat-data",
        "Directory of the store (created when missing): \
        history, rooms and their epochs survive restarts and crashes. Held by one server at \
        a time.",
        |c, v| put(&mut c.data_dir, Ok(PathBuf::from(v))),
    ),
    switch(
        "no-persist",
        "Keep everything in memory only: a restart forgets the chat.",
        |c| &mut c.no_persist,
    ),
    switch(
        "fsync",
        "Make every commit reach the disk (fsync) before anything it holds is \
        acknowledged, so it survives a power cut; by default a commit survives the server \
        being killed or crashing, not the machine losing power.",
        |c| &mut c.fsync,
    ),
    one(
        "max-disk",
        "SIZE",
        "1GiB",
        "Disk budget for stored messages, all rooms together; \
        past it the server-wide oldest messages are deleted first. Counts each message's \
        text and nick bytes plus 64 for its row and index entries. 0: none.",
        |c, v| put(&mut c.max_disk, parse_size(v)),
    ),
    one(
        "max-audit-rows",
        "N",
        "100000",
        "The moderation audit log (the store's `audit` table: who banned, \
        kicked, muted, appointed whom) keeps its newest N entries; older ones are deleted as \
        new ones come. 0: every entry.",
        |c, v| put(&mut c.max_audit_rows, parse_num(v, 0, u64::MAX)),
    ),
    switch(
        "no-uploads",
        "Images: turn uploads off (`POST /upload` answers 404).",
        |c| &mut c.no_uploads,
    ),
    one(
        "max-upload-size",
        "SIZE",
        "5MiB",
        "Images: the largest upload; larger is answered \
        413.",
        |c, v| put(&mut c.max_upload_size, parse_size(v)),
    ),
    one(
        "max-upload-disk",
        "SIZE",
        "1GiB",
        "Images: all uploads together (on disk, or in \
        memory with --no-persist); past it uploads are answered 507 until some are deleted.",
        |c, v| put(&mut c.max_upload_disk, parse_size(v)),
    ),
    one(
        "upload-quota",
        "SIZE",
        "100MiB",
        "Images: one account's uploads together; past it \
        429.",
        |c, v| put(&mut c.upload_quota, parse_size(v)),
    ),
    one(
        "upload-rate",
        "N",
        "10",
        "Images: uploads one account may make per minute; past it \
        429 with Retry-After. 0: no limit.",
        |c, v| put(&mut c.upload_rate, parse_num(v, 0, u32::MAX)),
    ),
    one(
        "upload-ttl",
        "DURATION",
        "1h",
        "Images: how long an upload no message shows is kept.",
        |c, v| put(&mut c.upload_ttl, parse_duration(v)),
    ),
    one(
        "upload-timeout",
        "DURATION",
        "60s",
        "Images: time from the end of an upload's head \
        to the end of its body.",
        |c, v| put(&mut c.upload_timeout, parse_duration(v)),
    ),
    one(
        "max-uploads-in-flight",
        "N",
        "8",
        "Images: uploads being received at once, \
        server-wide (each holds up to --max-upload-size in memory); past it 503 with \
        Retry-After.",
        |c, v| put(&mut c.max_uploads_in_flight, parse_num(v, 0, u32::MAX)),
    ),
    one(
        "fault-file",
        "FILE",
        "",
        "Fault injection for tests: while this file exists, every \
        store commit fails.",
        |c, v| put(&mut c.fault_file, path(v)),
    )
    .hidden(),
    one(
        "max-rooms-per-conn",
        "N",
        "32",
        "Rooms one connection may join.",
        |c, v| put(&mut c.max_rooms_per_conn, parse_num(v, 0, usize::MAX)),
    ),
    one("max-rooms", "N", "10000", "Rooms on the server.", |c, v| {
        put(&mut c.max_rooms, parse_num(v, 0, usize::MAX))
    }),
    one(
        "max-rooms-per-addr",
        "N",
        "64",
        "Rooms created from one address that may exist at \
        once (they count until forgotten, see --room-retention); also the \
        rooms one account may own, forgotten ones included (ownership \
        outlives the room; operators are not held to it). 0: no cap.",
        |c, v| put(&mut c.max_rooms_per_addr, parse_num(v, 0, usize::MAX)),
    ),
    one(
        "max-text-chars",
        "N",
        "4000",
        "Longest chat text, in Unicode scalar values.",
        |c, v| put(&mut c.max_text_chars, parse_num(v, 0, usize::MAX)),
    ),
    one(
        "rate-burst",
        "N",
        "20",
        "Chat rate limit: tokens in each address's bucket, shared by \
        its connections (an exempt loopback connection has its own). 0 turns the rate limit \
        off (for benchmarks on a trusted network).",
        |c, v| put(&mut c.rate_burst, parse_num(v, 0, u32::MAX)),
    )
    .live(),
    one(
        "rate-per-sec",
        "N",
        "2",
        "Chat rate limit: tokens added per second.",
        |c, v| put(&mut c.rate_per_sec, parse_num(v, 0, u32::MAX)),
    )
    .live(),
    one(
        "room-retention",
        "DURATION",
        "24h",
        "How long a room with no members keeps its \
        history.",
        |c, v| put(&mut c.room_retention, parse_duration(v)),
    ),
    one(
        "max-history-bytes",
        "SIZE",
        "64MiB",
        "Memory for room history across all rooms; \
        past it, the oldest messages server-wide are forgotten first. Counts each kept \
        message's text and nick bytes plus a fixed overhead for its bookkeeping.",
        |c, v| put(&mut c.max_history_bytes, parse_size(v)),
    ),
    switch(
        "require-account",
        "Only logged-in users may join rooms or send direct messages \
        (guests may still connect, register and log in).",
        |c| &mut c.require_account,
    ),
    one(
        "registration",
        "REGISTRATION",
        "open",
        "Who may register a nick: `open` (anyone) or \
        `closed` (operators only, in the chat or with `wschat account add`).",
        |c, v| {
            put(
                &mut c.registration,
                match v {
                    "open" => Ok(Registration::Open),
                    "closed" => Ok(Registration::Closed),
                    _ => Err("possible values: open, closed".into()),
                },
            )
        },
    ),
    one(
        "max-auth-jobs",
        "N",
        "32",
        "Password hashes (logins, registrations, password \
        changes) waiting or running at once; past it a request is answered `busy`.",
        |c, v| put(&mut c.max_auth_jobs, parse_num(v, 1, u32::MAX)),
    ),
    one(
        "max-accounts",
        "N",
        "10000",
        "Accounts `register` may bring the server to \
        (operators, in the chat or with `wschat account add`, are not held to it); past it a \
        registration is answered `too_many_accounts`.",
        |c, v| put(&mut c.max_accounts, parse_num(v, 1, u32::MAX)),
    ),
    one(
        "registrations-per-hour",
        "N",
        "5",
        "Registrations one client address may start per \
        hour (answered `registration_limited` past it); 0: no limit. Loopback is exempt \
        without --limit-loopback, like the rate limit.",
        |c, v| put(&mut c.registrations_per_hour, parse_num(v, 0, u32::MAX)),
    ),
];

/// The flag named `long` (without dashes).
pub fn flag(long: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.long == long)
}

/// `--history`'s default with the store.
pub const PERSISTED_HISTORY: usize = 100_000;
/// `--history`'s default in memory (the protocol's floor).
pub const MEMORY_HISTORY: usize = 1000;

/// `--history`: refused below the protocol's floor rather than raised to
/// it, so that nobody believes a room keeps fewer messages than it does.
fn parse_history(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of messages"))?;
    if n < MEMORY_HISTORY {
        return Err(format!(
            "{n} is below {MEMORY_HISTORY}: the chat protocol promises clients the last \
             {MEMORY_HISTORY} messages of each room (docs/protocol.md), so a server keeps \
             at least that many"
        ));
    }
    Ok(n)
}

impl Config {
    /// Messages kept per room, `--history` or its default.
    pub fn history(&self) -> usize {
        self.history.unwrap_or(if self.no_persist {
            MEMORY_HISTORY
        } else {
            PERSISTED_HISTORY
        })
    }

    /// Every setting at its default.
    pub fn defaults() -> Config {
        let mut c = Config::blank();
        for f in FLAGS {
            // The defaults are this file's own text, checked by a test.
            let _ = f.apply(&mut c, &[]);
        }
        c
    }
    /// Every field empty or zero: what the flags' parsers fill in.
    fn blank() -> Config {
        Config {
            config: None,
            log_format: LogFormat::Text,
            metrics_addr: None,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            static_dir: None,
            static_cache_size: 0,
            tls_cert: None,
            tls_key: None,
            redirect_http: None,
            no_hsts: false,
            max_message_size: 0,
            max_ws_message_size: 0,
            max_head_size: 0,
            handshake_timeout: Duration::ZERO,
            keepalive_timeout: Duration::ZERO,
            keepalive_requests: 0,
            ping_interval: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            message_timeout: Duration::ZERO,
            close_timeout: Duration::ZERO,
            shutdown_timeout: Duration::ZERO,
            max_connections: None,
            backlog: 0,
            max_connections_per_ip: 0,
            limit_loopback: false,
            handshake_rate_burst: 0,
            handshake_rate_per_sec: 0,
            trusted_proxy: Vec::new(),
            ipv6_prefix_len: 0,
            max_pending_output: 0,
            allowed_host: Vec::new(),
            no_deflate: false,
            deflate_threshold: 0,
            allow_origin: Vec::new(),
            motd: String::new(),
            history: None,
            data_dir: PathBuf::new(),
            no_persist: false,
            fsync: false,
            max_disk: 0,
            max_audit_rows: 0,
            no_uploads: false,
            max_upload_size: 0,
            max_upload_disk: 0,
            upload_quota: 0,
            upload_rate: 0,
            upload_ttl: Duration::ZERO,
            upload_timeout: Duration::ZERO,
            max_uploads_in_flight: 0,
            fault_file: None,
            max_rooms_per_conn: 0,
            max_rooms: 0,
            max_rooms_per_addr: 0,
            max_text_chars: 0,
            rate_burst: 0,
            rate_per_sec: 0,
            room_retention: Duration::ZERO,
            max_history_bytes: 0,
            require_account: false,
            registration: Registration::Open,
            max_auth_jobs: 0,
            max_accounts: 0,
            registrations_per_hour: 0,
            command: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::defaults()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    /// The command line alone, no environment or file.
    fn parse(args: &[&str]) -> Result<Config, String> {
        let argv: Vec<OsString> = std::iter::once("wschat")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let a = parse_args(&argv).map_err(|e| e.0)?;
        let mut c = Config::defaults();
        for f in FLAGS {
            if let Some(w) = a.given.get(f.long) {
                f.apply(&mut c, w)
                    .map_err(|m| format!("{}: {m}", f.usage()))?;
            }
        }
        c.command = a.command;
        Ok(c)
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn defaults_parse() {
        let c = Config::default();
        assert_eq!(c.max_message_size, 16 << 20);
        assert_eq!(c.idle_timeout, Duration::from_secs(75));
        assert_eq!(c.message_timeout, Duration::from_secs(60));
        assert_eq!(c.max_history_bytes, 64 << 20);
        assert_eq!(c.motd, "Welcome to wschat!");
        assert_eq!(c.ipv6_prefix_len, 64);
        assert_eq!(c.history(), PERSISTED_HISTORY);
        assert_eq!(c.data_dir, PathBuf::from("wschat-data"));
        assert_eq!(c.addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.keepalive_requests, 100);
        assert_eq!(c.registration, Registration::Open);
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.max_connections.is_none() && !c.no_deflate);
        let m = parse(&["--no-persist"]).unwrap();
        assert_eq!(m.history(), MEMORY_HISTORY);
    }

    #[test]
    fn history_has_the_protocols_floor() {
        let h = |v: &str| parse(&["--history", v]).map(|c| c.history());
        assert_eq!(h("1000").ok(), Some(1000));
        assert_eq!(h("250000").ok(), Some(250_000));
        for low in ["999", "5", "0"] {
            let e = h(low).expect_err(low);
            assert!(e.contains("below 1000") && e.contains("--history"), "{e}");
        }
        assert!(h("many").is_err());
    }

    #[test]
    fn trusted_proxies_parse() {
        let c = parse(&["--trusted-proxy", "127.0.0.1", "--trusted-proxy=10.0.0.0/8"]).unwrap();
        assert_eq!(c.trusted_proxy.len(), 2);
        assert!(parse(&["--trusted-proxy", "proxy"]).is_err());
        assert!(parse(&["--ipv6-prefix-len", "129"]).is_err());
        assert_eq!(
            parse(&["--ipv6-prefix-len", "128"])
                .unwrap()
                .ipv6_prefix_len,
            128
        );
    }

    #[test]
    fn bad_command_lines_are_named() {
        let e = parse(&["--max-mesage-size", "1"]).unwrap_err();
        assert!(
            e.contains("'--max-mesage-size'") && e.contains("'--max-message-size'"),
            "{e}"
        );
        let e = parse(&["--backlog"]).unwrap_err();
        assert!(e.contains("a value is required for '--backlog <N>'"), "{e}");
        // The next flag is not taken for a forgotten value.
        let e = parse(&["--motd", "--fsync"]).unwrap_err();
        assert!(e.contains("a value is required for '--motd"), "{e}");
        assert_eq!(parse(&["--motd=--fsync"]).unwrap().motd, "--fsync");
        let e = parse(&["--backlog", "1", "--backlog", "2"]).unwrap_err();
        assert!(e.contains("cannot be used multiple times"), "{e}");
        let e = parse(&["--keepalive-requests", "0"]).unwrap_err();
        assert!(e.contains("--keepalive-requests <N>"), "{e}");
        assert!(parse(&["--no-hsts=yes"]).is_err());
        assert!(parse(&["--log-format", "xml"]).is_err());
        assert!(parse(&["serve"]).is_err());
        assert!(parse(&["-x"]).is_err());
        assert_eq!(
            parse(&["--addr=127.0.0.1:9"]).unwrap().addr,
            "127.0.0.1:9".parse().unwrap()
        );
    }

    #[test]
    fn account_subcommands() {
        let c = parse(&["account", "add", "alice", "--op", "--data-dir", "/tmp/x"]).unwrap();
        assert!(matches!(
            c.command,
            Some(Command::Account(AccountCommand::Add { ref name, op: true })) if name == "alice"
        ));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        let c = parse(&["--data-dir", "d", "account", "passwd", "bob"]).unwrap();
        assert!(matches!(
            c.command,
            Some(Command::Account(AccountCommand::Passwd { ref name })) if name == "bob"
        ));
        assert!(parse(&["account"]).is_err());
        assert!(parse(&["account", "add"]).is_err());
        assert!(parse(&["account", "remove", "x"]).is_err());
        assert!(parse(&["--op"]).is_err());
        // A nick may start with a dash: after `--` it is the name.
        let c = parse(&["account", "add", "--op", "--", "-bob"]).unwrap();
        assert!(matches!(
            c.command,
            Some(Command::Account(AccountCommand::Add { ref name, op: true })) if name == "-bob"
        ));
        assert!(parse(&["account", "add", "-bob"]).is_err());
        // A server flag after `account` would go unused: refused.
        let e = parse(&["account", "add", "bob", "--tls-cert", "c.pem"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("'--tls-cert' is a server flag"), "{e}");
        assert!(
            parse(&[
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
                "account",
                "passwd",
                "bob"
            ])
            .is_ok()
        );
    }

    #[test]
    fn help_shows_every_visible_flag_with_its_variable_and_default() {
        let h = help();
        for f in FLAGS {
            assert_eq!(
                h.contains(&format!("      {}\n", f.usage())),
                !f.hidden,
                "{}",
                f.long
            );
            if !f.hidden {
                assert!(h.contains(&format!("[env: {}]", f.env())), "{}", f.long);
            }
        }
        assert!(h.contains("[default: 16MiB]"));
        assert!(
            h.lines()
                .all(|l| l.chars().count() <= 80 || !l.contains(' ')),
            "{h}"
        );
    }

    /// The README's table of flags says what the flags are: every flag it
    /// names exists, and a default it gives as a literal is the flag's.
    #[test]
    fn the_readme_flag_table_is_true() {
        let readme = include_str!("../../README.md");
        let mut rows = 0;
        for line in readme.lines().filter(|l| l.starts_with("| `--")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            for name in cells[1].split('`').filter(|w| w.starts_with("--")) {
                let long = name[2..].split(' ').next().unwrap_or_default();
                let f = flag(long).unwrap_or_else(|| panic!("README: no flag --{long}"));
                let default = cells[2].replace("`./", "`");
                let lit = default.strip_prefix('`').and_then(|d| d.split('`').next());
                if let (Some(d), Some(lit)) = (f.default, lit)
                    && cells[1].matches("`--").count() == 1
                {
                    assert_eq!(lit, d, "README's default of --{long}");
                }
                rows += 1;
            }
        }
        assert!(rows > 50, "{rows} flags in the README's table");
    }
}
