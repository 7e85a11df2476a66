//! `cargo xtask bench`: media-relay's benchmarks on the veth test bed.
//!
//! - `xdp`: the data plane alone (flows installed through the API):
//!   native vs generic forwarding rate.
//! - `sessions`: the media daemon driven over ng: offer+answer+delete
//!   cycles per second and latency.
//! - `sip`: the SIP agent: calls per second with media anchoring (SIPp)
//!   and the setup delay it adds.
//! - `capacity`: the highest rate with < 0.1 % loss through 100 calls for
//!   media-relay XDP native, XDP generic and userspace, plain kernel IP
//!   forwarding and rtpengine; CPU per forwarded packet.
//! - `latency`: one-way latency and jitter through the same paths at 10,
//!   50 and 90 % of the userspace path's maximum, and on a busy host
//!   (socket generator and sink, `media_relay_tests::socket_load`).
//! - `overload`: the userspace paths (media-relay's and rtpengine's) at
//!   10/50/90 % of media-relay's own maximum, at 120 % of it (per-call loss
//!   spread, p99, starved calls) and their recovery.
//! - `scale`: rate and per-packet cost with 1 to 100 000 calls installed;
//!   time and memory to install and remove 100 000 calls.
//! - `sharing`: 1 000 calls on 150 shared ports (flows keyed by local
//!   port and remote endpoint) vs 1 000 calls on 1 000 ports, XDP native.
//! - `restart`: packets lost when the daemon is killed, restarted or
//!   upgraded during calls; the time to adopt them.
//! - the report: `report.json`, `report.md` and PNG plots over whatever
//!   parts have results.
//!
//! Rate load comes from `xdp_gen` (BPF_PROG_TEST_RUN live frames) and is
//! counted by `xdp_sink` in XDP at the far end: a socket sender or sink
//! would measure itself, not the relay. Latency needs timestamps, so it
//! uses sockets, at rates a socket generator sustains. Everything shares this machine's
//! CPUs, so the ratios are what to compare; absolute figures describe this
//! machine only.

mod capacity;
mod compare;
mod figure;
mod host;
mod latency;
mod report;
mod restart;
mod scale;
mod sessions;
mod sharing;
mod sip;
mod xdp;

use std::{path::PathBuf, sync::OnceLock};

use clap::Parser;
use media_relay_tests::TestDir;

/// The bench run's own files (daemon logs, SIPp logs, configurations):
/// one temporary directory, removed when the run succeeds, kept (and its
/// path printed) when it fails.
fn files() -> &'static TestDir {
    static FILES: OnceLock<TestDir> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = TestDir::new("bench").expect("a temporary directory for the bench");
        let _ = FILES_CREATED.set(dir.path().to_owned());
        dir
    })
}

#[derive(Parser)]
struct Args {
    /// Short run for CI smoke use.
    #[arg(long)]
    quick: bool,
    /// Directory for the JSON reports.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Only these parts (`xdp`, `sessions`, `sip`, `capacity`, `latency`,
    /// `overload`, `scale`, `sharing`, `restart`); all by default. The report always
    /// runs.
    #[arg(long = "only")]
    only: Vec<String>,
    /// Compare this run's targets with another run's `report.json` (e.g.
    /// `docs/bench/report.json`, the run the README's figures come from):
    /// whether they agree within their spread, in the report. Repeatable:
    /// with several, a target agrees when every pair of runs does.
    #[arg(long)]
    compare: Vec<PathBuf>,
    /// Measure with the host's own CPU idle settings. By default the bench
    /// holds a CPU wake-up latency request of 0 µs for the whole run (PM
    /// QoS; idle CPUs poll, for media-relay and rtpengine alike): a VM's
    /// vCPU that halts when idle otherwise adds its wake-up, which varies
    /// with the hypervisor, to every control-plane figure.
    #[arg(long)]
    host_idle: bool,
    /// Measure nothing: write the report again from the parts' results
    /// already in `--out` (with `--compare`: set a finished run beside
    /// another, e.g. two fresh clones' runs).
    #[arg(long)]
    report_only: bool,
    /// Measure one path at one rate, with a profile of where the CPU went,
    /// instead of the parts: PATH@PPS[:SECS], e.g. `userspace@50000`
    /// (`latency::probe`). Writes no part's results and no report.
    #[arg(long, conflicts_with_all = ["only", "quick", "report_only", "compare"])]
    probe: Option<latency::probe::Spec>,
}

