//! The chart as a platform engineer installs it: `helm install` of
//! charts/siphon into a namespace that enforces PodSecurity `restricted`,
//! namespace-scoped (`watchNamespaces`), two operator replicas, the
//! operator running as a pod under the chart's ServiceAccount and RBAC
//! (not the stack's cluster-admin kubeconfig). A capture in a restricted
//! namespace goes Ready, delivers, reads as Current to kstatus (Flux) and
//! Healthy to Argo CD's Lua; a capture of a missing table reads Failed and
//! Degraded; a suspended one Suspended (Current to kstatus); deleting them leaves the
//! database as it was, and the operator's log holds no Forbidden.
//!
//! The stack's own operator leaves these captures alone: they carry the
//! label `siphon.dev/operator`, which its selector excludes and the chart's
//! `captureSelector` selects.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use siphon_e2e::scenario::Scenario;
use siphon_e2e::{eventually, stack_var, unique};

const READY: Duration = Duration::from_secs(180);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tool(name: &str) -> PathBuf {
    let path = root().join(".cache/tools/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make chart-check` (make test does)",
        path.display()
    );
    path
}

fn run(cmd: &mut Command, input: Option<&str>) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    if let Some(text) = input {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The helm release and its namespace; `Drop` uninstalls both, so a failed
/// test leaves no operator running against the stack.
struct Release {
    name: String,
    namespace: String,
}

impl Release {
    /// The operator's ServiceAccount as the API server names its user.
    fn service_account(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}-siphon",
            self.namespace, self.name
        )
    }

    fn helm(&self) -> Command {
        let mut c = Command::new(tool("helm"));
        c.env("KUBECONFIG", stack_var("KUBECONFIG"))
            .arg("--namespace")
            .arg(&self.namespace);
        c
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self
            .helm()
            .args(["uninstall", &self.name, "--wait", "--timeout", "60s"])
            .output();
        let _ = Command::new("kubectl")
            .env("KUBECONFIG", stack_var("KUBECONFIG"))
            .args(["delete", "namespace", &self.namespace, "--wait=false"])
            .output();
    }
}

async fn restricted_namespace(client: &kube::Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labels = json!({
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    });
    let body = json!({ "metadata": { "name": name, "labels": labels } });
    if namespaces
        .get_opt(name)
        .await
        .expect("get namespace")
        .is_none()
    {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(body).expect("namespace"),
            )
            .await
            .expect("create namespace");
    } else {
        namespaces
            .patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .expect("label namespace");
    }
}

/// The namespace enforces: a pod without seccomp and with privilege
/// escalation is refused (so the chart's pods passing means something).
async fn assert_enforced(client: &kube::Client, ns: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = json!({
        "metadata": { "name": "not-restricted" },
        "spec": { "containers": [{ "name": "c", "image": "siphon:dev" }] }
    });
    let err = pods
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &serde_json::from_value(pod).expect("pod"),
        )
        .await
        .expect_err("a pod that is not restricted is refused");
    assert!(
        err.to_string().contains("PodSecurity"),
        "refused by PodSecurity admission: {err}"
    );
}

/// The capture as kstatus (Flux) and Argo CD's Lua (as Argo runs it) read it.
fn health_of(object: &serde_json::Value) -> (String, String) {
    let text = object.to_string();
    let kstatus = run(&mut Command::new(tool("kstatus")), Some(&text));
    let script = root().join("charts/siphon/argocd-health.lua");
    let argo = run(
        Command::new(tool("argocd-health")).arg(&script),
        Some(&text),
    );
    (
        kstatus
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
        argo.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
    )
}

async fn pods_of(client: &kube::Client, ns: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("list pods")
        .items
}

async fn capture_json(sc: &Scenario, name: &str) -> serde_json::Value {
    serde_json::to_value(sc.captures().get(name).await.expect("get capture")).expect("json")
}

async fn wait_health(sc: &Scenario, name: &str, kstatus: &str, argo: &str) {
    eventually(
        Duration::from_secs(90),
        &format!("{name} to read {kstatus} (kstatus) and {argo} (Argo CD)"),
        || async {
            let got = health_of(&capture_json(sc, name).await);
            (got.0 == kstatus && got.1 == argo).then_some(())
        },
    )
    .await;
}

