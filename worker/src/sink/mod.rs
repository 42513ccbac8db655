//! The Kafka sink: an idempotent (or transactional) librdkafka producer plus
//! the bookkeeping that says which source position is safe to confirm.
//!
//! Records are handed to librdkafka without waiting; its background thread
//! calls back on every delivery. Each record carries the id of the *mark* (the
//! source transaction) it belongs to, and [`acks::AckTracker`] turns
//! out-of-order acknowledgements into the newest position that Kafka holds in
//! full. Nothing upstream confirms a position that did not come out of
//! [`KafkaSink::confirmable`].
//!
//! A full producer queue (`QueueFull`) is backpressure: `send` waits until a
//! quarter of the records in flight are delivered, then fills the queue again
//! (one wake-up per batch of acknowledgements, not one per record). A delivery
//! that failed after librdkafka's own retries is reported once by
//! [`KafkaSink::check`]; the worker then restarts from its last confirmed
//! position (at-least-once repeats, never loses).

pub mod acks;
pub mod options;
pub mod topics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::Notify;

use acks::{AckTracker, MarkId};

/// Why the sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create the Kafka producer: {0}; check kafka.options and the bootstrap servers")]
    Create(#[source] KafkaError),
    #[error(
        "kafka delivery failed ({code:?}); the worker restarts from its last confirmed position"
    )]
    Retriable {
        code: Option<RDKafkaErrorCode>,
        #[source]
        source: KafkaError,
    },
    /// The blocking task running a producer call panicked: whether the call
    /// took effect is unknown, so nothing is confirmed and the worker stops.
    #[error(
        "the Kafka producer's {call} panicked; the worker restarts from its last confirmed position"
    )]
    Panicked { call: &'static str },
    #[error("kafka refused the records for good ({code:?}): {hint}")]
    Fatal {
        code: Option<RDKafkaErrorCode>,
        hint: &'static str,
        #[source]
        source: KafkaError,
    },
}

impl SinkError {
    /// Whether restarting from the last confirmed position may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Retriable { .. })
    }
}

/// Sort a Kafka error into retriable or fatal, with a hint for fatal ones.
pub fn classify(err: KafkaError) -> SinkError {
    use RDKafkaErrorCode as C;
    let code = err.rdkafka_error_code();
    let fatal_hint = match code {
        Some(C::TopicAuthorizationFailed) => {
            Some("the Kafka principal may not write this topic; grant WRITE on it")
        }
        Some(C::ClusterAuthorizationFailed) => {
            Some("the Kafka principal lacks cluster permissions (IdempotentWrite)")
        }
        Some(C::TransactionalIdAuthorizationFailed) => {
            Some("the Kafka principal may not use the transactional id; grant WRITE on it")
        }
        Some(C::ProducerFenced) | Some(C::InvalidProducerEpoch) | Some(C::Fenced) => {
            Some("another worker took over this capture's transactional id; this one stops")
        }
        Some(C::MessageSizeTooLarge) => {
            Some("a record exceeds the topic's max.message.bytes; raise it on the topic")
        }
        Some(C::InvalidRecord) | Some(C::InvalidMessage) => {
            Some("the broker rejected a record as invalid")
        }
        Some(C::SaslAuthenticationFailed) | Some(C::Authentication) => {
            Some("Kafka authentication failed; check the auth Secret")
        }
        Some(C::InvalidConfig) | Some(C::InvalidArgument) => {
            Some("invalid producer configuration; check kafka.options")
        }
        Some(C::UnknownTopicOrPartition) | Some(C::UnknownTopic) => {
            Some("the topic does not exist and auto-creation is off; set kafka.topics.create: true")
        }
        Some(C::Fatal) => Some("librdkafka raised a fatal error; see the worker log"),
        _ => match &err {
            KafkaError::Transaction(e) if e.is_fatal() => {
                Some("the transactional producer hit a fatal error")
            }
            _ => None,
        },
    };
    match fatal_hint {
        Some(hint) => SinkError::Fatal {
            code,
            hint,
            source: err,
        },
        None => SinkError::Retriable { code, source: err },
    }
}

/// Longest a `send` waits on a full queue before it tries again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(10);

