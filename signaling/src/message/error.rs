//! Why bytes were not accepted as a SIP message. Every variant renders as
//! one line that names what is wrong and, where the input is quoted, an
//! excerpt of it (Debug-escaped, so a hostile message cannot forge log
//! lines).

use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("empty message")]
    Empty,
    #[error("message of {size} bytes exceeds the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("message ends before the empty line that closes its headers (RFC 3261 §7)")]
    Truncated,
    #[error(
        "message on a stream has no Content-Length; it is mandatory there to find where the \
         message ends (RFC 3261 §18.3)"
    )]
    NoContentLength,
    #[error("Content-Length {value:?} is not a decimal byte count (RFC 3261 §20.14)")]
    BadContentLength { value: String },
    #[error(
        "Content-Length is {content_length} but only {body} body bytes arrived (RFC 3261 §18.3)"
    )]
    BodyShorterThanContentLength { content_length: usize, body: usize },
    #[error("the stream does not carry SIP: it starts with {excerpt:?}")]
    NotSip { excerpt: String },
    #[error("bad start line {line:?}: {problem} (RFC 3261 §7.1, §7.2)")]
    StartLine { line: String, problem: &'static str },
    #[error("SIP version {version:?} is not supported: only SIP/2.0 (RFC 3261 §7.1)")]
    BadVersion { version: String },
    #[error("URI {uri:?} has an unsupported scheme: only sip: and sips: (RFC 3261 §8.2.2.1)")]
    UnsupportedUriScheme { uri: String },
    #[error("bad URI {uri:?}: {problem} (RFC 3261 §19.1)")]
    BadUri { uri: String, problem: &'static str },
    #[error("control byte 0x{byte:02x} at offset {offset} of the header section (RFC 3261 §25.1)")]
    ControlInHeaders { byte: u8, offset: usize },
    #[error("the header section is not UTF-8 (RFC 3261 §7.3.1)")]
    NotUtf8Headers,
    #[error("header line without a colon: {line:?} (RFC 3261 §7.3.1)")]
    HeaderWithoutColon { line: String },
    #[error("bad header name {name:?}: it must be a token (RFC 3261 §7.3.1)")]
    BadHeaderName { name: String },
    #[error("continuation line {line:?} follows no header (RFC 3261 §7.3.1)")]
    OrphanContinuation { line: String },
    #[error("missing mandatory header {name} (RFC 3261 §8.1.1)")]
    MissingHeader { name: &'static str },
    #[error("header {name} appears more than once; it must be single (RFC 3261 §7.3.1)")]
    DuplicateHeader { name: &'static str },
    #[error("bad {name} header {value:?}: {problem}")]
    BadHeader {
        name: String,
        value: String,
        problem: &'static str,
    },
    #[error(
        "CSeq method {cseq_method} differs from the request method {method} (RFC 3261 §8.1.1.5)"
    )]
    CSeqMethodMismatch { method: String, cseq_method: String },
    #[error("a response has no Request-URI to set")]
    NotARequest,
    #[error(
        "Method::Other does not say which extension method to write; build the request as text \
         and parse it"
    )]
    UnnamedMethod,
}

impl MessageError {
    /// The status a server answers a request that failed this way with:
    /// 505 for the version (RFC 3261 §21.5.6), 416 for a URI scheme
    /// (§8.2.2.1), 513 for the size (§21.5.7), 400 otherwise (§18.3).
    /// Only meaningful when enough of the request is intact to answer it
    /// at all (see [`Message::rejection`](super::Message::rejection)).
    pub fn response_status(&self) -> (u16, &'static str) {
        match self {
            Self::BadVersion { .. } => (505, "Version Not Supported"),
            Self::UnsupportedUriScheme { .. } => (416, "Unsupported URI Scheme"),
            Self::TooLarge { .. } => (513, "Message Too Large"),
            _ => (400, "Bad Request"),
        }
    }
}

/// The start of some input, for quoting it in a one-line error: at most
/// 80 characters, cut on a character boundary.
pub(super) fn excerpt(text: &str) -> String {
    const MAX: usize = 80;
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(MAX).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// [`excerpt`] for bytes that may not be text.
pub(super) fn excerpt_bytes(bytes: &[u8]) -> String {
    excerpt(&String::from_utf8_lossy(&bytes[..bytes.len().min(80)]))
}
