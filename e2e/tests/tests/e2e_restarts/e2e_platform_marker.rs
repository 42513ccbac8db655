//! A platform marker role (`rds_replication`) makes the whole server look
//! like Amazon RDS to every capture's preflight: this test runs alone, in
//! the binary of tests that change what the others share.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::json;
use siphon_e2e::RunOnDrop;
use siphon_e2e::scenario::Scenario;

const REFUSAL_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn replication_by_rds_replication_membership_passes_preflight() {
    let s = Scenario::new("e2e-fields-rds").await;
    // The role makes the whole server look like Amazon RDS; it goes away
    // even when the test fails.
    let _marker = RunOnDrop(
        "source .stack/env && psql -h \"$PGHOST\" -p \"$PGPORT\" -U \"$PGUSER\" -d postgres -qc 'DROP ROLE IF EXISTS rds_replication'".into(),
    );
    let role = format!("{}_cdc", s.db);
    s.pg.batch_execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') THEN CREATE ROLE rds_replication NOLOGIN; END IF; END $$;
         CREATE ROLE {role} LOGIN PASSWORD 'pw' NOREPLICATION;
         GRANT CREATE ON DATABASE {db} TO {role};
         GRANT CREATE ON SCHEMA public TO {role};
         CREATE TABLE public.t (id int PRIMARY KEY);
         ALTER TABLE public.t OWNER TO {role};",
        db = s.db
    ))
    .await
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "cdc" },
                "stringData": { "username": role, "password": "pw" }
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let spec = s.spec("[{ name: public.t }]", "").replace(
        "credentialsSecretRef: { name: pg }",
        "credentialsSecretRef: { name: cdc }",
    );

    // Not a member yet: the fix is the one Amazon RDS allows.
    s.apply("rds", &spec).await;
    let msg = s
        .wait_ready_reason("rds", "MissingReplicationPrivilege", REFUSAL_TIMEOUT)
        .await;
    let refused_fix = msg.contains("GRANT rds_replication TO") && !msg.contains("ALTER ROLE");

    // A member: preflight accepts it and provisioning goes on to the slot,
    // which this (self-hosted) server grants by the REPLICATION attribute
    // only; on RDS, membership is what creating the slot needs.
    s.pg.batch_execute(&format!("GRANT rds_replication TO {role}"))
        .await
        .unwrap();
    s.apply("member", &spec).await;
    let after = s
        .wait_ready_reason("member", "InsufficientPrivilege", REFUSAL_TIMEOUT)
        .await;

    // The database goes with the scenario, and with it what the role owned
    // and was granted there.
    s.cleanup().await;
    let admin = siphon_e2e::pg_connect("postgres").await;
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; DROP ROLE IF EXISTS rds_replication"
        ))
        .await
        .unwrap();
    assert!(refused_fix, "{msg}");
    assert!(
        after.contains("replication slot"),
        "preflight passed, the slot was tried: {after}"
    );
}
