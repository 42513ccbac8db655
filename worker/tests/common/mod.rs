//! Shared harness of the worker's integration tests: the real
//! `siphon-worker` binary against the PostgreSQL and Kafka of the local stack
//! (`make stack-up`, then `source .stack/env`). The stack's coordinates,
//! names, waits and scripts are [`siphon_testkit`]'s; this adds the worker
//! as a process, its configuration, and topic reading.
//!
//! Each test gets a [`Fixture`]: its own database, slot, publication and
//! topic prefix (one unique name), a folder for configuration, logs and spill
//! files, and a cleanup on drop (slots, database, roles, topics) that also
//! runs when the test panics. [`Worker`] runs the binary as a child process
//! with a generated `worker.yaml`; [`TopicReader`] reads a topic back from
//! the beginning.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use siphon_testkit::{eventually, kafka_bootstrap, stack_shell, stack_var};

/// Environment variable through which the worker gets its database password.
pub const PASSWORD_ENV: &str = "SIPHON_IT_PGPASSWORD";

pub fn pg_host() -> String {
    stack_var("PGHOST")
}

pub fn pg_port() -> u16 {
    stack_var("PGPORT")
        .parse()
        .expect("PGPORT is a port number")
}

pub fn pg_user() -> String {
    stack_var("PGUSER")
}

pub fn pg_password() -> String {
    stack_var("PGPASSWORD")
}

/// A name unique to this process and call, valid as a database, slot,
/// publication and topic name.
pub fn unique(tag: &str) -> String {
    siphon_testkit::unique_ident(&format!("siphon_it_{tag}"))
}

/// A SQL connection to `database` of the stack as the superuser.
pub async fn connect(database: &str) -> tokio_postgres::Client {
    connect_as(database, &pg_user(), &pg_password()).await
}

/// A SQL connection to `database` of the stack as `user`.
pub async fn connect_as(database: &str, user: &str, password: &str) -> tokio_postgres::Client {
    let mut cfg = siphon_testkit::pg_config_at(pg_port(), database);
    cfg.user(user).password(password);
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to database {database} of the stack: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Like [`connect`], retrying until `timeout` (while PostgreSQL restarts).
pub async fn connect_retrying(database: &str, timeout: Duration) -> tokio_postgres::Client {
    let deadline = Instant::now() + timeout;
    loop {
        let mut cfg = siphon_testkit::pg_config_at(pg_port(), database);
        cfg.connect_timeout(Duration::from_secs(5));
        match cfg.connect(tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                return client;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("PostgreSQL did not come back within {timeout:?}: {e}"),
        }
    }
}

fn stack_dir() -> String {
    std::env::var("SIPHON_STACK_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.stack").to_string())
}

