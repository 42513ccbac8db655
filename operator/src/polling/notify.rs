//! The objects of `polling.notify`: the deletes table, the trigger function
//! and two triggers per table, made only when out of step, recorded in
//! `status.managed` before they are made, and found again by the function
//! their triggers call when they are dropped.

use std::collections::BTreeSet;

use siphon_crds::conditions::reason;
use siphon_crds::polling::NotifyNames;
use siphon_crds::status::ManagedObjects;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::preflight::{Polled, PollingFacts};
use crate::database::{
    End, Table, Unfit, qualified, quote_ident, quote_literal, relation_exists, sql_error,
    transaction,
};
use crate::validate::Plan;

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

pub(super) async fn read_notify_state(
    client: &Client,
    objects: &NotifyObjects,
) -> Result<NotifyState, Unfit> {
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
    use crate::polling::fixtures::*;
    use crate::validate::tests::POLLING;

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
}
