//! What every run of either source starts with: the SQL connections and the
//! Kafka side (topics, the producer, fencing and the stored position).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use siphon_crds::capture::TopicCreation;
use siphon_crds::conditions::{self, reason};
use siphon_postgres::SqlParams;
use siphon_postgres::connect::ConnectError;
use tokio::sync::Notify;

use super::CaptureError;
use crate::config::Validated;
use crate::metrics::Metrics;
use crate::offsets::{self, Position};
use crate::progress::Progress;
use crate::replication::ConnectParams;
use crate::sink::{KafkaSink, topics};

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

/// The source is running: ready, Kafka available, `Capturing` with
/// `message` (what the source does, in the status).
pub fn announce_capturing(metrics: &Metrics, progress: &Progress, message: &str) {
    metrics.set_ready(true);
    metrics.kafka_available.set(1);
    progress.set_health(conditions::CAPTURING, true, reason::STREAMING, message);
}

/// A ticker of `period` that, after a late tick, waits a whole period again
/// (the loops' ticks never burst to catch up).
pub fn ticker(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// The Kafka client id, and the transactional id in exactly-once mode.
pub fn kafka_ids(v: &Validated) -> (String, Option<String>) {
    let id = format!("siphon-{}", v.config.name.replace('/', "-"));
    let exactly_once = v.config.kafka.delivery == siphon_crds::capture::Delivery::ExactlyOnce;
    (id.clone(), exactly_once.then_some(id))
}
