//! The session engine: ng commands in, replies and data-plane routes out.
//!
//! It is the single writer of the media plane (through [`Backend`]): one
//! task owns it, ng requests and latching events reach it in turn, so no
//! two changes to a call's routes ever interleave.
//!
//! It reads no clock: every entry point takes the [`Now`] its caller read,
//! so tests can run time ahead. This file has the engine's state, its entry
//! points and what ends a call; the work is in the sibling files:
//! `offer_answer.rs`, `routes.rs`, `expiry.rs`, `reports.rs`, and
//! `persist.rs` (keeping every call's record where it survives a restart,
//! and adopting them in the next run).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant, SystemTime},
};

use tracing::{debug, info, warn};

use super::{
    backend::{At, Backend},
    clock::Now,
    early::EarlyHold,
    error::CommandError,
    latch::Verdict,
    model::{Call, Owner},
    ports::PortAllocator,
    reports::{ok, text},
    shared_owners::{Resolved, SharedOwners},
    sharing::SharedPorts,
};
use crate::{
    interfaces::Interfaces,
    ng::{Command, Delete, Reply, Value},
};

/// m= lines per SDP by default (`max-media`): far above what calls use
/// (audio, video, T.38, a few alternatives), far below what fills a port
/// range.
pub const DEFAULT_MAX_MEDIA: usize = 16;

/// Session timing and limits, from configuration.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// No media in either direction for this long on a live call: delete.
    pub timeout: Duration,
    /// The same for a call on hold.
    pub silent_timeout: Duration,
    /// An offer never answered for this long: delete.
    pub offer_timeout: Duration,
    /// `delete` without `delete delay`.
    pub delete_delay: Duration,
    /// How long a stream learns its peer's source after its first packet.
    pub learning_window: Duration,
    /// m= lines per SDP at most; a call holds at most twice as many media
    /// over all its parties (`max-media`).
    pub max_media: usize,
    /// When the quality watch calls a leg degraded.
    pub alerts: super::watch::AlertThresholds,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            silent_timeout: Duration::from_secs(3600),
            offer_timeout: Duration::from_secs(3600),
            delete_delay: Duration::ZERO,
            learning_window: Duration::from_secs(3),
            max_media: DEFAULT_MAX_MEDIA,
            alerts: super::watch::AlertThresholds::default(),
        }
    }
}

/// Why a call ended without a `delete`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    Timeout,
    SilentTimeout,
    OfferTimeout,
}

impl EndReason {
    pub const fn name(self) -> &'static str {
        match self {
            EndReason::Timeout => "timeout",
            EndReason::SilentTimeout => "silent timeout",
            EndReason::OfferTimeout => "offer timeout",
        }
    }
}

/// A call the engine ended by itself, kept so a SIP controller can end
/// the call too (reported by `list` under `timed out`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub call_id: String,
    pub reason: EndReason,
    pub at: SystemTime,
}

/// A call that is over, with its final report: `query` still answers
/// for it and `list` names it under `ended` (operators' CLI, call
/// records), for the last [`ENDED_KEPT`] calls.
#[derive(Clone, Debug)]
pub(super) struct Finished {
    pub(super) call_id: String,
    pub(super) reason: &'static str,
    pub(super) at: SystemTime,
    pub(super) duration: Duration,
    /// The final `query` dictionary, bencoded (a few hundred bytes, where
    /// the dictionary itself takes kilobytes).
    pub(super) report: Box<[u8]>,
}

