//! The type matrix against a real PostgreSQL: for every type, values are
//! inserted, read back in their text form (what pgoutput sends), encoded, and
//! the JSON compared with a reference computed independently in SQL
//! (`extract(epoch …)` for timestamps, `encode(…, 'base64')` for bytea,
//! `to_json` for arrays, …). Also checks the OID constants and the type registry
//! against the catalog.
//!
//! Needs the local stack: `make stack-up` and `source .stack/env` (PGHOST,
//! PGPORT, PGUSER, PGPASSWORD of a superuser).

use std::fmt::Write as _;

use serde_json::Value;
use siphon_worker::values::{Encoding, TypeKind, TypeRegistry, ValueOptions, oid};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

async fn connect() -> Client {
    let port = std::env::var("PGPORT").unwrap_or_else(|_| {
        panic!("PGPORT is not set: run `make stack-up` and `source .stack/env` first")
    });
    let var =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    let mut config = tokio_postgres::Config::new();
    config
        .host(var("PGHOST", "127.0.0.1"))
        .port(port.parse().expect("PGPORT is a port number"))
        .user(var("PGUSER", "postgres"))
        .password(var("PGPASSWORD", "postgres"))
        .dbname(var("PGDATABASE", "postgres"))
        // The session settings the worker uses; TimeZone deliberately not UTC.
        .options("-c DateStyle=ISO,MDY -c IntervalStyle=postgres -c TimeZone=Europe/Amsterdam -c lc_monetary=C -c extra_float_digits=1 -c bytea_output=hex");
    let (client, connection) = config.connect(NoTls).await.unwrap_or_else(|e| {
        panic!("cannot connect to PostgreSQL on port {port} ({e}): run `make stack-up` and `source .stack/env`")
    });
    tokio::spawn(connection);
    client
}

/// Rows of a simple (text protocol) query: exactly the output functions' text.
async fn text_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e} {}", e.as_db_error().map_or("", |d| d.message())));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// A schema of our own, dropped first in case an earlier run failed midway.
async fn fresh_schema(client: &Client, name: &str) -> String {
    let schema = format!("siphon_tm_{name}_{}", std::process::id());
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path = {schema}, public"
        ))
        .await
        .expect("create the test schema");
    schema
}

/// One type: values as SQL literals and the reference JSON as SQL over `v`.
struct Case {
    ty: &'static str,
    values: &'static [&'static str],
    reference: &'static str,
    /// The value is a string holding JSON (hstore): compare what it holds.
    inner_json: bool,
}

