//! The scenarios of `make bench`. Each runs in its own database, slots and
//! topic prefix, and leaves nothing behind.
//!
//! Streaming throughput: all slots of a workload are created *before* the
//! workload runs, then each reader in turn reads the same, already written WAL
//! from its own slot — the reference (pg_recvlogical), Siphon at least once,
//! the reference again, Siphon exactly once — so every Siphon figure is paired
//! with a reference measured just before it on the same data. A reader's clock
//! starts when its slot turns active and stops when it has everything: for
//! pg_recvlogical when it exits at `--endpos`, for Siphon when the slot's
//! `confirmed_flush_lsn` reaches the same position (Siphon confirms only what
//! Kafka acknowledged, so this proves delivery).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use siphon_crds::capture::{Delivery, SnapshotMode};

use crate::kafka::{Arrival, Kafka, now_us};
use crate::postgres::{
    BenchDb, Lsn, POLL, PREFIX, PUBLICATION, Pg, TABLE, WalsenderCpu, context_switches, cpu_time,
};
use crate::reference::{self, Tools};
use crate::summary::{Figure, Goal};
use crate::worker::{MemorySampler, Pids, Profiler, WorkerEnv, WorkerRun};

/// Goals of the product (DESIGN.md), printed beside each figure.
pub mod goals {
    pub const AT_LEAST_ONCE_RATIO: f64 = 0.85;
    pub const EXACTLY_ONCE_RATIO: f64 = 0.75;
    /// Exactly once costs at most a tenth of at-least-once's rate.
    pub const EXACTLY_ONCE_VS_AT_LEAST_ONCE: f64 = 0.9;
    pub const P99_MS: f64 = 50.0;
    pub const RSS_STEADY_MIB: f64 = 64.0;
    pub const RSS_LARGE_TXN_MIB: f64 = 160.0;
    pub const BACKFILL_ROWS_PER_S: f64 = 300_000.0;
    pub const BACKFILL_COPY_RATIO: f64 = 0.5;
    pub const BACKFILL_STREAM_LAG_MS: f64 = 1000.0;
    pub const POLLING_COPY_RATIO: f64 = 0.3;
    pub const POLLING_NOTIFY_P99_MS: f64 = 100.0;
    pub const POLLING_IDLE_XACTS_PER_INTERVAL: f64 = 1.0;
}

/// Prefix of every topic the benchmark creates.
pub const TOPIC_PREFIX: &str = "siphon-bench-";
/// The watermark table of a backfilling capture (the worker's default name).
const WATERMARKS: &str = "public.siphon_watermarks";
/// Written to while a backfill runs (see the backfill scenario).
const TICKS: &str = "public.ticks";
/// Single-row transactions per second into TICKS during the backfill.
const BACKFILL_WRITE_RATE: f64 = 100.0;
/// The steady rate of the latency scenario.
pub const LATENCY_RATE: f64 = 5_000.0;

/// Everything a scenario needs, and the figures so far.
pub struct Bench {
    pub pg: Pg,
    pub kafka: Kafka,
    pub worker: WorkerEnv,
    pub tools: Tools,
    pub pids: Pids,
    pub run_id: String,
    pub scale: f64,
    pub repo: PathBuf,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

/// A streaming workload: `txns` transactions of `rows_per_txn` rows.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub key: &'static str,
    pub label: &'static str,
    pub txns: u64,
    pub rows_per_txn: u32,
}

/// How one Siphon run went.
struct SiphonRun {
    elapsed: Duration,
    /// CPU time of the worker process (start-up included) and of its walsender.
    worker_cpu: Option<Duration>,
    walsender_cpu: Option<Duration>,
    /// Context switches of all the worker's threads.
    worker_switches: Option<u64>,
    /// VmHWM at the end, KiB.
    hwm_kib: u64,
    /// VmRSS samples while it streamed, KiB.
    rss_kib: Vec<u64>,
    topic: String,
}

