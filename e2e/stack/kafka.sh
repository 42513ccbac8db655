# shellcheck shell=bash
# Kafka part of the local real test stack: a single-node KRaft broker+controller
# run straight from Maven Central jars (no tarball, no container). A library:
# source it, then call
#
#   kafka_build                         # fetch jars into $ROOT/.cache/kafka-libs (once per version set)
#   kafka_up   STATE_DIR                # format once, start, wait until it answers; idempotent
#   kafka_down STATE_DIR                # SIGTERM our pid, SIGKILL after KAFKA_STOP_TIMEOUT
#   kafka_topics STATE_DIR ARGS...      # TopicCommand (kafka-topics.sh); --bootstrap-server added
#   kafka_console_consume STATE_DIR ARGS...   # ConsoleConsumer; --bootstrap-server added
#   kafka_console_produce STATE_DIR ARGS...   # ConsoleProducer (stdin, one record a line)
#   kafka_cli CLASS ARGS...             # any Kafka CLI main class on the same classpath
#   kafka_bootstrap                     # 127.0.0.1:$KAFKA_PORT
#
# Layout: STATE_DIR/kafka/{server.properties,client.properties,data/},
# STATE_DIR/pids/kafka.pid, STATE_DIR/logs/kafka.log.
# Loopback only: PLAINTEXT 127.0.0.1:$KAFKA_PORT (19092), controller
# 127.0.0.1:$KAFKA_CONTROLLER_PORT (19093), and for clients that need them:
# SSL $KAFKA_SSL_PORT (19094, server certificate only), MTLS
# $KAFKA_MTLS_PORT (19095, SSL requiring a client certificate) and SASL_SSL
# $KAFKA_SASL_SSL_PORT (19096, SCRAM-SHA-512 user $KAFKA_SCRAM_USER). The
# certificates are made once by the stack (openssl) under
# STATE_DIR/kafka/tls: ca.crt, client.crt and client.key for clients.
#
# Written for callers running `set -euo pipefail`; sourcing only sets variable
# defaults (ROOT, versions from e2e/versions.env, KAFKA_* knobs).

ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_SSL_PORT="${KAFKA_SSL_PORT:-19094}"
KAFKA_MTLS_PORT="${KAFKA_MTLS_PORT:-19095}"
KAFKA_SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-19096}"
KAFKA_SCRAM_USER="${KAFKA_SCRAM_USER:-siphon}"
KAFKA_SCRAM_PASSWORD="${KAFKA_SCRAM_PASSWORD:-siphon-scram-secret}"
KAFKA_LIBS="${KAFKA_LIBS:-$ROOT/.cache/kafka-libs}"
KAFKA_M2_REPO="${KAFKA_M2_REPO:-$ROOT/.cache/m2}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}"
# Short-lived CLI JVMs: small heap, C1 only (starts faster).
KAFKA_CLI_OPTS="${KAFKA_CLI_OPTS:--Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_JAVA="${KAFKA_JAVA:-java}"
KAFKA_MVN="${KAFKA_MVN:-mvn}"

# Set each KEY=VALUE of e2e/versions.env that the caller has not set already.
# shellcheck source=e2e/lib.sh
source "$ROOT/e2e/lib.sh"
siphon_load_versions

_kafka_err() { siphon_err kafka.sh "$@"; }



_kafka_stamp_want() {
  local pomsum
  pomsum=$(sha256sum "$ROOT/e2e/kafka/pom.xml" | cut -d' ' -f1)
  printf 'kafka=%s slf4j=%s reload4j=%s pom=%s\n' \
    "${KAFKA_VERSION:-}" "${SLF4J_VERSION:-}" "${RELOAD4J_VERSION:-}" "$pomsum"
}

