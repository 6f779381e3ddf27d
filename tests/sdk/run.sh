#!/usr/bin/env bash
# Runs the official-SDK (centrifuge-js) conformance suite against a Herald binary.
#
#   tests/sdk/run.sh [HERALD_BINARY]        (default: <repo>/target/debug/herald)
#
# Builds nothing. Starts the binary on a free 127.0.0.1 port with herald-sdk.toml,
# waits for /health, runs `node --test` on test/*.test.mjs and exits with its status.
# Extra knobs: HERALD_SDK_TRACE=1 prints every WebSocket frame; HERALD_SDK_LOG=FILE
# keeps the server log (default: a temp file, printed when tests fail).
set -euo pipefail

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SDK_DIR/../.." && pwd)"

BIN="${1:-$REPO_DIR/target/debug/herald}"
case "$BIN" in
  /*) ;;
  *) BIN="$(pwd)/$BIN" ;;
esac
if [ ! -x "$BIN" ]; then
  echo "run.sh: herald binary not found or not executable: $BIN (build it with cargo build)" >&2
  exit 2
fi
command -v node >/dev/null || { echo "run.sh: node is required" >&2; exit 2; }

if [ ! -d "$SDK_DIR/node_modules/centrifuge" ] || [ ! -d "$SDK_DIR/node_modules/ws" ]; then
  echo "run.sh: installing node modules (npm ci)" >&2
  (cd "$SDK_DIR" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi

PORT="$(node -e '
  const s = require("net").createServer();
  s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });
')"
API_KEY="sdk-api-key-$RANDOM$RANDOM"
SECRET="sdk-hmac-secret-$RANDOM$RANDOM"
LOG="${HERALD_SDK_LOG:-$(mktemp -t herald-sdk.XXXXXX.log)}"
STORE_DIR="$(mktemp -d -t herald-sdk-store.XXXXXX)"

SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ -z "${HERALD_SDK_LOG:-}" ]; then rm -f "$LOG"; fi
  rm -rf "$STORE_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

HERALD_HTTP__ADDR="127.0.0.1:$PORT" \
HERALD_API__KEY="$API_KEY" \
HERALD_AUTH__HMAC_SECRET="$SECRET" \
HERALD_STORE__PATH="$STORE_DIR" \
RUST_LOG="${RUST_LOG:-info}" \
  "$BIN" serve --config "$SDK_DIR/herald-sdk.toml" >"$LOG" 2>&1 &
SERVER_PID=$!

ready=""
for _ in $(seq 1 100); do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "run.sh: herald exited during startup; its log:" >&2
    cat "$LOG" >&2
    exit 1
  fi
  if node -e '
    fetch(process.argv[1], { signal: AbortSignal.timeout(1000) })
      .then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1));
  ' "http://127.0.0.1:$PORT/health"; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "run.sh: herald did not answer /health on 127.0.0.1:$PORT; its log:" >&2
  cat "$LOG" >&2
  exit 1
fi

status=0
HERALD_URL="ws://127.0.0.1:$PORT/connection/websocket" \
HERALD_API="http://127.0.0.1:$PORT/api" \
HERALD_API_KEY="$API_KEY" \
HERALD_SECRET="$SECRET" \
  node --test --test-reporter=spec --test-timeout=60000 "$SDK_DIR"/test/*.test.mjs || status=$?

if [ "$status" -ne 0 ] && [ -z "${HERALD_SDK_LOG:-}" ]; then
  echo "---- herald log (last 80 lines) ----" >&2
  tail -n 80 "$LOG" >&2
fi
exit "$status"
