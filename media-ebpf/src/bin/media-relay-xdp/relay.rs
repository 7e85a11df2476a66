//! The relay program: one packet in, one explicit outcome out.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::bpf_ktime_get_ns,
    macros::xdp,
    programs::XdpContext,
};
use aya_log_ebpf::error;
use media_ebpf::{
    Flow, FlowKey, Outcome, RtcpSeen, StreamQuality,
    csum::{Delta, header_ok, udp_update},
    flow::{
        CHECK_SOURCE_ADDR, CHECK_SOURCE_PORT, FAMILY_V4, FAMILY_V6, RTP, SOURCE_LEARNING,
        SSRC_RELATCH, STATS_RTP_SEEN,
    },
    maps::{CONTROL_NO_QUALITY, CONTROL_UNHELD_DROP},
    quality::RTCP_WORDS,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::{
    bridge::{self, Bridged},
    fib::{self, FibError, NextHop},
    maps::{CONTROL, EGRESS_DEVS, FLOW_QUALITY, FLOW_RTCP, FLOW_STATS, FLOWS, count},
    packet::{added, be16, copy, header, removed, replace, same, sum, word, zero},
};

const UDP: u8 = 17;

#[xdp]
pub fn media_relay(ctx: XdpContext) -> u32 {
    let (outcome, action) = relay(&ctx);
    count(outcome);
    action
}

#[inline(always)]
fn pass(outcome: Outcome) -> (Outcome, u32) {
    (outcome, XDP_PASS)
}

/// The daemon's port range when no daemon runs (it crashed, stopped or is
/// being replaced); `None` while one does.
#[inline(always)]
fn daemon_absent() -> Option<(u16, u16)> {
    let c = CONTROL.get(0)?;
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    (c.daemon_until_ns < now).then_some((c.port_min, c.port_max))
}

/// A packet for one of the relay's calls that needs the daemon: to the
/// stack (the daemon's socket) while a daemon runs; dropped while none
/// does, since the port has no socket then and the stack would answer the
/// peer with ICMP port unreachable.
#[inline(always)]
pub(crate) fn to_daemon(outcome: Outcome) -> (Outcome, u32) {
    if daemon_absent().is_some() {
        (Outcome::DaemonAbsent, XDP_DROP)
    } else {
        pass(outcome)
    }
}

/// A packet with no flow: the stack's, unless it is for the relay's media
/// port range while no daemon runs (see [`to_daemon`]), or while one runs
/// that holds a flow for every port of its calls
/// ([`CONTROL_UNHELD_DROP`]): then no call holds the port, and the stack
/// would answer a prober with ICMP port unreachable.
#[inline(always)]
fn no_flow(dport: [u8; 2]) -> (Outcome, u32) {
    let Some(c) = CONTROL.get(0) else {
        return pass(Outcome::NoFlow);
    };
    if !(c.port_min..=c.port_max).contains(&u16::from_be_bytes(dport)) {
        return pass(Outcome::NoFlow);
    }
    if daemon_absent().is_some() {
        (Outcome::DaemonAbsent, XDP_DROP)
    } else if c.flags & CONTROL_UNHELD_DROP != 0 {
        (Outcome::NoFlow, XDP_DROP)
    } else {
        pass(Outcome::NoFlow)
    }
}

#[inline(always)]
fn relay(ctx: &XdpContext) -> (Outcome, u32) {
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return pass(Outcome::Malformed);
    };
    // SAFETY: `header` checked that the Ethernet header is inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ipv4 as u16 {
        ipv4(ctx, eth)
    } else if ether_type == EtherType::Ipv6 as u16 {
        ipv6(ctx, eth)
    } else {
        // ARP, VLAN tags we do not handle, everything else: the stack's.
        pass(Outcome::NotIp)
    }
}

