//! The model's own checks against hand-computed frames.

use std::net::SocketAddr;

use super::*;
use crate::{
    bed::{A_MAC, A_V4, A_V6, B_MAC, B_V4, B_V6, RA_MAC, RA_V4, RA_V6, RB_MAC, RB_V4, RB_V6},
    frame::UdpFrame,
};

const RA: u32 = 2;
const RB: u32 = 3;

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn network() -> Network {
    let iface = |ifindex, mac| Interface {
        ifindex,
        mac,
        mtu: 1500,
        attached: true,
        forwarding: true,
    };
    let route = |net: IpAddr, prefix, ifindex, via| Route {
        net,
        prefix,
        ifindex,
        via,
    };
    Network {
        interfaces: vec![iface(RA, RA_MAC), iface(RB, RB_MAC)],
        routes: vec![
            route(Ipv4Addr::new(198, 18, 1, 0).into(), 24, RA, None),
            route(Ipv4Addr::new(198, 18, 2, 0).into(), 24, RB, None),
            route(
                Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0).into(),
                64,
                RB,
                None,
            ),
            route(
                Ipv4Addr::new(198, 19, 0, 0).into(),
                16,
                RB,
                Some(B_V4.into()),
            ),
        ],
        neighbours: vec![
            Neighbour {
                ip: A_V4.into(),
                ifindex: RA,
                mac: A_MAC,
            },
            Neighbour {
                ip: B_V4.into(),
                ifindex: RB,
                mac: B_MAC,
            },
            Neighbour {
                ip: B_V6.into(),
                ifindex: RB,
                mac: B_MAC,
            },
        ],
        local: vec![RA_V4.into(), RB_V4.into()],
    }
}

fn model<'a>(flows: &'a HashMap<FlowKey, Flow>, net: &'a Network) -> Model<'a> {
    Model {
        flows,
        network: net,
        daemon: Daemon {
            running: true,
            ports: (0, 0),
            every_port_held: false,
        },
    }
}

fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 160]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xd5; 20]);
    p
}

#[test]
fn forwards_v4_with_full_recompute() {
    let net = network();
    let flow = Flow::new(sa(RB_V4, 30002), sa(B_V4, 40000)).rtp();
    let key = FlowKey::new(sa(RA_V4, 30000));
    let flows = HashMap::from([(key, flow)]);
    let mut f = UdpFrame::new(RA_MAC, A_MAC, sa(A_V4, 5000), sa(RA_V4, 30000), &rtp(7, 9));
    f.tos = 0xb8;
    let v = model(&flows, &net).run(&f.bytes(), RA);
    // The same packet built from scratch by etherparse.
    let mut want = f.clone();
    want.smac = RB_MAC;
    want.dmac = B_MAC;
    want.src = sa(RB_V4, 30002);
    want.dst = sa(B_V4, 40000);
    want.ttl = 63;
    assert_eq!(
        (v.action, v.outcome, &v.output),
        (Action::Redirect, Outcome::Redirected, &want.bytes())
    );
    assert_eq!(
        v.forwarded,
        Some(Forwarded {
            key,
            ip_len: (20 + 8 + 32) as u16,
            rtp: Some((7, 9)),
            rtcp: None,
            mux_rtcp: None,
        })
    );
    // Back out of the ingress interface: XDP_TX.
    let hairpin = Flow::new(sa(RA_V4, 30002), sa(A_V4, 6000));
    let flows = HashMap::from([(key, hairpin)]);
    let v = model(&flows, &net).run(&f.bytes(), RA);
    assert_eq!((v.action, v.outcome), (Action::Tx, Outcome::Transmitted));
    assert_eq!(&v.output[0..12], &[A_MAC, RA_MAC].concat()[..]);
}

#[test]
fn forwards_v6_and_keeps_a_wrong_udp_checksum_wrong() {
    let net = network();
    let flow = Flow::new(sa(RB_V6, 30002), sa(B_V6, 40000));
    let flows = HashMap::from([(FlowKey::new(sa(RA_V6, 30000)), flow)]);
    let f = UdpFrame::new(RA_MAC, A_MAC, sa(A_V6, 5000), sa(RA_V6, 30000), b"hello");
    let mut want = f.clone();
    (want.smac, want.dmac) = (RB_MAC, B_MAC);
    (want.src, want.dst, want.ttl) = (sa(RB_V6, 30002), sa(B_V6, 40000), 63);
    let v = model(&flows, &net).run(&f.bytes(), RA);
    assert_eq!((v.action, &v.output), (Action::Redirect, &want.bytes()));

    // The arriving checksum off by 5: the relayed one is off by 5 too.
    let mut bad = f.bytes();
    let at = 14 + 40 + 6;
    let c = be16(&bad, at);
    bad[at..at + 2].copy_from_slice(&oc_add(c, 5).to_be_bytes());
    let v = model(&flows, &net).run(&bad, RA);
    let good = be16(&want.bytes(), at);
    assert_eq!(be16(&v.output, at), oc_add(good, 5));
}

