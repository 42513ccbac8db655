//! What a user writes: the `PostgresCapture` spec.
//!
//! Every field carries a doc comment, which becomes its description in the CRD
//! (`kubectl explain pgcap.spec.postgres` reads it). Defaults are written into the
//! schema so that the API server fills them in and `kubectl get -o yaml` shows the
//! effective value. Cross-field invariants are CEL rules checked at `kubectl apply`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::PostgresCaptureStatus;

/// Capture changes from PostgreSQL tables into Kafka topics.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "siphon.dev",
    version = "v1alpha1",
    kind = "PostgresCapture",
    plural = "postgrescaptures",
    singular = "postgrescapture",
    shortname = "pgcap",
    category = "siphon",
    doc = "A PostgresCapture streams the changes of PostgreSQL tables into Kafka topics: the operator checks the database, creates the publication, replication slot and watermark table, runs one worker that captures by logical replication (or by polling), reports progress and health in the status, and drops what it created on deletion.",
    namespaced,
    status = "PostgresCaptureStatus",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Lag","type":"string","jsonPath":".status.progress.lag"}"#,
    printcolumn = r#"{"name":"Retained WAL","type":"string","jsonPath":".status.slot.retainedWal"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'Polling' || has(self.polling)").message("spec.polling is required when spec.mode is Polling (set polling.cursorColumn)").field_path(".polling"))]
#[x_kube(validation = Rule::new("self.mode == oldSelf.mode || (self.suspend && oldSelf.suspend)").message("spec.mode is immutable while the capture runs: set suspend: true first, then change the mode").field_path(".mode"))]
#[x_kube(validation = Rule::new("(has(self.logical) && has(self.logical.slotName) ? self.logical.slotName : '') == (has(oldSelf.logical) && has(oldSelf.logical.slotName) ? oldSelf.logical.slotName : '')").message("spec.logical.slotName is immutable, also when it was left to its default: the slot holds the capture's position; create another PostgresCapture to use another slot").field_path(".logical.slotName"))]
#[x_kube(validation = Rule::new("(has(self.logical) && has(self.logical.publicationName) ? self.logical.publicationName : '') == (has(oldSelf.logical) && has(oldSelf.logical.publicationName) ? oldSelf.logical.publicationName : '')").message("spec.logical.publicationName is immutable, also when it was left to its default; create another PostgresCapture to use another publication").field_path(".logical.publicationName"))]
#[x_kube(validation = Rule::new("self.postgres.database == oldSelf.postgres.database").message("spec.postgres.database is immutable: the slot and publication live in the database; create another PostgresCapture to capture another database").field_path(".postgres.database"))]
#[x_kube(validation = Rule::new("(has(self.snapshot) ? self.snapshot.watermarkTable : 'public.siphon_watermarks') == (has(oldSelf.snapshot) ? oldSelf.snapshot.watermarkTable : 'public.siphon_watermarks')").message("spec.snapshot.watermarkTable is immutable: the capture's backfill position is tied to it; create another PostgresCapture to use another table").field_path(".snapshot.watermarkTable"))]
#[x_kube(validation = Rule::new("self.mode == 'Polling' || self.tables.all(t, !has(t.query) && !has(t.cursorColumn))").message("tables[].query and tables[].cursorColumn are for mode Polling").field_path(".tables"))]
#[x_kube(validation = Rule::new("self.tables.all(t, !has(t.query) || (has(t.keyColumns) && size(t.keyColumns) > 0))").message("a table with a query needs keyColumns: the columns of the query's rows that identify a row").field_path(".tables"))]
#[x_kube(validation = Rule::new("!has(self.polling) || !self.polling.notify || self.tables.all(t, !has(t.query))").message("polling.notify makes triggers on tables; a tables[].query has none: poll it without notify, or capture its tables").field_path(".polling.notify"))]
#[x_kube(validation = Rule::new("self.mode != 'Polling' || self.tables.all(t, !t.name.endsWith('.*'))").message("polling needs explicit table names; `schema.*` is only for mode Logical").field_path(".tables"))]
pub struct PostgresCaptureSpec {
    /// How to reach the source database.
    pub postgres: PostgresConnection,

    /// How changes are read: `Logical` streams the write-ahead log through a
    /// logical replication slot with pgoutput; `Polling` queries each table on an
    /// interval by a cursor column and needs no replication privileges.
    #[serde(default)]
    pub mode: CaptureMode,

