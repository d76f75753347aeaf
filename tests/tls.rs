//! TLS on the port (`--tls-cert`, `--tls-key`): https, wss, the redirect,
//! SIGHUP reload, and bad input on the TLS port, each with a real TLS client
//! (rustls) against a real server process. Test certificates: tests/tls/
//! (self-signed P-256, localhost and 127.0.0.1, valid for a century).

mod common;
use common::*;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring as provider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tungstenite::Message;

type Tls = StreamOwned<ClientConnection, TcpStream>;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls");

fn cert_path(which: &str) -> String {
    format!("{DIR}/cert-{which}.pem")
}

fn key_path(which: &str) -> String {
    format!("{DIR}/key-{which}.pem")
}

/// The DER of the first certificate in a test PEM file.
fn cert_der(which: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(cert_path(which))
        .expect("test certificate")
        .to_vec()
}

/// A server speaking TLS with test certificate `which`, plus `extra` flags.
fn tls_server(which: &str, extra: &[&str]) -> Server {
    let (cert, key) = (cert_path(which), key_path(which));
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Accepts any certificate: the tests compare the one served with the files.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(provider: CryptoProvider, tls12_only: bool) -> ClientConfig {
    let provider = Arc::new(provider);
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn client_conn(config: ClientConfig) -> ClientConnection {
    ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("client connection")
}

/// A TLS connection with the handshake done.
fn tls_connect(addr: SocketAddr) -> Tls {
    let config = client_config(provider::default_provider(), false);
    let mut s = StreamOwned::new(client_conn(config), connect(addr));
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("TLS handshake");
    }
    s
}

/// The certificate the server presented.
fn served_cert(s: &Tls) -> Vec<u8> {
    s.conn.peer_certificates().expect("a certificate")[0].to_vec()
}

/// An HTTP request over TLS; returns the whole answer (up to close_notify).
fn https_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tls_connect(addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = Vec::new();
    // The server ends with close_notify: a truncation would be an error here.
    s.read_to_end(&mut body)
        .expect("answer ended by close_notify");
    String::from_utf8(body).expect("UTF-8 answer")
}

/// A WebSocket over TLS (tungstenite on a rustls stream).
fn wss(addr: SocketAddr, path: &str) -> tungstenite::WebSocket<Tls> {
    let (ws, _) = tungstenite::client(format!("wss://localhost{path}"), tls_connect(addr))
        .expect("wss handshake");
    ws
}

fn echo_round_trip(ws: &mut tungstenite::WebSocket<Tls>, text: &str) {
    ws.send(Message::text(text)).expect("send");
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => {
                assert_eq!(t.as_str(), text);
                return;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected the echo, got {other:?}"),
        }
    }
}

/// Reads raw bytes until the server closes; returns them (a reset counts as closed).
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

/// The bytes of a real ClientHello record.
fn client_hello() -> Vec<u8> {
    let mut c = client_conn(client_config(provider::default_provider(), false));
    let mut out = Vec::new();
    c.write_tls(&mut out).expect("ClientHello");
    out
}

/// Nothing else was affected: a fresh client is served.
fn others_are_served(addr: SocketAddr) {
    assert!(https_get(addr, "/healthz").ends_with("\r\n\r\nok\n"));
}

// ---- what TLS serves ------------------------------------------------------

#[test]
fn https_serves_the_page_and_healthz_with_hsts_and_alpn() {
    let server = tls_server("a", &[]);
    let page = https_get(server.addr, "/");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("<title>"), "{page}");
    assert!(
        page.contains("\r\nStrict-Transport-Security: max-age=31536000\r\n"),
        "{page}"
    );
    let health = https_get(server.addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
    let s = tls_connect(server.addr);
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(served_cert(&s), cert_der("a"));
}

#[test]
fn no_hsts_leaves_the_header_out() {
    let server = tls_server("a", &["--no-hsts"]);
    let page = https_get(server.addr, "/healthz");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(!page.contains("Strict-Transport-Security"), "{page}");
}

