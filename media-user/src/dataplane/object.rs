//! The eBPF objects built by `build.rs`, embedded in the binary.

/// The relay's XDP program (`media-ebpf/src/bin/media-relay-xdp`).
pub static RELAY: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/media-relay-xdp"));

/// Test-bed helpers (`media-ebpf/src/bin/testbed-xdp.rs`): `xdp_pass`,
/// `xdp_sink`, `xdp_gen`. Used by the tests and the benchmarks only.
pub static TESTBED: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/testbed-xdp"));

/// Name of the relay program in [`RELAY`].
pub const RELAY_PROGRAM: &str = "media_relay";
