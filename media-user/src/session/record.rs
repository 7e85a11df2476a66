//! A call's record: everything the next run of the daemon needs to adopt
//! the call, in a versioned compact binary form (serde and postcard:
//! varints, no field names), kept by the media plane where forwarding
//! state lives (`Backend::persist`: a pinned BPF map, memory).
//!
//! `[format: u8][header][body]`. The header says when the record was
//! written, on both clocks; the body is the call: its parties with their
//! tags, labels, flags, interface and local address, their media (kind,
//! protocol, the relay's port pair, rtcp-mux, direction, hold) and each
//! stream's latch (policy, advertised address, SIP source, learning or
//! latched, the candidate held and its rank, the last RTP seen, the
//! window), the digest and o= version of the SDP last sent to each party,
//! and the call's times (created, last signal, a pending delete). The
//! call-id is the record's key in the store, not part of it.
//!
//! Not in it, deliberately: the counters (the data plane's, in pinned
//! maps, survive on their own), the tick's schedule (`next_check`: every
//! adopted call is looked at within a few seconds), the SDP bodies (a
//! digest tells whether the next one differs), and the limits (timeouts,
//! `max-media`), which are the configuration of the run that adopts.
//!
//! Instants are CLOCK_MONOTONIC nanoseconds (see `clock.rs`), wall-clock
//! times Unix milliseconds. The body is a function of the call alone, so
//! its digest tells whether a call changed since its record was last
//! written (a retransmitted offer writes nothing).
//!
//! The format number moves with any change to these types (fields are
//! positional): a record of a format this build does not know is refused,
//! never guessed at. Format 2 is format 1's body followed by an extension
//! (each media's RTP clock rate, for jitter); this build reads both, so a
//! call kept by the build before is adopted (its clock rates unknown until
//! the next offer/answer names them).
//! Enumerations are coded as numbers here, not by their Rust names, so
//! that renaming one changes nothing.
//!
//! The engine's own record (totals, the calls that ended lately) has the
//! id [`ENGINE_ID`] and the same framing.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::{
    clock::Now,
    engine::{EndReason, Ended, Finished, Totals},
    latch::{Latch, Parts, Policy, Rank, State},
    model::{Call, Media, Mono, PartyFlags, SentSdp, digest},
};
use crate::sdp::Direction;

/// The record format this build writes.
pub const FORMAT: u8 = 3;
/// The formats it reads.
pub const READS: [u8; 3] = [1, 2, 3];

/// The store id of the engine's own record. A NUL byte: no SIP Call-ID can
/// hold one (RFC 3261 §25.1, `word` is printable characters), and `offer`
/// refuses call-ids that start with it.
pub const ENGINE_ID: &str = "\0engine";

/// How far ahead of the clock a record's write time may be and still be of
/// this boot: never, between processes (the clock is the system's), but an
/// engine may be handed a `Now` read a moment before the last write.
const REBOOT_SLACK: u64 = 1_000_000_000;

/// How many of the calls ended by a timeout the engine's record keeps: as
/// many as `list` reports (the SIP agent ends those calls with BYEs).
const ENDED_RECORDED: usize = super::engine::ENDED_LISTED;
/// How many bytes of final reports of ended calls it keeps at most (the
/// most recent first): the record stays well inside the store's 64 KiB.
const FINISHED_RECORDED_BYTES: usize = 32 * 1024;

/// Why a record cannot be adopted.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("the record is empty")]
    Empty,
    #[error(
        "record format {found} is not one this build reads (it reads {READS:?}): written by another version of media-relay"
    )]
    Format { found: u8 },
    #[error("the record does not decode ({source}): truncated or corrupted")]
    Malformed {
        #[source]
        source: postcard::Error,
    },
    #[error("the record has {extra} bytes past its end: corrupted")]
    Trailing { extra: usize },
    #[error("the record is inconsistent: {what}")]
    Invalid { what: &'static str },
}

