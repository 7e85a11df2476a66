//! The session engine: ng commands in, replies and data-plane routes out.
//!
//! It is the single writer of the media plane (through [`Backend`]): one
//! task owns it, ng requests and latching events reach it in turn, so no
//! two changes to a call's routes ever interleave.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant, SystemTime},
};

use tracing::{debug, info, warn};

use super::{
    backend::{Backend, Counters, Route},
    latch::{Latch, Policy, Verdict},
    model::{Call, Media, Mono, Owner, PartyFlags},
    ports::PortAllocator,
};
use crate::{
    interfaces::Interfaces,
    ng::{Command, Delete, List, OfferAnswer, Query, Reply, Value},
    sdp::{self, MediaRewrite, Rewrite, RtcpOut, SdpInfo},
};

/// Session timing, from configuration.
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
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            silent_timeout: Duration::from_secs(3600),
            offer_timeout: Duration::from_secs(3600),
            delete_delay: Duration::ZERO,
            learning_window: Duration::from_secs(3),
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
struct Finished {
    call_id: String,
    reason: &'static str,
    at: SystemTime,
    duration: Duration,
    /// The final `query` dictionary, bencoded (a few hundred bytes, where
    /// the dictionary itself takes kilobytes).
    report: Box<[u8]>,
}

/// How many ended calls are remembered.
const ENDED_KEPT: usize = 1000;
/// How many of them `list` reports at most.
const ENDED_LISTED: usize = 100;
/// How often the tick reads the counters of a call that is learning.
const LEARNING_CHECK: Duration = Duration::from_secs(1);
/// How often it reads those of any other call (timeouts).
const TIMEOUT_CHECK: Duration = Duration::from_secs(5);
/// How often packet/byte/error rates are sampled for `statistics`.
const RATE_SAMPLE: Duration = Duration::from_secs(10);

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

/// A packet that reached the daemon and needs a latching decision.
#[derive(Clone, Debug)]
pub struct PacketEvent {
    pub local: SocketAddr,
    pub from: SocketAddr,
    pub rtp: Option<(u32, u16)>,
    pub data: Vec<u8>,
}

pub struct Engine<B: Backend> {
    cfg: SessionConfig,
    backend: B,
    interfaces: Interfaces,
    ports: PortAllocator,
    calls: BTreeMap<String, Call>,
    owners: HashMap<SocketAddr, Owner>,
    totals: Totals,
    ended: VecDeque<Ended>,
    finished: VecDeque<Finished>,
    started: Instant,
    /// For rates: packets/bytes/errors over all live streams at the last tick.
    last_sample: (Instant, u64, u64, u64),
    rates: (f64, f64, f64),
}

