//! Concurrent watermark backfill against the real PostgreSQL and Kafka of the
//! local stack (`make stack-up`, then `source .stack/env`).
//!
//! Each test makes a fresh database, publication, slot and topics (names with
//! a random suffix) and drops the database objects at the end. The worker
//! runs in-process (`logical::run`), except in the `kill -9` test, which runs
//! the `siphon-worker` binary as a child process.
//!
//! What a user would check: once the backfill is done and the stream caught
//! up, reducing each topic by key (last value wins, a delete or tombstone
//! removes the key) gives exactly the table; and no `op: r` record of a key
//! comes after a newer change of that key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;
use siphon_worker::capture::{self, CaptureError, Stopped};
use siphon_worker::change::Lsn;
use siphon_worker::config::{self, Validated, WorkerConfig};
use siphon_worker::logical;
use siphon_worker::metrics::Metrics;
use siphon_worker::offsets::{self, Position};
use siphon_worker::progress::Progress;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// Heavy tests take turns: the machine is small and shared.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Stack {
    host: String,
    port: u16,
    user: String,
    password: String,
    kafka: String,
}

fn stack() -> Stack {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run `make stack-up` and `source .stack/env`")
        })
    };
    Stack {
        host: var("PGHOST"),
        port: var("PGPORT").parse().expect("PGPORT is a port number"),
        user: var("PGUSER"),
        password: var("PGPASSWORD"),
        kafka: var("KAFKA_BOOTSTRAP"),
    }
}

fn suffix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{:x}{:x}{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn connect(s: &Stack, database: &str) -> Client {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&s.host)
        .port(s.port)
        .user(&s.user)
        .password(&s.password)
        .dbname(database)
        .application_name("siphon-backfill-test");
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .expect("SQL connection to the stack's PostgreSQL");
    tokio::spawn(conn);
    client
}

/// One test's database, slot, publication and topics.
struct Fixture {
    stack: Stack,
    id: String,
    db: String,
    slot: String,
    publication: String,
    prefix: String,
    pg: Client,
}

impl Fixture {
    async fn new() -> Self {
        let stack = stack();
        let id = suffix();
        let db = format!("siphon_bf_{id}");
        let admin = connect(&stack, "postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .expect("create the test database");
        let pg = connect(&stack, &db).await;
        Self {
            id: id.clone(),
            slot: format!("siphon_bf_{id}"),
            publication: format!("siphon_bf_{id}"),
            prefix: format!("bf-{id}"),
            db,
            pg,
            stack,
        }
    }

    /// The watermark table as the operator creates it, and the publication
    /// of `tables` plus the watermark table.
    async fn publish(&self, tables: &[&str]) {
        let mut list: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        list.push("public.siphon_watermarks".into());
        self.pg
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS public.siphon_watermarks (capture text PRIMARY KEY, watermark text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
                 CREATE PUBLICATION {} FOR TABLE {}",
                self.publication,
                list.join(", ")
            ))
            .await
            .expect("publication");
    }

    fn name(&self) -> String {
        format!("test/{}", self.id)
    }

    fn topic(&self, table: &str) -> String {
        format!("{}.public.{table}", self.prefix)
    }

    fn offsets_topic(&self) -> String {
        format!("{}.offsets", self.prefix)
    }

    /// A worker configuration (YAML, as a person would write it).
    fn yaml(&self, tables: &str, chunk_size: u32, delivery: &str) -> String {
        self.yaml_with(tables, &format!("chunkSize: {chunk_size}"), delivery)
    }

    /// `snapshot` is the inside of the `snapshot:` block.
    fn yaml_with(&self, tables: &str, snapshot: &str, delivery: &str) -> String {
        let s = &self.stack;
        format!(
            r#"name: {name}
postgres: {{ host: "{host}", port: {port}, database: {db}, user: "{user}", password: "{pw}", sslMode: disable }}
tables: {tables}
logical: {{ slotName: {slot}, publicationName: {publication}, heartbeatInterval: 1s, createSlot: true }}
snapshot: {{ {snapshot} }}
kafka:
  bootstrapServers: "{kafka}"
  topicPrefix: {prefix}
  delivery: {delivery}
  offsetsTopic: {offsets}
  topics: {{ create: true, partitions: 3 }}
metrics: {{ listen: "127.0.0.1:0" }}
spillDir: {spill}
"#,
            name = self.name(),
            host = s.host,
            port = s.port,
            db = self.db,
            user = s.user,
            pw = s.password,
            slot = self.slot,
            publication = self.publication,
            kafka = s.kafka,
            prefix = self.prefix,
            offsets = self.offsets_topic(),
            spill = std::env::temp_dir()
                .join(format!("siphon-bf-{}", self.id))
                .display(),
        )
    }

    fn config(&self, tables: &str, chunk_size: u32, delivery: &str) -> Validated {
        self.config_with(tables, &format!("chunkSize: {chunk_size}"), delivery)
    }

    fn config_with(&self, tables: &str, snapshot: &str, delivery: &str) -> Validated {
        let cfg: WorkerConfig =
            serde_yaml::from_str(&self.yaml_with(tables, snapshot, delivery)).expect("worker YAML");
        config::validate(cfg, &|_| None).expect("valid worker configuration")
    }

