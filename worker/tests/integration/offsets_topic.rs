//! The exactly-once position in the offsets topic, against the real Kafka of
//! the local stack: `offsets::load` returns the newest *committed* position
//! of its capture, never one of an aborted or still open Kafka transaction,
//! never another capture's.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use siphon_worker::change::Lsn;
use siphon_worker::offsets::{self, Position};
use siphon_worker::sink::KafkaSink;

fn props(transactional_id: &str) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    p.insert("bootstrap.servers".into(), common::kafka_bootstrap());
    p.insert("enable.idempotence".into(), "true".into());
    p.insert("acks".into(), "all".into());
    p.insert("transactional.id".into(), transactional_id.into());
    p.insert("transaction.timeout.ms".into(), "60000".into());
    p.insert("message.timeout.ms".into(), "60000".into());
    p
}

fn position(lsn: u64) -> Vec<u8> {
    Position {
        lsn,
        ..Position::default()
    }
    .encode()
}

async fn write(sink: &KafkaSink<Lsn>, topic: &str, key: &str, lsn: u64, commit: bool) {
    sink.begin_transaction().expect("begin");
    sink.send(topic, Some(key.as_bytes()), Some(&position(lsn)), &[])
        .await
        .expect("send");
    if commit {
        sink.commit_transaction(Duration::from_secs(30))
            .await
            .expect("commit");
    } else {
        sink.flush(Duration::from_secs(30)).await.expect("flush");
        sink.abort_transaction(Duration::from_secs(30))
            .await
            .expect("abort");
    }
}

async fn load(topic: &str, key: &str) -> Option<u64> {
    let (topic, key) = (topic.to_string(), key.to_string());
    let props = props("unused");
    tokio::task::spawn_blocking(move || {
        offsets::load(&props, &topic, &key, Duration::from_secs(15))
    })
    .await
    .expect("load task")
    .expect("load")
    .map(|p| p.lsn)
}

/// A compacted one-partition topic, as the offsets topic is.
async fn compacted_topic(topic: &str) {
    let settings = siphon_crds::capture::TopicCreation {
        create: true,
        partitions: 1,
        replication_factor: Some(1),
        config: Default::default(),
    };
    siphon_worker::sink::topics::ensure(
        &props("unused"),
        &[topic.to_string()],
        &settings,
        &[("cleanup.policy", "compact")],
    )
    .await
    .expect("create the offsets topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_committed_positions_of_the_capture_count() {
    let name = common::unique("offsets");
    let topic = format!("{name}.offsets");
    compacted_topic(&topic).await;
    let cleanup = common::delete_topics(&topic);

    assert_eq!(
        load(&topic, "shop").await,
        None,
        "an empty topic has no position"
    );

    let sink: KafkaSink<Lsn> = KafkaSink::new(&props(&format!("{name}-a"))).expect("producer");
    sink.init_transactions(Duration::from_secs(60))
        .await
        .expect("init transactions");
    write(&sink, &topic, "shop", 100, true).await;
    write(&sink, &topic, "other", 900, true).await;
    write(&sink, &topic, "shop", 200, false).await;
    assert_eq!(
        load(&topic, "shop").await,
        Some(100),
        "the aborted position and the other capture's are ignored"
    );

    write(&sink, &topic, "shop", 300, true).await;
    assert_eq!(load(&topic, "shop").await, Some(300));

    // A transaction left open (a worker killed before its commit): invisible.
    sink.begin_transaction().expect("begin");
    sink.send(&topic, Some(b"shop"), Some(&position(400)), &[])
        .await
        .expect("send");
    sink.flush(Duration::from_secs(30)).await.expect("flush");
    assert_eq!(load(&topic, "shop").await, Some(300));

    // The next worker fences the open transaction away.
    drop(sink);
    let next: KafkaSink<Lsn> = KafkaSink::new(&props(&format!("{name}-a"))).expect("producer");
    next.init_transactions(Duration::from_secs(60))
        .await
        .expect("init transactions");
    assert_eq!(load(&topic, "shop").await, Some(300));
    write(&next, &topic, "shop", 500, true).await;
    assert_eq!(load(&topic, "shop").await, Some(500));
    cleanup.await;
}

/// A worker fenced by a newer one (same transactional id) learns it at its
/// next commit: the commit fails for good, saying another worker took over,
/// rather than as a retriable timeout (which would restart it to fence the
/// newer one in turn). Nothing it sent after the takeover is visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_workers_commit_fails_for_good() {
    let name = common::unique("fenced");
    let topic = format!("{name}.offsets");
    compacted_topic(&topic).await;
    let cleanup = common::delete_topics(&topic);
    let id = format!("{name}-a");

    let old: KafkaSink<Lsn> = KafkaSink::new(&props(&id)).expect("producer");
    old.init_transactions(Duration::from_secs(60))
        .await
        .expect("init transactions");
    write(&old, &topic, "shop", 100, true).await;

    let new: KafkaSink<Lsn> = KafkaSink::new(&props(&id)).expect("producer");
    new.init_transactions(Duration::from_secs(60))
        .await
        .expect("the newer worker takes over");

    old.begin_transaction().expect("begin");
    let sent = old
        .send(&topic, Some(b"shop"), Some(&position(200)), &[])
        .await;
    let outcome = match sent {
        Ok(()) => old.start_commit(Duration::from_secs(50)).outcome().await,
        Err(e) => Err(e),
    };
    let error = outcome.expect_err("a fenced producer cannot commit");
    assert!(!error.is_transient(), "fenced is for good: {error}");
    assert!(
        error.to_string().contains("another worker took over"),
        "the error names the takeover: {error}"
    );
    assert_eq!(load(&topic, "shop").await, Some(100));
    drop(new);
    cleanup.await;
}
