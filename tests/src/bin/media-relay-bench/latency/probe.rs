//! `--probe PATH@PPS[:SECS]`: one path at one offered rate, measured as
//! the latency part measures it (100 calls, socket generator on CPU 0 and
//! sink on CPU 1, both `SCHED_FIFO`), with where the machine's CPU went
//! during the run: `perf record` of every CPU, when `perf` is installed,
//! summed by who ran (idle, the relay, the bench's generator and sink),
//! by the relay's system calls and by its functions. It judges nothing and writes no part's
//! results: it is how a figure the bench reports is explained (issue 12
//! asks for the profile behind every target missed).
//!
//! `cargo xtask bench --probe userspace@50000` (PATH is a path's short
//! name: `xdp-native`, `xdp-generic`, `userspace`, `kernel`, `rtpengine`).
//! `PROBE_DAEMON_ARGS` adds arguments to media-relay's daemon, e.g.
//! `PROBE_DAEMON_ARGS="--userspace-threads 1"`, to measure a setting.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use media_relay_tests::paths::PathKind;

use super::Rig;

/// What to probe: a path, a rate and a run's length.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub kind: PathKind,
    pub pps: f64,
    pub secs: f64,
}

impl std::str::FromStr for Spec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || format!("`{s}`: expected PATH@PPS or PATH@PPS:SECS, e.g. userspace@50000:5");
        let (path, rest) = s.split_once('@').ok_or_else(usage)?;
        let kind = PathKind::parse(path).ok_or_else(|| {
            let names: Vec<&str> = PathKind::ALL.iter().map(|k| k.name()).collect();
            format!("`{path}`: no such path (one of {})", names.join(", "))
        })?;
        let (pps, secs) = rest.split_once(':').unwrap_or((rest, "5"));
        let pps: f64 = pps.parse().map_err(|_| usage())?;
        let secs: f64 = secs.parse().map_err(|_| usage())?;
        if !(1.0..=2_000_000.0).contains(&pps) || !(0.5..=60.0).contains(&secs) {
            return Err(format!(
                "`{s}`: the rate must be 1–2 000 000 pps and the run 0.5–60 s"
            ));
        }
        Ok(Self { kind, pps, secs })
    }
}

/// Set the path up, warm it, then one measured run with `perf record -a`
/// beside it; print the run's line and where the CPUs went.
pub fn run(spec: &Spec, out: &Path) -> anyhow::Result<()> {
    println!(
        "probe: {} at {} pps for {} s",
        spec.kind.label(),
        spec.pps,
        spec.secs
    );
    let extra = std::env::var("PROBE_DAEMON_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    if !extra.is_empty() {
        println!("    media-relay's daemon started with {}", extra.join(" "));
    }
    let mut rig = Rig::with(spec.kind, super::CALLS, &extra)?;
    rig.measure(spec.pps, 0.5, false)?;
    let data = out.join(format!("probe-{}-{}.perf.data", spec.kind.name(), spec.pps));
    let perf = Command::new("perf")
        .args(["record", "-a", "-g", "-F", "1999", "-q", "-o"])
        .arg(&data)
        .args(["--", "sleep"])
        .arg(format!("{}", spec.secs + 0.5))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = &perf {
        eprintln!("    no profile: perf could not be started ({e}); install linux-perf");
    }
    // perf's first samples: let it start before the load does.
    std::thread::sleep(Duration::from_millis(200));
    rig.run(spec.pps, spec.secs, false, 0)?;
    let Ok(mut perf) = perf else { return Ok(()) };
    let status = perf.wait().context("waiting for perf record")?;
    if !status.success() {
        eprintln!(
            "    no profile: perf record failed ({status}); try `perf record -a -g -- sleep 1` as root to see why"
        );
        return Ok(());
    }
    let script = Command::new("perf")
        .args(["script", "-F", "pid,comm,ip,sym", "-i"])
        .arg(&data)
        .output()
        .context("perf script")?;
    let relay = rig.path.pid().unwrap_or(0);
    let p = Profile::of(&String::from_utf8_lossy(&script.stdout), relay);
    println!(
        "    where the CPUs went ({} samples at 1 999 Hz per CPU; {}; `perf report -i` it for more):",
        p.samples,
        data.display()
    );
    for line in p.lines() {
        println!("      {line}");
    }
    Ok(())
}

/// A `perf script` of stacks, summed: who ran, and where the relay's
/// threads spent it.
#[derive(Debug, Default)]
struct Profile {
    samples: u64,
    /// Samples per party: idle, the relay, the bench (generator and sink),
    /// anything else.
    idle: u64,
    relay: u64,
    bench: u64,
    /// The relay's samples per system call (its entry frame), or none.
    syscalls: BTreeMap<String, u64>,
    /// The relay's samples per innermost symbol.
    leaves: BTreeMap<String, u64>,
}

