//! Where the operator looks: the whole cluster, or a list of namespaces.
//!
//! Cluster-wide is the default and needs the chart's ClusterRole. With
//! `SIPHON_WATCH_NAMESPACES=a,b` (the chart's `watchNamespaces`) the
//! operator watches only those namespaces and needs nothing cluster-wide:
//! the chart grants a Role in each of them instead.
//!
//! **Invariant.** Every API the controller watches or lists goes through
//! [`Scope::apis`], so a namespace-scoped operator never sends a request the
//! chart's Roles do not allow (which would fail as Forbidden).

use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use siphon_crds::PostgresCapture;

/// The namespaces the operator reconciles captures in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Namespaces(Vec<String>),
}

impl Scope {
    /// From the comma-separated list of `SIPHON_WATCH_NAMESPACES` (pure):
    /// empty means the whole cluster; names are trimmed, deduplicated and
    /// must be DNS labels.
    pub fn parse(list: &str) -> Result<Scope, String> {
        let mut names: Vec<String> = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let label = name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !name.starts_with('-')
                && !name.ends_with('-');
            if !label {
                return Err(format!(
                    "SIPHON_WATCH_NAMESPACES: {name:?} is not a namespace name (lowercase letters, digits and '-', at most 63): fix watchNamespaces in the chart's values"
                ));
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        Ok(if names.is_empty() {
            Scope::Cluster
        } else {
            Scope::Namespaces(names)
        })
    }

    /// One API per watched namespace, or one for the whole cluster.
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned,
        K::DynamicType: Default,
    {
        match self {
            Scope::Cluster => vec![Api::all(client.clone())],
            Scope::Namespaces(names) => names
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect(),
        }
    }

    /// What the startup log says.
    pub fn describe(&self) -> String {
        match self {
            Scope::Cluster => "all namespaces".into(),
            Scope::Namespaces(n) => format!("namespaces {}", n.join(", ")),
        }
    }
}

/// Fail at start, with the command that fixes it, when the API server does
/// not serve `PostgresCapture` (the CRD is not installed) or the operator
/// may not list it where it looks (its RBAC does not match its scope).
pub async fn check_served(client: &Client, scope: &Scope) -> anyhow::Result<()> {
    use kube::api::ListParams;
    for api in scope.apis::<PostgresCapture>(client) {
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => anyhow::bail!(
                "the API server does not serve postgrescaptures.{}: the CRD is not installed; install it with `kubectl apply --server-side -f charts/siphon/crds/postgrescapture.yaml` (helm installs it on first install only)",
                siphon_crds::GROUP
            ),
            Err(kube::Error::Api(s)) if s.code == 403 => anyhow::bail!(
                "the operator may not list postgrescaptures in {}: {}; its RBAC does not match its scope: install the chart with watchNamespaces naming the namespaces it may watch, or cluster-wide",
                scope.describe(),
                s.message
            ),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_is_the_cluster() {
        assert_eq!(Scope::parse("").unwrap(), Scope::Cluster);
        assert_eq!(Scope::parse(" , ").unwrap(), Scope::Cluster);
    }

    #[test]
    fn names_are_trimmed_and_deduplicated() {
        assert_eq!(
            Scope::parse("shop, billing,shop").unwrap(),
            Scope::Namespaces(vec!["shop".into(), "billing".into()])
        );
    }

    #[test]
    fn a_bad_name_is_refused_with_the_fix() {
        let e = Scope::parse("shop,Bad_NS").unwrap_err();
        assert!(
            e.contains("\"Bad_NS\"") && e.contains("watchNamespaces"),
            "{e}"
        );
    }
}
