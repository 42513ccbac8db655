//! The watermark window of one chunk: pure bookkeeping, no I/O.
//!
//! ```text
//!  stream:  … L ── c(k7) ── u(k3) ── d(k9) ── H …
//!               ╰────── window open ───────╯
//!  chunk rows read between L and H: k1 … k10
//!  at H: drop k3, k7, k9 (the stream carries their newer state), emit the rest
//! ```
//!
//! A window waits for its low watermark, records the key of every change of
//! its table while open, and at the high watermark tells which chunk rows
//! survive. Keys are compared by the text of the key columns, the form in
//! which both pgoutput and the chunk query deliver values.
//!
//! WAL order and visibility order differ by a hair: a transaction inserts
//! its commit record, then becomes visible. One that committed just before
//! the low watermark in the WAL may still be invisible to the chunk's
//! snapshot; its change went out before the window opened, so the chunk
//! would overwrite it with an older row. [`missed_commit`] finds such a
//! transaction from the snapshot's in-progress list; the chunk is then read
//! again.

use std::collections::HashSet;

use bytes::Bytes;

use crate::change::{Change, Datum, Op, Relation, Row};

/// The text values of a row's key columns (`None` for a null).
pub type KeyText = Vec<Option<Bytes>>;

/// Which transactions a snapshot does not see: those in `xip` and those from
/// `xmax` on (32-bit xids, as pgoutput sends them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invisible {
    pub xmax: u32,
    pub xip: Vec<u32>,
}

impl Invisible {
    /// Whether the snapshot does not see `xid` (wraparound-aware).
    pub fn hides(&self, xid: u32) -> bool {
        xid != 0 && (self.xip.contains(&xid) || (xid.wrapping_sub(self.xmax) as i32) >= 0)
    }
}

/// A transaction the stream delivered before the low watermark that the
/// chunk's snapshot did not see, if any: then the chunk must be read again.
pub fn missed_commit(
    committed_before_low: impl IntoIterator<Item = u32>,
    snapshot: &Invisible,
) -> Option<u32> {
    committed_before_low
        .into_iter()
        .find(|xid| snapshot.hides(*xid))
}

/// Where a window is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Written or about to be written; its low watermark has not come by.
    Waiting,
    /// Between the low and the high watermark.
    Open,
    /// The high watermark came by.
    Closed,
}

/// What a watermark of this capture meant to the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The low watermark: the window opened.
    Opened,
    /// The high watermark: the window closed; the chunk may be emitted.
    Closed,
    /// Another chunk's watermark (an earlier run's, for instance).
    Foreign,
}

/// The window of one chunk.
#[derive(Debug)]
pub struct ChunkWindow {
    /// Relation id of the chunk's table.
    oid: u32,
    /// Key column names of the chunk's table, in key order.
    key_names: Vec<String>,
    low: String,
    high: String,
    phase: Phase,
    /// Keys (new and old) of the table's changes while open.
    changed: HashSet<KeyText>,
    /// The table was truncated while open: no chunk row may be emitted.
    truncated: bool,
    /// A change of the table while open had a key that cannot be known (an
    /// unchanged TOASTed key column): the chunk must be read again.
    uncertain: bool,
}

impl ChunkWindow {
    pub fn new(oid: u32, key_names: Vec<String>, low: String, high: String) -> Self {
        Self {
            oid,
            key_names,
            low,
            high,
            phase: Phase::Waiting,
            changed: HashSet::new(),
            truncated: false,
            uncertain: false,
        }
    }

    pub fn low(&self) -> &str {
        &self.low
    }

