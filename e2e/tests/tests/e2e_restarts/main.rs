//! End-to-end tests that restart or kill the stack's operator, or stop a
//! PostgreSQL server of the stack: a binary of their own, run after the
//! others (`make e2e`), so no other test sees the operator vanish.

mod e2e_database_safety;
mod e2e_operator_crash;
mod e2e_operator_lease;
mod e2e_outages;
