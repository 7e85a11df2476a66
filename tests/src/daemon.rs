//! A `media-relay run` process inside a test namespace, and ng clients:
//! our own codec over a UDP socket, and Debian's `rtpengine-ng-client`.

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use media_user::ng::Value;

use crate::netns::Netns;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The `media-relay` binary of this build (`target/<profile>/media-relay`).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let mut dir = exe.parent().expect("deps dir").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("media-relay");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --bins`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// A running daemon, stopped (SIGTERM, then SIGKILL) and its pins removed
/// on drop.
pub struct Daemon {
    child: Option<Child>,
    pub ng: SocketAddr,
    pin_root: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Start `media-relay run <args>` in `ns` with its ng socket on
    /// 127.0.0.1:2223 of that namespace and its own pin directory; returns
    /// once it answers ping.
    pub fn start(ns: &Netns, args: &[&str]) -> anyhow::Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pin_root = PathBuf::from(format!(
            "/sys/fs/bpf/media-relay-test-d{}-{n}",
            std::process::id()
        ));
        let log =
            std::env::temp_dir().join(format!("media-relay-test-{}-{n}.log", std::process::id()));
        let ng: SocketAddr = "127.0.0.1:2223".parse()?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(binary())
            .arg("run")
            .args(args)
            .arg("--listen-ng")
            .arg(ng.to_string())
            .arg("--pin-root")
            .arg(&pin_root)
            .env("RUST_LOG", "info,media_user=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting media-relay")?;
        let mut d = Self {
            child: Some(child),
            ng,
            pin_root,
            log,
        };
        let client = NgClient::new(ns, ng)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("media-relay exited ({status}):\n{}", d.log_text());
            }
            if client
                .request_timeout(
                    &Value::dict().with("command", "ping"),
                    Duration::from_millis(200),
                )
                .is_ok()
            {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("media-relay did not answer ping:\n{}", d.log_text());
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

    pub fn pin_dir(&self) -> PathBuf {
        self.pin_root.join(media_ebpf::maps::LAYOUT_VERSION)
    }

    /// Stop with SIGTERM and wait (bounded); returns the exit status.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        // SAFETY: kill(2) on our own child; `ip netns exec` execs the
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
        let _ = std::fs::remove_dir_all(&self.pin_root);
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("media-relay log kept at {}", self.log.display());
        }
    }
}

/// An ng client on a socket inside a namespace, using our own codec.
pub struct NgClient {
    socket: UdpSocket,
    server: SocketAddr,
    /// Cookies must be unique per server (it caches replies by cookie).
    prefix: String,
    cookie: AtomicU32,
}

impl NgClient {
    pub fn new(ns: &Netns, server: SocketAddr) -> anyhow::Result<Self> {
        let socket = ns.enter(|| Ok(UdpSocket::bind("127.0.0.1:0")?))?;
        Ok(Self {
            socket,
            server,
            prefix: format!(
                "{}-{}-",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ),
            cookie: AtomicU32::new(1),
        })
    }

    /// Send `dict` and wait (2 s) for the reply dictionary.
    pub fn request(&self, dict: &Value) -> anyhow::Result<Value> {
        self.request_timeout(dict, Duration::from_secs(2))
    }

    pub fn request_timeout(&self, dict: &Value, timeout: Duration) -> anyhow::Result<Value> {
        let cookie = format!(
            "{}{}",
            self.prefix,
            self.cookie.fetch_add(1, Ordering::Relaxed)
        );
        let mut msg = cookie.clone().into_bytes();
        msg.push(b' ');
        msg.extend(dict.encode().map_err(|e| anyhow::anyhow!("{e}"))?);
        self.socket.set_read_timeout(Some(timeout))?;
        self.socket.send_to(&msg, self.server)?;
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, _) = self.socket.recv_from(&mut buf)?;
            let reply = &buf[..n];
            let Some(rest) = reply
                .strip_prefix(cookie.as_bytes())
                .and_then(|r| r.strip_prefix(b" "))
            else {
                continue; // a late reply to an earlier request
            };
            return Value::decode(rest).map_err(|e| anyhow::anyhow!("reply: {e}"));
        }
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
