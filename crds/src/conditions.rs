//! Condition types and reasons: the one place where their names are spelled.
//!
//! Conditions follow `metav1.Condition`. `Ready` sums up the others so that
//! `kubectl wait --for=condition=Ready pgcap/NAME` works; a `False` condition
//! always carries one of the reasons below and a message naming the fix.

/// The capture is provisioned and its worker is streaming.
pub const READY: &str = "Ready";
/// Database checks and provisioning (publication, slot, watermark table) are done.
pub const PROVISIONED: &str = "Provisioned";
/// The worker Deployment has an available pod.
pub const WORKER_AVAILABLE: &str = "WorkerAvailable";
/// The backfill of existing rows has finished.
pub const BACKFILL_COMPLETE: &str = "BackfillComplete";
/// The slot is healthy: present, not lost, retained WAL within bounds.
pub const WAL_HEALTHY: &str = "WalHealthy";
/// The finalizer could not remove database objects.
pub const TEARDOWN_BLOCKED: &str = "TeardownBlocked";
/// Written by the worker: its capture loop runs. False with the reason when
/// it is interrupted (retrying) or stopped for good (and the fix).
pub const CAPTURING: &str = "Capturing";
/// Written by the worker: Kafka's brokers answer. False while every broker
/// is down (records wait in the worker; nothing is lost).
pub const KAFKA_AVAILABLE: &str = "KafkaAvailable";
/// Polling: every cursor column leads an index (else each poll scans the
/// table); `False` is a warning, it does not hold `Ready` back.
pub const CURSOR_INDEXED: &str = "CursorIndexed";
/// kstatus' abnormal-true condition for a definite failure: present (True)
/// only while `Ready` is False for a reason a person must act on, with
/// Ready's reason and message. Flux and `kstatus` read it as `Failed`.
pub const STALLED: &str = "Stalled";
/// kstatus' abnormal-true condition for work under way: present (True) only
/// while `Ready` is False for a reason that ends by itself (provisioning,
/// the worker starting, a server that is not reachable yet), with Ready's
/// reason and message. Flux and `kstatus` read it as `InProgress`.
pub const RECONCILING: &str = "Reconciling";
/// The conditions the worker writes under its own field manager; the
/// operator reads them (Ready sums them up) and never writes them.
pub const WORKER_OWNED: [&str; 2] = [CAPTURING, KAFKA_AVAILABLE];

/// Reasons, in CamelCase as Kubernetes expects.
pub mod reason {
    pub const RECONCILED: &str = "Reconciled";
    pub const STREAMING: &str = "Streaming";
    pub const SUSPENDED: &str = "Suspended";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const DATABASE_UNREACHABLE: &str = "DatabaseUnreachable";
    pub const AUTHENTICATION_FAILED: &str = "AuthenticationFailed";
    pub const WAL_LEVEL_NOT_LOGICAL: &str = "WalLevelNotLogical";
    pub const MISSING_REPLICATION_PRIVILEGE: &str = "MissingReplicationPrivilege";
    pub const INSUFFICIENT_PRIVILEGE: &str = "InsufficientPrivilege";
    pub const TABLE_NOT_FOUND: &str = "TableNotFound";
    pub const NO_PRIMARY_KEY: &str = "NoPrimaryKey";
    pub const NO_FREE_SLOTS: &str = "NoFreeReplicationSlots";
    pub const NO_FREE_WAL_SENDERS: &str = "NoFreeWalSenders";
    pub const UNSUPPORTED_SERVER_VERSION: &str = "UnsupportedServerVersion";
    pub const PUBLICATION_NOT_FOUND: &str = "PublicationNotFound";
    pub const SLOT_CLAIMED: &str = "SlotClaimedByAnotherCapture";
    pub const SLOT_LOST: &str = "SlotLost";
    pub const SLOT_MISSING: &str = "SlotMissing";
    pub const PROVISIONING: &str = "Provisioning";
    pub const PROVISIONING_FAILED: &str = "ProvisioningFailed";
    pub const WORKER_STARTING: &str = "WorkerStarting";
    pub const WORKER_FAILING: &str = "WorkerFailing";
    pub const BACKFILL_RUNNING: &str = "BackfillRunning";
    pub const BACKFILL_DONE: &str = "BackfillDone";
    pub const BACKFILL_DISABLED: &str = "BackfillDisabled";
    pub const TEARDOWN_FAILED: &str = "TeardownFailed";
    /// A row filter PostgreSQL does not accept as one boolean expression over
    /// the table's columns.
    pub const INVALID_FILTER: &str = "InvalidFilter";
    /// A row filter uses columns outside the replica identity while updates or
    /// deletes are published: PostgreSQL would refuse the application's
    /// UPDATE and DELETE on the table.
    pub const FILTER_OUTSIDE_REPLICA_IDENTITY: &str = "FilterOutsideReplicaIdentity";
    /// A row filter on a server that cannot apply it to the stream (< 15).
    pub const ROW_FILTER_UNSUPPORTED: &str = "RowFilterUnsupported";
    /// An existing publication lacks a captured table.
    pub const PUBLICATION_MISSING_TABLE: &str = "PublicationMissingTable";
    /// An existing publication's column list or row filter makes PostgreSQL
    /// refuse the application's UPDATE or DELETE.
    pub const PUBLICATION_BREAKS_WRITES: &str = "PublicationBreaksWrites";
    /// Every Kafka broker is down (`KafkaAvailable=False`).
    pub const KAFKA_UNREACHABLE: &str = "KafkaUnreachable";
    /// Kafka answers (`KafkaAvailable=True`).
    pub const KAFKA_REACHABLE: &str = "KafkaReachable";
    /// The worker's capture loop was interrupted and restarts by itself.
    pub const CAPTURE_INTERRUPTED: &str = "CaptureInterrupted";
    /// Kafka refused the records for good (authorization, a record too
    /// large, an invalid topic): the worker stopped.
    pub const KAFKA_REFUSED: &str = "KafkaRefused";
    /// The worker stopped for a reason a person must fix (its message says
    /// which and how).
    pub const CAPTURE_FAILED: &str = "CaptureFailed";
    /// Polling: the cursor column is not in the table (or the query).
    pub const CURSOR_COLUMN_MISSING: &str = "CursorColumnMissing";
    /// Polling: the cursor column's type cannot order rows as a cursor.
    pub const CURSOR_TYPE_UNSUPPORTED: &str = "CursorTypeUnsupported";
    /// Polling: a `tables[].query` PostgreSQL refuses, or one lacking the
    /// cursor or key columns.
    pub const INVALID_QUERY: &str = "InvalidQuery";
    /// Polling, `lateness: Auto`: the horizon cannot be derived (a number
    /// cursor, or a role that cannot see other sessions' transactions).
    pub const HORIZON_UNAVAILABLE: &str = "HorizonUnavailable";
    /// Polling: a cursor column leads no index.
    pub const CURSOR_NOT_INDEXED: &str = "CursorNotIndexed";
    /// Polling: every cursor column leads an index.
    pub const INDEXED: &str = "Indexed";

