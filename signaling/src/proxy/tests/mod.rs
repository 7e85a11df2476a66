//! The proxy core driven in memory: messages, ng replies and time in,
//! datagrams and ng requests out. No sockets.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{Agent, NgOutcome, Output, Peer, Transport};
use crate::{
    config::{SipConfig, SipFile},
    message::Message,
};

pub(super) const TRUNK: &str = "198.18.1.2:5060";
pub(super) const PBX: &str = "198.18.2.2:5060";
pub(super) const T_LISTEN: &str = "198.18.1.1:5060";
pub(super) const P_LISTEN: &str = "198.18.2.1:5060";

pub(super) fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) fn config(max_calls: u32) -> SipConfig {
    let f: SipFile = toml::from_str(&format!(
        r#"
trunk-listen = "{T_LISTEN}"
pbx-listen = "{P_LISTEN}"
pbx = "{PBX}"
max-calls = {max_calls}
media-trunk-interface = "carrier"
media-pbx-interface = "pbx"
[[trunk]]
name = "carrier"
sources = ["198.18.1.2"]
target = "{TRUNK}"
default = true
"#
    ))
    .unwrap();
    SipConfig::resolve(f).unwrap()
}

/// The signing key of the agents under test (a restarted agent has the
/// same).
pub(super) fn key() -> crate::proxy::RouteKey {
    crate::proxy::RouteKey::new(b"media-relay test secret, 32 bytes+").unwrap()
}

pub(super) fn from_trunk() -> Peer {
    Peer {
        transport: Transport::Udp,
        conn: None,
        local: sa(T_LISTEN),
        remote: sa(TRUNK),
    }
}

pub(super) fn from_pbx() -> Peer {
    Peer {
        transport: Transport::Udp,
        conn: None,
        local: sa(P_LISTEN),
        remote: sa(PBX),
    }
}

pub(super) const SDP: &str = "v=0\r\no=- 1 1 IN IP4 198.18.1.2\r\ns=-\r\nc=IN IP4 198.18.1.2\r\nt=0 0\r\nm=audio 5000 RTP/AVP 8\r\n";

pub(super) fn invite(branch: &str, body: &str) -> Message {
    let text = format!(
        "INVITE sip:100@198.18.1.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.18.1.2:5060;branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@198.18.1.2>;tag=caller-tag\r\n\
         To: <sip:100@198.18.1.1>\r\n\
         Call-ID: call-1@198.18.1.2\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:caller@198.18.1.2:5060>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    Message::parse(text.as_bytes()).unwrap()
}

/// Messages sent and ng requests made.
pub(super) type Sent = (Vec<(Peer, Message)>, Vec<(u64, ng::Value)>);

/// Dialog records emitted: (Call-ID, the record or `None`: forgotten).
pub(super) type Records = Vec<(String, Option<Vec<u8>>)>;

/// The agent's outputs, split, with the dialog records.
pub(super) fn outputs_and_records(a: &mut Agent) -> (Sent, Records) {
    let mut sends = Vec::new();
    let mut ngs = Vec::new();
    let mut records = Vec::new();
    for o in a.drain() {
        match o {
            Output::Send { peer, bytes } => sends.push((peer, Message::parse(&bytes).unwrap())),
            Output::Ng { id, request, .. } => ngs.push((id, request)),
            Output::Dialog { call_id, record } => records.push((call_id, record)),
        }
    }
    ((sends, ngs), records)
}

/// The agent's outputs, split (dialog records dropped).
pub(super) fn outputs(a: &mut Agent) -> Sent {
    outputs_and_records(a).0
}

pub(super) fn ok_sdp(sdp: &str) -> NgOutcome {
    NgOutcome::Reply(ng::Value::dict().with("result", "ok").with("sdp", sdp))
}

pub(super) const RELAYED: &str = "v=0\r\no=- 1 2 IN IP4 198.18.2.1\r\ns=-\r\nc=IN IP4 198.18.2.1\r\nt=0 0\r\nm=audio 30002 RTP/AVP 8\r\n";

/// An INVITE from the trunk, anchored and forwarded to the PBX.
pub(super) fn forwarded_invite(a: &mut Agent, now: Instant) -> Message {
    a.on_message(from_trunk(), invite("z9hG4bK-c1", SDP), now);
    let (sends, ngs) = outputs(a);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].1.status(), Some(100), "100 Trying at once");
    let (id, offer) = &ngs[0];
    assert_eq!(
        offer.get("command").and_then(ng::Value::as_str),
        Some("offer")
    );
    assert_eq!(
        offer.get("from-tag").and_then(ng::Value::as_str),
        Some("caller-tag")
    );
    assert_eq!(
        offer
            .get("direction")
            .and_then(ng::Value::as_list)
            .map(<[ng::Value]>::len),
        Some(2)
    );
    a.on_ng(*id, ok_sdp(RELAYED), now);
    let (sends, _) = outputs(a);
    assert_eq!(sends.len(), 1);
    let (peer, m) = sends[0].clone();
    assert_eq!(peer.remote, sa(PBX));
    assert_eq!(peer.local, sa(P_LISTEN));
    m
}

