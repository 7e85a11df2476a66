//! Session records where forwarding state lives: a pinned BPF hash map
//! (`SESSIONS`, in bpffs: memory, never a disk), so a daemon that crashes,
//! stops or is upgraded leaves its calls' metadata beside their flows, and
//! the next one adopts both.
//!
//! The XDP program never reads it: the map is created by the daemon, not
//! by the program's object, without preallocation (it costs what it
//! holds).
//!
//! A record is the engine's opaque bytes for one call, split into 1 KiB
//! chunks. Replacing a record is crash-safe: the new version's chunks are
//! written beside the old ones (the other of two chunk ranges), then one
//! atomic update of the call's head entry switches to them, then the old
//! chunks are removed. A crash at any point leaves either the old or the
//! new version whole; chunks no head points at are swept on load.

use std::{
    collections::HashMap as StdHashMap,
    hash::{Hash as _, Hasher as _},
    path::Path,
};

use aya::maps::{HashMap, IterableMap as _, MapData, MapError};
use thiserror::Error;

/// `BPF_F_NO_PREALLOC` (uapi/linux/bpf.h).
const BPF_F_NO_PREALLOC: u32 = 1;
/// `BPF_ANY`.
const BPF_ANY: u64 = 0;
/// Payload bytes per chunk.
pub const CHUNK_DATA: usize = 1012;
/// The two chunk ranges a record alternates between (chunk 0 is the head).
const RANGE_A: u32 = 1;
const RANGE_B: u32 = 1 << 16;
/// Chunks per record at most (a record of about 64 KiB).
const MAX_CHUNKS: u32 = 64;

/// The map's name under the pin directory.
pub const SESSIONS: &str = "SESSIONS";

/// Key: a call (by a hash of its id) and a chunk of its record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub call: u64,
    pub chunk: u32,
    pub reserved: u32,
}

/// A chunk: in the head (chunk 0) the record's length, version and range;
/// in a data chunk its bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SessionChunk {
    /// Head: the record's length in bytes. Data: bytes used in `data`.
    pub len: u32,
    /// Head: which range holds the record ([`RANGE_A`] or [`RANGE_B`]).
    pub range: u32,
    /// A version number, the same in the head and its data chunks.
    pub generation: u32,
    pub data: [u8; CHUNK_DATA],
}

// SAFETY: #[repr(C)], u64/u32 fields only: no padding (16 bytes), every bit
// pattern valid.
unsafe impl aya::Pod for SessionKey {}
// SAFETY: #[repr(C)], three u32s and a byte array: 1024 bytes, no padding,
// every bit pattern valid.
unsafe impl aya::Pod for SessionChunk {}

