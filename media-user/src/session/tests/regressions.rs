//! Regression tests of issue 16 (an expert review of the engine): each
//! failed before its fix. Driven in memory against the recording backend.

use std::{net::SocketAddr, time::Duration};

use super::{
    CARRIER, Fake, basic_call, engine, engine_with, iface, ip, media_endpoint, nat_offer, oa,
    offer_sdp, sa, sdp_of,
};
use crate::{
    interfaces::Interfaces,
    ng::{Command, Delete, Reply},
    session::{
        Counters, Engine, Now, PacketEvent, PortAllocator, SessionConfig, Source,
        ports::DEFAULT_PORT_QUARANTINE,
    },
};

/// An SDP with `n` audio m= lines on ports `port`, `port + 2`, ….
fn sdp_with_media(addr: &str, port: u16, n: usize) -> Vec<u8> {
    let mut s = format!("v=0\r\no=- 1000 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n");
    for i in 0..n {
        s.push_str(&format!(
            "m=audio {} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n",
            port + 2 * i as u16
        ));
    }
    s.into_bytes()
}

fn delete(call: &str) -> Command {
    Command::Delete(Delete {
        call_id: call.into(),
        from_tag: None,
        to_tag: None,
        via_branch: None,
        delete_delay: None,
    })
}

fn packet(local: SocketAddr, from: SocketAddr, rtp: Option<(u32, u16)>) -> PacketEvent {
    PacketEvent {
        local,
        from,
        rtp,
        data: format!("{from} {rtp:?}").into_bytes(),
    }
}

fn engine_cfg(cfg: SessionConfig, ports: PortAllocator) -> Engine<Fake> {
    let mut fake = Fake::default();
    fake.route_source.insert(ip("198.18.1.2"), ip(CARRIER));
    Engine::new(
        cfg,
        fake,
        Interfaces(vec![iface("eth0", CARRIER)]),
        ports,
        Now::read(),
    )
}

fn assert_nothing_left(e: &Engine<Fake>) {
    assert_eq!(
        (e.call_count(), e.owned_ports(), e.ports().in_use()),
        (0, 0, 0)
    );
    assert!(e.backend().open.is_empty(), "{:?}", e.backend().open);
    assert!(e.backend().routes.is_empty(), "{:?}", e.backend().routes);
}

/// Item 1: the remembered (SSRC, sequence) of a latched stream follows the
/// data plane. XDP forwards the latched source's packets without the
/// daemon seeing them, so long after the window the data plane's record is
/// hundreds of packets ahead of the snapshot taken when the window closed:
/// a NAT rebinding continuing from the *current* sequence must re-latch,
/// and a replay of the *frozen* sequence + 1 (what the other party saw
/// back then) must not.
#[test]
fn relatch_follows_the_data_plane_long_after_the_window() {
    let mut e = engine();
    let t0 = Now::read();
    e.handle(nat_offer("c"), t0);
    let to_a = media_endpoint(&sdp_of(&e.handle(
        Command::Answer(oa("c", "a", Some("b"), offer_sdp("198.18.2.2", 6000))),
        t0,
    )));
    let to_b = e.backend().routes[&to_a].out;
    let nat = sa("198.18.1.2:40000");
    e.on_packet(packet(to_a, nat, Some((0x55, 1))), t0);
    let at = |secs: u64, seq: u16| Counters {
        packets: u64::from(seq),
        kernel_packets: u64::from(seq) - 1,
        last_rtp: Some((0x55, seq)),
        last_packet: Some(t0.wall + Duration::from_secs(secs)),
        ..Counters::default()
    };
    e.backend_mut().counters.insert(to_a, at(3, 150));
    e.tick(t0 + Duration::from_secs(3));
    assert_eq!(
        e.backend().routes[&to_a].source,
        Source::Latched {
            addr: nat,
            relatch_ssrc: Some(0x55)
        }
    );
    // 20 s of audio later (50 packets/s), all forwarded by XDP; no tick
    // has read the counters since.
    e.backend_mut().counters.insert(to_a, at(23, 1150));
    let later = t0 + Duration::from_secs(23);
    // The other party replays what it saw when the window closed.
    let replayer = sa("198.18.2.2:6000");
    e.on_packet(packet(to_a, replayer, Some((0x55, 151))), later);
    assert_eq!(
        e.backend().routes[&to_b].dest,
        nat,
        "a replay of the frozen sequence stole A's stream"
    );
    // A's NAT rebinds: the next sequence number from a new port.
    let rebound = sa("198.18.1.2:40002");
    e.on_packet(packet(to_a, rebound, Some((0x55, 1151))), later);
    assert_eq!(
        e.backend().routes[&to_b].dest,
        rebound,
        "the NAT rebinding was refused: one-way audio"
    );
}

