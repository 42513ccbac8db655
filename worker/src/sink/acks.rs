//! Which position is safe to confirm.
//!
//! ```text
//!  marks (one per source transaction, in commit order)
//!  ┌────────┬────────┬────────┬────────┐
//!  │ lsn 10 │ lsn 20 │ lsn 30 │ open   │   remaining = records not yet acked
//!  │ rem 0  │ rem 0  │ rem 2  │ rem 5  │
//!  └────────┴────────┴────────┴────────┘
//!   confirmable = 20: every record of every mark up to it was acked
//! ```
//!
//! Kafka acknowledges records out of order across partitions, so a position is
//! confirmable only when all records of its mark *and of every mark before it*
//! are acknowledged. That is the whole at-least-once invariant: PostgreSQL is
//! told "flushed up to L" only after Kafka holds everything before L.

use std::collections::VecDeque;

/// Identifies a mark; passed to librdkafka as each record's delivery opaque.
pub type MarkId = usize;

#[derive(Debug)]
struct Mark<P> {
    remaining: u64,
    /// Set when the mark is closed (its transaction fully produced).
    position: Option<P>,
}

/// Tracks outstanding records per mark and yields confirmable positions.
#[derive(Debug)]
pub struct AckTracker<P> {
    /// Id of `marks[0]`.
    base: MarkId,
    marks: VecDeque<Mark<P>>,
    confirmable: Option<P>,
    in_flight: u64,
}

impl<P: Clone> Default for AckTracker<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Clone> AckTracker<P> {
    pub fn new() -> Self {
        Self {
            base: 0,
            marks: VecDeque::new(),
            confirmable: None,
            in_flight: 0,
        }
    }

    /// The open mark that new records belong to (opened on demand).
    pub fn current(&mut self) -> MarkId {
        match self.marks.back() {
            Some(m) if m.position.is_none() => self.base + self.marks.len() - 1,
            _ => {
                self.marks.push_back(Mark {
                    remaining: 0,
                    position: None,
                });
                self.base + self.marks.len() - 1
            }
        }
    }

    /// A record of the current mark was handed to the producer.
    pub fn sent(&mut self) -> MarkId {
        let id = self.current();
        let idx = id - self.base;
        if let Some(m) = self.marks.get_mut(idx) {
            m.remaining += 1;
        }
        self.in_flight += 1;
        id
    }

    /// Close the current mark at `position` (a transaction's end). A mark
    /// without records becomes confirmable as soon as those before it are.
    pub fn close(&mut self, position: P) {
        let id = self.current();
        if let Some(m) = self.marks.get_mut(id - self.base) {
            m.position = Some(position);
        }
        self.advance();
    }

    /// Kafka acknowledged one record of mark `id`. Returns whether the
    /// confirmable position moved.
    pub fn acked(&mut self, id: MarkId) -> bool {
        if id < self.base {
            return false;
        }
        if let Some(m) = self.marks.get_mut(id - self.base) {
            m.remaining = m.remaining.saturating_sub(1);
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        self.advance()
    }

    /// Pop the complete marks at the front; whether any was popped.
    fn advance(&mut self) -> bool {
        let mut moved = false;
        while let Some(front) = self.marks.front() {
            if front.remaining != 0 || front.position.is_none() {
                break;
            }
            if let Some(m) = self.marks.pop_front() {
                self.confirmable = m.position;
                moved = true;
            }
            self.base += 1;
        }
        moved
    }

    /// The newest position whose records (and all before) are acknowledged.
    pub fn confirmable(&self) -> Option<&P> {
        self.confirmable.as_ref()
    }

    /// Records handed to the producer and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Forget everything (after a failure, before restarting from the last
    /// confirmed position).
    pub fn reset(&mut self) {
        self.base += self.marks.len();
        self.marks.clear();
        self.in_flight = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_acks_confirm_only_a_complete_prefix() {
        let mut t = AckTracker::new();
        let a = t.sent();
        let a2 = t.sent();
        t.close(10);
        let b = t.sent();
        t.close(20);
        let c = t.sent();
        t.close(30);
        assert_eq!(t.confirmable(), None);
        assert!(!t.acked(b));
        assert!(!t.acked(c));
        assert_eq!(t.confirmable(), None, "mark 10 still has records in flight");
        assert!(!t.acked(a));
        assert_eq!(t.confirmable(), None);
        assert!(
            t.acked(a2),
            "the last record of the first mark moves the position"
        );
        assert_eq!(t.confirmable(), Some(&30));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn empty_marks_follow_their_predecessors() {
        let mut t = AckTracker::new();
        t.close(5);
        assert_eq!(t.confirmable(), Some(&5));
        let x = t.sent();
        t.close(6);
        t.close(7);
        assert_eq!(t.confirmable(), Some(&5));
        t.acked(x);
        assert_eq!(t.confirmable(), Some(&7));
    }

    #[test]
    fn an_open_mark_is_never_confirmed() {
        let mut t = AckTracker::<u64>::new();
        let x = t.sent();
        t.acked(x);
        assert_eq!(t.confirmable(), None);
    }

    #[test]
    fn acks_after_reset_are_ignored() {
        let mut t = AckTracker::new();
        let x = t.sent();
        t.close(1);
        t.reset();
        t.acked(x);
        assert_eq!(t.confirmable(), None);
        let y = t.sent();
        t.close(2);
        t.acked(y);
        assert_eq!(t.confirmable(), Some(&2));
    }
}
