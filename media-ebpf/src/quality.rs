//! What the data plane accounts per RTP stream beyond its counters: the
//! value of `FLOW_QUALITY`, one per flow, shared by all CPUs, and the same
//! record the daemon keeps per port for its userspace path.
//!
//! Everything is measured on arrival at the relay, so it describes the
//! network *before* the relay on that leg:
//!
//! - loss ([`SeqWindow`], RFC 3550 §A.1/§A.3);
//! - interarrival jitter, RFC 3550 §6.4.1 with the fixed-point estimator
//!   of §A.8, in RTP timestamp units of the payload's clock rate;
//! - gaps in the sequence at arrival (count, longest), duplicates and
//!   packets arriving behind the highest (reordered), from a 32-packet
//!   history bitmap;
//! - the relative transit delay (arrival in timestamp units − RTP
//!   timestamp): its lowest value over the current and the previous period
//!   of ~4.2 s, and its current value. Transit above that minimum is a
//!   queue building on the way in — the signature of a shaper;
//! - the largest gap between two arrivals.
//!
//! Timing needs the clock rate; a flow without one (unknown payload) keeps
//! loss, gaps, duplicates, reordering and arrival gaps only.
//!
//! Every update is a handful of integer operations without loops, the same
//! code in the XDP program and on the host (the host's tests cover what the
//! kernel runs).

use crate::{SeqWindow, seq::MAX_DROPOUT, seq::MAX_MISORDER};

/// [`SeqWindow::flags`] bit: the timing fields (transit, arrival, delay
/// minimum) hold a packet's figures. Cleared with the window's other flags
/// when a new window opens (another SSRC, a restart), so timing restarts
/// with it.
pub const QUALITY_TIMED: u32 = 2;

/// The delay minimum's period: 2^22 µs ≈ 4.2 s. The minimum reported is
/// over the current and the previous period, i.e. the last 4.2–8.4 s.
pub const DELAY_PERIOD_SHIFT: u32 = 22;

/// Per-stream accounting of an RTP stream. 64 bytes, only `u32`s, no
/// padding: a zeroed value is a stream not seen yet (which is how the
/// daemon resets a slot, and how a program of the previous layout left
/// the bytes that are these fields now).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamQuality {
    /// Loss accounting ([`SeqWindow`]).
    pub seq: SeqWindow,
    /// Interarrival jitter × 16, in RTP timestamp units (RFC 3550 §A.8).
    pub jitter_q4: u32,
    /// Relative transit of the last packet (arrival in timestamp units −
    /// RTP timestamp), wrapping: only differences mean something.
    pub transit: u32,
    /// Arrival of the last packet, µs of the boot clock, wrapping.
    pub arrival_us: u32,
    /// Largest time between two arrivals, µs.
    pub max_gap_us: u32,
    /// Lowest transit in the current delay period.
    pub delay_min: u32,
    /// Lowest transit in the previous delay period.
    pub delay_min_prev: u32,
    /// Gaps in the sequence at arrival: low 16 bits how many (saturating),
    /// high 16 bits the longest (packets missing, saturating).
    pub gaps: u32,
    /// Packets seen twice (within the last 32 sequence numbers, or equal
    /// to the highest).
    pub duplicates: u32,
    /// Packets arriving behind the highest sequence number, first time.
    pub reordered: u32,
    /// Bit `i`: sequence number `highest − 1 − i` arrived.
    pub recent: u32,
}

