//! The capacity search on one path: trials (flat out or paced), the rig
//! that keeps a path alive between them, the rate search, and the shorter
//! refinement that repeated runs use. The method is in `mod.rs`.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use media_relay_tests::{
    Bed, BedOptions, Netns,
    bed::{A_MAC, A_V4, A_V6, RA_MAC, RA_V4},
    frame::UdpFrame,
    paths::{self, PathKind},
    xdp_load::{Generator, Sink},
};

use crate::host::{MachineCpu, process_cpu};

pub const CALLS: u32 = 100;
pub const PAYLOAD: usize = 172;
const A_PORT0: u16 = 5000;
const B_PORT0: u16 = 6000;
/// Loss below which a rate counts as carried.
const MAX_LOSS: f64 = 0.001;

/// Run sizes.
pub struct Plan {
    /// A trial (flat out or paced) lasts about this long…
    pub trial_secs: f64,
    /// …within these frame counts.
    pub min_frames: u64,
    pub max_frames: u64,
    /// Paced trials per path.
    pub max_trials: usize,
    /// Stop bisecting when the failing rate is within this factor of the
    /// passing one.
    pub precision: f64,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            // The same search as a full run, with shorter trials: a trial
            // must still be long next to what the paths buffer.
            Self {
                trial_secs: 0.6,
                min_frames: 60_000,
                max_frames: 2_000_000,
                max_trials: 8,
                precision: 1.05,
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

/// One run.
#[derive(Clone, Debug)]
pub struct Trial {
    pub sent: u64,
    pub delivered: u64,
    pub secs: f64,
    pub machine_cpu: f64,
    pub process_cpu: Option<f64>,
    /// Where its lost packets went (a trial on a [`Rig`]).
    pub lost: Option<Lost>,
}

/// Where a trial's lost packets went, as the kernel and media-relay count
/// them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lost {
    /// Refused by the veth into the relay (its queue full).
    pub veth_in: u64,
    /// The relay's sockets' receive buffers overflowing.
    pub rcvbuf: u64,
    /// Sends the relay's kernel refused.
    pub sndbuf: u64,
    /// Dropped on the veth out of the relay.
    pub veth_out: u64,
    /// media-relay's stale drops (waited past `userspace-max-delay`).
    pub stale: Option<u64>,
}

impl Lost {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "veth_in": self.veth_in,
            "receive_buffers": self.rcvbuf,
            "send_errors": self.sndbuf,
            "veth_out": self.veth_out,
            "stale": self.stale,
        })
    }
}

