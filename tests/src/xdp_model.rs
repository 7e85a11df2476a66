//! A host reference model of the relay XDP program's decision, for the
//! differential test (`tests/tests/xdp_differential.rs`).
//!
//! Written from the data plane's documented contract (README "The data
//! plane", DESIGN.md "Data-plane principles"), not from the program's
//! code: none of `media_ebpf`'s packet-processing functions is called here
//! (only its shared map types, to read the flows a test installed, and
//! [`Outcome`] to name the counters). Checksums of rewritten packets are a
//! full recompute with etherparse.
//!
//! Input: the frame, the ingress interface, the installed flows, the
//! routes/neighbours/interfaces of the relay namespace ([`Network`]) and
//! whether a daemon runs ([`Daemon`]). Output ([`Verdict`]): the XDP
//! action, the outcome counter, the frame as it must leave, and what the
//! forwarded packet adds to its flow's counters ([`Forwarded`]).
//!
//! The contract, in order:
//! 1. Only Ethernet II with EtherType IPv4 or IPv6 is looked at (`not_ip`
//!    otherwise, VLAN tags included); a frame too short for its headers is
//!    `malformed`.
//! 2. IPv4: version 4, IHL ≥ 5 (`malformed`); IHL > 5 is `ip_options`;
//!    MF or a fragment offset is `fragment` (DF and the reserved bit are
//!    not); protocol ≠ UDP is `not_udp`; the header checksum must verify
//!    (`bad_ip_checksum`); total length ≥ 28 and inside the frame, and the
//!    UDP length equal to the IP payload length (`malformed`). Bytes after
//!    the IP packet (Ethernet padding) are allowed and never read.
//! 3. IPv6: version 6 (`malformed`); next header UDP (`not_udp`: every
//!    extension header, fragments included); payload length ≥ 8 and inside
//!    the frame, UDP length equal to it, UDP checksum not 0 (`malformed`).
//! 4. Flow: the key (local address, local port, family) with any source;
//!    if there is none, the key with this packet's source address/port
//!    (a shared port). None: `no_flow`.
//! 5. Source check (an expected source of the other family never matches);
//!    a mismatch goes to the daemon while learning, or when it is RTP of
//!    the stream's re-latch SSRC; otherwise it is dropped
//!    (`source_rejected`).
//! 6. A flow of the other family (IPv4↔IPv6 bridging) is forwarded like
//!    any other (see 9), except an IPv4 datagram without a UDP checksum
//!    (0): `family_change`, to the daemon (IPv6 needs a checksum).
//! 7. TTL / hop limit ≤ 1: dropped (`ttl_exceeded`).
//! 8. Next hop as a router would (forwarding on the ingress interface,
//!    longest prefix, egress MTU for the packet as it leaves — 20 bytes
//!    longer from IPv4 to IPv6, 20 shorter back —, neighbour): `fib_failed` or
//!    `neighbour_miss` to the daemon; an egress interface the relay is not
//!    attached to: `egress_not_allowed`, to the daemon.
//! 9. Rewrite: MACs of the egress interface and the next hop, the flow's
//!    addresses and ports, TTL − 1, IPv4 header checksum and UDP checksum
//!    recomputed; an IPv4 UDP checksum of 0 stays 0, a wrong UDP checksum
//!    stays exactly as wrong (the relay never reads payloads). Bridged, the
//!    IP header is replaced by one of the flow's family: IPv6 with the
//!    IPv4 TOS as traffic class, flow label 0, hop limit TTL − 1; IPv4
//!    with the traffic class as TOS, ID 0, DF, TTL hop limit − 1, no
//!    options; EtherType to match; the UDP header and payload (and any
//!    Ethernet padding) follow unchanged but for ports and checksum; the
//!    flow's byte counter counts the arriving IP packet. `XDP_TX`
//!    back out of the ingress interface, `XDP_REDIRECT` otherwise.
//!
//! "To the daemon" is `XDP_PASS` while a daemon runs and `XDP_DROP`
//! (`daemon_absent`) while none does; so is `no_flow` for a port inside the
//! daemon's media range. An RTP header is read only from inside the UDP
//! payload (12 bytes or more, version 2, not an RTCP packet type 192–223,
//! RFC 5761 §4).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use etherparse::{UdpHeader, checksum::Sum16BitWords};
use media_ebpf::{
    Flow, FlowKey, Outcome,
    flow::{
        CHECK_SOURCE_ADDR, CHECK_SOURCE_PORT, FAMILY_V4, FAMILY_V6, RTP, SOURCE_LEARNING,
        SSRC_RELATCH,
    },
};

