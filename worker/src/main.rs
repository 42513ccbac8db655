//! `siphon-worker`: wires configuration, metrics, progress reporting and the
//! capture loop. Logic lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use siphon_worker::metrics::{self, Metrics};
use siphon_worker::progress::{self, Progress};
use siphon_worker::{capture, config};
use tracing::Instrument;

/// Captures changes of PostgreSQL tables into Kafka topics.
#[derive(Parser, Debug)]
#[command(name = "siphon-worker", version, about)]
struct Args {
    /// Path of the worker configuration (YAML).
    #[arg(long, env = "SIPHON_CONFIG")]
    config: PathBuf,
    /// Address of /metrics, /healthz and /readyz (overrides metrics.listen).
    #[arg(long, env = "SIPHON_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Log lines as JSON objects (one per line, with the capture and its
    /// namespace on each), as text, or `auto`: text on a terminal, JSON
    /// otherwise (a pod's log).
    #[arg(long, env = "SIPHON_LOG_FORMAT", default_value = "auto", value_parser = ["auto", "json", "text"])]
    log_format: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only on a terminal: in a pod's log (and its termination
    // message) they are noise.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    if args.log_format == "json" || (args.log_format == "auto" && !terminal) {
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(terminal)
            .init();
    }

    let validated = match config::load(&args.config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("siphon-worker: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("siphon-worker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Every line names the capture as kubectl does (namespace and name): a
    // cluster's log pipeline holds the lines of many workers. Outside a
    // cluster (no status target) the configuration's capture id stands in.
    let (namespace, capture) = match &validated.config.status {
        Some(target) => (target.namespace.as_str(), target.name.as_str()),
        None => ("", validated.config.name.as_str()),
    };
    let span = tracing::info_span!("capture", capture = %capture, namespace = %namespace);
    let root = span.clone();
    runtime.block_on(
        async move {
            let metrics = Arc::new(Metrics::default());
            let listen = args
                .metrics_addr
                .unwrap_or_else(|| validated.config.metrics.listen.clone());
            match tokio::net::TcpListener::bind(&listen).await {
                Ok(listener) => {
                    tracing::info!(addr = %listen, "serving /metrics, /healthz, /readyz");
                    tokio::spawn(
                        metrics::serve(listener, metrics.clone()).instrument(span.clone()),
                    );
                }
                Err(error) => tracing::warn!(addr = %listen, %error, "cannot serve metrics"),
            }
            let progress = Progress::default();
            if let Some(target) = validated.config.status.clone() {
                tokio::spawn(
                    progress::report(target, progress.clone(), Duration::from_secs(10))
                        .instrument(span.clone()),
                );
            }
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutdown requested");
                let _ = tx.send(true);
            });
            let status_target = validated.config.status.clone();
            let last_word = progress.clone();
            // A spawned task, not block_on's own future: it then runs on a
            // runtime thread beside the I/O driver, and a readable socket wakes
            // it without a cross-thread unpark (two context switches per
            // wake-up otherwise, tens of thousands a second when streaming).
            let capture = tokio::spawn(
                async move { capture::run_forever(&validated, metrics, progress, rx).await }
                    .instrument(span.clone()),
            );
            let result = match capture.await {
                Ok(result) => result,
                Err(error) => {
                    tracing::error!(%error, "capture task failed");
                    return ExitCode::FAILURE;
                }
            };
            match result {
                Ok(()) => {
                    tracing::info!("stopped");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    tracing::error!(%error, "capture stopped");
                    // Why, in the resource's status, before the process ends.
                    if let Some(target) = &status_target {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            progress::report_now(target, &last_word),
                        )
                        .await;
                    }
                    eprintln!("siphon-worker: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        .instrument(root),
    )
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