/// Source check: may a packet of `family` from `src` (`N` address words)
/// and raw port word `sport` use this flow?
///
/// # Safety
/// `src` is a 2-aligned pointer to `2 * N` readable bytes.
#[inline(always)]
unsafe fn source_ok<const N: usize>(flow: &Flow, family: u8, src: *const u8, sport: u16) -> bool {
    if flow.flags & CHECK_SOURCE_ADDR == 0 {
        return true;
    }
    // An expected source of the other family never matches (the flow table
    // refuses such flows; this keeps a stray one from matching on a prefix).
    if flow.expect_family != family {
        return false;
    }
    // SAFETY: `src` per the caller; `expect_addr` is 16 bytes at an 8-aligned
    // offset and N <= 8.
    if !unsafe { same::<N>(src, flow.expect_addr.as_ptr()) } {
        return false;
    }
    // SAFETY: `expect_port` is at an even offset of an 8-aligned struct.
    flow.flags & CHECK_SOURCE_PORT == 0 || sport == unsafe { word(flow.expect_port.as_ptr()) }
}

/// The RTP header at `off`, if the UDP payload from `off` to `end` (frame
/// offsets) carries one: SSRC, sequence number and timestamp as raw wire
/// words. RTCP multiplexed on the RTP port (packet types 192–223, RFC 5761
/// §4) is not RTP. Bytes past the datagram (Ethernet padding of a short
/// frame) are never read as one.
#[inline(always)]
pub(crate) fn rtp_header(ctx: &XdpContext, off: usize, end: usize) -> Option<RtpHeader> {
    if off + 12 > end {
        return None;
    }
    let start = ctx.data();
    if start + off + 12 > ctx.data_end() {
        return None;
    }
    let p = (start + off) as *const u8;
    // SAFETY: the 12 bytes at `p` are inside the packet (checked above).
    unsafe {
        let (b0, b1) = (*p, *p.add(1));
        if b0 & 0xc0 != 0x80 || (64..96).contains(&(b1 & 0x7f)) {
            return None;
        }
        Some(RtpHeader {
            ssrc: [*p.add(8), *p.add(9), *p.add(10), *p.add(11)],
            seq: [*p.add(2), *p.add(3)],
            ts: [*p.add(4), *p.add(5), *p.add(6), *p.add(7)],
        })
    }
}

/// The first [`RTCP_WORDS`] 32-bit words of the UDP payload from `off`
/// to `end` (frame offsets; as on the wire), or as many whole words as
/// the datagram has of the 13, 8 or 7 an SR with a block, an RR with a
/// block or an SR without one need; the count. Ethernet padding is never
/// read.
#[inline(always)]
fn rtcp_words(ctx: &XdpContext, off: usize, end: usize) -> ([u32; RTCP_WORDS], usize) {
    let mut w = [0u32; RTCP_WORDS];
    let start = ctx.data() + off;
    let data_end = ctx.data_end();
    let len = end.saturating_sub(off);
    let n = if len >= 4 * RTCP_WORDS && start + 4 * RTCP_WORDS <= data_end {
        RTCP_WORDS
    } else if len >= 32 && start + 32 <= data_end {
        8
    } else if len >= 28 && start + 28 <= data_end {
        7
    } else {
        return (w, 0);
    };
    let p = start as *const u32;
    // SAFETY: the first `n` words at `p` are inside the packet (checked
    // above); unaligned reads.
    unsafe {
        for (i, v) in w.iter_mut().enumerate().take(7) {
            *v = p.add(i).read_unaligned();
        }
        if n >= 8 {
            w[7] = p.add(7).read_unaligned();
        }
        if n == RTCP_WORDS {
            for (i, v) in w.iter_mut().enumerate().skip(8) {
                *v = p.add(i).read_unaligned();
            }
        }
    }
    (w, n)
}

/// The fields of an RTP header the data plane reads, as on the wire.
#[derive(Clone, Copy)]
pub(crate) struct RtpHeader {
    ssrc: [u8; 4],
    seq: [u8; 2],
    ts: [u8; 4],
}

