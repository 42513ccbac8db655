//! Siphon beside the Debezium PostgreSQL connector on one table holding every
//! type of docs/formats.md: both take the initial snapshot and then stream the
//! same inserts, updates (one leaving a TOASTed value alone), a key change, a
//! delete and a truncate, and their records are compared field by field.
//!
//! Debezium runs as users run it: Kafka Connect standalone from the stack's
//! Kafka jars, the JSON converter without schemas, pgoutput, its own slot and
//! publication, its defaults otherwise (`e2e/debezium/debezium.sh`). Every
//! difference the check allows is one docs/formats.md names; [`Expect`] holds
//! them, column by column, so a new difference fails the test until it is
//! fixed or documented.
//!
//! Needs the local stack (`make stack-up`, which also fetches the connector).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Fixture, Rec, TopicReader};
use serde_json::Value;

/// 1582-10-15, the first Gregorian day, as days since 1970-01-01.
const GREGORIAN_REFORM_DAY: i64 = -141_427;

const READ: Duration = Duration::from_secs(120);
const QUIET: Duration = Duration::from_secs(3);

/// The table: one column per type of docs/formats.md.
const SCHEMA: &str = r#"
CREATE EXTENSION IF NOT EXISTS hstore; CREATE EXTENSION IF NOT EXISTS citext; CREATE EXTENSION IF NOT EXISTS ltree;
CREATE SCHEMA compat;
CREATE TYPE compat.mood AS ENUM ('sad', 'happy');
CREATE DOMAIN compat.ts3 AS timestamp(3);
CREATE DOMAIN compat.posint AS int4 CHECK (VALUE > 0);
CREATE TYPE compat.pair AS (a int4, b text);
CREATE TABLE compat.every_type (
  id int4 PRIMARY KEY,
  c_bool bool, c_int2 int2, c_int4 int4, c_int8 int8, c_oid oid, c_float4 float4, c_float8 float8,
  c_numeric numeric, c_numeric_10_2 numeric(10,2), c_money money,
  c_text text, c_varchar varchar(10), c_bpchar char(5), c_name name, c_char "char",
  c_bytea bytea, c_uuid uuid, c_json json, c_jsonb jsonb, c_xml xml,
  c_date date, c_time time, c_time3 time(3), c_timetz timetz, c_ts timestamp, c_ts3 timestamp(3),
  c_tstz timestamptz, c_tstz0 timestamptz(0), c_interval interval,
  c_bit1 bit(1), c_bit16 bit(16), c_varbit varbit,
  c_point point, c_box box, c_inet inet, c_cidr cidr, c_macaddr macaddr, c_macaddr8 macaddr8,
  c_tsvector tsvector, c_tsquery tsquery, c_pg_lsn pg_lsn,
  c_int4range int4range, c_numrange numrange, c_tstzrange tstzrange, c_daterange daterange,
  c_enum compat.mood, c_domain_ts3 compat.ts3, c_domain_int compat.posint, c_composite compat.pair,
  c_hstore hstore, c_citext citext, c_ltree ltree,
  c_int4_arr int4[], c_text_arr text[], c_numeric_arr numeric[], c_numeric_5_2_arr numeric(5,2)[],
  c_tstz_arr timestamptz[], c_uuid_arr uuid[], c_int4_2d int4[],
  c_big text
);
"#;

