//! The worker pod killed is replaced and nothing committed is lost.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use siphon_e2e::topic::read_topic;

#[tokio::test]
async fn a_killed_worker_is_replaced_and_loses_nothing() {
    let s = Scenario::new("e2e-killed").await;
    s.pg.batch_execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    s.apply(
        "t",
        &s.spec("[{ name: public.t }]", "snapshot: { mode: Never }"),
    )
    .await;
    s.wait_condition("t", "Ready", "True", READY_TIMEOUT).await;

    let writer_db = s.db.clone();
    let writer = tokio::spawn(async move {
        let pg = siphon_e2e::pg_connect(&writer_db).await;
        for i in 1..=600 {
            pg.execute("INSERT INTO public.t VALUES ($1, 'x')", &[&i])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let lp = ListParams::default().labels("siphon.dev/capture=t");
    s.kill_worker_pod("t", 2).await;
    writer.await.unwrap();
    s.wait_condition("t", "Ready", "True", READY_TIMEOUT).await;

    let topic = s.topic("public", "t");
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen = read_topic(
            &topic,
            "read_committed",
            Duration::from_secs(3),
            Duration::from_secs(30),
        )
        .iter()
        .filter_map(|r| r.after().and_then(|a| a["id"].as_i64()))
        .collect();
        if seen.len() >= 600 {
            break;
        }
    }
    let missing: Vec<i64> = (1..=600).filter(|i| !seen.contains(i)).collect();
    assert!(missing.is_empty(), "lost rows: {missing:?}");
    let restarts = pods.list(&lp).await.unwrap().items.len();
    assert_eq!(restarts, 1, "one worker pod runs after the kills");
    s.cleanup().await;
}
