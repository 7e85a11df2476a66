//! An agent restarted with the records its predecessor emitted (issue 11):
//! the call is known again, a media timeout ends it with a BYE to both
//! sides along the recorded route sets, with CSeqs above anything either
//! party used, and a BYE from a party is forwarded and forgets the record.
//! Unusable records are skipped and counted. No I/O: the "store" is a map
//! the test applies the agent's outputs to, as the runtime's does.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use super::{
    P_LISTEN, PBX, RELAYED, Records, SDP, T_LISTEN, config, from_pbx, from_trunk, key, ok_sdp,
    outputs, outputs_and_records, response, sa,
};
use crate::{
    message::{Message, Method},
    proxy::{
        Agent, NgOutcome, Peer,
        record::{self, CSEQ_MARGIN},
    },
};

const CALL: &str = "call-r@198.18.1.2";
/// A proxy in front of the trunk, and one in front of the PBX: the route
/// sets beyond the agent.
const TRUNK_PROXY: &str = "<sip:198.18.1.3;lr>";
const PBX_PROXY: &str = "<sip:198.18.2.3;lr>";

/// What the runtime's store does with the agent's outputs.
#[derive(Default)]
struct Store(HashMap<String, Vec<u8>>);

impl Store {
    fn apply(&mut self, records: Records) {
        for (id, r) in records {
            match r {
                Some(bytes) => self.0.insert(id, bytes),
                None => self.0.remove(&id),
            };
        }
    }
}