impl Profile {
    /// `script`: `perf script -F pid,comm,ip,sym` with call graphs (a
    /// header line `comm pid`, then one frame per line, innermost first).
    fn of(script: &str, relay_pid: u32) -> Self {
        let mut p = Self::default();
        for stack in script.split("\n\n") {
            let mut lines = stack.lines().filter(|l| !l.trim().is_empty());
            let Some(head) = lines.next() else { continue };
            let mut words = head.split_whitespace();
            let (Some(comm), Some(pid)) = (words.next(), words.next()) else {
                continue;
            };
            p.samples += 1;
            let pid: u32 = pid.parse().unwrap_or(u32::MAX);
            if pid == 0 || comm == "swapper" {
                p.idle += 1;
                continue;
            }
            if comm == "media-relay-ben" {
                p.bench += 1;
                continue;
            }
            if pid != relay_pid {
                continue;
            }
            p.relay += 1;
            // Frames: `address symbol+offset` or `address [unknown]`.
            let frames: Vec<&str> = lines
                .map(|l| {
                    let f = l.split_whitespace().nth(1).unwrap_or("[unknown]");
                    f.split('+').next().unwrap_or(f)
                })
                .collect();
            let Some(&leaf) = frames.first() else {
                continue;
            };
            // A sample at the end of a region with interrupts off (this
            // VM's sampling timer fires only when they are on again) is
            // named after what ran in the region.
            let leaf = if leaf.starts_with("_raw_spin_unlock_irq") {
                format!("{leaf} (after {})", frames.get(1).copied().unwrap_or("?"))
            } else {
                leaf.to_owned()
            };
            *p.leaves.entry(leaf).or_default() += 1;
            let call = frames
                .iter()
                .find_map(|f| f.strip_prefix("__x64_sys_"))
                .map_or_else(
                    || "no system call (its own code)".to_owned(),
                    |c| format!("{c}(2)"),
                );
            *p.syscalls.entry(call).or_default() += 1;
        }
        p
    }

    /// The summary, line by line.
    fn lines(&self) -> Vec<String> {
        let pc = |n: u64, of: u64| 100.0 * n as f64 / of.max(1) as f64;
        let mut out = vec![format!(
            "idle {:.0} %, the relay {:.0} %, the bench's generator and sink {:.0} %, other {:.0} %",
            pc(self.idle, self.samples),
            pc(self.relay, self.samples),
            pc(self.bench, self.samples),
            pc(
                self.samples - self.idle - self.relay - self.bench,
                self.samples
            ),
        )];
        let top = |m: &BTreeMap<String, u64>, n: usize| {
            let mut v: Vec<(&String, &u64)> = m.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            v.into_iter()
                .take(n)
                .map(|(k, &c)| format!("{:.1} % {k}", pc(c, self.relay)))
                .collect::<Vec<_>>()
        };
        out.push(format!(
            "the relay's time by system call: {}",
            top(&self.syscalls, 6).join(", ")
        ));
        out.push("the relay's heaviest functions:".to_owned());
        out.extend(top(&self.leaves, 12).into_iter().map(|l| format!("  {l}")));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let s: Spec = "userspace@50000".parse().unwrap();
        assert_eq!(
            s,
            Spec {
                kind: PathKind::Userspace,
                pps: 50_000.0,
                secs: 5.0
            }
        );
        let s: Spec = "rtpengine@90000:2.5".parse().unwrap();
        assert_eq!((s.kind, s.secs), (PathKind::Rtpengine, 2.5));
        assert!(
            "userspace"
                .parse::<Spec>()
                .unwrap_err()
                .contains("PATH@PPS")
        );
        assert!(
            "nope@1000"
                .parse::<Spec>()
                .unwrap_err()
                .contains("no such path")
        );
        assert!("userspace@0".parse::<Spec>().unwrap_err().contains("rate"));
    }

    /// Two idle samples, one of the bench, three of the relay (two in
    /// sendmmsg, one of them ending an interrupts-off region, one in its
    /// own code), one of another process.
    #[test]
    fn a_script_is_summed_per_party_call_and_function() {
        let script = "swapper     0 \n\tffff1 poll_idle+0x1\n\n\
swapper     0 \n\tffff1 poll_idle+0x1\n\n\
media-relay-ben  77 \n\tffff2 udp_recvmsg+0x3\n\n\
media-io-0  42 \n\tffff3 _raw_spin_unlock_irqrestore+0x1d\n\tffff4 sock_wfree+0x9\n\tffff5 __x64_sys_sendmmsg+0x2\n\n\
media-io-1  42 \n\tffff6 udp_sendmsg+0x5\n\tffff5 __x64_sys_sendmmsg+0x2\n\n\
media-io-1  42 \n\t5555 media_user::media::io_threads::Worker::serve+0x10\n\n\
kworker/0:1  9 \n\tffff7 process_one_work+0x1\n";
        let p = Profile::of(script, 42);
        assert_eq!((p.samples, p.idle, p.bench, p.relay), (7, 2, 1, 3));
        assert_eq!(p.syscalls["sendmmsg(2)"], 2);
        assert_eq!(p.syscalls["no system call (its own code)"], 1);
        assert_eq!(
            p.leaves["_raw_spin_unlock_irqrestore (after sock_wfree)"],
            1
        );
        let lines = p.lines();
        assert!(
            lines[0].starts_with("idle 29 %, the relay 43 %"),
            "{lines:?}"
        );
        assert!(lines[1].contains("66.7 % sendmmsg(2)"), "{lines:?}");
    }
}
