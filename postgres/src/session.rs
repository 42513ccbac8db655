//! The session settings under which Siphon reads values.
//!
//! Every connection (replication, backfill, polling, the operator's) runs
//! with these, so a value has one text form whatever the server's or the
//! role's defaults: ISO dates in UTC, intervals in the `postgres` style,
//! floats with all their digits, money without a locale, bytea as hex,
//! backslashes taken literally in strings, UTF-8. The record encoder
//! (`siphon-worker`'s values) relies on exactly these forms.

/// `(name, value)` of each setting.
pub const SETTINGS: [(&str, &str); 8] = [
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("lc_monetary", "C"),
    ("bytea_output", "hex"),
    ("standard_conforming_strings", "on"),
];

/// The settings as a libpq `options` string (`-c name=value …`), for
/// connections whose startup packet tokio-postgres writes.
pub fn options() -> String {
    SETTINGS
        .iter()
        .map(|(name, value)| format!("-c {name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_carry_every_setting() {
        let options = options();
        for (name, value) in SETTINGS {
            assert!(options.contains(&format!("-c {name}={value}")), "{options}");
        }
        assert!(options.starts_with("-c client_encoding=UTF8 -c DateStyle=ISO"));
    }
}
