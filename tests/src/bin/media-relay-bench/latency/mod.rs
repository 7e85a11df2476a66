//! Latency and jitter each forwarding path adds, from real RTP sockets
//! (`media_relay_tests::socket_load`): A sends paced RTP with send stamps
//! for `CALLS` calls, B receives it and measures one-way latency, loss and
//! RFC 3550 jitter.
//!
//! # Method
//! - **Fixed offered rates** (pps over the 100 calls: 10 000, 50 000 and
//!   90 000; `--quick`: 50 000), the same on every machine and in every
//!   run, so that two runs of the benchmark compare like with like. (The
//!   first version offered a percentage of the userspace path's maximum,
//!   itself measured in the same run: a different load every run.)
//! - **Path latency** is the headline: the kernel's receive timestamp of
//!   the datagram at B's socket minus the send stamp — what the relay and
//!   the links took. The application latency (B's read time − send stamp)
//!   is reported beside it: it adds the sink's own wake-up, which on a VM
//!   is an idle vCPU's wake-up, tens to hundreds of µs that differ from run
//!   to run and had made the published p99 irreproducible.
//! - **Repeated runs**: every (path, rate, host state) is run
//!   [`MIN_RUNS`] times (`--quick` too, shorter), each figure reported as
//!   the median with the spread of the runs; targets are judged on
//!   medians. At 50 000 pps idle and busy runs alternate in pairs, the
//!   order swapped every other pair so that drift favours neither.
//! - **Warm-up**: each path first carries 0.5 s of load that is not
//!   measured (first-packet effects: neighbour entries, caches, page
//!   faults in the relay and the sink).
//! - **Placement**: the generator runs on CPU 0 and the sink on CPU 1,
//!   both `SCHED_FIFO` (they play hosts of their own, so the busy job
//!   delays only what runs on the relay host); on veth the packets' whole
//!   way through the relay runs in softirq on the generator's CPU.
//! - Every run also samples the host's profile (`profile.rs`), which the
//!   busy-host check reads its explanation from.
//!
//! "Added latency" is a path's median p99 minus plain kernel forwarding's
//! at the same rate and host state (the no-relay reference). A ratio of
//! added latencies whose denominator is not above the reference's own
//! run-to-run spread is reported as not measurable.

pub mod overload;
pub mod probe;
mod profile;

use std::{
    fmt::Write as _,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use media_relay_tests::{
    Bed, BedOptions, cpu,
    paths::{self, PathKind},
    socket_load::{Flow, GenConfig, Generator, Sink, SinkConfig, SinkReport},
};
use profile::{BusyHost, Profile, ProfileMedians, Sampler, mechanism};
use serde_json::{Value, json};

use media_user::media::{WAIT_BOUNDS_US, waited_key};

use crate::figure::{Derived, Figure, MIN_RUNS, Verdict, group, ratio, target};

const CALLS: u32 = 100;
const A_PORT0: u16 = 5000;
const B_PORT0: u16 = 6000;
/// The rate the targets and the busy-host check are judged at.
pub const REFERENCE_PPS: f64 = 50_000.0;
/// What a run waits for stragglers after the last send: long, so that
/// latency under overload shows rather than counting as loss.
const RUN_GRACE: Duration = Duration::from_secs(2);

/// Run sizes.
struct Plan {
    rates: &'static [f64],
    secs: f64,
    runs: u32,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                rates: &[REFERENCE_PPS],
                secs: 1.5,
                runs: MIN_RUNS as u32,
            }
        } else {
            Self {
                rates: &[10_000.0, REFERENCE_PPS, 90_000.0],
                secs: 5.0,
                runs: MIN_RUNS as u32,
            }
        }
    }
}

/// One measured run.
pub(crate) struct Measured {
    kind: PathKind,
    rate: f64,
    busy: bool,
    repeat: u32,
    offered_pps: f64,
    pub(crate) sent: u64,
    pub(crate) report: SinkReport,
    profile: Profile,
    /// media-relay's userspace path: the datagrams it read during the run
    /// per wait bucket (`statistics`, see [`relay_waits`]).
    relay_waits: Option<Vec<u64>>,
}

impl Measured {
    /// The bucket of media-relay's own wait (receive to read) that holds
    /// its 99th percentile.
    fn relay_wait_p99(&self) -> Option<String> {
        p99_bucket(self.relay_waits.as_ref()?)
    }

