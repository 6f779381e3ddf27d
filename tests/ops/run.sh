#!/usr/bin/env bash
# Operations checks: Grafana dashboards, Prometheus alerts, /metrics, docker-compose
# wiring and the OpenAPI description, against a live Herald.
#
#   tests/ops/run.sh HERALD_BINARY
#
# 1. dashboards validate against Grafana's schema (validate_dashboards.py);
# 2. promtool check rules / test rules / check config on deploy/prometheus/;
# 3. docker-compose.yml: `docker-compose config` and check_compose.py;
# 4. starts, on free 127.0.0.1 ports, a redis-server, an in-process Kafka (librdkafka's
#    mock cluster, `kafka_demo broker`), the fake APNs and FCM (`push_fakes`), two nodes
#    of HERALD_BINARY in cluster mode using all three (Redis broker and presence, one
#    Kafka consumer group with a dead-letter topic, egress, push; a shared store
#    directory, as on one host in docs/CLUSTER.md), and a real Prometheus (1 s scrapes of
#    both, alerts.yml loaded); runs load.py (WebSocket clients, server API, chat with
#    offline members, pushes; spread over both nodes, so rooms span them) and a Kafka
#    producer; check_panels.py then queries every panel of every dashboard through
#    Prometheus, for All and for each node on its own: each must return data; every
#    rule evaluates; check_activity.py checks the counts that prove each component
#    worked (series at zero from start-up would let a panel pass on nothing);
# 5. promtool check metrics on the first node's /metrics after the load;
# 6. GET /api/openapi.json is docs/openapi.yaml; schemathesis runs the spec against the
#    first node: no 5xx, every response as documented;
# 7. the fake providers saw no request that breaks Apple's or Google's rules.
#
# kafka_demo and push_fakes are examples of this crate, looked for next to the binary
# (DIR/examples/ for DIR/herald; `cargo test` and `cargo build --examples` build them) or
# in OPS_EXAMPLES_DIR. The run fails when one is missing: every panel is checked, none
# is skipped.
#
# Installs what it needs: Debian packages prometheus (promtool), redis-server and
# docker-compose (used only to validate the file; no Docker engine is needed), and tests/ops/.venv
# from requirements.txt. Everything listens on 127.0.0.1 and is stopped on exit.
# OPS_SCHEMATHESIS_SEED overrides the fixed seed; OPS_KEEP=1 keeps the temp dir.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${1:?usage: tests/ops/run.sh HERALD_BINARY}"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
[ -x "$bin" ] || { echo "run.sh: $bin is not an executable Herald binary" >&2; exit 2; }

step() { printf '\n--> ops: %s\n' "$*"; }

# --- prerequisites -----------------------------------------------------------------
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    step "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
venv="$here/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    step "creating $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" >"$stamp"
fi
py="$venv/bin/python"

# --- static checks -----------------------------------------------------------------
step "dashboards: Grafana schema and house rules"
"$py" "$here/validate_dashboards.py"

step "alerts: promtool check rules, test rules, check config"
promtool check rules "$repo/deploy/prometheus/alerts.yml"
(cd "$repo/deploy/prometheus" && promtool test rules alerts.test.yml)
promtool check config "$repo/deploy/prometheus/prometheus.yml"

step "docker-compose.yml: schema and wiring"
(cd "$repo" && docker-compose -f docker-compose.yml config -q)
echo "docker-compose config: ok"
"$py" "$here/check_compose.py"

# --- live checks -------------------------------------------------------------------
tmp="$(mktemp -d -t herald-ops.XXXXXX)"
pids=()
cleanup() {
    local i
    # Newest first, each gone before the next: the load stops before Herald, and Herald
    # before the Redis, Kafka and fakes it uses.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    if [ "${OPS_KEEP:-}" = 1 ]; then echo "ops: kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # URL WHAT PID LOG
    for _ in $(seq 1 150); do
        curl -fs "$1" >/dev/null 2>&1 && return 0
        kill -0 "$3" 2>/dev/null || { echo "$2 exited; its log:"; cat "$4"; return 1; }
        sleep 0.2
    done
    echo "$2 did not answer $1; its log:"; tail -n 50 "$4"; return 1
}
show_logs() {
    local f
    for f in herald herald2 load kafka-produce push kafka redis; do
        [ -f "$tmp/$f.log" ] || continue
        echo "--- $f log (tail) ---"; tail -n 30 "$tmp/$f.log"
    done
}

