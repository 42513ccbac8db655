//! TLS to a real PostgreSQL with `ssl = on`, with libpq's `sslmode` meaning,
//! on the worker's replication connection and on the operator's connection:
//! verify-full accepts the right host and refuses another name for the same
//! server; verify-ca accepts that name (it checks the chain only); a wrong CA
//! is refused; disable is plain text.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::path::{Path, PathBuf};
use std::process::Command;

use siphon_crds::capture::SslMode;
use siphon_e2e::{stack_shell, stack_var};
use siphon_operator::database::connect as operator_connect;
use siphon_postgres::SqlParams;
use siphon_worker::replication::{ConnectParams, ReplicationConnection, SslMode as ReplSslMode};

const PORT: u16 = 15435;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for IP 127.0.0.1 only, and a second unrelated CA.
fn make_certs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=siphon-test-server",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    );
}

struct TlsServer {
    state: String,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = stack_shell(&format!(
            "source e2e/stack/postgres.sh; pg_down {} tls",
            self.state
        ));
    }
}

fn start_tls_server() -> (TlsServer, PathBuf) {
    let state = stack_var("SIPHON_STACK_DIR");
    let dir = PathBuf::from(&state).join("tls-certs");
    make_certs(&dir);
    // PostgreSQL insists that its key belongs to it and is private.
    let out = stack_shell(&format!(
        "u=$(stat -c %U {state}/pg-main); chown -R \"$u\" {d}; chmod 600 {d}/server.key; \
         source e2e/stack/postgres.sh; pg_up {state} {PORT} tls \"ssl = on\" \"ssl_cert_file = '{d}/server.crt'\" \"ssl_key_file = '{d}/server.key'\"",
        d = dir.display()
    ));
    assert!(
        out.status.success(),
        "pg_up tls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (TlsServer { state }, dir)
}

fn repl_params(host: &str, mode: ReplSslMode, ca: Option<PathBuf>) -> ConnectParams {
    let mut p = ConnectParams::new(host, stack_var("PGUSER"), "postgres");
    p.port = PORT;
    p.password = Some(stack_var("PGPASSWORD"));
    p.ssl_mode = mode;
    p.ssl_root_cert = ca;
    p
}

fn operator_params(host: &str, mode: SslMode, ca: Option<PathBuf>) -> SqlParams {
    SqlParams {
        host: host.into(),
        port: PORT,
        database: "postgres".into(),
        user: stack_var("PGUSER"),
        password: Some(stack_var("PGPASSWORD")),
        ssl_mode: mode.into(),
        ssl_root_cert: ca,
        application_name: "siphon-operator",
        connect_timeout: std::time::Duration::from_secs(10),
    }
}

#[tokio::test]
async fn sslmode_semantics_against_a_real_server() {
    let (_server, dir) = start_tls_server();
    let ca = Some(dir.join("ca.crt"));
    let other = Some(dir.join("other-ca.crt"));

    // Replication connection (worker).
    let conn = ReplicationConnection::connect(&repl_params(
        "127.0.0.1",
        ReplSslMode::VerifyFull,
        ca.clone(),
    ))
    .await
    .expect("verify-full with the right CA");
    assert!(conn.is_tls());
    let err = ReplicationConnection::connect(&repl_params(
        "localhost",
        ReplSslMode::VerifyFull,
        ca.clone(),
    ))
    .await
    .expect_err("verify-full must refuse a name the certificate lacks");
    assert!(!err.to_string().is_empty());
    let conn = ReplicationConnection::connect(&repl_params(
        "localhost",
        ReplSslMode::VerifyCa,
        ca.clone(),
    ))
    .await
    .expect("verify-ca checks the chain only");
    assert!(conn.is_tls());
    assert!(
        ReplicationConnection::connect(&repl_params(
            "127.0.0.1",
            ReplSslMode::VerifyCa,
            other.clone()
        ))
        .await
        .is_err(),
        "a wrong CA is refused"
    );
    let conn =
        ReplicationConnection::connect(&repl_params("127.0.0.1", ReplSslMode::Require, None))
            .await
            .expect("require: TLS without verification");
    assert!(conn.is_tls());
    let conn =
        ReplicationConnection::connect(&repl_params("127.0.0.1", ReplSslMode::Disable, None))
            .await
            .expect("disable: plain");
    assert!(!conn.is_tls());

    // The operator's SQL connection.
    let client = operator_connect(&operator_params(
        "127.0.0.1",
        SslMode::VerifyFull,
        ca.clone(),
    ))
    .await
    .expect("operator verify-full");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the session is encrypted");
    assert!(
        operator_connect(&operator_params(
            "localhost",
            SslMode::VerifyFull,
            ca.clone()
        ))
        .await
        .is_err()
    );
    assert!(
        operator_connect(&operator_params("127.0.0.1", SslMode::VerifyCa, other))
            .await
            .is_err()
    );
    let client = operator_connect(&operator_params("127.0.0.1", SslMode::Prefer, None))
        .await
        .expect("prefer");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "prefer uses TLS when the server offers it");
}
