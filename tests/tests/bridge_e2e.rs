//! IPv4 ↔ IPv6 bridging end to end: `media-relay run` in the relay
//! namespace, an IPv4 carrier in namespace `a`, an IPv6 PBX in namespace
//! `b`, the call set up over ng with `address family: IP6` towards the PBX.
//! RTP and RTCP both ways; after the learning window every packet is
//! forwarded by XDP (the `xdp redirected` counter grows by exactly the
//! packets sent, the userspace path forwards none), in XDP native and
//! generic mode, and with `--xdp-mode off` (the userspace path bridges).
//! Every packet arrives (a datagram with a wrong UDP checksum would not
//! reach the socket), and the receivers' kernels count no checksum error.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::Context as _;
use media_relay_tests::{
    Bed, BedOptions, Netns, TestDir,
    bed::{A_V4, B_V6, RA_V4, RB_V6},
    calls::{relay_of, stream_stats},
    daemon::{Daemon, NgClient, new_sdp, ng_client},
    media::{drain, rtp, udp_socket},
    root_test,
};
use media_user::ng::Value;

const N: u16 = 100;

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn bind(ns: &Netns, addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    udp_socket(ns, addr, Duration::from_millis(400))
}

/// An RTCP receiver report (RFC 3550 §6.4.2) with one report block.
fn rtcp(ssrc: u32, n: u32) -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7];
    for w in [ssrc, 0x99, 0, n, 0, 0, 0] {
        p.extend_from_slice(&w.to_be_bytes());
    }
    p
}

/// Send `packets` from `from` to `to_relay`; all must arrive at `at`,
/// from `relay`, unchanged.
fn exchange(
    from: &UdpSocket,
    to_relay: SocketAddr,
    at: &UdpSocket,
    relay: SocketAddr,
    packets: &[Vec<u8>],
) -> anyhow::Result<()> {
    for (i, p) in packets.iter().enumerate() {
        from.send_to(p, to_relay)?;
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let got = drain(at, packets.len() + 10);
    let sources: BTreeSet<SocketAddr> = got.iter().map(|(_, f)| *f).collect();
    let payloads: BTreeSet<&Vec<u8>> = got.iter().map(|(d, _)| d).collect();
    let want: BTreeSet<&Vec<u8>> = packets.iter().collect();
    anyhow::ensure!(
        got.len() == packets.len(),
        "{to_relay} → {relay}: {} of {} packets arrived",
        got.len(),
        packets.len()
    );
    anyhow::ensure!(payloads == want, "{to_relay} → {relay}: payloads differ");
    anyhow::ensure!(
        sources == BTreeSet::from([relay]),
        "{to_relay}: sources {sources:?}, want {relay}"
    );
    Ok(())
}

fn stat(ng: &NgClient, key: &str) -> anyhow::Result<i64> {
    let s = ng.ok(&Value::dict().with("command", "statistics"))?;
    let plane = s
        .get("statistics")
        .and_then(|s| s.get("media plane"))
        .context("media plane stats")?;
    Ok(plane.get(key).and_then(Value::as_int).unwrap_or(0))
}

/// UDP checksum errors the kernel of `ns` counted (IPv4 and IPv6).
fn checksum_errors(ns: &Netns) -> anyhow::Result<u64> {
    let snmp = ns.exec("cat", &["/proc/net/snmp"])?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        lines.next().context("Udp: header")?,
        lines.next().context("Udp: values")?,
    );
    let v4 = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InCsumErrors")
        .map_or(Ok(0), |(_, v)| v.parse::<u64>())?;
    let snmp6 = ns.exec("cat", &["/proc/net/snmp6"])?;
    let v6 = snmp6
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(n, _)| *n == "Udp6InCsumErrors")
        .map_or(Ok(0), |(_, v)| v.trim().parse::<u64>())?;
    Ok(v4 + v6)
}

fn sdp(addr: IpAddr, port: u16) -> String {
    let family = if addr.is_ipv4() { "IP4" } else { "IP6" };
    format!(
        "v=0\r\no=- 1 1 IN {family} {addr}\r\ns=-\r\nc=IN {family} {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n"
    )
}

