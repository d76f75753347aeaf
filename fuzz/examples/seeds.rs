//! Writes the seed corpora `fuzz/corpus/<target>/seed-*` from real traffic:
//! browser, tungstenite and curl handshakes, masked client frames built with
//! `client_frame`, and the JSON lines of `docs/protocol.md`.
//!
//! Run from `fuzz/`: `cargo run --example seeds` (stable is enough).

use std::fs;
use std::path::Path;

use wschat::ws::receive::client_frame;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The chunking prefix of `wschat_fuzz::split`: lengths below 0xC0 only.
fn with_cuts(lens: &[u8], payload: &[u8]) -> Vec<u8> {
    assert!(lens.len() < 32 && lens.iter().all(|&l| l < 0xC0));
    let mut v = vec![lens.len() as u8];
    v.extend_from_slice(lens);
    v.extend_from_slice(payload);
    v
}

fn whole(payload: &[u8]) -> Vec<u8> {
    with_cuts(&[], payload)
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    fs::write(dir.join(format!("seed-{name}")), data).expect("write seed");
}

const CHROMIUM: &str = "GET /ws?nick=alice HTTP/1.1\r\n\
Host: localhost:8080\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: http://localhost:8080\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: 9QhJ3K0YwJdGL7pnfn0z1Q==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
Sec-WebSocket-Protocol: wschat.v1\r\n\r\n";

const FIREFOX: &str = "GET /ws?nick=b%C3%B6b HTTP/1.1\r\n\
Host: chat.example.org\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n\
Accept: */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Sec-WebSocket-Version: 13\r\n\
Origin: https://chat.example.org\r\n\
Sec-WebSocket-Extensions: permessage-deflate\r\n\
Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
Connection: keep-alive, Upgrade\r\n\
Sec-Fetch-Dest: empty\r\n\
Sec-Fetch-Mode: websocket\r\n\
Sec-Fetch-Site: same-origin\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
Upgrade: websocket\r\n\r\n";

/// tungstenite 0.30's `generate_request`: the five headers in this order.
const TUNGSTENITE: &str = "GET /echo HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\n\
Connection: Upgrade\r\n\
Upgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: NTQ3MzQ5NjItZjZkNS00ZA==\r\n\r\n";

const CURL: &str = "GET /ws HTTP/1.1\r\n\
Host: localhost:8080\r\n\
User-Agent: curl/8.11.1\r\n\
Accept: */*\r\n\
Upgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: 1Xlq0jxs3Ap5TLVrPD/8pA==\r\n\
Connection: Upgrade\r\n\r\n";

/// RFC 6455 §1.2, bare LF line ends (RFC 9112 §2.2).
const RFC_LF: &str = "GET /chat HTTP/1.1\n\
Host: server.example.com\n\
Upgrade: websocket\n\
Connection: Upgrade\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\
Origin: http://example.com\n\
Sec-WebSocket-Protocol: chat, superchat\n\
Sec-WebSocket-Version: 13\n\n";

const STATIC_GET: &str = "GET /app.js HTTP/1.1\r\n\
Host: localhost:8080\r\n\
Accept: */*\r\n\r\n";

const OLD_VERSION: &str = "GET /ws HTTP/1.1\r\n\
Host: localhost\r\n\
Upgrade: WebSocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 8\r\n\r\n";

/// The request lines of `docs/protocol.md`, "Client → server".
const CHAT_LINES: &[&str] = &[
    r#"{"type":"nick","nick":"alicia","ref":"n1"}"#,
    r#"{"type":"join","room":"general","since":41,"epoch":"1x8kq0d2mfz3a","ref":"j1"}"#,
    r#"{"type":"leave","room":"general"}"#,
    r#"{"type":"message","room":"general","text":"hi all","ref":"c1"}"#,
    r#"{"type":"dm","to":"Bob","text":"psst"}"#,
    r#"{"type":"typing","room":"general","active":true}"#,
    r#"{"type":"history","room":"general","before":42,"limit":20}"#,
    r#"{"type":"rooms"}"#,
];

fn handshake() {
    for (name, h) in [
        ("chromium", CHROMIUM),
        ("firefox", FIREFOX),
        ("tungstenite", TUNGSTENITE),
        ("curl", CURL),
        ("rfc-lf", RFC_LF),
        ("static-get", STATIC_GET),
        ("version-8", OLD_VERSION),
    ] {
        write("handshake", name, &whole(h.as_bytes()));
    }
    // The head dribbled in: the request line, then a few bytes at a time,
    // then the rest with the first frame right behind it (pipelined).
    write(
        "handshake",
        "curl-dribbled",
        &with_cuts(&[18, 2, 1, 1, 5, 0, 30], CURL.as_bytes()),
    );
    let mut pipelined = TUNGSTENITE.as_bytes().to_vec();
    pipelined.extend(client_frame(true, 1, b"Hello", KEY));
    write("handshake", "tungstenite-pipelined", &whole(&pipelined));
}

