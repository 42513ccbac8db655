//! Pod volumes, materialised as plain directories of the pod's sandbox.
//!
//! Every pod gets a sandbox directory `<state-dir>/pods/<namespace>_<name>_<uid>/`
//! holding `volumes/<volume-name>/` for each volume, `containers/<name>.pid`
//! and, when a service-account token is mounted, `kubeconfig`.
//!
//! Supported volume types: `configMap` and `secret` (all keys, or `items`
//! with `key`→`path` and `mode`; `defaultMode`; `optional`), `emptyDir`,
//! `downwardAPI` (fieldRef items), `projected` (serviceAccountToken via the
//! TokenRequest API, configMap, secret, downwardAPI: the
//! `kube-api-access-*` volume the ServiceAccount admission plugin injects)
//! and `hostPath` (the host path itself). Others (PVCs, ...) are refused, and
//! the pod waits in `ContainerCreating` with the reason in the message.
//!
//! **Mounts are rewritten, not mounted.** Without a container engine nothing
//! can be bind-mounted, so a process runs on the host file system with the
//! sandbox as working directory, and each `volumeMount` is honoured by
//! rewriting: every occurrence of the `mountPath` (at a path boundary, e.g.
//! `--config=/etc/app/config.yaml`) in the process's arguments, environment
//! values and `workingDir` is replaced by the materialised host directory
//! (plus `subPath`). Because configuration files name the paths of other
//! mounts (`spill_dir: /var/lib/app/spill`, `ca: /etc/app/tls/ca.crt`), the
//! same rewriting is applied to the text files of `configMap` volumes, with
//! the mounts of all the pod's containers (Secrets are written verbatim).
//! A program that opens a mount path it learns in any other way (a path
//! compiled into it) will not find its files.
//!
//! The service-account mount `/var/run/secrets/kubernetes.io/serviceaccount`
//! is rewritten like any other. Because kube-rs' in-cluster configuration
//! reads that fixed path, the supervisor also writes a per-pod
//! `kubeconfig` (server and CA of the cluster, `tokenFile` = the mounted
//! token, namespace = the pod's) and sets `KUBECONFIG` for the pod's
//! processes, so `kube::Client::try_default()` connects with the pod's own
//! ServiceAccount identity. If the ServiceAccount admission plugin did not
//! add the token volume, one is synthesised when `automountServiceAccountToken`
//! is not false.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume, VolumeProjection,
};

use crate::env::{Env, Refs, Sources};

/// Where Kubernetes mounts the service-account token, CA and namespace.
pub const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Name of the volume synthesised when a pod should have a token but the
/// admission plugin did not add one.
pub const SYNTHETIC_SA_VOLUME: &str = "siphon-kube-api-access";
/// Default lifetime the ServiceAccount admission plugin asks for.
pub const DEFAULT_TOKEN_SECONDS: i64 = 3607;

const DEFAULT_MODE: u32 = 0o644;

/// A volume mount of one container, resolved to a host directory or file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_path: String,
    pub host_path: PathBuf,
}

/// A file to write inside a volume directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    pub path: PathBuf,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// A service-account token the pod needs: audience ("" = the API server's)
/// and lifetime.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokenNeed {
    pub audience: String,
    pub expiration_seconds: i64,
}

/// Everything fetched from the API server that volumes are built from.
pub struct Materials<'a> {
    pub sources: &'a Sources,
    /// Tokens by audience.
    pub tokens: &'a BTreeMap<String, String>,
    /// PEM of the cluster CA.
    pub ca_pem: &'a [u8],
}

fn mode_of(mode: Option<i32>, default: Option<i32>) -> u32 {
    mode.or(default)
        .and_then(|m| u32::try_from(m).ok())
        .map_or(DEFAULT_MODE, |m| m & 0o777)
}

/// A relative path that stays inside its directory.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| p.to_path_buf())
}

