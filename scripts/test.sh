#!/usr/bin/env bash
# The one test command: installs what it needs, then runs every check and test.
# Used by developers and by CI (.ci/run). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

# CI builds from a clean clone: incremental compilation would only add work there.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }
# Where cargo puts binaries (CARGO_TARGET_DIR may move it).
target="${CARGO_TARGET_DIR:-$PWD/target}"
herald="$target/debug/herald"

# --- prerequisites -----------------------------------------------------------
apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    step "installing Debian packages: $*"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# librdkafka (built from source by the rdkafka crate, for src/kafka/) needs make and perl.
command -v make >/dev/null 2>&1 || missing+=(make)
command -v perl >/dev/null 2>&1 || missing+=(perl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# redis-cli joins the throwaway Redis Cluster of the Redis Cluster tests.
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs) and re-run" >&2
    exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true

# --- static checks -----------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# --- Rust unit and integration tests (real sockets, in-process servers) -------
step "cargo test"
cargo test --workspace --locked

# --- official Centrifugo JS SDK against a running Herald ----------------------
step "official JS SDK conformance (tests/sdk)"
cargo build --locked --bin herald
tests/sdk/run.sh "$herald"

step "PyPI cent client against a running Herald (tests/cent)"
tests/cent/run.sh "$herald"

step "operations: dashboards, alerts, /metrics, compose, OpenAPI (tests/ops)"
# Its Kafka (mock cluster) and fake APNs/FCM are these examples; `cargo test` built them.
cargo build --locked --example kafka_demo --example push_fakes
tests/ops/run.sh "$herald"

# Three nodes over Redis for 40 s of faults (kill -9 of nodes and Redis, SIGTERM, a
# stalled client), then the loss checker: nothing acknowledged lost, no silent gap.
# The longer run and its figures: docs/RELIABILITY.md.
step "every load-test scenario at tiny scale (scripts/loadtest-smoke.sh)"
scripts/loadtest-smoke.sh

step "chaos run with the loss checker (scripts/chaos.sh 40)"
CHAOS_FAULT_EVERY=5 scripts/chaos.sh 40

# The release binary, built exactly as the Dockerfile builds it.
step "release build (as in the Dockerfile)"
cargo build --release --locked --bin herald

step "all tests passed"
