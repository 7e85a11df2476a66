//! The forwarding paths the benchmarks compare, each set up on a [`Bed`]
//! for `n` calls between A (namespace `a`, 198.18.1.2) and B (namespace
//! `b`, 198.18.2.2):
//!
//! - media-relay in XDP native, XDP generic, and its userspace path
//!   (`--xdp-mode off`), calls offered and answered over ng;
//! - plain kernel IP forwarding in the relay namespace (no relay at all:
//!   A sends straight to B, the stack routes): the reference;
//! - Debian's rtpengine (userspace), the same calls over ng.
//!
//! [`setup_family`] sets the same paths up over IPv6 (A at 2001:2:0:1::2,
//! B at 2001:2:0:2::2, `c=IN IP6` SDP); [`setup`] is its IPv4 form.
//!
//! Call `i` has A at `A_V4:a_port0 + 2i` and B at `B_V4:b_port0 + 2i` (or
//! `A_V6`, `B_V6`) in its SDP. XDP native redirects into a veth are delivered only when the
//! veth's peer runs an XDP program: for [`PathKind::XdpNative`] the bed
//! needs `peer_xdp` (or an XDP sink at B). [`Call::a_to`] is where A sends to reach B (the relay's port on
//! A's side, or B itself for the kernel path), [`Call::b_to`] where B sends
//! to reach A.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context as _;
use media_user::ng::Value;

use crate::{
    Bed,
    bed::{A_V4, A_V6, B_V4, B_V6, RA_V4, RA_V6, RB_V4, RB_V6},
    daemon::{Daemon, NgClient},
    rtpengine::Rtpengine,
    testdir::TestDir,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    XdpNative,
    XdpGeneric,
    Userspace,
    Kernel,
    Rtpengine,
}

impl PathKind {
    pub const ALL: [Self; 5] = [
        Self::XdpNative,
        Self::XdpGeneric,
        Self::Userspace,
        Self::Kernel,
        Self::Rtpengine,
    ];

    /// Short name (JSON keys, `--path` arguments).
    pub const fn name(self) -> &'static str {
        match self {
            Self::XdpNative => "xdp-native",
            Self::XdpGeneric => "xdp-generic",
            Self::Userspace => "userspace",
            Self::Kernel => "kernel",
            Self::Rtpengine => "rtpengine",
        }
    }

    /// For tables.
    pub const fn label(self) -> &'static str {
        match self {
            Self::XdpNative => "media-relay XDP native",
            Self::XdpGeneric => "media-relay XDP generic",
            Self::Userspace => "media-relay userspace (--xdp-mode off)",
            Self::Kernel => "plain kernel IP forwarding",
            Self::Rtpengine => "rtpengine (userspace)",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// One call's addresses.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    /// A's address in the SDP (where A sends from).
    pub a: SocketAddr,
    /// B's address in the SDP (where B sends from).
    pub b: SocketAddr,
    /// Where A sends to reach B.
    pub a_to: SocketAddr,
    /// Where B sends to reach A.
    pub b_to: SocketAddr,
}

/// A path set up for some calls; the daemon (if any) lives as long as
/// this.
pub struct Path {
    pub kind: PathKind,
    pub calls: Vec<Call>,
    daemon: Option<Daemon>,
    rtpengine: Option<Rtpengine>,
}

impl Path {
    /// PID of the relay process (media-relay or rtpengine), if any: for
    /// CPU accounting.
    pub fn pid(&self) -> Option<u32> {
        self.daemon
            .as_ref()
            .map(Daemon::pid)
            .or_else(|| self.rtpengine.as_ref().map(Rtpengine::pid))
    }

    /// The media-relay daemon of the path, if it has one: e.g. to restart
    /// it with other options (the calls are adopted).
    pub fn daemon_mut(&mut self) -> Option<&mut Daemon> {
        self.daemon.as_mut()
    }

    /// The media-relay daemon of the path, if it has one.
    pub fn daemon(&self) -> Option<&Daemon> {
        self.daemon.as_ref()
    }

    /// media-relay's log, for error reports.
    pub fn log_text(&self) -> String {
        self.daemon
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default()
    }
}

