//! Calls that survive the daemon: every call's record kept where
//! forwarding state lives (through [`Backend::persist`]), and the calls an
//! earlier run kept adopted by the next one ([`Engine::restore`]).
//!
//! Keeping: an event (an ng command, a packet, a tick) marks the calls it
//! changes; when it is done each is written once, and only if its record
//! changed (the digest of the body, see `record.rs`): a retransmitted
//! offer, a query, a packet that only moves a sequence number write
//! nothing. A call that ends is forgotten. The engine's own record (totals
//! and the calls that ended lately) is written from the tick, at most once
//! a second.
//!
//! Adopting: each record is decoded, checked against this run's
//! configuration (its local addresses must still be on an interface, its
//! port pairs inside the range and not taken twice), its pairs claimed
//! from the allocator and bound again (the sockets died with the earlier
//! process; the ports are the same), and its routes programmed through the
//! usual path: the flows of a call are still in the pinned flow table and
//! are updated in place, so no packet is lost. A record that fails any of
//! this is skipped, logged, counted and forgotten; it never stops the
//! others. The data plane's counters live in pinned maps and simply
//! continue.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{
    backend::Backend,
    clock::Now,
    engine::{ENDED_KEPT, Engine, Lease, TIMEOUT_CHECK, Totals},
    model::Call,
    ports::ClaimError,
    record::{self, Decoded, ENGINE_ID, EngineState, RecordError},
};

/// How often the engine's own record is written at most.
const ENGINE_RECORD_EVERY: Duration = Duration::from_secs(1);
/// Records the decoding thread hands over at once (see
/// [`Engine::restore`]): one wake-up of either thread per this many calls,
/// where one a call cost the adopting thread a tenth of its time (waking
/// the decoder each time it freed a place in a full queue).
const DECODE_BATCH: usize = 128;
/// Batches decoded ahead of their adoption at most.
const DECODE_AHEAD: usize = 4;
/// A record and, for a call's, its decoding and how long that took.
type Item = (
    String,
    Vec<u8>,
    Option<Result<Decoded, RecordError>>,
    Duration,
);
/// Skipped records logged one by one; the rest are only counted.
const SKIPS_LOGGED: usize = 20;

/// What [`Engine::restore`] did.
#[derive(Debug, Default)]
pub struct Restored {
    /// Calls adopted.
    pub adopted: usize,
    /// Records that were not, and why (each is forgotten: its call is
    /// lost).
    pub skipped: Vec<Skipped>,
    /// Records written before a reboot: their times were moved by the
    /// wall clock (see `record.rs`).
    pub rebased: usize,
    /// The engine's own record: `None` if there was none, else whether it
    /// was read (totals and recently ended calls continue).
    pub engine_record: Option<Result<(), RecordError>>,
    /// How long adoption took (measured for the report only: nothing in
    /// the engine depends on it).
    pub took: Duration,
    /// Where it went: decoding records (on a second thread, overlapping
    /// the other two: the three add up to more than `took`), claiming (and, for a
    /// backend that does not defer it, binding) ports, re-programming
    /// routes.
    pub phases: Phases,
}

/// Where adoption's time went.
#[derive(Debug, Default)]
pub struct Phases {
    pub decode: Duration,
    pub bind: Duration,
    pub program: Duration,
}

/// A record that was not adopted.
#[derive(Debug)]
pub struct Skipped {
    pub call_id: String,
    pub reason: SkipReason,
}

/// Why a record was not adopted.
#[derive(Debug, thiserror::Error)]
pub enum SkipReason {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("a call by that id exists already")]
    Duplicate,
    #[error("the id is reserved for the engine's own record, and unknown to this build")]
    Reserved,
    #[error("its local address {local} is on none of the configured interfaces")]
    NoInterface { local: IpAddr },
    #[error("its port pair {port} cannot be claimed: {source}")]
    Port {
        port: u16,
        #[source]
        source: ClaimError,
    },
    #[error(
        "its pairs are {} but port-sharing is {} in this run: start the daemon with the setting the call was made with",
        if *shared { "shared" } else { "its own" },
        if *shared { "off" } else { "on" }
    )]
    SharingMode { shared: bool },
    #[error("its slot {remote:?} on shared port pair {port} cannot be claimed: {source}")]
    SharedSlot {
        port: u16,
        remote: Option<SocketAddr>,
        #[source]
        source: super::sharing::ShareError,
    },
    #[error("binding its port pair {local} {port} failed: {source}")]
    Bind {
        local: IpAddr,
        port: u16,
        #[source]
        source: io::Error,
    },
}

