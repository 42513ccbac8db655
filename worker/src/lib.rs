//! The Siphon worker: reads changes from PostgreSQL and writes them to Kafka.
//!
//! * [`replication`]: the replication connection, pgoutput decoding and
//!   transaction assembly (with bounded memory for streamed transactions);
//! * [`values`] and [`record`]: PostgreSQL values to JSON, changes to Kafka
//!   records (Debezium envelope or flat rows);
//! * [`sink`]: the Kafka producer and which position is safe to confirm;
//! * [`offsets`]: the durable position in a compacted topic;
//! * [`backfill`]: rows already in the tables, read concurrently with the
//!   stream by the watermark method;
//! * [`logical`]: the logical capture loop tying them together;
//! * [`polling`]: the second source, keyset SELECTs on an interval or on
//!   NOTIFY, with deletes from the operator's triggers;
//! * [`capture`]: what both sources share (errors, connections, the Kafka
//!   start, the restart policy);
//! * [`config`], [`metrics`], [`progress`]: configuration, telemetry and
//!   status reporting.

pub mod backfill;
pub mod capture;
pub mod catalog;
pub mod change;
pub mod config;
pub mod copy_text;
pub mod logical;
pub mod metrics;
pub mod offsets;
pub mod polling;
pub mod progress;
pub mod record;
pub mod replication;
pub mod sink;
pub mod values;
