//! Backfill: the rows already in the tables, read in chunks while the stream
//! keeps flowing, by the watermark method of Netflix's DBLog.
//!
//! ```text
//!  reader task (own SQL connection)          capture loop (the WAL stream)
//!  ───────────────────────────────           ─────────────────────────────
//!  upsert wm row 'low:t:7:…' ──commit──►    L  window opens
//!  SELECT … WHERE key > last                  ·  keys of t's changes recorded
//!        ORDER BY key LIMIT n+1               ·  (new and old key)
//!   (REPEATABLE READ, + snapshot's xip)       ·
//!  rows ──────── channel ──────────────►      ·
//!  upsert wm row 'high:t:7:…' ─commit──►    H  drop rows whose key was recorded,
//!                                               emit the rest as `op: r` here,
//!                                               store the chunk's progress, ask
//!                                               for the next chunk
//! ```
//!
//! **Invariant.** A chunk row is emitted at its high watermark's place in the
//! stream, and only if no change of its key lies between its low and high
//! watermarks. It holds because the chunk's snapshot is taken after the low
//! watermark committed and before the high one is written: it contains every
//! change the stream delivers before L and none it delivers after H. Only the
//! changes between L and H may or may not be in it, and exactly those keys are
//! dropped (the stream carries their newer state). So every emitted row is its
//! key's state at H, placed at H: an `op: r` record never follows a newer
//! change of its key. (A transaction becomes visible a moment after its
//! commit record is written, so "every change before L" is checked rather
//! than assumed: a chunk whose snapshot missed such a transaction is read
//! again, see [`window::missed_commit`].)
//!
//! **Pipelining.** The capture loop asks for chunk k+1 as soon as chunk k's
//! rows are in (their last key is chunk k+1's start), so the reader writes
//! L(k+1), reads and writes H(k+1) while the stream catches up with H(k) and
//! chunk k is encoded. The windows never overlap: L(k+1) commits after H(k)
//! on the reader's one connection, so the stream delivers them in that
//! order, and each window opens only after the previous one closed. Should
//! chunk k have to be read again, chunk k+1 is abandoned (its watermarks
//! match no window, its rows are dropped) and asked for again later; its
//! progress is only ever stored once it was emitted. At most two chunks are
//! held in memory.
//!
//! Watermarks are rows of the watermark table keyed by the capture's name;
//! their changes are never written to Kafka (nor are other captures'). Each
//! run tags its watermarks with a fresh nonce, so the watermarks of an earlier
//! run that the stream replays after a restart open no window.
//!
//! Progress (state, last key, rows) is kept per table in [`Position`]: in
//! exactly-once mode it is committed in the Kafka transaction of the chunk's
//! records; in at-least-once mode it is written to the offsets topic once
//! Kafka acknowledged the chunk (a crash repeats only chunks Kafka had not
//! acknowledged yet).

pub mod plan;
pub mod reader;
pub mod resume;
pub mod window;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use siphon_crds::capture::SnapshotMode;
use siphon_crds::status::TableProgress;

use crate::change::{Change, Datum, Op, Relation};
use crate::config::Validated;
use crate::metrics::Metrics;
use crate::offsets::Position;
use crate::progress::Progress;
use plan::{TablePlan, WatermarkTable};
use reader::{ChunkRequest, ChunkRows, Reader, ReaderEvent};
use resume::{Candidate, DONE, PENDING, RUNNING};
use siphon_postgres::quote_ident;
use window::{ChunkWindow, Seen};

/// Commits remembered for [`window::missed_commit`]: far more than can fall
/// between a commit record and its visibility.
const RECENT_COMMITS: usize = 10_000;

