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
//! **No spec text runs as its own statement.** Every statement goes through
//! the extended protocol (one statement per message: no text can end one
//! statement and start another); identifiers go through [`quote_ident`] and
//! literals through [`quote_literal`]. A table's `filter` is the only spec
//! text that reaches SQL unquoted, and only after [`check_filter`] had
//! PostgreSQL accept it as exactly one expression over that one table; what
//! the publication then receives is PostgreSQL's own rendering of it.
//!
//! **The application's statements keep working.** PostgreSQL 15+ refuses
//! UPDATE and DELETE on a table whose publication's column list does not
//! cover the replica identity, or whose row filter uses other columns while
//! updates or deletes are published. Column lists therefore always carry the
//! identity columns, and such a filter is refused before anything exists.
//!
//! Stages: [`mod@preflight`], [`publication`] (pure DDL and decisions),
//! [`mod@provision`] (with the teardown). This module holds what they share:
//! connecting, [`Unfit`], statements and transactions.

pub mod preflight;
pub mod provision;
pub mod publication;

pub use preflight::*;
pub use provision::*;
pub use publication::*;

use siphon_crds::conditions::reason;
use siphon_postgres::SqlParams;
use siphon_postgres::connect::ConnectError;
use tokio_postgres::Client;

/// The oldest server version admitted: the oldest the version suite runs on.
pub const OLDEST_SUPPORTED: i32 = 130_000;

/// The first server version with publication row filters and column lists.
pub const ROW_FILTERS_SINCE: i32 = 150_000;

/// The first server version with failover slots.
pub const FAILOVER_SLOTS_SINCE: i32 = 170_000;

/// A `(schema, table)` pair.
pub type Table = (String, String);

/// A table's replica identity: the columns an UPDATE or DELETE logs as the
/// old key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The primary key or the replica identity index, in index order.
    Columns(Vec<String>),
    /// `REPLICA IDENTITY FULL`: every column.
    Full,
}

impl Identity {
    /// Whether `column` is part of the identity.
    pub fn covers(&self, column: &str) -> bool {
        match self {
            Identity::Full => true,
            Identity::Columns(cols) => cols.iter().any(|c| c == column),
        }
    }
}

/// A row filter as PostgreSQL understood it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedFilter {
    /// PostgreSQL's rendering of the expression (`pg_get_expr`).
    pub canonical: String,
    /// The table's columns the expression uses, as PostgreSQL records them.
    pub columns: Vec<String>,
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
    pub(crate) fn definite(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            transient: false,
        }
    }

    pub(crate) fn transient(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            transient: true,
            ..Self::definite(reason, message)
        }
    }
}

pub use siphon_postgres::{qualified, quote_ident, quote_literal};

/// Connect, telling unreachable from refused credentials. TLS follows libpq's
/// `sslmode` (the same rustls configuration as the worker's connections).
pub async fn connect(params: &SqlParams) -> Result<Client, Unfit> {
    match siphon_postgres::connect(params).await {
        Ok((client, connection)) => {
            drive(connection);
            Ok(client)
        }
        Err(ConnectError::Tls(e)) => Err(Unfit::definite(
            reason::INVALID_SPEC,
            format!("TLS settings of spec.postgres: {e}"),
        )),
        Err(ConnectError::Postgres(e)) => Err(classify_connect_error(&e, params)),
    }
}

/// Run a connection's I/O until it closes.
fn drive(connection: siphon_postgres::Connection) {
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "database connection closed");
        }
    });
}

fn classify_connect_error(e: &tokio_postgres::Error, params: &SqlParams) -> Unfit {
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

/// A failed statement as an [`Unfit`]: transient by the one SQLSTATE rule
/// of [`siphon_postgres::sqlstate`] (a broken connection, a deadlock, too
/// many connections, a shutdown), else a definite refusal; a missing
/// privilege has its own reason, a connection that broke is unreachable.
pub(crate) fn sql_error(context: &str, e: tokio_postgres::Error) -> Unfit {
    let transient = siphon_postgres::sqlstate::is_transient_error(&e);
    let detail = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string());
    let reason = match e.code().map(|c| c.code()) {
        Some("42501") => reason::INSUFFICIENT_PRIVILEGE,
        None => reason::DATABASE_UNREACHABLE,
        Some(_) => reason::PROVISIONING_FAILED,
    };
    Unfit {
        reason,
        message: format!("{context}: {detail}"),
        transient,
    }
}

/// Run one fixed statement (extended protocol: exactly one statement).
pub(crate) async fn run(client: &Client, sql: &str, context: &str) -> Result<(), Unfit> {
    client
        .execute(sql, &[])
        .await
        .map(|_| ())
        .map_err(|e| sql_error(context, e))
}

/// Run statements in one transaction, each through the extended protocol.
async fn run_all(client: &Client, statements: &[String], context: &str) -> Result<(), Unfit> {
    transaction(client, context, End::Commit, async {
        for statement in statements {
            run(client, statement, context).await?;
        }
        Ok(())
    })
    .await
}