fn invite() -> Message {
    let text = format!(
        "INVITE sip:100@198.18.1.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.18.1.3:5060;branch=z9hG4bK-r1\r\n\
         Via: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK-r0\r\n\
         Record-Route: {TRUNK_PROXY}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@198.18.1.2>;tag=caller-tag\r\n\
         To: <sip:100@198.18.1.1>\r\n\
         Call-ID: {CALL}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:caller@198.18.1.2:5060>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    );
    Message::parse(text.as_bytes()).unwrap()
}

/// A call from the trunk answered by the PBX through `a`, with a proxy on
/// each side; returns our two Record-Route entries (PBX side first).
fn established(a: &mut Agent, store: &mut Store, now: Instant) -> Vec<String> {
    established_by(a, store, now, invite())
}

/// The same with this INVITE.
fn established_by(a: &mut Agent, store: &mut Store, now: Instant, invite: Message) -> Vec<String> {
    a.on_message(from_trunk(), invite, now);
    let (_, ngs) = outputs(a);
    a.on_ng(ngs[0].0, ok_sdp(RELAYED), now);
    let (sends, _) = outputs(a);
    let fwd = sends[0].1.clone();
    let ours: Vec<String> = fwd.record_routes()[..2].to_vec();
    // The PBX's 200 carries the whole path (§12.1.1): its own proxy first.
    let mut ok = response(&fwd, 200, SDP);
    for r in fwd.record_routes().iter().rev() {
        ok.prepend_record_route(r);
    }
    ok.prepend_record_route(PBX_PROXY);
    a.on_message(from_pbx(), ok, now);
    let ((_, ngs), records) = outputs_and_records(a);
    assert_eq!(records.len(), 1, "the dialog's record, with the 2xx");
    store.apply(records);
    a.on_ng(ngs[0].0, ok_sdp("v=0\r\nanswer"), now);
    let ((sends, _), records) = outputs_and_records(a);
    assert_eq!(sends[0].1.status(), Some(200));
    assert!(records.is_empty(), "once");
    assert_eq!(store.0.len(), 1);
    ours
}

/// An in-dialog request of the call, from the caller (towards the PBX)
/// or from the callee, as the UA builds it from its route set, having
/// passed its own side's proxy.
fn in_dialog(method: Method, from_caller: bool, cseq: u32, ours: &[String]) -> Message {
    let (uri, from, to, routes, via) = if from_caller {
        (
            "sip:100@198.18.2.2:5060",
            "<sip:caller@198.18.1.2>;tag=caller-tag",
            "<sip:100@198.18.1.1>;tag=callee-tag",
            [ours[1].as_str(), ours[0].as_str(), PBX_PROXY],
            "198.18.1.2:5060",
        )
    } else {
        (
            "sip:caller@198.18.1.2:5060",
            "<sip:100@198.18.1.1>;tag=callee-tag",
            "<sip:caller@198.18.1.2>;tag=caller-tag",
            [ours[0].as_str(), ours[1].as_str(), TRUNK_PROXY],
            "198.18.2.2:5060",
        )
    };
    let m = method.as_str();
    let routes: String = routes.iter().map(|r| format!("Route: {r}\r\n")).collect();
    let text = format!(
        "{m} {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {via};branch=z9hG4bK-{m}-{cseq}-{from_caller}\r\n\
         {routes}\
         Max-Forwards: 70\r\n\
         From: {from}\r\n\
         To: {to}\r\n\
         Call-ID: {CALL}\r\n\
         CSeq: {cseq} {m}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    Message::parse(text.as_bytes()).unwrap()
}

/// Run `a`'s timers from `*t` until it polls its media node; answer
/// `reply`; what it sent then.
fn poll_answered(
    a: &mut Agent,
    t: &mut Instant,
    reply: ng::Value,
) -> (Vec<(Peer, Message)>, Records) {
    let start = *t;
    let id = loop {
        *t = a.next_deadline().max(*t);
        a.on_timer(*t);
        let (_, ngs) = outputs(a);
        if let Some((id, _)) = ngs
            .iter()
            .find(|(_, r)| r.get("command").and_then(ng::Value::as_str) == Some("list"))
        {
            break *id;
        }
        assert!(*t < start + Duration::from_secs(60), "no poll");
        *t += Duration::from_millis(1);
    };
    a.on_ng(id, NgOutcome::Reply(reply), *t);
    let ((sends, _), records) = outputs_and_records(a);
    (sends, records)
}

/// Run `a`'s timers until it polls its media node; answer that the call
/// timed out; what it sent then.
fn media_times_out(a: &mut Agent, now: Instant) -> (Vec<(Peer, Message)>, Records) {
    let reply = ng::Value::dict().with("result", "ok").with(
        "timed out",
        ng::Value::List(vec![
            ng::Value::dict()
                .with("call-id", CALL)
                .with("reason", "timeout"),
        ]),
    );
    poll_answered(a, &mut now.clone(), reply)
}

/// A `list` reply naming `calls` (none timed out).
fn listing(calls: &[String]) -> ng::Value {
    ng::Value::dict().with("result", "ok").with(
        "calls",
        ng::Value::List(calls.iter().map(|c| ng::Value::from(c.as_str())).collect()),
    )
}

/// A BYE the agent sent, as the test compares it.
#[derive(Debug, PartialEq, Eq)]
struct Bye {
    remote: std::net::SocketAddr,
    local: std::net::SocketAddr,
    uri: String,
    routes: Vec<String>,
    from: String,
    to: String,
    call_id: String,
    reason: Option<String>,
}

/// The BYEs among `sends`, and their CSeq numbers.
fn byes(sends: &[(Peer, Message)]) -> (Vec<Bye>, Vec<u32>) {
    sends
        .iter()
        .filter(|(_, m)| m.method() == Method::Bye)
        .map(|(p, m)| {
            (
                Bye {
                    remote: p.remote,
                    local: p.local,
                    uri: m.request_uri_str().unwrap_or_default().to_owned(),
                    routes: m.routes(),
                    from: m.header("From").unwrap_or_default(),
                    to: m.header("To").unwrap_or_default(),
                    call_id: m.call_id().to_owned(),
                    reason: m.header("Reason"),
                },
                m.cseq().0,
            )
        })
        .unzip()
}

fn restarted(store: &Store, now: Instant) -> Agent {
    let mut b = Agent::new(config(10), key(), now);
    let restored = b.restore(store.0.values(), now, SystemTime::now());
    assert_eq!(restored.calls, 1, "{restored:?}");
    assert!(restored.skipped.is_empty(), "{restored:?}");
    b
}

#[test]
fn a_restarted_agent_ends_a_timed_out_call_with_a_bye_to_both_sides() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let mut store = Store::default();
    let ours = established(&mut a, &mut store, now);
    // The caller sends INFO twice; the store got the record of the first
    // (CSeq 2), the agent died before the second's (CSeq 3) was written.
    a.on_message(from_trunk(), in_dialog(Method::Info, true, 2, &ours), now);
    let ((sends, _), records) = outputs_and_records(&mut a);
    assert_eq!(
        sends[0].0.remote,
        sa("198.18.2.3:5060"),
        "via the PBX's proxy"
    );
    assert_eq!(records.len(), 1, "a new CSeq, a new record");
    store.apply(records);
    a.on_message(from_trunk(), in_dialog(Method::Info, true, 3, &ours), now);
    let (_, unwritten) = outputs_and_records(&mut a);
    assert_eq!(unwritten.len(), 1);

    let mut b = restarted(&store, now);
    assert_eq!(b.calls(), 1, "the call is known again");
    assert!(
        b.stats_json().starts_with("{\"calls\":1,"),
        "{}",
        b.stats_json()
    );
    assert!(
        b.stats_json()
            .contains("\"dialogs_restored\":1,\"dialogs_skipped\":{}")
    );
    // Restoring emits the record again (CSeqs raised): the store then holds
    // exactly the calls restored.
    let (_, again) = outputs_and_records(&mut b);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, CALL);
    store.apply(again);

    let (before, before_cseqs) = byes(&media_times_out(&mut a, now).0);
    let (sends, records) = media_times_out(&mut b, now);
    let (after, after_cseqs) = byes(&sends);
    assert_eq!(
        after,
        vec![
            Bye {
                remote: sa("198.18.1.3:5060"),
                local: sa(T_LISTEN),
                uri: "sip:caller@198.18.1.2:5060".into(),
                routes: vec![TRUNK_PROXY.into()],
                from: "<sip:100@198.18.1.1>;tag=callee-tag".into(),
                to: "<sip:caller@198.18.1.2>;tag=caller-tag".into(),
                call_id: CALL.into(),
                reason: Some("Q.850;cause=102;text=\"media timeout\"".into()),
            },
            Bye {
                remote: sa("198.18.2.3:5060"),
                local: sa(P_LISTEN),
                uri: "sip:100@198.18.2.2:5060".into(),
                routes: vec![PBX_PROXY.into()],
                from: "<sip:caller@198.18.1.2>;tag=caller-tag".into(),
                to: "<sip:100@198.18.1.1>;tag=callee-tag".into(),
                call_id: CALL.into(),
                reason: Some("Q.850;cause=102;text=\"media timeout\"".into()),
            },
        ]
    );
    assert_eq!(
        after, before,
        "the same BYEs as the agent before the restart"
    );
    // The callee sent nothing (CSeq 0); the caller's last was 3, its
    // record said 2: both raised by the margin, above anything used.
    assert_eq!(before_cseqs, vec![1, 4]);
    assert_eq!(after_cseqs, vec![CSEQ_MARGIN + 1, 2 + CSEQ_MARGIN + 1]);
    assert_eq!(
        records,
        vec![(CALL.to_owned(), None)],
        "the record forgotten"
    );
    store.apply(records);
    assert!(store.0.is_empty());
    assert_eq!((b.calls(), b.stats().media_timeouts), (0, 1));
}