/// Why a backfill cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("PostgreSQL query failed ({what}{}): {source}", table.as_ref().map(|t| format!(", table {t}")).unwrap_or_default())]
    Sql {
        what: &'static str,
        table: Option<String>,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "table {table} has no primary key and no replica identity index, so it cannot be backfilled in key order: add a primary key (ALTER TABLE {sql_table} ADD PRIMARY KEY (...)) or ALTER TABLE {sql_table} REPLICA IDENTITY USING INDEX <unique index on NOT NULL columns> (or name such an index's columns in keyColumns); or set snapshot: false on the table to stream its changes only"
    )]
    NoKey { table: String, sql_table: String },
    #[error("table {table} does not exist: create it, or remove it from tables")]
    TableMissing { table: String },
    #[error(
        "the watermark table {table} does not exist: the operator creates it; when running the worker on its own, run `{ddl}` and `ALTER PUBLICATION {publication} ADD TABLE {sql_name}`"
    )]
    WatermarkTableMissing {
        table: String,
        ddl: String,
        publication: String,
        sql_name: String,
    },
    #[error(
        "publication {publication} does not publish inserts of the watermark table {table}, so no backfill chunk could ever complete: run `ALTER PUBLICATION {} ADD TABLE {sql_name}` (with publish including insert)",
        quote_ident(publication)
    )]
    WatermarkNotPublished {
        table: String,
        publication: String,
        sql_name: String,
    },
    #[error(
        "cannot write the watermark table {table}: {source}; the capture's role needs INSERT and DELETE on it (GRANT INSERT, DELETE ON {sql_name} TO <role>)"
    )]
    WatermarkWrite {
        table: String,
        sql_name: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the backfill reader stopped unexpectedly")]
    ReaderGone,
    #[error("reading a chunk of {table}: {reason} (a bug in Siphon: please report it)")]
    CopyRow {
        table: String,
        reason: crate::copy_text::CopyRowError,
    },
    #[error(
        "the columns of {table} changed during its backfill (ALTER TABLE); the backfill starts again from its last completed chunk with the new columns"
    )]
    ColumnsChanged { table: String },
}

impl BackfillError {
    /// Whether a restart from the stored progress may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            BackfillError::Sql { source, .. } | BackfillError::WatermarkWrite { source, .. } => {
                siphon_postgres::sqlstate::is_transient_error(source)
            }
            BackfillError::ReaderGone | BackfillError::ColumnsChanged { .. } => true,
            _ => false,
        }
    }

    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BackfillError::Sql { .. } => "backfill_sql",
            BackfillError::NoKey { .. } => "backfill_no_key",
            BackfillError::TableMissing { .. } => "backfill_table_missing",
            BackfillError::WatermarkTableMissing { .. } => "watermark_table_missing",
            BackfillError::WatermarkNotPublished { .. } => "watermark_not_published",
            BackfillError::WatermarkWrite { .. } => "watermark_write",
            BackfillError::ReaderGone => "backfill_reader",
            BackfillError::ColumnsChanged { .. } => "backfill_columns_changed",
            BackfillError::CopyRow { .. } => "backfill_copy_row",
        }
    }
}

/// What the loop does with a streamed change.
#[derive(Debug)]
pub enum Offer {
    /// An ordinary change: encode and send it.
    Stream,
    /// A change of the watermark table: never sent.
    Drop,
    /// A high watermark: send these reads now, then report them with
    /// [`Backfill::chunk_emitted`].
    Chunk(ReadyChunk),
    /// A high watermark whose chunk cannot be emitted as read: read it again
    /// with [`Backfill::reread`].
    Reread,
}

/// The surviving rows of a chunk, as changes ready to encode.
#[derive(Debug)]
pub struct ReadyChunk {
    pub changes: Vec<Change>,
    pub summary: ChunkSummary,
}

/// What a chunk did, for the position and the status.
#[derive(Debug, Clone)]
pub struct ChunkSummary {
    pub table: String,
    pub read: usize,
    pub dropped: usize,
    pub last_key: Option<Vec<Option<String>>>,
    pub more: bool,
}

