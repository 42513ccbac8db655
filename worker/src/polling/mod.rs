//! Cursor polling: the capture source for databases without logical
//! replication (no `wal_level = logical`, no REPLICATION role, a read
//! replica, a connection pooler).
//!
//! ```text
//!  interval tick ─┐
//!  NOTIFY ────────┼─► poll ─► [horizon] ─► BEGIN REPEATABLE READ READ ONLY
//!  backlog left ──┘            │  1. drain the deletes table  ──► op d + tombstone
//!                              │  2. per table: window re-read ──► late rows only
//!                              │               forward keyset  ──► op c (Append) / u (Upsert)
//!                              └─ COMMIT ─► close the poll: position ─► offsets topic
//!                                                          drained deletes ─► removed
//! ```
//!
//! One task, one `tokio::select!` whose arms are taken in priority order:
//! 1. shutdown: drain the sink, save the position, stop;
//! 2. Kafka acknowledgements (at least once): save the newest position all
//!    of whose records Kafka holds, then remove the deletes it covers;
//! 3. the status tick: Kafka's health, progress into the status;
//! 4. a poll: at once while a backlog remains; shortly (100 ms, 500 ms while
//!    an open transaction holds it) while rows wait beyond the horizon; on a
//!    notification; or when the interval passes (a notified poll restarts
//!    the interval, so an idle capture costs one poll per interval).
//!
//! **Invariant (at least once).** A position is written to the offsets topic
//! only after Kafka acknowledged every record read before it, and a drained
//! delete is removed from the deletes table only after its record was
//! acknowledged. A restart resumes from the stored position: rows after it
//! are read again (repeats, never a gap).
//!
//! **Invariant (exactly once).** A poll's records, its position and the list
//! of deletes it drained go into one Kafka transaction; the deletes are
//! removed from the table after the commit, and a restart removes the ones
//! the stored position lists before draining again. A `read_committed`
//! consumer sees each row version and each delete once.
//!
//! **Invariant (order).** Within a poll every read shares one snapshot, and
//! deletes are drained before any table is polled (a poll whose drain hit
//! the batch size polls no table): a key deleted and inserted again is
//! always `d` then `c`, never the reverse, so the topic's reduced state
//! holds the row.

pub mod deletes;
pub mod horizon;
pub mod plan;
pub mod window;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use siphon_crds::capture::{Delivery, PollingSemantics};
use siphon_crds::conditions::reason;
use siphon_crds::polling::{CursorKind, Lateness};
use siphon_crds::status::{PolledTable, PollingProgress};
use tokio::sync::{Notify, watch};
use tokio_postgres::SimpleQueryMessage;

use crate::capture::{
    CaptureError, Output, Stopped, announce_capturing, kafka_health, kafka_ids, sql_connect,
    sql_connect_with, start_kafka, ticker,
};
use crate::change::{Change, Datum, Lsn, Op, Row};
use crate::config::Validated;
use crate::metrics::{Metrics, ReasonLabels, TableLabels};
use crate::offsets::Position;
use crate::progress::Progress;
use crate::record::{EncoderSettings, RecordEncoder};
use crate::sink::{KafkaSink, options};
use crate::values::registry::TypeRegistry;
use horizon::Horizon;
use plan::{PollTable, Start};
use window::{Delivered, Verdict};

/// How often health and progress are refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How often acknowledgements are turned into saved positions.
const CONFIRM_INTERVAL: Duration = Duration::from_millis(10);

/// Why polling stopped.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("PostgreSQL query failed ({what}{}): {source}", .table.as_ref().map(|t| format!(", table {t}")).unwrap_or_default())]
    Sql {
        what: &'static str,
        table: Option<String>,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("table {table} does not exist: create it or remove it from tables")]
    TableMissing { table: String },
    #[error(
        "table {table} has no primary key: add one, or set keyColumns to columns covered by a unique index on NOT NULL columns"
    )]
    NoKey { table: String },
    #[error(
        "{table} has no cursor column {column:?}: set polling.cursorColumn (or tables[].cursorColumn) to a column that grows with every change"
    )]
    CursorMissing { table: String, column: String },
    #[error(
        "cursor column {column:?} of {table} has a type polling cannot order by: use a column of type {}",
        siphon_crds::polling::CursorKind::SUPPORTED
    )]
    CursorType { table: String, column: String },
    #[error("the query of {table} cannot be polled: {message}")]
    Query { table: String, message: String },
    #[error(
        "lateness: Auto needs a timestamptz cursor set by the database's clock; {table}'s cursor {column:?} is not one: use a timestamptz column with DEFAULT now() (or a trigger), or a lateness window such as 30s"
    )]
    NoHorizon { table: String, column: String },
    #[error(
        "a lateness window re-reads a span of time behind the position; {table}'s cursor {column:?} is a number: leave lateness unset, or use a timestamptz cursor"
    )]
    WindowOnNumber { table: String, column: String },
    #[error("the LISTEN connection closed; the worker reconnects")]
    ListenLost,
}

