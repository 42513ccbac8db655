//! Kafka records from decoded changes: topic, key and value, in the `Debezium`
//! envelope or the flat `Row` format (docs/formats.md shows both).
//!
//! ```text
//!  Change ──► RecordEncoder::encode ──► [Record]            1 record per change, plus
//!              │  TablePlan per relation (topic, column      · a tombstone after a delete
//!              │  names as JSON, value encodings)            · delete + tombstone + create
//!              └─ values::Encoding per column                  when an update changes the key
//! ```
//!
//! Records of one change are pushed in the order they must reach Kafka; each
//! carries the commit LSN of its transaction so the sink can confirm it once
//! Kafka acknowledged every record before it.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use siphon_crds::capture::{OutputSpec, RecordFormat};
use siphon_crds::worker_config::WorkerConfig;

use crate::change::{Change, Datum, Lsn, Op, Relation, Row};
use crate::values::{Encoding, TypeRegistry, ValueOptions, json};

/// `source.connector` of the Debezium envelope.
pub const CONNECTOR: &str = "postgresql";
/// `source.version` of the Debezium envelope.
pub const SOURCE_VERSION: &str = concat!("siphon-", env!("CARGO_PKG_VERSION"));
/// Header Debezium puts on the delete half of a key change: the new key.
pub const HEADER_NEW_KEY: &str = "__debezium.newkey";
/// Header Debezium puts on the create half of a key change: the old key.
pub const HEADER_OLD_KEY: &str = "__debezium.oldkey";

/// One Kafka record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `<topicPrefix>.<schema>.<table>`, shared by all records of a table.
    pub topic: Arc<str>,
    /// JSON object of the key columns; `None` for a truncate or a table without key.
    pub key: Option<Vec<u8>>,
    /// The JSON value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Record headers (only the two key-change headers today).
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// Commit LSN of the change's transaction.
    pub commit_lsn: Lsn,
}

impl Record {
    /// Bytes of key and value.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len)
    }
}

/// What the encoder needs from the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderSettings {
    pub format: RecordFormat,
    pub output: OutputSpec,
    /// Write a tombstone after each delete.
    pub tombstones: bool,
    /// Topic prefix, also `source.name` of the Debezium envelope.
    pub topic_prefix: String,
    /// Database name, `source.db`.
    pub database: String,
    /// The columns the spec selects, per `schema.table` (tables with a
    /// `columns` list only). Records hold these and the key columns, also
    /// where the publication sends every column (no column lists before
    /// PostgreSQL 15, none under REPLICA IDENTITY FULL).
    pub selected_columns: HashMap<String, Vec<String>>,
}

impl EncoderSettings {
    /// The settings of a worker configuration.
    pub fn from_config(config: &WorkerConfig) -> Self {
        Self {
            format: config.kafka.format,
            output: config.output.clone(),
            tombstones: config.kafka.tombstones,
            topic_prefix: config.kafka.topic_prefix.clone(),
            database: config.postgres.database.clone(),
            selected_columns: config
                .tables
                .iter()
                .filter(|t| !t.columns.is_empty())
                .map(|t| (t.name.clone(), t.columns.clone()))
                .collect(),
        }
    }
}

/// Turns changes into records. One per worker; it caches a plan per relation
/// and remembers the previous transaction's commit LSN for `source.sequence`.
pub struct RecordEncoder {
    settings: EncoderSettings,
    options: ValueOptions,
    registry: Arc<TypeRegistry>,
    tables: HashMap<u32, TablePlan>,
    /// `{"version":…,"connector":…,"name":…,"ts_ms":`
    source_head: Vec<u8>,
    /// `"db":"…",`
    source_db: Vec<u8>,
    /// The toast placeholder as a JSON string.
    toast_json: Vec<u8>,
    fallbacks: u64,
}

