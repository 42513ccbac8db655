//! A pure decoder of the `pgoutput` logical replication protocol, versions 1
//! and 2 (the payload of each XLogData message: byte slices in, typed
//! messages out).
//!
//! Invariants:
//! - Never panics on any input: every read goes through [`Cursor`], which
//!   checks bounds and returns a [`DecodeError`] for malformed, truncated or
//!   over-long input. No arithmetic here can overflow.
//! - Zero-copy for values: a column value is a [`Bytes`] slice of the
//!   message buffer (a reference count, no copy); only names (Relation, Type,
//!   Origin, message prefix) allocate a `String`.
//! - Inside a stream block (between Stream Start and Stream Stop, protocol 2)
//!   the DML, Relation, Type and Message messages carry a leading xid: the
//!   [`Decoder`] tracks the block so each message is read with the right
//!   layout. That xid is the one of the (sub)transaction that made the change.
//!
//! Timestamps are converted from PostgreSQL's epoch (2000-01-01) to
//! microseconds since the Unix epoch.

use bytes::Bytes;

use crate::change::{Column, Datum, Lsn, Relation, Row};

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Converts a PostgreSQL timestamp (microseconds since 2000-01-01) into
/// microseconds since the Unix epoch.
pub fn pg_to_unix_us(pg_us: i64) -> i64 {
    pg_us.saturating_add(PG_EPOCH_OFFSET_US)
}

/// Converts microseconds since the Unix epoch into a PostgreSQL timestamp.
pub fn unix_to_pg_us(unix_us: i64) -> i64 {
    unix_us.saturating_sub(PG_EPOCH_OFFSET_US)
}

/// A malformed pgoutput message. Deterministic: decoding the same bytes again
/// fails the same way, so it is never worth a retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error(
        "unknown pgoutput message type {tag:#04x}; the server speaks a newer protocol than the one negotiated (report this with the server version)"
    )]
    UnknownMessage { tag: u8 },
    #[error(
        "truncated pgoutput message: {what} needs {needed} bytes at offset {offset}, {available} left"
    )]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("invalid {what} {value:#04x} at offset {offset} in pgoutput message")]
    InvalidByte {
        what: &'static str,
        value: u8,
        offset: usize,
    },
    #[error("negative {what} {value} in pgoutput message")]
    Negative { what: &'static str, value: i64 },
    #[error("{what} at offset {offset} in pgoutput message is not terminated by NUL")]
    Unterminated { what: &'static str, offset: usize },
    #[error("{what} at offset {offset} in pgoutput message is not valid UTF-8")]
    InvalidUtf8 { what: &'static str, offset: usize },
    #[error("{count} unexpected trailing bytes after a pgoutput {message} message")]
    TrailingBytes { message: &'static str, count: usize },
    #[error("pgoutput stream protocol violation: {0}")]
    StreamState(&'static str),
}

/// The old row sent with an Update or a Delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: the replica identity key columns; the other columns are `Null`.
    Key(Row),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(Row),
}

impl OldTuple {
    /// The old values, whichever kind they are.
    pub fn into_row(self) -> Row {
        match self {
            OldTuple::Key(row) | OldTuple::Full(row) => row,
        }
    }
}

/// Options of a Truncate message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TruncateOptions {
    pub cascade: bool,
    pub restart_identity: bool,
}

/// One decoded pgoutput message. `xid` fields marked optional are present
/// only inside a stream block.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Begin {
        /// LSN of the commit record (the transaction's final LSN).
        final_lsn: Lsn,
        commit_ts_us: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        /// End of the commit record: the position to confirm.
        end_lsn: Lsn,
        commit_ts_us: i64,
    },
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation {
        xid: Option<u32>,
        relation: Relation,
    },
    Type {
        xid: Option<u32>,
        oid: u32,
        schema: String,
        name: String,
    },
    Insert {
        xid: Option<u32>,
        relation_id: u32,
        new: Row,
    },
    Update {
        xid: Option<u32>,
        relation_id: u32,
        old: Option<OldTuple>,
        new: Row,
    },
    Delete {
        xid: Option<u32>,
        relation_id: u32,
        old: OldTuple,
    },
    Truncate {
        xid: Option<u32>,
        options: TruncateOptions,
        relation_ids: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        xid: Option<u32>,
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts_us: i64,
    },
    StreamAbort {
        xid: u32,
        /// Equal to `xid` when the whole transaction aborted, else the
        /// aborted subtransaction.
        subxid: u32,
        /// Sent by protocol 4 (parallel streaming) only.
        abort_lsn: Option<Lsn>,
        abort_ts_us: Option<i64>,
    },
}

