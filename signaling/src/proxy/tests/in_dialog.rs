//! In-dialog requests (issue 16, item 4): forwarded only for a dialog the
//! agent knows or with the agent's own signed Route entry, and only to the
//! other side's peers; everything else refused, counted, rate-limited, and
//! never reaching a media node.

use std::time::Instant;

use super::{
    P_LISTEN, PBX, SDP, Sent, T_LISTEN, TRUNK, config, forwarded_invite, from_pbx, from_trunk, key,
    ok_sdp, outputs, response, sa,
};
use crate::{
    message::{Message, Method},
    proxy::{Agent, NgOutcome, Peer},
};

/// An agent as started by the runtime.
fn agent(now: Instant) -> Agent {
    Agent::new(config(10), key(), now)
}

/// The same agent after a restart: it remembers no call, but has the same
/// secret (`runtime/secret.rs`).
fn restarted(now: Instant) -> Agent {
    Agent::new(config(10), key(), now)
}

/// An in-dialog request (it has a To tag) as a UA builds it from its route
/// set (RFC 3261 §12.2.1.1).
struct InDialog<'a> {
    method: Method,
    uri: &'a str,
    call_id: &'a str,
    from_tag: &'a str,
    to_tag: &'a str,
    routes: &'a [String],
    branch: &'a str,
    body: &'a str,
}

impl InDialog<'_> {
    fn message(&self) -> Message {
        let method = self.method.as_str();
        let (via_host, body_type) = (
            "198.18.0.9:5060",
            if self.body.is_empty() {
                String::new()
            } else {
                "Content-Type: application/sdp\r\n".to_owned()
            },
        );
        let routes: String = self
            .routes
            .iter()
            .map(|r| format!("Route: {r}\r\n"))
            .collect();
        let text = format!(
            "{method} {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {via_host};branch={branch}\r\n\
             {routes}\
             Max-Forwards: 70\r\n\
             From: <sip:a@198.18.1.2>;tag={from_tag}\r\n\
             To: <sip:b@198.18.2.2>;tag={to_tag}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 5 {method}\r\n\
             Contact: <sip:a@198.18.1.2:5060>\r\n\
             {body_type}\
             Content-Length: {len}\r\n\r\n{body}",
            uri = self.uri,
            branch = self.branch,
            from_tag = self.from_tag,
            to_tag = self.to_tag,
            call_id = self.call_id,
            len = self.body.len(),
            body = self.body,
        );
        Message::parse(text.as_bytes()).unwrap()
    }
}

fn request<'a>(method: Method, uri: &'a str, routes: &'a [String]) -> InDialog<'a> {
    InDialog {
        method,
        uri,
        call_id: "never-seen@198.18.1.2",
        from_tag: "caller-tag",
        to_tag: "callee-tag",
        routes,
        branch: "z9hG4bK-in-dialog",
        body: "",
    }
}

