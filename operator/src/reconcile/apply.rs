//! Stage 6: the worker's objects applied with server-side apply under the
//! operator's field manager, in an order that never races: what the pod
//! needs first and at once, the RoleBinding after its Role, the Deployment
//! last. Then how the worker is doing, from the Deployment and its pods.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use siphon_crds::conditions::reason;

use crate::build::WorkerObjects;
use crate::controller::Context;
use crate::names;

/// Apply the worker's objects; returns the Deployment as the API server
/// holds it after the apply.
pub(crate) async fn worker(
    ctx: &Context,
    ns: &str,
    capture: &str,
    objects: &WorkerObjects,
) -> Result<Deployment, kube::Error> {
    let pp = PatchParams::apply(names::OPERATOR_MANAGER).force();
    let object_name = names::worker_object_name(capture);
    // What the pod needs goes first and at once; the Deployment after it, so
    // its first pod does not meet a missing ServiceAccount or ConfigMap. The
    // RoleBinding follows its Role: the API server lets the operator bind a
    // Role only when it holds what the Role grants, which it checks against
    // the Role itself, so a binding sent beside its Role is refused under
    // the chart's RBAC (no `bind` or `escalate` verb is needed this way).
    let (config_maps, accounts, services, roles, bindings) = (
        Api::<ConfigMap>::namespaced(ctx.client.clone(), ns),
        Api::<ServiceAccount>::namespaced(ctx.client.clone(), ns),
        Api::<Service>::namespaced(ctx.client.clone(), ns),
        Api::<Role>::namespaced(ctx.client.clone(), ns),
        Api::<RoleBinding>::namespaced(ctx.client.clone(), ns),
    );
    let (config_map, account, service, role, binding) = (
        Patch::Apply(&objects.config_map),
        Patch::Apply(&objects.service_account),
        Patch::Apply(&objects.service),
        Patch::Apply(&objects.role),
        Patch::Apply(&objects.role_binding),
    );
    futures::try_join!(
        config_maps.patch(&object_name, &pp, &config_map),
        accounts.patch(&object_name, &pp, &account),
        services.patch(&object_name, &pp, &service),
        async {
            roles.patch(&object_name, &pp, &role).await?;
            bindings.patch(&object_name, &pp, &binding).await
        },
    )?;
    Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .patch(&object_name, &pp, &Patch::Apply(&objects.deployment))
        .await
}

/// Ready replicas of the worker Deployment (pure).
pub(crate) fn available_replicas(deployment: &Deployment) -> i32 {
    deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// Explain why the worker is not available, from its pods.
pub(crate) async fn worker_trouble(ctx: &Context, ns: &str, name: &str) -> (&'static str, String) {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{}={}", names::CAPTURE_LABEL, name));
    let Ok(list) = pods.list(&lp).await else {
        return (reason::WORKER_STARTING, "waiting for the worker pod".into());
    };
    for pod in list.items {
        for cs in pod
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default()
        {
            if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                let r = w.reason.clone().unwrap_or_default();
                if r == "CrashLoopBackOff" || r == "CreateContainerConfigError" || r.contains("Err")
                {
                    return (
                        reason::WORKER_FAILING,
                        format!(
                            "worker container is {r}: {}; see its log",
                            w.message.clone().unwrap_or_default()
                        ),
                    );
                }
            }
            if cs.restart_count > 0
                && let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref())
            {
                return (
                    reason::WORKER_FAILING,
                    format!(
                        "worker restarted {} time(s), last exit code {}: {}",
                        cs.restart_count,
                        t.exit_code,
                        t.message.clone().unwrap_or_default()
                    ),
                );
            }
        }
    }
    (
        reason::WORKER_STARTING,
        "waiting for the worker pod to become ready".into(),
    )
}
