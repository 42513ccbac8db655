//! The `polling` scenario: a capture in `mode: Polling` (worker/src/polling,
//! docs/polling.md), measured three ways, each in a database of its own:
//!
//! - **throughput**: the benchmark table with a database-set cursor
//!   (`updated_at timestamptz NOT NULL DEFAULT clock_timestamp()`) and the
//!   index polling wants, `(updated_at, id)`, 1M rows (× BENCH_SCALE), from the
//!   worker's start until the topic's high watermark holds every row; against
//!   `COPY (SELECT <the same columns> ORDER BY updated_at, id) TO STDOUT` of the
//!   same rows measured just before each run; at `batchSize: 10000` and at the
//!   default 1000;
//! - **NOTIFY wake-up**: with `notify: true` and `interval: 1h`, only a
//!   notification wakes the worker. The benchmark makes the notify objects
//!   itself, as the operator makes them (operator/src/polling.rs); single-row
//!   transactions at a steady rate; the row's cursor (set in the inserting
//!   statement) to a `read_committed` consumer, p50/p99;
//! - **idle load**: the transactions the worker commits per interval on an
//!   idle table (one table, no notify, no lateness), from
//!   `pg_stat_database`, read over a connection to another database so the
//!   measuring queries are not counted.
//!
//! All three run at least once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use siphon_crds::capture::{Delivery, PollingSemantics, PollingSpec, SnapshotMode};
use siphon_crds::worker_config::NotifyConfig;

use crate::kafka::{Arrival, now_us};
use crate::postgres::{BenchDb, ROW_EXPR, TABLE, context_switches, cpu_time};
use crate::reference;
use crate::scenarios::{Bench, goals, log, mib, paced_writer, per_s, percentile};
use crate::summary::{Figure, Goal};
use crate::worker::{Profiler, WorkerRun};

/// The cursor column each polled table gets.
const CURSOR: &str = "updated_at";
/// The polled table's columns in table order: what the worker reads (every
/// column) and what the reference copies.
const COLUMNS: &str = "id, customer_id, amount, status, created_at, note, updated_at";
/// How often the benchmark looks at Kafka's high watermark and at
/// `pg_stat_database`; the timing error of a figure is at most this.
const TICK: Duration = Duration::from_millis(20);
/// Batch sizes of the throughput runs: the one the figure's goal is for,
/// then the default.
const BATCHES: [u32; 2] = [10_000, 1_000];
/// The names the operator gives the notify objects of a capture, for a
/// capture `poll` in a namespace `bench` (`siphon_<namespace>_<name>`).
const NOTIFY_BASE: &str = "siphon_bench_poll";
/// Single-row transactions per second while the NOTIFY latency is measured.
const NOTIFY_RATE: f64 = 200.0;
/// Arrivals of the first seconds of the paced writer are dropped.
const WARMUP_US: i64 = 2_000_000;
/// The id of the row that proves the worker listens (the paced writer's ids
/// start at 1).
const PROBE_ID: i64 = 1_000_000_000;
/// `polling.interval` and length of the idle-load window.
const IDLE_INTERVAL: Duration = Duration::from_millis(500);
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Rows the idle table holds (read before the window opens).
const IDLE_ROWS: u64 = 1000;

/// The notify objects of one capture, as operator/src/polling.rs makes them:
/// the deletes table, the SECURITY DEFINER trigger function (row level: the
/// deleted key; statement level: a TRUNCATE marker, then one NOTIFY that never
/// raises) and the two triggers on the table, whose arguments are the table's
/// name and then its key columns. `@` is the base name, `%` the table.
const NOTIFY_DDL: &str = "
CREATE TABLE public.@_deletes (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  table_name text NOT NULL, key jsonb,
  deleted_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp());