fn bridged_call(t: &TestDir, mode: &str) -> anyhow::Result<()> {
    let bed = Bed::new(BedOptions {
        peer_xdp: mode == "native",
        static_neighbours: false,
    })?;
    let daemon = Daemon::start_legs(
        t,
        &bed.relay,
        mode,
        &[
            "--port-min",
            "30000",
            "--port-max",
            "30999",
            "--learning-window",
            "1",
        ],
    )?;
    let ng = NgClient::new(&bed.relay, daemon.ng)?;
    let xdp = mode != "off";
    let result = (|| -> anyhow::Result<()> {
        let (a_ip, b_ip): (IpAddr, IpAddr) = (A_V4.into(), B_V6.into());
        let a_rtp = bind(&bed.a, sa(a_ip, 5000))?;
        let a_rtcp = bind(&bed.a, sa(a_ip, 5001))?;
        let b_rtp = bind(&bed.b, sa(b_ip, 6000))?;
        let b_rtcp = bind(&bed.b, sa(b_ip, 6001))?;
        let sdp_in = |reply: &Value| -> anyhow::Result<SocketAddr> {
            relay_of(reply.get("sdp").and_then(Value::as_str).context("sdp")?)
        };
        // The carrier offers IPv4; the PBX is to be told IPv6 (through
        // Debian's rtpengine-ng-client, as a controller would ask).
        let offer_sdp = t.write("carrier.sdp", sdp(a_ip, 5000))?;
        let offer = ng_client(
            &bed.relay,
            daemon.ng,
            &[
                "offer",
                "--call-id=bridged",
                "--from-tag=carrier",
                "--address-family=IP6",
                &format!("--sdp-file={}", offer_sdp.to_string_lossy()),
            ],
        )?;
        let relay_b = relay_of(&new_sdp(&offer)?)?;
        anyhow::ensure!(
            relay_b.ip() == IpAddr::from(RB_V6),
            "the PBX is told {relay_b}"
        );
        let relay_a = sdp_in(
            &ng.ok(&Value::dict()
                .with("command", "answer")
                .with("call-id", "bridged")
                .with("from-tag", "carrier")
                .with("to-tag", "pbx")
                .with("sdp", sdp(b_ip, 6000).as_str()))?,
        )?;
        anyhow::ensure!(
            relay_a.ip() == IpAddr::from(RA_V4),
            "the carrier is told {relay_a}"
        );
        let rtcp_of = |s: SocketAddr| SocketAddr::new(s.ip(), s.port() + 1);
        let rtp_run = |ssrc: u32, from: u16| -> Vec<Vec<u8>> {
            (from..from + N).map(|s| rtp(ssrc, s)).collect()
        };
        let rtcp_run = |ssrc: u32| -> Vec<Vec<u8>> { (0..10).map(|n| rtcp(ssrc, n)).collect() };
        let all_ways = |from: u16| -> anyhow::Result<()> {
            exchange(&a_rtp, relay_a, &b_rtp, relay_b, &rtp_run(0xa4, from))?;
            exchange(&b_rtp, relay_b, &a_rtp, relay_a, &rtp_run(0xb6, from))?;
            exchange(
                &a_rtcp,
                rtcp_of(relay_a),
                &b_rtcp,
                rtcp_of(relay_b),
                &rtcp_run(0xa4),
            )?;
            exchange(
                &b_rtcp,
                rtcp_of(relay_b),
                &a_rtcp,
                rtcp_of(relay_a),
                &rtcp_run(0xb6),
            )
        };
        // Learning: the first packets through the daemon (both peers
        // confirm their addresses).
        all_ways(0).context("while learning")?;

        std::thread::sleep(Duration::from_millis(1300));
        let redirected = stat(&ng, "xdp redirected")?;
        let user = stat(&ng, "userspace forwarded")?;
        let errors = (checksum_errors(&bed.a)?, checksum_errors(&bed.b)?);
        all_ways(N).context("after learning")?;
        let sent = 2 * i64::from(N) + 2 * 10;
        let redirected = stat(&ng, "xdp redirected")? - redirected;
        let user = stat(&ng, "userspace forwarded")? - user;
        eprintln!("{mode}: {sent} packets sent, xdp redirected {redirected}, userspace {user}");
        if xdp {
            anyhow::ensure!(
                redirected == sent && user == 0,
                "{mode}: {sent} sent, XDP redirected {redirected}, userspace forwarded {user}"
            );
            anyhow::ensure!(stat(&ng, "xdp flows")? == 4, "four XDP flows");
            anyhow::ensure!(
                stat(&ng, "xdp family_change")? == 0,
                "no packet left to the daemon as a family change"
            );
        } else {
            anyhow::ensure!(user == sent, "userspace forwarded {user} of {sent}");
        }
        anyhow::ensure!(
            (checksum_errors(&bed.a)?, checksum_errors(&bed.b)?) == errors,
            "UDP checksum errors at the receivers"
        );
        // Per stream: everything counted, and by XDP after the learning.
        let q = ng.ok(&Value::dict()
            .with("command", "query")
            .with("call-id", "bridged"))?;
        for port in [relay_a.port(), relay_b.port()] {
            let s = stream_stats(&q, port).context("stream in query")?;
            let int = |k: &str| s.get(k).and_then(Value::as_int).unwrap_or(-1);
            anyhow::ensure!(int("packets") == 2 * i64::from(N), "port {port}: {s:?}");
            if xdp {
                // While learning, XDP may already carry a peer's packets
                // (its source is the expected one); after it, all of them.
                anyhow::ensure!(int("kernel packets") >= i64::from(N), "port {port}: {s:?}");
                anyhow::ensure!(int("lost") == 0, "port {port}: {s:?}");
            }
        }
        ng.ok(&Value::dict()
            .with("command", "delete")
            .with("call-id", "bridged"))?;
        if xdp {
            anyhow::ensure!(stat(&ng, "xdp flows")? == 0, "XDP flows left after delete");
        }
        Ok(())
    })();
    if result.is_err() {
        eprintln!("--- media-relay log ---\n{}", daemon.log_text());
    }
    result
}

macro_rules! bridge_test {
    ($name:ident, $mode:expr) => {
        #[test]
        fn $name() -> anyhow::Result<()> {
            root_test(stringify!($name), |t| bridged_call(t, $mode))
        }
    };
}

bridge_test!(bridged_call_xdp_native, "native");
bridge_test!(bridged_call_xdp_generic, "generic");
bridge_test!(bridged_call_userspace, "off");
