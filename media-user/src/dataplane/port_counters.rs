//! What the daemon counts itself, kept where the flows are: a pinned hash
//! map (`PORT_COUNTERS`) of each bound port's userspace-path counters and
//! of the counters of XDP flows it removed (a stream that moved between
//! the paths), so that after a restart a call's counters continue instead
//! of losing the packets this process forwarded. Written from the daemon's
//! tick (changed ports only, at most once a second), read at start.

use std::{collections::HashMap as StdHashMap, net::SocketAddr, path::Path};

use aya::maps::{HashMap, MapData};
use media_ebpf::{FlowKey, SeqWindow};

use super::sessions::SessionStoreError;

/// The map's name under the pin directory.
pub const PORT_COUNTERS: &str = "PORT_COUNTERS";

/// One port's counters. 120 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRecord {
    /// The userspace path: packets and bytes forwarded, errors.
    pub packets: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Nanoseconds since the UNIX epoch of its last forwarded packet.
    pub last_ns: u64,
    /// 1 << 48 | SSRC << 16 | sequence of its last RTP packet; 0 if none.
    pub last_rtp: u64,
    /// XDP flows of this port removed so far: packets, bytes, last seen
    /// (CLOCK_MONOTONIC ns), last RTP as above.
    pub retired_packets: u64,
    pub retired_bytes: u64,
    pub retired_last_seen_ns: u64,
    pub retired_last_rtp: u64,
    /// The sequence windows of both.
    pub seq: SeqWindow,
    pub retired_seq: SeqWindow,
}

// SAFETY: #[repr(C)], u64s and two 24-byte windows of u32s: no padding,
// every bit pattern valid.
unsafe impl aya::Pod for PortRecord {}

/// The pinned map.
pub struct PortCounterStore {
    map: HashMap<MapData, FlowKey, PortRecord>,
}

impl PortCounterStore {
    /// Open the map pinned at `dir/PORT_COUNTERS`, or create and pin it.
    pub fn open(dir: &Path, max_entries: u32) -> Result<Self, SessionStoreError> {
        Ok(Self {
            map: super::sessions::open_pinned_hash(&dir.join(PORT_COUNTERS), max_entries)?,
        })
    }

    /// Every port's record.
    pub fn load(&self) -> StdHashMap<SocketAddr, PortRecord> {
        (&self.map)
            .into_iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k.local(), v))
            .collect()
    }

    pub fn put(&mut self, local: SocketAddr, r: &PortRecord) -> Result<(), SessionStoreError> {
        self.map.insert(FlowKey::new(local), *r, 0)?;
        Ok(())
    }

    pub fn remove(&mut self, local: SocketAddr) {
        let _ = self.map.remove(&FlowKey::new(local));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        assert_eq!(size_of::<super::PortRecord>(), 120);
    }
}
