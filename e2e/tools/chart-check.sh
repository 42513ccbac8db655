#!/usr/bin/env bash
# make chart-check: the chart, its manifests, the alerts and the Argo CD
# health check, each checked with the real tool.
#
#  1. tools       helm, kubeconform, promtool, kstatus, kubeschemas, podsecurity (tools.sh, cached)
#  2. lint        helm lint --strict with the default values, each charts/siphon/ci/*-values.yaml,
#                 and the oldest Kubernetes the chart admits; values the schema must refuse
#  3. manifests   helm template | kubeconform -strict, with the schemas the running stack's API
#                 server serves (/openapi/v2) and the CRD of this checkout; examples/*.yaml too
#     podsecurity every rendered pod meets PodSecurity `restricted` (admission's own checks)
#  4. metrics     every siphon_* series the alerts and dashboard use is registered by a binary
#  5. alerts      promtool check rules, promtool test rules e2e/tools/alerts_test.yaml
#  6. argocd      go test ./... in e2e/argocd-health (the Lua health check, run as Argo runs it)
#
# Step 3 needs `make stack-up` (it reads .stack/env for KUBECONFIG); the
# others run without it. CHART_CHECK_SKIP_STACK=1 skips step 3.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
cd "$ROOT"
CHART=charts/siphon
TOOLS="bash e2e/tools/tools.sh"
WORK="$ROOT/.cache/tools/chart-check"
FAILED=()

step() { printf '\n== chart-check: %s\n' "$*"; }
fail() {
    printf 'chart-check: FAILED: %s\n' "$*" >&2
    FAILED+=("$1")
}

step "tools"
$TOOLS build
BIN="$($TOOLS bin)"
helm() { "$BIN/helm" "$@"; }
rm -rf "$WORK"
mkdir -p "$WORK"

