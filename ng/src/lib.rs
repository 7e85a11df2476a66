//! The ng control protocol (rtpengine's `docs/ng_control_protocol.md`):
//! bencoded dictionaries over UDP, `<cookie> <dict>`. I/O-free: this module
//! turns datagrams into typed [`Command`]s and typed replies back into
//! datagrams; the UDP server and the session logic live elsewhere.
//!
//! - `command.rs`: [`parse_datagram`], a datagram into cookie and
//!   [`Command`]; the key, flag and `ICE` rules are documented there.
//! - `reply.rs`: [`Reply`] and [`encode_reply`].
//! - `cache.rs`: [`ReplyCache`], so a retransmitted request is answered
//!   with the same bytes and never applied twice, keyed by source and
//!   cookie and checked against a digest of the request.
//! - `bencode.rs`: [`Value`] to and from bencode (with `bendy`), accepting
//!   dictionary keys in any order as ng peers send them.
//! - `value.rs`: builders for replies (`Value::dict().with("sdp", sdp)`).
//! - `error.rs`: [`NgError`], whose text is the `error-reason` sent back.
//! - `blocking.rs`: [`blocking::Client`], a blocking client for one-off
//!   requests (the operator CLI, the tests), and [`blocking::Cookies`],
//!   cookies unique across processes and restarts.
//!
//! A server loop reads a datagram from `source` and does:
//!
//! ```
//! # use std::{net::SocketAddr, time::{Duration, Instant}};
//! # use ng::{parse_datagram, encode_reply, Reply, ReplyCache, Lookup, Command};
//! # let mut cache = ReplyCache::new(4096, 1 << 20, Duration::from_secs(60));
//! # let datagram = b"5323_1 d7:command4:pinge";
//! # let source: SocketAddr = "127.0.0.1:40000".parse().unwrap();
//! # let now = Instant::now();
//! let Ok((cookie, command)) = parse_datagram(datagram) else {
//!     return; // no cookie: nothing to answer; count and drop
//! };
//! let digest = cache.digest(datagram);
//! match cache.lookup(source, &cookie, digest, now) {
//!     // a retransmission: send `reply` again, apply nothing
//!     Lookup::Retransmission(_reply) => return,
//!     // a reused or oversized cookie: an error reply, apply nothing
//!     Lookup::Refused(_why) => return,
//!     Lookup::Miss => {}
//! }
//! let reply = match command {
//!     Ok(Command::Ping) => Reply::Pong,
//!     Ok(_) => Reply::ok(), // the session layer's work
//!     Err(err) => Reply::from(err),
//! };
//! let bytes = encode_reply(&cookie, &reply);
//! assert_eq!(bytes, b"5323_1 d6:result4:ponge");
//! cache.insert(source, cookie, digest, bytes, now);
//! ```

use std::net::IpAddr;

mod bencode;
pub mod blocking;
mod cache;
mod client;
mod command;
mod error;
mod reply;
#[cfg(test)]
mod tests;
mod value;

pub use bencode::{DecodeError, DecodeErrorKind, EncodeError, MAX_DEPTH};
pub use cache::{CacheRefusal, Lookup, MAX_COOKIE_LEN, ReplyCache, RequestDigest};
pub use client::{encode_request, parse_reply};
pub use command::parse_datagram;
pub use error::NgError;
pub use reply::{Reply, encode_reply};

/// A generic bencode value, as replies are built by the session layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Bytes(Vec<u8>),
    Int(i64),
    List(Vec<Value>),
    /// Keys are byte strings; kept sorted on encoding, as bencode requires.
    Dict(std::collections::BTreeMap<Vec<u8>, Value>),
}

/// The parsed commands.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Ping,
    Offer(OfferAnswer),
    Answer(OfferAnswer),
    Delete(Delete),
    Query(Query),
    List(List),
    Statistics,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OfferAnswer {
    pub call_id: String,
    pub from_tag: String,
    /// Required for answer.
    pub to_tag: Option<String>,
    pub via_branch: Option<String>,
    pub sdp: Vec<u8>,
    pub flags: Flags,
    pub replace: Replace,
    /// `direction` list: logical interface names, [from, to].
    pub direction: Vec<String>,
    pub from_interface: Option<String>,
    pub to_interface: Option<String>,
    pub rtcp_mux: RtcpMux,
    pub ice: Ice,
    /// `received from`: the address the SIP message came from.
    pub received_from: Option<IpAddr>,
    /// `media address`: use this address for the offerer instead of the SDP's.
    pub media_address: Option<IpAddr>,
    pub label: Option<String>,
    /// `address family`: the family of the relay address written into the
    /// SDP this command returns (the side facing the party that receives
    /// it); `None`: as the other side's (rtpengine: "auto-detect").
    pub address_family: Option<AddressFamily>,
}

/// `address family` values: `IP4` or `IP6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressFamily {
    Ip4,
    Ip6,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub asymmetric: bool,
    pub symmetric: bool,
    pub strict_source: bool,
    pub trust_address: bool,
    pub sip_source_address: bool,
    pub port_latching: bool,
    pub no_rtcp_attribute: bool,
    pub full_rtcp_attribute: bool,
    pub loop_protect: bool,
    /// Flags we accept and ignore (already normalised).
    pub unknown: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replace {
    pub origin: bool,
    pub session_connection: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RtcpMux {
    pub offer: bool,
    pub demux: bool,
    pub accept: bool,
    pub reject: bool,
    pub require: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ice {
    /// Strip ICE attributes (default for plain SIP).
    #[default]
    Remove,
    /// Keep the endpoint's ICE attributes untouched.
    Keep,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Delete {
    pub call_id: String,
    pub from_tag: Option<String>,
    pub to_tag: Option<String>,
    pub via_branch: Option<String>,
    /// Seconds; `None` = the daemon's default.
    pub delete_delay: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub call_id: String,
    pub from_tag: Option<String>,
    pub to_tag: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct List {
    pub limit: Option<u32>,
}