/// The backfill of one run: which tables, where it is, its open window.
pub struct Backfill {
    capture: String,
    watermark: WatermarkTable,
    chunk_size: usize,
    /// Tables to read this run, in order.
    plans: Vec<TablePlan>,
    current: usize,
    next_id: u64,
    nonce: String,
    /// The chunk that reads the current table from its first row, if this
    /// run reads it from there (not resumed after a stored key).
    table_start: Option<u64>,
    /// The chunk whose high watermark the stream is heading for.
    window: Option<(u64, ChunkWindow)>,
    /// The chunk after it, already asked for (see "Pipelining").
    next: Option<(u64, ChunkWindow)>,
    /// Rows the reader handed over for `window` and `next`.
    fetched: Vec<ChunkRows>,
    reader: Option<Reader>,
    /// The current table's relation as the stream last described it.
    streamed: Option<Arc<Relation>>,
    /// On-demand request this run completes.
    request: Option<String>,
    progress: Progress,
    started: Instant,
    server_version_num: i32,
    /// Xids of the stream's latest commits, oldest first, and how many
    /// commits were seen before the first of them.
    recent: VecDeque<u32>,
    recent_base: u64,
    /// Commits seen when the open window's low watermark came by.
    low_seq: Option<u64>,
    /// The transaction being streamed changed the current table.
    touched: bool,
}

