//! The configuration file (`--config`), `WSCHAT_*` variables and their
//! precedence, SIGHUP re-reading the file, and `--log-format json`: each
//! against the real binary.

mod common;

use common::{Server, TempDir, http_request};
use std::sync::mpsc::Receiver;
use std::time::Instant;

/// A GET whose head is about 2 KiB: 431 under `max-head-size = "1KiB"`,
/// 200 under the default 8 KiB.
fn big_head_status(s: &Server) -> u16 {
    let pad = "x".repeat(2000);
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: {pad}\r\nConnection: close\r\n\r\n"
    );
    http_request(s.addr, &req).0
}

fn write(dir: &TempDir, text: &str) -> String {
    let p = dir.path().join("wschat.toml");
    std::fs::write(&p, text).expect("write config");
    p.to_str().expect("UTF-8 path").to_owned()
}

/// Waits for a log line containing `what`; returns it.
fn wait_log(log: &Receiver<String>, what: &str) -> String {
    let end = Instant::now() + common::io_timeout();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match log.recv_timeout(left) {
            Ok(l) if l.contains(what) => return l,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no log line with {what:?}");
}

#[test]
fn file_then_environment_then_flags() {
    let dir = TempDir::new("cfg");
    let path = write(&dir, "# a limit from the file\nmax-head-size = \"1KiB\"\n");
    let s = Server::start(&["--config", &path]);
    assert_eq!(big_head_status(&s), 431, "the file's max-head-size applies");
    drop(s);
    let s = Server::start_env(&["--config", &path], &[("WSCHAT_MAX_HEAD_SIZE", "4KiB")]);
    assert_eq!(
        big_head_status(&s),
        200,
        "the environment wins over the file"
    );
    drop(s);
    let s = Server::start_env(
        &["--config", &path, "--max-head-size", "1KiB"],
        &[("WSCHAT_MAX_HEAD_SIZE", "4KiB")],
    );
    assert_eq!(big_head_status(&s), 431, "a flag wins over the environment");
    drop(s);
    // WSCHAT_CONFIG names the file too.
    let s = Server::start_env(&[], &[("WSCHAT_CONFIG", &path)]);
    assert_eq!(big_head_status(&s), 431);
}

#[test]
fn a_bad_file_stops_the_start_naming_its_line() {
    let dir = TempDir::new("cfg");
    let path = write(&dir, "motd = \"hi\"\n\nmax-head-size = \"lots\"\n");
    let (st, err) = Server::refuse(&["--config", &path, "--no-persist"]);
    assert!(!st.success());
    assert!(
        err.contains(&format!("{path}:3: max-head-size: invalid value 'lots'")),
        "{err}"
    );
    let path = write(&dir, "motd = \"hi\"\nmax-head-sise = 100\n");
    let (st, err) = Server::refuse(&["--config", &path, "--no-persist"]);
    assert!(!st.success());
    assert!(
        err.contains(&format!("{path}:2: unknown key \"max-head-sise\"")),
        "{err}"
    );
    // A pair half given: the file's fault when the file gave the half,
    // the command line's when it did (the file then is not named).
    let path = write(&dir, "tls-cert = \"/etc/wschat/cert.pem\"\n");
    let (st, err) = Server::refuse(&["--config", &path, "--no-persist"]);
    assert!(!st.success());
    let want = "the following required arguments were not provided: --tls-key (with --tls-cert)";
    assert!(err.contains(&format!("{path}: {want}")), "{err}");
    let path = write(&dir, "motd = \"hi\"\n");
    let (st, err) = Server::refuse(&["--config", &path, "--tls-cert", "c.pem", "--no-persist"]);
    assert!(!st.success());
    assert!(err.contains(want) && !err.contains(&path), "{err}");
    let (st, err) = Server::refuse(&["--config", "/nonexistent/wschat.toml", "--no-persist"]);
    assert!(!st.success());
    assert!(
        err.contains("/nonexistent/wschat.toml: cannot read"),
        "{err}"
    );
}

#[test]
fn sighup_applies_the_file_or_keeps_the_running_one() {
    let dir = TempDir::new("cfg");
    let path = write(&dir, "max-head-size = \"8KiB\"\nbacklog = 100\n");
    let (s, log) = Server::start_logged(&["--config", &path], &[("RUST_LOG", "info")]);
    assert_eq!(big_head_status(&s), 200);

    write(&dir, "max-head-size = \"1KiB\"\nbacklog = 200\n");
    s.signal("HUP");
    let applied = wait_log(&log, "applied");
    assert!(applied.contains("max-head-size"), "{applied}");
    let restart = wait_log(&log, "only at a restart");
    assert!(restart.contains("backlog"), "{restart}");
    assert_eq!(big_head_status(&s), 431, "the new limit is in force");

    // A fault: logged with its line, the running configuration stays.
    write(&dir, "max-head-size = \"8KiB\"\nno-deflate = 1\n");
    s.signal("HUP");
    let refused = wait_log(&log, "not reloaded");
    assert!(
        refused.contains(&format!("{path}:2: no-deflate: expects true or false")),
        "{refused}"
    );
    assert_eq!(big_head_status(&s), 431, "still the last good file's limit");
}

#[test]
fn the_packaged_config_file_starts_the_server() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/wschat.toml");
    // Its data-dir (/var/lib/wschat) is overridden by the harness's flag.
    let s = Server::start(&["--config", path]);
    let (status, _) = http_request(
        s.addr,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (s, log) = Server::start_logged(&["--log-format", "json"], &[("RUST_LOG", "info")]);
    let line = wait_log(&log, "max connections");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON object");
    assert_eq!(v["level"], "INFO");
    assert!(
        v["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("wschat")),
        "{line}"
    );
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("max connections")),
        "{line}"
    );
    assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
    drop(s);
}

