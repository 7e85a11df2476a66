//! Media sessions end to end: `media-relay run` in the relay namespace,
//! driven over ng by Debian's `rtpengine-ng-client` (and by our own codec
//! for the bulk test), real RTP/RTCP between sockets in namespaces `a`
//! (the carrier side) and `b` (the PBX side), in XDP native, XDP generic
//! and `--xdp-mode off`.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::Context as _;
use media_relay_tests::{
    Bed, BedOptions, Netns, TestDir,
    bed::{A_V4, A_V6, B_V4, B_V6, RA_V4, RA_V6, RB_V4, RB_V6},
    calls::{a_calls_b, relay_of, stream_stats},
    daemon::{Daemon, NgClient, new_sdp, ng_client},
    http,
    media::{drain, rtp, udp_socket},
    root_test,
};

fn bind(ns: &Netns, addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    udp_socket(ns, addr, Duration::from_millis(400))
}
use media_user::ng::Value;

const N: u16 = 100;

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// An RTCP receiver report (RFC 3550 §6.4.2), empty.
fn rtcp(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

/// Send `n` RTP packets and check they all arrive, from `relay`.
fn media(
    from: &UdpSocket,
    to_relay: SocketAddr,
    at: &UdpSocket,
    relay: SocketAddr,
    ssrc: u32,
    n: u16,
) -> anyhow::Result<()> {
    for seq in 0..n {
        from.send_to(&rtp(ssrc, seq), to_relay)?;
        if seq % 20 == 19 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let got = drain(at, usize::from(n) + 10);
    let sources: BTreeSet<SocketAddr> = got.iter().map(|(_, f)| *f).collect();
    let seqs: BTreeSet<Vec<u8>> = got.iter().map(|(d, _)| d.clone()).collect();
    let want: BTreeSet<Vec<u8>> = (0..n).map(|s| rtp(ssrc, s)).collect();
    anyhow::ensure!(
        got.len() == usize::from(n),
        "{ssrc:#x}: {} of {n} packets arrived",
        got.len()
    );
    anyhow::ensure!(seqs == want, "{ssrc:#x}: payloads differ");
    anyhow::ensure!(
        sources == BTreeSet::from([relay]),
        "{ssrc:#x}: sources {sources:?}, want {relay}"
    );
    Ok(())
}

fn write_sdp(
    dir: &TestDir,
    name: &str,
    addr: impl Into<IpAddr>,
    port: u16,
    version: u32,
) -> anyhow::Result<String> {
    write_sdp_with(dir, name, addr.into(), port, version, "")
}

/// An SDP file for `rtpengine-ng-client --sdp-file` in the test's own
/// directory, with `extra` attribute lines for the audio stream.
fn write_sdp_with(
    dir: &TestDir,
    name: &str,
    addr: IpAddr,
    port: u16,
    version: u32,
    extra: &str,
) -> anyhow::Result<String> {
    let family = if addr.is_ipv4() { "IP4" } else { "IP6" };
    let sdp = format!(
        "v=0\r\no=- 4242 {version} IN {family} {addr}\r\ns=call\r\nc=IN {family} {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n{extra}"
    );
    let path = dir.write(&format!("{name}.sdp"), sdp)?;
    Ok(path.to_string_lossy().into_owned())
}

/// `stats.packets` of the stream on `local port` in a query reply.
fn stream_packets(query: &Value, port: u16) -> Option<(i64, bool)> {
    for tag in query.get("tags")?.as_dict()?.values() {
        for m in tag.get("medias")?.as_list()? {
            for s in m.get("streams")?.as_list()? {
                if s.get("local port")?.as_int()? == i64::from(port) {
                    let kernel = s
                        .get("flags")?
                        .as_list()?
                        .iter()
                        .any(|f| f.as_str() == Some("kernelized"));
                    return Some((s.get("stats")?.get("packets")?.as_int()?, kernel));
                }
            }
        }
    }
    None
}

fn stat(ng: &NgClient, key: &str) -> anyhow::Result<i64> {
    let s = ng.ok(&Value::dict().with("command", "statistics"))?;
    let plane = s
        .get("statistics")
        .and_then(|s| s.get("media plane"))
        .context("media plane stats")?;
    Ok(plane.get(key).and_then(Value::as_int).unwrap_or(0))
}

fn session(t: &TestDir, mode: &str, v6: bool) -> anyhow::Result<()> {
    let (a_ip, b_ip, ra_ip, rb_ip, nat_ip, third_ip, third_cidr): (
        IpAddr,
        IpAddr,
        IpAddr,
        IpAddr,
        IpAddr,
        IpAddr,
        &str,
    ) = if v6 {
        (
            A_V6.into(),
            B_V6.into(),
            RA_V6.into(),
            RB_V6.into(),
            "2001:2:0:99::5".parse()?,
            "2001:2:0:1::3".parse()?,
            "2001:2:0:1::3/64",
        )
    } else {
        (
            A_V4.into(),
            B_V4.into(),
            RA_V4.into(),
            RB_V4.into(),
            // Unrouted from the relay (198.18.0.0/15, outside the bed's
            // subnets): the address a NAT hides.
            Ipv4Addr::new(198, 18, 99, 5).into(),
            Ipv4Addr::new(198, 18, 1, 3).into(),
            "198.18.1.3/24",
        )
    };
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
        // A is behind NAT: its SDP says 198.18.99.5:4000, it sends from
        // 198.18.1.2:5000.
        let a_rtp = bind(&bed.a, sa(a_ip, 5000))?;
        let a_rtcp = bind(&bed.a, sa(a_ip, 5001))?;
        let b_rtp = bind(&bed.b, sa(b_ip, 6000))?;
        let b_rtcp = bind(&bed.b, sa(b_ip, 6001))?;
        let offer = ng_client(
            &bed.relay,
            daemon.ng,
            &[
                "offer",
                "--call-id=call-1",
                "--from-tag=a-tag",
                &format!("--sdp-file={}", write_sdp(t, "a", nat_ip, 4000, 1)?),
            ],
        )?;
        let to_b = new_sdp(&offer)?;
        let relay_b = relay_of(&to_b)?;
        anyhow::ensure!(
            relay_b.ip() == rb_ip,
            "B is told the PBX-side address: {to_b}"
        );
        let answer = ng_client(
            &bed.relay,
            daemon.ng,
            &[
                "answer",
                "--call-id=call-1",
                "--from-tag=a-tag",
                "--to-tag=b-tag",
                &format!("--sdp-file={}", write_sdp(t, "b", b_ip, 6000, 1)?),
            ],
        )?;
        let to_a = new_sdp(&answer)?;
        let relay_a = relay_of(&to_a)?;
        anyhow::ensure!(
            relay_a.ip() == ra_ip,
            "A is told the carrier-side address: {to_a}"
        );
        let rtcp_of = |s: SocketAddr| SocketAddr::new(s.ip(), s.port() + 1);

        // A speaks first (its NAT must be learnt), then B; RTP and RTCP.
        media(&a_rtp, relay_a, &b_rtp, relay_b, 0xa1, N)?;
        media(&b_rtp, relay_b, &a_rtp, relay_a, 0xb1, N)?;
        a_rtcp.send_to(&rtcp(0xa1), rtcp_of(relay_a))?;
        anyhow::ensure!(
            drain(&b_rtcp, 2) == vec![(rtcp(0xa1), rtcp_of(relay_b))],
            "A's RTCP at B"
        );
        b_rtcp.send_to(&rtcp(0xb1), rtcp_of(relay_b))?;
        anyhow::ensure!(
            drain(&a_rtcp, 2) == vec![(rtcp(0xb1), rtcp_of(relay_a))],
            "B's RTCP at A (latched)"
        );

        // After the learning window, media flows through XDP (when on).
        std::thread::sleep(Duration::from_millis(1300));
        media(&a_rtp, relay_a, &b_rtp, relay_b, 0xa1, N)?;
        media(&b_rtp, relay_b, &a_rtp, relay_a, 0xb1, N)?;
        let q = ng.ok(&Value::dict()
            .with("command", "query")
            .with("call-id", "call-1"))?;
        let (a_packets, a_kernel) =
            stream_packets(&q, relay_a.port()).context("A's RTP stream in query")?;
        let (b_packets, b_kernel) =
            stream_packets(&q, relay_b.port()).context("B's RTP stream in query")?;
        anyhow::ensure!(
            a_packets == 2 * i64::from(N) && b_packets == 2 * i64::from(N),
            "query counters {a_packets} {b_packets}: {q:?}"
        );
        anyhow::ensure!(
            a_kernel == xdp && b_kernel == xdp,
            "kernelized flags {a_kernel} {b_kernel} in mode {mode}"
        );
        let shown = ng_client(&bed.relay, daemon.ng, &["query", "--call-id=call-1"])?;
        anyhow::ensure!(
            shown.contains(&format!("packets => '{}'", 2 * N)),
            "rtpengine-ng-client query: {shown}"
        );
        if xdp {
            anyhow::ensure!(stat(&ng, "xdp flows")? == 4, "four XDP flows");
        }

        // A third host sending to A's relay port is dropped and gets nothing back.
        bed.a
            .ip(&["addr", "add", third_cidr, "dev", "a0", "nodad"])?;
        let intruder = bind(&bed.a, sa(third_ip, 5000))?;
        for seq in 0..20 {
            intruder.send_to(&rtp(0xbad, seq), relay_a)?;
        }
        anyhow::ensure!(drain(&b_rtp, 1).is_empty(), "the intruder reached B");
        anyhow::ensure!(drain(&intruder, 1).is_empty(), "the intruder got an answer");
        // And A still gets through.
        media(&a_rtp, relay_a, &b_rtp, relay_b, 0xa1, 10)?;

        // A re-INVITE moves A to port 5002 (no NAT now): B's media follows,
        // the relay keeps its ports.
        let a2 = bind(&bed.a, sa(a_ip, 5002))?;
        let reoffer = ng_client(
            &bed.relay,
            daemon.ng,
            &[
                "offer",
                "--call-id=call-1",
                "--from-tag=a-tag",
                "--to-tag=b-tag",
                &format!("--sdp-file={}", write_sdp(t, "a2", a_ip, 5002, 2)?),
            ],
        )?;
        anyhow::ensure!(
            relay_of(&new_sdp(&reoffer)?)? == relay_b,
            "re-offer keeps B's relay port"
        );
        let reanswer = ng_client(
            &bed.relay,
            daemon.ng,
            &[
                "answer",
                "--call-id=call-1",
                "--from-tag=a-tag",
                "--to-tag=b-tag",
                &format!("--sdp-file={}", write_sdp(t, "b", b_ip, 6000, 1)?),
            ],
        )?;
        anyhow::ensure!(
            relay_of(&new_sdp(&reanswer)?)? == relay_a,
            "re-answer keeps A's relay port"
        );
        media(&b_rtp, relay_b, &a2, relay_a, 0xb1, N)?;
        anyhow::ensure!(
            drain(&a_rtp, 1).is_empty(),
            "media still going to A's old port"
        );

        // Delete: forwarding stops, ports and flows are freed.
        ng_client(
            &bed.relay,
            daemon.ng,
            &["delete", "--call-id=call-1", "--from-tag=a-tag"],
        )?;
        b_rtp.send_to(&rtp(0xb1, 999), relay_b)?;
        anyhow::ensure!(drain(&a2, 1).is_empty(), "forwarded after delete");
        let list = ng.ok(&Value::dict().with("command", "list"))?;
        anyhow::ensure!(
            list.get("calls")
                .and_then(Value::as_list)
                .is_some_and(<[Value]>::is_empty),
            "{list:?}"
        );
        if xdp {
            anyhow::ensure!(stat(&ng, "xdp flows")? == 0, "XDP flows left after delete");
        }
        anyhow::ensure!(stat(&ng, "bound ports")? == 0, "sockets left after delete");
        // The port is really free: we can bind it ourselves.
        bind(&bed.relay, relay_a).context("relay port still bound after delete")?;
        Ok(())
    })();
    daemon.report_failure(&result);
    result
}