impl Backfill {
    /// Decide what this run reads (updating `position`), check the catalog
    /// (keys, watermark table) and report the tables in the progress.
    /// Definite problems surface here, before streaming starts.
    pub async fn prepare(
        sql: &tokio_postgres::Client,
        v: &Validated,
        position: &mut Position,
        progress: &Progress,
    ) -> Result<Self, BackfillError> {
        let cfg = &v.config;
        let watermark = WatermarkTable::parse(&cfg.snapshot.watermark_table);
        let tables = plan::resolve_tables(sql, cfg, &watermark).await?;
        let initial = cfg.snapshot.mode == SnapshotMode::Initial;
        let candidates: Vec<Candidate> = tables
            .iter()
            .map(|(name, spec)| Candidate {
                name: name.clone(),
                enabled: initial && spec.snapshot,
            })
            .collect();
        let outcome = resume::resume(position, &candidates, cfg.snapshot.request.as_ref());
        if !outcome.unknown_requested.is_empty() {
            tracing::warn!(tables = ?outcome.unknown_requested, "snapshot request names tables that are not captured; ignored");
        }
        let mut plans = Vec::with_capacity(outcome.to_read.len());
        let mut version = 0;
        if !outcome.to_read.is_empty() {
            version = sql
                .query_one("SELECT current_setting('server_version_num')::int", &[])
                .await
                .map_err(|source| BackfillError::Sql {
                    what: "reading the server version",
                    table: None,
                    source,
                })?
                .get(0);
            plan::check_watermark(sql, &watermark, &cfg.logical.publication_name).await?;
            for name in &outcome.to_read {
                let Some((_, spec)) = tables.iter().find(|(n, _)| n == name) else {
                    continue;
                };
                let facts =
                    plan::load_facts(sql, name, &cfg.logical.publication_name, version).await?;
                plans.push(plan::plan_table(&facts, spec)?);
            }
        }
        if outcome.to_read.is_empty()
            && let Some(id) = &outcome.request
        {
            position.completed_request = Some(id.clone());
        }
        let table_progress: Vec<TableProgress> = tables
            .iter()
            .map(|(name, _)| {
                let stored = position.backfill.get(name).cloned().unwrap_or_default();
                TableProgress {
                    name: name.clone(),
                    state: stored.state,
                    rows_copied: stored.rows,
                    rows_estimated: plans
                        .iter()
                        .find(|p| &p.name == name)
                        .and_then(|p| p.rows_estimated),
                }
            })
            .collect();
        let completed = position.completed_request.clone();
        progress.update(|p| {
            p.tables = table_progress;
            p.completed_snapshot_request = completed;
        });
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            capture: cfg.name.clone(),
            watermark,
            chunk_size: usize::try_from(cfg.snapshot.chunk_size.max(1)).unwrap_or(10_000),
            plans,
            current: 0,
            table_start: None,
            next_id: 1,
            nonce: format!("{:x}{:x}", std::process::id(), nanos),
            window: None,
            next: None,
            fetched: Vec::with_capacity(2),
            reader: None,
            streamed: None,
            request: outcome.request.filter(|_| !outcome.to_read.is_empty()),
            progress: progress.clone(),
            started: Instant::now(),
            server_version_num: version,
            recent: VecDeque::new(),
            recent_base: 0,
            low_seq: None,
            touched: false,
        })
    }

    /// Whether this run has tables to read.
    pub fn has_work(&self) -> bool {
        self.current < self.plans.len()
    }

    /// Start reading, on a connection of the backfill's own. Call once the
    /// replication stream has started.
    pub async fn start(
        &mut self,
        client: tokio_postgres::Client,
        position: &Position,
    ) -> Result<(), BackfillError> {
        if !self.has_work() {
            return Ok(());
        }
        let reader = Reader::start(
            client,
            self.capture.clone(),
            &self.watermark,
            self.server_version_num,
        )
        .await?;
        self.reader = Some(reader);
        tracing::info!(
            tables = self.plans.len(),
            chunk_size = self.chunk_size,
            "backfill started"
        );
        self.issue(position).await
    }

    /// Whether a chunk is being read (the loop then listens to the reader).
    pub fn is_reading(&self) -> bool {
        self.reader.is_some() && self.window.is_some()
    }

    /// The reader's next report (pending when there is no reader).
    pub async fn next_event(&mut self) -> ReaderEvent {
        match &mut self.reader {
            Some(reader) => reader.next().await,
            None => std::future::pending().await,
        }
    }

    /// Take a report of the reader: keep the rows of a chunk still expected,
    /// and ask for the chunk after the current one as soon as its first key
    /// is known.
    pub async fn accept(&mut self, event: ReaderEvent) -> Result<(), BackfillError> {
        match event {
            ReaderEvent::Rows(rows) => {
                self.keep(rows);
                self.prefetch().await
            }
            ReaderEvent::Failed(error) => Err(error),
        }
    }

    /// Keep rows of `window` or `next`; rows of an abandoned chunk go.
    fn keep(&mut self, rows: ChunkRows) {
        let expected =
            |w: &Option<(u64, ChunkWindow)>| w.as_ref().is_some_and(|(id, _)| *id == rows.id);
        if expected(&self.window) || expected(&self.next) {
            self.fetched.retain(|r| r.id != rows.id);
            self.fetched.push(rows);
        }
    }

    /// Rows of chunk `id`, when the reader handed them over.
    fn take_fetched(&mut self, id: u64) -> Option<ChunkRows> {
        let at = self.fetched.iter().position(|r| r.id == id)?;
        Some(self.fetched.swap_remove(at))
    }

    /// Pipelining: once the current chunk's rows are in and more follow, ask
    /// for the next chunk (keyset from the current chunk's last key) so the
    /// reader reads it while the stream catches up with the current one.
    async fn prefetch(&mut self) -> Result<(), BackfillError> {
        let Some((id, _)) = &self.window else {
            return Ok(());
        };
        if self.next.is_some() {
            return Ok(());
        }
        let Some(rows) = self.fetched.iter().find(|r| r.id == *id) else {
            return Ok(());
        };
        if !rows.more {
            return Ok(());
        }
        let after = rows.last_key.clone();
        let Some((id, window, request)) = self.chunk(after.as_deref()) else {
            return Ok(());
        };
        self.next = Some((id, window));
        self.send(request).await
    }

    /// Look at a streamed change before it is sent (or not).
    pub fn offer(&mut self, change: &Change) -> Result<Offer, BackfillError> {
        if self.watermark.is(&change.relation) {
            if let Some(text) = self.our_watermark(change)
                && let Some((_, window)) = &mut self.window
            {
                match window.watermark(text) {
                    Seen::Opened => {
                        self.low_seq = Some(self.recent_base + self.recent.len() as u64);
                    }
                    Seen::Closed => return self.close(change),
                    Seen::Foreign => {}
                }
            }
            return Ok(Offer::Drop);
        }
        if let Some(plan) = self.plans.get(self.current)
            && change.relation.oid == plan.oid()
        {
            self.touched = true;
            if let Some((_, window)) = &mut self.window {
                window.observe(change);
            }
            if !self
                .streamed
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, &change.relation))
            {
                self.streamed = Some(Arc::clone(&change.relation));
            }
        }
        Ok(Offer::Stream)
    }

    /// A source transaction committed in the stream: remembered, when it
    /// changed the table being read, for [`window::missed_commit`].
    pub fn committed(&mut self, xid: u32) {
        if !std::mem::take(&mut self.touched) {
            return;
        }
        self.recent.push_back(xid);
        if self.recent.len() > RECENT_COMMITS {
            self.recent.pop_front();
            self.recent_base += 1;
        }
    }

    /// The watermark text of a change of the watermark table, when it is
    /// this capture's row.
    fn our_watermark<'c>(&self, change: &'c Change) -> Option<&'c str> {
        if !matches!(change.op, Op::Insert | Op::Update) {
            return None;
        }
        let columns = &change.relation.columns;
        let capture = columns.iter().position(|c| c.name == "capture")?;
        let watermark = columns.iter().position(|c| c.name == "watermark")?;
        let row = change.new.as_ref()?;
        let text = |i: usize| match row.get(i) {
            Some(Datum::Text(t)) => std::str::from_utf8(t).ok(),
            _ => None,
        };
        (text(capture)? == self.capture).then_some(())?;
        text(watermark)
    }

    /// The high watermark came by: the surviving rows, as reads placed here.
    fn close(&mut self, high: &Change) -> Result<Offer, BackfillError> {
        let Some((id, window)) = self.window.take() else {
            return Ok(Offer::Stream);
        };
        // The reader hands the rows over before it writes the high
        // watermark, so they are in the channel by now.
        while !self.fetched.iter().any(|r| r.id == id) {
            match self.reader.as_mut().and_then(Reader::try_next) {
                Some(ReaderEvent::Rows(rows)) => self.keep(rows),
                Some(ReaderEvent::Failed(error)) => return Err(error),
                None => break,
            }
        }
        let fetched = self.take_fetched(id);
        let Some(plan) = self.plans.get(self.current) else {
            return Ok(Offer::Drop);
        };
        let before_low = self
            .low_seq
            .take()
            .map_or(0, |seq| seq.saturating_sub(self.recent_base) as usize)
            .min(self.recent.len());
        let usable = match fetched {
            None => {
                tracing::warn!(table = %plan.name, chunk = id, "high watermark without its rows; reading the chunk again");
                None
            }
            Some(_) if window.must_reread() => {
                tracing::info!(table = %plan.name, chunk = id, "a key changed inside the window could not be read; reading the chunk again");
                None
            }
            Some(chunk) => match window::missed_commit(
                self.recent.range(..before_low).copied(),
                &chunk.invisible,
            ) {
                Some(xid) => {
                    tracing::info!(table = %plan.name, chunk = id, xid, "a transaction committed before the low watermark was not yet visible to the chunk; reading the chunk again");
                    None
                }
                None => Some(chunk),
            },
        };
        let Some(chunk) = usable else {
            // The chunk asked for after this one starts from a key that is
            // not confirmed: abandon it (its watermarks open no window, its
            // rows are not kept) and read this one again.
            self.next = None;
            self.fetched.clear();
            return Ok(Offer::Reread);
        };
        // The next chunk's window, if asked for, is the one the stream heads
        // for now (its low watermark comes after this high one).
        self.window = self.next.take();
        let read = chunk.rows.len();
        let (kept, dropped) = window.survivors(chunk.rows, &plan.key_positions);
        let relation = match &self.streamed {
            Some(s) if same_columns(s, &plan.relation) => Arc::clone(s),
            _ => Arc::clone(&plan.relation),
        };
        let (first_table, last_table) = (self.current == 0, self.current + 1 == self.plans.len());
        let first_chunk = self.table_start == Some(id);
        let count = kept.len();
        let changes = kept
            .into_iter()
            .enumerate()
            .map(|(i, row)| Change {
                op: Op::Read,
                relation: Arc::clone(&relation),
                old: None,
                new: Some(row),
                commit_lsn: high.commit_lsn,
                lsn: high.lsn,
                last_commit_end: crate::change::Lsn(0),
                xid: 0,
                commit_ts_us: high.commit_ts_us,
                snapshot: Some(snapshot_marker(
                    first_table,
                    last_table,
                    first_chunk && i == 0,
                    !chunk.more && i + 1 == count,
                )),
            })
            .collect();
        tracing::debug!(table = %plan.name, chunk = id, read, dropped, keys_changed = window.changed_keys(), lsn = %high.commit_lsn, "chunk emitted at its high watermark");
        Ok(Offer::Chunk(ReadyChunk {
            changes,
            summary: ChunkSummary {
                table: plan.name.clone(),
                read,
                dropped,
                last_key: chunk.last_key,
                more: chunk.more,
            },
        }))
    }

    /// A chunk's reads were handed to the sink: record its progress in the
    /// position and the status, then ask for the next chunk.
    pub async fn chunk_emitted(
        &mut self,
        summary: ChunkSummary,
        position: &mut Position,
        metrics: &Metrics,
    ) -> Result<(), BackfillError> {
        let emitted = (summary.read - summary.dropped) as u64;
        metrics.backfill_rows.inc_by(emitted);
        let entry = position.backfill.entry(summary.table.clone()).or_default();
        entry.rows += emitted;
        if summary.last_key.is_some() {
            entry.last_key = summary.last_key;
        }
        entry.state = if summary.more { RUNNING } else { DONE }.into();
        let (state, rows) = (entry.state.clone(), entry.rows);
        let name = summary.table.clone();
        let label = crate::metrics::TableLabels {
            table: name.clone(),
        };
        metrics
            .backfill_table_rows
            .get_or_create(&label)
            .set(rows as i64);
        metrics
            .backfill_table_complete
            .get_or_create(&label)
            .set(i64::from(!summary.more));
        self.progress.update(|p| {
            if let Some(t) = p.tables.iter_mut().find(|t| t.name == name) {
                t.state = state;
                t.rows_copied = rows;
            }
        });
        if summary.more {
            return match self.window {
                // Already asked for; maybe ask for the one after it.
                Some(_) => self.prefetch().await,
                None => self.issue(position).await,
            };
        }
        tracing::info!(table = %summary.table, rows, "table backfilled");
        self.current += 1;
        self.streamed = None;
        self.recent_base += self.recent.len() as u64;
        self.recent.clear();
        if self.has_work() {
            return self.issue(position).await;
        }
        self.reader = None;
        tracing::info!(elapsed = ?self.started.elapsed(), "backfill complete");
        if let Some(id) = self.request.take() {
            position.completed_request = Some(id.clone());
            self.progress
                .update(|p| p.completed_snapshot_request = Some(id));
        }
        Ok(())
    }

    /// Read the current chunk again, under new watermarks.
    pub async fn reread(&mut self, position: &Position) -> Result<(), BackfillError> {
        self.issue(position).await
    }

    /// Open the window of the current table's next chunk after the stored
    /// progress and ask the reader for it.
    async fn issue(&mut self, position: &Position) -> Result<(), BackfillError> {
        let Some(plan) = self.plans.get(self.current) else {
            return Ok(());
        };
        let stored = position.backfill.get(&plan.name);
        if stored.is_some_and(|s| s.state == PENDING) {
            let name = plan.name.clone();
            self.progress.update(|p| {
                if let Some(t) = p.tables.iter_mut().find(|t| t.name == name) {
                    t.state = RUNNING.into();
                }
            });
        }
        let after = stored.and_then(|s| s.last_key.clone());
        let Some((id, window, request)) = self.chunk(after.as_deref()) else {
            return Ok(());
        };
        self.low_seq = None;
        self.window = Some((id, window));
        self.next = None;
        self.fetched.clear();
        self.send(request).await
    }

    async fn send(&self, request: ChunkRequest) -> Result<(), BackfillError> {
        match &self.reader {
            Some(reader) => reader.request(request).await,
            None => Ok(()),
        }
    }

    /// The window and the request of the current table's chunk after key
    /// `after` (from the first row when `None`).
    fn chunk(
        &mut self,
        after: Option<&[Option<String>]>,
    ) -> Option<(u64, ChunkWindow, ChunkRequest)> {
        let plan = self.plans.get(self.current)?;
        self.reader.as_ref()?;
        let id = self.next_id;
        self.next_id += 1;
        let low = format!("low:{}:{id}:{}", plan.name, self.nonce);
        let high = format!("high:{}:{id}:{}", plan.name, self.nonce);
        let limit = self.chunk_size as u64 + 1;
        let request = ChunkRequest {
            id,
            table: plan.name.clone(),
            sql: plan.chunk_sql(after, limit),
            columns: plan.relation.columns.len(),
            chunk_size: self.chunk_size,
            key_positions: plan.key_positions.clone(),
            oid: plan.oid(),
            table_columns: Arc::clone(&plan.table_columns),
            low: low.clone(),
            high: high.clone(),
        };
        let window = ChunkWindow::new(plan.oid(), plan.key_names.clone(), low, high);
        if after.is_none() {
            self.table_start = Some(id);
        }
        Some((id, window, request))
    }
}

