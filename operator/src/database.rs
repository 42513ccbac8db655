//! Stages 3 and 4 of the reconcile pipeline, and the finalizer's teardown:
//! everything the operator does inside PostgreSQL.
//!
//! * **Preflight** reads the server's settings and catalogs and turns each
//!   unfit fact into a condition reason and a fix, before anything is created.
//! * **Provision** creates the watermark table, the publication and the slot,
//!   each idempotently. An object is recorded in `status.managed` *before* it
//!   is created, so a crash between the two never leaks it: teardown of an
//!   object that does not exist is a no-op.
//! * **Teardown** runs in the order of the design: (the worker is stopped by
//!   the caller first) end the slot's backend, drop the slot, drop the
//!   publication, drop triggers and functions, delete the watermark rows and
//!   drop the table if Siphon created it and nobody else uses it.
//!
//! **No spec text runs as its own statement.** Every statement goes through
//! the extended protocol (one statement per message: no text can end one
//! statement and start another); identifiers go through [`quote_ident`] and
//! literals through [`quote_literal`]. A table's `filter` is the only spec
//! text that reaches SQL unquoted, and only after [`check_filter`] had
//! PostgreSQL accept it as exactly one expression over that one table; what
//! the publication then receives is PostgreSQL's own rendering of it.
//!
//! **The application's statements keep working.** PostgreSQL 15+ refuses
//! UPDATE and DELETE on a table whose publication's column list does not
//! cover the replica identity, or whose row filter uses other columns while
//! updates or deletes are published. Column lists therefore always carry the
//! identity columns, and such a filter is refused before anything exists.

use std::collections::BTreeMap;

use siphon_crds::capture::{Operation, PublicationMode};
use siphon_crds::conditions::reason;
use siphon_crds::status::{ManagedObjects, SlotStatus};
use siphon_postgres::SqlParams;
use siphon_postgres::connect::ConnectError;
use tokio_postgres::Client;

use crate::platform::{self, Platform};
use crate::slot::{self, SlotFacts, SlotStep};
use crate::validate::{Plan, TableRef};

/// The comment on a watermark table Siphon created: the last capture to
/// leave it drops it; a table a person made is never dropped.
pub const WATERMARK_COMMENT: &str = "created by siphon; dropped with the last capture that uses it";

/// The oldest server version admitted: the oldest the version suite runs on.
pub const OLDEST_SUPPORTED: i32 = 130_000;

/// The first server version with publication row filters and column lists.
pub const ROW_FILTERS_SINCE: i32 = 150_000;

/// The first server version with failover slots.
pub const FAILOVER_SLOTS_SINCE: i32 = 170_000;

/// Whether the slot is made a failover slot (pure): as the spec says, and
/// where the server has them when it says nothing.
pub fn failover_slot(plan: &Plan, server_version_num: i32) -> Result<bool, Unfit> {
    match plan.failover {
        Some(true) if server_version_num < FAILOVER_SLOTS_SINCE => Err(Unfit::definite(
            reason::INVALID_SPEC,
            format!(
                "spec.logical.failover: PostgreSQL {} has no failover slots (they need 17 or newer): remove the field or set it to false",
                server_version_num / 10_000
            ),
        )),
        Some(choice) => Ok(choice),
        None => Ok(server_version_num >= FAILOVER_SLOTS_SINCE),
    }
}

/// A `(schema, table)` pair.
pub type Table = (String, String);

/// A table's replica identity: the columns an UPDATE or DELETE logs as the
/// old key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The primary key or the replica identity index, in index order.
    Columns(Vec<String>),
    /// `REPLICA IDENTITY FULL`: every column.
    Full,
}

impl Identity {
    /// Whether `column` is part of the identity.
    pub fn covers(&self, column: &str) -> bool {
        match self {
            Identity::Full => true,
            Identity::Columns(cols) => cols.iter().any(|c| c == column),
        }
    }
}

/// A row filter as PostgreSQL understood it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedFilter {
    /// PostgreSQL's rendering of the expression (`pg_get_expr`).
    pub canonical: String,
    /// The table's columns the expression uses, as PostgreSQL records them.
    pub columns: Vec<String>,
}

/// A database fact that stops the capture, with its reason and fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Unfit {
    pub reason: &'static str,
    pub message: String,
    /// Whether waiting may fix it (unreachable server) or a person must act.
    pub transient: bool,
}

impl Unfit {
    pub(crate) fn definite(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            transient: false,
        }
    }

    pub(crate) fn transient(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            transient: true,
            ..Self::definite(reason, message)
        }
    }
}

pub use siphon_postgres::{qualified, quote_ident, quote_literal};

/// Connect, telling unreachable from refused credentials. TLS follows libpq's
/// `sslmode` (the same rustls configuration as the worker's connections).
pub async fn connect(params: &SqlParams) -> Result<Client, Unfit> {
    match siphon_postgres::connect(params).await {
        Ok((client, connection)) => {
            drive(connection);
            Ok(client)
        }
        Err(ConnectError::Tls(e)) => Err(Unfit::definite(
            reason::INVALID_SPEC,
            format!("TLS settings of spec.postgres: {e}"),
        )),
        Err(ConnectError::Postgres(e)) => Err(classify_connect_error(&e, params)),
    }
}

/// Run a connection's I/O until it closes.
fn drive(connection: siphon_postgres::Connection) {
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "database connection closed");
        }
    });
}

fn classify_connect_error(e: &tokio_postgres::Error, params: &SqlParams) -> Unfit {
    let code = e.code().map(|c| c.code().to_string());
    match code.as_deref() {
        Some("28P01") | Some("28000") => Unfit::definite(
            reason::AUTHENTICATION_FAILED,
            format!(
                "PostgreSQL refused user {:?}: check the username and password in the credentials Secret",
                params.user
            ),
        ),
        Some("3D000") => Unfit::definite(
            reason::DATABASE_UNREACHABLE,
            format!(
                "database {:?} does not exist: fix spec.postgres.database",
                params.database
            ),
        ),
        _ => Unfit {
            reason: reason::DATABASE_UNREACHABLE,
            message: format!(
                "cannot reach PostgreSQL at {}:{}: {}; check spec.postgres.host and port and that the server accepts connections",
                params.host,
                params.port,
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string())
            ),
            transient: true,
        },
    }
}

/// A failed statement as an [`Unfit`]: transient by the one SQLSTATE rule
/// of [`siphon_postgres::sqlstate`] (a broken connection, a deadlock, too
/// many connections, a shutdown), else a definite refusal; a missing
/// privilege has its own reason, a connection that broke is unreachable.
pub(crate) fn sql_error(context: &str, e: tokio_postgres::Error) -> Unfit {
    let transient = siphon_postgres::sqlstate::is_transient_error(&e);
    let detail = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string());
    let reason = match e.code().map(|c| c.code()) {
        Some("42501") => reason::INSUFFICIENT_PRIVILEGE,
        None => reason::DATABASE_UNREACHABLE,
        Some(_) => reason::PROVISIONING_FAILED,
    };
    Unfit {
        reason,
        message: format!("{context}: {detail}"),
        transient,
    }
}

