#!/usr/bin/env bash
# The local real stack of Siphon: PostgreSQL, Kafka, a Kubernetes control plane,
# the node agent, the CRD and the operator, all on 127.0.0.1.
#
#   e2e/stack/stack.sh up      # idempotent; writes .stack/env
#   e2e/stack/stack.sh down    # stops only what it started (pid files)
#   e2e/stack/stack.sh status
#
# Layout of .stack/ (git-ignored):
#   env                 source it: KUBECONFIG, PGHOST, PGPORT, PGUSER, PGPASSWORD,
#                       KAFKA_BOOTSTRAP, plus PG_REPLICA_PORT (a second PostgreSQL
#                       with wal_level=replica, for preflight tests) and
#                       PG<major>_PORT for each other major (12 13 14 16 17 18),
#                       and Kafka's TLS, mutual TLS and SASL_SSL listeners
#                       (KAFKA_SSL_BOOTSTRAP, KAFKA_MTLS_BOOTSTRAP,
#                       KAFKA_SASL_SSL_BOOTSTRAP, KAFKA_TLS_DIR, KAFKA_SCRAM_*)
#   controlplane/       etcd, kube-apiserver, controller-manager, scheduler
#   pg-main/ pg-replica/ kafka/
#   logs/               every process's log; logs/pods/ holds the pods' output
#   pids/               node-agent.pid, operator.pid
# Builds are cached in .cache/ (Go modules and binaries, Kafka jars, the
# Debezium connector under .cache/debezium).

set -euo pipefail

STACK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
STACK_DIR="${STACK_DIR:-$STACK_ROOT/.stack}"
STACK_PG_PORT="${STACK_PG_PORT:-15432}"
STACK_PG_REPLICA_PORT="${STACK_PG_REPLICA_PORT:-15433}"
STACK_OPERATOR_METRICS_PORT="${STACK_OPERATOR_METRICS_PORT:-18080}"
STACK_NODE_NAME="${STACK_NODE_NAME:-siphon-node}"
# Which cargo profile the stack runs (dev for tests, release for benchmarks).
STACK_PROFILE="${STACK_PROFILE:-dev}"

ROOT="$STACK_ROOT"
# shellcheck source=e2e/stack/postgres.sh
source "$STACK_ROOT/e2e/stack/postgres.sh"
# shellcheck source=e2e/stack/kafka.sh
source "$STACK_ROOT/e2e/stack/kafka.sh"
# shellcheck source=e2e/stack/controlplane.sh
source "$STACK_ROOT/e2e/stack/controlplane.sh"

log() { printf 'stack: %s\n' "$*" >&2; }
die() {
    printf 'stack: error: %s\n' "$*" >&2
    exit 1
}

target_dir() {
    if [[ "$STACK_PROFILE" == release ]]; then echo "$STACK_ROOT/target/release"; else echo "$STACK_ROOT/target/debug"; fi
}

