//! The SIP agent: a transaction-stateful, dialog-aware, record-routing SIP
//! proxy (RFC 3261 §16) between configured trunks and a PBX, anchoring every
//! call's media on media nodes it drives over the ng protocol.
//!
//! - [`message`]: SIP messages — framing, rsip's gaps covered, accessors
//!   and the edits a proxy makes. I/O-free.
//! - [`transaction`]: RFC 3261 §17 transaction state machines and timers.
//!   I/O-free.
//! - [`proxy`]: the proxy core — routing, Record-Route, CANCEL, dialogs,
//!   limits and media anchoring over ng. I/O-free.
//! - [`runtime`]: the tokio shell: UDP/TCP transports, the ng client,
//!   timers, and the memory-backed runtime directory that outlives the
//!   process (the Record-Route secret, established calls' dialogs).
//! - [`config`]: the `[sip]` configuration.

pub mod config;
pub mod message;
pub mod metrics;
pub mod proxy;
pub mod runtime;
pub mod transaction;