impl PollError {
    /// Whether a restart from the stored position may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            PollError::Sql { source, .. } => siphon_postgres::sqlstate::is_transient_error(source),
            PollError::ListenLost => true,
            _ => false,
        }
    }

    /// The reason of `Capturing=False` when it stops the worker.
    pub fn reason(&self) -> &'static str {
        match self {
            PollError::TableMissing { .. } => reason::TABLE_NOT_FOUND,
            PollError::NoKey { .. } => reason::NO_PRIMARY_KEY,
            PollError::CursorMissing { .. } => reason::CURSOR_COLUMN_MISSING,
            PollError::CursorType { .. } => reason::CURSOR_TYPE_UNSUPPORTED,
            PollError::Query { .. } => reason::INVALID_QUERY,
            PollError::NoHorizon { .. } => reason::HORIZON_UNAVAILABLE,
            PollError::WindowOnNumber { .. } => reason::INVALID_SPEC,
            PollError::Sql { source, .. } if source.code().map(|c| c.code()) == Some("42501") => {
                reason::INSUFFICIENT_PRIVILEGE
            }
            _ => reason::CAPTURE_FAILED,
        }
    }

    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PollError::Sql { .. } => "poll_sql",
            PollError::ListenLost => "listen_lost",
            _ => "poll_unfit",
        }
    }
}

/// When to poll next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// A batch came back full: rows are left.
    Now,
    /// Rows wait beyond the horizon (`lateness: Auto`): poll again shortly,
    /// whatever the interval, until the horizon lets them through.
    Soon,
    /// Read to the end: the interval (or a notification).
    Idle,
}

/// A poll again while rows wait beyond a horizon set by the clock (the
/// guard passes), and while an open transaction holds it.
const HORIZON_RETRY: Duration = Duration::from_millis(100);
const HORIZON_HELD_RETRY: Duration = Duration::from_millis(500);

/// One table being polled.
struct Table {
    plan: PollTable,
    delivered: Delivered,
    rows: u64,
    /// The last forward read found fewer rows than a batch.
    caught_up: bool,
    label: TableLabels,
}

/// A poll's position and the deletes it drained, waiting for Kafka (at
/// least once).
struct Unsaved {
    position: Position,
    deletes: Vec<i64>,
}

/// A row of a simple query as datums (text, or null).
fn datums(row: &tokio_postgres::SimpleQueryRow) -> Result<Row, tokio_postgres::Error> {
    let mut values = Vec::with_capacity(row.len());
    for i in 0..row.len() {
        values.push(match row.try_get(i)? {
            Some(text) => Datum::Text(Bytes::copy_from_slice(text.as_bytes())),
            None => Datum::Null,
        });
    }
    Ok(values)
}

/// A polled row as a change (pure): no WAL position, the cursor's time as
/// the commit time when the cursor is a time.
fn row_change(t: &PollTable, op: Op, row: Row) -> Change {
    let commit_ts_us = cursor_time_us(t.cursor_kind, row.get(t.cursor))
        .unwrap_or_else(|| chrono::Utc::now().timestamp_micros());
    Change {
        op,
        relation: Arc::clone(&t.relation),
        old: None,
        new: Some(row),
        commit_lsn: Lsn(0),
        lsn: Lsn(0),
        last_commit_end: Lsn(0),
        xid: 0,
        commit_ts_us,
        snapshot: None,
    }
}

/// State of the loop between polls.
struct Poller<'a> {
    metrics: &'a Metrics,
    progress: &'a Progress,
    sql: tokio_postgres::Client,
    /// Records out and positions saved; the poll number is the mark.
    out: Output<'a, u64, Unsaved>,
    tables: Vec<Table>,
    position: Position,
    exactly_once: bool,
    lateness: Lateness,
    semantics: PollingSemantics,
    batch: u32,
    initial: Option<String>,
    deletes_table: Option<String>,
    /// Deletes read into Kafka and not yet removed from the deletes table.
    drained: BTreeSet<i64>,
    polls: u64,
    horizon: Option<Horizon>,
    /// The last poll left rows waiting beyond the horizon.
    waiting: bool,
    deletes_total: u64,
}