    fn lost(&self) -> u64 {
        // Exact: the generator knows what it sent (sequence numbers alone
        // cannot see loss at the very end of a run).
        self.sent.saturating_sub(self.report.unique())
    }

    pub(crate) fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost() as f64 / self.sent as f64
        }
    }

    pub(crate) fn p(&self, q: f64) -> f64 {
        self.report.percentile_us(q)
    }
}

/// A path set up with its generator (in `a`) and sink (in `b`).
pub(crate) struct Rig {
    kind: PathKind,
    calls: u32,
    generator: Generator,
    sink: Sink,
    sampler: Sampler,
    // Dropped last, after the path's daemon.
    path: paths::Path,
    bed: Bed,
}

impl Rig {
    fn new(kind: PathKind) -> anyhow::Result<Self> {
        Self::with(kind, CALLS, &[])
    }

    /// `calls` calls on `kind`, media-relay's daemon started with `extra`
    /// arguments (e.g. `--port-sharing` and a narrow port range).
    pub(crate) fn with(kind: PathKind, calls: u32, extra: &[&str]) -> anyhow::Result<Self> {
        let bed = Bed::new(BedOptions {
            peer_xdp: kind == PathKind::XdpNative,
            static_neighbours: false,
        })?;
        let path = paths::setup_with(
            crate::files(),
            &bed,
            kind,
            calls,
            A_PORT0,
            B_PORT0,
            false,
            extra,
        )?;
        let ssrc = |i: usize| 0x5eed_0000 + i as u32;
        let flows = |to_relay: bool| -> Vec<Flow> {
            path.calls
                .iter()
                .enumerate()
                .map(|(i, c)| Flow {
                    src: c.a,
                    dst: if to_relay { c.a_to } else { c.b },
                    ssrc: ssrc(i),
                })
                .collect()
        };
        let mut generator = Generator::bind(Some(&bed.a), &flows(true))?;
        let sink = Sink::bind(Some(&bed.b), &flows(false))?;
        // A few packets per call so that every stream latches (and
        // neighbours resolve), then let the relays' learning window close.
        generator.run(&GenConfig {
            rate: Some(2000.0),
            count: 4 * u64::from(calls),
            duration: Duration::from_secs(2),
            ..GenConfig::default()
        })?;
        std::thread::sleep(Duration::from_millis(1600));
        sink.drain();
        let sampler = Sampler::new(path.pid());
        Ok(Self {
            kind,
            calls,
            generator,
            sink,
            sampler,
            path,
            bed,
        })
    }

    /// Restart media-relay's daemon on the same pins (it adopts the calls;
    /// XDP forwards throughout) with its per-stream quality telemetry on
    /// or off (`--no-quality-telemetry`), unless it already runs so;
    /// returns once the adopted calls' sockets are bound.
    fn telemetry(&mut self, on: bool) -> anyhow::Result<()> {
        const OFF: &str = "--no-quality-telemetry";
        let Some(daemon) = self.path.daemon_mut() else {
            anyhow::bail!("{}: no media-relay daemon", self.kind.name());
        };
        if daemon.has_arg(OFF) != on {
            return Ok(());
        }
        daemon.stop()?;
        daemon.set_arg(OFF, !on);
        daemon.restart()?;
        anyhow::ensure!(
            daemon.sockets_bound_time(Duration::from_secs(20)).is_some(),
            "the restarted daemon did not bind the adopted calls' sockets\n{}",
            daemon.log_text()
        );
        // Another process: its CPU is sampled from now on.
        self.sampler = Sampler::new(self.path.pid());
        Ok(())
    }

