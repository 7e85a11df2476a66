//! What the session layer needs from the media plane, as a trait: the real
//! one binds sockets and programs XDP flows (`crate::media`), the tests'
//! one records calls. The session layer is its single writer.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::SystemTime,
};

pub use super::latch::Source;

/// Where one stream's packets arrive: a local port of its own, or a
/// shared local port (`port-sharing`) and the stream's slot there — the
/// remote endpoint its lease was given for (`sharing.rs`), which names the
/// stream on that port for its whole life, whatever source it latches on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum At {
    Own(SocketAddr),
    Shared { local: SocketAddr, slot: SocketAddr },
}

impl At {
    #[must_use]
    pub const fn local(self) -> SocketAddr {
        match self {
            Self::Own(l) | Self::Shared { local: l, .. } => l,
        }
    }
}

/// Forwarding for packets arriving on one local address/port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The relay's address/port on the other leg: packets leave from here.
    pub out: SocketAddr,
    /// The other leg's peer.
    pub dest: SocketAddr,
    /// Which sources are accepted.
    pub source: Source,
    /// The stream carries RTP (records SSRC/sequence; allows re-latch).
    pub rtp: bool,
    /// The RTP clock rate of what arrives (Hz; 0 unknown): the unit its
    /// jitter and delay are measured in.
    pub clock_rate: u32,
    /// rtcp-mux → separate RTCP: arriving RTCP goes out from/to here
    /// instead (RFC 5761 §4 packet-type demultiplexing; userspace only).
    pub demux_rtcp: Option<(SocketAddr, SocketAddr)>,
}

/// Counters of one local address/port: what arrived from the party and
/// was forwarded (kernel and userspace paths together).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    /// Packets that arrived but could not be forwarded (no route yet,
    /// refused source, send failure).
    pub errors: u64,
    /// Packets the userspace path dropped for waiting longer than its
    /// staleness bound (`userspace-max-delay`): late media is not sent.
    pub stale: u64,
    /// Forwarded by XDP (part of `packets`).
    pub kernel_packets: u64,
    /// Bytes forwarded by XDP (part of `bytes`).
    pub kernel_bytes: u64,
    /// RTP streams: packets expected from the sequence numbers that
    /// arrived (RFC 3550 §A.3: extended highest − base + 1, per sequence
    /// window), over both paths.
    pub rtp_expected: u64,
    /// RTP streams: RTP packets that arrived, duplicates included.
    pub rtp_received: u64,
    pub last_packet: Option<SystemTime>,
    /// Last RTP (SSRC, sequence) forwarded.
    pub last_rtp: Option<(u32, u16)>,
    /// RTP streams: how the network before the relay treated what arrived
    /// (from the path that carried it last); `None` before any RTP.
    pub quality: Option<Quality>,
    /// RTCP streams: the reports that passed (both paths, the latest of
    /// each kind); `None` before any.
    pub rtcp: Option<RtcpReports>,
}

/// What the relay saw of the RTCP a party sent through one port: its last
/// sender report and its last report block (about the stream it
/// receives), with the times they passed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtcpReports {
    pub sender_reports: u32,
    /// (sender SSRC, NTP timestamp middle 32 bits, when it passed).
    pub last_sr: Option<(u32, u32, SystemTime)>,
    pub blocks: u32,
    pub last_block: Option<ReportBlock>,
}

/// One RTCP report block (RFC 3550 §6.4.1) and when it passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportBlock {
    pub reporter: u32,
    pub source: u32,
    /// Fraction lost × 256.
    pub fraction_lost: u8,
    pub cumulative_lost: i32,
    pub highest: u32,
    /// The reporter's jitter, in timestamp units of what it receives.
    pub jitter: u32,
    pub lsr: u32,
    pub dlsr: u32,
    pub at: SystemTime,
}

