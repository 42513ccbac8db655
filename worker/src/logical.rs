//! The logical capture loop: WAL in, Kafka records out, positions confirmed.
//!
//! ```text
//!  replication stream ──► decode ──► assemble ──► encode ──► KafkaSink ──► Kafka
//!          ▲                                                    │ acks
//!          └───── standby status: flush = sink.confirmable() ◄──┘
//! ```
//!
//! One task, one `tokio::select!` whose arms are taken in priority order:
//! 1. shutdown: stop reading, drain the sink, confirm, close the stream;
//! 2. Kafka delivery reports: confirm the newest fully acknowledged position;
//! 3. the status tick: tell the server how far we are (and answer keepalives);
//! 4. the heartbeat tick: emit a logical message so an idle or filtered
//!    database still moves the slot;
//! 5. the backfill reader: rows of the chunk being read, or its failure;
//! 6. the next replication message.
//!
//! Every streamed change is first offered to the backfill
//! ([`crate::backfill`]): watermark rows are never sent, and at a chunk's high
//! watermark the chunk's surviving rows go out as `op: r` before anything
//! that follows in the stream.
//!
//! **Invariant (at least once).** The LSN sent as `flush` is always a value
//! that came out of [`KafkaSink::confirmable`]: the end of a source
//! transaction all of whose records, and all records before them, Kafka has
//! acknowledged. PostgreSQL therefore only recycles WAL that Kafka holds.
//!
//! **Invariant (exactly once).** Records go out in Kafka transactions; each
//! Kafka transaction ends with the position record (the end LSN of the last
//! source transaction in it) in the offsets topic. A restart reads that
//! position and skips every source transaction that ends at or before it, so
//! a `read_committed` consumer sees each change once. PostgreSQL is told
//! `flush` only after the Kafka transaction committed.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use siphon_crds::capture::{Delivery, Operation};
use siphon_crds::conditions::{self, reason};
use tokio::sync::watch;

use crate::backfill::{Backfill, Offer};
use crate::capture::{CaptureError, Stopped, connect_params, kafka_ids, sql_connect, start_kafka};
use crate::change::{Change, Lsn, Op};
use crate::config::Validated;
use crate::metrics::Metrics;
use crate::offsets::Position;
use crate::progress::Progress;
use crate::record::{EncoderSettings, Record, RecordEncoder};
use crate::replication::{
    Assembler, AssemblerConfig, Decoder, ReplicationConnection, ReplicationMessage,
    ReplicationOptions, TxEvent, choose_protocol,
};
use crate::sink::{KafkaSink, options};
use crate::values::registry::TypeRegistry;

/// Prefix of the heartbeat messages the worker emits (and skips on receipt).
pub const HEARTBEAT_PREFIX: &str = "siphon.heartbeat";
/// How often the server hears from us even when nothing is confirmed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest time between two confirmations sent on Kafka acknowledgements.
const CONFIRM_INTERVAL: Duration = Duration::from_millis(10);
/// Longest a Kafka transaction stays open in exactly-once mode.
const EOS_COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Most records in one Kafka transaction in exactly-once mode.
const EOS_MAX_RECORDS: u64 = 50_000;

/// Check the slot before streaming: present, not lost, not active elsewhere.
/// Creates it only when the configuration says so (standalone use).
pub async fn check_slot(sql: &tokio_postgres::Client, v: &Validated) -> Result<(), CaptureError> {
    let slot = &v.config.logical.slot_name;
    let state = siphon_postgres::slot::state(sql, slot)
        .await
        .map_err(|source| CaptureError::Sql {
            what: "reading pg_replication_slots",
            source,
        })?;
    match state {
        None if v.config.logical.create_slot => {
            siphon_postgres::slot::create(sql, slot, false)
                .await
                .map_err(|source| CaptureError::Sql {
                    what: "creating the slot",
                    source,
                })?;
            tracing::info!(%slot, "created replication slot");
            Ok(())
        }
        None => Err(CaptureError::SlotMissing { slot: slot.clone() }),
        Some(state) if state.lost => Err(CaptureError::SlotLost { slot: slot.clone() }),
        Some(siphon_postgres::slot::SlotState {
            active_pid: Some(pid),
            ..
        }) => Err(CaptureError::SlotActive {
            slot: slot.clone(),
            pid,
        }),
        Some(_) => Ok(()),
    }
}

