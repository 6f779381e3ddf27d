# Shell functions that start and stop one server for herald-loadtest on loopback.
# Sourced by scripts/bench-peers.sh, bench-cluster.sh and loadtest-smoke.sh (and usable
# by hand):
#
#   source loadtest/peers/peers.sh
#   peer_start herald "$WORKDIR"     # sets PEER_PID, PEER_URL, PEER_PUBLISH_URL, PEER_ENV
#   ... herald-loadtest broadcast --server herald --url "$PEER_URL" --server-pid "$PEER_PID" ...
#   peer_stop
#
# Servers: herald (target/release/herald, loadtest/peers/herald/bench.toml),
# nchan (nginx + libnginx-mod-nchan), pushpin (+ origin.js), soketi, socketio
# (node/socketio-server.js). Install them first with loadtest/peers/install.sh.
# Everything listens on 127.0.0.1 ports chosen at random below the ephemeral range.

PEERS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$PEERS_DIR/../.." && pwd)
PEER_PID=""
PEER_EXTRA_PIDS=()

peer_free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((10000 + RANDOM % 20000))
    if ! ss -Hltn "sport = :$p" | grep -q .; then
      echo "$p"
      return 0
    fi
  done
  echo "no free port found" >&2
  return 1
}

# peer_wait_port PORT PID LOG: until something listens on 127.0.0.1:PORT (20 s).
peer_wait_port() {
  local port=$1 pid=$2 log=$3
  for _ in $(seq 1 200); do
    if ss -Hltn "sport = :$port" | grep -q .; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "server exited during start; its log ($log):" >&2
      tail -n 30 "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "nothing listens on port $port after 20 s; log ($log):" >&2
  tail -n 30 "$log" >&2
  return 1
}

# peer_start NAME WORKDIR: starts NAME in the background; sets PEER_PID (the process
# whose tree is sampled), PEER_URL (ws://...), PEER_PUBLISH_URL (http://...) and
# PEER_ENV (extra environment for herald-loadtest: Herald's secrets).
peer_start() {
  local name=$1 work=$2
  mkdir -p "$work"
  local port log
  port=$(peer_free_port) || return 1
  log="$work/$name.log"
  PEER_URL="ws://127.0.0.1:$port"
  PEER_PUBLISH_URL="http://127.0.0.1:$port"
  PEER_ENV=()
  PEER_EXTRA_PIDS=()
  case "$name" in
    herald)
      local secret key
      secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
      key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
      HERALD_HTTP__ADDR="127.0.0.1:$port" HERALD_API__KEY="$key" HERALD_AUTH__HMAC_SECRET="$secret" \
        "$REPO_DIR/target/release/herald" serve --config "$PEERS_DIR/herald/bench.toml" >"$log" 2>&1 &
      PEER_PID=$!
      PEER_ENV=("HERALD_LOADTEST_HMAC_SECRET=$secret" "HERALD_LOADTEST_API_KEY=$key")
      ;;
    nchan)
      [[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]] || { echo "nchan not installed (loadtest/peers/install.sh nchan)" >&2; return 1; }
      mkdir -p "$work/nginx"
      sed -e "s|@WORK@|$work/nginx|g" -e "s|@PORT@|$port|g" "$PEERS_DIR/nginx/nginx.conf.in" >"$work/nginx/nginx.conf"
      nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" >"$log" 2>&1 &
      PEER_PID=$!
      ;;
    pushpin)
      command -v pushpin >/dev/null || { echo "pushpin not installed (loadtest/peers/install.sh pushpin)" >&2; return 1; }
      local origin pub
      origin=$(peer_free_port) || return 1
      pub=$(peer_free_port) || return 1
      PORT=$origin node "${PUSHPIN_ORIGIN:-$PEERS_DIR/pushpin/origin.js}" >"$work/pushpin-origin.log" 2>&1 &
      PEER_EXTRA_PIDS+=($!)
      peer_wait_port "$origin" "${PEER_EXTRA_PIDS[0]}" "$work/pushpin-origin.log" || return 1
      mkdir -p "$work/pushpin/run" "$work/pushpin/log"
      # Debian's pushpin expects a system-wide zurl (its outgoing HTTP client) at
      # /var/run/zurl; this instance runs its own zurl under the runner instead.
      sed -e "s|ipc:///var/run/zurl/|ipc://{rundir}/{ipc_prefix}|" \
        /usr/lib/pushpin/internal.conf >"$work/pushpin/internal.conf"
      # The packaged config with: our run and log directories, ipc instead of fixed tcp
      # ports for its internal sockets, our publish port, less logging (it logs every
      # publish at level 2), and no delivery rate limit (the default message_rate of
      # 2500/s would cap fan-out; see docs/BENCHMARKS.md).
      sed -e "s|^include=.*|include=$work/pushpin/internal.conf|" \
        -e "s|^services=.*|services=condure,zurl,pushpin-proxy,pushpin-handler|" \
        -e "s|^log_level=.*|log_level=1|" \
        -e "s|^rundir=.*|rundir=$work/pushpin/run|" \
        -e "s|^logdir=.*|logdir=$work/pushpin/log|" \
        -e "s|^push_in_spec=.*|push_in_spec=ipc://{rundir}/{ipc_prefix}push-in|" \
        -e "s|^push_in_sub_specs=.*|push_in_sub_specs=ipc://{rundir}/{ipc_prefix}push-in-sub|" \
        -e "s|^command_spec=.*|command_spec=ipc://{rundir}/{ipc_prefix}command|" \
        -e "s|^push_in_http_port=.*|push_in_http_port=$pub|" \
        -e "s|^message_rate=.*|message_rate=10000000|" \
        -e "s|^message_hwm=.*|message_hwm=10000000|" \
        -e "s|^updates_check=.*|updates_check=off|" \
        /etc/pushpin/pushpin.conf >"$work/pushpin/pushpin.conf"
      printf '* 127.0.0.1:%s,over_http\n' "$origin" >"$work/pushpin/routes"
      pushpin --config "$work/pushpin/pushpin.conf" --port "127.0.0.1:$port" --loglevel ${PUSHPIN_LOGLEVEL:-1} --merge-output >"$log" 2>&1 &
      PEER_PID=$!
      PEER_PUBLISH_URL="http://127.0.0.1:$pub"
      peer_wait_port "$pub" "$PEER_PID" "$log" || return 1
      ;;
    soketi)
      [[ -x "$PEERS_DIR/node/node_modules/.bin/soketi" ]] || { echo "soketi not installed (loadtest/peers/install.sh soketi)" >&2; return 1; }
      (cd "$work" && SOKETI_HOST=127.0.0.1 SOKETI_PORT=$port SOKETI_DEFAULT_APP_ID=herald-bench \
        SOKETI_DEFAULT_APP_KEY=herald-bench-key SOKETI_DEFAULT_APP_SECRET=herald-bench-secret \
        SOKETI_METRICS_ENABLED=false exec node "$PEERS_DIR/node/node_modules/@soketi/soketi/bin/server.js" start) >"$log" 2>&1 &
      PEER_PID=$!
      ;;
    socketio)
      [[ -d "$PEERS_DIR/node/node_modules/socket.io" ]] || { echo "socket.io not installed (loadtest/peers/install.sh socketio)" >&2; return 1; }
      PORT=$port node "$PEERS_DIR/node/socketio-server.js" >"$log" 2>&1 &
      PEER_PID=$!
      ;;
    *)
      echo "unknown server $name" >&2
      return 1
      ;;
  esac
  peer_wait_port "$port" "$PEER_PID" "$log" || return 1
  # Let it finish starting before the baseline sample.
  sleep 1
}

