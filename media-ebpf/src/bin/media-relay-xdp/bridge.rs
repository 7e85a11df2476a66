//! IPv4 ↔ IPv6 bridging: a flow whose outbound family differs from the
//! arriving packet's.
//!
//! The UDP header and payload stay where they are in memory;
//! `bpf_xdp_adjust_head` moves the frame's start 20 bytes earlier (IPv4 →
//! IPv6: the IP header grows from 20 to 40 bytes) or later (IPv6 → IPv4),
//! and the Ethernet and IP headers are written anew in front of the UDP
//! header. Everything taken from the old headers (TTL, traffic class,
//! lengths, the UDP checksum and its delta) is read before the move, since
//! the new headers overlap the old ones and every packet pointer is invalid
//! after it.
//!
//! The UDP checksum is updated incrementally (RFC 1624): the old
//! pseudo-header addresses are removed, the new ones added, the ports
//! replaced. The pseudo-headers' length and protocol terms sum alike in
//! both families (RFC 768, RFC 8200 §8.1), so they cancel. The caller
//! never bridges an IPv4 datagram without a UDP checksum (0): IPv6 needs
//! one, and computing it means reading the payload; the daemon does that.
//! The new IPv4 header's checksum is computed in full (ten words).

use aya_ebpf::{
    bindings::xdp_action::XDP_DROP, helpers::bpf_xdp_adjust_head, programs::XdpContext,
};
use media_ebpf::{
    Flow, Outcome,
    csum::{Delta, fold, udp_update},
    flow::RTP,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::{
    fib::NextHop,
    packet::{copy, header, sum},
    relay::{account, rtp_header, to_daemon, transmit},
};

/// What the new headers need from the arriving packet, read before its
/// headers are overwritten.
pub struct Bridged {
    /// The UDP checksum change: old pseudo-header addresses removed, new
    /// ones added, ports replaced (raw native-order words).
    pub delta: Delta,
    /// The arriving UDP checksum, raw word; never 0.
    pub check: u16,
    /// The arriving TTL / hop limit (> 1) and IPv4 TOS / IPv6 traffic
    /// class (DSCP and ECN).
    pub ttl: u8,
    pub tos: u8,
    /// The UDP length (header included), and the arriving IP packet's
    /// length (what the flow's byte counter counts).
    pub udp_len: u16,
    pub ip_len: u16,
}

/// The headers of a frame leaving as IPv6.
#[repr(C)]
struct Frame6 {
    eth: EthHdr,
    ip: Ipv6Hdr,
    udp: UdpHdr,
}

/// The headers of a frame leaving as IPv4.
#[repr(C)]
struct Frame4 {
    eth: EthHdr,
    ip: Ipv4Hdr,
    udp: UdpHdr,
}

/// EtherTypes as on the wire, read as raw native-order words.
const ETH_P_IP: u16 = u16::from_ne_bytes([0x08, 0x00]);
const ETH_P_IPV6: u16 = u16::from_ne_bytes([0x86, 0xdd]);

/// The frame start moved by `delta` bytes; `false` if the kernel refused
/// (no headroom), in which case the packet is untouched.
#[inline(always)]
fn move_start(ctx: &XdpContext, delta: i32) -> bool {
    // SAFETY: `ctx.ctx` is the program's own xdp_md; the helper checks the
    // headroom and the minimum frame length itself.
    unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) == 0 }
}

/// The frame moved but its headers cannot be reached: cannot happen (the
/// UDP header was inside the frame before the move and did not move), but
/// the verifier wants the check; the packet is no longer intact, so drop.
#[inline(always)]
fn lost() -> (Outcome, u32) {
    (Outcome::Malformed, XDP_DROP)
}