impl Message {
    /// The message's name, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Begin { .. } => "begin",
            Message::Commit { .. } => "commit",
            Message::Origin { .. } => "origin",
            Message::Relation { .. } => "relation",
            Message::Type { .. } => "type",
            Message::Insert { .. } => "insert",
            Message::Update { .. } => "update",
            Message::Delete { .. } => "delete",
            Message::Truncate { .. } => "truncate",
            Message::Message { .. } => "message",
            Message::StreamStart { .. } => "stream start",
            Message::StreamStop => "stream stop",
            Message::StreamCommit { .. } => "stream commit",
            Message::StreamAbort { .. } => "stream abort",
        }
    }
}

/// Decodes one pgoutput message. `in_stream` tells whether it arrived inside
/// a stream block (then DML, Relation, Type and Message carry an xid). Prefer
/// [`Decoder`], which tracks the blocks.
pub fn decode(data: &Bytes, in_stream: bool) -> Result<Message, DecodeError> {
    let mut c = Cursor::new(data);
    let tag = c.u8("message type").map_err(|_| DecodeError::Empty)?;
    let stream_xid = |c: &mut Cursor<'_>| -> Result<Option<u32>, DecodeError> {
        if in_stream {
            c.u32("xid").map(Some)
        } else {
            Ok(None)
        }
    };
    let (message, name) = match tag {
        b'B' => (
            Message::Begin {
                final_lsn: c.lsn("final lsn")?,
                commit_ts_us: c.timestamp("commit timestamp")?,
                xid: c.u32("xid")?,
            },
            "begin",
        ),
        b'C' => (
            Message::Commit {
                flags: c.u8("commit flags")?,
                commit_lsn: c.lsn("commit lsn")?,
                end_lsn: c.lsn("end lsn")?,
                commit_ts_us: c.timestamp("commit timestamp")?,
            },
            "commit",
        ),
        b'O' => (
            Message::Origin {
                commit_lsn: c.lsn("origin lsn")?,
                name: c.string("origin name")?,
            },
            "origin",
        ),
        b'R' => {
            let xid = stream_xid(&mut c)?;
            (
                Message::Relation {
                    xid,
                    relation: relation(&mut c)?,
                },
                "relation",
            )
        }
        b'Y' => {
            let xid = stream_xid(&mut c)?;
            let oid = c.u32("type oid")?;
            let schema = namespace(c.string("type namespace")?);
            let name = c.string("type name")?;
            (
                Message::Type {
                    xid,
                    oid,
                    schema,
                    name,
                },
                "type",
            )
        }
        b'I' => {
            let xid = stream_xid(&mut c)?;
            let relation_id = c.u32("relation id")?;
            c.expect(b'N', "insert tuple marker")?;
            let new = tuple(&mut c)?;
            (
                Message::Insert {
                    xid,
                    relation_id,
                    new,
                },
                "insert",
            )
        }
        b'U' => {
            let xid = stream_xid(&mut c)?;
            let relation_id = c.u32("relation id")?;
            let offset = c.pos;
            let old = match c.u8("update tuple marker")? {
                b'K' => {
                    let old = Some(OldTuple::Key(tuple(&mut c)?));
                    c.expect(b'N', "update new tuple marker")?;
                    old
                }
                b'O' => {
                    let old = Some(OldTuple::Full(tuple(&mut c)?));
                    c.expect(b'N', "update new tuple marker")?;
                    old
                }
                b'N' => None,
                value => {
                    return Err(DecodeError::InvalidByte {
                        what: "update tuple marker",
                        value,
                        offset,
                    });
                }
            };
            let new = tuple(&mut c)?;
            (
                Message::Update {
                    xid,
                    relation_id,
                    old,
                    new,
                },
                "update",
            )
        }
        b'D' => {
            let xid = stream_xid(&mut c)?;
            let relation_id = c.u32("relation id")?;
            let offset = c.pos;
            let old = match c.u8("delete tuple marker")? {
                b'K' => OldTuple::Key(tuple(&mut c)?),
                b'O' => OldTuple::Full(tuple(&mut c)?),
                value => {
                    return Err(DecodeError::InvalidByte {
                        what: "delete tuple marker",
                        value,
                        offset,
                    });
                }
            };
            (
                Message::Delete {
                    xid,
                    relation_id,
                    old,
                },
                "delete",
            )
        }
        b'T' => {
            let xid = stream_xid(&mut c)?;
            let count = c.u32("truncate relation count")? as usize;
            let offset = c.pos;
            let flags = c.u8("truncate options")?;
            if flags & !0b11 != 0 {
                return Err(DecodeError::InvalidByte {
                    what: "truncate options",
                    value: flags,
                    offset,
                });
            }
            let options = TruncateOptions {
                cascade: flags & 1 != 0,
                restart_identity: flags & 2 != 0,
            };
            // Each id is 4 bytes: check before allocating for a bogus count.
            c.need(count.saturating_mul(4), "truncate relation ids")?;
            let mut relation_ids = Vec::with_capacity(count);
            for _ in 0..count {
                relation_ids.push(c.u32("truncate relation id")?);
            }
            (
                Message::Truncate {
                    xid,
                    options,
                    relation_ids,
                },
                "truncate",
            )
        }
        b'M' => {
            let xid = stream_xid(&mut c)?;
            let offset = c.pos;
            let flags = c.u8("message flags")?;
            if flags & !1 != 0 {
                return Err(DecodeError::InvalidByte {
                    what: "message flags",
                    value: flags,
                    offset,
                });
            }
            let lsn = c.lsn("message lsn")?;
            let prefix = c.string("message prefix")?;
            let len = c.u32("message content length")? as usize;
            let content = c.bytes(len, "message content")?;
            (
                Message::Message {
                    xid,
                    transactional: flags & 1 != 0,
                    lsn,
                    prefix,
                    content,
                },
                "message",
            )
        }
        b'S' => {
            let xid = c.u32("stream xid")?;
            let offset = c.pos;
            let first_segment = match c.u8("stream first segment flag")? {
                0 => false,
                1 => true,
                value => {
                    return Err(DecodeError::InvalidByte {
                        what: "stream first segment flag",
                        value,
                        offset,
                    });
                }
            };
            (Message::StreamStart { xid, first_segment }, "stream start")
        }
        b'E' => (Message::StreamStop, "stream stop"),
        b'c' => (
            Message::StreamCommit {
                xid: c.u32("stream xid")?,
                flags: c.u8("stream commit flags")?,
                commit_lsn: c.lsn("commit lsn")?,
                end_lsn: c.lsn("end lsn")?,
                commit_ts_us: c.timestamp("commit timestamp")?,
            },
            "stream commit",
        ),
        b'A' => {
            let xid = c.u32("stream xid")?;
            let subxid = c.u32("stream subxid")?;
            let (abort_lsn, abort_ts_us) = if c.remaining() > 0 {
                (
                    Some(c.lsn("abort lsn")?),
                    Some(c.timestamp("abort timestamp")?),
                )
            } else {
                (None, None)
            };
            (
                Message::StreamAbort {
                    xid,
                    subxid,
                    abort_lsn,
                    abort_ts_us,
                },
                "stream abort",
            )
        }
        tag => return Err(DecodeError::UnknownMessage { tag }),
    };
    if c.remaining() != 0 {
        return Err(DecodeError::TrailingBytes {
            message: name,
            count: c.remaining(),
        });
    }
    Ok(message)
}

