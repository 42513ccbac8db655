//! One end-to-end scenario: its own namespace, its own database, a Secret with
//! the stack's superuser, and helpers to apply captures and wait on them.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use siphon_crds::PostgresCapture;

use crate::{eventually, kube_client, stack_var, unique};

/// A namespace, a database and a credentials Secret named `pg`.
pub struct Scenario {
    pub client: kube::Client,
    pub ns: String,
    pub db: String,
    pub pg: tokio_postgres::Client,
    /// The port of this scenario's server on 127.0.0.1.
    pub port: u16,
    /// Set by [`Scenario::cleanup`]; otherwise `Drop` tears down.
    cleaned: bool,
}

impl Scenario {
    /// On the stack's main PostgreSQL.
    pub async fn new(prefix: &str) -> Self {
        Self::on("PGPORT", prefix).await
    }

    /// On the stack's PostgreSQL whose port is `port_var` (`PG13_PORT`, …).
    pub async fn on(port_var: &str, prefix: &str) -> Self {
        Self::at(crate::stack_port(port_var), prefix).await
    }

    /// On the PostgreSQL on 127.0.0.1:`port` (one a test started itself).
    pub async fn at(port: u16, prefix: &str) -> Self {
        let client = kube_client().await;
        let ns = unique(prefix);
        let db = ns.replace('-', "_");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("namespace"),
            )
            .await
            .expect("create namespace");
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": { "name": "pg" },
                    "stringData": { "username": stack_var("PGUSER"), "password": stack_var("PGPASSWORD") }
                }))
                .expect("secret"),
            )
            .await
            .expect("create secret");
        let pg = crate::fresh_database_at(port, &db).await;
        Self {
            client,
            ns,
            db,
            pg,
            port,
            cleaned: false,
        }
    }

    pub fn captures(&self) -> Api<PostgresCapture> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// A spec on this scenario's database; `tables` like `[{ name: public.orders }]`,
    /// `extra` appended at the spec's top level.
    pub fn spec(&self, tables: &str, extra: &str) -> String {
        format!(
            "postgres: {{ host: 127.0.0.1, port: {port}, database: {db}, credentialsSecretRef: {{ name: pg }}, sslMode: disable }}\n\
             tables: {tables}\n\
             kafka: {{ bootstrapServers: \"{kafka}\", topicPrefix: {prefix} }}\n{extra}",
            port = self.port,
            db = self.db,
            kafka = stack_var("KAFKA_BOOTSTRAP"),
            prefix = self.ns,
        )
    }

    /// Topic of a table of this scenario.
    pub fn topic(&self, schema: &str, table: &str) -> String {
        format!("{}.{schema}.{table}", self.ns)
    }

    /// Create (or replace the spec of) a capture.
    pub async fn apply(&self, name: &str, spec_yaml: &str) -> PostgresCapture {
        self.apply_labelled(name, json!({}), spec_yaml).await
    }

    /// Create (or replace) a capture carrying `labels` (a JSON object).
    pub async fn apply_labelled(
        &self,
        name: &str,
        labels: serde_json::Value,
        spec_yaml: &str,
    ) -> PostgresCapture {
        let spec: serde_json::Value = serde_yaml::from_str(spec_yaml).expect("spec yaml");
        let body = json!({
            "apiVersion": "siphon.dev/v1alpha1",
            "kind": "PostgresCapture",
            "metadata": { "name": name, "namespace": self.ns, "labels": labels },
            "spec": spec,
        });
        self.captures()
            .patch(
                name,
                &PatchParams::apply("e2e-test").force(),
                &Patch::Apply(&body),
            )
            .await
            .expect("apply capture")
    }

    /// Merge-patch the spec.
    pub async fn patch_spec(&self, name: &str, patch: serde_json::Value) {
        self.captures()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "spec": patch })),
            )
            .await
            .expect("patch capture spec");
    }

    /// Wait until condition `type_` has `status`; returns it.
    pub async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        timeout: Duration,
    ) -> Condition {
        let api = self.captures();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if let Ok(c) = api.get(name).await {
                last = serde_json::to_string(&c.status).unwrap_or_default();
                if let Some(found) = c
                    .status
                    .into_iter()
                    .flat_map(|s| s.conditions)
                    .find(|c| c.type_ == type_ && c.status == status)
                {
                    return found;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {}/{name} condition {type_}={status}; last status: {last}",
                    self.ns
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Wait until the capture no longer exists.
    pub async fn wait_gone(&self, name: &str, timeout: Duration) {
        let api = self.captures();
        eventually(
            timeout,
            &format!("{}/{name} to be deleted", self.ns),
            || {
                let api = api.clone();
                async move {
                    api.get_opt(name)
                        .await
                        .ok()
                        .and_then(|o| o.is_none().then_some(()))
                }
            },
        )
        .await;
    }

    pub async fn delete(&self, name: &str) {
        self.captures()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete capture");
    }

    /// Does a replication slot of this name exist?
    pub async fn slot_exists(&self, slot: &str) -> bool {
        self.pg
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&slot],
            )
            .await
            .expect("query slots")
            .get(0)
    }

    /// Does a publication of this name exist?
    pub async fn publication_exists(&self, publication: &str) -> bool {
        self.pg
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
                &[&publication],
            )
            .await
            .expect("query publications")
            .get(0)
    }

    /// What Siphon could leave behind in this scenario's database, one line
    /// per object: its replication slots, publications, tables (views and
    /// sequences too), triggers and functions outside the system schemas.
    /// Equal before a capture and after its deletion, or something leaked.
    pub async fn census(&self) -> Vec<String> {
        self.pg
            .query(
                "SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE database = current_database() \
                 UNION ALL SELECT 'publication ' || pubname FROM pg_publication \
                 UNION ALL SELECT 'relation ' || n.nspname || '.' || c.relname FROM pg_class c \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                   WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
                     AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
                 UNION ALL SELECT 'trigger ' || tgrelid::regclass || '.' || tgname FROM pg_trigger WHERE NOT tgisinternal \
                 UNION ALL SELECT 'function ' || n.nspname || '.' || p.proname FROM pg_proc p \
                   JOIN pg_namespace n ON n.oid = p.pronamespace \
                   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 ORDER BY 1",
                &[],
            )
            .await
            .expect("database census")
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    }

    /// Create `public.t` (`id int PRIMARY KEY`) and a capture `t` of it that
    /// streams new changes only, and wait until it is Ready: the start of
    /// every scenario about what happens to a running capture.
    pub async fn streaming_capture_of_t(&self) {
        self.pg
            .batch_execute("CREATE TABLE public.t (id int PRIMARY KEY)")
            .await
            .expect("create public.t");
        self.apply(
            "t",
            &self.spec("[{ name: public.t }]", "snapshot: { mode: Never }"),
        )
        .await;
        self.wait_condition("t", "Ready", "True", READY_TIMEOUT)
            .await;
    }

    /// What the operator recorded as created for capture `name`
    /// (`status.managed`), empty when nothing is.
    pub async fn managed(&self, name: &str) -> siphon_crds::status::ManagedObjects {
        self.captures()
            .get(name)
            .await
            .expect("get capture")
            .status
            .and_then(|s| s.managed)
            .unwrap_or_default()
    }

    /// Drop a replication slot by hand, as an administrator would: end its
    /// walsender and drop it, again until the worker's reconnect loses the
    /// race.
    pub async fn drop_slot_by_hand(&self, slot: &str) {
        eventually(Duration::from_secs(30), "the slot to be dropped", || async {
            let _ = self
                .pg
                .execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                    &[&slot],
                )
                .await;
            self.pg
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                    &[&slot],
                )
                .await
                .ok()
                .filter(|n| *n == 1)
        })
        .await;
    }

    /// Rows of `sql`, which selects a key and a row as JSON, keyed by the
    /// key's text: what [`crate::topic::reduce`] of the table's topic holds.
    pub async fn rows_by_key(
        &self,
        sql: &str,
    ) -> std::collections::BTreeMap<String, serde_json::Value> {
        self.pg
            .query(sql, &[])
            .await
            .expect("rows by key")
            .iter()
            .map(|r| {
                let key: serde_json::Value = r.get(0);
                let row: serde_json::Value = r.get(1);
                (key.to_string(), row)
            })
            .collect()
    }

    /// Wait until `table`'s topic, reduced by key, equals the rows of `sql`
    /// (key and row as JSON).
    pub async fn topic_equals_rows(&self, table: &str, sql: &str) {
        let want = self.rows_by_key(sql).await;
        let topic = self.topic("public", table);
        eventually(
            Duration::from_secs(90),
            &format!("{topic} to equal its table"),
            || async {
                (crate::topic::reduce(&crate::topic::read_topic_now(&topic).await) == want)
                    .then_some(())
            },
        )
        .await;
    }

    /// Wait until the `id`s of the `after` images in `table`'s topic (each
    /// once, sorted) are `want`: every row arrived, none that should not.
    pub async fn wait_ids(&self, table: &str, want: &[i64]) {
        let topic = self.topic("public", table);
        eventually(
            Duration::from_secs(90),
            &format!("ids {want:?} in {topic}"),
            || async {
                let mut ids: Vec<i64> = crate::topic::read_topic_now(&topic)
                    .await
                    .iter()
                    .filter_map(|r| r.after()?.get("id")?.as_i64())
                    .collect();
                ids.sort();
                ids.dedup();
                (ids == want).then_some(())
            },
        )
        .await;
    }

    /// Kill capture `name`'s worker pod `times` times, 2 s apart, without a
    /// grace period (as `kill -9` would): the Deployment makes a new one.
    pub async fn kill_worker_pod(&self, name: &str, times: usize) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let lp = ListParams::default().labels(&format!("siphon.dev/capture={name}"));
        for _ in 0..times {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let list = pods.list(&lp).await.expect("list worker pods");
            let pod = list.items[0].metadata.name.clone().expect("pod name");
            pods.delete(
                &pod,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await
            .expect("delete worker pod");
        }
    }

    /// Where capture `name`'s running worker serves `/metrics` (pod IP and
    /// the worker's metrics port), once it runs.
    pub async fn worker_metrics_addr(&self, name: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let lp = ListParams::default().labels(&format!("siphon.dev/capture={name}"));
        let ip = eventually(Duration::from_secs(60), "a running worker pod", || async {
            let list = pods.list(&lp).await.ok()?;
            list.items.iter().find_map(|pod| {
                let status = pod.status.as_ref()?;
                (status.phase.as_deref() == Some("Running")
                    && pod.metadata.deletion_timestamp.is_none())
                .then(|| status.pod_ip.clone())
                .flatten()
            })
        })
        .await;
        format!("{ip}:{}", siphon_operator::names::WORKER_METRICS_PORT)
    }

    /// Wait until the Ready condition carries `reason`; returns its message.
    pub async fn wait_ready_reason(&self, name: &str, reason: &str, timeout: Duration) -> String {
        let api = self.captures();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if let Ok(c) = api.get(name).await {
                let ready = c
                    .status
                    .into_iter()
                    .flat_map(|s| s.conditions)
                    .find(|c| c.type_ == "Ready");
                if let Some(ready) = ready {
                    if ready.reason == reason {
                        return ready.message;
                    }
                    last = format!(
                        "{}={} {}: {}",
                        ready.type_, ready.status, ready.reason, ready.message
                    );
                }
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {}/{name} condition Ready with reason {reason}; last: {last}",
                    self.ns
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Delete the captures (their finalizers drop what they made), the
    /// namespace, any slot left in the database, and the database.
    pub async fn cleanup(mut self) {
        self.cleaned = true;
        teardown(self.client.clone(), &self.ns, self.port, &self.db).await;
    }
}

/// A scenario that was not cleaned up (its test panicked) is torn down here,
/// on a thread and runtime of its own: the test's runtime is unwinding. A
/// leaked capture would keep its worker and slot, and a slot holds WAL.
impl Drop for Scenario {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (client, ns, port, db) = (
            self.client.clone(),
            self.ns.clone(),
            self.port,
            self.db.clone(),
        );
        let done = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                eprintln!("cleanup of {ns}: no runtime; the namespace and database {db} stay");
                return;
            };
            // The client's connections belong to the unwinding runtime; a new one
            // is built from the same kubeconfig.
            let client = rt.block_on(kube::Client::try_default()).unwrap_or(client);
            rt.block_on(teardown(client, &ns, port, &db));
        })
        .join();
        if done.is_err() {
            eprintln!("cleanup of {} panicked", self.ns);
        }
    }
}

