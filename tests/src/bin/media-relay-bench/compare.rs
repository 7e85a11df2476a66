//! `--compare <report.json>`: this run's targets against the same targets
//! of another run (a reference kept in the repository, another machine's,
//! yesterday's), to tell whether two runs agree.
//!
//! Two figures agree when their runs' ranges (min–max) overlap: each run
//! of the benchmark says how far its own repetitions spread, and a second
//! run that lands inside that spread reproduces it. A ratio or difference
//! of figures has the range it takes over every pairing of their runs
//! (`figure::Derived`). Where one report has a range and the other a
//! single value (a report from before ratios had ranges), the value agrees
//! if it lies in the range; two single values (a count) agree within
//! [`SINGLE_TOLERANCE`] of the reference's. Verdicts are compared too: a
//! target met in one run and missed in the other is shown whatever the
//! figures.

use std::fmt::Write as _;

use serde_json::{Value, json};

/// How far apart two single values (no spread) may be and still agree,
/// relative to the reference's.
pub const SINGLE_TOLERANCE: f64 = 0.10;

/// A target's reading in one report: median, and its runs' range if any.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Reading {
    value: f64,
    range: Option<(f64, f64)>,
}

impl Reading {
    fn of(t: &Value) -> Option<Self> {
        let value = t.get("value")?.as_f64()?;
        let min = t.get("min").and_then(Value::as_f64);
        let max = t.get("max").and_then(Value::as_f64);
        Some(Self {
            value,
            range: min.zip(max),
        })
    }

    fn show(self) -> String {
        let n = |x: f64| {
            if x.abs() >= 100.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.3}")
            }
        };
        match self.range {
            Some((lo, hi)) => format!("{} ({}–{})", n(self.value), n(lo), n(hi)),
            None => n(self.value),
        }
    }
}

/// Whether `now` reproduces `then` (see the module's rule).
fn agree(then: Reading, now: Reading) -> bool {
    let scale = then.value.abs().max(now.value.abs()).max(f64::MIN_POSITIVE);
    let close = (now.value - then.value).abs() <= SINGLE_TOLERANCE * scale;
    match (then.range, now.range) {
        (Some((a_lo, a_hi)), Some((b_lo, b_hi))) => a_lo <= b_hi && b_lo <= a_hi,
        (Some((lo, hi)), None) => (lo..=hi).contains(&now.value) || close,
        (None, Some((lo, hi))) => (lo..=hi).contains(&then.value) || close,
        (None, None) => close,
    }
}

fn key(t: &Value) -> (String, String) {
    let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    (s("part"), s("name"))
}

fn verdict(t: &Value) -> &str {
    t.get("verdict").and_then(Value::as_str).unwrap_or("?")
}

