//! `cargo xtask fuzz`: the coverage-guided fuzz targets of `fuzz/`
//! (cargo-fuzz, libFuzzer), each for a bounded time on its corpus.
//!
//! The fuzz crate is a workspace of its own: cargo-fuzz builds with the
//! nightly toolchain, which the stable build of the main workspace never
//! needs. This installs cargo-fuzz if it is missing, builds every target
//! once (release, debug assertions and overflow checks on, no sanitizer:
//! the code under test is safe Rust, whose failures are panics), then runs
//! the targets one after the other, one process each. Each run reads the
//! checked-in seeds (`fuzz/corpus/<t>`, never written) and keeps what it
//! finds in `fuzz/target/corpus/<t>`, so longer runs build on earlier
//! ones. A crash is kept under `fuzz/artifacts/<t>/` and fails the command
//! with the line that replays it.

use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    setup,
    util::{self, step, workspace_root},
};

/// How the targets are built, by `build` and (the same, or it rebuilds)
/// by `run`: no sanitizer, and 16 codegen units instead of cargo-fuzz's 1,
/// which shortens the build on two cores; the targets ran no slower
/// (exec/s within the noise of a 10 s run).
const BUILD_FLAGS: &[&str] = &["--sanitizer", "none", "--codegen-units", "16"];

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &["sip_agent", "sdp_rewrite", "ng_engine", "rtp_path"];

/// A target's figures, from libFuzzer's final statistics.
#[derive(Debug, Default)]
struct Figures {
    executions: u64,
    exec_per_sec: u64,
    cov: u64,
    ft: u64,
    corpus: u64,
    /// Where the crashing input was written, if any.
    crash: Option<String>,
    took: Duration,
}

pub fn run(seconds: u64, only: &[String], write_seeds: bool) -> anyhow::Result<()> {
    if write_seeds {
        return seeds();
    }
    for t in only {
        if !TARGETS.contains(&t.as_str()) {
            bail!(
                "no fuzz target `{t}`; the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    let targets: Vec<&str> = if only.is_empty() {
        TARGETS.to_vec()
    } else {
        TARGETS
            .iter()
            .copied()
            .filter(|t| only.iter().any(|o| o == t))
            .collect()
    };
    setup::ensure_fuzzing()?;

    let root = workspace_root();
    let started = Instant::now();
    step("building the fuzz targets (nightly, release with debug assertions)");
    let status = cargo_fuzz(&root)
        .arg("build")
        .args(BUILD_FLAGS)
        .status()
        .context("running `rustup run nightly cargo fuzz build`")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status}); see above");
    }
    eprintln!("    built in {:.0} s", started.elapsed().as_secs_f64());

    let mut results = Vec::new();
    for target in &targets {
        step(&format!("fuzzing {target} for {seconds} s"));
        let figures = fuzz_one(&root, target, seconds)?;
        eprintln!(
            "    {target}: {} executions, {} exec/s, cov {}, ft {}, corpus {}{}",
            figures.executions,
            figures.exec_per_sec,
            figures.cov,
            figures.ft,
            figures.corpus,
            figures
                .crash
                .as_deref()
                .map_or(String::new(), |c| format!(", CRASH: {c}")),
        );
        results.push((*target, figures));
    }

    println!();
    println!(
        "{:<12} {:>12} {:>8} {:>7} {:>7} {:>7} {:>8}  crashes",
        "target", "executions", "exec/s", "cov", "ft", "corpus", "seconds"
    );
    for (target, f) in &results {
        println!(
            "{target:<12} {:>12} {:>8} {:>7} {:>7} {:>7} {:>8.0}  {}",
            f.executions,
            f.exec_per_sec,
            f.cov,
            f.ft,
            f.corpus,
            f.took.as_secs_f64(),
            u8::from(f.crash.is_some()),
        );
    }
    println!(
        "total {:.0} s (build included)",
        started.elapsed().as_secs_f64()
    );
    let crashed: Vec<String> = results
        .iter()
        .filter_map(|(t, f)| {
            f.crash.as_ref().map(|c| {
                format!(
                    "{t}: {c} (replay: rustup run nightly cargo fuzz run {} {t} {c})",
                    BUILD_FLAGS.join(" ")
                )
            })
        })
        .collect();
    if !crashed.is_empty() {
        for c in &crashed {
            eprintln!("xtask: crash in {c}");
        }
        bail!(
            "{} fuzz target(s) crashed: fix the bug and add the input as a unit test",
            crashed.len()
        );
    }
    Ok(())
}

/// `rustup run nightly cargo fuzz` in the workspace root, without what the
/// outer (stable) cargo put in the environment.
fn cargo_fuzz(root: &Path) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "fuzz"])
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .current_dir(root);
    c
}