impl Poller<'_> {
    async fn query(&self, sql: &str, table: &str) -> Result<Vec<Row>, CaptureError> {
        let err = |source| PollError::Sql {
            what: "polling",
            table: Some(table.to_string()),
            source,
        };
        let stream = self.sql.simple_query_raw(sql).await.map_err(err)?;
        futures::pin_mut!(stream);
        let mut rows = Vec::new();
        while let Some(message) = stream.next().await {
            let SimpleQueryMessage::Row(row) = message.map_err(err)? else {
                continue;
            };
            rows.push(datums(&row).map_err(err)?);
        }
        Ok(rows)
    }

    /// One poll: every read in one snapshot, then the poll is closed.
    /// Returns when to poll next.
    async fn poll(&mut self) -> Result<Next, CaptureError> {
        let started = Instant::now();
        self.polls += 1;
        self.out.take_sent();
        let horizon = match self.lateness {
            Lateness::Auto => Some(horizon::read(&self.sql).await?),
            _ => None,
        };
        let reads = self.tables.len()
            * if matches!(self.lateness, Lateness::Window(_)) {
                2
            } else {
                1
            }
            + self.tables.iter().filter(|t| t.plan.notify).count();
        // One statement is its own snapshot; more share a transaction's.
        let in_txn = reads > 1;
        let sql_err = |what: &'static str| {
            move |source| PollError::Sql {
                what,
                table: None,
                source,
            }
        };
        if in_txn {
            self.sql
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(sql_err("starting the poll's transaction"))?;
        }
        let before = horizon.as_ref().map(|h| h.before.clone());
        let read = self.read(before.as_deref()).await;
        if in_txn {
            let end = if read.is_ok() { "COMMIT" } else { "ROLLBACK" };
            self.sql
                .batch_execute(end)
                .await
                .map_err(sql_err("ending the poll's transaction"))?;
        }
        let (next, drained) = read?;
        self.horizon = horizon;
        self.waiting = next == Next::Soon;
        self.close(drained).await?;
        self.metrics
            .poll_duration
            .observe(started.elapsed().as_secs_f64());
        self.report();
        Ok(next)
    }

    /// The reads of one poll: deletes first, then each table.
    async fn read(&mut self, horizon: Option<&str>) -> Result<(Next, Vec<i64>), CaptureError> {
        let mut drained = Vec::new();
        let mut backlog = false;
        let mut waiting = false;
        if let Some(deletes_table) = self.deletes_table.clone() {
            for i in 0..self.tables.len() {
                let Some(sql) = deletes::drain_sql(
                    &deletes_table,
                    &self.tables[i].plan,
                    self.batch,
                    &self.drained,
                ) else {
                    continue;
                };
                if !self.tables[i].plan.notify {
                    continue;
                }
                let rows = self.query(&sql, &self.tables[i].plan.name).await?;
                backlog |= rows.len() as u32 >= self.batch;
                for row in rows {
                    let (seq, change) = self.delete_change(i, row);
                    self.out.emit(&change).await?;
                    drained.push(seq);
                }
            }
            self.deletes_total += drained.len() as u64;
            self.metrics.polled_deletes.inc_by(drained.len() as u64);
            if backlog {
                // A key's delete must reach Kafka before a later insert of it.
                return Ok((Next::Now, drained));
            }
        }
        for i in 0..self.tables.len() {
            let name = self.tables[i].plan.name.clone();
            if let (Lateness::Window(w), Some(at)) =
                (self.lateness, self.position.polled.get(&name).cloned())
            {
                let sql = self.tables[i].plan.window_sql(&at, w);
                for row in self.query(&sql, &name).await? {
                    let Some(at) = self.tables[i].plan.position_of(&row) else {
                        continue;
                    };
                    if self.tables[i].delivered.window_row(at, self.exactly_once) == Verdict::Late {
                        let change = row_change(&self.tables[i].plan, self.row_op(), row);
                        self.out.emit(&change).await?;
                        self.count_row(i);
                    }
                }
            }
            let sql = {
                let start = match self.position.polled.get(&name) {
                    Some(at) => Start::After(at),
                    None => match &self.initial {
                        Some(v) => Start::AtLeast(v),
                        None => Start::Beginning,
                    },
                };
                self.tables[i].plan.forward_sql(start, horizon, self.batch)
            };
            // Rows are encoded and handed to Kafka as they arrive: the
            // server sends the rest of the batch meanwhile, and memory holds
            // one row, not the batch.
            let op = self.row_op();
            let window = matches!(self.lateness, Lateness::Window(_));
            let err = |source| PollError::Sql {
                what: "polling",
                table: Some(name.clone()),
                source,
            };
            let stream = self.sql.simple_query_raw(&sql).await.map_err(err)?;
            futures::pin_mut!(stream);
            let table = &mut self.tables[i];
            let mut read: u32 = 0;
            let mut newest: Option<Change> = None;
            while let Some(message) = stream.next().await {
                let SimpleQueryMessage::Row(row) = message.map_err(err)? else {
                    continue;
                };
                let row = datums(&row).map_err(err)?;
                if window && let Some(at) = table.plan.position_of(&row) {
                    table.delivered.forward_row(at);
                }
                let change = row_change(&table.plan, op, row);
                self.out.emit(&change).await?;
                read += 1;
                newest = Some(change);
            }
            table.rows += u64::from(read);
            self.metrics
                .polled_rows
                .get_or_create(&table.label)
                .inc_by(u64::from(read));
            let full = read >= self.batch;
            let last = newest.and_then(|c| table.plan.position_of(c.new.as_deref()?));
            if let Some(at) = last {
                self.position.polled.insert(name.clone(), at);
            }
            self.tables[i].delivered.poll_done();
            self.tables[i].caught_up = !full;
            backlog |= full;
            if let (false, Some(h)) = (full, horizon) {
                let start = match self.position.polled.get(&name) {
                    Some(at) => Start::After(at),
                    None => match &self.initial {
                        Some(v) => Start::AtLeast(v),
                        None => Start::Beginning,
                    },
                };
                let probe = self.tables[i].plan.beyond_horizon_sql(start, h);
                waiting |= !self.query(&probe, &name).await?.is_empty();
            }
        }
        let next = if backlog {
            Next::Now
        } else if waiting {
            Next::Soon
        } else {
            Next::Idle
        };
        Ok((next, drained))
    }

    fn row_op(&self) -> Op {
        match self.semantics {
            PollingSemantics::Append => Op::Insert,
            PollingSemantics::Upsert => Op::Update,
        }
    }

    fn count_row(&mut self, table: usize) {
        let t = &mut self.tables[table];
        t.rows += 1;
        self.metrics.polled_rows.get_or_create(&t.label).inc();
    }

    /// A drained row of the deletes table as a change: `seq`, whether it
    /// is a TRUNCATE, the key values.
    fn delete_change(&self, table: usize, row: Row) -> (i64, Change) {
        let text = |d: Option<&Datum>| match d {
            Some(Datum::Text(t)) => String::from_utf8_lossy(t).into_owned(),
            _ => String::new(),
        };
        let seq = text(row.first()).parse::<i64>().unwrap_or_default();
        let truncate = text(row.get(1)) == "true";
        let plan = &self.tables[table].plan;
        let mut old: Row = vec![Datum::Null; plan.relation.columns.len()];
        for (k, &i) in plan.keys.iter().enumerate() {
            old[i] = row.get(2 + k).cloned().unwrap_or(Datum::Null);
        }
        let change = Change {
            op: if truncate { Op::Truncate } else { Op::Delete },
            relation: Arc::clone(&plan.relation),
            old: (!truncate).then_some(old),
            new: None,
            commit_lsn: Lsn(0),
            lsn: Lsn(0),
            last_commit_end: Lsn(0),
            xid: 0,
            commit_ts_us: chrono::Utc::now().timestamp_micros(),
            snapshot: None,
        };
        (seq, change)
    }

    /// Close a poll: exactly once, commit its Kafka transaction with the
    /// position; at least once, mark its records and keep its position
    /// until Kafka acknowledged them.
    async fn close(&mut self, drained: Vec<i64>) -> Result<(), CaptureError> {
        self.drained.extend(drained.iter().copied());
        let sent = self.out.take_sent();
        if self.out.is_exactly_once() {
            if !self.out.transaction_open() {
                return Ok(());
            }
            self.position.drained_deletes = self.drained.iter().copied().collect();
            self.out.ended(self.polls, true);
            let payload = self.position.encode();
            self.out.commit(|_| payload).await?;
            let all: Vec<i64> = self.drained.iter().copied().collect();
            self.remove_deletes(&all).await?;
            return Ok(());
        }
        if sent == 0 {
            return Ok(());
        }
        self.out.ended(self.polls, false);
        self.out.save_when_acked(
            self.polls,
            Unsaved {
                position: self.position.clone(),
                deletes: drained,
            },
        );
        Ok(())
    }

    /// At least once: save the newest position whose records Kafka holds
    /// in full, then remove the deletes it covers.
    async fn save_acknowledged(&mut self) -> Result<(), CaptureError> {
        let mut newest = None;
        let mut deletes = Vec::new();
        for u in self.out.acknowledged() {
            deletes.extend(u.deletes);
            newest = Some(u.position);
        }
        let Some(mut position) = newest else {
            return Ok(());
        };
        position.drained_deletes = deletes.clone();
        self.out.write_position(&position.encode()).await?;
        self.remove_deletes(&deletes).await
    }

    /// Remove delivered deletes from the deletes table.
    async fn remove_deletes(&mut self, seqs: &[i64]) -> Result<(), CaptureError> {
        let Some(table) = &self.deletes_table else {
            return Ok(());
        };
        if seqs.is_empty() {
            return Ok(());
        }
        self.sql
            .execute(&deletes::remove_sql(table), &[&seqs])
            .await
            .map_err(|source| PollError::Sql {
                what: "removing delivered deletes",
                table: Some(table.clone()),
                source,
            })?;
        for s in seqs {
            self.drained.remove(s);
        }
        Ok(())
    }

    /// Progress and lag into the status and the metrics.
    fn report(&self) {
        let now_us = chrono::Utc::now().timestamp_micros();
        let mut worst: f64 = 0.0;
        let tables: Vec<PolledTable> = self
            .tables
            .iter()
            .map(|t| {
                let at = self.position.polled.get(&t.plan.name);
                let lag = if t.caught_up {
                    // Read to the end (0), or to a horizon that holds rows
                    // back: they wait since the horizon.
                    Some(match (&self.horizon, self.waiting) {
                        (Some(h), true) => cursor_time_of(CursorKind::TimestampTz, &h.before)
                            .map_or(0.0, |us| ((now_us - us).max(0)) as f64 / 1e6),
                        _ => 0.0,
                    })
                } else {
                    at.and_then(|p| cursor_time_of(t.plan.cursor_kind, &p.cursor))
                        .map(|us| ((now_us - us).max(0)) as f64 / 1e6)
                };
                if let Some(l) = lag {
                    worst = worst.max(l);
                }
                PolledTable {
                    name: t.plan.name.clone(),
                    cursor: at.map(|p| p.cursor.clone()),
                    rows: t.rows,
                    lag: lag.map(|l| format!("{l:.1}s")),
                }
            })
            .collect();
        self.metrics.lag_seconds.set(worst);
        self.metrics
            .in_flight
            .set(self.out.sink().in_flight() as i64);
        let events = self.metrics.events.get();
        let horizon = self.horizon.clone();
        let deletes = self.deletes_total;
        self.progress.update(|p| {
            p.events = events;
            p.lag = Some(format!("{worst:.1}s"));
            p.polling = Some(PollingProgress {
                tables,
                horizon: horizon.as_ref().map(|h| h.before.clone()),
                held_by: horizon.and_then(|h| h.held_by),
                deletes,
            });
        });
    }
}

