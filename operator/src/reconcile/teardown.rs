//! Deletion: stop the worker and wait until its pods are gone (one writer
//! per slot, also while tearing down), then drop exactly what
//! `status.managed` lists, and let go of the Secrets. The finalizer stays
//! until that succeeds or the policy is `Retain`; a teardown that cannot
//! proceed says why in `TeardownBlocked` and an Event, with the fix.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use siphon_crds::capture::{DeletionPolicy, PostgresCapture};
use siphon_crds::conditions::{self, reason};
use siphon_crds::status::ManagedObjects;

use super::publish::merge_status;
use super::secrets::{connect_params, hold_secrets, read_credentials};
use crate::controller::{Context, Error};
use crate::database;
use crate::metrics::CaptureLabels;
use crate::names;
use crate::status::set_condition;

pub(crate) async fn cleanup(
    capture: Arc<PostgresCapture>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = capture.namespace().unwrap_or_default();
    let name = capture.name_any();
    // A capture being deleted is no longer one to alert on, nor one whose
    // transitions are remembered.
    ctx.metrics.forget_capture(&CaptureLabels {
        namespace: ns.clone(),
        capture: name.clone(),
    });
    if let Ok(mut m) = ctx.announced.lock() {
        m.remove(&capture.uid().unwrap_or_default());
    }
    let api: Api<PostgresCapture> = Api::namespaced(ctx.client.clone(), &ns);
    let object_name = names::worker_object_name(&name);

    // 1. Stop the worker and wait for its pods to be gone.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    match deployments
        .delete(&object_name, &DeleteParams::foreground())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let running = pods
        .list(&ListParams::default().labels(&format!("{}={}", names::CAPTURE_LABEL, name)))
        .await?
        .items;
    if !running.is_empty() {
        return Err(Error::WorkerStillRunning(name));
    }

    let managed = capture
        .status
        .as_ref()
        .and_then(|s| s.managed.clone())
        .unwrap_or_default();
    if capture.spec.deletion_policy == DeletionPolicy::Retain {
        ctx.event(
            &capture,
            false,
            "Retained",
            "deletionPolicy is Retain: database objects were left in place".into(),
            "Teardown",
        )
        .await;
        hold_secrets(&ctx, &capture, false).await?;
        return Ok(Action::await_change());
    }
    if managed.slot.is_none()
        && managed.publication.is_none()
        && managed.watermark_table.is_none()
        && managed.triggers.is_empty()
        && managed.trigger_function.is_none()
        && managed.deletes_table.is_none()
    {
        hold_secrets(&ctx, &capture, false).await?;
        return Ok(Action::await_change());
    }

    // 2..6. Drop what we created.
    let blocked = |msg: String| async {
        let mut conds = capture
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        set_condition(
            &mut conds,
            conditions::TEARDOWN_BLOCKED,
            true,
            reason::TEARDOWN_FAILED,
            &msg,
            capture.metadata.generation,
        );
        let _ = merge_status(
            &api,
            &name,
            json!({ "phase": siphon_crds::status::phase::DELETING, "conditions": conds }),
        )
        .await;
        ctx.event(
            &capture,
            true,
            reason::TEARDOWN_FAILED,
            msg.clone(),
            "Teardown",
        )
        .await;
        Error::TeardownBlocked(msg)
    };
    let creds = match read_credentials(&ctx, &capture, &[]).await {
        Ok(c) => c,
        Err(u) => return Err(blocked(format!(
            "{}; or set spec.deletionPolicy: Retain to let go without dropping database objects",
            u.message
        ))
        .await),
    };
    let client = match database::connect(&connect_params(&capture, creds)).await {
        Ok(c) => c,
        Err(u) => return Err(blocked(format!(
            "cannot drop the database objects: {}; or set spec.deletionPolicy: Retain to let go",
            u.message
        ))
        .await),
    };
    let capture_id = names::capture_id(&ns, &name, &capture.uid().unwrap_or_default());
    if let Err(u) = database::teardown(&client, &managed, &capture_id).await {
        return Err(blocked(format!(
            "{}; or set spec.deletionPolicy: Retain to let go",
            u.message
        ))
        .await);
    }
    ctx.event(
        &capture,
        false,
        "TornDown",
        teardown_note(&managed),
        "Teardown",
    )
    .await;
    hold_secrets(&ctx, &capture, false).await?;
    Ok(Action::await_change())
}

/// What the teardown dropped, for its event (pure): the objects `managed`
/// lists, and only those.
pub(crate) fn teardown_note(managed: &ManagedObjects) -> String {
    let mut dropped = Vec::new();
    for (what, name) in [
        ("slot", &managed.slot),
        ("publication", &managed.publication),
        ("watermark table", &managed.watermark_table),
        ("trigger function", &managed.trigger_function),
        ("deletes table", &managed.deletes_table),
    ] {
        if let Some(name) = name {
            dropped.push(format!("{what} {name}"));
        }
    }
    if !managed.triggers.is_empty() {
        dropped.push(format!(
            "notify triggers on {}",
            managed.triggers.join(", ")
        ));
    }
    format!("dropped {}", dropped.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_teardown_event_names_only_what_existed() {
        let polling = ManagedObjects {
            trigger_function: Some("public.siphon_default_shop_notify".into()),
            deletes_table: Some("public.siphon_default_shop_deletes".into()),
            triggers: vec!["public.orders".into()],
            ..ManagedObjects::default()
        };
        assert_eq!(
            teardown_note(&polling),
            "dropped trigger function public.siphon_default_shop_notify, deletes table public.siphon_default_shop_deletes, notify triggers on public.orders"
        );
        let logical = ManagedObjects {
            slot: Some("s".into()),
            publication: Some("p".into()),
            ..ManagedObjects::default()
        };
        assert_eq!(teardown_note(&logical), "dropped slot s, publication p");
    }
}