#[test]
fn checks_and_refusals() {
    let net = network();
    let a = sa(A_V4, 5000);
    let latched = Flow::new(sa(RB_V4, 30012), sa(B_V4, 40010))
        .with_source(a)
        .rtp()
        .with_relatch_ssrc(0x0102_0304);
    let far = Flow::new(sa(RB_V4, 30022), sa(Ipv4Addr::new(198, 19, 3, 4), 7000));
    let no_neigh = Flow::new(sa(RB_V4, 30032), sa(Ipv4Addr::new(198, 18, 2, 77), 7000));
    let flows = HashMap::from([
        (FlowKey::new(sa(RA_V4, 30010)), latched),
        (FlowKey::new(sa(RA_V4, 30020)), far),
        (FlowKey::new(sa(RA_V4, 30030)), no_neigh),
    ]);
    let m = model(&flows, &net);
    let run = |src, port, payload: &[u8]| {
        let f = UdpFrame::new(RA_MAC, A_MAC, src, sa(RA_V4, port), payload);
        let v = m.run(&f.bytes(), RA);
        (v.action, v.outcome)
    };
    let moved = sa(Ipv4Addr::new(198, 18, 1, 50), 7777);
    assert_eq!(
        run(moved, 30010, &rtp(0x0102_0304, 1)),
        (Action::Pass, Outcome::SourceToDaemon)
    );
    assert_eq!(
        run(moved, 30010, &rtp(0x0bad, 1)),
        (Action::Drop, Outcome::SourceRejected)
    );
    // The stream's SSRC only past the UDP payload (11 bytes of it):
    // not an RTP header.
    let mut f = UdpFrame::new(RA_MAC, A_MAC, moved, sa(RA_V4, 30010), &rtp(0x0102_0304, 1));
    f.payload.truncate(11);
    let mut short = f.bytes();
    short.extend_from_slice(&rtp(0x0102_0304, 1)[11..]);
    assert_eq!(
        m.run(&short, RA).outcome,
        Outcome::SourceRejected,
        "an RTP header is never read from Ethernet padding"
    );
    assert_eq!(run(a, 30011, b"x"), (Action::Pass, Outcome::NoFlow));
    let v = m.run(
        &UdpFrame::new(RA_MAC, A_MAC, a, sa(RA_V4, 30020), b"far").bytes(),
        RA,
    );
    assert_eq!(v.output[0..6], B_MAC, "the gateway's MAC");
    assert_eq!(run(a, 30030, b"x"), (Action::Pass, Outcome::NeighbourMiss));
    let mut ttl1 = UdpFrame::new(RA_MAC, A_MAC, a, sa(RA_V4, 30010), b"x");
    ttl1.ttl = 1;
    assert_eq!(m.run(&ttl1.bytes(), RA).outcome, Outcome::TtlExceeded);
    // IPv4 header checksum broken.
    let mut bad = UdpFrame::new(RA_MAC, A_MAC, a, sa(RA_V4, 30010), b"x").bytes();
    bad[24] ^= 1;
    assert_eq!(m.run(&bad, RA).outcome, Outcome::BadIpChecksum);
    // No daemon: what would go to it is dropped.
    let gone = Model {
        daemon: Daemon {
            running: false,
            ports: (30000, 30099),
            every_port_held: false,
        },
        ..model(&flows, &net)
    };
    let f = UdpFrame::new(RA_MAC, A_MAC, moved, sa(RA_V4, 30010), &rtp(0x0102_0304, 1));
    assert_eq!(gone.run(&f.bytes(), RA).outcome, Outcome::DaemonAbsent);
    let f = UdpFrame::new(RA_MAC, A_MAC, a, sa(RA_V4, 30099), b"x");
    assert_eq!(gone.run(&f.bytes(), RA).action, Action::Drop);
    let f = UdpFrame::new(RA_MAC, A_MAC, a, sa(RA_V4, 30100), b"x");
    assert_eq!(gone.run(&f.bytes(), RA).outcome, Outcome::NoFlow);
}

