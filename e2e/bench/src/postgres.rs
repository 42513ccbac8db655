//! The benchmark's side of PostgreSQL: one database per scenario, the captured
//! table, its publication, the slots, the workloads, and the slot watch that
//! times every reader the same way.
//!
//! Every object the benchmark creates is named `siphon_bench_*`, so a run (or
//! the cleanup trap of `e2e/bench/run.sh`) can find and drop what an aborted run
//! left behind. Slots are dropped before their database; a leftover slot would
//! hold WAL on a server other engineers share.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio_postgres::{Client, NoTls};

/// Prefix of every database and slot the benchmark creates.
pub const PREFIX: &str = "siphon_bench_";
/// The publication of each benchmark database.
pub const PUBLICATION: &str = "siphon_bench_pub";
/// The captured table.
pub const TABLE: &str = "public.orders";

/// How the benchmark reaches the stack's PostgreSQL.
#[derive(Clone, Debug)]
pub struct Pg {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

/// A WAL position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// `pg_lsn` as a number, for SQL.
const LSN_AS_INT8: &str = "pg_wal_lsn_diff({}, '0/0')::int8";

fn lsn_sql(expr: &str) -> String {
    LSN_AS_INT8.replace("{}", expr)
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Pg {
    pub async fn connect(&self, database: &str) -> Result<Client> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(database)
            .application_name("siphon-bench")
            .connect_timeout(Duration::from_secs(10));
        let (client, conn) = cfg
            .connect(NoTls)
            .await
            .with_context(|| format!("connecting to {database} on port {}", self.port))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Drop every `siphon_bench_*` slot and database (leftovers of an aborted
    /// run, or this run's own at the end). Only our slots' walsenders are ended.
    pub async fn drop_all(&self) -> Result<()> {
        let admin = self.connect("postgres").await?;
        // `_` is a LIKE wildcard: match the prefix literally.
        let like = format!("{}%", PREFIX.replace('_', "\\_"));
        admin
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name LIKE $1 AND active_pid IS NOT NULL",
                &[&like],
            )
            .await
            .context("ending the walsenders of leftover benchmark slots")?;
        for _ in 0..50 {
            let rows = admin
                .query(
                    "SELECT slot_name::text, active_pid IS NOT NULL FROM pg_replication_slots WHERE slot_name LIKE $1",
                    &[&like],
                )
                .await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let slot: String = row.get(0);
                let active: bool = row.get(1);
                if !active {
                    let _ = admin
                        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let dbs = admin
            .query(
                "SELECT datname::text FROM pg_database WHERE datname LIKE $1",
                &[&like],
            )
            .await?;
        for row in dbs {
            let db: String = row.get(0);
            admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&db)
                ))
                .await
                .with_context(|| format!("dropping database {db}"))?;
        }
        Ok(())
    }

    /// A fresh database `siphon_bench_<name>` with the table and publication.
    pub async fn scenario_database(&self, name: &str) -> Result<BenchDb> {
        let database = format!("{PREFIX}{name}");
        let admin = self.connect("postgres").await?;
        // synchronous_commit: PostgreSQL's default (on) inside the benchmark's
        // databases. The stack turns it off for test speed, which leaves a
        // commit unflushed for up to wal_writer_delay (200 ms) — and a walsender
        // sends flushed WAL only, so every commit-to-stream wait (latency, a
        // backfill's watermarks) would measure the stack's setting.
        for sql in [
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            "CREATE DATABASE {}",
            "ALTER DATABASE {} SET synchronous_commit = on",
        ] {
            admin
                .batch_execute(&sql.replace("{}", &quote_ident(&database)))
                .await
                .with_context(|| format!("creating database {database}"))?;
        }
        let client = self.connect(&database).await?;
        client
            .batch_execute(&format!(
                "CREATE TABLE {TABLE} (
                    id bigint PRIMARY KEY,
                    customer_id integer NOT NULL,
                    amount numeric(12,2) NOT NULL,
                    status text NOT NULL,
                    created_at timestamptz NOT NULL,
                    note text NOT NULL
                 );
                 ALTER TABLE {TABLE} SET (autovacuum_enabled = off);
                 CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE};
                 -- `k` rows per transaction, `n` transactions, ids from `first`.
                 CREATE PROCEDURE bench_load(first bigint, n bigint, k integer)
                 LANGUAGE plpgsql AS $$
                 BEGIN
                   FOR b IN 0 .. n - 1 LOOP
                     INSERT INTO {TABLE} SELECT {ROW} FROM generate_series(first + b * k, first + b * k + k - 1) g;
                     COMMIT;
                   END LOOP;
                 END $$;",
                ROW = ROW_EXPR
            ))
            .await
            .context("creating the benchmark table and publication")?;
        let walinspect = client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            .await
            .is_ok();
        Ok(BenchDb {
            pg: self.clone(),
            database,
            client,
            walinspect,
            next_id: 1,
        })
    }
}

