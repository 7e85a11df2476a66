//! [`SdpInfo`] from a validated [`Document`]: the inheritance rules of
//! RFC 8866 applied.

use super::{
    Direction, MediaInfo, SdpInfo,
    document::{Attr, Document},
};

pub(super) fn info(document: &Document<'_>) -> SdpInfo {
    let session = &document.session;
    let session_connection = session.connection.map(|c| c.value);
    let session_ice = session.has(Attr::Ice);
    SdpInfo {
        origin_version: document.origin.version,
        session_connection,
        media: document
            .media
            .iter()
            .map(|media| {
                let own = &media.section;
                MediaInfo {
                    kind: media.kind.clone(),
                    port: media.port,
                    protocol: media.protocol.clone(),
                    clock_rate: media.clock_rate,
                    // RFC 8866 §5.7: a media-level c= overrides the session's.
                    connection: own.connection.map(|c| c.value).or(session_connection),
                    rtcp: own.rtcp().map(|rtcp| rtcp.value),
                    rtcp_mux: own.has(Attr::RtcpMux),
                    // RFC 8866 §6.7: a session-level direction is the default
                    // for every media; without any, sendrecv.
                    direction: own
                        .direction()
                        .or(session.direction())
                        .unwrap_or(Direction::SendRecv),
                    // RFC 8839 §5: ice-lite, ice-options, ice-ufrag/pwd may be
                    // session-level and then apply to every media.
                    has_ice: session_ice || own.has(Attr::Ice),
                    ssrcs: media.ssrcs.clone(),
                }
            })
            .collect(),
    }
}
