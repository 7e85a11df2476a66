//! Replies by cookie. The ng protocol runs over UDP and proxies retransmit a
//! request whose reply they did not get, with the same cookie ("the message
//! cookie is used to match requests to responses and to detect
//! retransmissions"). Applying an `offer` twice would allocate a second set
//! of ports, so a repeat is answered from here, byte for byte, without
//! touching the sessions. rtpengine keeps cookies for 30 to 60 seconds
//! (`daemon/cookie_cache.c`).

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

struct Entry {
    reply: Vec<u8>,
    inserted: Instant,
}

/// Replies by cookie, so a retransmitted request gets the identical reply and is never applied twice.
/// Bounded: entries expire after `ttl` and the cache holds at most `capacity` entries (oldest evicted).
///
/// Expired entries are dropped lazily, on [`get`](Self::get),
/// [`insert`](Self::insert) and [`purge_expired`](Self::purge_expired); an
/// expired entry is never returned.
pub struct ReplyCache {
    capacity: usize,
    ttl: Duration,
    entries: HashMap<Vec<u8>, Entry>,
    /// Cookies oldest first; holds exactly the keys of `entries`.
    order: VecDeque<Vec<u8>>,
}

impl ReplyCache {
    /// A cache of at most `capacity` replies, each kept for `ttl`. A
    /// capacity of 0 keeps nothing.
    #[must_use]
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity,
            ttl,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The reply sent for `cookie`, unless it has expired by `now`.
    pub fn get(&mut self, cookie: &[u8], now: Instant) -> Option<&[u8]> {
        self.purge_expired(now);
        let entry = self.entries.get(cookie)?;
        if self.is_expired(entry, now) {
            // Out of order (inserted with an earlier `now` than an entry
            // before it): still never served stale.
            return None;
        }
        Some(&entry.reply)
    }

    /// Remembers the reply sent for `cookie`, evicting the oldest entry if
    /// the cache is full. A cookie already present gets the new reply and
    /// counts as newest.
    pub fn insert(&mut self, cookie: Vec<u8>, reply: Vec<u8>, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        self.purge_expired(now);
        if self.entries.remove(&cookie).is_some() {
            self.order.retain(|queued| *queued != cookie);
        }
        while self.entries.len() >= self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.order.push_back(cookie.clone());
        self.entries.insert(
            cookie,
            Entry {
                reply,
                inserted: now,
            },
        );
    }

    /// Drops the entries that have expired by `now`, oldest first (for a
    /// periodic timer; `get` and `insert` do it too).
    pub fn purge_expired(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front() {
            match self.entries.get(oldest) {
                Some(entry) if !self.is_expired(entry, now) => break,
                _ => {}
            }
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
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

    fn is_expired(&self, entry: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(entry.inserted) >= self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn a_hit_returns_the_identical_bytes() {
        let now = Instant::now();
        let mut cache = ReplyCache::new(4, TTL);
        assert!(cache.is_empty());
        assert_eq!(cache.get(b"c1", now), None);
        cache.insert(b"c1".to_vec(), b"c1 d6:result4:ponge".to_vec(), now);
        cache.insert(b"c2".to_vec(), b"c2 d6:result2:oke".to_vec(), now);
        assert_eq!(
            cache.get(b"c1", now + Duration::from_secs(1)),
            Some(&b"c1 d6:result4:ponge"[..])
        );
        assert_eq!(cache.get(b"c2", now), Some(&b"c2 d6:result2:oke"[..]));
        assert_eq!(cache.get(b"c3", now), None);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn entries_expire_after_ttl() {
        let start = Instant::now();
        let mut cache = ReplyCache::new(4, TTL);
        cache.insert(b"old".to_vec(), b"a".to_vec(), start);
        cache.insert(
            b"new".to_vec(),
            b"b".to_vec(),
            start + Duration::from_secs(10),
        );
        let almost = start + TTL.saturating_sub(Duration::from_millis(1));
        assert_eq!(cache.get(b"old", almost), Some(&b"a"[..]));
        assert_eq!(cache.get(b"old", start + TTL), None);
        assert_eq!(cache.len(), 1, "the expired entry is dropped");
        assert_eq!(cache.get(b"new", start + TTL), Some(&b"b"[..]));
        cache.purge_expired(start + TTL + Duration::from_secs(10));
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_evicts_the_oldest() {
        let now = Instant::now();
        let mut cache = ReplyCache::new(2, TTL);
        cache.insert(b"1".to_vec(), b"one".to_vec(), now);
        cache.insert(b"2".to_vec(), b"two".to_vec(), now);
        cache.insert(b"3".to_vec(), b"three".to_vec(), now);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(b"1", now), None);
        assert_eq!(cache.get(b"2", now), Some(&b"two"[..]));
        assert_eq!(cache.get(b"3", now), Some(&b"three"[..]));

        // Re-inserting makes a cookie the newest.
        cache.insert(b"2".to_vec(), b"two again".to_vec(), now);
        cache.insert(b"4".to_vec(), b"four".to_vec(), now);
        assert_eq!(cache.get(b"3", now), None);
        assert_eq!(cache.get(b"2", now), Some(&b"two again"[..]));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn zero_capacity_or_ttl_keeps_nothing() {
        let now = Instant::now();
        let mut cache = ReplyCache::new(0, TTL);
        cache.insert(b"c".to_vec(), b"r".to_vec(), now);
        assert_eq!(cache.get(b"c", now), None);
        assert!(cache.is_empty());

        let mut cache = ReplyCache::new(4, Duration::ZERO);
        cache.insert(b"c".to_vec(), b"r".to_vec(), now);
        assert_eq!(cache.get(b"c", now), None);
    }

    #[test]
    fn an_entry_inserted_out_of_order_is_not_served_stale() {
        let start = Instant::now();
        let mut cache = ReplyCache::new(4, TTL);
        cache.insert(
            b"late".to_vec(),
            b"a".to_vec(),
            start + Duration::from_secs(20),
        );
        cache.insert(b"early".to_vec(), b"b".to_vec(), start);
        assert_eq!(cache.get(b"early", start + TTL), None);
        assert_eq!(cache.get(b"late", start + TTL), Some(&b"a"[..]));
    }
}