/// The files of a configMap or secret volume (or projection): every key, or
/// only `items` with their paths and modes. `kind` and `name` are for
/// messages; `data` is `None` when the object does not exist.
pub fn key_files(
    kind: &str,
    name: &str,
    data: Option<&BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Vec<FileSpec>, String> {
    let Some(data) = data else {
        return if optional {
            Ok(Vec::new())
        } else {
            Err(format!("{kind} \"{name}\" not found"))
        };
    };
    let mut files = Vec::new();
    match items {
        None => {
            for (key, value) in data {
                if let Some(path) = safe_relative(key) {
                    files.push(FileSpec {
                        path,
                        data: value.clone(),
                        mode: mode_of(None, default_mode),
                    });
                }
            }
        }
        Some(items) => {
            for item in items {
                let Some(value) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(format!(
                        "configuration of {kind} \"{name}\" has no key {:?}",
                        item.key
                    ));
                };
                let path = safe_relative(&item.path)
                    .ok_or_else(|| format!("invalid path {:?} in {kind} {name}", item.path))?;
                files.push(FileSpec {
                    path,
                    data: value.clone(),
                    mode: mode_of(item.mode, default_mode),
                });
            }
        }
    }
    Ok(files)
}

fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
) -> Result<Vec<FileSpec>, String> {
    let mut files = Vec::new();
    for item in items {
        let Some(field) = &item.field_ref else {
            // resourceFieldRef: not supported, left out.
            continue;
        };
        let value = crate::env::field_ref(pod, &field.field_path).map_err(|e| e.to_string())?;
        let path = safe_relative(&item.path)
            .ok_or_else(|| format!("invalid downwardAPI path {:?}", item.path))?;
        files.push(FileSpec {
            path,
            data: value.into_bytes(),
            mode: mode_of(item.mode, default_mode),
        });
    }
    Ok(files)
}

fn projection_files(
    pod: &Pod,
    projection: &VolumeProjection,
    default_mode: Option<i32>,
    materials: &Materials<'_>,
) -> Result<Vec<FileSpec>, String> {
    if let Some(t) = &projection.service_account_token {
        let audience = t.audience.clone().unwrap_or_default();
        let token = materials
            .tokens
            .get(&audience)
            .ok_or_else(|| format!("no service account token for audience {audience:?}"))?;
        let path =
            safe_relative(&t.path).ok_or_else(|| format!("invalid token path {:?}", t.path))?;
        return Ok(vec![FileSpec {
            path,
            data: token.clone().into_bytes(),
            mode: mode_of(None, default_mode),
        }]);
    }
    if let Some(c) = &projection.config_map {
        return key_files(
            "configmap",
            &c.name,
            materials
                .sources
                .config_maps
                .get(&c.name)
                .and_then(Option::as_ref),
            c.items.as_deref(),
            default_mode,
            c.optional == Some(true),
        );
    }
    if let Some(s) = &projection.secret {
        return key_files(
            "secret",
            &s.name,
            materials
                .sources
                .secrets
                .get(&s.name)
                .and_then(Option::as_ref),
            s.items.as_deref(),
            default_mode,
            s.optional == Some(true),
        );
    }
    if let Some(d) = &projection.downward_api {
        return downward_files(pod, d.items.as_deref().unwrap_or_default(), default_mode);
    }
    Err("unsupported projected volume source".into())
}

/// What a volume becomes on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// A directory of the sandbox filled with these files.
    Files(Vec<FileSpec>),
    /// An empty directory of the sandbox.
    EmptyDir,
    /// A host path used as is.
    HostPath(PathBuf),
}

