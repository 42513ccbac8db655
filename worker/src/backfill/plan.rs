//! What to backfill and how: the catalog facts of each table (its relation as
//! pgoutput describes it, its key) and the SQL of chunks and watermarks.
//!
//! Building SQL is pure; only the `load_*`/`check_*` functions query the
//! catalogs. Identifiers are always quoted; key values are inlined as quoted
//! literals (the chunk query runs in the simple protocol to get PostgreSQL's
//! text output); the spec's `filter` is the only text pasted as it is.

use std::sync::Arc;

use siphon_crds::capture::TableSpec;
use siphon_crds::worker_config::WorkerConfig;

use super::BackfillError;
use crate::change::{Column, Relation};
use siphon_postgres::{quote_ident, quote_literal};

/// Settings of the backfill's SQL session: the same text forms as the
/// replication connection's values, and literals without backslash escapes.
///
/// `synchronous_commit = local`: a walsender sends only WAL flushed to disk,
/// so a watermark committed with `off` (a server or role default some
/// set for speed) could reach the stream up to `wal_writer_delay` later,
/// every chunk; `local` flushes it at commit without waiting for standbys.
pub const SESSION_SETTINGS: &str = "SET DateStyle = ISO; SET IntervalStyle = postgres; \
     SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET bytea_output = hex; \
     SET lc_monetary = 'C'; SET standard_conforming_strings = on; \
     SET synchronous_commit = local; SET application_name = 'siphon-backfill'";

/// The table holding this capture's watermarks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatermarkTable {
    pub schema: String,
    pub name: String,
}

impl WatermarkTable {
    /// `schema.table` (an unqualified name is in `public`).
    pub fn parse(qualified: &str) -> Self {
        match qualified.split_once('.') {
            Some((schema, name)) => Self {
                schema: schema.to_string(),
                name: name.to_string(),
            },
            None => Self {
                schema: "public".into(),
                name: qualified.to_string(),
            },
        }
    }

    /// The quoted, qualified name for SQL.
    pub fn sql_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// Whether a streamed relation is this table.
    pub fn is(&self, relation: &Relation) -> bool {
        relation.name == self.name && relation.schema == self.schema
    }

    /// The DDL the operator runs (and a standalone user must run).
    pub fn ddl(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (capture text PRIMARY KEY, watermark text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())",
            self.sql_name()
        )
    }

    /// Writing one watermark: `$1` the capture, `$2` the watermark text.
    ///
    /// The row is deleted and inserted again rather than updated, so that
    /// the watermark reaches the stream as an INSERT: a publication that
    /// publishes inserts only (`logical.operations: [insert]`, the way a row
    /// filter may use any column) still carries it. The count over the
    /// deleted rows makes the DELETE run before the INSERT.
    pub fn upsert_sql(&self) -> String {
        format!(
            "WITH gone AS (DELETE FROM {t} WHERE capture = $1 RETURNING 1) \
             INSERT INTO {t} (capture, watermark) SELECT $1, $2::text FROM (SELECT count(*) FROM gone) AS done",
            t = self.sql_name()
        )
    }
}

impl std::fmt::Display for WatermarkTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Everything about one table that does not change from chunk to chunk.
#[derive(Clone, Debug)]
pub struct TablePlan {
    /// `schema.table`, the name in the position and the status.
    pub name: String,
    /// The relation as pgoutput describes it (same oid, columns and key
    /// flags), so that backfilled rows encode like streamed ones.
    pub relation: Arc<Relation>,
    /// Columns that order the chunks: the replica identity index, or the
    /// primary key. Unique and not null.
    pub key_names: Vec<String>,
    /// Indexes of `key_names` in `relation.columns`.
    pub key_positions: Vec<usize>,
    /// The spec's row filter.
    pub filter: Option<String>,
    /// `pg_class.reltuples`, when the table was ever analyzed.
    pub rows_estimated: Option<u64>,
    /// Every stored column of the table as planned (name, type oid, type
    /// modifier), published or not: a chunk that finds others was read
    /// with a stale plan.
    pub table_columns: Arc<Vec<(String, u32, i32)>>,
}

impl TablePlan {
    pub fn oid(&self) -> u32 {
        self.relation.oid
    }

