//! The quality watch: every leg of every call looked at about once a
//! second, a `warn` line and a metric when one crosses a threshold, an
//! `info` line when it recovers, and the figures kept for the call's
//! summary (`query`, and the report an ended call leaves).
//!
//! A leg's figures (see `quality.rs` for how each is measured) are judged
//! as the worse of what the relay measured on what the party sends
//! (`inbound`) and what the party itself reports in RTCP about what it
//! receives (`far end`, while its last report is under 15 s old):
//!
//! - jitter: the interarrival jitter, ms;
//! - loss: % of the packets expected over the last [`WINDOW`] (inbound),
//!   or the fraction lost of the party's last report;
//! - burst: the mean length of the runs of consecutive packets missing
//!   over the last [`WINDOW`] — a fade, where spread single losses are
//!   concealed by the codec;
//! - delay rise: the relative transit delay above its recent minimum, ms —
//!   a queue building before the relay (a shaper).
//!
//! A figure above its threshold degrades the leg; it recovers at half of
//! it (hysteresis: a figure hovering at the threshold does not flap).
//!
//! Cost: a check reads the counters of the call's ports (two map lookups
//! each on the XDP path). At most [`BUDGET`] calls are checked per tick
//! (4 000 calls a second at the daemon's 250 ms tick): with more calls
//! than that, each is looked at less often than once a second.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    ops::Bound,
    time::{Duration, Instant, SystemTime},
};

use tracing::{info, warn};

use super::{
    backend::{Backend, Counters, RtcpReports},
    clock::Now,
    engine::Engine,
    model::Call,
    quality::Leg,
};

/// When a leg is degraded (configuration `[quality-alerts]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlertThresholds {
    pub jitter: Duration,
    pub loss_percent: f64,
    /// Mean length of the bursts of loss, packets.
    pub burst_packets: f64,
    pub delay_rise: Duration,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        Self {
            // Where listeners start to notice without a deep jitter buffer.
            jitter: Duration::from_millis(30),
            // G.711 without concealment is audibly worse past 1 %.
            loss_percent: 1.0,
            // Three 20 ms packets in a row: a 60 ms hole, a fade.
            burst_packets: 3.0,
            // More than a typical jitter buffer holds.
            delay_rise: Duration::from_millis(60),
        }
    }
}

/// How often a call's legs are looked at (when the budget allows).
pub(super) const CHECK: Duration = Duration::from_secs(1);
/// Calls looked at per tick at most.
pub(super) const BUDGET: usize = 1000;
/// The window loss and bursts are judged over.
pub const WINDOW: Duration = Duration::from_secs(5);
/// Packets the window must expect before loss and bursts are judged.
const MIN_EXPECTED: u64 = 25;
/// A far end's report older than this is not judged.
const FAR_END_FRESH: Duration = Duration::from_secs(15);

/// A figure an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    Jitter,
    Loss,
    Burst,
    DelayRise,
}

impl Figure {
    pub const ALL: [Self; 4] = [Self::Jitter, Self::Loss, Self::Burst, Self::DelayRise];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Jitter => "jitter",
            Self::Loss => "loss",
            Self::Burst => "burst",
            Self::DelayRise => "delay_rise",
        }
    }

    /// The unit values and thresholds are given in (logs).
    pub const fn unit(self) -> &'static str {
        match self {
            Self::Jitter | Self::DelayRise => "ms",
            Self::Loss => "%",
            Self::Burst => "packets",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }

    fn threshold(self, t: &AlertThresholds) -> f64 {
        match self {
            Self::Jitter => t.jitter.as_secs_f64() * 1000.0,
            Self::Loss => t.loss_percent,
            Self::Burst => t.burst_packets,
            Self::DelayRise => t.delay_rise.as_secs_f64() * 1000.0,
        }
    }
}

/// Where a figure was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measured {
    /// By the relay, on what the party sends.
    Inbound,
    /// By the party, on what it receives (its RTCP report).
    FarEnd,
}

impl Measured {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::FarEnd => "far end",
        }
    }
}

