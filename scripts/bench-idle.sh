#!/usr/bin/env bash
# Idle-connection benchmark: server memory per idle, subscribed WebSocket connection.
#
# Builds release binaries, starts Herald on a free loopback port with a fresh secret,
# opens CONNECTIONS idle clients with herald-loadtest (spread over WORKERS processes),
# prints the result and stops the server. Loopback only.
#
#   scripts/bench-idle.sh                      # 10,000 connections, 2 workers
#   CONNECTIONS=2000 SETTLE=5 scripts/bench-idle.sh
#
# Environment: CONNECTIONS (10000), WORKERS (2), SOURCE_ADDRS (2: bind clients to
# 127.0.0.2..), CONCURRENCY (200), SETTLE seconds before sampling (30: longer than one
# 25 s ping interval), OUT (JSON result; default target/bench/idle-<time>.json).
set -euo pipefail

CONNECTIONS=${CONNECTIONS:-10000}
WORKERS=${WORKERS:-2}
SOURCE_ADDRS=${SOURCE_ADDRS:-2}
CONCURRENCY=${CONCURRENCY:-200}
SETTLE=${SETTLE:-30}

cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench/idle-$(date -u +%Y%m%dT%H%M%SZ).json}
mkdir -p "$(dirname "$OUT")"

echo "== building release binaries" >&2
cargo build --release -p herald -p herald-loadtest >&2

# A free port below the ephemeral range, so it cannot collide with client ports.
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((10000 + RANDOM % 20000))
    if ! ss -Hltn "sport = :$p" | grep -q .; then
      echo "$p"
      return 0
    fi
  done
  echo "no free port found" >&2
  return 1
}

PORT=$(free_port)
SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
API_KEY=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
WORK=$(mktemp -d)
SERVER_PID=""

cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== starting herald on 127.0.0.1:$PORT" >&2
HERALD_HTTP__ADDR="127.0.0.1:$PORT" \
  HERALD_API__KEY="$API_KEY" \
  HERALD_AUTH__HMAC_SECRET="$SECRET" \
  target/release/herald serve >"$WORK/herald.log" 2>&1 &
SERVER_PID=$!

for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "herald exited during start:" >&2
    cat "$WORK/herald.log" >&2
    exit 1
  fi
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null

# Let the freshly started server settle before the baseline sample.
sleep 2

echo "== idle scenario: $CONNECTIONS connections, $WORKERS workers, $SOURCE_ADDRS source addresses" >&2
HERALD_LOADTEST_HMAC_SECRET="$SECRET" target/release/herald-loadtest idle \
  --url "ws://127.0.0.1:$PORT/connection/websocket" \
  --connections "$CONNECTIONS" \
  --workers "$WORKERS" \
  --source-addrs "$SOURCE_ADDRS" \
  --concurrency "$CONCURRENCY" \
  --settle-secs "$SETTLE" \
  --server-pid "$SERVER_PID" \
  --metrics-url "http://127.0.0.1:$PORT/metrics" \
  --output "$OUT" >"$WORK/row.md" || rc=$?

echo
echo "| connections | baseline RSS | RSS at N | bytes/connection | connect errors |"
echo "|---|---|---|---|---|"
cat "$WORK/row.md"
echo
if [[ -f "$OUT" ]]; then
  echo "result: $OUT"
  cat "$OUT"
fi
exit "${rc:-0}"
