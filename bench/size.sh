#!/usr/bin/env bash
# What each part of the release binary costs: the release build relinked
# unstripped into target/size/ (CARGO_PROFILE_RELEASE_STRIP=none, its own
# target directory so the real build is untouched), then its code and data
# symbols summed by crate (the first path segment of the demangled name; C
# symbols by prefix: sqlite3 for SQLite, ring_core for ring's C and
# assembly), and the sections.
#
#   bench/size.sh                       x86_64
#   bench/size.sh aarch64-unknown-linux-gnu
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
target=${1:-}
dir="$ROOT/target/size"
CARGO_PROFILE_RELEASE_STRIP=none CARGO_TARGET_DIR="$dir" \
    cargo build --quiet --release --locked ${target:+--target "$target"} --bin wschat
bin="$dir${target:+/$target}/release/wschat"
stripped=$(mktemp)
trap 'rm -f "$stripped"' EXIT
strip -o "$stripped" "$bin" 2>/dev/null || cp "$bin" "$stripped"
echo "binary: $(stat -c %s "$stripped") B stripped"
readelf -SW "$bin" | awk '$2 ~ /^\./ && $6 ~ /^[0-9a-f]+$/ {s=strtonum("0x"$6); if (s > 4096) printf "  section %-20s %9d B\n", $2, s}'
echo
nm --size-sort -S -C "$bin" | awk '
{
    size = strtonum("0x" $2); name = $0
    sub(/^[0-9a-f]+ [0-9a-f]+ [a-zA-Z] /, "", name)
    n = name
    gsub(/^(<|_<|&|\*const |\*mut |dyn )+/, "", n)
    sub(/^core::ptr::drop_in_place<(<|&)*/, "", n)
    if (n ~ /^sqlite3|^sqlite/ || n ~ /^(fts5|Fts5)/) crate = "sqlite (C)"
    else if (n ~ /^ring_core|^GFp|^LIMBS|^bn_|^aes_|^gcm_|^ChaCha|^chacha|^poly1305|^x25519|^p256|^p384|^ecp_|^sha(256|512)_block|^fiat_/) crate = "ring (C, asm)"
    else if (n ~ /::/) { crate = n; sub(/::.*/, "", crate); sub(/<.*/, "", crate) }
    else crate = "(other: libc, std glue, C)"
    tot[crate] += size; all += size
}
END {
    for (c in tot) printf "%9d B  %5.1f%%  %s\n", tot[c], 100 * tot[c] / all, c
    printf "%9d B  symbols in all\n", all
}' | sort -rn | head -40
