//! Every accessor on every corpus message, and lossless round trips.

use std::net::IpAddr;

use super::*;
use crate::message::{Method, Via};

/// What the accessors must return for one fixture.
struct Expected {
    name: &'static str,
    fixture: &'static str,
    request_uri: Option<&'static str>,
    status: Option<u16>,
    reason: Option<&'static str>,
    method: Method,
    call_id: &'static str,
    from_tag: Option<&'static str>,
    to_tag: Option<&'static str>,
    cseq: (u32, Method),
    max_forwards: u32,
    top_via: Via,
    via_count: usize,
    routes: &'static [&'static str],
    record_routes: &'static [&'static str],
    contact: Option<&'static str>,
    body_len: usize,
    content_type: Option<&'static str>,
}

fn via(
    transport: &str,
    host: &str,
    port: Option<u16>,
    branch: &str,
    received: Option<&str>,
    rport: Option<Option<u16>>,
) -> Via {
    Via {
        transport: transport.to_owned(),
        host: host.to_owned(),
        port,
        branch: Some(branch.to_owned()),
        received: received.map(|r| r.parse::<IpAddr>().unwrap()),
        rport,
    }
}

fn sipp_via(branch: &str) -> Via {
    via("UDP", "198.18.98.1", Some(5061), branch, None, None)
}

