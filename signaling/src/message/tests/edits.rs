//! Proxy edits and built messages, compared byte for byte with the text
//! they must produce.

use std::net::IpAddr;

use super::*;
use crate::message::{MessageError, Method};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Asserts the message's bytes, and that they parse back to it.
#[track_caller]
fn assert_bytes(message: &Message, expected: &str) {
    assert_eq!(text(&message.to_bytes()), expected);
    assert_eq!(&Message::parse(&message.to_bytes()).unwrap(), message);
}

/// What the proxy does to an INVITE it forwards (§16.6).
#[test]
fn forwarding_an_invite() {
    let mut m = parse(SIPP_INVITE);
    // Sent-by is the source and there is no rport: nothing to add (§18.2.1).
    m.set_top_via_received(ip("198.18.98.1"), 5061);
    m.set_request_uri("sip:service@198.18.99.2:5060").unwrap();
    m.set_max_forwards(m.max_forwards() - 1);
    m.prepend_record_route("<sip:198.18.1.1:5060;lr;ma=t>");
    m.push_via("SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bKproxy1");
    assert_eq!(
        m.request_uri().unwrap().host_with_port.host,
        rsip::Host::IpAddr(ip("198.18.99.2"))
    );
    assert_eq!(m.via_count(), 2);
    assert_eq!(m.top_via().branch.as_deref(), Some("z9hG4bKproxy1"));
    assert_bytes(
        &m,
        "\
INVITE sip:service@198.18.99.2:5060 SIP/2.0
Via: SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bKproxy1
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0
Record-Route: <sip:198.18.1.1:5060;lr;ma=t>
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>
Call-ID: 1-4711@198.18.98.1
CSeq: 1 INVITE
Contact: sip:sipp@198.18.98.1:5061
Max-Forwards: 69
Subject: Performance Test
Content-Type: application/sdp
Content-Length: 133

v=0
o=user1 53655765 2353687637 IN IP4 198.18.98.1
s=-
c=IN IP4 198.18.98.1
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
",
    );
}

/// A second Record-Route goes before the existing ones; Max-Forwards is
/// added when absent.
#[test]
fn record_route_before_existing_and_new_max_forwards() {
    let mut m = parse(KAMAILIO_INVITE);
    m.prepend_record_route("<sip:198.18.1.1;lr>");
    assert_eq!(m.record_routes()[0], "<sip:198.18.1.1;lr>");
    assert_eq!(m.record_routes().len(), 3);
    let mut o = parse(OPTIONS);
    o.set_max_forwards(69);
    assert_bytes(
        &o,
        "\
OPTIONS sip:198.18.1.1 SIP/2.0
Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK.opt-91;rport
From: <sip:ping@carrier.example>;tag=opt-1
To: <sip:198.18.1.1>
Call-ID: 5c2f1e@203.0.113.5
CSeq: 101 OPTIONS
Accept: application/sdp
Max-Forwards: 69
Content-Length: 0

",
    );
}

