//! `cargo xtask`: setup, build-and-load, test, fuzz and bench orchestration.
//! Orchestration only: building the eBPF object is media-user's build
//! script's job.

mod bench;
mod demo;
mod fuzz;
mod lint;
mod package;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "media-relay developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install every prerequisite (Debian packages, nightly rust-src,
    /// bpf-linker, test peers). Idempotent: skips what is already there.
    Setup,
    /// Build everything (release) and run the appliance on a real interface.
    BuildAndLoad {
        /// Interface to attach to (repeatable; overrides the configuration
        /// file's interfaces).
        #[arg(long = "interface", short = 'i', required_unless_present = "config")]
        interfaces: Vec<String>,
        /// Configuration file (`media-relay run --config`), e.g.
        /// config/media-relay.example.toml edited for this host.
        #[arg(long, short = 'c')]
        config: Option<String>,
        /// native, generic, auto (native with fallback) or off (default:
        /// the configuration's, else auto).
        #[arg(long)]
        xdp_mode: Option<String>,
        /// Further arguments for `media-relay run`.
        #[arg(last = true)]
        rest: Vec<String>,
    },
    /// Check prerequisites, then run every test: unit tests, then the
    /// root-only tiers (BPF_PROG_TEST_RUN, network namespaces, daemon).
    Test {
        /// Do not run `setup` first.
        #[arg(long)]
        no_setup: bool,
        /// Run the root tiers (and the package install test) N times and
        /// print, per test, how often it passed and failed.
        #[arg(long, value_name = "N", default_value_t = 1)]
        repeat: u32,
    },
    /// The whole appliance at work: a carrier and a PBX (SIPp) in network
    /// namespaces, media-relay between them, a few real calls with audio, a
    /// per-call table. Cleans up after itself.
    Demo,
    /// Build the Debian package (target/debian/); with --install-test,
    /// install it on this machine and check it.
    Package {
        /// Install the built package and check it (root): apt-get install,
        /// the installed files, `--version`, `media-relay check` on the
        /// shipped configuration, `systemd-analyze verify`, then the
        /// installed daemon run with the unit's user and capabilities on a
        /// veth pair in a network namespace. Purges the package afterwards
        /// (also one left by an earlier --keep run, if unmodified).
        #[arg(long)]
        install_test: bool,
        /// With --install-test: leave the package installed.
        #[arg(long, requires = "install_test")]
        keep: bool,
    },
    /// Clippy (-D warnings) on the XDP programs, built for the BPF target
    /// as media-user's build script builds them (the host's clippy sees
    /// only their stubs).
    LintBpf,
    /// Coverage-guided fuzzing (cargo-fuzz, libFuzzer, nightly) of every
    /// input parser, each target for a bounded time on its corpus
    /// (fuzz/corpus/, and what earlier runs found in fuzz/target/corpus/).
    /// Installs cargo-fuzz if missing. Fails on a crash, naming the input
    /// that replays it.
    Fuzz {
        /// Seconds per target (default 20: the CI step).
        #[arg(long, conflicts_with = "minutes")]
        seconds: Option<u64>,
        /// Minutes per target.
        #[arg(long)]
        minutes: Option<u64>,
        /// Only this target (repeatable): sip_agent, sdp_rewrite,
        /// ng_engine, rtp_path.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Rewrite the seed corpora (fuzz/corpus/) from the unit tests'
        /// fixtures, then stop.
        #[arg(long, conflicts_with_all = ["seconds", "minutes", "targets"])]
        write_seeds: bool,
    },
    /// Benchmarks on the veth test bed; figures and ratios to stdout and
    /// target/bench/.
    Bench {
        /// A short run for CI smoke use.
        #[arg(long)]
        quick: bool,
        /// Only these parts (xdp, sessions, sip, capacity, latency, overload, scale, sharing,
        /// restart; repeatable); the report always runs.
        #[arg(long)]
        only: Vec<String>,
        /// Compare the targets with another run's report.json (e.g.
        /// docs/bench/report.json): whether they agree within their spread.
        /// Repeatable (three fresh clones' runs: two --compare and the run).
        #[arg(long)]
        compare: Vec<String>,
        /// Measure nothing: write target/bench's report again from the
        /// results already there (with --compare: a finished run set
        /// beside another).
        #[arg(long)]
        report_only: bool,
        /// Measure with the host's own CPU idle settings (by default the
        /// bench holds a CPU wake-up latency of 0 µs: idle CPUs poll).
        #[arg(long)]
        host_idle: bool,
        /// Measure one path at one rate with a profile of where the CPU
        /// went (`perf record -a`), instead of the parts: PATH@PPS[:SECS],
        /// e.g. userspace@50000 (paths: xdp-native, xdp-generic,
        /// userspace, kernel, rtpengine).
        #[arg(long, conflicts_with_all = ["only", "quick", "report_only", "compare"])]
        probe: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::BuildAndLoad {
            interfaces,
            config,
            xdp_mode,
            rest,
        } => build_and_load(&interfaces, config.as_deref(), xdp_mode.as_deref(), &rest),
        Command::Test { no_setup, repeat } => test::run(no_setup, repeat),
        Command::Bench {
            quick,
            only,
            compare,
            report_only,
            host_idle,
            probe,
        } => bench::run(
            quick,
            &only,
            &compare,
            report_only,
            host_idle,
            probe.as_deref(),
        ),
        Command::Demo => demo::run(),
        Command::LintBpf => lint::bpf(),
        Command::Fuzz {
            seconds,
            minutes,
            targets,
            write_seeds,
        } => fuzz::run(
            minutes.map_or(seconds.unwrap_or(20), |m| m * 60),
            &targets,
            write_seeds,
        ),
        Command::Package { install_test, keep } => package::run(install_test, keep),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_and_load(
    interfaces: &[String],
    config: Option<&str>,
    xdp_mode: Option<&str>,
    rest: &[String],
) -> anyhow::Result<()> {
    // The daemon runs in the workspace root: resolve the path from here.
    let config = config
        .map(|c| {
            std::fs::canonicalize(c)
                .with_context(|| format!("configuration file {c}: cannot read it"))
        })
        .transpose()?;
    // A fresh machine: the XDP object's toolchain first (not the test
    // peers `cargo xtask setup` adds).
    setup::ensure_build()?;
    util::step("building media-relay (release, with the XDP object)");
    let bin = util::build_release(&[("media-user", "media-relay")])?.join("media-relay");
    let mut args = vec!["run".to_owned()];
    if let Some(c) = &config {
        let c = c.to_str().context("configuration path is not UTF-8")?;
        // Checked first: a bad key is one line naming it, before any
        // interface is touched.
        util::step(&format!("checking {c}"));
        util::run(&bin, &["check", "--config", c])?;
        args.push("--config".to_owned());
        args.push(c.to_owned());
    }
    for i in interfaces {
        args.push("--interface".to_owned());
        args.push(i.clone());
    }
    if let Some(m) = xdp_mode {
        args.push("--xdp-mode".to_owned());
        args.push(m.to_owned());
    }
    args.extend(rest.iter().cloned());
    util::step(&format!("starting {} {}", bin.display(), args.join(" ")));
    util::exec(&bin, &args)
}
