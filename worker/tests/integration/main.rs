//! The worker's integration tests, one binary: the real `siphon-worker`
//! against the PostgreSQL and Kafka of the local stack (`make integration`).
//! Tests run two at a time and never stop a server the others use; the ones
//! that restart PostgreSQL or Kafka are in `tests/outages`, run alone.

#[path = "../common/mod.rs"]
mod common;

mod backfill;
mod capture_heartbeat;
mod capture_kill9;
mod capture_large_transaction;
mod capture_metrics;
mod capture_operations;
mod capture_slot_errors;
mod capture_toast;
mod config_errors;
mod debezium_compat;
mod offsets_topic;
mod replication_pg;
mod replication_tls;
mod type_matrix;
