//! The replication client, decoder and assembler against the real PostgreSQL
//! of the local stack (`make stack-up`, then `source .stack/env`).
//!
//! Each test makes its own tables, publication and temporary slot (names
//! with a random suffix) and drops them at the end, so tests can run in
//! parallel and leave nothing behind.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use siphon_postgres::quote_ident;
use siphon_worker::change::{Change, Datum, Lsn, Op};
use siphon_worker::replication::{
    Assembler, AssemblerConfig, ConnectParams, Decoder, Message, ReplicationConnection,
    ReplicationError, ReplicationMessage, ReplicationOptions, SslMode, TxEvent, choose_protocol,
};
use tokio::time::Instant;
use tokio_postgres::NoTls;

fn params() -> ConnectParams {
    let Ok(port) = std::env::var("PGPORT") else {
        panic!(
            "PGPORT is not set: run `make stack-up` and `source .stack/env` before the integration tests"
        );
    };
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let mut params = ConnectParams::new(
        env("PGHOST", "127.0.0.1"),
        env("PGUSER", "postgres"),
        env("PGDATABASE", "postgres"),
    );
    params.port = port.parse().expect("PGPORT is a port number");
    params.password = std::env::var("PGPASSWORD").ok();
    params.ssl_mode = SslMode::Disable;
    params
}

fn suffix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{:x}{:x}{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn sql(params: &ConnectParams) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&params.host)
        .port(params.port)
        .user(&params.user)
        .dbname(&params.database)
        .application_name("siphon-test");
    if let Some(password) = &params.password {
        config.password(password);
    }
    let (client, connection) = config
        .connect(NoTls)
        .await
        .expect("SQL connection to the stack's PostgreSQL");
    tokio::spawn(connection);
    client
}

