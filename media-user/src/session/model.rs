//! The call model, following ng's: call-id → monologues (one per SIP tag)
//! → media (one per m= line) → streams (RTP, RTCP) → data-plane routes.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Instant, SystemTime},
};

use super::latch::{Latch, Policy};
use crate::sdp::Direction;

/// One call.
#[derive(Debug)]
pub struct Call {
    pub id: String,
    pub created: SystemTime,
    pub created_at: Instant,
    pub last_signal: SystemTime,
    pub last_signal_at: Instant,
    /// Append-only: indices stay valid for the life of the call.
    pub monos: Vec<Mono>,
    /// An answer was seen.
    pub answered: bool,
    /// A `delete` with a delay is pending.
    pub delete_at: Option<Instant>,
    /// When the periodic tick next reads this call's counters.
    pub next_check: Instant,
    /// Packets, bytes and errors over its streams when the tick last read
    /// them: the rates `statistics` reports are sampled from these, not
    /// from a read of every stream (which at 100 000 calls held the
    /// engine for seconds).
    pub seen: (u64, u64, u64),
    /// When the quality watch next looks at its legs (`watch.rs`).
    pub next_quality: Instant,
    /// The quality watch of each party's leg, by party index (not kept in
    /// the call's record: a restart starts the watch again).
    pub watch: Vec<super::watch::LegWatch>,
    /// The digest of the record last kept for this call where it survives
    /// a restart (`persist.rs`); `None` while nothing is kept.
    pub persisted: Option<u64>,
}

impl Call {
    /// Both parties of party `mono`'s dialogue have given their SDP (an
    /// offer and its answer): until then only sources that match what
    /// signalling said about a party are accepted from it.
    pub fn dialogue_answered(&self, mono: usize) -> bool {
        let Some(m) = self.monos.get(mono) else {
            return false;
        };
        m.sdp_seen
            && m.peer
                .and_then(|p| self.monos.get(p))
                .is_some_and(|p| p.sdp_seen)
    }

    /// Some stream is still learning its peer's source.
    pub fn learning(&self) -> bool {
        self.monos.iter().any(|m| {
            m.media
                .iter()
                .any(|md| !md.rejected() && (md.rtp.is_learning() || md.rtcp.is_learning()))
        })
    }
}

/// What shapes latching and addressing for one party, from ng flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartyFlags {
    pub policy: Policy,
    pub port_latching: bool,
}

/// One party: a SIP tag and its media.
#[derive(Debug)]
pub struct Mono {
    /// Empty until the answer names the answerer's tag.
    pub tag: String,
    pub label: Option<String>,
    pub created: SystemTime,
    /// Interface facing this party, and the family used there.
    pub iface: usize,
    pub local: IpAddr,
    /// The other party of the dialogue.
    pub peer: Option<usize>,
    pub media: Vec<Media>,
    /// The last SDP body sent to this party, as a digest, and its o=
    /// version.
    pub sent_sdp: Option<SentSdp>,
    pub flags: PartyFlags,
    /// This party has given its SDP (an offer or an answer of its own);
    /// `false` for the answerer's side until its answer.
    pub sdp_seen: bool,
}

/// What is kept of an SDP body sent to a party: enough to tell whether the
/// next one differs (the o= version moves only then, RFC 3264 §8). A
/// digest, not the body: a call's bodies take kilobytes, in memory and in
/// its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentSdp {
    /// [`digest`] of the body.
    pub digest: u64,
    pub version: u64,
}

/// FNV-1a, 64 bits: stable across builds and platforms (it is kept in
/// call records, read by the next binary). Not collision-resistant: a
/// party that crafts a colliding re-offer only keeps its own change from
/// moving the o= version.
pub fn digest(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// One m= line of a party.
#[derive(Debug)]
pub struct Media {
    pub kind: String,
    pub protocol: String,
    /// RTP port of the relay's pair facing this party; `None` when rejected.
    pub port: Option<u16>,
    /// This party sends RTCP on the RTP port (negotiated rtcp-mux).
    pub mux: bool,
    /// This party's SDP offered/accepted a=rtcp-mux.
    pub mux_in_sdp: bool,
    pub direction: Direction,
    /// The party's SDP said c=0.0.0.0 (RFC 2543 hold).
    pub zero_address: bool,
    pub rtp: Latch,
    pub rtcp: Latch,
    /// RTP clock rate of the party's first payload format (from its SDP),
    /// the unit of its stream's jitter; `None` if unknown.
    pub clock_rate: Option<u32>,
    /// Port sharing: the remote endpoint the shared pair's lease was given
    /// for (the party's SDP RTP endpoint; for the answerer's side, bound at
    /// its answer). It names the stream on the shared pair for the
    /// stream's life; `None` on a port of its own, or not known yet.
    pub slot: Option<SocketAddr>,
    /// SSRCs the party's SDP announced for this media (`a=ssrc`): port
    /// sharing attributes packets from a new source by them.
    pub ssrcs: Vec<u32>,
}

impl Media {
    pub fn rejected(&self) -> bool {
        self.port.is_none()
    }

    /// On hold from this party's side: it will not send.
    pub fn held(&self) -> bool {
        self.zero_address || matches!(self.direction, Direction::Inactive | Direction::RecvOnly)
    }

    /// Local RTP and RTCP addresses of the pair.
    pub fn locals(&self, addr: IpAddr) -> Option<(SocketAddr, SocketAddr)> {
        self.port
            .map(|p| (SocketAddr::new(addr, p), SocketAddr::new(addr, p + 1)))
    }
}

/// Which stream of which media of which party owns a local port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The call's id, shared by its streams' entries (a restart at scale
    /// registers hundreds of thousands: one allocation per call, not per
    /// entry).
    pub call: std::sync::Arc<str>,
    pub mono: usize,
    pub media: usize,
    /// 0 = RTP, 1 = RTCP.
    pub component: u8,
}
