//! The logical capture loop: WAL in, Kafka records out, positions confirmed.
//!
//! ```text
//!  replication stream ──► decode ──► assemble ──► encode ──► KafkaSink ──► Kafka
//!          ▲                                                    │ acks
//!          └───── standby status: flush = sink.confirmable() ◄──┘
//! ```
//!
//! [`startup`] connects and prepares everything (its module doc says in
//! which order, and why); this module is the loop. One task, one
//! `tokio::select!` whose arms are taken in priority order:
//! 1. shutdown: stop decoding, then [`drain`]: commit or abort the open
//!    Kafka transaction, wait for Kafka while still answering the server's
//!    keepalives, save, confirm, close the stream;
//! 2. the confirm tick, while records are in flight: confirm the newest
//!    fully acknowledged position (at most every `CONFIRM_INTERVAL`);
//! 3. exactly once: start committing the Kafka transaction once it is due
//!    and no source transaction is open; the stream is read on while Kafka
//!    commits (what is encoded meanwhile waits in [`Output`]), and the
//!    commit's end is its own arm, right after shutdown;
//! 4. the status tick: Kafka's health, the standby status, progress;
//! 5. the heartbeat tick: emit a logical message so an idle or filtered
//!    database still moves the slot;
//! 6. the backfill reader: rows of the chunk being read, or its failure;
//! 7. the next replication message (keepalives answered when asked).
//!
//! What goes to Kafka, and when a position is saved, is
//! [`crate::capture::Output`]'s: the loop tells it where each source
//! transaction ends, and the delivery guarantee decides the rest.
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

mod startup;

pub use startup::check_slot;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use siphon_crds::capture::Operation;
use tokio::sync::watch;

use crate::backfill::{Backfill, Offer};
use crate::capture::{CaptureError, Output, Stopped, announce_capturing, kafka_health, ticker};
use crate::change::{Change, Lsn, Op};
use crate::config::Validated;
use crate::metrics::Metrics;
use crate::offsets::Position;
use crate::progress::Progress;
use crate::replication::{ReplicationConnection, ReplicationMessage, TxEvent};

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
/// A backfill chunk's reads are sent in runs of this many, with a yield to
/// the runtime between runs (see the chunk arm of `handle_event`).
const CHUNK_YIELD_EVERY: usize = 512;
/// Longest the drain before shutdown waits for Kafka.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

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
    out: Output<'a, Lsn, Vec<u8>>,
    /// Largest WAL position received.
    received: Lsn,
    /// Position last sent as `flush`.
    flushed: Lsn,
    /// Source transaction open in the stream.
    in_txn: bool,
    /// Exactly once: transactions ending at or before this LSN (committing
    /// before it) were delivered.
    skip_through: Lsn,
    position: Position,
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
    /// The last message was a keepalive: the server waits for WAL, nothing
    /// more is coming soon.
    caught_up: bool,
}

