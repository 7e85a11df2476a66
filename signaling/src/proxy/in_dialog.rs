//! Requests inside a dialog (they carry a To tag, RFC 3261 §12.2): who may
//! send one through the agent, and where it may go.
//!
//! A proxy forwards such a request by its Route header, or by its
//! Request-URI once the route set is used up (loose routing, §16.4,
//! §16.12). Taken alone that makes an open relay: anyone allowed to send
//! to the agent could write a To tag and any Route/Request-URI, and the
//! agent would carry it anywhere (toll fraud, reflection), and anyone
//! could re-INVITE with SDP for a Call-ID of their choosing and have the
//! media node allocate ports, past `invite-rate` and `max-calls`. So an
//! in-dialog request is forwarded only when
//!
//! 1. it belongs to the call: the dialog is one the agent knows (Call-ID
//!    and both tags match), or the request carries the agent's own Route
//!    entry with a valid signature for its Call-ID (`signature.rs` —
//!    every call the agent record-routed, also before a restart); and
//! 2. its next hop — the first Route left after ours are popped, else the
//!    Request-URI (§16.12) — is a peer on the *other* side: from a trunk,
//!    the PBX (`pbx`, `pbx-sources`); from the PBX, a trunk (its `target`
//!    or `sources`); or, for a dialog the agent knows, the next hop it
//!    recorded towards the other party (its route set or Contact,
//!    §12.1.1/§12.1.2). Never the agent itself.
//!
//! Everything else is refused (481 when the dialog does not exist for us,
//! §12.2.2; 403 for a destination not allowed), counted by reason, and
//! answered at most `refusal-rate` times per second per source. An ACK is
//! never answered (§17.1.1.3), only counted.

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use tracing::debug;

use super::{
    Peer, Transport, advertise,
    agent::{Agent, Call, Party, Pending, Purpose, ServerKey, Side},
    dialog::tag_of,
    media,
    routing::{host_port, uri_transport},
    signature,
};
use crate::message::{Message, Method};

/// Why an in-dialog request is not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Neither a dialog the agent knows nor its signed Route entry.
    UnknownDialog,
    /// The agent's Route entry with a signature that is not the agent's
    /// for this Call-ID (forged, or from before a secret change).
    BadSignature,
    /// The next hop is not a peer of the other side.
    ForbiddenTarget,
    /// The next hop is the agent itself.
    Loop,
    /// Validly signed, but the media node no longer has the call.
    EndedCall,
    /// No next hop can be read (not an IP literal, no Request-URI).
    NoRoute,
}

impl Refusal {
    pub(super) fn status(self) -> u16 {
        match self {
            Refusal::UnknownDialog | Refusal::BadSignature | Refusal::Loop | Refusal::EndedCall => {
                481
            }
            Refusal::ForbiddenTarget => 403,
            Refusal::NoRoute => 404,
        }
    }

    /// The counter's name (`Stats::in_dialog_refused`, metrics `reason`).
    pub(super) fn reason(self) -> &'static str {
        match self {
            Refusal::UnknownDialog => "unknown_dialog",
            Refusal::BadSignature => "bad_signature",
            Refusal::ForbiddenTarget => "forbidden_target",
            Refusal::Loop => "loop",
            Refusal::EndedCall => "ended_call",
            Refusal::NoRoute => "no_route",
        }
    }
}

/// What the agent's own Route entries said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signature {
    /// None of ours was signed (or none of ours was there).
    Absent,
    /// One of ours is signed for this Call-ID, and none wrongly.
    Valid,
    /// One of ours carries a signature that does not verify.
    Invalid,
}

/// Our Route entries, popped.
struct Popped {
    /// The local address the request leaves from (the second of ours
    /// popped, when it crossed sides); `None` when none was ours.
    local: Option<SocketAddr>,
    signature: Signature,
}

/// An in-dialog request allowed through.
pub(super) struct Forward {
    /// The request with our Route entries popped.
    pub(super) fwd: Message,
    pub(super) out: Peer,
    /// The agent knows the dialog (else a valid signature let it in).
    pub(super) known: bool,
}

/// A validly signed re-offer (re-INVITE/UPDATE with SDP) for a call the
/// agent does not remember, while the media node is asked about the call.
pub(super) struct Reoffer {
    pub(super) server: ServerKey,
    /// The request as received, and as it will be forwarded.
    pub(super) message: Message,
    pub(super) fwd: Message,
    pub(super) out: Peer,
    pub(super) branch: String,
    /// The request's source address.
    pub(super) source: IpAddr,
}

/// The `mr` parameter of a Route value's URI.
pub(super) fn signature_param(route: &str) -> Option<&str> {
    let uri = Message::uri_text_of(route).ok()?;
    let params = uri.split('?').next()?;
    params.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(signature::PARAM)
            .then_some(v.trim())
    })
}

fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
}

impl Agent {
    /// Pop our own Route entries (§16.4), checking their signatures.
    fn pop_our_routes(&self, msg: &mut Message, arrived: SocketAddr, call_id: &str) -> Popped {
        let mut out = arrived;
        let mut popped = 0;
        let (mut valid, mut invalid) = (false, false);
        while let Some(first) = msg.routes().first().cloned() {
            // Ours by any of our addresses (listen, advertised): the
            // listen address it stands for.
            let ours = Message::uri_of(&first)
                .ok()
                .and_then(|u| host_port(&u))
                .and_then(|a| self.own_listen(a));
            let Some(addr) = ours else { break };
            match signature_param(&first) {
                Some(mr) if self.key.verify(call_id, mr) => valid = true,
                Some(_) => invalid = true,
                None => {}
            }
            msg.pop_route();
            popped += 1;
            if popped >= 2 || addr != arrived {
                out = addr;
            }
        }
        let signature = match (valid, invalid) {
            (_, true) => Signature::Invalid,
            (true, false) => Signature::Valid,
            (false, false) => Signature::Absent,
        };
        Popped {
            local: (popped > 0).then_some(out),
            signature,
        }
    }

    /// The call of this request's dialog, if the agent knows it: same
    /// Call-ID, one tag the caller's, the other the callee's (any callee
    /// tag while the dialog is early: forking).
    fn known_dialog(&self, msg: &Message) -> Option<&Call> {
        let call = self.calls.get(msg.call_id())?;
        let (from, to) = (msg.from_tag()?, msg.to_tag()?);
        let other = if from == call.caller_tag {
            to
        } else if to == call.caller_tag {
            from
        } else {
            return None;
        };
        match &call.dialog {
            Some(d) => (tag_of(&d.callee.own).as_deref() == Some(other.as_str())).then_some(call),
            None => Some(call),
        }
    }

    /// Whether a request from `side` may go to `to` (see the module doc).
    fn may_reach(&self, side: Side, known: Option<&Call>, msg: &Message, to: SocketAddr) -> bool {
        let configured = match side {
            Side::Trunk(_) => {
                same_addr(self.cfg.pbx, to) || self.cfg.pbx_sources.iter().any(|s| s.matches(to))
            }
            Side::Pbx => self.cfg.trunks.iter().any(|(t, sources)| {
                same_addr(t.target, to) || sources.iter().any(|s| s.matches(to))
            }),
        };
        if configured {
            return true;
        }
        let Some(d) = known.and_then(|c| c.dialog.as_ref()) else {
            return false;
        };
        let to_caller = msg.from_tag().as_deref() != tag_of(&d.caller.own).as_deref();
        Message::uri_of(d.next_hop(to_caller))
            .ok()
            .and_then(|u| host_port(&u))
            .is_some_and(|a| same_addr(a, to))
    }