/// What preflight learned, for provisioning.
#[derive(Debug, Clone)]
pub struct Facts {
    pub server_version_num: i32,
    /// Concrete tables (wildcards expanded), `(schema, table)`.
    pub tables: Vec<(String, String)>,
    /// The replica identity of each table.
    pub identities: BTreeMap<Table, Identity>,
    /// The capture's slot, when it exists.
    pub slot: Option<SlotFacts>,
    pub publication_exists: bool,
    /// What the existing publication holds, as read.
    pub publication: Option<PublicationState>,
    pub watermark_exists: bool,
}

/// An existing publication's comment and tables (`pg_publication_rel`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublicationState {
    pub comment: Option<String>,
    pub tables: std::collections::BTreeSet<(String, String)>,
}

/// The comment Siphon puts on a publication it manages: a digest of the
/// table clause it last set (pure).
pub fn publication_comment(clause: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "managed by siphon; tables digest {}",
        hex::encode(&Sha256::digest(clause.as_bytes())[..8])
    )
}

/// Whether a managed publication already publishes what the plan asks
/// (pure): the same tables, and the comment of the same clause (row filters
/// and column lists included). Then provisioning writes nothing: `ALTER
/// PUBLICATION … SET TABLE` takes a SHARE UPDATE EXCLUSIVE lock on every
/// table, which would queue behind a running VACUUM on each periodic
/// reconcile. A hand-made change of a filter or column list is not seen
/// (the comment still matches); one of the table set is, and is undone.
pub fn publication_in_step(
    current: &PublicationState,
    clause: &str,
    tables: &[(String, String)],
) -> bool {
    current.comment.as_deref() == Some(publication_comment(clause).as_str())
        && current.tables == tables.iter().cloned().collect()
}

/// The capture's own slot, when it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotUse {
    /// A walsender streams from it (normally the capture's own worker).
    pub active: bool,
}

/// Replication slots and WAL senders of the server, configured and in use.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub max_slots: i32,
    pub used_slots: i32,
    pub max_senders: i32,
    pub used_senders: i32,
}

impl Capacity {
    /// What the server lacks for this capture (pure). A capture needs a free
    /// slot only to create its own, and a free WAL sender only while its
    /// worker is not streaming: the sender an active slot holds is its own,
    /// so a server whose senders are all taken by running captures keeps
    /// them Ready. A shortage is transient (looked at again within seconds,
    /// not a minute): another capture's teardown or a worker's exit frees
    /// capacity without any event of this capture.
    pub fn shortage(&self, slot: Option<SlotUse>) -> Option<Unfit> {
        if slot.is_none() && self.used_slots >= self.max_slots {
            return Some(Unfit::transient(
                reason::NO_FREE_SLOTS,
                format!(
                    "all {} replication slots are in use: raise max_replication_slots and restart PostgreSQL, or drop unused slots",
                    self.max_slots
                ),
            ));
        }
        let streaming = slot.is_some_and(|s| s.active);
        if !streaming && self.used_senders >= self.max_senders {
            return Some(Unfit::transient(
                reason::NO_FREE_WAL_SENDERS,
                format!(
                    "all {} WAL senders are busy: raise max_wal_senders and restart PostgreSQL",
                    self.max_senders
                ),
            ));
        }
        None
    }
}

/// Refuse a server older than the oldest supported (pure).
pub fn check_version(version: i32) -> Result<(), Unfit> {
    if version < OLDEST_SUPPORTED {
        return Err(Unfit::definite(
            reason::UNSUPPORTED_SERVER_VERSION,
            format!(
                "PostgreSQL {}.{} is not supported: Siphon runs on PostgreSQL 13 or newer (the oldest its tests run on); upgrade the server",
                version / 10_000,
                version % 10_000
            ),
        ));
    }
    Ok(())
}

/// Check that the database can serve this capture by logical replication
/// (a polling capture has its own: [`crate::polling::preflight`]).
pub async fn preflight(client: &Client, plan: &Plan) -> Result<Facts, Unfit> {
    let q = |ctx: &'static str| move |e| sql_error(ctx, e);
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), \
             r.rolreplication, r.rolsuper, \
             current_setting('max_replication_slots')::int, \
             (SELECT count(*)::int FROM pg_replication_slots), \
             current_setting('max_wal_senders')::int, \
             (SELECT count(*)::int FROM pg_stat_replication), \
             ARRAY(SELECT rolname::text FROM pg_roles WHERE rolname = ANY ($1)), \
             CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') \
                  THEN pg_has_role(current_user, 'rds_replication', 'MEMBER') ELSE false END, \
             current_user::text \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[&platform::MARKER_ROLES.as_slice()],
        )
        .await
        .map_err(q("reading server settings"))?;
    let version: i32 = row.get(0);
    let wal_level: String = row.get(1);
    let platform = Platform::detect(&row.get::<_, Vec<String>>(8));
    let user: String = row.get(10);
    // REPLICATION, superuser, or (Amazon RDS, Aurora) rds_replication.
    let can_replicate: bool =
        row.get::<_, bool>(2) || row.get::<_, bool>(3) || row.get::<_, bool>(9);
    let can_create_in_db: bool = client
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await
        .map_err(q("checking CREATE on the database"))?
        .get(0);
    let superuser: bool = row.get(3);
    let (max_slots, used_slots, max_senders, used_senders): (i32, i32, i32, i32) =
        (row.get(4), row.get(5), row.get(6), row.get(7));

    check_version(version)?;

    let slot = {
        if wal_level != "logical" {
            return Err(Unfit::definite(
                reason::WAL_LEVEL_NOT_LOGICAL,
                format!(
                    "wal_level is {wal_level}: {} (or use mode: Polling)",
                    platform.enable_logical()
                ),
            ));
        }
        if !can_replicate {
            return Err(Unfit::definite(
                reason::MISSING_REPLICATION_PRIVILEGE,
                format!(
                    "role {user:?} may not replicate: {} (or use mode: Polling)",
                    platform.grant_replication(&user)
                ),
            ));
        }
        let slot = siphon_postgres::slot::state(client, plan.slot.as_str())
            .await
            .map_err(q("reading pg_replication_slots"))?
            .map(|state| SlotFacts {
                active: state.active_pid.is_some(),
                lost: state.lost,
            });
        let capacity = Capacity {
            max_slots,
            used_slots,
            max_senders,
            used_senders,
        };
        if let Some(unfit) = capacity.shortage(slot.map(|s| SlotUse { active: s.active })) {
            return Err(unfit);
        }
        slot
    };

    let tables = resolve_tables(client, &plan.tables).await?;
    let mut identities = BTreeMap::new();
    for (schema, table) in &tables {
        let identity = check_table(client, schema, table, plan, superuser).await?;
        identities.insert((schema.clone(), table.clone()), identity);
    }
    if plan.publication_mode == PublicationMode::Create
        && version < ROW_FILTERS_SINCE
        && let Some(t) = plan.tables.iter().find(|t| t.spec.filter.is_some())
    {
        return Err(Unfit::definite(
            reason::ROW_FILTER_UNSUPPORTED,
            format!(
                "PostgreSQL {} cannot filter the rows of a publication (row filters need PostgreSQL 15 or newer), so the filter of {} would apply to the backfill but not to the stream: remove spec.tables[].filter, or upgrade the server",
                version / 10_000,
                t.qualified()
            ),
        ));
    }

    if plan.publication_mode == PublicationMode::Create && !can_create_in_db {
        return Err(Unfit::definite(
            reason::INSUFFICIENT_PRIVILEGE,
            format!(
                "the role may not create the publication: GRANT CREATE ON DATABASE {} TO the role, or create the publication yourself and set spec.logical.publication: Existing",
                quote_ident(&plan_database(plan))
            ),
        ));
    }
    let publication = client
        .query_opt(
            "SELECT obj_description(p.oid, 'pg_publication'), \
               ARRAY(SELECT n.nspname::text FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid \
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.prpubid = p.oid ORDER BY r.oid), \
               ARRAY(SELECT c.relname::text FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid \
                     WHERE r.prpubid = p.oid ORDER BY r.oid) \
             FROM pg_publication p WHERE p.pubname = $1",
            &[&plan.publication],
        )
        .await
        .map_err(q("reading pg_publication"))?
        .map(|row| PublicationState {
            comment: row.get(0),
            tables: row
                .get::<_, Vec<String>>(1)
                .into_iter()
                .zip(row.get::<_, Vec<String>>(2))
                .collect(),
        });
    let publication_exists = publication.is_some();
    if plan.publication_mode == PublicationMode::Existing && !publication_exists {
        return Err(Unfit::definite(
            reason::PUBLICATION_NOT_FOUND,
            format!(
                "publication {} does not exist: create it (CREATE PUBLICATION {} FOR TABLE ...) or set spec.logical.publication: Create",
                plan.publication,
                quote_ident(&plan.publication)
            ),
        ));
    }

    let mut watermark_exists = false;
    if let Some((ws, wt)) = &plan.watermark {
        watermark_exists = relation_exists(client, ws, wt).await?;
        if !watermark_exists {
            let can_create: bool = client
                .query_one("SELECT has_schema_privilege($1, 'CREATE')", &[ws])
                .await
                .map_err(q("checking CREATE on the watermark schema"))?
                .get(0);
            if !can_create {
                return Err(Unfit::definite(
                    reason::INSUFFICIENT_PRIVILEGE,
                    format!(
                        "the watermark table {ws}.{wt} is missing and the role may not create it: create it yourself (see docs) or GRANT CREATE ON SCHEMA {} TO the role",
                        quote_ident(ws)
                    ),
                ));
            }
        }
    }

    if plan.publication_mode == PublicationMode::Existing {
        check_existing_publication(
            client,
            plan,
            version,
            &tables,
            &identities,
            watermark_exists,
        )
        .await?;
    }

    Ok(Facts {
        server_version_num: version,
        tables,
        identities,
        slot,
        publication_exists,
        publication,
        watermark_exists,
    })
}

