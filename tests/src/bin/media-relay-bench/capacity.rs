//! Capacity: the highest rate each forwarding path carries with < 0.1 %
//! loss through the same 100 calls set up over ng (plain kernel
//! forwarding: the same 100 streams sent straight to B), and the CPU it
//! costs per million forwarded packets.
//!
//! Method, per path, on a fresh test bed:
//!
//! 1. Set the path up (`media_relay_tests::paths`), attach `xdp_sink` to B's
//!    veth (counts and drops the 100 streams in XDP) and load `xdp_gen` on
//!    A's veth with the 100 (A's port, where A sends) pairs, so every
//!    stream comes from A's own SDP address and reaches the relay's port
//!    for its call, whatever ports the relay allocated.
//! 2. Send a few packets per call so every stream latches, then wait out
//!    the learning phase.
//! 3. Before every trial, one packet per call: all 100 must arrive. If
//!    not (rtpengine leaves streams dead after an overload), the path is
//!    set up again, so that no trial measures an earlier one's damage.
//! 4. Flat out for a while (BPF_PROG_TEST_RUN, `repeat` = 16 384, again
//!    and again, at normal priority). On veth the first hops' softirq work
//!    runs on the generator's CPU, so the generator is slowed by the path
//!    itself: a flat-out run without loss measures the path's capacity on
//!    this machine.
//! 5. Otherwise search the rate: paced trials (bursts of 0.25 ms worth of
//!    frames from a SCHED_FIFO thread that sleeps in between: load that
//!    arrives on time like a NIC's, whatever the relay does with the
//!    CPUs), starting at the flat-out delivered rate, stepping down while
//!    loss ≥ 0.1 %, up while below, then bisecting; a bounded number of
//!    trials of bounded length. The rate found is tried once more (5 %
//!    lower if it loses now) and that trial is the result. Loss = 1 − delivered / sent, delivered
//!    counted once the sink has gone quiet after the run.
//!
//! CPU: whole-machine busy time from /proc/stat (user + nice + system +
//! irq + softirq + steal, all CPUs) over the trial at the rate found,
//! divided by the packets delivered in it, nothing subtracted. It includes
//! the generator and the sink, which every path pays alike (a generator +
//! sink baseline with nothing forwarded is printed for reference), and XDP
//! work, which on veth is charged to the softirq time of the CPU that sent
//! the frame; and anything else the machine runs meanwhile. Plus the relay
//! process's own utime + stime (/proc/<pid>/stat) when there is a process:
//! XDP paths do their work in softirq, outside it.
//!
//! Then the same method again over IPv6 (issue 6: A at 2001:2:0:1::2, B at
//! 2001:2:0:2::2, `c=IN IP6` SDP, 62-byte generator template), every path;
//! `--quick`: XDP native and plain kernel forwarding, flat out only. In
//! capacity.json under `paths_ipv6`, entries as in `paths` (`max_pps` null
//! when not searched). `CAPACITY_PATHS` selects the paths of both runs.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use media_relay_tests::{
    Bed, BedOptions,
    bed::{A_MAC, A_V4, A_V6, RA_MAC, RA_V4},
    frame::UdpFrame,
    paths::{self, PathKind},
    xdp_load::{Generator, Sink},
};

const CALLS: u32 = 100;
const PAYLOAD: usize = 172;
const A_PORT0: u16 = 5000;
const B_PORT0: u16 = 6000;
/// Loss below which a rate counts as carried.
const MAX_LOSS: f64 = 0.001;

/// Run sizes.
struct Plan {
    /// A trial (flat out or paced) lasts about this long…
    trial_secs: f64,
    /// …within these frame counts.
    min_frames: u64,
    max_frames: u64,
    /// Paced trials per path.
    max_trials: usize,
    /// Stop bisecting when the failing rate is within this factor of the
    /// passing one.
    precision: f64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                trial_secs: 0.4,
                min_frames: 40_000,
                max_frames: 2_000_000,
                max_trials: 4,
                precision: 1.06,
            }
        } else {
            Self {
                // Long enough that what the sockets buffer (a few hundred
                // packets per call) is small next to the trial: a trial of
                // T s at a rate C + x passes when x · T fits the buffers.
                trial_secs: 3.0,
                min_frames: 300_000,
                max_frames: 6_000_000,
                max_trials: 8,
                precision: 1.03,
            }
        }
    }

    fn frames(&self, pps: f64) -> u64 {
        ((pps * self.trial_secs) as u64).clamp(self.min_frames, self.max_frames)
    }
}