    /// The tables to capture, schema-qualified (`public.orders`), or every table
    /// of a schema (`public.*`).
    #[schemars(length(min = 1, max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub tables: Vec<TableSpec>,

    /// Options of logical replication (mode `Logical`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical: Option<LogicalSpec>,

    /// Initial and on-demand backfill of rows already in the tables (mode `Logical`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotSpec>,

    /// Options of cursor polling; required when `mode` is `Polling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling: Option<PollingSpec>,

    /// Where records go.
    pub kafka: KafkaSpec,

    /// The shape of each record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputSpec>,

    /// Settings of the worker pod that runs the capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerPodSpec>,

    /// What happens to the database objects Siphon created (slot, publication,
    /// triggers, watermark table) when this resource is deleted: `Delete` drops
    /// them, `Retain` leaves them in place.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Stop the worker but keep the slot and its position; WAL is retained by
    /// PostgreSQL while suspended (status.slot.retainedWal shows how much).
    #[serde(default)]
    pub suspend: bool,
}

/// Connection to the source PostgreSQL.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresConnection {
    /// Host name or IP address of the PostgreSQL server.
    #[schemars(length(min = 1))]
    pub host: String,
    /// TCP port of the PostgreSQL server.
    #[serde(default = "default_pg_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Name of the database holding the tables. Immutable: the slot and
    /// the publication live in it. The host and port may change (a new
    /// address or a promoted standby of the same database); the slot must
    /// then exist there, or the capture stops with `SlotMissing`.
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
    /// Secret holding the user name and password.
    pub credentials_secret_ref: CredentialsSecretRef,
    /// TLS mode with libpq's meaning: `disable`, `prefer`, `require`,
    /// `verify-ca` (check the certificate chain) or `verify-full` (also check the
    /// host name).
    #[serde(default)]
    pub ssl_mode: SslMode,
    /// Secret holding the CA certificate used by `verify-ca` and `verify-full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

fn default_pg_port() -> u16 {
    5432
}

/// A Secret with a user name and a password.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret, in the namespace of the PostgresCapture.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key of the user name in the Secret.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key of the password in the Secret.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}

/// One key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the namespace of the PostgresCapture.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key inside the Secret.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// TLS mode for the PostgreSQL connection, as libpq's `sslmode`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without checking the certificate.
    #[default]
    Prefer,
    /// TLS always, without checking the certificate.
    Require,
    /// TLS with the certificate chain checked against the CA.
    VerifyCa,
    /// TLS with the chain and the host name checked.
    VerifyFull,
}

/// How changes are read from PostgreSQL.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CaptureMode {
    /// Logical replication with pgoutput.
    #[default]
    Logical,
    /// Cursor polling with SELECT.
    Polling,
}

/// One table (or every table of a schema) to capture.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TableSpec {
    /// Schema-qualified table name (`public.orders`), or `schema.*` for every
    /// table of the schema.
    #[schemars(regex(pattern = r"^[^.\s]+\.[^.\s]+$"), length(max = 127))]
    pub name: String,
    /// Columns to capture; all columns when empty. Key and replica identity
    /// columns are always kept (a publication column list must cover the
    /// replica identity, or PostgreSQL refuses the application's UPDATE and
    /// DELETE); where the server has no column lists (< 15) or the identity
    /// is FULL, the worker drops the other columns itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// SQL boolean expression on the table's columns; only matching rows are
    /// captured (a publication row filter, PostgreSQL 15+; refused on older
    /// servers). PostgreSQL must accept it as exactly one expression over
    /// this table, checked before anything is created; what is used is
    /// PostgreSQL's own rendering of it. While updates or deletes are
    /// captured it may use only replica identity columns (else PostgreSQL
    /// would refuse the application's UPDATE and DELETE). With
    /// `publication: Existing` put the filter in the publication instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Columns that form the record key when the table has no primary key (they
    /// must be covered by a unique index used as replica identity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_columns: Vec<String>,
    /// Backfill this table's existing rows; set false to stream changes only.
    #[serde(default = "default_true")]
    pub snapshot: bool,
    /// Polling only: the cursor column of this table, instead of
    /// `polling.cursorColumn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub cursor_column: Option<String>,
    /// Polling only: poll the rows of this SELECT instead of a table (joins,
    /// projections, expressions); `name` then only names the topic. Siphon
    /// wraps it with the keyset predicate, the order and the limit, so it
    /// must return the cursor column and `keyColumns`, which identify a row.
    /// Checked by PostgreSQL before the capture starts, read in a read-only
    /// transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub query: Option<String>,
}

