//! The cost of port sharing in XDP: 1 000 calls' A→B RTP flows on 150
//! shared ports (75 RTP ports, the flows keyed by local port *and* remote
//! endpoint, `FlowKey::shared`) vs 1 000 calls on 1 000 ports of their own
//! (`FlowKey::new`, any-source key), flows installed through the API as
//! `scale` does. The generator sends every call's packets from the call's
//! own source port to its relay port, round-robin, the same frames in both
//! cases but for the destination port; the sink at B counts in XDP.
//!
//! Latency (p99) is compared end to end, through the daemon: two
//! media-relay daemons (XDP native) with 1 000 calls each, set up over ng,
//! one with `--port-sharing` on ports 40000–40149, one with a pair of its
//! own per call and side; real RTP at a G.711 call's 50 packets/s per call
//! (50 000 pps) from the latency part's socket generator to its sink at B,
//! which takes the kernel's receive timestamps (path latency, see
//! `latency`). Runs alternate between the two.
//!
//! A shared port's packet costs the program two hash lookups (the
//! any-source key misses, the exact key hits) where a port of its own
//! costs one, whatever the number of calls sharing the port: the ratio is
//! that second lookup's price. Runs alternate between the two so that
//! drift favours neither.

use std::{fmt::Write as _, path::Path, time::Duration};

use media_ebpf::{Flow, FlowKey};
use media_relay_tests::{
    bed::{A_MAC, A_V4, B_V4, RA_MAC, RA_V4, RB_V4},
    frame::UdpFrame,
    paths::PathKind,
    xdp_load::Generator,
};
use media_user::dataplane::XdpMode;

use crate::{
    figure::{Figure, MIN_RUNS, Verdict, target},
    latency::{Measured, Rig},
    xdp::{FIRST_PORT, Run, Setup, sa, setup},
};

const CALLS: u16 = 1000;
/// RTP ports of a 150-port range (75 pairs).
const SHARED_RTP_PORTS: u16 = 75;
/// Each call's source port at A: `A_PORT0 + 2 i`.
const A_PORT0: u16 = 10_000;
/// Rounds (each measures both, in alternating order): the difference is
/// one hash lookup, small beside the noise of a shared 2-core machine.
const ROUNDS: usize = if MIN_RUNS > 11 { MIN_RUNS } else { 11 };

/// Relay port of call `i`.
fn relay_port(shared: bool, i: u16) -> u16 {
    if shared {
        FIRST_PORT + 2 * (i % SHARED_RTP_PORTS)
    } else {
        FIRST_PORT + 2 * i
    }
}

/// Replace the flows with `CALLS` calls', shared or not.
fn install(s: &mut Setup, shared: bool) -> anyhow::Result<()> {
    let flows = s.relay.flows_mut();
    let keys: Vec<FlowKey> = flows.keys().copied().collect();
    for k in keys {
        flows.remove(&k)?;
    }
    for i in 0..CALLS {
        let local = sa(RA_V4, relay_port(shared, i));
        let from = sa(A_V4, A_PORT0 + 2 * i);
        let key = if shared {
            FlowKey::shared(local, from)
        } else {
            FlowKey::new(local)
        };
        // Out of a B-side port, to B at FIRST_PORT + 2 i (the sink's).
        let flow = Flow::new(
            sa(RB_V4, relay_port(shared, i)),
            sa(B_V4, FIRST_PORT + 2 * i),
        )
        .with_source(from)
        .rtp();
        flows.install(key, flow)?;
    }
    Ok(())
}

fn generator(s: &Setup, shared: bool) -> anyhow::Result<Generator> {
    let ports: Vec<(u16, u16)> = (0..CALLS)
        .map(|i| (A_PORT0 + 2 * i, relay_port(shared, i)))
        .collect();
    let frame = UdpFrame::new(
        RA_MAC,
        A_MAC,
        sa(A_V4, A_PORT0),
        sa(RA_V4, FIRST_PORT),
        &[0x80; 172],
    )
    .bytes();
    Generator::with_port_list(&s.bed.a, "a0", frame, &ports)
}

