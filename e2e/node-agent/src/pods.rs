//! Pods bound to the node: the watch, and one supervisor task per pod that
//! runs its containers as local processes and reports its status.
//!
//! [`run`] watches pods with `spec.nodeName=<node>` in all namespaces and
//! hands each pod (by uid) to its [`Supervisor`]. A supervisor prepares the
//! pod's sandbox (volumes, see [`crate::volumes`]), starts the init
//! containers one after the other, then the regular containers, restarts
//! them per `restartPolicy` with exponential back-off, runs their probes
//! ([`crate::probes`]) and patches the pod's `status` subresource with what
//! [`crate::status`] builds.
//!
//! Lifecycle invariants:
//!
//! 1. One supervisor per pod uid, and a supervisor is the only writer of its
//!    pod's status. After it finished (the pod was deleted) no new
//!    supervisor is started for that uid.
//! 2. A container has at most one live process, in its own process group
//!    whose id is the recorded pid (`containerID: siphon://<pid>`); its
//!    pid file exists exactly while the process is ours and alive.
//! 3. Init containers run strictly in order, each to success (a sidecar
//!    init container only has to start); regular containers start only
//!    after all of them. A container is restarted only when the pod's
//!    policy says so (init containers: on failure unless `Never`;
//!    sidecars: always), after `base * 2^n` back-off capped at 5 min (reset
//!    after 10 min of running). `restartCount` counts actual restarts,
//!    including the restart of containers the agent lost when it was
//!    restarted itself.
//! 4. When the pod gets a `deletionTimestamp`, nothing new starts; every
//!    process group gets SIGTERM, then SIGKILL once the grace period
//!    (`deletionGracePeriodSeconds`, else `terminationGracePeriodSeconds`,
//!    else 30 s) is over. When no process is left, the final status is
//!    posted, the pod is deleted with grace period 0 (uid precondition),
//!    and its sandbox directory is removed. A pod that vanishes from the API
//!    (force deletion) has its processes killed at once and its sandbox
//!    removed.
//! 5. A pod that is already `Succeeded` or `Failed` when first seen is never
//!    run again.
//! 6. On agent start, processes of a previous run (pid file + matching start
//!    time) are stopped, then pods still bound to the node are started again
//!    with their restart counts incremented; sandboxes of pods that no longer
//!    exist are removed. On agent shutdown every process group gets SIGTERM,
//!    then SIGKILL after 5 s; the API is left untouched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerStatus, Pod, Secret, ServiceAccount,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, has_code};
use crate::env::{self, Refs, Sources};
use crate::probes::{self, ProbeSet, Update};
use crate::process::{self, ImageMap, SpawnSpec};
use crate::status::{self, ContainerView, Kind, PodView, RestartPolicy, RunState, Termination};
use crate::volumes::{self, Materials};

/// Longest restart back-off, as the kubelet's.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Longest retry delay for configuration errors (missing Secret...).
const MAX_CONFIG_RETRY: Duration = Duration::from_secs(20);
/// A container that ran this long restarts with the base back-off again.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Grace period on agent shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Volumes (and tokens) are refreshed this often.
const REFRESH: Duration = Duration::from_secs(60);

/// Settings of the pod runner.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    /// Absolute; sandboxes live in `<state_dir>/pods/`.
    pub state_dir: PathBuf,
    /// Absolute; `<namespace>_<pod>_<container>.log` files.
    pub log_dir: PathBuf,
    pub image_map: Arc<ImageMap>,
    /// First restart delay; doubles per restart up to 5 min.
    pub restart_backoff: Duration,
}

struct Shared {
    cluster: Cluster,
    config: Config,
}

/// Restart delay after `n` earlier back-offs.
pub fn backoff(base: Duration, n: u32, cap: Duration) -> Duration {
    base.saturating_mul(2u32.saturating_pow(n.min(20))).min(cap)
}

/// `<namespace>_<name>_<uid>`: the sandbox directory name of a pod.
pub fn sandbox_name(namespace: &str, name: &str, uid: &str) -> String {
    format!("{namespace}_{name}_{uid}")
}

/// The uid part of a sandbox directory name.
pub fn sandbox_uid(dir_name: &str) -> Option<&str> {
    dir_name
        .rsplit_once('_')
        .map(|(_, uid)| uid)
        .filter(|u| !u.is_empty())
}

/// True if every field of `ours` (a JSON object) has the same value in
/// `current`: a merge patch of `ours` would change nothing.
pub fn covers(current: &serde_json::Value, ours: &serde_json::Value) -> bool {
    match ours.as_object() {
        Some(fields) => fields.iter().all(|(k, v)| current.get(k) == Some(v)),
        None => current == ours,
    }
}

