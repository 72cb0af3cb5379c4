#!/usr/bin/env bash
# A private PostgreSQL cluster for development and CI, without Docker.
# Uses Debian's server binaries but not the system cluster: data, socket and
# log live under $SPOOR_RUN_DIR, on port 5433 so a system cluster on 5432 can
# coexist.
#
#   deploy/postgres.sh install   apt-get install postgresql if no server is installed
#   deploy/postgres.sh start     install, initdb (once), start, create $SPOOR_PG_DB
#   deploy/postgres.sh stop      fast shutdown
#   deploy/postgres.sh status    exit 0 if running, 1 if not
#
# Connect: PGPASSWORD=spoor psql -h 127.0.0.1 -p 5433 -U spoor spoor
set -euo pipefail

SPOOR_RUN_DIR="${SPOOR_RUN_DIR:-/var/tmp/spoor}"
# Not from `spoor config`: test clusters beside the stack pass their own; stack.sh passes SPOOR_DATABASE_URL's parts.
PG_PORT="${SPOOR_PG_PORT:-5433}"
PG_USER="${SPOOR_PG_USER:-spoor}"
PG_PASSWORD="${SPOOR_PG_PASSWORD:-spoor}"
PG_DB="${SPOOR_PG_DB:-spoor}"
PG_SHARED_BUFFERS="${SPOOR_PG_SHARED_BUFFERS:-1GB}"
PG_MAX_WAL_SIZE="${SPOOR_PG_MAX_WAL_SIZE:-4GB}"
# Extra postgresql.conf lines, e.g. for profiling:
#   SPOOR_PG_EXTRA_CONF="shared_preload_libraries = 'pg_stat_statements'"
PG_EXTRA_CONF="${SPOOR_PG_EXTRA_CONF:-}"

PGDATA_DIR="$SPOOR_RUN_DIR/pgdata"
PG_STATE="$SPOOR_RUN_DIR/pg"          # socket dir + log, writable by the server
PG_LOG="$PG_STATE/postgres.log"

log() { echo "postgres.sh: $*" >&2; }

is_root() { [[ "$(id -u)" == 0 ]]; }

# PostgreSQL refuses to run as root; as root, run server tools as `postgres`.
# cd / first: the caller's cwd (e.g. /root) may not be readable by postgres.
as_pg() {
  if is_root; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# Newest installed server version's bin dir, or nothing.
pg_bin() {
  local d best=""
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x "$d/initdb" ]] && best="$(printf '%s\n%s\n' "$best" "$d" | sort -V | tail -n 1)"
  done
  echo "$best"
}

install() {
  if [[ -n "$(pg_bin)" ]]; then
    return 0
  fi
  local sudo=()
  if ! is_root; then
    command -v sudo >/dev/null || { log "PostgreSQL is not installed and I am not root: apt-get install postgresql"; exit 1; }
    sudo=(sudo)
  fi
  log "installing PostgreSQL from Debian (apt-get)..."
  # Tell postgresql-common not to create (and start) the system 'main'
  # cluster on 5432: we run our own. The stock createcluster.conf includes
  # this drop-in dir last, so it wins without touching a conffile.
  "${sudo[@]}" mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" |
    "${sudo[@]}" tee /etc/postgresql-common/createcluster.d/spoor.conf >/dev/null
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
  [[ -n "$(pg_bin)" ]] || { log "postgresql installed but no initdb found"; exit 1; }
}

# The run dir path must be traversable by the postgres user when we are root.
prepare_dirs() {
  mkdir -p "$SPOOR_RUN_DIR" "$PG_STATE"
  if is_root; then
    chmod 755 "$SPOOR_RUN_DIR"
    if ! runuser -u postgres -- test -x "$SPOOR_RUN_DIR"; then
      log "user postgres cannot reach $SPOOR_RUN_DIR (a parent dir is not world-executable); pick another SPOOR_RUN_DIR"
      exit 1
    fi
    # pg_ctl -l opens the log as the server user.
    touch "$PG_LOG"
    chown postgres: "$PG_STATE" "$PG_LOG"
    if [[ -d "$PGDATA_DIR" ]]; then chown postgres: "$PGDATA_DIR"; fi
  fi
  chmod 755 "$PG_STATE"
}