impl Loop<'_> {
    async fn handle_change(&mut self, change: &Change) -> Result<(), CaptureError> {
        if !op_allowed(&self.v.config.logical.operations, change.op) {
            return Ok(());
        }
        self.out.emit(change).await
    }

    async fn handle_event(&mut self, event: TxEvent) -> Result<(), CaptureError> {
        match event {
            TxEvent::Begin { .. } => self.in_txn = true,
            TxEvent::Change(change) => {
                // `skip_through` is the end LSN of the last delivered source
                // transaction; the next one may commit exactly there (its
                // commit record right after), so only an earlier commit LSN
                // marks a transaction already delivered.
                if change.commit_lsn < self.skip_through {
                    return Ok(());
                }
                match self.backfill.offer(&change)? {
                    Offer::Stream => self.handle_change(&change).await?,
                    Offer::Drop => {}
                    Offer::Chunk(chunk) => {
                        for (n, read) in chunk.changes.iter().enumerate() {
                            // A chunk takes tens of milliseconds to encode;
                            // yielding now and then lets the reader's task
                            // and its connection, woken on this thread, run
                            // meanwhile (else they wait for the whole chunk,
                            // and reading and sending take turns).
                            if n % CHUNK_YIELD_EVERY == CHUNK_YIELD_EVERY - 1 {
                                tokio::task::yield_now().await;
                            }
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
                if commit_lsn < self.skip_through {
                    return Ok(());
                }
                // A chunk's progress is part of the position it commits with.
                self.out.ended(end_lsn, chunk_done);
                if self.out.is_exactly_once() {
                    // A chunk commits at once, with its progress.
                    if chunk_done
                        || self
                            .out
                            .transaction_due(EOS_COMMIT_INTERVAL, EOS_MAX_RECORDS)
                    {
                        self.begin_commit().await?;
                    }
                } else if chunk_done {
                    self.out.save_when_acked(end_lsn, self.position.encode());
                }
            }
        }
        Ok(())
    }

    /// Exactly once: the position (the end of the last source transaction
    /// in the Kafka transaction) goes in with the commit; later runs skip
    /// what it covers. The commit runs on while the stream is read
    /// ([`Loop::commit_done`] ends it).
    async fn begin_commit(&mut self) -> Result<(), CaptureError> {
        let position = &mut self.position;
        self.out
            .begin_commit(|end| {
                position.lsn = end.0;
                position.encode()
            })
            .await?;
        Ok(())
    }

    /// Exactly once: the commit under way ended with `outcome`.
    async fn commit_done(&mut self, outcome: Result<(), CaptureError>) -> Result<(), CaptureError> {
        if let Some(end) = self.out.finish_commit(outcome).await? {
            self.skip_through = end;
        }
        Ok(())
    }

    /// Exactly once: with the server waiting for WAL, what ended since the
    /// last commit commits now rather than at the interval's end (the
    /// delay to a `read_committed` consumer is then one commit, not the
    /// interval).
    async fn commit_when_caught_up(&mut self) -> Result<(), CaptureError> {
        if self.caught_up && !self.in_txn && self.out.commit_pending() && !self.out.committing() {
            self.begin_commit().await?;
        }
        Ok(())
    }

    /// At least once: write the newest backfill progress whose chunks Kafka
    /// holds in full (never earlier: a lost chunk would be skipped).
    async fn save_acknowledged(&mut self) -> Result<(), CaptureError> {
        if let Some(payload) = self.out.acknowledged().pop() {
            self.out.write_position(&payload).await?;
        }
        Ok(())
    }

    /// The position that may be sent as `flush` now.
    fn confirmable(&self) -> Lsn {
        match self.out.sink().confirmable() {
            Some(lsn) if lsn > self.flushed => lsn,
            _ => self.flushed,
        }
    }

    /// Nothing open and nothing in flight: everything the server sent is
    /// delivered (idle or filtered WAL).
    fn idle(&self, streamed_transactions: usize) -> bool {
        !self.in_txn
            && streamed_transactions == 0
            && self.out.sink().in_flight() == 0
            && !self.out.transaction_open()
            && !self.out.commit_pending()
            && !self.out.committing()
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
        let in_flight = self.out.sink().in_flight();
        let lag = if self.last_commit_end > self.lag_measured && flush >= self.last_commit_end {
            self.lag_measured = self.last_commit_end;
            (self.last_commit_ts_us > 0)
                .then(|| (now_us - self.last_commit_ts_us).max(0) as f64 / 1e6)
        } else if flush >= self.last_commit_end && in_flight == 0 {
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
        self.metrics.in_flight.set(in_flight as i64);
        Ok(())
    }

    /// Before shutdown: what went out is delivered and confirmed. Exactly
    /// once, a Kafka transaction holding only whole source transactions
    /// commits; one holding part of a source transaction aborts (a restart
    /// reads that transaction again). Meanwhile the stream is still read,
    /// so the server's keepalives are answered and it does not end the
    /// session for silence.
    async fn drain(&mut self, conn: &mut ReplicationConnection) -> Result<(), CaptureError> {
        let (write, flush) = (self.received.max(self.flushed), self.flushed);
        if self.out.committing() {
            let outcome = answering(conn, (write, flush), self.out.commit_done()).await?;
            self.commit_done(outcome).await?;
        }
        if self.out.transaction_open() && (self.in_txn || !self.out.commit_pending()) {
            answering(conn, (write, flush), self.out.abort()).await??;
        } else if self.out.commit_pending() {
            let position = &mut self.position;
            let committed = answering(
                conn,
                (write, flush),
                self.out.commit(|end| {
                    position.lsn = end.0;
                    position.encode()
                }),
            )
            .await??;
            if let Some(end) = committed {
                self.skip_through = end;
            }
        }
        answering(conn, (write, flush), self.out.sink().flush(DRAIN_TIMEOUT)).await??;
        if !self.out.is_exactly_once() {
            self.save_acknowledged().await?;
            answering(conn, (write, flush), self.out.sink().flush(DRAIN_TIMEOUT)).await??;
        }
        self.send_status(conn, false).await
    }
}

/// Wait for `work` while reading the stream: a keepalive that asks for a
/// reply gets the standby status `(write, flush)` (nothing new is confirmed
/// here); data is not decoded (nothing after the shutdown goes out, and
/// what is not confirmed the server sends again). A stream that fails
/// meanwhile is left alone until `work` is done: the caller's next status
/// reports it.
async fn answering<F: Future>(
    conn: &mut ReplicationConnection,
    (write, flush): (Lsn, Lsn),
    work: F,
) -> Result<F::Output, CaptureError> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return Ok(out),
            msg = conn.next_message() => match msg {
                Ok(ReplicationMessage::PrimaryKeepalive { reply_requested: true, .. }) => {
                    conn.send_standby_status(write, flush, flush, false).await?;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "the replication stream ended during the drain");
                    return Ok(work.await);
                }
            },
        }
    }
}

