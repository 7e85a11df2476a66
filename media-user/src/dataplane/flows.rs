//! The installed-flow table: the typed API through which the daemon (the
//! single writer) installs, updates and removes flows and reads their
//! counters.
//!
//! Each flow owns a slot of the per-CPU `FLOW_STATS` array (and the same
//! slot of the shared `FLOW_QUALITY` and `FLOW_RTCP` arrays), handed out
//! here. A slot is
//! zeroed before its flow becomes visible, and a flow is updated in place
//! (same slot, same counters) with one atomic map update, so forwarding
//! never pauses across a re-offer.
//!
//! A removed flow's slot is not handed out again at once: an XDP run that
//! looked the old flow up just before its removal may still be counting
//! into the slot (a program run holds the map value under RCU for its few
//! microseconds), and would write into the next flow's freshly zeroed
//! counters. Freed slots wait [`SLOT_GRACE`] first.

use std::{
    collections::{HashMap as StdHashMap, VecDeque},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, IterableMap as _, MapData, MapError, PerCpuArray, PerCpuValues};
use media_ebpf::{
    Flow, FlowKey, FlowStats, RtcpSeen, SeqWindow, StreamQuality,
    flow::{CHECK_SOURCE_ADDR, STATS_RTP_SEEN},
};
use thiserror::Error;

/// How long a freed stats slot rests before it is handed out again: far
/// longer than any XDP program run (microseconds) that may still hold the
/// removed flow.
pub const SLOT_GRACE: Duration = Duration::from_secs(1);

/// `BPF_NOEXIST` / `BPF_EXIST` (uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

#[derive(Debug, Error)]
pub enum FlowError {
    #[error(
        "the flow table is full ({capacity} flows); raise --max-flows (one flow per direction \
         per stream: a two-leg audio call with RTCP uses 4)"
    )]
    Full { capacity: u32 },
    #[error("a flow for {local} is already installed")]
    Exists { local: std::net::SocketAddr },
    #[error("no flow is installed for {local}")]
    NotFound { local: std::net::SocketAddr },
    #[error(
        "flow for {local}: the relay address {relay} and peer {peer} are of different families"
    )]
    MixedFamilies {
        local: std::net::SocketAddr,
        relay: std::net::SocketAddr,
        peer: std::net::SocketAddr,
    },
    #[error(
        "flow for {local}: the expected source {source_addr} is of the other family than the \
         port (a packet of one family can never come from an address of the other)"
    )]
    SourceFamily {
        local: std::net::SocketAddr,
        source_addr: std::net::SocketAddr,
    },
    #[error("flow map operation failed: {0}")]
    Map(#[from] MapError),
}

/// A flow's counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    pub packets: u64,
    pub bytes: u64,
    /// CLOCK_MONOTONIC time of the last forwarded packet.
    pub last_seen: Option<Duration>,
    /// RTP flows: SSRC and sequence number of the last forwarded packet.
    pub last_rtp: Option<(u32, u16)>,
    /// RTP flows: the sequence window (in `FLOW_QUALITY`), for loss; see
    /// [`expected`](Self::expected) and [`received`](Self::received).
    pub seq: SeqWindow,
    /// RTP flows: the whole per-stream record (jitter, gaps, delay; see
    /// `media_ebpf::quality`), `seq` included. A flow without RTP (an
    /// RTCP port): its RTCP reports, as bytes (`RtcpSeen::from_slot`).
    pub quality: StreamQuality,
    /// RTP flows: the RTCP multiplexed on the port (rtcp-mux; in
    /// `FLOW_RTCP`). Zero for a flow without RTP.
    pub rtcp: RtcpSeen,
}

impl FlowCounters {
    /// RTP packets expected from the sequence numbers seen.
    pub fn expected(&self) -> u64 {
        u64::from(self.seq.expected())
    }

    /// RTP packets counted by the sequence window.
    pub fn received(&self) -> u64 {
        u64::from(self.seq.received())
    }

    fn sum(values: &PerCpuValues<FlowStats>, seq: SeqWindow) -> Self {
        let mut c = Self::default();
        let mut last = 0;
        for v in values.iter() {
            c.packets += v.packets;
            c.bytes += v.bytes;
            // The CPU that forwarded last holds the latest RTP header: a
            // flow's packets land on one CPU (the NIC hashes its 5-tuple to
            // one queue; a NAT rebinding moves all of them). Were rtcp-mux
            // RTCP forwarded on another CPU than its RTP, this header could
            // be one CPU's older one; re-latching allows a gap of 100.
            if v.last_seen_ns > last {
                last = v.last_seen_ns;
                c.last_rtp = (v.rtp & STATS_RTP_SEEN != 0).then(|| {
                    (
                        u32::from_be_bytes(v.last_ssrc),
                        u16::from_be_bytes(v.last_seq),
                    )
                });
            }
        }
        c.last_seen = (last != 0).then(|| Duration::from_nanos(last));
        c.seq = seq;
        c
    }
}