/// What [`Scenario::cleanup`] and its `Drop` do; never panics (it may run
/// while a test unwinds), so every step is tried whatever the last one did.
async fn teardown(client: kube::Client, ns: &str, port: u16, db: &str) {
    let captures: Api<PostgresCapture> = Api::namespaced(client.clone(), ns);
    if let Ok(list) = captures.list(&Default::default()).await {
        for c in list.items {
            let name = c.metadata.name.unwrap_or_default();
            let _ = captures.delete(&name, &DeleteParams::default()).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while tokio::time::Instant::now() < deadline
                && matches!(captures.get_opt(&name).await, Ok(Some(_)))
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    let namespaces: Api<Namespace> = Api::all(client);
    let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    // Slots left by a failed test would hold WAL; the database would hold disk.
    let Ok((pg, conn)) = crate::pg_config_at(port, "postgres")
        .connect(tokio_postgres::NoTls)
        .await
    else {
        eprintln!("cleanup of {ns}: PostgreSQL on port {port} unreachable; database {db} stays");
        return;
    };
    tokio::spawn(conn);
    // A worker whose capture outlived the wait may still stream from its
    // slot until the namespace's deletion stops it: the shared slot drop
    // ends that session first.
    if let Ok(rows) = pg
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE database = $1",
            &[&db],
        )
        .await
    {
        for row in rows {
            let slot: String = row.get(0);
            if let Err(e) = siphon_postgres::slot::drop(&pg, &slot).await {
                eprintln!("cleanup of {ns}: slot {slot} stays: {e}");
            }
        }
    }
    let _ = pg
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .await;
}

/// Default timeout of a capture becoming Ready on the local stack.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
