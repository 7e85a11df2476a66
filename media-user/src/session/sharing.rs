//! Port sharing (`port-sharing`): many calls through one local RTP/RTCP
//! pair, told apart by the remote endpoint (address + port) the packets
//! come from. The pinned flow map already keys flows by local port *and*
//! remote endpoint (`FlowKey::shared`; all-zero remote = any source) and
//! the XDP program looks the any-source key up first and the exact key on
//! a miss: two hash lookups per packet at most, whatever the number of
//! calls sharing the port.
//!
//! I/O-free, like `ports.rs`. Two pieces:
//!
//! - [`SharedPorts`], the allocator: a lease is a (pair, expected remote
//!   endpoint) slot. A call is given a pair on which its expected remote
//!   endpoint (from the SDP) is not taken already, preferring pairs where
//!   not even the remote's IP is (so that a NATed party of that IP can
//!   later be recognised by its IP alone), then the least loaded pair,
//!   ties broken at random (a CSPRNG: one call's port tells nothing about
//!   the next one's). A released slot rests in quarantine before the same
//!   endpoint can be given that pair again, so late packets of an ended
//!   call never reach a new one.
//! - [`attribute`]: a packet from a source not yet known on a shared port
//!   goes to the daemon, which gives it to a stream only when that is
//!   unambiguous — the stream expecting exactly that endpoint; else the
//!   single stream whose announced `a=ssrc` carries the packet's SSRC;
//!   else the single stream expecting that IP (the latching ranks of
//!   `latch.rs`) — and otherwise refuses it (dropped and counted, never
//!   guessed).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use super::ports::PortRangeError;

/// Streams (leases) a shared pair carries at most by default
/// (`port-sharing-max-per-port`): 75 pairs × 64 = 4 800 legs, 2 400
/// two-party calls over 150 ports.
pub const DEFAULT_MAX_PER_PORT: usize = 64;

/// Why a lease cannot be had.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShareError {
    #[error("every shared port already carries the remote endpoint {remote:?} or is full")]
    Exhausted { remote: Option<SocketAddr> },
    #[error("port {port} is not the RTP port of a shared pair")]
    OutOfRange { port: u16 },
    #[error("remote endpoint {remote} is already taken on shared port {port}")]
    Taken { port: u16, remote: SocketAddr },
}

/// Who is on the pairs: kept by endpoint and by IP rather than per pair,
/// so that [`SharedPorts::lease`]'s pass over the pairs reads two small
/// arrays (loads, and the pairs the remote's IP is on) instead of two hash
/// tables per pair. With thousands of pairs that pass took milliseconds
/// per call (a cache miss per table); now microseconds.
#[derive(Debug, Default)]
struct Taken {
    /// The pairs (indices) each expected remote endpoint is taken on,
    /// leased or in quarantine.
    remotes: HashMap<SocketAddr, Vec<u32>>,
    /// The pairs each remote IP is on, sorted by pair, each with how many
    /// of that IP's endpoints it holds (for the preference of allocation).
    ips: HashMap<IpAddr, Vec<(u32, u32)>>,
}

impl Taken {
    fn has(&self, pair: u32, remote: SocketAddr) -> bool {
        self.remotes
            .get(&remote)
            .is_some_and(|on| on.contains(&pair))
    }

    /// Take `remote` on `pair`; `false` if it was taken there already.
    fn take(&mut self, pair: u32, remote: SocketAddr) -> bool {
        let on = self.remotes.entry(remote).or_default();
        if on.contains(&pair) {
            return false;
        }
        on.push(pair);
        let ips = self.ips.entry(remote.ip()).or_default();
        match ips.binary_search_by_key(&pair, |&(p, _)| p) {
            Ok(i) => ips[i].1 += 1,
            Err(i) => ips.insert(i, (pair, 1)),
        }
        true
    }

