//! Command-line configuration: every limit has a flag and a default.

use super::addr::Cidr;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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

/// wschat: a small real-time chat server with a hand-written RFC 6455 engine.
///
/// Serves the web client over HTTP and WebSocket on one port: `/` (the web
/// client), `/ws` (chat), `/echo` (plain echo), `/healthz`.
/// Durations take units (500ms, 10s, 2m, 24h); sizes take B, KiB, MiB, GiB.
///
/// Every flag is also a key of the --config file (its name without the
/// dashes: `max-message-size = "1MiB"`) and an environment variable
/// (WSCHAT_MAX_MESSAGE_SIZE; lists separated by commas). Flags win over the
/// environment, which wins over the file.
#[derive(Parser, Debug, Clone)]
#[command(name = "wschat", version, about, long_about = None)]
pub struct Config {
    /// Read settings from this TOML file, one key per flag
    /// (/etc/wschat/wschat.toml in the Debian package). SIGHUP reads it
    /// again and applies what can change while running; the log names the
    /// settings that need a restart. An unknown key or a bad value is an
    /// error naming the line, at start and on SIGHUP (which then keeps the
    /// running configuration).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log format on stderr: `text` (env_logger's) or `json` (one object
    /// per line: ts, level, target, message; for journald and log
    /// shippers). The level is set by RUST_LOG (default info).
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics at /metrics on this address (e.g.
    /// 127.0.0.1:9090): a listener of its own, never the public port.
    /// Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Address and port to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,

    /// Serve the web client from this directory instead of the copy built
    /// into the binary (for people editing the client).
    #[arg(long, value_name = "DIR")]
    pub static_dir: Option<PathBuf>,

    /// Memory for cached --static-dir files (each up to 1 MiB), shared by
    /// every response; larger files, and files past the budget, are read
    /// from disk in 64 KiB pieces as the client takes them.
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = parse_size)]
    pub static_cache_size: usize,

    /// Speak only TLS on --addr (https, wss) with this certificate (PEM; the
    /// chain may follow the leaf in the same file). Needs --tls-key. SIGHUP
    /// reloads both files; open connections keep the certificate they got.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// With TLS: also listen here for plain HTTP and answer every request with
    /// a 308 to the https URL (the request's Host, the port of --addr).
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    pub redirect_http: Option<SocketAddr>,

    /// With TLS: leave out the Strict-Transport-Security header.
    #[arg(long)]
    pub no_hsts: bool,

    /// Largest message on /echo, all fragments together; larger is closed with 1009.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub max_message_size: usize,

    /// Largest message on /ws (chat), all fragments together; larger is closed with 1009.
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_size)]
    pub max_ws_message_size: usize,

    /// Largest HTTP request head; larger is answered 431.
    #[arg(long, value_name = "SIZE", default_value = "8KiB", value_parser = parse_size)]
    pub max_head_size: usize,

    /// Time from accept to a complete request head; slower clients are dropped.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Keep-alive: how long a connection may sit idle between two HTTP
    /// requests before it is closed.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// Keep-alive: most HTTP requests on one connection; the answer to the
    /// last says `Connection: close`. 1 turns keep-alive off.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub keepalive_requests: u32,

    /// Ping a WebSocket from which nothing arrived for this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Close (1001) a WebSocket from which nothing, pong included, arrived for this long.
    #[arg(long, value_name = "DURATION", default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// A frame or fragmented message, once its first byte arrived, must be
    /// complete within this long, or the connection is closed (1008
    /// "message timeout"): trickled bytes count against --idle-timeout but
    /// cannot keep a partial message alive past this.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub message_timeout: Duration,

    /// After sending a close frame, wait this long for the peer's close and
    /// its end of the TCP connection before dropping it.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub close_timeout: Duration,

    /// On SIGINT/SIGTERM, wait this long for close handshakes before exiting.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Most open connections; more are answered 503. Default: the open-file
    /// limit (raised to its hard limit at start) less a reserve.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Length of the kernel's queue of connections not yet accepted (the
    /// kernel caps it at net.core.somaxconn). Bursts of connects past it wait
    /// a second for SYN retransmission.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub backlog: u32,

    /// Most open connections from one IP address; more are answered 429.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_connections_per_ip: usize,

    /// Apply the per-address rules (--max-connections-per-ip, the handshake
    /// and chat rate limits, --max-rooms-per-addr) to loopback clients too
    /// (by default they are exempt: a reverse proxy on the same machine is
    /// one address). Forwarded addresses from a --trusted-proxy are always
    /// limited.
    #[arg(long)]
    pub limit_loopback: bool,

    /// WebSocket handshakes one address may make in a burst; past it, and
    /// past the refill, upgrades are answered 429 with Retry-After. 0 turns
    /// this limit off.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub handshake_rate_burst: u32,

    /// WebSocket handshakes per second refilled to each address's bucket.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub handshake_rate_per_sec: u32,

    /// A reverse proxy (an IP address or a network, e.g. 127.0.0.1 or
    /// 10.0.0.0/8; repeatable). For requests from it, the client address is
    /// the right-most one in `Forwarded` (RFC 7239), else `X-Forwarded-For`,
    /// that is not itself a trusted proxy, and every per-address rule
    /// applies to that address. From other peers these headers are ignored.
    #[arg(long, value_name = "ADDR")]
    pub trusted_proxy: Vec<Cidr>,

    /// IPv6 clients are counted by this many leading bits of their address
    /// for every per-address rule (a subscriber usually holds a /64).
    #[arg(long, value_name = "BITS", default_value_t = 64,
          value_parser = clap::value_parser!(u8).range(0..=128))]
    pub ipv6_prefix_len: u8,

    /// Unsent output one connection may hold. Over it, /echo stops reading
    /// from that connection until its output drains; a /ws client is closed
    /// with 1008 "slow consumer".
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub max_pending_output: usize,

    /// Also answer requests whose Host is this name (repeatable; `*` turns
    /// the check off). Accepted anyway: IP literals, `localhost` and
    /// `*.localhost`, the machine's host name and HOSTNAME.local. Others get
    /// 421, which stops DNS-rebinding pages from reaching the server.
    #[arg(long, value_name = "NAME")]
    pub allowed_host: Vec<String>,

    /// Do not negotiate permessage-deflate (RFC 7692) on /ws and /echo.
    #[arg(long)]
    pub no_deflate: bool,

    /// With permessage-deflate, messages shorter than this go uncompressed:
    /// below it, compressing saves under a tenth of the bytes (a 64-byte
    /// presence saves 6) for about 1.5 µs each; the shortest chat messages
    /// (about 90 bytes) save 12 % (docs/benchmarks.md, section 6).
    #[arg(long, value_name = "SIZE", default_value = "80", value_parser = parse_size)]
    pub deflate_threshold: usize,

    /// Also accept WebSocket upgrades to /ws from this Origin (repeatable;
    /// `*` allows every origin). An Origin whose host is the request's Host
    /// is always accepted, and so are requests with no Origin.
    #[arg(long, value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,

    /// Welcome text sent to every chat client.
    #[arg(long, default_value = "Welcome to wschat!")]
    pub motd: String,

    /// Messages kept per room. Default: 100000 (on disk) with the store,
    /// 1000 with --no-persist. At least 1000: the chat protocol promises
    /// clients the last 1000 of each room.
    #[arg(long, value_name = "N", value_parser = parse_history)]
    pub history: Option<usize>,

    /// Directory of the store (created when missing): history, rooms and
    /// their epochs survive restarts and crashes. Held by one server at a time.
    #[arg(long, value_name = "DIR", default_value = "wschat-data", global = true)]
    pub data_dir: PathBuf,

    /// Keep everything in memory only: a restart forgets the chat.
    #[arg(long)]
    pub no_persist: bool,

    /// Make every commit reach the disk (fsync) before anything it holds is
    /// acknowledged, so it survives a power cut; by default a commit survives
    /// the server being killed or crashing, not the machine losing power.
    #[arg(long)]
    pub fsync: bool,

    /// Disk budget for stored messages, all rooms together; past it the
    /// server-wide oldest messages are deleted first. Counts each message's
    /// text and nick bytes plus 64 for its row and index entries. 0: none.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub max_disk: usize,

    /// Images: turn uploads off (`POST /upload` answers 404).
    #[arg(long)]
    pub no_uploads: bool,

    /// Images: the largest upload; larger is answered 413.
    #[arg(long, value_name = "SIZE", default_value = "5MiB", value_parser = parse_size)]
    pub max_upload_size: usize,

    /// Images: all uploads together (on disk, or in memory with
    /// --no-persist); past it uploads are answered 507 until some are deleted.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub max_upload_disk: usize,

    /// Images: one account's uploads together; past it 429.
    #[arg(long, value_name = "SIZE", default_value = "100MiB", value_parser = parse_size)]
    pub upload_quota: usize,

    /// Images: uploads one account may make per minute; past it 429 with
    /// Retry-After. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub upload_rate: u32,

    /// Images: how long an upload no message shows is kept.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub upload_ttl: Duration,

    /// Images: time from the end of an upload's head to the end of its body.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub upload_timeout: Duration,

    /// Images: uploads being received at once, server-wide (each holds up
    /// to --max-upload-size in memory); past it 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_uploads_in_flight: u32,

    /// Fault injection for tests: while this file exists, every store commit
    /// fails.
    #[arg(long, value_name = "FILE", hide = true)]
    pub fault_file: Option<PathBuf>,

    /// Rooms one connection may join.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub max_rooms_per_conn: usize,

    /// Rooms on the server.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_rooms: usize,

    /// Rooms created from one address that may exist at once (they count
    /// until forgotten, see --room-retention). 0: no cap.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_rooms_per_addr: usize,

    /// Longest chat text, in Unicode scalar values.
    #[arg(long, value_name = "N", default_value_t = 4000)]
    pub max_text_chars: usize,

    /// Chat rate limit: tokens in each address's bucket, shared by its
    /// connections (an exempt loopback connection has its own). 0 turns the
    /// rate limit off (for benchmarks on a trusted network).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub rate_burst: u32,

    /// Chat rate limit: tokens added per second.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub rate_per_sec: u32,

    /// How long a room with no members keeps its history.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub room_retention: Duration,

    /// Memory for room history across all rooms; past it, the oldest
    /// messages server-wide are forgotten first. Counts each kept message's
    /// text and nick bytes plus a fixed overhead for its bookkeeping.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub max_history_bytes: usize,

    /// Only logged-in users may join rooms or send direct messages (guests
    /// may still connect, register and log in).
    #[arg(long)]
    pub require_account: bool,

    /// Who may register a nick: `open` (anyone) or `closed` (operators
    /// only, in the chat or with `wschat account add`).
    #[arg(long, value_enum, default_value = "open")]
    pub registration: Registration,

    /// Password hashes (logins, registrations, password changes) waiting or
    /// running at once; past it a request is answered `busy`.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_auth_jobs: u32,

    /// Accounts `register` may bring the server to (operators, in the chat
    /// or with `wschat account add`, are not held to it); past it a
    /// registration is answered `too_many_accounts`.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_accounts: u32,

    /// Registrations one client address may start per hour (answered
    /// `registration_limited` past it); 0: no limit. Loopback is exempt
    /// without --limit-loopback, like the rate limit.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub registrations_per_hour: u32,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `--registration`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    Open,
    Closed,
}

