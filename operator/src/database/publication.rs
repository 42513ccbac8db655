//! The publication's DDL and the decision what to write to it (pure), and
//! the digest in its comment that tells a publication in step.

use siphon_crds::capture::{Operation, PublicationMode};
use siphon_crds::status::ManagedObjects;

use super::*;
use crate::validate::Plan;

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

pub(super) fn table_spec<'p>(
    plan: &'p Plan,
    schema: &str,
    table: &str,
) -> Option<&'p siphon_crds::capture::TableSpec> {
    plan.tables
        .iter()
        .find(|t| t.schema == schema && t.name.as_deref() == Some(table))
        .map(|t| &t.spec)
}

/// The publication's table list (pure): each table with its column list and
/// row filter where the server has them (PostgreSQL 15+). A column list
/// holds the spec's columns, the key columns and every replica identity
/// column (PostgreSQL refuses UPDATE and DELETE on a table whose column list
/// misses one); under REPLICA IDENTITY FULL every column is identity, so no
/// list is set and the worker drops the other columns itself. `filter_text`
/// gives the text of each table's filter: the spec's for the digest,
/// PostgreSQL's rendering of it for the DDL.
pub(super) fn table_clause(
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
