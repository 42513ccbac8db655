//! Column values: from PostgreSQL's text output to the JSON that Debezium's
//! PostgreSQL connector writes with the JSON converter and
//! `schemas.enable=false` (docs/formats.md has the table, type by type, and
//! where Siphon deliberately differs).
//!
//! ```text
//!  Relation message ──► Encoding::resolve(type OID, typmod, TypeRegistry)   once per column
//!  Datum::Text ───────► Encoding::write_json(text, options, &mut Vec<u8>)   per value, no allocation
//! ```
//!
//! The text forms assume the session settings the worker sets on every
//! connection it reads values from: `DateStyle=ISO`, `IntervalStyle=postgres`,
//! `extra_float_digits=1` or more, `lc_monetary=C`, `bytea_output=hex` (escape
//! is read too). A value that does not parse is reported as a [`ValueError`]
//! and nothing is written; the record encoder then writes the text as a string.

pub mod json;
pub mod oid;
pub mod registry;
pub mod temporal;

use std::borrow::Cow;

use siphon_crds::capture::DecimalHandling;

pub use registry::{Attribute, RegistryError, TypeInfo, TypeKind, TypeRegistry};
use temporal::Instant;

/// Options that change how values are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ValueOptions {
    /// `numeric` (and `money`) as exact strings or as doubles.
    pub decimal: DecimalHandling,
}

/// A value whose text is not in the form its type's output function (with the
/// worker's session settings) produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "a {kind} value is not in the expected text form (is the session's DateStyle ISO, IntervalStyle postgres, lc_monetary C?)"
)]
pub struct ValueError {
    /// The encoding that failed, e.g. `timestamp`.
    pub kind: &'static str,
}

fn bad(kind: &'static str) -> ValueError {
    ValueError { kind }
}

/// How the text of one column's values becomes JSON; resolved once per column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `t`/`f` → `true`/`false`.
    Bool,
    /// int2, int4, int8, oid → the number, copied.
    Integer,
    /// float4, float8 → the number; NaN and ±Infinity as strings.
    Float,
    /// numeric → exact string (or a double, see [`ValueOptions`]).
    Numeric,
    /// money → its amount like numeric (`$1,234.50` → `"1234.50"`).
    Money,
    /// Everything written as the text itself, in a JSON string.
    Text,
    /// bytea → base64 of the bytes.
    Bytea,
    /// date → days since 1970-01-01 (`io.debezium.time.Date`).
    Date,
    /// time → microseconds (`MicroTime`), or milliseconds (`Time`) for time(0..3).
    Time { millis: bool },
    /// timetz → `"HH:MM:SS[.f]Z"` in UTC (`ZonedTime`).
    TimeTz,
    /// timestamp → microseconds (`MicroTimestamp`), or milliseconds
    /// (`Timestamp`) for timestamp(0..3), since the epoch.
    Timestamp { millis: bool },
    /// timestamptz → ISO-8601 string in UTC (`ZonedTimestamp`), the fraction
    /// `width` digits wide (0: as few as needed).
    TimestampTz { width: u8 },
    /// interval → microseconds, a month counted as 365.25/12 days (`MicroDuration`).
    Interval,
    /// bit, varbit → boolean when one bit wide, else base64 of the bits as a
    /// little-endian number (`io.debezium.data.Bits`).
    Bits { boolean: bool },
    /// point → `{"x","y","wkb","srid"}` (`io.debezium.data.geometry.Point`).
    Point,
    /// hstore → a string holding a JSON object (`hstore.handling.mode=json`).
    Hstore,
    /// An array (any number of dimensions) of `element`s.
    Array {
        element: Box<Encoding>,
        delimiter: u8,
    },
    /// A composite value → a JSON object; each field holds its `"name":` prefix.
    Composite { fields: Vec<(Box<[u8]>, Encoding)> },
}

/// Seconds precision of time/timestamp types: the typmod, 6 when unset.
fn time_precision(typmod: i32) -> i32 {
    if typmod < 0 { 6 } else { typmod.min(6) }
}

