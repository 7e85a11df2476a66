//! The media daemon driven over ng: offer+answer+delete cycles per second
//! and their latency. (Forwarding through calls set up over ng is the
//! `capacity` part.)

use std::{net::SocketAddr, path::Path, time::Instant};

use media_relay_tests::{
    Bed, BedOptions,
    bed::{A_V4, B_V4},
    daemon::{Daemon, NgClient},
};
use media_user::ng::Value;

use crate::figure::{Figure, SPREAD_RUNS, Verdict, target};

/// Offer from A, answer from B (the benchmark paths' SDP); returns where
/// A sends.
fn offer_answer(ng: &NgClient, id: &str) -> anyhow::Result<SocketAddr> {
    let a = SocketAddr::new(A_V4.into(), 5000);
    let b = SocketAddr::new(B_V4.into(), 6000);
    Ok(media_relay_tests::paths::offer_answer(ng, id, a, b, &[])?.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Setup {
    rate: (f64, f64, f64, f64, f64, usize),
}

/// offer+answer+delete cycles through ng.
fn setup_rate(cycles: usize) -> anyhow::Result<Setup> {
    let bed = Bed::new(BedOptions::default())?;
    let daemon = Daemon::start(
        crate::files(),
        &bed.relay,
        &[
            "-i",
            "ra",
            "-i",
            "rb",
            "--xdp-mode",
            "generic",
            "--port-min",
            "20000",
            "--port-max",
            "59999",
        ],
    )?;
    let ng = NgClient::new(&bed.relay, daemon.ng)?;
    let mut latencies = Vec::with_capacity(cycles);
    let t = Instant::now();
    for i in 0..cycles {
        let id = format!("cycle-{i}");
        let t0 = Instant::now();
        offer_answer(&ng, &id)?;
        latencies.push(t0.elapsed().as_secs_f64() * 1e6);
        ng.ok(&Value::dict()
            .with("command", "delete")
            .with("call-id", id.as_str()))?;
    }
    let secs = t.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(Setup {
        rate: (
            cycles as f64 / secs,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            percentile(&latencies, 0.999),
            latencies.last().copied().unwrap_or(0.0),
            cycles,
        ),
    })
}

/// The ng figures, one run (2 000 cycles on a fresh daemon) at a time: the
/// bench spreads the runs over its whole length (`main`), so that their
/// spread holds the host's drift over a run, not only the seconds between
/// runs back to back.
pub struct Trials {
    cycles: usize,
    runs: usize,
    rate: Figure,
    p50: Figure,
    p99: Figure,
    p999: Figure,
}

impl Trials {
    pub fn new(quick: bool) -> Self {
        Self {
            cycles: if quick { 500 } else { 2000 },
            runs: 0,
            rate: Figure::default(),
            p50: Figure::default(),
            p99: Figure::default(),
            p999: Figure::default(),
        }
    }

    /// One run, unless [`SPREAD_RUNS`] are done.
    pub fn trial(&mut self) -> anyhow::Result<()> {
        if self.runs >= SPREAD_RUNS {
            return Ok(());
        }
        self.runs += 1;
        eprintln!(
            "==> ng: {} offer+answer+delete cycles (run {} of {SPREAD_RUNS})",
            self.cycles, self.runs
        );
        let s = setup_rate(self.cycles)?;
        let (cps, a, b, c, _, _) = s.rate;
        self.rate.push(cps);
        self.p50.push(a);
        self.p99.push(b);
        self.p999.push(c);
        Ok(())
    }

    /// The runs still missing, then `sessions.json`.
    pub fn finish(mut self, machine: &str, out: &Path) -> anyhow::Result<()> {
        while self.runs < SPREAD_RUNS {
            self.trial()?;
        }
        let Self {
            cycles,
            rate,
            p50,
            p99,
            p999,
            ..
        } = self;
        let verdict = Verdict::of(p99.median() < 1000.0);
        let md = format!(
            "ng over loopback, one client, {SPREAD_RUNS} runs of {cycles} offer+answer+delete cycles (a fresh daemon each; \
             spread over the bench's length when every part runs); median (min–max): **{}** cycles/s; offer+answer latency p50 {} µs, \
             p99 {} µs, p99.9 {} µs.\n",
            rate.show_int(),
            p50.show(0),
            p99.show(0),
            p999.show(0),
        );
        print!(
            "## Media sessions over ng\n\n{md}\n(target p99 < 1 ms: {})\n\n",
            verdict.word()
        );
        let json = serde_json::json!({
            "machine": machine,
            "ng": {
                "cycles": cycles,
                "runs": SPREAD_RUNS,
                "cycles_per_sec": rate.json(),
                "offer_answer_us": { "p50": p50.json(), "p99": p99.json(), "p999": p999.json() },
            },
            "targets": [target("ng offer+answer latency p99 (µs)", &p99, "< 1000", &verdict)],
            "markdown": md,
        });
        let path = out.join("sessions.json");
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
        println!("report: {}\n", path.display());
        Ok(())
    }
}
