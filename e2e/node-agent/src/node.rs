//! The Node: registration, lease and status heartbeat.
//!
//! The agent plays the kubelet's part towards the control plane:
//!
//! * [`register`] creates the Node (or adopts an existing one) with the
//!   labels a kubelet sets, then reports its status: `Ready=True` (and the
//!   pressure conditions `False`), InternalIP and Hostname addresses,
//!   capacity = allocatable = 8 CPUs, 16Gi memory, 110 pods, and `nodeInfo`
//!   taken from the host (`kubeletVersion` = the API server's version).
//! * [`run`] keeps it alive: it renews the Lease `kube-node-lease/<node>`
//!   every 10 s (what the node lifecycle controller watches) and re-posts
//!   the status, with a fresh `lastHeartbeatTime`, every 20 s. On every
//!   round it also removes the `node.kubernetes.io/not-ready` and
//!   `node.kubernetes.io/unreachable` taints, which the node lifecycle
//!   controller may have set before the first heartbeat (or while the agent
//!   was down), so pods are scheduled and not evicted.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;

use crate::cluster::{Cluster, has_code};

/// Namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_SECONDS: i32 = 40;
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// Status is posted every this many lease renewals (20 s).
const STATUS_EVERY: u32 = 2;
/// Taints the node lifecycle controller sets on unhealthy nodes.
pub const HEALTH_TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// Kubernetes' name for the host architecture.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "Linux".to_owned())
}

/// `nodeInfo` from the host.
pub fn system_info(kubelet_version: &str) -> NodeSystemInfo {
    let machine_id = read_trimmed("/etc/machine-id").unwrap_or_else(|| "0".repeat(32));
    NodeSystemInfo {
        architecture: architecture().to_owned(),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
        container_runtime_version: format!("siphon://{}", env!("CARGO_PKG_VERSION")),
        kernel_version: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        kube_proxy_version: String::new(),
        kubelet_version: kubelet_version.to_owned(),
        machine_id: machine_id.clone(),
        operating_system: std::env::consts::OS.to_owned(),
        os_image: os_image(),
        system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid").unwrap_or(machine_id),
        ..NodeSystemInfo::default()
    }
}

fn resources() -> BTreeMap<String, Quantity> {
    [
        ("cpu", "8"),
        ("memory", "16Gi"),
        ("pods", "110"),
        ("ephemeral-storage", "100Gi"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
    .collect()
}

/// The full node status. `ready_since` is the Ready condition's
/// `lastTransitionTime`, `now` its `lastHeartbeatTime`.
pub fn status(
    name: &str,
    info: &NodeSystemInfo,
    now: Timestamp,
    ready_since: Timestamp,
) -> NodeStatus {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(ready_since)),
    };
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: crate::status::POD_IP.into(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: name.to_owned(),
            },
        ]),
        capacity: Some(resources()),
        allocatable: Some(resources()),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
            ),
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }),
        }),
        node_info: Some(info.clone()),
        ..NodeStatus::default()
    }
}

/// The taints without the health taints, or `None` if there are none to remove.
pub fn without_health_taints(taints: &[Taint]) -> Option<Vec<Taint>> {
    let kept: Vec<Taint> = taints
        .iter()
        .filter(|t| !HEALTH_TAINTS.contains(&t.key.as_str()))
        .cloned()
        .collect();
    (kept.len() != taints.len()).then_some(kept)
}

