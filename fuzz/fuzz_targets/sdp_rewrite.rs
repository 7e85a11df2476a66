//! SDP: inspect, then rewrite three ways, checking what the rewrite
//! promises (media-user/src/sdp/mod.rs, "Lossless by construction").
//!
//! The input is one SDP body. Asserted, for whatever `inspect` accepts:
//! - identity: writing back what `inspect` reported gives the input,
//!   byte for byte;
//! - lossless: for two relay rewrites (IPv4 and IPv6, ICE stripped or
//!   kept, o= replaced or not, every `a=rtcp` form, rtcp-mux added and
//!   removed), every line the rewrite does not own — anything but `o=`,
//!   `c=`, `m=`, media-level `a=rtcp`/`a=rtcp-mux`, and ICE attributes —
//!   is in the output unchanged, in the same order, with its terminator;
//! - faithful: the output inspects, and reports exactly what was asked
//!   for (ports, addresses, RTCP, rtcp-mux, no ICE, the o= version) and
//!   what was not touched (media kinds, protocols, directions).
//!
//! Whatever `inspect` refuses, `rewrite` must refuse with the same error.

#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use media_user::sdp::{self, MediaRewrite, Rewrite, RtcpAttr, RtcpOut, SdpInfo};

const ICE: [&str; 9] = [
    "candidate",
    "remote-candidates",
    "ice-lite",
    "ice-mismatch",
    "ice-ufrag",
    "ice-pwd",
    "ice-pacing",
    "ice-options",
    "end-of-candidates",
];

/// A line and its terminator (`\r\n`, `\n` or none), split as the SDP
/// module splits.
fn lines(text: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match rest.iter().position(|&b| b == b'\n') {
            Some(at) => {
                let (line, eol) = if at > 0 && rest[at - 1] == b'\r' {
                    (&rest[..at - 1], &rest[at - 1..=at])
                } else {
                    (&rest[..at], &rest[at..=at])
                };
                out.push((line, eol));
                rest = &rest[at + 1..];
            }
            None => {
                out.push((rest, &b""[..]));
                rest = &[];
            }
        }
    }
    out
}

/// Lines a rewrite may change, remove or add.
fn owned(line: &[u8], media_level: bool) -> bool {
    match line {
        [b'o' | b'c' | b'm', b'=', ..] => true,
        [b'a', b'=', attribute @ ..] => {
            let name = attribute.split(|&b| b == b':').next().unwrap_or_default();
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            ICE.iter().any(|n| is(n)) || (media_level && (is("rtcp") || is("rtcp-mux")))
        }
        _ => false,
    }
}

/// The lines of `text` the rewrite does not own, in order.
fn kept(text: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut media_level = false;
    let mut out = Vec::new();
    for (line, eol) in lines(text) {
        media_level |= line.starts_with(b"m=");
        if !owned(line, media_level) {
            out.push((line, eol));
        }
    }
    out
}