pub(super) fn response(to: &Message, status: u16, body: &str) -> Message {
    let mut r = to.response(status, "X", Some("callee-tag"));
    r.set_header("Contact", "<sip:100@198.18.2.2:5060>");
    if !body.is_empty() {
        r.set_body(body.as_bytes().to_vec(), Some("application/sdp"));
    }
    r
}

mod advertise;
mod in_dialog;
mod restart;

#[test]
fn invite_is_anchored_record_routed_and_forwarded() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let m = forwarded_invite(&mut a, now);
    assert_eq!(
        m.body(),
        RELAYED.as_bytes(),
        "SDP rewritten by the media node"
    );
    assert_eq!(m.max_forwards(), 69);
    assert_eq!(m.via_count(), 2);
    assert_eq!(m.top_via().host, "198.18.2.1");
    let mr = key().sign("call-1@198.18.1.2");
    assert_eq!(
        m.record_routes(),
        vec![
            format!("<sip:198.18.2.1:5060;lr;mr={mr}>"),
            format!("<sip:198.18.1.1:5060;lr;mr={mr}>")
        ],
        "one Record-Route per side, the PBX side on top, signed for the call"
    );
    assert_eq!(a.calls(), 1);
}

#[test]
fn answer_is_anchored_and_the_response_goes_back_with_our_via_popped() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let fwd = forwarded_invite(&mut a, now);
    a.on_message(from_pbx(), response(&fwd, 180, ""), now);
    let (sends, _) = outputs(&mut a);
    assert_eq!(sends[0].0.remote, sa(TRUNK));
    assert_eq!(sends[0].1.status(), Some(180));
    assert_eq!(sends[0].1.via_count(), 1, "our Via popped");
    a.on_message(from_pbx(), response(&fwd, 200, SDP), now);
    let (sends, ngs) = outputs(&mut a);
    assert!(sends.is_empty(), "the 200 waits for the answer");
    let (id, ans) = &ngs[0];
    assert_eq!(
        ans.get("command").and_then(ng::Value::as_str),
        Some("answer")
    );
    assert_eq!(
        ans.get("to-tag").and_then(ng::Value::as_str),
        Some("callee-tag")
    );
    a.on_ng(*id, ok_sdp("v=0\r\nanswer"), now);
    let (sends, _) = outputs(&mut a);
    assert_eq!(sends[0].1.status(), Some(200));
    assert_eq!(sends[0].1.body(), b"v=0\r\nanswer");
    // A retransmitted 200 is forwarded again, with the same SDP, no ng.
    a.on_message(from_pbx(), response(&fwd, 200, SDP), now);
    let (sends, ngs) = outputs(&mut a);
    assert!(ngs.is_empty());
    assert_eq!(sends[0].1.body(), b"v=0\r\nanswer");
}

#[test]
fn unknown_sources_and_hop_limits_are_refused() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let stranger = Peer {
        remote: sa("198.18.1.99:5060"),
        ..from_trunk()
    };
    a.on_message(stranger, invite("z9hG4bK-x", SDP), now);
    let (sends, ngs) = outputs(&mut a);
    assert_eq!(sends[0].1.status(), Some(403));
    assert!(ngs.is_empty());
    assert_eq!(a.stats().rejected_sources, 1);
    let mut m = invite("z9hG4bK-y", SDP);
    m.set_max_forwards(0);
    a.on_message(from_trunk(), m, now);
    let (sends, _) = outputs(&mut a);
    assert_eq!(sends[0].1.status(), Some(483));
}