struct Shared<P> {
    tracker: Mutex<AckTracker<P>>,
    failure: Mutex<Option<KafkaError>>,
    /// Woken when a delivery failed and when a sender waiting for room may go
    /// on (see `resume_sending_at`). Progress is not signalled: the capture
    /// loop asks for the confirmable position on its own short tick, which
    /// costs less than a wake-up per acknowledgement.
    delivered: Notify,
    /// A `send` that found the queue full waits until the records in flight
    /// fall to this many (0 when nobody waits). Waking it on every delivery
    /// instead let it send one record per acknowledgement: a thread switch
    /// per record while Kafka is the bottleneck (a large transaction).
    resume_sending_at: AtomicU64,
    /// Set (with librdkafka's words) when every broker is down; cleared by
    /// the next acknowledgement or a successful metadata request. Records
    /// wait in the queue meanwhile: nothing is lost, but nothing arrives.
    brokers_down: Mutex<Option<String>>,
}

/// librdkafka's callback target.
pub struct SinkContext<P> {
    shared: Arc<Shared<P>>,
}

impl<P: Send + Sync + 'static> ClientContext for SinkContext<P> {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown)
            && let Ok(mut down) = self.shared.brokers_down.lock()
        {
            *down = Some(reason.to_string());
        }
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl<P: Clone + Send + Sync + 'static> ProducerContext for SinkContext<P> {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, mark: Self::DeliveryOpaque) {
        let wake = match result {
            Ok(_) => {
                if let Ok(mut down) = self.shared.brokers_down.lock()
                    && down.is_some()
                {
                    *down = None;
                }
                let in_flight = match self.shared.tracker.lock() {
                    Ok(mut t) => {
                        t.acked(mark as MarkId);
                        t.in_flight()
                    }
                    Err(_) => 0,
                };
                in_flight <= self.shared.resume_sending_at.load(Ordering::Acquire)
            }
            // Aborting a Kafka transaction purges its records: they were
            // meant never to be read, so that is no failed delivery. They
            // stay unacknowledged: no position past them becomes
            // confirmable (the source reads them again after a restart).
            Err((
                KafkaError::MessageProduction(
                    RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight,
                ),
                _,
            )) => false,
            Err((err, _)) => {
                if let Ok(mut f) = self.shared.failure.lock()
                    && f.is_none()
                {
                    *f = Some(err.clone());
                }
                true
            }
        };
        if wake {
            self.shared.delivered.notify_waiters();
        }
    }
}

/// The producer and its acknowledgement bookkeeping.
pub struct KafkaSink<P: Clone + Send + Sync + 'static> {
    producer: Arc<ThreadedProducer<SinkContext<P>>>,
    shared: Arc<Shared<P>>,
    transactional: bool,
}