    /// Free `remote` on `pair`; `false` if it was not taken there.
    fn free(&mut self, pair: u32, remote: SocketAddr) -> bool {
        let Some(on) = self.remotes.get_mut(&remote) else {
            return false;
        };
        let Some(at) = on.iter().position(|&p| p == pair) else {
            return false;
        };
        on.swap_remove(at);
        if on.is_empty() {
            self.remotes.remove(&remote);
        }
        if let Some(ips) = self.ips.get_mut(&remote.ip())
            && let Ok(i) = ips.binary_search_by_key(&pair, |&(p, _)| p)
        {
            ips[i].1 -= 1;
            if ips[i].1 == 0 {
                ips.remove(i);
                if ips.is_empty() {
                    self.ips.remove(&remote.ip());
                }
            }
        }
        true
    }
}

/// The shared port pairs of a range and who expects what on them.
#[derive(Debug)]
pub struct SharedPorts {
    first: u16,
    last: u16,
    /// Leases on each pair (taken endpoints plus `unknown`), by pair
    /// index.
    loads: Vec<u32>,
    /// Leases whose remote is not known yet (the answerer's side before
    /// its answer), by pair index.
    unknown: Vec<u32>,
    taken: Taken,
    max_per_port: usize,
    quarantine: VecDeque<(Instant, u16, SocketAddr)>,
    /// Slots in quarantine, so a re-lease of the same slot is not freed
    /// early by an old entry.
    resting: HashSet<(u16, SocketAddr)>,
    quarantine_for: Duration,
    rng: StdRng,
}

impl SharedPorts {
    /// Pairs within `min..=max` (as [`PortAllocator`](super::ports::PortAllocator)).
    pub fn new(
        min: u16,
        max: u16,
        max_per_port: usize,
        quarantine_for: Duration,
    ) -> Result<Self, PortRangeError> {
        Self::with_rng(
            min,
            max,
            max_per_port,
            quarantine_for,
            StdRng::from_os_rng(),
        )
    }

    /// The same with a fixed seed, for tests that must repeat.
    pub fn seeded(
        min: u16,
        max: u16,
        max_per_port: usize,
        quarantine_for: Duration,
        seed: u64,
    ) -> Result<Self, PortRangeError> {
        Self::with_rng(
            min,
            max,
            max_per_port,
            quarantine_for,
            StdRng::seed_from_u64(seed),
        )
    }

    fn with_rng(
        min: u16,
        max: u16,
        max_per_port: usize,
        quarantine_for: Duration,
        rng: StdRng,
    ) -> Result<Self, PortRangeError> {
        if min < 1024 {
            return Err(PortRangeError::Privileged { min });
        }
        let first = min + (min % 2);
        if max == u16::MAX && first == u16::MAX || max < first.saturating_add(1) {
            return Err(PortRangeError::Empty { min, max });
        }
        let last = if max % 2 == 1 { max - 1 } else { max - 2 };
        if last < first {
            return Err(PortRangeError::Empty { min, max });
        }
        let n = usize::from((last - first) / 2) + 1;
        Ok(Self {
            first,
            last,
            loads: vec![0; n],
            unknown: vec![0; n],
            taken: Taken::default(),
            max_per_port: max_per_port.max(1),
            quarantine: VecDeque::new(),
            resting: HashSet::new(),
            quarantine_for,
            rng,
        })
    }

    /// Room for `additional` more leases of known remotes without growing
    /// the table one by one (adopting 100 000 calls' slots at once).
    pub fn reserve(&mut self, additional: usize) {
        self.taken.remotes.reserve(additional);
    }

    /// Number of shared pairs.
    pub fn pairs(&self) -> usize {
        self.loads.len()
    }

    /// Leases (streams' pairs) the range can carry at most.
    pub fn capacity(&self) -> usize {
        self.loads.len() * self.max_per_port
    }

    /// Leases held now (quarantined slots included).
    pub fn in_use(&self) -> usize {
        self.loads.iter().map(|&l| l as usize).sum()
    }

