//! The conditions a reconcile sets, as pure functions of what its stages
//! learned: each builder takes facts and returns a [`Verdict`], so every
//! message and reason is unit-tested without a cluster or a database.
//!
//! | condition | from |
//! |---|---|
//! | `Provisioned` | [`provisioned_logical`], [`provisioned_polling`], or [`refused`] |
//! | `CursorIndexed` (polling) | [`cursor_indexed`] |
//! | `WorkerAvailable` | [`worker_available`] |
//! | `WalHealthy` (logical) | [`wal_healthy`], or [`refused`] for a slot missing or lost |
//! | `BackfillComplete` | [`backfill`] |
//!
//! `Ready`, `Stalled` and `Reconciling` summarize these in [`crate::status`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use siphon_crds::capture::{CaptureMode, PostgresCapture};
use siphon_crds::conditions::{self, reason};
use siphon_crds::status::{SlotStatus, table_state};

use crate::database::Unfit;
use crate::polling::Polled;
use crate::status::set_condition;
use crate::validate::Plan;

/// One condition as a reconcile decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub fn new(
        type_: &'static str,
        ok: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            ok,
            reason,
            message: message.into(),
        }
    }

    /// Set it among `conds` (its transition time moves only on a change).
    pub fn record(self, conds: &mut Vec<Condition>, generation: Option<i64>) {
        set_condition(
            conds,
            self.type_,
            self.ok,
            self.reason,
            self.message,
            generation,
        );
    }
}

/// A refusal of the database, the Secrets or the spec: `Provisioned=False`
/// with its reason, and `WalHealthy=False` too when the slot is missing or
/// lost (no WAL is kept for the capture any more).
pub fn refused(unfit: &Unfit) -> Vec<Verdict> {
    let mut out = vec![Verdict::new(
        conditions::PROVISIONED,
        false,
        unfit.reason,
        &unfit.message,
    )];
    if unfit.reason == reason::SLOT_MISSING || unfit.reason == reason::SLOT_LOST {
        out.push(Verdict::new(
            conditions::WAL_HEALTHY,
            false,
            unfit.reason,
            &unfit.message,
        ));
    }
    out
}

/// `Provisioned=True` of a logical capture.
pub fn provisioned_logical(plan: &Plan, tables: usize) -> Verdict {
    Verdict::new(
        conditions::PROVISIONED,
        true,
        reason::RECONCILED,
        format!(
            "slot {} and publication {} ready for {tables} table(s)",
            plan.slot, plan.publication
        ),
    )
}

/// `Provisioned=True` of a polling capture.
pub fn provisioned_polling(tables: usize, notify_tables: Option<usize>) -> Verdict {
    Verdict::new(
        conditions::PROVISIONED,
        true,
        reason::RECONCILED,
        crate::polling::provisioned_message(tables, notify_tables),
    )
}

/// `CursorIndexed`: whether every polled cursor has an index to seek.
pub fn cursor_indexed(polled: &[Polled]) -> Verdict {
    let (ok, why, message) = crate::polling::cursor_indexed(polled);
    Verdict::new(conditions::CURSOR_INDEXED, ok, why, message)
}

