//! The Kafka broker restarts while the worker streams: the producer retries
//! (or, past its delivery timeout, the worker restarts from its last
//! confirmed position) and nothing committed is lost.

use crate::common;

use std::time::{Duration, Instant};

use common::{Fixture, Restore, Writer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_rides_out_a_kafka_restart_without_loss() {
    let fx = Fixture::new("kafkarestart").await;
    let db = fx.sql().await;
    db.batch_execute(&format!(
        "CREATE TABLE seq (id bigint PRIMARY KEY);
         CREATE PUBLICATION {} FOR TABLE seq;",
        fx.name
    ))
    .await
    .expect("setup");
    drop(db);
    let mut worker = fx.spawn(&fx.config(&["public.seq"]));
    worker.wait_ready(Duration::from_secs(60)).await;
    let writer = Writer::start(&fx.name, "seq", Duration::from_millis(5));
    common::eventually(Duration::from_secs(60), "rows being written", || async {
        (writer.committed() >= 300).then_some(())
    })
    .await;

    // Mid-stream: the writer keeps going, the worker has records in flight.
    let restore = Restore::kafka();
    let down = Instant::now();
    tokio::task::block_in_place(common::kafka_stop);
    let out = tokio::task::block_in_place(common::kafka_start);
    assert!(
        out.status.success(),
        "kafka_up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("kafka was restarted in {:?}", down.elapsed());
    let before = writer.committed();
    common::eventually(
        Duration::from_secs(120),
        "rows written after the restart",
        || async { (writer.committed() >= before + 300).then_some(()) },
    )
    .await;
    let (committed, uncertain) = writer.stop().await;
    drop(restore);

    let ids = tokio::task::block_in_place(|| {
        common::read_ids(
            &fx.topic("public", "seq"),
            "read_uncommitted",
            &committed,
            Duration::from_secs(180),
            &mut worker,
        )
    });
    assert!(
        worker.try_exit().is_none(),
        "the worker must not exit:\n{}",
        worker.output()
    );
    let log = worker.output();
    let counts = common::counts(ids.iter().copied());
    eprintln!(
        "{} committed rows ({} uncertain during the restart), {} records, {} restarts of the capture",
        committed.len(),
        uncertain.len(),
        ids.len(),
        log.matches("capture interrupted").count()
    );
    assert!(committed.iter().all(|id| counts.contains_key(id)));
    assert!(
        worker
            .get("/readyz")
            .await
            .is_some_and(|(code, _)| code == 200)
    );
}
