//! The benchmark's side of Kafka: counting what a run wrote, reading records
//! back with their times for the latency figure, and deleting the run's topics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// A client of the stack's broker.
#[derive(Clone, Debug)]
pub struct Kafka {
    pub bootstrap: String,
}

impl Kafka {
    fn consumer(&self, isolation: &str) -> Result<BaseConsumer> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "siphon-bench")
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            // Data flows continuously while we measure: the broker answers a
            // fetch as soon as one byte is there, this only bounds idle waits.
            .set("fetch.wait.max.ms", "100")
            .create()
            .context("creating a Kafka consumer")
    }

    /// Offsets written to partition 0 of `topic` (records, plus transaction
    /// markers in exactly-once mode); 0 when the topic does not exist.
    pub fn high_watermark(&self, topic: &str) -> Result<i64> {
        Ok(self.watermarks()?.high(topic))
    }

    /// One client for many high-watermark reads: a client per read starts
    /// threads and a connection, CPU a timed worker would share.
    pub fn watermarks(&self) -> Result<Watermarks> {
        Ok(Watermarks {
            consumer: self.consumer("read_uncommitted")?,
        })
    }

    /// Delete every topic whose name starts with `prefix`.
    pub async fn delete_topics(&self, prefix: &str) -> Result<()> {
        let consumer = self.consumer("read_uncommitted")?;
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .context("listing topics")?;
        let names: Vec<String> = metadata
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| n.starts_with(prefix))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .context("creating a Kafka admin client")?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        admin
            .delete_topics(
                &refs,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .context("deleting the benchmark's topics")?;
        Ok(())
    }

    /// Read `topic` from its start on a thread until `stop` is set, timing each
    /// record: see [`Arrival`].
    pub fn arrivals(
        &self,
        topic: &str,
        stop: Arc<AtomicBool>,
    ) -> Result<std::thread::JoinHandle<Result<Vec<Arrival>>>> {
        let consumer = self.consumer("read_committed")?;
        let topic = topic.to_string();
        Ok(std::thread::spawn(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
            consumer.assign(&tpl)?;
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Some(message) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let received_us = now_us();
                let Ok(message) = message else { continue };
                let Some(payload) = message.payload() else {
                    continue;
                };
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else {
                    continue;
                };
                let source = &value["source"];
                let commit_us = source["ts_us"]
                    .as_i64()
                    .or_else(|| source["ts_ms"].as_i64().map(|ms| ms * 1000));
                if let Some(commit_us) = commit_us {
                    out.push(Arrival {
                        commit_us,
                        received_us,
                        create_time_ms: message.timestamp().to_millis(),
                    });
                }
            }
            Ok(out)
        }))
    }
}

impl Kafka {
    /// Kafka timestamps (CreateTime, ms) of the first record of partition 0
    /// of `topic` and of record `count - 1`.
    pub fn first_and_last_times(&self, topic: &str, count: u64) -> Result<(i64, i64)> {
        let consumer = self.consumer("read_uncommitted")?;
        let at = |offset: Offset| -> Result<i64> {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, 0, offset)?;
            consumer.assign(&tpl)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                    return message
                        .timestamp()
                        .to_millis()
                        .with_context(|| format!("a record of {topic} without a timestamp"));
                }
            }
            anyhow::bail!("no record at {offset:?} of {topic} within 30s")
        };
        let last = i64::try_from(count.saturating_sub(1))?;
        Ok((at(Offset::Beginning)?, at(Offset::Offset(last))?))
    }
}

/// High watermarks through one consumer, see [`Kafka::watermarks`].
pub struct Watermarks {
    consumer: BaseConsumer,
}

impl Watermarks {
    /// As [`Kafka::high_watermark`].
    pub fn high(&self, topic: &str) -> i64 {
        self.consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .map(|(_, high)| high)
            .unwrap_or(0)
    }
}

/// One record as the latency consumer saw it.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// `source.ts_us` (the commit time PostgreSQL wrote in the WAL).
    pub commit_us: i64,
    /// When the consumer got it (wall clock of the same host).
    pub received_us: i64,
    /// The record's timestamp: CreateTime, set by the producer at send.
    pub create_time_ms: Option<i64>,
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
