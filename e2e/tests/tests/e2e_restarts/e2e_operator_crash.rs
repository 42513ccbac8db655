//! The operator killed in the middle of provisioning converges on restart and
//! leaks nothing: after deletion no slot, publication or watermark table of
//! the capture remains.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use siphon_e2e::stack_shell;

#[tokio::test]
async fn operator_crash_mid_provisioning_converges_and_leaks_nothing() {
    let s = Scenario::new("e2e-crash").await;
    s.pg.batch_execute("CREATE TABLE public.t (id int PRIMARY KEY)")
        .await
        .unwrap();
    s.apply("t", &s.spec("[{ name: public.t }]", "")).await;
    // Kill it while it reconciles this capture, several times.
    for delay in [50u64, 200, 400] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let out = stack_shell("bash e2e/stack/stack.sh operator-crash-restart");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    s.wait_condition("t", "Ready", "True", READY_TIMEOUT).await;
    let managed = s
        .captures()
        .get("t")
        .await
        .unwrap()
        .status
        .unwrap()
        .managed
        .unwrap();
    assert!(
        managed.slot.is_some()
            && managed.publication.is_some()
            && managed.watermark_table.is_some(),
        "{managed:?}"
    );

    s.delete("t").await;
    s.wait_gone("t", Duration::from_secs(90)).await;
    let slots: i64 =
        s.pg.query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let pubs: i64 =
        s.pg.query_one("SELECT count(*) FROM pg_publication", &[])
            .await
            .unwrap()
            .get(0);
    let wm: bool =
        s.pg.query_one(
            "SELECT to_regclass('public.siphon_watermarks') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((slots, pubs, wm), (0, 0, false), "nothing leaked");
    s.cleanup().await;
}
