//! Request parsing: a table of commands, key spellings and errors (with the
//! exact `error-reason` each sends), the datagrams `rtpengine-ng-client`
//! really sends (`fixtures/`, re-captured by `fixtures/capture.sh`), and a
//! robustness loop over mutations of those.

use std::net::IpAddr;

use super::*;

mod family;

/// Builds `cookie <dict>` from key/value pairs (keys as given, unsorted
/// input is fine: `Value::Dict` sorts).
fn datagram(pairs: &[(&str, Value)]) -> Vec<u8> {
    let dict = pairs.iter().fold(Value::dict(), |dict, (key, value)| {
        dict.with(key, value.clone())
    });
    let mut buf = b"cookie1 ".to_vec();
    buf.extend(dict.encode().unwrap());
    buf
}

fn parse(buf: &[u8]) -> Result<Command, NgError> {
    let (cookie, command) = parse_datagram(buf).expect("a cookie");
    assert_eq!(&cookie[..], buf.split(|&b| b == b' ').next().unwrap());
    command
}

fn strings(items: &[&str]) -> Value {
    Value::list(items.iter().copied())
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 0\r\n";

fn minimal(command: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("command", Value::from(command)),
        ("call-id", Value::from("cid")),
        ("from-tag", Value::from("ft")),
        ("to-tag", Value::from("tt")),
        ("sdp", Value::from(SDP)),
    ]
}

fn offer_answer(to_tag: Option<&str>) -> OfferAnswer {
    OfferAnswer {
        call_id: "cid".to_owned(),
        from_tag: "ft".to_owned(),
        to_tag: to_tag.map(str::to_owned),
        via_branch: None,
        sdp: SDP.as_bytes().to_vec(),
        flags: Flags::default(),
        replace: Replace::default(),
        direction: Vec::new(),
        from_interface: None,
        to_interface: None,
        rtcp_mux: RtcpMux::default(),
        ice: Ice::Remove,
        received_from: None,
        media_address: None,
        label: None,
        address_family: None,
    }
}

#[test]
fn ping_and_statistics() {
    assert_eq!(parse(b"5323_1 d7:command4:pinge"), Ok(Command::Ping));
    assert_eq!(
        parse(b"x d7:command10:statisticse"),
        Ok(Command::Statistics)
    );
    assert_eq!(parse(b"x d7:command4:PINGe"), Ok(Command::Ping));
    assert_eq!(
        parse(b"x d7:command10:StatisticSe"),
        Ok(Command::Statistics)
    );
}

#[test]
fn offer_with_every_key() {
    let buf = datagram(&[
        ("command", "offer".into()),
        ("call-id", "cid".into()),
        ("from-tag", "ft".into()),
        ("to-tag", "tt".into()),
        ("via-branch", "z9hG4bK1".into()),
        ("sdp", SDP.into()),
        (
            "flags",
            strings(&[
                "asymmetric",
                "symmetric",
                "strict-source",
                "trust-address",
                "SIP-source-address",
                "port-latching",
                "no-rtcp-attribute",
                "full-rtcp-attribute",
                "loop-protect",
                "record call",
            ]),
        ),
        (
            "replace",
            strings(&["origin", "session-connection", "username"]),
        ),
        ("direction", strings(&["priv", "pub"])),
        ("from-interface", "priv".into()),
        ("to-interface", "pub".into()),
        (
            "rtcp-mux",
            strings(&["offer", "demux", "accept", "reject", "require"]),
        ),
        ("ICE", "force-relay".into()),
        ("received-from", strings(&["IP6", "2001:db8::1"])),
        ("media-address", "192.0.2.7".into()),
        ("label", "caller".into()),
        // Keys we do not read, of any type, are ignored.
        ("supports", strings(&["load limit"])),
        ("codec", Value::dict().with("strip", strings(&["PCMA"]))),
        ("TOS", 184_i64.into()),
    ]);
    let expected = OfferAnswer {
        to_tag: Some("tt".to_owned()),
        via_branch: Some("z9hG4bK1".to_owned()),
        flags: Flags {
            asymmetric: true,
            symmetric: true,
            strict_source: true,
            trust_address: true,
            sip_source_address: true,
            port_latching: true,
            no_rtcp_attribute: true,
            full_rtcp_attribute: true,
            loop_protect: true,
            unknown: vec!["record-call".to_owned(), "replace-username".to_owned()],
        },
        replace: Replace {
            origin: true,
            session_connection: true,
        },
        direction: vec!["priv".to_owned(), "pub".to_owned()],
        from_interface: Some("priv".to_owned()),
        to_interface: Some("pub".to_owned()),
        rtcp_mux: RtcpMux {
            offer: true,
            demux: true,
            accept: true,
            reject: true,
            require: true,
        },
        ice: Ice::Keep,
        received_from: Some(ip("2001:db8::1")),
        media_address: Some(ip("192.0.2.7")),
        label: Some("caller".to_owned()),
        address_family: None,
        ..offer_answer(None)
    };
    assert_eq!(parse(&buf), Ok(Command::Offer(expected)));
}

