#!/usr/bin/env bash
# Browser end-to-end test of the web client: real Chromium, real server.
#
#   tests/browser/run.sh
#
# Env: WSCHAT_BIN  server binary (default target/release/wschat)
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

node "$here/chat.test.mjs" &
pid=$!
# The node script kills its server on exit; this trap covers our own interruption.
trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM
set +e
wait "$pid"
rc=$?
set -e
exit "$rc"
