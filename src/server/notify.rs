//! systemd's service notification protocol (sd_notify(3)), without
//! libsystemd: each notice is one datagram of newline-separated `KEY=VALUE`
//! lines sent to the unix socket that `$NOTIFY_SOCKET` names. The server
//! sends `READY=1` once it listens (for `Type=notify`), `WATCHDOG=1` from its
//! timer while the loop turns (for `WatchdogSec=`), and `STOPPING=1` when a
//! signal starts the shutdown. Outside systemd the variable is unset and
//! nothing is sent.

use log::{debug, warn};
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// Half of `$WATCHDOG_USEC`: how often `WATCHDOG=1` is due, when systemd
    /// asked for it (and `$WATCHDOG_PID`, if set, is this process).
    watchdog_every: Option<Duration>,
}

/// `$NOTIFY_SOCKET` as an address: a path, or `@name` for a name in the
/// abstract namespace (Linux only). Anything else (systemd also knows
/// `vsock:`) is not ours to handle.
fn socket_addr(name: &str) -> io::Result<SocketAddr> {
    if let Some(abs) = name.strip_prefix('@') {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::linux::net::SocketAddrExt;
            return SocketAddr::from_abstract_name(abs);
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = abs;
            return Err(io::Error::other("abstract socket names are Linux-only"));
        }
    }
    if name.starts_with('/') {
        return SocketAddr::from_pathname(name);
    }
    Err(io::Error::other(format!(
        "unsupported NOTIFY_SOCKET {name:?}"
    )))
}

/// The watchdog interval systemd asks for, from `$WATCHDOG_USEC` and
/// `$WATCHDOG_PID`; notices go out at half of it, as sd_watchdog_enabled(3)
/// recommends.
fn watchdog_every(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

impl Notifier {
    /// The notifier systemd's environment asks for, if any. A variable that
    /// is set but unusable is logged, and the server runs without it.
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var("NOTIFY_SOCKET").ok()?;
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        match Notifier::new(&name, watchdog_every(usec.as_deref(), pid.as_deref())) {
            Ok(n) => Some(n),
            Err(e) => {
                warn!("NOTIFY_SOCKET={name:?}: {e}; not notifying systemd");
                None
            }
        }
    }

    fn new(name: &str, watchdog_every: Option<Duration>) -> io::Result<Notifier> {
        let addr = socket_addr(name)?;
        let sock = UnixDatagram::unbound()?;
        // A full socket (systemd busy) must not stall the loop: a notice
        // that cannot go now is dropped, and the next one follows.
        sock.set_nonblocking(true)?;
        Ok(Notifier {
            sock,
            addr,
            watchdog_every,
        })
    }

    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// Sends one notice (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=…`).
    pub fn send(&self, state: &str) {
        match self.sock.send_to_addr(state.as_bytes(), &self.addr) {
            Ok(_) => debug!("notified systemd: {state:?}"),
            Err(e) => warn!("notifying systemd ({state:?}): {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(listener: &UnixDatagram) -> String {
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = listener.recv(&mut buf).expect("a notice");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notices_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("wschat-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str().unwrap(), None).unwrap();
        n.send("READY=1\nSTATUS=listening");
        assert_eq!(recv(&listener), "READY=1\nSTATUS=listening");
        n.send("STOPPING=1");
        assert_eq!(recv(&listener), "STOPPING=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn notices_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("wschat-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(&format!("@{name}"), None).unwrap();
        n.send("WATCHDOG=1");
        assert_eq!(recv(&listener), "WATCHDOG=1");
    }

    #[test]
    fn unusable_socket_names_are_refused() {
        assert!(Notifier::new("vsock:2:1234", None).is_err());
        assert!(Notifier::new("relative/path", None).is_err());
    }

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec_for_this_process() {
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_every(Some("10000000"), None),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            watchdog_every(Some("4000000"), Some(&me)),
            Some(Duration::from_secs(2))
        );
        // Meant for another process (e.g. a parent that exec'd us with its
        // environment), or not asked for.
        assert_eq!(watchdog_every(Some("4000000"), Some("1")), None);
        assert_eq!(watchdog_every(None, None), None);
        assert_eq!(watchdog_every(Some("0"), None), None);
        assert_eq!(watchdog_every(Some("soon"), None), None);
    }
}
