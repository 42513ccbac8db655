//! Fixtures for every type's text form, edge cases included.

use serde_json::{Value, json};

use super::*;

const STRING: ValueOptions = ValueOptions {
    decimal: DecimalHandling::String,
};
const DOUBLE: ValueOptions = ValueOptions {
    decimal: DecimalHandling::Double,
};

const ENUM: u32 = 70_001;
const ENUM_ARRAY: u32 = 70_002;
const TS3_DOMAIN: u32 = 70_003;
const NUMERIC_DOMAIN: u32 = 70_004;
const COMPOSITE: u32 = 70_005;
const COMPOSITE_ARRAY: u32 = 70_006;
const HSTORE: u32 = 70_007;
const NESTED: u32 = 70_008;
const RANGE: u32 = 70_009;

fn registry() -> TypeRegistry {
    let mut r = TypeRegistry::builtin();
    let mut add = |oid: u32, name: &str, kind: TypeKind| {
        r.insert(
            oid,
            TypeInfo {
                schema: "public".into(),
                name: name.into(),
                kind,
            },
        );
    };
    add(ENUM, "mood", TypeKind::Enum);
    add(
        ENUM_ARRAY,
        "_mood",
        TypeKind::Array {
            element: ENUM,
            delimiter: b',',
        },
    );
    add(
        TS3_DOMAIN,
        "ts3",
        TypeKind::Domain {
            base: oid::TIMESTAMP,
            typmod: 3,
        },
    );
    add(
        NUMERIC_DOMAIN,
        "price",
        TypeKind::Domain {
            base: oid::NUMERIC,
            typmod: -1,
        },
    );
    let attr = |name: &str, type_oid: u32| Attribute {
        name: name.into(),
        type_oid,
        type_modifier: -1,
    };
    add(
        COMPOSITE,
        "item",
        TypeKind::Composite {
            attributes: vec![
                attr("a", oid::INT4),
                attr("b", oid::TEXT),
                attr("c", oid::TIMESTAMP),
                attr("d", oid::INT4_ARRAY),
            ],
        },
    );
    add(
        COMPOSITE_ARRAY,
        "_item",
        TypeKind::Array {
            element: COMPOSITE,
            delimiter: b',',
        },
    );
    add(HSTORE, "hstore", TypeKind::Base);
    add(
        NESTED,
        "wrapper",
        TypeKind::Composite {
            attributes: vec![attr("inner", COMPOSITE), attr("mood", ENUM)],
        },
    );
    add(
        RANGE,
        "floatrange",
        TypeKind::Range {
            subtype: oid::FLOAT8,
        },
    );
    r
}

fn enc_with(type_oid: u32, typmod: i32, text: &str, options: ValueOptions) -> Value {
    let mut out = Vec::new();
    encode_text(
        type_oid,
        typmod,
        &registry(),
        text.as_bytes(),
        options,
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{text:?}: {e}"));
    serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("{text:?} gave invalid JSON {out:?}: {e}"))
}

fn enc(type_oid: u32, typmod: i32, text: &str) -> Value {
    enc_with(type_oid, typmod, text, STRING)
}

fn fails(type_oid: u32, typmod: i32, text: &str) -> ValueError {
    let mut out = b"keep".to_vec();
    let err = encode_text(
        type_oid,
        typmod,
        &registry(),
        text.as_bytes(),
        STRING,
        &mut out,
    )
    .expect_err(text);
    assert_eq!(out, b"keep", "a failed value leaves the buffer as it was");
    err
}

#[test]
fn booleans_and_integers() {
    assert_eq!(enc(oid::BOOL, -1, "t"), json!(true));
    assert_eq!(enc(oid::BOOL, -1, "f"), json!(false));
    assert_eq!(enc(oid::INT2, -1, "-32768"), json!(-32768));
    assert_eq!(enc(oid::INT4, -1, "0"), json!(0));
    assert_eq!(enc(oid::INT8, -1, "9223372036854775807"), json!(i64::MAX));
    assert_eq!(enc(oid::OID, -1, "4294967295"), json!(4_294_967_295u32));
    assert_eq!(fails(oid::INT4, -1, "12a").kind, "integer");
    assert_eq!(fails(oid::BOOL, -1, "yes").kind, "bool");
}

