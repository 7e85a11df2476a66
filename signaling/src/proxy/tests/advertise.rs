//! `trunk-advertise` / `pbx-advertise`: the agent's own address towards
//! each side in Record-Route and Via, its Route entries recognised by
//! either address, and no private address while `"media"` is unknown.

use std::{net::IpAddr, time::Instant};

use super::*;
use crate::{config::Facing, message::Method};

const PUBLIC: &str = "198.19.0.7";
const PUBLIC_2: &str = "198.19.0.8";
const CALL: &str = "call-1@198.18.1.2";

fn agent(advertise: &str, now: Instant) -> Agent {
    let f: SipFile = toml::from_str(&format!(
        r#"
trunk-listen = "{T_LISTEN}"
pbx-listen = "{P_LISTEN}"
pbx = "{PBX}"
trunk-advertise = "{advertise}"
media-trunk-interface = "carrier"
media-pbx-interface = "pbx"
[[trunk]]
name = "carrier"
sources = ["198.18.1.2"]
target = "{TRUNK}"
default = true
"#
    ))
    .unwrap();
    Agent::new(SipConfig::resolve(f).unwrap(), key(), now)
}

fn mr() -> String {
    key().sign(CALL)
}

/// The `mr` of a Route / Record-Route value verifies for the call.
fn verifies(entry: &str) -> bool {
    let mr = entry
        .trim_end_matches('>')
        .split(';')
        .find_map(|p| p.strip_prefix("mr="))
        .unwrap_or_default();
    key().verify(CALL, mr)
}

