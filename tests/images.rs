//! End-to-end tests of images (docs/protocol.md, "Images"): uploads over
//! real HTTP, served back with their headers, shown by messages, deleted
//! with them, kept across a restart and a SIGKILL.
mod common;
use common::*;

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// A tiny valid PNG (1×1, red), and some bytes behind it to vary it.
fn png(tag: u8) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0\x90wS\xde\0\0\0\x0cIDATx\x9cc\xf8\xcf\xc0\0\0\x03\x01\x01\0\xc9\xfe\x92\xef\0\0\0\0IEND\xaeB`\x82".to_vec();
    v.push(tag);
    v
}

/// A whole HTTP response: status, head, body (by Content-Length).
fn response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let (status, head) = read_http_response(s);
    let len = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0; len];
    s.read_exact(&mut body).expect("body");
    (status, head, body)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `POST /upload` with `extra` header lines; the body as given.
fn post(addr: SocketAddr, token: Option<&str>, extra: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = connect(addr);
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: {addr}\r\n{auth}{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let _ = s.write_all(body);
    response(&mut s)
}

/// Uploads `body`: the id answered 201.
fn upload(addr: SocketAddr, token: &str, body: &[u8]) -> String {
    let (status, head, b) = post(addr, Some(token), "", body);
    assert_eq!(status, 201, "{head}{}", String::from_utf8_lossy(&b));
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["url"], format!("/uploads/{}", v["id"].as_str().unwrap()));
    v["id"].as_str().unwrap().to_string()
}

fn get(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let mut s = connect(addr);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).unwrap();
    response(&mut s)
}

#[test]
fn an_upload_is_stored_and_served_back_with_safe_headers() {
    let dir = TempDir::new("img-serve");
    let s = start(dir.path(), &[]);
    let (_ws, token) = registered(&s, "alice");
    let img = png(1);
    let id = upload(s.addr, &token, &img);
    assert_eq!(id.len(), 16);
    let (status, head, body) = get(s.addr, &format!("/uploads/{id}"), "");
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, img);
    assert_eq!(header(&head, "content-type"), Some("image/png"));
    assert_eq!(
        header(&head, "content-disposition"),
        Some(format!("inline; filename=\"image-{id}.png\"").as_str())
    );
    assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
    assert_eq!(
        header(&head, "content-security-policy"),
        Some("default-src 'none'; sandbox")
    );
    assert_eq!(
        header(&head, "cache-control"),
        Some("private, max-age=31536000, immutable")
    );
    let etag = header(&head, "etag").unwrap().to_string();
    assert_eq!(etag, format!("\"{id}\""));
    let (status, _, body) = get(
        s.addr,
        &format!("/uploads/{id}"),
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!((status, body.len()), (304, 0));
    // Unknown and malformed ids.
    assert_eq!(get(s.addr, "/uploads/0123456789abcdef", "").0, 404);
    assert_eq!(get(s.addr, "/uploads/../wschat.db", "").0, 404);
    // Another type, sniffed, not taken from the request.
    let gif = b"GIF89a\x01\0\x01\0\0\0\0;".to_vec();
    let (status, _, b) = post(s.addr, Some(&token), "Content-Type: image/png\r\n", &gif);
    assert_eq!(status, 201);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["type"], "image/gif");
}

#[test]
fn uploads_that_are_not_images_too_big_or_unauthenticated_are_refused() {
    let dir = TempDir::new("img-refuse");
    let s = start(dir.path(), &["--max-upload-size", "1KiB"]);
    let (_ws, token) = registered(&s, "alice");
    let t = Some(token.as_str());
    let html = b"<html><script>alert(1)</script></html>";
    assert_eq!(post(s.addr, t, "", html).0, 415);
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script/></svg>";
    assert_eq!(post(s.addr, t, "", svg).0, 415);
    let mut big = png(0);
    big.resize(2048, 0);
    let (status, _, _) = post(s.addr, t, "", &big);
    assert_eq!(status, 413);
    let (status, head, _) = post(s.addr, None, "", &png(0));
    assert_eq!(status, 401);
    assert_eq!(header(&head, "www-authenticate"), Some("Bearer"));
    let wrong = "00".repeat(32);
    assert_eq!(post(s.addr, Some(&wrong), "", &png(0)).0, 401);
    // No length, chunked, a bad length, an empty body.
    let raw = |req: String| {
        let mut c = connect(s.addr);
        c.write_all(req.as_bytes()).unwrap();
        response(&mut c).0
    };
    let a = format!("Host: {}\r\nAuthorization: Bearer {token}\r\n", s.addr);
    assert_eq!(raw(format!("POST /upload HTTP/1.1\r\n{a}\r\n")), 411);
    assert_eq!(
        raw(format!(
            "POST /upload HTTP/1.1\r\n{a}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )),
        411
    );
    assert_eq!(
        raw(format!(
            "POST /upload HTTP/1.1\r\n{a}Content-Length: 1x\r\n\r\n"
        )),
        400
    );
    assert_eq!(
        raw(format!(
            "POST /upload HTTP/1.1\r\n{a}Content-Length: 0\r\n\r\n"
        )),
        400
    );
    assert_eq!(raw(format!("GET /upload HTTP/1.1\r\n{a}\r\n")), 405);
    // Another site's page may not upload with the user's token.
    let (status, _, _) = post(s.addr, t, "Origin: http://evil.example\r\n", &png(0));
    assert_eq!(status, 403);
    // Still fine after all that.
    upload(s.addr, &token, &png(2));
}

#[test]
fn uploads_can_be_turned_off() {
    let dir = TempDir::new("img-off");
    let s = start(dir.path(), &["--no-uploads"]);
    let (_ws, token) = registered(&s, "alice");
    assert_eq!(post(s.addr, Some(&token), "", &png(0)).0, 404);
}

#[test]
fn the_rate_and_the_quota_answer_429() {
    let dir = TempDir::new("img-rate");
    let s = start(dir.path(), &["--upload-rate", "2"]);
    let (_ws, token) = registered(&s, "alice");
    upload(s.addr, &token, &png(1));
    upload(s.addr, &token, &png(2));
    let (status, head, _) = post(s.addr, Some(&token), "", &png(3));
    assert_eq!(status, 429, "{head}");
    let wait: u64 = header(&head, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{head}");
    // Another account has its own rate.
    let (_ws2, token2) = registered(&s, "bob");
    upload(s.addr, &token2, &png(4));
    drop(s);

    let dir = TempDir::new("img-quota");
    let len = png(0).len();
    let quota = format!("{}", len * 2 + len / 2);
    let s = start(dir.path(), &["--upload-quota", &quota]);
    let (_ws, token) = registered(&s, "alice");
    upload(s.addr, &token, &png(1));
    upload(s.addr, &token, &png(2));
    let (status, head, _) = post(s.addr, Some(&token), "", &png(3));
    assert_eq!(status, 429, "{head}");
    assert!(header(&head, "retry-after").is_none());

    let dir = TempDir::new("img-budget");
    let budget = format!("{}", len + len / 2);
    let s = start(dir.path(), &["--max-upload-disk", &budget]);
    let (_ws, token) = registered(&s, "alice");
    upload(s.addr, &token, &png(1));
    assert_eq!(post(s.addr, Some(&token), "", &png(2)).0, 507);
}

/// The next `message` event (skipping presence and the like).
fn next_message(ws: &mut Ws) -> Value {
    loop {
        let v = recv(ws);
        if v["type"] == "message" {
            return v;
        }
    }
}

#[test]
fn a_message_shows_only_its_senders_unused_upload() {
    let dir = TempDir::new("img-msg");
    let s = start(dir.path(), &[]);
    let (mut alice, ta) = registered(&s, "alice");
    let (mut bob, tb) = registered(&s, "bob");
    let mut guest = client(&s, "/ws?nick=guest");
    assert_eq!(recv(&mut guest)["type"], "welcome");
    joined(&mut alice, "r");
    joined(&mut bob, "r");
    joined(&mut guest, "r");
    let mine = upload(s.addr, &ta, &png(1));
    let bobs = upload(s.addr, &tb, &png(2));
    let send = |ws: &mut Ws, image: &str| {
        ask(
            ws,
            json!({"type":"message","room":"r","text":"look","image":image}),
            "m",
        )
    };
    let v = send(&mut alice, &bobs);
    assert_eq!(v["code"], "no_such_upload", "{v}");
    let v = send(&mut alice, "0123456789abcdef");
    assert_eq!(v["code"], "no_such_upload", "{v}");
    let v = send(&mut alice, "not-an-id");
    assert_eq!(v["code"], "invalid", "{v}");
    assert!(v["message"].as_str().unwrap().contains("\"image\""), "{v}");
    let v = send(&mut guest, &mine);
    assert_eq!(v["code"], "no_such_upload", "a guest has no uploads: {v}");
    let v = send(&mut alice, &mine);
    assert_eq!(
        (v["type"].as_str(), v["image"].as_str()),
        (Some("message"), Some(mine.as_str())),
        "{v}"
    );
    let id = v["id"].as_u64().unwrap();
    let b = next_message(&mut bob);
    assert_eq!(
        (b["id"].as_u64(), b["image"].as_str()),
        (Some(id), Some(mine.as_str()))
    );
    // One message per upload.
    let v = send(&mut alice, &mine);
    assert_eq!(v["code"], "no_such_upload", "{v}");
    // History carries it.
    let h = ask(
        &mut bob,
        json!({"type":"history","room":"r","before":id + 1,"limit":5}),
        "h",
    );
    let found = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["image"] == mine.as_str());
    assert!(found, "{h}");
}

#[test]
fn a_deleted_message_takes_its_image_and_restarts_keep_the_rest() {
    let dir = TempDir::new("img-delete");
    assert!(account_cmd(dir.path(), &["account", "add", "boss", "--op"], PW).0);
    let mut s = start(dir.path(), &[]);
    let mut op = client(&s, "/ws?nick=x");
    assert_eq!(recv(&mut op)["type"], "welcome");
    let v = ask(
        &mut op,
        json!({"type":"login","account":"boss","password":PW}),
        "l",
    );
    assert_eq!(v["type"], "session");
    let (mut alice, token) = registered(&s, "alice");
    joined(&mut alice, "r");
    joined(&mut op, "r");
    let gone = upload(s.addr, &token, &png(1));
    let kept = upload(s.addr, &token, &png(2));
    let mut ids = Vec::new();
    for img in [&gone, &kept] {
        let v = ask(
            &mut alice,
            json!({"type":"message","room":"r","text":"pic","image":img}),
            "m",
        );
        assert_eq!(v["type"], "message", "{v}");
        ids.push(v["id"].as_u64().unwrap());
    }
    assert_eq!(get(s.addr, &format!("/uploads/{gone}"), "").0, 200);
    let v = ask(
        &mut op,
        json!({"type":"delete","room":"r","id":ids[0]}),
        "d",
    );
    assert_eq!(v["action"], "delete", "{v}");
    assert_eq!(get(s.addr, &format!("/uploads/{gone}"), "").0, 404);
    assert_eq!(get(s.addr, &format!("/uploads/{kept}"), "").0, 200);
    // Banned from the server, the account uploads no more.
    let v = ask(&mut op, json!({"type":"ban","nick":"alice"}), "b");
    assert_eq!(v["action"], "ban", "{v}");
    let (status, _, body) = post(s.addr, Some(&token), "", &png(3));
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    drop((op, alice));
    s.signal("TERM");
    s.wait_exit(io_timeout());
    let s = start(dir.path(), &[]);
    assert_eq!(get(s.addr, &format!("/uploads/{gone}"), "").0, 404);
    let (status, _, body) = get(s.addr, &format!("/uploads/{kept}"), "");
    assert_eq!((status, body), (200, png(2)));
    let mut c = client(&s, "/ws?nick=carol");
    assert_eq!(recv(&mut c)["type"], "welcome");
    let v = ask(&mut c, json!({"type":"join","room":"r"}), "j");
    let h = v["history"].as_array().unwrap();
    let tomb = h.iter().find(|m| m["id"] == ids[0]).unwrap();
    assert!(tomb.get("image").is_none(), "{tomb}");
    let shown = h.iter().find(|m| m["id"] == ids[1]).unwrap();
    assert_eq!(shown["image"], kept.as_str(), "{shown}");
}

#[test]
fn uploads_acknowledged_before_a_sigkill_survive_it() {
    let dir = TempDir::new("img-kill");
    let s = start(dir.path(), &["--upload-rate", "0"]);
    let (_ws, token) = registered(&s, "alice");
    let addr = s.addr;
    // Uploads back to back from a thread; the kill lands among them.
    let worker = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0..10_000u32 {
            let mut body = png(0);
            body.extend_from_slice(&i.to_le_bytes());
            let mut c = match TcpStream::connect(addr) {
                Ok(c) => c,
                Err(_) => break,
            };
            c.set_read_timeout(Some(io_timeout())).unwrap();
            let req = format!(
                "POST /upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            if c.write_all(req.as_bytes())
                .and_then(|()| c.write_all(&body))
                .is_err()
            {
                break;
            }
            let (status, head) = read_http_response(&mut c);
            if status != 201 {
                break;
            }
            let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
            let mut b = vec![0; len];
            if c.read_exact(&mut b).is_err() {
                break;
            }
            let v: Value = serde_json::from_slice(&b).unwrap();
            acked.push((v["id"].as_str().unwrap().to_string(), body));
        }
        acked
    });
    std::thread::sleep(std::time::Duration::from_millis(700));
    s.signal("KILL");
    let acked = worker.join().unwrap();
    assert!(
        acked.len() > 3,
        "only {} uploads before the kill",
        acked.len()
    );
    eprintln!("{} uploads acknowledged before the kill", acked.len());
    drop(s);
    let s = start(dir.path(), &[]);
    for (id, body) in &acked {
        let (status, _, got) = get(s.addr, &format!("/uploads/{id}"), "");
        assert_eq!(status, 200, "upload {id} acknowledged, then lost");
        assert_eq!(&got, body);
    }
}
