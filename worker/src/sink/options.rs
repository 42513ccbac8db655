//! librdkafka producer properties: Siphon's settings, named, plus a
//! passthrough map that may not override them.
//!
//! The defaults trade a few milliseconds of latency for large compressed
//! batches, and bound the producer's queue so that memory stays flat whatever
//! the source throws at it (a full queue is backpressure, not an error).

use std::collections::BTreeMap;

use siphon_crds::worker_config::KafkaConfig;

use crate::config::Secrets;

/// Queue bound of the producer in KiB. 16 MiB holds about 25 000 records
/// of a backfill, a tenth of a second of it, so batches still fill; with
/// 32 MiB the worker's peak RSS went over 64 MiB in a backfill.
pub const QUEUE_MAX_KBYTES: u32 = 16 * 1024;
/// Messages the producer may queue before `QueueFull` pushes back.
pub const QUEUE_MAX_MESSAGES: u32 = 500_000;
/// Time a batch may wait to fill (`linger.ms`).
pub const LINGER_MS: u32 = 5;
/// Upper bound of one batch in bytes (`batch.size`).
pub const BATCH_BYTES: u32 = 1_000_000;
/// How long librdkafka retries a record (`message.timeout.ms`).
pub const MESSAGE_TIMEOUT_MS: u32 = 120_000;
/// Exactly once: how long a Kafka transaction may stay open
/// (`transaction.timeout.ms`). librdkafka refuses a `message.timeout.ms`
/// above it, so in exactly-once mode records are retried this long instead.
pub const TRANSACTION_TIMEOUT_MS: u32 = 60_000;

pub use siphon_crds::kafka_options::reserved_reason;

/// The full property set of the producer. `transactional_id` is set in
/// exactly-once mode.
pub fn producer_properties(
    kafka: &KafkaConfig,
    secrets: &Secrets,
    client_id: &str,
    transactional_id: Option<&str>,
) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        p.insert(k.to_string(), v);
    };
    set("bootstrap.servers", kafka.bootstrap_servers.clone());
    set("client.id", client_id.to_string());
    set("enable.idempotence", "true".into());
    set("acks", "all".into());
    set("compression.type", kafka.compression.clone());
    set("linger.ms", LINGER_MS.to_string());
    set("batch.size", BATCH_BYTES.to_string());
    if kafka.compression != "none" {
        // A compressed batch is read by the compressor record by record
        // anyway: copying each record into the uncompressed batch first is
        // a pass over every byte for nothing (about a tenth of the worker's
        // CPU in a backfill).
        set("message.copy.max.bytes", "0".into());
    }
    set("queue.buffering.max.kbytes", QUEUE_MAX_KBYTES.to_string());
    set(
        "queue.buffering.max.messages",
        QUEUE_MAX_MESSAGES.to_string(),
    );
    // Retries are librdkafka's job until this deadline; past it a record has
    // failed for good and the worker restarts from its last confirmed position.
    set("message.timeout.ms", MESSAGE_TIMEOUT_MS.to_string());
    set("security.protocol", kafka.security_protocol.clone());
    if let Some(m) = &kafka.sasl_mechanism {
        set("sasl.mechanism", m.clone());
    }
    if let Some(u) = &secrets.sasl_username {
        set("sasl.username", u.clone());
    }
    if let Some(pw) = &secrets.sasl_password {
        set("sasl.password", pw.clone());
    }
    if let Some(ca) = &kafka.ssl_ca_location {
        set("ssl.ca.location", ca.clone());
    }
    if let Some(c) = &kafka.ssl_certificate_location {
        set("ssl.certificate.location", c.clone());
    }
    if let Some(k) = &kafka.ssl_key_location {
        set("ssl.key.location", k.clone());
    }
    if let Some(id) = transactional_id {
        set("transactional.id", id.to_string());
        set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS.to_string());
        set("message.timeout.ms", TRANSACTION_TIMEOUT_MS.to_string());
    }
    for (k, v) in &kafka.options {
        if reserved_reason(k).is_none() {
            p.insert(k.clone(), v.clone());
        }
    }
    p
}

/// Properties safe to log: secrets replaced.
pub fn redacted(props: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    props
        .iter()
        .map(|(k, v)| {
            let v = if k.contains("password") || k.contains("secret") {
                "<redacted>".to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safety_settings_cannot_be_overridden() {
        let mut kafka = KafkaConfig {
            bootstrap_servers: "b:9092".into(),
            ..KafkaConfig::default()
        };
        kafka.options.insert("acks".into(), "1".into());
        kafka.options.insert("linger.ms".into(), "50".into());
        let p = producer_properties(&kafka, &Secrets::default(), "siphon-x", None);
        assert_eq!(p["acks"], "all");
        assert_eq!(p["enable.idempotence"], "true");
        assert_eq!(p["linger.ms"], "50", "non-reserved options pass through");
        assert!(!p.contains_key("transactional.id"));
    }

    #[test]
    fn compressed_batches_take_records_by_reference() {
        let mut kafka = KafkaConfig::default();
        let p = producer_properties(&kafka, &Secrets::default(), "c", None);
        assert_eq!(p["compression.type"], "lz4");
        assert_eq!(p["message.copy.max.bytes"], "0");
        // Uncompressed, the batch is what goes on the wire: records are
        // copied into it rather than sent as one small buffer each.
        kafka.compression = "none".into();
        let p = producer_properties(&kafka, &Secrets::default(), "c", None);
        assert!(!p.contains_key("message.copy.max.bytes"));
    }

    #[test]
    fn exactly_once_sets_the_transactional_id() {
        let p = producer_properties(
            &KafkaConfig::default(),
            &Secrets::default(),
            "c",
            Some("siphon-shop"),
        );
        assert_eq!(p["transactional.id"], "siphon-shop");
        // librdkafka refuses to create a transactional producer otherwise.
        let ms = |k: &str| p[k].parse::<u64>().expect("a number");
        assert!(ms("message.timeout.ms") <= ms("transaction.timeout.ms"));
    }

    #[test]
    fn secrets_are_redacted_for_logs() {
        let secrets = Secrets {
            sasl_username: Some("u".into()),
            sasl_password: Some("hunter2".into()),
            ..Secrets::default()
        };
        let p = producer_properties(&KafkaConfig::default(), &secrets, "c", None);
        assert_eq!(p["sasl.password"], "hunter2");
        assert_eq!(redacted(&p)["sasl.password"], "<redacted>");
    }
}
