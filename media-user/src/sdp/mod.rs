//! SDP: read what the session layer needs from an endpoint's SDP
//! ([`inspect`]), and rewrite it so that media goes through the relay
//! ([`rewrite`]). I/O-free.
//!
//! # Lossless by construction
//!
//! The relay anchors media: every SDP passing through, offer or answer
//! (RFC 3264), gets the relay's address and ports instead of the other
//! endpoint's. Everything else must reach the far end exactly as sent —
//! attribute order, unknown lines, spacing, CRLF or LF, trailing newline —
//! because endpoints compare SDPs byte-wise (RFC 3264 §8: an unchanged o=
//! version promises an unchanged SDP) and because we cannot know which
//! oddities a peer depends on. So an SDP is never regenerated.
//!
//! `sdp-types`' writer does not round-trip real SDPs (see the test
//! `sdp_types_writer_is_not_lossless`): it always writes CRLF, collapses
//! runs of spaces, puts session-level fields into RFC 8866 order (a `c=`
//! written after `t=` moves before it) and drops every line it does not
//! model (unknown keys, `r=` inside a media section). We therefore use it
//! for what it is good at — validating the SDP and giving each line its
//! meaning — and edit the original text:
//!
//! 1. `text.rs` splits the input into lines exactly as `sdp-types` counts
//!    them, keeping each line's own terminator (`\r\n`, `\n` or none).
//! 2. `document.rs` parses the input with `sdp_types::Session::parse` and
//!    maps the model back onto the lines: the k-th `a=` line of a section
//!    is the k-th attribute `sdp-types` parsed for it, likewise `c=`; `m=`
//!    lines open sections. Counts are cross-checked, so a disagreement is
//!    an error, never a silent misedit. What the relay needs (addresses,
//!    `a=rtcp`, directions, ICE) is validated here, once.
//! 3. `rewrite.rs` plans per-line edits (keep, replace, remove,
//!    insert after) and renders them. A line is only regenerated when its
//!    meaning changes: writing back the values [`inspect`] reported leaves
//!    the input byte-for-byte intact, even for `c=IN IP6 2001:DB8::1` or
//!    an `o=` with double spaces. Changed lines keep their own terminator;
//!    added lines use the first line's (`\r\n` if it has none).
//!
//! # Choices the session layer should know
//!
//! - Only IN IP4 / IN IP6 literal addresses are accepted in `c=` and
//!   `a=rtcp` (a host name cannot be anchored); a media description with
//!   several `c=` lines, several `a=rtcp` lines or `m=` port counts
//!   (`49170/2`, RFC 8866 §5.14) is refused with [`SdpError`].
//! - The `o=` line is required (RFC 8866 §5.2): its sess-version is how
//!   the session layer sees that an SDP changed.
//! - For a stream written with port 0 (rejected, RFC 3264 §6) no `c=` is
//!   ever *added*: its address is not significant and adding one would
//!   only leak the original peer's. An existing `c=` is still written.
//! - `a=rtcp` and `a=rtcp-mux` count at media level only (RFC 3605 §2.1,
//!   RFC 5761 §5.1.1); session-level copies are left as they are.
//! - Attribute names match case-insensitively, as in `sdp-types`.

use std::net::IpAddr;

mod document;
mod error;
mod inspect;
mod rewrite;
mod text;

#[cfg(test)]
mod tests;

pub use error::{AddressProblem, SdpError};

