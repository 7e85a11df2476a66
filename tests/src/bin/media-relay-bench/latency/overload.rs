//! The userspace paths at and past their limit, with the socket generator
//! and sink of the latency part (kernel receive timestamps, per-call
//! sequence accounting): media-relay userspace (`--xdp-mode off`) and
//! rtpengine, side by side on the same bed.
//!
//! # Method
//! 1. **Its own maximum**: 1.5 s trials from 25 000 pps up in 25 % steps
//!    while loss stays < 0.1 % and the generator reaches what it is asked
//!    (else the figure is the generator's, a lower bound, and said so).
//! 2. **10, 50 and 90 % of that maximum**: p99 path latency (median of
//!    [`MIN_RUNS`] runs), beside the other relay at the same offered rates.
//! 3. **120 % of it** for 3 s: p99 of what is delivered, loss, loss spread
//!    over the calls (the most and the least a call lost; a call that got
//!    nothing through is starved), packets reordered.
//! 4. **Recovery**: at once after the overload, 1 s at 10 % of the
//!    maximum: recovered if it loses nothing and its p99 is back under the
//!    staleness bound.

use std::fmt::Write as _;

use media_relay_tests::paths::PathKind;
use serde_json::json;

use super::{Measured, Rig};
use crate::figure::{Figure, MIN_RUNS, Verdict, group, target};

/// media-relay's default staleness bound (`userspace-max-delay`), µs.
const BOUND_US: f64 = 5_000.0;
const START_PPS: f64 = 25_000.0;
const CEILING_PPS: f64 = 2_000_000.0;
/// Below this a path is not measured further (its maximum is 0).
const FLOOR_PPS: f64 = 1_000.0;

struct PathResult {
    kind: PathKind,
    max_pps: f64,
    /// The generator could not offer more: `max_pps` is a lower bound.
    generator_bound: bool,
    /// p99 (µs) at 10, 50, 90 % of media-relay's maximum.
    p99_at: Vec<(f64, Figure)>,
    overload: Measured,
    recovery: Measured,
}

/// The most and the least loss of one call (fraction of what it was
/// sent), and how many calls got nothing through.
fn loss_spread(m: &Measured) -> (f64, f64, usize) {
    let flows = &m.report.flows;
    if flows.is_empty() {
        return (0.0, 0.0, 0);
    }
    let per_call = m.sent as f64 / flows.len() as f64;
    let losses: Vec<f64> = flows
        .iter()
        .map(|f| (per_call - f.seq.unique() as f64).max(0.0) / per_call)
        .collect();
    let starved = flows.iter().filter(|f| f.seq.unique() == 0).count();
    let max = losses.iter().copied().fold(0.0, f64::max);
    let min = losses.iter().copied().fold(1.0, f64::min);
    (max, min, starved)
}

fn find_max(rig: &mut Rig) -> anyhow::Result<(f64, bool)> {
    let mut best: f64 = 0.0;
    let mut rate = START_PPS;
    while rate <= CEILING_PPS {
        let m = rig.run(rate, 1.5, false, 0)?;
        if m.offered_pps < 0.95 * rate {
            if m.loss() < 0.001 {
                // The generator's limit, not the path's: a lower bound.
                return Ok((best.max(m.offered_pps), true));
            }
            break;
        }
        if m.loss() < 0.001 {
            best = m.offered_pps;
            rate *= 1.25;
        } else if best == 0.0 && rate > FLOOR_PPS {
            // Not even the first step: search down.
            rate /= 2.0;
        } else {
            break;
        }
    }
    Ok((best, false))
}

fn measure(kind: PathKind, rates: Option<&[f64]>) -> anyhow::Result<PathResult> {
    eprintln!("==> overload: {}", kind.label());
    let mut rig = Rig::new(kind)?;
    let (max_pps, generator_bound) = find_max(&mut rig)?;
    eprintln!(
        "    {} max {} pps{}",
        kind.name(),
        group(max_pps),
        if generator_bound {
            " (the generator's limit)"
        } else {
            ""
        }
    );
    anyhow::ensure!(
        max_pps > 0.0 || rates.is_some(),
        "{} lost more than 0.1 % even at {FLOOR_PPS} pps: see its log in the bench files",
        kind.label()
    );
    let rates: Vec<f64> = rates.map_or_else(
        || [0.1, 0.5, 0.9].iter().map(|f| f * max_pps).collect(),
        <[f64]>::to_vec,
    );
    let mut p99_at = Vec::new();
    for &rate in &rates {
        let mut fig = Figure::default();
        for n in 0..MIN_RUNS {
            fig.push(rig.run(rate, 2.0, false, n as u32)?.p(0.99));
        }
        p99_at.push((rate, fig));
    }
    // rtpengine is overloaded at 120 % of media-relay's maximum (what it
    // is offered elsewhere too), or of its own if that is higher.
    let top = rates.last().map_or(max_pps, |r| r / 0.9).max(max_pps);
    let overload = rig.run(1.2 * top, 3.0, false, 0)?;
    let recovery = rig.run(0.1 * top, 1.0, false, 0)?;
    Ok(PathResult {
        kind,
        max_pps,
        generator_bound,
        p99_at,
        overload,
        recovery,
    })
}

