//! Cursor polling (`spec.mode: Polling`), the operator's side: the preflight
//! that checks each polled table or query through PostgreSQL, and the
//! objects of `polling.notify`, made, kept in step with the spec and dropped.
//!
//! ```text
//!  spec.tables ─► preflight: catalog facts ─► check_* (pure) ─► Polled per table
//!                            filter / query ─► prepared in a READ ONLY transaction, rolled back
//!  notify: true ─► record names in status.managed ─► deletes table + function ─► 2 triggers per table
//!  notify off, table left the spec, deletion ─► drop every trigger calling the function (pg_trigger),
//!                                               the function, the deletes table (if its comment is ours)
//! ```
//!
//! Invariants:
//!
//! * **Spec text is one expression, never more.** A filter and a query are
//!   the only spec text that reaches SQL. Each is *prepared* (parsed and
//!   analysed, never executed) in a READ ONLY transaction that is rolled
//!   back, twice: wrapped in parentheses and bare. A text PostgreSQL accepts
//!   in both shapes has balanced parentheses, so the ones around it enclose
//!   it: it is one boolean expression (one SELECT), and cannot close the
//!   worker's `WHERE (…)` or subquery early to add clauses of its own
//!   (`x) OR (true` is refused).
//! * **Recorded before created.** The function and the deletes table are
//!   named in `status.managed` before they are created, and `managed.triggers`
//!   lists a table before its triggers are made and until they are dropped.
//!   Teardown finds the triggers in `pg_trigger` by the function they call,
//!   not by name, so a record that lags behind never leaks a trigger.
//! * **The application's statements never fail because of Siphon.** The
//!   function is `SECURITY DEFINER` with `search_path = pg_catalog, pg_temp`
//!   and qualifies every object: the application's role needs no privilege on
//!   the deletes table, and nothing of the application's can stand in for
//!   Siphon's objects. It notifies at statement level only (one
//!   subtransaction per statement, never per row), inside an exception block,
//!   and only while the notify queue is less than half full: a full queue
//!   fails the *commit*, which no exception block could catch. The interval
//!   stays the fallback for a notification not sent.
//! * **Written only when out of step.** Every reconcile reads the catalog
//!   and writes only what differs: `CREATE TRIGGER` takes a SHARE ROW
//!   EXCLUSIVE lock that queues the application's writes, so it runs rarely
//!   and under a `lock_timeout`.
//!
//! Grants: the worker connects with the operator's role (the same
//! credentials Secret), which owns the deletes table and the function, so no
//! grant is needed for it to LISTEN, read and delete the recorded keys.
//! Privileges: TRIGGER on a table lets the role create the triggers; only the
//! table's owner may drop them again (`DROP TRIGGER`), so `notify` also needs
//! membership in each table's owner role. Partitioned tables carry the
//! triggers on the parent: the row trigger is cloned to each partition, the
//! statement trigger fires for statements naming the parent. Each trigger's
//! first argument is the captured table's `schema.table`, so a delete in a
//! partition is recorded, and notified, under the table the spec names.
//!
//! [`preflight`] reads the catalog and decides (its `check_*` steps are
//! pure); [`notify`] makes, keeps in step and drops the notify objects.

pub mod notify;
pub mod preflight;

pub use notify::*;
pub use preflight::*;

#[cfg(test)]
pub(crate) mod fixtures {
    //! The plans and catalogs the stages' unit tests share.
    use super::*;
    use crate::database::Unfit;
    use crate::validate::tests::{POLLING, fixture};
    use crate::validate::{Plan, validate};

    pub fn plan(spec: &str) -> Plan {
        validate(&fixture("default", "shop", spec), &[]).unwrap()
    }

    pub fn notify_plan() -> Plan {
        plan(&POLLING.replace(
            "cursorColumn: updated_at",
            "cursorColumn: updated_at, notify: true, objectsSchema: siphon",
        ))
    }

    pub fn server() -> ServerFacts {
        ServerFacts {
            version: 160_004,
            user: "app".into(),
            superuser: false,
            reads_all_stats: false,
            objects_schema_create: Some(true),
        }
    }

    pub fn column(name: &str, type_oid: u32, type_name: &str, not_null: bool) -> ColumnFact {
        ColumnFact {
            name: name.into(),
            type_oid,
            type_name: type_name.into(),
            not_null,
        }
    }

    pub fn index(primary: bool, unique: bool, columns: &[&str]) -> IndexFact {
        IndexFact {
            primary,
            unique,
            partial: false,
            btree: true,
            columns: columns
                .iter()
                .map(|c| (!c.is_empty()).then(|| c.to_string()))
                .collect(),
        }
    }

    pub fn orders() -> TableCatalog {
        TableCatalog {
            relkind: "r".into(),
            can_select: true,
            can_trigger: true,
            owns: true,
            owner: "app".into(),
            columns: vec![
                column("id", 20, "bigint", true),
                column("updated_at", 1184, "timestamp with time zone", false),
                column("note", 25, "text", false),
                column("seq", 20, "bigint", true),
            ],
            indexes: vec![index(true, true, &["id"])],
        }
    }

    pub fn check(p: &Plan, catalog: &TableCatalog) -> Result<Polled, Unfit> {
        check_table(
            0,
            &p.tables[0],
            p.polling.as_ref().unwrap(),
            &server(),
            Some(catalog),
        )
    }
}
