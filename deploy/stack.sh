#!/usr/bin/env bash
# The local stack: PostgreSQL and Kafka (deploy/postgres.sh, deploy/kafka.sh), then Spoor's processes.
#   stack.sh infra   start PostgreSQL and Kafka only (what the tests need)
#   stack.sh up      infra + schema + topics + demo write key + collector + $SPOOR_WORKERS workers (2)
#                    + segments and campaigns runners + admin HTTP API (token generated in the run dir)
#   stack.sh demo    simulated traffic through a running stack and a summary
#   stack.sh stop    stop Spoor's processes, leave PostgreSQL and Kafka running
#   stack.sh down    stop everything
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
venv=${VENV:-$repo/.venv}
run_dir=${SPOOR_RUN_DIR:-/var/tmp/spoor}
logs=$run_dir/logs
spoor="$venv/bin/spoor"
workers=${SPOOR_WORKERS:-2}  # Faust worker processes sharing the partitions; the i-th serves worker_web_port+i-1
worker_names=(worker); for i in $(seq 2 "$workers"); do worker_names+=("worker-$i"); done
processes=(admin-api campaigns segments "${worker_names[@]}" collector)  # stop order
# The collector answers clients and must keep taking events while the rest of a machine is busy; the workers and
# the runners catch up from Kafka. So they run at a lower CPU priority (nice; 0 runs everything alike).
background_nice=${SPOOR_BACKGROUND_NICE:-10}
mkdir -p "$logs"

running() { [[ -f "$run_dir/$1.pid" ]] && kill -0 "$(cat "$run_dir/$1.pid")" 2>/dev/null; }

# Ports, URLs and the demo key come from Spoor's settings, as the processes read them (defaults in
# spoor/settings.py, SPOOR_* in the environment): one `spoor config get`, one value per line.
read_settings() {
  [[ -x "$spoor" ]] || { echo "$spoor not found: run make install first (or set VENV)" >&2; exit 1; }
  local values
  values=$("$spoor" config get collector_host collector_port worker_web_port segments_web_port \
    campaigns_web_port admin_api_host admin_api_port demo_write_key database_url kafka_bootstrap)
  { IFS= read -r collector_host; IFS= read -r collector_port; IFS= read -r worker_port
    IFS= read -r segments_port; IFS= read -r campaigns_port; IFS= read -r admin_api_host
    IFS= read -r admin_api_port; IFS= read -r demo_key; IFS= read -r database_url
    IFS= read -r kafka_bootstrap; } <<<"$values"
  collector_url="http://$collector_host:$collector_port"
  segments_url="http://127.0.0.1:$segments_port"
  campaigns_url="http://127.0.0.1:$campaigns_port"
  admin_api_url="http://$admin_api_host:$admin_api_port"
}

local_host() { [[ $1 == 127.0.0.1 || $1 == localhost ]]; }

# A variable of deploy/kafka.sh or deploy/postgres.sh set in the environment must agree with the
# setting it serves here, or the servers would start where Spoor's processes do not look.
agree() {  # variable, the value the settings give, the setting's variable
  if [[ -n ${!1:-} && ${!1} != "$2" ]]; then
    echo "$1 disagrees with $3 (Spoor's processes read $3): set $3 alone" >&2
    exit 2
  fi
}

start_process() {  # name, health URL, seconds to wait, spoor arguments (default: the name)
  local name=$1 health=$2 wait_s=$3 priority=0
  shift 3
  if running "$name"; then echo "  $name already running"; return; fi
  case $name in worker*|segments|campaigns) priority=$background_nice ;; esac
  echo "  starting $name (log: $logs/$name.log)$([[ $priority == 0 ]] || echo ", nice $priority")"
  # PGAPPNAME (libpq): pg_stat_activity and pg_stat_statements tell whose connection it is.
  PGAPPNAME="spoor-$name" nohup nice -n "$priority" "$spoor" "${@:-$name}" >>"$logs/$name.log" 2>&1 &
  echo $! >"$run_dir/$name.pid"
  for _ in $(seq 1 $((wait_s * 2))); do
    if curl -fsS -o /dev/null "$health" 2>/dev/null; then return; fi
    if ! running "$name"; then echo "$name exited; last log lines:" >&2; tail -n 40 "$logs/$name.log" >&2; exit 1; fi
    sleep 0.5
  done
  echo "$name did not become healthy at $health; last log lines:" >&2; tail -n 40 "$logs/$name.log" >&2; exit 1
}

stop_process() {
  local name=$1
  running "$name" || { rm -f "$run_dir/$name.pid"; return 0; }
  local pid; pid=$(cat "$run_dir/$name.pid")
  echo "  stopping $name"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$run_dir/$name.pid"
}

# A random secret kept in the run dir (mode 600) and reused on the next `up`, unless set in the environment.
local_secret() {  # file name
  local file=$run_dir/$1
  if [[ ! -s "$file" ]]; then
    (umask 077; "$venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$file.tmp")
    mv "$file.tmp" "$file"
  fi
  chmod 600 "$file"
  cat "$file"
}

stop_processes() {
  local extra=()  # workers a previous `up` started with a larger SPOOR_WORKERS
  for pidfile in "$run_dir"/worker-*.pid; do
    [[ -e $pidfile ]] || continue
    name=$(basename "$pidfile" .pid)
    [[ " ${processes[*]} " == *" $name "* ]] || extra+=("$name")
  done
  for name in "${extra[@]}" "${processes[@]}"; do stop_process "$name"; done
}