fn op_allowed(ops: &[Operation], op: Op) -> bool {
    if ops.is_empty() {
        return true;
    }
    let wanted = match op {
        Op::Insert => Operation::Insert,
        Op::Update => Operation::Update,
        Op::Delete => Operation::Delete,
        Op::Truncate => Operation::Truncate,
        Op::Read => return true,
    };
    ops.contains(&wanted)
}

/// State of the loop between messages.
struct Loop<'a> {
    v: &'a Validated,
    metrics: &'a Metrics,
    progress: &'a Progress,
    sink: KafkaSink<Lsn>,
    encoder: RecordEncoder,
    records: Vec<Record>,
    /// Largest WAL position received.
    received: Lsn,
    /// Position last sent as `flush`.
    flushed: Lsn,
    /// Source transaction open in the stream.
    in_txn: bool,
    /// Exactly once: transactions ending at or before this LSN (committing
    /// before it) were delivered.
    skip_through: Lsn,
    /// Exactly once: the Kafka transaction is open.
    kafka_txn_open: bool,
    kafka_txn_started: Instant,
    kafka_txn_records: u64,
    /// Exactly once: end LSN of the last source transaction in the open Kafka transaction.
    kafka_txn_last: Option<Lsn>,
    position: Position,
    exactly_once: bool,
    last_commit_ts_us: i64,
    /// End LSN of the newest source transaction seen.
    last_commit_end: Lsn,
    /// The newest transaction whose commit-to-confirm delay was reported.
    lag_measured: Lsn,
    server_wal_end: Lsn,
    backfill: Backfill,
    /// A backfill chunk went out in the open source transaction (the one
    /// carrying its high watermark).
    chunk_in_txn: bool,
    /// At least once: positions with backfill progress, each waiting until
    /// Kafka holds everything up to its LSN.
    unsaved: VecDeque<(Lsn, Vec<u8>)>,
}

