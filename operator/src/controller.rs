//! The PostgresCapture controller: what it watches, which changes call for
//! a reconcile, and the finalizer around the reconcile, whose stages are in
//! [`crate::reconcile`] (applied captures) and
//! [`crate::reconcile::teardown`] (deleted ones); when to look again is
//! [`crate::reconcile::requeue`]'s one policy.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use siphon_crds::capture::PostgresCapture;
use siphon_crds::conditions;

use crate::build::WorkerDefaults;
use crate::database::Unfit;
use crate::metrics::Metrics;
use crate::names;
use crate::scope::Scope;

/// Why a reconcile failed; `metric_label` keeps metric cardinality low.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Unfit(#[from] Unfit),
    #[error("waiting for the worker pods of {0} to stop before teardown")]
    WorkerStillRunning(String),
    #[error("teardown blocked: {0}")]
    TeardownBlocked(String),
    #[error("cannot serialize the worker configuration: {0}")]
    Serialize(#[from] serde_yaml::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Unfit(u) => u.reason,
            Error::WorkerStillRunning(_) => "worker_stopping",
            Error::TeardownBlocked(_) => "teardown_blocked",
            Error::Serialize(_) => "serialize",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// Every capture the operator watches, as its watches last saw them (one
    /// store per watch): validation checks slot claims against them without
    /// listing them from the API server on each reconcile.
    pub captures: Vec<reflector::Store<PostgresCapture>>,
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub defaults: WorkerDefaults,
    /// The conditions each capture (by uid) last had its Events for. The
    /// watch's copy of a capture can be older than this operator's last
    /// status write (a reconcile that follows at once, say after the
    /// finalizer is added), and comparing against it would tell the same
    /// transitions twice.
    pub announced: std::sync::Mutex<std::collections::HashMap<String, Vec<Condition>>>,
}

impl Context {
    /// Every capture the watches hold that is not being deleted: what
    /// validation checks slot claims against.
    pub(crate) fn live_captures(&self) -> Vec<PostgresCapture> {
        self.captures
            .iter()
            .flat_map(|store| store.state())
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .map(|c| PostgresCapture::clone(&c))
            .collect()
    }

    fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }

    pub(crate) async fn event(
        &self,
        capture: &PostgresCapture,
        warning: bool,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let ev = KubeEvent {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder().publish(&ev, &capture.object_ref(&())).await {
            tracing::warn!(
                %error,
                namespace = capture.namespace().unwrap_or_default(),
                capture = %capture.name_any(),
                reason,
                "cannot publish event"
            );
        }
    }
}

/// What one controller watches: the captures and worker Deployments of one
/// namespace, or of the whole cluster, and the store its watch fills.
pub struct Watch {
    captures: Api<PostgresCapture>,
    selector: String,
    workers: Api<Deployment>,
    writer: reflector::store::Writer<PostgresCapture>,
}

/// The watches of a scope and their stores (the stores go into the
/// [`Context`] so validation sees every capture the operator watches).
pub fn watches(
    scope: &Scope,
    selector: &str,
    client: &Client,
) -> (Vec<Watch>, Vec<reflector::Store<PostgresCapture>>) {
    scope
        .apis::<PostgresCapture>(client)
        .into_iter()
        .zip(scope.apis::<Deployment>(client))
        .map(|(captures, workers)| {
            let (store, writer) = reflector::store();
            (
                Watch {
                    captures,
                    selector: selector.to_string(),
                    workers,
                    writer,
                },
                store,
            )
        })
        .unzip()
}

/// Run the controllers until shutdown, one per watch (one for the whole
/// cluster, or one per watched namespace), each reconciling at most
/// `concurrency` captures at once (never one capture twice at once).
pub async fn run(ctx: Arc<Context>, watches: Vec<Watch>, concurrency: u16) {
    futures::future::join_all(
        watches
            .into_iter()
            .zip(ctx.captures.clone())
            .map(|(w, store)| run_one(ctx.clone(), w, store, concurrency)),
    )
    .await;
}

