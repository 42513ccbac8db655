//! Provision and teardown: the watermark table, the publication and the
//! slot, each recorded in `status.managed` before it is created, and dropped
//! in the design's order.

use std::collections::BTreeMap;

use siphon_crds::conditions::reason;
use siphon_crds::status::{ManagedObjects, SlotStatus};
use tokio_postgres::Client;

use super::*;
use crate::slot::{self, SlotStep};
use crate::validate::Plan;

/// The comment on a watermark table Siphon created: the last capture to
/// leave it drops it; a table a person made is never dropped.
pub const WATERMARK_COMMENT: &str = "created by siphon; dropped with the last capture that uses it";

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

/// DDL of the watermark table. One row per capture; each backfill chunk
/// updates it twice (low and high watermark), which puts two markers into the
/// WAL stream that the worker recognises.
pub fn watermark_table_ddl(schema: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (capture text PRIMARY KEY, watermark text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())",
        qualified(schema, table)
    )
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
