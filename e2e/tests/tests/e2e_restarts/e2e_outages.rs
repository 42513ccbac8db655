//! A capture that cannot deliver says so, and loses nothing:
//!
//! * with every Kafka broker down the worker's `KafkaAvailable` condition
//!   goes False (Ready follows, the pod is not ready,
//!   `siphon_worker_kafka_available` is 0), and when the broker is back it
//!   goes True again and the changes written meanwhile arrive;
//! * a slot PostgreSQL invalidated stops the capture with `SlotLost` until a
//!   re-snapshot is asked for;
//! * with its PostgreSQL stopped mid-stream the worker's `Capturing`
//!   condition goes False (`CaptureInterrupted`, retrying), and True again
//!   once the server is back.
//!
//! In a test binary of their own: stopping the broker would disturb other
//! scenarios. The PostgreSQL stopped is the stack's 16, not the main one.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use siphon_e2e::{RunOnDrop, stack_shell, stack_var};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_shows_in_the_status_and_loses_nothing() {
    let s = Scenario::new("e2e-kafka-down").await;
    s.streaming_capture_of_t().await;
    s.pg.execute("INSERT INTO public.t VALUES (1)", &[])
        .await
        .unwrap();
    s.wait_condition("t", "KafkaAvailable", "True", READY_TIMEOUT)
        .await;
    // Idle and caught up: no lag, however long ago the last commit was.
    let api = s.captures();
    siphon_e2e::eventually(
        Duration::from_secs(60),
        "the lag of an idle capture to be 0",
        || {
            let api = api.clone();
            async move {
                let lag = api.get("t").await.ok()?.status?.progress?.lag?;
                (lag == "0.0s").then_some(())
            }
        },
    )
    .await;

    let back = RunOnDrop(format!(
        "source e2e/stack/kafka.sh; kafka_up {}",
        stack_var("SIPHON_STACK_DIR")
    ));
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
    s.wait_ids("t", &(1..=20).collect::<Vec<i64>>()).await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_mid_stream_shows_in_the_status_and_heals() {
    let s = Scenario::on("PG16_PORT", "e2e-pg-down").await;
    s.streaming_capture_of_t().await;
    s.wait_condition("t", "Capturing", "True", READY_TIMEOUT)
        .await;
    s.pg.execute("INSERT INTO public.t VALUES (1)", &[])
        .await
        .unwrap();

    let back = RunOnDrop("bash e2e/stack/stack.sh pg-major-up 16".into());
    let out = stack_shell("bash e2e/stack/stack.sh pg-major-down 16");
    assert!(
        out.status.success(),
        "pg_down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let api = s.captures();
    let interrupted = siphon_e2e::eventually(
        Duration::from_secs(90),
        "Capturing=False CaptureInterrupted",
        || {
            let api = api.clone();
            async move {
                api.get("t")
                    .await
                    .ok()?
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| {
                        c.type_ == "Capturing"
                            && c.status == "False"
                            && c.reason == "CaptureInterrupted"
                    })
            }
        },
    )
    .await;
    assert!(
        interrupted.message.contains("retrying"),
        "{}",
        interrupted.message
    );
    s.wait_condition("t", "Ready", "False", Duration::from_secs(60))
        .await;

    drop(back);
    s.wait_condition("t", "Capturing", "True", Duration::from_secs(120))
        .await;
    s.wait_condition("t", "Ready", "True", Duration::from_secs(120))
        .await;
    let pg = siphon_e2e::pg_connect_on("PG16_PORT", &s.db).await;
    pg.execute("INSERT INTO public.t VALUES (2)", &[])
        .await
        .unwrap();
    s.wait_ids("t", &[1, 2]).await;
    s.cleanup().await;
}

/// A slot PostgreSQL invalidated (`wal_status = lost`, past
/// `max_slot_wal_keep_size`) stops the capture with `SlotLost` until a
/// re-snapshot is asked for; then the lost slot is dropped, a new one made,
/// and the topic equals the table again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_stops_the_capture_until_a_resnapshot() {
    let s = Scenario::on("PG13_PORT", "e2e-slot-lost").await;
    s.pg.batch_execute(
        "CREATE TABLE public.t (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO public.t SELECT g, 0 FROM generate_series(1, 100) g;
         CREATE TABLE public.filler (x text);",
    )
    .await
    .unwrap();
    s.apply("t", &s.spec("[{ name: public.t }]", "")).await;
    s.wait_condition("t", "BackfillComplete", "True", READY_TIMEOUT)
        .await;
    s.wait_condition("t", "Ready", "True", READY_TIMEOUT).await;

    // The worker stops; WAL grows past what the server keeps for a slot.
    s.patch_spec("t", serde_json::json!({ "suspend": true }))
        .await;
    s.wait_condition("t", "WorkerAvailable", "False", READY_TIMEOUT)
        .await;
    let admin = siphon_e2e::pg_connect_on("PG13_PORT", "postgres").await;
    let _back = RunOnDrop(
        "source e2e/stack/postgres.sh; pg_psql \"$PG13_PORT\" -c 'ALTER SYSTEM RESET max_slot_wal_keep_size' -c 'SELECT pg_reload_conf()'".into(),
    );
    for sql in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    s.pg.batch_execute("UPDATE public.t SET v = 1 WHERE id <= 10")
        .await
        .unwrap();
    let slot = s.managed("t").await.slot.unwrap();
    siphon_e2e::eventually(Duration::from_secs(120), "the slot to be lost", || {
        let (pg, admin, slot) = (&s.pg, &admin, slot.clone());
        async move {
            pg.batch_execute(
                "INSERT INTO public.filler SELECT repeat('x', 1000) FROM generate_series(1, 20000); TRUNCATE public.filler;",
            )
            .await
            .ok()?;
            admin.batch_execute("SELECT pg_switch_wal()").await.ok()?;
            admin.batch_execute("CHECKPOINT").await.ok()?;
            let row = admin
                .query_one("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                .await
                .ok()?;
            (row.get::<_, Option<String>>(0).as_deref() == Some("lost")).then_some(())
        }
    })
    .await;

    // Resumed, the capture refuses to stream from a slot that lost changes.
    s.patch_spec("t", serde_json::json!({ "suspend": false }))
        .await;
    let msg = s
        .wait_ready_reason("t", "SlotLost", Duration::from_secs(90))
        .await;
    assert!(msg.contains("spec.snapshot.request.id"), "{msg}");

    // A re-snapshot: the lost slot goes, a new one comes, every row is read again.
    s.patch_spec(
        "t",
        serde_json::json!({ "snapshot": { "request": { "id": "after-slot-lost" } } }),
    )
    .await;
    s.wait_condition("t", "Ready", "True", READY_TIMEOUT).await;
    s.pg.execute("INSERT INTO public.t VALUES (1000, 7)", &[])
        .await
        .unwrap();
    s.topic_equals_rows(
        "t",
        "SELECT jsonb_build_object('id', id), to_jsonb(t) FROM public.t t",
    )
    .await;
    let status: Option<String> = admin
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(
        status.as_deref(),
        Some("lost"),
        "the lost slot was replaced by a new one"
    );
    s.cleanup().await;
}