/// An in-dialog BYE from the trunk with `routes` (its route set: the
/// Record-Route list reversed, §12.1.2).
fn bye_from_trunk(routes: &[String]) -> Message {
    let routes: String = routes.iter().map(|r| format!("Route: {r}\r\n")).collect();
    let text = format!(
        "BYE sip:100@198.18.2.2:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK-bye\r\n\
         {routes}\
         Max-Forwards: 70\r\n\
         From: <sip:caller@198.18.1.2>;tag=caller-tag\r\n\
         To: <sip:100@198.18.1.1>;tag=callee-tag\r\n\
         Call-ID: {CALL}\r\n\
         CSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    Message::parse(text.as_bytes()).unwrap()
}

/// The BYE as it left for the PBX (exactly one message went there).
fn to_pbx(a: &mut Agent) -> (Peer, Message) {
    let (sends, _) = outputs(a);
    let mut there: Vec<_> = sends
        .into_iter()
        .filter(|(p, _)| p.remote == sa(PBX))
        .collect();
    assert_eq!(there.len(), 1, "one request to the PBX");
    there.remove(0)
}

#[test]
fn a_call_from_the_trunk_records_the_public_address_on_the_trunk_side() {
    let now = Instant::now();
    let mut a = agent(PUBLIC, now);
    let fwd = forwarded_invite(&mut a, now);
    let mr = mr();
    assert_eq!(
        fwd.record_routes(),
        vec![
            format!("<sip:198.18.2.1:5060;lr;mr={mr}>"),
            format!("<sip:{PUBLIC}:5060;lr;mr={mr}>"),
        ],
        "the PBX side keeps its listen address, the trunk side is advertised"
    );
    assert!(fwd.record_routes().iter().all(|r| verifies(r)));
    assert_eq!(fwd.top_via().host, "198.18.2.1", "towards the PBX: private");
    // The 200 the trunk receives carries the public entry.
    let mut ok = response(&fwd, 200, SDP);
    for r in fwd.record_routes().iter().rev() {
        ok.prepend_record_route(r);
    }
    a.on_message(from_pbx(), ok, now);
    let (_, ngs) = outputs(&mut a);
    a.on_ng(ngs[0].0, ok_sdp("v=0\r\nanswer"), now);
    let (sends, _) = outputs(&mut a);
    let (peer, ok) = &sends[0];
    assert_eq!(peer.remote, sa(TRUNK));
    assert!(
        ok.record_routes()
            .iter()
            .any(|r| r.contains(&format!("sip:{PUBLIC}:5060;"))),
        "{:?}",
        ok.record_routes()
    );
    assert!(
        !ok.record_routes().iter().any(|r| r.contains(T_LISTEN)),
        "no private trunk-side address: {:?}",
        ok.record_routes()
    );
}

#[test]
fn a_call_to_the_trunk_has_the_public_address_in_via_and_record_route() {
    let now = Instant::now();
    let mut a = agent(&format!("{PUBLIC}:5062"), now);
    let text = format!(
        "INVITE sip:+4930123@198.18.2.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.18.2.2:5060;branch=z9hG4bK-out\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:100@198.18.2.2>;tag=pbx-tag\r\n\
         To: <sip:+4930123@198.18.2.1>\r\n\
         Call-ID: {CALL}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:100@198.18.2.2:5060>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    a.on_message(from_pbx(), Message::parse(text.as_bytes()).unwrap(), now);
    let (sends, _) = outputs(&mut a);
    let (peer, m) = sends
        .iter()
        .find(|(p, _)| p.remote == sa(TRUNK))
        .expect("forwarded to the trunk");
    assert_eq!(peer.local, sa(T_LISTEN), "sent from the listen address");
    let via = m.top_via();
    assert_eq!((via.host.as_str(), via.port_or_default()), (PUBLIC, 5062));
    let mr = mr();
    assert_eq!(
        m.record_routes(),
        vec![
            format!("<sip:{PUBLIC}:5062;lr;mr={mr}>"),
            format!("<sip:198.18.2.1:5060;lr;mr={mr}>"),
        ]
    );
}

#[test]
fn a_route_naming_the_public_address_is_popped_and_its_signature_verifies() {
    let now = Instant::now();
    let mr = mr();
    let public = format!("<sip:{PUBLIC}:5060;lr;mr={mr}>");
    let pbx_side = format!("<sip:198.18.2.1:5060;lr;mr={mr}>");
    // An agent that does not know the call (restarted): only the
    // signature on the public entry lets the request in.
    let mut a = agent(PUBLIC, now);
    a.on_message(
        from_trunk(),
        bye_from_trunk(&[public.clone(), pbx_side.clone()]),
        now,
    );
    let (peer, m) = to_pbx(&mut a);
    assert!(
        m.routes().is_empty(),
        "both of ours popped: {:?}",
        m.routes()
    );
    assert_eq!(peer.local, sa(P_LISTEN), "leaves from the PBX side");
    assert_eq!(m.top_via().host, "198.18.2.1");
    // A forged signature on the public entry is not taken.
    let mut a = agent(PUBLIC, now);
    let forged = format!("<sip:{PUBLIC}:5060;lr;mr={}>", "0".repeat(32));
    a.on_message(from_trunk(), bye_from_trunk(&[forged]), now);
    let (sends, _) = outputs(&mut a);
    assert!(sends.iter().all(|(p, _)| p.remote != sa(PBX)));
    assert_eq!(sends[0].1.status(), Some(481), "refused: bad signature");
    assert_eq!(a.stats().in_dialog_refused.get("bad_signature"), Some(&1));
    // The listen address still names us too.
    let mut a = agent(PUBLIC, now);
    let private = format!("<sip:{T_LISTEN};lr;mr={mr}>");
    a.on_message(from_trunk(), bye_from_trunk(&[private, pbx_side]), now);
    let (_, m) = to_pbx(&mut a);
    assert!(m.routes().is_empty());
}

#[test]
fn media_refuses_new_calls_until_the_public_address_is_known_then_follows_it() {
    let now = Instant::now();
    let mut a = agent("media", now);
    a.on_message(from_trunk(), invite("z9hG4bK-early", SDP), now);
    let (sends, ngs) = outputs(&mut a);
    assert!(ngs.is_empty(), "no media offered");
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].1.status(), Some(503));
    assert_eq!(sends[0].1.header("Retry-After").as_deref(), Some("5"));
    assert_eq!(a.stats().advertise_unknown, 1);
    assert_eq!(a.calls(), 0);

    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    a.set_public(Facing::Trunk, ip(PUBLIC));
    let fwd = forwarded_invite(&mut a, now);
    assert!(
        fwd.record_routes()[1].starts_with(&format!("<sip:{PUBLIC}:5060;")),
        "{:?}",
        fwd.record_routes()
    );

    // The address changes: new calls carry the new one; Route entries
    // with the one before still name us.
    a.set_public(Facing::Trunk, ip(PUBLIC_2));
    let mut b = agent("media", now);
    b.set_public(Facing::Trunk, ip(PUBLIC_2));
    let fwd = forwarded_invite(&mut b, now);
    assert!(fwd.record_routes()[1].starts_with(&format!("<sip:{PUBLIC_2}:5060;")));
    let mr = mr();
    a.on_message(
        from_trunk(),
        bye_from_trunk(&[
            format!("<sip:{PUBLIC}:5060;lr;mr={mr}>"),
            format!("<sip:198.18.2.1:5060;lr;mr={mr}>"),
        ]),
        now,
    );
    let (_, m) = to_pbx(&mut a);
    assert!(m.routes().is_empty(), "{:?}", m.routes());
}

#[test]
fn options_to_the_public_address_are_answered() {
    let now = Instant::now();
    let mut a = agent(PUBLIC, now);
    let text = format!(
        "OPTIONS sip:{PUBLIC}:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK-opt\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:ping@198.18.1.2>;tag=p\r\n\
         To: <sip:{PUBLIC}>\r\n\
         Call-ID: opt-1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    );
    a.on_message(from_trunk(), Message::parse(text.as_bytes()).unwrap(), now);
    let (sends, _) = outputs(&mut a);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0.remote, sa(TRUNK));
    assert_eq!(sends[0].1.status(), Some(200));
    let _ = Method::Options;
}
