//! A `media-relay run` process inside a test namespace, and ng clients:
//! our own codec over a UDP socket, and Debian's `rtpengine-ng-client`.

use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use media_user::ng::{self, Value};

use crate::{netns::Netns, testdir::TestDir};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The tests' `RUST_LOG` for every daemon: media_user's debug lines (a
/// line per route, per flow) are there to read when a test fails.
pub const TEST_LOG_FILTER: &str = "info,media_user=debug";

static LOG_FILTER: OnceLock<&'static str> = OnceLock::new();

/// Every daemon started from now on in this process logs with `filter`
/// (`RUST_LOG`) instead of [`TEST_LOG_FILTER`]: a benchmark sets `info`,
/// the daemon's own default, so it measures the daemon as deployed rather
/// than one writing a debug line per route. Set once; false if it was set
/// already.
pub fn set_log_filter(filter: &'static str) -> bool {
    LOG_FILTER.set(filter).is_ok()
}

/// The `RUST_LOG` daemons get (see [`set_log_filter`]).
pub fn log_filter() -> &'static str {
    LOG_FILTER.get().copied().unwrap_or(TEST_LOG_FILTER)
}

/// `target/<profile>/`, where the binaries of this build are.
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let mut dir = exe
        .parent()
        .expect("the test binary's directory")
        .to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Build the binaries the tests start (`media-relay`, `media-relay-sip`)
/// from the current source, once per test process, with the cargo and the
/// profile that built this test (a no-op when they are up to date). So
/// `cargo test -p media-relay-tests` by hand never tests a stale daemon.
/// `MEDIA_RELAY_BIN_DIR` names a directory of prebuilt binaries instead
/// (the installed package, say); outside cargo (`CARGO` unset, e.g. the
/// bench binary run on its own) the binaries next to this one are used.
fn binaries_dir() -> &'static Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("MEDIA_RELAY_BIN_DIR") {
            return Ok(PathBuf::from(dir));
        }
        let dir = target_profile_dir();
        let Some(cargo) = std::env::var_os("CARGO") else {
            return Ok(dir);
        };
        let profile = dir
            .file_name()
            .and_then(|p| p.to_str())
            .unwrap_or("debug")
            .to_owned();
        let target_dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&workspace).args([
            "build",
            "--quiet",
            "--package",
            "media-user",
            "--package",
            "signaling",
            "--bins",
        ]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        cmd.arg("--target-dir").arg(&target_dir);
        match cmd.status() {
            Ok(s) if s.success() => Ok(dir),
            Ok(s) => Err(format!(
                "building media-relay for the tests failed ({s}): run `cargo build --bins` in {} and fix what it reports",
                workspace.display()
            )),
            Err(e) => Err(format!(
                "cannot run cargo to build media-relay for the tests ({e}): run `cargo build --bins` first"
            )),
        }
    })
}

