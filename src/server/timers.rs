//! Timers and signals: the periodic sweep of deadlines, pings and idle
//! connections, the systemd watchdog, and SIGINT/SIGTERM/SIGHUP.

use super::queue::Chunk;
use super::{LISTENER, Phase, Server, TRIM_EVERY_MS, ms};
use crate::ws::deflate;
use log::{debug, info};
use mio::Interest;
use signal_hook::consts::SIGHUP;

impl Server {
    pub(super) fn sweep(&mut self) {
        let now = self.now;
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
            if let Some(l) = self.listener.as_mut() {
                let _ = self
                    .poll
                    .registry()
                    .register(l, LISTENER, Interest::READABLE);
            }
            self.accept_all();
        }
        let idle = ms(self.cfg.idle_timeout);
        let ping = ms(self.cfg.ping_interval);
        let mut expired = Vec::new();
        let mut late = Vec::new();
        let mut silent = Vec::new();
        let mut to_ping = Vec::new();
        for (k, c) in self.conns.iter() {
            match &c.phase {
                Phase::Ws(ws) if !ws.close_sent => {
                    // Not while we are the ones not reading (backpressure).
                    if now >= c.deadline && !c.paused {
                        late.push(k);
                    } else if now.saturating_sub(c.last_rx) >= idle {
                        silent.push(k);
                    } else if now.saturating_sub(c.last_rx.max(c.last_ping)) >= ping {
                        to_ping.push(k);
                    }
                }
                _ if now >= c.deadline => expired.push(k),
                _ => {}
            }
        }
        for k in expired {
            debug!("connection {k}: timed out");
            self.drop_conn(k);
        }
        for k in late {
            debug!("connection {k}: message not complete in time");
            self.start_close(k, 1008, "message timeout");
        }
        for k in silent {
            self.start_close(k, 1001, "idle timeout");
        }
        for k in to_ping {
            if let Some(c) = self.conns.get_mut(k) {
                c.last_ping = now;
                c.out.push(Chunk::Control(vec![0x89, 0]));
                self.mark_dirty(k);
            }
        }
        self.handshakes.expire(
            self.now,
            self.cfg.handshake_rate_burst,
            self.cfg.handshake_rate_per_sec,
        );
        let now = self.chat_now();
        self.chat.tick(now);
        // After a burst (a crowd joining, each answered with a long member
        // list) the allocator holds freed pages, and the queue pool the
        // queues of the burst; hand them back now and then.
        if self.now >= self.next_trim {
            self.next_trim = self.now + TRIM_EVERY_MS;
            super::queue::release_spares();
            self.dirty.shrink_to(1024);
            self.flushing.shrink_to(1024);
            deflate::release_pools();
            if let Some(trim) = self.memory_trim {
                trim();
            }
        }
    }

    /// When the loop must wake without events: the next sweep, or the next
    /// watchdog notice if that comes first.
    pub(super) fn next_wake(&self) -> u64 {
        match self.notifier.as_ref().and_then(|n| n.watchdog_every()) {
            Some(_) => self.next_sweep.min(self.next_watchdog),
            None => self.next_sweep,
        }
    }

    /// `WATCHDOG=1` from the loop's timer, every half of systemd's
    /// `WatchdogSec`: a loop that stops turning is restarted by systemd.
    pub(super) fn watchdog(&mut self) {
        let Some(n) = &self.notifier else { return };
        let Some(every) = n.watchdog_every() else {
            return;
        };
        if self.now >= self.next_watchdog {
            n.send("WATCHDOG=1");
            self.next_watchdog = self.now + ms(every).max(1);
        }
    }

    pub(super) fn on_signal(&mut self) {
        let (hup, signals): (Vec<i32>, Vec<i32>) =
            self.signals.pending().partition(|&s| s == SIGHUP);
        if !hup.is_empty() {
            self.reload_config();
            self.reload_tls();
        }
        if signals.is_empty() {
            return;
        }
        if self.shutdown_deadline.is_some() {
            info!("second signal: exiting now");
            std::process::exit(130);
        }
        info!(
            "signal {}: closing connections (up to {:?})",
            signals[0], self.cfg.shutdown_timeout
        );
        if let Some(n) = &self.notifier {
            n.send("STOPPING=1\nSTATUS=closing connections");
        }
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.metrics_listener = None;
        let now = self.chat_now();
        self.chat.shutdown(now);
        if let Some(t) = self.tls.as_mut() {
            t.close_redirect();
        }
        // Everyone is leaving: telling each member about every other one's
        // departure would cost the square of the members for nothing.
        for (_, c) in self.conns.iter_mut() {
            if let Phase::Ws(ws) = &mut c.phase {
                ws.in_chat = false;
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            match self
                .conns
                .get(k)
                .map(|c| matches!(c.phase, Phase::Ws(_) | Phase::Responding(_)))
            {
                Some(true) => self.start_close(k, 1001, "server shutting down"),
                Some(false) => self.drop_conn(k),
                None => {}
            }
        }
        self.shutdown_deadline = Some(self.now + ms(self.cfg.shutdown_timeout));
    }
}
