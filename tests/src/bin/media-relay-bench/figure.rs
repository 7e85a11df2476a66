//! Repeated measurements and how they are judged.
//!
//! Every headline figure of the benchmark is a [`Figure`]: the same
//! measurement run several times (at least [`MIN_RUNS`], in `--quick` too),
//! reported as its median with the spread (min–max) of the runs, so a
//! reader sees at once how far one run can move it. Targets are judged on
//! medians, and say which of four things they are ([`Verdict`]): met,
//! missed, not judged (this kind of run cannot measure it: `--quick`
//! stopping short of the target, say) or not measurable (a ratio whose
//! denominator is zero, negative, or smaller than the run-to-run noise).

use serde_json::{Value, json};

/// Runs per headline figure, at least.
pub const MIN_RUNS: usize = 3;

/// Runs of the figures that drift with the host over minutes rather than
/// seconds (the control plane's latency, the adoption of calls at scale:
/// scheduling- and memory-bound work on a shared host), spread over the
/// whole bench (`main`), so that a run's own min–max holds that drift.
/// With three runs over 40 minutes, two fresh clones an hour apart still
/// came out with ranges that did not meet (the SIP INVITE's p99 by 15 µs,
/// the adoption by 0.4 s).
pub const SPREAD_RUNS: usize = 5;

/// One figure measured in several runs.
#[derive(Clone, Debug, Default)]
pub struct Figure {
    pub runs: Vec<f64>,
}

impl Figure {
    pub fn new(runs: impl IntoIterator<Item = f64>) -> Self {
        Self {
            runs: runs.into_iter().filter(|x| x.is_finite()).collect(),
        }
    }

    pub fn push(&mut self, x: f64) {
        if x.is_finite() {
            self.runs.push(x);
        }
    }

    /// The median (mean of the middle two for an even count); NaN if empty.
    pub fn median(&self) -> f64 {
        median(&self.runs)
    }

    pub fn min(&self) -> f64 {
        self.runs.iter().copied().fold(f64::NAN, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.runs.iter().copied().fold(f64::NAN, f64::max)
    }

    /// max − min.
    pub fn spread(&self) -> f64 {
        self.max() - self.min()
    }

    /// `{"median", "min", "max", "runs"}`.
    pub fn json(&self) -> Value {
        let n = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
        json!({
            "median": n(self.median()),
            "min": n(self.min()),
            "max": n(self.max()),
            "runs": self.runs,
        })
    }

    /// `12.3 (11.9–12.8)` with `decimals` decimals; `–` if empty.
    pub fn show(&self, decimals: usize) -> String {
        self.show_with(|x| format!("{x:.decimals$}"))
    }

    /// As [`Figure::show`] with whole numbers in groups of three.
    pub fn show_int(&self) -> String {
        self.show_with(group)
    }

    fn show_with(&self, f: impl Fn(f64) -> String) -> String {
        match self.runs.len() {
            0 => "–".to_owned(),
            1 => f(self.median()),
            _ => format!("{} ({}–{})", f(self.median()), f(self.min()), f(self.max())),
        }
    }
}

/// Median of the finite values; NaN if none.
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// `1234567.8` → `1 234 568` (narrow no-break spaces).
pub fn group(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

/// How a target came out.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Met,
    Missed,
    /// This run cannot measure it (e.g. `--quick` stops short of the
    /// target); the reason says why.
    NotJudged(String),
    /// The figure exists but means nothing: a ratio with a denominator
    /// ≤ 0 or within the run-to-run noise; the reason says which.
    NotMeasurable(String),
}

impl Verdict {
    pub fn of(met: bool) -> Self {
        if met { Self::Met } else { Self::Missed }
    }

    pub fn word(&self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "MISSED",
            Self::NotJudged(_) => "not judged",
            Self::NotMeasurable(_) => "not measurable",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::NotJudged(r) | Self::NotMeasurable(r) => Some(r),
            _ => None,
        }
    }

    /// `met (…)`-style text for a line of output.
    pub fn sentence(&self) -> String {
        match self.reason() {
            Some(r) => format!("{}: {r}", self.word()),
            None => self.word().to_owned(),
        }
    }
}

/// A figure worked out from others (a ratio, a difference of two
/// figures): its value from their medians, and its spread, the range it
/// takes over every pairing of their runs (interval arithmetic on their
/// min–max). What two reports are compared within, as a measured
/// figure's spread is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Derived {
    pub value: f64,
    /// `None` where it has none: a denominator whose runs reach zero.
    pub range: Option<(f64, f64)>,
}