/// A binary of this build, built from the current source first
/// ([`binaries_dir`]).
fn built(name: &str) -> PathBuf {
    let dir = match binaries_dir() {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    };
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --bins`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// The `media-relay` binary of this build (`target/<profile>/media-relay`).
pub fn binary() -> PathBuf {
    built("media-relay")
}

/// The `media-relay-sip` binary of this build.
pub fn sip_binary() -> PathBuf {
    built("media-relay-sip")
}

/// A running daemon, stopped (SIGTERM, then SIGKILL) and its pins removed
/// on drop. It can be killed and started again on the same pins
/// ([`Daemon::kill`], [`Daemon::restart`]): the next run adopts the calls.
pub struct Daemon {
    child: Option<Child>,
    pub ng: SocketAddr,
    pin_root: PathBuf,
    /// Its own memory-backed runtime directory (`RUNTIME_DIRECTORY`: the
    /// SIP agent's secret and dialogs), kept across its restarts.
    runtime_dir: PathBuf,
    log: PathBuf,
    /// To start it again: its namespace (`/run/netns/<name>`), arguments,
    /// and where its runs' logs go.
    netns: String,
    args: Vec<String>,
    /// Extra environment of the next runs ([`Daemon::restart_with_env`]).
    env: Vec<(String, String)>,
    logs: PathBuf,
    runs: u32,
}

impl Daemon {
    /// Start `media-relay run <args>` in `ns` with its ng socket on
    /// 127.0.0.1:2223 of that namespace (each test has namespaces of its
    /// own), its own pin directory and its log in the test's directory
    /// `dir`; returns once it answers ping.
    pub fn start(dir: &TestDir, ns: &Netns, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_ng(dir, ns, args, "127.0.0.1:2223".parse()?)
    }

    /// [`Daemon::start`] on the bed's two legs (`-i ra -i rb`: A's side
    /// and B's) with the data plane in XDP `mode` (`native`, `generic`, or
    /// `off` for the userspace path) and `extra` arguments.
    pub fn start_legs(
        dir: &TestDir,
        ns: &Netns,
        mode: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut args = vec!["-i", "ra", "-i", "rb", "--xdp-mode", mode];
        args.extend_from_slice(extra);
        Self::start(dir, ns, &args)
    }

    /// [`Daemon::start`] with its ng socket on `ng` instead (e.g. `[::]:2223`
    /// to reach it from the other namespaces); it is asked for ping from
    /// the namespace's loopback of `ng`'s family (127.0.0.1 or ::1), which
    /// an `--ng-allow` among `args` must admit.
    pub fn start_ng(
        dir: &TestDir,
        ns: &Netns,
        args: &[&str],
        ng: SocketAddr,
    ) -> anyhow::Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pin_root = PathBuf::from(format!(
            "/sys/fs/bpf/media-relay-test-d{}-{n}",
            std::process::id()
        ));
        let runtime_dir = PathBuf::from(format!(
            "/dev/shm/media-relay-test-d{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&runtime_dir)?;
        std::fs::set_permissions(
            &runtime_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        let mut d = Self {
            child: None,
            ng,
            pin_root,
            runtime_dir,
            log: PathBuf::new(),
            netns: ns.name().to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: Vec::new(),
            logs: dir.create_dir("media-relay")?,
            runs: 0,
        };
        d.spawn()?;
        Ok(d)
    }

    /// Start the process (again) and wait for it to answer ping.
    fn spawn(&mut self) -> anyhow::Result<()> {
        self.runs += 1;
        self.log = self.logs.join(format!("run-{}.log", self.runs));
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(binary())
            .arg("run")
            .args(&self.args)
            .arg("--listen-ng")
            .arg(self.ng.to_string())
            .arg("--pin-root")
            .arg(&self.pin_root)
            .env("RUST_LOG", log_filter())
            .env("RUNTIME_DIRECTORY", &self.runtime_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log)?);
        self.child = Some(cmd.spawn().context("starting media-relay")?);
        // The client's socket must be in the namespace: enter it on a
        // thread (the namespace's loopback is where ng listens).
        let ns_file = std::fs::File::open(format!("/run/netns/{}", self.netns))?;
        let ng = self.ng;
        let socket = std::thread::scope(|s| {
            s.spawn(|| -> anyhow::Result<std::net::UdpSocket> {
                nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                Ok(std::net::UdpSocket::bind(if ng.is_ipv4() {
                    "127.0.0.1:0"
                } else {
                    "[::1]:0"
                })?)
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })?;
        // An unspecified address listens on every local one: ask on loopback.
        let target = match self.ng.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), self.ng.port())
            }
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), self.ng.port())
            }
            _ => self.ng,
        };
        let client = ng::blocking::Client::new(socket, target, "test");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("media-relay exited ({status}):\n{}", self.log_text());
            }
            if client
                .request(
                    &Value::dict().with("command", "ping"),
                    Duration::from_millis(200),
                )
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("media-relay did not answer ping:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9`: the process dies at once, leaving its pins (and the XDP
    /// program forwarding) behind.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Start it again on the same pins, with the same arguments (after
    /// [`Daemon::kill`] or [`Daemon::stop`]); returns once it answers ping,
    /// and how long that took.
    pub fn restart(&mut self) -> anyhow::Result<Duration> {
        anyhow::ensure!(self.child.is_none(), "still running: kill or stop it first");
        let t = Instant::now();
        self.spawn()?;
        Ok(t.elapsed())
    }

    /// [`Daemon::restart`] with `key=value` added to the environment of
    /// this run and the next ones (an upgrade: another program stamp).
    pub fn restart_with_env(&mut self, key: &str, value: &str) -> anyhow::Result<Duration> {
        self.set_env(key, value);
        self.restart()
    }

    /// Give the next runs the command-line argument `arg` (`present`), or
    /// not: e.g. a daemon restarted with `--no-quality-telemetry`.
    pub fn set_arg(&mut self, arg: &str, present: bool) {
        self.args.retain(|a| a != arg);
        if present {
            self.args.push(arg.to_owned());
        }
    }

    /// Whether the next run gets `arg` (see [`Daemon::set_arg`]).
    pub fn has_arg(&self, arg: &str) -> bool {
        self.args.iter().any(|a| a == arg)
    }

    /// `key=value` in the environment of the next runs (it overrides
    /// [`log_filter`]'s `RUST_LOG`, for one).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// How long the current run took to adopt the calls of the previous
    /// one, by its own account (the `took_us` of its "calls of the earlier
    /// run adopted" line); `None` when it adopted none.
    pub fn adoption_time(&self) -> Option<Duration> {
        self.adoption_field("took_us").map(Duration::from_micros)
    }

    /// How many calls the current run adopted, by its own account (the
    /// `adopted` of the same line); `None` when it adopted none.
    pub fn adopted_calls(&self) -> Option<u64> {
        self.adoption_field("adopted")
    }

    /// Where the adoption's time went, by its own account: decoding the
    /// records, claiming their ports, programming their routes.
    pub fn adoption_phases(&self) -> Option<[Duration; 3]> {
        let us = |f: &str| self.adoption_field(f).map(Duration::from_micros);
        Some([us("decode_us")?, us("claim_us")?, us("program_us")?])
    }

    /// A numeric field of the current run's "calls of the earlier run
    /// adopted" line.
    fn adoption_field(&self, field: &str) -> Option<u64> {
        let log = strip_ansi(&self.log_text());
        let line = log
            .lines()
            .find(|l| l.contains("calls of the earlier run adopted"))?;
        let key = format!(" {field}=");
        let rest = &line[line.find(&key)? + key.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// How long the restarted daemon took to bind the adopted calls'
    /// sockets in the background (its log line), waiting up to `limit`
    /// for the line.
    pub fn sockets_bound_time(&self, limit: Duration) -> Option<Duration> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let log = strip_ansi(&self.log_text());
            if let Some(line) = log
                .lines()
                .find(|l| l.contains("the adopted calls' sockets are bound"))
            {
                let rest = &line[line.find("took_ms=")? + "took_ms=".len()..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                return digits.parse().ok().map(Duration::from_millis);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log of the current (or last) run.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// If `result` failed: its error first (CI shows the start of a
    /// failing test's output), then the end of the daemon's log, which is
    /// kept whole with the test's files.
    pub fn report_failure<T>(&self, result: &anyhow::Result<T>) {
        const TAIL: usize = 200;
        let Err(e) = result else {
            return;
        };
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let skipped = lines.len().saturating_sub(TAIL);
        eprintln!("--- FAILED: {e:#}");
        eprintln!(
            "--- media-relay log ({skipped} earlier lines in {}) ---\n{}",
            self.log.display(),
            lines[skipped..].join("\n")
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Resident memory of the daemon, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Where its pins live (`--pin-root`): the maps' versioned directory
    /// and the links.
    pub fn pin_root(&self) -> &std::path::Path {
        &self.pin_root
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.pin_root.join(media_ebpf::maps::LAYOUT_VERSION)
    }

    /// Stop with SIGTERM and wait (bounded); returns the exit status.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        // SAFETY: kill(2) on our own child; `nsenter` execs the
        // binary, so the pid is media-relay's.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("media-relay ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        // The log stays with the test's directory (kept if it fails).
        let _ = std::fs::remove_dir_all(&self.pin_root);
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

/// An ng client on a socket inside a namespace: [`ng::blocking::Client`],
/// the one the operator CLI uses.
pub struct NgClient {
    client: ng::blocking::Client,
}

impl NgClient {
    pub fn new(ns: &Netns, server: SocketAddr) -> anyhow::Result<Self> {
        let socket = ns.enter(|| Ok(UdpSocket::bind("127.0.0.1:0")?))?;
        Ok(Self {
            client: ng::blocking::Client::new(socket, server, "test"),
        })
    }

    /// A client on `local` (an address of `ns`, port 0 for any): a
    /// controller at that address.
    pub fn bind(ns: &Netns, local: SocketAddr, server: SocketAddr) -> anyhow::Result<Self> {
        let socket = ns.enter(|| Ok(UdpSocket::bind(local)?))?;
        Ok(Self {
            client: ng::blocking::Client::new(socket, server, "test"),
        })
    }

    /// Send each request up to `n` times (same cookie, 2 s apart) as SIP
    /// proxies do: for tests where the relay's ng socket is flooded and a
    /// datagram may be dropped, as on a real network.
    #[must_use]
    pub fn attempts(self, n: u32) -> Self {
        Self {
            client: self.client.attempts(n),
        }
    }

    /// Send `dict` and wait (2 s) for the reply dictionary.
    pub fn request(&self, dict: &Value) -> anyhow::Result<Value> {
        self.request_timeout(dict, Duration::from_secs(2))
    }

    pub fn request_timeout(&self, dict: &Value, timeout: Duration) -> anyhow::Result<Value> {
        Ok(self.client.request(dict, timeout)?)
    }

    /// The `media plane` section of ng `statistics`, keyed by name
    /// (counters only).
    pub fn media_plane(&self) -> anyhow::Result<std::collections::HashMap<String, u64>> {
        let r = self.ok(&Value::dict().with("command", "statistics"))?;
        let Some(Value::Dict(plane)) = r.get("statistics").and_then(|s| s.get("media plane"))
        else {
            bail!("no media plane in statistics: {r:?}");
        };
        Ok(plane
            .iter()
            .filter_map(|(k, v)| {
                let n = u64::try_from(v.as_int()?).ok()?;
                Some((String::from_utf8_lossy(k).into_owned(), n))
            })
            .collect())
    }

    /// `request`, failing unless `result` is `ok` (or `pong`).
    pub fn ok(&self, dict: &Value) -> anyhow::Result<Value> {
        let r = self.request(dict)?;
        match r.get("result").and_then(Value::as_str) {
            Some("ok" | "pong") => Ok(r),
            _ => bail!("ng error: {r:?}"),
        }
    }
}

/// Run `rtpengine-ng-client <args>` inside `ns` against `server`; returns
/// its output.
pub fn ng_client(ns: &Netns, server: SocketAddr, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("timeout")
        .arg("10")
        .args(["ip", "netns", "exec", ns.name(), "rtpengine-ng-client"])
        .arg(format!("--proxy-address={}", server.ip()))
        .arg(format!("--proxy-port={}", server.port()))
        .args(args)
        .output()
        .context(
            "running rtpengine-ng-client (Debian package rtpengine-utils; `cargo xtask setup`)",
        )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "rtpengine-ng-client {args:?} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// The "New SDP" block of an `rtpengine-ng-client` offer/answer output.
pub fn new_sdp(output: &str) -> anyhow::Result<String> {
    let start = output
        .find("New SDP:")
        .context("no New SDP in rtpengine-ng-client output")?;
    let body = &output[start..];
    let open = body.find("8<-----\n").context("no SDP start marker")? + "8<-----\n".len();
    let close = body[open..].find("----->8").context("no SDP end marker")?;
    Ok(format!("{}\r\n", body[open..open + close].trim_end()))
}

/// `text` without ANSI escape sequences (the daemon's log is coloured).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ansi_is_stripped() {
        assert_eq!(
            super::strip_ansi("\x1b[2mtook_us\x1b[0m\x1b[2m=\x1b[0m1234 x"),
            "took_us=1234 x"
        );
    }
}
