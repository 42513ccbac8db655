//! Polling mode end to end, through `kubectl apply`-equivalent server-side
//! applies: changes and deletes by NOTIFY triggers, late commits caught by a
//! window and by the derived horizon, a killed worker resuming exactly once,
//! custom queries with cursor ties, and unfit tables refused with the fix.
//! Each scenario compares the database census (slots, publications,
//! relations, triggers, functions) before the capture and after its deletion.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use siphon_e2e::topic::{read_topic, read_topic_now};
use siphon_e2e::{eventually, pg_connect};

/// `polling` block of a spec, on `updated_at`.
fn polling(extra: &str) -> String {
    format!("mode: Polling\npolling: {{ cursorColumn: updated_at, {extra} }}")
}

/// The polling progress the worker reports.
async fn polling_progress(s: &Scenario, name: &str) -> siphon_crds::status::PollingProgress {
    s.captures()
        .get(name)
        .await
        .unwrap()
        .status
        .and_then(|st| st.progress)
        .and_then(|p| p.polling)
        .unwrap_or_default()
}

/// How many records of `topic` carry `id` in their `after` image.
async fn copies_of(topic: &str, id: i64) -> usize {
    read_topic_now(topic)
        .await
        .iter()
        .filter(|r| r.after().and_then(|a| a.get("id")?.as_i64()) == Some(id))
        .count()
}

#[tokio::test]
async fn notify_captures_changes_and_deletes_also_while_suspended_and_teardown_leaves_nothing() {
    let s = Scenario::new("e2e-poll-notify").await;
    s.pg.batch_execute(
        "CREATE TABLE public.t (id int PRIMARY KEY, v text, \
           updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE INDEX t_cursor ON public.t (updated_at, id);
         CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS
           $$BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END$$;
         CREATE TRIGGER touch BEFORE UPDATE ON public.t FOR EACH ROW EXECUTE FUNCTION public.touch();
         INSERT INTO public.t (id, v) SELECT g, 'old' FROM generate_series(1, 20) g;",
    )
    .await
    .unwrap();
    let before = s.census().await;
    // An hour between polls: after the first, only NOTIFY wakes the worker.
    s.apply(
        "t",
        &s.spec(
            "[{ name: public.t, columns: [v] }]",
            &polling("interval: 1h, notify: true, semantics: Upsert, lateness: Auto"),
        ),
    )
    .await;
    s.wait_condition("t", "Ready", "True", READY_TIMEOUT).await;
    let managed = s.managed("t").await;
    assert_eq!(managed.triggers, vec!["public.t".to_string()]);
    assert!(managed.trigger_function.is_some(), "{managed:?}");
    assert!(managed.deletes_table.is_some(), "{managed:?}");
    assert!(managed.slot.is_none() && managed.publication.is_none());
    let rows =
        "SELECT jsonb_build_object('id', id), jsonb_build_object('id', id, 'v', v) FROM public.t";
    s.topic_equals_rows("t", rows).await;

    // Updates, deletes, inserts, and a key deleted then inserted again.
    s.pg.batch_execute(
        "UPDATE public.t SET v = 'new' WHERE id <= 5;
         DELETE FROM public.t WHERE id IN (6, 7);
         INSERT INTO public.t (id, v) SELECT g, 'fresh' FROM generate_series(21, 30) g;",
    )
    .await
    .unwrap();
    s.pg.batch_execute("DELETE FROM public.t WHERE id = 8")
        .await
        .unwrap();
    s.pg.batch_execute("INSERT INTO public.t (id, v) VALUES (8, 'again')")
        .await
        .unwrap();
    s.topic_equals_rows("t", rows).await;
    let records = read_topic_now(&s.topic("public", "t")).await;
    let of = |id: i64| -> Vec<(Option<String>, bool)> {
        records
            .iter()
            .filter(|r| r.key.as_ref().and_then(|k| k.get("id")?.as_i64()) == Some(id))
            .map(|r| (r.op().map(str::to_string), r.value.is_none()))
            .collect()
    };
    // Upsert: each row read is the latest state of its key.
    assert!(
        of(1)
            .iter()
            .all(|(op, tomb)| *tomb || op.as_deref() == Some("u")),
        "{:?}",
        of(1)
    );
    // A delete is `d` and a tombstone; the key's re-insert follows them.
    assert_eq!(
        of(6),
        vec![
            (Some("u".into()), false),
            (Some("d".into()), false),
            (None, true)
        ]
    );
    assert_eq!(of(8).last().unwrap().0.as_deref(), Some("u"), "{:?}", of(8));
    let after = records.iter().find_map(|r| r.after().cloned()).unwrap();
    assert_eq!(
        after.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["id", "v"],
        "columns: [v] keeps the key and drops the cursor"
    );
    // The worker reports its progress every 10 s.
    let progress = eventually(
        Duration::from_secs(60),
        "the deletes in the status",
        || async { Some(polling_progress(&s, "t").await).filter(|p| p.deletes >= 3) },
    )
    .await;
    assert!(
        progress.horizon.is_some(),
        "lateness Auto reports its horizon: {progress:?}"
    );
    // 20 rows, 5 updated, 10 inserted, 1 inserted again.
    assert_eq!(progress.tables[0].rows, 20 + 5 + 10 + 1, "{progress:?}");
    assert_eq!(
        progress.tables[0].lag.as_deref(),
        Some("0.0s"),
        "caught up: {progress:?}"
    );

    // Suspended: the triggers stay and deletes wait in the table.
    s.patch_spec("t", json!({ "suspend": true })).await;
    s.wait_condition("t", "WorkerAvailable", "False", READY_TIMEOUT)
        .await;
    eventually(
        Duration::from_secs(60),
        "the worker pod to stop",
        || async {
            let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
            let lp = ListParams::default().labels("siphon.dev/capture=t");
            pods.list(&lp).await.ok()?.items.is_empty().then_some(())
        },
    )
    .await;
    s.pg.batch_execute("DELETE FROM public.t WHERE id IN (9, 10)")
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "two deletes waiting in the status",
        || async { (s.managed("t").await.deletes_waiting == Some(2)).then_some(()) },
    )
    .await;
    s.patch_spec("t", json!({ "suspend": false })).await;
    // Ready was True while suspended too: wait for the worker streaming.
    s.wait_ready_reason("t", "Streaming", READY_TIMEOUT).await;
    s.topic_equals_rows("t", rows).await;

    s.delete("t").await;
    s.wait_gone("t", Duration::from_secs(120)).await;
    assert_eq!(s.census().await, before, "teardown left an object behind");
    s.cleanup().await;
}