impl StreamQuality {
    /// Account one RTP packet: stream `ssrc`, sequence number `seq`, RTP
    /// timestamp `ts`, arriving at `now_ns` (boot clock), of a payload with
    /// clock rate `clock_rate` Hz (0: unknown, no timing).
    #[inline(always)]
    pub fn update(&mut self, ssrc: u32, seq: u16, ts: u32, now_ns: u64, clock_rate: u32) {
        let open = self.seq.is_initialised();
        let delta = i32::from(seq.wrapping_sub(self.seq.max_ext as u16) as i16);
        let same = open
            && self.seq.ssrc == ssrc
            && delta > -i32::from(MAX_MISORDER)
            && delta < i32::from(MAX_DROPOUT);
        self.seq.update(ssrc, seq);
        if !same {
            // A new window: history and timing start again (the window
            // cleared QUALITY_TIMED).
            self.recent = 0;
        } else if delta > 0 {
            let d = delta as u32;
            // The old highest becomes bit d − 1; bits shift out past 32.
            self.recent = if d < 32 {
                (self.recent << d) | (1 << (d - 1))
            } else {
                0
            };
            if d > 1 {
                let missing = (d - 1).min(0xffff);
                let count = (self.gaps & 0xffff).saturating_add(1).min(0xffff);
                let longest = (self.gaps >> 16).max(missing);
                self.gaps = (longest << 16) | count;
            }
        } else if delta == 0 {
            self.duplicates = self.duplicates.wrapping_add(1);
        } else {
            let back = delta.unsigned_abs();
            if back <= 32 {
                let bit = 1u32 << (back - 1);
                if self.recent & bit != 0 {
                    self.duplicates = self.duplicates.wrapping_add(1);
                } else {
                    self.recent |= bit;
                    self.reordered = self.reordered.wrapping_add(1);
                }
            } else {
                self.reordered = self.reordered.wrapping_add(1);
            }
        }
        let now_us = now_ns / 1000;
        let arrival = now_us as u32;
        let timed = self.seq.flags & QUALITY_TIMED != 0;
        if timed {
            let gap = arrival.wrapping_sub(self.arrival_us);
            if gap > self.max_gap_us && gap < 1 << 31 {
                self.max_gap_us = gap;
            }
        }
        if clock_rate == 0 {
            self.arrival_us = arrival;
            self.seq.flags |= QUALITY_TIMED;
            return;
        }
        // Arrival in timestamp units: µs × Hz / 10^6 fits u64 for ~6
        // years of uptime at 90 kHz.
        let arrival_ts = (now_us.wrapping_mul(u64::from(clock_rate)) / 1_000_000) as u32;
        let transit = arrival_ts.wrapping_sub(ts);
        if timed && self.transit_valid() {
            let d = (transit.wrapping_sub(self.transit) as i32).unsigned_abs();
            // J += (|D| − J) / 16, in ×16 fixed point (RFC 3550 §A.8).
            self.jitter_q4 = self
                .jitter_q4
                .wrapping_add(d)
                .wrapping_sub((self.jitter_q4.wrapping_add(8)) >> 4);
            if (arrival >> DELAY_PERIOD_SHIFT) != (self.arrival_us >> DELAY_PERIOD_SHIFT) {
                self.delay_min_prev = self.delay_min;
                self.delay_min = transit;
            } else if (transit.wrapping_sub(self.delay_min) as i32) < 0 {
                self.delay_min = transit;
            }
        } else {
            self.jitter_q4 = 0;
            self.delay_min = transit;
            self.delay_min_prev = transit;
        }
        self.transit = transit;
        self.arrival_us = arrival;
        self.seq.flags |= QUALITY_TIMED | QUALITY_TRANSIT;
    }

    /// Whether `transit` holds a packet's transit (the stream's clock rate
    /// was known for the last packet of this window).
    #[must_use]
    pub const fn transit_valid(&self) -> bool {
        self.seq.flags & QUALITY_TRANSIT != 0
    }

