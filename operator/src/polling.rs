//! Cursor polling (`spec.mode: Polling`), the operator's side: the preflight
//! that checks each polled table or query through PostgreSQL, and the
//! objects of `polling.notify`, made, kept in step with the spec and dropped.
//!
//! ```text
//!  spec.tables ─► preflight: catalog facts ─► check_* (pure) ─► Polled per table
//!                            filter / query ─► prepared in a READ ONLY transaction, rolled back
//!  notify: true ─► record names in status.managed ─► deletes table + function ─► 2 triggers per table
//!  notify off, table left the spec, deletion ─► drop every trigger calling the function (pg_trigger),
//!                                               the function, the deletes table (if its comment is ours)
//! ```
//!
//! Invariants:
//!
//! * **Spec text is one expression, never more.** A filter and a query are
//!   the only spec text that reaches SQL. Each is *prepared* (parsed and
//!   analysed, never executed) in a READ ONLY transaction that is rolled
//!   back, twice: wrapped in parentheses and bare. A text PostgreSQL accepts
//!   in both shapes has balanced parentheses, so the ones around it enclose
//!   it: it is one boolean expression (one SELECT), and cannot close the
//!   worker's `WHERE (…)` or subquery early to add clauses of its own
//!   (`x) OR (true` is refused).
//! * **Recorded before created.** The function and the deletes table are
//!   named in `status.managed` before they are created, and `managed.triggers`
//!   lists a table before its triggers are made and until they are dropped.
//!   Teardown finds the triggers in `pg_trigger` by the function they call,
//!   not by name, so a record that lags behind never leaks a trigger.
//! * **The application's statements never fail because of Siphon.** The
//!   function is `SECURITY DEFINER` with `search_path = pg_catalog, pg_temp`
//!   and qualifies every object: the application's role needs no privilege on
//!   the deletes table, and nothing of the application's can stand in for
//!   Siphon's objects. It notifies at statement level only (one
//!   subtransaction per statement, never per row), inside an exception block,
//!   and only while the notify queue is less than half full: a full queue
//!   fails the *commit*, which no exception block could catch. The interval
//!   stays the fallback for a notification not sent.
//! * **Written only when out of step.** Every reconcile reads the catalog
//!   and writes only what differs: `CREATE TRIGGER` takes a SHARE ROW
//!   EXCLUSIVE lock that queues the application's writes, so it runs rarely
//!   and under a `lock_timeout`.
//!
//! Grants: the worker connects with the operator's role (the same
//! credentials Secret), which owns the deletes table and the function, so no
//! grant is needed for it to LISTEN, read and delete the recorded keys.
//! Privileges: TRIGGER on a table lets the role create the triggers; only the
//! table's owner may drop them again (`DROP TRIGGER`), so `notify` also needs
//! membership in each table's owner role. Partitioned tables carry the
//! triggers on the parent: the row trigger is cloned to each partition, the
//! statement trigger fires for statements naming the parent. Each trigger's
//! first argument is the captured table's `schema.table`, so a delete in a
//! partition is recorded, and notified, under the table the spec names.

use std::collections::BTreeSet;

use siphon_crds::conditions::reason;
use siphon_crds::polling::{CursorKind, Lateness, NotifyNames};
use siphon_crds::status::ManagedObjects;
use tokio_postgres::Client;
use tokio_postgres::error::{DbError, SqlState};

use crate::database::{
    self, End, Table, Unfit, qualified, quote_ident, quote_literal, relation_exists, run,
    sql_error, transaction,
};
use crate::validate::{Plan, PollingPlan, TableRef};

/// The comment on a deletes table Siphon created: only such a table is dropped.
pub const DELETES_COMMENT: &str =
    "created by siphon; the deleted keys of one polling capture, dropped with it";

/// How the comment on a trigger function Siphon created begins (a digest
/// of its definition follows): only such a function is replaced or dropped.
pub const FUNCTION_MARK: &str = "created by siphon;";

/// The first server version with `CREATE OR REPLACE TRIGGER`.
pub const REPLACE_TRIGGER_SINCE: i32 = 140_000;

/// `pg_trigger.tgtype` of the row trigger: AFTER DELETE FOR EACH ROW.
pub const ROW_TRIGGER_TYPE: i32 = 1 | 8;
/// `pg_trigger.tgtype` of the statement trigger: AFTER INSERT OR UPDATE OR
/// DELETE OR TRUNCATE FOR EACH STATEMENT.
pub const STATEMENT_TRIGGER_TYPE: i32 = 4 | 8 | 16 | 32;

