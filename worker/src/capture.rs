//! What both capture sources share: why a capture stops ([`CaptureError`]),
//! the SQL connection, the Kafka start (topics, the producer, fencing and the
//! stored position) and the restart policy ([`run_forever`]).
//!
//! ```text
//!  run_forever ──► logical::run  (WAL through a replication slot)
//!              └─► polling::run  (keyset SELECTs on an interval / NOTIFY)
//!        both: RecordEncoder ──► KafkaSink ──► offsets topic (Position)
//! ```
//!
//! **Restart policy.** A transient error (a lost connection, a broker
//! outage, a column added under a backfill) restarts the source from its
//! last durable position after a backoff (500 ms doubling to 30 s, reset
//! after a minute of running); any other error stops the worker with a
//! reason and the fix in `Capturing=False`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use siphon_crds::capture::{CaptureMode, TopicCreation};
use siphon_crds::conditions::{self, reason};
use siphon_postgres::SqlParams;
use siphon_postgres::connect::ConnectError;
use tokio::sync::{Notify, watch};

use crate::backfill::BackfillError;
use crate::config::Validated;
use crate::metrics::{Metrics, ReasonLabels};
use crate::offsets::{self, Position};
use crate::polling::PollError;
use crate::progress::Progress;
use crate::replication::{AssemblyError, ConnectParams, DecodeError, ReplicationError};
use crate::sink::{KafkaSink, SinkError, topics};

/// Why the capture stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Assembly(#[from] AssemblyError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Offsets(#[from] offsets::OffsetsError),
    #[error(transparent)]
    Backfill(#[from] BackfillError),
    #[error(transparent)]
    Polling(#[from] PollError),
    #[error("PostgreSQL query failed ({what}): {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "replication slot {slot} does not exist: a new slot would silently skip the changes in between, so nothing streams until a person chooses (in Kubernetes a new spec.snapshot.request.id makes the operator create a new slot and backfill every table; standalone, `logical.createSlot: true`)"
    )]
    SlotMissing { slot: String },
    #[error(
        "replication slot {slot} was invalidated (wal_status = lost): PostgreSQL removed WAL this capture still needed; raise max_slot_wal_keep_size and re-create the capture to backfill again"
    )]
    SlotLost { slot: String },
    #[error(
        "replication slot {slot} is in use by another process (pid {pid}); only one worker may stream from a slot"
    )]
    SlotActive { slot: String, pid: i32 },
    /// A blocking task panicked: its outcome is unknown, so it is never
    /// taken for a success (an empty position would restart from nothing).
    #[error("{task} panicked; the worker stops rather than guess its outcome")]
    Panicked { task: &'static str },
}

/// What the worker does about an error: the one decision, for every error
/// of either source (see [`CaptureError::policy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Restart from the last confirmed position, after a backoff: waiting
    /// may cure it (a connection lost, a broker restarting, a lock held).
    Retry,
    /// Stop, with this reason in `Capturing=False` and the error's text
    /// (which names the fix): the same input would fail the same way.
    Stop(&'static str),
}

impl CaptureError {
    /// Retry or stop, and why. A decode error is deterministic (the same
    /// bytes fail the same way after a restart), so it stops; an assembly
    /// error is a protocol state a reconnect resets, so it retries.
    pub fn policy(&self) -> Policy {
        use siphon_crds::conditions::reason;
        let retry = match self {
            CaptureError::Replication(e) => e.is_transient(),
            CaptureError::Sink(e) => e.is_transient(),
            CaptureError::Sql { source, .. } => {
                siphon_postgres::sqlstate::is_transient_error(source)
            }
            CaptureError::Offsets(offsets::OffsetsError::Kafka { .. }) => true,
            CaptureError::Backfill(e) => e.is_transient(),
            CaptureError::Polling(e) => e.is_transient(),
            CaptureError::SlotActive { .. } => true,
            CaptureError::Assembly(_) => true,
            CaptureError::Decode(_) => false,
            _ => false,
        };
        if retry {
            return Policy::Retry;
        }
        Policy::Stop(match self {
            CaptureError::SlotMissing { .. } => reason::SLOT_MISSING,
            CaptureError::Polling(e) => e.reason(),
            CaptureError::SlotLost { .. } => reason::SLOT_LOST,
            CaptureError::Sql { source, .. }
                if source.code().map(|c| c.code()) == Some("42501") =>
            {
                reason::INSUFFICIENT_PRIVILEGE
            }
            CaptureError::Sink(SinkError::Fatal { .. }) => reason::KAFKA_REFUSED,
            _ => reason::CAPTURE_FAILED,
        })
    }

