//! Media anchoring over ng (the rtpengine_manage model): INVITE,
//! re-INVITE and UPDATE offers, 18x/2xx answers, late offers in a 2xx
//! answered in the ACK, deletes on CANCEL, failure and BYE, and calls a
//! media node ended by itself (BYE to both sides). The ng requests are
//! built here, and what the agent reads back from the replies.

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use ng::Value;
use thiserror::Error;
use tracing::{info, warn};

use super::{
    Peer, Transport, advertise,
    agent::{Agent, Party, Pending, Purpose, ServerKey, Side},
    routing::{host_port, uri_transport},
};
use crate::message::{Message, Method};

/// Why a media node's reply carries no SDP to forward.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MediaError {
    #[error("media node replied without SDP")]
    NoSdp,
    /// `result: error`, with the node's `error-reason` when it gave one.
    #[error("{}", .reason.as_deref().unwrap_or("media node error"))]
    Refused { reason: Option<String> },
    #[error("unexpected media node result {result:?}")]
    UnexpectedResult { result: Option<String> },
    /// The request timed out.
    #[error("media node did not answer")]
    NoAnswer,
}

/// Which party's SDP, and in which role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sdp<'a> {
    pub call_id: &'a str,
    /// The party whose SDP this is (the offerer for an offer).
    pub from_tag: &'a str,
    /// The other party, when known.
    pub to_tag: Option<&'a str>,
    pub via_branch: Option<&'a str>,
    /// The SDP body.
    pub body: &'a [u8],
    /// The SIP message's source address.
    pub received_from: IpAddr,
    /// Interface names for the sender's and the receiver's side.
    pub direction: Option<(&'a str, &'a str)>,
    /// The side of the party whose SDP this is (`trunk`, `pbx`): its
    /// monologue's ng `label`, which names the side in the media node's
    /// quality alerts and metrics.
    pub label: Option<&'a str>,
}

fn base(command: &str, s: &Sdp<'_>) -> Value {
    let mut v = Value::dict()
        .with("command", command)
        .with("call-id", s.call_id)
        .with("from-tag", s.from_tag)
        .with("sdp", Value::Bytes(s.body.to_vec()))
        .with(
            "received-from",
            Value::List(vec![
                Value::from(if s.received_from.is_ipv4() {
                    "IP4"
                } else {
                    "IP6"
                }),
                Value::from(s.received_from.to_string()),
            ]),
        )
        .with(
            "replace",
            Value::List(vec![
                Value::from("origin"),
                Value::from("session-connection"),
            ]),
        )
        .with("ICE", "remove");
    if let Some(t) = s.to_tag {
        v = v.with("to-tag", t);
    }
    if let Some(b) = s.via_branch {
        v = v.with("via-branch", b);
    }
    if let Some(l) = s.label {
        v = v.with("label", l);
    }
    if let Some((from, to)) = s.direction {
        v = v.with(
            "direction",
            Value::List(vec![Value::from(from), Value::from(to)]),
        );
    }
    v
}

pub fn offer(s: &Sdp<'_>) -> Value {
    base("offer", s)
}

pub fn answer(s: &Sdp<'_>) -> Value {
    let mut v = base("answer", s);
    // `direction` means nothing in an answer (ng docs).
    if let Value::Dict(d) = &mut v {
        d.remove(b"direction".as_slice());
    }
    v
}

pub fn delete(call_id: &str, from_tag: Option<&str>, to_tag: Option<&str>) -> Value {
    let mut v = Value::dict()
        .with("command", "delete")
        .with("call-id", call_id);
    if let Some(t) = from_tag {
        v = v.with("from-tag", t);
    }
    if let Some(t) = to_tag {
        v = v.with("to-tag", t);
    }
    v
}

/// Whether the media node has a call (`result: ok`, else an error).
pub fn query(call_id: &str) -> Value {
    Value::dict()
        .with("command", "query")
        .with("call-id", call_id)
}

/// The most calls a `list` reply names.
pub const LIST_LIMIT: usize = 1000;

pub fn list() -> Value {
    Value::dict()
        .with("command", "list")
        .with("limit", LIST_LIMIT as i64)
}

