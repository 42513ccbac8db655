//! The polling preflight: what the server, each polled table or query and
//! its filter say, checked by pure `check_*` steps into one [`Polled`] per
//! table. Spec text is only ever *prepared*, in a READ ONLY transaction
//! rolled back (the parent module says why that keeps it one expression).

use std::collections::BTreeSet;

use siphon_crds::conditions::reason;
use siphon_crds::polling::{CursorKind, Lateness};
use tokio_postgres::Client;
use tokio_postgres::error::{DbError, SqlState};

use super::notify::{NotifyObjects, NotifyState, read_notify_state};
use crate::database::{
    self, End, Table, Unfit, qualified, quote_ident, run, sql_error, transaction,
};
use crate::validate::{Plan, PollingPlan, TableRef};

// ---------------------------------------------------------------------------
// Facts and decisions of the preflight
// ---------------------------------------------------------------------------

/// What the server says about the role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    pub version: i32,
    pub user: String,
    pub superuser: bool,
    /// Member of `pg_read_all_stats`: sees other sessions' transactions.
    pub reads_all_stats: bool,
    /// CREATE on `polling.objectsSchema`; `None` when it does not exist.
    pub objects_schema_create: Option<bool>,
}

/// A column of a table or of a query's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnFact {
    pub name: String,
    /// The type's OID (a domain's base type, as the wire protocol reports it).
    pub type_oid: u32,
    /// The type as PostgreSQL writes it (`format_type`), for messages.
    pub type_name: String,
    pub not_null: bool,
}

/// A valid index of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFact {
    pub primary: bool,
    pub unique: bool,
    /// Has a `WHERE` predicate.
    pub partial: bool,
    pub btree: bool,
    /// Key columns in index order; `None` for an expression.
    pub columns: Vec<Option<String>>,
}

/// A relation as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCatalog {
    /// `pg_class.relkind`: `r`, `p`, `v`, `m`, `f`, …
    pub relkind: String,
    pub can_select: bool,
    pub can_trigger: bool,
    /// The role is (a member of) the owner.
    pub owns: bool,
    pub owner: String,
    pub columns: Vec<ColumnFact>,
    pub indexes: Vec<IndexFact>,
}

impl TableCatalog {
    fn column(&self, name: &str) -> Option<&ColumnFact> {
        self.columns.iter().find(|c| c.name == name)
    }

    fn primary_key(&self) -> Option<Vec<String>> {
        self.indexes
            .iter()
            .find(|i| i.primary)
            .map(|i| i.columns.iter().flatten().cloned().collect())
    }
}

/// One polled table or query, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Polled {
    /// `schema.table` as the spec names it (a query's topic name).
    pub name: String,
    /// The table; `None` for a `tables[].query`.
    pub relation: Option<Table>,
    pub cursor: String,
    pub kind: CursorKind,
    /// The columns that identify a row, in order.
    pub key: Vec<String>,
    /// The index that would serve the polls, when the cursor leads none.
    pub index_advice: Option<String>,
}

/// What the preflight learned, for provisioning and the status.
#[derive(Debug, Clone)]
pub struct PollingFacts {
    pub server_version_num: i32,
    pub polled: Vec<Polled>,
    /// The catalog state of the notify objects (`notify: true` only).
    pub notify: Option<NotifyState>,
}