/// How long a DDL statement waits for a table lock before giving up (and
/// retrying later) rather than queueing the application's statements.
const DDL_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '5s'";

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

// ---------------------------------------------------------------------------
// Notify objects
// ---------------------------------------------------------------------------

/// The objects `polling.notify` makes for one capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyObjects {
    /// `polling.objectsSchema`.
    pub schema: String,
    pub names: NotifyNames,
}

impl NotifyObjects {
    /// The objects of a capture, when it polls with `notify: true` (pure).
    pub fn of(plan: &Plan) -> Option<Self> {
        plan.polling
            .as_ref()
            .filter(|p| p.spec.notify)
            .map(|p| Self {
                schema: p.spec.objects_schema.clone(),
                names: NotifyNames::derive(plan.slot.as_str()),
            })
    }

    /// `schema.function`, as `status.managed.triggerFunction` names it.
    pub fn function_name(&self) -> String {
        format!("{}.{}", self.schema, self.names.function)
    }

    /// `schema.table`, as `status.managed.deletesTable` and the worker name it.
    pub fn deletes_table_name(&self) -> String {
        format!("{}.{}", self.schema, self.names.deletes_table)
    }
}

/// A trigger that calls the capture's function (a partition's clone left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerFact {
    pub schema: String,
    pub table: String,
    pub name: String,
    /// `pg_trigger.tgtype`.
    pub tgtype: i32,
    pub args: Vec<String>,
}

/// The catalog state of a capture's notify objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyState {
    /// The function exists; its comment.
    pub function: Option<Option<String>>,
    /// The deletes table exists; its comment.
    pub deletes_table: Option<Option<String>>,
    /// Every trigger calling the function.
    pub triggers: Vec<TriggerFact>,
}

/// DDL of the deletes table (pure). `key` NULL marks a TRUNCATE.
pub fn deletes_table_ddl(objects: &NotifyObjects) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, table_name text NOT NULL, key jsonb, deleted_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp())",
        qualified(&objects.schema, &objects.names.deletes_table)
    )
}

/// DDL of the trigger function (pure). Row level (AFTER DELETE): the key of
/// the deleted row, built from the key column names given as the trigger's
/// arguments after the table's name, into the deletes table. Statement
/// level: a TRUNCATE marker (key NULL), then a notification carrying the
/// table's name, never an error.
pub fn function_ddl(objects: &NotifyObjects) -> String {
    let deletes = qualified(&objects.schema, &objects.names.deletes_table);
    let channel = quote_literal(&objects.names.channel);
    let body = format!(
        "
BEGIN
  IF TG_LEVEL = 'ROW' THEN
    IF TG_OP = 'DELETE' THEN
      INSERT INTO {deletes} (table_name, key)
      SELECT TG_ARGV[0],
             COALESCE(pg_catalog.jsonb_object_agg(a.k, pg_catalog.to_jsonb(OLD) -> a.k), '{{}}'::pg_catalog.jsonb)
      FROM pg_catalog.unnest(TG_ARGV) WITH ORDINALITY AS a(k, n)
      WHERE a.n > 1;
    END IF;
    RETURN NULL;
  END IF;
  IF TG_OP = 'TRUNCATE' THEN
    INSERT INTO {deletes} (table_name, key) VALUES (TG_ARGV[0], NULL);
  END IF;
  BEGIN
    IF pg_catalog.pg_notification_queue_usage() < 0.5 THEN
      PERFORM pg_catalog.pg_notify({channel}, TG_ARGV[0]);
    END IF;
  EXCEPTION WHEN OTHERS THEN
    NULL;
  END;
  RETURN NULL;
END
"
    );
    let tag = dollar_tag(&body);
    format!(
        "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {tag}{body}{tag}",
        qualified(&objects.schema, &objects.names.function)
    )
}

/// A dollar-quote tag the body does not contain (pure).
fn dollar_tag(body: &str) -> String {
    let mut tag = "$siphon$".to_string();
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$siphon_{n}$");
    }
    tag
}

/// The comment on the function Siphon made (pure): its mark and a digest of
/// the definition, so a changed definition is seen and replaced.
pub fn function_comment(ddl: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "{FUNCTION_MARK} the notify trigger function of one polling capture, dropped with it; digest {}",
        hex::encode(&Sha256::digest(ddl.as_bytes())[..8])
    )
}

