//! The rewrite table: {description, input SDP, Rewrite, expected output
//! bytes}. Each output must also inspect back to what the Rewrite said.

use super::{corpus::*, *};

pub(super) struct Case {
    pub(super) name: &'static str,
    pub(super) input: String,
    pub(super) rewrite: Rewrite,
    pub(super) expected: String,
}

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "session-level c= only (SIPp): c= and m= port anchored, rest verbatim",
            input: crlf(SIPP),
            rewrite: rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Omit, false)]),
            expected: crlf(&[
                "v=0",
                "o=user1 53655765 2353687637 IN IP4 192.0.2.1",
                "s=-",
                "c=IN IP4 203.0.113.1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0",
                "a=rtpmap:0 PCMU/8000",
            ]),
        },
        Case {
            name: "media-level c= only (WebRTC): c= and a=rtcp replaced in place, ICE and \
                   rtcp-mux kept",
            input: crlf(WEBRTC),
            rewrite: rw(
                RELAY4,
                vec![media(40000, RELAY4, RtcpOut::Full(40000, RELAY4), true)],
            ),
            expected: crlf(&[
                "v=0",
                "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
                "s=-",
                "t=0 0",
                "a=group:BUNDLE 0",
                "a=ice-options:trickle",
                "a=msid-semantic: WMS",
                "m=audio 40000 UDP/TLS/RTP/SAVPF 111 0",
                "c=IN IP4 203.0.113.1",
                "a=rtcp:40000 IN IP4 203.0.113.1",
                "a=candidate:1 1 udp 2122260223 198.18.98.5 54321 typ host generation 0",
                "a=candidate:2 1 udp 1686052607 203.0.113.5 54321 typ srflx raddr 198.18.98.5 rport 54321 generation 0",
                "a=end-of-candidates",
                "a=ice-ufrag:F7gI",
                "a=ice-pwd:x9cml/YzichV2+XlhiMu8g1k",
                "a=fingerprint:sha-256 3A:96:6D:57:B2:C2:C7:61:A0:46:3E:1C:97:39:D3:F7:0A:88:A0:B1:EC:03:FB:10:A5:5D:3A:37:AB:DD:02:AA",
                "a=setup:actpass",
                "a=mid:0",
                "a=sendrecv",
                "a=rtcp-mux",
                "a=rtpmap:111 opus/48000/2",
                "a=fmtp:111 minptime=10;useinbandfec=1",
                "a=rtpmap:0 PCMU/8000",
            ]),
        },
        Case {
            name: "ICE stripped at session and media level; rtcp-mux removed",
            input: crlf(WEBRTC),
            rewrite: Rewrite {
                strip_ice: true,
                ..rw(
                    RELAY4,
                    vec![media(40000, RELAY4, RtcpOut::Port(40001), false)],
                )
            },
            expected: crlf(&[
                "v=0",
                "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
                "s=-",
                "t=0 0",
                "a=group:BUNDLE 0",
                "a=msid-semantic: WMS",
                "m=audio 40000 UDP/TLS/RTP/SAVPF 111 0",
                "c=IN IP4 203.0.113.1",
                "a=rtcp:40001",
                "a=fingerprint:sha-256 3A:96:6D:57:B2:C2:C7:61:A0:46:3E:1C:97:39:D3:F7:0A:88:A0:B1:EC:03:FB:10:A5:5D:3A:37:AB:DD:02:AA",
                "a=setup:actpass",
                "a=mid:0",
                "a=sendrecv",
                "a=rtpmap:111 opus/48000/2",
                "a=fmtp:111 minptime=10;useinbandfec=1",
                "a=rtpmap:0 PCMU/8000",
            ]),
        },
        Case {
            name: "session-level and media-level c= both replaced",
            input: crlf(&[
                "v=0",
                "o=- 10 10 IN IP4 192.0.2.40",
                "s=-",
                "c=IN IP4 192.0.2.40",
                "t=0 0",
                "m=audio 8000 RTP/AVP 0",
                "c=IN IP4 192.0.2.41",
                "a=sendrecv",
            ]),
            rewrite: rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Omit, false)]),
            expected: crlf(&[
                "v=0",
                "o=- 10 10 IN IP4 192.0.2.40",
                "s=-",
                "c=IN IP4 203.0.113.1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0",
                "c=IN IP4 203.0.113.1",
                "a=sendrecv",
            ]),
        },
        Case {
            name: "IPv6 (c=IN IP6), LF kept, port-only a=rtcp replaced in place",
            input: lf(IPV6),
            rewrite: rw(RELAY6, vec![media(40000, RELAY6, RtcpOut::Port(40001), false)]),
            expected: lf(&[
                "v=0",
                "o=alice 2890844526 2890844526 IN IP6 2001:db8::10",
                "s=-",
                "c=IN IP6 2001:db8:ffff::1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0 101",
                "a=rtpmap:101 telephone-event/8000",
                "a=rtcp:40001",
            ]),
        },
        Case {
            name: "IPv6 full a=rtcp and a=rtcp-mux added with LF",
            input: lf(IPV6),
            rewrite: rw(
                RELAY6,
                vec![media(40000, RELAY6, RtcpOut::Full(40001, RELAY6), true)],
            ),
            expected: lf(&[
                "v=0",
                "o=alice 2890844526 2890844526 IN IP6 2001:db8::10",
                "s=-",
                "c=IN IP6 2001:db8:ffff::1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0 101",
                "a=rtpmap:101 telephone-event/8000",
                "a=rtcp:40001 IN IP6 2001:db8:ffff::1",
                "a=rtcp-mux",
            ]),
        },
        Case {
            name: "IPv4 SDP anchored on IPv6: c= and o= addrtype follow the address",
            input: crlf(SIPP),
            rewrite: Rewrite {
                replace_origin: true,
                ..rw(RELAY6, vec![media(40000, RELAY6, RtcpOut::Omit, false)])
            },
            expected: crlf(&[
                "v=0",
                "o=user1 53655765 2353687637 IN IP6 2001:db8:ffff::1",
                "s=-",
                "c=IN IP6 2001:db8:ffff::1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0",
                "a=rtpmap:0 PCMU/8000",
            ]),
        },
        Case {
            name: "o= replace_origin and origin_version (Asterisk)",
            input: crlf(ASTERISK),
            rewrite: Rewrite {
                replace_origin: true,
                origin_version: Some(1718273486),
                ..rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Omit, false)])
            },
            expected: crlf(&[
                "v=0",
                "o=- 1718273485 1718273486 IN IP4 203.0.113.1",
                "s=Asterisk",
                "c=IN IP4 203.0.113.1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0 8 101",
                "a=rtpmap:0 PCMU/8000",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-16",
                "a=ptime:20",
                "a=maxptime:150",
                "a=sendrecv",
            ]),
        },
        Case {
            name: "odd input: only the changed fields change (o= spacing, upper-case IPv6 in \
                   o=, empty line, x=, r=, a=RTCP, a=Rtcp-Mux, no trailing newline); \
                   rejected video left alone",
            input: ODD.to_owned(),
            rewrite: Rewrite {
                origin_version: Some(3),
                ..rw(
                    RELAY6,
                    vec![
                        media(40000, RELAY6, RtcpOut::Port(40001), true),
                        media(0, ip("2001:db8::1"), RtcpOut::Omit, false),
                    ],
                )
            },
            expected: "v=0\r\no=-  1  3 IN IP6 2001:DB8::1\r\ns=-\r\n\r\nc=IN IP6 2001:db8:ffff::1\r\nt=0 0\r\nx=unknown line\r\nm=audio 40000 RTP/AVP 0\r\nr=7d 1h 0 25h\r\na=rtcp:40001\r\na=Rtcp-Mux\r\nm=video 0 RTP/AVP 31\r\na=rtpmap:31 H261/90000"
                .to_owned(),
        },
        Case {
            name: "three m-lines (audio + video + image/udptl): i=, b=, k=, a=x-foo and \
                   directions untouched",
            input: crlf(EVERYTHING),
            rewrite: rw(
                RELAY4,
                vec![
                    media(40000, RELAY4, RtcpOut::Omit, false),
                    media(40002, RELAY4, RtcpOut::Omit, false),
                    media(40004, RELAY4, RtcpOut::Omit, false),
                ],
            ),
            expected: crlf(&[
                "v=0",
                "o=carol 100 7 IN IP4 192.0.2.30",
                "s=Call",
                "i=A call with everything",
                "c=IN IP4 203.0.113.1",
                "b=AS:256",
                "t=0 0",
                "a=sendonly",
                "a=x-foo:bar",
                "m=audio 40000 RTP/AVP 0 101",
                "i=voice",
                "b=TIAS:64000",
                "k=prompt",
                "a=rtpmap:0 PCMU/8000",
                "a=x-foo:baz",
                "m=video 40002 RTP/AVPF 96",
                "c=IN IP4 203.0.113.1",
                "b=AS:192",
                "a=rtpmap:96 H264/90000",
                "a=recvonly",
                "a=rtcp-fb:96 nack",
                "m=image 40004 udptl t38",
                "a=T38FaxVersion:0",
            ]),
        },
        Case {
            name: "two m-lines, T.38 re-INVITE: rejected audio (port 0) left alone, image \
                   anchored",
            input: crlf(T38),
            rewrite: rw(
                RELAY4,
                vec![
                    media(0, ip("192.0.2.10"), RtcpOut::Omit, false),
                    media(40004, RELAY4, RtcpOut::Omit, false),
                ],
            ),
            expected: crlf(&[
                "v=0",
                "o=- 1718273485 1718273487 IN IP4 192.0.2.10",
                "s=-",
                "c=IN IP4 203.0.113.1",
                "t=0 0",
                "m=audio 0 RTP/AVP 0",
                "m=image 40004 udptl t38",
                "a=T38FaxVersion:0",
                "a=T38MaxBitRate:14400",
                "a=T38FaxRateManagement:transferredTCF",
                "a=T38FaxMaxBuffer:200",
                "a=T38FaxMaxDatagram:200",
                "a=T38FaxUdpEC:t38UDPRedundancy",
            ]),
        },
        Case {
            name: "the relay rejects a stream: port 0 written, nothing else",
            input: crlf(SIPP),
            rewrite: rw(RELAY4, vec![media(0, RELAY4, RtcpOut::Omit, false)]),
            expected: crlf(&[
                "v=0",
                "o=user1 53655765 2353687637 IN IP4 192.0.2.1",
                "s=-",
                "c=IN IP4 203.0.113.1",
                "t=0 0",
                "m=audio 0 RTP/AVP 0",
                "a=rtpmap:0 PCMU/8000",
            ]),
        },
        Case {
            name: "hold via a=sendonly passes through",
            input: crlf(&[
                "v=0",
                "o=- 1718273485 1718273486 IN IP4 192.0.2.10",
                "s=Asterisk",
                "c=IN IP4 192.0.2.10",
                "t=0 0",
                "m=audio 17372 RTP/AVP 0 101",
                "a=rtpmap:0 PCMU/8000",
                "a=sendonly",
            ]),
            rewrite: rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Omit, false)]),
            expected: crlf(&[
                "v=0",
                "o=- 1718273485 1718273486 IN IP4 192.0.2.10",
                "s=Asterisk",
                "c=IN IP4 203.0.113.1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0 101",
                "a=rtpmap:0 PCMU/8000",
                "a=sendonly",
            ]),
        },
        Case {
            name: "hold via c=IN IP4 0.0.0.0 and a=inactive, passed through as 0.0.0.0 (LF)",
            input: lf(HOLD_ZERO),
            rewrite: rw(HOLD, vec![media(40000, HOLD, RtcpOut::Omit, false)]),
            expected: lf(&[
                "v=0",
                "o=- 1 2 IN IP4 192.0.2.10",
                "s=-",
                "c=IN IP4 0.0.0.0",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0",
                "a=inactive",
            ]),
        },
        Case {
            name: "hold written by the session layer: 0.0.0.0 is IN IP4, also in a media c=",
            input: crlf(&[
                "v=0",
                "o=- 10 11 IN IP6 2001:db8::40",
                "s=-",
                "c=IN IP6 2001:db8::40",
                "t=0 0",
                "m=audio 8000 RTP/AVP 0",
                "c=IN IP6 2001:db8::41",
            ]),
            rewrite: rw(HOLD, vec![media(40000, HOLD, RtcpOut::Omit, false)]),
            expected: crlf(&[
                "v=0",
                "o=- 10 11 IN IP6 2001:db8::40",
                "s=-",
                "c=IN IP4 0.0.0.0",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0",
                "c=IN IP4 0.0.0.0",
            ]),
        },
        Case {
            name: "a=rtcp replaced in place (full form to port only)",
            input: crlf(FREESWITCH),
            rewrite: rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Port(40001), false)]),
            expected: crlf(&[
                "v=0",
                "o=FreeSWITCH 1718250000 1718250001 IN IP4 198.51.100.20",
                "s=FreeSWITCH",
                "c=IN IP4 203.0.113.1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 9 0 8 101",
                "a=rtpmap:9 G722/8000",
                "a=rtpmap:0 PCMU/8000",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-16",
                "a=ptime:20",
                "a=rtcp:40001",
            ]),
        },
        Case {
            name: "a=rtcp full form replaced",
            input: crlf(FREESWITCH),
            rewrite: rw(
                RELAY4,
                vec![media(40000, RELAY4, RtcpOut::Full(40001, RELAY4), false)],
            ),
            expected: crlf(&[
                "v=0",
                "o=FreeSWITCH 1718250000 1718250001 IN IP4 198.51.100.20",
                "s=FreeSWITCH",
                "c=IN IP4 203.0.113.1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 9 0 8 101",
                "a=rtpmap:9 G722/8000",
                "a=rtpmap:0 PCMU/8000",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-16",
                "a=ptime:20",
                "a=rtcp:40001 IN IP4 203.0.113.1",
            ]),
        },
        Case {
            name: "a=rtcp removed",
            input: crlf(FREESWITCH),
            rewrite: rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Omit, false)]),
            expected: crlf(&[
                "v=0",
                "o=FreeSWITCH 1718250000 1718250001 IN IP4 198.51.100.20",
                "s=FreeSWITCH",
                "c=IN IP4 203.0.113.1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 9 0 8 101",
                "a=rtpmap:9 G722/8000",
                "a=rtpmap:0 PCMU/8000",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-16",
                "a=ptime:20",
            ]),
        },
        Case {
            name: "a=rtcp added after the last attribute",
            input: crlf(SIPP),
            rewrite: rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Port(40001), false)]),
            expected: crlf(&[
                "v=0",
                "o=user1 53655765 2353687637 IN IP4 192.0.2.1",
                "s=-",
                "c=IN IP4 203.0.113.1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0",
                "a=rtpmap:0 PCMU/8000",
                "a=rtcp:40001",
            ]),
        },
        Case {
            name: "a=rtcp and a=rtcp-mux both added, a=rtcp first (CRLF kept)",
            input: crlf(ASTERISK),
            rewrite: rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Port(40001), true)]),
            expected: crlf(&[
                "v=0",
                "o=- 1718273485 1718273485 IN IP4 192.0.2.10",
                "s=Asterisk",
                "c=IN IP4 203.0.113.1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0 8 101",
                "a=rtpmap:0 PCMU/8000",
                "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-16",
                "a=ptime:20",
                "a=maxptime:150",
                "a=sendrecv",
                "a=rtcp:40001",
                "a=rtcp-mux",
            ]),
        },
        Case {
            name: "attributes added after the last attribute that stays when ICE is stripped",
            input: crlf(&[
                "v=0",
                "o=- 1 1 IN IP4 192.0.2.50",
                "s=-",
                "c=IN IP4 192.0.2.50",
                "t=0 0",
                "a=ice-lite",
                "m=audio 9000 RTP/AVP 0",
                "a=rtpmap:0 PCMU/8000",
                "a=x-foo",
                "a=candidate:1 1 udp 2122260223 192.0.2.50 9000 typ host",
                "a=remote-candidates:1 192.0.2.60 9000",
                "a=ice-mismatch",
                "a=end-of-candidates",
            ]),
            rewrite: Rewrite {
                strip_ice: true,
                ..rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Port(40001), true)])
            },
            expected: crlf(&[
                "v=0",
                "o=- 1 1 IN IP4 192.0.2.50",
                "s=-",
                "c=IN IP4 203.0.113.1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0",
                "a=rtpmap:0 PCMU/8000",
                "a=x-foo",
                "a=rtcp:40001",
                "a=rtcp-mux",
            ]),
        },
        Case {
            name: "a=rtcp-mux removed, other attributes kept in order",
            input: crlf(&[
                "v=0",
                "o=- 1 1 IN IP4 192.0.2.50",
                "s=-",
                "c=IN IP4 192.0.2.50",
                "t=0 0",
                "m=audio 9000 RTP/AVP 0",
                "a=rtcp-mux",
                "a=rtpmap:0 PCMU/8000",
            ]),
            rewrite: rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Omit, false)]),
            expected: crlf(&[
                "v=0",
                "o=- 1 1 IN IP4 192.0.2.50",
                "s=-",
                "c=IN IP4 203.0.113.1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0",
                "a=rtpmap:0 PCMU/8000",
            ]),
        },
        Case {
            name: "media without c= whose address differs: c= inserted right after m=",
            input: crlf(SIPP),
            rewrite: rw(RELAY4, vec![media(40000, RELAY4_B, RtcpOut::Omit, false)]),
            expected: crlf(&[
                "v=0",
                "o=user1 53655765 2353687637 IN IP4 192.0.2.1",
                "s=-",
                "c=IN IP4 203.0.113.1",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0",
                "c=IN IP4 203.0.113.2",
                "a=rtpmap:0 PCMU/8000",
            ]),
        },
        Case {
            name: "media without c= whose address differs: c= inserted after the media's i=, \
                   before b= and k= (RFC 8866 field order); LF",
            input: lf(EVERYTHING),
            rewrite: rw(
                RELAY4,
                vec![
                    media(40000, RELAY6, RtcpOut::Omit, false),
                    media(40002, RELAY4, RtcpOut::Omit, false),
                    media(40004, RELAY4, RtcpOut::Omit, false),
                ],
            ),
            expected: lf(&[
                "v=0",
                "o=carol 100 7 IN IP4 192.0.2.30",
                "s=Call",
                "i=A call with everything",
                "c=IN IP4 203.0.113.1",
                "b=AS:256",
                "t=0 0",
                "a=sendonly",
                "a=x-foo:bar",
                "m=audio 40000 RTP/AVP 0 101",
                "i=voice",
                "c=IN IP6 2001:db8:ffff::1",
                "b=TIAS:64000",
                "k=prompt",
                "a=rtpmap:0 PCMU/8000",
                "a=x-foo:baz",
                "m=video 40002 RTP/AVPF 96",
                "c=IN IP4 203.0.113.1",
                "b=AS:192",
                "a=rtpmap:96 H264/90000",
                "a=recvonly",
                "a=rtcp-fb:96 nack",
                "m=image 40004 udptl t38",
                "a=T38FaxVersion:0",
            ]),
        },
        Case {
            name: "mixed line endings: untouched lines keep theirs, added ones take the \
                   first line's; attribute added after m= when there is none",
            input: MIXED.to_owned(),
            rewrite: rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Omit, true)]),
            expected: "v=0\r\no=- 5 5 IN IP4 192.0.2.5\ns=-\r\nc=IN IP4 203.0.113.1\nt=0 0\r\nm=audio 40000 RTP/AVP 8\na=rtcp-mux\r\n"
                .to_owned(),
        },
        Case {
            name: "no trailing newline: a line added at the end keeps it that way",
            input: "v=0\no=- 1 1 IN IP4 192.0.2.9\ns=-\nc=IN IP4 192.0.2.9\nt=0 0\nm=audio 9000 RTP/AVP 0\na=rtpmap:0 PCMU/8000".to_owned(),
            rewrite: rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Port(40001), false)]),
            expected: "v=0\no=- 1 1 IN IP4 192.0.2.9\ns=-\nc=IN IP4 203.0.113.1\nt=0 0\nm=audio 40000 RTP/AVP 0\na=rtpmap:0 PCMU/8000\na=rtcp:40001".to_owned(),
        },
        Case {
            name: "no trailing newline: removing the last line keeps it that way",
            input: "v=0\no=- 1 1 IN IP4 192.0.2.9\ns=-\nc=IN IP4 192.0.2.9\nt=0 0\nm=audio 9000 RTP/AVP 0\na=rtpmap:0 PCMU/8000\na=rtcp:9001".to_owned(),
            rewrite: rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Omit, false)]),
            expected: "v=0\no=- 1 1 IN IP4 192.0.2.9\ns=-\nc=IN IP4 203.0.113.1\nt=0 0\nm=audio 40000 RTP/AVP 0\na=rtpmap:0 PCMU/8000".to_owned(),
        },
        Case {
            name: "trailing empty line stays last; the attribute goes before it",
            input: "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\nm=audio 9000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n\r\n".to_owned(),
            rewrite: rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Omit, true)]),
            expected: "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=rtcp-mux\r\n\r\n".to_owned(),
        },
    ]
}

#[test]
fn rewrite_table() {
    for case in cases() {
        let Case {
            name,
            input,
            rewrite: rw,
            expected,
        } = case;
        let before = inspect(input.as_bytes()).unwrap_or_else(|e| panic!("{name}: input: {e}"));
        let output = rewrite(input.as_bytes(), &rw).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(String::from_utf8_lossy(&output), expected, "case: {name}");
        assert_reflects(&before, &rw, &output, name);
    }
}

/// Rewriting what was already rewritten with the same values changes
/// nothing: a re-INVITE through the relay yields the same SDP, so the
/// session layer can keep the o= version.
#[test]
fn rewrite_is_idempotent() {
    for case in cases() {
        let once = rewrite(case.input.as_bytes(), &case.rewrite).expect("first rewrite");
        let twice = rewrite(&once, &case.rewrite).expect("second rewrite");
        assert_eq!(once, twice, "case: {}", case.name);
    }
}