/// An XDP action, with the values of `enum xdp_action`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Aborted = 0,
    Drop = 1,
    Pass = 2,
    Tx = 3,
    Redirect = 4,
}

impl Action {
    /// The action a program run returned.
    pub fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Aborted => "XDP_ABORTED",
            Self::Drop => "XDP_DROP",
            Self::Pass => "XDP_PASS",
            Self::Tx => "XDP_TX",
            Self::Redirect => "XDP_REDIRECT",
        }
    }
}

/// A network interface of the relay namespace.
#[derive(Clone, Debug)]
pub struct Interface {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u16,
    /// The relay program is attached (it may redirect there).
    pub attached: bool,
    /// IP forwarding enabled on it (the FIB lookup from an ingress
    /// interface needs it).
    pub forwarding: bool,
}

/// A route: `net/prefix` out of `ifindex`, via `via` or on link.
#[derive(Clone, Debug)]
pub struct Route {
    pub net: IpAddr,
    pub prefix: u8,
    pub ifindex: u32,
    pub via: Option<IpAddr>,
}

/// A resolved neighbour.
#[derive(Clone, Debug)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// What the relay namespace's FIB and neighbour tables hold.
#[derive(Clone, Debug, Default)]
pub struct Network {
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
    /// The namespace's own addresses (not forwarded to).
    pub local: Vec<IpAddr>,
}

/// Why the next hop could not be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoHop {
    /// Route known, neighbour not resolved.
    Neighbour,
    /// No route, a local address, forwarding off, MTU exceeded.
    Failed,
}

/// The next hop of a forwarded packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

fn prefix_match(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

impl Network {
    pub fn interface(&self, ifindex: u32) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.ifindex == ifindex)
    }

    /// Where a router arriving on `ingress` would send an IP packet of
    /// `ip_len` bytes to `dst`.
    pub fn next_hop(&self, ingress: u32, dst: IpAddr, ip_len: u16) -> Result<Hop, NoHop> {
        if !self.interface(ingress).is_some_and(|i| i.forwarding) {
            return Err(NoHop::Failed);
        }
        if self.local.contains(&dst) {
            return Err(NoHop::Failed);
        }
        let route = self
            .routes
            .iter()
            .filter(|r| prefix_match(r.net, r.prefix, dst))
            .max_by_key(|r| r.prefix)
            .ok_or(NoHop::Failed)?;
        let out = self.interface(route.ifindex).ok_or(NoHop::Failed)?;
        if ip_len > out.mtu {
            return Err(NoHop::Failed);
        }
        let nh = route.via.unwrap_or(dst);
        let n = self
            .neighbours
            .iter()
            .find(|n| n.ip == nh && n.ifindex == out.ifindex)
            .ok_or(NoHop::Neighbour)?;
        Ok(Hop {
            ifindex: out.ifindex,
            smac: out.mac,
            dmac: n.mac,
        })
    }
}

/// What the program knows of the daemon (the `CONTROL` word).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Daemon {
    pub running: bool,
    /// Its media port range (inclusive).
    pub ports: (u16, u16),
    /// It holds a flow for every port of its calls
    /// (`CONTROL_UNHELD_DROP`): a packet for the range without a flow is
    /// for no call.
    pub every_port_held: bool,
}