/// Runs `body`, then `cleanup` (SQL), even when `body` panics.
async fn with_cleanup<F>(params: &ConnectParams, cleanup: String, body: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(body).await;
    let client = sql(params).await;
    if let Err(error) = client.batch_execute(&cleanup).await {
        eprintln!("cleanup failed: {error}");
    }
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// A streaming session: connection, decoder and assembler.
struct Session {
    conn: ReplicationConnection,
    decoder: Decoder,
    asm: Assembler,
    events: Vec<TxEvent>,
    stream_blocks: usize,
    /// Stream Abort messages: (whole transactions, subtransactions).
    stream_aborts: (usize, usize),
    confirmed: Lsn,
    spill_dir: PathBuf,
}

impl Session {
    /// Connects, creates temporary slot `slot` and starts streaming
    /// `publication`. `work_mem` sets the walsender's
    /// `logical_decoding_work_mem`, past which it streams a transaction.
    async fn start(
        params: &ConnectParams,
        slot: &str,
        publication: &str,
        work_mem: Option<&str>,
        max_memory: usize,
    ) -> Self {
        let mut conn = ReplicationConnection::connect(params)
            .await
            .expect("replication connection");
        let system = conn.identify_system().await.expect("IDENTIFY_SYSTEM");
        assert!(system.timeline >= 1);
        assert!(system.xlog_pos > Lsn(0));
        assert_eq!(system.database.as_deref(), Some(params.database.as_str()));
        let version = conn.server_version_num().await.expect("server version");
        if let Some(work_mem) = work_mem {
            conn.simple_query(&format!("SET logical_decoding_work_mem = '{work_mem}'"))
                .await
                .expect("SET logical_decoding_work_mem");
        }
        let created = conn
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                quote_ident(slot)
            ))
            .await
            .expect("CREATE_REPLICATION_SLOT");
        assert_eq!(created[0][0].as_deref(), Some(slot));
        let options = ReplicationOptions {
            proto: choose_protocol(version),
            publication_names: vec![publication.to_owned()],
        };
        conn.start_replication(slot, Lsn(0), &options)
            .await
            .expect("START_REPLICATION");
        let spill_dir = std::env::temp_dir().join(format!("siphon-it-{slot}"));
        let asm = Assembler::new(AssemblerConfig {
            max_memory,
            spill_dir: spill_dir.clone(),
            key_columns: Default::default(),
        })
        .expect("assembler");
        Session {
            conn,
            decoder: Decoder::new(),
            asm,
            events: Vec::new(),
            stream_blocks: 0,
            stream_aborts: (0, 0),
            confirmed: Lsn(0),
            spill_dir,
        }
    }

    /// Reads until a transaction containing a change of `table` with first
    /// column `marker` has committed.
    async fn until_marker(&mut self, table: &str, marker: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let seen = self.events.iter().position(|e| match e {
                TxEvent::Change(c) => {
                    c.relation.name == table
                        && text(c.new.as_ref().and_then(|r| r.first())) == marker
                }
                _ => false,
            });
            if let Some(at) = seen
                && self
                    .events
                    .iter()
                    .skip(at)
                    .any(|e| matches!(e, TxEvent::Commit { .. }))
            {
                return;
            }
            let message = tokio::time::timeout_at(deadline, self.conn.next_message())
                .await
                .expect("timed out waiting for the marker change")
                .expect("replication stream");
            match message {
                ReplicationMessage::XLogData {
                    wal_start, data, ..
                } => {
                    let message = self.decoder.decode(&data).expect("pgoutput decodes");
                    match &message {
                        Message::StreamStart { .. } => self.stream_blocks += 1,
                        Message::StreamAbort { xid, subxid, .. } if xid == subxid => {
                            self.stream_aborts.0 += 1
                        }
                        Message::StreamAbort { .. } => self.stream_aborts.1 += 1,
                        _ => {}
                    }
                    for event in self.asm.handle(wal_start, message).expect("assembles") {
                        let event = event.expect("replays");
                        if let TxEvent::Commit { end_lsn, .. } = &event {
                            self.confirmed = *end_lsn;
                        }
                        self.events.push(event);
                    }
                }
                ReplicationMessage::PrimaryKeepalive {
                    reply_requested, ..
                } => {
                    if reply_requested {
                        self.conn
                            .send_standby_status(
                                self.confirmed,
                                self.confirmed,
                                self.confirmed,
                                false,
                            )
                            .await
                            .expect("standby status");
                    }
                }
            }
        }
    }

    /// The changes of `tables`, in order.
    fn changes(&self, tables: &[&str]) -> Vec<&Change> {
        self.events
            .iter()
            .filter_map(|e| match e {
                TxEvent::Change(c) if tables.contains(&c.relation.name.as_str()) => Some(c),
                _ => None,
            })
            .collect()
    }

    async fn close(mut self) {
        self.conn
            .send_standby_status(self.confirmed, self.confirmed, self.confirmed, false)
            .await
            .expect("standby status");
        self.conn.close().await.expect("clean close");
        let left = std::fs::read_dir(&self.spill_dir).map_or(0, |d| d.count());
        assert_eq!(left, 0, "spill files left behind");
        let _ = std::fs::remove_dir(&self.spill_dir);
    }
}

