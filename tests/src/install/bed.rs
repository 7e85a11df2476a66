//! The install test's bed: a veth pair between a network namespace of its
//! own for the relay (a [`Netns`] of the shared test bed) and one for the
//! peers of a call, a configuration with the SIP agent on 5060 of the
//! relay's end, an ng client, and the checks on a daemon running there.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    PEER_ADDR, PEER_DEV, RELAY_ADDR, RELAY_DEV, START_TIMEOUT, check, output, sh, step,
    unit::{Unit, user_ids},
};
use crate::netns::Netns;

/// A field of `/proc/<pid>/status`.
fn status_field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_owned())
}

/// The test bed: a veth pair from the relay's namespace to the peers', a
/// configuration with a SIP agent on 5060 of the relay's namespace, an ng
/// client. Removed on drop (the namespaces by [`Netns`]), after the daemon
/// is stopped: see where `super::run` declares it.
pub struct Bed {
    /// Dropped before the namespaces: the peer end's `xdp_pass`.
    _peer_program: aya::Ebpf,
    pub ns: Netns,
    /// Where a call's parties are (`PEER_DEV`, `PEER_ADDR`).
    pub peer: Netns,
    pub ng: SocketAddr,
    client: UdpSocket,
    /// Readable by any user (the unit may name one), outside /tmp (the
    /// unit's PrivateTmp= would hide it).
    pub dir: PathBuf,
    config: PathBuf,
}

impl Drop for Bed {
    fn drop(&mut self) {
        eprintln!("    deleting network namespace {}", self.ns.name());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Bed {
    pub fn new() -> anyhow::Result<Self> {
        step("test bed: a veth pair from the relay's network namespace to the peers'");
        let ns = Netns::new("pkg")?;
        let peer = Netns::new("pkgpeer")?;
        ns.ip(&[
            "link", "add", RELAY_DEV, "type", "veth", "peer", "name", PEER_DEV,
        ])?;
        ns.ip(&["link", "set", PEER_DEV, "netns", peer.name()])?;
        for (n, dev, addr) in [(&ns, RELAY_DEV, RELAY_ADDR), (&peer, PEER_DEV, PEER_ADDR)] {
            n.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
            n.ip(&["link", "set", dev, "up"])?;
        }
        // The peers' packets leave with full checksums (the relay checks
        // them), and native XDP_TX frames reach the peer end only if a
        // program runs there (TOOLCHAIN.md).
        peer.exec("ethtool", &["-K", PEER_DEV, "tx", "off"])?;
        let peer_program = peer.enter(|| crate::bed::attach_pass(PEER_DEV))?;
        eprintln!(
            "    namespace {}: {RELAY_DEV} {RELAY_ADDR}/24 <-veth-> namespace {}: {PEER_DEV} {PEER_ADDR}/24",
            ns.name(),
            peer.name()
        );
        let socket = || {
            ns.enter(|| {
                UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                    .context("binding a UDP socket in the test namespace")
            })
        };
        let probe = socket()?;
        let ng = probe.local_addr()?;
        drop(probe);
        let client = socket()?;
        client.set_read_timeout(Some(Duration::from_millis(200)))?;

        let dir = PathBuf::from(format!("/run/mr-pkg-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        // From here on, dropping the bed removes the directory.
        let mut bed = Self {
            _peer_program: peer_program,
            ns,
            peer,
            ng,
            client,
            dir,
            config: PathBuf::new(),
        };
        fs::set_permissions(&bed.dir, fs::Permissions::from_mode(0o755))?;
        bed.config = bed.dir.join("media-relay.toml");
        fs::write(
            &bed.config,
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
        fs::set_permissions(&bed.config, fs::Permissions::from_mode(0o644))?;
        Ok(bed)
    }

    /// `media-relay run` arguments for this bed.
    pub fn daemon_args(&self, pin_root: Option<&str>) -> Vec<String> {
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

    pub fn xdp_attached(&self) -> bool {
        self.ns
            .ip(&["-d", "link", "show", "dev", RELAY_DEV])
            .is_ok_and(|l| l.contains("prog/xdp"))
    }

    /// After a stop: the program stays attached (calls survive a stop);
    /// the installed `media-relay teardown` detaches it and removes the
    /// pins under `pin_root`.
    pub fn check_stop_keeps_then_teardown(&self, pin_root: &str, when: &str) -> anyhow::Result<()> {
        check(
            &format!("XDP stays attached to {RELAY_DEV} after {when} (calls keep forwarding)"),
            self.xdp_attached(),
            String::new,
        )?;
        let out = self.in_ns(super::BIN, &["teardown", "--pin-root", pin_root]);
        check("`media-relay teardown` ends it", out.is_ok(), || {
            format!("{out:?}")
        })?;
        check(
            &format!("XDP detached from {RELAY_DEV} and the pins removed by teardown"),
            !self.xdp_attached() && !std::path::Path::new(pin_root).exists(),
            String::new,
        )
    }

    fn in_ns(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let net = format!("--net=/run/netns/{}", self.ns.name());
        let mut all = vec![net.as_str(), program];
        all.extend_from_slice(args);
        sh("nsenter", &all)
    }

    /// Wait until the daemon answers ng `ping` and XDP is on the link;
    /// `dead` says why the daemon is gone, if it is, `log` what it logged.
    pub fn wait_up(
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
    pub fn check_running(&self, unit: &Unit, pid: u32, pin_dir: &Path) -> anyhow::Result<()> {
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
            Some(g) => output("getent", &["group", g])
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
            .find(|p| {
                p.is_dir() && p.file_name() == Some(media_ebpf::maps::LAYOUT_VERSION.as_ref())
            })
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