# peer_stop: stops the server started last (and its helper processes).
peer_stop() {
  local p
  for p in "$PEER_PID" "${PEER_EXTRA_PIDS[@]}"; do
    [[ -n "$p" ]] || continue
    kill "$p" 2>/dev/null || true
  done
  for p in "$PEER_PID" "${PEER_EXTRA_PIDS[@]}"; do
    [[ -n "$p" ]] || continue
    for _ in $(seq 1 50); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$p" 2>/dev/null || true
  done
  PEER_PID=""
  PEER_EXTRA_PIDS=()
}

# peer_wait_quiet [MAX_SECS]: waits (up to MAX_SECS, default 120) until the machine's
# CPUs are less than 25% busy over 2 s, so that a run does not start while something
# else (a build, another test) is using the cores. Prints how busy it was.
peer_wait_quiet() {
  local max=${1:-120} waited=0 a b busy
  while :; do
    a=($(head -n1 /proc/stat))
    sleep 2
    b=($(head -n1 /proc/stat))
    local tot=0 idle=0 i
    for i in 1 2 3 4 5 6 7 8; do tot=$((tot + b[i] - a[i])); done
    idle=$((b[4] - a[4] + b[5] - a[5]))
    busy=$(( tot > 0 ? 100 * (tot - idle) / tot : 0 ))
    if (( busy < 25 )); then
      echo "machine ${busy}% busy: starting" >&2
      return 0
    fi
    waited=$((waited + 2))
    if (( waited >= max )); then
      echo "warning: machine still ${busy}% busy after ${max} s (other processes); running anyway" >&2
      return 1
    fi
  done
}

# Herald nodes and a redis-server for multi-node runs (scripts/bench-cluster.sh,
# scripts/loadtest-smoke.sh). They read BIN (directory of the herald binary), WORK, KEY
# (API key) and SECRET (token HMAC secret) from the caller, and append each process they
# start to the caller's PIDS array for its cleanup.

# herald_node_start NAME [REDIS_URL]: a node on a free port with loadtest/peers/herald/
# bench.toml and its own store directory, in cluster mode over REDIS_URL if given; sets
# NODE_PORT and NODE_PID.
herald_node_start() {
  local name=$1 redis=${2:-} port
  port=$(peer_free_port) || return 1
  local env=(HERALD_HTTP__ADDR="127.0.0.1:$port" HERALD_API__KEY="$KEY"
    HERALD_AUTH__HMAC_SECRET="$SECRET" HERALD_STORE__PATH="$WORK/$name-store")
  if [[ -n $redis ]]; then
    env+=(HERALD_BROKER__KIND=redis HERALD_BROKER__REDIS_URL="$redis")
  fi
  env "${env[@]}" "$BIN/herald" serve --config "$PEERS_DIR/herald/bench.toml" \
    >"$WORK/$name.log" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  peer_wait_port "$port" "$NODE_PID" "$WORK/$name.log" || return 1
  NODE_PORT=$port
}

# redis_start: a redis-server without persistence on a free port; sets REDIS_URL.
redis_start() {
  local port pid
  port=$(peer_free_port) || return 1
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK" --logfile "$WORK/redis.log" &
  pid=$!
  PIDS+=("$pid")
  peer_wait_port "$port" "$pid" "$WORK/redis.log" || return 1
  REDIS_URL="redis://127.0.0.1:$port"
}