    /// Wait until the path has nothing queued any more (an overloaded
    /// userspace relay keeps forwarding its backlog for seconds):
    /// nothing arriving for 300 ms, at most 15 s.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_millis(300) {
            if self.sink.drain() > 0 {
                quiet_since = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One run: `rate` pps for `secs`, with the host's profile over it.
    pub(crate) fn measure(&mut self, rate: f64, secs: f64, busy: bool) -> anyhow::Result<Measured> {
        self.settle();
        let count = (rate * secs).ceil() as u64;
        let gen_cfg = GenConfig {
            rate: Some(rate),
            count,
            duration: Duration::from_secs_f64(secs * 1.5),
            realtime: true,
            cpu: Some(cpu::GENERATOR),
            ..GenConfig::default()
        };
        let sink_cfg = SinkConfig {
            expected: Some(count),
            max_duration: Duration::from_secs_f64(secs * 1.5 + 3.0),
            idle: Duration::from_millis(300),
            grace: RUN_GRACE,
            rtp_clock_hz: 160.0 * rate / f64::from(self.calls),
            realtime: true,
            cpu: Some(cpu::SINK),
        };
        let waits0 = relay_waits(&self.bed, &self.path);
        let busy_host = busy.then(|| BusyHost::start(Duration::from_secs_f64(secs * 1.5 + 5.0)));
        let before = self.sampler.read();
        let t0 = Instant::now();
        let done = AtomicBool::new(false);
        let (generator, sink) = (&mut self.generator, &self.sink);
        // Both on threads of their own: pinning and SCHED_FIFO end with
        // them.
        let (g, r) = std::thread::scope(|s| {
            let h = s.spawn(|| sink.run(&sink_cfg, &done));
            let g = s
                .spawn(|| {
                    let g = generator.run(&gen_cfg);
                    done.store(true, Ordering::Release);
                    g
                })
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (g, h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        });
        let after = self.sampler.read();
        let elapsed = t0.elapsed().as_secs_f64();
        let share = busy_host.and_then(BusyHost::finish);
        let relay_waits = waits0
            .zip(relay_waits(&self.bed, &self.path))
            .map(|(a, b)| b.iter().zip(&a).map(|(b, a)| b - a).collect());
        let (g, r) = (g?, r?);
        Ok(Measured {
            kind: self.kind,
            rate,
            busy,
            repeat: 0,
            offered_pps: g.pps(),
            sent: g.sent,
            report: r,
            profile: Profile::new(&before, &after, elapsed, share),
            relay_waits,
        })
    }

    fn run(&mut self, rate: f64, secs: f64, busy: bool, repeat: u32) -> anyhow::Result<Measured> {
        let mut m = self.measure(rate, secs, busy)?;
        m.repeat = repeat;
        eprintln!(
            "    {} {} pps{} #{repeat}: {:.0} offered, {} received, loss {:.3} %, p50 {:.1} µs, p99 {:.1} µs \
             (application p99 {:.1} µs), max {:.0} µs; {}",
            self.kind.name(),
            group(rate),
            if busy { " busy" } else { "" },
            m.offered_pps,
            m.report.unique(),
            100.0 * m.loss(),
            m.p(0.5),
            m.p(0.99),
            m.report.app_percentile_us(0.99),
            m.report.max_us(),
            m.profile.compact(),
        );
        if let Some(w) = m.relay_wait_p99() {
            eprintln!("        media-relay's own wait (receive to read) p99 {w}");
        }
        Ok(m)
    }
}

/// The wait bucket ([`WAIT_BOUNDS_US`], then longer) that holds the 99th
/// percentile of `counts`: "≤ 250 µs", "> 5000 µs"; `None` for no count.
fn p99_bucket(counts: &[u64]) -> Option<String> {
    let total: u64 = counts.iter().sum();
    let mut below = 0;
    for (i, n) in counts.iter().enumerate() {
        below += n;
        if total > 0 && below as f64 >= 0.99 * total as f64 {
            return Some(match WAIT_BOUNDS_US.get(i) {
                Some(b) => format!("≤ {b} µs"),
                None => format!("> {} µs", WAIT_BOUNDS_US[WAIT_BOUNDS_US.len() - 1]),
            });
        }
    }
    None
}

/// media-relay's userspace wait buckets (ng `statistics`: `userspace
/// waited <= … us`, then `> … us`), if the path has a daemon.
fn relay_waits(bed: &Bed, path: &paths::Path) -> Option<Vec<u64>> {
    let daemon = path.daemon()?;
    let plane = media_relay_tests::daemon::NgClient::new(&bed.relay, daemon.ng)
        .and_then(|c| c.media_plane())
        .ok()?;
    (0..=WAIT_BOUNDS_US.len())
        .map(|i| plane.get(&waited_key(i)).copied())
        .collect()
}

/// The runs of one (path, rate, host state).
fn set(runs: &[Measured], kind: PathKind, rate: f64, busy: bool) -> Vec<&Measured> {
    runs.iter()
        .filter(|m| m.kind == kind && m.rate == rate && m.busy == busy)
        .collect()
}

fn fig(runs: &[&Measured], f: impl Fn(&Measured) -> f64) -> Figure {
    Figure::new(runs.iter().map(|m| f(m)))
}

/// The run whose p99 is the median of its set: the one whose CDF is drawn.
fn representative<'a>(runs: &[&'a Measured]) -> Option<&'a Measured> {
    let mut v: Vec<&Measured> = runs.to_vec();
    v.sort_by(|a, b| a.p(0.99).total_cmp(&b.p(0.99)));
    v.get(v.len() / 2).copied()
}

