//! OIDs of PostgreSQL's built-in types (`pg_type.oid`), fixed since they are
//! assigned in the server's catalog headers and never change between releases.
//!
//! [`NAMES`] lists every constant with its `typname`; the integration test
//! `type_matrix` checks the table against a real server.

pub const BOOL: u32 = 16;
pub const BYTEA: u32 = 17;
pub const CHAR: u32 = 18;
pub const NAME: u32 = 19;
pub const INT8: u32 = 20;
pub const INT2: u32 = 21;
pub const INT4: u32 = 23;
pub const TEXT: u32 = 25;
pub const OID: u32 = 26;
pub const XID: u32 = 28;
pub const JSON: u32 = 114;
pub const XML: u32 = 142;
pub const POINT: u32 = 600;
pub const LSEG: u32 = 601;
pub const PATH: u32 = 602;
pub const BOX: u32 = 603;
pub const POLYGON: u32 = 604;
pub const LINE: u32 = 628;
pub const CIDR: u32 = 650;
pub const FLOAT4: u32 = 700;
pub const FLOAT8: u32 = 701;
pub const CIRCLE: u32 = 718;
pub const MACADDR8: u32 = 774;
pub const MONEY: u32 = 790;
pub const MACADDR: u32 = 829;
pub const INET: u32 = 869;
pub const BPCHAR: u32 = 1042;
pub const VARCHAR: u32 = 1043;
pub const DATE: u32 = 1082;
pub const TIME: u32 = 1083;
pub const TIMESTAMP: u32 = 1114;
pub const TIMESTAMPTZ: u32 = 1184;
pub const INTERVAL: u32 = 1186;
pub const TIMETZ: u32 = 1266;
pub const BIT: u32 = 1560;
pub const VARBIT: u32 = 1562;
pub const NUMERIC: u32 = 1700;
pub const UUID: u32 = 2950;
pub const PG_LSN: u32 = 3220;
pub const TSVECTOR: u32 = 3614;
pub const TSQUERY: u32 = 3615;
pub const JSONB: u32 = 3802;
pub const INT4RANGE: u32 = 3904;
pub const NUMRANGE: u32 = 3906;
pub const TSRANGE: u32 = 3908;
pub const TSTZRANGE: u32 = 3910;
pub const DATERANGE: u32 = 3912;
pub const INT8RANGE: u32 = 3926;
pub const XID8: u32 = 5069;

pub const BOOL_ARRAY: u32 = 1000;
pub const BYTEA_ARRAY: u32 = 1001;
pub const CHAR_ARRAY: u32 = 1002;
pub const NAME_ARRAY: u32 = 1003;
pub const INT2_ARRAY: u32 = 1005;
pub const INT4_ARRAY: u32 = 1007;
pub const TEXT_ARRAY: u32 = 1009;
pub const BPCHAR_ARRAY: u32 = 1014;
pub const VARCHAR_ARRAY: u32 = 1015;
pub const INT8_ARRAY: u32 = 1016;
pub const POINT_ARRAY: u32 = 1017;
pub const LSEG_ARRAY: u32 = 1018;
pub const PATH_ARRAY: u32 = 1019;
pub const BOX_ARRAY: u32 = 1020;
pub const FLOAT4_ARRAY: u32 = 1021;
pub const FLOAT8_ARRAY: u32 = 1022;
pub const POLYGON_ARRAY: u32 = 1027;
pub const OID_ARRAY: u32 = 1028;
pub const MACADDR_ARRAY: u32 = 1040;
pub const INET_ARRAY: u32 = 1041;
pub const TIMESTAMP_ARRAY: u32 = 1115;
pub const DATE_ARRAY: u32 = 1182;
pub const TIME_ARRAY: u32 = 1183;
pub const TIMESTAMPTZ_ARRAY: u32 = 1185;
pub const INTERVAL_ARRAY: u32 = 1187;
pub const NUMERIC_ARRAY: u32 = 1231;
pub const TIMETZ_ARRAY: u32 = 1270;
pub const BIT_ARRAY: u32 = 1561;
pub const VARBIT_ARRAY: u32 = 1563;
pub const JSON_ARRAY: u32 = 199;
pub const XML_ARRAY: u32 = 143;
pub const LINE_ARRAY: u32 = 629;
pub const CIDR_ARRAY: u32 = 651;
pub const CIRCLE_ARRAY: u32 = 719;
pub const MACADDR8_ARRAY: u32 = 775;
pub const MONEY_ARRAY: u32 = 791;
pub const UUID_ARRAY: u32 = 2951;
pub const TSVECTOR_ARRAY: u32 = 3643;
pub const TSQUERY_ARRAY: u32 = 3645;
pub const JSONB_ARRAY: u32 = 3807;
pub const INT4RANGE_ARRAY: u32 = 3905;
pub const NUMRANGE_ARRAY: u32 = 3907;
pub const TSRANGE_ARRAY: u32 = 3909;
pub const TSTZRANGE_ARRAY: u32 = 3911;
pub const DATERANGE_ARRAY: u32 = 3913;
pub const INT8RANGE_ARRAY: u32 = 3927;
pub const PG_LSN_ARRAY: u32 = 3221;

