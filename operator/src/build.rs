//! Stage 5 of the reconcile pipeline: the Kubernetes objects of a capture's
//! worker, built from the plan. Pure: the apply stage sends them with
//! server-side apply.
//!
//! Credentials never enter the ConfigMap: the worker reads them from
//! environment variables filled from the user's Secrets. The pod template
//! carries a hash of the configuration, so a changed spec rolls the worker;
//! the `Recreate` strategy guarantees the old worker is gone before the new
//! one opens the slot (one writer per slot).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, LocalObjectReference, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use siphon_crds::capture::{PostgresCapture, SnapshotSpec};
use siphon_crds::worker_config::{
    KafkaConfig, LogicalConfig, MetricsConfig, NotifyConfig, PostgresConfig, StatusTarget,
    WorkerConfig,
};

use crate::names::{self, worker_object_name};
use crate::polling::NotifyObjects;
use crate::validate::Plan;

/// Settings of the operator that shape every worker.
#[derive(Debug, Clone)]
pub struct WorkerDefaults {
    /// Image used when the spec names none (the operator's own image).
    pub image: String,
    pub image_pull_policy: String,
    /// Secrets of the image's registry, by name, in the capture's namespace
    /// (the chart's `imagePullSecrets`), given to every worker pod.
    pub image_pull_secrets: Vec<String>,
}

/// The objects of one capture's worker.
#[derive(Debug, Clone)]
pub struct WorkerObjects {
    pub config_map: ConfigMap,
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    /// The worker's `metrics` port behind a stable name, for a
    /// ServiceMonitor (the chart's PodMonitor selects the pods directly).
    pub service: Service,
    pub deployment: Deployment,
    pub config_hash: String,
}

const PG_CA_DIR: &str = "/etc/siphon/pg-ca";
const KAFKA_TLS_DIR: &str = "/etc/siphon/kafka-tls";
const SPILL_DIR: &str = "/var/lib/siphon/spill";

/// The worker configuration for a capture (no secrets in it).
pub fn worker_config(capture: &PostgresCapture, plan: &Plan) -> WorkerConfig {
    let spec = &capture.spec;
    let logical = spec.logical_or_default();
    let pg = &spec.postgres;
    let snapshot: SnapshotSpec = spec.snapshot_or_default();
    let kafka_auth = spec.kafka.auth_secret_ref.is_some();
    WorkerConfig {
        name: names::capture_id(
            &plan.namespace,
            &plan.name,
            &capture.uid().unwrap_or_default(),
        ),
        postgres: PostgresConfig {
            host: pg.host.clone(),
            port: pg.port,
            database: pg.database.clone(),
            user: None,
            user_env: Some(names::ENV_PG_USER.into()),
            password: None,
            password_env: Some(names::ENV_PG_PASSWORD.into()),
            ssl_mode: pg.ssl_mode,
            ssl_root_cert: pg
                .ca_secret_ref
                .as_ref()
                .map(|r| format!("{PG_CA_DIR}/{}", r.key)),
        },
        mode: spec.mode,
        tables: spec.tables.clone(),
        logical: LogicalConfig {
            slot_name: plan.slot.as_str().to_string(),
            publication_name: plan.publication.clone(),
            heartbeat_interval: logical.heartbeat_interval.clone(),
            operations: logical.operations.clone(),
            stream_in_progress: logical.stream_in_progress,
            create_slot: false,
        },
        snapshot,
        polling: spec.polling.clone(),
        notify: NotifyObjects::of(plan).map(|objects| NotifyConfig {
            channel: objects.names.channel.clone(),
            deletes_table: objects.deletes_table_name(),
        }),
        kafka: KafkaConfig {
            bootstrap_servers: spec.kafka.bootstrap_servers.clone(),
            topic_prefix: spec.kafka.topic_prefix.clone(),
            format: spec.kafka.format,
            delivery: spec.kafka.delivery,
            tombstones: spec.kafka.tombstones,
            compression: spec.kafka.compression.clone(),
            topics: spec.kafka.topics.clone(),
            security_protocol: spec.kafka.security_protocol.clone(),
            sasl_mechanism: spec.kafka.sasl_mechanism.clone(),
            sasl_username_env: spec
                .kafka
                .sasl_mechanism
                .as_ref()
                .map(|_| names::ENV_KAFKA_USER.into()),
            sasl_password_env: spec
                .kafka
                .sasl_mechanism
                .as_ref()
                .map(|_| names::ENV_KAFKA_PASSWORD.into()),
            // The mounted auth Secret: the worker uses the CA and the client
            // certificate it finds there (mutual TLS when tls.crt and
            // tls.key are present).
            tls_dir: (kafka_auth && spec.kafka.security_protocol.ends_with("ssl"))
                .then(|| KAFKA_TLS_DIR.to_string()),
            options: spec.kafka.options.clone(),
            ..KafkaConfig::default()
        },
        output: spec.output_or_default(),
        metrics: MetricsConfig {
            listen: format!("0.0.0.0:{}", names::WORKER_METRICS_PORT),
        },
        status: Some(StatusTarget {
            namespace: plan.namespace.clone(),
            name: plan.name.clone(),
        }),
        spill_dir: SPILL_DIR.into(),
        ..WorkerConfig::default()
    }
}

