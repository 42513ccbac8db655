//! `sslmode` semantics of the replication connection against an in-process
//! server that speaks just enough of the protocol (SSLRequest, TLS, startup,
//! AuthenticationOk, ReadyForQuery), with certificates made by the `openssl`
//! command line tool. No stack needed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use siphon_worker::replication::{ConnectParams, ReplicationConnection, ReplicationError, SslMode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const SSL_REQUEST_CODE: u32 = 80_877_103;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line tool is needed by this test (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for `localhost` signed by it, and an
/// unrelated CA.
fn certificates() -> TempDir {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("siphon-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dir = TempDir(dir);
    for ca in ["ca", "other-ca"] {
        openssl(
            &dir.0,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=siphon test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }
    openssl(
        &dir.0,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.0.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions");
    openssl(
        &dir.0,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    dir
}

/// Starts a fake server on 127.0.0.1; `tls` decides its SSLRequest answer.
async fn fake_server(certs: &Path, tls: bool) -> u16 {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.join("server.pem"))
            .expect("server.pem")
            .collect::<Result<_, _>>()
            .expect("certificate");
    let key = PrivateKeyDer::from_pem_file(certs.join("server.key")).expect("server.key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Some((code, _)) = read_startup_packet(&mut tcp).await else {
                    return;
                };
                if code != SSL_REQUEST_CODE {
                    serve(&mut tcp, true).await;
                    return;
                }
                if !tls {
                    let _ = tcp.write_all(b"N").await;
                    serve(&mut tcp, false).await;
                    return;
                }
                if tcp.write_all(b"S").await.is_err() {
                    return;
                }
                // a client refusing the certificate ends the handshake here
                if let Ok(mut stream) = acceptor.accept(tcp).await {
                    serve(&mut stream, false).await;
                }
            });
        }
    });
    port
}

/// A startup-phase packet: Int32 length, Int32 code, the rest.
async fn read_startup_packet(s: &mut (impl AsyncRead + Unpin)) -> Option<(u32, Vec<u8>)> {
    let len = s.read_u32().await.ok()?;
    let code = s.read_u32().await.ok()?;
    let mut rest = vec![0; (len as usize).checked_sub(8)?];
    s.read_exact(&mut rest).await.ok()?;
    Some((code, rest))
}

/// Accepts the startup message without a password, then waits for the end.
async fn serve(s: &mut (impl AsyncRead + AsyncWrite + Unpin), startup_read: bool) {
    if !startup_read && read_startup_packet(s).await.is_none() {
        return;
    }
    // AuthenticationOk, BackendKeyData(pid 4242), ReadyForQuery(idle)
    let mut out = Vec::new();
    out.extend_from_slice(b"R\0\0\0\x08\0\0\0\0");
    out.extend_from_slice(b"K\0\0\0\x0c\0\0\x10\x92\0\0\0\x01");
    out.extend_from_slice(b"Z\0\0\0\x05I");
    if s.write_all(&out).await.is_err() || s.flush().await.is_err() {
        return;
    }
    let mut sink = [0u8; 256];
    while let Ok(n) = s.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

fn params(host: &str, port: u16, mode: SslMode, ca: Option<PathBuf>) -> ConnectParams {
    let mut params = ConnectParams::new(host, "siphon", "db");
    params.port = port;
    params.ssl_mode = mode;
    params.ssl_root_cert = ca;
    params
}

async fn connect(
    host: &str,
    port: u16,
    mode: SslMode,
    ca: Option<PathBuf>,
) -> Result<bool, ReplicationError> {
    let conn = ReplicationConnection::connect(&params(host, port, mode, ca)).await?;
    let tls = conn.is_tls();
    assert_eq!(conn.backend_pid(), 4242);
    conn.close().await?;
    Ok(tls)
}

#[tokio::test]
async fn ssl_modes_against_a_tls_server() {
    let dir = certificates();
    let ca = Some(dir.0.join("ca.pem"));
    let other_ca = Some(dir.0.join("other-ca.pem"));
    let port = fake_server(&dir.0, true).await;

    assert!(
        !connect("127.0.0.1", port, SslMode::Disable, None)
            .await
            .expect("disable")
    );
    assert!(
        connect("127.0.0.1", port, SslMode::Prefer, None)
            .await
            .expect("prefer")
    );
    // require: the certificate is not checked at all
    assert!(
        connect("127.0.0.1", port, SslMode::Require, None)
            .await
            .expect("require")
    );
    // verify-ca: the chain is checked, not the name (127.0.0.1 is not in it)
    assert!(
        connect("127.0.0.1", port, SslMode::VerifyCa, ca.clone())
            .await
            .expect("verify-ca")
    );
    let err = connect("127.0.0.1", port, SslMode::VerifyCa, other_ca.clone())
        .await
        .expect_err("verify-ca with the wrong CA");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(
        matches!(err, ReplicationError::TlsHandshake { .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());
    // verify-full: chain and name
    assert!(
        connect("localhost", port, SslMode::VerifyFull, ca.clone())
            .await
            .expect("verify-full")
    );
    let err = connect("127.0.0.1", port, SslMode::VerifyFull, ca.clone())
        .await
        .expect_err("verify-full with a name not in the certificate");
    assert!(
        matches!(err, ReplicationError::TlsHandshake { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("check sslMode and the CA certificate"),
        "{err}"
    );
    assert!(err.to_string().contains("not valid for name"), "{err}");
    let err = connect("localhost", port, SslMode::VerifyFull, other_ca)
        .await
        .expect_err("verify-full with the wrong CA");
    assert!(
        matches!(err, ReplicationError::TlsHandshake { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn ssl_modes_against_a_server_without_tls() {
    let dir = certificates();
    let port = fake_server(&dir.0, false).await;
    assert!(
        !connect("127.0.0.1", port, SslMode::Prefer, None)
            .await
            .expect("prefer falls back")
    );
    assert!(
        !connect("127.0.0.1", port, SslMode::Disable, None)
            .await
            .expect("disable")
    );
    for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
        let err = connect("127.0.0.1", port, mode, Some(dir.0.join("ca.pem")))
            .await
            .expect_err("TLS required");
        assert!(
            matches!(err, ReplicationError::TlsRefused { .. }),
            "{mode}: {err:?}"
        );
        assert!(
            err.to_string().contains("enable ssl on the server"),
            "{err}"
        );
    }
}
