#!/usr/bin/env bash
# /metrics validated by Prometheus's own linter: the release server with
# --metrics-addr, some chat and echo traffic from wschat-bench, then
# `promtool check metrics` on the scrape (the text format's syntax, HELP and
# TYPE lines, counter and unit naming). The values themselves are checked by
# `cargo test --test metrics`.
#
# Needs: promtool (Debian's `prometheus` package), curl, a release build
# (`cargo build --release`). A missing tool is an error, never a skip.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
die() { echo "promtool.sh: ERROR: $*" >&2; exit 1; }
command -v promtool >/dev/null 2>&1 || die "promtool not found: apt-get install prometheus"
command -v curl >/dev/null 2>&1 || die "curl not found: apt-get install curl"
# WSCHAT_NO_BUILD=1: built already (.ci/run builds the release binaries once).
if [ -z "${WSCHAT_NO_BUILD:-}" ]; then
    cargo build --release --quiet --bin wschat --bin wschat-bench || die "cargo build --release failed"
fi
for b in wschat wschat-bench; do [ -x "target/release/$b" ] || die "target/release/$b not built"; done

PORT=$((20000 + RANDOM % 20000))
MPORT=$((PORT + 1))
data=$(mktemp -d)
log="$ROOT/target/promtool-server.log"
target/release/wschat --addr "127.0.0.1:$PORT" --metrics-addr "127.0.0.1:$MPORT" \
    --data-dir "$data" --rate-burst 0 >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; die "the server did not start"; }
    sleep 0.1
done
target/release/wschat-bench broadcast --url "ws://127.0.0.1:$PORT/ws" --receivers 20 \
    --duration 1s --warmup 200ms --drain 500ms >/dev/null || die "wschat-bench broadcast failed"
target/release/wschat-bench echo --url "ws://127.0.0.1:$PORT/echo" --duration 1s --warmup 200ms \
    >/dev/null || die "wschat-bench echo failed"
scrape="$ROOT/target/metrics.txt"
curl -fs "http://127.0.0.1:$MPORT/metrics" >"$scrape" || die "no answer on /metrics"
grep -q '^wschat_messages_out_total{endpoint="chat"} [1-9]' "$scrape" || { cat "$scrape"; die "no chat traffic counted"; }
promtool check metrics <"$scrape" || { cat "$scrape"; die "promtool check metrics found problems"; }
echo "promtool check metrics: $(grep -vc '^#' "$scrape") samples, no problems"

# The Grafana dashboard's queries, as recording rules: `promtool check
# rules` parses each PromQL expression (Grafana's variables replaced).
command -v python3 >/dev/null 2>&1 || die "python3 not found: apt-get install python3"
rules="$ROOT/target/grafana-rules.yml"
python3 - "$ROOT/docs/grafana-wschat.json" >"$rules" <<'PY' || die "cannot read docs/grafana-wschat.json"
import json, sys
d = json.load(open(sys.argv[1]))
print("groups:\n- name: grafana\n  rules:")
n = 0
for p in d["panels"]:
    for t in p["targets"]:
        e = t["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*")
        n += 1
        print(f"  - record: dashboard:q{n}\n    expr: {json.dumps(e)}")
PY
promtool check rules "$rules" || die "a query of docs/grafana-wschat.json does not parse"
# Every metric the dashboard names is served.
for m in $(grep -o '\(wschat\|process\)_[a-z_]*' docs/grafana-wschat.json | sort -u); do
    grep -q "^$m" "$scrape" || die "docs/grafana-wschat.json uses $m, which /metrics does not serve"
done
echo "promtool: 2 passed, 0 failed"
