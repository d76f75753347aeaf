//! `/metrics` on `--metrics-addr`: scraped over a real socket before and
//! after some traffic, the values move; never served on the public port.

mod common;

use common::{Server, client, connect, http_request};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use tungstenite::Message;

/// A loopback port free a moment ago (the server binds it next).
fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// `GET /metrics` on `addr`: the status and the body.
fn get_metrics(addr: SocketAddr) -> (u16, String) {
    let mut s = connect(addr);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).expect("read the answer");
    let (head, body) = all.split_once("\r\n\r\n").expect("a head");
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

/// Scrapes `addr` and returns every sample, by its name with labels.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = get_metrics(addr);
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("NAME VALUE");
            (
                k.to_owned(),
                v.parse().unwrap_or_else(|_| panic!("value of {l:?}")),
            )
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, k: &str) -> f64 {
    *m.get(k).unwrap_or_else(|| panic!("no sample {k}"))
}

#[test]
fn metrics_move_with_traffic() {
    let maddr = free_port();
    let s = Server::start(&["--metrics-addr", &maddr.to_string(), "--rate-burst", "0"]);
    let before = scrape(maddr);

    // /echo: two messages echoed, closed normally by the client.
    let mut echo = client(&s, "/echo");
    for t in ["one", "two"] {
        echo.send(Message::text(t)).unwrap();
        assert_eq!(echo.read().unwrap(), Message::text(t));
    }
    echo.close(None).unwrap();
    while echo.read().is_ok() {}

    // /ws: a join and a message, stored and delivered back to its sender.
    let mut chat = client(&s, "/ws?nick=meter");
    let _welcome = chat.read().unwrap();
    chat.send(Message::text(
        r#"{"type":"join","room":"metrics","ref":"j"}"#,
    ))
    .unwrap();
    let _joined = chat.read().unwrap();
    chat.send(Message::text(
        r#"{"type":"message","room":"metrics","text":"hi","ref":"m"}"#,
    ))
    .unwrap();
    let _message = chat.read().unwrap();

    let after = scrape(maddr);
    let moved = |k: &str, by: f64| {
        let (a, b) = (before.get(k).copied().unwrap_or(0.0), get(&after, k));
        assert!(b - a >= by, "{k}: {a} -> {b}, expected +{by}");
    };
    moved("wschat_handshakes_total{endpoint=\"echo\"}", 1.0);
    moved("wschat_handshakes_total{endpoint=\"chat\"}", 1.0);
    moved("wschat_messages_in_total{endpoint=\"echo\"}", 2.0);
    moved("wschat_messages_out_total{endpoint=\"echo\"}", 2.0);
    moved("wschat_messages_in_total{endpoint=\"chat\"}", 2.0);
    // welcome, joined, the message back (and presence).
    moved("wschat_messages_out_total{endpoint=\"chat\"}", 3.0);
    moved("wschat_received_bytes_total", 100.0);
    moved("wschat_sent_bytes_total", 100.0);
    moved("wschat_connections_accepted_total", 2.0);
    moved("wschat_closes_total{by=\"client\",code=\"1005\"}", 1.0);
    moved("wschat_store_commit_duration_seconds_count", 1.0);
    moved("wschat_event_loop_turn_duration_seconds_count", 1.0);
    assert_eq!(get(&after, "wschat_connections{endpoint=\"chat\"}"), 1.0);
    assert!(get(&after, "wschat_rooms") >= 1.0);
    assert!(get(&after, "wschat_history_messages") >= 1.0);
    assert!(get(&after, "wschat_history_bytes") > 0.0);
    assert!(get(&after, "process_resident_memory_bytes") > 0.0);
    assert!(get(&after, "process_cpu_seconds_total") >= 0.0);
    assert_eq!(
        get(
            &after,
            "wschat_store_commit_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        get(&after, "wschat_store_commit_duration_seconds_count")
    );
}

#[test]
fn metrics_only_on_their_port() {
    let maddr = free_port();
    let s = Server::start(&["--metrics-addr", &maddr.to_string()]);
    let req = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let (status, _) = http_request(s.addr, req);
    assert_eq!(status, 404, "/metrics is not on the public port");
    let (status, _) = http_request(
        maddr,
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 404, "the metrics port serves nothing else");
    let (status, body) = get_metrics(maddr);
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE wschat_connections gauge"), "{body}");
    // Off by default: a server without the flag has no such listener.
    let plain = Server::start(&[]);
    let (status, _) = http_request(plain.addr, req);
    assert_eq!(status, 404);
}

/// A `/metrics` scrape on a kept-alive connection of its own, left open.
fn held_scrape(addr: SocketAddr) -> std::net::TcpStream {
    let mut s = connect(addr);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (status, head) = common::read_http_response(&mut s);
    assert_eq!(status, 200, "{head}");
    s
}

/// Connections to `--metrics-addr` have slots of their own: they do not
/// take the public port's `--max-connections`, and a full public port does
/// not stop a scrape.
#[test]
fn metrics_connections_are_outside_max_connections() {
    let maddr = free_port();
    let s = Server::start(&[
        "--metrics-addr",
        &maddr.to_string(),
        "--max-connections",
        "2",
    ]);
    // Three scrapers hold their connections open (each was answered, so
    // each is admitted before the public clients below come).
    let held: Vec<_> = (0..3).map(|_| held_scrape(maddr)).collect();
    // The public port still has its two connections...
    let mut public: Vec<_> = (0..2).map(|_| client(&s, "/echo")).collect();
    for ws in &mut public {
        ws.send(Message::text("x")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("x"));
    }
    // ... and no third: it is full.
    let (status, head) = http_request(s.addr, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, 503, "{head}");
    // A full public port does not stop a new scrape.
    let m = scrape(maddr);
    assert_eq!(get(&m, "wschat_connections{endpoint=\"echo\"}"), 2.0);
    drop((held, public));
}