/// Refuse objects of the capture's names that Siphon did not make (pure).
pub fn refuse_foreign(objects: &NotifyObjects, state: &NotifyState) -> Result<(), Unfit> {
    if let Some(comment) = &state.function
        && !comment
            .as_deref()
            .is_some_and(|c| c.starts_with(FUNCTION_MARK))
    {
        return Err(Unfit::definite(
            reason::PROVISIONING_FAILED,
            format!(
                "function {}() exists and was not created by Siphon: drop or rename it, or set polling.objectsSchema to another schema",
                objects.function_name()
            ),
        ));
    }
    if let Some(comment) = &state.deletes_table
        && comment.as_deref() != Some(DELETES_COMMENT)
    {
        return Err(Unfit::definite(
            reason::PROVISIONING_FAILED,
            format!(
                "relation {} exists and was not created by Siphon: drop or rename it, or set polling.objectsSchema to another schema",
                objects.deletes_table_name()
            ),
        ));
    }
    Ok(())
}

/// Whether the function and the deletes table stand as Siphon makes them (pure).
pub fn objects_in_step(objects: &NotifyObjects, state: &NotifyState) -> bool {
    let wanted = function_comment(&function_ddl(objects));
    state.function.as_ref().and_then(|c| c.as_deref()) == Some(wanted.as_str())
        && state.deletes_table.is_some()
}

/// The arguments of a table's row trigger (its name, then its key) and
/// statement trigger (its name) (pure).
fn trigger_args(polled: &Polled) -> (Vec<String>, Vec<String>) {
    let mut row = vec![polled.name.clone()];
    row.extend(polled.key.iter().cloned());
    (row, vec![polled.name.clone()])
}

/// What to change in the triggers (pure).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriggerSteps {
    /// Triggers calling the function that the spec no longer wants:
    /// `(schema, table, trigger)`.
    pub drop: Vec<(String, String, String)>,
    /// Tables whose triggers are missing or differ, to be made.
    pub make: Vec<Polled>,
}

/// Compare the triggers that call the function with the ones the polled
/// tables need (pure): each polled table carries exactly the row trigger
/// and the statement trigger of the capture, with its name and key as
/// arguments; any other trigger calling the function goes.
pub fn trigger_steps(
    objects: &NotifyObjects,
    polled: &[Polled],
    existing: &[TriggerFact],
) -> TriggerSteps {
    let names = &objects.names;
    let wanted: BTreeSet<&Table> = polled.iter().filter_map(|p| p.relation.as_ref()).collect();
    let drop = existing
        .iter()
        .filter(|t| {
            let on_wanted = wanted.contains(&(t.schema.clone(), t.table.clone()));
            !on_wanted || (t.name != names.row_trigger && t.name != names.statement_trigger)
        })
        .map(|t| (t.schema.clone(), t.table.clone(), t.name.clone()))
        .collect();
    let make = polled
        .iter()
        .filter(|p| {
            let Some((schema, table)) = &p.relation else {
                return false;
            };
            let (row_args, statement_args) = trigger_args(p);
            let has = |name: &str, tgtype: i32, args: &[String]| {
                existing.iter().any(|t| {
                    &t.schema == schema
                        && &t.table == table
                        && t.name == name
                        && t.tgtype == tgtype
                        && t.args == args
                })
            };
            !(has(&names.row_trigger, ROW_TRIGGER_TYPE, &row_args)
                && has(
                    &names.statement_trigger,
                    STATEMENT_TRIGGER_TYPE,
                    &statement_args,
                ))
        })
        .cloned()
        .collect();
    TriggerSteps { drop, make }
}