fn labels(name: &str) -> BTreeMap<String, String> {
    let arch = architecture();
    let os = std::env::consts::OS;
    [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", os),
        ("kubernetes.io/arch", arch),
        ("beta.kubernetes.io/os", os),
        ("beta.kubernetes.io/arch", arch),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Keeps one Node registered and healthy.
pub struct NodeKeeper {
    name: String,
    info: NodeSystemInfo,
    ready_since: Timestamp,
    nodes: Api<Node>,
    leases: Api<Lease>,
}

impl NodeKeeper {
    pub fn new(cluster: &Cluster, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            info: system_info(&cluster.version),
            ready_since: Timestamp::now(),
            nodes: Api::all(cluster.client.clone()),
            leases: Api::namespaced(cluster.client.clone(), LEASE_NAMESPACE),
        }
    }

    /// Creates or adopts the Node, posts its status, clears health taints and
    /// takes the lease.
    pub async fn register(&mut self) -> Result<()> {
        let node = match self.nodes.get_opt(&self.name).await? {
            Some(node) => {
                let patch = json!({"metadata": {"labels": labels(&self.name)}});
                self.nodes
                    .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .context("labelling the node")?;
                tracing::info!(node = %self.name, "adopted existing node");
                node
            }
            None => {
                let node = Node {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        labels: Some(labels(&self.name)),
                        annotations: Some(
                            [(
                                "volumes.kubernetes.io/controller-managed-attach-detach".to_owned(),
                                "true".to_owned(),
                            )]
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    spec: Some(NodeSpec::default()),
                    ..Node::default()
                };
                let created = self
                    .nodes
                    .create(&PostParams::default(), &node)
                    .await
                    .context("creating the node")?;
                tracing::info!(node = %self.name, "registered node");
                created
            }
        };
        // Keep the Ready transition time of an adopted node if it was Ready.
        if let Some(since) = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
            .and_then(|c| c.last_transition_time.as_ref())
        {
            self.ready_since = since.0;
        }
        self.post_status().await?;
        self.clear_health_taints().await?;
        self.renew_lease().await?;
        Ok(())
    }

    async fn post_status(&self) -> Result<()> {
        let status = status(&self.name, &self.info, Timestamp::now(), self.ready_since);
        self.nodes
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .context("posting node status")?;
        Ok(())
    }

    async fn clear_health_taints(&self) -> Result<()> {
        let node = self
            .nodes
            .get(&self.name)
            .await
            .context("reading the node")?;
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let Some(kept) = without_health_taints(&taints) else {
            return Ok(());
        };
        let mut updated = node;
        if let Some(spec) = updated.spec.as_mut() {
            spec.taints = (!kept.is_empty()).then_some(kept);
        }
        // Replace with the read resourceVersion: never clobbers a concurrent change.
        match self
            .nodes
            .replace(&self.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {
                let removed: Vec<String> = taints
                    .iter()
                    .filter(|t| HEALTH_TAINTS.contains(&t.key.as_str()))
                    .map(|t| format!("{}:{}", t.key, t.effect))
                    .collect();
                tracing::info!(node = %self.name, taints = ?removed, "removed health taints");
                Ok(())
            }
            Err(e) if has_code(&e, 409) => Ok(()),
            Err(e) => Err(e).context("removing health taints"),
        }
    }

    async fn renew_lease(&self) -> Result<()> {
        let spec = LeaseSpec {
            holder_identity: Some(self.name.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        };
        let patch = json!({ "spec": spec });
        match self
            .leases
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if has_code(&e, 404) => {
                let node = self
                    .nodes
                    .get(&self.name)
                    .await
                    .context("reading the node")?;
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        owner_references: Some(vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: self.name.clone(),
                            uid: node.metadata.uid.unwrap_or_default(),
                            ..OwnerReference::default()
                        }]),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                match self.leases.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(()),
                    Err(e) if has_code(&e, 409) => Ok(()),
                    Err(e) => Err(e).context("creating the node lease"),
                }
            }
            Err(e) => Err(e).context("renewing the node lease"),
        }
    }

    /// Heartbeats until `shutdown` turns true. Failures are logged and
    /// retried on the next round; a deleted Node is registered again.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(LEASE_RENEW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round: u32 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            round = round.wrapping_add(1);
            if let Err(e) = self.renew_lease().await {
                tracing::warn!(node = %self.name, error = format!("{e:#}"), "lease renewal failed");
            }
            let result = if round.is_multiple_of(STATUS_EVERY) {
                self.post_status().await
            } else {
                Ok(())
            };
            let result = match result {
                Ok(()) => self.clear_health_taints().await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                let gone = e
                    .downcast_ref::<kube::Error>()
                    .is_some_and(|k| has_code(k, 404));
                if gone {
                    tracing::warn!(node = %self.name, "node was deleted; registering it again");
                    if let Err(e) = self.register().await {
                        tracing::warn!(node = %self.name, error = format!("{e:#}"), "registration failed");
                    }
                } else {
                    tracing::warn!(node = %self.name, error = format!("{e:#}"), "node heartbeat failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_ready_with_resources() {
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let since = Timestamp::from_second(1_700_000_000).unwrap();
        let s = status("siphon-node", &system_info("v1.34.4"), now, since);
        let ready = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_heartbeat_time, Some(Time(now)));
        assert_eq!(ready.last_transition_time, Some(Time(since)));
        let alloc = s.allocatable.as_ref().unwrap();
        assert_eq!(alloc["cpu"].0, "8");
        assert_eq!(alloc["memory"].0, "16Gi");
        assert_eq!(alloc["pods"].0, "110");
        assert_eq!(s.addresses.as_ref().unwrap()[0].address, "127.0.0.1");
        assert_eq!(s.node_info.as_ref().unwrap().kubelet_version, "v1.34.4");
        assert_eq!(s.node_info.as_ref().unwrap().operating_system, "linux");
    }

    #[test]
    fn health_taints_are_removed_others_kept() {
        let taint = |key: &str, effect: &str| Taint {
            key: key.into(),
            effect: effect.into(),
            ..Taint::default()
        };
        assert_eq!(
            without_health_taints(&[taint("dedicated", "NoSchedule")]),
            None
        );
        assert_eq!(without_health_taints(&[]), None);
        assert_eq!(
            without_health_taints(&[
                taint("node.kubernetes.io/not-ready", "NoSchedule"),
                taint("dedicated", "NoSchedule"),
                taint("node.kubernetes.io/unreachable", "NoExecute"),
            ]),
            Some(vec![taint("dedicated", "NoSchedule")])
        );
    }
}