/// Account a forwarded packet to its flow; `rtp` is its RTP header, for
/// RTP flows; `payload` the UDP payload's start and end offsets (RTCP
/// reports: on an RTCP flow, or multiplexed on an RTP flow).
#[inline(always)]
pub(crate) fn account(
    ctx: &XdpContext,
    flow: &Flow,
    ip_len: u16,
    rtp: Option<RtpHeader>,
    payload: (usize, usize),
) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match FLOW_STATS.get_ptr_mut(flow.slot()) {
        Some(s) => {
            // SAFETY: per-CPU slot, see `maps::count`.
            unsafe {
                (*s).packets += 1;
                (*s).bytes += u64::from(ip_len);
                (*s).last_seen_ns = now;
                if let Some(h) = rtp {
                    (*s).last_ssrc = h.ssrc;
                    (*s).last_seq = h.seq;
                    (*s).rtp = STATS_RTP_SEEN;
                }
            }
        }
        // A slot outside FLOW_STATS is a control-plane bug: rare by
        // construction, so worth a log line.
        None => error!(ctx, "flow stats slot {} out of range", flow.slot()),
    }
    // Quality telemetry switched off by the daemon: the counters above
    // only.
    if CONTROL
        .get(0)
        .is_some_and(|c| c.flags & CONTROL_NO_QUALITY != 0)
    {
        return;
    }
    if let Some(h) = rtp {
        if let Some(w) = FLOW_QUALITY.get_ptr_mut(flow.slot()) {
            // SAFETY: an array value stays valid for the program run. It
            // is shared between CPUs and updated without a lock: two CPUs
            // forwarding one flow at the same instant may lose an update,
            // which skews that flow's figures by a packet, never memory
            // safety. (One flow is one 5-tuple: RSS keeps it on one
            // queue.)
            unsafe {
                (*w).update(
                    u32::from_be_bytes(h.ssrc),
                    u16::from_be_bytes(h.seq),
                    u32::from_be_bytes(h.ts),
                    now,
                    u32::from_ne_bytes(flow.clock_rate),
                );
            };
        }
        return;
    }
    // Not RTP: RTCP reports, kept by an RTCP flow in its quality slot, by
    // an RTP flow (RTCP multiplexed on its port, RFC 5761) in FLOW_RTCP,
    // whose slot its StreamQuality leaves free. `RtcpSeen::update` reads
    // SRs and RRs only; anything else (STUN, a cut or foreign packet)
    // leaves the record as it was.
    let record = if flow.flags & RTP == 0 {
        FLOW_QUALITY
            .get_ptr_mut(flow.slot())
            .map(<*mut StreamQuality>::cast::<RtcpSeen>)
    } else {
        FLOW_RTCP.get_ptr_mut(flow.slot())
    };
    if let Some(r) = record {
        let (words, n) = rtcp_words(ctx, payload.0, payload.1);
        // SAFETY: as above; an RTCP flow's FLOW_QUALITY slot holds an
        // RtcpSeen (same size, u32s only, alignment 4: any bits are
        // valid).
        unsafe { (*r).update(&words, n, now) };
    }
}

/// Rewrite the Ethernet header and send the packet on its way.
#[inline(always)]
pub(crate) fn transmit(ctx: &XdpContext, eth: *mut EthHdr, hop: &NextHop) -> (Outcome, u32) {
    // SAFETY: `eth` was bounds-checked by the caller; the MAC fields are at
    // even offsets of the frame and of `NextHop`.
    unsafe {
        copy::<3>((&raw mut (*eth).dst_addr).cast(), hop.dmac.as_ptr());
        copy::<3>((&raw mut (*eth).src_addr).cast(), hop.smac.as_ptr());
    }
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        return (Outcome::Transmitted, XDP_TX);
    }
    match EGRESS_DEVS.redirect(hop.ifindex, 0) {
        Ok(action) => (Outcome::Redirected, action),
        // Removed between the check in `next_hop` and now: the packet is
        // already rewritten, so it must not reach the stack.
        Err(_) => (Outcome::EgressNotAllowed, XDP_DROP),
    }
}

/// FIB lookup plus the egress policy, before anything is written.
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    flow: &Flow,
    ipv6: bool,
    tot_len: u16,
    tos: u8,
    flowinfo: u32,
) -> Result<NextHop, Outcome> {
    let hop = match fib::lookup(ctx, flow, ipv6, tot_len, tos, flowinfo) {
        Ok(hop) => hop,
        Err(FibError::NoNeighbour) => return Err(Outcome::NeighbourMiss),
        Err(FibError::Failed) => return Err(Outcome::FibFailed),
    };
    if hop.ifindex != ctx.ingress_ifindex() as u32 && EGRESS_DEVS.get(hop.ifindex).is_none() {
        return Err(Outcome::EgressNotAllowed);
    }
    Ok(hop)
}