#[test]
fn offer_and_answer_minimal() {
    let mut offer = minimal("offer");
    offer.retain(|(key, _)| *key != "to-tag");
    assert_eq!(
        parse(&datagram(&offer)),
        Ok(Command::Offer(offer_answer(None)))
    );
    assert_eq!(
        parse(&datagram(&minimal("answer"))),
        Ok(Command::Answer(offer_answer(Some("tt"))))
    );
}

#[test]
fn delete_query_list_with_every_key() {
    let buf = datagram(&[
        ("command", "delete".into()),
        ("call-id", "cid".into()),
        ("from-tag", "ft".into()),
        ("to-tag", "tt".into()),
        ("via-branch", "vb".into()),
        ("delete-delay", 30_i64.into()),
        ("flags", strings(&["fatal"])),
    ]);
    assert_eq!(
        parse(&buf),
        Ok(Command::Delete(Delete {
            call_id: "cid".to_owned(),
            from_tag: Some("ft".to_owned()),
            to_tag: Some("tt".to_owned()),
            via_branch: Some("vb".to_owned()),
            delete_delay: Some(30),
        }))
    );
    assert_eq!(
        parse(b"c d7:call-id3:cid7:command6:deletee"),
        Ok(Command::Delete(Delete {
            call_id: "cid".to_owned(),
            from_tag: None,
            to_tag: None,
            via_branch: None,
            delete_delay: None,
        }))
    );
    assert_eq!(
        parse(b"c d7:call-id3:cid7:command5:query8:from-tag2:ft6:to-tag2:tte"),
        Ok(Command::Query(Query {
            call_id: "cid".to_owned(),
            from_tag: Some("ft".to_owned()),
            to_tag: Some("tt".to_owned()),
        }))
    );
    assert_eq!(
        parse(b"c d7:command4:list5:limiti5ee"),
        Ok(Command::List(List { limit: Some(5) }))
    );
    assert_eq!(
        parse(b"c d7:command4:liste"),
        Ok(Command::List(List { limit: None }))
    );
}

#[test]
fn integers_may_be_strings_of_digits() {
    assert_eq!(
        parse(b"c d7:command4:list5:limit3:100e"),
        Ok(Command::List(List { limit: Some(100) }))
    );
    let Ok(Command::Delete(delete)) = parse(b"c d7:call-id1:x7:command6:delete12:delete delay1:0e")
    else {
        panic!("not a delete")
    };
    assert_eq!(delete.delete_delay, Some(0));
    let Ok(Command::Delete(delete)) =
        parse(b"c d7:call-id1:x7:command6:delete12:delete-delay10:4294967295e")
    else {
        panic!("not a delete")
    };
    assert_eq!(delete.delete_delay, Some(u32::MAX));
}

