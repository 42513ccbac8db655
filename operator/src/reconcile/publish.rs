//! The last stage: what a reconcile learned goes out as the status (one
//! server-side apply of the operator-owned part, or a merge patch of a piece
//! of it) and as Events (one per condition transition worth telling).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use siphon_crds::capture::PostgresCapture;
use siphon_crds::conditions::reason;
use siphon_crds::status::ManagedObjects;

use crate::controller::Context;
use crate::database::Unfit;
use crate::names;
use crate::status;

/// Merge a part of the status without giving up the rest: server-side apply
/// removes fields the applier owned but left out, so partial updates (the
/// managed-objects record during provisioning, teardown conditions) must be
/// merge patches, never partial applies; losing `status.managed` would make the
/// finalizer forget what to drop.
pub(crate) async fn merge_status(
    api: &Api<PostgresCapture>,
    name: &str,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    let params = PatchParams {
        field_manager: Some(names::OPERATOR_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch_status(name, &params, &Patch::Merge(&json!({ "status": status })))
        .await?;
    Ok(())
}

/// Patch the whole operator-owned part of the status (server-side apply).
pub(crate) async fn patch_status(
    api: &Api<PostgresCapture>,
    name: &str,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    let body = json!({
        "apiVersion": format!("{}/{}", siphon_crds::GROUP, siphon_crds::VERSION),
        "kind": "PostgresCapture",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(names::OPERATOR_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Persist `status.managed` (a merge patch): the callback provisioning calls
/// before it creates an object.
pub(crate) fn managed_recorder(
    api: &Api<PostgresCapture>,
    name: &str,
) -> impl FnMut(ManagedObjects) -> futures::future::BoxFuture<'static, Result<(), Unfit>> {
    let api = api.clone();
    let name = name.to_string();
    move |managed| {
        let api = api.clone();
        let name = name.clone();
        Box::pin(async move {
            merge_status(&api, &name, json!({ "managed": managed }))
                .await
                .map_err(|e| Unfit {
                    reason: reason::PROVISIONING_FAILED,
                    message: format!("cannot record managed objects in the status: {e}"),
                    transient: true,
                })
        })
    }
}

/// Events for the conditions that changed from `old` to `new`.
pub(crate) async fn announce_transitions(
    ctx: &Context,
    capture: &PostgresCapture,
    old: &[Condition],
    new: &[Condition],
) {
    let changed: Vec<&Condition> = new
        .iter()
        .filter(|c| {
            status::find(old, &c.type_)
                .map(|b| b.status != c.status || b.reason != c.reason)
                .unwrap_or(true)
        })
        .collect();
    let events = changed.iter().filter_map(|c| {
        if !status::announced(c, &changed) {
            return None;
        }
        let warning = c.status == "False"
            && c.reason != reason::PROVISIONING
            && c.reason != reason::WORKER_STARTING
            && c.reason != reason::BACKFILL_RUNNING
            && c.reason != reason::SUSPENDED;
        Some(ctx.event(
            capture,
            warning,
            &c.reason,
            format!("{}={}: {}", c.type_, c.status, c.message),
            &c.type_,
        ))
    });
    futures::future::join_all(events).await;
}

/// Send the status and the Events of its transitions at once (independent
/// requests). Transitions are told against the conditions last announced
/// for the capture: the watch's copy can trail this operator's own last
/// status write, and comparing against it would tell them twice.
pub(crate) async fn status_and_events(
    ctx: &Context,
    api: &Api<PostgresCapture>,
    capture: &PostgresCapture,
    seen: &[Condition],
    conds: &[Condition],
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    use kube::ResourceExt;
    let uid = capture.uid().unwrap_or_default();
    let name = capture.name_any();
    let before = ctx
        .announced
        .lock()
        .ok()
        .and_then(|m| m.get(&uid).cloned())
        .unwrap_or_else(|| seen.to_vec());
    let ((), patched) = futures::join!(
        announce_transitions(ctx, capture, &before, conds),
        patch_status(api, &name, status),
    );
    if let Ok(mut m) = ctx.announced.lock() {
        m.insert(uid, conds.to_vec());
    }
    patched
}
