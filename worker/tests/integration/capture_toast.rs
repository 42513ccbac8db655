//! A TOASTed column that an UPDATE leaves unchanged: PostgreSQL does not send
//! it, so with the default replica identity the record carries Debezium's
//! placeholder; with REPLICA IDENTITY FULL it carries the real value, and the
//! key stays the primary key.

use crate::common;

use std::time::Duration;

use common::{Fixture, TopicReader};
use serde_json::json;

const PLACEHOLDER: &str = "__debezium_unavailable_value";

/// Creates `docs` with a 32 kB row of random hex (md5s do not compress, so
/// the value really lives in the TOAST table) and returns that value.
async fn setup(db: &tokio_postgres::Client, publication: &str, full: bool) -> String {
    db.batch_execute(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
         {}
         CREATE PUBLICATION {publication} FOR TABLE docs;",
        if full {
            "ALTER TABLE docs REPLICA IDENTITY FULL;"
        } else {
            ""
        }
    ))
    .await
    .expect("setup");
    db.query_one(
        "SELECT string_agg(md5(random()::text || g::text), '') FROM generate_series(1, 1000) g",
        &[],
    )
    .await
    .expect("random text")
    .get(0)
}

async fn toasted_bytes(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = 'docs'::regclass",
        &[],
    )
    .await
    .expect("toast size")
    .get(0)
}

/// Inserts the big row, updates another column, returns (insert, update) records.
async fn insert_then_update(fx: &Fixture, full: bool) -> (String, common::Rec, common::Rec) {
    let db = fx.sql().await;
    let big = setup(&db, &fx.name, full).await;
    assert!(big.len() > 8 * 1024);
    let mut worker = fx.spawn(&fx.config(&["public.docs"]));
    worker.wait_ready(Duration::from_secs(60)).await;
    db.execute("INSERT INTO docs VALUES (1, $1, 0)", &[&big])
        .await
        .expect("insert");
    assert!(
        toasted_bytes(&db).await > 8 * 1024,
        "the body is stored out of line"
    );
    db.execute("UPDATE docs SET n = n + 1 WHERE id = 1", &[])
        .await
        .expect("update");
    let mut reader = TopicReader::new(&fx.topic("public", "docs"), "read_uncommitted");
    let records = reader.read_until(
        Duration::from_secs(60),
        Duration::from_secs(2),
        "insert and update",
        |r| r.len() >= 2,
    );
    assert_eq!(records.len(), 2, "{records:#?}");
    let (insert, update) = (records[0].clone(), records[1].clone());
    drop(worker);
    (big, insert, update)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_identity_writes_the_placeholder_for_unchanged_toast() {
    let fx = Fixture::new("toastdef").await;
    let (big, insert, update) = insert_then_update(&fx, false).await;
    assert_eq!(insert.op(), Some("c"));
    assert_eq!(
        insert.after().and_then(|a| a["body"].as_str()),
        Some(big.as_str()),
        "an insert carries the whole value"
    );
    assert_eq!(update.op(), Some("u"));
    assert_eq!(update.key, Some(json!({"id": 1})));
    let after = update.after().expect("after");
    assert_eq!(after["n"], json!(1));
    assert_eq!(after["body"], json!(PLACEHOLDER));
    assert_eq!(update.before(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_full_writes_the_real_value_and_keeps_the_primary_key() {
    let fx = Fixture::new("toastfull").await;
    let (big, insert, update) = insert_then_update(&fx, true).await;
    assert_eq!(insert.key, Some(json!({"id": 1})));
    assert_eq!(update.op(), Some("u"));
    assert_eq!(
        update.key,
        Some(json!({"id": 1})),
        "the key is the primary key, not every column"
    );
    let after = update.after().expect("after");
    assert_eq!(after["n"], json!(1));
    assert_eq!(after["body"].as_str(), Some(big.as_str()));
    let before = update.before().expect("FULL gives a before image");
    assert_eq!(before["n"], json!(0));
    assert_eq!(before["body"].as_str(), Some(big.as_str()));
}