/// Everything about one relation that does not change from row to row.
struct TablePlan {
    relation: Arc<Relation>,
    topic: Arc<str>,
    columns: Vec<ColumnPlan>,
    key_columns: Vec<usize>,
    /// Indexes of the columns a row is written with, in order: every column,
    /// or the spec's selection and the key columns.
    emitted: Vec<usize>,
    /// `,"schema":"…","table":"…","txId":`
    source_tail: Vec<u8>,
    /// `"schema.table"` as a JSON string.
    qualified: Vec<u8>,
    /// Columns whose values failed to encode once, so the warning is logged once.
    warned: HashSet<usize>,
}

struct ColumnPlan {
    /// `"name":`
    name: Vec<u8>,
    encoding: Encoding,
}

impl RecordEncoder {
    pub fn new(settings: EncoderSettings, registry: Arc<TypeRegistry>) -> Self {
        let mut source_head = Vec::new();
        source_head.extend_from_slice(b"{\"version\":");
        json::write_str(&mut source_head, SOURCE_VERSION.as_bytes());
        source_head.extend_from_slice(b",\"connector\":");
        json::write_str(&mut source_head, CONNECTOR.as_bytes());
        source_head.extend_from_slice(b",\"name\":");
        json::write_str(&mut source_head, settings.topic_prefix.as_bytes());
        source_head.extend_from_slice(b",\"ts_ms\":");
        let mut source_db = b"\"db\":".to_vec();
        json::write_str(&mut source_db, settings.database.as_bytes());
        source_db.push(b',');
        let mut toast_json = Vec::new();
        json::write_str(
            &mut toast_json,
            settings.output.toast_placeholder.as_bytes(),
        );
        Self {
            options: ValueOptions {
                decimal: settings.output.decimal_handling,
            },
            settings,
            registry,
            tables: HashMap::new(),
            source_head,
            source_db,
            toast_json,
            fallbacks: 0,
        }
    }

    /// Uses a reloaded type registry (after a Relation message named an
    /// unknown type); every relation's plan is rebuilt on its next change.
    pub fn set_registry(&mut self, registry: Arc<TypeRegistry>) {
        self.registry = registry;
        self.tables.clear();
    }

