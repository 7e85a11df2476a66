//! The test bed shared by the root-only tests and the benchmarks: network
//! namespaces joined by veth pairs, addresses from the RFC 2544/5180
//! benchmarking ranges (198.18.0.0/15, 2001:2::/48), Ethernet frames built
//! by hand and checked with an independent checksum implementation
//! (etherparse).
//!
//! Everything created here is removed on drop, also when a test fails;
//! each test's files live in its own [`TestDir`], kept when it fails.
//!
//! Also the runtime of the package install test ([`install`], the
//! `media-relay-install-test` binary), which runs on the same bed.

pub mod bed;
pub mod bpftool;
pub mod calls;
pub mod cpu;
pub mod daemon;
pub mod frame;
pub mod http;
pub mod install;
pub mod media;
pub mod netns;
pub mod packet_gen;
pub mod paths;
pub mod privilege;
pub mod relay;
pub mod rtpengine;
pub mod sipp;
pub mod socket_load;
pub mod sockopt;
pub mod test_run;
pub mod testdir;
pub mod xdp_load;
pub mod xdp_model;

pub use bed::{Bed, BedOptions};
pub use netns::Netns;
pub use privilege::require_root;
pub use relay::Relay;
pub use testdir::{TestDir, root_test};
