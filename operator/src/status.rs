//! Stage 7 of the reconcile pipeline: the status the operator owns, built
//! purely and sent with server-side apply under the operator's field manager
//! (the worker owns `status.progress` under its own).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use siphon_crds::conditions;
use siphon_crds::status::phase;

/// Set or update a condition; `lastTransitionTime` moves only when the status
/// value changes.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if ok { "True" } else { "False" };
    let message = truncate(message.into(), 1024);
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != status {
            existing.last_transition_time = now();
        }
        existing.status = status.into();
        existing.reason = reason.into();
        existing.message = message;
        existing.observed_generation = generation;
    } else {
        conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: now(),
        });
    }
}

/// The conditions the operator writes: all but the worker's own (pure).
pub fn operator_owned(conds: &[Condition]) -> Vec<Condition> {
    conds
        .iter()
        .filter(|c| !conditions::WORKER_OWNED.contains(&c.type_.as_str()))
        .cloned()
        .collect()
}

/// The condition of a type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Remove a condition that no longer applies (e.g. `WalHealthy` of a
/// capture that now polls).
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The message of `Ready=False Suspended` (pure): a logical capture's slot
/// retains WAL; a polling capture's changes wait in its tables (and its
/// deletes in the deletes table).
pub fn suspended_message(polling: bool, deletes_waiting: Option<i64>) -> String {
    match (polling, deletes_waiting) {
        (false, _) => "spec.suspend is true: the worker is stopped and the slot retains WAL".into(),
        (true, None) => {
            "spec.suspend is true: the worker is stopped; changes wait in the tables".into()
        }
        (true, Some(n)) => format!(
            "spec.suspend is true: the worker is stopped; changes wait in the tables, and {n} delete(s) in the deletes table"
        ),
    }
}

/// Whether a condition is present and True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_)
        .map(|c| c.status == "True")
        .unwrap_or(false)
}

/// Ready sums up the others: provisioned, worker available and WAL healthy
/// (a polling capture has no `WalHealthy`; `CursorIndexed` is a warning and
/// never holds Ready back). `suspended` carries the message while suspended.
pub fn summarize_ready(
    conds: &mut Vec<Condition>,
    generation: Option<i64>,
    suspended: Option<&str>,
) -> &'static str {
    use conditions::reason;
    // The worker's own conditions come before WorkerAvailable: when the
    // worker stopped for good, its reason and fix say more than the pod's
    // CrashLoopBackOff.
    let blocker = [
        conditions::PROVISIONED,
        conditions::CAPTURING,
        conditions::KAFKA_AVAILABLE,
        conditions::WORKER_AVAILABLE,
        conditions::WAL_HEALTHY,
    ]
    .into_iter()
    .filter_map(|t| find(conds, t))
    .find(|c| c.status != "True")
    .map(|c| (c.reason.clone(), c.message.clone()));
    if let Some(message) = suspended {
        // Suspended is where the spec asks the capture to be, so Ready is
        // True (kstatus: Current; a Flux health wait passes), unless what
        // the suspension keeps is in trouble: provisioning, or the slot.
        // The stopped worker's conditions hold nothing back.
        let kept = [conditions::PROVISIONED, conditions::WAL_HEALTHY]
            .into_iter()
            .filter_map(|t| find(conds, t))
            .all(|c| c.status == "True");
        set_condition(
            conds,
            conditions::READY,
            kept,
            reason::SUSPENDED,
            message,
            generation,
        );
        return phase::SUSPENDED;
    }
    match blocker {
        Some((r, m)) => {
            set_condition(conds, conditions::READY, false, &r, m, generation);
            if r == reason::PROVISIONING
                || r == reason::WORKER_STARTING
                || r == reason::KAFKA_UNREACHABLE
                || r == reason::CAPTURE_INTERRUPTED
            {
                phase::PENDING
            } else {
                phase::FAILED
            }
        }
        None if is_true(conds, conditions::PROVISIONED)
            && is_true(conds, conditions::WORKER_AVAILABLE) =>
        {
            set_condition(
                conds,
                conditions::READY,
                true,
                reason::STREAMING,
                "the worker is streaming changes into Kafka",
                generation,
            );
            if find(conds, conditions::BACKFILL_COMPLETE)
                .map(|c| c.status == "False")
                .unwrap_or(false)
            {
                phase::BACKFILLING
            } else {
                phase::STREAMING
            }
        }
        None => {
            set_condition(
                conds,
                conditions::READY,
                false,
                reason::PROVISIONING,
                "provisioning has not finished",
                generation,
            );
            phase::PENDING
        }
    }
}

