//! The inspect table: what the session layer reads from realistic SDPs.

use super::{corpus::*, *};

fn info(origin_version: u64, session_connection: Option<IpAddr>, media: Vec<MediaInfo>) -> SdpInfo {
    SdpInfo {
        origin_version,
        session_connection,
        media,
    }
}

/// A plain RTP stream: no a=rtcp, no mux, sendrecv, no ICE; an RTP one
/// with the fixtures' usual first payload format (G.711 at 8 kHz; video
/// at 90 kHz).
fn plain(kind: &str, port: u16, protocol: &str, connection: &str) -> MediaInfo {
    MediaInfo {
        kind: kind.to_owned(),
        port,
        protocol: protocol.to_owned(),
        connection: Some(ip(connection)),
        rtcp: None,
        rtcp_mux: false,
        direction: Direction::SendRecv,
        has_ice: false,
        ssrcs: Vec::new(),
        clock_rate: protocol.contains("RTP/").then_some(if kind == "video" {
            90_000
        } else {
            8_000
        }),
    }
}

pub(super) fn cases() -> Vec<(&'static str, String, SdpInfo)> {
    vec![
        (
            "SIPp offer: session-level c= inherited",
            crlf(SIPP),
            info(
                2353687637,
                Some(ip("192.0.2.1")),
                vec![plain("audio", 6000, "RTP/AVP", "192.0.2.1")],
            ),
        ),
        (
            "Asterisk offer: explicit sendrecv",
            crlf(ASTERISK),
            info(
                1718273485,
                Some(ip("192.0.2.10")),
                vec![plain("audio", 17372, "RTP/AVP", "192.0.2.10")],
            ),
        ),
        (
            "FreeSWITCH offer: a=rtcp with address",
            crlf(FREESWITCH),
            info(
                1718250001,
                Some(ip("198.51.100.20")),
                vec![MediaInfo {
                    rtcp: Some(RtcpAttr {
                        port: 24601,
                        address: Some(ip("198.51.100.20")),
                    }),
                    ..plain("audio", 24600, "RTP/AVP", "198.51.100.20")
                }],
            ),
        ),
        (
            "WebRTC offer: media-level c= only, ICE, rtcp-mux, a=rtcp 9 IN IP4 0.0.0.0",
            crlf(WEBRTC),
            info(
                2,
                None,
                vec![MediaInfo {
                    rtcp: Some(RtcpAttr {
                        port: 9,
                        address: Some(HOLD),
                    }),
                    rtcp_mux: true,
                    has_ice: true,
                    clock_rate: Some(48_000),
                    ..plain("audio", 54321, "UDP/TLS/RTP/SAVPF", "203.0.113.5")
                }],
            ),
        ),
        (
            "T.38 re-INVITE: rejected audio, image/udptl",
            crlf(T38),
            info(
                1718273487,
                Some(ip("192.0.2.10")),
                vec![
                    plain("audio", 0, "RTP/AVP", "192.0.2.10"),
                    plain("image", 17374, "udptl", "192.0.2.10"),
                ],
            ),
        ),
        (
            "IPv6: a=rtcp without address",
            lf(IPV6),
            info(
                2890844526,
                Some(ip("2001:db8::10")),
                vec![MediaInfo {
                    rtcp: Some(RtcpAttr {
                        port: 49171,
                        address: None,
                    }),
                    ..plain("audio", 49170, "RTP/AVP", "2001:db8::10")
                }],
            ),
        ),
        (
            "session-level direction inherited unless the media has its own",
            crlf(EVERYTHING),
            info(
                7,
                Some(ip("192.0.2.30")),
                vec![
                    MediaInfo {
                        direction: Direction::SendOnly,
                        ..plain("audio", 30000, "RTP/AVP", "192.0.2.30")
                    },
                    MediaInfo {
                        direction: Direction::RecvOnly,
                        ..plain("video", 30002, "RTP/AVPF", "192.0.2.31")
                    },
                    MediaInfo {
                        direction: Direction::SendOnly,
                        ..plain("image", 30004, "udptl", "192.0.2.30")
                    },
                ],
            ),
        ),
        (
            "RFC 2543 hold: 0.0.0.0 reported as is, a=inactive",
            lf(HOLD_ZERO),
            info(
                2,
                Some(HOLD),
                vec![MediaInfo {
                    direction: Direction::Inactive,
                    ..plain("audio", 17372, "RTP/AVP", "0.0.0.0")
                }],
            ),
        ),
        (
            "odd input: attribute names in any case, upper-case IPv6",
            ODD.to_owned(),
            info(
                2,
                Some(ip("2001:db8::1")),
                vec![
                    MediaInfo {
                        rtcp: Some(RtcpAttr {
                            port: 5001,
                            address: None,
                        }),
                        rtcp_mux: true,
                        ..plain("audio", 5000, "RTP/AVP", "2001:db8::1")
                    },
                    plain("video", 0, "RTP/AVP", "2001:db8::1"),
                ],
            ),
        ),
        (
            "session-level ICE counts for every media; ice-lite",
            crlf(&[
                "v=0",
                "o=- 1 1 IN IP4 192.0.2.50",
                "s=-",
                "c=IN IP4 192.0.2.50",
                "t=0 0",
                "a=ice-lite",
                "a=inactive",
                "m=audio 9000 RTP/AVP 0",
                "m=video 9002 RTP/AVP 96",
                "a=sendonly",
            ]),
            info(
                1,
                Some(ip("192.0.2.50")),
                vec![
                    MediaInfo {
                        direction: Direction::Inactive,
                        has_ice: true,
                        ..plain("audio", 9000, "RTP/AVP", "192.0.2.50")
                    },
                    MediaInfo {
                        direction: Direction::SendOnly,
                        has_ice: true,
                        // Dynamic payload type 96 without an a=rtpmap.
                        clock_rate: None,
                        ..plain("video", 9002, "RTP/AVP", "192.0.2.50")
                    },
                ],
            ),
        ),
        (
            "each ICE attribute alone is enough; a=rtcp IPv6 with address",
            crlf(&[
                "v=0",
                "o=- 1 1 IN IP6 2001:db8::50",
                "s=-",
                "t=0 0",
                "m=audio 9000 RTP/SAVP 0",
                "c=IN IP6 2001:db8::50",
                "a=rtcp:9001 IN IP6 2001:db8::51",
                "a=ice-pwd:asd88fgpdd777uzjYhagZg",
                "m=audio 9002 RTP/AVP 0",
                "c=IN IP6 2001:db8::52",
                "a=end-of-candidates",
                "m=audio 9004 RTP/AVP 0",
                "c=IN IP6 2001:db8::53",
                "a=ice-options:ice2",
                "m=audio 9006 RTP/AVP 0",
                "c=IN IP6 2001:db8::54",
                "a=x-ice-ufrag:not-ice",
            ]),
            info(
                1,
                None,
                vec![
                    MediaInfo {
                        rtcp: Some(RtcpAttr {
                            port: 9001,
                            address: Some(ip("2001:db8::51")),
                        }),
                        has_ice: true,
                        ..plain("audio", 9000, "RTP/SAVP", "2001:db8::50")
                    },
                    MediaInfo {
                        has_ice: true,
                        ..plain("audio", 9002, "RTP/AVP", "2001:db8::52")
                    },
                    MediaInfo {
                        has_ice: true,
                        ..plain("audio", 9004, "RTP/AVP", "2001:db8::53")
                    },
                    plain("audio", 9006, "RTP/AVP", "2001:db8::54"),
                ],
            ),
        ),
        (
            "multicast TTL suffix ignored; session-level a=rtcp and a=rtcp-mux do not count",
            crlf(&[
                "v=0",
                "o=- 1 1 IN IP4 192.0.2.50",
                "s=-",
                "c=IN IP4 233.252.0.1/127",
                "t=0 0",
                "a=rtcp:7",
                "a=rtcp-mux",
                "m=audio 9000 RTP/AVP 0",
            ]),
            info(
                1,
                Some(ip("233.252.0.1")),
                vec![plain("audio", 9000, "RTP/AVP", "233.252.0.1")],
            ),
        ),
        (
            "no media at all",
            crlf(&["v=0", "o=- 1 1 IN IP4 192.0.2.50", "s=-", "t=0 0"]),
            info(1, None, vec![]),
        ),
    ]
}

#[test]
fn inspect_table() {
    for (name, sdp, expected) in cases() {
        let got = inspect(sdp.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, expected, "case: {name}");
    }
}
