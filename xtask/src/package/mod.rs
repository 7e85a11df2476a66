//! `cargo xtask package [--install-test] [--keep]`: the Debian package.
//!
//! - `build.rs`: both binaries (release), then `cargo deb --no-build
//!   --strip` with media-user's `[package.metadata.deb]` (files under
//!   `packaging/`).
//! - `install_test.rs`: `--install-test` (root; meant for CI on a fresh
//!   Debian machine): installs the package with apt-get, runs the tests
//!   crate's `media-relay-install-test` on it (the installed files, and the
//!   installed daemon run as the installed unit would, on the shared test
//!   bed), and purges the package again unless `--keep`.
//!
//! xtask itself depends on nothing that needs bpf-linker (it is what
//! installs it): the install test's runtime lives in the tests crate and
//! is built and run as a program.

mod build;
mod install_test;

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::bail;

use crate::util::{self, banner, step};

/// The Debian package's name (`[package.metadata.deb] name`).
const PACKAGE: &str = "media-relay";
/// The daemon, where the package installs it.
const BIN: &str = "/usr/bin/media-relay";

pub fn run(install_test: bool, keep: bool) -> anyhow::Result<()> {
    if install_test && !util::is_root() {
        bail!(
            "--install-test installs a package, creates a network namespace and attaches XDP: \
             run it as root (`sudo cargo xtask package --install-test`)"
        );
    }
    let started = Instant::now();
    let deb = build::build()?;
    let build_time = started.elapsed();
    if !install_test {
        step(&format!(
            "package built in {:.0} s: {}",
            build_time.as_secs_f64(),
            deb.display()
        ));
        return Ok(());
    }
    let test_started = Instant::now();
    let result = install_test::run(&deb, keep);
    let test_time = test_started.elapsed();
    match result {
        Ok(()) => {
            step(&format!(
                "package install test passed: build {:.0} s, install test {:.0} s, {} ({})",
                build_time.as_secs_f64(),
                test_time.as_secs_f64(),
                deb.display(),
                size_text(&deb)
            ));
            Ok(())
        }
        Err(e) => {
            banner("FAILED: package install test (see the failed check below)");
            Err(e)
        }
    }
}

fn size_text(path: &Path) -> String {
    fs::metadata(path).map_or_else(
        |_| "size unknown".to_owned(),
        |m| format!("{:.1} MiB", m.len() as f64 / (1024.0 * 1024.0)),
    )
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
