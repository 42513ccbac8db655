//! Slot problems are reported with a message that says what is wrong: a
//! missing slot (the worker may not create it) ends the worker; a slot that
//! another process streams from is reported as in use until it is free.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_slot_is_a_definite_error() {
    let fx = Fixture::new("noslot").await;
    let db = fx.sql().await;
    db.batch_execute(&format!(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION {} FOR TABLE t;",
        fx.name
    ))
    .await
    .expect("setup");
    let mut config = fx.config(&["public.t"]);
    config.create_slot = false;
    let mut worker = fx.spawn(&config);
    let status = worker
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("the worker gives up instead of retrying");
    let output = worker.output();
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(&format!(
            "siphon-worker: replication slot {} does not exist",
            fx.name
        )),
        "{output}"
    );
    let slots: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&fx.name],
        )
        .await
        .expect("slots")
        .get(0);
    assert_eq!(slots, 0, "no slot was created behind the operator's back");
}

/// Kills the holder on drop.
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_in_use_elsewhere_is_reported_until_it_is_free() {
    let fx = Fixture::new("busyslot").await;
    let db = fx.sql().await;
    db.batch_execute(&format!(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION {} FOR TABLE t;",
        fx.name
    ))
    .await
    .expect("setup");
    db.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&fx.name],
    )
    .await
    .expect("slot");
    let holder = Holder(
        Command::new("pg_recvlogical")
            .args([
                "-h",
                &common::pg_host(),
                "-p",
                &common::pg_port().to_string(),
            ])
            .args(["-U", &common::pg_user(), "-d", &fx.name])
            .args(["--slot", &fx.name, "--start", "-f", "/dev/null"])
            .args(["-o", "proto_version=1", "-o"])
            .arg(format!("publication_names={}", fx.name))
            .env("PGPASSWORD", common::pg_password())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pg_recvlogical (postgresql-client)"),
    );
    let holder_pid: i32 = common::eventually(
        Duration::from_secs(30),
        "pg_recvlogical to hold the slot",
        || async {
            db.query_one(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&fx.name],
            )
            .await
            .ok()
            .and_then(|r| r.get::<_, Option<i32>>(0))
        },
    )
    .await;

    let mut config = fx.config(&["public.t"]);
    config.create_slot = false;
    let mut worker = fx.spawn(&config);
    // The worker retries (another process may let go), and its restarts
    // count the reason; the message naming the holder's pid is the error's
    // text (unit-tested in capture.rs).
    assert!(
        worker
            .wait_sample(
                "siphon_worker_restarts_total{reason=\"slot_active\"}",
                1.0,
                Duration::from_secs(60)
            )
            .await,
        "expected a restart for the busy slot:\n{}",
        worker.output()
    );
    assert_eq!(
        worker.get("/readyz").await.map(|(code, _)| code),
        Some(503),
        "not ready while another process streams from the slot"
    );
    let active: Option<i32> = db
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&fx.name],
        )
        .await
        .expect("slot")
        .get(0);
    assert_eq!(
        active,
        Some(holder_pid),
        "the worker never takes a slot another process streams from"
    );

    // Once the other process lets go, the worker takes the slot over.
    drop(holder);
    worker.wait_ready(Duration::from_secs(120)).await;
    db.batch_execute("INSERT INTO t VALUES (1)")
        .await
        .expect("insert");
    let mut reader = common::TopicReader::new(&fx.topic("public", "t"), "read_uncommitted");
    let records = reader.read_until(
        Duration::from_secs(60),
        Duration::from_millis(500),
        "the insert",
        |r| !r.is_empty(),
    );
    assert_eq!(records[0].id("id"), Some(1));
}