/// The statements that make a table's two triggers (pure): `CREATE OR
/// REPLACE TRIGGER` from PostgreSQL 14, else drop-if-exists and create (in
/// one transaction).
pub fn trigger_ddl(
    objects: &NotifyObjects,
    polled: &Polled,
    server_version_num: i32,
) -> Vec<String> {
    let Some((schema, table)) = &polled.relation else {
        return Vec::new();
    };
    let on = qualified(schema, table);
    let function = qualified(&objects.schema, &objects.names.function);
    let (row_args, statement_args) = trigger_args(polled);
    let literals = |args: &[String]| {
        args.iter()
            .map(|a| quote_literal(a))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let replace = server_version_num >= REPLACE_TRIGGER_SINCE;
    let create = if replace {
        "CREATE OR REPLACE TRIGGER"
    } else {
        "CREATE TRIGGER"
    };
    let triggers = [
        (
            &objects.names.row_trigger,
            format!("AFTER DELETE ON {on} FOR EACH ROW"),
            literals(&row_args),
        ),
        (
            &objects.names.statement_trigger,
            format!("AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {on} FOR EACH STATEMENT"),
            literals(&statement_args),
        ),
    ];
    let mut statements = Vec::new();
    for (name, timing, args) in triggers {
        if !replace {
            statements.push(format!(
                "DROP TRIGGER IF EXISTS {} ON {on}",
                quote_ident(name)
            ));
        }
        statements.push(format!(
            "{create} {} {timing} EXECUTE FUNCTION {function}({args})",
            quote_ident(name)
        ));
    }
    statements
}

/// `pg_trigger.tgargs`: each argument ends with a NUL byte (pure).
pub fn decode_tgargs(bytes: &[u8]) -> Vec<String> {
    let mut args: Vec<String> = bytes
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // The last argument's NUL leaves an empty piece behind.
    args.pop();
    args
}

/// Split a `schema.name` the status holds; Siphon's own names hold no dot,
/// so the last one separates.
fn split_object(name: &str) -> Option<(&str, &str)> {
    name.rsplit_once('.')
}

async fn read_notify_state(client: &Client, objects: &NotifyObjects) -> Result<NotifyState, Unfit> {
    let function = format!("{}()", qualified(&objects.schema, &objects.names.function));
    let deletes = qualified(&objects.schema, &objects.names.deletes_table);
    let row = client
        .query_one(
            "SELECT to_regprocedure($1) IS NOT NULL, obj_description(to_regprocedure($1), 'pg_proc'), \
               to_regclass($2) IS NOT NULL, obj_description(to_regclass($2), 'pg_class')",
            &[&function, &deletes],
        )
        .await
        .map_err(|e| sql_error("reading the notify objects", e))?;
    let function_exists: bool = row.get(0);
    let deletes_exists: bool = row.get(2);
    Ok(NotifyState {
        function: function_exists.then(|| row.get(1)),
        deletes_table: deletes_exists.then(|| row.get(3)),
        triggers: triggers_calling(client, &function).await?,
    })
}

/// Every trigger that calls `function` (`"schema"."name"()`), a partition's
/// clone of its parent's trigger left out (it goes with the parent's).
async fn triggers_calling(client: &Client, function: &str) -> Result<Vec<TriggerFact>, Unfit> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, t.tgname::text, t.tgtype::int4, t.tgargs \
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE t.tgfoid = to_regprocedure($1) AND t.tgparentid = 0 ORDER BY 1, 2, 3",
            &[&function],
        )
        .await
        .map_err(|e| sql_error("reading the notify triggers", e))?;
    Ok(rows
        .iter()
        .map(|r| TriggerFact {
            schema: r.get(0),
            table: r.get(1),
            name: r.get(2),
            tgtype: r.get(3),
            args: decode_tgargs(&r.get::<_, Vec<u8>>(4)),
        })
        .collect())
}

/// Run one statement; a lock wait past `lock_timeout` is transient.
async fn exec(client: &Client, sql: &str, context: &str) -> Result<(), Unfit> {
    client.execute(sql, &[]).await.map(|_| ()).map_err(|e| {
        if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            Unfit::transient(
                reason::PROVISIONING_FAILED,
                format!(
                    "{context}: waited too long for a table lock (the application holds it); retrying"
                ),
            )
        } else {
            sql_error(context, e)
        }
    })
}

/// Run DDL in one transaction under a lock timeout.
async fn exec_all(client: &Client, statements: &[String], context: &str) -> Result<(), Unfit> {
    transaction(client, context, End::Commit, async {
        exec(client, DDL_LOCK_TIMEOUT, context).await?;
        for statement in statements {
            exec(client, statement, context).await?;
        }
        Ok(())
    })
    .await
}

/// What provisioning made, for the `Provisioned` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub tables: usize,
    /// Tables carrying notify triggers; `None` without notify.
    pub notify_tables: Option<usize>,
}

