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
    engine::Engine,
    error::CommandError,
    latch::{Latch, Policy},
    model::{Call, Media, Mono, PartyFlags},
    reports::ok,
};
use crate::{
    ng::{OfferAnswer, Reply, Value},
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
        let info = sdp::inspect(&cmd.sdp).map_err(|source| CommandError::SdpParse { source })?;
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
        let call = self
            .calls
            .get_mut(&cmd.call_id)
            .ok_or(CommandError::CallVanished)?;
        for i in 0..call.monos[x].media.len() {
            let offered = call.monos[x].media[i].mux_in_sdp;
            let to_y = (offered && !cmd.rtcp_mux.demux) || cmd.rtcp_mux.offer;
            call.monos[y].media[i].mux_in_sdp = to_y;
        }
        let sdp = self.render(&cmd.call_id, y, &cmd.sdp, info, cmd, false)?;
        self.program(&cmd.call_id, x, now);
        Ok(ok(vec![("sdp", Value::Bytes(sdp))]))
    }

    pub(super) fn answer(&mut self, cmd: &OfferAnswer, clock: Now) -> Result<Reply, CommandError> {
        let to_tag = cmd.to_tag.as_ref().ok_or(CommandError::MissingToTag)?;
        let info = sdp::inspect(&cmd.sdp).map_err(|source| CommandError::SdpParse { source })?;
        let (now, wall) = (clock.mono, clock.wall);
        let call = self
            .calls
            .get_mut(&cmd.call_id)
            .ok_or(CommandError::UnknownCallId)?;
        let x = call
            .monos
            .iter()
            .position(|m| m.tag == cmd.from_tag)
            .ok_or(CommandError::UnknownFromTag)?;
        let y = call
            .monos
            .iter()
            .position(|m| &m.tag == to_tag)
            .or(call.monos[x].peer)
            .ok_or(CommandError::NoOffer)?;
        if call.monos[y].media.len() != info.media.len() {
            return Err(CommandError::AnswerMediaCount {
                answer: info.media.len(),
                offer: call.monos[y].media.len(),
            });
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
        let call = self
            .calls
            .get_mut(&cmd.call_id)
            .ok_or(CommandError::CallVanished)?;
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
        let (local, flags, existing) = {
            let call = self.calls.get(call_id).ok_or(CommandError::CallVanished)?;
            let m = &call.monos[who];
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
            let call = self
                .calls
                .get_mut(call_id)
                .ok_or(CommandError::CallVanished)?;
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
    ) -> Result<(), CommandError> {
        let window = self.cfg.learning_window;
        let (wanted, y_local) = {
            let call = self.calls.get(call_id).ok_or(CommandError::CallVanished)?;
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
            let call = self
                .calls
                .get_mut(call_id)
                .ok_or(CommandError::CallVanished)?;
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
    ) -> Result<Vec<u8>, CommandError> {
        let call = self.calls.get(call_id).ok_or(CommandError::CallVanished)?;
        let target = &call.monos[to];
        let from = &call.monos[target.peer.ok_or(CommandError::NoPeer)?];
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
                    .map_err(|source| CommandError::SdpRewrite { source })?;
                (body, info.origin_version)
            }
            Some((last, v)) => {
                rw.origin_version = Some(*v);
                let same = sdp::rewrite(original, &rw)
                    .map_err(|source| CommandError::SdpRewrite { source })?;
                if &same == last {
                    (same, *v)
                } else {
                    rw.origin_version = Some(v.wrapping_add(1));
                    let bumped = sdp::rewrite(original, &rw)
                        .map_err(|source| CommandError::SdpRewrite { source })?;
                    (bumped, v.wrapping_add(1))
                }
            }
        };
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or(CommandError::CallVanished)?;
        call.monos[to].sent_sdp = Some(body.clone());
        Ok(body.0)
    }
}