CREATE FUNCTION public.@_notify() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $siphon$
BEGIN
  IF TG_LEVEL = 'ROW' THEN
    IF TG_OP = 'DELETE' THEN
      INSERT INTO public.@_deletes (table_name, key)
      SELECT TG_ARGV[0],
             COALESCE(pg_catalog.jsonb_object_agg(a.k, pg_catalog.to_jsonb(OLD) -> a.k), '{}'::pg_catalog.jsonb)
      FROM pg_catalog.unnest(TG_ARGV) WITH ORDINALITY AS a(k, n)
      WHERE a.n > 1;
    END IF;
    RETURN NULL;
  END IF;
  IF TG_OP = 'TRUNCATE' THEN
    INSERT INTO public.@_deletes (table_name, key) VALUES (TG_ARGV[0], NULL);
  END IF;
  BEGIN
    IF pg_catalog.pg_notification_queue_usage() < 0.5 THEN
      PERFORM pg_catalog.pg_notify('@', TG_ARGV[0]);
    END IF;
  EXCEPTION WHEN OTHERS THEN
    NULL;
  END;
  RETURN NULL;
END
$siphon$;
CREATE TRIGGER @_deletes AFTER DELETE ON % FOR EACH ROW
  EXECUTE FUNCTION public.@_notify('%', 'id');
CREATE TRIGGER @_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON % FOR EACH STATEMENT
  EXECUTE FUNCTION public.@_notify('%');
";

/// Longer than PostgreSQL's forced statistics flush of an idle session
/// (10 s): after it, only new transactions move pg_stat_database.
const STATS_SETTLE: Duration = Duration::from_secs(11);

/// How one throughput run went.
struct Throughput {
    batch: u32,
    /// From the worker's spawn to the last row in Kafka.
    elapsed: Duration,
    /// From the worker's spawn to the first row in Kafka (its start-up:
    /// Kafka metadata, topics, the stored position, the table plan).
    first_row: Duration,
    /// Rows in Kafka when the first were seen.
    first_rows: i64,
    copy: Duration,
    cpu: Option<Duration>,
    hwm_kib: u64,
    /// The high watermark once the worker stopped.
    written: i64,
}

/// Transactions of the bench database over the idle window.
struct IdleLoad {
    xacts: i64,
    span: Duration,
    /// Between two statistics flushes (exact), or the window's ends.
    between_flushes: bool,
    /// Other sessions seen in the database during the window.
    others: BTreeSet<String>,
}

/// `polling` of a run, the interval given.
fn spec(interval: &str, batch_size: u32, notify: bool) -> PollingSpec {
    PollingSpec {
        cursor_column: CURSOR.into(),
        interval: interval.into(),
        batch_size,
        lateness: None,
        semantics: PollingSemantics::Append,
        initial_cursor: None,
        notify,
        objects_schema: "public".into(),
    }
}

/// Add the cursor column (before the rows, so each row gets its own
/// `clock_timestamp()`).
async fn add_cursor(db: &BenchDb) -> Result<()> {
    db.client
        .batch_execute(&format!(
            "ALTER TABLE {TABLE} ADD COLUMN {CURSOR} timestamptz NOT NULL DEFAULT clock_timestamp()"
        ))
        .await
        .context("adding the cursor column")
}

/// The index each poll's range scan uses, and fresh statistics.
async fn index_cursor(db: &BenchDb) -> Result<()> {
    db.client
        .batch_execute(&format!("CREATE INDEX ON {TABLE} ({CURSOR}, id)"))
        .await
        .context("indexing the cursor")?;
    // Its own statement: VACUUM cannot run in a transaction block.
    db.client
        .batch_execute(&format!("VACUUM ANALYZE {TABLE}"))
        .await
        .context("vacuuming the table")
}

/// Warnings and errors in a worker's log: their count and the first one.
fn log_problems(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    let first = bad.first()?;
    Some(format!(
        "{} warning/error lines in {}, the first: {}",
        bad.len(),
        path.display(),
        first.trim()
    ))
}

/// Sessions of `database` that are not the worker's: none should be there
/// while the idle load is counted.
const OTHERS_SQL: &str = "SELECT coalesce(nullif(application_name, ''), backend_type) || ' (pid ' || pid || ')' \
     FROM pg_stat_activity WHERE datname = $1 AND application_name IS DISTINCT FROM 'siphon-worker'";

