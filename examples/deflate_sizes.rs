//! Compressed sizes and times of our short-message DEFLATE encoder beside
//! zlib's (level 6, as the server uses above `SHORT_MAX`), on chat frames
//! and on slices of the Autobahn compression payloads (groups 12 and 13).
//!
//! cargo run --release --example deflate_sizes -- \
//!     /opt/autobahn/site-packages/autobahntestsuite/testdata/*
//!
//! The second table, by message size, is what `--deflate-threshold`'s
//! default is chosen from: what compressing saves and costs for chat
//! messages of each length. Times are the fastest of 200 batches (so that
//! a loaded machine's preemptions drop out), µs per message.
use std::time::Instant;
use wschat::ws::deflate::{inflate_message, zlib_compress};
use wschat::ws::deflate_short;

fn chat_frames() -> Vec<(String, Vec<u8>)> {
    let words = "the quick brown fox jumps over the lazy dog while alice and bob \
        talk about the release notes of the chat server and whether the new \
        encoder makes short messages cheaper to compress than zlib does with \
        its large hash table that it clears for every single message sent";
    let words: Vec<&str> = words.split_whitespace().collect();
    let text = |len: usize, seed: usize| text_of(&words, len, seed);
    let msg = |id: usize, from: &str, t: &str| {
        format!(
            r#"{{"type":"message","room":"general","id":{id},"from":"{from}","text":"{t}","ts":{}}}"#,
            1763780000000u64 + id as u64 * 1234
        )
    };
    let mut v: Vec<(String, Vec<u8>)> = vec![
        ("presence".into(), br#"{"type":"presence","room":"general","nick":"Bob","event":"join"}"#.to_vec()),
        ("typing".into(), br#"{"type":"typing","room":"general","nick":"alice","active":true}"#.to_vec()),
        ("welcome".into(), br#"{"type":"welcome","nick":"alice","motd":"Be nice.","protocol":1}"#.to_vec()),
        ("error".into(), br#"{"type":"error","code":"storage_failed","message":"the server could not store or read messages (disk full or failing); nothing was sent: try again","ref":"c7"}"#.to_vec()),
    ];
    for len in [6, 20, 67, 150, 440, 1000] {
        v.push((
            format!("message text {len}"),
            msg(42, "alice", &text(len, len)).into_bytes(),
        ));
    }
    for n in [5, 20, 100] {
        let hist: Vec<String> = (0..n)
            .map(|i| {
                msg(
                    100 + i,
                    ["alice", "Bob", "carol"][i % 3],
                    &text(20 + (i * 37) % 120, i),
                )
            })
            .collect();
        let f = format!(
            r#"{{"type":"joined","room":"general","epoch":"k3f9q2","members":["alice","Bob","carol"],"history":[{}],"complete":true,"ref":"j1"}}"#,
            hist.join(",")
        );
        v.push((format!("joined, {n} in history"), f.into_bytes()));
    }
    v
}

/// µs per call, the fastest of 200 batches of 20.
fn min_time(f: impl Fn(&mut Vec<u8>)) -> f64 {
    let mut out = Vec::new();
    let mut best = f64::MAX;
    for _ in 0..200 {
        let t = Instant::now();
        for _ in 0..20 {
            out.clear();
            f(&mut out);
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / 20.0);
    }
    best
}

/// `len` bytes of `words`, from the `seed`-th on in a fixed shuffle.
fn text_of(words: &[&str], len: usize, seed: usize) -> String {
    let mut s = String::new();
    let mut i = seed;
    while s.len() < len {
        s.push_str(words[(i * 7 + 3) % words.len()]);
        s.push(' ');
        i += 1;
    }
    s.truncate(len);
    s
}

/// Chat `message` frames whose text is `len` bytes, as the server sends
/// them (several senders and texts, so one is not a lucky case).
fn chat_message(len: usize, seed: usize) -> Vec<u8> {
    let words = [
        "ok", "the", "release", "notes", "are", "out", "did", "you", "see", "alice", "lunch",
        "tomorrow", "at", "noon", "?", "sounds", "good", "to", "me", "thanks", "!", "lol", "bob",
    ];
    let t = text_of(&words, len, seed);
    format!(
        r#"{{"type":"message","room":"general","id":{},"from":"{}","text":"{t}","ts":{}}}"#,
        1000 + seed * 37,
        ["alice", "Bob", "carol_1"][seed % 3],
        1763780000000u64 + seed as u64 * 977
    )
    .into_bytes()
}

fn by_size() {
    println!();
    println!("| frame bytes | compressed | saved | µs ours | µs zlib |");
    println!("| --- | --- | --- | --- | --- |");
    let presence = [
        &br#"{"type":"presence","room":"general","nick":"Bob","event":"join"}"#[..],
        br#"{"type":"typing","room":"general","nick":"alice","active":true}"#,
    ];
    let mut rows: Vec<(&str, Vec<Vec<u8>>)> = vec![(
        "presence, typing",
        presence.iter().map(|p| p.to_vec()).collect(),
    )];
    for len in [0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 440] {
        rows.push(("", (0..6).map(|s| chat_message(len, s)).collect()));
    }
    for (name, ps) in rows {
        let raw: usize = ps.iter().map(Vec::len).sum();
        let mut z = 0;
        for p in &ps {
            let mut out = Vec::new();
            deflate_short::compress(p, 15, &mut out);
            assert_eq!(inflate_message(&out, 1 << 24).unwrap(), *p);
            z += out.len();
        }
        let n = ps.len() as f64;
        let ours: f64 = ps
            .iter()
            .map(|p| {
                min_time(|o| {
                    deflate_short::compress(p, 15, o);
                })
            })
            .sum::<f64>()
            / n;
        let zlib: f64 = ps
            .iter()
            .map(|p| min_time(|o| zlib_compress(p, 15, o)))
            .sum::<f64>()
            / n;
        let label = if name.is_empty() {
            format!("{:.0}", raw as f64 / n)
        } else {
            format!("{:.0} ({name})", raw as f64 / n)
        };
        println!(
            "| {label} | {:.0} | {:.0}% | {ours:.2} | {zlib:.2} |",
            z as f64 / n,
            100.0 * (1.0 - z as f64 / raw as f64)
        );
    }
}

/// µs per call, the mean of 2000 (for the Autobahn slices, up to 16 KiB).
fn mean_time(f: impl Fn(&mut Vec<u8>)) -> f64 {
    let mut out = Vec::new();
    let reps = 2000;
    let t = Instant::now();
    for _ in 0..reps {
        out.clear();
        f(&mut out);
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(reps)
}

fn row(name: &str, p: &[u8]) -> (usize, usize) {
    let mut ours = Vec::new();
    let block = deflate_short::compress(p, 15, &mut ours);
    let mut z = Vec::new();
    zlib_compress(p, 15, &mut z);
    assert_eq!(inflate_message(&ours, 1 << 24).unwrap(), p);
    let t_ours = min_time(|o| {
        deflate_short::compress(p, 15, o);
    });
    let t_z = min_time(|o| zlib_compress(p, 15, o));
    println!(
        "| {name} | {} | {} ({block:?}) | {} | {:+.1}% | {t_ours:.2} | {t_z:.2} |",
        p.len(),
        ours.len(),
        z.len(),
        100.0 * (ours.len() as f64 / z.len() as f64 - 1.0)
    );
    (ours.len(), z.len())
}

fn main() {
    println!("| payload | bytes | ours | zlib 6 | ours vs zlib | µs ours | µs zlib |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, p) in chat_frames() {
        row(&name, &p);
    }
    by_size();
    println!();
    println!("| payload | bytes | ours | zlib 6 | ours vs zlib | µs ours | µs zlib |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for path in std::env::args().skip(1) {
        let data = std::fs::read(&path).expect("read");
        let name = path.rsplit('/').next().unwrap_or(&path).to_string();
        for size in [16, 64, 256, 1024, 2048, 4096, 8192, 16384] {
            // As Autobahn sends them: consecutive slices; ten of each here.
            let (mut a, mut b) = (0, 0);
            for k in 0..10 {
                let at = (k * size) % data.len().saturating_sub(size).max(1);
                let p = &data[at..(at + size).min(data.len())];
                let mut ours = Vec::new();
                deflate_short::compress(p, 15, &mut ours);
                assert_eq!(inflate_message(&ours, 1 << 24).unwrap(), p);
                let mut z = Vec::new();
                zlib_compress(p, 15, &mut z);
                a += ours.len();
                b += z.len();
            }
            let p = &data[..size.min(data.len())];
            let t_ours = mean_time(|o| {
                deflate_short::compress(p, 15, o);
            });
            let t_z = mean_time(|o| zlib_compress(p, 15, o));
            println!(
                "| {name} ×10 | {size} | {a} | {b} | {:+.1}% | {t_ours:.2} | {t_z:.2} |",
                100.0 * (a as f64 / b as f64 - 1.0)
            );
        }
    }
}