/// The kstatus conditions from the phase (pure): `Stalled` while the phase
/// is `Failed`, `Reconciling` while it is `Pending`, each with Ready's
/// reason and message and absent otherwise (abnormal-true conditions are
/// present only while they hold). `kstatus`, and Flux through it, read a
/// capture as Failed (Stalled), InProgress (Reconciling, or Ready False) or
/// Current (Ready True). A suspended capture has neither: its
/// `Ready=True Suspended` reads Current to kstatus (`Ready=False Suspended`
/// while its slot or provisioning is in trouble: InProgress), Suspended to
/// Argo CD's health check.
pub fn set_progress_conditions(conds: &mut Vec<Condition>, phase: &str, generation: Option<i64>) {
    let ready = find(conds, conditions::READY).map(|c| (c.reason.clone(), c.message.clone()));
    for (type_, holds) in [
        (conditions::STALLED, phase == phase::FAILED),
        (conditions::RECONCILING, phase == phase::PENDING),
    ] {
        match (&ready, holds) {
            (Some((reason, message)), true) => {
                set_condition(conds, type_, true, reason, message.clone(), generation)
            }
            _ => remove_condition(conds, type_),
        }
    }
}

/// Whether a changed condition gets its own Event (pure). `Stalled` and
/// `Reconciling` repeat Ready; Ready repeats the condition that blocks it,
/// so a Ready change is announced only when no other change of the same
/// reconcile carries its status and reason (one Event per transition).
pub fn announced(c: &Condition, changed: &[&Condition]) -> bool {
    if c.type_ == conditions::STALLED || c.type_ == conditions::RECONCILING {
        return false;
    }
    c.type_ != conditions::READY
        || !changed
            .iter()
            .any(|o| o.type_ != c.type_ && o.status == c.status && o.reason == c.reason)
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use siphon_crds::conditions::reason;

    #[test]
    fn stalled_and_reconciling_follow_the_phase_with_readys_reason() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            conditions::PROVISIONED,
            false,
            reason::TABLE_NOT_FOUND,
            "create public.t",
            Some(2),
        );
        let phase = summarize_ready(&mut c, Some(2), None);
        set_progress_conditions(&mut c, phase, Some(2));
        let stalled = find(&c, conditions::STALLED).expect("a definite failure is Stalled");
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", reason::TABLE_NOT_FOUND)
        );
        assert_eq!(stalled.message, "create public.t");
        assert!(find(&c, conditions::RECONCILING).is_none());

        // The table appears; the worker is starting: Reconciling, not Stalled.
        set_condition(
            &mut c,
            conditions::PROVISIONED,
            true,
            reason::RECONCILED,
            "ok",
            Some(2),
        );
        set_condition(
            &mut c,
            conditions::WORKER_AVAILABLE,
            false,
            reason::WORKER_STARTING,
            "starting",
            Some(2),
        );
        let phase = summarize_ready(&mut c, Some(2), None);
        set_progress_conditions(&mut c, phase, Some(2));
        assert!(find(&c, conditions::STALLED).is_none());
        let reconciling = find(&c, conditions::RECONCILING).expect("work under way is Reconciling");
        assert_eq!(reconciling.reason, reason::WORKER_STARTING);

        // Streaming: neither is present.
        set_condition(
            &mut c,
            conditions::WORKER_AVAILABLE,
            true,
            reason::RECONCILED,
            "up",
            Some(2),
        );
        let phase = summarize_ready(&mut c, Some(2), None);
        set_progress_conditions(&mut c, phase, Some(2));
        assert!(find(&c, conditions::STALLED).is_none());
        assert!(find(&c, conditions::RECONCILING).is_none());

        // Suspended is where the spec asks the capture to be: neither, and
        // Ready (the stopped worker holds nothing back).
        set_condition(
            &mut c,
            conditions::WORKER_AVAILABLE,
            false,
            reason::SUSPENDED,
            "scaled to zero",
            Some(3),
        );
        let phase = summarize_ready(&mut c, Some(3), Some("spec.suspend is true"));
        set_progress_conditions(&mut c, phase, Some(3));
        assert_eq!(phase, phase::SUSPENDED);
        let ready = find(&c, conditions::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", reason::SUSPENDED)
        );
        assert!(find(&c, conditions::STALLED).is_none());
        assert!(find(&c, conditions::RECONCILING).is_none());

        // A lost slot while suspended is not ready: resuming cannot go on.
        set_condition(
            &mut c,
            conditions::WAL_HEALTHY,
            false,
            reason::SLOT_LOST,
            "lost",
            Some(4),
        );
        summarize_ready(&mut c, Some(4), Some("spec.suspend is true"));
        assert!(!is_true(&c, conditions::READY));
    }

    #[test]
    fn one_event_per_transition() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            conditions::PROVISIONED,
            false,
            reason::PROVISIONING,
            "p",
            Some(1),
        );
        let phase = summarize_ready(&mut c, Some(1), None);
        set_progress_conditions(&mut c, phase, Some(1));
        let changed: Vec<&Condition> = c.iter().collect();
        let told: Vec<&str> = changed
            .iter()
            .filter(|x| announced(x, &changed))
            .map(|x| x.type_.as_str())
            .collect();
        assert_eq!(told, vec![conditions::PROVISIONED]);
        // Ready turning True is its own news.
        let mut up = Vec::new();
        set_condition(
            &mut up,
            conditions::READY,
            true,
            reason::STREAMING,
            "s",
            Some(1),
        );
        let changed: Vec<&Condition> = up.iter().collect();
        assert!(announced(changed[0], &changed));
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut c = Vec::new();
        set_condition(&mut c, "X", false, "A", "m", Some(1));
        let t0 = c[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        set_condition(&mut c, "X", false, "B", "m2", Some(2));
        assert_eq!(c[0].last_transition_time, t0);
        assert_eq!(c[0].reason, "B");
        set_condition(&mut c, "X", true, "C", "m3", Some(2));
        assert_ne!(c[0].last_transition_time, t0);
    }

    #[test]
    fn ready_carries_the_first_blocker() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            conditions::PROVISIONED,
            false,
            reason::WAL_LEVEL_NOT_LOGICAL,
            "set wal_level",
            Some(1),
        );
        let phase = summarize_ready(&mut c, Some(1), None);
        let ready = find(&c, conditions::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason::WAL_LEVEL_NOT_LOGICAL)
        );
        assert_eq!(phase, "Failed");
    }

    #[test]
    fn the_workers_own_reason_comes_before_its_pods_and_stays_the_workers() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            conditions::PROVISIONED,
            true,
            reason::RECONCILED,
            "ok",
            Some(1),
        );
        set_condition(
            &mut c,
            conditions::WORKER_AVAILABLE,
            false,
            reason::WORKER_FAILING,
            "worker container is CrashLoopBackOff",
            Some(1),
        );
        set_condition(
            &mut c,
            conditions::CAPTURING,
            false,
            reason::INSUFFICIENT_PRIVILEGE,
            "permission denied for table t: GRANT SELECT ON t",
            None,
        );
        assert_eq!(summarize_ready(&mut c, Some(1), None), "Failed");
        let ready = find(&c, conditions::READY).unwrap();
        assert_eq!(ready.reason, reason::INSUFFICIENT_PRIVILEGE);
        assert!(ready.message.contains("GRANT SELECT"));
        let written: Vec<String> = operator_owned(&c).into_iter().map(|c| c.type_).collect();
        assert!(!written.contains(&conditions::CAPTURING.to_string()));
        assert!(written.contains(&conditions::READY.to_string()));

        // Kafka down: a wait, not a failure.
        let mut c = Vec::new();
        set_condition(
            &mut c,
            conditions::PROVISIONED,
            true,
            reason::RECONCILED,
            "ok",
            Some(1),
        );
        set_condition(
            &mut c,
            conditions::WORKER_AVAILABLE,
            true,
            reason::STREAMING,
            "ok",
            Some(1),
        );
        set_condition(
            &mut c,
            conditions::KAFKA_AVAILABLE,
            false,
            reason::KAFKA_UNREACHABLE,
            "every Kafka broker is down",
            None,
        );
        assert_eq!(summarize_ready(&mut c, Some(1), None), "Pending");
        assert_eq!(
            find(&c, conditions::READY).unwrap().reason,
            reason::KAFKA_UNREACHABLE
        );
    }

    #[test]
    fn ready_when_provisioned_and_worker_available() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            conditions::PROVISIONED,
            true,
            reason::RECONCILED,
            "",
            Some(1),
        );
        set_condition(
            &mut c,
            conditions::WORKER_AVAILABLE,
            true,
            reason::STREAMING,
            "",
            Some(1),
        );
        set_condition(
            &mut c,
            conditions::WAL_HEALTHY,
            true,
            reason::RECONCILED,
            "",
            Some(1),
        );
        assert_eq!(summarize_ready(&mut c, Some(1), None), "Streaming");
        assert!(is_true(&c, conditions::READY));
    }

    #[test]
    fn a_polling_capture_is_ready_without_wal_health_and_despite_an_unindexed_cursor() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            conditions::PROVISIONED,
            true,
            reason::RECONCILED,
            "1 table(s) ready for polling",
            Some(1),
        );
        set_condition(
            &mut c,
            conditions::CURSOR_INDEXED,
            false,
            reason::CURSOR_NOT_INDEXED,
            "CREATE INDEX CONCURRENTLY ON …",
            Some(1),
        );
        set_condition(
            &mut c,
            conditions::WORKER_AVAILABLE,
            true,
            reason::STREAMING,
            "",
            Some(1),
        );
        assert_eq!(summarize_ready(&mut c, Some(1), None), "Streaming");
        assert!(is_true(&c, conditions::READY));
        // A WalHealthy left from an earlier logical mode is removed.
        set_condition(
            &mut c,
            conditions::WAL_HEALTHY,
            false,
            reason::SLOT_MISSING,
            "",
            Some(1),
        );
        remove_condition(&mut c, conditions::WAL_HEALTHY);
        assert_eq!(summarize_ready(&mut c, Some(2), None), "Streaming");
        let message = suspended_message(true, Some(4));
        assert_eq!(
            summarize_ready(&mut c, Some(2), Some(&message)),
            "Suspended"
        );
        let ready = find(&c, conditions::READY).unwrap();
        assert!(ready.message.contains("4 delete(s)"), "{}", ready.message);
        assert!(!suspended_message(true, None).contains("WAL"));
        assert!(suspended_message(false, None).contains("retains WAL"));
    }
}