struct Handle {
    pods: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// Watches the node's pods and supervises them until `shutdown` turns true;
/// then stops every container and returns.
pub async fn run(cluster: Cluster, config: Config, shutdown: watch::Receiver<bool>) -> Result<()> {
    let pods_dir = config.state_dir.join("pods");
    std::fs::create_dir_all(&pods_dir)?;
    std::fs::create_dir_all(&config.log_dir)?;
    let stale = process::kill_stale(&pods_dir, SHUTDOWN_GRACE).await;
    if stale > 0 {
        tracing::info!(count = stale, "stopped processes of a previous agent run");
    }
    let selector = format!("spec.nodeName={}", config.node_name);
    let api: Api<Pod> = Api::all(cluster.client.clone());
    let shared = Arc::new(Shared { cluster, config });
    let mut stream = watcher::watcher(api, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();

    let mut supervisors: HashMap<String, Handle> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut listed: HashSet<String> = HashSet::new();
    let mut collected = false;
    let mut stop = shutdown.clone();
    tracing::info!(selector = %selector, "watching pods");
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = stop.changed() => break,
        };
        let Some(event) = event else { break };
        match event {
            Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(pod)) => {
                listed.insert(pod.uid().unwrap_or_default());
                dispatch(&shared, &mut supervisors, &finished, pod, &shutdown);
            }
            Ok(Event::InitDone) => {
                for (uid, handle) in &supervisors {
                    if !listed.contains(uid) {
                        handle.pods.send_replace(None);
                    }
                }
                if !collected {
                    collected = true;
                    remove_orphan_sandboxes(&pods_dir, &listed);
                }
            }
            Ok(Event::Apply(pod)) => dispatch(&shared, &mut supervisors, &finished, pod, &shutdown),
            Ok(Event::Delete(pod)) => {
                let uid = pod.uid().unwrap_or_default();
                if let Some(handle) = supervisors.get(&uid) {
                    handle.pods.send_replace(None);
                }
                finished.remove(&uid);
            }
        }
        supervisors.retain(|uid, handle| {
            if handle.task.is_finished() {
                finished.insert(uid.clone());
                false
            } else {
                true
            }
        });
    }
    tracing::info!(pods = supervisors.len(), "stopping all containers");
    let tasks = supervisors.into_values().map(|h| h.task);
    let all = futures::future::join_all(tasks);
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(10), all)
        .await
        .is_err()
    {
        tracing::warn!("some pod supervisors did not stop in time");
    }
    Ok(())
}

fn dispatch(
    shared: &Arc<Shared>,
    supervisors: &mut HashMap<String, Handle>,
    finished: &HashSet<String>,
    pod: Pod,
    shutdown: &watch::Receiver<bool>,
) {
    let Some(uid) = pod.uid() else { return };
    if finished.contains(&uid) {
        return;
    }
    if let Some(handle) = supervisors.get(&uid) {
        handle.pods.send_replace(Some(pod));
        return;
    }
    let (tx, rx) = watch::channel(Some(pod.clone()));
    let supervisor = Supervisor::new(shared.clone(), pod);
    let task = tokio::spawn(supervisor.run(rx, shutdown.clone()));
    supervisors.insert(uid, Handle { pods: tx, task });
}

fn remove_orphan_sandboxes(pods_dir: &Path, live: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(pods_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if sandbox_uid(&name).is_some_and(|uid| !live.contains(uid)) {
            tracing::info!(sandbox = %name, "removing sandbox of a pod that no longer exists");
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(sandbox = %name, error = %e, "could not remove sandbox");
            }
        }
    }
}

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// May be started when its turn comes.
    Idle,
    Running,
    /// A timer will make it Idle again (back-off or retry).
    Waiting,
    /// Will not run again.
    Done,
}

struct Ctr {
    spec: Container,
    kind: Kind,
    step: Step,
    state: RunState,
    last_state: Option<Termination>,
    restart_count: i32,
    ever_started: bool,
    started: bool,
    ready: bool,
    has_readiness: bool,
    /// Bumped on every start and every scheduled timer; stale messages are
    /// recognised by it.
    generation: u64,
    pid: Option<i32>,
    container_id: Option<String>,
    image_id: Option<String>,
    running_since: Option<Instant>,
    restarts_in_a_row: u32,
    config_retries: u32,
    probes: Option<JoinHandle<()>>,
}

enum Msg {
    Exited {
        idx: usize,
        generation: u64,
        code: Option<i32>,
        signal: Option<i32>,
    },
    StartDue {
        idx: usize,
        generation: u64,
    },
    Probe {
        idx: usize,
        generation: u64,
        update: Update,
    },
    KillDue {
        idx: usize,
        generation: u64,
    },
    SandboxRetry,
    /// Just run another reconcile round.
    Wake,
}

struct CachedToken {
    token: String,
    fetched: Instant,
    lifetime: Duration,
}

/// Runs one pod.
struct Supervisor {
    shared: Arc<Shared>,
    pod: Pod,
    key: String,
    name: String,
    namespace: String,
    uid: String,
    api: Api<Pod>,
    sandbox: PathBuf,
    policy: RestartPolicy,
    ctrs: Vec<Ctr>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: Option<mpsc::UnboundedReceiver<Msg>>,
    sandbox_ready: bool,
    sandbox_retries: u32,
    sandbox_retry_pending: bool,
    tokens: BTreeMap<String, CachedToken>,
    /// Already terminal when first seen: never run.
    frozen: bool,
    initialized: bool,
    terminating: bool,
    grace: Option<i64>,
    /// The pod is gone from the API.
    gone: bool,
    shutting_down: bool,
    finished: bool,
    start_time: Timestamp,
    last_resource_version: u64,
}

