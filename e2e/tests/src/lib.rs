//! Shared helpers of the integration and end-to-end tests: reach the local
//! real stack that `make stack-up` started (its coordinates come from the
//! environment that `.stack/env` exports).
//!
//! A test that needs the stack and does not find it fails with the command to
//! run; nothing is skipped silently. The stack's coordinates, names, waits
//! and scripts come from [`siphon_testkit`] (re-exported here); this crate
//! adds what end-to-end tests need on top: Kubernetes, scenarios, topics.

pub use siphon_testkit::{
    RunOnDrop, eventually, fresh_database_at, kafka_bootstrap, pg_config_at, pg_connect_at,
    stack_port, stack_shell, stack_var, unique,
};

/// A connection string for the stack's PostgreSQL superuser.
pub fn pg_config(database: &str) -> tokio_postgres::Config {
    pg_config_on("PGPORT", database)
}

/// The same on the server whose port `.stack/env` exports as `port_var`
/// (`PGPORT`, `PG13_PORT`, …).
pub fn pg_config_on(port_var: &str, database: &str) -> tokio_postgres::Config {
    pg_config_at(stack_port(port_var), database)
}

/// Connect to the stack's PostgreSQL.
pub async fn pg_connect(database: &str) -> tokio_postgres::Client {
    pg_connect_on("PGPORT", database).await
}

/// Connect to the stack's PostgreSQL whose port is `port_var`.
pub async fn pg_connect_on(port_var: &str, database: &str) -> tokio_postgres::Client {
    pg_connect_at(stack_port(port_var), database).await
}

/// Create a fresh database (dropping a leftover one of the same name).
pub async fn fresh_database(name: &str) -> tokio_postgres::Client {
    fresh_database_on("PGPORT", name).await
}

/// The same on the server whose port is `port_var`.
pub async fn fresh_database_on(port_var: &str, name: &str) -> tokio_postgres::Client {
    fresh_database_at(stack_port(port_var), name).await
}

/// A kube client for the stack's API server.
pub async fn kube_client() -> kube::Client {
    stack_var("KUBECONFIG");
    kube::Client::try_default()
        .await
        .expect("kube client from KUBECONFIG")
}

pub mod metrics;
pub mod scenario;
pub mod topic;