#[test]
fn wss_echo_round_trip() {
    let server = tls_server("a", &[]);
    let mut ws = wss(server.addr, "/echo");
    echo_round_trip(&mut ws, "hello over TLS");
    // Larger than one TLS record (16 KiB) both ways.
    let big = "x".repeat(200_000);
    echo_round_trip(&mut ws, &big);
    ws.close(None).expect("close");
}

#[test]
fn wss_chat_round_trip() {
    let server = tls_server("a", &[]);
    let recv = |ws: &mut tungstenite::WebSocket<Tls>| -> serde_json::Value {
        loop {
            if let Message::Text(t) = ws.read().expect("read") {
                return serde_json::from_str(t.as_str()).expect("JSON");
            }
        }
    };
    let mut alice = wss(server.addr, "/ws?nick=alice");
    let mut bob = wss(server.addr, "/ws?nick=bob");
    assert_eq!(recv(&mut alice)["type"], "welcome");
    assert_eq!(recv(&mut bob)["type"], "welcome");
    for ws in [&mut alice, &mut bob] {
        ws.send(Message::text(r#"{"type":"join","room":"tls","ref":"j"}"#))
            .unwrap();
        assert_eq!(recv(ws)["type"], "joined");
    }
    // Alice learns that bob joined.
    assert_eq!(recv(&mut alice)["type"], "presence");
    alice
        .send(Message::text(
            r#"{"type":"message","room":"tls","text":"secret","ref":"m"}"#,
        ))
        .unwrap();
    let got = recv(&mut bob);
    assert_eq!(
        (got["type"].as_str(), got["text"].as_str()),
        (Some("message"), Some("secret"))
    );
    assert_eq!(recv(&mut alice)["text"], "secret");
}

#[test]
fn redirect_http_answers_308_to_https() {
    // A free port for the plain listener (the server names only its TLS one).
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_addr = plain.local_addr().unwrap();
    drop(plain);
    let server = tls_server("a", &["--redirect-http", &plain_addr.to_string()]);
    let port = server.addr.port();
    let (status, head) = http_request(
        plain_addr,
        "GET /room?x=1 HTTP/1.1\r\nHost: chat.example.org:80\r\n\r\n",
    );
    assert_eq!(status, 308, "{head}");
    assert!(
        head.contains(&format!(
            "\r\nLocation: https://chat.example.org:{port}/room?x=1\r\n"
        )),
        "{head}"
    );
    assert!(!head.contains("Strict-Transport-Security"), "{head}");
    let (status, _) = http_request(plain_addr, "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status, 400, "no Host, no redirect");
    others_are_served(server.addr);
}

/// A directory of its own for a test's certificate files.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wschat-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn install(dir: &Path, which: &str) {
    std::fs::copy(cert_path(which), dir.join("cert.pem")).unwrap();
    std::fs::copy(key_path(which), dir.join("key.pem")).unwrap();
}

#[test]
fn sighup_reloads_the_certificate_and_open_connections_keep_working() {
    let dir = temp_dir("reload");
    install(&dir, "a");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let mut open = wss(server.addr, "/echo");
    echo_round_trip(&mut open, "before");
    assert_eq!(served_cert(open.get_ref()), cert_der("a"));

    install(&dir, "b");
    server.signal("HUP");
    // The signal is handled on the loop's next turn: wait for it.
    let mut served = Vec::new();
    for _ in 0..100 {
        served = served_cert(&tls_connect(server.addr));
        if served == cert_der("b") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(served, cert_der("b"), "the new certificate is served");
    echo_round_trip(&mut open, "after the reload");

    // A broken file: logged, and the certificate in use stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    server.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(served_cert(&tls_connect(server.addr)), cert_der("b"));
    // A key that is not the certificate's: refused too.
    install(&dir, "a");
    std::fs::copy(key_path("b"), &key).unwrap();
    server.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(served_cert(&tls_connect(server.addr)), cert_der("b"));
    echo_round_trip(&mut open, "still open");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- bad input on the TLS port --------------------------------------------

#[test]
fn a_handshake_never_finished_is_dropped_at_the_handshake_timeout() {
    let server = tls_server("a", &["--handshake-timeout", "2s"]);
    // Silent after connecting, and silent halfway through a ClientHello.
    let mut silent = connect(server.addr);
    let mut half = connect(server.addr);
    let hello = client_hello();
    half.write_all(&hello[..hello.len() / 2]).unwrap();
    // A TLS connection open meanwhile, past the timeout, is not affected.
    let mut ws = wss(server.addr, "/echo");
    assert!(read_to_close(&mut silent).is_empty());
    assert!(read_to_close(&mut half).is_empty());
    echo_round_trip(&mut ws, "unaffected");
    others_are_served(server.addr);
}

#[test]
fn plain_http_on_the_tls_port_gets_no_http_answer_and_a_close() {
    let server = tls_server("a", &[]);
    let mut s = connect(server.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let got = read_to_close(&mut s);
    // Nothing but (at most) a TLS alert record: content type 21.
    assert!(got.is_empty() || got[0] == 0x15, "{got:?}");
    assert!(!String::from_utf8_lossy(&got).contains("HTTP/"), "{got:?}");
    others_are_served(server.addr);
}

#[test]
fn a_garbage_client_hello_gets_an_alert_and_a_close() {
    let server = tls_server("a", &[]);
    let mut s = connect(server.addr);
    // A handshake record holding a ClientHello header, then junk.
    let mut junk = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c];
    junk.extend(std::iter::repeat_n(0xab, 0x3c));
    s.write_all(&junk).unwrap();
    let got = read_to_close(&mut s);
    // decode_error (RFC 8446 §6.2), a plaintext alert record: type 21, level 2, 50.
    assert_eq!(got, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 50], "{got:?}");
    // A record announcing a handshake message too large to buffer: rustls
    // closes without an alert.
    let mut s = connect(server.addr);
    let mut junk = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    junk.extend(std::iter::repeat_n(0xab, 0x40));
    s.write_all(&junk).unwrap();
    let got = read_to_close(&mut s);
    assert!(got.is_empty() || got[0] == 0x15, "{got:?}");
    others_are_served(server.addr);
}

#[test]
fn a_truncated_client_hello_then_eof_is_closed_without_an_answer() {
    let server = tls_server("a", &[]);
    let hello = client_hello();
    let mut s = connect(server.addr);
    s.write_all(&hello[..hello.len() - 10]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    // No keys yet, so no close_notify: the close alone.
    let got = read_to_close(&mut s);
    assert!(got.is_empty(), "{got:?}");
    others_are_served(server.addr);
}

/// A TLS 1.2 record sealed with the client's extracted keys (AES-GCM,
/// RFC 5288 §3: explicit nonce = the low 8 bytes of iv XOR seq).
fn seal_tls12(
    secrets: &rustls::ConnectionTrafficSecrets,
    seq: u64,
    typ: u8,
    payload: &[u8],
) -> Vec<u8> {
    use ring::aead;
    let (alg, key, iv) = match secrets {
        rustls::ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
        rustls::ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
        _ => panic!("an AES-GCM suite was asked for"),
    };
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(alg, key.as_ref()).unwrap());
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(iv.as_ref());
    for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *n ^= s;
    }
    let mut aad = seq.to_be_bytes().to_vec();
    aad.extend_from_slice(&[typ, 3, 3]);
    aad.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    let mut body = payload.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(aad),
        &mut body,
    )
    .unwrap();
    let mut rec = vec![typ, 3, 3];
    rec.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    rec.extend_from_slice(&nonce[4..]);
    rec.extend_from_slice(&body);
    rec
}

/// Reads one TLS record (header and body) off the wire.
fn read_record(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 5];
    s.read_exact(&mut h).expect("a record");
    let mut body = vec![0u8; u16::from_be_bytes([h[3], h[4]]) as usize];
    s.read_exact(&mut body).expect("a record body");
    (h[0], body)
}

