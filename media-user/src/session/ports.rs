//! The relay's UDP port range: even RTP ports with RTCP on port + 1 (RFC
//! 3550 §11), handed out in pairs.
//!
//! I/O-free: whether a pair can really be bound is asked of the caller
//! (`try_bind`), which keeps the bound sockets; a pair that some other
//! process holds is skipped. Released pairs rest in quarantine for a while
//! before reuse, so late packets of an ended call never reach a new one.

use std::{
    collections::{HashSet, VecDeque},
    time::{Duration, Instant},
};

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
    quarantined: HashSet<u16>,
    quarantine: VecDeque<(Instant, u16)>,
    quarantine_for: Duration,
    /// Where the next search starts: spreads reuse over the range.
    cursor: u16,
}

impl PortAllocator {
    /// Pairs within `min..=max` (both ports of a pair inside the range).
    pub fn new(min: u16, max: u16, quarantine_for: Duration) -> Result<Self, PortRangeError> {
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
            quarantined: HashSet::new(),
            quarantine: VecDeque::new(),
            quarantine_for,
            cursor: first,
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
        self.capacity() - self.in_use.len() - self.quarantined.len()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, port)) = self.quarantine.front() {
            if now.duration_since(at) < self.quarantine_for {
                break;
            }
            self.quarantine.pop_front();
            self.quarantined.remove(&port);
        }
    }

    /// Lease a pair: the first candidate (from the cursor on, wrapping) that
    /// is free and that `try_bind` manages to bind. `None` when the range
    /// is exhausted.
    pub fn allocate(&mut self, now: Instant, mut try_bind: impl FnMut(u16) -> bool) -> Option<u16> {
        self.expire(now);
        let n = self.capacity();
        let mut port = self.cursor;
        for _ in 0..n {
            let candidate = port;
            port = if port >= self.last {
                self.first
            } else {
                port + 2
            };
            if self.in_use.contains(&candidate) || self.quarantined.contains(&candidate) {
                continue;
            }
            if try_bind(candidate) {
                self.in_use.insert(candidate);
                self.cursor = port;
                return Some(candidate);
            }
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
    }

    #[test]
    fn even_pairs_exhaustion_and_quarantine() {
        let t0 = Instant::now();
        let mut a = PortAllocator::new(30000, 30005, Q).unwrap();
        let got: Vec<u16> = (0..3).map(|_| a.allocate(t0, |_| true).unwrap()).collect();
        assert_eq!(got, vec![30000, 30002, 30004]);
        assert_eq!(a.allocate(t0, |_| true), None, "exhausted");
        a.release(30002, t0);
        assert_eq!(
            a.allocate(t0 + Duration::from_secs(1), |_| true),
            None,
            "quarantined"
        );
        assert_eq!(a.allocate(t0 + Q, |_| true), Some(30002));
        assert_eq!((a.in_use(), a.free()), (3, 0));
    }

    #[test]
    fn pairs_held_elsewhere_are_skipped() {
        let t0 = Instant::now();
        let mut a = PortAllocator::new(30000, 30009, Q).unwrap();
        // Another process holds 30000/30001 and 30004/30005.
        let busy = [30000, 30004];
        assert_eq!(a.allocate(t0, |p| !busy.contains(&p)), Some(30002));
        assert_eq!(a.allocate(t0, |p| !busy.contains(&p)), Some(30006));
        assert_eq!(a.allocate(t0, |p| !busy.contains(&p)), Some(30008));
        assert_eq!(a.allocate(t0, |p| !busy.contains(&p)), None);
    }

    #[test]
    fn the_cursor_spreads_reuse() {
        let t0 = Instant::now();
        let mut a = PortAllocator::new(30000, 30009, Duration::ZERO).unwrap();
        let p = a.allocate(t0, |_| true).unwrap();
        a.release(p, t0);
        assert_ne!(
            a.allocate(t0, |_| true),
            Some(p),
            "the next call gets the next pair"
        );
    }

    #[test]
    fn release_of_unknown_port_is_ignored() {
        let mut a = PortAllocator::new(30000, 30009, Q).unwrap();
        a.release(30002, Instant::now());
        assert_eq!(a.free(), a.capacity());
    }
}