const fn case(ty: &'static str, values: &'static [&'static str], reference: &'static str) -> Case {
    Case {
        ty,
        values,
        reference,
        inner_json: false,
    }
}

const TO_JSON: &str = "to_json(v)";
const AS_TEXT: &str = "to_json(v::text)";
const MICROS: &str = "CASE WHEN isfinite(v) THEN to_json((extract(epoch FROM v) * 1000000)::int8) ELSE to_json(v::text) END";
const MILLIS: &str = "CASE WHEN isfinite(v) THEN to_json((extract(epoch FROM v) * 1000)::int8) ELSE to_json(v::text) END";
const ZONED_US: &str = "CASE WHEN isfinite(v) THEN to_json(iso_year(v AT TIME ZONE 'UTC') || to_char(v AT TIME ZONE 'UTC', '-MM-DD\"T\"HH24:MI:SS.US\"Z\"')) ELSE to_json(v::text) END";
const ZONED_MS: &str = "CASE WHEN isfinite(v) THEN to_json(iso_year(v AT TIME ZONE 'UTC') || to_char(v AT TIME ZONE 'UTC', '-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')) ELSE to_json(v::text) END";
const BITS: &str = "to_json(bits_le_base64(v))";
const INTERVAL: &str = "to_json(interval_micros(v))";

const CASES: &[Case] = &[
    case("bool", &["true", "false"], TO_JSON),
    case("int2", &["-32768", "0", "32767"], TO_JSON),
    case("int4", &["-2147483648", "42"], TO_JSON),
    case(
        "int8",
        &["-9223372036854775808", "9223372036854775807"],
        TO_JSON,
    ),
    case("oid", &["0", "4294967295"], "to_json(v::int8)"),
    case(
        "float4",
        &[
            "1.1",
            "-0",
            "3.4028235e+38",
            "1.4e-45",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
        ],
        TO_JSON,
    ),
    case(
        "float8",
        &[
            "1.5",
            "0.1",
            "1e300",
            "-2.2250738585072014e-308",
            "'NaN'",
            "'-Infinity'",
        ],
        TO_JSON,
    ),
    case(
        "numeric",
        &[
            "0",
            "-1.50",
            "12345678901234567890.000000000001",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
        ],
        AS_TEXT,
    ),
    case("numeric(10,4)", &["3.14159", "-0.00005"], AS_TEXT),
    case(
        "money",
        &["1234.56", "-0.99", "0", "92233720368547758.07"],
        "to_json(v::numeric::text)",
    ),
    case(
        "text",
        &[
            "''",
            "'NULL'",
            "'he said \"hi\", \\ ok'",
            "E'tab\\there\\nnew line'",
            "'✓ ünïcode'",
        ],
        TO_JSON,
    ),
    case("varchar(10)", &["'abc'"], TO_JSON),
    case("bpchar(5)", &["'ab'"], TO_JSON),
    case("name", &["'a_name'"], TO_JSON),
    case("\"char\"", &["'x'"], TO_JSON),
    case(
        "bytea",
        &["''", "'\\x0001ff'", "decode(repeat('ab', 100), 'hex')"],
        "to_json(replace(encode(v, 'base64'), E'\\n', ''))",
    ),
    case("uuid", &["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"], AS_TEXT),
    case("json", &["'{\"a\": [1, \"x\"]}'", "'null'"], AS_TEXT),
    case(
        "jsonb",
        &["'{\"a\": [1, \"x\"], \"b\": {\"c\": null}}'"],
        AS_TEXT,
    ),
    case("xml", &["'<a b=\"1\">t</a>'"], AS_TEXT),
    case(
        "date",
        &[
            "'2024-02-29'",
            "'1970-01-01'",
            "'0044-03-15 BC'",
            "'4714-11-24 BC'",
            "'5874897-12-31'",
            "'infinity'",
            "'-infinity'",
        ],
        "CASE WHEN isfinite(v) THEN to_json(v - DATE '1970-01-01') ELSE to_json(v::text) END",
    ),
    case(
        "time",
        &[
            "'00:00:00'",
            "'04:05:06.789'",
            "'23:59:59.999999'",
            "'24:00:00'",
        ],
        "to_json((extract(epoch FROM v) * 1000000)::int8)",
    ),
    case(
        "time(3)",
        &["'12:00:00.123'", "'24:00:00'"],
        "to_json((extract(epoch FROM v) * 1000)::int8)",
    ),
    case(
        "timetz",
        &[
            "'10:15:30.5+02'",
            "'01:00:00-05:30'",
            "'00:30:00+01'",
            "'24:00:00+00'",
            "'23:59:59.999999-14'",
        ],
        "to_json(((TIME '00:00' + make_interval(secs => mod(mod(extract(epoch FROM v), 86400) + 86400, 86400)::float8))::time)::text || 'Z')",
    ),
    case(
        "timestamp",
        &[
            "'2024-01-02 03:04:05.123456'",
            "'1969-12-31 23:59:59.999999'",
            "'0001-01-01 00:00:00 BC'",
            "'200000-01-01 00:00:00'",
            "'infinity'",
            "'-infinity'",
        ],
        MICROS,
    ),
    case(
        "timestamp(3)",
        &[
            "'2024-01-02 03:04:05.123'",
            "'1969-12-31 23:59:59.999'",
            "'infinity'",
        ],
        MILLIS,
    ),
    case("timestamp(0)", &["'2024-01-02 03:04:05'"], MILLIS),
    case(
        "timestamptz",
        &[
            "'2024-01-02 03:04:05.123456+00'",
            "'2024-07-01 12:00:00-07'",
            "'1900-01-01 00:00:00'",
            "'0044-03-15 12:00:00+00 BC'",
            "'infinity'",
            "'-infinity'",
        ],
        ZONED_US,
    ),
    case(
        "timestamptz(3)",
        &["'2024-01-02 03:04:05.1+00'", "'2024-01-02 03:04:05+05:30'"],
        ZONED_MS,
    ),
    case(
        "interval",
        &[
            "'1 year 2 mons 3 days 04:05:06.789'",
            "'-1 years -2 mons +3 days -04:05:06'",
            "'0'",
            "'100 hours'",
            "'-0.000001 seconds'",
            "'1 mon -1 day'",
        ],
        INTERVAL,
    ),
    case("bit(1)", &["B'1'", "B'0'"], "to_json(v = B'1')"),
    case(
        "bit(12)",
        &["B'000000000101'", "B'100000000001'", "B'000000000000'"],
        BITS,
    ),
    case(
        "varbit",
        &["B''", "B'1'", "B'101'", "B'1000000000000001'"],
        BITS,
    ),
    case(
        "point",
        &["'(1,2)'", "'(-1.5,1e+20)'", "'(0,-0)'"],
        "json_build_object('x', v[0], 'y', v[1], 'wkb', replace(encode(decode('0101000000' || le8(v[0]) || le8(v[1]), 'hex'), 'base64'), E'\\n', ''), 'srid', NULL)",
    ),
    case("inet", &["'192.168.0.1/24'", "'::1'"], TO_JSON),
    case("cidr", &["'10.0.0.0/8'"], AS_TEXT),
    case("macaddr", &["'08:00:2b:01:02:03'"], AS_TEXT),
    case("macaddr8", &["'08:00:2b:01:02:03:04:05'"], AS_TEXT),
    case("tsvector", &["'a fat cat'"], AS_TEXT),
    case("tsquery", &["'fat & rat'"], AS_TEXT),
    case("int4range", &["'[1,10)'", "'empty'"], AS_TEXT),
    case("int8range", &["'(,5]'"], AS_TEXT),
    case("numrange", &["'[1.5,2.5)'"], AS_TEXT),
    case("tsrange", &["'[2024-01-01,2024-02-01)'"], AS_TEXT),
    case("tstzrange", &["'[2024-01-01 00:00+00,)'"], AS_TEXT),
    case("daterange", &["'[2024-01-01,2024-02-01]'"], AS_TEXT),
    case("box", &["'((0,0),(1,1))'"], AS_TEXT),
    case("lseg", &["'[(0,0),(1,1)]'"], AS_TEXT),
    case("path", &["'((0,0),(1,1),(2,0))'"], AS_TEXT),
    case("polygon", &["'((0,0),(1,1),(2,0))'"], AS_TEXT),
    case("circle", &["'<(0,0),1>'"], AS_TEXT),
    case("line", &["'{1,-1,0}'"], AS_TEXT),
    case("pg_lsn", &["'0/16B3748'"], AS_TEXT),
    case(
        "int4[]",
        &[
            "'{}'",
            "'{1,2,NULL}'",
            "'{{1,2},{3,4}}'",
            "'[0:1]={7,8}'",
            "'[1:2][3:4]={{1,2},{3,NULL}}'",
            "'{{{1},{2}},{{3},{4}}}'",
        ],
        TO_JSON,
    ),
    case(
        "text[]",
        &[
            "ARRAY['a,b', 'c\"d', 'e\\f', NULL, 'NULL', '{x}', 'plain', ' sp ', '']",
            "'{{\"}\",a},{b,\"\\\\\"}}'",
        ],
        TO_JSON,
    ),
    case(
        "numeric[]",
        &["'{1.50,NaN,NULL}'"],
        "(SELECT json_agg(e::text ORDER BY o) FROM unnest(v) WITH ORDINALITY u(e, o))",
    ),
    case("bool[]", &["'{t,f,NULL}'"], TO_JSON),
    case("float8[]", &["'{1.5,NaN,-Infinity}'"], TO_JSON),
    case(
        "bytea[]",
        &["ARRAY['\\x0001'::bytea, NULL, '']"],
        "(SELECT json_agg(replace(encode(e, 'base64'), E'\\n', '') ORDER BY o) FROM unnest(v) WITH ORDINALITY u(e, o))",
    ),
    case(
        "date[]",
        &["'{2024-01-01,NULL,infinity}'"],
        "(SELECT json_agg(CASE WHEN isfinite(e) THEN to_json(e - DATE '1970-01-01') ELSE to_json(e::text) END ORDER BY o) FROM unnest(v) WITH ORDINALITY u(e, o))",
    ),
    case(
        "timestamp(3)[]",
        &["'{\"2024-01-02 03:04:05.123\",NULL}'"],
        "(SELECT json_agg((extract(epoch FROM e) * 1000)::int8 ORDER BY o) FROM unnest(v) WITH ORDINALITY u(e, o))",
    ),
    case(
        "timestamptz[]",
        &["'{\"2024-01-02 03:04:05.5+00\"}'"],
        "(SELECT json_agg(iso_year(e AT TIME ZONE 'UTC') || to_char(e AT TIME ZONE 'UTC', '-MM-DD\"T\"HH24:MI:SS.US\"Z\"') ORDER BY o) FROM unnest(v) WITH ORDINALITY u(e, o))",
    ),
    case(
        "interval[]",
        &["'{\"1 day\",\"-1 mon\"}'"],
        "(SELECT json_agg(interval_micros(e) ORDER BY o) FROM unnest(v) WITH ORDINALITY u(e, o))",
    ),
    case(
        "uuid[]",
        &["'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'"],
        "to_json(v::text[])",
    ),
    case(
        "jsonb[]",
        &["ARRAY['{\"a\": 1}'::jsonb, 'null', NULL]"],
        "to_json(v::text[])",
    ),
    case(
        "box[]",
        &["ARRAY['((0,0),(1,1))'::box, '((2,2),(3,3))']"],
        "to_json(v::text[])",
    ),
    case(
        "money[]",
        &["'{1.50,-2}'"],
        "(SELECT json_agg(e::numeric::text ORDER BY o) FROM unnest(v) WITH ORDINALITY u(e, o))",
    ),
    case("mood", &["'happy'", "'so-so'"], AS_TEXT),
    case("mood[]", &["'{happy,sad}'"], "to_json(v::text[])"),
    case("positive_int", &["7"], "to_json(v::int4)"),
    case(
        "ts3",
        &["'2024-01-02 03:04:05.123'"],
        "to_json((extract(epoch FROM v) * 1000)::int8)",
    ),
    case("price", &["'9.99'"], AS_TEXT),
    case("price[]", &["'{1.5,2}'"], "to_json(v::text[])"),
    case(
        "item",
        &[
            "ROW(1, 'he said \"hi\", \\ ok', '2024-01-01 00:00:00', '{1,2}')",
            "ROW(NULL, NULL, NULL, NULL)",
            "ROW(2, '', NULL, '{}')",
        ],
        "json_build_object('a', (v).a, 'b', (v).b, 'c', (extract(epoch FROM (v).c) * 1000000)::int8, 'd', (v).d)",
    ),
    case(
        "item[]",
        &[
            "ARRAY[ROW(1, 'x', NULL, NULL)::item, ROW(2, 'y, \"z\"', '1970-01-01 00:00:01', '{3}')::item, NULL]",
        ],
        "(SELECT json_agg(CASE WHEN v[i]::text IS NULL THEN NULL ELSE json_build_object('a', (v[i]).a, 'b', (v[i]).b, 'c', (extract(epoch FROM (v[i]).c) * 1000000)::int8, 'd', (v[i]).d) END ORDER BY i) FROM generate_subscripts(v, 1) i)",
    ),
    case(
        "wrapper",
        &["ROW(ROW(3, 'a \"q\"', NULL, NULL)::item, 'sad')"],
        "json_build_object('core', json_build_object('a', ((v).core).a, 'b', ((v).core).b, 'c', NULL, 'd', NULL), 'mood', (v).mood)",
    ),
    Case {
        ty: "hstore",
        values: &["'a=>1, b=>NULL, \"c\\\"q\"=>\"x\\\\y\"'", "''"],
        reference: "to_json(hstore_to_json(v)::text)",
        inner_json: true,
    },
];

const SETUP: &str = r#"
CREATE EXTENSION IF NOT EXISTS hstore SCHEMA public;
CREATE TYPE mood AS ENUM ('happy', 'sad', 'so-so');
CREATE DOMAIN positive_int AS int4 CHECK (VALUE > 0);
CREATE DOMAIN ts3 AS timestamp(3);
CREATE DOMAIN price AS numeric(10,2);
CREATE TYPE item AS (a int4, b text, c timestamp, d int4[]);
CREATE TYPE wrapper AS (core item, mood mood);
-- ISO-8601 year as java.time writes it: 1 BC is 0000, 44 BC is -0043.
CREATE FUNCTION iso_year(t timestamp) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN extract(year FROM t) < 0
              THEN '-' || lpad((-extract(year FROM t)::int - 1)::text, 4, '0')
              ELSE lpad(extract(year FROM t)::int::text, 4, '0') END $$;
-- A float8 as little-endian hex (float8send is big-endian).
CREATE FUNCTION le8(f float8) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT string_agg(substr(encode(float8send(f), 'hex'), 15 - 2 * i, 2), '' ORDER BY i)
  FROM generate_series(0, 7) i $$;
-- Bits read as a number (first bit most significant), bytes little-endian
-- without high zero bytes, base64.
CREATE FUNCTION bits_le_base64(b varbit) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(replace(encode(decode(string_agg(lpad(to_hex((x >> (8 * i)) & 255), 2, '0'), '' ORDER BY i), 'hex'), 'base64'), E'\n', ''), '')
  FROM (SELECT lpad(b::text, 64, '0')::bit(64)::int8 AS x) s, generate_series(0, 7) i
  WHERE (x >> (8 * i)) <> 0 $$;
-- Debezium's MicroDuration: a month is 365.25/12 days = 2 629 800 s.
CREATE FUNCTION interval_micros(v interval) RETURNS int8 LANGUAGE sql IMMUTABLE AS $$
  SELECT ((extract(year FROM v) * 12 + extract(month FROM v)) * 2629800000000
        + extract(day FROM v) * 86400000000
        + extract(hour FROM v) * 3600000000 + extract(minute FROM v) * 60000000
        + extract(microseconds FROM v))::int8 $$;
"#;

/// JSON equality where numbers compare by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[tokio::test]
async fn every_type_encodes_like_the_sql_reference() {
    let client = connect().await;
    let schema = fresh_schema(&client, "matrix").await;
    client
        .batch_execute(SETUP)
        .await
        .expect("create types and helper functions");
    let registry = TypeRegistry::load(&client)
        .await
        .expect("load the type registry");
    let options = ValueOptions::default();

    let mut failures = String::new();
    let mut checked = 0;
    for (n, case) in CASES.iter().enumerate() {
        let table = format!("t{n}");
        let rows: Vec<String> = case.values.iter().map(|v| format!("({v})")).collect();
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (id serial, v {ty}); INSERT INTO {table} (v) VALUES {values};",
                ty = case.ty,
                values = rows.join(", ")
            ))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.ty));
        let typmod = text_rows(
            &client,
            &format!("SELECT atttypmod FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = 'v'"),
        )
        .await[0][0]
            .clone()
            .and_then(|t| t.parse::<i32>().ok())
            .expect("atttypmod");
        let sql = format!(
            "SELECT v, pg_typeof(v)::oid, ({reference})::text FROM {table} ORDER BY id",
            reference = case.reference
        );
        for row in text_rows(&client, &sql).await {
            let (Some(text), Some(type_oid), Some(reference)) = (&row[0], &row[1], &row[2]) else {
                let _ = writeln!(failures, "{}: NULL in {row:?}", case.ty);
                continue;
            };
            let type_oid: u32 = type_oid.parse().expect("an oid");
            let encoding = Encoding::resolve(type_oid, typmod, &registry);
            let mut out = Vec::new();
            if let Err(e) = encoding.write_json(text.as_bytes(), options, &mut out) {
                let _ = writeln!(failures, "{} {text:?}: {e}", case.ty);
                continue;
            }
            let got: Value = serde_json::from_slice(&out).expect("the encoder writes valid JSON");
            let mut want: Value = serde_json::from_str(reference).expect("the reference is JSON");
            let mut got = got;
            if case.inner_json {
                let inner = |v: &Value| {
                    serde_json::from_str::<Value>(v.as_str().unwrap_or("")).unwrap_or(Value::Null)
                };
                got = inner(&got);
                want = inner(&want);
            }
            checked += 1;
            if !same(&got, &want) {
                let _ = writeln!(
                    failures,
                    "{} {text:?}: encoded {got}, SQL says {want}",
                    case.ty
                );
            }
        }
    }
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop the test schema");
    assert!(
        failures.is_empty(),
        "{checked} values checked; mismatches:\n{failures}"
    );
    assert!(checked > 150, "only {checked} values checked");
}

