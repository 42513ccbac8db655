//! What Siphon writes back: the `PostgresCapture` status.
//!
//! Two writers share it, each with its own server-side-apply field manager:
//! the operator owns `conditions`, `phase`, `observedGeneration`, `managed` and
//! `slot`; the worker owns `progress`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a capture.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresCaptureStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One word for printer columns: Pending, Provisioning, Backfilling,
    /// Streaming, Suspended, Failed, Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Conditions: Ready, Provisioned, WorkerAvailable, BackfillComplete, WalHealthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Database objects this capture created and will drop on deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedObjects>,
    /// Facts about the replication slot, from `pg_replication_slots`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<SlotStatus>,
    /// Progress written by the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressStatus>,
}

/// Database objects created by Siphon (and so dropped by its finalizer).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedObjects {
    /// `host:port/database` the objects live in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The replication slot, if Siphon created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// The publication, if Siphon created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<String>,
    /// The watermark table this capture writes its row into. Teardown
    /// deletes the row, then drops the table when no other capture's row is
    /// left and Siphon created it (its comment says so): the table goes with
    /// the last capture that used it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_table: Option<String>,
    /// The slot has existed. From then on its absence or loss is a definite
    /// failure: it is never silently created again (a new slot would skip
    /// the changes in between), only after a person asks for a re-snapshot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub slot_established: bool,
    /// The slot was found missing or lost, and nothing streams until a
    /// person chooses (a new `spec.snapshot.request.id`, or a new capture).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_loss: Option<SlotLoss>,
    /// NOTIFY triggers (`schema.table`), if Siphon created them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<String>,
    /// The trigger function (`schema.name`), if Siphon created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_function: Option<String>,
    /// The table of deleted keys (`schema.name`), if Siphon created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletes_table: Option<String>,
    /// Deletes recorded by the triggers and not yet drained into Kafka
    /// (counted by the operator; they wait while the capture is suspended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletes_waiting: Option<i64>,
}

/// How a capture's established slot went away.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlotLoss {
    /// `SlotMissing` (dropped) or `SlotLost` (invalidated, `wal_status = lost`).
    pub reason: String,
    /// When the operator saw it (RFC 3339).
    pub detected_at: String,
    /// `spec.snapshot.request.id` in force then: only a different id asks for
    /// the re-snapshot that recovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_request: Option<String>,
}

/// The replication slot as PostgreSQL reports it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlotStatus {
    /// Slot name.
    pub name: String,
    /// A backend is streaming from the slot.
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_status: Option<String>,
    /// WAL kept for this slot, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_wal_bytes: Option<i64>,
    /// WAL kept for this slot, human-readable (for printer columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_wal: Option<String>,
    /// Last LSN the consumer confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_flush_lsn: Option<String>,
    /// A failover slot (PostgreSQL 17+): standbys that synchronize slots
    /// keep a copy of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<bool>,
}

/// Progress of the worker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressStatus {
    /// Last LSN confirmed to PostgreSQL (all records before it are in Kafka).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_lsn: Option<String>,
    /// Changes written to Kafka since the worker started.
    #[serde(default)]
    pub events: u64,
    /// Lag behind the server's WAL, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// Lag behind the newest commit, human-readable (for printer columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<String>,
    /// When the worker wrote this (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// Id of the last on-demand snapshot request that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_snapshot_request: Option<String>,
    /// Per-table backfill progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableProgress>,
    /// Polling mode: where each table's cursor stands, and what holds the
    /// horizon back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling: Option<PollingProgress>,
}

/// Progress of a polling capture.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PollingProgress {
    /// Per table: the position and what was read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<PolledTable>,
    /// `lateness: Auto`: no row at or past this cursor time is read yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<String>,
    /// `lateness: Auto`: the open transaction that holds the horizon back,
    /// when one does (a forgotten `idle in transaction` session shows here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<HorizonHolder>,
    /// Deletes drained from the deletes table since the worker started.
    #[serde(default)]
    pub deletes: u64,
}

/// One polled table.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolledTable {
    /// `schema.table` (the name of a query's topic for `tables[].query`).
    pub name: String,
    /// Cursor value of the last row delivered (as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Rows read and sent since the worker started.
    #[serde(default)]
    pub rows: u64,
    /// Time cursors: now minus the cursor of the last row delivered, while
    /// rows wait; `0s` when the table is read to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<String>,
}

/// An open transaction holding a polling horizon back.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HorizonHolder {
    /// Backend process id (`SELECT pg_terminate_backend(pid)` ends it).
    pub pid: i32,
    /// `pg_stat_activity.state`, e.g. `idle in transaction`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// `application_name` of the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    /// When its transaction started (RFC 3339).
    pub transaction_start: String,
    /// How long it has been open, in seconds.
    pub seconds: u64,
}

/// Backfill progress of one table.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TableProgress {
    /// Schema-qualified table name.
    pub name: String,
    /// `Pending`, `Running`, `Done` or `Skipped`.
    pub state: String,
    /// Rows copied so far.
    #[serde(default)]
    pub rows_copied: u64,
    /// Estimated rows in the table (from `pg_class.reltuples`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_estimated: Option<u64>,
}

/// `status.phase`: one word for `kubectl get`, derived from the conditions.
pub mod phase {
    pub const PENDING: &str = "Pending";
    pub const FAILED: &str = "Failed";
    pub const SUSPENDED: &str = "Suspended";
    pub const BACKFILLING: &str = "Backfilling";
    pub const STREAMING: &str = "Streaming";
    pub const DELETING: &str = "Deleting";
}

/// `status.progress.tables[].state`: a table's backfill, as the worker
/// reports it and the operator reads it.
pub mod table_state {
    pub const PENDING: &str = "Pending";
    pub const RUNNING: &str = "Running";
    pub const DONE: &str = "Done";
    pub const SKIPPED: &str = "Skipped";
}

/// The server-side apply field managers of the two writers of a capture's
/// status: each owns its own fields, neither removes the other's.
pub mod field_manager {
    pub const OPERATOR: &str = "siphon-operator";
    pub const WORKER: &str = "siphon-worker";
}