/// How many ended calls are remembered.
pub(super) const ENDED_KEPT: usize = 1000;
/// How many of them `list` reports at most.
pub(super) const ENDED_LISTED: usize = 100;
/// How often the tick reads the counters of a call that is learning.
pub(super) const LEARNING_CHECK: Duration = Duration::from_secs(1);
/// How often it reads those of any other call (timeouts).
pub(super) const TIMEOUT_CHECK: Duration = Duration::from_secs(5);
/// Calls one tick ends at most, and the time it may spend ending them: a
/// mass timeout (an outage silences thousands of calls at once) is spread
/// over ticks so that ng and the media path keep being served meanwhile;
/// the calls left over are ended at the next ticks.
pub(super) const ENDS_PER_TICK: usize = 500;
pub(super) const END_BUDGET: Duration = Duration::from_millis(25);
/// The time one tick may spend reading calls' counters (learning windows,
/// timeouts): due calls past it wait for the next tick, so at 100 000
/// calls the checks spread out (each call a few seconds later) instead of
/// holding the engine — and ng — for seconds.
pub(super) const CHECK_BUDGET: Duration = Duration::from_millis(40);
/// How often packet/byte/error rates are sampled for `statistics`.
pub(super) const RATE_SAMPLE: Duration = Duration::from_secs(10);

/// Counters over the engine's life.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub managed_sessions: u64,
    pub regular_terminated: u64,
    pub timeouts: u64,
    pub silent_timeouts: u64,
    pub offer_timeouts: u64,
    pub rejected_sessions: u64,
    pub port_exhaustions: u64,
    pub commands: BTreeMap<&'static str, u64>,
    pub errors: u64,
    /// Commands answered with an error, by command.
    pub command_errors: BTreeMap<&'static str, u64>,
    /// Packets the daemon refused for their source (latching).
    pub refused_sources: u64,
    /// Packets/bytes/errors of calls already deleted.
    pub ended_packets: u64,
    pub ended_bytes: u64,
    pub ended_errors: u64,
}

/// Port sharing's figures (`statistics`, `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedFigures {
    /// Shared pairs in the range.
    pub pairs: usize,
    /// Pairs carrying at least one stream (quarantined slots included).
    pub pairs_in_use: usize,
    /// Streams (leases) over all pairs.
    pub streams: usize,
    /// The most streams one pair carries.
    pub max_streams_on_a_pair: usize,
    /// Packets from sources no stream could be given unambiguously:
    /// dropped (`media_relay_shared_port_unattributed_total`).
    pub unattributed: u64,
}

/// A packet that reached the daemon and needs a latching decision.
#[derive(Clone, Debug)]
pub struct PacketEvent {
    pub local: SocketAddr,
    pub from: SocketAddr,
    pub rtp: Option<(u32, u16)>,
    pub data: Vec<u8>,
}

pub struct Engine<B: Backend> {
    pub(super) cfg: SessionConfig,
    pub(super) backend: B,
    pub(super) interfaces: Interfaces,
    pub(super) ports: PortAllocator,
    pub(super) calls: BTreeMap<String, Call>,
    pub(super) owners: HashMap<SocketAddr, Owner>,
    pub(super) totals: Totals,
    pub(super) ended: VecDeque<Ended>,
    pub(super) finished: VecDeque<Finished>,
    pub(super) started: Instant,
    /// For rates: packets/bytes/errors over all live streams at the last tick.
    pub(super) last_sample: (Instant, u64, u64, u64),
    pub(super) rates: (f64, f64, f64),
    /// Calls changed by the event being handled: their records are
    /// rewritten once, when it is done (`persist.rs`).
    pub(super) dirty: BTreeSet<String>,
    /// When the engine's own record was last looked at, and the digest of
    /// the one kept.
    pub(super) own_record: (Option<Instant>, Option<u64>),
    /// Where the quality watch's last round stopped.
    pub(super) watch_cursor: Option<String>,
    /// The quality watch's counts (not kept across a restart: the watch
    /// starts again).
    pub(super) watch_totals: super::watch::WatchTotals,
    /// Packets that overtook their call's answer (`early.rs`).
    pub(super) early: EarlyHold,
    /// `port-sharing`: the shared pairs and who owns what on them
    /// (`None`: every lease is a pair of its own, from `ports`).
    pub(super) sharing: Option<Sharing>,
}

/// Port sharing's state (`docs/port-sharing.md`).
#[derive(Debug)]
pub(super) struct Sharing {
    pub(super) ports: SharedPorts,
    pub(super) owners: SharedOwners,
}

/// A lease to give back: the pair, and its slot on a shared one.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lease {
    pub(super) local: IpAddr,
    pub(super) port: u16,
    pub(super) slot: Option<SocketAddr>,
}