/// Busy time of the whole machine, seconds.
fn machine_busy() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(v.len() >= 8, "short cpu line in /proc/stat: {line}");
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Ok(busy as f64 / clock_ticks())
}

/// utime + stime of process `pid` (all its threads), seconds.
fn process_cpu(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("bad /proc/pid/stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line; `rest` starts at field 3.
    let (u, s): (u64, u64) = (f[11].parse()?, f[12].parse()?);
    Ok((u + s) as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf(3) has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// One run.
#[derive(Clone, Debug)]
struct Trial {
    sent: u64,
    delivered: u64,
    secs: f64,
    machine_cpu: f64,
    process_cpu: Option<f64>,
}

impl Trial {
    fn offered(&self) -> f64 {
        self.sent as f64 / self.secs
    }
    fn pps(&self) -> f64 {
        self.delivered as f64 / self.secs
    }
    fn loss(&self) -> f64 {
        1.0 - self.delivered as f64 / self.sent as f64
    }
    fn ok(&self) -> bool {
        self.loss() < MAX_LOSS
    }
    /// CPU seconds per million delivered packets.
    fn per_mpkt(&self, cpu: f64) -> f64 {
        if self.delivered == 0 {
            f64::NAN
        } else {
            cpu / (self.delivered as f64 / 1e6)
        }
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "offered_pps": self.offered(),
            "delivered_pps": self.pps(),
            "loss": self.loss(),
        })
    }
}

/// Wait until the sink has seen no packet for 100 ms (at most 1.5 s):
/// packets queued in the path have landed or are lost.
fn settle(sink: &Sink) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut last = sink.packets()?;
    let mut quiet = 0;
    while quiet < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = sink.packets()?;
        if now == last {
            quiet += 1;
        } else {
            quiet = 0;
            last = now;
        }
    }
    Ok(last)
}

/// What a trial offers.
#[derive(Clone, Copy, Debug)]
enum Load {
    /// Flat out for about `secs`, at most `max_frames`.
    Flat { secs: f64, max_frames: u64 },
    /// `frames` at `pps`.
    Paced { frames: u64, pps: f64 },
}

/// One trial: send, wait for the sink to go quiet, count.
fn run_trial(
    generator: &Generator,
    sink: &Sink,
    pid: Option<u32>,
    load: Load,
) -> anyhow::Result<Trial> {
    let before = sink.packets()?;
    let cpu0 = machine_busy()?;
    let p0 = pid.map(process_cpu).transpose()?;
    let (sent, secs) = match load {
        Load::Flat { secs, max_frames } => generator.blast_for(secs, max_frames, 16_384)?,
        Load::Paced { frames, pps } => generator.pace(frames, pps)?,
    };
    let after = settle(sink)?;
    let cpu1 = machine_busy()?;
    let p1 = pid.map(process_cpu).transpose()?;
    let t = Trial {
        sent,
        delivered: after - before,
        secs,
        machine_cpu: cpu1 - cpu0,
        process_cpu: p0.zip(p1).map(|(a, b)| b - a),
    };
    eprintln!(
        "      {}: offered {:.0} pps, delivered {:.0} pps, loss {:.3} %",
        match load {
            Load::Flat { .. } => "flat out".to_owned(),
            Load::Paced { pps, .. } => format!("paced {pps:.0}"),
        },
        t.offered(),
        t.pps(),
        100.0 * t.loss()
    );
    Ok(t)
}

/// Set `kind` up on `bed` and load the generator with its calls' ports;
/// every stream primed and past the relay's learning phase.
fn bring_up(bed: &Bed, kind: PathKind, v6: bool) -> anyhow::Result<(Generator, paths::Path)> {
    let path = paths::setup_family(crate::files(), bed, kind, CALLS, A_PORT0, B_PORT0, v6)?;
    let dst = path.calls[0].a_to.ip();
    anyhow::ensure!(
        path.calls.iter().all(|c| c.a_to.ip() == dst),
        "{}: A sends to more than one address",
        kind.name()
    );
    let ports: Vec<(u16, u16)> = path
        .calls
        .iter()
        .map(|c| (c.a.port(), c.a_to.port()))
        .collect();
    let generator = Generator::with_port_list(&bed.a, "a0", frame(path.calls[0].a_to)?, &ports)?;
    // A few packets per call so every stream latches, then wait out the
    // learning phase (media-relay: --learning-window 1 s; rtpengine:
    // "delayed" endpoint learning, 3 s).
    generator.blast(3 * CALLS)?;
    let learn = if kind == PathKind::Rtpengine {
        3500
    } else {
        1600
    };
    std::thread::sleep(Duration::from_millis(learn));
    Ok((generator, path))
}

