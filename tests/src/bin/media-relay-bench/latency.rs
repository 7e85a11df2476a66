//! Latency and jitter each forwarding path adds, from real RTP sockets
//! (`media_relay_tests::rtp_load`): A sends paced RTP with a monotonic
//! send stamp for `CALLS` calls, B receives it and measures one-way
//! latency, loss and RFC 3550 jitter.
//!
//! Loads are 10, 50 and 90 % of the userspace path's maximum (the highest
//! offered rate with < 0.1 % loss, found by a short rate search with this
//! same generator). The busy-host case runs 50 % load while one spinning
//! thread per CPU (nice 0, bounded in time) keeps the host busy. The
//! generator and the sink run `SCHED_FIFO`: they play hosts of their own,
//! so the busy job delays only what runs on the relay host (the relay
//! processes; XDP and the kernel's forwarding run in softirq either way).
//!
//! "Added latency" is a path's percentile minus plain kernel forwarding's
//! at the same load and busy state (the no-relay reference); raw figures
//! are reported too.

use std::{
    hint::black_box,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use media_relay_tests::{
    Bed, BedOptions,
    paths::{self, PathKind},
    rtp_load::{Flow, GenConfig, Generator, Sink, SinkConfig, SinkReport},
};
use serde_json::json;

const CALLS: u32 = 100;
const A_PORT0: u16 = 5000;
const B_PORT0: u16 = 6000;
/// Loss that still counts as "no loss" in the rate search.
const MAX_LOSS: f64 = 0.001;

/// How long a rate-search trial waits for stragglers after the last
/// send: what a path has not delivered by then is queued behind an
/// overload, and counts as lost.
const SEARCH_GRACE: Duration = Duration::from_millis(100);
/// The same for measured runs: long, so that latency under overload shows.
const RUN_GRACE: Duration = Duration::from_secs(2);

/// One measured run.
struct Measured {
    kind: PathKind,
    load_pct: u32,
    busy: bool,
    offered_pps: f64,
    sent: u64,
    report: SinkReport,
}

impl Measured {
    fn lost(&self) -> u64 {
        // Exact: the generator knows what it sent (sequence numbers alone
        // cannot see loss at the very end of a run).
        self.sent.saturating_sub(self.report.unique())
    }
    fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost() as f64 / self.sent as f64
        }
    }
    fn p(&self, q: f64) -> f64 {
        self.report.percentile_us(q)
    }
}

/// One spinning thread per CPU, stopped on drop or at its deadline.
struct BusyHost {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

impl BusyHost {
    fn start(bound: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let deadline = Instant::now() + bound;
        let threads = (0..cpus)
            .map(|i| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        for _ in 0..10_000 {
                            x = black_box(
                                x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                            );
                        }
                    }
                    x
                })
            })
            .collect();
        // Let the spinners get going.
        std::thread::sleep(Duration::from_millis(50));
        Self { stop, threads }
    }
}

impl Drop for BusyHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A path set up with its generator (in `a`) and sink (in `b`).
struct Rig {
    kind: PathKind,
    generator: Generator,
    sink: Sink,
    // Dropped last, after the path's daemon.
    _path: paths::Path,
    _bed: Bed,
}

impl Rig {
    fn new(kind: PathKind) -> anyhow::Result<Self> {
        let bed = Bed::new(BedOptions {
            peer_xdp: kind == PathKind::XdpNative,
            static_neighbours: false,
        })?;
        let path = paths::setup(&bed, kind, CALLS, A_PORT0, B_PORT0)?;
        let ssrc = |i: usize| 0x5eed_0000 + i as u32;
        let send: Vec<Flow> = path
            .calls
            .iter()
            .enumerate()
            .map(|(i, c)| Flow {
                src: c.a,
                dst: c.a_to,
                ssrc: ssrc(i),
            })
            .collect();
        let recv: Vec<Flow> = path
            .calls
            .iter()
            .enumerate()
            .map(|(i, c)| Flow {
                src: c.a,
                dst: c.b,
                ssrc: ssrc(i),
            })
            .collect();
        let mut generator = Generator::bind(Some(&bed.a), &send)?;
        let sink = Sink::bind(Some(&bed.b), &recv)?;
        // A few packets per call so that every stream latches (and
        // neighbours resolve), then let the relays' learning window close.
        generator.run(&GenConfig {
            rate: Some(2000.0),
            count: 4 * u64::from(CALLS),
            duration: Duration::from_secs(2),
            ..GenConfig::default()
        })?;
        std::thread::sleep(Duration::from_millis(1600));
        sink.drain();
        Ok(Self {
            kind,
            generator,
            sink,
            _path: path,
            _bed: bed,
        })
    }