impl<B: Backend> Engine<B> {
    pub fn new(
        cfg: SessionConfig,
        backend: B,
        interfaces: Interfaces,
        ports: PortAllocator,
        now: Now,
    ) -> Self {
        let now = now.mono;
        Self {
            cfg,
            backend,
            interfaces,
            ports,
            calls: BTreeMap::new(),
            owners: HashMap::new(),
            totals: Totals::default(),
            ended: VecDeque::new(),
            finished: VecDeque::new(),
            started: now,
            last_sample: (now, 0, 0, 0),
            rates: (0.0, 0.0, 0.0),
            dirty: BTreeSet::new(),
            own_record: (None, None),
            early: EarlyHold::default(),
            watch_cursor: None,
            watch_totals: super::watch::WatchTotals::default(),
            sharing: None,
        }
    }

    /// Port sharing (`port-sharing`): leases come from `ports`, many
    /// calls per pair, instead of the allocator given to [`new`](Self::new).
    #[must_use]
    pub fn with_sharing(mut self, ports: SharedPorts) -> Self {
        self.sharing = Some(Sharing {
            ports,
            owners: SharedOwners::default(),
        });
        self
    }

    /// Port sharing's figures: (shared pairs with at least one stream,
    /// streams leased, pairs, packets refused as unattributable).
    pub fn shared_figures(&self) -> Option<SharedFigures> {
        let s = self.sharing.as_ref()?;
        let pairs = s.ports.pairs();
        let loads: Vec<usize> = (0..pairs)
            .map(|i| s.ports.load(s.ports.port_at(i)))
            .collect();
        Some(SharedFigures {
            pairs,
            pairs_in_use: loads.iter().filter(|n| **n > 0).count(),
            streams: loads.iter().sum(),
            max_streams_on_a_pair: loads.iter().copied().max().unwrap_or(0),
            unattributed: s.owners.unattributed,
        })
    }

    /// Where the stream of `local` whose shared slot is `slot` is, for
    /// the backend; `None` for a shared stream whose slot is not known yet
    /// (it has no route nor counters of its own).
    pub(super) fn at(&self, local: SocketAddr, slot: Option<SocketAddr>) -> Option<At> {
        if self.sharing.is_none() {
            return Some(At::Own(local));
        }
        slot.map(|slot| At::Shared { local, slot })
    }

    /// The counters of the stream at `local` with shared slot `slot`.
    pub(super) fn counters_of(
        &self,
        local: SocketAddr,
        slot: Option<SocketAddr>,
    ) -> super::Counters {
        self.at(local, slot)
            .map(|a| self.backend.counters_at(a))
            .unwrap_or_default()
    }

