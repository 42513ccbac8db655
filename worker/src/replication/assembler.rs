//! Turns the decoded pgoutput message stream into ordered, whole
//! transactions of [`Change`]s.
//!
//! ```text
//! pgoutput::Message ──► Assembler ──► TxEvent: Begin, Change…/Message…, Commit
//!   plain txn:     emitted as they come (Begin carries the commit LSN)
//!   streamed txn:  buffered per top-level xid (memory, then spill file)
//!                  ├─ Stream Commit: replayed whole, in order
//!                  └─ Stream Abort:  dropped (a subtransaction: its part only)
//! ```
//!
//! Invariants:
//! - Every transaction reaches the caller as `Begin`, its items in WAL order,
//!   `Commit`, never interleaved with another one; an aborted (sub)transaction
//!   reaches it not at all. Only `Commit::end_lsn` of a transaction whose
//!   items are all durable downstream may be confirmed to the server.
//! - Changes carry the relation as described when they were decoded: a
//!   Relation message updates the cache for what follows (inside a stream
//!   block, only for that transaction, until it commits, as pgoutput assumes).
//! - Buffered streamed transactions hold at most `max_memory` bytes (as
//!   estimated by [`item_size`]); past it the largest one moves to its spill
//!   file and later items of it go straight there.
//! - One assembler per replication connection: on reconnect the server sends
//!   Relation messages and in-progress transactions again from the start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use super::item::{Item, LogicalMessage, item_size};
use super::pgoutput::{Message, OldTuple};
use super::spill::{SpillError, SpillReader, SpillWriter, clear_spill_dir, spill_path};
use crate::change::{Change, Lsn, Op, Relation, Row};

/// What the assembler hands on, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum TxEvent {
    Begin {
        xid: u32,
        /// LSN of the commit record (equals `Commit::commit_lsn`).
        final_lsn: Lsn,
        commit_ts_us: i64,
    },
    Change(Change),
    /// A transactional message (between Begin and Commit) or a
    /// non-transactional one (alone).
    Message(LogicalMessage),
    Commit {
        xid: u32,
        commit_lsn: Lsn,
        /// End of the commit record: the position to confirm once every item
        /// of the transaction is durable.
        end_lsn: Lsn,
        commit_ts_us: i64,
    },
}

/// A message stream the assembler cannot make sense of.
#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    #[error(
        "relation {oid} used before its Relation message (protocol error: reconnect, and report it if it repeats)"
    )]
    UnknownRelation { oid: u32 },
    #[error("{op} on {schema}.{table} has {got} columns, its Relation message {expected}")]
    ColumnCount {
        op: &'static str,
        schema: String,
        table: String,
        expected: usize,
        got: usize,
    },
    #[error(
        "pgoutput {message} message {state} (protocol error: reconnect, and report it if it repeats)"
    )]
    OutOfPlace {
        message: &'static str,
        state: &'static str,
    },
    #[error("commit of xid {xid} at {commit_lsn} does not match its begin (final lsn {final_lsn})")]
    CommitMismatch {
        xid: u32,
        final_lsn: Lsn,
        commit_lsn: Lsn,
    },
    #[error(transparent)]
    Spill(#[from] SpillError),
}

/// Limits of the streamed-transaction buffer.
#[derive(Clone, Debug)]
pub struct AssemblerConfig {
    /// Bytes of buffered streamed transactions kept in memory.
    pub max_memory: usize,
    /// Where spill files go; one directory per capture (cleared at start).
    pub spill_dir: PathBuf,
    /// Record key columns per `(schema, table)`, overriding the replica
    /// identity flags of Relation messages (needed for REPLICA IDENTITY FULL).
    pub key_columns: HashMap<(String, String), Vec<String>>,
}

/// The open plain (non-streamed) transaction.
#[derive(Debug)]
struct Current {
    xid: u32,
    final_lsn: Lsn,
    commit_ts_us: i64,
    /// The end of the transaction committed before this one, or where this
    /// one's Begin was sent from when none was since the start.
    last_commit_end: Lsn,
}

/// A streamed transaction being buffered.
#[derive(Debug, Default)]
struct Streamed {
    items: Vec<Item>,
    /// In-memory bytes of `items`.
    memory: usize,
    /// Once spilled, every item goes to the file.
    spill: Option<SpillWriter>,
    /// Subtransactions in order of their first item, with the position of
    /// that item (index in `items`, or file offset once spilled).
    subxacts: Vec<(u32, u64)>,
    /// Relations described inside this transaction's stream blocks.
    relations: HashMap<u32, Arc<Relation>>,
    /// Where its first stream block was sent from.
    first_lsn: Lsn,
}

impl Streamed {
    fn position(&self) -> u64 {
        match &self.spill {
            Some(w) => w.position(),
            None => self.items.len() as u64,
        }
    }
}

/// A committed streamed transaction's events, read from memory or its spill
/// file. Consume it whole before handing the assembler the next message.
#[derive(Debug)]
pub struct Replay {
    begin: Option<TxEvent>,
    source: ReplaySource,
    commit: Option<TxEvent>,
    commit_lsn: Lsn,
    commit_ts_us: i64,
    last_commit_end: Lsn,
}