fn table() -> Vec<Expected> {
    vec![
        Expected {
            name: "sipp_invite",
            fixture: SIPP_INVITE,
            request_uri: Some("sip:service@198.18.98.2:5060"),
            status: None,
            reason: None,
            method: Method::Invite,
            call_id: "1-4711@198.18.98.1",
            from_tag: Some("4711SIPpTag001"),
            to_tag: None,
            cseq: (1, Method::Invite),
            max_forwards: 70,
            top_via: sipp_via("z9hG4bK-4711-1-0"),
            via_count: 1,
            routes: &[],
            record_routes: &[],
            contact: Some("sip:sipp@198.18.98.1:5061"),
            body_len: 133,
            content_type: Some("application/sdp"),
        },
        Expected {
            name: "sipp_100",
            fixture: SIPP_100,
            request_uri: None,
            status: Some(100),
            reason: Some("Trying"),
            method: Method::Invite,
            call_id: "1-4711@198.18.98.1",
            from_tag: Some("4711SIPpTag001"),
            to_tag: None,
            cseq: (1, Method::Invite),
            max_forwards: 70,
            top_via: sipp_via("z9hG4bK-4711-1-0"),
            via_count: 1,
            routes: &[],
            record_routes: &[],
            contact: None,
            body_len: 0,
            content_type: None,
        },
        Expected {
            name: "sipp_180",
            fixture: SIPP_180,
            request_uri: None,
            status: Some(180),
            reason: Some("Ringing"),
            method: Method::Invite,
            call_id: "1-4711@198.18.98.1",
            from_tag: Some("4711SIPpTag001"),
            to_tag: Some("1102SIPpTag012"),
            cseq: (1, Method::Invite),
            max_forwards: 70,
            top_via: via(
                "UDP",
                "198.18.98.1",
                Some(5061),
                "z9hG4bK-4711-1-0",
                Some("203.0.113.9"),
                Some(Some(40112)),
            ),
            via_count: 1,
            routes: &[],
            record_routes: &["<sip:198.18.1.1:5060;lr;ma=t>"],
            contact: Some("sip:198.18.98.2:5060;transport=UDP"),
            body_len: 0,
            content_type: None,
        },
        Expected {
            name: "sipp_183",
            fixture: SIPP_183,
            request_uri: None,
            status: Some(183),
            reason: Some("Session Progress"),
            method: Method::Invite,
            call_id: "1-4711@198.18.98.1",
            from_tag: Some("4711SIPpTag001"),
            to_tag: Some("1102SIPpTag012"),
            cseq: (1, Method::Invite),
            max_forwards: 70,
            top_via: sipp_via("z9hG4bK-4711-1-0"),
            via_count: 1,
            routes: &[],
            record_routes: &[],
            contact: Some("sip:198.18.98.2:5060;transport=UDP"),
            body_len: 133,
            content_type: Some("application/sdp"),
        },
        Expected {
            name: "sipp_200",
            fixture: SIPP_200,
            request_uri: None,
            status: Some(200),
            reason: Some("OK"),
            method: Method::Invite,
            call_id: "1-4711@198.18.98.1",
            from_tag: Some("4711SIPpTag001"),
            to_tag: Some("1102SIPpTag012"),
            cseq: (1, Method::Invite),
            max_forwards: 70,
            top_via: sipp_via("z9hG4bK-4711-1-0"),
            via_count: 1,
            routes: &[],
            record_routes: &[
                "<sip:198.18.1.1:5060;lr;ma=t>",
                "<sip:proxy.example.net;lr>",
            ],
            contact: Some("sip:198.18.98.2:5060;transport=UDP"),
            body_len: 133,
            content_type: Some("application/sdp"),
        },
        Expected {
            name: "sipp_ack",
            fixture: SIPP_ACK,
            request_uri: Some("sip:198.18.98.2:5060;transport=UDP"),
            status: None,
            reason: None,
            method: Method::Ack,
            call_id: "1-4711@198.18.98.1",
            from_tag: Some("4711SIPpTag001"),
            to_tag: Some("1102SIPpTag012"),
            cseq: (1, Method::Ack),
            max_forwards: 70,
            top_via: sipp_via("z9hG4bK-4711-1-5"),
            via_count: 1,
            routes: &[
                "<sip:proxy.example.net;lr>",
                "<sip:198.18.1.1:5060;lr;ma=t>",
            ],
            record_routes: &[],
            contact: Some("sip:sipp@198.18.98.1:5061"),
            body_len: 0,
            content_type: None,
        },
        Expected {
            name: "sipp_bye",
            fixture: SIPP_BYE,
            request_uri: Some("sip:198.18.98.2:5060;transport=UDP"),
            status: None,
            reason: None,
            method: Method::Bye,
            call_id: "1-4711@198.18.98.1",
            from_tag: Some("4711SIPpTag001"),
            to_tag: Some("1102SIPpTag012"),
            cseq: (2, Method::Bye),
            max_forwards: 70,
            top_via: sipp_via("z9hG4bK-4711-1-7"),
            via_count: 1,
            routes: &[
                "<sip:proxy.example.net;lr>",
                "<sip:198.18.1.1:5060;lr;ma=t>",
            ],
            record_routes: &[],
            contact: Some("sip:sipp@198.18.98.1:5061"),
            body_len: 0,
            content_type: None,
        },
        Expected {
            name: "cancel",
            fixture: CANCEL,
            request_uri: Some("sip:service@198.18.98.2:5060"),
            status: None,
            reason: None,
            method: Method::Cancel,
            call_id: "1-4711@198.18.98.1",
            from_tag: Some("4711SIPpTag001"),
            to_tag: None,
            cseq: (1, Method::Cancel),
            max_forwards: 70,
            top_via: sipp_via("z9hG4bK-4711-1-0"),
            via_count: 1,
            routes: &[],
            record_routes: &[],
            contact: None,
            body_len: 0,
            content_type: None,
        },
        Expected {
            name: "options",
            fixture: OPTIONS,
            request_uri: Some("sip:198.18.1.1"),
            status: None,
            reason: None,
            method: Method::Options,
            call_id: "5c2f1e@203.0.113.5",
            from_tag: Some("opt-1"),
            to_tag: None,
            cseq: (101, Method::Options),
            max_forwards: 70,
            top_via: via(
                "UDP",
                "203.0.113.5",
                Some(5060),
                "z9hG4bK.opt-91",
                None,
                Some(None),
            ),
            via_count: 1,
            routes: &[],
            record_routes: &[],
            contact: None,
            body_len: 0,
            content_type: None,
        },
        Expected {
            name: "register",
            fixture: REGISTER,
            request_uri: Some("sip:registrar.example.com"),
            status: None,
            reason: None,
            method: Method::Register,
            call_id: "1j9FpLxk3uxtm8tn@192.0.2.4",
            from_tag: Some("a73kszlfl"),
            to_tag: None,
            cseq: (2, Method::Register),
            max_forwards: 70,
            top_via: via(
                "TCP",
                "192.0.2.4",
                Some(54321),
                "z9hG4bKnashds7",
                None,
                None,
            ),
            via_count: 1,
            routes: &[],
            record_routes: &[],
            contact: Some("sip:bob@192.0.2.4:54321;transport=tcp;ob"),
            body_len: 0,
            content_type: None,
        },
        Expected {
            name: "kamailio_invite",
            fixture: KAMAILIO_INVITE,
            request_uri: Some("sip:+15551230000@pbx.example.net:5060;user=phone"),
            status: None,
            reason: None,
            method: Method::Invite,
            call_id: "3c26700d3e1b4f7a9b5e@198.51.100.30",
            from_tag: Some("as5f2e7c1d"),
            to_tag: None,
            cseq: (102, Method::Invite),
            max_forwards: 68,
            top_via: Via {
                transport: "UDP".to_owned(),
                host: "198.18.99.5".to_owned(),
                port: None,
                branch: Some("z9hG4bKcb5e.9f3b3a1b2c0d0e0f0a1b2c3d4e5f6a7b.0".to_owned()),
                received: None,
                rport: None,
            },
            via_count: 3,
            routes: &["<sip:198.18.1.1:5060;lr;ma=t>"],
            record_routes: &[
                "<sip:198.18.99.5;lr;ftag=as5f2e7c1d;did=0d1.a2c3>",
                "<sip:203.0.113.20;r2=on;lr;ftag=as5f2e7c1d;did=0d1.a2c3>",
            ],
            contact: Some("sip:+15557654321@198.51.100.30:5060"),
            body_len: 218,
            content_type: Some("application/sdp"),
        },
        Expected {
            name: "compact",
            fixture: COMPACT,
            request_uri: Some("sip:bob@biloxi.example.com"),
            status: None,
            reason: None,
            method: Method::Invite,
            call_id: "compact-call-1@192.0.2.10",
            from_tag: Some("98asjd8"),
            to_tag: None,
            cseq: (8, Method::Invite),
            max_forwards: 70,
            top_via: via(
                "UDP",
                "192.0.2.10",
                Some(5060),
                "z9hG4bKcompact1",
                None,
                None,
            ),
            via_count: 1,
            routes: &[],
            record_routes: &[],
            contact: Some("sip:alice@192.0.2.10:5060"),
            body_len: 89,
            content_type: Some("application/sdp"),
        },
        Expected {
            name: "comma_joined",
            fixture: COMMA_JOINED,
            request_uri: Some("sip:carol@chicago.example.com"),
            status: None,
            reason: None,
            method: Method::Invite,
            call_id: "comma-joined-1",
            from_tag: Some("cj1"),
            to_tag: None,
            cseq: (1, Method::Invite),
            max_forwards: 50,
            top_via: via("UDP", "p2.example.com", None, "z9hG4bK1", None, None),
            via_count: 3,
            routes: &["<sip:p3.example.com;lr>", "<sip:x,y@p4.example.com;lr>"],
            record_routes: &[
                "<sip:p2.example.com;lr>",
                "\"Proxy, One\" <sip:p1.example.com;lr>",
            ],
            contact: None,
            body_len: 0,
            content_type: None,
        },
        Expected {
            name: "folded",
            fixture: FOLDED,
            request_uri: Some("sip:bob@biloxi.example.com"),
            status: None,
            reason: None,
            method: Method::Invite,
            call_id: "fold-1@pc33.atlanta.example.com",
            from_tag: Some("fold7"),
            to_tag: None,
            cseq: (31862, Method::Invite),
            max_forwards: 69,
            top_via: via(
                "UDP",
                "pc33.atlanta.example.com",
                None,
                "z9hG4bKfold1",
                None,
                None,
            ),
            via_count: 1,
            routes: &[],
            record_routes: &[],
            contact: None,
            body_len: 0,
            content_type: None,
        },
        Expected {
            name: "ipv6",
            fixture: IPV6,
            request_uri: Some("sip:bob@[2001:db8::20]:5060"),
            status: None,
            reason: None,
            method: Method::Invite,
            call_id: "v6call@2001:2::1",
            from_tag: Some("v6a"),
            to_tag: None,
            cseq: (1, Method::Invite),
            max_forwards: 69,
            top_via: via(
                "UDP",
                "2001:2::1",
                Some(5060),
                "z9hG4bKv6a",
                None,
                Some(None),
            ),
            via_count: 1,
            routes: &[],
            record_routes: &[],
            contact: Some("sip:alice@[2001:2::1]:5060;transport=udp"),
            body_len: 0,
            content_type: None,
        },
        Expected {
            name: "sipp_487",
            fixture: SIPP_487,
            request_uri: None,
            status: Some(487),
            reason: Some("Request Terminated"),
            method: Method::Invite,
            call_id: "1-4711@198.18.98.1",
            from_tag: Some("4711SIPpTag001"),
            to_tag: Some("487tag"),
            cseq: (1, Method::Invite),
            max_forwards: 70,
            top_via: sipp_via("z9hG4bK-4711-1-0"),
            via_count: 1,
            routes: &[],
            record_routes: &[],
            contact: None,
            body_len: 0,
            content_type: None,
        },
    ]
}

