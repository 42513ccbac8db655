#!/usr/bin/env bash
# Operator at scale: N PostgresCaptures (default 100), each with its own table
# and slot, applied at once. Prints the time from creation to Ready (p50, p99)
# and the operator's memory, and appends them to target/bench/summary.json.
# Needs the stack (`make stack-up`); cleans up after itself.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
# shellcheck source=/dev/null
source "$ROOT/.stack/env"
N="${SCALE_CAPTURES:-100}"
NS=siphon-scale
DB=siphon_scale
SUMMARY="$ROOT/target/bench/summary.json"

say() { printf 'operator-scale: %s\n' "$*" >&2; }

# The benchmark measures what users run: release builds of the operator and
# its workers at the info log level, swapped in for the stack's debug ones and
# swapped back at the end.
say "building siphon-operator and siphon-worker (release)"
cargo build --release -q -p siphon-operator -p siphon-worker --manifest-path "$ROOT/Cargo.toml"
SIPHON_OPERATOR_BIN="$ROOT/target/release/siphon-operator" SIPHON_WORKER_IMAGE=siphon-release:bench OPERATOR_LOG="${SCALE_OPERATOR_LOG:-info}" \
    bash "$ROOT/e2e/stack/stack.sh" operator-restart >&2

cleanup() {
    kubectl delete pgcap --all -n "$NS" --wait=false >/dev/null 2>&1 || true
    for _ in $(seq 1 120); do
        [[ -z "$(kubectl get pgcap -n "$NS" -o name 2>/dev/null)" ]] && break
        sleep 1
    done
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
    psql -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    bash "$ROOT/e2e/stack/stack.sh" operator-restart >&2 || true
}
trap cleanup EXIT

say "creating $N tables"
psql -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
psql -q -d "$DB" -c "DO \$\$ BEGIN FOR i IN 1..$N LOOP EXECUTE format('CREATE TABLE public.t%s (id int PRIMARY KEY, v text)', i); END LOOP; END \$\$"
# The namespace of a previous run may still be terminating.
for _ in $(seq 1 180); do
    [[ "$(kubectl get namespace "$NS" -o jsonpath='{.status.phase}' 2>/dev/null)" == Terminating ]] || break
    sleep 1
done
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NS" create secret generic pg --from-literal=username="$PGUSER" --from-literal=password="$PGPASSWORD" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null

manifests=$(mktemp)
for i in $(seq 1 "$N"); do
    cat >>"$manifests" <<YAML
---
apiVersion: siphon.dev/v1alpha1
kind: PostgresCapture
metadata: { name: c$i, namespace: $NS }
spec:
  postgres: { host: 127.0.0.1, port: $PGPORT, database: $DB, credentialsSecretRef: { name: pg }, sslMode: disable }
  tables: [{ name: public.t$i }]
  snapshot: { mode: Never }
  kafka: { bootstrapServers: "$KAFKA_BOOTSTRAP", topicPrefix: scale$i }
