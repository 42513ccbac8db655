//! `lateness: Auto`: the horizon the database sets, before which no commit
//! can still add a row.
//!
//! A cursor the database sets from its clock (`DEFAULT now()`,
//! `clock_timestamp()`, or a trigger doing the same) is never earlier than
//! the start of the transaction writing it. So while the oldest transaction
//! still open started at `T`, every row with a cursor before `T` that will
//! ever exist is committed already. The horizon is the earlier of that start
//! and the database's clock; polls read only rows before it, and the rest
//! wait for it to move.
//!
//! **Order of reads.** The horizon is read in a statement of its own,
//! *before* the snapshot the rows are read in: a transaction open at the
//! horizon read holds the horizon at its start; one that ended before it is
//! in the later snapshot; one that starts after it starts after the clock
//! the horizon read, so its rows fall beyond the horizon. (Read in the rows'
//! snapshot, a transaction committing between the snapshot and the read
//! would be in neither.)
//!
//! **Guard.** A backend sets its transaction's start a moment before it
//! publishes it in `pg_stat_activity`; the horizon stays [`GUARD`] behind the
//! clock so that moment is covered.
//!
//! **What it cannot see.** A prepared transaction (two-phase commit) shows
//! only when it was prepared, not when it started: the horizon is held at
//! that time, which is safe only for cursors set at prepare time. A cursor
//! the application sets from its own clock, or a sequence, gets nothing from
//! the horizon (docs/polling.md).

use std::time::Duration;

use siphon_crds::status::HorizonHolder;

use super::PollError;

/// How far the horizon stays behind the database's clock.
pub const GUARD: Duration = Duration::from_millis(50);

/// An open transaction older than this is reported as holding the horizon.
pub const HOLD_REPORTED_AFTER: Duration = Duration::from_secs(2);

/// The horizon and what holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Horizon {
    /// Rows whose cursor is before this (timestamptz text, UTC) are final.
    pub before: String,
    /// The open transaction it stops at, when that is older than
    /// [`HOLD_REPORTED_AFTER`].
    pub held_by: Option<HorizonHolder>,
}

/// The horizon query: the clock less the guard, and the oldest open
/// transaction of another client session in this database (or the oldest
/// prepared transaction, which has no session).
pub fn horizon_sql() -> String {
    format!(
        "SELECT (least(clock_timestamp() - interval '{} milliseconds', a.xact_start, p.prepared))::text, \
           a.pid, a.state, a.application_name, a.xact_start::text, \
           extract(epoch FROM clock_timestamp() - a.xact_start)::float8, \
           p.prepared::text, extract(epoch FROM clock_timestamp() - p.prepared)::float8 \
         FROM (SELECT 1) AS one \
         LEFT JOIN LATERAL (SELECT pid, state, application_name, xact_start FROM pg_stat_activity \
           WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND backend_type = 'client backend' AND xact_start IS NOT NULL \
           ORDER BY xact_start LIMIT 1) AS a ON true \
         LEFT JOIN LATERAL (SELECT min(prepared) AS prepared FROM pg_prepared_xacts \
           WHERE database = current_database()) AS p ON true",
        GUARD.as_millis()
    )
}

/// Read the horizon, in autocommit (see the module doc for why).
pub async fn read(sql: &tokio_postgres::Client) -> Result<Horizon, PollError> {
    let row = sql
        .query_one(&horizon_sql(), &[])
        .await
        .map_err(|source| PollError::Sql {
            what: "reading the horizon (pg_stat_activity)",
            table: None,
            source,
        })?;
    let before: String = row.get(0);
    let session = row.get::<_, Option<i32>>(1).map(|pid| {
        (
            pid,
            row.get::<_, Option<String>>(2),
            row.get::<_, Option<String>>(3),
            row.get::<_, Option<String>>(4).unwrap_or_default(),
            row.get::<_, Option<f64>>(5).unwrap_or_default(),
        )
    });
    let prepared = row
        .get::<_, Option<String>>(6)
        .map(|at| (at, row.get::<_, Option<f64>>(7).unwrap_or_default()));
    Ok(Horizon {
        held_by: holder(session, prepared),
        before,
    })
}

type Session = (i32, Option<String>, Option<String>, String, f64);

/// The older of the oldest session transaction and the oldest prepared
/// transaction, when it is old enough to report (pure).
fn holder(session: Option<Session>, prepared: Option<(String, f64)>) -> Option<HorizonHolder> {
    let from_session = session.map(|(pid, state, application_name, start, age)| {
        (
            age,
            HorizonHolder {
                pid,
                state,
                application_name,
                transaction_start: start,
                seconds: age.max(0.0) as u64,
            },
        )
    });
    let from_prepared = prepared.map(|(at, age)| {
        (
            age,
            HorizonHolder {
                pid: 0,
                state: Some("prepared (see pg_prepared_xacts)".into()),
                application_name: None,
                transaction_start: at,
                seconds: age.max(0.0) as u64,
            },
        )
    });
    let oldest = match (from_session, from_prepared) {
        (Some(a), Some(b)) => Some(if a.0 >= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }?;
    (oldest.0 >= HOLD_REPORTED_AFTER.as_secs_f64()).then_some(oldest.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_reads_other_client_sessions_of_this_database_only() {
        let sql = horizon_sql();
        assert!(sql.contains("datname = current_database()"));
        assert!(sql.contains("pid <> pg_backend_pid()"));
        assert!(sql.contains("backend_type = 'client backend'"));
        assert!(sql.contains("clock_timestamp() - interval '50 milliseconds'"));
        assert!(sql.contains("pg_prepared_xacts"));
    }

    #[test]
    fn only_a_transaction_open_long_enough_is_reported() {
        let session = |age| {
            Some((
                4242,
                Some("idle in transaction".to_string()),
                Some("psql".to_string()),
                "2026-12-01 10:00:00+00".to_string(),
                age,
            ))
        };
        assert_eq!(holder(session(0.3), None), None);
        let held = holder(session(75.9), None).unwrap();
        assert_eq!(held.pid, 4242);
        assert_eq!(held.seconds, 75);
        assert_eq!(held.state.as_deref(), Some("idle in transaction"));
        let prepared = holder(
            session(3.0),
            Some(("2026-12-01 09:00:00+00".into(), 3600.0)),
        )
        .unwrap();
        assert_eq!(
            prepared.pid, 0,
            "the older one holds: the prepared transaction"
        );
        assert_eq!(holder(None, None), None);
    }
}