#[test]
fn received_and_rport() {
    // RFC 3581 §4's example: rport asked, received goes before it.
    let mut m = parse(OPTIONS);
    m.set_header(
        "Via",
        "SIP/2.0/UDP 198.18.99.11:4540;rport;branch=z9hG4bKkjshdyff",
    );
    m.set_top_via_received(ip("192.0.2.1"), 9988);
    assert_eq!(
        m.headers("Via"),
        ["SIP/2.0/UDP 198.18.99.11:4540;received=192.0.2.1;rport=9988;branch=z9hG4bKkjshdyff"]
    );
    let via = m.top_via();
    assert_eq!(via.received, Some(ip("192.0.2.1")));
    assert_eq!(via.rport, Some(Some(9988)));

    // rport asked from the very address in sent-by: still filled in (RFC 3581 §4).
    let mut m = parse(OPTIONS);
    m.set_top_via_received(ip("203.0.113.5"), 5060);
    assert_eq!(
        m.headers("Via"),
        ["SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK.opt-91;received=203.0.113.5;rport=5060"]
    );

    // No rport, another address: received appended, no rport (§18.2.1).
    let mut m = parse(SIPP_INVITE);
    m.set_top_via_received(ip("203.0.113.9"), 40112);
    assert_eq!(
        m.headers("Via"),
        ["SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0;received=203.0.113.9"]
    );

    // A host name always gets received; an existing received is replaced.
    let mut m = parse(REGISTER);
    m.set_top_via_received(ip("192.0.2.4"), 54321);
    assert_eq!(
        m.headers("Via"),
        ["SIP/2.0/TCP 192.0.2.4:54321;branch=z9hG4bKnashds7;alias"],
        "IP sent-by equal to the source, no rport"
    );
    let mut m = parse(SIPP_180);
    m.set_top_via_received(ip("203.0.113.10"), 40113);
    assert_eq!(
        m.headers("Via"),
        ["SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0;received=203.0.113.10;rport=40113"]
    );
    let mut m = parse(FOLDED);
    m.set_top_via_received(ip("192.0.2.99"), 5060);
    assert_eq!(
        m.headers("Via"),
        ["SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKfold1;received=192.0.2.99"]
    );

    // IPv6, with rport; an IPv4-mapped source is written as IPv4.
    let mut m = parse(IPV6);
    m.set_top_via_received(ip("2001:db8::77"), 40000);
    assert_eq!(
        m.headers("Via"),
        ["SIP/2.0/UDP [2001:2::1]:5060;branch=z9hG4bKv6a;received=2001:db8::77;rport=40000"]
    );
    assert_eq!(m.top_via().received, Some(ip("2001:db8::77")));
    let mut m = parse(SIPP_INVITE);
    m.set_top_via_received(ip("::ffff:198.18.98.1"), 5061);
    assert_eq!(
        m.headers("Via"),
        ["SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0"]
    );
}

/// A response on its way back (§16.7): our Via, comma-joined with the
/// next one, comes off alone.
#[test]
fn pop_via_from_a_comma_joined_line() {
    let mut m = parse(
        "\
SIP/2.0 200 OK
Via: SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bKproxy1, SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0;received=203.0.113.9
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>;tag=1102SIPpTag012
Call-ID: 1-4711@198.18.98.1
CSeq: 1 INVITE
Content-Length: 0

",
    );
    assert_eq!(
        m.pop_via().as_deref(),
        Some("SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bKproxy1")
    );
    assert_eq!(m.top_via().received, Some(ip("203.0.113.9")));
    assert_bytes(
        &m,
        "\
SIP/2.0 200 OK
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0;received=203.0.113.9
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>;tag=1102SIPpTag012
Call-ID: 1-4711@198.18.98.1
CSeq: 1 INVITE
Content-Length: 0

",
    );
    assert!(m.pop_via().is_some());
    assert_eq!(m.pop_via(), None);
    assert_eq!(m.via_count(), 0);
    assert_eq!(m.try_top_via(), None);
    assert_eq!(m.top_via(), crate::message::Via::default());
    // Pushing several at once keeps their order.
    m.push_via(
        "SIP/2.0/UDP a.example.com;branch=z9hG4bKa, SIP/2.0/UDP b.example.com;branch=z9hG4bKb",
    );
    assert_eq!(m.via_count(), 2);
    assert_eq!(m.top_via().host, "a.example.com");
}

/// Loose routing (§16.4): our Route, comma-joined with the next, comes off.
#[test]
fn pop_route_from_a_comma_joined_line() {
    let mut m = parse(SIPP_BYE);
    assert_eq!(m.pop_route().as_deref(), Some("<sip:proxy.example.net;lr>"));
    assert_bytes(
        &m,
        "\
BYE sip:198.18.98.2:5060;transport=UDP SIP/2.0
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-7
Route: <sip:198.18.1.1:5060;lr;ma=t>
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>;tag=1102SIPpTag012
Call-ID: 1-4711@198.18.98.1
CSeq: 2 BYE
Contact: sip:sipp@198.18.98.1:5061
Max-Forwards: 70
Subject: Performance Test
Content-Length: 0

",
    );
    assert_eq!(
        m.pop_route().as_deref(),
        Some("<sip:198.18.1.1:5060;lr;ma=t>")
    );
    assert_eq!(m.pop_route(), None);
    assert!(m.routes().is_empty());
}