#[derive(Debug, Error)]
pub enum SessionStoreError {
    #[error("session map {path}: {source}")]
    Map {
        path: String,
        #[source]
        source: MapError,
    },
    #[error("pinning the session map at {path}: {source}")]
    Pin {
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("the record of call {call_id} is {len} bytes, more than the {max} a call may keep")]
    TooLarge {
        call_id: String,
        len: usize,
        max: usize,
    },
    #[error("calls {a} and {b} hash alike: {b} is not kept across restarts")]
    Collision { a: String, b: String },
    #[error("session map operation failed: {0}")]
    Op(#[from] MapError),
}

/// Where a call's record is now.
#[derive(Clone, Copy, Debug)]
struct Head {
    range: u32,
    chunks: u32,
    generation: u32,
}

/// The pinned session map and what this process knows it holds.
pub struct SessionStore {
    map: HashMap<MapData, SessionKey, SessionChunk>,
    heads: StdHashMap<u64, (String, Head)>,
}

/// The `call` field of every key that holds call `id`'s record (the
/// engine's own record is `session::record::ENGINE_ID`): what a reader of
/// the pinned map, such as a test, groups its entries by.
pub fn call_hash(id: &str) -> u64 {
    // Stable across processes and builds (a pinned key): FNV-1a over the
    // id, not std's randomly keyed hasher.
    let mut h = Fnv1a::default();
    id.hash(&mut h);
    h.finish()
}

#[derive(Default)]
struct Fnv1a(u64);

impl std::hash::Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

fn key(call: u64, chunk: u32) -> SessionKey {
    SessionKey {
        call,
        chunk,
        reserved: 0,
    }
}

/// The daemon's own hash map pinned at `path` (the XDP program's object
/// does not define it): opened, or created without preallocation (it
/// costs what it holds) with room for `max_entries` and pinned.
pub(super) fn open_pinned_hash<K: aya::Pod, V: aya::Pod>(
    path: &Path,
    max_entries: u32,
) -> Result<HashMap<MapData, K, V>, SessionStoreError> {
    let shown = path.display().to_string();
    let map_err = |source| SessionStoreError::Map {
        path: shown.clone(),
        source,
    };
    if !path.exists() {
        // Pinning consumes the new map's handle: it is opened again from
        // its pin below, like one a previous run left.
        HashMap::<MapData, K, V>::create(max_entries.max(64), BPF_F_NO_PREALLOC)
            .map_err(map_err)?
            .pin(path)
            .map_err(|source| SessionStoreError::Pin {
                path: shown.clone(),
                source,
            })?;
    }
    let data = MapData::from_pin(path).map_err(map_err)?;
    HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(map_err)
}

impl SessionStore {
    /// Open the map pinned at `dir/SESSIONS`, or create and pin it with
    /// room for `max_entries` chunks.
    pub fn open(dir: &Path, max_entries: u32) -> Result<Self, SessionStoreError> {
        let map = open_pinned_hash(&dir.join(SESSIONS), max_entries)?;
        Ok(Self {
            map,
            heads: StdHashMap::new(),
        })
    }

    /// Every record kept, by call id, read once at start-up. Chunks that
    /// no valid head points at (a write cut short, a torn record) are
    /// removed, and so are records that do not reassemble.
    pub fn load(&mut self) -> Result<Vec<(String, Vec<u8>)>, SessionStoreError> {
        // Read first, so that the tables are sized once (a restart at
        // scale reads hundreds of thousands of chunks).
        let chunks = match super::batch::read_all::<SessionKey, SessionChunk>(self.map.map()) {
            Ok(all) => all,
            Err(e) => {
                tracing::debug!(error = %e, "batch lookup refused: reading the records one by one");
                (&self.map).into_iter().collect::<Result<Vec<_>, _>>()?
            }
        };
        // Chunks stay where they were read (a kilobyte each): the table
        // holds their places, `keep` marks the ones a whole record uses.
        let index: StdHashMap<SessionKey, usize> = chunks
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (*k, i))
            .collect();
        let mut keep = vec![false; chunks.len()];
        let mut records = Vec::new();
        for (h, (k, head)) in chunks.iter().enumerate().filter(|(_, (k, _))| k.chunk == 0) {
            let len = head.len as usize;
            let parts = len.div_ceil(CHUNK_DATA) as u32;
            let mut bytes = Vec::with_capacity(len);
            let mut whole = parts <= MAX_CHUNKS && matches!(head.range, RANGE_A | RANGE_B);
            let mut used = Vec::with_capacity(parts as usize);
            for i in 0..parts {
                let at = index.get(&key(k.call, head.range + i)).copied();
                match at.map(|at| (at, &chunks[at].1)) {
                    Some((at, c)) if c.generation == head.generation && whole => {
                        let n = (c.len as usize).min(CHUNK_DATA);
                        bytes.extend_from_slice(&c.data[..n]);
                        used.push(at);
                    }
                    _ => whole = false,
                }
            }
            let parsed = whole
                .then(|| split_record(&bytes))
                .flatten()
                .filter(|_| bytes.len() == len);
            match parsed {
                Some((id, record)) if call_hash(&id) == k.call => {
                    keep[h] = true;
                    for at in used {
                        keep[at] = true;
                    }
                    self.heads.insert(
                        k.call,
                        (
                            id.clone(),
                            Head {
                                range: head.range,
                                chunks: parts,
                                generation: head.generation,
                            },
                        ),
                    );
                    records.push((id, record));
                }
                _ => tracing::warn!(call = k.call, "a torn session record was dropped"),
            }
        }
        for ((k, _), _) in chunks.iter().zip(&keep).filter(|(_, kept)| !**kept) {
            let _ = self.map.remove(k);
        }
        Ok(records)
    }

