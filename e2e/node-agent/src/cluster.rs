//! The connection to the API server, from the agent's kubeconfig.
//!
//! Besides the client, the agent needs what a pod would learn from the
//! `kubernetes` Service and its service-account mount: the server URL, its
//! loopback host and port (for `KUBERNETES_SERVICE_HOST`/`PORT`) and the
//! cluster CA (for pod kubeconfigs and synthesised `ca.crt` files).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::env::ApiEndpoint;

/// The API server and how to reach it.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    /// `https://127.0.0.1:16443`
    pub server: String,
    pub endpoint: ApiEndpoint,
    /// PEM of the cluster CA (empty if the kubeconfig has none).
    pub ca_pem: Vec<u8>,
    /// The API server's `gitVersion`, reported as the kubelet version.
    pub version: String,
}

/// Reads the CA of the current context's cluster: inline data or a file.
fn ca_pem(kubeconfig: &Kubeconfig, cluster_name: &str, base_dir: &Path) -> Result<Vec<u8>> {
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| anyhow!("kubeconfig has no cluster {cluster_name:?}"))?;
    if let Some(data) = &cluster.certificate_authority_data {
        return STANDARD
            .decode(data.trim())
            .context("decoding certificate-authority-data");
    }
    if let Some(file) = &cluster.certificate_authority {
        let path = base_dir.join(file);
        return std::fs::read(&path).with_context(|| format!("reading {}", path.display()));
    }
    Ok(Vec::new())
}

/// Connects with the kubeconfig at `path`, waiting (and logging) until the
/// API server answers.
pub async fn connect(path: &Path) -> Result<Cluster> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let context_name = kubeconfig
        .current_context
        .clone()
        .ok_or_else(|| anyhow!("kubeconfig {} has no current-context", path.display()))?;
    let cluster_name = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .ok_or_else(|| anyhow!("kubeconfig has no context {context_name:?}"))?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let ca_pem = ca_pem(&kubeconfig, &cluster_name, base_dir)?;

    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading kubeconfig")?;
    let uri = config.cluster_url.clone();
    let server = uri.to_string().trim_end_matches('/').to_owned();
    let endpoint = ApiEndpoint {
        host: uri.host().unwrap_or("127.0.0.1").to_owned(),
        port: uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("http") {
                80
            } else {
                443
            }),
    };
    let client = Client::try_from(config).context("building the API client")?;

    let mut delay = Duration::from_millis(500);
    let version = loop {
        match client.apiserver_version().await {
            Ok(info) => break info.git_version,
            Err(e) => {
                tracing::warn!(server = %server, error = %e, "api server not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    tracing::info!(server = %server, version = %version, "connected to the api server");
    Ok(Cluster {
        client,
        server,
        endpoint,
        ca_pem,
        version,
    })
}

impl Cluster {
    /// The CA as `certificate-authority-data`.
    pub fn ca_base64(&self) -> String {
        STANDARD.encode(&self.ca_pem)
    }
}

/// True if `error` is an API error response with this HTTP status code.
pub fn has_code(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}
