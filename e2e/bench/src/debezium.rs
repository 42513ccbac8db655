//! Siphon beside the Debezium PostgreSQL connector (`make bench`'s `debezium`
//! scenario): the same database, broker and workloads, each reader on a slot
//! of its own.
//!
//! - **Streaming from a backlog**: 200k single-row transactions, then one
//!   1M-row transaction. Both slots exist before the rows are written; then
//!   Siphon drains its slot, then Debezium drains its own (the same WAL).
//! - **Initial snapshot** of a 1M-row table: Siphon's watermark backfill
//!   against Debezium's `snapshot.mode=initial`.
//!
//! Debezium runs as users run it: Kafka Connect standalone from the stack's
//! Kafka jars (`e2e/debezium/debezium.sh`), the JSON converter without
//! schemas, pgoutput. Both are tuned alike where both have the knob (see
//! [`DEBEZIUM_WORKER`], [`DEBEZIUM_CONNECTOR`]); every figure is Siphon
//! against Debezium in the same run:
//!
//! - rows/s from the first record to the last (Kafka CreateTime of the
//!   topic's first and last records), and from process start to the last
//!   record in Kafka (start-up and, for Debezium, the JVM included);
//! - peak RSS (VmHWM) and CPU seconds per million rows of the process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use siphon_crds::capture::{Delivery, SnapshotMode};
use tokio::process::{Child, Command};

use crate::postgres::{BenchDb, PREFIX, PUBLICATION, TABLE, cpu_time};
use crate::scenarios::{Bench, log, mib};
use crate::summary::{Figure, Goal};
use crate::worker::{Pids, WorkerRun, tail};

/// Goals of issue 14: at least ten times Debezium's rows/s, at most a
/// twentieth of its memory.
const SPEED_RATIO: f64 = 10.0;
const MEMORY_RATIO: f64 = 0.05;

/// Connect worker settings: the producer tuned as Siphon's is
/// (worker/src/sink/options.rs: linger 5 ms, 1 MB batches, acks=all,
/// idempotence, LZ4 (Siphon's default `kafka.compression`), a 16 MiB buffer) instead of Connect's
/// defaults (linger 0, 16 kB batches, one request in flight).
const DEBEZIUM_WORKER: &[&str] = &[
    "producer.linger.ms=5",
    "producer.batch.size=1000000",
    "producer.acks=all",
    "producer.enable.idempotence=true",
    "producer.max.in.flight.requests.per.connection=5",
    "producer.compression.type=lz4",
    "producer.buffer.memory=16777216",
    "offset.flush.interval.ms=10000",
];

/// Connector settings beyond the ones that say what to capture: batches and
/// queue ten times Debezium's defaults (2048, 8192), no idle wait between
/// polls of a full queue.
const DEBEZIUM_CONNECTOR: &str = "max.batch.size=20480
max.queue.size=81920
poll.interval.ms=5
snapshot.fetch.size=10240
";

/// The JVM's heap limit (its initial heap left to the JVM's default).
const DEBEZIUM_HEAP: &str = "-Xmx1g";

/// What one process did to bring `rows` records into its topic.
struct Measured {
    /// First record to last, by their Kafka timestamps.
    records_span: Duration,
    /// Process start to the last record in Kafka.
    from_start: Duration,
    peak_rss_kib: u64,
    cpu: Duration,
}

impl Measured {
    fn rows_per_s(&self, rows: u64) -> f64 {
        rows.saturating_sub(1) as f64 / self.records_span.as_secs_f64().max(1e-3)
    }

    fn per_s_since_start(&self, rows: u64) -> f64 {
        rows as f64 / self.from_start.as_secs_f64().max(1e-3)
    }

    fn cpu_per_mrow(&self, rows: u64) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / rows.max(1) as f64
    }
}