/// Built-in array types and their element types: `(array, element)`.
pub const ARRAYS: &[(u32, u32)] = &[
    (BOOL_ARRAY, BOOL),
    (BYTEA_ARRAY, BYTEA),
    (CHAR_ARRAY, CHAR),
    (NAME_ARRAY, NAME),
    (INT2_ARRAY, INT2),
    (INT4_ARRAY, INT4),
    (TEXT_ARRAY, TEXT),
    (BPCHAR_ARRAY, BPCHAR),
    (VARCHAR_ARRAY, VARCHAR),
    (INT8_ARRAY, INT8),
    (POINT_ARRAY, POINT),
    (LSEG_ARRAY, LSEG),
    (PATH_ARRAY, PATH),
    (BOX_ARRAY, BOX),
    (FLOAT4_ARRAY, FLOAT4),
    (FLOAT8_ARRAY, FLOAT8),
    (POLYGON_ARRAY, POLYGON),
    (OID_ARRAY, OID),
    (MACADDR_ARRAY, MACADDR),
    (INET_ARRAY, INET),
    (TIMESTAMP_ARRAY, TIMESTAMP),
    (DATE_ARRAY, DATE),
    (TIME_ARRAY, TIME),
    (TIMESTAMPTZ_ARRAY, TIMESTAMPTZ),
    (INTERVAL_ARRAY, INTERVAL),
    (NUMERIC_ARRAY, NUMERIC),
    (TIMETZ_ARRAY, TIMETZ),
    (BIT_ARRAY, BIT),
    (VARBIT_ARRAY, VARBIT),
    (JSON_ARRAY, JSON),
    (XML_ARRAY, XML),
    (LINE_ARRAY, LINE),
    (CIDR_ARRAY, CIDR),
    (CIRCLE_ARRAY, CIRCLE),
    (MACADDR8_ARRAY, MACADDR8),
    (MONEY_ARRAY, MONEY),
    (UUID_ARRAY, UUID),
    (TSVECTOR_ARRAY, TSVECTOR),
    (TSQUERY_ARRAY, TSQUERY),
    (JSONB_ARRAY, JSONB),
    (INT4RANGE_ARRAY, INT4RANGE),
    (NUMRANGE_ARRAY, NUMRANGE),
    (TSRANGE_ARRAY, TSRANGE),
    (TSTZRANGE_ARRAY, TSTZRANGE),
    (DATERANGE_ARRAY, DATERANGE),
    (INT8RANGE_ARRAY, INT8RANGE),
    (PG_LSN_ARRAY, PG_LSN),
];