/// What a publication holds for one table: whether it publishes it, its
/// column list (all columns when none) and the columns its row filter uses.
struct PublishedTable {
    listed: bool,
    columns: Option<Vec<String>>,
    filter_columns: Vec<String>,
}

/// A publication Siphon did not create must hold every captured table (and
/// the watermark table), and must not make the application's UPDATE and
/// DELETE fail: its column lists cover, and its row filters stay within,
/// the replica identity while it publishes updates or deletes.
async fn check_existing_publication(
    client: &Client,
    plan: &Plan,
    version: i32,
    tables: &[Table],
    identities: &BTreeMap<Table, Identity>,
    watermark_exists: bool,
) -> Result<(), Unfit> {
    let pubname = &plan.publication;
    let publishes_writes: bool = client
        .query_one(
            "SELECT pubupdate OR pubdelete FROM pg_publication WHERE pubname = $1",
            &[pubname],
        )
        .await
        .map_err(|e| sql_error("reading pg_publication", e))?
        .get(0);
    let mut wanted: Vec<Table> = tables.to_vec();
    if let Some(w) = &plan.watermark {
        wanted.push(w.clone());
    }
    for (schema, table) in &wanted {
        let published = published_table(client, pubname, version, schema, table).await?;
        let sql_table = qualified(schema, table);
        let is_watermark = plan.watermark.as_ref() == Some(&(schema.clone(), table.clone()));
        if !published.listed && is_watermark && !watermark_exists {
            return Err(Unfit::definite(
                reason::PUBLICATION_MISSING_TABLE,
                format!(
                    "publication {pubname} must publish the watermark table {schema}.{table}, which does not exist yet: run {}; and ALTER PUBLICATION {} ADD TABLE {sql_table}",
                    watermark_table_ddl(schema, table),
                    quote_ident(pubname)
                ),
            ));
        }
        if !published.listed {
            return Err(Unfit::definite(
                reason::PUBLICATION_MISSING_TABLE,
                format!(
                    "publication {pubname} does not publish {schema}.{table}, so its changes would never stream: run ALTER PUBLICATION {} ADD TABLE {sql_table}, or set spec.logical.publication: Create",
                    quote_ident(pubname)
                ),
            ));
        }
        let Some(identity) = identities.get(&(schema.clone(), table.clone())) else {
            continue;
        };
        if !publishes_writes {
            continue;
        }
        if let (Some(columns), Identity::Columns(ids)) = (&published.columns, identity) {
            let missing: Vec<&String> = ids.iter().filter(|c| !columns.contains(c)).collect();
            if !missing.is_empty() {
                return Err(Unfit::definite(
                    reason::PUBLICATION_BREAKS_WRITES,
                    format!(
                        "the column list of publication {pubname} on {schema}.{table} lacks replica identity column(s) {}: PostgreSQL refuses UPDATE and DELETE on the table while it is so published; add them to the column list (ALTER PUBLICATION {} SET TABLE {sql_table} (…))",
                        join(&missing),
                        quote_ident(pubname)
                    ),
                ));
            }
        }
        let outside: Vec<&String> = published
            .filter_columns
            .iter()
            .filter(|c| !identity.covers(c))
            .collect();
        if !outside.is_empty() {
            return Err(Unfit::definite(
                reason::PUBLICATION_BREAKS_WRITES,
                format!(
                    "the row filter of publication {pubname} on {schema}.{table} uses column(s) {} outside the replica identity: PostgreSQL refuses UPDATE and DELETE on the table while it is so published; filter on key columns, or run ALTER TABLE {sql_table} REPLICA IDENTITY FULL, or publish inserts only",
                    join(&outside)
                ),
            ));
        }
    }
    Ok(())
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn published_table(
    client: &Client,
    pubname: &str,
    version: i32,
    schema: &str,
    table: &str,
) -> Result<PublishedTable, Unfit> {
    let listed: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
            &[&pubname, &schema, &table],
        )
        .await
        .map_err(|e| sql_error("reading pg_publication_tables", e))?
        .get(0);
    if !listed || version < ROW_FILTERS_SINCE {
        return Ok(PublishedTable {
            listed,
            columns: None,
            filter_columns: Vec::new(),
        });
    }
    let row = client
        .query_opt(
            "SELECT CASE WHEN r.prattrs IS NULL THEN NULL ELSE \
                 ARRAY(SELECT a.attname::text FROM pg_attribute a \
                       WHERE a.attrelid = r.prrelid AND a.attnum = ANY (r.prattrs)) END, \
               ARRAY(SELECT a.attname::text FROM pg_depend d JOIN pg_attribute a \
                       ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
                     WHERE r.prqual IS NOT NULL AND d.classid = 'pg_publication_rel'::regclass \
                       AND d.objid = r.oid AND d.refobjid = r.prrelid AND d.refobjsubid > 0 \
                       AND (r.prattrs IS NULL OR NOT a.attnum = ANY (r.prattrs)) \
                     ORDER BY a.attnum) \
             FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid \
             WHERE p.pubname = $1 AND r.prrelid = to_regclass($2)",
            &[&pubname, &qualified(schema, table)],
        )
        .await
        .map_err(|e| sql_error("reading pg_publication_rel", e))?;
    // pg_depend holds the columns of the row filter and of the column list
    // alike: with a column list, only filter columns outside it can be told
    // apart (those the list already names are covered by its own check).
    Ok(match row {
        Some(row) => PublishedTable {
            listed,
            columns: row.get(0),
            filter_columns: row.get(1),
        },
        // Published through FOR ALL TABLES or a schema: no list, no filter.
        None => PublishedTable {
            listed,
            columns: None,
            filter_columns: Vec::new(),
        },
    })
}