/// A path's busy-host comparison at the reference rate.
struct BusyCheck {
    kind: PathKind,
    idle: Figure,
    busy: Figure,
    idle_profile: ProfileMedians,
    busy_profile: ProfileMedians,
}

impl BusyCheck {
    fn of(runs: &[Measured], kind: PathKind) -> Option<Self> {
        let idle = set(runs, kind, REFERENCE_PPS, false);
        let busy = set(runs, kind, REFERENCE_PPS, true);
        if idle.is_empty() || busy.is_empty() {
            return None;
        }
        let profiles =
            |s: &[&Measured]| ProfileMedians::of(&s.iter().map(|m| &m.profile).collect::<Vec<_>>());
        Some(Self {
            kind,
            idle: fig(&idle, |m| m.p(0.99)),
            busy: fig(&busy, |m| m.p(0.99)),
            idle_profile: profiles(&idle),
            busy_profile: profiles(&busy),
        })
    }

    /// Busy over idle, with the range of every busy run over every idle
    /// one.
    fn ratio(&self) -> Derived {
        Derived::ratio(Derived::of(&self.busy), Derived::of(&self.idle))
    }

    /// The promise is that a loaded host adds no delay: busy at most
    /// 20 % above idle is met, and so is busy *below* idle (a busy CPU
    /// never halts, so nothing waits to wake from idle: faster, which the
    /// promise does not fear). A larger increase that is still inside the
    /// run-to-run spread of either set is not measurable (noise); beyond
    /// it, missed.
    fn verdict(&self) -> Verdict {
        let (i, b) = (self.idle.median(), self.busy.median());
        if !(i > 0.0 && b.is_finite()) {
            return Verdict::NotMeasurable("no idle p99 above zero".into());
        }
        let diff = b - i;
        if diff <= 0.2 * i {
            return Verdict::Met;
        }
        let noise = self.idle.spread().max(self.busy.spread());
        if diff <= noise {
            return Verdict::NotMeasurable(format!(
                "busy and idle medians differ by {diff:.1} µs, within the {noise:.1} µs their own runs spread"
            ));
        }
        Verdict::Missed
    }

    /// One sentence interpreting busy vs idle from the profile.
    fn sentence(&self) -> String {
        let (i, b) = (&self.idle_profile, &self.busy_profile);
        let mut s = format!(
            "{}: p99 idle {} µs, busy {} µs (ratio {}); ksoftirqd ran {:.1} ms and waited {:.1} ms for a CPU \
             per busy run vs {:.1} / {:.1} ms idle; steal {:.0} vs {:.0} ms",
            self.kind.label(),
            self.idle.show(1),
            self.busy.show(1),
            self.ratio().show(2),
            b.ksoftirqd_ms,
            b.ksoftirqd_wait_ms,
            i.ksoftirqd_ms,
            i.ksoftirqd_wait_ms,
            b.steal_ms,
            i.steal_ms,
        );
        if let (Some(ci), Some(cb), Some(wi), Some(wb)) = (
            i.relay_cpu_ms,
            b.relay_cpu_ms,
            i.relay_wait_ms,
            b.relay_wait_ms,
        ) {
            let _ = write!(
                s,
                "; the relay process ran {cb:.0} ms and waited {wb:.1} ms for a CPU vs {ci:.0} / {wi:.1} ms"
            );
        }
        if let Some(x) = b.spinner_share {
            let _ = write!(s, "; the spinners got {:.0} % of their CPUs", 100.0 * x);
        }
        let userspace = matches!(self.kind, PathKind::Userspace | PathKind::Rtpengine);
        let why = mechanism(i, b, userspace);
        s += &match (self.verdict(), why.is_empty()) {
            (Verdict::Met, _) if self.ratio().value < 0.8 => {
                ". Faster when busy: busy CPUs never go idle, so no wake-up from idle (a halted vCPU) delays the path.".to_owned()
            }
            (Verdict::Met, true) => ". Unchanged within 20 %.".to_owned(),
            (Verdict::Met, false) => format!(". Within 20 %, although {why}."),
            (Verdict::NotMeasurable(r), _) => format!(". Not measurable: {r}."),
            (_, false) => format!(". Slower when busy: {why}."),
            (_, true) if self.ratio().value > 1.0 => {
                ". Slower when busy, but neither deferral to ksoftirqd nor run-queue wait of a relay process shows in the counters.".to_owned()
            }
            (_, true) => ". Faster when busy: busy CPUs never go idle, so no wake-up from idle (a halted vCPU) delays the path.".to_owned(),
        };
        s
    }

