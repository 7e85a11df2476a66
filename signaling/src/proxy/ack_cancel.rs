//! ACK and CANCEL, the two requests that do not get a transaction of
//! their own here: an ACK is absorbed by the INVITE's server transaction or
//! forwarded statelessly (RFC 3261 §16.6, §17.2.1); a CANCEL is answered at
//! once and cancels the forwarded INVITE (§9.2, §16.10).

use std::time::Instant;

use tracing::debug;

use super::{
    Peer, advertise,
    agent::{Agent, Pending, Purpose, ServerKey, Side},
    in_dialog::Forward,
    media::{self, Sdp},
};
use crate::message::{Message, Method};

impl Agent {
    /// ACK: for a non-2xx final it belongs to our server transaction
    /// (absorbed); for a 2xx it is a request of its own, forwarded
    /// statelessly by its Route headers — with the answer SDP of a late
    /// offer rewritten.
    pub(super) fn on_ack(&mut self, peer: Peer, side: Side, msg: Message, now: Instant) {
        let via = msg.top_via();
        let key: ServerKey = (
            via.branch.clone().unwrap_or_default(),
            format!("{}:{}", via.host, via.port_or_default()),
            Method::Invite.as_str().to_owned(),
        );
        if let Some(s) = self.servers.get_mut(&key)
            && s.tx.on_ack(now)
        {
            return;
        }
        if msg.to_tag().is_none() {
            return;
        }
        // The ACK of a 2xx: an in-dialog request like any other
        // (`in_dialog.rs`), but never answered.
        let Forward {
            mut fwd,
            out,
            known,
        } = match self.route_in_dialog(side, peer, &msg) {
            Ok(f) => f,
            Err(refusal) => {
                debug!(remote = %peer.remote, reason = refusal.reason(), "in-dialog ACK dropped");
                self.count_refused(refusal);
                return;
            }
        };
        fwd.set_max_forwards(msg.max_forwards().saturating_sub(1));
        let branch = self.new_branch();
        fwd.push_via(&self.via(advertise::opposite(side), out.local, out.transport, &branch));
        let call_id = msg.call_id().to_owned();
        let late = known && self.calls.get(&call_id).is_some_and(|c| c.late_offer);
        if late && !msg.body().is_empty() {
            // The callee offered in its 2xx; the ACK answers: the offerer
            // is the callee (the ACK's To), the answerer the caller.
            let node = self
                .calls
                .get(&call_id)
                .map_or_else(|| self.node_for(&call_id), |c| c.node);
            let to_tag = msg.to_tag().unwrap_or_default();
            let from_tag = msg.from_tag();
            // The answerer is the caller.
            let caller_side = self.calls.get(&call_id).map(|c| c.from_side);
            let req = media::answer(&Sdp {
                call_id: &call_id,
                from_tag: &to_tag,
                to_tag: from_tag.as_deref(),
                via_branch: None,
                body: msg.body(),
                received_from: peer.remote.ip(),
                direction: None,
                label: caller_side.map(Side::label),
            });
            self.ng(
                node,
                req,
                Pending::Ack {
                    message: fwd,
                    peer: out,
                },
            );
            return;
        }
        self.send(out, fwd.to_bytes());
    }

    /// CANCEL (§9.2, §16.10): 200 at once; cancel downstream when it can
    /// be (after a provisional), or answer 487 ourselves if the INVITE has
    /// not left yet (it waits for its media offer).
    pub(super) fn on_cancel(&mut self, peer: Peer, msg: &Message, now: Instant) {
        let via = msg.top_via();
        let key: ServerKey = (
            via.branch.clone().unwrap_or_default(),
            format!("{}:{}", via.host, via.port_or_default()),
            Method::Invite.as_str().to_owned(),
        );
        if !self.servers.contains_key(&key) {
            if self.refusals.admit(peer.remote.ip(), now) {
                self.respond_stateless(peer, msg, 481, &[]);
            } else {
                self.stats.refusals_unanswered += 1;
            }
            return;
        }
        self.respond_stateless(peer, msg, 200, &[]);
        let Some(entry) = self.servers.get_mut(&key) else {
            return;
        };
        if entry.tx.last_status().is_some_and(|s| s >= 200) || entry.cancelled {
            return;
        }
        entry.cancelled = true;
        let client = entry.client.clone();
        let call_id = msg.call_id().to_owned();
        match client {
            Some(branch) => {
                let send_now = self
                    .clients
                    .get(&branch)
                    .is_some_and(|c| c.tx.got_provisional());
                if send_now {
                    self.send_cancel(&branch, now);
                } else if let Some(c) = self.clients.get_mut(&branch) {
                    c.cancel_pending = true;
                }
            }
            None => {
                // Still waiting for the media offer: it will not be sent.
                self.pending.retain(|_, p| match p {
                    Pending::Request {
                        server: Some(k), ..
                    } => *k != key,
                    Pending::Reoffer(r) => r.server != key,
                    _ => true,
                });
                self.respond(&key, 487, now);
            }
        }
        self.end_call(&call_id, Some("cancelled"));
    }

    pub(super) fn send_cancel(&mut self, invite_branch: &str, now: Instant) {
        let Some(c) = self.clients.get(invite_branch) else {
            return;
        };
        let cancel = c.request.cancel();
        let peer = c.peer;
        self.start_client(
            format!("{invite_branch}/CANCEL"),
            cancel,
            peer,
            None,
            Purpose::Cancel,
            now,
        );
    }
}
