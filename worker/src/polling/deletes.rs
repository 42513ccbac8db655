//! Deletes, from the table the operator's DELETE and TRUNCATE triggers write
//! (`polling.notify`).
//!
//! The trigger stores each deleted row's key as `to_jsonb` of the key
//! columns (a TRUNCATE as a row with a NULL key). The drain turns a key back
//! into the table's own types with `jsonb_populate_record(NULL::table, key)`
//! and reads each key column as `::text` in the worker's session, so a key
//! is written exactly as the polled rows' keys are, whatever the deleting
//! session's DateStyle or TimeZone.
//!
//! **A queue, not a log.** A deleting transaction takes its `seq` when it
//! deletes and may commit after a larger `seq` was drained, so no "drained
//! up to" number can be right. The worker reads every row visible, and once
//! Kafka holds their records it removes exactly those rows by `seq`. The
//! position lists the `seq`s it covers until they are removed, so a restart
//! between the two neither loses nor repeats a delete.

use std::collections::BTreeSet;

use super::plan::{PollTable, Source};
use siphon_postgres::{quote_ident, quote_literal};

/// `schema.table` of the deletes table, quoted.
pub fn quoted_table(qualified: &str) -> String {
    match qualified.split_once('.') {
        Some((s, t)) => format!("{}.{}", quote_ident(s), quote_ident(t)),
        None => quote_ident(qualified),
    }
}

/// The waiting deletes of one table in `seq` order, at most `limit`, but
/// none of `exclude` (in Kafka already, not yet removed): `seq`, whether it
/// is a TRUNCATE, then one text column per key column.
pub fn drain_sql(
    deletes: &str,
    table: &PollTable,
    limit: u32,
    exclude: &BTreeSet<i64>,
) -> Option<String> {
    let Source::Table { schema, name } = &table.source else {
        return None;
    };
    let keys: Vec<String> = table
        .keys
        .iter()
        .map(|&i| format!("r.{}::text", quote_ident(&table.relation.columns[i].name)))
        .collect();
    Some(format!(
        "SELECT d.seq::text, (d.key IS NULL)::text, {keys} FROM {deletes} AS d \
         LEFT JOIN LATERAL jsonb_populate_record(NULL::{qualified}, d.key) AS r ON true \
         WHERE d.table_name = {literal}{skip} ORDER BY d.seq LIMIT {limit}",
        keys = keys.join(", "),
        skip = if exclude.is_empty() {
            String::new()
        } else {
            format!(
                " AND d.seq <> ALL ('{{{}}}'::bigint[])",
                exclude
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        },
        deletes = quoted_table(deletes),
        qualified = format_args!("{}.{}", quote_ident(schema), quote_ident(name)),
        literal = quote_literal(&format!("{schema}.{name}")),
    ))
}

/// Remove drained rows (`$1` the `seq`s).
pub fn remove_sql(deletes: &str) -> String {
    format!(
        "DELETE FROM {} WHERE seq = ANY ($1::bigint[])",
        quoted_table(deletes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backfill::plan::TableFacts;

    #[test]
    fn keys_come_back_in_the_tables_own_types_as_text() {
        let facts = TableFacts {
            oid: 1,
            schema: "shop".into(),
            name: "Orders".into(),
            replica_identity: b'd',
            columns: vec![
                ("id".into(), 20, -1),
                ("at".into(), 1184, -1),
                ("v".into(), 1184, -1),
            ],
            primary_key: vec!["id".into(), "at".into()],
            ..TableFacts::default()
        };
        let polling =
            serde_json::from_value(serde_json::json!({"cursorColumn": "v", "notify": true}))
                .unwrap();
        let spec = serde_json::from_value(serde_json::json!({"name": "shop.Orders"})).unwrap();
        let table = super::super::plan::plan_table(&facts, &spec, &polling).unwrap();
        let sql = drain_sql("public.siphon_x_deletes", &table, 100, &BTreeSet::new()).unwrap();
        assert_eq!(
            sql,
            "SELECT d.seq::text, (d.key IS NULL)::text, r.\"id\"::text, r.\"at\"::text \
             FROM \"public\".\"siphon_x_deletes\" AS d \
             LEFT JOIN LATERAL jsonb_populate_record(NULL::\"shop\".\"Orders\", d.key) AS r ON true \
             WHERE d.table_name = 'shop.Orders' ORDER BY d.seq LIMIT 100"
        );
        let skipping = drain_sql(
            "public.siphon_x_deletes",
            &table,
            100,
            &BTreeSet::from([3, 9]),
        )
        .unwrap();
        assert!(skipping.contains("= 'shop.Orders' AND d.seq <> ALL ('{3,9}'::bigint[]) ORDER BY"));
        assert_eq!(
            remove_sql("public.siphon_x_deletes"),
            "DELETE FROM \"public\".\"siphon_x_deletes\" WHERE seq = ANY ($1::bigint[])"
        );
    }
}