    fn json(&self) -> Value {
        json!({
            "path": self.kind.name(),
            "label": self.kind.label(),
            "idle_p99_us": self.idle.json(),
            "busy_p99_us": self.busy.json(),
            "ratio": self.ratio().value,
            "verdict": self.verdict().word(),
            "idle_profile": self.idle_profile.json(),
            "busy_profile": self.busy_profile.json(),
            "interpretation": self.sentence(),
        })
    }
}

pub fn run(quick: bool, machine: &str, out: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let plan = Plan::new(quick);
    let mut runs: Vec<Measured> = Vec::new();
    // XDP native at the reference rate, idle, with quality telemetry on
    // and off (the cost of telemetry).
    let mut telemetry_runs: Vec<(bool, Measured)> = Vec::new();
    for kind in PathKind::ALL {
        eprintln!("==> latency: {} ({CALLS} calls)", kind.label());
        let mut rig = Rig::new(kind)?;
        // Warm-up, not measured.
        rig.measure(REFERENCE_PPS, 0.5, false)?;
        for &rate in plan.rates {
            for repeat in 0..plan.runs {
                if rate == REFERENCE_PPS {
                    // Idle and busy in alternating pairs.
                    let order = if repeat % 2 == 0 {
                        [false, true]
                    } else {
                        [true, false]
                    };
                    for busy in order {
                        runs.push(rig.run(rate, plan.secs, busy, repeat)?);
                    }
                } else {
                    runs.push(rig.run(rate, plan.secs, false, repeat)?);
                }
            }
        }
        if kind == PathKind::XdpNative {
            // The daemon restarted with and without the telemetry between
            // runs, on/off in alternating pairs (order swapped every other
            // pair), so that the two sets are measured alike.
            eprintln!(
                "==> latency: {} with quality telemetry on and off",
                kind.label()
            );
            for repeat in 0..plan.runs {
                let order = if repeat % 2 == 0 {
                    [true, false]
                } else {
                    [false, true]
                };
                for on in order {
                    rig.telemetry(on)?;
                    eprint!("    telemetry {}: ", if on { "on" } else { "off" });
                    telemetry_runs.push((on, rig.run(REFERENCE_PPS, plan.secs, false, repeat)?));
                }
            }
        }
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "{CALLS} calls A → B, RTP (160-byte payload) from real sockets; fixed offered rates; {} runs of {} s \
         per path, rate and host state (busy: one spinning thread per CPU at nice 0); figures are the median \
         (min–max) of the runs. **p99** is the path latency: the kernel's receive timestamp at B's socket − \
         the send stamp. *App p99* adds the sink's own wake-up (B's read time − send stamp). Jitter: RFC 3550 \
         A.8 on the path's arrival times, mean over the flows. Generator on CPU 0, sink on CPU 1, both \
         SCHED_FIFO.\n",
        plan.runs, plan.secs
    );
    md.push_str(
        "| path | offered pps | busy | p50 µs | p99 µs | p99.9 µs | app p99 µs | jitter µs | loss |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut summary = Vec::new();
    for kind in PathKind::ALL {
        for &rate in plan.rates {
            for busy in [false, true] {
                let s = set(&runs, kind, rate, busy);
                if s.is_empty() {
                    continue;
                }
                let figs = [
                    ("p50_us", fig(&s, |m| m.p(0.5))),
                    ("p99_us", fig(&s, |m| m.p(0.99))),
                    ("p999_us", fig(&s, |m| m.p(0.999))),
                    ("app_p99_us", fig(&s, |m| m.report.app_percentile_us(0.99))),
                    ("jitter_us", fig(&s, |m| m.report.jitter_us().0)),
                    ("loss", fig(&s, Measured::loss)),
                ];
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    kind.label(),
                    group(rate),
                    if busy { "yes" } else { "no" },
                    figs[0].1.show(1),
                    figs[1].1.show(1),
                    figs[2].1.show(1),
                    figs[3].1.show(1),
                    figs[4].1.show(1),
                    Figure::new(figs[5].1.runs.iter().map(|l| 100.0 * l)).show(3) + " %",
                );
                let mut entry = json!({
                    "path": kind.name(),
                    "label": kind.label(),
                    "rate_pps": rate,
                    "busy": busy,
                    "runs": s.len(),
                });
                for (k, f) in &figs {
                    entry[*k] = f.json();
                }
                if rate == REFERENCE_PPS
                    && let Some(r) = representative(&s)
                {
                    entry["cdf"] = json!(r.report.cdf(200));
                }
                summary.push(entry);
            }
        }
    }

    // Busy host vs idle at the reference rate.
    let checks: Vec<BusyCheck> = PathKind::ALL
        .iter()
        .filter_map(|k| BusyCheck::of(&runs, *k))
        .collect();
    let _ = writeln!(
        md,
        "\n**Busy host vs idle** at {} pps (medians of {} pairs; profile figures are medians per run):\n",
        group(REFERENCE_PPS),
        plan.runs
    );
    for c in &checks {
        let _ = writeln!(md, "- {}", c.sentence());
    }

    // Targets, on medians.
    let p99 = |k: PathKind| fig(&set(&runs, k, REFERENCE_PPS, false), |m| m.p(0.99));
    let kernel = p99(PathKind::Kernel);
    let native_added = (p99(PathKind::XdpNative).median() - kernel.median()).max(0.0);
    let engine_added = p99(PathKind::Rtpengine).median() - kernel.median();
    let added = ratio(
        native_added,
        engine_added,
        kernel.spread(),
        "rtpengine's added p99",
    );
    let added_verdict = match &added {
        Ok(r) => Verdict::of(*r <= 0.2),
        Err(why) => Verdict::NotMeasurable(why.clone()),
    };
    // Its spread: each path's runs less the kernel's, every pairing.
    let over_kernel = |k: PathKind| Derived::difference(Derived::of(&p99(k)), Derived::of(&kernel));
    let added_spread = added.as_ref().ok().map(|&r| Derived {
        value: r,
        ..Derived::ratio(
            over_kernel(PathKind::XdpNative).at_least(0.0),
            over_kernel(PathKind::Rtpengine),
        )
    });
    let _ = writeln!(
        md,
        "\nAt {} pps: XDP native adds {native_added:.1} µs at p99 over plain kernel forwarding ({} µs), rtpengine \
         adds {engine_added:.1} µs: {} (target ≤ 0.2: {}).",
        group(REFERENCE_PPS),
        kernel.show(1),
        added.as_ref().map_or_else(
            |e| format!("ratio not measurable ({e})"),
            |r| format!("ratio {r:.3}")
        ),
        added_verdict.word()
    );
    let native_check = checks.iter().find(|c| c.kind == PathKind::XdpNative);
    let busy_verdict = native_check.map_or_else(
        || Verdict::NotJudged("no busy runs".into()),
        BusyCheck::verdict,
    );
    let busy_ratio = native_check.map(BusyCheck::ratio);
    let _ = writeln!(
        md,
        "XDP native p99 busy / idle: {} (target ≤ 1.2, busy no more than 20 % slower: {}).\n",
        busy_ratio.map_or("–".into(), |r| r.show(2)),
        busy_verdict.sentence()
    );
    // The cost of telemetry: p99 with it on − off, against the runs'
    // own spread.
    let tel = |on: bool| {
        Figure::new(
            telemetry_runs
                .iter()
                .filter(|(o, _)| *o == on)
                .map(|(_, m)| m.p(0.99)),
        )
    };
    let (tel_on, tel_off) = (tel(true), tel(false));
    let tel_change = Derived::difference(Derived::of(&tel_on), Derived::of(&tel_off));
    let tel_diff = tel_change.value;
    let tel_noise = tel_on.spread().max(tel_off.spread());
    let tel_verdict = if tel_on.runs.is_empty() || tel_off.runs.is_empty() {
        Verdict::NotJudged("XDP native was not measured".into())
    } else if !tel_diff.is_finite() {
        Verdict::NotMeasurable("no p99 in a run".into())
    } else {
        Verdict::of(tel_diff <= tel_noise)
    };
    if !telemetry_runs.is_empty() {
        let _ = writeln!(
            md,
            "Cost of telemetry: XDP native p99 at {} pps (idle), the daemon restarted with and without \
             `--no-quality-telemetry` between runs, alternating: on {} µs, off {} µs; on − off {tel_diff:.1} µs \
             against the runs' spread {tel_noise:.1} µs (target: unchanged within it: {}). (At the socket generator's rates, not at half the XDP path's capacity: that is beyond what it sends.)\n",
            group(REFERENCE_PPS),
            tel_on.show(1),
            tel_off.show(1),
            tel_verdict.sentence(),
        );
    }
    let targets = vec![
        target(
            &format!(
                "p99 added latency at {} pps, XDP native / rtpengine",
                group(REFERENCE_PPS)
            ),
            added_spread,
            "<= 0.2",
            &added_verdict,
        ),
        target(
            &format!(
                "XDP native p99 at {} pps, busy host / idle",
                group(REFERENCE_PPS)
            ),
            busy_ratio,
            "<= 1.2 (busy no more than 20 % slower)",
            &busy_verdict,
        ),
        target(
            &format!(
                "XDP native p99 at {} pps, quality telemetry on − off (µs)",
                group(REFERENCE_PPS)
            ),
            tel_diff.is_finite().then_some(tel_change),
            "≤ the runs' spread (unchanged within noise)",
            &tel_verdict,
        ),
    ];
    print!("## Latency and jitter added by each path\n\n{md}");
    let json = json!({
        "machine": machine,
        "calls": CALLS,
        "secs_per_run": plan.secs,
        "runs_per_figure": plan.runs,
        "reference_pps": REFERENCE_PPS,
        "summary": summary,
        "runs": runs.iter().map(|m| json!({
            "path": m.kind.name(),
            "rate_pps": m.rate,
            "busy": m.busy,
            "repeat": m.repeat,
            "offered_pps": m.offered_pps,
            "sent": m.sent,
            "received": m.report.unique(),
            "lost": m.lost(),
            "duplicated": m.report.duplicated(),
            "reordered": m.report.reordered(),
            "unstamped": m.report.unstamped,
            "latency_us": {"p50": m.p(0.5), "p99": m.p(0.99), "p999": m.p(0.999), "max": m.report.max_us()},
            "app_latency_us": {"p50": m.report.app_percentile_us(0.5), "p99": m.report.app_percentile_us(0.99)},
            "jitter_us": m.report.jitter_us().0,
            "profile": m.profile.json(),
            "relay_wait_buckets": m.relay_waits,
        })).collect::<Vec<_>>(),
        "busy_check": checks.iter().map(BusyCheck::json).collect::<Vec<_>>(),
        "telemetry": {
            "path": PathKind::XdpNative.name(),
            "rate_pps": REFERENCE_PPS,
            "p99_us_on": tel_on.json(),
            "p99_us_off": tel_off.json(),
            "p99_on_minus_off_us": tel_diff.is_finite().then_some(tel_diff),
            "noise_us": tel_noise,
        },
        "targets": targets,
        "markdown": md,
    });
    let path = out.join("latency.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!(
        "report: {} ({:.0} s)\n",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::p99_bucket;

    #[test]
    fn the_p99_bucket_holds_the_99th_percentile() {
        assert_eq!(p99_bucket(&[0; 8]), None);
        assert_eq!(
            p99_bucket(&[990, 9, 1, 0, 0, 0, 0, 0]).as_deref(),
            Some("≤ 50 µs")
        );
        assert_eq!(
            p99_bucket(&[980, 15, 5, 0, 0, 0, 0, 0]).as_deref(),
            Some("≤ 100 µs")
        );
        assert_eq!(
            p99_bucket(&[90, 0, 0, 0, 0, 0, 0, 10]).as_deref(),
            Some("> 5000 µs")
        );
    }
}
