#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client against wschat's /echo endpoint.
#
#   tests/autobahn/run.sh [--cases '1.*,2.*'] [--docker] [--tls]
#
# --tls: the server speaks TLS (a self-signed certificate made with openssl
# for the run) and wstest connects to wss://: wstest does not verify
# certificates unless a "hostname" is given in its spec, which we leave out.
#
# Uses `wstest` when it is installed (WSTEST=path, /opt/autobahn/bin/wstest,
# or on PATH; Debian-based machines can install it with
# ../shared/autobahn/install.sh), otherwise Docker's
# crossbario/autobahn-testsuite image. Fails loudly when neither is there.
# Builds and starts the release server itself; the HTML report lands in
# $AUTOBAHN_OUT (default target/autobahn-report). Strict: any case that is not
# OK or INFORMATIONAL fails the run, UNIMPLEMENTED included (the compression
# groups 12 and 13 run against wschat's permessage-deflate).
set -euo pipefail
cd "$(dirname "$0")/../.."

cases='*'
mode=auto
tls=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cases) cases="$2"; shift 2 ;;
    --docker) mode=docker; shift ;;
    --tls) tls=1; shift ;;
    *) echo "usage: $0 [--cases LIST] [--docker] [--tls]" >&2; exit 2 ;;
  esac
done

out="${AUTOBAHN_OUT:-target/autobahn-report}"
case "$out" in /*) ;; *) out="$(pwd)/$out" ;; esac
wstest="${WSTEST:-}"
if [ -z "$wstest" ] && [ "$mode" = auto ]; then
  if [ -x /opt/autobahn/bin/wstest ]; then wstest=/opt/autobahn/bin/wstest
  elif command -v wstest >/dev/null 2>&1; then wstest=$(command -v wstest)
  fi
fi
if [ -z "$wstest" ]; then
  if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    echo "autobahn: FAILED: neither wstest nor a working Docker engine is available." >&2
    echo "  install wstest (../shared/autobahn/install.sh) or Docker, then run again." >&2
    exit 1
  fi
  mode=docker
fi

# WSCHAT_NO_BUILD=1: the release binary is built already (.ci/run builds it
# once for every suite; a cargo call here would wait on the build lock
# while CI cross-compiles).
if [ -z "${WSCHAT_NO_BUILD:-}" ]; then cargo build --release --quiet || exit 1; fi
[ -x target/release/wschat ] || { echo "autobahn: FAILED: target/release/wschat not built" >&2; exit 1; }
port="${AUTOBAHN_PORT:-9001}"
rm -rf "$out" && mkdir -p "$out"
server_args=() scheme=http ws=ws
if [ "$tls" = 1 ]; then
  command -v openssl >/dev/null 2>&1 || { echo "autobahn: FAILED: --tls needs openssl" >&2; exit 1; }
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
  server_args=(--tls-cert "$out/cert.pem" --tls-key "$out/key.pem")
  scheme=https ws=wss
fi
target/release/wschat --addr "127.0.0.1:$port" "${server_args[@]}" > target/autobahn-server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fsk "$scheme://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

spec="$out/fuzzingclient.json"
cases_json=$(printf '%s' "$cases" | python3 -c 'import json,sys; print(json.dumps([c for c in sys.stdin.read().split(",") if c]))')
cat > "$spec" <<JSON
{
  "outdir": "$( [ "$mode" = docker ] && echo /report || echo "$out" )",
  "servers": [{"agent": "wschat", "url": "$ws://127.0.0.1:$port/echo"}],
  "cases": $cases_json,
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON

start=$(date +%s)
if [ "$mode" = docker ]; then
  echo "autobahn: running crossbario/autobahn-testsuite in Docker"
  docker run --rm --network host -v "$out:/report" crossbario/autobahn-testsuite \
    wstest -m fuzzingclient -s /report/fuzzingclient.json > "$out/wstest.log" 2>&1
else
  echo "autobahn: running $wstest"
  (cd "$out" && "$wstest" -m fuzzingclient -s "$spec") > "$out/wstest.log" 2>&1
fi
echo "autobahn: suite took $(( $(date +%s) - start )) s; report: $out/index.html"
python3 tests/autobahn/summarize.py "$out" --agent wschat
