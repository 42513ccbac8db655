//! Rows of `COPY (…) TO STDOUT` in text format, as [`Row`]s of text values.
//!
//! The backfill reads its chunks this way: the server writes one CopyData
//! message per row (the frontend/backend protocol promises it), with no
//! per-column framing, so a chunk of ten thousand rows costs the worker one
//! pass over its bytes and one allocation per row.
//!
//! **The format.** Values are separated by a tab and the row ends with a
//! newline; `\N` alone is NULL. In a value the server escapes the backslash
//! (`\\`) and the control characters backspace, form feed, newline, carriage
//! return, tab and vertical tab (`\b \f \n \r \t \v`); every other byte is as
//! the type's output function wrote it.
//!
//! **Invariant.** Unescaped, a value is byte for byte the type's text output
//! in the session's client encoding (UTF-8, set by every connection of the
//! worker): the same form pgoutput sends in the stream, so a backfill read
//! and a streamed change of the same row encode to the same record. A value
//! without a backslash is a slice of the message (no copy); one with a
//! backslash is copied once, unescaped.

use bytes::{BufMut, Bytes, BytesMut};

use crate::change::{Datum, Row};

/// Why a CopyData message is not a row of the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyRowError {
    #[error("a COPY row does not end with a newline")]
    Unterminated,
    #[error("a COPY row has {found} values where {expected} were asked for")]
    Columns { expected: usize, found: usize },
    #[error("a COPY row ends in the middle of an escape sequence")]
    DanglingEscape,
}

/// One CopyData message of a text-format COPY as the row of `columns`
/// values it holds.
pub fn parse_row(message: &Bytes, columns: usize) -> Result<Row, CopyRowError> {
    let line = match message.last() {
        Some(b'\n') => message.slice(..message.len() - 1),
        _ => return Err(CopyRowError::Unterminated),
    };
    let mut row = Vec::with_capacity(columns);
    let mut start = 0;
    let bytes = &line[..];
    loop {
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'\t')
            .map_or(bytes.len(), |p| start + p);
        row.push(value(&line, start, end)?);
        if end == bytes.len() {
            break;
        }
        start = end + 1;
    }
    if row.len() != columns {
        return Err(CopyRowError::Columns {
            expected: columns,
            found: row.len(),
        });
    }
    Ok(row)
}

/// The value in `line[start..end]` (no tab inside: the server escapes it).
fn value(line: &Bytes, start: usize, end: usize) -> Result<Datum, CopyRowError> {
    let raw = &line[start..end];
    if raw == b"\\N" {
        return Ok(Datum::Null);
    }
    if !raw.contains(&b'\\') {
        return Ok(Datum::Text(line.slice(start..end)));
    }
    let mut out = BytesMut::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.put_u8(b);
            continue;
        }
        let unescaped = match bytes.next().ok_or(CopyRowError::DanglingEscape)? {
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            // `\\`, and any other escaped byte stands for itself.
            &other => other,
        };
        out.put_u8(unescaped);
    }
    Ok(Datum::Text(out.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn parse(s: &str, columns: usize) -> Result<Row, CopyRowError> {
        parse_row(&Bytes::copy_from_slice(s.as_bytes()), columns)
    }

    #[test]
    fn values_nulls_and_empty_strings() {
        assert_eq!(
            parse("1\t\\N\t\tabc\n", 4).unwrap(),
            vec![text("1"), Datum::Null, text(""), text("abc")]
        );
        assert_eq!(parse("\\N\n", 1).unwrap(), vec![Datum::Null]);
        assert_eq!(parse("\n", 1).unwrap(), vec![text("")]);
        assert_eq!(parse("\t\n", 2).unwrap(), vec![text(""), text("")]);
    }

    #[test]
    fn escapes_are_undone() {
        assert_eq!(
            parse("a\\tb\\nc\\\\d\\re\\bf\\fg\\vh\n", 1).unwrap(),
            vec![text("a\tb\nc\\d\re\x08f\x0cg\x0bh")]
        );
        // The string `\N` (not NULL) arrives as `\\N`.
        assert_eq!(parse("\\\\N\n", 1).unwrap(), vec![text("\\N")]);
        // Multibyte UTF-8 passes through untouched.
        assert_eq!(parse("žluť\\tkůň\n", 1).unwrap(), vec![text("žluť\tkůň")]);
    }

    #[test]
    fn a_value_without_escapes_shares_the_message() {
        let message = Bytes::from_static(b"12\thello\n");
        let row = parse_row(&message, 2).unwrap();
        let Datum::Text(hello) = &row[1] else {
            panic!("text expected")
        };
        assert_eq!(hello.as_ptr(), message[3..].as_ptr());
    }

    #[test]
    fn malformed_rows_are_refused() {
        assert_eq!(parse("1\t2", 2), Err(CopyRowError::Unterminated));
        assert_eq!(
            parse("1\t2\n", 3),
            Err(CopyRowError::Columns {
                expected: 3,
                found: 2
            })
        );
        assert_eq!(parse("a\\\n", 1), Err(CopyRowError::DanglingEscape));
    }
}