impl RtcpReports {
    /// What two ports saw of one party's RTCP (its RTCP port, and its RTP
    /// port with rtcp-mux): counts added, the latest of each kind.
    #[must_use]
    pub fn either(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(Self {
                sender_reports: a.sender_reports.wrapping_add(b.sender_reports),
                last_sr: match (a.last_sr, b.last_sr) {
                    (Some(x), Some(y)) => Some(if y.2 > x.2 { y } else { x }),
                    (x, y) => x.or(y),
                },
                blocks: a.blocks.wrapping_add(b.blocks),
                last_block: match (a.last_block, b.last_block) {
                    (Some(x), Some(y)) => Some(if y.at > x.at { y } else { x }),
                    (x, y) => x.or(y),
                },
            }),
            (a, b) => a.or(b),
        }
    }

    /// From a record whose times are on a clock where `time_of` converts
    /// them; the later of `self` and the record's, kind by kind.
    #[must_use]
    pub fn merge(self, seen: &media_ebpf::RtcpSeen, time_of: impl Fn(u64) -> SystemTime) -> Self {
        use media_ebpf::quality::{RTCP_BLOCK_SEEN, RTCP_SR_SEEN};
        let mut out = self;
        out.sender_reports = out.sender_reports.wrapping_add(seen.sr_count);
        out.blocks = out.blocks.wrapping_add(seen.block_count);
        if seen.flags & RTCP_SR_SEEN != 0 {
            let at = time_of(seen.sr_at());
            if out.last_sr.is_none_or(|(_, _, t)| t < at) {
                out.last_sr = Some((seen.sr_ssrc, seen.sr_ntp_mid, at));
            }
        }
        if seen.flags & RTCP_BLOCK_SEEN != 0 {
            let at = time_of(seen.block_at());
            if out.last_block.is_none_or(|b| b.at < at) {
                out.last_block = Some(ReportBlock {
                    reporter: seen.reporter,
                    source: seen.source,
                    fraction_lost: (seen.lost >> 24) as u8,
                    cumulative_lost: seen.cumulative_lost(),
                    highest: seen.highest,
                    jitter: seen.jitter,
                    lsr: seen.lsr,
                    dlsr: seen.dlsr,
                    at,
                });
            }
        }
        out
    }
}

/// Which path measured a stream's [`Quality`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Xdp,
    Userspace,
}

impl Path {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Userspace => "userspace",
        }
    }
}

/// The quality figures of one stream at arrival, in time units (see
/// `media_ebpf::quality` for how each is measured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quality {
    pub path: Path,
    /// The payload's clock rate (Hz); 0 when unknown, and then the
    /// timing figures that need it are `None`.
    pub clock_rate: u32,
    /// Interarrival jitter (RFC 3550 §6.4.1), µs.
    pub jitter_us: Option<u32>,
    /// Relative transit of the last packet above the lowest of the last
    /// 4–8 s, µs: a queue building on the way in.
    pub delay_above_min_us: Option<u32>,
    /// Largest time between two arrivals, µs.
    pub max_gap_us: u32,
    /// Gaps in the sequence at arrival, and the longest (packets).
    pub gaps: u32,
    pub longest_gap: u32,
    pub duplicates: u32,
    pub reordered: u32,
}

impl Quality {
    /// The figures of `q` in time units; `None` if it saw no RTP.
    #[must_use]
    pub fn of(q: &media_ebpf::StreamQuality, path: Path, clock_rate: u32) -> Option<Self> {
        if !q.seq.is_initialised() {
            return None;
        }
        // From 1/16 timestamp units: 8 µs resolution at 8 kHz.
        let us_q4 = |q4: u32| {
            (clock_rate > 0 && q.transit_valid())
                .then(|| (u64::from(q4) * 1_000_000 / (16 * u64::from(clock_rate))) as u32)
        };
        let us = |units: u32| us_q4(units.saturating_mul(16));
        Some(Self {
            path,
            clock_rate,
            jitter_us: us_q4(q.jitter_q4),
            delay_above_min_us: us(q.delay_above_min()),
            max_gap_us: q.max_gap_us,
            gaps: q.gap_count(),
            longest_gap: q.longest_gap(),
            duplicates: q.duplicates,
            reordered: q.reordered,
        })
    }
}

impl Counters {
    /// RTP packets lost before reaching the relay: expected − received,
    /// clamped at zero (duplicates can outnumber losses).
    #[must_use]
    pub const fn lost(&self) -> u64 {
        self.rtp_expected.saturating_sub(self.rtp_received)
    }
}

