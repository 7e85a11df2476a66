//! The data plane's cost of telemetry: XDP native's max pps with the
//! per-stream quality accounting (`FLOW_QUALITY`, `FLOW_RTCP`) on and
//! off.
//!
//! Off is the same program with `CONTROL_NO_QUALITY` set (the daemon's
//! `--no-quality-telemetry`): one object, one branch, so the two differ in
//! exactly the accounting. One bed and one set of `CALLS` calls serve both:
//! between the modes the daemon is stopped and started again on the same
//! pins with the option toggled (it adopts the calls; XDP forwards
//! throughout), and the next trial starts once the adopted calls' sockets
//! are bound. The modes alternate in pairs, the order swapped every other
//! pair (on/off, off/on, on/off), so that drift favours neither. Each run
//! is the capacity method's (flat out; if that lost, the rate search, or
//! for later runs of a mode the refinement from its first run's rate);
//! `--quick`: flat out only, judged when every flat-out trial lost
//! nothing (then it is the method's max pps, the generator's rate through
//! the path: on veth the relay's XDP work runs on the generator's CPU, so
//! the rate moves with the program's cost per packet). The figure judged
//! is the median of each pair's own on/off ratio (neighbours in time:
//! the rates of this machine drift by tens of % over a minute, which
//! a ratio of the two sets' medians would take for a cost); when the
//! pairs' ratios spread more than the 5 % the target is about, it is not
//! measurable.

use std::fmt::Write as _;

use media_relay_tests::{paths::PathKind, xdp_load::Sink};
use serde_json::{Value, json};

use super::{
    RunResult, one_run,
    search::{CALLS, Load, Plan, Rig, Trial, bed_for, bring_up},
};
use crate::figure::{Figure, MIN_RUNS, Verdict, ratio, target};

/// The daemon's option that switches the accounting off.
const OFF_FLAG: &str = "--no-quality-telemetry";
/// Max pps with telemetry / without, at least.
pub const TARGET: f64 = 0.95;

pub struct TelemetryCost {
    on: Vec<RunResult>,
    off: Vec<RunResult>,
    flat_only: bool,
    rebuilds: u32,
}

fn max_pps(runs: &[RunResult]) -> Figure {
    Figure::new(runs.iter().map(|r| r.best.as_ref().map_or(0.0, Trial::pps)))
}

fn cpu(runs: &[RunResult]) -> Figure {
    Figure::new(
        runs.iter()
            .filter_map(|r| r.best.as_ref())
            .map(|b| b.per_mpkt(b.machine_cpu)),
    )
}

impl TelemetryCost {
    /// On / off: the median of each pair's own ratio (two runs that
    /// were neighbours in time, so drift between pairs does not move it;
    /// this machine's rates can drift by tens of % over a minute), or
    /// why it cannot be told.
    fn ratio(&self) -> Result<f64, String> {
        ratio(
            max_pps(&self.on).median(),
            max_pps(&self.off).median(),
            0.0,
            "the max pps without telemetry",
        )?;
        let pairs = self.paired();
        if pairs.runs.is_empty() {
            return Err("no pair has a rate with and without telemetry".into());
        }
        Ok(pairs.median())
    }

    /// Each pair's own on / off (its two runs were neighbours in time).
    fn paired(&self) -> Figure {
        Figure::new(self.on.iter().zip(&self.off).filter_map(|(a, b)| {
            let (a, b) = (a.best.as_ref()?.pps(), b.best.as_ref()?.pps());
            (b > 0.0).then(|| a / b)
        }))
    }

    fn verdict(&self) -> Verdict {
        let all_flat = self.on.iter().chain(&self.off).all(|r| r.flat_ok);
        let pairs = self.paired();
        match self.ratio() {
            Err(e) => Verdict::NotMeasurable(e),
            Ok(_) if self.flat_only && !all_flat => Verdict::NotJudged(
                "--quick measures flat out only, and a flat-out trial lost packets (no rate search)"
                    .into(),
            ),
            // The pairs disagree by more than the cost the target is
            // about: the runs cannot tell it.
            Ok(_) if pairs.runs.len() > 1 && pairs.spread() > 1.0 - TARGET => {
                Verdict::NotMeasurable(format!(
                    "the pairs' own on/off ratios spread {:.3}–{:.3}, more than the {:.0} % the target is about",
                    pairs.min(),
                    pairs.max(),
                    100.0 * (1.0 - TARGET)
                ))
            }
            Ok(r) => Verdict::of(r >= TARGET),
        }
    }

    pub fn target(&self) -> Value {
        let verdict = self.verdict();
        target(
            "XDP native max pps, quality telemetry on / off",
            self.ratio()
                .ok()
                .filter(|_| !matches!(verdict, Verdict::NotMeasurable(_))),
            &format!("≥ {TARGET}"),
            &verdict,
        )
    }

