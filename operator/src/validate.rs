//! Stage 2 of the reconcile pipeline: check a spec and derive the names and
//! settings the later stages need. Pure: no I/O, unit-tested on fixtures.
//!
//! The schema and CEL rules already refuse most malformed specs at `kubectl
//! apply`; what remains here needs more than one field or more than one
//! resource (two captures claiming one slot), or knowledge the schema lacks.

use std::time::Duration;

use kube::ResourceExt;
use siphon_crds::capture::{
    CaptureMode, Operation, PollingSpec, PostgresCapture, PublicationMode, SnapshotRequest,
    TableSpec,
};
use siphon_crds::conditions::reason;
use siphon_crds::polling::Lateness;
use siphon_crds::{duration, kafka_options};

use crate::names::SlotName;

/// A spec that cannot work, with the condition reason and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

/// A schema-qualified table, or every table of a schema.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRef {
    pub schema: String,
    /// `None` for `schema.*`.
    pub name: Option<String>,
    pub spec: TableSpec,
}

impl TableRef {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name.as_deref().unwrap_or("*"))
    }
}

/// Everything later stages need, derived once.
#[derive(Debug, Clone)]
pub struct Plan {
    pub namespace: String,
    pub name: String,
    pub mode: CaptureMode,
    pub slot: SlotName,
    pub publication: String,
    pub publication_mode: PublicationMode,
    pub tables: Vec<TableRef>,
    /// (schema, table) of the watermark table; Logical mode with backfill only.
    pub watermark: Option<(String, String)>,
    pub heartbeat: Duration,
    /// `host:port/database`, identifying the database for claims and status.
    pub database_id: String,
    /// Operations to capture; all when empty (`spec.logical.operations`).
    pub operations: Vec<Operation>,
    /// `spec.logical.publishViaPartitionRoot`.
    pub publish_via_partition_root: bool,
    /// The on-demand re-snapshot the spec asks for, if any.
    pub snapshot_request: Option<SnapshotRequest>,
    /// `spec.logical.failover`: `None` means where the server supports it.
    pub failover: Option<bool>,
    /// Mode `Polling`: its options, lateness read.
    pub polling: Option<PollingPlan>,
}

/// The options of a polling capture, as later stages need them.
#[derive(Debug, Clone, PartialEq)]
pub struct PollingPlan {
    pub spec: PollingSpec,
    /// `spec.polling.lateness`, read.
    pub lateness: Lateness,
}

impl PollingPlan {
    /// The cursor column of a table: its own, else `polling.cursorColumn`.
    pub fn cursor_of<'a>(&'a self, table: &'a TableSpec) -> &'a str {
        table
            .cursor_column
            .as_deref()
            .unwrap_or(&self.spec.cursor_column)
    }
}

impl Plan {
    /// Whether updates or deletes are captured: then PostgreSQL demands that
    /// a publication's row filters and column lists stay within the replica
    /// identity, or it refuses the application's UPDATE and DELETE.
    pub fn publishes_updates_or_deletes(&self) -> bool {
        self.operations.is_empty()
            || self
                .operations
                .iter()
                .any(|o| matches!(o, Operation::Update | Operation::Delete))
    }
}

/// Split `schema.table`; both parts non-empty.
pub fn split_qualified(name: &str) -> Option<(String, String)> {
    let (schema, table) = name.split_once('.')?;
    if schema.is_empty() || table.is_empty() || table.contains('.') {
        return None;
    }
    Some((schema.to_string(), table.to_string()))
}

