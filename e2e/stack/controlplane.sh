#!/usr/bin/env bash
# Local Kubernetes control plane for Siphon's real end-to-end stack.
#
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler all come
# from one multi-call binary, .cache/bin/siphon-kube, built from the official
# Go modules (e2e/controlplane). No container engine, no kubelet: the node
# agent registers the Node `siphon-node` and runs the pods the scheduler binds
# to it. Everything listens on 127.0.0.1 only.
#
# Library use (from the stack-up script):
#   source e2e/stack/controlplane.sh
#   cp_build                 # build siphon-kube unless the stamp says it is current
#   cp_up   "$STATE_DIR"     # certs once, start what is not running, wait until ready
#   cp_down "$STATE_DIR"     # stop only the processes our pid files name
#   cp_status "$STATE_DIR"
# Direct use:
#   e2e/stack/controlplane.sh build|up|down|status [STATE_DIR]
#   (STATE_DIR defaults to .stack/controlplane in the repository)
#
# STATE_DIR layout:
#   pki/          CA, serving and client certificates, service-account key pair
#   kubeconfig    admin (CN=admin, O=system:masters); the node agent uses it too
#   etcd/         etcd data
#   logs/<name>.log, pids/<name>.pid
#
# The node agent must keep `siphon-node` Ready: see docs in cp_up's summary
# and e2e/controlplane/README.md.

set -euo pipefail

# --- ports (loopback only) -------------------------------------------------
CP_ETCD_CLIENT_PORT="${CP_ETCD_CLIENT_PORT:-23790}"
CP_ETCD_PEER_PORT="${CP_ETCD_PEER_PORT:-23800}"
CP_APISERVER_PORT="${CP_APISERVER_PORT:-16443}"
CP_CONTROLLER_MANAGER_PORT="${CP_CONTROLLER_MANAGER_PORT:-20257}"
CP_SCHEDULER_PORT="${CP_SCHEDULER_PORT:-20259}"

# --- cluster settings ------------------------------------------------------
CP_SERVICE_CIDR="${CP_SERVICE_CIDR:-10.0.0.0/24}"   # first address 10.0.0.1 = kubernetes Service
CP_READY_TIMEOUT="${CP_READY_TIMEOUT:-180}"          # seconds per component; 2 busy cores are slow
CP_STOP_TIMEOUT="${CP_STOP_TIMEOUT:-20}"             # seconds between SIGTERM and SIGKILL

CP_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
CP_MODULE_DIR="$CP_REPO_ROOT/e2e/controlplane"
CP_VERSIONS_FILE="$CP_REPO_ROOT/e2e/versions.env"
CP_GO_CACHE_DIR="${CP_GO_CACHE_DIR:-$CP_REPO_ROOT/.cache/go}"
CP_BIN="${CP_BIN:-$CP_REPO_ROOT/.cache/bin/siphon-kube}"

# Start order; cp_down stops in reverse.
CP_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler)

cp__log() { printf 'controlplane: %s\n' "$*" >&2; }
cp__die() { printf 'controlplane: error: %s\n' "$*" >&2; return 1; }

# --- build -----------------------------------------------------------------

# cp__go prints the go command to use, or fails with an explanation.
cp__go() {
    if command -v go >/dev/null 2>&1; then
        command -v go
    elif [[ -x /usr/local/go/bin/go ]]; then
        printf '%s\n' /usr/local/go/bin/go
    else
        cp__die "'go' not found on PATH (nor /usr/local/go/bin/go). The control plane is built from" \
            "Go modules: install Go >= 1.24 (verified with go1.26.8) and put it on PATH."
    fi
}

# cp__versions loads e2e/versions.env into KUBERNETES_VERSION, ... .
cp__versions() {
    [[ -r "$CP_VERSIONS_FILE" ]] || cp__die "missing $CP_VERSIONS_FILE"
    # shellcheck source=SCRIPTDIR/../versions.env
    source "$CP_VERSIONS_FILE"
    : "${KUBERNETES_VERSION:?not set in versions.env}" "${KUBERNETES_STAGING_VERSION:?not set in versions.env}" \
        "${ETCD_VERSION:?not set in versions.env}"
}

