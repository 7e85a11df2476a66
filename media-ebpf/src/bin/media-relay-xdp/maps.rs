//! The maps of the relay program. Names and layouts are shared with the
//! daemon through `media_ebpf::maps`; sizes are overridden at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
};
use media_ebpf::{
    Flow, FlowKey, FlowStats, Outcome, RtcpSeen, StreamQuality,
    maps::{Control, DEFAULT_MAX_FLOWS, MAX_EGRESS_DEVS},
};

/// Installed flows, written only by the daemon. Plain hash, never LRU.
#[map(name = "FLOWS")]
pub static FLOWS: HashMap<FlowKey, Flow> = HashMap::pinned(DEFAULT_MAX_FLOWS, 0);

/// Per-flow counters indexed by `Flow::stats_slot`; written only here.
#[map(name = "FLOW_STATS")]
pub static FLOW_STATS: PerCpuArray<FlowStats> = PerCpuArray::pinned(DEFAULT_MAX_FLOWS, 0);

/// Per-stream accounting of RTP flows (sequence windows), indexed like
/// `FLOW_STATS`. Shared by every CPU (a flow's packets may arrive on any),
/// so not per-CPU.
#[map(name = "FLOW_QUALITY")]
pub static FLOW_QUALITY: Array<StreamQuality> = Array::pinned(DEFAULT_MAX_FLOWS, 0);

/// The RTCP multiplexed on RTP flows (rtcp-mux), indexed like
/// `FLOW_STATS`; shared by every CPU like `FLOW_QUALITY`.
#[map(name = "FLOW_RTCP")]
pub static FLOW_RTCP: Array<RtcpSeen> = Array::pinned(DEFAULT_MAX_FLOWS, 0);

/// One per-CPU counter per `Outcome`.
#[map(name = "OUTCOMES")]
pub static OUTCOMES: PerCpuArray<u64> = PerCpuArray::pinned(Outcome::COUNT, 0);

/// Interfaces the program may redirect to (those it is attached to).
#[map(name = "EGRESS_DEVS")]
pub static EGRESS_DEVS: DevMapHash = DevMapHash::pinned(MAX_EGRESS_DEVS, 0);

/// The daemon's word: whether it runs, its port range. Written only by the
/// daemon.
#[map(name = "CONTROL")]
pub static CONTROL: Array<Control> = Array::pinned(1, 0);

/// Count one packet under `outcome`.
#[inline(always)]
pub fn count(outcome: Outcome) {
    if let Some(c) = OUTCOMES.get_ptr_mut(outcome as u32) {
        // SAFETY: per-CPU slot; XDP runs with migration disabled, so no other
        // program instance touches this CPU's copy concurrently.
        unsafe { *c += 1 };
    }
}
