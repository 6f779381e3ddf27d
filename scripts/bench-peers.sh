#!/usr/bin/env bash
# Runs one herald-loadtest scenario against Herald and the peer servers, one after the
# other on the same machine and the same loopback, and writes one table.
#
#   scripts/bench-peers.sh broadcast            # herald nchan pushpin soketi socketio
#   scripts/bench-peers.sh connect
#   scripts/bench-peers.sh chat                 # Herald only (clients publish over Centrifugo)
#   scripts/bench-peers.sh history              # Herald only (server API history)
#   PEERS="herald nchan" SUBSCRIBERS=2000 RATE=500 DURATION=20 scripts/bench-peers.sh broadcast
#
# Installs what is missing (loadtest/peers/install.sh: apt nginx + libnginx-mod-nchan,
# pushpin; npm soketi, socket.io), builds the release binaries, then for each server:
# starts it on a free 127.0.0.1 port (loadtest/peers/peers.sh), runs the scenario with
# --server-pid so its RSS and CPU (with child processes) are sampled, stops it.
# A server that fails to install, start or run is noted in the table, and the others
# still run. Output in OUT (default target/bench/peers-<scenario>-<UTC time>/):
# <server>.{json,md,png} per server and peers.{json,md,png} for all of them.
#
# Environment (defaults): PEERS, WORKERS (2), SOURCE_ADDRS (4), CONCURRENCY (50: pushpin
#   answers about half of 200 simultaneous WebSocket handshakes with 502),
#   broadcast: SUBSCRIBERS (5000), RATE (100 publications/s), DURATION (60 s)
#   chat:      CLIENTS (5000), ROOM_SIZE (10), RATE (1000 publications/s), DURATION (60 s)
#   connect:   CONNECTIONS (10000)
#   history:   CHANNELS (10), HISTORY_LEN (5000), READERS (16), DURATION (30 s)
#   QUIET_WAIT (120): seconds to wait for the machine to be under 25% busy before each server.
#   INSTALL=0 to skip the install step, BUILD=0 to skip building.
set -uo pipefail

SCENARIO=${1:-}
case "$SCENARIO" in
  broadcast | connect) DEFAULT_PEERS="herald nchan pushpin soketi socketio" ;;
  chat | history) DEFAULT_PEERS="herald" ;;
  *)
    echo "usage: $0 broadcast|chat|connect|history" >&2
    exit 2
    ;;
esac
PEERS=${PEERS:-$DEFAULT_PEERS}
WORKERS=${WORKERS:-2}
SOURCE_ADDRS=${SOURCE_ADDRS:-4}
CONCURRENCY=${CONCURRENCY:-50}

cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench/peers-$SCENARIO-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
WORK=$(mktemp -d)
NOTES="$OUT/notes.md"
: >"$NOTES"

# shellcheck source=../loadtest/peers/peers.sh
source loadtest/peers/peers.sh
cleanup() {
  peer_stop
  rm -rf "$WORK"
}
trap cleanup EXIT

if [[ ${BUILD:-1} != 0 ]]; then
  echo "== building release binaries" >&2
  until cargo build --release -p herald -p herald-loadtest >&2; do
    echo "build failed; retrying in 60 s (Ctrl-C to stop)" >&2
    sleep 60
  done
fi
if [[ ${INSTALL:-1} != 0 ]]; then
  for p in $PEERS; do
    [[ $p == herald ]] && continue
    loadtest/peers/install.sh "$p" || echo "- $p: install failed (see the output above)" >>"$NOTES"
  done
fi

LT=target/release/herald-loadtest
RESULTS=()
for p in $PEERS; do
  echo "== $SCENARIO against $p" >&2
  peer_wait_quiet "${QUIET_WAIT:-120}" || echo "- $p: ran while other processes kept the machine busy (the 'other' CPU in its row)" >>"$NOTES"
  if ! peer_start "$p" "$WORK/$p" 2>"$WORK/$p.start.err"; then
    cat "$WORK/$p.start.err" >&2
    echo "- $p: did not start: $(tail -n 3 "$WORK/$p.start.err" | tr '\n' ' ')" >>"$NOTES"
    peer_stop
    continue
  fi
  common=(--server "$p" --url "$PEER_URL" --publish-url "$PEER_PUBLISH_URL"
    --server-pid "$PEER_PID" --workers "$WORKERS" --source-addrs "$SOURCE_ADDRS"
    --concurrency "$CONCURRENCY" --output "$OUT/$p")
  case "$SCENARIO" in
    broadcast)
      args=(broadcast --subscribers "${SUBSCRIBERS:-5000}" --rate "${RATE:-100}" --duration-secs "${DURATION:-60}") ;;
    chat)
      args=(chat --clients "${CLIENTS:-5000}" --room-size "${ROOM_SIZE:-10}" --rate "${RATE:-1000}" --duration-secs "${DURATION:-60}") ;;
    connect)
      args=(connect --connections "${CONNECTIONS:-10000}") ;;
    history)
      args=(history --channels "${CHANNELS:-10}" --history-len "${HISTORY_LEN:-5000}" --readers "${READERS:-16}" --duration-secs "${DURATION:-30}") ;;
  esac
  if env "${PEER_ENV[@]}" "$LT" "${args[@]}" "${common[@]}" >"$WORK/$p.table" 2>"$WORK/$p.err" \
    && [[ -f "$OUT/$p.json" ]]; then
    RESULTS+=("$OUT/$p.json")
  else
    tail -n 20 "$WORK/$p.err" >&2
    echo "- $p: the run failed: $(grep -v '^connecting\|^broadcast\|^chat' "$WORK/$p.err" | tail -n 2 | tr '\n' ' ')" >>"$NOTES"
  fi
  tail -n 3 "$WORK/$p.err" >&2
  cp "$WORK/$p.err" "$OUT/$p.log" 2>/dev/null || true
  cp "$WORK/$p/$p.log" "$OUT/$p.server.log" 2>/dev/null || true
  peer_stop
  sleep 3
done

if [[ ${#RESULTS[@]} -gt 0 ]]; then
  "$LT" report "${RESULTS[@]}" --output "$OUT/peers" \
    --title "$SCENARIO, same machine, loopback ($(nproc) cores)" >/dev/null
fi
{
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), $(rustc --version)"
  if [[ -s "$NOTES" ]]; then
    echo
    echo "Not in the table:"
    cat "$NOTES"
  fi
} >>"$OUT/peers.md"
echo
cat "$OUT/peers.md"
echo
echo "results in $OUT/" >&2
