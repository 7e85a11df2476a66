//! The proxy core: an I/O-free state machine. Parsed messages, timer ticks
//! and ng replies go in; datagrams/stream writes and ng requests come out.
//!
//! - `agent.rs`: the transaction user (RFC 3261 §16): the agent's state,
//!   its transactions and calls, and the dispatch of messages, ng replies
//!   and timers.
//! - `routing.rs`: where a request goes — source classification (trunk,
//!   PBX or refused), where a new request such as an INVITE is routed,
//!   Via and (signed) Record-Route.
//! - `in_dialog.rs`: requests inside a dialog — who may send one and where
//!   it may go: a dialog the agent knows or its own signed Route entry,
//!   and only towards the other side's peers; everything else refused,
//!   counted and rate-limited.
//! - `advertise.rs`: the address the agent writes as its own towards
//!   each side (`trunk-advertise`, `pbx-advertise`), and recognising it.
//! - `signature.rs`: the HMAC on the agent's Record-Route entries.
//! - `ack_cancel.rs`: ACK (absorbed or forwarded statelessly) and CANCEL.
//! - `responses.rs`: responses from downstream, forwarded upstream; the
//!   dialog of a 2xx.
//! - `media.rs`: media anchoring over ng — the `rtpengine_manage` model:
//!   INVITE/re-INVITE/UPDATE offers, 18x/2xx answers, late offers in 2xx
//!   and ACK, deletes on CANCEL, failure and BYE, media timeouts.
//! - `dialog.rs`: what the agent remembers of an established call, enough
//!   to end it with a BYE to both sides when its media times out.
//! - `record.rs`: an established call in the form that outlives the
//!   agent's process (the runtime keeps it), and back (`Agent::restore`).
//! - `stats.rs`: the counters operators and tests read.
//! - `ratelimit.rs`: per-source rate limiting (new INVITEs, refusals).

mod ack_cancel;
mod advertise;
mod agent;
mod dialog;
mod in_dialog;
mod media;
mod ratelimit;
mod record;
mod responses;
mod routing;
mod signature;
mod stats;

use std::net::SocketAddr;

pub use agent::{Agent, Restored};
#[cfg(test)]
pub(crate) use record::sample_records;
pub use signature::{MIN_SECRET, RouteKey};
pub use stats::{DialogStoreStats, Stats, TransportStats};

/// A transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub const fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    /// RFC 3261 §17: retransmission timers only over unreliable transports.
    pub const fn reliable(self) -> bool {
        matches!(self, Transport::Tcp)
    }
}

/// A TCP connection, as numbered by the transport layer.
pub type ConnId = u64;

/// Where a message came from / goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub transport: Transport,
    /// TCP: the connection it came on (responses go back on it).
    pub conn: Option<ConnId>,
    /// Our address it arrived on / leaves from.
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// What the agent asks of the I/O layer.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send bytes (over `conn` if set and still open, else a new
    /// connection / a datagram from `local`).
    Send { peer: Peer, bytes: Vec<u8> },
    /// Send an ng request to a media node and report the reply (or a
    /// timeout) with `id`.
    Ng {
        id: u64,
        node: SocketAddr,
        request: ng::Value,
    },
    /// An established call's record (`record.rs`) is now `Some(bytes)`,
    /// replacing the one before, or the call ended (`None`). The runtime
    /// keeps the latest of each call where a restarted agent finds them
    /// (`Agent::restore`); it may write them late (at most a second), never
    /// out of order.
    Dialog {
        call_id: String,
        record: Option<Vec<u8>>,
    },
}

/// An ng request's fate.
#[derive(Clone, Debug, PartialEq)]
pub enum NgOutcome {
    Reply(ng::Value),
    Timeout,
}

#[cfg(test)]
mod tests;
