//! The references Siphon is measured against, run on the same data in the
//! same run: `pg_recvlogical` (PostgreSQL's own logical decoding client, with
//! pgoutput, writing to /dev/null) for streaming, and `psql \copy … TO
//! /dev/null` for backfill and polling.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::postgres::{BenchDb, Lsn, POLL, PUBLICATION, Pg, WalsenderCpu};
use crate::worker::Pids;

/// Where the PostgreSQL client programs live.
#[derive(Clone, Debug)]
pub struct Tools {
    pub pg_recvlogical: PathBuf,
    pub psql: PathBuf,
    /// `proto_version` pg_recvlogical asks pgoutput for (2 or more adds
    /// `streaming=on`, as Siphon does).
    pub proto_version: u32,
}

/// Stream `slot` with pg_recvlogical until `end`; the elapsed time from the
/// moment the slot is active until the program exits at `--endpos`.
pub async fn recvlogical(
    tools: &Tools,
    db: &BenchDb,
    slot: &str,
    end: Lsn,
    pids: &Pids,
    timeout: Duration,
) -> Result<ReaderRun> {
    let pg = &db.pg;
    let watch = db.watch(slot).await?;
    let spawned = Instant::now();
    let mut cmd = Command::new(&tools.pg_recvlogical);
    if tools.proto_version >= 2 {
        // What Siphon asks for on PostgreSQL 14+: large transactions streamed
        // while in progress instead of spilled by the server until commit.
        cmd.args(["-o", "streaming=on"]);
    }
    let mut child = cmd
        .arg("--dbname")
        .arg(format!(
            "host={} port={} user={} dbname={}",
            pg.host, pg.port, pg.user, db.database
        ))
        .args([
            "--slot",
            slot,
            "--start",
            "--no-loop",
            "--file",
            "/dev/null",
        ])
        .arg(format!("--endpos={end}"))
        .args(["-o", &format!("proto_version={}", tools.proto_version)])
        .args(["-o", &format!("publication_names={PUBLICATION}")])
        .env("PGPASSWORD", &pg.password)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", tools.pg_recvlogical.display()))?;
    let pid = child.id();
    pids.add(pid);
    // Start the clock when the slot turns active, stop it when the program exits.
    let mut started: Option<Instant> = None;
    let mut walsender = WalsenderCpu::default();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = tokio::time::sleep(POLL) => {
                let state = watch.state().await?;
                walsender.observe(&state);
                if started.is_none() && state.active {
                    started = Some(Instant::now());
                }
            }
            _ = tokio::time::sleep(timeout.saturating_sub(spawned.elapsed())) => {
                let _ = child.start_kill();
                bail!("pg_recvlogical did not reach {end} within {timeout:?}");
            }
        }
    };
    let finished = Instant::now();
    pids.remove(pid);
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = e.read_to_string(&mut err).await;
        }
        bail!("pg_recvlogical failed ({status}): {}", err.trim());
    }
    Ok(ReaderRun {
        elapsed: finished - started.unwrap_or(spawned),
        walsender_cpu: walsender.used(),
    })
}

/// How a reference run went.
pub struct ReaderRun {
    /// From the slot turning active to having everything.
    pub elapsed: Duration,
    /// CPU time the slot's walsender used (decoding on the server side).
    pub walsender_cpu: Option<Duration>,
}

/// `psql -c "\copy (SELECT * FROM table) TO '/dev/null'"`: the time of the
/// COPY itself (psql's start and connection excluded by timing a `SELECT 1`
/// run the same way and subtracting it).
pub async fn copy_out(tools: &Tools, pg: &Pg, database: &str, table: &str) -> Result<Duration> {
    copy_query_out(tools, pg, database, &format!("SELECT * FROM {table}")).await
}

/// `COPY (query) TO STDOUT` through psql into /dev/null, timed as
/// [`copy_out`]: the reference of a read in a given order (polling).
pub async fn copy_query_out(
    tools: &Tools,
    pg: &Pg,
    database: &str,
    query: &str,
) -> Result<Duration> {
    let run = |sql: String| {
        let mut cmd = Command::new(&tools.psql);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", &pg.host])
            .args(["-p", &pg.port.to_string(), "-U", &pg.user, "-d", database])
            .args(["-c", &sql])
            .env("PGPASSWORD", &pg.password)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        async move {
            let t = Instant::now();
            let status = cmd.status().await.context("running psql")?;
            if !status.success() {
                bail!("psql failed ({status}) running {sql}");
            }
            Ok::<_, anyhow::Error>(t.elapsed())
        }
    };
    let baseline = run("SELECT 1".into()).await?;
    let copy = run(format!("\\copy ({query}) TO '/dev/null'")).await?;
    Ok(copy.saturating_sub(baseline))
}
