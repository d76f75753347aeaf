#!/usr/bin/env bash
# Cross builds and emulated tests: the Raspberry Pi targets and static musl.
#
#   tests/cross.sh                  everything below, in order
#   tests/cross.sh build            1: the release builds and their sizes
#   tests/cross.sh start            2: each release binary started (built by 1)
#   tests/cross.sh smoke            1 and 2
#   tests/cross.sh test-build       the test binaries of 3 and 4, not run
#   tests/cross.sh test             3 and 4 (builds what test-build did not)
#   CROSS_TARGETS="aarch64-unknown-linux-gnu" tests/cross.sh build
#
# .ci/run calls the stages one by one, so that what runs natively in the
# meantime (Autobahn, the browser) overlaps the compiles and the emulation.
#
# 1. `cargo build --release` of the server for every target in TARGETS, in
#    one cargo call (their single-threaded LTO links run side by side), with
#    Debian's cross compilers as linkers (and as C compilers, for the
#    dependencies that build C: cc-rs reads CC_<triple>), and the stripped
#    size of each binary.
# 2. Each binary starts (under qemu-user where foreign) and answers /healthz;
#    the musl ones are checked to be static.
# 3. `cargo test` for aarch64 under qemu-aarch64, all but three tests (see
#    AARCH64_SKIP): the test binaries
#    through cargo's runner, the server they spawn through WSCHAT_TEST_RUNNER
#    (tests/common/mod.rs), since nothing registers qemu with binfmt_misc.
# 4. armv7 (32-bit): the unit tests, the server's start and a chat round
#    trip under qemu-arm (the whole suite would double the emulated time; the
#    unit tests are what 32-bit `usize` can break).
#
# Needs: rustup, gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf, qemu-user,
# musl-tools, curl, file (`.ci/run` installs them). A missing tool is an
# error, never a skip. Exits 1 if any step failed; prints a summary table.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

ALL_TARGETS=(x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
    x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
read -r -a TARGETS <<<"${CROSS_TARGETS:-${ALL_TARGETS[*]}}"
MODE="${1:-all}"
case "$MODE" in all | build | start | smoke | test-build | test) ;;
*) echo "usage: $0 [all|build|start|smoke|test-build|test]" >&2; exit 2 ;; esac
PORT_BASE=$((20000 + RANDOM % 20000))
failed=()
summary=()