fn measure(s: &Setup, g: &Generator, frames: u32) -> anyhow::Result<Run> {
    let before = s.sink.packets()?;
    let secs = g.blast(frames)?;
    std::thread::sleep(Duration::from_millis(200));
    Ok(Run {
        sent: u64::from(frames),
        delivered: s.sink.packets()? - before,
        secs,
    })
}

/// Calls in the latency comparison, each at a G.711 call's 50 packets/s.
const LATENCY_CALLS: u32 = 1000;
const LATENCY_PPS: f64 = 50.0 * LATENCY_CALLS as f64;
/// The shared range: 150 ports, 75 pairs per side.
const SHARED_RANGE: [&str; 5] = [
    "--port-sharing",
    "--port-min",
    "40000",
    "--port-max",
    "40149",
];

/// p99 path latency through the daemon, own ports vs shared: medians and
/// the per-round ratio own / shared (≥ 0.90: sharing costs at most 10 %).
struct Latency {
    own: Vec<Measured>,
    shared: Vec<Measured>,
    secs: f64,
}

impl Latency {
    fn measure(quick: bool) -> anyhow::Result<Self> {
        let secs = if quick { 2.0 } else { 5.0 };
        let rounds = MIN_RUNS.max(if quick { 3 } else { 5 });
        eprintln!(
            "==> sharing: p99 latency, {LATENCY_CALLS} calls at 50 pps each through media-relay (XDP native), \
             on 150 shared ports vs on ports of their own"
        );
        let mut rigs = [
            Rig::with(PathKind::XdpNative, LATENCY_CALLS, &[])?,
            Rig::with(PathKind::XdpNative, LATENCY_CALLS, &SHARED_RANGE)?,
        ];
        // Warm-up, not measured.
        for rig in &mut rigs {
            rig.measure(LATENCY_PPS, 0.5, false)?;
        }
        let mut out = Self {
            own: Vec::new(),
            shared: Vec::new(),
            secs,
        };
        for n in 0..rounds {
            for j in 0..2 {
                let shared = (n + j) % 2 == 1;
                let m = rigs[usize::from(shared)].measure(LATENCY_PPS, secs, false)?;
                eprintln!(
                    "    {} #{n}: {} received of {}, loss {:.3} %, p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs",
                    if shared { "shared" } else { "own ports" },
                    m.report.unique(),
                    m.sent,
                    100.0 * m.loss(),
                    m.p(0.5),
                    m.p(0.99),
                    m.report.max_us(),
                );
                if shared {
                    out.shared.push(m);
                } else {
                    out.own.push(m);
                }
            }
        }
        Ok(out)
    }

    fn p99(runs: &[Measured]) -> Figure {
        Figure::new(runs.iter().map(|m| m.p(0.99)))
    }

    /// Each round's own p99 / shared p99 (higher: sharing cheaper).
    fn ratio(&self) -> Figure {
        Figure::new(
            self.own
                .iter()
                .zip(&self.shared)
                .filter(|(_, s)| s.p(0.99) > 0.0)
                .map(|(o, s)| o.p(0.99) / s.p(0.99)),
        )
    }

    fn markdown(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\nThrough the daemon: {LATENCY_CALLS} calls set up over ng, RTP A → B at 50 packets/s per call \
             ({} pps) from real sockets for {} s per run; p99 is the path latency (B's kernel receive \
             timestamp − send stamp); median (min–max) of {} runs each, alternating, after a warm-up.\n\n\
             | ports | p50 µs | p99 µs | p99.9 µs | loss |\n|---|---:|---:|---:|---:|",
            crate::figure::group(LATENCY_PPS),
            self.secs,
            self.own.len()
        );
        for (name, r) in [
            ("own pair per call and side (20000–59999)", &self.own),
            ("150 shared (40000–40149, `--port-sharing`)", &self.shared),
        ] {
            let f = |q: f64| Figure::new(r.iter().map(|m| m.p(q)));
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} % |",
                f(0.5).show(1),
                f(0.99).show(1),
                f(0.999).show(1),
                Figure::new(r.iter().map(|m| 100.0 * m.loss())).show(3),
            );
        }
        let _ = writeln!(
            md,
            "\nOwn ports / shared p99, each round's own ratio: {} (target ≥ 0.90).",
            self.ratio().show(3)
        );
    }
}