impl Encoding {
    /// The encoding of a column of type `type_oid` with modifier `typmod`.
    /// Unknown OIDs (types created after the registry was loaded) are `Text`.
    pub fn resolve(type_oid: u32, typmod: i32, registry: &TypeRegistry) -> Encoding {
        Self::resolve_at(type_oid, typmod, registry, 0)
    }

    fn resolve_at(type_oid: u32, typmod: i32, registry: &TypeRegistry, depth: u8) -> Encoding {
        // Domains over domains over arrays of composites… end somewhere; a
        // cycle cannot exist in a real catalog, but a guard costs nothing.
        if depth > 16 {
            return Encoding::Text;
        }
        let next = depth + 1;
        match type_oid {
            oid::BOOL => Encoding::Bool,
            oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => Encoding::Integer,
            oid::FLOAT4 | oid::FLOAT8 => Encoding::Float,
            oid::NUMERIC => Encoding::Numeric,
            oid::MONEY => Encoding::Money,
            oid::BYTEA => Encoding::Bytea,
            oid::DATE => Encoding::Date,
            oid::TIME => Encoding::Time {
                millis: time_precision(typmod) <= 3,
            },
            oid::TIMETZ => Encoding::TimeTz,
            oid::TIMESTAMP => Encoding::Timestamp {
                millis: time_precision(typmod) <= 3,
            },
            oid::TIMESTAMPTZ => Encoding::TimestampTz {
                width: time_precision(typmod) as u8,
            },
            oid::INTERVAL => Encoding::Interval,
            oid::BIT | oid::VARBIT => Encoding::Bits {
                boolean: typmod == 1,
            },
            oid::POINT => Encoding::Point,
            _ => {
                if let Some(element) = oid::builtin_array_element(type_oid) {
                    let delimiter = if element == oid::BOX { b';' } else { b',' };
                    return Encoding::Array {
                        element: Box::new(Self::resolve_at(element, typmod, registry, next)),
                        delimiter,
                    };
                }
                let Some(info) = registry.get(type_oid) else {
                    return Encoding::Text;
                };
                match &info.kind {
                    TypeKind::Domain {
                        base,
                        typmod: domain_typmod,
                    } => {
                        let typmod = if typmod >= 0 { typmod } else { *domain_typmod };
                        Self::resolve_at(*base, typmod, registry, next)
                    }
                    TypeKind::Array { element, delimiter } => Encoding::Array {
                        element: Box::new(Self::resolve_at(*element, typmod, registry, next)),
                        delimiter: *delimiter,
                    },
                    TypeKind::Composite { attributes } => Encoding::Composite {
                        fields: attributes
                            .iter()
                            .map(|a| {
                                let mut name = Vec::with_capacity(a.name.len() + 3);
                                json::write_str(&mut name, a.name.as_bytes());
                                name.push(b':');
                                let encoding =
                                    Self::resolve_at(a.type_oid, a.type_modifier, registry, next);
                                (name.into_boxed_slice(), encoding)
                            })
                            .collect(),
                    },
                    TypeKind::Base if info.name == "hstore" => Encoding::Hstore,
                    TypeKind::Enum | TypeKind::Range { .. } | TypeKind::Base => Encoding::Text,
                }
            }
        }
    }