/// What the checks need to know about an arriving packet.
struct Arrival {
    /// Source and destination address (`N` words each) in the packet.
    src: *const u8,
    dst: *const u8,
    /// Source port as a raw word, destination port as on the wire.
    sport: u16,
    dport: [u8; 2],
    /// TTL / hop limit.
    ttl: u8,
    /// IP packet length; IPv4 TOS or IPv6 traffic class (either family);
    /// IPv6 traffic class + flow label as on the wire without the version
    /// (an IPv4 packet's TOS as the traffic class, flow label 0).
    ip_len: u16,
    tos: u8,
    flowinfo: u32,
    /// An IPv4 UDP datagram without a checksum (0): never bridged to IPv6
    /// in XDP, which would have to read the payload to compute one.
    no_udp_check: bool,
    /// Offset of the UDP payload in the frame, and of its end (the end of
    /// the IP packet; anything after it is padding).
    payload: usize,
    payload_end: usize,
}

/// Flow lookup, source check, family, TTL and next hop, for either family
/// (`N` address words). `Err` carries the final verdict; nothing has been
/// written to the packet either way.
///
/// # Safety
/// `a.src` and `a.dst` point at `2 * N` bytes inside the packet, 2-aligned.
#[inline(always)]
unsafe fn decide<'a, const N: usize>(
    ctx: &XdpContext,
    family: u8,
    a: &Arrival,
) -> Result<(&'a Flow, NextHop), (Outcome, u32)> {
    let mut slot = core::mem::MaybeUninit::<FlowKey>::uninit();
    // SAFETY: FlowKey is bytes only (valid all-zero), 4-aligned, 40 bytes.
    let key = unsafe { zero(&mut slot) };
    // SAFETY: `key.addr` is 16 bytes at offset 0 of the 4-aligned key and
    // N <= 8; `a.dst` per this function's contract.
    unsafe { copy::<N>(key.addr.as_mut_ptr(), a.dst) };
    key.port = a.dport;
    key.family = family;
    // A port of its own: one lookup, any source (the key by reference,
    // `&mut FlowKey: Borrow<FlowKey>`: no copy). A shared port has no
    // any-source entry: then look up this source's own flow.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by reference: `*key` would copy the 40-byte key onto the 512-byte BPF stack"
    )]
    let flow = match FLOWS.get_ptr(&*key) {
        Some(flow) => flow,
        None => {
            // SAFETY: `remote_addr` is 16 bytes at offset 16 of the
            // 4-aligned key and N <= 8, `remote_port` is at offset 34;
            // `a.src` per this function's contract.
            unsafe {
                copy::<N>(key.remote_addr.as_mut_ptr(), a.src);
                (&raw mut key.remote_port).cast::<u16>().write(a.sport);
            }
            let Some(flow) = FLOWS.get_ptr(key) else {
                return Err(no_flow(a.dport));
            };
            flow
        }
    };
    // SAFETY: a value pointer from a hash-map lookup stays valid for this
    // program run (RCU); the control plane replaces values atomically.
    let flow = unsafe { &*flow };
    // SAFETY: per this function's contract.
    if !unsafe { source_ok::<N>(flow, family, a.src, a.sport) } {
        // Learning: the daemon decides whether this is the peer behind NAT.
        if flow.flags & SOURCE_LEARNING != 0 {
            return Err(to_daemon(Outcome::SourceToDaemon));
        }
        // Latched: only the stream's own SSRC may ask for a re-latch.
        if flow.flags & SSRC_RELATCH != 0
            && let Some(RtpHeader { ssrc, .. }) = rtp_header(ctx, a.payload, a.payload_end)
            && ssrc == flow.ssrc
        {
            return Err(to_daemon(Outcome::SourceToDaemon));
        }
        return Err((Outcome::SourceRejected, XDP_DROP));
    }
    // IPv4↔IPv6 bridging: the packet leaves in the flow's family, its IP
    // header 20 bytes longer or shorter (see `bridge`). Not in XDP: an
    // IPv4 datagram without a UDP checksum (IPv6 needs one, computed over
    // the payload), or a flow of no known family.
    let out_v6 = flow.family == FAMILY_V6;
    let ip_len = if flow.family == family {
        a.ip_len
    } else if a.no_udp_check || (flow.family != FAMILY_V4 && !out_v6) {
        return Err(to_daemon(Outcome::FamilyChange));
    } else if out_v6 {
        a.ip_len.saturating_add(20)
    } else {
        a.ip_len.saturating_sub(20)
    };
    // Forwarded as a router forwards, in both paths: the hop limit goes
    // down by one, and a packet that has none left is dropped (a loop
    // between relays dies out).
    if a.ttl <= 1 {
        return Err((Outcome::TtlExceeded, XDP_DROP));
    }
    match next_hop(ctx, flow, out_v6, ip_len, a.tos, a.flowinfo) {
        Ok(hop) => Ok((flow, hop)),
        Err(outcome) => Err(to_daemon(outcome)),
    }
}

