//! Public address discovery (`advertise = "stun"`): the daemon asks STUN
//! servers (RFC 8489 Binding requests, sent from the interface's own
//! address) which address its traffic leaves the NAT with, advertises
//! that in SDP, and asks again every `stun-interval`.
//!
//! Until the first answer no offer is accepted (ng error `public address
//! not yet known`): a private address is never advertised in its place.
//! A change is applied to the next offer or re-offer at once, logged at
//! warn (old → new) and counted; when every server fails the last known
//! address stays in effect and `/health` says degraded. Two servers
//! reporting different mapped endpoints for the same local socket (a
//! symmetric NAT, or a misconfigured server) are reported too.
//!
//! The codec is ours (`codec.rs`, tested against RFC 5769's vectors): the
//! crates that exist carry TURN/ICE, HMAC and precis machinery this needs
//! none of.

pub mod client;
pub mod codec;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use tokio::net::UdpSocket;
use tracing::{info, warn};

pub use client::{Answer, Retransmit};

/// Seconds between re-checks by default (`stun-interval`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// While no address is known yet, a failed round is retried after at most
/// this long (then every `stun-interval`).
const UNKNOWN_RETRY: Duration = Duration::from_secs(5);

/// What configuration says: ask these servers every `interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StunSpec {
    pub servers: Vec<SocketAddr>,
    pub interval: Duration,
}

/// What is known about one interface's public address of one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublicState {
    /// The address in effect (advertised in SDP).
    pub address: Option<IpAddr>,
    /// The mapped endpoint the first answering server reported.
    pub mapped: Option<SocketAddr>,
    /// When a server last confirmed `address`.
    pub confirmed: Option<SystemTime>,
    /// Times the address changed after it was first known.
    pub changes: u64,
    /// Set while the last round got no answer at all: why.
    pub degraded: Option<String>,
    /// Set while servers disagree on the mapped endpoint: what they said.
    pub disagreement: Option<String>,
    /// Rounds done.
    pub rounds: u64,
}

impl PublicState {
    /// `ok`, `degraded` (every server failed: the last known address is
    /// kept) or `unknown` (never discovered: offers are refused).
    pub fn status(&self) -> &'static str {
        match (self.address, &self.degraded) {
            (None, _) => "unknown",
            (Some(_), Some(_)) => "degraded",
            (Some(_), None) => "ok",
        }
    }
}

/// One interface's discovery for one family, shared between the task
/// that asks and the session engine that advertises.
#[derive(Debug)]
pub struct PublicAddress {
    pub interface: String,
    /// The local address requests are sent from.
    pub local: IpAddr,
    pub servers: Vec<SocketAddr>,
    pub interval: Duration,
    state: RwLock<PublicState>,
    /// The address in effect, for those who follow it (the SIP agent's
    /// `trunk-advertise = "media"`): sent when it is discovered or changes.
    published: tokio::sync::watch::Sender<Option<IpAddr>>,
}

/// What a round changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Discovered(IpAddr),
    Changed {
        old: IpAddr,
        new: IpAddr,
    },
    Confirmed(IpAddr),
    /// Every server failed; the last known address (if any) is kept.
    AllFailed(Option<IpAddr>),
}

impl PublicAddress {
    pub fn new(interface: String, local: IpAddr, spec: &StunSpec) -> Self {
        Self {
            interface,
            local,
            servers: spec
                .servers
                .iter()
                .filter(|s| s.is_ipv4() == local.is_ipv4())
                .copied()
                .collect(),
            interval: spec.interval,
            state: RwLock::new(PublicState::default()),
            published: tokio::sync::watch::Sender::new(None),
        }
    }