# Fetch the broker + CLI jars (and deps) into $KAFKA_LIBS, unless the stamp says
# they are there for exactly these versions and this pom.
kafka_build() {
  local v
  for v in KAFKA_VERSION SLF4J_VERSION RELOAD4J_VERSION; do
    [[ -n ${!v:-} ]] || { _kafka_err "$v is not set (expected in $ROOT/e2e/versions.env)"; return 1; }
  done
  local stamp=$KAFKA_LIBS/.stamp want
  want=$(_kafka_stamp_want) || return 1
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]] &&
    compgen -G "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null; then
    return 0
  fi
  command -v "$KAFKA_MVN" >/dev/null 2>&1 || { _kafka_err "maven ($KAFKA_MVN) not found; needed once to fetch the Kafka jars"; return 1; }
  command -v "$KAFKA_JAVA" >/dev/null 2>&1 || { _kafka_err "java ($KAFKA_JAVA) not found; Kafka $KAFKA_VERSION needs Java 11+ (17 tested)"; return 1; }
  echo "kafka.sh: fetching Kafka $KAFKA_VERSION jars into $KAFKA_LIBS (maven repo $KAFKA_M2_REPO)" >&2
  local tmp=$KAFKA_LIBS.tmp.$$ buildlog
  mkdir -p "$(dirname "$KAFKA_LIBS")" "$KAFKA_M2_REPO"
  buildlog=$(dirname "$KAFKA_LIBS")/kafka-build.log
  rm -rf "$tmp"
  if ! "$KAFKA_MVN" -B -ntp -f "$ROOT/e2e/kafka/pom.xml" \
    -Dmaven.repo.local="$KAFKA_M2_REPO" \
    -Dkafka.version="$KAFKA_VERSION" -Dslf4j.version="$SLF4J_VERSION" \
    -Dreload4j.version="$RELOAD4J_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
    >"$buildlog" 2>&1; then
    rm -rf "$tmp"
    _kafka_err "maven could not fetch the Kafka jars; last lines of $buildlog:"
    grep -E 'ERROR|BUILD' "$buildlog" | tail -n 15 >&2
    return 1
  fi
  if ! compgen -G "$tmp/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null; then
    rm -rf "$tmp"
    _kafka_err "maven finished but $tmp/kafka_2.13-$KAFKA_VERSION.jar is missing; see $buildlog"
    return 1
  fi
  printf '%s\n' "$want" >"$tmp/.stamp"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
}

# _kafka_run_cli CLASS ARGS... : a JVM with the CLI options, no build check.
# With _KAFKA_CLI_TIMEOUT=N in its environment it is killed after N seconds.
_kafka_run_cli() {
  local -a opts pre=()
  read -r -a opts <<<"$KAFKA_CLI_OPTS"
  [[ -n ${_KAFKA_CLI_TIMEOUT:-} ]] && pre=(timeout "$_KAFKA_CLI_TIMEOUT")
  "${pre[@]}" "$KAFKA_JAVA" "${opts[@]}" \
    -Dlog4j.configuration="file:$ROOT/e2e/kafka/tools-log4j.properties" \
    -cp "$KAFKA_LIBS/*" "$@"
}

