//! The data plane's vocabulary, shared by the XDP program and the daemon.
//!
//! Everything in here is `no_std`, free of pointers and I/O, and builds for
//! both the BPF target and the host, so the host's `cargo test` covers the
//! checksum arithmetic the kernel side relies on.
//!
//! Map value layouts are `#[repr(C)]`, made of byte arrays (or naturally
//! aligned `u64`s) so that there is no implicit padding the verifier or the
//! other side could misread. Multi-byte address and port fields are kept in
//! network byte order, exactly as they appear on the wire.
#![cfg_attr(not(test), no_std)]

pub mod csum;
pub mod flow;
pub mod maps;
pub mod outcome;
pub mod quality;
pub mod seq;

pub use flow::{Flow, FlowKey, FlowStats};
pub use outcome::Outcome;
pub use quality::{RtcpSeen, StreamQuality};
pub use seq::SeqWindow;
