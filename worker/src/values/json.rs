//! The few JSON writing primitives the encoders need, writing straight into a
//! byte buffer: escaped strings, base64 strings and numbers.

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

/// Eight copies of byte `b`.
const fn splat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// Whether any of the eight bytes of `w` needs escaping. Exact (the classic
/// "has a byte less than n" / "has a zero byte" tests of Bit Twiddling Hacks):
/// a byte below 0x20, or one equal to `"` or `\`.
#[inline]
fn word_needs_escape(w: u64) -> bool {
    const HIGH: u64 = splat(0x80);
    let below_space = w.wrapping_sub(splat(0x20)) & !w & HIGH;
    let quote = w ^ splat(b'"');
    let backslash = w ^ splat(b'\\');
    let has_quote = quote.wrapping_sub(splat(1)) & !quote & HIGH;
    let has_backslash = backslash.wrapping_sub(splat(1)) & !backslash & HIGH;
    (below_space | has_quote | has_backslash) != 0
}

/// Writes valid UTF-8 bytes as a JSON string. Runs of eight bytes that need
/// no escaping (nearly all text) are skipped a word at a time.
fn write_str_utf8(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        if let Some(word) = s[i..].first_chunk::<8>()
            && !word_needs_escape(u64::from_ne_bytes(*word))
        {
            i += 8;
            continue;
        }
        let b = s[i];
        if !needs_escape(b) {
            i += 1;
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
        i += 1;
        start = i;
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
    if n < 0 {
        out.push(b'-');
    }
    write_u64(out, n.unsigned_abs());
}

/// Writes an unsigned integer. By hand rather than through `core::fmt`: a
/// Debezium value holds about ten numbers, and the formatting machinery cost
/// several times the digits themselves.
pub fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    // "00" to "99": two digits per division.
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    // u64::MAX has 20 digits.
    let mut digits = [0_u8; 20];
    let mut start = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        start -= 2;
        digits[start..start + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        start -= 2;
        digits[start..start + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        start -= 1;
        digits[start] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[start..]);
}

/// Writes `n` with at least `width` digits, zeros in front (`0044`).
pub fn write_u64_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut len = 1;
    let mut rest = n / 10;
    while rest > 0 {
        len += 1;
        rest /= 10;
    }
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(len)));
    write_u64(out, n);
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

    /// The byte-at-a-time escaper the word skipping must agree with.
    fn escaped_naively(s: &[u8]) -> Vec<u8> {
        let mut out = vec![b'"'];
        for &b in s {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                0..0x20 => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                _ => out.push(b),
            }
        }
        out.push(b'"');
        out
    }

    #[test]
    fn word_skipping_escapes_every_byte_at_every_position() {
        // Every ASCII byte (and a UTF-8 lead and continuation byte) at every
        // offset of strings up to 3 words long, in text that needs no escaping.
        let fillers: [&[u8]; 2] = [b"abcdefghijklmnopqrstuvwx", "ééééééééééé€".as_bytes()];
        for filler in fillers {
            for len in 0..=filler.len() {
                for pos in 0..len.max(1) {
                    for b in (0_u8..0x80).chain([0xc3, 0xa9]) {
                        let mut text = filler[..len].to_vec();
                        if pos < len {
                            text[pos] = b;
                        }
                        let mut out = Vec::new();
                        write_str_utf8(&mut out, &text);
                        assert_eq!(out, escaped_naively(&text), "{text:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn integers_match_display() {
        let edges = [i64::MAX, i64::MIN, i64::MIN + 1];
        for n in [0, 1, -1, 9, 10, -10, 99, 100, 12_345]
            .into_iter()
            .chain(edges)
        {
            assert_eq!(s(|o| write_i64(o, n)), n.to_string());
        }
        for n in [0, 7, 10, 1_000_000, u64::MAX, u64::MAX - 1] {
            assert_eq!(s(|o| write_u64(o, n)), n.to_string());
        }
        for n in (0..100_000).chain((1..20).map(|p| 10_u64.pow(p) - 1)) {
            assert_eq!(s(|o| write_u64(o, n)), n.to_string());
            assert_eq!(s(|o| write_u64(o, n + 1)), (n + 1).to_string());
        }
        assert_eq!(s(|o| write_u64_padded(o, 44, 4)), "0044");
        assert_eq!(s(|o| write_u64_padded(o, 0, 4)), "0000");
        assert_eq!(s(|o| write_u64_padded(o, 12_345, 4)), "12345");
        assert_eq!(s(|o| write_u64_padded(o, 7, 6)), "000007");
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