    /// Leases on the pair whose RTP port is `port`.
    pub fn load(&self, port: u16) -> usize {
        self.index(port)
            .and_then(|i| self.loads.get(i))
            .map_or(0, |&l| l as usize)
    }

    fn index(&self, port: u16) -> Option<usize> {
        (self.first..=self.last)
            .contains(&port)
            .then(|| port - self.first)
            .filter(|d| d % 2 == 0)
            .map(|d| usize::from(d / 2))
    }

    /// The RTP port of the `i`th pair.
    pub fn port_at(&self, i: usize) -> u16 {
        self.port_of(i)
    }

    fn port_of(&self, i: usize) -> u16 {
        self.first + 2 * i as u16
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, port, remote)) = self.quarantine.front() {
            if now.saturating_duration_since(at) < self.quarantine_for {
                break;
            }
            self.quarantine.pop_front();
            if self.resting.remove(&(port, remote))
                && let Some(i) = self.index(port)
            {
                self.free(i, remote);
            }
        }
    }

    /// Take `remote` on the `i`th pair (if not taken there already).
    fn take(&mut self, i: usize, remote: SocketAddr) {
        if self.taken.take(i as u32, remote) {
            self.loads[i] += 1;
        }
    }

    /// Free `remote` on the `i`th pair (if taken there).
    fn free(&mut self, i: usize, remote: SocketAddr) {
        if self.taken.free(i as u32, remote) {
            self.loads[i] -= 1;
        }
    }

    /// Lease a pair for a stream expecting `remote` (`None`: not known
    /// yet; [`bind`](Self::bind) it when it is). Cost: one pass over the
    /// pairs' loads (75 for 150 ports; a few microseconds for thousands),
    /// per call set-up, never per packet.
    pub fn lease(&mut self, remote: Option<SocketAddr>, now: Instant) -> Result<u16, ShareError> {
        self.expire(now);
        // The pairs the remote's IP is on, in pair order, and those the
        // endpoint itself is taken on (a subset).
        let on_ip: &[(u32, u32)] = remote
            .and_then(|r| self.taken.ips.get(&r.ip()))
            .map_or(&[], Vec::as_slice);
        let on_remote: &[u32] = remote
            .and_then(|r| self.taken.remotes.get(&r))
            .map_or(&[], Vec::as_slice);
        let mut ip_at = 0;
        let mut best: Option<((bool, u32), usize)> = None;
        let mut ties = 0u32;
        for (i, &load) in self.loads.iter().enumerate() {
            let has_ip = on_ip.get(ip_at).is_some_and(|&(p, _)| p as usize == i);
            if has_ip {
                ip_at += 1;
            }
            if load as usize >= self.max_per_port || has_ip && on_remote.contains(&(i as u32)) {
                continue;
            }
            let score = (has_ip, load);
            match best {
                Some((s, _)) if s < score => {}
                Some((s, _)) if s == score => {
                    // Reservoir sampling: uniform among equals.
                    ties += 1;
                    if self.rng.random_range(0..ties) == 0 {
                        best = Some((score, i));
                    }
                }
                _ => {
                    ties = 1;
                    best = Some((score, i));
                }
            }
        }
        let Some((_, i)) = best else {
            return Err(ShareError::Exhausted { remote });
        };
        match remote {
            Some(r) => self.take(i, r),
            None => {
                self.unknown[i] += 1;
                self.loads[i] += 1;
            }
        }
        Ok(self.port_of(i))
    }

    /// One lease of unknown remote fewer on the `i`th pair.
    fn forget_unknown(&mut self, i: usize) {
        if self.unknown[i] > 0 {
            self.unknown[i] -= 1;
            self.loads[i] -= 1;
        }
    }

    /// The remote endpoint of a lease taken with `None` became known (the
    /// answer): it must not be taken on that pair already.
    pub fn bind(&mut self, port: u16, remote: SocketAddr, now: Instant) -> Result<(), ShareError> {
        self.expire(now);
        let i = self.index(port).ok_or(ShareError::OutOfRange { port })?;
        if self.taken.has(i as u32, remote) {
            return Err(ShareError::Taken { port, remote });
        }
        self.forget_unknown(i);
        self.take(i, remote);
        Ok(())
    }

    /// The lease of a stream that expected `remote` ends: the slot rests
    /// in quarantine.
    pub fn release(&mut self, port: u16, remote: Option<SocketAddr>, now: Instant) {
        let Some(i) = self.index(port) else {
            return;
        };
        match remote {
            // A slot not held (released already) is left alone.
            Some(r) if !self.taken.has(i as u32, r) => {}
            Some(r) => {
                if self.quarantine_for.is_zero() {
                    self.free(i, r);
                } else if self.resting.insert((port, r)) {
                    self.quarantine.push_back((now, port, r));
                }
            }
            None => self.forget_unknown(i),
        }
    }

    /// Take a given slot back (restart adoption of a shared-port call).
    pub fn claim(&mut self, port: u16, remote: Option<SocketAddr>) -> Result<(), ShareError> {
        let i = self.index(port).ok_or(ShareError::OutOfRange { port })?;
        match remote {
            Some(r) => {
                if self.taken.has(i as u32, r) && !self.resting.remove(&(port, r)) {
                    return Err(ShareError::Taken { port, remote: r });
                }
                self.quarantine.retain(|&(_, q, x)| (q, x) != (port, r));
                self.take(i, r);
            }
            None => {
                self.unknown[i] += 1;
                self.loads[i] += 1;
            }
        }
        Ok(())
    }
}