    /// The slot's confirmed position.
    async fn confirmed(&self) -> Option<Lsn> {
        let row = self
            .pg
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .expect("pg_replication_slots")?;
        row.get::<_, Option<String>>(0)?.parse().ok()
    }

    /// Wait until the slot confirmed everything written so far (every record
    /// before it is in Kafka).
    async fn caught_up(&self, max: Duration) {
        let end: String = self
            .pg
            // The insert position: with synchronous_commit off (the stack's
            // setting) the write position may not cover the last commit yet.
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .expect("pg_current_wal_insert_lsn")
            .get(0);
        let end: Lsn = end.parse().expect("an LSN");
        let deadline = Instant::now() + max;
        loop {
            if self.confirmed().await.is_some_and(|c| c >= end) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the slot did not confirm {end} within {max:?} (at {:?})",
                self.confirmed().await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Rows of `table` as JSON objects, by canonical key.
    async fn table(&self, table: &str, keys: &[&str]) -> BTreeMap<String, Value> {
        self.rows(&format!("SELECT * FROM {table}"), keys).await
    }

    /// Rows of a query as JSON objects, by canonical key.
    async fn rows(&self, select: &str, keys: &[&str]) -> BTreeMap<String, Value> {
        let rows = self
            .pg
            .query(
                &format!("SELECT row_to_json(t)::text FROM ({select}) t"),
                &[],
            )
            .await
            .expect("select the table");
        rows.iter()
            .map(|r| {
                let row: Value = serde_json::from_str(r.get(0)).expect("row JSON");
                let key: serde_json::Map<String, Value> = keys
                    .iter()
                    .map(|k| ((*k).to_string(), row[*k].clone()))
                    .collect();
                (canonical(&Value::Object(key)), row)
            })
            .collect()
    }
}

impl Drop for Fixture {
    /// Drop the slot (a leftover one holds WAL), the database and the
    /// topics, even when the test failed.
    fn drop(&mut self) {
        let stack = Stack {
            host: self.stack.host.clone(),
            port: self.stack.port,
            user: self.stack.user.clone(),
            password: self.stack.password.clone(),
            kafka: self.stack.kafka.clone(),
        };
        let (slot, db, prefix) = (self.slot.clone(), self.db.clone(), self.prefix.clone());
        let handle = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(cleanup(stack, slot, db, prefix));
        });
        let _ = handle.join();
    }
}

async fn cleanup(stack: Stack, slot: String, db: String, prefix: String) {
    let admin = connect(&stack, "postgres").await;
    for _ in 0..40 {
        let _ = admin
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&slot],
            )
            .await;
        let gone = admin
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .is_ok();
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Err(error) = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
    {
        eprintln!("cleanup: cannot drop {db}: {error}");
    }
    let admin: Result<AdminClient<DefaultClientContext>, _> = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .create();
    if let Ok(admin) = admin {
        let topics: Vec<String> = ["items", "lines", "nokey", "keyed"]
            .iter()
            .map(|t| format!("{prefix}.public.{t}"))
            .chain([format!("{prefix}.offsets")])
            .collect();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
    }
}

/// JSON text with object keys sorted, for comparing keys.
fn canonical(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let b: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::to_value(b).unwrap_or(Value::Null)
            }
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// A worker running in-process.
struct Worker {
    task: JoinHandle<Result<Stopped, CaptureError>>,
    stop: watch::Sender<bool>,
    progress: Progress,
}

fn start(v: Validated) -> Worker {
    let progress = Progress::default();
    let (stop, rx) = watch::channel(false);
    let p = progress.clone();
    let task =
        tokio::spawn(async move { logical::run(&v, Arc::new(Metrics::default()), p, rx).await });
    Worker {
        task,
        stop,
        progress,
    }
}

/// A worker running in-process as the binary runs it: restarted from its
/// last confirmed position after a transient error.
fn start_restarting(v: Validated) -> Worker {
    let progress = Progress::default();
    let (stop, rx) = watch::channel(false);
    let p = progress.clone();
    let task = tokio::spawn(async move {
        capture::run_forever(&v, Arc::new(Metrics::default()), p, rx)
            .await
            .map(|()| Stopped::Shutdown)
    });
    Worker {
        task,
        stop,
        progress,
    }
}

impl Worker {
    /// Rows copied so far (all tables).
    fn copied(&self) -> u64 {
        self.progress
            .snapshot()
            .tables
            .iter()
            .map(|t| t.rows_copied)
            .sum()
    }

