//! The grammar helpers, and agreement with rsip where rsip is right.

use crate::message::{
    MessageError,
    syntax::{GenericParam, format_uri, parse_name_addr, parse_params, parse_sip_uri, split_list},
    via::ViaValue,
};

/// Where rsip 0.4's own tokenizer gets a URI right, we produce the very
/// same `rsip::Uri`.
#[test]
fn uris_agree_with_rsip_where_rsip_is_right() {
    for text in [
        "sip:alice@example.com",
        "sip:+15551234567@198.18.99.1:5060;user=phone",
        "sip:alice:secret@host",
        "sips:bob@biloxi.example.com;maddr=1.2.3.4",
        "sip:198.18.1.1:5060;lr;ma=t",
        "sip:service@198.18.98.2:5060",
        "sip:198.18.98.2:5060;transport=UDP",
        "sip:p.example.com;lr;ftag=as5f2e7c1d;did=0d1.a2c3",
        "sip:a@b;lr=on",
        "SIP:alice@example.com;TRANSPORT=tcp",
    ] {
        let ours = parse_sip_uri(text).unwrap();
        let theirs = rsip::Uri::try_from(text).unwrap();
        assert_eq!(ours, theirs, "{text}");
    }
}

/// Where rsip 0.4 is wrong, we are not.
#[test]
fn uris_rsip_gets_wrong() {
    let dotted = parse_sip_uri("sip:first.last@example.com").unwrap();
    assert_eq!(dotted.user(), Some("first.last"));
    assert_eq!(
        dotted.host_with_port.host,
        rsip::Host::Domain("example.com".into())
    );

    let v6 = parse_sip_uri("sip:[2001:db8::1]:5062;transport=tcp").unwrap();
    assert_eq!(
        v6.host_with_port.host,
        rsip::Host::IpAddr("2001:db8::1".parse().unwrap())
    );
    assert_eq!(v6.host_with_port.port, Some(5062.into()));
    assert_eq!(format_uri(&v6), "sip:[2001:db8::1]:5062;transport=TCP");

    let unknown = parse_sip_uri("sip:host;transport=xyz;method=FOO").unwrap();
    assert_eq!(
        unknown.params,
        [
            rsip::Param::Other("transport".into(), Some("xyz".into())),
            rsip::Param::Other("method".into(), Some("FOO".into())),
        ]
    );

    let with_headers = parse_sip_uri("sip:bob@example.com;lr?Replaces=abc%40host&X=1").unwrap();
    assert_eq!(with_headers.params, [rsip::Param::Lr]);
    assert_eq!(
        with_headers.host_with_port.host,
        rsip::Host::Domain("example.com".into())
    );

    let phone =
        parse_sip_uri("sip:+1555;phone-context=example.com@gw.example.com;user=phone").unwrap();
    assert_eq!(phone.user(), Some("+1555;phone-context=example.com"));

    for (text, problem) in [
        (
            "sip:a@b>junk",
            "white space, control byte or one of `<>\"` in the URI",
        ),
        ("garbage", "no URI scheme"),
        (
            "sip:a@b c",
            "white space, control byte or one of `<>\"` in the URI",
        ),
        ("sip:a@b;;lr", "empty URI parameter"),
        ("sip:a@[::1]x", "text after the IPv6 reference"),
        ("sip:a@b:", "bad port"),
        ("sip:a@b:1x", "bad port"),
        ("sip:a@b@c", "bad host"),
        (
            "sip:a@ex ample.com",
            "white space, control byte or one of `<>\"` in the URI",
        ),
        ("sip:a@exämple.com", "bad host"),
        (":x", "no URI scheme"),
    ] {
        assert_eq!(
            parse_sip_uri(text),
            Err(MessageError::BadUri {
                uri: text.to_owned(),
                problem
            }),
            "{text}"
        );
    }
    assert_eq!(
        parse_sip_uri("mailto:a@b"),
        Err(MessageError::UnsupportedUriScheme {
            uri: "mailto:a@b".to_owned()
        })
    );
}