#[derive(Serialize, Deserialize)]
struct Header {
    /// CLOCK_MONOTONIC when written.
    mono_ns: u64,
    /// Unix milliseconds when written.
    wall_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct CallRecord {
    created_ms: i64,
    created_ns: u64,
    last_signal_ms: i64,
    last_signal_ns: u64,
    answered: bool,
    delete_at_ns: Option<u64>,
    monos: Vec<MonoRecord>,
}

/// What format 2 adds after format 1's body.
#[derive(Default, Serialize, Deserialize)]
struct CallExtension {
    /// Per party, per media: the RTP clock rate (Hz) of its first payload
    /// format, if known.
    clock_rates: Vec<Vec<Option<u32>>>,
}

/// What format 3 adds after format 2's extension.
#[derive(Default, Serialize, Deserialize)]
struct SharingExtension {
    /// The call's pairs are shared (`port-sharing`).
    shared: bool,
    /// Per party, per media: the slot on its shared pair (see
    /// `Media::slot`). Its expected or latched source is the latch's.
    slots: Vec<Vec<Option<SocketAddr>>>,
    /// Per party, per media: the SSRCs its SDP announced.
    ssrcs: Vec<Vec<Vec<u32>>>,
}

#[derive(Serialize, Deserialize)]
struct MonoRecord {
    tag: String,
    label: Option<String>,
    created_ms: i64,
    iface: u32,
    local: IpAddr,
    peer: Option<u32>,
    /// (digest, o= version) of the SDP last sent to the party.
    sent_sdp: Option<(u64, u64)>,
    policy: u8,
    port_latching: bool,
    sdp_seen: bool,
    media: Vec<MediaRecord>,
}

#[derive(Serialize, Deserialize)]
struct MediaRecord {
    kind: String,
    protocol: String,
    port: Option<u16>,
    mux: bool,
    mux_in_sdp: bool,
    direction: u8,
    zero_address: bool,
    rtp: LatchRecord,
    rtcp: LatchRecord,
}

#[derive(Serialize, Deserialize)]
struct LatchRecord {
    policy: u8,
    advertised: Option<SocketAddr>,
    sip_source: Option<IpAddr>,
    state: StateRecord,
    window_ns: u64,
    forwarded_base: u64,
}

/// Variants are numbered by position: append only (or move [`FORMAT`]).
#[derive(Serialize, Deserialize)]
enum StateRecord {
    Learning {
        since_ns: Option<u64>,
        /// The candidate held and its rank.
        latched: Option<(SocketAddr, u8)>,
    },
    Latched {
        addr: SocketAddr,
        /// Last RTP (SSRC, sequence) seen from `addr`.
        rtp: Option<(u32, u16)>,
    },
}

#[derive(Serialize, Deserialize)]
struct EngineRecord {
    managed_sessions: u64,
    regular_terminated: u64,
    timeouts: u64,
    silent_timeouts: u64,
    offer_timeouts: u64,
    rejected_sessions: u64,
    port_exhaustions: u64,
    commands: Vec<(String, u64)>,
    errors: u64,
    command_errors: Vec<(String, u64)>,
    refused_sources: u64,
    ended_packets: u64,
    ended_bytes: u64,
    ended_errors: u64,
    /// Calls ended by a timeout, oldest first.
    ended: Vec<(String, u8, i64)>,
    /// Calls that are over, with their final reports, oldest first.
    finished: Vec<FinishedRecord>,
}

#[derive(Serialize, Deserialize)]
struct FinishedRecord {
    call_id: String,
    reason: u8,
    at_ms: i64,
    duration_ms: u64,
    report: Vec<u8>,
}

// ---- codes ---------------------------------------------------------------

fn policy_code(p: Policy) -> u8 {
    match p {
        Policy::Symmetric => 0,
        Policy::Asymmetric => 1,
        Policy::StrictSource => 2,
    }
}

fn policy_of(c: u8) -> Result<Policy, RecordError> {
    Ok(match c {
        0 => Policy::Symmetric,
        1 => Policy::Asymmetric,
        2 => Policy::StrictSource,
        _ => return Err(invalid("unknown latching policy")),
    })
}

fn rank_code(r: Rank) -> u8 {
    match r {
        Rank::Other => 0,
        Rank::SameIp => 1,
        Rank::Exact => 2,
    }
}

fn rank_of(c: u8) -> Result<Rank, RecordError> {
    Ok(match c {
        0 => Rank::Other,
        1 => Rank::SameIp,
        2 => Rank::Exact,
        _ => return Err(invalid("unknown candidate rank")),
    })
}

fn direction_code(d: Direction) -> u8 {
    match d {
        Direction::SendRecv => 0,
        Direction::SendOnly => 1,
        Direction::RecvOnly => 2,
        Direction::Inactive => 3,
    }
}

fn direction_of(c: u8) -> Result<Direction, RecordError> {
    Ok(match c {
        0 => Direction::SendRecv,
        1 => Direction::SendOnly,
        2 => Direction::RecvOnly,
        3 => Direction::Inactive,
        _ => return Err(invalid("unknown media direction")),
    })
}

/// Why a call ended, as the engine names it (`Finished::reason`).
const END_REASONS: [&str; 4] = ["deleted", "timeout", "silent timeout", "offer timeout"];

fn end_reason_code(r: EndReason) -> u8 {
    match r {
        EndReason::Timeout => 1,
        EndReason::SilentTimeout => 2,
        EndReason::OfferTimeout => 3,
    }
}

fn end_reason_of(c: u8) -> Option<EndReason> {
    match c {
        1 => Some(EndReason::Timeout),
        2 => Some(EndReason::SilentTimeout),
        3 => Some(EndReason::OfferTimeout),
        _ => None,
    }
}

/// ng command names (`Command::name`): the keys of the totals by command.
const COMMANDS: [&str; 7] = [
    "ping",
    "offer",
    "answer",
    "delete",
    "query",
    "list",
    "statistics",
];

fn invalid(what: &'static str) -> RecordError {
    RecordError::Invalid { what }
}

// ---- times ---------------------------------------------------------------

fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

fn wall_of(ms: i64) -> Result<SystemTime, RecordError> {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(d)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(d)
    }
    .ok_or(invalid("a wall-clock time out of range"))
}