/// The comparison of `targets` (this run's) with `reference` (a whole
/// `report.json`): a Markdown section and its JSON.
pub fn compare(targets: &[Value], reference: &Value, reference_name: &str) -> (String, Value) {
    let theirs: Vec<&Value> = reference
        .get("targets")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mut md = format!(
        "## Compared with {reference_name}\n\n\
         Reference: {}, generated {}. Two figures agree when their runs' ranges overlap (a ratio's range: \
         over every pairing of its figures' runs); a single value agrees with a range it lies in, two single \
         values within {:.0} % of the reference's.\n\n",
        reference
            .get("machine")
            .and_then(Value::as_str)
            .unwrap_or("an unknown machine"),
        reference
            .get("generated_at")
            .and_then(Value::as_str)
            .unwrap_or("at an unknown time"),
        SINGLE_TOLERANCE * 100.0
    );
    let probe = |r: &Value| {
        r.get("build")
            .and_then(|b| b.get("host_probe"))
            .and_then(crate::host::describe_probe)
    };
    // Before the table: a line inside it would end it.
    md.push_str(&format!(
        "Host speed, reference: {}.\n\n\
         | part | target | reference | this run | agree | verdicts |\n|---|---|---:|---:|---|---|\n",
        probe(reference).unwrap_or_else(|| "not measured (a run before the host probe)".to_owned())
    ));
    let mut rows = Vec::new();
    let (mut agreeing, mut differing, mut unmatched) = (0, 0, 0);
    for t in targets {
        let (part, name) = key(t);
        let other = theirs
            .iter()
            .find(|o| key(o) == (part.clone(), name.clone()));
        let (then, now) = (other.and_then(|o| Reading::of(o)), Reading::of(t));
        let agrees = then.zip(now).map(|(a, b)| agree(a, b));
        match agrees {
            Some(true) => agreeing += 1,
            Some(false) => differing += 1,
            None => unmatched += 1,
        }
        let verdicts = match other {
            Some(o) if verdict(o) == verdict(t) => verdict(t).to_owned(),
            Some(o) => format!("**{} → {}**", verdict(o), verdict(t)),
            None => format!("(new) {}", verdict(t)),
        };
        let _ = writeln!(
            md,
            "| {part} | {name} | {} | {} | {} | {verdicts} |",
            then.map_or_else(|| "–".to_owned(), Reading::show),
            now.map_or_else(|| "–".to_owned(), Reading::show),
            match agrees {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
        rows.push(json!({
            "part": part,
            "name": name,
            "reference": other.and_then(|o| o.get("value")).cloned().unwrap_or(Value::Null),
            "value": t.get("value").cloned().unwrap_or(Value::Null),
            "agree": agrees,
            "reference_verdict": other.map(|o| verdict(o)),
            "verdict": verdict(t),
        }));
    }
    let _ = writeln!(
        md,
        "\n{agreeing} agree, {differing} differ, {unmatched} without a figure in both runs."
    );
    let json = json!({
        "reference": reference_name,
        "agree": agreeing,
        "differ": differing,
        "unmatched": unmatched,
        "targets": rows,
    });
    (md, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(part: &str, name: &str, v: Value) -> Value {
        let mut t = json!({"part": part, "name": name, "verdict": "met"});
        if let Value::Object(m) = v {
            for (k, x) in m {
                t[k] = x;
            }
        }
        t
    }

    #[test]
    fn ranges_agree_when_they_overlap_single_values_within_ten_percent() {
        let reference = json!({"machine": "m", "generated_at": "g", "targets": [
            t("a", "spread", json!({"value": 10.0, "min": 9.0, "max": 11.0})),
            t("a", "ratio", json!({"value": 2.0})),
            t("a", "far", json!({"value": 10.0, "min": 9.5, "max": 10.5})),
            t("a", "inside", json!({"value": 0.04})),
            t("a", "outside", json!({"value": 7.0})),
        ]});
        let now = [
            t(
                "a",
                "spread",
                json!({"value": 12.0, "min": 10.8, "max": 13.0}),
            ),
            t("a", "ratio", json!({"value": 2.15})),
            t("a", "far", json!({"value": 12.0, "min": 11.0, "max": 13.0})),
            // A reference from before ratios had ranges: its value inside
            // this run's range agrees, however far from the median.
            t(
                "a",
                "inside",
                json!({"value": 0.0, "min": -0.1, "max": 0.2}),
            ),
            t(
                "a",
                "outside",
                json!({"value": 37.0, "min": 20.0, "max": 50.0}),
            ),
            t("a", "new", json!({"value": 1.0})),
        ];
        let (md, j) = compare(&now, &reference, "ref.json");
        let agree: Vec<Value> = j["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["agree"].clone())
            .collect();
        assert_eq!(
            agree,
            vec![
                json!(true),
                json!(true),
                json!(false),
                json!(true),
                json!(false),
                Value::Null
            ]
        );
        assert_eq!(
            (j["agree"].clone(), j["differ"].clone()),
            (json!(3), json!(2))
        );
        assert!(
            md.contains("| a | far | 10.000 (9.500–10.500) | 12.000 (11.000–13.000) | **no** |")
        );
        assert!(md.contains("(new) met"));
        // One table: from its header to its last row, every line a row.
        let table: Vec<&str> = md
            .lines()
            .skip_while(|l| !l.starts_with("| part |"))
            .take_while(|l| !l.is_empty())
            .collect();
        assert!(table.iter().all(|l| l.starts_with('|')), "{md}");
        assert!(table.iter().any(|l| l.starts_with("| a | far |")), "{md}");
    }

    #[test]
    fn a_verdict_that_changed_is_shown() {
        let reference = json!({"targets": [t("a", "x", json!({"value": 1.0}))]});
        let mut now = t("a", "x", json!({"value": 1.0}));
        now["verdict"] = json!("MISSED");
        let (md, _) = compare(&[now], &reference, "r");
        assert!(md.contains("**met → MISSED**"));
    }
}
