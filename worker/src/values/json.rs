//! The few JSON writing primitives the encoders need, writing straight into a
//! byte buffer: escaped strings, base64 strings and numbers.

use std::io::Write as _;

/// Bytes that must be escaped inside a JSON string: `"`, `\` and controls.
#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Writes `s` as a JSON string. Invalid UTF-8 (impossible from a UTF-8
/// database) is replaced with U+FFFD rather than producing invalid JSON.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    match std::str::from_utf8(s) {
        Ok(valid) => write_str_utf8(out, valid.as_bytes()),
        Err(_) => write_str_utf8(out, String::from_utf8_lossy(s).as_bytes()),
    }
}

/// Writes valid UTF-8 bytes as a JSON string.
fn write_str_utf8(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Writes `bytes` as a JSON string holding their standard, padded base64
/// (what Kafka Connect's JSON converter writes for `BYTES`).
pub fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len().div_ceil(3) * 4 + 2);
    out.push(b'"');
    let mut chunks = bytes.chunks_exact(3);
    for c in &mut chunks {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        out.extend_from_slice(&[
            BASE64[(n >> 18) as usize & 63],
            BASE64[(n >> 12) as usize & 63],
            BASE64[(n >> 6) as usize & 63],
            BASE64[n as usize & 63],
        ]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.extend_from_slice(&[
                BASE64[(n >> 18) as usize & 63],
                BASE64[(n >> 12) as usize & 63],
                b'=',
                b'=',
            ]);
        }
        [a, b] => {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.extend_from_slice(&[
                BASE64[(n >> 18) as usize & 63],
                BASE64[(n >> 12) as usize & 63],
                BASE64[(n >> 6) as usize & 63],
                b'=',
            ]);
        }
        _ => {}
    }
    out.push(b'"');
}

/// Writes an integer.
pub fn write_i64(out: &mut Vec<u8>, n: i64) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{n}");
}

/// Writes an unsigned integer.
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    let _ = write!(out, "{n}");
}

/// Writes a float the way JSON can hold it: finite values as numbers (shortest
/// round-trip form), NaN and the infinities as the strings `"NaN"`,
/// `"Infinity"`, `"-Infinity"` (Jackson's default, hence Debezium's).
pub fn write_f64(out: &mut Vec<u8>, f: f64) {
    if f.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 {
            b"\"Infinity\""
        } else {
            b"\"-Infinity\""
        });
    } else {
        // serde_json formats finite floats with ryu; cannot fail into a Vec.
        let _ = serde_json::to_writer(&mut *out, &f);
    }
}

/// Is `s` a number in JSON's grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
pub fn is_json_number(s: &[u8]) -> bool {
    let mut i = 0;
    let n = s.len();
    if i < n && s[i] == b'-' {
        i += 1;
    }
    if i >= n {
        return false;
    }
    if s[i] == b'0' {
        i += 1;
    } else if s[i].is_ascii_digit() {
        while i < n && s[i].is_ascii_digit() {
            i += 1;
        }
    } else {
        return false;
    }
    if i < n && s[i] == b'.' {
        i += 1;
        let start = i;
        while i < n && s[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    if i < n && (s[i] == b'e' || s[i] == b'E') {
        i += 1;
        if i < n && (s[i] == b'+' || s[i] == b'-') {
            i += 1;
        }
        let start = i;
        while i < n && s[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    i == n
}

/// Is `s` an integer in JSON's grammar (`-?(0|[1-9][0-9]*)`), the form
/// PostgreSQL's integer output functions produce.
#[inline]
pub fn is_json_integer(s: &[u8]) -> bool {
    let digits = match s.first() {
        Some(b'-') => &s[1..],
        _ => s,
    };
    match digits {
        [] => false,
        [b'0'] => true,
        [b'0', ..] => false,
        _ => digits.iter().all(u8::is_ascii_digit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn escapes_strings() {
        assert_eq!(s(|o| write_str(o, b"plain")), r#""plain""#);
        assert_eq!(
            s(|o| write_str(o, b"a\"b\\c\nd\te\x01")),
            r#""a\"b\\c\nd\te\u0001""#
        );
        assert_eq!(s(|o| write_str(o, "€ ✓".as_bytes())), "\"€ ✓\"");
        assert_eq!(s(|o| write_str(o, b"bad\xff")), "\"bad\u{fffd}\"");
        let round: String = serde_json::from_str(&s(|o| write_str(o, b"\x00\x1f\x7f\"'"))).unwrap();
        assert_eq!(round, "\u{0}\u{1f}\u{7f}\"'");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(
                s(|o| write_base64(o, input.as_bytes())),
                format!("\"{expected}\"")
            );
        }
        assert_eq!(
            s(|o| write_base64(o, &[0xff, 0xfe, 0xfd, 0x00])),
            "\"//79AA==\""
        );
    }

    #[test]
    fn floats_and_specials() {
        assert_eq!(s(|o| write_f64(o, 1.5)), "1.5");
        assert_eq!(s(|o| write_f64(o, f64::NAN)), "\"NaN\"");
        assert_eq!(s(|o| write_f64(o, f64::INFINITY)), "\"Infinity\"");
        assert_eq!(s(|o| write_f64(o, f64::NEG_INFINITY)), "\"-Infinity\"");
    }

    #[test]
    fn number_grammar() {
        for ok in ["0", "-0", "12", "1.5", "-1.5e+20", "1e-07", "1E5"] {
            assert!(is_json_number(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "NaN", "Infinity", "+1", "1 ",
        ] {
            assert!(!is_json_number(bad.as_bytes()), "{bad}");
        }
        for ok in ["0", "-12", "9223372036854775807"] {
            assert!(is_json_integer(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "-", "007", "1.0", " 1"] {
            assert!(!is_json_integer(bad.as_bytes()), "{bad}");
        }
    }
}