/// An installed flow, as the table keeps it.
#[derive(Clone, Copy, Debug)]
struct Installed {
    slot: u32,
    found: Option<Flow>,
}

pub struct FlowTable {
    flows: HashMap<MapData, FlowKey, Flow>,
    stats: PerCpuArray<MapData, FlowStats>,
    quality: Array<MapData, StreamQuality>,
    rtcp: Array<MapData, RtcpSeen>,
    /// Userspace mirror: every installed flow's stats slot, and (one
    /// lookup for both: a restart updates hundreds of thousands) the flow
    /// as found installed when the table was opened (pinned by an earlier
    /// daemon), until first updated: an update that would write the same
    /// value is skipped (the XDP program never writes flows), so a restart
    /// re-programs only what changed.
    slots: StdHashMap<FlowKey, Installed>,
    /// Free stats slots, handed out from the end.
    free: Vec<u32>,
    /// Slots of removed flows and when they were freed, oldest first: they
    /// join `free` after [`SLOT_GRACE`].
    resting: VecDeque<(Instant, u32)>,
    capacity: u32,
    ncpus: usize,
}

impl FlowTable {
    /// Wrap the maps, adopting whatever flows are already installed (pinned
    /// maps from a previous daemon).
    pub(crate) fn adopt(
        flows: HashMap<MapData, FlowKey, Flow>,
        stats: PerCpuArray<MapData, FlowStats>,
        quality: Array<MapData, StreamQuality>,
        rtcp: Array<MapData, RtcpSeen>,
        capacity: u32,
        ncpus: usize,
    ) -> Result<Self, FlowError> {
        // Read first, so that the mirror is sized once (hundreds of
        // thousands of flows after a restart at scale).
        let pinned = match super::batch::read_all::<FlowKey, Flow>(flows.map()) {
            Ok(all) => all,
            Err(e) => {
                tracing::debug!(error = %e, "batch lookup refused: reading the pinned flows one by one");
                flows.iter().collect::<Result<Vec<_>, _>>()?
            }
        };
        let mut slots = StdHashMap::with_capacity(pinned.len());
        for (k, f) in pinned {
            slots.insert(
                k,
                Installed {
                    slot: f.slot(),
                    found: Some(f),
                },
            );
        }
        let used: std::collections::HashSet<u32> = slots.values().map(|i| i.slot).collect();
        let free = (0..capacity).rev().filter(|s| !used.contains(s)).collect();
        Ok(Self {
            flows,
            stats,
            quality,
            rtcp,
            slots,
            free,
            resting: VecDeque::new(),
            capacity,
            ncpus,
        })
    }