/// Validate one capture against itself and the other captures in the cluster.
pub fn validate(capture: &PostgresCapture, others: &[PostgresCapture]) -> Result<Plan, Invalid> {
    let spec = &capture.spec;
    let namespace = capture.namespace().unwrap_or_default();
    let name = capture.name_any();
    let invalid = |message: String| Invalid {
        reason: reason::INVALID_SPEC,
        message,
    };

    let logical = spec.logical_or_default();
    let slot = match &logical.slot_name {
        Some(s) => {
            SlotName::parse(s).map_err(|e| invalid(format!("spec.logical.slotName: {e}")))?
        }
        None => SlotName::derive(&namespace, &name),
    };
    let publication = logical
        .publication_name
        .clone()
        .unwrap_or_else(|| slot.as_str().to_string());
    let heartbeat = duration::parse_at_least(&logical.heartbeat_interval, duration::MIN_HEARTBEAT)
        .map_err(|e| invalid(format!("spec.logical.heartbeatInterval: {e}")))?;

    let mut tables = Vec::with_capacity(spec.tables.len());
    for (i, t) in spec.tables.iter().enumerate() {
        let (schema, table) = split_qualified(&t.name).ok_or_else(|| {
            invalid(format!(
                "spec.tables[{i}].name {:?} is not schema-qualified: write schema.table, e.g. public.orders",
                t.name
            ))
        })?;
        let name = (table != "*").then_some(table);
        if name.is_none() && (!t.columns.is_empty() || !t.key_columns.is_empty()) {
            return Err(invalid(format!(
                "spec.tables[{i}]: columns and keyColumns need a single table, not {:?}",
                t.name
            )));
        }
        if t.filter.is_some()
            && spec.mode == CaptureMode::Logical
            && logical.publication == PublicationMode::Existing
        {
            return Err(invalid(format!(
                "spec.tables[{i}].filter: with spec.logical.publication: Existing the publication decides which rows stream; put the row filter in the publication (ALTER PUBLICATION … SET TABLE {} WHERE (…)) and remove it here",
                t.name
            )));
        }
        if t.filter.as_deref().is_some_and(|f| f.trim().is_empty()) {
            return Err(invalid(format!(
                "spec.tables[{i}].filter is empty: remove it or write a boolean expression"
            )));
        }
        tables.push(TableRef {
            schema,
            name,
            spec: t.clone(),
        });
    }

    let polling = if spec.mode == CaptureMode::Polling {
        let polling = spec
            .polling
            .as_ref()
            .ok_or_else(|| invalid("spec.polling is required when spec.mode is Polling".into()))?;
        duration::parse_at_least(&polling.interval, duration::MIN_POLL_INTERVAL)
            .map_err(|e| invalid(format!("spec.polling.interval: {e}")))?;
        let lateness = Lateness::parse(polling.lateness.as_deref())
            .map_err(|e| invalid(format!("spec.polling.lateness: {e}")))?;
        for (i, t) in tables.iter().enumerate() {
            if t.name.is_none() {
                return Err(invalid(format!(
                    "spec.tables[{i}].name {:?}: polling needs explicit table names; `schema.*` is only for mode Logical",
                    t.spec.name
                )));
            }
            if polling.notify && t.spec.query.is_some() {
                return Err(invalid(format!(
                    "spec.tables[{i}].query: polling.notify makes triggers on tables, and a query has none: poll it without notify, or capture its tables"
                )));
            }
            if t.spec.query.is_some() && t.spec.key_columns.is_empty() {
                return Err(invalid(format!(
                    "spec.tables[{i}].keyColumns: a table with a query needs keyColumns, the columns of the query's rows that identify a row"
                )));
            }
        }
        Some(PollingPlan {
            spec: polling.clone(),
            lateness,
        })
    } else {
        None
    };

    for key in spec.kafka.options.keys() {
        if let Some(why) = kafka_options::reserved_reason(key) {
            return Err(invalid(format!("spec.kafka.options.{key}: {why}")));
        }
    }

    let snapshot = spec.snapshot_or_default();
    let watermark = if spec.mode == CaptureMode::Logical {
        Some(split_qualified(&snapshot.watermark_table).ok_or_else(|| {
            invalid(format!(
                "spec.snapshot.watermarkTable {:?} is not schema-qualified",
                snapshot.watermark_table
            ))
        })?)
    } else {
        None
    };

    let pg = &spec.postgres;
    let database_id = format!("{}:{}/{}", pg.host, pg.port, pg.database);

    let plan = Plan {
        namespace,
        name,
        mode: spec.mode,
        slot,
        publication,
        publication_mode: logical.publication,
        tables,
        watermark,
        heartbeat,
        database_id,
        operations: logical.operations.clone(),
        publish_via_partition_root: logical.publish_via_partition_root,
        snapshot_request: snapshot.request.clone(),
        failover: logical.failover,
        polling,
    };
    if let Some(conflict) = claim_conflict(capture, &plan, others) {
        return Err(conflict);
    }
    Ok(plan)
}