impl Loop<'_> {
    async fn begin_kafka_txn_if_needed(&mut self) -> Result<(), CaptureError> {
        if self.exactly_once && !self.kafka_txn_open {
            self.sink.begin_transaction()?;
            self.kafka_txn_open = true;
            self.kafka_txn_started = Instant::now();
            self.kafka_txn_records = 0;
        }
        Ok(())
    }

    async fn handle_change(&mut self, change: &Change) -> Result<(), CaptureError> {
        if !op_allowed(&self.v.config.logical.operations, change.op) {
            return Ok(());
        }
        self.records.clear();
        self.encoder.encode(change, &mut self.records);
        if self.records.is_empty() {
            return Ok(());
        }
        self.begin_kafka_txn_if_needed().await?;
        self.kafka_txn_records +=
            crate::capture::send_records(&self.sink, self.metrics, &mut self.records).await?;
        Ok(())
    }

    async fn handle_event(&mut self, event: TxEvent) -> Result<(), CaptureError> {
        match event {
            TxEvent::Begin { final_lsn, .. } => {
                self.in_txn = true;
                let _ = final_lsn;
            }
            TxEvent::Change(change) => {
                // `skip_through` is the end LSN of the last delivered source
                // transaction; the next one may commit exactly there (its
                // commit record right after), so only an earlier commit LSN
                // marks a transaction already delivered.
                if self.exactly_once && change.commit_lsn < self.skip_through {
                    return Ok(());
                }
                match self.backfill.offer(&change)? {
                    Offer::Stream => self.handle_change(&change).await?,
                    Offer::Drop => {}
                    Offer::Chunk(chunk) => {
                        for read in &chunk.changes {
                            self.handle_change(read).await?;
                        }
                        self.backfill
                            .chunk_emitted(chunk.summary, &mut self.position, self.metrics)
                            .await?;
                        self.chunk_in_txn = true;
                    }
                    Offer::Reread => self.backfill.reread(&self.position).await?,
                }
            }
            TxEvent::Message(_) => {}
            TxEvent::Commit {
                xid,
                end_lsn,
                commit_ts_us,
                commit_lsn,
            } => {
                self.in_txn = false;
                self.backfill.committed(xid);
                self.last_commit_ts_us = commit_ts_us;
                self.last_commit_end = end_lsn;
                self.metrics.transactions.inc();
                let chunk_done = std::mem::take(&mut self.chunk_in_txn);
                if self.exactly_once {
                    if commit_lsn < self.skip_through {
                        return Ok(());
                    }
                    if !self.kafka_txn_open && !chunk_done {
                        // Nothing of this transaction reached Kafka (filtered
                        // out) and no Kafka transaction is open: its end is
                        // confirmable at once, or the slot would stall.
                        self.sink.close_mark(end_lsn);
                        return Ok(());
                    }
                    self.kafka_txn_last = Some(end_lsn);
                    // A chunk commits at once, with its progress in the position.
                    if chunk_done
                        || (self.kafka_txn_open
                            && (self.kafka_txn_started.elapsed() >= EOS_COMMIT_INTERVAL
                                || self.kafka_txn_records >= EOS_MAX_RECORDS))
                    {
                        self.commit_kafka_txn().await?;
                    }
                } else {
                    self.sink.close_mark(end_lsn);
                    if chunk_done {
                        self.unsaved.push_back((end_lsn, self.position.encode()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Exactly once: write the position and commit the Kafka transaction.
    async fn commit_kafka_txn(&mut self) -> Result<(), CaptureError> {
        let Some(end) = self.kafka_txn_last.take() else {
            return Ok(());
        };
        self.begin_kafka_txn_if_needed().await?;
        self.position.lsn = end.0;
        let payload = self.position.encode();
        let topic = self.v.config.kafka.offsets_topic.clone();
        self.sink
            .send(
                &topic,
                Some(self.v.config.name.as_bytes()),
                Some(&payload),
                &[],
            )
            .await?;
        self.sink
            .commit_transaction(Duration::from_secs(60))
            .await?;
        self.kafka_txn_open = false;
        self.skip_through = end;
        self.sink.close_mark(end);
        Ok(())
    }

    /// At least once: write the newest backfill progress whose chunks Kafka
    /// holds in full (never earlier: a lost chunk would be skipped).
    async fn save_backfill_progress(&mut self) -> Result<(), CaptureError> {
        let Some(confirmable) = self.sink.confirmable() else {
            return Ok(());
        };
        let mut newest = None;
        while self
            .unsaved
            .front()
            .is_some_and(|(lsn, _)| *lsn <= confirmable)
        {
            newest = self.unsaved.pop_front().map(|(_, payload)| payload);
        }
        if let Some(payload) = newest {
            self.write_position(&payload).await?;
        }
        Ok(())
    }

    /// Send a position record to the offsets topic (in the open Kafka
    /// transaction, if any).
    async fn write_position(&mut self, payload: &[u8]) -> Result<(), CaptureError> {
        let topic = self.v.config.kafka.offsets_topic.clone();
        self.sink
            .send(
                &topic,
                Some(self.v.config.name.as_bytes()),
                Some(payload),
                &[],
            )
            .await?;
        Ok(())
    }

    /// The position that may be sent as `flush` now.
    fn confirmable(&mut self) -> Lsn {
        if let Some(lsn) = self.sink.confirmable()
            && lsn > self.flushed
        {
            return lsn;
        }
        self.flushed
    }

    async fn kafka_health(&mut self) {
        crate::capture::kafka_health(&self.sink, self.metrics, self.progress).await;
    }

    async fn send_status(
        &mut self,
        conn: &mut ReplicationConnection,
        reply: bool,
    ) -> Result<(), CaptureError> {
        let flush = self.confirmable();
        conn.send_standby_status(self.received.max(flush), flush, flush, reply)
            .await?;
        // Commit-to-confirm delay of the newest transaction, measured when
        // it is confirmed; with nothing committed still waiting for Kafka,
        // 0: an idle capture that is caught up has no lag (the time since
        // the last commit is not lag).
        let now_us = chrono::Utc::now().timestamp_micros();
        let lag = if self.last_commit_end > self.lag_measured && flush >= self.last_commit_end {
            self.lag_measured = self.last_commit_end;
            (self.last_commit_ts_us > 0)
                .then(|| (now_us - self.last_commit_ts_us).max(0) as f64 / 1e6)
        } else if flush >= self.last_commit_end && self.sink.in_flight() == 0 {
            Some(0.0)
        } else {
            None
        };
        if let Some(lag) = lag {
            self.metrics.lag_seconds.set(lag);
        }
        let advanced = flush > self.flushed;
        if advanced {
            self.flushed = flush;
            self.metrics.confirmed_lsn.set(flush.0 as i64);
        }
        if advanced || lag.is_some() {
            let lag_bytes = self.server_wal_end.0.saturating_sub(flush.0);
            self.metrics.lag_bytes.set(lag_bytes as i64);
            let events = self.metrics.events.get();
            self.progress.update(|p| {
                p.confirmed_lsn = Some(flush.to_string());
                p.events = events;
                p.lag_bytes = Some(lag_bytes);
                if let Some(lag) = lag {
                    p.lag = Some(format!("{lag:.1}s"));
                }
            });
        }
        self.metrics.in_flight.set(self.sink.in_flight() as i64);
        Ok(())
    }
}

/// The captured tables as `(schema, table)`: `schema.*` becomes every table
/// the publication holds in that schema, so that their topics are created
/// like those of tables named one by one.
async fn published_tables(
    sql: &tokio_postgres::Client,
    cfg: &siphon_crds::worker_config::WorkerConfig,
) -> Result<Vec<(String, String)>, CaptureError> {
    let mut out = Vec::new();
    for (schema, table) in cfg.tables.iter().filter_map(|t| t.name.split_once('.')) {
        if table != "*" {
            out.push((schema.to_string(), table.to_string()));
            continue;
        }
        let rows = sql
            .query(
                "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 ORDER BY 1",
                &[&cfg.logical.publication_name, &schema],
            )
            .await
            .map_err(|source| CaptureError::Sql {
                what: "listing the published tables",
                source,
            })?;
        let watermark = cfg.snapshot.watermark_table.split_once('.');
        out.extend(
            rows.iter()
                .map(|r| (schema.to_string(), r.get::<_, String>(0)))
                .filter(|(s, t)| watermark != Some((s.as_str(), t.as_str()))),
        );
    }
    Ok(out)
}

/// Stream until shutdown or an error.
pub async fn run(
    v: &Validated,
    metrics: Arc<Metrics>,
    progress: Progress,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Stopped, CaptureError> {
    let cfg = &v.config;
    let exactly_once = cfg.kafka.delivery == Delivery::ExactlyOnce;
    let (client_id, tx_id) = kafka_ids(v);
    let props = options::producer_properties(&cfg.kafka, &v.secrets, &client_id, tx_id.as_deref());
    tracing::debug!(properties = ?options::redacted(&props), "kafka producer");

    let sql = sql_connect(v).await?;
    let registry = TypeRegistry::load(&sql).await.unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot read pg_type; non-built-in types are encoded as text");
        TypeRegistry::builtin()
    });
    let topic_names: Vec<String> = if cfg.kafka.topics.as_ref().is_some_and(|t| t.create) {
        let encoder = RecordEncoder::new(
            EncoderSettings::from_config(cfg),
            Arc::new(TypeRegistry::builtin()),
        );
        published_tables(&sql, cfg)
            .await?
            .iter()
            .map(|(s, t)| encoder.topic_for(s, t))
            .collect()
    } else {
        Vec::new()
    };
    let (sink, mut position): (KafkaSink<Lsn>, _) = start_kafka(v, &props, &topic_names).await?;

    check_slot(&sql, v).await?;
    // Definite backfill problems (no key, no watermark table) surface here,
    // before anything streams.
    let completed_before = position.completed_request.clone();
    let mut backfill = Backfill::prepare(&sql, v, &mut position, &progress).await?;

    let mut conn = ReplicationConnection::connect(&connect_params(v)).await?;
    let version = conn.server_version_num().await?;
    let mut proto = choose_protocol(version);
    if !cfg.logical.stream_in_progress {
        proto.streaming = false;
    }
    let start = Lsn(0);
    conn.start_replication(
        &cfg.logical.slot_name,
        start,
        &ReplicationOptions {
            proto,
            publication_names: vec![cfg.logical.publication_name.clone()],
        },
    )
    .await?;
    // Chunks are read only now: every watermark lands after the stream's start.
    if backfill.has_work() {
        backfill.start(sql_connect(v).await?, &position).await?;
    }

    let spill_dir = PathBuf::from(&cfg.spill_dir).join(cfg.name.replace('/', "_"));
    let mut assembler = Assembler::new(AssemblerConfig {
        max_memory: usize::try_from(cfg.max_transaction_memory).unwrap_or(usize::MAX),
        spill_dir,
        key_columns: crate::catalog::full_identity_keys(&sql, cfg)
            .await
            .map_err(|source| CaptureError::Sql {
                what: "reading the key columns of REPLICA IDENTITY FULL tables",
                source,
            })?,
    })?;
    let mut decoder = Decoder::new();
    let mut state = Loop {
        v,
        metrics: &metrics,
        progress: &progress,
        sink,
        encoder: RecordEncoder::new(EncoderSettings::from_config(cfg), Arc::new(registry)),
        records: Vec::with_capacity(4),
        received: Lsn(0),
        flushed: Lsn(0),
        in_txn: false,
        skip_through: position.lsn(),
        kafka_txn_open: false,
        kafka_txn_started: Instant::now(),
        kafka_txn_records: 0,
        kafka_txn_last: None,
        position,
        exactly_once,
        last_commit_ts_us: 0,
        last_commit_end: Lsn(0),
        lag_measured: Lsn(0),
        server_wal_end: Lsn(0),
        backfill,
        chunk_in_txn: false,
        unsaved: VecDeque::new(),
    };
    if state.position.completed_request != completed_before {
        // A snapshot request with nothing to read is complete at once.
        let payload = state.position.encode();
        if exactly_once {
            state.sink.begin_transaction()?;
            state.write_position(&payload).await?;
            state
                .sink
                .commit_transaction(Duration::from_secs(60))
                .await?;
        } else {
            state.write_position(&payload).await?;
        }
    }
    if exactly_once && state.skip_through.0 != 0 {
        tracing::info!(lsn = %state.skip_through, "resuming exactly-once capture after the stored position");
    }
    metrics.set_ready(true);
    metrics.kafka_available.set(1);
    progress.set_health(
        conditions::CAPTURING,
        true,
        reason::STREAMING,
        "the worker is streaming changes into Kafka",
    );

    let mut confirm_tick = tokio::time::interval(CONFIRM_INTERVAL);
    confirm_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat_tick = tokio::time::interval(v.derived.heartbeat_interval);
    heartbeat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heartbeat_sql =
        format!("SELECT pg_logical_emit_message(false, '{HEARTBEAT_PREFIX}', now()::text)");

    loop {
        tokio::select! {
            biased;
            // 1. Shutdown: drain and confirm.
            _ = shutdown.changed() => {
                tracing::info!("draining before shutdown");
                if exactly_once {
                    if state.kafka_txn_open && !state.in_txn && state.kafka_txn_last.is_some() {
                        state.commit_kafka_txn().await?;
                    } else if state.kafka_txn_open {
                        state.sink.abort_transaction(Duration::from_secs(30)).await?;
                    }
                }
                state.sink.flush(Duration::from_secs(25)).await?;
                if !exactly_once {
                    state.save_backfill_progress().await?;
                    state.sink.flush(Duration::from_secs(5)).await?;
                }
                state.send_status(&mut conn, false).await?;
                tracing::info!(lsn = %state.flushed, "confirmed before shutdown");
                let _ = conn.close().await;
                return Ok(Stopped::Shutdown);
            }
            // 2. Kafka acks: confirm a complete prefix, at most every CONFIRM_INTERVAL
            //    (a standby status per acknowledged transaction costs this loop
            //    and the walsender more than decoding it does).
            _ = confirm_tick.tick(), if state.sink.in_flight() > 0 || state.confirmable() > state.flushed => {
                state.sink.check()?;
                if state.confirmable() > state.flushed {
                    state.send_status(&mut conn, false).await?;
                }
                if !exactly_once {
                    state.save_backfill_progress().await?;
                }
            }
            // 2b. Exactly once: commit the Kafka transaction once it is due and
            //     no source transaction is open (no later commit would do it).
            _ = tokio::time::sleep_until((state.kafka_txn_started + EOS_COMMIT_INTERVAL).into()),
                if exactly_once && state.kafka_txn_open && !state.in_txn && state.kafka_txn_last.is_some() => {
                state.commit_kafka_txn().await?;
                state.send_status(&mut conn, false).await?;
            }
            // 3. Status to the server; in exactly-once mode, close an idle Kafka transaction.
            _ = status_tick.tick() => {
                state.sink.check()?;
                state.kafka_health().await;
                if exactly_once && state.kafka_txn_open && !state.in_txn
                    && state.kafka_txn_started.elapsed() >= EOS_COMMIT_INTERVAL {
                    state.commit_kafka_txn().await?;
                }
                state.send_status(&mut conn, false).await?;
                if !exactly_once {
                    state.save_backfill_progress().await?;
                }
                metrics.buffered_bytes.set(assembler.buffered_memory() as i64);
            }
            // 4. Heartbeat: a WAL record in our database keeps the slot moving.
            _ = heartbeat_tick.tick() => {
                if let Err(source) = sql.batch_execute(&heartbeat_sql).await {
                    return Err(CaptureError::Sql { what: "writing the heartbeat", source });
                }
            }
            // 5. The backfill reader: the rows of the chunk being read, or why it stopped.
            event = state.backfill.next_event(), if state.backfill.is_reading() => {
                state.backfill.accept(event).await?;
            }
            // 6. The stream.
            msg = conn.next_message() => {
                match msg? {
                    ReplicationMessage::XLogData { wal_start, wal_end, data, .. } => {
                        state.server_wal_end = state.server_wal_end.max(wal_end);
                        state.received = state.received.max(wal_start);
                        let message = decoder.decode(&data)?;
                        for event in assembler.handle(wal_start, message)? {
                            state.handle_event(event?).await?;
                        }
                    }
                    ReplicationMessage::PrimaryKeepalive { wal_end, reply_requested, .. } => {
                        state.server_wal_end = state.server_wal_end.max(wal_end);
                        // Nothing open and nothing in flight: everything up to
                        // the server's end is delivered (idle or filtered WAL).
                        if !state.in_txn && assembler.streamed_transactions() == 0
                            && state.sink.in_flight() == 0 && !state.kafka_txn_open
                            && state.kafka_txn_last.is_none() && wal_end > state.flushed {
                            state.sink.close_mark(wal_end);
                            state.received = state.received.max(wal_end);
                        }
                        if reply_requested {
                            state.send_status(&mut conn, false).await?;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_filter() {
        assert!(op_allowed(&[], Op::Delete));
        assert!(op_allowed(&[Operation::Insert], Op::Insert));
        assert!(!op_allowed(&[Operation::Insert], Op::Delete));
        assert!(
            op_allowed(&[Operation::Insert], Op::Read),
            "backfill reads are never filtered"
        );
    }
}
