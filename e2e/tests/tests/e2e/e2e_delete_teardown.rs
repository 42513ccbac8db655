//! Deleting a capture stops the worker and drops exactly what the operator
//! created: the slot, the publication and the watermark table; then the
//! resource goes away.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};

#[tokio::test]
async fn delete_removes_slot_publication_and_watermark_table() {
    let s = Scenario::new("e2e-teardown").await;
    s.pg.batch_execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    s.apply("items", &s.spec("[{ name: public.items }]", ""))
        .await;
    s.wait_condition("items", "Ready", "True", READY_TIMEOUT)
        .await;
    let managed = s
        .captures()
        .get("items")
        .await
        .unwrap()
        .status
        .unwrap()
        .managed
        .unwrap();
    let slot = managed.slot.clone().expect("the operator created the slot");
    let publication = managed
        .publication
        .clone()
        .expect("the operator created the publication");
    assert!(s.slot_exists(&slot).await);
    assert!(s.publication_exists(&publication).await);

    s.delete("items").await;
    s.wait_gone("items", Duration::from_secs(90)).await;

    assert!(!s.slot_exists(&slot).await, "slot {slot} dropped");
    assert!(
        !s.publication_exists(&publication).await,
        "publication {publication} dropped"
    );
    let watermark: bool =
        s.pg.query_one(
            "SELECT to_regclass('public.siphon_watermarks') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !watermark,
        "the watermark table the operator created is dropped"
    );
    s.cleanup().await;
}

/// `kubectl delete -f` of a manifest holding the Secret and the capture
/// removes both at once: the Secret must outlive the teardown that needs it.
#[tokio::test]
async fn deleting_the_secret_with_the_capture_still_tears_down() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, DeleteParams};

    let s = Scenario::new("e2e-teardown-secret").await;
    s.pg.batch_execute("CREATE TABLE public.items (id int PRIMARY KEY)")
        .await
        .unwrap();
    s.apply("items", &s.spec("[{ name: public.items }]", ""))
        .await;
    s.wait_condition("items", "Ready", "True", READY_TIMEOUT)
        .await;
    let slot = s
        .captures()
        .get("items")
        .await
        .unwrap()
        .status
        .unwrap()
        .managed
        .unwrap()
        .slot
        .unwrap();

    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .delete("pg", &DeleteParams::default())
        .await
        .unwrap();
    s.delete("items").await;
    s.wait_gone("items", Duration::from_secs(90)).await;
    assert!(
        !s.slot_exists(&slot).await,
        "slot {slot} dropped although its Secret was deleted first"
    );
    siphon_e2e::eventually(
        Duration::from_secs(30),
        "the Secret to go once released",
        || {
            let secrets = secrets.clone();
            async move {
                secrets
                    .get_opt("pg")
                    .await
                    .ok()
                    .and_then(|o| o.is_none().then_some(()))
            }
        },
    )
    .await;
    s.cleanup().await;
}