/// Make the notify objects the plan asks for and drop those it no longer
/// asks for. `managed` is updated in place; `record` persists it before
/// each creation (as [`database::provision`] does).
pub async fn provision<F, Fut>(
    client: &Client,
    plan: &Plan,
    facts: &PollingFacts,
    managed: &mut ManagedObjects,
    mut record: F,
) -> Result<Provisioned, Unfit>
where
    F: FnMut(ManagedObjects) -> Fut,
    Fut: std::future::Future<Output = Result<(), Unfit>>,
{
    let wanted = NotifyObjects::of(plan);
    let state = facts.notify.clone().unwrap_or_default();
    if let Some(objects) = &wanted {
        refuse_foreign(objects, &state)?;
    }
    if managed.database.as_deref() != Some(plan.database_id.as_str()) {
        managed.database = Some(plan.database_id.clone());
        record(managed.clone()).await?;
    }
    retire(client, managed, wanted.as_ref(), &mut record).await?;
    let Some(objects) = wanted else {
        return Ok(Provisioned {
            tables: facts.polled.len(),
            notify_tables: None,
        });
    };

    let function = objects.function_name();
    let deletes = objects.deletes_table_name();
    if managed.trigger_function.as_deref() != Some(function.as_str())
        || managed.deletes_table.as_deref() != Some(deletes.as_str())
    {
        managed.trigger_function = Some(function.clone());
        managed.deletes_table = Some(deletes.clone());
        record(managed.clone()).await?;
    }
    if !objects_in_step(&objects, &state) {
        let ddl = function_ddl(&objects);
        let comment = function_comment(&ddl);
        exec_all(
            client,
            &[
                deletes_table_ddl(&objects),
                format!(
                    "COMMENT ON TABLE {} IS {}",
                    qualified(&objects.schema, &objects.names.deletes_table),
                    quote_literal(DELETES_COMMENT)
                ),
                ddl,
                format!(
                    "COMMENT ON FUNCTION {}() IS {}",
                    qualified(&objects.schema, &objects.names.function),
                    quote_literal(&comment)
                ),
            ],
            "creating the notify function and the deletes table",
        )
        .await?;
        tracing::info!(capture = %plan.name, function = %function, deletes_table = %deletes, "notify function and deletes table made");
    }

    let steps = trigger_steps(&objects, &facts.polled, &state.triggers);
    let wanted_tables: BTreeSet<String> = facts
        .polled
        .iter()
        .filter_map(|p| p.relation.as_ref())
        .map(|(s, t)| format!("{s}.{t}"))
        .collect();
    // Listed before their triggers are made, and until they are dropped.
    let carrying: BTreeSet<String> = managed
        .triggers
        .iter()
        .cloned()
        .chain(wanted_tables.iter().cloned())
        .chain(steps.drop.iter().map(|(s, t, _)| format!("{s}.{t}")))
        .collect();
    let carrying: Vec<String> = carrying.into_iter().collect();
    if managed.triggers != carrying {
        managed.triggers = carrying;
        record(managed.clone()).await?;
    }
    for (schema, table, trigger) in &steps.drop {
        exec_all(
            client,
            &[format!(
                "DROP TRIGGER IF EXISTS {} ON {}",
                quote_ident(trigger),
                qualified(schema, table)
            )],
            "dropping a notify trigger",
        )
        .await?;
        tracing::info!(capture = %plan.name, table = %format!("{schema}.{table}"), trigger = %trigger, "notify trigger dropped");
    }
    for polled in &steps.make {
        exec_all(
            client,
            &trigger_ddl(&objects, polled, facts.server_version_num),
            "creating the notify triggers",
        )
        .await?;
        tracing::info!(capture = %plan.name, table = %polled.name, "notify triggers made");
    }
    let exact: Vec<String> = wanted_tables.into_iter().collect();
    if managed.triggers != exact {
        managed.triggers = exact;
        record(managed.clone()).await?;
    }
    Ok(Provisioned {
        tables: facts.polled.len(),
        notify_tables: Some(managed.triggers.len()),
    })
}

/// Drop the notify objects `managed` lists that are not `keep`'s (notify
/// turned off, another objects schema, or a capture no longer polling), and
/// forget them in the record.
pub async fn retire<F, Fut>(
    client: &Client,
    managed: &mut ManagedObjects,
    keep: Option<&NotifyObjects>,
    mut record: F,
) -> Result<(), Unfit>
where
    F: FnMut(ManagedObjects) -> Fut,
    Fut: std::future::Future<Output = Result<(), Unfit>>,
{
    let function = managed
        .trigger_function
        .clone()
        .filter(|f| keep.is_none_or(|k| *f != k.function_name()));
    let deletes = managed
        .deletes_table
        .clone()
        .filter(|d| keep.is_none_or(|k| *d != k.deletes_table_name()));
    let orphan_triggers = managed.trigger_function.is_none() && !managed.triggers.is_empty();
    if function.is_none() && deletes.is_none() && !orphan_triggers {
        return Ok(());
    }
    drop_objects(client, function.as_deref(), deletes.as_deref()).await?;
    if function.is_some() || orphan_triggers {
        managed.trigger_function = None;
        managed.triggers.clear();
    }
    if deletes.is_some() {
        managed.deletes_table = None;
        managed.deletes_waiting = None;
    }
    tracing::info!(function = ?function, deletes_table = ?deletes, "notify objects retired");
    record(managed.clone()).await
}

