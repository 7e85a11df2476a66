//! `media-relay-demo` (run by `cargo xtask demo`): the whole appliance at
//! work on one machine. A carrier and a PBX (SIPp) in network namespaces,
//! `media-relay run --config config/demo.toml` between them, a handful of
//! real calls with audio (G.711 from a pcap, both ways), then a per-call
//! table of what the relay forwarded. Everything it creates is removed on
//! exit, also on failure. Exits non-zero with the reason if any check
//! fails.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use media_relay_tests::{
    Bed, BedOptions, TestDir,
    bed::{A_V4, B_V4, RA_V4},
    daemon::{Daemon, NgClient},
    http,
    sipp::{SippOptions, run_pair},
};
use media_user::{
    cli::{self, CallSummary},
    ng::Value,
};

#[derive(Parser)]
#[command(about = "media-relay end to end: SIPp carrier → media-relay (XDP) → SIPp PBX")]
struct Args {
    /// The configuration media-relay runs with.
    #[arg(long, default_value = "config/demo.toml")]
    config: PathBuf,
    /// Calls to place.
    #[arg(long, default_value_t = 5)]
    calls: u32,
    /// Seconds of audio per call (the pcap lasts 7 s).
    #[arg(long, default_value_t = 7)]
    seconds: u64,
}

const SIP: u16 = 5060;
const CARRIER_MEDIA: u16 = 10_000;
const PBX_MEDIA: u16 = 20_000;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => {
            println!(
                "\ndemo OK: every call connected, media flowed both ways through XDP, nothing lost."
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ndemo FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(n: u32, what: &str) {
    println!("[{n}/5] {what}");
}

fn statistics(ng: &NgClient) -> anyhow::Result<Value> {
    ng.ok(&Value::dict().with("command", "statistics"))?
        .get("statistics")
        .cloned()
        .context("no statistics in the reply")
}

fn xdp_forwarded(stats: &Value) -> i64 {
    let plane = stats.get("media plane");
    ["xdp redirected", "xdp transmitted"]
        .iter()
        .filter_map(|k| plane.and_then(|p| p.get(k)).and_then(Value::as_int))
        .sum()
}

fn run(args: &Args) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the demo creates network namespaces and attaches XDP: run it as root (sudo cargo xtask demo)"
        );
    }
    let config = std::fs::canonicalize(&args.config)
        .with_context(|| format!("configuration {}", args.config.display()))?;
    // The demo's logs (media-relay, SIPp): kept, and their path printed, if
    // it fails.
    let files = TestDir::new("demo")?;
    let result = run_in(args, &config, &files);
    if result.is_err() {
        files.keep();
    }
    result
}

fn run_in(args: &Args, config: &std::path::Path, files: &TestDir) -> anyhow::Result<()> {
    step(
        1,
        "test bed: namespaces carrier (198.18.1.2) | relay (ra 198.18.1.1, rb 198.18.2.1) | pbx (198.18.2.2)",
    );
    let bed = Bed::new(BedOptions {
        peer_xdp: true,
        static_neighbours: false,
    })?;

    step(
        2,
        &format!("media-relay run --config {}", args.config.display()),
    );
    let config_arg = config.to_string_lossy().into_owned();
    let daemon = Daemon::start(files, &bed.relay, &["--config", &config_arg])?;
    let ng = NgClient::new(&bed.relay, daemon.ng)?;
    let stats = statistics(&ng)?;
    let (_, health) = http::get(&bed.relay, "127.0.0.1:9464".parse()?, "/health")
        .context("the demo config serves /health on 127.0.0.1:9464")?;
    println!("      up: {}", health.trim());
    ensure!(
        health.contains("\"status\":\"ok\""),
        "media-relay is not healthy: {health}"
    );
    let _ = stats;

    step(
        3,
        &format!(
            "{} calls carrier → media-relay → PBX, {} s of G.711 audio each way",
            args.calls, args.seconds
        ),
    );
    let mut uas = SippOptions::uas(
        "load_media_uas.xml",
        SocketAddr::new(B_V4.into(), SIP),
        B_V4.into(),
        PBX_MEDIA,
    );
    uas.calls = args.calls;
    uas.trace_msg = false;
    let mut uac = SippOptions::uac(
        "load_media_uac.xml",
        SocketAddr::new(A_V4.into(), SIP),
        SocketAddr::new(RA_V4.into(), SIP),
        A_V4.into(),
        CARRIER_MEDIA,
    );
    uac.calls = args.calls;
    uac.rate = Some(2);
    uac.call_length = Duration::from_secs(args.seconds);
    uac.trace_msg = false;
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let (uas_r, uac_r) = std::thread::scope(|s| {
        s.spawn(|| {
            let progress = NgClient::new(&bed.relay, daemon.ng);
            let Ok(progress) = progress else { return };
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                if let Ok(st) = statistics(&progress) {
                    let calls = st
                        .get("currentstatistics")
                        .and_then(|c| c.get("sessionsown"))
                        .and_then(Value::as_int)
                        .unwrap_or(0);
                    println!(
                        "      t+{:>2}s  calls up {calls}  packets forwarded by XDP {}",
                        started.elapsed().as_secs(),
                        xdp_forwarded(&st)
                    );
                }
            }
        });
        let r = run_pair(
            files,
            &bed.b,
            &uas,
            &bed.a,
            &uac,
            Duration::from_secs(args.seconds + 30 + u64::from(args.calls)),
        );
        done.store(true, Ordering::Relaxed);
        r
    })?;
    uac_r
        .ensure_all_succeeded()
        .context("the carrier's calls")?;
    uas_r.ensure_all_succeeded().context("the PBX's calls")?;
    println!(
        "      SIPp: {} of {} calls completed on both sides",
        uac_r.successful, args.calls
    );

    step(
        4,
        "what the relay forwarded, per call (media-relay calls --ended)",
    );
    let mut client = bed
        .relay
        .enter(|| cli::NgClient::new(daemon.ng))
        .context("ng client in the relay namespace")?;
    // The SIP agent deletes calls on BYE; give the last delete a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let ended = loop {
        let ended = cli::calls(&mut client, 100, true)?;
        if ended.len() >= args.calls as usize || Instant::now() > deadline {
            break ended;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("{}", table(&ended));

    step(5, "data plane and metrics (media-relay stats; /metrics)");
    print!("{}", cli::stats_table(&cli::stats(&mut client)?));
    // /metrics is refreshed every second.
    std::thread::sleep(Duration::from_millis(1100));
    let (_, metrics) = http::get(&bed.relay, "127.0.0.1:9464".parse()?, "/metrics")?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("media_relay_calls_total")
            || l.starts_with("media_relay_sip_calls_total")
            || l.starts_with("media_relay_xdp_packets_total{outcome=\"redirected\"")
            || l.starts_with("media_relay_userspace_packets_total")
    }) {
        println!("      {line}");
    }

    check(&ended, args.calls)?;
    check_metrics(&metrics, &ended, args.calls)
}

