//! Why a capture stops ([`CaptureError`]) and the one decision taken about
//! it ([`Policy`]): restart from the last durable position, or stop with a
//! reason and the fix.

use crate::backfill::BackfillError;
use crate::offsets;
use crate::polling::PollError;
use crate::replication::{AssemblyError, DecodeError, ReplicationError};
use crate::sink::SinkError;

/// Why the capture stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Assembly(#[from] AssemblyError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Offsets(#[from] offsets::OffsetsError),
    #[error(transparent)]
    Backfill(#[from] BackfillError),
    #[error(transparent)]
    Polling(#[from] PollError),
    #[error("PostgreSQL query failed ({what}): {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "replication slot {slot} does not exist: a new slot would silently skip the changes in between, so nothing streams until a person chooses (in Kubernetes a new spec.snapshot.request.id makes the operator create a new slot and backfill every table; standalone, `logical.createSlot: true`)"
    )]
    SlotMissing { slot: String },
    #[error(
        "replication slot {slot} was invalidated (wal_status = lost): PostgreSQL removed WAL this capture still needed; raise max_slot_wal_keep_size and re-create the capture to backfill again"
    )]
    SlotLost { slot: String },
    #[error(
        "replication slot {slot} is in use by another process (pid {pid}); only one worker may stream from a slot"
    )]
    SlotActive { slot: String, pid: i32 },
    /// A blocking task panicked: its outcome is unknown, so it is never
    /// taken for a success (an empty position would restart from nothing).
    #[error("{task} panicked; the worker stops rather than guess its outcome")]
    Panicked { task: &'static str },
}

/// What the worker does about an error: the one decision, for every error
/// of either source (see [`CaptureError::policy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Restart from the last confirmed position, after a backoff: waiting
    /// may cure it (a connection lost, a broker restarting, a lock held).
    Retry,
    /// Stop, with this reason in `Capturing=False` and the error's text
    /// (which names the fix): the same input would fail the same way.
    Stop(&'static str),
}

impl CaptureError {
    /// Retry or stop, and why. A decode error is deterministic (the same
    /// bytes fail the same way after a restart), so it stops; an assembly
    /// error is a protocol state a reconnect resets, so it retries.
    pub fn policy(&self) -> Policy {
        use siphon_crds::conditions::reason;
        let retry = match self {
            CaptureError::Replication(e) => e.is_transient(),
            CaptureError::Sink(e) => e.is_transient(),
            CaptureError::Sql { source, .. } => {
                siphon_postgres::sqlstate::is_transient_error(source)
            }
            CaptureError::Offsets(offsets::OffsetsError::Kafka { .. }) => true,
            CaptureError::Backfill(e) => e.is_transient(),
            CaptureError::Polling(e) => e.is_transient(),
            CaptureError::SlotActive { .. } => true,
            CaptureError::Assembly(_) => true,
            CaptureError::Decode(_) => false,
            _ => false,
        };
        if retry {
            return Policy::Retry;
        }
        Policy::Stop(match self {
            CaptureError::SlotMissing { .. } => reason::SLOT_MISSING,
            CaptureError::Polling(e) => e.reason(),
            CaptureError::SlotLost { .. } => reason::SLOT_LOST,
            CaptureError::Sql { source, .. }
                if source.code().map(|c| c.code()) == Some("42501") =>
            {
                reason::INSUFFICIENT_PRIVILEGE
            }
            CaptureError::Sink(SinkError::Fatal { .. }) => reason::KAFKA_REFUSED,
            _ => reason::CAPTURE_FAILED,
        })
    }

    /// Whether a restart from the last confirmed position may succeed.
    pub fn is_transient(&self) -> bool {
        self.policy() == Policy::Retry
    }

    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            CaptureError::Replication(e) => e.metric_label(),
            CaptureError::Decode(_) => "decode",
            CaptureError::Assembly(_) => "assembly",
            CaptureError::Sink(_) => "kafka",
            CaptureError::Offsets(_) => "offsets",
            CaptureError::Backfill(e) => e.metric_label(),
            CaptureError::Polling(e) => e.metric_label(),
            CaptureError::Sql { .. } => "sql",
            CaptureError::SlotMissing { .. } => "slot_missing",
            CaptureError::SlotLost { .. } => "slot_lost",
            CaptureError::SlotActive { .. } => "slot_active",
            CaptureError::Panicked { .. } => "panicked",
        }
    }
}

/// How a run ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    Shutdown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definite_errors_are_not_retried() {
        assert!(!CaptureError::SlotMissing { slot: "s".into() }.is_transient());
        assert!(!CaptureError::SlotLost { slot: "s".into() }.is_transient());
        assert!(
            CaptureError::SlotActive {
                slot: "s".into(),
                pid: 1
            }
            .is_transient()
        );
        assert!(
            !CaptureError::Polling(PollError::NoKey {
                table: "public.t".into()
            })
            .is_transient()
        );
    }

    #[test]
    fn one_policy_decides_retry_or_stop_with_the_reason() {
        use crate::replication::pgoutput::DecodeError;
        use siphon_crds::conditions::reason;
        // Deterministic: the same bytes after a restart fail the same way.
        assert_eq!(
            CaptureError::Decode(DecodeError::UnknownMessage { tag: b'?' }).policy(),
            Policy::Stop(reason::CAPTURE_FAILED)
        );
        assert_eq!(
            CaptureError::Assembly(AssemblyError::UnknownRelation { oid: 1 }).policy(),
            Policy::Retry
        );
        assert_eq!(
            CaptureError::SlotLost { slot: "s".into() }.policy(),
            Policy::Stop(reason::SLOT_LOST)
        );
        assert_eq!(
            CaptureError::Polling(PollError::NoKey {
                table: "public.t".into()
            })
            .policy(),
            Policy::Stop(reason::NO_PRIMARY_KEY)
        );
    }

    #[test]
    fn a_busy_slot_names_its_holder() {
        let e = CaptureError::SlotActive {
            slot: "siphon_shop".into(),
            pid: 4242,
        };
        assert_eq!(
            e.to_string(),
            "replication slot siphon_shop is in use by another process (pid 4242); only one worker may stream from a slot"
        );
        assert_eq!(e.metric_label(), "slot_active");
    }
}
