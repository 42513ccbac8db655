//! The chunk reader: a task with its own SQL connection that, per request,
//! writes the low watermark, reads the chunk, hands the rows over and only
//! then writes the high watermark. The capture loop never waits for it.
//!
//! The chunk is read in a read-only REPEATABLE READ transaction that also
//! reports its snapshot's in-progress transactions (see
//! [`super::window::missed_commit`]).
//!
//! **Columns.** The chunk query names the planned columns, so a column added
//! after planning would silently be missing from every later row. The same
//! transaction therefore reads the table's columns again after the rows: the
//! chunk query's lock keeps any ALTER TABLE from committing between the two,
//! and the transaction's snapshot is taken after that lock, so the catalog
//! read describes exactly the table the rows came from. Columns other than
//! the plan's (or a planned column gone) end the run with
//! [`BackfillError::ColumnsChanged`], a transient error: the worker restarts
//! from the last completed chunk and plans again. The chunk is never emitted.

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::BackfillError;
use super::plan::WatermarkTable;
use super::window::Invisible;
use crate::change::{Datum, Row};
use crate::copy_text;

/// One chunk to read.
#[derive(Clone, Debug)]
pub struct ChunkRequest {
    /// Identifies the chunk (and its window) within the run.
    pub id: u64,
    pub table: String,
    /// The chunk query, with `LIMIT chunk_size + 1`.
    pub sql: String,
    /// How many columns the chunk query selects.
    pub columns: usize,
    pub chunk_size: usize,
    pub key_positions: Vec<usize>,
    /// The table's oid and its stored columns as planned.
    pub oid: u32,
    pub table_columns: std::sync::Arc<Vec<(String, u32, i32)>>,
    pub low: String,
    pub high: String,
}

/// Rows of one chunk, as read between its watermarks.
#[derive(Debug)]
pub struct ChunkRows {
    pub id: u64,
    /// At most `chunk_size` rows in key order.
    pub rows: Vec<Row>,
    /// Key (text) of the last row read; `None` when the chunk is empty.
    pub last_key: Option<Vec<Option<String>>>,
    /// More rows follow this chunk.
    pub more: bool,
    /// Transactions the chunk's snapshot did not see.
    pub invisible: Invisible,
}

/// What the reader reports.
#[derive(Debug)]
pub enum ReaderEvent {
    Rows(ChunkRows),
    Failed(BackfillError),
}

/// The running reader; dropping it stops the task.
pub struct Reader {
    requests: mpsc::Sender<ChunkRequest>,
    events: mpsc::Receiver<ReaderEvent>,
    task: JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reader {
    /// Start the task on `client` (a connection of its own).
    pub async fn start(
        client: tokio_postgres::Client,
        capture: String,
        watermark: &WatermarkTable,
        server_version_num: i32,
    ) -> Result<Self, BackfillError> {
        let snapshot_sql = if server_version_num >= 130_000 {
            "SELECT pg_snapshot_xmax(s)::text, ARRAY(SELECT x::text FROM pg_snapshot_xip(s) x) FROM pg_current_snapshot() s"
        } else {
            "SELECT txid_snapshot_xmax(s)::text, ARRAY(SELECT x::text FROM txid_snapshot_xip(s) x) FROM txid_current_snapshot() s"
        };
        client
            .batch_execute(super::plan::SESSION_SETTINGS)
            .await
            .map_err(|source| BackfillError::Sql {
                what: "setting up the backfill session",
                table: None,
                source,
            })?;
        let wm_error = {
            let (table, sql_name) = (watermark.to_string(), watermark.sql_name());
            move |source| BackfillError::WatermarkWrite {
                table: table.clone(),
                sql_name: sql_name.clone(),
                source,
            }
        };
        let upsert = client
            .prepare(&watermark.upsert_sql())
            .await
            .map_err(wm_error.clone())?;
        let attributes = client
            .prepare(&super::plan::attributes_sql(server_version_num))
            .await
            .map_err(|source| BackfillError::Sql {
                what: "preparing the column check",
                table: None,
                source,
            })?;
        let (requests, mut inbox) = mpsc::channel::<ChunkRequest>(1);
        let (outbox, events) = mpsc::channel::<ReaderEvent>(2);
        let task = tokio::spawn(async move {
            while let Some(request) = inbox.recv().await {
                let result = async {
                    client
                        .execute(&upsert, &[&capture, &request.low])
                        .await
                        .map_err(wm_error.clone())?;
                    let rows = read_chunk(&client, &request, snapshot_sql, &attributes).await?;
                    if outbox.send(ReaderEvent::Rows(rows)).await.is_err() {
                        return Ok(false);
                    }
                    client
                        .execute(&upsert, &[&capture, &request.high])
                        .await
                        .map_err(wm_error.clone())?;
                    Ok::<bool, BackfillError>(true)
                }
                .await;
                match result {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => {
                        let _ = outbox.send(ReaderEvent::Failed(error)).await;
                        return;
                    }
                }
            }
        });
        Ok(Self {
            requests,
            events,
            task,
        })
    }

    /// Ask for a chunk (the previous one is complete).
    pub async fn request(&self, request: ChunkRequest) -> Result<(), BackfillError> {
        self.requests
            .send(request)
            .await
            .map_err(|_| BackfillError::ReaderGone)
    }

    /// The next report; pending while the reader works.
    pub async fn next(&mut self) -> ReaderEvent {
        match self.events.recv().await {
            Some(event) => event,
            None => ReaderEvent::Failed(BackfillError::ReaderGone),
        }
    }

    /// A report already sent, if any.
    pub fn try_next(&mut self) -> Option<ReaderEvent> {
        match self.events.try_recv() {
            Ok(event) => Some(event),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                Some(ReaderEvent::Failed(BackfillError::ReaderGone))
            }
        }
    }
}

