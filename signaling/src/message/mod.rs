//! SIP messages: framing, parsing, accessors and the edits a proxy makes
//! (RFC 3261 §7, §16.6, §16.7, §18.3). I/O-free.
//!
//! # Representation
//!
//! A [`Message`] is its start line, its header fields as an ordered list
//! of `(name, value)` pairs, and its body bytes — close to the wire, so
//! that what a proxy does not understand it forwards untouched and in
//! order (§16.6: a proxy changes only what it must). Each field is one
//! value after unfolding (§7.3.1), under the header's full name (compact
//! forms are accepted on input, §7.3.3). Via, Route and Record-Route
//! values joined by commas are stored as one field per value, because a
//! proxy pushes and pops them one at a time; they are written back one
//! per line, which §7.3.1 defines as equivalent.
//!
//! Content-Length is always exactly the body's length: on input it cuts
//! the body (§18.3), and the message keeps one Content-Length field that
//! every body change rewrites (one is added when the input had none).
//! So `parse(to_bytes(m)) == m` for any parsed message, and stays so
//! through the proxy's edits (the robustness tests check both on ~200 000
//! mutated inputs).
//!
//! rsip 0.4 provides the types the rest of the crate sees ([`rsip::Uri`]
//! for the Request-URI and for Route / Record-Route / Contact URIs); the
//! splitting is ours, see `syntax.rs` for why. The Request-URI's text is
//! kept as received and is what we write: rsip's `Display` loses IPv6
//! brackets.
//!
//! # Validation
//!
//! [`Message::parse`] refuses what a proxy cannot handle safely, each
//! with a [`MessageError`] naming it: a bad start line (505 for a version
//! other than SIP/2.0, 416 for a non-SIP Request-URI, see
//! [`MessageError::response_status`]), control bytes or non-UTF-8 in the
//! headers, a missing or duplicated mandatory header (§8.1.1: To, From,
//! CSeq, Call-ID, at least one Via; Max-Forwards may be absent and counts
//! as 70), a CSeq method other than the request's, any unparsable Via,
//! Route or Record-Route (the proxy routes on them), a From/To that is not
//! a name-addr/addr-spec. Other headers are opaque text.
//!
//! Accessors never fail on a parsed message. Edits take `&str` values and
//! never panic: control bytes in them (CR, LF, NUL, …) become spaces, so
//! an edit cannot inject a header line.

mod build;
mod edit;
mod error;
mod framing;
mod method;
mod names;
mod parse;
mod syntax;
mod via;

#[cfg(test)]
mod tests;

pub use error::MessageError;
pub use framing::{Frame, StreamFramer, datagram};
pub use method::Method;
pub use syntax::format_uri;
pub use via::Via;

use names::{
    CALL_ID, CONTACT, CONTENT_LENGTH, CONTENT_TYPE, CSEQ, FROM, MAX_FORWARDS, RECORD_ROUTE, ROUTE,
    TO, VIA,
};
use syntax::{find_param, parse_name_addr, parse_sip_uri, split_list};
use via::ViaValue;

/// Maximum accepted message size by default (bytes); larger → MessageError::TooLarge.
pub const MAX_MESSAGE: usize = 65_535;

/// Max-Forwards assumed when a request has none (RFC 3261 §8.1.1.6).
pub const DEFAULT_MAX_FORWARDS: u32 = 70;

/// A parsed, editable SIP message. Unknown headers and their order are
/// preserved; serialization writes full header names and a correct
/// Content-Length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    start: StartLine,
    fields: Vec<Field>,
    body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StartLine {
    Request {
        method: Method,
        /// The method token as received (§7.1: case-sensitive).
        method_name: String,
        uri: rsip::Uri,
        /// The Request-URI as received, written back unchanged.
        uri_text: String,
    },
    Response {
        status: u16,
        reason: String,
    },
}

/// One header field: a canonical name (see `names.rs`) and one value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    name: String,
    value: String,
}

impl Field {
    fn new(name: &str, value: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            value: value.into(),
        }
    }
}

