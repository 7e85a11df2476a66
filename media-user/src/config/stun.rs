//! `advertise` (addresses, or `"stun"`), `stun-servers` and
//! `stun-interval`: what peers are told the relay's address is.

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, de};

use super::ConfigError;
use crate::stun::StunSpec;

/// `advertise`: addresses told to peers instead of the local ones (1:1
/// NAT), or `"stun"` to discover the public address; a list may mix them
/// (`["stun", "2001:db8::10"]`: IPv4 discovered, IPv6 fixed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advertise {
    pub stun: bool,
    pub addresses: Vec<IpAddr>,
}

const EXPECTED: &str = "an IP address or \"stun\"";

impl FromStr for Advertise {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("stun") {
            return Ok(Self {
                stun: true,
                addresses: Vec::new(),
            });
        }
        s.parse::<IpAddr>()
            .map(|a| Self {
                stun: false,
                addresses: vec![a],
            })
            .map_err(|_| format!("`{s}`: expected {EXPECTED}"))
    }
}

impl Advertise {
    fn merge(&mut self, other: Self) {
        self.stun |= other.stun;
        self.addresses.extend(other.addresses);
    }

    /// The top-level `advertise` (file or `--advertise`) applied to the
    /// first interface: it replaces that interface's address of the same
    /// family, or adds STUN.
    pub(super) fn apply_to(&self, first: &mut Self) {
        first.stun |= self.stun;
        for a in &self.addresses {
            first.addresses.retain(|x| x.is_ipv4() != a.is_ipv4());
            first.addresses.push(*a);
        }
    }
}

impl fmt::Display for Advertise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
        if self.stun {
            parts.insert(0, "stun".into());
        }
        write!(f, "{}", parts.join(", "))
    }
}