#[test]
fn accessors_on_the_corpus() {
    let table = table();
    assert_eq!(table.len(), CORPUS.len(), "every fixture has a row");
    for row in table {
        let Expected {
            name,
            fixture,
            request_uri,
            status,
            reason,
            method,
            call_id,
            from_tag,
            to_tag,
            cseq,
            max_forwards,
            top_via,
            via_count,
            routes,
            record_routes,
            contact,
            body_len,
            content_type,
        } = row;
        let m = parse(fixture);
        assert_eq!(m.is_request(), request_uri.is_some(), "{name}");
        assert_eq!(m.request_uri_str(), request_uri, "{name}");
        assert_eq!(m.request_uri().is_some(), request_uri.is_some(), "{name}");
        assert_eq!(m.status(), status, "{name}");
        assert_eq!(m.reason(), reason, "{name}");
        assert_eq!(m.method(), method, "{name}");
        assert_eq!(m.call_id(), call_id, "{name}");
        assert_eq!(m.from_tag().as_deref(), from_tag, "{name}");
        assert_eq!(m.to_tag().as_deref(), to_tag, "{name}");
        assert_eq!(m.cseq(), cseq, "{name}");
        assert_eq!(m.max_forwards(), max_forwards, "{name}");
        assert_eq!(m.top_via(), top_via, "{name}");
        assert_eq!(m.via_count(), via_count, "{name}");
        assert_eq!(m.routes(), routes, "{name}");
        assert_eq!(m.record_routes(), record_routes, "{name}");
        assert_eq!(m.contact_uri_str(), contact, "{name}");
        assert_eq!(m.contact_uri().is_some(), contact.is_some(), "{name}");
        assert_eq!(m.body().len(), body_len, "{name}");
        assert_eq!(m.content_type().as_deref(), content_type, "{name}");
        assert_eq!(
            m.header("Content-Length"),
            Some(body_len.to_string()),
            "{name}"
        );
    }
}

