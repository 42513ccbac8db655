//! Environment of a container process, resolved the way the kubelet does it.
//!
//! The functions here are pure: the supervisor fetches the Secrets and
//! ConfigMaps a container refers to ([`referenced`]) into a [`Sources`], then
//! [`resolve`] builds the environment:
//!
//! 1. the base environment ([`base`]): `PATH`, `HOME`, `HOSTNAME` and the
//!    `KUBERNETES_SERVICE_*` / `KUBERNETES_PORT*` variables pointing at the
//!    API server on the loopback (what a real cluster's `kubernetes` Service
//!    injects);
//! 2. `envFrom` sources in order (Secret or ConfigMap, with `prefix`; keys
//!    that are not valid variable names are skipped, like the kubelet does);
//! 3. `env` entries in order: `value` (with `$(VAR)` expansion against what
//!    is defined so far), `valueFrom.secretKeyRef`, `configMapKeyRef` and
//!    `fieldRef`.
//!
//! A later definition of a name replaces an earlier one. A missing,
//! non-optional Secret, ConfigMap or key is an [`EnvError`], which the
//! supervisor reports as `CreateContainerConfigError` and retries.
//!
//! [`expand`] implements Kubernetes' `$(VAR)` syntax, used for `env` values
//! and for `command`/`args`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, EnvFromSource, EnvVar, Pod};

/// The Secrets and ConfigMaps of one namespace that a pod refers to, as
/// fetched from the API server; `None` means "not found".
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub secrets: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    pub config_maps: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

/// Names of the Secrets and ConfigMaps something refers to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refs {
    pub secrets: BTreeSet<String>,
    pub config_maps: BTreeSet<String>,
}

/// Why a container's environment cannot be built (the message is the one the
/// kubelet puts in the `CreateContainerConfigError` waiting state).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("unsupported fieldRef path {0:?}")]
    UnsupportedField(String),
    #[error("environment variable {0}: resourceFieldRef is not supported by the siphon node agent")]
    UnsupportedResourceField(String),
}