/// Item 1, the periodic refresh: a party that changes SSRC mid-call (no
/// re-INVITE) gets the new SSRC into the data plane's re-latch hand-over
/// at the next tick.
#[test]
fn the_tick_refreshes_the_relatch_ssrc() {
    let mut e = engine();
    let t0 = Now::read();
    let (to_a, _) = basic_call(&mut e, "c");
    let a = sa("198.18.1.2:5000");
    e.on_packet(packet(to_a, a, Some((0x55, 1))), t0);
    e.backend_mut().counters.insert(
        to_a,
        Counters {
            packets: 10,
            kernel_packets: 9,
            last_rtp: Some((0x55, 10)),
            last_packet: Some(t0.wall + Duration::from_secs(3)),
            ..Counters::default()
        },
    );
    e.tick(t0 + Duration::from_secs(3));
    e.backend_mut().counters.insert(
        to_a,
        Counters {
            packets: 500,
            kernel_packets: 499,
            last_rtp: Some((0x66, 7)),
            last_packet: Some(t0.wall + Duration::from_secs(12)),
            ..Counters::default()
        },
    );
    e.tick(t0 + Duration::from_secs(12));
    assert_eq!(
        e.backend().routes[&to_a].source,
        Source::Latched {
            addr: a,
            relatch_ssrc: Some(0x66)
        }
    );
}

/// Item 3: before the answer nobody's packets on the answerer's relay port
/// reach the caller: the answerer's address is not known yet, so nothing
/// can match it.
#[test]
fn before_the_answer_strangers_reach_nobody() {
    let mut e = engine();
    let t0 = Now::read();
    let to_b = media_endpoint(&sdp_of(&e.handle(
        Command::Offer(oa("c", "a", None, offer_sdp("198.18.1.2", 5000))),
        t0,
    )));
    e.on_packet(packet(to_b, sa("198.18.1.66:7000"), Some((1, 1))), t0);
    assert!(
        e.backend().sent.is_empty(),
        "a stranger's packet reached the caller before the answer: {:?}",
        e.backend().sent
    );
    // The answer arrives; B's real media is accepted.
    e.handle(
        Command::Answer(oa("c", "a", Some("b"), offer_sdp("198.18.2.2", 6000))),
        t0,
    );
    e.on_packet(packet(to_b, sa("198.18.2.2:6000"), Some((2, 1))), t0);
    assert_eq!(e.backend().sent.len(), 1);
    assert_eq!(
        e.backend().routes[&to_b].source,
        Source::Learning(Some(sa("198.18.2.2:6000")))
    );
}

/// The answerer's first packets overtake its answer (early media sent
/// with the 183): they are held and forwarded when the answer comes, in
/// order; a stranger's held beside them is refused then, and a packet
/// held longer than the bound is refused, not delivered late.
#[test]
fn media_overtaking_the_answer_is_delivered_with_it() {
    let mut e = engine();
    let t0 = Now::read();
    let to_b = media_endpoint(&sdp_of(&e.handle(
        Command::Offer(oa("c", "a", None, offer_sdp("198.18.1.2", 5000))),
        t0,
    )));
    let later = |ms| t0 + Duration::from_millis(ms);
    let refused = e.totals().refused_sources;
    e.on_packet(packet(to_b, sa("198.18.2.2:6000"), Some((7, 1))), t0);
    e.on_packet(packet(to_b, sa("198.18.1.66:7000"), Some((9, 1))), later(1));
    e.on_packet(packet(to_b, sa("198.18.2.2:6000"), Some((7, 2))), later(2));
    assert!(e.backend().sent.is_empty(), "forwarded before the answer");
    assert_eq!(e.totals().refused_sources, refused, "held, not refused yet");
    e.handle(
        Command::Answer(oa("c", "a", Some("b"), offer_sdp("198.18.2.2", 6000))),
        later(5),
    );
    let sent: Vec<_> = e.backend().sent.iter().map(|s| s.2.clone()).collect();
    let b = sa("198.18.2.2:6000");
    assert_eq!(
        sent,
        [
            packet(to_b, b, Some((7, 1))).data,
            packet(to_b, b, Some((7, 2))).data
        ],
        "the answerer's two packets, in order, and nothing of the stranger's"
    );
    assert_eq!(e.totals().refused_sources, refused + 1);
    assert_eq!(
        e.backend().routes[&to_b].source,
        Source::Learning(Some(sa("198.18.2.2:6000")))
    );

    // Too late: held past the bound, refused by the tick.
    let to_b2 = media_endpoint(&sdp_of(&e.handle(
        Command::Offer(oa("d", "a", None, offer_sdp("198.18.1.2", 5002))),
        t0,
    )));
    e.on_packet(packet(to_b2, sa("198.18.2.2:6002"), Some((8, 1))), t0);
    e.tick(later(400));
    e.handle(
        Command::Answer(oa("d", "a", Some("b"), offer_sdp("198.18.2.2", 6002))),
        later(401),
    );
    assert_eq!(e.backend().sent.len(), 2, "a stale packet was delivered");
    assert_eq!(e.totals().refused_sources, refused + 2);
}

