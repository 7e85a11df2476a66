//! The relay's logical interfaces: a name, the netdev it lives on, its
//! local addresses, and the addresses advertised to peers (which differ
//! behind 1:1 NAT, e.g. a cloud VIP/PIP pair).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum InterfaceError {
    #[error(
        "interface {netdev:?} has no usable IPv4 or IPv6 address; see `ip addr show dev {netdev}`"
    )]
    NoAddress { netdev: String },
    #[error(
        "interface {netdev:?}: advertise = \"stun\" but no STUN server of a family the interface has an address of (its addresses: {have})"
    )]
    NoStunFamily { netdev: String, have: String },
    #[error("unknown interface {netdev:?}: see `ip link` for the interfaces of this host")]
    Unknown { netdev: String },
    #[error("listing addresses: {0}")]
    Io(#[from] std::io::Error),
}

/// What configuration says about an interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// Logical name used by ng `direction` / `from-interface` (defaults to
    /// the netdev name).
    pub name: Option<String>,
    pub netdev: String,
    /// Addresses to advertise in SDP instead of the local ones.
    pub advertise: Vec<IpAddr>,
    /// Local addresses to use (default: the first global one of each
    /// family on the netdev).
    pub addresses: Vec<IpAddr>,
    /// `advertise = "stun"`: discover the public address with these
    /// servers (for the families they are of).
    pub stun: Option<crate::stun::StunSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub netdev: String,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub advertise_v4: Option<Ipv4Addr>,
    pub advertise_v6: Option<Ipv6Addr>,
    /// Discovered public addresses (`advertise = "stun"`), which take the
    /// place of `advertise_v4`/`advertise_v6` for their family.
    pub public_v4: Option<crate::stun::Public>,
    pub public_v6: Option<crate::stun::Public>,
}

impl Interface {
    /// Interface `name` (its netdev too) with these addresses, told to
    /// peers as they are (no `advertise`, no discovery).
    pub fn plain(name: &str, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Self {
        Self {
            name: name.to_owned(),
            netdev: name.to_owned(),
            v4,
            v6,
            advertise_v4: None,
            advertise_v6: None,
            public_v4: None,
            public_v6: None,
        }
    }

    /// The local address of the family (`v6`), if any.
    pub fn local(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.v6.map(IpAddr::V6)
        } else {
            self.v4.map(IpAddr::V4)
        }
    }

    /// The address peers are told, for a socket on `local`; `None` while
    /// a public address to be discovered (STUN) is not known yet.
    pub fn advertised(&self, local: IpAddr) -> Option<IpAddr> {
        match local {
            IpAddr::V4(_) => match &self.public_v4 {
                Some(p) => p.current(),
                None => Some(self.advertise_v4.map_or(local, IpAddr::V4)),
            },
            IpAddr::V6(_) => match &self.public_v6 {
                Some(p) => p.current(),
                None => Some(self.advertise_v6.map_or(local, IpAddr::V6)),
            },
        }
    }

    /// The discoveries of this interface (STUN), if any.
    pub fn publics(&self) -> impl Iterator<Item = &crate::stun::Public> {
        self.public_v4.iter().chain(self.public_v6.iter())
    }

    /// A public address of this interface is still to be discovered.
    pub fn public_pending(&self) -> bool {
        self.publics().any(|p| p.current().is_none())
    }

