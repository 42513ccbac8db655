//! The user's database comes first: a capture never makes the application's
//! own statements fail, never runs SQL nobody wrote, never streams past a
//! lost slot as if nothing happened, never moves its identity under itself,
//! and leaves the database as it found it.
//!
//! Every scenario compares the database census (slots, publications,
//! relations, triggers, functions) with what it was before the capture.
//! These two kill the operator on the way; the others are in
//! `tests/e2e/e2e_database_safety.rs`.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use serde_json::json;
use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use siphon_e2e::stack_shell;

const REFUSAL_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_slot_dropped_under_load_stops_the_capture_until_a_resnapshot_is_requested() {
    let s = Scenario::new("e2e-safe-slot").await;
    s.pg.batch_execute(
        "CREATE TABLE public.t (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO public.t SELECT g, 0 FROM generate_series(1, 200) g;",
    )
    .await
    .unwrap();
    s.apply("t", &s.spec("[{ name: public.t }]", "")).await;
    s.wait_condition("t", "Ready", "True", READY_TIMEOUT).await;
    s.wait_condition("t", "BackfillComplete", "True", READY_TIMEOUT)
        .await;
    let slot = s.managed("t").await.slot.unwrap();

    // A steady write load for the whole scenario.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let db = s.db.clone();
        tokio::spawn(async move {
            let pg = siphon_e2e::pg_connect(&db).await;
            let mut n: i32 = 1000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                pg.execute("INSERT INTO public.t VALUES ($1, 0)", &[&n])
                    .await
                    .unwrap();
                pg.execute(
                    "UPDATE public.t SET v = v + 1 WHERE id = $1",
                    &[&(n % 200 + 1)],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Drop the slot by hand, as an administrator would.
    s.drop_slot_by_hand(&slot).await;

    let message = s
        .wait_ready_reason("t", "SlotMissing", REFUSAL_TIMEOUT)
        .await;
    assert!(message.contains("spec.snapshot.request.id"), "{message}");
    // Nothing streams until a person chooses: no slot comes back.
    for _ in 0..20 {
        assert!(
            !s.slot_exists(&slot).await,
            "a new slot was created silently"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Also after an operator restart.
    let out = stack_shell("bash e2e/stack/stack.sh operator-crash-restart");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.wait_ready_reason("t", "SlotMissing", REFUSAL_TIMEOUT)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !s.slot_exists(&slot).await,
        "a new slot was created after a restart"
    );

    // The person chooses a re-snapshot: a new slot, every table read again.
    s.patch_spec(
        "t",
        json!({ "snapshot": { "request": { "id": "after-slot-loss" } } }),
    )
    .await;
    s.wait_condition("t", "Ready", "True", READY_TIMEOUT).await;
    siphon_e2e::eventually(READY_TIMEOUT, "the re-snapshot to complete", || {
        let api = s.captures();
        async move {
            let c = api.get("t").await.ok()?;
            let done = c.status?.progress?.completed_snapshot_request;
            (done.as_deref() == Some("after-slot-loss")).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = load.await.unwrap();
    assert!(last > 1100, "the load ran ({last})");

    s.topic_equals_rows(
        "t",
        "SELECT jsonb_build_object('id', id), to_jsonb(t) FROM public.t t",
    )
    .await;
    s.cleanup().await;
}

#[tokio::test]
async fn ten_captures_deleted_with_the_operator_killed_leave_the_census_as_it_was() {
    let s = Scenario::new("e2e-safe-ten").await;
    let mut ddl = String::new();
    for i in 0..10 {
        ddl.push_str(&format!(
            "CREATE TABLE public.t{i} (id int PRIMARY KEY); INSERT INTO public.t{i} VALUES (1);"
        ));
    }
    s.pg.batch_execute(&ddl).await.unwrap();
    let before = s.census().await;
    for i in 0..10 {
        s.apply(
            &format!("c{i}"),
            &s.spec(&format!("[{{ name: public.t{i} }}]"), ""),
        )
        .await;
    }
    // Killed while it provisions them.
    for delay in [100u64, 300, 600] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let out = stack_shell("bash e2e/stack/stack.sh operator-crash-restart");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for i in 0..10 {
        s.wait_condition(&format!("c{i}"), "Provisioned", "True", READY_TIMEOUT)
            .await;
    }
    for i in 0..10 {
        s.delete(&format!("c{i}")).await;
    }
    // And killed while it tears them down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = stack_shell("bash e2e/stack/stack.sh operator-crash-restart");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..10 {
        s.wait_gone(&format!("c{i}"), Duration::from_secs(180))
            .await;
    }
    assert_eq!(s.census().await, before);
    s.cleanup().await;
}
