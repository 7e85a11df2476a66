//! Tests of the SDP module: the rewrite table, the inspect table,
//! losslessness over the corpus, error messages, and no panics on mangled
//! input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

mod corpus;
mod inspect_table;
mod lossless;
mod rewrite_table;
mod robustness;
mod seeds;

/// The relay's addresses in the tests.
const RELAY4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
const RELAY4_B: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2));
const RELAY6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1));
const HOLD: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn media(port: u16, address: IpAddr, rtcp: RtcpOut, rtcp_mux: bool) -> MediaRewrite {
    MediaRewrite {
        port,
        address,
        rtcp,
        rtcp_mux,
    }
}

/// A rewrite that changes no o= field and keeps ICE.
fn rw(session_address: IpAddr, media: Vec<MediaRewrite>) -> Rewrite {
    Rewrite {
        media,
        session_address,
        replace_origin: false,
        origin_version: None,
        strip_ice: false,
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
            address: Some(address),
        }) => RtcpOut::Full(port, address),
    }
}

/// The rewrite that writes back exactly what `inspect` reported; `None`
/// when an active stream has no address at all (invalid SDP: nothing to
/// write back).
fn identity(info: &SdpInfo) -> Option<Rewrite> {
    let fallback = info
        .session_connection
        .or_else(|| info.media.iter().find_map(|m| m.connection))
        .unwrap_or(HOLD);
    let media = info
        .media
        .iter()
        .map(|m| {
            let address = match m.connection {
                Some(address) => address,
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
    Some(rw(info.session_connection.unwrap_or(fallback), media))
}

/// What `inspect` must read back from the output of `rewrite(input, rw)`.
fn assert_reflects(input: &SdpInfo, rw: &Rewrite, output: &[u8], name: &str) {
    let out = match inspect(output) {
        Ok(out) => out,
        Err(error) => panic!(
            "{name}: rewrite produced an SDP that does not inspect: {error}\n{}",
            String::from_utf8_lossy(output)
        ),
    };
    assert_eq!(out.media.len(), rw.media.len(), "{name}: media count");
    if let Some(version) = rw.origin_version {
        assert_eq!(out.origin_version, version, "{name}: o= version");
    } else {
        assert_eq!(
            out.origin_version, input.origin_version,
            "{name}: o= version"
        );
    }
    if input.session_connection.is_some() {
        assert_eq!(
            out.session_connection,
            Some(rw.session_address),
            "{name}: session c="
        );
    }
    for (i, (got, want)) in out.media.iter().zip(&rw.media).enumerate() {
        assert_eq!(got.port, want.port, "{name}: media {i} port");
        if want.port != 0 {
            assert_eq!(got.connection, Some(want.address), "{name}: media {i} c=");
        }
        assert_eq!(rtcp_out(got.rtcp), want.rtcp, "{name}: media {i} a=rtcp");
        assert_eq!(got.rtcp_mux, want.rtcp_mux, "{name}: media {i} a=rtcp-mux");
        if rw.strip_ice {
            assert!(!got.has_ice, "{name}: media {i} still has ICE");
        }
        let before = &input.media[i];
        assert_eq!(
            (&got.kind, &got.protocol, got.direction),
            (&before.kind, &before.protocol, before.direction),
            "{name}: media {i} changed what it should not"
        );
    }
}
