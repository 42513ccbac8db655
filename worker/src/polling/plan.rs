//! What to poll and how: per table (or `tables[].query`) the relation its
//! records are encoded from, its cursor and key, and the SQL of each read.
//!
//! Building SQL is pure; only the `load`/`describe` functions query the
//! catalogs. Identifiers are always quoted; cursor and key values are
//! inlined as quoted literals (the reads run in the simple protocol, so
//! values come back in PostgreSQL's text output form, byte for byte what
//! pgoutput sends in logical mode); the spec's `filter` and `query`, checked
//! by the operator through PostgreSQL, are the only text pasted as written.
//!
//! **Order.** Every read orders by (cursor, key…) and continues strictly
//! after the last (cursor, key) delivered, so rows that tie on the cursor at
//! a batch boundary are neither lost nor repeated: (cursor, key) is unique
//! because the key is.

use std::sync::Arc;
use std::time::Duration;

use siphon_crds::capture::{PollingSpec, TableSpec};
use siphon_crds::polling::CursorKind;

use super::PollError;
use crate::backfill::plan::TableFacts;
use crate::change::{Column, Relation};
use crate::offsets::PolledPosition;
use siphon_postgres::{quote_ident, quote_literal};

/// Where a table's rows come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A table (or a partitioned table: its partitions' rows).
    Table { schema: String, name: String },
    /// The rows of a user's SELECT.
    Query(String),
}

/// Everything about one polled table that does not change between polls.
#[derive(Clone, Debug)]
pub struct PollTable {
    /// `schema.table` as the spec names it: the topic, the position key.
    pub name: String,
    /// The columns read, in order, with the key flags records use.
    pub relation: Arc<Relation>,
    pub source: Source,
    /// Index of the cursor column in `relation.columns`.
    pub cursor: usize,
    pub cursor_kind: CursorKind,
    /// Indexes of the key columns in `relation.columns`, in key order.
    pub keys: Vec<usize>,
    /// The spec's row filter (over the table's, or the query's, columns).
    pub filter: Option<String>,
    /// Triggers record this table's deletes (`polling.notify`).
    pub notify: bool,
}