/// Teardown (deletionPolicy Delete): drop every trigger that calls the
/// capture's function, the function, and the deletes table if Siphon made
/// it. A table dropped meanwhile, or an object already gone, is fine.
pub async fn teardown(client: &Client, managed: &ManagedObjects) -> Result<(), Unfit> {
    if managed.trigger_function.is_none() && managed.deletes_table.is_none() {
        return Ok(());
    }
    drop_objects(
        client,
        managed.trigger_function.as_deref(),
        managed.deletes_table.as_deref(),
    )
    .await
}

/// Drop the triggers calling `function` and the function (if its comment
/// is Siphon's), and the deletes table (if its comment is Siphon's), in one
/// transaction.
async fn drop_objects(
    client: &Client,
    function: Option<&str>,
    deletes: Option<&str>,
) -> Result<(), Unfit> {
    let mut statements = Vec::new();
    if let Some((schema, name)) = function.and_then(split_object) {
        let signature = format!("{}()", qualified(schema, name));
        for t in triggers_calling(client, &signature).await? {
            statements.push(format!(
                "DROP TRIGGER IF EXISTS {} ON {}",
                quote_ident(&t.name),
                qualified(&t.schema, &t.table)
            ));
        }
        let ours: Option<bool> = client
            .query_one(
                "SELECT obj_description(to_regprocedure($1), 'pg_proc') LIKE $2",
                &[&signature, &format!("{FUNCTION_MARK}%")],
            )
            .await
            .map_err(|e| sql_error("reading the notify function", e))?
            .get(0);
        if ours == Some(true) {
            statements.push(format!("DROP FUNCTION IF EXISTS {signature}"));
        }
    }
    if let Some((schema, name)) = deletes.and_then(split_object) {
        let table = qualified(schema, name);
        let ours: Option<bool> = client
            .query_one(
                "SELECT obj_description(to_regclass($1), 'pg_class') = $2",
                &[&table, &DELETES_COMMENT],
            )
            .await
            .map_err(|e| sql_error("reading the deletes table", e))?
            .get(0);
        if ours == Some(true) {
            statements.push(format!("DROP TABLE IF EXISTS {table}"));
        }
    }
    if statements.is_empty() {
        return Ok(());
    }
    exec_all(client, &statements, "dropping the notify objects").await
}

