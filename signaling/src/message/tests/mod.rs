//! Unit tests of the message layer: a corpus of messages shaped like what
//! SIPp, Kamailio, Asterisk and carriers send, the accessors and edits on
//! them, framing, refusals, and robustness against mutated input.
//!
//! Fixtures are written with `\n` line ends for readability; [`wire`]
//! turns them into the CRLF a SIP message has on the wire.

mod corpus;
mod edits;
mod errors;
mod framing;
mod robustness;
mod seeds;
mod syntax;

use super::Message;

/// A fixture with `\n` line ends as wire bytes (CRLF everywhere,
/// body included).
pub(super) fn wire(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n").into_bytes()
}

/// Parses a fixture, failing the test with the error.
pub(super) fn parse(text: &str) -> Message {
    match Message::parse(&wire(text)) {
        Ok(message) => message,
        Err(error) => panic!("fixture does not parse: {error}\n{text}"),
    }
}

/// Wire bytes as text with `\n` line ends, to compare with a fixture.
pub(super) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\n")
}

/// SIPp's uac scenario: INVITE with SDP (Content-Length with extra spaces).
pub(super) const SIPP_INVITE: &str = "\
INVITE sip:service@198.18.98.2:5060 SIP/2.0
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>
Call-ID: 1-4711@198.18.98.1
CSeq: 1 INVITE
Contact: sip:sipp@198.18.98.1:5061
Max-Forwards: 70
Subject: Performance Test
Content-Type: application/sdp
Content-Length:   133

v=0
o=user1 53655765 2353687637 IN IP4 198.18.98.1
s=-
c=IN IP4 198.18.98.1
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
";

pub(super) const SIPP_100: &str = "\
SIP/2.0 100 Trying
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>
Call-ID: 1-4711@198.18.98.1
CSeq: 1 INVITE
Content-Length: 0

";

pub(super) const SIPP_180: &str = "\
SIP/2.0 180 Ringing
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0;received=203.0.113.9;rport=40112
Record-Route: <sip:198.18.1.1:5060;lr;ma=t>
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>;tag=1102SIPpTag012
Call-ID: 1-4711@198.18.98.1
CSeq: 1 INVITE
Contact: <sip:198.18.98.2:5060;transport=UDP>
Content-Length: 0

";

pub(super) const SIPP_183: &str = "\
SIP/2.0 183 Session Progress
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>;tag=1102SIPpTag012
Call-ID: 1-4711@198.18.98.1
CSeq: 1 INVITE
Contact: <sip:198.18.98.2:5060;transport=UDP>
Content-Type: application/sdp
Content-Length: 133

v=0
o=user1 53655765 2353687637 IN IP4 198.18.98.2
s=-
c=IN IP4 198.18.98.2
t=0 0
m=audio 6002 RTP/AVP 0
a=rtpmap:0 PCMU/8000
";

pub(super) const SIPP_200: &str = "\
SIP/2.0 200 OK
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0
Record-Route: <sip:198.18.1.1:5060;lr;ma=t>
Record-Route: <sip:proxy.example.net;lr>
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>;tag=1102SIPpTag012
Call-ID: 1-4711@198.18.98.1
CSeq: 1 INVITE
Contact: <sip:198.18.98.2:5060;transport=UDP>
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE
Supported: replaces, timer
Content-Type: application/sdp
Content-Length: 133

v=0
o=user1 53655765 2353687637 IN IP4 198.18.98.2
s=-
c=IN IP4 198.18.98.2
t=0 0
m=audio 6002 RTP/AVP 0
a=rtpmap:0 PCMU/8000
";

pub(super) const SIPP_ACK: &str = "\
ACK sip:198.18.98.2:5060;transport=UDP SIP/2.0
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-5
Route: <sip:proxy.example.net;lr>
Route: <sip:198.18.1.1:5060;lr;ma=t>
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>;tag=1102SIPpTag012
Call-ID: 1-4711@198.18.98.1
CSeq: 1 ACK
Contact: sip:sipp@198.18.98.1:5061
Max-Forwards: 70
Subject: Performance Test
Content-Length: 0

";

pub(super) const SIPP_BYE: &str = "\
BYE sip:198.18.98.2:5060;transport=UDP SIP/2.0
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-7
Route: <sip:proxy.example.net;lr>, <sip:198.18.1.1:5060;lr;ma=t>
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>;tag=1102SIPpTag012
Call-ID: 1-4711@198.18.98.1
CSeq: 2 BYE
Contact: sip:sipp@198.18.98.1:5061
Max-Forwards: 70
Subject: Performance Test
Content-Length: 0

