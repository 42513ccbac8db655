//! The `client` scenario: Siphon's own logical replication client against the
//! maintained crate `pgwire-replication`, with pg_recvlogical as the
//! reference, all three on the same WAL.
//!
//! Three pgoutput slots are created before the workload (single-row
//! transactions of the bench's ~200-byte rows), then each reader in turn
//! streams its slot up to the end marker's commit:
//!
//! ```text
//!  pg_recvlogical ─► /dev/null                          (reference, reference.rs)
//!  siphon_worker::replication::ReplicationConnection ─► Decoder ─► Assembler ─► count inserts
//!  pgwire_replication::ReplicationClient ─► (mpsc) ─► Decoder ─► Assembler ─► count inserts
//! ```
//!
//! Both in-process clients decode every message into Siphon's change types
//! (`TxEvent::Change`) and nothing goes to Kafka, so the figures compare the
//! replication transport plus the same decoding work. pgwire-replication
//! hands out raw XLogData bytes for row messages and parses Begin, Commit and
//! logical messages itself into events; those are turned back into Siphon's
//! `pgoutput::Message` values so the same assembler sees the same stream.
//!
//! Both confirm as a real consumer would: the end LSN of the last decoded
//! commit, at most every [`CONFIRM_INTERVAL`] while data flows (Siphon's
//! worker confirms on the same cadence), at once when the server asks for a
//! reply. A client's clock starts when its stream started and stops when it
//! has decoded the end marker's commit. Correctness: each must have counted
//! exactly the rows loaded, and the slot's `confirmed_flush_lsn` must reach
//! the end, or the scenario fails.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use siphon_worker::change::{Lsn as SiphonLsn, Op};
use siphon_worker::replication::pgoutput::pg_to_unix_us;
use siphon_worker::replication::{
    Assembler, AssemblerConfig, ConnectParams, Decoder, Message, ReplicationConnection,
    ReplicationMessage, ReplicationOptions, SslMode, TxEvent, choose_protocol,
};

use crate::postgres::{BenchDb, Lsn, POLL, PREFIX, PUBLICATION, WalsenderCpu, cpu_time};
use crate::reference;
use crate::scenarios::{Bench, log};
use crate::summary::{Figure, Goal};

/// How often a client confirms while data flows: Siphon's worker confirms
/// acknowledged transactions at most every 10 ms (`CONFIRM_INTERVAL` in
/// worker/src/logical.rs); pgwire-replication gets the same as its
/// `status_interval`.
const CONFIRM_INTERVAL: Duration = Duration::from_millis(10);
/// Buffered streamed-transaction memory of the assembler (none here: the
/// transactions are small).
const ASSEMBLER_MEMORY: usize = 64 << 20;

/// How one in-process client run went.
struct ClientRun {
    /// From the stream's start to the end marker's commit decoded.
    elapsed: Duration,
    /// Insert changes decoded.
    inserts: u64,
    /// Transactions committed (Commit events out of the assembler).
    commits: u64,
    /// CPU time of this (benchmark) process during the run: the client, its
    /// decoding and the runtime; nothing else runs in it meanwhile.
    cpu: Option<Duration>,
    walsender_cpu: Option<Duration>,
}

/// Counts what the assembler hands on and remembers the position to confirm.
struct Counter {
    decoder: Decoder,
    assembler: Assembler,
    inserts: u64,
    commits: u64,
    /// End LSN of the last commit: what may be confirmed.
    confirmable: SiphonLsn,
}

impl Counter {
    fn new(spill_dir: std::path::PathBuf) -> Result<Self> {
        Ok(Self {
            decoder: Decoder::new(),
            assembler: Assembler::new(AssemblerConfig {
                max_memory: ASSEMBLER_MEMORY,
                spill_dir,
                key_columns: Default::default(),
            })
            .context("creating the assembler")?,
            inserts: 0,
            commits: 0,
            confirmable: SiphonLsn(0),
        })
    }

    /// A raw pgoutput message.
    fn decode(&mut self, wal_start: SiphonLsn, data: &bytes::Bytes) -> Result<()> {
        let message = self
            .decoder
            .decode(data)
            .with_context(|| format!("decoding the pgoutput message at {wal_start}"))?;
        self.handle(wal_start, message)
    }

