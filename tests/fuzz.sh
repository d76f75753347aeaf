#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for FUZZ_SECONDS each (default 60).
#
#   tests/fuzz.sh                      every target, 60 s each
#   FUZZ_SECONDS=600 tests/fuzz.sh     longer
#   tests/fuzz.sh frames chat          only these targets
#
# Needs the nightly toolchain and cargo-fuzz; installs them when missing.
# Prints per target the executions and libFuzzer's final coverage (cov: edges,
# ft: features), and ends with "fuzz: N passed, M failed". Exits 1 on any
# crash, build failure or missing tool. New corpus entries stay in
# fuzz/corpus/<target>/ (only seed-* files are committed); crashes are in
# fuzz/artifacts/<target>/.
set -uo pipefail

SECONDS_EACH="${FUZZ_SECONDS:-60}"
ALL_TARGETS=(handshake frames utf8 chat deflate)
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FUZZ_DIR="$ROOT/fuzz"

die() {
    echo "fuzz.sh: ERROR: $*" >&2
    echo "fuzz: 0 passed, ${#TARGETS[@]} failed"
    exit 1
}

if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=("${ALL_TARGETS[@]}")
fi
for t in "${TARGETS[@]}"; do
    [ -f "$FUZZ_DIR/fuzz_targets/$t.rs" ] || die "no fuzz target '$t' (have: ${ALL_TARGETS[*]})"
done
case "$SECONDS_EACH" in
'' | *[!0-9]*) die "FUZZ_SECONDS must be a whole number of seconds, not '$SECONDS_EACH'" ;;
esac

command -v rustup >/dev/null 2>&1 || die "rustup is not installed: cargo-fuzz needs a nightly toolchain through rustup"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal ||
        true
    cargo +nightly --version >/dev/null 2>&1 ||
        die "the nightly toolchain is missing and could not be installed (rustup toolchain install nightly --profile minimal)"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked || true
    cargo fuzz --version >/dev/null 2>&1 ||
        die "cargo-fuzz is missing and could not be installed (cargo install cargo-fuzz --locked)"
fi

cd "$FUZZ_DIR" || die "no fuzz/ directory at $FUZZ_DIR"
echo "fuzz.sh: $(cargo +nightly --version), $(cargo fuzz --version)"
echo "fuzz.sh: building ${TARGETS[*]} (the first build takes several minutes)"
for t in "${TARGETS[@]}"; do
    cargo +nightly fuzz build "$t" || die "building fuzz target '$t' failed"
done

LOG_DIR="$(mktemp -d)"
passed=0
failed=0
failed_names=()
summary=()
for t in "${TARGETS[@]}"; do
    log="$LOG_DIR/$t.log"
    mkdir -p "corpus/$t"
    echo "fuzz.sh: running '$t' for ${SECONDS_EACH}s"
    cargo +nightly fuzz run "$t" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    last="$(grep -E '^#[0-9]+[[:space:]].*cov: ' "$log" | tail -n 1)"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
    ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
    corp="$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")"
    line="$(printf '%-10s execs=%-10s exec/s=%-7s cov=%-6s ft=%-7s corpus=%s' \
        "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")"
    if [ "$rc" -eq 0 ] && grep -q 'DONE' "$log"; then
        passed=$((passed + 1))
        summary+=("PASS $line")
        echo "fuzz.sh: PASS $line"
    else
        failed=$((failed + 1))
        failed_names+=("$t")
        summary+=("FAIL $line (exit $rc)")
        echo "fuzz.sh: FAIL $line (exit $rc); the cause, from $log:" >&2
        grep -A 2 -E 'panicked at|==ERROR|ERROR: libFuzzer|SUMMARY|Test unit written|^error' "$log" >&2 ||
            tail -n 40 "$log" >&2
        for a in artifacts/"$t"/*; do
            [ -e "$a" ] || continue
            echo "fuzz.sh:   reproduce: (cd fuzz && cargo +nightly fuzz run $t $a)" >&2
        done
    fi
done

echo
echo "fuzz.sh: results (${SECONDS_EACH}s per target, logs in $LOG_DIR)"
for s in "${summary[@]}"; do
    echo "  $s"
done
if [ "$failed" -gt 0 ]; then
    echo "fuzz.sh: FAILED targets: ${failed_names[*]}" >&2
fi
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
