#!/usr/bin/env bash
# Operations checks: Grafana dashboards, Prometheus alerts, /metrics, docker-compose
# wiring and the OpenAPI description, against a live Herald.
#
#   tests/ops/run.sh HERALD_BINARY
#
# 1. dashboards validate against Grafana's schema (validate_dashboards.py);
# 2. promtool check rules / test rules / check config on deploy/prometheus/;
# 3. docker-compose.yml: `docker-compose config` and check_compose.py;
# 4. starts HERALD_BINARY and a real Prometheus (1 s scrapes, alerts.yml loaded) on free
#    127.0.0.1 ports, runs load.py against Herald, and check_panels.py queries every
#    dashboard panel through Prometheus: each must return data; every rule evaluates;
# 5. promtool check metrics on Herald's /metrics after the load;
# 6. GET /api/openapi.json is docs/openapi.yaml; schemathesis runs the spec against the
#    live Herald: no 5xx, every response as documented.
#
# Installs what it needs: Debian packages prometheus (promtool) and docker-compose
# (used only to validate the file; no Docker engine is needed), and tests/ops/.venv
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
(cd "$repo" && docker-compose -f docker-compose.yml config -q \
    && docker-compose -f docker-compose.yml --profile cluster config -q)
echo "docker-compose config: ok"
"$py" "$here/check_compose.py"

# --- live checks -------------------------------------------------------------------
tmp="$(mktemp -d -t herald-ops.XXXXXX)"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
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
show_logs() { echo "--- herald log (tail) ---"; tail -n 40 "$tmp/herald.log"; echo "--- load log (tail) ---"; tail -n 20 "$tmp/load.log" 2>/dev/null || true; }

hport="$(free_port)"
pport="$(free_port)"
key="ops-key-$RANDOM$RANDOM"
secret="ops-secret-$RANDOM$RANDOM"
base="http://127.0.0.1:$hport"

step "starting Herald on 127.0.0.1:$hport"
# A short queue and write timeout so the slow client of load.py is cut off quickly.
HERALD_HTTP__ADDR="127.0.0.1:$hport" HERALD_API__KEY="$key" HERALD_AUTH__HMAC_SECRET="$secret" \
HERALD_STORE__PATH="$tmp/store" HERALD_CLIENT__OUTBOUND_QUEUE_LEN=16 HERALD_CLIENT__WRITE_TIMEOUT=2s RUST_LOG=warn \
    "$bin" serve >"$tmp/herald.log" 2>&1 &
hpid=$!
pids+=("$hpid")
wait_http "$base/health" herald "$hpid" "$tmp/herald.log"

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
      - targets: ["127.0.0.1:$hport"]
EOF
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
    --web.listen-address="127.0.0.1:$pport" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
ppid=$!
pids+=("$ppid")
wait_http "http://127.0.0.1:$pport/-/ready" prometheus "$ppid" "$tmp/prometheus.log"

step "load: WebSocket clients and server API calls (load.py, at most 240 s)"
"$py" -u "$here/load.py" --ws "ws://127.0.0.1:$hport/connection/websocket" --api "$base" \
    --key "$key" --secret "$secret" --duration 240 >"$tmp/load.log" 2>&1 &
pids+=("$!")

step "every dashboard panel returns data from Prometheus"
"$py" "$here/check_panels.py" --prometheus "http://127.0.0.1:$pport" --rate-interval 10s --timeout 120 \
    || { show_logs; exit 1; }
grep -E 'slow client closed|load:' "$tmp/load.log" | tail -n 3

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

kill -0 "$hpid" 2>/dev/null || { echo "herald died during the checks"; show_logs; exit 1; }
step "all operations checks passed"
