#!/usr/bin/env bash
# Segment's own client libraries for the compatibility tests, from the ordinary registries (never a
# vendored copy). Idempotent; `make test` runs it.
#
#   deploy/segment_compat.sh          all of the below
#   deploy/segment_compat.sh browser  tests/compat/analytics-next: npm ci (@segment/analytics-next,
#                                     esbuild, playwright-core), then build.mjs bundles the library
#   deploy/segment_compat.sh kotlin   the jars of tests/compat/analytics-kotlin/pom.xml
#                                     (com.segment.analytics.kotlin:core) from Maven Central, cached
#                                     outside the repo; prints their directory
set -euo pipefail
cd "$(dirname "$0")/.."
SPOOR_HOME="${SPOOR_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/spoor}"
log() { echo "segment_compat.sh: $*" >&2; }

browser() {
  command -v npm >/dev/null || deploy/segment_node.sh  # installs Debian's nodejs and npm
  local dir=tests/compat/analytics-next
  if [ ! -d "$dir/node_modules/@segment/analytics-next" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    log "npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    touch "$dir/node_modules"
  fi
  if [ ! -f "$dir/dist/analytics-next.iife.js" ] || [ "$dir/node_modules" -nt "$dir/dist/analytics-next.iife.js" ] ||
     [ "$dir/build.mjs" -nt "$dir/dist/analytics-next.iife.js" ]; then
    (cd "$dir" && node build.mjs >&2)
  fi
}

kotlin() {
  local pom=tests/compat/analytics-kotlin/pom.xml version libs
  version="$(sed -n 's:.*<analytics.kotlin.version>\(.*\)</analytics.kotlin.version>.*:\1:p' "$pom")"
  libs="$SPOOR_HOME/analytics-kotlin-$version/libs"
  if [[ ! -f "$libs/.complete" ]]; then
    command -v mvn >/dev/null || { log "mvn not found (apt-get install -y maven)"; exit 1; }
    log "fetching com.segment.analytics.kotlin:core $version from Maven Central (first run only)"
    local tmp="$libs.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$(dirname "$libs")"
    # Debian's mvn prints stray ANSI resets even with -q -B; strip them.
    if ! mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$tmp" 2>&1 |
        sed -e 's/\x1b\[[0-9;]*m//g' -e '/^$/d' >&2; then
      rm -rf "$tmp"; log "maven could not fetch the analytics-kotlin jars"; exit 1
    fi
    rm -rf "$libs"
    mv "$tmp" "$libs"
    touch "$libs/.complete"
  fi
  echo "$libs"
}

case "${1:-all}" in
  browser) browser ;;
  kotlin) kotlin ;;
  all) browser; kotlin >/dev/null ;;
  *) log "usage: $0 [browser|kotlin]"; exit 2 ;;
esac