YAML
done
op_pid=$(cat "$SIPHON_STACK_DIR/pids/operator.pid")
say "applying $N captures at once"
start=$(date +%s.%N)
kubectl apply -f "$manifests" >/dev/null
rm -f "$manifests"
deadline=$(( $(date +%s) + 900 ))
while :; do
    ready=$(kubectl get pgcap -n "$NS" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
    rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$op_pid/status")
    [[ "$ready" -ge "$N" ]] && break
    (( $(date +%s) < deadline )) || { say "only $ready of $N Ready after 900s"; exit 1; }
    sleep 1
done
end=$(date +%s.%N)
hwm_kib=$(awk '/VmHWM/ {print $2}' "/proc/$op_pid/status")
# How much work the operator did: reconciles and their mean duration.
curl -s "http://${SIPHON_OPERATOR_METRICS:-127.0.0.1:18080}/metrics" | awk -v n="$N" '
    /^siphon_operator_reconciles_total / { r = $2 }
    /^siphon_operator_reconcile_duration_seconds_sum / { s = $2 }
    /^siphon_operator_reconcile_duration_seconds_count / { c = $2 }
    END { if (c > 0) printf "operator-scale:   %d reconciles (%.1f per capture), mean %.0f ms\n", r, r / n, 1000 * s / c > "/dev/stderr" }' || true
kubectl get pgcap -n "$NS" -o json | python3 -c '
import json, sys, datetime
items = json.load(sys.stdin)["items"]
def ts(s): return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
d = sorted(ts(next(c for c in i["status"]["conditions"] if c["type"] == "Ready")["lastTransitionTime"]) - ts(i["metadata"]["creationTimestamp"]) for i in items)
p = lambda q: d[min(len(d) - 1, int(q * len(d)))]
print(f"{p(0.5):.1f} {p(0.99):.1f}")
' > /tmp/siphon-scale-times
read -r p50 p99 < /tmp/siphon-scale-times
# Where the time goes: the median second, after each capture's creation, at
# which each step of its way to Ready happened (1 s resolution, as the API
# server stamps them).
{ kubectl get pgcap -n "$NS" -o json; kubectl get deploy -n "$NS" -o json; kubectl get pods -n "$NS" -o json; } |
    python3 -c '
import json, sys, datetime, statistics
dec = json.JSONDecoder(); text = sys.stdin.read(); docs = []; i = 0
while i < len(text):
    if text[i].isspace(): i += 1; continue
    doc, i = dec.raw_decode(text, i); docs.append(doc)
caps, deps, pods = (d["items"] for d in docs)
ts = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
cond = lambda o, t: next((ts(c["lastTransitionTime"]) for c in o.get("status", {}).get("conditions", []) if c["type"] == t), None)
label = lambda o: o["metadata"].get("labels", {}).get("siphon.dev/capture")
dep = {label(d): d for d in deps}; pod = {label(p): p for p in pods}
steps = {"worker Deployment applied": [], "pod created": [], "pod scheduled": [], "pod Ready": [], "capture Ready": []}
for c in caps:
    name, t0 = c["metadata"]["name"], ts(c["metadata"]["creationTimestamp"])
    d, p = dep.get(name), pod.get(name)
    for step, t in (("worker Deployment applied", d and ts(d["metadata"]["creationTimestamp"])),
                    ("pod created", p and ts(p["metadata"]["creationTimestamp"])),
                    ("pod scheduled", p and cond(p, "PodScheduled")),
                    ("pod Ready", p and cond(p, "Ready")),
                    ("capture Ready", cond(c, "Ready"))):
        if t is not None: steps[step].append(t - t0)
for step, ds in steps.items():
    if ds: print(f"operator-scale:   {step:<28} median {statistics.median(ds):5.1f} s  max {max(ds):5.1f} s", file=sys.stderr)
' || true
printf '\n%-40s %10s %10s %s\n' "operator scale ($N captures)" value goal ""
printf '%-40s %9ss %9ss\n' "time to Ready p50" "$p50" "5"
printf '%-40s %9ss %9ss\n' "time to Ready p99" "$p99" "-"
printf '%-40s %8sMi %8sMi\n' "operator RSS (peak)" "$((hwm_kib / 1024))" "100"
printf '%-40s %9ss\n' "all Ready after" "$(python3 -c "print(round($end - $start, 1))")"
mkdir -p "$(dirname "$SUMMARY")"
python3 - "$SUMMARY" "$p50" "$p99" "$hwm_kib" "$N" <<'PY'
import json, os, sys
path, p50, p99, hwm, n = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rows = json.load(open(path)) if os.path.exists(path) else []
rows = [r for r in rows if not r["name"].startswith("operator_")]
rows += [
    {"name": f"operator_time_to_ready_p50_{n}", "siphon": p50, "reference": 5.0, "unit": "s", "ratio": round(5.0 / p50, 3) if p50 else None},
    {"name": f"operator_time_to_ready_p99_{n}", "siphon": p99, "reference": None, "unit": "s", "ratio": None},
    {"name": "operator_rss_peak", "siphon": round(hwm / 1024, 1), "reference": 100.0, "unit": "MiB", "ratio": round(100.0 / (hwm / 1024), 3)},
]
json.dump(rows, open(path, "w"), indent=2)
PY