impl Derived {
    /// A figure's own median and range.
    pub fn of(f: &Figure) -> Self {
        Self {
            value: f.median(),
            range: Some((f.min(), f.max())),
        }
    }

    /// `a / b`, with the range of every run of `a` over every run of `b`
    /// (none if some run of `b` is not above zero). `value` is `a / b`
    /// whatever its judging ([`ratio`] decides whether it means anything).
    pub fn ratio(a: Self, b: Self) -> Self {
        let range = a.range.zip(b.range).and_then(|((a0, a1), (b0, b1))| {
            (b0 > 0.0).then(|| {
                let q = [a0 / b0, a0 / b1, a1 / b0, a1 / b1];
                (
                    q.into_iter().fold(f64::INFINITY, f64::min),
                    q.into_iter().fold(f64::NEG_INFINITY, f64::max),
                )
            })
        });
        Self {
            value: a.value / b.value,
            range,
        }
    }

    /// `a − b`, ranging from `a`'s lowest run less `b`'s highest to the
    /// other way round.
    pub fn difference(a: Self, b: Self) -> Self {
        Self {
            value: a.value - b.value,
            range: a
                .range
                .zip(b.range)
                .map(|((a0, a1), (b0, b1))| (a0 - b1, a1 - b0)),
        }
    }

    /// Times `k` (> 0), its range alike.
    pub fn scaled(self, k: f64) -> Self {
        Self {
            value: self.value * k,
            range: self.range.map(|(lo, hi)| (lo * k, hi * k)),
        }
    }

    /// No lower than `floor` (a clamped figure's range clamped alike).
    pub fn at_least(self, floor: f64) -> Self {
        Self {
            value: self.value.max(floor),
            range: self.range.map(|(lo, hi)| (lo.max(floor), hi.max(floor))),
        }
    }

    /// The lower of two, and of their ranges' ends.
    pub fn min(self, other: Self) -> Self {
        Self {
            value: self.value.min(other.value),
            range: self
                .range
                .zip(other.range)
                .map(|((a0, a1), (b0, b1))| (a0.min(b0), a1.min(b1))),
        }
    }

    /// `1.23 (0.98–1.51)`; the value alone without a range.
    pub fn show(&self, decimals: usize) -> String {
        match self.range {
            Some((lo, hi)) => format!(
                "{:.decimals$} ({lo:.decimals$}–{hi:.decimals$})",
                self.value
            ),
            None => format!("{:.decimals$}", self.value),
        }
    }
}

/// What a target is judged on: one number, a [`Figure`] (its median,
/// with the runs' spread kept beside it, so that two reports can be
/// compared within it: `--compare`), or a figure [`Derived`] from others
/// (with the spread it takes from theirs).
pub enum Reading<'a> {
    Value(Option<f64>),
    Runs(&'a Figure),
    Derived(Option<Derived>),
}

impl From<Option<Derived>> for Reading<'_> {
    fn from(d: Option<Derived>) -> Self {
        Self::Derived(d)
    }
}

impl From<Option<f64>> for Reading<'_> {
    fn from(v: Option<f64>) -> Self {
        Self::Value(v)
    }
}

impl<'a> From<&'a Figure> for Reading<'a> {
    fn from(f: &'a Figure) -> Self {
        Self::Runs(f)
    }
}

/// A target's JSON: `met` is `true`/`false` when judged, `null` when not;
/// `verdict` one of met, MISSED, not judged, not measurable; `value` the
/// median, with `min`, `max` and `runs` when it is a figure's.
pub fn target<'a>(
    name: &str,
    value: impl Into<Reading<'a>>,
    wanted: &str,
    verdict: &Verdict,
) -> Value {
    let finite = |v: f64| v.is_finite().then_some(v);
    let mut t = json!({
        "name": name,
        "target": wanted,
        "met": match verdict {
            Verdict::Met => Some(true),
            Verdict::Missed => Some(false),
            _ => None,
        },
        "verdict": verdict.word(),
        "reason": verdict.reason(),
    });
    match value.into() {
        Reading::Value(v) => t["value"] = json!(v.and_then(finite)),
        Reading::Runs(f) => {
            t["value"] = json!(finite(f.median()));
            t["min"] = json!(finite(f.min()));
            t["max"] = json!(finite(f.max()));
            t["runs"] = json!(f.runs);
        }
        Reading::Derived(d) => {
            t["value"] = json!(d.map(|d| d.value).and_then(finite));
            if let Some((lo, hi)) = d.and_then(|d| d.range)
                && lo.is_finite()
                && hi.is_finite()
            {
                t["min"] = json!(lo);
                t["max"] = json!(hi);
            }
        }
    }
    t
}

