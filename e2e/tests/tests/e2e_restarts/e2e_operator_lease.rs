//! An operator stopped cleanly (SIGTERM, as a rolling update does) gives up
//! its leader Lease, so that the next replica leads at once instead of
//! waiting for the lease to expire; the replica started after it takes the
//! Lease over.

#![allow(clippy::unwrap_used)] // a failed step of a test should panic right there

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use siphon_e2e::{eventually, kube_client, stack_shell};

/// Where the stack's operator keeps its Lease (no POD_NAMESPACE on the stack).
const LEASE_NAMESPACE: &str = "default";
const LEASE_NAME: &str = "siphon-operator";

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(LEASE_NAME)
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn a_cleanly_stopped_operator_releases_its_lease() {
    let leases: Api<Lease> = Api::namespaced(kube_client().await, LEASE_NAMESPACE);
    let before = eventually(Duration::from_secs(60), "the operator leads", || async {
        holder(&leases).await
    })
    .await;

    // SIGTERM and wait for the process to end (not restarted in between).
    let out = stack_shell(
        r#"pid=$(<"$SIPHON_STACK_DIR/pids/operator.pid"); kill -TERM "$pid";
           for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done;
           echo "operator $pid still running 30 s after SIGTERM" >&2; exit 1"#,
    );
    let stopped = out.status.success();
    let released = holder(&leases).await;

    // Whatever happened, leave the stack with a running operator.
    let restart = stack_shell("bash e2e/stack/stack.sh operator-restart");
    assert!(
        restart.status.success(),
        "{}",
        String::from_utf8_lossy(&restart.stderr)
    );
    assert!(stopped, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        released, None,
        "after a clean stop the Lease must have no holder (was {before})"
    );

    let after = eventually(
        Duration::from_secs(60),
        "the new operator leads",
        || async { holder(&leases).await },
    )
    .await;
    assert_ne!(after, before, "a new process has a new identity");
}