hport="$(free_port)"
hport2="$(free_port)"
pport="$(free_port)"
rport="$(free_port)"
key="ops-key-$RANDOM$RANDOM"
secret="ops-secret-$RANDOM$RANDOM"
base="http://127.0.0.1:$hport"

# Kafka and push need the two helpers built with Herald
# (`cargo build --examples`, or `cargo test`, which builds them too). None is optional:
# without them the dependencies and push dashboards would have nothing to show, and
# this check must fail rather than pass on fewer panels.
examples="${OPS_EXAMPLES_DIR:-$(dirname "$bin")/examples}"
for helper in kafka_demo push_fakes; do
    [ -x "$examples/$helper" ] || {
        echo "run.sh: $examples/$helper is missing: build it with 'cargo build --example $helper'" \
             "(or set OPS_EXAMPLES_DIR)" >&2
        exit 2
    }
done

step "starting redis-server on 127.0.0.1:$rport (cluster mode broker and presence)"
redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly no --daemonize no \
    --dir "$tmp" >"$tmp/redis.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$rport") 2>/dev/null && break
    sleep 0.1
done

step "starting an in-process Kafka (librdkafka's mock cluster, examples/kafka_demo.rs)"
"$examples/kafka_demo" broker --brokers 1 --topic herald.commands:3 --topic herald.dlq:1 \
    --topic herald.publications:3 >"$tmp/kafka.out" 2>"$tmp/kafka.log" &
kpid=$!
pids+=("$kpid")
for _ in $(seq 1 100); do [ -s "$tmp/kafka.out" ] && break; sleep 0.1; done
kafka="$(head -n 1 "$tmp/kafka.out")"
[ -n "$kafka" ] || { echo "the mock Kafka printed no bootstrap servers:"; cat "$tmp/kafka.log"; exit 1; }
echo "Kafka bootstrap servers: $kafka"

step "starting fake APNs and FCM (tests/fakes via examples/push_fakes.rs)"
"$examples/push_fakes" "$tmp/push" >"$tmp/push.env" 2>"$tmp/push.log" &
fpid=$!
pids+=("$fpid")
for _ in $(seq 1 100); do grep -qx ready "$tmp/push.env" 2>/dev/null && break; sleep 0.1; done
grep -qx ready "$tmp/push.env" || { echo "push_fakes did not start:"; cat "$tmp/push.log"; exit 1; }
push_env=()
while IFS= read -r line; do
    case "$line" in HERALD_PUSH__*=*) push_env+=("$line") ;; esac
done <"$tmp/push.env"

# Two nodes of one cluster: they share the Redis, the Kafka consumer group and, as on one
# host in docs/CLUSTER.md, the store directory (persisted namespaces; push devices and
# the push queue are in the Redis).
# A short queue and write timeout so the slow client of load.py is cut off quickly;
# short push backoffs so that the fakes' 503 tokens exhaust their attempts in the run.
start_herald() { # PORT NAME
    env HERALD_HTTP__ADDR="127.0.0.1:$1" HERALD_API__KEY="$key" HERALD_AUTH__HMAC_SECRET="$secret" \
        HERALD_STORE__PATH="$tmp/store" HERALD_CLIENT__OUTBOUND_QUEUE_LEN=16 HERALD_CLIENT__WRITE_TIMEOUT=2s \
        HERALD_BROKER__KIND=redis HERALD_BROKER__REDIS_URL="redis://127.0.0.1:$rport" \
        HERALD_KAFKA__BROKERS="$kafka" HERALD_KAFKA__INGEST_ENABLED=true \
        HERALD_KAFKA__TOPICS=herald.commands HERALD_KAFKA__DLQ_TOPIC=herald.dlq \
        HERALD_KAFKA__EGRESS_ENABLED=true HERALD_KAFKA__EGRESS_TOPIC=herald.publications \
        HERALD_PUSH__BACKOFF_MIN=100ms HERALD_PUSH__BACKOFF_MAX=300ms HERALD_PUSH__MAX_ATTEMPTS=3 \
        "${push_env[@]}" RUST_LOG=warn \
        "$bin" serve >"$tmp/$2.log" 2>&1 &
}
step "starting two Herald nodes in cluster mode on 127.0.0.1:$hport and :$hport2 (Redis, Kafka ingest and egress, push)"
# One after the other: two processes opening the same new SQLite store at once race on
# its migrations ("database is locked").
start_herald "$hport" herald
hpid=$!
pids+=("$hpid")
wait_http "$base/health" herald "$hpid" "$tmp/herald.log"
start_herald "$hport2" herald2
hpid2=$!
pids+=("$hpid2")
wait_http "http://127.0.0.1:$hport2/health" herald2 "$hpid2" "$tmp/herald2.log"

