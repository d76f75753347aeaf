//! The systemd service protocol over a real notification socket: what a
//! `Type=notify` unit with `WatchdogSec=` (packaging/wschat.service) relies on.
mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A datagram socket standing in for systemd's `$NOTIFY_SOCKET`.
struct FakeSystemd {
    sock: UnixDatagram,
    dir: std::path::PathBuf,
}

impl FakeSystemd {
    fn new(tag: &str) -> FakeSystemd {
        let dir = std::env::temp_dir().join(format!("wschat-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        FakeSystemd { sock, dir }
    }

    fn path(&self) -> String {
        self.dir.join("notify").to_str().unwrap().to_owned()
    }

    /// The next notice, or a failure after the safety-net timeout.
    fn next(&self) -> String {
        let mut buf = [0u8; 1024];
        let n = self.sock.recv(&mut buf).expect("a notice from the server");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn ready_once_listening_watchdog_while_running_stopping_on_sigterm() {
    let systemd = FakeSystemd::new("notify");
    let path = systemd.path();
    // systemd asks for a notice within 2 s; the server sends one each second.
    let mut server = Server::start_env(
        &[],
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "2000000")],
    );
    let ready = systemd.next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.contains(&format!("STATUS=listening on {}", server.addr)),
        "{ready:?}"
    );
    // Ready means serving.
    let (status, _) = http_request(server.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    for _ in 0..2 {
        assert_eq!(systemd.next(), "WATCHDOG=1");
    }
    server.signal("TERM");
    let stopping = loop {
        let n = systemd.next();
        if n != "WATCHDOG=1" {
            break n;
        }
    };
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let st = server.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(st.success(), "{st:?}");
}

#[test]
fn no_watchdog_notices_unless_asked() {
    let systemd = FakeSystemd::new("nowatchdog");
    let path = systemd.path();
    let server = Server::start_env(&[], &[("NOTIFY_SOCKET", &path)]);
    assert!(systemd.next().contains("READY=1"));
    systemd
        .sock
        .set_read_timeout(Some(Duration::from_millis(2500)))
        .unwrap();
    let mut buf = [0u8; 64];
    let got = systemd.sock.recv(&mut buf);
    assert!(
        got.is_err(),
        "unexpected notice {:?}",
        got.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
    drop(server);
}
