//! Who owns what on shared ports (`port-sharing`): where a port of its own
//! has one owner (the engine's `owners`, keyed by local address), a shared
//! local address has many streams, and a packet's owner is found by
//! (local address, remote endpoint):
//!
//! - an exact key (local, remote), set when a stream's source is known
//!   (the SDP endpoint it expects while learning, the source it latched
//!   on) — the same key as the XDP flow installed for it
//!   (`FlowKey::shared`), one hash lookup;
//! - otherwise the packet is attributed by the rule of `sharing.rs`
//!   ([`attribute`]) among the streams on that local address, or refused
//!   and counted (`unattributed`).
//!
//! An exact key belongs to one stream: a second stream asking for a key
//! another holds is refused (never two calls' media on one key).

use std::{
    collections::{HashMap, hash_map::Entry},
    net::SocketAddr,
};

use super::{
    model::Owner,
    sharing::{Attribution, Expecting, attribute},
};

/// A packet's owner on a shared local address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Its source has an exact key.
    Known(Owner),
    /// Attributed now (unambiguously): the caller decides with the
    /// stream's latch and installs the exact key if it latches.
    Attributed(Owner),
    /// Refused: dropped and counted.
    Refused(Attribution),
}

/// The exact key is held by another stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{remote} on shared port {local} belongs to another stream (call {holder})")]
pub struct KeyTaken {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub holder: String,
}

#[derive(Debug, Default)]
pub struct SharedOwners {
    /// The streams on each shared local address (a pair's port holds at
    /// most `port-sharing-max-per-port`), each with the one exact key it
    /// holds.
    streams: HashMap<SocketAddr, OnPort>,
    exact: HashMap<(SocketAddr, SocketAddr), Owner>,
    /// Packets refused because no stream, or more than one, could take
    /// them (`media_relay_shared_port_unattributed_total`).
    pub unattributed: u64,
}

/// The streams on one shared local address.
#[derive(Debug, Default)]
struct OnPort {
    /// A hash of each stream's owner, in the order of `list`: a port's
    /// streams are told apart by it before their call-ids (which live
    /// elsewhere on the heap) are compared, and a search reads these few
    /// cache lines rather than every stream (adopting 100 000 calls adds
    /// 400 000 streams, each after a search of its port's).
    tags: Vec<u64>,
    list: Vec<Stream>,
}

impl OnPort {
    /// The index of `owner` (tagged `tag`).
    fn find(&self, tag: u64, owner: &Owner) -> Option<usize> {
        self.tags
            .iter()
            .enumerate()
            .filter(|&(_, t)| *t == tag)
            .map(|(i, _)| i)
            .find(|&i| self.list[i].owner == *owner)
    }

    fn push(&mut self, tag: u64, stream: Stream) -> &mut Stream {
        self.tags.push(tag);
        self.list.push(stream);
        let last = self.list.len() - 1;
        &mut self.list[last]
    }

    fn swap_remove(&mut self, i: usize) -> Stream {
        self.tags.swap_remove(i);
        self.list.swap_remove(i)
    }
}

/// A stream on a shared local address.
#[derive(Debug)]
struct Stream {
    owner: Owner,
    expecting: Expecting,
    /// The exact key it holds (the source its route accepts, where its
    /// XDP flow is keyed).
    key: Option<SocketAddr>,
}

