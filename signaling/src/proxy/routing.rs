//! Where a request goes (RFC 3261 §16.4–§16.6): which side its source is
//! on, where a new request (an INVITE above all) is routed, the Via and
//! (signed) Record-Route entries the agent adds, and OPTIONS addressed to
//! the agent itself. In-dialog requests: `in_dialog.rs`.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use super::{
    Peer, Transport, advertise,
    agent::{Agent, Call, Party, Purpose, ServerKey, Side},
    signature,
};
use crate::{
    config::Facing,
    message::{Message, Method},
};

pub(super) fn host_port(uri: &rsip::Uri) -> Option<SocketAddr> {
    let ip = match &uri.host_with_port.host {
        rsip::Host::IpAddr(ip) => *ip,
        rsip::Host::Domain(d) => d.to_string().trim_matches(['[', ']']).parse().ok()?,
    };
    let port = match &uri.host_with_port.port {
        Some(p) => p.to_string().parse().ok()?,
        None => 5060,
    };
    Some(SocketAddr::new(ip, port))
}

pub(super) fn uri_transport(uri: &rsip::Uri) -> Option<Transport> {
    uri.params.iter().find_map(|p| match p {
        rsip::Param::Transport(t) => {
            if t.to_string().eq_ignore_ascii_case("tcp") {
                Some(Transport::Tcp)
            } else {
                Some(Transport::Udp)
            }
        }
        _ => None,
    })
}

fn addr_text(a: SocketAddr) -> String {
    match a.ip() {
        IpAddr::V4(v4) => format!("{v4}:{}", a.port()),
        IpAddr::V6(v6) => format!("[{v6}]:{}", a.port()),
    }
}

impl Agent {
    pub(super) fn listen_of(&self, side: Side) -> SocketAddr {
        match side {
            Side::Trunk(_) => self.cfg.trunk_listen,
            Side::Pbx => self.cfg.pbx_listen,
        }
    }

    /// Whether `a` names the agent: a listen address, an advertised one
    /// (`advertise.rs`).
    pub(super) fn is_ours(&self, a: SocketAddr) -> bool {
        self.own_listen(a).is_some()
    }

    /// Which side a source belongs to.
    pub(super) fn classify(&self, remote: SocketAddr) -> Option<Side> {
        if self.cfg.pbx_sources.iter().any(|s| s.matches(remote)) {
            return Some(Side::Pbx);
        }
        self.cfg
            .trunks
            .iter()
            .position(|(_, sources)| sources.iter().any(|s| s.matches(remote)))
            .map(Side::Trunk)
    }

    /// Our Record-Route entry on `side` (leaving from `local`), with the
    /// address advertised there, signed for the call (`signature.rs`; the
    /// signature covers the Call-ID only, so it verifies whichever of our
    /// addresses the entry comes back with).
    pub(super) fn record_route(
        &self,
        side: Facing,
        local: SocketAddr,
        t: Transport,
        call_id: &str,
    ) -> String {
        let mr = self.key.sign(call_id);
        let param = signature::PARAM;
        let local = self.sent_by(side, local);
        match t {
            Transport::Udp => format!("<sip:{};lr;{param}={mr}>", addr_text(local)),
            Transport::Tcp => format!("<sip:{};transport=tcp;lr;{param}={mr}>", addr_text(local)),
        }
    }

