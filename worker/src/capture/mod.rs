//! A capture: a source (WAL through a slot, or polled tables) whose changes
//! become records in Kafka, and whose position is saved once Kafka holds
//! them. What both sources share lives here, so that a source brings only
//! how it reads.
//!
//! ```text
//!  run_forever ──► logical::run  (WAL through a replication slot)
//!              └─► polling::run  (keyset SELECTs on an interval / NOTIFY)
//!        both: start::{sql_connect, start_kafka}
//!              Output: RecordEncoder ──► KafkaSink ──► offsets topic (Position)
//!                      delivery: AtLeastOnce | ExactlyOnce
//! ```
//!
//! - [`error`]: why a capture stops, and the one [`Policy`] decided from it;
//! - [`start`]: the SQL connections and the Kafka side of a start;
//! - [`output`]: records out and positions written, under the delivery
//!   guarantee the configuration asks for.
//!
//! **Restart policy.** A transient error (a lost connection, a broker
//! outage, a column added under a backfill) restarts the source from its
//! last durable position after a backoff (500 ms doubling to 30 s, reset
//! after a minute of running); any other error stops the worker with a
//! reason and the fix in `Capturing=False`.

pub mod error;
pub mod output;
pub mod start;

use std::sync::Arc;
use std::time::{Duration, Instant};

use siphon_crds::capture::CaptureMode;
use siphon_crds::conditions::{self, reason};
use tokio::sync::watch;

use crate::config::Validated;
use crate::metrics::{Metrics, ReasonLabels};
use crate::progress::Progress;

pub use error::{CaptureError, Policy, Stopped};
pub use output::{Delivery, Output};
pub use start::{
    announce_capturing, connect_params, kafka_health, kafka_ids, sql_connect, sql_connect_with,
    sql_params, start_kafka, ticker,
};

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
