//! The worker's internal vocabulary: a decoded change, independent of where it
//! came from (logical replication, backfill, polling) and of how it is encoded
//! for Kafka (`crate::record`).
//!
//! Column values stay in PostgreSQL's text form (`Datum::Text`) until the
//! record encoder turns them into JSON: decoding is cheap and the encoder knows
//! the type from the relation.

use std::sync::Arc;

use bytes::Bytes;

/// A PostgreSQL log sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid LSN {s:?}: expected X/Y"))?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| format!("invalid LSN {s:?}"))?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| format!("invalid LSN {s:?}"))?;
        Ok(Lsn((hi << 32) | lo))
    }
}

/// One column of a relation, as the Relation message describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// Type OID (`pg_type.oid`).
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
    /// Part of the replica identity (the key).
    pub is_key: bool,
}

/// A table as last described by the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

/// One column value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value the UPDATE did not change and the server did not send.
    UnchangedToast,
    /// The value in PostgreSQL's text output form.
    Text(Bytes),
    /// The value in PostgreSQL's binary send form. Only pgoutput's `binary`
    /// mode produces it, and Siphon does not turn that mode on: a decoder
    /// keeps the bytes rather than failing, an encoder may refuse them.
    Binary(Bytes),
}

/// Values of one row, in the relation's column order.
pub type Row = Vec<Datum>;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// A row read by a backfill (`op: r`).
    Read,
}

/// A change to one row (or a truncate of one table).
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub op: Op,
    pub relation: Arc<Relation>,
    /// Old values: the key only (identity `d`/`i`), the whole row (identity
    /// `f`), or none.
    pub old: Option<Row>,
    /// New values (insert, update, read).
    pub new: Option<Row>,
    /// LSN of the change's commit (its position for confirmation).
    pub commit_lsn: Lsn,
    /// LSN of the change itself.
    pub lsn: Lsn,
    /// The end (`end_lsn`) of the transaction this capture received just
    /// before the change's own: the first element of `source.sequence`, which
    /// Debezium calls `lastCommitLsn`. For the first transaction since the
    /// worker started, where the server began sending it (as Debezium
    /// does); 0 for backfill reads and polled rows.
    pub last_commit_end: Lsn,
    /// Transaction id (0 for backfill reads).
    pub xid: u32,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_ts_us: i64,
    /// Set for backfill reads: `true`, `last` or `false` as Debezium writes it.
    pub snapshot: Option<&'static str>,
}

impl Change {
    /// Read by polling: no WAL position, no transaction id (and not a
    /// backfill read).
    pub fn is_polled(&self) -> bool {
        self.commit_lsn.0 == 0 && self.xid == 0 && self.snapshot.is_none()
    }
}
