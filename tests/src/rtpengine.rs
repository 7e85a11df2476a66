//! Debian's rtpengine (package `rtpengine-daemon`) inside a test
//! namespace: the peer the benchmarks compare media-relay with. Userspace
//! forwarding only (`--table=-1`: no kernel module), driven over ng exactly
//! like media-relay.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use media_user::ng::Value;

use crate::{daemon::NgClient, netns::Netns};

/// A running `rtpengine`; killed (by PID) on drop.
pub struct Rtpengine {
    child: Child,
    pub ng: SocketAddr,
}

impl Rtpengine {
    /// Start rtpengine in `ns` with logical interfaces `(name, address)`,
    /// ng on `ng`, media ports `ports`; returns once it answers `ping`.
    pub fn start(
        ns: &Netns,
        interfaces: &[(&str, IpAddr)],
        ng: SocketAddr,
        ports: (u16, u16),
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), "rtpengine"]).args([
            "--config-file=none",
            "--foreground",
            "--log-stderr",
            "--log-level=4",
            "--table=-1",
            "--delete-delay=0",
        ]);
        for (name, addr) in interfaces {
            cmd.arg(format!("--interface={name}/{addr}"));
        }
        cmd.arg(format!("--listen-ng={ng}"))
            .arg(format!("--port-min={}", ports.0))
            .arg(format!("--port-max={}", ports.1))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .context("starting rtpengine (Debian package rtpengine-daemon; `cargo xtask setup`)")?;
        let mut me = Self { child, ng };
        let client = NgClient::new(ns, ng)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while client
            .request_timeout(
                &Value::dict().with("command", "ping"),
                Duration::from_millis(200),
            )
            .is_err()
        {
            anyhow::ensure!(
                me.child.try_wait()?.is_none(),
                "rtpengine exited at start (run it by hand in a namespace to see why)"
            );
            anyhow::ensure!(
                Instant::now() < deadline,
                "rtpengine did not answer ng ping on {ng} within 15 s"
            );
        }
        Ok(me)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Rtpengine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
