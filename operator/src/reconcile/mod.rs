//! The reconcile of an applied capture, as the pipeline of DESIGN.md:
//!
//! ```text
//! secrets → validate (pure) → connect → preflight → provision → build (pure) → apply (SSA) → status
//! ```
//!
//! One module per stage: [`secrets`], [`crate::validate`], [`provision`]
//! (preflight and provision by mode), [`crate::build`], [`apply`], and
//! [`publish`] for the status and Events; the conditions each stage sets
//! are pure builders in [`conditions`]; [`teardown`] runs on deletion; one
//! [`requeue`] policy decides when to look again.
//!
//! Invariant: whatever a stage answers, the status says it. A refusal
//! (an [`Unfit`]) ends the pipeline with its reason in `Provisioned`, and
//! is not an error of the reconcile: the capture is looked at again by the
//! requeue policy.

pub mod apply;
pub mod conditions;
pub mod provision;
pub mod publish;
pub mod requeue;
pub mod secrets;
pub mod teardown;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use siphon_crds::capture::{CaptureMode, PostgresCapture};
use siphon_crds::conditions as names_of;
use siphon_crds::status::{ManagedObjects, SlotStatus};

use crate::controller::{Context, Error};
use crate::database::{self, Unfit};
use crate::metrics::CaptureLabels;
use crate::status;
use crate::{build, validate};

/// Reconcile an applied capture: run the stages, then publish what they
/// found.
pub(crate) async fn apply(
    capture: Arc<PostgresCapture>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let (ns, name) = (capture.namespace().unwrap_or_default(), capture.name_any());
    let generation = capture.metadata.generation;
    let api: Api<PostgresCapture> = Api::namespaced(ctx.client.clone(), &ns);
    let old = capture.status.clone().unwrap_or_default();
    let mut conds: Vec<Condition> = old.conditions.clone();
    let mut managed = old.managed.clone().unwrap_or_default();
    // A polling capture has no slot: no slot facts and no WalHealthy (left
    // over from an earlier logical mode), and a logical one no CursorIndexed.
    let polling_mode = capture.spec.mode == CaptureMode::Polling;
    let mut slot = if polling_mode { None } else { old.slot.clone() };
    let other_mode_only = if polling_mode {
        names_of::WAL_HEALTHY
    } else {
        names_of::CURSOR_INDEXED
    };
    status::remove_condition(&mut conds, other_mode_only);

    let mut laps = Laps::default();
    laps.lap("start");
    let outcome = stages(
        &capture,
        &ctx,
        &api,
        &mut conds,
        &mut managed,
        &mut slot,
        &mut laps,
    )
    .await;
    let refusal = match &outcome {
        Err(Error::Unfit(u)) => Some(u),
        _ => None,
    };
    for verdict in refusal.map(conditions::refused).unwrap_or_default() {
        verdict.record(&mut conds, generation);
    }
    let phase = summarize(&capture, &mut conds, &managed, refusal);
    laps.lap("conditions");

    observe(
        &ctx,
        &ns,
        &name,
        &capture,
        &conds,
        slot.as_ref(),
        polling_mode,
    );
    let status = json!({
        "observedGeneration": generation,
        "phase": phase,
        // The worker's conditions stay the worker's (its own field manager).
        "conditions": status::operator_owned(&conds),
        "managed": managed,
        "slot": slot,
    });
    publish::status_and_events(&ctx, &api, &capture, &old.conditions, &conds, status).await?;
    laps.lap("status_and_events");
    match &outcome {
        Ok(()) => tracing::debug!(steps = %laps, "reconcile steps"),
        Err(error) => tracing::debug!(steps = %laps, %error, "reconcile steps"),
    }
    match outcome {
        Ok(()) => Ok(Action::requeue(requeue::HEALTHY)),
        Err(Error::Unfit(u)) => Ok(Action::requeue(requeue::after_refusal(&u))),
        Err(e) => Err(e),
    }
}

/// The stages, each setting the conditions it decides; the first refusal
/// or failure ends them.
async fn stages(
    capture: &PostgresCapture,
    ctx: &Context,
    api: &Api<PostgresCapture>,
    conds: &mut Vec<Condition>,
    managed: &mut ManagedObjects,
    slot: &mut Option<SlotStatus>,
    laps: &mut Laps,
) -> Result<(), Error> {
    let generation = capture.metadata.generation;
    let (ns, name) = (capture.namespace().unwrap_or_default(), capture.name_any());
    let seen = secrets::hold_secrets(ctx, capture, true).await?;
    laps.lap("hold_secrets");
    let creds = secrets::read_credentials(ctx, capture, &seen).await?;
    laps.lap("read_secrets");
    let plan = validate::validate(capture, &ctx.live_captures()).map_err(|inv| Unfit {
        reason: inv.reason,
        message: inv.message,
        transient: false,
    })?;
    let client = database::connect(&secrets::connect_params(capture, creds)).await?;
    laps.lap("connect");
    let mut record = publish::managed_recorder(api, &name);
    let provisioned = provision::run(&client, &plan, capture, managed, &mut record, laps).await?;
    for verdict in provisioned.verdicts {
        verdict.record(conds, generation);
    }
    let objects = build::worker_objects(capture, &plan, &ctx.defaults)?;
    let deployment = apply::worker(ctx, &ns, &name, &objects).await?;
    laps.lap("apply_worker");
    let available = apply::available_replicas(&deployment);
    let trouble = if capture.spec.suspend || available > 0 {
        None
    } else {
        Some(apply::worker_trouble(ctx, &ns, &name).await)
    };
    conditions::worker_available(capture.spec.suspend, available, trouble)
        .record(conds, generation);
    laps.lap("worker_state");
    if let Some(server_version_num) = provisioned.server_version_num {
        *slot = database::slot_status(&client, plan.slot.as_str(), server_version_num).await?;
        laps.lap("slot_status");
        conditions::wal_healthy(plan.slot.as_str(), slot.as_ref()).record(conds, generation);
    }
    conditions::backfill(capture).record(conds, generation);
    Ok(())
}

