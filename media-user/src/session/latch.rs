//! Symmetric RTP latching (RFC 4961): which source a stream accepts media
//! from, and where media for that party goes.
//!
//! A party behind NAT announces a private address in its SDP but sends
//! from a public one. For a learning window after the stream starts, the
//! relay accepts the first source it sees, preferring one that matches the
//! SDP (rtpengine's "heuristic" behaviour); media for the party then goes
//! to the latched address. After the window the source is strict: anyone
//! else is dropped — in XDP once the flow is installed. A latched stream
//! moves only for its own SSRC with sequence continuity (a NAT rebinding
//! mid-call), so a third party can neither steal nor bleed it.
//!
//! I/O-free: the caller reports packets and time, and reads back the
//! endpoint and the source policy to program into the data plane.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

/// How far ahead of the last sequence number a re-latching packet may be.
const MAX_SEQ_GAP: u16 = 100;

/// The ng flags that shape latching.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Learn, then strict (the default; ng `symmetric`).
    #[default]
    Symmetric,
    /// Never learn, never check: send to the SDP address, accept anyone
    /// (ng `asymmetric`).
    Asymmetric,
    /// Never learn: accept only the SDP address from the start (ng
    /// `strict source`).
    StrictSource,
}

/// What the data plane should do with arriving packets' sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Accept anyone.
    Any,
    /// Still learning: packets from `Some(expected)` are forwarded, any
    /// other source is handed to the daemon.
    Learning(Option<SocketAddr>),
    /// Only `addr`; a mismatch carrying `relatch_ssrc` is handed to the
    /// daemon, everything else is dropped.
    Latched {
        addr: SocketAddr,
        relatch_ssrc: Option<u32>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Window not started (no packet yet) or running since `since`.
    Learning {
        since: Option<Instant>,
        latched: Option<SocketAddr>,
    },
    Latched {
        addr: SocketAddr,
        /// Last RTP SSRC and sequence number seen from `addr`.
        rtp: Option<(u32, u16)>,
    },
}

/// A packet's fate in userspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Drop,
}

/// Latching state of one stream (one direction of arrival).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Latch {
    policy: Policy,
    /// From the SDP (or the SIP source address): where media for this
    /// party goes until something is learnt.
    advertised: Option<SocketAddr>,
    state: State,
    window: Duration,
}

impl Latch {
    pub fn new(policy: Policy, advertised: Option<SocketAddr>, window: Duration) -> Self {
        let state = match (policy, advertised) {
            (Policy::StrictSource, Some(addr)) => State::Latched { addr, rtp: None },
            _ => State::Learning {
                since: None,
                latched: None,
            },
        };
        Self {
            policy,
            advertised,
            state,
            window,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn advertised(&self) -> Option<SocketAddr> {
        self.advertised
    }

    /// The SDP changed (re-offer): a new advertised address restarts
    /// learning, unless the stream is latched on a source the new SDP
    /// agrees with. `port_latching` (ng flag) keeps a latched address.
    pub fn readvertise(&mut self, advertised: Option<SocketAddr>, port_latching: bool) {
        if advertised == self.advertised {
            return;
        }
        self.advertised = advertised;
        if port_latching && matches!(self.state, State::Latched { .. }) {
            return;
        }
        *self = Self::new(self.policy, advertised, self.window);
    }

    /// Where media for this party goes.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match self.state {
            State::Latched { addr, .. } => Some(addr),
            State::Learning { latched, .. } => latched.or(self.advertised),
        }
    }

    /// Whether the stream still learns (and so needs the tick's attention).
    pub fn is_learning(&self) -> bool {
        self.policy != Policy::Asymmetric && matches!(self.state, State::Learning { .. })
    }

    /// Whether a source has been confirmed by packets.
    pub fn is_confirmed(&self) -> bool {
        match self.state {
            State::Latched { .. } => true,
            State::Learning { latched, .. } => latched.is_some(),
        }
    }

    /// The source policy for the data plane.
    pub fn source(&self) -> Source {
        if self.policy == Policy::Asymmetric {
            return Source::Any;
        }
        match self.state {
            State::Learning { latched, .. } => Source::Learning(latched.or(self.advertised)),
            State::Latched { addr, rtp } => Source::Latched {
                addr,
                relatch_ssrc: rtp.map(|(ssrc, _)| ssrc),
            },
        }
    }