/// A path under test on its bed.
struct Rig<'a> {
    // Dropped before `path`: the generator, then the relay.
    generator: Generator,
    /// `None` only while being set up again.
    path: Option<paths::Path>,
    bed: &'a Bed,
    sink: &'a Sink,
    kind: PathKind,
    /// Over IPv6.
    v6: bool,
    /// Times the path was set up again because streams stopped.
    rebuilds: u32,
}

impl Rig<'_> {
    /// Streams (of `CALLS`) that deliver one packet each.
    fn live_streams(&self) -> anyhow::Result<u64> {
        let mut best = 0;
        for _ in 0..2 {
            let before = self.sink.packets()?;
            self.generator.blast(CALLS)?;
            best = best.max(settle(self.sink)? - before);
            if best >= u64::from(CALLS) {
                break;
            }
        }
        Ok(best)
    }

    /// Before every trial: every call must still forward. rtpengine
    /// leaves some streams dead after an overload (their sockets are
    /// never read again): then set the path up afresh, so that a trial
    /// measures the rate and not the damage an earlier one did.
    fn ensure_live(&mut self) -> anyhow::Result<()> {
        for attempt in 0..3 {
            let live = self.live_streams()?;
            if live >= u64::from(CALLS) {
                return Ok(());
            }
            anyhow::ensure!(
                attempt < 2,
                "{}: only {live} of {CALLS} streams forward after setting the path up again\n{}",
                self.kind.name(),
                self.path
                    .as_ref()
                    .map(paths::Path::log_text)
                    .unwrap_or_default()
            );
            eprintln!(
                "      ({live} of {CALLS} streams still forward after the last trial: setting {} up again)",
                self.kind.name()
            );
            // The old relay goes first: the new one may reuse its ports.
            drop(self.path.take());
            let (generator, path) = bring_up(self.bed, self.kind, self.v6)?;
            self.generator = generator;
            self.path = Some(path);
            self.rebuilds += 1;
        }
        Ok(())
    }

    fn trial(&mut self, load: Load) -> anyhow::Result<Trial> {
        self.ensure_live()?;
        let pid = self.path.as_ref().and_then(paths::Path::pid);
        run_trial(&self.generator, self.sink, pid, load)
    }
}

/// A path's result.
struct Capacity {
    kind: PathKind,
    /// Rate searched (or not needed: flat out lost nothing); false for
    /// `--quick`'s IPv6 runs that lost flat out.
    searched: bool,
    flat: Trial,
    trials: Vec<Trial>,
    /// The fastest trial (flat out or paced) with loss < 0.1 %.
    best: Option<Trial>,
    /// `best` is the flat-out run.
    flat_ok: bool,
    /// `best` held when tried again.
    confirmed: bool,
    rebuilds: u32,
}

impl Capacity {
    fn max_pps(&self) -> f64 {
        self.best.as_ref().map_or(0.0, Trial::pps)
    }
}

