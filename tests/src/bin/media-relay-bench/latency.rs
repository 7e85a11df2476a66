//! Latency and jitter each forwarding path adds, from real RTP sockets
//! (`media_relay_tests::socket_load`): A sends paced RTP with a monotonic
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
//!
//! p99 at tens of µs moves by 20 % from run to run, so at 50 % load idle
//! and busy runs alternate in pairs (3 per path, 1 in quick mode) and the
//! targets are judged on the median p99 of each set. Every run also
//! samples the host's profile: NET_RX softirqs, softirq CPU time, the CPU
//! time of the `ksoftirqd/N` threads (work deferred to them competes at
//! nice 0 with the spinners: the way a busy host delays in-kernel
//! forwarding), the relay process's context switches and the spinners'
//! CPU share; the busy check reads its verdict from these figures.

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
    socket_load::{Flow, GenConfig, Generator, Sink, SinkConfig, SinkReport},
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

/// Kernel counters sampled around a run: the figures that explain what a
/// busy host does to a path.
#[derive(Clone, Copy, Default)]
struct Counters {
    /// NET_RX softirqs raised, summed over CPUs (`/proc/softirqs`).
    net_rx: u64,
    /// Softirq CPU time, USER_HZ ticks (`/proc/stat`, all CPUs).
    softirq_ticks: u64,
    /// The `ksoftirqd/N` threads: CPU time and time runnable but waiting
    /// for a CPU, ns, and how many times they were scheduled in.
    ksoftirqd: TaskTimes,
    /// The relay process (all its threads), if there is one.
    relay: Option<RelayCounters>,
}

#[derive(Clone, Copy, Default)]
struct RelayCounters {
    voluntary: u64,
    nonvoluntary: u64,
    times: TaskTimes,
}

/// A task's (or a sum of tasks') scheduler times.
#[derive(Clone, Copy, Default)]
struct TaskTimes {
    cpu_ns: u64,
    /// Runnable but waiting on a run queue.
    wait_ns: u64,
    slices: u64,
}

impl TaskTimes {
    fn add(self, o: Self) -> Self {
        Self {
            cpu_ns: self.cpu_ns + o.cpu_ns,
            wait_ns: self.wait_ns + o.wait_ns,
            slices: self.slices + o.slices,
        }
    }
    fn since(self, o: Self) -> Self {
        Self {
            cpu_ns: self.cpu_ns.saturating_sub(o.cpu_ns),
            wait_ns: self.wait_ns.saturating_sub(o.wait_ns),
            slices: self.slices.saturating_sub(o.slices),
        }
    }
    fn cpu_ms(self) -> f64 {
        self.cpu_ns as f64 / 1e6
    }
    fn wait_ms(self) -> f64 {
        self.wait_ns as f64 / 1e6
    }
}

/// USER_HZ, for `/proc/stat` and `/proc/<pid>/stat` ticks.
fn clk_tck() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// PIDs of the `ksoftirqd/N` kernel threads.
fn ksoftirqd_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// A task's scheduler times: `schedstat` if the kernel has it, else
/// utime + stime from `stat` (tick resolution, no wait time).
fn task_times(dir: &str) -> Option<TaskTimes> {
    if let Ok(s) = std::fs::read_to_string(format!("{dir}/schedstat")) {
        let f: Vec<u64> = s
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() >= 3 {
            return Some(TaskTimes {
                cpu_ns: f[0],
                wait_ns: f[1],
                slices: f[2],
            });
        }
    }
    let s = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(TaskTimes {
        cpu_ns: ticks * 1_000_000_000 / clk_tck(),
        ..TaskTimes::default()
    })
}

fn relay_counters(pid: u32) -> Option<RelayCounters> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut c = RelayCounters::default();
    for t in tasks.filter_map(Result::ok) {
        let dir = t.path().display().to_string();
        if let Ok(status) = std::fs::read_to_string(format!("{dir}/status")) {
            for line in status.lines() {
                let field = |name: &str| {
                    line.strip_prefix(name)
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                c.voluntary += field("voluntary_ctxt_switches:");
                c.nonvoluntary += field("nonvoluntary_ctxt_switches:");
            }
        }
        c.times = c.times.add(task_times(&dir).unwrap_or_default());
    }
    Some(c)
}

