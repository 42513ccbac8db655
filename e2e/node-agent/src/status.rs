//! Pure construction of a Pod's `status` from what the agent knows about its
//! containers, following the kubelet's rules (`getPhase`, the generated
//! conditions and the container statuses).
//!
//! Nothing here talks to the API server or reads the clock: the supervisor in
//! [`crate::pods`] passes a [`PodView`], the status last seen on the API server
//! (to keep `lastTransitionTime` of unchanged conditions and the conditions
//! other components own, such as `PodScheduled`) and "now".

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The address every pod and the node have: all pods share the host's loopback.
pub const POD_IP: &str = "127.0.0.1";

/// The IP of a pod: its own address in 127.0.0.0/8, derived from its UID, so
/// that pods listening on the same port (each worker serves metrics on 9187)
/// do not collide, as on a real node where every pod has its own network
/// namespace. The host IP stays 127.0.0.1.
pub fn pod_ip(uid: &str) -> String {
    // FNV-1a over the UID; the first octet after 127 avoids 0 (127.0.0.x is
    // the host's) and 255.
    let mut h: u32 = 0x811c_9dc5;
    for b in uid.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let a = 1 + (h >> 16) % 254;
    let b = (h >> 8) & 0xff;
    let c = 1 + (h & 0xff) % 254;
    format!("127.{a}.{b}.{c}")
}

/// Which list of the pod spec a container comes from, and how it is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An init container: runs to completion before the next one starts.
    Init,
    /// An init container with `restartPolicy: Always` (native sidecar): it
    /// only has to start before the next init container, and keeps running.
    Sidecar,
    /// A regular container.
    Regular,
}

/// The pod's `spec.restartPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Parses `spec.restartPolicy`; the API server defaults it to `Always`.
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }
}

/// How a container run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Termination {
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `StartError`, `ContainerStatusUnknown`...
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    pub container_id: Option<String>,
}

/// The current state of a container, as in `ContainerState`.
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Termination),
}

impl Termination {
    /// From a `ContainerStateTerminated` of the API.
    pub fn from_api(t: &ContainerStateTerminated, fallback_time: Timestamp) -> Self {
        Self {
            exit_code: t.exit_code,
            signal: t.signal,
            reason: t.reason.clone().unwrap_or_else(|| "Error".into()),
            message: t.message.clone(),
            started_at: t.started_at.as_ref().map(|t| t.0),
            finished_at: t.finished_at.as_ref().map_or(fallback_time, |t| t.0),
            container_id: t.container_id.clone(),
        }
    }
}

impl RunState {
    /// A waiting state with a reason and no message.
    pub fn waiting(reason: &str) -> Self {
        Self::Waiting {
            reason: reason.to_owned(),
            message: None,
        }
    }
}

/// What the agent knows about one container.
#[derive(Clone, Debug)]
pub struct ContainerView {
    pub name: String,
    pub kind: Kind,
    pub image: String,
    pub image_id: Option<String>,
    pub container_id: Option<String>,
    pub state: RunState,
    pub last_state: Option<Termination>,
    pub restart_count: i32,
    /// Startup probe passed (or none) and the container is running.
    pub started: bool,
    /// Readiness probe passes (or none) and the container is running.
    pub ready: bool,
}

/// What the agent knows about the pod.
#[derive(Clone, Debug)]
pub struct PodView {
    pub restart_policy: RestartPolicy,
    /// Init containers and sidecars in spec order, then regular containers.
    pub containers: Vec<ContainerView>,
    /// The sandbox directory and volumes exist.
    pub sandbox_ready: bool,
    pub start_time: Timestamp,
    /// The pod's own loopback address ([`pod_ip`]).
    pub pod_ip: String,
    /// `spec.readinessGates[].conditionType`.
    pub readiness_gates: Vec<String>,
    /// Initialisation completed once (a sidecar restarting later does not
    /// make the pod uninitialised again).
    pub initialized: bool,
    /// `metadata.generation`, reported as `observedGeneration`.
    pub generation: Option<i64>,
}

/// `status.phase` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// Names of the init containers (and sidecars) that keep the pod from being
/// initialised, in spec order.
pub fn pending_init(view: &PodView) -> Vec<&str> {
    if view.initialized {
        return Vec::new();
    }
    view.containers
        .iter()
        .filter(|c| match c.kind {
            Kind::Init => !matches!(&c.state, RunState::Terminated(t) if t.exit_code == 0),
            Kind::Sidecar => !c.started,
            Kind::Regular => false,
        })
        .map(|c| c.name.as_str())
        .collect()
}

/// True once an init container failed and the pod's policy forbids retrying it.
fn init_failed_for_good(view: &PodView) -> bool {
    view.restart_policy == RestartPolicy::Never
        && view.containers.iter().any(|c| {
            c.kind == Kind::Init && matches!(&c.state, RunState::Terminated(t) if t.exit_code != 0)
        })
}

