//! The Debian package: both binaries built (release), then `cargo deb
//! --no-build --strip` with media-user's `[package.metadata.deb]` (files
//! under `packaging/`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use super::{have, size_text};
use crate::{
    setup,
    util::{self, step, workspace_root},
};

/// Build both binaries and the package; returns the `.deb`'s path.
pub fn build() -> anyhow::Result<PathBuf> {
    step("checking packaging tools");
    setup::ensure_cargo_deb()
        .context("cargo-deb is needed to build the package (`cargo xtask setup` installs it)")?;
    for (tool, package, why) in [
        (
            "dpkg-shlibdeps",
            "dpkg-dev",
            "cargo-deb computes the package's Depends with it",
        ),
        ("strip", "binutils", "cargo-deb strips the binaries with it"),
    ] {
        if !have(tool) {
            bail!(
                "{tool} is missing ({why}): run `sudo apt-get install {package}` \
                 (or `sudo cargo xtask setup`)"
            );
        }
    }

    let t = Instant::now();
    step("building media-relay (release, with the XDP object)");
    util::build_release(&[("media-user", "media-relay")])?;
    // cargo-deb would build the other workspace member's binary itself (with
    // `--workspace`); building it here keeps both builds explicit.
    step("building media-relay-sip (release)");
    util::build_release(&[("signaling", "media-relay-sip")])?;
    eprintln!("    release build: {:.0} s", t.elapsed().as_secs_f64());

    step("packaging with cargo-deb (stripped binaries)");
    let t = Instant::now();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(["deb", "--package", "media-user", "--no-build", "--strip"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!(
            "`cargo deb` failed ({}); see its messages above (the metadata is media-user's \
             [package.metadata.deb], the files are under packaging/)",
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| {
            Path::new(l)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("deb"))
        })
        .map(PathBuf::from)
        .with_context(|| format!("`cargo deb` did not print the package's path: {stdout:?}"))?;
    if !deb.is_file() {
        bail!(
            "`cargo deb` reported {} but it does not exist",
            deb.display()
        );
    }
    let field = |f: &str| {
        util::output("dpkg-deb", &["--field", &deb.to_string_lossy(), f])
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    eprintln!(
        "    {} {} ({}), Depends: {}, in {:.0} s",
        field("Package"),
        field("Version"),
        size_text(&deb),
        field("Depends"),
        t.elapsed().as_secs_f64()
    );
    Ok(deb)
}
