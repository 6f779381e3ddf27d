#!/usr/bin/env bash
# Chaos run with a loss checker (docs/RELIABILITY.md):
#   scripts/chaos.sh [SECONDS]     (default 180; faults stop after SECONDS)
#
# Starts redis-server (append-only file, fsync always), CHAOS_NODES Herald nodes in
# cluster mode sharing it (and one SQLite store directory, for the persisted `log`
# namespace); subscribers: CHAOS_SUBS processes of CHAOS_CLIENTS WebSocket clients each
# (`herald-loadtest chaos sub`) and two processes of CHAOS_SDK_CLIENTS clients each on
# the official JS SDK (tests/sdk/chaos-sub.mjs; one JSON, one Protobuf); one publisher
# process (CHAOS_PUBLISHERS tasks at CHAOS_RATE/s each, server API). Every few seconds
# it injects one fault, in turn: kill -9 a node and restart it, kill -9 Redis and
# restart it, SIGSTOP a random subscriber process for a while then SIGCONT it, SIGTERM
# a node (graceful shutdown, 3001) and restart it. Then it stops the publishers, lets
# the subscribers catch up (the Rust clients resubscribe once more with recovery) and
# runs `herald-loadtest chaos check`, which fails on any lost acknowledged publication
# or silent gap. Everything listens on 127.0.0.1 free ports and is stopped on exit.
#
# Env: CHAOS_NODES=3 CHAOS_SUBS=2 CHAOS_CLIENTS=4 CHAOS_SDK_CLIENTS=2 (0: no node.js)
#      CHAOS_PUBLISHERS=3 CHAOS_RATE=5 CHAOS_FAULT_EVERY=6 (seconds between faults)
#      CHAOS_KEEP=1 (keep the logs)
#      CHAOS_NO_BUILD=1 (use the built binaries) CHAOS_RELEASE=1 (release build)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-180}"
nodes_n="${CHAOS_NODES:-3}"
subs_n="${CHAOS_SUBS:-2}"
clients="${CHAOS_CLIENTS:-4}"
sdk_clients="${CHAOS_SDK_CLIENTS:-2}"
publishers="${CHAOS_PUBLISHERS:-3}"
rate="${CHAOS_RATE:-5}"
every="${CHAOS_FAULT_EVERY:-6}"
target="${CARGO_TARGET_DIR:-$PWD/target}"
profile=debug
build_flags=()
if [ "${CHAOS_RELEASE:-}" = 1 ]; then profile=release; build_flags=(--release); fi

say() { printf '==> chaos: %s\n' "$*"; }

if [ "${CHAOS_NO_BUILD:-}" != 1 ]; then
    say "building herald and herald-loadtest ($profile)"
    cargo build --locked "${build_flags[@]}" -p herald -p herald-loadtest --bin herald --bin herald-loadtest
fi
herald="$target/$profile/herald"
lt="$target/$profile/herald-loadtest"
command -v redis-server >/dev/null || { echo "redis-server not found" >&2; exit 2; }
if [ "$sdk_clients" -gt 0 ]; then
    command -v node >/dev/null || { echo "node not found (or CHAOS_SDK_CLIENTS=0)" >&2; exit 2; }
    if [ ! -d tests/sdk/node_modules/centrifuge ]; then
        say "installing the JS SDK (npm ci in tests/sdk)"
        (cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error)
    fi
fi