/// Whether a capture makes notify objects (`polling.notify`), named after
/// its slot name.
fn makes_notify_objects(capture: &PostgresCapture) -> bool {
    capture.spec.mode == CaptureMode::Polling
        && capture.spec.polling.as_ref().is_some_and(|p| p.notify)
}

/// Another, older capture already uses this slot or publication in the same
/// database (or, for two polling captures with `notify`, the same names for
/// their trigger function, deletes table and channel): the newer one is
/// refused and touches nothing.
fn claim_conflict(
    me: &PostgresCapture,
    plan: &Plan,
    others: &[PostgresCapture],
) -> Option<Invalid> {
    let my_key = (
        me.creation_timestamp().map(|t| t.0),
        me.namespace(),
        me.name_any(),
    );
    let notify = makes_notify_objects(me);
    for other in others {
        let both_logical =
            plan.mode == CaptureMode::Logical && other.spec.mode == CaptureMode::Logical;
        let both_notify = notify && makes_notify_objects(other);
        if other.uid() == me.uid() || !(both_logical || both_notify) {
            continue;
        }
        let Ok(theirs) = validate_names_only(other) else {
            continue;
        };
        if theirs.database_id != plan.database_id {
            continue;
        }
        let other_key = (
            other.creation_timestamp().map(|t| t.0),
            other.namespace(),
            other.name_any(),
        );
        if other_key >= my_key {
            continue;
        }
        let who = format!(
            "{}/{}",
            other.namespace().unwrap_or_default(),
            other.name_any()
        );
        if both_notify && theirs.slot == plan.slot {
            return Some(Invalid {
                reason: reason::SLOT_CLAIMED,
                message: format!(
                    "the notify objects named after {} (trigger function, deletes table, channel) in {} are already used by PostgresCapture {who}; set spec.logical.slotName, the base of these names, to another name",
                    plan.slot, plan.database_id
                ),
            });
        }
        if !both_logical {
            continue;
        }
        if theirs.slot == plan.slot {
            return Some(Invalid {
                reason: reason::SLOT_CLAIMED,
                message: format!(
                    "replication slot {} in {} is already used by PostgresCapture {who}; set spec.logical.slotName to another name",
                    plan.slot, plan.database_id
                ),
            });
        }
        if theirs.publication == plan.publication
            && plan.publication_mode == PublicationMode::Create
        {
            return Some(Invalid {
                reason: reason::SLOT_CLAIMED,
                message: format!(
                    "publication {} in {} is already managed by PostgresCapture {who}; set spec.logical.publicationName to another name",
                    plan.publication, plan.database_id
                ),
            });
        }
    }
    None
}

struct Names {
    slot: SlotName,
    publication: String,
    database_id: String,
}

