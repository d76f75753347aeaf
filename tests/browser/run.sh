#!/usr/bin/env bash
# Browser end-to-end test of the web client: real Chromium, real server.
#
#   tests/browser/run.sh [--tls]
#
# --tls: the same test over https and wss, with a self-signed certificate
# made by openssl for the run (Chromium runs with --ignore-certificate-errors).
#
# Env: WSCHAT_BIN  server binary (default target/release/wschat)
#      WSCHAT_ARGS extra server flags (e.g. --static-dir static with a debug build)
#      KEEP_GOING  set: carry on after a failed check
#      WSCHAT_CMD  a whole server command instead of WSCHAT_BIN (`--addr 127.0.0.1:PORT` is appended)
#      CHROMIUM    browser (default /usr/bin/chromium)
#      ARTIFACTS   screenshots and server log (default ci-logs/browser)
# The node script owns the server process: it starts it on a free port, kills
# and restarts it mid-test, and stops it at the end.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

fail() { echo "browser: ERROR: $*" >&2; echo "browser: 0 passed, 1 failed"; exit 1; }

tls=0
case "${1:-}" in
  --tls) tls=1 ;;
  "") ;;
  *) echo "usage: $0 [--tls]" >&2; exit 2 ;;
esac

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] || fail "Chromium not found at $CHROMIUM (install it: apt-get install -y chromium, or set CHROMIUM)"
command -v node >/dev/null 2>&1 || fail "node not found on PATH (install Node.js 18 or newer)"
command -v npm >/dev/null 2>&1 || fail "npm not found on PATH"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 18 ] || fail "node $(node --version) is too old: need 18 or newer (global fetch)"

if [ -z "${WSCHAT_CMD:-}" ]; then
  WSCHAT_BIN="${WSCHAT_BIN:-target/release/wschat}"
  [ -x "$WSCHAT_BIN" ] || fail "server binary $WSCHAT_BIN not found or not executable (cargo build --release, or set WSCHAT_BIN)"
  export WSCHAT_BIN
fi

if [ ! -d "$here/node_modules/playwright-core" ]; then
  echo "browser: installing playwright-core (npm ci)"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error) || fail "npm ci failed in tests/browser"
fi

export CHROMIUM
export ARTIFACTS="${ARTIFACTS:-ci-logs/browser}"
mkdir -p "$ARTIFACTS"

if [ "$tls" = 1 ]; then
  command -v openssl >/dev/null 2>&1 || fail "--tls needs openssl"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$ARTIFACTS/key.pem" -out "$ARTIFACTS/cert.pem" 2>/dev/null || fail "openssl req failed"
  export WSCHAT_TLS_CERT="$ARTIFACTS/cert.pem" WSCHAT_TLS_KEY="$ARTIFACTS/key.pem"
  # node's own fetch (the health check) meets the self-signed certificate too.
  export NODE_TLS_REJECT_UNAUTHORIZED=0
fi

node "$here/chat.test.mjs" &
pid=$!
# The node script kills its server on exit; this trap covers our own interruption.
trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM
set +e
wait "$pid"
rc=$?
set -e
exit "$rc"