pub fn run(quick: bool, machine: &str, out: &Path) -> anyhow::Result<()> {
    let frames: u32 = if quick { 300_000 } else { 2_000_000 };
    eprintln!("==> sharing: 1 000 calls on 150 shared ports vs on 1 000 ports (XDP native)");
    let mut s = setup(XdpMode::Native, 4096)?;
    let mut runs: [Vec<Run>; 2] = Default::default();
    for n in 0..=ROUNDS {
        for j in 0..2 {
            let shared = (n + j) % 2 == 1;
            install(&mut s, shared)?;
            let g = generator(&s, shared)?;
            let r = measure(&s, &g, frames)?;
            // The first round warms up.
            if n > 0 {
                eprintln!(
                    "    {}: {:.0} pps, loss {:.3} %",
                    if shared { "shared" } else { "own ports" },
                    r.pps(),
                    100.0 * r.loss()
                );
                runs[usize::from(shared)].push(r);
            }
        }
    }
    // The XDP bed goes before the daemons' beds come.
    drop(s);
    let latency = Latency::measure(quick)?;
    let [own, shared] = runs;
    let pps = |r: &[Run]| Figure::new(r.iter().map(Run::pps));
    let ratio = Figure::new(
        shared
            .iter()
            .zip(&own)
            .filter(|(_, o)| o.pps() > 0.0)
            .map(|(s, o)| s.pps() / o.pps()),
    );
    let mut md = format!(
        "1 000 calls' RTP flows installed through the API, every call hit round-robin from its own \
         source port; {frames} frames per run ({}), 172-byte RTP \
         payload, IPv4, XDP native; median (min–max) of {ROUNDS} runs each, alternating, after \
         a warm-up.\n\n\
         | ports | flow key | forwarded pps | ns/packet | loss |\n|---|---|---:|---:|---:|\n",
        media_relay_tests::xdp_load::generator()
    );
    for (name, key, r) in [
        ("1 000 of their own", "local port (1 lookup)", &own),
        (
            "150 shared (75 RTP)",
            "local port + remote endpoint (2 lookups)",
            &shared,
        ),
    ] {
        let _ = writeln!(
            md,
            "| {name} | {key} | {} | {} | {} % |",
            pps(r).show_int(),
            Figure::new(r.iter().map(|x| 1e9 / x.pps())).show(0),
            Figure::new(r.iter().map(|x| 100.0 * x.loss())).show(2),
        );
    }
    let _ = writeln!(
        md,
        "\nShared / own ports, delivered pps, each round's own ratio: {} (target ≥ 0.90).",
        ratio.show(3)
    );
    latency.markdown(&mut md);
    print!("## Port sharing in XDP\n\n{md}\n");
    let judged = |f: &Figure| Verdict::of(f.median() >= 0.90);
    let p99_ratio = latency.ratio();
    let targets = [
        target(
            "port sharing: forwarded pps, 150 shared ports / 1 000 of their own",
            &ratio,
            "≥ 0.90",
            &judged(&ratio),
        ),
        target(
            "port sharing: p99 through the daemon, own ports / 150 shared",
            &p99_ratio,
            "≥ 0.90",
            &judged(&p99_ratio),
        ),
    ];
    let json = serde_json::json!({
        "machine": machine,
        "targets": targets,
        "frames_per_run": frames,
        "calls": CALLS,
        "shared_rtp_ports": SHARED_RTP_PORTS,
        "pps_own_ports": pps(&own).json(),
        "pps_shared": pps(&shared).json(),
        "ratio_shared_over_own": ratio.json(),
        "latency_pps": LATENCY_PPS,
        "p99_us_own_ports": Latency::p99(&latency.own).json(),
        "p99_us_shared": Latency::p99(&latency.shared).json(),
        "p99_ratio_own_over_shared": latency.ratio().json(),
        "markdown": md,
    });
    let path = out.join("sharing.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("report: {}\n", path.display());
    Ok(())
}