fn read_counters(ksoftirqd: &[u32], relay: Option<u32>) -> Counters {
    let net_rx = std::fs::read_to_string("/proc/softirqs")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.trim_start().strip_prefix("NET_RX:"))
                .map(|l| {
                    l.split_whitespace()
                        .filter_map(|x| x.parse::<u64>().ok())
                        .sum()
                })
        })
        .unwrap_or(0);
    // cpu user nice system idle iowait irq softirq ...
    let softirq_ticks = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu "))?
                .split_whitespace()
                .nth(7)?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Counters {
        net_rx,
        softirq_ticks,
        ksoftirqd: ksoftirqd
            .iter()
            .filter_map(|pid| task_times(&format!("/proc/{pid}")))
            .fold(TaskTimes::default(), TaskTimes::add),
        relay: relay.and_then(relay_counters),
    }
}

/// What happened on the host during one run.
#[derive(Clone, Copy, Default)]
struct Profile {
    secs: f64,
    net_rx: u64,
    softirq_ms: f64,
    ksoftirqd: TaskTimes,
    relay: Option<RelayCounters>,
    /// The spinning threads' CPU time over their wall time, busy runs only.
    spinner_share: Option<f64>,
}

impl Profile {
    fn new(a: &Counters, b: &Counters, secs: f64, spinner_share: Option<f64>) -> Self {
        Self {
            secs,
            net_rx: b.net_rx.saturating_sub(a.net_rx),
            softirq_ms: b.softirq_ticks.saturating_sub(a.softirq_ticks) as f64 * 1000.0
                / clk_tck() as f64,
            ksoftirqd: b.ksoftirqd.since(a.ksoftirqd),
            relay: a.relay.zip(b.relay).map(|(a, b)| RelayCounters {
                voluntary: b.voluntary.saturating_sub(a.voluntary),
                nonvoluntary: b.nonvoluntary.saturating_sub(a.nonvoluntary),
                times: b.times.since(a.times),
            }),
            spinner_share,
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "secs": self.secs,
            "net_rx_softirqs": self.net_rx,
            "softirq_ms": self.softirq_ms,
            "ksoftirqd_ms": self.ksoftirqd.cpu_ms(),
            "ksoftirqd_wait_ms": self.ksoftirqd.wait_ms(),
            "ksoftirqd_timeslices": self.ksoftirqd.slices,
            "relay_voluntary_ctxt_switches": self.relay.map(|r| r.voluntary),
            "relay_nonvoluntary_ctxt_switches": self.relay.map(|r| r.nonvoluntary),
            "relay_cpu_ms": self.relay.map(|r| r.times.cpu_ms()),
            "relay_wait_ms": self.relay.map(|r| r.times.wait_ms()),
            "spinner_cpu_share": self.spinner_share,
        })
    }

    fn compact(&self) -> String {
        let mut s = format!(
            "NET_RX {}, softirq {:.0} ms, ksoftirqd {:.1} ms run / {:.1} ms wait",
            self.net_rx,
            self.softirq_ms,
            self.ksoftirqd.cpu_ms(),
            self.ksoftirqd.wait_ms()
        );
        if let Some(r) = self.relay {
            s += &format!(
                ", relay {:.0} ms run / {:.1} ms wait, cs {}/{} vol/invol",
                r.times.cpu_ms(),
                r.times.wait_ms(),
                r.voluntary,
                r.nonvoluntary
            );
        }
        if let Some(x) = self.spinner_share {
            s += &format!(", spinners {:.0} %", 100.0 * x);
        }
        s
    }
}

