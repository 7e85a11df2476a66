//! The data plane alone: native vs generic. The helpers here (test bed
//! with the relay and sink, generator runs) are shared with `scale`.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use media_ebpf::{Flow, FlowKey};
use media_relay_tests::{
    Bed, BedOptions, Relay,
    bed::{A_MAC, A_V4, B_V4, RA_MAC, RA_V4, RB_V4},
    frame::UdpFrame,
    xdp_load::{Generator, Sink},
};
use media_user::dataplane::XdpMode;

use crate::figure::{Figure, MIN_RUNS};

/// First RTP port of the flows the generator spreads over.
pub const FIRST_PORT: u16 = 2000;
/// Ports available for spreading on one address (step 2).
pub const MAX_SPREAD: u32 = 30_000;

pub fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Run {
    pub sent: u64,
    pub delivered: u64,
    pub secs: f64,
}

impl Run {
    pub fn pps(&self) -> f64 {
        self.delivered as f64 / self.secs
    }
    pub fn loss(&self) -> f64 {
        1.0 - self.delivered as f64 / self.sent as f64
    }
}

pub struct Setup {
    pub relay: Relay,
    pub sink: Sink,
    pub bed: Bed,
}

pub fn setup(mode: XdpMode, capacity: u32) -> anyhow::Result<Setup> {
    let bed = Bed::new(BedOptions {
        peer_xdp: false,
        static_neighbours: true,
    })?;
    if mode == XdpMode::Generic {
        // Live frames reach a generic-mode veth only through its NAPI/GRO
        // path (docs/toolchain.md).
        bed.relay.exec("ethtool", &["-K", "ra", "gro", "on"])?;
    }
    let relay = Relay::start(&bed, mode, capacity)?;
    let sink = Sink::attach(&bed.b, "b0", FIRST_PORT, MAX_SPREAD, 2)?;
    Ok(Setup { relay, sink, bed })
}

/// Install `k` flows; the first `min(k, MAX_SPREAD)` are the ones the
/// generator hits (RA_V4:FIRST_PORT + 2i → B_V4:FIRST_PORT + 2i), the rest
/// sit on other local addresses.
fn install(s: &mut Setup, k: u32) -> anyhow::Result<()> {
    for i in 0..k {
        let (local_ip, port) = if i < MAX_SPREAD {
            (RA_V4, FIRST_PORT + 2 * i as u16)
        } else {
            let j = i - MAX_SPREAD;
            (
                Ipv4Addr::new(198, 18, 100 + (j / MAX_SPREAD) as u8, 1),
                FIRST_PORT + 2 * (j % MAX_SPREAD) as u16,
            )
        };
        s.relay.flows_mut().install(
            FlowKey::new(sa(local_ip, port)),
            Flow::new(sa(RB_V4, port), sa(B_V4, port)).with_source(sa(A_V4, 5000)),
        )?;
    }
    Ok(())
}

pub fn measure(s: &Setup, spread: u32, frames: u32) -> anyhow::Result<Run> {
    let frame = UdpFrame::new(
        RA_MAC,
        A_MAC,
        sa(A_V4, 5000),
        sa(RA_V4, FIRST_PORT),
        &[0x80; 172],
    )
    .bytes();
    let generator = Generator::new(&s.bed.a, "a0", frame, spread, 2)?;
    let before = s.sink.packets()?;
    let secs = generator.blast(frames)?;
    // Let in-flight frames land.
    std::thread::sleep(Duration::from_millis(200));
    Ok(Run {
        sent: u64::from(frames),
        delivered: s.sink.packets()? - before,
        secs,
    })
}

/// `reps` runs.
pub fn runs(s: &Setup, spread: u32, frames: u32, reps: usize) -> anyhow::Result<Vec<Run>> {
    (0..reps).map(|_| measure(s, spread, frames)).collect()
}

pub fn run(quick: bool, machine: &str, out: &Path) -> anyhow::Result<()> {
    let frames: u32 = if quick { 300_000 } else { 2_000_000 };
    let reps = MIN_RUNS;
    // Native vs generic, 1 000 flows installed and hit. (Cost vs installed
    // calls is the `scale` part.)
    let mut modes: Vec<(&str, Vec<Run>)> = Vec::new();
    for (name, mode) in [("native", XdpMode::Native), ("generic", XdpMode::Generic)] {
        eprintln!("==> xdp {name}: setting up");
        let mut s = setup(mode, 2048)?;
        install(&mut s, 1000)?;
        // Warm-up, not counted.
        measure(&s, 1000, frames / 10)?;
        let r = runs(&s, 1000, frames, reps)?;
        eprintln!(
            "    {name}: {} pps",
            Figure::new(r.iter().map(Run::pps)).show_int()
        );
        modes.push((name, r));
    }
    let pps = |r: &[Run]| Figure::new(r.iter().map(Run::pps));
    let generic = pps(&modes[1].1).median();
    let mut md = format!(
        "Flows installed through the API, 1 000 hit; {frames} frames per run ({}), \
         172-byte RTP payload, IPv4; median (min–max) of {reps} runs after a warm-up.\n\n\
         | path | forwarded pps | ns/packet | loss | vs generic |\n|---|---:|---:|---:|---:|\n",
        media_relay_tests::xdp_load::generator()
    );
    for (name, r) in &modes {
        let p = pps(r);
        let _ = writeln!(
            md,
            "| XDP {name} | {} | {} | {} % | {:.2}× |",
            p.show_int(),
            Figure::new(r.iter().map(|x| 1e9 / x.pps())).show(0),
            Figure::new(r.iter().map(|x| 100.0 * x.loss())).show(2),
            p.median() / generic
        );
    }
    print!("## XDP data plane\n\n{md}\n");
    let json = serde_json::json!({
        "machine": machine,
        "frames_per_run": frames,
        "reps": reps,
        "modes": modes.iter().map(|(n, r)| serde_json::json!({
            "mode": n,
            "pps": pps(r).json(),
            "loss": Figure::new(r.iter().map(Run::loss)).json(),
        })).collect::<Vec<_>>(),
        "native_over_generic": pps(&modes[0].1).median() / generic,
        "markdown": md,
    });
    let path = out.join("xdp.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("report: {}\n", path.display());
    Ok(())
}