fn fuzz_one(root: &Path, target: &str, seconds: u64) -> anyhow::Result<Figures> {
    let seeds = root.join("fuzz/corpus").join(target);
    let found = root.join("fuzz/target/corpus").join(target);
    std::fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
    let started = Instant::now();
    let mut child = cargo_fuzz(root)
        .arg("run")
        .args(BUILD_FLAGS)
        .arg(target)
        // New inputs go to the first directory; the seeds are only read.
        .arg(&found)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-print_final_stats=1", "-timeout=20", "-rss_limit_mb=2048"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running `rustup run nightly cargo fuzz run`")?;
    let stderr = child.stderr.take().context("the fuzzer's stderr")?;
    let mut figures = Figures::default();
    let mut tail: VecDeque<String> = VecDeque::new();
    // The panic message, from "panicked at" to the backtrace.
    let mut panic: Vec<String> = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading the fuzzer's output")?;
        parse_line(&line, &mut figures);
        if line.contains("panicked at") {
            panic.clear();
            panic.push(line.clone());
        } else if !panic.is_empty()
            && panic.len() < 40
            && !panic.iter().any(|l| l.starts_with("stack backtrace"))
        {
            panic.push(line.clone());
        }
        // Progress: libFuzzer's pulses (at powers of two) and the end.
        if line.contains(" pulse ") || line.contains(" INITED ") || line.contains(" DONE ") {
            eprintln!("    {}", line.trim());
        }
        tail.push_back(line);
        if tail.len() > 60 {
            tail.pop_front();
        }
    }
    let status = child.wait().context("waiting for the fuzzer")?;
    figures.took = started.elapsed();
    if !status.success() {
        // The panic if there was one (an assertion says what broke), else
        // the end of the output (a timeout, out of memory, a signal).
        let shown: Vec<&String> = if panic.is_empty() {
            tail.iter().collect()
        } else {
            panic.iter().collect()
        };
        for line in shown {
            eprintln!("    | {line}");
        }
        if figures.crash.is_none() {
            figures.crash = Some(format!(
                "(no input written; the fuzzer exited with {status})"
            ));
        }
    }
    Ok(figures)
}

/// Pick the figures out of one line of libFuzzer's output.
fn parse_line(line: &str, f: &mut Figures) {
    let field = |name: &str| -> Option<u64> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name)?;
        let value = words.next()?;
        value.split('/').next().and_then(|v| {
            v.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
    };
    if line.starts_with('#') {
        if let Some(cov) = field("cov:") {
            f.cov = cov;
        }
        if let Some(ft) = field("ft:") {
            f.ft = ft;
        }
        if let Some(corpus) = field("corp:") {
            f.corpus = corpus;
        }
    }
    let stat = |name: &str| {
        line.strip_prefix(name)
            .and_then(|v| v.trim().trim_start_matches(':').trim().parse().ok())
    };
    if let Some(n) = stat("stat::number_of_executed_units") {
        f.executions = n;
    }
    if let Some(n) = stat("stat::average_exec_per_sec") {
        f.exec_per_sec = n;
    }
    if let Some((_, path)) = line.split_once("Test unit written to ") {
        f.crash = Some(path.trim().to_owned());
    }
}

/// Rewrite the seed corpora (`fuzz/corpus/`) from the unit tests'
/// fixtures: each owning crate has an ignored test that writes its
/// target's seeds.
fn seeds() -> anyhow::Result<()> {
    step("writing fuzz/corpus/ from the unit tests' fixtures");
    util::cargo(&[
        "test",
        "--package",
        "signaling",
        "--package",
        "ng-protocol",
        "--package",
        "media-user",
        "--lib",
        "--",
        "--ignored",
        "--exact",
        "message::tests::seeds::write_fuzz_seeds",
        "tests::fuzz_seeds::write_fuzz_seeds",
        "sdp::tests::seeds::write_fuzz_seeds",
        "media::fuzz_seeds::write_fuzz_seeds",
    ])?;
    let root = workspace_root();
    for t in TARGETS {
        let dir: PathBuf = root.join("fuzz/corpus").join(t);
        let n = std::fs::read_dir(&dir)
            .with_context(|| format!("{}: not written", dir.display()))?
            .count();
        eprintln!("    fuzz/corpus/{t}: {n} seeds");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_from_libfuzzer_output() {
        let mut f = Figures::default();
        for line in [
            "#2\tINITED cov: 1200 ft: 1500 corp: 31/40Kb exec/s: 0 rss: 60Mb",
            "#524288\tpulse  cov: 2291 ft: 9110 corp: 640/210Kb lim: 4096 exec/s: 17476 rss: 400Mb",
            "#600000\tDONE   cov: 2301 ft: 9200 corp: 655/215Kb lim: 4096 exec/s: 19354 rss: 410Mb",
            "stat::number_of_executed_units: 600000",
            "stat::average_exec_per_sec:     19354",
        ] {
            parse_line(line, &mut f);
        }
        assert_eq!(
            (f.executions, f.exec_per_sec, f.cov, f.ft, f.corpus),
            (600_000, 19_354, 2301, 9200, 655)
        );
        assert!(f.crash.is_none());
        parse_line(
            "artifact_prefix='/w/fuzz/artifacts/sdp_rewrite/'; Test unit written to /w/fuzz/artifacts/sdp_rewrite/crash-ab12",
            &mut f,
        );
        assert_eq!(
            f.crash.as_deref(),
            Some("/w/fuzz/artifacts/sdp_rewrite/crash-ab12")
        );
    }
}