    /// A short name for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Encoding::Bool => "bool",
            Encoding::Integer => "integer",
            Encoding::Float => "float",
            Encoding::Numeric => "numeric",
            Encoding::Money => "money",
            Encoding::Text => "text",
            Encoding::Bytea => "bytea",
            Encoding::Date => "date",
            Encoding::Time { .. } => "time",
            Encoding::TimeTz => "timetz",
            Encoding::Timestamp { .. } => "timestamp",
            Encoding::TimestampTz { .. } => "timestamptz",
            Encoding::Interval => "interval",
            Encoding::Bits { .. } => "bit",
            Encoding::Point => "point",
            Encoding::Hstore => "hstore",
            Encoding::Array { .. } => "array",
            Encoding::Composite { .. } => "composite",
        }
    }

    /// Writes the JSON of one value given its text. On error `out` is left as
    /// it was.
    pub fn write_json(
        &self,
        text: &[u8],
        options: ValueOptions,
        out: &mut Vec<u8>,
    ) -> Result<(), ValueError> {
        let start = out.len();
        let result = self.write(text, options, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn write(
        &self,
        text: &[u8],
        options: ValueOptions,
        out: &mut Vec<u8>,
    ) -> Result<(), ValueError> {
        match self {
            Encoding::Text => json::write_str(out, text),
            Encoding::Integer => {
                if !json::is_json_integer(text) {
                    return Err(bad("integer"));
                }
                out.extend_from_slice(text);
            }
            Encoding::Bool => match text {
                b"t" | b"true" => out.extend_from_slice(b"true"),
                b"f" | b"false" => out.extend_from_slice(b"false"),
                _ => return Err(bad("bool")),
            },
            Encoding::Float => write_float(text, out)?,
            Encoding::Numeric => write_decimal(text, options, out).ok_or(bad("numeric"))?,
            Encoding::Money => {
                let amount = money_amount(text).ok_or(bad("money"))?;
                write_decimal(&amount, options, out).ok_or(bad("money"))?;
            }
            Encoding::Bytea => {
                let bytes = decode_bytea(text).ok_or(bad("bytea"))?;
                json::write_base64(out, &bytes);
            }
            Encoding::Date => match temporal::parse_date(text).ok_or(bad("date"))? {
                Instant::Finite(days) => json::write_i64(out, days),
                infinite => write_infinity(infinite, out),
            },
            Encoding::Time { millis } => {
                let micros = temporal::parse_time(text).ok_or(bad("time"))?;
                json::write_i64(out, if *millis { micros / 1000 } else { micros });
            }
            Encoding::TimeTz => {
                let micros = temporal::parse_timetz(text).ok_or(bad("timetz"))?;
                temporal::write_zoned_time(out, micros);
            }
            Encoding::Timestamp { millis } => {
                match temporal::parse_timestamp(text).ok_or(bad("timestamp"))? {
                    Instant::Finite(micros) => json::write_i64(
                        out,
                        if *millis {
                            micros.div_euclid(1000)
                        } else {
                            micros
                        },
                    ),
                    infinite => write_infinity(infinite, out),
                }
            }
            Encoding::TimestampTz { width } => {
                match temporal::parse_timestamptz(text).ok_or(bad("timestamptz"))? {
                    Instant::Finite(micros) => temporal::write_zoned_timestamp(out, micros, *width),
                    infinite => write_infinity(infinite, out),
                }
            }
            Encoding::Interval => {
                json::write_i64(out, temporal::parse_interval(text).ok_or(bad("interval"))?)
            }
            Encoding::Bits { boolean } => write_bits(text, *boolean, out).ok_or(bad("bit"))?,
            Encoding::Point => write_point(text, out).ok_or(bad("point"))?,
            Encoding::Hstore => write_hstore(text, out).ok_or(bad("hstore"))?,
            Encoding::Array { element, delimiter } => {
                let mut p = Parser::new(text);
                // Non-default lower bounds come first: `[0:1]={…}`.
                if p.peek() == Some(b'[') {
                    let eq = text.iter().position(|b| *b == b'=').ok_or(bad("array"))?;
                    p.i = eq + 1;
                }
                write_array(&mut p, element, *delimiter, options, out)?;
                if !p.done() {
                    return Err(bad("array"));
                }
            }
            Encoding::Composite { fields } => write_composite(text, fields, options, out)?,
        }
        Ok(())
    }
}

fn write_infinity(instant: Instant, out: &mut Vec<u8>) {
    match instant {
        Instant::PosInfinity => out.extend_from_slice(b"\"infinity\""),
        _ => out.extend_from_slice(b"\"-infinity\""),
    }
}

fn write_float(text: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
    if json::is_json_number(text) {
        out.extend_from_slice(text);
        return Ok(());
    }
    match text {
        b"NaN" | b"Infinity" | b"-Infinity" => json::write_str(out, text),
        _ => {
            let f: f64 = std::str::from_utf8(text)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(bad("float"))?;
            json::write_f64(out, f);
        }
    }
    Ok(())
}

/// numeric text → `"exact"` or a double; NaN and ±Infinity are strings either way.
fn write_decimal(text: &[u8], options: ValueOptions, out: &mut Vec<u8>) -> Option<()> {
    let special = matches!(text, b"NaN" | b"Infinity" | b"-Infinity");
    if !special && !json::is_json_number(text) && !is_plain_decimal(text) {
        return None;
    }
    match options.decimal {
        DecimalHandling::String => json::write_str(out, text),
        DecimalHandling::Double => {
            let f: f64 = std::str::from_utf8(text).ok()?.parse().ok()?;
            json::write_f64(out, f);
        }
    }
    Some(())
}

/// `-?[0-9]+(\.[0-9]+)?`, allowing leading zeros (`007.5` is not JSON but is a decimal).
fn is_plain_decimal(text: &[u8]) -> bool {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    let (int, frac) = match digits.iter().position(|b| *b == b'.') {
        Some(dot) => (&digits[..dot], Some(&digits[dot + 1..])),
        None => (digits, None),
    };
    !int.is_empty()
        && int.iter().all(u8::is_ascii_digit)
        && frac.is_none_or(|f| !f.is_empty() && f.iter().all(u8::is_ascii_digit))
}

/// The amount of a money value in lc_monetary `C` form (`$1,234.56`,
/// `-$0.99`) as decimal text.
fn money_amount(text: &[u8]) -> Option<Vec<u8>> {
    let (negative, rest) = match text.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let rest = rest.strip_prefix(b"$").unwrap_or(rest);
    let mut amount = Vec::with_capacity(text.len());
    if negative {
        amount.push(b'-');
    }
    for &b in rest {
        match b {
            b'0'..=b'9' | b'.' => amount.push(b),
            b',' => {}
            _ => return None,
        }
    }
    is_plain_decimal(&amount).then_some(amount)
}

/// bytea in `hex` (`\x0aff`) or `escape` (`a\\b\001`) output form.
fn decode_bytea(text: &[u8]) -> Option<Cow<'_, [u8]>> {
    if let Some(hex) = text.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return None;
        }
        let nibble = |b: u8| -> Option<u8> {
            match b {
                b'0'..=b'9' => Some(b - b'0'),
                b'a'..=b'f' => Some(b - b'a' + 10),
                b'A'..=b'F' => Some(b - b'A' + 10),
                _ => None,
            }
        };
        let mut bytes = Vec::with_capacity(hex.len() / 2);
        for pair in hex.chunks_exact(2) {
            bytes.push((nibble(pair[0])? << 4) | nibble(pair[1])?);
        }
        return Some(Cow::Owned(bytes));
    }
    if !text.contains(&b'\\') {
        return Some(Cow::Borrowed(text));
    }
    let mut bytes = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'\\' {
            bytes.push(text[i]);
            i += 1;
        } else if text.get(i + 1) == Some(&b'\\') {
            bytes.push(b'\\');
            i += 2;
        } else {
            let octal = text.get(i + 1..i + 4)?;
            if !octal.iter().all(|b| (b'0'..=b'7').contains(b)) {
                return None;
            }
            let v = octal
                .iter()
                .fold(0u16, |acc, b| acc * 8 + u16::from(b - b'0'));
            bytes.push(u8::try_from(v).ok()?);
            i += 4;
        }
    }
    Some(Cow::Owned(bytes))
}

