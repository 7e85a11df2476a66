//! SIP: the message layer, then the agent's whole input path.
//!
//! The input is a sequence of parts (`media_relay_fuzz::parts`); each is
//! what one peer sent, its first byte saying who: `T` the trunk over UDP,
//! `P` the PBX over UDP, `t` the trunk over one TCP connection (parts
//! append to its byte stream), anything else a stranger over UDP.
//!
//! A seed cannot know the branch of the agent's Via (random) nor its
//! signed Record-Route entries, so `@branch@` in a part becomes the
//! branch of the last request the agent sent, `@rr@` the Record-Route
//! entries it put in the last one that had them, and `@route@` those in
//! reverse (the trunk's route set). The seeds are written by
//! `cargo xtask fuzz --write-seeds` (signaling/src/message/tests/seeds.rs).
//!
//! Asserted:
//! - message layer: whatever parses writes back to bytes that parse to a
//!   message writing the same bytes (lossless round trip);
//! - agent: datagrams go through the framing and parsing the UDP and TCP
//!   transports use into the I/O-free proxy core; every ng request it
//!   makes is answered (a relayed SDP, but every fifth an error and every
//!   fifth a timeout), timers run; every message it sends parses (but the
//!   answer to a malformed one, which copies its headers as they came,
//!   and is a final response); the records of its established calls
//!   restore in a new agent.

#![no_main]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use libfuzzer_sys::fuzz_target;
use media_relay_fuzz::parts;
use signaling::{
    config::{SipConfig, SipFile},
    message::{self, Frame, Message, MessageError, StreamFramer},
    proxy::{Agent, NgOutcome, Output, Peer, RouteKey, Transport},
};

const TRUNK: &str = "198.18.1.2:5060";
const PBX: &str = "198.18.2.2:5060";
const STRANGER: &str = "198.18.3.3:5060";
const T_LISTEN: &str = "198.18.1.1:5060";
const P_LISTEN: &str = "198.18.2.1:5060";
const RELAYED: &str = "v=0\r\no=- 1 2 IN IP4 198.18.2.1\r\ns=-\r\nc=IN IP4 198.18.2.1\r\nt=0 0\r\nm=audio 30002 RTP/AVP 8\r\n";

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

fn config() -> SipConfig {
    let file: SipFile = toml::from_str(&format!(
        r#"
trunk-listen = "{T_LISTEN}"
pbx-listen = "{P_LISTEN}"
pbx = "{PBX}"
max-calls = 4
invite-rate = 1000
media-trunk-interface = "carrier"
media-pbx-interface = "pbx"
max-message = 4096
[[trunk]]
name = "carrier"
sources = ["198.18.1.2"]
target = "{TRUNK}"
default = true
"#
    ))
    .expect("a valid [sip] section");
    SipConfig::resolve(file).expect("a valid configuration")
}

fn key() -> RouteKey {
    RouteKey::new(b"media-relay fuzzing secret, 32 bytes+").expect("a long enough secret")
}

/// The message layer alone: a lossless round trip of whatever parses.
fn round_trip(bytes: &[u8]) {
    let Ok(m) = Message::parse(bytes) else {
        return;
    };
    let written = m.to_bytes();
    let again = Message::parse(&written).expect("what the agent writes parses");
    assert_eq!(again.to_bytes(), written, "writing is stable");
}

struct Run {
    agent: Agent,
    now: Instant,
    /// Latest record of each established call.
    records: BTreeMap<String, Vec<u8>>,
    replies: u64,
    /// The branch of the last request the agent sent.
    branch: String,
    /// The Record-Route entries of the last request it sent with any.
    record_route: Vec<String>,
}