/// `to_bytes(parse(x))` re-parses to an equal message, and writing is a
/// fixed point from then on.
#[test]
fn round_trip_is_lossless() {
    for (name, fixture) in CORPUS {
        let m = parse(fixture);
        let bytes = m.to_bytes();
        let again = Message::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(again, m, "{name}");
        assert_eq!(again.to_bytes(), bytes, "{name}");
    }
}

/// Fixtures already in canonical form come back byte for byte.
#[test]
fn canonical_messages_are_written_unchanged() {
    for fixture in [
        SIPP_100,
        SIPP_180,
        SIPP_183,
        SIPP_200,
        SIPP_ACK,
        CANCEL,
        OPTIONS,
        REGISTER,
        KAMAILIO_INVITE,
        IPV6,
        SIPP_487,
    ] {
        assert_eq!(text(&parse(fixture).to_bytes()), fixture);
    }
}

#[test]
fn compact_names_are_read_and_written_in_full() {
    let m = parse(COMPACT);
    assert_eq!(m.header("i"), m.header("Call-ID"));
    assert_eq!(m.header("k").as_deref(), Some("100rel, timer"));
    assert_eq!(m.header("supported").as_deref(), Some("100rel, timer"));
    assert_eq!(m.header("s").as_deref(), Some("lunch?"));
    assert_eq!(m.header("f"), m.header("From"));
    assert_eq!(m.header("T"), m.header("to"));
    assert_eq!(
        text(&m.to_bytes()),
        "\
INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcompact1
From: \"Alice\" <sip:alice@atlanta.example.com>;tag=98asjd8
To: <sip:bob@biloxi.example.com>
Call-ID: compact-call-1@192.0.2.10
CSeq: 8 INVITE
Contact: <sip:alice@192.0.2.10:5060>
Supported: 100rel, timer
Subject: lunch?
Content-Type: application/sdp
Content-Length: 89

v=0
o=- 1 1 IN IP4 192.0.2.10
s=-
c=IN IP4 192.0.2.10
t=0 0
m=audio 4000 RTP/AVP 0
"
    );
}