/// Move `stream`'s exact key on `local` to `remote` (see
/// [`SharedOwners::key`]).
fn rekey(
    exact: &mut HashMap<(SocketAddr, SocketAddr), Owner>,
    local: SocketAddr,
    stream: &mut Stream,
    remote: Option<SocketAddr>,
) -> Result<(), KeyTaken> {
    let old = stream.key;
    if old == remote {
        return Ok(());
    }
    if let Some(r) = remote {
        // One search, whether the key is free or held.
        match exact.entry((local, r)) {
            Entry::Occupied(o) if *o.get() != stream.owner => {
                return Err(KeyTaken {
                    local,
                    remote: r,
                    holder: o.get().call.to_string(),
                });
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(v) => {
                v.insert(stream.owner.clone());
            }
        }
    }
    if let Some(o) = old
        && exact.get(&(local, o)) == Some(&stream.owner)
    {
        exact.remove(&(local, o));
    }
    stream.key = remote;
    Ok(())
}

fn tag(owner: &Owner) -> u64 {
    use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(owner)
}

impl SharedOwners {
    /// Room for `additional` more streams (and their keys) without
    /// growing the tables one by one: adopting 100 000 calls' 400 000
    /// streams at once.
    pub fn reserve(&mut self, additional: usize) {
        self.exact.reserve(additional);
    }

    /// Streams on `local`.
    pub fn streams_on(&self, local: SocketAddr) -> usize {
        self.streams.get(&local).map_or(0, |p| p.list.len())
    }

    /// Whether some stream holds the exact key (local, remote).
    pub fn holds(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        self.exact.contains_key(&(local, remote))
    }

    /// Exact keys held.
    pub fn exact_keys(&self) -> usize {
        self.exact.len()
    }

    /// Add a stream on `local`, or update what it expects.
    pub fn set(&mut self, local: SocketAddr, owner: &Owner, expecting: Expecting) {
        Self::entry(&mut self.streams, local, owner, false).expecting = expecting;
    }

    /// [`set`](Self::set) and [`key`](Self::key) at once (one search of
    /// the port's streams): what routes programming does for every
    /// stream. `new`: the stream is known to be new to `local` (an adopted
    /// call's: each call's record holds its streams once, and a call is
    /// adopted once), so its port's streams are not searched (adopting
    /// 100 000 calls adds 400 000 streams, each search a walk of its
    /// port's dozens of tags).
    pub fn set_keyed(
        &mut self,
        local: SocketAddr,
        owner: &Owner,
        expecting: Expecting,
        remote: Option<SocketAddr>,
        new: bool,
    ) -> Result<(), KeyTaken> {
        let stream = Self::entry(&mut self.streams, local, owner, new);
        stream.expecting = expecting;
        rekey(&mut self.exact, local, stream, remote)
    }

    /// `owner`'s stream on `local`, added (expecting nothing) if new;
    /// `new`: known to be, not searched for.
    fn entry<'a>(
        streams: &'a mut HashMap<SocketAddr, OnPort>,
        local: SocketAddr,
        owner: &Owner,
        new: bool,
    ) -> &'a mut Stream {
        let t = tag(owner);
        let p = streams.entry(local).or_default();
        let found = if new {
            debug_assert!(
                p.find(t, owner).is_none(),
                "{owner:?} added twice on {local}"
            );
            None
        } else {
            p.find(t, owner)
        };
        match found {
            Some(i) => &mut p.list[i],
            None => p.push(
                t,
                Stream {
                    owner: owner.clone(),
                    expecting: Expecting::default(),
                    key: None,
                },
            ),
        }
    }

    /// Make `remote` the one exact key `owner` (a stream [`set`] on
    /// `local`) holds there (the source its route accepts, where its XDP
    /// flow is keyed): the key it held before is dropped; `None` drops
    /// it. Refused, leaving the old key, if another stream holds `remote`.
    ///
    /// [`set`]: Self::set
    pub fn key(
        &mut self,
        local: SocketAddr,
        owner: &Owner,
        remote: Option<SocketAddr>,
    ) -> Result<(), KeyTaken> {
        let t = tag(owner);
        let Some(stream) = self
            .streams
            .get_mut(&local)
            .and_then(|p| p.find(t, owner).map(|i| &mut p.list[i]))
        else {
            // Not a stream of this port: it holds nothing here.
            return Ok(());
        };
        rekey(&mut self.exact, local, stream, remote)
    }

    /// Remove a stream from `local` with its exact key; returns the
    /// remote whose key (flow) it held, if any.
    pub fn remove(&mut self, local: SocketAddr, owner: &Owner) -> Vec<SocketAddr> {
        let t = tag(owner);
        let Some(p) = self.streams.get_mut(&local) else {
            return Vec::new();
        };
        let Some(i) = p.find(t, owner) else {
            return Vec::new();
        };
        let stream = p.swap_remove(i);
        if p.list.is_empty() {
            self.streams.remove(&local);
        }
        let Some(r) = stream.key else {
            return Vec::new();
        };
        if self.exact.get(&(local, r)) == Some(owner) {
            self.exact.remove(&(local, r));
            return vec![r];
        }
        Vec::new()
    }

    /// The owner of a packet from `from` (RTP SSRC `ssrc`) arriving on
    /// `local`.
    pub fn resolve(&mut self, local: SocketAddr, from: SocketAddr, ssrc: Option<u32>) -> Resolved {
        if let Some(o) = self.exact.get(&(local, from)) {
            return Resolved::Known(o.clone());
        }
        let Some(v) = self.streams.get(&local).map(|p| &p.list) else {
            self.unattributed += 1;
            return Resolved::Refused(Attribution::Unknown);
        };
        match attribute(v.iter().map(|s| &s.expecting), from, ssrc) {
            Attribution::To(i) => match v.get(i) {
                Some(s) => Resolved::Attributed(s.owner.clone()),
                None => {
                    self.unattributed += 1;
                    Resolved::Refused(Attribution::Unknown)
                }
            },
            refused => {
                self.unattributed += 1;
                Resolved::Refused(refused)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn owner(call: &str) -> Owner {
        Owner {
            call: call.into(),
            mono: 0,
            media: 0,
            component: 0,
        }
    }

    fn expecting(advertised: &str, ssrcs: &[u32]) -> Expecting {
        Expecting {
            advertised: Some(sa(advertised)),
            sip_source: None,
            ssrcs: ssrcs.to_vec(),
            learning: true,
            relatch_ssrc: None,
        }
    }

    #[test]
    fn exact_keys_first_then_attribution_then_refusal() {
        let local = sa("198.18.0.1:40000");
        let mut s = SharedOwners::default();
        let (a, b, c) = (owner("a"), owner("b"), owner("c"));
        s.set(local, &a, expecting("198.18.1.1:5000", &[]));
        s.set(local, &b, expecting("198.18.1.2:5000", &[]));
        s.set(local, &c, expecting("198.18.1.2:5002", &[77]));
        s.key(local, &a, Some(sa("198.18.1.1:5000"))).unwrap();
        assert_eq!(
            s.resolve(local, sa("198.18.1.1:5000"), None),
            Resolved::Known(a.clone())
        );
        // b's exact SDP endpoint, no key yet: attributed to b.
        assert_eq!(
            s.resolve(local, sa("198.18.1.2:5000"), None),
            Resolved::Attributed(b.clone())
        );
        // 198.18.1.2 from another port: b and c both expect that IP, but
        // the SSRC was announced by c.
        assert_eq!(
            s.resolve(local, sa("198.18.1.2:9000"), Some(77)),
            Resolved::Attributed(c.clone())
        );
        // Without it: ambiguous, refused and counted.
        assert_eq!(
            s.resolve(local, sa("198.18.1.2:9000"), Some(1)),
            Resolved::Refused(Attribution::Ambiguous)
        );
        // A third party: refused and counted.
        assert_eq!(
            s.resolve(local, sa("198.18.9.9:9000"), Some(1)),
            Resolved::Refused(Attribution::Unknown)
        );
        // Another local address nobody shares.
        assert_eq!(
            s.resolve(sa("198.18.0.1:40002"), sa("198.18.1.1:5000"), None),
            Resolved::Refused(Attribution::Unknown)
        );
        assert_eq!(s.unattributed, 3);
    }

    #[test]
    fn a_key_belongs_to_one_stream_and_goes_with_it() {
        let local = sa("198.18.0.1:40000");
        let remote = sa("198.18.1.1:5000");
        let mut s = SharedOwners::default();
        let (a, b) = (owner("a"), owner("b"));
        s.set(local, &a, expecting("198.18.1.1:5000", &[]));
        s.set(local, &b, expecting("198.18.1.3:5000", &[]));
        s.key(local, &a, Some(remote)).unwrap();
        // b cannot take a's key: never two calls on one flow.
        assert_eq!(
            s.key(local, &b, Some(remote)),
            Err(KeyTaken {
                local,
                remote,
                holder: "a".into()
            })
        );
        // b dropping the key it does not hold leaves a's.
        s.key(local, &b, None).unwrap();
        assert_eq!(s.exact_keys(), 1);
        assert_eq!(s.remove(local, &a), vec![remote]);
        assert_eq!(s.exact_keys(), 0);
        assert_eq!(s.streams_on(local), 1);
        // a's endpoint is nobody's now: refused, not given to b.
        assert_eq!(
            s.resolve(local, remote, None),
            Resolved::Refused(Attribution::Unknown)
        );
        s.remove(local, &b);
        assert_eq!(s.streams_on(local), 0);
    }

    #[test]
    fn a_stream_s_key_moves_with_its_source() {
        let local = sa("198.18.0.1:40000");
        let (a, b) = (owner("a"), owner("b"));
        let mut s = SharedOwners::default();
        s.set(local, &a, expecting("198.18.1.1:5000", &[]));
        s.set(local, &b, expecting("198.18.1.2:5000", &[]));
        s.key(local, &a, Some(sa("198.18.1.1:5000"))).unwrap();
        s.key(local, &b, Some(sa("198.18.1.2:5000"))).unwrap();
        // a latches on its NAT's source: the old key goes.
        s.key(local, &a, Some(sa("198.18.1.1:6000"))).unwrap();
        assert!(!s.holds(local, sa("198.18.1.1:5000")));
        assert!(s.holds(local, sa("198.18.1.1:6000")));
        // b cannot take a's; b keeps its own.
        assert!(s.key(local, &b, Some(sa("198.18.1.1:6000"))).is_err());
        assert!(s.holds(local, sa("198.18.1.2:5000")));
        assert_eq!(s.exact_keys(), 2);
        s.key(local, &a, None).unwrap();
        s.remove(local, &b);
        assert_eq!(s.exact_keys(), 0);
    }

    #[test]
    fn a_thousand_streams_on_a_port_resolve_known_sources_by_key() {
        let local = sa("198.18.0.1:40000");
        let mut s = SharedOwners::default();
        for i in 0..1000u16 {
            let o = owner(&format!("call-{i}"));
            let r = SocketAddr::new(sa("198.18.1.1:1").ip(), 10000 + i);
            s.set(local, &o, expecting(&r.to_string(), &[]));
            s.key(local, &o, Some(r)).unwrap();
        }
        for i in (0..1000u16).step_by(97) {
            let r = SocketAddr::new(sa("198.18.1.1:1").ip(), 10000 + i);
            assert_eq!(
                s.resolve(local, r, None),
                Resolved::Known(owner(&format!("call-{i}")))
            );
        }
        // Same IP, unknown port: a thousand candidates, refused.
        assert_eq!(
            s.resolve(local, sa("198.18.1.1:9"), None),
            Resolved::Refused(Attribution::Ambiguous)
        );
    }
}
