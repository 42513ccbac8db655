//! The operator dying at each step of provisioning (`SIPHON_CRASH_AT`, see
//! `operator/src/crash.rs`: it aborts there, as `kill -9` would) converges
//! once it runs again, and leaks nothing: after deletion no slot,
//! publication or watermark table of the captures remains.
//!
//! Each point is hit on purpose, not by a timer: the test arms it, applies a
//! capture, waits for the operator to die, checks that the database holds
//! exactly the half-done state of that point, and starts the operator again.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use siphon_e2e::{RunOnDrop, eventually, stack_shell, stack_var};
use siphon_operator::crash::POINTS;

/// The operator's pid, from the stack's pid file, while it is alive.
fn operator_pid() -> Option<u32> {
    let file = format!("{}/pids/operator.pid", stack_var("SIPHON_STACK_DIR"));
    let pid: u32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // A zombie has died already.
    (!state.contains(") Z ")).then_some(pid)
}

fn restart_operator(crash_at: Option<&str>) {
    let env = crash_at.map_or(String::new(), |at| format!("SIPHON_CRASH_AT={at} "));
    let out = stack_shell(&format!("{env}bash e2e/stack/stack.sh operator-restart"));
    assert!(
        out.status.success(),
        "operator-restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_operator_dying_at_each_provisioning_step_converges_and_leaks_nothing() {
    let s = Scenario::new("e2e-crash").await;
    // Whatever happens below, the stack's operator runs unarmed afterwards.
    let _unarmed = RunOnDrop("bash e2e/stack/stack.sh operator-restart".into());
    s.pg.batch_execute("CREATE TABLE public.t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let before = s.census().await;

    for (i, point) in POINTS.iter().enumerate() {
        let name = format!("c{i}");
        restart_operator(Some(&format!("{point}@{}/{name}", s.ns)));
        let armed = operator_pid().expect("the armed operator runs");
        s.apply(&name, &s.spec("[{ name: public.t }]", "")).await;
        eventually(
            Duration::from_secs(60),
            &format!("the operator to die at {point}"),
            || async { (operator_pid() != Some(armed)).then_some(()) },
        )
        .await;

        // The database holds exactly the half-done state of the point.
        let managed = s
            .captures()
            .get(&name)
            .await
            .unwrap()
            .status
            .and_then(|st| st.managed)
            .unwrap_or_default();
        let count = |sql: &'static str, arg: Option<String>| {
            let pg = &s.pg;
            async move {
                let n: i64 = pg.query_one(sql, &[&arg]).await.unwrap().get(0);
                n
            }
        };
        let slot = count(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            managed.slot.clone(),
        )
        .await;
        let publication = count(
            "SELECT count(*) FROM pg_publication WHERE pubname = $1",
            managed.publication.clone(),
        )
        .await;
        match *point {
            "watermark-recorded" | "watermark-created" => {
                assert!(managed.watermark_table.is_some(), "{point}: {managed:?}");
                assert!(managed.publication.is_none(), "{point}: {managed:?}");
            }
            "publication-recorded" => {
                assert!(managed.publication.is_some(), "{point}: {managed:?}");
                assert_eq!(publication, 0, "{point}: recorded, not created yet");
            }
            "publication-created" => {
                assert_eq!(publication, 1, "{point}: {managed:?}");
                assert!(managed.slot.is_none(), "{point}: {managed:?}");
            }
            "slot-recorded" => {
                assert!(managed.slot.is_some(), "{point}: {managed:?}");
                assert_eq!(slot, 0, "{point}: recorded, not created yet");
            }
            "slot-created" => {
                assert_eq!(slot, 1, "{point}: {managed:?}");
                assert!(!managed.slot_established, "{point}: {managed:?}");
            }
            other => panic!("no expectation for crash point {other}"),
        }

        restart_operator(None);
        s.wait_condition(&name, "Ready", "True", READY_TIMEOUT)
            .await;
        let managed = s
            .captures()
            .get(&name)
            .await
            .unwrap()
            .status
            .unwrap()
            .managed
            .unwrap();
        assert!(
            managed.slot.is_some()
                && managed.slot_established
                && managed.publication.is_some()
                && managed.watermark_table.is_some(),
            "{point}: converged to {managed:?}"
        );
    }

    for i in 0..POINTS.len() {
        s.delete(&format!("c{i}")).await;
    }
    for i in 0..POINTS.len() {
        s.wait_gone(&format!("c{i}"), Duration::from_secs(90)).await;
    }
    assert_eq!(s.census().await, before, "nothing leaked");
    s.cleanup().await;
}