fn describe_machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} x {cpu}, Linux {}", kernel.trim())
}

fn main() -> anyhow::Result<()> {
    let result = run(&Args::parse());
    // A static is never dropped: remove the run's files here, or keep them.
    if let Some(dir) = FILES_CREATED.get() {
        if result.is_ok() {
            let _ = std::fs::remove_dir_all(dir);
        } else {
            eprintln!("bench files kept in {}", dir.display());
        }
    }
    result
}

/// The `RUST_LOG` of every media-relay the bench starts: the daemon's
/// default.
const DAEMON_LOG: &str = "info";

/// Set when [`files`] made the directory, so `main` can clean it up.
static FILES_CREATED: OnceLock<PathBuf> = OnceLock::new();

/// Output of a command, trimmed; `None` if it does not run.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// What is measured: the `media-relay` binary (path, build profile, when
/// it was built, from which commit) and the peers' versions. Written to
/// `build.json`; the report's header says it.
fn describe_build(quick: bool) -> serde_json::Value {
    let bin = media_relay_tests::daemon::binary();
    let profile = bin
        .parent()
        .and_then(|d| d.file_name())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let commit = output(
        "git",
        &[
            "-C",
            &workspace,
            "describe",
            "--always",
            "--dirty",
            "--abbrev=12",
        ],
    );
    let rustc = output("rustc", &["--version"]);
    let rtpengine = output("dpkg-query", &["-W", "-f=${Version}", "rtpengine-daemon"])
        .filter(|v| !v.is_empty());
    let summary = format!(
        "{} ({} build{}{}, RUST_LOG={DAEMON_LOG}), rtpengine {}; {}",
        bin.display(),
        profile,
        commit
            .as_ref()
            .map(|c| format!(" of {c}"))
            .unwrap_or_default(),
        rustc.as_ref().map(|r| format!(", {r}")).unwrap_or_default(),
        rtpengine.as_deref().unwrap_or("not found"),
        if quick { "--quick" } else { "full run" },
    );
    serde_json::json!({
        "media_relay": bin.display().to_string(),
        "profile": profile,
        "built_unix": built,
        "commit": commit,
        "rustc": rustc,
        "rtpengine": rtpengine,
        "media_relay_log": DAEMON_LOG,
        "quick": quick,
        "summary": summary,
    })
}