    pub fn markdown(&self, md: &mut String) {
        let (on, off) = (max_pps(&self.on), max_pps(&self.off));
        let _ = write!(
            md,
            "\nCost of telemetry (XDP native, IPv4, the same {CALLS} calls; the daemon restarted with and \
             without `{OFF_FLAG}` between runs, on/off alternating in pairs; median (min–max) of {MIN_RUNS} \
             runs each{}):\n\n\
             | quality telemetry | max pps at < 0.1 % loss | machine CPU s / Mpkt |\n\
             |---|---:|---:|\n\
             | on{} | {} | {} |\n\
             | off{} | {} | {} |\n\n",
            if self.flat_only {
                ", flat out only (--quick)"
            } else {
                ""
            },
            if self.on.iter().all(|r| r.flat_ok) {
                " ¹"
            } else {
                ""
            },
            on.show_int(),
            cpu(&self.on).show(2),
            if self.off.iter().all(|r| r.flat_ok) {
                " ¹"
            } else {
                ""
            },
            off.show_int(),
            cpu(&self.off).show(2),
        );
        let verdict = self.verdict();
        let _ = writeln!(
            md,
            "On / off, max pps, median of each pair's own ratio: {} ({}; target ≥ {TARGET}: {}).",
            match (self.ratio(), &verdict) {
                (Err(e), _) => format!("– ({e})"),
                (Ok(_), Verdict::NotMeasurable(_)) => "–".to_owned(),
                (Ok(r), _) => format!("{r:.3}"),
            },
            self.paired().show(3),
            verdict.sentence(),
        );
        if self.rebuilds > 0 {
            let _ = writeln!(
                md,
                "(The path was set up afresh {} time(s) because streams had stopped.)",
                self.rebuilds
            );
        }
    }

    pub fn json(&self) -> Value {
        let runs = |r: &[RunResult]| {
            r.iter()
                .map(|x| {
                    json!({
                        "flat": x.flat.json(),
                        "flat_out_lossless": x.flat_ok,
                        "trials": x.trials.iter().map(Trial::json).collect::<Vec<_>>(),
                        "best": x.best.as_ref().map(Trial::json),
                    })
                })
                .collect::<Vec<_>>()
        };
        json!({
            "path": PathKind::XdpNative.name(),
            "flat_only": self.flat_only,
            "max_pps_on": max_pps(&self.on).json(),
            "max_pps_off": max_pps(&self.off).json(),
            "cpu_s_per_mpkt_machine_on": cpu(&self.on).json(),
            "cpu_s_per_mpkt_machine_off": cpu(&self.off).json(),
            "ratio_on_off": self.ratio().ok(),
            "paired_ratios": self.paired().json(),
            "rebuilds": self.rebuilds,
            "runs_on": runs(&self.on),
            "runs_off": runs(&self.off),
        })
    }
}

/// Measure it; `quick`: flat out only.
pub fn measure(plan: &Plan, quick: bool) -> anyhow::Result<TelemetryCost> {
    let kind = PathKind::XdpNative;
    eprintln!(
        "==> capacity: cost of telemetry, {} with quality telemetry on and off ({CALLS} calls, IPv4)",
        kind.label()
    );
    let bed = bed_for(kind)?;
    let sink = Sink::attach(&bed.b, "b0", 6000, CALLS, 2)?;
    let (generator, path) = bring_up(&bed, kind, false, &[])?;
    let mut rig = Rig {
        generator,
        path: Some(path),
        bed: &bed,
        sink: &sink,
        kind,
        v6: false,
        rebuilds: 0,
        daemon_args: Vec::new(),
    };
    let warm_up = Load::Flat {
        secs: plan.trial_secs / 4.0,
        max_frames: plan.max_frames / 4,
    };
    let _ = rig.trial(warm_up)?;
    let (mut on, mut off): (Vec<RunResult>, Vec<RunResult>) = (Vec::new(), Vec::new());
    for n in 0..MIN_RUNS {
        let order = if n % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for telemetry in order {
            rig.restart_daemon_with(OFF_FLAG, !telemetry)?;
            // The restarted daemon's first moments (and the path's) are
            // not measured.
            let _ = rig.trial(warm_up)?;
            let runs = if telemetry { &mut on } else { &mut off };
            let first = runs
                .first()
                .and_then(|r| r.best.as_ref())
                .map(Trial::offered);
            let run = one_run(&mut rig, plan, first, quick)?;
            eprintln!(
                "    telemetry {} run {} of {MIN_RUNS}: {}",
                if telemetry { "on " } else { "off" },
                n + 1,
                run.summary()
            );
            runs.push(run);
        }
    }
    let rebuilds = rig.rebuilds;
    drop(rig);
    drop(sink);
    drop(bed);
    Ok(TelemetryCost {
        on,
        off,
        flat_only: quick,
        rebuilds,
    })
}