    /// A packet from `from` reached userspace (XDP handed it over, or XDP
    /// is off). `rtp` is its (SSRC, sequence number) if it is RTP. Returns
    /// whether to forward it; the endpoint or source may have changed.
    pub fn on_packet(
        &mut self,
        from: SocketAddr,
        rtp: Option<(u32, u16)>,
        now: Instant,
    ) -> Verdict {
        if self.policy == Policy::Asymmetric {
            return Verdict::Forward;
        }
        self.tick(now);
        match &mut self.state {
            State::Learning { since, latched } => {
                since.get_or_insert(now);
                match *latched {
                    // The SDP address wins over an earlier guess.
                    Some(l) if l != from && Some(from) == self.advertised => {
                        *latched = Some(from);
                        Verdict::Forward
                    }
                    Some(l) if l == from => Verdict::Forward,
                    Some(_) => Verdict::Drop,
                    None => {
                        *latched = Some(from);
                        Verdict::Forward
                    }
                }
            }
            State::Latched { addr, rtp: last } => {
                if from == *addr {
                    if rtp.is_some() {
                        *last = rtp;
                    }
                    return Verdict::Forward;
                }
                // Re-latch: same SSRC, sequence continuing.
                if self.policy == Policy::Symmetric
                    && let (Some((ssrc, seq)), Some((last_ssrc, last_seq))) = (rtp, *last)
                    && ssrc == last_ssrc
                    && (1..=MAX_SEQ_GAP).contains(&seq.wrapping_sub(last_seq))
                {
                    *addr = from;
                    *last = rtp;
                    return Verdict::Forward;
                }
                Verdict::Drop
            }
        }
    }

    /// RTP seen by the data plane (its per-flow record), so a later
    /// re-latch can be validated against it.
    pub fn note_rtp(&mut self, ssrc: u32, seq: u16) {
        if let State::Latched { rtp, .. } = &mut self.state {
            *rtp = Some((ssrc, seq));
        }
    }

    /// Close the learning window if it is over. Returns whether the state
    /// changed (the data plane must be reprogrammed).
    pub fn tick(&mut self, now: Instant) -> bool {
        if let State::Learning {
            since: Some(since),
            latched: Some(addr),
        } = self.state
            && now.duration_since(since) >= self.window
        {
            self.state = State::Latched { addr, rtp: None };
            return true;
        }
        false
    }

