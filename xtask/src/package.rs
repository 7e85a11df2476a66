//! `cargo xtask package [--install-test] [--keep]`: the Debian package.
//!
//! Builds both binaries (release), then `cargo deb --no-build --strip` with
//! media-user's `[package.metadata.deb]` (files under `packaging/`).
//!
//! `--install-test` (root; meant for CI on a fresh Debian machine) installs
//! the package with apt-get, checks what it installed, and then runs the
//! *installed* daemon as the *installed* unit would: its `User=`,
//! `CapabilityBoundingSet=`, `AmbientCapabilities=`, `NoNewPrivileges=`,
//! `Environment=`, `LimitMEMLOCK=` and `ExecStartPre=` are read from the
//! unit file and applied with setpriv, on a veth pair in a network
//! namespace of its own, until XDP is attached, the SIP agent listens and ng
//! answers `ping`; the kernel's view of the process is checked, then
//! SIGTERM and a clean exit. Where systemd is PID 1 it also starts the unit
//! itself (sandbox included) in that namespace, through a runtime drop-in.
//! Everything is undone on success and on failure (processes, drop-in,
//! namespace, pinned maps, files, and the package unless `--keep`).

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::{
        fd::AsRawFd as _,
        unix::fs::{MetadataExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    setup,
    util::{self, banner, step, workspace_root},
};

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
/// The test bed: one veth pair inside one namespace.
const RELAY_DEV: &str = "mrp0";
const PEER_DEV: &str = "mrp1";
const RELAY_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 2);
/// How long the daemon may take to attach XDP and answer ng.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub fn run(install_test: bool, keep: bool) -> anyhow::Result<()> {
    if install_test && !util::is_root() {
        bail!(
            "--install-test installs a package, creates a network namespace and attaches XDP: \
             run it as root (`sudo cargo xtask package --install-test`)"
        );
    }
    let started = Instant::now();
    let deb = build()?;
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
    let result = install_test_run(&deb, keep);
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

