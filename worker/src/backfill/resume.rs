//! Where a backfill starts (pure): the stored per-table progress, the
//! configuration's opt-outs and an on-demand request decide which tables are
//! read, and from which key.
//!
//! | stored state     | table enabled            | table opted out |
//! |------------------|--------------------------|-----------------|
//! | none, `Skipped`  | `Pending` (from the top) | `Skipped`       |
//! | `Pending`        | `Pending`                | `Skipped`       |
//! | `Running`        | `Running` (after its key)| `Skipped`       |
//! | `Done`           | `Done`                   | `Done`          |
//!
//! A request whose id differs from the completed one sets the tables it names
//! (every enabled table when it names none) back to `Pending`.

use siphon_crds::capture::SnapshotRequest;

use crate::offsets::{Position, TableBackfill};

pub use siphon_crds::status::table_state::{DONE, PENDING, RUNNING, SKIPPED};

/// One captured table as the configuration has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// `schema.table`.
    pub name: String,
    /// `snapshot.mode: Initial` and the table's own `snapshot: true`.
    pub enabled: bool,
}

/// The outcome: which tables to read this run, and the request to complete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// Tables in `Pending` or `Running`, in configuration order.
    pub to_read: Vec<String>,
    /// Id of the on-demand request this run completes.
    pub request: Option<String>,
    /// Names in the request that are not captured tables.
    pub unknown_requested: Vec<String>,
}

/// Update `position.backfill` for this run and say what to read.
pub fn resume(
    position: &mut Position,
    tables: &[Candidate],
    request: Option<&SnapshotRequest>,
) -> Resume {
    let request = request.filter(|r| position.completed_request.as_deref() != Some(r.id.as_str()));
    let mut out = Resume {
        request: request.map(|r| r.id.clone()),
        ..Resume::default()
    };
    if let Some(r) = request {
        out.unknown_requested = r
            .tables
            .iter()
            .filter(|n| !tables.iter().any(|t| &t.name == *n))
            .cloned()
            .collect();
    }
    for table in tables {
        let requested = request.is_some_and(|r| {
            if r.tables.is_empty() {
                table.enabled
            } else {
                r.tables.contains(&table.name)
            }
        });
        let entry = position.backfill.entry(table.name.clone()).or_default();
        if requested {
            *entry = fresh(PENDING);
        } else if !table.enabled {
            if entry.state != DONE {
                entry.state = SKIPPED.into();
            }
        } else {
            match entry.state.as_str() {
                DONE => {}
                RUNNING if entry.last_key.is_some() => {}
                RUNNING | PENDING => {
                    // Running without a key: no chunk completed yet.
                    entry.state = PENDING.into();
                }
                _ => *entry = fresh(PENDING),
            }
        }
        if matches!(entry.state.as_str(), PENDING | RUNNING) {
            out.to_read.push(table.name.clone());
        }
    }
    out
}

fn fresh(state: &str) -> TableBackfill {
    TableBackfill {
        state: state.into(),
        last_key: None,
        rows: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(list: &[(&str, bool)]) -> Vec<Candidate> {
        list.iter()
            .map(|(name, enabled)| Candidate {
                name: (*name).into(),
                enabled: *enabled,
            })
            .collect()
    }

    fn stored(state: &str, key: Option<&str>, rows: u64) -> TableBackfill {
        TableBackfill {
            state: state.into(),
            last_key: key.map(|k| vec![Some(k.into())]),
            rows,
        }
    }

    #[test]
    fn a_first_run_reads_enabled_tables_and_skips_opted_out_ones() {
        let mut p = Position::default();
        let r = resume(&mut p, &candidates(&[("s.a", true), ("s.b", false)]), None);
        assert_eq!(r.to_read, ["s.a"]);
        assert_eq!(p.backfill["s.a"].state, PENDING);
        assert_eq!(p.backfill["s.b"].state, SKIPPED);
        assert_eq!(r.request, None);
    }

    #[test]
    fn a_restart_continues_running_tables_and_leaves_done_ones() {
        let mut p = Position::default();
        p.backfill.insert("s.a".into(), stored(DONE, Some("9"), 9));
        p.backfill
            .insert("s.b".into(), stored(RUNNING, Some("40"), 40));
        let r = resume(
            &mut p,
            &candidates(&[("s.a", true), ("s.b", true), ("s.new", true)]),
            None,
        );
        assert_eq!(
            r.to_read,
            ["s.b", "s.new"],
            "a table added later is backfilled"
        );
        assert_eq!(p.backfill["s.b"], stored(RUNNING, Some("40"), 40));
        assert_eq!(p.backfill["s.new"].state, PENDING);
    }

    #[test]
    fn opting_out_stops_a_running_table() {
        let mut p = Position::default();
        p.backfill
            .insert("s.a".into(), stored(RUNNING, Some("5"), 5));
        p.backfill.insert("s.b".into(), stored(DONE, None, 5));
        let r = resume(&mut p, &candidates(&[("s.a", false), ("s.b", false)]), None);
        assert!(r.to_read.is_empty());
        assert_eq!(p.backfill["s.a"].state, SKIPPED);
        assert_eq!(p.backfill["s.b"].state, DONE);
    }

    #[test]
    fn a_new_request_resets_the_named_tables_once() {
        let mut p = Position::default();
        p.backfill.insert("s.a".into(), stored(DONE, Some("9"), 9));
        p.backfill.insert("s.b".into(), stored(DONE, Some("9"), 9));
        let request = SnapshotRequest {
            id: "2024-05-01".into(),
            tables: vec!["s.b".into(), "s.gone".into()],
        };
        let tables = candidates(&[("s.a", true), ("s.b", true)]);
        let r = resume(&mut p, &tables, Some(&request));
        assert_eq!(r.to_read, ["s.b"]);
        assert_eq!(r.request.as_deref(), Some("2024-05-01"));
        assert_eq!(r.unknown_requested, ["s.gone"]);
        assert_eq!(p.backfill["s.b"], stored(PENDING, None, 0));
        assert_eq!(p.backfill["s.a"].state, DONE);

        // Once completed, the same id does nothing.
        p.backfill.insert("s.b".into(), stored(DONE, Some("9"), 9));
        p.completed_request = Some("2024-05-01".into());
        let r = resume(&mut p, &tables, Some(&request));
        assert!(r.to_read.is_empty());
        assert_eq!(r.request, None);
    }

    #[test]
    fn a_request_without_tables_means_every_enabled_table() {
        let mut p = Position::default();
        p.backfill.insert("s.a".into(), stored(DONE, Some("9"), 9));
        p.backfill.insert("s.b".into(), stored(SKIPPED, None, 0));
        let request = SnapshotRequest {
            id: "again".into(),
            tables: vec![],
        };
        let r = resume(
            &mut p,
            &candidates(&[("s.a", true), ("s.b", false)]),
            Some(&request),
        );
        assert_eq!(r.to_read, ["s.a"]);
        assert_eq!(p.backfill["s.b"].state, SKIPPED);
    }
}
