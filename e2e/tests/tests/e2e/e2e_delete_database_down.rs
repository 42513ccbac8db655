//! Deleting a capture while its database is down keeps the finalizer, says why
//! in a condition and a Warning event; `deletionPolicy: Retain` lets it go.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use siphon_e2e::{stack_shell, stack_var};

const PORT: u16 = 15434;

fn pg(cmd: &str) {
    let out = stack_shell(&format!("source e2e/stack/postgres.sh; {cmd}"));
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn finalizer_holds_while_the_database_is_down_and_retain_lets_go() {
    let s = Scenario::new("e2e-dbdown").await;
    let state = stack_var("SIPHON_STACK_DIR");
    pg(&format!("pg_up {state} {PORT} doomed"));
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(PORT)
        .user(stack_var("PGUSER"))
        .password(stack_var("PGPASSWORD"))
        .dbname("postgres");
    let (doomed, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    doomed
        .batch_execute("CREATE TABLE IF NOT EXISTS public.t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let spec = s
        .spec("[{ name: public.t }]", "")
        .replace(
            &format!("port: {}", stack_var("PGPORT")),
            &format!("port: {PORT}"),
        )
        .replace(&format!("database: {}", s.db), "database: postgres");
    s.apply("doomed", &spec).await;
    s.wait_condition("doomed", "Ready", "True", READY_TIMEOUT)
        .await;

    pg(&format!("pg_down {state} doomed"));
    s.delete("doomed").await;
    let blocked = s
        .wait_condition("doomed", "TeardownBlocked", "True", Duration::from_secs(90))
        .await;
    assert!(
        blocked.message.contains("deletionPolicy: Retain"),
        "names the way out: {}",
        blocked.message
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = s
        .captures()
        .get("doomed")
        .await
        .expect("the finalizer keeps the resource");
    assert!(still.metadata.deletion_timestamp.is_some());
    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    let warnings: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("TeardownFailed")
        })
        .collect();
    assert!(
        !warnings.is_empty(),
        "a Warning event explains the blocked teardown"
    );

    s.patch_spec("doomed", serde_json::json!({ "deletionPolicy": "Retain" }))
        .await;
    s.wait_gone("doomed", Duration::from_secs(60)).await;

    // The slot was retained, as asked: drop it by hand and stop the instance.
    pg(&format!("pg_up {state} {PORT} doomed"));
    let (doomed, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let left: i64 = doomed
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1, "Retain leaves the slot in place");
    doomed
        .batch_execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
        .await
        .unwrap();
    pg(&format!("pg_down {state} doomed"));
    s.cleanup().await;
}