/// Item 3: during the window a better candidate displaces a worse one: an
/// intruder sending first is displaced by a source with the SIP message's
/// address (`received from`), though the SDP's address (behind NAT)
/// matches neither.
#[test]
fn the_sip_source_address_displaces_an_earlier_stranger() {
    let mut e = engine();
    let t0 = Now::read();
    let mut o = oa("c", "a", None, offer_sdp("198.18.99.5", 4000));
    o.received_from = Some(ip("198.18.1.2"));
    e.handle(Command::Offer(o), t0);
    let to_a = media_endpoint(&sdp_of(&e.handle(
        Command::Answer(oa("c", "a", Some("b"), offer_sdp("198.18.2.2", 6000))),
        t0,
    )));
    let to_b = e.backend().routes[&to_a].out;
    let intruder = sa("198.18.1.66:7000");
    let real = sa("198.18.1.2:40000");
    e.on_packet(packet(to_a, intruder, Some((0xbad, 1))), t0);
    e.on_packet(
        packet(to_a, real, Some((0xa1, 1))),
        t0 + Duration::from_millis(300),
    );
    assert_eq!(
        e.backend().routes[&to_b].dest,
        real,
        "the party (same IP as its SIP messages) did not displace the intruder"
    );
    // The intruder is refused from now on, and the source stays put.
    let sent = e.backend().sent.len();
    e.on_packet(
        packet(to_a, intruder, Some((0xbad, 2))),
        t0 + Duration::from_millis(400),
    );
    assert_eq!(e.backend().sent.len(), sent);
    assert_eq!(e.backend().routes[&to_b].dest, real);
}

/// Item 3: a source with the SDP's IP (another port: a port-translating
/// NAT on the party's own address) displaces an earlier stranger.
#[test]
fn the_sdp_ip_displaces_an_earlier_stranger() {
    let mut e = engine();
    let t0 = Now::read();
    let (to_a, _) = basic_call(&mut e, "c");
    let to_b = e.backend().routes[&to_a].out;
    e.on_packet(packet(to_a, sa("198.18.1.66:5000"), None), t0);
    let real = sa("198.18.1.2:40000");
    e.on_packet(packet(to_a, real, None), t0 + Duration::from_millis(10));
    assert_eq!(e.backend().routes[&to_b].dest, real);
}

/// Items 3 and 10: ports are chosen at random, so a probe call does not
/// reveal the next call's ports.
#[test]
fn a_probe_call_does_not_reveal_the_next_ports() {
    let mut e = engine_with(vec![iface("eth0", CARRIER)], 20000, 29999);
    let mut predicted = 0;
    for i in 0..200 {
        let probe = format!("probe-{i}");
        let (to_a, to_b) = basic_call(&mut e, &probe);
        let (next_a, next_b) = basic_call(&mut e, &format!("next-{i}"));
        // Sequential allocation gave the next call the probe's ports + 4.
        if next_a.port().abs_diff(to_a.port()) <= 4 || next_b.port().abs_diff(to_b.port()) <= 4 {
            predicted += 1;
        }
        e.handle(delete(&probe), Now::read());
        e.handle(delete(&format!("next-{i}")), Now::read());
    }
    assert!(
        predicted < 20,
        "{predicted} of 200 next calls were predictable"
    );
}

/// Item 5: a cap on m= lines per SDP, before any port is leased.
#[test]
fn too_many_media_sections_are_refused_before_any_port_is_leased() {
    let mut e = engine_with(vec![iface("eth0", CARRIER)], 20000, 29999);
    let r = e.handle(
        Command::Offer(oa("c", "a", None, sdp_with_media("198.18.1.2", 5000, 17))),
        Now::read(),
    );
    assert_eq!(
        r,
        Reply::Error("SDP has 17 media sections, at most 16 are allowed".into())
    );
    assert_nothing_left(&e);
    // 16 is fine.
    let r = e.handle(
        Command::Offer(oa("c", "a", None, sdp_with_media("198.18.1.2", 5000, 16))),
        Now::read(),
    );
    assert!(matches!(r, Reply::Ok(_)), "{r:?}");
    assert_eq!(e.ports().in_use(), 32);
}