/// Stream until shutdown or an error.
pub async fn run(
    v: &Validated,
    metrics: Arc<Metrics>,
    progress: Progress,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Stopped, CaptureError> {
    let startup::Started {
        sql,
        mut conn,
        mut decoder,
        mut assembler,
        out,
        position,
        backfill,
    } = startup::start(v, &metrics, &progress).await?;
    let mut state = Loop {
        v,
        metrics: &metrics,
        progress: &progress,
        out,
        received: Lsn(0),
        flushed: Lsn(0),
        in_txn: false,
        skip_through: if v.config.kafka.delivery == siphon_crds::capture::Delivery::ExactlyOnce {
            position.lsn()
        } else {
            Lsn(0)
        },
        position,
        last_commit_ts_us: 0,
        last_commit_end: Lsn(0),
        lag_measured: Lsn(0),
        server_wal_end: Lsn(0),
        backfill,
        chunk_in_txn: false,
        caught_up: false,
    };
    if state.skip_through.0 != 0 {
        tracing::info!(lsn = %state.skip_through, "resuming exactly-once capture after the stored position");
    }
    announce_capturing(
        &metrics,
        &progress,
        "the worker is streaming changes into Kafka",
    );

    let mut confirm_tick = ticker(CONFIRM_INTERVAL);
    let mut status_tick = ticker(STATUS_INTERVAL);
    let mut heartbeat_tick = ticker(v.derived.heartbeat_interval);
    let heartbeat_sql =
        format!("SELECT pg_logical_emit_message(false, '{HEARTBEAT_PREFIX}', now()::text)");

    loop {
        let commit_due = state.out.transaction_due_at(EOS_COMMIT_INTERVAL);
        tokio::select! {
            biased;
            // 1. Shutdown: drain and confirm.
            _ = shutdown.changed() => {
                tracing::info!("draining before shutdown");
                state.drain(&mut conn).await?;
                tracing::info!(lsn = %state.flushed, "confirmed before shutdown");
                let _ = conn.close().await;
                return Ok(Stopped::Shutdown);
            }
            // Exactly once: the commit under way ended; what was held opens
            // the next Kafka transaction, and the server hears the new position.
            outcome = state.out.commit_done(), if state.out.committing() => {
                state.commit_done(outcome).await?;
                state.commit_when_caught_up().await?;
                state.send_status(&mut conn, false).await?;
            }
            // 2. Kafka acks: confirm a complete prefix, at most every CONFIRM_INTERVAL
            //    (a standby status per acknowledged transaction costs this loop
            //    and the walsender more than decoding it does).
            _ = confirm_tick.tick(), if state.out.sink().in_flight() > 0 || state.confirmable() > state.flushed => {
                state.out.sink().check()?;
                if state.confirmable() > state.flushed {
                    state.send_status(&mut conn, false).await?;
                }
                state.save_acknowledged().await?;
            }
            // 3. Exactly once: commit the Kafka transaction once it is due and
            //    no source transaction is open (no later commit would do it).
            _ = tokio::time::sleep_until(commit_due.unwrap_or_else(std::time::Instant::now).into()),
                if commit_due.is_some() && !state.in_txn && state.out.commit_pending() => {
                state.begin_commit().await?;
            }
            // 4. Status to the server; exactly once, close an idle Kafka transaction.
            _ = status_tick.tick() => {
                state.out.sink().check()?;
                kafka_health(state.out.sink(), &metrics, &progress).await;
                if !state.in_txn && state.out.transaction_due(EOS_COMMIT_INTERVAL, EOS_MAX_RECORDS) {
                    state.begin_commit().await?;
                }
                state.send_status(&mut conn, false).await?;
                state.save_acknowledged().await?;
                metrics.buffered_bytes.set(assembler.buffered_memory() as i64);
            }
            // 5. Heartbeat: a WAL record in our database keeps the slot moving.
            _ = heartbeat_tick.tick() => {
                if let Err(source) = sql.batch_execute(&heartbeat_sql).await {
                    return Err(CaptureError::Sql { what: "writing the heartbeat", source });
                }
            }
            // 6. The backfill reader: the rows of the chunk being read, or why it stopped.
            event = state.backfill.next_event(), if state.backfill.is_reading() => {
                state.backfill.accept(event).await?;
            }
            // 7. The stream.
            msg = conn.next_message() => {
                match msg? {
                    ReplicationMessage::XLogData { wal_start, wal_end, data, .. } => {
                        state.caught_up = false;
                        state.server_wal_end = state.server_wal_end.max(wal_end);
                        state.received = state.received.max(wal_start);
                        let message = decoder.decode(&data)?;
                        for event in assembler.handle(wal_start, message)? {
                            state.handle_event(event?).await?;
                        }
                    }
                    ReplicationMessage::PrimaryKeepalive { wal_end, reply_requested, .. } => {
                        state.server_wal_end = state.server_wal_end.max(wal_end);
                        if state.idle(assembler.streamed_transactions()) && wal_end > state.flushed {
                            state.out.sink().close_mark(wal_end);
                            state.received = state.received.max(wal_end);
                        }
                        // The server sends a keepalive when it waits for WAL.
                        state.caught_up = true;
                        state.commit_when_caught_up().await?;
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