/// How a record's monotonic times map onto this process's instants.
struct Times {
    now: Now,
    /// Added to every monotonic time of the record: zero but for a record
    /// written before a reboot.
    shift_ns: i128,
}

impl Times {
    /// A record written at `h`. CLOCK_MONOTONIC restarts at a reboot: a
    /// record whose write time is ahead of the clock (by more than
    /// [`REBOOT_SLACK`]) comes from an earlier boot (bpffs does not survive
    /// one, so this takes a record kept elsewhere or a corrupted one), and
    /// its times are moved so that its age is what the wall clock says (at
    /// least zero). Returns whether they were.
    fn of(h: &Header, now: Now) -> (Self, bool) {
        if h.mono_ns <= now.mono_ns.saturating_add(REBOOT_SLACK) {
            return (Self { now, shift_ns: 0 }, false);
        }
        let age_ms = (i128::from(unix_ms(now.wall)) - i128::from(h.wall_ms)).max(0);
        let written = i128::from(now.mono_ns) - age_ms * 1_000_000;
        let shift_ns = written - i128::from(h.mono_ns);
        (Self { now, shift_ns }, true)
    }

    fn instant(&self, ns: u64) -> Result<Instant, RecordError> {
        let ns = (i128::from(ns) + self.shift_ns).clamp(0, i128::from(u64::MAX));
        self.now
            .instant_of(ns as u64)
            .ok_or(invalid("a monotonic time out of range"))
    }
}

// ---- framing -------------------------------------------------------------