#[test]
fn after_a_restart_a_bye_from_a_party_is_forwarded_and_the_record_forgotten() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let mut store = Store::default();
    let ours = established(&mut a, &mut store, now);

    // Without the records, the callee's BYE to the caller's proxy is
    // signed but goes where only the dialog says it may: refused.
    let mut forgetful = Agent::new(config(10), key(), now);
    forgetful.on_message(from_pbx(), in_dialog(Method::Bye, false, 1, &ours), now);
    let (sends, ngs) = outputs(&mut forgetful);
    assert_eq!(sends[0].1.status(), Some(403), "{sends:?}");
    assert!(ngs.is_empty());

    let mut b = restarted(&store, now);
    outputs(&mut b);
    b.on_message(from_pbx(), in_dialog(Method::Bye, false, 1, &ours), now);
    let ((sends, ngs), records) = outputs_and_records(&mut b);
    let (peer, bye) = &sends[0];
    assert_eq!(
        (peer.remote, peer.local, bye.method()),
        (sa("198.18.1.3:5060"), sa(T_LISTEN), Method::Bye)
    );
    assert_eq!(bye.routes(), vec![TRUNK_PROXY.to_owned()], "ours popped");
    assert_eq!(
        ngs[0].1.get("command").and_then(ng::Value::as_str),
        Some("delete")
    );
    assert!(records.is_empty(), "kept until the BYE is answered");
    b.on_message(
        Peer {
            remote: sa("198.18.1.3:5060"),
            ..from_trunk()
        },
        bye.response(200, "OK", None),
        now,
    );
    let ((sends, _), records) = outputs_and_records(&mut b);
    assert_eq!(
        (sends[0].0.remote, sends[0].1.status()),
        (sa(PBX), Some(200))
    );
    assert_eq!(records, vec![(CALL.to_owned(), None)]);
    store.apply(records);
    assert!(store.0.is_empty());
    assert_eq!(b.calls(), 0);
    assert!(b.stats().in_dialog_refused.is_empty());
}

