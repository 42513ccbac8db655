//! Facts the worker reads from PostgreSQL's catalogs at start.

use std::collections::HashMap;

use siphon_crds::worker_config::WorkerConfig;

/// Record key columns of the published tables whose replica identity is FULL
/// (pgoutput then flags every column as identity): the primary key, or the
/// spec's `keyColumns` when there is none.
pub async fn full_identity_keys(
    sql: &tokio_postgres::Client,
    config: &WorkerConfig,
) -> Result<HashMap<(String, String), Vec<String>>, tokio_postgres::Error> {
    let rows = sql
        .query(
            "SELECT pt.schemaname::text, pt.tablename::text, \
               ARRAY(SELECT a.attname::text FROM pg_index i \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1]) \
                     WHERE i.indrelid = c.oid AND i.indisprimary \
                     ORDER BY array_position(i.indkey::int2[], a.attnum)) \
             FROM pg_publication_tables pt \
             JOIN pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname = $1 AND c.relreplident = 'f'",
            &[&config.logical.publication_name],
        )
        .await?;
    let mut out = HashMap::new();
    for row in rows {
        let schema: String = row.get(0);
        let table: String = row.get(1);
        let mut keys: Vec<String> = row.get(2);
        if keys.is_empty() {
            let qualified = format!("{schema}.{table}");
            if let Some(spec) = config.tables.iter().find(|t| t.name == qualified) {
                keys = spec.key_columns.clone();
            }
        }
        if !keys.is_empty() {
            out.insert((schema, table), keys);
        }
    }
    Ok(out)
}