#[derive(Debug)]
enum ReplaySource {
    Memory(std::vec::IntoIter<Item>),
    File(SpillReader),
}

impl Iterator for Replay {
    type Item = Result<TxEvent, AssemblyError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(begin) = self.begin.take() {
            return Some(Ok(begin));
        }
        let item = match &mut self.source {
            ReplaySource::Memory(items) => items.next(),
            ReplaySource::File(reader) => match reader.next_item() {
                Ok(item) => item,
                Err(e) => {
                    self.commit = None;
                    return Some(Err(e.into()));
                }
            },
        };
        match item {
            Some(Item::Change(mut change)) => {
                change.commit_lsn = self.commit_lsn;
                change.commit_ts_us = self.commit_ts_us;
                change.last_commit_end = self.last_commit_end;
                Some(Ok(TxEvent::Change(change)))
            }
            Some(Item::Message(message)) => Some(Ok(TxEvent::Message(message))),
            None => self.commit.take().map(Ok),
        }
    }
}

/// The events one message produced. Iterate it (items are `Result` because a
/// replay may read a spill file).
#[derive(Debug)]
pub enum Emit {
    None,
    One(Option<TxEvent>),
    Many(std::vec::IntoIter<TxEvent>),
    Replay(Box<Replay>),
}

impl Iterator for Emit {
    type Item = Result<TxEvent, AssemblyError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Emit::None => None,
            Emit::One(event) => event.take().map(Ok),
            Emit::Many(events) => events.next().map(Ok),
            Emit::Replay(replay) => replay.next(),
        }
    }
}

impl Emit {
    fn one(event: TxEvent) -> Self {
        Emit::One(Some(event))
    }
}

/// The name, in the catalog, of a type a Type message described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeName {
    pub schema: String,
    pub name: String,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Assembler {
    config: AssemblerConfig,
    relations: HashMap<u32, Arc<Relation>>,
    types: HashMap<u32, TypeName>,
    current: Option<Current>,
    /// Top-level xid of the open stream block.
    stream_block: Option<u32>,
    streamed: HashMap<u32, Streamed>,
    /// In-memory bytes of all streamed transactions.
    memory: usize,
    /// Streamed transactions moved to a spill file so far.
    spills: u64,
    /// The end of the last transaction committed (see
    /// [`Change::last_commit_end`]); `None` until one was.
    last_commit_end: Option<Lsn>,
}

impl Assembler {
    /// Creates an assembler; removes spill files a previous run left behind.
    pub fn new(config: AssemblerConfig) -> Result<Self, AssemblyError> {
        let removed = clear_spill_dir(&config.spill_dir)?;
        if removed > 0 {
            tracing::info!(
                dir = %config.spill_dir.display(),
                files = removed,
                "removed spill files of a previous run"
            );
        }
        Ok(Self {
            config,
            relations: HashMap::new(),
            types: HashMap::new(),
            current: None,
            stream_block: None,
            streamed: HashMap::new(),
            memory: 0,
            spills: 0,
            last_commit_end: None,
        })
    }

