//! Why a request is refused. The `Display` text of [`NgError`] is what the
//! peer reads in `error-reason`, so each message names the key or the byte
//! at fault and, where it helps, what would have been accepted.

use std::net::IpAddr;

use thiserror::Error;

use super::bencode::{DecodeError, DecodeErrorKind};

/// Why a request is refused; `Display` is sent as `error-reason`.
///
/// Key names are shown normalised (lowercase, hyphens), the form every
/// spelling of a key is matched in.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum NgError {
    /// No space, or a space first: without a cookie no reply can be matched
    /// to the request, so none is sent (rtpengine's `control_ng_process`
    /// drops such datagrams too).
    #[error("no cookie: a request is `<cookie> <bencoded dictionary>`")]
    NoCookie,
    #[error("no dictionary after the cookie")]
    Empty,
    /// The ng protocol also allows a JSON object; we only speak bencode,
    /// which is what the Kamailio/OpenSIPS modules and `rtpengine-ng-client`
    /// send by default.
    #[error("JSON requests are not supported, send a bencoded dictionary")]
    Json,
    #[error("the request is not a bencoded dictionary")]
    NotADict,
    #[error("invalid bencode at byte {offset}: {kind}")]
    Bencode {
        offset: usize,
        kind: DecodeErrorKind,
    },
    #[error("trailing data after the dictionary at byte {offset}")]
    TrailingData { offset: usize },
    /// Two spellings of one key (`call-id` and `call id`): which one was
    /// meant cannot be told.
    #[error("keys `{first}` and `{second}` are the same key, give it once")]
    DuplicateKey { first: String, second: String },
    #[error("missing key `{key}`")]
    MissingKey { key: &'static str },
    #[error("key `{key}` is empty")]
    EmptyValue { key: &'static str },
    #[error("key `{key}` must be {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
    #[error("key `{key}` must be UTF-8 text")]
    NotUtf8 { key: &'static str },
    #[error(
        "unknown command `{name}`; supported: ping, offer, answer, delete, query, list, statistics"
    )]
    UnknownCommand { name: String },
    #[error("key `{key}`: `{value}` is not an IP address")]
    BadAddress { key: &'static str, value: String },
    #[error("key `received-from`: unknown address family `{family}`, expected IP4 or IP6")]
    UnknownFamily { family: String },
    #[error("key `received-from`: {address} is not an {family} address")]
    FamilyMismatch {
        family: &'static str,
        address: IpAddr,
    },
    #[error("key `{key}` must be {expected}, got `{value}`")]
    BadNumber {
        key: &'static str,
        expected: &'static str,
        value: String,
    },
    #[error("key `direction` must name at most two interfaces, got {count}")]
    TooManyInterfaces { count: usize },
}

impl From<DecodeError> for NgError {
    fn from(DecodeError { offset, kind }: DecodeError) -> Self {
        NgError::Bencode { offset, kind }
    }
}