# cp__check_gomod fails unless e2e/controlplane/go.mod pins what versions.env says.
cp__check_gomod() {
    local gomod="$CP_MODULE_DIR/go.mod" bad
    grep -Eq "^[[:space:]]*k8s\.io/kubernetes ${KUBERNETES_VERSION//./\\.}\$" "$gomod" ||
        cp__die "$gomod does not require k8s.io/kubernetes $KUBERNETES_VERSION (versions.env); update go.mod and run 'go mod tidy'"
    grep -Eq "^[[:space:]]*go\.etcd\.io/etcd/server/v3 ${ETCD_VERSION//./\\.}\$" "$gomod" ||
        cp__die "$gomod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION (versions.env); update go.mod and run 'go mod tidy'"
    bad="$(grep -E '=> k8s\.io/' "$gomod" | grep -Ev " ${KUBERNETES_STAGING_VERSION//./\\.}\$" || true)"
    [[ -z "$bad" ]] ||
        cp__die "$gomod has $(wc -l <<<"$bad") staging replace(s) not at $KUBERNETES_STAGING_VERSION" \
            "(versions.env), e.g. '$(head -n1 <<<"$bad" | tr -d '\t')'; update go.mod and run 'go mod tidy'"
}

# cp__ldflags prints the linker flags: strip symbols, and stamp the versions
# the way upstream hack/lib/version.sh does, so /version reports a real
# release instead of v0.0.0-master.
cp__ldflags() {
    local v="${KUBERNETES_VERSION#v}" major minor p flags="-s -w"
    major="${v%%.*}"
    minor="${v#*.}"
    minor="${minor%%.*}"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
        flags+=" -X $p.gitTreeState=clean"
    done
    flags+=" -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
    printf '%s\n' "$flags"
}

# cp__build_hash hashes everything the binary depends on.
cp__build_hash() {
    local go="$1"
    {
        (cd "$CP_REPO_ROOT" && find e2e/controlplane -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum)
        sha256sum <"$CP_VERSIONS_FILE"
        "$go" env GOVERSION
        cp__ldflags
    } | sha256sum | cut -d' ' -f1
}

# cp_build builds $CP_BIN unless it exists and its stamp matches the inputs.
cp_build() {
    local go hash stamp="$CP_BIN.stamp"
    go="$(cp__go)" || return 1
    cp__versions
    cp__check_gomod
    hash="$(cp__build_hash "$go")"
    if [[ -x "$CP_BIN" && -r "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then
        cp__log "siphon-kube is up to date ($CP_BIN)"
        return 0
    fi
    mkdir -p "$(dirname "$CP_BIN")" "$CP_GO_CACHE_DIR"
    (
        # One build at a time, even if two stack scripts race.
        flock 9
        if [[ -x "$CP_BIN" && -r "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then
            exit 0
        fi
        cp__log "building siphon-kube: kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION, $("$go" env GOVERSION)"
        cp__log "(cold: ~0.55 GB of modules, ~30s to download, then ~7-10 min of compiling on 2 cores)"
        local start=$SECONDS
        cd "$CP_MODULE_DIR"
        GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
            GOMODCACHE="$CP_GO_CACHE_DIR/mod" GOCACHE="$CP_GO_CACHE_DIR/build" \
            "$go" build -trimpath -ldflags "$(cp__ldflags)" -o "$CP_BIN.tmp" .
        mv -f "$CP_BIN.tmp" "$CP_BIN"
        printf '%s\n' "$hash" >"$stamp"
        cp__log "built $CP_BIN in $((SECONDS - start))s"
    ) 9>"$CP_BIN.lock"
}

# --- processes -------------------------------------------------------------

# cp__pid NAME STATE_DIR prints the pid of our live NAME process, or fails.
# STATE_DIR must be absolute (cp__state). A pid counts only if that process
# is `siphon-kube NAME` with STATE_DIR in its arguments, so a stale pid file
# whose number was reused never makes us touch someone else's process.
cp__pid() {
    local name="$1" state="$2" pid argv0 argv1 cmdline
    [[ -r "$state/pids/$name.pid" ]] || return 1
    pid="$(<"$state/pids/$name.pid")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    { IFS= read -r -d '' argv0 && IFS= read -r -d '' argv1; } <"/proc/$pid/cmdline" 2>/dev/null || return 1
    [[ "${argv0##*/}" == siphon-kube && "$argv1" == "$name" ]] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *"$state/"* ]] || return 1
    printf '%s\n' "$pid"
}

# cp__state DIR prints DIR as an absolute physical path (DIR must exist).
cp__state() {
    (cd "$1" && pwd -P)
}

# cp__port_free PORT fails with a message naming PORT if something listens on it.
cp__port_free() {
    local port="$1" what
    if command -v ss >/dev/null 2>&1; then
        what="$(ss -Htlnp "sport = :$port" 2>/dev/null || true)"
        [[ -z "$what" ]] && return 0
        cp__die "port $port is already in use by a process we did not start: $what"
    elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        cp__die "port $port is already in use by a process we did not start"
    fi
}

# cp__spawn NAME STATE_DIR ARGS... starts `siphon-kube NAME ARGS...` in its
# own session, detached from the caller's terminal and job table.
cp__spawn() {
    local name="$1" state="$2"
    shift 2
    local pidfile="$state/pids/$name.pid" log="$state/logs/$name.log" i
    rm -f "$pidfile"
    printf '=== %s starting %s\n' "$(date -u +%FT%TZ)" "$name" >>"$log"
    # The inner shell writes its own pid, then execs the component: right
    # even when setsid has to fork (caller is a process-group leader).
    # shellcheck disable=SC2016
    setsid bash -c 'echo "$$" >"$1.tmp" && mv -f "$1.tmp" "$1" && shift && exec "$@"' \
        cp-spawn "$pidfile" "$CP_BIN" "$name" "$@" </dev/null >>"$log" 2>&1 &
    disown "$!" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        [[ -s "$pidfile" ]] && return 0
        sleep 0.1
    done
    cp__die "$name did not start (no pid file after 5s); see $log"
}

# cp__wait NAME STATE_DIR DESCRIPTION CURL_ARGS... polls until curl succeeds,
# failing early (with the log tail) if the process dies.
cp__wait() {
    local name="$1" state="$2" what="$3"
    shift 3
    local deadline=$((SECONDS + CP_READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! cp__pid "$name" "$state" >/dev/null; then
            cp__log "$name exited; last lines of $state/logs/$name.log:"
            tail -n 30 "$state/logs/$name.log" >&2 || true
            return 1
        fi
        if curl -fsS --max-time 3 -o /dev/null "$@" 2>/dev/null; then
            cp__log "$name: $what ok"
            return 0
        fi
        sleep 0.25
    done
    cp__log "$name: $what not ready after ${CP_READY_TIMEOUT}s; last lines of $state/logs/$name.log:"
    tail -n 30 "$state/logs/$name.log" >&2 || true
    return 1
}

# --- certificates ----------------------------------------------------------

# cp__sign DIR NAME SUBJECT EXTENSIONS issues DIR/NAME.{key,crt} from DIR/ca.
cp__sign() {
    local dir="$1" name="$2" subj="$3" ext="$4"
    openssl req -new -newkey rsa:2048 -nodes -subj "$subj" \
        -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
    printf '%b' "$ext" >"$dir/$name.ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -CAserial "$dir/ca.srl" -CAcreateserial -days 3650 -sha256 \
        -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
    rm -f "$dir/$name.csr" "$dir/$name.ext"
}

# cp__pki STATE_DIR creates STATE_DIR/pki once (all or nothing).
cp__pki() {
    local state="$1" tmp
    [[ -r "$state/pki/ca.crt" ]] && return 0
    cp__log "generating certificates in $state/pki"
    tmp="$(mktemp -d "$state/pki.tmp.XXXXXX")"
    cat >"$tmp/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
EOF
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 -config "$tmp/ca.cnf" \
        -extensions v3_ca -subj /CN=siphon-e2e-ca -keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null
    rm -f "$tmp/ca.cnf"

    # Key identifiers too: strict verifiers (Python >= 3.13 ssl) require the
    # authority key identifier.
    local leaf='basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n'
    local server="${leaf}extendedKeyUsage=serverAuth\n"
    local client="${leaf}extendedKeyUsage=clientAuth\n"
    local loopback='subjectAltName=DNS:localhost,IP:127.0.0.1\n'
    # 10.0.0.1 is the kubernetes Service IP (first address of CP_SERVICE_CIDR).
    cp__sign "$tmp" apiserver /CN=kube-apiserver \
        "${server}subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1\n"
    cp__sign "$tmp" controller-manager-serving /CN=kube-controller-manager "${server}${loopback}"
    cp__sign "$tmp" scheduler-serving /CN=kube-scheduler "${server}${loopback}"
    cp__sign "$tmp" admin "/CN=admin/O=system:masters" "$client"
    cp__sign "$tmp" controller-manager /CN=system:kube-controller-manager "$client"
    cp__sign "$tmp" scheduler /CN=system:kube-scheduler "$client"

    # Service-account token signing pair.
    openssl genrsa -out "$tmp/sa.key" 2048 2>/dev/null
    openssl rsa -in "$tmp/sa.key" -pubout -out "$tmp/sa.pub" 2>/dev/null
    chmod 600 "$tmp"/*.key
    mv "$tmp" "$state/pki"
}

# cp__kubeconfig OUT USER CERT_NAME PKI_DIR writes a kubeconfig that
# authenticates with PKI_DIR/CERT_NAME.{crt,key}.
cp__kubeconfig() {
    local out="$1" user="$2" cert="$3" pki="$4"
    rm -f "$out.tmp"
    touch "$out.tmp"
    chmod 600 "$out.tmp"
    cat >"$out.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: siphon
  cluster:
    server: https://127.0.0.1:$CP_APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$pki/$cert.crt")
    client-key-data: $(base64 -w0 <"$pki/$cert.key")
contexts:
- name: siphon
  context:
    cluster: siphon
    user: $user
current-context: siphon
EOF
    mv -f "$out.tmp" "$out"
}

# --- up / down -------------------------------------------------------------

# cp__ports NAME prints the ports component NAME listens on.
cp__ports() {
    case "$1" in
    etcd) printf '%s %s\n' "$CP_ETCD_CLIENT_PORT" "$CP_ETCD_PEER_PORT" ;;
    kube-apiserver) printf '%s\n' "$CP_APISERVER_PORT" ;;
    kube-controller-manager) printf '%s\n' "$CP_CONTROLLER_MANAGER_PORT" ;;
    kube-scheduler) printf '%s\n' "$CP_SCHEDULER_PORT" ;;
    *) cp__die "unknown component $1" ;;
    esac
}

# cp__start NAME STATE_DIR ARGS...: unless NAME is already running, check
# its ports and spawn it.
cp__start() {
    local name="$1" state="$2" port pid
    shift 2
    local argsfile="$state/pids/$name.args"
    if pid="$(cp__pid "$name" "$state")"; then
        # A component started with other flags (an older checkout of this
        # script) is restarted, so a flag change reaches a running stack.
        if [[ "$(printf '%s\n' "$@")" == "$(cat "$argsfile" 2>/dev/null)" ]]; then
            cp__log "$name already running (pid $pid)"
            return 0
        fi
        cp__log "$name runs with other flags; restarting it"
        cp__stop "$name" "$state"
    fi
    for port in $(cp__ports "$name"); do
        cp__port_free "$port"
    done
    cp__spawn "$name" "$state" "$@"
    printf '%s\n' "$@" >"$argsfile"
    cp__log "started $name (pid $(<"$state/pids/$name.pid"), log $state/logs/$name.log)"
}

# cp__stop NAME STATE_DIR stops one component: SIGTERM, then SIGKILL after
# CP_STOP_TIMEOUT.
cp__stop() {
    local name="$1" state="$2" pid deadline
    if pid="$(cp__pid "$name" "$state")"; then
        cp__log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + CP_STOP_TIMEOUT))
        while cp__pid "$name" "$state" >/dev/null && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if cp__pid "$name" "$state" >/dev/null; then
            cp__log "$name did not stop after ${CP_STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while cp__pid "$name" "$state" >/dev/null; do sleep 0.1; done
        fi
    fi
    rm -f "$state/pids/$name.pid"
}

# cp_up STATE_DIR starts the control plane and waits until it serves.
cp_up() {
    local state="${1:?usage: cp_up STATE_DIR}" start=$SECONDS
    cp_build
    mkdir -p "$state"
    state="$(cp__state "$state")"
    mkdir -p "$state/logs" "$state/pids" "$state/etcd"
    chmod 700 "$state/etcd"
    cp__pki "$state"
    local pki="$state/pki"
    cp__kubeconfig "$state/kubeconfig" admin admin "$pki"
    cp__kubeconfig "$state/controller-manager.kubeconfig" system:kube-controller-manager controller-manager "$pki"
    cp__kubeconfig "$state/scheduler.kubeconfig" system:kube-scheduler scheduler "$pki"
    local client_auth=(--cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key")
    local api="https://127.0.0.1:$CP_APISERVER_PORT"

    # Check every port before starting anything, so a busy port does not
    # leave a half-started stack behind.
    local name port
    for name in "${CP_COMPONENTS[@]}"; do
        cp__pid "$name" "$state" >/dev/null && continue
        for port in $(cp__ports "$name"); do
            cp__port_free "$port"
        done
    done

    local etcd_url="http://127.0.0.1:$CP_ETCD_CLIENT_PORT" peer_url="http://127.0.0.1:$CP_ETCD_PEER_PORT"
    cp__start etcd "$state" \
        --name=siphon --data-dir="$state/etcd" \
        --listen-client-urls="$etcd_url" --advertise-client-urls="$etcd_url" \
        --listen-peer-urls="$peer_url" --initial-advertise-peer-urls="$peer_url" \
        --initial-cluster="siphon=$peer_url" \
        --unsafe-no-fsync --log-level=warn
    cp__wait etcd "$state" /health "$etcd_url/health"

    cp__start kube-apiserver "$state" \
        --etcd-servers="$etcd_url" \
        --bind-address=127.0.0.1 --secure-port="$CP_APISERVER_PORT" \
        --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
        --client-ca-file="$pki/ca.crt" \
        --authorization-mode=RBAC \
        --service-cluster-ip-range="$CP_SERVICE_CIDR" \
        --service-account-issuer="https://127.0.0.1:$CP_APISERVER_PORT" \
        --service-account-key-file="$pki/sa.pub" \
        --service-account-signing-key-file="$pki/sa.key" \
        --allow-privileged=true \
        --profiling=false
    cp__wait kube-apiserver "$state" /readyz "${client_auth[@]}" "$api/readyz"

    # No --authentication/authorization-kubeconfig for the controller-manager
    # and scheduler: delegated auth wants the apiserver's front-proxy
    # (requestheader) CA, which this stack does not configure, and logs an
    # error loop without it. /healthz, /readyz and /livez stay reachable
    # (--authorization-always-allow-paths); /metrics is refused.
    # The controller-manager's client limit is raised from its default of 20
    # requests/s: each new Deployment costs it ~8 requests (ReplicaSet, pod,
    # status updates, events), so 100 captures applied at once would queue
    # behind that limit for ~40 s, a wait no operator could shorten.
    cp__start kube-controller-manager "$state" \
        --kubeconfig="$state/controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$CP_CONTROLLER_MANAGER_PORT" \
        --tls-cert-file="$pki/controller-manager-serving.crt" \
        --tls-private-key-file="$pki/controller-manager-serving.key" \
        --controllers='*' \
        --use-service-account-credentials=true \
        --service-account-private-key-file="$pki/sa.key" \
        --root-ca-file="$pki/ca.crt" \
        --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
        --leader-elect=false \
        --kube-api-qps=100 --kube-api-burst=200 \
        --concurrent-deployment-syncs=10 --concurrent-replicaset-syncs=10 \
        --profiling=false
    cp__start kube-scheduler "$state" \
        --kubeconfig="$state/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$CP_SCHEDULER_PORT" \
        --tls-cert-file="$pki/scheduler-serving.crt" \
        --tls-private-key-file="$pki/scheduler-serving.key" \
        --leader-elect=false \
        --profiling=false
    cp__wait kube-controller-manager "$state" /healthz --cacert "$pki/ca.crt" \
        "https://127.0.0.1:$CP_CONTROLLER_MANAGER_PORT/healthz"
    cp__wait kube-scheduler "$state" /healthz --cacert "$pki/ca.crt" \
        "https://127.0.0.1:$CP_SCHEDULER_PORT/healthz"
    # Pods need their namespace's `default` ServiceAccount (ServiceAccount
    # admission plugin); the serviceaccount controller creates it.
    cp__wait kube-controller-manager "$state" "ServiceAccount default/default" "${client_auth[@]}" \
        "$api/api/v1/namespaces/default/serviceaccounts/default"
    cp__log "control plane ready in $((SECONDS - start))s: KUBECONFIG=$state/kubeconfig ($api)"
}

# cp_down STATE_DIR stops the processes named by our pid files: SIGTERM,
# wait up to CP_STOP_TIMEOUT seconds, then SIGKILL. Never touches others.
cp_down() {
    local state="${1:?usage: cp_down STATE_DIR}" i
    [[ -d "$state/pids" ]] || return 0
    state="$(cp__state "$state")"
    for ((i = ${#CP_COMPONENTS[@]} - 1; i >= 0; i--)); do
        cp__stop "${CP_COMPONENTS[i]}" "$state"
    done
}

# cp_status STATE_DIR prints one line per component.
cp_status() {
    local state="${1:?usage: cp_status STATE_DIR}" name pid
    [[ -d "$state" ]] && state="$(cp__state "$state")"
    for name in "${CP_COMPONENTS[@]}"; do
        if pid="$(cp__pid "$name" "$state")"; then
            printf '%-24s running (pid %s)\n' "$name" "$pid"
        else
            printf '%-24s stopped\n' "$name"
        fi
    done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    cmd="${1:-}"
    state_dir="${2:-$CP_REPO_ROOT/.stack/controlplane}"
    case "$cmd" in
    build) cp_build ;;
    up) cp_up "$state_dir" ;;
    down) cp_down "$state_dir" ;;
    status) cp_status "$state_dir" ;;
    *)
        printf 'usage: %s build|up|down|status [STATE_DIR]\n' "$0" >&2
        exit 2
        ;;
    esac
fi
