//! The SIP agent's configuration: the `[sip]` section of media-relay's
//! TOML file (every key also a flag of `media-relay run`).
//!
//! Two sides: trunks (carriers) and the PBX. Requests from a trunk go to
//! the PBX; requests from the PBX go to the trunk a rule selects. Anyone
//! else is refused.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;
use thiserror::Error;

use crate::proxy::{MIN_SECRET, RouteKey};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SipConfigError {
    #[error("config key `sip.{key}` = {value}: {expected}")]
    Invalid {
        key: String,
        value: String,
        expected: String,
    },
}

fn invalid(
    key: impl Into<String>,
    value: impl ToString,
    expected: impl Into<String>,
) -> SipConfigError {
    SipConfigError::Invalid {
        key: key.into(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// One `[[sip.trunk]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Trunk {
    pub name: String,
    /// Where requests from this trunk come from: `ip`, `ip/prefix`, or
    /// `ip:port` (then only that port).
    pub sources: Vec<String>,
    /// Where calls to this trunk go (IP literal and port).
    pub target: SocketAddr,
    /// Request-URI user prefixes routed to this trunk (e.g. "+49").
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Request-URI hosts routed to this trunk.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The trunk for PBX calls no rule matches.
    #[serde(default)]
    pub default: bool,
}

/// The `[sip]` section.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SipFile {
    /// Address the trunks send to (and the agent sends to trunks from).
    pub trunk_listen: Option<SocketAddr>,
    /// Address the PBX sends to (and the agent sends to the PBX from);
    /// defaults to `trunk-listen`.
    pub pbx_listen: Option<SocketAddr>,
    /// The address the agent writes into what it sends towards the trunks
    /// (Record-Route, Via sent-by) instead of `trunk-listen`: `"ip"` (the
    /// listen port), `"ip:port"`, or `"media"` (the public address in
    /// effect of the media interface, e.g. discovered with STUN; it
    /// follows that address when it changes). Kamailio's `advertise` on
    /// `listen`.
    pub trunk_advertise: Option<String>,
    /// The same towards the PBX (instead of `pbx-listen`).
    pub pbx_advertise: Option<String>,
    /// "udp", "tcp" (default both).
    pub transports: Option<Vec<String>>,
    /// Where calls from trunks go.
    pub pbx: Option<SocketAddr>,
    /// Where requests from the PBX come from (default: the `pbx` address).
    pub pbx_sources: Option<Vec<String>>,
    #[serde(default)]
    pub trunk: Vec<Trunk>,
    /// Concurrent calls at most (503 beyond).
    pub max_calls: Option<u32>,
    /// New INVITEs per second per source address (503 beyond).
    pub invite_rate: Option<u32>,
    /// ng media nodes (default: the local media daemon).
    pub media: Option<Vec<SocketAddr>>,
    /// Interface names sent in ng `direction` for the trunk and PBX sides
    /// (e.g. the media daemon's interface names); none by default.
    pub media_trunk_interface: Option<String>,
    pub media_pbx_interface: Option<String>,
    /// Milliseconds to wait for an ng reply (retransmitted twice).
    pub ng_timeout_ms: Option<u64>,
    /// Seconds between polls of the media nodes for timed-out calls.
    pub media_poll: Option<u64>,
    /// Largest SIP message accepted, bytes.
    pub max_message: Option<usize>,
    /// The secret that signs the agent's Record-Route entries (at least 32
    /// characters, e.g. `openssl rand -hex 32`). Without it the agent
    /// keeps a random one in its runtime directory (`$RUNTIME_DIRECTORY`
    /// or /run/media-relay, memory-backed), or in memory only.
    pub record_route_secret: Option<String>,
    /// Refusals (403 to unknown sources, 481/403 to in-dialog requests it
    /// will not forward, 400 to malformed requests) answered per second
    /// per source address; beyond
    /// that they are dropped unanswered (counted).
    pub refusal_rate: Option<u32>,
    /// SIP over TCP: connections at most (accepted and opened), and
    /// accepted ones per source address; beyond, new ones are closed.
    pub tcp_max_connections: Option<usize>,
    pub tcp_max_per_source: Option<usize>,
    /// Seconds without a byte either way (CRLF keepalives count) before a
    /// connection is closed.
    pub tcp_idle_timeout: Option<u64>,
    /// Seconds a connection may take to deliver one message once it has
    /// started (slow senders holding partial messages are closed).
    pub tcp_message_timeout: Option<u64>,
    /// Bytes queued for one connection at most; a peer that does not read
    /// its responses is disconnected beyond that.
    pub tcp_write_queue: Option<usize>,
}

/// A source match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub net: IpNet,
    pub port: Option<u16>,
}