    /// Values that did not parse as their type and were written as strings
    /// instead (a metric; each column is also logged once).
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks
    }

    /// The topic of a relation.
    pub fn topic_for(&self, schema: &str, table: &str) -> String {
        sanitize_topic(&format!("{}.{schema}.{table}", self.settings.topic_prefix))
    }

    /// Appends the records of `change` to `out`, stamped with the current time.
    pub fn encode(&mut self, change: &Change, out: &mut Vec<Record>) {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        self.encode_at(change, now_us, out);
    }

    /// [`RecordEncoder::encode`] with the processing time (`ts_ms` of the
    /// envelope) given, in microseconds since the epoch.
    pub fn encode_at(&mut self, change: &Change, now_us: i64, out: &mut Vec<Record>) {
        self.ensure_plan(&change.relation);
        let Some(plan) = self.tables.get_mut(&change.relation.oid) else {
            return;
        };
        let mut ctx = Ctx {
            options: self.options,
            toast_json: &self.toast_json,
            toast_raw: &self.settings.output.toast_placeholder,
            fallbacks: &mut self.fallbacks,
            plan,
        };
        let settings = &self.settings;
        let envelope = Envelope {
            change,
            now_us,
            source_head: &self.source_head,
            source_db: &self.source_db,
        };
        let record = |key: Option<Vec<u8>>, value: Option<Vec<u8>>, topic: &Arc<str>| Record {
            topic: Arc::clone(topic),
            key,
            value,
            headers: Vec::new(),
            commit_lsn: change.commit_lsn,
        };
        let topic = Arc::clone(&ctx.plan.topic);
        let new = change.new.as_ref();
        let old = change.old.as_ref();

        match change.op {
            Op::Truncate => {
                let value = envelope.value(settings, &mut ctx, Op::Truncate, None, None);
                out.push(record(None, Some(value), &topic));
            }
            Op::Insert | Op::Read => {
                let Some(new) = new else { return };
                let key = ctx.key(new, None);
                let value = envelope.value(
                    settings,
                    &mut ctx,
                    change.op,
                    None,
                    Some(Side::new(new, None)),
                );
                out.push(record(key, Some(value), &topic));
            }
            Op::Delete => {
                let key = old.and_then(|o| ctx.key(o, None));
                let value = envelope.value(
                    settings,
                    &mut ctx,
                    Op::Delete,
                    old.map(|o| Side::new(o, None)),
                    None,
                );
                out.push(record(key.clone(), Some(value), &topic));
                if settings.tombstones && key.is_some() {
                    out.push(record(key, None, &topic));
                }
            }
            Op::Update => {
                let Some(new) = new else { return };
                let new_key = ctx.key(new, old);
                let old_key = old.and_then(|o| ctx.key(o, None));
                let key_changed = old_key.is_some() && old_key != new_key;
                if key_changed {
                    // Debezium's primary key change: a delete of the old key
                    // (and its tombstone), then a create under the new key.
                    let delete = envelope.value(
                        settings,
                        &mut ctx,
                        Op::Delete,
                        old.map(|o| Side::new(o, None)),
                        None,
                    );
                    let mut first = record(old_key.clone(), Some(delete), &topic);
                    if settings.format == RecordFormat::Debezium
                        && let Some(k) = &new_key
                    {
                        first.headers.push((HEADER_NEW_KEY, k.clone()));
                    }
                    // Its tombstone carries the same header, as Debezium's does.
                    let tombstone = settings.tombstones.then(|| Record {
                        value: None,
                        ..first.clone()
                    });
                    out.push(first);
                    out.extend(tombstone);
                    let create = envelope.value(
                        settings,
                        &mut ctx,
                        Op::Insert,
                        None,
                        Some(Side::new(new, old)),
                    );
                    let mut second = record(new_key, Some(create), &topic);
                    if settings.format == RecordFormat::Debezium
                        && let Some(k) = old_key
                    {
                        second.headers.push((HEADER_OLD_KEY, k));
                    }
                    out.push(second);
                } else {
                    // `before` only when the old row is whole (REPLICA IDENTITY FULL).
                    let before = old
                        .filter(|_| change.relation.replica_identity == b'f')
                        .map(|o| Side::new(o, None));
                    let value = envelope.value(
                        settings,
                        &mut ctx,
                        Op::Update,
                        before,
                        Some(Side::new(new, old)),
                    );
                    out.push(record(new_key, Some(value), &topic));
                }
            }
        }
    }

    fn ensure_plan(&mut self, relation: &Arc<Relation>) {
        if let Some(plan) = self.tables.get(&relation.oid)
            && (Arc::ptr_eq(&plan.relation, relation) || plan.relation == *relation)
        {
            return;
        }
        let plan = self.plan(relation);
        self.tables.insert(relation.oid, plan);
    }

    fn plan(&self, relation: &Arc<Relation>) -> TablePlan {
        let snake = self.settings.output.snake_case_columns;
        // Names already in snake_case keep them; a renamed column that would
        // collide with another column keeps its own name.
        let claimed: HashSet<&str> = if snake {
            relation
                .columns
                .iter()
                .map(|c| c.name.as_str())
                .filter(|n| snake_case(n) == *n)
                .collect()
        } else {
            HashSet::new()
        };
        let mut taken = HashSet::new();
        let columns = relation
            .columns
            .iter()
            .map(|c| {
                let renamed = if snake {
                    snake_case(&c.name)
                } else {
                    c.name.clone()
                };
                let chosen = if renamed == c.name
                    || claimed.contains(renamed.as_str())
                    || !taken.insert(renamed.clone())
                {
                    c.name.clone()
                } else {
                    renamed
                };
                let mut name = Vec::with_capacity(chosen.len() + 3);
                json::write_str(&mut name, chosen.as_bytes());
                name.push(b':');
                ColumnPlan {
                    name,
                    encoding: Encoding::resolve(c.type_oid, c.type_modifier, &self.registry),
                }
            })
            .collect();
        let key_columns = relation
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_key)
            .map(|(i, _)| i)
            .collect();
        let selection = self
            .settings
            .selected_columns
            .get(&format!("{}.{}", relation.schema, relation.name));
        let emitted = relation
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| selection.is_none_or(|s| c.is_key || s.contains(&c.name)))
            .map(|(i, _)| i)
            .collect();
        let mut source_tail = b",\"schema\":".to_vec();
        json::write_str(&mut source_tail, relation.schema.as_bytes());
        source_tail.extend_from_slice(b",\"table\":");
        json::write_str(&mut source_tail, relation.name.as_bytes());
        source_tail.extend_from_slice(b",\"txId\":");
        let mut qualified = Vec::new();
        json::write_str(
            &mut qualified,
            format!("{}.{}", relation.schema, relation.name).as_bytes(),
        );
        TablePlan {
            relation: Arc::clone(relation),
            topic: Arc::from(self.topic_for(&relation.schema, &relation.name)),
            columns,
            key_columns,
            emitted,
            source_tail,
            qualified,
            warned: HashSet::new(),
        }
    }
}

