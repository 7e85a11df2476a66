//! Port sharing (`port-sharing`) driven through the engine: leases with
//! the expected remote, the answerer bound at its answer, streams keyed by
//! (local, source), attribution of unknown sources, and adoption after a
//! restart.

use std::time::Duration;

use super::{
    CARRIER, Fake, assert_same_call, engine, iface, media_endpoint, oa, offer_sdp, sa, sdp_of,
};
use crate::{
    interfaces::Interfaces,
    ng::{Command, Reply},
    session::{
        At, Engine, Now, PacketEvent, PortAllocator, SessionConfig, Source, sharing::SharedPorts,
    },
};

/// An engine over 6 ports (3 shared pairs) on one interface.
fn shared_engine() -> Engine<Fake> {
    let e = engine();
    let fake = Fake {
        route_source: e.backend().route_source.clone(),
        ..Fake::default()
    };
    Engine::new(
        SessionConfig::default(),
        fake,
        Interfaces(vec![iface("eth0", CARRIER)]),
        PortAllocator::new(30000, 30005, Duration::from_secs(2)).unwrap(),
        Now::read(),
    )
    .with_sharing(SharedPorts::seeded(30000, 30005, 64, Duration::from_secs(2), 1).unwrap())
}

/// Call `id`: A offers from `a`, B answers from `b`; returns (relay for A,
/// relay for B).
fn call(
    e: &mut Engine<Fake>,
    id: &str,
    a: &str,
    b: &str,
) -> (std::net::SocketAddr, std::net::SocketAddr) {
    let (a, b) = (sa(a), sa(b));
    let now = Now::read();
    let r = e.handle(
        Command::Offer(oa(id, "a", None, offer_sdp(&a.ip().to_string(), a.port()))),
        now,
    );
    let to_b = media_endpoint(&sdp_of(&r));
    let r = e.handle(
        Command::Answer(oa(
            id,
            "a",
            Some("b"),
            offer_sdp(&b.ip().to_string(), b.port()),
        )),
        now,
    );
    (media_endpoint(&sdp_of(&r)), to_b)
}

fn packet(local: std::net::SocketAddr, from: &str, ssrc: u32, seq: u16) -> PacketEvent {
    PacketEvent {
        local,
        from: sa(from),
        rtp: Some((ssrc, seq)),
        data: vec![0x80, 0, 0, 0],
    }
}

#[test]
fn twenty_calls_on_three_pairs_each_keyed_by_its_remote() {
    let mut e = shared_engine();
    let mut relays = Vec::new();
    for i in 0..20u16 {
        let a = format!("198.18.1.{}:{}", 10 + i % 4, 5000 + 2 * i);
        let b = format!("198.18.2.2:{}", 6000 + 2 * i);
        let (to_a, to_b) = call(&mut e, &format!("c{i}"), &a, &b);
        assert!((30000..30006).contains(&to_a.port()));
        relays.push((to_a, to_b, a, b));
    }
    let f = e.shared_figures().unwrap();
    assert_eq!((f.pairs, f.streams), (3, 40));
    assert!(f.max_streams_on_a_pair <= 14, "{f:?}");
    // Every stream's route is keyed by its slot; A's RTP expects A.
    let routes = &e.backend().shared_routes;
    assert_eq!(routes.len(), 80, "RTP and RTCP, both sides, 20 calls");
    for (to_a, to_b, a, b) in &relays {
        let r = &routes[&(*to_a, sa(a))];
        assert_eq!((r.out, r.dest), (*to_b, sa(b)));
        assert_eq!(r.source, Source::Learning(Some(sa(a))));
        let r = &routes[&(*to_b, sa(b))];
        assert_eq!((r.out, r.dest), (*to_a, sa(a)));
    }
    // A packet from A's exact endpoint on its port goes to its call only.
    let (to_a, to_b, a, b) = relays[7].clone();
    e.on_packet(packet(to_a, &a, 77, 1), Now::read());
    let sent = &e.backend().shared_sent;
    assert_eq!(sent.last(), Some(&((to_a, sa(&a)), to_b, sa(&b))));
    // A third party on a shared port: refused and counted, nothing sent.
    let before = e.backend().sent.len();
    e.on_packet(packet(to_a, "198.18.9.9:4000", 1, 1), Now::read());
    assert_eq!(e.backend().sent.len(), before);
    assert_eq!(e.shared_figures().unwrap().unattributed, 1);
    // Deleting every call gives every slot and socket back.
    for i in 0..20 {
        e.handle(
            Command::Delete(crate::ng::Delete {
                call_id: format!("c{i}"),
                from_tag: None,
                to_tag: None,
                via_branch: None,
                delete_delay: Some(0),
            }),
            Now::read(),
        );
    }
    assert!(e.backend().shared_routes.is_empty());
    assert!(e.backend().open.is_empty());
    assert!(e.backend().shared.is_empty());
}

