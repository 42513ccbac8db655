//! Records out, positions saved: the one place that knows the delivery
//! guarantee.
//!
//! A source hands [`Output`] its changes ([`Output::emit`]) and says where
//! each unit of its progress ends ([`Output::ended`]): a source
//! transaction's end LSN (logical), a poll's number (polling). Those *marks*
//! are what the sink's acknowledgement tracker closes; a position goes to the
//! offsets topic only for a mark whose records Kafka holds.
//!
//! **At least once** ([`Delivery::AtLeastOnce`]). A mark closes when its unit
//! ends. A position the source wants saved waits ([`Output::save_when_acked`])
//! until Kafka acknowledged every record up to its mark
//! ([`Output::acknowledged`]); only then is it written. A crash repeats
//! records, it never skips one.
//!
//! **Exactly once** ([`Delivery::ExactlyOnce`]). The first record of a unit
//! opens a Kafka transaction; ended units join it; [`Output::commit`] writes
//! the position of the last ended unit into that transaction, commits, and
//! only then closes its mark. A unit that sent nothing while no transaction
//! was open closes at once: nothing of it was to go out. A `read_committed`
//! consumer therefore sees a unit's records exactly when the position that
//! covers them is durable.
//!
//! **Commits overlap the source.** [`Output::begin_commit`] starts the
//! commit and returns; the source goes on reading. librdkafka takes no
//! record while it commits, so what is encoded meanwhile is *held* (at most
//! `HELD_MAX_BYTES`, then `emit` waits for the commit) and opens the next
//! transaction once [`Output::finish_commit`] saw the commit succeed. Marks
//! still close in order: the committed one, then a unit that ended
//! meanwhile with nothing to send, then those of the next transaction. A
//! commit that fails drops what was held: nothing of it reached Kafka or
//! was confirmed, and the restart reads it again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use siphon_crds::capture::Delivery as DeliveryMode;

use super::CaptureError;
use crate::change::Change;
use crate::config::Validated;
use crate::metrics::Metrics;
use crate::record::{Record, RecordEncoder};
use crate::sink::{KafkaSink, PendingCommit};

/// Longest wait for a Kafka transaction to commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a Kafka transaction to abort.
const ABORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of records held while a commit runs; `emit` then waits for it.
const HELD_MAX_BYTES: usize = 16 << 20;

/// The delivery guarantee, with the state only that guarantee needs.
pub enum Delivery<M, S> {
    AtLeastOnce(AtLeastOnce<M, S>),
    ExactlyOnce(ExactlyOnce<M>),
}

/// At least once: what waits for Kafka's acknowledgements before it is
/// saved, oldest mark first.
pub struct AtLeastOnce<M, S> {
    unsaved: VecDeque<(M, S)>,
}

/// Exactly once: the open Kafka transaction, and the last unit in it.
pub struct ExactlyOnce<M> {
    open: Option<OpenTransaction>,
    /// The newest unit that ended since the last commit; its mark closes
    /// when the transaction carrying its position commits.
    last: Option<M>,
    /// The commit under way.
    committing: Option<Committing<M>>,
}

struct OpenTransaction {
    started: Instant,
    records: u64,
}

/// A Kafka transaction being committed while the source reads on.
struct Committing<M> {
    commit: PendingCommit,
    started: Instant,
    /// The mark the commit closes.
    mark: M,
    /// The newest unit that ended meanwhile with nothing to send and no
    /// position to save: it closes right after `mark`.
    then_close: Option<M>,
    /// Records encoded meanwhile; they open the next transaction.
    held: Vec<Record>,
    held_bytes: usize,
}

impl<M, S> Delivery<M, S> {
    pub fn of(mode: DeliveryMode) -> Self {
        match mode {
            DeliveryMode::ExactlyOnce => Delivery::ExactlyOnce(ExactlyOnce {
                open: None,
                last: None,
                committing: None,
            }),
            _ => Delivery::AtLeastOnce(AtLeastOnce {
                unsaved: VecDeque::new(),
            }),
        }
    }
}