/// Debezium's `Bits`: the bit string read as a binary number (first bit most
/// significant), written as its bytes in little-endian order without the
/// high zero bytes (so `B'0000'` is empty). One-bit columns are booleans.
fn write_bits(text: &[u8], boolean: bool, out: &mut Vec<u8>) -> Option<()> {
    if !text.iter().all(|b| *b == b'0' || *b == b'1') {
        return None;
    }
    if boolean {
        out.extend_from_slice(if text.contains(&b'1') {
            b"true"
        } else {
            b"false"
        });
        return Some(());
    }
    let mut bytes = vec![0u8; text.len().div_ceil(8)];
    for (i, bit) in text.iter().rev().enumerate() {
        if *bit == b'1' {
            bytes[i / 8] |= 1 << (i % 8);
        }
    }
    let used = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    json::write_base64(out, &bytes[..used]);
    Some(())
}

/// `(x,y)` → `{"x":x,"y":y,"wkb":<base64 WKB point, little-endian>,"srid":null}`.
fn write_point(text: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let inner = text.strip_prefix(b"(")?.strip_suffix(b")")?;
    let comma = inner.iter().position(|b| *b == b',')?;
    let parse = |s: &[u8]| -> Option<f64> { std::str::from_utf8(s).ok()?.trim().parse().ok() };
    let x = parse(&inner[..comma])?;
    let y = parse(&inner[comma + 1..])?;
    let mut wkb = [0u8; 21];
    wkb[0] = 1; // little-endian
    wkb[1..5].copy_from_slice(&1u32.to_le_bytes()); // wkbPoint
    wkb[5..13].copy_from_slice(&x.to_le_bytes());
    wkb[13..21].copy_from_slice(&y.to_le_bytes());
    out.extend_from_slice(b"{\"x\":");
    json::write_f64(out, x);
    out.extend_from_slice(b",\"y\":");
    json::write_f64(out, y);
    out.extend_from_slice(b",\"wkb\":");
    json::write_base64(out, &wkb);
    out.extend_from_slice(b",\"srid\":null}");
    Some(())
}