/// Typical values, edge values, all NULL, and the infinities.
const ROWS: &str = r#"
INSERT INTO compat.every_type VALUES (1,
  true, -32768, 42, 9223372036854775807, 4294967295, 1.1, 0.1,
  12345678901234567890.000000000001, 1234.56, 1234.56,
  'he said "hi", \ ok ✓', 'abc', 'ab', 'a_name', 'x',
  '\x0001ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, "x"]}', '{"b": {"c": null}, "a": 1}', '<a b="1">t</a>',
  '2024-02-29', '04:05:06.789', '04:05:06.789', '10:15:30.5+02', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.123',
  '2024-01-02 03:04:05.123+00', '2024-01-02 03:04:05+00', '1 year 2 mons 3 days 04:05:06.5',
  B'1', B'0000000100000010', B'101',
  '(1,2)', '(1,1),(0,0)', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05',
  'a fat cat', 'fat & rat', '16/B374D848',
  '[1,10)', '(1.5,2.5]', '[2024-01-01 00:00+00,2024-02-01 00:00+00)', '[2024-01-01,2024-02-01)',
  'happy', '2024-01-02 03:04:05.123', 7, ROW(1, 'a b'),
  'a=>1, b=>NULL', 'MiXeD', 'top.middle.leaf',
  '{1,NULL,3}', '{"a","b c",NULL}', '{1.5,NaN}', '{1.50,-2.25}',
  '{"2024-01-02 03:04:05+00"}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', '{{1,2},{3,4}}',
  repeat('toasted ', 2000));
INSERT INTO compat.every_type VALUES (2,
  false, 0, -2147483648, -9223372036854775808, 0, 'NaN', '-Infinity',
  'NaN', -0.05, -0.99,
  '', 'x', 'abcde', 'n', 'y',
  '', '00000000-0000-0000-0000-000000000000', 'null', '[]', '<x/>',
  '0044-03-15 BC', '24:00:00', '23:59:59.999', '24:00:00+00', '0044-03-15 12:00:00 BC', '1969-12-31 23:59:59.999',
  '0044-03-15 12:00:00+00 BC', '1969-12-31 23:59:59+00', '-1 days -00:00:01',
  B'0', B'0000000000000000', B'',
  '(-1.5,0)', '(0,0),(0,0)', '::1', '::/0', 'ff:ff:ff:ff:ff:ff', 'ff:ff:ff:ff:ff:ff:ff:ff',
  '', 'a', '0/0',
  'empty', '(,)', '(,)', 'empty',
  'sad', '1970-01-01 00:00:00', 1, ROW(NULL, NULL),
  '', '', '',
  '{}', '{}', '{}', '{}', '{}', '{}', '{}',
  'short');
INSERT INTO compat.every_type (id) VALUES (3);
INSERT INTO compat.every_type (id, c_date, c_ts, c_ts3, c_tstz) VALUES (4, 'infinity', 'infinity', '-infinity', 'infinity');
"#;

/// How Siphon's value of a column relates to Debezium's: one entry per
/// difference docs/formats.md names ("Value encodings"); every other column
/// must be equal.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Debezium has no mapping and leaves the column out of its records.
    DroppedByDebezium,
    /// `numeric`/`money`: Siphon writes the exact decimal string, Debezium's
    /// `precise` mode base64 of the unscaled two's-complement integer (with
    /// `scale`, or as `{"scale","value"}` for an unconstrained numeric); NaN and
    /// the infinities, which `precise` cannot hold, are `null` in Debezium.
    PreciseDecimal { scale: Option<u32> },
    /// An array of such decimals, element by element.
    PreciseDecimalArray { scale: u32 },
    /// Siphon writes `"infinity"`/`"-infinity"`, Debezium a sentinel number.
    InfinitySentinel,
    /// A `date` before the Gregorian reform (1582-10-15) in a snapshot read:
    /// Debezium's snapshot reads it through JDBC's Julian calendar, days off
    /// from the proleptic Gregorian day its stream and Siphon write.
    JulianSnapshotDate,
    /// Debezium writes `null` where Siphon writes the value, when `when` holds
    /// for Siphon's value.
    NullInDebezium { when: fn(&Value) -> bool },
}

