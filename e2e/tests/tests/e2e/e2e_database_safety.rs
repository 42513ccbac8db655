//! The user's database comes first: a capture never makes the application's
//! own statements fail, never runs SQL nobody wrote, never streams past a
//! lost slot as if nothing happened, never moves its identity under itself,
//! and leaves the database as it found it.
//!
//! Every scenario compares the database census (slots, publications,
//! relations, triggers, functions) with what it was before the capture.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use serde_json::json;
use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use siphon_e2e::topic::{read_topic_now, reduce};

const REFUSAL_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn columns_and_a_key_filter_keep_the_applications_updates_and_deletes_working() {
    let s = Scenario::new("e2e-safe-cols").await;
    s.pg.batch_execute(
        "CREATE TABLE public.a (id int PRIMARY KEY, note text, secret text);
         INSERT INTO public.a SELECT g, 'n' || g, 's' || g FROM generate_series(1, 5) g;
         CREATE TABLE public.b (id int PRIMARY KEY, qty int);
         INSERT INTO public.b SELECT g, g * 10 FROM generate_series(1, 20) g;",
    )
    .await
    .unwrap();
    s.apply(
        "safe",
        &s.spec(
            r#"[{ name: public.a, columns: [note] }, { name: public.b, filter: "id > 10" }]"#,
            "",
        ),
    )
    .await;
    s.wait_condition("safe", "Ready", "True", READY_TIMEOUT)
        .await;

    // The application's own writes: every one succeeds.
    s.pg.batch_execute(
        "UPDATE public.a SET note = 'changed', secret = 'x' WHERE id = 1;
         DELETE FROM public.a WHERE id = 2;
         UPDATE public.b SET qty = 0 WHERE id = 15;
         DELETE FROM public.b WHERE id = 16;
         DELETE FROM public.b WHERE id = 3;
         INSERT INTO public.a VALUES (6, 'n6', 's6');",
    )
    .await
    .expect("UPDATE and DELETE succeed under a column list and a key-column filter");

    let topic_a = s.topic("public", "a");
    let records = siphon_e2e::eventually(Duration::from_secs(60), "public.a's changes", || {
        let topic = topic_a.clone();
        async move {
            let records = read_topic_now(&topic).await;
            let reduced = reduce(&records);
            let done = reduced.get(&json!({"id": 1}).to_string())
                == Some(&json!({"id": 1, "note": "changed"}))
                && !reduced.contains_key(&json!({"id": 2}).to_string())
                && reduced.contains_key(&json!({"id": 6}).to_string());
            done.then_some(records)
        }
    })
    .await;
    for r in records.iter().filter(|r| r.value.is_some()) {
        let v = r.value.as_ref().unwrap();
        for image in ["before", "after"] {
            if let Some(row) = v.get(image).filter(|x| !x.is_null()) {
                let mut fields: Vec<&String> = row.as_object().unwrap().keys().collect();
                fields.sort();
                assert_eq!(
                    fields,
                    ["id", "note"],
                    "{image} of {v}: the listed column and the key only"
                );
            }
        }
    }

    let topic_b = s.topic("public", "b");
    let expected: Vec<i64> = vec![11, 12, 13, 14, 15, 17, 18, 19, 20];
    siphon_e2e::eventually(
        Duration::from_secs(60),
        "public.b's rows the filter admits",
        || {
            let topic = topic_b.clone();
            let expected = expected.clone();
            async move {
                let records = read_topic_now(&topic).await;
                let mut ids: Vec<i64> = reduce(&records)
                    .values()
                    .map(|row| row["id"].as_i64().unwrap())
                    .collect();
                ids.sort();
                (ids == expected).then_some(())
            }
        },
    )
    .await;
    s.cleanup().await;
}