impl Source {
    pub fn parse(key: &str, s: &str) -> Result<Self, SipConfigError> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Self {
                net: IpNet::from(sa.ip()),
                port: Some(sa.port()),
            });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self {
                net: IpNet::from(ip),
                port: None,
            });
        }
        s.parse::<IpNet>()
            .map(|net| Self { net, port: None })
            .map_err(|_| invalid(key, s, "an IP address, ip/prefix or ip:port"))
    }

    pub fn matches(&self, addr: SocketAddr) -> bool {
        self.net.contains(&addr.ip().to_canonical()) && self.port.is_none_or(|p| p == addr.port())
    }
}

/// One side of the agent: towards the trunks or towards the PBX.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Facing {
    Trunk,
    Pbx,
}

impl Facing {
    pub const fn key(self) -> &'static str {
        match self {
            Facing::Trunk => "trunk-advertise",
            Facing::Pbx => "pbx-advertise",
        }
    }
}

/// `trunk-advertise` / `pbx-advertise`: what the agent writes as its own
/// address towards a side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advertise {
    /// This address (a bare IP takes the listen port).
    Fixed(SocketAddr),
    /// The media interface's public address in effect (the listen port),
    /// fed to the agent by the media daemon of the same process.
    Media,
}

impl Advertise {
    fn parse(key: &str, s: &str, listen: SocketAddr) -> Result<Self, SipConfigError> {
        if s.eq_ignore_ascii_case("media") {
            return Ok(Self::Media);
        }
        let addr = s
            .parse::<SocketAddr>()
            .or_else(|_| {
                s.parse::<IpAddr>()
                    .map(|ip| SocketAddr::new(ip, listen.port()))
            })
            .map_err(|_| invalid(key, s, "an IP address, ip:port, or \"media\""))?;
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return Err(invalid(
                key,
                s,
                "an address peers can send to (not 0.0.0.0/:: or port 0)",
            ));
        }
        Ok(Self::Fixed(addr))
    }
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct SipConfig {
    pub trunk_listen: SocketAddr,
    pub pbx_listen: SocketAddr,
    /// `trunk-advertise`, `pbx-advertise` (`None`: the listen address).
    pub trunk_advertise: Option<Advertise>,
    pub pbx_advertise: Option<Advertise>,
    pub udp: bool,
    pub tcp: bool,
    pub pbx: SocketAddr,
    pub pbx_sources: Vec<Source>,
    pub trunks: Vec<(Trunk, Vec<Source>)>,
    pub max_calls: u32,
    pub invite_rate: u32,
    pub media: Vec<SocketAddr>,
    pub media_trunk_interface: Option<String>,
    pub media_pbx_interface: Option<String>,
    pub ng_timeout: Duration,
    pub media_poll: Duration,
    pub max_message: usize,
    /// `record-route-secret`, checked.
    pub record_route_secret: Option<RouteKey>,
    pub refusal_rate: u32,
    pub tcp_limits: TcpLimits,
}

/// Limits on SIP over TCP (RFC 3261 §18 leaves connection management to
/// the implementation; these keep descriptors and memory bounded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpLimits {
    pub max_connections: usize,
    pub max_per_source: usize,
    pub idle_timeout: Duration,
    pub message_timeout: Duration,
    pub write_queue: usize,
}

impl SipConfig {
    /// Whether `remote` is a configured trunk or PBX source (anyone else
    /// is refused, over TCP already at the connection).
    pub fn knows_source(&self, remote: SocketAddr) -> bool {
        self.pbx_sources.iter().any(|s| s.matches(remote))
            || self
                .trunks
                .iter()
                .any(|(_, sources)| sources.iter().any(|s| s.matches(remote)))
    }

