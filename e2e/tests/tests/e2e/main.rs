//! End-to-end tests, one binary: `kubectl apply` of captures against the
//! operator, the control plane, PostgreSQL and Kafka of the local stack
//! (`make e2e`). Tests run two at a time; none restarts the stack's operator
//! or a server another test uses (those are in `tests/e2e_restarts`).

mod e2e_chart;
mod e2e_cleanup_on_panic;
mod e2e_database_safety;
mod e2e_delete_database_down;
mod e2e_delete_teardown;
mod e2e_kafka_tls;
mod e2e_logical_capture;
mod e2e_malformed_specs;
mod e2e_polling;
mod e2e_slot_claim;
mod e2e_spec_fields;
mod e2e_suspend_resume;
mod e2e_table_added;
mod e2e_unfit_databases;
mod e2e_versions;
mod e2e_worker_killed;
mod node_agent;
mod stack_crd;
mod stack_kafka;
mod tls_postgres;
