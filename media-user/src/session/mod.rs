//! Media sessions: the ng call model, port leases, latching, timeouts.
//! I/O-free apart from the [`Backend`] it drives.

pub mod backend;
pub mod engine;
pub mod latch;
pub mod model;
pub mod ports;

pub use backend::{Backend, Counters, Route};
pub use engine::{EndReason, Ended, Engine, PacketEvent, SessionConfig};
pub use latch::{Latch, Policy, Source};
pub use ports::PortAllocator;

#[cfg(test)]
mod tests;