async fn run_one(
    ctx: Arc<Context>,
    watch: Watch,
    store: reflector::Store<PostgresCapture>,
    concurrency: u16,
) {
    // The controller holds its reconciles until this store has seen the
    // initial list, so slot-claim validation never reads it half-filled.
    let mut config = watcher::Config::default().any_semantic();
    if !watch.selector.is_empty() {
        config = config.labels(&watch.selector);
    }
    let captures = watcher(watch.captures, config)
        .default_backoff()
        .reflect(watch.writer)
        .applied_objects()
        .predicate_filter(worth_a_reconcile, Default::default());
    // Only the worker Deployments (by label: a cluster's other Deployments are
    // neither watched nor held in memory), and only when their availability
    // changes: the Deployment controller writes a rollout's status in several
    // steps, each of which would otherwise reconcile the capture. A
    // Deployment deleted behind the operator's back is recreated by the
    // periodic requeue.
    let workers = watcher(
        watch.workers,
        watcher::Config::default().labels(&format!(
            "{}={}",
            names::MANAGED_BY_LABEL,
            names::MANAGED_BY
        )),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(worker_availability, Default::default());
    Controller::for_stream(captures, store)
        .owns_stream(workers)
        .with_config(controller::Config::default().concurrency(concurrency))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => {
                    tracing::debug!(capture = %obj.name, namespace = ?obj.namespace, "reconciled")
                }
                Err(error) => tracing::debug!(%error, "reconcile failed"),
            }
        })
        .await;
}

/// What of a capture, when it changes, calls for a reconcile (a hash, as
/// kube-runtime's predicates take it): the spec (its generation), deletion,
/// finalizers, and the worker's backfill milestones. Not the rest of the
/// status: the operator writes slot facts and the worker writes lag and row
/// counts all the time, and a reconcile on each of those writes would
/// reconcile every capture again and again (their freshness comes from the
/// periodic requeue instead).
pub fn worth_a_reconcile(capture: &PostgresCapture) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    capture.metadata.generation.hash(&mut h);
    capture.metadata.deletion_timestamp.is_some().hash(&mut h);
    capture.metadata.finalizers.hash(&mut h);
    // The worker's own conditions: Ready follows them at once.
    for c in capture.status.iter().flat_map(|s| &s.conditions) {
        if conditions::WORKER_OWNED.contains(&c.type_.as_str()) {
            (&c.type_, &c.status, &c.reason).hash(&mut h);
        }
    }
    if let Some(progress) = capture.status.as_ref().and_then(|s| s.progress.as_ref()) {
        progress.completed_snapshot_request.hash(&mut h);
        for table in &progress.tables {
            (&table.name, &table.state).hash(&mut h);
        }
    }
    Some(h.finish())
}

/// What of a worker Deployment, when it changes, calls for a reconcile of its
/// capture: its spec (generation), deletion, and how many replicas are
/// available (what `WorkerAvailable` says). Not the replica count: a pod
/// created or going away is followed by an availability change, and the
/// teardown polls for the pods itself.
pub fn worker_availability(deployment: &Deployment) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    deployment.metadata.generation.hash(&mut h);
    deployment
        .metadata
        .deletion_timestamp
        .is_some()
        .hash(&mut h);
    let status = deployment.status.as_ref();
    status.and_then(|s| s.available_replicas).hash(&mut h);
    Some(h.finish())
}

/// Every line a reconcile logs names its capture and namespace.
#[tracing::instrument(skip_all, fields(capture = %capture.name_any(), namespace = %capture.namespace().unwrap_or_default()))]
async fn reconcile(capture: Arc<PostgresCapture>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = capture.namespace().unwrap_or_default();
    let api: Api<PostgresCapture> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, names::FINALIZER, capture, |event| async {
        match event {
            Finalizer::Apply(c) => crate::reconcile::apply(c, ctx.clone()).await,
            Finalizer::Cleanup(c) => crate::reconcile::teardown::cleanup(c, ctx.clone()).await,
        }
    })
    .await
    .or_else(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => Err(e),
        // Teardown done and the finalizer already gone with the object (its
        // namespace was being deleted): nothing left to do.
        kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(s)) if s.code == 404 => {
            Ok(Action::await_change())
        }
        other => Err(Error::Finalizer(other.to_string())),
    });
    ctx.metrics.observe_reconcile(
        started.elapsed(),
        result.as_ref().err().map(Error::metric_label),
    );
    result
}