fn sql(what: &'static str, table: &str) -> impl FnOnce(tokio_postgres::Error) -> BackfillError {
    let table = table.to_string();
    move |source| BackfillError::Sql {
        what,
        table: Some(table),
        source,
    }
}

/// Read the chunk with `COPY (chunk query) TO STDOUT`: values arrive in
/// PostgreSQL's text output form, byte for byte what pgoutput sends (see
/// [`crate::copy_text`]), one message per row and no framing per value.
async fn read_chunk(
    client: &tokio_postgres::Client,
    request: &ChunkRequest,
    snapshot_sql: &str,
    attributes: &tokio_postgres::Statement,
) -> Result<ChunkRows, BackfillError> {
    let changed = || BackfillError::ColumnsChanged {
        table: request.table.clone(),
    };
    // A planned column dropped since: the query names it.
    let undefined_column = |e: tokio_postgres::Error| {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN) {
            changed()
        } else {
            sql("reading a chunk", &request.table)(e)
        }
    };
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(sql("starting the chunk transaction", &request.table))?;
    let stream = client
        .copy_out(&format!("COPY ({}) TO STDOUT", request.sql))
        .await
        .map_err(undefined_column)?;
    futures::pin_mut!(stream);
    let mut rows: Vec<Row> = Vec::with_capacity(request.chunk_size.min(100_000));
    let mut more = false;
    while let Some(message) = stream.next().await {
        let message = message.map_err(undefined_column)?;
        if rows.len() == request.chunk_size {
            more = true;
            continue;
        }
        let row = copy_text::parse_row(&message, request.columns).map_err(|reason| {
            BackfillError::CopyRow {
                table: request.table.clone(),
                reason,
            }
        })?;
        rows.push(row);
    }
    // Still the table the plan describes? (The module doc says why this
    // read, in this transaction, is exact.)
    let now = client
        .query(attributes, &[&request.oid])
        .await
        .map_err(sql("reading the table's columns", &request.table))?;
    let same = now.len() == request.table_columns.len()
        && now
            .iter()
            .zip(request.table_columns.iter())
            .all(|(r, (name, ty, typmod))| {
                r.get::<_, &str>(0) == name
                    && r.get::<_, u32>(1) == *ty
                    && r.get::<_, i32>(2) == *typmod
            });
    if !same {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(changed());
    }
    // The same snapshot as the rows': the transaction's.
    let snapshot = client
        .query_one(snapshot_sql, &[])
        .await
        .map_err(sql("reading the chunk's snapshot", &request.table))?;
    client
        .batch_execute("COMMIT")
        .await
        .map_err(sql("ending the chunk transaction", &request.table))?;
    let xid = |text: &str| text.parse::<u64>().map_or(0, |x| x as u32);
    let invisible = Invisible {
        xmax: xid(snapshot.get::<_, &str>(0)),
        xip: snapshot
            .get::<_, Vec<String>>(1)
            .iter()
            .map(|x| xid(x))
            .collect(),
    };
    let last_key = rows.last().map(|row| {
        request
            .key_positions
            .iter()
            .map(|&i| match row.get(i) {
                Some(Datum::Text(t)) => Some(String::from_utf8_lossy(t).into_owned()),
                _ => None,
            })
            .collect()
    });
    Ok(ChunkRows {
        id: request.id,
        rows,
        last_key,
        more,
        invisible,
    })
}
