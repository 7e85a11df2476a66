//! The relay's UDP port range: even RTP ports with RTCP on port + 1 (RFC
//! 3550 §11), handed out in pairs.
//!
//! I/O-free: whether a pair can really be bound is asked of the caller
//! (`try_bind`), which keeps the bound sockets; a pair that some other
//! process holds is skipped. Pairs are chosen at random, uniformly among
//! the free ones, so that one call's ports tell nothing about the next
//! call's (an attacker probing with a call of its own cannot aim at the
//! ports of the call after it). Released pairs rest in quarantine for a
//! while before reuse, so late packets of an ended call never reach a new
//! one.

use std::{
    collections::{HashSet, VecDeque},
    time::{Duration, Instant},
};

use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

/// How long a released pair rests before reuse, by default
/// (`port-quarantine`): 32 s is 64·T1, the longest a SIP peer retransmits
/// the BYE that ends a call (RFC 3261 §17.1.2.2, Timer F), so a peer that
/// keeps sending media until that BYE reaches it sends into a pair nobody
/// has again. A peer that never gets the BYE keeps sending until its own
/// media timeout: the next call's learning window ranks such a stranger
/// last (see `latch.rs`).
pub const DEFAULT_PORT_QUARANTINE: Duration = Duration::from_secs(32);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortRangeError {
    #[error(
        "port-min ({min}) must be at most port-max ({max}) and leave room for one even/odd pair"
    )]
    Empty { min: u16, max: u16 },
    #[error("port-min must be at least 1024 (got {min}): low ports belong to system services")]
    Privileged { min: u16 },
}

#[derive(Debug)]
pub struct PortAllocator {
    /// First and last RTP (even) port of the range.
    first: u16,
    last: u16,
    in_use: HashSet<u16>,
    /// Pairs neither leased nor quarantined, in no particular order (a
    /// uniform choice is one index).
    free: Vec<u16>,
    quarantined: HashSet<u16>,
    quarantine: VecDeque<(Instant, u16)>,
    quarantine_for: Duration,
    /// A CSPRNG seeded from the OS: the choice must not be predictable.
    rng: StdRng,
}

impl PortAllocator {
    /// Pairs within `min..=max` (both ports of a pair inside the range).
    pub fn new(min: u16, max: u16, quarantine_for: Duration) -> Result<Self, PortRangeError> {
        Self::with_rng(min, max, quarantine_for, StdRng::from_os_rng())
    }

    /// The same with a fixed seed, for tests that must repeat.
    pub fn seeded(
        min: u16,
        max: u16,
        quarantine_for: Duration,
        seed: u64,
    ) -> Result<Self, PortRangeError> {
        Self::with_rng(min, max, quarantine_for, StdRng::seed_from_u64(seed))
    }

    fn with_rng(
        min: u16,
        max: u16,
        quarantine_for: Duration,
        rng: StdRng,
    ) -> Result<Self, PortRangeError> {
        if min < 1024 {
            return Err(PortRangeError::Privileged { min });
        }
        let first = min + (min % 2);
        if max < first + 1 || max == u16::MAX && first == u16::MAX {
            return Err(PortRangeError::Empty { min, max });
        }
        let last = if max % 2 == 1 { max - 1 } else { max - 2 };
        if last < first {
            return Err(PortRangeError::Empty { min, max });
        }
        Ok(Self {
            first,
            last,
            in_use: HashSet::new(),
            free: (first..=last).step_by(2).collect(),
            quarantined: HashSet::new(),
            quarantine: VecDeque::new(),
            quarantine_for,
            rng,
        })
    }

    /// Number of pairs in the range.
    pub fn capacity(&self) -> usize {
        usize::from((self.last - self.first) / 2) + 1
    }

    /// Pairs currently leased.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// Pairs neither leased nor quarantined.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Pairs resting in quarantine.
    pub fn quarantined(&self) -> usize {
        self.quarantined.len()
    }