/// The pod phase, as the kubelet's `getPhase` computes it.
pub fn phase(view: &PodView) -> Phase {
    if init_failed_for_good(view) {
        return Phase::Failed;
    }
    if !pending_init(view).is_empty() {
        return Phase::Pending;
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in view.containers.iter().filter(|c| c.kind == Kind::Regular) {
        match &c.state {
            RunState::Running { .. } => running += 1,
            RunState::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            // Waiting to be restarted counts as stopped, like the kubelet.
            RunState::Waiting { .. } if c.last_state.is_some() => stopped += 1,
            RunState::Waiting { .. } => waiting += 1,
        }
    }
    if waiting > 0 {
        Phase::Pending
    } else if running > 0 {
        Phase::Running
    } else if stopped > 0 {
        match view.restart_policy {
            RestartPolicy::Always => Phase::Running,
            _ if stopped == succeeded => Phase::Succeeded,
            RestartPolicy::Never => Phase::Failed,
            RestartPolicy::OnFailure => Phase::Running,
        }
    } else {
        Phase::Pending
    }
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn container_state(state: &RunState) -> ContainerState {
    match state {
        RunState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..ContainerState::default()
        },
        RunState::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..ContainerState::default()
        },
        RunState::Terminated(t) => terminated_state(t),
    }
}

fn terminated_state(t: &Termination) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            container_id: t.container_id.clone(),
            exit_code: t.exit_code,
            finished_at: Some(time(t.finished_at)),
            message: t.message.clone(),
            reason: Some(t.reason.clone()),
            signal: t.signal,
            started_at: t.started_at.map(time),
        }),
        ..ContainerState::default()
    }
}

/// The `ContainerStatus` of one container.
pub fn container_status(c: &ContainerView) -> ContainerStatus {
    let running = matches!(c.state, RunState::Running { .. });
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone().unwrap_or_default(),
        container_id: c.container_id.clone(),
        ready: running && c.ready,
        started: Some(running && c.started),
        restart_count: c.restart_count,
        state: Some(container_state(&c.state)),
        last_state: Some(
            c.last_state
                .as_ref()
                .map(terminated_state)
                .unwrap_or_default(),
        ),
        ..ContainerStatus::default()
    }
}

/// One condition the agent owns: type, status, reason, message.
struct Cond {
    type_: &'static str,
    status: bool,
    reason: Option<&'static str>,
    message: Option<String>,
}

fn unready_message(names: &[&str]) -> String {
    format!("containers with unready status: [{}]", names.join(" "))
}

fn conditions(view: &PodView, phase: Phase, previous: &[PodCondition]) -> Vec<Cond> {
    let pending = pending_init(view);
    let initialized = pending.is_empty();
    let unready: Vec<&str> = view
        .containers
        .iter()
        .filter(|c| c.kind != Kind::Init)
        .filter(|c| !(c.ready && matches!(c.state, RunState::Running { .. })))
        .map(|c| c.name.as_str())
        .collect();
    let gates_ok = view.readiness_gates.iter().all(|gate| {
        previous
            .iter()
            .any(|p| &p.type_ == gate && p.status == "True")
    });
    let completed = phase.is_terminal();

    let (ready_status, ready_reason, ready_message) = if completed {
        (false, Some("PodCompleted"), None)
    } else if !unready.is_empty() {
        (
            false,
            Some("ContainersNotReady"),
            Some(unready_message(&unready)),
        )
    } else {
        (true, None, None)
    };
    let mut pod_ready = Cond {
        type_: "Ready",
        status: ready_status,
        reason: ready_reason,
        message: ready_message.clone(),
    };
    if pod_ready.status && !gates_ok {
        pod_ready.status = false;
        pod_ready.reason = Some("ReadinessGatesNotReady");
        pod_ready.message =
            Some("corresponding condition of pod readiness gate is not True".into());
    }
    vec![
        Cond {
            type_: "PodReadyToStartContainers",
            status: view.sandbox_ready,
            reason: None,
            message: None,
        },
        Cond {
            type_: "Initialized",
            status: initialized,
            reason: if initialized {
                completed.then_some("PodCompleted")
            } else {
                Some("ContainersNotInitialized")
            },
            message: (!initialized)
                .then(|| format!("containers with incomplete status: [{}]", pending.join(" "))),
        },
        pod_ready,
        Cond {
            type_: "ContainersReady",
            status: ready_status,
            reason: ready_reason,
            message: ready_message,
        },
    ]
}

