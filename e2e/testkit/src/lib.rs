//! The test kit of the tests that run against the local real stack
//! (`make stack-up`): its coordinates from `.stack/env`, unique names,
//! waits, fresh databases, and the stack's shell scripts. The worker's
//! integration tests and the end-to-end tests both build on it; it knows
//! nothing of Siphon's own crates, so either can use it.
//!
//! A test that needs the stack and does not find it fails with the command
//! to run; nothing is skipped silently.

use std::time::Duration;

/// A variable of `.stack/env`, or a failure naming the fix.
pub fn stack_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run `make stack-up` and `source .stack/env` (or use `make integration` or `make e2e`)"
        )
    })
}

/// The port a `.stack/env` variable holds (`PGPORT`, `PG13_PORT`, …).
pub fn stack_port(port_var: &str) -> u16 {
    stack_var(port_var)
        .parse()
        .unwrap_or_else(|_| panic!("{port_var} is a port number"))
}

/// `KAFKA_BOOTSTRAP` of the stack.
pub fn kafka_bootstrap() -> String {
    stack_var("KAFKA_BOOTSTRAP")
}

/// A name unique to this process and call, lowercase and DNS-safe
/// (`prefix-<hex>`): namespaces, topic prefixes.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", unique_suffix())
}

/// The same as a SQL identifier (`prefix_<hex>`): databases, slots,
/// publications.
pub fn unique_ident(prefix: &str) -> String {
    format!("{prefix}_{}", unique_suffix())
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{:x}{}",
        (nanos ^ (u64::from(std::process::id()) << 40)) & 0xffff_ffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
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
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The stack's superuser on the PostgreSQL at 127.0.0.1:`port` (the main
/// server is `stack_port("PGPORT")`).
pub fn pg_config_at(port: u16, database: &str) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(stack_var("PGHOST"))
        .port(port)
        .user(stack_var("PGUSER"))
        .password(stack_var("PGPASSWORD"))
        .dbname(database)
        .application_name("siphon-test")
        .connect_timeout(Duration::from_secs(10));
    cfg
}

/// Connect with [`pg_config_at`].
pub async fn pg_connect_at(port: u16, database: &str) -> tokio_postgres::Client {
    let (client, conn) = pg_config_at(port, database)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to database {database} on port {port}: {e}"));
    tokio::spawn(conn);
    client
}

/// Create database `name` on the server at `port` (dropping a leftover of
/// the same name) and connect to it.
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

/// Run the stack's shell libraries from the repository root, e.g.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_fit_their_kind() {
        let (a, b) = (unique("e2e-x"), unique("e2e-x"));
        assert_ne!(a, b);
        assert!(
            a.starts_with("e2e-x-")
                && a.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
            "{a}"
        );
        let id = unique_ident("siphon_it_t");
        assert!(id.starts_with("siphon_it_t_") && id.len() <= 63, "{id}");
    }
}
