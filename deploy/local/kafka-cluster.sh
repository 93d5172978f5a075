#!/usr/bin/env bash
# Three-node Apache Kafka cluster (KRaft; each node broker and controller in
# one JVM, all three voters) on loopback, for tests that lose a broker.
# Same jars as kafka.sh (resolved by Maven into a git-ignored cache).
#   kafka-cluster.sh start          format (first time) and start all three;
#                                   prints the bootstrap list
#   kafka-cluster.sh stop           stop all three
#   kafka-cluster.sh kill N         SIGKILL node N (1-3): a broker crash
#   kafka-cluster.sh start-node N   start node N again
#   kafka-cluster.sh pid N          print node N's pid (empty if not running)
# Environment: STACK_DIR (default <repo>/.stack), KAFKA_CLUSTER_PORT (29300;
# node N listens on PORT+2(N-1), its controller on the port after that),
# KAFKA_NODE_HEAP (256m).
# Topics the service creates with TOPIC_REPLICATION_FACTOR=3 get
# min.insync.replicas=2; the cluster's own default matches, so acks=all
# writes survive the loss of any one node.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
STACK_DIR=${STACK_DIR:-$repo/.stack}
KAFKA_CLUSTER_PORT=${KAFKA_CLUSTER_PORT:-29300}
KAFKA_NODE_HEAP=${KAFKA_NODE_HEAP:-256m}
libs=${KAFKA_LIBS:-$repo/.stack/kafka-libs}
base=$STACK_DIR/kafka-cluster-$KAFKA_CLUSTER_PORT
NODES="1 2 3"

broker_port() { echo $((KAFKA_CLUSTER_PORT + 2 * ($1 - 1))); }
controller_port() { echo $((KAFKA_CLUSTER_PORT + 2 * ($1 - 1) + 1)); }
node_dir() { echo "$base/node-$1"; }
pidfile() { echo "$(node_dir "$1")/broker.pid"; }
running() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

bootstrap() {
  local list=""
  for n in $NODES; do list="$list${list:+,}127.0.0.1:$(broker_port "$n")"; done
  echo "$list"
}

voters() {
  local list=""
  for n in $NODES; do list="$list${list:+,}$n@127.0.0.1:$(controller_port "$n")"; done
  echo "$list"
}

java_cmd() {
  java -Xms64m -Xmx"$KAFKA_NODE_HEAP" -XX:+UseG1GC -XX:TieredStopAtLevel=1 \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$repo/deploy/kafka/log4j2.properties" \
    -cp "$libs/*" "$@"
}

write_properties() {
  local n=$1 dir
  dir=$(node_dir "$n")
  mkdir -p "$dir/data"
  # Failure detection is tightened from the defaults (9 s session, 30 s
  # replica lag) so a killed node leaves the ISR within a few seconds
  # and acks=all writes resume on the two that remain.
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$(voters)
listeners=PLAINTEXT://127.0.0.1:$(broker_port "$n"),CONTROLLER://127.0.0.1:$(controller_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(broker_port "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=6
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
auto.create.topics.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
group.consumer.heartbeat.interval.ms=1000
group.consumer.min.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
replica.lag.time.max.ms=4000
PROPS
}

format_all() {
  local cluster_id
  if [ -f "$base/cluster.id" ]; then
    cluster_id=$(cat "$base/cluster.id")
  else
    cluster_id=$(java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    echo "$cluster_id" >"$base/cluster.id"
  fi
  local pids=()
  for n in $NODES; do
    local dir
    dir=$(node_dir "$n")
    if [ ! -f "$dir/data/meta.properties" ]; then
      java_cmd kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
        >"$dir/format.log" 2>&1 &
      pids+=("$!")
    fi
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || { cat "$base"/node-*/format.log >&2; exit 1; }
  done
}

launch() {
  local n=$1 dir
  dir=$(node_dir "$n")
  if running "$n"; then return 0; fi
  : >"$dir/broker.log"
  nohup java -Xms64m -Xmx"$KAFKA_NODE_HEAP" -XX:+UseG1GC -XX:TieredStopAtLevel=1 \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$repo/deploy/kafka/log4j2.properties" \
    -Dkafka.logs.dir="$dir" -cp "$libs/*" kafka.Kafka "$dir/server.properties" \
    >"$dir/broker.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$n")"
}

wait_started() {
  local n=$1 dir
  dir=$(node_dir "$n")
  for _ in $(seq 1 360); do
    if ! running "$n"; then
      echo "kafka node $n exited during start; last lines of $dir/broker.log:" >&2
      tail -n 30 "$dir/broker.log" >&2
      exit 1
    fi
    if port_open "$(broker_port "$n")" && grep -q "Kafka Server started" "$dir/broker.log"; then
      return 0
    fi
    sleep 0.5
  done
  echo "kafka node $n did not start within 180 s; see $dir/broker.log" >&2
  exit 1
}

start() {
  "$here/kafka.sh" fetch
  mkdir -p "$base"
  for n in $NODES; do write_properties "$n"; done
  format_all
  # All three at once: a node waits for a quorum of voters before it
  # reports started, so starting them one by one would only serialise.
  for n in $NODES; do launch "$n"; done
  for n in $NODES; do wait_started "$n"; done
  bootstrap
}

start_node() {
  local n=$1
  write_properties "$n"
  launch "$n"
  wait_started "$n"
}

kill_node() {
  local n=$1
  if running "$n"; then
    local pid
    pid=$(cat "$(pidfile "$n")")
    kill -9 "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  fi
  rm -f "$(pidfile "$n")"
}

stop_node() {
  local n=$1
  if running "$n"; then
    local pid
    pid=$(cat "$(pidfile "$n")")
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$(pidfile "$n")"
}

stop() {
  # SIGTERM to all at once: a node shutting down alone waits for the
  # others' controlled-shutdown handshakes.
  for n in $NODES; do
    if running "$n"; then kill "$(cat "$(pidfile "$n")")" 2>/dev/null || true; fi
  done
  for n in $NODES; do stop_node "$n"; done
}

check_node() {
  case "${1:-}" in
    1|2|3) ;;
    *) echo "node must be 1, 2 or 3" >&2; exit 2 ;;
  esac
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  bootstrap) bootstrap ;;
  kill) check_node "${2:-}"; kill_node "$2" ;;
  start-node) check_node "${2:-}"; start_node "$2" ;;
  pid) check_node "${2:-}"; if running "$2"; then cat "$(pidfile "$2")"; fi ;;
  *) echo "usage: $0 start|stop|bootstrap|kill N|start-node N|pid N" >&2; exit 2 ;;
esac