/// What went anywhere but back to `source`, and every ng command.
fn forwarded(sent: &Sent, source: Peer) -> (Vec<String>, Vec<String>) {
    let elsewhere = sent
        .0
        .iter()
        .filter(|(p, _)| p.remote != source.remote)
        .map(|(p, m)| format!("{:?} to {}", m.method(), p.remote))
        .collect();
    let ng = sent
        .1
        .iter()
        .map(|(_, r)| {
            r.get("command")
                .and_then(ng::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    (elsewhere, ng)
}

/// The statuses sent back to `source`.
fn answers(sent: &Sent, source: Peer) -> Vec<Option<u16>> {
    sent.0
        .iter()
        .filter(|(p, _)| p.remote == source.remote)
        .map(|(_, m)| m.status())
        .collect()
}

/// A call set up through `a` (INVITE, 200, answer): the Record-Route
/// entries the agent put in the INVITE, as the PBX received them.
fn established(a: &mut Agent, now: Instant) -> Vec<String> {
    let fwd = forwarded_invite(a, now);
    let rr = fwd.record_routes();
    let mut ok = response(&fwd, 200, SDP);
    for r in rr.iter().rev() {
        ok.prepend_record_route(r);
    }
    a.on_message(from_pbx(), ok, now);
    let (_, ngs) = outputs(a);
    a.on_ng(ngs[0].0, ok_sdp("v=0\r\nanswer"), now);
    outputs(a);
    rr
}

#[test]
fn an_unknown_in_dialog_request_is_refused_and_never_forwarded() {
    let now = Instant::now();
    let mut a = agent(now);
    // Toll fraud / reflection: a To tag and a Request-URI anywhere.
    for (method, uri) in [
        (Method::Message, "sip:victim@198.18.9.9:5060"),
        (Method::Invite, "sip:+4930123@198.18.9.9:5060"),
        (Method::Info, "sip:100@198.18.2.2:5060"),
    ] {
        let m = request(method, uri, &[]).message();
        a.on_message(from_trunk(), m, now);
        let sent = outputs(&mut a);
        let (elsewhere, ng) = forwarded(&sent, from_trunk());
        assert!(elsewhere.is_empty(), "{method:?} forwarded: {elsewhere:?}");
        assert!(ng.is_empty(), "{method:?} reached the media node: {ng:?}");
        assert_eq!(answers(&sent, from_trunk()), vec![Some(481)], "{method:?}");
    }
    assert_eq!(refused(&a, "unknown_dialog"), 3);
    assert!(
        a.stats_json()
            .contains("\"in_dialog_refused\":{\"unknown_dialog\":3}"),
        "{}",
        a.stats_json()
    );
    // The ACK of a 2xx is never answered, only counted. (The ACK of the
    // INVITE's 481 would have the INVITE's branch: absorbed.)
    let ack = InDialog {
        branch: "z9hG4bK-an-ack",
        ..request(Method::Ack, "sip:victim@198.18.9.9:5060", &[])
    }
    .message();
    a.on_message(from_trunk(), ack, now);
    let sent = outputs(&mut a);
    assert!(sent.0.is_empty() && sent.1.is_empty(), "{sent:?}");
    assert_eq!(refused(&a, "unknown_dialog"), 4);
}

/// The agent's count of in-dialog requests refused for `reason`.
fn refused(a: &Agent, reason: &str) -> u64 {
    a.stats()
        .in_dialog_refused
        .get(reason)
        .copied()
        .unwrap_or_default()
}

#[test]
fn a_reinvite_with_sdp_for_an_unknown_unsigned_call_reaches_no_media_node() {
    let now = Instant::now();
    let mut a = agent(now);
    // 2 500 of these used to lease the whole default port range for an hour.
    for i in 0..50 {
        let call_id = format!("spoofed-{i}");
        let branch = format!("z9hG4bK-spoof-{i}");
        for method in [Method::Invite, Method::Update] {
            let m = InDialog {
                call_id: &call_id,
                branch: &branch,
                body: SDP,
                ..request(method, "sip:100@198.18.2.2:5060", &[])
            }
            .message();
            a.on_message(from_trunk(), m, now);
            let sent = outputs(&mut a);
            let (elsewhere, ng) = forwarded(&sent, from_trunk());
            assert!(ng.is_empty(), "{method:?} {i}: ng {ng:?}");
            assert!(elsewhere.is_empty(), "{method:?} {i}: {elsewhere:?}");
        }
    }
    assert_eq!(a.calls(), 0);
    assert_eq!(refused(&a, "unknown_dialog"), 100);
}

#[test]
fn a_forged_signature_is_refused() {
    let now = Instant::now();
    let mut a = agent(now);
    let routes = [
        "<sip:198.18.1.1:5060;lr;mr=00112233445566778899aabb>".to_owned(),
        "<sip:198.18.2.1:5060;lr;mr=00112233445566778899aabb>".to_owned(),
    ];
    let m = request(Method::Bye, "sip:100@198.18.2.2:5060", &routes).message();
    a.on_message(from_trunk(), m, now);
    let sent = outputs(&mut a);
    let (elsewhere, ng) = forwarded(&sent, from_trunk());
    assert!(elsewhere.is_empty(), "{elsewhere:?}");
    assert!(ng.is_empty(), "a forged BYE deleted media: {ng:?}");
    assert_eq!(answers(&sent, from_trunk()), vec![Some(481)]);
    assert_eq!(refused(&a, "bad_signature"), 1);
}

#[test]
fn a_bye_for_an_unknown_unsigned_call_deletes_nothing() {
    let now = Instant::now();
    let mut a = agent(now);
    // Our addresses, but no signature: anyone could have written them.
    let routes = [
        "<sip:198.18.2.1:5060;lr>".to_owned(),
        "<sip:198.18.1.1:5060;lr>".to_owned(),
    ];
    let m = InDialog {
        from_tag: "callee-tag",
        to_tag: "caller-tag",
        ..request(Method::Bye, "sip:caller@198.18.1.2:5060", &routes)
    }
    .message();
    a.on_message(from_pbx(), m, now);
    let sent = outputs(&mut a);
    let (elsewhere, ng) = forwarded(&sent, from_pbx());
    assert!(ng.is_empty(), "media deleted: {ng:?}");
    assert!(elsewhere.is_empty(), "{elsewhere:?}");
    assert_eq!(answers(&sent, from_pbx()), vec![Some(481)]);
    assert_eq!(refused(&a, "unknown_dialog"), 1);
}

/// The agent restarted: it remembers no call, but its signed Route entries
/// still open the way (the signing secret survives the restart), and a
/// BYE still deletes the media.
#[test]
fn a_signed_request_is_forwarded_after_a_restart() {
    let now = Instant::now();
    let mut before = agent(now);
    let rr = established(&mut before, now);
    assert!(
        rr.iter().all(|r| r.contains(";mr=")),
        "Record-Route entries are signed: {rr:?}"
    );
    drop(before);
    let mut a = restarted(now);
    // The PBX (callee) uses the route set as recorded (§12.1.2: in order).
    let m = InDialog {
        from_tag: "callee-tag",
        to_tag: "caller-tag",
        call_id: "call-1@198.18.1.2",
        ..request(Method::Bye, "sip:caller@198.18.1.2:5060", &rr)
    }
    .message();
    a.on_message(from_pbx(), m, now);
    let sent = outputs(&mut a);
    let (elsewhere, ng) = forwarded(&sent, from_pbx());
    assert_eq!(elsewhere, vec![format!("Bye to {TRUNK}")]);
    assert_eq!(ng, vec!["delete".to_owned()]);
    let (peer, m) = sent.0.iter().find(|(p, _)| p.remote == sa(TRUNK)).unwrap();
    assert_eq!(peer.local, sa(T_LISTEN), "leaves from the trunk side");
    assert!(m.routes().is_empty(), "our entries popped");
}

/// A valid signature says the agent record-routed this Call-ID, not where
/// the request may go: a party of a call cannot use its route set to reach
/// an arbitrary host, the agent itself, or its own side.
#[test]
fn a_signed_request_goes_only_to_the_other_sides_peers() {
    let now = Instant::now();
    let mut before = agent(now);
    let rr = established(&mut before, now);
    drop(before);
    let mut a = restarted(now);
    // The caller uses the route set reversed (§12.1.2).
    let reversed: Vec<String> = rr.iter().rev().cloned().collect();
    for (i, uri) in [
        "sip:victim@198.18.9.9:5060",
        "sip:x@198.18.2.1:5070",
        "sip:x@198.18.1.7:5060",
        "sip:x@127.0.0.1:2223",
    ]
    .into_iter()
    .enumerate()
    {
        let branch = format!("z9hG4bK-target-{i}");
        let m = InDialog {
            call_id: "call-1@198.18.1.2",
            branch: &branch,
            ..request(Method::Message, uri, &reversed)
        }
        .message();
        a.on_message(from_trunk(), m, now);
        let sent = outputs(&mut a);
        let (elsewhere, ng) = forwarded(&sent, from_trunk());
        assert!(elsewhere.is_empty(), "to {uri}: {elsewhere:?}");
        assert!(ng.is_empty());
        assert_eq!(answers(&sent, from_trunk()), vec![Some(403)], "to {uri}");
    }
    assert_eq!(refused(&a, "forbidden_target"), 4);
    // To the PBX it goes.
    let m = InDialog {
        call_id: "call-1@198.18.1.2",
        branch: "z9hG4bK-target-ok",
        ..request(Method::Message, "sip:100@198.18.2.2:5060", &reversed)
    }
    .message();
    a.on_message(from_trunk(), m, now);
    let sent = outputs(&mut a);
    let (elsewhere, _) = forwarded(&sent, from_trunk());
    assert_eq!(elsewhere, vec![format!("Message to {PBX}")]);
    assert_eq!(sent.0[0].0.local, sa(P_LISTEN));
}

/// A dialog the agent remembers needs no Route header at all (a UA that
/// dropped the route set): tags and Call-ID match.
#[test]
fn a_known_dialog_needs_no_signature_but_its_tags_must_match() {
    let now = Instant::now();
    let mut a = agent(now);
    established(&mut a, now);
    let m = InDialog {
        from_tag: "callee-tag",
        to_tag: "caller-tag",
        call_id: "call-1@198.18.1.2",
        ..request(Method::Info, "sip:caller@198.18.1.2:5060", &[])
    }
    .message();
    a.on_message(from_pbx(), m, now);
    let sent = outputs(&mut a);
    assert_eq!(
        forwarded(&sent, from_pbx()).0,
        vec![format!("Info to {TRUNK}")]
    );
    // Same Call-ID, a tag of another dialog: not this call.
    let m = InDialog {
        from_tag: "someone-else",
        to_tag: "caller-tag",
        call_id: "call-1@198.18.1.2",
        branch: "z9hG4bK-other-tag",
        ..request(Method::Bye, "sip:caller@198.18.1.2:5060", &[])
    }
    .message();
    a.on_message(from_pbx(), m, now);
    let sent = outputs(&mut a);
    let (elsewhere, ng) = forwarded(&sent, from_pbx());
    assert!(
        elsewhere.is_empty() && ng.is_empty(),
        "{elsewhere:?} {ng:?}"
    );
    assert_eq!(answers(&sent, from_pbx()), vec![Some(481)]);
    assert_eq!(a.calls(), 1, "the call goes on");
}

/// Refusals are answered at a bounded rate per source (no reflection
/// amplifier), and every one is counted.
#[test]
fn refusals_are_rate_limited_per_source() {
    let now = Instant::now();
    let mut a = agent(now);
    let mut answered = 0;
    for i in 0..500 {
        let branch = format!("z9hG4bK-flood-{i}");
        let m = InDialog {
            branch: &branch,
            ..request(Method::Message, "sip:victim@198.18.9.9:5060", &[])
        }
        .message();
        a.on_message(from_trunk(), m, now);
        let sent = outputs(&mut a);
        assert!(forwarded(&sent, from_trunk()).0.is_empty());
        answered += answers(&sent, from_trunk()).len();
    }
    assert!(
        (1..=50).contains(&answered),
        "{answered} of 500 refusals answered"
    );
    assert!(a.transactions() <= 50, "{} transactions", a.transactions());
    assert_eq!(refused(&a, "unknown_dialog"), 500, "every one counted");
    assert_eq!(a.stats().refusals_unanswered, 500 - answered as u64);
}

/// A validly signed re-INVITE for a call the agent forgot (it restarted):
/// the media node is asked whether it still has the call before anything
/// is offered — an old signature must not create media for a call that
/// ended.
#[test]
fn a_signed_reoffer_for_a_forgotten_call_needs_the_media_node_to_know_it() {
    let now = Instant::now();
    let mut before = agent(now);
    let rr = established(&mut before, now);
    drop(before);
    let reversed: Vec<String> = rr.iter().rev().cloned().collect();
    for (known, branch) in [(false, "z9hG4bK-re-1"), (true, "z9hG4bK-re-2")] {
        let mut a = restarted(now);
        let m = InDialog {
            call_id: "call-1@198.18.1.2",
            branch,
            body: SDP,
            ..request(Method::Invite, "sip:100@198.18.2.2:5060", &reversed)
        }
        .message();
        a.on_message(from_trunk(), m, now);
        let sent = outputs(&mut a);
        let (elsewhere, ng) = forwarded(&sent, from_trunk());
        assert!(elsewhere.is_empty());
        assert_eq!(ng, vec!["query".to_owned()], "asks first");
        let reply = if known {
            ng::Value::dict().with("result", "ok")
        } else {
            ng::Value::dict()
                .with("result", "error")
                .with("error-reason", "Unknown call-id")
        };
        a.on_ng(sent.1[0].0, NgOutcome::Reply(reply), now);
        let sent = outputs(&mut a);
        let (_, ng) = forwarded(&sent, from_trunk());
        if known {
            assert_eq!(ng, vec!["offer".to_owned()]);
        } else {
            assert!(ng.is_empty(), "{ng:?}");
            assert!(answers(&sent, from_trunk()).contains(&Some(481)));
            assert_eq!(refused(&a, "ended_call"), 1);
        }
    }
}
