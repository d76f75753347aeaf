use clap::Parser;
use wschat::server::{Config, Server};

fn main() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,rustls=error"),
    )
    .init();
    let cfg = Config::parse();
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
        .with_cpu_clock(thread_cpu_us);
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
