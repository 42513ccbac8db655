//! Reporting progress into the PostgresCapture's `status.progress`, and the
//! worker's own conditions (`Capturing`, `KafkaAvailable`), when the worker
//! runs in Kubernetes. The worker owns those fields through its own
//! server-side-apply field manager; the operator reads the conditions (Ready
//! sums them up) and never writes them. `conditions` is a list keyed by
//! `type`, so each writer keeps its own entries.
//!
//! Reporting is best effort: a failed patch is logged and retried at the next
//! tick; it never stops the capture. A change of a condition is sent at once;
//! the reason the worker stops is sent before it exits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use siphon_crds::PostgresCapture;
use siphon_crds::status::ProgressStatus;
use siphon_crds::worker_config::StatusTarget;
use tokio::sync::Notify;

/// Field manager of the worker's status writes.
pub const FIELD_MANAGER: &str = siphon_crds::status::field_manager::WORKER;

/// One condition the worker owns.
#[derive(Clone, Debug, PartialEq)]
struct Health {
    ok: bool,
    reason: String,
    message: String,
    /// When `ok` last changed (RFC 3339).
    since: String,
}

#[derive(Default)]
struct Inner {
    progress: Mutex<ProgressStatus>,
    health: Mutex<BTreeMap<&'static str, Health>>,
    changed: Notify,
}

/// Shared, latest progress and health; the capture loop updates them, the
/// reporter sends them.
#[derive(Clone, Default)]
pub struct Progress(Arc<Inner>);

impl Progress {
    pub fn update(&self, f: impl FnOnce(&mut ProgressStatus)) {
        let mut guard = self.0.progress.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
    }

    pub fn snapshot(&self) -> ProgressStatus {
        self.0
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Set one of the worker's conditions; a change wakes the reporter.
    pub fn set_health(
        &self,
        type_: &'static str,
        ok: bool,
        reason: &str,
        message: impl Into<String>,
    ) {
        let message: String = message.into().chars().take(1024).collect();
        let mut health = self.0.health.lock().unwrap_or_else(|p| p.into_inner());
        let since = match health.get(type_) {
            Some(h) if h.ok == ok && h.reason == reason && h.message == message => return,
            Some(h) if h.ok == ok => h.since.clone(),
            _ => now(),
        };
        health.insert(
            type_,
            Health {
                ok,
                reason: reason.to_string(),
                message,
                since,
            },
        );
        drop(health);
        self.0.changed.notify_one();
    }

    fn conditions(&self) -> Vec<serde_json::Value> {
        let health = self.0.health.lock().unwrap_or_else(|p| p.into_inner());
        health
            .iter()
            .map(|(type_, h)| {
                json!({
                    "type": type_,
                    "status": if h.ok { "True" } else { "False" },
                    "reason": h.reason,
                    "message": h.message,
                    "lastTransitionTime": h.since,
                })
            })
            .collect()
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Send progress and conditions every `every` (and at once when a condition
/// changes) until the process ends.
pub async fn report(target: StatusTarget, progress: Progress, every: Duration) {
    let Some(api) = capture_api(&target).await else {
        return;
    };
    let mut last = None;
    loop {
        let mut snapshot = progress.snapshot();
        snapshot.updated_at = None;
        let conditions = progress.conditions();
        let current = (snapshot.clone(), conditions.clone());
        if last.as_ref() != Some(&current) {
            match send(&api, &target, snapshot, conditions).await {
                Ok(()) => last = Some(current),
                Err(error) => {
                    tracing::warn!(%error, capture = %target.name, "cannot report progress")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = progress.0.changed.notified() => {}
        }
    }
}

/// Send progress and conditions once, now: the last word of a worker that
/// stops for good.
pub async fn report_now(target: &StatusTarget, progress: &Progress) {
    let Some(api) = capture_api(target).await else {
        return;
    };
    let mut snapshot = progress.snapshot();
    snapshot.updated_at = None;
    if let Err(error) = send(&api, target, snapshot, progress.conditions()).await {
        tracing::warn!(%error, capture = %target.name, "cannot report why the worker stops");
    }
}

async fn capture_api(target: &StatusTarget) -> Option<Api<PostgresCapture>> {
    match Client::try_default().await {
        Ok(c) => Some(Api::namespaced(c, &target.namespace)),
        Err(error) => {
            tracing::warn!(%error, "no Kubernetes client: progress is not reported in the status");
            None
        }
    }
}

async fn send(
    api: &Api<PostgresCapture>,
    target: &StatusTarget,
    mut progress: ProgressStatus,
    conditions: Vec<serde_json::Value>,
) -> Result<(), kube::Error> {
    progress.updated_at = Some(now());
    let mut status = json!({ "progress": progress });
    if !conditions.is_empty() {
        status["conditions"] = serde_json::Value::Array(conditions);
    }
    let body = json!({
        "apiVersion": format!("{}/{}", siphon_crds::GROUP, siphon_crds::VERSION),
        "kind": "PostgresCapture",
        "status": status,
    });
    api.patch_status(
        &target.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}