impl Trial {
    pub fn offered(&self) -> f64 {
        self.sent as f64 / self.secs
    }
    pub fn pps(&self) -> f64 {
        self.delivered as f64 / self.secs
    }
    pub fn loss(&self) -> f64 {
        1.0 - self.delivered as f64 / self.sent as f64
    }
    pub fn ok(&self) -> bool {
        self.loss() < MAX_LOSS
    }
    /// CPU seconds per million delivered packets.
    pub fn per_mpkt(&self, cpu: f64) -> f64 {
        if self.delivered == 0 {
            f64::NAN
        } else {
            cpu / (self.delivered as f64 / 1e6)
        }
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "offered_pps": self.offered(),
            "delivered_pps": self.pps(),
            "loss": self.loss(),
            "lost_where": self.lost.as_ref().map(Lost::json),
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
pub enum Load {
    /// Flat out for about `secs`, at most `max_frames`.
    Flat { secs: f64, max_frames: u64 },
    /// `frames` at `pps`.
    Paced { frames: u64, pps: f64 },
}

/// One trial: send, wait for the sink to go quiet, count.
pub fn run_trial(
    generator: &Generator,
    sink: &Sink,
    pid: Option<u32>,
    load: Load,
) -> anyhow::Result<Trial> {
    let before = sink.packets()?;
    let cpu0 = MachineCpu::read()?;
    let p0 = pid.map(process_cpu).transpose()?;
    let (sent, secs) = match load {
        Load::Flat { secs, max_frames } => generator.blast_for(secs, max_frames, 16_384)?,
        Load::Paced { frames, pps } => generator.pace(frames, pps)?,
    };
    let after = settle(sink)?;
    let cpu1 = MachineCpu::read()?;
    let p1 = pid.map(process_cpu).transpose()?;
    let t = Trial {
        sent,
        delivered: after - before,
        secs,
        machine_cpu: cpu0.until(cpu1).busy,
        process_cpu: p0.zip(p1).map(|(a, b)| b - a),
        lost: None,
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
pub fn bring_up(
    bed: &Bed,
    kind: PathKind,
    v6: bool,
    daemon_args: &[&str],
) -> anyhow::Result<(Generator, paths::Path)> {
    let path = paths::setup_with(
        crate::files(),
        bed,
        kind,
        CALLS,
        A_PORT0,
        B_PORT0,
        v6,
        daemon_args,
    )?;
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
pub struct Rig<'a> {
    // Dropped before `path`: the generator, then the relay.
    pub generator: Generator,
    /// `None` only while being set up again.
    pub path: Option<paths::Path>,
    pub bed: &'a Bed,
    pub sink: &'a Sink,
    pub kind: PathKind,
    /// Over IPv6.
    pub v6: bool,
    /// Times the path was set up again because streams stopped.
    pub rebuilds: u32,
    /// Extra arguments of media-relay's daemon (kept when the path is set
    /// up again).
    pub daemon_args: Vec<&'static str>,
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
            let (generator, path) = bring_up(self.bed, self.kind, self.v6, &self.daemon_args)?;
            self.generator = generator;
            self.path = Some(path);
            self.rebuilds += 1;
        }
        Ok(())
    }

    /// Restart media-relay's daemon on the same pins (the calls are
    /// adopted, XDP forwards throughout) with `arg` among its arguments or
    /// not; nothing if it already runs so. Returns once the adopted calls'
    /// sockets are bound (the restart's own work is over).
    pub fn restart_daemon_with(&mut self, arg: &'static str, present: bool) -> anyhow::Result<()> {
        self.daemon_args.retain(|a| *a != arg);
        if present {
            self.daemon_args.push(arg);
        }
        let daemon = self
            .path
            .as_mut()
            .and_then(paths::Path::daemon_mut)
            .ok_or_else(|| anyhow::anyhow!("{}: no media-relay daemon", self.kind.name()))?;
        if daemon.has_arg(arg) == present {
            return Ok(());
        }
        daemon.stop()?;
        daemon.set_arg(arg, present);
        daemon.restart()?;
        anyhow::ensure!(
            daemon.sockets_bound_time(Duration::from_secs(20)).is_some(),
            "{}: the restarted daemon did not bind the adopted calls' sockets\n{}",
            self.kind.name(),
            daemon.log_text()
        );
        Ok(())
    }

    pub fn trial(&mut self, load: Load) -> anyhow::Result<Trial> {
        self.ensure_live()?;
        let pid = self.path.as_ref().and_then(paths::Path::pid);
        let stale = |rig: &Self| {
            rig.path
                .as_ref()
                .and_then(paths::Path::daemon)
                .and_then(|d| stale_dropped(&rig.bed.relay, d.ng))
        };
        let drops0 = Drops::read(self.bed);
        let stale0 = stale(self);
        let mut t = run_trial(&self.generator, self.sink, pid, load)?;
        // Where the lost packets went, as far as the kernel and media-relay
        // can tell. What none of them counts was dropped by the relay
        // itself (rtpengine) or before it.
        if let (Ok(a), Ok(b)) = (drops0, Drops::read(self.bed)) {
            let lost = Lost {
                veth_in: b.veth_in - a.veth_in,
                rcvbuf: b.rcvbuf - a.rcvbuf,
                sndbuf: b.sndbuf - a.sndbuf,
                veth_out: b.veth_out - a.veth_out,
                stale: stale0.zip(stale(self)).map(|(a, b)| b - a),
            };
            if t.sent > t.delivered {
                eprintln!(
                    "        lost {}: veth into the relay {}, receive buffers {}, send errors {}, veth out {}{}",
                    t.sent - t.delivered,
                    lost.veth_in,
                    lost.rcvbuf,
                    lost.sndbuf,
                    lost.veth_out,
                    lost.stale
                        .map_or(String::new(), |s| format!(", stale (media-relay) {s}")),
                );
            }
            t.lost = Some(lost);
        }
        Ok(t)
    }
}

/// What the search drives: paced trials of `frames` at `pps` (a [`Rig`];
/// a model path in the tests).
pub trait Paced {
    fn paced(&mut self, frames: u64, pps: f64) -> anyhow::Result<Trial>;
}

impl Paced for Rig<'_> {
    fn paced(&mut self, frames: u64, pps: f64) -> anyhow::Result<Trial> {
        self.trial(Load::Paced { frames, pps })
    }
}

/// The pace search (step 4 of the method). A trial passes when it lost
/// < 0.1 % and the generator offered (nearly) the rate asked for; when the
/// generator fell behind, the machine could not carry the rate, but what
/// it carried without loss still counts as a result.
///
/// The flat-out trial, if it lost, is a rate known to fail: the search
/// bisects (geometrically) between the highest rate that passed and the
/// lowest that failed, so it finds the boundary wherever the first trial
/// lands. (Stepping up 10 % a trial from the flat-out delivered rate fell
/// short when that rate was far below capacity: rtpengine delivers a
/// seventh of its capacity flat out, every stream stopped, and eight
/// passing steps later the search reported a rate it had never failed
/// above.) `known_pass`: a rate already carried (a repeated run's).
///
/// Then the rate found is tried once more (noise can flatter one trial);
/// if it loses now, 5 % lower. Returns the trials, the best one, and
/// whether the best was reproduced.
pub fn search(
    rig: &mut impl Paced,
    plan: &Plan,
    flat: &Trial,
    known_pass: Option<f64>,
) -> anyhow::Result<(Vec<Trial>, Option<Trial>, bool)> {
    let mut trials: Vec<Trial> = Vec::new();
    let mut best: Option<Trial> = None;
    let ceiling = flat.offered();
    // Highest passing and lowest failing rate asked for.
    let (mut pass, mut fail): (Option<f64>, Option<f64>) =
        (known_pass, (!flat.ok()).then_some(ceiling));
    let mut rate = match (pass, fail) {
        (Some(p), Some(f)) => (p * f).sqrt(),
        (Some(p), None) => (p * 1.1).min(ceiling),
        _ => flat.pps().min(ceiling),
    };
    for _ in 0..plan.max_trials {
        if let (Some(p), Some(f)) = (pass, fail)
            && f <= p * plan.precision
        {
            break;
        }
        let t = rig.paced(plan.frames(rate), rate)?;
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
            (Some(p), Some(f)) => (p * f).sqrt(),
            (None, None) => unreachable!("a trial either passes or fails"),
        };
        anyhow::ensure!(rate >= 1000.0, "rate search went below 1 000 pps");
    }
    let mut confirmed = false;
    if let Some(mut rate) = best.as_ref().map(Trial::offered) {
        for _ in 0..2 {
            let t = rig.paced(plan.frames(rate), rate)?;
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

/// media-relay's `userspace stale dropped` (ng `statistics`).
fn stale_dropped(ns: &Netns, ng: SocketAddr) -> Option<u64> {
    let plane = media_relay_tests::daemon::NgClient::new(ns, ng)
        .and_then(|c| c.media_plane())
        .ok()?;
    plane.get("userspace stale dropped").copied()
}

/// Kernel drop counters along the path (see [`Rig::trial`]): totals
/// since the bed was made.
#[derive(Clone, Copy)]
struct Drops {
    veth_in: u64,
    rcvbuf: u64,
    sndbuf: u64,
    veth_out: u64,
}

impl Drops {
    fn read(bed: &Bed) -> anyhow::Result<Self> {
        let stat = |ns: &Netns, dev: &str, what: &str| -> anyhow::Result<u64> {
            let file = format!("/sys/class/net/{dev}/statistics/{what}");
            Ok(ns.exec("cat", &[&file])?.trim().parse()?)
        };
        let (rcvbuf, sndbuf) = udp_drops(&bed.relay)?;
        Ok(Self {
            veth_in: stat(&bed.a, "a0", "tx_dropped")? + stat(&bed.relay, "ra", "rx_dropped")?,
            rcvbuf,
            sndbuf,
            veth_out: stat(&bed.relay, "rb", "tx_dropped")? + stat(&bed.b, "b0", "rx_dropped")?,
        })
    }
}

/// The UDP (IPv4 and IPv6 together) receive-buffer overflows and send
/// buffer errors counted in `ns`.
fn udp_drops(ns: &Netns) -> anyhow::Result<(u64, u64)> {
    let mut rcv = 0;
    let mut snd = 0;
    for (file, udp) in [("/proc/net/snmp", "Udp:"), ("/proc/net/snmp6", "Udp6")] {
        let text = ns.exec("cat", &[file])?;
        if udp == "Udp:" {
            // A line of names, then a line of values.
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(udp)).collect();
            if let [names, values] = lines[..] {
                for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                    match n {
                        "RcvbufErrors" => rcv += v.parse::<u64>().unwrap_or(0),
                        "SndbufErrors" => snd += v.parse::<u64>().unwrap_or(0),
                        _ => {}
                    }
                }
            }
        } else {
            for l in text.lines() {
                let mut f = l.split_whitespace();
                match (f.next(), f.next().and_then(|v| v.parse::<u64>().ok())) {
                    (Some("Udp6RcvbufErrors"), Some(v)) => rcv += v,
                    (Some("Udp6SndbufErrors"), Some(v)) => snd += v,
                    _ => {}
                }
            }
        }
    }
    Ok((rcv, snd))
}

/// A's frame to `dst`, from A's address of `dst`'s family.
pub fn frame(dst: SocketAddr) -> anyhow::Result<Vec<u8>> {
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

pub fn bed_for(kind: PathKind) -> anyhow::Result<Bed> {
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

/// Generator + sink with nothing forwarded: `xdp_sink` on the relay's
/// veth counts the frames the generator sends it. The cost every path
/// pays before the relay's own work, at `pps` (paced) and flat out.
pub fn baseline(plan: &Plan, pps: f64) -> anyhow::Result<(Trial, Trial)> {
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

/// A repeated run's search, starting where the first run ended (`rate`):
/// a trial there, then up in steps of 4 % while it passes, or down in
/// steps of 4 % until one passes; at most 4 trials. Returns the trials
/// and the best passing one. Each run judges its own trials, so runs can
/// disagree — their spread is what the report shows.
pub fn refine(
    rig: &mut impl Paced,
    plan: &Plan,
    flat: &Trial,
    rate: f64,
) -> anyhow::Result<(Vec<Trial>, Option<Trial>)> {
    let mut trials = Vec::new();
    let mut best: Option<Trial> = None;
    let mut rate = rate;
    let mut direction = 0i8;
    for _ in 0..4 {
        let t = rig.paced(plan.frames(rate), rate)?;
        let pass = t.ok() && t.offered() >= 0.97 * rate;
        if t.ok() && best.as_ref().is_none_or(|b| t.pps() > b.pps()) {
            best = Some(t.clone());
        }
        trials.push(t);
        direction = match (direction, pass) {
            (0 | 1, true) => 1,
            (0 | -1, false) => -1,
            // Turned: the boundary is between the last two rates.
            _ => break,
        };
        rate *= if pass { 1.04 } else { 0.96 };
    }
    if direction == 1 {
        // Every step passed: the boundary is higher still. Search for it
        // above the highest rate carried, as a first run does.
        let (t, b, _) = search(rig, plan, flat, best.as_ref().map(Trial::offered))?;
        trials.extend(t);
        if let Some(b) = b
            && best.as_ref().is_none_or(|x| b.pps() > x.pps())
        {
            best = Some(b);
        }
    }
    Ok((trials, best))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path that carries up to `capacity` pps; above it, it delivers
    /// `collapse` of its capacity (rtpengine stops reading most sockets).
    struct Model {
        capacity: f64,
        collapse: f64,
        trials: usize,
    }

    impl Model {
        fn trial(&self, frames: u64, pps: f64) -> Trial {
            let secs = frames as f64 / pps;
            let carried = if pps <= self.capacity {
                pps
            } else {
                self.capacity * self.collapse
            };
            Trial {
                sent: frames,
                delivered: (carried * secs) as u64,
                secs,
                machine_cpu: 0.0,
                process_cpu: None,
                lost: None,
            }
        }
    }

    impl Paced for Model {
        fn paced(&mut self, frames: u64, pps: f64) -> anyhow::Result<Trial> {
            self.trials += 1;
            Ok(self.trial(frames, pps))
        }
    }

    /// Flat out, a path whose streams collapse delivers a seventh of its
    /// capacity: the search must still find the capacity (within its
    /// precision), not stop at a rate it never failed above.
    #[test]
    fn search_finds_the_capacity_of_a_path_that_collapses_flat_out() {
        let plan = Plan::new(false);
        for (capacity, collapse) in [(180_000.0, 0.28), (250_000.0, 0.9), (120_000.0, 0.05)] {
            let mut m = Model {
                capacity,
                collapse,
                trials: 0,
            };
            let flat = m.trial(1_000_000, 350_000.0);
            assert!(!flat.ok());
            let (_, best, confirmed) = search(&mut m, &plan, &flat, None).unwrap();
            let best = best.expect("a rate carried").pps();
            assert!(
                best <= capacity && best * plan.precision * 1.05 >= capacity,
                "capacity {capacity}, collapse {collapse}: found {best:.0} in {} trials",
                m.trials
            );
            assert!(confirmed);
        }
    }

    /// A repeated run that starts well below the capacity (the first run
    /// was unlucky) climbs to it rather than stopping after four steps.
    #[test]
    fn refine_climbs_past_its_four_steps() {
        let plan = Plan::new(false);
        let mut m = Model {
            capacity: 200_000.0,
            collapse: 0.3,
            trials: 0,
        };
        let flat = m.trial(1_000_000, 350_000.0);
        let (_, best) = refine(&mut m, &plan, &flat, 100_000.0).unwrap();
        let best = best.expect("a rate carried").pps();
        assert!(
            best * plan.precision * 1.05 >= 200_000.0,
            "found {best:.0} in {} trials",
            m.trials
        );
    }
}