# PostgreSQL and Kafka where database_url and kafka_bootstrap say, if that is this machine.
infra() {
  local url_re='^postgresql(\+[^:/]*)?://([^:@/]+):([^@/]*)@([^:/?]+)(:([0-9]+))?/([^?]+)'
  [[ $database_url =~ $url_re ]] ||
    { echo "SPOOR_DATABASE_URL is not postgresql://user:password@host[:port]/database" >&2; exit 2; }
  local pg_user=${BASH_REMATCH[2]} pg_password=${BASH_REMATCH[3]} pg_host=${BASH_REMATCH[4]}
  local pg_port=${BASH_REMATCH[6]:-5432} pg_db=${BASH_REMATCH[7]}
  pg_password=${pg_password//\\/\\\\}; printf -v pg_password '%b' "${pg_password//%/\\x}"  # the URL's %-escapes
  echo "==> PostgreSQL"
  if local_host "$pg_host"; then
    agree SPOOR_PG_PORT "$pg_port" SPOOR_DATABASE_URL; agree SPOOR_PG_USER "$pg_user" SPOOR_DATABASE_URL
    agree SPOOR_PG_PASSWORD "$pg_password" SPOOR_DATABASE_URL; agree SPOOR_PG_DB "$pg_db" SPOOR_DATABASE_URL
    SPOOR_PG_PORT=$pg_port SPOOR_PG_USER=$pg_user SPOOR_PG_PASSWORD=$pg_password SPOOR_PG_DB=$pg_db \
      "$here/postgres.sh" start
  else
    echo "  database_url is on $pg_host, not this machine: none started"
  fi
  local kafka_first=${kafka_bootstrap%%,*}
  echo "==> Kafka"
  if local_host "${kafka_first%:*}" && [[ ${kafka_first##*:} =~ ^[0-9]+$ ]]; then
    agree SPOOR_KAFKA_PORT "${kafka_first##*:}" SPOOR_KAFKA_BOOTSTRAP
    SPOOR_KAFKA_PORT=${kafka_first##*:} "$here/kafka.sh" start
  else
    echo "  kafka_bootstrap is $kafka_bootstrap, not this machine: none started"
  fi
}

case "${1:-}" in
  infra|up|demo) read_settings ;;
esac

case "${1:-}" in
  infra) infra ;;
  up)
    infra
    echo "==> schema, topics, demo write key"
    "$spoor" migrate
    "$spoor" topics create
    "$spoor" keys create --name demo --source web --key "$demo_key" >/dev/null
    echo "==> Spoor processes"
    start_process collector "$collector_url/healthz" 60
    echo "  (the worker restores its table state from Kafka before it is ready: minutes for a large state)"
    for i in $(seq 1 "$workers"); do  # each its own web port and table state directory
      port=$((worker_port + i - 1))
      SPOOR_WORKER_WEB_PORT=$port SPOOR_WORKER_DATA_DIR=${SPOOR_WORKER_DATA_DIR:-$run_dir/faust}$([[ $i == 1 ]] || echo "-$i") \
        start_process "${worker_names[$((i - 1))]}" "http://127.0.0.1:$port/healthz" 900 worker
    done
    # The admin API's bearer token and the webhook signing key: the environment's, else generated.
    SPOOR_ADMIN_TOKEN=${SPOOR_ADMIN_TOKEN:-$(local_secret admin_token)}
    SPOOR_CAMPAIGN_WEBHOOK_SECRET=${SPOOR_CAMPAIGN_WEBHOOK_SECRET:-$(local_secret webhook_secret)}
    SPOOR_AUDIT_HMAC_KEY=${SPOOR_AUDIT_HMAC_KEY:-$(local_secret audit_hmac_key)}  # the erasure audit's HMAC key
    export SPOOR_ADMIN_TOKEN SPOOR_CAMPAIGN_WEBHOOK_SECRET SPOOR_AUDIT_HMAC_KEY
    start_process segments "$segments_url/healthz" 120 segments run
    # The local stack's campaigns may call webhooks on this machine: make demo's receiver is on 127.0.0.1
    # (set SPOOR_WEBHOOK_ALLOW_PRIVATE_ADDRESSES=false before make up to refuse them, as in production).
    SPOOR_WEBHOOK_ALLOW_PRIVATE_ADDRESSES=${SPOOR_WEBHOOK_ALLOW_PRIVATE_ADDRESSES:-true} \
      start_process campaigns "$campaigns_url/healthz" 120 campaigns run
    start_process admin-api "$admin_api_url/healthz" 60 segments api
    echo "collector_url: $collector_url"
    echo "write_key: $demo_key"
    echo "database_url: ${database_url/#postgresql+psycopg2:/postgresql:}"  # as psql takes it
    echo "kafka_bootstrap: $kafka_bootstrap"
    echo "admin_api_url: $admin_api_url"
    echo "admin_token: $SPOOR_ADMIN_TOKEN"
    ;;
  demo)
    echo "==> demo traffic"
    # The demo's webhook receiver checks signatures with the key the stack's campaigns runner signs with.
    SPOOR_CAMPAIGN_WEBHOOK_SECRET=${SPOOR_CAMPAIGN_WEBHOOK_SECRET:-$(local_secret webhook_secret)} \
      "$spoor" demo --write-key "$demo_key" --collector-url "$collector_url"
    echo
    echo "The stack is still running (psql: make up prints database_url). 'make down' stops it."
    ;;
  stop) stop_processes ;;
  down)
    stop_processes
    "$here/kafka.sh" stop
    "$here/postgres.sh" stop
    ;;
  *) echo "usage: $0 infra|up|demo|stop|down" >&2; exit 2 ;;
esac
