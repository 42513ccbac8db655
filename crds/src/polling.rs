//! What the operator and the worker must agree on for cursor polling: how
//! `polling.lateness` reads, which cursor types are supported, and the names
//! of the database objects `notify: true` makes (one place, both sides).
//!
//! ```text
//!  application ── INSERT/UPDATE ──► table ── statement trigger ──► pg_notify(channel)
//!              ── DELETE ─────────► table ── row trigger ────────► <deletes table> (key as jsonb)
//!              ── TRUNCATE ───────► table ── statement trigger ──► <deletes table> (key NULL)
//!  worker: LISTEN channel; each round drains the deletes table, then polls the tables
//! ```

use std::time::Duration;

use crate::duration;

/// How a polling capture deals with rows whose transaction commits after
/// rows with a newer cursor were read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lateness {
    /// The position follows the newest cursor read: a late commit behind it
    /// is missed (a sequence or clock cursor of a single writer is safe).
    None,
    /// Re-read this window behind the position each round, emitting only
    /// the rows not delivered yet.
    Window(Duration),
    /// Never read past the horizon the database itself sets: the start of
    /// the oldest transaction still open (for cursors the database sets from
    /// its clock), so no commit can add a row behind the position.
    Auto,
}

/// The spelling of [`Lateness::Auto`] in a spec.
pub const LATENESS_AUTO: &str = "Auto";

impl Lateness {
    /// Read `polling.lateness` (`None` when unset).
    pub fn parse(text: Option<&str>) -> Result<Self, String> {
        match text.map(str::trim) {
            None | Some("") => Ok(Self::None),
            Some(LATENESS_AUTO) => Ok(Self::Auto),
            Some(t) => duration::parse(t)
                .map(Self::Window)
                .map_err(|e| format!("{e}, or {LATENESS_AUTO}")),
        }
    }
}

/// Kinds of cursor column polling supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorKind {
    /// `smallint`, `integer`, `bigint`, `numeric`: a sequence or a version.
    Number,
    /// `timestamptz`.
    TimestampTz,
    /// `timestamp` (without time zone).
    Timestamp,
    /// `date`.
    Date,
}

impl CursorKind {
    /// The kind of a column by its type OID; `None` for an unsupported type.
    pub fn of_type(oid: u32) -> Option<Self> {
        match oid {
            20 | 21 | 23 | 1700 => Some(Self::Number),
            1184 => Some(Self::TimestampTz),
            1114 => Some(Self::Timestamp),
            1082 => Some(Self::Date),
            _ => None,
        }
    }

    /// A clock the database sets: only these kinds have a time horizon.
    pub fn is_time(self) -> bool {
        !matches!(self, Self::Number)
    }

    /// The supported types, as a message names them.
    pub const SUPPORTED: &'static str =
        "smallint, integer, bigint, numeric, timestamp, timestamptz or date";
}

/// Names of the objects `notify: true` makes for one capture, derived from
/// its base name (the operator's derived slot name: `siphon_<ns>_<name>`,
/// sanitized, at most 63 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyNames {
    /// LISTEN/NOTIFY channel.
    pub channel: String,
    /// Trigger function (in the objects schema).
    pub function: String,
    /// Statement trigger on each table (INSERT, UPDATE, DELETE: notify;
    /// TRUNCATE: a marker row).
    pub statement_trigger: String,
    /// Row trigger on each table (DELETE: the key into the deletes table).
    pub row_trigger: String,
    /// Table of deleted keys (in the objects schema).
    pub deletes_table: String,
}

impl NotifyNames {
    /// The names for a capture whose base name is `base`. Each stays within
    /// PostgreSQL's 63 bytes: a long base keeps its first bytes and a hash of
    /// the whole, so two captures never share a name.
    pub fn derive(base: &str) -> Self {
        let name = |suffix: &str| {
            let max = 63 - suffix.len();
            let stem = if base.len() <= max {
                base.to_string()
            } else {
                let hash = fnv1a(base);
                let keep = max - 9;
                let mut cut = keep;
                while !base.is_char_boundary(cut) {
                    cut -= 1;
                }
                format!("{}_{hash:08x}", &base[..cut])
            };
            format!("{stem}{suffix}")
        };
        Self {
            channel: name(""),
            function: name("_notify"),
            statement_trigger: name("_notify"),
            row_trigger: name("_deletes"),
            deletes_table: name("_deletes"),
        }
    }
}

/// A stable 32-bit hash (FNV-1a); stable across releases, unlike `std`'s.
fn fnv1a(text: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_reads_durations_and_auto() {
        assert_eq!(Lateness::parse(None), Ok(Lateness::None));
        assert_eq!(Lateness::parse(Some("Auto")), Ok(Lateness::Auto));
        assert_eq!(
            Lateness::parse(Some("1m30s")),
            Ok(Lateness::Window(Duration::from_secs(90)))
        );
        let err = Lateness::parse(Some("soon")).unwrap_err();
        assert!(err.contains("Auto"), "{err}");
    }

    #[test]
    fn cursor_kinds() {
        assert_eq!(CursorKind::of_type(20), Some(CursorKind::Number));
        assert_eq!(CursorKind::of_type(1184), Some(CursorKind::TimestampTz));
        assert_eq!(CursorKind::of_type(25), None, "text is not a cursor");
        assert!(CursorKind::Date.is_time());
        assert!(!CursorKind::Number.is_time());
    }

    #[test]
    fn notify_names_fit_postgres_and_stay_apart() {
        let short = NotifyNames::derive("siphon_shop_orders");
        assert_eq!(short.channel, "siphon_shop_orders");
        assert_eq!(short.deletes_table, "siphon_shop_orders_deletes");
        assert_eq!(short.function, "siphon_shop_orders_notify");
        let long_a = NotifyNames::derive(&format!("siphon_{}_a", "x".repeat(60)));
        let long_b = NotifyNames::derive(&format!("siphon_{}_b", "x".repeat(60)));
        for n in [&long_a, &long_b] {
            for name in [&n.channel, &n.function, &n.deletes_table, &n.row_trigger] {
                assert!(name.len() <= 63, "{name} is {} bytes", name.len());
            }
        }
        assert_ne!(long_a.deletes_table, long_b.deletes_table);
    }
}
