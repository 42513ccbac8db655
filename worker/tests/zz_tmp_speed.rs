use std::sync::Arc;
use bytes::Bytes;
use siphon_worker::change::*;
use siphon_worker::record::*;
use siphon_worker::values::{TypeRegistry, oid};
use siphon_crds::capture::{OutputSpec, RecordFormat};
#[test]
fn speed() {
    let col = |n: &str, t: u32, k: bool| Column { name: n.into(), type_oid: t, type_modifier: -1, is_key: k };
    let rel = Arc::new(Relation { oid: 1, schema: "public".into(), name: "orders".into(), replica_identity: b'd', columns: vec![
        col("id", oid::INT8, true), col("customer", oid::TEXT, false), col("created_at", oid::TIMESTAMPTZ, false),
        col("total", oid::NUMERIC, false), col("paid", oid::BOOL, false), col("meta", oid::JSONB, false),
        col("updated", oid::TIMESTAMP, false), col("qty", oid::INT4, false), col("tags", oid::TEXT_ARRAY, false), col("note", oid::VARCHAR, false)]});
    let t = |s: &str| Datum::Text(Bytes::copy_from_slice(s.as_bytes()));
    let row = vec![t("123456"), t("Jane Doe"), t("2024-01-02 03:04:05.123456+00"), t("1234.56"), t("t"), t(r#"{"a": 1, "b": [1,2,3]}"#),
        t("2024-01-02 03:04:05.123456"), t("3"), t("{a,b,c}"), t("some note with \"quotes\"")];
    let c = Change { op: Op::Insert, relation: rel, old: None, new: Some(row), commit_lsn: Lsn(1), lsn: Lsn(1), xid: 1, commit_ts_us: 1, snapshot: None };
    let mut enc = RecordEncoder::new(EncoderSettings { format: RecordFormat::Debezium, output: OutputSpec::default(), tombstones: true, topic_prefix: "shop".into(), database: "db".into() }, Arc::new(TypeRegistry::builtin()));
    let mut out = Vec::with_capacity(1024);
    let n = 1_000_000;
    let start = std::time::Instant::now();
    let mut bytes = 0;
    for _ in 0..n { out.clear(); enc.encode_at(&c, 5, &mut out); bytes += out[0].value.as_ref().unwrap().len(); }
    let el = start.elapsed();
    eprintln!("{} rows/s, {} bytes/row", n as f64 / el.as_secs_f64(), bytes / n);
}