/// Microseconds since the epoch of a time cursor's text (any session
/// TimeZone: the offset is in the text); `None` for numbers and infinities.
fn cursor_time_of(kind: CursorKind, text: &str) -> Option<i64> {
    use crate::values::temporal::{self, Instant};
    let finite = |i: Option<Instant>| match i {
        Some(Instant::Finite(v)) => Some(v),
        _ => None,
    };
    match kind {
        CursorKind::Number => None,
        CursorKind::TimestampTz => finite(temporal::parse_timestamptz(text.as_bytes())),
        CursorKind::Timestamp => finite(temporal::parse_timestamp(text.as_bytes())),
        CursorKind::Date => finite(temporal::parse_date(text.as_bytes()))
            .and_then(|days| days.checked_mul(86_400_000_000)),
    }
}

fn cursor_time_us(kind: CursorKind, value: Option<&Datum>) -> Option<i64> {
    match value {
        Some(Datum::Text(t)) => cursor_time_of(kind, std::str::from_utf8(t).ok()?),
        _ => None,
    }
}

/// Plan every configured table (or query).
async fn plan_tables(
    sql: &tokio_postgres::Client,
    v: &Validated,
) -> Result<Vec<PollTable>, CaptureError> {
    let cfg = &v.config;
    let Some(polling) = &cfg.polling else {
        return Ok(Vec::new());
    };
    let version: i32 = sql
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|source| PollError::Sql {
            what: "reading the server version",
            table: None,
            source,
        })?
        .get(0);
    let mut out = Vec::new();
    for (i, spec) in cfg.tables.iter().enumerate() {
        let table = match &spec.query {
            Some(query) => {
                let described = plan::describe(sql, &spec.name, query).await?;
                // Queries have no oid: numbers no table uses.
                plan::plan_query(spec, query, &described, u32::MAX - i as u32, polling)?
            }
            None => {
                let facts = crate::backfill::plan::load_facts(sql, &spec.name, "", version)
                    .await
                    .map_err(|e| match e {
                        crate::backfill::BackfillError::TableMissing { table } => {
                            CaptureError::Polling(PollError::TableMissing { table })
                        }
                        other => CaptureError::Backfill(other),
                    })?;
                plan::plan_table(&facts, spec, polling)?
            }
        };
        if v.derived.lateness == Lateness::Auto && table.cursor_kind != CursorKind::TimestampTz {
            return Err(PollError::NoHorizon {
                table: table.name.clone(),
                column: table.cursor_name().to_string(),
            }
            .into());
        }
        if matches!(v.derived.lateness, Lateness::Window(_)) && !table.cursor_kind.is_time() {
            return Err(PollError::WindowOnNumber {
                table: table.name.clone(),
                column: table.cursor_name().to_string(),
            }
            .into());
        }
        out.push(table);
    }
    Ok(out)
}