/// Decodes a message stream, tracking stream blocks (protocol 2) so each
/// message is read with the right layout, and refusing misplaced block
/// boundaries.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The top-level xid of the open stream block.
    stream: Option<u32>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The top-level xid of the open stream block, if any.
    pub fn current_stream(&self) -> Option<u32> {
        self.stream
    }

    /// Decodes the next message of the stream.
    pub fn decode(&mut self, data: &Bytes) -> Result<Message, DecodeError> {
        let message = decode(data, self.stream.is_some())?;
        match (&message, self.stream) {
            (Message::StreamStart { xid, .. }, None) => self.stream = Some(*xid),
            (Message::StreamStart { .. }, Some(_)) => {
                return Err(DecodeError::StreamState(
                    "stream start inside a stream block",
                ));
            }
            (Message::StreamStop, Some(_)) => self.stream = None,
            (Message::StreamStop, None) => {
                return Err(DecodeError::StreamState(
                    "stream stop outside a stream block",
                ));
            }
            (
                Message::Begin { .. }
                | Message::Commit { .. }
                | Message::StreamCommit { .. }
                | Message::StreamAbort { .. },
                Some(_),
            ) => {
                return Err(DecodeError::StreamState(
                    "transaction boundary inside a stream block",
                ));
            }
            _ => {}
        }
        Ok(message)
    }
}

