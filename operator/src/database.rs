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
//! Identifiers always go through [`quote_ident`]; the only spec text that
//! reaches SQL unquoted is a table's `filter`, which is documented as SQL.

use std::time::Duration;

use siphon_crds::capture::{PublicationMode, SslMode};
use siphon_crds::conditions::reason;
use siphon_crds::status::{ManagedObjects, SlotStatus};
use siphon_worker::replication::connection::{SslMode as WorkerSslMode, tls_config};
use tokio_postgres::{Client, NoTls};

use crate::validate::{Plan, TableRef};

/// How to reach the database.
#[derive(Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
    pub ssl_mode: SslMode,
    /// CA certificate file for verify-ca / verify-full.
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
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
    fn definite(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            transient: false,
        }
    }

    fn transient(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            transient: true,
            ..Self::definite(reason, message)
        }
    }
}

/// Quote an identifier for SQL: `a"b` → `"a""b"`.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quote a string literal for SQL.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// Connect, telling unreachable from refused credentials. TLS follows libpq's
/// `sslmode` (the same rustls configuration as the worker's connections).
pub async fn connect(params: &ConnectParams) -> Result<Client, Unfit> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&params.host)
        .port(params.port)
        .dbname(&params.database)
        .user(&params.user)
        .password(&params.password)
        .application_name("siphon-operator")
        .connect_timeout(Duration::from_secs(10));
    let result = if params.ssl_mode == SslMode::Disable {
        cfg.connect(NoTls).await.map(|(client, connection)| {
            drive(connection);
            client
        })
    } else {
        cfg.ssl_mode(if params.ssl_mode == SslMode::Prefer {
            tokio_postgres::config::SslMode::Prefer
        } else {
            tokio_postgres::config::SslMode::Require
        });
        let mode = match params.ssl_mode {
            SslMode::Disable => WorkerSslMode::Disable,
            SslMode::Prefer => WorkerSslMode::Prefer,
            SslMode::Require => WorkerSslMode::Require,
            SslMode::VerifyCa => WorkerSslMode::VerifyCa,
            SslMode::VerifyFull => WorkerSslMode::VerifyFull,
        };
        let tls = tls_config(mode, params.ca_file.as_deref()).map_err(|e| {
            Unfit::definite(
                reason::INVALID_SPEC,
                format!("TLS settings of spec.postgres: {e}"),
            )
        })?;
        cfg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(
            (*tls).clone(),
        ))
        .await
        .map(|(client, connection)| {
            drive(connection);
            client
        })
    };
    result.map_err(|e| classify_connect_error(&e, params))
}

/// Run a connection's I/O until it closes.
fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "database connection closed");
        }
    });
}