/// Subcommands (without one, wschat serves).
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Manage accounts in --data-dir (the server must be stopped: it holds
    /// the directory). The password is prompted for on a terminal, or read
    /// as one line from standard input otherwise.
    #[command(subcommand)]
    Account(AccountCommand),
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum AccountCommand {
    /// Create an account.
    Add {
        name: String,
        /// A server operator.
        #[arg(long)]
        op: bool,
    },
    /// Set an account's password (ends all its sessions).
    Passwd { name: String },
}

/// `--log-format`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["wschat"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let m = Config::parse_from(["wschat", "--no-persist"]);
        assert_eq!(m.history(), MEMORY_HISTORY);
    }

    #[test]
    fn history_has_the_protocols_floor() {
        let h = |v: &str| Config::try_parse_from(["wschat", "--history", v]).map(|c| c.history());
        assert_eq!(h("1000").ok(), Some(1000));
        assert_eq!(h("250000").ok(), Some(250_000));
        for low in ["999", "5", "0"] {
            let e = h(low).expect_err(low).to_string();
            assert!(e.contains("below 1000") && e.contains("--history"), "{e}");
        }
        assert!(h("many").is_err());
    }

    #[test]
    fn trusted_proxies_parse() {
        let c = Config::parse_from([
            "wschat",
            "--trusted-proxy",
            "127.0.0.1",
            "--trusted-proxy",
            "10.0.0.0/8",
        ]);
        assert_eq!(c.trusted_proxy.len(), 2);
        assert!(Config::try_parse_from(["wschat", "--trusted-proxy", "proxy"]).is_err());
        assert!(Config::try_parse_from(["wschat", "--ipv6-prefix-len", "129"]).is_err());
    }
}
