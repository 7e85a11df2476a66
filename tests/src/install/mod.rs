//! The package install test's runtime (`media-relay-install-test`, run by
//! `cargo xtask package --install-test` once it has installed the package
//! with apt-get; xtask purges it again afterwards).
//!
//! It checks what the package installed, and then runs the *installed*
//! daemon as the *installed* unit would: its `User=`,
//! `CapabilityBoundingSet=`, `AmbientCapabilities=`, `NoNewPrivileges=`,
//! `Environment=`, `LimitMEMLOCK=` and `ExecStartPre=` are read from the
//! unit file and applied with setpriv, on a veth pair in a network
//! namespace of its own, until XDP is attached, the SIP agent listens and ng
//! answers `ping`; the kernel's view of the process is checked; a call's
//! media flows through a SIGTERM and a start again (0 lost), then SIGTERM
//! and a clean exit leave XDP attached until `media-relay teardown`. Where systemd is PID 1 it also starts the unit
//! itself (sandbox included) in that namespace, through a runtime drop-in.
//! Everything is undone on success and on failure (processes, drop-in,
//! namespace, pinned maps, files).
//!
//! - `files.rs`: the installed files, programs and unit file.
//! - `unit.rs`: the parts of the unit the test reproduces.
//! - `bed.rs`: the namespace, the configuration, the checks on a running
//!   daemon.
//! - `call.rs`: a call whose media must flow across a restart.
//! - `setpriv.rs`: the daemon started by hand with the unit's settings.
//! - `systemd.rs`: the unit started by systemd.

mod bed;
mod call;
mod files;
mod setpriv;
mod systemd;
mod unit;

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use self::{bed::Bed, unit::Unit};

/// The Debian package's name (`[package.metadata.deb] name`).
const PACKAGE: &str = "media-relay";
/// Where the package installs things.
const BIN: &str = "/usr/bin/media-relay";
const SIP_BIN: &str = "/usr/bin/media-relay-sip";
const CONFIG: &str = "/etc/media-relay/media-relay.toml";
const EXAMPLE: &str = "/usr/share/doc/media-relay/examples/media-relay.example.toml";
const UNIT_DIRS: &[&str] = &["/usr/lib/systemd/system", "/lib/systemd/system"];
const UNIT: &str = "media-relay.service";
/// The unit's pin directory, replaced in `ExecStartPre=` by the test's own.
const UNIT_PIN_DIR: &str = "/sys/fs/bpf/media-relay";
const TEST_PIN_DIR: &str = "/sys/fs/bpf/media-relay-pkg-test";
/// The test bed: one veth pair from the relay's namespace to the peers'.
const RELAY_DEV: &str = "mrp0";
const PEER_DEV: &str = "mrp1";
const RELAY_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 2);
/// How long the daemon may take to attach XDP and answer ng.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A progress line (as xtask prints them).
fn step(what: &str) {
    eprintln!("\x1b[1m==> {what}\x1b[0m");
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Output of a command, `None` if it cannot run or fails.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A failed check, named.
fn check(name: &str, ok: bool, detail: impl FnOnce() -> String) -> anyhow::Result<()> {
    if ok {
        eprintln!("    ok: {name}");
        Ok(())
    } else {
        bail!("install test check failed: {name}: {}", detail())
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

/// Run a command, failing with its stderr.
fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let (ok, stdout, stderr) = capture(program, args)?;
    if !ok {
        bail!("`{program} {}` failed: {}", args.join(" "), stderr.trim());
    }
    Ok(stdout)
}

/// What the runs set up outside the bed, undone on drop (success or
/// failure): the daemon, the systemd drop-in (the unit is stopped too),
/// pin directories.
#[derive(Default)]
struct Cleanup {
    child: Option<Child>,
    /// The runtime drop-in of the systemd run; the unit is stopped too.
    drop_in: Option<PathBuf>,
    /// Pin directories to remove.
    pin_dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        step("cleaning up");
        if let Some(mut child) = self.child.take()
            && child.try_wait().ok().flatten().is_none()
        {
            eprintln!("    killing media-relay (pid {})", child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(drop_in) = self.drop_in.take() {
            let _ = capture("systemctl", &["stop", UNIT]);
            let _ = fs::remove_file(&drop_in);
            let _ = drop_in.parent().map(fs::remove_dir);
            let _ = capture("systemctl", &["daemon-reload"]);
            let _ = capture("systemctl", &["reset-failed", UNIT]);
            eprintln!("    stopped {UNIT}, removed {}", drop_in.display());
        }
        for dir in self.pin_dirs.drain(..) {
            if dir.exists() {
                match fs::remove_dir_all(&dir) {
                    Ok(()) => eprintln!("    removed pinned maps {}", dir.display()),
                    Err(e) => eprintln!("    warning: removing {}: {e}", dir.display()),
                }
            }
        }
    }
}

/// The install test, on the package installed on this machine (root).
pub fn run() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "the install test creates a network namespace, attaches XDP and starts services: \
             run it as root (`sudo cargo xtask package --install-test`)"
        );
    }
    // Declared before the cleanup, so dropped after it: the daemon and the
    // unit are stopped before their namespace is deleted.
    let bed: Bed;
    let mut cleanup = Cleanup::default();

    step("checking the installed files");
    let unit_path = files::check_files()?;
    step("checking the installed programs");
    files::check_programs()?;
    step("checking the unit file with systemd-analyze");
    files::verify_unit(&unit_path)?;

    let unit = Unit::parse(&unit_path)?;
    bed = Bed::new()?;
    step(&format!(
        "running the installed daemon as the installed unit would: user {}, capabilities {}",
        unit.user_name(),
        unit.bounding.join(",")
    ));
    setpriv::run_with_setpriv(&unit, &bed, &mut cleanup)?;
    if systemd::systemd_running() {
        step("running the installed unit itself under systemd (in the test namespace)");
        systemd::run_with_systemd(&unit, &bed, &mut cleanup)?;
    } else {
        eprintln!(
            "    note: systemd is not PID 1 here (PID 1 is {:?}): the unit's sandboxing \
             (ProtectSystem=, ProtectKernelTunables=, ...) is not exercised, only its user, \
             capabilities and ExecStartPre=; on a machine booted with systemd the test also \
             starts the unit itself",
            fs::read_to_string("/proc/1/comm")
                .unwrap_or_default()
                .trim()
        );
    }
    Ok(())
}