#[test]
fn text_logs_have_a_timestamp_level_and_target() {
    // env_logger's own timestamps are off (its `humantime` feature is left
    // out for size); src/main.rs writes them.
    let (s, log) = Server::start_logged(&[], &[("RUST_LOG", "info")]);
    let line = wait_log(&log, "max connections");
    let (head, msg) = line.split_once("] ").expect("[ts LEVEL target] message");
    let mut parts = head.trim_start_matches('[').split_whitespace();
    let ts = parts.next().unwrap_or_default();
    assert!(
        ts.len() == 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "no RFC 3339 timestamp: {line}"
    );
    assert_eq!(parts.next(), Some("INFO"), "{line}");
    assert!(
        parts.next().is_some_and(|t| t.starts_with("wschat")),
        "{line}"
    );
    assert!(msg.starts_with("max connections"), "{line}");
    drop(s);
}

#[test]
fn help_names_every_variable() {
    let out = common::server_command()
        .arg("--help")
        .output()
        .expect("run wschat --help");
    let help = String::from_utf8_lossy(&out.stdout);
    for v in [
        "WSCHAT_CONFIG",
        "WSCHAT_ADDR",
        "WSCHAT_MAX_MESSAGE_SIZE",
        "WSCHAT_LOG_FORMAT",
    ] {
        assert!(help.contains(&format!("[env: {v}")), "{v} not in --help");
    }
}

/// packaging/wschat.toml (the .deb's /etc/wschat/wschat.toml) shows every
/// flag of `wschat --help` as a key, and each commented one with the
/// default `--help` gives: a flag added without its line fails here.
#[test]
fn the_packaged_config_file_shows_every_flag_with_its_default() {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/wschat.toml"
    ))
    .expect("read packaging/wschat.toml");
    let out = common::server_command()
        .arg("--help")
        .output()
        .expect("run wschat --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut flags = 0;
    for line in help.lines() {
        let t = line.trim_start();
        // `-h, --help`: the long name after the short one.
        let t = match t.get(2..4) {
            Some(", ") if !t.starts_with("--") => &t[4..],
            _ => t,
        };
        let Some(flag) = t.strip_prefix("--") else {
            continue;
        };
        let key: String = flag
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if ["config", "help", "version"].contains(&key.as_str()) {
            continue;
        }
        flags += 1;
        let set = format!("{key} = ");
        let shown = shipped.lines().find_map(|l| {
            let (commented, l) = match l.strip_prefix("# ") {
                Some(r) => (true, r),
                None => (false, l),
            };
            let v = l.strip_prefix(&set)?;
            // The value, before any trailing comment.
            let v = match v.strip_prefix('"') {
                Some(q) => q.split('"').next().unwrap_or_default(),
                None => v.split_whitespace().next().unwrap_or_default(),
            };
            Some((commented, v.to_string()))
        });
        let default = line
            .split("[default: ")
            .nth(1)
            .and_then(|d| d.split(']').next());
        match (shown, default) {
            (None, _) => missing.push(key),
            (Some((true, v)), Some(d)) if v != d.trim_matches('"') => {
                wrong.push(format!("{key}: file {v:?}, default {d:?}"))
            }
            _ => {}
        }
    }
    assert!(flags > 50, "{flags} flags read from --help:\n{help}");
    assert!(
        missing.is_empty(),
        "flags not in the packaged file: {missing:?}"
    );
    assert!(wrong.is_empty(), "defaults shown wrongly: {wrong:?}");
}

