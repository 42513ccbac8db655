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
        panic!("{name} is not set: run `make stack-up` and `source .stack/env` (or use `make integration` or `make e2e`)")
    })
}

/// `KAFKA_BOOTSTRAP` of the stack.
pub fn kafka_bootstrap() -> String {
    stack_var("KAFKA_BOOTSTRAP")
}

/// A connection string for the stack's PostgreSQL superuser.
pub fn pg_config(database: &str) -> tokio_postgres::Config {
    pg_config_on("PGPORT", database)
}

/// The same on the server whose port `.stack/env` exports as `port_var`
/// (`PGPORT`, `PG13_PORT`, …).
pub fn pg_config_on(port_var: &str, database: &str) -> tokio_postgres::Config {
    pg_config_at(stack_port(port_var), database)
}

/// The port a `.stack/env` variable holds.
pub fn stack_port(port_var: &str) -> u16 {
    stack_var(port_var)
        .parse()
        .unwrap_or_else(|_| panic!("{port_var} is a port number"))
}

/// The same on 127.0.0.1:`port` (a server a test started itself).
pub fn pg_config_at(port: u16, database: &str) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(stack_var("PGHOST"))
        .port(port)
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

/// Connect to the stack's PostgreSQL whose port is `port_var`.
pub async fn pg_connect_on(port_var: &str, database: &str) -> tokio_postgres::Client {
    pg_connect_at(stack_port(port_var), database).await
}

/// Connect to the PostgreSQL on 127.0.0.1:`port`.
pub async fn pg_connect_at(port: u16, database: &str) -> tokio_postgres::Client {
    let (client, conn) = pg_config_at(port, database)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the stack's PostgreSQL on port {port}: {e}"));
    tokio::spawn(conn);
    client
}

/// Create a fresh database (dropping a leftover one of the same name).
pub async fn fresh_database(name: &str) -> tokio_postgres::Client {
    fresh_database_on("PGPORT", name).await
}

/// The same on the server whose port is `port_var`.
pub async fn fresh_database_on(port_var: &str, name: &str) -> tokio_postgres::Client {
    fresh_database_at(stack_port(port_var), name).await
}

/// The same on the server on 127.0.0.1:`port`.
pub async fn fresh_database_at(port: u16, name: &str) -> tokio_postgres::Client {
    let admin = pg_connect_at(port, "postgres").await;
    let version: i32 = admin
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .expect("server version")
        .get(0);
    // WITH (FORCE) from PostgreSQL 13; the refused-version test runs on 12.
    let force = if version >= 130_000 {
        " WITH (FORCE)"
    } else {
        ""
    };
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\"{force}"))
        .await
        .expect("drop old test database");
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create test database");
    pg_connect_at(port, name).await
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

/// Runs a stack shell script when dropped, also when the test panics:
/// brings back what a test stopped or changed (a broker, a server, a
/// setting), so a failed test leaves the stack as it found it.
pub struct RunOnDrop(pub String);

impl Drop for RunOnDrop {
    fn drop(&mut self) {
        let out = stack_shell(&self.0);
        let failed = !out.status.success();
        let why = format!(
            "restoring the stack ({}) failed: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        // A second panic while unwinding would abort the test run.
        if failed && std::thread::panicking() {
            eprintln!("{why}");
        } else {
            assert!(!failed, "{why}");
        }
    }
}