    /// Our Via towards `side` (leaving from `local`): the sent-by is the
    /// address advertised there, where responses come back to.
    pub(super) fn via(
        &self,
        side: Facing,
        local: SocketAddr,
        t: Transport,
        branch: &str,
    ) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            t.via_name(),
            addr_text(self.sent_by(side, local))
        )
    }

    pub(super) fn addressed_to_us(&self, msg: &Message) -> bool {
        msg.request_uri()
            .and_then(host_port)
            .is_some_and(|a| self.is_own_ip(a.ip()))
    }

    /// OPTIONS to the agent: 200 (keepalive / health check). With the user
    /// part `stats`, the body carries the agent's counters as JSON.
    pub(super) fn options(&mut self, key: &ServerKey, msg: &Message, now: Instant) {
        let Some(entry) = self.servers.get(key) else {
            return;
        };
        let mut r = entry.request.response(200, "OK", Some("mr-proxy"));
        r.set_header("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO");
        let wants_stats = msg
            .request_uri()
            .and_then(|u| u.user().map(str::to_owned))
            .is_some_and(|u| u == "stats");
        if wants_stats {
            r.set_body(self.stats_json().into_bytes(), Some("application/json"));
        }
        self.forward_response(key, r, now);
    }

    /// Where a new (out-of-dialog) request goes: trunk → PBX; PBX → the
    /// trunk a rule selects (Request-URI user prefix, then host, then the
    /// default trunk).
    fn route_new(&self, from: Side, msg: &Message, transport: Transport) -> Option<(Peer, Side)> {
        let (to_side, remote) = match from {
            Side::Trunk(_) => (Side::Pbx, self.cfg.pbx),
            Side::Pbx => {
                let uri = msg.request_uri()?;
                let user = uri.user().unwrap_or_default().to_owned();
                let host = uri.host_with_port.host.to_string();
                let trunks = &self.cfg.trunks;
                let i = trunks
                    .iter()
                    .position(|(t, _)| t.prefixes.iter().any(|p| user.starts_with(p.as_str())))
                    .or_else(|| {
                        trunks.iter().position(|(t, _)| {
                            t.hosts.iter().any(|h| h.eq_ignore_ascii_case(&host))
                        })
                    })
                    .or_else(|| trunks.iter().position(|(t, _)| t.default))?;
                (Side::Trunk(i), trunks[i].0.target)
            }
        };
        let transport = if (transport == Transport::Tcp && self.cfg.tcp) || !self.cfg.udp {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        Some((
            Peer {
                transport,
                conn: None,
                local: self.listen_of(to_side),
                remote,
            },
            to_side,
        ))
    }

    /// A request starting a dialog or standing alone (INVITE, OPTIONS
    /// beyond us, MESSAGE, …).
    pub(super) fn new_request(&mut self, key: ServerKey, side: Side, msg: Message, now: Instant) {
        let method = msg.method();
        let peer = self.servers[&key].peer;
        if self.advertise_pending(side) {
            // Only a private address to write: refuse rather than mislead.
            self.stats.advertise_unknown += 1;
            self.respond_with(&key, 503, &[("Retry-After", advertise::RETRY_AFTER)], now);
            return;
        }
        if method == Method::Invite {
            if !self.rate.admit(peer.remote.ip(), now) {
                self.stats.rate_limited += 1;
                self.respond_with(&key, 503, &[("Retry-After", "1")], now);
                return;
            }
            if self.calls.len() >= self.cfg.max_calls as usize {
                self.stats.max_calls_rejected += 1;
                self.respond_with(&key, 503, &[("Retry-After", "5")], now);
                return;
            }
            // §16.2: a proxy answers an INVITE with 100 at once.
            self.respond(&key, 100, now);
        }
        let Some((out, to_side)) = self.route_new(side, &msg, peer.transport) else {
            self.stats.no_route += 1;
            self.respond(&key, 404, now);
            return;
        };
        let branch = self.new_branch();
        let mut fwd = msg.clone();
        fwd.set_max_forwards(msg.max_forwards().saturating_sub(1));
        if method == Method::Invite {
            // Both sides' entries when the request crosses over (the
            // outbound side's on top: it is the one the callee reaches).
            // One entry when both would read the same.
            let call_id = msg.call_id();
            let inbound =
                self.record_route(advertise::facing(side), peer.local, peer.transport, call_id);
            let outbound = self.record_route(
                advertise::facing(to_side),
                out.local,
                out.transport,
                call_id,
            );
            fwd.prepend_record_route(&inbound);
            if outbound != inbound {
                fwd.prepend_record_route(&outbound);
            }
        }
        fwd.push_via(&self.via(
            advertise::facing(to_side),
            out.local,
            out.transport,
            &branch,
        ));
        if method != Method::Invite {
            self.start_client(branch, fwd, out, Some(key), Purpose::Forward, now);
            return;
        }
        let call_id = msg.call_id().to_owned();
        let caller_tag = msg.from_tag().unwrap_or_default();
        let node = self.node_for(&call_id);
        self.stats.calls_total += 1;
        self.calls.insert(
            call_id.clone(),
            Call {
                caller_tag: caller_tag.clone(),
                from_side: side,
                to_side,
                node,
                late_offer: msg.body().is_empty(),
                dialog: None,
                answered_tags: Vec::new(),
                sdp_cache: HashMap::new(),
                created: now,
                ended: false,
                restored: false,
            },
        );
        if msg.body().is_empty() {
            self.start_client(branch, fwd, out, Some(key), Purpose::Forward, now);
            return;
        }
        let direction = self.direction(side, to_side);
        let offerer = Party {
            tag: &caller_tag,
            other: None,
            source: peer.remote.ip(),
            side: Some(side),
        };
        self.offer_then_forward(node, &msg, &offerer, direction, key, fwd, out, branch);
    }
}
