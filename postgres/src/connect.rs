//! A SQL session as both binaries open one: libpq's `sslmode` through
//! rustls, the [`session`](crate::session) settings, an application name
//! that tells Siphon's sessions apart in `pg_stat_activity`, and a bound on
//! how long connecting may take.
//!
//! Every mode, `disable` included, connects through the same rustls
//! connector (tokio-postgres never starts TLS under `disable`), so the
//! connection has one type and a caller drives it one way.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::Socket;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{SslMode, TlsError, tls_config};

/// The I/O half of a session: spawn it (or poll it for notifications).
pub type Connection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// Where and as whom to connect.
#[derive(Clone)]
pub struct SqlParams {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    pub ssl_mode: SslMode,
    /// CA certificates (PEM) for `verify-ca` and `verify-full`.
    pub ssl_root_cert: Option<PathBuf>,
    /// What `pg_stat_activity.application_name` shows.
    pub application_name: &'static str,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for SqlParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("ssl_mode", &self.ssl_mode)
            .field("application_name", &self.application_name)
            .finish_non_exhaustive()
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS settings cannot work; nothing was sent.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server or the network refused.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

impl SqlParams {
    /// The tokio-postgres configuration of these parameters.
    pub fn config(&self) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(&self.user)
            .application_name(self.application_name)
            .options(crate::session::options())
            .connect_timeout(self.connect_timeout)
            // libpq's semantics: `prefer` falls back to plain text, every
            // other mode but `disable` insists on TLS; the verify modes check
            // the chain (and the host name) inside the rustls configuration.
            .ssl_mode(match self.ssl_mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                    tokio_postgres::config::SslMode::Require
                }
            });
        if let Some(password) = &self.password {
            cfg.password(password);
        }
        cfg
    }
}

/// Open a session; the caller spawns (or polls) the [`Connection`].
pub async fn connect(
    params: &SqlParams,
) -> Result<(tokio_postgres::Client, Connection), ConnectError> {
    let tls = tls_config(params.ssl_mode, params.ssl_root_cert.as_deref())?;
    let connector = MakeRustlsConnect::new((*tls).clone());
    Ok(params.config().connect(connector).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(ssl_mode: SslMode) -> SqlParams {
        SqlParams {
            host: "db.internal".into(),
            port: 5433,
            database: "shop".into(),
            user: "siphon".into(),
            password: Some("hunter2".into()),
            ssl_mode,
            ssl_root_cert: None,
            application_name: "siphon-test",
            connect_timeout: Duration::from_secs(3),
        }
    }

    #[test]
    fn the_configuration_carries_mode_settings_and_name_and_debug_hides_the_password() {
        let cfg = params(SslMode::VerifyFull).config();
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(cfg.get_application_name(), Some("siphon-test"));
        assert_eq!(cfg.get_options(), Some(crate::session::options().as_str()));
        assert_eq!(
            params(SslMode::Prefer).config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        assert_eq!(
            params(SslMode::Disable).config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        assert!(!format!("{:?}", params(SslMode::Require)).contains("hunter2"));
    }

    #[tokio::test]
    async fn a_verify_mode_without_a_ca_is_refused_before_any_byte_is_sent() {
        // The host does not resolve: reaching for the network would fail
        // with a Postgres error instead.
        match connect(&params(SslMode::VerifyCa)).await {
            Err(ConnectError::Tls(e)) => assert!(e.to_string().contains("CA certificate"), "{e}"),
            Err(other) => panic!("expected the TLS refusal, got {other}"),
            Ok(_) => panic!("connected without a CA"),
        }
    }
}