/// Every compact form of §7.3.3 and the extension RFCs the brief lists.
#[test]
fn every_compact_form_maps_to_its_full_name() {
    let pairs = [
        ("v", "Via"),
        ("f", "From"),
        ("t", "To"),
        ("i", "Call-ID"),
        ("m", "Contact"),
        ("l", "Content-Length"),
        ("c", "Content-Type"),
        ("k", "Supported"),
        ("s", "Subject"),
        ("e", "Content-Encoding"),
        ("o", "Event"),
        ("r", "Refer-To"),
        ("b", "Referred-By"),
        ("u", "Allow-Events"),
        ("x", "Session-Expires"),
    ];
    for (compact, full) in pairs {
        assert_eq!(crate::message::names::known(compact), Some(full));
        assert_eq!(
            crate::message::names::known(&compact.to_ascii_uppercase()),
            Some(full)
        );
    }
    let mut m = parse(OPTIONS);
    for (compact, _) in &pairs[4..] {
        if *compact != "l" {
            m.set_header(compact, "x");
        }
    }
    let written = text(&m.to_bytes());
    for (_, full) in &pairs[4..] {
        assert!(
            written.contains(&format!("\n{full}: ")),
            "{full} in\n{written}"
        );
    }
}

#[test]
fn comma_joined_values_are_separate_entries() {
    let m = parse(COMMA_JOINED);
    assert_eq!(
        m.headers("Via"),
        [
            "SIP/2.0/UDP p2.example.com;branch=z9hG4bK1;x=\"a,b\"",
            "SIP/2.0/UDP pc.example.com:5070;branch=z9hG4bK2",
            "SIP/2.0/TCP client.example.com;branch=z9hG4bK3",
        ]
    );
    assert_eq!(
        text(&m.to_bytes()),
        "\
INVITE sip:carol@chicago.example.com SIP/2.0
Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bK1;x=\"a,b\"
Via: SIP/2.0/UDP pc.example.com:5070;branch=z9hG4bK2
Via: SIP/2.0/TCP client.example.com;branch=z9hG4bK3
Route: <sip:p3.example.com;lr>
Route: <sip:x,y@p4.example.com;lr>
Record-Route: <sip:p2.example.com;lr>
Record-Route: \"Proxy, One\" <sip:p1.example.com;lr>
From: <sip:alice@atlanta.example.com>;tag=cj1
To: <sip:carol@chicago.example.com>
Call-ID: comma-joined-1
CSeq: 1 INVITE
Max-Forwards: 50
Content-Length: 0

"
    );
    // Other headers keep their commas: they are opaque.
    let kamailio = parse(KAMAILIO_INVITE);
    assert_eq!(
        kamailio.headers("Allow"),
        ["INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, SUBSCRIBE, NOTIFY, INFO, PUBLISH, MESSAGE"]
    );
    assert_eq!(kamailio.headers("x-carrier-trace"), ["abc=1,def=2"]);
}