tmp="$(mktemp -d -t herald-chaos.XXXXXX)"
mkdir -p "$tmp/redis" "$tmp/store"
declare -A pid=()
cleanup() {
    local k
    for k in "${!pid[@]}"; do kill -CONT "${pid[$k]}" 2>/dev/null || true; done
    for k in "${!pid[@]}"; do kill -TERM "${pid[$k]}" 2>/dev/null || true; done
    for k in "${!pid[@]}"; do wait "${pid[$k]}" 2>/dev/null || true; done
    if [ "${CHAOS_KEEP:-}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    local i
    for i in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

rport="$(free_port)"
start_redis() {
    redis-server --port "$rport" --bind 127.0.0.1 --dir "$tmp/redis" --appendonly yes \
        --appendfsync always --save "" --maxmemory-policy noeviction \
        >>"$tmp/redis.log" 2>&1 &
    pid[redis]=$!
    wait_port "$rport" || { echo "redis did not start" >&2; exit 1; }
}

export HERALD_API__KEY="chaos-key-$RANDOM" HERALD_AUTH__HMAC_SECRET="chaos-secret-$RANDOM"
export HERALD_BROKER__REDIS_URL="redis://127.0.0.1:$rport" RUST_LOG="${RUST_LOG:-warn}"
cat >"$tmp/herald.toml" <<EOF
[http]
workers = 1
shutdown_timeout = "2s"

[client]
# Short, so a stalled client (4-11 s) misses a pong and is disconnected (3012), and a
# small queue, so one that falls behind is disconnected as slow (3008): either way it
# must recover. (At these rates the socket buffers alone absorb an 11 s stall.)
ping_interval = "3s"
pong_timeout = "2s"
outbound_queue_len = 64

[broker]
kind = "redis"
redis_timeout = "1s"

[store]
path = "$tmp/store"

[[namespaces]]
name = "feed"
force_recovery = true
history_size = 100000
history_ttl = "30m"

[[namespaces]]
name = "log"
persist = true
force_recovery = true
EOF

ports=()
for i in $(seq 0 $((nodes_n - 1))); do ports+=("$(free_port)"); done
addrs="$(printf '127.0.0.1:%s,' "${ports[@]}")"; addrs="${addrs%,}"
start_node() {
    local i="$1" tries
    for tries in 1 2 3 4 5 6 7 8 9 10; do
        HERALD_HTTP__ADDR="127.0.0.1:${ports[$i]}" "$herald" serve --config "$tmp/herald.toml" \
            >>"$tmp/node$i.log" 2>&1 &
        pid[node$i]=$!
        if wait_port "${ports[$i]}" && kill -0 "${pid[node$i]}" 2>/dev/null; then return 0; fi
        sleep 0.5
    done
    echo "node $i did not start" >&2; tail -n 20 "$tmp/node$i.log" >&2; exit 1
}

say "redis on $rport, nodes on $addrs, logs in $tmp"
start_redis
for i in $(seq 0 $((nodes_n - 1))); do start_node "$i"; done

channels="feed:a,feed:b,feed:c,log:a,log:b"
subs=()
for s in $(seq 0 $((subs_n - 1))); do
    "$lt" chaos sub --name "s$s" --nodes "$addrs" --channels "$channels" --clients "$clients" \
        --dir "$tmp" >>"$tmp/sub$s.out" 2>&1 &
    pid[sub$s]=$!; subs+=("sub$s")
done
if [ "$sdk_clients" -gt 0 ]; then
    for f in json protobuf; do
        node tests/sdk/chaos-sub.mjs "js-$f" "$tmp" "$addrs" "$channels" "$sdk_clients" "$f" \
            >>"$tmp/js-$f.out" 2>&1 &
        pid[js-$f]=$!; subs+=("js-$f")
    done
fi
sleep 2
"$lt" chaos pub --name p --nodes "$addrs" --channels "$channels" --clients "$publishers" \
    --rate "$rate" --dir "$tmp" >>"$tmp/pub.out" 2>&1 &
pid[pub]=$!

declare -A faults=([node_kill9]=0 [redis_kill9]=0 [client_stall]=0 [node_sigterm]=0)
start=$SECONDS
n=0
while [ $((SECONDS - start)) -lt "$seconds" ]; do
    sleep "$every"
    i=$((RANDOM % nodes_n))
    case $((n % 4)) in
        0)  kill -9 "${pid[node$i]}"; wait "${pid[node$i]}" 2>/dev/null || true
            sleep $((1 + RANDOM % 3)); start_node "$i"; faults[node_kill9]=$((faults[node_kill9] + 1))
            say "$((SECONDS - start))s: kill -9 node $i, restarted" ;;
        1)  kill -9 "${pid[redis]}"; wait "${pid[redis]}" 2>/dev/null || true
            sleep $((1 + RANDOM % 3)); start_redis; faults[redis_kill9]=$((faults[redis_kill9] + 1))
            say "$((SECONDS - start))s: kill -9 redis, restarted" ;;
        2)  s="${subs[$((RANDOM % ${#subs[@]}))]}"; stall=$((4 + RANDOM % 8))
            kill -STOP "${pid[$s]}"; sleep "$stall"; kill -CONT "${pid[$s]}"
            faults[client_stall]=$((faults[client_stall] + 1))
            say "$((SECONDS - start))s: subscriber process $s stalled ${stall}s" ;;
        3)  kill -TERM "${pid[node$i]}"; wait "${pid[node$i]}" 2>/dev/null || true
            start_node "$i"; faults[node_sigterm]=$((faults[node_sigterm] + 1))
            say "$((SECONDS - start))s: SIGTERM node $i, restarted" ;;
    esac
    n=$((n + 1))
done

say "faults: $(for k in "${!faults[@]}"; do printf '%s=%s ' "$k" "${faults[$k]}"; done)"
sleep 2
touch "$tmp/stop-pub"
wait "${pid[pub]}" || { echo "publisher failed" >&2; cat "$tmp/pub.out" >&2; exit 1; }
unset 'pid[pub]'
sleep 2
touch "$tmp/stop"
for s in "${subs[@]}"; do
    wait "${pid[$s]}" || { echo "subscriber $s failed" >&2; cat "$tmp/$s.out" >&2; exit 1; }
    unset "pid[$s]"
done
say "checking ($((SECONDS - start))s after the first fault window began)"
"$lt" chaos check "$tmp" --json "$tmp/result.json"
