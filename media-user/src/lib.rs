//! media-relay's media daemon, and the `media-relay` binary (`main.rs`).
//!
//! - [`daemon`]: the `media-relay run` event loop: one task owns the
//!   session engine, reads the clocks and dispatches ng requests, packets
//!   and ticks to it.
//! - [`ng_server`]: the ng control server: datagrams in, the engine's
//!   replies out, retransmissions answered from a cache.
//! - [`session`]: the I/O-free session engine: offer/answer, the call
//!   model, port leases, latching, routes, timeouts, `query`/`list`/
//!   `statistics`.
//! - [`sdp`]: reads what the engine needs from an SDP body and rewrites
//!   it to point at the relay.
//! - [`media`]: the media plane (the engine's real backend): a bound
//!   socket per leased port, the userspace path (`forwarder`: routes and
//!   decisions; `io_threads`: batched I/O threads with a staleness bound),
//!   XDP flows mirrored from routes, adopted ports bound in the background.
//! - [`dataplane`]: loads the XDP program, attaches it to interfaces, pins
//!   its maps and is the single writer of the installed flows; one daemon
//!   per pin root (`dataplane::lock`).
//! - [`interfaces`]: the relay's logical interfaces: netdev, local and
//!   advertised addresses.
//! - [`host`]: the few facts about the host the daemon checks or sets
//!   (privileges, bpffs, interfaces, forwarding sysctls).
//! - [`config`]: the TOML configuration file and the flags that override
//!   it.
//! - [`cli`]: the operator CLI (`calls`, `call`, `stats`) over ng.
//! - [`metrics`]: Prometheus metrics and the health endpoint.
//! - [`logging`]: `tracing` output (human or JSON) for the binary.
//! - [`ng`]: the ng protocol crate, re-exported.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod host;
pub mod interfaces;
pub mod logging;
pub mod media;
pub mod metrics;
pub use ng;
pub mod ng_server;
pub mod sdp;
pub mod session;
pub mod stun;