/// How one volume is materialised.
pub fn plan(pod: &Pod, volume: &Volume, materials: &Materials<'_>) -> Result<Plan, String> {
    let fail = |e: String| {
        format!(
            "MountVolume.SetUp failed for volume \"{}\" : {e}",
            volume.name
        )
    };
    if let Some(c) = &volume.config_map {
        let data = materials
            .sources
            .config_maps
            .get(&c.name)
            .and_then(Option::as_ref);
        return key_files(
            "configmap",
            &c.name,
            data,
            c.items.as_deref(),
            c.default_mode,
            c.optional == Some(true),
        )
        .map(Plan::Files)
        .map_err(fail);
    }
    if let Some(s) = &volume.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let data = materials
            .sources
            .secrets
            .get(&name)
            .and_then(Option::as_ref);
        return key_files(
            "secret",
            &name,
            data,
            s.items.as_deref(),
            s.default_mode,
            s.optional == Some(true),
        )
        .map(Plan::Files)
        .map_err(fail);
    }
    if volume.empty_dir.is_some() {
        return Ok(Plan::EmptyDir);
    }
    if let Some(h) = &volume.host_path {
        return Ok(Plan::HostPath(PathBuf::from(&h.path)));
    }
    if let Some(d) = &volume.downward_api {
        return downward_files(pod, d.items.as_deref().unwrap_or_default(), d.default_mode)
            .map(Plan::Files)
            .map_err(fail);
    }
    if let Some(p) = &volume.projected {
        let mut files = Vec::new();
        for projection in p.sources.iter().flatten() {
            files.extend(
                projection_files(pod, projection, p.default_mode, materials).map_err(fail)?,
            );
        }
        return Ok(Plan::Files(files));
    }
    Err(fail(
        "volume type not supported by the siphon node agent (configMap, secret, emptyDir, \
         downwardAPI, projected and hostPath are)"
            .into(),
    ))
}

/// The Secrets and ConfigMaps the pod's volumes refer to.
pub fn referenced(pod: &Pod) -> Refs {
    let mut refs = Refs::default();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(c) = &v.config_map {
            refs.config_maps.insert(c.name.clone());
        }
        if let Some(s) = &v.secret {
            refs.secrets.extend(s.secret_name.clone());
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &p.config_map {
                refs.config_maps.insert(c.name.clone());
            }
            if let Some(s) = &p.secret {
                refs.secrets.insert(s.name.clone());
            }
        }
    }
    refs
}

/// True when the pod should get a service-account token but none of its
/// volumes provides it at the standard mount path.
pub fn needs_synthetic_token(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let wants = spec.automount_service_account_token != Some(false)
        && spec
            .service_account_name
            .as_deref()
            .is_some_and(|n| !n.is_empty());
    let mounted = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .any(|m| m.mount_path.trim_end_matches('/') == SA_MOUNT_PATH);
    wants && !mounted
}

/// The service-account tokens the pod's volumes need.
pub fn token_needs(pod: &Pod) -> BTreeSet<TokenNeed> {
    let mut needs = BTreeSet::new();
    for p in pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .flat_map(|v| v.projected.iter())
        .flat_map(|p| p.sources.iter().flatten())
    {
        if let Some(t) = &p.service_account_token {
            needs.insert(TokenNeed {
                audience: t.audience.clone().unwrap_or_default(),
                expiration_seconds: t.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
            });
        }
    }
    if needs_synthetic_token(pod) {
        needs.insert(TokenNeed {
            audience: String::new(),
            expiration_seconds: DEFAULT_TOKEN_SECONDS,
        });
    }
    needs
}

/// Writes `data` to `path` atomically (temporary file, then rename).
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".siphon-tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