/// One row to write, and the old row whose values stand in for unchanged TOAST.
#[derive(Clone, Copy)]
struct Side<'a> {
    row: &'a Row,
    old: Option<&'a Row>,
}

impl<'a> Side<'a> {
    fn new(row: &'a Row, old: Option<&'a Row>) -> Self {
        Self { row, old }
    }
}

/// Per-change state of the value writers.
struct Ctx<'a> {
    options: ValueOptions,
    /// The placeholder as a JSON string, and as it is.
    toast_json: &'a [u8],
    toast_raw: &'a str,
    fallbacks: &'a mut u64,
    plan: &'a mut TablePlan,
}

impl Ctx<'_> {
    /// The key object, or `None` when the relation has no key columns.
    fn key(&mut self, row: &Row, old: Option<&Row>) -> Option<Vec<u8>> {
        if self.plan.key_columns.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(32);
        out.push(b'{');
        for n in 0..self.plan.key_columns.len() {
            if n > 0 {
                out.push(b',');
            }
            let i = self.plan.key_columns[n];
            out.extend_from_slice(&self.plan.columns[i].name);
            self.column(i, Side::new(row, old), &mut out);
        }
        out.push(b'}');
        Some(out)
    }

    /// A whole row as an object with every emitted column of the relation.
    fn row(&mut self, side: Side<'_>, out: &mut Vec<u8>) {
        out.push(b'{');
        for n in 0..self.plan.emitted.len() {
            if n > 0 {
                out.push(b',');
            }
            let i = self.plan.emitted[n];
            out.extend_from_slice(&self.plan.columns[i].name);
            self.column(i, side, out);
        }
        out.push(b'}');
    }

    fn column(&mut self, i: usize, side: Side<'_>, out: &mut Vec<u8>) {
        let mut datum = side.row.get(i).unwrap_or(&Datum::Null);
        if matches!(datum, Datum::UnchangedToast)
            && let Some(old @ Datum::Text(_)) = side.old.and_then(|o| o.get(i))
        {
            datum = old;
        }
        match datum {
            Datum::Null => out.extend_from_slice(b"null"),
            Datum::UnchangedToast => self.toast_placeholder(i, out),
            Datum::Text(text) => {
                let encoding = &self.plan.columns[i].encoding;
                if let Err(e) = encoding.write_json(text, self.options, out) {
                    self.fell_back(i, &e.to_string());
                    json::write_str(out, text);
                }
            }
            Datum::Binary(bytes) => {
                // Siphon never asks pgoutput for binary values; should one
                // arrive, its bytes are kept (base64) rather than lost.
                self.fell_back(i, "a value arrived in binary form");
                json::write_base64(out, bytes);
            }
        }
    }

    /// Counts a value written in a fallback form and logs it once per column.
    fn fell_back(&mut self, i: usize, error: &str) {
        *self.fallbacks += 1;
        if self.plan.warned.insert(i) {
            let relation = &self.plan.relation;
            tracing::warn!(
                table = %format!("{}.{}", relation.schema, relation.name),
                column = %relation.columns.get(i).map_or("", |c| c.name.as_str()),
                error,
                "value written in a fallback form"
            );
        }
    }

    /// Debezium's placeholder for an unchanged TOASTed value: the placeholder
    /// string, its bytes for bytea, and for arrays a one-element text array or
    /// the placeholder's bytes as numbers for integer arrays.
    fn toast_placeholder(&self, i: usize, out: &mut Vec<u8>) {
        match &self.plan.columns[i].encoding {
            Encoding::Bytea => json::write_base64(out, self.toast_raw.as_bytes()),
            Encoding::Array { element, .. } if **element == Encoding::Integer => {
                out.push(b'[');
                for (n, b) in self.toast_raw.bytes().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    // Java bytes are signed.
                    json::write_i64(out, i64::from(b as i8));
                }
                out.push(b']');
            }
            Encoding::Array { .. } => {
                out.push(b'[');
                out.extend_from_slice(self.toast_json);
                out.push(b']');
            }
            _ => out.extend_from_slice(self.toast_json),
        }
    }
}

