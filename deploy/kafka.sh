#!/usr/bin/env bash
# Single-node KRaft Kafka for development and CI, without Docker.
# The broker jars come from Maven Central (deploy/kafka/pom.xml) and are cached
# outside the repo; state and logs live in $SPOOR_RUN_DIR/kafka.
#
#   deploy/kafka.sh fetch    download jars (once), print the classpath dir
#   deploy/kafka.sh start    fetch, format storage (once), start, wait until ready
#   deploy/kafka.sh stop     SIGTERM, then SIGKILL after 30 s
#   deploy/kafka.sh status   exit 0 if running, 1 if not
#   deploy/kafka.sh wait     wait until the broker answers a metadata request
#
# Run a Kafka tool from the same classpath, e.g.:
#   java -cp "$(deploy/kafka.sh fetch)/*" org.apache.kafka.tools.TopicCommand \
#        --bootstrap-server 127.0.0.1:9092 --list
set -euo pipefail

# Resolve the repo from this file so the script works from any cwd.
DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$DEPLOY_DIR/kafka/pom.xml"
LOG4J_CONF="$DEPLOY_DIR/kafka/log4j2.properties"

SPOOR_HOME="${SPOOR_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/spoor}"
SPOOR_RUN_DIR="${SPOOR_RUN_DIR:-/var/tmp/spoor}"
# Not from `spoor config`: test brokers beside the stack pass their own; stack.sh passes SPOOR_KAFKA_BOOTSTRAP's port.
PORT="${SPOOR_KAFKA_PORT:-9092}"
CTRL_PORT="${SPOOR_KAFKA_CONTROLLER_PORT:-9093}"
HEAP="${SPOOR_KAFKA_HEAP:-768m}"
READY_TIMEOUT=90
STOP_TIMEOUT=30

# The pom is the single place the version is pinned.
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
[[ -n "$KAFKA_VERSION" ]] || { echo "kafka.sh: no <kafka.version> in $POM" >&2; exit 1; }
LIBS="$SPOOR_HOME/kafka-$KAFKA_VERSION/libs"
MARKER="$LIBS/.complete"

STATE="$SPOOR_RUN_DIR/kafka"
CONF="$STATE/server.properties"
DATA="$STATE/data"
PIDFILE="$STATE/kafka.pid"
OUT="$STATE/kafka.out"
CLUSTER_ID_FILE="$STATE/cluster.id"

log() { echo "kafka.sh: $*" >&2; }

# Serialise start/stop (e.g. a test fixture and a developer at the same time).
lock() {
  mkdir -p "$STATE"
  exec 9>"$STATE/kafka.sh.lock"
  flock 9
}

fetch() {
  if [[ ! -f "$MARKER" ]]; then
    log "fetching Kafka $KAFKA_VERSION jars from Maven Central (first run only)..."
    command -v mvn >/dev/null || { log "mvn not found (apt-get install -y maven)"; exit 1; }
    # Copy into a temp dir and rename, so an interrupted fetch never looks cached.
    local tmp="$LIBS.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$(dirname "$LIBS")"
    # Debian's mvn prints stray ANSI resets even with -q -B; strip them.
    if ! mvn -q -B -f "$POM" dependency:copy-dependencies -DoutputDirectory="$tmp" 2>&1 |
        sed -e 's/\x1b\[[0-9;]*m//g' -e '/^$/d' >&2; then
      rm -rf "$tmp"; log "maven could not fetch the Kafka jars"; exit 1
    fi
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    touch "$MARKER"
  fi
  echo "$LIBS"
}