    /// Whether a restart from the last confirmed position may succeed.
    pub fn is_transient(&self) -> bool {
        self.policy() == Policy::Retry
    }

    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            CaptureError::Replication(e) => e.metric_label(),
            CaptureError::Decode(_) => "decode",
            CaptureError::Assembly(_) => "assembly",
            CaptureError::Sink(_) => "kafka",
            CaptureError::Offsets(_) => "offsets",
            CaptureError::Backfill(e) => e.metric_label(),
            CaptureError::Polling(e) => e.metric_label(),
            CaptureError::Sql { .. } => "sql",
            CaptureError::SlotMissing { .. } => "slot_missing",
            CaptureError::SlotLost { .. } => "slot_lost",
            CaptureError::SlotActive { .. } => "slot_active",
            CaptureError::Panicked { .. } => "panicked",
        }
    }
}

/// How a run ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    Shutdown,
}

/// Replication connection parameters of a configuration.
pub fn connect_params(v: &Validated) -> ConnectParams {
    let pg = &v.config.postgres;
    let mut p = ConnectParams::new(
        pg.host.clone(),
        v.secrets.pg_user.clone(),
        pg.database.clone(),
    );
    p.port = pg.port;
    p.password = v.secrets.pg_password.clone();
    p.ssl_mode = pg.ssl_mode.into();
    p.ssl_root_cert = pg.ssl_root_cert.as_ref().map(PathBuf::from);
    p
}

/// A plain SQL connection (heartbeats, catalog reads, polls).
pub async fn sql_connect(v: &Validated) -> Result<tokio_postgres::Client, CaptureError> {
    sql_connect_with(v, None).await
}

/// A SQL connection whose NOTIFY messages wake `wake` (LISTEN is up to the
/// caller); `Client::is_closed` tells when the connection ended.
pub async fn sql_connect_with(
    v: &Validated,
    wake: Option<Arc<Notify>>,
) -> Result<tokio_postgres::Client, CaptureError> {
    let (client, conn) = siphon_postgres::connect(&sql_params(v))
        .await
        .map_err(|e| match e {
            ConnectError::Tls(e) => CaptureError::Replication(e.into()),
            ConnectError::Postgres(source) => CaptureError::Sql {
                what: "connecting",
                source,
            },
        })?;
    drop(drive(conn, wake));
    Ok(client)
}

/// The SQL session parameters of a configuration.
pub fn sql_params(v: &Validated) -> SqlParams {
    let pg = &v.config.postgres;
    SqlParams {
        host: pg.host.clone(),
        port: pg.port,
        database: pg.database.clone(),
        user: v.secrets.pg_user.clone(),
        password: v.secrets.pg_password.clone(),
        ssl_mode: pg.ssl_mode.into(),
        ssl_root_cert: pg.ssl_root_cert.as_ref().map(PathBuf::from),
        application_name: "siphon-worker",
        connect_timeout: Duration::from_secs(10),
    }
}

