//! Malformed input: useful errors, and never a panic.

use super::{corpus::*, *};

/// SIPp's offer with line 6 (the m= line) replaced.
fn with_m_line(m_line: &str) -> String {
    let mut lines = SIPP.to_vec();
    lines[5] = m_line;
    crlf(&lines)
}

/// SIPp's offer with `extra` lines appended to its media section.
fn with_media_lines(extra: &[&str]) -> String {
    let mut lines = SIPP.to_vec();
    lines.extend_from_slice(extra);
    crlf(&lines)
}

fn error(sdp: &[u8]) -> SdpError {
    let error = inspect(sdp).expect_err("must be refused");
    // rewrite() validates the same way.
    let relay = rw(RELAY4, vec![media(40000, RELAY4, RtcpOut::Omit, false)]);
    let again = rewrite(sdp, &relay).expect_err("rewrite must refuse it too");
    assert_eq!(again.to_string(), error.to_string());
    let message = error.to_string();
    assert!(!message.contains('\n'), "one line: {message}");
    error
}

#[test]
fn errors_say_what_and_where() {
    assert!(matches!(error(b""), SdpError::Empty));
    assert!(matches!(error(b"\r\n\r\n"), SdpError::Empty));

    let e = error(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=\xff\r\n");
    assert!(
        matches!(e, SdpError::NotUtf8 { line: 3, column: 3 }),
        "{e:?}"
    );
    assert!(e.to_string().contains("not UTF-8"), "{e}");

    let e = error(crlf(&SIPP[1..]).as_bytes());
    assert!(matches!(e, SdpError::NoVersion { line: 1, .. }), "{e:?}");
    assert!(e.to_string().contains("v=0"), "{e}");
    let e = error(format!("\r\n{}", crlf(&SIPP[1..])).as_bytes());
    assert!(matches!(e, SdpError::NoVersion { line: 2, .. }), "{e:?}");

    let e = error(with_m_line("m=audio").as_bytes());
    assert!(matches!(e, SdpError::Parse { line: Some(6), .. }), "{e:?}");
    assert!(e.to_string().contains("line 6 `m=audio`"), "{e}");

    let e = error(with_m_line("m=audio sixthousand RTP/AVP 0").as_bytes());
    assert!(matches!(e, SdpError::Parse { line: Some(6), .. }), "{e:?}");
    assert!(e.to_string().contains("Media port"), "{e}");

    let e = error(with_m_line("m=audio 70000 RTP/AVP 0").as_bytes());
    assert!(matches!(e, SdpError::Parse { line: Some(6), .. }), "{e:?}");

    let e = error(with_m_line("m=audio 6000/2 RTP/AVP 0").as_bytes());
    assert!(
        matches!(
            e,
            SdpError::PortCount {
                line: 6,
                count: 2,
                ..
            }
        ),
        "{e:?}"
    );

    let e = error(
        crlf(&[
            "v=0",
            "s=-",
            "c=IN IP4 192.0.2.1",
            "t=0 0",
            "m=audio 6000 RTP/AVP 0",
        ])
        .as_bytes(),
    );
    assert!(matches!(e, SdpError::NoOrigin), "{e:?}");

    let mut lines = SIPP.to_vec();
    lines[3] = "c=IN IP4 pbx.example.com";
    let e = error(crlf(&lines).as_bytes());
    assert!(
        matches!(
            e,
            SdpError::Address {
                line: 4,
                problem: AddressProblem::NotIp { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("pbx.example.com"), "{e}");

    lines[3] = "c=IN IP4 2001:db8::1";
    let e = error(crlf(&lines).as_bytes());
    assert!(
        matches!(
            e,
            SdpError::Address {
                problem: AddressProblem::Family {
                    addrtype: "IP4",
                    ..
                },
                ..
            }
        ),
        "{e:?}"
    );

    lines[3] = "c=TN RFC2543 +15555550100";
    let e = error(crlf(&lines).as_bytes());
    assert!(
        matches!(
            e,
            SdpError::Address {
                problem: AddressProblem::NetType { .. },
                ..
            }
        ),
        "{e:?}"
    );

    lines[3] = "c=IN ATM 47.0005.80FFE1000000F00000000000000000000000.00";
    let e = error(crlf(&lines).as_bytes());
    assert!(
        matches!(
            e,
            SdpError::Address {
                problem: AddressProblem::AddrType { .. },
                ..
            }
        ),
        "{e:?}"
    );

    let e = error(with_media_lines(&["c=IN IP4 192.0.2.2", "c=IN IP4 192.0.2.3"]).as_bytes());
    assert!(
        matches!(
            e,
            SdpError::Duplicate {
                line: 9,
                what: "c= line",
                ..
            }
        ),
        "{e:?}"
    );

    let e = error(with_media_lines(&["a=rtcp:6001", "a=rtcp:6003"]).as_bytes());
    assert!(
        matches!(
            e,
            SdpError::Duplicate {
                line: 9,
                what: "a=rtcp attribute",
                ..
            }
        ),
        "{e:?}"
    );

    let e = error(with_media_lines(&["a=rtcp:port"]).as_bytes());
    assert!(matches!(e, SdpError::Rtcp { line: 8, .. }), "{e:?}");
    assert!(e.to_string().contains("a=rtcp"), "{e}");

    let e = error(with_media_lines(&["a=rtcp:6001 IN IP4 rtcp.example.com"]).as_bytes());
    assert!(matches!(e, SdpError::Address { line: 8, .. }), "{e:?}");

    // A long offending line is quoted, shortened.
    let long = format!("m=audio x RTP/AVP {}", "0 ".repeat(100));
    let e = error(with_m_line(&long).as_bytes());
    assert!(e.to_string().contains('…'), "{e}");
}

#[test]
fn wrong_number_of_media_rewrites() {
    let sdp = crlf(T38);
    for count in [0, 1, 3] {
        let relay = rw(
            RELAY4,
            vec![media(40000, RELAY4, RtcpOut::Omit, false); count],
        );
        let e = rewrite(sdp.as_bytes(), &relay).expect_err("count must match");
        assert!(
            matches!(e, SdpError::MediaCount { media: 2, rewrites } if rewrites == count),
            "{e:?}"
        );
        assert!(e.to_string().contains("2 m= lines"), "{e}");
    }
}

/// A rewrite the relay could ask for: everything on the relay, ICE
/// stripped, rtcp and mux flipped, version bumped.
fn relay_rewrite(info: &SdpInfo) -> Rewrite {
    Rewrite {
        replace_origin: true,
        origin_version: Some(info.origin_version.wrapping_add(1)),
        strip_ice: true,
        ..rw(
            RELAY4,
            info.media
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let rtcp = if m.rtcp.is_some() {
                        RtcpOut::Full(40001, RELAY6)
                    } else {
                        RtcpOut::Port(40001)
                    };
                    media(
                        if m.port == 0 {
                            0
                        } else {
                            40000 + 2 * u16::try_from(i).unwrap_or(0)
                        },
                        RELAY4,
                        rtcp,
                        !m.rtcp_mux,
                    )
                })
                .collect(),
        )
    }
}

/// Feed `sdp` through everything; panics only on a broken property.
/// Returns whether the SDP was accepted.
fn exercise(name: &str, sdp: &[u8]) -> bool {
    let Ok(info) = inspect(sdp) else {
        // Refused input is refused by rewrite too.
        let any = rw(RELAY4, vec![]);
        assert!(
            rewrite(sdp, &any).is_err(),
            "{name}: rewrite accepted what inspect refused"
        );
        return false;
    };
    if let Some(same) = identity(&info) {
        let out = rewrite(sdp, &same).unwrap_or_else(|e| panic!("{name}: identity: {e}"));
        assert_eq!(out, sdp, "{name}: identity rewrite changed the SDP");
    }
    let relay = relay_rewrite(&info);
    let out = rewrite(sdp, &relay).unwrap_or_else(|e| panic!("{name}: relay rewrite: {e}"));
    assert_reflects(&info, &relay, &out, name);
    let mut short = relay.clone();
    short.media.push(media(1, RELAY4, RtcpOut::Omit, false));
    assert!(rewrite(sdp, &short).is_err(), "{name}: count not checked");
    true
}

/// A deterministic stand-in for a fuzzer: every corpus SDP truncated at
/// every byte, and every byte deleted, duplicated, or replaced by bytes
/// that matter to SDP syntax. No panics, and wherever the mangled SDP is
/// still accepted the identity rewrite is still byte-identical and a
/// relay rewrite still reads back as asked.
#[test]
fn mangled_corpus_never_panics() {
    const REPLACEMENTS: &[u8] = b"\0\r\n =:/09m\xff";
    let (mut inputs, mut accepted) = (0usize, 0usize);
    let mut run = |name: &str, sdp: &[u8]| {
        inputs += 1;
        accepted += usize::from(exercise(name, sdp));
    };
    for (name, sdp) in all() {
        let bytes = sdp.as_bytes();
        for (at, &byte) in bytes.iter().enumerate() {
            run(name, &bytes[..at]);

            let mut deleted = bytes.to_vec();
            deleted.remove(at);
            run(name, &deleted);

            let mut doubled = bytes.to_vec();
            doubled.insert(at, byte);
            run(name, &doubled);

            for &replacement in REPLACEMENTS.iter().filter(|&&r| r != byte) {
                let mut replaced = bytes.to_vec();
                replaced[at] = replacement;
                run(name, &replaced);
            }
        }
    }
    // Both paths must have been exercised in earnest.
    assert!(inputs > 30_000, "only {inputs} inputs");
    assert!(
        accepted > inputs / 4 && accepted < inputs,
        "{accepted} of {inputs} accepted"
    );
    eprintln!("mangled corpus: {accepted} of {inputs} inputs accepted");
}

/// Some hand-made nasties.
#[test]
fn odd_inputs_never_panic() {
    let nasties: &[&[u8]] = &[
        b"v",
        b"v=",
        b"v=0",
        b"v=0\n",
        b"v=0\r",
        b"v=0\r\r\n",
        b"\n\n\nv=0\no=- 0 0 IN IP4 0.0.0.0",
        b"v=0\no=- 0 0 IN IP4 0.0.0.0\nm=a 1 b c",
        b"v=0\no=- 0 0 IN IP4 0.0.0.0\nm=a 1 b c\nc=IN IP4 1.2.3.4",
        b"v=0\no=- 0 0 IN IP4 0.0.0.0\nm=\xc3\xa9 1 b c",
        b"v=0\no=- 0 0 IN IP4 0.0.0.0\nm=a 1/ b c",
        b"v=0\no=- 0 0 IN IP4 0.0.0.0\nm=a 1/1 b c\nc=IN IP6 ::",
        b"v=0\no=- 18446744073709551615 18446744073709551615 IN IP4 h\nm=a 65535 b c\nc=IN IP4 1.2.3.4",
        b"v=0\no=- 0 0 IN IP4 0.0.0.0\nm=a 1 b c\nc=IN IP4 1.2.3.4\na=rtcp:",
        b"v=0\no=- 0 0 IN IP4 0.0.0.0\nm=a 1 b c\nc=IN IP4 1.2.3.4\na=rtcp:1 IN",
        b"v=0\no=- 0 0 IN IP4 0.0.0.0\nm=a 1 b c\nc=IN IP4 1.2.3.4\na=rtcp:1 IN IP4",
        b"v=0\no=- 0 0 IN IP4 0.0.0.0\nm=a 1 b c\nc=IN IP4 1.2.3.4\na=rtcp:1 IN IP4 1.2.3.4 x",
        b"v=0\no=- 0 0 IN IP4 0.0.0.0\nm=a 1 b c\nc=IN IP4 1.2.3.4/300",
        b"v=0\no=- 0 0 IN IP4 0.0.0.0\nm=a 1 b c\nc=IN IP6 ::1/2/3",
        b"v=0\no=- 0 0 IN IP4 0.0.0.0\nm=a 1 b c\nc=IN IP4 1.2.3.4\na=\na=:\na=:x",
        "v=0\no=ü 0 0 IN IP4 0.0.0.0\ns=ü…\nm=a 1 b c\nc=IN IP4 1.2.3.4\na=ü:…".as_bytes(),
    ];
    for (i, sdp) in nasties.iter().enumerate() {
        exercise(&format!("nasty {i}"), sdp);
    }
}

#[test]
fn announced_ssrcs_are_read_per_media_section() {
    let sdp = b"v=0\r\no=- 1 1 IN IP4 198.18.1.2\r\ns=-\r\nc=IN IP4 198.18.1.2\r\nt=0 0\r\n\
        m=audio 5000 RTP/AVP 0\r\na=ssrc:12345 cname:x\r\na=ssrc:12345 msid:y\r\na=SSRC:99\r\n\
        a=ssrc:notanumber cname:z\r\na=ssrc-group:FID 1 2\r\n\
        m=video 5002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";
    let info = inspect(sdp).unwrap();
    assert_eq!(info.media[0].ssrcs, vec![12345, 99]);
    assert!(info.media[1].ssrcs.is_empty());
}
