//! What the host did during a run, from `/proc`: CPU time of the whole
//! machine, of a process and of the `ksoftirqd` threads, softirq counts,
//! and the hypervisor's steal time. One place for the accounting every
//! part uses.

use anyhow::Context as _;

/// USER_HZ, the unit of `/proc/stat` and `/proc/<pid>/stat` times.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The `cpu` line of `/proc/stat`: user nice system idle iowait irq
/// softirq steal … in ticks.
fn cpu_line() -> anyhow::Result<Vec<u64>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(v.len() >= 8, "short cpu line in /proc/stat: {line}");
    Ok(v)
}

/// Machine-wide CPU times, seconds since boot.
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineCpu {
    /// user + nice + system + irq + softirq + steal (guest time is in user).
    pub busy: f64,
    pub softirq: f64,
    /// Time the hypervisor ran something else while a vCPU wanted to run.
    pub steal: f64,
}

impl MachineCpu {
    pub fn read() -> anyhow::Result<Self> {
        let v = cpu_line()?;
        let t = clk_tck();
        Ok(Self {
            busy: (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) as f64 / t,
            softirq: v[6] as f64 / t,
            steal: v[7] as f64 / t,
        })
    }

    /// What happened between `self` (earlier) and `later`.
    pub fn until(self, later: Self) -> Self {
        Self {
            busy: later.busy - self.busy,
            softirq: later.softirq - self.softirq,
            steal: later.steal - self.steal,
        }
    }
}

