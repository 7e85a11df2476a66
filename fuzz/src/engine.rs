//! The session engine over an in-memory media plane, as its unit tests
//! drive it: no sockets, no XDP, time moved by hand. The media plane
//! checks the engine keeps its side of the [`Backend`] contract (no port
//! bound twice, no route on or out of an unbound port, only bound pairs
//! closed), so a broken contract is a crash, not a silent leak.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use media_user::{
    interfaces::{Interface, Interfaces},
    session::{Backend, Counters, Engine, Now, PortAllocator, Route, SessionConfig},
};

/// The two interfaces, named as the ng fixtures' `direction` names them.
pub const PRIV: &str = "198.18.1.1";
pub const PUB: &str = "198.18.2.1";
pub const PRIV_V6: &str = "2001:2::1";

/// The port range: small, so that exhaustion is reachable.
pub const PORT_MIN: u16 = 30000;
pub const PORT_MAX: u16 = 30063;

/// The media plane as the engine sees it, in memory.
#[derive(Default)]
pub struct Plane {
    pub open: HashSet<SocketAddr>,
    pub routes: HashMap<SocketAddr, Route>,
    pub counters: HashMap<SocketAddr, Counters>,
    /// Packets the engine forwarded itself (while latching).
    pub forwarded: usize,
    /// Call records kept (`persist`), by call.
    pub records: HashMap<String, Vec<u8>>,
    /// What `take_persisted` hands over once: the records of a run before.
    pub earlier: Vec<(String, Vec<u8>)>,
}

impl Plane {
    /// The media plane after a restart of the daemon: the records are
    /// there, sockets and routes are gone.
    pub fn restarted(&self) -> Self {
        let mut earlier: Vec<_> = self
            .records
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        earlier.sort();
        Self {
            records: self.records.clone(),
            earlier,
            ..Self::default()
        }
    }
}

impl Backend for Plane {
    fn open_pair(&mut self, addr: IpAddr, port: u16) -> io::Result<()> {
        assert!(port < u16::MAX, "a pair needs port + 1");
        for p in [port, port + 1] {
            assert!(
                self.open.insert(SocketAddr::new(addr, p)),
                "{addr}:{p} bound twice"
            );
        }
        Ok(())
    }

    fn close_pair(&mut self, addr: IpAddr, port: u16) {
        for p in [port, port + 1] {
            let local = SocketAddr::new(addr, p);
            assert!(self.open.remove(&local), "closing unbound {local}");
            self.routes.remove(&local);
            self.counters.remove(&local);
        }
    }

    fn set_route(&mut self, local: SocketAddr, route: Option<Route>) {
        assert!(self.open.contains(&local), "route on unbound {local}");
        match route {
            Some(r) => {
                assert!(self.open.contains(&r.out), "route out of unbound {}", r.out);
                if let Some((out, _)) = r.demux_rtcp {
                    assert!(self.open.contains(&out), "RTCP out of unbound {out}");
                }
                self.routes.insert(local, r);
            }
            None => {
                self.routes.remove(&local);
            }
        }
    }

    fn counters(&self, local: SocketAddr) -> Counters {
        self.counters.get(&local).copied().unwrap_or_default()
    }

    fn forward(&mut self, arrived: SocketAddr, from: SocketAddr, _to: SocketAddr, _data: &[u8]) {
        assert!(
            self.open.contains(&arrived),
            "forwarded from unbound {arrived}"
        );
        assert!(self.open.contains(&from), "forwarded out of unbound {from}");
        self.forwarded += 1;
    }

    fn route_source(&self, peer: IpAddr) -> Option<IpAddr> {
        // Peers on the "public" side (documentation and benchmark ranges
        // the fixtures use) are reached through `pub`, IPv6 through the
        // IPv6 address, everything else through `priv`.
        Some(match peer {
            IpAddr::V6(_) => PRIV_V6.parse().ok()?,
            IpAddr::V4(v4) if v4.octets()[0] == 203 => PUB.parse().ok()?,
            IpAddr::V4(_) => PRIV.parse().ok()?,
        })
    }

    fn persist(&mut self, id: &str, record: Option<&[u8]>) {
        match record {
            Some(r) => self.records.insert(id.to_owned(), r.to_vec()),
            None => self.records.remove(id),
        };
    }

    fn take_persisted(&mut self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.earlier)
    }
}

fn interface(name: &str, v4: &str, v6: Option<&str>) -> Interface {
    Interface::plain(name, v4.parse().ok(), v6.and_then(|a| a.parse().ok()))
}

/// A fresh engine, `priv` and `pub` interfaces, a 64-port range.
pub fn engine(now: Now) -> Engine<Plane> {
    engine_over(Plane::default(), now)
}

/// An engine over `plane` (a restarted one: call [`Engine::restore`]).
pub fn engine_over(plane: Plane, now: Now) -> Engine<Plane> {
    Engine::new(
        SessionConfig {
            max_media: 8,
            ..SessionConfig::default()
        },
        plane,
        Interfaces(vec![
            interface("priv", PRIV, Some(PRIV_V6)),
            interface("pub", PUB, None),
        ]),
        PortAllocator::seeded(PORT_MIN, PORT_MAX, Duration::from_secs(2), 1)
            .expect("a valid port range"),
        now,
    )
}

/// What must hold between any two events: every port a stream owns is
/// bound, and nothing is bound that no stream owns.
pub fn check(engine: &Engine<Plane>) {
    let plane = engine.backend();
    assert_eq!(
        engine.owned_ports(),
        plane.open.len(),
        "ports owned by streams vs. ports bound"
    );
    assert_eq!(
        engine.ports().in_use() * 2,
        plane.open.len(),
        "pairs leased vs. ports bound"
    );
    for (local, route) in &plane.routes {
        assert!(plane.open.contains(local));
        assert!(plane.open.contains(&route.out));
    }
}