fn labels(plan: &Plan) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::CAPTURE_LABEL.to_string(), plan.name.clone()),
        (names::COMPONENT_LABEL.to_string(), "worker".to_string()),
        (
            names::NAME_LABEL.to_string(),
            names::WORKER_NAME.to_string(),
        ),
        (names::INSTANCE_LABEL.to_string(), plan.name.clone()),
        (names::PART_OF_LABEL.to_string(), "siphon".to_string()),
        (
            names::MANAGED_BY_LABEL.to_string(),
            names::MANAGED_BY.to_string(),
        ),
    ])
}

/// The container runtime's default seccomp profile: what PodSecurity
/// `restricted` asks of every pod and container.
fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

fn owner(capture: &PostgresCapture) -> Option<OwnerReference> {
    capture.controller_owner_ref(&())
}

fn meta(capture: &PostgresCapture, plan: &Plan) -> ObjectMeta {
    ObjectMeta {
        name: Some(worker_object_name(&plan.name)),
        namespace: Some(plan.namespace.clone()),
        labels: Some(labels(plan)),
        owner_references: owner(capture).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn env_from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Build every object of the worker.
pub fn worker_objects(
    capture: &PostgresCapture,
    plan: &Plan,
    defaults: &WorkerDefaults,
) -> Result<WorkerObjects, serde_yaml::Error> {
    let spec = &capture.spec;
    let config = worker_config(capture, plan);
    let config_yaml = serde_yaml::to_string(&config)?;
    let config_hash = hex::encode(&Sha256::digest(config_yaml.as_bytes())[..8]);
    let object_name = worker_object_name(&plan.name);
    let pod_spec_in = spec.worker.clone().unwrap_or_default();

    let config_map = ConfigMap {
        metadata: meta(capture, plan),
        data: Some(BTreeMap::from([(
            names::WORKER_CONFIG_KEY.to_string(),
            config_yaml,
        )])),
        ..ConfigMap::default()
    };

    let service_account = ServiceAccount {
        metadata: meta(capture, plan),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    // The worker may read its own capture and write its own status.progress,
    // nothing else.
    let role = Role {
        metadata: meta(capture, plan),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![siphon_crds::GROUP.into()]),
            resources: Some(vec![
                "postgrescaptures".into(),
                "postgrescaptures/status".into(),
            ]),
            resource_names: Some(vec![plan.name.clone()]),
            verbs: vec!["get".into(), "patch".into()],
            ..PolicyRule::default()
        }]),
    };
    let role_binding = RoleBinding {
        metadata: meta(capture, plan),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: object_name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: object_name.clone(),
            namespace: Some(plan.namespace.clone()),
            ..Subject::default()
        }]),
    };

    let service = Service {
        metadata: meta(capture, plan),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(
                names::CAPTURE_LABEL.to_string(),
                plan.name.clone(),
            )])),
            ports: Some(vec![ServicePort {
                name: Some("metrics".into()),
                port: names::WORKER_METRICS_PORT,
                target_port: Some(IntOrString::String("metrics".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let creds = &spec.postgres.credentials_secret_ref;
    let mut env = vec![
        EnvVar {
            name: "POD_IP".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        env_from_secret(names::ENV_PG_USER, &creds.name, &creds.username_key),
        env_from_secret(names::ENV_PG_PASSWORD, &creds.name, &creds.password_key),
        EnvVar {
            name: "RUST_LOG".into(),
            value: Some(
                pod_spec_in
                    .log_level
                    .clone()
                    .unwrap_or_else(|| "info".into()),
            ),
            ..EnvVar::default()
        },
    ];
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: object_name.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "spill".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: names::WORKER_CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "spill".into(),
            mount_path: SPILL_DIR.into(),
            ..VolumeMount::default()
        },
    ];
    if let Some(ca) = &spec.postgres.ca_secret_ref {
        volumes.push(Volume {
            name: "pg-ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "pg-ca".into(),
            mount_path: PG_CA_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if let Some(auth) = &spec.kafka.auth_secret_ref {
        if spec.kafka.sasl_mechanism.is_some() {
            env.push(env_from_secret(
                names::ENV_KAFKA_USER,
                &auth.name,
                "username",
            ));
            env.push(env_from_secret(
                names::ENV_KAFKA_PASSWORD,
                &auth.name,
                "password",
            ));
        }
        volumes.push(Volume {
            name: "kafka-tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(auth.name.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "kafka-tls".into(),
            mount_path: KAFKA_TLS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    };

    let container = Container {
        name: "worker".into(),
        image: Some(
            pod_spec_in
                .image
                .clone()
                .unwrap_or_else(|| defaults.image.clone()),
        ),
        image_pull_policy: Some(
            pod_spec_in
                .image_pull_policy
                .clone()
                .unwrap_or_else(|| defaults.image_pull_policy.clone()),
        ),
        command: Some(vec!["siphon-worker".into()]),
        args: Some(vec![
            "--config".into(),
            format!("{}/{}", names::WORKER_CONFIG_DIR, names::WORKER_CONFIG_KEY),
            "--metrics-addr".into(),
            format!("$(POD_IP):{}", names::WORKER_METRICS_PORT),
        ]),
        env: Some(env),
        // The worker writes why it stopped into the status; what it could
        // not write (a crash) is the tail of its log in lastState.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: names::WORKER_METRICS_PORT,
            ..ContainerPort::default()
        }]),
        // Readiness is what `Ready` on the capture waits for: probed every
        // second (a local HTTP GET), so a started worker is seen within ~1 s.
        readiness_probe: Some(probe("/readyz", 1)),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(10),
            ..probe("/healthz", 10)
        }),
        resources: pod_spec_in.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    let mut pod_annotations = pod_spec_in.annotations.clone();
    pod_annotations.insert(names::CONFIG_HASH_ANNOTATION.into(), config_hash.clone());
    let deployment = Deployment {
        metadata: meta(capture, plan),
        spec: Some(DeploymentSpec {
            replicas: Some(if spec.suspend { 0 } else { 1 }),
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    names::CAPTURE_LABEL.to_string(),
                    plan.name.clone(),
                )])),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(plan)),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(object_name),
                    image_pull_secrets: (!defaults.image_pull_secrets.is_empty()).then(|| {
                        defaults
                            .image_pull_secrets
                            .iter()
                            .map(|name| LocalObjectReference { name: name.clone() })
                            .collect()
                    }),
                    automount_service_account_token: Some(true),
                    containers: vec![container],
                    volumes: Some(volumes),
                    node_selector: (!pod_spec_in.node_selector.is_empty())
                        .then(|| pod_spec_in.node_selector.clone()),
                    tolerations: (!pod_spec_in.tolerations.is_empty())
                        .then(|| pod_spec_in.tolerations.clone()),
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };

    Ok(WorkerObjects {
        config_map,
        service_account,
        role,
        role_binding,
        service,
        deployment,
        config_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{tests::SPEC, tests::fixture, validate};

    fn defaults() -> WorkerDefaults {
        WorkerDefaults {
            image: "siphon:dev".into(),
            image_pull_policy: "IfNotPresent".into(),
            image_pull_secrets: vec!["regcred".into()],
        }
    }

    fn build(spec: &str) -> WorkerObjects {
        let c = fixture("default", "shop", spec);
        let plan = validate(&c, &[]).unwrap();
        worker_objects(&c, &plan, &defaults()).unwrap()
    }

    #[test]
    fn one_replica_recreate_and_a_config_hash() {
        let o = build(SPEC);
        let d = o.deployment.spec.unwrap();
        assert_eq!(d.replicas, Some(1));
        assert_eq!(d.strategy.unwrap().type_.as_deref(), Some("Recreate"));
        let ann = d.template.metadata.unwrap().annotations.unwrap();
        assert_eq!(ann[names::CONFIG_HASH_ANNOTATION], o.config_hash);
    }

    #[test]
    fn notify_names_the_channel_and_deletes_table_the_operator_made() {
        use crate::validate::tests::POLLING;
        let plain = fixture("default", "shop", POLLING);
        let config = worker_config(&plain, &validate(&plain, &[]).unwrap());
        assert_eq!(config.notify, None);
        let spec = POLLING.replace(
            "cursorColumn: updated_at",
            "cursorColumn: updated_at, notify: true, objectsSchema: siphon",
        );
        let notifying = fixture("default", "shop", &spec);
        let config = worker_config(&notifying, &validate(&notifying, &[]).unwrap());
        assert_eq!(
            config.notify,
            Some(NotifyConfig {
                channel: "siphon_default_shop".into(),
                deletes_table: "siphon.siphon_default_shop_deletes".into(),
            })
        );
        // A logical capture never has one.
        let logical = fixture("default", "shop", SPEC);
        assert_eq!(
            worker_config(&logical, &validate(&logical, &[]).unwrap()).notify,
            None
        );
    }

    #[test]
    fn suspend_scales_to_zero() {
        let o = build(&format!("{SPEC}suspend: true\n"));
        assert_eq!(o.deployment.spec.unwrap().replicas, Some(0));
    }

    #[test]
    fn credentials_stay_in_secrets() {
        let o = build(SPEC);
        let yaml = &o.config_map.data.unwrap()[names::WORKER_CONFIG_KEY];
        assert!(yaml.contains("passwordEnv: SIPHON_PG_PASSWORD"), "{yaml}");
        assert!(!yaml.contains("password:"), "no inline password: {yaml}");
        let pod = o.deployment.spec.unwrap().template.spec.unwrap();
        let env = pod.containers[0].env.clone().unwrap();
        let pw = env
            .iter()
            .find(|e| e.name == names::ENV_PG_PASSWORD)
            .unwrap();
        let sel = pw.value_from.clone().unwrap().secret_key_ref.unwrap();
        assert_eq!((sel.name.as_str(), sel.key.as_str()), ("pg", "password"));
    }

    #[test]
    fn the_pod_is_locked_down() {
        let o = build(SPEC);
        let pod = o.deployment.spec.unwrap().template.spec.unwrap();
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        // PodSecurity `restricted`: seccomp on the pod and the container.
        let runtime_default = Some("RuntimeDefault");
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            runtime_default
        );
        let psc = pod.security_context.clone().unwrap();
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            runtime_default
        );
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            pod.image_pull_secrets.as_ref().map(|s| s[0].name.as_str()),
            Some("regcred")
        );
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(
            o.service_account.automount_service_account_token,
            Some(false)
        );
        let rule = &o.role.rules.unwrap()[0];
        assert_eq!(
            rule.resource_names.as_deref(),
            Some(&["shop".to_string()][..])
        );
    }

    #[test]
    fn a_changed_spec_changes_the_hash() {
        let a = build(SPEC);
        let b = build(&SPEC.replace("topicPrefix: shop", "topicPrefix: shop2"));
        assert_ne!(a.config_hash, b.config_hash);
    }

    #[test]
    fn objects_are_owned_by_the_capture() {
        let o = build(SPEC);
        let owners = o.deployment.metadata.owner_references.unwrap();
        assert_eq!(owners[0].kind, "PostgresCapture");
        assert_eq!(owners[0].controller, Some(true));
    }
}