impl Run {
    /// `bytes` with the agent's branch and Record-Route filled in.
    fn fill_in(&self, bytes: &[u8]) -> Vec<u8> {
        if !bytes.contains(&b'@') {
            return bytes.to_vec();
        }
        let rr = self.record_route.join(", ");
        let mut route = self.record_route.clone();
        route.reverse();
        let route = route.join(", ");
        let tokens = [
            (&b"@branch@"[..], self.branch.as_bytes()),
            (b"@rr@", rr.as_bytes()),
            (b"@route@", route.as_bytes()),
        ];
        // One pass: what is filled in is not searched again.
        let mut out = Vec::with_capacity(bytes.len());
        let mut rest = bytes;
        'scan: while let Some((&first, tail)) = rest.split_first() {
            for (token, value) in tokens {
                if let Some(after) = rest.strip_prefix(token) {
                    out.extend_from_slice(value);
                    rest = after;
                    continue 'scan;
                }
            }
            out.push(first);
            rest = tail;
        }
        out
    }

    fn deliver(&mut self, peer: Peer, bytes: &[u8]) {
        match Message::parse(bytes) {
            Ok(m) => {
                self.agent.on_message(peer, m, self.now);
                self.settle();
            }
            Err(e) => self.malformed(peer, bytes, &e),
        }
    }

    /// The answer to a message that does not parse copies its Via, From,
    /// To, Call-ID and CSeq leniently (RFC 3261 §8.2.6, signaling's
    /// `Message::rejection`): it parses only as far as they do, so it is
    /// only checked to be a final response.
    fn malformed(&mut self, peer: Peer, bytes: &[u8], e: &MessageError) {
        self.agent.on_malformed(peer, bytes, e, self.now);
        for o in self.agent.drain() {
            match o {
                Output::Send { bytes, .. } => assert!(
                    [&b"SIP/2.0 4"[..], b"SIP/2.0 5"]
                        .iter()
                        .any(|status| bytes.starts_with(status)),
                    "the answer to a malformed message is a final response"
                ),
                other => panic!("a malformed message made the agent do {other:?}"),
            }
        }
    }

    /// Carry out what the agent asked for until it asks for nothing.
    fn settle(&mut self) {
        for _ in 0..16 {
            let out = self.agent.drain();
            if out.is_empty() {
                return;
            }
            for o in out {
                match o {
                    Output::Send { bytes, .. } => {
                        let sent = Message::parse(&bytes).unwrap_or_else(|e| {
                            panic!(
                                "the agent sent a message that does not parse ({e}):\n{}",
                                String::from_utf8_lossy(&bytes)
                            )
                        });
                        if sent.is_request() {
                            if let Some(branch) = sent.try_top_via().and_then(|v| v.branch) {
                                self.branch = branch;
                            }
                            let rr = sent.record_routes();
                            if !rr.is_empty() {
                                self.record_route = rr;
                            }
                        }
                    }
                    Output::Ng { id, .. } => {
                        self.replies += 1;
                        // Mostly answered, so that calls get established;
                        // every fifth fails, every fifth times out.
                        let outcome = match self.replies % 5 {
                            4 => NgOutcome::Timeout,
                            3 => NgOutcome::Reply(
                                ng::Value::dict()
                                    .with("result", "error")
                                    .with("error-reason", "fuzzed"),
                            ),
                            _ => NgOutcome::Reply(
                                ng::Value::dict().with("result", "ok").with("sdp", RELAYED),
                            ),
                        };
                        self.agent.on_ng(id, outcome, self.now);
                    }
                    Output::Dialog { call_id, record } => match record {
                        Some(r) => {
                            self.records.insert(call_id, r);
                        }
                        None => {
                            self.records.remove(&call_id);
                        }
                    },
                }
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.agent.next_deadline() <= self.now {
            self.agent.on_timer(self.now);
            self.settle();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let inputs = parts(data, 32);
    for part in &inputs {
        round_trip(part);
        round_trip(part.get(1..).unwrap_or_default());
    }

    let (start, wall) = (Instant::now(), SystemTime::now());
    let mut run = Run {
        agent: Agent::new(config(), key(), start),
        now: start,
        records: BTreeMap::new(),
        replies: 0,
        branch: String::new(),
        record_route: Vec::new(),
    };
    let max_message = run.agent.config().max_message;
    let mut stream = StreamFramer::new(max_message);
    let mut stream_open = true;
    for part in &inputs {
        let Some((&who, bytes)) = part.split_first() else {
            continue;
        };
        let bytes = &run.fill_in(bytes)[..];
        let (transport, local, remote) = match who {
            b'T' => (Transport::Udp, T_LISTEN, TRUNK),
            b'P' => (Transport::Udp, P_LISTEN, PBX),
            b't' => (Transport::Tcp, T_LISTEN, TRUNK),
            _ => (Transport::Udp, T_LISTEN, STRANGER),
        };
        let peer = Peer {
            transport,
            conn: (transport == Transport::Tcp).then_some(1),
            local: sa(local),
            remote: sa(remote),
        };
        match transport {
            // As runtime/udp.rs does with a datagram.
            Transport::Udp => match message::datagram(bytes, max_message) {
                Ok(Frame::Message(m)) => run.deliver(peer, &m),
                Ok(Frame::Ping | Frame::Pong) => {}
                Err(e) => run.malformed(peer, bytes, &e),
            },
            // As runtime/tcp.rs does with a connection's bytes: a framing
            // error loses the stream.
            Transport::Tcp if stream_open => {
                stream.push(bytes);
                let mut frames = 0;
                while let Some(frame) = stream.next_frame() {
                    frames += 1;
                    assert!(frames <= bytes.len() + 1, "the framer must make progress");
                    match frame {
                        Ok(Frame::Message(m)) => run.deliver(peer, &m),
                        Ok(Frame::Ping | Frame::Pong) => {}
                        Err(e) => {
                            run.malformed(peer, &[], &e);
                            stream_open = false;
                            break;
                        }
                    }
                }
            }
            Transport::Tcp => {}
        }
        run.advance(Duration::from_millis(700));
    }
    // Every timer of every transaction, then the records restore.
    for _ in 0..4 {
        run.advance(Duration::from_secs(40));
    }
    let mut restarted = Agent::new(config(), key(), run.now);
    let restored = restarted.restore(run.records.values(), run.now, wall + (run.now - start));
    assert!(
        restored.skipped.is_empty(),
        "the agent's own records restore: {restored:?}"
    );
});