/// `[FORMAT][header][body][extension]`, and the digest of body and
/// extension.
fn frame<T: Serialize, E: Serialize, F: Serialize>(
    body: &T,
    extension: &E,
    sharing: &F,
    now: Now,
) -> Option<(Vec<u8>, u64)> {
    let header = Header {
        mono_ns: now.mono_ns,
        wall_ms: unix_ms(now.wall),
    };
    let out = postcard::to_extend(&header, vec![FORMAT]).ok()?;
    let start = out.len();
    let out = postcard::to_extend(body, out).ok()?;
    let out = postcard::to_extend(extension, out).ok()?;
    let out = postcard::to_extend(sharing, out).ok()?;
    let d = digest(out.get(start..).unwrap_or_default());
    Some((out, d))
}

/// The header, the body and the body's digest of a framed record, with
/// format 2's extension `E` (its default for format 1).
fn unframe<'a, T: Deserialize<'a>, E: Deserialize<'a> + Default, F: Deserialize<'a> + Default>(
    bytes: &'a [u8],
) -> Result<(Header, T, E, F, u64), RecordError> {
    let (&format, rest) = bytes.split_first().ok_or(RecordError::Empty)?;
    if !READS.contains(&format) {
        return Err(RecordError::Format { found: format });
    }
    let malformed = |source| RecordError::Malformed { source };
    let (header, body): (Header, _) = postcard::take_from_bytes(rest).map_err(malformed)?;
    let (value, mut extra) = postcard::take_from_bytes(body).map_err(malformed)?;
    let mut extension = E::default();
    if format >= 2 {
        (extension, extra) = postcard::take_from_bytes(extra).map_err(malformed)?;
    }
    let mut sharing = F::default();
    if format >= 3 {
        (sharing, extra) = postcard::take_from_bytes(extra).map_err(malformed)?;
    }
    if !extra.is_empty() {
        return Err(RecordError::Trailing { extra: extra.len() });
    }
    Ok((header, value, extension, sharing, digest(body)))
}

// ---- calls ---------------------------------------------------------------

/// The record of `call` written at `now`, and the digest of its body
/// (`Call::persisted`). `None` only if serialization failed, which these
/// types cannot make it do.
pub(super) fn encode_call(call: &Call, shared_pairs: bool, now: Now) -> Option<(Vec<u8>, u64)> {
    let Call {
        id: _,
        created,
        created_at,
        last_signal,
        last_signal_at,
        monos,
        answered,
        delete_at,
        next_check: _,
        seen: _,
        next_quality: _,
        watch: _,
        persisted: _,
    } = call;
    let latch = |l: &Latch| {
        let Parts {
            policy,
            advertised,
            sip_source,
            state,
            window,
            forwarded_base,
        } = l.parts();
        LatchRecord {
            policy: policy_code(policy),
            advertised,
            sip_source,
            state: match state {
                State::Learning { since, latched } => StateRecord::Learning {
                    since_ns: since.map(|t| now.ns_of(t)),
                    latched: latched.map(|(a, r)| (a, rank_code(r))),
                },
                State::Latched { addr, rtp } => StateRecord::Latched { addr, rtp },
            },
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            forwarded_base,
        }
    };
    let media = |m: &Media| {
        let Media {
            kind,
            protocol,
            port,
            mux,
            mux_in_sdp,
            direction,
            zero_address,
            rtp,
            rtcp,
            clock_rate: _,
            slot: _,
            ssrcs: _,
        } = m;
        MediaRecord {
            kind: kind.clone(),
            protocol: protocol.clone(),
            port: *port,
            mux: *mux,
            mux_in_sdp: *mux_in_sdp,
            direction: direction_code(*direction),
            zero_address: *zero_address,
            rtp: latch(rtp),
            rtcp: latch(rtcp),
        }
    };
    let mono = |m: &Mono| {
        let Mono {
            tag,
            label,
            created,
            iface,
            local,
            peer,
            media: medias,
            sent_sdp,
            flags: PartyFlags {
                policy,
                port_latching,
            },
            sdp_seen,
        } = m;
        MonoRecord {
            tag: tag.clone(),
            label: label.clone(),
            created_ms: unix_ms(*created),
            iface: *iface as u32,
            local: *local,
            peer: peer.map(|p| p as u32),
            sent_sdp: sent_sdp.map(|s| (s.digest, s.version)),
            policy: policy_code(*policy),
            port_latching: *port_latching,
            sdp_seen: *sdp_seen,
            media: medias.iter().map(media).collect(),
        }
    };
    let record = CallRecord {
        created_ms: unix_ms(*created),
        created_ns: now.ns_of(*created_at),
        last_signal_ms: unix_ms(*last_signal),
        last_signal_ns: now.ns_of(*last_signal_at),
        answered: *answered,
        delete_at_ns: delete_at.map(|t| now.ns_of(t)),
        monos: monos.iter().map(mono).collect(),
    };
    let extension = CallExtension {
        clock_rates: monos
            .iter()
            .map(|m| m.media.iter().map(|media| media.clock_rate).collect())
            .collect(),
    };
    let shared = monos
        .iter()
        .flat_map(|m| &m.media)
        .any(|m| m.slot.is_some());
    let sharing = SharingExtension {
        shared: shared || shared_pairs,
        slots: monos
            .iter()
            .map(|m| m.media.iter().map(|media| media.slot).collect())
            .collect(),
        ssrcs: monos
            .iter()
            .map(|m| m.media.iter().map(|media| media.ssrcs.clone()).collect())
            .collect(),
    };
    frame(&record, &extension, &sharing, now)
}