    /// The query of one chunk: the rows after `after` (by key), in key order,
    /// at most `limit`.
    pub fn chunk_sql(&self, after: Option<&[Option<String>]>, limit: u64) -> String {
        let columns = self
            .relation
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let keys: Vec<String> = self.key_names.iter().map(|k| quote_ident(k)).collect();
        let mut conditions = Vec::new();
        if let Some(after) = after {
            let values: Vec<String> = after
                .iter()
                .map(|v| {
                    v.as_deref()
                        .map_or_else(|| "NULL".to_string(), quote_literal)
                })
                .collect();
            if keys.len() == 1 && values.len() == 1 {
                conditions.push(format!("{} > {}", keys[0], values[0]));
            } else {
                conditions.push(format!("({}) > ({})", keys.join(", "), values.join(", ")));
            }
        }
        if let Some(filter) = &self.filter {
            // The newline ends a `--` comment of a spec's filter.
            conditions.push(format!("({filter}\n)"));
        }
        let mut sql = format!(
            "SELECT {columns} FROM {}.{}",
            quote_ident(&self.relation.schema),
            quote_ident(&self.relation.name)
        );
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", keys.join(", ")));
        sql
    }
}

/// The table's stored columns, in attnum order: name, type oid, type
/// modifier and NOT NULL (`$1` is the table's oid). The plan is built from
/// it, and each chunk reads it again to tell whether the table's columns
/// changed since (see `reader`).
pub fn attributes_sql(server_version_num: i32) -> String {
    let generated = if server_version_num >= 120_000 {
        " AND attgenerated = ''"
    } else {
        ""
    };
    format!(
        "SELECT attname::text, atttypid, atttypmod, attnotnull FROM pg_attribute \
         WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped{generated} ORDER BY attnum"
    )
}

/// Catalog facts of one table, as read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableFacts {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `pg_class.relreplident`.
    pub replica_identity: u8,
    /// (name, type oid, type modifier) in attnum order, dropped and
    /// generated columns left out.
    pub columns: Vec<(String, u32, i32)>,
    /// Columns the publication sends (its column list), when known.
    pub published: Option<Vec<String>>,
    /// The publication's row filter as PostgreSQL renders it (15+; `None`
    /// when the table is published unfiltered or the server has none).
    pub row_filter: Option<String>,
    /// Key columns (INCLUDE columns left out) of the primary key.
    pub primary_key: Vec<String>,
    /// Key columns of the replica identity index (identity `i`).
    pub identity_index: Vec<String>,
    /// Key columns of each plain unique index (no expression, no predicate,
    /// not deferrable) whose columns are all NOT NULL.
    pub unique_not_null: Vec<Vec<String>>,
    pub reltuples: f32,
}

/// The columns that order the chunks: the replica identity index when it is
/// the identity, else the primary key, else the spec's `keyColumns` when a
/// unique index on NOT NULL columns covers exactly them.
fn chunk_key(facts: &TableFacts, spec: &TableSpec) -> Option<Vec<String>> {
    if facts.replica_identity == b'i' && !facts.identity_index.is_empty() {
        return Some(facts.identity_index.clone());
    }
    if !facts.primary_key.is_empty() {
        return Some(facts.primary_key.clone());
    }
    let wanted = &spec.key_columns;
    let covered = !wanted.is_empty()
        && facts
            .unique_not_null
            .iter()
            .any(|index| index.len() == wanted.len() && index.iter().all(|c| wanted.contains(c)));
    covered.then(|| wanted.clone())
}