#[test]
fn set_request_uri() {
    let mut m = parse(SIPP_ACK);
    m.set_request_uri(" sip:bob@[2001:db8::5]:5062;transport=tcp ")
        .unwrap();
    assert_eq!(
        m.request_uri_str(),
        Some("sip:bob@[2001:db8::5]:5062;transport=tcp")
    );
    assert!(
        text(&m.to_bytes()).starts_with("ACK sip:bob@[2001:db8::5]:5062;transport=tcp SIP/2.0\n")
    );
    assert_eq!(
        m.set_request_uri("tel:+1555"),
        Err(MessageError::UnsupportedUriScheme {
            uri: "tel:+1555".to_owned()
        })
    );
    assert_eq!(
        m.set_request_uri("sip:a@b\r\nX-Injected: 1"),
        Err(MessageError::BadUri {
            uri: "sip:a@b\r\nX-Injected: 1".to_owned(),
            problem: "white space, control byte or one of `<>\"` in the URI"
        })
    );
    assert_eq!(
        m.request_uri_str(),
        Some("sip:bob@[2001:db8::5]:5062;transport=tcp")
    );
    let mut response = parse(SIPP_200);
    assert_eq!(
        response.set_request_uri("sip:a@b"),
        Err(MessageError::NotARequest)
    );
}

#[test]
fn set_body_updates_content_length_and_type() {
    let mut m = parse(SIPP_BYE);
    m.set_body(b"v=0\r\n".to_vec(), Some("application/sdp"));
    assert_bytes(
        &m,
        "\
BYE sip:198.18.98.2:5060;transport=UDP SIP/2.0
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-7
Route: <sip:proxy.example.net;lr>
Route: <sip:198.18.1.1:5060;lr;ma=t>
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>;tag=1102SIPpTag012
Call-ID: 1-4711@198.18.98.1
CSeq: 2 BYE
Contact: sip:sipp@198.18.98.1:5061
Max-Forwards: 70
Subject: Performance Test
Content-Type: application/sdp
Content-Length: 5

v=0
",
    );
    // A new body keeps the type when none is given.
    m.set_body(b"v=0\r\ns=-\r\n".to_vec(), None);
    assert_eq!(m.header("Content-Length").as_deref(), Some("10"));
    assert_eq!(m.content_type().as_deref(), Some("application/sdp"));
    // An empty body without a type drops Content-Type.
    m.set_body(Vec::new(), None);
    assert_eq!(m.content_type(), None);
    assert_bytes(&m, &text(&parse(SIPP_BYE).to_bytes()));

    // The anchored SDP replacing the caller's, in place.
    let mut invite = parse(SIPP_INVITE);
    invite.set_body(
        b"v=0\r\nc=IN IP4 198.18.1.1\r\n".to_vec(),
        Some("application/sdp"),
    );
    let written = text(&invite.to_bytes());
    assert!(
        written.ends_with(
            "Subject: Performance Test\nContent-Type: application/sdp\nContent-Length: 26\n\n\
             v=0\nc=IN IP4 198.18.1.1\n"
        ),
        "{written}"
    );
}

