//! `offer` and `answer` (ng; RFC 3264's offer/answer model): which
//! interface and local address face each party, the party's media taken
//! from its SDP (ports leased for new media, released for rejected ones),
//! the other side mirrored, rtcp-mux negotiated, and the SDP sent on
//! rewritten with the relay's addresses and ports.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Instant, SystemTime},
};

use tracing::{debug, info};

use super::{
    backend::Backend,
    clock::Now,
    engine::{Engine, Lease},
    error::CommandError,
    latch::{Latch, Policy},
    model::{Call, Media, Mono, PartyFlags, SentSdp, digest},
    reports::ok,
};
use crate::{
    ng::{AddressFamily, OfferAnswer, Reply, Value},
    sdp::{self, MediaRewrite, Rewrite, RtcpOut, SdpInfo},
};

impl<B: Backend> Engine<B> {
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
    ) -> Result<usize, CommandError> {
        if let Some(name) = explicit {
            return self
                .interfaces
                .by_name(name)
                .ok_or_else(|| CommandError::UnknownInterface {
                    name: name.to_owned(),
                });
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

    /// At most `max-media` m= lines per SDP, refused before anything is
    /// leased (a 64 KB INVITE would otherwise hold thousands of pairs).
    fn check_media_count(&self, info: &SdpInfo) -> Result<(), CommandError> {
        let count = info.media.len();
        if count > self.cfg.max_media {
            return Err(CommandError::TooManyMedia {
                count,
                max: self.cfg.max_media,
            });
        }
        Ok(())
    }

    /// Local address of family `v6` on interface `iface`: `address family`
    /// asked for it, so no other will do.
    fn local_of_family(&self, iface: usize, v6: bool) -> Result<IpAddr, CommandError> {
        let i = self.interfaces.get(iface);
        i.local(v6).ok_or_else(|| CommandError::NoAddressOfFamily {
            interface: i.name.clone(),
            family: if v6 { "IPv6" } else { "IPv4" },
        })
    }

    /// Local address on interface `iface`, preferring family `v6`.
    fn local_on(&self, iface: usize, v6: bool) -> Result<IpAddr, CommandError> {
        let i = self.interfaces.get(iface);
        i.local(v6)
            .or_else(|| i.local(!v6))
            .ok_or_else(|| CommandError::NoUsableAddress {
                interface: i.name.clone(),
            })
    }

    pub(super) fn offer(&mut self, cmd: &OfferAnswer, clock: Now) -> Result<Reply, CommandError> {
        if self.interfaces.is_empty() {
            return Err(CommandError::NoInterfaces);
        }
        if cmd.to_tag.as_ref() == Some(&cmd.from_tag) {
            return Err(CommandError::SameTags);
        }
        // No SIP Call-ID starts with NUL (RFC 3261 §25.1): such ids name
        // the engine's own records in the store.
        if cmd.call_id.starts_with('\0') {
            return Err(CommandError::ReservedCallId);
        }
        // `advertise = "stun"`: no offer before the public address is
        // known (a private one is never advertised in its place).
        if let Some(i) = self.interfaces.0.iter().find(|i| i.public_pending()) {
            return Err(CommandError::PublicAddressUnknown {
                interface: i.name.clone(),
            });
        }
        let info = sdp::inspect(&cmd.sdp).map_err(|source| CommandError::SdpParse { source })?;
        self.check_media_count(&info)?;
        let (now, wall) = (clock.mono, clock.wall);
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
                    // Its two parties (a Vec would start at four).
                    monos: Vec::with_capacity(2),
                    answered: false,
                    delete_at: None,
                    next_check: now,
                    seen: (0, 0, 0),
                    next_quality: now,
                    watch: Vec::new(),
                    persisted: None,
                },
            );
        }
        let result = self.offer_in_call(cmd, &info, now, wall);
        if result.is_err() && is_new {
            // Nothing of a refused first offer may remain.
            self.drop_call(&cmd.call_id, clock, None);
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
    ) -> Result<Reply, CommandError> {
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

        let call = self
            .calls
            .get(&cmd.call_id)
            .ok_or(CommandError::CallVanished)?;
        // The offerer: known by its tag, or new.
        let x = find_tag(call, &cmd.from_tag);
        // The answerer: named by to-tag, else the offerer's peer, else new.
        let y_named = cmd.to_tag.as_deref().and_then(|t| find_tag(call, t));
        check_pairing(call, x, y_named, cmd.to_tag.as_deref())?;
        let y = y_named.or_else(|| x.and_then(|x| call.monos.get(x)?.peer));
        // Media per call are bounded: the offerer's and the answerer's
        // side each get one per m= line.
        let media_of = |i: Option<usize>| {
            i.and_then(|i| call.monos.get(i))
                .map_or(0, |m| m.media.len())
        };
        let all: usize = call.monos.iter().map(|m| m.media.len()).sum();
        let wanted = info.media.len();
        let total =
            all.saturating_sub(media_of(x) + media_of(y)) + wanted + media_of(y).max(wanted);
        if total > 2 * self.cfg.max_media {
            return Err(CommandError::CallMediaLimit {
                total,
                max: 2 * self.cfg.max_media,
            });
        }
        let mono = |i: usize| call.monos.get(i).ok_or(CommandError::CallVanished);
        let x_iface = match x {
            Some(x) => mono(x)?.iface,
            None => self.choose_iface(from_explicit, toward)?,
        };
        let y_iface = match (y, to_explicit) {
            (Some(y), None) => mono(y)?.iface,
            (_, Some(name)) => self.choose_iface(Some(name), None)?,
            (None, None) if self.interfaces.len() == 2 => 1 - x_iface,
            (None, None) => x_iface,
        };
        let x_local = match x {
            Some(x) => mono(x)?.local,
            None => self.local_on(x_iface, v6)?,
        };
        // The answerer's side: the family `address family` asks for
        // (IPv4↔IPv6 bridging, as rtpengine's flag does: an IPv4 carrier,
        // an IPv6 PBX), else the offerer's when the interface has it. Chosen
        // once, when the side is created: a re-offer keeps the relay's
        // address as it keeps its ports.
        let y_local = match (y, cmd.address_family) {
            (Some(y), _) => mono(y)?.local,
            (None, Some(f)) => self.local_of_family(y_iface, f == AddressFamily::Ip6)?,
            (None, None) => self.local_on(y_iface, x_local.is_ipv6())?,
        };
        let flags = Self::party_flags(cmd);

        let call = self
            .calls
            .get_mut(&cmd.call_id)
            .ok_or(CommandError::CallVanished)?;
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
                    // As many as the offer has, no spare room (a Vec would
                    // start at four: 1.5 KiB a party for one audio line).
                    media: Vec::with_capacity(info.media.len()),
                    sent_sdp: None,
                    flags,
                    sdp_seen: false,
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
                    media: Vec::with_capacity(info.media.len()),
                    sent_sdp: None,
                    flags: PartyFlags::default(),
                    sdp_seen: false,
                });
                call.monos.len() - 1
            }
        };
        call.monos
            .get_mut(y)
            .ok_or(CommandError::CallVanished)?
            .peer = Some(x);
        let offerer = call.monos.get_mut(x).ok_or(CommandError::CallVanished)?;
        offerer.peer = Some(y);
        offerer.flags = flags;
        if cmd.label.is_some() {
            offerer.label.clone_from(&cmd.label);
        }

        // The offerer's media, as its SDP describes them.
        self.update_party(&cmd.call_id, x, cmd, info, now)?;
        // The answerer's side mirrors the offer's m= lines (ports to offer).
        self.mirror_media(&cmd.call_id, x, y, now)?;

        // rtcp-mux towards the answerer: pass the offerer's choice through,
        // unless asked to offer it or to demultiplex.
        let call = self
            .calls
            .get_mut(&cmd.call_id)
            .ok_or(CommandError::CallVanished)?;
        let offered: Vec<bool> = call
            .monos
            .get(x)
            .map(|m| m.media.iter().map(|m| m.mux_in_sdp).collect())
            .unwrap_or_default();
        let y_media = call
            .monos
            .get_mut(y)
            .map(|m| m.media.as_mut_slice())
            .unwrap_or_default();
        for (m, offered) in y_media.iter_mut().zip(offered) {
            m.mux_in_sdp = (offered && !cmd.rtcp_mux.demux) || cmd.rtcp_mux.offer;
        }
        let sdp = self.render(&cmd.call_id, y, &cmd.sdp, info, cmd, false)?;
        self.program(&cmd.call_id, x, now);
        Ok(ok(vec![("sdp", Value::Bytes(sdp))]))
    }

    pub(super) fn answer(&mut self, cmd: &OfferAnswer, clock: Now) -> Result<Reply, CommandError> {
        let to_tag = cmd.to_tag.as_ref().ok_or(CommandError::MissingToTag)?;
        if *to_tag == cmd.from_tag {
            return Err(CommandError::SameTags);
        }
        let info = sdp::inspect(&cmd.sdp).map_err(|source| CommandError::SdpParse { source })?;
        self.check_media_count(&info)?;
        let (now, wall) = (clock.mono, clock.wall);
        let call = self
            .calls
            .get_mut(&cmd.call_id)
            .ok_or(CommandError::UnknownCallId)?;
        let x = find_tag(call, &cmd.from_tag).ok_or(CommandError::UnknownFromTag)?;
        let y_named = find_tag(call, to_tag);
        check_pairing(call, Some(x), y_named, Some(to_tag))?;
        let y = y_named
            .or_else(|| call.monos.get(x)?.peer)
            .ok_or(CommandError::NoOffer)?;
        let (Some(x_mono), Some(y_mono)) = (call.monos.get(x), call.monos.get(y)) else {
            return Err(CommandError::CallVanished);
        };
        // Both sides of the dialogue have one media per offered m= line:
        // the answer must have as many (RFC 3264 §6).
        let answer = info.media.len();
        for offer in [x_mono.media.len(), y_mono.media.len()] {
            if offer != answer {
                return Err(CommandError::AnswerMediaCount { answer, offer });
            }
        }
        // A fork answering (a new to-tag) takes over the answerer's side.
        let flags = Self::party_flags(cmd);
        let y_mono = call.monos.get_mut(y).ok_or(CommandError::CallVanished)?;
        if y_mono.tag != *to_tag {
            if !y_mono.tag.is_empty() {
                debug!(call_id = %cmd.call_id, old = %y_mono.tag, new = %to_tag, "answer from another branch");
            }
            y_mono.tag.clone_from(to_tag);
        }
        y_mono.peer = Some(x);
        y_mono.flags = flags;
        if cmd.label.is_some() {
            y_mono.label.clone_from(&cmd.label);
        }
        call.monos
            .get_mut(x)
            .ok_or(CommandError::CallVanished)?
            .peer = Some(y);
        call.last_signal = wall;
        call.last_signal_at = now;
        call.answered = true;

        self.update_party(&cmd.call_id, y, cmd, &info, now)?;
        // rtcp-mux towards the offerer: accepted if the answerer accepted
        // it (or we were asked to accept it), unless rejected.
        let call = self
            .calls
            .get_mut(&cmd.call_id)
            .ok_or(CommandError::CallVanished)?;
        let y_mux: Vec<bool> = call
            .monos
            .get_mut(y)
            .map(|m| {
                m.media
                    .iter_mut()
                    .map(|m| {
                        m.mux = m.mux_in_sdp;
                        m.mux_in_sdp
                    })
                    .collect()
            })
            .unwrap_or_default();
        let x_media = call
            .monos
            .get_mut(x)
            .map(|m| m.media.as_mut_slice())
            .unwrap_or_default();
        for (m, y_mux) in x_media.iter_mut().zip(y_mux) {
            m.mux = m.mux_in_sdp && (y_mux || cmd.rtcp_mux.accept) && !cmd.rtcp_mux.reject;
        }
        let sdp = self.render(&cmd.call_id, x, &cmd.sdp, &info, cmd, true)?;
        self.program(&cmd.call_id, x, now);
        Ok(ok(vec![("sdp", Value::Bytes(sdp))]))
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
    ) -> Result<(), CommandError> {
        let window = self.cfg.learning_window;
        if self.sharing.is_some() && cmd.flags.asymmetric {
            return Err(CommandError::AsymmetricShared);
        }
        let (local, flags, existing) = {
            let call = self.calls.get(call_id).ok_or(CommandError::CallVanished)?;
            let m = call.monos.get(who).ok_or(CommandError::CallVanished)?;
            (m.local, m.flags, m.media.len())
        };
        if existing > info.media.len() {
            return Err(CommandError::MediaSectionsRemoved {
                sdp: info.media.len(),
                negotiated: existing,
            });
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
            let (has_port, has_slot) = self
                .calls
                .get(call_id)
                .and_then(|c| c.monos.get(who)?.media.get(i))
                .map_or((None, None), |m| (m.port, m.slot));
            let (port, slot) = match (need_port, has_port) {
                (true, Some(p)) => (Some(p), self.bind_slot(p, has_slot, rtp_adv, now)?),
                (true, None) => {
                    let (p, slot) = self.lease(local, rtp_adv, now)?;
                    self.own(call_id, who, i, local, p);
                    (Some(p), slot)
                }
                (false, Some(p)) => {
                    let lease = Lease {
                        local,
                        port: p,
                        slot: has_slot,
                    };
                    self.unlease(call_id, who, i, lease, now);
                    (None, None)
                }
                (false, None) => (None, None),
            };
            // What the data plane already forwarded on the pair: a stream
            // whose learning restarts counts only packets from now on.
            let forwarded = port.map_or([0, 0], |p| {
                [p, p + 1].map(|p| self.counters_of(SocketAddr::new(local, p), slot).packets)
            });
            let call = self
                .calls
                .get_mut(call_id)
                .ok_or(CommandError::CallVanished)?;
            let party = call.monos.get_mut(who).ok_or(CommandError::CallVanished)?;
            party.sdp_seen = true;
            let media = &mut party.media;
            if let Some(m) = media.get_mut(i) {
                m.kind.clone_from(&mi.kind);
                m.protocol.clone_from(&mi.protocol);
                m.port = port;
                m.slot = slot;
                m.ssrcs.clone_from(&mi.ssrcs);
                m.mux_in_sdp = mi.rtcp_mux;
                m.direction = mi.direction;
                m.zero_address = zero;
                m.clock_rate = mi.clock_rate;
                if m.rtp.policy() != flags.policy {
                    m.rtp = Latch::new(flags.policy, rtp_adv, window).based_at(forwarded[0]);
                    m.rtcp = Latch::new(flags.policy, rtcp_adv, window).based_at(forwarded[1]);
                } else {
                    m.rtp
                        .readvertise(rtp_adv, flags.port_latching, forwarded[0]);
                    m.rtcp
                        .readvertise(rtcp_adv, flags.port_latching, forwarded[1]);
                }
                m.rtp.set_sip_source(cmd.received_from);
                m.rtcp.set_sip_source(cmd.received_from);
            } else {
                let latch = |adv, forwarded| {
                    let mut l = Latch::new(flags.policy, adv, window).based_at(forwarded);
                    l.set_sip_source(cmd.received_from);
                    l
                };
                media.push(Media {
                    kind: mi.kind.clone(),
                    protocol: mi.protocol.clone(),
                    port,
                    mux: false,
                    mux_in_sdp: mi.rtcp_mux,
                    direction: mi.direction,
                    zero_address: zero,
                    rtp: latch(rtp_adv, forwarded[0]),
                    rtcp: latch(rtcp_adv, forwarded[1]),
                    clock_rate: mi.clock_rate,
                    slot,
                    ssrcs: mi.ssrcs.clone(),
                });
            }
        }
        Ok(())
    }

    /// Port sharing: a shared pair's lease taken before the party's
    /// endpoint was known (the answerer's side at the offer) is bound to
    /// it when its SDP names it; a taken endpoint is an error. Returns the
    /// stream's slot (unchanged once bound: it names the stream).
    fn bind_slot(
        &mut self,
        port: u16,
        slot: Option<SocketAddr>,
        adv: Option<SocketAddr>,
        now: Instant,
    ) -> Result<Option<SocketAddr>, CommandError> {
        let (Some(s), None, Some(remote)) = (self.sharing.as_mut(), slot, adv) else {
            return Ok(slot);
        };
        s.ports.bind(port, remote, now).map_err(|e| {
            debug!(port, %remote, error = %e, "shared slot taken");
            CommandError::SharedEndpointTaken { port, remote }
        })?;
        Ok(Some(remote))
    }

    /// Give the answerer's side one media per offered m= line, leasing the
    /// ports the offer will carry (rejected lines get none).
    fn mirror_media(
        &mut self,
        call_id: &str,
        x: usize,
        y: usize,
        now: Instant,
    ) -> Result<(), CommandError> {
        let window = self.cfg.learning_window;
        let (wanted, y_local) = {
            let call = self.calls.get(call_id).ok_or(CommandError::CallVanished)?;
            let (Some(xm), Some(ym)) = (call.monos.get(x), call.monos.get(y)) else {
                return Err(CommandError::CallVanished);
            };
            let wanted: Vec<(bool, String, String)> = xm
                .media
                .iter()
                .map(|m| (m.rejected(), m.kind.clone(), m.protocol.clone()))
                .collect();
            (wanted, ym.local)
        };
        for (i, (rejected, kind, protocol)) in wanted.into_iter().enumerate() {
            let (has, has_slot) = self
                .calls
                .get(call_id)
                .and_then(|c| c.monos.get(y)?.media.get(i))
                .map_or((None, None), |m| (m.port, m.slot));
            let (port, slot) = match (rejected, has) {
                (false, Some(p)) => (Some(p), has_slot),
                (false, None) => {
                    // The answerer's endpoint is not known before its
                    // answer: its slot is bound then (`bind_slot`).
                    let (p, slot) = self.lease(y_local, None, now)?;
                    self.own(call_id, y, i, y_local, p);
                    (Some(p), slot)
                }
                (true, Some(p)) => {
                    let lease = Lease {
                        local: y_local,
                        port: p,
                        slot: has_slot,
                    };
                    self.unlease(call_id, y, i, lease, now);
                    (None, None)
                }
                (true, None) => (None, None),
            };
            let call = self
                .calls
                .get_mut(call_id)
                .ok_or(CommandError::CallVanished)?;
            let party = call.monos.get_mut(y).ok_or(CommandError::CallVanished)?;
            let policy = party.flags.policy;
            let media = &mut party.media;
            if let Some(m) = media.get_mut(i) {
                m.port = port;
                m.slot = slot;
                m.kind = kind;
                m.protocol = protocol;
            } else {
                // Nothing is known about the answerer until its answer:
                // its latches accept nobody before that.
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
                    clock_rate: None,
                    slot,
                    ssrcs: Vec::new(),
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
    ) -> Result<Vec<u8>, CommandError> {
        let call = self.calls.get(call_id).ok_or(CommandError::CallVanished)?;
        let target = call.monos.get(to).ok_or(CommandError::CallVanished)?;
        let from = target
            .peer
            .and_then(|p| call.monos.get(p))
            .ok_or(CommandError::NoPeer)?;
        let iface = self.interfaces.get(target.iface);
        let advertised =
            iface
                .advertised(target.local)
                .ok_or_else(|| CommandError::PublicAddressUnknown {
                    interface: iface.name.clone(),
                })?;
        let mut media = Vec::with_capacity(info.media.len());
        for (i, mi) in info.media.iter().enumerate() {
            let (Some(m), Some(src)) = (target.media.get(i), from.media.get(i)) else {
                return Err(CommandError::MediaCountMismatch {
                    sdp: info.media.len(),
                    party: target.media.len().min(from.media.len()),
                });
            };
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
        let (body, version) = match target.sent_sdp {
            None => {
                let body = sdp::rewrite(original, &rw)
                    .map_err(|source| CommandError::SdpRewrite { source })?;
                (body, info.origin_version)
            }
            Some(last) => {
                rw.origin_version = Some(last.version);
                let same = sdp::rewrite(original, &rw)
                    .map_err(|source| CommandError::SdpRewrite { source })?;
                if digest(&same) == last.digest {
                    (same, last.version)
                } else {
                    let v = last.version.wrapping_add(1);
                    rw.origin_version = Some(v);
                    let bumped = sdp::rewrite(original, &rw)
                        .map_err(|source| CommandError::SdpRewrite { source })?;
                    (bumped, v)
                }
            }
        };
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or(CommandError::CallVanished)?;
        call.monos
            .get_mut(to)
            .ok_or(CommandError::CallVanished)?
            .sent_sdp = Some(SentSdp {
            digest: digest(&body),
            version,
        });
        Ok(body)
    }
}

/// The party known by `tag`. The answerer's side of an unanswered offer
/// has no tag yet (an empty one): it is found through its peer, never by
/// a tag.
fn find_tag(call: &Call, tag: &str) -> Option<usize> {
    call.monos
        .iter()
        .position(|m| !m.tag.is_empty() && m.tag == tag)
}

/// A command naming both parties (`x` by from-tag, `y_named` by to-tag)
/// may only name two parties of one dialogue: pairing a party with one in
/// dialogue with somebody else would leave that other party's routes
/// pointing at media that now flow elsewhere.
fn check_pairing(
    call: &Call,
    x: Option<usize>,
    y_named: Option<usize>,
    to_tag: Option<&str>,
) -> Result<(), CommandError> {
    let Some(y) = y_named else {
        return Ok(());
    };
    let y_peer = call.monos.get(y).and_then(|m| m.peer);
    let x_peer = x.and_then(|x| call.monos.get(x)?.peer);
    let same_dialogue = match x {
        Some(x) => x_peer == Some(y) && y_peer == Some(x),
        // A new party may not take over somebody else's.
        None => y_peer.is_none(),
    };
    if same_dialogue {
        Ok(())
    } else {
        Err(CommandError::OtherDialogue {
            tag: to_tag.unwrap_or_default().to_owned(),
        })
    }
}
