//! Reading a Kafka topic back, for assertions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;

use crate::{kafka_bootstrap, unique};

/// One record as JSON (key and value; `None` for a null).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonRecord {
    pub key: Option<Value>,
    pub value: Option<Value>,
    pub partition: i32,
    pub offset: i64,
}

impl JsonRecord {
    /// `op` of a Debezium value.
    pub fn op(&self) -> Option<&str> {
        self.value.as_ref()?.get("op")?.as_str()
    }
    /// `after` of a Debezium value.
    pub fn after(&self) -> Option<&Value> {
        self.value.as_ref()?.get("after").filter(|v| !v.is_null())
    }
}

/// Read every record of `topic` until `quiet` passes without a new one (or
/// `max` elapses). `isolation` is `read_committed` or `read_uncommitted`.
pub fn read_topic(topic: &str, isolation: &str, quiet: Duration, max: Duration) -> Vec<JsonRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", unique("e2e-reader"))
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .expect("kafka consumer");
    let deadline = Instant::now() + max;
    // Wait for the topic to exist.
    let partitions = loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
        if let Ok(md) = md {
            let parts: Vec<i32> = md
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if !parts.is_empty() {
                break parts;
            }
        }
        if Instant::now() > deadline {
            return Vec::new();
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut last = Instant::now();
    while Instant::now() < deadline && last.elapsed() < quiet {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let parse = |b: Option<&[u8]>| {
                    b.map(|b| serde_json::from_slice(b).expect("record is JSON"))
                };
                out.push(JsonRecord {
                    key: parse(m.key()),
                    value: parse(m.payload()),
                    partition: m.partition(),
                    offset: m.offset(),
                });
            }
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// [`read_topic`] from async code (`read_uncommitted`, 2 s quiet, 30 s at most).
pub async fn read_topic_now(topic: &str) -> Vec<JsonRecord> {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        read_topic(
            &topic,
            "read_uncommitted",
            Duration::from_secs(2),
            Duration::from_secs(30),
        )
    })
    .await
    .expect("topic reader")
}

/// Reduce change records by key: the last value wins, a tombstone or a delete
/// removes the key. Returns `after` images keyed by the key's JSON text.
pub fn reduce(records: &[JsonRecord]) -> BTreeMap<String, Value> {
    let mut rows = BTreeMap::new();
    for r in records {
        let Some(key) = &r.key else { continue };
        let k = key.to_string();
        match (r.op(), r.after()) {
            (_, Some(after)) => {
                rows.insert(k, after.clone());
            }
            (Some("d"), None) | (None, None) => {
                rows.remove(&k);
            }
            _ => {}
        }
    }
    rows
}
