//! Shared helpers of the integration and end-to-end tests: reach the local
//! real stack that `make stack-up` started (its coordinates come from the
//! environment that `.stack/env` exports).
//!
//! A test that needs the stack and does not find it fails with the command to
//! run; nothing is skipped silently.

use std::time::Duration;

/// An environment variable of `.stack/env`, or a failure naming the fix.
pub fn stack_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `make stack-up` and `source .stack/env` (or use `make integration`)")
    })
}

/// `KAFKA_BOOTSTRAP` of the stack.
pub fn kafka_bootstrap() -> String {
    stack_var("KAFKA_BOOTSTRAP")
}

/// A connection string for the stack's PostgreSQL superuser.
pub fn pg_config(database: &str) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(stack_var("PGHOST"))
        .port(
            stack_var("PGPORT")
                .parse()
                .expect("PGPORT is a port number"),
        )
        .user(stack_var("PGUSER"))
        .password(stack_var("PGPASSWORD"))
        .dbname(database);
    cfg
}

/// Connect to the stack's PostgreSQL.
pub async fn pg_connect(database: &str) -> tokio_postgres::Client {
    let (client, conn) = pg_config(database)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the stack's PostgreSQL");
    tokio::spawn(conn);
    client
}

/// Create a fresh database (dropping a leftover one of the same name).
pub async fn fresh_database(name: &str) -> tokio_postgres::Client {
    let admin = pg_connect("postgres").await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .expect("drop old test database");
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create test database");
    pg_connect(name).await
}

/// A kube client for the stack's API server.
pub async fn kube_client() -> kube::Client {
    stack_var("KUBECONFIG");
    kube::Client::try_default()
        .await
        .expect("kube client from KUBECONFIG")
}

/// A name unique to this test run (lowercase, DNS-safe).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{:x}",
        (nanos as u64) ^ u64::from(std::process::id())
    )
}

/// Poll `check` until it yields `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub mod scenario;
pub mod topic;

/// Run a function of the stack's shell libraries, e.g.
/// `stack_shell("source e2e/stack/postgres.sh; pg_down \"$SIPHON_STACK_DIR\" x")`.
pub fn stack_shell(script: &str) -> std::process::Output {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail; export ROOT={root}; cd {root}; {script}"
        ))
        .output()
        .expect("bash")
}
