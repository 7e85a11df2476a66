//! What the session layer needs from the media plane, as a trait: the real
//! one binds sockets and programs XDP flows (`crate::media`), the tests'
//! one records calls. The session layer is its single writer.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::SystemTime,
};

pub use super::latch::Source;

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
