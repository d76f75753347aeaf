//! Accepting: the listener, descriptor exhaustion, the per-address limits,
//! the Host check, and the admission of a new connection.

use super::queue::WriteQueue;
use super::{
    Conn, EMFILE_PAUSE_MS, MAX_LOGGED_HOSTS, METRICS_SLOTS, Phase, REJECT_SLACK, Server, addr,
    http, ms,
};
use crate::chat::rate::Verdict;
use crate::ws::handshake::{HeadScanner, Request};
use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};

impl Server {
    pub(super) fn accept_all(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((sock, addr)) => self.admit(sock, addr, true, false),
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
    pub(super) fn resolve_client(&mut self, k: usize, req: &Request<'_>) -> Option<Vec<u8>> {
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

    pub(super) fn uncount(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// The DNS-rebinding check (`--allowed-host`); a refusal is logged once
    /// per name so that an operator sees which flag to add.
    pub(super) fn check_host(&mut self, host: Option<&str>) -> Option<Vec<u8>> {
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
    pub(super) fn take_handshake(&mut self, k: usize) -> Option<Vec<u8>> {
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
    /// `metrics`: from `--metrics-addr`, whose connections have slots of
    /// their own (`METRICS_SLOTS`) and are not counted per address: the
    /// scraper is the operator's, and must be served when the public port
    /// is full.
    pub(super) fn admit(
        &mut self,
        mut sock: TcpStream,
        addr: SocketAddr,
        secure: bool,
        metrics: bool,
    ) {
        // On a dual-stack listener IPv4 clients appear as ::ffff:a.b.c.d;
        // count them (and recognise loopback) by their IPv4 address.
        let peer = addr.ip().to_canonical();
        self.metrics.accepted += 1;
        let limited = self.ip_is_limited(peer);
        let ip = addr::key(peer, self.cfg.ipv6_prefix_len);
        // A trusted proxy carries many clients: they are counted by their
        // forwarded addresses once the request head is read.
        let counted = limited && !metrics && !self.is_trusted_proxy(peer);
        // Connections only being told 503/429 live in the slack, not in the
        // table proper: otherwise one address, refused over and over, could
        // fill the table and lock everyone else out.
        let over_total = if metrics {
            self.metrics_open >= METRICS_SLOTS
        } else {
            self.conns.len() - self.refusing - self.metrics_open >= self.max_connections
        };
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
            metrics,
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
        } else if metrics {
            self.metrics_open += 1;
        } else if counted {
            *self.per_ip.entry(ip).or_insert(0) += 1;
        }
        if let Some((status, reason)) = refusal {
            debug!("refusing {addr}: {status}");
            self.respond(k, http::error(status, reason, "Retry-After: 5\r\n"), None);
        }
    }
}