#[test]
fn tls12_renegotiation_is_refused_and_a_second_attempt_closed() {
    let server = tls_server("a", &[]);
    let mut p = provider::default_provider();
    p.cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
    let mut config = client_config(p, true);
    config.enable_secret_extraction = true;
    let mut s = StreamOwned::new(client_conn(config), connect(server.addr));
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("TLS 1.2 handshake");
    }
    assert_eq!(
        s.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let StreamOwned { conn, mut sock } = s;
    let secrets = conn.dangerous_extract_secrets().expect("secrets");
    let (seq, tx) = secrets.tx;
    // The handshake message inside a fresh ClientHello record: a client
    // starting a new handshake on the open connection (RFC 5246 §7.4.1.2).
    let hello = client_hello()[5..].to_vec();
    sock.write_all(&seal_tls12(&tx, seq, 0x16, &hello)).unwrap();
    // RFC 5746 §4.4 allows a warning no_renegotiation: an alert record.
    let (typ, _) = read_record(&mut sock);
    assert_eq!(typ, 0x15, "an alert answers the renegotiation");
    // A client that insists is closed (rustls sends no alert for this one).
    sock.write_all(&seal_tls12(&tx, seq + 1, 0x16, &hello))
        .unwrap();
    let got = read_to_close(&mut sock);
    assert!(got.is_empty() || got[0] == 0x15, "{got:?}");
    others_are_served(server.addr);
}