#[inline(never)]
fn ipv4(ctx: &XdpContext, eth: *mut EthHdr) -> (Outcome, u32) {
    let Some(ip) = header::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return pass(Outcome::Malformed);
    };
    // Every dereference of `ip` and `udp` below is sound for the same
    // reason: both were bounds-checked by `header`, and their fields sit
    // at even offsets of an even frame address (see `packet`).
    // SAFETY: `ip` is bounds-checked; byte fields.
    let (vihl, frags, proto, ttl, tos, tot_len) = unsafe {
        (
            (*ip).vihl,
            be16((*ip).frags),
            (*ip).proto,
            (*ip).ttl,
            (*ip).tos,
            be16((*ip).tot_len),
        )
    };
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return pass(Outcome::Malformed);
    }
    if vihl & 0x0f != 5 {
        return pass(Outcome::IpOptions);
    }
    // MF set or a non-zero offset (RFC 791 §3.1).
    if frags & 0x3fff != 0 {
        return pass(Outcome::Fragment);
    }
    if proto != UDP {
        return pass(Outcome::NotUdp);
    }
    // The header's own checksum, before anything trusts its fields (an
    // incremental update of a corrupt header would make it look valid).
    // SAFETY: `header` checked the 20 bytes at `ip`, at an even offset.
    if !header_ok(unsafe { sum::<10>(ip.cast::<u8>()) }) {
        return pass(Outcome::BadIpChecksum);
    }
    let frame_len = ctx.data_end() - ctx.data();
    if usize::from(tot_len) < Ipv4Hdr::LEN + UdpHdr::LEN
        || EthHdr::LEN + usize::from(tot_len) > frame_len
    {
        return pass(Outcome::Malformed);
    }
    let Some(udp) = header::<UdpHdr>(ctx, EthHdr::LEN + Ipv4Hdr::LEN) else {
        return pass(Outcome::Malformed);
    };
    // SAFETY: `udp` is bounds-checked.
    let udp_len = unsafe { be16((*udp).len) };
    if usize::from(udp_len) != usize::from(tot_len) - Ipv4Hdr::LEN {
        return pass(Outcome::Malformed);
    }
    // SAFETY: field addresses of the bounds-checked headers (nothing read).
    let ip_src = unsafe { (&raw mut (*ip).src_addr).cast::<u8>() };
    // SAFETY: as above.
    let ip_dst = unsafe { (&raw mut (*ip).dst_addr).cast::<u8>() };
    // SAFETY: as above.
    let udp_src = unsafe { (&raw mut (*udp).src).cast::<u8>() };
    // SAFETY: as above.
    let udp_dst = unsafe { (&raw mut (*udp).dst).cast::<u8>() };

    let arrival = Arrival {
        src: ip_src,
        dst: ip_dst,
        // SAFETY: the UDP source port, in the packet, 2-aligned.
        sport: unsafe { word(udp_src) },
        // SAFETY: `udp` is bounds-checked.
        dport: unsafe { (*udp).dst },
        ttl,
        ip_len: tot_len,
        tos,
        flowinfo: u32::from_ne_bytes([tos >> 4, (tos & 0x0f) << 4, 0, 0]),
        // SAFETY: `udp` is bounds-checked.
        no_udp_check: unsafe { (*udp).check } == [0, 0],
        payload: EthHdr::LEN + Ipv4Hdr::LEN + UdpHdr::LEN,
        payload_end: EthHdr::LEN + usize::from(tot_len),
    };
    // SAFETY: `src` and `dst` are the 2-word IPv4 addresses inside the
    // bounds-checked header, at even offsets.
    let (flow, hop) = match unsafe { decide::<2>(ctx, FAMILY_V4, &arrival) } {
        Ok(decided) => decided,
        Err(verdict) => return verdict,
    };
    if flow.family != FAMILY_V4 {
        // SAFETY: as below: fields of the bounds-checked headers and of
        // the flow value, 2-aligned, of the lengths given. Nothing is
        // written.
        let bridged = unsafe {
            let d = removed::<2>(ip_src, Delta::new());
            let d = removed::<2>(ip_dst, d);
            let d = added::<8>(flow.src_addr.as_ptr(), d);
            let d = added::<8>(flow.dst_addr.as_ptr(), d);
            let d = d.word(arrival.sport, word(flow.src_port.as_ptr()));
            let d = d.word(word(udp_dst), word(flow.dst_port.as_ptr()));
            Bridged {
                delta: d,
                check: word((&raw const (*udp).check).cast()),
                ttl,
                tos,
                udp_len,
                ip_len: tot_len,
            }
        };
        return bridge::to_v6(ctx, flow, &hop, &bridged);
    }

    // Every check passed: rewrite, accumulating the checksum changes as raw
    // native-order words (see `packet`).
    // SAFETY: the packet pointers are fields of the bounds-checked headers
    // and the others fields of the flow value, all 2-aligned and of the
    // lengths given; the TTL/protocol word and the checksums are at even
    // offsets.
    unsafe {
        let addrs = replace::<2>(ip_src, flow.src_addr.as_ptr(), Delta::new());
        let addrs = replace::<2>(ip_dst, flow.dst_addr.as_ptr(), addrs);
        // TTL shares its 16-bit word with the protocol (RFC 791 §3.1).
        let ttl_word = (&raw mut (*ip).ttl).cast::<u16>();
        let old = ttl_word.read();
        let new = u16::from_ne_bytes([ttl - 1, proto]);
        ttl_word.write(new);
        let check = (&raw mut (*ip).check).cast::<u16>();
        check.write(addrs.word(old, new).apply(check.read()));

        let ports = replace::<1>(udp_src, flow.src_port.as_ptr(), addrs);
        let ports = replace::<1>(udp_dst, flow.dst_port.as_ptr(), ports);
        let check = (&raw mut (*udp).check).cast::<u16>();
        check.write(udp_update(check.read(), ports, true));
    }
    let rtp = (flow.flags & RTP != 0)
        .then(|| rtp_header(ctx, arrival.payload, arrival.payload_end))
        .flatten();
    account(
        ctx,
        flow,
        tot_len,
        rtp,
        (arrival.payload, arrival.payload_end),
    );
    transmit(ctx, eth, &hop)
}