fn run(args: &Args) -> anyhow::Result<()> {
    let machine = describe_machine();
    if args.report_only {
        // The measured run's `build.json` (its binary, commit, host probe)
        // stays as it was.
        return report::run(args.quick, &machine, &args.out, &args.compare);
    }
    println!(
        "media-relay bench: {machine}{}\n",
        if args.quick { " (quick)" } else { "" }
    );
    std::fs::create_dir_all(&args.out)?;
    // Every media-relay the bench starts logs at the daemon's own default
    // level, as deployed (the tests' debug lines cost the control plane a
    // write per route).
    media_relay_tests::daemon::set_log_filter(DAEMON_LOG);
    let mut build = describe_build(args.quick);
    println!("measuring: {}\n", build["summary"].as_str().unwrap_or("?"));
    // Held until `run` returns: the parts and the report.
    let (wake, refused) = if args.host_idle {
        (None, None)
    } else {
        match media_user::host::hold_cpu_wake_latency(0) {
            Ok(held) => (Some(held), None),
            Err(e) => {
                eprintln!(
                    "\n*** WARNING: no CPU wake-up latency request ({}: {e}): the figures include idle vCPUs' wake-ups ***\n",
                    media_user::host::CPU_DMA_LATENCY
                );
                (None, Some(e.to_string()))
            }
        }
    };
    let idle = host::cpu_idle((!args.host_idle).then_some(0), refused);
    if let Some(line) = host::describe_cpu_idle(&idle) {
        println!("CPU idle: {line}\n");
    }
    build["cpu_idle"] = idle;
    let settle = host::settle();
    if let Some(line) = host::describe_settle(&settle) {
        println!("host settled: {line}\n");
    }
    build["settle"] = settle;
    let probe = host::probe();
    if let Some(line) = host::describe_probe(&probe) {
        println!("host speed now: {line}\n");
    }
    build["host_probe"] = probe;
    if build["profile"] != "release" {
        eprintln!(
            "\n*** WARNING: media-relay is a {} build: the figures do not describe the release build; run `cargo xtask bench` ***\n",
            build["profile"]
        );
    }
    if let Some(spec) = &args.probe {
        // Not a run of the bench: its build.json stays the last run's.
        return latency::probe::run(spec, &args.out);
    }
    std::fs::write(
        args.out.join("build.json"),
        serde_json::to_string_pretty(&build)?,
    )?;
    let wants = |part: &str| args.only.is_empty() || args.only.iter().any(|o| o == part);
    // The control plane's latency runs (ng, SIP setup delay) and the
    // adoption runs at scale (`restart::Adoptions`: the calls set up at the
    // first, no daemon between them) are spread over the bench: one after
    // each of `xdp`, `capacity`, `latency`, `overload` and `sharing` (back to
    // back where those parts are not run). Runs minutes apart on a shared
    // host differ more than runs seconds apart; spread, a run's own range
    // holds that drift and says what a user's run may see.
    let mut ng = wants("sessions").then(|| sessions::Trials::new(args.quick));
    let mut sip = wants("sip").then(|| sip::Trials::new(args.quick));
    let mut adoptions = if wants("restart") {
        restart::Adoptions::new(args.quick)
    } else {
        None
    };
    fn spread_runs(
        ng: &mut Option<sessions::Trials>,
        sip: &mut Option<sip::Trials>,
        adoptions: &mut Option<restart::Adoptions>,
    ) -> anyhow::Result<()> {
        if let Some(t) = ng {
            t.trial()?;
        }
        if let Some(t) = sip {
            t.delay_trial()?;
        }
        if let Some(t) = adoptions {
            t.trial()?;
        }
        Ok(())
    }
    if wants("xdp") {
        xdp::run(args.quick, &machine, &args.out)?;
    }
    spread_runs(&mut ng, &mut sip, &mut adoptions)?;
    if let Some(t) = &mut sip {
        t.calls_per_second()?;
    }
    if wants("capacity") {
        capacity::run(args.quick, &machine, &args.out)?;
        spread_runs(&mut ng, &mut sip, &mut adoptions)?;
    }
    if wants("latency") {
        latency::run(args.quick, &machine, &args.out)?;
        spread_runs(&mut ng, &mut sip, &mut adoptions)?;
    }
    if wants("overload") {
        latency::overload::run(args.quick, &machine, &args.out)?;
        spread_runs(&mut ng, &mut sip, &mut adoptions)?;
    }
    if wants("scale") {
        scale::run(args.quick, &machine, &args.out)?;
    }
    if wants("sharing") {
        sharing::run(args.quick, &machine, &args.out)?;
        spread_runs(&mut ng, &mut sip, &mut adoptions)?;
    }
    if let Some(t) = ng.take() {
        t.finish(&machine, &args.out)?;
    }
    if let Some(t) = sip.take() {
        t.finish(&machine, &args.out)?;
    }
    if wants("restart") {
        restart::run(args.quick, &machine, &args.out, adoptions.take())?;
    }
    // How the rate load was sent (known once a part has sent some).
    if let Some(g) = media_relay_tests::xdp_load::generator_used() {
        build["load_generator"] = g.into();
        std::fs::write(
            args.out.join("build.json"),
            serde_json::to_string_pretty(&build)?,
        )?;
    }
    // Always: the report over whatever parts have results in `out`.
    report::run(args.quick, &machine, &args.out, &args.compare)?;
    drop(wake);
    Ok(())
}