/// The pace search (step 4 of the method). A trial passes when it lost
/// < 0.1 % and the generator offered (nearly) the rate asked for; when the
/// generator fell behind, the machine could not carry the rate, but what
/// it carried without loss still counts as a result.
///
/// Then the rate found is tried once more (noise can flatter one trial);
/// if it loses now, 5 % lower. Returns the trials, the best one, and
/// whether the best was reproduced.
fn search(
    rig: &mut Rig,
    plan: &Plan,
    flat: &Trial,
) -> anyhow::Result<(Vec<Trial>, Option<Trial>, bool)> {
    let mut trials: Vec<Trial> = Vec::new();
    let mut best: Option<Trial> = None;
    // Highest passing and lowest failing rate asked for.
    let (mut pass, mut fail): (Option<f64>, Option<f64>) = (None, None);
    let ceiling = flat.offered();
    let mut rate = flat.pps().min(ceiling);
    for _ in 0..plan.max_trials {
        let t = rig.trial(Load::Paced {
            frames: plan.frames(rate),
            pps: rate,
        })?;
        if t.ok() && best.as_ref().is_none_or(|b| t.pps() > b.pps()) {
            best = Some(t.clone());
        }
        if t.ok() && t.offered() >= 0.97 * rate {
            pass = Some(pass.map_or(rate, |p: f64| p.max(rate)));
        } else {
            fail = Some(fail.map_or(rate, |f: f64| f.min(rate)));
        }
        let delivered = t.pps();
        trials.push(t);
        rate = match (pass, fail) {
            // Overloaded: what got through bounds the capacity.
            (None, Some(f)) => (f * 0.85).min(delivered * 0.95),
            (Some(p), None) => {
                if p >= ceiling * 0.97 {
                    break;
                }
                (p * 1.1).min(ceiling)
            }
            (Some(p), Some(f)) => {
                if f <= p * plan.precision {
                    break;
                }
                (p * f).sqrt()
            }
            (None, None) => unreachable!("a trial either passes or fails"),
        };
        anyhow::ensure!(rate >= 1000.0, "rate search went below 1 000 pps");
    }
    let mut confirmed = false;
    if let Some(mut rate) = best.as_ref().map(Trial::offered) {
        for _ in 0..2 {
            let t = rig.trial(Load::Paced {
                frames: plan.frames(rate),
                pps: rate,
            })?;
            let ok = t.ok() && t.offered() >= 0.97 * rate;
            trials.push(t.clone());
            if ok {
                best = Some(t);
                confirmed = true;
                break;
            }
            rate *= 0.95;
        }
    }
    Ok((trials, best, confirmed))
}

/// A's frame to `dst`, from A's address of `dst`'s family.
fn frame(dst: SocketAddr) -> anyhow::Result<Vec<u8>> {
    let src: IpAddr = match dst.ip() {
        IpAddr::V4(_) => A_V4.into(),
        IpAddr::V6(_) => A_V6.into(),
    };
    Ok(UdpFrame::new(
        RA_MAC,
        A_MAC,
        SocketAddr::new(src, A_PORT0),
        dst,
        &[0x80; PAYLOAD],
    )
    .bytes())
}

fn bed_for(kind: PathKind) -> anyhow::Result<Bed> {
    let bed = Bed::new(BedOptions {
        // B's sink is the XDP program native redirects need at b0.
        peer_xdp: false,
        static_neighbours: true,
    })?;
    if kind != PathKind::XdpNative {
        // Live frames reach a veth without a native XDP program only
        // through its NAPI/GRO path (docs/toolchain.md).
        bed.relay.exec("ethtool", &["-K", "ra", "gro", "on"])?;
    }
    Ok(bed)
}

/// Measure `kind` over IPv4 or IPv6; `flat_only`: no rate search when the
/// flat-out run loses (`--quick`'s IPv6 run).
fn measure(kind: PathKind, plan: &Plan, v6: bool, flat_only: bool) -> anyhow::Result<Capacity> {
    eprintln!(
        "==> capacity: {} ({CALLS} calls, {})",
        kind.label(),
        if v6 { "IPv6" } else { "IPv4" }
    );
    let bed = bed_for(kind)?;
    let sink = Sink::attach(&bed.b, "b0", B_PORT0, CALLS, 2)?;
    let (generator, path) = bring_up(&bed, kind, v6)?;
    let mut rig = Rig {
        generator,
        path: Some(path),
        bed: &bed,
        sink: &sink,
        kind,
        v6,
        rebuilds: 0,
    };
    let flat = rig.trial(Load::Flat {
        secs: plan.trial_secs,
        max_frames: plan.max_frames,
    })?;
    let (trials, best, flat_ok, confirmed) = if flat.ok() {
        (Vec::new(), Some(flat.clone()), true, true)
    } else if flat_only {
        (Vec::new(), None, false, false)
    } else {
        let (t, b, c) = search(&mut rig, plan, &flat)?;
        (t, b, false, c)
    };
    match &best {
        Some(b) => eprintln!(
            "    {}: {:.0} pps at {:.3} % loss{}",
            kind.name(),
            b.pps(),
            100.0 * b.loss(),
            if flat_ok {
                " (flat out)"
            } else if confirmed {
                " (reproduced)"
            } else {
                " (NOT reproduced)"
            }
        ),
        None if flat_only => eprintln!(
            "    {}: lost {:.3} % flat out; no rate search (--quick)",
            kind.name(),
            100.0 * flat.loss()
        ),
        None => eprintln!(
            "    {}: no rate with < 0.1 % loss found in {} trials",
            kind.name(),
            trials.len()
        ),
    }
    let rebuilds = rig.rebuilds;
    drop(rig);
    drop(sink);
    drop(bed);
    Ok(Capacity {
        kind,
        searched: flat_ok || !flat_only,
        flat,
        trials,
        best,
        flat_ok,
        confirmed,
        rebuilds,
    })
}

