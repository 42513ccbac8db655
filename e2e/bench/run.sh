#!/usr/bin/env bash
# `make bench`: Siphon's throughput, latency and memory, measured against
# references in the same run (pg_recvlogical for streaming, COPY for backfill
# and polling, the Debezium connector on the same workloads).
#
#   bash e2e/bench/run.sh                   # full run (about 10-15 minutes on 2 cores)
#   BENCH_SCALE=0.1 bash e2e/bench/run.sh   # small smoke run
#   BENCH_ONLY=single,latency bash e2e/bench/run.sh
#       scenarios: single, large1m, batch10, latency, memory, backfill,
#       client (Siphon's replication client against the pgwire-replication
#       crate and pg_recvlogical: in-process, decoded, no Kafka),
#       polling (mode: Polling: throughput against COPY in cursor order,
#       NOTIFY wake-up latency, idle load in transactions per interval),
#       debezium (the Debezium connector on Kafka Connect beside Siphon:
#       200k single-row transactions and one 1M-row transaction from a
#       backlog, an initial snapshot of 1M rows; rows/s, memory, CPU)
#   BENCH_WORKER=/path/to/siphon-worker     # measure another build (A/B)
#   BENCH_REF_PROTO=2                       # reference with pgoutput v2 + streaming
#   BENCH_PERF=1 (or callgraph)             # perf record each worker: target/bench/run/perf-*.data
#   BENCH_OPERATOR_SCALE=1                  # then e2e/bench/operator_scale.sh (needs
#                                           # `make stack-up`; creates 100 captures)
#
# Uses the local stack's PostgreSQL (127.0.0.1:15432) and Kafka (127.0.0.1:19092),
# starting them when they are not running and reusing them when they are (it
# never stops them). Builds siphon-worker and siphon-bench in release, then
# runs siphon-bench, which writes target/bench/summary.json and prints a table.
# Every database, slot and topic it creates is named siphon_bench_* /
# siphon-bench-* and dropped at the end, also after a failure (trap below).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
STATE_DIR="${STACK_DIR:-$ROOT/.stack}"
PG_PORT="${STACK_PG_PORT:-15432}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
OUT="$ROOT/target/bench"
PIDS="$OUT/pids"
WORKER="${BENCH_WORKER:-$ROOT/target/release/siphon-worker}"
# PG_MAIN_CONF (e2e/lib.sh, which postgres.sh sources) holds the main
# instance's settings as `stack.sh up` passes them: pg_up restarts a running
# instance that differs, and starts a stopped one exactly as the stack would.
# shellcheck source=e2e/stack/postgres.sh
source "$ROOT/e2e/stack/postgres.sh"
# shellcheck source=e2e/stack/kafka.sh
source "$ROOT/e2e/stack/kafka.sh"

log() { printf 'bench: %s\n' "$*" >&2; }

# After siphon-bench (or a crash of it): end the children it listed (only
# those, and only if they still are our programs), then drop what is left of
# its slots and databases so no slot holds WAL.
cleanup() {
  local pid cmd
  if [[ -f $PIDS ]]; then
    while read -r pid; do
      [[ $pid =~ ^[0-9]+$ ]] || continue
      cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
      if [[ $cmd == *siphon-worker* || $cmd == *pg_recvlogical* || $cmd == *ConnectStandalone* || $cmd == "perf record"* ]]; then
        kill -TERM "$pid" 2>/dev/null || true
      fi
    done <"$PIDS"
    rm -f "$PIDS"
  fi
  pg_psql "$PG_PORT" -c "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
      WHERE slot_name LIKE 'siphon\_bench\_%' AND active_pid IS NOT NULL" >/dev/null 2>&1 || true
  sleep 0.5
  pg_psql "$PG_PORT" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
      WHERE slot_name LIKE 'siphon\_bench\_%' AND active_pid IS NULL" >/dev/null 2>&1 || true
  local db
  while read -r db; do
    [[ -n $db ]] || continue
    pg_psql "$PG_PORT" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  done < <(pg_psql "$PG_PORT" -At -c "SELECT datname FROM pg_database WHERE datname LIKE 'siphon\_bench\_%'" 2>/dev/null || true)
}

main() {
  mkdir -p "$OUT" "$STATE_DIR"
  log "PostgreSQL on 127.0.0.1:$PG_PORT and Kafka on 127.0.0.1:$KAFKA_PORT (started if not running)"
  pg_up "$STATE_DIR" "$PG_PORT" main "${PG_MAIN_CONF[@]}"
  kafka_build
  kafka_up "$STATE_DIR"
  # The `debezium` scenario's connector (fetched once, like stack-up does).
  bash "$ROOT/e2e/debezium/debezium.sh" build
  export DEBEZIUM_VERSION KAFKA_VERSION

  # Two builds, not one: built together, the packages' features would be
  # unified and the worker measured would not be the worker shipped.
  log "building siphon-worker and siphon-bench (release)"
  (cd "$ROOT" && cargo build --release -p siphon-worker && cargo build --release -p siphon-bench)

  trap cleanup EXIT
  trap 'exit 130' INT TERM
  (cd "$ROOT" && "$ROOT/target/release/siphon-bench" \
    --worker "$WORKER" \
    --pg-port "$PG_PORT" \
    --kafka "127.0.0.1:$KAFKA_PORT" \
    --pg-bindir "$(_pg_bindir)" \
    --out "$OUT" \
    --repo "$ROOT")
  if [[ ${BENCH_OPERATOR_SCALE:-0} == 1 ]]; then
    log "operator scale (e2e/bench/operator_scale.sh)"
    bash "$ROOT/e2e/bench/operator_scale.sh"
  fi
}

main "$@"
