//! Preflight: the server's settings and catalogs read, each unfit fact
//! turned into a condition reason and its fix, before anything is created.

use std::collections::BTreeMap;

use siphon_crds::capture::PublicationMode;
use siphon_crds::conditions::reason;
use tokio_postgres::Client;

use super::*;
use crate::platform::{self, Platform};
use crate::slot::SlotFacts;
use crate::validate::{Plan, TableRef};

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