fn classify_connect_error(e: &tokio_postgres::Error, params: &ConnectParams) -> Unfit {
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

fn sql_error(context: &str, e: tokio_postgres::Error) -> Unfit {
    let transient = e.is_closed() || e.as_db_error().is_none();
    let detail = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string());
    let reason = match e.code().map(|c| c.code()) {
        Some("42501") => reason::INSUFFICIENT_PRIVILEGE,
        _ if transient => reason::DATABASE_UNREACHABLE,
        _ => reason::PROVISIONING_FAILED,
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
    pub slot_exists: bool,
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

/// Check that the database can serve this capture.
pub async fn preflight(client: &Client, plan: &Plan, logical: bool) -> Result<Facts, Unfit> {
    let q = |ctx: &'static str| move |e| sql_error(ctx, e);
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), \
             r.rolreplication, r.rolsuper, \
             current_setting('max_replication_slots')::int, \
             (SELECT count(*)::int FROM pg_replication_slots), \
             current_setting('max_wal_senders')::int, \
             (SELECT count(*)::int FROM pg_stat_replication) \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(q("reading server settings"))?;
    let version: i32 = row.get(0);
    let wal_level: String = row.get(1);
    let can_replicate: bool = row.get::<_, bool>(2) || row.get::<_, bool>(3);
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

    if version < 100_000 {
        return Err(Unfit::definite(
            reason::UNSUPPORTED_SERVER_VERSION,
            format!(
                "PostgreSQL {version} is too old: Siphon needs PostgreSQL 10 or newer (14+ streams large transactions)"
            ),
        ));
    }

    let slot_exists = if logical {
        if wal_level != "logical" {
            return Err(Unfit::definite(
                reason::WAL_LEVEL_NOT_LOGICAL,
                format!(
                    "wal_level is {wal_level}: set wal_level = logical in postgresql.conf and restart PostgreSQL (or use mode: Polling)"
                ),
            ));
        }
        if !can_replicate {
            return Err(Unfit::definite(
                reason::MISSING_REPLICATION_PRIVILEGE,
                "the role lacks the REPLICATION attribute: run ALTER ROLE <user> WITH REPLICATION (or use mode: Polling)",
            ));
        }
        let slot = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&plan.slot.as_str()],
            )
            .await
            .map_err(q("reading pg_replication_slots"))?
            .map(|row| SlotUse { active: row.get(0) });
        let capacity = Capacity {
            max_slots,
            used_slots,
            max_senders,
            used_senders,
        };
        if let Some(unfit) = capacity.shortage(slot) {
            return Err(unfit);
        }
        slot.is_some()
    } else {
        false
    };

    let tables = resolve_tables(client, &plan.tables).await?;
    for (schema, table) in &tables {
        check_table(client, schema, table, plan, superuser).await?;
    }

    if logical && plan.publication_mode == PublicationMode::Create && !can_create_in_db {
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
    if logical && plan.publication_mode == PublicationMode::Existing && !publication_exists {
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
    if let (true, Some((ws, wt))) = (logical, &plan.watermark) {
        watermark_exists = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified(ws, wt)])
            .await
            .map_err(q("looking up the watermark table"))?
            .get(0);
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

    Ok(Facts {
        server_version_num: version,
        tables,
        slot_exists,
        publication_exists,
        publication,
        watermark_exists,
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
) -> Result<(), Unfit> {
    let row = client
        .query_one(
            "SELECT c.relreplident::text, \
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident), \
               has_table_privilege(c.oid, 'SELECT'), \
               pg_has_role(c.relowner, 'USAGE') \
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
    if plan.publication_mode == PublicationMode::Create && !owns && !superuser {
        return Err(Unfit::definite(
            reason::INSUFFICIENT_PRIVILEGE,
            format!(
                "only the owner of {schema}.{table} may add it to a publication: make the role a member of the owner, or create the publication yourself and set spec.logical.publication: Existing"
            ),
        ));
    }
    Ok(())
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

/// The publication's table list, with row filters and column lists where the
/// server supports them (PostgreSQL 15+).
pub fn publication_tables(facts: &Facts, plan: &Plan) -> String {
    let mut items = Vec::new();
    for (schema, table) in &facts.tables {
        let mut item = qualified(schema, table);
        let spec = plan
            .tables
            .iter()
            .find(|t| t.schema == *schema && t.name.as_deref() == Some(table.as_str()))
            .map(|t| &t.spec);
        if let (Some(spec), true) = (spec, facts.server_version_num >= 150_000) {
            if !spec.columns.is_empty() {
                let mut cols: Vec<String> = spec.columns.clone();
                for k in &spec.key_columns {
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
                item.push_str(&format!(" WHERE ({filter})"));
            }
        }
        items.push(item);
    }
    if let Some((ws, wt)) = &plan.watermark {
        items.push(qualified(ws, wt));
    }
    items.join(", ")
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

/// Create or update what the capture needs. `managed` is the record of what
/// Siphon created, updated in place (so the caller holds the latest record
/// even when a later step fails); `record` persists it before each creation.
pub async fn provision<F, Fut>(
    client: &Client,
    plan: &Plan,
    facts: &Facts,
    managed: &mut ManagedObjects,
    mut record: F,
) -> Result<(), Unfit>
where
    F: FnMut(ManagedObjects) -> Fut,
    Fut: std::future::Future<Output = Result<(), Unfit>>,
{
    managed.database = Some(plan.database_id.clone());

    if let Some((ws, wt)) = &plan.watermark {
        if !facts.watermark_exists && managed.watermark_table.is_none() {
            managed.watermark_table = Some(format!("{ws}.{wt}"));
            record(managed.clone()).await?;
        }
        if !facts.watermark_exists {
            client
                .batch_execute(&watermark_table_ddl(ws, wt))
                .await
                .map_err(|e| sql_error("creating the watermark table", e))?;
        }
    }

    if plan.publication_mode == PublicationMode::Create {
        let tables = publication_tables(facts, plan);
        let comment = format!(
            "COMMENT ON PUBLICATION {} IS {}",
            quote_ident(&plan.publication),
            quote_literal(&publication_comment(&tables))
        );
        if !facts.publication_exists {
            if managed.publication.is_none() {
                managed.publication = Some(plan.publication.clone());
                record(managed.clone()).await?;
            }
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {tables} WITH (publish_via_partition_root = true); {comment}",
                quote_ident(&plan.publication)
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| sql_error("creating the publication", e))?;
        } else if managed.publication.as_deref() == Some(plan.publication.as_str()) {
            // Ours: keep its table list in step with the spec, writing only
            // when it is not. (Statements of one simple query commit
            // together: the comment always describes the tables.)
            let wanted = published_tables(facts, plan);
            if !facts
                .publication
                .as_ref()
                .is_some_and(|p| publication_in_step(p, &tables, &wanted))
            {
                let sql = format!(
                    "ALTER PUBLICATION {} SET TABLE {tables}; {comment}",
                    quote_ident(&plan.publication)
                );
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| sql_error("updating the publication", e))?;
            }
        } else {
            return Err(Unfit::definite(
                reason::SLOT_CLAIMED,
                format!(
                    "publication {} already exists and was not created by this capture: set spec.logical.publication: Existing to use it as is, or choose another publicationName",
                    plan.publication
                ),
            ));
        }
    }

    if !facts.slot_exists {
        if managed.slot.is_none() {
            managed.slot = Some(plan.slot.as_str().to_string());
            record(managed.clone()).await?;
        }
        match client
            .query(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&plan.slot.as_str()],
            )
            .await
        {
            Ok(_) => {}
            // Created concurrently (a retried reconcile): fine.
            Err(e) if e.code().map(|c| c.code()) == Some("42710") => {}
            Err(e) => return Err(sql_error("creating the replication slot", e)),
        }
    }
    Ok(())
}

/// Facts about the slot for the status.
pub async fn slot_status(client: &Client, slot: &str) -> Result<Option<SlotStatus>, Unfit> {
    let rows = client
        .query(
            "SELECT active, wal_status, \
               pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, confirmed_flush_lsn::text \
             FROM pg_replication_slots WHERE slot_name = $1",
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
        client
            .query(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[slot],
            )
            .await
            .map_err(|e| sql_error("ending the slot's backend", e))?;
        // The backend releases the slot asynchronously; retry briefly.
        let mut attempt = 0;
        loop {
            let res = client
                .query(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                    &[slot],
                )
                .await;
            match res {
                Ok(_) => break,
                Err(e) if e.code().map(|c| c.code()) == Some("55006") && attempt < 50 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(sql_error("dropping the replication slot", e)),
            }
        }
    }
    if let Some(publication) = &managed.publication {
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                quote_ident(publication)
            ))
            .await
            .map_err(|e| sql_error("dropping the publication", e))?;
    }
    for table in &managed.triggers {
        if let Some((schema, name)) = table.split_once('.') {
            let trigger = format!("siphon_notify_{}", name);
            let sql = format!(
                "DO $$ BEGIN IF to_regclass({}) IS NOT NULL THEN EXECUTE {}; END IF; END $$",
                quote_literal(&qualified(schema, name)),
                quote_literal(&format!(
                    "DROP TRIGGER IF EXISTS {} ON {}",
                    quote_ident(&trigger),
                    qualified(schema, name)
                ))
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| sql_error("dropping a NOTIFY trigger", e))?;
        }
    }
    if let Some(function) = &managed.trigger_function
        && let Some((schema, name)) = function.split_once('.')
    {
        client
            .batch_execute(&format!(
                "DROP FUNCTION IF EXISTS {}()",
                qualified(schema, name)
            ))
            .await
            .map_err(|e| sql_error("dropping the trigger function", e))?;
    }
    // Captures of one database share the watermark table: another teardown
    // may drop it between the check and the DELETE, which is then done too.
    if let Some(wm) = &managed.watermark_table
        && let Some((schema, name)) = wm.split_once('.')
    {
        let t = qualified(schema, name);
        let sql = format!(
            "DO $$ BEGIN IF to_regclass({lit}) IS NOT NULL THEN \
                   DELETE FROM {t} WHERE capture = {cap}; \
                   IF NOT EXISTS (SELECT 1 FROM {t}) THEN DROP TABLE IF EXISTS {t}; END IF; \
                 END IF; \
                 EXCEPTION WHEN undefined_table THEN NULL; \
                 END $$",
            lit = quote_literal(&t),
            cap = quote_literal(capture_id),
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| sql_error("dropping the watermark table", e))?;
    }
    Ok(())
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
            slot_exists: false,
            publication_exists: false,
            publication: None,
            watermark_exists: false,
        };
        assert_eq!(
            publication_tables(&facts, &plan),
            "\"public\".\"orders\" (\"id\", \"total\") WHERE (total > 0), \"public\".\"siphon_watermarks\""
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
            slot_exists: true,
            publication_exists: true,
            publication: None,
            watermark_exists: true,
        };
        let clause = publication_tables(&facts, &plan);
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