    /// Packets, bytes and errors of every live stream.
    pub(super) fn live_totals(&self) -> (u64, u64, u64) {
        let (mut p, mut b, mut e) = (0, 0, 0);
        let mut add = |c: super::Counters| {
            p += c.packets;
            b += c.bytes;
            e += c.errors;
        };
        if self.sharing.is_none() {
            for local in self.owners.keys() {
                add(self.backend.counters(*local));
            }
            return (p, b, e);
        }
        for call in self.calls.values() {
            for mono in &call.monos {
                for m in &mono.media {
                    if let Some((rtp, rtcp)) = m.locals(mono.local) {
                        add(self.counters_of(rtp, m.slot));
                        add(self.counters_of(rtcp, m.slot));
                    }
                }
            }
        }
        (p, b, e)
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Degraded legs and quality alerts (`watch.rs`).
    pub fn watch_totals(&self) -> &super::watch::WatchTotals {
        &self.watch_totals
    }

    pub fn ports(&self) -> &PortAllocator {
        &self.ports
    }

    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Local ports currently owned by a stream (two per leased pair).
    pub fn owned_ports(&self) -> usize {
        self.owners.len()
    }

    /// Calls ended by a timeout, most recent last.
    pub fn ended(&self) -> impl Iterator<Item = &Ended> {
        self.ended.iter()
    }

    /// Handle one ng command.
    pub fn handle(&mut self, cmd: Command, now: Now) -> Reply {
        let name = cmd.name();
        // Everything logged while handling it (media plane included)
        // carries the call's id, as the SIP agent's logs do.
        let _span = match cmd.call_id() {
            Some(id) => tracing::info_span!("ng", command = name, call_id = %id).entered(),
            None => tracing::info_span!("ng", command = name).entered(),
        };
        *self.totals.commands.entry(name).or_default() += 1;
        let result = match cmd {
            Command::Ping => return Reply::Pong,
            Command::Offer(o) => self.changing(&o.call_id, now, |e| e.offer(&o, now)),
            Command::Answer(a) => {
                let r = self.changing(&a.call_id, now, |e| e.answer(&a, now));
                self.replay_early(&a.call_id, now);
                r
            }
            Command::Delete(d) => self.changing(&d.call_id, now, |e| e.delete(&d, now)),
            Command::Query(q) => self.query(&q),
            Command::List(l) => Ok(self.list(&l)),
            Command::Statistics => Ok(self.statistics(now.mono)),
        };
        match result {
            Ok(reply) => reply,
            Err(reason) => {
                self.totals.errors += 1;
                *self.totals.command_errors.entry(name).or_default() += 1;
                debug!(command = name, %reason, "ng command failed");
                // The one place an error becomes ng text.
                Reply::Error(reason.to_string())
            }
        }
    }

    // ---- port leases ---------------------------------------------------

    /// Lease a port pair on `local` for a party expected at `expect`
    /// (its SDP endpoint; `None` when not known yet). With port sharing,
    /// a shared pair on which `expect` is not taken: returns the port and
    /// the slot.
    pub(super) fn lease(
        &mut self,
        local: IpAddr,
        expect: Option<SocketAddr>,
        now: Instant,
    ) -> Result<(u16, Option<SocketAddr>), CommandError> {
        if let Some(s) = self.sharing.as_mut() {
            let port = match s.ports.lease(expect, now) {
                Ok(p) => p,
                Err(e) => {
                    self.totals.port_exhaustions += 1;
                    warn!(%local, in_use = s.ports.in_use(), capacity = s.ports.capacity(), reason = %e, "shared ports exhausted");
                    return Err(CommandError::PortsExhausted { local });
                }
            };
            if let Err(e) = self.backend.open_shared(local, port) {
                s.ports.release(port, expect, now);
                self.totals.port_exhaustions += 1;
                warn!(%local, port, error = %e, "cannot open a shared media port");
                return Err(CommandError::PortsUnavailable {
                    reason: e.to_string(),
                });
            }
            return Ok((port, expect));
        }
        self.lease_own(local, now).map(|p| (p, None))
    }

    fn lease_own(&mut self, local: IpAddr, now: Instant) -> Result<u16, CommandError> {
        let backend = &mut self.backend;
        match self
            .ports
            .allocate_binding(now, |p| backend.open_pair(local, p))
        {
            Ok(Some(p)) => Ok(p),
            Err(e) => {
                self.totals.port_exhaustions += 1;
                let hint = if e.raw_os_error() == Some(libc::EMFILE) {
                    "the daemon's file descriptor limit (RLIMIT_NOFILE) is below one per media port: raise LimitNOFILE"
                } else {
                    "every port would fail alike"
                };
                warn!(%local, in_use = self.ports.in_use(), error = %e, hint, "cannot open media ports");
                Err(CommandError::PortsUnavailable {
                    reason: e.to_string(),
                })
            }
            Ok(None) => {
                self.totals.port_exhaustions += 1;
                warn!(%local, in_use = self.ports.in_use(), "port range exhausted");
                Err(CommandError::PortsExhausted { local })
            }
        }
    }

    /// Make the stream `media` of party `mono` the owner of its pair
    /// (shared pairs: one of its owners, registered with what it expects
    /// by [`share_program`](Self::share_program) as the call is programmed).
    pub(super) fn own(&mut self, call: &str, mono: usize, media: usize, local: IpAddr, port: u16) {
        if self.sharing.is_some() {
            return;
        }
        let call: std::sync::Arc<str> = call.into();
        for component in 0..2u8 {
            self.owners.insert(
                SocketAddr::new(local, port + u16::from(component)),
                Owner {
                    call: call.clone(),
                    mono,
                    media,
                    component,
                },
            );
        }
    }

    /// Give a lease back: the pair, its owners, and on a shared pair the
    /// stream's routes, keys and slot.
    pub(super) fn unlease(
        &mut self,
        call: &str,
        mono: usize,
        media: usize,
        l: Lease,
        now: Instant,
    ) {
        let Lease { local, port, slot } = l;
        if let Some(s) = self.sharing.as_mut() {
            for component in 0..2u8 {
                let at = SocketAddr::new(local, port + u16::from(component));
                let owner = Owner {
                    call: call.into(),
                    mono,
                    media,
                    component,
                };
                s.owners.remove(at, &owner);
                if let Some(slot) = slot {
                    self.backend.drop_stream(At::Shared { local: at, slot });
                }
            }
            s.ports.release(port, slot, now);
            self.backend.close_shared(local, port);
            return;
        }
        self.backend.close_pair(local, port);
        self.owners.remove(&SocketAddr::new(local, port));
        self.owners.remove(&SocketAddr::new(local, port + 1));
        self.ports.release(port, now);
    }

    // ---- delete and the end of a call ------------------------------------

    fn delete(&mut self, cmd: &Delete, clock: Now) -> Result<Reply, CommandError> {
        let Some(call) = self.calls.get_mut(&cmd.call_id) else {
            return Ok(ok(vec![("warning", text("Call-ID not found"))]));
        };
        if let Some(tag) = &cmd.from_tag
            && !call.monos.iter().any(|m| &m.tag == tag)
        {
            return Ok(ok(vec![("warning", text("Tag not found"))]));
        }
        let delay = cmd
            .delete_delay
            .map_or(self.cfg.delete_delay, |s| Duration::from_secs(u64::from(s)));
        let report = self.report(&cmd.call_id, None);
        if delay.is_zero() {
            self.drop_call(&cmd.call_id, clock, Some("deleted"));
        } else if let Some(call) = self.calls.get_mut(&cmd.call_id) {
            call.delete_at = Some(clock.mono + delay);
        }
        self.totals.regular_terminated += 1;
        info!(call_id = %cmd.call_id, delay_s = delay.as_secs(), "call deleted");
        Ok(Reply::Ok(report.unwrap_or_default()))
    }

    /// Remove a call and free everything it holds; with an end reason, a
    /// call that was (not a refused offer) is remembered with its final
    /// report.
    pub(super) fn drop_call(&mut self, call_id: &str, clock: Now, ended: Option<&'static str>) {
        let now = clock.mono;
        if let Some(reason) = ended
            && let Some(report) = self.report(call_id, None)
            && let Some(call) = self.calls.get(call_id)
        {
            if self.finished.len() == ENDED_KEPT {
                self.finished.pop_front();
            }
            self.finished.push_back(Finished {
                call_id: call_id.to_owned(),
                reason,
                at: clock.wall,
                duration: now.saturating_duration_since(call.created_at),
                report: Value::Dict(report)
                    .encode()
                    .unwrap_or_default()
                    .into_boxed_slice(),
            });
        }
        let (held, stale) = self.early.take(call_id, now);
        self.totals.refused_sources += (held.len() + stale) as u64;
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        self.forget(&call);
        self.unwatch(&call);
        for (x, mono) in call.monos.iter().enumerate() {
            for (i, m) in mono.media.iter().enumerate() {
                if let Some(p) = m.port {
                    for local in [
                        SocketAddr::new(mono.local, p),
                        SocketAddr::new(mono.local, p + 1),
                    ] {
                        let c = self.counters_of(local, m.slot);
                        self.totals.ended_packets += c.packets;
                        self.totals.ended_bytes += c.bytes;
                        self.totals.ended_errors += c.errors;
                    }
                    let lease = Lease {
                        local: mono.local,
                        port: p,
                        slot: m.slot,
                    };
                    self.unlease(call_id, x, i, lease, now);
                }
            }
        }
    }

    // ---- packets reaching the daemon -----------------------------------

    /// A packet the fast paths handed over for a latching decision.
    pub fn on_packet(&mut self, ev: PacketEvent, clock: Now) {
        self.decide(ev, clock, false);
    }

    /// Decide on the packets that overtook call `id`'s answer (`early.rs`),
    /// now that it has come: by the before-the-answer rule, against what
    /// the answer said.
    pub(super) fn replay_early(&mut self, id: &str, clock: Now) {
        let (fresh, stale) = self.early.take(id, clock.mono);
        self.totals.refused_sources += stale as u64;
        if !fresh.is_empty() || stale > 0 {
            debug!(call_id = %id, fresh = fresh.len(), stale, "packets that overtook the answer");
        }
        for ev in fresh {
            self.decide(ev, clock, true);
        }
    }

    /// `replay`: a packet held for the answer, judged by the rule before
    /// it (only sources matching what signalling said), never held again.
    fn decide(&mut self, ev: PacketEvent, clock: Now, replay: bool) {
        let now = clock.mono;
        let owner = if let Some(s) = self.sharing.as_mut() {
            // A shared port: the owner by the packet's source — its exact
            // key, else attributed only when unambiguous (`sharing.rs`).
            match s
                .owners
                .resolve(ev.local, ev.from, ev.rtp.map(|(ssrc, _)| ssrc))
            {
                Resolved::Known(o) | Resolved::Attributed(o) => o,
                Resolved::Refused(why) => {
                    debug!(local = %ev.local, from = %ev.from, ?why, "shared port: source not attributed");
                    return;
                }
            }
        } else {
            let Some(owner) = self.owners.get(&ev.local).cloned() else {
                return;
            };
            owner
        };
        let Some(call) = self.calls.get_mut(&*owner.call) else {
            return;
        };
        let answered = call.dialogue_answered(owner.mono) && !replay;
        let Some(m) = call
            .monos
            .get_mut(owner.mono)
            .and_then(|m| m.media.get_mut(owner.media))
        else {
            return;
        };
        let latch = if owner.component == 0 {
            &mut m.rtp
        } else {
            &mut m.rtcp
        };
        let before = (latch.endpoint(), latch.source());
        let was = latch.clone();
        let at = if self.sharing.is_some() {
            m.slot.map(|slot| At::Shared {
                local: ev.local,
                slot,
            })
        } else {
            Some(At::Own(ev.local))
        };
        // What the data plane forwarded on this port without us: the
        // latch decides against the stream as it is now (issue 16, item 1).
        if latch.needs_sync(ev.from, ev.rtp, now) {
            let seen = at.map(|a| self.backend.counters_at(a)).unwrap_or_default();
            latch.sync(seen.packets, seen.last_rtp, now);
        }
        let verdict = latch.on_packet(ev.from, ev.rtp, now, answered);
        if verdict == Verdict::Drop {
            // Refused before the answer: perhaps the answerer's media
            // overtaking its answer; decided when that comes.
            if answered || replay || !self.early.hold(&owner.call, ev.clone(), now) {
                self.totals.refused_sources += 1;
            }
        }
        let after = (latch.endpoint(), latch.source());
        if !latch.same_but_sequence(&was) {
            self.dirty.insert(owner.call.to_string());
        }
        if before != after {
            debug!(call_id = %owner.call, local = %ev.local, from = %ev.from, "latched");
            self.program(&owner.call, owner.mono, now);
        }
        if verdict == Verdict::Forward
            && let Some(call) = self.calls.get(&*owner.call)
            && let Some(mono) = call.monos.get(owner.mono)
            && let Some(peer) = mono.peer.and_then(|p| call.monos.get(p))
        {
            let routes = Self::routes(mono, peer, owner.media);
            if let Some((_, Some(route))) = routes.iter().find(|(l, _)| *l == Some(ev.local))
                && let Some(at) = at
            {
                self.backend.forward_at(at, route.out, route.dest, &ev.data);
            }
        }
        self.flush(clock);
    }
}