/// The README's list of what SIGHUP applies is the server's (`Flag::live` in `FLAGS`): a
/// setting made live, or no longer, without the README fails here.
#[test]
fn the_readme_names_exactly_the_settings_sighup_applies() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let list = readme
        .split("<!-- sighup-live -->")
        .nth(1)
        .and_then(|r| r.split("<!-- /sighup-live -->").next())
        .expect("README.md marks the SIGHUP list");
    let mut shown: Vec<String> = list
        .split(',')
        .map(|k| k.trim().trim_matches('`').to_string())
        .collect();
    let mut live: Vec<String> = wschat::server::config::FLAGS
        .iter()
        .filter(|f| f.live)
        .map(|f| f.long.to_string())
        .collect();
    shown.sort();
    live.sort();
    assert_eq!(shown, live);
}

/// SIGHUP applies a new motd (to the next welcome), the chat rate
/// limit (to every connection, the open ones included) and the largest
/// chat message (enforced, and advertised by the next welcome).
#[test]
fn sighup_applies_the_motd_and_the_chat_rate_limit() {
    use tungstenite::Message;
    let dir = TempDir::new("cfg");
    let path = write(&dir, "motd = \"Before.\"\nrate-burst = 0\n");
    let (s, log) = Server::start_logged(
        &["--config", &path, "--no-persist"],
        &[("RUST_LOG", "info")],
    );
    let welcome = |ws: &mut tungstenite::WebSocket<std::net::TcpStream>| -> serde_json::Value {
        let m = ws.read().expect("welcome");
        serde_json::from_str(m.to_text().expect("text")).expect("JSON")
    };
    let mut old = common::client(&s, "/ws?nick=old");
    assert_eq!(welcome(&mut old)["motd"], "Before.");

    write(
        &dir,
        "motd = \"After.\"\nrate-burst = 2\nrate-per-sec = 1\nmax-ws-message-size = \"32KiB\"\n",
    );
    s.signal("HUP");
    let applied = wait_log(&log, "applied");
    for k in ["motd", "rate-burst", "rate-per-sec", "max-ws-message-size"] {
        assert!(applied.contains(k), "{applied}");
    }
    let mut new = common::client(&s, "/ws?nick=new");
    let w = welcome(&mut new);
    assert_eq!(w["motd"], "After.");
    assert_eq!(w["limits"]["rate_burst"], 2, "{w}");
    // The limit a welcome advertises is the one the receiver now enforces.
    assert_eq!(w["limits"]["message_bytes"], 32 << 10, "{w}");
    // The connection opened before the reload (with the limit off) is held
    // to the new limit, from a full bucket: of five requests at once, the
    // burst's two are answered and the next three refused.
    for i in 0..5 {
        let req = format!(r#"{{"type":"rooms","ref":"r{i}"}}"#);
        old.send(Message::text(req)).unwrap();
    }
    let mut answers = Vec::new();
    for _ in 0..5 {
        let m = old.read().expect("an answer");
        let v: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        answers.push(
            v["code"]
                .as_str()
                .unwrap_or(v["type"].as_str().unwrap())
                .to_string(),
        );
    }
    let want = [
        "rooms",
        "rooms",
        "rate_limited",
        "rate_limited",
        "rate_limited",
    ];
    assert_eq!(answers, want);
}