/// `source.snapshot` of a backfill read, as Debezium marks its snapshot
/// records: `last` for the backfill's last row, `first` for its first,
/// `last_in_data_collection`/`first_in_data_collection` for the last and
/// first row of each other table, `true` for the rest. A table resumed after
/// a stored key has no first row in this run.
fn snapshot_marker(
    first_table: bool,
    last_table: bool,
    first_row: bool,
    last_row: bool,
) -> &'static str {
    match (first_row, last_row) {
        (_, true) if last_table => "last",
        (true, _) if first_table => "first",
        (_, true) => "last_in_data_collection",
        (true, _) => "first_in_data_collection",
        _ => "true",
    }
}

/// Whether a streamed relation describes the same columns as the plan's.
fn same_columns(streamed: &Relation, planned: &Relation) -> bool {
    streamed.oid == planned.oid
        && streamed.columns.len() == planned.columns.len()
        && streamed
            .columns
            .iter()
            .zip(&planned.columns)
            .all(|(a, b)| a.name == b.name)
}

#[cfg(test)]
mod tests {
    use super::snapshot_marker;

    #[test]
    fn reads_are_marked_as_debezium_marks_its_snapshot() {
        // (first table, last table, first row, last row)
        let one_table = [
            ((true, true, true, false), "first"),
            ((true, true, false, false), "true"),
            ((true, true, false, true), "last"),
            // A one-row backfill: its row is the last.
            ((true, true, true, true), "last"),
        ];
        let two_tables = [
            ((true, false, true, false), "first"),
            ((true, false, false, true), "last_in_data_collection"),
            ((false, true, true, false), "first_in_data_collection"),
            ((false, true, false, false), "true"),
            ((false, true, false, true), "last"),
            // A one-row first table among several: first before last-in-table.
            ((true, false, true, true), "first"),
        ];
        for ((first_table, last_table, first_row, last_row), marker) in
            one_table.into_iter().chain(two_tables)
        {
            assert_eq!(
                snapshot_marker(first_table, last_table, first_row, last_row),
                marker,
                "{first_table} {last_table} {first_row} {last_row}"
            );
        }
    }
}