/// Turn catalog facts into a plan (pure). Refuses a table without a key.
pub fn plan_table(facts: &TableFacts, spec: &TableSpec) -> Result<TablePlan, BackfillError> {
    let qualified = format!("{}.{}", facts.schema, facts.name);
    let Some(key_names) = chunk_key(facts, spec) else {
        return Err(BackfillError::NoKey {
            table: qualified,
            sql_table: format!(
                "{}.{}",
                quote_ident(&facts.schema),
                quote_ident(&facts.name)
            ),
        });
    };
    // The key flags pgoutput sets, as the assembler adjusts them for
    // REPLICA IDENTITY FULL (the primary key, else the spec's keyColumns).
    let flagged: Vec<String> = match facts.replica_identity {
        b'i' => facts.identity_index.clone(),
        b'n' => Vec::new(),
        b'f' => {
            if !facts.primary_key.is_empty() {
                facts.primary_key.clone()
            } else if !spec.key_columns.is_empty() {
                spec.key_columns.clone()
            } else {
                facts.columns.iter().map(|c| c.0.clone()).collect()
            }
        }
        _ => facts.primary_key.clone(),
    };
    // The columns pgoutput sends: the publication's column list (PostgreSQL
    // 15+, where the operator turns the spec's `columns` into one), else all.
    let wanted = |name: &str| -> bool {
        match &facts.published {
            Some(published) if !published.is_empty() => {
                published.iter().any(|p| p == name) || key_names.iter().any(|k| k == name)
            }
            _ => true,
        }
    };
    let columns: Vec<Column> = facts
        .columns
        .iter()
        .filter(|(name, _, _)| wanted(name))
        .map(|(name, type_oid, type_modifier)| Column {
            name: name.clone(),
            type_oid: *type_oid,
            type_modifier: *type_modifier,
            is_key: flagged.iter().any(|f| f == name),
        })
        .collect();
    let mut key_positions = Vec::with_capacity(key_names.len());
    for key in &key_names {
        match columns.iter().position(|c| &c.name == key) {
            Some(i) => key_positions.push(i),
            None => {
                return Err(BackfillError::NoKey {
                    table: qualified,
                    sql_table: format!(
                        "{}.{}",
                        quote_ident(&facts.schema),
                        quote_ident(&facts.name)
                    ),
                });
            }
        }
    }
    let rows_estimated = (facts.reltuples >= 0.0).then(|| facts.reltuples.round() as u64);
    Ok(TablePlan {
        name: qualified,
        relation: Arc::new(Relation {
            oid: facts.oid,
            schema: facts.schema.clone(),
            name: facts.name.clone(),
            replica_identity: facts.replica_identity,
            columns,
        }),
        key_names,
        key_positions,
        // The backfill reads what the stream sends: the publication's own
        // row filter where the server has row filters and the publication
        // was read; the spec's only where it cannot be (standalone, < 15).
        filter: if facts.published.is_some() {
            facts.row_filter.clone()
        } else {
            spec.filter.clone()
        },
        rows_estimated,
        table_columns: Arc::new(facts.columns.clone()),
    })
}

fn sql_err(what: &'static str, table: &str) -> impl FnOnce(tokio_postgres::Error) -> BackfillError {
    let table = table.to_string();
    move |source| BackfillError::Sql {
        what,
        table: Some(table),
        source,
    }
}

/// The configured tables that exist, by `schema.table`, in configuration
/// order; `schema.*` becomes the published tables of the schema (sorted).
/// The watermark table is never one of them.
pub async fn resolve_tables(
    sql: &tokio_postgres::Client,
    config: &WorkerConfig,
    watermark: &WatermarkTable,
) -> Result<Vec<(String, TableSpec)>, BackfillError> {
    let mut out: Vec<(String, TableSpec)> = Vec::new();
    for spec in &config.tables {
        let Some((schema, table)) = spec.name.split_once('.') else {
            continue;
        };
        let names: Vec<String> = if table == "*" {
            let rows = sql
                .query(
                    "SELECT tablename::text FROM pg_publication_tables \
                     WHERE pubname = $1 AND schemaname = $2 ORDER BY tablename",
                    &[&config.logical.publication_name, &schema],
                )
                .await
                .map_err(sql_err("listing the published tables", &spec.name))?;
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .filter(|t| !(schema == watermark.schema && *t == watermark.name))
                .map(|t| format!("{schema}.{t}"))
                .collect()
        } else {
            published_partitions(sql, &config.logical.publication_name, schema, table)
                .await
                .map_err(sql_err("listing the published partitions", &spec.name))?
                .unwrap_or_else(|| vec![spec.name.clone()])
        };
        for name in names {
            if !out.iter().any(|(n, _)| *n == name) {
                let mut spec = spec.clone();
                spec.name = name.clone();
                out.push((name, spec));
            }
        }
    }
    Ok(out)
}