/// The slots of one workload: Siphon's and Debezium's.
fn slots(what: &str) -> (String, String) {
    (
        format!("{PREFIX}dbz_{what}_siphon"),
        format!("{PREFIX}dbz_{what}_debezium"),
    )
}

/// A process being measured: Siphon's worker or Connect's JVM.
trait Measuring {
    fn pid(&self) -> Option<u32>;
    fn check_alive(&mut self) -> Result<()>;
}

impl Measuring for crate::worker::Worker {
    fn pid(&self) -> Option<u32> {
        crate::worker::Worker::pid(self)
    }
    fn check_alive(&mut self) -> Result<()> {
        crate::worker::Worker::check_alive(self)
    }
}

/// Kafka Connect standalone running the Debezium connector.
struct Connect {
    child: Child,
    pid: Option<u32>,
    pids: Pids,
    log: PathBuf,
}

impl Connect {
    fn spawn(repo: &Path, dir: &Path, kafka: &str, connector: &str, pids: &Pids) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let properties = dir.join("connector.properties");
        std::fs::write(&properties, connector)?;
        let log = dir.join("connect.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new("bash")
            .arg(repo.join("e2e/debezium/debezium.sh"))
            .arg("connect")
            .arg(dir)
            .arg(&properties)
            .args(DEBEZIUM_WORKER)
            .env("KAFKA_BOOTSTRAP", kafka)
            .env("DEBEZIUM_HEAP", DEBEZIUM_HEAP)
            .env("DEBEZIUM_LOG_LEVEL", "WARN")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .context("starting Kafka Connect with the Debezium connector")?;
        // The script execs java: this pid is the JVM's.
        let pid = child.id();
        pids.add(pid);
        Ok(Self {
            child,
            pid,
            pids: pids.clone(),
            log,
        })
    }

    async fn stop(mut self) {
        if let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        self.pids.remove(self.pid);
    }
}

impl Measuring for Connect {
    fn pid(&self) -> Option<u32> {
        self.pid
    }
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "Kafka Connect exited ({status}); last lines of {}:\n{}",
                self.log.display(),
                tail(&self.log, 20)
            );
        }
        Ok(())
    }
}

impl Bench {
    /// The `debezium` scenario (see the module documentation).
    pub async fn debezium(&mut self) -> Result<()> {
        let single = self.scaled(200_000, 100);
        let large = self.scaled(1_000_000, 1000);
        self.debezium_stream("single", "single-row transactions", single, 1)
            .await?;
        self.debezium_stream("large1m", "one 1M-row transaction", 1, large)
            .await?;
        self.debezium_snapshot(large).await?;
        self.notes.push(format!(
            "debezium.*: Debezium {} on Kafka Connect standalone (Kafka {}), JSON converter without schemas, pgoutput, heap {DEBEZIUM_HEAP}; Connect producer as Siphon's: {}; connector: {}. rows_per_s: first to last record by Kafka CreateTime; from_start: process start to the last record in Kafka; peak_rss: VmHWM; cpu: the process's user+system seconds",
            std::env::var("DEBEZIUM_VERSION").unwrap_or_else(|_| "(DEBEZIUM_VERSION)".into()),
            std::env::var("KAFKA_VERSION").unwrap_or_else(|_| "(KAFKA_VERSION)".into()),
            DEBEZIUM_WORKER.join(" "),
            DEBEZIUM_CONNECTOR.trim().replace('\n', " ")
        ));
        Ok(())
    }

    async fn debezium_stream(
        &mut self,
        key: &str,
        label: &str,
        txns: u64,
        rows_per_txn: u64,
    ) -> Result<()> {
        let mut db = self.pg.scenario_database(&format!("dbz_{key}")).await?;
        let (siphon_slot, dbz_slot) = slots(key);
        db.create_slot(&siphon_slot).await?;
        db.create_slot(&dbz_slot).await?;
        let rows = db.load(txns, u32::try_from(rows_per_txn)?).await? + 1;
        db.end_marker().await?;
        log(format!(
            "debezium {label}: {rows} rows written; Siphon, then Debezium"
        ));
        self.side_by_side(
            db,
            key,
            &format!("stream.{key}"),
            SnapshotMode::Never,
            "no_data",
            rows,
        )
        .await
    }