/// `Ready`, `Stalled`, `Reconciling` and the phase, from the other
/// conditions. A wait that may end by itself (an unreachable server, no
/// free slot) is not a failure a person must act on: Pending, not Failed.
fn summarize(
    capture: &PostgresCapture,
    conds: &mut Vec<Condition>,
    managed: &ManagedObjects,
    refusal: Option<&Unfit>,
) -> &'static str {
    let generation = capture.metadata.generation;
    let polling_mode = capture.spec.mode == CaptureMode::Polling;
    let suspended = capture
        .spec
        .suspend
        .then(|| status::suspended_message(polling_mode, managed.deletes_waiting));
    let mut phase = status::summarize_ready(conds, generation, suspended.as_deref());
    if phase == siphon_crds::status::phase::FAILED && refusal.is_some_and(|u| u.transient) {
        phase = siphon_crds::status::phase::PENDING;
    }
    status::set_progress_conditions(conds, phase, generation);
    phase
}

/// The operator's per-capture gauges.
fn observe(
    ctx: &Context,
    ns: &str,
    name: &str,
    capture: &PostgresCapture,
    conds: &[Condition],
    slot: Option<&SlotStatus>,
    polling_mode: bool,
) {
    let wal = (!polling_mode).then(|| {
        let lost = status::find(conds, names_of::WAL_HEALTHY).is_some_and(|c| {
            c.reason == names_of::reason::SLOT_LOST || c.reason == names_of::reason::SLOT_MISSING
        });
        (lost, slot.and_then(|s| s.retained_wal_bytes))
    });
    ctx.metrics.observe_capture(
        &CaptureLabels {
            namespace: ns.to_string(),
            capture: name.to_string(),
        },
        status::is_true(conds, names_of::READY),
        capture.spec.suspend,
        wal,
    );
}

/// Wall time per step of one reconcile, logged at debug level with the
/// outcome: where a slow reconcile spends its time (API server, database).
#[derive(Default)]
pub(crate) struct Laps {
    last: Option<Instant>,
    steps: Vec<(&'static str, Duration)>,
}

impl Laps {
    pub(crate) fn lap(&mut self, step: &'static str) {
        let now = Instant::now();
        let since = self.last.replace(now).unwrap_or(now);
        self.steps.push((step, now - since));
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, d)) in self.steps.iter().enumerate().skip(1) {
            let sep = if i > 1 { " " } else { "" };
            write!(f, "{sep}{step}={}ms", d.as_millis())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::{SPEC, fixture};
    use siphon_crds::status::phase;

    fn refusal(reason: &'static str, transient: bool) -> Unfit {
        Unfit {
            reason,
            message: "the reason and its fix".into(),
            transient,
        }
    }

    /// The phase and the kstatus conditions after a refusal of the
    /// provisioning step.
    fn after(unfit: &Unfit, suspend: bool) -> (&'static str, Vec<Condition>) {
        let mut capture = fixture("default", "shop", SPEC);
        capture.spec.suspend = suspend;
        let mut conds = Vec::new();
        for verdict in conditions::refused(unfit) {
            verdict.record(&mut conds, Some(1));
        }
        let phase = summarize(
            &capture,
            &mut conds,
            &ManagedObjects::default(),
            Some(unfit),
        );
        (phase, conds)
    }

    #[test]
    fn a_wait_that_may_end_by_itself_is_pending_and_reconciling_never_stalled() {
        for transient in [
            names_of::reason::DATABASE_UNREACHABLE,
            names_of::reason::PROVISIONING_FAILED,
        ] {
            let (phase, conds) = after(&refusal(transient, true), false);
            assert_eq!(phase, phase::PENDING, "{transient}");
            assert!(
                status::find(&conds, names_of::STALLED).is_none(),
                "{transient}"
            );
            let reconciling = status::find(&conds, names_of::RECONCILING).expect("Reconciling");
            assert_eq!(reconciling.status, "True");
            assert_eq!(reconciling.reason, transient);
            assert!(!status::is_true(&conds, names_of::READY));
        }
    }

    #[test]
    fn a_refusal_a_person_must_fix_is_failed_and_stalled_with_its_reason() {
        let (phase, conds) = after(
            &refusal(names_of::reason::AUTHENTICATION_FAILED, false),
            false,
        );
        assert_eq!(phase, phase::FAILED);
        let stalled = status::find(&conds, names_of::STALLED).expect("Stalled");
        assert_eq!(stalled.status, "True");
        assert_eq!(stalled.reason, names_of::reason::AUTHENTICATION_FAILED);
        assert_eq!(stalled.message, "the reason and its fix");
        assert!(status::find(&conds, names_of::RECONCILING).is_none());
    }

    #[test]
    fn a_suspended_capture_that_cannot_be_provisioned_is_suspended_and_not_ready() {
        let (phase, conds) = after(
            &refusal(names_of::reason::AUTHENTICATION_FAILED, false),
            true,
        );
        assert_eq!(phase, phase::SUSPENDED);
        let ready = status::find(&conds, names_of::READY).expect("Ready");
        assert_eq!(ready.reason, names_of::reason::SUSPENDED);
        assert_eq!(ready.status, "False");
        assert!(status::find(&conds, names_of::STALLED).is_none());
    }
}
