//! The node agent against the local control plane: a Deployment's pod runs as
//! a local process with its Secret, ConfigMap, field and volume inputs
//! resolved, reports Running/Ready, and is stopped and replaced when deleted.
//!
//! Needs the stack (`make stack-up`, then `source .stack/env`): fails, not
//! skips, without it.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapKeySelector, ConfigMapVolumeSource, Container, EnvVar, EnvVarSource,
    ExecAction, Namespace, Node, ObjectFieldSelector, Pod, PodSpec, PodTemplateSpec, Probe, Secret,
    SecretKeySelector, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};

const TIMEOUT: Duration = Duration::from_secs(120);

fn node_name() -> String {
    std::env::var("SIPHON_NODE_NAME").unwrap_or_else(|_| "siphon-node".into())
}

fn pod_log_dir() -> PathBuf {
    match std::env::var("SIPHON_STACK_DIR") {
        Ok(dir) => PathBuf::from(dir).join("logs/pods"),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.stack/logs/pods"),
    }
}

/// A client for the stack, or a failure telling how to start it.
async fn stack_client() -> Client {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: run `make stack-up` first, then `source .stack/env`"
    );
    let client = Client::try_default()
        .await
        .expect("cannot load KUBECONFIG: run `make stack-up` first");
    let node = node_name();
    let nodes: Api<Node> = Api::all(client.clone());
    let found = nodes
        .get_opt(&node)
        .await
        .unwrap_or_else(|e| panic!("api server not reachable ({e}): run `make stack-up` first"));
    assert!(
        found.is_some(),
        "node {node} is not registered: the node agent is not running; run `make stack-up` first"
    );
    // A live agent renews its lease every 10 s.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renewed = leases
        .get_opt(&node)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.renew_time)
        .map(|t| t.0);
    let fresh = renewed.is_some_and(|t| Timestamp::now().duration_since(t).as_secs() < 40);
    assert!(
        fresh,
        "node {node}'s lease is stale ({renewed:?}): the node agent is not running; run `make stack-up` first"
    );
    client
}

async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "timed out after {TIMEOUT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn is_running_and_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let containers_ready = status
        .container_statuses
        .iter()
        .flatten()
        .all(|c| c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some()));
    status.phase.as_deref() == Some("Running")
        && ready
        && containers_ready
        && pod.metadata.deletion_timestamp.is_none()
}

fn pid_of(pod: &Pod) -> i32 {
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.clone())
        .expect("containerID is set");
    id.strip_prefix("siphon://")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("unexpected containerID {id}"))
}

fn process_alive(pid: i32) -> bool {
    // A zombie has exited: only count processes that are not.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s[s.rfind(')')? + 1..].split_whitespace().next()?.to_owned();
            Some(state != "Z")
        })
        .unwrap_or(false)
}