#[inline(never)]
fn ipv6(ctx: &XdpContext, eth: *mut EthHdr) -> (Outcome, u32) {
    let Some(ip) = header::<Ipv6Hdr>(ctx, EthHdr::LEN) else {
        return pass(Outcome::Malformed);
    };
    // As in `ipv4`: every dereference of `ip` and `udp` below is of a
    // bounds-checked header, at even offsets.
    // SAFETY: `ip` is bounds-checked; byte fields.
    let (vcf, payload_len, next_hdr, hop_limit) = unsafe {
        (
            (*ip).vcf,
            be16((*ip).payload_len),
            (*ip).next_hdr,
            (*ip).hop_limit,
        )
    };
    if vcf[0] >> 4 != 6 {
        return pass(Outcome::Malformed);
    }
    // Extension headers (fragments included) are left to the stack.
    if next_hdr != UDP {
        return pass(Outcome::NotUdp);
    }
    let frame_len = ctx.data_end() - ctx.data();
    if usize::from(payload_len) < UdpHdr::LEN
        || EthHdr::LEN + Ipv6Hdr::LEN + usize::from(payload_len) > frame_len
    {
        return pass(Outcome::Malformed);
    }
    let Some(udp) = header::<UdpHdr>(ctx, EthHdr::LEN + Ipv6Hdr::LEN) else {
        return pass(Outcome::Malformed);
    };
    // SAFETY: `udp` is bounds-checked.
    let (udp_len, udp_check) = unsafe { (be16((*udp).len), be16((*udp).check)) };
    // A zero UDP checksum is invalid over IPv6 (RFC 8200 §8.1).
    if udp_len != payload_len || udp_check == 0 {
        return pass(Outcome::Malformed);
    }
    // SAFETY: field addresses of the bounds-checked headers (nothing read).
    let ip_src = unsafe { (&raw mut (*ip).src_addr).cast::<u8>() };
    // SAFETY: as above.
    let ip_dst = unsafe { (&raw mut (*ip).dst_addr).cast::<u8>() };
    // SAFETY: as above.
    let udp_src = unsafe { (&raw mut (*udp).src).cast::<u8>() };
    // SAFETY: as above.
    let udp_dst = unsafe { (&raw mut (*udp).dst).cast::<u8>() };

    let ip_len = payload_len + Ipv6Hdr::LEN as u16;
    let arrival = Arrival {
        src: ip_src,
        dst: ip_dst,
        // SAFETY: the UDP source port, in the packet, 2-aligned.
        sport: unsafe { word(udp_src) },
        // SAFETY: `udp` is bounds-checked.
        dport: unsafe { (*udp).dst },
        ttl: hop_limit,
        ip_len,
        tos: (vcf[0] << 4) | (vcf[1] >> 4),
        flowinfo: u32::from_ne_bytes([vcf[0] & 0x0f, vcf[1], vcf[2], vcf[3]]),
        no_udp_check: false,
        payload: EthHdr::LEN + Ipv6Hdr::LEN + UdpHdr::LEN,
        payload_end: EthHdr::LEN + Ipv6Hdr::LEN + usize::from(payload_len),
    };
    // SAFETY: `src` and `dst` are the 8-word IPv6 addresses inside the
    // bounds-checked header, at even offsets.
    let (flow, hop) = match unsafe { decide::<8>(ctx, FAMILY_V6, &arrival) } {
        Ok(decided) => decided,
        Err(verdict) => return verdict,
    };
    if flow.family != FAMILY_V6 {
        // SAFETY: as below. Nothing is written.
        let bridged = unsafe {
            let d = removed::<8>(ip_src, Delta::new());
            let d = removed::<8>(ip_dst, d);
            let d = added::<2>(flow.src_addr.as_ptr(), d);
            let d = added::<2>(flow.dst_addr.as_ptr(), d);
            let d = d.word(arrival.sport, word(flow.src_port.as_ptr()));
            let d = d.word(word(udp_dst), word(flow.dst_port.as_ptr()));
            Bridged {
                delta: d,
                check: word((&raw const (*udp).check).cast()),
                ttl: hop_limit,
                tos: arrival.tos,
                udp_len,
                ip_len,
            }
        };
        return bridge::to_v4(ctx, flow, &hop, &bridged);
    }

    // SAFETY: as in `ipv4`: fields of the bounds-checked headers and of the
    // flow value, 2-aligned, of the lengths given.
    unsafe {
        (*ip).hop_limit = hop_limit - 1;
        let d = replace::<8>(ip_src, flow.src_addr.as_ptr(), Delta::new());
        let d = replace::<8>(ip_dst, flow.dst_addr.as_ptr(), d);
        let d = replace::<1>(udp_src, flow.src_port.as_ptr(), d);
        let d = replace::<1>(udp_dst, flow.dst_port.as_ptr(), d);
        let check = (&raw mut (*udp).check).cast::<u16>();
        check.write(udp_update(check.read(), d, false));
    }
    let rtp = (flow.flags & RTP != 0)
        .then(|| rtp_header(ctx, arrival.payload, arrival.payload_end))
        .flatten();
    account(
        ctx,
        flow,
        ip_len,
        rtp,
        (arrival.payload, arrival.payload_end),
    );
    transmit(ctx, eth, &hop)
}