# Our broker is running if the pid file names a live kafka.Kafka JVM
# (checking the cmdline guards against a recycled pid).
pid_alive() {
  local pid
  [[ -f "$PIDFILE" ]] || return 1
  pid="$(cat "$PIDFILE")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Readiness = the broker answers a real Metadata request and lists itself.
# Raw Kafka protocol over a socket so no client library is needed:
# ApiVersions v0 to learn the Metadata version range, then Metadata v4..v7
# (non-flexible encodings) with an empty topic list.
probe() {
  python3 - "$PORT" <<'PY'
import socket, struct, sys

def recvn(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf

def rpc(s, api_key, version, corr, body):
    client = b"spoor-probe"
    msg = struct.pack(">hhih", api_key, version, corr, len(client)) + client + body
    s.sendall(struct.pack(">i", len(msg)) + msg)
    (size,) = struct.unpack(">i", recvn(s, 4))
    data = recvn(s, size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise ValueError("correlation id mismatch")
    return data[4:]

try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3) as s:
        s.settimeout(5)
        r = rpc(s, 18, 0, 1, b"")                      # ApiVersions v0
        err, n = struct.unpack(">hi", r[:6])
        if err:
            sys.exit(1)
        ranges = {}
        for i in range(n):
            key, lo, hi = struct.unpack(">hhh", r[6 + 6 * i:12 + 6 * i])
            ranges[key] = (lo, hi)
        lo, hi = ranges[3]                              # Metadata
        v = max(lo, 4)
        if v > min(hi, 7):
            sys.exit(1)
        r = rpc(s, 3, v, 2, struct.pack(">i?", 0, False))
        (brokers,) = struct.unpack(">i", r[4:8])       # after throttle_time_ms
        sys.exit(0 if brokers >= 1 else 1)
except Exception:
    sys.exit(1)
PY
}

wait_ready() {
  local start=$SECONDS
  while ! probe; do
    if [[ -f "$PIDFILE" ]] && ! pid_alive; then
      log "broker exited during startup; last 50 lines of $OUT:"
      tail -n 50 "$OUT" >&2 || true
      exit 1
    fi
    if (( SECONDS - start >= READY_TIMEOUT )); then
      log "broker not ready on 127.0.0.1:$PORT after ${READY_TIMEOUT}s; last 50 lines of $OUT:"
      tail -n 50 "$OUT" >&2 || true
      exit 1
    fi
    sleep 1
  done
  log "ready on 127.0.0.1:$PORT ($((SECONDS - start))s)"
}

write_config() {
  cat >"$CONF" <<EOF
# Written by deploy/kafka.sh on every start; edit the script, not this file.
# Single-node KRaft: this process is both broker and controller.
node.id=1
process.roles=broker,controller
controller.quorum.voters=1@127.0.0.1:$CTRL_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CTRL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT

log.dirs=$DATA
num.partitions=4
# Topics are created explicitly (spoor topics create), never by accident.
auto.create.topics.enable=false

# One broker: internal topics cannot have more than one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Consumers in tests join at once instead of after 3 s.
group.initial.rebalance.delay.ms=0

num.network.threads=3
num.io.threads=4

# Dev box: keep a day or 1 GiB per partition, in 100 MiB segments.
log.retention.hours=24
log.retention.bytes=1073741824
log.segment.bytes=104857600
log.retention.check.interval.ms=60000
EOF
}

start() {
  local libs
  libs="$(fetch)"
  lock
  mkdir -p "$STATE/logs"

  if pid_alive; then
    if probe; then
      log "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
      return 0
    fi
    log "running (pid $(cat "$PIDFILE")) but not ready yet; waiting"
    wait_ready
    return 0
  fi
  rm -f "$PIDFILE"
  if port_open "$PORT" || port_open "$CTRL_PORT"; then
    log "port $PORT or $CTRL_PORT is in use by another process; set SPOOR_KAFKA_PORT/SPOOR_KAFKA_CONTROLLER_PORT"
    exit 1
  fi

  write_config
  local cp="$libs/*"
  local java_opts=(-Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
    -Djava.awt.headless=true)

  # The cluster id is generated once and kept, so restarts reuse the storage.
  if [[ ! -s "$CLUSTER_ID_FILE" ]]; then
    java -cp "$cp" kafka.tools.StorageTool random-uuid >"$CLUSTER_ID_FILE.tmp"
    mv "$CLUSTER_ID_FILE.tmp" "$CLUSTER_ID_FILE"
  fi
  # Format exactly once; meta.properties marks a formatted log dir.
  if [[ ! -f "$DATA/meta.properties" ]]; then
    log "formatting KRaft storage in $DATA (cluster id $(cat "$CLUSTER_ID_FILE"))"
    java -cp "$cp" -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$STATE/logs" \
      kafka.tools.StorageTool format --ignore-formatted \
      -t "$(cat "$CLUSTER_ID_FILE")" -c "$CONF" >>"$OUT" 2>&1 ||
      { tail -n 20 "$OUT" >&2; exit 1; }
  fi

  log "starting Kafka $KAFKA_VERSION (heap $HEAP), log: $OUT"
  # setsid: own session, so the broker outlives the shell/job that started it.
  setsid nohup java "${java_opts[@]}" -cp "$cp" \
    -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$STATE/logs" \
    kafka.Kafka "$CONF" >>"$OUT" 2>&1 </dev/null 9>&- &  # 9>&-: don't inherit the lock
  echo $! >"$PIDFILE"
  wait_ready
}

stop() {
  lock
  if ! pid_alive; then
    rm -f "$PIDFILE"
    log "not running"
    return 0
  fi
  local pid i
  pid="$(cat "$PIDFILE")"
  log "stopping (pid $pid)"
  kill -TERM "$pid"
  for ((i = 0; i < STOP_TIMEOUT; i++)); do
    # pid_alive, not kill -0: a zombie left by a non-reaping init counts as gone.
    pid_alive || { rm -f "$PIDFILE"; log "stopped"; return 0; }
    sleep 1
  done
  log "still running after ${STOP_TIMEOUT}s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
}

status() {
  if pid_alive; then
    if probe; then
      echo "kafka running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
    else
      echo "kafka running (pid $(cat "$PIDFILE")) but not answering on 127.0.0.1:$PORT yet"
    fi
    return 0
  fi
  echo "kafka stopped"
  return 1
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  wait) wait_ready ;;
  *) echo "usage: $0 {fetch|start|stop|status|wait}" >&2; exit 2 ;;
esac