die() { echo "cross.sh: ERROR: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }

need rustup "install Rust through rustup"
need curl "apt-get install curl"
need aarch64-linux-gnu-gcc "apt-get install gcc-aarch64-linux-gnu"
need arm-linux-gnueabihf-gcc "apt-get install gcc-arm-linux-gnueabihf"
need musl-gcc "apt-get install musl-tools"
need qemu-aarch64 "apt-get install qemu-user"
need qemu-arm "apt-get install qemu-user"
installed=$(rustup target list --installed)
for t in "${TARGETS[@]}"; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t" || die "rustup target add $t failed"
done

# Linkers, C compilers (cc-rs reads CC_<triple>, for rusqlite's bundled
# SQLite and ring) and archivers per target are in .cargo/config.toml; the
# runners are here: the test binaries of a foreign target run under qemu.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm -L /usr/arm-linux-gnueabihf"

# A dependency that compiles C for aarch64 musl (rusqlite's bundled SQLite,
# ring) needs musl's aarch64 headers: the GNU cross gcc alone compiles
# against glibc's, which may redirect calls to glibc-only symbols (the _chk
# functions, __isoc99_*). Debian has no musl cross gcc, so, in
# order: CC_aarch64_unknown_linux_musl if set; aarch64-linux-musl-gcc on PATH
# (https://musl.cc, musl-cross-make); else Debian's musl-dev:arm64, fetched
# with a private apt configuration into target/cross-tools (the system's
# dpkg architectures untouched), and aarch64-linux-gnu-gcc pointed at its
# headers. Rust links with its own musl, so only compiling needs this.
musl_c_compiler() {
    if [ -n "${CC_aarch64_unknown_linux_musl:-}" ]; then return 0; fi
    if command -v aarch64-linux-musl-gcc >/dev/null 2>&1; then
        export CC_aarch64_unknown_linux_musl=aarch64-linux-musl-gcc
        return 0
    fi
    local tools="$ROOT/target/cross-tools" inc
    inc="$tools/musl-arm64/usr/include/aarch64-linux-musl"
    if [ ! -f "$inc/stdio.h" ]; then
        echo "fetching Debian's musl-dev:arm64 for aarch64 musl C headers"
        local apt="$tools/apt" mirror
        mirror=$(grep -h -m1 '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1)
        [ -n "$mirror" ] || mirror=$(grep -h -m1 '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}')
        [ -n "$mirror" ] || { echo "no Debian mirror configured in /etc/apt"; return 1; }
        mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$tools/musl-arm64"
        echo "deb [arch=arm64] $mirror bookworm main" >"$apt/sources.list"
        local opts=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=-
            -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Dir::State::status=/dev/null
            -o APT::Architecture=arm64 -o APT::Architectures=arm64 -o APT::Sandbox::User=root)
        apt-get "${opts[@]}" update -qq &&
            (cd "$apt" && apt-get "${opts[@]}" download musl-dev:arm64) || return 1
        dpkg-deb -x "$apt"/musl-dev_*_arm64.deb "$tools/musl-arm64" || return 1
    fi
    # A wrapper, because cc-rs takes CC as one program name.
    local wrap="$tools/aarch64-linux-musl-gcc"
    printf '#!/bin/sh\nexec aarch64-linux-gnu-gcc -nostdinc -isystem %s -isystem %s "$@"\n' \
        "$inc" "$(aarch64-linux-gnu-gcc -print-file-name=include)" >"$wrap"
    chmod +x "$wrap"
    export CC_aarch64_unknown_linux_musl="$wrap"
}

# Does the dependency graph for this target build C? (cc-rs or cmake.)
builds_c() {
    cargo tree --quiet --locked --target "$1" --edges normal,build --prefix none |
        grep -qE '^(cc|cmake) v'
}

check_aarch64_musl_cc() {
    if builds_c aarch64-unknown-linux-musl && ! musl_c_compiler; then
        echo "aarch64-unknown-linux-musl: a dependency compiles C and there is no musl C compiler"
        echo "for aarch64: put aarch64-linux-musl-gcc (https://musl.cc) on PATH or set"
        echo "CC_aarch64_unknown_linux_musl."
        return 1
    fi
}

run_step() {
    local name=$1; shift
    local t0=$SECONDS
    echo "--- $name"
    if "$@"; then
        summary+=("ok      $name ($((SECONDS - t0)) s)")
    else
        summary+=("FAILED  $name ($((SECONDS - t0)) s)")
        failed+=("$name")
    fi
}

# The host's own target is the plain `cargo build --release` (target/release),
# the build every other suite uses, not a second one under target/<triple>.
HOST=$(rustc -vV | sed -n 's/^host: //p')
bin_of() {
    if [ "$1" = "$HOST" ]; then echo "$ROOT/target/release/wschat"; else echo "$ROOT/target/$1/release/wschat"; fi
}

size_of() {
    local t=$1 size
    size=$(stat -c %s "$(bin_of "$t")") || return 1
    printf 'size  %-32s %9d B  %5s MiB\n' "$t" "$size" "$(awk "BEGIN{printf \"%.2f\", $size/1048576}")" |
        tee -a "$ROOT/target/cross-sizes.txt"
}

# Every target in one cargo call: cargo's job server shares the cores
# between the targets' compiles, and the fat-LTO links (one core each, most
# of a release build's time) run side by side instead of one after another.
build_all() {
    local args=() t
    for t in "${TARGETS[@]}"; do
        if [ "$t" = aarch64-unknown-linux-musl ]; then check_aarch64_musl_cc || return 1; fi
        if [ "$t" = "$HOST" ]; then
            cargo build --quiet --release --locked --bin wschat || return 1
        else
            args+=(--target "$t")
        fi
    done
    if [ ${#args[@]} -gt 0 ]; then
        cargo build --quiet --release --locked "${args[@]}" --bin wschat || return 1
    fi
    for t in "${TARGETS[@]}"; do size_of "$t" || return 1; done
}

# The runner for a target's binaries ("" when the host runs them).
runner_of() {
    case "$1" in
    x86_64-*) echo "" ;;
    aarch64-unknown-linux-gnu) echo "qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    aarch64-unknown-linux-musl) echo "qemu-aarch64" ;;
    armv7-unknown-linux-gnueabihf) echo "qemu-arm -L /usr/arm-linux-gnueabihf" ;;
    *) return 1 ;;
    esac
}

