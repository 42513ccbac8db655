//! Two captures claiming one slot in one database: the younger is refused with
//! a condition and touches nothing; the older keeps streaming.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use std::time::Duration;

#[tokio::test]
async fn the_second_capture_on_a_slot_is_refused() {
    let s = Scenario::new("e2e-claim").await;
    s.pg.batch_execute("CREATE TABLE public.t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let spec = s.spec("[{ name: public.t }]", "logical: { slotName: shared_slot }");
    s.apply("first", &spec).await;
    s.wait_condition("first", "Ready", "True", READY_TIMEOUT)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.apply("second", &spec).await;
    let c = s
        .wait_condition("second", "Ready", "False", Duration::from_secs(60))
        .await;
    // The Ready condition may first say Provisioning; wait for the claim reason.
    let mut reason = c.reason.clone();
    for _ in 0..60 {
        if reason == "SlotClaimedByAnotherCapture" {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let st = s.captures().get("second").await.unwrap().status.unwrap();
        reason = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.reason.clone())
            .unwrap_or_default();
    }
    assert_eq!(reason, "SlotClaimedByAnotherCapture");
    let second = s.captures().get("second").await.unwrap();
    let ready = second
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .clone();
    assert!(
        ready.message.contains("first"),
        "names the owner: {}",
        ready.message
    );
    assert!(
        second
            .status
            .unwrap()
            .managed
            .map(|m| m.slot.is_none())
            .unwrap_or(true),
        "the refused capture manages nothing"
    );
    s.wait_condition("first", "Ready", "True", Duration::from_secs(10))
        .await;
    s.delete("second").await;
    s.wait_gone("second", Duration::from_secs(60)).await;
    assert!(
        s.slot_exists("shared_slot").await,
        "deleting the refused capture leaves the owner's slot"
    );
    s.cleanup().await;
}