impl Expect {
    /// Whether Siphon's `s` and Debezium's `d` differ only as `self` says.
    fn accepts(&self, read: bool, s: &Value, d: &Value) -> bool {
        match *self {
            Expect::DroppedByDebezium => false,
            Expect::PreciseDecimal { scale } => precise_decimal(s, d, scale),
            Expect::PreciseDecimalArray { scale } => {
                matches!((s.as_array(), d.as_array()), (Some(a), Some(b))
                    if a.len() == b.len() && a.iter().zip(b).all(|(a, b)| precise_decimal(a, b, Some(scale))))
            }
            Expect::InfinitySentinel => {
                matches!(s.as_str(), Some("infinity" | "-infinity")) && d.is_i64()
            }
            Expect::JulianSnapshotDate => {
                read && s.as_i64().is_some_and(|days| days < GREGORIAN_REFORM_DAY) && d.is_i64()
            }
            Expect::NullInDebezium { when } => {
                let nulls =
                    d.is_null() || d.as_array().is_some_and(|a| a.iter().all(Value::is_null));
                !s.is_null() && when(s) && nulls
            }
        }
    }
}

fn expectations() -> BTreeMap<&'static str, Vec<Expect>> {
    fn always(_: &Value) -> bool {
        true
    }
    fn has_nan(v: &Value) -> bool {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e == "NaN" || e == "Infinity" || e == "-Infinity")
        })
    }
    fn nested(v: &Value) -> bool {
        v.as_array().is_some_and(|a| a.iter().any(Value::is_array))
    }
    BTreeMap::from([
        ("c_box", vec![Expect::DroppedByDebezium]),
        ("c_tsquery", vec![Expect::DroppedByDebezium]),
        ("c_pg_lsn", vec![Expect::DroppedByDebezium]),
        ("c_composite", vec![Expect::DroppedByDebezium]),
        ("c_numeric", vec![Expect::PreciseDecimal { scale: None }]),
        (
            "c_numeric_10_2",
            vec![Expect::PreciseDecimal { scale: Some(2) }],
        ),
        ("c_money", vec![Expect::PreciseDecimal { scale: Some(2) }]),
        (
            "c_date",
            vec![Expect::InfinitySentinel, Expect::JulianSnapshotDate],
        ),
        (
            "c_numeric_5_2_arr",
            vec![Expect::PreciseDecimalArray { scale: 2 }],
        ),
        ("c_ts", vec![Expect::InfinitySentinel]),
        ("c_ts3", vec![Expect::InfinitySentinel]),
        ("c_name", vec![Expect::NullInDebezium { when: always }]),
        (
            "c_numeric_arr",
            vec![Expect::NullInDebezium { when: has_nan }],
        ),
        // Debezium writes one null per inner array.
        ("c_int4_2d", vec![Expect::NullInDebezium { when: nested }]),
    ])
}

/// The Debezium connector as a Connect standalone worker; stopped on drop.
struct Debezium {
    child: Child,
    log: PathBuf,
}

impl Debezium {
    fn start(fx: &Fixture, prefix: &str) -> Self {
        let work = fx.dir.join("debezium");
        std::fs::create_dir_all(&work).expect("debezium folder");
        let connector = work.join("connector.properties");
        let properties = format!(
            "name={name}
connector.class=io.debezium.connector.postgresql.PostgresConnector
database.hostname={host}
database.port={port}
database.user={user}
database.password={password}
database.dbname={db}
topic.prefix={prefix}
plugin.name=pgoutput
slot.name={name}_dbz
publication.name={name}_dbz
publication.autocreate.mode=filtered
table.include.list=compat.every_type
snapshot.mode=initial
",
            name = fx.name,
            host = common::pg_host(),
            port = common::pg_port(),
            user = common::pg_user(),
            password = common::pg_password(),
            db = fx.name,
        );
        std::fs::write(&connector, properties).expect("connector.properties");
        let log = work.join("connect.log");
        let out = std::fs::File::create(&log).expect("connect log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/debezium/debezium.sh");
        let child = Command::new("bash")
            .arg(script)
            .arg("connect")
            .arg(&work)
            .arg(&connector)
            .env("KAFKA_BOOTSTRAP", common::kafka_bootstrap())
            .env("DEBEZIUM_HEAP", "-Xmx512m")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("connect log"))
            .stderr(out)
            .spawn()
            .expect("start Kafka Connect with the Debezium connector");
        Self { child, log }
    }

    /// Why Connect is gone, if it is.
    fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok().flatten()?;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        Some(format!(
            "Kafka Connect exited ({status}); last lines of {}:\n{}",
            self.log.display(),
            common::tail(&log, 40)
        ))
    }
}

