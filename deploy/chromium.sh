#!/usr/bin/env bash
# Headless Chromium for the browser SDK's end-to-end tests, from Debian's packages
# (never a browser build downloaded by a test tool). Idempotent.
#
#   deploy/chromium.sh   apt-get install chromium if /usr/bin/chromium is missing
set -euo pipefail

CHROMIUM=/usr/bin/chromium
log() { echo "chromium.sh: $*" >&2; }

if [[ -x "$CHROMIUM" ]]; then
  exit 0
fi
sudo=()
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || { log "Chromium is not installed and I am not root: apt-get install chromium"; exit 1; }
  sudo=(sudo)
fi
log "installing Chromium from Debian (apt-get)..."
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
[[ -x "$CHROMIUM" ]] || { log "chromium installed but $CHROMIUM is missing"; exit 1; }
