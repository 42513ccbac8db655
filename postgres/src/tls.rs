//! TLS as libpq's `sslmode` means it, for both kinds of connection Siphon
//! opens (the replication protocol the worker speaks itself, and the SQL
//! sessions of tokio-postgres).
//!
//! Invariants:
//! - `prefer` and `require` accept any certificate but still verify the
//!   handshake signatures: the peer holds the key of what it shows.
//! - `verify-ca` checks the chain against the CA file, not the host name;
//!   `verify-full` checks both. Both refuse to start without a CA file.
//! - Every configuration offers ALPN `postgresql` (PostgreSQL 17 checks it).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// A TLS setting that cannot work (a missing or unreadable CA file, a host
/// that is no TLS name); the text names the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// libpq's `sslmode`, without `allow`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it (no verification), else plain.
    #[default]
    Prefer,
    /// TLS, no certificate verification (handshake signatures still checked).
    Require,
    /// TLS, the certificate chain verified against the CA; not the host name.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "invalid sslmode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// The CRD's `spec.postgres.sslMode` (the same five words).
impl From<siphon_crds::capture::SslMode> for SslMode {
    fn from(mode: siphon_crds::capture::SslMode) -> Self {
        use siphon_crds::capture::SslMode as Spec;
        match mode {
            Spec::Disable => SslMode::Disable,
            Spec::Prefer => SslMode::Prefer,
            Spec::Require => SslMode::Require,
            Spec::VerifyCa => SslMode::VerifyCa,
            Spec::VerifyFull => SslMode::VerifyFull,
        }
    }
}

/// How the server certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Any certificate (handshake signatures still checked).
    None,
    /// The chain against the CA, any host name.
    Chain,
    /// The chain and the host name.
    ChainAndHostname,
}

impl SslMode {
    /// Whether the connection starts with an SSLRequest.
    pub fn sends_ssl_request(self) -> bool {
        self != SslMode::Disable
    }

    /// The certificate checks of this mode.
    pub fn verification(self) -> Verification {
        match self {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => Verification::None,
            SslMode::VerifyCa => Verification::Chain,
            SslMode::VerifyFull => Verification::ChainAndHostname,
        }
    }
}

/// The TLS client configuration of an `sslmode`.
pub fn tls_config(
    ssl_mode: SslMode,
    root_cert: Option<&std::path::Path>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let mut config = match ssl_mode.verification() {
        Verification::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
            .with_no_client_auth(),
        verification => {
            let path = root_cert.ok_or_else(|| {
                TlsError(format!(
                    "sslMode {ssl_mode} needs the CA certificate; set the root certificate file"
                ))
            })?;
            let roots = Arc::new(load_roots(path)?);
            if verification == Verification::ChainAndHostname {
                builder.with_root_certificates(roots).with_no_client_auth()
            } else {
                let inner =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(|e| TlsError(e.to_string()))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly { inner }))
                    .with_no_client_auth()
            }
        }
    };
    // PostgreSQL 17 checks the ALPN protocol when a client sends one.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

fn load_roots(path: &std::path::Path) -> Result<RootCertStore, TlsError> {
    let config_error = TlsError;
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
        config_error(format!(
            "cannot read CA certificate file {}: {e}",
            path.display()
        ))
    })?;
    for cert in certs {
        let cert = cert.map_err(|e| {
            config_error(format!(
                "invalid CA certificate file {}: {e}",
                path.display()
            ))
        })?;
        roots.add(cert).map_err(|e| {
            config_error(format!("invalid CA certificate in {}: {e}", path.display()))
        })?;
    }
    if roots.is_empty() {
        return Err(config_error(format!(
            "no certificate in CA file {}",
            path.display()
        )));
    }
    Ok(roots)
}

/// The TLS server name: the host for `verify-full`; any valid name will do
/// for the other modes (used for SNI only).
pub fn server_name(host: &str, ssl_mode: SslMode) -> Result<ServerName<'static>, TlsError> {
    match ServerName::try_from(host.to_owned()) {
        Ok(name) => Ok(name),
        Err(_) if ssl_mode != SslMode::VerifyFull => {
            Ok(ServerName::from(std::net::Ipv4Addr::LOCALHOST))
        }
        Err(e) => Err(TlsError(format!(
            "host {host:?} is not a valid TLS server name: {e}"
        ))),
    }
}

/// `require`/`prefer`: any certificate, but the handshake signatures are
/// still verified (the peer holds the key of the certificate it shows).
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA; the name is not checked.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name: a name error means the
        // chain is good.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_modes_parse_and_print() {
        for text in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let mode: SslMode = text.parse().expect("parses");
            assert_eq!(mode.to_string(), text);
        }
        assert!("allow".parse::<SslMode>().is_err());
        assert_eq!(SslMode::default(), SslMode::Prefer);
    }

    #[test]
    fn verification_per_mode() {
        assert!(!SslMode::Disable.sends_ssl_request());
        assert!(SslMode::Prefer.sends_ssl_request());
        assert_eq!(SslMode::Prefer.verification(), Verification::None);
        assert_eq!(SslMode::Require.verification(), Verification::None);
        assert_eq!(SslMode::VerifyCa.verification(), Verification::Chain);
        assert_eq!(
            SslMode::VerifyFull.verification(),
            Verification::ChainAndHostname
        );
    }

    #[test]
    fn verify_modes_need_a_ca_file() {
        assert!(tls_config(SslMode::Require, None).is_ok());
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let err = tls_config(mode, None).expect_err("needs a CA");
            assert!(err.to_string().contains("CA certificate"), "{err}");
        }
        let err = tls_config(
            SslMode::VerifyFull,
            Some(std::path::Path::new("/nonexistent/ca.pem")),
        )
        .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn server_name_is_strict_only_for_verify_full() {
        assert!(server_name("db.example.com", SslMode::VerifyFull).is_ok());
        assert!(server_name("127.0.0.1", SslMode::VerifyFull).is_ok());
        assert!(server_name("bad name", SslMode::VerifyFull).is_err());
        assert!(server_name("bad name", SslMode::Require).is_ok());
    }
}