    /// Interarrival jitter in RTP timestamp units.
    #[must_use]
    pub const fn jitter(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    /// Gaps in the sequence at arrival.
    #[must_use]
    pub const fn gap_count(&self) -> u32 {
        self.gaps & 0xffff
    }

    /// The longest gap (packets missing in a row, at arrival).
    #[must_use]
    pub const fn longest_gap(&self) -> u32 {
        self.gaps >> 16
    }

    /// Transit of the last packet above the lowest of the last 4–8 s, in
    /// timestamp units: how much queue the stream's packets meet now that
    /// they did not meet then.
    #[must_use]
    pub fn delay_above_min(&self) -> u32 {
        if !self.transit_valid() {
            return 0;
        }
        let min = if (self.delay_min_prev.wrapping_sub(self.delay_min) as i32) < 0 {
            self.delay_min_prev
        } else {
            self.delay_min
        };
        let above = self.transit.wrapping_sub(min) as i32;
        above.max(0) as u32
    }
}

/// [`SeqWindow::flags`] bit: `transit` holds a packet's transit.
pub const QUALITY_TRANSIT: u32 = 4;

/// 32-bit words of an RTCP packet the data plane looks at: a sender
/// report's header, sender info and first report block (RFC 3550 §6.4.1:
/// 2 + 5 + 6 words); a receiver report's use the first 8.
pub const RTCP_WORDS: usize = 13;

/// [`RtcpSeen::flags`]: a sender report was seen.
pub const RTCP_SR_SEEN: u32 = 1;
/// [`RtcpSeen::flags`]: a report block was seen.
pub const RTCP_BLOCK_SEEN: u32 = 2;

/// The `FLOW_QUALITY` value of an RTCP flow (a flow without [`RTP`]
/// set, i.e. a stream's RTCP port), and the `FLOW_RTCP` value of an RTP
/// flow (RTCP multiplexed on the RTP port): what the relay saw of the
/// RTCP that passed, for the far ends' view of each leg and for round-trip times.
/// The first packet of a compound RTCP packet is an SR or an RR (RFC 3550
/// §6.1): its sender info and its first report block are kept, with the
/// time they passed. 64 bytes, only `u32`s, like [`StreamQuality`]; a
/// zeroed value is nothing seen.
///
/// [`RTP`]: crate::flow::RTP
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtcpSeen {
    /// [`RTCP_SR_SEEN`], [`RTCP_BLOCK_SEEN`].
    pub flags: u32,
    /// Sender reports seen.
    pub sr_count: u32,
    /// The last SR's sender SSRC.
    pub sr_ssrc: u32,
    /// The last SR's NTP timestamp, middle 32 bits (what a report about
    /// it names as LSR).
    pub sr_ntp_mid: u32,
    /// When it passed, boot clock ns, low and high word.
    pub sr_at_lo: u32,
    pub sr_at_hi: u32,
    /// Report blocks seen (the first of each packet).
    pub block_count: u32,
    /// The last block's reporter (the packet's sender SSRC).
    pub reporter: u32,
    /// The SSRC the block reports on.
    pub source: u32,
    /// Fraction lost (high 8 bits) and cumulative lost (low 24, signed).
    pub lost: u32,
    /// Extended highest sequence number received.
    pub highest: u32,
    /// Interarrival jitter the reporter measured (its timestamp units).
    pub jitter: u32,
    /// LSR and DLSR (1/65536 s).
    pub lsr: u32,
    pub dlsr: u32,
    /// When the block passed, boot clock ns, low and high word.
    pub block_at_lo: u32,
    pub block_at_hi: u32,
}

impl RtcpSeen {
    /// Account one RTCP packet arriving at `now_ns`: `w` holds its first
    /// `n` 32-bit words as on the wire. Anything that is not an SR or RR
    /// of version 2 with the words its report count needs is ignored.
    #[inline(always)]
    pub fn update(&mut self, w: &[u32; RTCP_WORDS], n: usize, now_ns: u64) {
        if n < 2 {
            return;
        }
        let head = u32::from_be(w[0]);
        if head >> 30 != 2 {
            return;
        }
        let count = (head >> 24) & 0x1f;
        let (lo, hi) = (now_ns as u32, (now_ns >> 32) as u32);
        let block = match (head >> 16) & 0xff {
            200 => {
                if n < 7 {
                    return;
                }
                self.flags |= RTCP_SR_SEEN;
                self.sr_count = self.sr_count.wrapping_add(1);
                self.sr_ssrc = u32::from_be(w[1]);
                self.sr_ntp_mid = (u32::from_be(w[2]) << 16) | (u32::from_be(w[3]) >> 16);
                self.sr_at_lo = lo;
                self.sr_at_hi = hi;
                7
            }
            201 => 2,
            _ => return,
        };
        if count == 0 || n < block + 6 {
            return;
        }
        self.flags |= RTCP_BLOCK_SEEN;
        self.block_count = self.block_count.wrapping_add(1);
        self.reporter = u32::from_be(w[1]);
        self.source = u32::from_be(w[block]);
        self.lost = u32::from_be(w[block + 1]);
        self.highest = u32::from_be(w[block + 2]);
        self.jitter = u32::from_be(w[block + 3]);
        self.lsr = u32::from_be(w[block + 4]);
        self.dlsr = u32::from_be(w[block + 5]);
        self.block_at_lo = lo;
        self.block_at_hi = hi;
    }