#[test]
fn folded_lines_are_unfolded() {
    let m = parse(FOLDED);
    assert_eq!(
        m.header("Subject").as_deref(),
        Some("I know you are there, pick up the phone and talk to me")
    );
    assert_eq!(
        m.header("From").as_deref(),
        Some("Alice <sip:alice@atlanta.example.com> ;tag=fold7")
    );
    assert_eq!(
        m.header("To").as_deref(),
        Some("<sip:bob@biloxi.example.com>")
    );
    assert_eq!(m.header("CSeq").as_deref(), Some("31862 INVITE"));
    assert_eq!(
        m.headers("Via"),
        ["SIP/2.0/UDP pc33.atlanta.example.com; branch=z9hG4bKfold1"]
    );
    assert_eq!(m.header("Max-Forwards").as_deref(), Some("69"));
}

#[test]
fn ipv6_request_uri_contact_and_via() {
    let m = parse(IPV6);
    let uri = m.request_uri().unwrap();
    assert_eq!(
        uri.host_with_port.host,
        rsip::Host::IpAddr("2001:db8::20".parse().unwrap())
    );
    assert_eq!(uri.host_with_port.port, Some(5060.into()));
    assert_eq!(uri.user(), Some("bob"));
    let contact = m.contact_uri().unwrap();
    assert_eq!(
        contact.host_with_port.host,
        rsip::Host::IpAddr("2001:2::1".parse().unwrap())
    );
    assert_eq!(contact.transport(), Some(&rsip::Transport::Udp));
    // rsip writes the transport in upper case, which is equivalent.
    assert_eq!(
        crate::message::format_uri(&contact),
        "sip:alice@[2001:2::1]:5060;transport=UDP"
    );
    assert_eq!(m.top_via().port_or_default(), 5060);
}

#[test]
fn uris_of_route_record_route_and_contact_values() {
    let route = Message::uri_of("<sip:198.18.1.1:5060;lr;ma=t>").unwrap();
    assert_eq!(
        route.host_with_port.host,
        rsip::Host::IpAddr("198.18.1.1".parse().unwrap())
    );
    assert_eq!(route.host_with_port.port, Some(5060.into()));
    assert_eq!(route.params[0], rsip::Param::Lr);
    assert_eq!(
        route.params[1],
        rsip::Param::Other("ma".into(), Some("t".into()))
    );
    let named = Message::uri_of("\"Proxy, One\" <sips:p1.example.com;lr>;foo=bar").unwrap();
    assert_eq!(named.scheme, Some(rsip::Scheme::Sips));
    assert_eq!(named.params, [rsip::Param::Lr]);
    // addr-spec: the parameters belong to the header (§20.10).
    let bare = Message::uri_of("sip:sipp@198.18.98.1:5061;expires=60").unwrap();
    assert!(bare.params.is_empty());
    assert_eq!(
        Message::uri_text_of("Bob <sip:bob@[2001:db8::1]:5070;transport=tcp>;expires=5"),
        Ok("sip:bob@[2001:db8::1]:5070;transport=tcp")
    );
    assert_eq!(
        Message::uri_of("<tel:+15551234>"),
        Err(crate::message::MessageError::UnsupportedUriScheme {
            uri: "tel:+15551234".to_owned()
        })
    );
    assert!(Message::uri_of("<sip:a@b").is_err());
    assert!(Message::uri_of("").is_err());
    assert!(Message::uri_of("*").is_err());
}

