//! Running `siphon-worker` standalone: its YAML configuration (built from the
//! worker's own config type, so it cannot drift), the process, and a sampler
//! of its memory from /proc.
//!
//! Every child the benchmark starts is listed in `target/bench/pids`, so the
//! cleanup trap of `e2e/bench/run.sh` ends exactly those after a crash.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use siphon_crds::capture::{
    CaptureMode, Delivery, PollingSpec, SnapshotMode, SnapshotSpec, SslMode, TableSpec,
    TopicCreation,
};
use siphon_crds::worker_config::{
    KafkaConfig, LogicalConfig, MetricsConfig, NotifyConfig, PostgresConfig, WorkerConfig,
};
use tokio::process::{Child, Command};

use crate::postgres::{PUBLICATION, Pg, TABLE};

/// The pids of the children alive now, mirrored to a file.
#[derive(Clone)]
pub struct Pids {
    file: PathBuf,
    live: Arc<Mutex<BTreeSet<u32>>>,
}

impl Pids {
    pub fn new(file: PathBuf) -> Self {
        let _ = std::fs::write(&file, "");
        Self {
            file,
            live: Arc::default(),
        }
    }

    pub fn add(&self, pid: Option<u32>) {
        self.update(|s| {
            if let Some(p) = pid {
                s.insert(p);
            }
        });
    }

    pub fn remove(&self, pid: Option<u32>) {
        self.update(|s| {
            if let Some(p) = pid {
                s.remove(&p);
            }
        });
    }

    fn update(&self, f: impl FnOnce(&mut BTreeSet<u32>)) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut live);
        let text: String = live.iter().map(|p| format!("{p}\n")).collect();
        let _ = std::fs::write(&self.file, text);
    }
}

/// One worker run's settings.
pub struct WorkerRun<'a> {
    pub name: String,
    pub database: &'a str,
    pub slot: &'a str,
    pub topic_prefix: String,
    pub delivery: Delivery,
    pub snapshot: SnapshotMode,
    /// A second table captured without backfill (changes only).
    pub stream_only: Option<&'a str>,
    /// `mode: Polling` with these settings (the slot is then unused).
    pub polling: Option<PollingSpec>,
    /// The notify objects of a polling run with `notify: true`, made by the
    /// benchmark as the operator would.
    pub notify: Option<NotifyConfig>,
}

/// What the worker needs to know about the stack and where to put files.
#[derive(Clone, Debug)]
pub struct WorkerEnv {
    pub binary: PathBuf,
    pub pg: Pg,
    pub kafka_bootstrap: String,
    pub offsets_topic: String,
    /// target/bench/run: configs, logs, spill folder, latency.csv, perf data.
    pub dir: PathBuf,
}

impl WorkerEnv {
    /// The worker configuration of a run.
    pub fn config(&self, run: &WorkerRun<'_>) -> WorkerConfig {
        let polling = run.polling.is_some();
        WorkerConfig {
            name: run.name.clone(),
            mode: if polling {
                CaptureMode::Polling
            } else {
                CaptureMode::Logical
            },
            polling: run.polling.clone(),
            notify: run.notify.clone(),
            postgres: PostgresConfig {
                host: self.pg.host.clone(),
                port: self.pg.port,
                database: run.database.to_string(),
                user: Some(self.pg.user.clone()),
                password_env: Some("PGPASSWORD".into()),
                ssl_mode: SslMode::Disable,
                ..PostgresConfig::default()
            },
            tables: std::iter::once((TABLE, true))
                .chain(run.stream_only.map(|t| (t, false)))
                .map(|(name, snapshot)| TableSpec {
                    name: name.into(),
                    columns: Vec::new(),
                    filter: None,
                    key_columns: Vec::new(),
                    snapshot,
                    cursor_column: None,
                    query: None,
                })
                .collect(),
            logical: if polling {
                LogicalConfig::default()
            } else {
                LogicalConfig {
                    slot_name: run.slot.to_string(),
                    publication_name: PUBLICATION.into(),
                    create_slot: true,
                    ..LogicalConfig::default()
                }
            },
            snapshot: SnapshotSpec {
                mode: run.snapshot,
                // BENCH_CHUNK_SIZE: another chunk size than the default, to
                // compare (the summary says which was used).
                chunk_size: chunk_size_override().unwrap_or(SnapshotSpec::default().chunk_size),
                ..SnapshotSpec::default()
            },
            kafka: KafkaConfig {
                bootstrap_servers: self.kafka_bootstrap.clone(),
                topic_prefix: run.topic_prefix.clone(),
                delivery: run.delivery,
                topics: Some(TopicCreation {
                    create: true,
                    partitions: 1,
                    replication_factor: Some(1),
                    config: Default::default(),
                }),
                offsets_topic: self.offsets_topic.clone(),
                ..KafkaConfig::default()
            },
            metrics: MetricsConfig {
                // Any free port: several workers may run side by side.
                listen: "127.0.0.1:0".into(),
            },
            spill_dir: self.dir.join("spill").display().to_string(),
            ..WorkerConfig::default()
        }
    }