/// Where a source's changes go: encoded, handed to Kafka, and covered by
/// positions under the delivery guarantee.
pub struct Output<'a, M: Clone + Send + Sync + 'static, S> {
    metrics: &'a Metrics,
    sink: KafkaSink<M>,
    encoder: RecordEncoder,
    records: Vec<Record>,
    offsets_topic: String,
    /// The position record's key: the capture's name.
    position_key: String,
    delivery: Delivery<M, S>,
    /// Records handed to Kafka since [`Output::take_sent`].
    sent: u64,
}

impl<'a, M: Clone + Ord + Send + Sync + 'static, S> Output<'a, M, S> {
    pub fn new(
        v: &Validated,
        metrics: &'a Metrics,
        sink: KafkaSink<M>,
        encoder: RecordEncoder,
    ) -> Self {
        Output {
            metrics,
            sink,
            encoder,
            records: Vec::with_capacity(4),
            offsets_topic: v.config.kafka.offsets_topic.clone(),
            position_key: v.config.name.clone(),
            delivery: Delivery::of(v.config.kafka.delivery),
            sent: 0,
        }
    }

    pub fn sink(&self) -> &KafkaSink<M> {
        &self.sink
    }

    pub fn is_exactly_once(&self) -> bool {
        matches!(self.delivery, Delivery::ExactlyOnce(_))
    }

    /// Encode a change and hand its records to Kafka (exactly once: in the
    /// open Kafka transaction, opening one; while a commit runs, held for
    /// the next one).
    pub async fn emit(&mut self, change: &Change) -> Result<(), CaptureError> {
        self.records.clear();
        self.encoder.encode(change, &mut self.records);
        if self.records.is_empty() {
            return Ok(());
        }
        if let Delivery::ExactlyOnce(eos) = &mut self.delivery {
            if let Some(c) = &mut eos.committing {
                c.held_bytes += self.records.iter().map(Record::size).sum::<usize>();
                c.held.append(&mut self.records);
                if c.held_bytes >= HELD_MAX_BYTES {
                    let outcome = self.commit_done().await;
                    self.finish_commit(outcome).await?;
                }
                return Ok(());
            }
            if eos.open.is_none() {
                self.sink.begin_transaction()?;
                eos.open = Some(OpenTransaction {
                    started: Instant::now(),
                    records: 0,
                });
            }
        }
        let sent = hand_over(&self.sink, self.metrics, self.records.drain(..)).await?;
        self.sent += sent;
        if let Delivery::ExactlyOnce(ExactlyOnce {
            open: Some(open), ..
        }) = &mut self.delivery
        {
            open.records += sent;
        }
        Ok(())
    }

    /// Records handed to Kafka since the last call.
    pub fn take_sent(&mut self) -> u64 {
        std::mem::take(&mut self.sent)
    }

    /// A unit of the source ended at `mark`. At least once, its mark closes
    /// now. Exactly once, it joins the open Kafka transaction; with none
    /// open it closes now, unless `carries_position` (its position must be
    /// saved, say a backfill chunk's progress), when the next
    /// [`Output::commit`] opens one for it.
    pub fn ended(&mut self, mark: M, carries_position: bool) {
        let Delivery::ExactlyOnce(eos) = &mut self.delivery else {
            return self.sink.close_mark(mark);
        };
        let sent_nothing = eos.last.is_none() && !carries_position;
        match &mut eos.committing {
            Some(c) if sent_nothing && c.held.is_empty() => c.then_close = Some(mark),
            None if sent_nothing && eos.open.is_none() => self.sink.close_mark(mark),
            _ => eos.last = Some(mark),
        }
    }

    /// Exactly once: a Kafka transaction is open.
    pub fn transaction_open(&self) -> bool {
        matches!(
            &self.delivery,
            Delivery::ExactlyOnce(ExactlyOnce { open: Some(_), .. })
        )
    }

    /// Exactly once: a commit is under way ([`Output::commit_done`] says
    /// when it ended).
    pub fn committing(&self) -> bool {
        matches!(
            &self.delivery,
            Delivery::ExactlyOnce(ExactlyOnce {
                committing: Some(_),
                ..
            })
        )
    }

    /// Exactly once: a unit ended since the last commit (a commit would
    /// save its position).
    pub fn commit_pending(&self) -> bool {
        matches!(
            &self.delivery,
            Delivery::ExactlyOnce(ExactlyOnce { last: Some(_), .. })
        )
    }

    /// Exactly once: when the open Kafka transaction is `max_age` old.
    pub fn transaction_due_at(&self, max_age: Duration) -> Option<Instant> {
        match &self.delivery {
            Delivery::ExactlyOnce(ExactlyOnce {
                open: Some(open), ..
            }) => Some(open.started + max_age),
            _ => None,
        }
    }

    /// Exactly once: the open Kafka transaction is `max_age` old or holds
    /// `max_records`.
    pub fn transaction_due(&self, max_age: Duration, max_records: u64) -> bool {
        match &self.delivery {
            Delivery::ExactlyOnce(ExactlyOnce {
                open: Some(open), ..
            }) => open.started.elapsed() >= max_age || open.records >= max_records,
            _ => false,
        }
    }

    /// Exactly once: write the position of the last ended unit
    /// (`position(mark)`) into the Kafka transaction, commit it, then close
    /// that mark. Returns the mark, or `None` when no unit ended since the
    /// last commit (nothing is written).
    pub async fn commit(
        &mut self,
        position: impl FnOnce(&M) -> Vec<u8>,
    ) -> Result<Option<M>, CaptureError> {
        if !self.begin_commit(position).await? {
            return Ok(None);
        }
        let outcome = self.commit_done().await;
        self.finish_commit(outcome).await
    }

    /// Exactly once: write the position of the last ended unit into the
    /// Kafka transaction and start its commit; [`Output::commit_done`] and
    /// [`Output::finish_commit`] end it. A commit already under way is
    /// finished first. Returns whether a commit started (not when no unit
    /// ended since the last one).
    pub async fn begin_commit(
        &mut self,
        position: impl FnOnce(&M) -> Vec<u8>,
    ) -> Result<bool, CaptureError> {
        if !self.commit_pending() {
            return Ok(false);
        }
        if self.committing() {
            let outcome = self.commit_done().await;
            self.finish_commit(outcome).await?;
        }
        let Delivery::ExactlyOnce(eos) = &mut self.delivery else {
            return Ok(false);
        };
        let Some(mark) = eos.last.take() else {
            return Ok(false);
        };
        let records = match eos.open.take() {
            Some(open) => open.records,
            None => {
                self.sink.begin_transaction()?;
                0
            }
        };
        let payload = position(&mark);
        self.send_position(&payload).await?;
        if let Delivery::ExactlyOnce(eos) = &mut self.delivery {
            tracing::debug!(records = records, "committing a kafka transaction");
            eos.committing = Some(Committing {
                commit: self.sink.start_commit(COMMIT_TIMEOUT),
                started: Instant::now(),
                mark,
                then_close: None,
                held: Vec::new(),
                held_bytes: 0,
            });
        }
        Ok(true)
    }

    /// Exactly once: wait until the commit under way ended (forever when
    /// none is). Cancel-safe, for a `select!` arm; hand what it returns to
    /// [`Output::finish_commit`].
    pub async fn commit_done(&mut self) -> Result<(), CaptureError> {
        match &mut self.delivery {
            Delivery::ExactlyOnce(ExactlyOnce {
                committing: Some(c),
                ..
            }) => Ok(c.commit.outcome().await?),
            _ => std::future::pending().await,
        }
    }

    /// Exactly once: after [`Output::commit_done`]: close the committed
    /// mark (and one that ended meanwhile with nothing to send), then open
    /// the next Kafka transaction with the records held meanwhile. Returns
    /// the committed mark.
    pub async fn finish_commit(
        &mut self,
        outcome: Result<(), CaptureError>,
    ) -> Result<Option<M>, CaptureError> {
        let Delivery::ExactlyOnce(eos) = &mut self.delivery else {
            return Ok(None);
        };
        let Some(c) = eos.committing.take() else {
            return Ok(None);
        };
        outcome?;
        self.sink.check()?;
        let took = c.started.elapsed();
        self.metrics
            .kafka_commit_seconds
            .observe(took.as_secs_f64());
        tracing::debug!(
            took_ms = took.as_secs_f64() * 1e3,
            held = c.held.len(),
            "kafka transaction committed"
        );
        self.sink.close_mark(c.mark.clone());
        if let Some(mark) = c.then_close {
            self.sink.close_mark(mark);
        }
        if !c.held.is_empty() {
            self.sink.begin_transaction()?;
            let sent = hand_over(&self.sink, self.metrics, c.held.into_iter()).await?;
            self.sent += sent;
            eos.open = Some(OpenTransaction {
                started: Instant::now(),
                records: sent,
            });
        }
        Ok(Some(c.mark))
    }

    /// Exactly once: abort the open Kafka transaction; its records are
    /// never read by a `read_committed` consumer, and the units in it are
    /// read again after a restart. A commit under way is finished first.
    pub async fn abort(&mut self) -> Result<(), CaptureError> {
        if self.committing() {
            let outcome = self.commit_done().await;
            self.finish_commit(outcome).await?;
        }
        if let Delivery::ExactlyOnce(eos) = &mut self.delivery
            && eos.open.take().is_some()
        {
            eos.last = None;
            self.sink.abort_transaction(ABORT_TIMEOUT).await?;
        }
        Ok(())
    }

    /// At least once: keep `saved` until Kafka holds every record up to
    /// `mark` (exactly once, positions go with [`Output::commit`]).
    pub fn save_when_acked(&mut self, mark: M, saved: S) {
        if let Delivery::AtLeastOnce(alo) = &mut self.delivery {
            alo.unsaved.push_back((mark, saved));
        }
    }

    /// At least once: something waits to be saved.
    pub fn has_unsaved(&self) -> bool {
        matches!(&self.delivery, Delivery::AtLeastOnce(alo) if !alo.unsaved.is_empty())
    }

    /// At least once: what was kept for marks Kafka now holds in full,
    /// oldest first. The caller writes (at most) the newest position.
    pub fn acknowledged(&mut self) -> Vec<S> {
        let Delivery::AtLeastOnce(alo) = &mut self.delivery else {
            return Vec::new();
        };
        let Some(done) = self.sink.confirmable() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while alo.unsaved.front().is_some_and(|(mark, _)| *mark <= done) {
            if let Some((_, saved)) = alo.unsaved.pop_front() {
                out.push(saved);
            }
        }
        out
    }

    /// Write a position at once, outside the flow of units: at least once
    /// as a record of its own, exactly once in a Kafka transaction of its
    /// own (none may be open).
    pub async fn write_position(&mut self, payload: &[u8]) -> Result<(), CaptureError> {
        if self.is_exactly_once() {
            debug_assert!(!self.transaction_open() && !self.committing());
            self.sink.begin_transaction()?;
            self.send_position(payload).await?;
            self.sink.commit_transaction(COMMIT_TIMEOUT).await?;
        } else {
            self.send_position(payload).await?;
        }
        Ok(())
    }

    async fn send_position(&mut self, payload: &[u8]) -> Result<(), CaptureError> {
        self.sink
            .send(
                &self.offsets_topic,
                Some(self.position_key.as_bytes()),
                Some(payload),
                &[],
            )
            .await?;
        Ok(())
    }
}

/// Hand records to Kafka, counting them in the metrics; returns how many.
async fn hand_over<M: Clone + Send + Sync + 'static>(
    sink: &KafkaSink<M>,
    metrics: &Metrics,
    records: impl Iterator<Item = Record>,
) -> Result<u64, CaptureError> {
    let mut sent = 0;
    for r in records {
        if r.value.is_some() {
            metrics.events.inc();
        }
        metrics.bytes.inc_by(r.size() as u64);
        sink.send(&r.topic, r.key.as_deref(), r.value.as_deref(), &r.headers)
            .await?;
        sent += 1;
    }
    Ok(sent)
}