/// What a forwarded packet adds to its flow's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forwarded {
    pub key: FlowKey,
    /// IP packet length (header included).
    pub ip_len: u16,
    /// The packet's RTP (SSRC, sequence number), for an RTP flow.
    pub rtp: Option<(u32, u16)>,
    /// For a flow without RTP (a stream's RTCP port): whether the packet
    /// is an RTCP sender report, and whether it carries a report block the
    /// data plane keeps (see [`rtcp_report`]); `None` for an RTP flow.
    pub rtcp: Option<(bool, bool)>,
    /// For an RTP flow, a packet that is not RTP (RTCP multiplexed on the
    /// port, RFC 5761, or anything else): the same, for the flow's
    /// rtcp-mux record (`FLOW_RTCP`); `None` for RTP and on a flow without
    /// RTP.
    pub mux_rtcp: Option<(bool, bool)>,
}

/// The model's verdict on one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub outcome: Outcome,
    /// The frame as the program must leave it (the input when untouched).
    pub output: Vec<u8>,
    pub forwarded: Option<Forwarded>,
}

/// A flow's counters as the model expects them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    /// Last forwarded RTP header (RTP flows).
    pub last_rtp: Option<(u32, u16)>,
    /// RTP packets forwarded (what the sequence window counts as received).
    pub rtp_packets: u32,
    /// A flow without RTP was forwarded on: its quality slot holds what it
    /// saw of RTCP (`RtcpSeen`), not a sequence window.
    pub rtcp_flow: bool,
    /// RTCP sender reports and report blocks seen.
    pub sender_reports: u32,
    pub report_blocks: u32,
    /// RTP flows: RTCP sender reports and report blocks seen multiplexed
    /// on the port (the flow's `FLOW_RTCP` record).
    pub mux_sender_reports: u32,
    pub mux_report_blocks: u32,
}

impl Counters {
    pub fn account(&mut self, f: &Forwarded) {
        self.packets += 1;
        self.bytes += u64::from(f.ip_len);
        if let Some(r) = f.rtp {
            self.last_rtp = Some(r);
            self.rtp_packets += 1;
        }
        if let Some((sr, block)) = f.rtcp {
            self.rtcp_flow = true;
            self.sender_reports += u32::from(sr);
            self.report_blocks += u32::from(block);
        }
        if let Some((sr, block)) = f.mux_rtcp {
            self.mux_sender_reports += u32::from(sr);
            self.mux_report_blocks += u32::from(block);
        }
    }
}

/// The reference model: flows, network and daemon state.
pub struct Model<'a> {
    pub flows: &'a HashMap<FlowKey, Flow>,
    pub network: &'a Network,
    pub daemon: Daemon,
}

mod bridge;

/// What the checks need to know of a parsed UDP packet.
struct Packet {
    family: u8,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    ttl: u8,
    ip_len: u16,
    /// Offset of the UDP header in the frame.
    l4: usize,
    /// UDP length (header included).
    udp_len: usize,
}

