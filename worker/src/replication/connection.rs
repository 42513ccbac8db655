//! A PostgreSQL replication connection (`replication=database`) on the
//! frontend/backend protocol 3.0, written on `postgres-protocol`.
//!
//! ```text
//! connect ─► [SSLRequest ─► TLS] ─► StartupMessage ─► auth (cleartext | md5 | SCRAM-SHA-256)
//!         ─► simple_query(IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT, …)
//!         ─► start_replication ─► CopyBoth: next_message() ⇄ send_standby_status()
//!         ─► close(): CopyDone, drain to CommandComplete, Terminate
//! ```
//!
//! Invariants:
//! - Reads go through one buffer (256 KiB): a message is split off it and
//!   frozen, so XLogData payloads are zero-copy [`Bytes`] slices; a large
//!   message grows the buffer to fit. The server cannot smuggle bytes before
//!   the TLS handshake: the SSLRequest answer is read as exactly one byte.
//! - [`ReplicationConnection::next_message`] is cancel-safe (its only state is
//!   the read buffer), so it can be a `tokio::select!` arm; the send methods
//!   are not and must run to completion.
//! - The password never reaches a log or an error message.
//! - Column values arrive in their text form under the session settings of
//!   [`siphon_postgres::session`], sent in the startup message, so the record
//!   encoder can rely on one format.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
pub use siphon_postgres::tls::{SslMode, Verification};
use siphon_postgres::tls::{TlsError, server_name, tls_config};
use siphon_postgres::{quote_ident, quote_literal};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::pgoutput::{pg_to_unix_us, unix_to_pg_us};
use crate::change::Lsn;

/// Application name the worker shows in `pg_stat_replication`.
pub const APPLICATION_NAME: &str = "siphon";
/// Initial (and minimum free) size of the read buffer.
const READ_BUFFER: usize = 256 * 1024;
/// Largest message accepted (PostgreSQL's own limit is 1 GiB).
const MAX_MESSAGE: usize = 1 << 30;
/// How long `close` waits for the server to end the stream.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What to do with the server's one-byte answer to SSLRequest:
/// `Ok(true)` for TLS, `Ok(false)` to go on in plain text.
pub fn on_ssl_response(ssl_mode: SslMode, response: u8) -> Result<bool, ReplicationError> {
    match (response, ssl_mode) {
        (b'S', _) => Ok(true),
        (b'N', SslMode::Prefer | SslMode::Disable) => Ok(false),
        (b'N', mode) => Err(ReplicationError::TlsRefused { ssl_mode: mode }),
        // 'E': a server too old for SSLRequest answers with an error.
        (other, _) => Err(ReplicationError::Protocol(format!(
            "unexpected answer {other:#04x} to SSLRequest"
        ))),
    }
}

/// Where and as whom to connect.
#[derive(Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub ssl_mode: SslMode,
    /// CA certificates (PEM) for `verify-ca` and `verify-full`.
    pub ssl_root_cert: Option<PathBuf>,
    /// Bound on TCP connect, TLS and authentication together.
    pub connect_timeout: Duration,
}

