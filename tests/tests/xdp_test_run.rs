//! BPF_PROG_TEST_RUN on the loaded relay program: crafted frames in,
//! action and exact output bytes out, as a table of
//! {description, input, expected action, expected output}.
//!
//! The relay namespace of a [`Bed`] provides the routes and (permanent)
//! neighbours the program's FIB lookups see. Expected outputs are built
//! independently ([`UdpFrame`] checksums come from etherparse), so a byte
//! match is a match against a full recompute.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use media_ebpf::{Flow, FlowKey};
use media_relay_tests::{
    bed::{A_MAC, A_V4, A_V6, B_MAC, B_V4, B_V6, RA_MAC, RA_V4, RA_V6, RB_MAC, RB_V4, RB_V6},
    frame::{UdpFrame, fix_ipv4_header_checksum},
    require_root,
    test_run::{Case, Fixture, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn v4(src: SocketAddr, dst: SocketAddr) -> UdpFrame {
    UdpFrame::new(
        RA_MAC,
        A_MAC,
        src,
        dst,
        b"\x80\x00\x00\x01rtp-payload-0123456789",
    )
}

/// The frame `f` after the relay rewrote it with `flow`, leaving through
/// the interface with MAC `smac` towards `dmac`.
fn relayed(f: &UdpFrame, flow: &Flow, smac: [u8; 6], dmac: [u8; 6]) -> Vec<u8> {
    let mut out = f.clone();
    out.smac = smac;
    out.dmac = dmac;
    out.src = flow.relay();
    out.dst = flow.peer();
    out.ttl = f.ttl - 1;
    out.bytes()
}

#[test]
fn relay_program_table() -> anyhow::Result<()> {
    if !require_root("relay_program_table") {
        return Ok(());
    }
    let mut fx = Fixture::new()?;

    let a = sa(A_V4, 5000);
    let a6 = sa(A_V6, 5000);
    let c_src = sa(Ipv4Addr::new(198, 18, 1, 60), 6100);
    // The flows of the table.
    let f1 = Flow::new(sa(RB_V4, 30002), sa(B_V4, 40000));
    let f2 = Flow::new(sa(RB_V4, 30012), sa(B_V4, 40010)).with_source(a);
    let f3 = Flow::new(sa(RB_V6, 30002), sa(B_V6, 40000));
    let f4 = Flow::new(sa(RA_V4, 30022), sa(A_V4, 6000));
    let f5 = Flow::new(sa(RB_V4, 30032), sa(Ipv4Addr::new(198, 19, 1, 1), 7000));
    let f6 = Flow::new(sa(RB_V6, 30042), sa(B_V6, 40040));
    let f7 = Flow::new(sa(RB_V4, 30052), sa(Ipv4Addr::new(198, 18, 9, 9), 7000));
    let f8 = Flow::new(sa(RB_V4, 30062), sa(Ipv4Addr::new(198, 18, 2, 77), 7000));
    let f9 = Flow::new(sa(RB_V4, 30072), sa(B_V4, 40070)).with_source_addr(A_V4.into());
    // Learning (NAT): mismatches go to the daemon. Latched RTP: only the
    // stream's SSRC may reach the daemon; RTP headers are recorded.
    let f10 = Flow::new(sa(RB_V4, 30082), sa(B_V4, 40080))
        .with_source(a)
        .learning(true);
    let f11 = Flow::new(sa(RB_V4, 30092), sa(B_V4, 40090))
        .with_source(a)
        .rtp()
        .with_relatch_ssrc(0x0102_0304);
    let flows = fx.relay.flows_mut();
    flows.install(FlowKey::new(sa(RA_V4, 30000)), f1)?;
    flows.install(FlowKey::new(sa(RA_V4, 30010)), f2)?;
    flows.install(FlowKey::new(sa(RA_V6, 30000)), f3)?;
    flows.install(FlowKey::new(sa(RA_V4, 30020)), f4)?;
    flows.install(FlowKey::new(sa(RA_V4, 30030)), f5)?;
    flows.install(FlowKey::new(sa(RA_V4, 30040)), f6)?;
    flows.install(FlowKey::new(sa(RA_V4, 30050)), f7)?;
    flows.install(FlowKey::new(sa(RA_V4, 30060)), f8)?;
    flows.install(FlowKey::new(sa(RA_V4, 30070)), f9)?;
    flows.install(FlowKey::new(sa(RA_V4, 30080)), f10)?;
    flows.install(FlowKey::new(sa(RA_V4, 30090)), f11)?;
    let f12 = Flow::new(sa(RB_V4, 30102), sa(B_V4, 40100)).with_source(a);
    let f13 = Flow::new(sa(RB_V4, 30104), sa(B_V4, 40102)).with_source(c_src);
    flows.install(FlowKey::shared(sa(RA_V4, 30100), a), f12)?;
    flows.install(FlowKey::shared(sa(RA_V4, 30100), c_src), f13)?;
    let rtp_pkt = |ssrc: u32, seq: u16| {
        let mut p = vec![0x80, 8];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 160]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xd5; 160]);
        p
    };
    let moved_src = sa(Ipv4Addr::new(198, 18, 1, 50), 7777);
    let learning_other = v4(moved_src, sa(RA_V4, 30080));
    let latched_ok = UdpFrame::new(
        RA_MAC,
        A_MAC,
        a,
        sa(RA_V4, 30090),
        &rtp_pkt(0x0102_0304, 100),
    );
    let relatch_same_ssrc = UdpFrame::new(
        RA_MAC,
        A_MAC,
        moved_src,
        sa(RA_V4, 30090),
        &rtp_pkt(0x0102_0304, 101),
    );
    let relatch_other_ssrc = UdpFrame::new(
        RA_MAC,
        A_MAC,
        moved_src,
        sa(RA_V4, 30090),
        &rtp_pkt(0x0bad_0bad, 101),
    );
    let mut rtcp_mux = rtp_pkt(0x0102_0304, 0);
    rtcp_mux[1] = 200; // RTCP SR multiplexed on the RTP port
    let relatch_rtcp = UdpFrame::new(RA_MAC, A_MAC, moved_src, sa(RA_V4, 30090), &rtcp_mux);
    // A 4-byte datagram whose frame is padded (as short Ethernet frames
    // are) with the rest of an RTP header of the stream's SSRC: the
    // padding is not the datagram's, so there is no RTP header to re-latch
    // on.
    let relatch_padding = {
        let rtp = rtp_pkt(0x0102_0304, 102);
        let mut f = UdpFrame::new(RA_MAC, A_MAC, moved_src, sa(RA_V4, 30090), &rtp[..4]).bytes();
        f.extend_from_slice(&rtp[4..12]);
        f
    };

    let basic = v4(a, sa(RA_V4, 30000));
    let mut zero_csum = basic.clone();
    zero_csum.no_udp_checksum = true;
    let mut tos = basic.clone();
    tos.tos = 0xb8; // EF, as RTP is usually marked
    let v6 = UdpFrame::new(
        RA_MAC,
        A_MAC,
        a6,
        sa(RA_V6, 30000),
        b"\x80\x00\x00\x02v6-rtp",
    );
    let hairpin = v4(a, sa(RA_V4, 30020));
    let far = v4(a, sa(RA_V4, 30030));
    let checked = v4(a, sa(RA_V4, 30010));
    let addr_only = v4(sa(A_V4, 5999), sa(RA_V4, 30070));
    let mut ttl1 = basic.clone();
    ttl1.ttl = 1;
    let mut ttl0 = basic.clone();
    ttl0.ttl = 0;
    let mut hop1 = v6.clone();
    hop1.ttl = 1;
    // IPv4 header checksum broken (its low byte flipped): passed untouched
    // for the stack to drop, never rewritten into a valid-looking one.
    let mut bad_ip_csum = basic.bytes();
    bad_ip_csum[14 + 11] ^= 0x5a;
    // A shared local port: two remote endpoints, each its own flow and
    // peer; an unknown third source finds none.
    let shared_a = v4(a, sa(RA_V4, 30100));
    let shared_c = v4(c_src, sa(RA_V4, 30100));
    let shared_other = v4(sa(Ipv4Addr::new(198, 18, 1, 61), 6100), sa(RA_V4, 30100));
    let mut v6_zero = v6.bytes();
    let l = v6_zero.len();
    let _ = l;
    v6_zero[14 + 40 + 6] = 0;
    v6_zero[14 + 40 + 7] = 0;

    // IPv4 with a 4-byte option (NOP NOP NOP EOL): IHL 6.
    let mut options = basic.bytes();
    options.splice(34..34, [1u8, 1, 1, 0]);
    options[14] = 0x46;
    let tl = u16::from_be_bytes([options[16], options[17]]) + 4;
    options[16..18].copy_from_slice(&tl.to_be_bytes());
    fix_ipv4_header_checksum(&mut options);
    let mut more_fragments = basic.bytes();
    more_fragments[20] = 0x20; // MF
    fix_ipv4_header_checksum(&mut more_fragments);
    let mut later_fragment = basic.bytes();
    later_fragment[20] = 0x00;
    later_fragment[21] = 0x10; // offset 16 * 8
    fix_ipv4_header_checksum(&mut later_fragment);
    let mut not_udp = basic.bytes();
    not_udp[23] = 6; // TCP
    fix_ipv4_header_checksum(&mut not_udp);
    let mut too_long = basic.bytes();
    let tl = u16::from_be_bytes([too_long[16], too_long[17]]) + 100;
    too_long[16..18].copy_from_slice(&tl.to_be_bytes());
    fix_ipv4_header_checksum(&mut too_long);
    let mut udp_len_mismatch = basic.bytes();
    udp_len_mismatch[38..40].copy_from_slice(&9u16.to_be_bytes());
    let mut bad_ihl = basic.bytes();
    bad_ihl[14] = 0x44;
    let mut v6_ext = v6.bytes();
    v6_ext[14 + 6] = 0; // hop-by-hop options header
    let mut v6_frag = v6.bytes();
    v6_frag[14 + 6] = 44;
    let mut vlan = basic.bytes();
    vlan.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&A_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);

    let cases = vec![
        Case {
            what: "IPv4 forward to the other leg (redirect)",
            output: Some(relayed(&basic, &f1, RB_MAC, B_MAC)),
            input: basic.bytes(),
            action: XDP_REDIRECT,
            outcome: "redirected",
        },
        Case {
            what: "IPv4 UDP checksum 0 stays 0",
            output: Some(relayed(&zero_csum, &f1, RB_MAC, B_MAC)),
            input: zero_csum.bytes(),
            action: XDP_REDIRECT,
            outcome: "redirected",
        },
        Case {
            what: "IPv4 TOS kept, header checksum follows",
            output: Some(relayed(&tos, &f1, RB_MAC, B_MAC)),
            input: tos.bytes(),
            action: XDP_REDIRECT,
            outcome: "redirected",
        },
        Case {
            what: "IPv4 back out of the ingress interface (XDP_TX)",
            output: Some(relayed(&hairpin, &f4, RA_MAC, A_MAC)),
            input: hairpin.bytes(),
            action: XDP_TX,
            outcome: "transmitted",
        },
        Case {
            what: "IPv4 peer behind a gateway: MAC of the gateway",
            output: Some(relayed(&far, &f5, RB_MAC, B_MAC)),
            input: far.bytes(),
            action: XDP_REDIRECT,
            outcome: "redirected",
        },
        Case {
            what: "IPv6 forward, hop limit decremented, checksum follows",
            output: Some(relayed(&v6, &f3, RB_MAC, B_MAC)),
            input: v6.bytes(),
            action: XDP_REDIRECT,
            outcome: "redirected",
        },
        Case {
            what: "source check: the expected peer passes",
            output: Some(relayed(&checked, &f2, RB_MAC, B_MAC)),
            input: checked.bytes(),
            action: XDP_REDIRECT,
            outcome: "redirected",
        },
        Case {
            what: "source check: another address is dropped",
            input: v4(sa(Ipv4Addr::new(198, 18, 1, 99), 5000), sa(RA_V4, 30010)).bytes(),
            action: XDP_DROP,
            output: None,
            outcome: "source_rejected",
        },
        Case {
            what: "source check: another port is dropped",
            input: v4(sa(A_V4, 5001), sa(RA_V4, 30010)).bytes(),
            action: XDP_DROP,
            output: None,
            outcome: "source_rejected",
        },
        Case {
            what: "address-only source check: any port of the address passes",
            output: Some(relayed(&addr_only, &f9, RB_MAC, B_MAC)),
            input: addr_only.bytes(),
            action: XDP_REDIRECT,
            outcome: "redirected",
        },
        Case {
            what: "learning: another source goes to the daemon",
            input: learning_other.bytes(),
            action: XDP_PASS,
            output: None,
            outcome: "source_to_daemon",
        },
        Case {
            what: "latched RTP from the peer is forwarded",
            output: Some(relayed(&latched_ok, &f11, RB_MAC, B_MAC)),
            input: latched_ok.bytes(),
            action: XDP_REDIRECT,
            outcome: "redirected",
        },
        Case {
            what: "latched: the stream's SSRC from elsewhere goes to the daemon",
            input: relatch_same_ssrc.bytes(),
            action: XDP_PASS,
            output: None,
            outcome: "source_to_daemon",
        },
        Case {
            what: "latched: another SSRC from elsewhere is dropped",
            input: relatch_other_ssrc.bytes(),
            action: XDP_DROP,
            output: None,
            outcome: "source_rejected",
        },
        Case {
            what: "latched: RTCP from elsewhere is not RTP: dropped",
            input: relatch_rtcp.bytes(),
            action: XDP_DROP,
            output: None,
            outcome: "source_rejected",
        },
        Case {
            what: "latched: the SSRC only in the padding after a short datagram: dropped",
            input: relatch_padding,
            action: XDP_DROP,
            output: None,
            outcome: "source_rejected",
        },
        Case {
            what: "TTL 1 is dropped (forwarded as a router: none left)",
            input: ttl1.bytes(),
            action: XDP_DROP,
            output: None,
            outcome: "ttl_exceeded",
        },
        Case {
            what: "TTL 0 is dropped",
            input: ttl0.bytes(),
            action: XDP_DROP,
            output: None,
            outcome: "ttl_exceeded",
        },
        Case {
            what: "IPv6 hop limit 1 is dropped",
            input: hop1.bytes(),
            action: XDP_DROP,
            output: None,
            outcome: "ttl_exceeded",
        },
        Case {
            what: "IPv4 header checksum wrong: passed untouched",
            input: bad_ip_csum,
            action: XDP_PASS,
            output: None,
            outcome: "bad_ip_checksum",
        },
        Case {
            what: "shared port: A's packets follow A's flow",
            input: shared_a.bytes(),
            action: XDP_REDIRECT,
            output: Some(relayed(&shared_a, &f12, RB_MAC, B_MAC)),
            outcome: "redirected",
        },
        Case {
            what: "shared port: C's packets follow C's flow",
            input: shared_c.bytes(),
            action: XDP_REDIRECT,
            output: Some(relayed(&shared_c, &f13, RB_MAC, B_MAC)),
            outcome: "redirected",
        },
        Case {
            what: "shared port: a third source has no flow",
            input: shared_other.bytes(),
            action: XDP_PASS,
            output: None,
            outcome: "no_flow",
        },
        Case {
            what: "IPv4 options are passed",
            input: options,
            action: XDP_PASS,
            output: None,
            outcome: "ip_options",
        },
        Case {
            what: "IPv4 first fragment (MF) is passed",
            input: more_fragments,
            action: XDP_PASS,
            output: None,
            outcome: "fragment",
        },
        Case {
            what: "IPv4 later fragment (offset) is passed",
            input: later_fragment,
            action: XDP_PASS,
            output: None,
            outcome: "fragment",
        },
        Case {
            what: "IPv6 fragment header is passed",
            input: v6_frag,
            action: XDP_PASS,
            output: None,
            outcome: "not_udp",
        },
        Case {
            what: "IPv6 extension header is passed",
            input: v6_ext,
            action: XDP_PASS,
            output: None,
            outcome: "not_udp",
        },
        Case {
            what: "IPv6 UDP checksum 0 is invalid: passed",
            input: v6_zero,
            action: XDP_PASS,
            output: None,
            outcome: "malformed",
        },
        Case {
            what: "truncated IPv4 header",
            input: basic.bytes()[..30].to_vec(),
            action: XDP_PASS,
            output: None,
            outcome: "malformed",
        },
        Case {
            what: "truncated UDP header",
            input: basic.bytes()[..38].to_vec(),
            action: XDP_PASS,
            output: None,
            outcome: "malformed",
        },
        Case {
            what: "truncated IPv6 header",
            input: v6.bytes()[..40].to_vec(),
            action: XDP_PASS,
            output: None,
            outcome: "malformed",
        },
        Case {
            what: "IPv4 total length beyond the frame",
            input: too_long,
            action: XDP_PASS,
            output: None,
            outcome: "malformed",
        },
        Case {
            what: "UDP length disagrees with IP length",
            input: udp_len_mismatch,
            action: XDP_PASS,
            output: None,
            outcome: "malformed",
        },
        Case {
            what: "IPv4 IHL below 5",
            input: bad_ihl,
            action: XDP_PASS,
            output: None,
            outcome: "malformed",
        },
        Case {
            what: "unknown port: no flow, to the stack",
            input: v4(a, sa(RA_V4, 31000)).bytes(),
            action: XDP_PASS,
            output: None,
            outcome: "no_flow",
        },
        Case {
            what: "right port, other local address: no flow",
            input: v4(a, sa(RB_V4, 30000)).bytes(),
            action: XDP_PASS,
            output: None,
            outcome: "no_flow",
        },
        Case {
            what: "not UDP",
            input: not_udp,
            action: XDP_PASS,
            output: None,
            outcome: "not_udp",
        },
        Case {
            what: "VLAN-tagged frame is passed",
            input: vlan,
            action: XDP_PASS,
            output: None,
            outcome: "not_ip",
        },
        Case {
            what: "ARP is passed",
            input: arp,
            action: XDP_PASS,
            output: None,
            outcome: "not_ip",
        },
        Case {
            // More in xdp_bridge_test_run.rs.
            what: "IPv4 → IPv6 flow is bridged in XDP (flow label 0)",
            input: v4(a, sa(RA_V4, 30040)).bytes(),
            action: XDP_REDIRECT,
            output: Some({
                let mut f = v4(a, sa(RA_V4, 30040));
                f.id = 0;
                relayed(&f, &f6, RB_MAC, B_MAC)
            }),
            outcome: "redirected",
        },
        Case {
            what: "no route to the peer",
            input: v4(a, sa(RA_V4, 30050)).bytes(),
            action: XDP_PASS,
            output: None,
            outcome: "fib_failed",
        },
        Case {
            what: "peer's MAC unknown: neighbour miss, to the stack",
            input: v4(a, sa(RA_V4, 30060)).bytes(),
            action: XDP_PASS,
            output: None,
            outcome: "neighbour_miss",
        },
    ];

    let mut failures = Vec::new();
    let mut forwarded_f1 = (0u64, 0u64);
    for c in &cases {
        let delta = fx.check(c, &mut failures)?;
        // not_ip / not_udp may also count background IPv6 traffic (MLD, RS)
        // on the attached interfaces.
        let exact = !matches!(c.outcome, "not_ip" | "not_udp");
        if (exact && delta != 1) || delta < 1 {
            failures.push(format!(
                "{}: outcome {} counted {delta} times",
                c.what, c.outcome
            ));
        }
        if c.input.len() > 42
            && c.input[36..38] == 30000u16.to_be_bytes()
            && matches!(c.action, XDP_REDIRECT | XDP_TX)
        {
            forwarded_f1.0 += 1;
            forwarded_f1.1 += c.input.len() as u64 - 14;
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Per-flow counters account for exactly the forwarded packets.
    let c = fx.relay.flows().counters(&FlowKey::new(sa(RA_V4, 30000)))?;
    assert_eq!((c.packets, c.bytes), forwarded_f1, "flow counters of F1");
    assert!(c.last_seen.is_some());
    let c = fx.relay.flows().counters(&FlowKey::new(sa(RA_V4, 30010)))?;
    assert_eq!(c.packets, 1, "only the accepted source counts");
    assert_eq!(c.last_rtp, None, "non-RTP flows record no RTP header");
    let c = fx.relay.flows().counters(&FlowKey::new(sa(RA_V4, 30090)))?;
    assert_eq!(
        (c.packets, c.last_rtp),
        (1, Some((0x0102_0304, 100))),
        "RTP header recorded"
    );

    // Removing a flow stops forwarding at once.
    fx.relay
        .flows_mut()
        .remove(&FlowKey::new(sa(RA_V4, 30000)))?;
    let (action, out) = fx.run(&basic.bytes())?;
    assert_eq!((action, out), (XDP_PASS, basic.bytes()), "removed flow");
    // And updating one in place takes effect at once.
    let moved = Flow::new(sa(RB_V4, 30012), sa(B_V4, 40099)).with_source(a);
    fx.relay
        .flows_mut()
        .update(FlowKey::new(sa(RA_V4, 30010)), moved)?;
    let (action, out) = fx.run(&checked.bytes())?;
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        out,
        relayed(&checked, &moved, RB_MAC, B_MAC),
        "updated flow"
    );
    let c = fx.relay.flows().counters(&FlowKey::new(sa(RA_V4, 30010)))?;
    assert_eq!(c.packets, 2, "an update keeps the flow's counters");
    Ok(())
}