pub fn log(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

pub(crate) fn per_s(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

impl Bench {
    /// `base` scaled by BENCH_SCALE, at least `min`.
    pub fn scaled(&self, base: u64, min: u64) -> u64 {
        ((base as f64 * self.scale).round() as u64).max(min)
    }

    pub(crate) fn topic_prefix(&self, what: &str) -> String {
        format!("{TOPIC_PREFIX}{}-{what}", self.run_id)
    }

    /// Run Siphon on an existing slot until it confirmed `end`.
    async fn siphon_stream(
        &self,
        db: &BenchDb,
        slot: &str,
        what: &str,
        delivery: Delivery,
        end: Lsn,
        timeout: Duration,
    ) -> Result<SiphonRun> {
        let watch = db.watch(slot).await?;
        let topic_prefix = self.topic_prefix(what);
        let run = WorkerRun {
            name: format!("{}-{what}", self.run_id),
            database: &db.database,
            slot,
            topic_prefix: topic_prefix.clone(),
            delivery,
            snapshot: SnapshotMode::Never,
            stream_only: None,
            polling: None,
            notify: None,
        };
        let mut worker = self.worker.spawn(&run, &self.pids)?;
        let sampler = MemorySampler::start(worker.pid(), Duration::from_millis(50));
        let profile = Profiler::attach(&self.worker.dir, what, worker.pid(), &self.pids)?;
        let spawned = Instant::now();
        let mut walsender = WalsenderCpu::default();
        let result = async {
            let started = loop {
                worker.check_alive()?;
                let state = watch.state().await?;
                walsender.observe(&state);
                if state.active {
                    break Instant::now();
                }
                if spawned.elapsed() > Duration::from_secs(90) {
                    bail!(
                        "the worker did not start streaming within 90s; see {}",
                        worker.log.display()
                    );
                }
                tokio::time::sleep(POLL).await;
            };
            let finished = loop {
                let state = watch.state().await?;
                walsender.observe(&state);
                if state.confirmed >= end {
                    break Instant::now();
                }
                worker.check_alive()?;
                if started.elapsed() > timeout {
                    bail!(
                        "the worker did not confirm {end} within {timeout:?}; see {}",
                        worker.log.display()
                    );
                }
                tokio::time::sleep(POLL).await;
            };
            Ok((started, finished))
        }
        .await;
        let hwm_kib = worker.memory().map_or(0, |m| m.hwm_kib);
        let worker_cpu = worker.pid().and_then(cpu_time);
        let worker_switches = worker.pid().and_then(context_switches);
        if let Some(p) = profile {
            p.finish().await;
        }
        worker.stop(Duration::from_secs(30)).await?;
        let (started, finished) = result?;
        Ok(SiphonRun {
            elapsed: finished - started,
            worker_cpu,
            walsender_cpu: walsender.used(),
            worker_switches,
            hwm_kib,
            rss_kib: sampler.between(started, finished),
            topic: format!("{topic_prefix}.{TABLE}"),
        })
    }

    /// One streaming workload: reference, Siphon at least once, reference,
    /// Siphon exactly once, all on the same WAL.
    pub async fn streaming(&mut self, w: Workload) -> Result<()> {
        let mut db = self.pg.scenario_database(w.key).await?;
        let readers = ["ref1", "alo", "ref2", "eos", "ceiling"];
        let slots = readers.map(|r| format!("{PREFIX}{}_{r}", w.key));
        for s in &slots {
            db.create_slot(s).await?;
        }
        let t = Instant::now();
        let rows = db.load(w.txns, w.rows_per_txn).await? + 1;
        let end = db.end_marker().await?;
        log(format!(
            "{}: wrote {rows} rows in {} transactions in {:.1}s; readers stop at {end}",
            w.label,
            w.txns + 1,
            t.elapsed().as_secs_f64()
        ));
        let timeout = Duration::from_secs(600);
        // The true ceiling first: what the server decodes in its own
        // backend, with nothing to send the changes to.
        let (decode_time, messages) = db.decode_in_server(&slots[4], end).await?;
        db.drop_slot(&slots[4]).await?;
        let ceiling = per_s(rows, decode_time);
        log(format!(
            "{}: the server decodes the WAL in {:.2}s ({messages} pgoutput messages): {ceiling:.0} events/s",
            w.label,
            decode_time.as_secs_f64()
        ));
        self.notes.push(format!(
            "stream.{}.*_vs_server_decode: the same WAL decoded by pgoutput inside one backend (pg_logical_slot_get_binary_changes on a slot of its own, before the other readers): the server's own ceiling, with no walsender, network, client or Kafka",
            w.key
        ));
        let mut pairs = Vec::new();
        for (i, delivery) in [(0, Delivery::AtLeastOnce), (2, Delivery::ExactlyOnce)] {
            let reference_run =
                reference::recvlogical(&self.tools, &db, &slots[i], end, &self.pids, timeout)
                    .await
                    .context("pg_recvlogical")?;
            let reference_time = reference_run.elapsed;
            db.drop_slot(&slots[i]).await?;
            let what = format!("{}-{}", w.key, readers[i + 1]);
            let run = self
                .siphon_stream(&db, &slots[i + 1], &what, delivery, end, timeout)
                .await
                .with_context(|| format!("siphon {what}"))?;
            db.drop_slot(&slots[i + 1]).await?;
            let written = self.kafka.high_watermark(&run.topic)?;
            if written < rows as i64 {
                self.notes.push(format!(
                    "{what}: only {written} offsets in {} for {rows} rows",
                    run.topic
                ));
            }
            let (siphon, reference) = (per_s(rows, run.elapsed), per_s(rows, reference_time));
            let secs =
                |d: Option<Duration>| d.map_or("?".into(), |d| format!("{:.2}s", d.as_secs_f64()));
            log(format!(
                "{what}: siphon {:.0} events/s ({:.2}s; worker CPU {}, {} context switches; its walsender CPU {}), \
                 pg_recvlogical {:.0} events/s ({:.2}s; its walsender CPU {}), ratio {:.2}",
                siphon,
                run.elapsed.as_secs_f64(),
                secs(run.worker_cpu),
                run.worker_switches.map_or("?".into(), |n| n.to_string()),
                secs(run.walsender_cpu),
                reference,
                reference_time.as_secs_f64(),
                secs(reference_run.walsender_cpu),
                siphon / reference
            ));
            pairs.push((delivery, siphon, reference, run));
        }
        if let [(_, alo, ..), (_, eos, ..)] = pairs.as_slice() {
            self.figures.push(Figure::against(
                format!("stream.{}.exactly_once_vs_at_least_once", w.key),
                "events/s",
                *eos,
                "siphon at least once",
                *alo,
                vec![Goal::RatioAtLeast(goals::EXACTLY_ONCE_VS_AT_LEAST_ONCE)],
            ));
        }
        for (delivery, siphon, reference, run) in pairs {
            let (mode, goal) = match delivery {
                Delivery::AtLeastOnce => ("at_least_once", goals::AT_LEAST_ONCE_RATIO),
                Delivery::ExactlyOnce => ("exactly_once", goals::EXACTLY_ONCE_RATIO),
            };
            self.figures.push(Figure::against(
                format!("stream.{}.{mode}", w.key),
                "events/s",
                siphon,
                "pg_recvlogical",
                reference,
                vec![Goal::RatioAtLeast(goal)],
            ));
            self.figures.push(Figure::against(
                format!("stream.{}.{mode}_vs_server_decode", w.key),
                "events/s",
                siphon,
                "decoded in the server",
                ceiling,
                vec![],
            ));
            // Memory at steady state: the single-row stream at full speed.
            if w.rows_per_txn == 1 && delivery == Delivery::AtLeastOnce {
                let mut s = run.rss_kib.clone();
                s.sort_unstable();
                if !s.is_empty() {
                    let median = s[s.len() / 2];
                    let max = s[s.len() - 1];
                    self.figures.push(Figure::alone(
                        "memory.rss_steady_p50",
                        "MiB",
                        mib(median),
                        vec![Goal::AtMost(goals::RSS_STEADY_MIB)],
                    ));
                    self.figures.push(Figure::alone(
                        "memory.rss_steady_max",
                        "MiB",
                        mib(max),
                        vec![Goal::AtMost(goals::RSS_STEADY_MIB)],
                    ));
                    self.notes.push(format!(
                        "memory.rss_steady_*: {} VmRSS samples (every 50 ms) while the at-least-once worker streamed {}; VmHWM at the end {:.1} MiB",
                        s.len(),
                        w.label,
                        mib(run.hwm_kib)
                    ));
                }
            }
        }
        db.drop().await
    }

    /// p50/p99 of commit-to-consumer latency at a steady LATENCY_RATE.
    pub async fn latency(&mut self) -> Result<()> {
        let db = self.pg.scenario_database("latency").await?;
        let slot = format!("{PREFIX}latency_alo");
        db.create_slot(&slot).await?;
        let watch = db.watch(&slot).await?;
        let topic_prefix = self.topic_prefix("latency");
        let topic = format!("{topic_prefix}.{TABLE}");
        let run = WorkerRun {
            name: format!("{}-latency", self.run_id),
            database: &db.database,
            slot: &slot,
            topic_prefix,
            delivery: Delivery::AtLeastOnce,
            snapshot: SnapshotMode::Never,
            stream_only: None,
            polling: None,
            notify: None,
        };
        let mut worker = self.worker.spawn(&run, &self.pids)?;
        let result = async {
            let spawned = Instant::now();
            while !watch.state().await?.active {
                worker.check_alive()?;
                if spawned.elapsed() > Duration::from_secs(90) {
                    bail!("the worker did not start streaming within 90s");
                }
                tokio::time::sleep(POLL).await;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let consumer = self.kafka.arrivals(&topic, stop.clone())?;
            // Let the consumer join before the first commit.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let duration = Duration::from_secs(self.scaled(30, 5));
            let warmup_us = 2_000_000;
            let start_us = now_us();
            let (sent, took) = paced_writer(
                &self.pg,
                &db.database,
                TABLE,
                LATENCY_RATE,
                duration,
                4,
                &Arc::new(AtomicBool::new(false)),
            )
            .await?;
            // Give the tail time to arrive, then stop the consumer.
            tokio::time::sleep(Duration::from_secs(3)).await;
            worker.check_alive()?;
            stop.store(true, Ordering::Relaxed);
            let arrivals = consumer
                .join()
                .map_err(|_| anyhow::anyhow!("the latency consumer panicked"))??;
            Ok((sent, took, start_us + warmup_us, arrivals))
        }
        .await;
        worker.stop(Duration::from_secs(30)).await?;
        drop(watch);
        db.drop_slot(&slot).await?;
        db.drop().await?;
        let (sent, took, after_us, arrivals) = result?;
        let steady: Vec<&Arrival> = arrivals
            .iter()
            .filter(|a| a.commit_us >= after_us)
            .collect();
        let mut received: Vec<f64> = steady
            .iter()
            .map(|a| (a.received_us - a.commit_us) as f64 / 1000.0)
            .collect();
        let mut created: Vec<f64> = steady
            .iter()
            .filter_map(|a| {
                a.create_time_ms
                    .map(|t| (t * 1000 - a.commit_us) as f64 / 1000.0)
            })
            .collect();
        if received.is_empty() {
            bail!("no record reached the latency consumer");
        }
        write_arrivals(&self.worker.dir.join("latency.csv"), &arrivals)?;
        received.sort_by(f64::total_cmp);
        created.sort_by(f64::total_cmp);
        let rate = per_s(sent, took);
        log(format!(
            "latency: {sent} single-row transactions at {rate:.0}/s, {} records read back ({} after warm-up)",
            arrivals.len(),
            steady.len()
        ));
        if (arrivals.len() as u64) < sent {
            self.notes.push(format!(
                "latency: only {} of {sent} records reached the consumer within 3 s of the last commit",
                arrivals.len()
            ));
        }
        self.notes.push(format!(
            "latency.*: commit time = source.ts_us (PostgreSQL's commit timestamp); arrival = when a read_committed consumer received the record (same host clock), so it includes the producer's linger, the broker's append and the fetch — what a downstream consumer sees; the writer (synchronous_commit = on, PostgreSQL's default, set in every benchmark database: the stack's off would hold each commit up to wal_writer_delay = 200 ms before a walsender may send it) achieved {rate:.0} tx/s over {:.0}s, first 2 s dropped",
            took.as_secs_f64()
        ));
        self.figures.push(Figure::alone(
            "latency.commit_to_consumer_p50",
            "ms",
            percentile(&received, 0.50),
            vec![Goal::None],
        ));
        self.figures.push(Figure::alone(
            "latency.commit_to_consumer_p99",
            "ms",
            percentile(&received, 0.99),
            vec![Goal::AtMost(goals::P99_MS)],
        ));
        if !created.is_empty() {
            self.figures.push(Figure::alone(
                "latency.commit_to_producer_send_p99",
                "ms",
                percentile(&created, 0.99),
                vec![Goal::None],
            ));
        }
        self.figures.push(Figure::alone(
            "latency.writer_rate",
            "tx/s",
            rate,
            vec![Goal::AtLeast(LATENCY_RATE * 0.95)],
        ));
        Ok(())
    }

    /// Peak memory while streaming one ~1 GB transaction.
    pub async fn large_transaction(&mut self) -> Result<()> {
        let rows_wanted = self.scaled(5_000_000, 1000);
        let mut db = self.pg.scenario_database("large").await?;
        let slot = format!("{PREFIX}large_alo");
        db.create_slot(&slot).await?;
        let t = Instant::now();
        let rows = db.load(1, u32::try_from(rows_wanted)?).await? + 1;
        let end = db.end_marker().await?;
        let size: i64 = db
            .client
            .query_one(&format!("SELECT pg_table_size('{TABLE}')"), &[])
            .await?
            .get(0);
        log(format!(
            "large transaction: {rows} rows ({:.0} MiB of table) in {:.1}s",
            size as f64 / 1048576.0,
            t.elapsed().as_secs_f64()
        ));
        let run = self
            .siphon_stream(
                &db,
                &slot,
                "large-alo",
                Delivery::AtLeastOnce,
                end,
                Duration::from_secs(900),
            )
            .await;
        db.drop_slot(&slot).await?;
        db.drop().await?;
        let run = run?;
        log(format!(
            "large transaction: siphon {:.0} events/s, VmHWM {:.1} MiB",
            per_s(rows, run.elapsed),
            mib(run.hwm_kib)
        ));
        self.figures.push(Figure::alone(
            "memory.peak_large_txn",
            "MiB",
            mib(run.hwm_kib),
            vec![Goal::AtMost(goals::RSS_LARGE_TXN_MIB)],
        ));
        self.figures.push(Figure::alone(
            "stream.large_txn.at_least_once",
            "events/s",
            per_s(rows, run.elapsed),
            vec![Goal::None],
        ));
        self.notes.push(format!(
            "memory.peak_large_txn: VmHWM of the worker streaming one transaction of {rows} rows ({:.0} MiB of table data), at least once, default maxTransactionMemory",
            size as f64 / 1048576.0
        ));
        Ok(())
    }

    /// Initial snapshot of a table into Kafka against COPY of the same table.
    pub async fn backfill(&mut self) -> Result<()> {
        if !self.repo.join("worker/src/backfill").is_dir() {
            self.notes.push(
                "backfill: skipped, worker/src/backfill/ does not exist in this build".into(),
            );
            return Ok(());
        }
        let rows = self.scaled(1_000_000, 1000);
        let mut db = self.pg.scenario_database("backfill").await?;
        db.fill(rows).await?;
        db.client.batch_execute("VACUUM ANALYZE orders").await?;
        let copy = reference::copy_out(&self.tools, &self.pg, &db.database, TABLE).await?;
        // What the operator provisions for a backfilling capture (the worker
        // on its own asks for it; see worker/src/backfill/plan.rs).
        db.client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {WATERMARKS} (capture text PRIMARY KEY, \
                 watermark text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
                 ALTER PUBLICATION {PUBLICATION} ADD TABLE {WATERMARKS}"
            ))
            .await
            .context("creating the watermark table")?;
        // A table written to while the backfill runs, captured without a
        // backfill: its commit-to-consumer delay is the streaming lag.
        db.client
            .batch_execute(&format!(
                "CREATE TABLE {TICKS} (LIKE {TABLE} INCLUDING ALL);
                 ALTER PUBLICATION {PUBLICATION} ADD TABLE {TICKS}"
            ))
            .await
            .context("creating the table written during the backfill")?;
        let slot = format!("{PREFIX}backfill_alo");
        let watch = db.watch(&slot).await;
        let topic_prefix = self.topic_prefix("backfill");
        let topic = format!("{topic_prefix}.{TABLE}");
        let ticks_topic = format!("{topic_prefix}.{TICKS}");
        let run = WorkerRun {
            name: format!("{}-backfill", self.run_id),
            database: &db.database,
            slot: &slot,
            topic_prefix,
            delivery: Delivery::AtLeastOnce,
            snapshot: SnapshotMode::Initial,
            stream_only: Some(TICKS),
            polling: None,
            notify: None,
        };
        let mut worker = self.worker.spawn(&run, &self.pids)?;
        let profile = Profiler::attach(&self.worker.dir, "backfill", worker.pid(), &self.pids)?;
        let spawned = Instant::now();
        let stop_writer = Arc::new(AtomicBool::new(false));
        let stop_consumer = Arc::new(AtomicBool::new(false));
        let mut writer = None;
        let mut consumer = None;
        let result = async {
            let watch = watch?;
            // The clock starts when the worker streams, unless rows already
            // reached Kafka by then (then at the spawn: conservative).
            let mut started = None;
            let deadline = Duration::from_secs(600);
            loop {
                worker.check_alive()?;
                if started.is_none() && watch.state().await.is_ok_and(|s| s.active) {
                    let early = self.kafka.high_watermark(&topic)? > 0;
                    started = Some(if early { spawned } else { Instant::now() });
                    consumer = Some(self.kafka.arrivals(&ticks_topic, stop_consumer.clone())?);
                    let (pg, database, stop) =
                        (self.pg.clone(), db.database.clone(), stop_writer.clone());
                    writer = Some(tokio::spawn(async move {
                        // Let the consumer join before the first commit.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        paced_writer(
                            &pg,
                            &database,
                            TICKS,
                            BACKFILL_WRITE_RATE,
                            Duration::from_secs(600),
                            1,
                            &stop,
                        )
                        .await
                    }));
                }
                if self.kafka.high_watermark(&topic)? >= rows as i64 {
                    return Ok(Instant::now() - started.unwrap_or(spawned));
                }
                if spawned.elapsed() > deadline {
                    bail!("backfill of {rows} rows not in Kafka after {deadline:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        .await;
        let done_us = now_us();
        let cpu = worker.pid().and_then(cpu_time);
        let switches = worker.pid().and_then(context_switches);
        let hwm_kib = worker.memory().map_or(0, |m| m.hwm_kib);
        if let Some(p) = profile {
            p.finish().await;
        }
        stop_writer.store(true, Ordering::Relaxed);
        let written = match writer {
            Some(w) => w.await?.map(|(n, _)| n),
            None => Ok(0),
        };
        // The last ticks' way to the consumer.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop_consumer.store(true, Ordering::Relaxed);
        let arrivals = match consumer {
            Some(c) => c
                .join()
                .map_err(|_| anyhow::anyhow!("the backfill lag consumer panicked"))?,
            None => Ok(Vec::new()),
        };
        worker.stop(Duration::from_secs(30)).await?;
        db.drop_slot(&slot).await?;
        db.drop().await?;
        let took = result?;
        let (written, arrivals) = (written?, arrivals?);
        // Streamed changes committed while the backfill ran.
        let mut lag: Vec<f64> = arrivals
            .iter()
            .filter(|a| a.commit_us <= done_us)
            .map(|a| (a.received_us - a.commit_us) as f64 / 1000.0)
            .collect();
        lag.sort_by(f64::total_cmp);
        let (siphon, reference) = (per_s(rows, took), per_s(rows, copy));
        log(format!(
            "backfill: siphon {siphon:.0} rows/s ({:.2}s; worker CPU {:.2}s, {} context switches, VmHWM {:.1} MiB), COPY {reference:.0} rows/s ({:.2}s); {} of {written} concurrent changes measured, lag max {:.0} ms",
            took.as_secs_f64(),
            cpu.unwrap_or_default().as_secs_f64(),
            switches.unwrap_or_default(),
            hwm_kib as f64 / 1024.0,
            copy.as_secs_f64(),
            lag.len(),
            lag.last().copied().unwrap_or(f64::NAN),
        ));
        if lag.is_empty() {
            self.notes.push(
                "backfill.stream_lag_*: no change written during the backfill reached the consumer"
                    .into(),
            );
        } else {
            self.figures.push(Figure::alone(
                "backfill.stream_lag_p99",
                "ms",
                percentile(&lag, 0.99),
                vec![Goal::AtMost(goals::BACKFILL_STREAM_LAG_MS)],
            ));
            self.figures.push(Figure::alone(
                "backfill.stream_lag_max",
                "ms",
                percentile(&lag, 1.0),
                vec![Goal::AtMost(goals::BACKFILL_STREAM_LAG_MS)],
            ));
        }
        self.figures.push(Figure::alone(
            "backfill.rss_peak",
            "MiB",
            hwm_kib as f64 / 1024.0,
            vec![Goal::AtMost(goals::RSS_STEADY_MIB)],
        ));
        let chunk_size = crate::worker::chunk_size_override().map_or_else(
            || "the default chunk size".to_string(),
            |n| format!("chunkSize {n} (BENCH_CHUNK_SIZE)"),
        );
        self.notes.push(format!(
            "backfill.*: {rows} rows of ~200 bytes, {chunk_size}; meanwhile {BACKFILL_WRITE_RATE:.0} single-row tx/s into {TICKS} (captured, not backfilled): stream_lag = their commit-to-consumer delay while the backfill ran; rss_peak = the worker's VmHWM at the end of the backfill"
        ));
        self.figures.push(Figure::against(
            "backfill.initial_snapshot",
            "rows/s",
            siphon,
            "COPY to /dev/null",
            reference,
            vec![
                Goal::AtLeast(goals::BACKFILL_ROWS_PER_S),
                Goal::RatioAtLeast(goals::BACKFILL_COPY_RATIO),
            ],
        ));
        Ok(())
    }
}

/// Single-row transactions into `table` at `rate` per second for `duration`
/// (or until `stop`), over `conns` connections; returns how many were
/// committed and how long it took.
pub(crate) async fn paced_writer(
    pg: &Pg,
    database: &str,
    table: &str,
    rate: f64,
    duration: Duration,
    conns: usize,
    stop: &Arc<AtomicBool>,
) -> Result<(u64, Duration)> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let client = pg.connect(database).await?;
        let stmt = client
            .prepare(&format!(
                "INSERT INTO {table} SELECT {} FROM (SELECT $1::int8 AS g) s",
                crate::postgres::ROW_EXPR
            ))
            .await?;
        let per_conn = rate / conns as f64;
        let stop = Arc::clone(stop);
        tasks.push(tokio::spawn(async move {
            let mut sent: u64 = 0;
            loop {
                let elapsed = start.elapsed();
                if elapsed >= duration || stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = (elapsed.as_secs_f64() * per_conn) as u64;
                while sent < due {
                    let id = i64::try_from(sent * conns as u64 + c as u64 + 1)?;
                    client.execute(&stmt, &[&id]).await?;
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok::<u64, anyhow::Error>(sent)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok((total, start.elapsed()))
}

/// Every record of the latency run, for a closer look (`target/bench/run/latency.csv`).
fn write_arrivals(path: &std::path::Path, arrivals: &[Arrival]) -> Result<()> {
    use std::fmt::Write as _;
    let mut text = String::from("commit_us,received_us,create_time_ms\n");
    for a in arrivals {
        let _ = writeln!(
            text,
            "{},{},{}",
            a.commit_us,
            a.received_us,
            a.create_time_ms.map_or(String::new(), |t| t.to_string())
        );
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