fn assert_lossless(input: &[u8], output: &[u8], what: &str) {
    let mut before = kept(input);
    let mut after = kept(output);
    // An input without a final line end gives an output without one,
    // whatever line ends up last (sdp/rewrite.rs, `render`): when the
    // line removed was the last, an empty line before it has nothing
    // left to show. Empty lines at the end are not compared then.
    if !input.ends_with(b"\n") {
        for lines in [&mut before, &mut after] {
            while lines.last().is_some_and(|(text, _)| text.is_empty()) {
                lines.pop();
            }
        }
    }
    let show = |l: &[(&[u8], &[u8])]| {
        l.iter()
            .map(|(t, e)| {
                format!(
                    "{:?}{:?}",
                    String::from_utf8_lossy(t),
                    String::from_utf8_lossy(e)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        before.len(),
        after.len(),
        "{what}: lines not owned by the rewrite were added or dropped\nbefore:\n{}\nafter:\n{}",
        show(&before),
        show(&after)
    );
    let last = before.len().saturating_sub(1);
    for (i, ((t0, e0), (t1, e1))) in before.iter().zip(&after).enumerate() {
        assert_eq!(
            String::from_utf8_lossy(t0),
            String::from_utf8_lossy(t1),
            "{what}: line changed"
        );
        // Only the last line's terminator may follow the end of the
        // document (an unterminated input ends unterminated whatever line
        // is now last).
        if i != last && !e0.is_empty() && !e1.is_empty() {
            assert_eq!(
                e0,
                e1,
                "{what}: terminator of {:?} changed",
                String::from_utf8_lossy(t0)
            );
        }
    }
}

fn rtcp_out(rtcp: Option<RtcpAttr>) -> RtcpOut {
    match rtcp {
        None => RtcpOut::Omit,
        Some(RtcpAttr {
            port,
            address: None,
        }) => RtcpOut::Port(port),
        Some(RtcpAttr {
            port,
            address: Some(a),
        }) => RtcpOut::Full(port, a),
    }
}

/// Writing back what `inspect` read, if every stream has an address.
fn identity(info: &SdpInfo) -> Option<Rewrite> {
    let fallback = info
        .session_connection
        .or_else(|| info.media.iter().find_map(|m| m.connection))
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let media = info
        .media
        .iter()
        .map(|m| {
            let address = match m.connection {
                Some(a) => a,
                None if m.port == 0 => fallback,
                None => return None,
            };
            Some(MediaRewrite {
                port: m.port,
                address,
                rtcp: rtcp_out(m.rtcp),
                rtcp_mux: m.rtcp_mux,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Rewrite {
        media,
        session_address: info.session_connection.unwrap_or(fallback),
        replace_origin: false,
        origin_version: None,
        strip_ice: false,
    })
}

/// A relay's rewrite: `flavour` 0 is IPv4 with ICE stripped and o=
/// replaced, 1 is IPv6 keeping both; RTCP forms and rtcp-mux rotate over
/// the streams.
fn relay(info: &SdpInfo, flavour: usize) -> Rewrite {
    let address: IpAddr = if flavour == 0 {
        IpAddr::from([198, 18, 0, 1])
    } else {
        "2001:2::9".parse().expect("an IPv6 address")
    };
    let media = info
        .media
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // A rejected stream stays rejected (RFC 3264 §6).
            let port = if m.port == 0 {
                0
            } else {
                40000 + 2 * (i % 1000) as u16
            };
            MediaRewrite {
                port,
                address,
                rtcp: match (i + flavour) % 3 {
                    0 => RtcpOut::Omit,
                    1 => RtcpOut::Port(port.wrapping_add(1)),
                    _ => RtcpOut::Full(port.wrapping_add(1), address),
                },
                rtcp_mux: (i + flavour).is_multiple_of(2),
            }
        })
        .collect();
    Rewrite {
        media,
        session_address: address,
        replace_origin: flavour == 0,
        origin_version: (flavour == 0).then(|| info.origin_version.wrapping_add(1)),
        strip_ice: flavour == 0,
    }
}

fn assert_faithful(input: &SdpInfo, rw: &Rewrite, output: &[u8], what: &str) {
    let out = sdp::inspect(output).unwrap_or_else(|e| {
        panic!(
            "{what}: the rewritten SDP does not inspect: {e}\n{}",
            String::from_utf8_lossy(output)
        )
    });
    assert_eq!(
        out.origin_version,
        rw.origin_version.unwrap_or(input.origin_version),
        "{what}: o= version"
    );
    assert_eq!(
        out.session_connection,
        input.session_connection.map(|_| rw.session_address),
        "{what}: session c="
    );
    assert_eq!(out.media.len(), input.media.len(), "{what}: m= lines");
    for (i, ((before, after), asked)) in input
        .media
        .iter()
        .zip(&out.media)
        .zip(&rw.media)
        .enumerate()
    {
        let what = format!("{what}, stream {i}");
        assert_eq!(after.port, asked.port, "{what}: port");
        assert_eq!(
            (&after.kind, &after.protocol, after.direction),
            (&before.kind, &before.protocol, before.direction),
            "{what}: untouched fields"
        );
        if asked.port != 0 {
            assert_eq!(after.connection, Some(asked.address), "{what}: address");
        }
        assert_eq!(after.rtcp_mux, asked.rtcp_mux, "{what}: rtcp-mux");
        assert_eq!(rtcp_out(after.rtcp), asked.rtcp, "{what}: a=rtcp");
        if rw.strip_ice {
            assert!(!after.has_ice, "{what}: ICE left");
        } else {
            assert_eq!(after.has_ice, before.has_ice, "{what}: ICE");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let info = match sdp::inspect(data) {
        Ok(info) => info,
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "an error is one line: {e}");
            let any = Rewrite {
                media: Vec::new(),
                session_address: IpAddr::from([198, 18, 0, 1]),
                replace_origin: false,
                origin_version: None,
                strip_ice: false,
            };
            let again = sdp::rewrite(data, &any).expect_err("rewrite refuses what inspect refuses");
            assert_eq!(again.to_string(), e.to_string());
            return;
        }
    };
    if let Some(same) = identity(&info) {
        let out = sdp::rewrite(data, &same).expect("the identity rewrite applies");
        assert!(
            out == data,
            "writing back what inspect read changed the SDP:\n{:?}\n{:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&out)
        );
    }
    for flavour in 0..2 {
        let rw = relay(&info, flavour);
        let what = if flavour == 0 {
            "IPv4 relay"
        } else {
            "IPv6 relay"
        };
        let out = sdp::rewrite(data, &rw).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_lossless(data, &out, what);
        assert_faithful(&info, &rw, &out, what);
    }
});
