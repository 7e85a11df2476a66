//! New INVITEs per second per source address: a token bucket each, so a
//! flood from one trunk cannot starve the others.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

pub struct RateLimit {
    rate: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimit {
    /// `rate` INVITEs per second, bursts up to one second's worth.
    pub fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Take a token for `source`; `false` when over the rate.
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> bool {
        let rate = self.rate;
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
}