impl<B: Backend> Engine<B> {
    // ---- keeping ---------------------------------------------------------

    /// Run `f`, which may change call `id`, and keep the call's record.
    pub(super) fn changing<T>(&mut self, id: &str, now: Now, f: impl FnOnce(&mut Self) -> T) -> T {
        let out = f(self);
        self.dirty.insert(id.to_owned());
        self.flush(now);
        out
    }

    /// Write the record of every call the event changed (once each).
    pub(super) fn flush(&mut self, now: Now) {
        for id in std::mem::take(&mut self.dirty) {
            let Some(call) = self.calls.get_mut(&id) else {
                // Ended (and forgotten then) or never created.
                continue;
            };
            let Some((bytes, digest)) = record::encode_call(call, self.sharing.is_some(), now)
            else {
                warn!(call_id = %id, "the call's record could not be encoded: it will not survive a restart");
                continue;
            };
            if call.persisted == Some(digest) {
                continue;
            }
            self.backend.persist(&id, Some(&bytes));
            call.persisted = Some(digest);
        }
    }

    /// Forget the record of a call that ended.
    pub(super) fn forget(&mut self, call: &Call) {
        self.dirty.remove(&call.id);
        if call.persisted.is_some() {
            self.backend.persist(&call.id, None);
        }
    }

    /// Write the engine's own record, at most once a second, if it changed.
    pub(super) fn keep_engine_record(&mut self, now: Now) {
        let (last, kept) = self.own_record;
        if last.is_some_and(|t| now.mono.saturating_duration_since(t) < ENGINE_RECORD_EVERY) {
            return;
        }
        self.own_record.0 = Some(now.mono);
        let unattributed = self.sharing.as_ref().map_or(0, |s| s.owners.unattributed);
        let Some((bytes, digest)) =
            record::encode_engine(&self.totals, &self.ended, &self.finished, unattributed, now)
        else {
            return;
        };
        if kept != Some(digest) {
            self.backend.persist(ENGINE_ID, Some(&bytes));
            self.own_record.1 = Some(digest);
        }
    }

    // ---- adopting --------------------------------------------------------