fn resource_version(pod: &Pod) -> u64 {
    pod.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn prior<'a>(pod: &'a Pod, name: &str, init: bool) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    let list = if init {
        status.init_container_statuses.as_ref()
    } else {
        status.container_statuses.as_ref()
    };
    list?.iter().find(|s| s.name == name)
}

fn new_ctr(pod: &Pod, spec: &Container, kind: Kind, has_init: bool, now: Timestamp) -> Ctr {
    let previous = prior(pod, &spec.name, kind != Kind::Regular);
    let mut last_state = previous
        .and_then(|p| p.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .map(|t| Termination::from_api(t, now));
    let state = previous.and_then(|p| p.state.as_ref());
    if let Some(running) = state.and_then(|s| s.running.as_ref()) {
        // Its process died with the previous agent run.
        last_state = Some(Termination {
            exit_code: 137,
            signal: None,
            reason: "ContainerStatusUnknown".into(),
            message: Some(
                "The container could not be located when the node agent restarted".into(),
            ),
            started_at: running.started_at.as_ref().map(|t| t.0),
            finished_at: now,
            container_id: previous.and_then(|p| p.container_id.clone()),
        });
    } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        last_state = Some(Termination::from_api(t, now));
    }
    let restart_count = previous.map_or(0, |p| p.restart_count);
    let waiting = if kind == Kind::Regular && !has_init {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    Ctr {
        kind,
        step: Step::Idle,
        state: RunState::waiting(waiting),
        ever_started: last_state.is_some() || restart_count > 0,
        last_state,
        restart_count,
        started: false,
        ready: false,
        has_readiness: spec.readiness_probe.is_some(),
        generation: 0,
        pid: None,
        container_id: None,
        image_id: None,
        running_since: None,
        restarts_in_a_row: 0,
        config_retries: 0,
        probes: None,
        spec: spec.clone(),
    }
}

fn text_map<'a>(strings: impl Iterator<Item = (&'a String, Vec<u8>)>) -> BTreeMap<String, Vec<u8>> {
    strings.map(|(k, v)| (k.clone(), v)).collect()
}

