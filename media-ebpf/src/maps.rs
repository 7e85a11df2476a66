//! Names and sizes of the maps both sides agree on.
//!
//! The maps are pinned under [`PIN_ROOT`]/[`LAYOUT_VERSION`]: when a map's
//! key or value layout changes, the version changes too, so a daemon never
//! adopts a pinned map it would misread.
//!
//! Versions: v1 (round 1: 20-byte key, 64-byte flow), v2 (+ `FLOW_SEQ`,
//! loss windows), v3 (40-byte key with the remote endpoint for shared
//! ports; 72-byte flow with the expected source's family and the RTP
//! clock rate; an RTP-seen flag in the stats; `FLOW_QUALITY`, 64-byte
//! per-stream accounting, replacing `FLOW_SEQ`; the `bad_ip_checksum`
//! outcome). Added within v3 without changing any existing map:
//! `FLOW_RTCP` (a daemon starting on v3 pins without it creates it; an
//! older one ignores it) and the `CONTROL_NO_QUALITY` bit of a word that
//! older daemons write as 0.

/// bpffs directory holding one sub-directory per layout version.
pub const PIN_ROOT: &str = "/sys/fs/bpf/media-relay";
/// Version of the pinned map layouts below; bump on any layout change.
pub const LAYOUT_VERSION: &str = "v3";

/// `HASH` [`crate::FlowKey`] → [`crate::Flow`]: installed flows. A plain hash
/// map, never LRU: an installed call must never be evicted.
pub const FLOWS: &str = "FLOWS";
/// `PERCPU_ARRAY` slot → [`crate::FlowStats`]: per-flow counters, indexed by
/// [`crate::Flow::stats_slot`]. Written only by the data plane.
pub const FLOW_STATS: &str = "FLOW_STATS";
/// `ARRAY` slot → [`crate::StreamQuality`]: per-stream accounting of
/// [`crate::flow::RTP`] flows (the RFC 3550 sequence window for loss),
/// indexed like [`FLOW_STATS`]. Shared by all CPUs, not per-CPU: a flow's
/// packets may be processed on any CPU, and per-CPU windows would overlap
/// and overstate loss. Written only by the data plane (the daemon resets a
/// slot before handing it out).
pub const FLOW_QUALITY: &str = "FLOW_QUALITY";
/// `ARRAY` slot → [`crate::RtcpSeen`]: the RTCP that arrived multiplexed
/// on an [`crate::flow::RTP`] flow (rtcp-mux, RFC 5761), indexed like
/// [`FLOW_STATS`]. (An RTCP flow keeps its reports in its
/// [`FLOW_QUALITY`] slot; an RTP flow's slot there holds its
/// [`crate::StreamQuality`].) Written only by the data plane; the daemon
/// resets a slot where it resets the [`FLOW_QUALITY`] one.
pub const FLOW_RTCP: &str = "FLOW_RTCP";
/// `PERCPU_ARRAY` [`crate::Outcome`] → `u64`: what happened to every packet.
pub const OUTCOMES: &str = "OUTCOMES";
/// `DEVMAP_HASH` ifindex → ifindex: interfaces the relay may redirect to.
pub const EGRESS_DEVS: &str = "EGRESS_DEVS";
/// `ARRAY` of one [`Control`]: what the program knows of the daemon.
pub const CONTROL: &str = "CONTROL";
/// bpffs directory (under [`PIN_ROOT`], not versioned) of the pinned XDP
/// links, one per interface, named `<netdev>@native` or `<netdev>@generic`:
/// while pinned, the program stays attached whatever happens to the daemon.
pub const LINKS_DIR: &str = "links";

/// The daemon's word to the program (`CONTROL[0]`), written by the daemon
/// only.
///
/// 16 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) until which the daemon counts
    /// as running: it moves this ahead every 250 ms, and sets it to 0 when
    /// it stops. Past it, packets that would need the daemon are dropped
    /// ([`crate::Outcome::DaemonAbsent`]).
    pub daemon_until_ns: u64,
    /// The daemon's media port range (host order), for packets with no flow.
    pub port_min: u16,
    pub port_max: u16,
    /// [`CONTROL_UNHELD_DROP`], [`CONTROL_NO_QUALITY`]; zero from a daemon of an earlier layout
    /// (this word was reserved then).
    pub flags: u32,
}

/// [`Control::flags`]: every port the daemon holds has a flow (one that
/// forwards, or one that hands every packet to the daemon), so a packet
/// for the media range that finds no flow is for a port no call holds:
/// dropped ([`crate::Outcome::NoFlow`]), never answered by the stack with
/// ICMP port unreachable. Cleared while a port lacks one (the flow table
/// full): then such packets go to the stack as before.
pub const CONTROL_UNHELD_DROP: u32 = 1;

/// [`Control::flags`]: quality telemetry is off (`quality-telemetry =
/// false`, `--no-quality-telemetry`): the program skips the per-stream
/// accounting in [`FLOW_QUALITY`] and [`FLOW_RTCP`]; a flow's packets,
/// bytes, last-seen time and last RTP header ([`FLOW_STATS`]) are still
/// counted. Unset (0) means on, which is what a daemon that predates the
/// bit writes. A runtime switch rather than a second build: the same
/// object runs either way, at the cost of one branch per packet, which is
/// what lets the benchmark compare the two on the same program.
pub const CONTROL_NO_QUALITY: u32 = 2;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], a u64, two u16s and a u32: no padding, every bit
    // pattern valid.
    unsafe impl aya::Pod for super::Control {}
}

/// Compile-time default capacity of [`FLOWS`], [`FLOW_STATS`],
/// [`FLOW_QUALITY`] and [`FLOW_RTCP`]; the daemon resizes them from its configuration before
/// loading.
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;
/// Capacity of [`EGRESS_DEVS`].
pub const MAX_EGRESS_DEVS: u32 = 64;
