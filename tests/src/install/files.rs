//! What the package installed: files, conffiles, the unit (identical to
//! `packaging/`, not enabled), the programs' `--version`/`check`/`--help`,
//! and `systemd-analyze verify` of the unit.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use super::{
    BIN, CONFIG, EXAMPLE, PACKAGE, SIP_BIN, UNIT, UNIT_DIRS, capture, check, have, output,
    workspace_root,
};

/// Checks the installed files; returns the unit's path.
pub fn check_files() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let executable =
        |p: &str| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    for bin in [BIN, SIP_BIN] {
        check(
            &format!("{bin} installed, executable"),
            executable(bin),
            || "missing or not executable".into(),
        )?;
    }
    let example = fs::read(root.join("config/media-relay.example.toml"))?;
    for path in [CONFIG, EXAMPLE] {
        check(
            &format!("{path} is the example configuration"),
            fs::read(path).is_ok_and(|c| c == example),
            || "missing, or not config/media-relay.example.toml".into(),
        )?;
    }
    let conffiles = output("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]).unwrap_or_default();
    check(
        &format!("{CONFIG} is a conffile (dpkg keeps local edits)"),
        conffiles.split_whitespace().any(|w| w == CONFIG),
        || format!("dpkg lists conffiles {:?}", conffiles.trim()),
    )?;
    let unit_src = fs::read(root.join("packaging").join(UNIT))?;
    let unit = UNIT_DIRS
        .iter()
        .map(|d| Path::new(d).join(UNIT))
        .find(|p| p.is_file());
    check(
        &format!("{UNIT} installed in {}", UNIT_DIRS[0]),
        unit.as_ref()
            .is_some_and(|p| fs::read(p).is_ok_and(|c| c == unit_src)),
        || format!("no {UNIT} (identical to packaging/{UNIT}) in {UNIT_DIRS:?}"),
    )?;
    let enabled = Path::new("/etc/systemd/system/multi-user.target.wants").join(UNIT);
    check(
        "the service is not enabled by the installation",
        !enabled.exists(),
        || format!("{} exists", enabled.display()),
    )?;
    unit.context("no unit file")
}

pub fn check_programs() -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let (ok, out, err) = capture(BIN, &["--version"])?;
    check(
        &format!("media-relay --version prints {version}"),
        ok && out.trim() == format!("media-relay {version}"),
        || format!("got {:?} {:?}", out.trim(), err.trim()),
    )?;
    let (ok, out, err) = capture(BIN, &["check", "--config", CONFIG])?;
    check(&format!("media-relay check --config {CONFIG}"), ok, || {
        format!("{}{}", out.trim(), err.trim())
    })?;
    eprintln!("      {}", out.trim());
    let (ok, out, err) = capture(SIP_BIN, &["--help"])?;
    check(
        "media-relay-sip --help",
        ok && out.contains("--config"),
        || format!("{}{}", out.trim(), err.trim()),
    )
}

/// `systemd-analyze verify`: works without systemd as PID 1 (it loads the
/// unit offline); anything it says about our unit is a failure.
pub fn verify_unit(unit: &Path) -> anyhow::Result<()> {
    if !have("systemd-analyze") {
        eprintln!("    skipped: systemd-analyze is not installed (package systemd)");
        return Ok(());
    }
    let unit_s = unit.to_string_lossy();
    let (ok, out, err) = capture("systemd-analyze", &["verify", &unit_s])?;
    let said = format!("{out}{err}");
    let about_us: Vec<&str> = said.lines().filter(|l| l.contains(UNIT)).collect();
    if !about_us.is_empty() {
        bail!(
            "install test check failed: systemd-analyze verify {unit_s}:\n{}",
            about_us.join("\n")
        );
    }
    if ok {
        eprintln!("    ok: systemd-analyze verify {unit_s}");
    } else {
        eprintln!(
            "    note: systemd-analyze verify cannot run here (it said nothing about {UNIT}):\n      {}",
            said.trim().replace('\n', "\n      ")
        );
    }
    if let Ok((true, out, _)) = capture("systemd-analyze", &["security", "--offline=true", &unit_s])
        && let Some(line) = out.lines().find(|l| l.contains("Overall exposure level"))
    {
        eprintln!("    {}", line.trim_start_matches('→').trim());
    }
    Ok(())
}
