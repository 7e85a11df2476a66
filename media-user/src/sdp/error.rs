//! Why an SDP body was refused. Each message names the line (1-based, as
//! an editor counts, empty lines included) and quotes the start of it, so
//! an operator can find it in a SIP trace.

use std::net::IpAddr;

use sdp_types::{AttributeError, ConnectionAddressError, ParserError};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("the SDP body is empty")]
    Empty,
    #[error("the SDP is not UTF-8 text (line {line}, byte {column} of the line; RFC 8866 §5)")]
    NotUtf8 { line: usize, column: usize },
    #[error("SDP line {line} `{text}`: an SDP must start with v=0 (RFC 8866 §5.1)")]
    NoVersion { line: usize, text: String },
    #[error("{}: {source}", location(.line, .text))]
    Parse {
        /// The offending line, when the parser names one.
        line: Option<usize>,
        text: String,
        #[source]
        source: ParserError,
    },
    #[error("the SDP has no o= line (RFC 8866 §5.2); the relay needs its sess-version")]
    NoOrigin,
    #[error("SDP line {line} `{text}`: {problem}")]
    Address {
        line: usize,
        text: String,
        #[source]
        problem: AddressProblem,
    },
    #[error("SDP line {line} `{text}`: invalid a=rtcp (RFC 3605 §2.1): {source}")]
    Rtcp {
        line: usize,
        text: String,
        #[source]
        source: AttributeError,
    },
    #[error(
        "SDP line {line} `{text}`: a second {what} in the same media description; the relay \
         cannot tell which one applies"
    )]
    Duplicate {
        line: usize,
        text: String,
        what: &'static str,
    },
    #[error(
        "SDP line {line} `{text}`: {count} ports for one stream (RFC 8866 §5.14) are not \
         supported; the relay anchors one port per stream"
    )]
    PortCount {
        line: usize,
        text: String,
        count: u16,
    },
    #[error(
        "the SDP has {media} m= lines but the rewrite describes {rewrites}; pass exactly one \
         MediaRewrite per m= line, in order"
    )]
    MediaCount { media: usize, rewrites: usize },
    #[error(
        "SDP line {line}: the line scanner and sdp-types disagree about this line; this is a \
         media-relay bug, please report it with the SDP"
    )]
    Inconsistent { line: usize },
}

/// What is wrong with an address in `c=` or `a=rtcp` (RFC 8866 §5.7,
/// RFC 3605 §2.1) for a relay that must send packets to it.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AddressProblem {
    #[error("network type {nettype:?} is not IN; the relay only handles Internet addresses")]
    NetType { nettype: String },
    #[error("address type {addrtype:?} is neither IP4 nor IP6")]
    AddrType { addrtype: String },
    #[error("{source}; the relay needs an IP address literal, not a host name")]
    NotIp {
        #[source]
        source: ConnectionAddressError,
    },
    #[error("{address} is not an {addrtype} address")]
    Family {
        addrtype: &'static str,
        address: IpAddr,
    },
}

/// "SDP line N `text`" for a parser error that names a line.
#[expect(
    clippy::ref_option,
    reason = "thiserror's format arguments pass fields by reference"
)]
fn location(line: &Option<usize>, text: &str) -> String {
    match *line {
        Some(line) => format!("SDP line {line} `{text}`"),
        None => "invalid SDP".to_owned(),
    }
}

/// The start of a line, for quoting it in a one-line error message.
pub(super) fn excerpt(text: &str) -> String {
    const MAX: usize = 60;
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(MAX).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}