impl Supervisor {
    fn new(shared: Arc<Shared>, pod: Pod) -> Self {
        let name = pod.name_any();
        let namespace = pod.namespace().unwrap_or_default();
        let uid = pod.uid().unwrap_or_default();
        let key = format!("{namespace}/{name}");
        let sandbox = shared
            .config
            .state_dir
            .join("pods")
            .join(sandbox_name(&namespace, &name, &uid));
        let api = Api::namespaced(shared.cluster.client.clone(), &namespace);
        let now = Timestamp::now();
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = RestartPolicy::parse(spec.restart_policy.as_deref());
        let inits = spec.init_containers.clone().unwrap_or_default();
        let has_init = !inits.is_empty();
        let mut ctrs: Vec<Ctr> = inits
            .iter()
            .map(|c| {
                let kind = if c.restart_policy.as_deref() == Some("Always") {
                    Kind::Sidecar
                } else {
                    Kind::Init
                };
                new_ctr(&pod, c, kind, has_init, now)
            })
            .collect();
        ctrs.extend(
            spec.containers
                .iter()
                .map(|c| new_ctr(&pod, c, Kind::Regular, has_init, now)),
        );
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let frozen = matches!(phase, Some("Succeeded" | "Failed"));
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map_or(now, |t| t.0);
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            last_resource_version: resource_version(&pod),
            shared,
            pod,
            key,
            name,
            namespace,
            uid,
            api,
            sandbox,
            policy,
            ctrs,
            tx,
            rx: Some(rx),
            sandbox_ready: false,
            sandbox_retries: 0,
            sandbox_retry_pending: false,
            tokens: BTreeMap::new(),
            frozen,
            initialized: false,
            terminating: false,
            grace: None,
            gone: false,
            shutting_down: false,
            finished: false,
            start_time,
        }
    }

    async fn run(
        mut self,
        mut pods: watch::Receiver<Option<Pod>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        tracing::info!(pod = %self.key, uid = %self.uid, frozen = self.frozen, "supervising pod");
        let Some(mut rx) = self.rx.take() else { return };
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        let first = self.pod.clone();
        self.observe(first);
        if *shutdown.borrow() {
            return;
        }
        loop {
            self.reconcile().await;
            if self.finished {
                break;
            }
            tokio::select! {
                changed = pods.changed() => {
                    if changed.is_err() {
                        // The watch loop is gone: the agent is stopping.
                        self.shutdown(&mut rx).await;
                        break;
                    }
                    let latest = pods.borrow_and_update().clone();
                    match latest {
                        Some(pod) => self.observe(pod),
                        None => self.vanished(),
                    }
                }
                Some(msg) = rx.recv() => self.handle(msg),
                _ = refresh.tick() => self.refresh().await,
                _ = shutdown.changed() => {
                    self.shutdown(&mut rx).await;
                    break;
                }
            }
        }
    }

    fn send_later(&self, delay: Duration, msg: Msg) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(msg);
        });
    }

    /// A new version of the pod object.
    fn observe(&mut self, pod: Pod) {
        let version = resource_version(&pod);
        if version != 0 && version < self.last_resource_version {
            return; // older than the status we wrote
        }
        self.last_resource_version = version;
        self.pod = pod;
        if self.pod.metadata.deletion_timestamp.is_some() {
            let grace = self
                .pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    self.pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30)
                .max(0);
            if self.grace.is_none_or(|g| grace < g) {
                self.terminate(grace);
            }
        }
    }

    /// Starts (or shortens) graceful termination of every container.
    fn terminate(&mut self, grace: i64) {
        let first = !self.terminating;
        self.terminating = true;
        self.grace = Some(grace);
        if first {
            tracing::info!(pod = %self.key, grace_seconds = grace, "pod is being deleted; stopping containers");
        }
        let delay = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
        for idx in 0..self.ctrs.len() {
            let c = &mut self.ctrs[idx];
            c.ready = false;
            match c.pid {
                Some(pid) => {
                    if first {
                        tracing::info!(pod = %self.key, container = %c.spec.name, pid, "sending SIGTERM");
                        process::signal_group(pid, Signal::SIGTERM);
                    }
                    let generation = c.generation;
                    self.send_later(delay, Msg::KillDue { idx, generation });
                }
                None => c.step = Step::Done,
            }
        }
    }

    /// The pod was removed from the API (force deletion or after our own
    /// delete): kill everything now.
    fn vanished(&mut self) {
        if !self.gone {
            tracing::info!(pod = %self.key, "pod removed from the api server");
        }
        self.gone = true;
        self.terminating = true;
        for c in &mut self.ctrs {
            if let Some(pid) = c.pid {
                process::signal_group(pid, Signal::SIGKILL);
            } else {
                c.step = Step::Done;
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Exited {
                idx,
                generation,
                code,
                signal,
            } => self.exited(idx, generation, code, signal),
            Msg::StartDue { idx, generation } => {
                if let Some(c) = self.ctrs.get_mut(idx)
                    && c.generation == generation
                    && c.step == Step::Waiting
                    && !self.terminating
                {
                    c.step = Step::Idle;
                }
            }
            Msg::Probe {
                idx,
                generation,
                update,
            } => self.probe_update(idx, generation, update),
            Msg::KillDue { idx, generation } => {
                if let Some(c) = self.ctrs.get(idx)
                    && c.generation == generation
                    && let Some(pid) = c.pid
                    && process::signal_group(pid, Signal::SIGKILL)
                {
                    tracing::warn!(pod = %self.key, container = %c.spec.name, pid, "grace period over; sent SIGKILL");
                }
            }
            Msg::SandboxRetry => self.sandbox_retry_pending = false,
            Msg::Wake => {}
        }
    }

    fn probe_update(&mut self, idx: usize, generation: u64, update: Update) {
        let grace = self.termination_grace();
        let Some(c) = self.ctrs.get_mut(idx) else {
            return;
        };
        if c.generation != generation || c.pid.is_none() {
            return;
        }
        match update {
            Update::Started => {
                c.started = true;
                if !c.has_readiness {
                    c.ready = true;
                }
            }
            Update::Ready(ready) => {
                if c.ready != ready {
                    tracing::info!(pod = %self.key, container = %c.spec.name, ready, "readiness changed");
                }
                c.ready = ready && c.started;
            }
            Update::Failed(message) => {
                if let Some(pid) = c.pid {
                    tracing::warn!(pod = %self.key, container = %c.spec.name, pid, reason = %message, "probe failed; restarting container");
                    process::signal_group(pid, Signal::SIGTERM);
                    c.ready = false;
                    self.send_later(grace, Msg::KillDue { idx, generation });
                }
            }
        }
    }

    fn termination_grace(&self) -> Duration {
        let secs = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    }

    fn exited(&mut self, idx: usize, generation: u64, code: Option<i32>, signal: Option<i32>) {
        let Some(c) = self.ctrs.get_mut(idx) else {
            return;
        };
        if c.generation != generation {
            return;
        }
        let Some(pid) = c.pid.take() else { return };
        if let Some(task) = c.probes.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(
            self.sandbox
                .join("containers")
                .join(format!("{}.pid", c.spec.name)),
        );
        let exit_code = code.unwrap_or_else(|| 128 + signal.unwrap_or(9));
        let started_at = match &c.state {
            RunState::Running { started_at } => Some(*started_at),
            _ => None,
        };
        tracing::info!(pod = %self.key, container = %c.spec.name, pid, exit_code, signal, "container exited");
        c.ready = false;
        c.started = false;
        // As the kubelet: with FallbackToLogsOnError, a failed container's
        // message is the tail of its log (a process has no file of its own
        // at terminationMessagePath here).
        let message = (exit_code != 0
            && c.spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"))
        .then(|| {
            let log = self.shared.config.log_dir.join(format!(
                "{}_{}_{}.log",
                self.namespace, self.name, c.spec.name
            ));
            log_tail(&log)
        })
        .flatten();
        c.state = RunState::Terminated(Termination {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
            message,
            started_at,
            finished_at: Timestamp::now(),
            container_id: c.container_id.clone(),
        });
        if c.running_since
            .take()
            .is_some_and(|t| t.elapsed() >= BACKOFF_RESET)
        {
            c.restarts_in_a_row = 0;
        }
        if self.terminating {
            c.step = Step::Done;
            return;
        }
        self.after_exit(idx, exit_code);
    }

    /// Decides, after a container stopped, whether and when it restarts.
    fn after_exit(&mut self, idx: usize, exit_code: i32) {
        let policy = self.policy;
        let base = self.shared.config.restart_backoff;
        let pod_ref = format!("{}_{}({})", self.name, self.namespace, self.uid);
        let c = &mut self.ctrs[idx];
        let restart = match c.kind {
            Kind::Init => exit_code != 0 && policy != RestartPolicy::Never,
            Kind::Sidecar => true,
            Kind::Regular => match policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => exit_code != 0,
                RestartPolicy::Never => false,
            },
        };
        if !restart {
            c.step = Step::Done;
            return;
        }
        let delay = backoff(base, c.restarts_in_a_row, MAX_BACKOFF);
        c.restarts_in_a_row = c.restarts_in_a_row.saturating_add(1);
        if let RunState::Terminated(t) = &c.state {
            c.last_state = Some(t.clone());
        }
        c.state = RunState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(format!(
                "back-off {}s restarting failed container={} pod={pod_ref}",
                delay.as_secs(),
                c.spec.name
            )),
        };
        self.schedule_start(idx, delay);
    }

    fn schedule_start(&mut self, idx: usize, delay: Duration) {
        let c = &mut self.ctrs[idx];
        c.generation += 1;
        c.step = Step::Waiting;
        let generation = c.generation;
        self.send_later(delay, Msg::StartDue { idx, generation });
    }

    /// A container cannot be created yet: report why and retry later.
    fn retry_later(&mut self, idx: usize, reason: &str, message: String) {
        let base = self.shared.config.restart_backoff;
        let c = &mut self.ctrs[idx];
        tracing::warn!(pod = %self.key, container = %c.spec.name, reason, error = %message, "cannot start container");
        let delay = backoff(base, c.config_retries, MAX_CONFIG_RETRY);
        c.config_retries = c.config_retries.saturating_add(1);
        c.state = RunState::Waiting {
            reason: reason.to_owned(),
            message: Some(message),
        };
        self.schedule_start(idx, delay);
    }

    /// Moves the pod forward: prepares the sandbox, starts what is due,
    /// finishes a terminated pod, reports status.
    async fn reconcile(&mut self) {
        if self.terminating {
            if self.ctrs.iter().all(|c| c.pid.is_none()) {
                self.finish().await;
            } else {
                self.report().await;
            }
            return;
        }
        if self.frozen {
            return;
        }
        if !self.sandbox_ready {
            if self.sandbox_retry_pending {
                return;
            }
            if let Err(message) = self.prepare_sandbox().await {
                tracing::warn!(pod = %self.key, error = %message, "cannot prepare pod sandbox");
                for c in &mut self.ctrs {
                    c.state = RunState::Waiting {
                        reason: "ContainerCreating".into(),
                        message: Some(message.clone()),
                    };
                }
                let delay = backoff(
                    self.shared.config.restart_backoff,
                    self.sandbox_retries,
                    MAX_CONFIG_RETRY,
                );
                self.sandbox_retries = self.sandbox_retries.saturating_add(1);
                self.sandbox_retry_pending = true;
                self.send_later(delay, Msg::SandboxRetry);
                self.report().await;
                return;
            }
            self.sandbox_ready = true;
            for c in &mut self.ctrs {
                if matches!(&c.state, RunState::Waiting { reason, .. } if reason == "ContainerCreating")
                {
                    c.state = RunState::waiting("ContainerCreating");
                }
            }
        }

        if !self.initialized {
            let mut all_passed = true;
            for idx in 0..self.ctrs.len() {
                let c = &self.ctrs[idx];
                let passed = match c.kind {
                    Kind::Init => {
                        c.step == Step::Done
                            && matches!(&c.state, RunState::Terminated(t) if t.exit_code == 0)
                    }
                    Kind::Sidecar => c.started,
                    Kind::Regular => continue,
                };
                if !passed {
                    all_passed = false;
                    if c.step == Step::Idle {
                        self.start(idx).await;
                    }
                    break;
                }
            }
            if all_passed {
                self.initialized = true;
                tracing::info!(pod = %self.key, "pod initialized");
                for c in &mut self.ctrs {
                    if c.kind == Kind::Regular && c.step == Step::Idle {
                        c.state = RunState::waiting("ContainerCreating");
                    }
                }
            }
        }
        for idx in 0..self.ctrs.len() {
            let c = &self.ctrs[idx];
            let due = c.step == Step::Idle
                && match c.kind {
                    Kind::Regular => self.initialized,
                    Kind::Sidecar => c.ever_started && self.initialized,
                    Kind::Init => false,
                };
            if due {
                self.start(idx).await;
            }
        }
        self.report().await;
    }

    fn volumes_dir(&self) -> PathBuf {
        self.sandbox.join("volumes")
    }

    async fn fetch_sources(&self, refs: &Refs) -> Result<Sources, String> {
        let client = self.shared.cluster.client.clone();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let config_maps: Api<ConfigMap> = Api::namespaced(client, &self.namespace);
        let mut sources = Sources::default();
        for name in &refs.secrets {
            let secret = secrets
                .get_opt(name)
                .await
                .map_err(|e| format!("reading secret {name:?}: {e}"))?;
            let data =
                secret.map(|s| text_map(s.data.iter().flatten().map(|(k, v)| (k, v.0.clone()))));
            sources.secrets.insert(name.clone(), data);
        }
        for name in &refs.config_maps {
            let cm = config_maps
                .get_opt(name)
                .await
                .map_err(|e| format!("reading configmap {name:?}: {e}"))?;
            let data = cm.map(|cm| {
                let mut map = text_map(
                    cm.data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k, v.clone().into_bytes())),
                );
                map.extend(text_map(
                    cm.binary_data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k, v.0.clone())),
                ));
                map
            });
            sources.config_maps.insert(name.clone(), data);
        }
        Ok(sources)
    }

    /// Requests the service-account tokens the volumes need, reusing those
    /// younger than 80 % of their lifetime.
    async fn refresh_tokens(&mut self) -> Result<(), String> {
        let needs = volumes::token_needs(&self.pod);
        let account = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let accounts: Api<ServiceAccount> =
            Api::namespaced(self.shared.cluster.client.clone(), &self.namespace);
        for need in needs {
            if let Some(cached) = self.tokens.get(&need.audience)
                && cached.fetched.elapsed() < cached.lifetime.mul_f64(0.8)
            {
                continue;
            }
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: if need.audience.is_empty() {
                        Vec::new()
                    } else {
                        vec![need.audience.clone()]
                    },
                    expiration_seconds: Some(need.expiration_seconds),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(self.name.clone()),
                        uid: Some(self.uid.clone()),
                    }),
                },
                ..TokenRequest::default()
            };
            let response = accounts
                .create_token_request(&account, &PostParams::default(), &request)
                .await
                .map_err(|e| format!("requesting a token for service account {account:?}: {e}"))?;
            let token = response
                .status
                .map(|s| s.token)
                .ok_or_else(|| format!("token request for {account:?} returned no token"))?;
            let lifetime =
                Duration::from_secs(u64::try_from(need.expiration_seconds).unwrap_or(3600));
            tracing::debug!(pod = %self.key, account = %account, "service account token issued");
            self.tokens.insert(
                need.audience,
                CachedToken {
                    token,
                    fetched: Instant::now(),
                    lifetime,
                },
            );
        }
        Ok(())
    }

    /// Creates the sandbox and writes (or refreshes) every volume.
    async fn prepare_sandbox(&mut self) -> Result<(), String> {
        for dir in [self.volumes_dir(), self.sandbox.join("containers")] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let sources = self.fetch_sources(&volumes::referenced(&self.pod)).await?;
        self.refresh_tokens().await?;
        let tokens: BTreeMap<String, String> = self
            .tokens
            .iter()
            .map(|(k, v)| (k.clone(), v.token.clone()))
            .collect();
        let materials = Materials {
            sources: &sources,
            tokens: &tokens,
            ca_pem: &self.shared.cluster.ca_pem,
        };
        volumes::materialise(&self.pod, &self.volumes_dir(), &materials)
    }

    async fn refresh(&mut self) {
        if self.sandbox_ready
            && !self.terminating
            && !self.frozen
            && let Err(e) = self.prepare_sandbox().await
        {
            tracing::warn!(pod = %self.key, error = %e, "volume refresh failed");
        }
        // Also retries a status report that failed.
    }

    /// Starts container `idx`, or puts it into a waiting state explaining
    /// why it cannot start.
    async fn start(&mut self, idx: usize) {
        let shared = self.shared.clone();
        let config = &shared.config;
        let image_map = config.image_map.clone();
        let spec = self.ctrs[idx].spec.clone();
        let image = spec.image.clone().unwrap_or_default();

        let sources = match self.fetch_sources(&env::referenced(&spec)).await {
            Ok(s) => s,
            Err(e) => return self.retry_later(idx, "CreateContainerConfigError", e),
        };
        let agent_path =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        let path = match image_map.directory(&image, process::is_executable) {
            Some(dir) => format!("{}:{agent_path}", dir.display()),
            None => agent_path,
        };
        let home = self.sandbox.to_string_lossy().into_owned();
        let base = env::base(&path, &home, &self.name, &shared.cluster.endpoint);
        let mut environment = match env::resolve(&self.pod, &spec, &sources, base) {
            Ok(e) => e,
            Err(e) => return self.retry_later(idx, "CreateContainerConfigError", e.to_string()),
        };
        let mounts = volumes::mounts(&self.pod, &spec, &self.volumes_dir(), &environment);
        if let Err(e) = volumes::prepare_mounts(&mounts, &self.volumes_dir()) {
            return self.retry_later(
                idx,
                "CreateContainerConfigError",
                format!("preparing mounts: {e}"),
            );
        }
        let expand = |s: &String| volumes::rewrite(&environment.expand(s), &mounts);
        let command: Vec<String> = spec.command.iter().flatten().map(expand).collect();
        let args: Vec<String> = spec.args.iter().flatten().map(expand).collect();
        let search_path = environment.get("PATH").unwrap_or_default().to_owned();
        let program =
            match image_map.resolve(&image, &command, &search_path, process::is_executable) {
                Ok(p) => p,
                Err(e) => {
                    let reason = if self.ctrs[idx].config_retries > 0 {
                        "ImagePullBackOff"
                    } else {
                        "ErrImagePull"
                    };
                    return self.retry_later(idx, reason, e);
                }
            };
        let argv: Vec<String> = program.command_rest.iter().cloned().chain(args).collect();
        environment.map_values(|v| volumes::rewrite(v, &mounts));
        if let Some(sa_dir) = volumes::service_account_dir(&mounts) {
            let kubeconfig = self.sandbox.join("kubeconfig");
            let text = volumes::kubeconfig(
                &shared.cluster.server,
                &shared.cluster.ca_base64(),
                &sa_dir.join("token"),
                &self.namespace,
            );
            if let Err(e) = volumes::write_private(&kubeconfig, &text) {
                return self.retry_later(
                    idx,
                    "CreateContainerConfigError",
                    format!("writing kubeconfig: {e}"),
                );
            }
            environment.set("KUBECONFIG", kubeconfig.to_string_lossy());
        }
        let cwd = spec
            .working_dir
            .as_deref()
            .map(|w| PathBuf::from(volumes::rewrite(w, &mounts)))
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| self.sandbox.clone());
        let log = config.log_dir.join(format!(
            "{}_{}_{}.log",
            self.namespace, self.name, spec.name
        ));

        let c = &mut self.ctrs[idx];
        let restart_count = if c.ever_started {
            c.restart_count + 1
        } else {
            c.restart_count
        };
        let marker = format!(
            "=== siphon-node-agent {} pod={} container={} restartCount={} exec={} ===",
            Timestamp::now(),
            self.key,
            spec.name,
            restart_count,
            program.path.display()
        );
        let spawned = process::spawn(&SpawnSpec {
            program: &program.path,
            args: &argv,
            env: environment.vars(),
            cwd: &cwd,
            log: &log,
            marker: &marker,
        });
        c.config_retries = 0;
        c.restart_count = restart_count;
        c.ever_started = true;
        c.generation += 1;
        let generation = c.generation;
        c.image_id = Some(format!("siphon-local://{}", program.path.display()));
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(pod = %self.key, container = %spec.name, error = %e, "container failed to start");
                c.container_id = None;
                c.state = RunState::Terminated(Termination {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: Some(format!("failed to start {}: {e}", program.path.display())),
                    started_at: None,
                    finished_at: Timestamp::now(),
                    container_id: None,
                });
                return self.after_exit(idx, 128);
            }
        };
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_default();
        if let Err(e) = process::write_pid_file(
            &self
                .sandbox
                .join("containers")
                .join(format!("{}.pid", spec.name)),
            pid,
        ) {
            tracing::warn!(pod = %self.key, container = %spec.name, error = %e, "could not write pid file");
        }
        c.pid = Some(pid);
        c.container_id = Some(format!("siphon://{pid}"));
        c.state = RunState::Running {
            started_at: Timestamp::now(),
        };
        c.step = Step::Running;
        c.running_since = Some(Instant::now());
        c.ready = false;
        c.started = false;
        tracing::info!(pod = %self.key, container = %spec.name, pid, restart_count, program = %program.path.display(), log = %log.display(), "container started");

        let tx = self.tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            // The container is its process group: nothing outlives the leader.
            process::signal_group(pid, Signal::SIGKILL);
            let (code, signal) = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    (s.code(), s.signal())
                }
                Err(_) => (None, None),
            };
            let _ = tx.send(Msg::Exited {
                idx,
                generation,
                code,
                signal,
            });
        });

        let set = ProbeSet {
            startup: spec.startup_probe.clone(),
            readiness: spec.readiness_probe.clone(),
            liveness: spec.liveness_probe.clone(),
            ports: spec.ports.clone().unwrap_or_default(),
        };
        let ctx = probes::ExecContext {
            pod_ip: crate::status::pod_ip(self.pod.metadata.uid.as_deref().unwrap_or_default()),
            image_map,
            image,
            env: environment,
            mounts,
            cwd,
        };
        let tx = self.tx.clone();
        let notify = move |update: Update| {
            let _ = tx.send(Msg::Probe {
                idx,
                generation,
                update,
            });
        };
        self.ctrs[idx].probes = Some(tokio::spawn(probes::run(set, ctx, notify)));
    }

    fn view(&self) -> PodView {
        let containers = self
            .ctrs
            .iter()
            .map(|c| ContainerView {
                name: c.spec.name.clone(),
                kind: c.kind,
                image: c.spec.image.clone().unwrap_or_default(),
                image_id: c.image_id.clone(),
                container_id: c.container_id.clone(),
                state: c.state.clone(),
                last_state: c.last_state.clone(),
                restart_count: c.restart_count,
                started: c.started,
                ready: c.ready,
            })
            .collect();
        let readiness_gates = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .map(|g| g.iter().map(|g| g.condition_type.clone()).collect())
            .unwrap_or_default();
        PodView {
            restart_policy: self.policy,
            containers,
            sandbox_ready: self.sandbox_ready,
            start_time: self.start_time,
            pod_ip: crate::status::pod_ip(self.pod.metadata.uid.as_deref().unwrap_or_default()),
            readiness_gates,
            initialized: self.initialized,
            generation: self.pod.metadata.generation,
        }
    }

    /// Patches the pod's status if it changed since the last report.
    async fn report(&mut self) {
        if self.gone || self.shutting_down || self.frozen {
            return;
        }
        let built = status::build(&self.view(), self.pod.status.as_ref(), Timestamp::now());
        let Ok(value) = serde_json::to_value(&built) else {
            return;
        };
        // Compared with the stored status, not with what we sent last: if
        // someone else changed it (the node lifecycle controller marks pods
        // not ready when the node was not ready), it is put right again.
        let current = serde_json::to_value(&self.pod.status).unwrap_or_default();
        if covers(&current, &value) {
            return;
        }
        let patch = json!({ "status": value });
        match self
            .api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(pod) => {
                tracing::debug!(pod = %self.key, phase = ?built.phase, "status reported");
                self.last_resource_version = resource_version(&pod).max(self.last_resource_version);
                self.pod.status = pod.status;
            }
            Err(e) if has_code(&e, 404) => self.vanished(),
            Err(e) => {
                tracing::warn!(pod = %self.key, error = %e, "status report failed; will retry")
            }
        }
    }

    /// All processes are gone after deletion: final status, delete the pod
    /// object, remove the sandbox.
    async fn finish(&mut self) {
        if !self.gone {
            self.report().await;
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match self.api.delete(&self.name, &params).await {
                Ok(_) => tracing::info!(pod = %self.key, "containers stopped; pod deleted"),
                Err(e) if has_code(&e, 404) || has_code(&e, 409) => {}
                Err(e) => {
                    tracing::warn!(pod = %self.key, error = %e, "deleting the pod failed; will retry");
                    self.send_later(Duration::from_secs(2), Msg::Wake);
                    return;
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.sandbox)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(pod = %self.key, error = %e, "could not remove sandbox");
        }
        self.finished = true;
        tracing::info!(pod = %self.key, "pod finished");
    }

    /// Agent shutdown: SIGTERM, then SIGKILL after the grace; no API calls.
    async fn shutdown(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>) {
        self.shutting_down = true;
        self.terminating = true;
        for c in &self.ctrs {
            if let Some(pid) = c.pid {
                tracing::info!(pod = %self.key, container = %c.spec.name, pid, "agent stopping; sending SIGTERM");
                process::signal_group(pid, Signal::SIGTERM);
            }
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let mut killed = false;
        while self.ctrs.iter().any(|c| c.pid.is_some()) {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Exited { idx, generation, code, signal }) => self.exited(idx, generation, code, signal),
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline), if !killed => {
                    killed = true;
                    for c in &self.ctrs {
                        if let Some(pid) = c.pid {
                            tracing::warn!(pod = %self.key, container = %c.spec.name, pid, "sending SIGKILL");
                            process::signal_group(pid, Signal::SIGKILL);
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline + Duration::from_secs(5)) => break,
            }
        }
        for c in &self.ctrs {
            if let Some(task) = &c.probes {
                task.abort();
            }
        }
    }
}

