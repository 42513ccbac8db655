//! Every spec field does what it says, and what the worker meets reaches the
//! resource: existing publications checked against the spec, partitioned
//! tables through their root or as partitions, a missing Secret named as
//! missing, and a worker that stops for good saying why in the status
//! (replication granted by role membership, Amazon RDS's way, is in
//! `tests/e2e_restarts/e2e_platform_marker.rs`: it changes the whole server).

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};

const REFUSAL_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn an_existing_publication_is_checked_against_the_spec() {
    let s = Scenario::new("e2e-fields-pub").await;
    s.pg.batch_execute(
        "CREATE TABLE public.a (id int PRIMARY KEY, v int);
         CREATE TABLE public.b (id int PRIMARY KEY, v int);
         CREATE TABLE public.c (id int PRIMARY KEY, note text);
         CREATE PUBLICATION mine FOR TABLE public.a;
         CREATE PUBLICATION narrow FOR TABLE public.c (note);",
    )
    .await
    .unwrap();
    let existing = |publication: &str| {
        format!("logical: {{ publication: Existing, publicationName: {publication} }}")
    };

    s.apply(
        "gap",
        &s.spec(
            "[{ name: public.a }, { name: public.b }]",
            &existing("mine"),
        ),
    )
    .await;
    let msg = s
        .wait_ready_reason("gap", "PublicationMissingTable", REFUSAL_TIMEOUT)
        .await;
    assert!(
        msg.contains(r#"ALTER PUBLICATION "mine" ADD TABLE "public"."b""#),
        "{msg}"
    );

    s.pg.batch_execute("ALTER PUBLICATION mine ADD TABLE public.b")
        .await
        .unwrap();
    s.apply(
        "nowm",
        &s.spec(
            "[{ name: public.a }, { name: public.b }]",
            &existing("mine"),
        ),
    )
    .await;
    let msg = s
        .wait_ready_reason("nowm", "PublicationMissingTable", REFUSAL_TIMEOUT)
        .await;
    assert!(
        msg.contains("CREATE TABLE") && msg.contains("siphon_watermarks"),
        "{msg}"
    );

    // A column list that leaves the key out would make PostgreSQL refuse the
    // application's UPDATE and DELETE: reported, not used.
    s.apply(
        "narrow",
        &s.spec("[{ name: public.c }]", &existing("narrow")),
    )
    .await;
    let msg = s
        .wait_ready_reason("narrow", "PublicationBreaksWrites", REFUSAL_TIMEOUT)
        .await;
    assert!(msg.contains("id") && msg.contains("narrow"), "{msg}");

    // Everything in place: it streams, and Siphon touches the publication not.
    s.pg.batch_execute(
        "CREATE TABLE public.siphon_watermarks (capture text PRIMARY KEY, watermark text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
         ALTER PUBLICATION mine ADD TABLE public.siphon_watermarks;
         INSERT INTO public.a VALUES (1, 1); INSERT INTO public.b VALUES (1, 1);",
    )
    .await
    .unwrap();
    s.apply(
        "whole",
        &s.spec(
            "[{ name: public.a }, { name: public.b }]",
            &existing("mine"),
        ),
    )
    .await;
    s.wait_condition("whole", "Ready", "True", READY_TIMEOUT)
        .await;
    s.pg.batch_execute("UPDATE public.a SET v = 2; INSERT INTO public.b VALUES (2, 2);")
        .await
        .unwrap();
    s.topic_equals_rows(
        "a",
        "SELECT jsonb_build_object('id', id), to_jsonb(t) FROM public.a t",
    )
    .await;
    s.topic_equals_rows(
        "b",
        "SELECT jsonb_build_object('id', id), to_jsonb(t) FROM public.b t",
    )
    .await;
    for name in ["gap", "nowm", "narrow", "whole"] {
        s.delete(name).await;
        s.wait_gone(name, Duration::from_secs(90)).await;
    }
    let publications: Vec<String> =
        s.pg.query("SELECT pubname::text FROM pg_publication ORDER BY 1", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert_eq!(
        publications,
        ["mine", "narrow"],
        "publications a person made stay"
    );
    let marks: bool =
        s.pg.query_one(
            "SELECT to_regclass('public.siphon_watermarks') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(marks, "a watermark table a person made stays");
    s.cleanup().await;
}

const PARTITIONED: &str = "CREATE TABLE public.m (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
     CREATE TABLE public.m_eu PARTITION OF public.m FOR VALUES IN ('eu');
     CREATE TABLE public.m_us PARTITION OF public.m FOR VALUES IN ('us');
     INSERT INTO public.m SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 0 FROM generate_series(1, 40) g;";

const WRITES: &str = "INSERT INTO public.m VALUES (100, 'eu', 1), (101, 'us', 1);
     UPDATE public.m SET v = 7 WHERE id = 2;
     UPDATE public.m SET region = 'us' WHERE id = 4;
     DELETE FROM public.m WHERE id = 5;";

#[tokio::test]
async fn a_partitioned_table_streams_through_its_root() {
    let s = Scenario::new("e2e-fields-part").await;
    s.pg.batch_execute(PARTITIONED).await.unwrap();
    s.apply("m", &s.spec("[{ name: public.m }]", "")).await;
    s.wait_condition("m", "Ready", "True", READY_TIMEOUT).await;
    // An update that moves a row into the other partition, among others.
    s.pg.batch_execute(WRITES).await.unwrap();
    s.wait_condition("m", "BackfillComplete", "True", READY_TIMEOUT)
        .await;
    let key = "jsonb_build_object('id', id, 'region', region)";
    s.topic_equals_rows("m", &format!("SELECT {key}, to_jsonb(t) FROM public.m t"))
        .await;
    let viaroot: bool =
        s.pg.query_one("SELECT pubviaroot FROM pg_publication", &[])
            .await
            .unwrap()
            .get(0);
    assert!(viaroot);
    s.cleanup().await;
}

#[tokio::test]
async fn partitions_published_as_themselves_get_a_topic_each() {
    let s = Scenario::new("e2e-fields-leaf").await;
    s.pg.batch_execute(PARTITIONED).await.unwrap();
    s.apply(
        "m",
        &s.spec(
            "[{ name: public.m }]",
            "logical: { publishViaPartitionRoot: false }",
        ),
    )
    .await;
    s.wait_condition("m", "Ready", "True", READY_TIMEOUT).await;
    s.pg.batch_execute(WRITES).await.unwrap();
    s.wait_condition("m", "BackfillComplete", "True", READY_TIMEOUT)
        .await;
    let key = "jsonb_build_object('id', id, 'region', region)";
    for leaf in ["m_eu", "m_us"] {
        s.topic_equals_rows(
            leaf,
            &format!("SELECT {key}, to_jsonb(t) FROM public.{leaf} t"),
        )
        .await;
    }
    let viaroot: bool =
        s.pg.query_one("SELECT pubviaroot FROM pg_publication", &[])
            .await
            .unwrap()
            .get(0);
    assert!(!viaroot);
    s.cleanup().await;
}

#[tokio::test]
async fn a_missing_secret_is_named_missing_and_not_created() {
    let s = Scenario::new("e2e-fields-secret").await;
    let spec = s.spec("[{ name: public.t }]", "").replace(
        "credentialsSecretRef: { name: pg }",
        "credentialsSecretRef: { name: absent }",
    );
    s.apply("t", &spec).await;
    let msg = s
        .wait_ready_reason("t", "SecretNotFound", REFUSAL_TIMEOUT)
        .await;
    assert!(
        msg.contains("absent") && msg.contains("does not exist"),
        "{msg}"
    );
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    assert!(
        secrets.get_opt("absent").await.unwrap().is_none(),
        "no Secret was made up"
    );
    s.cleanup().await;
}

#[tokio::test]
async fn a_worker_that_stops_for_good_says_why_in_the_status() {
    let s = Scenario::new("e2e-fields-stop").await;
    s.streaming_capture_of_t().await;
    let capturing = s
        .wait_condition("t", "Capturing", "True", READY_TIMEOUT)
        .await;
    assert_eq!(capturing.reason, "Streaming");
    let slot = s.managed("t").await.slot.unwrap();
    s.drop_slot_by_hand(&slot).await;
    // Written by the worker itself before it exits (a retry of the broken
    // connection may say CaptureInterrupted first).
    let api = s.captures();
    let stopped = siphon_e2e::eventually(REFUSAL_TIMEOUT, "Capturing=False SlotMissing", || {
        let api = api.clone();
        async move {
            api.get("t")
                .await
                .ok()?
                .status?
                .conditions
                .into_iter()
                .find(|c| {
                    c.type_ == "Capturing" && c.status == "False" && c.reason == "SlotMissing"
                })
        }
    })
    .await;
    assert!(
        stopped.message.contains("does not exist"),
        "{}",
        stopped.message
    );
    // And the pod's termination message is the tail of its log.
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let message =
        siphon_e2e::eventually(Duration::from_secs(60), "the termination message", || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels("siphon.dev/capture=t"))
                    .await
                    .ok()?;
                list.items.into_iter().find_map(|p| {
                    p.status?.container_statuses?.into_iter().find_map(|c| {
                        [c.state, c.last_state]
                            .into_iter()
                            .flatten()
                            .find_map(|st| {
                                st.terminated?
                                    .message
                                    .filter(|m| m.contains("siphon-worker:"))
                            })
                    })
                })
            }
        })
        .await;
    assert!(message.contains("replication slot"), "{message}");
    assert!(!message.contains('\u{1b}'), "no colour codes: {message}");
    s.cleanup().await;
}
