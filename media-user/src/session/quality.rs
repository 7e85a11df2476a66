//! A leg's quality from what the relay measured and what the far ends
//! reported: the figures of one party's side of a call, its round-trip
//! time from the RTCP passing through, and a MOS estimate.
//!
//! For party X (its leg is the network between X and the relay):
//!
//! - *inbound* (X → relay): loss, jitter, gaps and the delay trend the
//!   relay measured on X's RTP at arrival (XDP or userspace path);
//! - *far end* (relay → X, and beyond to the other party): X's own RTCP
//!   report block about the stream it receives (fraction and cumulative
//!   lost, its jitter);
//! - *round trip* relay ↔ X: the other party's sender report passed the
//!   relay towards X at `t_sr`; X's report block naming it (LSR = the
//!   SR's NTP middle 32 bits) passed back at `t_rr` after X held it DLSR:
//!   RTT = t_rr − t_sr − DLSR, on the relay's clock alone (RFC 3550
//!   §6.4.1 done at the relay, so no clock of the parties is involved).
//!
//! MOS, the simplified E-model (ITU-T G.107) widely used for VoIP
//! monitoring: effective latency Le = RTT/2 + 2·J + 10 ms (J the worse of
//! inbound and far-end jitter, in ms); R = 93.2 − Le/40 if Le < 160 ms,
//! else 93.2 − (Le − 120)/10; R −= 2.5 × loss % (the worse of inbound
//! and far-end fraction lost); MOS = 1 + 0.035·R + 7·10⁻⁶·R·(R − 60)·
//! (100 − R), clamped to 1.0–4.5 (G.711's ceiling). Without RTCP the
//! RTT term is 0 and the far end is not counted: the MOS then describes
//! the inbound direction only (`far end` absent says so).

use std::time::SystemTime;

use super::backend::{Counters, Quality, ReportBlock, RtcpReports};

/// One party's leg.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Leg {
    /// The relay's figures on what the party sends (its RTP stream).
    pub inbound: Option<Quality>,
    /// Inbound RTP packets expected and received so far.
    pub expected: u64,
    pub received: u64,
    /// The party's own report about what it receives, and the clock rate
    /// of that stream (the other party's payload).
    pub far: Option<(ReportBlock, u32)>,
    /// Relay ↔ party, µs.
    pub rtt_us: Option<u64>,
}

impl Leg {
    /// The leg of a party whose RTP stream counts `rtp`, whose RTCP port
    /// saw `own` (its reports), and whose peer's RTCP port saw `peer`
    /// (the SRs sent towards it); `far_clock` is the clock rate of what
    /// the party receives.
    #[must_use]
    pub fn of(
        rtp: &Counters,
        own: Option<&RtcpReports>,
        peer: Option<&RtcpReports>,
        far_clock: u32,
    ) -> Self {
        let far = own.and_then(|r| r.last_block).map(|b| (b, far_clock));
        let rtt_us = own
            .and_then(|r| r.last_block)
            .zip(peer.and_then(|p| p.last_sr))
            .and_then(|(b, (_, ntp_mid, sr_at))| round_trip(&b, ntp_mid, sr_at));
        Self {
            inbound: rtp.quality,
            expected: rtp.rtp_expected,
            received: rtp.rtp_received,
            far,
            rtt_us,
        }
    }

    /// Inbound loss, % of the packets expected (0 before any).
    #[must_use]
    pub fn inbound_loss(&self) -> f64 {
        if self.expected > 0 {
            100.0 * self.expected.saturating_sub(self.received) as f64 / self.expected as f64
        } else {
            0.0
        }
    }

    /// The far end's jitter, µs (if its stream's clock rate is known).
    #[must_use]
    pub fn far_jitter_us(&self) -> Option<u64> {
        let (b, hz) = self.far?;
        (hz > 0).then(|| u64::from(b.jitter) * 1_000_000 / u64::from(hz))
    }

    /// The far end's fraction lost, %.
    #[must_use]
    pub fn far_loss(&self) -> Option<f64> {
        self.far
            .map(|(b, _)| f64::from(b.fraction_lost) * 100.0 / 256.0)
    }

    /// The MOS estimate (module doc); `None` before any RTP arrived.
    #[must_use]
    pub fn mos(&self) -> Option<f64> {
        let q = self.inbound?;
        let jitter_ms = q
            .jitter_us
            .map(u64::from)
            .max(self.far_jitter_us())
            .unwrap_or(0) as f64
            / 1000.0;
        let loss = self.inbound_loss().max(self.far_loss().unwrap_or(0.0));
        let rtt_ms = self.rtt_us.unwrap_or(0) as f64 / 1000.0;
        Some(mos(loss, jitter_ms, rtt_ms))
    }
}