/// One measured run.
struct Measured {
    kind: PathKind,
    load_pct: u32,
    busy: bool,
    repeat: u32,
    /// The rate asked for, and what the generator achieved.
    target_pps: f64,
    offered_pps: f64,
    sent: u64,
    report: SinkReport,
    profile: Profile,
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

/// One spinning thread per CPU, stopped by `stop`, on drop or at its
/// deadline.
struct BusyHost {
    stop: Arc<AtomicBool>,
    /// Each thread returns its CPU time and wall time, ns.
    threads: Vec<JoinHandle<(u64, u64)>>,
}

/// The calling thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    task_times("/proc/thread-self").map_or(0, |x| x.cpu_ns)
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
                    let (t0, cpu0) = (Instant::now(), thread_cpu_ns());
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        for _ in 0..10_000 {
                            x = black_box(
                                x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                            );
                        }
                    }
                    black_box(x);
                    (
                        thread_cpu_ns().saturating_sub(cpu0),
                        u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX),
                    )
                })
            })
            .collect();
        // Let the spinners get going.
        std::thread::sleep(Duration::from_millis(50));
        Self { stop, threads }
    }

    /// Stop the spinners; their CPU share (CPU time over wall time, all
    /// threads together).
    fn finish(mut self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let (cpu, wall) = self
            .threads
            .drain(..)
            .filter_map(|t| t.join().ok())
            .fold((0u64, 0u64), |(c, w), (tc, tw)| (c + tc, w + tw));
        (wall > 0 && cpu > 0).then(|| cpu as f64 / wall as f64)
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
    ksoftirqd: Vec<u32>,
    // Dropped last, after the path's daemon.
    path: paths::Path,
    _bed: Bed,
}

