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

pub fn run(quick: bool, machine: &str, out: &Path) -> anyhow::Result<()> {
    let cycles = if quick { 500 } else { 5000 };
    eprintln!("==> ng: {cycles} offer+answer+delete cycles");
    let s = setup_rate(cycles)?;
    let (cps, p50, p99, p999, max, n) = s.rate;
    println!("## Media sessions over ng\n");
    println!("{n} offer+answer+delete cycles over loopback, one client: {cps:.0} cycles/s");
    println!(
        "offer+answer latency: p50 {p50:.0} µs, p99 {p99:.0} µs, p99.9 {p999:.0} µs, max {max:.0} µs (target p99 < 1 ms: {})\n",
        if p99 < 1000.0 { "met" } else { "MISSED" }
    );

    let json = serde_json::json!({
        "machine": machine,
        "ng": { "cycles": n, "cycles_per_sec": cps, "offer_answer_us": { "p50": p50, "p99": p99, "p999": p999, "max": max } },
    });
    let path = out.join("sessions.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("report: {}\n", path.display());
    Ok(())
}