/// Build both binaries and the package; returns the `.deb`'s path.
fn build() -> anyhow::Result<PathBuf> {
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
        .find(|l| l.ends_with(".deb"))
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

/// Everything the test set up, undone on drop (success or failure).
#[derive(Default)]
struct Cleanup {
    child: Option<Child>,
    /// The runtime drop-in of the systemd run; the unit is stopped too.
    drop_in: Option<PathBuf>,
    netns: Option<String>,
    /// Pin directories to remove.
    pin_dirs: Vec<PathBuf>,
    tmp: Vec<PathBuf>,
    /// Purge the package on drop.
    purge: bool,
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
        if let Some(ns) = self.netns.take() {
            match capture("ip", &["netns", "del", &ns]) {
                Ok((true, ..)) => eprintln!("    deleted network namespace {ns}"),
                Ok((false, _, e)) => eprintln!("    warning: ip netns del {ns}: {}", e.trim()),
                Err(e) => eprintln!("    warning: ip netns del {ns}: {e:#}"),
            }
        }
        for dir in self.pin_dirs.drain(..) {
            if dir.exists() {
                match fs::remove_dir_all(&dir) {
                    Ok(()) => eprintln!("    removed pinned maps {}", dir.display()),
                    Err(e) => eprintln!("    warning: removing {}: {e}", dir.display()),
                }
            }
        }
        for dir in self.tmp.drain(..) {
            let _ = fs::remove_dir_all(dir);
        }
        if self.purge {
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
}

/// Whether systemd is this machine's init (`sd_booted()`).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn install_test_run(deb: &Path, keep: bool) -> anyhow::Result<()> {
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

    let mut cleanup = Cleanup::default();
    cleanup.purge = !keep;
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

    step("checking the installed files");
    let unit_path = check_files()?;
    step("checking the installed programs");
    check_programs()?;
    step("checking the unit file with systemd-analyze");
    verify_unit(&unit_path)?;

    let unit = Unit::parse(&unit_path)?;
    let bed = Bed::new(&mut cleanup)?;
    step(&format!(
        "running the installed daemon as the installed unit would: user {}, capabilities {}",
        unit.user_name(),
        unit.bounding.join(",")
    ));
    run_with_setpriv(&unit, &bed, &mut cleanup)?;
    if systemd_running() {
        step("running the installed unit itself under systemd (in the test namespace)");
        run_with_systemd(&unit, &bed, &mut cleanup)?;
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
    if keep {
        step(&format!("--keep: {PACKAGE} stays installed"));
    }
    drop(cleanup);
    Ok(())
}

/// Checks the installed files; returns the unit's path.
fn check_files() -> anyhow::Result<PathBuf> {
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
    let conffiles =
        util::output("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]).unwrap_or_default();
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

fn check_programs() -> anyhow::Result<()> {
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
fn verify_unit(unit: &Path) -> anyhow::Result<()> {
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

/// Linux capability names (linux/capability.h), by number.
const CAPS: &[&str] = &[
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// `CAP_NET_ADMIN` -> `net_admin`, checked against the known names (systemd
/// ignores a misspelt capability silently).
fn cap_name(word: &str) -> anyhow::Result<&'static str> {
    let lower = word.to_ascii_lowercase();
    let name = lower.strip_prefix("cap_").unwrap_or(&lower);
    CAPS.iter()
        .find(|c| **c == name)
        .copied()
        .with_context(|| format!("unknown capability {word:?} in the unit"))
}

fn cap_mask(caps: &[&str]) -> u64 {
    caps.iter()
        .filter_map(|c| CAPS.iter().position(|k| k == c))
        .fold(0, |m, i| m | (1 << i))
}

/// The parts of the unit the test reproduces.
#[derive(Debug, Default)]
struct Unit {
    /// `User=`; `None`: root.
    user: Option<String>,
    group: Option<String>,
    bounding: Vec<&'static str>,
    ambient: Vec<&'static str>,
    no_new_privileges: bool,
    environment: Vec<(String, String)>,
    memlock_infinity: bool,
    exec_start_pre: Vec<String>,
    exec_start: Vec<String>,
}

/// Split a command line as systemd does (whitespace; single or double
/// quotes group words). Escapes and `$`/`%` expansion are not needed by our
/// unit and rejected.
fn split_words(s: &str) -> anyhow::Result<Vec<String>> {
    if s.contains(['\\', '$', '%']) {
        bail!("escapes, $ and % in unit command lines are not supported by the test: {s}");
    }
    let mut words = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            return Ok(words);
        };
        let mut word = String::new();
        if first == '\'' || first == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some(c) if c == first => break,
                    Some(c) => word.push(c),
                    None => bail!("unterminated quote in {s}"),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        words.push(word);
    }
}

impl Unit {
    fn parse(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        let mut section = String::new();
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
                continue;
            }
            if let Some(rest) = line.strip_suffix('\\') {
                pending.push_str(rest);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_owned();
                continue;
            }
            if section != "Service" {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .with_context(|| format!("{}: cannot parse {line:?}", path.display()))?;
            let list = values.entry(key.trim().to_owned()).or_default();
            // An empty assignment resets a list setting.
            if value.trim().is_empty() {
                list.clear();
            } else {
                list.push(value.trim().to_owned());
            }
        }
        let last = |k: &str| values.get(k).and_then(|v| v.last()).cloned();
        let caps = |k: &str| -> anyhow::Result<Vec<&'static str>> {
            let mut out = Vec::new();
            for v in values.get(k).into_iter().flatten() {
                if v.starts_with('~') {
                    bail!("{k}=~… (an inverted list) is not supported by the install test");
                }
                for w in v.split_whitespace() {
                    let c = cap_name(w)?;
                    if !out.contains(&c) {
                        out.push(c);
                    }
                }
            }
            Ok(out)
        };
        let yes =
            |k: &str| last(k).is_some_and(|v| matches!(v.as_str(), "yes" | "true" | "on" | "1"));
        let mut environment = Vec::new();
        for v in values.get("Environment").into_iter().flatten() {
            for w in split_words(v)? {
                let (k, val) = w
                    .split_once('=')
                    .with_context(|| format!("Environment={v}: no '='"))?;
                environment.push((k.to_owned(), val.to_owned()));
            }
        }
        let unit = Self {
            user: last("User").filter(|u| u != "root" && u != "0"),
            group: last("Group"),
            bounding: caps("CapabilityBoundingSet")?,
            ambient: caps("AmbientCapabilities")?,
            no_new_privileges: yes("NoNewPrivileges"),
            environment,
            memlock_infinity: last("LimitMEMLOCK").as_deref() == Some("infinity"),
            exec_start_pre: values.get("ExecStartPre").cloned().unwrap_or_default(),
            exec_start: split_words(&last("ExecStart").context("the unit has no ExecStart=")?)?,
        };
        if unit.bounding.is_empty() {
            bail!("the unit has no CapabilityBoundingSet=: the test expects a restricted set");
        }
        if let Some(c) = unit.ambient.iter().find(|c| !unit.bounding.contains(c)) {
            bail!("AmbientCapabilities= has {c}, which CapabilityBoundingSet= lacks");
        }
        Ok(unit)
    }

    fn user_name(&self) -> &str {
        self.user.as_deref().unwrap_or("root")
    }

    /// The capability sets the kernel must show for the daemon:
    /// `(effective = permitted, inheritable = ambient, bounding)`. Root gets
    /// its whole bounding set; another user only its ambient set.
    fn expected_caps(&self) -> (u64, u64, u64) {
        let ambient = cap_mask(&self.ambient);
        let bounding = cap_mask(&self.bounding);
        let effective = if self.user.is_none() {
            bounding
        } else {
            ambient
        };
        (effective, ambient, bounding)
    }
}

/// `uid`, `gid` of a user.
fn user_ids(user: &str) -> anyhow::Result<(u32, u32)> {
    let line =
        util::output("getent", &["passwd", user]).with_context(|| format!("no user {user}"))?;
    let f: Vec<&str> = line.trim().split(':').collect();
    Ok((
        f.get(2).and_then(|v| v.parse().ok()).context("uid")?,
        f.get(3).and_then(|v| v.parse().ok()).context("gid")?,
    ))
}

/// Namespaces `mr-pkg-<pid>` of earlier runs that were killed.
fn sweep_stale_namespaces() {
    let list = util::output("ip", &["netns", "list"]).unwrap_or_default();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("mr-pkg-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = capture("ip", &["netns", "del", name]);
            eprintln!("    removed stale namespace {name}");
        }
    }
}

/// A UDP socket created inside network namespace `ns`.
fn socket_in(ns: &str, bind: SocketAddr) -> anyhow::Result<UdpSocket> {
    let path = format!("/run/netns/{ns}");
    let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) on a valid fd, affecting only this thread,
            // which ends right after creating the socket.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            UdpSocket::bind(bind).context("binding a UDP socket in the test namespace")
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A field of `/proc/<pid>/status`.
fn status_field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_owned())
}