fn text(datum: Option<&Datum>) -> String {
    match datum {
        Some(Datum::Text(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Datum::Null) => "NULL".into(),
        Some(Datum::UnchangedToast) => "TOAST".into(),
        Some(Datum::Binary(_)) => "BINARY".into(),
        None => "-".into(),
    }
}

/// Values as text, the large column shortened to `BIG` when it is `big`.
fn row(values: Option<&Vec<Datum>>, big: &str) -> Vec<String> {
    values.map_or_else(Vec::new, |r| {
        r.iter()
            .map(|d| {
                let t = text(Some(d));
                if t == big { "BIG".into() } else { t }
            })
            .collect()
    })
}

#[tokio::test]
async fn dml_and_truncate_decode_with_old_keys_and_toast() {
    let params = params();
    let s = suffix();
    let (a, b, marker) = (
        format!("siphon_a_{s}"),
        format!("siphon_b_{s}"),
        format!("siphon_m_{s}"),
    );
    let publication = format!("siphon_pub_{s}");
    let slot = format!("siphon_slot_{s}");
    let client = sql(&params).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {a} (id int PRIMARY KEY, name text, big text);
             ALTER TABLE {a} ALTER COLUMN big SET STORAGE EXTERNAL;
             CREATE TABLE {b} (id int PRIMARY KEY);
             CREATE TABLE {marker} (tag text PRIMARY KEY);
             CREATE PUBLICATION {publication} FOR TABLE {a}, {b}, {marker};"
        ))
        .await
        .expect("setup");
    let cleanup = format!(
        "DROP PUBLICATION IF EXISTS {publication}; DROP TABLE IF EXISTS {a}, {b}, {marker};"
    );
    let p = params.clone();
    with_cleanup(&params, cleanup, async move {
        let mut session = Session::start(&p, &slot, &publication, None, 1 << 20).await;
        let client = sql(&p).await;
        // 10 000 characters stored out of line, uncompressed.
        let big: String = (0..10_000)
            .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
            .collect();
        client
            .execute(
                &format!("INSERT INTO {a} VALUES (1, 'one', $1), (2, 'two', NULL)"),
                &[&big],
            )
            .await
            .expect("insert");
        client
            .batch_execute(&format!(
                "UPDATE {a} SET name = 'uno' WHERE id = 1;
                 UPDATE {a} SET id = 10 WHERE id = 2;
                 DELETE FROM {a} WHERE id = 10;
                 ALTER TABLE {a} REPLICA IDENTITY FULL;
                 UPDATE {a} SET name = 'eins' WHERE id = 1;
                 DELETE FROM {a} WHERE id = 1;
                 INSERT INTO {b} VALUES (7);
                 TRUNCATE {a}, {b};
                 INSERT INTO {marker} VALUES ('done');"
            ))
            .await
            .expect("changes");
        session.until_marker(&marker, "done").await;

        let changes = session.changes(&[&a, &b]);
        let seen: Vec<(Op, &str, Vec<String>, Vec<String>)> = changes
            .iter()
            .map(|c| {
                (
                    c.op,
                    if c.relation.name == a { "a" } else { "b" },
                    row(c.old.as_ref(), &big),
                    row(c.new.as_ref(), &big),
                )
            })
            .collect();
        let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let expected = vec![
            (Op::Insert, "a", v(&[]), v(&["1", "one", "BIG"])),
            (Op::Insert, "a", v(&[]), v(&["2", "two", "NULL"])),
            // identity DEFAULT, key unchanged: no old row, unchanged TOAST not sent
            (Op::Update, "a", v(&[]), v(&["1", "uno", "TOAST"])),
            // key changed: the old key
            (
                Op::Update,
                "a",
                v(&["2", "NULL", "NULL"]),
                v(&["10", "two", "NULL"]),
            ),
            (Op::Delete, "a", v(&["10", "NULL", "NULL"]), v(&[])),
            // identity FULL: the whole old row, the large value included
            (
                Op::Update,
                "a",
                v(&["1", "uno", "BIG"]),
                v(&["1", "eins", "TOAST"]),
            ),
            (Op::Delete, "a", v(&["1", "eins", "BIG"]), v(&[])),
            (Op::Insert, "b", v(&[]), v(&["7"])),
            (Op::Truncate, "a", v(&[]), v(&[])),
            (Op::Truncate, "b", v(&[]), v(&[])),
        ];
        assert_eq!(seen, expected);

        // the relation follows ALTER TABLE … REPLICA IDENTITY FULL
        assert_eq!(changes[0].relation.replica_identity, b'd');
        assert_eq!(changes[5].relation.replica_identity, b'f');
        assert_eq!(
            changes[0]
                .relation
                .columns
                .iter()
                .map(|c| (c.name.as_str(), c.is_key))
                .collect::<Vec<_>>(),
            [("id", true), ("name", false), ("big", false)]
        );
        // the two inserts are one transaction; the truncate of both tables another
        assert_eq!(changes[0].xid, changes[1].xid);
        assert_eq!(changes[0].commit_lsn, changes[1].commit_lsn);
        assert_ne!(changes[1].xid, changes[2].xid);
        assert_eq!(changes[8].xid, changes[9].xid);
        // every change sits between its Begin and Commit, with the commit's LSN
        let mut open: Option<(u32, Lsn)> = None;
        for event in &session.events {
            match event {
                TxEvent::Begin { xid, final_lsn, .. } => {
                    assert!(open.is_none(), "nested begin");
                    open = Some((*xid, *final_lsn));
                }
                TxEvent::Change(c) => assert_eq!(open, Some((c.xid, c.commit_lsn))),
                TxEvent::Commit {
                    xid,
                    commit_lsn,
                    end_lsn,
                    ..
                } => {
                    assert_eq!(open.take(), Some((*xid, *commit_lsn)));
                    assert!(end_lsn > commit_lsn);
                }
                TxEvent::Message(_) => {}
            }
        }
        session.close().await;
    })
    .await;
}