    /// Write the configuration and start the worker.
    pub fn spawn(&self, run: &WorkerRun<'_>, pids: &Pids) -> Result<Worker> {
        let config = self.config(run);
        let yaml = serde_yaml::to_string(&config)?;
        let cfg_path = self.dir.join(format!("{}.yaml", run.name));
        let log_path = self.dir.join("logs").join(format!("{}.log", run.name));
        std::fs::write(&cfg_path, yaml)
            .with_context(|| format!("writing {}", cfg_path.display()))?;
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&cfg_path)
            .env("PGPASSWORD", &self.pg.password)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_WORKER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let pid = child.id();
        pids.add(pid);
        Ok(Worker {
            child,
            pid,
            pids: pids.clone(),
            log: log_path,
        })
    }
}

/// A running worker.
pub struct Worker {
    child: Child,
    pid: Option<u32>,
    pids: Pids,
    pub log: PathBuf,
}

impl Worker {
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Fails when the worker has exited (it never should during a run).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "siphon-worker exited ({status}); last lines of {}:\n{}",
                self.log.display(),
                tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// Memory of the process now (`VmRSS`, `VmHWM`), in KiB.
    pub fn memory(&self) -> Option<Memory> {
        memory_of(self.pid?)
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) -> Result<()> {
        if let Some(pid) = self.pid {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let clean = tokio::time::timeout(grace, self.child.wait()).await;
        if clean.is_err() {
            eprintln!("bench: worker ignored SIGTERM for {grace:?}; killing it");
            let _ = self.child.kill().await;
        }
        self.pids.remove(self.pid);
        Ok(())
    }
}

/// Memory figures of a process, KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn memory_of(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// Samples a process's resident memory every `every` until dropped.
pub struct MemorySampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MemorySampler {
    pub fn start(pid: Option<u32>, every: Duration) -> Self {
        let samples: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let sink = samples.clone();
        let task = tokio::spawn(async move {
            let Some(pid) = pid else { return };
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match memory_of(pid) {
                    Some(m) => sink
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((Instant::now(), m.rss_kib)),
                    None => return,
                }
            }
        });
        Self { samples, task }
    }

    /// RSS samples (KiB) taken between `from` and `to`.
    pub fn between(&self, from: Instant, to: Instant) -> Vec<u64> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, v)| *v)
            .collect()
    }
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `perf record` attached to a worker when `BENCH_PERF` is set (to any
/// value; `BENCH_PERF=callgraph` records call graphs with DWARF): writes
/// `target/bench/run/perf-<run>.data` for `perf report -i`.
pub struct Profiler {
    child: Child,
    pid: Option<u32>,
    pids: Pids,
}

impl Profiler {
    pub fn attach(dir: &Path, what: &str, pid: Option<u32>, pids: &Pids) -> Result<Option<Self>> {
        let (Ok(mode), Some(target)) = (std::env::var("BENCH_PERF"), pid) else {
            return Ok(None);
        };
        let out = dir.join(format!("perf-{what}.data"));
        let mut cmd = Command::new("perf");
        cmd.args(["record", "-q", "-F", "499", "-p", &target.to_string(), "-o"])
            .arg(&out);
        if mode == "callgraph" {
            cmd.args(["--call-graph", "dwarf,16384"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting perf record (BENCH_PERF is set)")?;
        let pid = child.id();
        pids.add(pid);
        Ok(Some(Self {
            child,
            pid,
            pids: pids.clone(),
        }))
    }

    /// Stop recording (SIGINT makes perf write its file).
    pub async fn finish(mut self) {
        if let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        if tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        self.pids.remove(self.pid);
    }
}

/// `BENCH_CHUNK_SIZE`, when set: the backfill's rows per chunk.
pub fn chunk_size_override() -> Option<u32> {
    std::env::var("BENCH_CHUNK_SIZE").ok()?.parse().ok()
}
