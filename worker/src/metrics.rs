//! Prometheus metrics of the worker (`siphon_worker_*`) and its HTTP endpoint
//! (`/metrics`, `/healthz`, `/readyz`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

/// The worker's metrics. Counters are cheap atomics, safe on the hot path.
pub struct Metrics {
    registry: Registry,
    /// Changes written to Kafka (records, tombstones excluded).
    pub events: Counter,
    /// Bytes of record keys and values handed to Kafka.
    pub bytes: Counter,
    /// Source transactions whose records were all handed to Kafka.
    pub transactions: Counter,
    /// Rows read by backfill.
    pub backfill_rows: Counter,
    /// Rows of each table backfilled so far (kept across restarts, from the
    /// stored position).
    pub backfill_table_rows: Family<TableLabels, Gauge>,
    /// 1 once a table's backfill is done.
    pub backfill_table_complete: Family<TableLabels, Gauge>,
    /// Kafka errors, by reason.
    pub kafka_errors: Family<ReasonLabels, Counter>,
    /// Restarts of the capture loop after a transient error, by reason.
    pub restarts: Family<ReasonLabels, Counter>,
    /// Bytes of WAL between the server's end and the confirmed position.
    pub lag_bytes: Gauge,
    /// Seconds between the newest commit seen and now, when it was delivered.
    pub lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Last LSN confirmed to PostgreSQL, as a number.
    pub confirmed_lsn: Gauge,
    /// Records handed to Kafka and not yet acknowledged.
    pub in_flight: Gauge,
    /// Bytes of streamed transactions buffered in memory.
    pub buffered_bytes: Gauge,
    /// 1 while Kafka's brokers answer, 0 while all of them are down.
    pub kafka_available: Gauge,
    /// Polling: rows read and sent, by table.
    pub polled_rows: Family<TableLabels, Counter>,
    /// Polling: deletes drained from the deletes table.
    pub polled_deletes: Counter,
    /// Polling: seconds per poll (every table read once, deletes drained).
    pub poll_duration: Histogram,
    /// Polling: polls that failed, by reason.
    pub poll_errors: Family<ReasonLabels, Counter>,
    /// Exactly once: seconds a Kafka transaction took to commit (the
    /// flush of its records, then the broker's end of the transaction).
    pub kafka_commit_seconds: Histogram,
    healthy: AtomicBool,
    ready: AtomicBool,
    /// Unix seconds of the last progress of the loop (health).
    pub heartbeat_unix: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("siphon_worker");
        let m = Self {
            registry: Registry::default(),
            events: Counter::default(),
            bytes: Counter::default(),
            transactions: Counter::default(),
            backfill_rows: Counter::default(),
            backfill_table_rows: Family::default(),
            backfill_table_complete: Family::default(),
            kafka_errors: Family::default(),
            restarts: Family::default(),
            lag_bytes: Gauge::default(),
            lag_seconds: Gauge::default(),
            confirmed_lsn: Gauge::default(),
            in_flight: Gauge::default(),
            buffered_bytes: Gauge::default(),
            kafka_available: Gauge::default(),
            polled_rows: Family::default(),
            polled_deletes: Counter::default(),
            poll_duration: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            poll_errors: Family::default(),
            kafka_commit_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            healthy: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            heartbeat_unix: AtomicI64::new(0),
        };
        registry.register("events", "Changes written to Kafka", m.events.clone());
        registry.register(
            "bytes",
            "Bytes of keys and values handed to Kafka",
            m.bytes.clone(),
        );
        registry.register(
            "transactions",
            "Source transactions fully handed to Kafka",
            m.transactions.clone(),
        );
        registry.register(
            "backfill_rows",
            "Rows read by backfill",
            m.backfill_rows.clone(),
        );
        registry.register(
            "backfill_table_rows",
            "Rows of a table backfilled so far, restarts included",
            m.backfill_table_rows.clone(),
        );
        registry.register(
            "backfill_table_complete",
            "1 once the table's backfill is done",
            m.backfill_table_complete.clone(),
        );
        registry.register(
            "kafka_errors",
            "Kafka errors by reason",
            m.kafka_errors.clone(),
        );
        registry.register(
            "restarts",
            "Restarts of the capture loop by reason",
            m.restarts.clone(),
        );
        registry.register(
            "lag_bytes",
            "WAL bytes between the server's end and the confirmed position",
            m.lag_bytes.clone(),
        );
        registry.register(
            "lag_seconds",
            "Seconds from the newest commit to its delivery; 0 once caught up",
            m.lag_seconds.clone(),
        );
        registry.register(
            "confirmed_lsn",
            "Last LSN confirmed to PostgreSQL",
            m.confirmed_lsn.clone(),
        );
        registry.register(
            "in_flight_records",
            "Records not yet acknowledged by Kafka",
            m.in_flight.clone(),
        );
        registry.register(
            "buffered_bytes",
            "Bytes of streamed transactions buffered in memory",
            m.buffered_bytes.clone(),
        );
        registry.register(
            "kafka_available",
            "1 while Kafka's brokers answer, 0 while every broker is down",
            m.kafka_available.clone(),
        );
        registry.register(
            "polled_rows",
            "Polling: rows read and sent, by table",
            m.polled_rows.clone(),
        );
        registry.register(
            "polled_deletes",
            "Polling: deletes drained from the deletes table",
            m.polled_deletes.clone(),
        );
        registry.register(
            "poll_duration_seconds",
            "Polling: seconds per poll of every table",
            m.poll_duration.clone(),
        );
        registry.register(
            "kafka_commit_duration_seconds",
            "Exactly once: seconds a Kafka transaction took to commit",
            m.kafka_commit_seconds.clone(),
        );
        registry.register(
            "poll_errors",
            "Polling: failed polls by reason",
            m.poll_errors.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The capture is streaming (readiness).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The worker hit a definite error and is about to stop (liveness).
    pub fn set_unhealthy(&self) {
        self.healthy.store(false, Ordering::Relaxed);
    }

    /// Status, body and content type of a request. `/metrics` is
    /// OpenMetrics text (what prometheus-client writes, `# EOF` included),
    /// and says so: Prometheus 3 refuses a scrape without a content type.
    fn route(&self, path: &str, accept: Option<&str>) -> (StatusCode, String, &'static str) {
        const TEXT: &str = "text/plain; charset=utf-8";
        match path {
            "/metrics" => {
                let (body, ctype) = siphon_exposition::respond(self.render(), accept);
                (StatusCode::OK, body, ctype)
            }
            "/healthz" if self.healthy.load(Ordering::Relaxed) => {
                (StatusCode::OK, "ok\n".into(), TEXT)
            }
            "/healthz" => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n".into(), TEXT),
            "/readyz" if self.ready.load(Ordering::Relaxed) => {
                (StatusCode::OK, "ok\n".into(), TEXT)
            }
            "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into(), TEXT),
            _ => (StatusCode::NOT_FOUND, "not found\n".into(), TEXT),
        }
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let accept = req
                    .headers()
                    .get(hyper::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let (status, body, content_type) = metrics.route(req.uri().path(), accept);
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(content_type),
                );
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_and_names() {
        let m = Metrics::default();
        assert_eq!(m.route("/readyz", None).0, StatusCode::SERVICE_UNAVAILABLE);
        m.set_ready(true);
        assert_eq!(m.route("/readyz", None).0, StatusCode::OK);
        m.events.inc_by(3);
        let (_, text, content_type) = m.route(
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0"),
        );
        assert_eq!(content_type, siphon_exposition::OPENMETRICS);
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics ends with # EOF: {text}"
        );
        assert!(text.contains("siphon_worker_events_total 3"), "{text}");
        let (_, text, content_type) = m.route("/metrics", None);
        assert_eq!(content_type, siphon_exposition::TEXT_004);
        assert!(
            text.contains("# TYPE siphon_worker_events_total counter"),
            "{text}"
        );
        assert!(text.contains("siphon_worker_lag_bytes"), "{text}");
    }
}
