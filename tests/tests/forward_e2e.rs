//! End to end over veth in network namespaces: real UDP sockets on both
//! legs, the relay program attached in native or generic mode, IPv4 and
//! IPv6. The receiving kernels validate every checksum (veth frames from
//! XDP carry no checksum offload state), and their UDP checksum-error
//! counters are checked too.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use media_ebpf::{Flow, FlowKey};
use media_relay_tests::{
    Bed, BedOptions, Netns, Relay,
    bed::{A_V4, A_V6, B_V4, B_V6, RA_V4, RA_V6, RB_V4, RB_V6},
    media::{drain, rtp, udp_socket},
    require_root,
};

fn bind(ns: &Netns, addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    udp_socket(ns, addr, Duration::from_millis(500))
}
use media_user::dataplane::XdpMode;

/// Packets per direction and stream.
const N: u16 = 200;

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// UDP checksum errors counted by the namespace's kernel.
fn csum_errors(ns: &Netns) -> anyhow::Result<u64> {
    let snmp = ns.exec("cat", &["/proc/net/snmp", "/proc/net/snmp6"])?;
    let mut total = 0;
    let lines: Vec<&str> = snmp.lines().collect();
    for w in lines.windows(2) {
        if w[0].starts_with("Udp:") && w[1].starts_with("Udp:") {
            let names = w[0].split_whitespace();
            let values = w[1].split_whitespace();
            for (n, v) in names.zip(values) {
                if n == "InCsumErrors" {
                    total += v.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    for l in &lines {
        if let Some(v) = l.strip_prefix("Udp6InCsumErrors") {
            total += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Ok(total)
}

struct Leg {
    /// The peer's socket in its namespace.
    peer: UdpSocket,
    /// The relay's socket for this leg (what the daemon binds per port).
    relay: UdpSocket,
    peer_addr: SocketAddr,
    relay_addr: SocketAddr,
}

fn e2e(mode: XdpMode, ipv6: bool) -> anyhow::Result<()> {
    let bed = Bed::new(BedOptions {
        peer_xdp: mode == XdpMode::Native,
        static_neighbours: false,
    })?;
    let mut relay = Relay::start(&bed, mode, 1024)?;
    let (a_ip, ra_ip, rb_ip, b_ip): (IpAddr, IpAddr, IpAddr, IpAddr) = if ipv6 {
        (A_V6.into(), RA_V6.into(), RB_V6.into(), B_V6.into())
    } else {
        (A_V4.into(), RA_V4.into(), RB_V4.into(), B_V4.into())
    };
    let errors_before = csum_errors(&bed.a)? + csum_errors(&bed.b)?;

    // RTP and RTCP (port + 1) on both legs.
    let mut legs = Vec::new();
    for (rtcp, a_port, ra_port, rb_port, b_port) in [
        (false, 5000, 30000, 30002, 6000),
        (true, 5001, 30001, 30003, 6001),
    ] {
        let _ = rtcp;
        let a = Leg {
            peer: bind(&bed.a, sa(a_ip, a_port))?,
            relay: bind(&bed.relay, sa(ra_ip, ra_port))?,
            peer_addr: sa(a_ip, a_port),
            relay_addr: sa(ra_ip, ra_port),
        };
        let b = Leg {
            peer: bind(&bed.b, sa(b_ip, b_port))?,
            relay: bind(&bed.relay, sa(rb_ip, rb_port))?,
            peer_addr: sa(b_ip, b_port),
            relay_addr: sa(rb_ip, rb_port),
        };
        legs.push((a, b));
    }

    // 1. No flow yet: datagrams reach the sockets bound in the relay's
    //    namespace (and the relay learns both peers' MACs on the way).
    for (a, b) in &legs {
        a.peer.send_to(b"hello", a.relay_addr)?;
        b.peer.send_to(b"hello", b.relay_addr)?;
        for l in [a, b] {
            let got = drain(&l.relay, 1);
            assert_eq!(
                got,
                vec![(b"hello".to_vec(), l.peer_addr)],
                "no-flow datagram at the relay socket"
            );
        }
    }

    // 2. Install both directions of both streams, source-checked.
    for (a, b) in &legs {
        relay.flows_mut().install(
            FlowKey::new(a.relay_addr),
            Flow::new(b.relay_addr, b.peer_addr).with_source(a.peer_addr),
        )?;
        relay.flows_mut().install(
            FlowKey::new(b.relay_addr),
            Flow::new(a.relay_addr, a.peer_addr).with_source(b.peer_addr),
        )?;
    }
    let before = relay.outcomes()?;

    // 3. Media both ways on both streams.
    for (i, (a, b)) in legs.iter().enumerate() {
        for (from, to, ssrc) in [
            (a, b, 0x1111_0000 + i as u32),
            (b, a, 0x2222_0000 + i as u32),
        ] {
            for seq in 0..N {
                from.peer.send_to(&rtp(ssrc, seq), from.relay_addr)?;
                // Pace a little: a socket receive buffer, not the relay, is
                // the bottleneck here.
                if seq % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            let got = drain(&to.peer, usize::from(N) + 10);
            let expect: Vec<_> = (0..N).map(|s| (rtp(ssrc, s), to.relay_addr)).collect();
            assert_eq!(
                got.len(),
                expect.len(),
                "{ssrc:#x}: datagrams received from the relay"
            );
            assert!(
                got == expect,
                "{ssrc:#x}: payloads, order and relay source address"
            );
        }
    }
    // Nothing took the userspace path.
    for (a, b) in &legs {
        assert!(
            drain(&a.relay, 1).is_empty() && drain(&b.relay, 1).is_empty(),
            "relay sockets saw forwarded media"
        );
    }
    let after = relay.outcomes()?;
    let forwarded = after["redirected"] - before["redirected"];
    assert_eq!(forwarded, 4 * u64::from(N), "packets redirected by XDP");
    for (a, b) in &legs {
        for l in [a, b] {
            let c = relay.flows().counters(&FlowKey::new(l.relay_addr))?;
            assert_eq!(c.packets, u64::from(N), "per-flow packet counter");
            let ip_len = if ipv6 { 40 } else { 20 } + 8 + 172;
            assert_eq!(c.bytes, u64::from(N) * ip_len, "per-flow byte counter");
        }
    }
    assert_eq!(
        csum_errors(&bed.a)? + csum_errors(&bed.b)?,
        errors_before,
        "UDP checksum errors at the peers"
    );

    // 4. A third party (another port of the same host) is dropped in XDP.
    let (a, b) = &legs[0];
    let intruder = bind(&bed.a, sa(a_ip, 5999))?;
    let rejected_before = relay.outcomes()?["source_rejected"];
    for seq in 0..5 {
        intruder.send_to(&rtp(0xbad, seq), a.relay_addr)?;
    }
    assert!(
        drain(&b.peer, 1).is_empty(),
        "intruder's packets reached the far peer"
    );
    assert!(
        drain(&a.relay, 1).is_empty(),
        "intruder's packets reached the relay socket"
    );
    assert_eq!(relay.outcomes()?["source_rejected"] - rejected_before, 5);

    // 5. Removing a flow stops forwarding at once: the next packets go to
    //    the relay's socket.
    relay.flows_mut().remove(&FlowKey::new(a.relay_addr))?;
    for seq in 0..5 {
        a.peer.send_to(&rtp(0x3333, seq), a.relay_addr)?;
    }
    assert!(drain(&b.peer, 1).is_empty(), "forwarded after removal");
    assert_eq!(
        drain(&a.relay, 10).len(),
        5,
        "after removal, packets reach the relay socket"
    );
    Ok(())
}

macro_rules! e2e_test {
    ($name:ident, $mode:expr, $v6:expr) => {
        #[test]
        fn $name() -> anyhow::Result<()> {
            if !require_root(stringify!($name)) {
                return Ok(());
            }
            e2e($mode, $v6)
        }
    };
}

e2e_test!(native_ipv4, XdpMode::Native, false);
e2e_test!(native_ipv6, XdpMode::Native, true);
e2e_test!(generic_ipv4, XdpMode::Generic, false);
e2e_test!(generic_ipv6, XdpMode::Generic, true);
