//! Stage 1: the Secrets a capture reads (credentials, the CA) and the
//! finalizer that keeps them until its teardown has run.
//!
//! Invariant: a secret's value goes from the Secret to the connection
//! parameters and nowhere else (never a log line, an Event or the status).

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use siphon_crds::capture::PostgresCapture;
use siphon_crds::conditions::reason;

use crate::controller::{Context, Error};
use crate::database::Unfit;
use crate::names;
use siphon_postgres::SqlParams;

pub(crate) struct Credentials {
    user: String,
    password: String,
    /// The CA of `spec.postgres.caSecretRef`, written to a private file.
    ca_file: Option<std::path::PathBuf>,
}

/// A Secret as `seen` already holds it (what holding it returned), or read.
async fn secret_seen_or_read(
    secrets: &Api<Secret>,
    seen: &[Secret],
    name: &str,
) -> Result<Option<Secret>, kube::Error> {
    match seen
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
    {
        Some(secret) => Ok(Some(secret.clone())),
        None => secrets.get_opt(name).await,
    }
}

/// The credentials (and CA) of the capture, from its Secrets; `seen` are
/// Secrets this reconcile already read.
pub(crate) async fn read_credentials(
    ctx: &Context,
    capture: &PostgresCapture,
    seen: &[Secret],
) -> Result<Credentials, Unfit> {
    let ns = capture.namespace().unwrap_or_default();
    let r = &capture.spec.postgres.credentials_secret_ref;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let missing = |what: String| Unfit {
        reason: reason::SECRET_NOT_FOUND,
        message: what,
        transient: false,
    };
    let secret = secret_seen_or_read(&secrets, seen, &r.name)
        .await
        .map_err(|e| Unfit {
            reason: reason::SECRET_NOT_FOUND,
            message: format!("cannot read Secret {ns}/{}: {e}", r.name),
            transient: true,
        })?
        .ok_or_else(|| {
            missing(format!(
                "Secret {ns}/{} does not exist: create it with keys {} and {}",
                r.name, r.username_key, r.password_key
            ))
        })?;
    let get = |key: &str| -> Result<String, Unfit> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key).cloned())
            })
            .ok_or_else(|| {
                missing(format!(
                    "Secret {ns}/{} has no key {key:?}: add it or set usernameKey/passwordKey",
                    r.name
                ))
            })
    };
    let ca_file = match &capture.spec.postgres.ca_secret_ref {
        None => None,
        Some(ca) => {
            let secret = secret_seen_or_read(&secrets, seen, &ca.name)
                .await
                .ok()
                .flatten()
                .ok_or_else(|| {
                    missing(format!(
                        "CA Secret {ns}/{} does not exist: create it with key {}",
                        ca.name, ca.key
                    ))
                })?;
            let pem = secret
                .data
                .as_ref()
                .and_then(|d| d.get(&ca.key))
                .map(|b| b.0.clone())
                .ok_or_else(|| {
                    missing(format!(
                        "CA Secret {ns}/{} has no key {:?}",
                        ca.name, ca.key
                    ))
                })?;
            let path =
                std::env::temp_dir().join(format!("siphon-ca-{ns}-{}.crt", capture.name_any()));
            std::fs::write(&path, pem).map_err(|e| Unfit {
                reason: reason::SECRET_NOT_FOUND,
                message: format!("cannot write the CA certificate to {}: {e}", path.display()),
                transient: true,
            })?;
            Some(path)
        }
    };
    Ok(Credentials {
        user: get(&r.username_key)?,
        password: get(&r.password_key)?,
        ca_file,
    })
}

/// How to reach the capture's database with these credentials.
pub(crate) fn connect_params(capture: &PostgresCapture, creds: Credentials) -> SqlParams {
    let pg = &capture.spec.postgres;
    SqlParams {
        host: pg.host.clone(),
        port: pg.port,
        database: pg.database.clone(),
        user: creds.user,
        password: Some(creds.password),
        ssl_mode: pg.ssl_mode.into(),
        ssl_root_cert: creds.ca_file,
        application_name: "siphon-operator",
        connect_timeout: std::time::Duration::from_secs(10),
    }
}