/// Creates or refreshes every volume of the pod under `volumes_dir`.
pub fn materialise(pod: &Pod, volumes_dir: &Path, materials: &Materials<'_>) -> Result<(), String> {
    let io = |e: std::io::Error| format!("writing volumes in {}: {e}", volumes_dir.display());
    std::fs::create_dir_all(volumes_dir).map_err(io)?;
    let all_mounts = pod_mounts(pod, volumes_dir);
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = volumes_dir.join(&volume.name);
        match plan(pod, volume, materials)? {
            Plan::Files(files) => {
                std::fs::create_dir_all(&dir).map_err(io)?;
                for mut f in files {
                    if volume.config_map.is_some() {
                        f.data = rewrite_text_file(f.data, &all_mounts);
                    }
                    write_atomic(&dir.join(&f.path), &f.data, f.mode).map_err(io)?;
                }
            }
            Plan::EmptyDir => std::fs::create_dir_all(&dir).map_err(io)?,
            Plan::HostPath(_) => {}
        }
    }
    if needs_synthetic_token(pod) {
        let dir = volumes_dir.join(SYNTHETIC_SA_VOLUME);
        let token = materials
            .tokens
            .get("")
            .ok_or("no service account token for the default audience")?;
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        write_atomic(&dir.join("token"), token.as_bytes(), DEFAULT_MODE).map_err(io)?;
        write_atomic(&dir.join("ca.crt"), materials.ca_pem, DEFAULT_MODE).map_err(io)?;
        write_atomic(&dir.join("namespace"), namespace.as_bytes(), DEFAULT_MODE).map_err(io)?;
    }
    Ok(())
}

/// The mounts of one container, resolved to host paths; `subPathExpr` is
/// expanded with the container's environment.
pub fn mounts(pod: &Pod, container: &Container, volumes_dir: &Path, env: &Env) -> Vec<Mount> {
    let volumes: Vec<&Volume> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .collect();
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some(volume) = volumes.iter().find(|v| v.name == m.name) else {
            continue;
        };
        let base = match &volume.host_path {
            Some(h) => PathBuf::from(&h.path),
            None => volumes_dir.join(&volume.name),
        };
        let sub = match (&m.sub_path, &m.sub_path_expr) {
            (Some(s), _) if !s.is_empty() => Some(s.clone()),
            (_, Some(e)) if !e.is_empty() => Some(env.expand(e)),
            _ => None,
        };
        let host_path = match sub.as_deref().and_then(safe_relative) {
            Some(rel) => base.join(rel),
            None => base,
        };
        out.push(Mount {
            mount_path: m.mount_path.trim_end_matches('/').to_owned(),
            host_path,
        });
    }
    if needs_synthetic_token(pod) {
        out.push(Mount {
            mount_path: SA_MOUNT_PATH.into(),
            host_path: volumes_dir.join(SYNTHETIC_SA_VOLUME),
        });
    }
    // Longest mount path first, so nested mounts win.
    out.sort_by_key(|m| std::cmp::Reverse(m.mount_path.len()));
    out.retain(|m| !m.mount_path.is_empty());
    out
}

/// The mounts of all the pod's containers (for a mount path used by several
/// containers, the first one's), longest mount path first.
pub fn pod_mounts(pod: &Pod, volumes_dir: &Path) -> Vec<Mount> {
    let mut out: Vec<Mount> = Vec::new();
    for c in pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
    {
        for m in mounts(pod, c, volumes_dir, &Env::default()) {
            if !out.iter().any(|o| o.mount_path == m.mount_path) {
                out.push(m);
            }
        }
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.mount_path.len()));
    out
}

/// Rewrites mount paths inside a text file (configuration files name the
/// paths of other mounts); binary content is left alone.
pub fn rewrite_text_file(data: Vec<u8>, mounts: &[Mount]) -> Vec<u8> {
    match String::from_utf8(data) {
        Ok(text) => rewrite(&text, mounts).into_bytes(),
        Err(e) => e.into_bytes(),
    }
}

/// Creates the directories `subPath` mounts of empty dirs point to.
pub fn prepare_mounts(mounts: &[Mount], volumes_dir: &Path) -> std::io::Result<()> {
    for m in mounts {
        if m.host_path.starts_with(volumes_dir) && !m.host_path.exists() {
            std::fs::create_dir_all(&m.host_path)?;
        }
    }
    Ok(())
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '~')
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '~')
}

