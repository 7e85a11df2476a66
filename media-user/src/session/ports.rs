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
//! one. A pair an earlier run of the daemon leased to a call that is
//! being adopted is [claimed](PortAllocator::claim) back by its number.

use std::{
    collections::{HashSet, VecDeque},
    io,
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

/// Why a pair cannot be claimed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("port {port} is not the RTP port of a pair of the range {first}-{last}")]
    OutOfRange { port: u16, first: u16, last: u16 },
    #[error("port {port} is leased already")]
    Leased { port: u16 },
}

/// `PortAllocator::slot` of a pair that is not free.
const NOT_FREE: u32 = u32::MAX;

#[derive(Debug)]
pub struct PortAllocator {
    /// First and last RTP (even) port of the range.
    first: u16,
    last: u16,
    in_use: HashSet<u16>,
    /// Pairs neither leased nor quarantined, in no particular order (a
    /// uniform choice is one index).
    free: Vec<u16>,
    /// Where each pair (by index in the range) is in `free`, or
    /// [`NOT_FREE`]: a claim takes a given pair out in O(1).
    slot: Vec<u32>,
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
        let free: Vec<u16> = (first..=last).step_by(2).collect();
        Ok(Self {
            first,
            last,
            in_use: HashSet::new(),
            slot: (0..free.len() as u32).collect(),
            free,
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
                self.push_free(port);
            }
        }
    }

    /// Index of the pair whose RTP port is `port`, if it is one of the
    /// range.
    fn index(&self, port: u16) -> Option<usize> {
        (self.first..=self.last)
            .contains(&port)
            .then(|| port - self.first)
            .filter(|d| d % 2 == 0)
            .map(|d| usize::from(d / 2))
    }

    fn set_slot(&mut self, port: u16, at: u32) {
        if let Some(i) = self.index(port)
            && let Some(s) = self.slot.get_mut(i)
        {
            *s = at;
        }
    }

    fn push_free(&mut self, port: u16) {
        self.set_slot(port, self.free.len() as u32);
        self.free.push(port);
    }

    /// Take `free[i]` out.
    fn take_free(&mut self, i: usize) -> u16 {
        let port = self.free.swap_remove(i);
        self.set_slot(port, NOT_FREE);
        if let Some(&moved) = self.free.get(i) {
            self.set_slot(moved, i as u32);
        }
        port
    }

    fn swap_free(&mut self, i: usize, j: usize) {
        self.free.swap(i, j);
        for k in [i, j] {
            if let Some(&p) = self.free.get(k) {
                self.set_slot(p, k as u32);
            }
        }
    }

    /// Lease a pair: one chosen uniformly at random among the free pairs
    /// that `try_bind` manages to bind. `None` when the range is
    /// exhausted.
    pub fn allocate(&mut self, now: Instant, mut try_bind: impl FnMut(u16) -> bool) -> Option<u16> {
        self.allocate_binding(now, |p| {
            if try_bind(p) {
                Ok(())
            } else {
                Err(io::ErrorKind::AddrInUse.into())
            }
        })
        .ok()
        .flatten()
    }

    /// [`allocate`](Self::allocate) with the reason a bind failed: a pair
    /// another process holds (`EADDRINUSE`, `EACCES`) is passed over; any
    /// other error (out of file descriptors, of memory, an address that is
    /// not local) would fail for every pair, so it ends the search.
    pub fn allocate_binding(
        &mut self,
        now: Instant,
        mut try_bind: impl FnMut(u16) -> io::Result<()>,
    ) -> io::Result<Option<u16>> {
        self.expire(now);
        // Candidates are `free[..untried]`; one that fails to bind (held by
        // another process) moves behind them and stays free for later.
        let mut untried = self.free.len();
        while untried > 0 {
            let i = self.rng.random_range(0..untried);
            let candidate = self.free[i];
            match try_bind(candidate) {
                Ok(()) => {
                    self.take_free(i);
                    self.in_use.insert(candidate);
                    return Ok(Some(candidate));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
                    ) => {}
                Err(e) => return Err(e),
            }
            untried -= 1;
            self.swap_free(i, untried);
        }
        Ok(None)
    }

    /// Return a pair; it becomes available again after the quarantine.
    pub fn release(&mut self, port: u16, now: Instant) {
        if self.in_use.remove(&port) {
            self.quarantined.insert(port);
            self.quarantine.push_back((now, port));
        }
    }

    /// Lease the pair whose RTP port is `port`, by its number: a call an
    /// earlier run of the daemon leased it to is being adopted. A free or
    /// quarantined pair can be claimed; binding it is the caller's
    /// business, as for [`allocate`](Self::allocate).
    pub fn claim(&mut self, port: u16) -> Result<(), ClaimError> {
        let Some(i) = self.index(port) else {
            return Err(ClaimError::OutOfRange {
                port,
                first: self.first,
                last: self.last,
            });
        };
        if self.in_use.contains(&port) {
            return Err(ClaimError::Leased { port });
        }
        if self.quarantined.remove(&port) {
            // Rare (a claim is for adoption, into a new allocator): its
            // entry must not end a later quarantine of the pair early.
            self.quarantine.retain(|&(_, p)| p != port);
        } else if let Some(&at) = self.slot.get(i)
            && at != NOT_FREE
        {
            self.take_free(at as usize);
        }
        self.in_use.insert(port);
        Ok(())
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
    fn claims_take_given_pairs_and_allocation_avoids_them() {
        let t0 = Instant::now();
        let mut a = seeded(30000, 30009, Q);
        assert_eq!(a.claim(30004), Ok(()));
        assert_eq!(a.claim(30004), Err(ClaimError::Leased { port: 30004 }));
        for port in [30005, 29998, 30010, 1] {
            assert_eq!(
                a.claim(port),
                Err(ClaimError::OutOfRange {
                    port,
                    first: 30000,
                    last: 30008
                })
            );
        }
        assert_eq!((a.in_use(), a.free()), (1, 4));
        let got: HashSet<u16> = (0..4).map(|_| a.allocate(t0, |_| true).unwrap()).collect();
        assert_eq!(got, HashSet::from([30000, 30002, 30006, 30008]));
        assert_eq!(a.allocate(t0, |_| true), None);
        // A quarantined pair can be claimed, and its quarantine entry does
        // not cut a later quarantine short.
        a.release(30002, t0);
        assert_eq!(a.claim(30002), Ok(()));
        a.release(30002, t0 + Duration::from_secs(1));
        assert_eq!(a.allocate(t0 + Q, |_| true), None, "still resting");
        assert_eq!(
            a.allocate(t0 + Q + Duration::from_secs(1), |_| true),
            Some(30002)
        );
    }

    /// The free list and its index agree through any mix of allocations,
    /// failed binds, claims, releases and quarantine expiry.
    #[test]
    fn the_free_index_stays_consistent() {
        let t0 = Instant::now();
        let mut a = seeded(20000, 20199, Duration::from_secs(1));
        let mut rng = StdRng::seed_from_u64(7);
        let mut t = t0;
        for step in 0..20_000 {
            match rng.random_range(0..4) {
                0 => {
                    let busy = rng.random_range(20000..20200u16);
                    a.allocate(t, |p| p != busy);
                }
                1 => {
                    let _ = a.claim(rng.random_range(20000..20200u16));
                }
                2 => a.release(rng.random_range(20000..20200u16) & !1, t),
                _ => t += Duration::from_millis(rng.random_range(0..600)),
            }
            for (i, &p) in a.free.iter().enumerate() {
                assert_eq!(a.slot[a.index(p).unwrap()], i as u32, "step {step}");
                assert!(!a.in_use.contains(&p) && !a.quarantined.contains(&p));
            }
            let listed = a.slot.iter().filter(|&&s| s != NOT_FREE).count();
            assert_eq!(listed, a.free.len(), "step {step}");
            assert_eq!(
                a.free.len() + a.in_use.len() + a.quarantined.len(),
                a.capacity(),
                "step {step}"
            );
        }
    }

    #[test]
    fn release_of_unknown_port_is_ignored() {
        let mut a = PortAllocator::new(30000, 30009, Q).unwrap();
        a.release(30002, Instant::now());
        assert_eq!(a.free(), a.capacity());
    }
}