/// Secrets and ConfigMaps a container's `env` and `envFrom` refer to.
pub fn referenced(container: &Container) -> Refs {
    let mut refs = Refs::default();
    for from in container.env_from.iter().flatten() {
        if let Some(s) = &from.secret_ref {
            refs.secrets.insert(s.name.clone());
        }
        if let Some(c) = &from.config_map_ref {
            refs.config_maps.insert(c.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(s) = &from.secret_key_ref {
            refs.secrets.insert(s.name.clone());
        }
        if let Some(c) = &from.config_map_key_ref {
            refs.config_maps.insert(c.name.clone());
        }
    }
    refs
}

/// Kubernetes `$(VAR)` expansion: `$(NAME)` becomes the value of NAME when
/// `lookup` knows it and stays as written otherwise; `$$` is an escaped `$`;
/// any other `$` is literal.
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(end) => {
                    let name = &tail[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    // Unterminated reference: literal.
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// An ordered environment where a later definition replaces an earlier one
/// in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let (name, value) = (name.into(), value.into());
        match self.vars.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name, value)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// Applies `f` to every value (used to rewrite volume mount paths).
    pub fn map_values(&mut self, f: impl Fn(&str) -> String) {
        for (_, v) in &mut self.vars {
            *v = f(v);
        }
    }

    /// `$(VAR)` expansion of `s` against this environment.
    pub fn expand(&self, s: &str) -> String {
        expand(s, |name| self.get(name))
    }
}

/// Where the API server is, as seen from a pod.
#[derive(Clone, Debug)]
pub struct ApiEndpoint {
    pub host: String,
    pub port: u16,
}

/// The environment every container starts from.
pub fn base(path: &str, home: &str, hostname: &str, api: &ApiEndpoint) -> Env {
    let mut env = Env::default();
    env.set("PATH", path);
    env.set("HOME", home);
    env.set("HOSTNAME", hostname);
    let (host, port) = (&api.host, api.port);
    env.set("KUBERNETES_SERVICE_HOST", host.as_str());
    env.set("KUBERNETES_SERVICE_PORT", port.to_string());
    env.set("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string());
    env.set("KUBERNETES_PORT", format!("tcp://{host}:{port}"));
    env.set(
        format!("KUBERNETES_PORT_{port}_TCP"),
        format!("tcp://{host}:{port}"),
    );
    env.set(format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp");
    env.set(format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string());
    env.set(format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.as_str());
    env
}

/// A valid environment variable name (the kubelet's `IsEnvVarName`).
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Resolves a `fieldRef` path against the pod (status.podIP and hostIP are
/// the loopback address every pod shares).
pub fn field_ref(pod: &Pod, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let subscript = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)?
            .strip_suffix("']")
            .map(str::to_owned)
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => {
            crate::status::pod_ip(meta.uid.as_deref().unwrap_or_default())
        }
        "status.hostIP" | "status.hostIPs" => crate::status::POD_IP.to_owned(),
        _ => {
            if let Some(key) = subscript("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key).cloned())
                    .unwrap_or_default()
            } else if let Some(key) = subscript("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(&key).cloned())
                    .unwrap_or_default()
            } else {
                return Err(EnvError::UnsupportedField(path.to_owned()));
            }
        }
    };
    Ok(value)
}

fn env_from(env: &mut Env, from: &EnvFromSource, sources: &Sources) -> Result<(), EnvError> {
    let prefix = from.prefix.as_deref().unwrap_or_default();
    let data = if let Some(s) = &from.secret_ref {
        match sources.secrets.get(&s.name).and_then(Option::as_ref) {
            Some(data) => data,
            None if s.optional == Some(true) => return Ok(()),
            None => return Err(EnvError::SecretNotFound(s.name.clone())),
        }
    } else if let Some(c) = &from.config_map_ref {
        match sources.config_maps.get(&c.name).and_then(Option::as_ref) {
            Some(data) => data,
            None if c.optional == Some(true) => return Ok(()),
            None => return Err(EnvError::ConfigMapNotFound(c.name.clone())),
        }
    } else {
        return Ok(());
    };
    for (key, value) in data {
        let name = format!("{prefix}{key}");
        if is_env_name(&name) {
            env.set(name, text(value));
        }
    }
    Ok(())
}

fn env_var(env: &mut Env, var: &EnvVar, pod: &Pod, sources: &Sources) -> Result<(), EnvError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let Some(from) = &var.value_from else {
        let value = env.expand(var.value.as_deref().unwrap_or_default());
        env.set(var.name.clone(), value);
        return Ok(());
    };
    if let Some(sel) = &from.secret_key_ref {
        let optional = sel.optional == Some(true);
        match sources.secrets.get(&sel.name).and_then(Option::as_ref) {
            None if optional => {}
            None => return Err(EnvError::SecretNotFound(sel.name.clone())),
            Some(data) => match data.get(&sel.key) {
                Some(v) => env.set(var.name.clone(), text(v)),
                None if optional => {}
                None => {
                    return Err(EnvError::SecretKeyNotFound {
                        namespace,
                        name: sel.name.clone(),
                        key: sel.key.clone(),
                    });
                }
            },
        }
    } else if let Some(sel) = &from.config_map_key_ref {
        let optional = sel.optional == Some(true);
        match sources.config_maps.get(&sel.name).and_then(Option::as_ref) {
            None if optional => {}
            None => return Err(EnvError::ConfigMapNotFound(sel.name.clone())),
            Some(data) => match data.get(&sel.key) {
                Some(v) => env.set(var.name.clone(), text(v)),
                None if optional => {}
                None => {
                    return Err(EnvError::ConfigMapKeyNotFound {
                        namespace,
                        name: sel.name.clone(),
                        key: sel.key.clone(),
                    });
                }
            },
        }
    } else if let Some(field) = &from.field_ref {
        env.set(var.name.clone(), field_ref(pod, &field.field_path)?);
    } else if from.resource_field_ref.is_some() {
        return Err(EnvError::UnsupportedResourceField(var.name.clone()));
    }
    Ok(())
}

/// The full environment of `container`, starting from `base`.
pub fn resolve(
    pod: &Pod,
    container: &Container,
    sources: &Sources,
    base: Env,
) -> Result<Env, EnvError> {
    let mut env = base;
    for from in container.env_from.iter().flatten() {
        env_from(&mut env, from, sources)?;
    }
    for var in container.env.iter().flatten() {
        env_var(&mut env, var, pod, sources)?;
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvVarSource, ObjectFieldSelector,
        SecretEnvSource, SecretKeySelector,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn lookup(name: &str) -> Option<&'static str> {
        match name {
            "FOO" => Some("foo"),
            "EMPTY" => Some(""),
            _ => None,
        }
    }

    #[test]
    fn expand_follows_kubernetes_rules() {
        assert_eq!(expand("$(FOO)", lookup), "foo");
        assert_eq!(expand("a-$(FOO)-b", lookup), "a-foo-b");
        assert_eq!(expand("$(FOO)$(FOO)", lookup), "foofoo");
        assert_eq!(expand("$(MISSING)", lookup), "$(MISSING)");
        assert_eq!(expand("x$(EMPTY)y", lookup), "xy");
        assert_eq!(expand("$$(FOO)", lookup), "$(FOO)");
        assert_eq!(expand("$$", lookup), "$");
        assert_eq!(expand("$FOO", lookup), "$FOO");
        assert_eq!(expand("cost: 5$", lookup), "cost: 5$");
        assert_eq!(expand("$(FOO", lookup), "$(FOO");
        assert_eq!(expand("$()", lookup), "$()");
        assert_eq!(expand("héllo $(FOO) wörld", lookup), "héllo foo wörld");
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_owned(), "web".to_owned())].into()),
                annotations: Some([("team".to_owned(), "data".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.secrets.insert(
            "creds".into(),
            Some(
                [
                    ("password".to_owned(), b"hunter2".to_vec()),
                    ("USER".to_owned(), b"admin".to_vec()),
                    ("not a name".to_owned(), b"x".to_vec()),
                ]
                .into(),
            ),
        );
        s.secrets.insert("gone".into(), None);
        s.config_maps.insert(
            "settings".into(),
            Some([("LEVEL".to_owned(), b"debug".to_vec())].into()),
        );
        s
    }

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn from(name: &str, source: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(source),
        }
    }

    #[test]
    fn resolves_all_sources_in_order() {
        let container = Container {
            name: "app".into(),
            env_from: Some(vec![
                EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: "creds".into(),
                        optional: None,
                    }),
                    prefix: Some("DB_".into()),
                    ..EnvFromSource::default()
                },
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "settings".into(),
                        optional: None,
                    }),
                    ..EnvFromSource::default()
                },
            ]),
            env: Some(vec![
                var("GREETING", "hello $(DB_USER) at $(LEVEL)"),
                from(
                    "PASSWORD",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "creds".into(),
                            key: "password".into(),
                            optional: None,
                        }),
                        ..EnvVarSource::default()
                    },
                ),
                from(
                    "LEVEL",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "settings".into(),
                            key: "LEVEL".into(),
                            optional: None,
                        }),
                        ..EnvVarSource::default()
                    },
                ),
                from(
                    "POD",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                            api_version: None,
                        }),
                        ..EnvVarSource::default()
                    },
                ),
                from(
                    "APP",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.labels['app']".into(),
                            api_version: None,
                        }),
                        ..EnvVarSource::default()
                    },
                ),
                from(
                    "OPTIONAL",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "gone".into(),
                            key: "k".into(),
                            optional: Some(true),
                        }),
                        ..EnvVarSource::default()
                    },
                ),
                var("PATH", "/override"),
            ]),
            ..Container::default()
        };
        let api = ApiEndpoint {
            host: "127.0.0.1".into(),
            port: 16443,
        };
        let env = resolve(
            &pod(),
            &container,
            &sources(),
            base("/bin", "/tmp/x", "web-1", &api),
        )
        .unwrap();
        assert_eq!(env.get("DB_password"), Some("hunter2"));
        assert_eq!(env.get("DB_USER"), Some("admin"));
        assert_eq!(env.get("DB_not a name"), None);
        assert_eq!(env.get("GREETING"), Some("hello admin at debug"));
        assert_eq!(env.get("PASSWORD"), Some("hunter2"));
        assert_eq!(env.get("POD"), Some("web-1"));
        assert_eq!(env.get("APP"), Some("web"));
        assert_eq!(env.get("OPTIONAL"), None);
        assert_eq!(env.get("KUBERNETES_SERVICE_HOST"), Some("127.0.0.1"));
        assert_eq!(env.get("KUBERNETES_SERVICE_PORT"), Some("16443"));
        // Replaced in place: PATH keeps its first position.
        assert_eq!(env.vars()[0], ("PATH".to_owned(), "/override".to_owned()));
        assert_eq!(
            referenced(&container),
            Refs {
                secrets: ["creds".to_owned(), "gone".to_owned()].into(),
                config_maps: ["settings".to_owned()].into(),
            }
        );
    }

    #[test]
    fn missing_sources_are_config_errors() {
        let api = ApiEndpoint {
            host: "127.0.0.1".into(),
            port: 1,
        };
        let secret = |name: &str, key: &str| Container {
            env: Some(vec![from(
                "X",
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: name.into(),
                        key: key.into(),
                        optional: None,
                    }),
                    ..EnvVarSource::default()
                },
            )]),
            ..Container::default()
        };
        let run = |c: &Container| resolve(&pod(), c, &sources(), base("", "", "", &api));
        assert_eq!(
            run(&secret("gone", "k")).unwrap_err().to_string(),
            "secret \"gone\" not found"
        );
        assert_eq!(
            run(&secret("unknown", "k")).unwrap_err(),
            EnvError::SecretNotFound("unknown".into())
        );
        assert_eq!(
            run(&secret("creds", "nope")).unwrap_err().to_string(),
            "couldn't find key nope in Secret shop/creds"
        );
        let cm = Container {
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "absent".into(),
                    optional: Some(true),
                }),
                ..EnvFromSource::default()
            }]),
            ..Container::default()
        };
        assert!(run(&cm).is_ok());
    }

    #[test]
    fn field_refs() {
        let p = pod();
        assert_eq!(field_ref(&p, "metadata.namespace").unwrap(), "shop");
        assert_eq!(field_ref(&p, "metadata.uid").unwrap(), "u-1");
        assert!(field_ref(&p, "status.podIP").unwrap().starts_with("127."));
        assert_eq!(
            field_ref(&p, "metadata.annotations['team']").unwrap(),
            "data"
        );
        assert_eq!(field_ref(&p, "metadata.labels['none']").unwrap(), "");
        assert!(field_ref(&p, "spec.bogus").is_err());
    }
}
