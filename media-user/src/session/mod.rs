//! Media sessions: the ng call model, port leases, latching, timeouts.
//! I/O-free apart from the [`Backend`] it drives, and clock-free: time
//! comes in as [`Now`].
//!
//! - `engine.rs`: the [`Engine`] — its state, the ng/packet/tick entry
//!   points, `delete`, port leases.
//! - `offer_answer.rs`: `offer` and `answer`: interfaces, media from the
//!   SDP, rtcp-mux, the rewritten SDP.
//! - `routes.rs`: the data-plane routes of a call and their programming.
//! - `early.rs`: packets that overtake their call's answer, held briefly
//!   and decided when it comes.
//! - `expiry.rs`: the tick — delayed deletes, learning, timeouts, rates.
//! - `persist.rs`: every call's record kept where it survives a restart,
//!   and adopted by the next run ([`Engine::restore`]).
//! - `record.rs`: what a record holds, in a versioned binary form.
//! - `reports.rs`: `query`, `list`, `statistics`.
//! - `watch.rs`: the quality watch: alerts when a leg degrades, and a
//!   call's quality summary.
//! - `error.rs`: why a command failed: the ng `error-reason` text.
//! - `clock.rs`: [`Now`], both clocks read once at the edge (and the
//!   monotonic one as CLOCK_MONOTONIC nanoseconds, for records).
//! - `model.rs`: calls, parties (monologues), media, port owners.
//! - `latch.rs`: learning and checking a peer's source address.
//! - `ports.rs`: the port-pair allocator.
//! - `sharing.rs`: port sharing: the shared-pair allocator and the
//!   attribution of packets from unknown sources;
//!   `shared_owners.rs`: who owns what on a shared port, by (local,
//!   remote) key.
//! - `backend.rs`: what the engine needs from the media plane.

pub mod backend;
pub mod clock;
mod early;
pub mod engine;
pub mod error;
mod expiry;
pub mod latch;
pub mod model;
mod offer_answer;
mod persist;
pub mod ports;
pub mod quality;
pub mod record;
mod reports;
mod routes;
pub mod shared_owners;
pub mod sharing;
pub mod watch;

pub use backend::{At, Backend, Counters, Path, Quality, ReportBlock, Route, RtcpReports};
pub use clock::Now;
pub use engine::{
    DEFAULT_MAX_MEDIA, EndReason, Ended, Engine, PacketEvent, SessionConfig, SharedFigures,
};
pub use error::CommandError;
pub use latch::{Latch, Policy, Source};
pub use persist::{Restored, SkipReason, Skipped};
pub use ports::{ClaimError, PortAllocator};
pub use record::RecordError;
pub use watch::{AlertThresholds, Figure};

#[cfg(test)]
mod tests;