#[test]
fn keys_match_in_any_spelling() {
    let buf = datagram(&[
        ("Command", "Answer".into()),
        ("Call-ID", "cid".into()),
        ("from tag", "ft".into()),
        ("TO_TAG", "tt".into()),
        ("Via Branch", "vb".into()),
        ("SDP", SDP.into()),
        ("Flags", strings(&["trust address"])),
        ("REPLACE", strings(&["session connection"])),
        ("Direction", strings(&["a", "b"])),
        ("from_interface", "a".into()),
        ("To Interface", "b".into()),
        ("RTCP mux", strings(&["Accept"])),
        ("ice", "Optional".into()),
        ("Received From", strings(&["ip4", "192.0.2.9"])),
        ("media address", "[2001:db8::9]".into()),
        ("from-label", "callee".into()),
    ]);
    let expected = OfferAnswer {
        via_branch: Some("vb".to_owned()),
        flags: Flags {
            trust_address: true,
            ..Flags::default()
        },
        replace: Replace {
            session_connection: true,
            ..Replace::default()
        },
        direction: vec!["a".to_owned(), "b".to_owned()],
        from_interface: Some("a".to_owned()),
        to_interface: Some("b".to_owned()),
        rtcp_mux: RtcpMux {
            accept: true,
            ..RtcpMux::default()
        },
        ice: Ice::Keep,
        received_from: Some(ip("192.0.2.9")),
        media_address: Some(ip("2001:db8::9")),
        label: Some("callee".to_owned()),
        address_family: None,
        ..offer_answer(Some("tt"))
    };
    assert_eq!(parse(&buf), Ok(Command::Answer(expected)));

    for spelling in [
        "delete delay",
        "delete-delay",
        "delete_delay",
        "Delete-Delay",
    ] {
        let buf = datagram(&[
            ("command", "delete".into()),
            ("call id", "cid".into()),
            (spelling, "7".into()),
        ]);
        let Ok(Command::Delete(delete)) = parse(&buf) else {
            panic!("{spelling}")
        };
        assert_eq!(delete.delete_delay, Some(7), "{spelling}");
    }
}

#[test]
fn flags_are_normalised() {
    let mut pairs = minimal("offer");
    pairs.push((
        "flags",
        strings(&[
            "trust address",
            "SIP_source_address",
            "Strict-Source",
            "port latching",
            "no rtcp attribute",
            "Full-RTCP-attribute",
            "loop_protect",
            " symmetric ",
            "",
            "replace-origin",
            "replace-session-connection",
            "rtcp-mux-demux",
            "RTCP-mux-bogus",
            "codec-strip-PCMA",
            "Record Call",
        ]),
    ));
    let Ok(Command::Offer(offer)) = parse(&datagram(&pairs)) else {
        panic!("not an offer")
    };
    assert_eq!(
        offer.flags,
        Flags {
            symmetric: true,
            strict_source: true,
            trust_address: true,
            sip_source_address: true,
            port_latching: true,
            no_rtcp_attribute: true,
            full_rtcp_attribute: true,
            loop_protect: true,
            unknown: vec![
                "rtcp-mux-bogus".to_owned(),
                "codec-strip-pcma".to_owned(),
                "record-call".to_owned()
            ],
            ..Flags::default()
        }
    );
    assert_eq!(
        offer.replace,
        Replace {
            origin: true,
            session_connection: true
        }
    );
    assert!(offer.rtcp_mux.demux);
}

#[test]
fn string_lists_may_be_one_comma_separated_string() {
    let mut pairs = minimal("offer");
    pairs.extend([
        ("flags", Value::from("trust-address, asymmetric")),
        ("replace", Value::from("origin")),
        ("rtcp-mux", Value::from("offer,require")),
        ("direction", Value::from("priv,pub")),
        ("received from", Value::from("192.0.2.3")),
    ]);
    let Ok(Command::Offer(offer)) = parse(&datagram(&pairs)) else {
        panic!("not an offer")
    };
    assert!(offer.flags.trust_address && offer.flags.asymmetric);
    assert!(offer.replace.origin);
    assert!(offer.rtcp_mux.offer && offer.rtcp_mux.require);
    assert_eq!(offer.direction, ["priv", "pub"]);
    assert_eq!(offer.received_from, Some(ip("192.0.2.3")));
}