/// /metrics agrees with the calls: the SIP agent's dialogs and INVITE
/// answers, the media daemon's calls, and XDP's forwarded packets.
fn check_metrics(m: &str, calls: &[CallSummary], expected: u32) -> anyhow::Result<()> {
    let n = f64::from(expected);
    let xdp: u64 = calls
        .iter()
        .flat_map(|c| &c.legs)
        .map(|l| l.xdp_packets)
        .sum();
    for (what, got, want) in [
        (
            "media_relay_sip_calls_total",
            http::sum(m, "media_relay_sip_calls_total", &[]),
            n,
        ),
        (
            "media_relay_sip_responses_total{method=\"INVITE\",code=\"200\"}",
            http::sum(
                m,
                "media_relay_sip_responses_total",
                &["method=\"INVITE\"", "code=\"200\""],
            ),
            n,
        ),
        (
            "media_relay_calls_total",
            http::sum(m, "media_relay_calls_total", &[]),
            n,
        ),
        (
            "media_relay_xdp_packets_total{outcome=\"redirected\"}",
            http::sum(
                m,
                "media_relay_xdp_packets_total",
                &["outcome=\"redirected\""],
            ),
            xdp as f64,
        ),
    ] {
        // A 200 retransmitted by the PBX is forwarded (and counted) again.
        let retransmissions_allowed = what.contains("responses");
        ensure!(
            (got - want).abs() < 0.5 || (retransmissions_allowed && got > want),
            "/metrics: {what} is {got}, the calls say {want}"
        );
    }
    Ok(())
}

fn table(calls: &[CallSummary]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec![
        "CALL",
        "DURATION",
        "DIRECTION",
        "PACKETS",
        "BYTES",
        "BY XDP",
        "XDP BYTES",
        "LOST",
    ]);
    for (i, c) in calls.iter().enumerate() {
        for (j, leg) in c.legs.iter().enumerate() {
            let direction = if j == 0 {
                "carrier → pbx"
            } else {
                "pbx → carrier"
            };
            t.add_row(vec![
                if j == 0 {
                    format!("#{} {}", i + 1, short(&c.call_id))
                } else {
                    String::new()
                },
                if j == 0 {
                    format!("{:.1}s", c.duration_ms.unwrap_or(0) as f64 / 1000.0)
                } else {
                    String::new()
                },
                direction.to_owned(),
                leg.packets.to_string(),
                leg.bytes.to_string(),
                leg.xdp_packets.to_string(),
                leg.xdp_bytes.to_string(),
                leg.lost.to_string(),
            ]);
        }
    }
    t.to_string()
}

fn short(id: &str) -> String {
    if id.len() > 24 {
        format!("{}…", &id[..24])
    } else {
        id.to_owned()
    }
}

/// The demo's verdict: every call, both directions, through XDP, no loss.
fn check(calls: &[CallSummary], expected: u32) -> anyhow::Result<()> {
    ensure!(
        calls.len() == expected as usize,
        "the relay reports {} ended calls, {expected} were placed",
        calls.len()
    );
    for c in calls {
        ensure!(
            c.legs.len() == 2,
            "call {}: {} legs",
            c.call_id,
            c.legs.len()
        );
        for leg in &c.legs {
            ensure!(
                leg.packets > 0,
                "call {}: no media from {}",
                c.call_id,
                leg.tag
            );
            ensure!(
                leg.xdp_packets * 10 >= leg.packets * 9,
                "call {}: only {} of {} packets from {} went through XDP",
                c.call_id,
                leg.xdp_packets,
                leg.packets,
                leg.tag
            );
            ensure!(
                leg.lost == 0,
                "call {}: {} packets from {} lost before the relay",
                c.call_id,
                leg.lost,
                leg.tag
            );
        }
    }
    Ok(())
}