/// `frames` input: the max-size selector (index into its MAXES), then the
/// chunking and the bytes.
fn frames_seed(name: &str, max_sel: u8, lens: &[u8], input: &[u8]) {
    let mut v = vec![max_sel];
    v.extend(with_cuts(lens, input));
    write("frames", name, &v);
}

fn frames() {
    const DEFAULT: u8 = 6; // 64 KiB, the server's default
    // RFC 6455 §5.7: a masked "Hello".
    frames_seed(
        "rfc-hello",
        DEFAULT,
        &[],
        &[
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ],
    );
    // §5.7: a fragmented "Hel" + "lo" with a ping between them.
    let mut frag = client_frame(false, 1, b"Hel", KEY);
    frag.extend(client_frame(true, 9, b"Hello", [1, 2, 3, 4]));
    frag.extend(client_frame(true, 0, b"lo", [5, 6, 7, 8]));
    frames_seed("fragmented-ping", DEFAULT, &[], &frag);
    frames_seed("fragmented-ping-cut", DEFAULT, &[1, 1, 4, 3, 2, 7], &frag);

    // A chat session as a browser sends it.
    let mut chat = Vec::new();
    for (i, l) in CHAT_LINES.iter().enumerate() {
        chat.extend(client_frame(
            true,
            1,
            l.as_bytes(),
            [i as u8, 0x5a, 0xc3, 0x11],
        ));
    }
    chat.extend(client_frame(true, 10, b"", KEY));
    chat.extend(client_frame(true, 8, b"\x03\xe8bye", KEY));
    frames_seed("chat-session", DEFAULT, &[], &chat);
    frames_seed(
        "chat-session-cut",
        DEFAULT,
        &[3, 40, 2, 99, 1, 1, 60],
        &chat,
    );

    // Every length form, UTF-8 split over frames, and an oversized message.
    let text126: Vec<u8> = "é".repeat(63).into_bytes();
    frames_seed(
        "len-126",
        DEFAULT,
        &[],
        &client_frame(true, 1, &text126, KEY),
    );
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    frames_seed(
        "len-64bit",
        7,
        &[10, 100],
        &client_frame(true, 2, &big, KEY),
    );
    let mut utf8 = client_frame(false, 1, "κό".as_bytes()[..3].as_ref(), KEY);
    utf8.extend(client_frame(true, 0, &"κόσμε".as_bytes()[3..], KEY));
    frames_seed("utf8-across-frames", DEFAULT, &[], &utf8);
    frames_seed(
        "too-big",
        2,
        &[],
        &[
            client_frame(false, 2, b"1234", KEY),
            client_frame(true, 0, b"5678", KEY),
        ]
        .concat(),
    );
    frames_seed(
        "bad-utf8",
        DEFAULT,
        &[8],
        &client_frame(true, 1, b"ok\xf4\x90\x80\x80 and more", KEY),
    );
    frames_seed(
        "close-empty",
        DEFAULT,
        &[],
        &client_frame(true, 8, b"", KEY),
    );
    frames_seed(
        "close-bad-code",
        DEFAULT,
        &[],
        &client_frame(true, 8, b"\x03\xec", KEY),
    );
    // permessage-deflate negotiated (selector bit 3): a compressed message
    // in two fragments with a ping between, then a compressed bomb against
    // the 1000-byte limit.
    let mut z = Vec::new();
    wschat::ws::deflate::compress(
        br#"{"type":"message","room":"general","text":"hello hello hello"}"#,
        15,
        &mut z,
    );
    let (a, b) = z.split_at(z.len() / 2);
    let mut first = client_frame(false, 1, a, KEY);
    first[0] |= 0x40; // RFC 7692 §6: RSV1 on the first frame
    let mut deflated = first;
    deflated.extend(client_frame(true, 9, b"p", KEY));
    deflated.extend(client_frame(true, 0, b, KEY));
    frames_seed("deflate-fragmented", DEFAULT | 8, &[3, 9], &deflated);
    let mut bomb = Vec::new();
    wschat::ws::deflate::compress(&[0; 5000], 15, &mut bomb);
    let mut bomb = client_frame(true, 2, &bomb, KEY);
    bomb[0] |= 0x40;
    frames_seed("deflate-bomb", 5 | 8, &[], &bomb);
}

