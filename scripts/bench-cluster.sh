#!/usr/bin/env bash
# Cross-node fan-out through Redis versus a single node, at the same load
# (docs/BENCHMARKS.md, "Cluster"): the `broadcast` scenario of herald-loadtest with its
# subscribers on node A and its publisher on node B's HTTP API (`--publish-url`), two
# Herald nodes sharing one redis-server (broker.kind = "redis"); then the same against
# one node (broker.kind = "memory"). Each setup runs twice: once offered MAX_RATE
# publications/s to find the highest rate it sustains (deliveries/s over subscribers),
# then at half of that rate, where the issue's target (p99 publish-to-deliver <= 20 ms)
# applies.
#
#   scripts/bench-cluster.sh
#   SUBSCRIBERS=500 MAX_RATE=2000 DURATION=10 BUILD=0 scripts/bench-cluster.sh
#
# Environment (defaults): SUBSCRIBERS (1000), MAX_RATE (1500), DURATION (15 s per run),
#   WORKERS (2), SOURCE_ADDRS (4), CONCURRENCY (50), OUT
#   (target/bench/cluster-<UTC time>), BUILD=0 to skip the release build; the binaries
#   are taken from $CARGO_TARGET_DIR/release (default target/release).
# Everything listens on 127.0.0.1; every process started here is stopped at the end.
set -uo pipefail

SUBSCRIBERS=${SUBSCRIBERS:-1000}
MAX_RATE=${MAX_RATE:-1500}
DURATION=${DURATION:-15}
WORKERS=${WORKERS:-2}
SOURCE_ADDRS=${SOURCE_ADDRS:-4}
CONCURRENCY=${CONCURRENCY:-50}

cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench/cluster-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()

# shellcheck source=../loadtest/peers/peers.sh
source loadtest/peers/peers.sh
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'cleanup; rm -rf "$WORK"' EXIT

if [[ ${BUILD:-1} != 0 ]]; then
  echo "== building release binaries" >&2
  cargo build --release -p herald -p herald-loadtest >&2 || exit 1
fi
BIN=${CARGO_TARGET_DIR:-target}/release
LT=$BIN/herald-loadtest
SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
KEY=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

# run LABEL RATE WS_PORT PUBLISH_PORT SAMPLED_PID
run() {
  local label=$1 rate=$2 ws=$3 publish=$4 pid=$5
  echo "== $label: $SUBSCRIBERS subscribers, $rate publications/s offered, $DURATION s" >&2
  peer_wait_quiet 20 || echo "- $label: ran while other processes kept the machine busy" >>"$OUT/notes.md"
  env HERALD_LOADTEST_HMAC_SECRET="$SECRET" HERALD_LOADTEST_API_KEY="$KEY" \
    "$LT" broadcast --server herald --url "ws://127.0.0.1:$ws" \
    --publish-url "http://127.0.0.1:$publish" --server-pid "$pid" \
    --subscribers "$SUBSCRIBERS" --rate "$rate" --duration-secs "$DURATION" \
    --workers "$WORKERS" --source-addrs "$SOURCE_ADDRS" --concurrency "$CONCURRENCY" \
    --output "$OUT/$label" >&2 || echo "- $label: herald-loadtest failed" >>"$OUT/notes.md"
  # The report's first column names the setup.
  python3 - "$OUT/$label.json" "$label" <<'EOF'
import json, sys
path, label = sys.argv[1], sys.argv[2]
data = json.load(open(path))
for r in data if isinstance(data, list) else [data]:
    r["server"] = label
json.dump(data, open(path, "w"), indent=1)
EOF
}

# The publication rate the run sustained: deliveries/s over subscribers (the API accepts
# publishes faster than the fan-out delivers them).
achieved() {
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d=d[0] if isinstance(d,list) else d; print(max(2, int(d["deliveries_per_sec"] / int(sys.argv[2]))))' "$1" "$SUBSCRIBERS"
}

: >"$OUT/notes.md"
# One node: subscribers and publisher on the same node.
herald_node_start single || exit 1
run single-max "$MAX_RATE" "$NODE_PORT" "$NODE_PORT" "$NODE_PID"
HALF=$(($(achieved "$OUT/single-max.json") / 2))
run single-half "$HALF" "$NODE_PORT" "$NODE_PORT" "$NODE_PID"
cleanup

# Two nodes over one Redis: subscribers on A, publisher on B.
redis_start || exit 1
herald_node_start a "$REDIS_URL" || exit 1
A_PORT=$NODE_PORT A_PID=$NODE_PID
herald_node_start b "$REDIS_URL" || exit 1
run cluster-max "$MAX_RATE" "$A_PORT" "$NODE_PORT" "$A_PID"
HALF=$(($(achieved "$OUT/cluster-max.json") / 2))
run cluster-half "$HALF" "$A_PORT" "$NODE_PORT" "$A_PID"
cleanup

"$LT" report --output "$OUT/cluster" --title "cluster: $SUBSCRIBERS subscribers, 1 node vs 2 nodes over Redis" \
  "$OUT/single-max.json" "$OUT/single-half.json" "$OUT/cluster-max.json" "$OUT/cluster-half.json" >&2
cat "$OUT/cluster.md"
[[ -s "$OUT/notes.md" ]] && cat "$OUT/notes.md"
exit 0