";

pub(super) const CANCEL: &str = "\
CANCEL sip:service@198.18.98.2:5060 SIP/2.0
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>
Call-ID: 1-4711@198.18.98.1
CSeq: 1 CANCEL
Max-Forwards: 70
Content-Length: 0

";

/// OPTIONS keepalive as trunks send it: no Max-Forwards, no Contact.
pub(super) const OPTIONS: &str = "\
OPTIONS sip:198.18.1.1 SIP/2.0
Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK.opt-91;rport
From: <sip:ping@carrier.example>;tag=opt-1
To: <sip:198.18.1.1>
Call-ID: 5c2f1e@203.0.113.5
CSeq: 101 OPTIONS
Accept: application/sdp
Content-Length: 0

";

/// A REGISTER with an instance id (a quoted `<...>` in a Contact
/// parameter) and a comma-laden Authorization.
pub(super) const REGISTER: &str = "\
REGISTER sip:registrar.example.com SIP/2.0
Via: SIP/2.0/TCP 192.0.2.4:54321;branch=z9hG4bKnashds7;alias
Max-Forwards: 70
From: Bob <sip:bob@example.com>;tag=a73kszlfl
To: Bob <sip:bob@example.com>
Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.4
CSeq: 2 REGISTER
Contact: <sip:bob@192.0.2.4:54321;transport=tcp;ob>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\";reg-id=1;expires=3600
Authorization: Digest username=\"bob\", realm=\"example.com\", nonce=\"ea9c8e88df84f1cec4341ae6cbe5a359\", uri=\"sip:registrar.example.com\", response=\"dfe56131d1958046689d83306477ecc\"
Expires: 3600
Content-Length: 0

";

/// Through Kamailio towards Asterisk: three Vias (NAT-fixed
/// `received`/`rport`), Record-Routes with Kamailio's `ftag`/`did`, a Route
/// to us, P-Asserted-Identity, Asterisk's Allow/Supported.
pub(super) const KAMAILIO_INVITE: &str = "\
INVITE sip:+15551230000@pbx.example.net:5060;user=phone SIP/2.0
Record-Route: <sip:198.18.99.5;lr;ftag=as5f2e7c1d;did=0d1.a2c3>
Record-Route: <sip:203.0.113.20;r2=on;lr;ftag=as5f2e7c1d;did=0d1.a2c3>
Via: SIP/2.0/UDP 198.18.99.5;branch=z9hG4bKcb5e.9f3b3a1b2c0d0e0f0a1b2c3d4e5f6a7b.0
Via: SIP/2.0/UDP 198.51.100.30:5060;received=198.51.100.30;rport=5060;branch=z9hG4bK7a1c2f45
Via: SIP/2.0/UDP 198.18.98.20:5060;rport=1024;received=198.51.100.77;branch=z9hG4bK2e3f4a5b
Route: <sip:198.18.1.1:5060;lr;ma=t>
Max-Forwards: 68
From: \"Carrier Caller\" <sip:+15557654321@carrier.example;user=phone>;tag=as5f2e7c1d
To: <sip:+15551230000@pbx.example.net;user=phone>
Contact: <sip:+15557654321@198.51.100.30:5060>
Call-ID: 3c26700d3e1b4f7a9b5e@198.51.100.30
CSeq: 102 INVITE
P-Asserted-Identity: \"Carrier Caller\" <sip:+15557654321@carrier.example;user=phone>
User-Agent: Asterisk PBX 20.5.0
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, SUBSCRIBE, NOTIFY, INFO, PUBLISH, MESSAGE
Supported: replaces, timer
X-Carrier-Trace: abc=1,def=2
Content-Type: application/sdp
Content-Length: 218

v=0
o=- 1933764023 1933764023 IN IP4 198.51.100.30
s=Asterisk
c=IN IP4 198.51.100.30
t=0 0
m=audio 18904 RTP/AVP 8 0 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=sendrecv
";

/// Compact header names throughout (RFC 3261 §7.3.3).
pub(super) const COMPACT: &str = "\
INVITE sip:bob@biloxi.example.com SIP/2.0
v: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcompact1
f: \"Alice\" <sip:alice@atlanta.example.com>;tag=98asjd8
t: <sip:bob@biloxi.example.com>
i: compact-call-1@192.0.2.10
CSeq: 8 INVITE
m: <sip:alice@192.0.2.10:5060>
k: 100rel, timer
s: lunch?
c: application/sdp
l: 89

v=0
o=- 1 1 IN IP4 192.0.2.10
s=-
c=IN IP4 192.0.2.10
t=0 0
m=audio 4000 RTP/AVP 0
";

/// Via, Route and Record-Route values joined by commas on one line, a
/// comma inside a quoted Via parameter and inside `<...>`.
pub(super) const COMMA_JOINED: &str = "\
INVITE sip:carol@chicago.example.com SIP/2.0
Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bK1;x=\"a,b\", SIP/2.0/UDP pc.example.com:5070;branch=z9hG4bK2
Via: SIP/2.0/TCP client.example.com;branch=z9hG4bK3
Route: <sip:p3.example.com;lr>,<sip:x,y@p4.example.com;lr>
Record-Route: <sip:p2.example.com;lr>, \"Proxy, One\" <sip:p1.example.com;lr>
From: <sip:alice@atlanta.example.com>;tag=cj1
To: <sip:carol@chicago.example.com>
Call-ID: comma-joined-1
CSeq: 1 INVITE
Max-Forwards: 50
Content-Length: 0

";

/// Folded header lines (continuation lines start with SP or HTAB).
pub(super) const FOLDED: &str = "\
INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP pc33.atlanta.example.com;
 branch=z9hG4bKfold1
Subject: I know you are there,
    pick up the phone
\tand talk to me
From: Alice
 <sip:alice@atlanta.example.com>
  ;tag=fold7
To:
 <sip:bob@biloxi.example.com>
Call-ID: fold-1@pc33.atlanta.example.com
CSeq:
 31862
 INVITE
Max-Forwards:  69
Content-Length: 0

";

/// IPv6 everywhere; `;rport` without a value.
pub(super) const IPV6: &str = "\
INVITE sip:bob@[2001:db8::20]:5060 SIP/2.0
Via: SIP/2.0/UDP [2001:2::1]:5060;branch=z9hG4bKv6a;rport
From: <sip:alice@[2001:2::1]>;tag=v6a
To: <sip:bob@[2001:db8::20]>
Call-ID: v6call@2001:2::1
CSeq: 1 INVITE
Contact: <sip:alice@[2001:2::1]:5060;transport=udp>
Max-Forwards: 69
Content-Length: 0

";

/// A 487 for the SIPp INVITE, as the ACK builder receives it.
pub(super) const SIPP_487: &str = "\
SIP/2.0 487 Request Terminated
Via: SIP/2.0/UDP 198.18.98.1:5061;branch=z9hG4bK-4711-1-0
From: sipp <sip:sipp@198.18.98.1:5061>;tag=4711SIPpTag001
To: service <sip:service@198.18.98.2:5060>;tag=487tag
Call-ID: 1-4711@198.18.98.1
CSeq: 1 INVITE
Content-Length: 0

";

/// Every fixture, for the tests that run over the whole corpus.
pub(super) const CORPUS: &[(&str, &str)] = &[
    ("sipp_invite", SIPP_INVITE),
    ("sipp_100", SIPP_100),
    ("sipp_180", SIPP_180),
    ("sipp_183", SIPP_183),
    ("sipp_200", SIPP_200),
    ("sipp_ack", SIPP_ACK),
    ("sipp_bye", SIPP_BYE),
    ("cancel", CANCEL),
    ("options", OPTIONS),
    ("register", REGISTER),
    ("kamailio_invite", KAMAILIO_INVITE),
    ("compact", COMPACT),
    ("comma_joined", COMMA_JOINED),
    ("folded", FOLDED),
    ("ipv6", IPV6),
    ("sipp_487", SIPP_487),
];

/// The fixtures' Content-Length values are their bodies' lengths, so the
/// corpus really is what user agents send.
#[test]
fn fixtures_declare_their_body_length() {
    for (name, fixture) in CORPUS {
        let bytes = wire(fixture);
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared = head
            .split("\r\n")
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                ["content-length", "l"]
                    .contains(&name.trim().to_ascii_lowercase().as_str())
                    .then(|| value.trim().parse::<usize>().unwrap())
            })
            .unwrap();
        assert_eq!(declared, body.len(), "{name}");
    }
}