/// Garbage floods: a 400 to a malformed request is a refusal like any
/// other, answered within `refusal-rate` (20 by default) per source and
/// second; the rest are counted, not answered, and other sources are
/// still answered.
#[test]
fn answers_to_malformed_requests_are_rate_limited_per_source() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let raw = |i: u32| {
        format!(
            "OPTIONS sip:x@198.18.1.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.1.9:5060;branch=z9hG4bK-{i}\r\n\
             From: <sip:g@198.18.1.9>;tag=g\r\nTo: <sip:x@198.18.1.1>\r\nCall-ID: g{i}\r\nCSeq: ABC OPTIONS\r\n\r\n"
        )
        .into_bytes()
    };
    let flooder = Peer {
        remote: sa("198.18.1.9:5060"),
        ..from_trunk()
    };
    let mut answered = 0;
    for i in 0..50 {
        let bytes = raw(i);
        let e = Message::parse(&bytes).unwrap_err();
        a.on_malformed(flooder, &bytes, &e, now);
        answered += sent_400s(&mut a);
    }
    assert_eq!(answered, 20, "one second's worth of refusals");
    assert_eq!(a.stats().malformed, 50);
    assert_eq!(a.stats().refusals_unanswered, 30);
    // Another source is answered; the flooder again a second later.
    let bytes = raw(99);
    let e = Message::parse(&bytes).unwrap_err();
    a.on_malformed(from_trunk(), &bytes, &e, now);
    assert_eq!(sent_400s(&mut a), 1);
    a.on_malformed(flooder, &bytes, &e, now + Duration::from_secs(1));
    assert_eq!(sent_400s(&mut a), 1);
}

/// 400s sent (they copy the malformed CSeq, so they do not parse).
fn sent_400s(a: &mut Agent) -> usize {
    a.drain()
        .into_iter()
        .filter(|o| matches!(o, Output::Send { bytes, .. } if bytes.starts_with(b"SIP/2.0 400 ")))
        .count()
}

#[test]
fn max_calls_gives_503() {
    let now = Instant::now();
    let mut a = Agent::new(config(1), key(), now);
    forwarded_invite(&mut a, now);
    let mut second = invite("z9hG4bK-2", SDP);
    second.set_header("Call-ID", "call-2");
    a.on_message(from_trunk(), second, now);
    let (sends, ngs) = outputs(&mut a);
    assert_eq!(sends[0].1.status(), Some(503));
    assert!(ngs.is_empty());
    assert_eq!(a.stats().max_calls_rejected, 1);
}

#[test]
fn retransmitted_invite_is_absorbed() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    forwarded_invite(&mut a, now);
    a.on_message(from_trunk(), invite("z9hG4bK-c1", SDP), now);
    let (sends, ngs) = outputs(&mut a);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].1.status(), Some(100), "the last response again");
    assert!(ngs.is_empty(), "never applied twice");
}

/// Found by the `sip_agent` fuzz target: a response whose only Via is
/// ours was forwarded upstream with none (RFC 3261 §16.7 step 3: it is
/// meant for the agent and must not be forwarded).
#[test]
fn a_response_with_only_our_via_is_not_forwarded() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let fwd = forwarded_invite(&mut a, now);
    let ours = fwd.headers("Via")[0].clone();
    let only_ours = |status, body| {
        let mut r = response(&fwd, status, body);
        r.remove_header("Via");
        r.push_via(&ours);
        r
    };
    a.on_message(from_pbx(), only_ours(180, ""), now);
    let (sends, _) = outputs(&mut a);
    assert!(sends.is_empty(), "nothing forwarded: {sends:?}");
    // The transaction goes on: a proper 180 still reaches the trunk.
    a.on_message(from_pbx(), response(&fwd, 180, ""), now);
    let (sends, _) = outputs(&mut a);
    assert_eq!(sends[0].0.remote, sa(TRUNK));
    assert_eq!(sends[0].1.status(), Some(180));
    // A 200 with SDP: no answer to the media node, nothing forwarded.
    a.on_message(from_pbx(), only_ours(200, SDP), now);
    let (sends, ngs) = outputs(&mut a);
    assert!(sends.is_empty(), "nothing forwarded: {sends:?}");
    assert!(ngs.is_empty(), "no answer to the media node");
    assert_eq!(a.stats().stray_responses, 2);
}