const ETH: usize = 14;

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn v4(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn v6(b: &[u8], at: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(a)
}

/// The UDP packet in `frame`, or the outcome of a frame that is not one
/// the relay may forward.
fn parse(frame: &[u8]) -> Result<Packet, Outcome> {
    if frame.len() < ETH {
        return Err(Outcome::Malformed);
    }
    match be16(frame, 12) {
        0x0800 => parse_v4(frame),
        0x86dd => parse_v6(frame),
        _ => Err(Outcome::NotIp),
    }
}

fn parse_v4(f: &[u8]) -> Result<Packet, Outcome> {
    if f.len() < ETH + 20 {
        return Err(Outcome::Malformed);
    }
    let ip = &f[ETH..ETH + 20];
    let (version, ihl) = (ip[0] >> 4, ip[0] & 0x0f);
    if version != 4 || ihl < 5 {
        return Err(Outcome::Malformed);
    }
    if ihl > 5 {
        return Err(Outcome::IpOptions);
    }
    let frags = be16(ip, 6);
    let more_fragments = frags & 0x2000 != 0;
    let offset = frags & 0x1fff;
    if more_fragments || offset != 0 {
        return Err(Outcome::Fragment);
    }
    if ip[9] != 17 {
        return Err(Outcome::NotUdp);
    }
    if !ipv4_header_valid(ip) {
        return Err(Outcome::BadIpChecksum);
    }
    let tot_len = usize::from(be16(ip, 2));
    if tot_len < 20 + 8 || ETH + tot_len > f.len() {
        return Err(Outcome::Malformed);
    }
    let l4 = ETH + 20;
    let udp_len = usize::from(be16(f, l4 + 4));
    if udp_len != tot_len - 20 {
        return Err(Outcome::Malformed);
    }
    Ok(Packet {
        family: FAMILY_V4,
        src: v4(ip, 12).into(),
        dst: v4(ip, 16).into(),
        sport: be16(f, l4),
        dport: be16(f, l4 + 2),
        ttl: ip[8],
        ip_len: tot_len as u16,
        l4,
        udp_len,
    })
}

fn parse_v6(f: &[u8]) -> Result<Packet, Outcome> {
    if f.len() < ETH + 40 {
        return Err(Outcome::Malformed);
    }
    let ip = &f[ETH..ETH + 40];
    if ip[0] >> 4 != 6 {
        return Err(Outcome::Malformed);
    }
    if ip[6] != 17 {
        return Err(Outcome::NotUdp);
    }
    let payload_len = usize::from(be16(ip, 4));
    if payload_len < 8 || ETH + 40 + payload_len > f.len() {
        return Err(Outcome::Malformed);
    }
    let l4 = ETH + 40;
    let udp_len = usize::from(be16(f, l4 + 4));
    if udp_len != payload_len || be16(f, l4 + 6) == 0 {
        return Err(Outcome::Malformed);
    }
    Ok(Packet {
        family: FAMILY_V6,
        src: v6(ip, 8).into(),
        dst: v6(ip, 24).into(),
        sport: be16(f, l4),
        dport: be16(f, l4 + 2),
        ttl: ip[7],
        ip_len: (40 + payload_len) as u16,
        l4,
        udp_len,
    })
}

/// Whether an IPv4 header verifies: recomputed over the header with its
/// checksum field zeroed, the checksum is the one it carries (either
/// representation of a one's complement zero counts, RFC 1071).
fn ipv4_header_valid(hdr: &[u8]) -> bool {
    let want = ipv4_header_checksum(hdr);
    let got = be16(hdr, 10);
    got == want || (want == 0 && got == 0xffff)
}

/// The IPv4 header checksum of `hdr` recomputed (its checksum field read
/// as zero), by etherparse's RFC 1071 sum.
pub fn ipv4_header_checksum(hdr: &[u8]) -> u16 {
    let mut h = hdr.to_vec();
    h[10] = 0;
    h[11] = 0;
    Sum16BitWords::new().add_slice(&h).ones_complement().to_be()
}

fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

fn flow_ip(bytes: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()
    } else {
        Ipv6Addr::from(*bytes).into()
    }
}

/// The RTP header (SSRC, sequence number) of a UDP payload, if it carries
/// one.
pub fn rtp_header(payload: &[u8]) -> Option<(u32, u16)> {
    if payload.len() < 12 || payload[0] >> 6 != 2 {
        return None;
    }
    // RTCP multiplexed on the RTP port: packet types 192–223 read as
    // marker + 64..96 (RFC 5761 §4).
    if (64..96).contains(&(payload[1] & 0x7f)) {
        return None;
    }
    Some((
        u32::from_be_bytes([payload[8], payload[9], payload[10], payload[11]]),
        be16(payload, 2),
    ))
}

/// What the data plane keeps of an RTCP packet on a flow without RTP, or
/// of a packet that is not RTP on an RTP flow (rtcp-mux) (RFC 3550 §6.4: a compound packet starts with an SR or an RR): (it is a
/// sender report — version 2, type 200, the 28 bytes of header and sender
/// info; it carries a first report block the relay keeps — report count
/// ≥ 1 and the block's 24 bytes inside the datagram, after the 28 of an
/// SR or the 8 of an RR).
pub fn rtcp_report(payload: &[u8]) -> (bool, bool) {
    if payload.len() < 8 || payload[0] >> 6 != 2 {
        return (false, false);
    }
    let count = payload[0] & 0x1f;
    match payload[1] {
        200 if payload.len() >= 28 => (true, count > 0 && payload.len() >= 52),
        201 => (false, count > 0 && payload.len() >= 32),
        _ => (false, false),
    }
}

