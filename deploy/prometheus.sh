#!/usr/bin/env bash
# Prometheus and Alertmanager from Debian's packages (prometheus ships promtool; the alertmanager
# package ships amtool), for the monitoring integration test. Idempotent.
#   deploy/prometheus.sh install
set -euo pipefail
log() { echo "prometheus.sh: $*" >&2; }

have_all() { command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v amtool >/dev/null; }

install() {
  have_all && return 0
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { log "not installed and I am not root: apt-get install prometheus prometheus-alertmanager"; exit 1; }
    sudo=(sudo)
  fi
  log "installing Prometheus and Alertmanager from Debian (apt-get)..."
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    prometheus prometheus-alertmanager
  have_all || { log "installed, but prometheus/promtool/amtool are not on PATH"; exit 1; }
}

case "${1:-install}" in
  install) install ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac
