use std::io::{BufRead, IsTerminal, Write};
use wschat::server::{AccountCommand, Command, Config, LogFormat, Server, config, config_file};
use wschat::store::{Op, Store, sqlite};

/// The text log line, as env_logger's default format writes it
/// (`[2026-12-01T21:00:00Z INFO  wschat::server] listening`), with the
/// timestamp from `humantime`: env_logger's own timestamps come with its
/// `humantime` feature, which brings the `jiff` date library (and its
/// default `regex` feature the regex engine), about 0.5 MiB of binary for
/// one line of text.
fn text_log(buf: &mut env_logger::fmt::Formatter, record: &log::Record<'_>) -> std::io::Result<()> {
    writeln!(
        buf,
        "[{} {:<5} {}] {}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        record.level(),
        record.target(),
        record.args()
    )
}

fn main() {
    // Flags > WSCHAT_* variables > the --config file > defaults.
    let (cfg, source) = match config_file::load(std::env::args_os().collect()) {
        Ok(c) => c,
        Err(config_file::ConfigError::Early(config::Early::Help(text))) => {
            print!("{text}");
            return;
        }
        Err(config_file::ConfigError::Early(config::Early::Version)) => {
            println!("wschat {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Err(config_file::ConfigError::Usage(m)) => {
            eprintln!("error: {m}\n\nFor more information, try '--help'.");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("wschat: cannot start: {e}");
            std::process::exit(2);
        }
    };
    let mut logger = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,rustls=error"),
    );
    if cfg.log_format == LogFormat::Json {
        logger.format(wschat::server::json_log::format);
    } else {
        logger.format(text_log);
    }
    logger.init();
    if let Some(Command::Account(cmd)) = &cfg.command {
        match account(&cfg, cmd) {
            Ok(msg) => {
                println!("{msg}");
                return;
            }
            Err(e) => {
                eprintln!("wschat: {e}");
                std::process::exit(1);
            }
        }
    }
    let scheme = if cfg.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::tune();
    let server = match Server::bind(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wschat: cannot start: {e}");
            std::process::exit(1);
        }
    };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let server = server.with_memory_trim(glibc::trim);
    let server = server
        .with_hostname(&hostname())
        .with_cpu_clock(thread_cpu_us)
        .with_config_source(source);
    let addr = server.local_addr();
    let shown = if addr.ip().is_unspecified() {
        format!("{scheme}://localhost:{}/", addr.port())
    } else {
        format!("{scheme}://{addr}/")
    };
    // Tests read this line to learn the port.
    println!("wschat listening on {addr}; open {shown}");
    if let Err(e) = server.run() {
        eprintln!("wschat: {e}");
        std::process::exit(1);
    }
}

/// The machine's host name, for the Host check (`--allowed-host`); empty
/// if the system will not say.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// glibc's allocator needs two nudges to suit a long-running server. Other
/// allocators (musl's, macOS's) return freed memory on their own and have
/// neither call, so there the server runs without them.
/// CPU time this thread has used, in µs (0 should the clock be missing).
fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let (s, ns) = (u64::try_from(ts.tv_sec), u64::try_from(ts.tv_nsec));
    s.unwrap_or(0) * 1_000_000 + ns.unwrap_or(0) / 1000
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    /// Returns freed heap pages to the system (glibc keeps them otherwise).
    pub fn trim() {
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// glibc gives the top of the heap back to the kernel whenever more than
    /// 128 KiB is free there, so a server echoing 64 KiB messages grew and
    /// shrank its heap (`brk`, then page faults on fresh zeroed pages) once
    /// per message. Keep freed memory for reuse instead; `trim` above
    /// returns it every few seconds, so an idle server still gives it back.
    ///
    /// Setting the trim threshold freezes glibc's mmap threshold, which
    /// would otherwise climb with the largest block freed; pin it at its
    /// default so that big tables and large one-off answers keep getting
    /// mappings of their own, resident only where touched and returned
    /// whole when freed.
    pub fn tune() {
        const KEEP_FREE: libc::c_int = 8 << 20;
        const OWN_MAPPING_FROM: libc::c_int = 128 << 10;
        // SAFETY: mallopt only sets allocator parameters; called before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE);
            libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_FROM);
        }
    }
}

/// `wschat account add|passwd NAME`: works on --data-dir directly (the
/// server must be stopped; the store's lock says so otherwise).
fn account(cfg: &Config, cmd: &AccountCommand) -> Result<String, String> {
    let name = match cmd {
        AccountCommand::Add { name, .. } | AccountCommand::Passwd { name } => name,
    };
    if !wschat::chat::validate::valid_nick(name) {
        return Err(format!(
            "{name:?} is not a nick (1 to 32 characters from A-Z a-z 0-9 _ - .)"
        ));
    }
    let mut store = sqlite::SqliteStore::open(&cfg.data_dir, sqlite::Options::default())
        .map_err(|e| e.to_string())?;
    let existing = store
        .accounts()
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|a| a.name.eq_ignore_ascii_case(name));
    match (cmd, &existing) {
        (AccountCommand::Add { .. }, Some(a)) => {
            return Err(format!(
                "account {} exists; use `wschat account passwd {}`",
                a.name, a.name
            ));
        }
        (AccountCommand::Passwd { .. }, None) => return Err(format!("no account {name}")),
        _ => {}
    }
    let password = read_password()?;
    let hash = wschat::server::auth::hash_password(&password)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    match cmd {
        AccountCommand::Add { op, .. } => {
            store
                .commit(&[Op::PutAccount {
                    name,
                    hash: &hash,
                    op: *op,
                    created: now,
                }])
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "account {name} created{}",
                if *op { " (operator)" } else { "" }
            ))
        }
        AccountCommand::Passwd { .. } => {
            let Some(a) = existing else {
                return Err(format!("no account {name}"));
            };
            store
                .commit(&[
                    Op::SetPassword {
                        name: &a.name,
                        hash: &hash,
                    },
                    Op::DeleteSessions { name: &a.name },
                ])
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "password of {} changed; its sessions ended",
                a.name
            ))
        }
    }
}

/// The password: asked twice without echo on a terminal, else the first
/// line of standard input (for scripts and tests).
fn read_password() -> Result<String, String> {
    let stdin = std::io::stdin();
    let check = |p: String| -> Result<String, String> {
        let n = p.chars().count();
        let (lo, hi) = (
            wschat::chat::validate::MIN_PASSWORD_CHARS,
            wschat::chat::validate::MAX_PASSWORD_CHARS,
        );
        if (lo..=hi).contains(&n) {
            Ok(p)
        } else {
            Err(format!("a password has {lo} to {hi} characters"))
        }
    };
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password from standard input: {e}"))?;
        return check(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = prompt_hidden("Password: ")?;
    let again = prompt_hidden("Again: ")?;
    if first != again {
        return Err("the two passwords differ".into());
    }
    check(first)
}

/// One line from the terminal with echo off.
fn prompt_hidden(prompt: &str) -> Result<String, String> {
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data, filled by tcgetattr before use.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is our standard input; term is a valid termios.
    let saved = (unsafe { libc::tcgetattr(fd, &mut term) } == 0).then_some(term);
    if let Some(mut t) = saved {
        t.c_lflag &= !libc::ECHO;
        t.c_lflag |= libc::ECHONL;
        // SAFETY: as above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
    }
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let r = std::io::stdin().lock().read_line(&mut line);
    if let Some(t) = saved {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
    }
    r.map_err(|e| e.to_string())?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