/// A call read back from its record.
#[derive(Debug)]
pub(super) struct Decoded {
    /// With `persisted` set to the record's digest and `next_check` now.
    pub(super) call: Call,
    /// The record came from an earlier boot: its times were moved (see
    /// `Times::of`).
    pub(super) rebased: bool,
    /// The call's pairs are shared (`port-sharing`): its slots are in
    /// its media (`Media::slot`).
    pub(super) shared: bool,
}

/// Call `id` as its record describes it, at `now`. Checks what would make
/// the model inconsistent (parties naming parties that do not exist, codes
/// this build does not know); ports and interfaces are the adopter's to
/// check against its own configuration.
/// The items of `items`, or its first error, in a vector of exactly their
/// number: collecting fallible items starts a vector at four (their number
/// is not known up front), and a party's one or two media took four
/// times 392 bytes each: a third of an adopted call's memory.
fn exact<T>(
    items: impl ExactSizeIterator<Item = Result<T, RecordError>>,
) -> Result<Vec<T>, RecordError> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(item?);
    }
    Ok(out)
}

pub(super) fn decode_call(id: &str, bytes: &[u8], now: Now) -> Result<Decoded, RecordError> {
    let (header, r, ext, sharing, body_digest): (
        _,
        CallRecord,
        CallExtension,
        SharingExtension,
        _,
    ) = unframe(bytes)?;
    let (times, rebased) = Times::of(&header, now);
    let n = r.monos.len();
    let latch = |l: LatchRecord| -> Result<Latch, RecordError> {
        let state = match l.state {
            StateRecord::Learning { since_ns, latched } => State::Learning {
                since: since_ns.map(|t| times.instant(t)).transpose()?,
                latched: latched
                    .map(|(a, r)| rank_of(r).map(|r| (a, r)))
                    .transpose()?,
            },
            StateRecord::Latched { addr, rtp } => State::Latched { addr, rtp },
        };
        Ok(Latch::from_parts(Parts {
            policy: policy_of(l.policy)?,
            advertised: l.advertised,
            sip_source: l.sip_source,
            state,
            window: Duration::from_nanos(l.window_ns),
            forwarded_base: l.forwarded_base,
        }))
    };
    let media = |m: MediaRecord| -> Result<Media, RecordError> {
        if m.port.is_some_and(|p| p % 2 == 1) {
            return Err(invalid("a port pair that does not start on an even port"));
        }
        Ok(Media {
            kind: m.kind,
            protocol: m.protocol,
            port: m.port,
            mux: m.mux,
            mux_in_sdp: m.mux_in_sdp,
            direction: direction_of(m.direction)?,
            zero_address: m.zero_address,
            rtp: latch(m.rtp)?,
            rtcp: latch(m.rtcp)?,
            clock_rate: None,
            slot: None,
            ssrcs: Vec::new(),
        })
    };
    let mut monos = Vec::with_capacity(n);
    for (i, m) in r.monos.into_iter().enumerate() {
        let peer = m.peer.map(|p| p as usize);
        if peer.is_some_and(|p| p >= n || p == i) {
            return Err(invalid("a party in dialogue with a party that is not"));
        }
        monos.push(Mono {
            tag: m.tag,
            label: m.label,
            created: wall_of(m.created_ms)?,
            iface: m.iface as usize,
            local: m.local,
            peer,
            media: exact(m.media.into_iter().map(media))?,
            sent_sdp: m
                .sent_sdp
                .map(|(digest, version)| SentSdp { digest, version }),
            flags: PartyFlags {
                policy: policy_of(m.policy)?,
                port_latching: m.port_latching,
            },
            sdp_seen: m.sdp_seen,
        });
    }
    for (mono, rates) in monos.iter_mut().zip(ext.clock_rates) {
        for (media, rate) in mono.media.iter_mut().zip(rates) {
            media.clock_rate = rate;
        }
    }
    for (mono, slots) in monos.iter_mut().zip(sharing.slots) {
        for (media, slot) in mono.media.iter_mut().zip(slots) {
            media.slot = slot;
        }
    }
    for (mono, ssrcs) in monos.iter_mut().zip(sharing.ssrcs) {
        for (media, ssrcs) in mono.media.iter_mut().zip(ssrcs) {
            media.ssrcs = ssrcs;
        }
    }
    let call = Call {
        id: id.to_owned(),
        created: wall_of(r.created_ms)?,
        created_at: times.instant(r.created_ns)?,
        last_signal: wall_of(r.last_signal_ms)?,
        last_signal_at: times.instant(r.last_signal_ns)?,
        monos,
        answered: r.answered,
        delete_at: r.delete_at_ns.map(|t| times.instant(t)).transpose()?,
        next_check: now.mono,
        seen: (0, 0, 0),
        next_quality: now.mono,
        watch: Vec::new(),
        persisted: Some(body_digest),
    };
    Ok(Decoded {
        call,
        rebased,
        shared: sharing.shared,
    })
}

