//! The PostgresCapture controller: a reconcile pipeline wrapped in a finalizer.
//!
//! ```text
//! read Secrets → validate (pure) → preflight DB → provision → build (pure) → apply (SSA) → status
//! ```
//!
//! Invalid specs wait for a change (and a periodic look, since another
//! capture's deletion can free a claimed slot); unfit databases and transient
//! errors requeue with a delay, because a database can be fixed without any
//! Kubernetes event. A healthy capture is looked at every 30 s so that slot
//! lag and retained WAL in the status stay fresh.
//!
//! Deletion runs [`cleanup`]: stop the worker and wait until its pods are gone
//! (one writer per slot, also while tearing down), then drop exactly what
//! `status.managed` lists. The finalizer stays until that succeeds or the
//! policy is `Retain`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use siphon_crds::capture::{CaptureMode, DeletionPolicy, PostgresCapture};
use siphon_crds::conditions::{self, reason};
use siphon_crds::status::ManagedObjects;

use crate::build::{self, WorkerDefaults};
use crate::database::{self, ConnectParams, Unfit};
use crate::metrics::{CaptureLabels, Metrics};
use crate::names;
use crate::polling;
use crate::scope::Scope;
use crate::status::{self, set_condition};
use crate::validate;

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
    fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }

    async fn event(
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
            tracing::warn!(%error, "cannot publish event");
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
            Finalizer::Apply(c) => apply(c, ctx.clone()).await,
            Finalizer::Cleanup(c) => cleanup(c, ctx.clone()).await,
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
    let delay = match error {
        Error::WorkerStillRunning(_) => Duration::from_secs(2),
        Error::Unfit(u) if u.transient => Duration::from_secs(10),
        Error::TeardownBlocked(_) => Duration::from_secs(10),
        _ => Duration::from_secs(15),
    };
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

/// Wall time per step of one reconcile, logged at debug level with the
/// outcome: where a slow reconcile spends its time (API server, database).
#[derive(Default)]
struct Laps {
    last: Option<Instant>,
    steps: Vec<(&'static str, Duration)>,
}

impl Laps {
    fn lap(&mut self, step: &'static str) {
        let now = Instant::now();
        let since = self.last.replace(now).unwrap_or(now);
        self.steps.push((step, now - since));
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, d)) in self.steps.iter().enumerate().skip(1) {
            let sep = if i > 1 { " " } else { "" };
            write!(f, "{sep}{step}={}ms", d.as_millis())?;
        }
        Ok(())
    }
}

struct Credentials {
    user: String,
    password: String,
    /// The CA of `spec.postgres.caSecretRef`, written to a private file.
    ca_file: Option<std::path::PathBuf>,
}

/// A Secret as `seen` already holds it (what holding it returned), or read.
async fn secret_seen_or_read(
    secrets: &Api<Secret>,
    seen: &[Secret],
    name: &str,
) -> Result<Option<Secret>, kube::Error> {
    match seen
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
    {
        Some(secret) => Ok(Some(secret.clone())),
        None => secrets.get_opt(name).await,
    }
}

