//! What the agent keeps of an established call: enough to route nothing
//! (in-dialog requests route by their Route headers, so a restarted agent
//! still works), but enough to end the call itself — a BYE to each side —
//! when the media node reports that its media timed out. It outlives the
//! agent's process as a record (`record.rs`).

use crate::message::{Message, Method};

/// One side of the dialog, as seen from the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Party {
    /// Where requests to this party go (its Contact).
    pub target: String,
    /// Route set towards it, beyond the agent (RFC 3261 §12.1).
    pub routes: Vec<String>,
    /// Its own From/To header value (with its tag) and the other's.
    pub own: String,
    pub other: String,
    /// Highest CSeq this party has used in its requests.
    pub cseq: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    pub call_id: String,
    pub caller: Party,
    pub callee: Party,
    /// Our Via/Record-Route addresses towards each: (caller side, callee side).
    pub caller_side_local: std::net::SocketAddr,
    pub callee_side_local: std::net::SocketAddr,
}

impl Dialog {
    /// From the INVITE as forwarded (with our Record-Routes on top) and the
    /// 2xx that established the dialog (its Record-Route list is the whole
    /// path: callee-side entries first, then ours, then caller-side ones).
    pub fn establish(
        invite: &Message,
        ok: &Message,
        ours: &dyn Fn(&str) -> bool,
        caller_side_local: std::net::SocketAddr,
        callee_side_local: std::net::SocketAddr,
    ) -> Option<Self> {
        let rr = ok.record_routes();
        let first_ours = rr.iter().position(|r| ours(r));
        let last_ours = rr.iter().rposition(|r| ours(r));
        let (callee_routes, caller_routes) = match (first_ours, last_ours) {
            (Some(f), Some(l)) => (
                rr[..f].to_vec(),
                rr[l + 1..].iter().rev().cloned().collect(),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        let caller_target = invite.contact_uri_str()?.to_owned();
        let callee_target = ok.contact_uri_str()?.to_owned();
        let from = invite.header("From")?;
        let to = ok.header("To")?;
        Some(Self {
            call_id: invite.call_id().to_owned(),
            caller: Party {
                target: caller_target,
                routes: caller_routes,
                own: from.clone(),
                other: to.clone(),
                cseq: invite.cseq().0,
            },
            callee: Party {
                target: callee_target,
                routes: callee_routes,
                own: to,
                other: from,
                cseq: 0,
            },
            caller_side_local,
            callee_side_local,
        })
    }

    /// Note a request a party sent (its CSeq); whether its highest CSeq
    /// rose.
    pub fn saw_request(&mut self, from_tag: Option<&str>, cseq: u32) -> bool {
        let caller_tag = tag_of(&self.caller.own);
        let p = if from_tag.is_some() && from_tag == caller_tag.as_deref() {
            &mut self.caller
        } else {
            &mut self.callee
        };
        let rose = cseq > p.cseq;
        p.cseq = p.cseq.max(cseq);
        rose
    }

    /// Where requests to that party go first: its first route, else its
    /// target.
    pub fn next_hop(&self, to_caller: bool) -> &str {
        let p = if to_caller {
            &self.caller
        } else {
            &self.callee
        };
        p.routes.first().map_or(p.target.as_str(), String::as_str)
    }

    /// A BYE to one party as if sent by the other (the agent ends the call
    /// on both sides), with the agent's `via`.
    pub fn bye_to(&self, to_caller: bool, via: &str) -> Option<Message> {
        let (to, from) = if to_caller {
            (&self.caller, &self.callee)
        } else {
            (&self.callee, &self.caller)
        };
        let cseq = format!(
            "{} BYE",
            from.cseq
                .saturating_add(1)
                .clamp(1, super::record::MAX_CSEQ)
        );
        let mut headers: Vec<(&str, &str)> = vec![("Via", via)];
        for r in &to.routes {
            headers.push(("Route", r));
        }
        headers.push(("From", &from.own));
        headers.push(("To", &to.own));
        headers.push(("Call-ID", &self.call_id));
        headers.push(("CSeq", &cseq));
        headers.push(("Max-Forwards", "70"));
        headers.push(("Reason", "Q.850;cause=102;text=\"media timeout\""));
        Message::request(Method::Bye, &to.target, &headers).ok()
    }
}

/// The `tag` parameter of a From/To header value.
pub fn tag_of(value: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("tag")
            .then(|| v.trim().to_owned())
    })
}