#[tokio::test]
async fn a_filter_outside_the_replica_identity_is_refused_before_anything_is_created() {
    let s = Scenario::new("e2e-safe-ident").await;
    s.pg.batch_execute("CREATE TABLE public.b (id int PRIMARY KEY, qty int)")
        .await
        .unwrap();
    let before = s.census().await;
    s.apply(
        "b",
        &s.spec(
            r#"[{ name: public.b, filter: "qty > 10" }]"#,
            "snapshot: { mode: Never }",
        ),
    )
    .await;
    let message = s
        .wait_ready_reason("b", "FilterOutsideReplicaIdentity", REFUSAL_TIMEOUT)
        .await;
    for way_out in ["REPLICA IDENTITY FULL", "operations: [insert]", "qty"] {
        assert!(message.contains(way_out), "{message}");
    }
    assert_eq!(s.census().await, before, "nothing was created");
    assert!(s.managed("b").await.slot.is_none());

    // One of the ways out: capture inserts only; the application's UPDATE
    // and DELETE keep working, and the filter applies to the stream.
    s.patch_spec("b", json!({ "logical": { "operations": ["insert"] } }))
        .await;
    s.wait_condition("b", "Ready", "True", READY_TIMEOUT).await;
    s.pg.batch_execute(
        "INSERT INTO public.b VALUES (1, 5), (2, 50);
         UPDATE public.b SET qty = 60 WHERE id = 1;
         DELETE FROM public.b WHERE id = 2;
         INSERT INTO public.b VALUES (3, 70);",
    )
    .await
    .expect("the application's writes succeed");
    let topic = s.topic("public", "b");
    let records = siphon_e2e::eventually(Duration::from_secs(60), "the inserts", || {
        let topic = topic.clone();
        async move {
            let records = read_topic_now(&topic).await;
            (records.len() >= 2).then_some(records)
        }
    })
    .await;
    let ops: Vec<(Option<&str>, i64)> = records
        .iter()
        .map(|r| (r.op(), r.after().unwrap()["id"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        ops,
        [(Some("c"), 2), (Some("c"), 3)],
        "inserts matching the filter only"
    );

    s.delete("b").await;
    s.wait_gone("b", Duration::from_secs(90)).await;
    let mut after = s.census().await;
    after.retain(|o| !o.starts_with("relation public.b"));
    let mut expected = before.clone();
    expected.retain(|o| !o.starts_with("relation public.b"));
    assert_eq!(after, expected, "teardown leaves the database as it was");
    s.cleanup().await;
}

#[tokio::test]
async fn filters_that_reach_beyond_one_expression_run_nothing_and_create_nothing() {
    let s = Scenario::new("e2e-safe-inject").await;
    s.pg.batch_execute(
        "CREATE TABLE public.t (id int PRIMARY KEY, note text);
         CREATE TABLE public.canary (id int);
         INSERT INTO public.canary VALUES (1);",
    )
    .await
    .unwrap();
    let before = s.census().await;
    let escapes = [
        "true); DROP TABLE public.canary; --",
        "true); CREATE TABLE public.pwned AS SELECT current_user AS who; --",
        "id > 0), TABLE public.canary WHERE (true",
        "id > 0) WITH (publish = 'insert'",
        "id > 0 /* ) ; DROP TABLE public.canary; */ ) ; DROP TABLE public.canary; --",
        "$q$ x $q$ = 'x'); DROP TABLE public.canary; --",
        "id > (SELECT count(*) FROM public.canary)",
    ];
    for (i, filter) in escapes.iter().enumerate() {
        let name = format!("esc{i}");
        s.apply(
            &name,
            &s.spec(
                &format!(
                    "[{{ name: public.t, filter: {} }}]",
                    serde_json::to_string(filter).unwrap()
                ),
                "",
            ),
        )
        .await;
        let message = s
            .wait_ready_reason(&name, "InvalidFilter", REFUSAL_TIMEOUT)
            .await;
        assert!(message.contains("public.t"), "{filter}: {message}");
    }
    let canary: i64 =
        s.pg.query_one("SELECT count(*) FROM public.canary", &[])
            .await
            .expect("the canary table is still there")
            .get(0);
    assert_eq!(canary, 1);
    assert_eq!(s.census().await, before, "no statement of a filter ran");

    // A semicolon, a comment and dollar quoting inside one expression are fine.
    s.apply(
        "legit",
        &s.spec(
            r#"[{ name: public.t, filter: "id <> length('a;b') AND id <> length($$x;y$$) -- a comment" }]"#,
            "",
        ),
    )
    .await;
    s.wait_condition("legit", "Ready", "True", READY_TIMEOUT)
        .await;
    let filter: String =
        s.pg.query_one(
            "SELECT rowfilter FROM pg_publication_tables WHERE tablename = 't'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        filter.contains("'a;b'"),
        "PostgreSQL's rendering is used: {filter}"
    );
    s.cleanup().await;
}

#[tokio::test]
async fn what_identifies_a_capture_cannot_change_at_apply() {
    let s = Scenario::new("e2e-safe-immut").await;
    s.pg.batch_execute("CREATE TABLE public.t (id int PRIMARY KEY)")
        .await
        .unwrap();
    s.apply("t", &s.spec("[{ name: public.t }]", "")).await;
    let refused = |patch: serde_json::Value, field: &'static str| {
        let api = s.captures();
        async move {
            let err = api
                .patch(
                    "t",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&json!({ "spec": patch })),
                )
                .await
                .expect_err(field);
            let text = err.to_string();
            assert!(
                text.contains(field) && text.contains("create another PostgresCapture"),
                "{text}"
            );
        }
    };
    refused(
        json!({ "logical": { "slotName": "other_slot" } }),
        "slotName",
    )
    .await;
    refused(
        json!({ "logical": { "publicationName": "other_pub" } }),
        "publicationName",
    )
    .await;
    refused(
        json!({ "postgres": { "database": "postgres" } }),
        "database",
    )
    .await;
    refused(
        json!({ "snapshot": { "watermarkTable": "public.other_marks" } }),
        "watermarkTable",
    )
    .await;

    // An explicit name cannot be taken away either.
    s.apply(
        "named",
        &s.spec("[{ name: public.t }]", "logical: { slotName: named_slot }"),
    )
    .await;
    let err = s
        .captures()
        .patch(
            "named",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({ "spec": { "logical": { "slotName": null } } })),
        )
        .await
        .expect_err("removing slotName is refused");
    assert!(err.to_string().contains("slotName"), "{err}");
    s.cleanup().await;
}

