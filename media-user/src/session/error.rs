//! Why an ng command failed.
//!
//! This enum is the one place where a failure becomes ng text: its
//! `Display` is the `error-reason` of the reply (`Engine::handle` sends
//! `to_string()`, nothing else does). Controllers and tests match on these
//! strings (several are rtpengine's own wording), so they are part of the
//! protocol: change a message only on purpose.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use crate::sdp::SdpError;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("No media interfaces configured")]
    NoInterfaces,
    /// `direction`, `from-interface` or `to-interface` named none of ours.
    #[error("Unknown interface '{name}'")]
    UnknownInterface { name: String },
    #[error("Interface '{interface}' has no usable address")]
    NoUsableAddress { interface: String },
    /// `advertise = "stun"` and no STUN server has answered yet: the
    /// relay does not know what address to tell peers.
    #[error("public address not yet known")]
    PublicAddressUnknown { interface: String },
    /// `address family` asked for a family the interface has no address of.
    #[error("Interface '{interface}' has no {family} address")]
    NoAddressOfFamily {
        interface: String,
        family: &'static str,
    },
    #[error("Failed to parse SDP: {source}")]
    SdpParse { source: SdpError },
    #[error("Failed to rewrite SDP: {source}")]
    SdpRewrite { source: SdpError },
    /// An `answer` without `to-tag`.
    #[error("Missing to-tag")]
    MissingToTag,
    #[error("Unknown call-id")]
    UnknownCallId,
    #[error("Unknown from-tag")]
    UnknownFromTag,
    /// An `answer` for a party that was never offered to.
    #[error("No offer to answer")]
    NoOffer,
    #[error("Answer has {answer} media sections, the offer had {offer}")]
    AnswerMediaCount { answer: usize, offer: usize },
    /// RFC 3264 §8: m= lines may be added, never removed.
    #[error("SDP has {sdp} media sections, {negotiated} were negotiated before")]
    MediaSectionsRemoved { sdp: usize, negotiated: usize },
    /// More m= lines than `max-media` in one SDP.
    #[error("SDP has {count} media sections, at most {max} are allowed")]
    TooManyMedia { count: usize, max: usize },
    /// More media over all of a call's parties than twice `max-media`.
    #[error("The call would have {total} media sections, at most {max} are allowed")]
    CallMediaLimit { total: usize, max: usize },
    /// A party paired with itself would get its own media back.
    #[error("From-tag and to-tag are the same")]
    SameTags,
    /// The to-tag names a party in dialogue with another one.
    #[error("Tag '{tag}' is in a dialogue with another party")]
    OtherDialogue { tag: String },
    /// The SDP's m= lines and the call's media of a party disagree.
    #[error("SDP has {sdp} media sections, the call has {party} for this party")]
    MediaCountMismatch { sdp: usize, party: usize },
    /// Every port pair of the range is leased (or held by another process).
    #[error("Ran out of ports")]
    PortsExhausted { local: IpAddr },
    /// Binding failed for a reason that is not the port's: out of file
    /// descriptors, of memory.
    #[error("Cannot open media ports: {reason}")]
    PortsUnavailable { reason: String },
    /// Port sharing: the answerer's media endpoint is already another
    /// stream's on the shared pair its side was given at the offer.
    #[error(
        "media endpoint {remote} is already used by another call on shared port {port}: re-offer the call (a new shared port is chosen)"
    )]
    SharedEndpointTaken { port: u16, remote: SocketAddr },
    /// Port sharing: an asymmetric stream accepts any source, which a
    /// shared port cannot tell from other calls' media.
    #[error(
        "asymmetric media cannot be relayed with port-sharing (a shared port tells calls apart by their sources): drop the asymmetric flag"
    )]
    AsymmetricShared,
    /// A call-id starting with NUL: no SIP Call-ID does, and the engine's
    /// own records are kept under such ids.
    #[error("Invalid call-id")]
    ReservedCallId,
    /// The final report of an ended call no longer decodes.
    #[error("the final report of this call is unreadable")]
    ReportUnreadable,
    /// Internal: the call disappeared while a command was handled.
    #[error("call vanished")]
    CallVanished,
    /// Internal: a party without the other party of its dialogue.
    #[error("no peer")]
    NoPeer,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `error-reason` texts, as controllers see them.
    #[test]
    fn error_reasons_are_stable() {
        let sdp = || SdpError::Empty;
        let table = [
            (CommandError::NoInterfaces, "No media interfaces configured"),
            (
                CommandError::UnknownInterface {
                    name: "nope".into(),
                },
                "Unknown interface 'nope'",
            ),
            (
                CommandError::NoUsableAddress {
                    interface: "pbx".into(),
                },
                "Interface 'pbx' has no usable address",
            ),
            (
                CommandError::NoAddressOfFamily {
                    interface: "pbx".into(),
                    family: "IPv6",
                },
                "Interface 'pbx' has no IPv6 address",
            ),
            (
                CommandError::SdpParse { source: sdp() },
                "Failed to parse SDP: the SDP body is empty",
            ),
            (
                CommandError::SdpRewrite { source: sdp() },
                "Failed to rewrite SDP: the SDP body is empty",
            ),
            (
                CommandError::PublicAddressUnknown {
                    interface: "carrier".into(),
                },
                "public address not yet known",
            ),
            (CommandError::MissingToTag, "Missing to-tag"),
            (CommandError::UnknownCallId, "Unknown call-id"),
            (CommandError::UnknownFromTag, "Unknown from-tag"),
            (CommandError::NoOffer, "No offer to answer"),
            (
                CommandError::AnswerMediaCount {
                    answer: 1,
                    offer: 2,
                },
                "Answer has 1 media sections, the offer had 2",
            ),
            (
                CommandError::MediaSectionsRemoved {
                    sdp: 1,
                    negotiated: 2,
                },
                "SDP has 1 media sections, 2 were negotiated before",
            ),
            (
                CommandError::PortsExhausted {
                    local: "198.18.1.1".parse().unwrap(),
                },
                "Ran out of ports",
            ),
            (
                CommandError::PortsUnavailable {
                    reason: "Too many open files (os error 24)".into(),
                },
                "Cannot open media ports: Too many open files (os error 24)",
            ),
            (
                CommandError::ReportUnreadable,
                "the final report of this call is unreadable",
            ),
            (
                CommandError::TooManyMedia { count: 17, max: 16 },
                "SDP has 17 media sections, at most 16 are allowed",
            ),
            (
                CommandError::CallMediaLimit { total: 34, max: 32 },
                "The call would have 34 media sections, at most 32 are allowed",
            ),
            (CommandError::SameTags, "From-tag and to-tag are the same"),
            (
                CommandError::OtherDialogue { tag: "D".into() },
                "Tag 'D' is in a dialogue with another party",
            ),
            (
                CommandError::MediaCountMismatch { sdp: 3, party: 1 },
                "SDP has 3 media sections, the call has 1 for this party",
            ),
            (CommandError::ReservedCallId, "Invalid call-id"),
            (CommandError::CallVanished, "call vanished"),
            (CommandError::NoPeer, "no peer"),
        ];
        for (error, text) in table {
            assert_eq!(error.to_string(), text, "{error:?}");
        }
    }
}
