//! A capture that cannot deliver says so: with every Kafka broker down the
//! worker's `KafkaAvailable` condition goes False (Ready follows, the pod is
//! not ready, `siphon_worker_kafka_available` is 0), and when the broker is
//! back it goes True again and the changes written meanwhile arrive. Alone
//! in its test binary: stopping the broker would disturb other scenarios.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use siphon_e2e::topic::read_topic;
use siphon_e2e::{stack_shell, stack_var};

/// Starts the broker again when dropped, also when the test panics.
struct BrokerBack;

impl Drop for BrokerBack {
    fn drop(&mut self) {
        let out = stack_shell(&format!(
            "source e2e/stack/kafka.sh; kafka_up {}",
            stack_var("SIPHON_STACK_DIR")
        ));
        assert!(
            out.status.success(),
            "kafka_up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_shows_in_the_status_and_loses_nothing() {
    let s = Scenario::new("e2e-kafka-down").await;
    s.pg.batch_execute("CREATE TABLE public.t (id int PRIMARY KEY)")
        .await
        .unwrap();
    s.apply(
        "t",
        &s.spec("[{ name: public.t }]", "snapshot: { mode: Never }"),
    )
    .await;
    s.wait_condition("t", "Ready", "True", READY_TIMEOUT).await;
    s.pg.execute("INSERT INTO public.t VALUES (1)", &[])
        .await
        .unwrap();
    s.wait_condition("t", "KafkaAvailable", "True", READY_TIMEOUT)
        .await;

    let back = BrokerBack;
    let out = stack_shell(&format!(
        "source e2e/stack/kafka.sh; kafka_down {}",
        stack_var("SIPHON_STACK_DIR")
    ));
    assert!(
        out.status.success(),
        "kafka_down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in 2..=20 {
        s.pg.execute("INSERT INTO public.t VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    let down = s
        .wait_condition("t", "KafkaAvailable", "False", Duration::from_secs(90))
        .await;
    assert_eq!(down.reason, "KafkaUnreachable", "{}", down.message);
    let msg = s
        .wait_ready_reason("t", "KafkaUnreachable", Duration::from_secs(60))
        .await;
    assert!(msg.contains("broker"), "{msg}");

    drop(back);
    s.wait_condition("t", "KafkaAvailable", "True", Duration::from_secs(120))
        .await;
    s.wait_condition("t", "Ready", "True", Duration::from_secs(60))
        .await;
    let topic = s.topic("public", "t");
    let ids = siphon_e2e::eventually(
        Duration::from_secs(90),
        "the rows written during the outage",
        || {
            let topic = topic.clone();
            async move {
                let records = tokio::task::spawn_blocking(move || {
                    read_topic(
                        &topic,
                        "read_uncommitted",
                        Duration::from_secs(2),
                        Duration::from_secs(30),
                    )
                })
                .await
                .unwrap();
                let mut ids: Vec<i64> = records
                    .iter()
                    .filter_map(|r| r.after()?.get("id")?.as_i64())
                    .collect();
                ids.sort();
                ids.dedup();
                (ids.len() == 20).then_some(ids)
            }
        },
    )
    .await;
    assert_eq!(ids, (1..=20).collect::<Vec<i64>>());
    s.cleanup().await;
}
