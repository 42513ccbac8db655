//! `siphon-bench`: the measuring half of `make bench` (e2e/bench/run.sh
//! brings the stack's PostgreSQL and Kafka up and builds the worker, then runs
//! this). Speed is printed as ratios against references measured in the same
//! run on the same data; latency and memory against the product's goals.
//! Figures go to `target/bench/summary.json`.

mod client;
mod debezium;
mod kafka;
mod polling;
mod postgres;
mod reference;
mod scenarios;
mod summary;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;

use crate::kafka::Kafka;
use crate::postgres::Pg;
use crate::reference::Tools;
use crate::scenarios::{Bench, TOPIC_PREFIX, Workload, log};
use crate::worker::{Pids, WorkerEnv};

/// Throughput, latency and memory of siphon-worker against references.
#[derive(Parser, Debug)]
#[command(name = "siphon-bench")]
struct Args {
    /// Multiplies every workload size (0.1 for a quick smoke run).
    #[arg(long, env = "BENCH_SCALE", default_value_t = 1.0)]
    scale: f64,
    /// Scenarios to run, comma-separated: single,large1m,batch10,latency,memory,backfill,
    /// client (Siphon's replication client against pgwire-replication), polling
    /// (a polling capture: throughput against COPY, NOTIFY wake-up, idle load),
    /// debezium (the Debezium connector beside Siphon on the same workloads).
    #[arg(
        long,
        env = "BENCH_ONLY",
        default_value = "single,large1m,batch10,latency,memory,backfill,client,polling,debezium"
    )]
    only: String,
    #[arg(long, default_value = "127.0.0.1")]
    pg_host: String,
    #[arg(long, env = "BENCH_PG_PORT", default_value_t = 15432)]
    pg_port: u16,
    #[arg(long, default_value = "postgres")]
    pg_user: String,
    #[arg(
        long,
        env = "PGPASSWORD",
        default_value = "postgres",
        hide_env_values = true
    )]
    pg_password: String,
    /// Folder of pg_recvlogical and psql.
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    pg_bindir: PathBuf,
    /// pgoutput `proto_version` of the reference.
    #[arg(long, env = "BENCH_REF_PROTO", default_value_t = 1)]
    ref_proto: u32,
    #[arg(long, env = "BENCH_KAFKA", default_value = "127.0.0.1:19092")]
    kafka: String,
    /// The siphon-worker binary (release build).
    #[arg(long)]
    worker: PathBuf,
    /// Output folder: summary.json, and run/ with this run's worker configs,
    /// logs, latency.csv and perf data.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Root of the repository (to see which features this build has).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("siphon-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("siphon-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every selected scenario; `Ok(false)` when one of them failed (the
/// others still ran and their figures are written).
async fn run(args: Args) -> Result<bool> {
    let started = Instant::now();
    // This run's worker configs, logs, latency.csv and perf data; the
    // previous run's go.
    let run_dir = args.out.join("run");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(run_dir.join("logs"))?;
    std::fs::create_dir_all(run_dir.join("spill"))?;
    let run_id = format!(
        "{:x}",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs()
    );
    let pg = Pg {
        host: args.pg_host.clone(),
        port: args.pg_port,
        user: args.pg_user.clone(),
        password: args.pg_password.clone(),
    };
    let kafka = Kafka {
        bootstrap: args.kafka.clone(),
    };
    let mut bench = Bench {
        worker: WorkerEnv {
            binary: args.worker.clone(),
            pg: pg.clone(),
            kafka_bootstrap: args.kafka.clone(),
            offsets_topic: format!("{TOPIC_PREFIX}{run_id}.offsets"),
            dir: run_dir
                .canonicalize()
                .context("resolving the output folder")?,
        },
        tools: Tools {
            pg_recvlogical: args.pg_bindir.join("pg_recvlogical"),
            psql: args.pg_bindir.join("psql"),
            proto_version: args.ref_proto,
        },
        pids: Pids::new(args.out.join("pids")),
        pg,
        kafka,
        run_id,
        scale: args.scale,
        repo: args.repo.clone(),
        figures: Vec::new(),
        notes: Vec::new(),
    };
    // Leftovers of an aborted run hold WAL: drop them first.
    bench.pg.drop_all().await?;
    bench.kafka.delete_topics(TOPIC_PREFIX).await?;
    log(format!("scale {}, run {}", bench.scale, bench.run_id));

    let selected: Vec<&str> = args.only.split(',').map(str::trim).collect();
    let workloads = [
        Workload {
            key: "single",
            label: "single-row transactions",
            txns: bench.scaled(200_000, 100),
            rows_per_txn: 1,
        },
        Workload {
            key: "large1m",
            label: "one 1M-row transaction",
            txns: 1,
            rows_per_txn: u32::try_from(bench.scaled(1_000_000, 1000))?,
        },
        Workload {
            key: "batch10",
            label: "10-row transactions",
            txns: bench.scaled(20_000, 10),
            rows_per_txn: 10,
        },
    ];
    let mut ok = true;
    for name in &selected {
        let t = Instant::now();
        let result = match *name {
            "latency" => bench.latency().await,
            "memory" => bench.large_transaction().await,
            "backfill" => bench.backfill().await,
            "client" => bench.client().await,
            "polling" => bench.polling().await,
            "debezium" => bench.debezium().await,
            other => match workloads.iter().find(|w| w.key == other) {
                Some(w) => bench.streaming(*w).await,
                None => {
                    log(format!("unknown scenario {other:?}; skipped"));
                    continue;
                }
            },
        };
        match result {
            Ok(()) => log(format!("{name}: done in {:.0}s", t.elapsed().as_secs_f64())),
            Err(e) => {
                ok = false;
                log(format!("{name}: FAILED: {e:#}"));
                bench.notes.push(format!("{name}: failed: {e:#}"));
            }
        }
    }
    bench.pg.drop_all().await?;
    bench
        .kafka
        .delete_topics(&format!("{TOPIC_PREFIX}{}", bench.run_id))
        .await?;
    let _ = std::fs::remove_dir_all(run_dir.join("spill"));

    let summary = args.out.join("summary.json");
    summary::write_json(&summary, &bench.figures)?;
    bench.notes.push(format!(
        "BENCH_SCALE={}; 2 shared cores, other work on the machine makes figures noisy; reference = pg_recvlogical proto_version={} on its own slot, same WAL, measured just before each Siphon run",
        bench.scale, args.ref_proto
    ));
    println!();
    print!("{}", summary::table(&bench.figures, &bench.notes));
    println!(
        "\nwritten to {} in {:.0}s",
        summary.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ok)
}
