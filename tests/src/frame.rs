//! Ethernet + IPv4/IPv6 + UDP frames built byte by byte, with checksums
//! from an implementation independent of the relay's (etherparse), so a
//! byte-exact comparison with [`UdpFrame::bytes`] is a comparison against a
//! full recompute.

use std::net::{IpAddr, SocketAddr};

use etherparse::{Ipv4Header, UdpHeader};

/// A UDP datagram in an Ethernet frame.
#[derive(Clone, Debug)]
pub struct UdpFrame {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TTL / hop limit.
    pub ttl: u8,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    /// IPv4 identification / IPv6 flow label (20 bits).
    pub id: u32,
    /// IPv4 only: send checksum 0 ("none").
    pub no_udp_checksum: bool,
    pub payload: Vec<u8>,
}

impl UdpFrame {
    pub fn new(
        dmac: [u8; 6],
        smac: [u8; 6],
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) -> Self {
        Self {
            dmac,
            smac,
            src,
            dst,
            ttl: 64,
            tos: 0,
            id: 0x1234,
            no_udp_checksum: false,
            payload: payload.to_vec(),
        }
    }

    /// The frame, with correct checksums.
    pub fn bytes(&self) -> Vec<u8> {
        let udp_len = u16::try_from(8 + self.payload.len()).expect("payload fits a datagram");
        let header = UdpHeader {
            source_port: self.src.port(),
            destination_port: self.dst.port(),
            length: udp_len,
            checksum: 0,
        };
        let mut f = Vec::with_capacity(62 + self.payload.len());
        f.extend_from_slice(&self.dmac);
        f.extend_from_slice(&self.smac);
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[1] = self.tos;
                ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
                ip[4..6].copy_from_slice(&(self.id as u16).to_be_bytes());
                ip[6] = 0x40; // DF
                ip[8] = self.ttl;
                ip[9] = 17;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let check = Ipv4Header::from_slice(&ip)
                    .expect("valid IPv4 header")
                    .0
                    .calc_header_checksum();
                ip[10..12].copy_from_slice(&check.to_be_bytes());
                f.extend_from_slice(&ip);
                let csum = if self.no_udp_checksum {
                    0
                } else {
                    header
                        .calc_checksum_ipv4_raw(s.octets(), d.octets(), &self.payload)
                        .expect("payload fits")
                };
                push_udp(&mut f, &header, csum, &self.payload);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let vcf: u32 = (6 << 28) | (u32::from(self.tos) << 20) | (self.id & 0xf_ffff);
                f.extend_from_slice(&vcf.to_be_bytes());
                f.extend_from_slice(&udp_len.to_be_bytes());
                f.push(17);
                f.push(self.ttl);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                let csum = header
                    .calc_checksum_ipv6_raw(s.octets(), d.octets(), &self.payload)
                    .expect("payload fits");
                push_udp(&mut f, &header, csum, &self.payload);
            }
            _ => panic!("mixed address families in one frame"),
        }
        f
    }
}

fn push_udp(f: &mut Vec<u8>, h: &UdpHeader, csum: u16, payload: &[u8]) {
    f.extend_from_slice(&h.source_port.to_be_bytes());
    f.extend_from_slice(&h.destination_port.to_be_bytes());
    f.extend_from_slice(&h.length.to_be_bytes());
    f.extend_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(payload);
}

/// Recompute the IPv4 header checksum of `frame` in place (after a test
/// mutated the header).
pub fn fix_ipv4_header_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24] = 0;
    frame[25] = 0;
    let sum = media_ebpf::csum::checksum(&frame[14..14 + ihl], 0);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
}

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it (data, data_end,
/// data_meta, ingress_ifindex, rx_queue_index, egress_ifindex): a frame of
/// `len` bytes arriving on `ingress_ifindex`.
pub fn xdp_md(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&u32::try_from(len).expect("frame fits").to_ne_bytes());
    md[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    md
}