/// Poll until shutdown or an error.
pub async fn run(
    v: &Validated,
    metrics: Arc<Metrics>,
    progress: Progress,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Stopped, CaptureError> {
    let cfg = &v.config;
    let Some(polling) = cfg.polling.clone() else {
        return Err(PollError::Query {
            table: String::new(),
            message: "polling is missing from the configuration".into(),
        }
        .into());
    };
    let exactly_once = cfg.kafka.delivery == Delivery::ExactlyOnce;
    let (client_id, tx_id) = kafka_ids(v);
    let props = options::producer_properties(&cfg.kafka, &v.secrets, &client_id, tx_id.as_deref());
    tracing::debug!(properties = ?options::redacted(&props), "kafka producer");

    let wake = Arc::new(Notify::new());
    let sql = sql_connect(v).await?;
    let registry = TypeRegistry::load(&sql).await.unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot read pg_type; non-built-in types are encoded as text");
        TypeRegistry::builtin()
    });
    let plans = plan_tables(&sql, v).await?;
    let encoder = RecordEncoder::new(EncoderSettings::from_config(cfg), Arc::new(registry));
    let topic_names: Vec<String> = plans
        .iter()
        .map(|t| encoder.topic_for(&t.relation.schema, &t.relation.name))
        .collect();
    let (sink, position): (KafkaSink<u64>, _) = start_kafka(v, &props, &topic_names).await?;

    // LISTEN before the first poll: a change committed after it wakes us.
    let notify = cfg.notify.as_ref().filter(|_| polling.notify);
    let listener = match notify {
        Some(n) => {
            let client = sql_connect_with(v, Some(wake.clone())).await?;
            client
                .batch_execute(&format!(
                    "LISTEN {}",
                    siphon_postgres::quote_ident(&n.channel)
                ))
                .await
                .map_err(|source| PollError::Sql {
                    what: "LISTEN",
                    table: None,
                    source,
                })?;
            Some(client)
        }
        None => None,
    };

    let mut state = Poller {
        metrics: &metrics,
        progress: &progress,
        sql,
        out: Output::new(v, &metrics, sink, encoder),
        tables: plans
            .into_iter()
            .map(|plan| Table {
                label: TableLabels {
                    table: plan.name.clone(),
                },
                plan,
                delivered: Delivered::default(),
                rows: 0,
                caught_up: false,
            })
            .collect(),
        position,
        exactly_once,
        lateness: v.derived.lateness,
        semantics: polling.semantics,
        batch: polling.batch_size.max(1),
        initial: polling.initial_cursor.clone(),
        deletes_table: notify.map(|n| n.deletes_table.clone()),
        drained: BTreeSet::new(),
        polls: 0,
        horizon: None,
        waiting: false,
        deletes_total: 0,
    };
    // Deletes the stored position covers are in Kafka: remove them first.
    let covered = std::mem::take(&mut state.position.drained_deletes);
    state.remove_deletes(&covered).await?;
    if !state.position.polled.is_empty() {
        tracing::info!(
            tables = state.position.polled.len(),
            "resuming polling after the stored position"
        );
    }

    announce_capturing(
        &metrics,
        &progress,
        "the worker is polling the tables into Kafka",
    );

    let mut confirm_tick = ticker(CONFIRM_INTERVAL);
    let mut status_tick = ticker(STATUS_INTERVAL);
    let mut poll_tick = ticker(v.derived.poll_interval);
    let mut next = Next::Idle;
    let mut soon = tokio::time::Instant::now();

    loop {
        let due = tokio::select! {
            biased;
            // 1. Shutdown: what is sent is delivered and saved.
            _ = shutdown.changed() => {
                tracing::info!("draining before shutdown");
                // Exactly once, a poll is committed whole when it closes: an
                // open transaction holds part of one, read again after a restart.
                state.out.abort().await?;
                state.out.sink().flush(Duration::from_secs(25)).await?;
                state.save_acknowledged().await?;
                state.out.sink().flush(Duration::from_secs(5)).await?;
                return Ok(Stopped::Shutdown);
            }
            // 2. Acknowledgements: save the position they complete.
            _ = confirm_tick.tick(), if state.out.has_unsaved() => {
                state.out.sink().check()?;
                state.save_acknowledged().await?;
                false
            }
            // 3. Health and progress.
            _ = status_tick.tick() => {
                state.out.sink().check()?;
                kafka_health(state.out.sink(), &metrics, &progress).await;
                if listener.as_ref().is_some_and(|l| l.is_closed()) {
                    return Err(PollError::ListenLost.into());
                }
                state.report();
                false
            }
            // 4. A poll: backlog first, rows waiting for the horizon, then a
            //    notification, then the interval.
            _ = std::future::ready(()), if next == Next::Now => true,
            _ = tokio::time::sleep_until(soon), if next == Next::Soon => true,
            _ = wake.notified(), if listener.is_some() => true,
            _ = poll_tick.tick() => true,
        };
        if due {
            match state.poll().await {
                Ok(n) => {
                    next = n;
                    let held = state.horizon.as_ref().is_some_and(|h| h.held_by.is_some());
                    soon = tokio::time::Instant::now()
                        + if held {
                            HORIZON_HELD_RETRY
                        } else {
                            HORIZON_RETRY
                        };
                }
                Err(e) => {
                    metrics
                        .poll_errors
                        .get_or_create(&ReasonLabels {
                            reason: e.metric_label().into(),
                        })
                        .inc();
                    return Err(e);
                }
            }
            poll_tick.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_cursors_read_as_instants() {
        let tz = cursor_time_of(CursorKind::TimestampTz, "2026-12-01 10:00:00.5+00").unwrap();
        assert_eq!(tz, 1_796_119_200_500_000);
        let offset = cursor_time_of(CursorKind::TimestampTz, "2026-12-01 12:00:00+02").unwrap();
        assert_eq!(offset, 1_796_119_200_000_000);
        assert_eq!(
            cursor_time_of(CursorKind::Timestamp, "2026-12-01 10:00:00"),
            Some(1_796_119_200_000_000)
        );
        assert_eq!(
            cursor_time_of(CursorKind::Date, "2026-12-01"),
            Some(1_796_083_200_000_000)
        );
        assert_eq!(cursor_time_of(CursorKind::Number, "42"), None);
    }

    #[test]
    fn unfit_specs_stop_with_their_reason_and_are_not_retried() {
        let e = PollError::CursorType {
            table: "public.t".into(),
            column: "name".into(),
        };
        assert!(!e.is_transient());
        assert_eq!(e.reason(), reason::CURSOR_TYPE_UNSUPPORTED);
        assert!(e.to_string().contains("timestamptz"));
        assert!(PollError::ListenLost.is_transient());
    }
}
