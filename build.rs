//! Compresses the built-in web client once, at build time: each file of
//! `static/` gets a gzip and a brotli copy (kept only when smaller) and an
//! ETag, all compiled into the binary as static data, so serving them costs
//! no CPU and no heap at run time. Writes `$OUT_DIR/embedded.rs`, included
//! by `src/server/files.rs`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// The files of the web client, in `static/`.
const FILES: &[&str] = &["index.html", "app.css", "app.js", "favicon.svg"];

/// FNV-1a, 64 bits: enough to tell one build's file from another's.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: 22,
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &data[..], &mut out, &params).expect("brotli");
    out
}

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let out_dir = std::env::var("OUT_DIR").expect("OUT_DIR");
    let mut table = String::from("&[\n");
    for name in FILES {
        let src = Path::new(&root).join("static").join(name);
        println!("cargo::rerun-if-changed={}", src.display());
        let data = std::fs::read(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        let variant = |ext: &str, packed: Vec<u8>| -> String {
            if packed.len() >= data.len() {
                return "None".into();
            }
            let path = Path::new(&out_dir).join(format!("{name}.{ext}"));
            std::fs::write(&path, packed).expect("write a compressed copy");
            format!("Some(include_bytes!({:?}))", path.display().to_string())
        };
        let gz = variant("gz", gzip(&data));
        let br = variant("br", brotli(&data));
        writeln!(
            table,
            "    Asset {{ name: {name:?}, etag: \"{:016x}\", identity: include_bytes!({:?}), \
             gzip: {gz}, br: {br} }},",
            fnv1a(&data),
            src.display().to_string()
        )
        .expect("format");
    }
    table.push(']');
    std::fs::write(Path::new(&out_dir).join("embedded.rs"), table).expect("write embedded.rs");
}