#[test]
fn extension_methods_keep_their_token() {
    let m = parse(
        "\
FOO sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKext
From: <sip:alice@example.com>;tag=1
To: <sip:bob@example.com>
Call-ID: ext-1
CSeq: 7 FOO
Content-Length: 0

",
    );
    assert_eq!(m.method(), Method::Other);
    assert_eq!(m.method_name(), "FOO");
    assert_eq!(m.cseq(), (7, Method::Other));
    assert!(text(&m.to_bytes()).starts_with("FOO sip:bob@example.com SIP/2.0\n"));
    let response = m.response(501, "Not Implemented", Some("t1"));
    assert_eq!(response.method(), Method::Other);
    assert_eq!(response.method_name(), "FOO");
    // Method names are case-sensitive (§7.1).
    assert_eq!(Method::from_token("invite"), Method::Other);
    assert_eq!(Method::from_token("PRACK"), Method::Prack);
    assert_eq!(Method::Prack.as_str(), "PRACK");
    assert_eq!(Method::Other.as_str(), "OTHER");
    assert_eq!(Method::Update.to_rsip(), Some(rsip::Method::Update));
    assert_eq!(Method::Other.to_rsip(), None);
}

#[test]
fn lenient_but_valid_forms() {
    // No reason phrase, lower-case version, header name case, white space
    // before the colon, a Max-Forwards of 0, a tel: From.
    let m = parse(
        "\
sip/2.0 200
via : SIP/2.0/udp 192.0.2.1;branch=z9hG4bKx
FROM: <tel:+15551234;phone-context=example.com>;tag=a
to: <sip:b@example.com>;tag=b
call-id: lc-1
cseq: 1 INVITE
max-forwards: 0
x-custom:value
Content-Length: 0

",
    );
    assert_eq!(m.status(), Some(200));
    assert_eq!(m.reason(), Some(""));
    assert_eq!(m.top_via().transport, "UDP");
    assert_eq!(m.max_forwards(), 0);
    assert_eq!(m.from_tag().as_deref(), Some("a"));
    assert_eq!(m.header("X-CUSTOM").as_deref(), Some("value"));
    assert_eq!(
        text(&m.to_bytes()),
        "\
SIP/2.0 200 
Via: SIP/2.0/udp 192.0.2.1;branch=z9hG4bKx
From: <tel:+15551234;phone-context=example.com>;tag=a
To: <sip:b@example.com>;tag=b
Call-ID: lc-1
CSeq: 1 INVITE
Max-Forwards: 0
x-custom: value
Content-Length: 0

"
    );
}

/// A datagram without Content-Length: the body is the rest, and one is
/// added on output.
#[test]
fn body_without_content_length() {
    let m = parse(
        "\
MESSAGE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKm
From: <sip:alice@example.com>;tag=1
To: <sip:bob@example.com>
Call-ID: m-1
CSeq: 1 MESSAGE
Content-Type: text/plain

hello",
    );
    assert_eq!(m.body(), b"hello");
    assert_eq!(m.header("Content-Length").as_deref(), Some("5"));
    assert!(text(&m.to_bytes()).ends_with("Content-Type: text/plain\nContent-Length: 5\n\nhello"));
}

/// rport / received, including their odd spellings.
#[test]
fn via_parameters() {
    let m = parse(KAMAILIO_INVITE);
    let vias: Vec<Via> = m
        .headers("Via")
        .iter()
        .map(|v| crate::message::via::ViaValue::parse(v).unwrap().summary())
        .collect();
    assert_eq!(vias[1].received, Some("198.51.100.30".parse().unwrap()));
    assert_eq!(vias[1].rport, Some(Some(5060)));
    assert_eq!(vias[2].received, Some("198.51.100.77".parse().unwrap()));
    assert_eq!(vias[2].rport, Some(Some(1024)));
    assert!(vias.iter().all(Via::has_rfc3261_branch));

    let odd = crate::message::via::ViaValue::parse(
        "SIP / 2.0 / tls  [2001:DB8::9] : 5061 ; RPORT ; Received = [2001:db8::7] ; branch = \"q,1\"",
    )
    .unwrap()
    .summary();
    assert_eq!(
        odd,
        Via {
            transport: "TLS".to_owned(),
            host: "2001:DB8::9".to_owned(),
            port: Some(5061),
            branch: Some("\"q,1\"".to_owned()),
            received: Some("2001:db8::7".parse().unwrap()),
            rport: Some(None),
        }
    );
    let no_port = Via {
        transport: "TLS".to_owned(),
        ..Via::default()
    };
    assert_eq!(no_port.port_or_default(), 5061);
}