impl ConnectParams {
    /// Parameters with the defaults: port 5432, `sslmode=prefer`, 10 s.
    pub fn new(
        host: impl Into<String>,
        user: impl Into<String>,
        database: impl Into<String>,
    ) -> Self {
        Self {
            host: host.into(),
            port: 5432,
            user: user.into(),
            password: None,
            database: database.into(),
            ssl_mode: SslMode::Prefer,
            ssl_root_cert: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// An ErrorResponse from the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgError {
    /// `ERROR`, `FATAL` or `PANIC` (non-localized when the server sends it).
    pub severity: String,
    /// SQLSTATE, e.g. `28P01`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PgError {}

impl PgError {
    /// Parses the fields of an ErrorResponse or NoticeResponse body.
    fn parse(body: &[u8]) -> Self {
        let mut error = PgError::default();
        let mut localized_severity = None;
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(tail.get(..end).unwrap_or_default()).into_owned();
            rest = tail.get(end.saturating_add(1)..).unwrap_or_default();
            match kind {
                b'V' => error.severity = value,
                b'S' => localized_severity = Some(value),
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                _ => {}
            }
        }
        if error.severity.is_empty() {
            error.severity = localized_severity.unwrap_or_default();
        }
        error
    }
}

/// A failure of the replication connection. [`Self::is_transient`] tells a
/// retry (reconnect with backoff) from a failure to report with its fix.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("connection to PostgreSQL failed: {source}")]
    Io {
        #[source]
        source: io::Error,
    },
    #[error("PostgreSQL closed the connection")]
    Closed,
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("the server ended the replication stream (it is probably shutting down)")]
    StreamEnded,
    #[error(
        "the server does not accept TLS but sslMode is {ssl_mode}; enable ssl on the server or set sslMode to prefer or disable"
    )]
    TlsRefused { ssl_mode: SslMode },
    #[error("TLS configuration: {detail}")]
    TlsConfig { detail: String },
    #[error("TLS handshake with {host} failed: {source}; check sslMode and the CA certificate")]
    TlsHandshake {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("authentication of user {user:?} failed: {server}; check the credentials Secret")]
    AuthFailed {
        user: String,
        #[source]
        server: Box<PgError>,
    },
    #[error(
        "the server refused the replication connection of user {user:?}: {server}; allow it with a `host replication` line in pg_hba.conf"
    )]
    NotAllowedByHba {
        user: String,
        #[source]
        server: Box<PgError>,
    },
    #[error(
        "the server asks for a password and none is configured; set it in the credentials Secret"
    )]
    PasswordRequired,
    #[error(
        "the server asks for authentication method {method}, which Siphon does not support; use scram-sha-256 or md5 for this role in pg_hba.conf"
    )]
    UnsupportedAuth { method: String },
    #[error("SCRAM authentication failed: {source}; check the credentials Secret")]
    Scram {
        #[source]
        source: io::Error,
    },
    #[error(
        "user {user:?} may not replicate: {server}; grant REPLICATION to the role (ALTER ROLE … REPLICATION)"
    )]
    NoReplicationPrivilege {
        user: String,
        #[source]
        server: Box<PgError>,
    },
    #[error(
        "{server}; the slot does not exist; recreate the capture or let the operator provision it"
    )]
    SlotMissing {
        #[source]
        server: Box<PgError>,
    },
    #[error(
        "{server}; the publication does not exist; recreate the capture or let the operator provision it"
    )]
    PublicationMissing {
        #[source]
        server: Box<PgError>,
    },
    #[error("{server}; another process is streaming from this slot")]
    SlotActive {
        #[source]
        server: Box<PgError>,
    },
    #[error("{server}; the slot was invalidated (wal_status = lost); a new snapshot is needed")]
    SlotInvalidated {
        #[source]
        server: Box<PgError>,
    },
    #[error("{server}; set wal_level = logical and restart PostgreSQL")]
    WalLevelNotLogical {
        #[source]
        server: Box<PgError>,
    },
    #[error("PostgreSQL is shutting down or starting up: {server}")]
    ServerUnavailable {
        #[source]
        server: Box<PgError>,
    },
    #[error("PostgreSQL error: {server}")]
    Server {
        #[source]
        server: Box<PgError>,
    },
    #[error("PostgreSQL protocol error: {0}")]
    Protocol(String),
}

impl From<TlsError> for ReplicationError {
    fn from(e: TlsError) -> Self {
        ReplicationError::TlsConfig { detail: e.0 }
    }
}

impl ReplicationError {
    /// A failure that a reconnect (with backoff) may cure.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Connect { .. }
            | ReplicationError::Io { .. }
            | ReplicationError::Closed
            | ReplicationError::Timeout { .. }
            | ReplicationError::StreamEnded
            | ReplicationError::ServerUnavailable { .. } => true,
            ReplicationError::Server { server } => {
                siphon_postgres::sqlstate::is_transient(&server.code)
            }
            _ => false,
        }
    }

    /// A low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReplicationError::Connect { .. } => "connect",
            ReplicationError::Io { .. } | ReplicationError::Closed => "io",
            ReplicationError::Timeout { .. } => "timeout",
            ReplicationError::StreamEnded => "stream_ended",
            ReplicationError::TlsRefused { .. }
            | ReplicationError::TlsConfig { .. }
            | ReplicationError::TlsHandshake { .. } => "tls",
            ReplicationError::AuthFailed { .. }
            | ReplicationError::NotAllowedByHba { .. }
            | ReplicationError::PasswordRequired
            | ReplicationError::UnsupportedAuth { .. }
            | ReplicationError::Scram { .. } => "auth",
            ReplicationError::NoReplicationPrivilege { .. } => "privilege",
            ReplicationError::SlotMissing { .. } => "slot_missing",
            ReplicationError::PublicationMissing { .. } => "publication_missing",
            ReplicationError::SlotActive { .. } => "slot_active",
            ReplicationError::SlotInvalidated { .. } => "slot_invalidated",
            ReplicationError::WalLevelNotLogical { .. } => "wal_level",
            ReplicationError::ServerUnavailable { .. } => "server_unavailable",
            ReplicationError::Server { .. } => "server",
            ReplicationError::Protocol(_) => "protocol",
        }
    }

    /// The server's error, when there is one.
    pub fn server_error(&self) -> Option<&PgError> {
        match self {
            ReplicationError::AuthFailed { server, .. }
            | ReplicationError::NotAllowedByHba { server, .. }
            | ReplicationError::NoReplicationPrivilege { server, .. }
            | ReplicationError::SlotMissing { server }
            | ReplicationError::PublicationMissing { server }
            | ReplicationError::SlotActive { server }
            | ReplicationError::SlotInvalidated { server }
            | ReplicationError::WalLevelNotLogical { server }
            | ReplicationError::ServerUnavailable { server }
            | ReplicationError::Server { server } => Some(server.as_ref()),
            _ => None,
        }
    }

    /// Classifies a server error by SQLSTATE (and, where one code covers
    /// several causes, by the message).
    pub fn from_server(server: PgError, user: &str) -> Self {
        let server = Box::new(server);
        let message = server.message.as_str();
        let detail = server.detail.as_deref().unwrap_or_default();
        match server.code.as_str() {
            "28P01" => ReplicationError::AuthFailed {
                user: user.to_owned(),
                server,
            },
            "28000" if message.contains("pg_hba.conf") => ReplicationError::NotAllowedByHba {
                user: user.to_owned(),
                server,
            },
            "28000" => ReplicationError::AuthFailed {
                user: user.to_owned(),
                server,
            },
            "42501" => ReplicationError::NoReplicationPrivilege {
                user: user.to_owned(),
                server,
            },
            "42704" if message.contains("replication slot") => {
                ReplicationError::SlotMissing { server }
            }
            "42704" if message.contains("publication") => {
                ReplicationError::PublicationMissing { server }
            }
            "55006" => ReplicationError::SlotActive { server },
            "55000" if message.contains("wal_level") => {
                ReplicationError::WalLevelNotLogical { server }
            }
            "55000"
                if message.contains("can no longer get changes")
                    || message.contains("cannot read from logical replication slot")
                    || detail.contains("has been invalidated") =>
            {
                ReplicationError::SlotInvalidated { server }
            }
            "58P01" if message.contains("has already been removed") => {
                ReplicationError::SlotInvalidated { server }
            }
            "57P01" | "57P02" | "57P03" => ReplicationError::ServerUnavailable { server },
            _ => ReplicationError::Server { server },
        }
    }
}

