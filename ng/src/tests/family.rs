//! `address family` (IPv4 ↔ IPv6 bridging).

use super::*;

#[test]
fn address_family_is_ip4_or_ip6() {
    for (text, family) in [
        ("IP6", AddressFamily::Ip6),
        ("ip4", AddressFamily::Ip4),
        ("IP4", AddressFamily::Ip4),
    ] {
        let mut offer = minimal("offer");
        offer.retain(|(key, _)| *key != "to-tag");
        offer.push(("address family", text.into()));
        assert_eq!(
            parse(&datagram(&offer)),
            Ok(Command::Offer(OfferAnswer {
                address_family: Some(family),
                ..offer_answer(None)
            }))
        );
    }
    let mut offer = minimal("offer");
    offer.push(("address-family", "IP5".into()));
    assert_eq!(
        parse(&datagram(&offer)),
        Err(NgError::WrongType {
            key: "address-family",
            expected: "\"IP4\" or \"IP6\"",
        })
    );
}