/// A call record as the build before this one wrote it: format 1, the
/// same header and body without format 2's extension (tests of adoption
/// across an upgrade).
#[cfg(test)]
pub(super) fn as_format_1(bytes: &[u8]) -> Vec<u8> {
    let rest = &bytes[1..];
    let (_, body): (Header, _) = postcard::take_from_bytes(rest).expect("a header");
    let (_, ext): (CallRecord, _) = postcard::take_from_bytes(body).expect("a body");
    let end = rest.len() - ext.len();
    let mut out = vec![1];
    out.extend_from_slice(&rest[..end]);
    out
}

/// A call record as the build before this one wrote it: format 2, without
/// format 3's sharing extension (tests of adoption across an upgrade).
#[cfg(test)]
pub(super) fn as_format_2(bytes: &[u8]) -> Vec<u8> {
    let rest = &bytes[1..];
    let (_, body): (Header, _) = postcard::take_from_bytes(rest).expect("a header");
    let (_, ext): (CallRecord, _) = postcard::take_from_bytes(body).expect("a body");
    let (_, sharing): (CallExtension, _) = postcard::take_from_bytes(ext).expect("format 2's");
    let end = rest.len() - sharing.len();
    let mut out = vec![2];
    out.extend_from_slice(&rest[..end]);
    out
}

// ---- the engine's record -------------------------------------------------

