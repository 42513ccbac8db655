//! Spill files: the buffered items of one streamed transaction written to
//! disk when the assembler's memory bound is reached, read back in order at
//! its commit.
//!
//! Format: a sequence of records, each a big-endian `u32` payload length then
//! the payload, whose first byte is its kind: a relation description, a
//! change or a logical message. A change names its relation by oid; the
//! description it refers to is the last relation record with that oid
//! before it in the file (written again whenever the description changed),
//! so a schema change inside the transaction replays exactly.
//!
//! Invariants: a file belongs to one transaction and one process run (files
//! removed when their writer or reader is dropped: after commit, abort, or
//! with the assembler; and by [`clear_spill_dir`] at start);
//! [`SpillWriter::truncate`] to a record boundary drops every record after it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::change::{Change, Column, Datum, Lsn, Op, Relation, Row};

use super::item::{Item, LogicalMessage};

/// File name prefix of spill files; only these are removed at start.
const SPILL_PREFIX: &str = "siphon-tx-";
const SPILL_SUFFIX: &str = ".spill";

const RECORD_RELATION: u8 = 1;
const RECORD_CHANGE: u8 = 2;
const RECORD_MESSAGE: u8 = 3;

/// A spill file that cannot be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error(
        "cannot {action} spill file {path}: {source}; check that the spill directory is writable and has free space"
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spill file {path} is corrupt at byte {offset}: {detail}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: &'static str,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpillError + 'a {
    move |source| SpillError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Removes the spill files a previous run left in `dir` (creating `dir` when
/// missing). Returns how many were removed.
pub fn clear_spill_dir(dir: &Path) -> Result<usize, SpillError> {
    std::fs::create_dir_all(dir).map_err(io_err("create the directory of", dir))?;
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(io_err("list the directory of", dir))? {
        let entry = entry.map_err(io_err("list the directory of", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(SPILL_PREFIX) && name.ends_with(SPILL_SUFFIX) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The path of the spill file of top-level transaction `xid`.
pub fn spill_path(dir: &Path, xid: u32) -> PathBuf {
    dir.join(format!("{SPILL_PREFIX}{xid}{SPILL_SUFFIX}"))
}

/// Appends the items of one transaction to its spill file.
pub struct SpillWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// Bytes written so far (the offset of the next record).
    len: u64,
    /// The relation description last written for each oid.
    written: HashMap<u32, Arc<Relation>>,
    scratch: BytesMut,
}

impl std::fmt::Debug for SpillWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpillWriter")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl SpillWriter {
    /// Creates (or empties) the spill file at `path`.
    pub fn create(path: PathBuf) -> Result<Self, SpillError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        Ok(Self {
            path,
            out: BufWriter::with_capacity(256 * 1024, file),
            len: 0,
            written: HashMap::new(),
            scratch: BytesMut::with_capacity(4096),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The offset the next record will be written at.
    pub fn position(&self) -> u64 {
        self.len
    }

    pub fn append(&mut self, item: &Item) -> Result<(), SpillError> {
        if let Item::Change(change) = item {
            let oid = change.relation.oid;
            let fresh = self.written.get(&oid).is_some_and(|last| {
                Arc::ptr_eq(last, &change.relation) || **last == *change.relation
            });
            if !fresh {
                self.scratch.clear();
                encode_relation(&change.relation, &mut self.scratch);
                self.write_record()?;
                self.written.insert(oid, Arc::clone(&change.relation));
            }
        }
        self.scratch.clear();
        match item {
            Item::Change(change) => encode_change(change, &mut self.scratch),
            Item::Message(message) => encode_message(message, &mut self.scratch),
        }
        self.write_record()
    }

    fn write_record(&mut self) -> Result<(), SpillError> {
        let len = u32::try_from(self.scratch.len()).map_err(|_| SpillError::Io {
            action: "write",
            path: self.path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "record over 4 GiB"),
        })?;
        self.out
            .write_all(&len.to_be_bytes())
            .and_then(|()| self.out.write_all(&self.scratch))
            .map_err(io_err("write", &self.path))?;
        self.len = self.len.saturating_add(4).saturating_add(u64::from(len));
        Ok(())
    }

    /// Drops every record at or after `offset` (a value of [`Self::position`]).
    pub fn truncate(&mut self, offset: u64) -> Result<(), SpillError> {
        self.out.flush().map_err(io_err("write", &self.path))?;
        let file = self.out.get_mut();
        file.set_len(offset)
            .map_err(io_err("truncate", &self.path))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(io_err("seek in", &self.path))?;
        self.len = offset;
        // The dropped part may have held relation records.
        self.written.clear();
        Ok(())
    }

    /// Finishes writing and opens the file for reading from the start.
    pub fn into_reader(mut self) -> Result<SpillReader, SpillError> {
        self.out.flush().map_err(io_err("write", &self.path))?;
        let mut file = self
            .out
            .get_ref()
            .try_clone()
            .map_err(io_err("reopen", &self.path))?;
        file.seek(SeekFrom::Start(0))
            .map_err(io_err("seek in", &self.path))?;
        // The reader owns the file from here: this writer's drop keeps it.
        let path = std::mem::take(&mut self.path);
        Ok(SpillReader {
            path,
            input: BufReader::with_capacity(256 * 1024, file),
            offset: 0,
            relations: HashMap::new(),
        })
    }
}

impl Drop for SpillWriter {
    /// An unread spill file (abort, or the assembler dropped) is removed.
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            remove_quietly(&self.path);
        }
    }
}

fn remove_quietly(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "cannot remove spill file");
    }
}

/// Reads the items of a spill file back in order; removes the file on drop.
pub struct SpillReader {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
    relations: HashMap<u32, Arc<Relation>>,
}

impl std::fmt::Debug for SpillReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpillReader")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl Drop for SpillReader {
    fn drop(&mut self) {
        remove_quietly(&self.path);
    }
}