fn io_error(source: io::Error) -> ReplicationError {
    match source.kind() {
        io::ErrorKind::UnexpectedEof => ReplicationError::Closed,
        _ => ReplicationError::Io { source },
    }
}

/// pgoutput options; see [`choose_protocol`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtoOptions {
    pub proto_version: u32,
    /// Stream large in-progress transactions (`streaming 'on'`).
    pub streaming: bool,
    /// Send logical decoding messages (`messages 'true'`).
    pub messages: bool,
}

/// The pgoutput protocol for a server (`server_version_num`): version 1
/// before PostgreSQL 14; from 14 on version 2 with `streaming 'on'` and
/// `messages 'true'`. Siphon applies transactions serially, so it needs
/// neither two-phase (version 3) nor parallel streaming (version 4), and it
/// keeps values in text form (`binary` off).
pub fn choose_protocol(server_version_num: i32) -> ProtoOptions {
    if server_version_num >= 140_000 {
        ProtoOptions {
            proto_version: 2,
            streaming: true,
            messages: true,
        }
    } else {
        ProtoOptions {
            proto_version: 1,
            streaming: false,
            messages: false,
        }
    }
}

/// The options of `START_REPLICATION … LOGICAL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationOptions {
    pub proto: ProtoOptions,
    pub publication_names: Vec<String>,
}

impl ReplicationOptions {
    /// The `START_REPLICATION` command for `slot` from `start_lsn`.
    pub fn command(&self, slot: &str, start_lsn: Lsn) -> String {
        let publications = self
            .publication_names
            .iter()
            .map(|p| quote_ident(p))
            .collect::<Vec<_>>()
            .join(",");
        let mut options = vec![
            format!("\"proto_version\" '{}'", self.proto.proto_version),
            format!("\"publication_names\" {}", quote_literal(&publications)),
        ];
        if self.proto.streaming {
            options.push("\"streaming\" 'on'".to_owned());
        }
        if self.proto.messages {
            options.push("\"messages\" 'true'".to_owned());
        }
        format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({})",
            quote_ident(slot),
            start_lsn,
            options.join(", ")
        )
    }
}

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifySystem {
    pub system_id: String,
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlog_pos: Lsn,
    /// The database of the connection.
    pub database: Option<String>,
}

/// One message of the replication stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationMessage {
    XLogData {
        /// LSN of the data (for a pgoutput change, the change's LSN).
        wal_start: Lsn,
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock, microseconds since the Unix epoch.
        server_time_us: i64,
        /// The pgoutput message (a slice of the read buffer).
        data: Bytes,
    },
    PrimaryKeepalive {
        wal_end: Lsn,
        server_time_us: i64,
        /// The server wants a standby status update now (else it times out
        /// the connection after `wal_sender_timeout`).
        reply_requested: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    CopyBoth,
}

/// One replication connection. See the module documentation.
pub struct ReplicationConnection {
    stream: Stream,
    read: BytesMut,
    write: BytesMut,
    state: State,
    user: String,
    tls: bool,
    backend_pid: i32,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("user", &self.user)
            .field("tls", &self.tls)
            .field("backend_pid", &self.backend_pid)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    /// Connects, negotiates TLS per `sslmode` and authenticates.
    pub async fn connect(params: &ConnectParams) -> Result<Self, ReplicationError> {
        tracing::debug!(
            host = %params.host,
            port = params.port,
            user = %params.user,
            database = %params.database,
            ssl_mode = %params.ssl_mode,
            "connecting for replication"
        );
        let conn = tokio::time::timeout(params.connect_timeout, Self::connect_inner(params))
            .await
            .map_err(|_| ReplicationError::Timeout {
                what: "connecting to PostgreSQL",
                after: params.connect_timeout,
            })??;
        tracing::info!(
            host = %params.host,
            port = params.port,
            database = %params.database,
            tls = conn.tls,
            backend_pid = conn.backend_pid,
            "replication connection established"
        );
        Ok(conn)
    }

