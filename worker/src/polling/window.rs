//! `lateness: <duration>`: which rows of the re-read window were delivered.
//!
//! Each poll re-reads the rows at or behind the position within the window
//! and emits those whose (cursor, key) it has not delivered: a row whose
//! transaction committed after newer rows were read. A row updated in place
//! gets a new cursor, so a new (cursor, key): it is delivered again, as it
//! should be.
//!
//! **Bounded memory.** After a poll the set holds exactly the rows that
//! poll's window read returned plus the rows it read forward: what the
//! window holds, never more. A row that left the window (or the table) is
//! forgotten with it.
//!
//! **After a restart** the set is empty. At least once, the first window read
//! emits every row in it again (repeats, never a loss). Exactly once, the
//! first window read only fills the set (no repeat; a late commit that
//! became visible while the worker was down and whose cursor is behind the
//! stored position is then not delivered: docs/polling.md).

use std::collections::HashSet;

use crate::offsets::PolledPosition;

/// The (cursor, key) pairs of one table delivered within its window.
#[derive(Debug, Default)]
pub struct Delivered {
    seen: HashSet<PolledPosition>,
    /// What this poll has read so far: the next `seen`.
    next: HashSet<PolledPosition>,
    /// The set was filled by a poll of this run (false after a restart).
    primed: bool,
}

/// What to do with a row of the window read.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered before: skip it.
    Seen,
    /// Not delivered: a late commit (or, after a restart at least once, a
    /// row delivered by the previous run), emit it.
    Late,
    /// After a restart, exactly once: take it as delivered.
    Primed,
}

impl Delivered {
    /// Judge a row of the window read, remembering it for the next poll.
    pub fn window_row(&mut self, at: PolledPosition, exactly_once: bool) -> Verdict {
        let verdict = if self.seen.contains(&at) {
            Verdict::Seen
        } else if !self.primed && exactly_once {
            Verdict::Primed
        } else {
            Verdict::Late
        };
        self.next.insert(at);
        verdict
    }

    /// A row read forward (always emitted).
    pub fn forward_row(&mut self, at: PolledPosition) {
        self.next.insert(at);
    }

    /// The poll is over: what it read is now the delivered set.
    pub fn poll_done(&mut self) {
        self.seen = std::mem::take(&mut self.next);
        self.primed = true;
    }

    /// The poll failed: keep what the last complete poll knew.
    pub fn poll_failed(&mut self) {
        self.next.clear();
    }

    /// Rows remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(cursor: &str, key: &str) -> PolledPosition {
        PolledPosition {
            cursor: cursor.into(),
            key: vec![Some(key.into())],
        }
    }

    #[test]
    fn a_late_row_is_emitted_once_and_the_set_holds_only_the_window() {
        let mut d = Delivered::default();
        // First poll of a fresh run (at least once): nothing in the window yet.
        d.forward_row(at("10:00:01", "1"));
        d.forward_row(at("10:00:03", "3"));
        d.poll_done();
        // A transaction that took 10:00:02 commits late.
        assert_eq!(d.window_row(at("10:00:01", "1"), false), Verdict::Seen);
        assert_eq!(d.window_row(at("10:00:02", "2"), false), Verdict::Late);
        assert_eq!(d.window_row(at("10:00:03", "3"), false), Verdict::Seen);
        d.poll_done();
        assert_eq!(d.window_row(at("10:00:02", "2"), false), Verdict::Seen);
        // 10:00:01 left the window: forgotten.
        assert_eq!(d.window_row(at("10:00:03", "3"), false), Verdict::Seen);
        d.poll_done();
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn after_a_restart_exactly_once_primes_and_at_least_once_repeats() {
        let mut eos = Delivered::default();
        assert_eq!(eos.window_row(at("1", "a"), true), Verdict::Primed);
        eos.poll_done();
        assert_eq!(eos.window_row(at("2", "b"), true), Verdict::Late);
        let mut alo = Delivered::default();
        assert_eq!(alo.window_row(at("1", "a"), false), Verdict::Late);
    }

    #[test]
    fn a_failed_poll_keeps_the_last_complete_set() {
        let mut d = Delivered::default();
        d.forward_row(at("1", "a"));
        d.poll_done();
        d.forward_row(at("2", "b"));
        d.poll_failed();
        assert_eq!(d.window_row(at("1", "a"), false), Verdict::Seen);
        assert_eq!(d.window_row(at("2", "b"), false), Verdict::Late);
    }
}
