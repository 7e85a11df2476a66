//! `--compare <report.json>` (repeatable): this run's targets against the
//! same targets of other runs (a reference kept in the repository, another
//! machine's, yesterday's, two other fresh clones'), to tell whether the
//! runs agree.
//!
//! Two figures agree when their runs' ranges (min–max) overlap: each run
//! of the benchmark says how far its own repetitions spread, and a second
//! run that lands inside that spread reproduces it. A ratio or difference
//! of figures has the range it takes over every pairing of their runs
//! (`figure::Derived`). Where one report has a range and the other a
//! single value (a report from before ratios had ranges), the value agrees
//! if it lies in the range; two single values (a count) agree within
//! [`SINGLE_TOLERANCE`] of the larger. With several reports, a target
//! agrees when every pair of them does. Verdicts are compared too: a
//! target met in one run and missed in another is shown whatever the
//! figures.

use std::fmt::Write as _;

use serde_json::{Value, json};

/// How far apart two single values (no spread) may be and still agree,
/// relative to the larger.
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

/// Whether two targets' figures (their JSON) agree by [`agree`]'s rule;
/// false when either has none.
#[cfg(test)]
pub fn readings_agree(then: &Value, now: &Value) -> bool {
    Reading::of(then)
        .zip(Reading::of(now))
        .is_some_and(|(a, b)| agree(a, b))
}

fn key(t: &Value) -> (String, String) {
    let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    (s("part"), s("name"))
}

/// [`Verdict::NotMeasurable`](crate::figure::Verdict)'s word in a report.
const NOT_MEASURABLE: &str = "not measurable";

fn verdict(t: &Value) -> &str {
    t.get("verdict").and_then(Value::as_str).unwrap_or("?")
}

