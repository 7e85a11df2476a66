//! Symmetric RTP latching (RFC 4961): which source a stream accepts media
//! from, and where media for that party goes.
//!
//! A party behind NAT announces a private address in its SDP but sends
//! from a public one. For a learning window after the stream starts, the
//! relay accepts a source for the party, ranking candidates by what
//! signalling said about it ([`Rank`]): the SDP's exact address and port
//! first, then the SDP's IP or the SIP message's source IP (ng `received
//! from`), then anyone. A better candidate displaces a worse one during the
//! window, never after; media for the party goes to the source it holds —
//! except a candidate that matches nothing signalling said
//! ([`Rank::Other`]) while signalling said enough to recognise the party
//! (an SDP address and the SIP source, ng `received from`, which the SIP
//! agent and Kamailio send): while the window runs it is *held*, not
//! served.
//! Its packets are forwarded (a party behind an unexpected NAT is heard
//! at once), but media for the party keeps going to the SDP address and
//! the data plane keeps expecting that address, so a stranger who sends
//! first receives nothing (no RTP bleed) and the party's own first packet
//! displaces it. Only if the window closes with nothing better does the
//! held candidate latch.
//! Before the dialogue is answered only candidates of the SDP's or the SIP
//! source's IP are accepted at all. After the window the source is strict:
//! anyone else is dropped — in XDP once the flow is installed. A latched
//! stream moves only for its own SSRC with sequence continuity (a NAT
//! rebinding mid-call), checked against what the data plane forwarded
//! last ([`Latch::sync`]), so a third party can neither steal nor bleed it.
//!
//! I/O-free: the caller reports packets, the data plane's counters and
//! time, and reads back the endpoint and the source policy to program into
//! the data plane.