/// The credentials (and CA) of the capture, from its Secrets; `seen` are
/// Secrets this reconcile already read.
async fn read_credentials(
    ctx: &Context,
    capture: &PostgresCapture,
    seen: &[Secret],
) -> Result<Credentials, Unfit> {
    let ns = capture.namespace().unwrap_or_default();
    let r = &capture.spec.postgres.credentials_secret_ref;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let missing = |what: String| Unfit {
        reason: reason::SECRET_NOT_FOUND,
        message: what,
        transient: false,
    };
    let secret = secret_seen_or_read(&secrets, seen, &r.name)
        .await
        .map_err(|e| Unfit {
            reason: reason::SECRET_NOT_FOUND,
            message: format!("cannot read Secret {ns}/{}: {e}", r.name),
            transient: true,
        })?
        .ok_or_else(|| {
            missing(format!(
                "Secret {ns}/{} does not exist: create it with keys {} and {}",
                r.name, r.username_key, r.password_key
            ))
        })?;
    let get = |key: &str| -> Result<String, Unfit> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key).cloned())
            })
            .ok_or_else(|| {
                missing(format!(
                    "Secret {ns}/{} has no key {key:?}: add it or set usernameKey/passwordKey",
                    r.name
                ))
            })
    };
    let ca_file = match &capture.spec.postgres.ca_secret_ref {
        None => None,
        Some(ca) => {
            let secret = secret_seen_or_read(&secrets, seen, &ca.name)
                .await
                .ok()
                .flatten()
                .ok_or_else(|| {
                    missing(format!(
                        "CA Secret {ns}/{} does not exist: create it with key {}",
                        ca.name, ca.key
                    ))
                })?;
            let pem = secret
                .data
                .as_ref()
                .and_then(|d| d.get(&ca.key))
                .map(|b| b.0.clone())
                .ok_or_else(|| {
                    missing(format!(
                        "CA Secret {ns}/{} has no key {:?}",
                        ca.name, ca.key
                    ))
                })?;
            let path =
                std::env::temp_dir().join(format!("siphon-ca-{ns}-{}.crt", capture.name_any()));
            std::fs::write(&path, pem).map_err(|e| Unfit {
                reason: reason::SECRET_NOT_FOUND,
                message: format!("cannot write the CA certificate to {}: {e}", path.display()),
                transient: true,
            })?;
            Some(path)
        }
    };
    Ok(Credentials {
        user: get(&r.username_key)?,
        password: get(&r.password_key)?,
        ca_file,
    })
}

fn connect_params(capture: &PostgresCapture, creds: Credentials) -> ConnectParams {
    let pg = &capture.spec.postgres;
    ConnectParams {
        host: pg.host.clone(),
        port: pg.port,
        database: pg.database.clone(),
        user: creds.user,
        password: creds.password,
        ssl_mode: pg.ssl_mode,
        ca_file: creds.ca_file,
    }
}