/// Every constant of this module with its `pg_type.typname`.
pub const NAMES: &[(u32, &str)] = &[
    (BOOL, "bool"),
    (BYTEA, "bytea"),
    (CHAR, "char"),
    (NAME, "name"),
    (INT8, "int8"),
    (INT2, "int2"),
    (INT4, "int4"),
    (TEXT, "text"),
    (OID, "oid"),
    (XID, "xid"),
    (JSON, "json"),
    (XML, "xml"),
    (POINT, "point"),
    (LSEG, "lseg"),
    (PATH, "path"),
    (BOX, "box"),
    (POLYGON, "polygon"),
    (LINE, "line"),
    (CIDR, "cidr"),
    (FLOAT4, "float4"),
    (FLOAT8, "float8"),
    (CIRCLE, "circle"),
    (MACADDR8, "macaddr8"),
    (MONEY, "money"),
    (MACADDR, "macaddr"),
    (INET, "inet"),
    (BPCHAR, "bpchar"),
    (VARCHAR, "varchar"),
    (DATE, "date"),
    (TIME, "time"),
    (TIMESTAMP, "timestamp"),
    (TIMESTAMPTZ, "timestamptz"),
    (INTERVAL, "interval"),
    (TIMETZ, "timetz"),
    (BIT, "bit"),
    (VARBIT, "varbit"),
    (NUMERIC, "numeric"),
    (UUID, "uuid"),
    (PG_LSN, "pg_lsn"),
    (TSVECTOR, "tsvector"),
    (TSQUERY, "tsquery"),
    (JSONB, "jsonb"),
    (INT4RANGE, "int4range"),
    (NUMRANGE, "numrange"),
    (TSRANGE, "tsrange"),
    (TSTZRANGE, "tstzrange"),
    (DATERANGE, "daterange"),
    (INT8RANGE, "int8range"),
    (XID8, "xid8"),
    (BOOL_ARRAY, "_bool"),
    (BYTEA_ARRAY, "_bytea"),
    (CHAR_ARRAY, "_char"),
    (NAME_ARRAY, "_name"),
    (INT2_ARRAY, "_int2"),
    (INT4_ARRAY, "_int4"),
    (TEXT_ARRAY, "_text"),
    (BPCHAR_ARRAY, "_bpchar"),
    (VARCHAR_ARRAY, "_varchar"),
    (INT8_ARRAY, "_int8"),
    (POINT_ARRAY, "_point"),
    (LSEG_ARRAY, "_lseg"),
    (PATH_ARRAY, "_path"),
    (BOX_ARRAY, "_box"),
    (FLOAT4_ARRAY, "_float4"),
    (FLOAT8_ARRAY, "_float8"),
    (POLYGON_ARRAY, "_polygon"),
    (OID_ARRAY, "_oid"),
    (MACADDR_ARRAY, "_macaddr"),
    (INET_ARRAY, "_inet"),
    (TIMESTAMP_ARRAY, "_timestamp"),
    (DATE_ARRAY, "_date"),
    (TIME_ARRAY, "_time"),
    (TIMESTAMPTZ_ARRAY, "_timestamptz"),
    (INTERVAL_ARRAY, "_interval"),
    (NUMERIC_ARRAY, "_numeric"),
    (TIMETZ_ARRAY, "_timetz"),
    (BIT_ARRAY, "_bit"),
    (VARBIT_ARRAY, "_varbit"),
    (JSON_ARRAY, "_json"),
    (XML_ARRAY, "_xml"),
    (LINE_ARRAY, "_line"),
    (CIDR_ARRAY, "_cidr"),
    (CIRCLE_ARRAY, "_circle"),
    (MACADDR8_ARRAY, "_macaddr8"),
    (MONEY_ARRAY, "_money"),
    (UUID_ARRAY, "_uuid"),
    (TSVECTOR_ARRAY, "_tsvector"),
    (TSQUERY_ARRAY, "_tsquery"),
    (JSONB_ARRAY, "_jsonb"),
    (INT4RANGE_ARRAY, "_int4range"),
    (NUMRANGE_ARRAY, "_numrange"),
    (TSRANGE_ARRAY, "_tsrange"),
    (TSTZRANGE_ARRAY, "_tstzrange"),
    (DATERANGE_ARRAY, "_daterange"),
    (INT8RANGE_ARRAY, "_int8range"),
    (PG_LSN_ARRAY, "_pg_lsn"),
];

/// The element type of a built-in array type.
pub fn builtin_array_element(array_oid: u32) -> Option<u32> {
    ARRAYS
        .iter()
        .find(|(a, _)| *a == array_oid)
        .map(|(_, e)| *e)
}

/// First OID handed out to user-defined objects (`FirstNormalObjectId`);
/// everything below is part of the server's catalog.
pub const FIRST_NORMAL_OBJECT_ID: u32 = 16384;
