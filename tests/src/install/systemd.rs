//! The installed unit itself, started by systemd (where systemd is PID 1)
//! in the bed's namespace through a runtime drop-in: its sandbox,
//! `ExecStartPre=` and capabilities are systemd's doing.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Cleanup, RELAY_DEV, UNIT, UNIT_PIN_DIR, bed::Bed, call::Call, capture, check, output, sh,
    unit::Unit,
};

/// Whether systemd is this machine's init (`sd_booted()`).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn journal(lines: u32) -> String {
    let n = lines.to_string();
    let out = output(
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
pub fn run_with_systemd(unit: &Unit, bed: &Bed, cleanup: &mut Cleanup) -> anyhow::Result<()> {
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
            bed.ns.name()
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
            let state = output("systemctl", &["is-active", UNIT]).unwrap_or_default();
            let state = state.trim();
            (state != "active" && state != "activating").then(|| state.to_owned())
        },
        || {},
        || journal(30),
    )?;
    eprintln!("    up in {:.1} s", up.as_secs_f64());
    let pid: u32 = output("systemctl", &["show", "-p", "MainPID", "--value", UNIT])
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

    // A call across `systemctl restart`: its media never stops.
    let call = Call::start(bed, "pkg-systemd", 46100)?;
    std::thread::sleep(Duration::from_secs(3));
    sh("systemctl", &["restart", UNIT])?;
    bed.wait_up(
        || {
            let state = output("systemctl", &["is-active", UNIT]).unwrap_or_default();
            let state = state.trim();
            (state != "active" && state != "activating").then(|| state.to_owned())
        },
        || {},
        || journal(30),
    )?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !journal(200).contains("media-relay: adopted 1 call") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    check(
        "after `systemctl restart` the daemon adopted the call",
        journal(200).contains("media-relay: adopted 1 call"),
        || journal(30),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    call.finish("`systemctl restart`")?;

    let stopping = Instant::now();
    sh("systemctl", &["stop", UNIT])?;
    let result = output(
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
    bed.check_stop_keeps_then_teardown(UNIT_PIN_DIR, "systemctl stop")
}
