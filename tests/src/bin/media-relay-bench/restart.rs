//! Reliability: what a daemon crash, a restart and an upgrade cost the
//! calls in progress.
//!
//! Per run: a fresh bed, media-relay in XDP native mode, `CALLS` calls set
//! up over ng, RTP A → B on every call at 50 packets/s (G.711 at 20 ms)
//! from the socket generator, counted per stream by the socket sink. A
//! while into the run the daemon is disrupted — `kill -9`, or SIGTERM
//! (what `systemctl restart` and a package upgrade do) — and started
//! again on the same pins; the run goes on until every stream has carried
//! seconds of media after the adoption. Lost = sent − distinct received.
//! Adoption = from the new process's start until it answers ng (the calls
//! are adopted before the ng socket opens). [`MIN_RUNS`] runs per kind of
//! disruption; then the adoption time at scale: the most calls one port
//! range holds on ports of their own ([`MIN_RUNS`] restarts back to back),
//! and 100 000 calls on shared ports ([`Adoptions`]: [`SPREAD_RUNS`]
//! restarts spread over the bench).

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use media_relay_tests::{
    Bed, BedOptions,
    bed::{A_V4, B_V4},
    cpu,
    daemon::{Daemon, NgClient},
    paths::offer_answer,
    socket_load::{Flow, GenConfig, Generator, Sink, SinkConfig},
};
use serde_json::json;

use crate::figure::{Derived, Figure, MIN_RUNS, SPREAD_RUNS, Verdict, group, target};

/// Calls carrying media through the disruption.
const CALLS: u32 = 1000;
/// Packets per second per stream.
const PPS: f64 = 50.0;

#[derive(Clone, Copy, PartialEq)]
enum Disruption {
    Kill,
    Restart,
    /// SIGTERM, then a start of a program that differs (another
    /// `PROGRAM_STAMP`): swapped into the pinned links in place.
    Upgrade,
}

impl Disruption {
    fn label(self) -> &'static str {
        match self {
            Self::Kill => "kill -9, then start",
            Self::Restart => "SIGTERM, then start (restart)",
            Self::Upgrade => "SIGTERM, then start of another program (upgrade)",
        }
    }
}

struct Run {
    sent: u64,
    lost: u64,
    /// From the start to answering ng.
    adoption: Duration,
    /// The daemon's own figure for adopting the calls.
    adopt_only: Duration,
    rss_before_kib: u64,
    rss_after_kib: u64,
}

/// How the calls hold their ports.
#[derive(Clone, Copy, PartialEq)]
enum Ports {
    /// A port pair of its own per call leg (the default).
    Own,
    /// `--port-sharing` on [`SHARED_RANGE`]: many calls per pair, told
    /// apart by the remote endpoint.
    Shared,
}

/// The port range of the shared-ports runs: 4 000 pairs, 8 000 sockets —
/// 100 000 calls at 50 legs a pair, within this host's descriptors.
const SHARED_RANGE: (&str, &str) = ("2000", "9999");

/// Calls at scale in port-sharing mode (the figure).
const SHARED_SCALE_CALLS: u32 = 100_000;

/// Calls of the adoption at scale on shared ports in this run.
fn shared_calls(quick: bool) -> u32 {
    if quick { 10_000 } else { SHARED_SCALE_CALLS }
}

/// Call `i`'s SDP endpoint on a side whose first address is `base`
/// (distinct for every call: another address every 50 000 calls).
fn endpoint(base: Ipv4Addr, first_port: u16, i: u32) -> SocketAddr {
    let ip = Ipv4Addr::from(u32::from(base) + i / 50_000);
    SocketAddr::new(ip.into(), first_port + (i % 50_000) as u16)
}