#[test]
fn failure_deletes_media_and_acks_downstream() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let fwd = forwarded_invite(&mut a, now);
    a.on_message(from_pbx(), response(&fwd, 486, ""), now);
    let (sends, ngs) = outputs(&mut a);
    let statuses: Vec<_> = sends
        .iter()
        .map(|(p, m)| (p.remote, m.status(), m.method()))
        .collect();
    assert!(
        statuses.contains(&(sa(PBX), None, crate::message::Method::Ack)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&(sa(TRUNK), Some(486), crate::message::Method::Invite)));
    assert_eq!(
        ngs[0].1.get("command").and_then(ng::Value::as_str),
        Some("delete")
    );
    assert_eq!(a.calls(), 0);
}

#[test]
fn cancel_waits_for_a_provisional_then_goes_downstream() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let fwd = forwarded_invite(&mut a, now);
    let inv = invite("z9hG4bK-c1", SDP);
    let cancel = inv.cancel();
    a.on_message(from_trunk(), cancel, now);
    let (sends, ngs) = outputs(&mut a);
    assert_eq!(sends.len(), 1, "200 to the CANCEL, nothing downstream yet");
    assert_eq!(sends[0].1.status(), Some(200));
    assert_eq!(
        ngs[0].1.get("command").and_then(ng::Value::as_str),
        Some("delete")
    );
    a.on_message(from_pbx(), response(&fwd, 180, ""), now);
    let (sends, _) = outputs(&mut a);
    let methods: Vec<_> = sends
        .iter()
        .map(|(p, m)| (p.remote, m.status(), m.method()))
        .collect();
    assert!(
        methods.contains(&(sa(PBX), None, crate::message::Method::Cancel)),
        "{methods:?}"
    );
}

#[test]
fn in_dialog_requests_route_by_their_route_headers_and_bye_deletes_media() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    // A BYE from the PBX for a call this agent never saw (it restarted):
    // our two Route entries (signed for the call) are popped, it goes to
    // the caller's Contact, and the media is deleted all the same.
    let mr = key().sign("forgotten-call");
    let bye = format!(
        "BYE sip:caller@198.18.1.2:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.18.2.2:5060;branch=z9hG4bK-bye\r\n\
         Route: <sip:198.18.2.1:5060;lr;mr={mr}>, <sip:198.18.1.1:5060;lr;mr={mr}>\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:100@198.18.1.1>;tag=callee-tag\r\n\
         To: <sip:caller@198.18.1.2>;tag=caller-tag\r\n\
         Call-ID: forgotten-call\r\n\
         CSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    a.on_message(from_pbx(), Message::parse(bye.as_bytes()).unwrap(), now);
    let (sends, ngs) = outputs(&mut a);
    assert_eq!(
        ngs[0].1.get("command").and_then(ng::Value::as_str),
        Some("delete")
    );
    assert_eq!(
        ngs[0].1.get("call-id").and_then(ng::Value::as_str),
        Some("forgotten-call")
    );
    let (peer, m) = &sends[0];
    assert_eq!(peer.remote, sa(TRUNK));
    assert_eq!(peer.local, sa(T_LISTEN), "leaves from the trunk side");
    assert!(m.routes().is_empty());
    assert_eq!(m.top_via().host, "198.18.1.1");
}

#[test]
fn no_answer_downstream_is_a_408_upstream() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    forwarded_invite(&mut a, now);
    let mut t = now;
    let mut got = Vec::new();
    while t < now + Duration::from_secs(40) {
        t = a.next_deadline().max(t);
        a.on_timer(t);
        let (sends, _) = outputs(&mut a);
        got.extend(
            sends
                .into_iter()
                .filter_map(|(p, m)| (p.remote == sa(TRUNK)).then(|| m.status())),
        );
        t += Duration::from_millis(1);
    }
    assert!(got.contains(&Some(408)), "{got:?}");
    assert_eq!(a.calls(), 0);
}