/// `"a"=>"1", "b"=>NULL` → a JSON string holding `{"a":"1","b":null}`.
fn write_hstore(text: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut p = Parser::new(text);
    let mut object = Vec::with_capacity(text.len() + 2);
    object.push(b'{');
    p.skip_spaces();
    let mut first = true;
    while !p.done() {
        if !first {
            p.expect(b',')?;
            p.skip_spaces();
        }
        first = false;
        let key = p.quoted()?;
        p.skip_spaces();
        p.expect(b'=')?;
        p.expect(b'>')?;
        p.skip_spaces();
        json::write_str(&mut object, &key);
        object.push(b':');
        if p.peek() == Some(b'"') {
            let value = p.quoted()?;
            json::write_str(&mut object, &value);
        } else {
            let word = p.unquoted(b',', b',');
            if !word.eq_ignore_ascii_case(b"NULL") {
                return None;
            }
            object.extend_from_slice(b"null");
        }
        object.push(b',');
        p.skip_spaces();
    }
    if object.len() > 1 {
        object.pop();
    }
    object.push(b'}');
    json::write_str(out, &object);
    Some(())
}

/// A cursor over array, record and hstore text.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8]) -> Self {
        Self { s, i: 0 }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
    fn expect(&mut self, b: u8) -> Option<()> {
        (self.peek() == Some(b)).then(|| self.i += 1)
    }
    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    /// A double-quoted item; `\x` stands for `x` and, when `doubled` quoting
    /// applies (records), `""` for `"`. Borrowed when nothing was escaped.
    fn quoted_with(&mut self, doubled: bool) -> Option<Cow<'a, [u8]>> {
        self.expect(b'"')?;
        let start = self.i;
        let mut owned: Option<Vec<u8>> = None;
        loop {
            let b = self.peek()?;
            match b {
                b'\\' => {
                    let buf = owned.get_or_insert_with(|| self.s[start..self.i].to_vec());
                    buf.push(*self.s.get(self.i + 1)?);
                    self.i += 2;
                }
                b'"' if doubled && self.s.get(self.i + 1) == Some(&b'"') => {
                    let buf = owned.get_or_insert_with(|| self.s[start..self.i].to_vec());
                    buf.push(b'"');
                    self.i += 2;
                }
                b'"' => {
                    let end = self.i;
                    self.i += 1;
                    return Some(match owned {
                        Some(buf) => Cow::Owned(buf),
                        None => Cow::Borrowed(&self.s[start..end]),
                    });
                }
                _ => {
                    if let Some(buf) = owned.as_mut() {
                        buf.push(b);
                    }
                    self.i += 1;
                }
            }
        }
    }
    fn quoted(&mut self) -> Option<Cow<'a, [u8]>> {
        self.quoted_with(false)
    }
    /// An unquoted item up to (not including) `a` or `b`, trimmed.
    fn unquoted(&mut self, a: u8, b: u8) -> &'a [u8] {
        let start = self.i;
        while self.peek().is_some_and(|c| c != a && c != b) {
            self.i += 1;
        }
        self.s[start..self.i].trim_ascii()
    }
}