/// One row of about 200 bytes (on disk, with the tuple header) from id `g`:
/// a few common types, so the value encoders do representative work.
pub const ROW_EXPR: &str = "g, (g % 100000)::int, ((g % 100000) / 100.0 + 1)::numeric(12,2), \
     'status-' || (g % 5), timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', \
     repeat(md5(g::text), 4)";

/// A scenario's database.
pub struct BenchDb {
    pub pg: Pg,
    pub database: String,
    pub client: Client,
    walinspect: bool,
    next_id: i64,
}

impl BenchDb {
    /// Create a pgoutput slot (before the workload, so it sees all of it).
    pub async fn create_slot(&self, slot: &str) -> Result<()> {
        self.client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await
            .with_context(|| format!("creating slot {slot}"))?;
        Ok(())
    }

    /// The ceiling of decoding: the server itself decodes the slot's WAL up
    /// to `end` with pgoutput (`pg_logical_slot_get_binary_changes`, in the
    /// backend: no walsender, no network, no client), consuming the slot.
    /// Returns the time it took and the messages it produced.
    pub async fn decode_in_server(&self, slot: &str, end: Lsn) -> Result<(Duration, i64)> {
        let t = Instant::now();
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT count(*) FROM pg_logical_slot_get_binary_changes($1, '{end}'::pg_lsn, NULL, \
                     'proto_version', '1', 'publication_names', '{PUBLICATION}')"
                ),
                &[&slot],
            )
            .await
            .context("decoding the slot in the server")?;
        Ok((t.elapsed(), row.get(0)))
    }

    pub async fn drop_slot(&self, slot: &str) -> Result<()> {
        for _ in 0..100 {
            let rows = self
                .client
                .query(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await?;
            let Some(row) = rows.first() else {
                return Ok(());
            };
            let pid: Option<i32> = row.get(0);
            if pid.is_none() {
                self.client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                    .with_context(|| format!("dropping slot {slot}"))?;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("slot {slot} is still in use after 10s")
    }

    /// `txns` transactions of `rows_per_txn` rows each, committed one by one
    /// inside the server (no client round trip per transaction).
    pub async fn load(&mut self, txns: u64, rows_per_txn: u32) -> Result<u64> {
        let first = self.next_id;
        let txns = i64::try_from(txns)?;
        let k = i32::try_from(rows_per_txn)?;
        if k == 0 || txns == 0 {
            return Ok(0);
        }
        if txns == 1 {
            // One statement: one transaction, no procedure around it.
            self.client
                .execute(
                    &format!(
                        "INSERT INTO {TABLE} SELECT {ROW_EXPR} FROM generate_series($1::int8, $2::int8) g"
                    ),
                    &[&first, &(first + i64::from(k) - 1)],
                )
                .await
                .context("loading one large transaction")?;
        } else {
            self.client
                .execute("CALL bench_load($1, $2, $3)", &[&first, &txns, &k])
                .await
                .context("loading the workload")?;
        }
        let rows = txns * i64::from(k);
        self.next_id += rows;
        Ok(u64::try_from(rows)?)
    }

    /// Load rows outside any slot's interest (a backfill source): one statement.
    pub async fn fill(&mut self, rows: u64) -> Result<()> {
        self.load(1, u32::try_from(rows)?).await.map(|_| ())
    }

    /// Commit one marker row and return the end LSN of its commit record: the
    /// position both readers must reach. With pg_walinspect it is exact (the
    /// commit's end, which pgoutput reports and a reader confirms); without it,
    /// the insert position just after the commit (other databases' WAL may sit
    /// in between, which only lengthens the wait for both readers alike).
    pub async fn end_marker(&mut self) -> Result<Lsn> {
        let before = self.insert_lsn().await?;
        let id = self.next_id;
        self.next_id += 1;
        self.client.batch_execute("BEGIN").await?;
        self.client
            .execute(
                &format!("INSERT INTO {TABLE} SELECT {ROW_EXPR} FROM (SELECT $1::int8 AS g) s"),
                &[&id],
            )
            .await?;
        let xid: String = self
            .client
            .query_one("SELECT pg_current_xact_id()::text", &[])
            .await?
            .get(0);
        self.client.batch_execute("COMMIT").await?;
        let after = self.insert_lsn().await?;
        // pg_walinspect reads flushed WAL only (synchronous_commit is off here).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let flushed: i64 = self
                .client
                .query_one(
                    &format!("SELECT {}", lsn_sql("pg_current_wal_flush_lsn()")),
                    &[],
                )
                .await?
                .get(0);
            if flushed as u64 >= after.0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("WAL not flushed up to {after} after 10s");
            }
            self.client.batch_execute("SELECT pg_sleep(0.02)").await?;
        }
        if self.walinspect {
            let xid32 = (xid.parse::<u64>()? & 0xFFFF_FFFF).to_string();
            let row = self
                .client
                .query_opt(
                    &format!(
                        "SELECT {} FROM pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn) \
                         WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT' AND xid::text = $3",
                        lsn_sql("end_lsn")
                    ),
                    &[&before.to_string(), &after.to_string(), &xid32],
                )
                .await
                .context("finding the marker's commit record with pg_walinspect")?;
            if let Some(row) = row {
                let end: i64 = row.get(0);
                return Ok(Lsn(end as u64));
            }
        }
        Ok(after)
    }

    async fn insert_lsn(&self) -> Result<Lsn> {
        let v: i64 = self
            .client
            .query_one(
                &format!("SELECT {}", lsn_sql("pg_current_wal_insert_lsn()")),
                &[],
            )
            .await?
            .get(0);
        Ok(Lsn(v as u64))
    }

    /// A watch on `slot`, on its own connection (so polling never queues
    /// behind the workload).
    pub async fn watch(&self, slot: &str) -> Result<SlotWatch> {
        let client = self.pg.connect(&self.database).await?;
        let stmt = client
            .prepare(&format!(
                "SELECT active_pid, {} FROM pg_replication_slots WHERE slot_name = $1",
                lsn_sql("confirmed_flush_lsn")
            ))
            .await?;
        Ok(SlotWatch {
            client,
            stmt,
            slot: slot.to_string(),
        })
    }

    /// Drop the database (its slots must be gone).
    pub async fn drop(self) -> Result<()> {
        let BenchDb {
            pg,
            database,
            client,
            ..
        } = self;
        drop(client);
        let admin = pg.connect("postgres").await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&database)
            ))
            .await
            .with_context(|| format!("dropping {database}"))?;
        Ok(())
    }
}

