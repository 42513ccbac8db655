//! The stack's Kafka is real: rdkafka produces and consumes, and transactions
//! are isolated (a `read_committed` consumer sees a committed transaction and
//! never an aborted one).

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, TopicPartitionList};
use siphon_e2e::{kafka_bootstrap, unique};

fn producer(transactional_id: Option<&str>) -> BaseProducer {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", kafka_bootstrap())
        .set("enable.idempotence", "true");
    if let Some(id) = transactional_id {
        cfg.set("transactional.id", id);
    }
    cfg.create().expect("producer")
}

fn read_all(topic: &str, isolation: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", unique("stack-test"))
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut idle = 0;
    while std::time::Instant::now() < deadline && idle < 6 {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                idle = 0;
                out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            }
            Some(Err(e)) => panic!("consume failed: {e}"),
            None => idle += 1,
        }
    }
    out
}

#[test]
fn produce_and_consume_round_trip() {
    let topic = unique("stack-plain");
    let p = producer(None);
    for i in 0..10 {
        p.send(BaseRecord::to(&topic).key("k").payload(&format!("m{i}")))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let got = read_all(&topic, "read_uncommitted");
    assert_eq!(got, (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
}

#[test]
fn read_committed_sees_committed_and_never_aborted() {
    let topic = unique("stack-txn");
    let p = producer(Some(&unique("stack-txn-id")));
    p.init_transactions(Duration::from_secs(30)).unwrap();

    p.begin_transaction().unwrap();
    p.send(BaseRecord::to(&topic).key("k").payload("aborted"))
        .map_err(|(e, _)| e)
        .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
    p.abort_transaction(Duration::from_secs(30)).unwrap();

    p.begin_transaction().unwrap();
    p.send(BaseRecord::to(&topic).key("k").payload("committed"))
        .map_err(|(e, _)| e)
        .unwrap();
    p.commit_transaction(Duration::from_secs(30)).unwrap();

    assert_eq!(
        read_all(&topic, "read_committed"),
        vec!["committed".to_string()]
    );
    let uncommitted = read_all(&topic, "read_uncommitted");
    assert!(
        uncommitted.contains(&"aborted".to_string()),
        "the aborted record is in the log: {uncommitted:?}"
    );
}
