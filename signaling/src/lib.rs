//! The SIP agent: a transaction-stateful, dialog-aware, record-routing SIP
//! proxy (RFC 3261 §16) between configured trunks and a PBX, anchoring every
//! call's media on media nodes it drives over the ng protocol.
//!
//! - [`message`]: SIP messages — framing, rsip's gaps covered, accessors
//!   and the edits a proxy makes. I/O-free.
//! - [`transaction`]: RFC 3261 §17 transaction state machines and timers.
//!   I/O-free.

pub mod message;
pub mod transaction;
