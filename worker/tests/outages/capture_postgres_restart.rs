//! PostgreSQL restarts while the worker streams: the worker reconnects by
//! itself (a transient error) and nothing committed is lost.

use crate::common;

use std::time::{Duration, Instant};

use common::{Fixture, Restore, Writer};

const RESTARTS: usize = 3;
/// Dirties ~70 MB of shared buffers in a table outside the publication.
const BALLAST_SQL: &str = "UPDATE ballast SET n = n + 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_rides_out_a_postgres_restart_without_loss() {
    let fx = Fixture::new("pgrestart").await;
    let db = fx.sql().await;
    db.batch_execute(&format!(
        "CREATE TABLE seq (id bigint PRIMARY KEY);
         CREATE TABLE ballast (id int PRIMARY KEY, n int, pad text);
         INSERT INTO ballast SELECT g, 0, repeat('x', 200) FROM generate_series(1, 300000) g;
         CREATE PUBLICATION {} FOR TABLE seq;",
        fx.name
    ))
    .await
    .expect("setup");
    let mut ballast = db;
    let mut worker = fx.spawn(&fx.config(&["public.seq"]));
    worker.wait_ready(Duration::from_secs(60)).await;
    let writer = Writer::start(&fx.name, "seq", Duration::from_millis(5));
    common::eventually(Duration::from_secs(60), "rows being written", || async {
        (writer.committed() >= 300).then_some(())
    })
    .await;

    // Mid-stream, several times: the writer keeps going, the worker has
    // records in flight, and the server has dirty buffers to write at
    // shutdown (a busy server takes a while to stop and start, and refuses
    // connections meanwhile with "the database system is shutting down").
    let restore = Restore::postgres();
    for restart in 0..RESTARTS {
        ballast
            .batch_execute(BALLAST_SQL)
            .await
            .expect("dirty buffers");
        let down = Instant::now();
        tokio::task::block_in_place(common::pg_stop);
        let out = tokio::task::block_in_place(common::pg_start);
        assert!(
            out.status.success(),
            "pg_up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "restart {restart}: postgres was down for {:?}",
            down.elapsed()
        );
        ballast = common::connect_retrying(&fx.name, Duration::from_secs(60)).await;
        let before = writer.committed();
        common::eventually(
            Duration::from_secs(120),
            "rows written after the restart",
            || async { (writer.committed() >= before + 300).then_some(()) },
        )
        .await;
        if let Some(status) = worker.try_exit() {
            panic!("restart {restart}: the worker exited ({status})");
        }
    }
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
    assert!(
        log.contains("capture interrupted; restarting from the last confirmed position"),
        "the worker noticed the restart:\n{log}"
    );
    let counts = common::counts(ids.iter().copied());
    eprintln!(
        "{} committed rows ({} uncertain during the restarts), {} records, {} restarts of the capture",
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