fn plan_database(plan: &Plan) -> String {
    plan.database_id
        .rsplit_once('/')
        .map(|(_, db)| db.to_string())
        .unwrap_or_default()
}

async fn resolve_tables(
    client: &Client,
    refs: &[TableRef],
) -> Result<Vec<(String, String)>, Unfit> {
    let mut out = Vec::new();
    for t in refs {
        match &t.name {
            Some(name) => {
                let exists: bool = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))",
                        &[&t.schema, name],
                    )
                    .await
                    .map_err(|e| sql_error("looking up tables", e))?
                    .get(0);
                if !exists {
                    return Err(Unfit::definite(
                        reason::TABLE_NOT_FOUND,
                        format!(
                            "table {}.{} does not exist: create it or remove it from spec.tables",
                            t.schema, name
                        ),
                    ));
                }
                out.push((t.schema.clone(), name.clone()));
            }
            None => {
                let rows = client
                    .query(
                        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
                         AND c.relname NOT LIKE 'siphon\\_%' ORDER BY 1",
                        &[&t.schema],
                    )
                    .await
                    .map_err(|e| sql_error("listing the schema's tables", e))?;
                if rows.is_empty() {
                    return Err(Unfit::definite(
                        reason::TABLE_NOT_FOUND,
                        format!(
                            "schema {} has no tables (or does not exist): fix spec.tables",
                            t.schema
                        ),
                    ));
                }
                out.extend(
                    rows.iter()
                        .map(|r| (t.schema.clone(), r.get::<_, String>(0))),
                );
            }
        }
    }
    out.dedup();
    Ok(out)
}

async fn check_table(
    client: &Client,
    schema: &str,
    table: &str,
    plan: &Plan,
    superuser: bool,
) -> Result<Identity, Unfit> {
    // The identity index's key columns (INCLUDE columns left out), in order:
    // the replica identity index under REPLICA IDENTITY USING INDEX, else
    // the primary key.
    let row = client
        .query_one(
            "SELECT c.relreplident::text, \
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident), \
               has_table_privilege(c.oid, 'SELECT'), \
               pg_has_role(c.relowner, 'USAGE'), \
               ARRAY(SELECT a.attname::text FROM pg_index i \
                     CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                     WHERE i.indrelid = c.oid AND k.ord <= i.indnkeyatts \
                       AND CASE WHEN c.relreplident = 'i' THEN i.indisreplident ELSE i.indisprimary END \
                     ORDER BY k.ord) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await
        .map_err(|e| sql_error("reading the table's catalog entry", e))?;
    let identity: String = row.get(0);
    let has_pk: bool = row.get(1);
    let has_ident_index: bool = row.get(2);
    let can_select: bool = row.get(3);
    let owns: bool = row.get(4);
    let identity_columns: Vec<String> = row.get(5);
    let spec_keys = plan
        .tables
        .iter()
        .find(|t| t.schema == schema && t.name.as_deref() == Some(table))
        .map(|t| !t.spec.key_columns.is_empty())
        .unwrap_or(false);
    let keyed = match identity.as_str() {
        "d" => has_pk,
        "i" => has_ident_index,
        "f" => has_pk || spec_keys,
        _ => false,
    };
    if !keyed {
        return Err(Unfit::definite(
            reason::NO_PRIMARY_KEY,
            format!(
                "table {schema}.{table} has no primary key: add one, or run ALTER TABLE {} REPLICA IDENTITY USING INDEX <unique index>, or set keyColumns with REPLICA IDENTITY FULL",
                qualified(schema, table)
            ),
        ));
    }
    if !can_select {
        return Err(Unfit::definite(
            reason::INSUFFICIENT_PRIVILEGE,
            format!(
                "the role may not read {schema}.{table}: GRANT SELECT ON {} TO the role",
                qualified(schema, table)
            ),
        ));
    }
    if plan.mode == siphon_crds::capture::CaptureMode::Logical
        && plan.publication_mode == PublicationMode::Create
        && !owns
        && !superuser
    {
        return Err(Unfit::definite(
            reason::INSUFFICIENT_PRIVILEGE,
            format!(
                "only the owner of {schema}.{table} may add it to a publication: make the role a member of the owner, or create the publication yourself and set spec.logical.publication: Existing"
            ),
        ));
    }
    Ok(if identity == "f" {
        Identity::Full
    } else {
        Identity::Columns(identity_columns)
    })
}

/// Have PostgreSQL check a row filter, touching nothing: in a transaction
/// that is always rolled back, create a publication of the one table with
/// the filter, read back what it holds, and require exactly one table, no
/// schema, no column list and default options, so that the text could only
/// have been the row filter. Returns PostgreSQL's rendering of the filter
/// and the columns it uses (from `pg_depend`).
pub async fn check_filter(
    client: &Client,
    schema: &str,
    table: &str,
    filter: &str,
) -> Result<CheckedFilter, Unfit> {
    transaction(
        client,
        "checking a row filter",
        End::RollBack,
        probe_filter(client, schema, table, filter),
    )
    .await
}

async fn probe_filter(
    client: &Client,
    schema: &str,
    table: &str,
    filter: &str,
) -> Result<CheckedFilter, Unfit> {
    let probe = format!(
        "siphon_filter_probe_{}",
        std::process::id()
            ^ std::time::UNIX_EPOCH
                .elapsed()
                .map_or(0, |d| d.subsec_nanos())
    );
    let target = qualified(schema, table);
    let refused = |detail: String| {
        Unfit::definite(
            reason::INVALID_FILTER,
            format!(
                "the filter of {schema}.{table} is not one boolean expression over the table that PostgreSQL accepts as a row filter: {detail}; fix spec.tables[].filter"
            ),
        )
    };
    // A lock wait must never queue the application's statements behind us.
    run(
        client,
        "SET LOCAL lock_timeout = '2s'",
        "bounding the filter check's lock wait",
    )
    .await?;
    // The newline ends a `--` comment in the filter before the parenthesis.
    let create = format!(
        "CREATE PUBLICATION {} FOR TABLE {target} WHERE ({filter}
)",
        quote_ident(&probe)
    );
    if let Err(e) = client.execute(create.as_str(), &[]).await {
        if e.code().map(|c| c.code()) == Some("55P03") {
            return Err(Unfit::transient(
                reason::PROVISIONING_FAILED,
                format!(
                    "checking the filter of {schema}.{table} waited too long for a lock on the table; retrying"
                ),
            ));
        }
        let detail = e
            .as_db_error()
            .map(|d| match d.detail() {
                Some(more) => format!("{} ({more})", d.message()),
                None => d.message().to_string(),
            })
            .unwrap_or_else(|| e.to_string());
        if e.as_db_error().is_none() || e.is_closed() {
            return Err(sql_error("checking a row filter", e));
        }
        return Err(refused(detail));
    }
    let row = client
        .query_one(
            "SELECT p.puballtables, p.pubinsert AND p.pubupdate AND p.pubdelete AND p.pubtruncate, p.pubviaroot,                (SELECT count(*) FROM pg_publication_rel r WHERE r.prpubid = p.oid)::int,                (SELECT count(*) FROM pg_publication_namespace s WHERE s.pnpubid = p.oid)::int,                (SELECT r.prattrs IS NULL FROM pg_publication_rel r WHERE r.prpubid = p.oid AND r.prrelid = to_regclass($2)),                (SELECT pg_get_expr(r.prqual, r.prrelid) FROM pg_publication_rel r WHERE r.prpubid = p.oid AND r.prrelid = to_regclass($2)),                ARRAY(SELECT a.attname::text FROM pg_publication_rel r                      JOIN pg_depend d ON d.classid = 'pg_publication_rel'::regclass AND d.objid = r.oid                      JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid                      WHERE r.prpubid = p.oid AND d.refobjid = r.prrelid AND d.refobjsubid > 0                      ORDER BY a.attnum)              FROM pg_publication p WHERE p.pubname = $1",
            &[&probe, &target],
        )
        .await
        .map_err(|e| sql_error("reading back the filter check", e))?;
    let all_tables: bool = row.get(0);
    let default_publish: bool = row.get(1);
    let via_root: bool = row.get(2);
    let relations: i32 = row.get(3);
    let schemas: i32 = row.get(4);
    let no_column_list: Option<bool> = row.get(5);
    let canonical: Option<String> = row.get(6);
    let columns: Vec<String> = row.get(7);
    let shaped = !all_tables
        && default_publish
        && !via_root
        && relations == 1
        && schemas == 0
        && no_column_list == Some(true);
    match canonical {
        Some(canonical) if shaped => Ok(CheckedFilter { canonical, columns }),
        _ => Err(refused(
            "it reaches beyond the expression (other tables, schemas, columns or options)".into(),
        )),
    }
}