    /// `trunk-advertise` or `pbx-advertise`.
    pub fn advertise(&self, facing: Facing) -> Option<Advertise> {
        match facing {
            Facing::Trunk => self.trunk_advertise,
            Facing::Pbx => self.pbx_advertise,
        }
    }

    /// The listen address of a side.
    pub fn listen(&self, facing: Facing) -> SocketAddr {
        match facing {
            Facing::Trunk => self.trunk_listen,
            Facing::Pbx => self.pbx_listen,
        }
    }

    pub fn resolve(f: SipFile) -> Result<Self, SipConfigError> {
        let trunk_listen = f.trunk_listen.ok_or_else(|| {
            invalid(
                "trunk-listen",
                "(missing)",
                "the address trunks send SIP to, e.g. 203.0.113.10:5060",
            )
        })?;
        let pbx_listen = f.pbx_listen.unwrap_or(trunk_listen);
        let trunk_advertise = f
            .trunk_advertise
            .as_deref()
            .map(|s| Advertise::parse("trunk-advertise", s, trunk_listen))
            .transpose()?;
        let pbx_advertise = f
            .pbx_advertise
            .as_deref()
            .map(|s| Advertise::parse("pbx-advertise", s, pbx_listen))
            .transpose()?;
        let pbx = f.pbx.ok_or_else(|| {
            invalid(
                "pbx",
                "(missing)",
                "the PBX's SIP address, e.g. 10.0.0.20:5060",
            )
        })?;
        let transports = f
            .transports
            .unwrap_or_else(|| vec!["udp".into(), "tcp".into()]);
        let (mut udp, mut tcp) = (false, false);
        for t in &transports {
            match t.to_ascii_lowercase().as_str() {
                "udp" => udp = true,
                "tcp" => tcp = true,
                other => return Err(invalid("transports", other, "\"udp\" and/or \"tcp\"")),
            }
        }
        if !udp && !tcp {
            return Err(invalid(
                "transports",
                "[]",
                "at least one of \"udp\", \"tcp\"",
            ));
        }
        let pbx_sources = match f.pbx_sources {
            Some(list) => list
                .iter()
                .map(|s| Source::parse("pbx-sources", s))
                .collect::<Result<_, _>>()?,
            None => vec![Source {
                net: IpNet::from(pbx.ip()),
                port: None,
            }],
        };
        let mut trunks = Vec::new();
        let mut defaults = 0;
        for t in f.trunk {
            if t.name.is_empty() {
                return Err(invalid("trunk.name", "\"\"", "a name for the trunk"));
            }
            if t.sources.is_empty() {
                return Err(invalid(
                    format!("trunk.{}.sources", t.name),
                    "[]",
                    "at least one source",
                ));
            }
            let sources = t
                .sources
                .iter()
                .map(|s| Source::parse(&format!("trunk.{}.sources", t.name), s))
                .collect::<Result<Vec<_>, _>>()?;
            defaults += usize::from(t.default);
            trunks.push((t, sources));
        }
        if trunks.is_empty() {
            return Err(invalid("trunk", "(none)", "at least one [[sip.trunk]]"));
        }
        if defaults > 1 {
            return Err(invalid(
                "trunk.default",
                defaults,
                "at most one default trunk",
            ));
        }
        let max_calls = f.max_calls.unwrap_or(10_000);
        if max_calls == 0 {
            return Err(invalid("max-calls", 0, "at least 1"));
        }
        let invite_rate = f.invite_rate.unwrap_or(1000);
        if invite_rate == 0 {
            return Err(invalid("invite-rate", 0, "at least 1 INVITE per second"));
        }
        let media = f
            .media
            .unwrap_or_else(|| vec!["127.0.0.1:2223".parse().expect("valid default")]);
        if media.is_empty() {
            return Err(invalid("media", "[]", "at least one ng media node"));
        }
        let record_route_secret = match f.record_route_secret {
            Some(text) => Some(RouteKey::new(text.as_bytes()).ok_or_else(|| {
                invalid(
                    "record-route-secret",
                    format!("({} characters)", text.len()),
                    format!(
                        "at least {MIN_SECRET} characters (e.g. the output of `openssl rand -hex 32`)"
                    ),
                )
            })?),
            None => None,
        };
        let refusal_rate = f.refusal_rate.unwrap_or(20);
        if refusal_rate == 0 {
            return Err(invalid(
                "refusal-rate",
                0,
                "at least 1 refusal per second per source",
            ));
        }
        let max_message = f.max_message.unwrap_or(crate::message::MAX_MESSAGE);
        let at_least_1 = |key: &str, v: Option<u64>, default: u64, what: &str| match v {
            Some(0) => Err(invalid(key, 0, format!("at least 1 {what}"))),
            v => Ok(v.unwrap_or(default)),
        };
        let tcp_limits = TcpLimits {
            max_connections: at_least_1(
                "tcp-max-connections",
                f.tcp_max_connections.map(|v| v as u64),
                1024,
                "connection",
            )? as usize,
            max_per_source: at_least_1(
                "tcp-max-per-source",
                f.tcp_max_per_source.map(|v| v as u64),
                32,
                "connection",
            )? as usize,
            idle_timeout: Duration::from_secs(at_least_1(
                "tcp-idle-timeout",
                f.tcp_idle_timeout,
                120,
                "second",
            )?),
            message_timeout: Duration::from_secs(at_least_1(
                "tcp-message-timeout",
                f.tcp_message_timeout,
                10,
                "second",
            )?),
            write_queue: match f.tcp_write_queue {
                Some(q) if q < max_message => {
                    return Err(invalid(
                        "tcp-write-queue",
                        q,
                        format!("at least max-message ({max_message} bytes)"),
                    ));
                }
                Some(q) => q,
                None => (4 * max_message).max(256 * 1024),
            },
        };
        Ok(Self {
            trunk_listen,
            pbx_listen,
            trunk_advertise,
            pbx_advertise,
            udp,
            tcp,
            pbx,
            pbx_sources,
            trunks,
            max_calls,
            invite_rate,
            media,
            media_trunk_interface: f.media_trunk_interface,
            media_pbx_interface: f.media_pbx_interface,
            ng_timeout: Duration::from_millis(f.ng_timeout_ms.unwrap_or(500).max(10)),
            media_poll: Duration::from_secs(f.media_poll.unwrap_or(5).max(1)),
            max_message,
            record_route_secret,
            refusal_rate,
            tcp_limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SipConfig, String> {
        let f: SipFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        SipConfig::resolve(f).map_err(|e| e.to_string())
    }

    #[test]
    fn full_and_defaults() {
        let c = parse(
            r#"
trunk-listen = "198.18.1.1:5060"
pbx-listen = "198.18.2.1:5060"
pbx = "198.18.2.2:5060"
max-calls = 5

[[trunk]]
name = "carrier"
sources = ["198.18.1.0/24", "203.0.113.7:5060"]
target = "198.18.1.2:5060"
prefixes = ["+49"]
default = true
"#,
        )
        .unwrap();
        assert!(c.udp && c.tcp);
        assert_eq!(c.max_calls, 5);
        assert_eq!(
            c.media,
            vec!["127.0.0.1:2223".parse::<SocketAddr>().unwrap()]
        );
        let (_, src) = &c.trunks[0];
        assert!(src[0].matches("198.18.1.99:1234".parse().unwrap()));
        assert!(src[1].matches("203.0.113.7:5060".parse().unwrap()));
        assert!(!src[1].matches("203.0.113.7:5061".parse().unwrap()));
        assert!(c.pbx_sources[0].matches("198.18.2.2:9999".parse().unwrap()));
        assert_eq!(
            c.tcp_limits,
            TcpLimits {
                max_connections: 1024,
                max_per_source: 32,
                idle_timeout: Duration::from_secs(120),
                message_timeout: Duration::from_secs(10),
                write_queue: 262_144,
            }
        );
        assert_eq!(c.refusal_rate, 20);
        assert!(c.record_route_secret.is_none());
        assert!(c.knows_source("198.18.2.2:1".parse().unwrap()));
        assert!(!c.knows_source("198.18.3.2:5060".parse().unwrap()));
        assert_eq!((c.trunk_advertise, c.pbx_advertise), (None, None));
    }

    #[test]
    fn advertise_forms() {
        let base = "trunk-listen = \"198.18.1.1:5060\"\npbx-listen = \"198.18.2.1:5070\"\npbx = \"198.18.2.2:5060\"\n[[trunk]]\nname = \"t\"\nsources = [\"198.18.1.2\"]\ntarget = \"198.18.1.2:5060\"\n";
        let with = |extra: &str| parse(&format!("{extra}\n{base}"));
        let c =
            with("trunk-advertise = \"198.19.0.7\"\npbx-advertise = \"[2001:2::7]:5080\"").unwrap();
        assert_eq!(
            c.trunk_advertise,
            Some(Advertise::Fixed("198.19.0.7:5060".parse().unwrap()))
        );
        assert_eq!(
            c.advertise(Facing::Pbx),
            Some(Advertise::Fixed("[2001:2::7]:5080".parse().unwrap()))
        );
        let c = with("trunk-advertise = \"media\"\npbx-advertise = \"198.19.0.8\"").unwrap();
        assert_eq!(c.trunk_advertise, Some(Advertise::Media));
        assert_eq!(
            c.pbx_advertise,
            Some(Advertise::Fixed("198.19.0.8:5070".parse().unwrap())),
            "a bare IP takes the side's listen port"
        );
        assert_eq!(
            with("trunk-advertise = \"stun\"").unwrap_err(),
            "config key `sip.trunk-advertise` = stun: an IP address, ip:port, or \"media\""
        );
        assert_eq!(
            with("pbx-advertise = \"0.0.0.0\"").unwrap_err(),
            "config key `sip.pbx-advertise` = 0.0.0.0: an address peers can send to (not 0.0.0.0/:: or port 0)"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let base = "trunk-listen = \"198.18.1.1:5060\"\npbx = \"198.18.2.2:5060\"\n";
        for (extra, want) in [
            (
                "",
                "config key `sip.trunk` = (none): at least one [[sip.trunk]]",
            ),
            (
                "[[trunk]]\nname = \"t\"\nsources = [\"nope\"]\ntarget = \"198.18.1.2:5060\"",
                "config key `sip.trunk.t.sources` = nope: an IP address, ip/prefix or ip:port",
            ),
            (
                "transports = [\"sctp\"]\n[[trunk]]\nname = \"t\"\nsources = [\"198.18.1.2\"]\ntarget = \"198.18.1.2:5060\"",
                "config key `sip.transports` = sctp: \"udp\" and/or \"tcp\"",
            ),
            (
                "max-calls = 0\n[[trunk]]\nname = \"t\"\nsources = [\"198.18.1.2\"]\ntarget = \"198.18.1.2:5060\"",
                "config key `sip.max-calls` = 0: at least 1",
            ),
            (
                "tcp-idle-timeout = 0\n[[trunk]]\nname = \"t\"\nsources = [\"198.18.1.2\"]\ntarget = \"198.18.1.2:5060\"",
                "config key `sip.tcp-idle-timeout` = 0: at least 1 second",
            ),
            (
                "tcp-write-queue = 1000\n[[trunk]]\nname = \"t\"\nsources = [\"198.18.1.2\"]\ntarget = \"198.18.1.2:5060\"",
                "config key `sip.tcp-write-queue` = 1000: at least max-message (65535 bytes)",
            ),
            (
                "record-route-secret = \"short\"\n[[trunk]]\nname = \"t\"\nsources = [\"198.18.1.2\"]\ntarget = \"198.18.1.2:5060\"",
                "config key `sip.record-route-secret` = (5 characters): at least 32 characters (e.g. the output of `openssl rand -hex 32`)",
            ),
        ] {
            assert_eq!(parse(&format!("{base}{extra}")).unwrap_err(), want);
        }
        assert_eq!(
            parse("pbx = \"198.18.2.2:5060\"").unwrap_err(),
            "config key `sip.trunk-listen` = (missing): the address trunks send SIP to, e.g. 203.0.113.10:5060"
        );
    }
}