    /// Wait until every table's backfill is `Done`.
    async fn backfilled(&self, max: Duration) {
        let deadline = Instant::now() + max;
        loop {
            let p = self.progress.snapshot();
            if !p.tables.is_empty() && p.tables.iter().all(|t| t.state == "Done") {
                return;
            }
            assert!(
                !self.task.is_finished(),
                "the worker stopped during the backfill"
            );
            assert!(
                Instant::now() < deadline,
                "backfill not done within {max:?}: {:?}",
                p.tables
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let outcome = tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the worker stops within a minute")
            .expect("the worker task did not panic");
        assert!(
            matches!(outcome, Ok(Stopped::Shutdown)),
            "worker ended with {outcome:?}"
        );
    }
}

/// One record read back, in its partition's order.
#[derive(Debug, Clone)]
struct Rec {
    key: Option<Value>,
    value: Option<Value>,
}

impl Rec {
    fn op(&self) -> Option<&str> {
        self.value.as_ref()?.get("op")?.as_str()
    }
    fn after(&self) -> Option<&Value> {
        self.value.as_ref()?.get("after").filter(|v| !v.is_null())
    }
}

/// Every record of `topic` up to its end, per partition in offset order.
fn read_topic(bootstrap: &str, topic: &str) -> Vec<Vec<Rec>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bf-reader-{}", suffix()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("kafka consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("topic metadata");
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut out = Vec::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .expect("watermarks");
        let mut records = Vec::new();
        if high > low {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, Offset::Beginning)
                .expect("partition");
            consumer.assign(&tpl).expect("assign");
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let position = consumer
                    .position()
                    .ok()
                    .and_then(|p| p.find_partition(topic, partition).map(|e| e.offset()));
                if let Some(Offset::Offset(o)) = position
                    && o >= high
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "reading {topic}/{partition} timed out"
                );
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => {
                        let parse = |b: Option<&[u8]>| {
                            b.map(|b| serde_json::from_slice::<Value>(b).expect("JSON"))
                        };
                        records.push(Rec {
                            key: parse(m.key()),
                            value: parse(m.payload()),
                        });
                    }
                    Some(Err(e)) => panic!("consuming {topic}: {e}"),
                    None => {}
                }
            }
        }
        out.push(records);
    }
    out
}

/// Reduce by key: the last value wins; a delete or a tombstone removes it.
fn reduce(partitions: &[Vec<Rec>]) -> BTreeMap<String, Value> {
    let mut rows = BTreeMap::new();
    for r in partitions.iter().flatten() {
        let Some(key) = &r.key else { continue };
        let k = canonical(key);
        match (r.op(), r.after()) {
            (_, Some(after)) => {
                rows.insert(k, after.clone());
            }
            (Some("d"), None) | (None, None) => {
                rows.remove(&k);
            }
            _ => {}
        }
    }
    rows
}

/// What the records say about the backfill.
#[derive(Debug, Default)]
struct Audit {
    records: usize,
    reads: usize,
    /// Keys of the initial rows that still exist and were never read: their
    /// chunk row was dropped because they changed inside the window.
    initial_keys_without_read: usize,
    /// Keys with more than one `op: r` record (chunks read again).
    keys_read_twice: usize,
    last_markers: usize,
}

/// Checks that no `op: r` record of a key follows a newer change of it:
/// versions (`v`, from one sequence, so in commit order) of earlier `c`/`u`
/// records are never above the read's, and no read follows a delete (keys
/// are never re-inserted). Returns counts.
fn audit(
    partitions: &[Vec<Rec>],
    initial: &HashSet<String>,
    live: &BTreeMap<String, Value>,
) -> Audit {
    let mut audit = Audit::default();
    let mut newest: HashMap<String, i64> = HashMap::new();
    let mut deleted: HashSet<String> = HashSet::new();
    let mut read: HashMap<String, usize> = HashMap::new();
    for r in partitions.iter().flatten() {
        audit.records += 1;
        let Some(key) = &r.key else { continue };
        let k = canonical(key);
        match r.op() {
            Some("r") => {
                audit.reads += 1;
                let value = r.value.as_ref().expect("a read has a value");
                match value["source"]["snapshot"].as_str() {
                    Some("last") => audit.last_markers += 1,
                    Some(
                        "first" | "true" | "first_in_data_collection" | "last_in_data_collection",
                    ) => {}
                    _ => panic!("a read's snapshot marker is Debezium's: {value}"),
                }
                let v = r.after().expect("a read has after")["v"]
                    .as_i64()
                    .expect("v is a number");
                assert!(
                    !deleted.contains(&k),
                    "op r of {k} after its delete: {value}"
                );
                if let Some(&n) = newest.get(&k) {
                    assert!(n <= v, "op r of {k} (v={v}) after a newer change (v={n})");
                }
                *read.entry(k).or_default() += 1;
            }
            Some("c") | Some("u") => {
                let v = r.after().expect("after")["v"].as_i64().expect("v");
                let e = newest.entry(k).or_insert(v);
                *e = (*e).max(v);
            }
            Some("d") => {
                deleted.insert(k);
            }
            _ => {}
        }
    }
    audit.initial_keys_without_read = initial
        .iter()
        .filter(|k| live.contains_key(*k) && !read.contains_key(*k))
        .count();
    audit.keys_read_twice = read.values().filter(|n| **n > 1).count();
    audit
}

/// The shape of a test table: how to create, fill and address its rows by a
/// number `$1` (keys are never re-used after a delete).
struct Shape {
    table: &'static str,
    keys: &'static [&'static str],
    create: &'static str,
    /// Fills rows 1..=$1.
    fill: &'static str,
    update: &'static str,
    delete: &'static str,
    insert: &'static str,
}