use std::{
    net::{IpAddr, SocketAddr},
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

/// How well a source matches what signalling said about the party; the
/// order is the order of preference while learning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    /// Neither the SDP's nor the SIP source's IP (a NAT's public address,
    /// or anybody else).
    Other,
    /// The SDP's IP with another port, or the SIP message's source IP.
    SameIp,
    /// The SDP's address and port.
    Exact,
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
pub(super) enum State {
    /// Window not started (no packet yet) or running since `since`.
    Learning {
        since: Option<Instant>,
        latched: Option<(SocketAddr, Rank)>,
    },
    Latched {
        addr: SocketAddr,
        /// Last RTP SSRC and sequence number seen from `addr`.
        rtp: Option<(u32, u16)>,
    },
}

/// Everything a [`Latch`] holds ([`Latch::parts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Parts {
    pub(super) policy: Policy,
    pub(super) advertised: Option<SocketAddr>,
    pub(super) sip_source: Option<IpAddr>,
    pub(super) state: State,
    pub(super) window: Duration,
    pub(super) forwarded_base: u64,
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
    /// The address the party's SIP messages came from (ng `received
    /// from`): a hint for ranking, never an endpoint by itself.
    sip_source: Option<IpAddr>,
    state: State,
    window: Duration,
    /// Packets the data plane had forwarded on the stream's port when
    /// learning (re)started: only packets after these confirm the
    /// advertised address.
    forwarded_base: u64,
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
            sip_source: None,
            state,
            window,
            forwarded_base: 0,
        }
    }

    /// The same, for a port on which the data plane already forwarded
    /// `forwarded` packets (a stream whose learning restarts).
    #[must_use]
    pub fn based_at(mut self, forwarded: u64) -> Self {
        self.forwarded_base = forwarded;
        self
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn advertised(&self) -> Option<SocketAddr> {
        self.advertised
    }

    /// The SIP message's source address (ng `received from`), for ranking.
    pub fn set_sip_source(&mut self, ip: Option<IpAddr>) {
        self.sip_source = ip;
    }

    /// How well `from` matches what signalling said about the party.
    pub fn rank(&self, from: SocketAddr) -> Rank {
        if Some(from) == self.advertised {
            Rank::Exact
        } else if self.advertised.is_some_and(|a| a.ip() == from.ip())
            || self.sip_source == Some(from.ip())
        {
            Rank::SameIp
        } else {
            Rank::Other
        }
    }

    /// The SDP changed (re-offer): a new advertised address restarts
    /// learning, unless the stream is latched on a source the new SDP
    /// agrees with. `port_latching` (ng flag) keeps a latched address.
    /// `forwarded` is the data plane's packet count on the stream's port.
    /// Returns whether learning restarted.
    pub fn readvertise(
        &mut self,
        advertised: Option<SocketAddr>,
        port_latching: bool,
        forwarded: u64,
    ) -> bool {
        if advertised == self.advertised {
            return false;
        }
        self.advertised = advertised;
        if port_latching && matches!(self.state, State::Latched { .. }) {
            return false;
        }
        let sip_source = self.sip_source;
        *self = Self::new(self.policy, advertised, self.window).based_at(forwarded);
        self.sip_source = sip_source;
        true
    }

    /// The candidate media goes to while learning: not one of
    /// [`Rank::Other`] that is [held](Self::holds).
    fn served(&self, latched: Option<(SocketAddr, Rank)>) -> Option<SocketAddr> {
        match latched {
            Some((_, r)) if self.holds(r) => None,
            l => l.map(|(a, _)| a),
        }
    }

    /// Whether a candidate of `rank` is held while the window runs: one
    /// that matches nothing signalling said, when signalling said both
    /// where the party is (the SDP address) and where its SIP came from.
    /// Without the SIP source a NATed party's own packets match nothing
    /// either, and holding them would leave it without media for the
    /// window: then the first sender is served, as before.
    fn holds(&self, rank: Rank) -> bool {
        rank == Rank::Other && self.advertised.is_some() && self.sip_source.is_some()
    }

    /// Where media for this party goes.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match self.state {
            State::Latched { addr, .. } => Some(addr),
            State::Learning { latched, .. } => self.served(latched).or(self.advertised),
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
            State::Learning { latched, .. } => {
                Source::Learning(self.served(latched).or(self.advertised))
            }
            State::Latched { addr, rtp } => Source::Latched {
                addr,
                relatch_ssrc: rtp.map(|(ssrc, _)| ssrc),
            },
        }
    }

    /// A packet from `from` reached userspace (XDP handed it over, or XDP
    /// is off). `rtp` is its (SSRC, sequence number) if it is RTP;
    /// `answered` says whether the dialogue is answered (before, only a
    /// source of [`Rank::SameIp`] or better is accepted). Call
    /// [`sync`](Self::sync) first. Returns whether to forward it; the
    /// endpoint or source may have changed.
    pub fn on_packet(
        &mut self,
        from: SocketAddr,
        rtp: Option<(u32, u16)>,
        now: Instant,
        answered: bool,
    ) -> Verdict {
        if self.policy == Policy::Asymmetric {
            return Verdict::Forward;
        }
        self.tick(now);
        let rank = self.rank(from);
        match &mut self.state {
            // Strict source never learns: without an address to be strict
            // about, nothing is accepted.
            State::Learning { .. } if self.policy == Policy::StrictSource => Verdict::Drop,
            State::Learning { .. } if !answered && rank < Rank::SameIp => Verdict::Drop,
            State::Learning { since, latched } => {
                let verdict = match *latched {
                    Some((l, _)) if l == from => Verdict::Forward,
                    // A better candidate displaces a worse one; equals do
                    // not (the first of them keeps it).
                    Some((_, held)) if rank > held => {
                        *latched = Some((from, rank));
                        Verdict::Forward
                    }
                    Some(_) => Verdict::Drop,
                    None => {
                        since.get_or_insert(now);
                        *latched = Some((from, rank));
                        Verdict::Forward
                    }
                };
                // A held stranger's packet the daemon forwards shows in the
                // port's count: it is no sign of the advertised address
                // (what the data plane forwards by itself is).
                if verdict == Verdict::Forward && self.holds(rank) {
                    self.forwarded_base += 1;
                }
                verdict
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

    /// Whether a packet from `from` needs [`sync`](Self::sync) before its
    /// decision (reading the data plane's counters costs map lookups, and
    /// a flood of strangers reaches the daemon one packet at a time): when
    /// the data plane may have confirmed the advertised address, when the
    /// window may be over, and for a re-latch candidate of a latched
    /// stream.
    pub fn needs_sync(&self, from: SocketAddr, rtp: Option<(u32, u16)>, now: Instant) -> bool {
        match self.state {
            State::Learning { since, latched } => {
                // Nothing latched, or only a held stranger: the data plane
                // expects (and may have forwarded) the advertised address.
                (latched.is_none_or(|(_, r)| self.holds(r)) && self.advertised.is_some())
                    || since.is_some_and(|s| now.saturating_duration_since(s) >= self.window)
            }
            State::Latched { addr, rtp: last } => {
                from != addr
                    && rtp.is_some_and(|(ssrc, _)| last.is_none_or(|(seen, _)| seen == ssrc))
            }
        }
    }

    /// Bring the latch up to date with the data plane's record of the
    /// stream's port, which forwards the accepted source's packets without
    /// the daemon seeing them: `forwarded` packets so far (both paths) and
    /// the last RTP (SSRC, sequence) forwarded. Packets forwarded while
    /// learning confirm the address the data plane expected (and start the
    /// window); the window closes when due; a latched stream remembers the
    /// data plane's last RTP, so a re-latch is judged against the stream as
    /// it is now, not as it was when the window closed. Returns whether
    /// the endpoint or source changed (the data plane must be
    /// reprogrammed).
    pub fn sync(&mut self, forwarded: u64, last_rtp: Option<(u32, u16)>, now: Instant) -> bool {
        let before = (self.endpoint(), self.source());
        if forwarded > self.forwarded_base {
            self.note_forwarded(now);
        }
        self.tick(now);
        if let (State::Latched { rtp, .. }, Some(seen)) = (&mut self.state, last_rtp) {
            *rtp = Some(seen);
        }
        before != (self.endpoint(), self.source())
    }

    /// Everything the latch holds, for its record (`record.rs`).
    pub(super) fn parts(&self) -> Parts {
        let Self {
            policy,
            advertised,
            sip_source,
            state,
            window,
            forwarded_base,
        } = self;
        Parts {
            policy: *policy,
            advertised: *advertised,
            sip_source: *sip_source,
            state: *state,
            window: *window,
            forwarded_base: *forwarded_base,
        }
    }

    /// The latch a record describes.
    pub(super) fn from_parts(p: Parts) -> Self {
        let Parts {
            policy,
            advertised,
            sip_source,
            state,
            window,
            forwarded_base,
        } = p;
        Self {
            policy,
            advertised,
            sip_source,
            state,
            window,
            forwarded_base,
        }
    }

    /// The same state but for the sequence number of the last RTP packet,
    /// which moves with every packet: a record is rewritten for what
    /// changes decisions, not for that (after a restart the data plane's
    /// own record of the last RTP brings it up to date, see [`sync`]).
    ///
    /// [`sync`]: Self::sync
    pub(super) fn same_but_sequence(&self, other: &Self) -> bool {
        let strip = |l: &Self| {
            let mut p = l.parts();
            if let State::Latched { rtp: Some(r), .. } = &mut p.state {
                r.1 = 0;
            }
            p
        };
        strip(self) == strip(other)
    }

    /// Close the learning window if it is over. Returns whether the state
    /// changed (the data plane must be reprogrammed).
    pub fn tick(&mut self, now: Instant) -> bool {
        if let State::Learning {
            since: Some(since),
            latched: Some((addr, _)),
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
    /// Without a latched source the data plane expected the advertised
    /// address.
    fn note_forwarded(&mut self, now: Instant) {
        let holding = self.holds(Rank::Other);
        if let State::Learning { since, latched } = &mut self.state {
            // Nothing, or only a held stranger: the data plane expected
            // the advertised address, and it spoke.
            if latched.is_none_or(|(_, r)| r == Rank::Other && holding)
                && let Some(a) = self.advertised
            {
                *latched = Some((a, Rank::Exact));
            }
            if latched.is_some() {
                since.get_or_insert(now);
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
        assert_eq!(l.on_packet(sdp, Some((7, 1)), t0, true), Verdict::Forward);
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
        let sdp = sa("198.18.99.5:4000");
        let public = sa("198.18.1.2:40000");
        let mut l = Latch::new(Policy::Symmetric, Some(sdp), W);
        // Its SIP came from the NAT's address too.
        l.set_sip_source(Some(public.ip()));
        assert_eq!(l.endpoint(), Some(sdp));
        assert_eq!(l.on_packet(public, None, t0, true), Verdict::Forward);
        assert_eq!(
            l.endpoint(),
            Some(public),
            "media now goes to the NAT's address"
        );
        // A third party during the window is not forwarded.
        assert_eq!(
            l.on_packet(sa("198.18.1.9:1"), None, t0, true),
            Verdict::Drop
        );
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
            l.on_packet(sa("198.18.1.66:6666"), None, t0, true),
            Verdict::Forward
        );
        assert_eq!(
            l.on_packet(sdp, None, t0 + Duration::from_millis(10), true),
            Verdict::Forward
        );
        assert_eq!(l.endpoint(), Some(sdp));
        assert_eq!(
            l.on_packet(sa("198.18.1.66:6666"), None, t0, true),
            Verdict::Drop
        );
    }

    #[test]
    fn strict_after_the_window_and_relatch_only_on_ssrc_continuity() {
        let t0 = Instant::now();
        let a = sa("198.18.1.2:5000");
        let moved = sa("198.18.1.2:5002");
        let mut l = Latch::new(Policy::Symmetric, Some(a), W);
        l.on_packet(a, Some((0xabc, 10)), t0, true);
        l.tick(t0 + W);
        l.sync(0, Some((0xabc, 20)), t0 + W);
        assert_eq!(
            l.source(),
            Source::Latched {
                addr: a,
                relatch_ssrc: Some(0xabc)
            }
        );
        let later = t0 + W + Duration::from_secs(1);
        // Another SSRC, or the same SSRC jumping or going back: refused.
        assert_eq!(
            l.on_packet(moved, Some((0xdef, 21)), later, true),
            Verdict::Drop
        );
        assert_eq!(
            l.on_packet(moved, Some((0xabc, 20 + 500)), later, true),
            Verdict::Drop
        );
        assert_eq!(
            l.on_packet(moved, Some((0xabc, 19)), later, true),
            Verdict::Drop
        );
        assert_eq!(l.on_packet(moved, None, later, true), Verdict::Drop);
        assert_eq!(l.endpoint(), Some(a));
        // Continuing: the NAT rebound.
        assert_eq!(
            l.on_packet(moved, Some((0xabc, 21)), later, true),
            Verdict::Forward
        );
        assert_eq!(l.endpoint(), Some(moved));
        // Sequence wrap-around still counts as continuity.
        l.sync(0, Some((0xabc, 65530)), later);
        assert_eq!(
            l.on_packet(a, Some((0xabc, 3)), later, true),
            Verdict::Forward
        );
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
        assert_eq!(
            l.on_packet(sa("198.18.1.3:5000"), None, t0, true),
            Verdict::Drop
        );
        l.sync(0, Some((1, 1)), t0);
        assert_eq!(
            l.on_packet(sa("198.18.1.3:5000"), Some((1, 2)), t0, true),
            Verdict::Drop
        );
    }

    #[test]
    fn asymmetric_accepts_anyone_and_sends_to_the_sdp() {
        let t0 = Instant::now();
        let a = sa("198.18.1.2:5000");
        let mut l = Latch::new(Policy::Asymmetric, Some(a), W);
        assert_eq!(l.source(), Source::Any);
        assert_eq!(
            l.on_packet(sa("198.18.1.3:1"), None, t0, true),
            Verdict::Forward
        );
        assert_eq!(l.endpoint(), Some(a));
    }

    #[test]
    fn readvertising_restarts_learning_unless_port_latching() {
        let t0 = Instant::now();
        let a = sa("198.18.1.2:5000");
        let b = sa("198.18.1.2:6000");
        let mut l = Latch::new(Policy::Symmetric, Some(a), W);
        l.on_packet(a, None, t0, true);
        l.tick(t0 + W);
        let mut kept = l.clone();
        l.readvertise(Some(b), false, 0);
        assert_eq!(
            (l.endpoint(), l.source()),
            (Some(b), Source::Learning(Some(b)))
        );
        kept.readvertise(Some(b), true, 0);
        assert_eq!(kept.endpoint(), Some(a));
    }

    #[test]
    fn forwarded_in_xdp_confirms_the_sdp_address() {
        let t0 = Instant::now();
        let a = sa("198.18.1.2:5000");
        let mut l = Latch::new(Policy::Symmetric, Some(a), W);
        assert!(!l.is_confirmed());
        l.sync(1, None, t0);
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

    #[test]
    fn candidates_are_ranked_and_the_better_one_displaces_during_the_window() {
        let t0 = Instant::now();
        let sdp = sa("198.18.1.2:5000");
        let mut l = Latch::new(Policy::Symmetric, Some(sdp), W);
        l.set_sip_source(Some("198.18.7.7".parse().unwrap()));
        let stranger = sa("198.18.1.66:6666");
        let sdp_ip = sa("198.18.1.2:5002");
        let sip_ip = sa("198.18.7.7:4000");
        assert_eq!(l.rank(stranger), Rank::Other);
        assert_eq!(l.rank(sdp_ip), Rank::SameIp);
        assert_eq!(l.rank(sip_ip), Rank::SameIp);
        assert_eq!(l.rank(sdp), Rank::Exact);
        let ms = |n| t0 + Duration::from_millis(n);
        // A stranger is forwarded but held: media still goes to the SDP
        // address, which the data plane still expects.
        assert_eq!(l.on_packet(stranger, None, ms(0), true), Verdict::Forward);
        assert_eq!(l.endpoint(), Some(sdp));
        assert_eq!(l.source(), Source::Learning(Some(sdp)));
        // Same IP as the SIP messages: better.
        assert_eq!(l.on_packet(sip_ip, None, ms(10), true), Verdict::Forward);
        assert_eq!(l.endpoint(), Some(sip_ip));
        // An equal (the SDP's IP, another port) does not displace, nor does
        // a worse one.
        assert_eq!(l.on_packet(sdp_ip, None, ms(20), true), Verdict::Drop);
        assert_eq!(l.on_packet(stranger, None, ms(30), true), Verdict::Drop);
        assert_eq!(l.endpoint(), Some(sip_ip));
        // The exact SDP address wins, and keeps it.
        assert_eq!(l.on_packet(sdp, None, ms(40), true), Verdict::Forward);
        assert_eq!(l.on_packet(sip_ip, None, ms(50), true), Verdict::Drop);
        assert_eq!(l.endpoint(), Some(sdp));
        // The window ran from the first packet: it closes on time.
        assert!(l.tick(t0 + W));
        assert_eq!(l.endpoint(), Some(sdp));
    }

    /// RTP bleed: a stranger who sends first, before the party whose SDP
    /// address and SIP source the relay knows, receives nothing — it is
    /// held, not served — and the party's first packet
    /// takes the stream, also when it comes through the data plane (which
    /// kept expecting the SDP address). Alone until the window closes, the
    /// held stranger latches (a party behind a NAT nobody announced).
    #[test]
    fn a_stranger_first_is_held_not_served() {
        let t0 = Instant::now();
        let sdp = sa("198.18.1.2:5000");
        let stranger = sa("198.18.1.66:6666");
        let ms = |n| t0 + Duration::from_millis(n);
        // Signalling said where the party is and where its SIP came from.
        let latch = || {
            let mut l = Latch::new(Policy::Symmetric, Some(sdp), W);
            l.set_sip_source(Some(sdp.ip()));
            l
        };
        // The party answers itself.
        let mut l = latch();
        assert_eq!(l.on_packet(stranger, None, ms(0), true), Verdict::Forward);
        assert_eq!(
            (l.endpoint(), l.source()),
            (Some(sdp), Source::Learning(Some(sdp)))
        );
        assert_eq!(l.on_packet(sdp, None, ms(10), true), Verdict::Forward);
        assert_eq!(l.on_packet(stranger, None, ms(20), true), Verdict::Drop);
        assert!(l.tick(ms(3_000)));
        assert_eq!(l.endpoint(), Some(sdp));
        // The party's packets forwarded by the data plane (never seen by
        // the daemon) displace the held stranger just the same.
        let mut x = latch();
        x.on_packet(stranger, None, ms(0), true);
        assert!(!x.sync(5, None, ms(10)));
        assert!(x.tick(ms(3_000)));
        assert_eq!(x.endpoint(), Some(sdp));
        assert_eq!(x.on_packet(stranger, None, ms(3_001), true), Verdict::Drop);
        // The held stranger's own packets, forwarded by the daemon and so
        // counted on the port, confirm nothing.
        let mut w = latch();
        for n in 0..3 {
            assert_eq!(w.on_packet(stranger, None, ms(n), true), Verdict::Forward);
        }
        assert!(w.needs_sync(stranger, None, ms(3)));
        assert!(!w.sync(3, None, ms(3)));
        assert_eq!(w.on_packet(stranger, None, ms(4), true), Verdict::Forward);
        assert_eq!(w.endpoint(), Some(sdp));
        // Alone for the whole window: it latches.
        let mut y = latch();
        y.on_packet(stranger, None, ms(0), true);
        assert_eq!(y.endpoint(), Some(sdp));
        assert!(y.tick(ms(3_000)));
        assert_eq!(y.endpoint(), Some(stranger));
        // Without an SDP address there is nothing to hold it against;
        // without the SIP source a NATed party matches nothing either:
        // the first sender is served.
        let mut z = Latch::new(Policy::Symmetric, None, W);
        z.on_packet(stranger, None, ms(0), true);
        assert_eq!(z.endpoint(), Some(stranger));
        let mut v = Latch::new(Policy::Symmetric, Some(sdp), W);
        v.on_packet(stranger, None, ms(0), true);
        assert_eq!(v.endpoint(), Some(stranger));
    }

    #[test]
    fn no_displacement_after_the_window() {
        let t0 = Instant::now();
        let sdp = sa("198.18.99.5:4000");
        let nat = sa("198.18.1.2:40000");
        let mut l = Latch::new(Policy::Symmetric, Some(sdp), W);
        l.set_sip_source(Some("198.18.1.2".parse().unwrap()));
        l.on_packet(sa("198.18.1.66:1"), None, t0, true);
        assert!(l.tick(t0 + W));
        // Even a better candidate is too late now.
        assert_eq!(l.on_packet(nat, None, t0 + W, true), Verdict::Drop);
        assert_eq!(l.on_packet(sdp, None, t0 + W, true), Verdict::Drop);
        assert_eq!(l.endpoint(), Some(sa("198.18.1.66:1")));
    }

    #[test]
    fn before_the_answer_only_known_addresses_are_accepted() {
        let t0 = Instant::now();
        let sdp = sa("198.18.99.5:4000");
        let mut l = Latch::new(Policy::Symmetric, Some(sdp), W);
        l.set_sip_source(Some("198.18.1.2".parse().unwrap()));
        // A stranger is neither forwarded nor latched, and does not start
        // the window.
        assert_eq!(
            l.on_packet(sa("198.18.1.66:1"), None, t0, false),
            Verdict::Drop
        );
        assert!(!l.is_confirmed());
        assert!(!l.tick(t0 + W));
        // The SIP source's IP is.
        let nat = sa("198.18.1.2:40000");
        assert_eq!(l.on_packet(nat, None, t0 + W, false), Verdict::Forward);
        assert_eq!(l.endpoint(), Some(nat));
        // A party nothing is known about (the answerer before its answer)
        // accepts nobody.
        let mut unknown = Latch::new(Policy::Symmetric, None, W);
        assert_eq!(
            unknown.on_packet(sa("198.18.2.2:6000"), None, t0, false),
            Verdict::Drop
        );
        assert_eq!(unknown.endpoint(), None);
        // After the answer, the NAT case: a source matching nothing latches.
        assert_eq!(
            unknown.on_packet(sa("198.18.2.2:6000"), None, t0, true),
            Verdict::Forward
        );
    }

    #[test]
    fn strict_source_without_an_address_accepts_nobody() {
        let t0 = Instant::now();
        let mut l = Latch::new(Policy::StrictSource, None, W);
        assert_eq!(
            l.on_packet(sa("198.18.1.3:5000"), None, t0, true),
            Verdict::Drop
        );
        assert_eq!(l.endpoint(), None);
    }

    #[test]
    fn sync_confirms_only_packets_forwarded_since_learning_restarted() {
        let t0 = Instant::now();
        let nat = sa("198.18.1.2:40000");
        let mut l = Latch::new(Policy::Symmetric, Some(sa("198.18.99.5:4000")), W);
        l.set_sip_source(Some(nat.ip()));
        l.on_packet(nat, Some((5, 1)), t0, true);
        l.sync(100, Some((5, 100)), t0 + W);
        assert_eq!(l.endpoint(), Some(nat));
        // A re-INVITE moves the SDP's port: learning restarts, and the 100
        // packets the data plane forwarded from the NAT before do not
        // confirm the new SDP address (the party is still behind its NAT).
        assert!(l.readvertise(Some(sa("198.18.99.5:4002")), false, 100));
        assert!(!l.sync(100, Some((5, 100)), t0 + W));
        assert!(!l.is_confirmed());
        assert_eq!(
            l.on_packet(nat, Some((5, 101)), t0 + W, true),
            Verdict::Forward
        );
        assert_eq!(l.endpoint(), Some(nat));
        // Packets forwarded after the restart do confirm what the data
        // plane expected.
        let mut fresh = Latch::new(Policy::Symmetric, Some(sa("198.18.1.2:5000")), W).based_at(7);
        assert!(!fresh.sync(7, None, t0));
        assert!(!fresh.is_confirmed());
        fresh.sync(8, None, t0);
        assert!(fresh.is_confirmed());
    }

    #[test]
    fn sync_follows_the_data_plane_when_latched() {
        let t0 = Instant::now();
        let a = sa("198.18.1.2:5000");
        let mut l = Latch::new(Policy::Symmetric, Some(a), W);
        l.on_packet(a, Some((9, 1)), t0, true);
        assert!(l.sync(10, Some((9, 10)), t0 + W), "the window closed");
        // Thousands of packets later, all forwarded by XDP.
        assert!(!l.sync(3000, Some((9, 3000)), t0 + W * 20));
        let moved = sa("198.18.1.2:5002");
        assert_eq!(
            l.on_packet(moved, Some((9, 11)), t0 + W * 20, true),
            Verdict::Drop
        );
        assert_eq!(
            l.on_packet(moved, Some((9, 3001)), t0 + W * 20, true),
            Verdict::Forward
        );
        // A new SSRC seen by the data plane changes what XDP hands over.
        assert!(l.sync(4000, Some((0x77, 1)), t0 + W * 30));
        assert_eq!(
            l.source(),
            Source::Latched {
                addr: moved,
                relatch_ssrc: Some(0x77)
            }
        );
    }

    #[test]
    fn counters_are_read_only_when_they_can_matter() {
        let t0 = Instant::now();
        let a = sa("198.18.1.2:5000");
        let stranger = sa("198.18.1.66:1");
        let mut l = Latch::new(Policy::Symmetric, Some(a), W);
        // The data plane may have forwarded from the SDP address.
        assert!(l.needs_sync(stranger, None, t0));
        l.on_packet(a, Some((5, 1)), t0, true);
        assert!(!l.needs_sync(stranger, None, t0));
        // The window may be over.
        assert!(l.needs_sync(stranger, None, t0 + W));
        l.sync(10, Some((5, 10)), t0 + W);
        // Latched: only a re-latch candidate (the stream's SSRC, from
        // elsewhere).
        assert!(l.needs_sync(stranger, Some((5, 11)), t0 + W));
        assert!(!l.needs_sync(stranger, Some((6, 11)), t0 + W));
        assert!(!l.needs_sync(stranger, None, t0 + W));
        assert!(!l.needs_sync(a, Some((5, 11)), t0 + W));
        // Nothing is known about an unanswered answerer: nothing to confirm.
        let unknown = Latch::new(Policy::Symmetric, None, W);
        assert!(!unknown.needs_sync(stranger, None, t0));
    }
}
