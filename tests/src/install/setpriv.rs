//! The installed daemon started by hand as its unit would start it: the
//! unit's `ExecStartPre=` as root, then the program under setpriv with the
//! unit's user, group, capability sets, `NoNewPrivileges=`, environment and
//! `LimitMEMLOCK=`, in the bed's namespace; checked while it runs, stopped
//! with SIGTERM.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Cleanup, RELAY_DEV, STOP_TIMEOUT, TEST_PIN_DIR, UNIT_PIN_DIR,
    bed::Bed,
    call::Call,
    check, output, sh,
    unit::{Unit, split_words, user_ids},
};

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
pub fn run_with_setpriv(unit: &Unit, bed: &Bed, cleanup: &mut Cleanup) -> anyhow::Result<()> {
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
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const inf) } != 0 {
            eprintln!(
                "    note: cannot apply LimitMEMLOCK=infinity here ({}; no CAP_SYS_RESOURCE?): \
                 the daemon runs with the current limit (kernels >= 5.11 do not charge BPF \
                 maps to it)",
                std::io::Error::last_os_error()
            );
        }
    }

    // LimitNOFILE=, likewise.
    if let Some(n) = unit.nofile {
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: setrlimit(2) with a valid struct, as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } != 0 {
            eprintln!(
                "    note: cannot apply LimitNOFILE={n} here ({}): the daemon runs with the current limit",
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
        output("id", &["-gn", user]).map_or_else(|| user.to_owned(), |g| g.trim().to_owned())
    });
    let mut args: Vec<String> = vec![
        format!("--net=/run/netns/{}", bed.ns.name()),
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
    let attached = format!(" on {RELAY_DEV}");
    let first = start(&args, unit, bed, cleanup, "media-relay.log", &[&attached])?;
    check(
        &format!("ng ping on {} answers pong", bed.ng),
        true,
        String::new,
    )?;
    bed.check_running(unit, first.pid, &pin_dir.join(""))?;

    // A call across a restart, as `systemctl restart` does it: SIGTERM,
    // then a start, both under the unit's user and capabilities.
    let call = Call::start(bed, "pkg-setpriv", 46000)?;
    std::thread::sleep(Duration::from_secs(3));
    stop(cleanup, &first.log)?;
    std::thread::sleep(Duration::from_millis(500));
    let adopted = "media-relay: adopted 1 call";
    let second = start(&args, unit, bed, cleanup, "media-relay-2.log", &[adopted])?;
    check(
        "the restarted daemon adopted the call",
        second.lines.iter().any(|l| l.starts_with(adopted)),
        || format!("its output: {:?}\n{}", second.lines, log_tail(&second.log)),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    call.finish("a SIGTERM and a start under the unit's user and capabilities")?;
    stop(cleanup, &second.log)?;
    bed.check_stop_keeps_then_teardown(TEST_PIN_DIR, "SIGTERM")
}

/// A daemon started by [`start`]: its pid, what it printed, its log.
struct Started {
    pid: u32,
    lines: Vec<String>,
    log: PathBuf,
}

/// Start `nsenter <args>` (the daemon under setpriv) with the unit's
/// environment, its stderr in `bed.dir/log_name`; wait until it answers
/// ping with XDP attached and has printed a line containing each of
/// `expect` (2 s grace for those).
fn start(
    args: &[String],
    unit: &Unit,
    bed: &Bed,
    cleanup: &mut Cleanup,
    log_name: &str,
    expect: &[&str],
) -> anyhow::Result<Started> {
    // nsenter enters only the network namespace: the host's bpffs stays
    // visible, as it does to the service (`ip netns exec` would remount
    // /sys and hide it). nsenter, setpriv and media-relay each exec the
    // next: the child's pid is the daemon's.
    let log = bed.dir.join(log_name);
    let mut child = Command::new("nsenter")
        .args(args)
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
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let drain = |lines: &mut Vec<String>| {
        while let Ok(line) = rx.try_recv() {
            eprintln!("    | {line}");
            lines.push(line);
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
        || drain(&mut lines),
        || log_tail(&log),
    );
    cleanup.child = child_cell.into_inner();
    let up = up?;
    // The lines may trail the ping by a moment.
    let seen = |lines: &[String], e: &str| lines.iter().any(|l| l.contains(e));
    let deadline = Instant::now() + Duration::from_secs(2);
    while !expect.iter().all(|e| seen(&lines, e)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        drain(&mut lines);
    }
    eprintln!("    up in {:.1} s", up.as_secs_f64());
    for e in expect {
        check(
            &format!("it printed a line with {:?}", e.trim()),
            seen(&lines, e),
            || log_tail(&log),
        )?;
    }
    Ok(Started { pid, lines, log })
}

/// Stop the daemon as systemd would (SIGTERM) and check it exits 0 in
/// time.
fn stop(cleanup: &mut Cleanup, log: &Path) -> anyhow::Result<()> {
    let pid = cleanup.child.as_ref().context("no daemon running")?.id();
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
                log_tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    cleanup.child = None;
    check(
        &format!(
            "SIGTERM: it exited 0 in {:.1} s",
            stopping.elapsed().as_secs_f64()
        ),
        status.success(),
        || format!("{status}\n{}", log_tail(log)),
    )
}