/// Capture `t` of a new table public.t, for the release's operator: Ready,
/// and five rows inserted after that delivered.
async fn capture_of_t(sc: &Scenario, release: &Release) {
    sc.pg
        .batch_execute("CREATE TABLE public.t (id int PRIMARY KEY)")
        .await
        .expect("create public.t");
    let spec = sc.spec("[{ name: public.t }]", "snapshot: { mode: Never }");
    apply_labelled(sc, "t", &release.name, &spec).await;
    sc.wait_condition("t", "Ready", "True", READY).await;
    sc.pg
        .batch_execute("INSERT INTO public.t SELECT generate_series(1, 5)")
        .await
        .expect("insert");
    sc.wait_ids("t", &[1, 2, 3, 4, 5]).await;
}

async fn apply_labelled(sc: &Scenario, name: &str, operator: &str, spec_yaml: &str) {
    sc.apply_labelled(name, json!({ "siphon.dev/operator": operator }), spec_yaml)
        .await;
}

#[tokio::test]
async fn the_chart_runs_captures_under_its_own_rbac_in_restricted_namespaces() {
    let sc = Scenario::new("chart-app").await;
    let client = sc.client.clone();
    restricted_namespace(&client, &sc.ns).await;
    let release = Release {
        name: unique("siphon"),
        namespace: unique("siphon-sys"),
    };
    restricted_namespace(&client, &release.namespace).await;
    assert_enforced(&client, &release.namespace).await;
    assert_enforced(&client, &sc.ns).await;

    // Two replicas: `--wait` returns only when both are ready, the one
    // waiting for the Lease too.
    run(
        release.helm().args([
            "install",
            &release.name,
            &root().join("charts/siphon").display().to_string(),
            "--set",
            "replicaCount=2",
            "--set",
            &format!("watchNamespaces={{{}}}", sc.ns),
            "--set",
            &format!("captureSelector=siphon.dev/operator={}", release.name),
            "--wait",
            "--timeout",
            "180s",
        ]),
        None,
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release.namespace);
    let operator = deployments
        .list(&Default::default())
        .await
        .expect("list deployments")
        .items
        .into_iter()
        .next()
        .expect("the chart's operator Deployment");
    assert_eq!(
        operator.status.as_ref().and_then(|s| s.ready_replicas),
        Some(2),
        "both replicas ready"
    );

    // Namespace-scoped RBAC, as the API server decides it for the
    // operator's ServiceAccount: Secrets by name in the watched namespace
    // only (never listed), nothing in other namespaces, nothing
    // cluster-scoped.
    let operator_sa = release.service_account();
    let allowed =
        |verb: &str, resource: &str, ns: Option<&str>| can_i(&operator_sa, verb, resource, ns);
    assert!(allowed("get", "secrets", Some(&sc.ns)));
    assert!(allowed(
        "patch",
        "postgrescaptures.siphon.dev",
        Some(&sc.ns)
    ));
    assert!(
        !allowed("list", "secrets", Some(&sc.ns)),
        "Secrets are never listed"
    );
    for (verb, resource) in [
        ("get", "secrets"),
        ("list", "postgrescaptures.siphon.dev"),
        ("create", "deployments.apps"),
    ] {
        assert!(
            !allowed(verb, resource, Some("kube-system")),
            "{verb} {resource} outside the watched namespaces"
        );
        assert!(
            !allowed(verb, resource, None),
            "{verb} {resource} cluster-wide"
        );
    }
    assert!(!allowed("get", "nodes", None), "no cluster-scoped rule");

    let census = sc.census().await;
    capture_of_t(&sc, &release).await;
    wait_health(&sc, "t", "Current", "Healthy").await;
    // The worker pod of a restricted namespace passed admission: it runs,
    // with the labels a PodMonitor selects on.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &sc.ns);
    let workers = pods
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=siphon-worker"))
        .await
        .expect("list worker pods")
        .items;
    assert_eq!(
        workers.len(),
        1,
        "one worker pod, labelled app.kubernetes.io/name"
    );
    // The worker logs JSON, one object per line, each naming its capture
    // as kubectl does; the database password is in none of them.
    let worker_log = root().join(".stack/logs/pods").join(format!(
        "{}_{}_worker.log",
        sc.ns,
        workers[0]
            .metadata
            .name
            .as_deref()
            .expect("worker pod name")
    ));
    assert_worker_log(&worker_log, &sc.ns, "t");

    // Installed without an image override, operator and worker run the
    // chart's default image at its appVersion.
    let image_of =
        |pod: &Pod| -> Option<String> { pod.spec.as_ref()?.containers.first()?.image.clone() };
    let default_image = format!("ghcr.io/siphon-dev/siphon:{}", chart_app_version());
    assert_eq!(
        image_of(&workers[0]).as_deref(),
        Some(default_image.as_str())
    );
    for pod in pods_of(&client, &release.namespace).await {
        assert_eq!(image_of(&pod).as_deref(), Some(default_image.as_str()));
    }

    // Both endpoints pass `promtool check metrics` (the text format a plain
    // GET gets) and answer Prometheus 3's Accept with OpenMetrics, saying so.
    let worker_ip = workers[0]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("worker pod IP");
    let operator_ips: Vec<String> = pods_of(&client, &release.namespace)
        .await
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    assert_eq!(operator_ips.len(), 2, "two operator pods");
    let mut endpoints = vec![format!("http://{worker_ip}:9187/metrics")];
    endpoints.extend(
        operator_ips
            .iter()
            .map(|ip| format!("http://{ip}:8080/metrics")),
    );
    let mut leaders = Vec::new();
    for url in &endpoints {
        let text = run(Command::new("curl").args(["-sf", url]), None);
        run(
            Command::new(tool("promtool")).args(["check", "metrics"]),
            Some(&text),
        );
        let headers = run(
            Command::new("curl").args([
                "-sf",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "-H",
                "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
                url,
            ]),
            None,
        );
        assert!(
            headers
                .to_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{url} answers Prometheus with OpenMetrics: {headers}"
        );
        if text.lines().any(|l| l == "siphon_operator_leader 1") {
            leaders.push(text);
        }
    }
    assert_eq!(leaders.len(), 1, "one of the two replicas leads");
    let series = format!(
        "siphon_operator_capture_ready{{namespace=\"{}\",capture=\"t\"}} 1",
        sc.ns
    );
    assert!(leaders[0].contains(&series), "the leader exports {series}");

    // A definite failure reads Failed (kstatus) and Degraded (Argo CD).
    let missing = sc.spec("[{ name: public.missing }]", "");
    apply_labelled(&sc, "missing", &release.name, &missing).await;
    sc.wait_condition("missing", "Stalled", "True", READY).await;
    wait_health(&sc, "missing", "Failed", "Degraded").await;

    // Suspended: Argo CD says so; kstatus, which knows no suspension, reads
    // its Ready=True Suspended as Current (a Flux health wait passes).
    sc.patch_spec("t", json!({ "suspend": true })).await;
    sc.wait_ready_reason("t", "Suspended", READY).await;
    wait_health(&sc, "t", "Current", "Suspended").await;

    sc.delete("missing").await;
    sc.delete("t").await;
    sc.wait_gone("missing", READY).await;
    sc.wait_gone("t", READY).await;
    sc.pg
        .batch_execute("DROP TABLE public.t")
        .await
        .expect("drop public.t");
    assert_eq!(sc.census().await, census, "the database is as it was");

    // Nothing the operator did was refused by its RBAC.
    let logs = root().join(".stack/logs/pods");
    let mut seen = 0;
    for entry in std::fs::read_dir(&logs).expect("pod logs").flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with(&format!("{}_", release.namespace)) {
            seen += 1;
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            assert!(
                !text.to_lowercase().contains("forbidden"),
                "the operator was refused something: {}",
                entry.path().display()
            );
        }
    }
    assert!(
        seen >= 2,
        "the logs of both operator pods are in {}",
        logs.display()
    );

    drop(release);
    sc.cleanup().await;
}