impl SpillReader {
    /// The next item, `None` at the end of the file.
    pub fn next_item(&mut self) -> Result<Option<Item>, SpillError> {
        loop {
            let mut len = [0u8; 4];
            match read_full(&mut self.input, &mut len).map_err(io_err("read", &self.path))? {
                0 => return Ok(None),
                4 => {}
                _ => return Err(self.corrupt("truncated record length")),
            }
            let len = u32::from_be_bytes(len) as usize;
            let mut buf = BytesMut::zeroed(len);
            if read_full(&mut self.input, &mut buf).map_err(io_err("read", &self.path))? != len {
                return Err(self.corrupt("truncated record"));
            }
            let record = buf.freeze();
            let start = self.offset;
            self.offset = self.offset.saturating_add(4).saturating_add(len as u64);
            let mut r = Reader {
                buf: &record,
                pos: 0,
            };
            let decoded = match r.u8() {
                Some(RECORD_RELATION) => decode_relation(&mut r).map(|relation| {
                    self.relations.insert(relation.oid, Arc::new(relation));
                    None
                }),
                Some(RECORD_CHANGE) => {
                    decode_change(&mut r, &self.relations).map(|c| Some(Item::Change(c)))
                }
                Some(RECORD_MESSAGE) => decode_message(&mut r).map(|m| Some(Item::Message(m))),
                _ => Err("unknown record kind"),
            };
            match decoded {
                Ok(Some(item)) if r.pos == record.len() => return Ok(Some(item)),
                Ok(None) if r.pos == record.len() => continue,
                Ok(_) => return Err(self.corrupt_at(start, "trailing bytes in record")),
                Err(detail) => return Err(self.corrupt_at(start, detail)),
            }
        }
    }

    fn corrupt(&self, detail: &'static str) -> SpillError {
        self.corrupt_at(self.offset, detail)
    }