    /// When the last SR passed (boot clock ns).
    #[must_use]
    pub const fn sr_at(&self) -> u64 {
        (self.sr_at_hi as u64) << 32 | self.sr_at_lo as u64
    }

    /// When the last report block passed (boot clock ns).
    #[must_use]
    pub const fn block_at(&self) -> u64 {
        (self.block_at_hi as u64) << 32 | self.block_at_lo as u64
    }

    /// The reporter's fraction lost, 0..=1.
    #[must_use]
    pub fn fraction_lost(&self) -> f32 {
        (self.lost >> 24) as f32 / 256.0
    }

    /// The reporter's cumulative lost (24-bit signed, RFC 3550 §6.4.1).
    #[must_use]
    pub const fn cumulative_lost(&self) -> i32 {
        ((self.lost << 8) as i32) >> 8
    }

    /// This record as the bytes of a [`StreamQuality`] slot (the map's
    /// value type), and back.
    #[must_use]
    pub const fn from_slot(q: &StreamQuality) -> Self {
        // SAFETY: both are #[repr(C)], 64 bytes of u32s, alignment 4:
        // every bit pattern of one is a valid other.
        unsafe { core::mem::transmute::<StreamQuality, Self>(*q) }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], only u32s: every bit pattern is valid and there
    // is no padding.
    unsafe impl aya::Pod for super::StreamQuality {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RtcpSeen {}
}

#[cfg(test)]
mod tests {
    use super::StreamQuality;

    const MS: u64 = 1_000_000;

    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<super::StreamQuality>(), 64);
        assert_eq!(core::mem::size_of::<super::RtcpSeen>(), 64);
        assert_eq!(core::mem::align_of::<super::RtcpSeen>(), 4);
    }

    /// Big-endian words of an RTCP packet, as the data plane reads them.
    fn words(bytes: &[u8]) -> ([u32; super::RTCP_WORDS], usize) {
        let mut w = [0u32; super::RTCP_WORDS];
        let n = (bytes.len() / 4).min(super::RTCP_WORDS);
        for (i, c) in bytes.chunks_exact(4).take(n).enumerate() {
            w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        }
        (w, n)
    }

