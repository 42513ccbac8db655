//! Prometheus metrics of the operator (`siphon_operator_*`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

/// The capture a per-capture series is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaptureLabels {
    pub namespace: String,
    pub capture: String,
}

/// The operator's metrics and their registry.
///
/// Per-capture series (`siphon_operator_capture_*`) come from the
/// operator, not the worker: they exist while the worker is down, which is
/// when they matter most (a stopped worker's slot still retains WAL).
pub struct Metrics {
    pub registry: Registry,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    duration: Histogram,
    pub leader: Gauge,
    ready: Family<CaptureLabels, Gauge>,
    suspended: Family<CaptureLabels, Gauge>,
    retained_wal: Family<CaptureLabels, Gauge>,
    wal_lost: Family<CaptureLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("siphon_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let leader = Gauge::default();
        let ready = Family::<CaptureLabels, Gauge>::default();
        let suspended = Family::<CaptureLabels, Gauge>::default();
        let retained_wal = Family::<CaptureLabels, Gauge>::default();
        let wal_lost = Family::<CaptureLabels, Gauge>::default();
        registry.register(
            "capture_ready",
            "1 while the capture's Ready condition is True",
            ready.clone(),
        );
        registry.register(
            "capture_suspended",
            "1 while the capture's spec.suspend is true (its worker is stopped on purpose)",
            suspended.clone(),
        );
        registry.register(
            "capture_retained_wal_bytes",
            "WAL the capture's replication slot keeps on the server (logical mode), read at each reconcile",
            retained_wal.clone(),
        );
        registry.register(
            "capture_wal_lost",
            "1 while the capture's slot is lost or missing: changes were skipped and a re-snapshot is needed",
            wal_lost.clone(),
        );
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            leader,
            ready,
            suspended,
            retained_wal,
            wal_lost,
        }
    }
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration, error: Option<&str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(reason) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    reason: reason.to_string(),
                })
                .inc();
        }
    }

    /// A capture's facts after a reconcile: Ready, and for a logical
    /// capture (`wal`) whether its slot is lost or missing and the WAL it
    /// retains (`None` while unknown).
    pub fn observe_capture(
        &self,
        capture: &CaptureLabels,
        ready: bool,
        suspended: bool,
        wal: Option<(bool, Option<i64>)>,
    ) {
        self.ready.get_or_create(capture).set(i64::from(ready));
        self.suspended
            .get_or_create(capture)
            .set(i64::from(suspended));
        match wal {
            None => {
                self.retained_wal.remove(capture);
                self.wal_lost.remove(capture);
            }
            Some((lost, retained)) => {
                self.wal_lost.get_or_create(capture).set(i64::from(lost));
                match retained {
                    Some(bytes) => {
                        self.retained_wal.get_or_create(capture).set(bytes);
                    }
                    None => {
                        self.retained_wal.remove(capture);
                    }
                }
            }
        }
    }

    /// A deleted capture has no series.
    pub fn forget_capture(&self, capture: &CaptureLabels) {
        self.ready.remove(capture);
        self.suspended.remove(capture);
        self.retained_wal.remove(capture);
        self.wal_lost.remove(capture);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_siphon_prefix() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(20), Some("kube"));
        let text = m.render();
        assert!(
            text.contains("siphon_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("siphon_operator_reconcile_errors_total{reason=\"kube\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn per_capture_series_follow_the_capture_and_go_with_it() {
        let m = Metrics::default();
        let c = CaptureLabels {
            namespace: "shop".into(),
            capture: "orders".into(),
        };
        m.observe_capture(&c, true, false, Some((false, Some(4096))));
        let text = m.render();
        let series = "{namespace=\"shop\",capture=\"orders\"}";
        assert!(
            text.contains(&format!("siphon_operator_capture_ready{series} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "siphon_operator_capture_retained_wal_bytes{series} 4096"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("siphon_operator_capture_wal_lost{series} 0")),
            "{text}"
        );
        // The slot is gone: lost, no retained figure.
        m.observe_capture(&c, false, true, Some((true, None)));
        assert!(
            m.render()
                .contains(&format!("siphon_operator_capture_suspended{series} 1"))
        );
        let text = m.render();
        assert!(
            text.contains(&format!("siphon_operator_capture_wal_lost{series} 1")),
            "{text}"
        );
        assert!(
            !text.contains("siphon_operator_capture_retained_wal_bytes{"),
            "{text}"
        );
        // A polling capture has no slot series.
        m.observe_capture(&c, true, false, None);
        assert!(!m.render().contains("siphon_operator_capture_wal_lost{"));
        m.forget_capture(&c);
        assert!(!m.render().contains("orders"));
    }
}