/// `a + b` modulo 0xFFFF, the one's complement sum of two 16-bit values.
fn oc_add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The UDP checksum of the rewritten packet: the full recompute, plus
/// whatever error the arriving checksum had (a relay that never reads
/// payloads can neither detect nor repair it), sent as RFC 768 wants (a
/// one's complement zero as 0xFFFF).
pub(crate) fn udp_checksum_out(full_in: u16, carried_in: u16, full_out: u16) -> u16 {
    // error = carried_in − full_in (mod 0xFFFF); out = full_out + error.
    let out = oc_add(full_out, oc_add(carried_in, !full_in));
    if out == 0 { 0xffff } else { out }
}

pub(crate) fn udp_full_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let header = UdpHeader {
        source_port: be16(udp, 0),
        destination_port: be16(udp, 2),
        length: be16(udp, 4),
        checksum: 0,
    };
    let payload = &udp[8..];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => header
            .calc_checksum_ipv4_raw(s.octets(), d.octets(), payload)
            .expect("a UDP datagram fits its length field"),
        (IpAddr::V6(s), IpAddr::V6(d)) => header
            .calc_checksum_ipv6_raw(s.octets(), d.octets(), payload)
            .expect("a UDP datagram fits its length field"),
        _ => unreachable!("one family per packet"),
    }
}

impl Model<'_> {
    /// The program's expected verdict on `frame` arriving on `ingress`.
    pub fn run(&self, frame: &[u8], ingress: u32) -> Verdict {
        let untouched = |action, outcome| Verdict {
            action,
            outcome,
            output: frame.to_vec(),
            forwarded: None,
        };
        let pkt = match parse(frame) {
            Ok(p) => p,
            Err(outcome) => return untouched(Action::Pass, outcome),
        };
        let to_daemon = |outcome| {
            if self.daemon.running {
                untouched(Action::Pass, outcome)
            } else {
                untouched(Action::Drop, Outcome::DaemonAbsent)
            }
        };
        let Some((key, flow)) = self.lookup(&pkt) else {
            let (lo, hi) = self.daemon.ports;
            let in_range = (lo..=hi).contains(&pkt.dport);
            return if in_range && !self.daemon.running {
                untouched(Action::Drop, Outcome::DaemonAbsent)
            } else if in_range && self.daemon.every_port_held {
                // No call holds the port: nothing goes back to a prober.
                untouched(Action::Drop, Outcome::NoFlow)
            } else {
                untouched(Action::Pass, Outcome::NoFlow)
            };
        };
        let payload = &frame[pkt.l4 + 8..pkt.l4 + pkt.udp_len];
        let rtp = rtp_header(payload);
        if !source_matches(flow, &pkt) {
            if flow.flags & SOURCE_LEARNING != 0 {
                return to_daemon(Outcome::SourceToDaemon);
            }
            if flow.flags & SSRC_RELATCH != 0
                && rtp.is_some_and(|(ssrc, _)| ssrc.to_be_bytes() == flow.ssrc)
            {
                return to_daemon(Outcome::SourceToDaemon);
            }
            return untouched(Action::Drop, Outcome::SourceRejected);
        }
        let bridged = flow.family != pkt.family;
        let known = flow.family == FAMILY_V4 || flow.family == FAMILY_V6;
        let no_check = pkt.family == FAMILY_V4 && be16(frame, pkt.l4 + 6) == 0;
        if bridged && (no_check || !known) {
            return to_daemon(Outcome::FamilyChange);
        }
        if pkt.ttl <= 1 {
            return untouched(Action::Drop, Outcome::TtlExceeded);
        }
        let new_src = flow_ip(&flow.src_addr, flow.family);
        let new_dst = flow_ip(&flow.dst_addr, flow.family);
        let out_len = match (bridged, flow.family == FAMILY_V6) {
            (false, _) => pkt.ip_len,
            (true, true) => pkt.ip_len.saturating_add(20),
            (true, false) => pkt.ip_len.saturating_sub(20),
        };
        let hop = match self.network.next_hop(ingress, new_dst, out_len) {
            Ok(h) => h,
            Err(NoHop::Neighbour) => return to_daemon(Outcome::NeighbourMiss),
            Err(NoHop::Failed) => return to_daemon(Outcome::FibFailed),
        };
        if hop.ifindex != ingress
            && !self
                .network
                .interface(hop.ifindex)
                .is_some_and(|i| i.attached)
        {
            return to_daemon(Outcome::EgressNotAllowed);
        }
        let output = if bridged {
            bridge::rewrite(frame, &pkt, flow, new_src, new_dst, &hop)
        } else {
            rewrite(frame, &pkt, flow, new_src, new_dst, &hop)
        };
        let (action, outcome) = if hop.ifindex == ingress {
            (Action::Tx, Outcome::Transmitted)
        } else {
            (Action::Redirect, Outcome::Redirected)
        };
        Verdict {
            action,
            outcome,
            output,
            forwarded: Some(Forwarded {
                key,
                ip_len: pkt.ip_len,
                rtp: if flow.flags & RTP != 0 { rtp } else { None },
                rtcp: (flow.flags & RTP == 0).then(|| rtcp_report(payload)),
                mux_rtcp: (flow.flags & RTP != 0 && rtp.is_none()).then(|| rtcp_report(payload)),
            }),
        }
    }

    /// The flow of a packet: its port's any-source flow, else the flow of
    /// its source on a shared port.
    fn lookup(&self, p: &Packet) -> Option<(FlowKey, &Flow)> {
        let any = FlowKey {
            addr: addr16(p.dst),
            remote_addr: [0; 16],
            port: p.dport.to_be_bytes(),
            remote_port: [0; 2],
            family: p.family,
            reserved: [0; 3],
        };
        if let Some(f) = self.flows.get(&any) {
            return Some((any, f));
        }
        let from = FlowKey {
            remote_addr: addr16(p.src),
            remote_port: p.sport.to_be_bytes(),
            ..any
        };
        self.flows.get(&from).map(|f| (from, f))
    }
}