impl Drop for Debezium {
    fn drop(&mut self) {
        // The script execs java: the child is the JVM.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_equal_debeziums_field_by_field_except_the_documented_differences() {
    let fx = Fixture::new("dbz_compat").await;
    let db = fx.sql().await;
    db.batch_execute(SCHEMA).await.expect("create the table");
    db.batch_execute(ROWS).await.expect("insert the rows");
    db.batch_execute(&format!(
        "CREATE TABLE public.siphon_watermarks (capture text PRIMARY KEY, watermark text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
         CREATE PUBLICATION {} FOR TABLE compat.every_type, public.siphon_watermarks;",
        fx.name
    ))
    .await
    .expect("Siphon's publication and watermark table");

    let dbz_prefix = format!("{}.dbz", fx.name);
    let mut debezium = Debezium::start(&fx, &dbz_prefix);
    let mut config = fx.config(&["compat.every_type"]);
    config.snapshot = "mode: Initial".into();
    let mut worker = fx.spawn(&config);
    worker.wait_ready(Duration::from_secs(60)).await;

    let mut siphon = TopicReader::new(&fx.topic("compat", "every_type"), "read_uncommitted");
    let mut dbz = TopicReader::new(
        &format!("{dbz_prefix}.compat.every_type"),
        "read_uncommitted",
    );
    // The snapshots: four reads each. Both slots exist by then, so every
    // change below reaches both.
    siphon.read_until(READ, QUIET, "Siphon's four reads", |r| r.len() >= 4);
    dbz.read_until_or(
        READ,
        QUIET,
        "Debezium's four reads",
        |r| r.len() >= 4,
        || debezium.exited(),
    );

    for statement in [
        // One transaction of four inserts: `source.sequence` across a transaction.
        "INSERT INTO compat.every_type SELECT id + 100, c_bool, c_int2, c_int4, c_int8, c_oid, c_float4, c_float8, c_numeric, c_numeric_10_2, c_money, c_text, c_varchar, c_bpchar, c_name, c_char, c_bytea, c_uuid, c_json, c_jsonb, c_xml, c_date, c_time, c_time3, c_timetz, c_ts, c_ts3, c_tstz, c_tstz0, c_interval, c_bit1, c_bit16, c_varbit, c_point, c_box, c_inet, c_cidr, c_macaddr, c_macaddr8, c_tsvector, c_tsquery, c_pg_lsn, c_int4range, c_numrange, c_tstzrange, c_daterange, c_enum, c_domain_ts3, c_domain_int, c_composite, c_hstore, c_citext, c_ltree, c_int4_arr, c_text_arr, c_numeric_arr, c_numeric_5_2_arr, c_tstz_arr, c_uuid_arr, c_int4_2d, c_big FROM compat.every_type ORDER BY id",
        // Leaves the TOASTed c_big alone: both write the placeholder.
        "UPDATE compat.every_type SET c_int4 = c_int4 + 1 WHERE id = 101",
        // A key change: delete (with tombstone) and create, with headers.
        "UPDATE compat.every_type SET id = 110 WHERE id = 102",
        "DELETE FROM compat.every_type WHERE id = 103",
        "TRUNCATE compat.every_type",
        // After the truncate, so both streams end on the same record.
        "INSERT INTO compat.every_type (id, c_text) VALUES (200, 'last')",
    ] {
        db.batch_execute(statement).await.expect(statement);
    }
    let ends_with_200 = |r: &[Rec]| r.last().and_then(|r| r.id("id")) == Some(200);
    let siphon = siphon
        .read_until(READ, QUIET, "Siphon's records up to id 200", ends_with_200)
        .to_vec();
    let dbz = dbz
        .read_until_or(
            READ,
            QUIET,
            "Debezium's records up to id 200",
            ends_with_200,
            || debezium.exited(),
        )
        .to_vec();
    drop(worker);
    drop(debezium);

    let mut problems = Vec::new();
    let expect = expectations();

    // Snapshot reads: pair by key (Debezium reads in physical order).
    let reads = |records: &[Rec]| -> BTreeMap<String, Rec> {
        records
            .iter()
            .filter(|r| r.op() == Some("r"))
            .map(|r| {
                (
                    r.key.as_ref().map(Value::to_string).unwrap_or_default(),
                    r.clone(),
                )
            })
            .collect()
    };
    let (siphon_reads, dbz_reads) = (reads(&siphon), reads(&dbz));
    assert_eq!(
        siphon_reads.keys().collect::<Vec<_>>(),
        dbz_reads.keys().collect::<Vec<_>>(),
        "the same rows read by both snapshots"
    );
    for (key, s) in &siphon_reads {
        compare(
            &format!("read {key}"),
            s,
            &dbz_reads[key],
            false,
            &expect,
            &mut problems,
        );
    }

    // The stream: Siphon's truncate is the one record Debezium does not write
    // (its default `skipped.operations=t`); the rest pair up in order.
    let streamed = |records: &[Rec]| -> Vec<Rec> {
        records
            .iter()
            .filter(|r| r.op() != Some("r"))
            .cloned()
            .collect()
    };
    let (mut siphon_stream, dbz_stream) = (streamed(&siphon), streamed(&dbz));
    let truncates: Vec<usize> = (0..siphon_stream.len())
        .filter(|&i| siphon_stream[i].op() == Some("t"))
        .collect();
    assert_eq!(
        truncates.len(),
        1,
        "Siphon writes the truncate: {siphon_stream:#?}"
    );
    siphon_stream.remove(truncates[0]);
    let ops = |r: &[Rec]| -> Vec<String> {
        r.iter()
            .map(|r| r.op().unwrap_or("tombstone").to_string())
            .collect()
    };
    assert_eq!(
        ops(&siphon_stream),
        ops(&dbz_stream),
        "the same records in the same order"
    );
    // Before the first streamed transaction Siphon's slot received its
    // backfill's watermark writes, which Debezium's publication leaves out:
    // `source.sequence` names the end of the previous transaction each
    // received.
    let tx_id = |r: &Rec| r.value.as_ref().map(|v| v["source"]["txId"].clone());
    let first_tx = dbz_stream.first().and_then(tx_id);
    for (i, (s, d)) in siphon_stream.iter().zip(&dbz_stream).enumerate() {
        let after_watermarks = tx_id(d).is_some() && tx_id(d) == first_tx;
        compare(
            &format!("stream #{i} ({})", ops(std::slice::from_ref(s))[0]),
            s,
            d,
            after_watermarks,
            &expect,
            &mut problems,
        );
    }
    assert!(
        problems.is_empty(),
        "{} differences docs/formats.md does not name:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Compares one pair of records; each difference not allowed is a line in
/// `problems`.
fn compare(
    what: &str,
    siphon: &Rec,
    dbz: &Rec,
    after_watermarks: bool,
    expect: &BTreeMap<&'static str, Vec<Expect>>,
    problems: &mut Vec<String>,
) {
    let mut differ = |field: &str, s: &dyn std::fmt::Debug, d: &dyn std::fmt::Debug| {
        problems.push(format!("{what}: {field}: Siphon {s:?}, Debezium {d:?}"));
    };
    if siphon.key != dbz.key {
        differ("key", &siphon.key, &dbz.key);
    }
    // Debezium 3 stamps every record with its Connect task's identity
    // (`__debezium.context.*`); Siphon has no such task.
    let headers = |r: &Rec| -> Vec<(String, Option<Vec<u8>>)> {
        r.headers
            .iter()
            .filter(|(name, _)| !name.starts_with("__debezium.context."))
            .cloned()
            .collect()
    };
    let (siphon_headers, dbz_headers) = (headers(siphon), headers(dbz));
    let names = |h: &[(String, Option<Vec<u8>>)]| -> Vec<String> {
        h.iter().map(|h| h.0.clone()).collect()
    };
    if names(&siphon_headers) != names(&dbz_headers) {
        differ(
            "header names",
            &names(&siphon_headers),
            &names(&dbz_headers),
        );
    }
    for ((name, s), (_, d)) in siphon_headers.iter().zip(&dbz_headers) {
        let parse = |b: &Option<Vec<u8>>| -> Option<Value> {
            b.as_deref().and_then(|b| serde_json::from_slice(b).ok())
        };
        if parse(s) != parse(d) {
            differ(&format!("header {name}"), &parse(s), &parse(d));
        }
    }
    let (Some(s), Some(d)) = (&siphon.value, &dbz.value) else {
        if siphon.value.is_some() != dbz.value.is_some() {
            differ("tombstone", &siphon.value.is_none(), &dbz.value.is_none());
        }
        return;
    };
    let order =
        |raw: &Option<Vec<u8>>, path: &[&str]| field_order(raw.as_deref().unwrap_or(b"null"), path);
    for path in [&[][..], &["source"][..]] {
        let (so, dor) = (order(&siphon.raw_value, path), order(&dbz.raw_value, path));
        if so != dor {
            differ(
                &format!(
                    "field order of {}",
                    if path.is_empty() {
                        "the envelope"
                    } else {
                        "source"
                    }
                ),
                &so,
                &dor,
            );
        }
    }
    for field in ["op", "transaction"] {
        if s[field] != d[field] {
            differ(field, &s[field], &d[field]);
        }
    }
    // When each wrote the record: both numbers, never equal by design.
    for field in ["ts_ms", "ts_us", "ts_ns"] {
        if !s[field].is_i64() || !d[field].is_i64() {
            differ(field, &s[field], &d[field]);
        }
    }
    compare_source(what, &s["source"], &d["source"], after_watermarks, problems);
    let read = s["op"] == "r";
    for side in ["before", "after"] {
        compare_row(
            &format!("{what}: {side}"),
            read,
            &s[side],
            &d[side],
            expect,
            problems,
        );
    }
}

/// `source`: `version` and `name` say who wrote the record; a snapshot
/// read's position fields differ as docs/formats.md says.
fn compare_source(
    what: &str,
    s: &Value,
    d: &Value,
    after_watermarks: bool,
    problems: &mut Vec<String>,
) {
    let read = s["snapshot"] != "false";
    let (Some(so), Some(dobj)) = (s.as_object(), d.as_object()) else {
        problems.push(format!("{what}: source: Siphon {s}, Debezium {d}"));
        return;
    };
    for (field, dv) in dobj {
        let sv = so.get(field).unwrap_or(&Value::Null);
        let allowed = match field.as_str() {
            "version" => sv.as_str().is_some_and(|v| v.starts_with("siphon-")),
            "name" => sv
                .as_str()
                .is_some_and(|v| format!("{v}.dbz") == dv.as_str().unwrap_or("")),
            // A snapshot read: Debezium stamps the snapshot's own transaction,
            // position and clock; Siphon the backfill's high watermark.
            "txId" | "lsn" | "sequence" | "ts_ms" | "ts_us" | "ts_ns" if read => true,
            "sequence" if after_watermarks => {
                let last = |v: &Value| -> Option<Value> {
                    serde_json::from_str::<Vec<Value>>(v.as_str()?).ok()?.pop()
                };
                last(sv).is_some() && last(sv) == last(dv)
            }
            _ => sv == dv,
        };
        if !allowed {
            problems.push(format!(
                "{what}: source.{field}: Siphon {sv}, Debezium {dv}"
            ));
        }
    }
    for field in so.keys().filter(|f| !dobj.contains_key(*f)) {
        problems.push(format!("{what}: source.{field}: only Siphon writes it"));
    }
}

fn compare_row(
    what: &str,
    read: bool,
    s: &Value,
    d: &Value,
    expect: &BTreeMap<&'static str, Vec<Expect>>,
    problems: &mut Vec<String>,
) {
    let (Some(srow), Some(drow)) = (s.as_object(), d.as_object()) else {
        if s != d {
            problems.push(format!("{what}: Siphon {s}, Debezium {d}"));
        }
        return;
    };
    for (column, sv) in srow {
        let dv = drow.get(column);
        let allowed = expect.get(column.as_str()).map_or(&[][..], Vec::as_slice);
        let ok = match dv {
            None => allowed
                .iter()
                .any(|e| matches!(e, Expect::DroppedByDebezium)),
            Some(dv) => same_value(sv, dv) || allowed.iter().any(|e| e.accepts(read, sv, dv)),
        };
        if !ok {
            problems.push(format!(
                "{what}.{column}: Siphon {sv}, Debezium {}",
                dv.map_or("(absent)".to_string(), Value::to_string)
            ));
        }
    }
    for column in drow.keys().filter(|c| !srow.contains_key(*c)) {
        problems.push(format!("{what}.{column}: only Debezium writes it"));
    }
}

/// Equal, floats compared as numbers (`1e+20` and `1.0E20` are one value).
fn same_value(s: &Value, d: &Value) -> bool {
    match (s, d) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_value(a, b))
        }
        _ => s == d,
    }
}