#[tokio::test]
async fn large_transactions_stream_completely_and_aborted_ones_deliver_nothing() {
    let params = params();
    let s = suffix();
    let (t, marker) = (format!("siphon_s_{s}"), format!("siphon_m_{s}"));
    let publication = format!("siphon_pub_{s}");
    let slot = format!("siphon_slot_{s}");
    let client = sql(&params).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, pad text);
             CREATE TABLE {marker} (tag text PRIMARY KEY);
             CREATE PUBLICATION {publication} FOR TABLE {t}, {marker};"
        ))
        .await
        .expect("setup");
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .expect("version")
        .get(0);
    let cleanup =
        format!("DROP PUBLICATION IF EXISTS {publication}; DROP TABLE IF EXISTS {t}, {marker};");
    let p = params.clone();
    with_cleanup(&params, cleanup, async move {
        // The walsender streams past 64 kB; the assembler spills past 32 kB.
        let mut session = Session::start(&p, &slot, &publication, Some("64kB"), 32 * 1024).await;
        let client = sql(&p).await;
        let insert = |from: i32, to: i32| {
            format!(
                "INSERT INTO {t} SELECT g, repeat('x', 200) FROM generate_series({from}, {to}) g;"
            )
        };
        client
            .batch_execute(&format!(
                "BEGIN; {} SAVEPOINT sp; {} ROLLBACK TO SAVEPOINT sp; {} COMMIT;",
                insert(1, 2000),
                insert(100_001, 101_000),
                insert(2001, 3000)
            ))
            .await
            .expect("large transaction");
        client
            .batch_execute(&format!("BEGIN; {} ROLLBACK;", insert(200_001, 202_000)))
            .await
            .expect("aborted large transaction");
        client
            .batch_execute(&format!("INSERT INTO {marker} VALUES ('done');"))
            .await
            .expect("marker");
        session.until_marker(&marker, "done").await;

        if version >= 140_000 {
            assert!(
                session.stream_blocks > 0,
                "the large transaction was not streamed"
            );
            assert_eq!(
                session.stream_aborts,
                (1, 1),
                "one aborted transaction, one rolled back savepoint"
            );
            assert!(
                session.asm.spill_count() > 0,
                "the streamed transactions were not spilled"
            );
        }
        let changes = session.changes(&[&t]);
        let ids: Vec<i32> = changes
            .iter()
            .map(|c| {
                text(c.new.as_ref().and_then(|r| r.first()))
                    .parse()
                    .expect("id")
            })
            .collect();
        assert_eq!(
            ids,
            (1..=3000).collect::<Vec<_>>(),
            "whole, in order, without the rolled back savepoint"
        );
        assert!(
            changes
                .iter()
                .all(|c| c.op == Op::Insert && c.xid == changes[0].xid)
        );
        assert!(
            changes
                .iter()
                .all(|c| c.commit_lsn == changes[0].commit_lsn)
        );
        assert!(
            changes.windows(2).all(|w| w[0].lsn <= w[1].lsn),
            "changes in WAL order"
        );
        assert_eq!(
            text(changes[0].new.as_ref().and_then(|r| r.get(1))),
            "x".repeat(200)
        );
        let commits = session
            .events
            .iter()
            .filter(|e| matches!(e, TxEvent::Commit { .. }))
            .count();
        assert_eq!(
            commits, 2,
            "the large transaction and the marker; the aborted one not at all"
        );
        assert_eq!(session.asm.streamed_transactions(), 0);
        assert_eq!(session.asm.buffered_memory(), 0);
        session.close().await;
    })
    .await;
}