fn source_matches(flow: &Flow, p: &Packet) -> bool {
    if flow.flags & CHECK_SOURCE_ADDR == 0 {
        return true;
    }
    if flow.expect_family != p.family || flow_ip(&flow.expect_addr, flow.expect_family) != p.src {
        return false;
    }
    flow.flags & CHECK_SOURCE_PORT == 0 || u16::from_be_bytes(flow.expect_port) == p.sport
}

fn rewrite(
    frame: &[u8],
    p: &Packet,
    flow: &Flow,
    new_src: IpAddr,
    new_dst: IpAddr,
    hop: &Hop,
) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[0..6].copy_from_slice(&hop.dmac);
    out[6..12].copy_from_slice(&hop.smac);
    let l4 = p.l4;
    let udp_end = l4 + p.udp_len;
    let carried = be16(frame, l4 + 6);
    let full_in = udp_full_checksum(p.src, p.dst, &frame[l4..udp_end]);
    match (new_src, new_dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out[ETH + 8] = p.ttl - 1;
            out[ETH + 12..ETH + 16].copy_from_slice(&s.octets());
            out[ETH + 16..ETH + 20].copy_from_slice(&d.octets());
            let c = ipv4_header_checksum(&out[ETH..ETH + 20]);
            out[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out[ETH + 7] = p.ttl - 1;
            out[ETH + 8..ETH + 24].copy_from_slice(&s.octets());
            out[ETH + 24..ETH + 40].copy_from_slice(&d.octets());
        }
        _ => unreachable!("a flow's addresses share its family"),
    }
    out[l4..l4 + 2].copy_from_slice(&flow.src_port);
    out[l4 + 2..l4 + 4].copy_from_slice(&flow.dst_port);
    let check = if p.family == FAMILY_V4 && carried == 0 {
        // "No checksum" stays so.
        0
    } else {
        let full_out = udp_full_checksum(new_src, new_dst, &out[l4..udp_end]);
        udp_checksum_out(full_in, carried, full_out)
    };
    out[l4 + 6..l4 + 8].copy_from_slice(&check.to_be_bytes());
    out
}

#[cfg(test)]
mod tests;