async fn ready_pod(pods: &Api<Pod>, other_than: Option<&str>) -> Pod {
    wait_for("a Running and Ready pod of the deployment", || async {
        let list = pods
            .list(&ListParams::default().labels("app=echo"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|p| is_running_and_ready(p) && p.uid().as_deref() != other_than)
    })
    .await
}

fn deployment() -> Deployment {
    let labels: BTreeMap<String, String> = [("app".to_owned(), "echo".to_owned())].into();
    let from_secret = EnvVarSource {
        secret_key_ref: Some(SecretKeySelector {
            name: "creds".into(),
            key: "foo".into(),
            optional: None,
        }),
        ..EnvVarSource::default()
    };
    let from_config = EnvVarSource {
        config_map_key_ref: Some(ConfigMapKeySelector {
            name: "settings".into(),
            key: "bar".into(),
            optional: None,
        }),
        ..EnvVarSource::default()
    };
    let from_field = EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: "metadata.name".into(),
            api_version: None,
        }),
        ..EnvVarSource::default()
    };
    let env = |name: &str, source: EnvVarSource| EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(source),
    };
    let script = concat!(
        "echo \"FOO=$FOO BAR=$BAR POD=$POD_NAME GREETING=$GREETING\"; ",
        "echo \"mounted=$(cat /etc/settings/bar)\"; ",
        "echo \"namespace=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)\"; ",
        "test -s \"$KUBECONFIG\" && echo kubeconfig=present; ",
        "exec sleep 3600"
    );
    Deployment {
        metadata: ObjectMeta {
            name: Some("echo".into()),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    termination_grace_period_seconds: Some(5),
                    volumes: Some(vec![Volume {
                        name: "settings".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: "settings".into(),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("busybox:1.36".into()),
                        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
                        env: Some(vec![
                            env("FOO", from_secret),
                            env("BAR", from_config),
                            env("POD_NAME", from_field),
                            EnvVar {
                                name: "GREETING".into(),
                                value: Some("hello-$(POD_NAME)".into()),
                                value_from: None,
                            },
                        ]),
                        volume_mounts: Some(vec![VolumeMount {
                            name: "settings".into(),
                            mount_path: "/etc/settings".into(),
                            ..VolumeMount::default()
                        }]),
                        readiness_probe: Some(Probe {
                            exec: Some(ExecAction {
                                command: Some(vec!["true".into()]),
                            }),
                            period_seconds: Some(1),
                            ..Probe::default()
                        }),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

async fn scenario(client: &Client, ns: &str) {
    let pp = PostParams::default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(
            &pp,
            &Secret {
                metadata: ObjectMeta {
                    name: Some("creds".into()),
                    ..ObjectMeta::default()
                },
                string_data: Some([("foo".to_owned(), "from-secret".to_owned())].into()),
                ..Secret::default()
            },
        )
        .await
        .expect("create secret");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    config_maps
        .create(
            &pp,
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("settings".into()),
                    ..ObjectMeta::default()
                },
                data: Some([("bar".to_owned(), "from-configmap".to_owned())].into()),
                ..ConfigMap::default()
            },
        )
        .await
        .expect("create configmap");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments
        .create(&pp, &deployment())
        .await
        .expect("create deployment");

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = ready_pod(&pods, None).await;
    let name = pod.name_any();
    let status = pod.status.clone().expect("ready pod has a status");
    assert!(
        status
            .pod_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("127.") && !ip.starts_with("127.0.0.")),
        "each pod has its own loopback address"
    );
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(status.start_time.is_some());
    let cs = &status
        .container_statuses
        .as_ref()
        .expect("container statuses")[0];
    assert_eq!(cs.name, "app");
    assert_eq!(cs.image, "busybox:1.36");
    assert_eq!(cs.started, Some(true));
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        Some(node_name())
    );
    for t in ["Initialized", "ContainersReady", "Ready", "PodScheduled"] {
        assert!(
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == t && c.status == "True" && c.last_transition_time.is_some()),
            "condition {t} is not True: {:?}",
            status.conditions
        );
    }
    let pid = pid_of(&pod);
    assert!(
        process_alive(pid),
        "process {pid} of pod {name} is not running"
    );

    // The container's output, with every input resolved.
    let log = pod_log_dir().join(format!("{ns}_{name}_app.log"));
    let expected = [
        format!("FOO=from-secret BAR=from-configmap POD={name} GREETING=hello-{name}"),
        "mounted=from-configmap".to_owned(),
        format!("namespace={ns}"),
        "kubeconfig=present".to_owned(),
    ];
    let text = wait_for("the container's output in its log file", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        expected
            .iter()
            .all(|e| text.contains(e.as_str()))
            .then_some(text)
    })
    .await;
    assert!(
        text.contains("=== siphon-node-agent"),
        "no start marker in {text}"
    );

    // Deleting the pod stops the process, removes the pod, and the
    // Deployment's replacement comes up.
    pods.delete(&name, &DeleteParams::default())
        .await
        .expect("delete pod");
    wait_for("the deleted pod's process to exit", || async {
        (!process_alive(pid)).then_some(())
    })
    .await;
    wait_for("the deleted pod to disappear", || async {
        pods.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
    let replacement = ready_pod(&pods, pod.uid().as_deref()).await;
    assert_ne!(replacement.name_any(), name);
    let new_pid = pid_of(&replacement);
    assert!(process_alive(new_pid));
    assert_ne!(new_pid, pid);
}

#[tokio::test]
async fn node_agent_runs_a_deployment() {
    let client = stack_client().await;
    let node: Api<Node> = Api::all(client.clone());
    let node = node.get(&node_name()).await.unwrap();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    assert_eq!(ready.as_deref(), Some("True"), "node is not Ready");

    let ns = format!("node-agent-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .unwrap();
    // Pods need the namespace's default ServiceAccount first.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &ns);
    wait_for("the default service account", || async {
        accounts.get_opt("default").await.ok().flatten()
    })
    .await;

    let outcome = tokio::spawn({
        let client = client.clone();
        let ns = ns.clone();
        async move { scenario(&client, &ns).await }
    })
    .await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
