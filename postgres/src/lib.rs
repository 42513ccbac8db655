//! What Siphon's two binaries say to PostgreSQL, each fact once.
//!
//! The operator (catalog checks, provisioning, teardown) and the worker
//! (replication, backfill, polling) connect to the same servers under the
//! same rules, so those rules live here and nowhere else:
//!
//! - [`tls`]: libpq's `sslmode` as rustls configurations;
//! - [`connect`]: a SQL session with that TLS, the session settings and an
//!   application name, as one connection type whatever the mode;
//! - [`session`]: the settings under which every value arrives in one text
//!   form (the record encoder relies on it);
//! - [`ident`]: quoting of identifiers and literals;
//! - [`slot`]: the replication slot name, as a person writes it or as Siphon
//!   derives it;
//! - [`sqlstate`]: which server errors a retry may cure.
//!
//! This crate knows nothing of Kubernetes or Kafka: `cargo tree -p
//! siphon-operator` shows no librdkafka.

pub mod connect;
pub mod ident;
pub mod session;
pub mod slot;
pub mod sqlstate;
pub mod tls;

pub use connect::{Connection, SqlParams, connect};
pub use ident::{qualified, quote_ident, quote_literal};
pub use slot::SlotName;
pub use tls::{SslMode, TlsError, tls_config};