/// `a / b` of two medians, or why it cannot be told: `b` ≤ 0, or `b`
/// smaller than `noise` (the run-to-run spread it is measured against).
pub fn ratio(a: f64, b: f64, noise: f64, what_b: &str) -> Result<f64, String> {
    if !a.is_finite() || !b.is_finite() {
        return Err(format!("{what_b} was not measured"));
    }
    if b <= 0.0 {
        return Err(format!("{what_b} is {b:.1}, not above zero"));
    }
    if b <= noise {
        return Err(format!(
            "{what_b} ({b:.1}) is within the run-to-run spread of what it is measured against ({noise:.1})"
        ));
    }
    Ok(a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let f = Figure::new([3.0, 1.0, 2.0]);
        assert_eq!(f.median(), 2.0);
        assert_eq!((f.min(), f.max(), f.spread()), (1.0, 3.0, 2.0));
        assert_eq!(Figure::new([1.0, 2.0, 3.0, 10.0]).median(), 2.5);
        assert!(Figure::default().median().is_nan());
        assert_eq!(Figure::new([f64::NAN, 4.0]).runs, vec![4.0]);
        assert_eq!(f.show(1), "2.0 (1.0–3.0)");
        assert_eq!(
            Figure::new([1_234_567.0]).show_int(),
            "1\u{202f}234\u{202f}567"
        );
    }

    #[test]
    fn ratios_refuse_meaningless_denominators() {
        assert_eq!(ratio(1.0, 4.0, 0.5, "b"), Ok(0.25));
        assert!(
            ratio(1.0, 0.0, 0.0, "b")
                .unwrap_err()
                .contains("not above zero")
        );
        assert!(ratio(1.0, -3.0, 0.0, "b").is_err());
        assert!(ratio(1.0, 2.0, 5.0, "b").unwrap_err().contains("spread"));
        assert!(ratio(f64::NAN, 2.0, 0.0, "b").is_err());
    }

    #[test]
    fn derived_figures_range_over_every_pairing_of_runs() {
        let a = Derived::of(&Figure::new([2.0, 4.0, 3.0]));
        let b = Derived::of(&Figure::new([1.0, 2.0, 1.5]));
        let r = Derived::ratio(a, b);
        assert_eq!(r.value, 2.0);
        assert_eq!(r.range, Some((1.0, 4.0)));
        // A numerator that crosses zero: its negative end over the smallest
        // denominator.
        let n = Derived::of(&Figure::new([-1.0, 2.0]));
        assert_eq!(Derived::ratio(n, b).range, Some((-1.0, 2.0)));
        // A denominator whose runs reach zero: no range.
        let z = Derived::of(&Figure::new([0.0, 1.0]));
        assert_eq!(Derived::ratio(a, z).range, None);
        let d = Derived::difference(a, b);
        assert_eq!((d.value, d.range), (1.5, Some((0.0, 3.0))));
        let m = a.min(b);
        assert_eq!((m.value, m.range), (1.5, Some((1.0, 2.0))));
        let s = b.scaled(2.0);
        assert_eq!((s.value, s.range), (3.0, Some((2.0, 4.0))));
        let c = Derived::of(&Figure::new([-3.0, 1.0])).at_least(0.0);
        assert_eq!((c.value, c.range), (0.0, Some((0.0, 1.0))));
        assert_eq!(r.show(1), "2.0 (1.0–4.0)");
        let t = target("x", Some(r), "< 2", &Verdict::Missed);
        assert_eq!(
            (&t["value"], &t["min"], &t["max"]),
            (&json!(2.0), &json!(1.0), &json!(4.0))
        );
        let t = target("x", Some(Derived::ratio(a, z)), "< 2", &Verdict::Missed);
        assert!(t.get("min").is_none());
    }

    #[test]
    fn verdicts_in_json() {
        let t = target("x", Some(1.0), "< 2", &Verdict::Met);
        assert_eq!(t["met"], json!(true));
        let t = target(
            "x",
            Some(f64::NAN),
            "< 2",
            &Verdict::NotJudged("quick".into()),
        );
        assert_eq!(t["met"], Value::Null);
        assert_eq!(t["value"], Value::Null);
        assert_eq!(t["verdict"], "not judged");
        assert_eq!(t["reason"], "quick");
        let t = target("x", &Figure::new([3.0, 1.0, 2.0]), "< 2", &Verdict::Missed);
        assert_eq!(
            (&t["value"], &t["min"], &t["max"]),
            (&json!(2.0), &json!(1.0), &json!(3.0))
        );
        assert_eq!(t["runs"], json!([3.0, 1.0, 2.0]));
    }
}