/// The Call-IDs a media node has, when its `list` reply names them all
/// (fewer than [`LIST_LIMIT`]; ng's `calls`, rtpengine's too).
pub fn listed(reply: &Value) -> Option<std::collections::HashSet<&str>> {
    if reply.get("result").and_then(Value::as_str) != Some("ok") {
        return None;
    }
    let calls = reply.get("calls")?.as_list()?;
    if calls.len() >= LIST_LIMIT {
        return None;
    }
    calls.iter().map(Value::as_str).collect()
}

/// The rewritten SDP of an ok reply, or why there is none.
pub fn sdp_of(reply: &Value) -> Result<Vec<u8>, MediaError> {
    match reply.get("result").and_then(Value::as_str) {
        Some("ok") => reply
            .get("sdp")
            .and_then(Value::as_bytes)
            .map(<[u8]>::to_vec)
            .ok_or(MediaError::NoSdp),
        Some("error") => Err(MediaError::Refused {
            reason: reply
                .get("error-reason")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }),
        other => Err(MediaError::UnexpectedResult {
            result: other.map(str::to_owned),
        }),
    }
}

/// Call-IDs a media node ended by itself (media-relay's `list` extension).
pub fn timed_out(reply: &Value) -> Vec<String> {
    reply
        .get("timed out")
        .and_then(Value::as_list)
        .map(|l| {
            l.iter()
                .filter_map(|e| e.get("call-id").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Agent {
    fn interface_name(&self, side: Side) -> Option<&str> {
        match side {
            Side::Trunk(_) => self.cfg.media_trunk_interface.as_deref(),
            Side::Pbx => self.cfg.media_pbx_interface.as_deref(),
        }
    }

    pub(super) fn direction(&self, from: Side, to: Side) -> Option<(String, String)> {
        Some((
            self.interface_name(from)?.to_owned(),
            self.interface_name(to)?.to_owned(),
        ))
    }

    pub(super) fn node_for(&self, call_id: &str) -> SocketAddr {
        // Stable spread of calls over media nodes.
        let h = call_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        self.cfg.media[(h % self.cfg.media.len() as u64) as usize]
    }

    /// Free a call: delete its media (unless `to_tag` names one losing
    /// branch only) and forget it.
    pub(super) fn end_call(&mut self, call_id: &str, reason_log: Option<&str>) {
        if let Some(call) = self.forget(call_id) {
            if !call.ended {
                let req = delete(call_id, Some(&call.caller_tag), None);
                self.ng(call.node, req, Pending::Delete);
            }
            if let Some(r) = reason_log {
                info!(%call_id, reason = r, "call ended");
            }
        }
    }

    /// Ask the media node to anchor `msg`'s SDP offer; `fwd` leaves (with
    /// the node's SDP) when the reply comes.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per kind of offer; a struct would only rename them"
    )]
    pub(super) fn offer_then_forward(
        &mut self,
        node: SocketAddr,
        msg: &Message,
        offerer: &Party<'_>,
        direction: Option<(String, String)>,
        key: ServerKey,
        fwd: Message,
        out: Peer,
        branch: String,
    ) {
        let via_branch = msg.top_via().branch;
        let req = offer(&Sdp {
            call_id: msg.call_id(),
            from_tag: offerer.tag,
            to_tag: offerer.other,
            via_branch: via_branch.as_deref(),
            body: msg.body(),
            received_from: offerer.source,
            direction: direction.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
            label: offerer.side.map(Side::label),
        });
        self.ng(
            node,
            req,
            Pending::Request {
                server: Some(key),
                message: fwd,
                peer: out,
                branch,
            },
        );
    }

    /// An 18x/2xx with SDP: the answer to the INVITE's offer — or, for a
    /// late offer, the offer itself.
    pub(super) fn response_sdp(
        &mut self,
        server: ServerKey,
        request: Message,
        msg: Message,
        now: Instant,
    ) {
        let call_id = msg.call_id().to_owned();
        let status = msg.status().unwrap_or(0);
        let to_tag = msg.to_tag().unwrap_or_default();
        let cseq = msg.cseq().0;
        let cache_key = (cseq, to_tag.clone(), status);
        let cached = self
            .calls
            .get(&call_id)
            .and_then(|c| c.sdp_cache.get(&cache_key).cloned());
        if let Some(sdp) = cached {
            let mut m = msg;
            let ct = m.content_type();
            m.set_body(sdp, ct.as_deref());
            self.forward_response(&server, m, now);
            return;
        }
        let received = self
            .clients
            .values()
            .find(|c| c.server.as_ref() == Some(&server))
            .map_or_else(|| self.cfg.pbx.ip(), |c| c.peer.remote.ip());
        let (node, late, from_side, to_side) = match self.calls.get_mut(&call_id) {
            Some(c) => {
                if !c.answered_tags.contains(&to_tag) {
                    c.answered_tags.push(to_tag.clone());
                }
                (
                    c.node,
                    c.late_offer && request.to_tag().is_none(),
                    c.from_side,
                    c.to_side,
                )
            }
            None => (self.node_for(&call_id), false, Side::Pbx, Side::Pbx),
        };
        let req_from = request.from_tag().unwrap_or_default();
        let req_to = request.to_tag();
        let req = if late {
            // Late offer: the callee offers in the 2xx.
            let direction = self.direction(to_side, from_side);
            offer(&Sdp {
                call_id: &call_id,
                from_tag: &to_tag,
                to_tag: Some(&req_from),
                via_branch: None,
                body: msg.body(),
                received_from: received,
                direction: direction.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                label: Some(to_side.label()),
            })
        } else {
            let answerer = req_to.clone().unwrap_or(to_tag.clone());
            answer(&Sdp {
                call_id: &call_id,
                from_tag: &req_from,
                to_tag: Some(&answerer),
                via_branch: None,
                body: msg.body(),
                received_from: received,
                direction: None,
                label: Some(to_side.label()),
            })
        };
        self.ng(
            node,
            req,
            Pending::Response {
                server,
                message: msg,
                cache: Some((call_id, cache_key)),
            },
        );
    }

    /// The media node ended a call for lack of media: end it on both
    /// sides with a BYE.
    pub(super) fn media_timeout(&mut self, call_id: &str, now: Instant) {
        if self.bye_both_sides(call_id, "media timed out", now) {
            self.stats.media_timeouts += 1;
        }
    }

    /// Calls restored from an earlier agent's records are checked once,
    /// against the first `list` of their media node that names all its
    /// calls: one it does not have lost its media while no agent ran (it
    /// timed out and the report has scrolled out of `list`, or its BYE
    /// found no agent, or the node lost it). It is ended like a media
    /// timeout — for a call already over, the parties answer 481.
    pub(super) fn check_restored(&mut self, node: SocketAddr, reply: &Value, now: Instant) {
        let Some(listed) = listed(reply) else {
            return;
        };
        let mut gone = Vec::new();
        for (id, c) in &mut self.calls {
            if c.restored && c.node == node {
                if listed.contains(id.as_str()) {
                    c.restored = false;
                } else {
                    gone.push(id.clone());
                }
            }
        }
        for id in gone {
            if self.bye_both_sides(&id, "restored call unknown to its media node", now) {
                self.stats.restored_without_media += 1;
            }
        }
    }

    /// Forget a call and end it with a BYE to each side (as the other);
    /// whether it had a dialog to do so.
    fn bye_both_sides(&mut self, call_id: &str, why: &str, now: Instant) -> bool {
        let Some(call) = self.forget(call_id) else {
            return false;
        };
        let (from_side, to_side) = (call.from_side, call.to_side);
        let Some(d) = call.dialog else {
            return false;
        };
        info!(%call_id, why, "sending BYE to both sides");
        for (to_caller, local, side) in [
            (true, d.caller_side_local, from_side),
            (false, d.callee_side_local, to_side),
        ] {
            let Some(uri) = Message::uri_of(d.next_hop(to_caller)).ok() else {
                continue;
            };
            let Some(remote) = host_port(&uri) else {
                continue;
            };
            let transport = uri_transport(&uri).unwrap_or(Transport::Udp);
            let peer = Peer {
                transport,
                conn: None,
                local,
                remote,
            };
            let branch = self.new_branch();
            let via = self.via(advertise::facing(side), local, transport, &branch);
            match d.bye_to(to_caller, &via) {
                Some(bye) => self.start_client(branch, bye, peer, None, Purpose::OwnBye, now),
                None => warn!(%call_id, "could not build the BYE"),
            }
        }
        true
    }

    /// The node's reply to the offer of a request waiting in
    /// [`Pending::Request`]: forward the request with the node's SDP, or
    /// refuse it (503) if the media cannot be anchored.
    pub(super) fn on_offer_reply(
        &mut self,
        server: Option<ServerKey>,
        mut message: Message,
        peer: Peer,
        branch: String,
        reply: Option<&Value>,
        now: Instant,
    ) {
        match reply.map_or(Err(MediaError::NoAnswer), sdp_of) {
            Ok(sdp) => {
                let ct = message.content_type();
                message.set_body(sdp, ct.as_deref());
                self.start_client(branch, message, peer, server, Purpose::Forward, now);
            }
            Err(why) => {
                self.stats.ng_errors += 1;
                warn!(call_id = %message.call_id(), reason = %why, "media offer failed; refusing the request");
                let call_id = message.call_id().to_owned();
                if let Some(k) = server {
                    self.respond_with(
                        &k,
                        503,
                        &[("Warning", "399 media-relay \"media unavailable\"")],
                        now,
                    );
                }
                if message.method() == Method::Invite && message.to_tag().is_none() {
                    self.end_call(&call_id, Some("media unavailable"));
                }
            }
        }
    }

    /// The node's reply to the SDP of a response waiting in
    /// [`Pending::Response`]: forward it upstream, rewritten if it could be.
    pub(super) fn on_answer_reply(
        &mut self,
        server: ServerKey,
        mut message: Message,
        cache: Option<(String, (u32, String, u16))>,
        reply: Option<&Value>,
        now: Instant,
    ) {
        match reply.map(sdp_of) {
            Some(Ok(sdp)) => {
                if let Some((call_id, key)) = cache
                    && let Some(c) = self.calls.get_mut(&call_id)
                {
                    c.sdp_cache.insert(key, sdp.clone());
                }
                let ct = message.content_type();
                message.set_body(sdp, ct.as_deref());
            }
            _ => {
                // The answer cannot be anchored; the call still
                // goes on (media flows end to end).
                self.stats.ng_errors += 1;
                warn!(call_id = %message.call_id(), "media answer failed; forwarding the SDP unchanged");
            }
        }
        self.forward_response(&server, message, now);
    }

    /// The node's reply to the answer in an ACK (late offer): send the ACK
    /// on, rewritten if it could be.
    pub(super) fn on_ack_reply(&mut self, mut message: Message, peer: Peer, reply: Option<&Value>) {
        if let Some(Ok(sdp)) = reply.map(sdp_of) {
            let ct = message.content_type();
            message.set_body(sdp, ct.as_deref());
        } else {
            self.stats.ng_errors += 1;
        }
        self.send(peer, message.to_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies() {
        let s = Sdp {
            call_id: "c",
            from_tag: "a",
            to_tag: None,
            via_branch: Some("z9hG4bK1"),
            body: b"v=0\r\n",
            received_from: "198.18.1.2".parse().unwrap(),
            direction: Some(("carrier", "pbx")),
            label: Some("trunk"),
        };
        let o = offer(&s);
        assert_eq!(o.get("label").and_then(Value::as_str), Some("trunk"));
        assert_eq!(o.get("command").and_then(Value::as_str), Some("offer"));
        assert_eq!(
            o.get("direction")
                .and_then(Value::as_list)
                .map(<[Value]>::len),
            Some(2)
        );
        let a = answer(&Sdp {
            to_tag: Some("b"),
            label: Some("pbx"),
            ..s
        });
        assert_eq!(a.get("label").and_then(Value::as_str), Some("pbx"));
        assert!(a.get("direction").is_none());
        assert_eq!(a.get("to-tag").and_then(Value::as_str), Some("b"));
        let ok = Value::dict().with("result", "ok").with("sdp", "v=0");
        assert_eq!(sdp_of(&ok).unwrap(), b"v=0");
        let err = Value::dict()
            .with("result", "error")
            .with("error-reason", "Ran out of ports");
        assert_eq!(sdp_of(&err).unwrap_err().to_string(), "Ran out of ports");
        let l = Value::dict().with(
            "timed out",
            Value::List(vec![
                Value::dict().with("call-id", "x").with("reason", "timeout"),
            ]),
        );
        assert_eq!(timed_out(&l), vec!["x".to_owned()]);
    }
}
