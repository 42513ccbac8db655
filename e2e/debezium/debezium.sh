#!/usr/bin/env bash
# The Debezium PostgreSQL connector beside Siphon, for the compatibility check
# (worker/tests/integration/debezium_compat.rs) and `make bench`'s side-by-side
# figures. Kafka Connect standalone runs from the stack's Kafka jars
# (.cache/kafka-libs); the connector is a Connect plugin under
# .cache/debezium/plugins, fetched from Maven Central at DEBEZIUM_VERSION
# (e2e/versions.env).
#
#   e2e/debezium/debezium.sh build
#       fetch the connector's jars once per version (make stack-up runs it)
#   e2e/debezium/debezium.sh connect WORK_DIR CONNECTOR_PROPERTIES [KEY=VALUE...]
#       run one Connect standalone worker in the foreground until SIGTERM:
#       JSON converter without schemas (keys and values, as Siphon's records),
#       offsets in WORK_DIR/offsets, REST on a free loopback port. KEY=VALUE
#       pairs are added to the worker's properties (producer.* tuning).
#
# Environment: KAFKA_BOOTSTRAP (from .stack/env), DEBEZIUM_HEAP (default -Xmx1g),
# DEBEZIUM_LOG_LEVEL (default INFO).

set -euo pipefail

ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)}"
# shellcheck source=e2e/lib.sh
source "$ROOT/e2e/lib.sh"
siphon_load_versions

DEBEZIUM_HOME="${DEBEZIUM_HOME:-$ROOT/.cache/debezium}"
DEBEZIUM_PLUGINS="$DEBEZIUM_HOME/plugins"
KAFKA_LIBS="${KAFKA_LIBS:-$ROOT/.cache/kafka-libs}"
M2_REPO="${KAFKA_M2_REPO:-$ROOT/.cache/m2}"

err() { siphon_err debezium.sh "$@"; }

stamp_want() {
  printf 'debezium=%s pom=%s\n' "${DEBEZIUM_VERSION:?DEBEZIUM_VERSION is not set in e2e/versions.env}" \
    "$(sha256sum "$ROOT/e2e/debezium/pom.xml" | cut -d' ' -f1)"
}

build() {
  local want dir=$DEBEZIUM_PLUGINS/debezium-connector-postgres tmp log
  want=$(stamp_want)
  if [[ -f $DEBEZIUM_HOME/.stamp && $(cat "$DEBEZIUM_HOME/.stamp") == "$want" ]] &&
    compgen -G "$dir/debezium-connector-postgres-*.jar" >/dev/null; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || { err "maven (mvn) not found; needed once to fetch the Debezium connector"; return 1; }
  echo "debezium.sh: fetching the Debezium PostgreSQL connector $DEBEZIUM_VERSION into $dir" >&2
  mkdir -p "$DEBEZIUM_HOME" "$M2_REPO"
  tmp=$dir.tmp.$$ log=$DEBEZIUM_HOME/build.log
  rm -rf "$tmp"
  if ! mvn -B -ntp -f "$ROOT/e2e/debezium/pom.xml" -Dmaven.repo.local="$M2_REPO" \
    -Ddebezium.version="$DEBEZIUM_VERSION" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$log" 2>&1; then
    rm -rf "$tmp"
    err "maven could not fetch the connector; last lines of $log:"
    grep -E 'ERROR|BUILD' "$log" | tail -n 15 >&2
    return 1
  fi
  rm -rf "$dir"
  mkdir -p "$DEBEZIUM_PLUGINS"
  mv "$tmp" "$dir"
  printf '%s\n' "$want" >"$DEBEZIUM_HOME/.stamp"
}

connect() {
  (($# >= 2)) || { err "usage: debezium.sh connect WORK_DIR CONNECTOR_PROPERTIES [KEY=VALUE...]"; return 2; }
  local work=$1 connector=$2
  shift 2
  [[ -n ${KAFKA_BOOTSTRAP:-} ]] || { err "KAFKA_BOOTSTRAP is not set: source .stack/env"; return 1; }
  compgen -G "$KAFKA_LIBS/connect-runtime-*.jar" >/dev/null ||
    { err "no Kafka Connect runtime in $KAFKA_LIBS: run make stack-up"; return 1; }
  build
  mkdir -p "$work"
  work=$(siphon_abspath "$work")
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  {
    echo "bootstrap.servers=$KAFKA_BOOTSTRAP"
    echo "key.converter=org.apache.kafka.connect.json.JsonConverter"
    echo "value.converter=org.apache.kafka.connect.json.JsonConverter"
    echo "key.converter.schemas.enable=false"
    echo "value.converter.schemas.enable=false"
    echo "offset.storage.file.filename=$work/offsets"
    echo "offset.flush.interval.ms=1000"
    echo "plugin.path=$DEBEZIUM_PLUGINS"
    echo "plugin.discovery=service_load"
    echo "listeners=http://127.0.0.1:$port"
    local kv
    for kv in "$@"; do echo "$kv"; done
  } >"$work/worker.properties"
  cat >"$work/log4j.properties" <<LOG
log4j.rootLogger=${DEBEZIUM_LOG_LEVEL:-INFO}, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
LOG
  local -a heap
  read -r -a heap <<<"${DEBEZIUM_HEAP:--Xmx1g}"
  exec java "${heap[@]}" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$work/log4j.properties" \
    -cp "$KAFKA_LIBS/*" org.apache.kafka.connect.cli.ConnectStandalone \
    "$work/worker.properties" "$connector"
}

case "${1:-}" in
  build) build ;;
  connect) shift; connect "$@" ;;
  *) err "usage: debezium.sh build | connect WORK_DIR CONNECTOR_PROPERTIES [KEY=VALUE...]"; exit 2 ;;
esac
