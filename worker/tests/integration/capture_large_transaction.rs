//! A transaction far larger than `logical_decoding_work_mem` is streamed by
//! the server while in progress and spilled to disk by the worker past
//! `maxTransactionMemory`: every row arrives, in order, and the worker's
//! memory stays bounded; an aborted large transaction delivers nothing.

use crate::common;

use std::time::{Duration, Instant};

use common::{Fixture, TopicReader};

const ROWS: i64 = 200_000;
const ABORTED_ROWS: i64 = 50_000;
const SENTINEL: i64 = 10_000_000;
/// Spill threshold of the worker.
const MAX_TXN_MEMORY: u64 = 4 * 1024 * 1024;
/// Peak RSS bound of the worker (debug build). The committed transaction is
/// 200k rows of 512 bytes of text (~135 MiB streamed by the server); buffered
/// whole, the worker peaks at ~165 MiB (measured with a 1 GiB threshold).
/// Spilling, it needs the 4 MiB threshold, the producer's queue (bounded at
/// 32 MiB, `sink::options::QUEUE_MAX_KBYTES`) and the process itself (~25 MiB
/// with librdkafka), ~60 MiB at most (measured: ~31 MiB); 100 MiB leaves
/// slack and still fails when the transaction is held in memory.
const PEAK_RSS_BOUND_MIB: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_transaction_streams_spills_and_arrives_whole_in_order() {
    let fx = Fixture::new("bigtxn").await;
    let role = format!("{}_r", fx.name);
    let password = "siphon-it-secret";
    // logical_decoding_work_mem is read by the walsender at connection start
    // from the role's settings: the server streams past 64 kB.
    fx.create_role(
        &role,
        password,
        &format!("ALTER ROLE {role} SET logical_decoding_work_mem = '64kB';"),
    )
    .await;
    let db = fx.sql().await;
    db.batch_execute(&format!(
        "CREATE TABLE big (id bigint PRIMARY KEY, pad text);
         GRANT SELECT ON big TO {role};
         CREATE PUBLICATION {} FOR TABLE big;",
        fx.name
    ))
    .await
    .expect("setup");
    let mut config = fx.config(&["public.big"]);
    config.user = role.clone();
    config.password = password.into();
    config.max_transaction_memory = Some(MAX_TXN_MEMORY);
    let mut worker = fx.spawn_with_env(
        &config,
        &[(
            "RUST_LOG",
            "info,siphon_worker::replication::assembler=debug",
        )],
    );
    worker.wait_ready(Duration::from_secs(60)).await;
    let work_mem: String = db
        .query_one(
            "SELECT s.setting FROM pg_stat_replication r, pg_replication_slots sl, \
             LATERAL (SELECT unnest(setconfig) AS setting FROM pg_db_role_setting \
                      WHERE setrole = r.usesysid) s \
             WHERE sl.active_pid = r.pid AND sl.slot_name = $1",
            &[&fx.name],
        )
        .await
        .expect("the walsender runs as the role")
        .get(0);
    assert_eq!(work_mem, "logical_decoding_work_mem=64kB");

    let started = Instant::now();
    db.batch_execute(&format!(
        "INSERT INTO big SELECT g, repeat(md5(g::text), 16) FROM generate_series(1, {ROWS}) g"
    ))
    .await
    .expect("large transaction");
    db.batch_execute(&format!(
        "BEGIN;
         INSERT INTO big SELECT g, repeat(md5(g::text), 16)
           FROM generate_series({SENTINEL} + 1, {SENTINEL} + {ABORTED_ROWS}) g;
         ROLLBACK;"
    ))
    .await
    .expect("aborted large transaction");
    db.batch_execute(&format!("INSERT INTO big VALUES ({SENTINEL}, 'done')"))
        .await
        .expect("sentinel");

    let mut reader = TopicReader::new(&fx.topic("public", "big"), "read_uncommitted");
    let records = reader.read_until(
        Duration::from_secs(600),
        Duration::from_secs(3),
        "the sentinel row",
        |r| r.last().and_then(|r| r.id("id")) == Some(SENTINEL),
    );
    let elapsed = started.elapsed();
    let ids: Vec<i64> = records.iter().filter_map(|r| r.id("id")).collect();
    assert_eq!(ids.len(), records.len(), "every record is a row");
    assert!(records.iter().all(|r| r.op() == Some("c")), "only inserts");
    let expected: Vec<i64> = (1..=ROWS).chain([SENTINEL]).collect();
    if ids != expected {
        let aborted = ids.iter().filter(|&&id| id > SENTINEL).count();
        let first_bad = ids
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(ids.len().min(expected.len()));
        panic!(
            "{} records, expected {}; {aborted} from the aborted transaction; first difference at index {first_bad}",
            ids.len(),
            expected.len()
        );
    }
    let pad = records[0]
        .after()
        .and_then(|a| a["pad"].as_str())
        .map(str::len);
    assert_eq!(pad, Some(512));

    let peak_kib = worker.peak_rss_kib().expect("the worker is alive");
    let (streamed_txns, streamed_bytes): (i64, i64) = {
        let row = db
            .query_one(
                "SELECT stream_txns, stream_bytes FROM pg_stat_replication_slots WHERE slot_name = $1",
                &[&fx.name],
            )
            .await
            .expect("slot statistics");
        (row.get(0), row.get(1))
    };
    let log = worker.output();
    let spills = log.matches("spilled streamed transaction").count();
    eprintln!(
        "large transaction: {ROWS} rows in {elapsed:?}; worker peak RSS {} MiB; server streamed {streamed_txns} transactions ({} MiB); worker spilled {spills}",
        peak_kib / 1024,
        streamed_bytes / (1024 * 1024)
    );
    assert!(
        streamed_txns >= 2,
        "the server streamed both transactions in progress ({streamed_txns})"
    );
    assert!(
        spills >= 2,
        "the worker spilled both transactions to disk ({spills})"
    );
    assert!(
        peak_kib < PEAK_RSS_BOUND_MIB * 1024,
        "peak RSS {} MiB is over {PEAK_RSS_BOUND_MIB} MiB",
        peak_kib / 1024
    );
    let leftovers = std::fs::read_dir(&config.spill_dir)
        .map(|d| {
            d.flatten()
                .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten())
                .count()
        })
        .unwrap_or(0);
    assert_eq!(
        leftovers, 0,
        "spill files are removed after commit and abort"
    );
    drop(worker);
}