    async fn debezium_snapshot(&mut self, rows: u64) -> Result<()> {
        let mut db = self.pg.scenario_database("dbz_snapshot").await?;
        db.fill(rows).await?;
        db.client.batch_execute("VACUUM ANALYZE orders").await?;
        db.client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS public.siphon_watermarks (capture text PRIMARY KEY, \
                 watermark text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
                 ALTER PUBLICATION {PUBLICATION} ADD TABLE public.siphon_watermarks"
            ))
            .await
            .context("creating the watermark table")?;
        log(format!(
            "debezium initial snapshot of {rows} rows: Siphon, then Debezium"
        ));
        self.side_by_side(
            db,
            "snapshot",
            "snapshot",
            SnapshotMode::Initial,
            "initial",
            rows,
        )
        .await
    }

    /// Siphon, then Debezium, each on a slot of its own in `db` (Siphon's
    /// dropped before Debezium starts, so it holds no WAL meanwhile); then
    /// the slots and the database go and the figures are kept.
    async fn side_by_side(
        &mut self,
        db: BenchDb,
        what: &str,
        figure: &str,
        siphon_snapshot: SnapshotMode,
        debezium_snapshot: &str,
        rows: u64,
    ) -> Result<()> {
        let (siphon_slot, dbz_slot) = slots(what);
        let result = async {
            let siphon = self
                .siphon_side(&db, &siphon_slot, what, siphon_snapshot, rows)
                .await
                .context("Siphon")?;
            db.drop_slot(&siphon_slot).await?;
            let connector = self.connector(&db, &dbz_slot, what, debezium_snapshot);
            let debezium = self
                .debezium_side(what, &connector, rows)
                .await
                .context("Debezium")?;
            Ok::<_, anyhow::Error>((siphon, debezium))
        }
        .await;
        let _ = db.drop_slot(&siphon_slot).await;
        let _ = db.drop_slot(&dbz_slot).await;
        db.drop().await?;
        let (siphon, debezium) = result?;
        self.debezium_figures(figure, rows, &siphon, &debezium);
        Ok(())
    }

    fn connector(&self, db: &BenchDb, slot: &str, what: &str, snapshot_mode: &str) -> String {
        let pg = &db.pg;
        format!(
            "name=siphon-bench-{what}
connector.class=io.debezium.connector.postgresql.PostgresConnector
database.hostname={host}
database.port={port}
database.user={user}
database.password={password}
database.dbname={database}
topic.prefix={prefix}
plugin.name=pgoutput
slot.name={slot}
publication.name={PUBLICATION}
publication.autocreate.mode=disabled
table.include.list={TABLE}
snapshot.mode={snapshot_mode}
{DEBEZIUM_CONNECTOR}",
            host = pg.host,
            port = pg.port,
            user = pg.user,
            password = pg.password,
            database = db.database,
            prefix = self.topic_prefix(&format!("dbz-{what}-debezium")),
        )
    }

    async fn siphon_side(
        &self,
        db: &BenchDb,
        slot: &str,
        what: &str,
        snapshot: SnapshotMode,
        rows: u64,
    ) -> Result<Measured> {
        let topic_prefix = self.topic_prefix(&format!("dbz-{what}-siphon"));
        let topic = format!("{topic_prefix}.{TABLE}");
        let run = WorkerRun {
            name: format!("{}-dbz-{what}", self.run_id),
            database: &db.database,
            slot,
            topic_prefix,
            delivery: Delivery::AtLeastOnce,
            snapshot,
            stream_only: None,
            polling: None,
            notify: None,
        };
        let spawned = Instant::now();
        let mut worker = self.worker.spawn(&run, &self.pids)?;
        let measured = self.measure(&mut worker, spawned, &topic, rows).await;
        worker.stop(Duration::from_secs(30)).await?;
        measured
    }

    async fn debezium_side(&self, what: &str, connector: &str, rows: u64) -> Result<Measured> {
        let topic = format!(
            "{}.{TABLE}",
            self.topic_prefix(&format!("dbz-{what}-debezium"))
        );
        let dir = self.worker.dir.join(format!("debezium-{what}"));
        let spawned = Instant::now();
        let mut connect = Connect::spawn(
            &self.repo,
            &dir,
            &self.kafka.bootstrap,
            connector,
            &self.pids,
        )?;
        let measured = self.measure(&mut connect, spawned, &topic, rows).await;
        connect.stop().await;
        measured
    }

    /// Waits until `topic` holds `rows` records, then reads the process's
    /// figures and the topic's first and last record times.
    async fn measure(
        &self,
        process: &mut impl Measuring,
        spawned: Instant,
        topic: &str,
        rows: u64,
    ) -> Result<Measured> {
        let watermarks = self.kafka.watermarks()?;
        let deadline = Duration::from_secs(1200);
        let from_start = loop {
            process.check_alive()?;
            if watermarks.high(topic) >= i64::try_from(rows)? {
                break spawned.elapsed();
            }
            if spawned.elapsed() > deadline {
                bail!(
                    "{rows} records not in {topic} after {deadline:?} ({} there)",
                    watermarks.high(topic)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let pid = process.pid().context("the process has no pid")?;
        let peak_rss_kib = crate::worker::memory_of(pid).map_or(0, |m| m.hwm_kib);
        let cpu = cpu_time(pid).unwrap_or_default();
        let (first_ms, last_ms) = self.kafka.first_and_last_times(topic, rows)?;
        Ok(Measured {
            records_span: Duration::from_millis(u64::try_from((last_ms - first_ms).max(1))?),
            from_start,
            peak_rss_kib,
            cpu,
        })
    }

    fn debezium_figures(&mut self, what: &str, rows: u64, siphon: &Measured, debezium: &Measured) {
        log(format!(
            "debezium {what}: Siphon {:.0} rows/s ({:.0} from start, {:.1} MiB, {:.2} CPU s), Debezium {:.0} rows/s ({:.0} from start, {:.1} MiB, {:.2} CPU s)",
            siphon.rows_per_s(rows),
            siphon.per_s_since_start(rows),
            mib(siphon.peak_rss_kib),
            siphon.cpu.as_secs_f64(),
            debezium.rows_per_s(rows),
            debezium.per_s_since_start(rows),
            mib(debezium.peak_rss_kib),
            debezium.cpu.as_secs_f64(),
        ));
        let name = |figure: &str| format!("debezium.{what}.{figure}");
        self.figures.push(Figure::against(
            name("rows_per_s"),
            "rows/s",
            siphon.rows_per_s(rows),
            "Debezium",
            debezium.rows_per_s(rows),
            vec![Goal::RatioAtLeast(SPEED_RATIO)],
        ));
        self.figures.push(Figure::against(
            name("rows_per_s_from_start"),
            "rows/s",
            siphon.per_s_since_start(rows),
            "Debezium",
            debezium.per_s_since_start(rows),
            vec![Goal::RatioAtLeast(SPEED_RATIO)],
        ));
        self.figures.push(Figure::against(
            name("peak_rss"),
            "MiB",
            mib(siphon.peak_rss_kib),
            "Debezium",
            mib(debezium.peak_rss_kib),
            vec![Goal::RatioAtMost(MEMORY_RATIO)],
        ));
        self.figures.push(Figure::against(
            name("cpu_per_mrow"),
            "CPU s",
            siphon.cpu_per_mrow(rows),
            "Debezium",
            debezium.cpu_per_mrow(rows),
            vec![],
        ));
    }
}