/// Replaces each mount path occurring in `s` at a path boundary by its host
/// path: `--config=/etc/app/x.yaml` with `/etc/app` mounted becomes
/// `--config=<host>/x.yaml`; `/etc/application` is left alone.
pub fn rewrite(s: &str, mounts: &[Mount]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut prev: Option<char> = None;
    'outer: while i < s.len() {
        if prev.is_none_or(|c| !is_path_char(c)) {
            for m in mounts {
                let Some(rest) = s[i..].strip_prefix(m.mount_path.as_str()) else {
                    continue;
                };
                if rest.chars().next().is_none_or(|c| !is_name_char(c)) {
                    out.push_str(&m.host_path.to_string_lossy());
                    i += m.mount_path.len();
                    prev = m.mount_path.chars().last();
                    continue 'outer;
                }
            }
        }
        let Some(c) = s[i..].chars().next() else {
            break;
        };
        out.push(c);
        prev = Some(c);
        i += c.len_utf8();
    }
    out
}

/// The host directory mounted at the service-account path, if any.
pub fn service_account_dir(mounts: &[Mount]) -> Option<&Path> {
    mounts
        .iter()
        .find(|m| m.mount_path == SA_MOUNT_PATH)
        .map(|m| m.host_path.as_path())
}

/// A kubeconfig for a pod's processes: the cluster's server and CA, the
/// mounted token file (re-read by clients when it is refreshed) and the
/// pod's namespace as default.
pub fn kubeconfig(server: &str, ca_pem_base64: &str, token_file: &Path, namespace: &str) -> String {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {
            "server": server,
            "certificate-authority-data": ca_pem_base64,
        }}],
        "users": [{"name": "pod", "user": {"tokenFile": token_file.to_string_lossy()}}],
        "contexts": [{"name": "pod", "context": {
            "cluster": "cluster", "user": "pod", "namespace": namespace,
        }}],
        "current-context": "pod",
    });
    // JSON is YAML: any kubeconfig reader accepts it.
    format!("{doc:#}\n")
}