impl Rig {
    fn new(kind: PathKind) -> anyhow::Result<Self> {
        let bed = Bed::new(BedOptions {
            peer_xdp: kind == PathKind::XdpNative,
            static_neighbours: false,
        })?;
        let path = paths::setup(crate::files(), &bed, kind, CALLS, A_PORT0, B_PORT0)?;
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
            ksoftirqd: ksoftirqd_pids(),
            path,
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

    /// One run: `rate` pps (or flat out) for `secs`, with the host's
    /// profile over the run.
    fn measure(
        &mut self,
        rate: Option<f64>,
        secs: f64,
        busy: bool,
        grace: Duration,
    ) -> anyhow::Result<(u64, f64, SinkReport, Profile)> {
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
        let relay = self.path.pid().filter(|p| *p != 0);
        let busy_host = busy.then(|| BusyHost::start(Duration::from_secs_f64(secs * 1.5 + 5.0)));
        let before = read_counters(&self.ksoftirqd, relay);
        let t0 = Instant::now();
        let done = AtomicBool::new(false);
        let (generator, sink) = (&mut self.generator, &self.sink);
        let (g, r) = std::thread::scope(|s| {
            let h = s.spawn(|| sink.run(&sink_cfg, &done));
            let g = generator.run(&gen_cfg);
            done.store(true, Ordering::Release);
            (g, h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        });
        let after = read_counters(&self.ksoftirqd, relay);
        let elapsed = t0.elapsed().as_secs_f64();
        let share = busy_host.and_then(BusyHost::finish);
        let (g, r) = (g?, r?);
        Ok((
            g.sent,
            g.pps(),
            r,
            Profile::new(&before, &after, elapsed, share),
        ))
    }

    fn run(
        &mut self,
        load_pct: u32,
        max_pps: f64,
        secs: f64,
        busy: bool,
        repeat: u32,
    ) -> anyhow::Result<Measured> {
        let rate = max_pps * f64::from(load_pct) / 100.0;
        let (sent, offered, report, profile) = self.measure(Some(rate), secs, busy, RUN_GRACE)?;
        let m = Measured {
            kind: self.kind,
            load_pct,
            busy,
            repeat,
            target_pps: rate,
            offered_pps: offered,
            sent,
            report,
            profile,
        };
        eprintln!(
            "    {} {load_pct} %{} #{repeat}: {:.0} pps offered, {} received, loss {:.3} %, p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs; {}",
            self.kind.name(),
            if busy { " busy" } else { "" },
            m.offered_pps,
            m.report.unique(),
            100.0 * m.loss(),
            m.p(0.5),
            m.p(0.99),
            m.report.max_us(),
            m.profile.compact(),
        );
        Ok(m)
    }
}

/// The userspace path's maximum rate at < 0.1 % loss with this generator:
/// flat out first, then a bisection between 0 and the generator's own
/// flat-out rate.
fn rate_search(rig: &mut Rig, steps: u32, secs: f64) -> anyhow::Result<(f64, String)> {
    let (sent, g_pps, r, _) = rig.measure(None, secs, false, SEARCH_GRACE)?;
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
        let (sent, _, r, _) = rig.measure(Some(probe), secs, false, SEARCH_GRACE)?;
        let loss = 1.0 - r.unique() as f64 / sent.max(1) as f64;
        eprintln!("    {probe:.0} pps: loss {:.3} %", 100.0 * loss);
        if loss < MAX_LOSS {
            lo = probe;
        } else {
            hi = probe;
        }
        probe = f64::midpoint(lo, hi);
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

/// Kernel forwarding's run at the same load, busy state and repeat (or
/// any repeat).
fn reference<'a>(runs: &'a [Measured], m: &Measured) -> Option<&'a Measured> {
    let same =
        |k: &&Measured| k.kind == PathKind::Kernel && k.load_pct == m.load_pct && k.busy == m.busy;
    runs.iter()
        .filter(same)
        .find(|k| k.repeat == m.repeat)
        .or_else(|| runs.iter().find(same))
}

fn set(runs: &[Measured], kind: PathKind, load: u32, busy: bool) -> Vec<&Measured> {
    runs.iter()
        .filter(|m| m.kind == kind && m.load_pct == load && m.busy == busy)
        .collect()
}

/// Median of the finite values; NaN if none.
fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// Median p99 of a path's runs at `load` and `busy`, and how many.
fn median_p99(runs: &[Measured], kind: PathKind, load: u32, busy: bool) -> (f64, usize) {
    let s = set(runs, kind, load, busy);
    (median(s.iter().map(|m| m.p(0.99)).collect()), s.len())
}

/// Medians of a set of runs' profiles.
struct ProfileMedians {
    net_rx: f64,
    softirq_ms: f64,
    ksoftirqd_ms: f64,
    ksoftirqd_wait_ms: f64,
    relay_cpu_ms: Option<f64>,
    relay_wait_ms: Option<f64>,
    relay_vol: Option<f64>,
    relay_invol: Option<f64>,
    spinner_share: Option<f64>,
}

impl ProfileMedians {
    fn of(runs: &[&Measured]) -> Self {
        let m = |f: &dyn Fn(&Profile) -> f64| median(runs.iter().map(|r| f(&r.profile)).collect());
        let opt = |f: &dyn Fn(&Profile) -> Option<f64>| {
            let v: Option<Vec<f64>> = runs.iter().map(|r| f(&r.profile)).collect();
            v.filter(|v| !v.is_empty()).map(median)
        };
        Self {
            net_rx: m(&|p| p.net_rx as f64),
            softirq_ms: m(&|p| p.softirq_ms),
            ksoftirqd_ms: m(&|p| p.ksoftirqd.cpu_ms()),
            ksoftirqd_wait_ms: m(&|p| p.ksoftirqd.wait_ms()),
            relay_cpu_ms: opt(&|p| p.relay.map(|r| r.times.cpu_ms())),
            relay_wait_ms: opt(&|p| p.relay.map(|r| r.times.wait_ms())),
            relay_vol: opt(&|p| p.relay.map(|r| r.voluntary as f64)),
            relay_invol: opt(&|p| p.relay.map(|r| r.nonvoluntary as f64)),
            spinner_share: opt(&|p| p.spinner_share),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "net_rx_softirqs": self.net_rx,
            "softirq_ms": self.softirq_ms,
            "ksoftirqd_ms": self.ksoftirqd_ms,
            "ksoftirqd_wait_ms": self.ksoftirqd_wait_ms,
            "relay_cpu_ms": self.relay_cpu_ms,
            "relay_wait_ms": self.relay_wait_ms,
            "relay_voluntary_ctxt_switches": self.relay_vol,
            "relay_nonvoluntary_ctxt_switches": self.relay_invol,
            "spinner_cpu_share": self.spinner_share,
        })
    }
}