pub fn run(quick: bool, machine: &str, out: &std::path::Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    if quick {
        let targets = vec![target(
            "userspace p99 at 10/50/90 % of its maximum vs rtpengine",
            None::<f64>,
            "<= rtpengine",
            &Verdict::NotJudged("--quick does not run the overload part".into()),
        )];
        let json = json!({"machine": machine, "targets": targets, "markdown": ""});
        std::fs::write(
            out.join("overload.json"),
            serde_json::to_string_pretty(&json)?,
        )?;
        return Ok(());
    }
    let ours = measure(PathKind::Userspace, None)?;
    let rates: Vec<f64> = ours.p99_at.iter().map(|(r, _)| *r).collect();
    let theirs = measure(PathKind::Rtpengine, Some(&rates))?;
    let mut md = String::from(
        "100 calls, socket generator → relay → socket sink, path latency on kernel receive timestamps; \
         rates are fractions of media-relay userspace's own maximum, offered to both relays.\n\n\
         | path | max pps (< 0.1 % loss) | p99 at 10 % | p99 at 50 % | p99 at 90 % | at 120 %: p99 | loss | per-call loss max / min | starved calls | reordered | recovery (1 s at 10 %) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let mut rows = Vec::new();
    for r in [&ours, &theirs] {
        let (max, min, starved) = loss_spread(&r.overload);
        let recovered = r.recovery.loss() == 0.0 && r.recovery.p(0.99) < BOUND_US;
        let _ = writeln!(
            md,
            "| {} | {}{} | {} µs | {} µs | {} µs | {:.0} µs | {:.1} % | {:.1} % / {:.1} % | {starved} | {} | {} (loss {:.2} %, p99 {:.0} µs) |",
            r.kind.label(),
            group(r.max_pps),
            if r.generator_bound { " ¹" } else { "" },
            r.p99_at[0].1.show(0),
            r.p99_at[1].1.show(0),
            r.p99_at[2].1.show(0),
            r.overload.p(0.99),
            100.0 * r.overload.loss(),
            100.0 * max,
            100.0 * min,
            r.overload.report.reordered(),
            if recovered { "yes" } else { "no" },
            100.0 * r.recovery.loss(),
            r.recovery.p(0.99),
        );
        rows.push(json!({
            "path": r.kind.name(),
            "max_pps": r.max_pps,
            "generator_bound": r.generator_bound,
            "p99_us": r.p99_at.iter().map(|(rate, f)| json!({"rate_pps": rate, "p99": f.json()})).collect::<Vec<_>>(),
            "overload": {
                "offered_pps": r.overload.offered_pps,
                "p99_us": r.overload.p(0.99),
                "loss": r.overload.loss(),
                "per_call_loss_max": max,
                "per_call_loss_min": min,
                "starved_calls": starved,
                "reordered": r.overload.report.reordered(),
            },
            "recovery": {"loss": r.recovery.loss(), "p99_us": r.recovery.p(0.99), "recovered": recovered},
        }));
    }
    if ours.generator_bound || theirs.generator_bound {
        md.push_str("\n¹ the generator's limit (it could not offer more): a lower bound.\n");
    }
    let ratio = ours.max_pps / theirs.max_pps;
    let max_verdict = if ours.generator_bound && ratio < 2.0 {
        Verdict::NotMeasurable(format!(
            "the generator reached only {} pps",
            group(ours.max_pps)
        ))
    } else {
        Verdict::of(ratio >= 2.0)
    };
    let p99_ok = ours
        .p99_at
        .iter()
        .zip(&theirs.p99_at)
        .all(|((_, a), (_, b))| a.median() <= b.median());
    let (max, min, starved) = loss_spread(&ours.overload);
    let overload_ok = ours.overload.p(0.99) < BOUND_US && starved == 0;
    let recovered = ours.recovery.loss() == 0.0 && ours.recovery.p(0.99) < BOUND_US;
    let _ = writeln!(
        md,
        "\nmedia-relay userspace / rtpengine max pps: {ratio:.2}× (target ≥ 2×: {}). At 120 % of its maximum \
         media-relay's p99 is {:.0} µs (bound {BOUND_US:.0} µs), per-call loss {:.1}–{:.1} %, {starved} call(s) \
         starved; recovery: {}.",
        max_verdict.sentence(),
        ours.overload.p(0.99),
        100.0 * min,
        100.0 * max,
        if recovered {
            "within 1 s"
        } else {
            "not within 1 s"
        },
    );
    let targets = vec![
        target(
            "userspace max pps at < 0.1 % loss, media-relay / rtpengine",
            Some(ratio),
            ">= 2",
            &max_verdict,
        ),
        target(
            "userspace p99 at 10/50/90 % of its maximum, media-relay <= rtpengine",
            None::<f64>,
            "all three",
            &Verdict::of(p99_ok),
        ),
        target(
            "userspace at 120 % of its maximum: p99 under the staleness bound, no call starved",
            Some(ours.overload.p(0.99)),
            "< 5000 µs, 0 starved",
            &Verdict::of(overload_ok),
        ),
        target(
            "userspace recovery within 1 s after an overload",
            None::<f64>,
            "no loss, p99 under the bound",
            &Verdict::of(recovered),
        ),
    ];
    print!("## The userspace paths at and past their limit\n\n{md}\n");
    let json = json!({
        "machine": machine,
        "paths": rows,
        "targets": targets,
        "markdown": md,
    });
    let path = out.join("overload.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!(
        "report: {} ({:.0} s)\n",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