/// What a stream on a shared port expects, for [`attribute`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expecting {
    /// Where signalling said the party is (SDP address and port).
    pub advertised: Option<SocketAddr>,
    /// The SIP message's source IP (ng `received from`).
    pub sip_source: Option<IpAddr>,
    /// SSRCs the party's SDP announced (`a=ssrc`).
    pub ssrcs: Vec<u32>,
    /// Still learning its source: only then may a new source be
    /// attributed to it (a latched stream moves only by its own re-latch
    /// rule, for its SSRC).
    pub learning: bool,
    /// A latched stream's SSRC, for a NAT rebinding (re-latch candidate).
    pub relatch_ssrc: Option<u32>,
}

/// Which stream a packet from an unknown source belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// The stream at this index.
    To(usize),
    /// Several streams could take it: refused.
    Ambiguous,
    /// None could: refused.
    Unknown,
}

/// Attribute a packet from `from` (RTP SSRC `ssrc`) arriving on a shared
/// port to one of the streams sharing it (see the module's rule). Cost:
/// one pass over the port's streams, for packets that reach the daemon
/// only (a known source is forwarded by its exact flow).
pub fn attribute<'a>(
    streams: impl IntoIterator<Item = &'a Expecting>,
    from: SocketAddr,
    ssrc: Option<u32>,
) -> Attribution {
    let mut exact = None;
    let mut by_ssrc = Vec::new();
    let mut by_ip = Vec::new();
    let mut by_ip_announced = false;
    for (i, s) in streams.into_iter().enumerate() {
        if !s.learning {
            if ssrc.is_some() && s.relatch_ssrc == ssrc {
                by_ssrc.push(i);
            }
            continue;
        }
        if s.advertised == Some(from) {
            if exact.is_some() {
                return Attribution::Ambiguous;
            }
            exact = Some(i);
        }
        if let Some(x) = ssrc
            && s.ssrcs.contains(&x)
        {
            by_ssrc.push(i);
        }
        if s.advertised.is_some_and(|a| a.ip() == from.ip()) || s.sip_source == Some(from.ip()) {
            by_ip.push(i);
            // Whether it announced SSRCs (the only thing read of it later).
            by_ip_announced = by_ip_announced || !s.ssrcs.is_empty();
        }
    }
    if let Some(i) = exact {
        // The allocator gives no two streams of a port the same endpoint;
        // an SSRC announced by another stream contradicts it.
        return match by_ssrc.as_slice() {
            [] => Attribution::To(i),
            [j] if *j == i => Attribution::To(i),
            _ => Attribution::Ambiguous,
        };
    }
    match (by_ssrc.as_slice(), by_ip.as_slice()) {
        // One stream announced the SSRC, and no other is the one
        // expecting that IP.
        ([i], ips) if ips.is_empty() || ips.contains(i) => Attribution::To(*i),
        ([], [i]) => {
            // The party announced its SSRCs and this is not one of them.
            if !by_ip_announced || ssrc.is_none() {
                Attribution::To(*i)
            } else {
                Attribution::Unknown
            }
        }
        ([], []) => Attribution::Unknown,
        // Several candidates, or the SSRC and the IP disagree.
        _ => Attribution::Ambiguous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Duration = Duration::from_secs(2);

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn learning(advertised: &str) -> Expecting {
        Expecting {
            advertised: Some(sa(advertised)),
            sip_source: None,
            ssrcs: Vec::new(),
            learning: true,
            relatch_ssrc: None,
        }
    }

    #[test]
    fn a_thousand_calls_on_150_ports_never_share_an_endpoint_on_a_port() {
        let t0 = Instant::now();
        let mut a = SharedPorts::seeded(40000, 40149, DEFAULT_MAX_PER_PORT, Q, 7).unwrap();
        assert_eq!(a.pairs(), 75);
        let mut taken: HashSet<(u16, SocketAddr)> = HashSet::new();
        // 1 000 calls, two legs each; callers come from 10 addresses with
        // many ports, and a few reuse one endpoint in several calls.
        for c in 0..1000u32 {
            for leg in 0..2u32 {
                let remote = sa(&format!(
                    "198.18.{}.{}:{}",
                    leg,
                    c % 10 + 1,
                    20000 + (c % 300) * 2
                ));
                let port = a.lease(Some(remote), t0).unwrap();
                assert!(taken.insert((port, remote)), "{remote} twice on {port}");
            }
        }
        assert_eq!(a.in_use(), 2000);
        // Spread evenly: the least-loaded pair is chosen.
        let loads: Vec<usize> = (0..75).map(|i| a.load(40000 + 2 * i)).collect();
        let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        assert!(max - min <= 1, "{loads:?}");
    }

    #[test]
    fn the_same_endpoint_goes_to_another_pair_and_exhausts_cleanly() {
        let t0 = Instant::now();
        let mut a = SharedPorts::seeded(40000, 40005, 2, Q, 1).unwrap();
        let r = sa("198.18.0.1:5000");
        let ports: HashSet<u16> = (0..3).map(|_| a.lease(Some(r), t0).unwrap()).collect();
        assert_eq!(ports.len(), 3);
        assert_eq!(
            a.lease(Some(r), t0),
            Err(ShareError::Exhausted { remote: Some(r) })
        );
        // Others still fit (one more per pair).
        for i in 0..3 {
            a.lease(Some(sa(&format!("198.18.0.2:{}", 6000 + i))), t0)
                .unwrap();
        }
        assert!(a.lease(None, t0).is_err());
        // Released: quarantined, then free again.
        a.release(40000, Some(r), t0);
        // Twice is once; releasing what was never held frees nothing.
        a.release(40000, Some(r), t0);
        a.release(40000, Some(sa("198.18.0.3:1")), t0);
        assert_eq!(a.in_use(), 6);
        assert!(a.lease(Some(r), t0 + Q / 2).is_err());
        assert_eq!(a.lease(Some(r), t0 + Q), Ok(40000));
    }

    #[test]
    fn pairs_without_the_remote_ip_are_preferred() {
        let t0 = Instant::now();
        let mut a = SharedPorts::seeded(40000, 40003, 8, Q, 3).unwrap();
        let p1 = a.lease(Some(sa("198.18.0.1:5000")), t0).unwrap();
        let p2 = a.lease(Some(sa("198.18.0.2:5000")), t0).unwrap();
        assert_ne!(p1, p2);
        // Both pairs hold one lease; 198.18.0.1 goes where that IP is not.
        assert_eq!(a.lease(Some(sa("198.18.0.1:5002")), t0), Ok(p2));
    }

    #[test]
    fn binding_an_unknown_remote_refuses_a_taken_endpoint() {
        let t0 = Instant::now();
        let mut a = SharedPorts::seeded(40000, 40001, 8, Q, 3).unwrap();
        let r = sa("198.18.0.1:5000");
        assert_eq!(a.lease(Some(r), t0), Ok(40000));
        assert_eq!(a.lease(None, t0), Ok(40000));
        assert_eq!(
            a.bind(40000, r, t0),
            Err(ShareError::Taken {
                port: 40000,
                remote: r
            })
        );
        a.bind(40000, sa("198.18.0.1:5002"), t0).unwrap();
        assert_eq!(a.in_use(), 2);
        // Adoption claims slots back; a taken one is refused.
        let mut b = SharedPorts::seeded(40000, 40001, 8, Q, 3).unwrap();
        b.claim(40000, Some(r)).unwrap();
        assert!(b.claim(40000, Some(r)).is_err());
        assert!(b.claim(40002, Some(r)).is_err());
    }

    /// The pass over the pairs' loads chooses what a plain reading of
    /// every pair's slots would: an eligible pair (not full, the endpoint
    /// not on it), one without the remote's IP if any, then the least
    /// loaded; and the loads stay the sum of what is held.
    #[test]
    fn leases_match_a_plain_reading_of_every_pair() {
        let t0 = Instant::now();
        let mut a = SharedPorts::seeded(40000, 40039, 6, Q, 11).unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        let mut held: Vec<(u16, Option<SocketAddr>)> = Vec::new();
        let mut now = t0;
        for step in 0..20_000u32 {
            now += Duration::from_millis(rng.random_range(0..40));
            // Few IPs, few ports: endpoints and IPs meet on pairs often.
            let remote = sa(&format!(
                "198.18.0.{}:{}",
                rng.random_range(1..5),
                5000 + rng.random_range(0..12)
            ));
            match rng.random_range(0..10) {
                0..=3 => {
                    // The plain reading, before the lease (expiry first).
                    a.expire(now);
                    let score = |i: usize| {
                        let ip = a
                            .taken
                            .remotes
                            .iter()
                            .any(|(r, on)| r.ip() == remote.ip() && on.contains(&(i as u32)));
                        let eligible = (a.loads[i] as usize) < a.max_per_port
                            && !a.taken.has(i as u32, remote);
                        eligible.then_some((ip, a.loads[i]))
                    };
                    let best = (0..a.pairs()).filter_map(score).min();
                    match a.lease(Some(remote), now) {
                        Ok(port) => {
                            let i = a.index(port).unwrap();
                            assert_eq!(
                                Some((
                                    a.taken.ips[&remote.ip()]
                                        .iter()
                                        .find(|&&(p, _)| p as usize == i)
                                        .is_some_and(|&(_, n)| n > 1),
                                    a.loads[i] - 1
                                )),
                                best,
                                "step {step}: {remote} given pair {i}"
                            );
                            held.push((port, Some(remote)));
                        }
                        Err(_) => assert_eq!(best, None, "step {step}: refused"),
                    }
                }
                4 => {
                    if let Ok(port) = a.lease(None, now) {
                        held.push((port, None));
                    }
                }
                5 => {
                    // Bind a lease of unknown remote.
                    if let Some(at) = held.iter().position(|h| h.1.is_none()) {
                        let port = held[at].0;
                        if a.bind(port, remote, now).is_ok() {
                            held[at].1 = Some(remote);
                        }
                    }
                }
                _ => {
                    if !held.is_empty() {
                        let (port, r) = held.swap_remove(rng.random_range(0..held.len()));
                        a.release(port, r, now);
                    }
                }
            }
            for i in 0..a.pairs() {
                let slots = a
                    .taken
                    .remotes
                    .values()
                    .filter(|on| on.contains(&(i as u32)))
                    .count();
                assert_eq!(
                    a.loads[i] as usize,
                    slots + a.unknown[i] as usize,
                    "step {step}, pair {i}"
                );
                let by_ip: u32 = a
                    .taken
                    .ips
                    .values()
                    .flatten()
                    .filter(|&&(p, _)| p as usize == i)
                    .map(|&(_, n)| n)
                    .sum();
                assert_eq!(by_ip as usize, slots, "step {step}, pair {i}");
            }
        }
        assert!(a.in_use() > 0);
    }

    #[test]
    fn attribution_exact_then_ssrc_then_single_ip() {
        let from = sa("198.18.0.1:5000");
        let streams = vec![
            learning("198.18.0.1:5000"),
            learning("198.18.0.1:6000"),
            learning("198.18.0.9:5000"),
        ];
        // The exact endpoint: unambiguous even with others of that IP.
        assert_eq!(attribute(&streams, from, None), Attribution::To(0));
        // Same IP, another port: two candidates → refused.
        assert_eq!(
            attribute(&streams, sa("198.18.0.1:7000"), Some(1)),
            Attribution::Ambiguous
        );
        // Same IP, one candidate → it (NAT rewriting the port).
        assert_eq!(
            attribute(&streams, sa("198.18.0.9:7000"), None),
            Attribution::To(2)
        );
        // Nobody expects that IP → refused.
        assert_eq!(
            attribute(&streams, sa("198.18.0.77:7000"), Some(5)),
            Attribution::Unknown
        );
    }

    #[test]
    fn attribution_by_announced_ssrc() {
        let mut a = learning("198.18.0.1:5000");
        a.ssrcs = vec![111];
        let mut b = learning("198.18.0.2:5000");
        b.ssrcs = vec![222];
        let streams = vec![a, b];
        // A NAT changed the address: the SSRC decides.
        assert_eq!(
            attribute(&streams, sa("198.18.0.50:9000"), Some(222)),
            Attribution::To(1)
        );
        // The IP says one stream, the SSRC another: refused.
        assert_eq!(
            attribute(&streams, sa("198.18.0.1:9000"), Some(222)),
            Attribution::Ambiguous
        );
        // The only stream of that IP announced SSRCs, not this one.
        assert_eq!(
            attribute(&streams, sa("198.18.0.1:9000"), Some(999)),
            Attribution::Unknown
        );
        // The same SSRC announced twice: refused.
        let mut c = learning("198.18.0.3:5000");
        c.ssrcs = vec![222];
        let streams = vec![streams[0].clone(), streams[1].clone(), c];
        assert_eq!(
            attribute(&streams, sa("198.18.0.50:9000"), Some(222)),
            Attribution::Ambiguous
        );
    }

    #[test]
    fn latched_streams_take_only_their_own_ssrc() {
        let mut latched = learning("198.18.0.1:5000");
        latched.learning = false;
        latched.relatch_ssrc = Some(42);
        let streams = vec![latched, learning("198.18.0.2:5000")];
        // Even its exact SDP endpoint is no way into a latched stream.
        assert_eq!(
            attribute(&streams, sa("198.18.0.1:5000"), Some(7)),
            Attribution::Unknown
        );
        // Its SSRC is a re-latch candidate (latch.rs checks the sequence).
        assert_eq!(
            attribute(&streams, sa("198.18.0.1:5100"), Some(42)),
            Attribution::To(0)
        );
    }
}