/// The test bed: one veth pair in a namespace of its own, a configuration
/// with a SIP agent on 5060 of the namespace, an ng client.
struct Bed {
    ns: String,
    ng: SocketAddr,
    client: UdpSocket,
    /// Readable by any user (the unit may name one), outside /tmp (the
    /// unit's PrivateTmp= would hide it).
    dir: PathBuf,
    config: PathBuf,
}

impl Bed {
    fn new(cleanup: &mut Cleanup) -> anyhow::Result<Self> {
        step("test bed: a veth pair in a network namespace of its own");
        sweep_stale_namespaces();
        let ns = format!("mr-pkg-{}", std::process::id());
        sh("ip", &["netns", "add", &ns])?;
        cleanup.netns = Some(ns.clone());
        sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        sh(
            "ip",
            &[
                "-n", &ns, "link", "add", RELAY_DEV, "type", "veth", "peer", "name", PEER_DEV,
            ],
        )?;
        for (dev, addr) in [(RELAY_DEV, RELAY_ADDR), (PEER_DEV, PEER_ADDR)] {
            sh(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", dev],
            )?;
            sh("ip", &["-n", &ns, "link", "set", dev, "up"])?;
        }
        eprintln!(
            "    namespace {ns}: {RELAY_DEV} {RELAY_ADDR}/24 <-veth-> {PEER_DEV} {PEER_ADDR}/24"
        );
        let probe = socket_in(&ns, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let ng = probe.local_addr()?;
        drop(probe);
        let client = socket_in(&ns, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        client.set_read_timeout(Some(Duration::from_millis(200)))?;

        let dir = PathBuf::from(format!("/run/mr-pkg-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        cleanup.tmp.push(dir.clone());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        let config = dir.join("media-relay.toml");
        fs::write(
            &config,
            format!(
                "# cargo xtask package --install-test\n\
                 [sip]\n\
                 trunk-listen = \"{RELAY_ADDR}:5060\"\n\
                 pbx = \"{PEER_ADDR}:5060\"\n\
                 media = [\"{ng}\"]\n\
                 [[sip.trunk]]\n\
                 name = \"test\"\n\
                 sources = [\"{PEER_ADDR}/32\"]\n\
                 target = \"{PEER_ADDR}:5070\"\n\
                 default = true\n"
            ),
        )?;
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644))?;
        Ok(Self {
            ns,
            ng,
            client,
            dir,
            config,
        })
    }

    /// `media-relay run` arguments for this bed.
    fn daemon_args(&self, pin_root: Option<&str>) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "--config",
            &self.config.to_string_lossy(),
            "--interface",
            RELAY_DEV,
            "--listen-ng",
            &self.ng.to_string(),
            "--port-min",
            "41000",
            "--port-max",
            "41099",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if let Some(p) = pin_root {
            args.push("--pin-root".into());
            args.push(p.into());
        }
        args
    }

    /// One ng `ping`: `Ok(true)` on `pong`, `Ok(false)` on no answer.
    fn ping(&self, n: u32) -> anyhow::Result<bool> {
        let cookie = format!("pkg{}-{n}", std::process::id());
        let _ = self
            .client
            .send_to(format!("{cookie} d7:command4:pinge").as_bytes(), self.ng);
        let mut buf = [0u8; 512];
        let Ok((len, _)) = self.client.recv_from(&mut buf) else {
            return Ok(false);
        };
        let reply = String::from_utf8_lossy(&buf[..len]);
        if reply != format!("{cookie} d6:result4:ponge") {
            bail!("install test check failed: ng ping: unexpected reply {reply:?}");
        }
        Ok(true)
    }

    fn xdp_attached(&self) -> bool {
        sh(
            "ip",
            &["-n", &self.ns, "-d", "link", "show", "dev", RELAY_DEV],
        )
        .is_ok_and(|l| l.contains("prog/xdp"))
    }

    fn in_ns(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let net = format!("--net=/run/netns/{}", self.ns);
        let mut all = vec![net.as_str(), program];
        all.extend_from_slice(args);
        sh("nsenter", &all)
    }

    /// Wait until the daemon answers ng `ping` and XDP is on the link;
    /// `dead` says why the daemon is gone, if it is, `log` what it logged.
    fn wait_up(
        &self,
        mut dead: impl FnMut() -> Option<String>,
        mut on_tick: impl FnMut(),
        log: impl Fn() -> String,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut n = 0;
        let mut pong = false;
        loop {
            on_tick();
            if let Some(why) = dead() {
                bail!(
                    "install test check failed: media-relay exited ({why}) before it was up\n{}",
                    log()
                );
            }
            if !pong {
                n += 1;
                pong = self.ping(n)?;
            } else {
                std::thread::sleep(Duration::from_millis(50));
            }
            if pong && self.xdp_attached() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "install test check failed: media-relay did not {} within {} s\n{}",
                    if pong { "attach XDP" } else { "answer ng ping" },
                    START_TIMEOUT.as_secs(),
                    log()
                );
            }
        }
    }

    /// The checks on a running daemon: its identity and capabilities as the
    /// kernel sees them, what it did with them, the SIP agent.
    fn check_running(&self, unit: &Unit, pid: u32, pin_dir: &Path) -> anyhow::Result<()> {
        let (uid, gid) = user_ids(unit.user_name())?;
        let program = &unit.exec_start[0];
        let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        check(
            &format!("pid {pid} is the installed {program}"),
            exe == Path::new(program),
            || format!("/proc/{pid}/exe is {}", exe.display()),
        )?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let ids = |k: &str| {
            status_field(&status, k)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let gid = match &unit.group {
            Some(g) => util::output("getent", &["group", g])
                .and_then(|l| l.split(':').nth(2).and_then(|v| v.trim().parse().ok()))
                .with_context(|| format!("no group {g}"))?,
            None => gid,
        };
        check(
            &format!("runs as {} ({uid}:{gid})", unit.user_name()),
            ids("Uid:").iter().all(|u| *u == uid.to_string())
                && ids("Gid:").iter().all(|g| *g == gid.to_string()),
            || format!("Uid: {:?} Gid: {:?}", ids("Uid:"), ids("Gid:")),
        )?;
        let (eff, amb, bnd) = unit.expected_caps();
        let want = [
            ("CapEff:", eff),
            ("CapPrm:", eff),
            ("CapInh:", amb),
            ("CapAmb:", amb),
            ("CapBnd:", bnd),
        ];
        check(
            &format!(
                "its capabilities are exactly the unit's: effective {eff:016x} ({}), \
                 bounding {bnd:016x}",
                if unit.user.is_none() {
                    unit.bounding.join(",")
                } else {
                    unit.ambient.join(",")
                }
            ),
            want.iter()
                .all(|(k, v)| status_field(&status, k) == Some(format!("{v:016x}"))),
            || {
                want.iter()
                    .map(|(k, v)| {
                        format!(
                            "{k} {} (want {v:016x})",
                            status_field(&status, k).unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        )?;
        if unit.no_new_privileges {
            check(
                "no_new_privs is set",
                status_field(&status, "NoNewPrivs:").as_deref() == Some("1"),
                || format!("NoNewPrivs: {:?}", status_field(&status, "NoNewPrivs:")),
            )?;
        }
        check(
            &format!("ip link shows the XDP program on {RELAY_DEV}"),
            self.xdp_attached(),
            String::new,
        )?;
        let forwarding = self.in_ns(
            "cat",
            &[&format!("/proc/sys/net/ipv4/conf/{RELAY_DEV}/forwarding")],
        )?;
        check(
            &format!("it enabled forwarding on {RELAY_DEV} (a sysctl write)"),
            forwarding.trim() == "1",
            || {
                format!(
                    "net.ipv4.conf.{RELAY_DEV}.forwarding = {}",
                    forwarding.trim()
                )
            },
        )?;
        let version_dir = fs::read_dir(pin_dir)
            .ok()
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.is_dir())
            .with_context(|| {
                format!(
                    "install test check failed: no pinned maps under {}",
                    pin_dir.display()
                )
            })?;
        let pins: Vec<(String, u32)> = fs::read_dir(&version_dir)?
            .filter_map(Result::ok)
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().map_or(u32::MAX, |m| m.uid()),
                )
            })
            .collect();
        check(
            &format!(
                "maps pinned in {} by {} ({})",
                version_dir.display(),
                unit.user_name(),
                pins.iter()
                    .map(|p| p.0.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            !pins.is_empty() && pins.iter().all(|p| p.1 == uid),
            || format!("{pins:?}"),
        )?;
        let listening = self.in_ns("ss", &["-Hlnut", &format!("src {RELAY_ADDR}:5060")])?;
        check(
            &format!("the SIP agent listens on {RELAY_ADDR}:5060, UDP and TCP"),
            listening.contains("udp") && listening.contains("tcp"),
            || format!("ss shows {:?}", listening.trim()),
        )
    }
}

/// Run the unit's `ExecStartPre=` lines as systemd would (all are "+":
/// root), for pin directory `pin_dir` instead of the unit's.
fn run_exec_start_pre(unit: &Unit, pin_dir: &str) -> anyhow::Result<()> {
    for line in &unit.exec_start_pre {
        let Some(cmd) = line.strip_prefix('+') else {
            bail!("ExecStartPre={line}: the test only knows how to run \"+\" (root) lines");
        };
        let words: Vec<String> = split_words(cmd)?
            .into_iter()
            .map(|w| w.replace(UNIT_PIN_DIR, pin_dir))
            .collect();
        eprintln!("    ExecStartPre (root): {}", words.join(" "));
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        sh(&words[0], &args).context("install test check failed: the unit's ExecStartPre=")?;
    }
    Ok(())
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(25)..];
    format!("media-relay's log (last lines):\n  {}", tail.join("\n  "))
}

/// The installed binary, started by hand with the unit's user,
/// capabilities, environment and limits (setpriv), in the test namespace.
fn run_with_setpriv(unit: &Unit, bed: &Bed, cleanup: &mut Cleanup) -> anyhow::Result<()> {
    eprintln!(
        "    from the unit: User={} Group={} CapabilityBoundingSet={:?} \
         AmbientCapabilities={:?} NoNewPrivileges={}",
        unit.user_name(),
        unit.group.as_deref().unwrap_or("(the user's)"),
        unit.bounding,
        unit.ambient,
        unit.no_new_privileges
    );
    // The unit's ExecStartPre=, for the test's own pin directory.
    let pin_dir = PathBuf::from(TEST_PIN_DIR);
    if pin_dir.exists() {
        fs::remove_dir_all(&pin_dir).with_context(|| format!("removing stale {TEST_PIN_DIR}"))?;
    }
    cleanup.pin_dirs.push(pin_dir.clone());
    run_exec_start_pre(unit, TEST_PIN_DIR)?;
    let (uid, _) = user_ids(unit.user_name())?;
    let meta = fs::metadata(&pin_dir).with_context(|| {
        format!("install test check failed: ExecStartPre= did not create {TEST_PIN_DIR}")
    })?;
    check(
        &format!(
            "ExecStartPre= made {TEST_PIN_DIR}, owned by {}",
            unit.user_name()
        ),
        meta.is_dir() && meta.uid() == uid,
        || format!("owned by uid {}", meta.uid()),
    )?;

    // LimitMEMLOCK=infinity, as systemd would set it (it can: it is root
    // with CAP_SYS_RESOURCE; in a container that lacks it, say so).
    if unit.memlock_infinity {
        let inf = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit(2) with a valid struct; affects this process
        // and the children it starts from now on.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &inf) } != 0 {
            eprintln!(
                "    note: cannot apply LimitMEMLOCK=infinity here ({}; no CAP_SYS_RESOURCE?): \
                 the daemon runs with the current limit (kernels >= 5.11 do not charge BPF \
                 maps to it)",
                std::io::Error::last_os_error()
            );
        }
    }

    let set = |caps: &[&str]| {
        std::iter::once("-all".to_owned())
            .chain(caps.iter().map(|c| format!("+{c}")))
            .collect::<Vec<_>>()
            .join(",")
    };
    let user = unit.user_name();
    let group = unit.group.clone().unwrap_or_else(|| {
        util::output("id", &["-gn", user]).map_or_else(|| user.to_owned(), |g| g.trim().to_owned())
    });
    let mut args: Vec<String> = vec![
        format!("--net=/run/netns/{}", bed.ns),
        "--".into(),
        "setpriv".into(),
        format!("--reuid={user}"),
        format!("--regid={group}"),
        "--init-groups".into(),
        format!("--inh-caps={}", set(&unit.ambient)),
        format!("--ambient-caps={}", set(&unit.ambient)),
        format!("--bounding-set={}", set(&unit.bounding)),
    ];
    if unit.no_new_privileges {
        args.push("--no-new-privs".into());
    }
    args.push("--".into());
    args.push(unit.exec_start[0].clone());
    args.extend(bed.daemon_args(Some(TEST_PIN_DIR)));
    eprintln!("    nsenter {}", args.join(" "));
    // nsenter enters only the network namespace: the host's bpffs stays
    // visible, as it does to the service (`ip netns exec` would remount
    // /sys and hide it). nsenter, setpriv and media-relay each exec the
    // next: the child's pid is the daemon's.
    let log = bed.dir.join("media-relay.log");
    let mut child = Command::new("nsenter")
        .args(&args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(unit.environment.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&log)?)
        .spawn()
        .context("starting nsenter")?;
    let pid = child.id();
    let stdout = child.stdout.take().context("stdout")?;
    cleanup.child = Some(child);
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut attached_line = None;
    let drain = |attached: &mut Option<String>| {
        while let Ok(line) = lines.try_recv() {
            eprintln!("    | {line}");
            if line.starts_with("media-relay: XDP ") && line.contains(&format!(" on {RELAY_DEV}")) {
                *attached = Some(line);
            }
        }
    };
    let child_cell = std::cell::RefCell::new(cleanup.child.take());
    let up = bed.wait_up(
        || {
            child_cell
                .borrow_mut()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .map(|s| s.to_string())
        },
        || drain(&mut attached_line),
        || log_tail(&log),
    );
    cleanup.child = child_cell.into_inner();
    let up = up?;
    // The line may trail the ping by a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while attached_line.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        drain(&mut attached_line);
    }
    eprintln!("    up in {:.1} s", up.as_secs_f64());
    check(
        &format!("it printed that XDP is attached to {RELAY_DEV}"),
        attached_line.is_some(),
        || log_tail(&log),
    )?;
    check(
        &format!("ng ping on {} answers pong", bed.ng),
        true,
        String::new,
    )?;
    bed.check_running(unit, pid, &pin_dir.join(""))?;

    // Stop it as systemd would.
    // SAFETY: kill(2) on our own child, the daemon (nsenter and setpriv
    // exec'd it).
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let stopping = Instant::now();
    let status = loop {
        let child = cleanup.child.as_mut().context("child")?;
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if stopping.elapsed() > STOP_TIMEOUT {
            bail!(
                "install test check failed: media-relay ignored SIGTERM for {} s\n{}",
                STOP_TIMEOUT.as_secs(),
                log_tail(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    cleanup.child = None;
    drain(&mut attached_line);
    check(
        &format!(
            "SIGTERM: it exited 0 in {:.1} s",
            stopping.elapsed().as_secs_f64()
        ),
        status.success(),
        || format!("{status}\n{}", log_tail(&log)),
    )?;
    check(
        &format!("XDP detached from {RELAY_DEV} on exit"),
        !bed.xdp_attached(),
        String::new,
    )
}

fn journal(lines: u32) -> String {
    let n = lines.to_string();
    let out = util::output(
        "journalctl",
        &["-u", UNIT, "-n", &n, "--no-pager", "-o", "cat"],
    )
    .unwrap_or_default();
    format!(
        "journalctl -u {UNIT}:\n  {}",
        out.trim().replace('\n', "\n  ")
    )
}

/// The unit itself, started by systemd, with a runtime drop-in that puts
/// it into the test namespace with the test's arguments; everything else
/// (sandbox, ExecStartPre=, capabilities) is the installed unit's.
fn run_with_systemd(unit: &Unit, bed: &Bed, cleanup: &mut Cleanup) -> anyhow::Result<()> {
    let pin_dir = PathBuf::from(UNIT_PIN_DIR);
    if !pin_dir.exists() {
        cleanup.pin_dirs.push(pin_dir.clone());
    }
    let drop_in_dir = PathBuf::from(format!("/run/systemd/system/{UNIT}.d"));
    fs::create_dir_all(&drop_in_dir)?;
    let drop_in = drop_in_dir.join("50-xtask-install-test.conf");
    // The daemon's default pin root is the unit's pin directory.
    let exec = std::iter::once(unit.exec_start[0].clone())
        .chain(bed.daemon_args(None))
        .collect::<Vec<_>>()
        .join(" ");
    fs::write(
        &drop_in,
        format!(
            "# cargo xtask package --install-test (removed when it ends)\n\
             [Service]\n\
             NetworkNamespacePath=/run/netns/{}\n\
             ExecStart=\n\
             ExecStart={exec}\n\
             Restart=no\n",
            bed.ns
        ),
    )?;
    cleanup.drop_in = Some(drop_in.clone());
    eprintln!("    drop-in {}: ExecStart={exec}", drop_in.display());
    sh("systemctl", &["daemon-reload"])?;
    let _ = capture("systemctl", &["reset-failed", UNIT]);
    let (ok, _, err) = capture("systemctl", &["start", UNIT])?;
    if !ok {
        bail!(
            "install test check failed: systemctl start {UNIT}: {}\n{}",
            err.trim(),
            journal(30)
        );
    }
    let up = bed.wait_up(
        || {
            let state = util::output("systemctl", &["is-active", UNIT]).unwrap_or_default();
            let state = state.trim();
            (state != "active" && state != "activating").then(|| state.to_owned())
        },
        || {},
        || journal(30),
    )?;
    eprintln!("    up in {:.1} s", up.as_secs_f64());
    let pid: u32 = util::output("systemctl", &["show", "-p", "MainPID", "--value", UNIT])
        .and_then(|p| p.trim().parse().ok())
        .filter(|p| *p != 0)
        .context("install test check failed: systemd reports no MainPID")?;
    let journal_has_line = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let j = journal(200);
            if j.contains(&format!("media-relay: XDP native on {RELAY_DEV}"))
                || j.contains(&format!("media-relay: XDP generic on {RELAY_DEV}"))
            {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    check(
        &format!("the journal has its \"XDP ... on {RELAY_DEV}\" line"),
        journal_has_line,
        || journal(30),
    )?;
    bed.check_running(unit, pid, &pin_dir)?;
    let stopping = Instant::now();
    sh("systemctl", &["stop", UNIT])?;
    let result = util::output(
        "systemctl",
        &["show", "-p", "Result", "-p", "ExecMainStatus", UNIT],
    )
    .unwrap_or_default();
    check(
        &format!(
            "systemctl stop: it exited 0 in {:.1} s",
            stopping.elapsed().as_secs_f64()
        ),
        result.contains("Result=success") && result.contains("ExecMainStatus=0"),
        || format!("{}\n{}", result.trim(), journal(30)),
    )?;
    check(
        &format!("XDP detached from {RELAY_DEV} on stop"),
        !bed.xdp_attached(),
        String::new,
    )
}