/// A partitioned table whose publication publishes its partitions as
/// themselves (`publish_via_partition_root = false`) streams each leaf
/// partition under its own name and topic: the backfill then reads each
/// leaf, so that its rows go where the stream's go. `None` for any other
/// table, and for a root published as itself.
async fn published_partitions(
    sql: &tokio_postgres::Client,
    publication: &str,
    schema: &str,
    table: &str,
) -> Result<Option<Vec<String>>, tokio_postgres::Error> {
    let root = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let rows = sql
        .query(
            "SELECT pt.schemaname::text || '.' || pt.tablename::text \
             FROM pg_partition_tree(to_regclass($2)) tree \
             JOIN pg_class c ON c.oid = tree.relid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_publication_tables pt ON pt.schemaname = n.nspname AND pt.tablename = c.relname \
             WHERE pt.pubname = $1 AND tree.relid <> to_regclass($2) \
               AND EXISTS (SELECT 1 FROM pg_class r WHERE r.oid = to_regclass($2) AND r.relkind = 'p') \
             ORDER BY 1",
            &[&publication, &root],
        )
        .await?;
    let leaves: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    Ok((!leaves.is_empty()).then_some(leaves))
}

/// Read the catalog facts of `schema.table`.
pub async fn load_facts(
    sql: &tokio_postgres::Client,
    qualified: &str,
    publication: &str,
    server_version_num: i32,
) -> Result<TableFacts, BackfillError> {
    let (schema, name) = qualified.split_once('.').unwrap_or(("public", qualified));
    let row = sql
        .query_opt(
            "SELECT c.oid, c.relreplident::text, c.reltuples FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &name],
        )
        .await
        .map_err(sql_err("reading pg_class", qualified))?;
    let Some(row) = row else {
        return Err(BackfillError::TableMissing {
            table: qualified.to_string(),
        });
    };
    let oid: u32 = row.get(0);
    let identity: String = row.get(1);
    let reltuples: f32 = row.get(2);
    let attributes = sql
        .query(&attributes_sql(server_version_num), &[&oid])
        .await
        .map_err(sql_err("reading pg_attribute", qualified))?;
    let columns = attributes
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, u32>(1),
                r.get::<_, i32>(2),
            )
        })
        .collect();
    let not_null: Vec<String> = attributes
        .iter()
        .filter(|r| r.get::<_, bool>(3))
        .map(|r| r.get::<_, String>(0))
        .collect();
    // Key columns only: INCLUDE columns follow them in indkey (PostgreSQL 11+).
    let key_count = if server_version_num >= 110_000 {
        "i.indnkeyatts"
    } else {
        "i.indnatts"
    };
    let indexes = sql
        .query(
            &format!(
                "SELECT i.indisprimary, i.indisreplident, \
                   i.indisunique AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL, \
                   ARRAY(SELECT a.attname::text \
                         FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n) \
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                         WHERE k.n <= {key_count} ORDER BY k.n) \
                 FROM pg_index i WHERE i.indrelid = $1 AND i.indisvalid"
            ),
            &[&oid],
        )
        .await
        .map_err(sql_err("reading the table's indexes", qualified))?;
    let mut primary_key = Vec::new();
    let mut identity_index = Vec::new();
    let mut unique_not_null = Vec::new();
    for index in &indexes {
        let keys: Vec<String> = index.get(3);
        if index.get::<_, bool>(0) {
            primary_key = keys.clone();
        }
        if index.get::<_, bool>(1) {
            identity_index = keys.clone();
        }
        if index.get::<_, bool>(2) && !keys.is_empty() && keys.iter().all(|k| not_null.contains(k))
        {
            unique_not_null.push(keys);
        }
    }
    let (published, row_filter) = if server_version_num >= 150_000 {
        sql.query_opt(
            "SELECT attnames::text[], rowfilter FROM pg_publication_tables \
             WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
            &[&publication, &schema, &name],
        )
        .await
        .map_err(sql_err("reading the publication's column list", qualified))?
        .map(|r| {
            (
                Some(r.get::<_, Vec<String>>(0)),
                r.get::<_, Option<String>>(1),
            )
        })
        .unwrap_or((None, None))
    } else {
        (None, None)
    };
    Ok(TableFacts {
        oid,
        schema: schema.to_string(),
        name: name.to_string(),
        replica_identity: identity.bytes().next().unwrap_or(b'd'),
        columns,
        published,
        row_filter,
        primary_key,
        identity_index,
        unique_not_null,
        reltuples,
    })
}