macro_rules! session_test {
    ($name:ident, $mode:expr, $v6:expr) => {
        #[test]
        fn $name() -> anyhow::Result<()> {
            root_test(stringify!($name), |t| session(t, $mode, $v6))
        }
    };
}

session_test!(session_xdp_native, "native", false);
session_test!(session_xdp_generic, "generic", false);
session_test!(session_userspace, "off", false);
session_test!(session_ipv6_xdp_native, "native", true);

/// A carrier that multiplexes RTCP on the RTP port (RFC 5761) and a PBX
/// that does not: the relay offers the PBX separate RTCP, accepts mux
/// towards the carrier, and splits/joins RTCP by packet type.
#[test]
fn rtcp_mux_bridging() -> anyhow::Result<()> {
    root_test("rtcp_mux_bridging", |t| {
        let bed = Bed::new(BedOptions {
            peer_xdp: true,
            static_neighbours: false,
        })?;
        let daemon = Daemon::start_legs(t, &bed.relay, "native", &["--learning-window", "1"])?;
        let a = bind(&bed.a, sa(A_V4, 5000))?;
        let b_rtp = bind(&bed.b, sa(B_V4, 6000))?;
        let b_rtcp = bind(&bed.b, sa(B_V4, 6001))?;
        let offer = ng_client(
            &bed.relay,
            daemon.ng,
            &[
                "offer",
                "--call-id=mux",
                "--from-tag=a",
                "--rtcp-mux=demux",
                &format!(
                    "--sdp-file={}",
                    write_sdp_with(t, "mux-a", A_V4.into(), 5000, 1, "a=rtcp-mux\r\n")?
                ),
            ],
        )?;
        let to_b = new_sdp(&offer)?;
        anyhow::ensure!(!to_b.contains("a=rtcp-mux"), "demuxed towards B: {to_b}");
        let answer = ng_client(
            &bed.relay,
            daemon.ng,
            &[
                "answer",
                "--call-id=mux",
                "--from-tag=a",
                "--to-tag=b",
                "--rtcp-mux=accept",
                &format!("--sdp-file={}", write_sdp(t, "mux-b", B_V4, 6000, 1)?),
            ],
        )?;
        let to_a = new_sdp(&answer)?;
        anyhow::ensure!(
            to_a.contains("a=rtcp-mux"),
            "mux accepted towards A: {to_a}"
        );
        let (relay_a, relay_b) = (relay_of(&to_a)?, relay_of(&to_b)?);
        let rtcp_b = SocketAddr::new(relay_b.ip(), relay_b.port() + 1);
        // RTP and RTCP from A share one port; B gets them on two.
        media(&a, relay_a, &b_rtp, relay_b, 0xa1, 20)?;
        a.send_to(&rtcp(0xa1), relay_a)?;
        anyhow::ensure!(
            drain(&b_rtcp, 2) == vec![(rtcp(0xa1), rtcp_b)],
            "A's muxed RTCP at B's RTCP port"
        );
        anyhow::ensure!(
            drain(&b_rtp, 1).is_empty(),
            "A's RTCP leaked onto B's RTP port"
        );
        // B's two ports arrive muxed at A's one.
        media(&b_rtp, relay_b, &a, relay_a, 0xb1, 20)?;
        b_rtcp.send_to(&rtcp(0xb1), rtcp_b)?;
        anyhow::ensure!(
            drain(&a, 2) == vec![(rtcp(0xb1), relay_a)],
            "B's RTCP joins A's RTP port"
        );
        Ok(())
    })
}

