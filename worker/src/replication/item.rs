//! What a streamed transaction buffers until its commit: its changes and
//! transactional messages, in memory or spilled to disk. Apart from the
//! assembler (which fills the buffer) and the spill files (which hold it
//! when it grows), so that neither depends on the other for its type.

use bytes::Bytes;

use crate::change::{Change, Datum, Lsn, Row};

/// A logical decoding message (`pg_logical_emit_message`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalMessage {
    /// LSN of the message record.
    pub lsn: Lsn,
    /// The emitting transaction (top-level); 0 when not transactional.
    pub xid: u32,
    pub transactional: bool,
    pub prefix: String,
    pub content: Bytes,
}

/// A buffered item of a streamed transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// Commit LSN and time are filled in at replay.
    Change(Change),
    Message(LogicalMessage),
}

/// Approximate memory held by a buffered item.
pub fn item_size(item: &Item) -> usize {
    const DATUM: usize = std::mem::size_of::<Datum>();
    let row = |row: &Option<Row>| {
        row.as_ref().map_or(0, |row| {
            row.iter()
                .map(|d| match d {
                    Datum::Text(b) | Datum::Binary(b) => DATUM + b.len(),
                    Datum::Null | Datum::UnchangedToast => DATUM,
                })
                .sum()
        })
    };
    match item {
        Item::Change(c) => std::mem::size_of::<Item>() + row(&c.old) + row(&c.new),
        Item::Message(m) => std::mem::size_of::<Item>() + m.prefix.len() + m.content.len(),
    }
}