    pub fn family(&self) -> &'static str {
        if self.local.is_ipv4() { "ipv4" } else { "ipv6" }
    }

    /// Follow the address in effect (`None` until discovered): a new
    /// value on discovery and on every change, nothing on a confirmation.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<IpAddr>> {
        self.published.subscribe()
    }

    /// The address to advertise, if known.
    pub fn current(&self) -> Option<IpAddr> {
        self.state.read().ok().and_then(|s| s.address)
    }

    pub fn state(&self) -> PublicState {
        self.state.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Take a round's answers (in server order) at `now`: the first
    /// server that answered decides the address; every other answer is
    /// compared with it. Logs what changed.
    pub fn apply(&self, answers: &[(SocketAddr, Answer)], now: SystemTime) -> Outcome {
        let Ok(mut s) = self.state.write() else {
            return Outcome::AllFailed(None);
        };
        s.rounds += 1;
        let mapped: Vec<(SocketAddr, SocketAddr)> = answers
            .iter()
            .filter_map(|(server, a)| match a {
                Answer::Mapped(m) => Some((*server, *m)),
                Answer::Failed(_) => None,
            })
            .collect();
        let Some(&(first_server, first)) = mapped.first() else {
            let why: Vec<String> = answers
                .iter()
                .map(|(server, a)| match a {
                    Answer::Failed(e) => format!("{server}: {e}"),
                    Answer::Mapped(m) => format!("{server}: {m}"),
                })
                .collect();
            let why = if why.is_empty() {
                "no STUN server of this family".to_owned()
            } else {
                why.join("; ")
            };
            warn!(
                interface = %self.interface,
                family = self.family(),
                kept = ?s.address,
                reason = %why,
                "every STUN server failed: the last known public address stays in effect"
            );
            s.degraded = Some(why);
            return Outcome::AllFailed(s.address);
        };
        let differing: Vec<String> = mapped
            .iter()
            .filter(|(_, m)| *m != first)
            .map(|(server, m)| format!("{server} saw {m}"))
            .collect();
        if differing.is_empty() {
            s.disagreement = None;
        } else {
            let what = format!(
                "{first_server} saw {first}, {}: servers disagree on the mapped {} (symmetric NAT?)",
                differing.join(", "),
                if mapped.iter().all(|(_, m)| m.ip() == first.ip()) {
                    "port"
                } else {
                    "address"
                }
            );
            warn!(interface = %self.interface, family = self.family(), disagreement = %what, "STUN servers disagree on the mapped endpoint");
            s.disagreement = Some(what);
        }
        let new = first.ip();
        if is_private(new) {
            warn!(interface = %self.interface, address = %new, server = %first_server, "the STUN server reports a private address: is it on the private side of the NAT?");
        }
        if s.degraded.take().is_some() {
            info!(interface = %self.interface, family = self.family(), address = %new, "a STUN server answers again");
        }
        s.mapped = Some(first);
        s.confirmed = Some(now);
        let outcome = match s.address {
            None => {
                info!(interface = %self.interface, family = self.family(), address = %new, mapped = %first, server = %first_server, "public address discovered");
                Outcome::Discovered(new)
            }
            Some(old) if old != new => {
                s.changes += 1;
                warn!(interface = %self.interface, family = self.family(), old = %old, new = %new, server = %first_server, "public address changed: new offers and re-offers advertise the new one");
                Outcome::Changed { old, new }
            }
            Some(_) => Outcome::Confirmed(new),
        };
        s.address = Some(new);
        drop(s);
        self.published.send_if_modified(|current| {
            let changed = *current != Some(new);
            *current = Some(new);
            changed
        });
        outcome
    }

    /// One round: a fresh socket on the local address, every server asked.
    pub async fn round(&self, rt: Retransmit) -> Outcome {
        let answers = match UdpSocket::bind(SocketAddr::new(self.local, 0)).await {
            Ok(socket) => client::query_all(&socket, &self.servers, rt).await,
            Err(e) => self
                .servers
                .iter()
                .map(|s| (*s, Answer::Failed(format!("binding {}: {e}", self.local))))
                .collect(),
        };
        self.apply(&answers, SystemTime::now())
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
    }
}

/// A handle the interfaces hold; equal only to itself.
#[derive(Clone, Debug)]
pub struct Public(pub Arc<PublicAddress>);

