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
build="$dir${target:+/$target}/release/build"
python3 - "$bin" "$build" <<'PY'
import glob, re, subprocess, sys
from collections import Counter
binary, build = sys.argv[1], sys.argv[2]
# The C (and assembly) of a dependency, known by the names its build
# script's archives define.
def defined(pattern):
    names = set()
    for a in glob.glob(f"{build}/{pattern}/out/*.a"):
        for line in subprocess.run(["nm", "--defined-only", a], capture_output=True, text=True).stdout.splitlines():
            f = line.split()
            if len(f) == 3:
                names.add(f[2])
    return names
C_NAMES = [("sqlite (C)", defined("libsqlite3-sys-*")), ("ring (C, asm)", defined("ring-*"))]
for line in subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True).stdout.splitlines():
    m = re.match(r"\s*\[\s*\d+\]\s+(\.\S+)\s+\S+\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)", line)
    if m and int(m.group(2), 16) > 16384:
        print(f"  section {m.group(1):<20} {int(m.group(2), 16):9d} B")
print()
tot = Counter()
raw = subprocess.run(["nm", "--size-sort", "-S", binary], capture_output=True, text=True).stdout.splitlines()
dem = subprocess.run(["nm", "--size-sort", "-S", "-C", binary], capture_output=True, text=True).stdout.splitlines()
for line, dline in zip(raw, dem):
    parts, dparts = line.split(" ", 3), dline.split(" ", 3)
    if len(parts) < 4 or len(dparts) < 4:
        continue
    size, mangled, name = int(parts[1], 16), parts[3], dparts[3]
    crate = next((label for label, names in C_NAMES if mangled in names), None)
    if crate is None:
        # The crate of a generic instance is that of its type: the first
        # path in the name (`<wschat::X as core::fmt::Debug>::fmt`: wschat).
        m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)::", name)
        crate = m.group(1) if m else "(other: libc glue, unnamed)"
    tot[crate] += size
total = sum(tot.values())
for crate, size in tot.most_common(40):
    print(f"{size:9d} B  {100 * size / total:5.1f}%  {crate}")
print(f"{total:9d} B  symbols in all")
PY