    /// Adopt the calls an earlier run kept (the daemon calls this once,
    /// after [`Engine::new`]). Each becomes a call like any other:
    /// `query`, `list`, `delete`, re-offers and timeouts work on it as on
    /// a new one, with the same ports.
    pub fn restore(&mut self, now: Now) -> Restored {
        // The one clock the engine reads, for the report only.
        let started = Instant::now();
        let mut records = self.backend.take_persisted();
        // In the order of the call table: each call then joins it at its
        // end, whose path is in the cache, where records in the pinned
        // map's (hash) order would each cost a walk of cold nodes (a
        // microsecond a call at 100 000 calls, three times).
        records.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        let total = records.len();
        if let Some(s) = self.sharing.as_mut() {
            // A call's two sides' RTP and RTCP streams, as a rule: the
            // tables sized once rather than grown (and rehashed) as
            // hundreds of thousands of streams come back.
            s.owners.reserve(4 * total);
            s.ports.reserve(2 * total);
            self.backend.reserve_shared(4 * total);
        }
        let mut out = Restored::default();
        // Records are decoded on a second thread, a few batches ahead of
        // the adoption that takes them in order here: decoding is a pure
        // function of a record's bytes (allocating its call), and it
        // overlaps claiming and programming the calls before it.
        let pending = std::sync::Mutex::new(Some(records));
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Item>>(DECODE_AHEAD);
            let taken = &pending;
            // `move`: the sender goes with the thread, so the loop below
            // ends when it does.
            let decoder = std::thread::Builder::new()
                .name("adopt-decode".to_owned())
                .spawn_scoped(scope, move || {
                    let records = taken.lock().ok().and_then(|mut p| p.take());
                    let mut records = records.unwrap_or_default().into_iter();
                    loop {
                        let batch: Vec<Item> = records
                            .by_ref()
                            .take(DECODE_BATCH)
                            .map(|(id, bytes)| decode(id, bytes, now))
                            .collect();
                        if batch.is_empty() || tx.send(batch).is_err() {
                            return;
                        }
                    }
                });
            for (i, (id, bytes, decoded, took)) in rx.into_iter().flatten().enumerate() {
                out.phases.decode += took;
                self.restore_one(id, &bytes, decoded, &mut out, (i, total), now);
            }
            match decoder {
                Ok(d) => {
                    if d.join().is_err() {
                        warn!(
                            "decoding the earlier run's records failed: the calls not adopted are lost"
                        );
                    }
                }
                Err(e) => {
                    // No thread to be had: the records are decoded here,
                    // one by one (the closure, and its sender, are gone).
                    warn!(error = %e, "no thread to decode the earlier run's records on: decoding them in turn");
                    let records = pending.lock().ok().and_then(|mut p| p.take());
                    for (i, (id, bytes)) in records.unwrap_or_default().into_iter().enumerate() {
                        let (id, bytes, decoded, took) = decode(id, bytes, now);
                        out.phases.decode += took;
                        self.restore_one(id, &bytes, decoded, &mut out, (i, total), now);
                    }
                }
            }
        });
        self.flush(now);
        out.took = started.elapsed();
        if out.rebased > 0 {
            warn!(
                records = out.rebased,
                "records written before a reboot: their times follow the wall clock"
            );
        }
        if total > 0 {
            info!(
                adopted = out.adopted,
                skipped = out.skipped.len(),
                took_us = out.took.as_micros() as u64,
                decode_us = out.phases.decode.as_micros() as u64,
                claim_us = out.phases.bind.as_micros() as u64,
                program_us = out.phases.program.as_micros() as u64,
                "calls of the earlier run adopted"
            );
        }
        out
    }

    /// Take one record back: the engine's own, or a call's (`decoded`
    /// already, on the decoding thread).
    fn restore_one(
        &mut self,
        id: String,
        bytes: &[u8],
        decoded: Option<Result<Decoded, RecordError>>,
        out: &mut Restored,
        (i, total): (usize, usize),
        now: Now,
    ) {
        let Some(decoded) = decoded else {
            let result = record::decode_engine(bytes).map(|s| self.adopt_engine(s));
            if let Err(e) = &result {
                warn!(reason = %e, "the engine's record from the earlier run is unreadable: totals start again");
                self.backend.persist(ENGINE_ID, None);
            }
            out.engine_record = Some(result);
            return;
        };
        match self.adopt(&id, decoded, &mut out.phases, (i, total), now) {
            Ok(rebased) => {
                out.adopted += 1;
                out.rebased += usize::from(rebased);
            }
            Err(reason) => {
                if out.skipped.len() < SKIPS_LOGGED {
                    warn!(call_id = %id.escape_debug(), %reason, "a call of the earlier run is not adopted: it is lost");
                }
                self.backend.persist(&id, None);
                out.skipped.push(Skipped {
                    call_id: id,
                    reason,
                });
            }
        }
    }

    /// Adopt one call from its record, the `i`th of `n`. Returns whether
    /// its times were rebased.
    fn adopt(
        &mut self,
        id: &str,
        decoded: Result<Decoded, RecordError>,
        phases: &mut Phases,
        (i, n): (usize, usize),
        now: Now,
    ) -> Result<bool, SkipReason> {
        if id.starts_with('\0') {
            return Err(SkipReason::Reserved);
        }
        if self.calls.contains_key(id) {
            return Err(SkipReason::Duplicate);
        }
        let Decoded {
            mut call,
            rebased,
            shared,
        } = decoded?;
        let t1 = Instant::now();
        spread_first_check(&mut call, i, n, now.mono);
        if shared != self.sharing.is_some() {
            return Err(SkipReason::SharingMode { shared });
        }
        // Interfaces are this run's configuration: a party's local address
        // must still be on one (it may have moved in the list).
        let mut moved = rebased;
        for m in &mut call.monos {
            let fits = m.iface < self.interfaces.len() && self.interfaces.get(m.iface).has(m.local);
            if !fits {
                m.iface = self
                    .interfaces
                    .by_local(m.local)
                    .ok_or(SkipReason::NoInterface { local: m.local })?;
                moved = true;
            }
        }
        if shared {
            return self.adopt_shared(id, call, now, phases, (t1, moved, rebased));
        }
        let pairs: Vec<(usize, usize, IpAddr, u16)> = call
            .monos
            .iter()
            .enumerate()
            .flat_map(|(x, mono)| {
                mono.media
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, m)| m.port.map(|p| (x, i, mono.local, p)))
            })
            .collect();
        let mut claimed = Vec::with_capacity(pairs.len());
        let mut opened = Vec::with_capacity(pairs.len());
        let failed = pairs.iter().find_map(|&(_, _, local, port)| {
            if let Err(source) = self.ports.claim(port) {
                return Some(SkipReason::Port { port, source });
            }
            claimed.push(port);
            if let Err(source) = self.backend.adopt_pair(local, port) {
                return Some(SkipReason::Bind {
                    local,
                    port,
                    source,
                });
            }
            opened.push((local, port));
            None
        });
        let t2 = Instant::now();
        phases.bind += t2 - t1;
        if let Some(reason) = failed {
            for (local, port) in opened {
                self.backend.close_pair(local, port);
            }
            for port in claimed {
                self.ports.release(port, now.mono);
            }
            return Err(reason);
        }
        for (x, i, local, port) in pairs {
            self.own(id, x, i, local, port);
        }
        self.install_adopted(id, call, moved);
        phases.program += t2.elapsed();
        Ok(rebased)
    }

    /// An adopted call's routes programmed: its streams' XDP flows,
    /// updated in place, keep forwarding and counting. (Computed before
    /// the call joins the table: one search of it per call, which at
    /// 100 000 calls costs microseconds.)
    fn install_adopted(&mut self, id: &str, call: Call, moved: bool) {
        // Every dialogue's routes in one list, so that a party in two
        // dialogues (its peer's peer another party) is seen as new once.
        let todo: Vec<_> = call
            .monos
            .iter()
            .enumerate()
            .filter(|(x, m)| {
                m.peer
                    .is_some_and(|y| y > *x || call.monos.get(y).and_then(|p| p.peer) != Some(*x))
            })
            .flat_map(|(x, _)| Self::todo(&call, id, x))
            .collect();
        self.calls.insert(id.to_owned(), call);
        self.apply(id, todo, true);
        if moved {
            self.dirty.insert(id.to_owned());
        }
    }

    /// Adopt a call on shared pairs: each media's slot claimed back in the
    /// allocator, the pair opened (one more reference), then the routes
    /// programmed, which registers the streams and their keys again
    /// (`routes.rs`) and reinstalls their exact flows.
    fn adopt_shared(
        &mut self,
        id: &str,
        call: Call,
        now: Now,
        phases: &mut Phases,
        (t1, moved, rebased): (Instant, bool, bool),
    ) -> Result<bool, SkipReason> {
        let leases: Vec<Lease> = call
            .monos
            .iter()
            .flat_map(|mono| {
                mono.media.iter().filter_map(move |m| {
                    m.port.map(|port| Lease {
                        local: mono.local,
                        port,
                        slot: m.slot,
                    })
                })
            })
            .collect();
        let mut taken: Vec<Lease> = Vec::with_capacity(leases.len());
        let mut failed = None;
        for l in &leases {
            let Some(s) = self.sharing.as_mut() else {
                break;
            };
            if let Err(source) = s.ports.claim(l.port, l.slot) {
                failed = Some(SkipReason::SharedSlot {
                    port: l.port,
                    remote: l.slot,
                    source,
                });
                break;
            }
            if let Err(source) = self.backend.adopt_shared(l.local, l.port) {
                s.ports.release(l.port, l.slot, now.mono);
                failed = Some(SkipReason::Bind {
                    local: l.local,
                    port: l.port,
                    source,
                });
                break;
            }
            taken.push(*l);
        }
        let t2 = Instant::now();
        phases.bind += t2 - t1;
        if let Some(reason) = failed {
            for l in taken {
                if let Some(s) = self.sharing.as_mut() {
                    s.ports.release(l.port, l.slot, now.mono);
                }
                self.backend.close_shared(l.local, l.port);
            }
            return Err(reason);
        }
        self.install_adopted(id, call, moved);
        phases.program += t2.elapsed();
        Ok(rebased)
    }

    fn adopt_engine(&mut self, s: EngineState) {
        let EngineState {
            totals,
            ended,
            finished,
            unattributed,
        } = s;
        merge(&mut self.totals, totals);
        if let Some(s) = self.sharing.as_mut() {
            s.owners.unattributed = s.owners.unattributed.saturating_add(unattributed);
        }
        for e in ended.into_iter().rev() {
            if self.ended.len() == ENDED_KEPT {
                break;
            }
            self.ended.push_front(e);
        }
        for f in finished.into_iter().rev() {
            if self.finished.len() == ENDED_KEPT {
                break;
            }
            self.finished.push_front(f);
        }
    }

    /// A port of an adopted call could not be bound again (another
    /// program took it while no daemon held it): the call cannot be
    /// served on it, and ends (reason `port lost`).
    pub fn port_lost(&mut self, local: SocketAddr, error: &io::Error, now: Now) {
        let Some(id) = self.owners.get(&local).map(|o| o.call.to_string()) else {
            let streams = self
                .sharing
                .as_ref()
                .map_or(0, |s| s.owners.streams_on(local));
            if streams > 0 {
                // Its calls' known sources keep their XDP flows; a source
                // not known yet cannot reach the daemon there. They go on.
                warn!(%local, %error, streams, "a shared port of adopted calls could not be bound again: new sources on it cannot be attributed and the userspace path cannot serve it; free the port and restart the daemon");
            }
            return;
        };
        warn!(call_id = %id, %local, %error, "a port of an adopted call could not be bound again: the call ends");
        self.drop_call(&id, now, Some("port lost"));
    }

    /// Whether a local address is owned by a call's stream (a flow left in
    /// the data plane on a port nobody owns after [`restore`] belongs to a
    /// call that was not adopted).
    ///
    /// [`restore`]: Self::restore
    pub fn owns(&self, local: SocketAddr) -> bool {
        self.owners.contains_key(&local)
    }

    /// [`owns`](Self::owns) for a flow's key: a shared port's flow (with
    /// a `remote`) is owned when a stream holds that exact key.
    pub fn owns_flow(&self, local: SocketAddr, remote: Option<SocketAddr>) -> bool {
        match (remote, &self.sharing) {
            (Some(r), Some(s)) => s.owners.holds(local, r),
            (Some(_), None) => false,
            (None, _) => self.owns(local),
        }
    }
}