initdb_once() {
  local bin="$1"
  [[ -f "$PGDATA_DIR/PG_VERSION" ]] && return 0
  log "initdb $PGDATA_DIR (superuser $PG_USER)"
  mkdir -p "$PGDATA_DIR"
  if is_root; then chown postgres: "$PGDATA_DIR"; fi
  chmod 700 "$PGDATA_DIR"
  # Password goes through a file readable only by the server user, never argv.
  local pwfile="$PG_STATE/pwfile"
  (umask 077 && printf '%s\n' "$PG_PASSWORD" >"$pwfile")
  if is_root; then chown postgres: "$pwfile"; fi
  as_pg "$bin/initdb" -D "$PGDATA_DIR" -U "$PG_USER" --pwfile="$pwfile" \
    --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 >>"$PG_LOG" 2>&1 ||
    { rm -f "$pwfile"; tail -n 20 "$PG_LOG" >&2; exit 1; }
  rm -f "$pwfile"
  echo "include_if_exists = 'spoor.conf'" >>"$PGDATA_DIR/postgresql.conf"
}

# Settings we own, rewritten on every start so env changes (port) apply.
write_conf() {
  local conf="$PGDATA_DIR/spoor.conf"
  cat >"$conf" <<EOF
# Written by deploy/postgres.sh on every start.
listen_addresses = '127.0.0.1'
port = $PG_PORT
# Our own socket dir: /var/run/postgresql may not exist outside the Debian cluster.
unix_socket_directories = '$PG_STATE'
max_connections = 100
shared_buffers = $PG_SHARED_BUFFERS
# The worker updates rows of random users: after each checkpoint, the first change to a page
# writes the whole page to the WAL. Checkpoints far apart and compressed page images halve the
# WAL written under a flood (README, Benchmark).
max_wal_size = $PG_MAX_WAL_SIZE
checkpoint_timeout = 15min
wal_compression = lz4
# Autovacuum analyzes the tables the worker writes about once a minute under load. At the default
# target (100) a round of them took 3-4 s of a core and stalled the stream beside it; 30 samples
# 9,000 rows instead of 30,000, ~3x less work, with the same plans for Spoor's segment queries.
default_statistics_target = 30
# Sleep 20 ms (not 2) per 200 cost units: an analyze round then takes ~3.4x as long, spread thin,
# and paced runs with one did no worse than without (bench/README.md, tenth session). Vacuum is
# slowed alike: raise autovacuum_vacuum_cost_limit if dead rows pile up on a bigger installation.
autovacuum_vacuum_cost_delay = 20ms
# Say when autovacuum works, and how long: it is the usual suspect for a latency spike.
log_autovacuum_min_duration = 1s
# Dev box, but keep crash safety: tests must see what production sees.
fsync = on
synchronous_commit = on
log_timezone = 'UTC'
timezone = 'UTC'
$PG_EXTRA_CONF
EOF
  if is_root; then chown postgres: "$conf"; fi
}

running() {
  local bin
  bin="$(pg_bin)"
  [[ -n "$bin" && -f "$PGDATA_DIR/PG_VERSION" ]] || return 1
  as_pg "$bin/pg_ctl" status -D "$PGDATA_DIR" >/dev/null 2>&1
}

psql_tcp() {
  PGPASSWORD="$PG_PASSWORD" "$(pg_bin)/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$@"
}

start() {
  install
  local bin
  bin="$(pg_bin)"
  prepare_dirs
  if running; then
    log "already running on 127.0.0.1:$PG_PORT ($PGDATA_DIR)"
  else
    initdb_once "$bin"
    write_conf
    log "starting PostgreSQL $(basename "$(dirname "$bin")") on 127.0.0.1:$PG_PORT, log: $PG_LOG"
    as_pg "$bin/pg_ctl" start -w -t 60 -D "$PGDATA_DIR" -l "$PG_LOG" >/dev/null ||
      { log "pg_ctl start failed; last 30 lines of $PG_LOG:"; tail -n 30 "$PG_LOG" >&2; exit 1; }
  fi
  # The application database (tests create their own as this superuser).
  if [[ "$(psql_tcp -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]]; then
    log "creating database $PG_DB"
    psql_tcp -d postgres -c "CREATE DATABASE \"$PG_DB\" OWNER \"$PG_USER\""
  fi
  log "ready: postgresql://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"
}

stop() {
  if ! running; then
    log "not running"
    return 0
  fi
  as_pg "$(pg_bin)/pg_ctl" stop -w -m fast -D "$PGDATA_DIR" >/dev/null
  log "stopped"
}

status() {
  if running; then
    echo "postgres running on 127.0.0.1:$PG_PORT ($PGDATA_DIR)"
    return 0
  fi
  echo "postgres stopped"
  return 1
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 {install|start|stop|status}" >&2; exit 2 ;;
esac