#[test]
fn list_splitting() {
    assert_eq!(split_list("a, b ,c"), Ok(vec!["a", "b", "c"]));
    assert_eq!(
        split_list("\"x, \\\"y\" <sip:a,b@c>;p=\"1,2\", <sip:d>"),
        Ok(vec!["\"x, \\\"y\" <sip:a,b@c>;p=\"1,2\"", "<sip:d>"])
    );
    assert_eq!(split_list("a,,b"), Err("empty list element"));
    assert_eq!(split_list(""), Err("empty list element"));
    assert_eq!(split_list("\"open, x"), Err("unterminated quoted string"));
    assert_eq!(split_list("<sip:a, b"), Err("unterminated <URI>"));
    assert_eq!(split_list("\"a\\"), Err("unterminated quoted string"));
}

#[test]
fn name_addr_forms() {
    let full =
        parse_name_addr("  \"A \\\"B\\\" C\" <sip:a@b;lr> ; tag = 1 ;x;y=\"q;r\"  ").unwrap();
    assert_eq!(full.display, Some("\"A \\\"B\\\" C\""));
    assert_eq!(full.uri, "sip:a@b;lr");
    assert!(full.bracketed);
    assert_eq!(
        full.params,
        [
            GenericParam {
                name: "tag",
                value: Some("1")
            },
            GenericParam {
                name: "x",
                value: None
            },
            GenericParam {
                name: "y",
                value: Some("\"q;r\"")
            },
        ]
    );
    let tokens = parse_name_addr("Jörg Müller <sip:j@b>").unwrap();
    assert_eq!(tokens.display, Some("Jörg Müller"));
    let bare = parse_name_addr("sip:a@b;tag=2").unwrap();
    assert_eq!((bare.uri, bare.bracketed), ("sip:a@b", false));
    assert_eq!(bare.params.len(), 1);
    for (value, problem) in [
        ("", "empty value"),
        ("\"open <sip:a@b>", "unterminated quoted display name"),
        ("\"A\" x <sip:a@b>", "text after the quoted display name"),
        ("A;B <sip:a@b>", "expected `;` before a parameter"),
        ("A, B <sip:a@b>", "bad display name"),
        ("<>", "empty <URI>"),
        ("\"A\"", "display name without <URI>"),
        ("<sip:a@b>x", "expected `;` before a parameter"),
        ("<sip:a@b>;=1", "empty parameter name"),
        ("<sip:a@b>;p=\"1", "unterminated quoted parameter value"),
        (";tag=1", "empty URI"),
    ] {
        assert_eq!(
            parse_name_addr(value).map(|_| ()),
            Err(problem),
            "{value:?}"
        );
    }
    assert_eq!(parse_params(""), Ok(vec![]));
}

#[test]
fn via_values_round_trip_after_edit() {
    for text in [
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport",
        "SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bK1;received=2001:db8::2",
        "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKx;x=\"a;b\"",
        "SIP/2.0/SCTP h",
    ] {
        let via = ViaValue::parse(text).unwrap();
        assert_eq!(via.to_string(), text);
        assert_eq!(ViaValue::parse(&via.to_string()).unwrap(), via);
    }
    // Unknown transports are fine (RFC 3261 §25.1 other-transport).
    assert_eq!(
        ViaValue::parse("SIP/2.0/QUIC h")
            .unwrap()
            .summary()
            .transport,
        "QUIC"
    );
    for (text, problem) in [
        ("", "sent-protocol is not SIP/2.0"),
        ("SIP/2.0", "missing transport"),
        ("SIP/2.0/", "missing transport"),
        ("SIP/2.0/UDP ", "bad sent-by host"),
        ("SIP/2.0/UDP h:", "bad sent-by port"),
        ("SIP/2.0/UDP 300.1.1.1", "bad sent-by host"),
        ("SIP/2.0/UDP h;", "empty parameter name"),
        ("SIP/2.0/UDP h;x=\"a", "unterminated quoted parameter value"),
        ("SIP/2.0/UDPh", "missing sent-by"),
    ] {
        assert_eq!(ViaValue::parse(text), Err(problem), "{text:?}");
    }
}