#[test]
fn ice_mapping() {
    let cases: &[(Value, Ice, &[&str])] = &[
        ("remove".into(), Ice::Remove, &[]),
        ("default".into(), Ice::Remove, &[]),
        ("force".into(), Ice::Remove, &[]),
        ("FORCE-RELAY".into(), Ice::Keep, &[]),
        ("force_relay".into(), Ice::Keep, &[]),
        ("optional".into(), Ice::Keep, &[]),
        ("pass".into(), Ice::Remove, &["ice-pass"]),
        (
            strings(&["optional", "trickle"]),
            Ice::Keep,
            &["ice-trickle"],
        ),
        (
            strings(&["force-relay", "lite-both", "ice2"]),
            Ice::Keep,
            &["ice-lite-both", "ice-ice2"],
        ),
        (strings(&["optional", "remove"]), Ice::Remove, &[]),
        (strings(&["optional", "bogus"]), Ice::Remove, &["ice-bogus"]),
        (strings(&[]), Ice::Remove, &[]),
    ];
    for (value, ice, unknown) in cases {
        let mut pairs = minimal("offer");
        pairs.push(("ICE", value.clone()));
        let Ok(Command::Offer(offer)) = parse(&datagram(&pairs)) else {
            panic!("{value:?}")
        };
        assert_eq!(offer.ice, *ice, "{value:?}");
        assert_eq!(offer.flags.unknown, *unknown, "{value:?}");
    }
}

/// Kamailio's `rtpengine` module writes keys in the order it builds them;
/// this is the shape of its `rtpengine_offer("replace-origin
/// trust-address ICE=remove")` request (keys in its order, not sorted).
#[test]
fn kamailio_key_order() {
    let buf = b"kam-1 d8:supportsl10:load limite3:sdp5:v=0\r\n7:replacel6:origine\
                13:received-froml3:IP49:192.0.2.5e3:ICE6:remove7:call-id3:cid\
                10:via-branch2:vb8:from-tag2:ft7:command5:offer\
                16:sip-message-type11:SIP request5:flagsl13:trust-addressee";
    let Ok(Command::Offer(offer)) = parse(buf) else {
        panic!("not an offer")
    };
    assert_eq!(offer.call_id, "cid");
    assert_eq!(offer.sdp, b"v=0\r\n");
    assert!(offer.replace.origin && offer.flags.trust_address);
    assert_eq!(offer.received_from, Some(ip("192.0.2.5")));
    assert_eq!(offer.via_branch.as_deref(), Some("vb"));

    // The two-argument form leaves flag parsing to the daemon; we note it.
    let buf = b"kam-2 d3:sdp5:v=0\r\n7:call-id3:cid8:from-tag2:ft7:command5:offer\
                10:rtpp-flags28:replace-origin trust-addresse";
    let Ok(Command::Offer(offer)) = parse(buf) else {
        panic!("not an offer")
    };
    assert_eq!(offer.flags.unknown, ["rtpp-flags"]);
    assert!(!offer.flags.trust_address);
}

#[test]
fn outer_error_when_there_is_no_cookie() {
    for buf in [
        &b""[..],
        b"d7:command4:pinge",
        b" d7:command4:pinge",
        b"\x00",
    ] {
        assert_eq!(parse_datagram(buf), Err(NgError::NoCookie), "{buf:?}");
    }
    assert_eq!(
        NgError::NoCookie.to_string(),
        "no cookie: a request is `<cookie> <bencoded dictionary>`"
    );
    // The first space ends the cookie, whatever comes before it.
    let (cookie, command) = parse_datagram(b"\xff\x00\t  d7:command4:pinge").unwrap();
    assert_eq!(cookie, b"\xff\x00\t");
    assert_eq!(command, Err(NgError::NotADict));
}