/// Put (or take back) this capture's finalizer on the Secrets it reads, so
/// that deleting a capture and its Secret together (`kubectl delete -f`)
/// still leaves the credentials the teardown needs. Each capture claims the
/// finalizer under its own field manager; the entry stays while any capture
/// still claims it (server-side apply keeps co-owned set items).
///
/// Returns the Secrets as this call saw them (read, or as the apply left
/// them), so the caller need not read them again.
pub(crate) async fn hold_secrets(
    ctx: &Context,
    capture: &PostgresCapture,
    hold: bool,
) -> Result<Vec<Secret>, Error> {
    let ns = capture.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let manager = format!("{}/{}", names::OPERATOR_MANAGER, capture.name_any());
    let mut names_held = vec![capture.spec.postgres.credentials_secret_ref.name.clone()];
    if let Some(ca) = &capture.spec.postgres.ca_secret_ref {
        names_held.push(ca.name.clone());
    }
    names_held.dedup();
    let mut seen = Vec::new();
    for secret in names_held {
        // Holding is one server-side apply per capture on a Secret that many
        // captures may share; once held, a GET tells so and the write (which
        // contends with every other capture's) is skipped. A Secret that does
        // not exist is not held: an apply would create an empty one, and
        // read_credentials reports it missing.
        if hold {
            match secrets.get_opt(&secret).await? {
                None => continue,
                Some(current) if holds(&current, &manager) => {
                    seen.push(current);
                    continue;
                }
                Some(_) => {}
            }
        }
        let finalizers: Vec<&str> = if hold {
            vec![names::SECRET_FINALIZER]
        } else {
            vec![]
        };
        let body = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": secret, "namespace": ns, "finalizers": finalizers },
        });
        match secrets
            .patch(
                &secret,
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(applied) => seen.push(applied),
            // A missing Secret is reported by read_credentials; nothing to
            // hold or release. A Secret already being deleted takes no new
            // finalizer (422); teardown then reports it if it is gone.
            Err(kube::Error::Api(e)) if e.code == 404 || (hold && e.code == 422) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(seen)
}

/// Whether field manager `manager` already holds the Secret finalizer on
/// `secret` (pure): it owns that finalizer entry through server-side apply,
/// as `managedFields` records it.
fn holds(secret: &Secret, manager: &str) -> bool {
    let entry = format!("v:\"{}\"", names::SECRET_FINALIZER);
    secret.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(manager)
            && m.operation.as_deref() == Some("Apply")
            && m.fields_v1.as_ref().is_some_and(|f| {
                f.0.pointer("/f:metadata/f:finalizers")
                    .and_then(|fin| fin.get(&entry))
                    .is_some()
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_held_only_by_the_managers_that_own_its_finalizer_entry() {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {
                "name": "pg",
                "finalizers": [names::SECRET_FINALIZER],
                "managedFields": [
                    { "manager": "siphon-operator/a", "operation": "Apply",
                      "fieldsType": "FieldsV1",
                      "fieldsV1": { "f:metadata": { "f:finalizers": {
                          format!("v:\"{}\"", names::SECRET_FINALIZER): {} } } } },
                    // Released: applied an empty list, owns nothing under finalizers.
                    { "manager": "siphon-operator/b", "operation": "Apply",
                      "fieldsType": "FieldsV1", "fieldsV1": { "f:metadata": {} } },
                    { "manager": "kubectl", "operation": "Update",
                      "fieldsType": "FieldsV1",
                      "fieldsV1": { "f:metadata": { "f:finalizers": {
                          format!("v:\"{}\"", names::SECRET_FINALIZER): {} } } } }
                ]
            }
        }))
        .unwrap();
        assert!(holds(&secret, "siphon-operator/a"));
        assert!(!holds(&secret, "siphon-operator/b"));
        assert!(!holds(&secret, "kubectl"), "an Update entry is not a hold");
        assert!(!holds(&secret, "siphon-operator/c"));
    }
}