    /// Maximum number of flows.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Number of installed flows.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn contains(&self, key: &FlowKey) -> bool {
        self.slots.contains_key(key)
    }

    /// Keys of all installed flows.
    pub fn keys(&self) -> impl Iterator<Item = &FlowKey> {
        self.slots.keys()
    }

    fn check(key: &FlowKey, flow: &Flow) -> Result<(), FlowError> {
        let (relay, peer) = (flow.relay(), flow.peer());
        if !Flow::is_consistent(relay, peer) {
            return Err(FlowError::MixedFamilies {
                local: key.local(),
                relay,
                peer,
            });
        }
        if flow.flags & CHECK_SOURCE_ADDR != 0
            && flow.expect_family != key.family
            && let Some(source_addr) = flow.expected_source()
        {
            return Err(FlowError::SourceFamily {
                local: key.local(),
                source_addr,
            });
        }
        Ok(())
    }

    /// A free slot: one that rested its grace period, else the oldest
    /// resting one when the table would otherwise be full (an XDP run
    /// holding a flow removed that long ago is not realistic; refusing the
    /// call would be).
    fn take_slot(&mut self) -> Option<u32> {
        let now = Instant::now();
        while let Some(&(at, slot)) = self.resting.front() {
            if now.duration_since(at) < SLOT_GRACE {
                break;
            }
            self.resting.pop_front();
            self.free.push(slot);
        }
        self.free
            .pop()
            .or_else(|| self.resting.pop_front().map(|(_, s)| s))
    }

    /// Install a new flow. Its counters start at zero.
    pub fn install(&mut self, key: FlowKey, mut flow: Flow) -> Result<(), FlowError> {
        Self::check(&key, &flow)?;
        if self.slots.contains_key(&key) {
            return Err(FlowError::Exists { local: key.local() });
        }
        let Some(slot) = self.take_slot() else {
            return Err(FlowError::Full {
                capacity: self.capacity,
            });
        };
        flow.stats_slot = slot.to_ne_bytes();
        let zero = PerCpuValues::try_from(vec![FlowStats::default(); self.ncpus])
            .map_err(MapError::from)?;
        let result = self
            .stats
            .set(slot, zero, 0)
            .and_then(|()| self.quality.set(slot, StreamQuality::default(), 0))
            .and_then(|()| self.rtcp.set(slot, RtcpSeen::default(), 0))
            .and_then(|()| self.flows.insert(key, flow, BPF_NOEXIST));
        match result {
            Ok(()) => {
                self.slots.insert(key, Installed { slot, found: None });
                Ok(())
            }
            Err(e) => {
                self.free.push(slot);
                Err(match &e {
                    MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
                        FlowError::Full {
                            capacity: self.capacity,
                        }
                    }
                    MapError::SyscallError(s)
                        if s.io_error.raw_os_error() == Some(libc::EEXIST) =>
                    {
                        FlowError::Exists { local: key.local() }
                    }
                    _ => FlowError::Map(e),
                })
            }
        }
    }

    /// Replace an installed flow in place: one atomic map update, the same
    /// stats slot, counters kept.
    pub fn update(&mut self, key: FlowKey, mut flow: Flow) -> Result<(), FlowError> {
        Self::check(&key, &flow)?;
        let Some(installed) = self.slots.get_mut(&key) else {
            return Err(FlowError::NotFound { local: key.local() });
        };
        let slot = installed.slot;
        flow.stats_slot = slot.to_ne_bytes();
        if installed.found.take() == Some(flow) {
            return Ok(());
        }
        // The quality slot holds a sequence window and stream figures for
        // an RTP flow, RTCP reports for one without: when that changes,
        // it starts again (after the switch, so nothing of the old kind
        // lands in it afterwards; a packet in between is lost to the
        // accounting, never misread). The rtcp-mux record (`FLOW_RTCP`)
        // is reset with it: the stream it described is another.
        let rtp_changed = self
            .flows
            .get(&key, 0)
            .is_ok_and(|old| (old.flags ^ flow.flags) & media_ebpf::flow::RTP != 0);
        self.flows.insert(key, flow, BPF_EXIST)?;
        if rtp_changed {
            self.quality.set(slot, StreamQuality::default(), 0)?;
            self.rtcp.set(slot, RtcpSeen::default(), 0)?;
        }
        Ok(())
    }

    /// Install or update.
    pub fn set(&mut self, key: FlowKey, flow: Flow) -> Result<(), FlowError> {
        match self.update(key, flow) {
            Err(FlowError::NotFound { .. }) => self.install(key, flow),
            done => done,
        }
    }

    /// Remove a flow; forwarding stops with the next packet. Returns its
    /// final counters.
    pub fn remove(&mut self, key: &FlowKey) -> Result<FlowCounters, FlowError> {
        let Some(slot) = self.slots.get(key).map(|i| i.slot) else {
            return Err(FlowError::NotFound { local: key.local() });
        };
        self.flows.remove(key)?;
        self.slots.remove(key);
        let last = self.read(slot);
        self.resting.push_back((Instant::now(), slot));
        last
    }

    /// The flow installed for `key`, as the data plane sees it.
    pub fn get(&self, key: &FlowKey) -> Result<Flow, FlowError> {
        if !self.slots.contains_key(key) {
            return Err(FlowError::NotFound { local: key.local() });
        }
        Ok(self.flows.get(key, 0)?)
    }

    /// Counters of an installed flow.
    pub fn counters(&self, key: &FlowKey) -> Result<FlowCounters, FlowError> {
        let Some(slot) = self.slots.get(key).map(|i| i.slot) else {
            return Err(FlowError::NotFound { local: key.local() });
        };
        self.read(slot)
    }

    fn read(&self, slot: u32) -> Result<FlowCounters, FlowError> {
        let stats = self.stats.get(&slot, 0)?;
        let quality = self.quality.get(&slot, 0)?;
        let rtcp = self.rtcp.get(&slot, 0)?;
        Ok(FlowCounters {
            quality,
            rtcp,
            ..FlowCounters::sum(&stats, quality.seq)
        })
    }
}
