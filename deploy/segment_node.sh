#!/usr/bin/env bash
# Node.js and the npm packages of tests/compat/segment-node (Segment's own Node library, for the
# compatibility test). Installs Debian's nodejs/npm if node is missing; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "==> installing Node.js from Debian's packages"
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
dir=tests/compat/segment-node
if [ ! -d "$dir/node_modules/@segment/analytics-node" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
  echo "==> npm ci in $dir"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$dir/node_modules"
fi
