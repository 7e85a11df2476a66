//! IPv4 ↔ IPv6 bridging: `address family` picks the family of the relay
//! address the answerer is told; the routes then arrive in one family and
//! leave in the other.

use super::{CARRIER, PBX, engine_with, ip, media_endpoint, oa, offer_sdp, sa, sdp_of};
use crate::{
    interfaces::Interface,
    ng::{AddressFamily, Command, Reply},
    session::{Now, Source},
};

const CARRIER_V6: &str = "2001:2:0:1::1";
const PBX_V6: &str = "2001:2:0:2::1";

fn dual(name: &str, v4: &str, v6: &str) -> Interface {
    Interface::plain(name, Some(v4.parse().unwrap()), Some(v6.parse().unwrap()))
}

fn sdp6(addr: &str, port: u16) -> Vec<u8> {
    format!(
        "v=0\r\no=- 1000 1 IN IP6 {addr}\r\ns=-\r\nc=IN IP6 {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n"
    )
    .into_bytes()
}

#[test]
fn address_family_bridges_an_ipv4_carrier_and_an_ipv6_pbx() {
    let mut e = engine_with(
        vec![
            dual("carrier", CARRIER, CARRIER_V6),
            dual("pbx", PBX, PBX_V6),
        ],
        30000,
        30099,
    );
    let now = Now::read();
    let mut o = oa("c", "a", None, offer_sdp("198.18.1.2", 5000));
    o.address_family = Some(AddressFamily::Ip6);
    let to_b = media_endpoint(&sdp_of(&e.handle(Command::Offer(o), now)));
    assert_eq!(to_b.ip(), ip(PBX_V6), "the PBX is told an IPv6 address");
    let to_a = media_endpoint(&sdp_of(&e.handle(
        Command::Answer(oa("c", "a", Some("b"), sdp6("2001:2:0:2::2", 6000))),
        now,
    )));
    assert_eq!(to_a.ip(), ip(CARRIER), "the carrier keeps IPv4");
    let f = &e.backend().routes;
    // Carrier → relay (IPv4) → PBX (IPv6), and back.
    let r = &f[&to_a];
    assert_eq!((r.out, r.dest), (to_b, sa("[2001:2:0:2::2]:6000")));
    assert_eq!(r.source, Source::Learning(Some(sa("198.18.1.2:5000"))));
    let r = &f[&to_b];
    assert_eq!((r.out, r.dest), (to_a, sa("198.18.1.2:5000")));
    assert_eq!(r.source, Source::Learning(Some(sa("[2001:2:0:2::2]:6000"))));
    let rtcp = |s: std::net::SocketAddr| std::net::SocketAddr::new(s.ip(), s.port() + 1);
    assert_eq!(f[&rtcp(to_a)].dest, sa("[2001:2:0:2::2]:6001"));
    assert_eq!(f[&rtcp(to_b)].dest, sa("198.18.1.2:5001"));

    // Without the flag the answerer's side follows the offerer's family.
    let o = oa("d", "a", None, offer_sdp("198.18.1.2", 5000));
    let to_b = media_endpoint(&sdp_of(&e.handle(Command::Offer(o), now)));
    assert_eq!(to_b.ip(), ip(PBX));
}

#[test]
fn address_family_the_interface_lacks_is_an_error() {
    let mut e = engine_with(vec![super::iface("carrier", CARRIER)], 30000, 30099);
    let mut o = oa("c", "a", None, offer_sdp("198.18.1.2", 5000));
    o.address_family = Some(AddressFamily::Ip6);
    assert_eq!(
        e.handle(Command::Offer(o), Now::read()),
        Reply::Error("Interface 'carrier' has no IPv6 address".into())
    );
    assert_eq!(e.call_count(), 0, "a refused first offer leaves nothing");
}
