//! `siphon-worker`: wires configuration, the capture source and the Kafka sink.

use clap::Parser;

/// Captures changes of PostgreSQL tables into Kafka topics.
#[derive(Parser, Debug)]
#[command(name = "siphon-worker", version, about)]
struct Args {
    /// Path of the worker configuration (YAML).
    #[arg(long, env = "SIPHON_CONFIG")]
    config: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    tracing::info!(config = %args.config.display(), "siphon-worker starting");
    Ok(())
}
