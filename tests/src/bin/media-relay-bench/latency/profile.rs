//! What the host did during a latency run — the figures that explain a
//! busy host's effect on a path — and the busy host itself.
//!
//! Per run: NET_RX softirqs raised, softirq CPU time, the CPU time of the
//! `ksoftirqd/N` threads and their time runnable but waiting for a CPU
//! (work deferred to them competes at nice 0 with the spinners: the way a
//! busy host delays in-kernel forwarding), the relay process's context
//! switches and run-queue wait, the hypervisor's steal time, and the CPU
//! share the spinners got.

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    figure::median,
    host::{MachineCpu, TaskTimes, ksoftirqd_pids, net_rx_softirqs},
};

/// Counters sampled before and after a run.
#[derive(Clone, Copy, Default)]
pub struct Counters {
    net_rx: u64,
    machine: MachineCpu,
    ksoftirqd: TaskTimes,
    relay: Option<RelayCounters>,
}

#[derive(Clone, Copy, Default)]
pub struct RelayCounters {
    pub voluntary: u64,
    pub nonvoluntary: u64,
    pub times: TaskTimes,
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
        c.times = c.times.add(TaskTimes::of(&dir).unwrap_or_default());
    }
    Some(c)
}

/// Where the `ksoftirqd` threads are, read once per path.
pub struct Sampler {
    ksoftirqd: Vec<u32>,
    relay: Option<u32>,
}

impl Sampler {
    pub fn new(relay: Option<u32>) -> Self {
        Self {
            ksoftirqd: ksoftirqd_pids(),
            relay: relay.filter(|p| *p != 0),
        }
    }

    pub fn read(&self) -> Counters {
        Counters {
            net_rx: net_rx_softirqs(),
            machine: MachineCpu::read().unwrap_or_default(),
            ksoftirqd: self
                .ksoftirqd
                .iter()
                .filter_map(|pid| TaskTimes::of(&format!("/proc/{pid}")))
                .fold(TaskTimes::default(), TaskTimes::add),
            relay: self.relay.and_then(relay_counters),
        }
    }
}

/// What happened on the host during one run.
#[derive(Clone, Copy, Default)]
pub struct Profile {
    pub secs: f64,
    pub net_rx: u64,
    pub softirq_ms: f64,
    pub steal_ms: f64,
    pub ksoftirqd: TaskTimes,
    pub relay: Option<RelayCounters>,
    /// The spinning threads' CPU time over their wall time, busy runs only.
    pub spinner_share: Option<f64>,
}