# The values sets every check runs with: the defaults, then each ci/ file.
VALUE_SETS=(default)
for f in "$CHART"/ci/*-values.yaml; do
    VALUE_SETS+=("$f")
done
values_args() { [[ "$1" == default ]] || printf -- '-f\n%s\n' "$1"; }
set_name() { [[ "$1" == default ]] && echo default || basename "$1" -values.yaml; }

step "helm lint --strict"
for set in "${VALUE_SETS[@]}"; do
    mapfile -t args < <(values_args "$set")
    helm lint --strict "$CHART" "${args[@]}" || fail "helm lint ($(set_name "$set"))"
done
# The oldest Kubernetes Chart.yaml's kubeVersion admits, and one it refuses.
helm lint --strict --kube-version 1.27.0 "$CHART" || fail "helm lint --kube-version 1.27.0"
if helm template siphon "$CHART" --kube-version 1.26.0 >/dev/null 2>&1; then
    fail "kubeVersion admits 1.26"
fi
# values.schema.json refuses what it should, naming the value.
refuse() {
    local want="$1" out
    shift
    if out="$(helm template siphon "$CHART" "$@" 2>&1)"; then
        fail "values.schema.json accepted $*"
    elif ! grep -q -- "$want" <<<"$out"; then
        fail "values.schema.json refused $* without naming $want: $out"
    fi
}
refuse replicaCount --set replicaCount=0
refuse replicaCount --set replicaCount=1.5
refuse logFormat --set logFormat=xml
refuse logLevel --set logLevel=verbose
refuse pullPolicy --set image.pullPolicy=Sometimes
refuse replicas --set replicas=2
refuse watchNamespaces --set 'watchNamespaces[0]=Not_A_Namespace'
refuse memory --set resources.limits.memory=lots
refuse interval --set metrics.podMonitor.enabled=true --set metrics.podMonitor.interval=often

step "PodSecurity restricted (every values set)"
for set in "${VALUE_SETS[@]}"; do
    mapfile -t args < <(values_args "$set")
    helm template siphon "$CHART" --namespace siphon-system "${args[@]}" | "$BIN/podsecurity" -level restricted ||
        fail "podsecurity restricted ($(set_name "$set"))"
done

step "helm template | kubeconform (schemas of the running stack's API server)"
if [[ "${CHART_CHECK_SKIP_STACK:-}" == 1 ]]; then
    echo "skipped: CHART_CHECK_SKIP_STACK=1"
elif [[ ! -r .stack/env ]]; then
    fail "kubeconform: no .stack/env; run 'make stack-up' first (kubeconform validates against its API server's schemas)"
else
    # shellcheck disable=SC1091
    source .stack/env
    if ! kubectl get --raw /readyz >/dev/null 2>&1; then
        fail "kubeconform: the stack's API server does not answer /readyz; run 'make stack-up'"
    else
        kubectl get --raw /openapi/v2 >"$WORK/openapi-v2.json"
        # The Prometheus Operator's kinds: their CRDs as its Go module ships
        # them (the stack does not install them; the rule groups inside the
        # PrometheusRule are files/alerts.yaml, which promtool checks too).
        # shellcheck source=../versions.env
        source e2e/versions.env
        monitoring_crds="$($TOOLS go mod download -json \
            "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/example/prometheus-operator-crd"
        crd_args=(-crd crds/postgrescapture.yaml)
        for kind in podmonitors servicemonitors prometheusrules; do
            crd_args+=(-crd "$monitoring_crds/monitoring.coreos.com_$kind.yaml")
        done
        "$BIN/kubeschemas" -out "$WORK/schemas" -openapi "$WORK/openapi-v2.json" "${crd_args[@]}"
        location="$WORK/schemas/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
        for set in "${VALUE_SETS[@]}"; do
            mapfile -t args < <(values_args "$set")
            name="$(set_name "$set")"
            helm template siphon "$CHART" --namespace siphon-system --include-crds "${args[@]}" \
                >"$WORK/rendered-$name.yaml" || {
                fail "helm template ($name)"
                continue
            }
            "$BIN/kubeconform" -strict -summary -schema-location "$location" \
                "$WORK/rendered-$name.yaml" || fail "kubeconform ($name)"
        done
        "$BIN/kubeconform" -strict -summary -schema-location "$location" examples/*.yaml ||
            fail "kubeconform (examples)"
        # The worker Deployments the operator made on the stack, if any
        # capture runs there now: their pods must meet restricted too.
        kubectl get deployments -A -l app.kubernetes.io/managed-by=siphon-operator -o json >"$WORK/workers.json"
        if grep -q '"kind": "Deployment"' "$WORK/workers.json"; then
            "$BIN/podsecurity" -level restricted <"$WORK/workers.json" || fail "podsecurity restricted (worker Deployments on the stack)"
        else
            echo "no worker Deployment on the stack to check against PodSecurity restricted"
        fi
    fi
fi

step "metric names"
python3 e2e/tools/metric_names.py . "$CHART/files/alerts.yaml" "$CHART/files/dashboard.json" ||
    fail "metric names"
python3 -m json.tool "$CHART/files/dashboard.json" >/dev/null || fail "dashboard.json is not JSON"

step "promtool"
"$BIN/promtool" check rules "$CHART/files/alerts.yaml" || fail "promtool check rules"
"$BIN/promtool" test rules e2e/tools/alerts_test.yaml || fail "promtool test rules"

step "Argo CD health check (e2e/argocd-health)"
# shellcheck source=../versions.env
source e2e/versions.env
grep -Eq "^require github\.com/yuin/gopher-lua ${GOPHER_LUA_VERSION//./\\.}\$" e2e/argocd-health/go.mod ||
    fail "e2e/argocd-health/go.mod does not require github.com/yuin/gopher-lua $GOPHER_LUA_VERSION (e2e/versions.env)"
(cd e2e/argocd-health && bash ../tools/tools.sh go test -count=1 ./...) || fail "go test e2e/argocd-health"
# The same evaluation as a command, for the end-to-end test that feeds it
# live captures (e2e/tests/tests/e2e/e2e_chart.rs).
(cd e2e/argocd-health && bash ../tools/tools.sh go build -o "$BIN/argocd-health" ./cmd/argocd-health) ||
    fail "go build e2e/argocd-health/cmd/argocd-health"

echo
if ((${#FAILED[@]})); then
    printf 'chart-check: %d check(s) failed:\n' "${#FAILED[@]}" >&2
    printf '  - %s\n' "${FAILED[@]}" >&2
    exit 1
fi
echo "chart-check: all checks passed"
