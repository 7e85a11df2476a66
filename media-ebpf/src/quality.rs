//! What the data plane accounts per RTP stream beyond its counters: the
//! value of `FLOW_QUALITY`, one per flow, shared by all CPUs.

use crate::SeqWindow;

/// Per-stream accounting of an RTP flow: the RFC 3550 sequence window
/// (loss), and room for the per-stream quality figures (interarrival
/// jitter, loss bursts, delay trend) that the telemetry will keep in the
/// kernel, so that adding them does not change the pinned layout.
///
/// 64 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamQuality {
    /// Loss accounting ([`SeqWindow`]).
    pub seq: SeqWindow,
    /// Reserved: zero.
    pub reserved: [u32; 10],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], only u32s: every bit pattern is valid and there
    // is no padding.
    unsafe impl aya::Pod for super::StreamQuality {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<super::StreamQuality>(), 64);
    }
}