#[tokio::test]
async fn late_commits_are_caught_by_a_window_and_by_the_derived_horizon_once_each() {
    // On the stack's server with wal_level = replica: polling needs no logical decoding.
    let s = Scenario::on("PG_REPLICA_PORT", "e2e-poll-late").await;
    s.pg.batch_execute(
        "CREATE TABLE public.w (id int PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE TABLE public.a (id int PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT clock_timestamp());",
    )
    .await
    .unwrap();
    s.apply(
        "w",
        &s.spec(
            "[{ name: public.w }]",
            &polling("interval: 200ms, lateness: 1m"),
        ),
    )
    .await;
    s.apply(
        "a",
        &s.spec(
            "[{ name: public.a }]",
            &polling("interval: 200ms, lateness: Auto"),
        ),
    )
    .await;
    s.wait_condition("w", "Ready", "True", READY_TIMEOUT).await;
    s.wait_condition("a", "Ready", "True", READY_TIMEOUT).await;

    // A transaction takes the older cursor values and stays open (idle in
    // transaction) while a newer row commits.
    let late = siphon_e2e::pg_connect_at(s.port, &s.db).await;
    late.batch_execute(
        "BEGIN; INSERT INTO public.w (id) VALUES (1); INSERT INTO public.a (id) VALUES (1);",
    )
    .await
    .unwrap();
    let late_pid: i32 = late
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    s.pg.batch_execute(
        "INSERT INTO public.w (id) VALUES (2); INSERT INTO public.a (id) VALUES (2);",
    )
    .await
    .unwrap();
    s.wait_ids("w", &[2]).await;
    // The horizon holds row 2 of `a` back, and says who holds it.
    let held = eventually(
        Duration::from_secs(60),
        "the horizon's holder in the status",
        || async { polling_progress(&s, "a").await.held_by },
    )
    .await;
    assert_eq!(held.pid, late_pid);
    assert_eq!(held.state.as_deref(), Some("idle in transaction"));
    assert_eq!(
        copies_of(&s.topic("public", "a"), 2).await,
        0,
        "row 2 is beyond the horizon"
    );

    late.batch_execute("COMMIT").await.unwrap();
    s.wait_ids("w", &[1, 2]).await;
    s.wait_ids("a", &[1, 2]).await;
    eventually(
        Duration::from_secs(30),
        "the horizon to be released",
        || async {
            polling_progress(&s, "a")
                .await
                .held_by
                .is_none()
                .then_some(())
        },
    )
    .await;
    // A few more polls, then: each row once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for table in ["w", "a"] {
        for id in [1, 2] {
            assert_eq!(
                copies_of(&s.topic("public", table), id).await,
                1,
                "{table} row {id}"
            );
        }
    }
    s.cleanup().await;
}