    pub fn high(&self) -> &str {
        &self.high
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// A change of the table while open had a key that cannot be known: the
    /// chunk must not be emitted as read, only read again.
    pub fn must_reread(&self) -> bool {
        self.uncertain
    }

    /// Keys recorded so far.
    pub fn changed_keys(&self) -> usize {
        self.changed.len()
    }

    /// A watermark row of this capture came by in the stream.
    pub fn watermark(&mut self, text: &str) -> Seen {
        match self.phase {
            Phase::Waiting if text == self.low => {
                self.phase = Phase::Open;
                Seen::Opened
            }
            Phase::Open if text == self.high => {
                self.phase = Phase::Closed;
                Seen::Closed
            }
            _ => Seen::Foreign,
        }
    }

    /// A change of any table came by in the stream (watermarks excluded).
    pub fn observe(&mut self, change: &Change) {
        if self.phase != Phase::Open || change.relation.oid != self.oid {
            return;
        }
        if change.op == Op::Truncate {
            self.truncated = true;
            return;
        }
        let mut known = false;
        for row in [change.new.as_ref(), change.old.as_ref()]
            .into_iter()
            .flatten()
        {
            match key_of(&change.relation, row, &self.key_names) {
                KeyOf::Key(key) => {
                    known = true;
                    self.changed.insert(key);
                }
                KeyOf::Absent => {}
                KeyOf::Unknown => {
                    // An old tuple without the key (identity full rows always
                    // have it; key-only tuples too), or an unchanged TOASTed
                    // key in the new tuple: only the other side may tell.
                }
            }
        }
        if !known {
            self.uncertain = true;
        }
    }

    /// The chunk rows that survive the window, and how many were dropped.
    /// `key_positions` are the key columns' indexes in the rows.
    pub fn survivors(&self, rows: Vec<Row>, key_positions: &[usize]) -> (Vec<Row>, usize) {
        if self.truncated {
            let dropped = rows.len();
            return (Vec::new(), dropped);
        }
        if self.changed.is_empty() {
            return (rows, 0);
        }
        let before = rows.len();
        let kept: Vec<Row> = rows
            .into_iter()
            .filter(|row| !self.changed.contains(&row_key(row, key_positions)))
            .collect();
        let dropped = before - kept.len();
        (kept, dropped)
    }
}

/// The key text of a chunk row.
pub fn row_key(row: &Row, key_positions: &[usize]) -> KeyText {
    key_positions
        .iter()
        .map(|&i| match row.get(i) {
            Some(Datum::Text(t) | Datum::Binary(t)) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

enum KeyOf {
    Key(KeyText),
    /// The row carries no key column at all (nothing to record).
    Absent,
    /// A key column is an unchanged TOAST value.
    Unknown,
}

/// The key text of a streamed row, by key column names.
fn key_of(relation: &Relation, row: &Row, key_names: &[String]) -> KeyOf {
    let mut key = Vec::with_capacity(key_names.len());
    let mut any = false;
    for name in key_names {
        let Some(i) = relation.columns.iter().position(|c| &c.name == name) else {
            return KeyOf::Unknown;
        };
        match row.get(i) {
            Some(Datum::Text(t) | Datum::Binary(t)) => {
                any = true;
                key.push(Some(t.clone()));
            }
            Some(Datum::UnchangedToast) => return KeyOf::Unknown,
            Some(Datum::Null) | None => key.push(None),
        }
    }
    if any { KeyOf::Key(key) } else { KeyOf::Absent }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::change::{Column, Lsn};

    fn relation(oid: u32, columns: &[(&str, bool)]) -> Arc<Relation> {
        Arc::new(Relation {
            oid,
            schema: "public".into(),
            name: format!("t{oid}"),
            replica_identity: b'd',
            columns: columns
                .iter()
                .map(|(name, is_key)| Column {
                    name: (*name).into(),
                    type_oid: 25,
                    type_modifier: -1,
                    is_key: *is_key,
                })
                .collect(),
        })
    }

    fn t(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn row(values: &[&str]) -> Row {
        values.iter().map(|v| t(v)).collect()
    }

    fn change(rel: &Arc<Relation>, op: Op, old: Option<Row>, new: Option<Row>) -> Change {
        Change {
            op,
            relation: Arc::clone(rel),
            old,
            new,
            commit_lsn: Lsn(1),
            lsn: Lsn(1),
            last_commit_end: Lsn(0),
            xid: 7,
            commit_ts_us: 0,
            snapshot: None,
        }
    }

    fn open(oid: u32, keys: &[&str]) -> ChunkWindow {
        let mut w = ChunkWindow::new(
            oid,
            keys.iter().map(|k| (*k).to_string()).collect(),
            "low:public.t:1:n".into(),
            "high:public.t:1:n".into(),
        );
        assert_eq!(w.watermark("low:public.t:1:n"), Seen::Opened);
        w
    }

    fn ids(rows: &[Row]) -> Vec<String> {
        rows.iter()
            .map(|r| match &r[0] {
                Datum::Text(b) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn rows_whose_key_changed_inside_the_window_are_dropped_others_kept() {
        let rel = relation(10, &[("id", true), ("v", false)]);
        let mut w = open(10, &["id"]);
        w.observe(&change(&rel, Op::Insert, None, Some(row(&["2", "x"]))));
        w.observe(&change(&rel, Op::Update, None, Some(row(&["4", "y"]))));
        w.observe(&change(
            &rel,
            Op::Delete,
            Some(vec![t("5"), Datum::Null]),
            None,
        ));
        assert_eq!(w.watermark("high:public.t:1:n"), Seen::Closed);
        let chunk: Vec<Row> = ["1", "2", "3", "4", "5", "6"]
            .iter()
            .map(|id| row(&[id, "old"]))
            .collect();
        let (kept, dropped) = w.survivors(chunk, &[0]);
        assert_eq!(ids(&kept), ["1", "3", "6"]);
        assert_eq!(dropped, 3);
    }

    #[test]
    fn changes_before_the_low_watermark_and_of_other_tables_are_ignored() {
        let rel = relation(10, &[("id", true)]);
        let other = relation(11, &[("id", true)]);
        let mut w = ChunkWindow::new(10, vec!["id".into()], "low".into(), "high".into());
        w.observe(&change(&rel, Op::Insert, None, Some(row(&["1"]))));
        assert_eq!(w.watermark("high"), Seen::Foreign, "no high before low");
        assert_eq!(w.watermark("low"), Seen::Opened);
        w.observe(&change(&other, Op::Insert, None, Some(row(&["2"]))));
        assert_eq!(w.watermark("low"), Seen::Foreign);
        assert_eq!(w.watermark("high"), Seen::Closed);
        w.observe(&change(&rel, Op::Insert, None, Some(row(&["3"]))));
        let (kept, dropped) = w.survivors(vec![row(&["1"]), row(&["2"]), row(&["3"])], &[0]);
        assert_eq!(ids(&kept), ["1", "2", "3"]);
        assert_eq!(dropped, 0);
    }

    #[test]
    fn stale_watermarks_of_an_earlier_run_do_not_open_the_window() {
        let mut w = ChunkWindow::new(
            10,
            vec!["id".into()],
            "low:a:1:new".into(),
            "high:a:1:new".into(),
        );
        assert_eq!(w.watermark("low:a:1:old"), Seen::Foreign);
        assert_eq!(w.watermark("high:a:1:old"), Seen::Foreign);
        assert_eq!(w.phase(), Phase::Waiting);
    }

    #[test]
    fn composite_keys_match_on_every_column_by_name() {
        // The stream's column order differs from the key order.
        let rel = relation(20, &[("b", true), ("v", false), ("a", true)]);
        let mut w = open(20, &["a", "b"]);
        w.observe(&change(&rel, Op::Update, None, Some(row(&["x", "9", "1"]))));
        // Chunk rows are (a, b, v).
        let chunk = vec![
            row(&["1", "x", "0"]),
            row(&["1", "y", "0"]),
            row(&["2", "x", "0"]),
        ];
        let (kept, dropped) = w.survivors(chunk, &[0, 1]);
        assert_eq!(dropped, 1);
        assert_eq!(
            kept,
            vec![row(&["1", "y", "0"]), row(&["2", "x", "0"])],
            "only (1, x) changed"
        );
    }

    #[test]
    fn a_key_changing_update_drops_both_the_old_and_the_new_key() {
        let rel = relation(30, &[("id", true), ("v", false)]);
        let mut w = open(30, &["id"]);
        // UPDATE … SET id = 8 WHERE id = 3: old key tuple (3), new row (8).
        w.observe(&change(
            &rel,
            Op::Update,
            Some(vec![t("3"), Datum::Null]),
            Some(row(&["8", "z"])),
        ));
        let chunk: Vec<Row> = ["1", "3", "8", "9"]
            .iter()
            .map(|id| row(&[id, "-"]))
            .collect();
        let (kept, dropped) = w.survivors(chunk, &[0]);
        assert_eq!(ids(&kept), ["1", "9"]);
        assert_eq!(dropped, 2);
    }

    #[test]
    fn keys_compare_as_exact_text() {
        let rel = relation(40, &[("id", true)]);
        let mut w = open(40, &["id"]);
        w.observe(&change(&rel, Op::Insert, None, Some(row(&["1.0"]))));
        let (kept, _) = w.survivors(vec![row(&["1"]), row(&["1.0"])], &[0]);
        assert_eq!(ids(&kept), ["1"]);
    }

    #[test]
    fn a_truncate_inside_the_window_drops_the_whole_chunk() {
        let rel = relation(50, &[("id", true)]);
        let mut w = open(50, &["id"]);
        w.observe(&change(&rel, Op::Truncate, None, None));
        let (kept, dropped) = w.survivors(vec![row(&["1"]), row(&["2"])], &[0]);
        assert!(kept.is_empty());
        assert_eq!(dropped, 2);
    }

    #[test]
    fn a_commit_before_the_low_watermark_hidden_from_the_snapshot_is_found() {
        let snapshot = Invisible {
            xmax: 1000,
            xip: vec![990, 995],
        };
        assert_eq!(missed_commit([980, 985, 989], &snapshot), None);
        assert_eq!(
            missed_commit([980, 995], &snapshot),
            Some(995),
            "in progress"
        );
        assert_eq!(missed_commit([1001], &snapshot), Some(1001), "past xmax");
        // Across the xid wraparound.
        let wrapped = Invisible {
            xmax: 5,
            xip: vec![],
        };
        assert_eq!(missed_commit([u32::MAX - 3, 4], &wrapped), None);
        assert_eq!(missed_commit([7], &wrapped), Some(7));
    }

    #[test]
    fn an_unknowable_key_asks_for_the_chunk_again() {
        let rel = relation(60, &[("id", true), ("v", false)]);
        let mut w = open(60, &["id"]);
        w.observe(&change(
            &rel,
            Op::Update,
            None,
            Some(vec![Datum::UnchangedToast, t("1")]),
        ));
        assert!(w.must_reread());
        // When the old key is there, the change is known after all.
        let mut w = open(60, &["id"]);
        w.observe(&change(
            &rel,
            Op::Update,
            Some(vec![t("4"), Datum::Null]),
            Some(vec![Datum::UnchangedToast, t("1")]),
        ));
        assert!(!w.must_reread());
        let (kept, _) = w.survivors(vec![row(&["4", "a"]), row(&["5", "b"])], &[0]);
        assert_eq!(ids(&kept), ["5"]);
    }
}
