//! `siphon-operator`: wires configuration, leader election, the HTTP endpoint
//! and the controller. Logic lives in the modules.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use kube::runtime::events::Reporter;

use siphon_operator::build::WorkerDefaults;
use siphon_operator::controller::{self, Context};
use siphon_operator::lease::{self, LeaseConfig};
use siphon_operator::scope::{self, Scope};
use siphon_operator::{http, metrics::Metrics};

/// Reconciles PostgresCapture resources: provisions the database, runs one
/// worker per capture, reports status, and tears down on deletion.
#[derive(Parser, Debug)]
#[command(name = "siphon-operator", version, about)]
struct Args {
    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz.
    #[arg(long, env = "SIPHON_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: String,
    /// Image of the worker pods when a capture names none.
    #[arg(
        long,
        env = "SIPHON_WORKER_IMAGE",
        default_value = "ghcr.io/siphon-dev/siphon:latest"
    )]
    worker_image: String,
    /// Pull policy of the worker image.
    #[arg(
        long,
        env = "SIPHON_WORKER_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    worker_image_pull_policy: String,
    /// Image pull Secrets of the worker pods, comma separated (the same
    /// names in each capture's namespace).
    #[arg(long, env = "SIPHON_WORKER_IMAGE_PULL_SECRETS", default_value = "")]
    worker_image_pull_secrets: String,
    /// Hold a Lease before reconciling, so that several replicas are safe.
    #[arg(long, env = "SIPHON_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease (defaults to the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Log format: `text` or `json`.
    #[arg(long, env = "SIPHON_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Captures reconciled at once. Each reconcile may hold a connection to
    /// its database; the bound keeps the operator's memory and the load it
    /// puts on shared databases flat however many captures exist.
    #[arg(long, env = "SIPHON_MAX_CONCURRENT_RECONCILES", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,
    /// Namespaces to watch, comma separated; empty: the whole cluster. A
    /// namespace-scoped operator needs only Roles in these namespaces.
    #[arg(long, env = "SIPHON_WATCH_NAMESPACES", default_value = "")]
    watch_namespaces: String,
    /// Reconcile only the captures this label selector matches (e.g.
    /// `siphon.dev/shard=a`, or `!siphon.dev/operator` for the unlabelled
    /// ones): several installs can share a cluster, each owning its captures.
    #[arg(long, env = "SIPHON_CAPTURE_SELECTOR", default_value = "")]
    capture_selector: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }

    let scope = Scope::parse(&args.watch_namespaces).map_err(anyhow::Error::msg)?;
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(&args.metrics_addr).await?;
    tracing::info!(addr = %args.metrics_addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(http::serve(listener, metrics.clone(), ready.clone()));

    // Ready once the API server serves the CRD where the operator looks:
    // a replica waiting for the Lease is ready too (it takes over when the
    // leader goes), so a rollout of several replicas completes.
    scope::check_served(&client, &scope).await?;
    ready.store(true, Ordering::Relaxed);
    tracing::info!(scope = %scope.describe(), selector = %args.capture_selector, "watching");

    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
    let mut lease = None;
    if args.leader_election {
        let cfg = LeaseConfig {
            namespace: args.leader_election_namespace.clone(),
            name: "siphon-operator".into(),
            identity: identity.clone(),
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
        };
        lease::acquire_and_hold(client.clone(), cfg.clone(), || std::process::exit(1)).await;
        metrics.leader.set(1);
        lease = Some(cfg);
    }

    let (watches, captures) = controller::watches(&scope, &args.capture_selector, &client);
    let ctx = Arc::new(Context {
        client: client.clone(),
        captures,
        reporter: Reporter {
            controller: "siphon-operator".into(),
            instance: Some(identity),
        },
        metrics,
        announced: Default::default(),
        defaults: WorkerDefaults {
            image: args.worker_image,
            image_pull_policy: args.worker_image_pull_policy,
            image_pull_secrets: args
                .worker_image_pull_secrets
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        },
    });
    tracing::info!("controller starting");
    controller::run(ctx, watches, args.max_concurrent_reconciles).await;
    tracing::info!("controller stopped");
    if let Some(cfg) = lease {
        lease::release(client, &cfg).await;
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "siphon-operator".into())
}
