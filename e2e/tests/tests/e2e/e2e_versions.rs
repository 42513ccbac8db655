//! The behaviours that depend on the PostgreSQL major, on every other major
//! the stack runs (13, 14, 16, 17, 18; the rest of the suite runs on 15),
//! through `kubectl apply` like any capture:
//!
//! * preflight: a row filter is refused before 15 (`RowFilterUnsupported`),
//!   accepted from 15;
//! * the pgoutput protocol the worker negotiates (v1 on 13, v2 with
//!   streaming of in-progress transactions from 14), seen in the walsender's
//!   `START_REPLICATION` command;
//! * the backfill under concurrent writes, a column selection (a publication
//!   column list from 15, the worker's own projection before), TOAST values
//!   an UPDATE left unchanged, a partitioned table through its root, a large
//!   transaction (streamed in progress where the server can, the servers run
//!   with `logical_decoding_work_mem = 64kB`), inserts, updates, deletes and
//!   truncate;
//! * provisioning and teardown: the census after deletion is the one before.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use siphon_e2e::scenario::{READY_TIMEOUT, Scenario};
use siphon_e2e::topic::{read_topic_now, reduce};

const TABLES: &str = "CREATE TABLE public.t (id int PRIMARY KEY, v int NOT NULL, note text, secret text);
     INSERT INTO public.t SELECT g, 0, 'n' || g, 's' || g FROM generate_series(1, 3000) g;
     CREATE TABLE public.big (id int PRIMARY KEY, n int, body text);
     ALTER TABLE public.big ALTER COLUMN body SET STORAGE EXTERNAL;
     INSERT INTO public.big VALUES (1, 0, repeat('x', 10000)), (2, 0, 'small');
     CREATE TABLE public.m (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
     CREATE TABLE public.m_eu PARTITION OF public.m FOR VALUES IN ('eu');
     CREATE TABLE public.m_us PARTITION OF public.m FOR VALUES IN ('us');
     INSERT INTO public.m SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 0 FROM generate_series(1, 40) g;";

async fn suite(major: u32) {
    let s = Scenario::on(&format!("PG{major}_PORT"), &format!("e2e-pg{major}")).await;
    let version: i32 =
        s.pg.query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(
        version / 10_000,
        major as i32,
        "the server of PG{major}_PORT"
    );
    s.pg.batch_execute(TABLES).await.unwrap();
    let before = s.census().await;

    // Row filters: only where the server applies them to the stream.
    s.apply(
        "filtered",
        &s.spec(
            r#"[{ name: public.t, filter: "id > 10" }]"#,
            "snapshot: { mode: Never }",
        ),
    )
    .await;
    if major < 15 {
        let msg = s
            .wait_ready_reason("filtered", "RowFilterUnsupported", READY_TIMEOUT)
            .await;
        assert!(msg.contains("15"), "{msg}");
    } else {
        s.wait_condition("filtered", "Ready", "True", READY_TIMEOUT)
            .await;
    }
    s.delete("filtered").await;
    s.wait_gone("filtered", Duration::from_secs(90)).await;

    // The capture, its backfill racing a writer.
    s.apply(
        "c",
        &s.spec(
            "[{ name: public.t, columns: [v] }, { name: public.big }, { name: public.m }]",
            "snapshot: { chunkSize: 500 }",
        ),
    )
    .await;
    let writer = {
        let port = s.port;
        let db = s.db.clone();
        tokio::spawn(async move {
            let pg = siphon_e2e::pg_connect_at(port, &db).await;
            for i in 0..300i32 {
                pg.execute(
                    "UPDATE public.t SET v = v + 1 WHERE id = $1",
                    &[&(i * 7 % 3000 + 1)],
                )
                .await
                .unwrap();
                pg.execute(
                    "INSERT INTO public.t VALUES ($1, $2, 'w', 'w')",
                    &[&(10_000 + i), &i],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    s.wait_condition("c", "Ready", "True", READY_TIMEOUT).await;
    writer.await.unwrap();
    s.wait_condition("c", "BackfillComplete", "True", READY_TIMEOUT)
        .await;

    // The protocol the worker negotiated, as the walsender shows it.
    let command: String = s
        .pg
        .query_one(
            "SELECT query FROM pg_stat_activity WHERE backend_type = 'walsender' AND datname = current_database() AND query LIKE 'START_REPLICATION%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let want = if major >= 14 {
        r#""proto_version" '2'"#
    } else {
        r#""proto_version" '1'"#
    };
    assert!(command.contains(want), "PostgreSQL {major}: {command}");
    assert_eq!(
        command.contains(r#""streaming" 'on'"#),
        major >= 14,
        "{command}"
    );

    // Changes of every kind, an unchanged TOAST value, a row moving between
    // partitions, and one large transaction.
    s.pg.batch_execute(
        "UPDATE public.big SET n = 1 WHERE id = 1;
         DELETE FROM public.t WHERE id = 5;
         UPDATE public.t SET v = 42, secret = 'changed' WHERE id = 6;
         INSERT INTO public.m VALUES (100, 'eu', 1);
         UPDATE public.m SET region = 'us' WHERE id = 4;
         DELETE FROM public.m WHERE id = 7;",
    )
    .await
    .unwrap();
    s.pg.batch_execute(
        "INSERT INTO public.t SELECT g, 1, 'large', 'large' FROM generate_series(20000, 59999) g",
    )
    .await
    .unwrap();

    // Records hold the key and the selected columns only, on every version.
    s.topic_equals_rows(
        "t",
        "SELECT jsonb_build_object('id', id), jsonb_build_object('id', id, 'v', v) FROM public.t",
    )
    .await;
    s.topic_equals_rows(
        "m",
        "SELECT jsonb_build_object('id', id, 'region', region), to_jsonb(m) FROM public.m m",
    )
    .await;
    let big = reduce(&read_topic_now(&s.topic("public", "big")).await);
    let one = &big[&serde_json::json!({"id": 1}).to_string()];
    assert_eq!(one["n"], 1);
    assert_eq!(
        one["body"], "__debezium_unavailable_value",
        "an unchanged TOAST value is the placeholder under the default identity"
    );

    s.pg.batch_execute("TRUNCATE public.big").await.unwrap();
    let topic = s.topic("public", "big");
    siphon_e2e::eventually(Duration::from_secs(60), "the truncate record", || {
        let topic = topic.clone();
        async move {
            read_topic_now(&topic)
                .await
                .iter()
                .any(|r| r.op() == Some("t"))
                .then_some(())
        }
    })
    .await;

    s.delete("c").await;
    s.wait_gone("c", Duration::from_secs(90)).await;
    assert_eq!(
        s.census().await,
        before,
        "PostgreSQL {major}: teardown leaves the database as it was"
    );
    s.cleanup().await;
}

#[tokio::test]
async fn postgres_13() {
    suite(13).await;
}

#[tokio::test]
async fn postgres_14() {
    suite(14).await;
}

#[tokio::test]
async fn postgres_16() {
    suite(16).await;
}

#[tokio::test]
async fn postgres_17() {
    suite(17).await;
}

#[tokio::test]
async fn postgres_18() {
    suite(18).await;
}

async fn insert(pg: &tokio_postgres::Client, from: i32, to: i32) {
    pg.batch_execute(&format!(
        "INSERT INTO public.t SELECT g FROM generate_series({from}, {to}) g"
    ))
    .await
    .unwrap();
}

/// A PostgreSQL 17 primary and its streaming standby, started for one test
/// from the stack's PostgreSQL 17 binaries: the standby is a copy of the
/// cleanly stopped primary's data folder with `standby.signal` (the zonky
/// packages ship no `pg_basebackup`), synchronizing failover slots.
struct Pair;

const PRIMARY: u16 = 15427;
const STANDBY: u16 = 15437;

impl Pair {
    fn shell(script: &str) {
        let out = siphon_e2e::stack_shell(&format!(
            "source e2e/stack/postgres.sh; export PG_BINDIR=$(pg_fetch \"$PG17_VERSION\"); S=\"$SIPHON_STACK_DIR\"; {script}"
        ));
        assert!(
            out.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start() -> Self {
        Self::shell(
            "pg_down \"$S\" pg17s; pg_down \"$S\" pg17p; rm -rf \"$S/pg-pg17p\" \"$S/pg-pg17s\"",
        );
        let primary_conf = "\"synchronized_standby_slots = 'standby1'\"";
        Self::shell(&format!(
            "pg_up \"$S\" {PRIMARY} pg17p {primary_conf} && \
             pg_psql {PRIMARY} -c \"SELECT pg_create_physical_replication_slot('standby1')\" >/dev/null && \
             pg_down \"$S\" pg17p && cp -a \"$S/pg-pg17p\" \"$S/pg-pg17s\" && touch \"$S/pg-pg17s/standby.signal\" && \
             pg_up \"$S\" {PRIMARY} pg17p {primary_conf} && \
             pg_up \"$S\" {STANDBY} pg17s \"hot_standby_feedback = on\" \"sync_replication_slots = on\" \
               \"primary_slot_name = 'standby1'\" \
               \"primary_conninfo = 'host=127.0.0.1 port={PRIMARY} user=postgres password=$PG_SUPERUSER_PASSWORD dbname=postgres'\""
        ));
        Pair
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = siphon_e2e::stack_shell(
            "source e2e/stack/postgres.sh; export PG_BINDIR=$(pg_fetch \"$PG17_VERSION\"); S=\"$SIPHON_STACK_DIR\"; \
             pg_down \"$S\" pg17s; pg_down \"$S\" pg17p; rm -rf \"$S/pg-pg17p\" \"$S/pg-pg17s\"",
        );
    }
}

#[tokio::test]
async fn postgres_17_failover_slot_survives_promotion() {
    let pair = Pair::start();
    let s = Scenario::at(PRIMARY, "e2e-pg17-failover").await;
    s.pg.batch_execute("CREATE TABLE public.t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let standby = siphon_e2e::pg_connect_at(STANDBY, "postgres").await;
    s.apply("t", &s.spec("[{ name: public.t }]", "")).await;
    s.wait_condition("t", "Ready", "True", READY_TIMEOUT).await;
    let status = s.captures().get("t").await.unwrap().status.unwrap();
    let slot = status.managed.unwrap().slot.unwrap();
    assert_eq!(
        status.slot.and_then(|x| x.failover),
        Some(true),
        "a failover slot by default on 17"
    );

    insert(&s.pg, 1, 100).await;
    // The standby holds a synchronized copy of the slot.
    siphon_e2e::eventually(Duration::from_secs(120), "the slot synchronized on the standby", || {
        let standby = &standby;
        let slot = slot.clone();
        async move {
            let row = standby
                .query_opt(
                    "SELECT synced AND NOT temporary AND failover FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .ok()??;
            row.get::<_, bool>(0).then_some(())
        }
    })
    .await;
    insert(&s.pg, 101, 150).await;

    // The primary goes away; the standby is promoted and the capture pointed at it.
    Pair::shell("pg_down \"$S\" pg17p");
    standby.batch_execute("SELECT pg_promote()").await.unwrap();
    s.patch_spec("t", serde_json::json!({ "postgres": { "port": STANDBY } }))
        .await;
    let promoted = siphon_e2e::pg_connect_at(STANDBY, &s.db).await;
    siphon_e2e::eventually(
        Duration::from_secs(60),
        "the promoted standby to accept writes",
        || {
            let promoted = &promoted;
            async move {
                let row = promoted
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .ok()?;
                (!row.get::<_, bool>(0)).then_some(())
            }
        },
    )
    .await;
    insert(&promoted, 151, 200).await;
    s.wait_condition("t", "Ready", "True", READY_TIMEOUT).await;

    let topic = s.topic("public", "t");
    siphon_e2e::eventually(
        Duration::from_secs(120),
        "every row, before and after the failover",
        || {
            let topic = topic.clone();
            async move {
                let mut ids: Vec<i64> = read_topic_now(&topic)
                    .await
                    .iter()
                    .filter_map(|r| r.after()?.get("id")?.as_i64())
                    .collect();
                ids.sort();
                ids.dedup();
                (ids == (1..=200).collect::<Vec<i64>>()).then_some(())
            }
        },
    )
    .await;
    s.delete("t").await;
    s.wait_gone("t", Duration::from_secs(90)).await;
    let left: i64 = promoted
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "teardown on the promoted server drops the slot");
    s.cleanup().await;
    drop(pair);
}

#[tokio::test]
async fn postgres_12_is_refused_naming_its_version() {
    let s = Scenario::on("PG12_PORT", "e2e-pg12").await;
    s.pg.batch_execute("CREATE TABLE public.t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let before = s.census().await;
    s.apply("t", &s.spec("[{ name: public.t }]", "")).await;
    let msg = s
        .wait_ready_reason("t", "UnsupportedServerVersion", READY_TIMEOUT)
        .await;
    assert!(
        msg.contains("PostgreSQL 12.") && msg.contains("13 or newer"),
        "{msg}"
    );
    assert_eq!(s.census().await, before, "nothing was created");
    s.cleanup().await;
}