#[test]
fn media_node_failure_refuses_the_call() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    a.on_message(from_trunk(), invite("z9hG4bK-f", SDP), now);
    let (_, ngs) = outputs(&mut a);
    a.on_ng(ngs[0].0, NgOutcome::Timeout, now);
    let (sends, _) = outputs(&mut a);
    assert_eq!(sends[0].1.status(), Some(503));
    assert_eq!(a.stats().ng_errors, 1);
}

#[test]
fn options_to_the_agent_answers_200_with_stats() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let opt = "OPTIONS sip:stats@198.18.1.1:5060 SIP/2.0\r\n\
               Via: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK-o\r\n\
               Max-Forwards: 70\r\n\
               From: <sip:probe@198.18.1.2>;tag=p\r\n\
               To: <sip:stats@198.18.1.1>\r\n\
               Call-ID: opt-1\r\n\
               CSeq: 1 OPTIONS\r\n\
               Content-Length: 0\r\n\r\n";
    a.on_message(from_trunk(), Message::parse(opt.as_bytes()).unwrap(), now);
    let (sends, _) = outputs(&mut a);
    assert_eq!(sends[0].1.status(), Some(200));
    let body = String::from_utf8(sends[0].1.body().to_vec()).unwrap();
    assert!(body.starts_with("{\"calls\":0,"), "{body}");
}

#[test]
fn a_media_timeout_ends_the_call_with_a_bye_to_both_sides() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let fwd = forwarded_invite(&mut a, now);
    a.on_message(from_pbx(), response(&fwd, 200, SDP), now);
    let (_, ngs) = outputs(&mut a);
    a.on_ng(ngs[0].0, ok_sdp("v=0\r\nanswer"), now);
    outputs(&mut a);
    // Run the timers until the agent polls its media node.
    let mut t = now;
    let id = loop {
        t = a.next_deadline().max(t);
        a.on_timer(t);
        let (_, ngs) = outputs(&mut a);
        if let Some((id, _)) = ngs
            .iter()
            .find(|(_, r)| r.get("command").and_then(ng::Value::as_str) == Some("list"))
        {
            break *id;
        }
        assert!(t < now + Duration::from_secs(60), "no poll");
        t += Duration::from_millis(1);
    };
    let reply = ng::Value::dict().with("result", "ok").with(
        "timed out",
        ng::Value::List(vec![
            ng::Value::dict()
                .with("call-id", "call-1@198.18.1.2")
                .with("reason", "timeout"),
        ]),
    );
    a.on_ng(id, NgOutcome::Reply(reply), t);
    let (sends, _) = outputs(&mut a);
    let byes: Vec<_> = sends
        .iter()
        .filter(|(_, m)| m.method() == crate::message::Method::Bye)
        .map(|(p, m)| {
            (
                p.remote,
                p.local,
                m.request_uri_str().unwrap_or_default().to_owned(),
                m.to_tag(),
            )
        })
        .collect();
    assert_eq!(
        byes,
        vec![
            (
                sa(TRUNK),
                sa(T_LISTEN),
                "sip:caller@198.18.1.2:5060".to_owned(),
                Some("caller-tag".to_owned())
            ),
            (
                sa(PBX),
                sa(P_LISTEN),
                "sip:100@198.18.2.2:5060".to_owned(),
                Some("callee-tag".to_owned())
            ),
        ]
    );
    assert_eq!(a.stats().media_timeouts, 1);
    assert_eq!(a.calls(), 0);
}

#[test]
fn a_request_looping_back_to_us_gets_481() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let bye = "BYE sip:pbx@198.18.1.1:5060 SIP/2.0\r\n\
               Via: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK-loop\r\n\
               Max-Forwards: 70\r\n\
               From: <sip:caller@198.18.1.2>;tag=caller-tag\r\n\
               To: <sip:pbx@198.18.1.1>;tag=x\r\n\
               Call-ID: loop-1\r\n\
               CSeq: 2 BYE\r\n\
               Content-Length: 0\r\n\r\n";
    a.on_message(from_trunk(), Message::parse(bye.as_bytes()).unwrap(), now);
    let (sends, _) = outputs(&mut a);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].1.status(), Some(481));
}