#[test]
fn headers_set_and_removed() {
    let mut m = parse(SIPP_INVITE);
    m.set_header("s", "Changed");
    m.set_header("X-Media-Relay", "anchored");
    m.set_header("User-Agent", "media-relay\r\nX-Injected: yes");
    m.remove_header("contact");
    m.remove_header("m");
    m.set_header("Content-Length", "999");
    m.remove_header("l");
    m.set_header("Bad Name", "x");
    assert_eq!(m.header("Subject").as_deref(), Some("Changed"));
    assert_eq!(m.header("X-Injected"), None);
    assert_bytes(
        &m,
        "\
INVITE sip:service@198.18.98.2:5060 SIP/2.0
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>
Call-ID: 1-4711@198.18.98.1
CSeq: 1 INVITE
Max-Forwards: 70
Subject: Changed
Content-Type: application/sdp
X-Media-Relay: anchored
User-Agent: media-relay  X-Injected: yes
Content-Length: 133

v=0
o=user1 53655765 2353687637 IN IP4 198.18.98.1
s=-
c=IN IP4 198.18.98.1
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
",
    );
    // Replacing a repeated header keeps the first one's place.
    let mut k = parse(KAMAILIO_INVITE);
    k.set_header(
        "record-route",
        "<sip:a.example.com;lr>, <sip:b.example.com;lr>",
    );
    assert_eq!(
        k.record_routes(),
        ["<sip:a.example.com;lr>", "<sip:b.example.com;lr>"]
    );
    assert!(text(&k.to_bytes()).starts_with(
        "INVITE sip:+15551230000@pbx.example.net:5060;user=phone SIP/2.0\n\
         Record-Route: <sip:a.example.com;lr>\n\
         Record-Route: <sip:b.example.com;lr>\n\
         Via: "
    ));
}

#[test]
fn set_to_tag() {
    let mut m = parse(SIPP_INVITE);
    m.set_to_tag("as1f");
    assert_eq!(
        m.header("To").as_deref(),
        Some("service <sip:service@198.18.98.2:5060>;tag=as1f")
    );
    m.set_to_tag("second");
    assert_eq!(
        m.header("To").as_deref(),
        Some("service <sip:service@198.18.98.2:5060>;tag=second")
    );
    // Other parameters stay in order; an addr-spec works too.
    let mut m = parse(SIPP_INVITE);
    m.set_header("To", "sip:service@198.18.98.2 ; foo=1 ;TAG=old;bar");
    m.set_to_tag("new");
    assert_eq!(
        m.header("To").as_deref(),
        Some("sip:service@198.18.98.2;foo=1;TAG=new;bar")
    );
    assert_eq!(m.to_tag().as_deref(), Some("new"));
    // Not a token: ignored.
    m.set_to_tag("a b");
    m.set_to_tag("");
    assert_eq!(m.to_tag().as_deref(), Some("new"));
}

#[test]
fn responses() {
    let invite = parse(KAMAILIO_INVITE);
    assert_bytes(
        &invite.response(180, "Ringing", Some("relay-1")),
        "\
SIP/2.0 180 Ringing
Via: SIP/2.0/UDP 198.18.99.5;branch=z9hG4bKcb5e.9f3b3a1b2c0d0e0f0a1b2c3d4e5f6a7b.0
Via: SIP/2.0/UDP 198.51.100.30:5060;received=198.51.100.30;rport=5060;branch=z9hG4bK7a1c2f45
Via: SIP/2.0/UDP 198.18.98.20:5060;rport=1024;received=198.51.100.77;branch=z9hG4bK2e3f4a5b
From: \"Carrier Caller\" <sip:+15557654321@carrier.example;user=phone>;tag=as5f2e7c1d
To: <sip:+15551230000@pbx.example.net;user=phone>;tag=relay-1
Call-ID: 3c26700d3e1b4f7a9b5e@198.51.100.30
CSeq: 102 INVITE
Content-Length: 0

",
    );
    // 100 Trying: no tag, Timestamp copied (§8.2.6.1).
    let mut with_timestamp = parse(SIPP_INVITE);
    with_timestamp.set_header("Timestamp", "54");
    assert_bytes(
        &with_timestamp.response(100, "Trying", None),
        "\
SIP/2.0 100 Trying
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>
Call-ID: 1-4711@198.18.98.1
CSeq: 1 INVITE
Timestamp: 54
Content-Length: 0

",
    );
    // An existing To tag wins; the reason is sanitized.
    let bye = parse(SIPP_BYE);
    let ok = bye.response(200, "OK\r\nX: y", Some("ignored"));
    assert_eq!(ok.to_tag().as_deref(), Some("1102SIPpTag012"));
    assert_eq!(ok.reason(), Some("OK  X: y"));
    assert_eq!(ok.method(), Method::Bye);
}

