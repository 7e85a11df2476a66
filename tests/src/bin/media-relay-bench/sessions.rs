//! The media daemon driven over ng: setup rate, and forwarding through
//! real calls in XDP native, XDP generic and userspace (`--xdp-mode off`).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use media_relay_tests::{
    Bed, BedOptions,
    bed::{A_MAC, A_V4, B_V4, RA_MAC, RA_V4},
    daemon::{Daemon, NgClient},
    frame::UdpFrame,
    load::{Generator, Sink},
};
use media_user::ng::Value;

use crate::xdp::Run;

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

struct Forwarding {
    mode: &'static str,
    flat: Run,
}

/// Calls set up through ng; the generator plays A for all of them, flat
/// out. Under overload the delivered rate is the path's capacity (an upper
/// bound of its rate at < 0.1 % loss); a path that shows no loss at the
/// generator's rate forwards at least that much.
fn forwarding(mode: &'static str, calls: u32, frames: u32) -> anyhow::Result<Forwarding> {
    let bed = Bed::new(BedOptions {
        peer_xdp: false,
        static_neighbours: true,
    })?;
    if mode != "native" {
        // Live frames reach a veth without a native XDP program only
        // through its NAPI/GRO path (docs/toolchain.md).
        bed.relay.exec("ethtool", &["-K", "ra", "gro", "on"])?;
    }
    let daemon = Daemon::start(
        &bed.relay,
        &[
            "-i",
            "ra",
            "-i",
            "rb",
            "--xdp-mode",
            mode,
            "--port-min",
            "30000",
            "--port-max",
            "39999",
            "--learning-window",
            "1",
        ],
    )?;
    let ng = NgClient::new(&bed.relay, daemon.ng)?;
    let mut ports = Vec::new();
    for i in 0..calls {
        ports.push(offer_answer(&ng, &format!("fwd-{i}"))?.port());
    }
    let first = ports[0];
    let step = ports.get(1).map_or(2, |p| p - first);
    anyhow::ensure!(
        ports
            .iter()
            .enumerate()
            .all(|(i, p)| usize::from(*p) == usize::from(first) + usize::from(step) * i),
        "relay ports are not evenly spaced: {ports:?}"
    );
    let sink = Sink::attach(&bed.b, "b0", 6000, 1, 2)?;
    let frame = UdpFrame::new(
        RA_MAC,
        A_MAC,
        SocketAddr::new(IpAddr::V4(A_V4), 5000),
        SocketAddr::new(IpAddr::V4(RA_V4), first),
        &[0x80; 172],
    )
    .bytes();
    let generator = Generator::new(&bed.a, "a0", frame, calls, u32::from(step))?;
    // One packet per call first, so every stream latches on A, then let
    // the learning window close.
    generator.blast(calls)?;
    std::thread::sleep(Duration::from_millis(1600));
    let before = sink.packets()?;
    let secs = generator.blast(frames)?;
    // Let in-flight and buffered packets land.
    std::thread::sleep(Duration::from_millis(500));
    let flat = Run {
        sent: u64::from(frames),
        delivered: sink.packets()? - before,
        secs,
    };
    eprintln!(
        "    {mode}: {:.0} pps delivered, loss {:.2} %",
        flat.pps(),
        100.0 * flat.loss()
    );
    drop(daemon);
    Ok(Forwarding { mode, flat })
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

    let calls = 100;
    let frames = if quick { 300_000 } else { 2_000_000 };
    let mut results = Vec::new();
    for mode in ["native", "generic", "off"] {
        eprintln!("==> forwarding through {calls} calls, --xdp-mode {mode}");
        results.push(forwarding(mode, calls, frames)?);
    }
    let user = results
        .iter()
        .find(|r| r.mode == "off")
        .map_or(f64::NAN, |r| r.flat.pps());
    println!(
        "Forwarding through {calls} calls (IPv4, 172-byte RTP payload, {frames} frames offered flat out):\n"
    );
    println!("| path | delivered pps | loss | vs userspace |");
    println!("|---|---:|---:|---:|");
    for r in &results {
        let name = match r.mode {
            "off" => "userspace (--xdp-mode off)",
            "native" => "XDP native",
            _ => "XDP generic",
        };
        println!(
            "| {name} | {:.0} | {:.2} % | {:.1}x |",
            r.flat.pps(),
            100.0 * r.flat.loss(),
            r.flat.pps() / user
        );
    }
    let native = &results[0].flat;
    println!(
        "\nXDP native / userspace: {:.1}x (target ≥ 5x at equal loss: {}). XDP native loses {:.2} % at the \
         generator's rate; the userspace path is saturated ({:.0} % loss), so its figure is its capacity, an \
         upper bound of its rate at < 0.1 % loss: the ratio is a lower bound.\n",
        native.pps() / user,
        if native.pps() / user >= 5.0 {
            "met"
        } else {
            "MISSED"
        },
        100.0 * native.loss(),
        100.0
            * results
                .iter()
                .find(|r| r.mode == "off")
                .map_or(0.0, |r| r.flat.loss()),
    );
    let json = serde_json::json!({
        "machine": machine,
        "ng": { "cycles": n, "cycles_per_sec": cps, "offer_answer_us": { "p50": p50, "p99": p99, "p999": p999, "max": max } },
        "forwarding": results.iter().map(|r| serde_json::json!({
            "mode": r.mode, "sent": r.flat.sent, "delivered": r.flat.delivered,
            "secs": r.flat.secs, "pps": r.flat.pps(), "loss": r.flat.loss(),
        })).collect::<Vec<_>>(),
        "native_over_userspace": native.pps() / user,
    });
    let path = out.join("sessions.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("report: {}\n", path.display());
    Ok(())
}