/// utime + stime of process `pid` (all its threads), seconds.
pub fn process_cpu(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("bad /proc/pid/stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line; `rest` starts at field 3.
    let (u, s): (u64, u64) = (
        f.get(11).context("short stat")?.parse()?,
        f.get(12).context("short stat")?.parse()?,
    );
    Ok((u + s) as f64 / clk_tck())
}

/// A task's (or a sum of tasks') scheduler times.
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskTimes {
    pub cpu_ns: u64,
    /// Runnable but waiting on a run queue.
    pub wait_ns: u64,
    pub slices: u64,
}

impl TaskTimes {
    pub fn add(self, o: Self) -> Self {
        Self {
            cpu_ns: self.cpu_ns + o.cpu_ns,
            wait_ns: self.wait_ns + o.wait_ns,
            slices: self.slices + o.slices,
        }
    }

    pub fn since(self, o: Self) -> Self {
        Self {
            cpu_ns: self.cpu_ns.saturating_sub(o.cpu_ns),
            wait_ns: self.wait_ns.saturating_sub(o.wait_ns),
            slices: self.slices.saturating_sub(o.slices),
        }
    }

    pub fn cpu_ms(self) -> f64 {
        self.cpu_ns as f64 / 1e6
    }

    pub fn wait_ms(self) -> f64 {
        self.wait_ns as f64 / 1e6
    }

    /// A task's scheduler times (`dir` = `/proc/<pid>` or a task dir):
    /// `schedstat` if the kernel has it, else utime + stime from `stat`
    /// (tick resolution, no wait time).
    pub fn of(dir: &str) -> Option<Self> {
        if let Ok(s) = std::fs::read_to_string(format!("{dir}/schedstat")) {
            let f: Vec<u64> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if f.len() >= 3 {
                return Some(Self {
                    cpu_ns: f[0],
                    wait_ns: f[1],
                    slices: f[2],
                });
            }
        }
        let s = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
        let rest = &s[s.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some(Self {
            cpu_ns: (ticks as f64 * 1e9 / clk_tck()) as u64,
            ..Self::default()
        })
    }
}

/// PIDs of the `ksoftirqd/N` kernel threads.
pub fn ksoftirqd_pids() -> Vec<u32> {
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

/// NET_RX softirqs raised so far, summed over CPUs (`/proc/softirqs`).
pub fn net_rx_softirqs() -> u64 {
    std::fs::read_to_string("/proc/softirqs")
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
        .unwrap_or(0)
}

/// VmRSS of this process, KiB.
pub fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// How fast this host is right now, by three fixed workloads timed three
/// times each (medians): the runs of one VM differ more between them than
/// within them, and this says by how much the host itself moved.
/// - `cpu_ms`: 50 million steps of an integer hash, one thread;
/// - `first_touch_ms`: 256 MiB allocated and written once (page faults:
///   most of adopting calls at scale);
/// - `random_read_ns`: one dependent read at a random place of 64 MiB
///   (a cache miss: most of programming 400 000 streams).
pub fn probe() -> serde_json::Value {
    use std::{hint::black_box, time::Instant};
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    // One random cycle through 8 Mi slots (64 MiB; Sattolo's shuffle):
    // each read's place is the last read's value, so reads cannot overlap.
    const SLOTS: usize = 8 << 20;
    let mut next: Vec<u32> = (0..SLOTS as u32).collect();
    let mut x = 0x2545_f491_u64;
    for i in (1..SLOTS).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        next.swap(i, (x % i as u64) as usize);
    }
    let mut cpu = Vec::new();
    let mut touch = Vec::new();
    let mut read = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let mut h = 0x9e37_79b9_7f4a_7c15_u64;
        for i in 0..50_000_000_u64 {
            h = (h ^ i).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(5);
        }
        black_box(h);
        cpu.push(t.elapsed().as_secs_f64() * 1e3);

        let t = Instant::now();
        let v = vec![1_u8; 256 << 20];
        black_box(&v);
        touch.push(t.elapsed().as_secs_f64() * 1e3);
        drop(v);

        const READS: usize = 2_000_000;
        let t = Instant::now();
        let mut at = 0_usize;
        for _ in 0..READS {
            at = next[at] as usize;
        }
        black_box(at);
        read.push(t.elapsed().as_secs_f64() * 1e9 / READS as f64);
    }
    serde_json::json!({
        "cpu_ms": median(cpu),
        "first_touch_ms": median(touch),
        "random_read_ns": median(read),
    })
}

/// [`probe`]'s figures in a line.
pub fn describe_probe(p: &serde_json::Value) -> Option<String> {
    let f = |k: &str| p.get(k).and_then(serde_json::Value::as_f64);
    Some(format!(
        "integer hash {:.0} ms, first touch of 256 MiB {:.0} ms, random read {:.0} ns",
        f("cpu_ms")?,
        f("first_touch_ms")?,
        f("random_read_ns")?
    ))
}

/// A machine this busy (share of all its CPUs) is idle enough to measure.
const SETTLED_BUSY: f64 = 0.05;
/// ... for this many consecutive 1 s windows.
const SETTLED_WINDOWS: u32 = 3;
/// Measure anyway after this long (saying so).
const SETTLE_MAX_S: u32 = 120;

/// `Dirty:` of `/proc/meminfo`, KiB: page cache still to be written back.
fn dirty_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Dirty:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Before the first part: write back the page cache's dirty pages (a
/// fresh build leaves hundreds of MiB of them, and their writeback's I/O
/// and kernel threads would land in the first parts' figures), then wait until
/// the machine is idle: under [`SETTLED_BUSY`] of its CPUs for
/// [`SETTLED_WINDOWS`] seconds in a row, at most [`SETTLE_MAX_S`]. Shows
/// progress; returns what it found, for `build.json`.
pub fn settle() -> serde_json::Value {
    use std::time::{Duration, Instant};
    let started = Instant::now();
    let dirty_before = dirty_kib();
    eprintln!(
        "==> settling the host: writing back {} MiB of dirty pages, then waiting for the CPUs to idle",
        dirty_before.map_or("?".to_owned(), |k| (k / 1024).to_string())
    );
    nix::unistd::sync();
    let synced_s = started.elapsed().as_secs_f64();
    let idle = wait_idle(
        Duration::from_secs(1),
        SETTLED_WINDOWS,
        Duration::from_secs(SETTLE_MAX_S.into()),
    );
    let (settled, last) = (idle.settled, idle.busy_last);
    if !settled {
        eprintln!(
            "\n*** WARNING: the host did not idle within {SETTLE_MAX_S} s ({:.0} % busy in the last second): \
             something else is running, and its load is in the figures ***\n",
            100.0 * last
        );
    }
    serde_json::json!({
        "dirty_kib_before": dirty_before,
        "sync_s": synced_s,
        "waited_s": started.elapsed().as_secs_f64(),
        "busy_last_s": last,
        "settled": settled,
    })
}

/// What [`wait_idle`] found.
#[derive(Clone, Copy, Debug)]
pub struct Idle {
    pub settled: bool,
    /// The share of the CPUs busy in the last window.
    pub busy_last: f64,
    pub waited: std::time::Duration,
}

/// Wait until the machine is under [`SETTLED_BUSY`] of its CPUs for
/// `windows` windows of `window` in a row, at most `max` (then
/// `settled` is false). Says every 10 s that it still waits.
pub fn wait_idle(window: std::time::Duration, windows: u32, max: std::time::Duration) -> Idle {
    let started = std::time::Instant::now();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    let (mut quiet, mut last, mut said) = (0, f64::NAN, 0);
    while quiet < windows && started.elapsed() < max {
        let Ok(a) = MachineCpu::read() else { break };
        std::thread::sleep(window);
        let Ok(b) = MachineCpu::read() else { break };
        last = a.until(b).busy / (cpus * window.as_secs_f64());
        if last < SETTLED_BUSY {
            quiet += 1;
        } else {
            quiet = 0;
            let secs = started.elapsed().as_secs();
            if secs / 10 > said {
                said = secs / 10;
                eprintln!(
                    "    still busy after {secs} s: {:.0} % of the CPUs",
                    100.0 * last
                );
            }
        }
    }
    Idle {
        settled: quiet >= windows,
        busy_last: last,
        waited: started.elapsed(),
    }
}

/// [`settle`]'s result in a line.
pub fn describe_settle(s: &serde_json::Value) -> Option<String> {
    let f = |k: &str| s.get(k).and_then(serde_json::Value::as_f64);
    let settled = s.get("settled")?.as_bool()?;
    Some(format!(
        "{} MiB of dirty pages written back in {:.1} s; {} after {:.0} s ({:.1} % busy in the last second)",
        s.get("dirty_kib_before")
            .and_then(serde_json::Value::as_u64)
            .map_or("?".to_owned(), |k| (k / 1024).to_string()),
        f("sync_s")?,
        if settled { "idle" } else { "NOT idle" },
        f("waited_s")?,
        100.0 * f("busy_last_s")?,
    ))
}

/// How this host's CPUs idle, and the wake-up latency request in force
/// (`requested_us`: the bench's own, `None` with `--host-idle`): an idle
/// vCPU that halts at once makes every packet or message that wakes a
/// thread wait for the hypervisor, which moves every tail. From sysfs.
pub fn cpu_idle(requested_us: Option<u32>, refused: Option<String>) -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    let base = "/sys/devices/system/cpu/cpu0/cpuidle";
    let states: Vec<String> = (0..16)
        .map_while(|i| {
            let name = read(&format!("{base}/state{i}/name"))?;
            let latency = read(&format!("{base}/state{i}/latency")).unwrap_or_default();
            let off = read(&format!("{base}/state{i}/disable")).is_some_and(|d| d == "1");
            Some(format!(
                "{name} {latency} µs{}",
                if off { " (disabled)" } else { "" }
            ))
        })
        .collect();
    serde_json::json!({
        "driver": read("/sys/devices/system/cpu/cpuidle/current_driver"),
        "governor": read("/sys/devices/system/cpu/cpuidle/current_governor_ro")
            .or_else(|| read("/sys/devices/system/cpu/cpuidle/current_governor")),
        "states": states,
        "guest_halt_poll_ns": read("/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
        "requested_us": requested_us,
        "refused": refused,
        "in_force_us": media_user::host::cpu_wake_latency_now().ok(),
    })
}

/// [`cpu_idle`]'s figures in a line.
pub fn describe_cpu_idle(c: &serde_json::Value) -> Option<String> {
    let text = |k: &str| c.get(k).and_then(serde_json::Value::as_str);
    let held = match (
        c.get("requested_us").and_then(serde_json::Value::as_u64),
        text("refused"),
    ) {
        (Some(us), None) => format!(
            "a wake-up latency of {us} µs held by the bench (PM QoS, every CPU: idle CPUs {})",
            if us == 0 {
                "poll"
            } else {
                "stay in shallow states"
            }
        ),
        (Some(us), Some(why)) => {
            format!("a wake-up latency of {us} µs asked for and refused ({why})")
        }
        (None, _) => {
            "the host's own settings (`--host-idle`: no wake-up latency request)".to_owned()
        }
    };
    let states: Vec<&str> = c
        .get("states")?
        .as_array()?
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect();
    Some(format!(
        "{held}; cpuidle driver {}, governor {}, states {}{}",
        text("driver").unwrap_or("none"),
        text("governor").unwrap_or("none"),
        if states.is_empty() {
            "none".to_owned()
        } else {
            states.join(", ")
        },
        text("guest_halt_poll_ns")
            .map(|ns| format!(", guest_halt_poll_ns {ns}"))
            .unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_accounting_reads() {
        let a = MachineCpu::read().unwrap();
        let b = MachineCpu::read().unwrap();
        let d = a.until(b);
        assert!(d.busy >= 0.0 && d.steal >= 0.0);
        assert!(process_cpu(std::process::id()).is_ok());
        assert!(TaskTimes::of("/proc/self").is_some());
        assert!(rss_kib() > 0);
    }

    /// The report says whether the bench held the request, was refused
    /// it, or measured the host's own settings, and how the CPUs idle.
    #[test]
    fn cpu_idle_is_described() {
        let c = |requested: Option<u32>, refused: Option<&str>| {
            serde_json::json!({
                "driver": "haltpoll",
                "governor": "haltpoll",
                "states": ["POLL 0 µs", "haltpoll idle 1 µs"],
                "guest_halt_poll_ns": "0",
                "requested_us": requested,
                "refused": refused,
            })
        };
        assert_eq!(
            describe_cpu_idle(&c(Some(0), None)).unwrap(),
            "a wake-up latency of 0 µs held by the bench (PM QoS, every CPU: idle CPUs poll); \
             cpuidle driver haltpoll, governor haltpoll, states POLL 0 µs, haltpoll idle 1 µs, \
             guest_halt_poll_ns 0"
        );
        assert!(
            describe_cpu_idle(&c(Some(0), Some("Permission denied")))
                .unwrap()
                .starts_with("a wake-up latency of 0 µs asked for and refused (Permission denied)")
        );
        assert!(
            describe_cpu_idle(&c(None, None))
                .unwrap()
                .starts_with("the host's own settings")
        );
        // A report from before the bench recorded it says nothing.
        assert_eq!(describe_cpu_idle(&serde_json::json!({})), None);
    }

    /// What settling found is read from this host and said in a line.
    #[test]
    fn settling_is_described() {
        assert!(dirty_kib().is_some(), "Dirty: in /proc/meminfo");
        let line = describe_settle(&serde_json::json!({
            "dirty_kib_before": 2_097_152,
            "sync_s": 4.31,
            "waited_s": 9.0,
            "busy_last_s": 0.012,
            "settled": true,
        }))
        .unwrap();
        assert_eq!(
            line,
            "2048 MiB of dirty pages written back in 4.3 s; idle after 9 s (1.2 % busy in the last second)"
        );
        assert_eq!(describe_settle(&serde_json::json!({})), None);
    }
}
