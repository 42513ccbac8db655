//! Every name the operator derives or writes, in one place: slot and
//! publication names, the finalizer, field managers, labels and the names of
//! the worker's Kubernetes objects.

/// Finalizer that guards database teardown.
pub const FINALIZER: &str = "siphon.dev/cleanup";
/// Finalizer the operator puts on the Secrets a capture reads, released once
/// the capture's teardown is done.
pub const SECRET_FINALIZER: &str = "siphon.dev/credentials-in-use";
/// Server-side apply field manager of the operator.
pub const OPERATOR_MANAGER: &str = siphon_crds::status::field_manager::OPERATOR;
/// Field manager of the worker (it owns `status.progress`).
pub const WORKER_MANAGER: &str = siphon_crds::status::field_manager::WORKER;
/// Label carrying the capture's name on every object made for it.
pub const CAPTURE_LABEL: &str = "siphon.dev/capture";
/// Standard component label.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Standard managed-by label.
/// `app.kubernetes.io/name` of worker pods (PodMonitors select on it).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// The value of [`NAME_LABEL`] on every worker object.
pub const WORKER_NAME: &str = "siphon-worker";
/// `app.kubernetes.io/instance`: the capture a worker object serves.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/part-of`: the product.
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on every object the operator creates; the
/// operator watches its worker Deployments by it.
pub const MANAGED_BY: &str = "siphon-operator";
/// Pod template annotation holding the hash of the worker configuration.
pub const CONFIG_HASH_ANNOTATION: &str = "siphon.dev/config-hash";
/// Key of the worker configuration in its ConfigMap.
pub const WORKER_CONFIG_KEY: &str = "worker.yaml";
/// Where the worker configuration is mounted in the pod.
pub const WORKER_CONFIG_DIR: &str = "/etc/siphon";
/// Port of the worker's /metrics, /healthz and /readyz.
pub const WORKER_METRICS_PORT: i32 = 9187;
/// Environment variables through which the worker gets its secrets.
pub const ENV_PG_USER: &str = "SIPHON_PG_USER";
pub const ENV_PG_PASSWORD: &str = "SIPHON_PG_PASSWORD";
pub const ENV_KAFKA_USER: &str = "SIPHON_KAFKA_USERNAME";
pub const ENV_KAFKA_PASSWORD: &str = "SIPHON_KAFKA_PASSWORD";

pub use siphon_postgres::SlotName;
pub use siphon_postgres::ident::PG_IDENT_MAX;

/// Name of the worker's Deployment, ConfigMap, ServiceAccount, Role and RoleBinding.
pub fn worker_object_name(capture: &str) -> String {
    format!("{capture}-siphon-worker")
}

/// Kafka transactional id of a capture (exactly-once), stable across restarts.
pub fn transactional_id(namespace: &str, name: &str) -> String {
    format!("siphon-{namespace}-{name}")
}

/// Capture name as the worker knows it: the key of its position in the
/// offsets topic and of its watermark row. The UID's first block is part of it
/// so that a capture deleted and created again under the same name never
/// resumes from its predecessor's position (which belonged to another slot).
pub fn capture_id(namespace: &str, name: &str, uid: &str) -> String {
    let incarnation = uid.split('-').next().unwrap_or_default();
    format!("{namespace}/{name}/{incarnation}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recreated_capture_gets_a_new_id() {
        let a = capture_id("default", "shop", "0b6f3c1e-1111-4a5b-9c1d-000000000001");
        let b = capture_id("default", "shop", "7c2d9e4f-2222-4a5b-9c1d-000000000001");
        assert_eq!(a, "default/shop/0b6f3c1e");
        assert_ne!(a, b);
    }
}