/// What the kubelet keeps of a failed container's log as its termination
/// message: at most the last 80 lines and 2048 bytes of its latest run (the
/// agent appends runs to one file, each after a marker line).
fn log_tail(path: &std::path::Path) -> Option<String> {
    const MAX_BYTES: usize = 2048;
    const MAX_LINES: usize = 80;
    let text = std::fs::read_to_string(path).ok()?;
    let run = text
        .rfind("=== siphon-node-agent ")
        .and_then(|i| text[i..].find('\n').map(|n| &text[i + n + 1..]))
        .unwrap_or(&text);
    let lines: Vec<&str> = run.lines().collect();
    let tail = lines[lines.len().saturating_sub(MAX_LINES)..].join("\n");
    let mut start = tail.len().saturating_sub(MAX_BYTES);
    while !tail.is_char_boundary(start) {
        start += 1;
    }
    let tail = tail[start..].trim().to_string();
    (!tail.is_empty()).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_secs(2);
        assert_eq!(backoff(base, 0, MAX_BACKOFF), Duration::from_secs(2));
        assert_eq!(backoff(base, 1, MAX_BACKOFF), Duration::from_secs(4));
        assert_eq!(backoff(base, 4, MAX_BACKOFF), Duration::from_secs(32));
        assert_eq!(backoff(base, 8, MAX_BACKOFF), MAX_BACKOFF);
        assert_eq!(backoff(base, u32::MAX, MAX_BACKOFF), MAX_BACKOFF);
        assert_eq!(
            backoff(Duration::from_secs(10), 1, MAX_BACKOFF),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn covers_compares_only_our_fields() {
        let current = json!({"phase": "Running", "qosClass": "BestEffort", "conditions": [{"type": "Ready"}]});
        assert!(covers(&current, &json!({"phase": "Running"})));
        assert!(covers(
            &current,
            &json!({"phase": "Running", "conditions": [{"type": "Ready"}]})
        ));
        assert!(!covers(&current, &json!({"phase": "Pending"})));
        assert!(!covers(&current, &json!({"podIP": "127.0.0.1"})));
        assert!(!covers(
            &serde_json::Value::Null,
            &json!({"phase": "Running"})
        ));
    }

    #[test]
    fn sandbox_names_carry_the_uid() {
        let name = sandbox_name("shop", "web-1", "0f1e-22");
        assert_eq!(name, "shop_web-1_0f1e-22");
        assert_eq!(sandbox_uid(&name), Some("0f1e-22"));
        assert_eq!(sandbox_uid("nounderscore"), None);
    }
}