/// Where a forward read starts.
#[derive(Clone, Copy, Debug)]
pub enum Start<'a> {
    /// Nothing delivered yet and no `initialCursor`: the first row.
    Beginning,
    /// Nothing delivered yet: rows whose cursor is at least this.
    AtLeast(&'a str),
    /// Strictly after the last row delivered.
    After(&'a PolledPosition),
}

impl PollTable {
    /// Name of the cursor column.
    pub fn cursor_name(&self) -> &str {
        &self.relation.columns[self.cursor].name
    }

    fn select_list(&self) -> String {
        self.relation
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn source_sql(&self) -> String {
        match &self.source {
            Source::Table { schema, name } => {
                format!("{}.{}", quote_ident(schema), quote_ident(name))
            }
            // The newline ends a `--` comment on the query's last line.
            Source::Query(q) => format!("({q}\n) AS siphon_query"),
        }
    }

    /// `cursor, key…`, quoted: the order of every read.
    fn order(&self) -> Vec<String> {
        std::iter::once(self.cursor)
            .chain(self.keys.iter().copied())
            .map(|i| quote_ident(&self.relation.columns[i].name))
            .collect()
    }

    /// `(cursor, key…) <op> ('…', '…')`.
    fn keyset(&self, op: &str, at: &PolledPosition) -> String {
        let values: Vec<String> = std::iter::once(Some(at.cursor.as_str()))
            .chain(at.key.iter().map(Option::as_deref))
            .map(|v| v.map_or_else(|| "NULL".to_string(), quote_literal))
            .collect();
        format!("({}) {op} ({})", self.order().join(", "), values.join(", "))
    }

    fn query(&self, mut conditions: Vec<String>, limit: Option<u32>) -> String {
        if let Some(filter) = &self.filter {
            conditions.push(format!("({filter}\n)"));
        }
        let mut sql = format!("SELECT {} FROM {}", self.select_list(), self.source_sql());
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY ");
        sql.push_str(&self.order().join(", "));
        if let Some(limit) = limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        sql
    }

    /// The next rows after `start`, in (cursor, key) order, at most
    /// `limit`; with a `horizon`, only rows whose cursor is before it.
    pub fn forward_sql(&self, start: Start<'_>, horizon: Option<&str>, limit: u32) -> String {
        let cursor = quote_ident(self.cursor_name());
        let mut conditions = Vec::new();
        match start {
            Start::Beginning => {}
            Start::AtLeast(value) => {
                conditions.push(format!("{cursor} >= {}", quote_literal(value)));
            }
            Start::After(at) => conditions.push(self.keyset(">", at)),
        }
        // Rows whose cursor is NULL never match a comparison: say so in
        // SQL, so the planner can use a partial index on NOT NULL cursors.
        conditions.push(format!("{cursor} IS NOT NULL"));
        if let Some(h) = horizon {
            conditions.push(format!("{cursor} < {}::timestamptz", quote_literal(h)));
        }
        self.query(conditions, Some(limit))
    }

    /// Whether a row after `start` waits beyond the `horizon`
    /// (`lateness: Auto`): one index probe, no rows read.
    pub fn beyond_horizon_sql(&self, start: Start<'_>, horizon: &str) -> String {
        let cursor = quote_ident(self.cursor_name());
        let mut conditions = vec![format!(
            "{cursor} >= {}::timestamptz",
            quote_literal(horizon)
        )];
        match start {
            Start::Beginning => {}
            Start::AtLeast(value) => {
                conditions.push(format!("{cursor} >= {}", quote_literal(value)));
            }
            Start::After(at) => conditions.push(self.keyset(">", at)),
        }
        if let Some(filter) = &self.filter {
            conditions.push(format!("({filter}\n)"));
        }
        format!(
            "SELECT 1 FROM {} WHERE {} LIMIT 1",
            self.source_sql(),
            conditions.join(" AND ")
        )
    }

    /// The rows at or behind `at` within `window` of its cursor (time
    /// cursors only), in order: where a late commit shows up.
    pub fn window_sql(&self, at: &PolledPosition, window: Duration) -> String {
        let cursor = quote_ident(self.cursor_name());
        let ty = match self.cursor_kind {
            CursorKind::TimestampTz => "timestamptz",
            CursorKind::Timestamp => "timestamp",
            CursorKind::Date => "date",
            // The operator refuses a window on a number cursor; read the
            // position alone rather than guess a unit.
            CursorKind::Number => return self.query(vec![self.keyset("=", at)], None),
        };
        let conditions = vec![
            format!(
                "{cursor} >= {}::{ty} - interval '{} milliseconds'",
                quote_literal(&at.cursor),
                window.as_millis()
            ),
            self.keyset("<=", at),
        ];
        self.query(conditions, None)
    }

    /// The position of a row read by this table's queries.
    pub fn position_of(&self, row: &[crate::change::Datum]) -> Option<PolledPosition> {
        let text = |i: usize| match row.get(i) {
            Some(crate::change::Datum::Text(t)) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        };
        Some(PolledPosition {
            cursor: text(self.cursor)?,
            key: self.keys.iter().map(|&i| text(i)).collect(),
        })
    }
}

/// The cursor column of a table: its own, else the capture's.
pub fn cursor_column<'a>(spec: &'a TableSpec, polling: &'a PollingSpec) -> &'a str {
    spec.cursor_column
        .as_deref()
        .unwrap_or(polling.cursor_column.as_str())
}

/// Plan a table from its catalog facts (pure).
pub fn plan_table(
    facts: &TableFacts,
    spec: &TableSpec,
    polling: &PollingSpec,
) -> Result<PollTable, PollError> {
    let cursor_name = cursor_column(spec, polling);
    let columns: Vec<(String, u32, i32)> = facts.columns.clone();
    let key_names = if !facts.primary_key.is_empty() {
        facts.primary_key.clone()
    } else if !spec.key_columns.is_empty()
        && facts.unique_not_null.iter().any(|index| {
            index.len() == spec.key_columns.len()
                && index.iter().all(|c| spec.key_columns.contains(c))
        })
    {
        spec.key_columns.clone()
    } else {
        return Err(PollError::NoKey {
            table: spec.name.clone(),
        });
    };
    let source = Source::Table {
        schema: facts.schema.clone(),
        name: facts.name.clone(),
    };
    plan(
        spec,
        facts.oid,
        &columns,
        cursor_name,
        &key_names,
        source,
        polling,
    )
}

/// Plan a `tables[].query` from the columns PostgreSQL describes for it
/// (pure); `oid` is a number no table of the capture uses.
pub fn plan_query(
    spec: &TableSpec,
    query: &str,
    described: &[(String, u32)],
    oid: u32,
    polling: &PollingSpec,
) -> Result<PollTable, PollError> {
    let columns: Vec<(String, u32, i32)> =
        described.iter().map(|(n, t)| (n.clone(), *t, -1)).collect();
    for (i, (name, _, _)) in columns.iter().enumerate() {
        if columns[..i].iter().any(|(n, _, _)| n == name) {
            return Err(PollError::Query {
                table: spec.name.clone(),
                message: format!(
                    "it returns two columns named {name:?}: give each output column its own name (AS …)"
                ),
            });
        }
    }
    plan(
        spec,
        oid,
        &columns,
        cursor_column(spec, polling),
        &spec.key_columns,
        Source::Query(query.to_string()),
        polling,
    )
}

fn plan(
    spec: &TableSpec,
    oid: u32,
    columns: &[(String, u32, i32)],
    cursor_name: &str,
    key_names: &[String],
    source: Source,
    polling: &PollingSpec,
) -> Result<PollTable, PollError> {
    let Some(&(_, cursor_type, _)) = columns.iter().find(|(n, _, _)| n == cursor_name) else {
        return Err(PollError::CursorMissing {
            table: spec.name.clone(),
            column: cursor_name.to_string(),
        });
    };
    let Some(cursor_kind) = CursorKind::of_type(cursor_type) else {
        return Err(PollError::CursorType {
            table: spec.name.clone(),
            column: cursor_name.to_string(),
        });
    };
    for key in key_names {
        if !columns.iter().any(|(n, _, _)| n == key) {
            return Err(PollError::Query {
                table: spec.name.clone(),
                message: format!("key column {key:?} is not among its columns"),
            });
        }
    }
    // The spec's selection, plus what every read needs: the key and the cursor.
    let read = |name: &str| {
        spec.columns.is_empty()
            || spec.columns.iter().any(|c| c == name)
            || name == cursor_name
            || key_names.iter().any(|k| k == name)
    };
    let relation_columns: Vec<Column> = columns
        .iter()
        .filter(|(name, _, _)| read(name))
        .map(|(name, type_oid, type_modifier)| Column {
            name: name.clone(),
            type_oid: *type_oid,
            type_modifier: *type_modifier,
            is_key: key_names.iter().any(|k| k == name),
        })
        .collect();
    let position = |name: &str| relation_columns.iter().position(|c| c.name == name);
    let cursor = position(cursor_name).unwrap_or_default();
    let keys = key_names.iter().filter_map(|k| position(k)).collect();
    let (schema, name) = spec
        .name
        .split_once('.')
        .unwrap_or(("public", spec.name.as_str()));
    Ok(PollTable {
        name: spec.name.clone(),
        relation: Arc::new(Relation {
            oid,
            schema: schema.to_string(),
            name: name.to_string(),
            replica_identity: b'd',
            columns: relation_columns,
        }),
        notify: polling.notify && matches!(source, Source::Table { .. }),
        source,
        cursor,
        cursor_kind,
        keys,
        filter: spec.filter.clone(),
    })
}

/// Ask PostgreSQL for the output columns (name, type oid) of a query,
/// without running it.
pub async fn describe(
    sql: &tokio_postgres::Client,
    table: &str,
    query: &str,
) -> Result<Vec<(String, u32)>, PollError> {
    let statement = sql
        .prepare(&format!(
            "SELECT * FROM ({query}\n) AS siphon_query LIMIT 0"
        ))
        .await
        .map_err(|e| PollError::Query {
            table: table.to_string(),
            message: format!("PostgreSQL refuses it: {e}"),
        })?;
    Ok(statement
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().oid()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polling() -> PollingSpec {
        serde_json::from_value(serde_json::json!({ "cursorColumn": "updated_at" })).unwrap()
    }

    fn spec(v: serde_json::Value) -> TableSpec {
        serde_json::from_value(v).unwrap()
    }

    fn facts() -> TableFacts {
        TableFacts {
            oid: 16400,
            schema: "public".into(),
            name: "Order Lines".into(),
            replica_identity: b'd',
            columns: vec![
                ("tenant".into(), 23, -1),
                ("id".into(), 20, -1),
                ("note".into(), 25, -1),
                ("updated_at".into(), 1184, -1),
            ],
            primary_key: vec!["tenant".into(), "id".into()],
            ..TableFacts::default()
        }
    }

    #[test]
    fn reads_continue_strictly_after_the_last_cursor_and_key() {
        let table = plan_table(
            &facts(),
            &spec(serde_json::json!({"name": "public.Order Lines"})),
            &polling(),
        )
        .unwrap();
        assert_eq!(table.cursor_name(), "updated_at");
        assert_eq!(table.keys, vec![0, 1]);
        let at = PolledPosition {
            cursor: "2024-01-01 00:00:00+00".into(),
            key: vec![Some("7".into()), Some("it's".into())],
        };
        assert_eq!(
            table.forward_sql(Start::After(&at), None, 500),
            "SELECT \"tenant\", \"id\", \"note\", \"updated_at\" FROM \"public\".\"Order Lines\" \
             WHERE (\"updated_at\", \"tenant\", \"id\") > ('2024-01-01 00:00:00+00', '7', 'it''s') \
             AND \"updated_at\" IS NOT NULL \
             ORDER BY \"updated_at\", \"tenant\", \"id\" LIMIT 500"
        );
        assert!(
            table
                .forward_sql(
                    Start::AtLeast("2024-06-01"),
                    Some("2024-07-01 00:00:00+00"),
                    10
                )
                .contains(
                    "WHERE \"updated_at\" >= '2024-06-01' AND \"updated_at\" IS NOT NULL \
                     AND \"updated_at\" < '2024-07-01 00:00:00+00'::timestamptz"
                )
        );
        assert_eq!(
            table.beyond_horizon_sql(Start::After(&at), "2024-01-01 00:00:05+00"),
            "SELECT 1 FROM \"public\".\"Order Lines\" WHERE \"updated_at\" >= '2024-01-01 00:00:05+00'::timestamptz \
             AND (\"updated_at\", \"tenant\", \"id\") > ('2024-01-01 00:00:00+00', '7', 'it''s') LIMIT 1"
        );
        let window = table.window_sql(&at, Duration::from_secs(30));
        assert!(
            window.contains("\"updated_at\" >= '2024-01-01 00:00:00+00'::timestamptz - interval '30000 milliseconds'"),
            "{window}"
        );
        assert!(window.contains("<= ('2024-01-01 00:00:00+00', '7', 'it''s')"));
        assert!(!window.contains("LIMIT"), "a window is read whole");
    }

    #[test]
    fn columns_keep_the_key_and_the_cursor_and_filters_are_parenthesized() {
        let table = plan_table(
            &facts(),
            &spec(serde_json::json!({
                "name": "public.Order Lines", "columns": ["note"], "filter": "note <> 'x' -- c"
            })),
            &polling(),
        )
        .unwrap();
        let names: Vec<&str> = table
            .relation
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["tenant", "id", "note", "updated_at"]);
        let sql = table.forward_sql(Start::Beginning, None, 1);
        assert!(sql.contains("AND (note <> 'x' -- c\n) ORDER BY"), "{sql}");
        let narrow = plan_table(
            &facts(),
            &spec(serde_json::json!({"name": "public.Order Lines", "columns": ["tenant"]})),
            &polling(),
        )
        .unwrap();
        assert_eq!(narrow.relation.columns.len(), 3, "note is not read");
    }

    #[test]
    fn unfit_tables_are_refused_with_the_reason() {
        let mut f = facts();
        f.primary_key.clear();
        let t = spec(serde_json::json!({"name": "public.t"}));
        assert!(matches!(
            plan_table(&f, &t, &polling()),
            Err(PollError::NoKey { .. })
        ));
        f.unique_not_null = vec![vec!["id".into()]];
        let keyed = spec(serde_json::json!({"name": "public.t", "keyColumns": ["id"]}));
        assert_eq!(plan_table(&f, &keyed, &polling()).unwrap().keys, vec![1]);
        let missing = spec(serde_json::json!({"name": "public.t", "cursorColumn": "nope"}));
        assert!(matches!(
            plan_table(&facts(), &missing, &polling()),
            Err(PollError::CursorMissing { .. })
        ));
        let text = spec(serde_json::json!({"name": "public.t", "cursorColumn": "note"}));
        assert!(matches!(
            plan_table(&facts(), &text, &polling()),
            Err(PollError::CursorType { .. })
        ));
    }

    #[test]
    fn a_query_is_wrapped_and_needs_unique_output_names() {
        let t = spec(serde_json::json!({
            "name": "shop.order_totals", "keyColumns": ["order_id"],
            "query": "SELECT o.id AS order_id, sum(l.amount) AS total, max(l.updated_at) AS updated_at FROM o JOIN l USING (id) GROUP BY 1"
        }));
        let described = vec![
            ("order_id".to_string(), 20),
            ("total".to_string(), 1700),
            ("updated_at".to_string(), 1184),
        ];
        let table = plan_query(&t, t.query.as_deref().unwrap(), &described, 1, &polling()).unwrap();
        assert!(!table.notify);
        let sql = table.forward_sql(Start::Beginning, None, 100);
        assert!(sql.starts_with(
            "SELECT \"order_id\", \"total\", \"updated_at\" FROM (SELECT o.id AS order_id"
        ));
        assert!(sql.contains("GROUP BY 1\n) AS siphon_query WHERE"));
        assert!(sql.ends_with("ORDER BY \"updated_at\", \"order_id\" LIMIT 100"));
        let twice = vec![("a".to_string(), 23), ("a".to_string(), 23)];
        assert!(matches!(
            plan_query(&t, "SELECT 1 a, 2 a", &twice, 1, &polling()),
            Err(PollError::Query { .. })
        ));
    }
}