/// A leg crossing a threshold, one way or the other.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change {
    pub figure: Figure,
    pub value: f64,
    pub threshold: f64,
    pub measured: Measured,
    /// `true`: degraded now; `false`: recovered.
    pub degraded: bool,
}

/// The counters of one check, for the window.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    expected: u64,
    received: u64,
    gaps: u64,
}

/// What a leg's checks have seen over the call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Checks with a MOS.
    pub checks: u32,
    pub mos_min: f64,
    pub mos_max: f64,
    pub mos_sum: f64,
    pub max_jitter_us: u64,
    /// The worst window's loss, %.
    pub max_loss_percent: f64,
    pub max_delay_rise_us: u64,
    /// Runs of consecutive missing packets (inbound), and the longest.
    pub bursts: u64,
    pub longest_burst: u64,
    /// Checks the leg was degraded at.
    pub degraded_checks: u32,
}

impl Summary {
    pub fn mos_avg(&self) -> Option<f64> {
        (self.checks > 0).then(|| self.mos_sum / f64::from(self.checks))
    }
}

/// Counts of the watch, for metrics.
#[derive(Clone, Debug, Default)]
pub struct WatchTotals {
    /// Legs degraded now, by side.
    pub degraded_legs: std::collections::BTreeMap<&'static str, u64>,
    /// Alerts raised, by side and figure.
    pub alerts: std::collections::BTreeMap<(&'static str, &'static str), u64>,
}

/// One leg's watch: the window, which figures are degraded, the summary.
#[derive(Clone, Debug, Default)]
pub struct LegWatch {
    samples: VecDeque<Sample>,
    degraded: u8,
    pub summary: Summary,
}

impl LegWatch {
    /// The figures degraded now.
    pub fn degraded(&self) -> impl Iterator<Item = Figure> + '_ {
        Figure::ALL
            .into_iter()
            .filter(|f| self.degraded & f.bit() != 0)
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded != 0
    }

    /// Judge one check's `leg` at `now` (`wall`: the same instant on the
    /// wall clock, for the far end's report times); the thresholds it
    /// crossed, either way.
    pub fn observe(
        &mut self,
        leg: &Leg,
        now: Instant,
        wall: SystemTime,
        t: &AlertThresholds,
    ) -> Vec<Change> {
        let q = leg.inbound;
        // The window: this check's counters, and the oldest still inside
        // it (or just outside: the window is never shorter than WINDOW
        // once the call is that old).
        self.samples.push_back(Sample {
            at: now,
            expected: leg.expected,
            received: leg.received,
            gaps: q.map_or(0, |q| u64::from(q.gaps)),
        });
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|s| now.saturating_duration_since(s.at) >= WINDOW)
        {
            self.samples.pop_front();
        }
        let (first, last) = (self.samples.front(), self.samples.back());
        let window = first.zip(last).filter(|(f, l)| {
            l.expected.saturating_sub(f.expected) >= MIN_EXPECTED
                // A new sequence window (a new SSRC) restarts the counts.
                && l.expected >= f.expected
        });
        let (loss, burst) = window.map_or((None, None), |(f, l)| {
            let expected = l.expected - f.expected;
            let lost = expected.saturating_sub(l.received.saturating_sub(f.received));
            let bursts = l.gaps.saturating_sub(f.gaps);
            (
                Some(100.0 * lost as f64 / expected as f64),
                Some(if bursts == 0 {
                    0.0
                } else {
                    lost as f64 / bursts as f64
                }),
            )
        });
        let fresh = leg
            .far
            .is_some_and(|(b, _)| wall.duration_since(b.at).unwrap_or_default() < FAR_END_FRESH);
        let worse = |inbound: Option<f64>, far: Option<f64>| match (inbound, far) {
            (Some(i), Some(f)) if f > i => Some((f, Measured::FarEnd)),
            (None, Some(f)) => Some((f, Measured::FarEnd)),
            (i, _) => i.map(|i| (i, Measured::Inbound)),
        };
        let ms = |us: u64| us as f64 / 1000.0;
        let values = [
            (
                Figure::Jitter,
                worse(
                    q.and_then(|q| q.jitter_us).map(|j| ms(u64::from(j))),
                    leg.far_jitter_us().filter(|_| fresh).map(ms),
                ),
            ),
            (Figure::Loss, worse(loss, leg.far_loss().filter(|_| fresh))),
            (Figure::Burst, worse(burst, None)),
            (
                Figure::DelayRise,
                worse(
                    q.and_then(|q| q.delay_above_min_us)
                        .map(|d| ms(u64::from(d))),
                    None,
                ),
            ),
        ];
        let mut changes = Vec::new();
        for (figure, value) in values {
            let Some((value, measured)) = value else {
                continue;
            };
            let threshold = figure.threshold(t);
            let was = self.degraded & figure.bit() != 0;
            let now_degraded = if was {
                value > threshold / 2.0
            } else {
                value > threshold
            };
            if now_degraded != was {
                self.degraded ^= figure.bit();
                changes.push(Change {
                    figure,
                    value,
                    threshold,
                    measured,
                    degraded: now_degraded,
                });
            }
        }
        // The summary.
        let s = &mut self.summary;
        if let Some(m) = leg.mos() {
            if s.checks == 0 {
                (s.mos_min, s.mos_max) = (m, m);
            }
            s.checks += 1;
            s.mos_min = s.mos_min.min(m);
            s.mos_max = s.mos_max.max(m);
            s.mos_sum += m;
        }
        if let Some(q) = q {
            s.max_jitter_us = s
                .max_jitter_us
                .max(q.jitter_us.map_or(0, u64::from))
                .max(leg.far_jitter_us().filter(|_| fresh).unwrap_or(0));
            s.max_delay_rise_us = s
                .max_delay_rise_us
                .max(q.delay_above_min_us.map_or(0, u64::from));
            s.bursts = u64::from(q.gaps);
            s.longest_burst = u64::from(q.longest_gap);
        }
        if let Some(l) = loss {
            s.max_loss_percent = s.max_loss_percent.max(l);
        }
        if self.degraded != 0 {
            s.degraded_checks += 1;
        }
        changes
    }
}