const ITEMS: Shape = Shape {
    table: "items",
    keys: &["id"],
    create: "CREATE TABLE items (id bigint PRIMARY KEY, v bigint NOT NULL DEFAULT 0, flag boolean, payload text);
             CREATE SEQUENCE ver;",
    fill: "INSERT INTO items SELECT g, 0, g % 3 = 0, md5(g::text) FROM generate_series(1, $1::bigint) g",
    update: "UPDATE items SET v = nextval('ver'), flag = NOT coalesce(flag, false), payload = md5(random()::text) WHERE id = $1::bigint",
    delete: "DELETE FROM items WHERE id = $1::bigint",
    insert: "INSERT INTO items VALUES ($1::bigint, nextval('ver'), true, 'new')",
};

const LINES: Shape = Shape {
    table: "lines",
    keys: &["region", "seq"],
    create: "CREATE TABLE lines (region text, seq int, v bigint NOT NULL DEFAULT 0, payload text, PRIMARY KEY (region, seq));
             CREATE SEQUENCE ver;",
    fill: "INSERT INTO lines SELECT 'r' || (g % 7), g, 0, md5(g::text) FROM generate_series(1, $1::bigint) g",
    update: "UPDATE lines SET v = nextval('ver'), payload = md5(random()::text) WHERE region = 'r' || ($1::bigint % 7) AND seq = $1::bigint",
    delete: "DELETE FROM lines WHERE region = 'r' || ($1::bigint % 7) AND seq = $1::bigint",
    insert: "INSERT INTO lines VALUES ('r' || ($1::bigint % 7), $1::bigint, nextval('ver'), 'new')",
};

/// A writer changing the table while it is backfilled: updates and deletes
/// of existing rows (half of them near the backfill's frontier, where the
/// windows are), inserts of new keys, in transactions of 1 to 4 statements.
struct Writer {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

fn write_concurrently(
    pg: Client,
    shape: &'static Shape,
    rows: i64,
    frontier: Arc<AtomicU64>,
) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let (s, o) = (stop.clone(), ops.clone());
    let mut pg = pg;
    let task = tokio::spawn(async move {
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut new_key = rows + 1;
        let update = pg.prepare(shape.update).await.expect("prepare update");
        let delete = pg.prepare(shape.delete).await.expect("prepare delete");
        let insert = pg.prepare(shape.insert).await.expect("prepare insert");
        while !s.load(Ordering::Relaxed) {
            let tx = pg.transaction().await.expect("begin");
            for _ in 0..=(next() % 4) {
                let near = (frontier.load(Ordering::Relaxed) as i64).clamp(0, rows);
                let key = if next() % 2 == 0 {
                    1 + ((near + (next() % 600) as i64) % rows)
                } else {
                    1 + (next() % rows as u64) as i64
                };
                let result = match next() % 10 {
                    0..=5 => tx.execute(&update, &[&key]).await,
                    6 | 7 => tx.execute(&delete, &[&key]).await,
                    _ => {
                        new_key += 1;
                        tx.execute(&insert, &[&(new_key - 1)]).await
                    }
                };
                result.expect("writer statement");
                o.fetch_add(1, Ordering::Relaxed);
            }
            tx.commit().await.expect("commit");
        }
    });
    Writer { stop, ops, task }
}

impl Writer {
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the writer did not panic");
        self.ops.load(Ordering::Relaxed)
    }
}

