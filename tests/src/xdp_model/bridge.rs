//! The model's IPv4 ↔ IPv6 rewrite (contract step 9, bridged): the frame
//! built anew from the arriving one, checksums by full recompute.

use std::net::IpAddr;

use media_ebpf::Flow;

use super::{ETH, Hop, Packet, be16, ipv4_header_checksum, udp_checksum_out, udp_full_checksum};

/// The frame `frame` (parsed as `p`) becomes when its flow sends it from
/// `new_src` to `new_dst`, of the other family than it arrived in.
pub(super) fn rewrite(
    frame: &[u8],
    p: &Packet,
    flow: &Flow,
    new_src: IpAddr,
    new_dst: IpAddr,
    hop: &Hop,
) -> Vec<u8> {
    let ip_in = &frame[ETH..p.l4];
    let udp_len = u16::try_from(p.udp_len).expect("a UDP length is 16 bits");
    let mut out = Vec::with_capacity(frame.len() + 20);
    out.extend_from_slice(&hop.dmac);
    out.extend_from_slice(&hop.smac);
    match (new_src, new_dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // TOS → traffic class (DSCP and ECN), flow label 0.
            let tos = ip_in[1];
            out.extend_from_slice(&[0x86, 0xdd]);
            out.extend_from_slice(&[0x60 | (tos >> 4), (tos & 0x0f) << 4, 0, 0]);
            out.extend_from_slice(&udp_len.to_be_bytes());
            out.extend_from_slice(&[17, p.ttl - 1]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let tc = (ip_in[0] << 4) | (ip_in[1] >> 4);
            out.extend_from_slice(&[0x08, 0x00]);
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[1] = tc;
            h[2..4].copy_from_slice(&udp_len.saturating_add(20).to_be_bytes());
            // ID 0, DF: an atomic datagram (RFC 6864 §4.1).
            h[6] = 0x40;
            h[8] = p.ttl - 1;
            h[9] = 17;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = ipv4_header_checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&h);
        }
        _ => unreachable!("a flow's addresses share its family"),
    }
    let l4 = out.len();
    // UDP header, payload and any Ethernet padding, as they arrived.
    out.extend_from_slice(&frame[p.l4..]);
    out[l4..l4 + 2].copy_from_slice(&flow.src_port);
    out[l4 + 2..l4 + 4].copy_from_slice(&flow.dst_port);
    let carried = be16(frame, p.l4 + 6);
    let full_in = udp_full_checksum(p.src, p.dst, &frame[p.l4..p.l4 + p.udp_len]);
    let full_out = udp_full_checksum(new_src, new_dst, &out[l4..l4 + p.udp_len]);
    let check = udp_checksum_out(full_in, carried, full_out);
    out[l4 + 6..l4 + 8].copy_from_slice(&check.to_be_bytes());
    out
}
