//! The cost of IPv4 → IPv6 bridging in XDP native: the same daemon
//! carries `CALLS` IPv4 → IPv4 calls, `CALLS` IPv4 → IPv6 calls (the PBX
//! side offered with `address family: IP6`) and `CALLS` IPv6 → IPv6 calls,
//! and one generator per set sends the carrier's side of its calls flat
//! out in turn, the order rotating every round so that drift favours
//! none. IPv6 → IPv6 tells the rewrite's cost from the IPv6 route
//! lookup's, which a bridged packet pays as any IPv6 packet does.
//!
//! On veth the relay's XDP work runs in softirq on the generator's CPU, so
//! the flat-out delivered rate moves with the program's cost per packet:
//! the rounds' ratios are the cost of bridging (`bpf_xdp_adjust_head`, 40
//! bytes of IPv6 header written, the UDP checksum over the new
//! pseudo-header, the IPv6 FIB lookup). Flat out only: no rate search (the
//! capacity method's max pps at < 0.1 % loss is for the paths; this
//! compares one path's kinds of flow). Machine CPU per million delivered
//! packets is shown too.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use media_relay_tests::{
    Bed,
    bed::{A_V4, A_V6, B_V4, B_V6},
    daemon::{Daemon, NgClient},
    paths::{self, PathKind},
    xdp_load::{Generator, Sink},
};
use media_user::ng::Value;
use serde_json::{Value as Json, json};

use super::search::{CALLS, Load, Plan, Trial, bed_for, frame, run_trial};
use crate::figure::{Figure, MIN_RUNS};

const B_PORT0: u16 = 6000;

pub struct BridgingCost {
    same: Vec<Trial>,
    bridged: Vec<Trial>,
    v6: Vec<Trial>,
}

fn pps(t: &[Trial]) -> Figure {
    Figure::new(t.iter().map(Trial::pps))
}

fn cpu(t: &[Trial]) -> Figure {
    Figure::new(t.iter().map(|x| x.per_mpkt(x.machine_cpu)))
}

fn trials(t: &[Trial]) -> Vec<Json> {
    t.iter().map(Trial::json).collect()
}

impl BridgingCost {
    /// Each round's own bridged / `other` delivered rate.
    fn paired(&self, other: &[Trial]) -> Figure {
        Figure::new(
            self.bridged
                .iter()
                .zip(other)
                .filter(|(_, s)| s.pps() > 0.0)
                .map(|(b, s)| b.pps() / s.pps()),
        )
    }

    pub fn markdown(&self, md: &mut String) {
        let loss = |t: &[Trial]| Figure::new(t.iter().map(|x| 100.0 * x.loss())).show(2);
        let _ = writeln!(
            md,
            "\nIPv4 → IPv6 bridging (XDP native, {CALLS} calls of each kind on one daemon, each set \
             flat out in turn, the order rotating every round; median (min–max) of {MIN_RUNS} runs \
             each):\n\n\
             | flows | delivered pps flat out | loss % | machine CPU s / Mpkt |\n\
             |---|---:|---:|---:|"
        );
        for (name, t) in [
            ("IPv4 → IPv4", &self.same),
            ("IPv4 → IPv6 (bridged)", &self.bridged),
            ("IPv6 → IPv6", &self.v6),
        ] {
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} |",
                pps(t).show_int(),
                loss(t),
                cpu(t).show(2)
            );
        }
        let show = |p: Figure| {
            if p.runs.is_empty() {
                "–".to_owned()
            } else {
                p.show(3)
            }
        };
        let _ = writeln!(
            md,
            "\nBridged / same-family, delivered pps, each round's own ratio: vs IPv4 → IPv4 {}, \
             vs IPv6 → IPv6 {}.",
            show(self.paired(&self.same)),
            show(self.paired(&self.v6)),
        );
    }

    pub fn json(&self) -> Json {
        json!({
            "path": PathKind::XdpNative.name(),
            "pps_v4_to_v4": pps(&self.same).json(),
            "pps_bridged_v4_to_v6": pps(&self.bridged).json(),
            "pps_v6_to_v6": pps(&self.v6).json(),
            "cpu_s_per_mpkt_machine_v4_to_v4": cpu(&self.same).json(),
            "cpu_s_per_mpkt_machine_bridged": cpu(&self.bridged).json(),
            "cpu_s_per_mpkt_machine_v6_to_v6": cpu(&self.v6).json(),
            "ratios_vs_v4_to_v4": self.paired(&self.same).json(),
            "ratios_vs_v6_to_v6": self.paired(&self.v6).json(),
            "trials_v4_to_v4": trials(&self.same),
            "trials_bridged": trials(&self.bridged),
            "trials_v6_to_v6": trials(&self.v6),
        })
    }
}