/// Run one fixed statement (extended protocol: exactly one statement).
pub(crate) async fn run(client: &Client, sql: &str, context: &str) -> Result<(), Unfit> {
    client
        .execute(sql, &[])
        .await
        .map(|_| ())
        .map_err(|e| sql_error(context, e))
}

/// Run statements in one transaction, each through the extended protocol.
async fn run_all(client: &Client, statements: &[String], context: &str) -> Result<(), Unfit> {
    transaction(client, context, End::Commit, async {
        for statement in statements {
            run(client, statement, context).await?;
        }
        Ok(())
    })
    .await
}

/// How [`transaction`] ends when its body succeeds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Commit,
    /// Always rolled back: a check that must leave nothing behind.
    RollBack,
}

/// Run `body` inside BEGIN … COMMIT (or ROLLBACK: when `end` says so, and
/// whenever the body fails). The first error wins.
pub(crate) async fn transaction<T>(
    client: &Client,
    context: &str,
    end: End,
    body: impl std::future::Future<Output = Result<T, Unfit>>,
) -> Result<T, Unfit> {
    run(client, "BEGIN", context).await?;
    let result = body.await;
    let last = if result.is_ok() && end == End::Commit {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let ended = run(client, last, context).await;
    let value = result?;
    ended?;
    Ok(value)
}

/// Check every row filter of the plan through PostgreSQL, and refuse one
/// that would make the application's UPDATE or DELETE fail. Returns the
/// filters as PostgreSQL renders them, for the publication's DDL. Runs only
/// when the publication is about to be created or rewritten.
pub async fn check_filters(
    client: &Client,
    plan: &Plan,
    facts: &Facts,
) -> Result<BTreeMap<Table, String>, Unfit> {
    let mut out = BTreeMap::new();
    for (schema, table) in &facts.tables {
        let Some(filter) = table_spec(plan, schema, table).and_then(|t| t.filter.as_deref()) else {
            continue;
        };
        let checked = check_filter(client, schema, table, filter).await?;
        let key = (schema.clone(), table.clone());
        if plan.publishes_updates_or_deletes()
            && let Some(identity) = facts.identities.get(&key)
            && let Some(unfit) = filter_outside_identity(schema, table, &checked, identity)
        {
            return Err(unfit);
        }
        out.insert(key, checked.canonical);
    }
    Ok(out)
}

/// The refusal of a filter that uses columns outside the replica identity
/// (pure), with the three ways out.
pub fn filter_outside_identity(
    schema: &str,
    table: &str,
    checked: &CheckedFilter,
    identity: &Identity,
) -> Option<Unfit> {
    let outside: Vec<&String> = checked
        .columns
        .iter()
        .filter(|c| !identity.covers(c))
        .collect();
    if outside.is_empty() {
        return None;
    }
    let key = match identity {
        Identity::Columns(cols) => cols.join(", "),
        Identity::Full => String::new(),
    };
    Some(Unfit::definite(
        reason::FILTER_OUTSIDE_REPLICA_IDENTITY,
        format!(
            "the filter of {schema}.{table} uses column(s) {} outside its replica identity ({key}): PostgreSQL would then refuse the application's UPDATE and DELETE on the table. Filter on replica identity columns only, or run ALTER TABLE {} REPLICA IDENTITY FULL, or set spec.logical.operations: [insert] to capture inserts only",
            join(&outside),
            qualified(schema, table)
        ),
    ))
}

fn table_spec<'p>(
    plan: &'p Plan,
    schema: &str,
    table: &str,
) -> Option<&'p siphon_crds::capture::TableSpec> {
    plan.tables
        .iter()
        .find(|t| t.schema == schema && t.name.as_deref() == Some(table))
        .map(|t| &t.spec)
}

/// DDL of the watermark table. One row per capture; each backfill chunk
/// updates it twice (low and high watermark), which puts two markers into the
/// WAL stream that the worker recognises.
pub fn watermark_table_ddl(schema: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (capture text PRIMARY KEY, watermark text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())",
        qualified(schema, table)
    )
}

