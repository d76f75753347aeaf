//! `idle`: open many connections (optionally joining a room), hold them,
//! report the handshake rate and the server's memory per connection.

use std::time::{Duration, Instant};

use wschat::ws::frame::OpCode;

use crate::conn::{Conn, Event, Handler};
use crate::report::{ErrorDetail, Latency, Report, ServerUse, Stats};
use crate::wire::{self, Target};
use crate::{Common, Mode, Shared};

struct Idle {
    stats: Stats,
    settled: usize,
    join: Option<Vec<u8>>,
    /// Each connection joins a room of its own: the room's name plus `-ID`.
    room_each: bool,
}

impl Idle {
    fn ready(&mut self, c: &mut Conn, now: u64) {
        c.ready = true;
        self.settled += 1;
        self.stats.opened += 1;
        self.stats.hs.saturating_record(now - c.started_ns);
    }
}

impl Handler for Idle {
    fn event(&mut self, c: &mut Conn, ev: Event<'_>, now: u64) {
        match ev {
            Event::Open => match &self.join {
                Some(j) if self.room_each => {
                    // `{"type":"join","room":"R` + `-ID"}`
                    let mut own = j[..j.len() - 2].to_vec();
                    own.extend_from_slice(format!("-{}\"}}", c.id).as_bytes());
                    c.send(OpCode::Text, &own);
                }
                Some(j) => c.send(OpCode::Text, j),
                None => self.ready(c, now),
            },
            Event::Message { payload, .. } => {
                if self.join.is_none() || c.ready {
                    return;
                }
                // Skip `welcome` and `presence`; wait for our `joined`.
                if wire::find(payload, br#""type":"joined""#).is_some() {
                    self.ready(c, now);
                } else if wire::find(payload, br#""type":"error""#).is_some() {
                    self.stats.chat_errors += 1;
                    if wire::find(payload, b"rate_limited").is_some() {
                        self.stats.rate_limited += 1;
                    }
                    c.ready = true;
                    self.settled += 1;
                }
            }
            // Only echo sets `raw`.
            Event::Raw { .. } => {}
            Event::Closed(why) => {
                if !c.ready {
                    self.settled += 1;
                }
                self.stats.count_close(why);
            }
        }
    }
}

impl Mode for Idle {
    fn progress(&self) -> (usize, &Stats) {
        (self.settled, &self.stats)
    }
    fn progress_mut(&mut self) -> (&mut usize, &mut Stats) {
        (&mut self.settled, &mut self.stats)
    }
}

fn worker(
    t: &Target,
    spread: bool,
    paths: &[(usize, String)],
    // The room to join, and whether each connection gets one of its own.
    join: Option<(&str, bool)>,
    hold: Duration,
    common: &Common,
    shared: &Shared,
) -> Stats {
    let Some(mut net) = crate::open_net(t, shared, spread) else {
        return Stats::default();
    };
    let mut m = Idle {
        stats: Stats::default(),
        settled: 0,
        join: join.map(|(r, _)| format!(r#"{{"type":"join","room":"{r}"}}"#).into_bytes()),
        room_each: join.is_some_and(|(_, each)| each),
    };
    if let Some(start) = crate::setup(&mut net, &mut m, paths, common, shared) {
        let end = start + hold.as_nanos() as u64;
        // Hold: keep answering pings and absorbing presence traffic.
        loop {
            let now = net.now_ns();
            if now >= end {
                break;
            }
            net.turn(
                Duration::from_nanos(end - now).min(Duration::from_millis(100)),
                &mut m,
            );
            net.flush(&mut m);
        }
    }
    net.close_all();
    m.stats
}

pub fn run(
    t: &Target,
    n: usize,
    hold: Duration,
    join: Option<&str>,
    room_each: bool,
    spread: bool,
    common: &Common,
) -> Report {
    let threads = common.threads as usize;
    let before = common.server_pid.and_then(crate::sys::sample_proc);
    let cpu0 = crate::sys::self_cpu_s();
    let shared = Shared::new(threads);
    let mut total = Stats::default();
    let mut open_s = f64::NAN;
    let mut after_open = None;
    let mut end = None;
    let mut wall = 0.0;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|th| {
                let shared = &shared;
                s.spawn(move || {
                    let base = match join {
                        Some(_) => None,
                        None => Some(t.path.clone()),
                    };
                    let paths: Vec<(usize, String)> = crate::ids_for(th, threads, n)
                        .map(|id| {
                            let p = match &base {
                                Some(p) => p.clone(),
                                None => t.path_with_query(&format!("nick=i-{id}")),
                            };
                            (id, p)
                        })
                        .collect();
                    worker(
                        t,
                        spread,
                        &paths,
                        join.map(|r| (r, room_each)),
                        hold,
                        common,
                        shared,
                    )
                })
            })
            .collect();
        let t0 = Instant::now();
        if let Some(start) =
            crate::wait_start(&shared, common.setup_timeout + Duration::from_secs(10))
        {
            open_s = start as f64 / 1e9;
            // Let the server settle its per-connection allocations.
            std::thread::sleep(Duration::from_millis(200).min(hold));
            after_open = common.server_pid.and_then(crate::sys::sample_proc);
            crate::sleep_until(&shared, start + hold.as_nanos() as u64);
            end = common.server_pid.and_then(crate::sys::sample_proc);
        }
        wall = t0.elapsed().as_secs_f64();
        for h in handles {
            match h.join() {
                Ok(st) => total.merge(&st),
                Err(_) => eprintln!("a worker thread panicked"),
            }
        }
    });
    let cpu1 = crate::sys::self_cpu_s();
    let server = match (before, after_open, end) {
        (Some(b), Some(a), Some(e)) => {
            let cpu = e.cpu_s - b.cpu_s;
            Some(ServerUse {
                cpu_s: cpu,
                cpu_util: if wall > 0.0 { cpu / wall } else { 0.0 },
                msgs_per_cpu_s: None,
                bytes_per_cpu_s: None,
                rss_start_kb: b.rss_kb,
                rss_end_kb: e.rss_kb,
                rss_after_open_kb: Some(a.rss_kb),
                // The steady cost of an idle connection: measured at the end
                // of the hold, once the burst of opening them has settled.
                rss_per_conn_bytes: (total.opened > 0)
                    .then(|| (e.rss_kb as f64 - b.rss_kb as f64) * 1024.0 / total.opened as f64),
            })
        }
        _ => None,
    };
    let what = match join {
        Some(r) if room_each => format!(", each joined to a room of its own ({r}-N)"),
        Some(r) => format!(", joined to {r}"),
        None => String::new(),
    };
    Report {
        scenario: format!("idle {n} conns{what}, hold {:.1}s", hold.as_secs_f64()),
        connections: n as u64,
        threads,
        duration_s: hold.as_secs_f64(),
        opened: total.opened,
        handshake_us: Latency::of(&total.hs),
        setup_s: Some(open_s),
        handshakes_per_s: Some(total.opened as f64 / open_s),
        client_cpu_s: cpu1 - cpu0,
        server,
        errors: total.errors(),
        error_detail: ErrorDetail::of(&total),
        ..Report::default()
    }
}
