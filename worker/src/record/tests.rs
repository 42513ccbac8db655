//! Envelope of each operation, compared with the expected JSON.

use bytes::Bytes;
use serde_json::{Value, json};
use siphon_crds::capture::DecimalHandling;

use super::*;
use crate::change::Column;
use crate::values::oid;

const NOW_US: i64 = 1_700_000_000_123_456;
const COMMIT_US: i64 = 1_699_999_999_000_001;

fn relation(identity: u8) -> Arc<Relation> {
    let col = |name: &str, type_oid: u32, is_key: bool| Column {
        name: name.into(),
        type_oid,
        type_modifier: -1,
        is_key,
    };
    Arc::new(Relation {
        oid: 16_400,
        schema: "public".into(),
        name: "orders".into(),
        replica_identity: identity,
        columns: vec![
            col("id", oid::INT4, true),
            col("OrderTotal", oid::NUMERIC, false),
            col("note", oid::TEXT, false),
            col("tags", oid::TEXT_ARRAY, false),
            col("blob", oid::BYTEA, false),
            col("counts", oid::INT4_ARRAY, false),
        ],
    })
}

fn t(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn row(id: &str, total: &str, note: Datum) -> Row {
    vec![t(id), t(total), note, t("{a,b}"), t("\\x01"), Datum::Null]
}

fn key_only(id: &str) -> Row {
    vec![
        t(id),
        Datum::Null,
        Datum::Null,
        Datum::Null,
        Datum::Null,
        Datum::Null,
    ]
}

fn change(op: Op, relation: Arc<Relation>, old: Option<Row>, new: Option<Row>) -> Change {
    Change {
        op,
        relation,
        old,
        new,
        commit_lsn: Lsn(0x1_0000_0100),
        lsn: Lsn(0x1_0000_00F0),
        last_commit_end: Lsn(0x1_0000_00E0),
        xid: 777,
        commit_ts_us: COMMIT_US,
        snapshot: None,
    }
}

fn settings(format: RecordFormat) -> EncoderSettings {
    EncoderSettings {
        format,
        output: OutputSpec::default(),
        tombstones: true,
        topic_prefix: "shop".into(),
        database: "shopdb".into(),
        selected_columns: HashMap::new(),
    }
}

fn encoder(settings: EncoderSettings) -> RecordEncoder {
    RecordEncoder::new(settings, Arc::new(TypeRegistry::builtin()))
}

fn encode(enc: &mut RecordEncoder, c: &Change) -> Vec<Record> {
    let mut out = Vec::new();
    enc.encode_at(c, NOW_US, &mut out);
    out
}

fn parse(bytes: &Option<Vec<u8>>) -> Value {
    match bytes {
        Some(b) => serde_json::from_slice(b)
            .unwrap_or_else(|e| panic!("invalid JSON {:?}: {e}", String::from_utf8_lossy(b))),
        None => Value::Null,
    }
}

fn source(snapshot: &str) -> Value {
    json!({
        "version": SOURCE_VERSION,
        "connector": "postgresql",
        "name": "shop",
        "ts_ms": 1_699_999_999_000i64,
        "snapshot": snapshot,
        "db": "shopdb",
        "sequence": "[\"4294967520\",\"4294967536\"]",
        "ts_us": COMMIT_US,
        "ts_ns": COMMIT_US * 1000,
        "schema": "public",
        "table": "orders",
        "txId": 777,
        "lsn": 4_294_967_536u64,
        "xmin": null,
        "origin": null,
        "origin_lsn": null
    })
}

fn envelope(before: Value, after: Value, op: &str) -> Value {
    json!({
        "before": before,
        "after": after,
        "source": source(if op == "r" { "true" } else { "false" }),
        "op": op,
        "ts_ms": NOW_US / 1000,
        "ts_us": NOW_US,
        "ts_ns": NOW_US * 1000,
        "transaction": null
    })
}

fn after_value(id: i64, total: &str, note: Value) -> Value {
    json!({"id": id, "OrderTotal": total, "note": note, "tags": ["a", "b"], "blob": "AQ==", "counts": null})
}

#[test]
fn a_column_selection_keeps_the_listed_and_the_key_columns_only() {
    // Where the publication sends every column (no column lists before
    // PostgreSQL 15, none under REPLICA IDENTITY FULL) the worker drops
    // the others itself.
    let mut s = settings(RecordFormat::Debezium);
    s.selected_columns
        .insert("public.orders".into(), vec!["note".into()]);
    let mut enc = encoder(s);
    let c = change(
        Op::Insert,
        relation(b'd'),
        None,
        Some(row("7", "1.50", t("hi"))),
    );
    let out = encode(&mut enc, &c);
    assert_eq!(parse(&out[0].key), json!({ "id": 7 }));
    assert_eq!(
        parse(&out[0].value)["after"],
        json!({ "id": 7, "note": "hi" }),
        "the listed column and the key, nothing else"
    );
}

#[test]
fn insert_is_a_create_with_key_and_topic() {
    let mut enc = encoder(settings(RecordFormat::Debezium));
    let records = encode(
        &mut enc,
        &change(
            Op::Insert,
            relation(b'd'),
            None,
            Some(row("1", "9.90", t("hi"))),
        ),
    );
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(&*r.topic, "shop.public.orders");
    assert_eq!(r.commit_lsn, Lsn(0x1_0000_0100));
    assert_eq!(parse(&r.key), json!({"id": 1}));
    assert_eq!(
        parse(&r.value),
        envelope(Value::Null, after_value(1, "9.90", json!("hi")), "c")
    );
    assert!(r.headers.is_empty());
}

#[test]
fn the_envelope_keeps_debeziums_field_order() {
    let mut enc = encoder(settings(RecordFormat::Debezium));
    let records = encode(
        &mut enc,
        &change(
            Op::Insert,
            relation(b'd'),
            None,
            Some(row("1", "1", Datum::Null)),
        ),
    );
    let text = String::from_utf8(records[0].value.clone().unwrap()).unwrap();
    let order = [
        "\"before\"",
        "\"after\"",
        "\"source\"",
        "\"version\"",
        "\"connector\"",
        "\"name\"",
        "\"ts_ms\"",
        "\"snapshot\"",
        "\"db\"",
        "\"sequence\"",
        "\"ts_us\"",
        "\"ts_ns\"",
        "\"schema\"",
        "\"table\"",
        "\"txId\"",
        "\"lsn\"",
        "\"xmin\"",
        "\"origin\"",
        "\"origin_lsn\"",
        "\"transaction\"",
        "\"op\"",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|f| text.find(f).unwrap_or_else(|| panic!("{f} missing")))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
}

#[test]
fn update_with_default_identity_has_no_before() {
    let mut enc = encoder(settings(RecordFormat::Debezium));
    let records = encode(
        &mut enc,
        &change(
            Op::Update,
            relation(b'd'),
            None,
            Some(row("1", "5", t("x"))),
        ),
    );
    assert_eq!(records.len(), 1);
    assert_eq!(parse(&records[0].key), json!({"id": 1}));
    assert_eq!(
        parse(&records[0].value),
        envelope(Value::Null, after_value(1, "5", json!("x")), "u")
    );
}

#[test]
fn update_with_full_identity_has_the_old_row_and_fills_unchanged_toast_from_it() {
    let mut enc = encoder(settings(RecordFormat::Debezium));
    let old = row("1", "4", t("long text"));
    let new = row("1", "5", Datum::UnchangedToast);
    let records = encode(
        &mut enc,
        &change(Op::Update, relation(b'f'), Some(old), Some(new)),
    );
    assert_eq!(records.len(), 1);
    assert_eq!(
        parse(&records[0].value),
        envelope(
            after_value(1, "4", json!("long text")),
            after_value(1, "5", json!("long text")),
            "u"
        )
    );
}

#[test]
fn unchanged_toast_without_old_value_is_the_placeholder() {
    let mut enc = encoder(settings(RecordFormat::Debezium));
    let new = vec![
        t("1"),
        t("5"),
        Datum::UnchangedToast,
        Datum::UnchangedToast,
        Datum::UnchangedToast,
        Datum::UnchangedToast,
    ];
    let records = encode(
        &mut enc,
        &change(Op::Update, relation(b'd'), None, Some(new)),
    );
    let after = &parse(&records[0].value)["after"];
    let placeholder = "__debezium_unavailable_value";
    assert_eq!(after["note"], json!(placeholder));
    assert_eq!(after["tags"], json!([placeholder]));
    assert_eq!(
        after["blob"],
        json!("X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==")
    );
    let bytes: Vec<Value> = placeholder.bytes().map(|b| json!(b)).collect();
    assert_eq!(after["counts"], Value::Array(bytes));
}

#[test]
fn key_change_is_delete_tombstone_create() {
    let mut enc = encoder(settings(RecordFormat::Debezium));
    let records = encode(
        &mut enc,
        &change(
            Op::Update,
            relation(b'd'),
            Some(key_only("1")),
            Some(row("2", "5", t("x"))),
        ),
    );
    assert_eq!(records.len(), 3);
    let (delete, tombstone, create) = (&records[0], &records[1], &records[2]);
    assert_eq!(parse(&delete.key), json!({"id": 1}));
    let before = json!({"id": 1, "OrderTotal": null, "note": null, "tags": null, "blob": null, "counts": null});
    assert_eq!(parse(&delete.value), envelope(before, Value::Null, "d"));
    assert_eq!(
        delete.headers,
        vec![(HEADER_NEW_KEY, br#"{"id":2}"#.to_vec())]
    );
    assert_eq!(parse(&tombstone.key), json!({"id": 1}));
    assert_eq!(tombstone.value, None);
    assert_eq!(tombstone.headers, delete.headers, "as Debezium's tombstone");
    assert_eq!(parse(&create.key), json!({"id": 2}));
    assert_eq!(
        parse(&create.value),
        envelope(Value::Null, after_value(2, "5", json!("x")), "c")
    );
    assert_eq!(
        create.headers,
        vec![(HEADER_OLD_KEY, br#"{"id":1}"#.to_vec())]
    );
}

#[test]
fn delete_has_key_only_before_then_a_tombstone() {
    let mut enc = encoder(settings(RecordFormat::Debezium));
    let records = encode(
        &mut enc,
        &change(Op::Delete, relation(b'd'), Some(key_only("3")), None),
    );
    assert_eq!(records.len(), 2);
    let before = json!({"id": 3, "OrderTotal": null, "note": null, "tags": null, "blob": null, "counts": null});
    assert_eq!(parse(&records[0].key), json!({"id": 3}));
    assert_eq!(parse(&records[0].value), envelope(before, Value::Null, "d"));
    assert_eq!(parse(&records[1].key), json!({"id": 3}));
    assert_eq!(records[1].value, None);

    let mut quiet = settings(RecordFormat::Debezium);
    quiet.tombstones = false;
    let records = encode(
        &mut encoder(quiet),
        &change(Op::Delete, relation(b'd'), Some(key_only("3")), None),
    );
    assert_eq!(records.len(), 1);
}

#[test]
fn delete_with_full_identity_has_the_whole_row() {
    let mut enc = encoder(settings(RecordFormat::Debezium));
    let records = encode(
        &mut enc,
        &change(
            Op::Delete,
            relation(b'f'),
            Some(row("3", "1", t("n"))),
            None,
        ),
    );
    assert_eq!(
        parse(&records[0].value)["before"],
        after_value(3, "1", json!("n"))
    );
}

#[test]
fn truncate_has_no_key_and_no_rows() {
    let mut enc = encoder(settings(RecordFormat::Debezium));
    let records = encode(&mut enc, &change(Op::Truncate, relation(b'd'), None, None));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key, None);
    assert_eq!(
        parse(&records[0].value),
        envelope(Value::Null, Value::Null, "t")
    );
}

#[test]
fn read_carries_the_snapshot_marker() {
    let mut enc = encoder(settings(RecordFormat::Debezium));
    let mut c = change(
        Op::Read,
        relation(b'd'),
        None,
        Some(row("1", "2", Datum::Null)),
    );
    c.snapshot = Some("true");
    let records = encode(&mut enc, &c);
    assert_eq!(
        parse(&records[0].value),
        envelope(Value::Null, after_value(1, "2", Value::Null), "r")
    );
}

#[test]
fn sequence_names_the_end_of_the_previous_transaction() {
    let mut enc = encoder(settings(RecordFormat::Debezium));
    let first = change(
        Op::Insert,
        relation(b'd'),
        None,
        Some(row("1", "2", Datum::Null)),
    );
    // A second change of the same transaction: the same first element, its own LSN.
    let mut second = first.clone();
    second.lsn = Lsn(0x1_0000_00F8);
    // A backfill read has no transaction of its own.
    let mut read = first.clone();
    read.op = Op::Read;
    read.last_commit_end = Lsn(0);
    read.snapshot = Some("true");
    let sequence = |enc: &mut RecordEncoder, c: &Change| {
        parse(&encode(enc, c)[0].value)["source"]["sequence"].clone()
    };
    assert_eq!(
        sequence(&mut enc, &first),
        json!("[\"4294967520\",\"4294967536\"]")
    );
    assert_eq!(
        sequence(&mut enc, &second),
        json!("[\"4294967520\",\"4294967544\"]")
    );
    assert_eq!(sequence(&mut enc, &read), json!("[null,\"4294967536\"]"));
    // Nothing carries over from one change to the next.
    assert_eq!(
        sequence(&mut enc, &first),
        json!("[\"4294967520\",\"4294967536\"]")
    );
}

#[test]
fn decimal_double_and_snake_case_options() {
    let mut s = settings(RecordFormat::Debezium);
    s.output.decimal_handling = DecimalHandling::Double;
    s.output.snake_case_columns = true;
    let mut enc = encoder(s);
    let records = encode(
        &mut enc,
        &change(
            Op::Insert,
            relation(b'd'),
            None,
            Some(row("1", "9.90", Datum::Null)),
        ),
    );
    let after = &parse(&records[0].value)["after"];
    assert_eq!(after["order_total"], json!(9.9));
    assert_eq!(after.get("OrderTotal"), None);
}

#[test]
fn a_value_in_an_unexpected_form_is_written_as_a_string() {
    let mut enc = encoder(settings(RecordFormat::Debezium));
    let records = encode(
        &mut enc,
        &change(
            Op::Insert,
            relation(b'd'),
            None,
            Some(row("1", "1,5", Datum::Null)),
        ),
    );
    assert_eq!(
        parse(&records[0].value)["after"]["OrderTotal"],
        json!("1,5")
    );
    assert_eq!(enc.fallbacks(), 1);
}

#[test]
fn a_relation_without_key_columns_has_null_keys() {
    let mut rel = (*relation(b'n')).clone();
    for c in &mut rel.columns {
        c.is_key = false;
    }
    let mut enc = encoder(settings(RecordFormat::Debezium));
    let records = encode(
        &mut enc,
        &change(
            Op::Insert,
            Arc::new(rel),
            None,
            Some(row("1", "1", Datum::Null)),
        ),
    );
    assert_eq!(records[0].key, None);
}

#[test]
fn a_changed_relation_gets_a_new_plan() {
    let mut enc = encoder(settings(RecordFormat::Debezium));
    encode(
        &mut enc,
        &change(
            Op::Insert,
            relation(b'd'),
            None,
            Some(row("1", "1", Datum::Null)),
        ),
    );
    let mut renamed = (*relation(b'd')).clone();
    renamed.name = "orders v2".into();
    renamed.columns[2].name = "memo".into();
    let records = encode(
        &mut enc,
        &change(
            Op::Insert,
            Arc::new(renamed),
            None,
            Some(row("1", "1", t("m"))),
        ),
    );
    assert_eq!(&*records[0].topic, "shop.public.orders_v2");
    assert_eq!(parse(&records[0].value)["after"]["memo"], json!("m"));
    assert_eq!(
        parse(&records[0].value)["source"]["table"],
        json!("orders v2")
    );
}

fn row_format(metadata: bool) -> RecordEncoder {
    let mut s = settings(RecordFormat::Row);
    s.output.include_metadata = metadata;
    encoder(s)
}

#[test]
fn row_format_insert_update_delete_truncate() {
    let mut enc = row_format(false);
    let insert = encode(
        &mut enc,
        &change(
            Op::Insert,
            relation(b'd'),
            None,
            Some(row("1", "2", t("a"))),
        ),
    );
    assert_eq!(
        parse(&insert[0].value),
        json!({"table": "public.orders", "op": "insert", "ts": COMMIT_US / 1000,
               "data": after_value(1, "2", json!("a")), "old_data": null})
    );
    let update = encode(
        &mut enc,
        &change(
            Op::Update,
            relation(b'f'),
            Some(row("1", "2", t("a"))),
            Some(row("1", "3", t("b"))),
        ),
    );
    assert_eq!(
        parse(&update[0].value),
        json!({"table": "public.orders", "op": "update", "ts": COMMIT_US / 1000,
               "data": after_value(1, "3", json!("b")), "old_data": after_value(1, "2", json!("a"))})
    );
    let delete = encode(
        &mut enc,
        &change(Op::Delete, relation(b'd'), Some(key_only("1")), None),
    );
    assert_eq!(delete.len(), 2);
    assert_eq!(parse(&delete[0].key), json!({"id": 1}));
    assert_eq!(
        parse(&delete[0].value),
        json!({"table": "public.orders", "op": "delete", "ts": COMMIT_US / 1000,
               "data": {"id": 1, "OrderTotal": null, "note": null, "tags": null, "blob": null, "counts": null},
               "old_data": null})
    );
    assert_eq!(delete[1].value, None);
    let truncate = encode(&mut enc, &change(Op::Truncate, relation(b'd'), None, None));
    assert_eq!(
        parse(&truncate[0].value),
        json!({"table": "public.orders", "op": "truncate", "ts": COMMIT_US / 1000, "data": null, "old_data": null})
    );
    let mut read = change(
        Op::Read,
        relation(b'd'),
        None,
        Some(row("1", "2", Datum::Null)),
    );
    read.snapshot = Some("true");
    assert_eq!(
        parse(&encode(&mut enc, &read)[0].value)["op"],
        json!("read")
    );
}

#[test]
fn row_format_metadata() {
    let mut enc = row_format(true);
    let records = encode(
        &mut enc,
        &change(
            Op::Insert,
            relation(b'd'),
            None,
            Some(row("1", "2", Datum::Null)),
        ),
    );
    assert_eq!(
        parse(&records[0].value)["metadata"],
        json!({"schema": "public", "table": "orders", "lsn": "1/F0", "commit_lsn": "1/100", "tx_id": 777})
    );
    let key_change = encode(
        &mut enc,
        &change(
            Op::Update,
            relation(b'd'),
            Some(key_only("1")),
            Some(row("2", "2", Datum::Null)),
        ),
    );
    assert_eq!(key_change.len(), 3);
    assert_eq!(parse(&key_change[0].value)["op"], json!("delete"));
    assert_eq!(parse(&key_change[2].value)["op"], json!("insert"));
    assert!(key_change.iter().all(|r| r.headers.is_empty()));
}

#[test]
fn snake_case_names() {
    for (name, snake) in [
        ("OrderId", "order_id"),
        ("orderID", "order_id"),
        ("order_id", "order_id"),
        ("HTTPServer", "http_server"),
        ("customerHTTPUrl", "customer_http_url"),
        ("Order Total", "order_total"),
        ("line2Total", "line2_total"),
        ("ID", "id"),
        ("already_snake_", "already_snake_"),
        ("_private", "private"),
    ] {
        assert_eq!(snake_case(name), snake, "{name}");
    }
}

#[test]
fn snake_case_collisions_keep_the_original_name() {
    let mut rel = (*relation(b'd')).clone();
    rel.columns[2].name = "order_total".into();
    let mut s = settings(RecordFormat::Debezium);
    s.output.snake_case_columns = true;
    let records = encode(
        &mut encoder(s),
        &change(Op::Insert, Arc::new(rel), None, Some(row("1", "2", t("x")))),
    );
    let after = &parse(&records[0].value)["after"];
    assert_eq!(after["order_total"], json!("x"));
    assert_eq!(after["OrderTotal"], json!("2"));
}

#[test]
fn topics_are_sanitized() {
    assert_eq!(sanitize_topic("shop.public.orders"), "shop.public.orders");
    assert_eq!(
        sanitize_topic("shop.My Schema.Ordres/été"),
        "shop.My_Schema.Ordres__t_"
    );
}

/// A polled row: no WAL position, no transaction (polling::Poller builds
/// its changes so).
fn polled(op: Op, old: Option<Row>, new: Option<Row>) -> Change {
    Change {
        commit_lsn: Lsn(0),
        lsn: Lsn(0),
        last_commit_end: Lsn(0),
        xid: 0,
        ..change(op, relation(b'd'), old, new)
    }
}

#[test]
fn a_polled_row_has_no_wal_position_in_its_source() {
    let mut enc = encoder(settings(RecordFormat::Debezium));
    let records = encode(
        &mut enc,
        &polled(Op::Update, None, Some(row("7", "1.50", t("n")))),
    );
    assert_eq!(records.len(), 1);
    let value = parse(&records[0].value);
    assert_eq!(
        value["op"], "u",
        "Upsert semantics: the latest state of its key"
    );
    assert_eq!(value["before"], Value::Null);
    let source = &value["source"];
    assert_eq!(source["sequence"], Value::Null);
    assert_eq!(source["lsn"], Value::Null);
    assert_eq!(source["txId"], Value::Null);
    assert_eq!(source["snapshot"], "false");
    assert_eq!(source["ts_us"], COMMIT_US, "the cursor's time");
    // A delete drained from the deletes table: the key, then a tombstone.
    let deleted = encode(&mut enc, &polled(Op::Delete, Some(key_only("7")), None));
    assert_eq!(deleted.len(), 2);
    assert_eq!(parse(&deleted[0].value)["op"], "d");
    assert_eq!(parse(&deleted[0].value)["before"]["id"], 7);
    assert_eq!(deleted[1].value, None);
}

#[test]
fn a_polled_row_in_the_row_format_has_null_wal_metadata() {
    let mut s = settings(RecordFormat::Row);
    s.output.include_metadata = true;
    s.output.snake_case_columns = true;
    let mut enc = encoder(s);
    let records = encode(
        &mut enc,
        &polled(Op::Insert, None, Some(row("7", "1.50", t("n")))),
    );
    let value = parse(&records[0].value);
    assert_eq!(value["op"], "insert");
    assert_eq!(value["data"]["order_total"], "1.50");
    assert_eq!(value["metadata"]["lsn"], Value::Null);
    assert_eq!(value["metadata"]["commit_lsn"], Value::Null);
    assert_eq!(value["metadata"]["tx_id"], Value::Null);
    assert_eq!(value["metadata"]["table"], "orders");
}