fn default_true() -> bool {
    true
}

/// Options of logical replication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LogicalSpec {
    /// Name of the logical replication slot; defaults to
    /// `siphon_<namespace>_<name>` (sanitized, at most 63 bytes). Immutable,
    /// also when left to its default: it cannot be set later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9_]{1,63}$"))]
    pub slot_name: Option<String>,
    /// Name of the publication; defaults to the slot name. Immutable, also
    /// when left to its default: it cannot be set later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub publication_name: Option<String>,
    /// `Create`: Siphon creates the publication and keeps its table list in step
    /// with `spec.tables` (and drops it on deletion). `Existing`: use a
    /// publication a person made; Siphon never alters or drops it.
    #[serde(default)]
    pub publication: PublicationMode,
    /// Publish changes of partitions as their root partitioned table
    /// (`publish_via_partition_root`), so one topic per partitioned table.
    #[serde(default = "default_true")]
    pub publish_via_partition_root: bool,
    /// Operations to capture; all of them when empty. A publication Siphon
    /// creates publishes only these (`publish = …`): with `[insert]`, a row
    /// filter may use any column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<Operation>,
    /// How often the worker writes a heartbeat so that an idle or filtered
    /// database still lets the slot advance (e.g. `10s`, `1m`).
    #[serde(default = "default_heartbeat")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub heartbeat_interval: String,
    /// Stream large in-progress transactions (PostgreSQL 14+); the worker buffers
    /// them, spilling to disk past `maxTransactionMemory`.
    #[serde(default = "default_true")]
    pub stream_in_progress: bool,
    /// Create the slot as a failover slot (PostgreSQL 17+), so that a
    /// physical standby running with `sync_replication_slots = on`,
    /// `hot_standby_feedback = on`, a `primary_slot_name` and a
    /// `primary_conninfo` naming a database keeps a copy of it: after the
    /// standby is promoted, point `postgres.host`/`port` at it and the
    /// capture resumes from the copy. List the standby's physical slot in
    /// the primary's `synchronized_standby_slots`, so that no change reaches
    /// Kafka before the standby has it. Unset: on where the server supports
    /// it; `true` on an older server is refused. Fixed when the slot is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<bool>,
}

fn default_heartbeat() -> String {
    "10s".into()
}

/// Who owns the publication.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PublicationMode {
    /// Siphon creates and maintains the publication.
    #[default]
    Create,
    /// The publication exists already and is left untouched.
    Existing,
}

/// A kind of change.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// TRUNCATE.
    Truncate,
}

/// Backfill of rows already present.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// `Initial` copies every existing row (as `op: r`) concurrently with
    /// streaming, by the watermark method; `Never` streams new changes only.
    #[serde(default)]
    pub mode: SnapshotMode,
    /// Rows read per chunk, in primary key order.
    #[serde(default = "default_chunk_size")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub chunk_size: u32,
    /// Table holding the watermarks; it is added to the publication. Created by
    /// Siphon when missing (and dropped on deletion if Siphon created it).
    #[serde(default = "default_watermark_table")]
    pub watermark_table: String,
    /// Re-snapshot tables on demand: change `id` (any new string, e.g. a date)
    /// and the listed tables (all captured tables when empty) are backfilled
    /// again. Suits GitOps: the request is part of the desired state, and
    /// status.progress.completedSnapshotRequest shows when it is done. After
    /// a slot was lost or dropped (`SlotLost`, `SlotMissing`), a new id with
    /// no tables is how to go on: a new slot, every table read again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<SnapshotRequest>,
}

fn default_chunk_size() -> u32 {
    10_000
}
fn default_watermark_table() -> String {
    "public.siphon_watermarks".into()
}

impl Default for SnapshotSpec {
    fn default() -> Self {
        Self {
            mode: SnapshotMode::default(),
            chunk_size: default_chunk_size(),
            watermark_table: default_watermark_table(),
            request: None,
        }
    }
}