impl Message {
    /// The message as bytes: start line, one line per field under its full
    /// name, Content-Length equal to the body's length, the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.body.len()
                + 64
                + self
                    .fields
                    .iter()
                    .map(|f| f.name.len() + f.value.len() + 4)
                    .sum::<usize>(),
        );
        match &self.start {
            StartLine::Request {
                method_name,
                uri_text,
                ..
            } => {
                out.extend_from_slice(method_name.as_bytes());
                out.push(b' ');
                out.extend_from_slice(uri_text.as_bytes());
                out.extend_from_slice(b" SIP/2.0\r\n");
            }
            StartLine::Response { status, reason } => {
                out.extend_from_slice(format!("SIP/2.0 {status} {reason}\r\n").as_bytes());
            }
        }
        for field in &self.fields {
            out.extend_from_slice(field.name.as_bytes());
            out.extend_from_slice(b": ");
            if field.name == CONTENT_LENGTH {
                out.extend_from_slice(self.body.len().to_string().as_bytes());
            } else {
                out.extend_from_slice(field.value.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn is_response(&self) -> bool {
        !self.is_request()
    }

    /// Request method, or for a response the CSeq method.
    pub fn method(&self) -> Method {
        match &self.start {
            StartLine::Request { method, .. } => *method,
            StartLine::Response { .. } => self.cseq().1,
        }
    }

    /// The method token as written: the request's, or a response's CSeq
    /// method. Unlike [`Method::as_str`] it names extension methods.
    pub fn method_name(&self) -> &str {
        match &self.start {
            StartLine::Request { method_name, .. } => method_name,
            StartLine::Response { .. } => self
                .first(CSEQ)
                .and_then(|cseq| parse::parse_cseq(cseq).ok())
                .map_or("", |(_, method)| method),
        }
    }

    /// Status code of a response.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { status, .. } => Some(*status),
            StartLine::Request { .. } => None,
        }
    }

    /// Reason phrase of a response.
    pub fn reason(&self) -> Option<&str> {
        match &self.start {
            StartLine::Response { reason, .. } => Some(reason),
            StartLine::Request { .. } => None,
        }
    }

    /// The Request-URI in rsip's model. Borrowed: it is parsed once, when
    /// the message is. Write it with [`Message::request_uri_str`] or
    /// [`format_uri`], not with rsip's `Display` (IPv6 brackets).
    pub fn request_uri(&self) -> Option<&rsip::Uri> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI exactly as it will be written.
    pub fn request_uri_str(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri_text, .. } => Some(uri_text),
            StartLine::Response { .. } => None,
        }
    }

    /// The Call-ID ("" only if an edit removed it).
    pub fn call_id(&self) -> &str {
        self.first(CALL_ID).unwrap_or("")
    }

    /// The From tag (§19.3), if any.
    pub fn from_tag(&self) -> Option<String> {
        self.tag_of(FROM)
    }

    /// The To tag (§19.3), if any.
    pub fn to_tag(&self) -> Option<String> {
        self.tag_of(TO)
    }

    fn tag_of(&self, name: &str) -> Option<String> {
        let value = self.first(name)?;
        let name_addr = parse_name_addr(value).ok()?;
        let tag = find_param(&name_addr.params, "tag")?.value?;
        (!tag.is_empty()).then(|| tag.to_owned())
    }

    /// CSeq number and method (`(0, Method::Other)` only if an edit broke
    /// the header).
    pub fn cseq(&self) -> (u32, Method) {
        self.first(CSEQ)
            .and_then(|cseq| parse::parse_cseq(cseq).ok())
            .map_or((0, Method::Other), |(number, method)| {
                (number, Method::from_token(method))
            })
    }

    /// Max-Forwards, [`DEFAULT_MAX_FORWARDS`] (70) if absent (§8.1.1.6).
    pub fn max_forwards(&self) -> u32 {
        self.first(MAX_FORWARDS)
            .and_then(|value| value.parse().ok())
            .unwrap_or(DEFAULT_MAX_FORWARDS)
    }

    /// The top Via. A parsed message always has a valid one; after edits
    /// that removed every Via (or pushed an unparsable one) this is
    /// `Via::default()` — see [`Message::try_top_via`].
    pub fn top_via(&self) -> Via {
        self.try_top_via().unwrap_or_default()
    }

    /// The top Via, if there is one and it parses.
    pub fn try_top_via(&self) -> Option<Via> {
        ViaValue::parse(self.first(VIA)?)
            .ok()
            .map(|via| via.summary())
    }

    pub fn via_count(&self) -> usize {
        self.values(VIA).count()
    }

    /// Route entries in order, as full header values (e.g.
    /// "<sip:198.18.1.1:5060;lr;ma=t>").
    pub fn routes(&self) -> Vec<String> {
        self.headers(ROUTE)
    }

    /// Record-Route entries in order, as full header values.
    pub fn record_routes(&self) -> Vec<String> {
        self.headers(RECORD_ROUTE)
    }

    /// The URI inside a Route / Record-Route / Contact value (a name-addr
    /// with or without display name, or a bare addr-spec), parsed into
    /// rsip's model. Only sip: and sips: URIs.
    pub fn uri_of(value: &str) -> Result<rsip::Uri, MessageError> {
        parse_sip_uri(Self::uri_text_of(value)?)
    }

    /// The URI text inside a Route / Record-Route / Contact value, exactly
    /// as written (for a new Request-URI: it keeps IPv6 brackets and URI
    /// headers, which rsip's model cannot hold).
    pub fn uri_text_of(value: &str) -> Result<&str, MessageError> {
        let name_addr = parse_name_addr(value).map_err(|problem| MessageError::BadUri {
            uri: error::excerpt(value),
            problem,
        })?;
        Ok(name_addr.uri)
    }

    /// The URI of the first Contact, if it is a SIP URI.
    pub fn contact_uri(&self) -> Option<rsip::Uri> {
        Self::uri_of(self.first_contact()?).ok()
    }

    /// The URI text of the first Contact, as written.
    pub fn contact_uri_str(&self) -> Option<&str> {
        Self::uri_text_of(self.first_contact()?).ok()
    }

    fn first_contact(&self) -> Option<&str> {
        split_list(self.first(CONTACT)?).ok()?.into_iter().next()
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub fn content_type(&self) -> Option<String> {
        self.header(CONTENT_TYPE)
    }

    /// First value of a header; case-insensitive, compact names understood.
    pub fn header(&self, name: &str) -> Option<String> {
        self.first(name).map(str::to_owned)
    }

    /// All values of a header in order (comma-joined ones split for Via,
    /// Route and Record-Route; other headers one value per line).
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.values(name).map(str::to_owned).collect()
    }

    /// Every header field in order, as `(full name, value)`; Content-Length
    /// reads as the body's length.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .map(|field| (field.name.as_str(), field.value.as_str()))
    }

    fn values<'s, 'n>(&'s self, name: &'n str) -> impl Iterator<Item = &'s str> + use<'s, 'n> {
        let name = names::canonical(name);
        self.fields
            .iter()
            .filter(move |field| field.name.eq_ignore_ascii_case(&name))
            .map(|field| field.value.as_str())
    }

    fn first(&self, name: &str) -> Option<&str> {
        self.values(name).next()
    }
}
