//! Malformed specs are refused at `kubectl apply`, with messages a person can act on.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::process::Command;

use siphon_e2e::{stack_var, unique};

fn kubectl_apply(manifest: &str) -> (bool, String) {
    let mut child = Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .env("KUBECONFIG", stack_var("KUBECONFIG"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn manifest(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: siphon.dev/v1alpha1\nkind: PostgresCapture\nmetadata: {{ name: {name}, namespace: default }}\nspec:\n{spec}"
    )
}

const GOOD: &str =
    "  postgres: { host: 127.0.0.1, database: shop, credentialsSecretRef: { name: pg } }
  tables: [{ name: public.orders }]
  kafka: { bootstrapServers: \"127.0.0.1:9092\", topicPrefix: shop }
  suspend: true
";

#[test]
fn malformed_specs_are_refused_with_readable_messages() {
    let cases: Vec<(&str, String, &str)> = vec![
        ("no-postgres", GOOD.replace("  postgres: { host: 127.0.0.1, database: shop, credentialsSecretRef: { name: pg } }\n", ""), "spec.postgres: Required value"),
        ("no-tables", GOOD.replace("  tables: [{ name: public.orders }]\n", ""), "spec.tables: Required value"),
        ("empty-tables", GOOD.replace("[{ name: public.orders }]", "[]"), "spec.tables"),
        ("unqualified", GOOD.replace("public.orders", "orders"), "spec.tables[0].name"),
        ("bad-mode", GOOD.replace("  suspend: true", "  mode: Streaming\n  suspend: true"), "spec.mode: Unsupported value"),
        ("polling-no-block", GOOD.replace("  suspend: true", "  mode: Polling\n  suspend: true"), "spec.polling is required"),
        ("bad-port", GOOD.replace("database: shop,", "database: shop, port: 70000,"), "spec.postgres.port"),
        ("bad-sslmode", GOOD.replace("database: shop,", "database: shop, sslMode: maybe,"), "spec.postgres.sslMode: Unsupported value"),
        ("bad-slot", GOOD.replace("  suspend: true", "  logical: { slotName: My-Slot }\n  suspend: true"), "spec.logical.slotName"),
        ("bad-prefix", GOOD.replace("topicPrefix: shop", "topicPrefix: \"shop/orders\""), "spec.kafka.topicPrefix"),
        ("bad-heartbeat", GOOD.replace("  suspend: true", "  logical: { heartbeatInterval: soon }\n  suspend: true"), "spec.logical.heartbeatInterval"),
        ("bad-delivery", GOOD.replace("topicPrefix: shop", "topicPrefix: shop, delivery: Twice"), "spec.kafka.delivery: Unsupported value"),
        ("duplicate-table", GOOD.replace("[{ name: public.orders }]", "[{ name: public.orders }, { name: public.orders }]"), "Duplicate value"),
        ("no-secret-name", GOOD.replace("credentialsSecretRef: { name: pg }", "credentialsSecretRef: {}"), "spec.postgres.credentialsSecretRef.name: Required value"),
        ("bad-compression", GOOD.replace("topicPrefix: shop", "topicPrefix: shop, compression: brotli"), "spec.kafka.compression"),
        ("polling-bad-lateness", GOOD.replace("  suspend: true", "  mode: Polling\n  polling: { cursorColumn: updated_at, lateness: soon }\n  suspend: true"), "spec.polling.lateness"),
        ("polling-bad-interval", GOOD.replace("  suspend: true", "  mode: Polling\n  polling: { cursorColumn: updated_at, interval: often }\n  suspend: true"), "spec.polling.interval"),
        ("polling-no-cursor", GOOD.replace("  suspend: true", "  mode: Polling\n  polling: { interval: 5s }\n  suspend: true"), "spec.polling.cursorColumn: Required value"),
        ("polling-zero-batch", GOOD.replace("  suspend: true", "  mode: Polling\n  polling: { cursorColumn: v, batchSize: 0 }\n  suspend: true"), "spec.polling.batchSize"),
        ("polling-bad-semantics", GOOD.replace("  suspend: true", "  mode: Polling\n  polling: { cursorColumn: v, semantics: Merge }\n  suspend: true"), "spec.polling.semantics: Unsupported value"),
        ("polling-wildcard", GOOD.replace("public.orders", "public.*").replace("  suspend: true", "  mode: Polling\n  polling: { cursorColumn: v }\n  suspend: true"), "polling needs explicit table names"),
        ("query-without-key", GOOD.replace("[{ name: public.orders }]", "[{ name: public.totals, query: \"SELECT 1 AS v\" }]").replace("  suspend: true", "  mode: Polling\n  polling: { cursorColumn: v }\n  suspend: true"), "a table with a query needs keyColumns"),
        ("query-with-notify", GOOD.replace("[{ name: public.orders }]", "[{ name: public.totals, keyColumns: [v], query: \"SELECT 1 AS v\" }]").replace("  suspend: true", "  mode: Polling\n  polling: { cursorColumn: v, notify: true }\n  suspend: true"), "polling.notify makes triggers on tables"),
        ("query-in-logical", GOOD.replace("[{ name: public.orders }]", "[{ name: public.totals, keyColumns: [v], query: \"SELECT 1 AS v\" }]"), "tables[].query and tables[].cursorColumn are for mode Polling"),
    ];
    let mut failures = Vec::new();
    for (label, spec, expected) in &cases {
        let (ok, stderr) = kubectl_apply(&manifest(&unique(label), spec));
        if ok {
            failures.push(format!("{label}: accepted"));
        } else if !stderr.contains(expected) {
            failures.push(format!("{label}: expected {expected:?} in: {stderr}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn immutable_fields_cannot_change() {
    let name = unique("immutable");
    let with_slot = GOOD.replace(
        "  suspend: true",
        "  logical: { slotName: fixed_slot }\n  suspend: true",
    );
    let (ok, err) = kubectl_apply(&manifest(&name, &with_slot));
    assert!(ok, "{err}");
    let (ok, err) = kubectl_apply(&manifest(
        &name,
        &with_slot.replace("fixed_slot", "other_slot"),
    ));
    assert!(!ok, "slot name change must be refused");
    assert!(err.contains("slotName is immutable"), "{err}");
    let running = with_slot.replace("  suspend: true\n", "");
    let (ok, err) = kubectl_apply(&manifest(&name, &running));
    assert!(ok, "{err}");
    let polling = format!("{running}  mode: Polling\n  polling: {{ cursorColumn: updated_at }}\n");
    let (ok, err) = kubectl_apply(&manifest(&name, &polling));
    assert!(!ok, "mode change of a running capture must be refused");
    assert!(err.contains("spec.mode is immutable"), "{err}");
    let _ = Command::new("kubectl")
        .args(["delete", "pgcap", &name, "-n", "default", "--wait=false"])
        .env("KUBECONFIG", stack_var("KUBECONFIG"))
        .output();
}