/// One path's busy-host comparison at 50 % load: alternating idle and
/// busy runs, judged on the median p99 of each set.
struct BusyCheck {
    kind: PathKind,
    idle_p99: Vec<f64>,
    busy_p99: Vec<f64>,
    /// busy / idle of each pair (same repeat).
    pair_ratios: Vec<f64>,
    idle: ProfileMedians,
    busy: ProfileMedians,
    /// Runs in which the generator fell > 5 % behind its rate: the host
    /// was disturbed (by something other than the spinners, too).
    disturbed: usize,
}

impl BusyCheck {
    fn of(runs: &[Measured], kind: PathKind) -> Option<Self> {
        let idle = set(runs, kind, 50, false);
        let busy = set(runs, kind, 50, true);
        if busy.is_empty() || idle.is_empty() {
            return None;
        }
        let pair_ratios = busy
            .iter()
            .filter_map(|b| {
                let i = idle.iter().find(|i| i.repeat == b.repeat)?;
                Some(b.p(0.99) / i.p(0.99))
            })
            .collect();
        Some(Self {
            kind,
            idle_p99: idle.iter().map(|m| m.p(0.99)).collect(),
            busy_p99: busy.iter().map(|m| m.p(0.99)).collect(),
            pair_ratios,
            disturbed: idle
                .iter()
                .chain(&busy)
                .filter(|m| m.offered_pps < 0.95 * m.target_pps)
                .count(),
            idle: ProfileMedians::of(&idle),
            busy: ProfileMedians::of(&busy),
        })
    }

    fn ratio(&self) -> f64 {
        median(self.busy_p99.clone()) / median(self.idle_p99.clone())
    }

    fn met(&self) -> bool {
        (self.ratio() - 1.0).abs() <= 0.2
    }

    fn pair_range(&self) -> String {
        let lo = self
            .pair_ratios
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let hi = self.pair_ratios.iter().copied().fold(0.0, f64::max);
        if self.pair_ratios.len() < 2 {
            format!("{hi:.2}")
        } else {
            format!("{lo:.2}–{hi:.2}")
        }
    }

