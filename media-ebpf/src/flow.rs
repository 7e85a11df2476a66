//! A flow: what to do with UDP packets arriving on one local address/port.
//!
//! The control plane installs one [`Flow`] per direction per stream, keyed
//! by where the packet arrives ([`FlowKey`]); the data plane only reads it.
//! Per-flow counters live apart, in [`FlowStats`], so that updating a flow in
//! place never races with (or resets) the data plane's counting.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// [`FlowKey::family`] / [`Flow::family`] value for IPv4.
pub const FAMILY_V4: u8 = 4;
/// [`FlowKey::family`] / [`Flow::family`] value for IPv6.
pub const FAMILY_V6: u8 = 6;

/// [`Flow::flags`]: drop packets whose source address is not
/// [`Flow::expect_addr`].
pub const CHECK_SOURCE_ADDR: u8 = 1 << 0;
/// [`Flow::flags`]: drop packets whose source port is not
/// [`Flow::expect_port`] (only meaningful with [`CHECK_SOURCE_ADDR`]).
pub const CHECK_SOURCE_PORT: u8 = 1 << 1;
/// [`Flow::flags`]: the stream is still learning its peer's real address
/// (symmetric RTP behind NAT, RFC 4961): a source-check mismatch goes to the
/// stack — the daemon's socket — instead of being dropped, so userspace can
/// latch onto it.
pub const SOURCE_LEARNING: u8 = 1 << 2;
/// [`Flow::flags`]: the flow carries RTP: the data plane records the SSRC
/// and sequence number of what it forwards ([`FlowStats`]) and accounts
/// sequence numbers for loss ([`crate::SeqWindow`], `FLOW_SEQ`).
pub const RTP: u8 = 1 << 3;
/// [`Flow::flags`]: after latching, a mismatching packet whose RTP SSRC is
/// [`Flow::ssrc`] goes to the stack instead of being dropped: userspace
/// re-latches only on sequence continuity (a NAT rebinding mid-call), so a
/// third party can neither steal nor bleed the stream.
pub const SSRC_RELATCH: u8 = 1 << 4;

/// Where a packet arrives: local address, local UDP port and family, and
/// — for a local port shared by several calls — the remote endpoint it
/// comes from.
///
/// A port of its own (the usual case) is keyed with the remote zero: any
/// source. A shared port (cloud addressing with few forwarded ports) is
/// keyed per remote endpoint. The data plane looks up the any-source key
/// first and the remote's key only when that misses, so a port of its own
/// costs one lookup as before.
///
/// 40 bytes, no padding; 4-byte aligned so the data plane can build and
/// compare it a word at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Local address; IPv4 uses the first four bytes, the rest stay zero.
    pub addr: [u8; 16],
    /// Remote address of a shared port's flow; all zero: any source.
    pub remote_addr: [u8; 16],
    /// Local UDP port, network byte order.
    pub port: [u8; 2],
    /// Remote UDP port of a shared port's flow (network byte order); zero
    /// with [`FlowKey::remote_addr`].
    pub remote_port: [u8; 2],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero (explicit padding, part of the hashed key).
    pub reserved: [u8; 3],
}

/// What to do with a packet matching a [`FlowKey`]: rewrite it so that it
/// leaves from the relay's address/port on the other leg towards the other
/// leg's peer.
///
/// 72 bytes, no padding; 8-byte aligned (as the kernel aligns map values)
/// so the data plane reads its addresses in whole words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// New source address: the relay's own address on the outbound leg.
    pub src_addr: [u8; 16],
    /// New destination address: the outbound leg's peer.
    pub dst_addr: [u8; 16],
    /// Expected source address of arriving packets (see [`CHECK_SOURCE_ADDR`]).
    pub expect_addr: [u8; 16],
    /// New source port (network byte order).
    pub src_port: [u8; 2],
    /// New destination port (network byte order).
    pub dst_port: [u8; 2],
    /// Expected source port of arriving packets (network byte order).
    pub expect_port: [u8; 2],
    /// Family of `src_addr`/`dst_addr`: [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// [`CHECK_SOURCE_ADDR`] | [`CHECK_SOURCE_PORT`].
    pub flags: u8,
    /// Index of this flow's [`FlowStats`] in `FLOW_STATS` (native byte order).
    pub stats_slot: [u8; 4],
    /// RTP SSRC allowed to re-latch (see [`SSRC_RELATCH`]), as on the wire.
    pub ssrc: [u8; 4],
    /// Family of `expect_addr` ([`FAMILY_V4`] or [`FAMILY_V6`]) when
    /// [`CHECK_SOURCE_ADDR`] is set. The flow table refuses a flow whose
    /// expected source family differs from its key's, and the data plane
    /// compares it too: an IPv6 source must never be matched on its first
    /// four bytes at an IPv4 port.
    pub expect_family: u8,
    /// Always zero.
    pub reserved: [u8; 3],
    /// The RTP clock rate of the stream's payload (Hz, native byte order),
    /// for interarrival jitter in timestamp units; 0 when unknown.
    pub clock_rate: [u8; 4],
}