/// The side a party is on, for metrics: the SIP agent labels its parties
/// `trunk` and `pbx`; other controllers' are named by their role.
pub fn side(call: &Call, mono: usize) -> &'static str {
    match call.monos.get(mono).and_then(|m| m.label.as_deref()) {
        Some("trunk") => "trunk",
        Some("pbx") => "pbx",
        _ if mono == 0 => "caller",
        _ => "callee",
    }
}

impl<B: Backend> Engine<B> {
    /// Party `mono`'s leg: of its first RTP media carrying packets.
    pub(super) fn leg(&self, call: &Call, mono: usize) -> Option<Leg> {
        self.leg_read(call, mono, &mut HashMap::new())
    }

    /// [`Self::leg`], reading each port's counters once over the calls
    /// of `read` (both legs of a call share their ports' counters).
    fn leg_read(
        &self,
        call: &Call,
        mono: usize,
        read: &mut HashMap<(SocketAddr, Option<SocketAddr>), Counters>,
    ) -> Option<Leg> {
        let mut counters = |local: SocketAddr, slot: Option<SocketAddr>| {
            *read
                .entry((local, slot))
                .or_insert_with(|| self.counters_of(local, slot))
        };
        let m = call.monos.get(mono)?;
        let peer = m.peer.and_then(|p| call.monos.get(p));
        m.media.iter().enumerate().find_map(|(i, md)| {
            let (rtp, rtcp) = md.locals(m.local)?;
            let c = counters(rtp, md.slot);
            c.quality?;
            let pm = peer.and_then(|p| p.media.get(i));
            // Its reports (RTCP port, or the RTP port with rtcp-mux), and
            // the sender reports sent towards it (its peer's).
            let own = RtcpReports::either(counters(rtcp, md.slot).rtcp, c.rtcp);
            let peer_rtcp = pm
                .zip(peer)
                .and_then(|(pm, p)| Some((pm.locals(p.local)?, pm.slot)))
                .and_then(|((r, rc), slot)| {
                    RtcpReports::either(counters(rc, slot).rtcp, counters(r, slot).rtcp)
                });
            let far_clock = pm.and_then(|pm| pm.clock_rate).unwrap_or(0);
            Some(Leg::of(&c, own.as_ref(), peer_rtcp.as_ref(), far_clock))
        })
    }

