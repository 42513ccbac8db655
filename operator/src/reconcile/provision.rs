//! Stages 3 and 4: preflight (read the database, refuse what is unsafe
//! before touching anything) and provision (create or adjust exactly what
//! the plan needs, recording each object in `status.managed` before it is
//! made), by mode: [`database`] for logical replication, [`polling`] for
//! cursor polling. Each mode retires what the other left behind.

use siphon_crds::capture::{CaptureMode, PostgresCapture};
use siphon_crds::status::ManagedObjects;
use tokio_postgres::Client;

use super::Laps;
use super::conditions::{self, Verdict};
use crate::controller::Error;
use crate::database::{self, Unfit};
use crate::polling;
use crate::validate::Plan;

/// What provisioning established.
pub(crate) struct Provisioned {
    /// `Provisioned=True`, and for polling `CursorIndexed`.
    pub verdicts: Vec<Verdict>,
    /// The server's version, for a logical capture (its slot is read next).
    pub server_version_num: Option<i32>,
}

/// Preflight, then provision, for the plan's mode.
pub(crate) async fn run<R>(
    client: &Client,
    plan: &Plan,
    capture: &PostgresCapture,
    managed: &mut ManagedObjects,
    record: &mut R,
    laps: &mut Laps,
) -> Result<Provisioned, Error>
where
    R: FnMut(ManagedObjects) -> futures::future::BoxFuture<'static, Result<(), Unfit>>,
{
    if plan.mode == CaptureMode::Logical {
        let facts = database::preflight(client, plan).await?;
        laps.lap("preflight");
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        database::provision(client, plan, &facts, managed, &now, &mut *record).await?;
        // A capture that polled with notify before keeps no triggers.
        polling::retire(client, managed, None, &mut *record).await?;
        laps.lap("provision");
        Ok(Provisioned {
            verdicts: vec![conditions::provisioned_logical(plan, facts.tables.len())],
            server_version_num: Some(facts.server_version_num),
        })
    } else {
        let facts = polling::preflight(client, plan).await?;
        laps.lap("preflight");
        let made = polling::provision(client, plan, &facts, managed, &mut *record).await?;
        laps.lap("provision");
        // Deletes wait in the table while no worker drains it.
        managed.deletes_waiting = if capture.spec.suspend {
            polling::deletes_waiting(client, managed).await?
        } else {
            None
        };
        Ok(Provisioned {
            verdicts: vec![
                conditions::provisioned_polling(made.tables, made.notify_tables),
                conditions::cursor_indexed(&facts.polled),
            ],
            server_version_num: None,
        })
    }
}
