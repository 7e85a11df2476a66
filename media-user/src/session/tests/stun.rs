//! `advertise = "stun"` at the engine: offers are refused until the
//! public address is known, then carry it; a change applies to the next
//! offer and re-offer at once; every server failing keeps the last one.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::*;
use crate::stun::{Answer, Public, PublicAddress, StunSpec};

fn server() -> SocketAddr {
    "198.18.60.9:3478".parse().unwrap()
}

fn stun_engine() -> (Engine<Fake>, Public) {
    let mut i = iface("eth0", CARRIER);
    let public = Public(Arc::new(PublicAddress::new(
        "eth0".into(),
        ip(CARRIER),
        &StunSpec {
            servers: vec![server()],
            interval: Duration::from_secs(2),
        },
    )));
    i.public_v4 = Some(public.clone());
    (engine_with(vec![i], 30000, 30099), public)
}

fn mapped(public: &Public, address: &str) {
    public.apply(
        &[(
            server(),
            Answer::Mapped(format!("{address}:40000").parse().unwrap()),
        )],
        SystemTime::now(),
    );
}

fn offer(e: &mut Engine<Fake>, call: &str) -> Reply {
    e.handle(
        Command::Offer(oa(call, "a-tag", None, offer_sdp("198.18.1.2", 5000))),
        Now::read(),
    )
}

#[test]
fn offers_wait_for_the_public_address_and_follow_its_changes() {
    let (mut e, public) = stun_engine();
    // Before discovery, and after a round in which every server failed.
    for _ in 0..2 {
        match offer(&mut e, "c1") {
            Reply::Error(why) => assert_eq!(why, "public address not yet known"),
            other => panic!("offer accepted before discovery: {other:?}"),
        }
        assert_eq!(e.call_count(), 0, "a refused offer leaves nothing");
        assert!(e.backend().open.is_empty(), "no port opened");
        public.apply(
            &[(server(), Answer::Failed("timeout".into()))],
            SystemTime::now(),
        );
    }
    mapped(&public, "198.18.50.1");
    let first = String::from_utf8(sdp_of(&offer(&mut e, "c1"))).unwrap();
    assert!(first.contains("c=IN IP4 198.18.50.1\r\n"), "{first}");
    assert!(
        !first.contains(CARRIER),
        "the local address stays private: {first}"
    );
    // Sockets stay on the local address.
    assert!(e.backend().open.iter().all(|a| a.ip() == ip(CARRIER)));

    // The edge's address changes: the re-offer of c1 and a new call
    // carry the new one at once.
    mapped(&public, "198.18.51.1");
    assert_eq!(public.state().changes, 1);
    let again = String::from_utf8(sdp_of(&offer(&mut e, "c1"))).unwrap();
    assert!(again.contains("c=IN IP4 198.18.51.1\r\n"), "{again}");
    let second = String::from_utf8(sdp_of(&offer(&mut e, "c2"))).unwrap();
    assert!(second.contains("c=IN IP4 198.18.51.1\r\n"), "{second}");

    // Every server fails: the last known address stays in effect.
    public.apply(
        &[(server(), Answer::Failed("timeout".into()))],
        SystemTime::now(),
    );
    assert_eq!(public.state().status(), "degraded");
    let third = String::from_utf8(sdp_of(&offer(&mut e, "c3"))).unwrap();
    assert!(third.contains("c=IN IP4 198.18.51.1\r\n"), "{third}");
}

#[test]
fn statistics_show_the_address_in_effect() {
    let (mut e, public) = stun_engine();
    mapped(&public, "198.18.50.1");
    let reply = ok_dict(e.handle(Command::Statistics, Now::read()));
    let stats = reply.get(b"statistics".as_slice()).unwrap();
    let list = stats
        .get("public addresses")
        .and_then(Value::as_list)
        .expect("public addresses in statistics");
    assert_eq!(list.len(), 1);
    let entry = &list[0];
    let text = |k: &str| entry.get(k).and_then(Value::as_str).map(str::to_owned);
    assert_eq!(text("interface").as_deref(), Some("eth0"));
    assert_eq!(text("address").as_deref(), Some("198.18.50.1"));
    assert_eq!(text("status").as_deref(), Some("ok"));
    assert!(
        entry
            .get("last confirmed")
            .and_then(Value::as_int)
            .is_some()
    );
}
