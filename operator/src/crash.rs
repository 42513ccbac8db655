//! Crash points: the exact steps of provisioning where the operator may die
//! (a node lost, an OOM kill) with work half done, named so that a test can
//! make it die there, as `kill -9` would, instead of guessing with timers.
//!
//! `SIPHON_CRASH_AT=<point>@<namespace>/<capture>` arms one point for one
//! capture (the others on the same operator, reconciled as usual, are not
//! affected); the environment is read once. Unset, [`reach`] is a lookup of a
//! `OnceLock` and nothing else.
//!
//! The points sit between "recorded in `status.managed`" and "created in
//! the database", and after "created": the two windows where a restart
//! must still converge and a deletion must still drop everything.

use std::sync::OnceLock;

/// Every point, in the order provisioning reaches them.
pub const POINTS: [&str; 6] = [
    "watermark-recorded",
    "watermark-created",
    "publication-recorded",
    "publication-created",
    "slot-recorded",
    "slot-created",
];

/// The armed `(point, "namespace/capture")`, from `SIPHON_CRASH_AT`.
fn armed() -> Option<&'static (String, String)> {
    static ARMED: OnceLock<Option<(String, String)>> = OnceLock::new();
    ARMED
        .get_or_init(|| parse(&std::env::var("SIPHON_CRASH_AT").ok()?))
        .as_ref()
}

/// `point@namespace/capture`, for a known point (pure).
fn parse(value: &str) -> Option<(String, String)> {
    let (point, capture) = value.split_once('@')?;
    let (namespace, name) = capture.split_once('/')?;
    (POINTS.contains(&point) && !namespace.is_empty() && !name.is_empty())
        .then(|| (point.to_string(), capture.to_string()))
}

/// Die here when this point is armed for this capture.
pub fn reach(point: &'static str, namespace: &str, capture: &str) {
    debug_assert!(POINTS.contains(&point), "unknown crash point {point}");
    if armed().is_some_and(|(p, at)| p == point && at.split_once('/') == Some((namespace, capture)))
    {
        tracing::warn!(
            point,
            namespace,
            capture,
            "crash point reached (SIPHON_CRASH_AT): aborting"
        );
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_known_point_with_a_namespace_arms() {
        assert_eq!(
            parse("slot-created@e2e-crash-1/c0"),
            Some(("slot-created".into(), "e2e-crash-1/c0".into()))
        );
        assert_eq!(parse("slot-created"), None);
        assert_eq!(parse("slot-created@ns"), None);
        assert_eq!(parse("slot-created@ns/"), None);
        assert_eq!(parse("nowhere@ns/c0"), None);
    }
}
