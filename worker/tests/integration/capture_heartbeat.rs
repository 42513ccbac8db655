//! WAL safety on an idle database: while other databases write WAL and
//! nothing is written to the captured tables, the worker's heartbeats keep
//! the slot's `confirmed_flush_lsn` and `restart_lsn` moving, so the slot
//! does not hold back WAL.

use crate::common;

use std::time::{Duration, Instant};

use common::Fixture;

async fn slot_lsns(admin: &tokio_postgres::Client, slot: &str) -> (i64, i64) {
    let row = admin
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint, (restart_lsn - '0/0')::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("the slot exists");
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_capture_still_advances_its_slot() {
    let fx = Fixture::new("idle").await;
    let other = format!("{}_other", fx.name);
    fx.create_database(&other).await;
    let db = fx.sql().await;
    db.batch_execute(&format!(
        "CREATE TABLE quiet (id int PRIMARY KEY);
         CREATE PUBLICATION {} FOR TABLE quiet;",
        fx.name
    ))
    .await
    .expect("setup");
    let config = fx.config(&["public.quiet"]);
    assert_eq!(config.heartbeat, "1s");
    let mut worker = fx.spawn(&config);
    worker.wait_ready(Duration::from_secs(60)).await;

    let admin = common::connect("postgres").await;
    let (flush0, restart0) = slot_lsns(&admin, &fx.name).await;
    let busy = common::connect(&other).await;
    busy.batch_execute("CREATE TABLE churn (id serial PRIMARY KEY, pad text)")
        .await
        .expect("churn table");

    // Write WAL elsewhere until the slot has moved past it.
    let started = Instant::now();
    let mut target = 0i64;
    let moved = loop {
        busy.batch_execute(
            "INSERT INTO churn (pad) SELECT repeat('x', 100) FROM generate_series(1, 2000)",
        )
        .await
        .expect("write WAL in another database");
        if target == 0 {
            target = busy
                .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
                .await
                .expect("wal position")
                .get(0);
        }
        let (flush, restart) = slot_lsns(&admin, &fx.name).await;
        if flush >= target && restart > restart0 {
            break Some((flush, restart));
        }
        if started.elapsed() > Duration::from_secs(90) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (flush, restart) = slot_lsns(&admin, &fx.name).await;
    assert!(
        moved.is_some(),
        "after {:?} the slot is at confirmed_flush {flush:X} (was {flush0:X}, other database wrote up to {target:X}), restart {restart:X} (was {restart0:X})",
        started.elapsed()
    );
    eprintln!(
        "slot advanced in {:?}: confirmed_flush_lsn +{} bytes, restart_lsn +{} bytes",
        started.elapsed(),
        flush - flush0,
        restart - restart0
    );
    let count: i64 = db
        .query_one("SELECT count(*) FROM quiet", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 0, "nothing was written to the captured table");
    assert!(worker.try_exit().is_none(), "{}", worker.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_capture_advances_its_slot_past_filtered_transactions() {
    let fx = Fixture::new("idleeos").await;
    let other = format!("{}_other", fx.name);
    fx.create_database(&other).await;
    let db = fx.sql().await;
    db.batch_execute(&format!(
        "CREATE TABLE quiet (id int PRIMARY KEY);
         CREATE PUBLICATION {} FOR TABLE quiet;",
        fx.name
    ))
    .await
    .expect("setup");
    let mut config = fx.config(&["public.quiet"]);
    config.delivery = "ExactlyOnce".into();
    config.operations = vec!["insert".into()];
    let mut worker = fx.spawn(&config);
    worker.wait_ready(Duration::from_secs(60)).await;

    // One delivered transaction, then one whose only change is filtered out.
    db.batch_execute("INSERT INTO quiet VALUES (1)")
        .await
        .expect("insert");
    let mut reader = common::TopicReader::new(&fx.topic("public", "quiet"), "read_committed");
    reader.read_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "the insert",
        |r| !r.is_empty(),
    );
    db.batch_execute("DELETE FROM quiet").await.expect("delete");
    let after_delete: i64 = db
        .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
        .await
        .expect("wal position")
        .get(0);

    let admin = common::connect("postgres").await;
    let busy = common::connect(&other).await;
    busy.batch_execute("CREATE TABLE churn (id serial PRIMARY KEY, pad text)")
        .await
        .expect("churn table");
    let started = Instant::now();
    let advanced = loop {
        busy.batch_execute(
            "INSERT INTO churn (pad) SELECT repeat('x', 100) FROM generate_series(1, 500)",
        )
        .await
        .expect("write WAL in another database");
        let (flush, _) = slot_lsns(&admin, &fx.name).await;
        if flush >= after_delete {
            break true;
        }
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (flush, _) = slot_lsns(&admin, &fx.name).await;
    assert!(
        advanced,
        "confirmed_flush_lsn stays at {flush:X}, before the filtered transaction (which ends before {after_delete:X})"
    );
    assert!(worker.try_exit().is_none(), "{}", worker.output());
}
