#!/usr/bin/env bash
# Every herald-loadtest scenario for a few seconds at tiny scale against Herald (debug
# build), each result checked: the load tool, its protocol adapter and its result
# accounting stay working between benchmark runs. Part of scripts/test.sh. It measures
# nothing: figures come from the benchmark scripts (docs/BENCHMARKS.md).
#
#   scripts/loadtest-smoke.sh
#
# Scenarios: idle, connect, broadcast, chat, history on one node; cluster (broadcast with
# subscribers on node A and publishes through node B, two nodes over a redis-server).
# Everything listens on 127.0.0.1 free ports and is stopped at the end.
set -uo pipefail

cd "$(dirname "$0")/.."
BIN=${CARGO_TARGET_DIR:-target}/debug
LT=$BIN/herald-loadtest
WORK=$(mktemp -d)
PIDS=()
# shellcheck source=../loadtest/peers/peers.sh
source loadtest/peers/peers.sh
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --locked -p herald -p herald-loadtest || exit 1
SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
KEY=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export HERALD_LOADTEST_HMAC_SECRET=$SECRET HERALD_LOADTEST_API_KEY=$KEY

failed=0
# check NAME JSON PYTHON_EXPRESSION...: every expression over the result `r` must hold.
check() {
  local name=$1 json=$2
  shift 2
  if python3 - "$json" "$@" <<'PY'; then
import json, sys
r = json.load(open(sys.argv[1]))
if isinstance(r, list):
    r = r[0]
bad = [e for e in sys.argv[2:] if not eval(e, {}, {"r": r})]
for e in bad:
    print(f"  failed: {e}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
    echo "ok: $name"
  else
    echo "FAILED: $name ($json)" >&2
    failed=1
  fi
}

# run NAME ARGS...: one scenario; its result lands in $WORK/NAME.json.
run() {
  local name=$1
  shift
  echo "== $name" >&2
  if ! "$LT" "$@" --workers 2 --source-addrs 0 --output "$WORK/$name" >"$WORK/$name.out" 2>&1; then
    echo "FAILED: $name exited with an error" >&2
    tail -n 20 "$WORK/$name.out" >&2
    failed=1
    return 1
  fi
}

herald_node_start single || exit 1
URL=ws://127.0.0.1:$NODE_PORT/connection/websocket
SINGLE_PID=$NODE_PID

# idle writes its JSON to --output as given (not BASE.json).
if "$LT" idle --url "$URL" --connections 60 --workers 2 --source-addrs 0 --settle-secs 2 \
  --server-pid "$SINGLE_PID" --metrics-url "http://127.0.0.1:$NODE_PORT/metrics" \
  --output "$WORK/idle.json" >"$WORK/idle.out" 2>&1; then
  check idle "$WORK/idle.json" 'r["connected"] == 60' 'r["connect_errors"] == 0' \
    'r["open_at_sample"] == 60' 'r["rss_bytes_per_connection"] > 0'
else
  echo "FAILED: idle exited with an error" >&2
  tail -n 20 "$WORK/idle.out" >&2
  failed=1
fi

run connect connect --url "$URL" --connections 200 --channels 5 --hold-secs 1 \
  --server-pid "$SINGLE_PID" &&
  check connect "$WORK/connect.json" 'r["connected"] == 200' 'r["connect_errors"] == 0' \
    'r["connects_per_sec"] > 0' 'r["connect_latency"]["count"] == 200'

run broadcast broadcast --url "$URL" --subscribers 50 --rate 20 --duration-secs 3 \
  --settle-secs 1 --server-pid "$SINGLE_PID" &&
  check broadcast "$WORK/broadcast.json" 'r["connected"] == 50' 'r["published"] >= 50' \
    'r["publish_errors"] == 0' 'r["deliveries"] == r["deliveries_expected"] == r["published"] * 50' \
    'r["latency"]["count"] == r["deliveries"]' 'r["dropped"] == 0' \
    'r["server_stats"]["rss_peak_bytes"] > 0'

run chat chat --url "$URL" --clients 40 --room-size 10 --rate 20 --duration-secs 3 \
  --settle-secs 1 &&
  check chat "$WORK/chat.json" 'r["connected"] == 40' 'r["published"] > 0' \
    'r["publish_errors"] == 0' 'r["deliveries"] == r["published"] * 10' \
    'r["latency"]["count"] == r["deliveries"]'

run history history --url "$URL" --channels 2 --history-len 200 --prefix hist:smoke \
  --readers 2 --page 50 --duration-secs 2 &&
  check history "$WORK/history.json" 'r["extra"]["kept"] == 200' 'r["published"] > 0' \
    'r["publish_errors"] == 0' 'r["latency"]["count"] == r["published"]'

# cluster: subscribers on node A, publications through node B's API, over Redis.
redis_start || exit 1
herald_node_start a "$REDIS_URL" || exit 1
A_PORT=$NODE_PORT
herald_node_start b "$REDIS_URL" || exit 1
run cluster broadcast --url "ws://127.0.0.1:$A_PORT/connection/websocket" \
  --publish-url "http://127.0.0.1:$NODE_PORT" --subscribers 40 --rate 20 --duration-secs 3 \
  --settle-secs 1 --channel smoke-cluster &&
  check cluster "$WORK/cluster.json" 'r["connected"] == 40' 'r["published"] >= 50' \
    'r["publish_errors"] == 0' 'r["deliveries"] == r["published"] * 40'

if [[ $failed != 0 ]]; then
  echo "load tool smoke run failed; logs were in $WORK (removed)" >&2
  for f in "$WORK"/*.log; do echo "--- $f" >&2; tail -n 15 "$f" >&2; done
  exit 1
fi
echo "load tool smoke run: every scenario ran and its result checked out"