impl<P: Clone + Send + Sync + 'static> KafkaSink<P> {
    /// Create the producer from its full property set.
    pub fn new(properties: &BTreeMap<String, String>) -> Result<Self, SinkError> {
        let mut cfg = ClientConfig::new();
        for (k, v) in properties {
            cfg.set(k, v);
        }
        let shared = Arc::new(Shared {
            tracker: Mutex::new(AckTracker::new()),
            failure: Mutex::new(None),
            delivered: Notify::new(),
            resume_sending_at: AtomicU64::new(0),
            brokers_down: Mutex::new(None),
        });
        let producer: ThreadedProducer<SinkContext<P>> = cfg
            .create_with_context(SinkContext {
                shared: shared.clone(),
            })
            .map_err(SinkError::Create)?;
        Ok(Self {
            producer: Arc::new(producer),
            shared,
            transactional: properties.contains_key("transactional.id"),
        })
    }

    /// Whether this sink writes in Kafka transactions.
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// Hand one record to the producer. Waits while the queue is full.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Vec<u8>)],
    ) -> Result<(), SinkError> {
        let mark = self.lock_tracker().sent();
        let mut record: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(topic, mark);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        if !headers.is_empty() {
            let mut h = OwnedHeaders::new_with_capacity(headers.len());
            for (name, value) in headers {
                h = h.insert(Header {
                    key: name,
                    value: Some(value.as_slice()),
                });
            }
            record = record.headers(h);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.shared.resume_sending_at.store(0, Ordering::Release);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if let Err(e) = self.check() {
                        self.shared.resume_sending_at.store(0, Ordering::Release);
                        return Err(e);
                    }
                    // Backpressure: wait until a quarter of what is in flight
                    // was delivered (or a moment passed), then fill up again.
                    let in_flight = self.in_flight();
                    self.shared
                        .resume_sending_at
                        .store(in_flight - in_flight / 4, Ordering::Release);
                    let wait = self.shared.delivered.notified();
                    let _ = tokio::time::timeout(QUEUE_FULL_WAIT, wait).await;
                }
                Err((err, _)) => {
                    self.shared.resume_sending_at.store(0, Ordering::Release);
                    self.lock_tracker().acked(mark);
                    return Err(classify(err));
                }
            }
        }
    }

    /// All records sent so far belong to a transaction ending at `position`.
    pub fn close_mark(&self, position: P) {
        self.lock_tracker().close(position);
    }

    /// The newest position whose records Kafka holds in full.
    pub fn confirmable(&self) -> Option<P> {
        self.lock_tracker().confirmable().cloned()
    }

    /// Records not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.lock_tracker().in_flight()
    }

    /// Why Kafka is unreachable, while every broker is down.
    pub fn brokers_down(&self) -> Option<String> {
        self.shared.brokers_down.lock().ok().and_then(|d| d.clone())
    }

    /// While the brokers are down, ask one for metadata: an answer ends the
    /// outage without waiting for the next acknowledgement (an idle capture
    /// has none to wait for).
    pub async fn probe_brokers(&self, timeout: Duration) {
        if self.brokers_down().is_none() {
            return;
        }
        let producer = self.producer.clone();
        let answered = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, timeout).is_ok()
        })
        .await
        .unwrap_or(false);
        if answered && let Ok(mut down) = self.shared.brokers_down.lock() {
            *down = None;
        }
    }

    /// Fails once a delivery has failed for good.
    pub fn check(&self) -> Result<(), SinkError> {
        let failure = self.shared.failure.lock().ok().and_then(|f| f.clone());
        match failure {
            Some(err) => Err(classify(err)),
            None => Ok(()),
        }
    }

    /// Wait until every record sent so far is acknowledged.
    pub async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let producer = self.producer.clone();
        blocking("flush", move || producer.flush(timeout)).await?;
        self.check()
    }

    /// Exactly once: register the transactional id, fencing older producers.
    pub async fn init_transactions(&self, timeout: Duration) -> Result<(), SinkError> {
        let producer = self.producer.clone();
        blocking("init_transactions", move || {
            producer.init_transactions(timeout)
        })
        .await
    }

    /// Exactly once: open a transaction.
    pub fn begin_transaction(&self) -> Result<(), SinkError> {
        self.producer.begin_transaction().map_err(classify)
    }

    /// Exactly once: commit the open transaction (flushes first).
    pub async fn commit_transaction(&self, timeout: Duration) -> Result<(), SinkError> {
        let mut commit = self.start_commit(timeout);
        commit.outcome().await?;
        self.check()
    }

    /// Exactly once: start committing the open transaction and return at
    /// once. The caller sends no record until [`PendingCommit::outcome`]
    /// (it holds what it encodes meanwhile).
    ///
    /// The commit first waits, on the acknowledgements this sink counts,
    /// until Kafka holds every record of the transaction, and only then
    /// asks librdkafka to commit: rdkafka's own `commit_transaction`
    /// flushes first, and its flush polls in steps of 100 ms, so any record
    /// still in flight would cost the whole step.
    pub fn start_commit(&self, timeout: Duration) -> PendingCommit {
        let (producer, shared) = (self.producer.clone(), self.shared.clone());
        PendingCommit {
            handle: tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + timeout;
                delivered_all(&producer, &shared, deadline).await?;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                blocking("commit_transaction", move || {
                    producer.commit_transaction(left)
                })
                .await
            }),
        }
    }

    /// Exactly once: abort the open transaction.
    pub async fn abort_transaction(&self, timeout: Duration) -> Result<(), SinkError> {
        let producer = self.producer.clone();
        blocking("abort_transaction", move || {
            producer.abort_transaction(timeout)
        })
        .await
    }

    fn lock_tracker(&self) -> std::sync::MutexGuard<'_, AckTracker<P>> {
        // A poisoned lock means a callback panicked; the tracker itself is
        // still consistent (every method leaves it so), so keep using it.
        self.shared
            .tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Wait until Kafka acknowledged every record sent (by this sink's count,
/// then librdkafka's own, which drops a record a moment after its
/// acknowledgement), or a delivery failed, or `deadline` passed.
async fn delivered_all<P: Clone + Send + Sync + 'static>(
    producer: &ThreadedProducer<SinkContext<P>>,
    shared: &Shared<P>,
    deadline: tokio::time::Instant,
) -> Result<(), SinkError> {
    let failed = || shared.failure.lock().ok().and_then(|f| f.clone());
    loop {
        // Registered before the check: the wake-up of the last
        // acknowledgement (in flight reaching 0) cannot be missed.
        let woken = shared.delivered.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if let Some(err) = failed() {
            return Err(classify(err));
        }
        // A fatal error (say, fenced by a newer worker) may purge what is
        // queued, and purged records are never acknowledged: report it now
        // rather than wait for the deadline.
        if let Some((code, _)) = producer.client().fatal_error() {
            return Err(classify(KafkaError::MessageProduction(code)));
        }
        let in_flight = shared.tracker.lock().map_or(0, |t| t.in_flight());
        if in_flight == 0 && producer.in_flight_count() == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(classify(KafkaError::Flush(
                RDKafkaErrorCode::OperationTimedOut,
            )));
        }
        let step = if in_flight == 0 {
            ACKED_STEP
        } else {
            QUEUE_FULL_WAIT
        };
        let _ = tokio::time::timeout(step, woken).await;
    }
}

