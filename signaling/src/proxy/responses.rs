//! Responses from downstream (RFC 3261 §16.7): matched to their client
//! transaction, the ACK of a non-2xx final built, a pending CANCEL sent,
//! the dialog of a 2xx remembered, and the response forwarded upstream —
//! through the media node when it carries SDP.

use std::time::Instant;

use tracing::debug;

use super::{
    Peer,
    agent::{Agent, Pending, Purpose, ServerKey, TxRef},
    dialog::Dialog,
    in_dialog::signature_param,
    media,
    routing::host_port,
};
use crate::{
    message::{Message, Method},
    transaction::ResponseVerdict,
};

impl Agent {
    pub(super) fn on_response(&mut self, _peer: Peer, mut msg: Message, now: Instant) {
        let status = msg.status().unwrap_or(0);
        let via = msg.top_via();
        let Some(branch) = via.branch.clone() else {
            self.stats.stray_responses += 1;
            return;
        };
        let key = if msg.method() == Method::Cancel {
            format!("{branch}/CANCEL")
        } else {
            branch
        };
        let Some(c) = self.clients.get_mut(&key) else {
            self.stats.stray_responses += 1;
            return;
        };
        let (verdict, actions) = c.tx.on_response(status, now);
        let next = c.tx.next_deadline();
        self.run_client_actions(&key, actions, now);
        self.schedule(next, TxRef::Client(key.clone()));
        if verdict == ResponseVerdict::Absorb {
            return;
        }
        let Some(c) = self.clients.get_mut(&key) else {
            return;
        };
        let (purpose, server, request) = (c.purpose, c.server.clone(), c.request.clone());
        let cancel_now = c.cancel_pending && (101..200).contains(&status);
        if cancel_now {
            c.cancel_pending = false;
        }
        // The ACK of a non-2xx final (§17.1.1.3), built here, sent by the
        // transaction (and again on retransmissions).
        if request.method() == Method::Invite && status >= 300 {
            let ack = request.ack_for(&msg).to_bytes();
            let actions = c.tx.set_ack(ack);
            self.run_client_actions(&key, actions, now);
        }
        if cancel_now {
            self.send_cancel(&key, now);
        }
        if purpose != Purpose::Forward {
            return;
        }
        let Some(server) = server else { return };
        msg.pop_via();
        // RFC 3261 §16.7 step 3: with no Via left the response was meant
        // for the agent itself and must not be forwarded — upstream could
        // not match it to its request, nor even parse it (found by the
        // `sip_agent` fuzz target: a PBX's 200 to a BYE whose second Via
        // was mangled).
        if msg.via_count() == 0 {
            self.stats.stray_responses += 1;
            debug!(status, "response without the Via of its upstream dropped");
            return;
        }
        let method = request.method();
        let call_id = msg.call_id().to_owned();
        if method == Method::Invite && status == 100 {
            return;
        }
        if method == Method::Bye && status >= 200 {
            self.forget(&call_id);
        }
        if method == Method::Invite && status >= 300 {
            let established = self.calls.get(&call_id).is_some_and(|c| c.dialog.is_some());
            if established {
                // A re-INVITE failed: the call goes on.
            } else {
                self.end_call(&call_id, Some("failed"));
            }
            self.forward_response(&server, msg, now);
            return;
        }
        if method == Method::Invite && (200..300).contains(&status) {
            self.establish(&call_id, &request, &msg, &server, now);
        }
        let has_sdp = !msg.body().is_empty();
        let media_method = matches!(method, Method::Invite | Method::Update);
        if has_sdp && media_method && status < 300 {
            self.response_sdp(server, request, msg, now);
            return;
        }
        self.forward_response(&server, msg, now);
    }

    /// Remember the dialog of the first 2xx to an initial INVITE, and drop
    /// the media of branches that lost (forking).
    fn establish(
        &mut self,
        call_id: &str,
        forwarded: &Message,
        ok: &Message,
        server: &ServerKey,
        now: Instant,
    ) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        if call.dialog.is_some() || forwarded.to_tag().is_some() {
            return;
        }
        let (from_side, to_side) = (call.from_side, call.to_side);
        let caller_local = self
            .servers
            .get(server)
            .map_or(self.listen_of(from_side), |s| s.peer.local);
        let callee_local = self.listen_of(to_side);
        // Our entries in the 2xx's Record-Route: ours by any of our
        // addresses (the advertised one may have changed since the INVITE)
        // and signed for this call.
        let ours = |rr: &str| {
            Message::uri_of(rr)
                .ok()
                .and_then(|u| host_port(&u))
                .is_some_and(|a| self.is_ours(a))
                && signature_param(rr).is_some_and(|mr| self.key.verify(call_id, mr))
        };
        let dialog = Dialog::establish(forwarded, ok, &ours, caller_local, callee_local);
        let winner = ok.to_tag();
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        call.dialog = dialog;
        let losers: Vec<String> = call
            .answered_tags
            .iter()
            .filter(|t| Some(*t) != winner.as_ref())
            .cloned()
            .collect();
        let (node, caller) = (call.node, call.caller_tag.clone());
        for t in losers {
            let req = media::delete(call_id, Some(&caller), Some(&t));
            self.ng(node, req, Pending::Delete);
        }
        // What a restarted agent needs to know of the call (`record.rs`).
        self.save(call_id, now);
    }
}