    /// One sentence (or two) interpreting busy vs idle from the profile.
    fn sentence(&self, kernel: Option<&Self>) -> String {
        let (i, b) = (&self.idle, &self.busy);
        let n = self.pair_ratios.len();
        let ratio = self.ratio();
        let mut s = format!(
            "{}: p99 busy/idle {ratio:.2} (median of {n} pair{}: {:.1} µs idle, {:.1} µs busy{}); \
             ksoftirqd ran {:.1} ms and waited {:.1} ms for a CPU busy vs {:.1} / {:.1} ms idle per run, \
             softirq time {:.0} vs {:.0} ms, NET_RX softirqs {:.0} vs {:.0}",
            self.kind.label(),
            if n == 1 { "" } else { "s" },
            median(self.idle_p99.clone()),
            median(self.busy_p99.clone()),
            if n > 1 {
                format!("; single pairs {}", self.pair_range())
            } else {
                String::new()
            },
            b.ksoftirqd_ms,
            b.ksoftirqd_wait_ms,
            i.ksoftirqd_ms,
            i.ksoftirqd_wait_ms,
            b.softirq_ms,
            i.softirq_ms,
            b.net_rx,
            i.net_rx,
        );
        if let (Some(ci), Some(cb), Some(wi), Some(wb)) = (
            i.relay_cpu_ms,
            b.relay_cpu_ms,
            i.relay_wait_ms,
            b.relay_wait_ms,
        ) {
            s += &format!(
                "; the relay process ran {cb:.0} ms and waited {wb:.1} ms for a CPU vs {ci:.0} / {wi:.1} ms"
            );
            if let (Some(ni), Some(nb)) = (i.relay_invol, b.relay_invol) {
                s += &format!(" ({nb:.0} vs {ni:.0} involuntary context switches)");
            }
        }
        if let Some(x) = b.spinner_share {
            s += &format!("; the spinners got {:.0} % of their CPUs", 100.0 * x);
        }
        s += ". ";
        // What a busy host does: runnable kernel threads or relay
        // processes wait for a CPU behind the spinners.
        let grew = |idle: f64, busy: f64| busy > idle + 1.0 && busy > 2.0 * idle;
        let deferred =
            grew(i.ksoftirqd_ms, b.ksoftirqd_ms) || grew(i.ksoftirqd_wait_ms, b.ksoftirqd_wait_ms);
        // Only where the relay process forwards the packets: the XDP
        // paths' daemon is not on the data path.
        let relay_waited = matches!(self.kind, PathKind::Userspace | PathKind::Rtpengine)
            && matches!(
                (i.relay_wait_ms, b.relay_wait_ms),
                // A relay process waits a lot even on an idle host (the
                // SCHED_FIFO generator and sink share its CPUs): a third
                // more is telling.
                (Some(x), Some(y)) if y > 1.3 * x + 1.0
            );
        let mechanism = match (deferred, relay_waited) {
            (true, true) => {
                "NET_RX work deferred to ksoftirqd and the relay process both ran or waited for a CPU longer — both compete at nice 0 with the spinners, so packets wait for them"
            }
            (true, false) => {
                "NET_RX work deferred to ksoftirqd ran or waited for a CPU longer — ksoftirqd runs at nice 0 and shares its CPU with a spinner, so packets wait for it"
            }
            (false, true) => {
                "the relay process waited longer on the run queue: it competes at nice 0 with the spinners for CPU"
            }
            (false, false) => "",
        };
        let mut noise = String::new();
        if let Some(k) = kernel.filter(|k| k.kind != self.kind) {
            noise += &format!(
                "plain kernel forwarding's own busy/idle ratio was {:.2}; ",
                k.ratio()
            );
        }
        if n > 1 {
            noise += &format!("single pairs spread {}", self.pair_range());
        } else {
            noise += "one pair only, and p99 at tens of µs varies by ~20 % between runs";
        }
        if self.disturbed > 0 {
            noise += &format!(
                "; in {} of these runs the generator fell > 5 % behind its rate, so the host was disturbed by more than the spinners",
                self.disturbed
            );
        }
        s += &if self.met() {
            if mechanism.is_empty() {
                "Unchanged within 20 %: no extra deferral to ksoftirqd or run-queue wait shows."
                    .to_owned()
            } else {
                format!("Within 20 %, although {mechanism}.")
            }
        } else if ratio > 1.0 {
            if mechanism.is_empty() {
                format!(
                    "Slower when busy, but neither deferral to ksoftirqd nor run-queue wait of a relay process shows in the counters: {noise}."
                )
            } else {
                format!(
                    "Slower when busy: {mechanism}{}.",
                    kernel
                        .filter(|k| k.kind != self.kind)
                        .map(|k| format!(
                            " (plain kernel forwarding's own busy/idle ratio was {:.2})",
                            k.ratio()
                        ))
                        .unwrap_or_default()
                )
            }
        } else {
            format!(
                "Faster when busy, with no less work in the counters: busy CPUs never go idle, so no wake-up from idle (in a VM, a halted vCPU) delays delivery; or noise: {noise}."
            )
        };
        s
    }

    fn json(&self, kernel: Option<&Self>) -> serde_json::Value {
        json!({
            "path": self.kind.name(),
            "label": self.kind.label(),
            "pairs": self.pair_ratios.len(),
            "idle_p99_us": self.idle_p99,
            "busy_p99_us": self.busy_p99,
            "median_idle_p99_us": median(self.idle_p99.clone()),
            "median_busy_p99_us": median(self.busy_p99.clone()),
            "ratio": self.ratio(),
            "pair_ratios": self.pair_ratios,
            "within_20_pct": self.met(),
            "idle_profile": self.idle.json(),
            "busy_profile": self.busy.json(),
            "interpretation": self.sentence(kernel),
        })
    }
}

