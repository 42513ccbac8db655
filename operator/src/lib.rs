//! The Siphon operator: reconciles `PostgresCapture` resources.
//!
//! The reconcile pipeline, one module per stage (see [`reconcile`]):
//! [`reconcile::secrets`] → [`validate`] (pure) → [`reconcile::provision`]
//! (preflight and provision: [`database`] for logical replication,
//! [`polling`] for polling) → [`build`] (pure) → [`reconcile::apply`] →
//! [`reconcile::publish`] (status from the pure [`reconcile::conditions`]
//! and [`status`]); [`reconcile::teardown`] on deletion; driven by
//! [`controller`].

pub mod build;
pub mod controller;
pub mod crash;
pub mod database;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod names;
pub mod platform;
pub mod polling;
pub mod reconcile;
pub mod scope;
pub mod slot;
pub mod status;
pub mod validate;