/// `WorkerAvailable`: suspended, ready, or the trouble its pods show (the
/// caller reads the pods only when the worker is neither).
pub fn worker_available(
    suspended: bool,
    available: i32,
    trouble: Option<(&'static str, String)>,
) -> Verdict {
    if suspended {
        Verdict::new(
            conditions::WORKER_AVAILABLE,
            false,
            reason::SUSPENDED,
            "suspended: the worker is scaled to zero",
        )
    } else if available > 0 {
        Verdict::new(
            conditions::WORKER_AVAILABLE,
            true,
            reason::STREAMING,
            "the worker pod is ready",
        )
    } else {
        let (why, message) = trouble.unwrap_or((
            reason::WORKER_STARTING,
            "waiting for the worker pod to become ready".into(),
        ));
        Verdict::new(conditions::WORKER_AVAILABLE, false, why, message)
    }
}

/// `WalHealthy` of a logical capture, from its slot as the server reports it.
pub fn wal_healthy(slot_name: &str, slot: Option<&SlotStatus>) -> Verdict {
    match slot {
        None => Verdict::new(
            conditions::WAL_HEALTHY,
            false,
            reason::SLOT_MISSING,
            format!(
                "replication slot {slot_name} is missing; nothing streams until a re-snapshot is requested (spec.snapshot.request.id) or the capture is re-created"
            ),
        ),
        Some(s) if s.wal_status.as_deref() == Some("lost") => Verdict::new(
            conditions::WAL_HEALTHY,
            false,
            reason::SLOT_LOST,
            format!(
                "replication slot {slot_name} was invalidated (wal_status = lost): PostgreSQL removed WAL it still needed; raise max_slot_wal_keep_size, then request a re-snapshot (spec.snapshot.request.id) or re-create the capture"
            ),
        ),
        Some(s) => Verdict::new(
            conditions::WAL_HEALTHY,
            true,
            reason::RECONCILED,
            format!(
                "slot {} retains {} of WAL (wal_status {})",
                s.name,
                s.retained_wal.clone().unwrap_or_default(),
                s.wal_status.clone().unwrap_or_default()
            ),
        ),
    }
}

/// `BackfillComplete`: from the spec (what is to be backfilled) and the
/// worker's progress report.
pub fn backfill(capture: &PostgresCapture) -> Verdict {
    if capture.spec.mode != CaptureMode::Logical
        || capture.spec.snapshot_or_default().mode == siphon_crds::capture::SnapshotMode::Never
    {
        return Verdict::new(
            conditions::BACKFILL_COMPLETE,
            true,
            reason::BACKFILL_DISABLED,
            "no backfill requested",
        );
    }
    let tables = capture
        .status
        .as_ref()
        .and_then(|s| s.progress.as_ref())
        .map(|p| p.tables.clone())
        .unwrap_or_default();
    // Pending is what the worker reports pending: its report names the
    // tables it resolved (wildcards expanded, partitions of a root published
    // as themselves), which the spec alone does not tell.
    let pending = tables
        .iter()
        .filter(|t| t.state != table_state::DONE && t.state != table_state::SKIPPED)
        .count();
    if tables.is_empty() {
        Verdict::new(
            conditions::BACKFILL_COMPLETE,
            false,
            reason::BACKFILL_RUNNING,
            "waiting for the worker to report backfill progress",
        )
    } else if pending == 0 {
        Verdict::new(
            conditions::BACKFILL_COMPLETE,
            true,
            reason::BACKFILL_DONE,
            format!("{} table(s) backfilled", tables.len()),
        )
    } else {
        let copied: u64 = tables.iter().map(|t| t.rows_copied).sum();
        Verdict::new(
            conditions::BACKFILL_COMPLETE,
            false,
            reason::BACKFILL_RUNNING,
            format!(
                "{pending} of {} table(s) left, {copied} rows copied",
                tables.len()
            ),
        )
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::{SPEC, fixture};
    use serde_json::json;
    use siphon_crds::status::{PostgresCaptureStatus, ProgressStatus, TableProgress};

    fn with_progress(mut c: PostgresCapture, state: &str, rows: u64) -> PostgresCapture {
        c.status = Some(PostgresCaptureStatus {
            progress: Some(ProgressStatus {
                events: rows,
                tables: vec![TableProgress {
                    name: "public.orders".into(),
                    state: state.into(),
                    rows_copied: rows,
                    rows_estimated: None,
                }],
                ..ProgressStatus::default()
            }),
            ..PostgresCaptureStatus::default()
        });
        c
    }

    #[test]
    fn the_backfill_is_complete_when_every_reported_table_is_done() {
        let base = fixture("default", "shop", SPEC);
        let waiting = backfill(&base);
        assert_eq!(
            (waiting.ok, waiting.reason),
            (false, reason::BACKFILL_RUNNING)
        );
        let running = backfill(&with_progress(base.clone(), "Running", 10));
        assert_eq!(
            (running.ok, running.message.as_str()),
            (false, "1 of 1 table(s) left, 10 rows copied")
        );
        let done = backfill(&with_progress(base.clone(), "Done", 10));
        assert_eq!((done.ok, done.reason), (true, reason::BACKFILL_DONE));
        // Partitions published as themselves are reported by name, not the
        // root the spec names: the worker's report decides.
        let mut root = with_progress(base.clone(), "Done", 10);
        root.spec.tables =
            vec![serde_json::from_value(json!({ "name": "public.measurements" })).unwrap()];
        assert!(backfill(&root).ok);
        let mut polling = base;
        polling.spec.mode = CaptureMode::Polling;
        assert_eq!(backfill(&polling).reason, reason::BACKFILL_DISABLED);
    }

    #[test]
    fn a_missing_or_lost_slot_is_unhealthy_wal_with_the_fix() {
        let missing = wal_healthy("s", None);
        assert_eq!((missing.ok, missing.reason), (false, reason::SLOT_MISSING));
        assert!(
            missing.message.contains("spec.snapshot.request.id"),
            "{}",
            missing.message
        );
        let slot = |wal_status: &str| SlotStatus {
            name: "s".into(),
            wal_status: Some(wal_status.into()),
            retained_wal: Some("16 MiB".into()),
            ..SlotStatus::default()
        };
        let lost = wal_healthy("s", Some(&slot("lost")));
        assert_eq!((lost.ok, lost.reason), (false, reason::SLOT_LOST));
        assert!(
            lost.message.contains("max_slot_wal_keep_size"),
            "{}",
            lost.message
        );
        let kept = wal_healthy("s", Some(&slot("reserved")));
        assert_eq!(
            (kept.ok, kept.message.as_str()),
            (true, "slot s retains 16 MiB of WAL (wal_status reserved)")
        );
    }

    #[test]
    fn the_worker_is_suspended_ready_or_shows_its_trouble() {
        assert_eq!(worker_available(true, 1, None).reason, reason::SUSPENDED);
        assert!(worker_available(false, 1, None).ok);
        let starting = worker_available(false, 0, None);
        assert_eq!(
            (starting.ok, starting.reason),
            (false, reason::WORKER_STARTING)
        );
        let failing = worker_available(false, 0, Some((reason::WORKER_FAILING, "exit 2".into())));
        assert_eq!(
            (failing.reason, failing.message.as_str()),
            (reason::WORKER_FAILING, "exit 2")
        );
    }

    #[test]
    fn a_refusal_sets_provisioned_and_for_a_slot_loss_walhealthy() {
        let auth = Unfit {
            reason: reason::AUTHENTICATION_FAILED,
            message: "check the Secret".into(),
            transient: false,
        };
        assert_eq!(refused(&auth).len(), 1);
        assert_eq!(refused(&auth)[0].type_, conditions::PROVISIONED);
        let lost = Unfit {
            reason: reason::SLOT_LOST,
            message: "lost".into(),
            transient: false,
        };
        let types: Vec<_> = refused(&lost).iter().map(|v| v.type_).collect();
        assert_eq!(types, [conditions::PROVISIONED, conditions::WAL_HEALTHY]);
    }
}