    /// Wait until the path has nothing queued any more (an overloaded
    /// userspace relay keeps forwarding its backlog for seconds after a
    /// rate-search trial): nothing arriving for 300 ms, at most 15 s.
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

    /// One run: `rate` pps (or flat out) for `secs`.
    fn measure(
        &mut self,
        rate: Option<f64>,
        secs: f64,
        busy: bool,
        grace: Duration,
    ) -> anyhow::Result<(u64, f64, SinkReport)> {
        self.settle();
        let count = rate.map_or(u64::MAX, |r| (r * secs).ceil() as u64);
        let gen_cfg = GenConfig {
            rate,
            count,
            duration: Duration::from_secs_f64(secs * if rate.is_some() { 1.5 } else { 1.0 }),
            realtime: true,
            ..GenConfig::default()
        };
        let per_flow = rate.unwrap_or(50.0 * f64::from(CALLS)) / f64::from(CALLS);
        let sink_cfg = SinkConfig {
            expected: rate.map(|_| count),
            max_duration: Duration::from_secs_f64(secs * 1.5 + 3.0),
            idle: Duration::from_millis(300),
            grace,
            rtp_clock_hz: 160.0 * per_flow,
            realtime: true,
        };
        let _busy = busy.then(|| BusyHost::start(Duration::from_secs_f64(secs * 1.5 + 5.0)));
        let done = AtomicBool::new(false);
        let (generator, sink) = (&mut self.generator, &self.sink);
        let (g, r) = std::thread::scope(|s| {
            let h = s.spawn(|| sink.run(&sink_cfg, &done));
            let g = generator.run(&gen_cfg);
            done.store(true, Ordering::Release);
            (g, h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        });
        let (g, r) = (g?, r?);
        Ok((g.sent, g.pps(), r))
    }

    fn run(
        &mut self,
        load_pct: u32,
        max_pps: f64,
        secs: f64,
        busy: bool,
    ) -> anyhow::Result<Measured> {
        let rate = max_pps * f64::from(load_pct) / 100.0;
        let (sent, offered, report) = self.measure(Some(rate), secs, busy, RUN_GRACE)?;
        let m = Measured {
            kind: self.kind,
            load_pct,
            busy,
            offered_pps: offered,
            sent,
            report,
        };
        eprintln!(
            "    {} {load_pct} %{}: {:.0} pps offered, {} received, loss {:.3} %, p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs",
            self.kind.name(),
            if busy { " busy" } else { "" },
            m.offered_pps,
            m.report.unique(),
            100.0 * m.loss(),
            m.p(0.5),
            m.p(0.99),
            m.report.max_us(),
        );
        Ok(m)
    }
}

/// The userspace path's maximum rate at < 0.1 % loss with this generator:
/// flat out first, then a bisection between 0 and the generator's own
/// flat-out rate.
fn rate_search(rig: &mut Rig, steps: u32, secs: f64) -> anyhow::Result<(f64, String)> {
    let (sent, g_pps, r) = rig.measure(None, secs, false, SEARCH_GRACE)?;
    let loss = 1.0 - r.unique() as f64 / sent.max(1) as f64;
    let delivered = r.unique() as f64 / secs;
    eprintln!(
        "    flat out: {g_pps:.0} pps offered, {delivered:.0} pps delivered, loss {:.2} %",
        100.0 * loss
    );
    if loss < MAX_LOSS {
        return Ok((
            g_pps,
            format!(
                "socket generator flat out ({g_pps:.0} pps) without loss: generator-limited, the path's true maximum is higher"
            ),
        ));
    }
    let (mut lo, mut hi) = (0.0f64, g_pps);
    let mut probe = delivered.min(g_pps) * 0.9;
    for _ in 0..steps {
        let (sent, _, r) = rig.measure(Some(probe), secs, false, SEARCH_GRACE)?;
        let loss = 1.0 - r.unique() as f64 / sent.max(1) as f64;
        eprintln!("    {probe:.0} pps: loss {:.3} %", 100.0 * loss);
        if loss < MAX_LOSS {
            lo = probe;
        } else {
            hi = probe;
        }
        probe = (lo + hi) / 2.0;
    }
    anyhow::ensure!(
        lo > 0.0,
        "no rate with < 0.1 % loss found through the userspace path"
    );
    Ok((
        lo,
        format!(
            "rate search with the socket generator ({steps} steps of {secs} s; flat out {g_pps:.0} pps offered, {delivered:.0} delivered)"
        ),
    ))
}

/// `max_pps` of the userspace path in `capacity.json`, if there.
fn capacity_json(out: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(out.join("capacity.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("paths")?
        .as_array()?
        .iter()
        .find(|p| p.get("path").and_then(serde_json::Value::as_str) == Some("userspace"))?
        .get("max_pps")?
        .as_f64()
        .filter(|x| *x > 0.0)
}

/// Kernel forwarding's run at the same load and busy state.
fn reference<'a>(runs: &'a [Measured], m: &Measured) -> Option<&'a Measured> {
    runs.iter()
        .find(|k| k.kind == PathKind::Kernel && k.load_pct == m.load_pct && k.busy == m.busy)
}

fn find(runs: &[Measured], kind: PathKind, load: u32, busy: bool) -> Option<&Measured> {
    runs.iter()
        .find(|m| m.kind == kind && m.load_pct == load && m.busy == busy)
}

pub fn run(quick: bool, machine: &str, out: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let (secs, loads, steps, search_secs): (f64, &[u32], u32, f64) = if quick {
        (1.0, &[50], 3, 0.5)
    } else {
        (5.0, &[10, 50, 90], 6, 1.0)
    };
    // Userspace first: its maximum sets every load.
    let order = [
        PathKind::Userspace,
        PathKind::XdpNative,
        PathKind::XdpGeneric,
        PathKind::Kernel,
        PathKind::Rtpengine,
    ];
    let mut max_pps = 0.0;
    let mut source = String::new();
    let mut runs: Vec<Measured> = Vec::new();
    for kind in order {
        eprintln!("==> latency: {} ({CALLS} calls)", kind.label());
        let mut rig = Rig::new(kind)?;
        if kind == PathKind::Userspace {
            eprintln!("==> latency: userspace maximum at < 0.1 % loss");
            let (found, how) = rate_search(&mut rig, steps, search_secs)?;
            (max_pps, source) = match capacity_json(out) {
                Some(cap) if cap < found => (
                    cap,
                    format!(
                        "capacity.json userspace max_pps {cap:.0} (below {found:.0} from {how})"
                    ),
                ),
                Some(cap) => (
                    found,
                    format!(
                        "{how}: {found:.0} pps (capacity.json says {cap:.0}; the lower one is used)"
                    ),
                ),
                None => (found, format!("{how}: {found:.0} pps (no capacity.json)")),
            };
            eprintln!("    userspace maximum: {max_pps:.0} pps — {source}");
        }
        for &load in loads {
            runs.push(rig.run(load, max_pps, secs, false)?);
        }
        runs.push(rig.run(50, max_pps, secs, true)?);
    }
    // Table order: the paths' usual order.
    runs.sort_by_key(|m| {
        (
            PathKind::ALL.iter().position(|k| *k == m.kind),
            m.busy,
            m.load_pct,
        )
    });

    println!("## Latency and jitter added by each path\n");
    println!(
        "{CALLS} calls A → B, RTP (160-byte payload, monotonic send stamp) from real sockets, {secs} s per run; \
         loads are % of the userspace path's maximum, {max_pps:.0} pps ({source}). Busy host: one spinning \
         thread per CPU (nice 0) during the run; generator and sink run SCHED_FIFO as hosts of their own. \
         Latency is one-way, socket to socket; \"added p99\" is the path's p99 minus plain kernel forwarding's at \
         the same load and busy state. Jitter: RFC 3550 A.8 on the send stamps, mean / max over the flows.\n"
    );
    println!(
        "| path | load | busy | offered pps | received | lost | p50 µs | p99 µs | p99.9 µs | max µs | added p99 µs | jitter µs |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in &runs {
        let added = reference(&runs, m).map_or(f64::NAN, |k| m.p(0.99) - k.p(0.99));
        let (jm, jx) = m.report.jitter_us();
        println!(
            "| {} | {} % | {} | {:.0} | {} | {:.3} % | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} / {:.1} |",
            m.kind.label(),
            m.load_pct,
            if m.busy { "yes" } else { "no" },
            m.offered_pps,
            m.report.unique(),
            100.0 * m.loss(),
            m.p(0.5),
            m.p(0.99),
            m.p(0.999),
            m.report.max_us(),
            added,
            jm,
            jx,
        );
    }

    // Targets.
    let p99 = |kind, busy| find(&runs, kind, 50, busy).map_or(f64::NAN, |m| m.p(0.99));
    let kernel = p99(PathKind::Kernel, false);
    let native_added = p99(PathKind::XdpNative, false) - kernel;
    let rtpengine_added = p99(PathKind::Rtpengine, false) - kernel;
    let ratio = native_added / rtpengine_added;
    let ratio_met = native_added <= rtpengine_added / 5.0;
    let busy_ratio = p99(PathKind::XdpNative, true) / p99(PathKind::XdpNative, false);
    let busy_met = (busy_ratio - 1.0).abs() <= 0.2;
    let word = |m: bool| if m { "met" } else { "MISSED" };
    println!(
        "\nAt 50 % load: XDP native adds {native_added:.1} µs at p99 over plain kernel forwarding ({kernel:.1} µs), \
         rtpengine adds {rtpengine_added:.1} µs: ratio {ratio:.3} (target ≤ 1/5: {}).",
        word(ratio_met)
    );
    println!(
        "XDP native p99 on a busy host / idle: {busy_ratio:.2} (target within 20 %: {}).\n",
        word(busy_met)
    );
    let targets = vec![
        json!({"name": "p99 added latency at 50 % load, XDP native / rtpengine", "value": ratio,
               "target": "<= 0.2", "met": ratio_met}),
        json!({"name": "XDP native p99 at 50 % load, busy host / idle", "value": busy_ratio,
               "target": "within 20 % (0.8..=1.2)", "met": busy_met}),
    ];
    let json = json!({
        "machine": machine,
        "userspace_max_pps": max_pps,
        "userspace_max_source": source,
        "runs": runs.iter().map(|m| {
            let (jm, jx) = m.report.jitter_us();
            json!({
                "path": m.kind.name(),
                "label": m.kind.label(),
                "load_pct": m.load_pct,
                "busy": m.busy,
                "offered_pps": m.offered_pps,
                "sent": m.sent,
                "received": m.report.unique(),
                "lost": m.lost(),
                "duplicated": m.report.duplicated(),
                "reordered": m.report.reordered(),
                "latency_us": {"p50": m.p(0.5), "p99": m.p(0.99), "p999": m.p(0.999), "max": m.report.max_us()},
                "jitter_us": {"mean": jm, "max": jx},
                "cdf": m.report.cdf(200).iter().map(|(l, f)| json!([l, f])).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
        "targets": targets,
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