/// The comparison of `targets` (this run's) with `references` (whole
/// `report.json`s, each with the name it was given): a Markdown section and
/// its JSON.
pub fn compare(targets: &[Value], references: &[(String, Value)]) -> (String, Value) {
    let theirs: Vec<Vec<&Value>> = references
        .iter()
        .map(|(_, r)| {
            r.get("targets")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default()
        })
        .collect();
    let names: Vec<&str> = references.iter().map(|(n, _)| n.as_str()).collect();
    let single = references.len() == 1;
    let mut md = if single {
        format!("## Compared with {}\n\n", names[0])
    } else {
        format!("## Compared with {} other runs\n\n", references.len())
    };
    let _ = writeln!(
        md,
        "Two figures agree when their runs' ranges overlap (a ratio's range: over every pairing of its figures' \
         runs); a single value agrees with a range it lies in, two single values within {:.0} % of the larger.{}\n",
        SINGLE_TOLERANCE * 100.0,
        if single {
            ""
        } else {
            " A target agrees when every pair of runs does."
        }
    );
    md.push_str(
        "A target not measurable in every run is not compared: each run said its figure measures something else \
         (the generator, noise), and whether such figures meet says nothing of the target.\n\n",
    );
    let probe = |r: &Value| {
        r.get("build")
            .and_then(|b| b.get("host_probe"))
            .and_then(crate::host::describe_probe)
            .unwrap_or_else(|| "not measured (a run before the host probe)".to_owned())
    };
    let idle = |r: &Value| {
        r.get("build")
            .and_then(|b| b.get("cpu_idle"))
            .and_then(crate::host::describe_cpu_idle)
            .unwrap_or_else(|| "not recorded (a run before the bench held a wake-up latency: the host's own settings)".to_owned())
    };
    let text = |r: &Value, k: &str, missing: &str| {
        r.get(k)
            .and_then(Value::as_str)
            .unwrap_or(missing)
            .to_owned()
    };
    // Before the table: a line inside it would end it.
    for (i, (name, r)) in references.iter().enumerate() {
        let _ = writeln!(
            md,
            "- {}: {}, generated {}; {}. Host speed: {}. CPU idle: {}.",
            if single {
                "Reference".to_owned()
            } else {
                format!("Run {} ({name})", i + 1)
            },
            text(r, "machine", "an unknown machine"),
            text(r, "generated_at", "at an unknown time"),
            r.get("build").map_or_else(
                || "build not recorded".to_owned(),
                |b| text(b, "summary", "build not recorded")
            ),
            probe(r),
            idle(r)
        );
    }
    let columns = if single {
        "reference".to_owned()
    } else {
        (1..=references.len())
            .map(|i| format!("run {i}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let _ = writeln!(
        md,
        "\n| part | target | {columns} | this run | agree | verdicts |\n|---|---|{}---:|---|---|",
        "---:|".repeat(references.len())
    );
    let mut rows = Vec::new();
    let (mut agreeing, mut differing, mut unmatched, mut unmeasurable) = (0, 0, 0, 0);
    for t in targets {
        let k = key(t);
        let (part, name) = &k;
        let others: Vec<Option<&Value>> = theirs
            .iter()
            .map(|ts| ts.iter().find(|o| key(o) == k).copied())
            .collect();
        let readings: Vec<Option<Reading>> = others
            .iter()
            .map(|o| o.and_then(Reading::of))
            .chain(std::iter::once(Reading::of(t)))
            .collect();
        let present: Vec<Reading> = readings.iter().flatten().copied().collect();
        let never_measurable = verdict(t) == NOT_MEASURABLE
            && others
                .iter()
                .flatten()
                .all(|o| verdict(o) == NOT_MEASURABLE);
        let agrees = (present.len() >= 2 && !never_measurable).then(|| {
            present
                .iter()
                .enumerate()
                .all(|(i, a)| present[i + 1..].iter().all(|b| agree(*a, *b)))
        });
        match agrees {
            Some(true) => agreeing += 1,
            Some(false) => differing += 1,
            None if never_measurable => unmeasurable += 1,
            None => unmatched += 1,
        }
        let mine = verdict(t);
        let verdicts_shown = if others.iter().all(Option::is_none) {
            format!("(new) {mine}")
        } else if others.iter().flatten().all(|o| verdict(o) == mine) {
            mine.to_owned()
        } else {
            let each: Vec<&str> = others
                .iter()
                .map(|o| o.map_or("–", |o| verdict(o)))
                .chain(std::iter::once(mine))
                .collect();
            format!("**{}**", each.join(" → "))
        };
        let _ = writeln!(
            md,
            "| {part} | {name} | {} | {} | {verdicts_shown} |",
            readings
                .iter()
                .map(|r| r.map_or_else(|| "–".to_owned(), Reading::show))
                .collect::<Vec<_>>()
                .join(" | "),
            match agrees {
                Some(true) => "yes",
                Some(false) => "**no**",
                None if never_measurable => "– (not measurable)",
                None => "–",
            }
        );
        let value = |o: Option<&Value>| {
            o.and_then(|o| o.get("value"))
                .cloned()
                .unwrap_or(Value::Null)
        };
        rows.push(json!({
            "part": part,
            "name": name,
            "references": others.iter().map(|o| value(*o)).collect::<Vec<_>>(),
            "value": value(Some(t)),
            "agree": agrees,
            "reference_verdicts": others.iter().map(|o| o.map(verdict)).collect::<Vec<_>>(),
            "verdict": mine,
        }));
    }
    let _ = writeln!(
        md,
        "\n{agreeing} agree, {differing} differ, {unmeasurable} not measurable in every run, {unmatched} without a \
         figure in {}.",
        if single {
            "both runs"
        } else {
            "two runs or more"
        }
    );
    let json = json!({
        "references": names,
        "agree": agreeing,
        "differ": differing,
        "unmatched": unmatched,
        "not_measurable": unmeasurable,
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
        let (md, j) = compare(&now, &[("ref.json".to_owned(), reference)]);
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
        let (md, _) = compare(&[now], &[("r".to_owned(), reference)]);
        assert!(md.contains("**met → MISSED**"));
    }

    #[test]
    fn several_runs_agree_only_when_every_pair_does() {
        let run = |lo: f64, hi: f64, verdict: &str| {
            json!({"targets": [
                t("a", "x", json!({"value": f64::midpoint(lo, hi), "min": lo, "max": hi, "verdict": verdict})),
            ]})
        };
        // 1 overlaps 2 and 2 overlaps this run, but 1 and this run do not
        // meet: a chain is not agreement.
        let refs = [
            ("one".to_owned(), run(1.0, 2.0, "met")),
            ("two".to_owned(), run(1.8, 3.2, "met")),
        ];
        let now = t("a", "x", json!({"value": 3.0, "min": 2.9, "max": 3.1}));
        let (md, j) = compare(std::slice::from_ref(&now), &refs);
        assert_eq!(j["targets"][0]["agree"], json!(false), "{md}");
        assert_eq!(j["differ"], json!(1));
        assert!(md.contains("## Compared with 2 other runs"), "{md}");
        assert!(
            md.contains("| part | target | run 1 | run 2 | this run | agree | verdicts |"),
            "{md}"
        );
        assert!(
            md.contains("| a | x | 1.500 (1.000–2.000) | 2.500 (1.800–3.200) | 3.000 (2.900–3.100) | **no** |"),
            "{md}"
        );
        // Three that overlap pairwise agree; a verdict that moved is shown
        // in run order.
        let refs = [
            ("one".to_owned(), run(2.0, 3.0, "met")),
            ("two".to_owned(), run(2.5, 3.2, "MISSED")),
        ];
        let (md, j) = compare(&[now], &refs);
        assert_eq!(j["targets"][0]["agree"], json!(true), "{md}");
        assert!(md.contains("**met → MISSED → met**"), "{md}");
        // A target only one run has is not judged.
        let (_, j) = compare(
            &[t("a", "y", json!({"value": 1.0}))],
            &[("one".to_owned(), run(1.0, 2.0, "met"))],
        );
        assert_eq!(
            (j["unmatched"].clone(), j["targets"][0]["agree"].clone()),
            (json!(1), Value::Null)
        );
    }

    /// Figures every run called not measurable (the generator's rate,
    /// noise) are not compared, however far apart; one run that measured
    /// it is enough to compare them.
    #[test]
    fn figures_never_measurable_are_not_compared() {
        let with = |v: f64, verdict: &str| {
            t(
                "a",
                "x",
                json!({"value": v, "min": v, "max": v, "verdict": verdict}),
            )
        };
        let refs = [(
            "one".to_owned(),
            json!({"targets": [with(0.88, "not measurable")]}),
        )];
        let (md, j) = compare(&[with(0.66, "not measurable")], &refs);
        assert_eq!(j["targets"][0]["agree"], Value::Null, "{md}");
        assert_eq!(
            (
                j["differ"].clone(),
                j["not_measurable"].clone(),
                j["unmatched"].clone()
            ),
            (json!(0), json!(1), json!(0))
        );
        assert!(md.contains("| – (not measurable) |"), "{md}");
        assert!(
            md.contains("0 differ, 1 not measurable in every run"),
            "{md}"
        );
        let (_, j) = compare(&[with(0.66, "met")], &refs);
        assert_eq!(j["targets"][0]["agree"], json!(false));
    }
}