/// What a slot looks like right now.
#[derive(Clone, Copy, Debug)]
pub struct SlotState {
    /// A walsender streams from it.
    pub active: bool,
    /// That walsender's pid.
    pub walsender: Option<i32>,
    /// `confirmed_flush_lsn`: the reader told the server it is done up to here.
    pub confirmed: Lsn,
}

/// Polls one slot in `pg_replication_slots`.
pub struct SlotWatch {
    client: Client,
    stmt: tokio_postgres::Statement,
    slot: String,
}

/// How often the slot watch polls. The timing error of a run is at most this.
pub const POLL: Duration = Duration::from_millis(5);

impl SlotWatch {
    pub async fn state(&self) -> Result<SlotState> {
        let row = self
            .client
            .query_opt(&self.stmt, &[&self.slot])
            .await?
            .with_context(|| format!("slot {} disappeared", self.slot))?;
        let confirmed: Option<i64> = row.get(1);
        let walsender: Option<i32> = row.get(0);
        Ok(SlotState {
            active: walsender.is_some(),
            walsender,
            confirmed: Lsn(confirmed.unwrap_or(0) as u64),
        })
    }
}

/// CPU time (user + system) a process used so far, from /proc (the
/// walsenders run on this host too).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// Context switches (voluntary and not) of every thread of a process so far:
/// how often it slept and woke, which costs more than the work on a busy host.
pub fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

/// Follows the CPU time of the walsender of a slot while it streams.
#[derive(Default)]
pub struct WalsenderCpu {
    pid: Option<i32>,
    last: Option<Duration>,
}

impl WalsenderCpu {
    pub fn observe(&mut self, state: &SlotState) {
        if let Some(pid) = state.walsender {
            if self.pid != Some(pid) {
                self.pid = Some(pid);
            }
            if let Some(t) = u32::try_from(pid).ok().and_then(cpu_time) {
                self.last = Some(t);
            }
        }
    }

    /// CPU time of the walsender at the last observation.
    pub fn used(&self) -> Option<Duration> {
        self.last
    }
}