/// How [`transaction`] ends when its body succeeds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Commit,
    /// Always rolled back: a check that must leave nothing behind.
    RollBack,
}

/// Run `body` inside BEGIN … COMMIT (or ROLLBACK: when `end` says so, and
/// whenever the body fails). The first error wins.
pub(crate) async fn transaction<T>(
    client: &Client,
    context: &str,
    end: End,
    body: impl std::future::Future<Output = Result<T, Unfit>>,
) -> Result<T, Unfit> {
    run(client, "BEGIN", context).await?;
    let result = body.await;
    let last = if result.is_ok() && end == End::Commit {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let ended = run(client, last, context).await;
    let value = result?;
    ended?;
    Ok(value)
}

/// Whether `schema.name` exists (a table, view, …).
pub(crate) async fn relation_exists(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<bool, Unfit> {
    client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&qualified(schema, name)],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| sql_error("looking up a table", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::SlotFacts;
    use crate::validate::{tests::SPEC, tests::fixture, validate};
    use std::collections::BTreeMap;

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
            identities: BTreeMap::new(),
            slot: None,
            publication_exists: false,
            publication: None,
            watermark_exists: false,
        };
        assert_eq!(
            publication_tables(&facts, &plan),
            "\"public\".\"orders\" (\"id\", \"total\") WHERE (total > 0), \"public\".\"siphon_watermarks\""
        );
        // The replica identity always joins the column list.
        facts.identities.insert(
            ("public".into(), "orders".into()),
            Identity::Columns(vec!["region".into(), "id".into()]),
        );
        assert_eq!(
            publication_tables(&facts, &plan),
            "\"public\".\"orders\" (\"id\", \"total\", \"region\") WHERE (total > 0), \"public\".\"siphon_watermarks\""
        );
        // Under REPLICA IDENTITY FULL every column is identity: no list.
        facts
            .identities
            .insert(("public".into(), "orders".into()), Identity::Full);
        assert_eq!(
            publication_tables(&facts, &plan),
            "\"public\".\"orders\" WHERE (total > 0), \"public\".\"siphon_watermarks\""
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
            identities: BTreeMap::new(),
            slot: Some(SlotFacts {
                active: true,
                lost: false,
            }),
            publication_exists: true,
            publication: None,
            watermark_exists: true,
        };
        let clause = publication_clause(&facts, &plan);
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
    fn publication_options_follow_operations_and_partition_root() {
        let plan = validate(&fixture("default", "shop", SPEC), &[]).unwrap();
        assert_eq!(
            publication_options(&plan),
            "publish = 'insert, update, delete, truncate', publish_via_partition_root = true"
        );
        let spec = SPEC.replace(
            "tables:",
            "logical: { operations: [truncate, insert], publishViaPartitionRoot: false }\ntables:",
        );
        let plan = validate(&fixture("default", "shop", &spec), &[]).unwrap();
        assert_eq!(
            publication_options(&plan),
            "publish = 'insert, truncate', publish_via_partition_root = false"
        );
    }

    #[test]
    fn a_filter_outside_the_replica_identity_names_the_three_ways_out() {
        let checked = CheckedFilter {
            canonical: "(qty > 10)".into(),
            columns: vec!["qty".into()],
        };
        let unfit = filter_outside_identity(
            "public",
            "b",
            &checked,
            &Identity::Columns(vec!["id".into()]),
        )
        .unwrap();
        assert_eq!(unfit.reason, reason::FILTER_OUTSIDE_REPLICA_IDENTITY);
        assert!(!unfit.transient);
        for way_out in [
            "REPLICA IDENTITY FULL",
            "operations: [insert]",
            "replica identity columns",
        ] {
            assert!(unfit.message.contains(way_out), "{}", unfit.message);
        }
        assert!(filter_outside_identity("public", "b", &checked, &Identity::Full).is_none());
        let on_key = CheckedFilter {
            canonical: "(id > 10)".into(),
            columns: vec!["id".into()],
        };
        assert!(
            filter_outside_identity(
                "public",
                "b",
                &on_key,
                &Identity::Columns(vec!["id".into()])
            )
            .is_none()
        );
    }

    #[test]
    fn failover_slots_where_the_server_has_them_and_never_asked_in_vain() {
        let plan = validate(&fixture("default", "shop", SPEC), &[]).unwrap();
        assert_eq!(failover_slot(&plan, 170_002), Ok(true));
        assert_eq!(failover_slot(&plan, 160_004), Ok(false));
        let spec = SPEC.replace("tables:", "logical: { failover: true }\ntables:");
        let asked = validate(&fixture("default", "shop", &spec), &[]).unwrap();
        assert_eq!(failover_slot(&asked, 180_000), Ok(true));
        let refused = failover_slot(&asked, 160_004).unwrap_err();
        assert!(refused.message.contains("17"), "{}", refused.message);
        let spec = SPEC.replace("tables:", "logical: { failover: false }\ntables:");
        let off = validate(&fixture("default", "shop", &spec), &[]).unwrap();
        assert_eq!(failover_slot(&off, 170_002), Ok(false));
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
