//! The time an engine entry point runs at, read once by its caller.
//!
//! The engine reads no clock itself: the daemon reads both clocks at the
//! edge, per event, and tests build a [`Now`] and move it ahead at will
//! (timeouts of an hour run in microseconds).
//!
//! An [`Instant`] means nothing outside the process that made it, yet a
//! call's timers must outlive the process (its records are adopted by the
//! next one). So [`Now`] also carries the same moment as CLOCK_MONOTONIC
//! nanoseconds: system-wide, the same for every process, unchanged by
//! restarts, reset only by a reboot. On Linux `Instant` *is*
//! CLOCK_MONOTONIC, so the two differ by an offset fixed for the life of
//! the process: it is read once (two reads back to back, tens of
//! nanoseconds apart) and every conversion after that is exact.

use std::{
    ops::Add,
    sync::OnceLock,
    time::{Duration, Instant, SystemTime},
};

use nix::time::{ClockId, clock_gettime};

/// Both clocks at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic: deadlines, timeouts, durations, rates.
    pub mono: Instant,
    /// Wall clock: what reports show (`created`, `last signal`, when a
    /// call ended), and the ages of the media plane's last-packet times,
    /// which are wall-clock times.
    pub wall: SystemTime,
    /// `mono` as CLOCK_MONOTONIC nanoseconds (since boot): how call
    /// records name instants across a restart of the daemon.
    pub mono_ns: u64,
}

/// One `Instant` and the CLOCK_MONOTONIC reading of the same moment: the
/// process's fixed offset between the two. The instant is read between two
/// readings of the clock and paired with their midpoint; of a few tries
/// the tightest is kept, so a thread preempted in the middle of one does
/// not skew every conversion of the process.
fn anchor() -> (Instant, u64) {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    *ANCHOR.get_or_init(|| {
        let mut best: Option<(u64, Instant, u64)> = None;
        for _ in 0..5 {
            let before = monotonic();
            let at = Instant::now();
            let after = monotonic();
            let gap = after.saturating_sub(before);
            if best.is_none_or(|(g, _, _)| gap < g) {
                best = Some((gap, at, before + gap / 2));
            }
        }
        best.map_or_else(|| (Instant::now(), monotonic()), |(_, at, ns)| (at, ns))
    })
}

/// CLOCK_MONOTONIC, in nanoseconds. It cannot fail on Linux
/// (clock_gettime(2): EINVAL is for unknown clocks); were it to, instants
/// would still convert consistently within this process, only not across
/// processes.
fn monotonic() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// CLOCK_MONOTONIC nanoseconds at `t` (clamped at zero, the boot).
fn ns_at(t: Instant) -> u64 {
    let (at, ns) = anchor();
    if t >= at {
        ns.saturating_add(nanos(t - at))
    } else {
        ns.saturating_sub(nanos(at - t))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Now {
    /// Both clocks, now. For the edge (the daemon's event loop, tests);
    /// the engine never calls it.
    pub fn read() -> Self {
        let mono = Instant::now();
        Self {
            mono,
            wall: SystemTime::now(),
            mono_ns: ns_at(mono),
        }
    }

    /// The CLOCK_MONOTONIC reading of instant `t` (clamped at zero).
    pub fn ns_of(&self, t: Instant) -> u64 {
        if t >= self.mono {
            self.mono_ns.saturating_add(nanos(t - self.mono))
        } else {
            self.mono_ns.saturating_sub(nanos(self.mono - t))
        }
    }

    /// The instant at which CLOCK_MONOTONIC read `ns`, in this process.
    /// `None` only for a time `Instant` cannot hold (never for a reading
    /// of this boot).
    pub fn instant_of(&self, ns: u64) -> Option<Instant> {
        if ns >= self.mono_ns {
            self.mono
                .checked_add(Duration::from_nanos(ns - self.mono_ns))
        } else {
            self.mono
                .checked_sub(Duration::from_nanos(self.mono_ns - ns))
        }
    }
}

/// Both clocks moved ahead together.
impl Add<Duration> for Now {
    type Output = Self;

    fn add(self, d: Duration) -> Self {
        Self {
            mono: self.mono + d,
            wall: self.wall + d,
            mono_ns: self.mono_ns.saturating_add(nanos(d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_nanoseconds_are_the_systems_clock() {
        let now = Now::read();
        let direct = monotonic();
        // Read a moment apart (a preempted test thread makes that moment
        // long), and never ahead but for the anchor's few nanoseconds.
        assert!(now.mono_ns <= direct + 1_000, "{} > {direct}", now.mono_ns);
        assert!(
            direct - now.mono_ns.min(direct) < 200_000_000,
            "{direct} - {}",
            now.mono_ns
        );
        let later = Now::read();
        let d = later.mono - now.mono;
        assert_eq!(later.mono_ns - now.mono_ns, nanos(d));
    }

    #[test]
    fn instants_convert_both_ways_exactly() {
        let now = Now::read();
        for t in [
            now.mono,
            now.mono + Duration::from_secs(90),
            now.mono.checked_sub(Duration::from_millis(1500)).unwrap(),
        ] {
            assert_eq!(now.instant_of(now.ns_of(t)), Some(t));
        }
        let later = now + Duration::from_secs(5);
        assert_eq!(later.mono_ns, now.mono_ns + 5_000_000_000);
        // Another reading of the same process agrees on every instant.
        let other = Now::read();
        assert_eq!(other.ns_of(now.mono), now.mono_ns);
        assert_eq!(other.instant_of(now.mono_ns), Some(now.mono));
    }
}
