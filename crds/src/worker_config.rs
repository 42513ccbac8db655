//! The worker's configuration: what `siphon-worker --config worker.yaml` reads.
//!
//! The operator builds one from a `PostgresCapture` (secrets stay in Secrets and
//! reach the worker as environment variables named by `*Env` fields); a person
//! can write one by hand to run a capture without Kubernetes. Field names are
//! camelCase like the resource. Validation with field paths lives in the worker
//! (`siphon_worker::config`), before anything connects.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::capture::{
    CaptureMode, Delivery, Operation, OutputSpec, PollingSpec, RecordFormat, SnapshotSpec, SslMode,
    TableSpec, TopicCreation,
};

/// Everything one worker needs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerConfig {
    /// Name of the capture; used in the transactional id and the offsets key.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub postgres: PostgresConfig,
    #[serde(default)]
    pub mode: CaptureMode,
    #[serde(default)]
    pub tables: Vec<TableSpec>,
    #[serde(default)]
    pub logical: LogicalConfig,
    #[serde(default)]
    pub snapshot: SnapshotSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling: Option<PollingSpec>,
    /// Polling with `notify: true`: the channel to LISTEN on and the table
    /// of deleted keys, as the operator created them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifyConfig>,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub output: OutputSpec,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Where to report progress when running in Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusTarget>,
    /// Past this many bytes buffered for one in-progress transaction, spill to disk.
    #[serde(default = "default_max_txn_memory")]
    pub max_transaction_memory: u64,
    /// Folder for spilled transactions.
    #[serde(default = "default_spill_dir")]
    pub spill_dir: String,
}

fn default_max_txn_memory() -> u64 {
    64 * 1024 * 1024
}
fn default_spill_dir() -> String {
    "/tmp/siphon-spill".into()
}

/// The objects of `polling.notify`, names resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifyConfig {
    /// LISTEN/NOTIFY channel of the capture's triggers.
    pub channel: String,
    /// `schema.table` of deleted keys, written by the DELETE trigger.
    pub deletes_table: String,
}

/// Connection to PostgreSQL; each secret either inline or from an environment variable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresConfig {
    #[serde(default)]
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    #[serde(default)]
    pub database: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    #[serde(default)]
    pub ssl_mode: SslMode,
    /// Path of a PEM file with the CA for verify-ca / verify-full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_root_cert: Option<String>,
}

fn default_pg_port() -> u16 {
    5432
}

/// Logical replication settings, names already resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogicalConfig {
    #[serde(default)]
    pub slot_name: String,
    #[serde(default)]
    pub publication_name: String,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<Operation>,
    #[serde(default = "default_true")]
    pub stream_in_progress: bool,
    /// Create the slot when it does not exist (standalone use); the operator
    /// creates slots itself and sets this to false so a lost slot is an error.
    #[serde(default)]
    pub create_slot: bool,
}

impl Default for LogicalConfig {
    fn default() -> Self {
        Self {
            slot_name: String::new(),
            publication_name: String::new(),
            heartbeat_interval: default_heartbeat(),
            operations: Vec::new(),
            stream_in_progress: true,
            create_slot: false,
        }
    }
}

fn default_heartbeat() -> String {
    "10s".into()
}
fn default_true() -> bool {
    true
}

/// Kafka settings, secrets by environment variable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaConfig {
    #[serde(default)]
    pub bootstrap_servers: String,
    #[serde(default)]
    pub topic_prefix: String,
    #[serde(default)]
    pub format: RecordFormat,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default = "default_true")]
    pub tombstones: bool,
    #[serde(default = "default_compression")]
    pub compression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<TopicCreation>,
    #[serde(default = "default_security_protocol")]
    pub security_protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_username_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_ca_location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_certificate_location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_key_location: Option<String>,
    /// A folder holding the TLS material of the mounted Kafka auth Secret,
    /// each file optional: `ca.crt` (else the system's CAs), `tls.crt` and
    /// `tls.key` (a client certificate: mutual TLS). The worker fills the
    /// three locations above from what it finds there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<String>,
    /// Compacted topic holding positions in exactly-once mode.
    #[serde(default = "default_offsets_topic")]
    pub offsets_topic: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: String::new(),
            topic_prefix: String::new(),
            format: RecordFormat::default(),
            delivery: Delivery::default(),
            tombstones: true,
            compression: default_compression(),
            topics: None,
            security_protocol: default_security_protocol(),
            sasl_mechanism: None,
            sasl_username_env: None,
            sasl_password_env: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            tls_dir: None,
            offsets_topic: default_offsets_topic(),
            options: BTreeMap::new(),
        }
    }
}

fn default_compression() -> String {
    "lz4".into()
}
fn default_security_protocol() -> String {
    "plaintext".into()
}
fn default_offsets_topic() -> String {
    "siphon.offsets".into()
}

/// The worker's HTTP endpoint for `/metrics`, `/healthz`, `/readyz`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9187".into()
}

/// The PostgresCapture whose `status.progress` the worker updates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusTarget {
    pub namespace: String,
    pub name: String,
}
