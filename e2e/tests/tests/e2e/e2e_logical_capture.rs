//! End to end: rows already in the table and new writes arrive in Kafka as
//! Debezium records, the capture reports Ready, and its status shows the slot.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::Api;
use siphon_e2e::metrics::{sample, scrape};
use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use siphon_e2e::topic::{read_topic, reduce};
use siphon_e2e::{eventually, stack_var};
use siphon_operator::names::{WORKER_METRICS_PORT, worker_object_name};

#[tokio::test]
async fn existing_rows_and_new_writes_arrive_in_kafka() {
    let s = Scenario::new("e2e-logical").await;
    s.pg.batch_execute(
        "CREATE TABLE public.orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(10,2));
         INSERT INTO public.orders SELECT g, 'c' || g, g * 1.5 FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    s.apply("shop", &s.spec("[{ name: public.orders }]", ""))
        .await;
    s.wait_condition("shop", "Ready", "True", READY_TIMEOUT)
        .await;

    s.pg.batch_execute(
        "INSERT INTO public.orders VALUES (51, 'new', 9.99);
         UPDATE public.orders SET total = 100 WHERE id = 1;
         DELETE FROM public.orders WHERE id = 2;",
    )
    .await
    .unwrap();

    let topic = s.topic("public", "orders");
    let mut records = Vec::new();
    for _ in 0..30 {
        records = read_topic(
            &topic,
            "read_committed",
            Duration::from_secs(3),
            Duration::from_secs(30),
        );
        if records.iter().any(|r| r.op() == Some("d")) && reduce(&records).len() == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rows = reduce(&records);
    assert_eq!(rows.len(), 50, "49 old rows + 1 new row after one delete");
    let one = &rows[&serde_json::json!({"id": 1}).to_string()];
    assert_eq!(one["total"], "100.00", "numeric is an exact string: {one}");
    let reads = records.iter().filter(|r| r.op() == Some("r")).count();
    assert!(
        reads >= 50,
        "existing rows are backfilled as op r (got {reads})"
    );
    let insert = records
        .iter()
        .find(|r| r.op() == Some("c"))
        .expect("an insert record");
    let source = &insert.value.as_ref().unwrap()["source"];
    assert_eq!(source["connector"], "postgresql");
    assert_eq!(source["db"], s.db.as_str());
    assert_eq!(source["table"], "orders");
    let delete_at = records.iter().position(|r| r.op() == Some("d")).unwrap();
    assert!(
        records[delete_at + 1].value.is_none(),
        "a tombstone follows the delete"
    );

    // The figures Prometheus scrapes say the same: the worker's (through
    // the metrics Service the operator made for it) and the operator's.
    let services: Api<Service> = Api::namespaced(s.client.clone(), &s.ns);
    let service = services
        .get(&worker_object_name("shop"))
        .await
        .expect("the worker's metrics Service");
    let port = service.spec.unwrap().ports.unwrap()[0].port;
    assert_eq!(
        port, WORKER_METRICS_PORT,
        "the Service exposes the metrics port"
    );
    let worker = scrape(&s.worker_metrics_addr("shop").await).await;
    let table = [("table", "public.orders")];
    assert_eq!(
        sample(&worker, "siphon_worker_backfill_table_complete", &table),
        Some(1.0),
        "{worker}"
    );
    assert_eq!(
        sample(&worker, "siphon_worker_backfill_table_rows", &table),
        Some(50.0),
        "{worker}"
    );
    assert_eq!(
        sample(&worker, "siphon_worker_backfill_rows_total", &[]),
        Some(50.0),
        "{worker}"
    );
    let events = sample(&worker, "siphon_worker_events_total", &[]).expect("events_total");
    assert!(
        events >= 3.0,
        "the three writes after the backfill are counted: {events}"
    );
    assert_eq!(
        sample(&worker, "siphon_worker_kafka_available", &[]),
        Some(1.0),
        "{worker}"
    );
    let labels = [("namespace", s.ns.as_str()), ("capture", "shop")];
    let operator = eventually(
        Duration::from_secs(60),
        "the operator's capture gauges",
        || async {
            let text = scrape(&stack_var("SIPHON_OPERATOR_METRICS")).await;
            let ready = sample(&text, "siphon_operator_capture_ready", &labels)?;
            (ready == 1.0).then_some(text)
        },
    )
    .await;
    let retained = sample(
        &operator,
        "siphon_operator_capture_retained_wal_bytes",
        &labels,
    )
    .expect("the slot's retained WAL is exported");
    assert!(retained >= 0.0, "{retained}");
    assert_eq!(
        sample(&operator, "siphon_operator_capture_wal_lost", &labels),
        Some(0.0)
    );

    let status = s.captures().get("shop").await.unwrap().status.unwrap();
    let slot = status.slot.expect("slot facts in the status");
    assert!(slot.active, "the worker streams from the slot");
    assert_eq!(
        status.managed.unwrap().slot.as_deref(),
        Some(slot.name.as_str())
    );
    s.cleanup().await;
}