impl Bench {
    /// Throughput, NOTIFY wake-up latency and idle load of a polling capture;
    /// each part runs even when another failed.
    pub async fn polling(&mut self) -> Result<()> {
        let mut failed = Vec::new();
        if let Err(e) = self.polling_throughput().await {
            failed.push(format!("throughput: {e:#}"));
        }
        if let Err(e) = self.polling_notify().await {
            failed.push(format!("notify latency: {e:#}"));
        }
        if let Err(e) = self.polling_idle().await {
            failed.push(format!("idle load: {e:#}"));
        }
        if !failed.is_empty() {
            bail!("{}", failed.join("; "));
        }
        Ok(())
    }

    fn polling_run<'a>(
        &self,
        database: &'a str,
        what: &str,
        polling: PollingSpec,
        notify: Option<NotifyConfig>,
    ) -> (WorkerRun<'a>, String) {
        let topic_prefix = self.topic_prefix(what);
        let topic = format!("{topic_prefix}.{TABLE}");
        let run = WorkerRun {
            name: format!("{}-{what}", self.run_id),
            database,
            slot: "",
            topic_prefix,
            delivery: Delivery::AtLeastOnce,
            snapshot: SnapshotMode::Never,
            stream_only: None,
            polling: Some(polling),
            notify,
        };
        (run, topic)
    }

    /// Note what a worker's log says went wrong, if anything.
    fn note_log(&mut self, what: &str, worker_log: &std::path::Path) {
        if let Some(p) = log_problems(worker_log) {
            log(format!("{what}: {p}"));
            self.notes.push(format!("{what}: {p}"));
        }
    }

    async fn polling_throughput(&mut self) -> Result<()> {
        let rows = self.scaled(1_000_000, 1000);
        let mut db = self.pg.scenario_database("poll").await?;
        let t = Instant::now();
        let prepared = async {
            add_cursor(&db).await?;
            db.fill(rows).await?;
            index_cursor(&db).await
        }
        .await;
        let mut runs = Vec::new();
        let result = async {
            prepared?;
            let size: i64 = db
                .client
                .query_one(&format!("SELECT pg_table_size('{TABLE}')"), &[])
                .await?
                .get(0);
            log(format!(
                "polling: {rows} rows ({:.0} MiB of table) loaded and indexed in {:.1}s",
                size as f64 / 1048576.0,
                t.elapsed().as_secs_f64()
            ));
            for batch in BATCHES {
                runs.push(self.poll_once(&db, rows, batch).await?);
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        db.drop().await?;
        result?;
        for r in &runs {
            let siphon = per_s(
                rows - r.first_rows as u64,
                r.elapsed.saturating_sub(r.first_row),
            );
            let reference = per_s(rows, r.copy);
            let goal = if r.batch == BATCHES[0] {
                Goal::RatioAtLeast(goals::POLLING_COPY_RATIO)
            } else {
                Goal::None
            };
            self.figures.push(Figure::against(
                format!("polling.throughput.batch{}", r.batch),
                "rows/s",
                siphon,
                "COPY ORDER BY cursor",
                reference,
                vec![goal],
            ));
            self.figures.push(Figure::against(
                format!("polling.throughput_from_spawn.batch{}", r.batch),
                "rows/s",
                per_s(rows, r.elapsed),
                "COPY ORDER BY cursor",
                reference,
                vec![Goal::None],
            ));
            self.figures.push(Figure::alone(
                format!("polling.first_row_after.batch{}", r.batch),
                "s",
                r.first_row.as_secs_f64(),
                vec![Goal::None],
            ));
            self.figures.push(Figure::alone(
                format!("polling.rss_peak.batch{}", r.batch),
                "MiB",
                mib(r.hwm_kib),
                vec![Goal::AtMost(goals::RSS_STEADY_MIB)],
            ));
            if let Some(cpu) = r.cpu {
                self.figures.push(Figure::alone(
                    format!("polling.worker_cpu.batch{}", r.batch),
                    "s",
                    cpu.as_secs_f64(),
                    vec![Goal::None],
                ));
            }
            if r.written != rows as i64 {
                self.notes.push(format!(
                    "polling.throughput.batch{}: {} offsets in the topic for {rows} rows",
                    r.batch, r.written
                ));
            }
        }
        self.notes.push(format!(
            "polling.throughput.*: {rows} rows of ~200 bytes with a clock_timestamp() cursor and an ({CURSOR}, id) index, polled at least once, interval 1s, no lateness, Append; throughput = rows from the first seen in the topic until its high watermark holds every row, over that time (throughput_from_spawn and first_row_after count the worker's start-up too: Kafka metadata, topics, the stored position, the plan); reference = psql \\copy (SELECT {COLUMNS} FROM {TABLE} ORDER BY {CURSOR}, id) TO /dev/null (COPY … TO STDOUT) of the same rows just before each run, less psql's own start (SELECT 1), the fastest of three; the goal is for batchSize {}; rss_peak = VmHWM, worker_cpu = user+system seconds of the worker process",
            BATCHES[0]
        ));
        Ok(())
    }

    /// One worker polling the whole table at `batch` rows per read, after
    /// its COPY reference.
    async fn poll_once(&mut self, db: &BenchDb, rows: u64, batch: u32) -> Result<Throughput> {
        // The fastest of three: one short COPY varies by a third run to run.
        let mut copy = Duration::MAX;
        for _ in 0..3 {
            copy = copy.min(
                reference::copy_query_out(
                    &self.tools,
                    &self.pg,
                    &db.database,
                    &format!("SELECT {COLUMNS} FROM {TABLE} ORDER BY {CURSOR}, id"),
                )
                .await
                .context("COPY reference")?,
            );
        }
        let what = format!("poll-b{batch}");
        let (run, topic) = self.polling_run(&db.database, &what, spec("1s", batch, false), None);
        let watermarks = self.kafka.watermarks()?;
        let mut worker = self.worker.spawn(&run, &self.pids)?;
        let spawned = Instant::now();
        let profile = Profiler::attach(&self.worker.dir, &what, worker.pid(), &self.pids)?;
        let result = async {
            let mut first_row = None;
            let deadline = Duration::from_secs(600);
            loop {
                worker.check_alive()?;
                let high = watermarks.high(&topic);
                if first_row.is_none() && high > 0 {
                    first_row = Some((spawned.elapsed(), high));
                }
                if high >= rows as i64 {
                    return Ok((
                        spawned.elapsed(),
                        first_row.unwrap_or((spawned.elapsed(), 0)),
                    ));
                }
                if spawned.elapsed() > deadline {
                    bail!(
                        "{high} of {rows} rows in {topic} after {deadline:?}; see {}",
                        worker.log.display()
                    );
                }
                tokio::time::sleep(TICK).await;
            }
        }
        .await;
        let cpu = worker.pid().and_then(cpu_time);
        let switches = worker.pid().and_then(context_switches);
        let hwm_kib = worker.memory().map_or(0, |m| m.hwm_kib);
        if let Some(p) = profile {
            p.finish().await;
        }
        let worker_log = worker.log.clone();
        worker.stop(Duration::from_secs(30)).await?;
        self.note_log(&what, &worker_log);
        let (elapsed, (first_row, first_rows)) = result?;
        let written = watermarks.high(&topic);
        let steady = per_s(rows - first_rows as u64, elapsed.saturating_sub(first_row));
        log(format!(
            "{what}: siphon {steady:.0} rows/s from the first row to the last ({:.0} rows/s from spawn, {:.2}s; first row after {:.2}s; worker CPU {}, {} context switches, VmHWM {:.1} MiB), COPY {:.0} rows/s ({:.2}s, fastest of 3), ratio {:.2}",
            per_s(rows, elapsed),
            elapsed.as_secs_f64(),
            first_row.as_secs_f64(),
            cpu.map_or("?".into(), |d| format!("{:.2}s", d.as_secs_f64())),
            switches.map_or("?".into(), |n| n.to_string()),
            mib(hwm_kib),
            per_s(rows, copy),
            copy.as_secs_f64(),
            steady / per_s(rows, copy).max(1e-9),
        ));
        Ok(Throughput {
            batch,
            elapsed,
            first_row,
            first_rows,
            copy,
            cpu,
            hwm_kib,
            written,
        })
    }

    /// Commit-to-consumer latency when only NOTIFY wakes the worker.
    async fn polling_notify(&mut self) -> Result<()> {
        let db = self.pg.scenario_database("poll_notify").await?;
        let what = "poll-notify";
        let notify = NotifyConfig {
            channel: NOTIFY_BASE.into(),
            deletes_table: format!("public.{NOTIFY_BASE}_deletes"),
        };
        let (run, topic) = self.polling_run(
            &db.database,
            what,
            spec("1h", 1000, true),
            Some(notify.clone()),
        );
        let mut worker = None;
        let result = async {
            add_cursor(&db).await?;
            index_cursor(&db).await?;
            db.client
                .batch_execute(
                    &NOTIFY_DDL
                        .replace('@', NOTIFY_BASE)
                        .replace('%', TABLE),
                )
                .await
                .context("creating the notify objects")?;
            let w = worker.insert(self.worker.spawn(&run, &self.pids)?);
            // The worker LISTENs before its first poll: wait for the LISTEN,
            // and let that first poll pass.
            let spawned = Instant::now();
            loop {
                w.check_alive()?;
                let listening: i64 = db
                    .client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                         AND application_name = 'siphon-worker' AND query ILIKE 'LISTEN %'",
                        &[],
                    )
                    .await?
                    .get(0);
                if listening > 0 {
                    break;
                }
                if spawned.elapsed() > Duration::from_secs(90) {
                    bail!("the worker did not LISTEN within 90s; see {}", w.log.display());
                }
                tokio::time::sleep(TICK).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            // One row that only a notification can bring (interval 1h).
            db.client
                .execute(
                    &format!("INSERT INTO {TABLE} SELECT {ROW_EXPR} FROM (SELECT $1::int8 AS g) s"),
                    &[&PROBE_ID],
                )
                .await?;
            let watermarks = self.kafka.watermarks()?;
            let probed = Instant::now();
            while watermarks.high(&topic) < 1 {
                w.check_alive()?;
                if probed.elapsed() > Duration::from_secs(30) {
                    bail!(
                        "a row committed after the worker's LISTEN was not in {topic} after 30s (interval 1h: NOTIFY did not wake it); see {}",
                        w.log.display()
                    );
                }
                tokio::time::sleep(TICK).await;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let consumer = self.kafka.arrivals(&topic, stop.clone())?;
            // Let the consumer join before the first commit.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let duration = Duration::from_secs(self.scaled(20, 5));
            let start_us = now_us();
            let written = paced_writer(
                &self.pg,
                &db.database,
                TABLE,
                NOTIFY_RATE,
                duration,
                1,
                &Arc::new(AtomicBool::new(false)),
            )
            .await;
            // Give the tail time to arrive, then stop the consumer.
            tokio::time::sleep(Duration::from_secs(3)).await;
            stop.store(true, Ordering::Relaxed);
            let arrivals = consumer
                .join()
                .map_err(|_| anyhow::anyhow!("the latency consumer panicked"))??;
            w.check_alive()?;
            let (sent, took) = written?;
            Ok((sent, took, start_us, arrivals))
        }
        .await;
        if let Some(w) = worker {
            let worker_log = w.log.clone();
            w.stop(Duration::from_secs(30)).await?;
            self.note_log(what, &worker_log);
        }
        db.drop().await?;
        let (sent, took, start_us, arrivals) = result?;
        // The probe row is not the writer's.
        let written: Vec<&Arrival> = arrivals
            .iter()
            .filter(|a| a.commit_us >= start_us)
            .collect();
        let mut latency: Vec<f64> = written
            .iter()
            .filter(|a| a.commit_us >= start_us + WARMUP_US)
            .map(|a| (a.received_us - a.commit_us) as f64 / 1000.0)
            .collect();
        if latency.is_empty() {
            bail!("no row of the paced writer reached the consumer");
        }
        latency.sort_by(f64::total_cmp);
        let rate = per_s(sent, took);
        log(format!(
            "{what}: {sent} single-row transactions at {rate:.0}/s, {} records read back ({} after warm-up), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            written.len(),
            latency.len(),
            percentile(&latency, 0.50),
            percentile(&latency, 0.99),
            percentile(&latency, 1.0),
        ));
        if (written.len() as u64) < sent {
            self.notes.push(format!(
                "polling.notify_*: only {} of {sent} rows reached the consumer within 3 s of the last commit",
                written.len()
            ));
        }
        self.figures.push(Figure::alone(
            "polling.notify_commit_to_consumer_p50",
            "ms",
            percentile(&latency, 0.50),
            vec![Goal::None],
        ));
        self.figures.push(Figure::alone(
            "polling.notify_commit_to_consumer_p99",
            "ms",
            percentile(&latency, 0.99),
            vec![Goal::AtMost(goals::POLLING_NOTIFY_P99_MS)],
        ));
        self.figures.push(Figure::alone(
            "polling.notify_writer_rate",
            "tx/s",
            rate,
            vec![Goal::AtLeast(NOTIFY_RATE * 0.95)],
        ));
        self.notes.push(format!(
            "polling.notify_*: one table, polling.notify: true with interval 1h (only a notification wakes the worker), batchSize 1000, no lateness, at least once; notify objects made by the benchmark as the operator makes them ({}, {NOTIFY_BASE}_notify(), its row and statement triggers); commit time = source.ts_us, which polling takes from the cursor: clock_timestamp() in the inserting statement, so it also counts the commit's WAL flush (synchronous_commit = on); arrival = a read_committed consumer on the same host; the writer achieved {rate:.0} tx/s over {:.0}s, first 2 s dropped",
            notify.deletes_table,
            took.as_secs_f64()
        ));
        Ok(())
    }

    /// Transactions per interval of a capture with nothing to read.
    async fn polling_idle(&mut self) -> Result<()> {
        let mut db = self.pg.scenario_database("poll_idle").await?;
        let what = "poll-idle";
        let interval_text = format!("{}ms", IDLE_INTERVAL.as_millis());
        let database = db.database.clone();
        let (run, topic) =
            self.polling_run(&database, what, spec(&interval_text, 1000, false), None);
        let prepared = async {
            add_cursor(&db).await?;
            db.fill(IDLE_ROWS).await?;
            index_cursor(&db).await?;
            // Autovacuum's transactions count in the database's statistics
            // too, and a worker may start in the window: none on this table,
            // so the window counts the capture's own transactions.
            db.client
                .batch_execute(&format!(
                    "ALTER TABLE {TABLE} SET (autovacuum_enabled = false)"
                ))
                .await
                .context("turning autovacuum off for the idle table")
        }
        .await;
        // A session's statistics reach pg_stat_database when it ends, or up
        // to 10 s after its last statement: end the setup session now and
        // keep a connection to `postgres` in its place.
        let mut worker = None;
        let result = async {
            prepared?;
            db.client = self.pg.connect("postgres").await?;
            let admin = self.pg.connect("postgres").await?;
            let counter = admin
                .prepare(
                    "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = $1",
                )
                .await?;
            let others = admin.prepare(OTHERS_SQL).await?;
            let w = worker.insert(self.worker.spawn(&run, &self.pids)?);
            // Read the rows there are, then let the worker idle.
            let watermarks = self.kafka.watermarks()?;
            let spawned = Instant::now();
            while watermarks.high(&topic) < IDLE_ROWS as i64 {
                w.check_alive()?;
                if spawned.elapsed() > Duration::from_secs(90) {
                    bail!(
                        "{IDLE_ROWS} rows not in {topic} after 90s; see {}",
                        w.log.display()
                    );
                }
                tokio::time::sleep(TICK).await;
            }
            // A session's statistics reach pg_stat_database at most 10 s
            // after its last statement (PGSTAT_IDLE_INTERVAL): the worker's
            // start-up sessions are flushed before the window opens.
            tokio::time::sleep(STATS_SETTLE).await;
            let mut samples: Vec<(Instant, i64)> = Vec::new();
            let mut seen = BTreeSet::new();
            let opened = Instant::now();
            while opened.elapsed() < IDLE_WINDOW {
                w.check_alive()?;
                let n: i64 = admin.query_one(&counter, &[&database]).await?.get(0);
                samples.push((Instant::now(), n));
                for row in admin.query(&others, &[&database]).await? {
                    seen.insert(row.get::<_, String>(0));
                }
                tokio::time::sleep(TICK).await;
            }
            Ok(idle_load(&samples, seen))
        }
        .await;
        if let Some(w) = worker {
            let worker_log = w.log.clone();
            w.stop(Duration::from_secs(30)).await?;
            self.note_log(what, &worker_log);
        }
        db.drop().await?;
        let load = result?;
        let intervals = load.span.as_secs_f64() / IDLE_INTERVAL.as_secs_f64();
        let per_interval = load.xacts as f64 / intervals.max(1e-9);
        log(format!(
            "{what}: {} transactions in {:.2}s ({intervals:.1} intervals of {interval_text}): {per_interval:.2} per interval; other sessions seen: {}",
            load.xacts,
            load.span.as_secs_f64(),
            if load.others.is_empty() {
                "none".to_string()
            } else {
                load.others.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        ));
        if load.xacts == 0 {
            self.notes.push(format!(
                "polling.idle_*: the worker committed no transaction in {IDLE_WINDOW:?}: it did not poll"
            ));
        }
        if !load.others.is_empty() {
            self.notes.push(format!(
                "polling.idle_*: other sessions in the database during the window, counted too: {}",
                load.others.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        self.figures.push(Figure::alone(
            "polling.idle_xacts_per_interval",
            "tx/interval",
            per_interval,
            vec![Goal::AtMost(goals::POLLING_IDLE_XACTS_PER_INTERVAL)],
        ));
        self.notes.push(format!(
            "polling.idle_*: 1 table of {IDLE_ROWS} rows already read (autovacuum off on it, so only the capture's transactions count), no notify, no lateness, interval {interval_text}, at least once; transactions = xact_commit + xact_rollback of its database in pg_stat_database, read from the postgres database every {} ms over {:.0}s from {}s after the rows were read (every earlier session's statistics flushed by then), counted {} ({:.2}s); per interval per table",
            TICK.as_millis(),
            IDLE_WINDOW.as_secs_f64(),
            STATS_SETTLE.as_secs(),
            if load.between_flushes {
                "between the first and the last statistics flush of the worker's session seen (a session flushes at most once a second), so exactly"
            } else {
                "between the window's ends (fewer than two flushes seen)"
            },
            load.span.as_secs_f64()
        ));
        Ok(())
    }
}

/// The transactions counted between the first and the last change of the
/// counter seen (each change is a flush right after a transaction of the
/// worker, so the span holds whole poll periods), else between the ends.
fn idle_load(samples: &[(Instant, i64)], others: BTreeSet<String>) -> IdleLoad {
    let changes: Vec<(Instant, i64)> = samples
        .windows(2)
        .filter(|w| w[1].1 != w[0].1)
        .map(|w| w[1])
        .collect();
    let (from, to, between_flushes) = match (changes.first(), changes.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => (*a, *b, true),
        _ => match (samples.first(), samples.last()) {
            (Some(a), Some(b)) => (*a, *b, false),
            _ => {
                return IdleLoad {
                    xacts: 0,
                    span: Duration::ZERO,
                    between_flushes: false,
                    others,
                };
            }
        },
    };
    IdleLoad {
        xacts: to.1 - from.1,
        span: to.0 - from.0,
        between_flushes,
        others,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_load_counts_between_the_first_and_last_flush() {
        let t0 = Instant::now();
        let at = |ms: u64, n: i64| (t0 + Duration::from_millis(ms), n);
        // Flushes at 1000 ms (+2) and 3000 ms (+2, +2): 4 transactions in 2 s.
        let samples = [
            at(0, 10),
            at(500, 10),
            at(1000, 12),
            at(2000, 12),
            at(2500, 14),
            at(3000, 16),
            at(3500, 16),
        ];
        let load = idle_load(&samples, BTreeSet::new());
        assert!(load.between_flushes);
        assert_eq!(load.xacts, 4);
        assert_eq!(load.span, Duration::from_millis(2000));
        let flat = idle_load(&[at(0, 5), at(1000, 5)], BTreeSet::new());
        assert!(!flat.between_flushes);
        assert_eq!(flat.xacts, 0);
    }
}