/// Whether to backfill.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SnapshotMode {
    /// Backfill existing rows once, then stream.
    #[default]
    Initial,
    /// Stream only.
    Never,
}

/// An on-demand backfill request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRequest {
    /// Identifies the request; a new value starts a new backfill.
    #[schemars(length(min = 1, max = 128))]
    pub id: String,
    /// Tables to backfill again; every captured table when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
}

/// Options of cursor polling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PollingSpec {
    /// Column that grows with every change: a timestamp the database sets
    /// (`DEFAULT now()`, or a trigger on update), or a sequence. Rows are
    /// read in (cursor, key) order, so ties on the cursor lose nothing.
    /// Types: smallint, integer, bigint, numeric, timestamp, timestamptz,
    /// date. Rows whose cursor is NULL are never read. A table may name its
    /// own (`tables[].cursorColumn`).
    #[schemars(length(min = 1, max = 63))]
    pub cursor_column: String,
    /// Time between two polls (e.g. `5s`); while a backlog remains, polls
    /// follow each other without waiting.
    #[serde(default = "default_poll_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub interval: String,
    /// Rows read per query, per table.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub batch_size: u32,
    /// Late commits (a transaction that took an older cursor value commits
    /// after newer rows were read). Unset: none are expected. A duration
    /// (`30s`): re-read that window behind the position each poll and emit
    /// the rows not delivered yet. `Auto`: never read past the start of the
    /// oldest transaction still open, so a cursor set by the database's
    /// clock can never get a row behind the position (time cursors only;
    /// the role needs pg_read_all_stats). docs/polling.md says what each
    /// makes safe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(Auto|([0-9]+(ms|s|m|h))+)$"))]
    pub lateness: Option<String>,
    /// `Append`: each row read is a new event (`op: c`), for insert-only
    /// tables. `Upsert`: each row read is the latest state of its key
    /// (`op: u`), for tables updated in place. Deletes are `op: d` in both.
    #[serde(default)]
    pub semantics: PollingSemantics,
    /// Cursor value to start from (as text, e.g. `2024-01-01` or `1000`):
    /// rows with a smaller cursor are never read. The whole table when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub initial_cursor: Option<String>,
    /// Create, per table, triggers that wake the worker at once on a change
    /// (LISTEN/NOTIFY; the interval stays the fallback) and record deleted
    /// keys in a table, so deletes are captured (`op: d` and a tombstone),
    /// also those made while the worker is down. The operator drops the
    /// triggers, their function and the table on deletion. Needs TRIGGER on
    /// each table and CREATE on `objectsSchema`; not for `tables[].query`.
    #[serde(default)]
    pub notify: bool,
    /// Schema of the trigger function and the deletes table (`notify: true`).
    #[serde(default = "default_objects_schema")]
    #[schemars(length(min = 1, max = 63))]
    pub objects_schema: String,
}

fn default_poll_interval() -> String {
    "5s".into()
}
fn default_batch_size() -> u32 {
    1000
}
fn default_objects_schema() -> String {
    "public".into()
}

/// How polled rows become records.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PollingSemantics {
    /// Every row read is a new event (`op: c`).
    #[default]
    Append,
    /// Every row read is the latest state of its key (`op: u`).
    Upsert,
}

/// Where and how records are written to Kafka.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list of brokers.
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,
    /// Topic of a table is `<topicPrefix>.<schema>.<table>`.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,200}$"))]
    pub topic_prefix: String,
    /// Record format: `Debezium` envelope or flat `Row` objects.
    #[serde(default)]
    pub format: RecordFormat,
    /// `AtLeastOnce` confirms a position after Kafka acknowledged every record
    /// before it; `ExactlyOnce` writes records and position in one Kafka
    /// transaction.
    #[serde(default)]
    pub delivery: Delivery,
    /// Write a tombstone (same key, null value) after each delete, so that
    /// compacted topics forget the row.
    #[serde(default = "default_true")]
    pub tombstones: bool,
    /// Compression of record batches: `none`, `gzip`, `snappy`, `lz4`, `zstd`.
    #[serde(default = "default_compression")]
    #[schemars(regex(pattern = r"^(none|gzip|snappy|lz4|zstd)$"))]
    pub compression: String,
    /// Create missing topics with these settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<TopicCreation>,
    /// Secret with SASL and TLS material: keys `username`, `password`
    /// (SASL), `ca.crt`, `tls.crt`, `tls.key` (TLS); each optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<KafkaAuthSecretRef>,
    /// Security protocol: `plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`.
    #[serde(default = "default_security_protocol")]
    #[schemars(regex(pattern = r"^(plaintext|ssl|sasl_plaintext|sasl_ssl)$"))]
    pub security_protocol: String,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$"))]
    pub sasl_mechanism: Option<String>,
    /// Extra librdkafka producer properties; keys Siphon sets itself (such as
    /// `enable.idempotence` or `transactional.id`) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