    pub fn has(&self, ip: IpAddr) -> bool {
        Some(ip) == self.local(ip.is_ipv6())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interfaces(pub Vec<Interface>);

fn usable_v6(a: &Ipv6Addr) -> bool {
    !a.is_loopback() && !a.is_unicast_link_local() && !a.is_multicast() && !a.is_unspecified()
}

impl Interfaces {
    /// Resolve specs against the host's addresses.
    pub fn discover(specs: &[InterfaceSpec]) -> Result<Self, InterfaceError> {
        let addrs: Vec<(String, IpAddr)> = nix::ifaddrs::getifaddrs()
            .map_err(std::io::Error::from)?
            .filter_map(|ifa| {
                let sa = ifa.address?;
                let ip = if let Some(v4) = sa.as_sockaddr_in() {
                    IpAddr::V4(v4.ip())
                } else {
                    IpAddr::V6(sa.as_sockaddr_in6()?.ip())
                };
                Some((ifa.interface_name, ip))
            })
            .collect();
        let mut out = Vec::new();
        for spec in specs {
            let known = addrs.iter().any(|(n, _)| *n == spec.netdev)
                || crate::host::ifindex(&spec.netdev).is_ok();
            if !known {
                return Err(InterfaceError::Unknown {
                    netdev: spec.netdev.clone(),
                });
            }
            let mine = addrs
                .iter()
                .filter(|(n, _)| *n == spec.netdev)
                .map(|(_, ip)| *ip);
            let pick_v4 = spec
                .addresses
                .iter()
                .find_map(|a| match a {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
                .or_else(|| {
                    mine.clone().find_map(|a| match a {
                        IpAddr::V4(v4) if !v4.is_loopback() || spec.netdev == "lo" => Some(v4),
                        _ => None,
                    })
                });
            let pick_v6 = spec
                .addresses
                .iter()
                .find_map(|a| match a {
                    IpAddr::V6(v6) => Some(*v6),
                    IpAddr::V4(_) => None,
                })
                .or_else(|| {
                    mine.clone().find_map(|a| match a {
                        IpAddr::V6(v6) if usable_v6(&v6) => Some(v6),
                        _ => None,
                    })
                });
            if pick_v4.is_none() && pick_v6.is_none() {
                return Err(InterfaceError::NoAddress {
                    netdev: spec.netdev.clone(),
                });
            }
            let name = spec.name.clone().unwrap_or_else(|| spec.netdev.clone());
            let public =
                |local: Option<IpAddr>| {
                    let spec = spec.stun.as_ref()?;
                    let local = local?;
                    spec.servers
                        .iter()
                        .any(|s| s.is_ipv4() == local.is_ipv4())
                        .then(|| {
                            crate::stun::Public(std::sync::Arc::new(
                                crate::stun::PublicAddress::new(name.clone(), local, spec),
                            ))
                        })
                };
            let public_v4 = public(pick_v4.map(IpAddr::V4));
            let public_v6 = public(pick_v6.map(IpAddr::V6));
            if spec.stun.is_some() && public_v4.is_none() && public_v6.is_none() {
                return Err(InterfaceError::NoStunFamily {
                    netdev: spec.netdev.clone(),
                    have: [pick_v4.map(IpAddr::V4), pick_v6.map(IpAddr::V6)]
                        .iter()
                        .flatten()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            out.push(Interface {
                name,
                netdev: spec.netdev.clone(),
                v4: pick_v4,
                v6: pick_v6,
                advertise_v4: spec.advertise.iter().find_map(|a| match a {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                }),
                advertise_v6: spec.advertise.iter().find_map(|a| match a {
                    IpAddr::V6(v6) => Some(*v6),
                    IpAddr::V4(_) => None,
                }),
                public_v4,
                public_v6,
            });
        }
        Ok(Self(out))
    }

    /// By logical name or netdev name.
    pub fn by_name(&self, name: &str) -> Option<usize> {
        self.0
            .iter()
            .position(|i| i.name == name)
            .or_else(|| self.0.iter().position(|i| i.netdev == name))
    }

    /// The interface owning local address `ip`.
    pub fn by_local(&self, ip: IpAddr) -> Option<usize> {
        self.0.iter().position(|i| i.has(ip))
    }

    pub fn get(&self, i: usize) -> &Interface {
        &self.0[i]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every public address discovery of every interface.
    pub fn publics(&self) -> Vec<crate::stun::Public> {
        self.0.iter().flat_map(|i| i.publics().cloned()).collect()
    }
}

/// What the SIP agent of the same process follows for
/// `trunk-advertise = "media"` / `pbx-advertise = "media"`: the public
/// address in effect of the media interface of that side — the one named
/// by `media-trunk-interface` / `media-pbx-interface`, else the one owning
/// the side's listen address, else the only one — of the listen address's
/// family. A STUN-discovered address is followed as it changes; otherwise
/// the interface's fixed `advertise` (or its own address) holds.
pub fn sip_public_feeds(
    interfaces: &Interfaces,
    sip: &signaling::config::SipConfig,
) -> Result<signaling::runtime::PublicFeeds, String> {
    use signaling::config::{Advertise, Facing};
    let mut feeds = signaling::runtime::PublicFeeds::default();
    for facing in [Facing::Trunk, Facing::Pbx] {
        if sip.advertise(facing) != Some(Advertise::Media) {
            continue;
        }
        let listen = sip.listen(facing);
        let named = match facing {
            Facing::Trunk => sip.media_trunk_interface.as_deref(),
            Facing::Pbx => sip.media_pbx_interface.as_deref(),
        };
        let index = match named {
            Some(name) => interfaces.by_name(name).ok_or_else(|| {
                format!(
                    "sip.{} = \"media\": no media interface named {name:?}",
                    facing.key()
                )
            })?,
            None => interfaces
                .by_local(listen.ip())
                .or((interfaces.len() == 1).then_some(0))
                .ok_or_else(|| {
                    format!(
                        "sip.{} = \"media\": which media interface? name it in sip.media-{}-interface",
                        facing.key(),
                        match facing {
                            Facing::Trunk => "trunk",
                            Facing::Pbx => "pbx",
                        }
                    )
                })?,
        };
        let iface = interfaces.get(index);
        let v6 = listen.is_ipv6();
        let discovered = if v6 {
            &iface.public_v6
        } else {
            &iface.public_v4
        };
        let feed = match discovered {
            Some(public) => public.subscribe(),
            None => {
                let local = iface.local(v6).ok_or_else(|| {
                    format!(
                        "sip.{} = \"media\": media interface {} has no {} address",
                        facing.key(),
                        iface.name,
                        if v6 { "IPv6" } else { "IPv4" }
                    )
                })?;
                // Fixed: the sender goes, the value stays.
                tokio::sync::watch::channel(iface.advertised(local)).1
            }
        };
        match facing {
            Facing::Trunk => feeds.trunk = Some(feed),
            Facing::Pbx => feeds.pbx = Some(feed),
        }
    }
    Ok(feeds)
}

#[cfg(test)]
mod sip_feeds {
    use super::*;
    use crate::stun::{Answer, Public, PublicAddress, StunSpec};

    fn sip(extra: &str) -> signaling::config::SipConfig {
        let f: signaling::config::SipFile = toml::from_str(&format!(
            "trunk-listen = \"10.0.0.5:5060\"\npbx-listen = \"10.0.1.5:5060\"\npbx = \"10.0.1.9:5060\"\n{extra}\n[[trunk]]\nname = \"t\"\nsources = [\"198.18.1.2\"]\ntarget = \"198.18.1.2:5060\"\n"
        ))
        .unwrap();
        signaling::config::SipConfig::resolve(f).unwrap()
    }

    fn interfaces() -> (Interfaces, Public) {
        let stun = StunSpec {
            servers: vec!["198.18.50.9:3478".parse().unwrap()],
            interval: std::time::Duration::from_secs(60),
        };
        let public = Public(std::sync::Arc::new(PublicAddress::new(
            "public".into(),
            "10.0.0.5".parse().unwrap(),
            &stun,
        )));
        let iface =
            |name: &str, v4: &str, public: Option<Public>, advertise: Option<&str>| Interface {
                name: name.into(),
                netdev: name.into(),
                v4: Some(v4.parse().unwrap()),
                v6: None,
                advertise_v4: advertise.map(|a| a.parse().unwrap()),
                advertise_v6: None,
                public_v4: public,
                public_v6: None,
            };
        (
            Interfaces(vec![
                iface("public", "10.0.0.5", Some(public.clone()), None),
                iface("private", "10.0.1.5", None, Some("198.19.0.9")),
            ]),
            public,
        )
    }

    #[test]
    fn the_trunk_side_follows_its_interfaces_discovery() {
        let (ifs, public) = interfaces();
        let feeds = sip_public_feeds(&ifs, &sip("trunk-advertise = \"media\"")).unwrap();
        assert!(feeds.pbx.is_none());
        let mut rx = feeds.trunk.expect("the interface owning trunk-listen");
        assert_eq!(*rx.borrow_and_update(), None);
        public.apply(
            &[(
                "198.18.50.9:3478".parse().unwrap(),
                Answer::Mapped("198.19.0.7:5060".parse().unwrap()),
            )],
            std::time::SystemTime::now(),
        );
        assert_eq!(*rx.borrow_and_update(), Some("198.19.0.7".parse().unwrap()));
    }

    #[test]
    fn a_fixed_advertise_holds_and_an_unknown_interface_is_an_error() {
        let (ifs, _) = interfaces();
        let feeds = sip_public_feeds(
            &ifs,
            &sip("pbx-advertise = \"media\"\nmedia-pbx-interface = \"private\""),
        )
        .unwrap();
        assert_eq!(
            *feeds.pbx.unwrap().borrow(),
            Some("198.19.0.9".parse().unwrap())
        );
        let e = sip_public_feeds(
            &ifs,
            &sip("trunk-advertise = \"media\"\nmedia-trunk-interface = \"eth9\""),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "sip.trunk-advertise = \"media\": no media interface named \"eth9\""
        );
    }
}