/// Offer, answer and delete many calls through ng; nothing is left behind:
/// no call, no bound port, no XDP flow, and memory back near where it was.
#[test]
fn ten_thousand_calls_leave_nothing_behind() -> anyhow::Result<()> {
    root_test("ten_thousand_calls_leave_nothing_behind", |t| {
        const CALLS: usize = 10_000;
        let bed = Bed::new(BedOptions::default())?;
        let daemon = Daemon::start_legs(
            t,
            &bed.relay,
            "generic",
            &[
                "--port-min",
                "20000",
                "--port-max",
                "59999",
                // Keep the retransmission cache small so memory shows per-call state.
                "--ng-cache-ttl",
                "1",
                // 20 000 calls' pairs are released in well under the
                // default quarantine: this test is about leaks, not reuse.
                "--port-quarantine",
                "0",
            ],
        )?;
        let ng = NgClient::new(&bed.relay, daemon.ng)?;
        let sdp = |addr: Ipv4Addr, port: u16| {
            format!(
                "v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
            )
        };
        let warm = |i: usize| -> anyhow::Result<()> {
            let id = format!("bulk-{i}");
            ng.ok(&Value::dict()
                .with("command", "offer")
                .with("call-id", id.as_str())
                .with("from-tag", "a")
                .with("sdp", sdp(A_V4, 5000).as_str()))?;
            ng.ok(&Value::dict()
                .with("command", "answer")
                .with("call-id", id.as_str())
                .with("from-tag", "a")
                .with("to-tag", "b")
                .with("sdp", sdp(B_V4, 6000).as_str()))?;
            ng.ok(&Value::dict()
                .with("command", "delete")
                .with("call-id", id.as_str()))?;
            Ok(())
        };
        // Warm up allocators, and fill the ring of the 1 000 ended calls the
        // daemon remembers (bounded), before measuring memory.
        for i in 0..1100 {
            warm(i)?;
        }
        let rss_before = daemon.rss_kib();
        for i in 1100..CALLS {
            warm(i)?;
            if i % 2500 == 0 {
                eprintln!("  {i} calls");
            }
        }
        let s = ng.ok(&Value::dict().with("command", "statistics"))?;
        let stats = s.get("statistics").context("statistics")?;
        let managed = stats
            .get("totalstatistics")
            .and_then(|t| t.get("managedsessions"))
            .and_then(Value::as_int);
        let current = stats
            .get("currentstatistics")
            .and_then(|t| t.get("sessionsown"))
            .and_then(Value::as_int);
        let used = stats
            .get("ports")
            .and_then(|p| p.get("used"))
            .and_then(Value::as_int);
        let plane = stats.get("media plane").context("media plane")?;
        let flows = plane.get("xdp flows").and_then(Value::as_int);
        let bound = plane.get("bound ports").and_then(Value::as_int);
        let rss_after = daemon.rss_kib();
        eprintln!("RSS {rss_before} KiB → {rss_after} KiB after {CALLS} calls");
        assert_eq!(managed, Some(CALLS as i64));
        assert_eq!(
            (current, used, flows, bound),
            (Some(0), Some(0), Some(0), Some(0))
        );
        assert!(
            rss_after < rss_before + 8 * 1024,
            "memory grew by {} KiB over {CALLS} calls",
            rss_after.saturating_sub(rss_before)
        );
        Ok(())
    })
}

