//! media-relay's media daemon.
//!
//! - [`dataplane`]: loads the XDP program, attaches it to interfaces, pins
//!   its maps and is the single writer of the installed flows.
//! - [`host`]: the few facts about the host the daemon checks or sets
//!   (privileges, bpffs, interfaces, forwarding sysctls).
//! - [`daemon`]: the `media-relay run` event loop.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod host;
pub mod interfaces;
pub mod logging;
pub mod media;
pub mod metrics;
pub use ng;
pub mod sdp;
pub mod session;