/// The daemon on a fresh bed with `calls` calls; where A sends for each.
fn setup(calls: u32, ports: Ports) -> anyhow::Result<(Bed, Daemon, Vec<SocketAddr>)> {
    let bed = Bed::new(BedOptions {
        peer_xdp: true,
        static_neighbours: false,
    })?;
    let (port_min, port_max) = match ports {
        Ports::Own => ("2000", "65000"),
        Ports::Shared => SHARED_RANGE,
    };
    let mut args = vec![
        "-i",
        "ra",
        "-i",
        "rb",
        "--xdp-mode",
        "native",
        "--port-min",
        port_min,
        "--port-max",
        port_max,
        "--max-flows",
        "524288",
        "--learning-window",
        "1",
        // No call times out while 100 000 are set up without media.
        "--timeout",
        "86400",
    ];
    if ports == Ports::Shared {
        args.push("--port-sharing");
    }
    let daemon = Daemon::start(crate::files(), &bed.relay, &args)?;
    let ng = NgClient::new(&bed.relay, daemon.ng)?;
    let mut a_to = Vec::with_capacity(calls as usize);
    let started = Instant::now();
    for i in 0..calls {
        let (ato, _) = offer_answer(
            &ng,
            &format!("restart-{i}"),
            endpoint(A_V4, 10_000, i),
            endpoint(B_V4, 10_000, i),
            &[],
        )
        .with_context(|| format!("setting up call {i} of {calls}"))?;
        a_to.push(ato);
        if (i + 1) % 20_000 == 0 {
            eprintln!(
                "    {} calls set up ({:.0} s)",
                group(f64::from(i + 1)),
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok((bed, daemon, a_to))
}

fn one_run(how: Disruption, secs: f64) -> anyhow::Result<Run> {
    let (bed, mut daemon, a_to) = setup(CALLS, Ports::Own)?;
    let flows: Vec<Flow> = a_to
        .iter()
        .enumerate()
        .map(|(i, to)| Flow {
            src: endpoint(A_V4, 10_000, i as u32),
            dst: *to,
            ssrc: 0x7e57_0000 + i as u32,
        })
        .collect();
    let sink_flows: Vec<Flow> = flows
        .iter()
        .enumerate()
        .map(|(i, f)| Flow {
            dst: endpoint(B_V4, 10_000, i as u32),
            ..*f
        })
        .collect();
    let mut generator = Generator::bind(Some(&bed.a), &flows)?;
    let sink = Sink::bind(Some(&bed.b), &sink_flows)?;
    // Latch every stream and let the learning window close.
    generator.run(&GenConfig {
        rate: Some(20_000.0),
        count: 3 * u64::from(CALLS),
        duration: Duration::from_secs(2),
        ..GenConfig::default()
    })?;
    std::thread::sleep(Duration::from_millis(1500));
    sink.drain();
    let rate = PPS * f64::from(CALLS);
    let count = (rate * secs) as u64;
    let done = AtomicBool::new(false);
    let rss_before_kib = daemon.rss_kib();
    let (g, r, adoption) = std::thread::scope(|s| -> anyhow::Result<_> {
        let h = s.spawn(|| {
            sink.run(
                &SinkConfig {
                    expected: Some(count),
                    max_duration: Duration::from_secs_f64(secs * 1.5 + 5.0),
                    idle: Duration::from_millis(500),
                    grace: Duration::from_secs(2),
                    realtime: true,
                    cpu: Some(cpu::SINK),
                    ..SinkConfig::default()
                },
                &done,
            )
        });
        let g = s.spawn(|| {
            let g = generator.run(&GenConfig {
                rate: Some(rate),
                count,
                duration: Duration::from_secs_f64(secs * 1.5),
                realtime: true,
                cpu: Some(cpu::GENERATOR),
                ..GenConfig::default()
            });
            done.store(true, Ordering::Release);
            g
        });
        // A third of the way in: the disruption; a second later, the start.
        std::thread::sleep(Duration::from_secs_f64(secs / 3.0));
        match how {
            Disruption::Kill => daemon.kill()?,
            Disruption::Restart | Disruption::Upgrade => {
                daemon.stop()?;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        let adoption = if matches!(how, Disruption::Upgrade) {
            daemon.restart_with_env("MEDIA_RELAY_PROGRAM_STAMP", "6833942297869058050")?
        } else {
            daemon.restart()?
        };
        let g = g.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        let r = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        Ok((g, r, adoption))
    })?;
    let rss_after_kib = daemon.rss_kib();
    let adopt_only = daemon
        .adoption_time()
        .context("the restarted daemon logged no adoption")?;
    drop((daemon, bed));
    Ok(Run {
        sent: g.sent,
        lost: g.sent.saturating_sub(r.unique()),
        adoption,
        adopt_only,
        rss_before_kib,
        rss_after_kib,
    })
}

/// Whether `RESTART_PARTS` (comma-separated: `disruptions`, `own`,
/// `shared`; all when unset) selects `part`.
fn selected(part: &str) -> bool {
    std::env::var("RESTART_PARTS").map_or(true, |p| p.split(',').any(|p| p == part))
}

/// One measurement of adoption at scale.
struct Adoption {
    /// The daemon's own figure for adopting the calls.
    took: Duration,
    /// From the start to answering ng: reading the pinned maps, then
    /// adopting.
    answering: Duration,
    /// Then binding their sockets in the background.
    /// `None`: bound during adoption (shared pairs: a few sockets each).
    bound: Option<Duration>,
    /// Calls it says it adopted.
    adopted: u64,
    rss_kib: u64,
}

/// `calls` calls set up once, then [`MIN_RUNS`] times: `kill -9`, start
/// again on the same pins, the adoption time.
fn adoption_at_scale(calls: u32, ports: Ports) -> anyhow::Result<Vec<Adoption>> {
    let (bed, mut daemon, _) = setup(calls, ports)?;
    let mut runs = Vec::with_capacity(MIN_RUNS);
    for _ in 0..MIN_RUNS {
        daemon.kill()?;
        runs.push(adopt(&bed, &mut daemon, calls)?);
    }
    Ok(runs)
}

/// The adoption of [`SHARED_SCALE_CALLS`] calls on shared ports (the
/// target's figure), [`SPREAD_RUNS`] times spread over the bench like the
/// control plane's runs (`main`): a memory-bound second of work whose
/// speed drifts with the host over minutes (1.5 s in one fresh clone,
/// 2.0 s in the next, each within 0.1 s over its three restarts seconds
/// apart). The calls are set up once, at the first run; between runs no
/// daemon runs (killed, its pins kept, as after a crash), and each run
/// starts one on the pins and times its adoption.
pub struct Adoptions {
    calls: u32,
    /// Dropped daemon first (its pins), then the bed.
    parked: Option<(Daemon, Bed)>,
    runs: Vec<Adoption>,
}

impl Adoptions {
    pub fn new(quick: bool) -> Option<Self> {
        selected("shared").then(|| Self {
            calls: shared_calls(quick),
            parked: None,
            runs: Vec::new(),
        })
    }

    /// One run, unless [`SPREAD_RUNS`] are done.
    pub fn trial(&mut self) -> anyhow::Result<()> {
        if self.runs.len() >= SPREAD_RUNS {
            return Ok(());
        }
        eprintln!(
            "==> restart: adoption of {} calls, shared ports (run {} of {SPREAD_RUNS})",
            group(f64::from(self.calls)),
            self.runs.len() + 1
        );
        let (mut daemon, bed) = match self.parked.take() {
            Some(p) => p,
            None => {
                let (bed, mut daemon, _) = setup(self.calls, Ports::Shared)?;
                daemon.kill()?;
                (daemon, bed)
            }
        };
        self.runs.push(adopt(&bed, &mut daemon, self.calls)?);
        daemon.kill()?;
        self.parked = Some((daemon, bed));
        Ok(())
    }

    /// The runs still missing; then the bed goes.
    fn finish(mut self) -> anyhow::Result<Vec<Adoption>> {
        while self.runs.len() < SPREAD_RUNS {
            self.trial()?;
        }
        Ok(self.runs)
    }
}

/// Start the killed `daemon` on its pins: the adoption's figures; the first
/// and the last call must answer `query` after it.
fn adopt(bed: &Bed, daemon: &mut Daemon, calls: u32) -> anyhow::Result<Adoption> {
    let answering = daemon.restart()?;
    let took = daemon
        .adoption_time()
        .context("the restarted daemon logged no adoption")?;
    let adopted = daemon
        .adopted_calls()
        .context("the restarted daemon's adoption line names no count")?;
    // Adopted calls have their sockets bound after ng answers (a
    // shared pair: two sockets, whatever the calls on it).
    let bound = Some(
        daemon
            .sockets_bound_time(Duration::from_secs(120))
            .context("the restarted daemon did not log its adopted sockets bound within 120 s")?,
    );
    let ng = NgClient::new(&bed.relay, daemon.ng)?;
    for i in [0, calls - 1] {
        ng.ok(&media_user::ng::Value::dict()
            .with("command", "query")
            .with("call-id", format!("restart-{i}").as_str()))
            .with_context(|| format!("query of adopted call restart-{i}"))?;
    }
    let phases = daemon
        .adoption_phases()
        .map_or_else(String::new, |[d, c, p]| {
            format!(" (decoding {d:?}, claiming ports {c:?}, programming routes {p:?})")
        });
    eprintln!(
        "    {adopted} calls adopted in {took:?}{phases} (answering ng {answering:?} after the start), \
         their sockets bound {} later, daemon RSS {} KiB",
        bound.map_or_else(|| "during adoption, not".to_owned(), |b| format!("{b:?}")),
        daemon.rss_kib()
    );
    Ok(Adoption {
        took,
        answering,
        bound,
        adopted,
        rss_kib: daemon.rss_kib(),
    })
}

pub fn run(
    quick: bool,
    machine: &str,
    out: &Path,
    mut adoptions: Option<Adoptions>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let secs = if quick { 4.0 } else { 8.0 };
    let mut md = format!(
        "{CALLS} calls, XDP native, RTP A → B at {PPS:.0} packets/s per call from the socket generator, {secs} s \
         per run; the daemon is disrupted a third of the way in and started again a second later on the same \
         pins. Median (min–max) of {MIN_RUNS} runs.\n\n\
         | disruption | packets sent | lost | start → answering ng | of which adopting the calls | daemon RSS before → after |\n\
         |---|---:|---:|---:|---:|---:|\n"
    );
    let mut parts = Vec::new();
    let mut all_lost = 0;
    let disruptions: &[Disruption] = if selected("disruptions") {
        &[Disruption::Kill, Disruption::Restart, Disruption::Upgrade]
    } else {
        &[]
    };
    for &how in disruptions {
        let mut runs = Vec::new();
        for n in 0..MIN_RUNS {
            eprintln!("==> restart: {} (run {} of {MIN_RUNS})", how.label(), n + 1);
            let r = one_run(how, secs)?;
            eprintln!(
                "    {} sent, {} lost, answering ng {:?} after the start, calls adopted in {:?}",
                r.sent, r.lost, r.adoption, r.adopt_only
            );
            runs.push(r);
        }
        let sent = Figure::new(runs.iter().map(|r| r.sent as f64));
        let lost = Figure::new(runs.iter().map(|r| r.lost as f64));
        let adoption = Figure::new(runs.iter().map(|r| r.adoption.as_secs_f64() * 1000.0));
        let adopt_only = Figure::new(runs.iter().map(|r| r.adopt_only.as_secs_f64() * 1000.0));
        all_lost += runs.iter().map(|r| r.lost).sum::<u64>();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} ms | {} ms | {} → {} KiB |",
            how.label(),
            sent.show_int(),
            lost.show_int(),
            adoption.show(0),
            adopt_only.show(1),
            Figure::new(runs.iter().map(|r| r.rss_before_kib as f64)).show_int(),
            Figure::new(runs.iter().map(|r| r.rss_after_kib as f64)).show_int(),
        );
        parts.push(json!({
            "disruption": how.label(),
            "sent": sent.json(),
            "lost": lost.json(),
            "answering_ng_ms": adoption.json(),
            "adoption_ms": adopt_only.json(),
        }));
    }
    // Own ports: the most calls a port range holds, or the descriptor
    // limit allows (a socket per port, four a call; the daemon raises its
    // soft limit up to the hard one, and beyond only where it may).
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(u64::MAX, |(_, hard)| hard);
    let fd_calls = u32::try_from(hard.saturating_sub(8192) / 4).unwrap_or(u32::MAX);
    let own_calls: u32 = if quick { 2000 } else { 15_000 }.min(fd_calls);
    if own_calls < 15_000 && !quick {
        eprintln!(
            "    note: RLIMIT_NOFILE's hard limit here is {hard}: {own_calls} calls on ports of their own at the most, not 15 000"
        );
        let _ = writeln!(
            md,
            "\nThis host's hard descriptor limit ({hard}, not raisable here) holds the sockets of {} calls on ports of \
             their own, not the 15 000 a port range holds; 100 000 calls are measured with shared ports.",
            group(f64::from(own_calls))
        );
    }
    // Shared ports: the 100 000 calls on one address per side.
    let shared_calls = shared_calls(quick);
    let _ = writeln!(
        md,
        "\nAdoption at scale: the calls set up once, then `kill -9` and a start on the same pins, {MIN_RUNS} times back \
         to back on ports of their own, {SPREAD_RUNS} times on shared ports, spread over the bench when every part \
         runs (no daemon runs between them, its pins kept). \
         *Adoption* is the daemon's own figure for taking the calls back from their records; *answering ng* runs \
         from the start of the process and adds reading the pinned maps (flows, records). The sockets are bound in \
         the background after ng answers (until then the data plane forwards every call and drops what it would \
         pass to the daemon, as while no daemon ran).\n\n\
         | ports | calls | adopted | adoption | answering ng | per call | sockets | bound after | daemon RSS |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut scale_json = Vec::new();
    let mut shared_s = None;
    for (ports, calls, label, sockets) in [
        (
            Ports::Own,
            own_calls,
            "own (2000–65000)",
            u64::from(own_calls) * 4,
        ),
        (
            Ports::Shared,
            shared_calls,
            "shared (2000–9999, `--port-sharing`)",
            // 4 000 pairs on each side's address.
            16_000,
        ),
    ] {
        let runs = match ports {
            Ports::Own if selected("own") => {
                eprintln!(
                    "==> restart: adoption of {} calls, {label}",
                    group(f64::from(calls))
                );
                adoption_at_scale(calls, ports)?
            }
            Ports::Shared if let Some(a) = adoptions.take() => a.finish()?,
            _ => continue,
        };
        let took = Figure::new(runs.iter().map(|r| r.took.as_secs_f64()));
        let answering = Figure::new(runs.iter().map(|r| r.answering.as_secs_f64()));
        let bound = Figure::new(runs.iter().filter_map(|r| r.bound).map(|b| b.as_secs_f64()));
        let bound_text = if runs.iter().any(|r| r.bound.is_none()) {
            "during adoption".to_owned()
        } else {
            format!("{} s", bound.show(3))
        };
        let adopted = Figure::new(runs.iter().map(|r| r.adopted as f64));
        let rss = Figure::new(runs.iter().map(|r| r.rss_kib as f64));
        let per_call_us = took.median() * 1e6 / f64::from(calls);
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} s | {} s | {per_call_us:.1} µs | {} | {bound_text} | {} KiB |",
            group(f64::from(calls)),
            adopted.show_int(),
            took.show(3),
            answering.show(3),
            group(sockets as f64),
            rss.show_int(),
        );
        if ports == Ports::Shared {
            shared_s =
                Some(Derived::of(&took).scaled(f64::from(SHARED_SCALE_CALLS) / f64::from(calls)));
        }
        scale_json.push(json!({
            "ports": label,
            "calls": calls,
            "adopted": adopted.json(),
            "adoption_s": took.json(),
            "answering_ng_s": answering.json(),
            "per_call_us": per_call_us,
            "sockets_bound_s": bound.json(),
            "rss_kib": rss.json(),
        }));
    }
    let lost_verdict = Verdict::of(all_lost == 0);
    let adoption_verdict = if quick {
        Verdict::NotJudged(format!(
            "--quick adopts {} calls only",
            group(f64::from(shared_calls))
        ))
    } else {
        Verdict::of(shared_s.is_some_and(|s| s.value < 2.0))
    };
    let targets = vec![
        target(
            "packets lost on kill -9 / restart / upgrade during calls",
            Some(all_lost as f64),
            "0",
            &lost_verdict,
        ),
        target(
            "adoption of 100 000 calls (shared ports), s",
            shared_s,
            "< 2",
            &adoption_verdict,
        ),
    ];
    print!("## Reliability: restarts during calls\n\n{md}\n");
    let json = json!({
        "machine": machine,
        "calls": CALLS,
        "pps_per_call": PPS,
        "secs_per_run": secs,
        "disruptions": parts,
        "scale": scale_json,
        "targets": targets,
        "markdown": md,
    });
    let path = out.join("restart.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!(
        "report: {} ({:.0} s)\n",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