/// RTP loss per stream: A sends RTP with `SKIPPED` sequence numbers left
/// out through an established call; `query` reports exactly those as
/// `lost` for A's stream (and in the RTP totals), none for B's. With XDP,
/// the lossy stretch goes through the data plane, and mid-stretch the
/// relay forgets B's MAC so that some packets take the userspace path (a
/// neighbour miss): packets one path forwarded are not the other's loss.
fn rtp_loss(t: &TestDir, mode: &str) -> anyhow::Result<()> {
    const WARM: u16 = 20;
    const LOSSY: u16 = 300;
    const SKIPPED: [u16; 5] = [60, 61, 62, 150, 271];
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
            "31000",
            "--port-max",
            "31999",
            "--learning-window",
            "1",
        ],
    )?;
    let ng = NgClient::new(&bed.relay, daemon.ng)?;
    let xdp = mode != "off";
    let result = (|| -> anyhow::Result<()> {
        let a = bind(&bed.a, sa(A_V4, 5000))?;
        let b = bind(&bed.b, sa(B_V4, 6000))?;
        let (relay_a, relay_b) = a_calls_b(&ng, "loss")?;

        // Both speak, then the learning window closes.
        media(&a, relay_a, &b, relay_b, 0xa1, WARM)?;
        media(&b, relay_b, &a, relay_a, 0xb1, WARM)?;
        std::thread::sleep(Duration::from_millis(1300));

        let xdp_stat = |key: &str| if xdp { stat(&ng, key) } else { Ok(0) };
        let (redirected, missed) = (xdp_stat("xdp redirected")?, xdp_stat("xdp neighbour_miss")?);
        let mut sent = 0usize;
        for seq in WARM..WARM + LOSSY {
            if seq == WARM + LOSSY / 2 && xdp {
                std::thread::sleep(Duration::from_millis(5));
                bed.relay.ip(&["neigh", "flush", "dev", "rb"])?;
            }
            if SKIPPED.contains(&(seq - WARM)) {
                continue;
            }
            a.send_to(&rtp(0xa1, seq), relay_a)?;
            sent += 1;
            if seq % 20 == 19 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let got = drain(&b, sent + 10);
        anyhow::ensure!(got.len() == sent, "{} of {sent} arrived at B", got.len());

        let q = ng.ok(&Value::dict()
            .with("command", "query")
            .with("call-id", "loss"))?;
        let int = |v: Option<&Value>, key: &str| {
            v.and_then(|s| s.get(key))
                .and_then(Value::as_int)
                .with_context(|| format!("{key} in {q:?}"))
        };
        let (a_stats, b_stats) = (
            stream_stats(&q, relay_a.port()),
            stream_stats(&q, relay_b.port()),
        );
        let totals = q.get("totals").and_then(|t| t.get("RTP"));
        let k = SKIPPED.len() as i64;
        let total = i64::from(WARM + LOSSY);
        let a_got = (
            int(a_stats, "lost")?,
            int(a_stats, "expected")?,
            int(a_stats, "packets")?,
        );
        anyhow::ensure!(
            a_got == (k, total, total - k),
            "A's stream: lost/expected/packets {a_got:?}, want {:?}",
            (k, total, total - k)
        );
        let b_got = (int(b_stats, "lost")?, int(b_stats, "expected")?);
        anyhow::ensure!(
            b_got == (0, i64::from(WARM)),
            "B's stream: lost/expected {b_got:?}"
        );
        let t_got = (int(totals, "lost")?, int(totals, "expected")?);
        anyhow::ensure!(
            t_got == (k, total + i64::from(WARM)),
            "RTP totals: lost/expected {t_got:?}"
        );
        if xdp {
            // The lossy stretch went through XDP, except for what the
            // neighbour flush sent to the userspace path.
            let (redirected, missed) = (
                stat(&ng, "xdp redirected")? - redirected,
                stat(&ng, "xdp neighbour_miss")? - missed,
            );
            anyhow::ensure!(
                missed >= 1 && redirected + missed >= sent as i64,
                "XDP redirected {redirected}, neighbour misses {missed}, of {sent}"
            );
        }
        Ok(())
    })();
    daemon.report_failure(&result);
    result
}

