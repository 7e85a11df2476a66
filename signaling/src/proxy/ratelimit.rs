//! Events per second per source address — new INVITEs, refusals: a token
//! bucket each, so a flood from one source cannot starve the others. The
//! table of sources is bounded too: refusals go to any address, including
//! spoofed ones, and a table growing with them would be a memory flood.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

/// Sources tracked at most; a new source beyond them is not admitted
/// until a sweep forgets idle ones.
const MAX_SOURCES: usize = 65_536;

pub struct RateLimit {
    rate: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimit {
    /// `rate` events per second, bursts up to one second's worth.
    pub fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Take a token for `source`; `false` when over the rate (or when the
    /// table is full of other sources).
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> bool {
        let rate = self.rate;
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&source) {
            return false;
        }
        let (tokens, last) = self.buckets.entry(source).or_insert((rate, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * rate;
        *tokens = (*tokens + refill).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forget sources idle for a while (bounded memory under scans).
    pub fn sweep(&mut self, now: Instant) {
        self.buckets
            .retain(|_, (_, last)| now.saturating_duration_since(*last) < Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_limits_then_refills() {
        let t0 = Instant::now();
        let src: IpAddr = "198.18.1.2".parse().unwrap();
        let mut r = RateLimit::new(10);
        assert_eq!((0..20).filter(|_| r.admit(src, t0)).count(), 10);
        assert!(!r.admit(src, t0));
        assert!(
            r.admit(src, t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        let other: IpAddr = "198.18.1.3".parse().unwrap();
        assert!(r.admit(other, t0), "per source");
        r.sweep(t0 + Duration::from_secs(120));
        assert!(r.buckets.is_empty());
    }

    #[test]
    fn the_table_of_sources_is_bounded() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(1);
        for i in 0..MAX_SOURCES as u32 {
            assert!(r.admit(IpAddr::from(i.to_be_bytes()), t0));
        }
        let next = IpAddr::from((MAX_SOURCES as u32).to_be_bytes());
        assert!(!r.admit(next, t0), "full");
        r.sweep(t0 + Duration::from_secs(120));
        assert!(r.admit(next, t0 + Duration::from_secs(120)));
    }
}