/// Media direction attribute (RFC 8866 §6.7; hold: RFC 3264 §8.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// What the session layer reads from an SDP body.
#[derive(Clone, Debug, PartialEq)]
pub struct SdpInfo {
    /// o= sess-version.
    pub origin_version: u64,
    /// Session-level c= address, if any.
    pub session_connection: Option<IpAddr>,
    /// One per m= line, in order.
    pub media: Vec<MediaInfo>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MediaInfo {
    /// m= media type: "audio", "video", "image", "application", ...
    pub kind: String,
    /// m= port; 0 = rejected/disabled stream (RFC 3264 §6).
    pub port: u16,
    /// m= proto: "RTP/AVP", "RTP/SAVP", "RTP/AVPF", "udptl", "UDP/TLS/RTP/SAVPF", ...
    pub protocol: String,
    /// RTP clock rate (Hz) of the first payload format of the m= line (the
    /// one the offerer prefers): its `a=rtpmap`, or RFC 3551's rate for a
    /// static payload type; `None` when unknown (a dynamic type without
    /// rtpmap, non-RTP media). Jitter is measured in its units.
    pub clock_rate: Option<u32>,
    /// Media-level c= address, else the session-level one. 0.0.0.0 (RFC 2543 hold) is reported as is.
    pub connection: Option<IpAddr>,
    /// a=rtcp (RFC 3605), media level.
    pub rtcp: Option<RtcpAttr>,
    /// a=rtcp-mux present (RFC 5761).
    pub rtcp_mux: bool,
    /// Media-level direction attribute, else session-level, else SendRecv.
    pub direction: Direction,
    /// Any ICE attribute present (a=candidate, ice-ufrag, ice-pwd, ice-options, ice-lite, remote-candidates, end-of-candidates, ice-mismatch) at media or session level.
    ///
    /// `ice-pacing` (RFC 8839 §5.5) counts too.
    pub has_ice: bool,
    /// SSRCs the media section announces (`a=ssrc`, RFC 5576 §4.1): port
    /// sharing attributes packets from a new source by them.
    pub ssrcs: Vec<u32>,
}

/// An `a=rtcp` attribute (RFC 3605 §2.1). Without an address, RTCP goes
/// to the media's connection address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcpAttr {
    pub port: u16,
    pub address: Option<IpAddr>,
}

/// Parse and validate; never panics; errors say what is wrong (which line).
///
/// # Errors
///
/// [`SdpError`] when the body is not a valid SDP (RFC 8866) or holds
/// something the relay cannot anchor (see the module documentation).
pub fn inspect(sdp: &[u8]) -> Result<SdpInfo, SdpError> {
    let document = document::Document::parse(sdp)?;
    Ok(inspect::info(&document))
}

/// How to rewrite an SDP.
#[derive(Clone, Debug, PartialEq)]
pub struct Rewrite {
    /// Exactly one per m= line, in order (else SdpError).
    pub media: Vec<MediaRewrite>,
    /// Written to the session-level c= line when the SDP has one.
    pub session_address: IpAddr,
    /// Also replace the o= line's unicast-address (and its addrtype) with `session_address`.
    pub replace_origin: bool,
    /// Some(v): write v as the o= sess-version (the session layer increments it when the SDP it sends changed, RFC 3264 §8).
    pub origin_version: Option<u64>,
    /// Remove every ICE attribute (session and media level).
    pub strip_ice: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MediaRewrite {
    /// m= port to write. 0 for a rejected stream (then nothing else about this media is changed except what `address`/`rtcp`/`rtcp_mux` say—in practice the session layer passes the original values back).
    ///
    /// With port 0 a missing media-level c= is never added (see the module
    /// documentation).
    pub port: u16,
    /// Connection address for this media. Write it in the media-level c= (replacing an existing one). If the media has no c= of its own: if the session-level c= will carry the same address, add nothing; otherwise add a media-level c= right after the m= line's i= (if any) / right after the m= line, per RFC 8866 field order (m, i, c, b, k, a). IN IP4 vs IN IP6 follows the address family; 0.0.0.0 is written as IN IP4 0.0.0.0.
    pub address: IpAddr,
    pub rtcp: RtcpOut,
    /// Whether a=rtcp-mux appears in the output for this media (add it after the last existing attribute of the media if missing; remove it if present and false).
    pub rtcp_mux: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtcpOut {
    /// No a=rtcp line (remove an existing one).
    Omit,
    /// a=rtcp:<port>   (replace an existing a=rtcp, or add one).
    Port(u16),
    /// a=rtcp:<port> IN IP4|IP6 <addr>
    Full(u16, IpAddr),
}

/// Rewrite `sdp` as `rw` says, copying every line it does not need to
/// change verbatim. Never panics.
///
/// # Errors
///
/// Everything [`inspect`] refuses, and [`SdpError::MediaCount`] when `rw`
/// does not have exactly one [`MediaRewrite`] per `m=` line.
pub fn rewrite(sdp: &[u8], rw: &Rewrite) -> Result<Vec<u8>, SdpError> {
    let document = document::Document::parse(sdp)?;
    rewrite::apply(&document, rw)
}