/// pgoutput sends an empty namespace for `pg_catalog`.
fn namespace(schema: String) -> String {
    if schema.is_empty() {
        "pg_catalog".to_owned()
    } else {
        schema
    }
}

fn relation(c: &mut Cursor<'_>) -> Result<Relation, DecodeError> {
    let oid = c.u32("relation oid")?;
    let schema = namespace(c.string("relation namespace")?);
    let name = c.string("relation name")?;
    let offset = c.pos;
    let replica_identity = c.u8("replica identity")?;
    if !matches!(replica_identity, b'd' | b'n' | b'f' | b'i') {
        return Err(DecodeError::InvalidByte {
            what: "replica identity",
            value: replica_identity,
            offset,
        });
    }
    let count = c.count("relation column count")?;
    // A column takes at least 10 bytes: never trust the count for capacity.
    let mut columns = Vec::with_capacity(count.min(c.remaining() / 10));
    for _ in 0..count {
        let offset = c.pos;
        let flags = c.u8("column flags")?;
        if flags & !1 != 0 {
            return Err(DecodeError::InvalidByte {
                what: "column flags",
                value: flags,
                offset,
            });
        }
        columns.push(Column {
            name: c.string("column name")?,
            type_oid: c.u32("column type oid")?,
            type_modifier: c.i32("column type modifier")?,
            is_key: flags & 1 != 0,
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

/// TupleData: a column count, then per column `n` (null), `u` (unchanged
/// TOAST), `t` (text) or `b` (binary) with a length and the bytes.
fn tuple(c: &mut Cursor<'_>) -> Result<Row, DecodeError> {
    let count = c.count("tuple column count")?;
    // Each column takes at least one byte.
    let mut row = Vec::with_capacity(count.min(c.remaining()));
    for _ in 0..count {
        let offset = c.pos;
        let datum = match c.u8("tuple column kind")? {
            b'n' => Datum::Null,
            b'u' => Datum::UnchangedToast,
            b't' => {
                let len = c.length("text value length")?;
                Datum::Text(c.bytes(len, "text value")?)
            }
            b'b' => {
                let len = c.length("binary value length")?;
                Datum::Binary(c.bytes(len, "binary value")?)
            }
            value => {
                return Err(DecodeError::InvalidByte {
                    what: "tuple column kind",
                    value,
                    offset,
                });
            }
        };
        row.push(datum);
    }
    Ok(row)
}

/// A bounds-checked big-endian reader over one message.
struct Cursor<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn need(&self, needed: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.remaining() < needed {
            return Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed,
                available: self.remaining(),
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let slice = self
            .buf
            .get(self.pos..)
            .and_then(|rest| rest.get(..N))
            .ok_or(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: N,
                available: self.remaining(),
            })?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        self.pos = self.pos.saturating_add(N);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn expect(&mut self, expected: u8, what: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        let value = self.u8(what)?;
        if value != expected {
            return Err(DecodeError::InvalidByte {
                what,
                value,
                offset,
            });
        }
        Ok(())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.array(what).map(i32::from_be_bytes)
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        self.array(what).map(u64::from_be_bytes).map(Lsn)
    }

    fn timestamp(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.array(what).map(i64::from_be_bytes).map(pg_to_unix_us)
    }

    /// A non-negative Int16 count.
    fn count(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let value = self.array(what).map(i16::from_be_bytes)?;
        usize::try_from(value).map_err(|_| DecodeError::Negative {
            what,
            value: value.into(),
        })
    }

    /// A non-negative Int32 length.
    fn length(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let value = self.i32(what)?;
        usize::try_from(value).map_err(|_| DecodeError::Negative {
            what,
            value: value.into(),
        })
    }

    /// `len` bytes as a zero-copy slice of the message.
    fn bytes(&mut self, len: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(len, what)?;
        let end = self.pos.saturating_add(len);
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    /// A NUL-terminated UTF-8 string (copied: names are few and small).
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Unterminated { what, offset })?;
        let raw = rest.get(..len).unwrap_or_default();
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8 { what, offset })?;
        self.pos = self.pos.saturating_add(len).saturating_add(1);
        Ok(s.to_owned())
    }
}

/// Byte-level builders of pgoutput messages, for tests here and in the
/// assembler (they mirror `src/backend/replication/logical/proto.c`).
#[cfg(test)]
pub(crate) mod fixtures {
    use bytes::{BufMut, Bytes, BytesMut};

    use crate::change::Datum;

    /// Column values for a fixture tuple.
    pub enum V<'a> {
        N,
        U,
        T(&'a str),
        B(&'a [u8]),
    }

    pub fn tuple(buf: &mut BytesMut, values: &[V<'_>]) {
        buf.put_i16(values.len() as i16);
        for v in values {
            match v {
                V::N => buf.put_u8(b'n'),
                V::U => buf.put_u8(b'u'),
                V::T(s) => {
                    buf.put_u8(b't');
                    buf.put_i32(s.len() as i32);
                    buf.put_slice(s.as_bytes());
                }
                V::B(b) => {
                    buf.put_u8(b'b');
                    buf.put_i32(b.len() as i32);
                    buf.put_slice(b);
                }
            }
        }
    }

    pub fn text(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn cstr(buf: &mut BytesMut, s: &str) {
        buf.put_slice(s.as_bytes());
        buf.put_u8(0);
    }

    fn xid(buf: &mut BytesMut, xid: Option<u32>) {
        if let Some(xid) = xid {
            buf.put_u32(xid);
        }
    }

    pub fn begin(final_lsn: u64, ts_pg: i64, xid: u32) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'B');
        b.put_u64(final_lsn);
        b.put_i64(ts_pg);
        b.put_u32(xid);
        b.freeze()
    }

    pub fn commit(commit_lsn: u64, end_lsn: u64, ts_pg: i64) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'C');
        b.put_u8(0);
        b.put_u64(commit_lsn);
        b.put_u64(end_lsn);
        b.put_i64(ts_pg);
        b.freeze()
    }

    /// `columns`: (is_key, name, type oid).
    pub fn relation(
        x: Option<u32>,
        oid: u32,
        schema: &str,
        name: &str,
        identity: u8,
        columns: &[(bool, &str, u32)],
    ) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        xid(&mut b, x);
        b.put_u32(oid);
        cstr(&mut b, schema);
        cstr(&mut b, name);
        b.put_u8(identity);
        b.put_i16(columns.len() as i16);
        for (key, name, type_oid) in columns {
            b.put_u8(u8::from(*key));
            cstr(&mut b, name);
            b.put_u32(*type_oid);
            b.put_i32(-1);
        }
        b.freeze()
    }

    pub fn type_(x: Option<u32>, oid: u32, schema: &str, name: &str) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'Y');
        xid(&mut b, x);
        b.put_u32(oid);
        cstr(&mut b, schema);
        cstr(&mut b, name);
        b.freeze()
    }

    pub fn insert(x: Option<u32>, rel: u32, new: &[V<'_>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        xid(&mut b, x);
        b.put_u32(rel);
        b.put_u8(b'N');
        tuple(&mut b, new);
        b.freeze()
    }

    /// `old`: (`K` or `O`, values).
    pub fn update(x: Option<u32>, rel: u32, old: Option<(u8, &[V<'_>])>, new: &[V<'_>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'U');
        xid(&mut b, x);
        b.put_u32(rel);
        if let Some((kind, values)) = old {
            b.put_u8(kind);
            tuple(&mut b, values);
        }
        b.put_u8(b'N');
        tuple(&mut b, new);
        b.freeze()
    }

    pub fn delete(x: Option<u32>, rel: u32, kind: u8, old: &[V<'_>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'D');
        xid(&mut b, x);
        b.put_u32(rel);
        b.put_u8(kind);
        tuple(&mut b, old);
        b.freeze()
    }

    pub fn truncate(x: Option<u32>, options: u8, rels: &[u32]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'T');
        xid(&mut b, x);
        b.put_u32(rels.len() as u32);
        b.put_u8(options);
        for r in rels {
            b.put_u32(*r);
        }
        b.freeze()
    }

    pub fn message(
        x: Option<u32>,
        transactional: bool,
        lsn: u64,
        prefix: &str,
        content: &[u8],
    ) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'M');
        xid(&mut b, x);
        b.put_u8(u8::from(transactional));
        b.put_u64(lsn);
        cstr(&mut b, prefix);
        b.put_u32(content.len() as u32);
        b.put_slice(content);
        b.freeze()
    }

    pub fn origin(lsn: u64, name: &str) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'O');
        b.put_u64(lsn);
        cstr(&mut b, name);
        b.freeze()
    }

    pub fn stream_start(xid: u32, first: bool) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'S');
        b.put_u32(xid);
        b.put_u8(u8::from(first));
        b.freeze()
    }

    pub fn stream_stop() -> Bytes {
        Bytes::from_static(b"E")
    }

    pub fn stream_commit(xid: u32, commit_lsn: u64, end_lsn: u64, ts_pg: i64) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'c');
        b.put_u32(xid);
        b.put_u8(0);
        b.put_u64(commit_lsn);
        b.put_u64(end_lsn);
        b.put_i64(ts_pg);
        b.freeze()
    }

    pub fn stream_abort(xid: u32, subxid: u32) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'A');
        b.put_u32(xid);
        b.put_u32(subxid);
        b.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{self as f, V, text};
    use super::*;

    fn dec(data: Bytes) -> Message {
        decode(&data, false).expect("decodes")
    }

    #[test]
    fn begin_and_commit() {
        assert_eq!(
            dec(f::begin(0x1_0000_0010, 1_000_000, 742)),
            Message::Begin {
                final_lsn: Lsn(0x1_0000_0010),
                commit_ts_us: PG_EPOCH_OFFSET_US + 1_000_000,
                xid: 742,
            }
        );
        assert_eq!(
            dec(f::commit(0x10, 0x40, 5)),
            Message::Commit {
                flags: 0,
                commit_lsn: Lsn(0x10),
                end_lsn: Lsn(0x40),
                commit_ts_us: PG_EPOCH_OFFSET_US + 5,
            }
        );
    }

    #[test]
    fn origin() {
        assert_eq!(
            dec(f::origin(7, "pg_16399")),
            Message::Origin {
                commit_lsn: Lsn(7),
                name: "pg_16399".into()
            }
        );
    }

    #[test]
    fn relation_with_key_and_catalog_namespace() {
        let m = dec(f::relation(
            None,
            16384,
            "public",
            "orders",
            b'd',
            &[(true, "id", 23), (false, "note", 25)],
        ));
        let Message::Relation {
            xid: None,
            relation,
        } = m
        else {
            panic!("not a relation: {m:?}");
        };
        assert_eq!(relation.oid, 16384);
        assert_eq!(
            (relation.schema.as_str(), relation.name.as_str()),
            ("public", "orders")
        );
        assert_eq!(relation.replica_identity, b'd');
        assert_eq!(
            relation.columns,
            vec![
                Column {
                    name: "id".into(),
                    type_oid: 23,
                    type_modifier: -1,
                    is_key: true
                },
                Column {
                    name: "note".into(),
                    type_oid: 25,
                    type_modifier: -1,
                    is_key: false
                },
            ]
        );
        let Message::Relation { relation, .. } = dec(f::relation(None, 1, "", "pg_x", b'n', &[]))
        else {
            panic!("not a relation");
        };
        assert_eq!(relation.schema, "pg_catalog");
    }

    #[test]
    fn type_message() {
        assert_eq!(
            dec(f::type_(None, 90001, "public", "mood")),
            Message::Type {
                xid: None,
                oid: 90001,
                schema: "public".into(),
                name: "mood".into()
            }
        );
    }

    #[test]
    fn insert_with_every_value_kind() {
        let m = dec(f::insert(
            None,
            16384,
            &[V::T("1"), V::N, V::U, V::B(&[0, 1, 2]), V::T("")],
        ));
        assert_eq!(
            m,
            Message::Insert {
                xid: None,
                relation_id: 16384,
                new: vec![
                    text("1"),
                    Datum::Null,
                    Datum::UnchangedToast,
                    Datum::Binary(Bytes::from_static(&[0, 1, 2])),
                    text(""),
                ],
            }
        );
    }

    #[test]
    fn update_without_key_with_key_and_full() {
        assert_eq!(
            dec(f::update(None, 5, None, &[V::T("1"), V::U])),
            Message::Update {
                xid: None,
                relation_id: 5,
                old: None,
                new: vec![text("1"), Datum::UnchangedToast],
            }
        );
        assert_eq!(
            dec(f::update(
                None,
                5,
                Some((b'K', &[V::T("1"), V::N])),
                &[V::T("2"), V::T("x")]
            )),
            Message::Update {
                xid: None,
                relation_id: 5,
                old: Some(OldTuple::Key(vec![text("1"), Datum::Null])),
                new: vec![text("2"), text("x")],
            }
        );
        assert_eq!(
            dec(f::update(
                None,
                5,
                Some((b'O', &[V::T("1"), V::T("a")])),
                &[V::T("1"), V::T("b")]
            )),
            Message::Update {
                xid: None,
                relation_id: 5,
                old: Some(OldTuple::Full(vec![text("1"), text("a")])),
                new: vec![text("1"), text("b")],
            }
        );
    }

    #[test]
    fn delete_key_and_full() {
        assert_eq!(
            dec(f::delete(None, 5, b'K', &[V::T("9"), V::N])),
            Message::Delete {
                xid: None,
                relation_id: 5,
                old: OldTuple::Key(vec![text("9"), Datum::Null]),
            }
        );
        assert_eq!(
            dec(f::delete(None, 5, b'O', &[V::T("9"), V::T("z")])),
            Message::Delete {
                xid: None,
                relation_id: 5,
                old: OldTuple::Full(vec![text("9"), text("z")]),
            }
        );
        assert!(matches!(
            decode(&f::delete(None, 5, b'N', &[V::T("9")]), false),
            Err(DecodeError::InvalidByte { .. })
        ));
    }

    #[test]
    fn truncate_of_several_relations() {
        assert_eq!(
            dec(f::truncate(None, 3, &[10, 11, 12])),
            Message::Truncate {
                xid: None,
                options: TruncateOptions {
                    cascade: true,
                    restart_identity: true
                },
                relation_ids: vec![10, 11, 12],
            }
        );
        assert_eq!(
            dec(f::truncate(None, 0, &[10])),
            Message::Truncate {
                xid: None,
                options: TruncateOptions::default(),
                relation_ids: vec![10],
            }
        );
    }

    #[test]
    fn logical_message() {
        assert_eq!(
            dec(f::message(None, false, 99, "siphon", b"\x00hb")),
            Message::Message {
                xid: None,
                transactional: false,
                lsn: Lsn(99),
                prefix: "siphon".into(),
                content: Bytes::from_static(b"\x00hb"),
            }
        );
    }

    #[test]
    fn streamed_transaction_carries_xids_inside_blocks() {
        let mut d = Decoder::new();
        let msgs = [
            f::stream_start(800, true),
            f::relation(Some(800), 7, "public", "t", b'd', &[(true, "id", 23)]),
            f::type_(Some(800), 90001, "public", "mood"),
            f::insert(Some(800), 7, &[V::T("1")]),
            f::update(Some(801), 7, Some((b'K', &[V::T("1")])), &[V::T("2")]),
            f::delete(Some(801), 7, b'K', &[V::T("2")]),
            f::truncate(Some(800), 1, &[7]),
            f::message(Some(800), true, 5, "p", b"c"),
            f::stream_stop(),
            f::stream_abort(800, 801),
            f::stream_commit(800, 0x100, 0x140, 0),
        ];
        let out: Vec<Message> = msgs.iter().map(|m| d.decode(m).expect("decodes")).collect();
        assert_eq!(
            out[0],
            Message::StreamStart {
                xid: 800,
                first_segment: true
            }
        );
        assert!(matches!(out[1], Message::Relation { xid: Some(800), .. }));
        assert!(matches!(
            out[2],
            Message::Type {
                xid: Some(800),
                oid: 90001,
                ..
            }
        ));
        assert!(matches!(
            out[3],
            Message::Insert {
                xid: Some(800),
                relation_id: 7,
                ..
            }
        ));
        assert!(matches!(out[4], Message::Update { xid: Some(801), .. }));
        assert!(matches!(out[5], Message::Delete { xid: Some(801), .. }));
        assert!(matches!(
            out[6],
            Message::Truncate {
                xid: Some(800),
                options: TruncateOptions { cascade: true, .. },
                ..
            }
        ));
        assert!(matches!(
            out[7],
            Message::Message {
                xid: Some(800),
                transactional: true,
                ..
            }
        ));
        assert_eq!(out[8], Message::StreamStop);
        assert_eq!(
            out[9],
            Message::StreamAbort {
                xid: 800,
                subxid: 801,
                abort_lsn: None,
                abort_ts_us: None
            }
        );
        assert_eq!(
            out[10],
            Message::StreamCommit {
                xid: 800,
                flags: 0,
                commit_lsn: Lsn(0x100),
                end_lsn: Lsn(0x140),
                commit_ts_us: PG_EPOCH_OFFSET_US,
            }
        );
        assert_eq!(d.current_stream(), None);
    }

    #[test]
    fn stream_abort_of_protocol_4_keeps_lsn_and_time() {
        let mut b = bytes::BytesMut::from(&f::stream_abort(1, 2)[..]);
        bytes::BufMut::put_u64(&mut b, 0x99);
        bytes::BufMut::put_i64(&mut b, 0);
        assert!(matches!(
            dec(b.freeze()),
            Message::StreamAbort {
                abort_lsn: Some(Lsn(0x99)),
                abort_ts_us: Some(PG_EPOCH_OFFSET_US),
                ..
            }
        ));
    }

    #[test]
    fn misplaced_stream_boundaries_are_refused() {
        let mut d = Decoder::new();
        assert!(matches!(
            d.decode(&f::stream_stop()),
            Err(DecodeError::StreamState(_))
        ));
        d.decode(&f::stream_start(1, true)).expect("start");
        assert!(matches!(
            d.decode(&f::stream_start(2, true)),
            Err(DecodeError::StreamState(_))
        ));
        assert!(matches!(
            d.decode(&f::begin(1, 1, 1)),
            Err(DecodeError::StreamState(_))
        ));
    }

    #[test]
    fn values_are_slices_of_the_message() {
        let data = f::insert(None, 1, &[V::T("hello")]);
        let Message::Insert { new, .. } = dec(data.clone()) else {
            panic!("not an insert");
        };
        let Some(Datum::Text(value)) = new.first() else {
            panic!("not text");
        };
        let start = data.as_ptr() as usize;
        let at = value.as_ptr() as usize;
        assert!(at > start && at < start + data.len(), "value was copied");
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert_eq!(decode(&Bytes::new(), false), Err(DecodeError::Empty));
        assert_eq!(
            decode(&Bytes::from_static(b"Z"), false),
            Err(DecodeError::UnknownMessage { tag: b'Z' })
        );
        // every strict prefix of a valid message is truncated, never a panic
        let full = f::update(
            None,
            5,
            Some((b'O', &[V::T("1"), V::N])),
            &[V::T("2"), V::U],
        );
        for len in 0..full.len() {
            assert!(decode(&full.slice(..len), false).is_err(), "prefix {len}");
        }
        let mut long = bytes::BytesMut::from(&full[..]);
        long.extend_from_slice(b"x");
        assert!(matches!(
            decode(&long.freeze(), false),
            Err(DecodeError::TrailingBytes { .. })
        ));
        // negative lengths
        let mut neg = bytes::BytesMut::from(&b"I\0\0\0\x01N\0\x01t"[..]);
        neg.extend_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            decode(&neg.freeze(), false),
            Err(DecodeError::Negative { .. })
        ));
        // a huge count with few bytes allocates nothing big and fails
        let huge = Bytes::from_static(b"T\xff\xff\xff\xff\x00\x00\x00\x00\x01");
        assert!(matches!(
            decode(&huge, false),
            Err(DecodeError::Truncated { .. })
        ));
        // invalid UTF-8 in a name
        let bad = Bytes::from_static(b"O\0\0\0\0\0\0\0\x01\xff\xfe\0");
        assert!(matches!(
            decode(&bad, false),
            Err(DecodeError::InvalidUtf8 { .. })
        ));
    }

    /// xorshift64*: a fixed-seed generator, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn random_and_mutated_bytes_never_panic() {
        let mut rng = Rng(0x5EED_CAFE_F00D_BEEF);
        let tags = b"BCORYIUDTMSEcA";
        let seeds = [
            f::update(
                Some(3),
                5,
                Some((b'K', &[V::T("1"), V::N])),
                &[V::T("2"), V::U],
            ),
            f::relation(
                Some(3),
                16384,
                "public",
                "orders",
                b'f',
                &[(true, "id", 23)],
            ),
            f::truncate(Some(3), 3, &[1, 2]),
            f::message(Some(3), true, 9, "p", b"content"),
            f::stream_commit(3, 1, 2, 3),
        ];
        for i in 0..200_000u32 {
            let len = (rng.next() % 64) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(first) = data.first_mut() {
                // mostly valid tags, so decoding gets past the first byte
                if i % 4 != 0 {
                    *first = tags[(rng.next() % tags.len() as u64) as usize];
                }
            }
            let data = Bytes::from(data);
            let _ = decode(&data, i % 2 == 0);
            // mutate valid messages: flip one byte
            let seed = &seeds[(i as usize) % seeds.len()];
            let mut m = seed.to_vec();
            let at = (rng.next() % m.len() as u64) as usize;
            if let Some(b) = m.get_mut(at) {
                *b = rng.next() as u8;
            }
            let _ = decode(&Bytes::from(m), true);
        }
    }
}
