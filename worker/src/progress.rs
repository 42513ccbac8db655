//! Reporting progress into the PostgresCapture's `status.progress`, when the
//! worker runs in Kubernetes. The worker owns that field through its own
//! server-side-apply field manager; the operator never writes it.
//!
//! Reporting is best effort: a failed patch is logged and retried at the next
//! tick; it never stops the capture.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use siphon_crds::PostgresCapture;
use siphon_crds::status::ProgressStatus;
use siphon_crds::worker_config::StatusTarget;

/// Field manager of the worker's status writes.
pub const FIELD_MANAGER: &str = "siphon-worker";

/// Shared, latest progress; the capture loop updates it, the reporter sends it.
#[derive(Clone, Default)]
pub struct Progress(Arc<Mutex<ProgressStatus>>);

impl Progress {
    pub fn update(&self, f: impl FnOnce(&mut ProgressStatus)) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
    }

    pub fn snapshot(&self) -> ProgressStatus {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Patch `status.progress` every `every` until the process ends.
pub async fn report(target: StatusTarget, progress: Progress, every: Duration) {
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(%error, "no Kubernetes client: progress is not reported in the status");
            return;
        }
    };
    let api: Api<PostgresCapture> = Api::namespaced(client, &target.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut last = None;
    loop {
        let mut snapshot = progress.snapshot();
        snapshot.updated_at = None;
        if last.as_ref() != Some(&snapshot) {
            let mut sent = snapshot.clone();
            sent.updated_at =
                Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            let body = json!({
                "apiVersion": format!("{}/{}", siphon_crds::GROUP, siphon_crds::VERSION),
                "kind": "PostgresCapture",
                "status": { "progress": sent },
            });
            match api
                .patch_status(&target.name, &params, &Patch::Apply(&body))
                .await
            {
                Ok(_) => last = Some(snapshot),
                Err(error) => {
                    tracing::warn!(%error, capture = %target.name, "cannot report progress")
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}
