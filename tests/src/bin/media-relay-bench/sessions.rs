//! The media daemon driven over ng: offer+answer+delete cycles per second
//! and their latency. (Forwarding through calls set up over ng is the
//! `capacity` part.)

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::Instant,
};

use anyhow::Context as _;
use media_relay_tests::{
    Bed, BedOptions,
    bed::{A_V4, B_V4},
    daemon::{Daemon, NgClient},
};
use media_user::ng::Value;

fn sdp(addr: Ipv4Addr, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
}

fn relay_port(reply: &Value) -> anyhow::Result<SocketAddr> {
    let body = reply
        .get("sdp")
        .and_then(Value::as_bytes)
        .context("no sdp")?;
    let info = media_user::sdp::inspect(body)?;
    let m = info.media.first().context("no media")?;
    Ok(SocketAddr::new(m.connection.context("no c=")?, m.port))
}

fn offer_answer(ng: &NgClient, id: &str) -> anyhow::Result<SocketAddr> {
    ng.ok(&Value::dict()
        .with("command", "offer")
        .with("call-id", id)
        .with("from-tag", "a")
        .with("sdp", sdp(A_V4, 5000).as_str()))?;
    let answer = ng.ok(&Value::dict()
        .with("command", "answer")
        .with("call-id", id)
        .with("from-tag", "a")
        .with("to-tag", "b")
        .with("sdp", sdp(B_V4, 6000).as_str()))?;
    relay_port(&answer)
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