/// Generator + sink with nothing forwarded: `xdp_sink` on the relay's
/// veth counts the frames the generator sends it. The cost every path
/// pays before the relay's own work, at `pps` (paced) and flat out.
fn baseline(plan: &Plan, pps: f64) -> anyhow::Result<(Trial, Trial)> {
    eprintln!("==> capacity: generator + sink baseline (nothing forwarded)");
    let bed = bed_for(PathKind::XdpNative)?;
    let ports: Vec<(u16, u16)> = (0..CALLS as u16)
        .map(|i| (A_PORT0 + 2 * i, B_PORT0 + 2 * i))
        .collect();
    let sink = Sink::attach(&bed.relay, "ra", B_PORT0, CALLS, 2)?;
    let generator = Generator::with_port_list(
        &bed.a,
        "a0",
        frame(SocketAddr::new(RA_V4.into(), B_PORT0))?,
        &ports,
    )?;
    let paced = run_trial(
        &generator,
        &sink,
        None,
        Load::Paced {
            frames: plan.frames(pps),
            pps,
        },
    )?;
    let flat = run_trial(
        &generator,
        &sink,
        None,
        Load::Flat {
            secs: plan.trial_secs,
            max_frames: plan.max_frames,
        },
    )?;
    drop(generator);
    drop(sink);
    drop(bed);
    Ok((paced, flat))
}

fn fmt_pps(v: f64) -> String {
    let s = format!("{v:.0}");
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

/// `a / b`, when `b` was measured.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then_some(a / b)
}

fn times(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("{r:.1}×"))
}

/// One row per path: the capacity table (ratios against `user` and
/// `engine`, the same family's userspace and rtpengine rates).
fn print_table(results: &[Capacity], user: f64, engine: f64) {
    println!(
        "| path | max pps at < 0.1 % loss | loss there | flat out: delivered pps (loss) | CPU s / Mpkt, machine | CPU s / Mpkt, relay process | vs userspace | vs rtpengine |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let b = r.best.as_ref();
        println!(
            "| {}{} | {} | {} | {} ({:.2} %) | {} | {} | {} | {} |",
            r.kind.label(),
            if r.flat_ok { " ¹" } else { "" },
            b.map_or(
                if r.searched {
                    "none found"
                } else {
                    "not searched (--quick)"
                }
                .into(),
                |b| fmt_pps(b.pps())
            ),
            b.map_or("–".into(), |b| format!("{:.3} %", 100.0 * b.loss())),
            fmt_pps(r.flat.pps()),
            100.0 * r.flat.loss(),
            b.map_or("–".into(), |b| format!(
                "{:.2}",
                b.per_mpkt(b.machine_cpu)
            )),
            b.and_then(|b| b.process_cpu.map(|p| b.per_mpkt(p)))
                .map_or("–".into(), |p| format!("{p:.2}")),
            times(ratio(r.max_pps(), user)),
            times(ratio(r.max_pps(), engine)),
        );
    }
}

impl Capacity {
    /// capacity.json entry.
    fn json(&self) -> serde_json::Value {
        let b = self.best.as_ref();
        serde_json::json!({
            "path": self.kind.name(),
            "label": self.kind.label(),
            // null: not searched (--quick IPv6 run that lost flat out).
            "max_pps": (self.best.is_some() || self.searched).then(|| self.max_pps()),
            "loss_at_max": b.map(Trial::loss),
            "flat_out_pps": self.flat.pps(),
            "flat_out_loss": self.flat.loss(),
            "cpu_s_per_mpkt_machine": b.map(|b| b.per_mpkt(b.machine_cpu)),
            "cpu_s_per_mpkt_process": b.and_then(|b| b.process_cpu.map(|p| b.per_mpkt(p))),
            // The flat-out run first, then the paced trials.
            "trials": std::iter::once(&self.flat).chain(&self.trials).map(Trial::json).collect::<Vec<_>>(),
        })
    }
}