/// The publication's table list (pure): each table with its column list and
/// row filter where the server has them (PostgreSQL 15+). A column list
/// holds the spec's columns, the key columns and every replica identity
/// column (PostgreSQL refuses UPDATE and DELETE on a table whose column list
/// misses one); under REPLICA IDENTITY FULL every column is identity, so no
/// list is set and the worker drops the other columns itself. `filter_text`
/// gives the text of each table's filter: the spec's for the digest,
/// PostgreSQL's rendering of it for the DDL.
fn table_clause(
    facts: &Facts,
    plan: &Plan,
    filter_text: impl Fn(&Table, &str) -> String,
) -> String {
    let mut items = Vec::new();
    for (schema, table) in &facts.tables {
        let mut item = qualified(schema, table);
        let key = (schema.clone(), table.clone());
        if let (Some(spec), true) = (
            table_spec(plan, schema, table),
            facts.server_version_num >= ROW_FILTERS_SINCE,
        ) {
            let identity = facts.identities.get(&key);
            if !spec.columns.is_empty() && identity != Some(&Identity::Full) {
                let mut cols: Vec<String> = spec.columns.clone();
                let identity_cols = match identity {
                    Some(Identity::Columns(c)) => c.as_slice(),
                    _ => &[],
                };
                for k in spec.key_columns.iter().chain(identity_cols) {
                    if !cols.contains(k) {
                        cols.push(k.clone());
                    }
                }
                item.push_str(&format!(
                    " ({})",
                    cols.iter()
                        .map(|c| quote_ident(c))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if let Some(filter) = &spec.filter {
                item.push_str(&format!(" WHERE ({})", filter_text(&key, filter)));
            }
        }
        items.push(item);
    }
    if let Some((ws, wt)) = &plan.watermark {
        items.push(qualified(ws, wt));
    }
    items.join(", ")
}

/// The publication's table list as the spec writes it (pure): what the
/// digest in the publication's comment describes.
pub fn publication_tables(facts: &Facts, plan: &Plan) -> String {
    table_clause(facts, plan, |_, filter| filter.to_string())
}

/// The publication's options (pure): the operations it publishes and
/// whether partitions publish as their root.
pub fn publication_options(plan: &Plan) -> String {
    let ops: Vec<&str> = if plan.operations.is_empty() {
        vec!["insert", "update", "delete", "truncate"]
    } else {
        [
            (Operation::Insert, "insert"),
            (Operation::Update, "update"),
            (Operation::Delete, "delete"),
            (Operation::Truncate, "truncate"),
        ]
        .into_iter()
        .filter(|(op, _)| plan.operations.contains(op))
        .map(|(_, name)| name)
        .collect()
    };
    format!(
        "publish = {}, publish_via_partition_root = {}",
        quote_literal(&ops.join(", ")),
        plan.publish_via_partition_root
    )
}

/// What the publication's comment digests (pure): its tables and options.
pub fn publication_clause(facts: &Facts, plan: &Plan) -> String {
    format!(
        "{} WITH ({})",
        publication_tables(facts, plan),
        publication_options(plan)
    )
}

/// The tables a managed publication holds: the spec's, and the watermark
/// table (pure).
pub fn published_tables(facts: &Facts, plan: &Plan) -> Vec<(String, String)> {
    let mut tables = facts.tables.clone();
    if let Some(w) = &plan.watermark {
        tables.push(w.clone());
    }
    tables
}

/// What provisioning will write to the publication (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationStep {
    /// Existing mode, or ours and in step with the spec.
    Nothing,
    Create,
    Rewrite,
    /// It exists and is not ours.
    Refuse,
}

/// Decide the publication's step (pure).
pub fn publication_step(facts: &Facts, plan: &Plan, managed: &ManagedObjects) -> PublicationStep {
    if plan.publication_mode != PublicationMode::Create {
        return PublicationStep::Nothing;
    }
    if !facts.publication_exists {
        return PublicationStep::Create;
    }
    if managed.publication.as_deref() != Some(plan.publication.as_str()) {
        return PublicationStep::Refuse;
    }
    let clause = publication_clause(facts, plan);
    let wanted = published_tables(facts, plan);
    if facts
        .publication
        .as_ref()
        .is_some_and(|p| publication_in_step(p, &clause, &wanted))
    {
        PublicationStep::Nothing
    } else {
        PublicationStep::Rewrite
    }
}

/// Create or update what the capture needs. `managed` is the record of what
/// Siphon created, updated in place (so the caller holds the latest record
/// even when a later step fails); `record` persists it before each creation.
///
/// Everything that can refuse (the slot's history, the row filters) is
/// decided before the first object is created.
pub async fn provision<F, Fut>(
    client: &Client,
    plan: &Plan,
    facts: &Facts,
    managed: &mut ManagedObjects,
    now: &str,
    mut record: F,
) -> Result<(), Unfit>
where
    F: FnMut(ManagedObjects) -> Fut,
    Fut: std::future::Future<Output = Result<(), Unfit>>,
{
    let failover = failover_slot(plan, facts.server_version_num)?;
    let slot_step = slot::decide(managed, facts.slot, plan.snapshot_request.as_ref(), now);
    if let SlotStep::Refuse(loss) = &slot_step {
        let message = slot::loss_message(plan.slot.as_str(), loss, plan.snapshot_request.as_ref());
        let reason = if loss.reason == reason::SLOT_LOST {
            reason::SLOT_LOST
        } else {
            reason::SLOT_MISSING
        };
        managed.slot_loss = Some(loss.clone());
        return Err(Unfit::definite(reason, message));
    }
    let publication_step = publication_step(facts, plan, managed);
    if publication_step == PublicationStep::Refuse {
        return Err(Unfit::definite(
            reason::SLOT_CLAIMED,
            format!(
                "publication {} already exists and was not created by this capture: set spec.logical.publication: Existing to use it as is, or choose another publicationName",
                plan.publication
            ),
        ));
    }
    let filters = if matches!(
        publication_step,
        PublicationStep::Create | PublicationStep::Rewrite
    ) {
        check_filters(client, plan, facts).await?
    } else {
        BTreeMap::new()
    };

    managed.database = Some(plan.database_id.clone());

    if let Some((ws, wt)) = &plan.watermark {
        let name = format!("{ws}.{wt}");
        if managed.watermark_table.as_deref() != Some(name.as_str()) {
            managed.watermark_table = Some(name);
            record(managed.clone()).await?;
        }
        crate::crash::reach("watermark-recorded", &plan.namespace, &plan.name);
        if !facts.watermark_exists {
            let created = run_all(
                client,
                &[
                    watermark_table_ddl(ws, wt),
                    format!(
                        "COMMENT ON TABLE {} IS {}",
                        qualified(ws, wt),
                        quote_literal(WATERMARK_COMMENT)
                    ),
                ],
                "creating the watermark table",
            )
            .await;
            match created {
                Ok(()) => {}
                // Another capture of this database created it just now.
                Err(_) if relation_exists(client, ws, wt).await.unwrap_or(false) => {}
                Err(e) => return Err(e),
            }
        }
        crate::crash::reach("watermark-created", &plan.namespace, &plan.name);
    }

    if matches!(
        publication_step,
        PublicationStep::Create | PublicationStep::Rewrite
    ) {
        let tables = table_clause(facts, plan, |key, filter| {
            filters
                .get(key)
                .cloned()
                .unwrap_or_else(|| filter.to_string())
        });
        let options = publication_options(plan);
        let name = quote_ident(&plan.publication);
        let comment = format!(
            "COMMENT ON PUBLICATION {name} IS {}",
            quote_literal(&publication_comment(&publication_clause(facts, plan)))
        );
        if publication_step == PublicationStep::Create {
            if managed.publication.is_none() {
                managed.publication = Some(plan.publication.clone());
                record(managed.clone()).await?;
            }
            crate::crash::reach("publication-recorded", &plan.namespace, &plan.name);
            run_all(
                client,
                &[
                    format!("CREATE PUBLICATION {name} FOR TABLE {tables} WITH ({options})"),
                    comment,
                ],
                "creating the publication",
            )
            .await?;
            crate::crash::reach("publication-created", &plan.namespace, &plan.name);
        } else {
            // Ours: kept in step with the spec, written only when it is not;
            // the comment always describes what the same transaction set.
            run_all(
                client,
                &[
                    format!("ALTER PUBLICATION {name} SET TABLE {tables}"),
                    format!("ALTER PUBLICATION {name} SET ({options})"),
                    comment,
                ],
                "updating the publication",
            )
            .await?;
        }
    }

    match slot_step {
        SlotStep::Keep => {}
        SlotStep::Create | SlotStep::Recover { .. } => {
            if let SlotStep::Recover { drop_first: true } = slot_step {
                drop_slot(client, plan.slot.as_str()).await?;
            }
            if managed.slot.is_none() {
                managed.slot = Some(plan.slot.as_str().to_string());
                record(managed.clone()).await?;
            }
            crate::crash::reach("slot-recorded", &plan.namespace, &plan.name);
            // Created concurrently (a retried reconcile) is fine.
            siphon_postgres::slot::create(client, plan.slot.as_str(), failover)
                .await
                .map_err(|e| sql_error("creating the replication slot", e))?;
            crate::crash::reach("slot-created", &plan.namespace, &plan.name);
            if matches!(slot_step, SlotStep::Recover { .. }) {
                tracing::info!(slot = %plan.slot, "replication slot created again on a re-snapshot request");
            }
        }
        SlotStep::Refuse(_) => unreachable!("refused above"),
    }
    // The slot exists now: from here on, its absence is a loss.
    if !managed.slot_established || managed.slot_loss.is_some() {
        managed.slot_established = true;
        managed.slot_loss = None;
        record(managed.clone()).await?;
    }
    Ok(())
}

/// End the slot's backend and drop the slot; a slot already gone is fine.
async fn drop_slot(client: &Client, slot: &str) -> Result<(), Unfit> {
    siphon_postgres::slot::drop(client, slot)
        .await
        .map_err(|e| sql_error("dropping the replication slot", e))
}

/// Facts about the slot for the status.
pub async fn slot_status(
    client: &Client,
    slot: &str,
    server_version_num: i32,
) -> Result<Option<SlotStatus>, Unfit> {
    let failover = if server_version_num >= FAILOVER_SLOTS_SINCE {
        "failover"
    } else {
        "NULL::bool"
    };
    let rows = client
        .query(
            format!(
                "SELECT active, wal_status, \
                   pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, confirmed_flush_lsn::text, {failover} \
                 FROM pg_replication_slots WHERE slot_name = $1"
            )
            .as_str(),
            &[&slot],
        )
        .await
        .map_err(|e| sql_error("reading pg_replication_slots", e))?;
    Ok(rows.first().map(|r| {
        let retained: Option<i64> = r.get(2);
        SlotStatus {
            name: slot.to_string(),
            active: r.get(0),
            wal_status: r.get(1),
            retained_wal_bytes: retained,
            retained_wal: retained.map(human_bytes),
            confirmed_flush_lsn: r.get(3),
            failover: r.get(4),
        }
    }))
}

/// `1536` → `1.5Ki`.
pub fn human_bytes(n: i64) -> String {
    let units = ["", "Ki", "Mi", "Gi", "Ti"];
    let mut v = n.max(0) as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}")
    } else {
        format!("{v:.1}{}", units[i])
    }
}

