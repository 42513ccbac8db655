//! A scenario whose test panics still leaves nothing behind: its `Drop`
//! deletes the captures (their finalizers drop slot and publication), the
//! namespace, any slot left, and the database. A leaked slot would hold WAL
//! for the rest of the run.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use siphon_e2e::scenario::Scenario;
use siphon_e2e::{eventually, kube_client, pg_connect};

#[tokio::test]
async fn a_panicking_test_leaves_no_namespace_slot_or_database() {
    // The failing test, on a thread and runtime of its own: it streams a
    // capture (a slot, a worker), then panics.
    let failing = std::thread::spawn(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let s = Scenario::new("e2e-panics").await;
            s.streaming_capture_of_t().await;
            let names = (s.ns.clone(), s.db.clone());
            std::panic::panic_any(names);
        })
    });
    let (ns, db) = *failing
        .join()
        .expect_err("the scenario panicked")
        .downcast::<(String, String)>()
        .unwrap();

    let admin = pg_connect("postgres").await;
    let slots: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    let databases: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((slots, databases), (0, 0), "slots and database of {db}");
    // Namespace deletion is asynchronous: it was asked for, and it ends.
    let namespaces: Api<Namespace> = Api::all(kube_client().await);
    eventually(
        Duration::from_secs(120),
        &format!("namespace {ns} gone"),
        || {
            let namespaces = namespaces.clone();
            let ns = ns.clone();
            async move { matches!(namespaces.get_opt(&ns).await, Ok(None)).then_some(()) }
        },
    )
    .await;
}