#[test]
fn floats_keep_their_digits_and_specials_become_strings() {
    assert_eq!(enc(oid::FLOAT8, -1, "1.5"), json!(1.5));
    assert_eq!(enc(oid::FLOAT8, -1, "1e+20"), json!(1e20));
    assert_eq!(enc(oid::FLOAT8, -1, "-0"), json!(-0.0));
    assert_eq!(
        enc(oid::FLOAT8, -1, "2.2250738585072014e-308"),
        json!(2.2250738585072014e-308)
    );
    assert_eq!(enc(oid::FLOAT4, -1, "1.1"), json!(1.1));
    assert_eq!(enc(oid::FLOAT4, -1, "NaN"), json!("NaN"));
    assert_eq!(enc(oid::FLOAT8, -1, "Infinity"), json!("Infinity"));
    assert_eq!(enc(oid::FLOAT8, -1, "-Infinity"), json!("-Infinity"));
}

#[test]
fn numeric_is_an_exact_string_or_a_double() {
    assert_eq!(enc(oid::NUMERIC, -1, "1234.5600"), json!("1234.5600"));
    assert_eq!(enc(oid::NUMERIC, -1, "-0.000001"), json!("-0.000001"));
    let big = "123456789012345678901234567890.123456789";
    assert_eq!(enc(oid::NUMERIC, -1, big), json!(big));
    assert_eq!(enc(oid::NUMERIC, -1, "NaN"), json!("NaN"));
    assert_eq!(enc(oid::NUMERIC, -1, "Infinity"), json!("Infinity"));
    assert_eq!(enc(oid::NUMERIC, -1, "-Infinity"), json!("-Infinity"));
    assert_eq!(
        enc_with(oid::NUMERIC, -1, "1234.5600", DOUBLE),
        json!(1234.56)
    );
    assert_eq!(enc_with(oid::NUMERIC, -1, "NaN", DOUBLE), json!("NaN"));
    assert_eq!(
        enc_with(oid::NUMERIC, -1, "-Infinity", DOUBLE),
        json!("-Infinity")
    );
    assert_eq!(fails(oid::NUMERIC, -1, "1,5").kind, "numeric");
}

#[test]
fn money_is_its_amount() {
    assert_eq!(enc(oid::MONEY, -1, "$1,234.56"), json!("1234.56"));
    assert_eq!(enc(oid::MONEY, -1, "-$0.99"), json!("-0.99"));
    assert_eq!(enc(oid::MONEY, -1, "$0.00"), json!("0.00"));
    assert_eq!(
        enc_with(oid::MONEY, -1, "$92,233,720,368,547,758.07", DOUBLE),
        json!(92_233_720_368_547_758.07)
    );
    assert_eq!(fails(oid::MONEY, -1, "1.234,56 €").kind, "money");
}