/// Drop what `managed` lists, in the design's order; every step idempotent.
pub async fn teardown(
    client: &Client,
    managed: &ManagedObjects,
    capture_id: &str,
) -> Result<(), Unfit> {
    if let Some(slot) = &managed.slot {
        drop_slot(client, slot).await?;
    }
    if let Some(publication) = &managed.publication {
        run(
            client,
            &format!("DROP PUBLICATION IF EXISTS {}", quote_ident(publication)),
            "dropping the publication",
        )
        .await?;
    }
    crate::polling::teardown(client, managed).await?;
    if let Some(wm) = &managed.watermark_table
        && let Some((schema, name)) = wm.split_once('.')
    {
        leave_watermark_table(client, schema, name, capture_id).await?;
    }
    Ok(())
}

/// Whether `schema.name` exists (a table, view, …).
pub(crate) async fn relation_exists(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<bool, Unfit> {
    client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&qualified(schema, name)],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| sql_error("looking up a table", e))
}

/// Delete the capture's watermark row, then drop the table if no other
/// capture's row is left and Siphon created it (its comment says so). The
/// table lock (SHARE ROW EXCLUSIVE conflicts with itself) makes concurrent
/// teardowns take turns, so the last one sees the table empty; a table
/// another teardown dropped first is no error.
async fn leave_watermark_table(
    client: &Client,
    schema: &str,
    name: &str,
    capture_id: &str,
) -> Result<(), Unfit> {
    let context = "removing the watermark row";
    let t = qualified(schema, name);
    transaction(client, context, End::Commit, async {
        run(client, "SET LOCAL lock_timeout = '10s'", context).await?;
        if !relation_exists(client, schema, name).await? {
            return Ok(());
        }
        match client
            .execute(format!("LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE").as_str(), &[])
            .await
        {
            Ok(_) => {}
            Err(e) if e.code().map(|c| c.code()) == Some("42P01") => return Ok(()),
            Err(e) => return Err(sql_error(context, e)),
        }
        client
            .execute(format!("DELETE FROM {t} WHERE capture = $1").as_str(), &[&capture_id])
            .await
            .map_err(|e| sql_error(context, e))?;
        let row = client
            .query_one(
                format!(
                    "SELECT NOT EXISTS (SELECT 1 FROM {t}), obj_description(to_regclass($1), 'pg_class') = $2"
                )
                .as_str(),
                &[&t, &WATERMARK_COMMENT],
            )
            .await
            .map_err(|e| sql_error(context, e))?;
        let empty: bool = row.get(0);
        let ours: Option<bool> = row.get(1);
        if empty && ours == Some(true) {
            run(client, &format!("DROP TABLE {t}"), "dropping the watermark table").await?;
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{tests::SPEC, tests::fixture, validate};

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn publication_lists_filters_and_columns_on_15() {
        let spec = SPEC.replace(
            "{ name: public.orders }",
            "{ name: public.orders, columns: [id, total], filter: \"total > 0\" }",
        );
        let plan = validate(&fixture("default", "shop", &spec), &[]).unwrap();
        let mut facts = Facts {
            server_version_num: 150_004,
            tables: vec![("public".into(), "orders".into())],
            identities: BTreeMap::new(),
            slot: None,
            publication_exists: false,
            publication: None,
            watermark_exists: false,
        };
        assert_eq!(
            publication_tables(&facts, &plan),
            "\"public\".\"orders\" (\"id\", \"total\") WHERE (total > 0), \"public\".\"siphon_watermarks\""
        );
        // The replica identity always joins the column list.
        facts.identities.insert(
            ("public".into(), "orders".into()),
            Identity::Columns(vec!["region".into(), "id".into()]),
        );
        assert_eq!(
            publication_tables(&facts, &plan),
            "\"public\".\"orders\" (\"id\", \"total\", \"region\") WHERE (total > 0), \"public\".\"siphon_watermarks\""
        );
        // Under REPLICA IDENTITY FULL every column is identity: no list.
        facts
            .identities
            .insert(("public".into(), "orders".into()), Identity::Full);
        assert_eq!(
            publication_tables(&facts, &plan),
            "\"public\".\"orders\" WHERE (total > 0), \"public\".\"siphon_watermarks\""
        );
        facts.server_version_num = 140_000;
        assert_eq!(
            publication_tables(&facts, &plan),
            "\"public\".\"orders\", \"public\".\"siphon_watermarks\""
        );
    }

    #[test]
    fn a_publication_is_rewritten_only_when_its_tables_or_clause_differ() {
        let plan = validate(&fixture("default", "shop", SPEC), &[]).unwrap();
        let facts = Facts {
            server_version_num: 150_004,
            tables: vec![("public".into(), "orders".into())],
            identities: BTreeMap::new(),
            slot: Some(SlotFacts {
                active: true,
                lost: false,
            }),
            publication_exists: true,
            publication: None,
            watermark_exists: true,
        };
        let clause = publication_clause(&facts, &plan);
        let wanted = published_tables(&facts, &plan);
        assert_eq!(
            wanted,
            vec![
                ("public".to_string(), "orders".to_string()),
                ("public".to_string(), "siphon_watermarks".to_string())
            ]
        );
        let current = PublicationState {
            comment: Some(publication_comment(&clause)),
            tables: wanted.iter().cloned().collect(),
        };
        assert!(publication_in_step(&current, &clause, &wanted));
        // A filter or column list changed in the spec: another clause.
        let filtered = clause.replace("\"orders\"", "\"orders\" WHERE (total > 0)");
        assert!(!publication_in_step(&current, &filtered, &wanted));
        // A table dropped from the publication by hand.
        let mut dropped = current.clone();
        dropped.tables.remove(&("public".into(), "orders".into()));
        assert!(!publication_in_step(&dropped, &clause, &wanted));
        // Not commented by Siphon (created before, or by hand).
        let bare = PublicationState {
            comment: None,
            ..current.clone()
        };
        assert!(!publication_in_step(&bare, &clause, &wanted));
    }

    #[test]
    fn publication_options_follow_operations_and_partition_root() {
        let plan = validate(&fixture("default", "shop", SPEC), &[]).unwrap();
        assert_eq!(
            publication_options(&plan),
            "publish = 'insert, update, delete, truncate', publish_via_partition_root = true"
        );
        let spec = SPEC.replace(
            "tables:",
            "logical: { operations: [truncate, insert], publishViaPartitionRoot: false }\ntables:",
        );
        let plan = validate(&fixture("default", "shop", &spec), &[]).unwrap();
        assert_eq!(
            publication_options(&plan),
            "publish = 'insert, truncate', publish_via_partition_root = false"
        );
    }

    #[test]
    fn a_filter_outside_the_replica_identity_names_the_three_ways_out() {
        let checked = CheckedFilter {
            canonical: "(qty > 10)".into(),
            columns: vec!["qty".into()],
        };
        let unfit = filter_outside_identity(
            "public",
            "b",
            &checked,
            &Identity::Columns(vec!["id".into()]),
        )
        .unwrap();
        assert_eq!(unfit.reason, reason::FILTER_OUTSIDE_REPLICA_IDENTITY);
        assert!(!unfit.transient);
        for way_out in [
            "REPLICA IDENTITY FULL",
            "operations: [insert]",
            "replica identity columns",
        ] {
            assert!(unfit.message.contains(way_out), "{}", unfit.message);
        }
        assert!(filter_outside_identity("public", "b", &checked, &Identity::Full).is_none());
        let on_key = CheckedFilter {
            canonical: "(id > 10)".into(),
            columns: vec!["id".into()],
        };
        assert!(
            filter_outside_identity(
                "public",
                "b",
                &on_key,
                &Identity::Columns(vec!["id".into()])
            )
            .is_none()
        );
    }

    #[test]
    fn failover_slots_where_the_server_has_them_and_never_asked_in_vain() {
        let plan = validate(&fixture("default", "shop", SPEC), &[]).unwrap();
        assert_eq!(failover_slot(&plan, 170_002), Ok(true));
        assert_eq!(failover_slot(&plan, 160_004), Ok(false));
        let spec = SPEC.replace("tables:", "logical: { failover: true }\ntables:");
        let asked = validate(&fixture("default", "shop", &spec), &[]).unwrap();
        assert_eq!(failover_slot(&asked, 180_000), Ok(true));
        let refused = failover_slot(&asked, 160_004).unwrap_err();
        assert!(refused.message.contains("17"), "{}", refused.message);
        let spec = SPEC.replace("tables:", "logical: { failover: false }\ntables:");
        let off = validate(&fixture("default", "shop", &spec), &[]).unwrap();
        assert_eq!(failover_slot(&off, 170_002), Ok(false));
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(512), "512");
        assert_eq!(human_bytes(1536), "1.5Ki");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0Gi");
    }

    #[test]
    fn a_streaming_capture_needs_no_free_sender_and_an_existing_slot_no_free_slot() {
        let full = Capacity {
            max_slots: 10,
            used_slots: 10,
            max_senders: 10,
            used_senders: 10,
        };
        let streaming = Some(SlotUse { active: true });
        let idle = Some(SlotUse { active: false });
        assert!(full.shortage(streaming).is_none());
        let why = |slot| full.shortage(slot).map(|u| u.reason);
        assert_eq!(why(idle), Some(reason::NO_FREE_WAL_SENDERS));
        assert_eq!(why(None), Some(reason::NO_FREE_SLOTS));
        // Capacity frees without an event of this capture: looked at again soon.
        assert!(full.shortage(None).is_some_and(|u| u.transient));
        assert!(full.shortage(idle).is_some_and(|u| u.transient));
        let senders_free = Capacity {
            used_senders: 9,
            ..full
        };
        assert!(senders_free.shortage(idle).is_none());
        assert_eq!(
            senders_free.shortage(None).map(|u| u.reason),
            Some(reason::NO_FREE_SLOTS)
        );
        let slots_free = Capacity {
            used_slots: 9,
            ..full
        };
        assert!(
            slots_free
                .shortage(None)
                .is_some_and(|u| u.message.contains("max_wal_senders"))
        );
    }
}