impl Profile {
    pub fn new(a: &Counters, b: &Counters, secs: f64, spinner_share: Option<f64>) -> Self {
        let m = a.machine.until(b.machine);
        Self {
            secs,
            net_rx: b.net_rx.saturating_sub(a.net_rx),
            softirq_ms: m.softirq * 1000.0,
            steal_ms: m.steal * 1000.0,
            ksoftirqd: b.ksoftirqd.since(a.ksoftirqd),
            relay: a.relay.zip(b.relay).map(|(a, b)| RelayCounters {
                voluntary: b.voluntary.saturating_sub(a.voluntary),
                nonvoluntary: b.nonvoluntary.saturating_sub(a.nonvoluntary),
                times: b.times.since(a.times),
            }),
            spinner_share,
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "secs": self.secs,
            "net_rx_softirqs": self.net_rx,
            "softirq_ms": self.softirq_ms,
            "steal_ms": self.steal_ms,
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

    pub fn compact(&self) -> String {
        let mut s = format!(
            "NET_RX {}, softirq {:.0} ms, steal {:.0} ms, ksoftirqd {:.1} ms run / {:.1} ms wait",
            self.net_rx,
            self.softirq_ms,
            self.steal_ms,
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

/// Medians of a set of runs' profiles.
#[derive(Clone, Copy)]
pub struct ProfileMedians {
    pub net_rx: f64,
    pub softirq_ms: f64,
    pub steal_ms: f64,
    pub ksoftirqd_ms: f64,
    pub ksoftirqd_wait_ms: f64,
    pub relay_cpu_ms: Option<f64>,
    pub relay_wait_ms: Option<f64>,
    pub relay_invol: Option<f64>,
    pub spinner_share: Option<f64>,
}

impl ProfileMedians {
    pub fn of(runs: &[&Profile]) -> Self {
        let m =
            |f: &dyn Fn(&Profile) -> f64| median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
        let opt = |f: &dyn Fn(&Profile) -> Option<f64>| {
            let v: Option<Vec<f64>> = runs.iter().map(|r| f(r)).collect();
            v.filter(|v| !v.is_empty()).map(|v| median(&v))
        };
        Self {
            net_rx: m(&|p| p.net_rx as f64),
            softirq_ms: m(&|p| p.softirq_ms),
            steal_ms: m(&|p| p.steal_ms),
            ksoftirqd_ms: m(&|p| p.ksoftirqd.cpu_ms()),
            ksoftirqd_wait_ms: m(&|p| p.ksoftirqd.wait_ms()),
            relay_cpu_ms: opt(&|p| p.relay.map(|r| r.times.cpu_ms())),
            relay_wait_ms: opt(&|p| p.relay.map(|r| r.times.wait_ms())),
            relay_invol: opt(&|p| p.relay.map(|r| r.nonvoluntary as f64)),
            spinner_share: opt(&|p| p.spinner_share),
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "net_rx_softirqs": self.net_rx,
            "softirq_ms": self.softirq_ms,
            "steal_ms": self.steal_ms,
            "ksoftirqd_ms": self.ksoftirqd_ms,
            "ksoftirqd_wait_ms": self.ksoftirqd_wait_ms,
            "relay_cpu_ms": self.relay_cpu_ms,
            "relay_wait_ms": self.relay_wait_ms,
            "relay_nonvoluntary_ctxt_switches": self.relay_invol,
            "spinner_cpu_share": self.spinner_share,
        })
    }
}

/// What the profile says a busy host did to a path, if anything: work
/// deferred to ksoftirqd, or a relay process waiting on the run queue.
pub fn mechanism(idle: &ProfileMedians, busy: &ProfileMedians, userspace: bool) -> &'static str {
    let grew = |idle: f64, busy: f64| busy > idle + 1.0 && busy > 2.0 * idle;
    let deferred = grew(idle.ksoftirqd_ms, busy.ksoftirqd_ms)
        || grew(idle.ksoftirqd_wait_ms, busy.ksoftirqd_wait_ms);
    // Only where the relay process forwards the packets: the XDP paths'
    // daemon is not on the data path. A relay process waits a lot even on
    // an idle host (the SCHED_FIFO generator and sink share its CPUs): a
    // third more is telling.
    let relay_waited = userspace
        && matches!(
            (idle.relay_wait_ms, busy.relay_wait_ms),
            (Some(x), Some(y)) if y > 1.3 * x + 1.0
        );
    match (deferred, relay_waited) {
        (true, true) => {
            "NET_RX work deferred to ksoftirqd and the relay process both ran or waited for a CPU longer (both compete at nice 0 with the spinners)"
        }
        (true, false) => {
            "NET_RX work deferred to ksoftirqd ran or waited for a CPU longer (ksoftirqd runs at nice 0 beside a spinner)"
        }
        (false, true) => {
            "the relay process waited longer on the run queue (it competes at nice 0 with the spinners)"
        }
        (false, false) => "",
    }
}

/// One spinning thread per CPU, stopped on [`BusyHost::finish`], on drop
/// or at its deadline.
pub struct BusyHost {
    stop: Arc<AtomicBool>,
    /// Each thread returns its CPU time and wall time, ns.
    threads: Vec<JoinHandle<(u64, u64)>>,
}

/// The calling thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    TaskTimes::of("/proc/thread-self").map_or(0, |x| x.cpu_ns)
}

impl BusyHost {
    pub fn start(bound: Duration) -> Self {
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
    pub fn finish(mut self) -> Option<f64> {
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