/// Run a connection's I/O on a task of its own, turning notifications into
/// wake-ups (many notifications before the next poll are one wake-up).
fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    wake: Option<Arc<Notify>>,
) -> tokio::task::JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures::StreamExt::next(&mut messages).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    if let Some(w) = &wake {
                        w.notify_one();
                    }
                }
                Ok(tokio_postgres::AsyncMessage::Notice(notice)) => {
                    tracing::debug!(notice = %notice.message(), "postgres notice");
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "sql connection closed");
                    break;
                }
            }
        }
    })
}

/// The Kafka side of a start: the tables' topics (when asked), the offsets
/// topic (always, compacted), the producer, and the stored position.
///
/// Fence first, read the position second: once `init_transactions`
/// returns, any transaction of an older worker is committed or aborted, so
/// the position read after it is final.
pub async fn start_kafka<P: Clone + Send + Sync + 'static>(
    v: &Validated,
    props: &std::collections::BTreeMap<String, String>,
    topic_names: &[String],
) -> Result<(KafkaSink<P>, Position), CaptureError> {
    let cfg = &v.config;
    if let Some(creation) = &cfg.kafka.topics
        && creation.create
    {
        topics::ensure(props, topic_names, creation, &[]).await?;
    }
    let offsets_settings = TopicCreation {
        create: true,
        partitions: 1,
        replication_factor: cfg.kafka.topics.as_ref().and_then(|t| t.replication_factor),
        config: Default::default(),
    };
    topics::ensure(
        props,
        std::slice::from_ref(&cfg.kafka.offsets_topic),
        &offsets_settings,
        &[("cleanup.policy", "compact")],
    )
    .await?;
    let sink: KafkaSink<P> = KafkaSink::new(props)?;
    if sink.is_transactional() {
        sink.init_transactions(Duration::from_secs(60)).await?;
    }
    let position = {
        let props = props.clone();
        let topic = cfg.kafka.offsets_topic.clone();
        let key = cfg.name.clone();
        tokio::task::spawn_blocking(move || {
            offsets::load(&props, &topic, &key, Duration::from_secs(15))
        })
        .await
        .map_err(|_| CaptureError::Panicked {
            task: "loading the position",
        })??
        .unwrap_or_default()
    };
    Ok((sink, position))
}

/// Kafka's availability into the worker's condition, its readiness and
/// a metric: a capture that cannot deliver says so (its records wait in
/// the producer's queue, and nothing is confirmed meanwhile).
pub async fn kafka_health<P: Clone + Send + Sync + 'static>(
    sink: &KafkaSink<P>,
    metrics: &Metrics,
    progress: &Progress,
) {
    sink.probe_brokers(Duration::from_millis(500)).await;
    match sink.brokers_down() {
        Some(why) => {
            metrics.kafka_available.set(0);
            metrics.set_ready(false);
            progress.set_health(
                conditions::KAFKA_AVAILABLE,
                false,
                reason::KAFKA_UNREACHABLE,
                format!(
                    "every Kafka broker is down ({why}); records wait in the worker and nothing is confirmed to PostgreSQL until they are delivered"
                ),
            );
        }
        None => {
            metrics.kafka_available.set(1);
            metrics.set_ready(true);
            progress.set_health(
                conditions::KAFKA_AVAILABLE,
                true,
                reason::KAFKA_REACHABLE,
                "Kafka's brokers answer",
            );
        }
    }
}

/// The Kafka client id, and the transactional id in exactly-once mode.
pub fn kafka_ids(v: &Validated) -> (String, Option<String>) {
    let id = format!("siphon-{}", v.config.name.replace('/', "-"));
    let exactly_once = v.config.kafka.delivery == siphon_crds::capture::Delivery::ExactlyOnce;
    (id.clone(), exactly_once.then_some(id))
}

