//! What `/metrics` answers, for both binaries.
//!
//! The registries (prometheus-client) write OpenMetrics 1.0. Prometheus asks
//! for it in its `Accept` header and gets it; every other reader (`curl`,
//! `promtool check metrics`, older scrapers) gets the Prometheus text format
//! 0.0.4, in which a counter's family carries the `_total` of its samples.
//! Either way the response names its format: Prometheus 3 refuses a scrape
//! without a content type.
//!
//! **Invariant.** The two bodies hold the same samples with the same names
//! and values; only comments (`HELP`, `TYPE`, `UNIT`, `EOF`), `_created`
//! samples and exemplars differ.

/// Content type of an OpenMetrics body.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of a Prometheus text format body.
pub const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The body and its content type for a request's `Accept` header (pure).
pub fn respond(openmetrics: String, accept: Option<&str>) -> (String, &'static str) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (openmetrics, OPENMETRICS)
    } else {
        (to_text_004(&openmetrics), TEXT_004)
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4 (pure).
pub fn to_text_004(om: &str) -> String {
    use std::collections::HashMap;
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((family, kind)) = rest.split_once(' ')
        {
            types.insert(family, kind);
        }
    }
    // The name a family has in the text format.
    let renamed = |family: &str| -> String {
        match types.get(family).copied() {
            Some("counter") => format!("{family}_total"),
            Some("info") => format!("{family}_info"),
            _ => family.to_string(),
        }
    };
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (family, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // OpenMetrics escapes `"` in HELP; the text format does not.
            let help = help.replace("\\\"", "\"");
            out.push_str(&format!("# HELP {} {help}\n", renamed(family)));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = match kind {
                "counter" | "gauge" | "histogram" | "summary" => kind,
                "info" => "gauge",
                _ => "untyped",
            };
            out.push_str(&format!("# TYPE {} {kind}\n", renamed(family)));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if let Some(family) = name.strip_suffix("_created")
            && types
                .get(family)
                .is_some_and(|k| *k == "counter" || *k == "histogram")
        {
            continue;
        }
        // Exemplars (` # {…} v`) have no place in the text format.
        let sample = match line[name_end..].find(" # ") {
            Some(at) => &line[..name_end + at],
            None => line,
        };
        out.push_str(sample);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "# HELP siphon_worker_events Changes written to Kafka.\n\
# TYPE siphon_worker_events counter\n\
siphon_worker_events_total 3\n\
siphon_worker_events_created 1700000000.0\n\
# HELP siphon_worker_lag_seconds Seconds \\\"behind\\\".\n\
# TYPE siphon_worker_lag_seconds gauge\n\
# UNIT siphon_worker_lag_seconds seconds\n\
siphon_worker_lag_seconds 0.5\n\
# HELP siphon_worker_poll_duration_seconds Seconds per poll.\n\
# TYPE siphon_worker_poll_duration_seconds histogram\n\
siphon_worker_poll_duration_seconds_sum 0.1\n\
siphon_worker_poll_duration_seconds_count 2\n\
siphon_worker_poll_duration_seconds_bucket{le=\"+Inf\"} 2 # {trace_id=\"a\"} 0.05\n\
# EOF\n";

    #[test]
    fn a_counter_family_carries_the_total_of_its_samples() {
        let text = to_text_004(OM);
        assert!(
            text.contains("# HELP siphon_worker_events_total Changes written to Kafka.\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE siphon_worker_events_total counter\nsiphon_worker_events_total 3\n"
            ),
            "{text}"
        );
        assert!(!text.contains("_created"), "{text}");
    }

    #[test]
    fn openmetrics_only_lines_go() {
        let text = to_text_004(OM);
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(
            text.contains("# HELP siphon_worker_lag_seconds Seconds \"behind\".\n"),
            "{text}"
        );
        assert!(
            text.contains("siphon_worker_poll_duration_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn the_samples_are_the_same_in_both_formats() {
        let samples = |body: &str| -> Vec<String> {
            body.lines()
                .filter(|l| !l.starts_with('#') && !l.contains("_created"))
                .map(|l| l.split(" # ").next().unwrap_or(l).to_string())
                .collect()
        };
        assert_eq!(samples(OM), samples(&to_text_004(OM)));
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(respond(OM.into(), Some(prometheus)).1, OPENMETRICS);
        assert_eq!(respond(OM.into(), Some("*/*")).1, TEXT_004);
        assert_eq!(respond(OM.into(), None).1, TEXT_004);
    }
}
