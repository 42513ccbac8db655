//! The worker riding out restarts of the stack's own PostgreSQL and Kafka.
//! A binary of its own, run one test at a time (`make integration`): a
//! restart would fail every test sharing those servers.

#[path = "../common/mod.rs"]
mod common;

mod capture_kafka_restart;
mod capture_postgres_restart;