/// Run until shutdown, restarting from the last confirmed position after
/// transient errors (with backoff); a definite error ends the worker.
pub async fn run_forever(
    v: &Validated,
    metrics: Arc<Metrics>,
    progress: Progress,
    shutdown: watch::Receiver<bool>,
) -> Result<(), CaptureError> {
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        let run = match v.config.mode {
            CaptureMode::Logical => {
                crate::logical::run(v, metrics.clone(), progress.clone(), shutdown.clone()).await
            }
            CaptureMode::Polling => {
                crate::polling::run(v, metrics.clone(), progress.clone(), shutdown.clone()).await
            }
        };
        let e = match run {
            Ok(Stopped::Shutdown) => return Ok(()),
            Err(e) => e,
        };
        match e.policy() {
            Policy::Retry if !*shutdown.borrow() => {
                metrics.set_ready(false);
                progress.set_health(
                    conditions::CAPTURING,
                    false,
                    reason::CAPTURE_INTERRUPTED,
                    format!("{e}; retrying in {backoff:?}"),
                );
                metrics
                    .restarts
                    .get_or_create(&ReasonLabels {
                        reason: e.metric_label().into(),
                    })
                    .inc();
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(500);
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "capture interrupted; restarting from the last confirmed position");
                let mut sd = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = sd.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            policy => {
                let why = match policy {
                    Policy::Stop(why) => why,
                    // Interrupted by the shutdown itself.
                    Policy::Retry => reason::CAPTURE_INTERRUPTED,
                };
                metrics.set_ready(false);
                metrics.set_unhealthy();
                progress.set_health(conditions::CAPTURING, false, why, e.to_string());
                return Err(e);
            }
        }
    }
}

/// Hand encoded records to Kafka, counting them in the metrics; returns how
/// many were sent. What both sources do with each change's records.
pub async fn send_records<P: Clone + Send + Sync + 'static>(
    sink: &crate::sink::KafkaSink<P>,
    metrics: &crate::metrics::Metrics,
    records: &mut Vec<crate::record::Record>,
) -> Result<u64, CaptureError> {
    let mut sent = 0;
    for r in records.drain(..) {
        let bytes = r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len);
        if r.value.is_some() {
            metrics.events.inc();
        }
        metrics.bytes.inc_by(bytes as u64);
        sink.send(&r.topic, r.key.as_deref(), r.value.as_deref(), &r.headers)
            .await?;
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definite_errors_are_not_retried() {
        assert!(!CaptureError::SlotMissing { slot: "s".into() }.is_transient());
        assert!(!CaptureError::SlotLost { slot: "s".into() }.is_transient());
        assert!(
            CaptureError::SlotActive {
                slot: "s".into(),
                pid: 1
            }
            .is_transient()
        );
        assert!(
            !CaptureError::Polling(PollError::NoKey {
                table: "public.t".into()
            })
            .is_transient()
        );
    }

    #[test]
    fn one_policy_decides_retry_or_stop_with_the_reason() {
        use crate::replication::pgoutput::DecodeError;
        use siphon_crds::conditions::reason;
        // Deterministic: the same bytes after a restart fail the same way.
        assert_eq!(
            CaptureError::Decode(DecodeError::UnknownMessage { tag: b'?' }).policy(),
            Policy::Stop(reason::CAPTURE_FAILED)
        );
        assert_eq!(
            CaptureError::Assembly(AssemblyError::UnknownRelation { oid: 1 }).policy(),
            Policy::Retry
        );
        assert_eq!(
            CaptureError::SlotLost { slot: "s".into() }.policy(),
            Policy::Stop(reason::SLOT_LOST)
        );
        assert_eq!(
            CaptureError::Polling(PollError::NoKey {
                table: "public.t".into()
            })
            .policy(),
            Policy::Stop(reason::NO_PRIMARY_KEY)
        );
    }

    #[test]
    fn a_busy_slot_names_its_holder() {
        let e = CaptureError::SlotActive {
            slot: "siphon_shop".into(),
            pid: 4242,
        };
        assert_eq!(
            e.to_string(),
            "replication slot siphon_shop is in use by another process (pid 4242); only one worker may stream from a slot"
        );
        assert_eq!(e.metric_label(), "slot_active");
    }
}
