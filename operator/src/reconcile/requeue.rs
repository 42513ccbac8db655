//! One requeue policy for every outcome of a reconcile, applied or deleted.
//!
//! A database can be fixed without any Kubernetes event, so nothing waits
//! for a change alone: a healthy capture is looked at again so that slot lag
//! and retained WAL stay fresh, a wait that may end by itself (a server
//! unreachable, no free slot, a teardown blocked) soon, a refusal a person
//! must fix (bad credentials, an unfit table) less often, and the teardown's
//! wait for the worker's pods to stop at once.

use std::time::Duration;

use crate::controller::Error;
use crate::database::Unfit;

/// A capture reconciled without trouble.
pub const HEALTHY: Duration = Duration::from_secs(30);
/// A wait that may end by itself.
pub const TRANSIENT: Duration = Duration::from_secs(10);
/// A refusal that needs a person.
pub const REFUSED: Duration = Duration::from_secs(60);
/// Any other failure (the API server, serialization).
pub const FAILED: Duration = Duration::from_secs(15);
/// The teardown waits for the worker's pods to be gone.
pub const WORKER_STOPPING: Duration = Duration::from_secs(2);

/// When to look at a capture again after a refusal.
pub fn after_refusal(unfit: &Unfit) -> Duration {
    if unfit.transient { TRANSIENT } else { REFUSED }
}

/// When to look at a capture again after a failed reconcile.
pub fn after_error(error: &Error) -> Duration {
    match error {
        Error::WorkerStillRunning(_) => WORKER_STOPPING,
        Error::Unfit(u) => after_refusal(u),
        Error::TeardownBlocked(_) => TRANSIENT,
        Error::Kube(_) | Error::Serialize(_) | Error::Finalizer(_) => FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use siphon_crds::conditions::reason;

    #[test]
    fn waits_that_may_end_by_themselves_come_back_sooner_than_refusals() {
        let unfit = |transient| Unfit {
            reason: reason::DATABASE_UNREACHABLE,
            message: String::new(),
            transient,
        };
        assert_eq!(after_refusal(&unfit(true)), TRANSIENT);
        assert_eq!(after_refusal(&unfit(false)), REFUSED);
        assert_eq!(after_error(&Error::Unfit(unfit(false))), REFUSED);
        assert_eq!(
            after_error(&Error::WorkerStillRunning("x".into())),
            WORKER_STOPPING
        );
        assert_eq!(after_error(&Error::TeardownBlocked("x".into())), TRANSIENT);
        assert_eq!(after_error(&Error::Finalizer("x".into())), FAILED);
        assert!(WORKER_STOPPING < TRANSIENT && TRANSIENT < HEALTHY && HEALTHY < REFUSED);
    }
}
