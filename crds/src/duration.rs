//! Durations as written in specs: `500ms`, `10s`, `1m30s`, `2h`.

use std::time::Duration;

/// A duration string could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {text:?}: write a number followed by ms, s, m or h, e.g. 10s or 1m30s")]
pub struct DurationError {
    /// The text as written.
    pub text: String,
}

/// Parse `500ms`, `10s`, `1m30s`, `2h`.
/// The shortest `logical.heartbeatInterval` a worker accepts: a heartbeat is
/// a write into the WAL, and a shorter one would be load, not safety.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// The shortest `polling.interval`: each round queries every table.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Parse a duration and require at least `min`; the error names the minimum.
pub fn parse_at_least(text: &str, min: Duration) -> Result<Duration, String> {
    match parse(text) {
        Ok(d) if d >= min => Ok(d),
        Ok(_) => Err(format!("must be at least {}ms", min.as_millis())),
        Err(e) => Err(e.to_string()),
    }
}

pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        text: text.to_string(),
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return Err(err());
        };
        total += unit * u32::try_from(n).map_err(|_| err())?;
        rest = &rest[len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_units_and_sums() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in ["", "10", "s", "10x", "1.5s", "-1s"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