fn validate_names_only(capture: &PostgresCapture) -> Result<Names, ()> {
    let logical = capture.spec.logical_or_default();
    let slot = match &logical.slot_name {
        Some(s) => SlotName::parse(s).map_err(|_| ())?,
        None => SlotName::derive(
            &capture.namespace().unwrap_or_default(),
            &capture.name_any(),
        ),
    };
    let pg = &capture.spec.postgres;
    Ok(Names {
        publication: logical
            .publication_name
            .unwrap_or_else(|| slot.as_str().to_string()),
        slot,
        database_id: format!("{}:{}/{}", pg.host, pg.port, pg.database),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    pub(crate) fn fixture(ns: &str, name: &str, yaml_spec: &str) -> PostgresCapture {
        let spec = serde_yaml::from_str(yaml_spec).unwrap();
        let mut c = PostgresCapture::new(name, spec);
        c.metadata.namespace = Some(ns.into());
        c.metadata.uid = Some(format!("uid-{ns}-{name}"));
        c
    }

    pub(crate) const SPEC: &str = r#"
postgres: { host: 127.0.0.1, database: shop, credentialsSecretRef: { name: pg } }
tables: [{ name: public.orders }]
kafka: { bootstrapServers: "127.0.0.1:9092", topicPrefix: shop }
"#;

    #[test]
    fn defaults_derive_slot_publication_and_watermark() {
        let plan = validate(&fixture("default", "shop", SPEC), &[]).unwrap();
        assert_eq!(plan.slot.as_str(), "siphon_default_shop");
        assert_eq!(plan.publication, "siphon_default_shop");
        assert_eq!(
            plan.watermark,
            Some(("public".into(), "siphon_watermarks".into()))
        );
        assert_eq!(plan.tables[0].qualified(), "public.orders");
        assert_eq!(plan.database_id, "127.0.0.1:5432/shop");
    }

    #[test]
    fn reserved_kafka_options_are_refused_with_the_fix() {
        let spec = SPEC.replace(
            "topicPrefix: shop",
            "topicPrefix: shop, options: { acks: \"1\" }",
        );
        let err = validate(&fixture("default", "shop", &spec), &[]).unwrap_err();
        assert_eq!(err.reason, reason::INVALID_SPEC);
        assert!(
            err.message.contains("spec.kafka.options.acks"),
            "{}",
            err.message
        );
    }

    #[test]
    fn the_younger_of_two_captures_on_one_slot_is_refused() {
        let spec = SPEC.replace("tables:", "logical: { slotName: shared }\ntables:");
        let mut old = fixture("a", "first", &spec);
        old.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap(),
        ));
        let mut young = fixture("b", "second", &spec);
        young.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap(),
        ));
        let err = validate(&young, &[old.clone(), young.clone()]).unwrap_err();
        assert_eq!(err.reason, reason::SLOT_CLAIMED);
        assert!(err.message.contains("a/first"), "{}", err.message);
        assert!(
            validate(&old, &[old.clone(), young]).is_ok(),
            "the older one keeps its slot"
        );
    }

    #[test]
    fn same_slot_name_in_another_database_is_fine() {
        let spec = SPEC.replace("tables:", "logical: { slotName: shared }\ntables:");
        let other = fixture(
            "a",
            "first",
            &spec.replace("database: shop", "database: other"),
        );
        assert!(validate(&fixture("b", "second", &spec), &[other]).is_ok());
    }

    #[test]
    fn intervals_the_worker_would_refuse_are_refused_naming_the_field() {
        let spec = SPEC.replace("tables:", "logical: { heartbeatInterval: 0s }\ntables:");
        let err = validate(&fixture("default", "x", &spec), &[]).unwrap_err();
        assert_eq!(err.reason, reason::INVALID_SPEC);
        assert!(
            err.message
                .contains("spec.logical.heartbeatInterval: must be at least 100ms"),
            "{}",
            err.message
        );
        let spec = SPEC.replace(
            "tables:",
            "mode: Polling\npolling: { cursorColumn: updated_at, interval: 0s }\ntables:",
        );
        let err = validate(&fixture("default", "x", &spec), &[]).unwrap_err();
        assert!(
            err.message.contains("spec.polling.interval"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_filter_with_an_existing_publication_is_refused() {
        let spec = SPEC
            .replace(
                "{ name: public.orders }",
                "{ name: public.orders, filter: \"total > 0\" }",
            )
            .replace("tables:", "logical: { publication: Existing }\ntables:");
        let err = validate(&fixture("default", "x", &spec), &[]).unwrap_err();
        assert!(err.message.contains("ALTER PUBLICATION"), "{}", err.message);
    }

    #[test]
    fn only_inserts_leave_row_filters_free_of_the_replica_identity() {
        let plan = validate(&fixture("default", "x", SPEC), &[]).unwrap();
        assert!(plan.publishes_updates_or_deletes());
        let spec = SPEC.replace(
            "tables:",
            "logical: { operations: [insert, truncate] }\ntables:",
        );
        let plan = validate(&fixture("default", "x", &spec), &[]).unwrap();
        assert!(!plan.publishes_updates_or_deletes());
        let spec = SPEC.replace(
            "tables:",
            "logical: { operations: [insert, delete] }\ntables:",
        );
        let plan = validate(&fixture("default", "x", &spec), &[]).unwrap();
        assert!(plan.publishes_updates_or_deletes());
    }

    pub(crate) const POLLING: &str = r#"
postgres: { host: 127.0.0.1, database: shop, credentialsSecretRef: { name: pg } }
mode: Polling
polling: { cursorColumn: updated_at }
tables: [{ name: public.orders }]
kafka: { bootstrapServers: "127.0.0.1:9092", topicPrefix: shop }
"#;

    #[test]
    fn polling_reads_lateness_auto_and_durations() {
        let plan = validate(&fixture("default", "x", POLLING), &[]).unwrap();
        let polling = plan.polling.as_ref().unwrap();
        assert_eq!(polling.lateness, Lateness::None);
        assert!(plan.watermark.is_none(), "no watermark table when polling");
        let auto = POLLING.replace(
            "cursorColumn: updated_at",
            "cursorColumn: updated_at, lateness: Auto",
        );
        let plan = validate(&fixture("default", "x", &auto), &[]).unwrap();
        assert_eq!(plan.polling.unwrap().lateness, Lateness::Auto);
        let window = POLLING.replace(
            "cursorColumn: updated_at",
            "cursorColumn: updated_at, lateness: 30s",
        );
        let plan = validate(&fixture("default", "x", &window), &[]).unwrap();
        assert_eq!(
            plan.polling.unwrap().lateness,
            Lateness::Window(Duration::from_secs(30))
        );
        let bad = POLLING.replace(
            "cursorColumn: updated_at",
            "cursorColumn: updated_at, lateness: soon",
        );
        let err = validate(&fixture("default", "x", &bad), &[]).unwrap_err();
        assert!(
            err.message.contains("spec.polling.lateness"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_table_names_its_own_cursor_or_takes_the_captures() {
        let spec = POLLING.replace(
            "tables: [{ name: public.orders }]",
            "tables: [{ name: public.orders }, { name: public.items, cursorColumn: seq }]",
        );
        let plan = validate(&fixture("default", "x", &spec), &[]).unwrap();
        let polling = plan.polling.as_ref().unwrap();
        assert_eq!(polling.cursor_of(&plan.tables[0].spec), "updated_at");
        assert_eq!(polling.cursor_of(&plan.tables[1].spec), "seq");
    }

    #[test]
    fn polling_refuses_wildcards_and_notify_on_a_query() {
        let wild = POLLING.replace("public.orders", "public.*");
        let err = validate(&fixture("default", "x", &wild), &[]).unwrap_err();
        assert!(
            err.message.contains("explicit table names"),
            "{}",
            err.message
        );
        let query = POLLING
            .replace(
                "cursorColumn: updated_at",
                "cursorColumn: updated_at, notify: true",
            )
            .replace(
                "{ name: public.orders }",
                "{ name: public.totals, query: \"SELECT 1\", keyColumns: [id] }",
            );
        let err = validate(&fixture("default", "x", &query), &[]).unwrap_err();
        assert!(err.message.contains("without notify"), "{}", err.message);
    }

    #[test]
    fn two_polling_captures_with_notify_may_not_share_their_object_names() {
        let spec = POLLING
            .replace(
                "cursorColumn: updated_at",
                "cursorColumn: updated_at, notify: true",
            )
            .replace(
                "mode: Polling",
                "mode: Polling\nlogical: { slotName: shared }",
            );
        let mut old = fixture("a", "first", &spec);
        old.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap(),
        ));
        let mut young = fixture("b", "second", &spec);
        young.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap(),
        ));
        let err = validate(&young, &[old.clone(), young.clone()]).unwrap_err();
        assert_eq!(err.reason, reason::SLOT_CLAIMED);
        assert!(err.message.contains("a/first"), "{}", err.message);
        // Without notify a polling capture makes no objects: no claim.
        let quiet = spec.replace(", notify: true", "");
        let young = fixture("b", "second", &quiet);
        assert!(validate(&young, &[old]).is_ok());
    }

    #[test]
    fn schema_wildcards_cannot_carry_column_lists() {
        let spec = SPEC.replace(
            "{ name: public.orders }",
            "{ name: public.*, columns: [id] }",
        );
        assert!(validate(&fixture("default", "x", &spec), &[]).is_err());
    }
}