    /// Where an in-dialog request goes: the first remaining Route, or
    /// the Request-URI (loose routing, §16.12).
    fn in_dialog_dest(
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

    /// Whether, and where, an in-dialog request from `side` goes.
    pub(super) fn route_in_dialog(
        &self,
        side: Side,
        peer: Peer,
        msg: &Message,
    ) -> Result<Forward, Refusal> {
        let mut fwd = msg.clone();
        let popped = self.pop_our_routes(&mut fwd, peer.local, msg.call_id());
        let known = self.known_dialog(msg);
        if known.is_none() {
            match popped.signature {
                Signature::Valid => {}
                Signature::Invalid => return Err(Refusal::BadSignature),
                Signature::Absent => return Err(Refusal::UnknownDialog),
            }
        }
        // None of ours popped (a known dialog whose UA dropped the route
        // set): leave from the other side's address.
        let local = popped.local.unwrap_or(match side {
            Side::Trunk(_) => self.cfg.pbx_listen,
            Side::Pbx => self.cfg.trunk_listen,
        });
        let out = self
            .in_dialog_dest(&fwd, local, peer.transport)
            .ok_or(Refusal::NoRoute)?;
        if self.is_ours(out.remote) {
            // Addressed to us with no route onwards: forwarding it would
            // loop.
            return Err(Refusal::Loop);
        }
        if !self.may_reach(side, known, msg, out.remote) {
            return Err(Refusal::ForbiddenTarget);
        }
        Ok(Forward {
            fwd,
            out,
            known: known.is_some(),
        })
    }

    /// Count a refusal.
    pub(super) fn count_refused(&mut self, refusal: Refusal) {
        if refusal == Refusal::NoRoute {
            self.stats.no_route += 1;
        } else {
            *self
                .stats
                .in_dialog_refused
                .entry(refusal.reason().to_owned())
                .or_default() += 1;
        }
    }

    /// Refuse the request of server transaction `key`.
    fn refuse(&mut self, key: &ServerKey, refusal: Refusal, now: Instant) {
        let Some(entry) = self.servers.get(key) else {
            return;
        };
        let peer = entry.peer;
        debug!(remote = %peer.remote, reason = refusal.reason(), "in-dialog request refused");
        self.count_refused(refusal);
        if self.refusals.admit(peer.remote.ip(), now) {
            self.respond(key, refusal.status(), now);
        } else {
            // Unanswered: nothing to keep for it either.
            self.stats.refusals_unanswered += 1;
            self.servers.remove(key);
        }
    }

    /// An in-dialog request other than ACK and CANCEL.
    pub(super) fn in_dialog(&mut self, key: ServerKey, side: Side, msg: Message, now: Instant) {
        let method = msg.method();
        let peer = self.servers[&key].peer;
        let call_id = msg.call_id().to_owned();
        let Forward {
            mut fwd,
            out,
            known,
        } = match self.route_in_dialog(side, peer, &msg) {
            Ok(f) => f,
            Err(refusal) => {
                self.refuse(&key, refusal, now);
                return;
            }
        };
        if known
            && let Some(call) = self.calls.get_mut(&call_id)
            && let Some(d) = call.dialog.as_mut()
            && d.saw_request(msg.from_tag().as_deref(), msg.cseq().0)
        {
            // The CSeq the agent's own BYE must exceed (`record.rs`).
            self.save(&call_id, now);
        }
        if method == Method::Bye {
            // Delete media at once; also for a call this agent does not
            // remember (it restarted) but signed: the media node knows it.
            let node = match self.calls.get(&call_id) {
                Some(c) if known => c.node,
                _ => self.node_for(&call_id),
            };
            let req = media::delete(&call_id, msg.from_tag().as_deref(), None);
            self.ng(node, req, Pending::Delete);
            if known && let Some(c) = self.calls.get_mut(&call_id) {
                c.ended = true;
            }
        }
        fwd.set_max_forwards(msg.max_forwards().saturating_sub(1));
        let branch = self.new_branch();
        fwd.push_via(&self.via(advertise::opposite(side), out.local, out.transport, &branch));
        let has_sdp = !msg.body().is_empty();
        if !(matches!(method, Method::Invite | Method::Update) && has_sdp) {
            self.start_client(branch, fwd, out, Some(key), Purpose::Forward, now);
            return;
        }
        if !known {
            // Signed, but forgotten (a restart): only a call the media node
            // still has may be re-offered — an old signature must not
            // create media for a call that ended. Paced like new calls.
            if !self.rate.admit(peer.remote.ip(), now) {
                self.stats.rate_limited += 1;
                self.respond_with(&key, 503, &[("Retry-After", "1")], now);
                return;
            }
            let node = self.node_for(&call_id);
            self.ng(
                node,
                media::query(&call_id),
                Pending::Reoffer(Box::new(Reoffer {
                    server: key,
                    message: msg,
                    fwd,
                    out,
                    branch,
                    source: peer.remote.ip(),
                })),
            );
            return;
        }
        let from_tag = msg.from_tag().unwrap_or_default();
        let to_tag = msg.to_tag();
        let Some(c) = self.calls.get(&call_id) else {
            return;
        };
        // The re-offer comes from either side.
        let (a, b) = if side == c.from_side {
            (c.from_side, c.to_side)
        } else {
            (c.to_side, c.from_side)
        };
        let (node, direction) = (c.node, self.direction(a, b));
        let offerer = Party {
            tag: &from_tag,
            other: to_tag.as_deref(),
            source: peer.remote.ip(),
            side: Some(a),
        };
        self.offer_then_forward(node, &msg, &offerer, direction, key, fwd, out, branch);
    }

    /// The media node's answer to the `query` of a signed re-offer for a
    /// forgotten call: offer if it has the call, else 481.
    pub(super) fn on_reoffer_query(&mut self, r: Reoffer, reply: Option<&ng::Value>, now: Instant) {
        let Reoffer {
            server,
            message,
            fwd,
            out,
            branch,
            source,
        } = r;
        let Some(reply) = reply else {
            self.stats.ng_errors += 1;
            self.respond_with(
                &server,
                503,
                &[("Warning", "399 media-relay \"media unavailable\"")],
                now,
            );
            return;
        };
        if reply.get("result").and_then(ng::Value::as_str) != Some("ok") {
            self.refuse(&server, Refusal::EndedCall, now);
            return;
        }
        let from_tag = message.from_tag().unwrap_or_default();
        let to_tag = message.to_tag();
        let offerer = Party {
            tag: &from_tag,
            other: to_tag.as_deref(),
            source,
            side: None,
        };
        let node = self.node_for(message.call_id());
        self.offer_then_forward(node, &message, &offerer, None, server, fwd, out, branch);
    }
}
