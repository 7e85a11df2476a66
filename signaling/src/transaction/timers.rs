//! The transaction timers of RFC 3261 Table 4 (as amended by RFC 6026 §8,
//! which adds Timers L and M), and the backoff schedule of the
//! retransmission timers A, E and G.
//!
//! All durations derive from three base values, T1, T2 and T4, so an
//! operator who tunes T1 for a slow network scales every timer with it.
//! Over a reliable transport the retransmission timers are not used and the
//! "absorb retransmissions" timers D, I, J and K are zero (§17.1.1.2,
//! §17.1.2.2, §17.2.1, §17.2.2): nothing is retransmitted, so there is
//! nothing to absorb.

use std::time::{Duration, Instant};

/// How many T1 intervals the long timers (B, F, H, J, L, M) last: 64*T1,
/// 32 s with the default T1 (RFC 3261 Table 4).
const LONG: u32 = 64;

/// The lower bound RFC 3261 §17.1.1.2 puts on Timer D over an unreliable
/// transport ("at least 32 seconds").
const TIMER_D_MIN: Duration = Duration::from_secs(32);

/// The base values of the SIP transaction timers (RFC 3261 §17.1.1.1 and
/// Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// T1, the round-trip time estimate: the first retransmission interval
    /// and the unit of the long timers (500 ms by default, §17.1.1.1).
    pub t1: Duration,
    /// T2, the cap on the retransmission interval of non-INVITE requests and
    /// of INVITE responses (4 s by default, §17.1.2.2, §17.2.1).
    pub t2: Duration,
    /// T4, the longest a message may stay in the network: how long a
    /// transaction lingers to absorb retransmissions (5 s by default,
    /// §17.1.2.2, §17.2.1).
    pub t4: Duration,
}

impl Default for Timers {
    /// The values RFC 3261 Table 4 recommends: T1 = 500 ms, T2 = 4 s,
    /// T4 = 5 s.
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// 64*T1, saturating.
    fn long(self) -> Duration {
        self.t1.saturating_mul(LONG)
    }

    /// The first interval of Timer A, the INVITE request retransmission
    /// timer: T1, then doubling without a cap (§17.1.1.2). `None` over a
    /// reliable transport, which does not retransmit.
    #[must_use]
    pub fn timer_a(self, reliable: bool) -> Option<Duration> {
        (!reliable).then_some(self.t1)
    }

    /// Timer B, the INVITE transaction timeout: 64*T1 on any transport
    /// (§17.1.1.2).
    #[must_use]
    pub fn timer_b(self) -> Duration {
        self.long()
    }

    /// Timer D, how long a client INVITE transaction absorbs retransmitted
    /// non-2xx finals: at least 32 s over an unreliable transport (and no
    /// less than the server's Timer H, 64*T1, when T1 is raised), zero over
    /// a reliable one (§17.1.1.2).
    #[must_use]
    pub fn timer_d(self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.long().max(TIMER_D_MIN)
        }
    }

    /// The first interval of Timer E, the non-INVITE request retransmission
    /// timer: T1, then doubling up to T2 (§17.1.2.2). `None` over a reliable
    /// transport.
    #[must_use]
    pub fn timer_e(self, reliable: bool) -> Option<Duration> {
        (!reliable).then_some(self.t1)
    }

    /// Timer F, the non-INVITE transaction timeout: 64*T1 on any transport
    /// (§17.1.2.2).
    #[must_use]
    pub fn timer_f(self) -> Duration {
        self.long()
    }

    /// The first interval of Timer G, the INVITE non-2xx final response
    /// retransmission timer: T1, then doubling up to T2 (§17.2.1). `None`
    /// over a reliable transport.
    #[must_use]
    pub fn timer_g(self, reliable: bool) -> Option<Duration> {
        (!reliable).then_some(self.t1)
    }

    /// Timer H, how long a server INVITE transaction waits for the ACK of a
    /// non-2xx final: 64*T1 on any transport (§17.2.1).
    #[must_use]
    pub fn timer_h(self) -> Duration {
        self.long()
    }

    /// Timer I, how long a server INVITE transaction absorbs retransmitted
    /// ACKs: T4 over an unreliable transport, zero over a reliable one
    /// (§17.2.1).
    #[must_use]
    pub fn timer_i(self, reliable: bool) -> Duration {
        if reliable { Duration::ZERO } else { self.t4 }
    }

    /// Timer J, how long a server non-INVITE transaction absorbs
    /// retransmitted requests: 64*T1 over an unreliable transport, zero over
    /// a reliable one (§17.2.2).
    #[must_use]
    pub fn timer_j(self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.long()
        }
    }

    /// Timer K, how long a client non-INVITE transaction absorbs
    /// retransmitted responses: T4 over an unreliable transport, zero over a
    /// reliable one (§17.1.2.2).
    #[must_use]
    pub fn timer_k(self, reliable: bool) -> Duration {
        if reliable { Duration::ZERO } else { self.t4 }
    }

    /// Timer L, how long a server INVITE transaction stays "Accepted" after
    /// a 2xx, absorbing retransmitted INVITEs: 64*T1 on any transport
    /// (RFC 6026 §7.1).
    #[must_use]
    pub fn timer_l(self) -> Duration {
        self.long()
    }

    /// Timer M, how long a client INVITE transaction stays "Accepted" after
    /// a 2xx, passing retransmitted 2xx up to the TU: 64*T1 on any transport
    /// (RFC 6026 §7.2).
    #[must_use]
    pub fn timer_m(self) -> Duration {
        self.long()
    }
}