/// Writes the value of one record.
struct Envelope<'a> {
    change: &'a Change,
    now_us: i64,
    source_head: &'a [u8],
    source_db: &'a [u8],
}

impl Envelope<'_> {
    fn value(
        &self,
        settings: &EncoderSettings,
        ctx: &mut Ctx<'_>,
        op: Op,
        before: Option<Side<'_>>,
        after: Option<Side<'_>>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + 48 * ctx.plan.columns.len());
        match settings.format {
            RecordFormat::Debezium => self.debezium(ctx, op, before, after, &mut out),
            RecordFormat::Row => self.row(settings, ctx, op, before, after, &mut out),
        }
        out
    }

    fn debezium(
        &self,
        ctx: &mut Ctx<'_>,
        op: Op,
        before: Option<Side<'_>>,
        after: Option<Side<'_>>,
        out: &mut Vec<u8>,
    ) {
        let change = self.change;
        out.extend_from_slice(b"{\"before\":");
        match before {
            Some(side) => ctx.row(side, out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"after\":");
        match after {
            Some(side) => ctx.row(side, out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"source\":");
        out.extend_from_slice(self.source_head);
        json::write_i64(out, change.commit_ts_us.div_euclid(1000));
        out.extend_from_slice(b",\"snapshot\":");
        json::write_str(out, change.snapshot.unwrap_or("false").as_bytes());
        out.push(b',');
        out.extend_from_slice(self.source_db);
        if change.is_polled() {
            // A polled row has no WAL position.
            out.extend_from_slice(b"\"sequence\":null");
        } else {
            self.sequence(change, out);
        }
        out.extend_from_slice(b",\"ts_us\":");
        json::write_i64(out, change.commit_ts_us);
        out.extend_from_slice(b",\"ts_ns\":");
        json::write_i64(out, change.commit_ts_us.saturating_mul(1000));
        out.extend_from_slice(&ctx.plan.source_tail);
        if change.xid == 0 {
            out.extend_from_slice(b"null");
        } else {
            json::write_i64(out, i64::from(change.xid));
        }
        out.extend_from_slice(b",\"lsn\":");
        if change.lsn.0 == 0 {
            out.extend_from_slice(b"null");
        } else {
            json::write_u64(out, change.lsn.0);
        }
        // Debezium 3's order: `transaction` before `op`.
        out.extend_from_slice(
            b",\"xmin\":null,\"origin\":null,\"origin_lsn\":null},\"transaction\":null,\"op\":\"",
        );
        out.extend_from_slice(match op {
            Op::Insert => b"c",
            Op::Update => b"u",
            Op::Delete => b"d",
            Op::Truncate => b"t",
            Op::Read => b"r",
        });
        out.extend_from_slice(b"\",\"ts_ms\":");
        json::write_i64(out, self.now_us.div_euclid(1000));
        out.extend_from_slice(b",\"ts_us\":");
        json::write_i64(out, self.now_us);
        out.extend_from_slice(b",\"ts_ns\":");
        json::write_i64(out, self.now_us.saturating_mul(1000));
        out.push(b'}');
    }

    /// `source.sequence`: a JSON string holding `["<end of the previous
    /// transaction>","<lsn>"]` ([`Change::last_commit_end`], `null` when
    /// unknown), written with its quotes already escaped (digits need no
    /// escaping).
    fn sequence(&self, change: &Change, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"sequence\":\"[");
        match (change.last_commit_end.0 != 0).then_some(change.last_commit_end) {
            Some(lsn) => {
                out.extend_from_slice(b"\\\"");
                json::write_u64(out, lsn.0);
                out.extend_from_slice(b"\\\"");
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\\\"");
        json::write_u64(out, change.lsn.0);
        out.extend_from_slice(b"\\\"]\"");
    }

    /// `{"table","op","ts","data","old_data"[,"metadata"]}`: `data` is the new
    /// row, or the deleted one for a delete; `old_data` the old row of an update
    /// when the server sent it.
    fn row(
        &self,
        settings: &EncoderSettings,
        ctx: &mut Ctx<'_>,
        op: Op,
        before: Option<Side<'_>>,
        after: Option<Side<'_>>,
        out: &mut Vec<u8>,
    ) {
        let change = self.change;
        out.extend_from_slice(b"{\"table\":");
        out.extend_from_slice(&ctx.plan.qualified);
        out.extend_from_slice(b",\"op\":\"");
        out.extend_from_slice(match op {
            Op::Insert => b"insert".as_slice(),
            Op::Update => b"update",
            Op::Delete => b"delete",
            Op::Truncate => b"truncate",
            Op::Read => b"read",
        });
        out.extend_from_slice(b"\",\"ts\":");
        json::write_i64(out, change.commit_ts_us.div_euclid(1000));
        let (data, old_data) = match op {
            Op::Delete => (before, None),
            _ => (after, before),
        };
        out.extend_from_slice(b",\"data\":");
        match data {
            Some(side) => ctx.row(side, out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"old_data\":");
        match old_data {
            Some(side) => ctx.row(side, out),
            None => out.extend_from_slice(b"null"),
        }
        if settings.output.include_metadata {
            let relation = &ctx.plan.relation;
            out.extend_from_slice(b",\"metadata\":{\"schema\":");
            json::write_str(out, relation.schema.as_bytes());
            out.extend_from_slice(b",\"table\":");
            json::write_str(out, relation.name.as_bytes());
            for (name, lsn) in [
                (&b",\"lsn\":"[..], change.lsn),
                (b",\"commit_lsn\":", change.commit_lsn),
            ] {
                out.extend_from_slice(name);
                if change.is_polled() {
                    out.extend_from_slice(b"null");
                } else {
                    json::write_str(out, lsn.to_string().as_bytes());
                }
            }
            out.extend_from_slice(b",\"tx_id\":");
            if change.xid == 0 {
                out.extend_from_slice(b"null");
            } else {
                json::write_i64(out, i64::from(change.xid));
            }
            out.push(b'}');
        }
        out.push(b'}');
    }
}

/// Kafka topic names allow `[a-zA-Z0-9._-]`; anything else becomes `_`
/// (Debezium does the same).
pub fn sanitize_topic(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `OrderId` → `order_id`, `orderID` → `order_id`, `HTTPServer` →
/// `http_server`, `Order Total` → `order_total`; snake_case stays as it is.
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_alphanumeric() {
            if c.is_uppercase() {
                let prev = i.checked_sub(1).map(|p| chars[p]);
                let next = chars.get(i + 1).copied();
                let boundary = match prev {
                    Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                    Some(p) if p.is_uppercase() => next.is_some_and(char::is_lowercase),
                    _ => false,
                };
                if boundary && !out.is_empty() && !out.ends_with('_') {
                    out.push('_');
                }
                out.extend(c.to_lowercase());
            } else {
                out.push(c);
            }
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    if out.ends_with('_') && !name.ends_with('_') {
        out.pop();
    }
    if out.is_empty() {
        name.to_string()
    } else {
        out
    }
}

#[cfg(test)]
mod tests;