#[test]
fn cancel_for_an_invite() {
    let mut invite = parse(SIPP_INVITE);
    invite.push_via("SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bKproxy1");
    invite.set_header("Route", "<sip:198.18.99.2;lr>, <sip:198.18.99.3;lr>");
    let cancel = invite.cancel();
    assert_eq!(cancel.method(), Method::Cancel);
    assert_bytes(
        &cancel,
        "\
CANCEL sip:service@198.18.98.2:5060 SIP/2.0
Via: SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bKproxy1
Route: <sip:198.18.99.2;lr>
Route: <sip:198.18.99.3;lr>
Max-Forwards: 70
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>
Call-ID: 1-4711@198.18.98.1
CSeq: 1 CANCEL
Content-Length: 0

",
    );
    // On a response (a caller bug): a copy, no panic.
    let response = parse(SIPP_200);
    assert_eq!(response.cancel(), response);
}

#[test]
fn ack_for_a_non_2xx_response() {
    let invite = parse(KAMAILIO_INVITE);
    let mut busy = invite.response(486, "Busy Here", Some("pbx-9"));
    busy.pop_via();
    let ack = invite.ack_for(&busy);
    assert_eq!(ack.method(), Method::Ack);
    assert_eq!(ack.cseq(), (102, Method::Ack));
    assert_bytes(
        &ack,
        "\
ACK sip:+15551230000@pbx.example.net:5060;user=phone SIP/2.0
Via: SIP/2.0/UDP 198.18.99.5;branch=z9hG4bKcb5e.9f3b3a1b2c0d0e0f0a1b2c3d4e5f6a7b.0
Route: <sip:198.18.1.1:5060;lr;ma=t>
Max-Forwards: 70
From: \"Carrier Caller\" <sip:+15557654321@carrier.example;user=phone>;tag=as5f2e7c1d
To: <sip:+15551230000@pbx.example.net;user=phone>;tag=pbx-9
Call-ID: 3c26700d3e1b4f7a9b5e@198.51.100.30
CSeq: 102 ACK
Content-Length: 0

",
    );
    let sipp = parse(SIPP_INVITE);
    let ack = sipp.ack_for(&parse(SIPP_487));
    assert_eq!(ack.to_tag().as_deref(), Some("487tag"));
    assert_eq!(ack.request_uri_str(), Some("sip:service@198.18.98.2:5060"));
}

