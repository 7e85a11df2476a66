//! The eBPF objects built by `build.rs`, embedded in the binary.

/// The relay's XDP program (`media-ebpf/src/bin/media-relay-xdp`).
pub static RELAY: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/media-relay-xdp"));

/// Test-bed helpers (`media-ebpf/src/bin/testbed-xdp.rs`): `xdp_pass`,
/// `xdp_sink`, `xdp_gen`. Used by the tests and the benchmarks only.
pub static TESTBED: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/testbed-xdp"));

/// Name of the relay program in [`RELAY`].
pub const RELAY_PROGRAM: &str = "media_relay";

/// The relay program's `PROGRAM_STAMP` global, written at load.
pub const STAMP_SYMBOL: &str = "PROGRAM_STAMP";

/// Overrides the stamp (tests: a program that differs, standing for an
/// upgrade). Not for operators.
pub const STAMP_ENV: &str = "MEDIA_RELAY_PROGRAM_STAMP";

/// Which build of the program this binary carries: FNV-1a of [`RELAY`]
/// (two binaries with the same program get the same stamp), unless
/// [`STAMP_ENV`] names another. Shown by `bpftool map dump` of the
/// attached program's `.rodata`, logged at every load.
pub fn stamp() -> u64 {
    if let Some(s) = std::env::var(STAMP_ENV).ok().and_then(|s| s.parse().ok()) {
        return s;
    }
    RELAY.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