    /// How long released pairs rest.
    pub fn quarantine_for(&self) -> Duration {
        self.quarantine_for
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, port)) = self.quarantine.front() {
            if now.saturating_duration_since(at) < self.quarantine_for {
                break;
            }
            self.quarantine.pop_front();
            if self.quarantined.remove(&port) {
                self.free.push(port);
            }
        }
    }

    /// Lease a pair: one chosen uniformly at random among the free pairs
    /// that `try_bind` manages to bind. `None` when the range is
    /// exhausted.
    pub fn allocate(&mut self, now: Instant, mut try_bind: impl FnMut(u16) -> bool) -> Option<u16> {
        self.expire(now);
        // Candidates are `free[..untried]`; one that fails to bind (held by
        // another process) moves behind them and stays free for later.
        let mut untried = self.free.len();
        while untried > 0 {
            let i = self.rng.random_range(0..untried);
            let candidate = self.free[i];
            if try_bind(candidate) {
                self.free.swap_remove(i);
                self.in_use.insert(candidate);
                return Some(candidate);
            }
            untried -= 1;
            self.free.swap(i, untried);
        }
        None
    }

    /// Return a pair; it becomes available again after the quarantine.
    pub fn release(&mut self, port: u16, now: Instant) {
        if self.in_use.remove(&port) {
            self.quarantined.insert(port);
            self.quarantine.push_back((now, port));
        }
    }

    /// Whether `port` (the RTP port of a pair) is leased.
    pub fn is_leased(&self, port: u16) -> bool {
        self.in_use.contains(&port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Duration = Duration::from_secs(2);

    fn seeded(min: u16, max: u16, q: Duration) -> PortAllocator {
        PortAllocator::seeded(min, max, q, 16).unwrap()
    }

    #[test]
    fn ranges() {
        assert_eq!(PortAllocator::new(30000, 30009, Q).unwrap().capacity(), 5);
        assert_eq!(PortAllocator::new(30001, 30010, Q).unwrap().capacity(), 4);
        assert_eq!(PortAllocator::new(30000, 30001, Q).unwrap().capacity(), 1);
        assert!(matches!(
            PortAllocator::new(30000, 30000, Q),
            Err(PortRangeError::Empty { .. })
        ));
        assert!(matches!(
            PortAllocator::new(40000, 30000, Q),
            Err(PortRangeError::Empty { .. })
        ));
        assert!(matches!(
            PortAllocator::new(80, 3000, Q),
            Err(PortRangeError::Privileged { .. })
        ));
        // 150 ports forwarded by a cloud provider: 75 pairs.
        assert_eq!(PortAllocator::new(40000, 40149, Q).unwrap().capacity(), 75);
        // Odd bounds: both ports of every pair inside the range.
        let mut a = seeded(30001, 30010, Q);
        let got: HashSet<u16> = (0..4)
            .map(|_| a.allocate(Instant::now(), |_| true).unwrap())
            .collect();
        assert_eq!(got, HashSet::from([30002, 30004, 30006, 30008]));
    }

    #[test]
    fn even_pairs_exhaustion_and_quarantine() {
        let t0 = Instant::now();
        let mut a = seeded(30000, 30005, Q);
        let got: HashSet<u16> = (0..3).map(|_| a.allocate(t0, |_| true).unwrap()).collect();
        assert_eq!(got, HashSet::from([30000, 30002, 30004]));
        assert_eq!(a.allocate(t0, |_| true), None, "exhausted");
        a.release(30002, t0);
        assert_eq!((a.free(), a.quarantined()), (0, 1));
        assert_eq!(
            a.allocate(t0 + Duration::from_secs(1), |_| true),
            None,
            "quarantined"
        );
        assert_eq!(a.allocate(t0 + Q, |_| true), Some(30002));
        assert_eq!((a.in_use(), a.free(), a.quarantined()), (3, 0, 0));
    }

    #[test]
    fn pairs_held_elsewhere_are_skipped_and_stay_free() {
        let t0 = Instant::now();
        let mut a = seeded(30000, 30009, Q);
        // Another process holds 30000/30001 and 30004/30005.
        let busy = [30000, 30004];
        let got: HashSet<u16> = (0..3)
            .map(|_| a.allocate(t0, |p| !busy.contains(&p)).unwrap())
            .collect();
        assert_eq!(got, HashSet::from([30002, 30006, 30008]));
        assert_eq!(a.allocate(t0, |p| !busy.contains(&p)), None);
        // Once the other process lets go, they are ours to lease.
        assert_eq!(a.free(), 2);
        let got: HashSet<u16> = (0..2).map(|_| a.allocate(t0, |_| true).unwrap()).collect();
        assert_eq!(got, HashSet::from([30000, 30004]));
    }

    /// Items 3 and 10 of issue 16: sequential allocation let one probe call
    /// predict the next call's ports, and handed a just-quarantined pair's
    /// neighbour to the next call. A uniform choice among the free pairs
    /// predicts nothing.
    #[test]
    fn the_choice_is_uniform_and_unpredictable() {
        let t0 = Instant::now();
        let mut a = seeded(20000, 20199, Duration::ZERO);
        let n = a.capacity();
        let mut next_to_probe = 0;
        let mut same_again = 0;
        let mut seen = std::collections::HashMap::new();
        const TRIALS: usize = 5000;
        for _ in 0..TRIALS {
            let probe = a.allocate(t0, |_| true).unwrap();
            let next = a.allocate(t0, |_| true).unwrap();
            if next.abs_diff(probe) == 2 {
                next_to_probe += 1;
            }
            a.release(probe, t0);
            a.release(next, t0);
            if a.allocate(t0, |_| true) == Some(probe) {
                same_again += 1;
            }
            for p in [probe, next] {
                *seen.entry(p).or_insert(0usize) += 1;
            }
            // Release what the last allocation took.
            let taken: Vec<u16> = a.in_use.iter().copied().collect();
            for p in taken {
                a.release(p, t0);
            }
        }
        // A neighbour is 2 of n pairs away: about 2/n of the time.
        assert!(
            next_to_probe < TRIALS * 4 / n,
            "{next_to_probe} of {TRIALS}"
        );
        assert!(same_again < TRIALS * 3 / n, "{same_again} of {TRIALS}");
        // Every pair gets used, none much more than the others.
        assert_eq!(seen.len(), n);
        let mean = 2 * TRIALS / n;
        assert!(
            seen.values().all(|&c| c > mean / 3 && c < mean * 3),
            "{seen:?}"
        );
    }

    #[test]
    fn a_random_seed_per_allocator() {
        let t0 = Instant::now();
        let picks = |mut a: PortAllocator| -> Vec<u16> {
            (0..8).map(|_| a.allocate(t0, |_| true).unwrap()).collect()
        };
        let one = picks(PortAllocator::new(20000, 29999, Q).unwrap());
        let two = picks(PortAllocator::new(20000, 29999, Q).unwrap());
        assert_ne!(one, two, "two daemons choose alike");
    }

    #[test]
    fn release_of_unknown_port_is_ignored() {
        let mut a = PortAllocator::new(30000, 30009, Q).unwrap();
        a.release(30002, Instant::now());
        assert_eq!(a.free(), a.capacity());
    }
}
