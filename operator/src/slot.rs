//! The life of a capture's replication slot, decided purely from what the
//! operator recorded and what the database shows.
//!
//! ```text
//!   (none) ──create──► established ──dropped / wal_status lost──► lost
//!                          ▲                                       │
//!                          └──── new spec.snapshot.request.id ◄────┘
//!                                (new slot, every table backfilled)
//! ```
//!
//! **Invariant.** A slot is created only when the capture never had one
//! (`status.managed.slotEstablished` is false), or when a person asked for a
//! re-snapshot of every table after the loss was recorded. A slot that went
//! away took with it the changes between its last confirmed position and the
//! new slot's start: streaming from a new slot without a backfill would lose
//! them while the capture says Ready. The record lives in the status, so an
//! operator restart changes nothing.

use siphon_crds::capture::SnapshotRequest;
use siphon_crds::conditions::reason;
use siphon_crds::status::{ManagedObjects, SlotLoss};

/// The capture's slot as the database shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotFacts {
    /// A walsender streams from it.
    pub active: bool,
    /// `wal_status = lost`: PostgreSQL removed WAL it still needed.
    pub lost: bool,
}

/// What provisioning does with the slot.
#[derive(Debug, Clone, PartialEq)]
pub enum SlotStep {
    /// The slot is there and healthy.
    Keep,
    /// The capture never had a slot: create it.
    Create,
    /// A re-snapshot recovers a lost or missing slot: drop what is left of
    /// it (when `drop_first`), then create a new one.
    Recover { drop_first: bool },
    /// Stop: the slot went away and nobody has chosen how to go on.
    Refuse(SlotLoss),
}

/// Decide the slot's step (pure). `now` is the RFC 3339 time recorded with a
/// newly seen loss.
pub fn decide(
    managed: &ManagedObjects,
    slot: Option<SlotFacts>,
    request: Option<&SnapshotRequest>,
    now: &str,
) -> SlotStep {
    let gone = match slot {
        Some(s) if !s.lost => return SlotStep::Keep,
        Some(_) => reason::SLOT_LOST,
        None if !managed.slot_established => return SlotStep::Create,
        None => reason::SLOT_MISSING,
    };
    let loss = managed.slot_loss.clone().unwrap_or_else(|| SlotLoss {
        reason: gone.to_string(),
        detected_at: now.to_string(),
        snapshot_request: request.map(|r| r.id.clone()),
    });
    let chosen = request.is_some_and(|r| {
        r.tables.is_empty() && loss.snapshot_request.as_deref() != Some(r.id.as_str())
    });
    if chosen {
        SlotStep::Recover {
            drop_first: slot.is_some(),
        }
    } else {
        SlotStep::Refuse(loss)
    }
}

/// The condition message of a refused slot, with the ways out.
pub fn loss_message(slot: &str, loss: &SlotLoss, request: Option<&SnapshotRequest>) -> String {
    let what = if loss.reason == reason::SLOT_LOST {
        format!(
            "replication slot {slot} was invalidated (wal_status = lost): PostgreSQL removed WAL it still needed (raise max_slot_wal_keep_size to keep it from happening again)"
        )
    } else {
        format!(
            "replication slot {slot} no longer exists (dropped outside Siphon?), seen at {}",
            loss.detected_at
        )
    };
    let partial = request.is_some_and(|r| {
        !r.tables.is_empty() && loss.snapshot_request.as_deref() != Some(r.id.as_str())
    });
    let hint = if partial {
        " (spec.snapshot.request must name no tables: every table is read again)"
    } else {
        ""
    };
    format!(
        "{what}; the changes since its last confirmed position may be gone, so nothing streams until you choose: set spec.snapshot.request.id to a new value with no tables{hint} to create a new slot and backfill every table again, or delete and re-create the capture"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-12-01T00:00:00Z";

    fn established() -> ManagedObjects {
        ManagedObjects {
            slot: Some("s".into()),
            slot_established: true,
            ..ManagedObjects::default()
        }
    }

    fn request(id: &str, tables: &[&str]) -> SnapshotRequest {
        SnapshotRequest {
            id: id.into(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
        }
    }

    const HEALTHY: SlotFacts = SlotFacts {
        active: true,
        lost: false,
    };
    const LOST: SlotFacts = SlotFacts {
        active: false,
        lost: true,
    };

    #[test]
    fn a_new_capture_creates_its_slot_and_a_healthy_one_keeps_it() {
        assert_eq!(
            decide(&ManagedObjects::default(), None, None, NOW),
            SlotStep::Create
        );
        assert_eq!(
            decide(&established(), Some(HEALTHY), None, NOW),
            SlotStep::Keep
        );
    }

    #[test]
    fn a_missing_established_slot_is_refused_with_the_request_in_force() {
        let old = request("r1", &[]);
        let SlotStep::Refuse(loss) = decide(&established(), None, Some(&old), NOW) else {
            panic!("a missing slot must not be created again");
        };
        assert_eq!(loss.reason, reason::SLOT_MISSING);
        assert_eq!(loss.snapshot_request.as_deref(), Some("r1"));
        assert_eq!(loss.detected_at, NOW);
        let msg = loss_message("s", &loss, Some(&old));
        assert!(msg.contains("spec.snapshot.request.id"), "{msg}");
    }

    #[test]
    fn only_a_new_request_for_every_table_recovers() {
        let mut managed = established();
        managed.slot_loss = Some(SlotLoss {
            reason: reason::SLOT_MISSING.into(),
            detected_at: NOW.into(),
            snapshot_request: Some("r1".into()),
        });
        // The request already in force when the loss was seen: still refused.
        assert!(matches!(
            decide(&managed, None, Some(&request("r1", &[])), NOW),
            SlotStep::Refuse(_)
        ));
        // A new request naming some tables only: the others would lose changes.
        let partial = request("r2", &["public.a"]);
        let SlotStep::Refuse(loss) = decide(&managed, None, Some(&partial), NOW) else {
            panic!("a partial request does not recover");
        };
        assert!(loss_message("s", &loss, Some(&partial)).contains("must name no tables"));
        assert_eq!(
            decide(&managed, None, Some(&request("r2", &[])), NOW),
            SlotStep::Recover { drop_first: false }
        );
    }

    #[test]
    fn a_lost_slot_is_refused_then_dropped_and_recreated_on_request() {
        let SlotStep::Refuse(loss) = decide(&established(), Some(LOST), None, NOW) else {
            panic!("a lost slot stops the capture");
        };
        assert_eq!(loss.reason, reason::SLOT_LOST);
        // Even a capture that never recorded the slot as established.
        assert!(matches!(
            decide(&ManagedObjects::default(), Some(LOST), None, NOW),
            SlotStep::Refuse(_)
        ));
        let mut managed = established();
        managed.slot_loss = Some(loss);
        assert_eq!(
            decide(&managed, Some(LOST), Some(&request("after", &[])), NOW),
            SlotStep::Recover { drop_first: true }
        );
    }
}