    fn corrupt_at(&self, offset: u64, detail: &'static str) -> SpillError {
        SpillError::Corrupt {
            path: self.path.clone(),
            offset,
            detail,
        }
    }
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..) {
        if rest.is_empty() {
            break;
        }
        match input.read(rest) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn put_str(buf: &mut BytesMut, s: &str) {
    put_bytes(buf, s.as_bytes());
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    // Values come from PostgreSQL messages, whose lengths are Int32.
    buf.put_u32(b.len() as u32);
    buf.put_slice(b);
}

fn encode_relation(relation: &Relation, buf: &mut BytesMut) {
    buf.put_u8(RECORD_RELATION);
    buf.put_u32(relation.oid);
    put_str(buf, &relation.schema);
    put_str(buf, &relation.name);
    buf.put_u8(relation.replica_identity);
    buf.put_u32(relation.columns.len() as u32);
    for column in &relation.columns {
        put_str(buf, &column.name);
        buf.put_u32(column.type_oid);
        buf.put_i32(column.type_modifier);
        buf.put_u8(u8::from(column.is_key));
    }
}

fn op_code(op: Op) -> u8 {
    match op {
        Op::Insert => 0,
        Op::Update => 1,
        Op::Delete => 2,
        Op::Truncate => 3,
        Op::Read => 4,
    }
}

fn put_row(buf: &mut BytesMut, row: Option<&Row>) {
    let Some(row) = row else {
        buf.put_u8(0);
        return;
    };
    buf.put_u8(1);
    buf.put_u32(row.len() as u32);
    for datum in row {
        match datum {
            Datum::Null => buf.put_u8(0),
            Datum::UnchangedToast => buf.put_u8(1),
            Datum::Text(b) => {
                buf.put_u8(2);
                put_bytes(buf, b);
            }
            Datum::Binary(b) => {
                buf.put_u8(3);
                put_bytes(buf, b);
            }
        }
    }
}

/// A change's commit fields are not written: they are set at replay.
fn encode_change(change: &Change, buf: &mut BytesMut) {
    buf.put_u8(RECORD_CHANGE);
    buf.put_u8(op_code(change.op));
    buf.put_u32(change.relation.oid);
    buf.put_u64(change.lsn.0);
    buf.put_u32(change.xid);
    put_row(buf, change.old.as_ref());
    put_row(buf, change.new.as_ref());
}

fn encode_message(message: &LogicalMessage, buf: &mut BytesMut) {
    buf.put_u8(RECORD_MESSAGE);
    buf.put_u64(message.lsn.0);
    buf.put_u32(message.xid);
    buf.put_u8(u8::from(message.transactional));
    put_str(buf, &message.prefix);
    put_bytes(buf, &message.content);
}

/// Bounds-checked reader over one record.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

type R<T> = Result<T, &'static str>;

impl Reader<'_> {
    fn take(&mut self, n: usize) -> R<&[u8]> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let slice = self.buf.get(self.pos..end).ok_or("record too short")?;
        self.pos = end;
        Ok(slice)
    }
    fn arr<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Option<u8> {
        self.arr::<1>().ok().map(|[b]| b)
    }
    fn byte(&mut self) -> R<u8> {
        self.arr::<1>().map(|[b]| b)
    }
    fn u32(&mut self) -> R<u32> {
        self.arr().map(u32::from_be_bytes)
    }
    fn i32(&mut self) -> R<i32> {
        self.arr().map(i32::from_be_bytes)
    }
    fn u64(&mut self) -> R<u64> {
        self.arr().map(u64::from_be_bytes)
    }
    fn bytes(&mut self) -> R<Bytes> {
        let len = self.u32()? as usize;
        let start = self.pos;
        self.take(len)?;
        Ok(self.buf.slice(start..self.pos))
    }
    fn string(&mut self) -> R<String> {
        let len = self.u32()? as usize;
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| "invalid UTF-8")
    }
}

fn decode_relation(r: &mut Reader<'_>) -> R<Relation> {
    let oid = r.u32()?;
    let schema = r.string()?;
    let name = r.string()?;
    let replica_identity = r.byte()?;
    let count = r.u32()? as usize;
    let mut columns = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        columns.push(Column {
            name: r.string()?,
            type_oid: r.u32()?,
            type_modifier: r.i32()?,
            is_key: r.byte()? != 0,
        });
    }
    Ok(Relation {
        oid,
        schema,
        name,
        replica_identity,
        columns,
    })
}

fn decode_row(r: &mut Reader<'_>) -> R<Option<Row>> {
    if r.byte()? == 0 {
        return Ok(None);
    }
    let count = r.u32()? as usize;
    let mut row = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        row.push(match r.byte()? {
            0 => Datum::Null,
            1 => Datum::UnchangedToast,
            2 => Datum::Text(r.bytes()?),
            3 => Datum::Binary(r.bytes()?),
            _ => return Err("unknown datum kind"),
        });
    }
    Ok(Some(row))
}

fn decode_change(r: &mut Reader<'_>, relations: &HashMap<u32, Arc<Relation>>) -> R<Change> {
    let op = match r.byte()? {
        0 => Op::Insert,
        1 => Op::Update,
        2 => Op::Delete,
        3 => Op::Truncate,
        4 => Op::Read,
        _ => return Err("unknown op"),
    };
    let oid = r.u32()?;
    let relation = relations
        .get(&oid)
        .cloned()
        .ok_or("change before its relation record")?;
    let lsn = Lsn(r.u64()?);
    let xid = r.u32()?;
    let old = decode_row(r)?;
    let new = decode_row(r)?;
    Ok(Change {
        op,
        relation,
        old,
        new,
        commit_lsn: Lsn(0),
        lsn,
        last_commit_end: Lsn(0),
        xid,
        commit_ts_us: 0,
        snapshot: None,
    })
}

fn decode_message(r: &mut Reader<'_>) -> R<LogicalMessage> {
    Ok(LogicalMessage {
        lsn: Lsn(r.u64()?),
        xid: r.u32()?,
        transactional: r.byte()? != 0,
        prefix: r.string()?,
        content: r.bytes()?,
    })
}
