//! The capture's durable position in a compacted Kafka topic.
//!
//! One record per capture (key = capture name) holds the last source position
//! whose records Kafka holds, and the backfill progress per table. In
//! exactly-once mode the position record is written in the same Kafka
//! transaction as the records it covers, so after a crash the two can never
//! disagree: the worker skips every source transaction at or before the stored
//! LSN. In at-least-once mode the slot's `confirmed_flush_lsn` is the stream
//! position and the topic only carries backfill progress.
//!
//! A polling capture keeps its whole position here: per table the (cursor,
//! key) of the last row delivered, and the deletes drained into Kafka but
//! perhaps not yet removed from the deletes table.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::change::Lsn;
use crate::sink::topics::is_connection_key;

/// Backfill progress of one table.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TableBackfill {
    /// `Pending`, `Running`, `Done` or `Skipped`.
    pub state: String,
    /// Primary key (text values) of the last row of the last completed chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_key: Option<Vec<Option<String>>>,
    #[serde(default)]
    pub rows: u64,
}

/// What a capture has durably delivered.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Position {
    /// End LSN of the last source transaction fully in Kafka (exactly-once).
    #[serde(default)]
    pub lsn: u64,
    /// Backfill progress per `schema.table`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backfill: BTreeMap<String, TableBackfill>,
    /// Id of the last on-demand snapshot request that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_request: Option<String>,
    /// Polling: per table name, the last row delivered.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub polled: BTreeMap<String, PolledPosition>,
    /// Polling: `seq` of rows of the deletes table that are in Kafka; a
    /// restart removes them from the table before draining it again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drained_deletes: Vec<i64>,
}

/// Where polling of one table stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct PolledPosition {
    /// Cursor of the last row delivered, in PostgreSQL's text form.
    pub cursor: String,
    /// Its key, in key column order (text forms).
    pub key: Vec<Option<String>>,
}

impl Position {
    pub fn lsn(&self) -> Lsn {
        Lsn(self.lsn)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Reading the offsets topic failed.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("cannot read the offsets topic {topic}: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "the offsets topic {topic} holds an unreadable position for {key}: {source}; delete that record to start over"
    )]
    Corrupt {
        topic: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Read the newest committed position of `key` (read_committed, so aborted
/// transactions are invisible).
pub fn load(
    connection: &BTreeMap<String, String>,
    topic: &str,
    key: &str,
    timeout: Duration,
) -> Result<Option<Position>, OffsetsError> {
    let kafka = |source| OffsetsError::Kafka {
        topic: topic.to_string(),
        source,
    };
    let mut cfg = ClientConfig::new();
    for (k, v) in connection {
        if is_connection_key(k) {
            cfg.set(k, v);
        }
    }
    cfg.set("group.id", "siphon-offsets-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = cfg.create().map_err(kafka)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut latest: Option<Vec<u8>> = None;
    let mut found = false;
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(kafka)?;
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(kafka)?;
        consumer.assign(&tpl).map_err(kafka)?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // Control records of transactions occupy offsets too: stop once the
            // consumer's position reaches the high watermark.
            let position = consumer
                .position()
                .ok()
                .and_then(|p| p.find_partition(topic, partition).map(|e| e.offset()));
            if let Some(Offset::Offset(o)) = position
                && o >= high
            {
                break;
            }
            if std::time::Instant::now() > deadline {
                break;
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.key() == Some(key.as_bytes()) => {
                    found = true;
                    latest = m.payload().map(<[u8]>::to_vec);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(kafka(e)),
                None => {}
            }
        }
    }
    if !found {
        return Ok(None);
    }
    match latest {
        None => Ok(None),
        Some(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| OffsetsError::Corrupt {
                    topic: topic.to_string(),
                    key: key.to_string(),
                    source,
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_as_json() {
        let mut p = Position {
            lsn: 0x16B_3748,
            ..Position::default()
        };
        p.backfill.insert(
            "public.orders".into(),
            TableBackfill {
                state: siphon_crds::status::table_state::RUNNING.into(),
                last_key: Some(vec![Some("42".into())]),
                rows: 42,
            },
        );
        let back: Position = serde_json::from_slice(&p.encode()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.lsn().to_string(), "0/16B3748");
    }
}