    /// Look at the legs of the calls due, [`BUDGET`] at most, round robin.
    pub(super) fn watch_quality(&mut self, clock: Now) {
        let now = clock.mono;
        let mut due = Vec::new();
        let mut last = None;
        {
            let cursor = self.watch_cursor.as_ref();
            let after = cursor.map_or_else(
                || self.calls.range::<String, _>(..),
                |c| {
                    self.calls
                        .range::<String, _>((Bound::Excluded(c), Bound::Unbounded))
                },
            );
            let before = cursor
                .map(|c| {
                    self.calls
                        .range::<String, _>((Bound::Unbounded, Bound::Included(c)))
                })
                .into_iter()
                .flatten();
            for (id, call) in after.chain(before) {
                last = Some(id);
                if call.next_quality <= now {
                    due.push(id.clone());
                    if due.len() == BUDGET {
                        break;
                    }
                }
            }
        }
        self.watch_cursor = last.cloned();
        let thresholds = self.cfg.alerts;
        for id in due {
            let Some(call) = self.calls.get(&id) else {
                continue;
            };
            let mut read = HashMap::new();
            let legs: Vec<(usize, Leg, &'static str)> = (0..call.monos.len())
                .filter_map(|mi| Some((mi, self.leg_read(call, mi, &mut read)?, side(call, mi))))
                .collect();
            let Some(call) = self.calls.get_mut(&id) else {
                continue;
            };
            call.next_quality = now + CHECK;
            for (mi, leg, side) in legs {
                if call.watch.len() <= mi {
                    // One per party, no spare room (a Vec grows to four
                    // at least: at 100 000 calls that doubled it).
                    call.watch
                        .reserve_exact(call.monos.len().max(mi + 1) - call.watch.len());
                    call.watch.resize_with(mi + 1, LegWatch::default);
                }
                let w = &mut call.watch[mi];
                let was = w.is_degraded();
                let changes = w.observe(&leg, now, clock.wall, &thresholds);
                let is = w.is_degraded();
                let tag = call.monos.get(mi).map_or("", |m| m.tag.as_str());
                for c in changes {
                    let unit = c.figure.unit();
                    if c.degraded {
                        *self
                            .watch_totals
                            .alerts
                            .entry((side, c.figure.name()))
                            .or_default() += 1;
                        warn!(
                            call_id = %id,
                            leg = tag,
                            side,
                            figure = c.figure.name(),
                            value = format!("{:.1} {unit}", c.value),
                            threshold = format!("{:.1} {unit}", c.threshold),
                            measured = c.measured.name(),
                            "media quality degraded"
                        );
                    } else {
                        info!(
                            call_id = %id,
                            leg = tag,
                            side,
                            figure = c.figure.name(),
                            value = format!("{:.1} {unit}", c.value),
                            threshold = format!("{:.1} {unit}", c.threshold / 2.0),
                            measured = c.measured.name(),
                            "media quality recovered"
                        );
                    }
                }
                if was != is {
                    let n = self.watch_totals.degraded_legs.entry(side).or_default();
                    *n = if is { *n + 1 } else { n.saturating_sub(1) };
                }
                if let Some(j) = leg.inbound.and_then(|q| q.jitter_us) {
                    metrics::histogram!("media_relay_leg_jitter_seconds", "side" => side)
                        .record(f64::from(j) / 1e6);
                }
                if let Some(m) = leg.mos() {
                    metrics::histogram!("media_relay_leg_mos", "side" => side).record(m);
                }
            }
        }
    }

    /// A call ends: its degraded legs leave the count.
    pub(super) fn unwatch(&mut self, call: &Call) {
        for (mi, w) in call.watch.iter().enumerate() {
            if w.is_degraded() {
                let n = self
                    .watch_totals
                    .degraded_legs
                    .entry(side(call, mi))
                    .or_default();
                *n = n.saturating_sub(1);
            }
        }
    }
}