pub fn run(quick: bool, machine: &str, out: &Path) -> anyhow::Result<()> {
    let plan = Plan::new(quick);
    let started = Instant::now();
    let mut results = Vec::new();
    // CAPACITY_PATHS=kernel,rtpengine: only these (for working on one).
    for kind in PathKind::ALL {
        if std::env::var("CAPACITY_PATHS").is_ok_and(|p| !p.split(',').any(|p| p == kind.name())) {
            continue;
        }
        results.push(measure(kind, &plan, false, false)?);
    }
    // The IPv6 run, after the IPv4 one: the same method through the same
    // 100 calls, A and B at 2001:2:0:1::2 and 2001:2:0:2::2. --quick: XDP
    // native and plain kernel forwarding, flat out only.
    let mut results_v6 = Vec::new();
    for kind in PathKind::ALL {
        if quick && !matches!(kind, PathKind::XdpNative | PathKind::Kernel) {
            continue;
        }
        if std::env::var("CAPACITY_PATHS").is_ok_and(|p| !p.split(',').any(|p| p == kind.name())) {
            continue;
        }
        results_v6.push(measure(kind, &plan, true, quick)?);
    }
    let by = |k: PathKind| results.iter().find(|r| r.kind == k);
    let max = |k: PathKind| by(k).map_or(0.0, Capacity::max_pps);
    let (native, user, engine) = (
        max(PathKind::XdpNative),
        max(PathKind::Userspace),
        max(PathKind::Rtpengine),
    );
    let (base_paced, base_flat) = baseline(&plan, user.max(100_000.0))?;

    println!(
        "## Capacity: max forwarded pps at < 0.1 % loss ({CALLS} calls over ng, IPv4, {PAYLOAD}-byte RTP payload)\n"
    );
    print_table(&results, user, engine);
    println!(
        "\n¹ lost nothing flat out. On veth the first hops' softirq work runs on the generator's CPU, so \
         the generator goes as fast as the path lets it: the figure is the path's capacity on this \
         machine with the generator sharing a core, not a rate it was held to.\n"
    );
    for r in results.iter().filter(|r| r.best.is_some() && !r.confirmed) {
        println!(
            "{}: its rate did not hold when tried again (nor 5 % lower): the figure is one trial's.\n",
            r.kind.label()
        );
    }
    for r in results.iter().filter(|r| r.rebuilds > 0) {
        println!(
            "{}: set up afresh {} time(s) during the search because some of its {CALLS} streams had stopped \
             forwarding after an overloaded trial (their sockets no longer read).\n",
            r.kind.label(),
            r.rebuilds
        );
    }
    println!(
        "Method: per path, a fresh test bed; {CALLS} calls set up over ng (plain kernel forwarding: the same \
         {CALLS} streams sent straight to B). Load from `xdp_gen` (BPF_PROG_TEST_RUN live frames) on A's \
         veth, every stream from A's own SDP port to the relay's port for its call; counted and dropped \
         by `xdp_sink` in XDP on B's veth. Before every trial one packet per call must get through \
         (else the path is set up again). Flat out for {:.1} s first; if that loses ≥ 0.1 %, paced \
         trials ({:.1} s, at least {} frames; bursts of 0.25 ms worth from a SCHED_FIFO thread, so load \
         arrives on time whatever the relay does with the CPUs) start at the flat-out delivered rate, \
         step down while they lose, then bisect to within {:.0} %, at most {} trials; the rate found \
         is then tried again (if it loses, 5 % lower) and that trial is reported. A trial whose \
         generator fell more than 3 % behind the asked rate does not count as carrying it. CPU per \
         million delivered packets, over the trial at the rate found: machine = all CPUs' \
         user+nice+system+irq+softirq+steal time from /proc/stat, nothing subtracted (generator and sink \
         included; XDP work on veth is charged to the sending CPU's softirq); relay process = its \
         utime+stime from /proc/<pid>/stat (XDP paths work in softirq, outside any process).",
        plan.trial_secs,
        plan.trial_secs,
        plan.min_frames,
        100.0 * (plan.precision - 1.0),
        plan.max_trials
    );
    println!(
        "Baseline, generator + sink with nothing forwarded (`xdp_sink` on the relay's veth): {:.2} CPU s / Mpkt \
         at {} pps paced, {:.2} CPU s / Mpkt flat out ({} pps).\n",
        base_paced.per_mpkt(base_paced.machine_cpu),
        fmt_pps(base_paced.pps()),
        base_flat.per_mpkt(base_flat.machine_cpu),
        fmt_pps(base_flat.pps()),
    );

    let native_ratio = |other: f64| ratio(native, other).filter(|_| native > 0.0);
    let targets = [
        (
            "XDP native / media-relay userspace, max pps at < 0.1 % loss",
            native_ratio(user),
            5.0,
        ),
        (
            "XDP native / rtpengine userspace, max pps at < 0.1 % loss",
            native_ratio(engine),
            10.0,
        ),
    ];
    println!("| target | value | wanted | |");
    println!("|---|---:|---:|---|");
    for (name, value, want) in &targets {
        println!(
            "| {name} | {} | ≥ {want}× | {} |",
            times(*value),
            match value {
                Some(v) if *v >= *want => "met",
                Some(_) => "MISSED",
                None => "MISSED (not measured)",
            }
        );
    }
    if by(PathKind::XdpNative).is_some_and(|n| n.flat_ok) {
        println!(
            "\nXDP native lost nothing at the fastest rate the generator reached through it: its ratios \
             are lower bounds."
        );
    }
    println!();

    let by6 = |k: PathKind| results_v6.iter().find(|r| r.kind == k);
    let max6 = |k: PathKind| by6(k).map_or(0.0, Capacity::max_pps);
    let (native6, user6, engine6) = (
        max6(PathKind::XdpNative),
        max6(PathKind::Userspace),
        max6(PathKind::Rtpengine),
    );
    if !results_v6.is_empty() {
        println!(
            "### IPv6: max forwarded pps at < 0.1 % loss ({CALLS} calls over ng, IPv6, {PAYLOAD}-byte RTP payload)\n"
        );
        print_table(&results_v6, user6, engine6);
        println!(
            "\nThe same method, A at {A_V6} and B at 2001:2:0:2::2 (`c=IN IP6` SDP); vs userspace and \
             vs rtpengine against the IPv6 runs of those paths.{}\n",
            if quick {
                " --quick: XDP native and plain kernel forwarding only, flat out only (no rate search)."
            } else {
                ""
            }
        );
        for r in results_v6
            .iter()
            .filter(|r| r.best.is_some() && !r.confirmed)
        {
            println!(
                "{} (IPv6): its rate did not hold when tried again (nor 5 % lower): the figure is one trial's.\n",
                r.kind.label()
            );
        }
        for r in results_v6.iter().filter(|r| r.rebuilds > 0) {
            println!(
                "{} (IPv6): set up afresh {} time(s) during the search because some of its streams had \
                 stopped forwarding after an overloaded trial.\n",
                r.kind.label(),
                r.rebuilds
            );
        }
        println!(
            "XDP native v6 / media-relay userspace v6, max pps at < 0.1 % loss: {}{}\n",
            times(ratio(native6, user6).filter(|_| native6 > 0.0)),
            if by6(PathKind::XdpNative).is_some_and(|n| n.flat_ok) && user6 > 0.0 {
                " (XDP native lost nothing flat out: a lower bound)"
            } else if user6 > 0.0 {
                ""
            } else {
                " (userspace not measured over IPv6 in this run)"
            }
        );
    }

    let json = serde_json::json!({
        "machine": machine,
        "calls": CALLS,
        "payload": PAYLOAD,
        "paths": results.iter().map(Capacity::json).collect::<Vec<_>>(),
        // The same method over IPv6 (full mode: every path; --quick: XDP
        // native and plain kernel forwarding).
        "paths_ipv6": results_v6.iter().map(Capacity::json).collect::<Vec<_>>(),
        "targets": targets.iter().map(|(name, value, want)| serde_json::json!({
            "name": name,
            "value": value,
            "target": format!("≥ {want}×"),
            "met": value.is_some_and(|v| v >= *want),
        })).collect::<Vec<_>>(),
    });
    let file = out.join("capacity.json");
    std::fs::write(&file, serde_json::to_string_pretty(&json)?)?;
    println!("report: {}\n", file.display());
    eprintln!(
        "==> capacity: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