/// Per-flow counters, one copy per CPU, summed by the reader.
///
/// 32 bytes, naturally aligned, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Packets forwarded by the data plane.
    pub packets: u64,
    /// Bytes forwarded (IP packet length).
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last forwarded packet,
    /// 0 if none.
    pub last_seen_ns: u64,
    /// For [`RTP`] flows: SSRC and sequence number of the last forwarded
    /// packet, as on the wire; meaningful only with [`STATS_RTP_SEEN`] in
    /// `rtp` (an SSRC of 0 is a valid SSRC).
    pub last_ssrc: [u8; 4],
    pub last_seq: [u8; 2],
    /// [`STATS_RTP_SEEN`] once `last_ssrc`/`last_seq` hold a packet's.
    pub rtp: u8,
    /// Always zero.
    pub reserved: u8,
}

/// [`FlowStats::rtp`]: `last_ssrc` and `last_seq` are a real packet's.
pub const STATS_RTP_SEEN: u8 = 1;

fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = [0; 16];
            a[..4].copy_from_slice(&v4.octets());
            (a, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

fn ip_from(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

impl FlowKey {
    /// The key for packets arriving on `local` from any source. IPv4-mapped
    /// IPv6 addresses are keyed as IPv4, which is how they appear on the
    /// wire.
    #[must_use]
    pub fn new(local: SocketAddr) -> Self {
        let (addr, family) = addr_bytes(local.ip().to_canonical());
        Self {
            addr,
            remote_addr: [0; 16],
            port: local.port().to_be_bytes(),
            remote_port: [0; 2],
            family,
            reserved: [0; 3],
        }
    }

    /// The key for packets arriving on a shared `local` port from `remote`
    /// (of the same family).
    #[must_use]
    pub fn shared(local: SocketAddr, remote: SocketAddr) -> Self {
        let (remote_addr, _) = addr_bytes(remote.ip().to_canonical());
        Self {
            remote_addr,
            remote_port: remote.port().to_be_bytes(),
            ..Self::new(local)
        }
    }

    /// The remote endpoint of a shared port's key; `None` for any source.
    #[must_use]
    pub fn remote(&self) -> Option<SocketAddr> {
        (self.remote_addr != [0; 16] || self.remote_port != [0; 2]).then(|| {
            SocketAddr::new(
                ip_from(&self.remote_addr, self.family),
                u16::from_be_bytes(self.remote_port),
            )
        })
    }

    /// The local socket address this key stands for.
    #[must_use]
    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(
            ip_from(&self.addr, self.family),
            u16::from_be_bytes(self.port),
        )
    }
}

impl Flow {
    /// A flow sending from `relay` (the relay's own address/port on the
    /// outbound leg) to `peer`, with no source check.
    ///
    /// Both addresses must be of the same family; `stats_slot` is filled in
    /// by the flow table when the flow is installed.
    #[must_use]
    pub fn new(relay: SocketAddr, peer: SocketAddr) -> Self {
        let (src_addr, family) = addr_bytes(relay.ip().to_canonical());
        let (dst_addr, _) = addr_bytes(peer.ip().to_canonical());
        Self {
            src_addr,
            dst_addr,
            expect_addr: [0; 16],
            src_port: relay.port().to_be_bytes(),
            dst_port: peer.port().to_be_bytes(),
            expect_port: [0; 2],
            family,
            flags: 0,
            stats_slot: [0; 4],
            ssrc: [0; 4],
            expect_family: 0,
            reserved: [0; 3],
            clock_rate: [0; 4],
        }
    }

    /// Accept packets only from `source` (address and port).
    #[must_use]
    pub fn with_source(mut self, source: SocketAddr) -> Self {
        let (a, family) = addr_bytes(source.ip().to_canonical());
        self.expect_addr = a;
        self.expect_family = family;
        self.expect_port = source.port().to_be_bytes();
        self.flags |= CHECK_SOURCE_ADDR | CHECK_SOURCE_PORT;
        self
    }

    /// Accept packets only from `source`'s address, any port.
    #[must_use]
    pub fn with_source_addr(mut self, source: IpAddr) -> Self {
        let (a, family) = addr_bytes(source.to_canonical());
        self.expect_addr = a;
        self.expect_family = family;
        self.expect_port = [0; 2];
        self.flags = (self.flags | CHECK_SOURCE_ADDR) & !CHECK_SOURCE_PORT;
        self
    }

    /// While learning, hand source mismatches to the daemon instead of
    /// dropping them ([`SOURCE_LEARNING`]).
    #[must_use]
    pub fn learning(mut self, learning: bool) -> Self {
        if learning {
            self.flags |= SOURCE_LEARNING;
        } else {
            self.flags &= !SOURCE_LEARNING;
        }
        self
    }

    /// The flow carries RTP: record SSRC and sequence numbers ([`RTP`]).
    #[must_use]
    pub fn rtp(mut self) -> Self {
        self.flags |= RTP;
        self
    }

    /// Let mismatching packets of RTP stream `ssrc` reach the daemon for a
    /// re-latch decision ([`SSRC_RELATCH`]).
    #[must_use]
    pub fn with_relatch_ssrc(mut self, ssrc: u32) -> Self {
        self.ssrc = ssrc.to_be_bytes();
        self.flags |= SSRC_RELATCH;
        self
    }

    /// The relay's address/port packets leave from.
    #[must_use]
    pub fn relay(&self) -> SocketAddr {
        SocketAddr::new(
            ip_from(&self.src_addr, self.family),
            u16::from_be_bytes(self.src_port),
        )
    }

    /// The peer packets are sent to.
    #[must_use]
    pub fn peer(&self) -> SocketAddr {
        SocketAddr::new(
            ip_from(&self.dst_addr, self.family),
            u16::from_be_bytes(self.dst_port),
        )
    }

    /// Whether the relay and peer addresses share one family, i.e. whether
    /// the two addresses can be used together at all.
    #[must_use]
    pub fn is_consistent(relay: SocketAddr, peer: SocketAddr) -> bool {
        relay.ip().to_canonical().is_ipv4() == peer.ip().to_canonical().is_ipv4()
    }

    /// The RTP clock rate the stream's jitter is measured in (Hz).
    #[must_use]
    pub fn with_clock_rate(mut self, hz: u32) -> Self {
        self.clock_rate = hz.to_ne_bytes();
        self
    }

    /// The expected source, if the flow checks one; a port of 0 means any.
    /// Its family is [`Flow::expect_family`], which a valid flow shares
    /// with its key (the packets' family), not necessarily with its own.
    #[must_use]
    pub fn expected_source(&self) -> Option<SocketAddr> {
        if self.flags & CHECK_SOURCE_ADDR == 0 {
            return None;
        }
        let ip = ip_from(&self.expect_addr, self.expect_family);
        let port = if self.flags & CHECK_SOURCE_PORT == 0 {
            0
        } else {
            u16::from_be_bytes(self.expect_port)
        };
        Some(SocketAddr::new(ip, port))
    }

    /// The stats slot as a number.
    #[must_use]
    pub const fn slot(&self) -> u32 {
        u32::from_ne_bytes(self.stats_slot)
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], only byte arrays and u8s: every bit pattern is a
    // valid value and there is no padding.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Flow {}
    // SAFETY: #[repr(C)], three u64s and 8 bytes: no padding, any bit
    // pattern is valid.
    unsafe impl aya::Pod for super::FlowStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 40);
        assert_eq!(core::mem::size_of::<Flow>(), 72);
        assert_eq!(core::mem::align_of::<Flow>(), 8);
        assert_eq!(core::mem::size_of::<FlowStats>(), 32);
    }

    #[test]
    fn key_round_trips_and_canonicalises_mapped_v4() {
        let a: SocketAddr = "198.18.0.1:30000".parse().unwrap();
        let k = FlowKey::new(a);
        assert_eq!(k.family, FAMILY_V4);
        assert_eq!(k.local(), a);
        let mapped: SocketAddr = "[::ffff:198.18.0.1]:30000".parse().unwrap();
        assert_eq!(FlowKey::new(mapped), k);
        let b: SocketAddr = "[2001:2::1]:30002".parse().unwrap();
        assert_eq!(FlowKey::new(b).local(), b);
        assert_eq!(FlowKey::new(b).family, FAMILY_V6);
        assert_eq!(FlowKey::new(a).remote(), None);
        let r: SocketAddr = "198.18.1.2:4000".parse().unwrap();
        let shared = FlowKey::shared(a, r);
        assert_eq!((shared.local(), shared.remote()), (a, Some(r)));
        assert_ne!(shared, FlowKey::new(a));
    }

    #[test]
    fn flow_accessors() {
        let relay: SocketAddr = "198.18.1.1:30002".parse().unwrap();
        let peer: SocketAddr = "198.18.1.2:4000".parse().unwrap();
        let src: SocketAddr = "198.18.0.2:5000".parse().unwrap();
        let f = Flow::new(relay, peer).with_source(src);
        assert_eq!(f.relay(), relay);
        assert_eq!(f.peer(), peer);
        assert_eq!(f.expected_source(), Some(src));
        assert_eq!(f.expect_family, FAMILY_V4);
        let g = f.with_source_addr(src.ip());
        assert_eq!(g.expected_source(), Some(SocketAddr::new(src.ip(), 0)));
        assert_eq!(Flow::new(relay, peer).expected_source(), None);
        let v6: SocketAddr = "[2001:2::5]:7000".parse().unwrap();
        assert_eq!(
            Flow::new(relay, peer).with_source(v6).expect_family,
            FAMILY_V6
        );
    }
}