#[test]
fn text_like_types_are_strings() {
    let tricky = "quote \" backslash \\ newline \n tab \t unicode ✓";
    for type_oid in [
        oid::TEXT,
        oid::VARCHAR,
        oid::BPCHAR,
        oid::NAME,
        oid::CHAR,
        oid::XML,
    ] {
        assert_eq!(enc(type_oid, -1, tricky), json!(tricky));
    }
    assert_eq!(enc(oid::BPCHAR, 9, "ab       "), json!("ab       "));
    assert_eq!(
        enc(oid::UUID, -1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    );
    // json and jsonb stay JSON text inside a string, like io.debezium.data.Json.
    assert_eq!(
        enc(oid::JSONB, -1, r#"{"a": [1, "x"]}"#),
        json!(r#"{"a": [1, "x"]}"#)
    );
    assert_eq!(enc(oid::JSON, -1, "null"), json!("null"));
    for (type_oid, text) in [
        (oid::INET, "192.168.0.1/24"),
        (oid::CIDR, "10.0.0.0/8"),
        (oid::MACADDR, "08:00:2b:01:02:03"),
        (oid::MACADDR8, "08:00:2b:01:02:03:04:05"),
        (oid::TSVECTOR, "'a':1 'fat':2"),
        (oid::TSQUERY, "'fat' & 'rat'"),
        (oid::INT4RANGE, "[1,10)"),
        (oid::TSTZRANGE, "[\"2024-01-01 00:00:00+00\",)"),
        (oid::DATERANGE, "empty"),
        (oid::BOX, "(1,1),(0,0)"),
        (oid::CIRCLE, "<(0,0),1>"),
        (oid::LINE, "{1,-1,0}"),
        (oid::PG_LSN, "0/16B3748"),
        (ENUM, "happy"),
        (RANGE, "[1.5,2.5)"),
        (99_999, "type created after the registry was loaded"),
    ] {
        assert_eq!(enc(type_oid, -1, text), json!(text), "{type_oid}");
    }
}

#[test]
fn bytea_is_base64_from_hex_or_escape_output() {
    assert_eq!(enc(oid::BYTEA, -1, "\\x0001ff"), json!("AAH/"));
    assert_eq!(enc(oid::BYTEA, -1, "\\x"), json!(""));
    assert_eq!(enc(oid::BYTEA, -1, "\\xDEADbeef"), json!("3q2+7w=="));
    // escape format: `\\` is a backslash, `\ooo` an octal byte.
    assert_eq!(enc(oid::BYTEA, -1, "a\\\\b\\001"), json!("YVxiAQ=="));
    assert_eq!(enc(oid::BYTEA, -1, "plain"), json!("cGxhaW4="));
    assert_eq!(fails(oid::BYTEA, -1, "\\x0").kind, "bytea");
}

#[test]
fn dates_are_epoch_days() {
    assert_eq!(enc(oid::DATE, -1, "1970-01-02"), json!(1));
    assert_eq!(enc(oid::DATE, -1, "1969-12-31"), json!(-1));
    assert_eq!(enc(oid::DATE, -1, "2024-02-29"), json!(19_782));
    assert_eq!(enc(oid::DATE, -1, "0001-01-01 BC"), json!(-719_528));
    assert_eq!(enc(oid::DATE, -1, "0044-03-15 BC"), json!(-735_160));
    assert_eq!(enc(oid::DATE, -1, "infinity"), json!("infinity"));
    assert_eq!(enc(oid::DATE, -1, "-infinity"), json!("-infinity"));
    assert_eq!(fails(oid::DATE, -1, "01/02/2024").kind, "date");
}

#[test]
fn times_follow_adaptive_precision() {
    assert_eq!(enc(oid::TIME, -1, "04:05:06.789"), json!(14_706_789_000i64));
    assert_eq!(enc(oid::TIME, 6, "00:00:00.000001"), json!(1));
    assert_eq!(enc(oid::TIME, -1, "24:00:00"), json!(86_400_000_000i64));
    assert_eq!(enc(oid::TIME, 3, "12:00:00.123"), json!(43_200_123));
    assert_eq!(enc(oid::TIME, 0, "24:00:00"), json!(86_400_000));
    assert_eq!(enc(oid::TIMETZ, -1, "10:15:30.5+02"), json!("08:15:30.5Z"));
    assert_eq!(enc(oid::TIMETZ, -1, "01:00:00-05:30"), json!("06:30:00Z"));
    assert_eq!(enc(oid::TIMETZ, -1, "00:30:00+01"), json!("23:30:00Z"));
    assert_eq!(enc(oid::TIMETZ, -1, "24:00:00+00"), json!("00:00:00Z"));
}

#[test]
fn timestamps_are_epoch_micros_or_millis() {
    assert_eq!(
        enc(oid::TIMESTAMP, -1, "2024-01-02 03:04:05.123456"),
        json!(1_704_164_645_123_456i64)
    );
    assert_eq!(enc(oid::TIMESTAMP, 6, "1970-01-01 00:00:00"), json!(0));
    assert_eq!(
        enc(oid::TIMESTAMP, 3, "2024-01-02 03:04:05.123"),
        json!(1_704_164_645_123i64)
    );
    assert_eq!(enc(oid::TIMESTAMP, 0, "1969-12-31 23:59:59"), json!(-1000));
    assert_eq!(
        enc(oid::TIMESTAMP, -1, "0001-01-01 00:00:00 BC"),
        json!(-62_167_219_200_000_000i64)
    );
    assert_eq!(enc(oid::TIMESTAMP, -1, "infinity"), json!("infinity"));
    assert_eq!(enc(oid::TIMESTAMP, 3, "-infinity"), json!("-infinity"));
    assert_eq!(
        fails(oid::TIMESTAMP, -1, "2024-01-02T03:04:05").kind,
        "timestamp"
    );
}

#[test]
fn timestamptz_is_an_iso_string_in_utc() {
    assert_eq!(
        enc(oid::TIMESTAMPTZ, -1, "2024-01-02 05:04:05.123456+02"),
        json!("2024-01-02T03:04:05.123456Z")
    );
    assert_eq!(
        enc(oid::TIMESTAMPTZ, -1, "2024-01-02 03:04:05+00"),
        json!("2024-01-02T03:04:05.000000Z")
    );
    assert_eq!(
        enc(oid::TIMESTAMPTZ, 3, "2024-01-01 22:04:05.1-05"),
        json!("2024-01-02T03:04:05.100Z")
    );
    assert_eq!(
        enc(oid::TIMESTAMPTZ, 0, "2024-01-02 03:04:05+00"),
        json!("2024-01-02T03:04:05Z")
    );
    assert_eq!(
        enc(oid::TIMESTAMPTZ, -1, "0044-03-15 12:00:00+00 BC"),
        json!("-0043-03-15T12:00:00.000000Z")
    );
    assert_eq!(enc(oid::TIMESTAMPTZ, -1, "infinity"), json!("infinity"));
    assert_eq!(enc(oid::TIMESTAMPTZ, -1, "-infinity"), json!("-infinity"));
}

#[test]
fn intervals_are_micros_with_average_months() {
    assert_eq!(enc(oid::INTERVAL, -1, "00:00:00"), json!(0));
    assert_eq!(enc(oid::INTERVAL, -1, "1 mon"), json!(2_629_800_000_000i64));
    assert_eq!(
        enc(oid::INTERVAL, -1, "1 year 2 mons 3 days 04:05:06.789"),
        json!(14 * 2_629_800_000_000i64 + 3 * 86_400_000_000 + 14_706_789_000)
    );
    assert_eq!(
        enc(oid::INTERVAL, -1, "-1 years -2 mons +3 days -04:05:06"),
        json!(-14 * 2_629_800_000_000i64 + 3 * 86_400_000_000 - 14_706_000_000)
    );
    assert_eq!(enc(oid::INTERVAL, -1, "-00:00:00.5"), json!(-500_000));
    assert_eq!(fails(oid::INTERVAL, -1, "P1Y2M").kind, "interval");
}

#[test]
fn bits_are_booleans_or_little_endian_bytes() {
    assert_eq!(enc(oid::BIT, 1, "1"), json!(true));
    assert_eq!(enc(oid::BIT, 1, "0"), json!(false));
    assert_eq!(enc(oid::VARBIT, 1, "1"), json!(true));
    assert_eq!(enc(oid::BIT, 10, "0000000100"), json!("BA=="));
    assert_eq!(enc(oid::BIT, 16, "0000000100000010"), json!("AgE="));
    assert_eq!(enc(oid::VARBIT, -1, "101"), json!("BQ=="));
    assert_eq!(enc(oid::VARBIT, -1, "0000"), json!(""));
    assert_eq!(enc(oid::VARBIT, -1, ""), json!(""));
    assert_eq!(fails(oid::BIT, 3, "10x").kind, "bit");
}

#[test]
fn point_is_debeziums_struct() {
    assert_eq!(
        enc(oid::POINT, -1, "(1,2)"),
        json!({"x": 1.0, "y": 2.0, "wkb": "AQEAAAAAAAAAAADwPwAAAAAAAABA", "srid": null})
    );
    assert_eq!(enc(oid::POINT, -1, "(-1.5,1e+20)")["y"], json!(1e20));
    assert_eq!(fails(oid::POINT, -1, "1,2").kind, "point");
}

#[test]
fn arrays_nest_and_quote() {
    assert_eq!(enc(oid::INT4_ARRAY, -1, "{}"), json!([]));
    assert_eq!(enc(oid::INT4_ARRAY, -1, "{1,2,NULL}"), json!([1, 2, null]));
    assert_eq!(
        enc(oid::INT4_ARRAY, -1, "{{1,2},{3,NULL}}"),
        json!([[1, 2], [3, null]])
    );
    assert_eq!(
        enc(oid::INT4_ARRAY, -1, "{{{1},{2}},{{3},{4}}}"),
        json!([[[1], [2]], [[3], [4]]])
    );
    assert_eq!(enc(oid::INT4_ARRAY, -1, "[0:1]={7,8}"), json!([7, 8]));
    assert_eq!(
        enc(oid::INT4_ARRAY, -1, "[1:2][3:4]={{1,2},{3,4}}"),
        json!([[1, 2], [3, 4]])
    );
    assert_eq!(
        enc(
            oid::TEXT_ARRAY,
            -1,
            r#"{"a,b","c\"d","e\\f",NULL,"NULL","{x}",plain," sp ",""}"#
        ),
        json!([
            "a,b", "c\"d", "e\\f", null, "NULL", "{x}", "plain", " sp ", ""
        ])
    );
    assert_eq!(
        enc(oid::TEXT_ARRAY, -1, r#"{{"}",a},{b,"\\"}}"#),
        json!([["}", "a"], ["b", "\\"]])
    );
    assert_eq!(
        enc(oid::BOX_ARRAY, -1, "{(1,1),(0,0);(2,2),(1,1)}"),
        json!(["(1,1),(0,0)", "(2,2),(1,1)"])
    );
    assert_eq!(
        enc(
            oid::TIMESTAMP_ARRAY,
            3,
            r#"{"2024-01-02 03:04:05.123",NULL,infinity}"#
        ),
        json!([1_704_164_645_123i64, null, "infinity"])
    );
    assert_eq!(
        enc(oid::BYTEA_ARRAY, -1, r#"{"\\x0001",NULL}"#),
        json!(["AAE=", null])
    );
    assert_eq!(
        enc(oid::NUMERIC_ARRAY, -1, "{1.50,NaN}"),
        json!(["1.50", "NaN"])
    );
    assert_eq!(enc(oid::BOOL_ARRAY, -1, "{t,f}"), json!([true, false]));
    assert_eq!(
        enc(oid::JSONB_ARRAY, -1, r#"{"{\"a\": 1}",null}"#),
        json!([r#"{"a": 1}"#, null])
    );
    assert_eq!(enc(oid::BIT_ARRAY, 1, "{1,0}"), json!([true, false]));
    assert_eq!(fails(oid::INT4_ARRAY, -1, "{1,2").kind, "array");
    assert_eq!(fails(oid::INT4_ARRAY, -1, "{1,x}").kind, "integer");
}

#[test]
fn enums_domains_and_arrays_of_them() {
    assert_eq!(enc(ENUM_ARRAY, -1, "{happy,sad}"), json!(["happy", "sad"]));
    assert_eq!(
        enc(TS3_DOMAIN, -1, "2024-01-02 03:04:05.123"),
        json!(1_704_164_645_123i64)
    );
    assert_eq!(enc(NUMERIC_DOMAIN, -1, "9.99"), json!("9.99"));
}

#[test]
fn composites_become_objects() {
    assert_eq!(
        enc(
            COMPOSITE,
            -1,
            r#"(1,"he said ""hi"", \\ ok","2024-01-01 00:00:00","{1,2}")"#
        ),
        json!({"a": 1, "b": "he said \"hi\", \\ ok", "c": 1_704_067_200_000_000i64, "d": [1, 2]})
    );
    assert_eq!(
        enc(COMPOSITE, -1, "(,,,)"),
        json!({"a": null, "b": null, "c": null, "d": null})
    );
    assert_eq!(
        enc(COMPOSITE, -1, r#"(2,"",,{})"#),
        json!({"a": 2, "b": "", "c": null, "d": []})
    );
    assert_eq!(
        enc(COMPOSITE_ARRAY, -1, r#"{"(1,x,,)","(2,\"y, z\",,)",NULL}"#),
        json!([{"a": 1, "b": "x", "c": null, "d": null}, {"a": 2, "b": "y, z", "c": null, "d": null}, null])
    );
    assert_eq!(
        enc(NESTED, -1, r#"("(3,""a """"q"""""",,)",happy)"#),
        json!({"inner": {"a": 3, "b": "a \"q\"", "c": null, "d": null}, "mood": "happy"})
    );
    assert_eq!(fails(COMPOSITE, -1, "(1,2)").kind, "composite");
}

#[test]
fn hstore_is_a_json_string() {
    let v = enc(HSTORE, -1, r#""a"=>"1", "b"=>NULL, "c\"q"=>"x\\y""#);
    let inner: Value = serde_json::from_str(v.as_str().unwrap()).unwrap();
    assert_eq!(inner, json!({"a": "1", "b": null, "c\"q": "x\\y"}));
    assert_eq!(enc(HSTORE, -1, ""), json!("{}"));
}