step "starting Prometheus on 127.0.0.1:$pport (scraping every second)"
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $repo/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: herald
    static_configs:
      - targets: ["127.0.0.1:$hport", "127.0.0.1:$hport2"]
EOF
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
    --web.listen-address="127.0.0.1:$pport" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
ppid=$!
pids+=("$ppid")
wait_http "http://127.0.0.1:$pport/-/ready" prometheus "$ppid" "$tmp/prometheus.log"

step "load: WebSocket clients, server API calls and pushes (load.py, at most 240 s)"
"$py" -u "$here/load.py" --ws "ws://127.0.0.1:$hport/connection/websocket" --api "$base" \
    --ws "ws://127.0.0.1:$hport2/connection/websocket" --api "http://127.0.0.1:$hport2" \
    --key "$key" --secret "$secret" --duration 240 >"$tmp/load.log" 2>&1 &
pids+=("$!")

step "load: Kafka commands to herald.commands (valid ones, and some for the dead-letter topic)"
(
    child=""
    trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; exit 0' TERM
    produce() { "$examples/kafka_demo" produce --brokers "$kafka" --topic herald.commands "$@" & child=$!; wait "$child" || true; }
    for i in $(seq 1 120); do
        produce --channel "chat:kafka$((i % 3))" --text "from kafka $i" --count 5
        # Not JSON: herald_kafka_records_failed_total{kind="invalid"} and a dead letter.
        [ $((i % 3)) != 0 ] || produce --channel "chat:kafka0" --raw "not a command $i"
        sleep 1
    done
) >"$tmp/kafka-produce.log" 2>&1 &
pids+=("$!")

step "every dashboard panel returns data from Prometheus"
"$py" "$here/check_panels.py" --prometheus "http://127.0.0.1:$pport" --rate-interval 10s --timeout 120 --nodes 2 \
    || { show_logs; exit 1; }
grep -E 'slow client closed|load:' "$tmp/load.log" | tail -n 3

step "the load went through Redis, the store, Kafka and push on every node"
"$py" "$here/check_activity.py" --prometheus "http://127.0.0.1:$pport" --nodes 2 --timeout 60 \
    || { show_logs; exit 1; }

step "promtool check metrics on Herald's /metrics"
curl -fsS "$base/metrics" >"$tmp/metrics.txt"
promtool check metrics <"$tmp/metrics.txt"
echo "promtool check metrics: ok ($(grep -c '^herald_' "$tmp/metrics.txt") samples)"

step "GET /api/openapi.json serves docs/openapi.yaml"
curl -fsS "$base/api/openapi.json" >"$tmp/openapi.json" \
    || { echo "GET /api/openapi.json failed: is the route wired in src/app.rs?"; exit 1; }
"$py" - "$repo/docs/openapi.yaml" "$tmp/openapi.json" <<'EOF'
import json, sys, yaml
spec = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
served = json.load(open(sys.argv[2], encoding="utf-8"))
if served != spec:
    sys.exit("the served document differs from docs/openapi.yaml")
print(f"openapi.json: ok ({len(spec['paths'])} paths)")
EOF

step "schemathesis: docs/openapi.yaml against the live Herald"
# Left out, on purpose: negative_data_rejection (Herald answers a JSON body with wrong
# fields with 200 and an error object, as Centrifugo does; the spec says so) and
# unsupported_method (actix answers 404, not 405, for a method a path does not take).
(cd "$tmp" && "$venv/bin/schemathesis" run "$repo/docs/openapi.yaml" --url "$base" \
    --header "X-API-Key: $key" \
    --checks all --exclude-checks negative_data_rejection,unsupported_method \
    --max-examples 100 --seed "${OPS_SCHEMATHESIS_SEED:-20261121}" \
    --generation-database none --no-color) || { show_logs; exit 1; }

for p in "$hpid" "$hpid2"; do
    kill -0 "$p" 2>/dev/null || { echo "a herald node died during the checks"; show_logs; exit 1; }
done

step "fake APNs and FCM: every push request Herald made was well-formed"
kill -TERM "$fpid" 2>/dev/null || true
wait "$fpid" 2>/dev/null || true
grep -E '^push_fakes: ' "$tmp/push.log" || { echo "push_fakes printed no summary"; show_logs; exit 1; }
grep -qE '; 0 violations$' "$tmp/push.log" || { grep 'violation' "$tmp/push.log"; exit 1; }
step "all operations checks passed"