#[test]
fn a_natted_caller_latches_and_its_key_moves_with_it() {
    let mut e = shared_engine();
    let (to_a, to_b) = call(&mut e, "nat", "198.18.99.5:4000", "198.18.2.2:6000");
    // Another call whose caller is elsewhere.
    call(&mut e, "other", "198.18.1.20:5000", "198.18.2.2:6002");
    // The NAT keeps the IP, changes the port: one stream expects that IP
    // on this port, so the packet is attributed, and latched.
    let nat = "198.18.99.5:31000";
    e.on_packet(packet(to_a, nat, 0x55, 1), Now::read());
    let slot = sa("198.18.99.5:4000");
    let r = &e.backend().shared_routes[&(to_a, slot)];
    assert_eq!(r.source, Source::Learning(Some(sa(nat))));
    // B's media goes to the NAT's source now.
    let r = &e.backend().shared_routes[&(to_b, sa("198.18.2.2:6000"))];
    assert_eq!(r.dest, sa(nat));
    // The SDP endpoint's key is free again, the NAT's is A's.
    let s = e.sharing.as_ref().unwrap();
    assert!(s.owners.holds(to_a, sa(nat)));
    assert!(!s.owners.holds(to_a, slot));
    assert!(e.owns_flow(to_a, Some(sa(nat))));
}

