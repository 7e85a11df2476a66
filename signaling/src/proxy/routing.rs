//! Where a request goes (RFC 3261 §16.4–§16.6, §16.12): which side its
//! source is on, where a new request (an INVITE above all) is routed, our
//! own Route entries popped from an in-dialog request and where it goes
//! next, the Via and Record-Route entries the agent adds, and OPTIONS
//! addressed to the agent itself.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use super::{
    Peer, Transport,
    agent::{Agent, Call, Party, Pending, Purpose, ServerKey, Side},
    media,
};
use crate::message::{Message, Method};

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

    pub(super) fn is_ours(&self, a: SocketAddr) -> bool {
        a == self.cfg.trunk_listen || a == self.cfg.pbx_listen
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

    pub(super) fn record_route(&self, local: SocketAddr, t: Transport) -> String {
        match t {
            Transport::Udp => format!("<sip:{};lr>", addr_text(local)),
            Transport::Tcp => format!("<sip:{};transport=tcp;lr>", addr_text(local)),
        }
    }

    pub(super) fn via(&self, local: SocketAddr, t: Transport, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            t.via_name(),
            addr_text(local)
        )
    }

    pub(super) fn addressed_to_us(&self, msg: &Message) -> bool {
        msg.request_uri().and_then(host_port).is_some_and(|a| {
            a.ip() == self.cfg.trunk_listen.ip() || a.ip() == self.cfg.pbx_listen.ip()
        })
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
            fwd.prepend_record_route(&self.record_route(peer.local, peer.transport));
            if out.local != peer.local || out.transport != peer.transport {
                fwd.prepend_record_route(&self.record_route(out.local, out.transport));
            }
        }
        fwd.push_via(&self.via(out.local, out.transport, &branch));
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
        };
        self.offer_then_forward(node, &msg, &offerer, direction, key, fwd, out, branch);
    }

    /// Pop our own Route entries; return the local address the request
    /// leaves from (the second of ours popped, when it crossed sides).
    pub(super) fn pop_our_routes(&self, msg: &mut Message, arrived: SocketAddr) -> SocketAddr {
        let mut out = arrived;
        let mut popped = 0;
        while let Some(first) = msg.routes().first().cloned() {
            let ours = Message::uri_of(&first)
                .ok()
                .and_then(|u| host_port(&u))
                .filter(|a| self.is_ours(*a));
            let Some(addr) = ours else { break };
            msg.pop_route();
            popped += 1;
            if popped >= 2 || addr != arrived {
                out = addr;
            }
        }
        out
    }

    /// Where an in-dialog request goes: the first remaining Route, or
    /// the Request-URI (loose routing, §16.12).
    pub(super) fn in_dialog_dest(
        &self,
        msg: &Message,
        local: SocketAddr,
        transport: Transport,
    ) -> Option<Peer> {
        let uri = match msg.routes().first() {
            Some(r) => Message::uri_of(r).ok()?,
            None => msg.request_uri()?.clone(),
        };
        let remote = host_port(&uri)?;
        let t = uri_transport(&uri).unwrap_or(transport);
        Some(Peer {
            transport: t,
            conn: None,
            local,
            remote,
        })
    }

    pub(super) fn in_dialog(&mut self, key: ServerKey, side: Side, msg: Message, now: Instant) {
        let method = msg.method();
        let peer = self.servers[&key].peer;
        let call_id = msg.call_id().to_owned();
        if let Some(call) = self.calls.get_mut(&call_id)
            && let Some(d) = call.dialog.as_mut()
        {
            d.saw_request(msg.from_tag().as_deref(), msg.cseq().0);
        }
        if method == Method::Bye {
            // Delete media at once; also for calls this agent does not
            // remember (it restarted): the media node knows them.
            let node = self
                .calls
                .get(&call_id)
                .map_or_else(|| self.node_for(&call_id), |c| c.node);
            let req = media::delete(&call_id, msg.from_tag().as_deref(), None);
            self.ng(node, req, Pending::Delete);
            if let Some(c) = self.calls.get_mut(&call_id) {
                c.ended = true;
            }
        }
        let mut fwd = msg.clone();
        let local = self.pop_our_routes(&mut fwd, peer.local);
        let Some(out) = self.in_dialog_dest(&fwd, local, peer.transport) else {
            self.stats.no_route += 1;
            self.respond(&key, 404, now);
            return;
        };
        if self.is_ours(out.remote) {
            // Addressed to us with no route onwards: not a dialog we are in
            // (§12.2.2), and forwarding it would loop.
            self.respond(&key, 481, now);
            return;
        }
        fwd.set_max_forwards(msg.max_forwards().saturating_sub(1));
        let branch = self.new_branch();
        fwd.push_via(&self.via(out.local, out.transport, &branch));
        let has_sdp = !msg.body().is_empty();
        if matches!(method, Method::Invite | Method::Update) && has_sdp {
            let from_tag = msg.from_tag().unwrap_or_default();
            let to_tag = msg.to_tag();
            let (node, direction) = match self.calls.get(&call_id) {
                Some(c) => {
                    // The re-offer comes from either side.
                    let (a, b) = if side == c.from_side {
                        (c.from_side, c.to_side)
                    } else {
                        (c.to_side, c.from_side)
                    };
                    (c.node, self.direction(a, b))
                }
                None => (self.node_for(&call_id), None),
            };
            let offerer = Party {
                tag: &from_tag,
                other: to_tag.as_deref(),
                source: peer.remote.ip(),
            };
            self.offer_then_forward(node, &msg, &offerer, direction, key, fwd, out, branch);
            return;
        }
        self.start_client(branch, fwd, out, Some(key), Purpose::Forward, now);
    }
}