/// Forward the IPv4 packet `b` describes as IPv6 from `flow.src_*` to
/// `flow.dst_*`.
// Inlined into `relay::ipv4`: as a function of its own its frame, on top
// of `ipv4`'s and under `account`'s logging, would pass the verifier's
// 512-byte limit for the combined stack.
#[inline(always)]
pub fn to_v6(ctx: &XdpContext, flow: &Flow, hop: &NextHop, b: &Bridged) -> (Outcome, u32) {
    if !move_start(ctx, -((Ipv6Hdr::LEN - Ipv4Hdr::LEN) as i32)) {
        return to_daemon(Outcome::FamilyChange);
    }
    // The pointers before the move are void: bounds-check anew.
    let Some(f) = header::<Frame6>(ctx, 0) else {
        return lost();
    };
    // SAFETY: `f` is bounds-checked, 2-aligned (the frame start moved by an
    // even number of bytes); the address fields of `Flow` are 8-aligned.
    unsafe {
        (*f).eth.ether_type = ETH_P_IPV6;
        let ip = &raw mut (*f).ip;
        (*ip).vcf = [0x60 | (b.tos >> 4), (b.tos & 0x0f) << 4, 0, 0];
        (*ip).payload_len = b.udp_len.to_be_bytes();
        (*ip).next_hdr = 17;
        (*ip).hop_limit = b.ttl - 1;
        copy::<8>((&raw mut (*ip).src_addr).cast(), flow.src_addr.as_ptr());
        copy::<8>((&raw mut (*ip).dst_addr).cast(), flow.dst_addr.as_ptr());
        let udp = &raw mut (*f).udp;
        copy::<1>((&raw mut (*udp).src).cast(), flow.src_port.as_ptr());
        copy::<1>((&raw mut (*udp).dst).cast(), flow.dst_port.as_ptr());
        (&raw mut (*udp).check)
            .cast::<u16>()
            .write(udp_update(b.check, b.delta, false));
    }
    finish(ctx, flow, hop, b, size_of::<Frame6>(), f.cast())
}

/// Forward the IPv6 packet `b` describes as IPv4 from `flow.src_*` to
/// `flow.dst_*`: IPv4 ID 0 with DF, an atomic datagram (RFC 6864 §4.1,
/// as a stateless translator sends it, RFC 7915 §5.1).
// Inlined into `relay::ipv6`, as `to_v6` is.
#[inline(always)]
pub fn to_v4(ctx: &XdpContext, flow: &Flow, hop: &NextHop, b: &Bridged) -> (Outcome, u32) {
    if !move_start(ctx, (Ipv6Hdr::LEN - Ipv4Hdr::LEN) as i32) {
        return to_daemon(Outcome::FamilyChange);
    }
    let Some(f) = header::<Frame4>(ctx, 0) else {
        return lost();
    };
    // SAFETY: as in `to_v6`.
    unsafe {
        (*f).eth.ether_type = ETH_P_IP;
        let ip = &raw mut (*f).ip;
        (*ip).vihl = 0x45;
        (*ip).tos = b.tos;
        // No overflow: the FIB lookup held this length to the egress MTU.
        (*ip).tot_len = b.udp_len.saturating_add(Ipv4Hdr::LEN as u16).to_be_bytes();
        (*ip).id = [0, 0];
        (*ip).frags = [0x40, 0];
        (*ip).ttl = b.ttl - 1;
        (*ip).proto = 17;
        (*ip).check = [0, 0];
        copy::<2>((&raw mut (*ip).src_addr).cast(), flow.src_addr.as_ptr());
        copy::<2>((&raw mut (*ip).dst_addr).cast(), flow.dst_addr.as_ptr());
        (&raw mut (*ip).check)
            .cast::<u16>()
            .write(!fold(sum::<10>(ip.cast::<u8>())));
        let udp = &raw mut (*f).udp;
        copy::<1>((&raw mut (*udp).src).cast(), flow.src_port.as_ptr());
        copy::<1>((&raw mut (*udp).dst).cast(), flow.dst_port.as_ptr());
        (&raw mut (*udp).check)
            .cast::<u16>()
            .write(udp_update(b.check, b.delta, false));
    }
    finish(ctx, flow, hop, b, size_of::<Frame4>(), f.cast())
}

/// Account the rewritten packet (its payload now `headers` bytes into the
/// frame) and send it.
#[inline(always)]
fn finish(
    ctx: &XdpContext,
    flow: &Flow,
    hop: &NextHop,
    b: &Bridged,
    headers: usize,
    eth: *mut EthHdr,
) -> (Outcome, u32) {
    let payload = (headers, headers - UdpHdr::LEN + usize::from(b.udp_len));
    let rtp = (flow.flags & RTP != 0)
        .then(|| rtp_header(ctx, payload.0, payload.1))
        .flatten();
    account(ctx, flow, b.ip_len, rtp, payload);
    transmit(ctx, eth, hop)
}
