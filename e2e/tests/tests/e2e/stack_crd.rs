//! The stack's API server is real: it stores a PostgresCapture, streams watch
//! events for it, and refuses specs that break the schema or its CEL rules.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use siphon_crds::PostgresCapture;
use siphon_e2e::{kube_client, unique};

fn capture(name: &str, spec_yaml: &str) -> PostgresCapture {
    let spec = serde_yaml::from_str(spec_yaml).expect("fixture spec parses");
    PostgresCapture::new(name, spec)
}

const SPEC: &str = r#"
postgres: { host: 127.0.0.1, database: shop, credentialsSecretRef: { name: pg } }
tables: [{ name: public.orders }]
kafka: { bootstrapServers: "127.0.0.1:9092", topicPrefix: shop }
suspend: true
"#;

#[tokio::test]
async fn stores_and_watches_a_capture() {
    let client = kube_client().await;
    let api: Api<PostgresCapture> = Api::namespaced(client, "default");
    let name = unique("crd-store");
    let mut events = watcher(
        api.clone(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .applied_objects()
    .boxed();
    let created = api
        .create(&PostParams::default(), &capture(&name, SPEC))
        .await
        .unwrap();
    assert_eq!(
        created.spec.postgres.port, 5432,
        "schema default filled in by the API server"
    );
    assert_eq!(
        created.spec.kafka.format,
        siphon_crds::RecordFormat::Debezium
    );
    let seen = tokio::time::timeout(Duration::from_secs(20), events.try_next())
        .await
        .expect("a watch event within 20s")
        .unwrap()
        .unwrap();
    assert_eq!(seen.metadata.name.as_deref(), Some(name.as_str()));
    api.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn rejects_specs_that_break_the_schema() {
    let client = kube_client().await;
    let api: Api<PostgresCapture> = Api::namespaced(client, "default");
    let cases = [
        (
            "polling-without-block",
            SPEC.replace("suspend: true", "mode: Polling"),
            "spec.polling is required",
        ),
        (
            "bad-table",
            SPEC.replace("public.orders", "orders"),
            "spec.tables[0].name",
        ),
        (
            "bad-port",
            SPEC.replace("database: shop", "database: shop, port: 0"),
            "spec.postgres.port",
        ),
        (
            "bad-slot",
            SPEC.replace("tables:", "logical: { slotName: Bad-Slot }\ntables:"),
            "spec.logical.slotName",
        ),
        (
            "dup-table",
            SPEC.replace(
                "[{ name: public.orders }]",
                "[{ name: public.orders }, { name: public.orders }]",
            ),
            "Duplicate value",
        ),
    ];
    for (label, spec, expected) in cases {
        let name = unique(label);
        let err = api
            .create(&PostParams::default(), &capture(&name, &spec))
            .await
            .expect_err(&format!("{label} must be refused"));
        let text = err.to_string();
        assert!(
            text.contains(expected),
            "{label}: expected {expected:?} in {text}"
        );
    }
}