/// Stop the stack's PostgreSQL (fast shutdown).
pub fn pg_stop() {
    let out = stack_shell(&format!(
        "source e2e/stack/postgres.sh; pg_down {} main",
        stack_dir()
    ));
    assert!(
        out.status.success(),
        "pg_down failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Start the stack's PostgreSQL (idempotent).
pub fn pg_start() -> std::process::Output {
    stack_shell(&format!(
        "source e2e/stack/postgres.sh; pg_up {} {} main",
        stack_dir(),
        pg_port()
    ))
}

/// Stop the stack's Kafka broker.
pub fn kafka_stop() {
    let out = stack_shell(&format!(
        "source e2e/stack/kafka.sh; kafka_down {}",
        stack_dir()
    ));
    assert!(
        out.status.success(),
        "kafka_down failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Start the stack's Kafka broker (idempotent; waits until it answers).
pub fn kafka_start() -> std::process::Output {
    stack_shell(&format!(
        "source e2e/stack/kafka.sh; kafka_up {}",
        stack_dir()
    ))
}

/// Brings a stopped stack service back up when dropped, even on panic.
pub struct Restore {
    what: &'static str,
    start: fn() -> std::process::Output,
}

impl Restore {
    pub fn postgres() -> Self {
        Self {
            what: "postgres",
            start: pg_start,
        }
    }

    pub fn kafka() -> Self {
        Self {
            what: "kafka",
            start: kafka_start,
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        let out = (self.start)();
        if !out.status.success() {
            eprintln!(
                "could not bring {} back up: {}",
                self.what,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Deterministic pseudo-random numbers (SplitMix64) for seeded tests.
pub struct Rng(u64);

impl Rng {
    /// The seed comes from `SIPHON_TEST_SEED` when set, else `default`.
    pub fn seeded(default: u64) -> (Self, u64) {
        let seed = std::env::var("SIPHON_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default);
        (Self(seed), seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// One test's database, names and folder; cleans up on drop.
pub struct Fixture {
    /// The unique name: database, slot, publication, capture name and topic prefix.
    pub name: String,
    pub dir: PathBuf,
    roles: Mutex<Vec<String>>,
    databases: Mutex<Vec<String>>,
    workers: AtomicU32,
}

impl Fixture {
    /// Creates the test's database (named [`Fixture::name`]).
    pub async fn new(tag: &str) -> Self {
        let name = unique(tag);
        let dir = std::env::temp_dir().join("siphon-it").join(&name);
        std::fs::create_dir_all(&dir).expect("test folder");
        let fx = Self {
            name: name.clone(),
            dir,
            roles: Mutex::new(Vec::new()),
            databases: Mutex::new(Vec::new()),
            workers: AtomicU32::new(0),
        };
        fx.create_database(&name).await;
        fx
    }

    /// Creates another database, dropped with the fixture.
    pub async fn create_database(&self, name: &str) {
        let admin = connect("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        self.databases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_string());
    }

    /// Creates a login role with REPLICATION, dropped with the fixture.
    pub async fn create_role(&self, role: &str, password: &str, extra_sql: &str) {
        let admin = connect("postgres").await;
        admin
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{password}'; {extra_sql}"
            ))
            .await
            .unwrap_or_else(|e| panic!("create role {role}: {e}"));
        self.roles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(role.to_string());
    }

    /// A superuser connection to the test's database.
    pub async fn sql(&self) -> tokio_postgres::Client {
        connect(&self.name).await
    }

    /// The topic of `schema.table`.
    pub fn topic(&self, schema: &str, table: &str) -> String {
        format!("{}.{schema}.{table}", self.name)
    }

    /// A configuration for this fixture capturing `tables` (schema-qualified),
    /// with the publication and slot named after the fixture.
    pub fn config(&self, tables: &[&str]) -> WorkerYaml {
        WorkerYaml {
            name: self.name.clone(),
            database: self.name.clone(),
            user: pg_user(),
            password: pg_password(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
            slot: self.name.clone(),
            publication: self.name.clone(),
            create_slot: true,
            heartbeat: "1s".into(),
            operations: Vec::new(),
            delivery: "AtLeastOnce".into(),
            topic_prefix: self.name.clone(),
            offsets_topic: format!("{}.offsets", self.name),
            max_transaction_memory: None,
            spill_dir: self.dir.join("spill"),
            metrics_port: free_port(),
            snapshot: "mode: Never".into(),
        }
    }

    /// Starts the worker binary with `config`.
    pub fn spawn(&self, config: &WorkerYaml) -> Worker {
        self.spawn_with_env(config, &[])
    }

    /// Starts the worker binary with `config` and extra environment variables.
    pub fn spawn_with_env(&self, config: &WorkerYaml, env: &[(&str, &str)]) -> Worker {
        let n = self.workers.fetch_add(1, Ordering::Relaxed);
        let yaml_path = self.dir.join(format!("worker-{n}.yaml"));
        std::fs::write(&yaml_path, config.render()).expect("write worker.yaml");
        let log = self.dir.join(format!("worker-{n}.log"));
        Worker::spawn(&yaml_path, &log, config, env)
    }

    fn cleanup(&self) {
        let name = self.name.clone();
        let mut databases = self
            .databases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        databases.reverse();
        let roles = self.roles.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let result = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(cleanup(name, databases, roles));
        })
        .join();
        if result.is_err() {
            eprintln!("cleanup of {} failed", self.name);
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.cleanup();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("test files kept in {}", self.dir.display());
        }
    }
}

async fn cleanup(name: String, databases: Vec<String>, roles: Vec<String>) {
    let admin = connect_retrying("postgres", Duration::from_secs(60)).await;
    for db in &databases {
        // Slots first: a database with a slot cannot be dropped.
        for _ in 0..50 {
            let busy = admin
                .query(
                    "SELECT slot_name::text, active_pid FROM pg_replication_slots WHERE database = $1",
                    &[db],
                )
                .await
                .unwrap_or_default();
            if busy.is_empty() {
                break;
            }
            for row in busy {
                let slot: String = row.get(0);
                let pid: Option<i32> = row.get(1);
                if let Some(pid) = pid {
                    let _ = admin
                        .execute("SELECT pg_terminate_backend($1)", &[&pid])
                        .await;
                }
                let _ = admin
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Err(e) = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await
        {
            eprintln!("cleanup: drop database {db}: {e}");
        }
    }
    for role in &roles {
        if let Err(e) = admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
            .await
        {
            eprintln!("cleanup: drop role {role}: {e}");
        }
    }
    delete_topics(&format!("{name}.")).await;
}

/// Deletes the topics whose names start with `prefix`.
pub async fn delete_topics(prefix: &str) {
    let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let names: Vec<String> = match admin.inner().fetch_metadata(None, Duration::from_secs(10)) {
        Ok(md) => md
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| n.starts_with(prefix))
            .collect(),
        Err(_) => return,
    };
    if names.is_empty() {
        return;
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let _ = admin.delete_topics(&refs, &AdminOptions::new()).await;
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The worker configuration a test writes, rendered as `worker.yaml`.
#[derive(Clone, Debug)]
pub struct WorkerYaml {
    pub name: String,
    pub database: String,
    pub user: String,
    /// Given to the worker in [`PASSWORD_ENV`], never written to the file.
    pub password: String,
    pub tables: Vec<String>,
    pub slot: String,
    pub publication: String,
    pub create_slot: bool,
    pub heartbeat: String,
    pub operations: Vec<String>,
    pub delivery: String,
    pub topic_prefix: String,
    pub offsets_topic: String,
    pub max_transaction_memory: Option<u64>,
    pub spill_dir: PathBuf,
    pub metrics_port: u16,
    /// The inside of the `snapshot:` block.
    pub snapshot: String,
}

impl WorkerYaml {
    pub fn render(&self) -> String {
        let mut y = String::new();
        y.push_str(&format!("name: {}\n", self.name));
        y.push_str("postgres:\n");
        y.push_str(&format!("  host: \"{}\"\n", pg_host()));
        y.push_str(&format!("  port: {}\n", pg_port()));
        y.push_str(&format!("  database: {}\n", self.database));
        y.push_str(&format!("  user: {}\n", self.user));
        y.push_str(&format!("  passwordEnv: {PASSWORD_ENV}\n"));
        y.push_str("  sslMode: disable\n");
        y.push_str("tables:\n");
        for t in &self.tables {
            y.push_str(&format!("  - name: {t}\n"));
        }
        y.push_str("logical:\n");
        y.push_str(&format!("  slotName: {}\n", self.slot));
        y.push_str(&format!("  publicationName: {}\n", self.publication));
        y.push_str(&format!("  createSlot: {}\n", self.create_slot));
        y.push_str(&format!("  heartbeatInterval: {}\n", self.heartbeat));
        if !self.operations.is_empty() {
            y.push_str(&format!("  operations: [{}]\n", self.operations.join(", ")));
        }
        y.push_str(&format!("snapshot: {{ {} }}\n", self.snapshot));
        y.push_str("kafka:\n");
        y.push_str(&format!("  bootstrapServers: \"{}\"\n", kafka_bootstrap()));
        y.push_str(&format!("  topicPrefix: {}\n", self.topic_prefix));
        y.push_str(&format!("  delivery: {}\n", self.delivery));
        y.push_str(&format!("  offsetsTopic: {}\n", self.offsets_topic));
        y.push_str("metrics:\n");
        y.push_str(&format!("  listen: \"127.0.0.1:{}\"\n", self.metrics_port));
        if let Some(m) = self.max_transaction_memory {
            y.push_str(&format!("maxTransactionMemory: {m}\n"));
        }
        y.push_str(&format!("spillDir: \"{}\"\n", self.spill_dir.display()));
        y
    }
}

/// The worker binary running as a child process; SIGKILLed on drop.
pub struct Worker {
    child: Child,
    pub pid: u32,
    pub log: PathBuf,
    pub metrics_port: u16,
    exited: Option<ExitStatus>,
}

impl Worker {
    fn spawn(config: &Path, log: &Path, yaml: &WorkerYaml, env: &[(&str, &str)]) -> Self {
        let out = std::fs::File::create(log).expect("worker log");
        let err = out.try_clone().expect("worker log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_siphon-worker"));
        cmd.arg("--config")
            .arg(config)
            .env(PASSWORD_ENV, &yaml.password)
            .env_remove("SIPHON_METRICS_ADDR")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start siphon-worker");
        Self {
            pid: child.id(),
            child,
            log: log.to_path_buf(),
            metrics_port: yaml.metrics_port,
            exited: None,
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// SIGTERM (graceful shutdown); does not wait.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
    }

    /// The exit status, if the process ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits up to `timeout` for the process to end.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the worker wrote (stdout and stderr).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident set size (`VmHWM`) in KiB, while the process lives.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// `GET path` on the metrics port: status code and body.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics_port, path).await
    }

    /// `path` as Prometheus asks for it (OpenMetrics preferred).
    pub async fn get_openmetrics(&self, path: &str) -> Option<(u16, String)> {
        http_get_accepting(
            self.metrics_port,
            path,
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        )
        .await
    }

    /// Waits until `/readyz` answers 200; panics if the worker exits first.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                panic!(
                    "the worker exited ({status}) before it was ready:\n{}",
                    tail(&self.output(), 40)
                );
            }
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the worker was not ready within {timeout:?}:\n{}",
                tail(&self.output(), 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of an unlabelled metric on `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        self.sample(name).await
    }

    /// The value of one series on `/metrics`, written as the text format
    /// writes it: `name` or `name{label="value"}`.
    pub async fn sample(&self, series: &str) -> Option<f64> {
        let (code, body) = self.get("/metrics").await?;
        if code != 200 {
            return None;
        }
        body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == series).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// Waits up to `timeout` until a series reaches `at_least`; false when
    /// the time ran out or the worker exited first.
    pub async fn wait_sample(&mut self, series: &str, at_least: f64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.sample(series).await.is_some_and(|v| v >= at_least) {
                return true;
            }
            if self.try_exit().is_some() || Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- worker {} log ({}) ---\n{}",
                self.pid,
                self.log.display(),
                tail(&self.output(), 60)
            );
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A plain HTTP/1.1 GET on 127.0.0.1:`port`.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_accepting(port, path, None).await
}

/// A GET with an `Accept` header (as Prometheus sends one).
pub async fn http_get_accepting(
    port: u16,
    path: &str,
    accept: Option<&str>,
) -> Option<(u16, String)> {
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{accept}Connection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Some((code, body))
}

/// One record read back, key and value parsed as JSON (`None` for null).
#[derive(Clone, Debug, PartialEq)]
pub struct Rec {
    pub key: Option<Value>,
    pub value: Option<Value>,
    pub partition: i32,
    pub offset: i64,
    /// The value's bytes as written (field order is not kept by `value`).
    pub raw_value: Option<Vec<u8>>,
    /// The record's headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Rec {
    pub fn op(&self) -> Option<&str> {
        self.value.as_ref()?.get("op")?.as_str()
    }

    pub fn before(&self) -> Option<&Value> {
        self.value.as_ref()?.get("before").filter(|v| !v.is_null())
    }

    pub fn after(&self) -> Option<&Value> {
        self.value.as_ref()?.get("after").filter(|v| !v.is_null())
    }

    /// An integer column of `after` (or of `before` when there is no `after`).
    pub fn id(&self, column: &str) -> Option<i64> {
        self.after()
            .or_else(|| self.before())
            .and_then(|row| row.get(column))
            .and_then(Value::as_i64)
    }
}

/// Reads one topic from the beginning, accumulating records.
pub struct TopicReader {
    topic: String,
    consumer: BaseConsumer,
    assigned: bool,
    pub records: Vec<Rec>,
}

impl TopicReader {
    /// `isolation` is `read_committed` or `read_uncommitted`.
    pub fn new(topic: &str, isolation: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .set("group.id", unique("reader"))
            .set("isolation.level", isolation)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create()
            .expect("kafka consumer");
        Self {
            topic: topic.to_string(),
            consumer,
            assigned: false,
            records: Vec::new(),
        }
    }

    fn assign(&mut self) -> bool {
        if self.assigned {
            return true;
        }
        let Ok(md) = self
            .consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(5))
        else {
            return false;
        };
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return false;
        }
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(&self.topic, p, Offset::Beginning)
                .expect("partition");
        }
        self.consumer.assign(&tpl).expect("assign");
        self.assigned = true;
        true
    }

    /// Polls for up to `max`; returns whether a record arrived.
    fn poll_once(&mut self, max: Duration) -> bool {
        if !self.assign() {
            std::thread::sleep(max.min(Duration::from_millis(250)));
            return false;
        }
        match self.consumer.poll(max) {
            Some(Ok(m)) => {
                let parse = |b: Option<&[u8]>| {
                    b.map(|b| serde_json::from_slice(b).expect("a record is JSON"))
                };
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                self.records.push(Rec {
                    key: parse(m.key()),
                    value: parse(m.payload()),
                    partition: m.partition(),
                    offset: m.offset(),
                    raw_value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
                true
            }
            Some(Err(e)) => {
                // Transient while the topic is being created or a broker restarts.
                eprintln!("consuming {}: {e}", self.topic);
                false
            }
            None => false,
        }
    }

    /// Reads until `done(records)` holds, then until `quiet` passes without a
    /// new record (so extra records are seen too). Panics after `timeout`.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        quiet: Duration,
        what: &str,
        done: impl FnMut(&[Rec]) -> bool,
    ) -> &[Rec] {
        self.read_until_or(timeout, quiet, what, done, || None)
    }

    /// [`TopicReader::read_until`], giving up early (with a panic naming the
    /// reason) as soon as `abort` returns a reason, e.g. the worker exited.
    pub fn read_until_or(
        &mut self,
        timeout: Duration,
        quiet: Duration,
        what: &str,
        mut done: impl FnMut(&[Rec]) -> bool,
        mut abort: impl FnMut() -> Option<String>,
    ) -> &[Rec] {
        let deadline = Instant::now() + timeout;
        tokio::task::block_in_place(|| {
            while !done(&self.records) {
                if let Some(reason) = abort() {
                    panic!(
                        "gave up waiting for {what} in {} ({} records read): {reason}",
                        self.topic,
                        self.records.len()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out after {timeout:?} waiting for {what} in {}: {} records read",
                    self.topic,
                    self.records.len()
                );
                self.poll_once(Duration::from_millis(200));
            }
            let mut last = Instant::now();
            while last.elapsed() < quiet {
                if self.poll_once(Duration::from_millis(100)) {
                    last = Instant::now();
                }
            }
        });
        &self.records
    }
}

/// Counts of each integer in `ids`.
pub fn counts(ids: impl IntoIterator<Item = i64>) -> BTreeMap<i64, u32> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

/// Inserts numbered rows (`INSERT INTO <table> (id)`), one transaction each,
/// until stopped; reconnects when PostgreSQL goes away. Knows which rows are
/// committed (the INSERT returned) and which are uncertain (it failed).
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    committed: std::sync::Arc<Mutex<Vec<i64>>>,
    task: tokio::task::JoinHandle<Vec<i64>>,
}

impl Writer {
    pub fn start(database: &str, table: &str, pause: Duration) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let committed = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (database, table) = (database.to_string(), table.to_string());
        let task = {
            let stop = stop.clone();
            let committed = committed.clone();
            tokio::spawn(async move {
                let mut uncertain = Vec::new();
                let mut client: Option<tokio_postgres::Client> = None;
                let mut next = 1i64;
                while !stop.load(Ordering::Relaxed) {
                    let c = match &client {
                        Some(c) if !c.is_closed() => c,
                        _ => {
                            client =
                                Some(connect_retrying(&database, Duration::from_secs(300)).await);
                            continue;
                        }
                    };
                    let id = next;
                    next += 1;
                    match c
                        .execute(&format!("INSERT INTO {table} (id) VALUES ($1)"), &[&id])
                        .await
                    {
                        Ok(_) => committed.lock().unwrap_or_else(|p| p.into_inner()).push(id),
                        Err(_) => {
                            uncertain.push(id);
                            client = None;
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
                uncertain
            })
        };
        Self {
            stop,
            committed,
            task,
        }
    }

    /// Rows committed so far.
    pub fn committed(&self) -> usize {
        self.committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Stops; returns (committed ids, uncertain ids).
    pub async fn stop(self) -> (Vec<i64>, Vec<i64>) {
        self.stop.store(true, Ordering::Relaxed);
        let uncertain = self.task.await.expect("writer task");
        let committed = self
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (committed, uncertain)
    }
}

/// Reads `topic` until every id of `committed` is there; returns the ids of
/// the `id` column of every record read, duplicates included.
pub fn read_ids(
    topic: &str,
    isolation: &str,
    committed: &[i64],
    timeout: Duration,
    worker: &mut Worker,
) -> Vec<i64> {
    let want: std::collections::HashSet<i64> = committed.iter().copied().collect();
    let mut seen = std::collections::HashSet::new();
    let mut looked = 0;
    let mut reader = TopicReader::new(topic, isolation);
    let records = reader.read_until_or(
        timeout,
        Duration::from_secs(3),
        "every committed row",
        |r| {
            seen.extend(
                r[looked..]
                    .iter()
                    .filter_map(|r| r.id("id"))
                    .filter(|id| want.contains(id)),
            );
            looked = r.len();
            seen.len() == want.len()
        },
        || {
            worker
                .try_exit()
                .map(|status| format!("the worker exited ({status})"))
        },
    );
    records.iter().filter_map(|r| r.id("id")).collect()
}
