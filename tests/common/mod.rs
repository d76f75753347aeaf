//! Shared harness for the end-to-end tests: a real `wschat` process on a
//! free loopback port, and raw-socket helpers that speak RFC 6455 framing
//! independently of the server's own code.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Safety net for every blocking read in tests (not a timing assertion).
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// A data directory made for this server alone, removed with it.
    own_dir: Option<TempDir>,
}

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "wschat-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create a temporary directory");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    /// Starts `wschat --addr 127.0.0.1:0 ARGS…` and waits for its
    /// "listening on ADDR" line. Unless ARGS name a `--data-dir` or
    /// `--no-persist`, the server persists (the default) into a fresh
    /// temporary directory of its own.
    pub fn start(args: &[&str]) -> Server {
        Server::start_env(args, &[])
    }

    /// `start` with extra environment variables for the server.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let own = !args
            .iter()
            .any(|a| *a == "--data-dir" || *a == "--no-persist");
        let dir = own.then(|| TempDir::new("data"));
        let mut server = match &dir {
            Some(d) => {
                let mut all = vec!["--data-dir", d.path().to_str().expect("UTF-8 path")];
                all.extend_from_slice(args);
                Server::spawn(&all, env)
            }
            None => Server::spawn(args, env),
        };
        server.own_dir = dir;
        server
    }

    /// Starts a server on the data directory `dir` (for restart tests).
    pub fn start_in(dir: &Path, args: &[&str]) -> Server {
        let mut all = vec!["--data-dir", dir.to_str().expect("UTF-8 path")];
        all.extend_from_slice(args);
        Server::spawn(&all, &[])
    }

    /// Runs `wschat --addr 127.0.0.1:0 ARGS…` expecting it to refuse to
    /// start: returns its exit status and what it wrote to stderr.
    pub fn refuse(args: &[&str]) -> (ExitStatus, String) {
        let mut child = server_command()
            .arg("--addr")
            .arg("127.0.0.1:0")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run wschat");
        let end = Instant::now() + IO_TIMEOUT;
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait for wschat") {
                break st;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wschat {args:?} started instead of refusing");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    }

    /// `start_env` with the server's stderr (its log) handed over line by
    /// line, each line also copied to the test's stderr. RUST_LOG is the
    /// caller's to set in `env` (the default here is `warn`).
    pub fn start_logged(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Server, std::sync::mpsc::Receiver<String>) {
        let dir = TempDir::new("data");
        let mut all = vec!["--data-dir", dir.path().to_str().expect("UTF-8 path")];
        all.extend_from_slice(args);
        let mut server = Server::spawn_with(&all, env, Stdio::piped());
        server.own_dir = Some(dir);
        let (tx, rx) = std::sync::mpsc::channel();
        let err = server.child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let _ = tx.send(line);
            }
        });
        (server, rx)
    }

    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn_with(args, env, Stdio::inherit())
    }

    fn spawn_with(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Server {
        let mut cmd = server_command();
        cmd.arg("--addr").arg("127.0.0.1:0").args(args).env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let mut child = cmd
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{}", spawn_failure(&e)));
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read banner");
        let addr = line
            .split_whitespace()
            .nth(3)
            .and_then(|a| a.trim_end_matches(';').parse().ok())
            .unwrap_or_else(|| panic!("unexpected banner: {line:?}{}", no_banner_hint(&line)));
        Server {
            child,
            addr,
            own_dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Sends a signal (e.g. "TERM", "INT") to the server process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// CPU time (user + system) the server has used, in milliseconds
    /// (Linux /proc; its clock ticks are USER_HZ, 100 per second). For
    /// figures printed by tests, not for assertions: CPU time on a shared
    /// machine is a measurement, not a property.
    pub fn cpu_ms(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields 14 and 15 (utime, stime), counted after the ")" that ends
        // the command name, which may itself hold spaces.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let ticks: u64 = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|t| t.parse::<u64>().ok())
            .sum();
        ticks * 10
    }

    /// Resident memory of the server in KiB (Linux /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// `WSCHAT_TEST_RUNNER`, split into words: the emulator that runs the server
/// binary when the tests themselves run under one (tests/cross.sh sets it to
/// `qemu-aarch64 -L /usr/aarch64-linux-gnu` for aarch64). Cargo's
/// `CARGO_TARGET_<TRIPLE>_RUNNER` runs the test binaries only; the server
/// they spawn is a foreign binary too, which the kernel runs only if qemu is
/// registered with binfmt_misc.
fn runner() -> Option<Vec<String>> {
    let words: Vec<String> = std::env::var("WSCHAT_TEST_RUNNER")
        .ok()?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    (!words.is_empty()).then_some(words)
}

/// The socket safety net: six times longer for a server under an emulator,
/// where floods of a few hundred thousand frames take longer than 10 s.
pub fn io_timeout() -> Duration {
    if runner().is_some() {
        IO_TIMEOUT * 6
    } else {
        IO_TIMEOUT
    }
}

/// The command that starts the server binary cargo built, behind the runner
/// if one is set.
pub fn server_command() -> Command {
    let bin = env!("CARGO_BIN_EXE_wschat");
    match runner() {
        Some(words) => {
            let mut c = Command::new(&words[0]);
            c.args(&words[1..]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// Why the server did not start, with the way out when the kernel cannot
/// execute it (a foreign architecture without binfmt_misc).
fn spawn_failure(e: &std::io::Error) -> String {
    let bin = env!("CARGO_BIN_EXE_wschat");
    match (e.raw_os_error(), runner()) {
        (Some(libc::ENOEXEC), None) => format!(
            "cannot execute {bin}: {e}. It is built for another architecture and \
             qemu is not registered with binfmt_misc: set WSCHAT_TEST_RUNNER \
             (e.g. \"qemu-aarch64 -L /usr/aarch64-linux-gnu\"), as tests/cross.sh does"
        ),
        (_, Some(words)) => format!("cannot start {bin} with WSCHAT_TEST_RUNNER {words:?}: {e}"),
        _ => format!("cannot start {bin}: {e}"),
    }
}

/// An empty banner with no runner set is what a foreign binary gives: the
/// kernel refuses it (ENOEXEC) and the C library's fallback runs it as a
/// shell script, which prints nothing.
fn no_banner_hint(line: &str) -> &'static str {
    if line.is_empty() && runner().is_none() {
        ". If these tests run under an emulator (qemu-user) without binfmt_misc, \
         set WSCHAT_TEST_RUNNER (e.g. \"qemu-aarch64 -L /usr/aarch64-linux-gnu\"), \
         as tests/cross.sh does"
    } else {
        ""
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain TCP connection with the safety-net timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(io_timeout())).unwrap();
    s.set_write_timeout(Some(io_timeout())).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads an HTTP response head (and whatever follows, up to EOF if `to_eof`).
/// Returns the status code and the whole text read.
pub fn read_http_response(s: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    // The status line must be the very first thing: anything before it
    // (e.g. a frame sent ahead of the 101) is a broken stream, status 0.
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Sends a raw request and returns the status code and response head.
pub fn http_request(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = connect(addr);
    s.write_all(request.as_bytes()).unwrap();
    read_http_response(&mut s)
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends a WebSocket upgrade request for `path` (with optional extra header
/// lines) on `s`; returns the status and the response head.
pub fn upgrade_on(s: &mut TcpStream, addr: SocketAddr, path: &str, extra: &str) -> (u16, String) {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    read_http_response(s)
}

/// A raw WebSocket upgrade on `path` with optional extra header lines.
pub fn raw_ws(addr: SocketAddr, path: &str, extra: &str) -> TcpStream {
    let mut s = connect(addr);
    let (status, head) = upgrade_on(&mut s, addr, path, extra);
    assert_eq!(status, 101, "upgrade refused: {head}");
    s
}

/// A masked client frame (RFC 6455 §5.2, §5.3), written independently of the server code.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0xa1, 0xb2, 0xc3, 0xd4];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Reads one server frame: (fin, opcode, payload). Panics on a masked frame.
pub fn read_frame(s: &mut TcpStream) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let mut b0 = [0u8; 1];
    s.read_exact(&mut b0)?;
    read_frame_from(b0[0], s)
}

/// Reads frames until a close frame; returns its status code (None if empty).
/// Panics if the connection ends without one.
pub fn expect_close(s: &mut TcpStream) -> Option<u16> {
    loop {
        let (_, op, payload) = read_frame(s).expect("a close frame before the end of the stream");
        if op == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

/// True when the server has closed the TCP connection (EOF or reset).
pub fn wait_eof(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// An independent client (tungstenite) connected to `path`.
pub fn client(server: &Server, path: &str) -> tungstenite::WebSocket<TcpStream> {
    let stream = connect(server.addr);
    let (ws, _resp) = tungstenite::client(server.url(path), stream).expect("tungstenite handshake");
    ws
}

// ---- permessage-deflate (RFC 7692), with flate2 directly ------------------

/// What Chromium offers (RFC 7692 §7.1.2.2: `client_max_window_bits`
/// without a value says the client supports the parameter).
pub const CHROMIUM_OFFER: &str =
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// Compresses one message as a client would (§7.2.1): raw DEFLATE, a sync
/// flush, its `00 00 ff ff` tail removed.
pub fn deflate_raw(data: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    while (c.total_in() as usize) < data.len() || out.len() == out.capacity() {
        out.reserve(out.capacity());
        let done = c.total_in() as usize;
        c.compress_vec(&data[done..], &mut out, FlushCompress::Sync)
            .unwrap();
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// Inflates one message (§7.2.2: the tail appended first).
pub fn inflate_raw(data: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(data.len() * 8 + 1024);
    loop {
        let done = d.total_in() as usize;
        d.decompress_vec(&input[done..], &mut out, flate2::FlushDecompress::Sync)
            .expect("valid DEFLATE data from the server");
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

/// A masked client frame with RSV1 ("Per-Message Compressed", RFC 7692 §6).
pub fn frame_rsv1(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = frame(fin, opcode, payload);
    f[0] |= 0x40;
    f
}

/// Reads one server frame with its RSV1 bit: (fin, rsv1, opcode, payload).
pub fn read_frame_rsv(s: &mut TcpStream) -> std::io::Result<(bool, bool, u8, Vec<u8>)> {
    let mut b0 = [0u8; 1];
    s.read_exact(&mut b0)?;
    assert_eq!(b0[0] & 0x30, 0, "RSV2 and RSV3 are never set");
    let (fin, opcode, payload) = read_frame_from(b0[0], s)?;
    Ok((fin, b0[0] & 0x40 != 0, opcode, payload))
}

fn read_frame_from(b0: u8, s: &mut TcpStream) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let mut b1 = [0u8; 1];
    s.read_exact(&mut b1)?;
    assert_eq!(
        b1[0] & 0x80,
        0,
        "server frames must not be masked (RFC 6455 §5.1)"
    );
    let len = match b1[0] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b)?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    Ok((b0 & 0x80 != 0, b0 & 0x0f, payload))
}

/// The `Sec-WebSocket-Extensions` value of a response head, if any.
pub fn extensions_header(head: &str) -> Option<&str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| v.trim())
    })
}

/// Runs `wschat --data-dir DIR ARGS…` with `pw` on its standard input:
/// (success, what it printed).
pub fn account_cmd(dir: &Path, args: &[&str], pw: &str) -> (bool, String) {
    // Behind the emulator when the tests run under qemu (tests/cross.sh).
    let mut child = server_command()
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wschat account");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{pw}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

// ---- chat client (tungstenite, JSON) --------------------------------------

/// A chat connection through the independent client.
pub type Ws = tungstenite::WebSocket<TcpStream>;

/// The password the tests register accounts with.
pub const PW: &str = "correct horse battery";

/// A server on `dir` with the rate limit off (tests post many messages) and
/// `extra` flags.
pub fn start(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--rate-burst", "0"];
    args.extend_from_slice(extra);
    Server::start_in(dir, &args)
}

/// Connects to `/ws?nick=NICK`; returns the client and its welcome, which
/// must be the first frame.
pub fn welcome(server: &Server, nick: &str) -> (Ws, serde_json::Value) {
    let mut ws = client(server, &format!("/ws?nick={nick}"));
    let w = recv(&mut ws);
    assert_eq!(w["type"], "welcome", "{w}");
    (ws, w)
}

/// `welcome` without the welcome.
pub fn connect_as(server: &Server, nick: &str) -> Ws {
    welcome(server, nick).0
}

/// `welcome` with the nick the server gave (another one when `nick` is taken).
pub fn connect_nick(server: &Server, nick: &str) -> (Ws, String) {
    let (ws, w) = welcome(server, nick);
    let nick = w["nick"]
        .as_str()
        .expect("a nick in the welcome")
        .to_string();
    (ws, nick)
}

/// Sends one JSON text frame.
pub fn send(ws: &mut Ws, v: serde_json::Value) {
    ws.send(tungstenite::Message::text(v.to_string()))
        .expect("send");
}

/// The next data frame, which must be a text frame holding a JSON object;
/// pings and pongs are passed over.
pub fn recv(ws: &mut Ws) -> serde_json::Value {
    use tungstenite::Message;
    loop {
        match ws.read().expect("read a frame") {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("server sent invalid JSON {t:?}: {e}"));
                assert!(v.is_object(), "not a JSON object: {v}");
                return v;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Events that `recv_type` passes over: they follow from what others do,
/// not from the request a test waits on.
pub const EVENTS: &[&str] = &["presence", "typing", "nick", "member", "role", "reads"];

/// The next frame of type `ty`, passing over `EVENTS`; any other frame fails.
pub fn recv_type(ws: &mut Ws, ty: &str) -> serde_json::Value {
    recv_type_past(ws, ty, &[])
}

/// `recv_type` that also passes over the types in `also`.
pub fn recv_type_past(ws: &mut Ws, ty: &str, also: &[&str]) -> serde_json::Value {
    loop {
        let v = recv(ws);
        if v["type"] == ty {
            return v;
        }
        let t = v["type"].as_str().unwrap_or("");
        assert!(
            EVENTS.contains(&t) || also.contains(&t),
            "expected {ty}, got {v}"
        );
    }
}

/// Sends `req` with ref `r` and returns the frame carrying that ref (the
/// answer or an `error`), passing over everything else.
pub fn ask(ws: &mut Ws, mut req: serde_json::Value, r: &str) -> serde_json::Value {
    req["ref"] = serde_json::json!(r);
    send(ws, req);
    loop {
        let v = recv(ws);
        if v["ref"] == r {
            return v;
        }
    }
}

/// The answer to joining `room`: `joined` or an `error`.
pub fn try_join(ws: &mut Ws, room: &str) -> serde_json::Value {
    ask(ws, serde_json::json!({"type":"join","room":room}), "j")
}

/// Joins `room`, which must succeed; returns the `joined`.
pub fn joined(ws: &mut Ws, room: &str) -> serde_json::Value {
    let v = try_join(ws, room);
    assert_eq!(v["type"], "joined", "{v}");
    v
}

/// Registers the connection's nick with `PW`; returns the session token.
pub fn register(ws: &mut Ws) -> String {
    let v = ask(
        ws,
        serde_json::json!({"type":"register","password":PW}),
        "reg",
    );
    assert_eq!(v["type"], "session", "{v}");
    v["token"].as_str().expect("a token").to_string()
}

/// Connects as `nick` and registers it; returns the connection and token.
pub fn registered(server: &Server, nick: &str) -> (Ws, String) {
    let mut ws = connect_as(server, nick);
    let token = register(&mut ws);
    (ws, token)
}