/// `now + after`, or `None` (never) when that is beyond what an [`Instant`]
/// can hold: an absurdly long timer must not panic.
pub(crate) fn deadline(now: Instant, after: Duration) -> Option<Instant> {
    now.checked_add(after)
}

/// Whether a timer set for `at` has fired by `now`.
pub(crate) fn fired(at: Option<Instant>, now: Instant) -> bool {
    at.is_some_and(|at| at <= now)
}

/// A running retransmission timer (A, E or G): when it fires next and the
/// interval that led there, from which the next interval is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retransmit {
    pub(crate) at: Instant,
    pub(crate) interval: Duration,
}

impl Retransmit {
    /// Arms the timer `interval` after `now`. A zero (or absent) interval
    /// means no retransmissions: a zero T1 must not make the transaction
    /// retransmit in a busy loop.
    pub(crate) fn start(now: Instant, interval: Option<Duration>) -> Option<Self> {
        let interval = interval.filter(|interval| !interval.is_zero())?;
        Some(Self {
            at: deadline(now, interval)?,
            interval,
        })
    }

    /// Re-arms the timer after it fired: the next instant of its schedule
    /// after `now`, where each interval is `grow` of the one before (the
    /// figures' doubling, capped or not, or a fixed T2). The schedule stays
    /// on its grid however late the TU's clock ticked; the retransmissions a
    /// late TU missed collapse into the single one just sent rather than
    /// going out in a burst. A zero interval stops the retransmissions (see
    /// [`Self::start`]), as does a schedule beyond what an [`Instant`] can
    /// hold.
    pub(crate) fn next(self, now: Instant, grow: impl Fn(Duration) -> Duration) -> Option<Self> {
        let mut timer = self;
        // With the figures' growth rules (doubling, capped doubling, a fixed
        // T2) each pass either doubles the interval (a few dozen passes at
        // most before it overflows) or finds it fixed and skips every missed
        // period at once: this loop is short.
        while timer.at <= now {
            let interval = grow(timer.interval);
            if interval.is_zero() {
                return None;
            }
            let mut at = deadline(timer.at, interval)?;
            if at <= now && grow(interval) == interval {
                let behind = now.duration_since(at);
                let periods = behind.as_nanos() / interval.as_nanos() + 1;
                at = match u32::try_from(periods)
                    .ok()
                    .and_then(|periods| interval.checked_mul(periods))
                {
                    Some(skip) => deadline(at, skip)?,
                    // Absurdly far behind: off the grid, but still after now.
                    None => deadline(now, interval)?,
                };
            }
            timer = Self { at, interval };
        }
        Some(timer)
    }
}

/// Timer A's growth: it doubles without a cap (§17.1.1.2).
pub(crate) fn doubled(interval: Duration) -> Duration {
    interval.saturating_mul(2)
}

