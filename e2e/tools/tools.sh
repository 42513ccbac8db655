#!/usr/bin/env bash
# Tools of the chart and alert checks, built from their Go modules and cached.
#
#   helm         helm.sh/helm/v3/cmd/helm                      (HELM_VERSION)
#   kubeconform  github.com/yannh/kubeconform/cmd/kubeconform  (KUBECONFORM_VERSION)
#   promtool     github.com/prometheus/prometheus/cmd/promtool (PROMETHEUS_MODULE_VERSION:
#                the Go module v0.3MM.P is Prometheus 3.MM.P)
#   kstatus      e2e/tools/kstatus, ours: prints the kstatus status of objects on stdin
#                (sigs.k8s.io/cli-utils, CLI_UTILS_VERSION)
#   kubeschemas  e2e/tools/kubeschemas, ours: kubeconform's JSON schemas from an API
#                server's /openapi/v2 and from CRD manifests
#   podsecurity  e2e/tools/podsecurity, ours: the pods of manifests on stdin against a Pod
#                Security Standard, with PodSecurity admission's own checks
#                (k8s.io/pod-security-admission)
#
# Versions are pinned in e2e/versions.env; e2e/tools/go.mod (tool directives)
# must require exactly those, or the build stops and says what to change.
# Binaries land in .cache/tools/bin/ beside a stamp: the hash of go.mod,
# go.sum, the Go sources, versions.env, the Go version and the linker flags.
# A second run with the same inputs builds nothing.
#
# Usage:
#   e2e/tools/tools.sh [build]   build what is stale (the default)
#   e2e/tools/tools.sh bin       print the directory holding the binaries
#   e2e/tools/tools.sh go ARGS   run the go command with the cached module and build
#                                directories (how e2e/argocd-health's tests run)

set -euo pipefail

TOOLS_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
TOOLS_MODULE_DIR="$TOOLS_REPO_ROOT/e2e/tools"
TOOLS_VERSIONS_FILE="$TOOLS_REPO_ROOT/e2e/versions.env"
# The module and build caches are shared with e2e/stack/controlplane.sh: the
# k8s.io modules both need are downloaded once.
TOOLS_GO_CACHE_DIR="${TOOLS_GO_CACHE_DIR:-$TOOLS_REPO_ROOT/.cache/go}"
TOOLS_BIN_DIR="${TOOLS_BIN_DIR:-$TOOLS_REPO_ROOT/.cache/tools/bin}"
TOOLS_NAMES=(helm kubeconform promtool kstatus kubeschemas podsecurity)

tools__log() { printf 'tools: %s\n' "$*" >&2; }
tools__die() {
    printf 'tools: error: %s\n' "$*" >&2
    exit 1
}

# tools__go prints the go command to use, or stops with an explanation.
tools__go() {
    if command -v go >/dev/null 2>&1; then
        command -v go
    elif [[ -x /usr/local/go/bin/go ]]; then
        printf '%s\n' /usr/local/go/bin/go
    else
        tools__die "'go' not found on PATH (nor /usr/local/go/bin/go): install Go >= 1.26.7" \
            "(what e2e/tools/go.mod needs; verified with go1.26.8) and put it on PATH"
    fi
}

# tools__env runs "$@" with the shared caches, the local toolchain only (no
# download of another Go) and go.mod read-only (a stale go.sum is an error,
# never silently rewritten).
tools__env() {
    mkdir -p "$TOOLS_GO_CACHE_DIR"
    GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
        GOMODCACHE="$TOOLS_GO_CACHE_DIR/mod" GOCACHE="$TOOLS_GO_CACHE_DIR/build" "$@"
}

tools__versions() {
    [[ -r "$TOOLS_VERSIONS_FILE" ]] || tools__die "missing $TOOLS_VERSIONS_FILE"
    # shellcheck source=SCRIPTDIR/../versions.env
    source "$TOOLS_VERSIONS_FILE"
    local v
    for v in HELM_VERSION KUBECONFORM_VERSION PROMETHEUS_MODULE_VERSION CLI_UTILS_VERSION; do
        [[ -n "${!v:-}" ]] || tools__die "$v is not set in $TOOLS_VERSIONS_FILE"
    done
}

# tools__check_gomod stops unless go.mod requires what versions.env pins.
tools__check_gomod() {
    local gomod="$TOOLS_MODULE_DIR/go.mod" module version pair
    [[ -r "$gomod" ]] || tools__die "missing $gomod"
    for pair in "helm.sh/helm/v3 $HELM_VERSION" "github.com/yannh/kubeconform $KUBECONFORM_VERSION" \
        "github.com/prometheus/prometheus $PROMETHEUS_MODULE_VERSION" "sigs.k8s.io/cli-utils $CLI_UTILS_VERSION"; do
        module="${pair% *}"
        version="${pair#* }"
        grep -Eq "^[[:space:]]*${module//./\\.} ${version//./\\.}( // indirect)?\$" "$gomod" ||
            tools__die "$gomod does not require $module $version (e2e/versions.env); run" \
                "'cd e2e/tools && go get $module@$version && go mod tidy'"
    done
}