/// Refuse what the server or the role lacks for this capture (pure).
pub fn check_server(server: &ServerFacts, polling: &PollingPlan) -> Result<(), Unfit> {
    database::check_version(server.version)?;
    let role = quote_ident(&server.user);
    if polling.lateness == Lateness::Auto && !server.superuser && !server.reads_all_stats {
        return Err(Unfit::definite(
            reason::HORIZON_UNAVAILABLE,
            format!(
                "polling.lateness: Auto never reads past the start of the oldest open transaction, and role {role} cannot see other sessions' transactions: GRANT pg_read_all_stats TO {role}, or set another polling.lateness"
            ),
        ));
    }
    if polling.spec.notify {
        let schema = &polling.spec.objects_schema;
        match server.objects_schema_create {
            None => {
                return Err(Unfit::definite(
                    reason::INVALID_SPEC,
                    format!(
                        "polling.objectsSchema {schema:?} does not exist: CREATE SCHEMA {}, or set polling.objectsSchema to an existing schema",
                        quote_ident(schema)
                    ),
                ));
            }
            Some(false) if !server.superuser => {
                return Err(Unfit::definite(
                    reason::INSUFFICIENT_PRIVILEGE,
                    format!(
                        "polling.notify creates a trigger function and a table of deleted keys in schema {schema}, where role {role} may not create: GRANT CREATE ON SCHEMA {} TO {role}, or set polling.objectsSchema, or set polling.notify: false",
                        quote_ident(schema)
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Check one polled table from its catalog facts (pure): a table, readable,
/// its cursor column of a supported type that fits the lateness, a key, the
/// columns the spec names, and for notify the privileges the triggers need.
pub fn check_table(
    index: usize,
    table: &TableRef,
    polling: &PollingPlan,
    server: &ServerFacts,
    catalog: Option<&TableCatalog>,
) -> Result<Polled, Unfit> {
    let name = table.name.as_deref().unwrap_or("*");
    let schema = table.schema.as_str();
    let shown = format!("{schema}.{name}");
    let sql = qualified(schema, name);
    let role = quote_ident(&server.user);
    let Some(catalog) = catalog else {
        return Err(Unfit::definite(
            reason::TABLE_NOT_FOUND,
            format!("table {shown} does not exist: create it or remove it from spec.tables"),
        ));
    };
    if !matches!(catalog.relkind.as_str(), "r" | "p") {
        let what = match catalog.relkind.as_str() {
            "v" => "a view",
            "m" => "a materialized view",
            "f" => "a foreign table",
            _ => "not a table",
        };
        return Err(Unfit::definite(
            reason::TABLE_NOT_FOUND,
            format!(
                "{shown} is {what}, not a table: poll it with spec.tables[{index}].query (SELECT … FROM {sql}) and keyColumns"
            ),
        ));
    }
    if !catalog.can_select {
        return Err(Unfit::definite(
            reason::INSUFFICIENT_PRIVILEGE,
            format!("the role may not read {shown}: GRANT SELECT ON {sql} TO {role}"),
        ));
    }
    let cursor = polling.cursor_of(&table.spec);
    let from = if table.spec.cursor_column.is_some() {
        format!("spec.tables[{index}].cursorColumn")
    } else {
        "polling.cursorColumn".to_string()
    };
    let Some(column) = catalog.column(cursor) else {
        return Err(Unfit::definite(
            reason::CURSOR_COLUMN_MISSING,
            format!(
                "table {shown} has no column {cursor:?} (the cursor column, from {from}): add one that grows with every change (ALTER TABLE {sql} ADD COLUMN {} timestamptz NOT NULL DEFAULT now(), set again on update by a trigger), or set spec.tables[{index}].cursorColumn",
                quote_ident(cursor)
            ),
        ));
    };
    let kind = cursor_kind(
        index,
        &format!("table {shown}"),
        cursor,
        column.type_oid,
        &column.type_name,
        polling.lateness,
    )?;
    for (field, names) in [
        ("columns", &table.spec.columns),
        ("keyColumns", &table.spec.key_columns),
    ] {
        if let Some(missing) = names.iter().find(|c| catalog.column(c).is_none()) {
            return Err(Unfit::definite(
                reason::INVALID_SPEC,
                format!(
                    "spec.tables[{index}].{field} names {missing:?}, which table {shown} does not have: fix the list"
                ),
            ));
        }
    }
    let key = table_key(index, &shown, &sql, &table.spec.key_columns, catalog)?;
    if polling.spec.notify {
        if !catalog.can_trigger {
            return Err(Unfit::definite(
                reason::INSUFFICIENT_PRIVILEGE,
                format!(
                    "polling.notify makes triggers on {shown}, which role {role} may not: GRANT TRIGGER ON {sql} TO {role}, or set polling.notify: false"
                ),
            ));
        }
        if !catalog.owns && !server.superuser {
            return Err(Unfit::definite(
                reason::INSUFFICIENT_PRIVILEGE,
                format!(
                    "polling.notify makes triggers on {shown}, and only the table's owner may drop them again (on deletion, when the table leaves spec.tables or notify is turned off): ALTER TABLE {sql} OWNER TO {role}, or GRANT {} TO {role} (membership in the owner role), or set polling.notify: false",
                    quote_ident(&catalog.owner)
                ),
            ));
        }
    }
    let indexed = catalog
        .indexes
        .iter()
        .any(|i| i.btree && !i.partial && i.columns.first() == Some(&Some(cursor.to_string())));
    Ok(Polled {
        name: shown,
        relation: Some((schema.to_string(), name.to_string())),
        cursor: cursor.to_string(),
        kind,
        index_advice: (!indexed).then(|| index_ddl(schema, name, cursor, &key)),
        key,
    })
}

/// The key of a table (pure): the spec's `keyColumns` when set (NOT NULL,
/// and covered by a unique index), else the primary key.
fn table_key(
    index: usize,
    shown: &str,
    sql: &str,
    key_columns: &[String],
    catalog: &TableCatalog,
) -> Result<Vec<String>, Unfit> {
    if key_columns.is_empty() {
        return catalog.primary_key().filter(|k| !k.is_empty()).ok_or_else(|| {
            Unfit::definite(
                reason::NO_PRIMARY_KEY,
                format!(
                    "table {shown} has no primary key, which polling needs to order rows of equal cursor and to identify a row: ALTER TABLE {sql} ADD PRIMARY KEY (…), or set spec.tables[{index}].keyColumns to NOT NULL columns covered by a unique index"
                ),
            )
        });
    }
    if let Some(nullable) = key_columns
        .iter()
        .find(|k| catalog.column(k).is_some_and(|c| !c.not_null))
    {
        return Err(Unfit::definite(
            reason::NO_PRIMARY_KEY,
            format!(
                "keyColumns of {shown} must be NOT NULL (a NULL key never compares, so its rows would be skipped), and {nullable} may be NULL: ALTER TABLE {sql} ALTER COLUMN {} SET NOT NULL, or fix spec.tables[{index}].keyColumns",
                quote_ident(nullable)
            ),
        ));
    }
    let covered = catalog.indexes.iter().any(|i| {
        i.unique
            && !i.partial
            && !i.columns.is_empty()
            && i.columns
                .iter()
                .all(|c| c.as_ref().is_some_and(|c| key_columns.contains(c)))
    });
    if !covered {
        return Err(Unfit::definite(
            reason::NO_PRIMARY_KEY,
            format!(
                "keyColumns ({}) of {shown} are covered by no unique index, so they may not identify a row: CREATE UNIQUE INDEX CONCURRENTLY ON {sql} ({}), or ALTER TABLE {sql} ADD PRIMARY KEY (…) and drop keyColumns",
                key_columns.join(", "),
                quoted_list(key_columns)
            ),
        ));
    }
    Ok(key_columns.to_vec())
}

/// Check one `tables[].query` from the columns PostgreSQL says it returns
/// (pure): distinct names, the cursor column of a supported type, every key
/// column and listed column.
pub fn check_query(
    index: usize,
    table: &TableRef,
    polling: &PollingPlan,
    columns: &[ColumnFact],
) -> Result<Polled, Unfit> {
    let shown = table.spec.name.clone();
    let what = format!("the query of spec.tables[{index}] ({shown})");
    let refuse = |message: String| Unfit::definite(reason::INVALID_QUERY, message);
    let mut seen = BTreeSet::new();
    if let Some(twice) = columns.iter().find(|c| !seen.insert(c.name.as_str())) {
        return Err(refuse(format!(
            "{what} returns two columns named {:?}: give each a distinct name (… AS …)",
            twice.name
        )));
    }
    let listed = || {
        columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cursor = polling.cursor_of(&table.spec);
    let Some(column) = columns.iter().find(|c| c.name == cursor) else {
        return Err(Unfit::definite(
            reason::CURSOR_COLUMN_MISSING,
            format!(
                "{what} returns no column {cursor:?}, the cursor column (it returns {}): select it, or set spec.tables[{index}].cursorColumn to one it returns",
                listed()
            ),
        ));
    };
    let kind = cursor_kind(
        index,
        &what,
        cursor,
        column.type_oid,
        &column.type_name,
        polling.lateness,
    )?;
    for (field, names) in [
        ("keyColumns", &table.spec.key_columns),
        ("columns", &table.spec.columns),
    ] {
        if let Some(missing) = names
            .iter()
            .find(|k| !columns.iter().any(|c| &c.name == *k))
        {
            return Err(refuse(format!(
                "{what} returns no column {missing:?}, which spec.tables[{index}].{field} names (it returns {}): select it, or fix {field}",
                listed()
            )));
        }
    }
    Ok(Polled {
        name: shown,
        relation: None,
        cursor: cursor.to_string(),
        kind,
        key: table.spec.key_columns.clone(),
        index_advice: None,
    })
}

/// The kind of a cursor column, and whether it fits `polling.lateness` (pure).
fn cursor_kind(
    index: usize,
    what: &str,
    cursor: &str,
    type_oid: u32,
    type_name: &str,
    lateness: Lateness,
) -> Result<CursorKind, Unfit> {
    let kind = CursorKind::of_type(type_oid).ok_or_else(|| {
        Unfit::definite(
            reason::CURSOR_TYPE_UNSUPPORTED,
            format!(
                "the cursor column {cursor:?} of {what} is of type {type_name}, which cannot order rows as a cursor: use a column of type {}, set spec.tables[{index}].cursorColumn to one",
                CursorKind::SUPPORTED
            ),
        )
    })?;
    match lateness {
        // The horizon is a point in time (`xact_start`): it bounds only a
        // timestamptz the database sets from its clock; a `timestamp` or a
        // date depends on each writer's TimeZone.
        Lateness::Auto if kind != CursorKind::TimestampTz => Err(Unfit::definite(
            reason::HORIZON_UNAVAILABLE,
            format!(
                "polling.lateness: Auto bounds a timestamptz cursor the database sets from its clock (DEFAULT now()), and the cursor column {cursor:?} of {what} is of type {type_name}: use such a timestamptz cursor, or set a window (a time cursor) or no polling.lateness (a sequence)"
            ),
        )),
        Lateness::Window(_) if !kind.is_time() => Err(Unfit::definite(
            reason::INVALID_SPEC,
            format!(
                "polling.lateness is a time window, and the cursor column {cursor:?} of {what} is a number ({type_name}): remove polling.lateness, or use a timestamp cursor"
            ),
        )),
        _ => Ok(kind),
    }
}

/// `CREATE INDEX CONCURRENTLY ON t (cursor, key…)`: the index a poll walks (pure).
pub fn index_ddl(schema: &str, table: &str, cursor: &str, key: &[String]) -> String {
    let mut columns = vec![cursor.to_string()];
    columns.extend(key.iter().filter(|k| *k != cursor).cloned());
    format!(
        "CREATE INDEX CONCURRENTLY ON {} ({})",
        qualified(schema, table),
        quoted_list(&columns)
    )
}

fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `CursorIndexed` condition (pure): status, reason and message. It is
/// a warning: an unindexed cursor makes each poll scan the table.
pub fn cursor_indexed(polled: &[Polled]) -> (bool, &'static str, String) {
    let advice: Vec<&str> = polled
        .iter()
        .filter_map(|p| p.index_advice.as_deref())
        .collect();
    let tables = polled.iter().filter(|p| p.relation.is_some()).count();
    let queries = polled.len() - tables;
    if advice.is_empty() {
        let mut message = format!("the cursor column of each of {tables} table(s) leads an index");
        if queries > 0 {
            message.push_str(&format!(
                "; the indexes of {queries} query(ies) are not checked"
            ));
        }
        return (true, reason::INDEXED, message);
    }
    let unindexed: Vec<&str> = polled
        .iter()
        .filter(|p| p.index_advice.is_some())
        .map(|p| p.name.as_str())
        .collect();
    (
        false,
        reason::CURSOR_NOT_INDEXED,
        format!(
            "the cursor column of {} leads no index, so each poll reads the whole table (the capture runs): {}",
            unindexed.join(", "),
            advice.join("; ")
        ),
    )
}

/// The `Provisioned` message of a polling capture (pure).
pub fn provisioned_message(polled: usize, notify_tables: Option<usize>) -> String {
    match notify_tables {
        Some(n) => format!("{polled} table(s) ready for polling; notify triggers on {n} table(s)"),
        None => format!("{polled} table(s) ready for polling"),
    }
}

/// The two shapes in which PostgreSQL must accept a filter (pure): wrapped
/// in parentheses, and bare. `source` is a quoted table or a wrapped query.
/// The newline ends a `--` comment in the filter.
pub fn filter_probes(source: &str, filter: &str) -> [String; 2] {
    [
        format!("SELECT 1 FROM {source} WHERE ({filter}\n) LIMIT 0"),
        format!("SELECT 1 FROM {source} WHERE {filter}\n LIMIT 0"),
    ]
}

/// The two shapes in which PostgreSQL must accept a query (pure): as a
/// subquery, whose output columns describe it, and as itself.
pub fn query_probes(query: &str) -> [String; 2] {
    [
        format!("SELECT * FROM {} LIMIT 0", query_source(query)),
        format!("{query}\n"),
    ]
}

/// A query as a FROM item (pure).
fn query_source(query: &str) -> String {
    format!("({query}\n) AS siphon_query")
}

// ---------------------------------------------------------------------------
// The preflight: reading facts
// ---------------------------------------------------------------------------

/// Check that the database can serve this polling capture: the server
/// version, each table (or query), its filter, and what `lateness` and
/// `notify` need. Checks neither wal_level nor REPLICATION nor slots.
pub async fn preflight(client: &Client, plan: &Plan) -> Result<PollingFacts, Unfit> {
    let polling = plan.polling.as_ref().ok_or_else(|| {
        Unfit::definite(
            reason::INVALID_SPEC,
            "spec.polling is required when spec.mode is Polling (set polling.cursorColumn)",
        )
    })?;
    let server = read_server(client, &polling.spec.objects_schema).await?;
    check_server(&server, polling)?;
    let mut polled = Vec::with_capacity(plan.tables.len());
    for (index, table) in plan.tables.iter().enumerate() {
        let checked = match &table.spec.query {
            Some(query) => {
                let columns = describe_query(client, index, table, query).await?;
                check_query(index, table, polling, &columns)?
            }
            None => {
                let name = table.name.as_deref().unwrap_or("*");
                let catalog = read_table(client, &table.schema, name).await?;
                check_table(index, table, polling, &server, catalog.as_ref())?
            }
        };
        if let Some(filter) = &table.spec.filter {
            check_filter(client, index, table, filter).await?;
        }
        polled.push(checked);
    }
    let notify = match NotifyObjects::of(plan) {
        Some(objects) => Some(read_notify_state(client, &objects).await?),
        None => None,
    };
    Ok(PollingFacts {
        server_version_num: server.version,
        polled,
        notify,
    })
}

async fn read_server(client: &Client, objects_schema: &str) -> Result<ServerFacts, Unfit> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, r.rolsuper, current_user::text, \
               pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER'), \
               (SELECT has_schema_privilege(n.oid, 'CREATE') FROM pg_namespace n WHERE n.nspname = $1) \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[&objects_schema],
        )
        .await
        .map_err(|e| sql_error("reading server settings", e))?;
    Ok(ServerFacts {
        version: row.get(0),
        superuser: row.get(1),
        user: row.get(2),
        reads_all_stats: row.get(3),
        objects_schema_create: row.get(4),
    })
}

/// A table's catalog entry; `None` when no relation has that name.
async fn read_table(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<TableCatalog>, Unfit> {
    let context = "reading the table's catalog entry";
    let Some(row) = client
        .query_opt(
            "SELECT c.oid, c.relkind::text, has_table_privilege(c.oid, 'SELECT'), \
               has_table_privilege(c.oid, 'TRIGGER'), pg_has_role(c.relowner, 'USAGE'), \
               pg_get_userbyid(c.relowner)::text, \
               ARRAY(SELECT a.attname::text FROM pg_attribute a \
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum), \
               ARRAY(SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END \
                     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum), \
               ARRAY(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum), \
               ARRAY(SELECT a.attnotnull FROM pg_attribute a \
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await
        .map_err(|e| sql_error(context, e))?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let names: Vec<String> = row.get(6);
    let types: Vec<u32> = row.get(7);
    let type_names: Vec<String> = row.get(8);
    let not_null: Vec<bool> = row.get(9);
    let columns = names
        .into_iter()
        .zip(types)
        .zip(type_names)
        .zip(not_null)
        .map(|(((name, type_oid), type_name), not_null)| ColumnFact {
            name,
            type_oid,
            type_name,
            not_null,
        })
        .collect();
    let indexes = client
        .query(
            "SELECT i.indisprimary, i.indisunique, i.indpred IS NOT NULL, am.amname = 'btree', \
               ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                     LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                     WHERE k.ord <= i.indnkeyatts ORDER BY k.ord) \
             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam \
             WHERE i.indrelid = $1 AND i.indisvalid",
            &[&oid],
        )
        .await
        .map_err(|e| sql_error("reading the table's indexes", e))?
        .iter()
        .map(|r| IndexFact {
            primary: r.get(0),
            unique: r.get(1),
            partial: r.get(2),
            btree: r.get(3),
            columns: r.get(4),
        })
        .collect();
    Ok(Some(TableCatalog {
        relkind: row.get(1),
        can_select: row.get(2),
        can_trigger: row.get(3),
        owns: row.get(4),
        owner: row.get(5),
        columns,
        indexes,
    }))
}

/// What a prepared probe told: the output columns, or PostgreSQL's refusal.
type Described = Result<Vec<ColumnFact>, String>;

/// Have PostgreSQL parse and analyse `sql` without running it, in a READ
/// ONLY transaction that is rolled back.
async fn describe(client: &Client, sql: &str, context: &str) -> Result<Described, Unfit> {
    transaction(client, context, End::RollBack, async {
        run(client, "SET TRANSACTION READ ONLY", context).await?;
        run(client, "SET LOCAL lock_timeout = '5s'", context).await?;
        match client.prepare(sql).await {
            Ok(statement) if !statement.params().is_empty() => Ok(Err(format!(
                "it uses {} parameter(s) ($1 …); write the values into the text",
                statement.params().len()
            ))),
            Ok(statement) => Ok(Ok(statement
                .columns()
                .iter()
                .map(|c| ColumnFact {
                    name: c.name().to_string(),
                    type_oid: c.type_().oid(),
                    type_name: c.type_().name().to_string(),
                    not_null: false,
                })
                .collect())),
            Err(e) => match e.as_db_error() {
                Some(_) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                    Err(Unfit::transient(
                        reason::PROVISIONING_FAILED,
                        format!("{context}: waited too long for a table lock; retrying"),
                    ))
                }
                Some(db) if !e.is_closed() => Ok(Err(refusal(db))),
                _ => Err(sql_error(context, e)),
            },
        }
    })
    .await
}

fn refusal(db: &DbError) -> String {
    match (db.detail(), db.hint()) {
        (Some(detail), _) => format!("{} ({detail})", db.message()),
        (None, Some(hint)) => format!("{} ({hint})", db.message()),
        (None, None) => db.message().to_string(),
    }
}

/// A query's output columns, once PostgreSQL accepted it as one SELECT.
async fn describe_query(
    client: &Client,
    index: usize,
    table: &TableRef,
    query: &str,
) -> Result<Vec<ColumnFact>, Unfit> {
    let [wrapped, bare] = query_probes(query);
    let refused = |detail: String| {
        let semicolon = if query.trim_end().ends_with(';') {
            " (leave out the final semicolon)"
        } else {
            ""
        };
        Unfit::definite(
            reason::INVALID_QUERY,
            format!(
                "the query of spec.tables[{index}] ({}) is not one SELECT that PostgreSQL accepts: {detail}{semicolon}; fix spec.tables[{index}].query",
                table.spec.name
            ),
        )
    };
    let columns = describe(client, &wrapped, "checking a query")
        .await?
        .map_err(refused)?;
    describe(client, &bare, "checking a query")
        .await?
        .map_err(refused)?;
    Ok(columns)
}

/// Have PostgreSQL accept a filter as one boolean expression over the table
/// (or the query), in both shapes of [`filter_probes`].
async fn check_filter(
    client: &Client,
    index: usize,
    table: &TableRef,
    filter: &str,
) -> Result<(), Unfit> {
    let source = match (&table.spec.query, &table.name) {
        (Some(query), _) => query_source(query),
        (None, Some(name)) => qualified(&table.schema, name),
        (None, None) => qualified(&table.schema, "*"),
    };
    for probe in filter_probes(&source, filter) {
        if let Err(detail) = describe(client, &probe, "checking a filter").await? {
            return Err(Unfit::definite(
                reason::INVALID_FILTER,
                format!(
                    "the filter of {} is not one boolean expression over its columns that PostgreSQL accepts: {detail}; fix spec.tables[{index}].filter",
                    table.spec.name
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::polling::fixtures::*;
    use crate::validate::tests::POLLING;
    use std::time::Duration;

    #[test]
    fn a_table_with_a_key_and_a_time_cursor_is_fit_and_advised_an_index() {
        let p = plan(POLLING);
        let polled = check(&p, &orders()).unwrap();
        assert_eq!(polled.name, "public.orders");
        assert_eq!(polled.key, vec!["id".to_string()]);
        assert_eq!(polled.kind, CursorKind::TimestampTz);
        assert_eq!(
            polled.index_advice.as_deref(),
            Some("CREATE INDEX CONCURRENTLY ON \"public\".\"orders\" (\"updated_at\", \"id\")")
        );
        let mut indexed = orders();
        indexed
            .indexes
            .push(index(false, false, &["updated_at", "id"]));
        assert_eq!(check(&p, &indexed).unwrap().index_advice, None);
        // A partial or an expression index does not serve every poll.
        let mut partial = orders();
        partial.indexes.push(IndexFact {
            partial: true,
            ..index(false, false, &["updated_at"])
        });
        partial
            .indexes
            .push(index(false, false, &["", "updated_at"]));
        assert!(check(&p, &partial).unwrap().index_advice.is_some());
    }

    #[test]
    fn no_ownership_is_demanded_without_notify() {
        let p = plan(POLLING);
        let not_mine = TableCatalog {
            owns: false,
            can_trigger: false,
            owner: "dba".into(),
            ..orders()
        };
        assert!(check(&p, &not_mine).is_ok());
    }

    #[test]
    fn a_missing_or_unreadable_table_is_refused_with_the_fix() {
        let p = plan(POLLING);
        let polling = p.polling.as_ref().unwrap();
        let err = check_table(0, &p.tables[0], polling, &server(), None).unwrap_err();
        assert_eq!(err.reason, reason::TABLE_NOT_FOUND);
        let view = TableCatalog {
            relkind: "v".into(),
            ..orders()
        };
        let err = check(&p, &view).unwrap_err();
        assert_eq!(err.reason, reason::TABLE_NOT_FOUND);
        assert!(err.message.contains("query"), "{}", err.message);
        let unreadable = TableCatalog {
            can_select: false,
            ..orders()
        };
        let err = check(&p, &unreadable).unwrap_err();
        assert_eq!(err.reason, reason::INSUFFICIENT_PRIVILEGE);
        assert!(
            err.message
                .contains("GRANT SELECT ON \"public\".\"orders\" TO \"app\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn the_cursor_column_must_exist_and_have_a_cursor_type() {
        let p = plan(&POLLING.replace("updated_at", "changed"));
        let err = check(&p, &orders()).unwrap_err();
        assert_eq!(err.reason, reason::CURSOR_COLUMN_MISSING);
        assert!(
            err.message.contains("polling.cursorColumn"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("ADD COLUMN \"changed\""),
            "{}",
            err.message
        );
        let p = plan(&POLLING.replace(
            "{ name: public.orders }",
            "{ name: public.orders, cursorColumn: note }",
        ));
        let err = check(&p, &orders()).unwrap_err();
        assert_eq!(err.reason, reason::CURSOR_TYPE_UNSUPPORTED);
        assert!(err.message.contains("type text"), "{}", err.message);
        assert!(
            err.message.contains(CursorKind::SUPPORTED),
            "{}",
            err.message
        );
    }

    #[test]
    fn lateness_needs_a_time_cursor() {
        let seq = |lateness: &str| {
            plan(&POLLING.replace(
                "cursorColumn: updated_at",
                &format!("cursorColumn: seq{lateness}"),
            ))
        };
        assert_eq!(check(&seq(""), &orders()).unwrap().kind, CursorKind::Number);
        let err = check(&seq(", lateness: Auto"), &orders()).unwrap_err();
        assert_eq!(err.reason, reason::HORIZON_UNAVAILABLE);
        // Auto needs a timestamptz: a timestamp depends on the writer's TimeZone.
        let mut local = orders();
        local.columns[1] = column("updated_at", 1114, "timestamp without time zone", false);
        let auto = plan(&POLLING.replace(
            "cursorColumn: updated_at",
            "cursorColumn: updated_at, lateness: Auto",
        ));
        let err = check(&auto, &local).unwrap_err();
        assert_eq!(err.reason, reason::HORIZON_UNAVAILABLE);
        assert!(
            err.message.contains("timestamp without time zone"),
            "{}",
            err.message
        );
        assert!(check(&auto, &orders()).is_ok());
        let err = check(&seq(", lateness: 30s"), &orders()).unwrap_err();
        assert_eq!(err.reason, reason::INVALID_SPEC);
        assert!(err.message.contains("time window"), "{}", err.message);
    }

    #[test]
    fn lateness_auto_needs_a_role_that_sees_other_transactions() {
        let p = plan(&POLLING.replace(
            "cursorColumn: updated_at",
            "cursorColumn: updated_at, lateness: Auto",
        ));
        let polling = p.polling.as_ref().unwrap();
        let err = check_server(&server(), polling).unwrap_err();
        assert_eq!(err.reason, reason::HORIZON_UNAVAILABLE);
        assert!(
            err.message.contains("GRANT pg_read_all_stats TO \"app\""),
            "{}",
            err.message
        );
        let stats = ServerFacts {
            reads_all_stats: true,
            ..server()
        };
        assert!(check_server(&stats, polling).is_ok());
        let superuser = ServerFacts {
            superuser: true,
            ..server()
        };
        assert!(check_server(&superuser, polling).is_ok());
        let old = ServerFacts {
            version: 120_010,
            ..stats
        };
        assert_eq!(
            check_server(&old, polling).unwrap_err().reason,
            reason::UNSUPPORTED_SERVER_VERSION
        );
    }

    #[test]
    fn a_key_is_the_primary_key_or_key_columns_covered_by_a_unique_index() {
        let p = plan(POLLING);
        let keyless = TableCatalog {
            indexes: vec![],
            ..orders()
        };
        let err = check(&p, &keyless).unwrap_err();
        assert_eq!(err.reason, reason::NO_PRIMARY_KEY);
        assert!(err.message.contains("ADD PRIMARY KEY"), "{}", err.message);
        assert!(err.message.contains("keyColumns"), "{}", err.message);

        let keyed = plan(&POLLING.replace(
            "{ name: public.orders }",
            "{ name: public.orders, keyColumns: [seq] }",
        ));
        let err = check(&keyed, &keyless).unwrap_err();
        assert_eq!(err.reason, reason::NO_PRIMARY_KEY);
        assert!(
            err.message
                .contains("CREATE UNIQUE INDEX CONCURRENTLY ON \"public\".\"orders\" (\"seq\")"),
            "{}",
            err.message
        );
        let unique = TableCatalog {
            indexes: vec![index(false, true, &["seq"])],
            ..orders()
        };
        assert_eq!(check(&keyed, &unique).unwrap().key, vec!["seq".to_string()]);

        let nullable = plan(&POLLING.replace(
            "{ name: public.orders }",
            "{ name: public.orders, keyColumns: [note] }",
        ));
        let unique_note = TableCatalog {
            indexes: vec![index(false, true, &["note"])],
            ..orders()
        };
        let err = check(&nullable, &unique_note).unwrap_err();
        assert!(err.message.contains("SET NOT NULL"), "{}", err.message);
    }

    #[test]
    fn listed_columns_must_exist() {
        let p = plan(&POLLING.replace(
            "{ name: public.orders }",
            "{ name: public.orders, columns: [id, total] }",
        ));
        let err = check(&p, &orders()).unwrap_err();
        assert_eq!(err.reason, reason::INVALID_SPEC);
        assert!(err.message.contains("\"total\""), "{}", err.message);
        let p = plan(&POLLING.replace(
            "{ name: public.orders }",
            "{ name: public.orders, keyColumns: [ref] }",
        ));
        let err = check(&p, &orders()).unwrap_err();
        assert!(err.message.contains("keyColumns"), "{}", err.message);
    }

    #[test]
    fn notify_needs_trigger_privilege_ownership_and_create_on_the_schema() {
        let p = notify_plan();
        let polling = p.polling.as_ref().unwrap();
        assert!(check(&p, &orders()).is_ok());
        let no_trigger = TableCatalog {
            can_trigger: false,
            ..orders()
        };
        let err = check(&p, &no_trigger).unwrap_err();
        assert_eq!(err.reason, reason::INSUFFICIENT_PRIVILEGE);
        assert!(
            err.message
                .contains("GRANT TRIGGER ON \"public\".\"orders\" TO \"app\""),
            "{}",
            err.message
        );
        let not_owner = TableCatalog {
            owns: false,
            owner: "dba".into(),
            ..orders()
        };
        let err = check(&p, &not_owner).unwrap_err();
        assert!(
            err.message.contains("GRANT \"dba\" TO \"app\""),
            "{}",
            err.message
        );

        let no_create = ServerFacts {
            objects_schema_create: Some(false),
            ..server()
        };
        let err = check_server(&no_create, polling).unwrap_err();
        assert_eq!(err.reason, reason::INSUFFICIENT_PRIVILEGE);
        assert!(
            err.message
                .contains("GRANT CREATE ON SCHEMA \"siphon\" TO \"app\""),
            "{}",
            err.message
        );
        let missing = ServerFacts {
            objects_schema_create: None,
            ..server()
        };
        let err = check_server(&missing, polling).unwrap_err();
        assert!(
            err.message.contains("CREATE SCHEMA \"siphon\""),
            "{}",
            err.message
        );
        // Without notify the schema does not matter.
        assert!(check_server(&missing, plan(POLLING).polling.as_ref().unwrap()).is_ok());
    }

    fn query_plan(extra: &str) -> Plan {
        plan(&POLLING.replace(
            "{ name: public.orders }",
            &format!(
                "{{ name: public.totals, query: \"SELECT o.id, o.updated_at FROM orders o\", keyColumns: [id]{extra} }}"
            ),
        ))
    }

    #[test]
    fn a_query_must_return_distinct_cursor_and_key_columns() {
        let p = query_plan("");
        let polling = p.polling.as_ref().unwrap();
        let out = vec![
            column("id", 20, "int8", false),
            column("updated_at", 1184, "timestamptz", false),
        ];
        let polled = check_query(0, &p.tables[0], polling, &out).unwrap();
        assert_eq!(polled.relation, None);
        assert_eq!(polled.index_advice, None);
        assert_eq!(polled.key, vec!["id".to_string()]);

        let twice = vec![out[0].clone(), out[0].clone(), out[1].clone()];
        let err = check_query(0, &p.tables[0], polling, &twice).unwrap_err();
        assert_eq!(err.reason, reason::INVALID_QUERY);
        assert!(
            err.message.contains("two columns named \"id\""),
            "{}",
            err.message
        );

        let err = check_query(0, &p.tables[0], polling, &out[..1]).unwrap_err();
        assert_eq!(err.reason, reason::CURSOR_COLUMN_MISSING);
        let err = check_query(0, &p.tables[0], polling, &out[1..]).unwrap_err();
        assert_eq!(err.reason, reason::INVALID_QUERY);
        assert!(err.message.contains("keyColumns"), "{}", err.message);

        let text_cursor = vec![out[0].clone(), column("updated_at", 25, "text", false)];
        let err = check_query(0, &p.tables[0], polling, &text_cursor).unwrap_err();
        assert_eq!(err.reason, reason::CURSOR_TYPE_UNSUPPORTED);
    }

    #[test]
    fn probes_wrap_and_leave_bare_so_parentheses_cannot_escape() {
        let [wrapped, bare] = filter_probes("\"public\".\"orders\"", "total > 0 -- big");
        assert_eq!(
            wrapped,
            "SELECT 1 FROM \"public\".\"orders\" WHERE (total > 0 -- big\n) LIMIT 0"
        );
        assert_eq!(
            bare,
            "SELECT 1 FROM \"public\".\"orders\" WHERE total > 0 -- big\n LIMIT 0"
        );
        let [wrapped, bare] = query_probes("SELECT 1 AS x");
        assert_eq!(
            wrapped,
            "SELECT * FROM (SELECT 1 AS x\n) AS siphon_query LIMIT 0"
        );
        assert_eq!(bare, "SELECT 1 AS x\n");
    }

    #[test]
    fn cursor_indexed_is_a_warning_naming_each_index() {
        let p = plan(POLLING);
        let unindexed = check(&p, &orders()).unwrap();
        let mut indexed = unindexed.clone();
        indexed.index_advice = None;
        let (ok, why, message) = cursor_indexed(&[indexed.clone(), unindexed.clone()]);
        assert!(!ok);
        assert_eq!(why, reason::CURSOR_NOT_INDEXED);
        assert!(message.contains("public.orders"), "{message}");
        assert!(
            message.contains("CREATE INDEX CONCURRENTLY ON \"public\".\"orders\""),
            "{message}"
        );
        let (ok, why, _) = cursor_indexed(&[indexed]);
        assert!(ok);
        assert_eq!(why, reason::INDEXED);
    }

    #[test]
    fn a_window_of_lateness_on_a_time_cursor_is_fine() {
        let p = plan(&POLLING.replace(
            "cursorColumn: updated_at",
            "cursorColumn: updated_at, lateness: 1m",
        ));
        assert_eq!(
            p.polling.as_ref().unwrap().lateness,
            Lateness::Window(Duration::from_secs(60))
        );
        assert!(check(&p, &orders()).is_ok());
    }

    #[test]
    fn provisioned_names_what_was_made() {
        assert_eq!(provisioned_message(3, None), "3 table(s) ready for polling");
        assert_eq!(
            provisioned_message(3, Some(3)),
            "3 table(s) ready for polling; notify triggers on 3 table(s)"
        );
    }
}
