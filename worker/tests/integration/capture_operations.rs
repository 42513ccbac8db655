//! Each row operation reaches Kafka as a Debezium record on
//! `<prefix>.<schema>.<table>`; `logical.operations` filters them.

use crate::common;

use std::time::Duration;

use common::{Fixture, Rec, TopicReader};
use serde_json::json;

const READ: Duration = Duration::from_secs(60);
const QUIET: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_update_delete_truncate_become_c_u_d_t_records() {
    let fx = Fixture::new("ops").await;
    let db = fx.sql().await;
    db.batch_execute(&format!(
        "CREATE SCHEMA app;
         CREATE TABLE app.items (id int PRIMARY KEY, name text, qty int);
         CREATE PUBLICATION {} FOR TABLE app.items;",
        fx.name
    ))
    .await
    .expect("setup");
    let mut worker = fx.spawn(&fx.config(&["app.items"]));
    worker.wait_ready(Duration::from_secs(60)).await;

    // One transaction per statement.
    for statement in [
        "INSERT INTO app.items VALUES (1, 'apple', 3)",
        "UPDATE app.items SET qty = 4 WHERE id = 1",
        "DELETE FROM app.items WHERE id = 1",
        "INSERT INTO app.items VALUES (2, 'pear', 1)",
        "TRUNCATE app.items",
    ] {
        db.batch_execute(statement).await.expect(statement);
    }
    let topic = fx.topic("app", "items");
    assert_eq!(topic, format!("{}.app.items", fx.name));
    let mut reader = TopicReader::new(&topic, "read_uncommitted");
    let records: Vec<Rec> = reader
        .read_until(READ, QUIET, "six records", |r| r.len() >= 6)
        .to_vec();
    let shape: Vec<(Option<&str>, Option<serde_json::Value>)> =
        records.iter().map(|r| (r.op(), r.key.clone())).collect();
    assert_eq!(
        shape,
        vec![
            (Some("c"), Some(json!({"id": 1}))),
            (Some("u"), Some(json!({"id": 1}))),
            (Some("d"), Some(json!({"id": 1}))),
            (None, Some(json!({"id": 1}))),
            (Some("c"), Some(json!({"id": 2}))),
            (Some("t"), None),
        ],
        "ops and keys in order: {records:#?}"
    );

    let [insert, update, delete, tombstone, _, truncate] = &records[..] else {
        panic!("six records expected");
    };
    assert_eq!(insert.before(), None);
    assert_eq!(
        insert.after(),
        Some(&json!({"id": 1, "name": "apple", "qty": 3}))
    );
    assert_eq!(update.before(), None, "default identity: no before image");
    assert_eq!(
        update.after(),
        Some(&json!({"id": 1, "name": "apple", "qty": 4}))
    );
    let before = delete.before().expect("a delete has a before image");
    assert_eq!(before["id"], json!(1), "the key of the deleted row");
    assert_eq!(delete.after(), None);
    assert_eq!(tombstone.value, None, "a tombstone follows the delete");
    assert_eq!(truncate.before(), None);
    assert_eq!(truncate.after(), None);

    let source = &insert.value.as_ref().expect("value")["source"];
    assert_eq!(source["connector"], json!("postgresql"));
    assert_eq!(source["db"], json!(fx.name));
    assert_eq!(source["schema"], json!("app"));
    assert_eq!(source["table"], json!("items"));
    assert!(source["lsn"].as_i64().is_some_and(|l| l > 0), "{source}");
    assert!(source["txId"].as_i64().is_some_and(|x| x > 0), "{source}");
    assert!(source["ts_ms"].as_i64().is_some_and(|t| t > 0), "{source}");
    assert!(!source["snapshot"].is_null(), "{source}");
    for r in records.iter().filter(|r| r.value.is_some()) {
        let v = r.value.as_ref().expect("value");
        assert!(v["ts_ms"].as_i64().is_some_and(|t| t > 0), "{v}");
    }
    // Each statement ran in its own transaction, in commit order.
    let txids: Vec<i64> = records
        .iter()
        .filter_map(|r| r.value.as_ref()?["source"]["txId"].as_i64())
        .collect();
    assert!(txids.windows(2).all(|w| w[0] < w[1]), "{txids:?}");

    worker.terminate();
    let status = worker
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the worker stops on SIGTERM");
    assert!(status.success(), "{status}\n{}", worker.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_filter_drops_the_other_operations() {
    let fx = Fixture::new("opsfilter").await;
    let db = fx.sql().await;
    db.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, qty int);
         CREATE PUBLICATION {} FOR TABLE items;",
        fx.name
    ))
    .await
    .expect("setup");
    let mut config = fx.config(&["public.items"]);
    config.operations = vec!["insert".into()];
    let mut worker = fx.spawn(&config);
    worker.wait_ready(Duration::from_secs(60)).await;

    db.batch_execute(
        "INSERT INTO items VALUES (1, 1);
         UPDATE items SET qty = 2 WHERE id = 1;
         DELETE FROM items WHERE id = 1;
         TRUNCATE items;
         INSERT INTO items VALUES (2, 1);",
    )
    .await
    .expect("changes");

    // The second insert comes after everything else in the WAL: once it is
    // in Kafka, the filtered changes were processed (one partition, in order).
    let mut reader = TopicReader::new(&fx.topic("public", "items"), "read_uncommitted");
    let records = reader.read_until(READ, QUIET, "the second insert", |r| {
        r.iter().any(|r| r.id("id") == Some(2))
    });
    let shape: Vec<(Option<&str>, Option<i64>)> =
        records.iter().map(|r| (r.op(), r.id("id"))).collect();
    assert_eq!(
        shape,
        vec![(Some("c"), Some(1)), (Some("c"), Some(2))],
        "only inserts, no tombstone"
    );
    drop(worker);
}
