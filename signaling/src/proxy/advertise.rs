//! The address the agent writes as its own towards each side
//! (`trunk-advertise`, `pbx-advertise`): behind a 1:1 NAT the trunks must
//! be told the public address, never the private one the agent listens
//! on. It goes into the agent's Record-Route entries and the sent-by of
//! its Via; the agent writes no Contact of its own.
//!
//! With `"media"` the runtime feeds the agent the media interface's public
//! address in effect ([`Agent::set_public`]) as it is discovered and when
//! it changes. While it is unknown the agent would have nothing but its
//! private address to write: it refuses new requests that would cross
//! that side with 503 and Retry-After instead (logged once per outage)
//! and lets in-dialog requests of calls it already carries through with
//! the listen address (their route sets were recorded before).
//!
//! Route and Request-URI entries naming the agent are recognised by the
//! listen address, the advertised one, and the last few addresses it
//! advertised before a change (requests of calls set up before it).

use std::net::{IpAddr, SocketAddr};

use tracing::{info, warn};

use super::agent::{Agent, Side};
use crate::config::{Advertise, Facing};

/// Addresses advertised before a change, recognised still (at most).
const FORMER: usize = 8;

/// Retry-After (seconds) of the 503 while the public address is unknown.
pub(super) const RETRY_AFTER: &str = "5";

/// What the agent knows of its advertised addresses.
#[derive(Debug, Default)]
pub(super) struct Advertised {
    /// The media interface's public address, per side with `"media"`.
    trunk: Option<IpAddr>,
    pbx: Option<IpAddr>,
    /// Addresses advertised before a change (newest last).
    former: Vec<SocketAddr>,
    /// A refusal for want of an address was logged (reset once known).
    warned: bool,
}

pub(super) const fn facing(side: Side) -> Facing {
    match side {
        Side::Trunk(_) => Facing::Trunk,
        Side::Pbx => Facing::Pbx,
    }
}

/// The side a request from `side` goes to.
pub(super) const fn opposite(side: Side) -> Facing {
    match side {
        Side::Trunk(_) => Facing::Pbx,
        Side::Pbx => Facing::Trunk,
    }
}

fn same(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
}

impl Agent {
    /// The media interface's public address in effect for `facing`
    /// (`None`: not known yet). Used by sides whose advertise is
    /// `"media"`; ignored by the others.
    pub fn set_public(&mut self, facing: Facing, ip: Option<IpAddr>) {
        let port = self.cfg.listen(facing).port();
        let slot = match facing {
            Facing::Trunk => &mut self.adv.trunk,
            Facing::Pbx => &mut self.adv.pbx,
        };
        let old = std::mem::replace(slot, ip);
        if old == ip {
            return;
        }
        if let Some(old) = old {
            let former = SocketAddr::new(old, port);
            self.adv.former.retain(|a| !same(*a, former));
            self.adv.former.push(former);
            if self.adv.former.len() > FORMER {
                self.adv.former.remove(0);
            }
        }
        if self.cfg.advertise(facing) == Some(Advertise::Media) {
            match ip {
                Some(ip) => {
                    info!(side = facing.key(), address = %SocketAddr::new(ip, port), "SIP agent advertises the media interface's public address");
                    self.adv.warned = false;
                }
                None => {
                    warn!(
                        side = facing.key(),
                        "the media interface's public address is unknown again"
                    );
                }
            }
        }
    }

    /// The address written towards `facing` (`None`: `"media"` and not
    /// known yet).
    pub(super) fn advertised(&self, facing: Facing) -> Option<SocketAddr> {
        let listen = self.cfg.listen(facing);
        match self.cfg.advertise(facing) {
            None => Some(listen),
            Some(Advertise::Fixed(a)) => Some(a),
            Some(Advertise::Media) => match facing {
                Facing::Trunk => self.adv.trunk,
                Facing::Pbx => self.adv.pbx,
            }
            .map(|ip| SocketAddr::new(ip, listen.port())),
        }
    }

    /// Our address as written in a message towards `facing` that leaves
    /// from `local`: the advertised one for the side's listen address.
    pub(super) fn sent_by(&self, facing: Facing, local: SocketAddr) -> SocketAddr {
        if !same(local, self.cfg.listen(facing)) {
            return local;
        }
        self.advertised(facing).unwrap_or(local)
    }

    /// The listen address an address of ours (listen, advertised, or
    /// advertised before) stands for; `None` when it is not ours.
    pub(super) fn own_listen(&self, a: SocketAddr) -> Option<SocketAddr> {
        for facing in [Facing::Trunk, Facing::Pbx] {
            let listen = self.cfg.listen(facing);
            if same(a, listen) || self.advertised(facing).is_some_and(|adv| same(a, adv)) {
                return Some(listen);
            }
        }
        let former = self.adv.former.iter().find(|f| same(a, **f))?;
        // A former media address: the side it was advertised on.
        [Facing::Trunk, Facing::Pbx]
            .into_iter()
            .find(|f| {
                self.cfg.advertise(*f) == Some(Advertise::Media)
                    && self.cfg.listen(*f).port() == former.port()
            })
            .map(|f| self.cfg.listen(f))
    }

    /// Whether `ip` is one of our addresses (listen, advertised, or
    /// advertised before).
    pub(super) fn is_own_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        [Facing::Trunk, Facing::Pbx].into_iter().any(|f| {
            self.cfg.listen(f).ip().to_canonical() == ip
                || self
                    .advertised(f)
                    .is_some_and(|a| a.ip().to_canonical() == ip)
        }) || self.adv.former.iter().any(|a| a.ip().to_canonical() == ip)
    }

    /// Whether a new request between `from` and the other side must wait
    /// for a public address still unknown (logged once until it is known).
    pub(super) fn advertise_pending(&mut self, from: Side) -> bool {
        let pending: Vec<Facing> = [Facing::Trunk, Facing::Pbx]
            .into_iter()
            .filter(|f| self.advertised(*f).is_none())
            .collect();
        if pending.is_empty() {
            return false;
        }
        if !self.adv.warned {
            self.adv.warned = true;
            let sides: Vec<&str> = pending.iter().map(|f| f.key()).collect();
            warn!(
                from = from.label(),
                waiting_for = ?sides,
                "new SIP requests refused (503): the media interface's public address is not known yet, and the agent will not advertise its private one"
            );
        }
        true
    }
}