#[tokio::test]
async fn a_killed_polling_worker_resumes_without_gap_or_duplicate_exactly_once() {
    let s = Scenario::new("e2e-poll-killed").await;
    s.pg.batch_execute(
        "CREATE TABLE public.e (id int PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    .await
    .unwrap();
    s.apply(
        "e",
        &format!(
            "{}\n",
            s.spec(
                "[{ name: public.e }]",
                &polling("interval: 100ms, batchSize: 50, lateness: Auto"),
            )
        )
        .replace("topicPrefix:", "delivery: ExactlyOnce, topicPrefix:"),
    )
    .await;
    s.wait_condition("e", "Ready", "True", READY_TIMEOUT).await;
    let writer_db = s.db.clone();
    let writer = tokio::spawn(async move {
        let pg = pg_connect(&writer_db).await;
        for i in 1..=600 {
            pg.execute("INSERT INTO public.e (id) VALUES ($1)", &[&i])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    s.kill_worker_pod("e", 2).await;
    writer.await.unwrap();
    s.wait_condition("e", "Ready", "True", READY_TIMEOUT).await;
    let topic = s.topic("public", "e");
    let mut counts = BTreeMap::new();
    for _ in 0..30 {
        counts.clear();
        let records = {
            let topic = topic.clone();
            tokio::task::spawn_blocking(move || {
                read_topic(
                    &topic,
                    "read_committed",
                    Duration::from_secs(2),
                    Duration::from_secs(30),
                )
            })
            .await
            .unwrap()
        };
        for r in &records {
            if let Some(id) = r.after().and_then(|a| a.get("id")?.as_i64()) {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        if counts.len() == 600 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let missing: Vec<i64> = (1..=600).filter(|i| !counts.contains_key(i)).collect();
    let repeated: Vec<(&i64, &i32)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(missing.is_empty(), "rows lost across kills: {missing:?}");
    assert!(
        repeated.is_empty(),
        "rows repeated under exactly once: {repeated:?}"
    );
    s.cleanup().await;
}

#[tokio::test]
async fn a_custom_query_composite_keys_cursor_ties_filters_and_columns() {
    let s = Scenario::new("e2e-poll-query").await;
    s.pg.batch_execute(
        "CREATE TABLE public.orders (id int PRIMARY KEY, customer text NOT NULL);
         CREATE TABLE public.lines (order_id int, line int, amount numeric(10,2), note text,
           updated_at timestamptz NOT NULL, PRIMARY KEY (order_id, line));
         CREATE INDEX ON public.lines (updated_at, order_id, line);
         INSERT INTO public.orders VALUES (1, 'ada'), (2, 'bob');
         -- Ten rows tie on the cursor: batches of 3 split them.
         INSERT INTO public.lines SELECT 1 + g % 2, g, g * 1.5, CASE WHEN g = 4 THEN 'skip' ELSE 'keep' END,
           '2026-01-01 00:00:00+00' FROM generate_series(1, 10) g;",
    )
    .await
    .unwrap();
    let before = s.census().await;
    let totals = "SELECT o.id AS order_id, o.customer, sum(l.amount) AS total, max(l.updated_at) AS updated_at \
                  FROM public.orders o JOIN public.lines l ON l.order_id = o.id GROUP BY o.id, o.customer";
    s.apply(
        "lines",
        &s.spec(
            "[{ name: public.lines, columns: [amount], filter: \"note <> 'skip'\" }]",
            &polling("interval: 200ms, batchSize: 3, semantics: Upsert"),
        ),
    )
    .await;
    s.apply(
        "totals",
        &s.spec(
            &format!(
                "[{{ name: public.order_totals, keyColumns: [order_id], query: \"{totals}\" }}]"
            ),
            &polling("interval: 200ms, batchSize: 1, semantics: Upsert"),
        ),
    )
    .await;
    s.wait_condition("lines", "Ready", "True", READY_TIMEOUT)
        .await;
    s.wait_condition("totals", "Ready", "True", READY_TIMEOUT)
        .await;
    let lines = "SELECT jsonb_build_object('order_id', order_id, 'line', line), \
                 jsonb_build_object('order_id', order_id, 'line', line, 'amount', amount::text) \
                 FROM public.lines WHERE note <> 'skip'";
    s.topic_equals_rows("lines", lines).await;
    // One more row on the same cursor value, after the position's key.
    s.pg.batch_execute(
        "INSERT INTO public.lines VALUES (2, 11, 99.00, 'keep', '2026-01-01 00:00:00+00')",
    )
    .await
    .unwrap();
    s.topic_equals_rows("lines", lines).await;
    // The query's rows: one total per order, read again when its cursor (the
    // newest line's time) moves on.
    s.pg.batch_execute("UPDATE public.lines SET amount = 100, updated_at = '2026-01-02 00:00:00+00' WHERE line IN (1, 2)")
        .await
        .unwrap();
    s.topic_equals_rows(
        "order_totals",
        "SELECT jsonb_build_object('order_id', o.id), jsonb_build_object('order_id', o.id, 'customer', o.customer, \
           'total', sum(l.amount)::text, 'updated_at', to_char(max(l.updated_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')) \
         FROM public.orders o JOIN public.lines l ON l.order_id = o.id GROUP BY o.id, o.customer",
    )
    .await;
    s.delete("lines").await;
    s.delete("totals").await;
    s.wait_gone("lines", Duration::from_secs(120)).await;
    s.wait_gone("totals", Duration::from_secs(120)).await;
    assert_eq!(s.census().await, before);
    s.cleanup().await;
}

#[tokio::test]
async fn unfit_polling_tables_are_refused_with_the_fix_and_nothing_is_created() {
    let s = Scenario::new("e2e-poll-unfit").await;
    s.pg.batch_execute(
        "CREATE TABLE public.nocursor (id int PRIMARY KEY, v text);
         CREATE TABLE public.textcursor (id int PRIMARY KEY, updated_at text);
         CREATE TABLE public.nokey (id int, updated_at timestamptz);
         CREATE TABLE public.unindexed (id int PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT now());",
    )
    .await
    .unwrap();
    let before = s.census().await;
    let cases = [
        (
            "nocursor",
            "[{ name: public.nocursor }]",
            "CursorColumnMissing",
            "updated_at",
        ),
        (
            "textcursor",
            "[{ name: public.textcursor }]",
            "CursorTypeUnsupported",
            "timestamptz",
        ),
        (
            "nokey",
            "[{ name: public.nokey }]",
            "NoPrimaryKey",
            "PRIMARY KEY",
        ),
        (
            "badquery",
            "[{ name: public.q, keyColumns: [missing], query: \"SELECT id, updated_at FROM public.unindexed\" }]",
            "InvalidQuery",
            "missing",
        ),
    ];
    for (name, tables, _, _) in &cases {
        s.apply(name, &s.spec(tables, &polling("notify: false")))
            .await;
    }
    for (name, _, reason, fix) in &cases {
        let message = s.wait_ready_reason(name, reason, READY_TIMEOUT).await;
        assert!(message.contains(fix), "{name}: {message}");
    }
    // A cursor without an index still runs, with a warning naming the index.
    s.apply(
        "unindexed",
        &s.spec("[{ name: public.unindexed }]", &polling("interval: 1s")),
    )
    .await;
    s.wait_condition("unindexed", "Ready", "True", READY_TIMEOUT)
        .await;
    let warning = s
        .wait_condition("unindexed", "CursorIndexed", "False", READY_TIMEOUT)
        .await;
    assert!(
        warning.message.contains("CREATE INDEX"),
        "{}",
        warning.message
    );
    assert!(warning.message.contains("unindexed"), "{}", warning.message);
    for (name, ..) in &cases {
        s.delete(name).await;
    }
    s.delete("unindexed").await;
    for (name, ..) in &cases {
        s.wait_gone(name, Duration::from_secs(60)).await;
    }
    s.wait_gone("unindexed", Duration::from_secs(60)).await;
    assert_eq!(s.census().await, before);
    s.cleanup().await;
}
