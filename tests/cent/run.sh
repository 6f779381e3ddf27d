#!/usr/bin/env bash
# Runs the PyPI `cent` compatibility suite against a Herald started on a free port.
# Usage: tests/cent/run.sh PATH_TO_HERALD_BINARY
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:?usage: run.sh HERALD_BINARY}"
venv="${HERALD_CENT_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$here/requirements.txt"
fi
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
log="$(mktemp)"
data="$(mktemp -d)"
HERALD_HTTP__ADDR="127.0.0.1:$port" HERALD_API__KEY=cent-key HERALD_AUTH__HMAC_SECRET=cent-secret \
    HERALD_STORE__PATH="$data" "$bin" serve >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$log" "$data"' EXIT
for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.1
done
HERALD_API="http://127.0.0.1:$port/api" HERALD_API_KEY=cent-key "$venv/bin/python" "$here/test_cent.py" -v || {
    echo "--- herald log ---"; cat "$log"; exit 1; }
