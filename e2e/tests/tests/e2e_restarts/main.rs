//! End-to-end tests that restart or kill the stack's operator, stop its
//! Kafka or a PostgreSQL server, or change what every capture's preflight
//! sees (a platform marker role): a binary of their own, run one test at a
//! time after the others (`make e2e`), so no test sees the operator or a
//! server vanish under it, and a crash point armed by one test is never
//! disarmed by another's restart.

mod e2e_database_safety_restarts;
mod e2e_operator_crash;
mod e2e_operator_lease;
mod e2e_outages;
mod e2e_platform_marker;
