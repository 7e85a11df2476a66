//! `--install-test`, the xtask side: the tools the test uses, a package
//! left by an earlier run, the test driver built, the package installed
//! with apt-get, `media-relay-install-test` run on it (the checks and the
//! installed daemon's runs are the tests crate's), the package purged.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use super::{BIN, PACKAGE, have};
use crate::util::{self, step, workspace_root};

/// The driver, in the tests crate (it shares the test bed).
const DRIVER: &str = "media-relay-install-test";
/// How the driver prefixes its failure, its last line.
const DRIVER_ERROR: &str = "media-relay-install-test: ";

fn package_installed() -> bool {
    util::output("dpkg-query", &["-W", "-f=${Status}", PACKAGE])
        .is_some_and(|s| s.contains("install ok installed"))
}

/// PIDs of running processes whose executable is `exe`.
fn processes_running(exe: &str) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| {
                let p = p.to_string_lossy();
                p == exe || p == format!("{exe} (deleted)")
            })
        })
        .collect()
}

/// The installed package's conffiles that differ from what it shipped.
fn conffiles_modified() -> Vec<String> {
    let listed =
        util::output("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]).unwrap_or_default();
    listed
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .filter(|(path, md5)| {
            let current = util::output("md5sum", &[path.as_str()]).unwrap_or_default();
            current.split_whitespace().next() != Some(md5.as_str())
        })
        .map(|(path, _)| path)
        .collect()
}

/// A package already installed is replaced only if doing so loses nothing:
/// no edited configuration, no running daemon.
fn handle_preinstalled() -> anyhow::Result<()> {
    if !package_installed() {
        return Ok(());
    }
    let running = processes_running(BIN);
    let edited = conffiles_modified();
    if !running.is_empty() || !edited.is_empty() {
        bail!(
            "{PACKAGE} is already installed on this machine{}{}; the install test would \
             replace it and then purge it. Stop it / save the configuration, then \
             `dpkg --purge {PACKAGE}`, and run the test again",
            if running.is_empty() {
                String::new()
            } else {
                format!(" and running (pid {running:?})")
            },
            if edited.is_empty() {
                String::new()
            } else {
                format!(" with an edited {}", edited.join(", "))
            }
        );
    }
    step(&format!(
        "{PACKAGE} is already installed (not running, configuration unedited, probably a \
         --keep run): purging it so that the test starts from a fresh install"
    ));
    util::run("dpkg", &["--purge", PACKAGE])
}

/// Purges the package on drop (success or failure), unless `--keep`.
struct Purge {
    /// Print a "cleaning up" line first (the driver has not printed one).
    header: bool,
}

impl Drop for Purge {
    fn drop(&mut self) {
        if self.header {
            step("cleaning up");
        }
        match capture("dpkg", &["--purge", PACKAGE]) {
            Ok((true, ..)) => eprintln!("    dpkg --purge {PACKAGE}: done"),
            Ok((false, o, e)) => eprintln!(
                "    warning: dpkg --purge {PACKAGE} failed: {}{}",
                o.trim(),
                e.trim()
            ),
            Err(e) => eprintln!("    warning: dpkg --purge {PACKAGE}: {e:#}"),
        }
    }
}

/// Run a command; `(success, stdout, stderr)`.
fn capture(program: &str, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Build the driver (a debug build: `cargo xtask test` has built it
/// already).
fn build_driver() -> anyhow::Result<PathBuf> {
    step(&format!("building the install test ({DRIVER})"));
    util::cargo(&["build", "--package", "media-relay-tests", "--bin", DRIVER])?;
    Ok(util::target_dir().join("debug").join(DRIVER))
}

/// Run the driver, its output passed through; its failure (its last line)
/// becomes this function's error, so that it is printed after the purge,
/// as the last thing the test says.
fn run_driver(driver: &Path) -> anyhow::Result<()> {
    let mut child = Command::new(driver)
        .current_dir(workspace_root())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", driver.display()))?;
    let stderr = child.stderr.take().context("the driver's stderr")?;
    let mut failure = None;
    let mut out = std::io::stderr();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(f) = failure.take() {
            let _ = writeln!(out, "{DRIVER_ERROR}{f}");
        }
        match line.strip_prefix(DRIVER_ERROR) {
            Some(f) => failure = Some(f.to_owned()),
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    let status = child.wait().context("waiting for the install test")?;
    if status.success() {
        if let Some(f) = failure {
            let _ = writeln!(out, "{DRIVER_ERROR}{f}");
        }
        return Ok(());
    }
    match failure {
        Some(f) => bail!("{f}"),
        None => bail!("{DRIVER} failed ({status}); see its output above"),
    }
}

pub fn run(deb: &Path, keep: bool) -> anyhow::Result<()> {
    step("install test: checking the tools it uses");
    for (tool, package) in [
        ("apt-get", "apt"),
        ("dpkg", "dpkg"),
        ("setpriv", "util-linux"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
        ("ss", "iproute2"),
        ("md5sum", "coreutils"),
    ] {
        if !have(tool) {
            bail!("{tool} is missing: `apt-get install {package}`");
        }
    }
    handle_preinstalled()?;
    let driver = build_driver()?;

    let mut purge = (!keep).then_some(Purge { header: true });
    let deb = fs::canonicalize(deb).with_context(|| format!("{}", deb.display()))?;
    step(&format!(
        "installing {} with apt-get (dependencies resolve)",
        deb.display()
    ));
    let t = Instant::now();
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("starting apt-get")?;
    if !status.success() {
        // A half-installed package is purged too.
        bail!(
            "install test check failed: `apt-get install {}` ({status}); see its output above",
            deb.display()
        );
    }
    eprintln!("    installed in {:.1} s", t.elapsed().as_secs_f64());

    if let Some(p) = &mut purge {
        // The driver's own cleanup prints the header.
        p.header = false;
    }
    let result = run_driver(&driver);
    if keep {
        step(&format!("--keep: {PACKAGE} stays installed"));
    }
    drop(purge);
    result
}