    /// Packets from the expected source were forwarded by the data plane
    /// without reaching userspace: that starts (and can end) the window.
    pub fn note_forwarded(&mut self, now: Instant) {
        if let State::Learning { since, latched } = &mut self.state {
            since.get_or_insert(now);
            if latched.is_none() {
                *latched = self.advertised;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(3);

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_nat_latches_on_the_sdp_address() {
        let t0 = Instant::now();
        let sdp = sa("198.18.1.2:5000");
        let mut l = Latch::new(Policy::Symmetric, Some(sdp), W);
        assert_eq!(l.source(), Source::Learning(Some(sdp)));
        assert_eq!(l.on_packet(sdp, Some((7, 1)), t0), Verdict::Forward);
        assert!(!l.tick(t0 + Duration::from_secs(1)));
        assert!(l.tick(t0 + W));
        assert_eq!(
            l.source(),
            Source::Latched {
                addr: sdp,
                relatch_ssrc: None
            }
        );
    }

    #[test]
    fn nat_latches_on_the_first_source_and_redirects_media() {
        let t0 = Instant::now();
        let sdp = sa("10.0.0.5:4000");
        let public = sa("198.18.1.2:40000");
        let mut l = Latch::new(Policy::Symmetric, Some(sdp), W);
        assert_eq!(l.endpoint(), Some(sdp));
        assert_eq!(l.on_packet(public, None, t0), Verdict::Forward);
        assert_eq!(
            l.endpoint(),
            Some(public),
            "media now goes to the NAT's address"
        );
        // A third party during the window is not forwarded.
        assert_eq!(l.on_packet(sa("198.18.1.9:1"), None, t0), Verdict::Drop);
        assert!(l.tick(t0 + W));
        assert_eq!(
            l.source(),
            Source::Latched {
                addr: public,
                relatch_ssrc: None
            }
        );
    }

    #[test]
    fn the_sdp_address_wins_during_the_window() {
        let t0 = Instant::now();
        let sdp = sa("198.18.1.2:5000");
        let mut l = Latch::new(Policy::Symmetric, Some(sdp), W);
        assert_eq!(
            l.on_packet(sa("198.18.1.66:6666"), None, t0),
            Verdict::Forward
        );
        assert_eq!(
            l.on_packet(sdp, None, t0 + Duration::from_millis(10)),
            Verdict::Forward
        );
        assert_eq!(l.endpoint(), Some(sdp));
        assert_eq!(l.on_packet(sa("198.18.1.66:6666"), None, t0), Verdict::Drop);
    }

    #[test]
    fn strict_after_the_window_and_relatch_only_on_ssrc_continuity() {
        let t0 = Instant::now();
        let a = sa("198.18.1.2:5000");
        let moved = sa("198.18.1.2:5002");
        let mut l = Latch::new(Policy::Symmetric, Some(a), W);
        l.on_packet(a, Some((0xabc, 10)), t0);
        l.tick(t0 + W);
        l.note_rtp(0xabc, 20);
        assert_eq!(
            l.source(),
            Source::Latched {
                addr: a,
                relatch_ssrc: Some(0xabc)
            }
        );
        let later = t0 + W + Duration::from_secs(1);
        // Another SSRC, or the same SSRC jumping or going back: refused.
        assert_eq!(l.on_packet(moved, Some((0xdef, 21)), later), Verdict::Drop);
        assert_eq!(
            l.on_packet(moved, Some((0xabc, 20 + 500)), later),
            Verdict::Drop
        );
        assert_eq!(l.on_packet(moved, Some((0xabc, 19)), later), Verdict::Drop);
        assert_eq!(l.on_packet(moved, None, later), Verdict::Drop);
        assert_eq!(l.endpoint(), Some(a));
        // Continuing: the NAT rebound.
        assert_eq!(
            l.on_packet(moved, Some((0xabc, 21)), later),
            Verdict::Forward
        );
        assert_eq!(l.endpoint(), Some(moved));
        // Sequence wrap-around still counts as continuity.
        l.note_rtp(0xabc, 65530);
        assert_eq!(l.on_packet(a, Some((0xabc, 3)), later), Verdict::Forward);
        assert_eq!(l.endpoint(), Some(a));
    }

    #[test]
    fn strict_source_never_learns() {
        let t0 = Instant::now();
        let a = sa("198.18.1.2:5000");
        let mut l = Latch::new(Policy::StrictSource, Some(a), W);
        assert_eq!(
            l.source(),
            Source::Latched {
                addr: a,
                relatch_ssrc: None
            }
        );
        assert_eq!(l.on_packet(sa("198.18.1.3:5000"), None, t0), Verdict::Drop);
        l.note_rtp(1, 1);
        assert_eq!(
            l.on_packet(sa("198.18.1.3:5000"), Some((1, 2)), t0),
            Verdict::Drop
        );
    }

    #[test]
    fn asymmetric_accepts_anyone_and_sends_to_the_sdp() {
        let t0 = Instant::now();
        let a = sa("198.18.1.2:5000");
        let mut l = Latch::new(Policy::Asymmetric, Some(a), W);
        assert_eq!(l.source(), Source::Any);
        assert_eq!(l.on_packet(sa("198.18.1.3:1"), None, t0), Verdict::Forward);
        assert_eq!(l.endpoint(), Some(a));
    }

    #[test]
    fn readvertising_restarts_learning_unless_port_latching() {
        let t0 = Instant::now();
        let a = sa("198.18.1.2:5000");
        let b = sa("198.18.1.2:6000");
        let mut l = Latch::new(Policy::Symmetric, Some(a), W);
        l.on_packet(a, None, t0);
        l.tick(t0 + W);
        let mut kept = l.clone();
        l.readvertise(Some(b), false);
        assert_eq!(
            (l.endpoint(), l.source()),
            (Some(b), Source::Learning(Some(b)))
        );
        kept.readvertise(Some(b), true);
        assert_eq!(kept.endpoint(), Some(a));
    }

    #[test]
    fn forwarded_in_xdp_confirms_the_sdp_address() {
        let t0 = Instant::now();
        let a = sa("198.18.1.2:5000");
        let mut l = Latch::new(Policy::Symmetric, Some(a), W);
        assert!(!l.is_confirmed());
        l.note_forwarded(t0);
        assert!(l.is_confirmed());
        assert!(l.tick(t0 + W));
        assert_eq!(
            l.source(),
            Source::Latched {
                addr: a,
                relatch_ssrc: None
            }
        );
    }
}