/// Timers E's (in "Trying") and G's growth: they double up to T2
/// (§17.1.2.2, §17.2.1).
pub(crate) fn doubled_up_to(cap: Duration) -> impl Fn(Duration) -> Duration {
    move |interval| interval.saturating_mul(2).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn defaults_are_table_4() {
        let t = Timers::default();
        assert_eq!(t.t1, 500 * MS);
        assert_eq!(t.t2, 4000 * MS);
        assert_eq!(t.t4, 5000 * MS);
        for long in [
            t.timer_b(),
            t.timer_f(),
            t.timer_h(),
            t.timer_l(),
            t.timer_m(),
        ] {
            assert_eq!(long, Duration::from_secs(32));
        }
        assert_eq!(t.timer_d(false), Duration::from_secs(32));
        assert_eq!(t.timer_j(false), Duration::from_secs(32));
        assert_eq!(t.timer_i(false), t.t4);
        assert_eq!(t.timer_k(false), t.t4);
    }

    #[test]
    fn reliable_transports_neither_retransmit_nor_linger() {
        let t = Timers::default();
        assert_eq!(t.timer_a(true), None);
        assert_eq!(t.timer_e(true), None);
        assert_eq!(t.timer_g(true), None);
        for zero in [
            t.timer_d(true),
            t.timer_i(true),
            t.timer_j(true),
            t.timer_k(true),
        ] {
            assert_eq!(zero, Duration::ZERO);
        }
        // The timeouts and the RFC 6026 timers do not depend on the transport.
        assert_eq!(t.timer_b(), Duration::from_secs(32));
        assert_eq!(t.timer_h(), Duration::from_secs(32));
    }

    #[test]
    fn timer_d_covers_a_raised_t1_but_never_drops_below_32_s() {
        let slow = Timers {
            t1: Duration::from_secs(1),
            ..Timers::default()
        };
        assert_eq!(slow.timer_d(false), Duration::from_secs(64));
        let fast = Timers {
            t1: 100 * MS,
            ..Timers::default()
        };
        assert_eq!(fast.timer_d(false), Duration::from_secs(32));
        assert_eq!(fast.timer_b(), 6400 * MS);
    }

    #[test]
    fn a_late_tick_collapses_missed_retransmissions_and_keeps_the_grid() {
        let start = Instant::now();
        let timer = Retransmit::start(start, Some(500 * MS)).unwrap();
        // On time: the next interval.
        let on_time = timer.next(start + 500 * MS, doubled).unwrap();
        assert_eq!(on_time.at, start + 1500 * MS);
        // Late: 1.5 and 3.5 s are skipped, 7.5 s is next.
        let late = timer.next(start + 4000 * MS, doubled).unwrap();
        assert_eq!((late.at, late.interval), (start + 7500 * MS, 4000 * MS));
        // Capped at 4 s: every missed period is skipped at once.
        let capped = late
            .next(start + 20_000 * MS, doubled_up_to(4000 * MS))
            .unwrap();
        assert_eq!(
            (capped.at, capped.interval),
            (start + 23_500 * MS, 4000 * MS)
        );
        // A fixed interval far behind.
        let fixed = Retransmit::start(start, Some(MS)).unwrap();
        let far = fixed.next(start + 1_000_000_000 * MS, |_| MS).unwrap();
        assert_eq!(far.at, start + 1_000_000_001 * MS);
    }

    #[test]
    fn zero_or_unrepresentable_intervals_stop_retransmitting() {
        let start = Instant::now();
        assert_eq!(Retransmit::start(start, Some(Duration::ZERO)), None);
        assert_eq!(Retransmit::start(start, None), None);
        assert_eq!(Retransmit::start(start, Some(Duration::MAX)), None);
        let timer = Retransmit::start(start, Some(MS)).unwrap();
        assert_eq!(timer.next(start + MS, |_| Duration::ZERO), None);
        assert_eq!(timer.next(start + MS, |_| Duration::MAX), None);
        assert_eq!(timer.next(start + MS, doubled_up_to(Duration::ZERO)), None);
    }
}
