//! Reachable but unfit databases give `Ready=False` with a reason naming the
//! fix: wal_level not logical, a missing table, a table without primary key,
//! a role without REPLICATION.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use siphon_e2e::scenario::Scenario;
use siphon_e2e::stack_var;

const WAIT: Duration = Duration::from_secs(60);

async fn ready_reason(s: &Scenario, name: &str, want: &str) -> String {
    let mut last = String::new();
    for _ in 0..120 {
        let c = s.wait_condition(name, "Ready", "False", WAIT).await;
        if c.reason == want {
            return c.message;
        }
        last = format!("{}: {}", c.reason, c.message);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{name}: expected reason {want}, last {last}");
}

#[tokio::test]
async fn unfit_databases_are_explained() {
    let s = Scenario::new("e2e-unfit").await;
    s.pg.batch_execute(
        "CREATE TABLE public.keyless (a int, b text);
         CREATE TABLE public.ok (id int PRIMARY KEY);
         CREATE ROLE e2e_noreplication LOGIN PASSWORD 'pw';",
    )
    .await
    .ok();

    // wal_level = replica: the stack's second PostgreSQL.
    let replica = s
        .spec("[{ name: public.ok }]", "")
        .replace(
            &format!("port: {}", stack_var("PGPORT")),
            &format!("port: {}", stack_var("PG_REPLICA_PORT")),
        )
        .replace(&format!("database: {}", s.db), "database: postgres");
    s.apply("replica", &replica).await;
    let msg = ready_reason(&s, "replica", "WalLevelNotLogical").await;
    assert!(msg.contains("wal_level = logical"), "{msg}");

    s.apply("missing", &s.spec("[{ name: public.nope }]", ""))
        .await;
    let msg = ready_reason(&s, "missing", "TableNotFound").await;
    assert!(msg.contains("public.nope"), "{msg}");

    s.apply("keyless", &s.spec("[{ name: public.keyless }]", ""))
        .await;
    let msg = ready_reason(&s, "keyless", "NoPrimaryKey").await;
    assert!(msg.contains("REPLICA IDENTITY USING INDEX"), "{msg}");

    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": { "name": "norepl" },
                "stringData": { "username": "e2e_noreplication", "password": "pw" }
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let norepl = s.spec("[{ name: public.ok }]", "").replace(
        "credentialsSecretRef: { name: pg }",
        "credentialsSecretRef: { name: norepl }",
    );
    s.apply("norepl", &norepl).await;
    let msg = ready_reason(&s, "norepl", "MissingReplicationPrivilege").await;
    assert!(msg.contains("ALTER ROLE"), "{msg}");

    // None of them created anything.
    for name in ["replica", "missing", "keyless", "norepl"] {
        let st = s.captures().get(name).await.unwrap().status.unwrap();
        let managed = st.managed.unwrap_or_default();
        assert!(
            managed.slot.is_none() && managed.publication.is_none(),
            "{name} created objects: {managed:?}"
        );
    }
    s.cleanup().await;
    let admin = siphon_e2e::pg_connect("postgres").await;
    let _ = admin
        .batch_execute("DROP ROLE IF EXISTS e2e_noreplication")
        .await;
}