/// Builds the whole status. `previous` is the status currently stored (its
/// conditions keep their `lastTransitionTime` when unchanged, and conditions
/// owned by others are kept as they are).
pub fn build(view: &PodView, previous: Option<&PodStatus>, now: Timestamp) -> PodStatus {
    let phase = phase(view);
    let previous_conditions: &[PodCondition] = previous
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let ours = conditions(view, phase, previous_conditions);

    let mut out: Vec<PodCondition> = ours
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let since = previous_conditions
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == status)
                .and_then(|p| p.last_transition_time.clone())
                .unwrap_or(time(now));
            PodCondition {
                type_: c.type_.to_owned(),
                status: status.to_owned(),
                reason: c.reason.map(str::to_owned),
                message: c.message.clone(),
                last_transition_time: Some(since),
                observed_generation: view.generation,
                ..PodCondition::default()
            }
        })
        .collect();
    let mut scheduled = false;
    for p in previous_conditions {
        if ours.iter().any(|c| c.type_ == p.type_) {
            continue;
        }
        scheduled |= p.type_ == "PodScheduled";
        out.push(p.clone());
    }
    if !scheduled {
        out.push(PodCondition {
            type_: "PodScheduled".into(),
            status: "True".into(),
            last_transition_time: Some(time(view.start_time)),
            ..PodCondition::default()
        });
    }

    let statuses = |init: bool| -> Option<Vec<ContainerStatus>> {
        let list: Vec<ContainerStatus> = view
            .containers
            .iter()
            .filter(|c| (c.kind != Kind::Regular) == init)
            .map(container_status)
            .collect();
        (!list.is_empty() || !init).then_some(list)
    };

    PodStatus {
        phase: Some(phase.as_str().to_owned()),
        conditions: Some(out),
        host_ip: Some(POD_IP.into()),
        host_ips: Some(vec![HostIP { ip: POD_IP.into() }]),
        pod_ip: Some(view.pod_ip.clone()),
        pod_ips: Some(vec![PodIP {
            ip: view.pod_ip.clone(),
        }]),
        start_time: Some(time(view.start_time)),
        init_container_statuses: statuses(true),
        container_statuses: statuses(false),
        observed_generation: view.generation,
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pod_ips_are_distinct_loopback_addresses() {
        let a = super::pod_ip("0b6f3c1e-1111-4a5b-9c1d-000000000001");
        let b = super::pod_ip("0b6f3c1e-1111-4a5b-9c1d-000000000002");
        assert_ne!(a, b);
        for ip in [&a, &b] {
            let octets: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
            assert_eq!(octets[0], 127);
            assert_ne!(octets[1], 0, "127.0.0.x belongs to the host");
        }
    }

    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn container(name: &str, kind: Kind, state: RunState) -> ContainerView {
        ContainerView {
            name: name.into(),
            kind,
            image: "busybox".into(),
            image_id: None,
            container_id: None,
            state,
            last_state: None,
            restart_count: 0,
            started: false,
            ready: false,
        }
    }

    fn exited(code: i32) -> RunState {
        RunState::Terminated(Termination {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: Some(ts(0)),
            finished_at: ts(5),
            container_id: Some("siphon://42".into()),
        })
    }

    fn pod(policy: RestartPolicy, containers: Vec<ContainerView>) -> PodView {
        PodView {
            restart_policy: policy,
            containers,
            sandbox_ready: true,
            start_time: ts(0),
            pod_ip: "127.3.4.5".into(),
            readiness_gates: vec![],
            initialized: false,
            generation: Some(1),
        }
    }

    fn running() -> RunState {
        RunState::Running { started_at: ts(1) }
    }

    #[test]
    fn phase_follows_the_kubelet_rules() {
        let waiting = RunState::waiting("ContainerCreating");
        let p = pod(
            RestartPolicy::Always,
            vec![container("a", Kind::Regular, waiting.clone())],
        );
        assert_eq!(phase(&p), Phase::Pending);

        let p = pod(
            RestartPolicy::Always,
            vec![container("a", Kind::Regular, running())],
        );
        assert_eq!(phase(&p), Phase::Running);

        // Init container still running: Pending.
        let p = pod(
            RestartPolicy::Always,
            vec![
                container("init", Kind::Init, running()),
                container("a", Kind::Regular, RunState::waiting("PodInitializing")),
            ],
        );
        assert_eq!(phase(&p), Phase::Pending);

        // Failed init container with Never: Failed.
        let p = pod(
            RestartPolicy::Never,
            vec![
                container("init", Kind::Init, exited(1)),
                container("a", Kind::Regular, RunState::waiting("PodInitializing")),
            ],
        );
        assert_eq!(phase(&p), Phase::Failed);

        for (policy, code, expected) in [
            (RestartPolicy::Never, 0, Phase::Succeeded),
            (RestartPolicy::Never, 1, Phase::Failed),
            (RestartPolicy::OnFailure, 0, Phase::Succeeded),
            (RestartPolicy::Always, 0, Phase::Running),
        ] {
            let p = pod(policy, vec![container("a", Kind::Regular, exited(code))]);
            assert_eq!(phase(&p), expected, "{policy:?} exit {code}");
        }

        // Back-off after a failure counts as stopped, so the pod stays Running.
        let mut c = container("a", Kind::Regular, RunState::waiting("CrashLoopBackOff"));
        c.last_state = Some(match exited(1) {
            RunState::Terminated(t) => t,
            _ => unreachable!(),
        });
        assert_eq!(
            phase(&pod(RestartPolicy::OnFailure, vec![c])),
            Phase::Running
        );

        // A started sidecar does not block initialisation.
        let mut sidecar = container("side", Kind::Sidecar, running());
        sidecar.started = true;
        let p = pod(
            RestartPolicy::Never,
            vec![sidecar, container("a", Kind::Regular, exited(0))],
        );
        assert_eq!(phase(&p), Phase::Succeeded);
    }

    #[test]
    fn ready_pod_has_all_conditions_true() {
        let mut c = container("a", Kind::Regular, running());
        c.ready = true;
        c.started = true;
        c.container_id = Some("siphon://42".into());
        let status = build(&pod(RestartPolicy::Always, vec![c]), None, ts(10));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("127.3.4.5"));
        assert_eq!(status.observed_generation, Some(1));
        let conds = status.conditions.unwrap();
        for t in [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ] {
            let c = conds.iter().find(|c| c.type_ == t).unwrap();
            assert_eq!(c.status, "True", "{t}");
            assert!(c.last_transition_time.is_some());
        }
        let cs = &status.container_statuses.unwrap()[0];
        assert!(cs.ready);
        assert_eq!(cs.started, Some(true));
        assert_eq!(cs.container_id.as_deref(), Some("siphon://42"));
        assert!(cs.state.as_ref().unwrap().running.is_some());
        assert!(status.init_container_statuses.is_none());
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let mut c = container("a", Kind::Regular, running());
        c.ready = true;
        c.started = true;
        let view = pod(RestartPolicy::Always, vec![c.clone()]);
        let first = build(&view, None, ts(10));
        let second = build(&view, Some(&first), ts(20));
        assert_eq!(first.conditions, second.conditions);

        c.ready = false;
        let third = build(&pod(RestartPolicy::Always, vec![c]), Some(&second), ts(30));
        let ready = |s: &PodStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .cloned()
                .unwrap()
        };
        assert_eq!(ready(&third).status, "False");
        assert_eq!(ready(&third).last_transition_time, Some(Time(ts(30))));
        assert_eq!(
            ready(&third).message.as_deref(),
            Some("containers with unready status: [a]")
        );
    }

    #[test]
    fn foreign_conditions_are_kept() {
        let previous = PodStatus {
            conditions: Some(vec![
                PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(ts(-5))),
                    ..PodCondition::default()
                },
                PodCondition {
                    type_: "example.com/gate".into(),
                    status: "False".into(),
                    ..PodCondition::default()
                },
            ]),
            ..PodStatus::default()
        };
        let mut c = container("a", Kind::Regular, running());
        c.ready = true;
        c.started = true;
        let mut view = pod(RestartPolicy::Always, vec![c]);
        view.readiness_gates = vec!["example.com/gate".into()];
        let status = build(&view, Some(&previous), ts(10));
        let conds = status.conditions.unwrap();
        let get = |t: &str| conds.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(get("PodScheduled").last_transition_time, Some(Time(ts(-5))));
        assert_eq!(get("example.com/gate").status, "False");
        assert_eq!(get("ContainersReady").status, "True");
        assert_eq!(get("Ready").status, "False");
        assert_eq!(
            get("Ready").reason.as_deref(),
            Some("ReadinessGatesNotReady")
        );
    }

    #[test]
    fn terminated_and_last_state_are_reported() {
        let mut c = container("a", Kind::Regular, RunState::waiting("CrashLoopBackOff"));
        c.restart_count = 3;
        if let RunState::Terminated(t) = exited(2) {
            c.last_state = Some(t);
        }
        let mut init = container("init", Kind::Init, exited(0));
        init.container_id = Some("siphon://7".into());
        let status = build(&pod(RestartPolicy::Always, vec![init, c]), None, ts(10));
        let cs = &status.container_statuses.unwrap()[0];
        assert_eq!(cs.restart_count, 3);
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(last.exit_code, 2);
        assert_eq!(last.reason.as_deref(), Some("Error"));
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        let init = &status.init_container_statuses.unwrap()[0];
        let done = init.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(done.reason.as_deref(), Some("Completed"));
        assert_eq!(status.phase.as_deref(), Some("Running"));
    }
}
