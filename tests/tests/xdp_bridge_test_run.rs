//! BPF_PROG_TEST_RUN on the loaded relay program: IPv4 ↔ IPv6 bridging.
//! Crafted frames in, action and exact output bytes out, as a table of
//! {description, input, expected action, expected output, outcome}, in
//! the pattern of `xdp_test_run.rs`.
//!
//! Expected outputs are built independently ([`UdpFrame`] takes its
//! checksums from etherparse), so a byte match is a match against a full
//! recompute of the new IP header checksum and of the UDP checksum over
//! the new pseudo-header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use media_ebpf::{
    Flow, FlowKey, RtcpSeen,
    quality::{RTCP_BLOCK_SEEN, RTCP_SR_SEEN},
};
use media_relay_tests::{
    bed::{A_MAC, A_V4, A_V6, B_MAC, B_V4, B_V6, RA_MAC, RA_V4, RA_V6, RB_MAC, RB_V4, RB_V6},
    frame::UdpFrame,
    media::rtp,
    require_root,
    test_run::{Case, Fixture, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// A frame from A (on `ra`) to the relay's `local`.
fn from_a(src: SocketAddr, local: SocketAddr, payload: &[u8]) -> UdpFrame {
    UdpFrame::new(RA_MAC, A_MAC, src, local, payload)
}

/// `f` as the relay must send it with `flow`, in the flow's family,
/// through the interface with MAC `smac` towards `dmac`: TTL − 1, TOS ↔
/// traffic class carried, IPv6 flow label 0 / IPv4 ID 0 with DF
/// (`UdpFrame` always sets DF), checksums recomputed in full.
fn bridged(f: &UdpFrame, flow: &Flow, smac: [u8; 6], dmac: [u8; 6]) -> Vec<u8> {
    let mut out = f.clone();
    out.smac = smac;
    out.dmac = dmac;
    out.src = flow.relay();
    out.dst = flow.peer();
    out.ttl = f.ttl - 1;
    out.id = 0;
    out.no_udp_checksum = false;
    out.bytes()
}

/// An RTCP sender report with one report block (52 bytes).
fn sender_report() -> Vec<u8> {
    let mut sr = vec![0x81, 200, 0, 12];
    for w in [0x11u32, 0x1234, 0x5678_9abc, 0, 0, 0] {
        sr.extend_from_slice(&w.to_be_bytes());
    }
    for w in [0x22u32, (64 << 24) | 0x12c, 7000, 40, 0x1111_2222, 0x8000] {
        sr.extend_from_slice(&w.to_be_bytes());
    }
    sr
}

#[test]
fn bridging_table() -> anyhow::Result<()> {
    if !require_root("bridging_table") {
        return Ok(());
    }
    let mut fx = Fixture::new()?;
    let a4 = sa(A_V4, 5000);
    let a6 = sa(A_V6, 5000);
    // RTP and RTCP, each way; one back out of `ra` (XDP_TX).
    let k_rtp46 = FlowKey::new(sa(RA_V4, 31000));
    let f_rtp46 = Flow::new(sa(RB_V6, 31002), sa(B_V6, 41000))
        .with_source(a4)
        .rtp()
        .with_clock_rate(8000);
    let k_rtcp46 = FlowKey::new(sa(RA_V4, 31001));
    let f_rtcp46 = Flow::new(sa(RB_V6, 31003), sa(B_V6, 41001)).with_source(sa(A_V4, 5001));
    let k_rtp64 = FlowKey::new(sa(RA_V6, 31010));
    let f_rtp64 = Flow::new(sa(RB_V4, 31012), sa(B_V4, 41010))
        .with_source(a6)
        .rtp()
        .with_clock_rate(8000);
    let k_rtcp64 = FlowKey::new(sa(RA_V6, 31011));
    let f_rtcp64 = Flow::new(sa(RB_V4, 31013), sa(B_V4, 41011)).with_source(sa(A_V6, 5001));
    let k_tx = FlowKey::new(sa(RA_V4, 31020));
    let f_tx = Flow::new(sa(RA_V6, 31022), sa(A_V6, 6000));
    let k_tx6 = FlowKey::new(sa(RA_V6, 31030));
    let f_tx6 = Flow::new(sa(RA_V4, 31032), sa(A_V4, 6000));
    let flows = fx.relay.flows_mut();
    for (k, f) in [
        (k_rtp46, f_rtp46),
        (k_rtcp46, f_rtcp46),
        (k_rtp64, f_rtp64),
        (k_rtcp64, f_rtcp64),
        (k_tx, f_tx),
        (k_tx6, f_tx6),
    ] {
        flows.install(k, f)?;
    }

    let rtp46 = {
        let mut f = from_a(a4, k_rtp46.local(), &rtp(0xa4, 7));
        f.tos = 0xb8; // EF
        f
    };
    let rtcp46 = from_a(sa(A_V4, 5001), k_rtcp46.local(), &sender_report());
    let rtp64 = {
        let mut f = from_a(a6, k_rtp64.local(), &rtp(0xa6, 9));
        f.tos = 0xb9; // EF, ECT(1)
        f.id = 0x0b_eef5; // a flow label, not carried
        f
    };
    let rtcp64 = from_a(sa(A_V6, 5001), k_rtcp64.local(), &sender_report());
    let with_ttl = |f: &UdpFrame, ttl: u8| {
        let mut f = f.clone();
        f.ttl = ttl;
        f
    };
    let no_check = {
        let mut f = rtp46.clone();
        f.no_udp_checksum = true;
        f
    };
    // Ethernet padding after a short datagram is carried, never read.
    let padded = |f: &UdpFrame| {
        let mut b = f.bytes();
        b.resize(b.len().max(60) + 6, 0);
        b
    };
    let short46 = from_a(a4, k_rtp46.local(), b"hi");
    let short64 = from_a(a6, k_rtp64.local(), b"hi");
    let with_pad = |mut out: Vec<u8>, input: &[u8], f: &UdpFrame| {
        out.extend_from_slice(&input[f.bytes().len()..]);
        out
    };
    // A 1500-byte IPv4 packet is 1520 bytes as IPv6: over the MTU.
    let big46 = from_a(a4, k_rtp46.local(), &vec![0x55; 1500 - 28]);
    let big64 = from_a(a6, k_rtp64.local(), &vec![0x55; 1500 - 48]);

    let cases = vec![
        Case {
            what: "IPv4 → IPv6 RTP, DSCP EF carried",
            input: rtp46.bytes(),
            action: XDP_REDIRECT,
            output: Some(bridged(&rtp46, &f_rtp46, RB_MAC, B_MAC)),
            outcome: "redirected",
        },
        Case {
            what: "IPv4 → IPv6 RTCP",
            input: rtcp46.bytes(),
            action: XDP_REDIRECT,
            output: Some(bridged(&rtcp46, &f_rtcp46, RB_MAC, B_MAC)),
            outcome: "redirected",
        },
        Case {
            what: "IPv6 → IPv4 RTP, traffic class carried, ID 0 + DF",
            input: rtp64.bytes(),
            action: XDP_REDIRECT,
            output: Some(bridged(&rtp64, &f_rtp64, RB_MAC, B_MAC)),
            outcome: "redirected",
        },
        Case {
            what: "IPv6 → IPv4 RTCP",
            input: rtcp64.bytes(),
            action: XDP_REDIRECT,
            output: Some(bridged(&rtcp64, &f_rtcp64, RB_MAC, B_MAC)),
            outcome: "redirected",
        },
        Case {
            what: "IPv4 → IPv6 back out of the ingress interface",
            input: from_a(a4, k_tx.local(), b"tx").bytes(),
            action: XDP_TX,
            output: Some(bridged(
                &from_a(a4, k_tx.local(), b"tx"),
                &f_tx,
                RA_MAC,
                A_MAC,
            )),
            outcome: "transmitted",
        },
        Case {
            what: "IPv6 → IPv4 back out of the ingress interface",
            input: from_a(a6, k_tx6.local(), b"tx").bytes(),
            action: XDP_TX,
            output: Some(bridged(
                &from_a(a6, k_tx6.local(), b"tx"),
                &f_tx6,
                RA_MAC,
                A_MAC,
            )),
            outcome: "transmitted",
        },
        Case {
            what: "IPv4 TTL 2 → IPv6 hop limit 1",
            input: with_ttl(&rtp46, 2).bytes(),
            action: XDP_REDIRECT,
            output: Some(bridged(&with_ttl(&rtp46, 2), &f_rtp46, RB_MAC, B_MAC)),
            outcome: "redirected",
        },
        Case {
            what: "IPv4 TTL 1 is dropped, as same-family",
            input: with_ttl(&rtp46, 1).bytes(),
            action: XDP_DROP,
            output: None,
            outcome: "ttl_exceeded",
        },
        Case {
            what: "IPv6 hop limit 1 is dropped, as same-family",
            input: with_ttl(&rtp64, 1).bytes(),
            action: XDP_DROP,
            output: None,
            outcome: "ttl_exceeded",
        },
        Case {
            what: "IPv4 without UDP checksum: the daemon computes one",
            input: no_check.bytes(),
            action: XDP_PASS,
            output: None,
            outcome: "family_change",
        },
        Case {
            what: "IPv4 → IPv6 with Ethernet padding",
            input: padded(&short46),
            action: XDP_REDIRECT,
            output: Some(with_pad(
                bridged(&short46, &f_rtp46, RB_MAC, B_MAC),
                &padded(&short46),
                &short46,
            )),
            outcome: "redirected",
        },
        Case {
            what: "IPv6 → IPv4 with Ethernet padding",
            input: padded(&short64),
            action: XDP_REDIRECT,
            output: Some(with_pad(
                bridged(&short64, &f_rtp64, RB_MAC, B_MAC),
                &padded(&short64),
                &short64,
            )),
            outcome: "redirected",
        },
        Case {
            what: "1500 bytes of IPv4 exceed the MTU as IPv6: to the daemon",
            input: big46.bytes(),
            action: XDP_PASS,
            output: None,
            outcome: "fib_failed",
        },
        Case {
            what: "1500 bytes of IPv6 fit as IPv4",
            input: big64.bytes(),
            action: XDP_REDIRECT,
            output: Some(bridged(&big64, &f_rtp64, RB_MAC, B_MAC)),
            outcome: "redirected",
        },
    ];

    let mut failures = Vec::new();
    for c in &cases {
        let delta = fx.check(c, &mut failures)?;
        if delta != 1 {
            failures.push(format!(
                "{}: outcome {} counted {delta} times",
                c.what, c.outcome
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The flows' counters: every forwarded packet, the arriving IP length,
    // the RTP header and sequence window, the RTCP report. One more RTP
    // packet each way first: the last RTP header is read from the CPU that
    // forwarded last, and the table's last packets were not RTP.
    assert_eq!(fx.run(&rtp46.bytes())?.0, XDP_REDIRECT);
    assert_eq!(fx.run(&rtp64.bytes())?.0, XDP_REDIRECT);
    let ip_len = |f: &UdpFrame| f.bytes().len() as u64 - 14;
    let c = fx.relay.flows().counters(&k_rtp46)?;
    assert_eq!(
        (c.packets, c.bytes),
        (4, ip_len(&rtp46) * 3 + ip_len(&short46)),
        "IPv4 → IPv6 RTP flow"
    );
    assert_eq!(c.last_rtp, Some((0xa4, 7)));
    assert_eq!(c.received(), 3, "RTP in the sequence window");
    let c = fx.relay.flows().counters(&k_rtp64)?;
    assert_eq!(
        (c.packets, c.bytes),
        (4, ip_len(&rtp64) * 2 + ip_len(&short64) + ip_len(&big64)),
        "IPv6 → IPv4 RTP flow"
    );
    assert_eq!(c.last_rtp, Some((0xa6, 9)));
    for k in [k_rtcp46, k_rtcp64] {
        let c = fx.relay.flows().counters(&k)?;
        let r = RtcpSeen::from_slot(&c.quality);
        assert_eq!(c.packets, 1, "{k:?}");
        assert_eq!(r.flags, RTCP_SR_SEEN | RTCP_BLOCK_SEEN, "{k:?}: {r:?}");
        assert_eq!((r.sr_ssrc, r.source, r.highest), (0x11, 0x22, 7000));
    }
    Ok(())
}

/// Random payloads, ports, TOS and addresses both ways: the program's
/// output equals a frame built with full checksums.
#[test]
fn bridged_checksums_match_full_recompute() -> anyhow::Result<()> {
    if !require_root("bridged_checksums_match_full_recompute") {
        return Ok(());
    }
    let mut fx = Fixture::new()?;
    let mut rng = StdRng::seed_from_u64(0x4646_0015);
    let far4 = |rng: &mut StdRng| Ipv4Addr::new(198, 19, rng.random(), rng.random());
    let far6 = |rng: &mut StdRng| {
        Ipv6Addr::new(
            0x2001,
            2,
            0,
            0xff00,
            rng.random(),
            0,
            rng.random(),
            rng.random(),
        )
    };
    let mut checked = 0;
    for n in 0..400u16 {
        let v6_in = n % 2 == 1;
        let port = 32000 + 2 * n;
        let (local, src, out, peer): (SocketAddr, SocketAddr, SocketAddr, SocketAddr) = if v6_in {
            (
                sa(RA_V6, port),
                sa(A_V6, rng.random_range(1024..=65535)),
                sa(RB_V4, rng.random_range(1..=65535)),
                sa(far4(&mut rng), rng.random_range(1..=65535)),
            )
        } else {
            (
                sa(RA_V4, port),
                sa(A_V4, rng.random_range(1024..=65535)),
                sa(RB_V6, rng.random_range(1..=65535)),
                sa(far6(&mut rng), rng.random_range(1..=65535)),
            )
        };
        let key = FlowKey::new(local);
        let flow = Flow::new(out, peer);
        fx.relay.flows_mut().install(key, flow)?;
        let len = rng.random_range(0..1200);
        let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let mut f = from_a(src, local, &payload);
        f.tos = rng.random();
        f.ttl = rng.random_range(2..=255);
        f.id = rng.random_range(0..0x10_0000);
        let (action, got) = fx.run(&f.bytes())?;
        assert_eq!(action, XDP_REDIRECT, "case {n}: {f:?}");
        assert_eq!(got, bridged(&f, &flow, RB_MAC, B_MAC), "case {n}: {f:?}");
        fx.relay.flows_mut().remove(&key)?;
        checked += 1;
    }
    assert_eq!(checked, 400);
    Ok(())
}