/// Keep `frontier` at the number of rows copied so far, so the writer aims
/// at the chunks being read.
fn follow(progress: Progress, frontier: Arc<AtomicU64>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let copied: u64 = progress
                .snapshot()
                .tables
                .iter()
                .map(|t| t.rows_copied)
                .sum();
            frontier.store(copied, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

async fn create(fx: &Fixture, shape: &Shape, rows: i64) -> HashSet<String> {
    fx.pg
        .batch_execute(shape.create)
        .await
        .expect("create table");
    if rows > 0 {
        fx.pg
            .execute(shape.fill, &[&rows])
            .await
            .expect("fill the table");
    }
    fx.pg
        .batch_execute(&format!("ANALYZE {}", shape.table))
        .await
        .expect("analyze");
    fx.publish(&[&format!("public.{}", shape.table)]).await;
    fx.table(shape.table, shape.keys)
        .await
        .into_keys()
        .collect()
}

/// Compare the reduction of the topic with the table, and audit the order.
async fn verify(fx: &Fixture, shape: &Shape, initial: &HashSet<String>) -> Audit {
    let select = format!("SELECT * FROM {}", shape.table);
    verify_rows(fx, shape, &select, initial).await
}

/// [`verify`] against the rows of `select` (a filter, a column list).
async fn verify_rows(
    fx: &Fixture,
    shape: &Shape,
    select: &str,
    initial: &HashSet<String>,
) -> Audit {
    let partitions = {
        let (kafka, topic) = (fx.stack.kafka.clone(), fx.topic(shape.table));
        tokio::task::spawn_blocking(move || read_topic(&kafka, &topic))
            .await
            .expect("reader")
    };
    let reduced = reduce(&partitions);
    let table = fx.rows(select, shape.keys).await;
    let missing: Vec<&String> = table
        .keys()
        .filter(|k| !reduced.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<&String> = reduced
        .keys()
        .filter(|k| !table.contains_key(*k))
        .take(5)
        .collect();
    let differing: Vec<(&String, &Value, &Value)> = table
        .iter()
        .filter_map(|(k, row)| reduced.get(k).filter(|r| *r != row).map(|r| (k, row, r)))
        .take(5)
        .collect();
    if !(missing.is_empty() && extra.is_empty() && differing.is_empty()) {
        let suspects: Vec<&String> = missing
            .iter()
            .chain(&extra)
            .copied()
            .chain(differing.iter().map(|d| d.0))
            .collect();
        for k in suspects {
            let history: Vec<String> = partitions
                .iter()
                .flatten()
                .filter(|r| r.key.as_ref().is_some_and(|key| canonical(key) == *k))
                .map(|r| match &r.value {
                    Some(v) => format!(
                        "{} v={} lsn={} snapshot={}",
                        v["op"], v["after"]["v"], v["source"]["lsn"], v["source"]["snapshot"]
                    ),
                    None => "tombstone".into(),
                })
                .collect();
            eprintln!("records of {k}: {history:?}");
        }
        panic!(
            "topic reduction != table ({} vs {} rows): missing {missing:?}, extra {extra:?}, differing (table, topic) {differing:?}",
            reduced.len(),
            table.len()
        );
    }
    audit(&partitions, initial, &table)
}

async fn load_position(fx: &Fixture) -> Option<Position> {
    let mut props = BTreeMap::new();
    props.insert("bootstrap.servers".to_string(), fx.stack.kafka.clone());
    let (topic, key) = (fx.offsets_topic(), fx.name());
    tokio::task::spawn_blocking(move || {
        offsets::load(&props, &topic, &key, Duration::from_secs(15))
    })
    .await
    .expect("offsets reader")
    .expect("offsets topic readable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_reduce_to_the_table() {
    let _turn = TURN.lock().await;
    const ROWS: i64 = 1_000_000;
    let fx = Fixture::new().await;
    let initial = create(&fx, &ITEMS, ROWS).await;
    let worker = start(fx.config("[{ name: public.items }]", 5_000, "AtLeastOnce"));
    let frontier = Arc::new(AtomicU64::new(0));
    let follower = follow(worker.progress.clone(), frontier.clone());
    let writer = write_concurrently(connect(&fx.stack, &fx.db).await, &ITEMS, ROWS, frontier);

    let began = Instant::now();
    worker.backfilled(Duration::from_secs(600)).await;
    let backfill_time = began.elapsed();
    let ops = writer.stop().await;
    follower.abort();
    fx.caught_up(Duration::from_secs(120)).await;
    let progress = worker.progress.snapshot();
    worker.stop().await;

    let audit = verify(&fx, &ITEMS, &initial).await;
    eprintln!(
        "{ROWS} rows backfilled in {backfill_time:?} with {ops} concurrent writes; {audit:?}; progress {:?}",
        progress.tables
    );
    assert!(audit.reads > 0);
    assert_eq!(
        audit.keys_read_twice, 0,
        "without restarts each row is read once"
    );
    assert_eq!(audit.last_markers, 1, "one `last` marker ends the snapshot");
    assert_eq!(progress.tables[0].rows_copied as usize, audit.reads);
    assert!(progress.tables[0].rows_estimated.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_keys_exactly_once() {
    let _turn = TURN.lock().await;
    const ROWS: i64 = 30_000;
    let fx = Fixture::new().await;
    let initial = create(&fx, &LINES, ROWS).await;
    let worker = start(fx.config("[{ name: public.lines }]", 1_000, "ExactlyOnce"));
    let frontier = Arc::new(AtomicU64::new(0));
    let follower = follow(worker.progress.clone(), frontier.clone());
    let writer = write_concurrently(connect(&fx.stack, &fx.db).await, &LINES, ROWS, frontier);
    let began = Instant::now();
    worker.backfilled(Duration::from_secs(300)).await;
    let backfill_time = began.elapsed();
    let ops = writer.stop().await;
    follower.abort();
    fx.caught_up(Duration::from_secs(120)).await;
    worker.stop().await;

    let audit = verify(&fx, &LINES, &initial).await;
    eprintln!(
        "{ROWS} rows (composite key, exactly once) in {backfill_time:?} with {ops} writes; {audit:?}"
    );
    let position = load_position(&fx).await.expect("a position");
    assert_eq!(position.backfill["public.lines"].state, "Done");
    assert_eq!(position.backfill["public.lines"].rows as usize, audit.reads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_table_is_done_at_once_and_streams() {
    let _turn = TURN.lock().await;
    let fx = Fixture::new().await;
    let initial = create(&fx, &ITEMS, 0).await;
    let worker = start(fx.config("[{ name: public.items }]", 100, "AtLeastOnce"));
    worker.backfilled(Duration::from_secs(60)).await;
    fx.pg
        .batch_execute("INSERT INTO items VALUES (1, nextval('ver'), true, 'after')")
        .await
        .expect("insert");
    fx.caught_up(Duration::from_secs(60)).await;
    worker.stop().await;
    let audit = verify(&fx, &ITEMS, &initial).await;
    assert_eq!(audit.reads, 0);
    assert_eq!(audit.records, 1, "only the insert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_key_or_watermark_table_is_refused_with_the_fix() {
    let _turn = TURN.lock().await;
    let fx = Fixture::new().await;
    fx.pg
        .batch_execute("CREATE TABLE nokey (a int, b text); INSERT INTO nokey VALUES (1, 'x');")
        .await
        .expect("create");
    fx.publish(&["public.nokey"]).await;
    let worker = start(fx.config("[{ name: public.nokey }]", 100, "AtLeastOnce"));
    let outcome = tokio::time::timeout(Duration::from_secs(60), worker.task)
        .await
        .expect("refused within a minute")
        .expect("no panic");
    let error = outcome.expect_err("a table without key cannot be backfilled");
    let text = error.to_string();
    assert!(!error.is_transient(), "a definite error: {text}");
    assert!(text.contains("public.nokey"), "{text}");
    assert!(text.contains("add a primary key"), "{text}");
    assert!(
        text.contains(r#"ALTER TABLE "public"."nokey" REPLICA IDENTITY USING INDEX"#),
        "{text}"
    );
    assert!(text.contains("snapshot: false"), "{text}");

    // With the table opted out, it streams without a backfill.
    let worker = start(fx.config(
        "[{ name: public.nokey, snapshot: false }]",
        100,
        "AtLeastOnce",
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker.progress.snapshot().tables.is_empty() {
        assert!(
            !worker.task.is_finished(),
            "an opted-out table needs no key"
        );
        assert!(Instant::now() < deadline, "no progress reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(worker.progress.snapshot().tables[0].state, "Skipped");
    worker.stop().await;

    // A missing watermark table names the DDL.
    fx.pg
        .batch_execute(
            "CREATE TABLE keyed (id int PRIMARY KEY); DROP TABLE public.siphon_watermarks;",
        )
        .await
        .expect("drop the watermark table");
    let worker = start(fx.config("[{ name: public.keyed }]", 100, "AtLeastOnce"));
    let outcome = tokio::time::timeout(Duration::from_secs(60), worker.task)
        .await
        .expect("refused within a minute")
        .expect("no panic");
    let text = outcome.expect_err("no watermark table").to_string();
    assert!(
        text.contains(
            r#"CREATE TABLE IF NOT EXISTS "public"."siphon_watermarks" (capture text PRIMARY KEY"#
        ),
        "{text}"
    );
    assert!(text.contains("ALTER PUBLICATION"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_resumes_after_the_last_chunk() {
    let _turn = TURN.lock().await;
    const ROWS: i64 = 100_000;
    const CHUNK: u32 = 2_000;
    let fx = Fixture::new().await;
    let initial = create(&fx, &ITEMS, ROWS).await;
    let frontier = Arc::new(AtomicU64::new(0));
    let writer = write_concurrently(
        connect(&fx.stack, &fx.db).await,
        &ITEMS,
        ROWS,
        frontier.clone(),
    );

    let worker = start(fx.config("[{ name: public.items }]", CHUNK, "AtLeastOnce"));
    let follower = follow(worker.progress.clone(), frontier.clone());
    let deadline = Instant::now() + Duration::from_secs(300);
    while worker.copied() < 20_000 {
        assert!(Instant::now() < deadline, "no progress");
        assert!(!worker.task.is_finished(), "the worker stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;
    follower.abort();
    let stored = load_position(&fx).await.expect("a position after shutdown");
    let table = &stored.backfill["public.items"];
    assert_eq!(table.state, "Running", "{stored:?}");
    assert!(
        table.rows >= 20_000 && table.last_key.is_some(),
        "{stored:?}"
    );

    let worker = start(fx.config("[{ name: public.items }]", CHUNK, "AtLeastOnce"));
    let follower = follow(worker.progress.clone(), frontier);
    worker.backfilled(Duration::from_secs(600)).await;
    let ops = writer.stop().await;
    follower.abort();
    fx.caught_up(Duration::from_secs(120)).await;
    worker.stop().await;

    let audit = verify(&fx, &ITEMS, &initial).await;
    eprintln!(
        "{ROWS} rows, stopped after {} and resumed, {ops} writes; {audit:?}",
        table.rows
    );
    assert!(
        audit.keys_read_twice <= CHUNK as usize,
        "the second run resumes after the stored key instead of starting over: {audit:?}"
    );
}

/// The `siphon-worker` binary as a child process.
struct Process {
    child: Child,
    log: PathBuf,
}

fn spawn_worker(config: &std::path::Path, log: PathBuf) -> Process {
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_siphon-worker"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info,siphon_worker=debug")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start siphon-worker");
    Process { child, log }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Process {
    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_loses_nothing() {
    let _turn = TURN.lock().await;
    const ROWS: i64 = 100_000;
    let fx = Fixture::new().await;
    let initial = create(&fx, &ITEMS, ROWS).await;
    let dir = std::env::temp_dir().join(format!("siphon-bf-kill-{}", fx.id));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let yaml = dir.join("worker.yaml");
    std::fs::write(
        &yaml,
        fx.yaml("[{ name: public.items }]", 2_000, "AtLeastOnce"),
    )
    .expect("worker.yaml");
    // The writer aims at random keys: the child's progress is not visible here.
    let frontier = Arc::new(AtomicU64::new(0));
    let writer = write_concurrently(connect(&fx.stack, &fx.db).await, &ITEMS, ROWS, frontier);

    let mut first = spawn_worker(&yaml, dir.join("first.log"));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(first.alive(), "the worker died:\n{}", first.log_tail());
        assert!(
            Instant::now() < deadline,
            "no progress:\n{}",
            first.log_tail()
        );
        if let Some(table) = load_position(&fx)
            .await
            .and_then(|p| p.backfill.get("public.items").cloned())
            && table.rows >= 20_000
        {
            assert_eq!(table.state, "Running", "killed in the middle");
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    first.kill9();

    let mut second = spawn_worker(&yaml, dir.join("second.log"));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        assert!(
            second.alive(),
            "the restarted worker died:\n{}",
            second.log_tail()
        );
        assert!(
            Instant::now() < deadline,
            "backfill not done:\n{}",
            second.log_tail()
        );
        if load_position(&fx)
            .await
            .and_then(|p| p.backfill.get("public.items").map(|t| t.state.clone()))
            .is_some_and(|s| s == "Done")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ops = writer.stop().await;
    fx.caught_up(Duration::from_secs(120)).await;
    second.kill9();

    let audit = verify(&fx, &ITEMS, &initial).await;
    eprintln!("{ROWS} rows, kill -9 mid-backfill, {ops} writes; {audit:?}");
    assert!(
        audit.keys_read_twice <= 5 * 2_000,
        "a kill repeats at most the chunks not yet stored: {audit:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(fx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_request_reads_the_tables_again_once() {
    let _turn = TURN.lock().await;
    const ROWS: i64 = 1_000;
    let fx = Fixture::new().await;
    let initial = create(&fx, &ITEMS, ROWS).await;
    let tables = "[{ name: public.items }]";
    let worker = start(fx.config(tables, 300, "AtLeastOnce"));
    worker.backfilled(Duration::from_secs(60)).await;
    fx.caught_up(Duration::from_secs(60)).await;
    worker.stop().await;

    let requested = "chunkSize: 300, request: { id: again }";
    let worker = start(fx.config_with(tables, requested, "AtLeastOnce"));
    worker.backfilled(Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker
        .progress
        .snapshot()
        .completed_snapshot_request
        .is_none()
    {
        assert!(Instant::now() < deadline, "the request never completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        worker
            .progress
            .snapshot()
            .completed_snapshot_request
            .as_deref(),
        Some("again")
    );
    fx.caught_up(Duration::from_secs(60)).await;
    worker.stop().await;
    let stored = load_position(&fx).await.expect("a position");
    assert_eq!(stored.completed_request.as_deref(), Some("again"));

    // The same request again: nothing more to read.
    let worker = start(fx.config_with(tables, requested, "AtLeastOnce"));
    worker.backfilled(Duration::from_secs(60)).await;
    fx.caught_up(Duration::from_secs(60)).await;
    worker.stop().await;

    let audit = verify(&fx, &ITEMS, &initial).await;
    assert_eq!(audit.reads, 2 * ROWS as usize, "{audit:?}");
    assert_eq!(audit.keys_read_twice, ROWS as usize, "{audit:?}");
    assert_eq!(audit.last_markers, 2, "each backfill ends with `last`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backfill_follows_the_column_list_and_the_filter() {
    let _turn = TURN.lock().await;
    let fx = Fixture::new().await;
    fx.pg.batch_execute(ITEMS.create).await.expect("create");
    fx.pg
        .execute(ITEMS.fill, &[&1_000_i64])
        .await
        .expect("fill");
    // What the operator makes of `columns` and `filter` on PostgreSQL 15+.
    fx.publish(&["public.items (id, v) WHERE (id % 2 = 0)"])
        .await;
    let worker = start(fx.config(
        r#"[{ name: public.items, columns: [v], filter: "id % 2 = 0" }]"#,
        128,
        "AtLeastOnce",
    ));
    worker.backfilled(Duration::from_secs(60)).await;
    fx.pg
        .batch_execute(
            "INSERT INTO items VALUES (1001, nextval('ver'), true, 'odd'), (1002, nextval('ver'), true, 'even');
             UPDATE items SET v = nextval('ver') WHERE id IN (2, 3, 4);
             DELETE FROM items WHERE id IN (6, 7);",
        )
        .await
        .expect("writes");
    fx.caught_up(Duration::from_secs(60)).await;
    worker.stop().await;
    let audit = verify_rows(
        &fx,
        &ITEMS,
        "SELECT id, v FROM items WHERE id % 2 = 0",
        &HashSet::new(),
    )
    .await;
    assert_eq!(audit.reads, 500, "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_during_the_backfill_is_in_every_later_read() {
    let _turn = TURN.lock().await;
    let fx = Fixture::new().await;
    const ROWS: i64 = 20_000;
    const CHUNK: u64 = 500;
    fx.pg.batch_execute(ITEMS.create).await.expect("create");
    fx.pg.execute(ITEMS.fill, &[&ROWS]).await.expect("fill");
    fx.publish(&["public.items"]).await;
    let worker =
        start_restarting(fx.config("[{ name: public.items }]", CHUNK as u32, "AtLeastOnce"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker.copied() < 4 * CHUNK {
        assert!(Instant::now() < deadline, "the backfill did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fx.pg
        .batch_execute("ALTER TABLE items ADD COLUMN note text NOT NULL DEFAULT 'added'")
        .await
        .expect("alter table");
    // Rows emitted before the ALTER, plus the chunks read (or being read)
    // ahead of the stream when it committed, may carry the old columns.
    let before = worker.copied() + 3 * CHUNK;
    assert!(before < ROWS as u64 / 2, "the ALTER came too late to tell");
    worker.backfilled(Duration::from_secs(120)).await;
    worker.stop().await;

    let reads: Vec<Rec> = read_topic(&fx.stack.kafka, &fx.topic("items"))
        .into_iter()
        .flatten()
        .filter(|r| r.op() == Some("r"))
        .collect();
    let key = |r: &Rec| r.after().and_then(|a| a["id"].as_i64()).expect("an id");
    let mut with_note = HashSet::new();
    let mut without_note = HashSet::new();
    for r in &reads {
        match r.after().and_then(|a| a.get("note")) {
            Some(note) => {
                assert_eq!(note, "added", "{r:?}");
                with_note.insert(key(r));
            }
            None => {
                without_note.insert(key(r));
            }
        }
    }
    assert!(
        (without_note.len() as u64) <= before,
        "{} rows were read without the new column, at most {before} could have been read before the ALTER",
        without_note.len()
    );
    let all: HashSet<i64> = with_note.union(&without_note).copied().collect();
    assert_eq!(all.len() as i64, ROWS, "every row is read");
    assert!(
        with_note.len() as u64 >= ROWS as u64 - before,
        "only {} rows carry the new column",
        with_note.len()
    );
}

/// Chunks are read with `COPY … TO STDOUT`, whose text format escapes tabs,
/// newlines, control characters and backslashes: a read must carry the same
/// values as the stream sends for the same row, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_read_by_the_backfill_equal_the_same_values_streamed() {
    let _turn = TURN.lock().await;
    let fx = Fixture::new().await;
    // Each row's values; the stream gets the same ones under id + 100.
    const VALUES: &str = r#"
        (1, E'tab\there', '\x00ff5c09'::bytea, ARRAY[E'a\tb', E'c\\d', NULL, '\N', ''], '{"k": "v\t\n\\ \"q\""}'::jsonb),
        (2, E'new\nline and cr\r here', NULL, ARRAY[]::text[], 'null'::jsonb),
        (3, E'back\\slash \\N \\\\', '\x'::bytea, NULL, '[1, "\\t"]'::jsonb),
        (4, '\N', '\x5c4e'::bytea, ARRAY['\N'], '{}'::jsonb),
        (5, '', '\x0a0d'::bytea, ARRAY['{"x"}', 'a,b'], NULL),
        (6, NULL, NULL, NULL, NULL),
        (7, E'ctrl \x01\x08\x0b\x0c\x1f end', '\x08'::bytea, ARRAY[E'\x0b'], '"\u0001"'::jsonb),
        (8, 'žluťoučký kůň 🚀 «quoted» "double" ''single''', '\xe282ac'::bytea, ARRAY['🚀'], '{"ü": "€"}'::jsonb)"#;
    fx.pg
        .batch_execute(&format!(
            "CREATE TABLE awkward (id int PRIMARY KEY, t text, b bytea, a text[], j jsonb);
             INSERT INTO awkward VALUES {VALUES};"
        ))
        .await
        .expect("create and fill");
    fx.publish(&["public.awkward"]).await;
    // Three rows a chunk: values fall on chunk edges too.
    let worker = start(fx.config("[{ name: public.awkward }]", 3, "AtLeastOnce"));
    worker.backfilled(Duration::from_secs(60)).await;
    fx.pg
        .batch_execute(&format!(
            "INSERT INTO awkward SELECT id + 100, t, b, a, j FROM (VALUES {VALUES}) v(id, t, b, a, j)"
        ))
        .await
        .expect("the same values, streamed");
    fx.caught_up(Duration::from_secs(60)).await;
    worker.stop().await;

    let mut read = BTreeMap::new();
    let mut streamed = BTreeMap::new();
    for rec in read_topic(&fx.stack.kafka, &fx.topic("awkward"))
        .into_iter()
        .flatten()
    {
        let mut after = rec.after().cloned().expect("every record has an after");
        let id = after["id"].as_i64().expect("an integer id");
        after["id"] = Value::Null;
        match rec.op() {
            Some("r") => assert!(read.insert(id, after).is_none(), "{id} read twice"),
            Some("c") => assert!(streamed.insert(id - 100, after).is_none()),
            other => panic!("unexpected op {other:?}"),
        }
    }
    assert_eq!(read.len(), 8, "every row read once: {read:?}");
    assert_eq!(
        read, streamed,
        "a read equals the streamed insert of its values"
    );
    // And the values are the table's, not merely equal to each other.
    assert_eq!(read[&1]["t"], "tab\there");
    assert_eq!(read[&2]["t"], "new\nline and cr\r here");
    assert_eq!(read[&3]["t"], "back\\slash \\N \\\\");
    assert_eq!(read[&4]["t"], "\\N");
    assert_eq!(read[&5]["t"], "");
    assert_eq!(read[&6]["t"], Value::Null);
    assert_eq!(read[&7]["t"], "ctrl \u{1}\u{8}\u{b}\u{c}\u{1f} end");
}
