//! `kill -9` of the worker at random (seeded) points while a writer commits
//! numbered rows in many small transactions; the worker is restarted after
//! each kill. At least once: every committed row reaches Kafka (duplicates
//! allowed). Exactly once: a `read_committed` consumer sees every committed
//! row exactly once, after `kill -9` and after a SIGTERM that drains (a
//! commit under way, records held for the next Kafka transaction, a source
//! transaction half sent). Set `SIPHON_TEST_SEED` to replay a run.

use crate::common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Fixture, Rng, TopicReader, counts};

const ROUNDS: usize = 12;
/// Rows per writer transaction.
const BATCH: i64 = 5;

struct Outcome {
    rows: i64,
    duplicates: usize,
    killed_while_streaming: usize,
}

/// How a round stops the worker.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Kill9,
    /// SIGTERM, then the worker must drain and exit 0.
    Terminate,
}

async fn kill_rounds(
    tag: &str,
    delivery: &str,
    isolation: &str,
    stop_by: Stop,
    seed: u64,
) -> Outcome {
    let fx = Fixture::new(tag).await;
    let db = fx.sql().await;
    db.batch_execute(&format!(
        "CREATE TABLE seq (id bigint PRIMARY KEY);
         CREATE PUBLICATION {} FOR TABLE seq;",
        fx.name
    ))
    .await
    .expect("setup");
    let mut config = fx.config(&["public.seq"]);
    config.delivery = delivery.into();
    let (mut rng, seed) = Rng::seeded(seed);
    eprintln!("{tag}: seed {seed} (SIPHON_TEST_SEED={seed} replays the kill points)");

    // The first worker creates the slot; rows committed before it exist are
    // not part of the capture, so the writer starts once it is streaming.
    let mut first = fx.spawn(&config);
    first.wait_ready(Duration::from_secs(60)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let database = fx.name.clone();
        tokio::spawn(async move {
            let client = common::connect(&database).await;
            let mut last = 0i64;
            while !stop.load(Ordering::Relaxed) {
                client
                    .batch_execute(&format!(
                        "INSERT INTO seq SELECT g FROM generate_series({}, {}) g",
                        last + 1,
                        last + BATCH
                    ))
                    .await
                    .expect("insert");
                last += BATCH;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            last
        })
    };

    let mut killed_while_streaming = 0;
    let mut worker = first;
    for round in 0..ROUNDS {
        // A random point in the worker's life: one kill in four during
        // start-up, the others while it streams (with a Kafka transaction
        // open or not, records in flight or not).
        let during_startup = rng.range(0, 4) == 0;
        let after = if during_startup {
            Duration::from_millis(rng.range(0, 800))
        } else {
            // Ready (`/readyz` 200) once its replication stream runs.
            worker.wait_ready(Duration::from_secs(60)).await;
            Duration::from_millis(rng.range(0, 2000))
        };
        tokio::time::sleep(after).await;
        if let Some(status) = worker.try_exit() {
            panic!("round {round}: the worker exited by itself ({status})");
        }
        let streaming = matches!(worker.get("/readyz").await, Some((200, _)));
        match stop_by {
            Stop::Kill9 => worker.kill9(),
            Stop::Terminate => {
                worker.terminate();
                let status = worker.wait_exit(Duration::from_secs(40)).await;
                assert!(
                    status.is_some_and(|s| s.success()),
                    "round {round}: the worker did not drain and exit 0 on SIGTERM ({status:?})\n{}",
                    worker.output()
                );
            }
        }
        killed_while_streaming += usize::from(streaming);
        eprintln!(
            "{tag}: round {round}: {} {after:?} after {} (streaming: {streaming})",
            match stop_by {
                Stop::Kill9 => "SIGKILL",
                Stop::Terminate => "SIGTERM",
            },
            if during_startup {
                "spawn"
            } else {
                "streaming began"
            }
        );
        worker = fx.spawn(&config);
    }
    stop.store(true, Ordering::Relaxed);
    let rows = writer.await.expect("writer");

    // The last worker runs until everything committed is in Kafka.
    let started = Instant::now();
    let mut reader = TopicReader::new(&fx.topic("public", "seq"), isolation);
    let mut seen = HashSet::new();
    let mut looked = 0;
    let records = reader.read_until(
        Duration::from_secs(300),
        Duration::from_secs(5),
        "every committed row",
        |r| {
            seen.extend(r[looked..].iter().filter_map(|r| r.id("id")));
            looked = r.len();
            seen.len() as i64 >= rows
        },
    );
    let counts = counts(records.iter().filter_map(|r| r.id("id")));
    let missing: Vec<i64> = (1..=rows).filter(|id| !counts.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {rows} committed rows lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        counts.keys().all(|&id| id >= 1 && id <= rows),
        "only committed rows"
    );
    let duplicates = counts.values().map(|&c| c as usize - 1).sum();
    eprintln!(
        "{tag}: {ROUNDS} kills ({killed_while_streaming} while streaming), {rows} rows, {} records, {duplicates} duplicates; caught up {:?} after the last restart",
        records.len(),
        started.elapsed()
    );
    assert!(
        killed_while_streaming >= ROUNDS / 2,
        "only {killed_while_streaming} of {ROUNDS} kills hit a streaming worker: the test did not exercise the stream"
    );
    if delivery == "ExactlyOnce" {
        // The last worker committed what it delivered, and says how long
        // its commits took.
        let commits = worker
            .metric("siphon_worker_kafka_commit_duration_seconds_count")
            .await;
        assert!(
            commits >= Some(1.0),
            "siphon_worker_kafka_commit_duration_seconds_count is {commits:?} after delivering exactly once"
        );
    }
    drop(worker);
    Outcome {
        rows,
        duplicates,
        killed_while_streaming,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_loses_nothing_across_kill_9() {
    let outcome = kill_rounds(
        "kill9alo",
        "AtLeastOnce",
        "read_uncommitted",
        Stop::Kill9,
        0x5EED_0001,
    )
    .await;
    assert!(outcome.rows > 0 && outcome.killed_while_streaming > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_loses_and_repeats_nothing_across_kill_9() {
    let outcome = kill_rounds(
        "kill9eos",
        "ExactlyOnce",
        "read_committed",
        Stop::Kill9,
        0x5EED_0002,
    )
    .await;
    assert_eq!(
        outcome.duplicates, 0,
        "a read_committed consumer saw duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_repeats_nothing_across_sigterm_mid_stream() {
    let outcome = kill_rounds(
        "termeos",
        "ExactlyOnce",
        "read_committed",
        Stop::Terminate,
        0x5EED_0003,
    )
    .await;
    assert_eq!(
        outcome.duplicates, 0,
        "a read_committed consumer saw duplicates after drained restarts"
    );
    assert!(outcome.killed_while_streaming > 0);
}
