//! Replies by (source, cookie). The ng protocol runs over UDP and proxies
//! retransmit a request whose reply they did not get, with the same cookie
//! ("the message cookie is used to match requests to responses and to
//! detect retransmissions"). Applying an `offer` twice would allocate a
//! second set of ports, so a repeat is answered from here, byte for byte,
//! without touching the sessions. rtpengine keeps cookies for 30 to 60
//! seconds (`daemon/cookie_cache.c`).
//!
//! A cookie is only unique per client, and only as unique as the client
//! makes it: a controller that restarts and counts from 1 again, or two
//! controllers counting alike, send the same cookie for other requests.
//! So an entry is keyed by the source address *and* the cookie, and holds
//! a digest of the request: only the same request from the same source is
//! a retransmission; the same cookie with another request from that source
//! is refused (never answered with another request's reply, never
//! applied); a reply is only ever sent back to the source it was made for.
//!
//! The digest is SipHash (`std`'s `RandomState`) under a key drawn per
//! cache from the OS: 64 bits nobody outside the process can aim a
//! collision at.
//!
//! Bounded three ways: entries expire after a TTL, and the cache holds at
//! most a number of entries and a number of bytes (replies, cookies and a
//! fixed overhead per entry); the oldest go first, counted as evictions.

use std::{
    collections::{HashMap, VecDeque, hash_map::RandomState},
    hash::BuildHasher as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use thiserror::Error;

/// Cookies longer than this are refused: rtpengine's clients use a few
/// dozen characters, and the cache must not hold attacker-sized keys.
pub const MAX_COOKIE_LEN: usize = 128;

/// Bytes an entry costs beyond its reply and its cookie (the key's source
/// address, the digest, the time, the queue's copy of the key, the maps'
/// own bookkeeping), so that many tiny replies cannot exceed the budget
/// unseen.
const ENTRY_OVERHEAD: usize = 128;

/// Why a request is refused before it is applied; `Display` is the
/// `error-reason` sent back.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CacheRefusal {
    #[error("cookie of {len} bytes is longer than {max}: use a shorter cookie")]
    CookieTooLong { len: usize, max: usize },
    /// The same source sent this cookie before with another request: a
    /// controller that restarted and reuses cookies, most likely.
    #[error(
        "cookie already used for a different request from this address: use a new cookie for every request"
    )]
    CookieReused,
}

/// A request's digest, keyed per cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestDigest(u64);

/// What the cache says about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Not seen: apply it, then [`ReplyCache::insert`] the reply.
    Miss,
    /// A retransmission: send this reply again, apply nothing.
    Retransmission(&'a [u8]),
    /// Refused: reply with this error, apply nothing, cache nothing.
    Refused(CacheRefusal),
}

type Key = (SocketAddr, Vec<u8>);

struct Entry {
    reply: Vec<u8>,
    digest: RequestDigest,
    inserted: Instant,
    cost: usize,
}

/// Replies by (source, cookie), so a retransmitted request gets the
/// identical reply and is never applied twice. Bounded: entries expire
/// after `ttl` and the cache holds at most `capacity` entries and
/// `max_bytes` bytes (oldest evicted).
///
/// Expired entries are dropped lazily, on [`lookup`](Self::lookup),
/// [`insert`](Self::insert) and [`purge_expired`](Self::purge_expired); an
/// expired entry is never returned.
pub struct ReplyCache {
    capacity: usize,
    max_bytes: usize,
    ttl: Duration,
    entries: HashMap<Key, Entry>,
    /// Keys oldest first; holds exactly the keys of `entries`.
    order: VecDeque<Key>,
    /// Sum of the entries' costs.
    bytes: usize,
    /// Entries dropped before their TTL to stay within the bounds
    /// (replies too large to keep at all included).
    evictions: u64,
    hasher: RandomState,
}

impl ReplyCache {
    /// A cache of at most `capacity` replies and `max_bytes` bytes, each
    /// kept for `ttl`. A capacity of 0 keeps nothing.
    #[must_use]
    pub fn new(capacity: usize, max_bytes: usize, ttl: Duration) -> Self {
        Self {
            capacity,
            max_bytes,
            ttl,
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            evictions: 0,
            hasher: RandomState::new(),
        }
    }

    /// The digest of a request datagram (cookie included).
    #[must_use]
    pub fn digest(&self, request: &[u8]) -> RequestDigest {
        RequestDigest(self.hasher.hash_one(request))
    }