#[test]
fn errors_and_their_reasons() {
    let no_sdp = {
        let mut pairs = minimal("offer");
        pairs.retain(|(key, _)| *key != "sdp");
        datagram(&pairs)
    };
    let no_to_tag = {
        let mut pairs = minimal("answer");
        pairs.retain(|(key, _)| *key != "to-tag");
        datagram(&pairs)
    };
    let with = |key: &'static str, value: Value| {
        let mut pairs = minimal("offer");
        pairs.retain(|(k, _)| *k != key);
        pairs.push((key, value));
        datagram(&pairs)
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "empty after cookie",
            b"c ".to_vec(),
            "no dictionary after the cookie",
        ),
        (
            "JSON",
            br#"c {"command":"ping"}"#.to_vec(),
            "JSON requests are not supported, send a bencoded dictionary",
        ),
        (
            "a list",
            b"c l4:pinge".to_vec(),
            "the request is not a bencoded dictionary",
        ),
        (
            "a string",
            b"c 4:ping".to_vec(),
            "the request is not a bencoded dictionary",
        ),
        (
            "truncated",
            b"c d7:command4:ping".to_vec(),
            "invalid bencode at byte 18: unexpected end of data",
        ),
        (
            "string past the end",
            b"c d7:command9:pinge".to_vec(),
            "invalid bencode at byte 12: Reached EOF in the middle of a message",
        ),
        (
            "garbage where a key goes",
            b"c d7:command4:pingxe".to_vec(),
            "invalid bencode at byte 18: unexpected byte 'x'",
        ),
        (
            "key not a string",
            b"c di1e4:pinge".to_vec(),
            "invalid bencode at byte 3: dictionary key is not a byte string",
        ),
        (
            "same key twice",
            b"c d7:command4:ping7:command4:pinge".to_vec(),
            "invalid bencode at byte 18: dictionary key `command` is given twice",
        ),
        (
            "trailing garbage",
            b"c d7:command4:pingex".to_vec(),
            "trailing data after the dictionary at byte 19",
        ),
        (
            "trailing newline",
            b"c d7:command4:pinge\n".to_vec(),
            "trailing data after the dictionary at byte 19",
        ),
        ("missing command", b"c de".to_vec(), "missing key `command`"),
        (
            "command not a string",
            b"c d7:commandi1ee".to_vec(),
            "key `command` must be a string",
        ),
        (
            "unknown command",
            b"c d7:command15:start recordinge".to_vec(),
            "unknown command `start recording`; \
             supported: ping, offer, answer, delete, query, list, statistics",
        ),
        ("offer without sdp", no_sdp, "missing key `sdp`"),
        ("answer without to-tag", no_to_tag, "missing key `to-tag`"),
        (
            "offer without anything",
            b"c d7:command5:offere".to_vec(),
            "missing key `call-id`",
        ),
        (
            "offer without from-tag",
            b"c d7:call-id1:x7:command5:offere".to_vec(),
            "missing key `from-tag`",
        ),
        (
            "delete without call-id",
            b"c d7:command6:deletee".to_vec(),
            "missing key `call-id`",
        ),
        (
            "query without call-id",
            b"c d7:command5:querye".to_vec(),
            "missing key `call-id`",
        ),
        (
            "empty call-id",
            with("call-id", "".into()),
            "key `call-id` is empty",
        ),
        ("empty sdp", with("sdp", "".into()), "key `sdp` is empty"),
        (
            "call-id an integer",
            with("call-id", 5_i64.into()),
            "key `call-id` must be a string",
        ),
        (
            "sdp a list",
            with("sdp", strings(&[SDP])),
            "key `sdp` must be a string",
        ),
        (
            "call-id not UTF-8",
            with("call-id", Value::bytes(vec![0xff])),
            "key `call-id` must be UTF-8 text",
        ),
        (
            "flags an integer",
            with("flags", 1_i64.into()),
            "key `flags` must be a list of strings",
        ),
        (
            "flags with a dict",
            with("flags", Value::list([Value::dict()])),
            "key `flags` must be a list of strings",
        ),
        (
            "received-from of three",
            with("received from", strings(&["IP4", "192.0.2.1", "x"])),
            "key `received-from` must be a list [\"IP4\" or \"IP6\", address] or an address",
        ),
        (
            "received-from family mismatch",
            with("received-from", strings(&["IP4", "2001:db8::1"])),
            "key `received-from`: 2001:db8::1 is not an IP4 address",
        ),
        (
            "received-from family mismatch v6",
            with("received-from", strings(&["IP6", "192.0.2.1"])),
            "key `received-from`: 192.0.2.1 is not an IP6 address",
        ),
        (
            "received-from unknown family",
            with("received-from", strings(&["?", "192.0.2.1"])),
            "key `received-from`: unknown address family `?`, expected IP4 or IP6",
        ),
        (
            "received-from bad address",
            with("received-from", strings(&["IP4", "example.com"])),
            "key `received-from`: `example.com` is not an IP address",
        ),
        (
            "media address bad",
            with("media address", "192.0.2.300".into()),
            "key `media-address`: `192.0.2.300` is not an IP address",
        ),
        (
            "three interfaces",
            with("direction", strings(&["a", "b", "c"])),
            "key `direction` must name at most two interfaces, got 3",
        ),
        (
            "two spellings of call-id",
            with("call id", "other".into()),
            "keys `call id` and `call-id` are the same key, give it once",
        ),
        (
            "negative delete delay",
            b"c d7:call-id1:x7:command6:delete12:delete-delayi-5ee".to_vec(),
            "key `delete-delay` must be an integer from 0 to 4294967295, got `-5`",
        ),
        (
            "delete delay as a signed string",
            b"c d7:call-id1:x7:command6:delete12:delete-delay2:-5e".to_vec(),
            "key `delete-delay` must be an integer from 0 to 4294967295, got `-5`",
        ),
        (
            "delete delay too big",
            b"c d7:call-id1:x7:command6:delete12:delete-delayi4294967296ee".to_vec(),
            "key `delete-delay` must be an integer from 0 to 4294967295, got `4294967296`",
        ),
        (
            "delete delay a list",
            b"c d7:call-id1:x7:command6:delete12:delete-delaylee".to_vec(),
            "key `delete-delay` must be an integer from 0 to 4294967295",
        ),
        (
            "limit zero",
            b"c d7:command4:list5:limiti0ee".to_vec(),
            "key `limit` must be an integer from 1 to 4294967295, got `0`",
        ),
        (
            "limit not digits",
            b"c d7:command4:list5:limit3:12ae".to_vec(),
            "key `limit` must be an integer from 1 to 4294967295, got `12a`",
        ),
        (
            "limit empty",
            b"c d7:command4:list5:limit0:e".to_vec(),
            "key `limit` must be an integer from 1 to 4294967295, got ``",
        ),
    ];
    for (name, buf, reason) in cases {
        match parse(&buf) {
            Ok(command) => panic!("{name}: parsed as {command:?}"),
            Err(err) => assert_eq!(err.to_string(), reason, "{name}"),
        }
    }
}

