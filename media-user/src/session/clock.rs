//! The time an engine entry point runs at, read once by its caller.
//!
//! The engine reads no clock itself: the daemon reads both clocks at the
//! edge, per event, and tests build a [`Now`] and move it ahead at will
//! (timeouts of an hour run in microseconds).

use std::{
    ops::Add,
    time::{Duration, Instant, SystemTime},
};

/// Both clocks at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic: deadlines, timeouts, durations, rates.
    pub mono: Instant,
    /// Wall clock: what reports show (`created`, `last signal`, when a
    /// call ended), and the ages of the media plane's last-packet times,
    /// which are wall-clock times.
    pub wall: SystemTime,
}

impl Now {
    /// Both clocks, now. For the edge (the daemon's event loop, tests);
    /// the engine never calls it.
    pub fn read() -> Self {
        Self {
            mono: Instant::now(),
            wall: SystemTime::now(),
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
        }
    }
}