    /// The relation as last described outside stream blocks.
    pub fn relation(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&oid)
    }

    /// A type described by a Type message (non-builtin types only).
    pub fn type_name(&self, oid: u32) -> Option<&TypeName> {
        self.types.get(&oid)
    }

    /// Bytes of streamed transactions buffered in memory.
    pub fn buffered_memory(&self) -> usize {
        self.memory
    }

    /// Streamed transactions moved to a spill file since the start.
    pub fn spill_count(&self) -> u64 {
        self.spills
    }

    /// Streamed transactions in progress.
    pub fn streamed_transactions(&self) -> usize {
        self.streamed.len()
    }

    /// Feeds one message; `wal_start` is the LSN of the XLogData that carried
    /// it (for a change, the change's own LSN).
    pub fn handle(&mut self, wal_start: Lsn, message: Message) -> Result<Emit, AssemblyError> {
        match message {
            Message::Begin {
                final_lsn,
                commit_ts_us,
                xid,
            } => {
                if self.current.is_some() {
                    return Err(out_of_place("begin", "inside a transaction"));
                }
                if self.stream_block.is_some() {
                    return Err(out_of_place("begin", "inside a stream block"));
                }
                self.current = Some(Current {
                    xid,
                    final_lsn,
                    commit_ts_us,
                    last_commit_end: self.last_commit_end.unwrap_or(wal_start),
                });
                Ok(Emit::one(TxEvent::Begin {
                    xid,
                    final_lsn,
                    commit_ts_us,
                }))
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                commit_ts_us,
                ..
            } => {
                let current = self
                    .current
                    .take()
                    .ok_or(out_of_place("commit", "outside a transaction"))?;
                self.last_commit_end = Some(end_lsn);
                if current.final_lsn != commit_lsn {
                    return Err(AssemblyError::CommitMismatch {
                        xid: current.xid,
                        final_lsn: current.final_lsn,
                        commit_lsn,
                    });
                }
                Ok(Emit::one(TxEvent::Commit {
                    xid: current.xid,
                    commit_lsn,
                    end_lsn,
                    commit_ts_us,
                }))
            }
            Message::Origin { .. } => Ok(Emit::None),
            Message::Relation { mut relation, .. } => {
                // Under REPLICA IDENTITY FULL pgoutput flags every column as
                // part of the identity; the record key must stay the primary
                // key (or the configured key columns).
                if let Some(keys) = self
                    .config
                    .key_columns
                    .get(&(relation.schema.clone(), relation.name.clone()))
                {
                    for column in &mut relation.columns {
                        column.is_key = keys.iter().any(|k| k == &column.name);
                    }
                }
                let relation = Arc::new(relation);
                match self.stream_block {
                    Some(top) => {
                        let tx = self.streamed.entry(top).or_default();
                        tx.relations.insert(relation.oid, relation);
                    }
                    None => {
                        self.relations.insert(relation.oid, relation);
                    }
                }
                Ok(Emit::None)
            }
            Message::Type {
                oid, schema, name, ..
            } => {
                self.types.insert(oid, TypeName { schema, name });
                Ok(Emit::None)
            }
            Message::Insert {
                xid,
                relation_id,
                new,
            } => {
                let relation = self.resolve(relation_id)?;
                check_columns("insert", &relation, &new)?;
                self.change(
                    wal_start,
                    xid,
                    "insert",
                    Op::Insert,
                    relation,
                    None,
                    Some(new),
                )
            }
            Message::Update {
                xid,
                relation_id,
                old,
                new,
            } => {
                let relation = self.resolve(relation_id)?;
                check_columns("update", &relation, &new)?;
                let old = old.map(OldTuple::into_row);
                if let Some(old) = &old {
                    check_columns("update", &relation, old)?;
                }
                self.change(
                    wal_start,
                    xid,
                    "update",
                    Op::Update,
                    relation,
                    old,
                    Some(new),
                )
            }
            Message::Delete {
                xid,
                relation_id,
                old,
            } => {
                let relation = self.resolve(relation_id)?;
                let old = old.into_row();
                check_columns("delete", &relation, &old)?;
                self.change(
                    wal_start,
                    xid,
                    "delete",
                    Op::Delete,
                    relation,
                    Some(old),
                    None,
                )
            }
            Message::Truncate {
                xid, relation_ids, ..
            } => {
                let mut events = Vec::with_capacity(relation_ids.len());
                for oid in relation_ids {
                    let relation = self.resolve(oid)?;
                    let emitted = self.change(
                        wal_start,
                        xid,
                        "truncate",
                        Op::Truncate,
                        relation,
                        None,
                        None,
                    )?;
                    for event in emitted {
                        events.push(event?);
                    }
                }
                Ok(Emit::Many(events.into_iter()))
            }
            Message::Message {
                xid,
                transactional,
                lsn,
                prefix,
                content,
            } => {
                let mut message = LogicalMessage {
                    lsn,
                    xid: 0,
                    transactional,
                    prefix,
                    content,
                };
                if !transactional {
                    return Ok(Emit::one(TxEvent::Message(message)));
                }
                if let Some(top) = self.stream_block {
                    message.xid = top;
                    self.buffer(top, xid.unwrap_or(top), Item::Message(message))?;
                    return Ok(Emit::None);
                }
                let current = self
                    .current
                    .as_ref()
                    .ok_or(out_of_place("message", "outside a transaction"))?;
                message.xid = current.xid;
                Ok(Emit::one(TxEvent::Message(message)))
            }
            Message::StreamStart { xid, .. } => {
                if self.current.is_some() {
                    return Err(out_of_place("stream start", "inside a transaction"));
                }
                if self.stream_block.replace(xid).is_some() {
                    return Err(out_of_place("stream start", "inside a stream block"));
                }
                self.streamed.entry(xid).or_insert_with(|| Streamed {
                    first_lsn: wal_start,
                    ..Streamed::default()
                });
                Ok(Emit::None)
            }
            Message::StreamStop => {
                if self.stream_block.take().is_none() {
                    return Err(out_of_place("stream stop", "outside a stream block"));
                }
                Ok(Emit::None)
            }
            Message::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                commit_ts_us,
                ..
            } => {
                if self.stream_block.is_some() || self.current.is_some() {
                    return Err(out_of_place("stream commit", "inside a transaction"));
                }
                let tx = self.streamed.remove(&xid).unwrap_or_default();
                self.memory = self.memory.saturating_sub(tx.memory);
                for (oid, relation) in tx.relations {
                    self.relations.insert(oid, relation);
                }
                let source = match tx.spill {
                    Some(writer) => ReplaySource::File(writer.into_reader()?),
                    None => ReplaySource::Memory(tx.items.into_iter()),
                };
                Ok(Emit::Replay(Box::new(Replay {
                    begin: Some(TxEvent::Begin {
                        xid,
                        final_lsn: commit_lsn,
                        commit_ts_us,
                    }),
                    source,
                    commit: Some(TxEvent::Commit {
                        xid,
                        commit_lsn,
                        end_lsn,
                        commit_ts_us,
                    }),
                    commit_lsn,
                    commit_ts_us,
                    last_commit_end: self
                        .last_commit_end
                        .replace(end_lsn)
                        .unwrap_or(tx.first_lsn),
                })))
            }
            Message::StreamAbort { xid, subxid, .. } => {
                if self.stream_block.is_some() || self.current.is_some() {
                    return Err(out_of_place("stream abort", "inside a transaction"));
                }
                if xid == subxid {
                    if let Some(tx) = self.streamed.remove(&xid) {
                        // Dropping the spill writer removes its file.
                        self.memory = self.memory.saturating_sub(tx.memory);
                    }
                    return Ok(Emit::None);
                }
                let Some(tx) = self.streamed.get_mut(&xid) else {
                    return Ok(Emit::None);
                };
                // Like the apply worker: everything from the subtransaction's
                // first item on belongs to it or to its own subtransactions.
                let Some(index) = tx.subxacts.iter().position(|(s, _)| *s == subxid) else {
                    return Ok(Emit::None);
                };
                let position = tx.subxacts.get(index).map_or(0, |(_, p)| *p);
                tx.subxacts.truncate(index);
                match &mut tx.spill {
                    Some(writer) => writer.truncate(position)?,
                    None => {
                        let keep = usize::try_from(position).unwrap_or(usize::MAX);
                        let dropped: usize = tx
                            .items
                            .get(keep..)
                            .unwrap_or_default()
                            .iter()
                            .map(item_size)
                            .sum();
                        tx.items.truncate(keep);
                        tx.memory = tx.memory.saturating_sub(dropped);
                        self.memory = self.memory.saturating_sub(dropped);
                    }
                }
                Ok(Emit::None)
            }
        }
    }

    /// The relation for a change: this stream's own description first.
    fn resolve(&self, oid: u32) -> Result<Arc<Relation>, AssemblyError> {
        self.stream_block
            .and_then(|top| self.streamed.get(&top))
            .and_then(|tx| tx.relations.get(&oid))
            .or_else(|| self.relations.get(&oid))
            .cloned()
            .ok_or(AssemblyError::UnknownRelation { oid })
    }

    #[allow(clippy::too_many_arguments)]
    fn change(
        &mut self,
        wal_start: Lsn,
        xid: Option<u32>,
        what: &'static str,
        op: Op,
        relation: Arc<Relation>,
        old: Option<Row>,
        new: Option<Row>,
    ) -> Result<Emit, AssemblyError> {
        if let Some(top) = self.stream_block {
            let change = Change {
                op,
                relation,
                old,
                new,
                commit_lsn: Lsn(0),
                lsn: wal_start,
                last_commit_end: Lsn(0),
                xid: top,
                commit_ts_us: 0,
                snapshot: None,
            };
            self.buffer(top, xid.unwrap_or(top), Item::Change(change))?;
            return Ok(Emit::None);
        }
        let current = self
            .current
            .as_ref()
            .ok_or(out_of_place(what, "outside a transaction"))?;
        Ok(Emit::one(TxEvent::Change(Change {
            op,
            relation,
            old,
            new,
            commit_lsn: current.final_lsn,
            lsn: wal_start,
            last_commit_end: current.last_commit_end,
            xid: current.xid,
            commit_ts_us: current.commit_ts_us,
            snapshot: None,
        })))
    }

    /// Buffers an item of streamed transaction `top`, made by (sub)transaction
    /// `subxid`, then enforces the memory bound.
    fn buffer(&mut self, top: u32, subxid: u32, item: Item) -> Result<(), AssemblyError> {
        let tx = self.streamed.entry(top).or_default();
        if subxid != top && !tx.subxacts.iter().any(|(s, _)| *s == subxid) {
            let position = tx.position();
            tx.subxacts.push((subxid, position));
        }
        match &mut tx.spill {
            Some(writer) => writer.append(&item)?,
            None => {
                let size = item_size(&item);
                tx.items.push(item);
                tx.memory = tx.memory.saturating_add(size);
                self.memory = self.memory.saturating_add(size);
            }
        }
        while self.memory > self.config.max_memory {
            let Some((&xid, _)) = self
                .streamed
                .iter()
                .filter(|(_, tx)| tx.spill.is_none() && tx.memory > 0)
                .max_by_key(|(_, tx)| tx.memory)
            else {
                break;
            };
            self.spill(xid)?;
        }
        Ok(())
    }

    /// Moves streamed transaction `xid`'s buffered items to its spill file.
    fn spill(&mut self, xid: u32) -> Result<(), AssemblyError> {
        let Some(tx) = self.streamed.get_mut(&xid) else {
            return Ok(());
        };
        let path = spill_path(&self.config.spill_dir, xid);
        let mut writer = SpillWriter::create(path)?;
        let mut subxacts = tx.subxacts.iter_mut().peekable();
        for (index, item) in tx.items.iter().enumerate() {
            // Subtransaction positions become file offsets.
            while let Some((_, position)) = subxacts.next_if(|(_, p)| *p == index as u64) {
                *position = writer.position();
            }
            writer.append(item)?;
        }
        for (_, position) in subxacts {
            *position = writer.position();
        }
        tracing::debug!(
            xid,
            items = tx.items.len(),
            bytes = tx.memory,
            path = %writer.path().display(),
            "spilled streamed transaction"
        );
        self.memory = self.memory.saturating_sub(tx.memory);
        tx.memory = 0;
        tx.items = Vec::new();
        tx.spill = Some(writer);
        self.spills += 1;
        Ok(())
    }
}

