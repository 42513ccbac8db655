//! A broken `worker.yaml` is refused on the command line before anything
//! connects: exit code 2 and one line per problem, with its field path.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A configuration valid apart from the variable named by `passwordEnv`.
const GOOD: &str = r#"
name: shop
postgres:
  host: 127.0.0.1
  port: 5432
  database: shop
  user: siphon
  passwordEnv: SIPHON_IT_CONFIG_PASSWORD
tables:
  - name: public.orders
logical:
  slotName: siphon_shop
  publicationName: siphon_shop
kafka:
  bootstrapServers: "127.0.0.1:9092"
  topicPrefix: shop
"#;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir() -> Dir {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path =
        std::env::temp_dir().join(format!("siphon-it-config-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&path).expect("temp dir");
    Dir(path)
}

/// Runs the worker on `yaml` (with `--check` when asked).
fn run(yaml: &str, check: bool, password_set: bool) -> Output {
    let d = dir();
    let path = d.0.join("worker.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_siphon-worker"));
    cmd.arg("--config")
        .arg(&path)
        .env_remove("SIPHON_METRICS_ADDR");
    if check {
        cmd.arg("--check");
    }
    if password_set {
        cmd.env("SIPHON_IT_CONFIG_PASSWORD", "secret");
    } else {
        cmd.env_remove("SIPHON_IT_CONFIG_PASSWORD");
    }
    cmd.output().expect("run siphon-worker")
}

fn refused(yaml: &str) -> String {
    let out = run(yaml, false, true);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "exit code 2 expected: {stderr}");
    stderr
}

#[test]
fn check_accepts_a_good_configuration() {
    let out = run(GOOD, true, true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration is valid"), "{stdout}");
}

#[test]
fn a_missing_bootstrap_server_names_its_field() {
    let stderr = refused(&GOOD.replace("  bootstrapServers: \"127.0.0.1:9092\"\n", ""));
    assert!(
        stderr.contains("kafka.bootstrapServers: required"),
        "{stderr}"
    );
}

#[test]
fn an_unqualified_table_names_its_index() {
    let stderr = refused(&GOOD.replace("public.orders", "orders"));
    assert!(
        stderr.contains("tables[0].name: \"orders\" is not schema-qualified"),
        "{stderr}"
    );
}

#[test]
fn an_unset_environment_variable_is_named() {
    let out = run(GOOD, true, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "postgres.passwordEnv: environment variable SIPHON_IT_CONFIG_PASSWORD is not set"
        ),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("configuration is valid"),
        "--check must not pass"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = GOOD
        .replace("  bootstrapServers: \"127.0.0.1:9092\"\n", "")
        .replace(
            "  - name: public.orders\n",
            "  - name: public.orders\n  - name: nope\n",
        )
        .replace("slotName: siphon_shop", "slotName: Bad-Slot")
        .replace(
            "publicationName: siphon_shop",
            "publicationName: siphon_shop\n  heartbeatInterval: soon",
        );
    let stderr = refused(&yaml);
    for expected in [
        "tables[1].name",
        "logical.slotName",
        "logical.heartbeatInterval",
        "kafka.bootstrapServers: required",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected} missing from: {stderr}"
        );
    }
}

#[test]
fn a_misspelt_field_and_bad_yaml_are_refused() {
    let stderr = refused(&GOOD.replace("kafka:", "kafak:"));
    assert!(stderr.contains("unknown field `kafak`"), "{stderr}");
    let stderr = refused("name: [unclosed\n");
    assert!(stderr.contains("is not valid worker YAML"), "{stderr}");
}

#[test]
fn a_missing_file_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_siphon-worker"))
        .args(["--config", "/nonexistent/siphon/worker.yaml"])
        .output()
        .expect("run siphon-worker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read /nonexistent/siphon/worker.yaml"),
        "{stderr}"
    );
}