    /// A decoded message (what pgwire-replication parses itself is rebuilt
    /// into one).
    fn handle(&mut self, wal_start: SiphonLsn, message: Message) -> Result<()> {
        for event in self
            .assembler
            .handle(wal_start, message)
            .context("assembling")?
        {
            match event.context("replaying")? {
                TxEvent::Change(change) if change.op == Op::Insert => self.inserts += 1,
                TxEvent::Commit { end_lsn, .. } => {
                    self.commits += 1;
                    self.confirmable = end_lsn;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Without pg_walinspect the end is an insert position past the marker's
    /// commit, which no Commit reaches: then a keepalive at or past it, once
    /// every row is decoded, ends the stream (as pg_recvlogical's `--endpos`
    /// does on keepalives).
    fn done_at_keepalive(&self, wal_end: SiphonLsn, end: SiphonLsn, rows: u64) -> bool {
        wal_end >= end && self.inserts >= rows
    }
}

fn per_s(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("?".into(), |d| format!("{:.2}s", d.as_secs_f64()))
}

/// CPU time of this process so far.
fn own_cpu() -> Option<Duration> {
    cpu_time(std::process::id())
}

impl Bench {
    /// The `client` scenario (see the module documentation).
    pub async fn client(&mut self) -> Result<()> {
        let txns = self.scaled(200_000, 100);
        let mut db = self.pg.scenario_database("client").await?;
        let readers = ["ref", "siphon", "pgwire"];
        let slots = readers.map(|r| format!("{PREFIX}client_{r}"));
        for s in &slots {
            db.create_slot(s).await?;
        }
        let t = Instant::now();
        let rows = db.load(txns, 1).await? + 1;
        let end = db.end_marker().await?;
        log(format!(
            "client: wrote {rows} rows in {rows} transactions in {:.1}s; readers stop at {end}",
            t.elapsed().as_secs_f64()
        ));
        let result = self.client_runs(&db, &slots, rows, end).await;
        for s in &slots {
            db.drop_slot(s).await?;
        }
        db.drop().await?;
        result
    }

    async fn client_runs(
        &mut self,
        db: &BenchDb,
        slots: &[String; 3],
        rows: u64,
        end: Lsn,
    ) -> Result<()> {
        let timeout = Duration::from_secs(600);
        let reference_run =
            reference::recvlogical(&self.tools, db, &slots[0], end, &self.pids, timeout)
                .await
                .context("pg_recvlogical")?;
        db.drop_slot(&slots[0]).await?;
        let reference = per_s(rows, reference_run.elapsed);
        log(format!(
            "client: pg_recvlogical {reference:.0} events/s ({:.2}s; its walsender CPU {})",
            reference_run.elapsed.as_secs_f64(),
            secs(reference_run.walsender_cpu)
        ));

        let siphon = tokio::time::timeout(timeout, self.siphon_client(db, &slots[1], end, rows))
            .await
            .map_err(|_| anyhow::anyhow!("Siphon's client did not reach {end} within {timeout:?}"))?
            .context("Siphon's client")?;
        db.drop_slot(&slots[1]).await?;
        let pgwire = tokio::time::timeout(timeout, self.pgwire_client(db, &slots[2], end, rows))
            .await
            .map_err(|_| {
                anyhow::anyhow!("pgwire-replication did not reach {end} within {timeout:?}")
            })?
            .context("pgwire-replication")?;
        db.drop_slot(&slots[2]).await?;

        let mut wrong = Vec::new();
        for (name, figure, run) in [
            ("siphon", "client.siphon_vs_pg_recvlogical", &siphon),
            (
                "pgwire-replication",
                "client.pgwire_replication_vs_pg_recvlogical",
                &pgwire,
            ),
        ] {
            let rate = per_s(run.inserts, run.elapsed);
            log(format!(
                "client: {name} {rate:.0} events/s ({:.2}s; {} inserts in {} transactions; \
                 process CPU {}; its walsender CPU {}), ratio to pg_recvlogical {:.2}",
                run.elapsed.as_secs_f64(),
                run.inserts,
                run.commits,
                secs(run.cpu),
                secs(run.walsender_cpu),
                rate / reference
            ));
            if run.inserts != rows {
                wrong.push(format!("{name} counted {} inserts of {rows}", run.inserts));
            }
            self.figures.push(Figure::against(
                figure,
                "events/s",
                rate,
                "pg_recvlogical",
                reference,
                vec![Goal::None],
            ));
        }
        self.notes.push(format!(
            "client.*: {rows} single-row transactions read in-process up to the end marker's commit and decoded into Siphon's changes (no Kafka); \
             pgwire-replication 0.5 hands out raw XLogData for row messages and its own Begin/Commit events, decoded with Siphon's pgoutput decoder and assembler, \
             so the comparison is of the transport (it always asks for proto_version 1; Siphon's client asks for {} as the worker does); \
             both confirm every {} ms; process CPU siphon {}, pgwire-replication {}; walsender CPU pg_recvlogical {}, siphon {}, pgwire-replication {}",
            choose_protocol(150_000).proto_version,
            CONFIRM_INTERVAL.as_millis(),
            secs(siphon.cpu),
            secs(pgwire.cpu),
            secs(reference_run.walsender_cpu),
            secs(siphon.walsender_cpu),
            secs(pgwire.walsender_cpu),
        ));
        if !wrong.is_empty() {
            bail!("wrong counts: {}", wrong.join("; "));
        }
        Ok(())
    }

    /// Siphon's client on `slot` until `end`, then confirms `end` and closes.
    async fn siphon_client(
        &self,
        db: &BenchDb,
        slot: &str,
        end: Lsn,
        rows: u64,
    ) -> Result<ClientRun> {
        let watch = db.watch(slot).await?;
        let mut params = ConnectParams::new(&self.pg.host, &self.pg.user, &db.database);
        params.port = self.pg.port;
        params.password = Some(self.pg.password.clone());
        params.ssl_mode = SslMode::Disable;
        let mut counter = Counter::new(self.worker.dir.join("spill").join("client-siphon"))?;
        let cpu_before = own_cpu();
        let mut conn = ReplicationConnection::connect(&params)
            .await
            .context("connecting")?;
        let version = conn.server_version_num().await?;
        let options = ReplicationOptions {
            proto: choose_protocol(version),
            publication_names: vec![PUBLICATION.to_owned()],
        };
        conn.start_replication(slot, SiphonLsn(0), &options)
            .await
            .context("START_REPLICATION")?;
        let started = Instant::now();
        let mut walsender = WalsenderCpu::default();
        walsender.observe(&watch.state().await?);
        let end_lsn = SiphonLsn(end.0);
        let mut confirmed = SiphonLsn(0);
        let mut last_confirm = Instant::now();
        // The highest WAL position the server said it sent (keepalives).
        let mut received = SiphonLsn(0);
        loop {
            match conn.next_message().await? {
                ReplicationMessage::XLogData {
                    wal_start, data, ..
                } => {
                    counter.decode(wal_start, &data)?;
                    if counter.confirmable >= end_lsn {
                        break;
                    }
                    if counter.confirmable > confirmed && last_confirm.elapsed() >= CONFIRM_INTERVAL
                    {
                        confirmed = counter.confirmable;
                        conn.send_standby_status(confirmed, confirmed, confirmed, false)
                            .await?;
                        last_confirm = Instant::now();
                    }
                }
                ReplicationMessage::PrimaryKeepalive {
                    wal_end,
                    reply_requested,
                    ..
                } => {
                    received = received.max(wal_end);
                    if reply_requested {
                        confirmed = counter.confirmable;
                        conn.send_standby_status(
                            received.max(confirmed),
                            confirmed,
                            confirmed,
                            false,
                        )
                        .await?;
                        last_confirm = Instant::now();
                    }
                    if counter.done_at_keepalive(wal_end, end_lsn, rows) {
                        break;
                    }
                }
            }
        }
        let elapsed = started.elapsed();
        let cpu = own_cpu().zip(cpu_before).map(|(a, b)| a.saturating_sub(b));
        let state = watch.state().await?;
        walsender.observe(&state);
        let last = counter.confirmable;
        conn.send_standby_status(last, last, last, false).await?;
        conn.close().await.context("closing the stream")?;
        // The slot kept what the client confirmed.
        wait_confirmed(db, slot, end).await?;
        Ok(ClientRun {
            elapsed,
            inserts: counter.inserts,
            commits: counter.commits,
            cpu,
            walsender_cpu: walsender.used(),
        })
    }

    /// pgwire-replication on `slot` until `end`, then confirms `end` and stops.
    async fn pgwire_client(
        &self,
        db: &BenchDb,
        slot: &str,
        end: Lsn,
        rows: u64,
    ) -> Result<ClientRun> {
        let watch = db.watch(slot).await?;
        let mut counter = Counter::new(self.worker.dir.join("spill").join("client-pgwire"))?;
        let config = ReplicationConfig::new(
            self.pg.host.clone(),
            self.pg.user.clone(),
            self.pg.password.clone(),
            db.database.clone(),
            slot.to_owned(),
            PUBLICATION,
        )
        .with_port(self.pg.port)
        .with_tls(TlsConfig::disabled())
        .with_application_name("siphon-bench-pgwire")
        // The same session settings Siphon's client sends (text values in one format).
        .with_options(
            "-c DateStyle=ISO -c IntervalStyle=postgres -c TimeZone=UTC -c extra_float_digits=3",
        )
        .with_status_interval(CONFIRM_INTERVAL);
        let cpu_before = own_cpu();
        let mut client = ReplicationClient::connect(config)
            .await
            .context("connecting")?;
        client.wait_started().await.context("START_REPLICATION")?;
        let started = Instant::now();
        let mut walsender = WalsenderCpu::default();
        walsender.observe(&watch.state().await?);
        let end_lsn = SiphonLsn(end.0);
        loop {
            let Some(event) = client.recv().await? else {
                bail!("the stream ended before {end}");
            };
            match event {
                ReplicationEvent::XLogData {
                    wal_start, data, ..
                } => counter.decode(SiphonLsn(wal_start.as_u64()), &data)?,
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => counter.handle(
                    SiphonLsn(final_lsn.as_u64()),
                    Message::Begin {
                        final_lsn: SiphonLsn(final_lsn.as_u64()),
                        commit_ts_us: pg_to_unix_us(commit_time_micros),
                        xid,
                    },
                )?,
                ReplicationEvent::Commit {
                    lsn,
                    end_lsn: commit_end,
                    commit_time_micros,
                } => {
                    counter.handle(
                        SiphonLsn(lsn.as_u64()),
                        Message::Commit {
                            // The crate drops the flags (always 0 so far).
                            flags: 0,
                            commit_lsn: SiphonLsn(lsn.as_u64()),
                            end_lsn: SiphonLsn(commit_end.as_u64()),
                            commit_ts_us: pg_to_unix_us(commit_time_micros),
                        },
                    )?;
                    // Cheap (an atomic); the crate's worker sends it at most
                    // every status_interval.
                    client.update_applied_lsn(commit_end);
                    if counter.confirmable >= end_lsn {
                        break;
                    }
                }
                ReplicationEvent::Message {
                    transactional,
                    lsn,
                    prefix,
                    content,
                } => counter.handle(
                    SiphonLsn(lsn.as_u64()),
                    Message::Message {
                        xid: None,
                        transactional,
                        lsn: SiphonLsn(lsn.as_u64()),
                        prefix,
                        content,
                    },
                )?,
                // Replies to keepalives are the crate's job.
                ReplicationEvent::KeepAlive { wal_end, .. }
                    if counter.done_at_keepalive(SiphonLsn(wal_end.as_u64()), end_lsn, rows) =>
                {
                    break;
                }
                ReplicationEvent::StoppedAt { reached } => {
                    bail!("stopped at {reached} without a stop position set");
                }
                ReplicationEvent::KeepAlive { .. } => {}
            }
        }
        let elapsed = started.elapsed();
        let cpu = own_cpu().zip(cpu_before).map(|(a, b)| a.saturating_sub(b));
        walsender.observe(&watch.state().await?);
        // stop() sends CopyDone without a last standby status: wait until the
        // slot shows the applied position, as a consumer shutting down would.
        let confirmed = wait_confirmed(db, slot, end).await;
        client.shutdown().await.context("stopping the stream")?;
        confirmed?;
        Ok(ClientRun {
            elapsed,
            inserts: counter.inserts,
            commits: counter.commits,
            cpu,
            walsender_cpu: walsender.used(),
        })
    }
}

/// The slot's `confirmed_flush_lsn` reached `end` (within 5 s).
async fn wait_confirmed(db: &BenchDb, slot: &str, end: Lsn) -> Result<()> {
    let watch = db.watch(slot).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let confirmed = watch.state().await?.confirmed;
        if confirmed >= end {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("slot {slot} confirmed only {confirmed}, not {end}");
        }
        tokio::time::sleep(POLL).await;
    }
}