/// One `{…}` level of an array; nested levels become nested JSON arrays.
fn write_array(
    p: &mut Parser<'_>,
    element: &Encoding,
    delimiter: u8,
    options: ValueOptions,
    out: &mut Vec<u8>,
) -> Result<(), ValueError> {
    p.skip_spaces();
    p.expect(b'{').ok_or(bad("array"))?;
    out.push(b'[');
    p.skip_spaces();
    if p.peek() == Some(b'}') {
        p.i += 1;
        out.push(b']');
        return Ok(());
    }
    loop {
        p.skip_spaces();
        match p.peek() {
            Some(b'{') => write_array(p, element, delimiter, options, out)?,
            Some(b'"') => {
                let item = p.quoted().ok_or(bad("array"))?;
                element.write(&item, options, out)?;
            }
            Some(_) => {
                let item = p.unquoted(delimiter, b'}');
                if item.eq_ignore_ascii_case(b"NULL") {
                    out.extend_from_slice(b"null");
                } else {
                    element.write(item, options, out)?;
                }
            }
            None => return Err(bad("array")),
        }
        p.skip_spaces();
        match p.peek() {
            Some(b'}') => {
                p.i += 1;
                out.push(b']');
                return Ok(());
            }
            Some(d) if d == delimiter => {
                p.i += 1;
                out.push(b',');
            }
            _ => return Err(bad("array")),
        }
    }
}

/// `(1,"a b",)` → `{"f1":1,"f2":"a b","f3":null}`; an empty field is NULL,
/// `""` an empty string.
fn write_composite(
    text: &[u8],
    fields: &[(Box<[u8]>, Encoding)],
    options: ValueOptions,
    out: &mut Vec<u8>,
) -> Result<(), ValueError> {
    let mut p = Parser::new(text);
    p.expect(b'(').ok_or(bad("composite"))?;
    out.push(b'{');
    for (n, (name, encoding)) in fields.iter().enumerate() {
        if n > 0 {
            p.expect(b',').ok_or(bad("composite"))?;
            out.push(b',');
        }
        out.extend_from_slice(name);
        match p.peek() {
            Some(b',' | b')') => out.extend_from_slice(b"null"),
            Some(b'"') => {
                let item = p.quoted_with(true).ok_or(bad("composite"))?;
                encoding.write(&item, options, out)?;
            }
            Some(_) => {
                let start = p.i;
                while p.peek().is_some_and(|c| c != b',' && c != b')') {
                    p.i += 1;
                }
                encoding.write(&text[start..p.i], options, out)?;
            }
            None => return Err(bad("composite")),
        }
    }
    p.expect(b')').ok_or(bad("composite"))?;
    if !p.done() {
        return Err(bad("composite"));
    }
    out.push(b'}');
    Ok(())
}

/// Convenience for one value: resolve and write (tests, tools). The record
/// encoder resolves once per column instead.
pub fn encode_text(
    type_oid: u32,
    typmod: i32,
    registry: &TypeRegistry,
    text: &[u8],
    options: ValueOptions,
    out: &mut Vec<u8>,
) -> Result<(), ValueError> {
    Encoding::resolve(type_oid, typmod, registry).write_json(text, options, out)
}

#[cfg(test)]
mod tests;