    /// What to do with the request `digest` under `cookie` from `source`.
    pub fn lookup(
        &mut self,
        source: SocketAddr,
        cookie: &[u8],
        digest: RequestDigest,
        now: Instant,
    ) -> Lookup<'_> {
        if cookie.len() > MAX_COOKIE_LEN {
            return Lookup::Refused(CacheRefusal::CookieTooLong {
                len: cookie.len(),
                max: MAX_COOKIE_LEN,
            });
        }
        self.purge_expired(now);
        let Some(entry) = self.entries.get(&(source, cookie.to_vec())) else {
            return Lookup::Miss;
        };
        if self.is_expired(entry, now) {
            // Out of order (inserted with an earlier `now` than an entry
            // before it): still never served stale.
            return Lookup::Miss;
        }
        if entry.digest == digest {
            Lookup::Retransmission(&entry.reply)
        } else {
            Lookup::Refused(CacheRefusal::CookieReused)
        }
    }

    /// Remembers the reply sent to `source` for the request `digest` under
    /// `cookie`, evicting the oldest entries while the cache is over its
    /// bounds. A key already present gets the new reply and counts as
    /// newest. A cookie longer than [`MAX_COOKIE_LEN`] is not kept.
    pub fn insert(
        &mut self,
        source: SocketAddr,
        cookie: Vec<u8>,
        digest: RequestDigest,
        reply: Vec<u8>,
        now: Instant,
    ) {
        if self.capacity == 0 || cookie.len() > MAX_COOKIE_LEN {
            return;
        }
        self.purge_expired(now);
        let key = (source, cookie);
        if let Some(old) = self.entries.remove(&key) {
            self.bytes -= old.cost;
            self.order.retain(|queued| *queued != key);
        }
        let cost = reply.len() + 2 * key.1.len() + ENTRY_OVERHEAD;
        if cost > self.max_bytes {
            self.evictions += 1;
            return;
        }
        while self.entries.len() >= self.capacity || self.bytes + cost > self.max_bytes {
            if !self.pop_oldest() {
                break;
            }
            self.evictions += 1;
        }
        self.order.push_back(key.clone());
        self.bytes += cost;
        self.entries.insert(
            key,
            Entry {
                reply,
                digest,
                inserted: now,
                cost,
            },
        );
    }

    /// Drops the entries that have expired by `now`, oldest first (for a
    /// periodic timer; `lookup` and `insert` do it too).
    pub fn purge_expired(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front() {
            match self.entries.get(oldest) {
                Some(entry) if !self.is_expired(entry, now) => break,
                _ => {}
            }
            self.pop_oldest();
        }
    }

    /// Entries held, including expired ones not yet dropped.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held (replies, cookies and per-entry overhead).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries dropped before their TTL to stay within the bounds, since
    /// the cache was made.
    #[must_use]
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn pop_oldest(&mut self) -> bool {
        let Some(oldest) = self.order.pop_front() else {
            return false;
        };
        if let Some(entry) = self.entries.remove(&oldest) {
            self.bytes -= entry.cost;
        }
        true
    }

    fn is_expired(&self, entry: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(entry.inserted) >= self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);
    const MIB: usize = 1 << 20;

    fn from(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A request and its digest.
    fn req(cache: &ReplyCache, cookie: &str, body: &str) -> (Vec<u8>, RequestDigest) {
        let datagram = format!("{cookie} {body}");
        (
            cookie.as_bytes().to_vec(),
            cache.digest(datagram.as_bytes()),
        )
    }

    fn put(cache: &mut ReplyCache, src: u16, cookie: &str, body: &str, reply: &[u8], now: Instant) {
        let (c, d) = req(cache, cookie, body);
        cache.insert(from(src), c, d, reply.to_vec(), now);
    }

    fn get<'a>(
        cache: &'a mut ReplyCache,
        src: u16,
        cookie: &str,
        body: &str,
        now: Instant,
    ) -> Lookup<'a> {
        let (c, d) = req(cache, cookie, body);
        cache.lookup(from(src), &c, d, now)
    }

    #[test]
    fn a_retransmission_gets_the_identical_bytes() {
        let now = Instant::now();
        let mut cache = ReplyCache::new(4, MIB, TTL);
        assert!(cache.is_empty());
        assert_eq!(get(&mut cache, 1, "c1", "ping", now), Lookup::Miss);
        put(&mut cache, 1, "c1", "ping", b"c1 d6:result4:ponge", now);
        put(&mut cache, 1, "c2", "list", b"c2 d6:result2:oke", now);
        assert_eq!(
            get(&mut cache, 1, "c1", "ping", now + Duration::from_secs(1)),
            Lookup::Retransmission(b"c1 d6:result4:ponge")
        );
        assert_eq!(
            get(&mut cache, 1, "c2", "list", now),
            Lookup::Retransmission(b"c2 d6:result2:oke")
        );
        assert_eq!(get(&mut cache, 1, "c3", "ping", now), Lookup::Miss);
        assert_eq!(cache.len(), 2);
    }

    /// Issue 16, item 2: a controller restarted (or another one) reusing a
    /// cookie gets its own request applied, never another's reply.
    #[test]
    fn the_same_cookie_from_another_source_is_another_request() {
        let now = Instant::now();
        let mut cache = ReplyCache::new(4, MIB, TTL);
        put(&mut cache, 1, "mr-sip-1", "offer call-1", b"one", now);
        assert_eq!(
            get(&mut cache, 2, "mr-sip-1", "offer call-2", now),
            Lookup::Miss
        );
        // Even the very same request from elsewhere is not a retransmission:
        // the reply goes only to its sender.
        assert_eq!(
            get(&mut cache, 2, "mr-sip-1", "offer call-1", now),
            Lookup::Miss
        );
        put(&mut cache, 2, "mr-sip-1", "offer call-2", b"two", now);
        assert_eq!(
            get(&mut cache, 1, "mr-sip-1", "offer call-1", now),
            Lookup::Retransmission(b"one")
        );
        assert_eq!(
            get(&mut cache, 2, "mr-sip-1", "offer call-2", now),
            Lookup::Retransmission(b"two")
        );
    }

    #[test]
    fn the_same_cookie_with_another_request_from_one_source_is_refused() {
        let now = Instant::now();
        let mut cache = ReplyCache::new(4, MIB, TTL);
        put(&mut cache, 1, "mr-sip-1", "offer call-1", b"one", now);
        assert_eq!(
            get(&mut cache, 1, "mr-sip-1", "offer call-7", now),
            Lookup::Refused(CacheRefusal::CookieReused)
        );
        // Once the entry has expired, the cookie is free again.
        assert_eq!(
            get(&mut cache, 1, "mr-sip-1", "offer call-7", now + TTL),
            Lookup::Miss
        );
    }

    #[test]
    fn long_cookies_are_refused_and_never_kept() {
        let now = Instant::now();
        let mut cache = ReplyCache::new(4, MIB, TTL);
        let long = "c".repeat(MAX_COOKIE_LEN + 1);
        assert_eq!(
            get(&mut cache, 1, &long, "ping", now),
            Lookup::Refused(CacheRefusal::CookieTooLong {
                len: MAX_COOKIE_LEN + 1,
                max: MAX_COOKIE_LEN
            })
        );
        put(&mut cache, 1, &long, "ping", b"r", now);
        assert!(cache.is_empty());
        let longest = "c".repeat(MAX_COOKIE_LEN);
        put(&mut cache, 1, &longest, "ping", b"r", now);
        assert_eq!(
            get(&mut cache, 1, &longest, "ping", now),
            Lookup::Retransmission(b"r")
        );
    }

    #[test]
    fn entries_expire_after_ttl() {
        let start = Instant::now();
        let mut cache = ReplyCache::new(4, MIB, TTL);
        put(&mut cache, 1, "old", "a", b"a", start);
        put(
            &mut cache,
            1,
            "new",
            "b",
            b"b",
            start + Duration::from_secs(10),
        );
        let almost = start + TTL.saturating_sub(Duration::from_millis(1));
        assert_eq!(
            get(&mut cache, 1, "old", "a", almost),
            Lookup::Retransmission(b"a")
        );
        assert_eq!(get(&mut cache, 1, "old", "a", start + TTL), Lookup::Miss);
        assert_eq!(cache.len(), 1, "the expired entry is dropped");
        assert_eq!(
            get(&mut cache, 1, "new", "b", start + TTL),
            Lookup::Retransmission(b"b")
        );
        cache.purge_expired(start + TTL + Duration::from_secs(10));
        assert!(cache.is_empty());
        assert_eq!(
            (cache.bytes(), cache.evictions()),
            (0, 0),
            "expiry is not eviction"
        );
    }

    #[test]
    fn a_full_cache_evicts_the_oldest() {
        let now = Instant::now();
        let mut cache = ReplyCache::new(2, MIB, TTL);
        put(&mut cache, 1, "1", "a", b"one", now);
        put(&mut cache, 1, "2", "b", b"two", now);
        put(&mut cache, 1, "3", "c", b"three", now);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.evictions(), 1);
        assert_eq!(get(&mut cache, 1, "1", "a", now), Lookup::Miss);
        assert_eq!(
            get(&mut cache, 1, "2", "b", now),
            Lookup::Retransmission(b"two")
        );
        // Re-inserting makes a key the newest.
        put(&mut cache, 1, "2", "b", b"two again", now);
        put(&mut cache, 1, "4", "d", b"four", now);
        assert_eq!(get(&mut cache, 1, "3", "c", now), Lookup::Miss);
        assert_eq!(
            get(&mut cache, 1, "2", "b", now),
            Lookup::Retransmission(b"two again")
        );
        assert_eq!(cache.len(), 2);
    }

    /// Issue 16, item 8: bounded by bytes, not only by entries: 65 536
    /// entries of 64 KB would be 4 GB.
    #[test]
    fn the_byte_budget_evicts_the_oldest() {
        let now = Instant::now();
        let budget = 10_000;
        let mut cache = ReplyCache::new(65_536, budget, TTL);
        let big = vec![b'x'; 3000];
        for i in 0..10 {
            put(&mut cache, 1, &format!("c{i}"), "offer", &big, now);
            assert!(cache.bytes() <= budget, "{} bytes", cache.bytes());
        }
        // Three replies of 3 000 bytes (and their overhead) fit.
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.evictions(), 7);
        assert_eq!(get(&mut cache, 1, "c6", "offer", now), Lookup::Miss);
        assert_eq!(
            get(&mut cache, 1, "c9", "offer", now),
            Lookup::Retransmission(big.as_slice())
        );
        // A reply larger than the whole budget is not kept (and evicts
        // nothing).
        put(&mut cache, 1, "huge", "offer", &vec![0; budget], now);
        assert_eq!((cache.len(), cache.evictions()), (3, 8));
        // Many tiny replies are bounded too: each costs its overhead.
        let mut tiny = ReplyCache::new(65_536, budget, TTL);
        for i in 0..1000 {
            put(&mut tiny, 1, &format!("t{i}"), "ping", b"", now);
        }
        assert!(tiny.bytes() <= budget && tiny.len() < 100, "{}", tiny.len());
    }

    #[test]
    fn zero_capacity_or_ttl_keeps_nothing() {
        let now = Instant::now();
        let mut cache = ReplyCache::new(0, MIB, TTL);
        put(&mut cache, 1, "c", "a", b"r", now);
        assert_eq!(get(&mut cache, 1, "c", "a", now), Lookup::Miss);
        assert!(cache.is_empty());

        let mut cache = ReplyCache::new(4, MIB, Duration::ZERO);
        put(&mut cache, 1, "c", "a", b"r", now);
        assert_eq!(get(&mut cache, 1, "c", "a", now), Lookup::Miss);
    }

    #[test]
    fn an_entry_inserted_out_of_order_is_not_served_stale() {
        let start = Instant::now();
        let mut cache = ReplyCache::new(4, MIB, TTL);
        put(
            &mut cache,
            1,
            "late",
            "a",
            b"a",
            start + Duration::from_secs(20),
        );
        put(&mut cache, 1, "early", "b", b"b", start);
        assert_eq!(get(&mut cache, 1, "early", "b", start + TTL), Lookup::Miss);
        assert_eq!(
            get(&mut cache, 1, "late", "a", start + TTL),
            Lookup::Retransmission(b"a")
        );
    }

    #[test]
    fn digests_are_keyed_per_cache() {
        let a = ReplyCache::new(1, MIB, TTL);
        let b = ReplyCache::new(1, MIB, TTL);
        assert_eq!(a.digest(b"x 1"), a.digest(b"x 1"));
        assert_ne!(a.digest(b"x 1"), a.digest(b"x 2"));
        assert_ne!(a.digest(b"x 1"), b.digest(b"x 1"));
    }
}