    async fn connect_inner(params: &ConnectParams) -> Result<Self, ReplicationError> {
        let addr = format!("{}:{}", params.host, params.port);
        let mut tcp = TcpStream::connect((params.host.as_str(), params.port))
            .await
            .map_err(|source| ReplicationError::Connect {
                addr: addr.clone(),
                source,
            })?;
        tcp.set_nodelay(true).map_err(io_error)?;

        let mut tls = false;
        if params.ssl_mode.sends_ssl_request() {
            let mut buf = BytesMut::with_capacity(8);
            frontend::ssl_request(&mut buf);
            tcp.write_all(&buf).await.map_err(io_error)?;
            // Exactly one byte: anything after it must come through TLS.
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await.map_err(io_error)?;
            tls = on_ssl_response(params.ssl_mode, answer[0])?;
        }
        let stream = if tls {
            let config = tls_config(params.ssl_mode, params.ssl_root_cert.as_deref())?;
            let name = server_name(&params.host, params.ssl_mode)?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls_stream = connector.connect(name, tcp).await.map_err(|source| {
                let is_tls = source
                    .get_ref()
                    .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
                if is_tls {
                    ReplicationError::TlsHandshake {
                        host: params.host.clone(),
                        source,
                    }
                } else {
                    io_error(source)
                }
            })?;
            Stream::Tls(Box::new(tls_stream))
        } else {
            Stream::Plain(tcp)
        };

        let mut conn = ReplicationConnection {
            stream,
            read: BytesMut::with_capacity(READ_BUFFER),
            write: BytesMut::with_capacity(1024),
            state: State::Idle,
            user: params.user.clone(),
            tls,
            backend_pid: 0,
        };
        conn.startup(params).await?;
        Ok(conn)
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The server process of this connection (`pg_stat_replication.pid`).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    async fn startup(&mut self, params: &ConnectParams) -> Result<(), ReplicationError> {
        let mut parameters = vec![
            ("user", params.user.as_str()),
            ("database", params.database.as_str()),
            ("replication", "database"),
            ("application_name", APPLICATION_NAME),
        ];
        parameters.extend(siphon_postgres::session::SETTINGS);
        frontend::startup_message(parameters, &mut self.write).map_err(protocol_io)?;
        self.flush().await?;

        let password = params.password.as_deref().map(str::as_bytes);
        let mut scram: Option<ScramSha256> = None;
        // Whether SCRAM, once begun, verified the server's signature: a
        // server that skips it has not proven it knows the password.
        let mut scram_verified = false;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'R' => {
                    let code = be_i32(&body, 0)?;
                    let data = body.get(4..).unwrap_or_default();
                    match code {
                        0 if scram.is_some() && !scram_verified => {
                            return Err(ReplicationError::Protocol(
                                "server accepted the login before completing SCRAM".into(),
                            ));
                        }
                        0 => {}
                        3 => {
                            let password = password.ok_or(ReplicationError::PasswordRequired)?;
                            frontend::password_message(password, &mut self.write)
                                .map_err(protocol_io)?;
                            self.flush().await?;
                        }
                        5 => {
                            let password = password.ok_or(ReplicationError::PasswordRequired)?;
                            let salt: [u8; 4] = data
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| {
                                    ReplicationError::Protocol("short md5 salt".into())
                                })?;
                            let hash = md5_hash(params.user.as_bytes(), password, salt);
                            frontend::password_message(hash.as_bytes(), &mut self.write)
                                .map_err(protocol_io)?;
                            self.flush().await?;
                        }
                        10 => {
                            let password = password.ok_or(ReplicationError::PasswordRequired)?;
                            let offers_scram = data
                                .split(|&b| b == 0)
                                .any(|mechanism| mechanism == SCRAM_SHA_256.as_bytes());
                            if !offers_scram {
                                let offered = String::from_utf8_lossy(data).replace('\0', " ");
                                return Err(ReplicationError::UnsupportedAuth {
                                    method: format!("SASL ({})", offered.trim()),
                                });
                            }
                            // Channel binding (SCRAM-SHA-256-PLUS) is not used: 'n'.
                            let state = ScramSha256::new(password, ChannelBinding::unsupported());
                            frontend::sasl_initial_response(
                                SCRAM_SHA_256,
                                state.message(),
                                &mut self.write,
                            )
                            .map_err(protocol_io)?;
                            scram = Some(state);
                            self.flush().await?;
                        }
                        11 => {
                            let state = scram.as_mut().ok_or_else(|| {
                                ReplicationError::Protocol("SASL continue without SASL".into())
                            })?;
                            state
                                .update(data)
                                .map_err(|source| ReplicationError::Scram { source })?;
                            frontend::sasl_response(state.message(), &mut self.write)
                                .map_err(protocol_io)?;
                            self.flush().await?;
                        }
                        12 => {
                            let state = scram.as_mut().ok_or_else(|| {
                                ReplicationError::Protocol("SASL final without SASL".into())
                            })?;
                            state
                                .finish(data)
                                .map_err(|source| ReplicationError::Scram { source })?;
                            scram_verified = true;
                        }
                        2 => return Err(unsupported("Kerberos V5")),
                        6 => return Err(unsupported("SCM credentials")),
                        7 | 8 => return Err(unsupported("GSSAPI")),
                        9 => return Err(unsupported("SSPI")),
                        other => return Err(unsupported(&format!("code {other}"))),
                    }
                }
                b'K' => self.backend_pid = be_i32(&body, 0)?,
                b'Z' => return Ok(()),
                b'E' => {
                    return Err(ReplicationError::from_server(
                        PgError::parse(&body),
                        &self.user,
                    ));
                }
                b'S' | b'N' | b'v' => self.ignore(tag, &body),
                other => return Err(unexpected(other, "during startup")),
            }
        }
    }

    /// Runs a replication command or query in the simple protocol; returns
    /// the rows of its result (text values, `None` for NULL).
    pub async fn simple_query(
        &mut self,
        query: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        if self.state != State::Idle {
            return Err(ReplicationError::Protocol(
                "simple_query during replication".into(),
            ));
        }
        frontend::query(query, &mut self.write).map_err(protocol_io)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'D' => rows.push(data_row(&body)?),
                b'T' | b'C' | b'I' => {}
                b'E' => error = Some(PgError::parse(&body)),
                b'Z' => break,
                b'S' | b'N' => self.ignore(tag, &body),
                b'W' | b'H' | b'G' => {
                    return Err(ReplicationError::Protocol(
                        "simple_query started a COPY; use start_replication".into(),
                    ));
                }
                other => return Err(unexpected(other, "in a query result")),
            }
        }
        match error {
            Some(server) => Err(ReplicationError::from_server(server, &self.user)),
            None => Ok(rows),
        }
    }

    /// `IDENTIFY_SYSTEM`: the cluster, its timeline and current WAL end.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let bad = || ReplicationError::Protocol("unexpected IDENTIFY_SYSTEM result".into());
        let row = rows.first().ok_or_else(bad)?;
        let field = |i: usize| row.get(i).and_then(|v| v.as_deref());
        Ok(IdentifySystem {
            system_id: field(0).ok_or_else(bad)?.to_owned(),
            timeline: field(1).and_then(|v| v.parse().ok()).ok_or_else(bad)?,
            xlog_pos: field(2).and_then(|v| v.parse().ok()).ok_or_else(bad)?,
            database: field(3).map(str::to_owned),
        })
    }

    /// `SHOW server_version_num`.
    pub async fn server_version_num(&mut self) -> Result<i32, ReplicationError> {
        let rows = self.simple_query("SHOW server_version_num").await?;
        rows.first()
            .and_then(|row| row.first())
            .and_then(|value| value.as_deref())
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| {
                ReplicationError::Protocol("SHOW server_version_num returned no number".into())
            })
    }

    /// Enters CopyBoth mode streaming `slot` from `start_lsn` (0/0: from the
    /// slot's confirmed position).
    pub async fn start_replication(
        &mut self,
        slot: &str,
        start_lsn: Lsn,
        options: &ReplicationOptions,
    ) -> Result<(), ReplicationError> {
        if self.state != State::Idle {
            return Err(ReplicationError::Protocol(
                "replication already started".into(),
            ));
        }
        let command = options.command(slot, start_lsn);
        frontend::query(&command, &mut self.write).map_err(protocol_io)?;
        self.flush().await?;
        let mut error = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'W' if error.is_none() => {
                    self.state = State::CopyBoth;
                    tracing::info!(
                        slot,
                        lsn = %start_lsn,
                        proto_version = options.proto.proto_version,
                        streaming = options.proto.streaming,
                        "replication started"
                    );
                    return Ok(());
                }
                b'E' => error = Some(PgError::parse(&body)),
                b'Z' => break,
                b'S' | b'N' | b'T' | b'D' | b'C' => self.ignore(tag, &body),
                other => return Err(unexpected(other, "starting replication")),
            }
        }
        Err(match error {
            Some(server) => ReplicationError::from_server(server, &self.user),
            None => ReplicationError::Protocol("START_REPLICATION ended without streaming".into()),
        })
    }

    /// The next XLogData or keepalive. Cancel-safe.
    pub async fn next_message(&mut self) -> Result<ReplicationMessage, ReplicationError> {
        if self.state != State::CopyBoth {
            return Err(ReplicationError::Protocol(
                "next_message before start_replication".into(),
            ));
        }
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'd' => return parse_copy_data(body),
                b'E' => {
                    self.state = State::Idle;
                    return Err(ReplicationError::from_server(
                        PgError::parse(&body),
                        &self.user,
                    ));
                }
                // A walsender that shuts down ends with CopyDone, or (caught
                // up, in WalSndDone) with CommandComplete straight away.
                b'c' | b'C' => {
                    self.state = State::Idle;
                    return Err(ReplicationError::StreamEnded);
                }
                b'S' | b'N' => self.ignore(tag, &body),
                other => return Err(unexpected(other, "in the replication stream")),
            }
        }
    }

    /// Sends a standby status update: WAL up to `write` received, up to
    /// `flush` durable downstream (the slot may advance to it), up to `apply`
    /// applied.
    pub async fn send_standby_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        if self.state != State::CopyBoth {
            return Err(ReplicationError::Protocol(
                "standby status outside replication".into(),
            ));
        }
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        self.write.put_u8(b'd');
        self.write.put_i32(4 + 1 + 8 * 4 + 1);
        self.write.put_u8(b'r');
        self.write.put_u64(write.0);
        self.write.put_u64(flush.0);
        self.write.put_u64(apply.0);
        self.write.put_i64(unix_to_pg_us(now_us));
        self.write.put_u8(u8::from(reply_requested));
        self.flush().await
    }

    /// Ends the stream (CopyDone, then waits for the server's
    /// CommandComplete and ReadyForQuery) and closes the connection.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        let result = tokio::time::timeout(CLOSE_TIMEOUT, self.close_inner())
            .await
            .unwrap_or(Err(ReplicationError::Timeout {
                what: "closing the replication stream",
                after: CLOSE_TIMEOUT,
            }));
        // Shut the socket down whatever happened.
        let _ = self.stream.shutdown().await;
        result
    }

    async fn close_inner(&mut self) -> Result<(), ReplicationError> {
        if self.state == State::CopyBoth {
            frontend::copy_done(&mut self.write);
            self.flush().await?;
            let mut error = None;
            loop {
                let (tag, body) = self.read_frame().await?;
                match tag {
                    // Data sent before the server saw CopyDone is dropped:
                    // nothing after the confirmed position is lost by this.
                    b'd' | b'c' | b'C' | b'S' | b'N' => {}
                    b'E' => error = Some(PgError::parse(&body)),
                    b'Z' => break,
                    other => return Err(unexpected(other, "closing the replication stream")),
                }
            }
            self.state = State::Idle;
            if let Some(server) = error {
                return Err(ReplicationError::from_server(server, &self.user));
            }
        }
        frontend::terminate(&mut self.write);
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), ReplicationError> {
        self.stream.write_all(&self.write).await.map_err(io_error)?;
        self.write.clear();
        self.stream.flush().await.map_err(io_error)
    }

    /// The next backend message: its tag and body (a zero-copy slice).
    async fn read_frame(&mut self) -> Result<(u8, Bytes), ReplicationError> {
        loop {
            if let Some(frame) = self.split_frame()? {
                return Ok(frame);
            }
            if self.read.capacity() - self.read.len() < READ_BUFFER / 8 {
                self.read.reserve(READ_BUFFER);
            }
            let n = self
                .stream
                .read_buf(&mut self.read)
                .await
                .map_err(io_error)?;
            if n == 0 {
                return Err(ReplicationError::Closed);
            }
        }
    }

    fn split_frame(&mut self) -> Result<Option<(u8, Bytes)>, ReplicationError> {
        let Some(header) = self.read.get(..5) else {
            return Ok(None);
        };
        let tag = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(ReplicationError::Protocol(format!(
                "invalid length {len} of a message {}",
                tag_name(tag)
            )));
        }
        let total = len + 1;
        if self.read.len() < total {
            self.read.reserve(total - self.read.len());
            return Ok(None);
        }
        let mut frame = self.read.split_to(total).freeze();
        let body = frame.split_off(5);
        Ok(Some((tag, body)))
    }

    fn ignore(&self, tag: u8, body: &[u8]) {
        if tag == b'N' {
            let notice = PgError::parse(body);
            tracing::info!(
                severity = %notice.severity,
                code = %notice.code,
                message = %notice.message,
                "postgresql notice"
            );
        }
    }
}

