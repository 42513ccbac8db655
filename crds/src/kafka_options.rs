//! librdkafka producer keys that Siphon sets itself and that `kafka.options`
//! may therefore not override. Shared by the operator (which refuses such a
//! spec with a condition) and the worker (which refuses such a config).

/// Why a passthrough key may not be set, or `None` when it may.
pub fn reserved_reason(key: &str) -> Option<&'static str> {
    match key {
        "bootstrap.servers" | "metadata.broker.list" => Some("set kafka.bootstrapServers instead"),
        "enable.idempotence"
        | "acks"
        | "request.required.acks"
        | "max.in.flight.requests.per.connection"
        | "max.in.flight" => {
            Some("Siphon sets it: idempotent delivery with acks=all is what makes delivery safe")
        }
        "transactional.id" => {
            Some("Siphon derives it from the capture name (kafka.delivery: ExactlyOnce)")
        }
        "compression.type" | "compression.codec" => Some("set kafka.compression instead"),
        "security.protocol" => Some("set kafka.securityProtocol instead"),
        "sasl.mechanism" | "sasl.mechanisms" => Some("set kafka.saslMechanism instead"),
        "sasl.username" | "sasl.password" => {
            Some("secrets come from the auth Secret, never from options")
        }
        "ssl.key.password" | "ssl.keystore.password" => {
            Some("secrets come from the auth Secret, never from options")
        }
        _ => None,
    }
}