impl PartialEq for Public {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Public {}

impl std::ops::Deref for Public {
    type Target = PublicAddress;
    fn deref(&self) -> &PublicAddress {
        &self.0
    }
}

/// Run discovery for every handle until the returned task is aborted:
/// a round at once, then every `interval` (every few seconds while the
/// address is unknown).
pub fn spawn(handles: Vec<Public>, rt: Retransmit) -> Vec<tokio::task::JoinHandle<()>> {
    handles
        .into_iter()
        .map(|h| {
            tokio::spawn(async move {
                info!(interface = %h.interface, local = %h.local, servers = ?h.servers, interval_s = h.interval.as_secs(), "public address discovery (STUN)");
                loop {
                    let outcome = h.round(rt).await;
                    let wait = if matches!(outcome, Outcome::AllFailed(None)) {
                        h.interval.min(UNKNOWN_RETRY)
                    } else {
                        h.interval
                    };
                    tokio::time::sleep(wait).await;
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn handle() -> PublicAddress {
        PublicAddress::new(
            "carrier".into(),
            "10.0.0.5".parse().unwrap(),
            &StunSpec {
                servers: vec![
                    sa("198.18.50.9:3478"),
                    sa("198.18.50.10:3478"),
                    sa("[2001:2::9]:3478"),
                ],
                interval: Duration::from_secs(60),
            },
        )
    }

    /// What the SIP agent follows (`trunk-advertise = "media"`): a value
    /// on discovery and on a change, none on a confirmation or a failure.
    #[test]
    fn subscribers_see_discovery_and_changes_only() {
        let h = handle();
        let mut rx = h.subscribe();
        assert_eq!(*rx.borrow_and_update(), None);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let s1 = sa("198.18.50.9:3478");
        h.apply(&[(s1, Answer::Failed("timeout".into()))], t0);
        assert!(!rx.has_changed().unwrap());
        let a = sa("198.18.50.1:40000");
        h.apply(&[(s1, Answer::Mapped(a))], t0);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), Some(a.ip()));
        h.apply(&[(s1, Answer::Mapped(a))], t0);
        h.apply(&[(s1, Answer::Failed("timeout".into()))], t0);
        assert!(!rx.has_changed().unwrap(), "confirmed, then kept");
        let b = sa("198.18.51.1:40000");
        h.apply(&[(s1, Answer::Mapped(b))], t0);
        assert_eq!(*rx.borrow_and_update(), Some(b.ip()));
    }

    #[test]
    fn only_servers_of_the_family_are_asked() {
        assert_eq!(handle().servers.len(), 2);
    }

    #[test]
    fn discovered_changed_kept_when_all_fail() {
        let h = handle();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let s1 = sa("198.18.50.9:3478");
        let s2 = sa("198.18.50.10:3478");
        assert_eq!(h.state().status(), "unknown");
        assert_eq!(
            h.apply(&[(s1, Answer::Failed("timeout".into()))], t0),
            Outcome::AllFailed(None)
        );
        assert_eq!(h.current(), None, "nothing advertised before discovery");
        let a = sa("198.18.50.1:40000");
        assert_eq!(
            h.apply(&[(s1, Answer::Mapped(a)), (s2, Answer::Mapped(a))], t0),
            Outcome::Discovered(a.ip())
        );
        assert_eq!(h.state().status(), "ok");
        assert_eq!(h.state().disagreement, None);
        let b = sa("198.18.51.1:40000");
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(
            h.apply(&[(s1, Answer::Mapped(b))], t1),
            Outcome::Changed {
                old: a.ip(),
                new: b.ip()
            }
        );
        assert_eq!(h.state().changes, 1);
        assert_eq!(h.state().confirmed, Some(t1));
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(
            h.apply(
                &[
                    (s1, Answer::Failed("timeout".into())),
                    (s2, Answer::Failed("timeout".into()))
                ],
                t2
            ),
            Outcome::AllFailed(Some(b.ip()))
        );
        let s = h.state();
        assert_eq!(
            (s.status(), s.address, s.confirmed),
            ("degraded", Some(b.ip()), Some(t1))
        );
        assert!(s.degraded.unwrap().contains("198.18.50.10:3478: timeout"));
        // Back.
        h.apply(&[(s2, Answer::Mapped(b))], t2);
        assert_eq!(h.state().status(), "ok");
    }

    #[test]
    fn disagreeing_servers_are_reported() {
        let h = handle();
        let s1 = sa("198.18.50.9:3478");
        let s2 = sa("198.18.50.10:3478");
        let now = SystemTime::now();
        h.apply(
            &[
                (s1, Answer::Mapped(sa("198.18.50.1:40000"))),
                (s2, Answer::Mapped(sa("198.18.50.1:40007"))),
            ],
            now,
        );
        let d = h.state().disagreement.unwrap();
        assert!(d.contains("mapped port"), "{d}");
        assert_eq!(h.current(), Some("198.18.50.1".parse().unwrap()));
        h.apply(
            &[
                (s1, Answer::Mapped(sa("198.18.50.1:40000"))),
                (s2, Answer::Mapped(sa("198.18.50.2:40000"))),
            ],
            now,
        );
        let d = h.state().disagreement.unwrap();
        assert!(d.contains("mapped address"), "{d}");
        assert_eq!(
            h.current(),
            Some("198.18.50.1".parse().unwrap()),
            "the first server decides"
        );
    }
}