/// The default install (one replica, a ClusterRole): it reaches captures in
/// any namespace, reads Secrets by name but never lists them, and `helm
/// upgrade --wait` hands over to the new operator pod while the capture
/// streams: no row is lost and the worker is not restarted.
#[tokio::test]
async fn the_default_install_watches_the_cluster_and_an_upgrade_hands_over() {
    let sc = Scenario::new("chart-default").await;
    let client = sc.client.clone();
    let release = Release {
        name: unique("siphon"),
        namespace: unique("siphon-sys"),
    };
    let chart = root().join("charts/siphon").display().to_string();
    let selector = format!("captureSelector=siphon.dev/operator={}", release.name);
    run(
        release.helm().args([
            "install",
            &release.name,
            &chart,
            "--create-namespace",
            "--set",
            &selector,
            "--wait",
            "--timeout",
            "180s",
        ]),
        None,
    );

    // Cluster-wide, as the API server decides it for the operator's
    // ServiceAccount: any namespace's captures and Secrets by name; never a
    // list of Secrets; nothing it does not use (nodes, cluster roles).
    let operator_sa = release.service_account();
    let allowed =
        |verb: &str, resource: &str, ns: Option<&str>| can_i(&operator_sa, verb, resource, ns);
    assert!(allowed("list", "postgrescaptures.siphon.dev", None));
    assert!(allowed("get", "secrets", Some(&sc.ns)));
    assert!(
        !allowed("list", "secrets", None),
        "Secrets are never listed"
    );
    assert!(!allowed("get", "nodes", None));
    assert!(!allowed(
        "create",
        "clusterroles.rbac.authorization.k8s.io",
        None
    ));

    capture_of_t(&sc, &release).await;

    let operator_pods = |client: kube::Client, ns: String| async move {
        pods_of(&client, &ns)
            .await
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.uid)
            .collect::<Vec<_>>()
    };
    let before = operator_pods(client.clone(), release.namespace.clone()).await;
    assert_eq!(before.len(), 1, "the default install runs one replica");
    let worker_pods = |client: kube::Client, ns: String| async move {
        Api::<Pod>::namespaced(client, &ns)
            .list(&kube::api::ListParams::default().labels("siphon.dev/capture=t"))
            .await
            .expect("list worker pods")
            .items
            .into_iter()
            .filter_map(|p| p.metadata.uid)
            .collect::<Vec<_>>()
    };
    let worker_before = worker_pods(client.clone(), sc.ns.clone()).await;
    assert_eq!(worker_before.len(), 1);

    // The upgrade changes the operator's pod template (its log level): the
    // Deployment rolls, the old pod gives up the Lease, the new one leads.
    // Rows are written all through it.
    let upgrade = {
        let mut helm = release.helm();
        helm.args([
            "upgrade",
            &release.name,
            &chart,
            "--reuse-values",
            "--set",
            "logLevel=debug",
            "--wait",
            "--timeout",
            "180s",
        ]);
        tokio::task::spawn_blocking(move || run(&mut helm, None))
    };
    let mut id = 5;
    while !upgrade.is_finished() {
        id += 1;
        sc.pg
            .execute("INSERT INTO public.t VALUES ($1)", &[&id])
            .await
            .expect("insert during the upgrade");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    upgrade.await.expect("helm upgrade");
    for _ in 0..5 {
        id += 1;
        sc.pg
            .execute("INSERT INTO public.t VALUES ($1)", &[&id])
            .await
            .expect("insert after the upgrade");
    }
    let after = eventually(Duration::from_secs(60), "the old operator pod gone", || {
        let (client, ns) = (client.clone(), release.namespace.clone());
        async move {
            let pods = operator_pods(client, ns).await;
            (pods.len() == 1).then_some(pods)
        }
    })
    .await;
    assert_ne!(after, before, "the upgrade replaced the operator pod");
    let want: Vec<i64> = (1..=i64::from(id)).collect();
    sc.wait_ids("t", &want).await;
    assert_eq!(
        worker_pods(client.clone(), sc.ns.clone()).await,
        worker_before,
        "the operator's upgrade left the worker running"
    );
    // The new operator leads and reconciles: a change of spec reaches the
    // capture's status.
    sc.patch_spec("t", json!({ "suspend": true })).await;
    sc.wait_ready_reason("t", "Suspended", READY).await;

    sc.delete("t").await;
    sc.wait_gone("t", READY).await;
    drop(release);
    sc.cleanup().await;
}

