//! Realistic SDP bodies the tests share. Documentation addresses only
//! (RFC 5737, RFC 3849).

/// Join lines with CRLF, each line terminated.
pub(super) fn crlf(lines: &[&str]) -> String {
    lines.iter().map(|line| format!("{line}\r\n")).collect()
}

/// Join lines with LF, each line terminated.
pub(super) fn lf(lines: &[&str]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

/// A SIPp `uac` scenario's offer: session-level c= only.
pub(super) const SIPP: &[&str] = &[
    "v=0",
    "o=user1 53655765 2353687637 IN IP4 192.0.2.1",
    "s=-",
    "c=IN IP4 192.0.2.1",
    "t=0 0",
    "m=audio 6000 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
];

/// An Asterisk (chan_pjsip) style offer.
pub(super) const ASTERISK: &[&str] = &[
    "v=0",
    "o=- 1718273485 1718273485 IN IP4 192.0.2.10",
    "s=Asterisk",
    "c=IN IP4 192.0.2.10",
    "t=0 0",
    "m=audio 17372 RTP/AVP 0 8 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "a=maxptime:150",
    "a=sendrecv",
];

/// A FreeSWITCH style offer with a full a=rtcp.
pub(super) const FREESWITCH: &[&str] = &[
    "v=0",
    "o=FreeSWITCH 1718250000 1718250001 IN IP4 198.51.100.20",
    "s=FreeSWITCH",
    "c=IN IP4 198.51.100.20",
    "t=0 0",
    "m=audio 24600 RTP/AVP 9 0 8 101",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "a=rtcp:24601 IN IP4 198.51.100.20",
];

/// A browser-ish offer: no session c=, ICE at session and media level,
/// rtcp-mux.
pub(super) const WEBRTC: &[&str] = &[
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0",
    "a=ice-options:trickle",
    "a=msid-semantic: WMS",
    "m=audio 54321 UDP/TLS/RTP/SAVPF 111 0",
    "c=IN IP4 203.0.113.5",
    "a=rtcp:9 IN IP4 0.0.0.0",
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
];

/// A T.38 re-INVITE: audio rejected, image/udptl offered (ITU-T T.38
/// Annex D).
pub(super) const T38: &[&str] = &[
    "v=0",
    "o=- 1718273485 1718273487 IN IP4 192.0.2.10",
    "s=-",
    "c=IN IP4 192.0.2.10",
    "t=0 0",
    "m=audio 0 RTP/AVP 0",
    "m=image 17374 udptl t38",
    "a=T38FaxVersion:0",
    "a=T38MaxBitRate:14400",
    "a=T38FaxRateManagement:transferredTCF",
    "a=T38FaxMaxBuffer:200",
    "a=T38FaxMaxDatagram:200",
    "a=T38FaxUdpEC:t38UDPRedundancy",
];

/// IPv6, LF line endings, port-only a=rtcp.
pub(super) const IPV6: &[&str] = &[
    "v=0",
    "o=alice 2890844526 2890844526 IN IP6 2001:db8::10",
    "s=-",
    "c=IN IP6 2001:db8::10",
    "t=0 0",
    "m=audio 49170 RTP/AVP 0 101",
    "a=rtpmap:101 telephone-event/8000",
    "a=rtcp:49171",
];

/// Three m-lines; i=, b=, k=, unknown attributes, a session-level
/// direction, a media-level c= on video.
pub(super) const EVERYTHING: &[&str] = &[
    "v=0",
    "o=carol 100 7 IN IP4 192.0.2.30",
    "s=Call",
    "i=A call with everything",
    "c=IN IP4 192.0.2.30",
    "b=AS:256",
    "t=0 0",
    "a=sendonly",
    "a=x-foo:bar",
    "m=audio 30000 RTP/AVP 0 101",
    "i=voice",
    "b=TIAS:64000",
    "k=prompt",
    "a=rtpmap:0 PCMU/8000",
    "a=x-foo:baz",
    "m=video 30002 RTP/AVPF 96",
    "c=IN IP4 192.0.2.31",
    "b=AS:192",
    "a=rtpmap:96 H264/90000",
    "a=recvonly",
    "a=rtcp-fb:96 nack",
    "m=image 30004 udptl t38",
    "a=T38FaxVersion:0",
];

/// RFC 2543 style hold: c= 0.0.0.0 and a=inactive. LF.
pub(super) const HOLD_ZERO: &[&str] = &[
    "v=0",
    "o=- 1 2 IN IP4 192.0.2.10",
    "s=-",
    "c=IN IP4 0.0.0.0",
    "t=0 0",
    "m=audio 17372 RTP/AVP 0",
    "a=inactive",
];

/// Things a regenerating writer would lose: double spaces in o=,
/// upper-case IPv6, an empty line, an unknown line type, r= inside a media
/// section, odd attribute-name case, no trailing newline.
pub(super) const ODD: &str = "v=0\r\no=-  1  2 IN IP6 2001:DB8::1\r\ns=-\r\n\r\nc=IN IP6 2001:DB8::1\r\nt=0 0\r\nx=unknown line\r\nm=audio 5000 RTP/AVP 0\r\nr=7d 1h 0 25h\r\na=RTCP:5001\r\na=Rtcp-Mux\r\nm=video 0 RTP/AVP 31\r\na=rtpmap:31 H261/90000";

/// Mixed line endings, no attributes at all.
pub(super) const MIXED: &str =
    "v=0\r\no=- 5 5 IN IP4 192.0.2.5\ns=-\r\nc=IN IP4 192.0.2.5\nt=0 0\r\nm=audio 7000 RTP/AVP 8\n";

/// Every corpus SDP, by name.
pub(super) fn all() -> Vec<(&'static str, String)> {
    vec![
        ("sipp", crlf(SIPP)),
        ("asterisk", crlf(ASTERISK)),
        ("freeswitch", crlf(FREESWITCH)),
        ("webrtc", crlf(WEBRTC)),
        ("t38", crlf(T38)),
        ("ipv6", lf(IPV6)),
        ("everything", crlf(EVERYTHING)),
        ("everything-lf", lf(EVERYTHING)),
        ("hold-zero", lf(HOLD_ZERO)),
        ("odd", ODD.to_owned()),
        ("mixed", MIXED.to_owned()),
    ]
}