fn out_of_place(message: &'static str, state: &'static str) -> AssemblyError {
    AssemblyError::OutOfPlace { message, state }
}

fn check_columns(op: &'static str, relation: &Relation, row: &Row) -> Result<(), AssemblyError> {
    if row.len() != relation.columns.len() {
        return Err(AssemblyError::ColumnCount {
            op,
            schema: relation.schema.clone(),
            table: relation.name.clone(),
            expected: relation.columns.len(),
            got: row.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::pgoutput::fixtures::{self as f, V, text};
    use super::super::pgoutput::{Decoder, PG_EPOCH_OFFSET_US};
    use super::*;
    use crate::change::Datum;
    use bytes::Bytes;

    struct Harness {
        decoder: Decoder,
        asm: Assembler,
        lsn: u64,
        _dir: TempDir,
    }

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "siphon-asm-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            Self(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl Harness {
        fn new(max_memory: usize) -> Self {
            let dir = TempDir::new("t");
            let asm = Assembler::new(AssemblerConfig {
                max_memory,
                spill_dir: dir.0.clone(),
                key_columns: Default::default(),
            })
            .expect("assembler");
            Self {
                decoder: Decoder::new(),
                asm,
                lsn: 0x1000,
                _dir: dir,
            }
        }

        fn feed(&mut self, data: Bytes) -> Vec<TxEvent> {
            self.lsn += 0x10;
            let message = self.decoder.decode(&data).expect("decodes");
            self.asm
                .handle(Lsn(self.lsn), message)
                .expect("assembles")
                .collect::<Result<Vec<_>, _>>()
                .expect("replays")
        }

        fn feed_all(&mut self, messages: Vec<Bytes>) -> Vec<TxEvent> {
            messages.into_iter().flat_map(|m| self.feed(m)).collect()
        }

        fn spill_files(&self) -> usize {
            std::fs::read_dir(&self.asm.config.spill_dir).map_or(0, |d| d.count())
        }
    }

    fn rel(x: Option<u32>, oid: u32) -> Bytes {
        f::relation(
            x,
            oid,
            "public",
            &format!("t{oid}"),
            b'd',
            &[(true, "id", 23), (false, "v", 25)],
        )
    }

    /// (op, xid, commit lsn, relation oid, new values as text) of each change.
    fn summary(events: &[TxEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                TxEvent::Begin { xid, final_lsn, .. } => format!("begin {xid} {final_lsn}"),
                TxEvent::Commit { xid, end_lsn, .. } => format!("commit {xid} {end_lsn}"),
                TxEvent::Message(m) => format!("message {} {}", m.xid, m.prefix),
                TxEvent::Change(c) => {
                    let values = |row: &Option<Row>| {
                        row.as_ref().map_or("-".to_owned(), |r| {
                            r.iter()
                                .map(|d| match d {
                                    Datum::Text(b) => String::from_utf8_lossy(b).into_owned(),
                                    Datum::Null => "null".into(),
                                    Datum::UnchangedToast => "toast".into(),
                                    Datum::Binary(_) => "bin".into(),
                                })
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                    };
                    format!(
                        "{:?} {} {} t{} {} {}",
                        c.op,
                        c.xid,
                        c.commit_lsn,
                        c.relation.oid,
                        values(&c.old),
                        values(&c.new)
                    )
                }
            })
            .collect()
    }

    #[test]
    fn plain_transaction_is_emitted_as_it_comes() {
        let mut h = Harness::new(1 << 20);
        assert!(h.feed(rel(None, 1)).is_empty());
        let mut events = h.feed(f::begin(0x5000, 0, 10));
        events.extend(h.feed(f::insert(None, 1, &[V::T("1"), V::T("a")])));
        events.extend(h.feed(f::update(
            None,
            1,
            Some((b'K', &[V::T("1"), V::N])),
            &[V::T("2"), V::U],
        )));
        events.extend(h.feed(f::delete(None, 1, b'K', &[V::T("2"), V::N])));
        events.extend(h.feed(f::message(None, true, 0x4000, "wm", b"x")));
        events.extend(h.feed(f::commit(0x5000, 0x5028, 7)));
        assert_eq!(
            summary(&events),
            [
                "begin 10 0/5000",
                "Insert 10 0/5000 t1 - 1,a",
                "Update 10 0/5000 t1 1,null 2,toast",
                "Delete 10 0/5000 t1 2,null -",
                "message 10 wm",
                "commit 10 0/5028",
            ]
        );
        let TxEvent::Change(insert) = &events[1] else {
            panic!("not a change");
        };
        assert_eq!(insert.lsn, Lsn(0x1030));
        assert_eq!(insert.commit_ts_us, PG_EPOCH_OFFSET_US);
        assert_eq!(insert.relation.name, "t1");
    }

    /// `source.sequence` starts with the end of the transaction emitted
    /// before (each commit's `end_lsn`, in the order transactions are
    /// emitted, a streamed one at its commit); for the first one since the
    /// start, where its Begin was sent from.
    #[test]
    fn each_change_knows_the_end_of_the_previous_transaction() {
        let mut h = Harness::new(1 << 20);
        h.feed(rel(None, 1));
        let ends = |events: &[TxEvent]| -> Vec<Lsn> {
            events
                .iter()
                .filter_map(|e| match e {
                    TxEvent::Change(c) => Some(c.last_commit_end),
                    _ => None,
                })
                .collect()
        };
        let first = h.feed_all(vec![
            f::begin(0x100, 0, 3),
            f::insert(None, 1, &[V::T("1"), V::T("a")]),
            f::insert(None, 1, &[V::T("2"), V::T("b")]),
            f::commit(0x100, 0x128, 0),
        ]);
        // The harness gives the Begin message LSN 0x1020.
        assert_eq!(ends(&first), [Lsn(0x1020), Lsn(0x1020)]);
        let mut streamed = h.feed_all(vec![
            f::stream_start(4, true),
            f::insert(Some(4), 1, &[V::T("3"), V::T("c")]),
            f::stream_stop(),
        ]);
        let plain = h.feed_all(vec![
            f::begin(0x200, 0, 5),
            f::insert(None, 1, &[V::T("4"), V::T("d")]),
            f::commit(0x200, 0x228, 0),
        ]);
        assert_eq!(ends(&plain), [Lsn(0x128)]);
        streamed.extend(h.feed(f::stream_commit(4, 0x300, 0x328, 0)));
        assert_eq!(ends(&streamed), [Lsn(0x228)]);
        let next = h.feed_all(vec![
            f::begin(0x400, 0, 6),
            f::insert(None, 1, &[V::T("5"), V::T("e")]),
            f::commit(0x400, 0x428, 0),
        ]);
        assert_eq!(ends(&next), [Lsn(0x328)]);
    }

    #[test]
    fn truncate_of_several_relations_gives_one_change_each() {
        let mut h = Harness::new(1 << 20);
        h.feed(rel(None, 1));
        h.feed(rel(None, 2));
        let events = h.feed_all(vec![
            f::begin(0x10, 0, 3),
            f::truncate(None, 1, &[1, 2]),
            f::commit(0x10, 0x20, 0),
        ]);
        assert_eq!(
            summary(&events),
            [
                "begin 3 0/10",
                "Truncate 3 0/10 t1 - -",
                "Truncate 3 0/10 t2 - -",
                "commit 3 0/20"
            ]
        );
    }

    #[test]
    fn relation_change_applies_to_later_changes_only() {
        let mut h = Harness::new(1 << 20);
        h.feed(rel(None, 1));
        let mut events = h.feed_all(vec![
            f::begin(0x10, 0, 3),
            f::insert(None, 1, &[V::T("1"), V::T("a")]),
        ]);
        h.feed(f::relation(
            None,
            1,
            "public",
            "t1",
            b'f',
            &[(true, "id", 23), (false, "v", 25), (false, "w", 25)],
        ));
        events.extend(h.feed(f::insert(None, 1, &[V::T("2"), V::T("b"), V::T("c")])));
        let (TxEvent::Change(a), TxEvent::Change(b)) = (&events[1], &events[2]) else {
            panic!("not changes");
        };
        assert_eq!(a.relation.columns.len(), 2);
        assert_eq!(b.relation.columns.len(), 3);
        assert_eq!(b.relation.replica_identity, b'f');
    }

    #[test]
    fn protocol_errors_are_reported() {
        let mut h = Harness::new(1 << 20);
        let insert = h
            .decoder
            .decode(&f::insert(None, 9, &[V::T("1")]))
            .expect("decodes");
        assert!(matches!(
            h.asm.handle(Lsn(1), insert),
            Err(AssemblyError::UnknownRelation { oid: 9 })
        ));
        h.feed(rel(None, 1));
        let insert = h
            .decoder
            .decode(&f::insert(None, 1, &[V::T("1"), V::N]))
            .expect("decodes");
        assert!(matches!(
            h.asm.handle(Lsn(1), insert),
            Err(AssemblyError::OutOfPlace { .. })
        ));
        h.feed(f::begin(0x10, 0, 3));
        let short = h
            .decoder
            .decode(&f::insert(None, 1, &[V::T("1")]))
            .expect("decodes");
        assert!(matches!(
            h.asm.handle(Lsn(1), short),
            Err(AssemblyError::ColumnCount {
                expected: 2,
                got: 1,
                ..
            })
        ));
        let commit = h
            .decoder
            .decode(&f::commit(0x11, 0x20, 0))
            .expect("decodes");
        assert!(matches!(
            h.asm.handle(Lsn(1), commit),
            Err(AssemblyError::CommitMismatch { .. })
        ));
    }

    /// Two streamed transactions interleaved in blocks, a plain one committed
    /// in between, then both committed in the other order.
    fn interleaved(h: &mut Harness) -> Vec<TxEvent> {
        let mut events = Vec::new();
        events.extend(h.feed_all(vec![
            f::stream_start(100, true),
            rel(Some(100), 1),
            f::insert(Some(100), 1, &[V::T("1"), V::T("a")]),
            f::insert(Some(100), 1, &[V::T("2"), V::T("b")]),
            f::stream_stop(),
            f::stream_start(200, true),
            rel(Some(200), 1),
            f::insert(Some(200), 1, &[V::T("10"), V::T("x")]),
            f::stream_stop(),
        ]));
        assert!(events.is_empty(), "nothing before a commit: {events:?}");
        events.extend(h.feed_all(vec![
            rel(None, 1),
            f::begin(0x50, 0, 150),
            f::insert(None, 1, &[V::T("5"), V::T("p")]),
            f::commit(0x50, 0x58, 0),
            f::stream_start(100, false),
            f::message(Some(100), true, 0x60, "wm", b""),
            f::insert(Some(100), 1, &[V::T("3"), V::T("c")]),
            f::stream_stop(),
            f::stream_start(200, false),
            f::update(Some(200), 1, None, &[V::T("10"), V::T("y")]),
            f::stream_stop(),
            f::stream_commit(200, 0x90, 0x98, 0),
            f::stream_commit(100, 0xA0, 0xA8, 0),
        ]));
        events
    }

    const INTERLEAVED: [&str; 12] = [
        "begin 150 0/50",
        "Insert 150 0/50 t1 - 5,p",
        "commit 150 0/58",
        "begin 200 0/90",
        "Insert 200 0/90 t1 - 10,x",
        "Update 200 0/90 t1 - 10,y",
        "commit 200 0/98",
        "begin 100 0/A0",
        "Insert 100 0/A0 t1 - 1,a",
        "Insert 100 0/A0 t1 - 2,b",
        "message 100 wm",
        "Insert 100 0/A0 t1 - 3,c",
    ];

    #[test]
    fn interleaved_streamed_transactions_come_out_whole_and_in_commit_order() {
        let mut h = Harness::new(1 << 20);
        let events = interleaved(&mut h);
        let mut expected = INTERLEAVED.to_vec();
        expected.push("commit 100 0/A8");
        assert_eq!(summary(&events), expected);
        assert_eq!(h.asm.buffered_memory(), 0);
        assert_eq!(h.asm.streamed_transactions(), 0);
        assert_eq!(h.spill_files(), 0);
    }

    #[test]
    fn spilled_transactions_read_back_identically() {
        // A bound so small that every streamed transaction spills.
        let mut h = Harness::new(1);
        let events = interleaved(&mut h);
        let mut expected = INTERLEAVED.to_vec();
        expected.push("commit 100 0/A8");
        assert_eq!(summary(&events), expected);
        assert_eq!(h.asm.buffered_memory(), 0);
        assert_eq!(h.spill_files(), 0, "spill files are removed after replay");
        // every field survives the round trip
        let TxEvent::Change(c) = &events[4] else {
            panic!("not a change");
        };
        assert_eq!(c.lsn, Lsn(0x1000 + 8 * 0x10));
        assert_eq!(c.relation.schema, "public");
        assert!(c.relation.columns[0].is_key);
        assert_eq!(c.new.as_ref().map(|r| r[1].clone()), Some(text("x")));
    }

    #[test]
    fn memory_bound_spills_the_largest_transaction_only() {
        let big = "x".repeat(1000);
        let mut h = Harness::new(4000);
        h.feed_all(vec![f::stream_start(1, true), rel(Some(1), 1)]);
        for i in 0..5 {
            h.feed(f::insert(Some(1), 1, &[V::T(&i.to_string()), V::T(&big)]));
        }
        h.feed_all(vec![
            f::stream_stop(),
            f::stream_start(2, true),
            rel(Some(2), 1),
        ]);
        h.feed(f::insert(Some(2), 1, &[V::T("small"), V::N]));
        h.feed(f::stream_stop());
        assert_eq!(h.spill_files(), 1);
        assert!(h.asm.buffered_memory() <= 4000);
        assert!(h.asm.buffered_memory() > 0, "the small one stays in memory");
        let events = h.feed(f::stream_commit(1, 0x10, 0x20, 0));
        assert_eq!(events.len(), 7);
        assert_eq!(h.spill_files(), 0);
        let events = h.feed(f::stream_commit(2, 0x30, 0x40, 0));
        assert_eq!(events.len(), 3);
    }

    fn with_subtransaction_abort(h: &mut Harness) -> Vec<TxEvent> {
        h.feed_all(vec![
            f::stream_start(100, true),
            rel(Some(100), 1),
            f::insert(Some(100), 1, &[V::T("1"), V::N]),
            // SAVEPOINT a: subxact 101, with a nested 102
            f::insert(Some(101), 1, &[V::T("2"), V::N]),
            f::insert(Some(102), 1, &[V::T("3"), V::N]),
            f::stream_stop(),
            f::stream_start(100, false),
            f::insert(Some(101), 1, &[V::T("4"), V::N]),
            f::stream_stop(),
            // ROLLBACK TO a: the server sends an abort per streamed subxact
            f::stream_abort(100, 102),
            f::stream_abort(100, 101),
            f::stream_start(100, false),
            // SAVEPOINT b: subxact 103, released
            f::insert(Some(103), 1, &[V::T("5"), V::N]),
            f::insert(Some(100), 1, &[V::T("6"), V::N]),
            f::stream_stop(),
            // an abort of a subxact never seen changes nothing
            f::stream_abort(100, 999),
            f::stream_commit(100, 0x80, 0x88, 0),
        ])
    }

    #[test]
    fn subtransaction_abort_drops_only_its_changes() {
        for max_memory in [1 << 20, 1] {
            let mut h = Harness::new(max_memory);
            let events = with_subtransaction_abort(&mut h);
            let ids: Vec<String> = summary(&events);
            assert_eq!(
                ids,
                [
                    "begin 100 0/80",
                    "Insert 100 0/80 t1 - 1,null",
                    "Insert 100 0/80 t1 - 5,null",
                    "Insert 100 0/80 t1 - 6,null",
                    "commit 100 0/88",
                ],
                "max_memory {max_memory}"
            );
            assert_eq!(h.asm.buffered_memory(), 0);
            assert_eq!(h.spill_files(), 0);
        }
    }

    #[test]
    fn abort_of_the_whole_transaction_delivers_nothing() {
        for max_memory in [1 << 20, 1] {
            let mut h = Harness::new(max_memory);
            let events = h.feed_all(vec![
                f::stream_start(100, true),
                rel(Some(100), 1),
                f::insert(Some(100), 1, &[V::T("1"), V::N]),
                f::insert(Some(101), 1, &[V::T("2"), V::N]),
                f::stream_stop(),
                f::stream_abort(100, 100),
            ]);
            assert!(events.is_empty());
            assert_eq!(h.asm.streamed_transactions(), 0);
            assert_eq!(h.asm.buffered_memory(), 0);
            assert_eq!(h.spill_files(), 0, "max_memory {max_memory}");
            // the relation described inside the aborted stream is forgotten
            assert!(h.asm.relation(1).is_none());
        }
    }

    #[test]
    fn relation_described_in_a_committed_stream_is_kept() {
        let mut h = Harness::new(1 << 20);
        h.feed_all(vec![
            f::stream_start(100, true),
            rel(Some(100), 7),
            f::insert(Some(100), 7, &[V::T("1"), V::N]),
            f::stream_stop(),
            f::stream_commit(100, 0x10, 0x20, 0),
        ]);
        let events = h.feed_all(vec![
            f::begin(0x30, 0, 101),
            f::insert(None, 7, &[V::T("2"), V::N]),
            f::commit(0x30, 0x40, 0),
        ]);
        assert_eq!(events.len(), 3);
    }

    #[test]
    fn schema_change_inside_a_spilled_stream_replays_exactly() {
        let mut h = Harness::new(1);
        let events = h.feed_all(vec![
            f::stream_start(100, true),
            rel(Some(100), 1),
            f::insert(Some(100), 1, &[V::T("1"), V::T("a")]),
            f::relation(
                Some(100),
                1,
                "public",
                "t1",
                b'd',
                &[(true, "id", 23), (false, "v", 25), (false, "w", 20)],
            ),
            f::insert(Some(100), 1, &[V::T("2"), V::T("b"), V::T("9")]),
            f::stream_stop(),
            f::stream_commit(100, 0x10, 0x20, 0),
        ]);
        let widths: Vec<usize> = events
            .iter()
            .filter_map(|e| match e {
                TxEvent::Change(c) => Some(c.relation.columns.len()),
                _ => None,
            })
            .collect();
        assert_eq!(widths, [2, 3]);
    }

    #[test]
    fn non_transactional_message_is_emitted_alone() {
        let mut h = Harness::new(1 << 20);
        let events = h.feed(f::message(None, false, 0x77, "heartbeat", b"1"));
        assert_eq!(
            events,
            [TxEvent::Message(LogicalMessage {
                lsn: Lsn(0x77),
                xid: 0,
                transactional: false,
                prefix: "heartbeat".into(),
                content: Bytes::from_static(b"1"),
            })]
        );
    }

    #[test]
    fn leftover_spill_files_are_removed_at_start() {
        let dir = TempDir::new("leftover");
        std::fs::create_dir_all(&dir.0).expect("mkdir");
        std::fs::write(spill_path(&dir.0, 42), b"old").expect("write");
        std::fs::write(dir.0.join("keep.txt"), b"not ours").expect("write");
        Assembler::new(AssemblerConfig {
            max_memory: 1,
            spill_dir: dir.0.clone(),
            key_columns: Default::default(),
        })
        .expect("assembler");
        assert!(!spill_path(&dir.0, 42).exists());
        assert!(dir.0.join("keep.txt").exists());
    }
}
