#!/usr/bin/env bash
# Profiles Herald's publish and fan-out path under load with valgrind's callgrind (this
# machine's perf cannot count instructions: `perf stat -e instructions true` says
# "not supported"), and prints the functions with the highest inclusive and self cost.
#
#   scripts/bench-profile.sh broadcast     # 500 subscribers of one channel, 50 publications/s, 20 s
#   scripts/bench-profile.sh chat          # 500 clients in rooms of 10, 250 publications/s, 20 s
#
# Environment: CLIENTS, RATE, DURATION, OUT (default target/bench/profile-<scenario>-<time>),
# HERALD_BIN (default target/release/herald: another build to compare against).
# Callgrind slows Herald down 20-50 times, so the load is far below the benchmarks';
# the profile shows where instructions go per publication and per delivery, not
# throughput. Loopback only.
set -euo pipefail

SCENARIO=${1:-broadcast}
cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench/profile-$SCENARIO-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
[[ ${BUILD:-1} == 0 ]] || cargo build --release -p herald -p herald-loadtest >&2

# shellcheck source=../loadtest/peers/peers.sh
source loadtest/peers/peers.sh
PORT=$(peer_free_port)
SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
KEY=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
HERALD_HTTP__ADDR="127.0.0.1:$PORT" HERALD_API__KEY="$KEY" HERALD_AUTH__HMAC_SECRET="$SECRET" \
  valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" --dump-instr=no \
  "${HERALD_BIN:-target/release/herald}" serve --config loadtest/peers/herald/bench.toml >"$OUT/herald.log" 2>&1 &
VG=$!
trap 'kill $VG 2>/dev/null || true' EXIT
peer_wait_port "$PORT" "$VG" "$OUT/herald.log"
sleep 2

export HERALD_LOADTEST_HMAC_SECRET=$SECRET HERALD_LOADTEST_API_KEY=$KEY
common=(--url "ws://127.0.0.1:$PORT" --workers 1 --source-addrs 1 --concurrency 20
  --connect-timeout-secs 60 --output "$OUT/load")
case "$SCENARIO" in
  broadcast)
    target/release/herald-loadtest broadcast "${common[@]}" --subscribers "${CLIENTS:-500}" \
      --rate "${RATE:-50}" --duration-secs "${DURATION:-20}" ;;
  chat)
    target/release/herald-loadtest chat "${common[@]}" --clients "${CLIENTS:-500}" --room-size 10 \
      --rate "${RATE:-250}" --duration-secs "${DURATION:-20}" ;;
  *) echo "usage: $0 broadcast|chat" >&2; exit 2 ;;
esac

# SIGTERM: Herald shuts down cleanly and callgrind writes its profile.
kill -TERM $VG
wait $VG || true
trap - EXIT
callgrind_annotate --inclusive=yes "$OUT/callgrind.out" 2>/dev/null | head -n 60 >"$OUT/inclusive.txt"
callgrind_annotate "$OUT/callgrind.out" 2>/dev/null | head -n 60 >"$OUT/self.txt"
echo "== inclusive" && cat "$OUT/inclusive.txt"
echo "== self" && cat "$OUT/self.txt"
echo "profile in $OUT/callgrind.out" >&2