/// Writes a file readable only by the agent's user.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    write_atomic(path, text.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapProjection, PodSpec, ProjectedVolumeSource, SecretVolumeSource,
        ServiceAccountTokenProjection, VolumeMount,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn data() -> BTreeMap<String, Vec<u8>> {
        [
            ("user".to_owned(), b"admin".to_vec()),
            ("password".to_owned(), b"hunter2".to_vec()),
        ]
        .into()
    }

    #[test]
    fn secret_items_map_keys_to_paths_and_modes() {
        let items = vec![
            KeyToPath {
                key: "password".into(),
                path: "db/pass".into(),
                mode: Some(0o400),
            },
            KeyToPath {
                key: "user".into(),
                path: "user.txt".into(),
                mode: None,
            },
        ];
        let d = data();
        let files = key_files(
            "secret",
            "creds",
            Some(&d),
            Some(&items),
            Some(0o640),
            false,
        )
        .unwrap();
        assert_eq!(
            files,
            vec![
                FileSpec {
                    path: "db/pass".into(),
                    data: b"hunter2".to_vec(),
                    mode: 0o400
                },
                FileSpec {
                    path: "user.txt".into(),
                    data: b"admin".to_vec(),
                    mode: 0o640
                },
            ]
        );
        // All keys, default mode 0644.
        let all = key_files("secret", "creds", Some(&d), None, None, false).unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|f| f.mode == 0o644));
        // Missing key, missing object, optional.
        let bad = vec![KeyToPath {
            key: "nope".into(),
            path: "x".into(),
            mode: None,
        }];
        assert!(key_files("secret", "creds", Some(&d), Some(&bad), None, false).is_err());
        assert!(
            key_files("secret", "creds", Some(&d), Some(&bad), None, true)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            key_files("secret", "creds", None, None, None, false).unwrap_err(),
            "secret \"creds\" not found"
        );
        assert!(
            key_files("secret", "creds", None, None, None, true)
                .unwrap()
                .is_empty()
        );
        // Escaping paths are refused.
        let evil = vec![KeyToPath {
            key: "user".into(),
            path: "../x".into(),
            mode: None,
        }];
        assert!(key_files("secret", "creds", Some(&d), Some(&evil), None, false).is_err());
    }

    fn mounts_of(list: &[(&str, &str)]) -> Vec<Mount> {
        let mut m: Vec<Mount> = list
            .iter()
            .map(|(p, h)| Mount {
                mount_path: (*p).into(),
                host_path: (*h).into(),
            })
            .collect();
        m.sort_by_key(|m| std::cmp::Reverse(m.mount_path.len()));
        m
    }

    #[test]
    fn rewrite_replaces_mount_paths_at_boundaries() {
        let m = mounts_of(&[
            ("/etc/app", "/sb/volumes/config"),
            ("/etc/app/tls", "/sb/volumes/tls"),
            ("/data", "/sb/volumes/data"),
        ]);
        assert_eq!(rewrite("/etc/app", &m), "/sb/volumes/config");
        assert_eq!(
            rewrite("--config=/etc/app/config.yaml", &m),
            "--config=/sb/volumes/config/config.yaml"
        );
        assert_eq!(rewrite("/etc/app/tls/ca.crt", &m), "/sb/volumes/tls/ca.crt");
        assert_eq!(rewrite("/etc/application", &m), "/etc/application");
        assert_eq!(rewrite("/var/etc/app", &m), "/var/etc/app");
        assert_eq!(
            rewrite("cat /data/a /data/b; ls /database", &m),
            "cat /sb/volumes/data/a /sb/volumes/data/b; ls /database"
        );
        assert_eq!(rewrite("a:/data:b", &m), "a:/sb/volumes/data:b");
        assert_eq!(rewrite("ünïcode /data", &m), "ünïcode /sb/volumes/data");
    }

    fn pod_with(volumes: Vec<Volume>, mounts: Vec<VolumeMount>, sa: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                service_account_name: sa.map(str::to_owned),
                volumes: Some(volumes),
                containers: vec![Container {
                    name: "c".into(),
                    volume_mounts: Some(mounts),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn projected_sa_volume() -> Volume {
        Volume {
            name: "kube-api-access-x".into(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o644),
                sources: Some(vec![
                    VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            path: "token".into(),
                            expiration_seconds: Some(3607),
                            audience: None,
                        }),
                        ..VolumeProjection::default()
                    },
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "kube-root-ca.crt".into(),
                            items: Some(vec![KeyToPath {
                                key: "ca.crt".into(),
                                path: "ca.crt".into(),
                                mode: None,
                            }]),
                            optional: None,
                        }),
                        ..VolumeProjection::default()
                    },
                ]),
            }),
            ..Volume::default()
        }
    }

    #[test]
    fn projected_service_account_volume() {
        let pod = pod_with(
            vec![projected_sa_volume()],
            vec![VolumeMount {
                name: "kube-api-access-x".into(),
                mount_path: SA_MOUNT_PATH.into(),
                ..VolumeMount::default()
            }],
            Some("default"),
        );
        assert!(!needs_synthetic_token(&pod));
        assert_eq!(
            token_needs(&pod),
            [TokenNeed {
                audience: String::new(),
                expiration_seconds: 3607
            }]
            .into()
        );
        let mut sources = Sources::default();
        sources.config_maps.insert(
            "kube-root-ca.crt".into(),
            Some([("ca.crt".to_owned(), b"PEM".to_vec())].into()),
        );
        let tokens = [(String::new(), "tok".to_owned())].into();
        let materials = Materials {
            sources: &sources,
            tokens: &tokens,
            ca_pem: b"",
        };
        let Plan::Files(files) = plan(&pod, &projected_sa_volume(), &materials).unwrap() else {
            panic!("expected files");
        };
        assert_eq!(files[0].path, Path::new("token"));
        assert_eq!(files[0].data, b"tok");
        assert_eq!(files[1].path, Path::new("ca.crt"));
        let m = mounts(
            &pod,
            &pod.spec.as_ref().unwrap().containers[0],
            Path::new("/sb/volumes"),
            &Env::default(),
        );
        assert_eq!(
            service_account_dir(&m),
            Some(Path::new("/sb/volumes/kube-api-access-x"))
        );
    }

    #[test]
    fn synthetic_token_and_sub_paths() {
        let secret = Volume {
            name: "creds".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("db".into()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        };
        let pod = pod_with(
            vec![secret],
            vec![VolumeMount {
                name: "creds".into(),
                mount_path: "/etc/db/".into(),
                sub_path: Some("inner".into()),
                ..VolumeMount::default()
            }],
            Some("default"),
        );
        assert!(needs_synthetic_token(&pod));
        assert_eq!(
            referenced(&pod).secrets,
            ["db".to_owned()].into_iter().collect()
        );
        let m = mounts(
            &pod,
            &pod.spec.as_ref().unwrap().containers[0],
            Path::new("/sb/volumes"),
            &Env::default(),
        );
        assert_eq!(
            m,
            vec![
                Mount {
                    mount_path: SA_MOUNT_PATH.into(),
                    host_path: "/sb/volumes/siphon-kube-api-access".into()
                },
                Mount {
                    mount_path: "/etc/db".into(),
                    host_path: "/sb/volumes/creds/inner".into()
                },
            ]
        );
        let mut no_sa = pod.clone();
        no_sa.spec.as_mut().unwrap().automount_service_account_token = Some(false);
        assert!(!needs_synthetic_token(&no_sa));
    }

    #[test]
    fn config_map_files_name_host_paths() {
        let volumes = vec![
            Volume {
                name: "config".into(),
                config_map: Some(k8s_openapi::api::core::v1::ConfigMapVolumeSource {
                    name: "cfg".into(),
                    ..Default::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "spill".into(),
                empty_dir: Some(Default::default()),
                ..Volume::default()
            },
        ];
        let pod = pod_with(
            volumes,
            vec![
                VolumeMount {
                    name: "config".into(),
                    mount_path: "/etc/app".into(),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: "spill".into(),
                    mount_path: "/var/lib/app/spill".into(),
                    ..VolumeMount::default()
                },
            ],
            None,
        );
        let dir = std::env::temp_dir().join(format!("siphon-volumes-test-{}", std::process::id()));
        let mut sources = Sources::default();
        sources.config_maps.insert(
            "cfg".into(),
            Some(
                [
                    (
                        "config.yaml".to_owned(),
                        b"spill_dir: /var/lib/app/spill\nself: \"/etc/app/x\"\n".to_vec(),
                    ),
                    ("blob".to_owned(), vec![0xff, 0xfe, b'/']),
                ]
                .into(),
            ),
        );
        let tokens = BTreeMap::new();
        let materials = Materials {
            sources: &sources,
            tokens: &tokens,
            ca_pem: b"",
        };
        materialise(&pod, &dir, &materials).unwrap();
        let text = std::fs::read_to_string(dir.join("config/config.yaml")).unwrap();
        assert_eq!(
            text,
            format!(
                "spill_dir: {}\nself: \"{}/x\"\n",
                dir.join("spill").display(),
                dir.join("config").display()
            )
        );
        assert_eq!(
            std::fs::read(dir.join("config/blob")).unwrap(),
            vec![0xff, 0xfe, b'/']
        );
        assert!(dir.join("spill").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsupported_volume_is_an_error() {
        let v = Volume {
            name: "data".into(),
            ..Volume::default()
        };
        let pod = pod_with(vec![v.clone()], vec![], None);
        let sources = Sources::default();
        let tokens = BTreeMap::new();
        let materials = Materials {
            sources: &sources,
            tokens: &tokens,
            ca_pem: b"",
        };
        let err = plan(&pod, &v, &materials).unwrap_err();
        assert!(
            err.starts_with("MountVolume.SetUp failed for volume \"data\""),
            "{err}"
        );
    }

    #[test]
    fn kubeconfig_is_loadable() {
        let text = kubeconfig(
            "https://127.0.0.1:6443",
            "Q0E=",
            Path::new("/sb/token"),
            "ns",
        );
        let parsed: kube::config::Kubeconfig = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("pod"));
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.token_file.as_deref(), Some("/sb/token"));
    }
}
