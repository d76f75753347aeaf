//! Compresses the built-in web client once, at build time: each file of
//! `static/` is compiled into the binary gzipped only, with its length and
//! an ETag, so serving it costs no CPU and no heap at run time. Every
//! browser accepts gzip; the rare client that does not (curl without
//! `--compressed`) gets the file inflated once and kept (src/server/files.rs).
//! The file as is and a brotli copy beside it were 0.23 MiB of the binary;
//! brotli saved 8 KiB of a first visit, and browsers offer it only over
//! HTTPS. Writes `$OUT_DIR/embedded.rs`, included by `src/server/files.rs`.

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

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let out_dir = std::env::var("OUT_DIR").expect("OUT_DIR");
    let mut table = String::from("&[\n");
    for name in FILES {
        let src = Path::new(&root).join("static").join(name);
        println!("cargo::rerun-if-changed={}", src.display());
        let data = std::fs::read(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        let gz = Path::new(&out_dir).join(format!("{name}.gz"));
        std::fs::write(&gz, gzip(&data)).expect("write the gzip copy");
        writeln!(
            table,
            "    Asset {{ name: {name:?}, etag: \"{:016x}\", len: {}, gzip: include_bytes!({:?}) }},",
            fnv1a(&data),
            data.len(),
            gz.display().to_string()
        )
        .expect("format");
    }
    table.push(']');
    std::fs::write(Path::new(&out_dir).join("embedded.rs"), table).expect("write embedded.rs");
    release_link_args(&out_dir);
}

/// How the release server is linked (`cargo build --release`; not the
/// tests, whose profile unwinds, nor wschat-bench), for a smaller binary:
///
/// - glibc targets: no unwind tables (`.eh_frame`, `.eh_frame_hdr`, 0.28
///   MiB on x86_64): with `panic = "abort"` nothing unwinds; a panic still
///   prints its message and place, only the frames of `RUST_BACKTRACE` are
///   gone. (`-C force-unwind-tables=no` cannot be set per profile, and the
///   test profile needs them: a linker script drops them at the link
///   instead.) Not musl: its static start files register `.eh_frame`.
/// - identical code folding where the linker is lld: x86_64 glibc (rustc's
///   default) and aarch64 glibc (Rust's own lld, through gcc's `-B`, in
///   place of Debian's GNU ld, which has no `--icf`).
fn release_link_args(out_dir: &str) {
    println!("cargo::rerun-if-env-changed=PROFILE");
    let target = std::env::var("TARGET").unwrap_or_default();
    if std::env::var("PROFILE").as_deref() != Ok("release")
        || !target.ends_with("-linux-gnu") && !target.ends_with("-linux-gnueabihf")
    {
        return;
    }
    let script = Path::new(out_dir).join("no-unwind-tables.ld");
    std::fs::write(
        &script,
        "SECTIONS { /DISCARD/ : { *(.eh_frame) *(.eh_frame_hdr) } } INSERT AFTER .text;\n",
    )
    .expect("write the linker script");
    println!(
        "cargo::rustc-link-arg-bin=wschat=-Wl,-T,{}",
        script.display()
    );
    // Only where the toolchain has its lld: `--icf=all` is an lld option,
    // and a toolchain linking with GNU ld (an older or a distribution's
    // rustc, another linker chosen) would fail the link with it. With rustc's
    // own lld (the default on x86_64 since 1.90), naming it again is a
    // no-op there.
    if (target == "x86_64-unknown-linux-gnu" || target == "aarch64-unknown-linux-gnu")
        && let Some(dir) = rust_lld_dir()
    {
        println!("cargo::rustc-link-arg-bin=wschat=-B{}", dir.display());
        println!("cargo::rustc-link-arg-bin=wschat=-fuse-ld=lld");
        println!("cargo::rustc-link-arg-bin=wschat=-Wl,--icf=all");
    }
}

/// The directory of the toolchain's `ld.lld` (a wrapper of rust-lld) for
/// gcc's `-B`, if this toolchain has one.
fn rust_lld_dir() -> Option<std::path::PathBuf> {
    let rustc = std::env::var("RUSTC").ok()?;
    let host = std::env::var("HOST").ok()?;
    let out = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8(out.stdout).ok()?;
    let dir = Path::new(sysroot.trim()).join(format!("lib/rustlib/{host}/bin/gcc-ld"));
    dir.join("ld.lld").is_file().then_some(dir)
}