pub fn run(quick: bool, machine: &str, out: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    // Loads other than 50 %, runs per load, pairs of 50 % idle/busy runs.
    let (secs, other_loads, pairs, steps, search_secs): (f64, &[u32], u32, u32, f64) = if quick {
        (1.0, &[], 1, 3, 0.5)
    } else {
        (5.0, &[10, 90], 3, 6, 1.0)
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
        for &load in other_loads.iter().filter(|l| **l < 50) {
            runs.push(rig.run(load, max_pps, secs, false, 0)?);
        }
        // 50 %: idle and busy runs in alternating pairs, the order
        // swapped every other pair so that drift does not favour either.
        for repeat in 0..pairs {
            let order = if repeat % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for busy in order {
                runs.push(rig.run(50, max_pps, secs, busy, repeat)?);
            }
        }
        for &load in other_loads.iter().filter(|l| **l > 50) {
            runs.push(rig.run(load, max_pps, secs, false, 0)?);
        }
    }
    // Table order: the paths' usual order.
    runs.sort_by_key(|m| {
        (
            PathKind::ALL.iter().position(|k| *k == m.kind),
            m.busy,
            m.load_pct,
            m.repeat,
        )
    });

    println!("## Latency and jitter added by each path\n");
    println!(
        "{CALLS} calls A → B, RTP (160-byte payload, monotonic send stamp) from real sockets, {secs} s per run; \
         loads are % of the userspace path's maximum, {max_pps:.0} pps ({source}). Busy host: one spinning \
         thread per CPU (nice 0) during the run; generator and sink run SCHED_FIFO as hosts of their own. \
         At 50 % load, idle and busy runs alternate in {pairs} pair{} per path; targets are judged on medians. \
         Latency is one-way, socket to socket; \"added p99\" is the path's p99 minus plain kernel forwarding's at \
         the same load, busy state and repeat. Jitter: RFC 3550 A.8 on the send stamps, mean / max over the flows.\n",
        if pairs == 1 { "" } else { "s" }
    );
    println!(
        "| path | load | busy | # | offered pps | received | lost | p50 µs | p99 µs | p99.9 µs | max µs | added p99 µs | jitter µs |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in &runs {
        let added = reference(&runs, m).map_or(f64::NAN, |k| m.p(0.99) - k.p(0.99));
        let (jm, jx) = m.report.jitter_us();
        println!(
            "| {} | {} % | {} | {} | {:.0} | {} | {:.3} % | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} / {:.1} |",
            m.kind.label(),
            m.load_pct,
            if m.busy { "yes" } else { "no" },
            m.repeat,
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

    // The busy-host check, with the profile that explains it.
    let checks: Vec<BusyCheck> = PathKind::ALL
        .iter()
        .filter_map(|k| BusyCheck::of(&runs, *k))
        .collect();
    let kernel_check = checks.iter().find(|c| c.kind == PathKind::Kernel);
    println!(
        "\n### Busy host vs idle at 50 % load\n\nMedians over the runs of each set; profile figures are per run \
         (idle → busy): NET_RX softirqs raised, softirq CPU time (/proc/stat, tick-sampled and host-wide: coarse), the ksoftirqd threads' CPU \
         time and time runnable but waiting for a CPU (schedstat), the same wait for the relay process and its \
         involuntary context switches, and the CPU share the spinners got.\n"
    );
    println!(
        "| path | pairs | p99 idle µs | p99 busy µs | busy/idle | single pairs | NET_RX | softirq ms | ksoftirqd run ms | ksoftirqd wait ms | relay wait ms | relay invol. cs | spinners |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in &checks {
        let (i, b) = (&c.idle, &c.busy);
        let opt = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => format!("{x:.0} → {y:.0}"),
            _ => "–".to_owned(),
        };
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.2} | {} | {:.0} → {:.0} | {:.0} → {:.0} | {:.1} → {:.1} | {:.1} → {:.1} | {} | {} | {} |",
            c.kind.label(),
            c.pair_ratios.len(),
            median(c.idle_p99.clone()),
            median(c.busy_p99.clone()),
            c.ratio(),
            c.pair_range(),
            i.net_rx,
            b.net_rx,
            i.softirq_ms,
            b.softirq_ms,
            i.ksoftirqd_ms,
            b.ksoftirqd_ms,
            i.ksoftirqd_wait_ms,
            b.ksoftirqd_wait_ms,
            match (i.relay_wait_ms, b.relay_wait_ms) {
                (Some(x), Some(y)) => format!("{x:.1} → {y:.1}"),
                _ => "–".to_owned(),
            },
            opt(i.relay_invol, b.relay_invol),
            b.spinner_share
                .map_or("–".to_owned(), |x| format!("{:.0} %", 100.0 * x)),
        );
    }
    println!();
    for c in &checks {
        println!("- {}", c.sentence(kernel_check));
    }

    // Targets, on medians.
    let (kernel, n_idle) = median_p99(&runs, PathKind::Kernel, 50, false);
    let native_added = median_p99(&runs, PathKind::XdpNative, 50, false).0 - kernel;
    let rtpengine_added = median_p99(&runs, PathKind::Rtpengine, 50, false).0 - kernel;
    let ratio = native_added / rtpengine_added;
    let ratio_met = native_added <= rtpengine_added / 5.0;
    let native_check = checks.iter().find(|c| c.kind == PathKind::XdpNative);
    let busy_ratio = native_check.map_or(f64::NAN, BusyCheck::ratio);
    let busy_met = native_check.is_some_and(BusyCheck::met);
    let n_pairs = native_check.map_or(0, |c| c.pair_ratios.len());
    let word = |m: bool| if m { "met" } else { "MISSED" };
    println!(
        "\nAt 50 % load (median p99 of {n_idle} idle run{} per path): XDP native adds {native_added:.1} µs at p99 over \
         plain kernel forwarding ({kernel:.1} µs), rtpengine adds {rtpengine_added:.1} µs: ratio {ratio:.3} \
         (target ≤ 1/5: {}).",
        if n_idle == 1 { "" } else { "s" },
        word(ratio_met)
    );
    println!(
        "XDP native p99 on a busy host / idle, median of {n_pairs} pair{}: {busy_ratio:.2} (target within 20 %: {}).",
        if n_pairs == 1 { "" } else { "s" },
        word(busy_met)
    );
    if !busy_met && let Some(c) = native_check {
        println!("Why: {}", c.sentence(kernel_check));
    }
    println!();
    let targets = vec![
        json!({"name": "p99 added latency at 50 % load, XDP native / rtpengine", "value": ratio,
               "target": "<= 0.2", "met": ratio_met, "runs_per_median": n_idle}),
        json!({"name": "XDP native p99 at 50 % load, busy host / idle", "value": busy_ratio,
               "target": "within 20 % (0.8..=1.2)", "met": busy_met, "pairs": n_pairs,
               "judged_on": "median p99 of the busy runs / median p99 of the idle runs",
               "explanation": native_check.map(|c| c.sentence(kernel_check))}),
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
                "repeat": m.repeat,
                "target_pps": m.target_pps,
                "offered_pps": m.offered_pps,
                "sent": m.sent,
                "received": m.report.unique(),
                "lost": m.lost(),
                "duplicated": m.report.duplicated(),
                "reordered": m.report.reordered(),
                "latency_us": {"p50": m.p(0.5), "p99": m.p(0.99), "p999": m.p(0.999), "max": m.report.max_us()},
                "jitter_us": {"mean": jm, "max": jx},
                "profile": m.profile.json(),
                "cdf": m.report.cdf(200).iter().map(|(l, f)| json!([l, f])).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
        "busy_check": checks.iter().map(|c| c.json(kernel_check)).collect::<Vec<_>>(),
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
