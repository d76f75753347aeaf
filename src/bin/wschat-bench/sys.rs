//! The few OS calls std does not offer: file-descriptor limit, /proc
//! sampling of the server, our own CPU time, and connecting from a chosen
//! loopback source address.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::FromRawFd;

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    // rlim_t is not u64 on every target.
    #[allow(clippy::unnecessary_cast)]
    let cur = r.rlim_cur as u64;
    cur
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// One sample of a process's CPU time and resident memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    pub rss_kb: u64,
}

/// Reads the process's CPU time and `/proc/PID/status` (VmRSS).
///
/// CPU time comes from `/proc/PID/task/*/schedstat` (the scheduler's run
/// time of every thread, in nanoseconds) where the kernel provides it, else
/// from `/proc/PID/stat` (utime + stime, in clock ticks of 10 ms): a 3 s
/// run of a server at 5% of its core is 0.15 s, which ticks give to ±7%.
pub fn sample_proc(pid: u32) -> Option<ProcSample> {
    let cpu_s = match schedstat_cpu_s(pid) {
        Some(s) => s,
        None => stat_cpu_s(pid)?,
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample { cpu_s, rss_kb })
}

/// The sum over the process's threads of the first field of
/// `schedstat` (time spent on a CPU, ns). `None` if a thread's file is
/// unreadable or the kernel keeps no such figure (all zero).
fn schedstat_cpu_s(pid: u32) -> Option<f64> {
    let mut ns: u64 = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = t.ok()?.path().join("schedstat");
        let s = std::fs::read_to_string(path).ok()?;
        ns += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    (ns > 0).then(|| ns as f64 / 1e9)
}

fn stat_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // proc(5): utime and stime are fields 14 and 15; `rest` starts at field 3.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// This process's user+system CPU seconds so far (all threads).
pub fn self_cpu_s() -> f64 {
    // SAFETY: zeroed rusage is a valid value; getrusage fills it in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Source address number `i` of the spread: 127.0.0.2 … 127.0.0.254.
pub fn spread_source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % 253) as u8)
}

/// Starts a non-blocking connect to `dst` from `src` (port chosen by the
/// kernel at connect time, so the 4-tuple, not the source port alone, must
/// be unique: `IP_BIND_ADDRESS_NO_PORT`). This is what lets one client open
/// more than ~28,000 connections to one server port.
pub fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<mio::net::TcpStream> {
    fn check(r: libc::c_int) -> io::Result<libc::c_int> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }
    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        }
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr
    // pointers refer to live, correctly sized locals. The descriptor is
    // handed to TcpStream (which closes it) right after creation, so every
    // error path below closes it too.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let std_stream = std::net::TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        // Best effort: without it bind(port 0) reserves a port per socket.
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let s = sockaddr(SocketAddrV4::new(src, 0));
        check(libc::bind(
            fd,
            &s as *const libc::sockaddr_in as *const libc::sockaddr,
            len,
        ))?;
        let d = sockaddr(dst);
        let r = libc::connect(
            fd,
            &d as *const libc::sockaddr_in as *const libc::sockaddr,
            len,
        );
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(mio::net::TcpStream::from_std(std_stream))
    }
}

/// Opens a non-blocking connection to `dst`, from a spread source address
/// when `src` is given and the target is IPv4.
pub fn connect(dst: SocketAddr, src: Option<Ipv4Addr>) -> io::Result<mio::net::TcpStream> {
    match (src, dst) {
        (Some(src), SocketAddr::V4(d)) => connect_from(src, d),
        _ => mio::net::TcpStream::connect(dst),
    }
}