# Starts the target's release binary, waits for /healthz, stops it with
# SIGTERM and expects a clean exit.
healthz() {
    local t=$1 port=$((PORT_BASE++)) bin log
    bin=$(bin_of "$t")
    log="$ROOT/target/cross-$t.log"
    case "$t" in *-musl)
        if file -L "$bin" | grep -q 'dynamically linked'; then
            echo "$t: $bin is not static: $(file -L "$bin")"
            return 1
        fi ;;
    esac
    # A data directory of its own: the default (./wschat-data) may be held
    # by another server started from the checkout (the README's step).
    local data
    data=$(mktemp -d)
    # shellcheck disable=SC2046 # the runner is words
    $(runner_of "$t") "$bin" --addr "127.0.0.1:$port" --data-dir "$data" >"$log" 2>&1 &
    local pid=$! ok=1
    for _ in $(seq 300); do
        if curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then ok=0; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -TERM "$pid" 2>/dev/null
    wait "$pid"
    local rc=$?
    rm -rf "$data"
    if [ $ok -ne 0 ]; then echo "$t: no answer on /healthz"; cat "$log"; return 1; fi
    if [ $rc -ne 0 ]; then echo "$t: exit status $rc after SIGTERM"; cat "$log"; return 1; fi
}

# Left out under qemu, each for a reason of its own (they run natively in
# `cargo test`): a million messages through the chat's pure logic (10 min
# emulated; nothing in it differs between 64-bit targets), and two floods
# whose point is the server's RSS, which under qemu-user is qemu's, and whose
# 500,000 pings or 128 MiB take an emulated server past the tests' 10 s I/O
# safety net; the deflate bomb's point is the server's RSS too; and the
# store's SIGKILL-under-load test restarts over its store slower under
# emulation than that safety net allows. CROSS_AARCH64_SKIP="" runs them too.
AARCH64_SKIP=${CROSS_AARCH64_SKIP-chat_history_order_does_not_accumulate_stale_entries ping_flood_without_reading_does_not_grow_memory echo_backpressure_bounds_memory_and_loses_nothing deflate_bomb_is_closed_1009 sigkill_under_load_loses_no_acknowledged_message}

AARCH64_TEST=(cargo test --quiet --locked --no-fail-fast --target aarch64-unknown-linux-gnu)
ARMV7_TEST=(cargo test --quiet --locked --target armv7-unknown-linux-gnueabihf)

test_build() {
    local t
    for t in "${TARGETS[@]}"; do
        case "$t" in
        aarch64-unknown-linux-gnu) "${AARCH64_TEST[@]}" --no-run || return 1 ;;
        armv7-unknown-linux-gnueabihf) "${ARMV7_TEST[@]}" --no-run --lib --test smoke --test chat_protocol || return 1 ;;
        esac
    done
}

test_aarch64() {
    local skip=()
    for t in $AARCH64_SKIP; do skip+=(--skip "$t"); done
    WSCHAT_TEST_RUNNER="$CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER" \
        "${AARCH64_TEST[@]}" -- "${skip[@]}"
}

test_armv7() {
    WSCHAT_TEST_RUNNER="$CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER" \
        "${ARMV7_TEST[@]}" --lib -- \
        --skip chat_history_order_does_not_accumulate_stale_entries &&
    WSCHAT_TEST_RUNNER="$CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER" \
        "${ARMV7_TEST[@]}" --test smoke --test chat_protocol -- \
        echo_round_trip message_goes_to_every_member dm_goes_to_the_recipient
}

need file "apt-get install file"
mkdir -p "$ROOT/target"
case "$MODE" in all | build | smoke)
    : >"$ROOT/target/cross-sizes.txt"
    run_step "release build: ${TARGETS[*]}" build_all ;;
esac
case "$MODE" in all | start | smoke)
    for t in "${TARGETS[@]}"; do
        if [ -x "$(bin_of "$t")" ]; then
            run_step "start $t, /healthz, SIGTERM" healthz "$t"
        else
            echo "$(bin_of "$t") not built (tests/cross.sh build)"
            summary+=("FAILED  start $t: not built"); failed+=("start $t")
        fi
    done ;;
esac
case "$MODE" in test-build)
    run_step "test binaries built for ${TARGETS[*]}" test_build ;;
esac
case "$MODE" in all | test)
    for t in "${TARGETS[@]}"; do
        case "$t" in
        aarch64-unknown-linux-gnu) run_step "cargo test, aarch64 under qemu" test_aarch64 ;;
        armv7-unknown-linux-gnueabihf) run_step "unit tests and a chat round trip, armv7 under qemu" test_armv7 ;;
        esac
    done ;;
esac

echo
case "$MODE" in all | build | smoke) cat "$ROOT/target/cross-sizes.txt" ;; esac
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "cross: ${#failed[@]} failed"
    exit 1
fi
echo "cross: all passed"