    /// Every reason above. A reason added to this module goes here too (a
    /// test says so), and gets a `### Reason` section in
    /// docs/troubleshooting.md (another test says so).
    pub const ALL: &[&str] = &[
        RECONCILED,
        STREAMING,
        SUSPENDED,
        INVALID_SPEC,
        SECRET_NOT_FOUND,
        DATABASE_UNREACHABLE,
        AUTHENTICATION_FAILED,
        WAL_LEVEL_NOT_LOGICAL,
        MISSING_REPLICATION_PRIVILEGE,
        INSUFFICIENT_PRIVILEGE,
        TABLE_NOT_FOUND,
        NO_PRIMARY_KEY,
        NO_FREE_SLOTS,
        NO_FREE_WAL_SENDERS,
        UNSUPPORTED_SERVER_VERSION,
        PUBLICATION_NOT_FOUND,
        SLOT_CLAIMED,
        SLOT_LOST,
        SLOT_MISSING,
        PROVISIONING,
        PROVISIONING_FAILED,
        WORKER_STARTING,
        WORKER_FAILING,
        BACKFILL_RUNNING,
        BACKFILL_DONE,
        BACKFILL_DISABLED,
        TEARDOWN_FAILED,
        INVALID_FILTER,
        FILTER_OUTSIDE_REPLICA_IDENTITY,
        ROW_FILTER_UNSUPPORTED,
        PUBLICATION_MISSING_TABLE,
        PUBLICATION_BREAKS_WRITES,
        KAFKA_UNREACHABLE,
        KAFKA_REACHABLE,
        CAPTURE_INTERRUPTED,
        KAFKA_REFUSED,
        CAPTURE_FAILED,
        CURSOR_COLUMN_MISSING,
        CURSOR_TYPE_UNSUPPORTED,
        INVALID_QUERY,
        HORIZON_UNAVAILABLE,
        CURSOR_NOT_INDEXED,
        INDEXED,
    ];
}

#[cfg(test)]
mod tests {
    use super::reason;

    /// The reasons this file spells, read from its own source: every
    /// `pub const NAME: &str = "Value";` of the `reason` module.
    fn reasons_in_source() -> Vec<&'static str> {
        let source = include_str!("conditions.rs");
        let start = source
            .find("pub mod reason {")
            .expect("conditions.rs has a reason module");
        let end = source[start..]
            .find("#[cfg(test)]")
            .map_or(source.len(), |i| start + i);
        source[start..end]
            .lines()
            .filter_map(|line| line.trim().strip_prefix("pub const "))
            .filter_map(|rest| rest.split_once(": &str = \""))
            .map(|(_, value)| value.trim_end_matches("\";"))
            .collect()
    }

    #[test]
    fn all_lists_every_reason_once() {
        let declared = reasons_in_source();
        assert!(declared.len() > 10, "reasons not found: {declared:?}");
        let missing: Vec<_> = declared
            .iter()
            .filter(|r| !reason::ALL.contains(r))
            .collect();
        assert!(
            missing.is_empty(),
            "reasons missing from conditions::reason::ALL: {missing:?}"
        );
        let mut sorted = reason::ALL.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), reason::ALL.len(), "a reason is twice in ALL");
    }

    /// docs/troubleshooting.md explains every reason under its own heading
    /// (`### Reason`): which condition, what it means, the fix.
    #[test]
    fn every_reason_has_a_troubleshooting_section() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/troubleshooting.md");
        let guide = std::fs::read_to_string(path).unwrap_or_default();
        let headings: Vec<&str> = guide
            .lines()
            .filter_map(|l| l.strip_prefix("### "))
            .map(str::trim)
            .collect();
        let missing: Vec<_> = reason::ALL
            .iter()
            .filter(|r| !headings.contains(r))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/troubleshooting.md has no `### <Reason>` section (condition, meaning, fix) for: {missing:?}"
        );
    }
}