#[test]
fn an_error_becomes_the_error_reply() {
    let (cookie, command) = parse_datagram(b"0.5 d7:command5:querye").unwrap();
    let reply = encode_reply(&cookie, &Reply::from(command.unwrap_err()));
    assert_eq!(
        reply,
        b"0.5 d12:error-reason21:missing key `call-id`6:result5:errore"
    );
}

/// The datagrams `rtpengine-ng-client` sent to a socket on 127.0.0.1, with
/// the command lines in `fixtures/capture.sh`.
mod fixtures {
    use super::*;

    const OFFER_SDP: &[u8] = include_bytes!("fixtures/offer.sdp");
    const ANSWER_SDP: &[u8] = include_bytes!("fixtures/answer.sdp");
    const CALL_ID: &str = "a84b4c76e66710@pc33.example.com";

    pub(super) const ALL: &[(&str, &[u8])] = &[
        ("ping", include_bytes!("fixtures/ping.bin")),
        ("offer", include_bytes!("fixtures/offer.bin")),
        (
            "offer_minimal",
            include_bytes!("fixtures/offer_minimal.bin"),
        ),
        ("offer_ip6", include_bytes!("fixtures/offer_ip6.bin")),
        ("answer", include_bytes!("fixtures/answer.bin")),
        ("delete", include_bytes!("fixtures/delete.bin")),
        ("delete_call", include_bytes!("fixtures/delete_call.bin")),
        ("query", include_bytes!("fixtures/query.bin")),
        ("list", include_bytes!("fixtures/list.bin")),
        ("statistics", include_bytes!("fixtures/statistics.bin")),
    ];