    /// Keep `record` as call `id`'s state, replacing any earlier one.
    pub fn put(&mut self, id: &str, record: &[u8]) -> Result<(), SessionStoreError> {
        let call = call_hash(id);
        let old = match self.heads.get(&call) {
            Some((other, _)) if other != id => {
                return Err(SessionStoreError::Collision {
                    a: other.clone(),
                    b: id.to_owned(),
                });
            }
            Some((_, head)) => Some(*head),
            None => None,
        };
        let bytes = join_record(id, record);
        let max = MAX_CHUNKS as usize * CHUNK_DATA;
        if bytes.len() > max {
            return Err(SessionStoreError::TooLarge {
                call_id: id.to_owned(),
                len: bytes.len(),
                max,
            });
        }
        let range = match old {
            Some(h) if h.range == RANGE_A => RANGE_B,
            _ => RANGE_A,
        };
        let generation = old.map_or(1, |h| h.generation.wrapping_add(1));
        let mut chunks = 0u32;
        for (i, part) in bytes.chunks(CHUNK_DATA).enumerate() {
            let mut c = SessionChunk {
                len: part.len() as u32,
                range,
                generation,
                data: [0; CHUNK_DATA],
            };
            c.data[..part.len()].copy_from_slice(part);
            self.map.insert(key(call, range + i as u32), c, BPF_ANY)?;
            chunks += 1;
        }
        // The commit point: one atomic update of the head.
        let head = SessionChunk {
            len: bytes.len() as u32,
            range,
            generation,
            data: [0; CHUNK_DATA],
        };
        self.map.insert(key(call, 0), head, BPF_ANY)?;
        if let Some(h) = old {
            for i in 0..h.chunks {
                let _ = self.map.remove(&key(call, h.range + i));
            }
        }
        self.heads.insert(
            call,
            (
                id.to_owned(),
                Head {
                    range,
                    chunks,
                    generation,
                },
            ),
        );
        Ok(())
    }

    /// Forget call `id`'s record.
    pub fn remove(&mut self, id: &str) -> Result<(), SessionStoreError> {
        let call = call_hash(id);
        let Some((_, head)) = self.heads.remove(&call) else {
            return Ok(());
        };
        // Head first: from then on the record is gone, whatever is left.
        let _ = self.map.remove(&key(call, 0));
        for i in 0..head.chunks {
            let _ = self.map.remove(&key(call, head.range + i));
        }
        Ok(())
    }

    /// Records kept.
    pub fn len(&self) -> usize {
        self.heads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }
}

/// `[id length: u16 BE][id][record]`.
fn join_record(id: &str, record: &[u8]) -> Vec<u8> {
    let id = &id.as_bytes()[..id.len().min(usize::from(u16::MAX))];
    let mut v = Vec::with_capacity(2 + id.len() + record.len());
    v.extend_from_slice(&(id.len() as u16).to_be_bytes());
    v.extend_from_slice(id);
    v.extend_from_slice(record);
    v
}

fn split_record(bytes: &[u8]) -> Option<(String, Vec<u8>)> {
    let n = usize::from(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]));
    let id = std::str::from_utf8(bytes.get(2..2 + n)?).ok()?.to_owned();
    Some((id, bytes.get(2 + n..)?.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(size_of::<SessionKey>(), 16);
        assert_eq!(size_of::<SessionChunk>(), 1024);
    }

    #[test]
    fn records_join_and_split() {
        let b = join_record("call-1@host", b"state");
        assert_eq!(
            split_record(&b),
            Some(("call-1@host".to_owned(), b"state".to_vec()))
        );
        assert_eq!(split_record(&b[..5]), None);
        assert_eq!(split_record(&[]), None);
    }

    #[test]
    fn the_hash_is_stable() {
        // A pinned key: the same in every process and build.
        assert_eq!(call_hash("a"), call_hash("a"));
        assert_ne!(call_hash("a"), call_hash("b"));
        let mut h = Fnv1a::default();
        h.write(b"");
        assert_eq!(h.finish(), 0xcbf2_9ce4_8422_2325);
    }
}