# Every tool the stack needs, with what to install when it is missing.
check_prerequisites() {
    local missing=()
    command -v cargo >/dev/null || missing+=("cargo (install Rust with rustup)")
    command -v go >/dev/null || missing+=("go (Go 1.24 or newer, for the control plane)")
    command -v java >/dev/null || missing+=("java (JDK 17, for Kafka)")
    command -v mvn >/dev/null || missing+=("mvn (Maven, to fetch the Kafka jars)")
    command -v openssl >/dev/null || missing+=("openssl (certificates of the control plane)")
    command -v curl >/dev/null || missing+=("curl (readiness checks)")
    command -v kubectl >/dev/null || missing+=("kubectl (apt-get install kubectl, or any kubectl ≥ 1.30)")
    command -v cc >/dev/null || missing+=("cc (gcc, to build librdkafka)")
    if ((${#missing[@]})); then
        printf 'stack: missing prerequisites:\n' >&2
        printf '  - %s\n' "${missing[@]}" >&2
        exit 1
    fi
}

pid_alive() { # FILE -> 0 when the pid in FILE is a live process
    local f="$1" pid
    [[ -f "$f" ]] || return 1
    pid="$(<"$f")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

spawn() { # NAME LOGFILE CMD... -> starts CMD detached, writes pids/NAME.pid
    local name="$1" logfile="$2"
    shift 2
    setsid "$@" >>"$logfile" 2>&1 < /dev/null &
    echo $! >"$STACK_DIR/pids/$name.pid"
}

stop_pidfile() { # NAME [TIMEOUT]
    local name="$1" timeout="${2:-20}" f="$STACK_DIR/pids/$1.pid" pid deadline
    if pid_alive "$f"; then
        pid="$(<"$f")"
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + timeout))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop after ${timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$f"
}

build_binaries() {
    local flags=()
    [[ "$STACK_PROFILE" == release ]] && flags+=(--release)
    log "building siphon binaries ($STACK_PROFILE)"
    (cd "$STACK_ROOT" && cargo build "${flags[@]}" -p siphon-operator -p siphon-worker -p siphon-node-agent)
}

write_env() {
    cat >"$STACK_DIR/env" <<EOF
# Written by \`make stack-up\`; source it to reach the local stack.
export KUBECONFIG="$STACK_DIR/controlplane/kubeconfig"
export PGHOST=127.0.0.1
export PGPORT=$STACK_PG_PORT
export PGUSER=postgres
export PGPASSWORD=$PG_SUPERUSER_PASSWORD
export PGDATABASE=postgres
export KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
export KAFKA_SSL_BOOTSTRAP=127.0.0.1:$KAFKA_SSL_PORT
export KAFKA_MTLS_BOOTSTRAP=127.0.0.1:$KAFKA_MTLS_PORT
export KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:$KAFKA_SASL_SSL_PORT
export KAFKA_TLS_DIR="$STACK_DIR/kafka/tls"
export KAFKA_SCRAM_USER=$KAFKA_SCRAM_USER
export KAFKA_SCRAM_PASSWORD=$KAFKA_SCRAM_PASSWORD
export PG_REPLICA_PORT=$STACK_PG_REPLICA_PORT
$(for major in $STACK_PG_OTHER_MAJORS; do echo "export PG${major}_PORT=$(other_major_port "$major")"; done)
export SIPHON_STACK_DIR="$STACK_DIR"
export SIPHON_NODE_NAME=$STACK_NODE_NAME
export SIPHON_BIN_DIR="$(target_dir)"
export SIPHON_OPERATOR_METRICS=127.0.0.1:$STACK_OPERATOR_METRICS_PORT
EOF
}

# The chart's default image (charts/siphon/values.yaml image.repository):
# the node agent runs it from the stack's build, so the chart installs here
# exactly as a user installs it, without overriding the image.
CHART_IMAGE=ghcr.io/siphon-dev/siphon

start_node_agent() {
    if pid_alive "$STACK_DIR/pids/node-agent.pid"; then
        log "node agent already running (pid $(<"$STACK_DIR/pids/node-agent.pid"))"
        return
    fi
    mkdir -p "$STACK_DIR/logs/pods" "$STACK_DIR/node"
    spawn node-agent "$STACK_DIR/logs/node-agent.log" \
        env RUST_LOG="${NODE_AGENT_LOG:-info}" "$(target_dir)/siphon-node-agent" \
        --kubeconfig "$STACK_DIR/controlplane/kubeconfig" \
        --node-name "$STACK_NODE_NAME" \
        --state-dir "$STACK_DIR/node" \
        --log-dir "$STACK_DIR/logs/pods" \
        --image-map "siphon=$(target_dir)" \
        --image-map "$CHART_IMAGE=$(target_dir)" \
        --image-map "siphon-release=$STACK_ROOT/target/release"
    log "started node agent (pid $(<"$STACK_DIR/pids/node-agent.pid"))"
    local deadline=$((SECONDS + 60))
    until kubectl --kubeconfig "$STACK_DIR/controlplane/kubeconfig" get node "$STACK_NODE_NAME" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True; do
        ((SECONDS < deadline)) || die "node $STACK_NODE_NAME not Ready after 60s; see $STACK_DIR/logs/node-agent.log"
        pid_alive "$STACK_DIR/pids/node-agent.pid" || die "node agent exited; see $STACK_DIR/logs/node-agent.log"
        sleep 0.5
    done
}

install_crd() {
    local kc="$STACK_DIR/controlplane/kubeconfig"
    kubectl --kubeconfig "$kc" apply --server-side --force-conflicts -f "$STACK_ROOT/crds/postgrescapture.yaml" >/dev/null
    kubectl --kubeconfig "$kc" wait --for=condition=Established --timeout=60s crd/postgrescaptures.siphon.dev >/dev/null
    log "CRD postgrescaptures.siphon.dev established"
}

# The stack's operator leaves alone the captures labelled siphon.dev/operator:
# those belong to an operator installed by the chart (the chart test installs
# one, under its own RBAC, beside this one).
STACK_CAPTURE_SELECTOR='!siphon.dev/operator'

start_operator() {
    if pid_alive "$STACK_DIR/pids/operator.pid"; then
        log "operator already running (pid $(<"$STACK_DIR/pids/operator.pid"))"
        return
    fi
    spawn operator "$STACK_DIR/logs/operator.log" \
        env RUST_LOG="${OPERATOR_LOG:-info,siphon_operator=debug}" \
        KUBECONFIG="$STACK_DIR/controlplane/kubeconfig" \
        SIPHON_WORKER_IMAGE="${SIPHON_WORKER_IMAGE:-siphon:dev}" \
        SIPHON_CAPTURE_SELECTOR="${SIPHON_CAPTURE_SELECTOR-$STACK_CAPTURE_SELECTOR}" \
        SIPHON_CRASH_AT="${SIPHON_CRASH_AT:-}" \
        "${SIPHON_OPERATOR_BIN:-$(target_dir)/siphon-operator}" --metrics-addr "127.0.0.1:$STACK_OPERATOR_METRICS_PORT"
    log "started operator (pid $(<"$STACK_DIR/pids/operator.pid"), log $STACK_DIR/logs/operator.log)"
}

# The other PostgreSQL majors: the same settings and superuser as the main
# one, smaller buffers, port 154<major>.
STACK_PG_OTHER_MAJORS="${STACK_PG_OTHER_MAJORS:-12 13 14 16 17 18}"
other_major_port() { echo $((15400 + $1)); }
other_major_bindir() {
    local var="PG$1_VERSION"
    [[ -n ${!var:-} ]] || die "$var is not set in e2e/versions.env"
    echo "$PG_CACHE/${!var}/bin"
}
# other_major_up MAJOR: start (fetching on first use) one other major.
other_major_up() {
    local major=$1 var="PG$1_VERSION"
    [[ -n ${!var:-} ]] || die "$var is not set in e2e/versions.env"
    pg_fetch "${!var}" >/dev/null || die "cannot fetch PostgreSQL ${!var}"
    # Large transactions stream (14+) or spill from a few kB on.
    local small_txn=()
    ((major >= 13)) && small_txn=("logical_decoding_work_mem = 64kB")
    PG_BINDIR=$(other_major_bindir "$major") pg_up "$STACK_DIR" "$(other_major_port "$major")" "pg$major" \
        "shared_buffers = 32MB" "max_connections = 100" "${small_txn[@]}" || die "cannot start PostgreSQL $major"
}
other_major_down() {
    PG_BINDIR=$(other_major_bindir "$1") pg_down "$STACK_DIR" "pg$1"
}
other_majors_up() {
    local major
    for major in $STACK_PG_OTHER_MAJORS; do
        other_major_up "$major"
    done
}

up() {
    local start=$SECONDS
    check_prerequisites
    mkdir -p "$STACK_DIR/logs" "$STACK_DIR/pids"
    pg_install
    # Room for the operator-scale benchmark: 100 captures, each with its own
    # slot and walsender, plus tests running beside them.
    pg_up "$STACK_DIR" "$STACK_PG_PORT" main "${PG_MAIN_CONF[@]}"
    pg_up "$STACK_DIR" "$STACK_PG_REPLICA_PORT" replica "wal_level = replica"
    other_majors_up
    kafka_build
    # The Debezium connector beside Siphon (the compatibility check, make bench).
    bash "$STACK_ROOT/e2e/debezium/debezium.sh" build || die "cannot fetch the Debezium connector"
    kafka_up "$STACK_DIR"
    cp_up "$STACK_DIR/controlplane"
    build_binaries
    write_env
    start_node_agent
    install_crd
    start_operator
    log "stack up in $((SECONDS - start))s; source $STACK_DIR/env"
}

down() {
    stop_pidfile operator 20
    stop_pidfile node-agent 30
    cp_down "$STACK_DIR/controlplane"
    kafka_down "$STACK_DIR"
    pg_down "$STACK_DIR" replica
    pg_down "$STACK_DIR" main
    local major
    for major in $STACK_PG_OTHER_MAJORS; do
        other_major_down "$major"
    done
    log "stack down"
}

status() {
    local name
    cp_status "$STACK_DIR/controlplane"
    for name in node-agent operator; do
        if pid_alive "$STACK_DIR/pids/$name.pid"; then
            printf '%-24s running (pid %s)\n' "$name" "$(<"$STACK_DIR/pids/$name.pid")"
        else
            printf '%-24s stopped\n' "$name"
        fi
    done
}

# Kill the operator without a chance to clean up (SIGKILL) and start it again:
# the end-to-end scenario "operator killed in the middle of provisioning".
operator_crash_restart() {
    local f="$STACK_DIR/pids/operator.pid"
    if pid_alive "$f"; then
        kill -KILL "$(<"$f")" 2>/dev/null || true
        while pid_alive "$f"; do sleep 0.05; done
    fi
    rm -f "$f"
    start_operator
}

# SIGTERM (the operator releases its Lease), then start it again; with
# SIPHON_OPERATOR_BIN set, that binary, and with SIPHON_WORKER_IMAGE set, that
# worker image (the scale benchmark runs release builds of both: the node
# agent maps image siphon:* to the stack's build and siphon-release:* to
# target/release).
operator_restart() {
    local f="$STACK_DIR/pids/operator.pid"
    if pid_alive "$f"; then
        kill -TERM "$(<"$f")" 2>/dev/null || true
        local deadline=$((SECONDS + 30))
        while pid_alive "$f" && ((SECONDS < deadline)); do sleep 0.1; done
        pid_alive "$f" && kill -KILL "$(<"$f")" 2>/dev/null
    fi
    rm -f "$f"
    start_operator
}

case "${1:-}" in
up) up ;;
operator-crash-restart) operator_crash_restart ;;
operator-restart) operator_restart ;;
# One other PostgreSQL major stopped or started, as the outage tests do.
pg-major-up) other_major_up "${2:?usage: $0 pg-major-up MAJOR}" ;;
pg-major-down) other_major_down "${2:?usage: $0 pg-major-down MAJOR}" ;;
down) down ;;
status) status ;;
*)
    echo "usage: $0 up|down|status|operator-restart|operator-crash-restart|pg-major-up N|pg-major-down N" >&2
    exit 2
    ;;
esac