fn sdp(addr: IpAddr, port: u16) -> String {
    let family = if addr.is_ipv6() { "IP6" } else { "IP4" };
    format!(
        "v=0\r\no=- 1 1 IN {family} {addr}\r\ns=-\r\nc=IN {family} {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    )
}

fn sdp_media(reply: &Value) -> anyhow::Result<SocketAddr> {
    let body = reply
        .get("sdp")
        .and_then(Value::as_bytes)
        .context("no sdp in the ng reply")?;
    let info = media_user::sdp::inspect(body)?;
    let m = info.media.first().context("no m= line")?;
    Ok(SocketAddr::new(m.connection.context("no c= line")?, m.port))
}

/// Offer (from A) and answer (from B) call `id`; returns (where A sends,
/// where B sends). `extra` is added to both commands (rtpengine needs the
/// direction of the interfaces).
pub fn offer_answer(
    ng: &NgClient,
    id: &str,
    a: SocketAddr,
    b: SocketAddr,
    extra: &[(&str, Value)],
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let (a_ip, b_ip) = (a.ip(), b.ip());
    // Of different families only when bridged on purpose.
    anyhow::ensure!(
        a_ip.is_ipv6() == b_ip.is_ipv6() || extra.iter().any(|(k, _)| *k == "address family"),
        "A and B in different address families"
    );
    let with = |mut d: Value| {
        for (k, v) in extra {
            d = d.with(k, v.clone());
        }
        d
    };
    let offer = ng.ok(&with(
        Value::dict()
            .with("command", "offer")
            .with("call-id", id)
            .with("from-tag", "a")
            .with("sdp", sdp(a_ip, a.port()).as_str()),
    ))?;
    let answer = ng.ok(&with(
        Value::dict()
            .with("command", "answer")
            .with("call-id", id)
            .with("from-tag", "a")
            .with("to-tag", "b")
            .with("sdp", sdp(b_ip, b.port()).as_str()),
    ))?;
    // The offer's SDP goes to B: B sends there; the answer's to A.
    Ok((sdp_media(&answer)?, sdp_media(&offer)?))
}

/// Set `kind` up on `bed` for `n` calls, over IPv4.
pub fn setup(
    dir: &TestDir,
    bed: &Bed,
    kind: PathKind,
    n: u32,
    a_port0: u16,
    b_port0: u16,
) -> anyhow::Result<Path> {
    setup_family(dir, bed, kind, n, a_port0, b_port0, false)
}

/// Set `kind` up on `bed` for `n` calls, over IPv6 if `v6` (A and B at
/// `A_V6`, `B_V6`; rtpengine gets both families on its interfaces; the
/// kernel path enables IPv6 forwarding in the relay namespace), else IPv4.
pub fn setup_family(
    dir: &TestDir,
    bed: &Bed,
    kind: PathKind,
    n: u32,
    a_port0: u16,
    b_port0: u16,
    v6: bool,
) -> anyhow::Result<Path> {
    setup_with(dir, bed, kind, n, a_port0, b_port0, v6, &[])
}

/// [`setup_family`] with `extra` arguments for the media-relay daemon (e.g.
/// `--no-quality-telemetry`, or `--port-sharing` with a `--port-min` and
/// `--port-max` of its own; ignored by the other paths).
#[expect(clippy::too_many_arguments, reason = "setup_family's, plus one")]
pub fn setup_with(
    dir: &TestDir,
    bed: &Bed,
    kind: PathKind,
    n: u32,
    a_port0: u16,
    b_port0: u16,
    v6: bool,
    extra: &[&str],
) -> anyhow::Result<Path> {
    let (a_ip, b_ip): (IpAddr, IpAddr) = if v6 {
        (A_V6.into(), B_V6.into())
    } else {
        (A_V4.into(), B_V4.into())
    };
    let party = |ip: IpAddr, port0: u16, i: u32| {
        let port = u32::from(port0) + 2 * i;
        u16::try_from(port)
            .map(|p| SocketAddr::new(ip, p))
            .context("too many calls for the port range")
    };
    let mut path = Path {
        kind,
        calls: Vec::new(),
        daemon: None,
        rtpengine: None,
    };
    match kind {
        PathKind::Kernel => {
            if v6 {
                bed.relay.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            } else {
                bed.relay.sysctl("net.ipv4.ip_forward", "1")?;
            }
            for i in 0..n {
                let (a, b) = (party(a_ip, a_port0, i)?, party(b_ip, b_port0, i)?);
                path.calls.push(Call {
                    a,
                    b,
                    a_to: b,
                    b_to: a,
                });
            }
        }
        PathKind::Rtpengine => {
            let ng_addr: SocketAddr = "127.0.0.1:2224".parse()?;
            // IPv6: both families on each logical interface (one option
            // per address, same name); the offer's SDP picks the family.
            let mut interfaces: Vec<(&str, IpAddr)> =
                vec![("carrier", RA_V4.into()), ("pbx", RB_V4.into())];
            if v6 {
                interfaces.extend([("carrier", RA_V6.into()), ("pbx", RB_V6.into())]);
            }
            let engine = Rtpengine::start(&bed.relay, &interfaces, ng_addr, (40000, 59999))?;
            let ng = NgClient::new(&bed.relay, ng_addr)?;
            let direction = Value::List(vec![Value::from("carrier"), Value::from("pbx")]);
            for i in 0..n {
                let (a, b) = (party(a_ip, a_port0, i)?, party(b_ip, b_port0, i)?);
                let (a_to, b_to) = offer_answer(
                    &ng,
                    &format!("bench-{i}"),
                    a,
                    b,
                    &[("direction", direction.clone())],
                )?;
                path.calls.push(Call { a, b, a_to, b_to });
            }
            path.rtpengine = Some(engine);
        }
        PathKind::XdpNative | PathKind::XdpGeneric | PathKind::Userspace => {
            let mode = match kind {
                PathKind::XdpNative => "native",
                PathKind::XdpGeneric => "generic",
                _ => "off",
            };
            let mut args = vec![
                "-i",
                "ra",
                "-i",
                "rb",
                "--xdp-mode",
                mode,
                "--max-flows",
                "262144",
                "--learning-window",
                "1",
            ];
            // The port range, unless `extra` names its own.
            for (flag, default) in [("--port-min", "20000"), ("--port-max", "59999")] {
                if !extra.contains(&flag) {
                    args.extend([flag, default]);
                }
            }
            args.extend_from_slice(extra);
            let daemon = Daemon::start(dir, &bed.relay, &args)?;
            let ng = NgClient::new(&bed.relay, daemon.ng)?;
            for i in 0..n {
                let (a, b) = (party(a_ip, a_port0, i)?, party(b_ip, b_port0, i)?);
                let (a_to, b_to) = offer_answer(&ng, &format!("bench-{i}"), a, b, &[])?;
                path.calls.push(Call { a, b, a_to, b_to });
            }
            path.daemon = Some(daemon);
        }
    }
    Ok(path)
}