pub trait Backend {
    /// Bind the pair `port`, `port + 1` on `addr` (the port range is the
    /// caller's business). Fails if either is taken.
    fn open_pair(&mut self, addr: IpAddr, port: u16) -> io::Result<()>;
    /// A pair an earlier run of the daemon held, taken over at adoption:
    /// like [`open_pair`](Self::open_pair), except that a backend may
    /// bind the sockets later, in the background (the data plane forwards
    /// meanwhile). By default it binds them at once.
    fn adopt_pair(&mut self, addr: IpAddr, port: u16) -> io::Result<()> {
        self.open_pair(addr, port)
    }
    /// Release both sockets of a pair (and any route on them).
    fn close_pair(&mut self, addr: IpAddr, port: u16);
    /// Install, replace (`Some`) or remove (`None`) the route for packets
    /// arriving on `local`. Replacing is atomic: no packet is lost.
    fn set_route(&mut self, local: SocketAddr, route: Option<Route>);
    fn counters(&self, local: SocketAddr) -> Counters;
    /// Forward `data`, which arrived on `arrived`, from the relay's `from`
    /// socket to `to` (packets the session layer itself decided to forward
    /// while latching); counted on `arrived` like any forwarded packet.
    fn forward(&mut self, arrived: SocketAddr, from: SocketAddr, to: SocketAddr, data: &[u8]);
    /// A shared pair (`port-sharing`): bound once, whatever the number
    /// of streams on it; each call adds a reference, [`close_shared`]
    /// drops one and the last closes the sockets.
    ///
    /// [`close_shared`]: Self::close_shared
    fn open_shared(&mut self, addr: IpAddr, port: u16) -> io::Result<()> {
        self.open_pair(addr, port)
    }
    /// [`open_shared`](Self::open_shared) for an adopted call: like
    /// [`adopt_pair`](Self::adopt_pair), a backend may bind a newly opened
    /// pair's sockets later, in the background. By default at once.
    fn adopt_shared(&mut self, addr: IpAddr, port: u16) -> io::Result<()> {
        self.open_shared(addr, port)
    }
    /// Room for `additional` more shared streams (adopting many calls at
    /// once); a hint, nothing by default.
    fn reserve_shared(&mut self, additional: usize) {
        let _ = additional;
    }
    /// One reference to a shared pair less.
    fn close_shared(&mut self, addr: IpAddr, port: u16) {
        self.close_pair(addr, port);
    }
    /// [`set_route`](Self::set_route) for a stream `at` a port of its own
    /// or a shared one: a shared stream's route is installed under its
    /// source (the route's expected or latched endpoint; an XDP flow
    /// keyed `FlowKey::shared(local, source)`), moved when that changes.
    fn set_route_at(&mut self, at: At, route: Option<Route>) {
        if let At::Own(local) = at {
            self.set_route(local, route);
        }
    }
    /// A shared stream's lease ends: forget its route, flows and
    /// counters (its pair's sockets stay while other streams hold it).
    fn drop_stream(&mut self, at: At) {
        if let At::Own(local) = at {
            self.set_route(local, None);
        }
    }
    /// [`counters`](Self::counters) of the stream `at`.
    fn counters_at(&self, at: At) -> Counters {
        match at {
            At::Own(local) => self.counters(local),
            At::Shared { .. } => Counters::default(),
        }
    }
    /// [`forward`](Self::forward), counted on the stream `arrived`.
    fn forward_at(&mut self, arrived: At, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        self.forward(arrived.local(), from, to, data);
    }
    /// The local address the kernel would use to reach `peer`.
    fn route_source(&self, peer: IpAddr) -> Option<IpAddr>;
    /// Figures for `statistics`: name → value (e.g. installed XDP flows,
    /// bound sockets, data-plane outcome counters).
    fn describe(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
    /// Keep (`Some`) or forget (`None`) the engine's record of call `id`
    /// where it survives a restart of the daemon (the pinned `SESSIONS`
    /// map: memory, beside the flows). Failures are the backend's to log
    /// and count: a call that cannot be kept still works until a restart.
    fn persist(&mut self, _id: &str, _record: Option<&[u8]>) {}
    /// The records an earlier run kept, each once (read at start-up).
    fn take_persisted(&mut self) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Counters;

    #[test]
    fn lost_is_expected_minus_received_clamped() {
        let c = |rtp_expected, rtp_received| Counters {
            rtp_expected,
            rtp_received,
            ..Counters::default()
        };
        assert_eq!(c(100, 97).lost(), 3);
        assert_eq!(c(100, 100).lost(), 0);
        // Duplicates can outnumber losses.
        assert_eq!(c(100, 102).lost(), 0);
        assert_eq!(Counters::default().lost(), 0);
    }
}