type Failure = String;

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn dict(pairs: Vec<(&str, Value)>) -> Value {
    Value::Dict(
        pairs
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

fn text(s: impl AsRef<str>) -> Value {
    Value::Bytes(s.as_ref().as_bytes().to_vec())
}

fn int(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

fn endpoint(a: SocketAddr) -> Value {
    dict(vec![
        ("family", text(if a.is_ipv4() { "IPv4" } else { "IPv6" })),
        ("address", text(a.ip().to_string())),
        ("port", int(u64::from(a.port()))),
    ])
}

fn ok(pairs: Vec<(&str, Value)>) -> Reply {
    Reply::Ok(
        pairs
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

impl<B: Backend> Engine<B> {
    pub fn new(
        cfg: SessionConfig,
        backend: B,
        interfaces: Interfaces,
        ports: PortAllocator,
    ) -> Self {
        let now = Instant::now();
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
        }
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
    pub fn handle(&mut self, cmd: Command, now: Instant) -> Reply {
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
            Command::Offer(o) => self.offer(&o, now),
            Command::Answer(a) => self.answer(&a, now),
            Command::Delete(d) => self.delete(&d, now),
            Command::Query(q) => self.query(&q),
            Command::List(l) => Ok(self.list(&l)),
            Command::Statistics => Ok(self.statistics()),
        };
        match result {
            Ok(reply) => reply,
            Err(reason) => {
                self.totals.errors += 1;
                *self.totals.command_errors.entry(name).or_default() += 1;
                debug!(command = name, %reason, "ng command failed");
                Reply::Error(reason)
            }
        }
    }

    // ---- offer / answer ------------------------------------------------

    fn party_flags(cmd: &OfferAnswer) -> PartyFlags {
        let policy = if cmd.flags.asymmetric {
            Policy::Asymmetric
        } else if cmd.flags.strict_source {
            Policy::StrictSource
        } else {
            Policy::Symmetric
        };
        PartyFlags {
            policy,
            port_latching: cmd.flags.port_latching,
        }
    }

    /// The address media of this party should be sent to, before latching:
    /// `media address`, else the SIP source with `SIP source address`, else
    /// the SDP's (`trust address`, the default).
    fn party_address(cmd: &OfferAnswer, sdp_addr: Option<IpAddr>) -> Option<IpAddr> {
        if let Some(a) = cmd.media_address {
            return Some(a);
        }
        if cmd.flags.sip_source_address && !cmd.flags.trust_address {
            return cmd.received_from.or(sdp_addr);
        }
        sdp_addr
    }

    fn choose_iface(
        &self,
        explicit: Option<&str>,
        toward: Option<IpAddr>,
    ) -> Result<usize, Failure> {
        if let Some(name) = explicit {
            return self
                .interfaces
                .by_name(name)
                .ok_or_else(|| format!("Unknown interface '{name}'"));
        }
        if self.interfaces.len() > 1
            && let Some(peer) = toward.filter(|a| !a.is_unspecified())
            && let Some(src) = self.backend.route_source(peer)
            && let Some(i) = self.interfaces.by_local(src)
        {
            return Ok(i);
        }
        Ok(0)
    }

    /// Local address on interface `iface`, preferring family `v6`.
    fn local_on(&self, iface: usize, v6: bool) -> Result<IpAddr, Failure> {
        let i = self.interfaces.get(iface);
        i.local(v6)
            .or_else(|| i.local(!v6))
            .ok_or_else(|| format!("Interface '{}' has no usable address", i.name))
    }

    fn offer(&mut self, cmd: &OfferAnswer, now: Instant) -> Result<Reply, Failure> {
        if self.interfaces.is_empty() {
            return Err("No media interfaces configured".into());
        }
        let info = sdp::inspect(&cmd.sdp).map_err(|e| format!("Failed to parse SDP: {e}"))?;
        let wall = SystemTime::now();
        let is_new = !self.calls.contains_key(&cmd.call_id);
        if is_new {
            self.calls.insert(
                cmd.call_id.clone(),
                Call {
                    id: cmd.call_id.clone(),
                    created: wall,
                    created_at: now,
                    last_signal: wall,
                    last_signal_at: now,
                    monos: Vec::new(),
                    answered: false,
                    delete_at: None,
                    next_check: now,
                },
            );
        }
        let result = self.offer_in_call(cmd, &info, now, wall);
        if result.is_err() && is_new {
            // Nothing of a refused first offer may remain.
            self.drop_call(&cmd.call_id, now, None);
            self.totals.rejected_sessions += 1;
        } else if is_new {
            self.totals.managed_sessions += 1;
            info!(call_id = %cmd.call_id, from_tag = %cmd.from_tag, "call created");
        }
        result
    }

    fn offer_in_call(
        &mut self,
        cmd: &OfferAnswer,
        info: &SdpInfo,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Reply, Failure> {
        let first_addr = info
            .media
            .iter()
            .find_map(|m| m.connection)
            .or(info.session_connection);
        let toward = Self::party_address(cmd, first_addr);
        let v6 = toward.is_some_and(|a| a.is_ipv6());
        let from_explicit = cmd
            .from_interface
            .as_deref()
            .or(cmd.direction.first().map(String::as_str));
        let to_explicit = cmd
            .to_interface
            .as_deref()
            .or(cmd.direction.get(1).map(String::as_str));

        let call = self.calls.get(&cmd.call_id).ok_or("call vanished")?;
        // The offerer: known by its tag, or new.
        let x = call.monos.iter().position(|m| m.tag == cmd.from_tag);
        // The answerer: named by to-tag, else the offerer's peer, else new.
        let y = cmd
            .to_tag
            .as_ref()
            .and_then(|t| call.monos.iter().position(|m| &m.tag == t))
            .or_else(|| x.and_then(|x| call.monos[x].peer));
        let x_iface = match x {
            Some(x) => call.monos[x].iface,
            None => self.choose_iface(from_explicit, toward)?,
        };
        let y_iface = match (y, to_explicit) {
            (Some(y), None) => call.monos[y].iface,
            (_, Some(name)) => self.choose_iface(Some(name), None)?,
            (None, None) if self.interfaces.len() == 2 => 1 - x_iface,
            (None, None) => x_iface,
        };
        let x_local = match x {
            Some(x) => call.monos[x].local,
            None => self.local_on(x_iface, v6)?,
        };
        let y_local = match y {
            Some(y) => call.monos[y].local,
            None => self.local_on(y_iface, x_local.is_ipv6())?,
        };
        let flags = Self::party_flags(cmd);

        let call = self.calls.get_mut(&cmd.call_id).ok_or("call vanished")?;
        call.last_signal = wall;
        call.last_signal_at = now;
        let x = match x {
            Some(x) => x,
            None => {
                call.monos.push(Mono {
                    tag: cmd.from_tag.clone(),
                    label: cmd.label.clone(),
                    created: wall,
                    iface: x_iface,
                    local: x_local,
                    peer: None,
                    media: Vec::new(),
                    sent_sdp: None,
                    flags,
                });
                call.monos.len() - 1
            }
        };
        let y = match y {
            Some(y) => y,
            None => {
                call.monos.push(Mono {
                    tag: cmd.to_tag.clone().unwrap_or_default(),
                    label: None,
                    created: wall,
                    iface: y_iface,
                    local: y_local,
                    peer: Some(x),
                    media: Vec::new(),
                    sent_sdp: None,
                    flags: PartyFlags::default(),
                });
                call.monos.len() - 1
            }
        };
        call.monos[x].peer = Some(y);
        call.monos[y].peer = Some(x);
        call.monos[x].flags = flags;
        if cmd.label.is_some() {
            call.monos[x].label.clone_from(&cmd.label);
        }

        // The offerer's media, as its SDP describes them.
        self.update_party(&cmd.call_id, x, cmd, info, now)?;
        // The answerer's side mirrors the offer's m= lines (ports to offer).
        self.mirror_media(&cmd.call_id, x, y, now)?;

        // rtcp-mux towards the answerer: pass the offerer's choice through,
        // unless asked to offer it or to demultiplex.
        let call = self.calls.get_mut(&cmd.call_id).ok_or("call vanished")?;
        for i in 0..call.monos[x].media.len() {
            let offered = call.monos[x].media[i].mux_in_sdp;
            let to_y = (offered && !cmd.rtcp_mux.demux) || cmd.rtcp_mux.offer;
            call.monos[y].media[i].mux_in_sdp = to_y;
        }
        let sdp = self.render(&cmd.call_id, y, &cmd.sdp, info, cmd, false)?;
        self.program(&cmd.call_id, x, now);
        Ok(ok(vec![("sdp", Value::Bytes(sdp))]))
    }

    fn answer(&mut self, cmd: &OfferAnswer, now: Instant) -> Result<Reply, Failure> {
        let to_tag = cmd.to_tag.as_ref().ok_or("Missing to-tag")?;
        let info = sdp::inspect(&cmd.sdp).map_err(|e| format!("Failed to parse SDP: {e}"))?;
        let wall = SystemTime::now();
        let call = self.calls.get_mut(&cmd.call_id).ok_or("Unknown call-id")?;
        let x = call
            .monos
            .iter()
            .position(|m| m.tag == cmd.from_tag)
            .ok_or("Unknown from-tag")?;
        let y = call
            .monos
            .iter()
            .position(|m| &m.tag == to_tag)
            .or(call.monos[x].peer)
            .ok_or("No offer to answer")?;
        if call.monos[y].media.len() != info.media.len() {
            return Err(format!(
                "Answer has {} media sections, the offer had {}",
                info.media.len(),
                call.monos[y].media.len()
            ));
        }
        // A fork answering (a new to-tag) takes over the answerer's side.
        if call.monos[y].tag != *to_tag {
            if !call.monos[y].tag.is_empty() {
                debug!(call_id = %cmd.call_id, old = %call.monos[y].tag, new = %to_tag, "answer from another branch");
            }
            call.monos[y].tag.clone_from(to_tag);
        }
        call.monos[y].peer = Some(x);
        call.monos[x].peer = Some(y);
        call.monos[y].flags = Self::party_flags(cmd);
        if cmd.label.is_some() {
            call.monos[y].label.clone_from(&cmd.label);
        }
        call.last_signal = wall;
        call.last_signal_at = now;
        call.answered = true;

        self.update_party(&cmd.call_id, y, cmd, &info, now)?;
        // rtcp-mux towards the offerer: accepted if the answerer accepted
        // it (or we were asked to accept it), unless rejected.
        let call = self.calls.get_mut(&cmd.call_id).ok_or("call vanished")?;
        for i in 0..call.monos[x].media.len() {
            let y_mux = call.monos[y].media[i].mux_in_sdp;
            let x_offered = call.monos[x].media[i].mux_in_sdp;
            let to_x = x_offered && (y_mux || cmd.rtcp_mux.accept) && !cmd.rtcp_mux.reject;
            call.monos[x].media[i].mux = to_x;
            call.monos[y].media[i].mux = y_mux;
        }
        let sdp = self.render(&cmd.call_id, x, &cmd.sdp, &info, cmd, true)?;
        self.program(&cmd.call_id, x, now);
        Ok(ok(vec![("sdp", Value::Bytes(sdp))]))
    }

    /// Lease a port pair on `local`.
    fn lease(&mut self, local: IpAddr, now: Instant) -> Result<u16, Failure> {
        let backend = &mut self.backend;
        match self
            .ports
            .allocate(now, |p| backend.open_pair(local, p).is_ok())
        {
            Some(p) => Ok(p),
            None => {
                self.totals.port_exhaustions += 1;
                warn!(%local, in_use = self.ports.in_use(), "port range exhausted");
                Err("Ran out of ports".into())
            }
        }
    }

    fn own(&mut self, call: &str, mono: usize, media: usize, local: IpAddr, port: u16) {
        for component in 0..2u8 {
            self.owners.insert(
                SocketAddr::new(local, port + u16::from(component)),
                Owner {
                    call: call.to_owned(),
                    mono,
                    media,
                    component,
                },
            );
        }
    }

    fn unlease(&mut self, local: IpAddr, port: u16, now: Instant) {
        self.backend.close_pair(local, port);
        self.owners.remove(&SocketAddr::new(local, port));
        self.owners.remove(&SocketAddr::new(local, port + 1));
        self.ports.release(port, now);
    }

    /// Take a party's SDP into its media: advertised endpoints, mux,
    /// direction; lease pairs for new media, release those of rejected ones.
    fn update_party(
        &mut self,
        call_id: &str,
        who: usize,
        cmd: &OfferAnswer,
        info: &SdpInfo,
        now: Instant,
    ) -> Result<(), Failure> {
        let window = self.cfg.learning_window;
        let (local, flags, existing) = {
            let call = self.calls.get(call_id).ok_or("call vanished")?;
            let m = &call.monos[who];
            (m.local, m.flags, m.media.len())
        };
        if existing > info.media.len() {
            return Err(format!(
                "SDP has {} media sections, {} were negotiated before",
                info.media.len(),
                existing
            ));
        }
        for (i, mi) in info.media.iter().enumerate() {
            let addr = Self::party_address(cmd, mi.connection);
            let zero = mi.connection.is_some_and(|a| a.is_unspecified());
            let rtp_adv = addr
                .filter(|a| !a.is_unspecified() && mi.port != 0)
                .map(|a| SocketAddr::new(a, mi.port));
            let rtcp_adv = rtp_adv.map(|rtp| {
                if mi.rtcp_mux {
                    rtp
                } else if let Some(r) = mi.rtcp {
                    SocketAddr::new(r.address.unwrap_or(rtp.ip()), r.port)
                } else {
                    SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1))
                }
            });
            let need_port = mi.port != 0;
            let has_port = self
                .calls
                .get(call_id)
                .and_then(|c| c.monos[who].media.get(i))
                .and_then(|m| m.port);
            let port = match (need_port, has_port) {
                (true, Some(p)) => Some(p),
                (true, None) => {
                    let p = self.lease(local, now)?;
                    self.own(call_id, who, i, local, p);
                    Some(p)
                }
                (false, Some(p)) => {
                    self.unlease(local, p, now);
                    None
                }
                (false, None) => None,
            };
            let call = self.calls.get_mut(call_id).ok_or("call vanished")?;
            let media = &mut call.monos[who].media;
            if let Some(m) = media.get_mut(i) {
                m.kind.clone_from(&mi.kind);
                m.protocol.clone_from(&mi.protocol);
                m.port = port;
                m.mux_in_sdp = mi.rtcp_mux;
                m.direction = mi.direction;
                m.zero_address = zero;
                if m.rtp.policy() != flags.policy {
                    m.rtp = Latch::new(flags.policy, rtp_adv, window);
                    m.rtcp = Latch::new(flags.policy, rtcp_adv, window);
                } else {
                    m.rtp.readvertise(rtp_adv, flags.port_latching);
                    m.rtcp.readvertise(rtcp_adv, flags.port_latching);
                }
            } else {
                media.push(Media {
                    kind: mi.kind.clone(),
                    protocol: mi.protocol.clone(),
                    port,
                    mux: false,
                    mux_in_sdp: mi.rtcp_mux,
                    direction: mi.direction,
                    zero_address: zero,
                    rtp: Latch::new(flags.policy, rtp_adv, window),
                    rtcp: Latch::new(flags.policy, rtcp_adv, window),
                });
            }
        }
        Ok(())
    }

    /// Give the answerer's side one media per offered m= line, leasing the
    /// ports the offer will carry (rejected lines get none).
    fn mirror_media(
        &mut self,
        call_id: &str,
        x: usize,
        y: usize,
        now: Instant,
    ) -> Result<(), Failure> {
        let window = self.cfg.learning_window;
        let (wanted, y_local) = {
            let call = self.calls.get(call_id).ok_or("call vanished")?;
            let wanted: Vec<(bool, String, String)> = call.monos[x]
                .media
                .iter()
                .map(|m| (m.rejected(), m.kind.clone(), m.protocol.clone()))
                .collect();
            (wanted, call.monos[y].local)
        };
        for (i, (rejected, kind, protocol)) in wanted.into_iter().enumerate() {
            let has = self
                .calls
                .get(call_id)
                .and_then(|c| c.monos[y].media.get(i))
                .map(|m| m.port);
            let port = match (rejected, has.flatten()) {
                (false, Some(p)) => Some(p),
                (false, None) => {
                    let p = self.lease(y_local, now)?;
                    self.own(call_id, y, i, y_local, p);
                    Some(p)
                }
                (true, Some(p)) => {
                    self.unlease(y_local, p, now);
                    None
                }
                (true, None) => None,
            };
            let call = self.calls.get_mut(call_id).ok_or("call vanished")?;
            let policy = call.monos[y].flags.policy;
            let media = &mut call.monos[y].media;
            if let Some(m) = media.get_mut(i) {
                m.port = port;
                m.kind = kind;
                m.protocol = protocol;
            } else {
                media.push(Media {
                    kind,
                    protocol,
                    port,
                    mux: false,
                    mux_in_sdp: false,
                    direction: sdp::Direction::SendRecv,
                    zero_address: false,
                    rtp: Latch::new(policy, None, window),
                    rtcp: Latch::new(policy, None, window),
                });
            }
        }
        Ok(())
    }

    /// The SDP to send to party `to`: the other party's SDP with `to`'s
    /// relay ports and address, and an o= version that moves only when the
    /// body sent to `to` changes (RFC 3264 §8).
    fn render(
        &mut self,
        call_id: &str,
        to: usize,
        original: &[u8],
        info: &SdpInfo,
        cmd: &OfferAnswer,
        is_answer: bool,
    ) -> Result<Vec<u8>, Failure> {
        let call = self.calls.get(call_id).ok_or("call vanished")?;
        let target = &call.monos[to];
        let from = &call.monos[target.peer.ok_or("no peer")?];
        let iface = self.interfaces.get(target.iface);
        let advertised = iface.advertised(target.local);
        let mut media = Vec::with_capacity(info.media.len());
        for (i, mi) in info.media.iter().enumerate() {
            let m = &target.media[i];
            let src = &from.media[i];
            let Some(port) = m.port else {
                // Rejected: pass the line through as it was.
                media.push(MediaRewrite {
                    port: 0,
                    address: advertised,
                    rtcp: mi.rtcp.map_or(RtcpOut::Omit, |r| match r.address {
                        Some(a) => RtcpOut::Full(r.port, a),
                        None => RtcpOut::Port(r.port),
                    }),
                    rtcp_mux: mi.rtcp_mux,
                });
                continue;
            };
            // Hold by c=0.0.0.0 passes through as such.
            let address = if src.zero_address {
                match advertised {
                    IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                }
            } else {
                advertised
            };
            // An offer carries what we offer (`mux_in_sdp`), an answer what
            // was negotiated (`mux`).
            let mux = if is_answer { m.mux } else { m.mux_in_sdp };
            let rtcp_port = if mux { port } else { port + 1 };
            let rtcp = if cmd.flags.no_rtcp_attribute {
                RtcpOut::Omit
            } else if cmd.flags.full_rtcp_attribute {
                RtcpOut::Full(rtcp_port, address)
            } else {
                RtcpOut::Port(rtcp_port)
            };
            media.push(MediaRewrite {
                port,
                address,
                rtcp,
                rtcp_mux: mux,
            });
        }
        let mut rw = Rewrite {
            media,
            session_address: advertised,
            replace_origin: cmd.replace.origin,
            origin_version: None,
            strip_ice: cmd.ice == crate::ng::Ice::Remove,
        };
        let body = match &target.sent_sdp {
            None => {
                let body = sdp::rewrite(original, &rw)
                    .map_err(|e| format!("Failed to rewrite SDP: {e}"))?;
                (body, info.origin_version)
            }
            Some((last, v)) => {
                rw.origin_version = Some(*v);
                let same = sdp::rewrite(original, &rw)
                    .map_err(|e| format!("Failed to rewrite SDP: {e}"))?;
                if &same == last {
                    (same, *v)
                } else {
                    rw.origin_version = Some(v.wrapping_add(1));
                    let bumped = sdp::rewrite(original, &rw)
                        .map_err(|e| format!("Failed to rewrite SDP: {e}"))?;
                    (bumped, v.wrapping_add(1))
                }
            }
        };
        let call = self.calls.get_mut(call_id).ok_or("call vanished")?;
        call.monos[to].sent_sdp = Some(body.clone());
        Ok(body.0)
    }

    /// The routes of one direction: packets `a` sends to the relay go to
    /// `b`. `None` entries remove a route.
    fn routes(a: &Mono, b: &Mono, i: usize) -> [(Option<SocketAddr>, Option<Route>); 2] {
        let (Some(ma), Some(mb)) = (a.media.get(i), b.media.get(i)) else {
            return [(None, None), (None, None)];
        };
        let (Some((a_rtp, a_rtcp)), Some((b_rtp, b_rtcp))) =
            (ma.locals(a.local), mb.locals(b.local))
        else {
            return [(None, None), (None, None)];
        };
        let b_out_rtcp = if mb.mux { b_rtp } else { b_rtcp };
        let dest_rtp = mb.rtp.endpoint();
        let dest_rtcp = if mb.mux { dest_rtp } else { mb.rtcp.endpoint() };
        let rtp = dest_rtp.map(|dest| Route {
            out: b_rtp,
            dest,
            source: ma.rtp.source(),
            rtp: true,
            demux_rtcp: (ma.mux && !mb.mux)
                .then_some(dest_rtcp.map(|d| (b_out_rtcp, d)))
                .flatten(),
        });
        let rtcp = dest_rtcp.map(|dest| Route {
            out: b_out_rtcp,
            dest,
            source: ma.rtcp.source(),
            rtp: false,
            demux_rtcp: None,
        });
        [(Some(a_rtp), rtp), (Some(a_rtcp), rtcp)]
    }

    /// (Re)program every route of the dialogue of party `x`.
    fn program(&mut self, call_id: &str, x: usize, _now: Instant) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        let Some(y) = call.monos[x].peer else {
            return;
        };
        let n = call.monos[x].media.len().max(call.monos[y].media.len());
        let mut todo = Vec::new();
        for i in 0..n {
            for (a, b) in [(x, y), (y, x)] {
                for (local, route) in Self::routes(&call.monos[a], &call.monos[b], i) {
                    if let Some(local) = local {
                        todo.push((local, route));
                    }
                }
            }
        }
        for (local, route) in todo {
            debug!(
                %call_id,
                %local,
                dest = ?route.as_ref().map(|r| r.dest),
                source = ?route.as_ref().map(|r| &r.source),
                "route"
            );
            self.backend.set_route(local, route);
        }
    }

    // ---- delete / timeouts ----------------------------------------------

    fn delete(&mut self, cmd: &Delete, now: Instant) -> Result<Reply, Failure> {
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
            self.drop_call(&cmd.call_id, now, Some("deleted"));
        } else if let Some(call) = self.calls.get_mut(&cmd.call_id) {
            call.delete_at = Some(now + delay);
        }
        self.totals.regular_terminated += 1;
        info!(call_id = %cmd.call_id, delay_s = delay.as_secs(), "call deleted");
        Ok(Reply::Ok(report.unwrap_or_default()))
    }

    /// Remove a call and free everything it holds; with an end reason, a
    /// call that was (not a refused offer) is remembered with its final
    /// report.
    fn drop_call(&mut self, call_id: &str, now: Instant, ended: Option<&'static str>) {
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
                at: SystemTime::now(),
                duration: now.saturating_duration_since(call.created_at),
                report: Value::Dict(report)
                    .encode()
                    .unwrap_or_default()
                    .into_boxed_slice(),
            });
        }
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        for mono in &call.monos {
            for m in &mono.media {
                if let Some(p) = m.port {
                    for local in [
                        SocketAddr::new(mono.local, p),
                        SocketAddr::new(mono.local, p + 1),
                    ] {
                        let c = self.backend.counters(local);
                        self.totals.ended_packets += c.packets;
                        self.totals.ended_bytes += c.bytes;
                        self.totals.ended_errors += c.errors;
                    }
                    self.unlease(mono.local, p, now);
                }
            }
        }
    }

    /// Periodic work: learning windows, timeouts, delayed deletes, rates.
    pub fn tick(&mut self, now: Instant) {
        let ids: Vec<String> = self.calls.keys().cloned().collect();
        let mut ended = Vec::new();
        for id in ids {
            if let Some(reason) = self.tick_call(&id, now) {
                ended.push((id, reason));
            }
        }
        for (id, reason) in ended {
            match reason {
                None => self.drop_call(&id, now, Some("deleted")),
                Some(reason) => {
                    match reason {
                        EndReason::Timeout => self.totals.timeouts += 1,
                        EndReason::SilentTimeout => self.totals.silent_timeouts += 1,
                        EndReason::OfferTimeout => self.totals.offer_timeouts += 1,
                    }
                    warn!(call_id = %id, reason = reason.name(), "call ended by the relay");
                    self.drop_call(&id, now, Some(reason.name()));
                    if self.ended.len() == ENDED_KEPT {
                        self.ended.pop_front();
                    }
                    self.ended.push_back(Ended {
                        call_id: id,
                        reason,
                        at: SystemTime::now(),
                    });
                }
            }
        }
        self.sample_rates(now);
    }

    /// Returns `Some(None)` for a due delayed delete, `Some(Some(reason))`
    /// for a timeout.
    #[expect(
        clippy::option_option,
        reason = "delete vs. timeout, both ending the call"
    )]
    fn tick_call(&mut self, id: &str, now: Instant) -> Option<Option<EndReason>> {
        let call = self.calls.get_mut(id)?;
        if call.delete_at.is_some_and(|t| now >= t) {
            return Some(None);
        }
        // Reading counters costs map lookups: calls still learning are
        // looked at every second, the others every few seconds (timeouts
        // are counted in seconds anyway).
        if now < call.next_check {
            return None;
        }
        call.next_check = now
            + if call.learning() {
                LEARNING_CHECK
            } else {
                TIMEOUT_CHECK
            };
        let call = self.calls.get(id)?;
        // Wall time at `now` (the caller's clock may run ahead in tests).
        let wall_now = SystemTime::now() + now.saturating_duration_since(Instant::now());
        let mut last_media: Option<SystemTime> = None;
        let mut changed = Vec::new();
        let mut all_held = true;
        let mono_count = call.monos.len();
        // Learning windows and XDP-seen traffic.
        let mut counters: Vec<(usize, usize, [Counters; 2])> = Vec::new();
        for (mi, mono) in call.monos.iter().enumerate() {
            for (i, m) in mono.media.iter().enumerate() {
                if !m.held() && !m.rejected() {
                    all_held = false;
                }
                if let Some((rtp, rtcp)) = m.locals(mono.local) {
                    counters.push((
                        mi,
                        i,
                        [self.backend.counters(rtp), self.backend.counters(rtcp)],
                    ));
                }
            }
        }
        let call = self.calls.get_mut(id)?;
        for (mi, i, [crtp, crtcp]) in counters {
            for c in [&crtp, &crtcp] {
                if let Some(t) = c.last_packet {
                    last_media = Some(last_media.map_or(t, |l| l.max(t)));
                }
            }
            let m = &mut call.monos[mi].media[i];
            for (latch, c) in [(&mut m.rtp, &crtp), (&mut m.rtcp, &crtcp)] {
                if c.kernel_packets > 0 {
                    latch.note_forwarded(now);
                }
                if latch.tick(now) {
                    if let Some((ssrc, seq)) = c.last_rtp {
                        latch.note_rtp(ssrc, seq);
                    }
                    changed.push(mi);
                }
            }
        }
        changed.sort_unstable();
        changed.dedup();
        for mi in changed {
            if mi < mono_count {
                self.program(id, mi, now);
            }
        }
        let call = self.calls.get(id)?;
        if !call.answered {
            if now.duration_since(call.last_signal_at) >= self.cfg.offer_timeout {
                return Some(Some(EndReason::OfferTimeout));
            }
            return None;
        }
        let since_signal = now.duration_since(call.last_signal_at);
        let since_media = last_media
            .map_or(since_signal, |t| {
                wall_now.duration_since(t).unwrap_or(Duration::ZERO)
            })
            .min(since_signal);
        let (limit, reason) = if all_held {
            (self.cfg.silent_timeout, EndReason::SilentTimeout)
        } else {
            (self.cfg.timeout, EndReason::Timeout)
        };
        tracing::trace!(
            call_id = %id,
            since_media_ms = since_media.as_millis() as u64,
            since_signal_ms = since_signal.as_millis() as u64,
            media_seen = last_media.is_some(),
            all_held,
            limit_s = limit.as_secs(),
            "timeout check"
        );
        (since_media >= limit).then_some(Some(reason))
    }

    fn sample_rates(&mut self, now: Instant) {
        let (t0, p0, b0, e0) = self.last_sample;
        if now.duration_since(t0) < RATE_SAMPLE {
            return;
        }
        // Ended calls included, so rates do not dip when calls end.
        let (mut p, mut b, mut e) = (
            self.totals.ended_packets,
            self.totals.ended_bytes,
            self.totals.ended_errors,
        );
        for local in self.owners.keys() {
            let c = self.backend.counters(*local);
            p += c.packets;
            b += c.bytes;
            e += c.errors;
        }
        let dt = now.duration_since(t0).as_secs_f64();
        if dt > 0.0 {
            self.rates = (
                p.saturating_sub(p0) as f64 / dt,
                b.saturating_sub(b0) as f64 / dt,
                e.saturating_sub(e0) as f64 / dt,
            );
            self.last_sample = (now, p, b, e);
        }
    }

    // ---- packets reaching the daemon -----------------------------------

    /// A packet the fast paths handed over for a latching decision.
    pub fn on_packet(&mut self, ev: PacketEvent, now: Instant) {
        let Some(owner) = self.owners.get(&ev.local).cloned() else {
            return;
        };
        let Some(call) = self.calls.get_mut(&owner.call) else {
            return;
        };
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
        let verdict = latch.on_packet(ev.from, ev.rtp, now);
        if verdict == Verdict::Drop {
            self.totals.refused_sources += 1;
        }
        let after = (latch.endpoint(), latch.source());
        if before != after {
            debug!(call_id = %owner.call, local = %ev.local, from = %ev.from, "latched");
            self.program(&owner.call, owner.mono, now);
        }
        if verdict == Verdict::Forward
            && let Some(call) = self.calls.get(&owner.call)
            && let Some(peer) = call.monos[owner.mono].peer
        {
            let routes = Self::routes(&call.monos[owner.mono], &call.monos[peer], owner.media);
            if let Some((_, Some(route))) = routes.iter().find(|(l, _)| *l == Some(ev.local)) {
                self.backend
                    .forward(ev.local, route.out, route.dest, &ev.data);
            }
        }
    }

    // ---- reports ----------------------------------------------------------

    fn stream_report(
        &self,
        local: SocketAddr,
        latch: &Latch,
        component: u8,
        totals: &mut [Counters; 2],
    ) -> Value {
        let c = self.backend.counters(local);
        let t = &mut totals[usize::from(component)];
        t.packets += c.packets;
        t.bytes += c.bytes;
        t.errors += c.errors;
        t.kernel_packets += c.kernel_packets;
        t.kernel_bytes += c.kernel_bytes;
        // Clamped per stream, so that one stream's duplicates do not hide
        // another's loss in the totals.
        t.rtp_expected += c.rtp_expected;
        t.rtp_received += c.rtp_received.min(c.rtp_expected);
        let mut flags = vec![text(if component == 0 { "RTP" } else { "RTCP" })];
        if latch.is_confirmed() {
            flags.push(text("confirmed"));
        }
        if c.kernel_packets > 0 {
            flags.push(text("kernelized"));
        }
        let mut stats = vec![
            ("packets", int(c.packets)),
            ("bytes", int(c.bytes)),
            ("errors", int(c.errors)),
            ("kernel packets", int(c.kernel_packets)),
            ("kernel bytes", int(c.kernel_bytes)),
        ];
        // RTP: packets lost on their way to the relay (RFC 3550 §A.3).
        if component == 0 {
            stats.push(("lost", int(c.lost())));
            stats.push(("expected", int(c.rtp_expected)));
        }
        let mut d = vec![
            ("local port", int(u64::from(local.port()))),
            ("flags", Value::List(flags)),
            ("stats", dict(stats)),
        ];
        if let Some(e) = latch.endpoint() {
            d.push(("endpoint", endpoint(e)));
        }
        if let Some(a) = latch.advertised() {
            d.push(("advertised endpoint", endpoint(a)));
        }
        if let Some(t) = c.last_packet {
            d.push(("last packet", Value::Int(unix(t))));
        }
        dict(d)
    }

    /// The `query` dictionary of a call (also returned by `delete`).
    fn report(&self, call_id: &str, only_tag: Option<&str>) -> Option<BTreeMap<Vec<u8>, Value>> {
        let call = self.calls.get(call_id)?;
        let mut totals = [Counters::default(); 2];
        let mut tags = BTreeMap::new();
        // Dictionaries lose the order the parties joined in (the caller
        // first); operators' tools show legs in it.
        let mut order = Vec::new();
        for mono in &call.monos {
            if only_tag.is_some_and(|t| t != mono.tag) {
                continue;
            }
            order.push(text(&mono.tag));
            let mut medias = Vec::new();
            for (i, m) in mono.media.iter().enumerate() {
                let mut streams = Vec::new();
                if let Some((rtp, rtcp)) = m.locals(mono.local) {
                    streams.push(self.stream_report(rtp, &m.rtp, 0, &mut totals));
                    streams.push(self.stream_report(rtcp, &m.rtcp, 1, &mut totals));
                }
                let mut flags = vec![text("initialized")];
                if m.mux {
                    flags.push(text("rtcp-mux"));
                }
                medias.push(dict(vec![
                    ("index", int(i as u64 + 1)),
                    ("type", text(&m.kind)),
                    ("protocol", text(&m.protocol)),
                    ("flags", Value::List(flags)),
                    ("streams", Value::List(streams)),
                ]));
            }
            let mut d = vec![
                ("tag", text(&mono.tag)),
                ("created", Value::Int(unix(mono.created))),
                ("medias", Value::List(medias)),
            ];
            if let Some(l) = &mono.label {
                d.push(("label", text(l)));
            }
            if let Some(p) = mono.peer {
                d.push(("in dialogue with", text(&call.monos[p].tag)));
            }
            tags.insert(mono.tag.as_bytes().to_vec(), dict(d));
        }
        let stats = |c: &Counters, rtp: bool| {
            let mut d = vec![
                ("packets", int(c.packets)),
                ("bytes", int(c.bytes)),
                ("errors", int(c.errors)),
                ("kernel packets", int(c.kernel_packets)),
                ("kernel bytes", int(c.kernel_bytes)),
            ];
            if rtp {
                d.push(("lost", int(c.lost())));
                d.push(("expected", int(c.rtp_expected)));
            }
            dict(d)
        };
        let mut out = BTreeMap::new();
        out.insert(b"created".to_vec(), Value::Int(unix(call.created)));
        out.insert(b"last signal".to_vec(), Value::Int(unix(call.last_signal)));
        out.insert(b"tags".to_vec(), Value::Dict(tags));
        out.insert(b"tag order".to_vec(), Value::List(order));
        out.insert(
            b"totals".to_vec(),
            dict(vec![
                ("RTP", stats(&totals[0], true)),
                ("RTCP", stats(&totals[1], false)),
            ]),
        );
        Some(out)
    }

    fn query(&self, cmd: &Query) -> Result<Reply, Failure> {
        let tag = cmd.from_tag.as_deref();
        if let Some(r) = self.report(&cmd.call_id, tag) {
            return Ok(Reply::Ok(r));
        }
        // A call that is over: its final report, and how it ended.
        let f = self
            .finished
            .iter()
            .rev()
            .find(|f| f.call_id == cmd.call_id)
            .ok_or_else(|| "Unknown call-id".to_owned())?;
        let Ok(Value::Dict(mut r)) = Value::decode(&f.report) else {
            return Err("the final report of this call is unreadable".to_owned());
        };
        r.insert(
            b"ended".to_vec(),
            dict(vec![
                ("reason", text(f.reason)),
                ("at", Value::Int(unix(f.at))),
                (
                    "duration ms",
                    int(u64::try_from(f.duration.as_millis()).unwrap_or(u64::MAX)),
                ),
            ]),
        );
        Ok(Reply::Ok(r))
    }

    fn list(&self, cmd: &List) -> Reply {
        let limit = cmd.limit.map_or(32, |l| l.max(1)) as usize;
        let calls = self.calls.keys().take(limit).map(text).collect();
        // Ended calls are context, not the answer: a bounded few, so the
        // reply always fits one datagram.
        let ended = self
            .ended
            .iter()
            .rev()
            .take(limit.min(ENDED_LISTED))
            .map(|e| {
                dict(vec![
                    ("call-id", text(&e.call_id)),
                    ("reason", text(e.reason.name())),
                    ("at", Value::Int(unix(e.at))),
                ])
            })
            .collect();
        let finished = self
            .finished
            .iter()
            .rev()
            .take(limit.min(ENDED_LISTED))
            .map(|f| text(&f.call_id))
            .collect();
        ok(vec![
            ("calls", Value::List(calls)),
            ("timed out", Value::List(ended)),
            ("ended", Value::List(finished)),
        ])
    }

    fn statistics(&self) -> Reply {
        let t = &self.totals;
        let (mut p, mut b, mut e) = (t.ended_packets, t.ended_bytes, t.ended_errors);
        for local in self.owners.keys() {
            let c = self.backend.counters(*local);
            p += c.packets;
            b += c.bytes;
            e += c.errors;
        }
        let current = dict(vec![
            ("sessionsown", int(self.calls.len() as u64)),
            ("sessionsforeign", int(0)),
            ("sessionstotal", int(self.calls.len() as u64)),
            ("transcodedmedia", int(0)),
            ("packetrate", int(self.rates.0 as u64)),
            ("byterate", int(self.rates.1 as u64)),
            ("errorrate", int(self.rates.2 as u64)),
        ]);
        let total = dict(vec![
            ("uptime", text(self.started.elapsed().as_secs().to_string())),
            ("managedsessions", int(t.managed_sessions)),
            ("rejectedsessions", int(t.rejected_sessions)),
            ("timeoutsessions", int(t.timeouts)),
            ("silenttimeoutsessions", int(t.silent_timeouts)),
            ("offertimeoutsessions", int(t.offer_timeouts)),
            ("regularterminatedsessions", int(t.regular_terminated)),
            ("relayedpackets", int(p)),
            ("relayedbytes", int(b)),
            ("relayedpacketerrors", int(e)),
        ]);
        let count = |k: &str| int(t.commands.get(k).copied().unwrap_or(0));
        let control = dict(vec![
            ("totalpingcount", count("ping")),
            ("totaloffercount", count("offer")),
            ("totalanswercount", count("answer")),
            ("totaldeletecount", count("delete")),
            ("totalquerycount", count("query")),
            ("totallistcount", count("list")),
            ("totalstatistics", count("statistics")),
            ("totalerrorcount", int(t.errors)),
        ]);
        let ports = dict(vec![
            ("total", int(self.ports.capacity() as u64 * 2)),
            ("used", int(self.ports.in_use() as u64 * 2)),
            ("free", int(self.ports.free() as u64 * 2)),
            ("exhaustions", int(t.port_exhaustions)),
        ]);
        let plane = Value::Dict(
            self.backend
                .describe()
                .into_iter()
                .map(|(k, v)| (k.into_bytes(), int(v)))
                .collect(),
        );
        ok(vec![(
            "statistics",
            dict(vec![
                ("currentstatistics", current),
                ("totalstatistics", total),
                ("controlstatistics", control),
                ("ports", ports),
                ("media plane", plane),
            ]),
        )])
    }
}
