//! Hijack attempts in the learning window (issue 16, item 3), end to end:
//! `media-relay run` in the relay namespace, real sockets in `a` and `b`,
//! an intruder with another address in the same namespace as the party it
//! impersonates, in XDP native mode and `--xdp-mode off`; and media that
//! overtakes its answer, held until the answer says whose it is.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::Context as _;
use media_relay_tests::{
    Bed, BedOptions, Netns, TestDir,
    bed::{A_V4, B_V4},
    daemon::{Daemon, NgClient},
    media::{drain, rtp, udp_socket},
    root_test,
};
use media_user::ng::Value;

/// The address A's SDP names (behind its NAT, unrouted from the relay).
const A_PRIVATE: Ipv4Addr = Ipv4Addr::new(198, 18, 99, 5);
/// Intruders: another host on A's side, another on B's.
const INTRUDER_A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
const INTRUDER_B: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 3);

fn bind(ns: &Netns, ip: Ipv4Addr, port: u16) -> anyhow::Result<UdpSocket> {
    udp_socket(
        ns,
        SocketAddr::new(ip.into(), port),
        Duration::from_millis(400),
    )
}

fn sdp(addr: Ipv4Addr, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    )
}

fn relay_of(reply: &Value) -> anyhow::Result<SocketAddr> {
    let sdp = reply.get("sdp").and_then(Value::as_str).context("sdp")?;
    let info = media_user::sdp::inspect(sdp.as_bytes())?;
    let m = info.media.first().context("no media")?;
    Ok(SocketAddr::new(m.connection.context("no c=")?, m.port))
}

fn received_from(ip: Ipv4Addr) -> Value {
    Value::List(vec![Value::from("IP4"), Value::from(ip.to_string())])
}