#[test]
fn ipv4_header_checksum_agrees_with_etherparse() {
    let f = UdpFrame::new(RA_MAC, A_MAC, sa(A_V4, 1), sa(RA_V4, 2), b"abc").bytes();
    let (h, _) = etherparse::Ipv4Header::from_slice(&f[14..]).unwrap();
    assert_eq!(ipv4_header_checksum(&f[14..34]), h.calc_header_checksum());
    assert!(ipv4_header_valid(&f[14..34]));
}

#[test]
fn rtcp_report_rules() {
    use super::rtcp_report;
    let sr = |count: u8, len: usize| {
        let mut p = vec![0x80 | count, 200];
        p.resize(len, 0);
        p
    };
    assert_eq!(rtcp_report(&sr(0, 28)), (true, false));
    assert_eq!(rtcp_report(&sr(1, 51)), (true, false));
    assert_eq!(rtcp_report(&sr(1, 52)), (true, true));
    assert_eq!(rtcp_report(&sr(1, 27)), (false, false));
    let mut rr = sr(1, 32);
    rr[1] = 201;
    assert_eq!(rtcp_report(&rr), (false, true));
    assert_eq!(rtcp_report(&rr[..31]), (false, false));
    rr[0] = 0x41;
    assert_eq!(rtcp_report(&rr), (false, false));
}

#[test]
fn rtp_header_rules() {
    assert_eq!(rtp_header(&rtp(5, 6)), Some((5, 6)));
    assert_eq!(rtp_header(&rtp(5, 6)[..11]), None);
    let mut rtcp = rtp(5, 6);
    rtcp[1] = 200;
    assert_eq!(rtp_header(&rtcp), None);
    rtcp[1] = 0x80 | 63; // marker + PT 63: RTP
    assert_eq!(rtp_header(&rtcp), Some((5, 6)));
    let mut v1 = rtp(5, 6);
    v1[0] = 0x40;
    assert_eq!(rtp_header(&v1), None);
}

#[test]
fn bridges_v4_to_v6_and_leaves_checksum_0_to_the_daemon() {
    let net = network();
    let flow = Flow::new(sa(RB_V6, 30002), sa(B_V6, 40000)).rtp();
    let key = FlowKey::new(sa(RA_V4, 30000));
    let flows = HashMap::from([(key, flow)]);
    let mut f = UdpFrame::new(RA_MAC, A_MAC, sa(A_V4, 5000), sa(RA_V4, 30000), &rtp(7, 9));
    f.tos = 0xb8;
    let v = model(&flows, &net).run(&f.bytes(), RA);
    // The same packet as IPv6, built from scratch by etherparse: traffic
    // class from the TOS, flow label 0, hop limit TTL − 1.
    let mut want = f.clone();
    want.smac = RB_MAC;
    want.dmac = B_MAC;
    want.src = sa(RB_V6, 30002);
    want.dst = sa(B_V6, 40000);
    want.ttl = 63;
    want.id = 0;
    assert_eq!(
        (v.action, v.outcome, &v.output),
        (Action::Redirect, Outcome::Redirected, &want.bytes())
    );
    assert_eq!(
        v.forwarded.map(|f| (f.ip_len, f.rtp)),
        Some(((20 + 8 + 32) as u16, Some((7, 9)))),
        "the arriving length is counted"
    );
    f.no_udp_checksum = true;
    let v = model(&flows, &net).run(&f.bytes(), RA);
    assert_eq!((v.action, v.outcome), (Action::Pass, Outcome::FamilyChange));
}

#[test]
fn bridges_v6_to_v4_as_an_atomic_datagram() {
    let net = network();
    let flow = Flow::new(sa(RB_V4, 30002), sa(B_V4, 40000));
    let key = FlowKey::new(sa(RA_V6, 30000));
    let flows = HashMap::from([(key, flow)]);
    let mut f = UdpFrame::new(RA_MAC, A_MAC, sa(A_V6, 5000), sa(RA_V6, 30000), b"rtcp");
    f.tos = 0x2d;
    f.id = 0xf_1234;
    f.ttl = 2;
    let v = model(&flows, &net).run(&f.bytes(), RA);
    // ID 0, DF (UdpFrame sets it), TOS from the traffic class.
    let mut want = f.clone();
    want.smac = RB_MAC;
    want.dmac = B_MAC;
    want.src = sa(RB_V4, 30002);
    want.dst = sa(B_V4, 40000);
    want.ttl = 1;
    want.id = 0;
    assert_eq!(
        (v.action, v.outcome, &v.output),
        (Action::Redirect, Outcome::Redirected, &want.bytes())
    );
}