/// Item 5, per call: new tags in one call cannot add parties' media without
/// bound.
#[test]
fn a_call_holds_a_bounded_number_of_media() {
    let mut e = engine_with(vec![iface("eth0", CARRIER)], 20000, 29999);
    let now = Now::read();
    let r = e.handle(
        Command::Offer(oa("c", "a", None, sdp_with_media("198.18.1.2", 5000, 16))),
        now,
    );
    assert!(matches!(r, Reply::Ok(_)), "{r:?}");
    let leased = e.ports().in_use();
    let r = e.handle(
        Command::Offer(oa("c", "x", None, sdp_with_media("198.18.1.2", 5000, 1))),
        now,
    );
    assert_eq!(
        r,
        Reply::Error("The call would have 34 media sections, at most 32 are allowed".into())
    );
    assert_eq!(
        e.ports().in_use(),
        leased,
        "nothing leased for the refused offer"
    );
}

/// Item 6: offer(X, A, 1 m=); offer(X, C, to-tag D, 3 m=); answer(X, A,
/// to-tag D, 3 m=) indexed past A's media in `render` and killed the
/// daemon.
#[test]
fn answer_pairing_parties_of_different_media_counts_is_an_error_not_a_panic() {
    let mut e = engine();
    let now = Now::read();
    let r = e.handle(
        Command::Offer(oa("x", "A", None, sdp_with_media("198.18.1.2", 5000, 1))),
        now,
    );
    assert!(matches!(r, Reply::Ok(_)));
    let r = e.handle(
        Command::Offer(oa(
            "x",
            "C",
            Some("D"),
            sdp_with_media("198.18.1.2", 7000, 3),
        )),
        now,
    );
    assert!(matches!(r, Reply::Ok(_)));
    let r = e.handle(
        Command::Answer(oa(
            "x",
            "A",
            Some("D"),
            sdp_with_media("198.18.2.2", 6000, 3),
        )),
        now,
    );
    assert!(matches!(r, Reply::Error(_)), "{r:?}");
    e.handle(delete("x"), now);
    assert_nothing_left(&e);
}

/// Item 9: equal from-tag and to-tag would pair a party with itself (its
/// media reflected back to it).
#[test]
fn equal_from_and_to_tags_are_refused() {
    let mut e = engine();
    let now = Now::read();
    let same = Reply::Error("From-tag and to-tag are the same".into());
    assert_eq!(
        e.handle(
            Command::Offer(oa("c", "a", Some("a"), offer_sdp("198.18.1.2", 5000))),
            now
        ),
        same
    );
    assert_nothing_left(&e);
    e.handle(
        Command::Offer(oa("c", "a", None, offer_sdp("198.18.1.2", 5000))),
        now,
    );
    let routes = e.backend().routes.clone();
    assert_eq!(
        e.handle(
            Command::Answer(oa("c", "a", Some("a"), offer_sdp("198.18.2.2", 6000))),
            now
        ),
        same
    );
    // The call is as the offer left it: the caller is not its own peer.
    assert_eq!(e.backend().routes, routes);
}

/// Item 10: a stale peer of an ended call behind NAT keeps sending to the
/// call's ports; the next call does not get them while they rest in
/// quarantine (the default, 32 s; it was 2 s).
#[test]
fn a_released_pair_rests_in_quarantine_across_calls() {
    // One call's worth of pairs: any new call would have to reuse them.
    let mut e = engine_cfg(
        SessionConfig::default(),
        PortAllocator::new(30000, 30003, DEFAULT_PORT_QUARANTINE).unwrap(),
    );
    let t0 = Now::read();
    let (to_a, _) = basic_call(&mut e, "c1");
    e.handle(delete("c1"), t0);
    // The stale peer still sends: nobody owns the port, nothing happens.
    let stale = sa("198.18.1.2:40000");
    e.on_packet(
        packet(to_a, stale, Some((0x55, 99))),
        t0 + Duration::from_secs(1),
    );
    assert!(e.backend().sent.is_empty());
    for secs in [3, 10, 31] {
        let r = e.handle(
            Command::Offer(oa("c2", "a", None, offer_sdp("198.18.1.2", 5000))),
            t0 + Duration::from_secs(secs),
        );
        assert_eq!(
            r,
            Reply::Error("Ran out of ports".into()),
            "call 2 got call 1's ports {secs} s after it ended"
        );
    }
    let r = e.handle(
        Command::Offer(oa("c2", "a", None, offer_sdp("198.18.1.2", 5000))),
        t0 + Duration::from_secs(32),
    );
    assert!(matches!(r, Reply::Ok(_)), "{r:?}");
}
