//! `cargo xtask test [--repeat N]`: the unit tiers, then the root tiers
//! (each test target on its own, its outcome per test recorded), then the
//! package install test. With `--repeat N` the root tiers and the install
//! test run N times and a table says, per test, how often it passed and
//! failed: a flaky test shows up as a row with both.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    package, setup,
    util::{self, banner, step},
};

/// One root tier: test targets of `media-relay-tests` run with the same
/// parallelism.
struct Tier {
    what: &'static str,
    targets: &'static [&'static str],
    /// `--test-threads`: every test owns its namespaces, pins and files
    /// (`tests/src/testdir.rs`), so tests of one target run in parallel.
    threads: u32,
}

const ROOT_TIERS: &[Tier] = &[
    Tier {
        what: "XDP program (BPF_PROG_TEST_RUN), forwarding, sessions and IPv4↔IPv6 bridging \
               end to end, daemon, operator surface, bench paths, learning window, attack \
               matrix and port sharing",
        targets: &[
            "xdp_test_run",
            "xdp_bridge_test_run",
            "xdp_differential",
            "forward_e2e",
            "sessions_e2e",
            "bridge_e2e",
            "daemon",
            "operator",
            "bench_paths",
            "learning_window",
            "ng_cache",
            "restart",
            "quality",
            "attack_matrix",
            "port_sharing",
        ],
        threads: 2,
    },
    // SIPp calls mostly wait on 7 s of pcap audio: run more at once.
    Tier {
        what: "SIPp scenarios, then the SIP agent end to end with SIPp and rtpengine, behind a \
               cloud edge (STUN), then \
               floods and exhaustion, churn soak",
        targets: &[
            "sipp_scenarios",
            "sip_e2e",
            "cloud_edge",
            "floods",
            "churn_soak",
        ],
        threads: 4,
    },
];

/// Passes and failures per test, over all rounds.
#[derive(Default)]
struct Outcomes {
    by_test: BTreeMap<String, (u32, u32)>,
}

impl Outcomes {
    fn record(&mut self, test: String, passed: bool) {
        let e = self.by_test.entry(test).or_default();
        if passed {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    fn failures(&self) -> u32 {
        self.by_test.values().map(|(_, f)| f).sum()
    }

    fn print(&self, rounds: u32) {
        let width = self.by_test.keys().map(String::len).max().unwrap_or(4);
        eprintln!("\n{:<width$}  passed  failed", "test");
        // Failing tests first, then by name.
        let mut rows: Vec<_> = self.by_test.iter().collect();
        rows.sort_by_key(|(name, (_, failed))| (std::cmp::Reverse(*failed), (*name).clone()));
        for (name, (passed, failed)) in rows {
            let mark = if *failed > 0 { "  <-- FAILED" } else { "" };
            eprintln!("{name:<width$}  {passed:>6}  {failed:>6}{mark}");
        }
        let tests = self.by_test.len();
        eprintln!(
            "{tests} tests × {rounds} round(s): {} runs, {} failed",
            self.by_test.values().map(|(p, f)| p + f).sum::<u32>(),
            self.failures()
        );
    }
}

/// `test <name> ... ok|FAILED|ignored` from libtest's output.
fn parse_result(line: &str) -> Option<(&str, Option<bool>)> {
    let rest = line.strip_prefix("test ")?;
    let (name, verdict) = rest.rsplit_once(" ... ")?;
    let verdict = match verdict.trim() {
        "ok" => Some(true),
        "FAILED" => Some(false),
        "ignored" => None,
        _ => return None,
    };
    Some((name, verdict))
}

/// Run one test target, echoing its output, and record each test's
/// outcome as `<target>::<test>`. A target that fails without naming a
/// failed test (it did not build, or its process crashed) is recorded as
/// `<target> (harness)`.
fn run_target(target: &str, threads: u32, outcomes: &mut Outcomes) -> anyhow::Result<bool> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(&cargo)
        .current_dir(util::workspace_root())
        .args([
            "test",
            "--package",
            "media-relay-tests",
            "--test",
            target,
            "--",
            &format!("--test-threads={threads}"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cargo} test --test {target}"))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut named_failure = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's output")?;
        println!("{line}");
        if let Some((name, Some(passed))) = parse_result(&line) {
            named_failure |= !passed;
            outcomes.record(format!("{target}::{name}"), passed);
        }
    }
    let status = child.wait()?;
    if !status.success() && !named_failure {
        outcomes.record(format!("{target} (harness)"), false);
    }
    Ok(status.success())
}

pub fn run(no_setup: bool, repeat: u32) -> anyhow::Result<()> {
    let rounds = repeat.max(1);
    if !no_setup {
        setup::run()?;
    }
    step("building all crates and binaries");
    util::cargo(&["build", "--workspace", "--bins", "--tests"])?;
    step("unit tests");
    util::cargo(&["test", "--workspace", "--lib", "--bins"])?;
    if !util::is_root() {
        banner(
            "SKIPPED: the root-only tests (BPF_PROG_TEST_RUN, network namespaces, daemon) \
             need root; run `sudo cargo xtask test`",
        );
        banner("SKIPPED: package install test needs root");
        bail!("root-only tests were skipped: the suite did not run completely");
    }
    let mut outcomes = Outcomes::default();
    let started = Instant::now();
    for round in 1..=rounds {
        for tier in ROOT_TIERS {
            let label = if rounds > 1 {
                format!("[round {round}/{rounds}] root tests: {}", tier.what)
            } else {
                format!("root tests: {}", tier.what)
            };
            step(&label);
            for target in tier.targets {
                run_target(target, tier.threads, &mut outcomes)?;
            }
        }
        // Last in each round: a release build, the Debian package installed
        // on this machine, the installed daemon run with the unit's user and
        // capabilities, and the package purged again. It owns fixed host
        // paths (the package, the unit's pin directory), so it runs alone.
        step("package install test: build the .deb, install it, run it as the unit would");
        let r = package::run(true, false);
        if let Err(e) = &r {
            eprintln!("package install test failed: {e:#}");
        }
        outcomes.record("package install test".to_owned(), r.is_ok());
        if rounds > 1 {
            eprintln!(
                "round {round}/{rounds} done; {} failed so far; {:.0} s elapsed",
                outcomes.failures(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    outcomes.print(rounds);
    if outcomes.failures() > 0 {
        bail!(
            "{} test run(s) failed (table above); a test that both passed and failed is flaky: fix its cause",
            outcomes.failures()
        );
    }
    step("all tests passed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_lines_are_parsed() {
        assert_eq!(
            parse_result("test session_xdp_native ... ok"),
            Some(("session_xdp_native", Some(true)))
        );
        assert_eq!(
            parse_result("test a::b ... FAILED"),
            Some(("a::b", Some(false)))
        );
        assert_eq!(parse_result("test x ... ignored"), Some(("x", None)));
        assert_eq!(parse_result("test result: ok. 9 passed; 0 failed"), None);
        assert_eq!(
            parse_result("test slow has been running for over 60 seconds"),
            None
        );
    }

    #[test]
    fn a_test_that_passed_and_failed_is_counted_both_ways() {
        let mut o = Outcomes::default();
        o.record("t::a".into(), true);
        o.record("t::a".into(), false);
        o.record("t::b".into(), true);
        assert_eq!(o.failures(), 1);
        assert_eq!(o.by_test["t::a"], (1, 1));
    }
}