/// Checksums after the rewrite equal a full recompute, for many random
/// packets, flows and addresses, IPv4 and IPv6.
#[test]
fn checksums_match_full_recompute() -> anyhow::Result<()> {
    if !require_root("checksums_match_full_recompute") {
        return Ok(());
    }
    let mut fx = Fixture::new()?;
    let seed: u64 = std::env::var("MEDIA_RELAY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("checksums_match_full_recompute seed {seed} (MEDIA_RELAY_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    const CASES: usize = 500;
    for i in 0..CASES {
        let ipv6 = i % 2 == 1;
        let local_port = rng.random_range(1024..65535);
        let (local, relay_out, peer, src) = if ipv6 {
            let far = Ipv6Addr::new(
                0x2001,
                2,
                0,
                0xff00 | rng.random_range(0..=0xff),
                rng.random(),
                rng.random(),
                rng.random(),
                rng.random(),
            );
            let own = Ipv6Addr::new(
                0x2001,
                2,
                0,
                rng.random(),
                rng.random(),
                rng.random(),
                rng.random(),
                rng.random(),
            );
            (
                sa(RA_V6, local_port),
                sa(own, rng.random_range(1..=65535)),
                sa(far, rng.random_range(1..=65535)),
                sa(
                    Ipv6Addr::new(
                        0x2001,
                        2,
                        0,
                        1,
                        rng.random(),
                        rng.random(),
                        rng.random(),
                        rng.random(),
                    ),
                    rng.random_range(1..=65535),
                ),
            )
        } else {
            let far = Ipv4Addr::new(198, 19, rng.random(), rng.random());
            let own = Ipv4Addr::new(198, 18 + rng.random_range(0..2), rng.random(), rng.random());
            (
                sa(RA_V4, local_port),
                sa(own, rng.random_range(1..=65535)),
                sa(far, rng.random_range(1..=65535)),
                sa(
                    Ipv4Addr::new(198, 18, 1, rng.random()),
                    rng.random_range(1..=65535),
                ),
            )
        };
        let len = rng.random_range(0..400);
        let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let mut f = UdpFrame::new(RA_MAC, A_MAC, src, local, &payload);
        f.ttl = rng.random_range(2..=255);
        f.tos = rng.random();
        f.id = rng.random();
        f.no_udp_checksum = !ipv6 && rng.random_bool(0.1);
        let flow = Flow::new(relay_out, peer);
        let key = FlowKey::new(local);
        fx.relay.flows_mut().install(key, flow)?;
        let (action, out) = fx.run(&f.bytes())?;
        fx.relay.flows_mut().remove(&key)?;
        let want = relayed(&f, &flow, RB_MAC, B_MAC);
        assert_eq!(action, XDP_REDIRECT, "case {i} (seed {seed}): {f:?}");
        assert_eq!(out, want, "case {i} (seed {seed}): {f:?}");
    }
    Ok(())
}

/// RTP sequence accounting in `FLOW_SEQ`: RTP packets with a known gap
/// (across the 16-bit wrap, reordered, with RTCP and non-RTP mixed in) run
/// through the program, for IPv4 and IPv6; the flow's window, read through
/// the flow table and straight from the pinned `ARRAY` map, has exactly
/// the gap as loss. A slot handed out again starts from an empty window.
#[test]
fn rtp_loss_is_counted_in_flow_seq() -> anyhow::Result<()> {
    use aya::maps::{Array, Map, MapData};
    use media_ebpf::{SeqWindow, StreamQuality};
    use media_relay_tests::media::rtp;

    if !require_root("rtp_loss_is_counted_in_flow_seq") {
        return Ok(());
    }
    let mut fx = Fixture::new()?;
    const SSRC: u32 = 0x5eed_0001;
    // 65530..=65535, 0..40 (46 numbers) without these four.
    let skipped = [65533u16, 3, 4, 17];
    let mut seqs: Vec<u16> = (65530..=65535u16)
        .chain(0..40)
        .filter(|s| !skipped.contains(s))
        .collect();
    // 21 arrives after 22.
    let i = seqs.iter().position(|&s| s == 21).expect("21 is sent");
    seqs.swap(i, i + 1);
    let mut rtcp_mux = rtp(SSRC, 7);
    rtcp_mux[1] = 200; // SR on the RTP port (PT 200 reads as marker + 72)
    let mut not_rtp = rtp(SSRC, 5000);
    not_rtp[0] = 0x00; // version 0

    let seq_map = |fx: &Fixture| -> anyhow::Result<Array<MapData, StreamQuality>> {
        let pin = fx.relay.pin_dir().join(media_ebpf::maps::FLOW_QUALITY);
        // Fails unless the pin is a plain (shared) ARRAY.
        Ok(Array::try_from(Map::Array(MapData::from_pin(pin)?))?)
    };

    for (local, relay_out, peer, src) in [
        (
            sa(RA_V4, 30100),
            sa(RB_V4, 30102),
            sa(B_V4, 40100),
            sa(A_V4, 5000),
        ),
        (
            sa(RA_V6, 30100),
            sa(RB_V6, 30102),
            sa(B_V6, 40100),
            sa(A_V6, 5000),
        ),
    ] {
        let key = FlowKey::new(local);
        let flow = Flow::new(relay_out, peer).with_source(src).rtp();
        fx.relay.flows_mut().install(key, flow)?;
        let frame = |payload: &[u8]| UdpFrame::new(RA_MAC, A_MAC, src, local, payload).bytes();
        for (n, &s) in seqs.iter().enumerate() {
            if n == 10 {
                for p in [&rtcp_mux, &not_rtp] {
                    let (action, _) = fx.run(&frame(p))?;
                    assert_eq!(action, XDP_REDIRECT, "{local}: non-RTP is forwarded too");
                }
            }
            let (action, _) = fx.run(&frame(&rtp(SSRC, s)))?;
            assert_eq!(action, XDP_REDIRECT, "{local}: RTP seq {s}");
        }
        let c = fx.relay.flows().counters(&key)?;
        assert_eq!(c.packets, seqs.len() as u64 + 2, "{local}: packets");
        assert_eq!(
            (c.expected(), c.received(), c.seq.lost()),
            (46, 42, 4),
            "{local}: expected/received/lost: {:?}",
            c.seq
        );
        assert_eq!(c.seq.ssrc, SSRC);
        let slot = fx.relay.flows().get(&key)?.slot();
        let pinned = seq_map(&fx)?.get(&slot, 0)?;
        assert_eq!(pinned.seq, c.seq, "{local}: FLOW_QUALITY read from its pin");

        // A new SSRC closes the window and opens another: 5 numbers, one
        // missing.
        for s in [100u16, 101, 103, 104] {
            let (action, _) = fx.run(&frame(&rtp(SSRC + 1, s)))?;
            assert_eq!(action, XDP_REDIRECT);
        }
        let c = fx.relay.flows().counters(&key)?;
        assert_eq!(
            (c.expected(), c.received(), c.seq.lost()),
            (51, 46, 5),
            "{local}: after an SSRC change: {:?}",
            c.seq
        );

        // Removal hands back the final window. The freed slot rests
        // (an XDP run may still hold the removed flow): the flow installed
        // again gets another one, which starts empty.
        let last = fx.relay.flows_mut().remove(&key)?;
        assert_eq!(last.seq, c.seq, "{local}: final window");
        fx.relay.flows_mut().install(key, flow)?;
        assert_ne!(
            fx.relay.flows().get(&key)?.slot(),
            slot,
            "a freed slot is not handed out again at once"
        );
        let c = fx.relay.flows().counters(&key)?;
        assert_eq!(
            c.seq,
            SeqWindow::default(),
            "{local}: new slot starts empty"
        );
        fx.relay.flows_mut().remove(&key)?;
    }

    // Flows without the RTP flag leave their window alone.
    let key = FlowKey::new(sa(RA_V4, 30110));
    fx.relay
        .flows_mut()
        .install(key, Flow::new(sa(RB_V4, 30112), sa(B_V4, 40110)))?;
    for s in 0..5u16 {
        let f = UdpFrame::new(
            RA_MAC,
            A_MAC,
            sa(A_V4, 5000),
            sa(RA_V4, 30110),
            &rtp(SSRC, s),
        );
        assert_eq!(fx.run(&f.bytes())?.0, XDP_REDIRECT);
    }
    let c = fx.relay.flows().counters(&key)?;
    assert_eq!(
        (c.packets, c.seq),
        (5, SeqWindow::default()),
        "non-RTP flow"
    );
    Ok(())
}

/// An RTCP sender report (one block) and a receiver report (one block).
fn sr_and_rr() -> (Vec<u8>, Vec<u8>) {
    // SR from 0x11: NTP 0x0000_1234_5678_9abc; block about 0x22: 25 %
    // lost, cumulative 300, highest 7000, jitter 40, LSR 0x1111_2222,
    // DLSR 0x8000.
    let mut sr = vec![0x81, 200, 0, 12];
    for w in [0x11u32, 0x1234, 0x5678_9abc, 0, 0, 0] {
        sr.extend_from_slice(&w.to_be_bytes());
    }
    for w in [0x22u32, (64 << 24) | 0x12c, 7000, 40, 0x1111_2222, 0x8000] {
        sr.extend_from_slice(&w.to_be_bytes());
    }
    // RR from 0x33 about 0x44: cumulative lost −2 (duplicates), highest
    // 9000, jitter 12, LSR 0x1234_5678, DLSR 0x0002_0000.
    let mut rr = vec![0x81, 201, 0, 7];
    for w in [
        0x33u32,
        0x44,
        0x00ff_fffe,
        9000,
        12,
        0x1234_5678,
        0x0002_0000,
    ] {
        rr.extend_from_slice(&w.to_be_bytes());
    }
    (sr, rr)
}

/// RTCP multiplexed on an RTP flow (rtcp-mux): an SR and an RR land in
/// the flow's `FLOW_RTCP` record with their fields and when they passed,
/// read through the flow table and straight from the pin; the flow's
/// `StreamQuality` in `FLOW_QUALITY` is left as the RTP made it. With
/// `CONTROL_NO_QUALITY` set, neither record moves while packets and bytes
/// are still counted.
#[test]
fn rtcp_mux_lands_in_flow_rtcp() -> anyhow::Result<()> {
    use aya::maps::{Array, Map, MapData};
    use media_ebpf::{RtcpSeen, StreamQuality, quality::RTCP_BLOCK_SEEN, quality::RTCP_SR_SEEN};
    use media_relay_tests::media::rtp;

    if !require_root("rtcp_mux_lands_in_flow_rtcp") {
        return Ok(());
    }
    let mut fx = Fixture::new()?;
    const SSRC: u32 = 0x5eed_0002;
    let (sr, rr) = sr_and_rr();
    let pinned = |fx: &Fixture, slot: u32| -> anyhow::Result<(StreamQuality, RtcpSeen)> {
        let dir = fx.relay.pin_dir();
        let q: Array<MapData, StreamQuality> = Array::try_from(Map::Array(MapData::from_pin(
            dir.join(media_ebpf::maps::FLOW_QUALITY),
        )?))?;
        let r: Array<MapData, RtcpSeen> = Array::try_from(Map::Array(MapData::from_pin(
            dir.join(media_ebpf::maps::FLOW_RTCP),
        )?))?;
        Ok((q.get(&slot, 0)?, r.get(&slot, 0)?))
    };
    for (local, relay_out, peer, src) in [
        (
            sa(RA_V4, 30200),
            sa(RB_V4, 30202),
            sa(B_V4, 40200),
            sa(A_V4, 5000),
        ),
        (
            sa(RA_V6, 30200),
            sa(RB_V6, 30202),
            sa(B_V6, 40200),
            sa(A_V6, 5000),
        ),
    ] {
        let key = FlowKey::new(local);
        let flow = Flow::new(relay_out, peer)
            .with_source(src)
            .rtp()
            .with_clock_rate(8000);
        fx.relay.flows_mut().install(key, flow)?;
        let frame = |payload: &[u8]| UdpFrame::new(RA_MAC, A_MAC, src, local, payload).bytes();
        for s in 0..5u16 {
            assert_eq!(fx.run(&frame(&rtp(SSRC, s)))?.0, XDP_REDIRECT);
        }
        let slot = fx.relay.flows().get(&key)?.slot();
        let (quality, nothing) = pinned(&fx, slot)?;
        assert_eq!(nothing, RtcpSeen::default(), "{local}: no RTCP yet");
        assert_eq!(quality.seq.received(), 5);

        let t0 = monotonic_ns();
        assert_eq!(fx.run(&frame(&sr))?.0, XDP_REDIRECT, "{local}: SR");
        let t1 = monotonic_ns();
        let c = fx.relay.flows().counters(&key)?;
        let r = c.rtcp;
        assert_eq!(r.flags, RTCP_SR_SEEN | RTCP_BLOCK_SEEN, "{local}: {r:?}");
        assert_eq!(
            (r.sr_count, r.sr_ssrc, r.sr_ntp_mid),
            (1, 0x11, 0x1234_5678),
            "{local}"
        );
        assert!((t0..=t1).contains(&r.sr_at()), "{local}: SR time {r:?}");
        assert_eq!(
            (r.block_count, r.reporter, r.source, r.highest, r.jitter),
            (1, 0x11, 0x22, 7000, 40),
            "{local}"
        );
        assert_eq!((r.fraction_lost(), r.cumulative_lost()), (0.25, 300));
        assert_eq!((r.lsr, r.dlsr), (0x1111_2222, 0x8000), "{local}");

        let t0 = monotonic_ns();
        assert_eq!(fx.run(&frame(&rr))?.0, XDP_REDIRECT, "{local}: RR");
        let t1 = monotonic_ns();
        let c = fx.relay.flows().counters(&key)?;
        let r = c.rtcp;
        assert_eq!((r.sr_count, r.block_count), (1, 2), "{local}: {r:?}");
        assert_eq!(
            (
                r.reporter,
                r.source,
                r.cumulative_lost(),
                r.highest,
                r.jitter
            ),
            (0x33, 0x44, -2, 9000, 12),
            "{local}"
        );
        assert_eq!((r.lsr, r.dlsr), (0x1234_5678, 0x0002_0000), "{local}");
        assert!((t0..=t1).contains(&r.block_at()), "{local}: block time");
        assert_eq!(c.packets, 7, "{local}: RTCP is forwarded and counted");
        // The RTP stream's record is untouched by the RTCP; the pins hold
        // what the flow table read.
        assert_eq!(c.quality, quality, "{local}: StreamQuality unchanged");
        assert_eq!(
            pinned(&fx, slot)?,
            (quality, r),
            "{local}: FLOW_QUALITY / FLOW_RTCP pins"
        );

        // Telemetry off: counters only.
        fx.relay.set_quality_telemetry(false);
        for p in [rtp(SSRC, 5), sr.clone(), rr.clone()] {
            assert_eq!(
                fx.run(&frame(&p))?.0,
                XDP_REDIRECT,
                "{local}: telemetry off"
            );
        }
        let off = fx.relay.flows().counters(&key)?;
        assert_eq!(off.packets, 10, "{local}: counted with telemetry off");
        assert_eq!(off.last_rtp, Some((SSRC, 5)), "{local}: last RTP header");
        assert_eq!(
            (off.quality, off.rtcp),
            (quality, r),
            "{local}: no accounting with telemetry off"
        );
        fx.relay.set_quality_telemetry(true);
        assert_eq!(fx.run(&frame(&rtp(SSRC, 6)))?.0, XDP_REDIRECT);
        let on = fx.relay.flows().counters(&key)?;
        assert_eq!(on.quality.seq.received(), 6, "{local}: on again");

        // A slot handed out again starts without RTCP.
        fx.relay.flows_mut().remove(&key)?;
        fx.relay.flows_mut().install(key, flow)?;
        assert_eq!(fx.relay.flows().counters(&key)?.rtcp, RtcpSeen::default());
        fx.relay.flows_mut().remove(&key)?;
    }
    Ok(())
}

/// CLOCK_MONOTONIC in ns, `bpf_ktime_get_ns()`'s clock.
fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// The flow table's rules the data plane relies on: an expected source of
/// the other family than the port is refused (it would be compared on its
/// first bytes); an RTP SSRC of 0 is a real SSRC (recorded, not "none");
/// a freed slot comes back only after its grace period, empty.
#[test]
fn flow_table_rules() -> anyhow::Result<()> {
    use media_user::dataplane::FlowError;
    if !require_root("flow_table_rules") {
        return Ok(());
    }
    let mut fx = Fixture::new()?;
    let v6_source = sa(A_V6, 5000);
    let err = fx
        .relay
        .flows_mut()
        .install(
            FlowKey::new(sa(RA_V4, 31000)),
            Flow::new(sa(RB_V4, 31002), sa(B_V4, 41000)).with_source(v6_source),
        )
        .expect_err("an IPv6 source on an IPv4 port");
    assert!(matches!(err, FlowError::SourceFamily { .. }), "{err}");
    assert!(fx.relay.flows().is_empty());

    // SSRC 0.
    let key = FlowKey::new(sa(RA_V4, 31010));
    fx.relay.flows_mut().install(
        key,
        Flow::new(sa(RB_V4, 31012), sa(B_V4, 41010))
            .with_source(sa(A_V4, 5000))
            .rtp(),
    )?;
    let f = UdpFrame::new(
        RA_MAC,
        A_MAC,
        sa(A_V4, 5000),
        sa(RA_V4, 31010),
        &[0x80, 8, 0, 77, 0, 0, 0, 160, 0, 0, 0, 0, 0xd5, 0xd5],
    );
    assert_eq!(fx.run(&f.bytes())?.0, XDP_REDIRECT);
    let c = fx.relay.flows().counters(&key)?;
    assert_eq!(c.last_rtp, Some((0, 77)), "SSRC 0 is recorded as an SSRC");
    let slot = fx.relay.flows().get(&key)?.slot();
    fx.relay.flows_mut().remove(&key)?;

    // After the grace period the slot is handed out again, zeroed.
    std::thread::sleep(media_user::dataplane::SLOT_GRACE + std::time::Duration::from_millis(50));
    let other = FlowKey::new(sa(RA_V4, 31020));
    fx.relay
        .flows_mut()
        .install(other, Flow::new(sa(RB_V4, 31022), sa(B_V4, 41020)).rtp())?;
    assert_eq!(
        fx.relay.flows().get(&other)?.slot(),
        slot,
        "rested slot reused"
    );
    let c = fx.relay.flows().counters(&other)?;
    assert_eq!(
        (c.packets, c.last_rtp),
        (0, None),
        "reused slot starts empty"
    );
    Ok(())
}

/// While no daemon runs (its heartbeat ran out, or it stopped), what would
/// need it is dropped instead of reaching a port with no socket: a
/// learning stream's other source, and packets with no flow inside the
/// media port range. Installed flows keep forwarding; outside the range
/// the stack still gets its packets.
#[test]
fn an_absent_daemon_draws_no_icmp() -> anyhow::Result<()> {
    if !require_root("an_absent_daemon_draws_no_icmp") {
        return Ok(());
    }
    let mut fx = Fixture::new()?;
    let a = sa(A_V4, 5000);
    let flows = fx.relay.flows_mut();
    flows.install(
        FlowKey::new(sa(RA_V4, 32000)),
        Flow::new(sa(RB_V4, 32002), sa(B_V4, 42000))
            .with_source(a)
            .learning(true),
    )?;
    let forwarded = v4(a, sa(RA_V4, 32000));
    let other = v4(sa(Ipv4Addr::new(198, 18, 1, 70), 5000), sa(RA_V4, 32000));
    let in_range = v4(a, sa(RA_V4, 32010));
    let out_of_range = v4(a, sa(RA_V4, 9999));
    let cases = |fx: &Fixture| -> anyhow::Result<Vec<u32>> {
        [&forwarded, &other, &in_range, &out_of_range]
            .iter()
            .map(|f| Ok(fx.run(&f.bytes())?.0))
            .collect()
    };
    // Daemon present.
    fx.relay
        .heartbeat(std::time::Duration::from_secs(60), (30000, 40000), false);
    assert_eq!(cases(&fx)?, [XDP_REDIRECT, XDP_PASS, XDP_PASS, XDP_PASS]);
    // Daemon gone.
    let before = fx.relay.outcomes()?["daemon_absent"];
    fx.relay.absent();
    assert_eq!(cases(&fx)?, [XDP_REDIRECT, XDP_DROP, XDP_DROP, XDP_PASS]);
    assert_eq!(fx.relay.outcomes()?["daemon_absent"] - before, 2);
    // A heartbeat that ran out counts as gone too.
    fx.relay
        .heartbeat(std::time::Duration::from_millis(1), (30000, 40000), false);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(fx.run(&other.bytes())?.0, XDP_DROP);
    Ok(())
}