#[test]
fn the_answerer_s_taken_endpoint_and_asymmetric_calls_are_refused() {
    let mut e = shared_engine();
    // Fill: 3 pairs, each with a lease expecting 198.18.2.2:6000 (the
    // offerer's side of three calls).
    for i in 0..3 {
        call(
            &mut e,
            &format!("c{i}"),
            "198.18.2.2:6000",
            &format!("198.18.1.5:{}", 7000 + 2 * i),
        );
    }
    // A fourth call whose answerer is 198.18.2.2:6000: every pair has that
    // endpoint taken, so the answer's bind fails, clearly.
    let now = Now::read();
    e.handle(
        Command::Offer(oa("x", "a", None, offer_sdp("198.18.1.9", 5000))),
        now,
    );
    let r = e.handle(
        Command::Answer(oa("x", "a", Some("b"), offer_sdp("198.18.2.2", 6000))),
        now,
    );
    match r {
        Reply::Error(m) => assert!(m.contains("already used by another call"), "{m}"),
        other => panic!("{other:?}"),
    }
    let mut o = oa("asym", "a", None, offer_sdp("198.18.1.9", 5100));
    o.flags.asymmetric = true;
    match e.handle(Command::Offer(o), now) {
        Reply::Error(m) => assert!(m.contains("asymmetric"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sharing_call_survives_a_restart() {
    let mut e = shared_engine();
    let (to_a, to_b) = call(&mut e, "keep", "198.18.99.5:4000", "198.18.2.2:6000");
    call(&mut e, "other", "198.18.1.20:5000", "198.18.2.2:6002");
    let nat = "198.18.99.5:31000";
    e.on_packet(packet(to_a, nat, 0x55, 1), Now::read());
    // A stranger, counted; the count is kept with the engine's record.
    e.on_packet(packet(to_a, "198.18.9.9:9", 1, 1), Now::read());
    e.tick(Now::read());
    assert_eq!(e.shared_figures().unwrap().unattributed, 1);
    let t = Now::read();
    let fake = e.backend().restarted();
    let mut b = Engine::new(
        e.cfg.clone(),
        fake,
        e.interfaces.clone(),
        PortAllocator::new(30000, 30005, Duration::from_secs(2)).unwrap(),
        t,
    )
    .with_sharing(SharedPorts::seeded(30000, 30005, 64, Duration::from_secs(2), 2).unwrap());
    let restored = b.restore(t);
    assert_eq!(
        (restored.adopted, restored.skipped.len()),
        (2, 0),
        "{restored:?}"
    );
    for id in ["keep", "other"] {
        assert_same_call(&e.calls[id], &b.calls[id]);
    }
    // Slots claimed back, routes and keys as before.
    assert_eq!(b.shared_figures(), e.shared_figures());
    assert_eq!(b.backend().shared_routes, e.backend().shared_routes);
    assert_eq!(b.backend().shared, e.backend().shared);
    let s = b.sharing.as_ref().unwrap();
    assert!(s.owners.holds(to_a, sa(nat)));
    // The slot of the adopted call is not given again.
    let slot = sa("198.18.99.5:4000");
    let port = to_a.port();
    assert!(
        b.sharing
            .as_mut()
            .unwrap()
            .ports
            .claim(port, Some(slot))
            .is_err()
    );
    // Media keeps flowing: A from its NAT source reaches B.
    b.on_packet(packet(to_a, nat, 0x55, 2), Now::read());
    assert_eq!(
        b.backend().shared_sent.last(),
        Some(&((to_a, slot), to_b, sa("198.18.2.2:6000")))
    );
    let _ = At::Own(to_a);
    // A daemon started without port-sharing does not adopt them.
    let mut c = Engine::new(
        e.cfg.clone(),
        e.backend().restarted(),
        e.interfaces.clone(),
        PortAllocator::new(30000, 30005, Duration::from_secs(2)).unwrap(),
        t,
    );
    let restored = c.restore(t);
    assert_eq!(restored.adopted, 0);
    assert!(
        restored.skipped[0]
            .reason
            .to_string()
            .contains("port-sharing is off")
    );
}

#[test]
fn a_format_2_record_of_the_build_before_is_adopted_on_pairs_of_its_own() {
    let mut e = engine();
    super::basic_call(&mut e, "old");
    let v3 = e.backend().store["old"].clone();
    assert_eq!(v3[0], crate::session::record::FORMAT);
    let v2 = crate::session::record::as_format_2(&v3);
    assert_eq!(v2[0], 2);
    assert!(v2.len() < v3.len());
    let t = Now::read();
    let mut fake = e.backend().restarted();
    fake.store.insert("old".into(), v2);
    fake.persisted = Some(fake.store.clone().into_iter().collect());
    let mut b = Engine::new(
        e.cfg.clone(),
        fake,
        e.interfaces.clone(),
        PortAllocator::new(30000, 30099, Duration::from_secs(2)).unwrap(),
        t,
    );
    let restored = b.restore(t);
    assert_eq!((restored.adopted, restored.skipped.len()), (1, 0));
    assert_same_call(&e.calls["old"], &b.calls["old"]);
    assert_eq!(b.backend().routes, e.backend().routes);
}

#[test]
fn a_caller_behind_a_nat_that_changes_its_ip_is_known_by_its_announced_ssrc() {
    let mut e = shared_engine();
    let now = Now::read();
    let mut sdp = String::from_utf8(offer_sdp("198.18.99.5", 4000)).unwrap();
    sdp.push_str("a=ssrc:305419896 cname:caller\r\n");
    let r = e.handle(Command::Offer(oa("ssrc", "a", None, sdp.into_bytes())), now);
    let to_b = media_endpoint(&sdp_of(&r));
    let r = e.handle(
        Command::Answer(oa("ssrc", "a", Some("b"), offer_sdp("198.18.2.2", 6000))),
        now,
    );
    let to_a = media_endpoint(&sdp_of(&r));
    // Another IP, another port: only the announced SSRC says whose it is.
    let nat = "198.18.77.1:40000";
    e.on_packet(packet(to_a, nat, 0x9999, 1), Now::read());
    assert_eq!(
        e.shared_figures().unwrap().unattributed,
        1,
        "a stranger's SSRC"
    );
    e.on_packet(packet(to_a, nat, 305_419_896, 1), Now::read());
    assert_eq!(e.shared_figures().unwrap().unattributed, 1);
    let r = &e.backend().shared_routes[&(to_b, sa("198.18.2.2:6000"))];
    assert_eq!(r.dest, sa(nat), "B's media follows A to its NAT");
    // The announced SSRCs survive a restart (record format 3).
    let t = Now::read();
    let fake = e.backend().restarted();
    let mut b = Engine::new(
        e.cfg.clone(),
        fake,
        e.interfaces.clone(),
        PortAllocator::new(30000, 30005, Duration::from_secs(2)).unwrap(),
        t,
    )
    .with_sharing(SharedPorts::seeded(30000, 30005, 64, Duration::from_secs(2), 2).unwrap());
    assert_eq!(b.restore(t).adopted, 1);
    assert_eq!(b.calls["ssrc"].monos[0].media[0].ssrcs, vec![305_419_896]);
}
