//! Captures through the stack broker's secured listeners, with the material
//! in `kafka.authSecretRef` as a user keeps it: TLS (`ca.crt`), mutual TLS
//! (`ca.crt`, `tls.crt`, `tls.key`, against a listener that demands a client
//! certificate) and SASL_SSL with SCRAM-SHA-512 (`username`, `password`,
//! `ca.crt`). A capture without a client certificate at the mutual-TLS
//! listener never delivers and says so.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;
use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use siphon_e2e::stack_var;

fn pem(name: &str) -> String {
    let path = format!("{}/{name}", stack_var("KAFKA_TLS_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn secret(s: &Scenario, name: &str, data: serde_json::Value) {
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .create(
            &Default::default(),
            &serde_json::from_value(json!({ "metadata": { "name": name }, "stringData": data }))
                .unwrap(),
        )
        .await
        .unwrap();
}

/// The scenario's spec for `table`, through `bootstrap` with `kafka_extra`.
fn spec(s: &Scenario, table: &str, bootstrap: &str, kafka_extra: &str) -> String {
    s.spec(
        &format!("[{{ name: public.{table} }}]"),
        "snapshot: { mode: Never }",
    )
    .replace(
        &format!("bootstrapServers: \"{}\"", stack_var("KAFKA_BOOTSTRAP")),
        &format!("bootstrapServers: \"{bootstrap}\", {kafka_extra}"),
    )
}

async fn delivered(s: &Scenario, table: &str) {
    s.pg.batch_execute(&format!("INSERT INTO public.{table} VALUES (1), (2), (3)"))
        .await
        .unwrap();
    s.wait_ids(table, &[1, 2, 3]).await;
}

#[tokio::test]
async fn captures_deliver_through_tls_mutual_tls_and_sasl_ssl() {
    let s = Scenario::new("e2e-kafka-tls").await;
    s.pg.batch_execute(
        "CREATE TABLE public.tls (id int PRIMARY KEY);
         CREATE TABLE public.mtls (id int PRIMARY KEY);
         CREATE TABLE public.scram (id int PRIMARY KEY);
         CREATE TABLE public.nocert (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    secret(&s, "kafka-ca", json!({ "ca.crt": pem("ca.crt") })).await;
    secret(
        &s,
        "kafka-client",
        json!({ "ca.crt": pem("ca.crt"), "tls.crt": pem("client.crt"), "tls.key": pem("client.key") }),
    )
    .await;
    secret(
        &s,
        "kafka-scram",
        json!({
            "ca.crt": pem("ca.crt"),
            "username": stack_var("KAFKA_SCRAM_USER"),
            "password": stack_var("KAFKA_SCRAM_PASSWORD"),
        }),
    )
    .await;

    s.apply(
        "tls",
        &spec(
            &s,
            "tls",
            &stack_var("KAFKA_SSL_BOOTSTRAP"),
            "securityProtocol: ssl, authSecretRef: { name: kafka-ca }",
        ),
    )
    .await;
    s.apply(
        "mtls",
        &spec(
            &s,
            "mtls",
            &stack_var("KAFKA_MTLS_BOOTSTRAP"),
            "securityProtocol: ssl, authSecretRef: { name: kafka-client }",
        ),
    )
    .await;
    s.apply(
        "scram",
        &spec(
            &s,
            "scram",
            &stack_var("KAFKA_SASL_SSL_BOOTSTRAP"),
            "securityProtocol: sasl_ssl, saslMechanism: SCRAM-SHA-512, authSecretRef: { name: kafka-scram }",
        ),
    )
    .await;
    for name in ["tls", "mtls", "scram"] {
        s.wait_condition(name, "Ready", "True", READY_TIMEOUT).await;
    }
    for table in ["tls", "mtls", "scram"] {
        delivered(&s, table).await;
    }

    // The mutual-TLS listener refuses a client without a certificate: the
    // capture never gets Ready and tells why.
    s.apply(
        "nocert",
        &spec(
            &s,
            "nocert",
            &stack_var("KAFKA_MTLS_BOOTSTRAP"),
            "securityProtocol: ssl, authSecretRef: { name: kafka-ca }",
        ),
    )
    .await;
    let api = s.captures();
    let why = siphon_e2e::eventually(
        Duration::from_secs(120),
        "nocert to say why it cannot deliver",
        || {
            let api = api.clone();
            async move {
                let ready = api
                    .get("nocert")
                    .await
                    .ok()?
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Ready")?;
                (ready.status == "False"
                    && (ready.reason == "KafkaUnreachable" || ready.reason == "CaptureInterrupted"))
                    .then_some(ready)
            }
        },
    )
    .await;
    assert!(!why.message.is_empty());
    let secrets_in_status =
        serde_json::to_string(&s.captures().get("scram").await.unwrap().status).unwrap();
    assert!(
        !secrets_in_status.contains(&stack_var("KAFKA_SCRAM_PASSWORD")),
        "no secret in the status"
    );
    s.cleanup().await;
}