# kafka_cli CLASS ARGS... : a Kafka CLI main class, logging WARN+ to stderr.
kafka_cli() {
  (($# >= 1)) || { _kafka_err "usage: kafka_cli CLASS ARGS..."; return 2; }
  kafka_build || return 1
  _kafka_run_cli "$@"
}

kafka_bootstrap() { echo "127.0.0.1:$KAFKA_PORT"; }

# Adds --bootstrap-server unless the caller passed one.
_kafka_with_bootstrap() {
  local cls=$1
  shift
  local a
  for a in "$@"; do
    [[ $a == --bootstrap-server || $a == --bootstrap-server=* ]] && { kafka_cli "$cls" "$@"; return; }
  done
  kafka_cli "$cls" --bootstrap-server "$(kafka_bootstrap)" "$@"
}

# kafka_topics STATE_DIR ARGS... (STATE_DIR kept for symmetry; the broker address is kafka_bootstrap)
kafka_topics() {
  (($# >= 1)) || { _kafka_err "usage: kafka_topics STATE_DIR ARGS..."; return 2; }
  shift
  _kafka_with_bootstrap org.apache.kafka.tools.TopicCommand "$@"
}

# kafka_console_consume STATE_DIR ARGS... e.g. --topic t --from-beginning --max-messages 3
#   --property print.key=true --isolation-level read_committed --timeout-ms 10000
kafka_console_consume() {
  (($# >= 1)) || { _kafka_err "usage: kafka_console_consume STATE_DIR ARGS..."; return 2; }
  shift
  _kafka_with_bootstrap org.apache.kafka.tools.consumer.ConsoleConsumer "$@"
}

# kafka_console_produce STATE_DIR ARGS... (records from stdin, one per line;
# in Kafka 3.9 the class is kafka.tools.ConsoleProducer, in core, not in kafka-tools)
kafka_console_produce() {
  (($# >= 1)) || { _kafka_err "usage: kafka_console_produce STATE_DIR ARGS..."; return 2; }
  shift
  _kafka_with_bootstrap kafka.tools.ConsoleProducer "$@"
}

# Pid of OUR broker for STATE_DIR (pid file + a live java whose command line
# names our server.properties), or fail.
_kafka_our_pid() {
  siphon_pid_matching "$1/pids/kafka.pid" kafka.Kafka "$1/kafka/server.properties"
}

_kafka_server_properties() { # STATE_DIR
  local state=$1
  cat <<EOF
# Written by e2e/stack/kafka.sh at every kafka_up; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT,MTLS://127.0.0.1:$KAFKA_MTLS_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT,MTLS://127.0.0.1:$KAFKA_MTLS_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,MTLS:SSL,SASL_SSL:SASL_SSL
# TLS: PEM files made by _kafka_tls; MTLS demands a client certificate.
ssl.keystore.type=PEM
ssl.keystore.location=$state/kafka/tls/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$state/kafka/tls/ca.crt
listener.name.mtls.ssl.client.auth=required
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=$state/kafka/data
# single node
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
# small machine
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=4
# the compaction dedupe buffer is allocated up front (default 128 MiB of heap)
log.cleaner.dedupe.buffer.size=16777216
# tests: keep the disk small
log.retention.ms=3600000
log.retention.bytes=1073741824
log.segment.bytes=67108864
log.retention.check.interval.ms=60000
EOF
}

# _kafka_tls STATE_DIR: a CA, the broker's certificate (127.0.0.1 and
# localhost) and a client certificate, made once with openssl.
_kafka_tls() {
  local dir=$1/kafka/tls
  [[ -s $dir/broker.pem && -s $dir/client.key && -s $dir/ca.crt ]] && return 0
  command -v openssl >/dev/null 2>&1 || { _kafka_err "openssl not found; needed once for the TLS listeners"; return 1; }
  local tmp=$dir.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp"
  (
    cd "$tmp"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=siphon-stack-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign"
    local who
    for who in broker client; do
      openssl req -newkey rsa:2048 -nodes -keyout "$who.key" -out "$who.csr" -subj "/CN=siphon-$who"
      printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
        "extendedKeyUsage=serverAuth,clientAuth" >"$who.ext"
      openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -out "$who.crt" -days 3650 -extfile "$who.ext"
    done
    # Kafka's PEM keystore: the unencrypted PKCS#8 key, then the certificate.
    cat broker.key broker.crt >broker.pem
    rm -f ./*.csr ./*.ext ca.srl
  ) >"$tmp.log" 2>&1 || { _kafka_err "making the TLS certificates failed:"; tail -n 20 "$tmp.log" >&2; rm -rf "$tmp"; return 1; }
  rm -f "$tmp.log"
  chmod 644 "$tmp"/*
  rm -rf "$dir"
  mv "$tmp" "$dir"
}

# _kafka_scram_user STATE_DIR: the SCRAM-SHA-512 credentials of the SASL_SSL
# listener's user (idempotent: the broker keeps them in its metadata log).
_kafka_scram_user() {
  local state=$1
  _KAFKA_CLI_TIMEOUT=60 _kafka_run_cli kafka.admin.ConfigCommand \
    --bootstrap-server "$(kafka_bootstrap)" --command-config "$state/kafka/client.properties" \
    --alter --entity-type users --entity-name "$KAFKA_SCRAM_USER" \
    --add-config "SCRAM-SHA-512=[password=$KAFKA_SCRAM_PASSWORD]" >>"$state/logs/kafka.log" 2>&1 ||
    { _kafka_err "cannot create the SCRAM user $KAFKA_SCRAM_USER; see $state/logs/kafka.log"; return 1; }
}

# Ready = our pid alive, port open and a metadata request (topic list) answered.
_kafka_ready() {
  local state=$1
  siphon_port_open "$KAFKA_PORT" || return 1
  _KAFKA_CLI_TIMEOUT=30 _kafka_run_cli org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$(kafka_bootstrap)" --command-config "$state/kafka/client.properties" \
    --list >/dev/null 2>&1
}

_kafka_wait_ready() { # STATE_DIR
  local state=$1 log=$1/logs/kafka.log deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while :; do
    if ! _kafka_our_pid "$state" >/dev/null; then
      _kafka_err "the broker exited during startup; last lines of $log:"
      tail -n 30 "$log" >&2
      rm -f "$state/pids/kafka.pid"
      return 1
    fi
    _kafka_ready "$state" && return 0
    if ((SECONDS >= deadline)); then
      _kafka_err "the broker did not answer on $(kafka_bootstrap) within ${KAFKA_START_TIMEOUT}s; stopping it. Last lines of $log:"
      tail -n 30 "$log" >&2
      kafka_down "$state" || true
      return 1
    fi
    sleep 0.5
  done
}

kafka_up() {
  (($# >= 1)) || { _kafka_err "usage: kafka_up STATE_DIR"; return 2; }
  local state
  state=$(siphon_abspath "$1")
  local kdir=$state/kafka pidf=$state/pids/kafka.pid log=$state/logs/kafka.log

  _kafka_tls "$state" || return 1
  if _kafka_our_pid "$state" >/dev/null; then
    if cmp -s <(_kafka_server_properties "$state") "$kdir/server.properties"; then
      # Ours and listening: nothing to do. Ours but not listening yet: still starting.
      siphon_port_open "$KAFKA_PORT" && return 0
      _kafka_wait_ready "$state"
      return
    fi
    echo "kafka.sh: the broker runs with an older configuration; restarting it" >&2
    kafka_down "$state" || return 1
  fi
  rm -f "$pidf"

  kafka_build || return 1
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SSL_PORT" "$KAFKA_MTLS_PORT" "$KAFKA_SASL_SSL_PORT"; do
    if siphon_port_busy "$p"; then
      _kafka_err "port $p on 127.0.0.1 is already in use by another process (not our broker for $state); set KAFKA_PORT/KAFKA_CONTROLLER_PORT or free it"
      return 1
    fi
  done

  mkdir -p "$kdir/data" "$state/pids" "$state/logs" || return 1
  _kafka_server_properties "$state" >"$kdir/server.properties"
  printf '%s\n' 'request.timeout.ms=5000' 'default.api.timeout.ms=10000' >"$kdir/client.properties"

  if [[ ! -f $kdir/data/meta.properties ]]; then
    # A cluster id is a base64url-encoded random 16-byte UUID (what StorageTool random-uuid prints).
    local cid
    cid=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    echo "=== $(date -u +%FT%TZ) format cluster $cid" >>"$log"
    if ! _kafka_run_cli kafka.tools.StorageTool format --ignore-formatted \
      -t "$cid" -c "$kdir/server.properties" >>"$log" 2>&1; then
      _kafka_err "formatting $kdir/data failed; last lines of $log:"
      tail -n 20 "$log" >&2
      return 1
    fi
  fi

  echo "=== $(date -u +%FT%TZ) kafka_up $(kafka_bootstrap) (Kafka $KAFKA_VERSION)" >>"$log"
  # setsid: own session, so the caller's Ctrl-C/job control does not reach it.
  # The outer ( ... & ) detaches it from the caller (a later bare `wait` in the
  # caller does not block on the broker; init reaps it). The inner shell writes
  # its own pid, then execs java, so the pid file is the JVM whether or not
  # setsid had to fork.
  local -a jvm_opts
  read -r -a jvm_opts <<<"$KAFKA_HEAP_OPTS $KAFKA_JVM_OPTS"
  # shellcheck disable=SC2016 # $$ is for the inner shell
  (setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$pidf" \
    "$KAFKA_JAVA" "${jvm_opts[@]}" \
    -Dlog4j.configuration="file:$ROOT/e2e/kafka/log4j.properties" \
    -Dkafka.logs.dir="$state/logs" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$kdir/server.properties" \
    </dev/null >>"$log" 2>&1 &)
  local i
  for ((i = 0; i < 100; i++)); do
    [[ -s $pidf ]] && break
    sleep 0.05
  done
  [[ -s $pidf ]] || { _kafka_err "the broker did not start (no pid file $pidf); see $log"; return 1; }
  _kafka_wait_ready "$state" || return 1
  _kafka_scram_user "$state"
}

kafka_down() {
  (($# >= 1)) || { _kafka_err "usage: kafka_down STATE_DIR"; return 2; }
  local state pid i
  state=$(siphon_abspath "$1")
  if ! pid=$(_kafka_our_pid "$state"); then
    rm -f "$state/pids/kafka.pid"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < KAFKA_STOP_TIMEOUT * 10; i++)); do
    _kafka_our_pid "$state" >/dev/null || break
    sleep 0.1
  done
  if _kafka_our_pid "$state" >/dev/null; then
    _kafka_err "broker pid $pid ignored SIGTERM for ${KAFKA_STOP_TIMEOUT}s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      _kafka_our_pid "$state" >/dev/null || break
      sleep 0.1
    done
  fi
  if _kafka_our_pid "$state" >/dev/null; then
    _kafka_err "broker pid $pid is still alive"
    return 1
  fi
  rm -f "$state/pids/kafka.pid"
}
