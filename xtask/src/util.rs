//! Small helpers: progress lines, running commands.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// A progress line.
pub fn step(what: &str) {
    eprintln!("\x1b[1m==> {what}\x1b[0m");
}

/// A loud notice.
pub fn banner(what: &str) {
    let line = "*".repeat(78);
    eprintln!("\n{line}\n*** {what}\n{line}\n");
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set (relative to the
/// workspace, as cargo takes it), else the workspace's `target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => workspace_root().join(d),
        _ => workspace_root().join("target"),
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Run a command to completion, inheriting stdio; fail on a non-zero exit.
pub fn run(program: impl AsRef<Path>, args: &[&str]) -> anyhow::Result<()> {
    let program = program.as_ref();
    let status = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {}", program.display()))?;
    if !status.success() {
        bail!(
            "`{} {}` failed ({status})",
            program.display(),
            args.join(" ")
        );
    }
    Ok(())
}

/// `cargo <args>` in the workspace.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run(
        std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        args,
    )
}

/// `cargo build --release` of these (package, binary) pairs; returns
/// target/release.
pub fn build_release(bins: &[(&str, &str)]) -> anyhow::Result<PathBuf> {
    let mut args = vec!["build", "--release"];
    for (package, bin) in bins {
        args.extend(["--package", package, "--bin", bin]);
    }
    cargo(&args)?;
    Ok(target_dir().join("release"))
}

/// Replace this process with `program` (so signals reach it directly).
pub fn exec(program: &Path, args: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let err = Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("executing {}", program.display()))
}

/// Output of a command, `None` if it cannot run or fails.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