/// Between looks at librdkafka's count once every record is acknowledged.
const ACKED_STEP: Duration = Duration::from_millis(1);

/// A Kafka transaction being committed ([`KafkaSink::start_commit`]).
pub struct PendingCommit {
    handle: tokio::task::JoinHandle<Result<(), SinkError>>,
}

impl PendingCommit {
    /// Wait for the commit. Cancel-safe: dropping the future leaves the
    /// commit running, and a later call waits for it again. Call it no more
    /// once it returned.
    pub async fn outcome(&mut self) -> Result<(), SinkError> {
        (&mut self.handle).await.map_err(|_| SinkError::Panicked {
            call: "commit_transaction",
        })?
    }
}

/// Runs one of librdkafka's blocking calls (`call` names it in the error)
/// off the runtime's threads.
async fn blocking(
    call: &'static str,
    f: impl FnOnce() -> Result<(), KafkaError> + Send + 'static,
) -> Result<(), SinkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| SinkError::Panicked { call })?
        .map_err(classify)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_and_authorization_are_fatal_timeouts_are_not() {
        let fenced = classify(KafkaError::MessageProduction(
            RDKafkaErrorCode::ProducerFenced,
        ));
        assert!(!fenced.is_transient());
        // librdkafka's own code for it, raised locally once fenced.
        let local = classify(KafkaError::MessageProduction(RDKafkaErrorCode::Fenced));
        assert!(!local.is_transient());
        assert!(local.to_string().contains("another worker took over"));
        let timeout = classify(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut,
        ));
        assert!(timeout.is_transient());
        let auth = classify(KafkaError::MessageProduction(
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ));
        assert!(auth.to_string().contains("grant WRITE"));
    }

    #[test]
    fn librdkafka_accepts_the_producer_properties_of_both_deliveries() {
        let kafka = siphon_crds::worker_config::KafkaConfig {
            bootstrap_servers: "127.0.0.1:9".into(),
            ..Default::default()
        };
        let secrets = crate::config::Secrets::default();
        for tx_id in [None, Some("siphon-shop")] {
            let props = options::producer_properties(&kafka, &secrets, "siphon-shop", tx_id);
            if let Err(e) = KafkaSink::<u64>::new(&props) {
                panic!("transactional id {tx_id:?}: {e}");
            }
        }
    }
}