/// Whether Debezium's `precise` form (`"AeJA"`, or `{"scale":4,"value":"…"}`)
/// is Siphon's decimal string; NaN and the infinities are `null` in Debezium.
fn precise_decimal(s: &Value, d: &Value, scale: Option<u32>) -> bool {
    let Some(text) = s.as_str() else {
        return false;
    };
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return d.is_null();
    }
    let (scale, b64) = match (scale, d) {
        (Some(scale), Value::String(b64)) => (scale, b64.as_str()),
        (None, Value::Object(o)) => match (
            o.get("scale").and_then(Value::as_u64),
            o.get("value").and_then(Value::as_str),
        ) {
            (Some(scale), Some(b64)) => (scale as u32, b64),
            _ => return false,
        },
        _ => return false,
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    // Two's complement, big-endian.
    let mut unscaled: i128 = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        -1
    } else {
        0
    };
    for b in bytes {
        unscaled = (unscaled << 8) | i128::from(b);
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let frac = format!("{frac:0<width$}", width = scale as usize);
    if frac.len() != scale as usize {
        return false;
    }
    let Ok(magnitude) = format!("{int}{frac}").parse::<i128>() else {
        return false;
    };
    unscaled == if negative { -magnitude } else { magnitude }
}

/// The field names of the JSON object at `path` in `raw`, in written order.
fn field_order(raw: &[u8], path: &[&str]) -> Vec<String> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys<'p>(&'p [&'p str]);
    impl<'de> DeserializeSeed<'de> for Keys<'_> {
        type Value = Vec<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Keys<'_> {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut keys = Vec::new();
            let mut inner = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                match self.0.split_first() {
                    Some((first, rest)) if *first == key => {
                        inner = map.next_value_seed(Keys(rest))?
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                keys.push(key);
            }
            Ok(if self.0.is_empty() { keys } else { inner })
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    Keys(path).deserialize(&mut de).unwrap_or_default()
}
