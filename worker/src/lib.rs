//! The Siphon worker: reads changes from PostgreSQL and writes them to Kafka.

pub mod change;
pub mod replication;
pub mod config;
pub mod sink;
pub mod record;
pub mod values;