macro_rules! loss_test {
    ($name:ident, $mode:expr) => {
        #[test]
        fn $name() -> anyhow::Result<()> {
            root_test(stringify!($name), |t| rtp_loss(t, $mode))
        }
    };
}

loss_test!(rtp_loss_xdp_native, "native");
loss_test!(rtp_loss_xdp_generic, "generic");
loss_test!(rtp_loss_userspace, "off");

/// The userspace path's staleness bound: with the daemon stopped
/// (SIGSTOP) while A sends, the packets wait in the port's socket longer
/// than `--userspace-max-delay`; when it runs again it drops every one of
/// them (counted per stream as `stale dropped`, in `statistics` and in
/// `/metrics`) and delivers none late, and the packets after that are
/// forwarded as before.
fn stale_media(t: &TestDir) -> anyhow::Result<()> {
    const WARM: u16 = 20;
    const HELD: u16 = 50;
    const AFTER: u16 = 40;
    let bed = Bed::new(BedOptions {
        peer_xdp: false,
        static_neighbours: false,
    })?;
    let daemon = Daemon::start_legs(
        t,
        &bed.relay,
        "off",
        &[
            "--port-min",
            "32000",
            "--port-max",
            "32999",
            "--learning-window",
            "1",
            "--userspace-max-delay",
            "5",
            "--metrics-listen",
            "127.0.0.1:9464",
        ],
    )?;
    let ng = NgClient::new(&bed.relay, daemon.ng)?;
    let result = (|| -> anyhow::Result<()> {
        let a = bind(&bed.a, sa(A_V4, 5000))?;
        let b = bind(&bed.b, sa(B_V4, 6000))?;
        let (relay_a, relay_b) = a_calls_b(&ng, "stale")?;
        media(&a, relay_a, &b, relay_b, 0xa1, WARM)?;
        media(&b, relay_b, &a, relay_a, 0xb1, WARM)?;
        std::thread::sleep(Duration::from_millis(1300));

        let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.pid())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
        let held = (|| -> anyhow::Result<()> {
            // kill(2) returns before the threads have stopped: wait until
            // every one has, so that nothing sent next is read before the
            // bound has passed.
            all_stopped(daemon.pid(), Duration::from_secs(5))?;
            for seq in WARM..WARM + HELD {
                a.send_to(&rtp(0xa1, seq), relay_a)?;
            }
            // Ten times the bound.
            std::thread::sleep(Duration::from_millis(50));
            Ok(())
        })();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
        held?;
        let late = drain(&b, usize::from(HELD));
        anyhow::ensure!(
            late.is_empty(),
            "{} of {HELD} packets held past the bound were delivered late",
            late.len()
        );
        media(&a, relay_a, &b, relay_b, 0xa1, AFTER)?;

        let q = ng.ok(&Value::dict()
            .with("command", "query")
            .with("call-id", "stale"))?;
        let a_stats = stream_stats(&q, relay_a.port()).context("A's stream")?;
        let int = |key: &str| {
            a_stats
                .get(key)
                .and_then(Value::as_int)
                .with_context(|| format!("{key} in {a_stats:?}"))
        };
        anyhow::ensure!(
            (int("stale dropped")?, int("packets")?) == (i64::from(HELD), i64::from(WARM + AFTER)),
            "A's stream: stale dropped {}, packets {} (want {HELD}, {})",
            int("stale dropped")?,
            int("packets")?,
            WARM + AFTER
        );
        let total = stat(&ng, "userspace stale dropped")?;
        anyhow::ensure!(
            total == i64::from(HELD),
            "statistics: userspace stale dropped {total}, want {HELD}"
        );
        // Every datagram read is counted with its wait; the held ones
        // waited 50 ms, past the last bucket's bound.
        let mut buckets = Vec::new();
        for b in media_user::media::WAIT_BOUNDS_US {
            buckets.push(stat(&ng, &format!("userspace waited <= {b} us"))?);
        }
        let last = media_user::media::WAIT_BOUNDS_US[media_user::media::WAIT_BOUNDS_US.len() - 1];
        let over = stat(&ng, &format!("userspace waited > {last} us"))?;
        let read = buckets.iter().sum::<i64>() + over;
        anyhow::ensure!(
            over >= i64::from(HELD) && read == i64::from(2 * WARM + HELD + AFTER),
            "statistics: userspace waited {buckets:?}, over {last} µs {over}: want {HELD} or more over, {} in all",
            2 * WARM + HELD + AFTER
        );
        // The same as a Prometheus histogram (cumulative buckets), copied
        // to /metrics once a second.
        let want = (read as f64, (read - over) as f64);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (status, body) = http::get(&bed.relay, "127.0.0.1:9464".parse()?, "/metrics")?;
            anyhow::ensure!(status == 200, "/metrics answered {status}");
            let bucket = |le: &str| {
                http::sample(
                    &body,
                    &format!("media_relay_userspace_wait_seconds_bucket{{le=\"{le}\"}}"),
                )
            };
            let got = (bucket("+Inf"), bucket(&format!("{}", last as f64 / 1e6)));
            if got == (Some(want.0), Some(want.1)) {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "/metrics: wait buckets +Inf and {last} µs {got:?}, want {want:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    })();
    daemon.report_failure(&result);
    result
}

/// Wait until every thread of `pid` is stopped (state `T`), at most
/// `limit`.
fn all_stopped(pid: u32, limit: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let mut states = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let stat = std::fs::read_to_string(task?.path().join("stat")).unwrap_or_default();
            // `pid (comm) S ...`: the state follows the last ')'.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?")
                .to_owned();
            states.push(state);
        }
        if states.iter().all(|s| s == "T" || s == "t") {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the daemon's threads did not all stop within {limit:?}: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn userspace_drops_stale_media_and_never_sends_it_late() -> anyhow::Result<()> {
    root_test(
        "userspace_drops_stale_media_and_never_sends_it_late",
        stale_media,
    )
}