    #[test]
    fn sender_and_receiver_reports() {
        use super::RtcpSeen;
        // SR, one block: SSRC 0x11, NTP 0x0000_1234_5678_9abc, block
        // about 0x22: 25 % lost, cumulative 300 (0x12c), highest 7000, jitter 40,
        // LSR 0x1111_2222, DLSR 0x8000 (0.5 s).
        let mut sr = vec![0x81, 200, 0, 12];
        sr.extend_from_slice(&0x11u32.to_be_bytes());
        sr.extend_from_slice(&0x1234u32.to_be_bytes());
        sr.extend_from_slice(&0x5678_9abcu32.to_be_bytes());
        sr.extend_from_slice(&[0; 12]);
        sr.extend_from_slice(&0x22u32.to_be_bytes());
        sr.extend_from_slice(&((64u32 << 24) | 0x12c).to_be_bytes());
        sr.extend_from_slice(&7000u32.to_be_bytes());
        sr.extend_from_slice(&40u32.to_be_bytes());
        sr.extend_from_slice(&0x1111_2222u32.to_be_bytes());
        sr.extend_from_slice(&0x8000u32.to_be_bytes());
        let mut r = RtcpSeen::default();
        let (w, n) = words(&sr);
        r.update(&w, n, 5_000_000_000);
        assert_eq!(
            (r.sr_count, r.sr_ssrc, r.sr_ntp_mid),
            (1, 0x11, 0x1234_5678)
        );
        assert_eq!(r.sr_at(), 5_000_000_000);
        assert_eq!(
            (r.reporter, r.source, r.highest, r.jitter),
            (0x11, 0x22, 7000, 40)
        );
        assert_eq!((r.fraction_lost(), r.cumulative_lost()), (0.25, 300));
        assert_eq!(
            (r.lsr, r.dlsr, r.block_at()),
            (0x1111_2222, 0x8000, 5_000_000_000)
        );
        // An RR whose cumulative loss went negative (duplicates).
        let mut rr = vec![0x81, 201, 0, 7];
        rr.extend_from_slice(&0x33u32.to_be_bytes());
        rr.extend_from_slice(&0x44u32.to_be_bytes());
        rr.extend_from_slice(&0x00ff_fffeu32.to_be_bytes());
        rr.extend_from_slice(&[0; 16]);
        let (w, n) = words(&rr);
        r.update(&w, n, u64::from(u32::MAX) + 7);
        assert_eq!(
            (r.reporter, r.source, r.cumulative_lost()),
            (0x33, 0x44, -2)
        );
        assert_eq!(r.block_at(), u64::from(u32::MAX) + 7);
        assert_eq!((r.sr_count, r.block_count), (1, 2));
        // Not SR/RR, version 1, short: nothing.
        let before = r;
        for bad in [
            &rr[..20],
            &[0x81, 202, 0, 1, 0, 0, 0, 1][..],
            &[0x41, 201, 0, 7][..],
            &[][..],
        ] {
            let (w, n) = words(bad);
            r.update(&w, n, 1);
        }
        assert_eq!(r, before);
        // An RR without blocks: nothing but a valid packet.
        let (w, n) = words(&[0x80, 201, 0, 1, 0, 0, 0, 9]);
        r.update(&w, n, 1);
        assert_eq!(r, before);
    }

    /// A 20 ms 8 kHz stream arriving exactly on time: no jitter, no gap,
    /// no queue.
    #[test]
    fn a_steady_stream_has_no_jitter() {
        let mut q = StreamQuality::default();
        for i in 0..500u32 {
            q.update(
                7,
                i as u16,
                1000 + i * 160,
                5_000 * MS + u64::from(i) * 20 * MS,
                8000,
            );
        }
        assert_eq!(q.jitter(), 0);
        assert_eq!(q.seq.lost(), 0);
        assert_eq!((q.gap_count(), q.duplicates, q.reordered), (0, 0, 0));
        assert_eq!(q.max_gap_us, 20_000);
        assert_eq!(q.delay_above_min(), 0);
    }

    /// Arrivals alternating 10 ms early and late: |D| = 20 ms = 160 units
    /// every packet, so J converges to 160 (RFC 3550 §6.4.1: J is the mean
    /// deviation of the transit difference).
    #[test]
    fn alternating_arrivals_converge_to_their_difference() {
        let mut q = StreamQuality::default();
        for i in 0..400u32 {
            let wobble = if i % 2 == 0 { 0 } else { 20 * MS };
            q.update(
                7,
                i as u16,
                i * 160,
                1_000 * MS + u64::from(i) * 20 * MS + wobble,
                8000,
            );
        }
        let j = q.jitter();
        assert!((155..=160).contains(&j), "jitter {j}");
        // The fixed point estimator follows the float one of §6.4.1.
        let mut f = 0.0f64;
        for _ in 1..400 {
            f += (160.0 - f) / 16.0;
        }
        assert!(
            (f - f64::from(q.jitter_q4) / 16.0).abs() < 1.0,
            "{f} vs {}",
            q.jitter_q4
        );
    }