fn default_compression() -> String {
    "lz4".into()
}
fn default_security_protocol() -> String {
    "plaintext".into()
}

/// Record format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RecordFormat {
    /// Debezium's change event envelope (`before`, `after`, `source`, `op`, `ts_ms`).
    #[default]
    Debezium,
    /// One flat object per change (`table`, `op`, `ts`, `data`, `old_data`).
    Row,
}

/// Delivery guarantee.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Delivery {
    /// Nothing committed is lost; a restart may repeat records.
    #[default]
    AtLeastOnce,
    /// Kafka transactions; `read_committed` consumers see each change once.
    ExactlyOnce,
}

/// Settings for topics Siphon creates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicCreation {
    /// Create a table's topic when it is missing.
    #[serde(default = "default_true")]
    pub create: bool,
    /// Partitions of a created topic.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10_000))]
    pub partitions: i32,
    /// Replication factor of a created topic (and of the offsets topic);
    /// the broker's `default.replication.factor` when unset, so a cluster
    /// that enforces a replication factor or `min.insync.replicas` gets what
    /// it expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: Option<i32>,
    /// Topic configuration (e.g. `cleanup.policy: compact`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

fn default_partitions() -> i32 {
    1
}

/// A Secret with Kafka credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaAuthSecretRef {
    /// Name of the Secret, in the namespace of the PostgresCapture.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// The shape of records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputSpec {
    /// Rename columns to snake_case in records (`OrderId` → `order_id`).
    #[serde(default)]
    pub snake_case_columns: bool,
    /// Value written for a TOASTed column that an UPDATE left unchanged and that
    /// PostgreSQL did not send; set REPLICA IDENTITY FULL on the table to get
    /// the real value instead.
    #[serde(default = "default_toast_placeholder")]
    pub toast_placeholder: String,
    /// Encoding of `numeric` values: `String` (exact, the default) or `Double`.
    #[serde(default)]
    pub decimal_handling: DecimalHandling,
    /// Row format only: add a `metadata` object (lsn, txId, source table).
    #[serde(default)]
    pub include_metadata: bool,
}

fn default_toast_placeholder() -> String {
    "__debezium_unavailable_value".into()
}

impl Default for OutputSpec {
    fn default() -> Self {
        Self {
            snake_case_columns: false,
            toast_placeholder: default_toast_placeholder(),
            decimal_handling: DecimalHandling::default(),
            include_metadata: false,
        }
    }
}

/// Encoding of `numeric`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DecimalHandling {
    /// A JSON string holding the exact decimal text.
    #[default]
    String,
    /// A JSON number (may lose precision).
    Double,
}

/// Settings of the worker pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPodSpec {
    /// Container image holding `siphon-worker`; defaults to the operator's own
    /// image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Pull policy of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: Option<String>,
    /// CPU and memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the pod must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Annotations added to the pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Log filter of the worker (`info`, `debug`, or a tracing directive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

/// What happens to database objects on deletion.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Drop what Siphon created.
    #[default]
    Delete,
    /// Leave everything in place.
    Retain,
}

impl PostgresCaptureSpec {
    /// The logical options with their defaults filled in.
    pub fn logical_or_default(&self) -> LogicalSpec {
        self.logical.clone().unwrap_or_else(|| LogicalSpec {
            publish_via_partition_root: true,
            heartbeat_interval: default_heartbeat(),
            stream_in_progress: true,
            ..LogicalSpec::default()
        })
    }

    /// The snapshot options with their defaults filled in.
    pub fn snapshot_or_default(&self) -> SnapshotSpec {
        self.snapshot.clone().unwrap_or_default()
    }

    /// The output options with their defaults filled in.
    pub fn output_or_default(&self) -> OutputSpec {
        self.output.clone().unwrap_or_default()
    }
}