#[test]
fn close_notify_in_the_middle_of_a_frame_ends_the_connection_cleanly() {
    let server = tls_server("a", &[]);
    let mut ws = wss(server.addr, "/echo");
    echo_round_trip(&mut ws, "first");
    let s = ws.get_mut();
    // Half a frame: its header and 3 of its 10 payload bytes.
    let f = frame(true, 0x1, b"0123456789");
    s.write_all(&f[..f.len() - 7]).unwrap();
    s.flush().unwrap();
    s.conn.send_close_notify();
    s.flush().unwrap();
    // The server answers with its own close_notify (a clean EOF for rustls)
    // and closes, nothing else.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("ended by close_notify");
    assert!(rest.is_empty(), "{rest:?}");
    others_are_served(server.addr);
}

/// Sends what the client has for the wire in 7-byte pieces, each its own
/// segment, so that the server reads records (and the ClientHello) in parts.
fn send_in_pieces(conn: &mut ClientConnection, sock: &mut TcpStream) {
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire).unwrap();
    }
    for piece in wire.chunks(7) {
        sock.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_micros(300));
    }
}

#[test]
fn records_split_across_reads_are_put_together() {
    let server = tls_server("a", &[]);
    let mut conn = client_conn(client_config(provider::default_provider(), false));
    let mut sock = connect(server.addr);
    while conn.is_handshaking() {
        send_in_pieces(&mut conn, &mut sock);
        if conn.is_handshaking() {
            conn.read_tls(&mut sock).expect("server flight");
            conn.process_new_packets().expect("handshake");
        }
    }
    let upgrade = format!(
        "GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    conn.writer().write_all(upgrade.as_bytes()).unwrap();
    let text = "pieces ".repeat(40);
    conn.writer()
        .write_all(&frame(true, 0x1, text.as_bytes()))
        .unwrap();
    send_in_pieces(&mut conn, &mut sock);
    let mut s = StreamOwned::new(conn, sock);
    let mut got = Vec::new();
    let want_tail = text.as_bytes();
    let mut buf = [0u8; 4096];
    while !got.ends_with(want_tail) {
        let n = s.read(&mut buf).expect("the echo");
        assert!(
            n > 0,
            "closed before the echo: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn keep_alive_over_tls_answers_requests_pipelined_in_records_of_their_own() {
    let server = tls_server("a", &[]);
    let mut s = tls_connect(server.addr);
    // Two records, one write: the second request arrives with the first.
    s.conn
        .writer()
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    s.conn
        .writer()
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.flush().unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .expect("answers ended by close_notify");
    let answer = String::from_utf8(answer).unwrap();
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{answer}");
    assert_eq!(
        answer.matches("Strict-Transport-Security").count(),
        2,
        "{answer}"
    );
}