impl<'de> Deserialize<'de> for Advertise {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Advertise;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{EXPECTED}, or a list of them")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Advertise, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Advertise, A::Error> {
                let mut out = Advertise::default();
                while let Some(s) = seq.next_element::<String>()? {
                    out.merge(s.parse().map_err(de::Error::custom)?);
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

/// The longest `stun-interval`, one day.
const MAX_INTERVAL: u64 = 86_400;

/// `stun-servers` entries: `ip:port` (names are not resolved: a
/// resolver answer is one more thing that can change under the relay).
pub(super) fn parse_servers(
    key: &'static str,
    entries: &[String],
) -> Result<Vec<std::net::SocketAddr>, ConfigError> {
    entries
        .iter()
        .map(|e| {
            let invalid = |expected: &str| ConfigError::Invalid {
                key,
                value: e.clone(),
                expected: expected.into(),
            };
            let a: std::net::SocketAddr = e.trim().parse().map_err(|_| {
                invalid("ip:port of a STUN server (e.g. 203.0.113.5:3478, [2001:db8::5]:3478; names are not resolved)")
            })?;
            if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
                return Err(invalid("a unicast address and a port other than 0"));
            }
            Ok(a)
        })
        .collect()
}

/// One interface's `advertise` with its STUN settings resolved: the fixed
/// addresses, and what to ask when it says `"stun"`.
pub(super) fn resolve(
    interface: &str,
    advertise: &Advertise,
    servers: Option<&[String]>,
    interval: Option<u64>,
) -> Result<(Vec<IpAddr>, Option<StunSpec>), ConfigError> {
    let interval_s = interval.unwrap_or(crate::stun::DEFAULT_INTERVAL.as_secs());
    if !(1..=MAX_INTERVAL).contains(&interval_s) {
        return Err(ConfigError::Invalid {
            key: "stun-interval",
            value: interval_s.to_string(),
            expected: format!("between 1 and {MAX_INTERVAL} seconds"),
        });
    }
    let servers = parse_servers("stun-servers", servers.unwrap_or_default())?;
    if !advertise.stun {
        return Ok((advertise.addresses.clone(), None));
    }
    if servers.is_empty() {
        return Err(ConfigError::Invalid {
            key: "stun-servers",
            value: "[]".into(),
            expected: format!(
                "at least one STUN server (ip:port) for advertise = \"stun\" on interface {interface}"
            ),
        });
    }
    if let Some(a) = advertise
        .addresses
        .iter()
        .find(|a| servers.iter().any(|s| s.is_ipv4() == a.is_ipv4()))
    {
        return Err(ConfigError::Invalid {
            key: "advertise",
            value: advertise.to_string(),
            expected: format!(
                "either a fixed {} address ({a}) or STUN servers of that family on interface {interface}, not both",
                if a.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
        });
    }
    Ok((
        advertise.addresses.clone(),
        Some(StunSpec {
            servers,
            interval: Duration::from_secs(interval_s),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{FileConfig, RunConfig};

    fn resolve(text: &str) -> Result<RunConfig, String> {
        let f = FileConfig::parse(text, Path::new("t.toml")).map_err(|e| e.to_string())?;
        RunConfig::resolve(f, FileConfig::default(), 10).map_err(|e| e.to_string())
    }

    #[test]
    fn stun_per_interface_with_global_and_own_servers() {
        let c = resolve(
            r#"
stun-servers = ["198.18.50.9:3478", "[2001:2:0:50::9]:3478"]
stun-interval = 30
[[interface]]
netdev = "eth0"
advertise = "stun"
[[interface]]
netdev = "eth1"
advertise = ["stun"]
stun-servers = ["198.18.51.9:3479"]
stun-interval = 2
[[interface]]
netdev = "eth2"
advertise = "198.18.52.1"
"#,
        )
        .unwrap();
        let s0 = c.interfaces[0].stun.clone().unwrap();
        assert_eq!(s0.servers.len(), 2);
        assert_eq!(s0.interval.as_secs(), 30);
        let s1 = c.interfaces[1].stun.clone().unwrap();
        assert_eq!(s1.servers, vec!["198.18.51.9:3479".parse().unwrap()]);
        assert_eq!(s1.interval.as_secs(), 2);
        assert_eq!(c.interfaces[2].stun, None);
        assert_eq!(
            c.interfaces[2].advertise,
            vec!["198.18.52.1".parse::<std::net::IpAddr>().unwrap()]
        );
    }

    #[test]
    fn default_interval_and_mixed_list() {
        let c = resolve(
            "stun-servers = [\"198.18.50.9:3478\"]\n[[interface]]\nnetdev = \"e\"\nadvertise = [\"stun\", \"2001:2::10\"]",
        )
        .unwrap();
        let i = &c.interfaces[0];
        assert_eq!(i.stun.as_ref().unwrap().interval.as_secs(), 60);
        assert_eq!(
            i.advertise,
            vec!["2001:2::10".parse::<std::net::IpAddr>().unwrap()]
        );
    }

    #[test]
    fn top_level_and_flag_apply_to_the_first_interface() {
        let file = FileConfig::parse(
            "advertise = \"stun\"\nstun-servers = [\"198.18.50.9:3478\"]\n[[interface]]\nnetdev = \"e\"",
            Path::new("t.toml"),
        )
        .unwrap();
        let c = RunConfig::resolve(file, FileConfig::default(), 10).unwrap();
        assert!(c.interfaces[0].stun.is_some());
        let flags = FileConfig {
            advertise: Some("stun".parse().unwrap()),
            stun_servers: Some(vec!["198.18.50.9:3478".into()]),
            stun_interval: Some(2),
            interface: vec![super::super::InterfaceEntry {
                netdev: "e".into(),
                ..Default::default()
            }],
            ..FileConfig::default()
        };
        let c = RunConfig::resolve(FileConfig::default(), flags, 10).unwrap();
        assert_eq!(c.interfaces[0].stun.as_ref().unwrap().interval.as_secs(), 2);
    }

    #[test]
    fn errors_are_clear() {
        for (text, want) in [
            (
                "[[interface]]\nnetdev = \"e\"\nadvertise = \"stun\"",
                "config key `stun-servers` = []: at least one STUN server (ip:port) for advertise = \"stun\" on interface e",
            ),
            (
                "stun-servers = [\"stun.example.net:3478\"]\n[[interface]]\nnetdev = \"e\"\nadvertise = \"stun\"",
                "config key `stun-servers` = stun.example.net:3478: ip:port of a STUN server",
            ),
            (
                "stun-servers = [\"198.18.50.9:0\"]\n[[interface]]\nnetdev = \"e\"\nadvertise = \"stun\"",
                "config key `stun-servers` = 198.18.50.9:0: a unicast address and a port other than 0",
            ),
            (
                "stun-servers = [\"198.18.50.9:3478\"]\nstun-interval = 0\n[[interface]]\nnetdev = \"e\"\nadvertise = \"stun\"",
                "config key `stun-interval` = 0: between 1 and 86400 seconds",
            ),
            (
                "stun-servers = [\"198.18.50.9:3478\"]\n[[interface]]\nnetdev = \"e\"\nadvertise = [\"stun\", \"198.18.50.1\"]",
                "config key `advertise` = stun, 198.18.50.1: either a fixed IPv4 address (198.18.50.1) or STUN servers of that family on interface e, not both",
            ),
            (
                "stun-servers = [\"198.18.50.9:3478\"]\n[[interface]]\nnetdev = \"e\"",
                "config key `stun-servers` = 198.18.50.9:3478: no interface has advertise = \"stun\"",
            ),
            (
                "[[interface]]\nnetdev = \"e\"\nadvertise = \"stunn\"",
                "config t.toml, line 3 (`advertise`): `stunn`: expected an IP address or \"stun\"",
            ),
            (
                "[[interface]]\nnetdev = \"e\"\nadvertise = 5",
                "config t.toml, line 3 (`advertise`): invalid type: integer `5`, expected an IP address or \"stun\", or a list of them",
            ),
        ] {
            let e = resolve(text)
                .err()
                .unwrap_or_else(|| panic!("accepted: {text}"));
            assert!(e.starts_with(want), "{text:?}\n  got  {e}\n  want {want}…");
        }
    }
}
