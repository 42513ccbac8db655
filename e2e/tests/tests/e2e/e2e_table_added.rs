//! A table added to a running capture's spec is added to the publication and
//! backfilled, and its new changes stream.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use siphon_e2e::topic::{read_topic, reduce};

#[tokio::test]
async fn an_added_table_is_published_and_backfilled() {
    let s = Scenario::new("e2e-added").await;
    s.pg.batch_execute(
        "CREATE TABLE public.a (id int PRIMARY KEY);
         CREATE TABLE public.b (id int PRIMARY KEY, v text);
         INSERT INTO public.b SELECT g, 'v' || g FROM generate_series(1, 300) g;",
    )
    .await
    .unwrap();
    s.apply("cap", &s.spec("[{ name: public.a }]", "")).await;
    s.wait_condition("cap", "Ready", "True", READY_TIMEOUT)
        .await;

    s.apply(
        "cap",
        &s.spec("[{ name: public.a }, { name: public.b }]", ""),
    )
    .await;
    let publication = s
        .captures()
        .get("cap")
        .await
        .unwrap()
        .status
        .unwrap()
        .managed
        .unwrap()
        .publication
        .unwrap();
    siphon_e2e::eventually(Duration::from_secs(60), "public.b in the publication", || {
        let pg = &s.pg;
        let publication = publication.clone();
        async move {
            let n: i64 = pg
                .query_one(
                    "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1 AND tablename = 'b'",
                    &[&publication],
                )
                .await
                .ok()?
                .get(0);
            (n == 1).then_some(())
        }
    })
    .await;
    s.wait_condition("cap", "BackfillComplete", "True", Duration::from_secs(180))
        .await;
    s.pg.batch_execute("INSERT INTO public.b VALUES (301, 'new')")
        .await
        .unwrap();

    let topic = s.topic("public", "b");
    let mut rows = Default::default();
    for _ in 0..20 {
        let records = read_topic(
            &topic,
            "read_committed",
            Duration::from_secs(3),
            Duration::from_secs(30),
        );
        rows = reduce(&records);
        if rows.len() >= 301 {
            break;
        }
    }
    assert_eq!(rows.len(), 301, "300 backfilled rows and one new insert");
    // The worker reports progress on its own cadence, after the rows it
    // describes are in Kafka; wait for the report rather than race it.
    let captures = s.captures();
    let b = siphon_e2e::eventually(Duration::from_secs(60), "public.b reported Done", || {
        let captures = captures.clone();
        async move {
            let tables = captures.get("cap").await.ok()?.status?.progress?.tables;
            tables
                .into_iter()
                .find(|t| t.name == "public.b" && t.state == "Done")
        }
    })
    .await;
    assert!(b.rows_copied >= 300, "{b:?}");
    s.cleanup().await;
}