#[tokio::test]
async fn oid_constants_match_the_catalog() {
    let client = connect().await;
    let oids: Vec<String> = oid::NAMES.iter().map(|(o, _)| o.to_string()).collect();
    let rows = text_rows(
        &client,
        &format!(
            "SELECT oid, typname, typelem FROM pg_type WHERE oid IN ({})",
            oids.join(",")
        ),
    )
    .await;
    assert_eq!(rows.len(), oid::NAMES.len(), "every constant is a type OID");
    for row in rows {
        let type_oid: u32 = row[0].as_deref().and_then(|s| s.parse().ok()).expect("oid");
        let name = row[1].as_deref().expect("typname");
        let (_, expected) = oid::NAMES
            .iter()
            .find(|(o, _)| *o == type_oid)
            .expect("listed");
        assert_eq!(name, *expected, "type {type_oid}");
        if let Some(element) = oid::builtin_array_element(type_oid) {
            assert_eq!(
                row[2].as_deref(),
                Some(element.to_string().as_str()),
                "element of {name}"
            );
        }
    }
}

#[tokio::test]
async fn the_registry_reads_user_types_from_the_catalog() {
    let client = connect().await;
    let schema = fresh_schema(&client, "registry").await;
    client
        .batch_execute(
            "CREATE TYPE color AS ENUM ('red'); CREATE DOMAIN ts_ms AS timestamp(3);
             CREATE TYPE pair AS (left_side int4, right_side text); CREATE TYPE floatrange AS RANGE (subtype = float8);",
        )
        .await
        .expect("create types");
    let registry = TypeRegistry::load(&client).await.expect("load");
    let oid_of = |rows: Vec<Vec<Option<String>>>| -> u32 {
        rows[0][0]
            .as_deref()
            .and_then(|s| s.parse().ok())
            .expect("oid")
    };
    let color = oid_of(text_rows(&client, "SELECT 'color'::regtype::oid").await);
    let colors = oid_of(text_rows(&client, "SELECT '_color'::regtype::oid").await);
    let ts_ms = oid_of(text_rows(&client, "SELECT 'ts_ms'::regtype::oid").await);
    let pair = oid_of(text_rows(&client, "SELECT 'pair'::regtype::oid").await);
    let range = oid_of(text_rows(&client, "SELECT 'floatrange'::regtype::oid").await);
    let tsvectors = oid::TSVECTOR_ARRAY;
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop");

    assert_eq!(registry.get(color).map(|t| &t.kind), Some(&TypeKind::Enum));
    assert_eq!(
        registry.get(colors).map(|t| &t.kind),
        Some(&TypeKind::Array {
            element: color,
            delimiter: b','
        })
    );
    assert_eq!(
        registry.get(ts_ms).map(|t| &t.kind),
        Some(&TypeKind::Domain {
            base: oid::TIMESTAMP,
            typmod: 3
        })
    );
    let Some(TypeKind::Composite { attributes }) = registry.get(pair).map(|t| &t.kind) else {
        panic!("pair is a composite: {:?}", registry.get(pair));
    };
    let names: Vec<&str> = attributes.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["left_side", "right_side"]);
    assert_eq!(
        registry.get(range).map(|t| &t.kind),
        Some(&TypeKind::Range {
            subtype: oid::FLOAT8
        })
    );
    assert!(registry.knows(tsvectors) && registry.knows(color));
    assert!(
        !registry.knows(999_999_999),
        "an OID created later is unknown until the next load"
    );
    assert_eq!(
        Encoding::resolve(ts_ms, -1, &registry),
        Encoding::Timestamp { millis: true }
    );
}