fn protocol_io(e: io::Error) -> ReplicationError {
    ReplicationError::Protocol(e.to_string())
}

fn unsupported(method: &str) -> ReplicationError {
    ReplicationError::UnsupportedAuth {
        method: method.to_owned(),
    }
}

fn tag_name(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("{tag:#04x}")
    }
}

fn unexpected(tag: u8, when: &str) -> ReplicationError {
    ReplicationError::Protocol(format!("unexpected message {} {when}", tag_name(tag)))
}

fn be_i32(body: &[u8], at: usize) -> Result<i32, ReplicationError> {
    body.get(at..)
        .and_then(|rest| rest.get(..4))
        .and_then(|b| b.try_into().ok())
        .map(i32::from_be_bytes)
        .ok_or_else(|| ReplicationError::Protocol("message too short".into()))
}

fn be_u64(body: &[u8], at: usize) -> Result<u64, ReplicationError> {
    body.get(at..)
        .and_then(|rest| rest.get(..8))
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| ReplicationError::Protocol("CopyData message too short".into()))
}

/// Parses a CopyData payload of the replication stream.
fn parse_copy_data(body: Bytes) -> Result<ReplicationMessage, ReplicationError> {
    match body.first() {
        Some(b'w') => {
            if body.len() < 25 {
                return Err(ReplicationError::Protocol(
                    "XLogData message too short".into(),
                ));
            }
            Ok(ReplicationMessage::XLogData {
                wal_start: Lsn(be_u64(&body, 1)?),
                wal_end: Lsn(be_u64(&body, 9)?),
                server_time_us: pg_to_unix_us(be_u64(&body, 17)? as i64),
                data: body.slice(25..),
            })
        }
        Some(b'k') => Ok(ReplicationMessage::PrimaryKeepalive {
            wal_end: Lsn(be_u64(&body, 1)?),
            server_time_us: pg_to_unix_us(be_u64(&body, 9)? as i64),
            reply_requested: body
                .get(17)
                .map(|&b| b != 0)
                .ok_or_else(|| ReplicationError::Protocol("keepalive message too short".into()))?,
        }),
        Some(&other) => Err(ReplicationError::Protocol(format!(
            "unknown CopyData message {}",
            tag_name(other)
        ))),
        None => Err(ReplicationError::Protocol("empty CopyData message".into())),
    }
}