/// Merge a part of the status without giving up the rest: server-side apply
/// removes fields the applier owned but left out, so partial updates (the
/// managed-objects record during provisioning, teardown conditions) must be
/// merge patches, never partial applies; losing `status.managed` would make the
/// finalizer forget what to drop.
async fn merge_status(
    api: &Api<PostgresCapture>,
    name: &str,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    let params = PatchParams {
        field_manager: Some(names::OPERATOR_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch_status(name, &params, &Patch::Merge(&json!({ "status": status })))
        .await?;
    Ok(())
}

/// Patch the whole operator-owned part of the status (server-side apply).
async fn patch_status(
    api: &Api<PostgresCapture>,
    name: &str,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    let body = json!({
        "apiVersion": format!("{}/{}", siphon_crds::GROUP, siphon_crds::VERSION),
        "kind": "PostgresCapture",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(names::OPERATOR_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

async fn apply(capture: Arc<PostgresCapture>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = capture.namespace().unwrap_or_default();
    let name = capture.name_any();
    let generation = capture.metadata.generation;
    let api: Api<PostgresCapture> = Api::namespaced(ctx.client.clone(), &ns);
    let old = capture.status.clone().unwrap_or_default();
    let mut conds: Vec<Condition> = old.conditions.clone();
    let mut managed = old.managed.clone().unwrap_or_default();
    // A polling capture has no slot: no slot facts and no WalHealthy (left
    // over from an earlier logical mode), and a logical one no CursorIndexed.
    let polling_mode = capture.spec.mode == CaptureMode::Polling;
    let mut slot = if polling_mode { None } else { old.slot.clone() };
    status::remove_condition(
        &mut conds,
        if polling_mode {
            conditions::WAL_HEALTHY
        } else {
            conditions::CURSOR_INDEXED
        },
    );

    let mut laps = Laps::default();
    laps.lap("start");
    let outcome = provision_and_deploy(
        &capture,
        &ctx,
        &api,
        &mut conds,
        &mut managed,
        &mut slot,
        &mut laps,
    )
    .await;
    let requeue = match &outcome {
        Ok(()) => Duration::from_secs(30),
        Err(Error::Unfit(u)) => {
            set_condition(
                &mut conds,
                conditions::PROVISIONED,
                false,
                u.reason,
                &u.message,
                generation,
            );
            if u.reason == reason::SLOT_MISSING || u.reason == reason::SLOT_LOST {
                set_condition(
                    &mut conds,
                    conditions::WAL_HEALTHY,
                    false,
                    u.reason,
                    &u.message,
                    generation,
                );
            }
            if u.transient {
                Duration::from_secs(10)
            } else {
                Duration::from_secs(60)
            }
        }
        Err(_) => Duration::from_secs(15),
    };
    let suspended = capture
        .spec
        .suspend
        .then(|| status::suspended_message(polling_mode, managed.deletes_waiting));
    let mut phase = status::summarize_ready(&mut conds, generation, suspended.as_deref());
    // A wait that may end by itself (an unreachable server, no free slot) is
    // not a failure a person must act on.
    if phase == "Failed" && matches!(&outcome, Err(Error::Unfit(u)) if u.transient) {
        phase = "Pending";
    }
    status::set_progress_conditions(&mut conds, phase, generation);

    laps.lap("conditions");
    let wal = (!polling_mode).then(|| {
        let lost = status::find(&conds, conditions::WAL_HEALTHY)
            .is_some_and(|c| c.reason == reason::SLOT_LOST || c.reason == reason::SLOT_MISSING);
        (lost, slot.as_ref().and_then(|s| s.retained_wal_bytes))
    });
    ctx.metrics.observe_capture(
        &CaptureLabels {
            namespace: ns.clone(),
            capture: name.clone(),
        },
        status::is_true(&conds, conditions::READY),
        capture.spec.suspend,
        wal,
    );
    let status = json!({
        "observedGeneration": generation,
        "phase": phase,
        // The worker's conditions stay the worker's (its own field manager).
        "conditions": status::operator_owned(&conds),
        "managed": managed,
        "slot": slot,
    });
    // Events and the status write are independent requests: sent at once.
    let uid = capture.uid().unwrap_or_default();
    let before = ctx
        .announced
        .lock()
        .ok()
        .and_then(|m| m.get(&uid).cloned())
        .unwrap_or_else(|| old.conditions.clone());
    let ((), patched) = futures::join!(
        announce_transitions(&ctx, &capture, &before, &conds),
        patch_status(&api, &name, status),
    );
    if let Ok(mut m) = ctx.announced.lock() {
        m.insert(uid, conds.clone());
    }
    patched?;
    laps.lap("status_and_events");
    match &outcome {
        Ok(()) => {
            tracing::debug!(capture = %name, namespace = %ns, steps = %laps, "reconcile steps")
        }
        Err(error) => {
            tracing::debug!(capture = %name, namespace = %ns, steps = %laps, %error, "reconcile steps")
        }
    }
    match outcome {
        Ok(()) | Err(Error::Unfit(_)) => Ok(Action::requeue(requeue)),
        Err(e) => Err(e),
    }
}

async fn provision_and_deploy(
    capture: &PostgresCapture,
    ctx: &Context,
    api: &Api<PostgresCapture>,
    conds: &mut Vec<Condition>,
    managed: &mut ManagedObjects,
    slot: &mut Option<siphon_crds::status::SlotStatus>,
    laps: &mut Laps,
) -> Result<(), Error> {
    let generation = capture.metadata.generation;
    let name = capture.name_any();
    let ns = capture.namespace().unwrap_or_default();
    let seen = hold_secrets(ctx, capture, true).await?;
    laps.lap("hold_secrets");
    let creds = read_credentials(ctx, capture, &seen).await?;
    laps.lap("read_secrets");

    let all: Vec<PostgresCapture> = ctx
        .captures
        .iter()
        .flat_map(|store| store.state())
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .map(|c| PostgresCapture::clone(&c))
        .collect();
    let plan = validate::validate(capture, &all).map_err(|inv| Unfit {
        reason: inv.reason,
        message: inv.message,
        transient: false,
    })?;

    let logical = plan.mode == CaptureMode::Logical;
    let client = database::connect(&connect_params(capture, creds)).await?;
    laps.lap("connect");
    let mut record = managed_recorder(api, &name);
    let server_version_num = if logical {
        let facts = database::preflight(&client, &plan).await?;
        laps.lap("preflight");
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        database::provision(&client, &plan, &facts, managed, &now, &mut record).await?;
        // A capture that polled with notify before keeps no triggers.
        polling::retire(&client, managed, None, &mut record).await?;
        laps.lap("provision");
        set_condition(
            conds,
            conditions::PROVISIONED,
            true,
            reason::RECONCILED,
            format!(
                "slot {} and publication {} ready for {} table(s)",
                plan.slot,
                plan.publication,
                facts.tables.len()
            ),
            generation,
        );
        Some(facts.server_version_num)
    } else {
        let facts = polling::preflight(&client, &plan).await?;
        laps.lap("preflight");
        let made = polling::provision(&client, &plan, &facts, managed, &mut record).await?;
        laps.lap("provision");
        set_condition(
            conds,
            conditions::PROVISIONED,
            true,
            reason::RECONCILED,
            polling::provisioned_message(made.tables, made.notify_tables),
            generation,
        );
        let (indexed, why, message) = polling::cursor_indexed(&facts.polled);
        set_condition(
            conds,
            conditions::CURSOR_INDEXED,
            indexed,
            why,
            message,
            generation,
        );
        // Deletes wait in the table while no worker drains it.
        managed.deletes_waiting = if capture.spec.suspend {
            polling::deletes_waiting(&client, managed).await?
        } else {
            None
        };
        None
    };

    // Worker objects.
    let objects = build::worker_objects(capture, &plan, &ctx.defaults)?;
    let pp = PatchParams::apply(names::OPERATOR_MANAGER).force();
    let object_name = names::worker_object_name(&name);
    // What the pod needs goes first and at once; the Deployment after it, so
    // its first pod does not meet a missing ServiceAccount or ConfigMap. The
    // RoleBinding follows its Role: the API server lets the operator bind a
    // Role only when it holds what the Role grants, which it checks against
    // the Role itself, so a binding sent beside its Role is refused under
    // the chart's RBAC (no `bind` or `escalate` verb is needed this way).
    let (config_maps, accounts, services, roles, bindings) = (
        Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns),
        Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns),
        Api::<Service>::namespaced(ctx.client.clone(), &ns),
        Api::<Role>::namespaced(ctx.client.clone(), &ns),
        Api::<RoleBinding>::namespaced(ctx.client.clone(), &ns),
    );
    let (config_map, account, service, role, binding) = (
        Patch::Apply(&objects.config_map),
        Patch::Apply(&objects.service_account),
        Patch::Apply(&objects.service),
        Patch::Apply(&objects.role),
        Patch::Apply(&objects.role_binding),
    );
    futures::try_join!(
        config_maps.patch(&object_name, &pp, &config_map),
        accounts.patch(&object_name, &pp, &account),
        services.patch(&object_name, &pp, &service),
        async {
            roles.patch(&object_name, &pp, &role).await?;
            bindings.patch(&object_name, &pp, &binding).await
        },
    )?;
    let deployment = Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
        .patch(&object_name, &pp, &Patch::Apply(&objects.deployment))
        .await?;
    laps.lap("apply_worker");

    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    if capture.spec.suspend {
        set_condition(
            conds,
            conditions::WORKER_AVAILABLE,
            false,
            reason::SUSPENDED,
            "suspended: the worker is scaled to zero",
            generation,
        );
    } else if available > 0 {
        set_condition(
            conds,
            conditions::WORKER_AVAILABLE,
            true,
            reason::STREAMING,
            "the worker pod is ready",
            generation,
        );
    } else {
        let (why, msg) = worker_trouble(ctx, &ns, &name).await;
        set_condition(
            conds,
            conditions::WORKER_AVAILABLE,
            false,
            why,
            msg,
            generation,
        );
    }

    laps.lap("worker_state");
    if let Some(server_version_num) = server_version_num {
        *slot = database::slot_status(&client, plan.slot.as_str(), server_version_num).await?;
        laps.lap("slot_status");
        match slot.as_ref() {
            None => set_condition(
                conds,
                conditions::WAL_HEALTHY,
                false,
                reason::SLOT_MISSING,
                format!(
                    "replication slot {} is missing; nothing streams until a re-snapshot is requested (spec.snapshot.request.id) or the capture is re-created",
                    plan.slot
                ),
                generation,
            ),
            Some(s) if s.wal_status.as_deref() == Some("lost") => set_condition(
                conds,
                conditions::WAL_HEALTHY,
                false,
                reason::SLOT_LOST,
                format!(
                    "replication slot {} was invalidated (wal_status = lost): PostgreSQL removed WAL it still needed; raise max_slot_wal_keep_size, then request a re-snapshot (spec.snapshot.request.id) or re-create the capture",
                    plan.slot
                ),
                generation,
            ),
            Some(s) => set_condition(
                conds,
                conditions::WAL_HEALTHY,
                true,
                reason::RECONCILED,
                format!(
                    "slot {} retains {} of WAL (wal_status {})",
                    s.name,
                    s.retained_wal.clone().unwrap_or_default(),
                    s.wal_status.clone().unwrap_or_default()
                ),
                generation,
            ),
        }
    }
    backfill_condition(capture, conds);
    Ok(())
}

/// Persist `status.managed` (a merge patch): the callback provisioning calls
/// before it creates an object.
fn managed_recorder(
    api: &Api<PostgresCapture>,
    name: &str,
) -> impl FnMut(ManagedObjects) -> futures::future::BoxFuture<'static, Result<(), Unfit>> {
    let api = api.clone();
    let name = name.to_string();
    move |managed| {
        let api = api.clone();
        let name = name.clone();
        Box::pin(async move {
            merge_status(&api, &name, json!({ "managed": managed }))
                .await
                .map_err(|e| Unfit {
                    reason: reason::PROVISIONING_FAILED,
                    message: format!("cannot record managed objects in the status: {e}"),
                    transient: true,
                })
        })
    }
}

/// Explain why the worker is not available, from its pods.
async fn worker_trouble(ctx: &Context, ns: &str, name: &str) -> (&'static str, String) {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{}={}", names::CAPTURE_LABEL, name));
    let Ok(list) = pods.list(&lp).await else {
        return (reason::WORKER_STARTING, "waiting for the worker pod".into());
    };
    for pod in list.items {
        for cs in pod
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default()
        {
            if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                let r = w.reason.clone().unwrap_or_default();
                if r == "CrashLoopBackOff" || r == "CreateContainerConfigError" || r.contains("Err")
                {
                    return (
                        reason::WORKER_FAILING,
                        format!(
                            "worker container is {r}: {}; see its log",
                            w.message.clone().unwrap_or_default()
                        ),
                    );
                }
            }
            if cs.restart_count > 0
                && let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref())
            {
                return (
                    reason::WORKER_FAILING,
                    format!(
                        "worker restarted {} time(s), last exit code {}: {}",
                        cs.restart_count,
                        t.exit_code,
                        t.message.clone().unwrap_or_default()
                    ),
                );
            }
        }
    }
    (
        reason::WORKER_STARTING,
        "waiting for the worker pod to become ready".into(),
    )
}

fn backfill_condition(capture: &PostgresCapture, conds: &mut Vec<Condition>) {
    let generation = capture.metadata.generation;
    if capture.spec.mode != CaptureMode::Logical
        || capture.spec.snapshot_or_default().mode == siphon_crds::capture::SnapshotMode::Never
    {
        set_condition(
            conds,
            conditions::BACKFILL_COMPLETE,
            true,
            reason::BACKFILL_DISABLED,
            "no backfill requested",
            generation,
        );
        return;
    }
    let tables = capture
        .status
        .as_ref()
        .and_then(|s| s.progress.as_ref())
        .map(|p| p.tables.clone())
        .unwrap_or_default();
    // A table named in the spec that the worker has not reported yet (just
    // added to a running capture) is pending too: its backfill has not begun.
    let unreported = capture
        .spec
        .tables
        .iter()
        .filter(|t| !t.name.ends_with(".*") && !tables.iter().any(|p| p.name == t.name))
        .count();
    let pending = tables
        .iter()
        .filter(|t| t.state != "Done" && t.state != "Skipped")
        .count()
        + unreported;
    if tables.is_empty() {
        set_condition(
            conds,
            conditions::BACKFILL_COMPLETE,
            false,
            reason::BACKFILL_RUNNING,
            "waiting for the worker to report backfill progress",
            generation,
        );
    } else if pending == 0 {
        set_condition(
            conds,
            conditions::BACKFILL_COMPLETE,
            true,
            reason::BACKFILL_DONE,
            format!("{} table(s) backfilled", tables.len()),
            generation,
        );
    } else {
        let copied: u64 = tables.iter().map(|t| t.rows_copied).sum();
        set_condition(
            conds,
            conditions::BACKFILL_COMPLETE,
            false,
            reason::BACKFILL_RUNNING,
            format!(
                "{pending} of {} table(s) left, {copied} rows copied",
                tables.len() + unreported
            ),
            generation,
        );
    }
}

async fn announce_transitions(
    ctx: &Context,
    capture: &PostgresCapture,
    old: &[Condition],
    new: &[Condition],
) {
    let changed: Vec<&Condition> = new
        .iter()
        .filter(|c| {
            status::find(old, &c.type_)
                .map(|b| b.status != c.status || b.reason != c.reason)
                .unwrap_or(true)
        })
        .collect();
    let events = changed.iter().filter_map(|c| {
        if !status::announced(c, &changed) {
            return None;
        }
        let warning = c.status == "False"
            && c.reason != reason::PROVISIONING
            && c.reason != reason::WORKER_STARTING
            && c.reason != reason::BACKFILL_RUNNING
            && c.reason != reason::SUSPENDED;
        Some(ctx.event(
            capture,
            warning,
            &c.reason,
            format!("{}={}: {}", c.type_, c.status, c.message),
            &c.type_,
        ))
    });
    futures::future::join_all(events).await;
}

async fn cleanup(capture: Arc<PostgresCapture>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = capture.namespace().unwrap_or_default();
    let name = capture.name_any();
    // A capture being deleted is no longer one to alert on, nor one whose
    // transitions are remembered.
    ctx.metrics.forget_capture(&CaptureLabels {
        namespace: ns.clone(),
        capture: name.clone(),
    });
    if let Ok(mut m) = ctx.announced.lock() {
        m.remove(&capture.uid().unwrap_or_default());
    }
    let api: Api<PostgresCapture> = Api::namespaced(ctx.client.clone(), &ns);
    let object_name = names::worker_object_name(&name);

    // 1. Stop the worker and wait for its pods to be gone.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    match deployments
        .delete(&object_name, &DeleteParams::foreground())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let running = pods
        .list(&ListParams::default().labels(&format!("{}={}", names::CAPTURE_LABEL, name)))
        .await?
        .items;
    if !running.is_empty() {
        return Err(Error::WorkerStillRunning(name));
    }

    let managed = capture
        .status
        .as_ref()
        .and_then(|s| s.managed.clone())
        .unwrap_or_default();
    if capture.spec.deletion_policy == DeletionPolicy::Retain {
        ctx.event(
            &capture,
            false,
            "Retained",
            "deletionPolicy is Retain: database objects were left in place".into(),
            "Teardown",
        )
        .await;
        hold_secrets(&ctx, &capture, false).await?;
        return Ok(Action::await_change());
    }
    if managed.slot.is_none()
        && managed.publication.is_none()
        && managed.watermark_table.is_none()
        && managed.triggers.is_empty()
        && managed.trigger_function.is_none()
        && managed.deletes_table.is_none()
    {
        hold_secrets(&ctx, &capture, false).await?;
        return Ok(Action::await_change());
    }

    // 2..6. Drop what we created.
    let blocked = |msg: String| async {
        let mut conds = capture
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        set_condition(
            &mut conds,
            conditions::TEARDOWN_BLOCKED,
            true,
            reason::TEARDOWN_FAILED,
            &msg,
            capture.metadata.generation,
        );
        let _ = merge_status(
            &api,
            &name,
            json!({ "phase": "Deleting", "conditions": conds }),
        )
        .await;
        ctx.event(
            &capture,
            true,
            reason::TEARDOWN_FAILED,
            msg.clone(),
            "Teardown",
        )
        .await;
        Error::TeardownBlocked(msg)
    };
    let creds = match read_credentials(&ctx, &capture, &[]).await {
        Ok(c) => c,
        Err(u) => return Err(blocked(format!(
            "{}; or set spec.deletionPolicy: Retain to let go without dropping database objects",
            u.message
        ))
        .await),
    };
    let client = match database::connect(&connect_params(&capture, creds)).await {
        Ok(c) => c,
        Err(u) => return Err(blocked(format!(
            "cannot drop the database objects: {}; or set spec.deletionPolicy: Retain to let go",
            u.message
        ))
        .await),
    };
    let capture_id = names::capture_id(&ns, &name, &capture.uid().unwrap_or_default());
    if let Err(u) = database::teardown(&client, &managed, &capture_id).await {
        return Err(blocked(format!(
            "{}; or set spec.deletionPolicy: Retain to let go",
            u.message
        ))
        .await);
    }
    ctx.event(
        &capture,
        false,
        "TornDown",
        teardown_note(&managed),
        "Teardown",
    )
    .await;
    hold_secrets(&ctx, &capture, false).await?;
    Ok(Action::await_change())
}

/// What the teardown dropped, for its event (pure): the objects `managed`
/// lists, and only those.
fn teardown_note(managed: &ManagedObjects) -> String {
    let mut dropped = Vec::new();
    for (what, name) in [
        ("slot", &managed.slot),
        ("publication", &managed.publication),
        ("watermark table", &managed.watermark_table),
        ("trigger function", &managed.trigger_function),
        ("deletes table", &managed.deletes_table),
    ] {
        if let Some(name) = name {
            dropped.push(format!("{what} {name}"));
        }
    }
    if !managed.triggers.is_empty() {
        dropped.push(format!(
            "notify triggers on {}",
            managed.triggers.join(", ")
        ));
    }
    format!("dropped {}", dropped.join(", "))
}

/// Put (or take back) this capture's finalizer on the Secrets it reads, so
/// that deleting a capture and its Secret together (`kubectl delete -f`)
/// still leaves the credentials the teardown needs. Each capture claims the
/// finalizer under its own field manager; the entry stays while any capture
/// still claims it (server-side apply keeps co-owned set items).
///
/// Returns the Secrets as this call saw them (read, or as the apply left
/// them), so the caller need not read them again.
async fn hold_secrets(
    ctx: &Context,
    capture: &PostgresCapture,
    hold: bool,
) -> Result<Vec<Secret>, Error> {
    let ns = capture.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let manager = format!("{}/{}", names::OPERATOR_MANAGER, capture.name_any());
    let mut names_held = vec![capture.spec.postgres.credentials_secret_ref.name.clone()];
    if let Some(ca) = &capture.spec.postgres.ca_secret_ref {
        names_held.push(ca.name.clone());
    }
    names_held.dedup();
    let mut seen = Vec::new();
    for secret in names_held {
        // Holding is one server-side apply per capture on a Secret that many
        // captures may share; once held, a GET tells so and the write (which
        // contends with every other capture's) is skipped. A Secret that does
        // not exist is not held: an apply would create an empty one, and
        // read_credentials reports it missing.
        if hold {
            match secrets.get_opt(&secret).await? {
                None => continue,
                Some(current) if holds(&current, &manager) => {
                    seen.push(current);
                    continue;
                }
                Some(_) => {}
            }
        }
        let finalizers: Vec<&str> = if hold {
            vec![names::SECRET_FINALIZER]
        } else {
            vec![]
        };
        let body = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": secret, "namespace": ns, "finalizers": finalizers },
        });
        match secrets
            .patch(
                &secret,
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(applied) => seen.push(applied),
            // A missing Secret is reported by read_credentials; nothing to
            // hold or release. A Secret already being deleted takes no new
            // finalizer (422); teardown then reports it if it is gone.
            Err(kube::Error::Api(e)) if e.code == 404 || (hold && e.code == 422) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(seen)
}

/// Whether field manager `manager` already holds the Secret finalizer on
/// `secret` (pure): it owns that finalizer entry through server-side apply,
/// as `managedFields` records it.
fn holds(secret: &Secret, manager: &str) -> bool {
    let entry = format!("v:\"{}\"", names::SECRET_FINALIZER);
    secret.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(manager)
            && m.operation.as_deref() == Some("Apply")
            && m.fields_v1.as_ref().is_some_and(|f| {
                f.0.pointer("/f:metadata/f:finalizers")
                    .and_then(|fin| fin.get(&entry))
                    .is_some()
            })
    })
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
    fn a_table_added_to_the_spec_reopens_the_backfill_until_the_worker_reports_it_done() {
        let base = fixture("default", "shop", SPEC);
        let done = with_progress(base.clone(), "Done", 10);
        let mut conds = Vec::new();
        backfill_condition(&done, &mut conds);
        let c = crate::status::find(&conds, conditions::BACKFILL_COMPLETE).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reason::BACKFILL_DONE)
        );

        let mut added = done.clone();
        added
            .spec
            .tables
            .push(serde_json::from_value(json!({ "name": "public.items" })).unwrap());
        let mut conds = Vec::new();
        backfill_condition(&added, &mut conds);
        let c = crate::status::find(&conds, conditions::BACKFILL_COMPLETE).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            (
                "False",
                reason::BACKFILL_RUNNING,
                "1 of 2 table(s) left, 10 rows copied"
            )
        );

        // A schema wildcard is resolved by the worker; it holds nothing open.
        let mut wildcard = done;
        wildcard
            .spec
            .tables
            .push(serde_json::from_value(json!({ "name": "public.*" })).unwrap());
        let mut conds = Vec::new();
        backfill_condition(&wildcard, &mut conds);
        let c = crate::status::find(&conds, conditions::BACKFILL_COMPLETE).unwrap();
        assert_eq!(c.status, "True");
    }

    #[test]
    fn the_teardown_event_names_only_what_existed() {
        let polling = ManagedObjects {
            trigger_function: Some("public.siphon_default_shop_notify".into()),
            deletes_table: Some("public.siphon_default_shop_deletes".into()),
            triggers: vec!["public.orders".into()],
            ..ManagedObjects::default()
        };
        assert_eq!(
            teardown_note(&polling),
            "dropped trigger function public.siphon_default_shop_notify, deletes table public.siphon_default_shop_deletes, notify triggers on public.orders"
        );
        let logical = ManagedObjects {
            slot: Some("s".into()),
            publication: Some("p".into()),
            ..ManagedObjects::default()
        };
        assert_eq!(teardown_note(&logical), "dropped slot s, publication p");
    }

    #[test]
    fn a_secret_is_held_only_by_the_managers_that_own_its_finalizer_entry() {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {
                "name": "pg",
                "finalizers": [names::SECRET_FINALIZER],
                "managedFields": [
                    { "manager": "siphon-operator/a", "operation": "Apply",
                      "fieldsType": "FieldsV1",
                      "fieldsV1": { "f:metadata": { "f:finalizers": {
                          format!("v:\"{}\"", names::SECRET_FINALIZER): {} } } } },
                    // Released: applied an empty list, owns nothing under finalizers.
                    { "manager": "siphon-operator/b", "operation": "Apply",
                      "fieldsType": "FieldsV1", "fieldsV1": { "f:metadata": {} } },
                    { "manager": "kubectl", "operation": "Update",
                      "fieldsType": "FieldsV1",
                      "fieldsV1": { "f:metadata": { "f:finalizers": {
                          format!("v:\"{}\"", names::SECRET_FINALIZER): {} } } } }
                ]
            }
        }))
        .unwrap();
        assert!(holds(&secret, "siphon-operator/a"));
        assert!(!holds(&secret, "siphon-operator/b"));
        assert!(!holds(&secret, "kubectl"), "an Update entry is not a hold");
        assert!(!holds(&secret, "siphon-operator/c"));
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