/// `n` RTP packets `first..first + n` of `ssrc` from `from` to `to`.
fn send(from: &UdpSocket, to: SocketAddr, ssrc: u32, first: u16, n: u16) -> anyhow::Result<()> {
    for seq in first..first + n {
        from.send_to(&rtp(ssrc, seq), to)?;
        if seq % 20 == 19 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

/// The (SSRC, sequence) of the RTP packets received, and their sources.
fn received(at: &UdpSocket, max: usize) -> (BTreeSet<(u32, u16)>, BTreeSet<SocketAddr>) {
    let got = drain(at, max);
    let sources = got.iter().map(|(_, f)| *f).collect();
    let packets = got
        .iter()
        .filter(|(d, _)| d.len() >= 12)
        .map(|(d, _)| {
            (
                u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
                u16::from_be_bytes([d[2], d[3]]),
            )
        })
        .collect();
    (packets, sources)
}

fn hijack(t: &TestDir, mode: &str) -> anyhow::Result<()> {
    let bed = Bed::new(BedOptions {
        peer_xdp: mode == "native",
        static_neighbours: false,
    })?;
    let daemon = Daemon::start_legs(t, &bed.relay, mode, &["--learning-window", "2"])?;
    let ng = NgClient::new(&bed.relay, daemon.ng)?;
    let result = (|| -> anyhow::Result<()> {
        bed.a.ip(&[
            "addr",
            "add",
            &format!("{INTRUDER_A}/24"),
            "dev",
            "a0",
            "nodad",
        ])?;
        bed.b.ip(&[
            "addr",
            "add",
            &format!("{INTRUDER_B}/24"),
            "dev",
            "b0",
            "nodad",
        ])?;
        let a = bind(&bed.a, A_V4, 5000)?;
        let b = bind(&bed.b, B_V4, 6000)?;
        let intruder_a = bind(&bed.a, INTRUDER_A, 5000)?;
        let intruder_b = bind(&bed.b, INTRUDER_B, 6000)?;

        // Before the answer B's media overtakes it (early media sent with
        // the 183) and a host on B's side sends to B's relay port too:
        // B's address is not known yet, so both are held; when the answer
        // names B, B's packets reach the caller and the stranger's none.
        let a_early = bind(&bed.a, A_V4, 5002)?;
        let b_early = bind(&bed.b, B_V4, 6002)?;
        let early_b = relay_of(
            &ng.ok(&Value::dict()
                .with("command", "offer")
                .with("call-id", "early")
                .with("from-tag", "a")
                .with("sdp", sdp(A_V4, 5002).as_str()))?,
        )?;
        send(&b_early, early_b, 0xb0, 0, 3)?;
        send(&intruder_b, early_b, 0xbad0, 0, 10)?;
        std::thread::sleep(Duration::from_millis(20));
        ng.ok(&Value::dict()
            .with("command", "answer")
            .with("call-id", "early")
            .with("from-tag", "a")
            .with("to-tag", "b")
            .with("sdp", sdp(B_V4, 6002).as_str()))?;
        let (early, _) = received(&a_early, 20);
        let want: BTreeSet<(u32, u16)> = (0..3).map(|s| (0xb0, s)).collect();
        anyhow::ensure!(
            early == want,
            "the caller received {early:?} of media before the answer, want B's {want:?} only"
        );
        ng.ok(&Value::dict()
            .with("command", "delete")
            .with("call-id", "early"))?;

        // A is behind NAT: its SDP names a private address, its SIP
        // messages come from the address its media comes from.
        let relay_b = relay_of(
            &ng.ok(&Value::dict()
                .with("command", "offer")
                .with("call-id", "hijack")
                .with("from-tag", "a")
                .with("received-from", received_from(A_V4))
                .with("sdp", sdp(A_PRIVATE, 4000).as_str()))?,
        )?;

        let relay_a = relay_of(
            &ng.ok(&Value::dict()
                .with("command", "answer")
                .with("call-id", "hijack")
                .with("from-tag", "a")
                .with("to-tag", "b")
                .with("received-from", received_from(B_V4))
                .with("sdp", sdp(B_V4, 6000).as_str()))?,
        )?;

        // The intruder on A's side sends first, A second, the intruder
        // again: all of A's media reaches B, none of the intruder's after
        // A appeared.
        send(&intruder_a, relay_a, 0xbad1, 0, 10)?;
        std::thread::sleep(Duration::from_millis(50));
        send(&a, relay_a, 0xa1, 0, 50)?;
        send(&intruder_a, relay_a, 0xbad1, 100, 10)?;
        let (at_b, sources) = received(&b, 80);
        let from_a: BTreeSet<(u32, u16)> = (0..50).map(|s| (0xa1, s)).collect();
        anyhow::ensure!(
            from_a.is_subset(&at_b),
            "A's media did not all reach B: {at_b:?}"
        );
        let late: Vec<_> = at_b
            .iter()
            .filter(|(ssrc, seq)| *ssrc == 0xbad1 && *seq >= 100)
            .collect();
        anyhow::ensure!(
            late.is_empty(),
            "the intruder's media reached B after A's: {late:?}"
        );
        anyhow::ensure!(
            sources == BTreeSet::from([relay_b]),
            "sources at B {sources:?}"
        );

        // B's media goes to A, not to the intruder.
        send(&b, relay_b, 0xb1, 0, 20)?;
        let (at_a, _) = received(&a, 30);
        anyhow::ensure!(at_a.len() == 20, "{} of B's 20 packets at A", at_a.len());
        let (stolen, _) = received(&intruder_a, 30);
        anyhow::ensure!(stolen.is_empty(), "the intruder got B's media: {stolen:?}");

        // After the window: the same.
        std::thread::sleep(Duration::from_millis(2300));
        send(&intruder_a, relay_a, 0xbad1, 200, 10)?;
        send(&a, relay_a, 0xa1, 50, 20)?;
        let (at_b, _) = received(&b, 40);
        let want: BTreeSet<(u32, u16)> = (50..70).map(|s| (0xa1, s)).collect();
        anyhow::ensure!(at_b == want, "after the window B got {at_b:?}");
        Ok(())
    })();
    daemon.report_failure(&result);
    result
}

macro_rules! hijack_test {
    ($name:ident, $mode:expr) => {
        #[test]
        fn $name() -> anyhow::Result<()> {
            root_test(stringify!($name), |t| hijack(t, $mode))
        }
    };
}

hijack_test!(learning_window_hijack_xdp_native, "native");
hijack_test!(learning_window_hijack_userspace, "off");
