//! The figures of a run: `target/bench/summary.json` (an array of
//! `{name, siphon, reference, unit, ratio}`) and a table for people, with the
//! goal of each figure beside it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// What a figure should reach.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// `siphon / reference` at least this.
    RatioAtLeast(f64),
    /// `siphon / reference` at most this (memory against a heavier reference).
    RatioAtMost(f64),
    /// `siphon` at most this (in the figure's unit).
    AtMost(f64),
    /// `siphon` at least this.
    AtLeast(f64),
    /// Shown for context only.
    None,
}

impl Goal {
    fn describe(self) -> String {
        match self {
            Goal::RatioAtLeast(r) => format!("ratio ≥ {r}"),
            Goal::RatioAtMost(r) => format!("ratio ≤ {r}"),
            Goal::AtMost(v) => format!("≤ {}", human(v)),
            Goal::AtLeast(v) => format!("≥ {}", human(v)),
            Goal::None => String::new(),
        }
    }
}

/// Three decimals are plenty for people and for diffs of summary.json.
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub siphon: Option<f64>,
    pub reference: Option<f64>,
    pub unit: String,
    pub ratio: Option<f64>,
    #[serde(skip)]
    pub goals: Vec<Goal>,
    /// What the reference is (shown in the table).
    #[serde(skip)]
    pub reference_name: String,
}

impl Figure {
    /// A figure compared with a reference measured in the same run.
    pub fn against(
        name: impl Into<String>,
        unit: &str,
        siphon: f64,
        reference_name: &str,
        reference: f64,
        goals: Vec<Goal>,
    ) -> Self {
        Self {
            name: name.into(),
            siphon: Some(round3(siphon)),
            reference: Some(round3(reference)),
            unit: unit.into(),
            ratio: (reference > 0.0).then(|| round3(siphon / reference)),
            goals,
            reference_name: reference_name.into(),
        }
    }

    /// A figure without a reference (latency, memory).
    pub fn alone(name: impl Into<String>, unit: &str, siphon: f64, goals: Vec<Goal>) -> Self {
        Self {
            name: name.into(),
            siphon: Some(round3(siphon)),
            reference: None,
            unit: unit.into(),
            ratio: None,
            goals,
            reference_name: String::new(),
        }
    }

    /// `Some(true)` when every goal is met, `None` without goals.
    pub fn meets(&self) -> Option<bool> {
        let mut verdict = None;
        for goal in &self.goals {
            let ok = match (*goal, self.siphon, self.ratio) {
                (Goal::RatioAtLeast(min), _, Some(r)) => r >= min,
                (Goal::RatioAtMost(max), _, Some(r)) => r <= max,
                (Goal::AtMost(max), Some(v), _) => v <= max,
                (Goal::AtLeast(min), Some(v), _) => v >= min,
                (Goal::None, ..) => continue,
                _ => false,
            };
            verdict = Some(verdict.unwrap_or(true) && ok);
        }
        verdict
    }
}

/// Numbers as people read them: 123456 → "123.5k".
pub fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The table printed at the end of a run.
pub fn table(figures: &[Figure], notes: &[String]) -> String {
    let rows: Vec<[String; 7]> = figures
        .iter()
        .map(|f| {
            let goal = f
                .goals
                .iter()
                .map(|g| g.describe())
                .filter(|g| !g.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            [
                f.name.clone(),
                f.siphon.map(human).unwrap_or_else(|| "-".into()),
                match f.reference {
                    Some(r) => format!("{} ({})", human(r), f.reference_name),
                    None => "-".into(),
                },
                f.unit.clone(),
                f.ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}")),
                goal,
                match f.meets() {
                    Some(true) => "ok".into(),
                    Some(false) => "MISSED".into(),
                    None => String::new(),
                },
            ]
        })
        .collect();
    let head = ["figure", "siphon", "reference", "unit", "ratio", "goal", ""].map(String::from);
    let mut widths = head.clone().map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String; 7]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w - c.chars().count();
            // Text left, numbers right.
            if matches!(i, 1 | 4) {
                let _ = write!(s, "{}{}  ", " ".repeat(pad), c);
            } else {
                let _ = write!(s, "{}{}  ", c, " ".repeat(pad));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&head);
    line(&widths.map(|w| "-".repeat(w)));
    for r in &rows {
        line(r);
    }
    for n in notes {
        out.push_str("note: ");
        out.push_str(n);
        out.push('\n');
    }
    out
}

/// Write the figures as JSON.
pub fn write_json(path: &Path, figures: &[Figure]) -> Result<()> {
    let text = serde_json::to_string_pretty(figures)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_goals_use_the_ratio_and_limits_use_the_value() {
        let f = Figure::against(
            "x",
            "events/s",
            90.0,
            "ref",
            100.0,
            vec![Goal::RatioAtLeast(0.85)],
        );
        assert_eq!(f.meets(), Some(true));
        let f = Figure::alone("rss", "MiB", 70.0, vec![Goal::AtMost(64.0)]);
        assert_eq!(f.meets(), Some(false));
        let f = Figure::alone("p50", "ms", 7.0, vec![Goal::None]);
        assert_eq!(f.meets(), None);
    }

    #[test]
    fn json_has_exactly_the_public_fields() {
        let f = Figure::against(
            "x",
            "events/s",
            1.0,
            "ref",
            2.0,
            vec![Goal::RatioAtLeast(0.5)],
        );
        let v = serde_json::to_value([f]).expect("json");
        let keys: Vec<&String> = v[0].as_object().expect("object").keys().collect();
        assert_eq!(keys, ["name", "ratio", "reference", "siphon", "unit"]);
    }
}
