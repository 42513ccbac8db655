//! The worker's HTTP endpoint: `/readyz` once it streams, `/healthz`, and
//! Prometheus counters on `/metrics` that move with the changes.

use crate::common;

use std::time::Duration;

use common::Fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_events_and_readyz_says_streaming() {
    let fx = Fixture::new("metrics").await;
    let db = fx.sql().await;
    db.batch_execute(&format!(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION {} FOR TABLE t;",
        fx.name
    ))
    .await
    .expect("setup");
    let mut worker = fx.spawn(&fx.config(&["public.t"]));
    worker.wait_ready(Duration::from_secs(60)).await;
    assert_eq!(worker.get("/readyz").await, Some((200, "ok\n".to_string())));
    assert_eq!(worker.get("/healthz").await.map(|(c, _)| c), Some(200));
    assert_eq!(worker.get("/nope").await.map(|(c, _)| c), Some(404));
    assert_eq!(
        worker.metric("siphon_worker_events_total").await,
        Some(0.0),
        "no change yet"
    );

    db.batch_execute("INSERT INTO t SELECT generate_series(1, 10)")
        .await
        .expect("insert");
    let events = common::eventually(
        Duration::from_secs(60),
        "siphon_worker_events_total to count the inserts",
        || async {
            worker
                .metric("siphon_worker_events_total")
                .await
                .filter(|&n| n >= 10.0)
        },
    )
    .await;
    assert_eq!(events, 10.0, "one event per row");
    let (_, body) = worker.get_openmetrics("/metrics").await.expect("metrics");
    assert!(
        body.contains("# TYPE siphon_worker_events counter"),
        "{body}"
    );
    // Anyone else gets the text format, whose counter family carries the
    // `_total` of its samples (what promtool checks).
    let (_, text) = worker.get("/metrics").await.expect("metrics");
    assert!(
        text.contains("# TYPE siphon_worker_events_total counter"),
        "{text}"
    );
    let confirmed = common::eventually(Duration::from_secs(30), "the confirmed LSN", || async {
        worker
            .metric("siphon_worker_confirmed_lsn")
            .await
            .filter(|&l| l > 0.0)
    })
    .await;
    assert!(confirmed > 0.0);
    assert!(worker.metric("siphon_worker_transactions_total").await >= Some(1.0));
    assert!(worker.metric("siphon_worker_bytes_total").await > Some(0.0));
}