# tools__module_version MODULE prints the version go.mod resolves MODULE to.
tools__module_version() {
    (cd "$TOOLS_MODULE_DIR" && tools__env "$GO" list -m -f '{{.Version}}' "$1")
}

# tools__ldflags NAME prints the linker flags of one tool: strip symbols, and
# stamp the versions the tools report. Helm's default Kubernetes version
# (what `helm template` and `helm lint` check a chart's kubeVersion against
# without a cluster) follows the client-go it is built with, as upstream's
# Makefile does; left alone it would be 1.20.
tools__ldflags() {
    local flags="-s -w" client_go minor prom
    case "$1" in
    helm)
        client_go="$(tools__module_version k8s.io/client-go)"
        minor="${client_go#v0.}"
        minor="${minor%%.*}"
        flags+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
        flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
        flags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
        flags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
        ;;
    kubeconform)
        flags+=" -X main.version=$KUBECONFORM_VERSION"
        ;;
    promtool)
        # v0.316.0 -> 3.16.0
        prom="${PROMETHEUS_MODULE_VERSION#v0.}"
        prom="3.$((10#${prom:1:2})).${prom#*.}"
        flags+=" -X github.com/prometheus/common/version.Version=$prom"
        flags+=" -X github.com/prometheus/common/version.Branch=module-$PROMETHEUS_MODULE_VERSION"
        ;;
    kstatus | kubeschemas | podsecurity) ;;
    *) tools__die "unknown tool $1" ;;
    esac
    printf '%s\n' "$flags"
}

# tools__package NAME prints the Go package of one tool.
tools__package() {
    case "$1" in
    helm) printf '%s\n' helm.sh/helm/v3/cmd/helm ;;
    kubeconform) printf '%s\n' github.com/yannh/kubeconform/cmd/kubeconform ;;
    promtool) printf '%s\n' github.com/prometheus/prometheus/cmd/promtool ;;
    kstatus) printf '%s\n' ./kstatus ;;
    kubeschemas) printf '%s\n' ./kubeschemas ;;
    podsecurity) printf '%s\n' ./podsecurity ;;
    *) tools__die "unknown tool $1" ;;
    esac
}

tools__hash() {
    local name
    {
        (cd "$TOOLS_REPO_ROOT" && find e2e/tools -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum)
        sha256sum <"$TOOLS_VERSIONS_FILE"
        tools__env "$GO" env GOVERSION
        for name in "${TOOLS_NAMES[@]}"; do
            printf '%s %s\n' "$name" "$(tools__ldflags "$name")"
        done
    } | sha256sum | cut -d' ' -f1
}

tools__current() {
    local hash="$1" name
    [[ -r "$TOOLS_BIN_DIR/.stamp" && "$(cat "$TOOLS_BIN_DIR/.stamp")" == "$hash" ]] || return 1
    for name in "${TOOLS_NAMES[@]}"; do
        [[ -x "$TOOLS_BIN_DIR/$name" ]] || return 1
    done
}

tools_build() {
    GO="$(tools__go)"
    tools__versions
    tools__check_gomod
    mkdir -p "$TOOLS_BIN_DIR"
    local hash
    hash="$(tools__hash)"
    if tools__current "$hash"; then
        tools__log "${TOOLS_NAMES[*]} are up to date ($TOOLS_BIN_DIR)"
        return 0
    fi
    (
        # One build at a time, even if two checks race.
        flock 9
        tools__current "$hash" && exit 0
        tools__log "building helm $HELM_VERSION, kubeconform $KUBECONFORM_VERSION," \
            "promtool (prometheus module $PROMETHEUS_MODULE_VERSION) and our kstatus, kubeschemas, podsecurity with $(tools__env "$GO" env GOVERSION)"
        tools__log "(cold: ~0.5 GB of modules, then several minutes of compiling on 2 cores; promtool is the largest)"
        local start=$SECONDS name tmp
        tmp="$(mktemp -d "$TOOLS_BIN_DIR/.build.XXXXXX")"
        trap 'rm -rf "$tmp"' EXIT
        cd "$TOOLS_MODULE_DIR"
        for name in "${TOOLS_NAMES[@]}"; do
            tools__log "building $name"
            tools__env "$GO" build -trimpath -ldflags "$(tools__ldflags "$name")" \
                -o "$tmp/$name" "$(tools__package "$name")" ||
                tools__die "building $name failed (see above)"
        done
        for name in "${TOOLS_NAMES[@]}"; do
            mv -f "$tmp/$name" "$TOOLS_BIN_DIR/$name"
        done
        printf '%s\n' "$hash" >"$TOOLS_BIN_DIR/.stamp"
        tools__log "built ${TOOLS_NAMES[*]} into $TOOLS_BIN_DIR in $((SECONDS - start))s"
    ) 9>"$TOOLS_BIN_DIR/.lock"
}

case "${1:-build}" in
build) tools_build ;;
bin) printf '%s\n' "$TOOLS_BIN_DIR" ;;
go)
    shift
    GO="$(tools__go)"
    tools__env "$GO" "$@"
    ;;
*)
    printf 'usage: %s [build|bin|go ARGS...]\n' "$0" >&2
    exit 2
    ;;
esac