fn utf8() {
    for (name, lens, bytes) in [
        ("greek", &[3u8, 1, 2][..], "κόσμε".as_bytes()),
        (
            "mixed",
            &[1, 2, 1, 3, 1, 4],
            "aé€𝄞 \u{10FFFF}\u{FFFF}\u{80}".as_bytes(),
        ),
        (
            "surrogate",
            &[1, 1],
            b"\xce\xba\xed\xa0\x80edited".as_slice(),
        ),
        ("above-max", &[1], b"ok\xf4\x90\x80\x80"),
        ("overlong", &[], b"\xc0\xaf"),
        ("truncated", &[2], b"ab\xe2\x82"),
        ("lone-continuation", &[], b"\x80"),
        ("five-byte", &[0, 1], b"\xf8\x88\x80\x80\x80"),
        ("json", &[10, 20], CHAT_LINES[3].as_bytes()),
    ] {
        write("utf8", name, &with_cuts(lens, bytes));
    }
}

/// `chat` input records (see fuzz_targets/chat.rs).
struct Script(Vec<u8>);

impl Script {
    fn new(cfg: [u8; 6]) -> Script {
        Script(cfg.to_vec())
    }
    fn connect(&mut self, conn: u8, nick: &str) -> &mut Self {
        self.0.extend([0, conn, 0x80, nick.len() as u8]);
        self.0.extend(nick.as_bytes());
        self
    }
    fn text(&mut self, conn: u8, msg: &str) -> &mut Self {
        self.0.push(1);
        self.0.push(conn);
        self.0.extend((msg.len() as u16).to_le_bytes());
        self.0.extend(msg.as_bytes());
        self
    }
    fn disconnect(&mut self, conn: u8) -> &mut Self {
        self.0.extend([3, conn]);
        self
    }
    fn tick(&mut self, secs: u16) -> &mut Self {
        self.0.push(4);
        self.0.extend((secs | 0x8000).to_le_bytes());
        self
    }
}

fn chat() {
    // history 1000, 4 rooms per connection, 6 rooms, 4000 chars, no rate
    // limit, 60 s retention.
    const CFG: [u8; 6] = [5, 3, 5, 0, 0, 0];
    let mut s = Script::new(CFG);
    s.connect(0, "alice").connect(1, "Bob");
    for l in CHAT_LINES {
        s.text(0, l);
    }
    s.text(1, r#"{"type":"join","room":"general"}"#)
        .text(0, r#"{"type":"join","room":"general","ref":"j2"}"#)
        .text(
            1,
            r#"{"type":"message","room":"general","text":"hello","ref":"c2"}"#,
        )
        .text(0, r#"{"type":"dm","to":"bob","text":"psst"}"#)
        .text(1, r#"{"type":"history","room":"general","before":2}"#)
        .text(0, r#"{"type":"nick","nick":"ALICE"}"#)
        .text(1, r#"{"type":"leave","room":"general"}"#)
        .disconnect(0)
        .tick(61)
        .text(1, r#"{"type":"join","room":"general","since":1}"#);
    write("chat", "protocol-md", &s.0);

    // Every example line from both sides, answered by the server's rules.
    let mut s = Script::new(CFG);
    s.connect(0, "alice").connect(1, "alice").connect(2, "");
    for (i, l) in CHAT_LINES.iter().enumerate() {
        s.text((i % 3) as u8, l);
    }
    write("chat", "three-users", &s.0);

    // Rate limit: burst 1, no refill; the 5th refused frame closes.
    let mut s = Script::new([5, 3, 5, 0, 1, 0]);
    s.connect(0, "spammer");
    for _ in 0..6 {
        s.text(0, r#"{"type":"rooms"}"#);
    }
    write("chat", "rate-limit", &s.0);

    // Errors in precedence order.
    let mut s = Script::new(CFG);
    s.connect(0, "x");
    for l in [
        "not json",
        r#"{"type":"\ud800"}"#,
        r#"{"type":"shout","ref":"u1"}"#,
        r#"{"type":"message","room":"bad room","text":" "}"#,
        r#"{"type":"history","room":"general","before":-0}"#,
        r#"{"type":"join","room":"general","since":9007199254740992}"#,
        r#"{"type":"message","room":"general","text":"\u0007"}"#,
    ] {
        s.text(0, l);
    }
    write("chat", "errors", &s.0);
}

fn main() {
    handshake();
    frames();
    utf8();
    chat();
}