/// The watermark table exists and the publication carries its inserts and
/// updates (else no window would ever open).
pub async fn check_watermark(
    sql: &tokio_postgres::Client,
    watermark: &WatermarkTable,
    publication: &str,
) -> Result<(), BackfillError> {
    let wm = watermark.to_string();
    let exists = sql
        .query_opt(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&watermark.schema, &watermark.name],
        )
        .await
        .map_err(sql_err("looking up the watermark table", &wm))?
        .is_some();
    if !exists {
        return Err(BackfillError::WatermarkTableMissing {
            table: wm,
            ddl: watermark.ddl(),
            publication: publication.to_string(),
            sql_name: watermark.sql_name(),
        });
    }
    let published = sql
        .query_opt(
            "SELECT p.pubinsert FROM pg_publication p \
             JOIN pg_publication_tables pt ON pt.pubname = p.pubname \
             WHERE p.pubname = $1 AND pt.schemaname = $2 AND pt.tablename = $3",
            &[&publication, &watermark.schema, &watermark.name],
        )
        .await
        .map_err(sql_err("reading the publication", &wm))?
        .map(|r| r.get::<_, bool>(0));
    if published != Some(true) {
        return Err(BackfillError::WatermarkNotPublished {
            table: wm,
            publication: publication.to_string(),
            sql_name: watermark.sql_name(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> TableSpec {
        serde_json::from_value(serde_json::json!({ "name": name })).unwrap()
    }

    fn facts() -> TableFacts {
        TableFacts {
            oid: 16384,
            schema: "public".into(),
            name: "order lines".into(),
            replica_identity: b'd',
            columns: vec![
                ("order_id".into(), 20, -1),
                ("line".into(), 23, -1),
                ("sku".into(), 25, -1),
                ("price".into(), 1700, 655366),
            ],
            published: Some(vec![
                "order_id".into(),
                "line".into(),
                "sku".into(),
                "price".into(),
            ]),
            row_filter: None,
            primary_key: vec!["order_id".into(), "line".into()],
            identity_index: vec![],
            unique_not_null: vec![vec!["order_id".into(), "line".into()], vec!["sku".into()]],
            reltuples: -1.0,
        }
    }

    #[test]
    fn relation_mirrors_pgoutput_and_keyset_queries_are_quoted() {
        let plan = plan_table(&facts(), &spec("public.order lines")).unwrap();
        assert_eq!(plan.relation.oid, 16384);
        assert_eq!(plan.key_positions, [0, 1]);
        let flags: Vec<bool> = plan.relation.columns.iter().map(|c| c.is_key).collect();
        assert_eq!(flags, [true, true, false, false]);
        assert_eq!(plan.relation.columns[3].type_modifier, 655366);
        assert_eq!(plan.rows_estimated, None, "reltuples -1: never analyzed");
        assert_eq!(
            plan.chunk_sql(None, 101),
            r#"SELECT "order_id", "line", "sku", "price" FROM "public"."order lines" ORDER BY "order_id", "line" LIMIT 101"#
        );
        assert_eq!(
            plan.chunk_sql(Some(&[Some("7".into()), Some("it's".into())]), 11),
            r#"SELECT "order_id", "line", "sku", "price" FROM "public"."order lines" WHERE ("order_id", "line") > ('7', 'it''s') ORDER BY "order_id", "line" LIMIT 11"#
        );
    }

    #[test]
    fn single_keys_filters_and_column_lists() {
        let mut f = facts();
        f.primary_key = vec!["order_id".into()];
        f.published = Some(vec!["sku".into()]);
        f.row_filter = Some("(price > (10)::numeric)".into());
        f.reltuples = 1234.4;
        let mut s = spec("public.order lines");
        s.filter = Some("price > 10 -- spec".into());
        let plan = plan_table(&f, &s).unwrap();
        let names: Vec<&str> = plan
            .relation
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["order_id", "sku"],
            "column list plus the key, attnum order"
        );
        assert_eq!(plan.rows_estimated, Some(1234));
        let mut all = f.clone();
        all.published = None;
        let plan_all = plan_table(&all, &s).unwrap();
        assert_eq!(
            plan_all.relation.columns.len(),
            4,
            "no column list: every column"
        );
        assert_eq!(
            plan.chunk_sql(Some(&[Some("9".into())]), 5),
            "SELECT \"order_id\", \"sku\" FROM \"public\".\"order lines\" WHERE \"order_id\" > '9' AND ((price > (10)::numeric)\n) ORDER BY \"order_id\" LIMIT 5",
            "the publication's own row filter, as the stream applies it"
        );
        // Where the publication's filter cannot be read (no row filters
        // before 15), the spec's; its comment cannot swallow the query.
        assert_eq!(
            plan_all.chunk_sql(None, 5),
            "SELECT \"order_id\", \"line\", \"sku\", \"price\" FROM \"public\".\"order lines\" WHERE (price > 10 -- spec\n) ORDER BY \"order_id\" LIMIT 5"
        );
    }

    #[test]
    fn the_replica_identity_index_orders_chunks_when_it_is_the_identity() {
        let mut f = facts();
        f.replica_identity = b'i';
        f.identity_index = vec!["sku".into()];
        let plan = plan_table(&f, &spec("public.order lines")).unwrap();
        assert_eq!(plan.key_names, ["sku"]);
        assert_eq!(plan.key_positions, [2]);
        let flags: Vec<bool> = plan.relation.columns.iter().map(|c| c.is_key).collect();
        assert_eq!(flags, [false, false, true, false]);
    }

    #[test]
    fn identity_full_keeps_the_primary_key_as_record_key() {
        let mut f = facts();
        f.replica_identity = b'f';
        let plan = plan_table(&f, &spec("public.order lines")).unwrap();
        let flags: Vec<bool> = plan.relation.columns.iter().map(|c| c.is_key).collect();
        assert_eq!(flags, [true, true, false, false]);
    }

    #[test]
    fn a_table_without_key_is_refused_with_the_fix() {
        let mut f = facts();
        f.primary_key.clear();
        let err = plan_table(&f, &spec("public.order lines")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("public.order lines"), "{text}");
        assert!(text.contains("add a primary key"), "{text}");
        assert!(
            text.contains(r#"ALTER TABLE "public"."order lines" REPLICA IDENTITY USING INDEX"#),
            "{text}"
        );
        assert!(!err.is_transient());
    }

    #[test]
    fn key_columns_backed_by_a_unique_not_null_index_order_the_chunks() {
        let mut f = facts();
        f.primary_key.clear();
        f.replica_identity = b'f';
        let mut s = spec("public.order lines");
        s.key_columns = vec!["sku".into()];
        let plan = plan_table(&f, &s).unwrap();
        assert_eq!(plan.key_names, ["sku"]);
        let flags: Vec<bool> = plan.relation.columns.iter().map(|c| c.is_key).collect();
        assert_eq!(
            flags,
            [false, false, true, false],
            "as the assembler flags them"
        );
        // Without such an index the keyColumns could repeat or be null.
        s.key_columns = vec!["price".into()];
        assert!(matches!(
            plan_table(&f, &s),
            Err(BackfillError::NoKey { .. })
        ));
    }

    #[test]
    fn watermark_statements() {
        let wm = WatermarkTable::parse("public.siphon_watermarks");
        assert_eq!(
            wm.upsert_sql(),
            r#"WITH gone AS (DELETE FROM "public"."siphon_watermarks" WHERE capture = $1 RETURNING 1) INSERT INTO "public"."siphon_watermarks" (capture, watermark) SELECT $1, $2::text FROM (SELECT count(*) FROM gone) AS done"#
        );
        assert_eq!(WatermarkTable::parse("wm").schema, "public");
        assert!(wm.ddl().starts_with(
            r#"CREATE TABLE IF NOT EXISTS "public"."siphon_watermarks" (capture text PRIMARY KEY"#
        ));
    }
}
