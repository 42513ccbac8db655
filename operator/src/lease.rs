//! Leader election on a `coordination.k8s.io/v1` Lease, so that two operator
//! replicas never reconcile at once.
//!
//! A replica becomes leader by writing its identity into the Lease when it is
//! free or expired, using the Lease's resourceVersion so that only one of two
//! racing writers wins. It renews every `renew`; a leader that fails to renew
//! before `duration` elapses stops itself (the process exits and restarts as a
//! follower), because another replica may already have taken over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    pub renew: Duration,
}

/// Whether `lease` may be taken by `identity` at `now`.
pub fn can_acquire(spec: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    match (
        &spec.holder_identity,
        &spec.renew_time,
        spec.lease_duration_seconds,
    ) {
        (None, _, _) => true,
        (Some(h), _, _) if h == identity || h.is_empty() => true,
        (Some(_), Some(renewed), Some(secs)) => {
            renewed.0 + SignedDuration::from_secs(i64::from(secs)) < now
        }
        (Some(_), None, _) => true,
        (Some(_), Some(_), None) => true,
    }
}

/// Try once to take or renew the lease. Ok(true) when we hold it.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let desired = |transitions: i32| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration.as_secs() as i32),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(desired(0)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            if !can_acquire(&spec, &cfg.identity, now) {
                return Ok(false);
            }
            let ours = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
            let transitions = spec.lease_transitions.unwrap_or(0) + if ours { 0 } else { 1 };
            let mut next = desired(transitions);
            if ours {
                next.acquire_time = spec.acquire_time.clone();
            }
            lease.spec = Some(next);
            // replace() carries the resourceVersion: a concurrent writer makes this fail with 409.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Block until this replica leads; then keep renewing in the background and
/// call `lost` if leadership cannot be renewed in time.
pub async fn acquire_and_hold(
    client: Client,
    cfg: LeaseConfig,
    lost: impl FnOnce() + Send + 'static,
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    loop {
        match try_acquire(&api, &cfg).await {
            Ok(true) => break,
            Ok(false) => tracing::info!(lease = %cfg.name, "another replica leads; waiting"),
            Err(error) => tracing::warn!(%error, "cannot read the leader lease"),
        }
        tokio::time::sleep(cfg.renew).await;
    }
    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
    tokio::spawn(async move {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(cfg.renew).await;
            match try_acquire(&api, &cfg).await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("leader lease taken by another replica; stopping");
                    lost();
                    return;
                }
                Err(error) => tracing::warn!(%error, "cannot renew the leader lease"),
            }
            if last_renewal.elapsed() >= cfg.duration {
                tracing::error!("leader lease not renewed in time; stopping");
                lost();
                return;
            }
        }
    });
}

/// Give the lease up on a clean shutdown, so that another replica takes over
/// at once instead of after the lease duration. Only a lease this replica
/// still holds is touched (the resourceVersion guards against a race).
pub async fn release(client: Client, cfg: &LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let result = async {
        let Some(mut lease) = api.get_opt(&cfg.name).await? else {
            return Ok(false);
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        lease.spec = Some(spec);
        api.replace(&cfg.name, &PostParams::default(), &lease)
            .await
            .map(|_| true)
    }
    .await;
    match result {
        Ok(true) => tracing::info!(lease = %cfg.name, "leader lease released"),
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(%error, "cannot release the leader lease; it expires on its own")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(
                Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago),
            )),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_fresh_lease_of_another_replica_is_respected() {
        assert!(!can_acquire(&spec("other", 2, 15), "me", Timestamp::now()));
    }

    #[test]
    fn an_expired_or_own_lease_can_be_taken() {
        assert!(can_acquire(&spec("other", 30, 15), "me", Timestamp::now()));
        assert!(can_acquire(&spec("me", 2, 15), "me", Timestamp::now()));
        assert!(can_acquire(&LeaseSpec::default(), "me", Timestamp::now()));
    }
}