#[tokio::test]
async fn scram_authentication_and_its_failures() {
    let params = params();
    // SCRAM-SHA-256 is what the stack's pg_hba.conf asks for over TCP.
    let mut conn = ReplicationConnection::connect(&params)
        .await
        .expect("SCRAM login");
    assert!(!conn.is_tls());
    assert!(conn.backend_pid() > 0);
    assert!(conn.server_version_num().await.expect("version") >= 100_000);
    conn.close().await.expect("close");

    let mut wrong = params.clone();
    wrong.password = Some("certainly-not-the-password".into());
    let err = ReplicationConnection::connect(&wrong)
        .await
        .expect_err("wrong password");
    assert!(
        matches!(err, ReplicationError::AuthFailed { .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());
    let message = err.to_string();
    assert!(
        message.contains("check the credentials Secret"),
        "{message}"
    );
    assert!(message.contains("28P01"), "{message}");
    assert!(!message.contains("certainly-not-the-password"));

    let mut missing = params.clone();
    missing.password = None;
    let err = ReplicationConnection::connect(&missing)
        .await
        .expect_err("no password");
    assert!(matches!(err, ReplicationError::PasswordRequired), "{err:?}");
}

#[tokio::test]
async fn role_without_replication_gets_the_grant_fix() {
    let params = params();
    let role = format!("siphon_norepl_{}", suffix());
    let client = sql(&params).await;
    client
        .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'"))
        .await
        .expect("create role");
    let mut as_role = params.clone();
    as_role.user = role.clone();
    as_role.password = Some(format!("pw-{role}"));
    let result = ReplicationConnection::connect(&as_role).await;
    client
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .expect("drop role");
    let err = result.expect_err("no REPLICATION attribute");
    assert!(
        matches!(err, ReplicationError::NoReplicationPrivilege { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("grant REPLICATION to the role"),
        "{err}"
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn missing_and_busy_slots_are_definite_errors() {
    let params = params();
    let s = suffix();
    let publication = format!("siphon_pub_{s}");
    let client = sql(&params).await;
    client
        .batch_execute(&format!("CREATE PUBLICATION {publication}"))
        .await
        .expect("publication");
    let cleanup = format!("DROP PUBLICATION IF EXISTS {publication};");
    let p = params.clone();
    with_cleanup(&params, cleanup, async move {
        let options = ReplicationOptions {
            proto: choose_protocol(150_000),
            publication_names: vec![publication.clone()],
        };
        let mut conn = ReplicationConnection::connect(&p).await.expect("connect");
        let err = conn
            .start_replication(&format!("siphon_missing_{s}"), Lsn(0), &options)
            .await
            .expect_err("no such slot");
        assert!(
            matches!(err, ReplicationError::SlotMissing { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("the slot does not exist"), "{err}");
        assert!(!err.is_transient());
        // the connection stays usable after an error
        conn.simple_query("IDENTIFY_SYSTEM")
            .await
            .expect("still usable");
        conn.close().await.expect("close");

        let slot = format!("siphon_busy_{s}");
        let first = Session::start(&p, &slot, &publication, None, 1 << 20).await;
        let mut second = ReplicationConnection::connect(&p).await.expect("connect");
        let err = second
            .start_replication(&slot, Lsn(0), &options)
            .await
            .expect_err("slot in use");
        assert!(
            matches!(err, ReplicationError::SlotActive { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("another process is streaming from this slot"),
            "{err}"
        );
        second.close().await.expect("close");
        first.close().await;
    })
    .await;
}