/// The engine's record: its totals and the calls that ended lately (the
/// most recent [`ENDED_RECORDED`] timeouts, and final reports up to
/// [`FINISHED_RECORDED_BYTES`]).
pub(super) fn encode_engine(
    totals: &Totals,
    ended: &VecDeque<Ended>,
    finished: &VecDeque<Finished>,
    unattributed: u64,
    now: Now,
) -> Option<(Vec<u8>, u64)> {
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
    } = totals;
    let by_name = |m: &std::collections::BTreeMap<&'static str, u64>| {
        m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    };
    let mut budget = FINISHED_RECORDED_BYTES;
    let mut recent: Vec<FinishedRecord> = finished
        .iter()
        .rev()
        .take(ENDED_RECORDED)
        .take_while(|f| {
            budget = budget.saturating_sub(f.report.len() + f.call_id.len());
            budget > 0
        })
        .map(|f| FinishedRecord {
            call_id: f.call_id.clone(),
            reason: END_REASONS
                .iter()
                .position(|r| *r == f.reason)
                .unwrap_or_default() as u8,
            at_ms: unix_ms(f.at),
            duration_ms: u64::try_from(f.duration.as_millis()).unwrap_or(u64::MAX),
            report: f.report.to_vec(),
        })
        .collect();
    recent.reverse();
    let skip = ended.len().saturating_sub(ENDED_RECORDED);
    let record = EngineRecord {
        managed_sessions: *managed_sessions,
        regular_terminated: *regular_terminated,
        timeouts: *timeouts,
        silent_timeouts: *silent_timeouts,
        offer_timeouts: *offer_timeouts,
        rejected_sessions: *rejected_sessions,
        port_exhaustions: *port_exhaustions,
        commands: by_name(commands),
        errors: *errors,
        command_errors: by_name(command_errors),
        refused_sources: *refused_sources,
        ended_packets: *ended_packets,
        ended_bytes: *ended_bytes,
        ended_errors: *ended_errors,
        ended: ended
            .iter()
            .skip(skip)
            .map(|e| (e.call_id.clone(), end_reason_code(e.reason), unix_ms(e.at)))
            .collect(),
        finished: recent,
    };
    // Format 3's extension: port sharing's unattributed packets.
    frame(&record, &(), &unattributed, now)
}

/// What the engine's record holds, ready to merge into a new engine.
#[derive(Debug, Default)]
pub(super) struct EngineState {
    pub(super) totals: Totals,
    pub(super) ended: Vec<Ended>,
    pub(super) finished: Vec<Finished>,
    /// Port sharing's unattributed packets (0 before format 3).
    pub(super) unattributed: u64,
}

pub(super) fn decode_engine(bytes: &[u8]) -> Result<EngineState, RecordError> {
    let (_, r, (), unattributed, _): (Header, EngineRecord, (), u64, _) = unframe(bytes)?;
    let by_name = |v: Vec<(String, u64)>| {
        v.into_iter()
            .filter_map(|(k, n)| COMMANDS.iter().find(|c| **c == k).map(|c| (*c, n)))
            .collect()
    };
    let totals = Totals {
        managed_sessions: r.managed_sessions,
        regular_terminated: r.regular_terminated,
        timeouts: r.timeouts,
        silent_timeouts: r.silent_timeouts,
        offer_timeouts: r.offer_timeouts,
        rejected_sessions: r.rejected_sessions,
        port_exhaustions: r.port_exhaustions,
        commands: by_name(r.commands),
        errors: r.errors,
        command_errors: by_name(r.command_errors),
        refused_sources: r.refused_sources,
        ended_packets: r.ended_packets,
        ended_bytes: r.ended_bytes,
        ended_errors: r.ended_errors,
    };
    let mut ended = Vec::with_capacity(r.ended.len());
    for (call_id, reason, at_ms) in r.ended {
        ended.push(Ended {
            call_id,
            reason: end_reason_of(reason).ok_or(invalid("unknown end reason"))?,
            at: wall_of(at_ms)?,
        });
    }
    let mut finished = Vec::with_capacity(r.finished.len());
    for f in r.finished {
        finished.push(Finished {
            call_id: f.call_id,
            reason: END_REASONS
                .get(usize::from(f.reason))
                .copied()
                .ok_or(invalid("unknown end reason"))?,
            at: wall_of(f.at_ms)?,
            duration: Duration::from_millis(f.duration_ms),
            report: f.report.into_boxed_slice(),
        });
    }
    Ok(EngineState {
        totals,
        ended,
        finished,
        unattributed,
    })
}