#[tokio::test]
async fn two_captures_sharing_a_database_leave_the_census_as_it_was() {
    let s = Scenario::new("e2e-safe-two").await;
    s.pg.batch_execute(
        "CREATE TABLE public.a (id int PRIMARY KEY); INSERT INTO public.a VALUES (1);
         CREATE TABLE public.b (id int PRIMARY KEY); INSERT INTO public.b VALUES (1);",
    )
    .await
    .unwrap();
    let before = s.census().await;
    s.apply("a", &s.spec("[{ name: public.a }]", "")).await;
    s.apply("b", &s.spec("[{ name: public.b }]", "")).await;
    for name in ["a", "b"] {
        s.wait_condition(name, "BackfillComplete", "True", READY_TIMEOUT)
            .await;
    }
    assert!(
        s.census()
            .await
            .contains(&"relation public.siphon_watermarks".to_string())
    );
    // The first capture goes while the second still uses the table.
    s.delete("a").await;
    s.wait_gone("a", Duration::from_secs(90)).await;
    let rows: i64 =
        s.pg.query_one("SELECT count(*) FROM public.siphon_watermarks", &[])
            .await
            .expect("the watermark table stays while a capture uses it")
            .get(0);
    assert_eq!(
        rows, 1,
        "the first capture's row is gone, the second's stays"
    );
    s.delete("b").await;
    s.wait_gone("b", Duration::from_secs(90)).await;
    assert_eq!(s.census().await, before);
    s.cleanup().await;
}
