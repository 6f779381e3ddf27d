#!/usr/bin/env bash
# Installs the peer servers herald-loadtest compares Herald with (Debian + npm), once.
#
#   loadtest/peers/install.sh            # all of them
#   loadtest/peers/install.sh nchan      # one: nchan | pushpin | soketi | socketio
#
# nginx + nchan and pushpin come from Debian (apt-get, needs root); soketi and socket.io
# from npm into loadtest/peers/node/node_modules (soketi needs the npm `overrides` entry in
# node/package.json: its pinned uWebSockets.js is fetched from GitHub, which is not
# reachable here, so it is mapped to the npm package @trufflesuite/uws-js-unofficial).
# Each step is skipped when already done. Exit status: 0 when everything asked for is
# installed; otherwise non-zero, after trying the rest.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
WANT=("$@")
[[ ${#WANT[@]} -eq 0 ]] && WANT=(nchan pushpin soketi socketio)
rc=0

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "== apt-get install ${missing[*]}" >&2
  if [[ ! -f /var/lib/apt/periodic/herald-loadtest-updated ]]; then
    $SUDO apt-get update -qq >&2 && $SUDO mkdir -p /var/lib/apt/periodic &&
      $SUDO touch /var/lib/apt/periodic/herald-loadtest-updated
  fi
  # The Debian packages start their services on install where a service manager runs;
  # the benchmarks start their own instances, so stop those again.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

npm_install() {
  if [[ -x "$HERE/node/node_modules/.bin/soketi" && -d "$HERE/node/node_modules/socket.io" ]]; then
    return 0
  fi
  command -v npm >/dev/null || apt_install nodejs npm || return 1
  echo "== npm install in $HERE/node" >&2
  (cd "$HERE/node" && npm install --no-audit --no-fund --loglevel=error >&2)
}

for w in "${WANT[@]}"; do
  case "$w" in
    nchan) apt_install nginx libnginx-mod-nchan || { echo "nchan: install failed" >&2; rc=1; } ;;
    pushpin) apt_install pushpin || { echo "pushpin: install failed" >&2; rc=1; } ;;
    soketi | socketio) npm_install || { echo "$w: npm install failed" >&2; rc=1; } ;;
    herald) ;;
    *) echo "unknown peer $w" >&2; rc=2 ;;
  esac
done
# Services the packages may have started (not ours; ours run on other ports).
if command -v service >/dev/null; then
  for s in nginx pushpin; do
    service "$s" stop >/dev/null 2>&1 || true
  done
fi
exit $rc
