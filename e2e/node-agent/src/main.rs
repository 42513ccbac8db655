//! `siphon-node-agent`: a stand-in kubelet for Siphon's local end-to-end
//! stack. It registers a Node and keeps it Ready ([`node`]), and runs the pods
//! the scheduler binds to it as local processes ([`pods`]), so an operator
//! running against the local control plane cannot tell it is not on a real
//! cluster (within the limits documented in each module).
//!
//! Usage (what `e2e/stack/stack.sh` runs):
//!
//! ```text
//! siphon-node-agent --kubeconfig .stack/controlplane/kubeconfig --node-name siphon-node \
//!     --state-dir .stack/node --log-dir .stack/logs/pods --image-map siphon=$PWD/target/debug
//! ```
//!
//! What a real kubelet does and this agent does not (known limitations):
//!
//! * no isolation: containers are host processes of the agent's user, with
//!   the host's file system, network and PID namespace; `resources`,
//!   `securityContext`, image pull policies and lifecycle hooks are ignored;
//! * one network: every pod's IP is 127.0.0.1, so two pods listening on the
//!   same port collide (give them distinct ports); there is no kube-proxy and
//!   no cluster DNS, so Service IPs and `*.svc` names do not resolve, and only
//!   the `kubernetes` service environment variables are injected;
//! * volumes are directories of the pod's sandbox and mount paths are
//!   *rewritten* in arguments, environment and `workingDir`, not mounted (see
//!   [`volumes`]); a pod's processes use the API through a per-pod
//!   `KUBECONFIG` carrying their ServiceAccount token;
//! * no kubelet API: `kubectl logs/exec/port-forward` do not work; container
//!   output is in `--log-dir` files; no Events are emitted;
//! * a container's image cannot be changed in place (the running process is
//!   kept), and ephemeral containers are not supported.
//!
//! This file only parses flags and wires the parts together.

mod cluster;
mod env;
mod node;
mod pods;
mod probes;
mod process;
mod status;
mod volumes;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::process::{ImageMap, ImageMapping};

/// Runs the pods bound to one Node as local processes.
#[derive(Debug, Parser)]
#[command(name = "siphon-node-agent", version, about, long_about = None)]
struct Cli {
    /// Kubeconfig of the API server (the agent needs node, pod, lease,
    /// secret, configmap and token-request rights).
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    kubeconfig: PathBuf,

    /// Name of the Node to register.
    #[arg(long, default_value = "siphon-node")]
    node_name: String,

    /// Directory for pod sandboxes (`pods/<namespace>_<name>_<uid>/`).
    #[arg(long, default_value = ".stack/node", value_name = "DIR")]
    state_dir: PathBuf,

    /// Directory for container logs (`<namespace>_<pod>_<container>.log`).
    #[arg(long, default_value = ".stack/logs/pods", value_name = "DIR")]
    log_dir: PathBuf,

    /// Maps images to local executables: IMAGE_PREFIX=DIR looks the
    /// container's command (or the image's last path component) up in DIR;
    /// IMAGE_PREFIX=FILE runs FILE. Repeatable. Unmapped images run
    /// `command[0]` from the host's PATH.
    #[arg(long = "image-map", value_name = "IMAGE_PREFIX=PATH_OR_DIR")]
    image_map: Vec<ImageMapping>,

    /// First container restart delay; doubles on each restart up to 5 min.
    /// (The kubelet uses 10s; a shorter base keeps tests fast.)
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    restart_backoff: Duration,
}

/// Parses `500ms`, `2s`, `1m` or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 500ms, 2s, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Creates `dir` and returns it absolute (processes run in other directories).
fn absolute_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    dir.canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    let state_dir = absolute_dir(&cli.state_dir)?;
    let log_dir = absolute_dir(&cli.log_dir)?;
    for m in &cli.image_map {
        if !m.path.exists() {
            tracing::warn!(prefix = %m.prefix, path = %m.path.display(), "image map target does not exist (yet)");
        }
    }
    tracing::info!(
        node = %cli.node_name,
        state_dir = %state_dir.display(),
        log_dir = %log_dir.display(),
        images = ?cli.image_map.iter().map(|m| format!("{}={}", m.prefix, m.path.display())).collect::<Vec<_>>(),
        "starting node agent"
    );

    let cluster = cluster::connect(&cli.kubeconfig).await?;
    let mut keeper = node::NodeKeeper::new(&cluster, &cli.node_name);
    keeper.register().await.context("registering the node")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let heartbeat = tokio::spawn(keeper.run(stop_rx.clone()));
    let config = pods::Config {
        node_name: cli.node_name.clone(),
        state_dir,
        log_dir,
        image_map: Arc::new(ImageMap::new(cli.image_map)),
        restart_backoff: cli.restart_backoff,
    };
    let runner = tokio::spawn(pods::run(cluster, config, stop_rx));

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM; shutting down"),
        _ = int.recv() => tracing::info!("received SIGINT; shutting down"),
    }
    let _ = stop_tx.send(true);
    match runner.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "pod runner failed"),
        Err(e) => tracing::error!(error = %e, "pod runner panicked"),
    }
    heartbeat.abort();
    tracing::info!("node agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("2h").is_err());
    }

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "siphon-node-agent",
            "--kubeconfig",
            "/k",
            "--image-map",
            "siphon=/bin",
            "--image-map",
            "example.com/x=/opt/x",
        ])
        .unwrap();
        assert_eq!(cli.node_name, "siphon-node");
        assert_eq!(cli.image_map.len(), 2);
        assert_eq!(cli.restart_backoff, Duration::from_secs(2));
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