#[test]
fn unusable_records_are_skipped_and_counted() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let mut store = Store::default();
    established(&mut a, &mut store, now);
    let good = store.0[CALL].clone();
    let mut other_version = good.clone();
    other_version[0] = record::VERSION + 1;
    let records = vec![
        Vec::new(),
        b"\x01 not a record".to_vec(),
        good[..good.len() / 2].to_vec(),
        other_version,
        good.clone(),
    ];
    let mut b = Agent::new(config(10), key(), now);
    let restored = b.restore(&records, now, SystemTime::now());
    assert_eq!(restored.calls, 1);
    assert_eq!(
        restored.skipped.into_iter().collect::<Vec<_>>(),
        vec![("unreadable", 3), ("version", 1)]
    );
    assert_eq!(b.calls(), 1);
    assert!(
        b.stats_json().contains(
            "\"dialogs_restored\":1,\"dialogs_skipped\":{\"unreadable\":3,\"version\":1}"
        ),
        "{}",
        b.stats_json()
    );
    let (_, again) = outputs_and_records(&mut b);
    assert_eq!(again.len(), 1, "only the good one is kept");

    // Saved more than a day ago: its call ended while no agent ran.
    let mut c = Agent::new(config(10), key(), now);
    let later = SystemTime::now() + record::MAX_AGE + Duration::from_secs(60);
    let restored = c.restore([&good], now, later);
    assert_eq!((restored.calls, restored.skipped["stale"]), (0, 1));
    // Its trunk is gone from the configuration.
    let mut cfg = config(10);
    cfg.trunks[0].0.name = "renamed".into();
    let mut d = Agent::new(cfg, key(), now);
    let restored = d.restore([&good], now, SystemTime::now());
    assert_eq!((restored.calls, restored.skipped["unknown_trunk"]), (0, 1));
    assert_eq!((c.calls(), d.calls()), (0, 0));
    assert!(outputs_and_records(&mut d).1.is_empty());
}

/// Found by the `sip_agent` fuzz target: a caller without a From tag
/// (RFC 2543 allowed it) got a dialog whose record the next agent skipped
/// as unreadable. It restores, with the empty tag the agent that wrote it
/// used.
#[test]
fn a_call_from_a_caller_without_a_tag_restores() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let mut store = Store::default();
    let text = String::from_utf8(invite().to_bytes()).unwrap();
    let untagged = Message::parse(text.replace(";tag=caller-tag", "").as_bytes()).unwrap();
    assert_eq!(untagged.from_tag(), None);
    established_by(&mut a, &mut store, now, untagged);
    let b = restarted(&store, now);
    assert_eq!(b.calls(), a.calls());
}

/// The record's size for a typical call (what the store holds per call).
#[test]
fn a_record_is_compact() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let mut store = Store::default();
    established(&mut a, &mut store, now);
    let len = store.0[CALL].len();
    eprintln!("one record: {len} bytes");
    assert!((150..400).contains(&len), "{len} bytes");
}

#[test]
fn a_restored_call_its_media_node_no_longer_has_is_ended_with_a_bye_to_both_sides() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let mut store = Store::default();
    established(&mut a, &mut store, now);
    // While no agent ran, the call's media timed out and the report
    // scrolled out of `list` (it names the last 100), or its BYE found no
    // agent: the node names all its calls, not this one.
    let mut b = restarted(&store, now);
    outputs(&mut b);
    let mut t = now;
    let (sends, records) = poll_answered(&mut b, &mut t, listing(&[]));
    let (sent, _) = byes(&sends);
    assert_eq!(
        sent.iter().map(|b| b.remote).collect::<Vec<_>>(),
        vec![sa("198.18.1.3:5060"), sa("198.18.2.3:5060")]
    );
    assert_eq!(records, vec![(CALL.to_owned(), None)]);
    assert_eq!(b.calls(), 0);
    assert_eq!(
        (b.stats().restored_without_media, b.stats().media_timeouts),
        (1, 0)
    );
}

#[test]
fn a_restored_call_is_checked_once_against_a_complete_list() {
    let now = Instant::now();
    let mut a = Agent::new(config(10), key(), now);
    let mut store = Store::default();
    established(&mut a, &mut store, now);
    let mut b = restarted(&store, now);
    outputs(&mut b);
    let mut t = now;
    // 1 000 names: maybe not all of them; nothing is concluded.
    let many: Vec<String> = (0..1000).map(|i| format!("other-{i}")).collect();
    let (sends, records) = poll_answered(&mut b, &mut t, listing(&many));
    assert!(sends.is_empty() && records.is_empty());
    // Seen: from now on a call like any other.
    let (sends, _) = poll_answered(&mut b, &mut t, listing(&[CALL.to_owned()]));
    assert!(sends.is_empty());
    let (sends, records) = poll_answered(&mut b, &mut t, listing(&[]));
    assert!(sends.is_empty() && records.is_empty(), "{sends:?}");
    assert_eq!((b.calls(), b.stats().restored_without_media), (1, 0));
}