fn error_policy(capture: Arc<PostgresCapture>, error: &Error, _ctx: Arc<Context>) -> Action {
    let delay = crate::reconcile::requeue::after_error(error);
    match error {
        // An expected wait of the teardown, not a failure.
        Error::WorkerStillRunning(_) => {
            tracing::debug!(capture = %capture.name_any(), namespace = %capture.namespace().unwrap_or_default(), %error, retry_in = ?delay, "teardown waits")
        }
        _ => {
            tracing::warn!(capture = %capture.name_any(), namespace = %capture.namespace().unwrap_or_default(), %error, retry_in = ?delay, "reconcile failed")
        }
    }
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::{SPEC, fixture};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use siphon_crds::status::{PostgresCaptureStatus, ProgressStatus, TableProgress};

    fn with_progress(mut c: PostgresCapture, state: &str, rows: u64) -> PostgresCapture {
        c.status = Some(PostgresCaptureStatus {
            progress: Some(ProgressStatus {
                events: rows,
                lag: Some(format!("{rows}ms")),
                tables: vec![TableProgress {
                    name: "public.orders".into(),
                    state: state.into(),
                    rows_copied: rows,
                    rows_estimated: None,
                }],
                ..ProgressStatus::default()
            }),
            ..PostgresCaptureStatus::default()
        });
        c
    }

    #[test]
    fn only_spec_deletion_finalizers_and_backfill_milestones_call_for_a_reconcile() {
        let mut base = fixture("default", "shop", SPEC);
        base.metadata.generation = Some(1);
        let running = with_progress(base.clone(), "Running", 10);
        let key = worth_a_reconcile(&running);

        // The worker's counters and the operator's slot facts: no reconcile.
        let mut busier = with_progress(base.clone(), "Running", 5_000);
        busier.status.as_mut().unwrap().observed_generation = Some(1);
        assert_eq!(worth_a_reconcile(&busier), key);

        // A backfill milestone, a spec change, a finalizer, deletion: reconcile.
        let done = with_progress(base.clone(), "Done", 5_000);
        assert_ne!(worth_a_reconcile(&done), key);
        let mut edited = running.clone();
        edited.metadata.generation = Some(2);
        assert_ne!(worth_a_reconcile(&edited), key);
        let mut held = running.clone();
        held.metadata.finalizers = Some(vec![names::FINALIZER.into()]);
        assert_ne!(worth_a_reconcile(&held), key);
        let mut deleted = held.clone();
        deleted.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert_ne!(worth_a_reconcile(&deleted), worth_a_reconcile(&held));
    }

    #[test]
    fn a_worker_deployment_calls_for_a_reconcile_when_its_availability_changes() {
        use k8s_openapi::api::apps::v1::DeploymentStatus;
        let status = |replicas, updated, available| {
            let mut d = Deployment::default();
            d.metadata.generation = Some(1);
            d.status = Some(DeploymentStatus {
                replicas: Some(replicas),
                updated_replicas: Some(updated),
                available_replicas: available,
                ..DeploymentStatus::default()
            });
            worker_availability(&d)
        };
        // Rollout bookkeeping alone: no reconcile.
        assert_eq!(status(1, 0, None), status(1, 1, None));
        assert_eq!(status(0, 0, None), status(1, 1, None));
        // The pod became available, or the worker was scaled away: reconcile.
        assert_ne!(status(1, 1, None), status(1, 1, Some(1)));
        assert_ne!(status(1, 1, Some(1)), status(0, 0, None));
    }
}
