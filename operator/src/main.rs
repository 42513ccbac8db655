//! `siphon-operator`: wires configuration, the controller and the HTTP endpoint.

use clap::Parser;

/// Reconciles PostgresCapture resources: provisions the database, runs one
/// worker per capture, reports status, and tears down on deletion.
#[derive(Parser, Debug)]
#[command(name = "siphon-operator", version, about)]
struct Args {
    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz.
    #[arg(long, env = "SIPHON_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    tracing::info!(metrics_addr = %args.metrics_addr, "siphon-operator starting");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