    fn some(text: &str) -> Option<String> {
        Some(text.to_owned())
    }

    fn expected(name: &str) -> Command {
        let offer = OfferAnswer {
            call_id: CALL_ID.to_owned(),
            from_tag: "1928301774".to_owned(),
            to_tag: None,
            via_branch: None,
            sdp: OFFER_SDP.to_vec(),
            flags: Flags::default(),
            replace: Replace::default(),
            direction: Vec::new(),
            from_interface: None,
            to_interface: None,
            rtcp_mux: RtcpMux::default(),
            ice: Ice::Remove,
            received_from: None,
            media_address: None,
            label: None,
            address_family: None,
        };
        match name {
            "ping" => Command::Ping,
            "offer" => Command::Offer(OfferAnswer {
                via_branch: some("z9hG4bK776asdhds"),
                flags: Flags {
                    symmetric: true,
                    strict_source: true,
                    trust_address: true,
                    port_latching: true,
                    no_rtcp_attribute: true,
                    loop_protect: true,
                    unknown: vec!["record-call".to_owned(), "codec-strip-pcma".to_owned()],
                    ..Flags::default()
                },
                replace: Replace {
                    origin: true,
                    session_connection: true,
                },
                direction: vec!["priv".to_owned(), "pub".to_owned()],
                rtcp_mux: RtcpMux {
                    offer: true,
                    demux: true,
                    ..RtcpMux::default()
                },
                received_from: Some(ip("198.51.100.10")),
                media_address: Some(ip("198.51.100.11")),
                label: some("caller"),
                address_family: None,
                ..offer.clone()
            }),
            "offer_minimal" => Command::Offer(OfferAnswer {
                call_id: "minimal-1".to_owned(),
                from_tag: "ft1".to_owned(),
                ..offer.clone()
            }),
            "offer_ip6" => Command::Offer(OfferAnswer {
                call_id: "v6-call".to_owned(),
                from_tag: "ft6".to_owned(),
                flags: Flags {
                    asymmetric: true,
                    sip_source_address: true,
                    full_rtcp_attribute: true,
                    ..Flags::default()
                },
                rtcp_mux: RtcpMux {
                    require: true,
                    ..RtcpMux::default()
                },
                ice: Ice::Keep,
                received_from: Some(ip("2001:db8::10")),
                ..offer.clone()
            }),
            "answer" => Command::Answer(OfferAnswer {
                to_tag: some("a6c85cf"),
                via_branch: some("z9hG4bK776asdhds"),
                sdp: ANSWER_SDP.to_vec(),
                flags: Flags {
                    trust_address: true,
                    ..Flags::default()
                },
                replace: Replace {
                    origin: true,
                    session_connection: true,
                },
                rtcp_mux: RtcpMux {
                    accept: true,
                    reject: true,
                    ..RtcpMux::default()
                },
                received_from: Some(ip("203.0.113.20")),
                label: some("callee"),
                address_family: None,
                ..offer.clone()
            }),
            "delete" => Command::Delete(Delete {
                call_id: CALL_ID.to_owned(),
                from_tag: some("1928301774"),
                to_tag: some("a6c85cf"),
                via_branch: some("z9hG4bK776asdhds"),
                delete_delay: Some(0),
            }),
            "delete_call" => Command::Delete(Delete {
                call_id: CALL_ID.to_owned(),
                from_tag: None,
                to_tag: None,
                via_branch: None,
                delete_delay: None,
            }),
            "query" => Command::Query(Query {
                call_id: CALL_ID.to_owned(),
                from_tag: some("1928301774"),
                to_tag: some("a6c85cf"),
            }),
            "list" => Command::List(List { limit: None }),
            "statistics" => Command::Statistics,
            other => panic!("no expectation for fixture {other}"),
        }
    }

