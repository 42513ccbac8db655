//! Creating the topics a capture writes to, when asked (`kafka.topics.create`).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use siphon_crds::capture::TopicCreation;

use super::{SinkError, classify};

/// Create each topic that does not exist yet; existing ones are left as they are.
pub async fn ensure(
    connection: &BTreeMap<String, String>,
    names: &[String],
    settings: &TopicCreation,
    extra_config: &[(&str, &str)],
) -> Result<(), SinkError> {
    if names.is_empty() {
        return Ok(());
    }
    let mut cfg = ClientConfig::new();
    for (k, v) in connection {
        if is_connection_key(k) {
            cfg.set(k, v);
        }
    }
    let admin: AdminClient<DefaultClientContext> = cfg.create().map_err(SinkError::Create)?;
    let mut topic_config: Vec<(&str, &str)> = settings
        .config
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    topic_config.extend_from_slice(extra_config);
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            let mut t = NewTopic::new(
                n,
                settings.partitions,
                // -1: the broker's default.replication.factor (KIP-464).
                TopicReplication::Fixed(settings.replication_factor.unwrap_or(-1)),
            );
            for (k, v) in &topic_config {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new_topics.iter(), &opts)
        .await
        .map_err(classify)?;
    for result in results {
        if let Err((topic, code)) = result
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            tracing::warn!(%topic, ?code, "cannot create topic");
            return Err(classify(rdkafka::error::KafkaError::AdminOp(code)));
        }
    }
    Ok(())
}

/// Properties that describe how to reach and authenticate to the cluster (as
/// opposed to producer behaviour), shared by admin clients and consumers.
pub fn is_connection_key(key: &str) -> bool {
    key == "bootstrap.servers"
        || key == "client.id"
        || key.starts_with("security.")
        || key.starts_with("sasl.")
        || key.starts_with("ssl.")
}