/// The proxy's own BYE when media times out.
#[test]
fn request_from_scratch() {
    let bye = Message::request(
        Method::Bye,
        "sip:198.18.98.2:5060;transport=UDP",
        &[
            ("Via", "SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bKrelaybye1"),
            ("Route", "<sip:proxy.example.net;lr>"),
            ("Max-Forwards", "70"),
            (
                "f",
                "service <sip:service@198.18.98.2:5060>;tag=1102SIPpTag012",
            ),
            ("t", "sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001"),
            ("i", "1-4711@198.18.98.1"),
            ("CSeq", "3 BYE"),
            ("Reason", "Q.850;cause=102;text=\"media timeout\""),
            ("Content-Length", "42"),
        ],
    )
    .unwrap();
    assert_bytes(
        &bye,
        "\
BYE sip:198.18.98.2:5060;transport=UDP SIP/2.0
Via: SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bKrelaybye1
Route: <sip:proxy.example.net;lr>
Max-Forwards: 70
From: service <sip:service@198.18.98.2:5060>;tag=1102SIPpTag012
To: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
Call-ID: 1-4711@198.18.98.1
CSeq: 3 BYE
Reason: Q.850;cause=102;text=\"media timeout\"
Content-Length: 0

",
    );
    assert_eq!(
        Message::request(
            Method::Bye,
            "sip:a@b",
            &[("Via", "SIP/2.0/UDP x;branch=z9hG4bK1")]
        ),
        Err(MessageError::MissingHeader { name: "To" })
    );
    assert_eq!(
        Message::request(Method::Other, "sip:a@b", &[]),
        Err(MessageError::UnnamedMethod)
    );
    assert_eq!(
        Message::request(Method::Bye, "sip:a@b", &[("Bad:Name", "x")]),
        Err(MessageError::BadHeaderName {
            name: "Bad:Name".to_owned()
        })
    );
    let headers = [
        ("Via", "SIP/2.0/UDP x;branch=z9hG4bK1"),
        ("From", "<sip:a@b>;tag=1"),
        ("To", "<sip:c@d>"),
        ("Call-ID", "x"),
        ("CSeq", "1 INVITE"),
    ];
    assert_eq!(
        Message::request(Method::Bye, "sip:a@b", &headers),
        Err(MessageError::CSeqMethodMismatch {
            method: "BYE".to_owned(),
            cseq_method: "INVITE".to_owned()
        })
    );
    assert!(matches!(
        Message::request(Method::Bye, "sip:a@b SIP/2.0\r\nX: y", &headers),
        Err(MessageError::BadUri { .. })
    ));
}

/// §18.3: a request whose body is short gets a 400, addressed from its
/// intact headers; a version problem a 505.
#[test]
fn rejections() {
    let mut short = wire(SIPP_INVITE);
    short.truncate(short.len() - 10);
    let error = crate::message::datagram(&short, crate::message::MAX_MESSAGE).unwrap_err();
    assert_eq!(
        error,
        MessageError::BodyShorterThanContentLength {
            content_length: 133,
            body: 123
        }
    );
    let rejection = Message::rejection(&short, &error, Some("rej1")).unwrap();
    assert_bytes(
        &rejection,
        "\
SIP/2.0 400 Bad Request
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>;tag=rej1
Call-ID: 1-4711@198.18.98.1
CSeq: 1 INVITE
Content-Length: 0

",
    );
    let v3 = SIPP_INVITE.replacen("SIP/2.0\n", "SIP/3.0\n", 1);
    let error = Message::parse(&wire(&v3)).unwrap_err();
    assert_eq!(
        error,
        MessageError::BadVersion {
            version: "SIP/3.0".to_owned()
        }
    );
    let rejection = Message::rejection(&wire(&v3), &error, None).unwrap();
    assert_eq!(rejection.status(), Some(505));
    assert_eq!(rejection.reason(), Some("Version Not Supported"));
    assert_eq!(rejection.via_count(), 1);
    // Comma-joined Vias are all copied.
    let joined = COMMA_JOINED.replace("Call-ID: comma-joined-1\n", "");
    let error = Message::parse(&wire(&joined)).unwrap_err();
    assert_eq!(error, MessageError::MissingHeader { name: "Call-ID" });
    assert_eq!(Message::rejection(&wire(&joined), &error, None), None);
    let tel = COMMA_JOINED.replacen("sip:carol@chicago.example.com", "tel:+1555", 1);
    let error = Message::parse(&wire(&tel)).unwrap_err();
    let rejection = Message::rejection(&wire(&tel), &error, None).unwrap();
    assert_eq!(rejection.status(), Some(416));
    assert_eq!(rejection.via_count(), 3);
    // Never for an ACK, a response, or garbage.
    let error = MessageError::Truncated;
    assert_eq!(Message::rejection(&wire(SIPP_ACK), &error, None), None);
    assert_eq!(Message::rejection(&wire(SIPP_200), &error, None), None);
    assert_eq!(
        Message::rejection(b"\x16\x03\x01\x02\x00", &error, None),
        None
    );
    assert_eq!(Message::rejection(b"", &error, None), None);
}
