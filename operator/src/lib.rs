//! The Siphon operator: reconciles `PostgresCapture` resources.
//!
//! The reconcile pipeline, one module per stage:
//! [`validate`] (pure) → [`database`] (preflight, provision, teardown; for
//! mode Polling, [`polling`]) →
//! [`build`] (pure) → apply and [`status`], driven by [`controller`].

pub mod build;
pub mod controller;
pub mod database;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod names;
pub mod platform;
pub mod polling;
pub mod scope;
pub mod slot;
pub mod status;
pub mod validate;