/// RTT from a report block naming a sender report (by its NTP middle 32
/// bits) that passed the relay at `sr_at`; `None` if the block names
/// another SR (or none: LSR 0) or the times do not add up.
fn round_trip(b: &ReportBlock, ntp_mid: u32, sr_at: SystemTime) -> Option<u64> {
    if b.lsr == 0 || b.lsr != ntp_mid {
        return None;
    }
    let between = b.at.duration_since(sr_at).ok()?;
    // DLSR in 1/65536 s.
    let held_us = u64::from(b.dlsr) * 1_000_000 / 65_536;
    u64::try_from(between.as_micros())
        .ok()?
        .checked_sub(held_us)
}

/// The simplified E-model (module doc).
#[must_use]
pub fn mos(loss_percent: f64, jitter_ms: f64, rtt_ms: f64) -> f64 {
    let latency = rtt_ms / 2.0 + 2.0 * jitter_ms + 10.0;
    let mut r = if latency < 160.0 {
        93.2 - latency / 40.0
    } else {
        93.2 - (latency - 120.0) / 10.0
    };
    r -= 2.5 * loss_percent;
    let r = r.clamp(0.0, 100.0);
    let m = 1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r);
    m.clamp(1.0, 4.5)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{Leg, mos, round_trip};
    use crate::session::backend::{Counters, Path, Quality, ReportBlock, RtcpReports};

    #[test]
    fn mos_of_clean_and_impaired_links() {
        // A clean LAN: the model's ceiling for G.711.
        assert!(
            (mos(0.0, 0.0, 0.0) - 4.41).abs() < 0.01,
            "{}",
            mos(0.0, 0.0, 0.0)
        );
        // Worse with each impairment, monotonically.
        let clean = mos(0.0, 0.0, 0.0);
        let lossy = mos(2.0, 0.0, 0.0);
        let jittery = mos(0.0, 30.0, 0.0);
        let far = mos(0.0, 0.0, 300.0);
        assert!(lossy < clean && jittery < clean && far < clean);
        assert!(mos(5.0, 0.0, 0.0) < lossy);
        // 2 % loss ≈ R 88 → 4.3; heavy loss bottoms out at 1.
        assert!((lossy - 4.30).abs() < 0.02, "{lossy}");
        assert!((mos(50.0, 0.0, 0.0) - 1.0).abs() < 1e-9);
        // Latency past 160 ms costs a point of R per 10 ms.
        assert!(mos(0.0, 0.0, 400.0) < mos(0.0, 0.0, 200.0));
    }

    fn block(lsr: u32, dlsr: u32, at: SystemTime) -> ReportBlock {
        ReportBlock {
            reporter: 1,
            source: 2,
            fraction_lost: 64,
            cumulative_lost: 10,
            highest: 100,
            jitter: 160,
            lsr,
            dlsr,
            at,
        }
    }

    #[test]
    fn round_trip_from_the_relay_clock_alone() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // SR passed at t; the RR naming it passed 1.1 s later after a
        // 1 s hold: 100 ms relay ↔ party and back.
        let b = block(0xabcd, 65_536, t + Duration::from_millis(1100));
        assert_eq!(round_trip(&b, 0xabcd, t), Some(100_000));
        // Another SR, none, or times that do not add up: unknown.
        assert_eq!(round_trip(&b, 0xabce, t), None);
        assert_eq!(round_trip(&block(0, 0, t), 0, t), None);
        assert_eq!(round_trip(&block(0xabcd, 5 * 65_536, t), 0xabcd, t), None);
    }

    #[test]
    fn a_leg_combines_inbound_and_far_end() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000);
        let rtp = Counters {
            rtp_expected: 1000,
            rtp_received: 990,
            quality: Some(Quality {
                path: Path::Xdp,
                clock_rate: 8000,
                jitter_us: Some(4000),
                delay_above_min_us: Some(0),
                max_gap_us: 20_000,
                gaps: 3,
                longest_gap: 4,
                duplicates: 0,
                reordered: 0,
            }),
            ..Counters::default()
        };
        let own = RtcpReports {
            blocks: 1,
            last_block: Some(block(7, 0, t + Duration::from_millis(80))),
            ..RtcpReports::default()
        };
        let peer = RtcpReports {
            sender_reports: 1,
            last_sr: Some((9, 7, t)),
            ..RtcpReports::default()
        };
        let leg = Leg::of(&rtp, Some(&own), Some(&peer), 8000);
        assert!((leg.inbound_loss() - 1.0).abs() < 1e-9);
        assert_eq!(leg.rtt_us, Some(80_000));
        // Far end: 64/256 lost = 25 %, jitter 160 units at 8 kHz = 20 ms.
        assert_eq!(leg.far_jitter_us(), Some(20_000));
        assert!((leg.far_loss().unwrap() - 25.0).abs() < 1e-9);
        let m = leg.mos().unwrap();
        assert!((m - mos(25.0, 20.0, 80.0)).abs() < 1e-9, "{m}");
        // Without RTCP: inbound only.
        let alone = Leg::of(&rtp, None, None, 8000);
        assert_eq!((alone.rtt_us, alone.far), (None, None));
        assert!((alone.mos().unwrap() - mos(1.0, 4.0, 0.0)).abs() < 1e-9);
    }
}
