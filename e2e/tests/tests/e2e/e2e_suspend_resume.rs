//! `suspend: true` stops the worker and keeps the slot (retained WAL shown);
//! resuming streams what was written meanwhile.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use siphon_e2e::topic::read_topic;

#[tokio::test]
async fn suspend_keeps_the_slot_and_resume_catches_up() {
    let s = Scenario::new("e2e-suspend").await;
    s.streaming_capture_of_t().await;

    s.patch_spec("t", serde_json::json!({ "suspend": true }))
        .await;
    // Suspended is where the spec asks the capture to be: Ready, reason
    // Suspended (kstatus reads Current, so a Flux health wait passes).
    s.wait_ready_reason("t", "Suspended", Duration::from_secs(60))
        .await;
    let ready = s
        .wait_condition("t", "Ready", "True", Duration::from_secs(60))
        .await;
    assert_eq!(ready.reason, "Suspended");
    s.wait_condition("t", "WorkerAvailable", "False", Duration::from_secs(60))
        .await;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let d = deployments.get("t-siphon-worker").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(0));
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    siphon_e2e::eventually(Duration::from_secs(60), "worker pods gone", || {
        let pods = pods.clone();
        async move {
            let l = pods
                .list(&ListParams::default().labels("siphon.dev/capture=t"))
                .await
                .ok()?;
            l.items.is_empty().then_some(())
        }
    })
    .await;

    s.pg.batch_execute("INSERT INTO public.t SELECT generate_series(1, 100)")
        .await
        .unwrap();
    let slot = s.managed("t").await.slot.unwrap();
    assert!(s.slot_exists(&slot).await, "the slot stays while suspended");
    // The status shows the WAL the slot retains.
    siphon_e2e::eventually(
        Duration::from_secs(90),
        "retained WAL in the status",
        || {
            let api = s.captures();
            async move {
                let st = api.get("t").await.ok()?.status?;
                let slot = st.slot?;
                (!slot.active && slot.retained_wal_bytes.unwrap_or(0) > 0).then_some(())
            }
        },
    )
    .await;

    s.patch_spec("t", serde_json::json!({ "suspend": false }))
        .await;
    // Ready was True while suspended too: wait for the worker streaming.
    s.wait_ready_reason("t", "Streaming", READY_TIMEOUT).await;
    let topic = s.topic("public", "t");
    let mut n = 0;
    for _ in 0..20 {
        n = read_topic(
            &topic,
            "read_committed",
            Duration::from_secs(3),
            Duration::from_secs(20),
        )
        .iter()
        .filter(|r| r.op() == Some("c"))
        .count();
        if n >= 100 {
            break;
        }
    }
    assert_eq!(n, 100, "rows written while suspended arrive after resume");
    s.cleanup().await;
}