    #[test]
    fn the_real_client_is_understood() {
        for (name, buf) in ALL {
            // The client's cookie is Perl's `rand()`, e.g. `0.907011707852693`.
            assert_eq!(parse(buf), Ok(expected(name)), "{name}");
        }
    }
}

/// Every prefix and a great many mutations of the real datagrams: the
/// parser answers each with a command or an error, never a panic.
#[test]
fn truncations_and_mutations_never_panic() {
    /// xorshift64: deterministic, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
        }
    }
    fn exercise(buf: &[u8]) {
        if let Ok((cookie, command)) = parse_datagram(buf) {
            let reply = match command {
                Ok(_) => Reply::ok(),
                Err(err) => Reply::from(err),
            };
            let _ = encode_reply(&cookie, &reply);
        }
    }
    // Bytes that steer a bencode parser: structure, digits, separators.
    const INTERESTING: &[u8] = b"delie0123456789: -\x00\xff";

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (_, fixture) in fixtures::ALL {
        for end in 0..fixture.len() {
            exercise(&fixture[..end]);
        }
        let mut buf = fixture.to_vec();
        for at in 0..buf.len() {
            let original = buf[at];
            for &byte in INTERESTING {
                buf[at] = byte;
                exercise(&buf);
            }
            buf[at] = original;
        }
        for _ in 0..2_000 {
            let mut buf = fixture.to_vec();
            for _ in 0..=rng.below(4) {
                let at = rng.below(buf.len());
                match rng.below(4) {
                    0 => buf[at] = INTERESTING[rng.below(INTERESTING.len())],
                    1 => buf[at] = rng.next().to_le_bytes()[0],
                    2 => {
                        buf.remove(at);
                    }
                    _ => buf.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
                }
                if buf.is_empty() {
                    break;
                }
            }
            exercise(&buf);
        }
    }
}

/// The seed corpus of the `ng_engine` fuzz target (`fuzz/corpus/`): each
/// captured datagram alone, and calls made of them (parts separated as
/// `fuzz/src/lib.rs` says): offer, answer, query, list, statistics and
/// delete; a retransmitted offer; a reused cookie. Written by
/// `cargo xtask fuzz --write-seeds` (README, "Fuzzing"); ignored by a
/// plain `cargo test`.
mod fuzz_seeds {
    use std::{fs, path::Path};

    use super::fixtures::ALL;

    const SEPARATOR: &[u8] = b"\n--fuzz--\n";

    fn fixture(name: &str) -> &'static [u8] {
        ALL.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, bytes)| *bytes)
            .unwrap()
    }

    fn seed(names: &[&str]) -> Vec<u8> {
        names
            .iter()
            .map(|n| fixture(n).to_vec())
            .collect::<Vec<_>>()
            .join(SEPARATOR)
    }

    #[test]
    #[ignore = "writes fuzz/corpus/ng_engine: cargo xtask fuzz --write-seeds"]
    fn write_fuzz_seeds() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/ng_engine");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: Vec<u8>| fs::write(dir.join(name), bytes).unwrap();
        for (name, bytes) in ALL {
            write(name, bytes.to_vec());
        }
        write(
            "call",
            seed(&["offer", "answer", "query", "list", "statistics", "delete"]),
        );
        write(
            "call_retransmitted",
            seed(&["offer", "offer", "answer", "answer", "delete_call"]),
        );
        write("call_ip6", seed(&["offer_ip6", "list", "delete_call"]));
        write(
            "calls_two",
            seed(&["offer_minimal", "offer", "answer", "list", "statistics"]),
        );
        // The answer's cookie again, with another request: refused.
        let mut reused = fixture("answer").to_vec();
        let space = reused.iter().position(|&b| b == b' ').unwrap();
        reused.splice(
            space + 1..,
            fixture("query")[fixture("query").iter().position(|&b| b == b' ').unwrap() + 1..]
                .iter()
                .copied(),
        );
        write(
            "cookie_reused",
            [fixture("offer"), fixture("answer"), &reused].join(SEPARATOR),
        );
    }
}