/// Deletes recorded and not yet drained (`status.managed.deletesWaiting`):
/// the rows of the deletes table, `None` without one.
pub async fn deletes_waiting(
    client: &Client,
    managed: &ManagedObjects,
) -> Result<Option<i64>, Unfit> {
    let Some((schema, name)) = managed.deletes_table.as_deref().and_then(split_object) else {
        return Ok(None);
    };
    if !relation_exists(client, schema, name).await? {
        return Ok(None);
    }
    client
        .query_one(
            format!("SELECT count(*) FROM {}", qualified(schema, name)).as_str(),
            &[],
        )
        .await
        .map(|r| Some(r.get(0)))
        .map_err(|e| sql_error("counting the recorded deletes", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::{POLLING, fixture};
    use crate::validate::validate;
    use std::time::Duration;

    fn plan(spec: &str) -> Plan {
        validate(&fixture("default", "shop", spec), &[]).unwrap()
    }

    fn notify_plan() -> Plan {
        plan(&POLLING.replace(
            "cursorColumn: updated_at",
            "cursorColumn: updated_at, notify: true, objectsSchema: siphon",
        ))
    }

    fn server() -> ServerFacts {
        ServerFacts {
            version: 160_004,
            user: "app".into(),
            superuser: false,
            reads_all_stats: false,
            objects_schema_create: Some(true),
        }
    }

    fn column(name: &str, type_oid: u32, type_name: &str, not_null: bool) -> ColumnFact {
        ColumnFact {
            name: name.into(),
            type_oid,
            type_name: type_name.into(),
            not_null,
        }
    }

    fn index(primary: bool, unique: bool, columns: &[&str]) -> IndexFact {
        IndexFact {
            primary,
            unique,
            partial: false,
            btree: true,
            columns: columns
                .iter()
                .map(|c| (!c.is_empty()).then(|| c.to_string()))
                .collect(),
        }
    }

    fn orders() -> TableCatalog {
        TableCatalog {
            relkind: "r".into(),
            can_select: true,
            can_trigger: true,
            owns: true,
            owner: "app".into(),
            columns: vec![
                column("id", 20, "bigint", true),
                column("updated_at", 1184, "timestamp with time zone", false),
                column("note", 25, "text", false),
                column("seq", 20, "bigint", true),
            ],
            indexes: vec![index(true, true, &["id"])],
        }
    }

    fn check(p: &Plan, catalog: &TableCatalog) -> Result<Polled, Unfit> {
        check_table(
            0,
            &p.tables[0],
            p.polling.as_ref().unwrap(),
            &server(),
            Some(catalog),
        )
    }

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
    fn provisioned_names_what_was_made() {
        assert_eq!(provisioned_message(3, None), "3 table(s) ready for polling");
        assert_eq!(
            provisioned_message(3, Some(3)),
            "3 table(s) ready for polling; notify triggers on 3 table(s)"
        );
    }

    #[test]
    fn notify_objects_are_named_after_the_slot_in_the_objects_schema() {
        assert_eq!(NotifyObjects::of(&plan(POLLING)), None);
        let objects = NotifyObjects::of(&notify_plan()).unwrap();
        assert_eq!(objects.schema, "siphon");
        assert_eq!(objects.names.channel, "siphon_default_shop");
        assert_eq!(objects.function_name(), "siphon.siphon_default_shop_notify");
        assert_eq!(
            objects.deletes_table_name(),
            "siphon.siphon_default_shop_deletes"
        );
    }

    #[test]
    fn the_deletes_table_and_function_are_qualified_and_quoted() {
        let objects = NotifyObjects {
            schema: "we\"ird".into(),
            names: NotifyNames::derive("siphon_default_shop"),
        };
        assert_eq!(
            deletes_table_ddl(&objects),
            "CREATE TABLE IF NOT EXISTS \"we\"\"ird\".\"siphon_default_shop_deletes\" (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, table_name text NOT NULL, key jsonb, deleted_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp())"
        );
        let ddl = function_ddl(&objects);
        assert!(ddl.starts_with(
            "CREATE OR REPLACE FUNCTION \"we\"\"ird\".\"siphon_default_shop_notify\"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $siphon$"
        ), "{ddl}");
        assert!(ddl.ends_with("END\n$siphon$"), "{ddl}");
        assert!(ddl.contains(
            "INSERT INTO \"we\"\"ird\".\"siphon_default_shop_deletes\" (table_name, key)"
        ));
        assert!(ddl.contains("pg_catalog.pg_notify('siphon_default_shop', TG_ARGV[0])"));
        assert!(ddl.contains("EXCEPTION WHEN OTHERS THEN"));
        assert!(ddl.contains("'{}'::pg_catalog.jsonb"), "{ddl}");
    }

    #[test]
    fn the_dollar_tag_never_occurs_in_the_body() {
        let objects = NotifyObjects {
            schema: "x$siphon$y".into(),
            names: NotifyNames::derive("siphon_default_shop"),
        };
        let ddl = function_ddl(&objects);
        assert!(ddl.contains(" AS $siphon_1$"), "{ddl}");
        assert!(ddl.ends_with("$siphon_1$"));
        assert_eq!(dollar_tag("plain"), "$siphon$");
    }

    #[test]
    fn a_function_comment_follows_its_definition() {
        let a = function_comment("CREATE FUNCTION a");
        assert!(a.starts_with(FUNCTION_MARK));
        assert_ne!(a, function_comment("CREATE FUNCTION b"));
        assert_eq!(a, function_comment("CREATE FUNCTION a"));
    }

    fn notify_polled() -> (NotifyObjects, Polled) {
        let p = notify_plan();
        let polled = check(&p, &orders()).unwrap();
        (NotifyObjects::of(&p).unwrap(), polled)
    }

    #[test]
    fn triggers_pass_the_table_and_key_as_literals() {
        let (objects, polled) = notify_polled();
        assert_eq!(
            trigger_ddl(&objects, &polled, 160_000),
            vec![
                "CREATE OR REPLACE TRIGGER \"siphon_default_shop_deletes\" AFTER DELETE ON \"public\".\"orders\" FOR EACH ROW EXECUTE FUNCTION \"siphon\".\"siphon_default_shop_notify\"('public.orders', 'id')".to_string(),
                "CREATE OR REPLACE TRIGGER \"siphon_default_shop_notify\" AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON \"public\".\"orders\" FOR EACH STATEMENT EXECUTE FUNCTION \"siphon\".\"siphon_default_shop_notify\"('public.orders')".to_string(),
            ]
        );
        let on_13 = trigger_ddl(&objects, &polled, 130_012);
        assert_eq!(on_13.len(), 4);
        assert_eq!(
            on_13[0],
            "DROP TRIGGER IF EXISTS \"siphon_default_shop_deletes\" ON \"public\".\"orders\""
        );
        assert!(
            on_13[1].starts_with("CREATE TRIGGER \"siphon_default_shop_deletes\" AFTER DELETE")
        );
        let mut quoted = polled.clone();
        quoted.key = vec!["it's".into()];
        assert!(trigger_ddl(&objects, &quoted, 160_000)[0].ends_with("('public.orders', 'it''s')"));
    }

    fn trigger(table: &str, name: &str, tgtype: i32, args: &[&str]) -> TriggerFact {
        TriggerFact {
            schema: "public".into(),
            table: table.into(),
            name: name.into(),
            tgtype,
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn triggers_in_step_are_left_and_strays_dropped() {
        let (objects, polled) = notify_polled();
        let row = &objects.names.row_trigger;
        let statement = &objects.names.statement_trigger;
        let good = vec![
            trigger("orders", row, ROW_TRIGGER_TYPE, &["public.orders", "id"]),
            trigger(
                "orders",
                statement,
                STATEMENT_TRIGGER_TYPE,
                &["public.orders"],
            ),
        ];
        let steps = trigger_steps(&objects, std::slice::from_ref(&polled), &good);
        assert_eq!(steps, TriggerSteps::default());

        // Nothing yet: both made.
        let steps = trigger_steps(&objects, std::slice::from_ref(&polled), &[]);
        assert_eq!(steps.make, vec![polled.clone()]);

        // Another key: made again. A table that left the spec: dropped.
        let mut changed = good.clone();
        changed[0].args = vec!["public.orders".into(), "seq".into()];
        changed.push(trigger(
            "gone",
            row,
            ROW_TRIGGER_TYPE,
            &["public.gone", "id"],
        ));
        let steps = trigger_steps(&objects, std::slice::from_ref(&polled), &changed);
        assert_eq!(steps.make.len(), 1);
        assert_eq!(
            steps.drop,
            vec![("public".into(), "gone".into(), row.clone())]
        );
    }

    #[test]
    fn objects_are_in_step_only_with_the_current_definition() {
        let (objects, _) = notify_polled();
        let current = NotifyState {
            function: Some(Some(function_comment(&function_ddl(&objects)))),
            deletes_table: Some(Some(DELETES_COMMENT.into())),
            triggers: vec![],
        };
        assert!(objects_in_step(&objects, &current));
        assert!(refuse_foreign(&objects, &current).is_ok());
        let older = NotifyState {
            function: Some(Some(function_comment("an older definition"))),
            ..current.clone()
        };
        assert!(!objects_in_step(&objects, &older));
        assert!(refuse_foreign(&objects, &older).is_ok());
        assert!(!objects_in_step(&objects, &NotifyState::default()));
        assert!(refuse_foreign(&objects, &NotifyState::default()).is_ok());
    }

    #[test]
    fn objects_siphon_did_not_make_are_refused() {
        let (objects, _) = notify_polled();
        let foreign_function = NotifyState {
            function: Some(None),
            ..NotifyState::default()
        };
        let err = refuse_foreign(&objects, &foreign_function).unwrap_err();
        assert!(
            err.message.contains("not created by Siphon"),
            "{}",
            err.message
        );
        let foreign_table = NotifyState {
            deletes_table: Some(Some("orders archive".into())),
            ..NotifyState::default()
        };
        assert!(refuse_foreign(&objects, &foreign_table).is_err());
    }

    #[test]
    fn trigger_arguments_decode_from_their_nul_separated_bytes() {
        assert_eq!(decode_tgargs(b""), Vec::<String>::new());
        assert_eq!(
            decode_tgargs(b"public.orders\0id\0"),
            vec!["public.orders".to_string(), "id".to_string()]
        );
        assert_eq!(decode_tgargs(b"\0"), vec![String::new()]);
    }

    #[test]
    fn status_names_split_at_their_last_dot() {
        assert_eq!(
            split_object("my.schema.siphon_x_notify"),
            Some(("my.schema", "siphon_x_notify"))
        );
        assert_eq!(split_object("nodot"), None);
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
}