/// Decode one record (a call's; the engine's own is read in turn), timed.
fn decode(id: String, bytes: Vec<u8>, now: Now) -> Item {
    let t0 = Instant::now();
    let decoded = (id != ENGINE_ID).then(|| record::decode_call(&id, &bytes, now));
    (id, bytes, decoded, t0.elapsed())
}

/// Adopted calls would all be looked at by the same tick, and every few
/// seconds together after that: spread them over the check interval (a
/// call still learning is looked at at once).
fn spread_first_check(call: &mut Call, i: usize, n: usize, now: Instant) {
    if !call.learning() && n > 0 {
        let offset = TIMEOUT_CHECK.as_nanos() * i as u128 / n as u128;
        call.next_check = now + Duration::from_nanos(offset as u64);
    }
}

/// Add an earlier run's totals to these.
fn merge(to: &mut Totals, from: Totals) {
    let Totals {
        managed_sessions,
        regular_terminated,
        timeouts,
        silent_timeouts,
        offer_timeouts,
        rejected_sessions,
        port_exhaustions,
        commands,
        errors,
        command_errors,
        refused_sources,
        ended_packets,
        ended_bytes,
        ended_errors,
    } = from;
    for (to, from) in [
        (&mut to.managed_sessions, managed_sessions),
        (&mut to.regular_terminated, regular_terminated),
        (&mut to.timeouts, timeouts),
        (&mut to.silent_timeouts, silent_timeouts),
        (&mut to.offer_timeouts, offer_timeouts),
        (&mut to.rejected_sessions, rejected_sessions),
        (&mut to.port_exhaustions, port_exhaustions),
        (&mut to.errors, errors),
        (&mut to.refused_sources, refused_sources),
        (&mut to.ended_packets, ended_packets),
        (&mut to.ended_bytes, ended_bytes),
        (&mut to.ended_errors, ended_errors),
    ] {
        *to = to.saturating_add(from);
    }
    for (map, from) in [
        (&mut to.commands, commands),
        (&mut to.command_errors, command_errors),
    ] {
        for (k, v) in from {
            let n = map.entry(k).or_default();
            *n = n.saturating_add(v);
        }
    }
}