/// A DataRow body: Int16 count, then per column Int32 length (-1 for NULL)
/// and the bytes.
fn data_row(body: &[u8]) -> Result<Vec<Option<String>>, ReplicationError> {
    let short = || ReplicationError::Protocol("DataRow too short".into());
    let count = body
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(short)?;
    let mut rest = body.get(2..).unwrap_or_default();
    let mut row = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = i32::from_be_bytes(
            rest.get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(short)?,
        );
        rest = rest.get(4..).unwrap_or_default();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        let value = rest.get(..len).ok_or_else(short)?;
        rest = rest.get(len..).unwrap_or_default();
        let value = std::str::from_utf8(value)
            .map_err(|_| ReplicationError::Protocol("DataRow value is not UTF-8".into()))?;
        row.push(Some(value.to_owned()));
    }
    Ok(row)
}

/// Plain TCP or TLS over TCP.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_request_decisions_follow_libpq() {
        assert!(!SslMode::Disable.sends_ssl_request());
        for mode in [
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert!(mode.sends_ssl_request());
            assert!(
                on_ssl_response(mode, b'S').expect("tls"),
                "{mode} uses TLS when offered"
            );
        }
        assert!(!on_ssl_response(SslMode::Prefer, b'N').expect("falls back"));
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            let err = on_ssl_response(mode, b'N').expect_err("refused");
            assert!(matches!(err, ReplicationError::TlsRefused { .. }));
            assert!(!err.is_transient());
            assert!(
                err.to_string().contains("enable ssl on the server"),
                "{err}"
            );
        }
        assert!(matches!(
            on_ssl_response(SslMode::Prefer, b'E'),
            Err(ReplicationError::Protocol(_))
        ));
    }

    #[test]
    fn password_is_not_in_debug_output() {
        let mut params = ConnectParams::new("h", "u", "d");
        params.password = Some("hunter2".into());
        let debug = format!("{params:?}");
        assert!(!debug.contains("hunter2"));
        assert!(debug.contains("redacted"));
    }

    #[test]
    fn protocol_follows_the_server_version() {
        assert_eq!(
            choose_protocol(130_012),
            ProtoOptions {
                proto_version: 1,
                streaming: false,
                messages: false
            }
        );
        for version in [140_000, 150_007, 160_003, 170_000] {
            assert_eq!(
                choose_protocol(version),
                ProtoOptions {
                    proto_version: 2,
                    streaming: true,
                    messages: true
                }
            );
        }
    }

    #[test]
    fn start_replication_command_quotes_names() {
        let options = ReplicationOptions {
            proto: choose_protocol(150_000),
            publication_names: vec!["pub".into(), "we\"ird's".into()],
        };
        assert_eq!(
            options.command("my_slot", Lsn(0x1_0000_00A0)),
            "START_REPLICATION SLOT \"my_slot\" LOGICAL 1/A0 (\"proto_version\" '2', \
             \"publication_names\" '\"pub\",\"we\"\"ird''s\"', \"streaming\" 'on', \"messages\" 'true')"
        );
        let v1 = ReplicationOptions {
            proto: choose_protocol(130_000),
            publication_names: vec!["p".into()],
        };
        assert_eq!(
            v1.command("s", Lsn(0)),
            "START_REPLICATION SLOT \"s\" LOGICAL 0/0 (\"proto_version\" '1', \"publication_names\" '\"p\"')"
        );
    }

    fn server(code: &str, message: &str) -> PgError {
        PgError {
            severity: "FATAL".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    #[test]
    fn server_errors_are_classified_with_their_fix() {
        let cases: [(&str, &str, &str, bool); 12] = [
            (
                "28P01",
                "password authentication failed for user \"u\"",
                "check the credentials Secret",
                false,
            ),
            (
                "28000",
                "role \"u\" does not exist",
                "check the credentials Secret",
                false,
            ),
            (
                "28000",
                "no pg_hba.conf entry for replication connection",
                "pg_hba.conf",
                false,
            ),
            (
                "42501",
                "permission denied to start WAL sender",
                "grant REPLICATION to the role",
                false,
            ),
            (
                "42704",
                "replication slot \"s\" does not exist",
                "recreate the capture or let the operator provision it",
                false,
            ),
            (
                "42704",
                "publication \"p\" does not exist",
                "the publication does not exist",
                false,
            ),
            (
                "55006",
                "replication slot \"s\" is active for PID 42",
                "another process is streaming from this slot",
                false,
            ),
            (
                "55000",
                "can no longer get changes from replication slot \"s\"",
                "a new snapshot is needed",
                false,
            ),
            (
                "55000",
                "logical decoding requires wal_level >= logical",
                "set wal_level = logical",
                false,
            ),
            (
                "57P01",
                "terminating connection due to administrator command",
                "shutting down",
                true,
            ),
            (
                "57P03",
                "the database system is starting up",
                "shutting down",
                true,
            ),
            (
                "53300",
                "sorry, too many clients already",
                "PostgreSQL error",
                true,
            ),
        ];
        for (code, message, fix, transient) in cases {
            let err = ReplicationError::from_server(server(code, message), "u");
            let text = err.to_string();
            assert!(text.contains(fix), "{code}: {text}");
            assert!(text.contains(code), "{code} kept: {text}");
            assert_eq!(err.is_transient(), transient, "{code}: {text}");
            assert_eq!(err.server_error().map(|e| e.code.as_str()), Some(code));
        }
        let mut invalidated = server("55000", "cannot read from logical replication slot \"s\"");
        invalidated.detail = Some(
            "This slot has been invalidated because it exceeded the maximum reserved size.".into(),
        );
        assert!(matches!(
            ReplicationError::from_server(invalidated, "u"),
            ReplicationError::SlotInvalidated { .. }
        ));
        assert!(ReplicationError::Closed.is_transient());
        assert!(
            ReplicationError::Timeout {
                what: "x",
                after: Duration::from_secs(1)
            }
            .is_transient()
        );
        assert!(!ReplicationError::Protocol("x".into()).is_transient());
    }

    #[test]
    fn error_response_fields_are_parsed() {
        let body = b"SERROR\0VERROR\0C42704\0Mreplication slot \"s\" does not exist\0Dsome detail\0Hsome hint\0\0";
        let e = PgError::parse(body);
        assert_eq!(e.severity, "ERROR");
        assert_eq!(e.code, "42704");
        assert_eq!(e.message, "replication slot \"s\" does not exist");
        assert_eq!(e.detail.as_deref(), Some("some detail"));
        assert_eq!(e.hint.as_deref(), Some("some hint"));
        // malformed bodies never panic
        let _ = PgError::parse(b"C4270");
        let _ = PgError::parse(b"");
    }

    #[test]
    fn copy_data_messages() {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(0x10);
        b.put_u64(0x20);
        b.put_i64(0);
        b.put_slice(b"Bpayload");
        let body = b.freeze();
        let message = parse_copy_data(body.clone()).expect("xlogdata");
        let ReplicationMessage::XLogData {
            wal_start,
            wal_end,
            server_time_us,
            data,
        } = message
        else {
            panic!("not xlogdata");
        };
        assert_eq!((wal_start, wal_end), (Lsn(0x10), Lsn(0x20)));
        assert_eq!(server_time_us, super::super::pgoutput::PG_EPOCH_OFFSET_US);
        assert_eq!(&data[..], b"Bpayload");
        assert_eq!(data.as_ptr(), body[25..].as_ptr(), "zero-copy");

        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(0x30);
        k.put_i64(0);
        k.put_u8(1);
        assert_eq!(
            parse_copy_data(k.freeze()).expect("keepalive"),
            ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(0x30),
                server_time_us: super::super::pgoutput::PG_EPOCH_OFFSET_US,
                reply_requested: true
            }
        );
        assert!(parse_copy_data(Bytes::from_static(b"k\0\0")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"w")).is_err());
        assert!(parse_copy_data(Bytes::new()).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"?")).is_err());
    }

    #[test]
    fn data_rows() {
        let mut b = BytesMut::new();
        b.put_u16(3);
        b.put_i32(2);
        b.put_slice(b"ab");
        b.put_i32(-1);
        b.put_i32(0);
        assert_eq!(
            data_row(&b).expect("row"),
            vec![Some("ab".to_owned()), None, Some(String::new())]
        );
        assert!(data_row(&b[..7]).is_err());
    }
}