    /// Random arrival wobble: the ×16 fixed point estimator stays within
    /// a unit of RFC 3550 §6.4.1's J = J + (|D| − J) / 16 in floats.
    #[test]
    fn the_fixed_point_follows_the_rfc_formula() {
        let mut q = StreamQuality::default();
        let mut x = 12_345u64;
        let (mut f, mut last): (f64, Option<f64>) = (0.0, None);
        for i in 0..2_000u32 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let wobble_us = (x >> 33) % 40_000;
            let now_us = 1_000_000 + u64::from(i) * 20_000 + wobble_us;
            q.update(5, i as u16, i * 160, now_us * 1000, 8000);
            let transit = (now_us * 8000 / 1_000_000) as f64 - f64::from(i * 160);
            if let Some(l) = last {
                f += ((transit - l).abs() - f) / 16.0;
            }
            last = Some(transit);
            let got = f64::from(q.jitter_q4) / 16.0;
            assert!((got - f).abs() < 1.0, "packet {i}: {got} vs {f}");
        }
        assert!(f > 50.0, "the wobble made jitter ({f})");
    }

    /// A shaper: each packet waits 1 ms longer than the one before.
    #[test]
    fn a_growing_queue_shows_as_delay_above_the_minimum() {
        let mut q = StreamQuality::default();
        for i in 0..100u32 {
            q.update(
                7,
                i as u16,
                i * 160,
                1_000 * MS + u64::from(i) * 21 * MS,
                8000,
            );
        }
        // 99 ms of queue = 792 units at 8 kHz (±1 for rounding).
        let above = q.delay_above_min();
        assert!((791..=793).contains(&above), "{above}");
        // Jitter: |D| = 1 ms = 8 units each time.
        assert!((6..=8).contains(&q.jitter()), "{}", q.jitter());
    }

    #[test]
    fn gaps_duplicates_and_reordering() {
        let mut q = StreamQuality::default();
        let mut t = 0u64;
        let mut send = |q: &mut StreamQuality, seq: u16| {
            t += 20 * MS;
            q.update(9, seq, u32::from(seq) * 160, t, 8000);
        };
        for s in [1, 2, 3, 7, 8, 5, 5, 8, 20, 21, 21, 4] {
            send(&mut q, s);
        }
        // Gaps at arrival: 4–6 (3), 9–19 (11).
        assert_eq!((q.gap_count(), q.longest_gap()), (2, 11));
        // 5 late then again, 8 again, 21 again; 4 late.
        assert_eq!(q.duplicates, 3);
        assert_eq!(q.reordered, 2);
        assert_eq!(q.seq.received(), 12);
    }

    #[test]
    fn a_new_ssrc_starts_over() {
        let mut q = StreamQuality::default();
        for i in 0..50u32 {
            let wobble = if i % 2 == 0 { 0 } else { 5 * MS };
            q.update(1, i as u16, i * 160, u64::from(i) * 20 * MS + wobble, 8000);
        }
        assert!(q.jitter() > 0);
        q.update(2, 40_000, 77, 2_000 * MS, 8000);
        assert_eq!((q.jitter(), q.delay_above_min(), q.recent), (0, 0, 0));
        q.update(2, 40_001, 77 + 160, 2_020 * MS, 8000);
        assert_eq!((q.jitter(), q.delay_above_min()), (0, 0));
    }

    #[test]
    fn no_clock_rate_keeps_counts_and_gaps_only() {
        let mut q = StreamQuality::default();
        for i in 0..10u32 {
            q.update(3, i as u16, 0, u64::from(i) * 30 * MS, 0);
        }
        assert!(!q.transit_valid());
        assert_eq!((q.jitter(), q.delay_above_min()), (0, 0));
        assert_eq!(q.max_gap_us, 30_000);
    }

    /// Timestamps and clocks wrap; nothing breaks at the edges.
    #[test]
    fn wrapping_is_harmless() {
        let mut q = StreamQuality::default();
        let start = u64::from(u32::MAX) * 1000 - 100 * MS;
        for i in 0..20u32 {
            let ts = (u32::MAX - 800).wrapping_add(i * 160);
            q.update(
                4,
                65_530u16.wrapping_add(i as u16),
                ts,
                start + u64::from(i) * 20 * MS,
                8000,
            );
        }
        assert_eq!(q.jitter(), 0);
        assert_eq!(q.max_gap_us, 20_000);
        assert_eq!(q.seq.lost(), 0);
        assert_eq!(q.delay_above_min(), 0);
    }
}