/// `CALLS` calls from A (ports from `a_port0`, over IPv6 if `a_v6`) to B
/// at `B_PORT0`…, over IPv6 if `b_v6`; a generator sending A's side of
/// them.
fn calls(
    bed: &Bed,
    ng: &NgClient,
    (a_v6, b_v6): (bool, bool),
    a_port0: u16,
) -> anyhow::Result<Generator> {
    let extra = if a_v6 != b_v6 {
        vec![(
            "address family",
            Value::from(if b_v6 { "IP6" } else { "IP4" }),
        )]
    } else {
        Vec::new()
    };
    let mut ports = Vec::new();
    let mut dst = None;
    for i in 0..CALLS as u16 {
        let a = if a_v6 {
            SocketAddr::new(A_V6.into(), a_port0 + 2 * i)
        } else {
            SocketAddr::new(A_V4.into(), a_port0 + 2 * i)
        };
        let b = if b_v6 {
            SocketAddr::new(B_V6.into(), B_PORT0 + 2 * i)
        } else {
            SocketAddr::new(B_V4.into(), B_PORT0 + 2 * i)
        };
        let id = format!("bench-{a_v6}-{b_v6}-{i}");
        let (a_to, b_to) = paths::offer_answer(ng, &id, a, b, &extra)?;
        anyhow::ensure!(
            a_to.is_ipv6() == a_v6 && b_to.is_ipv6() == b_v6,
            "{id}: A is told {a_to}, B {b_to}"
        );
        ports.push((a.port(), a_to.port()));
        dst = Some(a_to);
    }
    let dst = dst.ok_or_else(|| anyhow::anyhow!("no calls"))?;
    Generator::with_port_list(&bed.a, "a0", frame(dst)?, &ports)
}

pub fn measure(plan: &Plan) -> anyhow::Result<BridgingCost> {
    eprintln!(
        "==> capacity: IPv4 → IPv6 bridging vs IPv4 → IPv4 and IPv6 → IPv6, {} ({CALLS} calls each)",
        PathKind::XdpNative.label()
    );
    let bed = bed_for(PathKind::XdpNative)?;
    let sink = Sink::attach(&bed.b, "b0", B_PORT0, CALLS, 2)?;
    let daemon = Daemon::start(
        crate::files(),
        &bed.relay,
        &[
            "-i",
            "ra",
            "-i",
            "rb",
            "--xdp-mode",
            "native",
            "--port-min",
            "20000",
            "--port-max",
            "59999",
            "--learning-window",
            "1",
        ],
    )?;
    let ng = NgClient::new(&bed.relay, daemon.ng)?;
    let generators = [
        calls(&bed, &ng, (false, false), 5000)?,
        calls(&bed, &ng, (false, true), 7000)?,
        calls(&bed, &ng, (true, true), 9000)?,
    ];
    // A few packets per call (neighbours, latching), then the learning
    // window.
    for g in &generators {
        g.blast(3 * CALLS)?;
    }
    std::thread::sleep(Duration::from_millis(1600));
    let flat = Load::Flat {
        secs: plan.trial_secs,
        max_frames: plan.max_frames,
    };
    let warm_up = Load::Flat {
        secs: plan.trial_secs / 4.0,
        max_frames: plan.max_frames / 4,
    };
    let pid = Some(daemon.pid());
    for g in &generators {
        let _ = run_trial(g, &sink, pid, warm_up)?;
    }
    let names = ["IPv4 → IPv4", "IPv4 → IPv6", "IPv6 → IPv6"];
    let mut runs: [Vec<Trial>; 3] = Default::default();
    for n in 0..MIN_RUNS {
        for j in 0..3 {
            let k = (n + j) % 3;
            let t = run_trial(&generators[k], &sink, pid, flat)?;
            eprintln!(
                "    {} run {} of {MIN_RUNS}: {:.0} pps delivered, loss {:.3} %",
                names[k],
                n + 1,
                t.pps(),
                100.0 * t.loss()
            );
            runs[k].push(t);
        }
    }
    let [same, bridged, v6] = runs;
    drop(generators);
    drop(daemon);
    drop(sink);
    drop(bed);
    Ok(BridgingCost { same, bridged, v6 })
}