/// The Events of a capture, as `kubectl events --for pgcap/NAME` lists them.
async fn events_of(sc: &Scenario, name: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(sc.client.clone(), &sc.ns);
    events
        .list(&Default::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// One Event per transition: a new capture's worker start is told once (not
/// once for WorkerAvailable and again for Ready), and a backfill tells its
/// start and its end.
#[tokio::test]
async fn events_tell_each_transition_once_and_the_backfill_start_and_end() {
    let sc = Scenario::new("events").await;
    sc.pg
        .batch_execute(
            "CREATE TABLE public.t (id int PRIMARY KEY); INSERT INTO public.t SELECT generate_series(1, 20)",
        )
        .await
        .expect("create public.t");
    sc.apply("t", &sc.spec("[{ name: public.t }]", "")).await;
    sc.wait_condition("t", "BackfillComplete", "True", READY)
        .await;
    sc.wait_condition("t", "Ready", "True", READY).await;
    let reasons = |events: &[k8s_openapi::api::events::v1::Event], reason: &str| {
        events
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .count()
    };
    let events = eventually(
        Duration::from_secs(30),
        "the backfill's end as an Event",
        || async {
            let events = events_of(&sc, "t").await;
            (reasons(&events, "BackfillDone") >= 1).then_some(events)
        },
    )
    .await;
    let told: Vec<String> = events
        .iter()
        .map(|e| format!("{:?} {:?}", e.reason, e.note))
        .collect();
    // Before its pod is ready a new capture is WorkerAvailable=False and
    // Ready=False, both WorkerStarting: one Event says it.
    assert_eq!(
        reasons(&events, "WorkerStarting"),
        1,
        "the worker's start, once: {told:#?}"
    );
    assert!(
        reasons(&events, "Provisioning") <= 1,
        "provisioning, at most once: {told:#?}"
    );
    assert_eq!(
        reasons(&events, "BackfillRunning"),
        1,
        "backfill start: {told:#?}"
    );
    assert_eq!(
        reasons(&events, "BackfillDone"),
        1,
        "backfill end: {told:#?}"
    );
    assert!(
        events.iter().all(|e| !e
            .note
            .as_deref()
            .unwrap_or_default()
            .starts_with("Stalled=")
            && !e
                .note
                .as_deref()
                .unwrap_or_default()
                .starts_with("Reconciling=")),
        "Stalled and Reconciling repeat Ready and have no Events of their own: {told:#?}"
    );
    sc.cleanup().await;
}

/// `appVersion` of charts/siphon/Chart.yaml, the chart's default image tag.
fn chart_app_version() -> String {
    let chart =
        std::fs::read_to_string(root().join("charts/siphon/Chart.yaml")).expect("Chart.yaml");
    let chart: serde_yaml::Value = serde_yaml::from_str(&chart).expect("Chart.yaml is YAML");
    chart["appVersion"].as_str().expect("appVersion").to_owned()
}

/// Whether the API server lets `user` do `verb` on `resource` in `ns` (all
/// namespaces when `None`), as `kubectl auth can-i --as` asks it.
fn can_i(user: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", stack_var("KUBECONFIG"))
        .args(["auth", "can-i", verb, resource, "--as", user]);
    match ns {
        Some(ns) => cmd.args(["--namespace", ns]),
        None => cmd.arg("--all-namespaces"),
    };
    let out = cmd.output().expect("kubectl auth can-i");
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl auth can-i {verb} {resource}: {other:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Every line a worker wrote (but the node agent's own markers) is a JSON
/// object with a level and a timestamp; the lines of its capture's span name
/// namespace and capture; none holds the stack's database password.
fn assert_worker_log(path: &std::path::Path, ns: &str, capture: &str) {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("worker log {}: {e}", path.display()));
    let password = stack_var("PGPASSWORD");
    let mut named = 0;
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("=== siphon-node-agent"))
    {
        assert!(
            !line.contains(&password),
            "a log line holds the password: {line}"
        );
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
        if let Some(span) = entry.get("span") {
            assert_eq!(span["capture"], capture, "{line}");
            assert_eq!(span["namespace"], ns, "{line}");
            named += 1;
        }
    }
    assert!(named > 0, "no line of {} names its capture", path.display());
}
