//! ng: bencode decoding and the server's path into the session engine.
//!
//! The input is a sequence of parts (`media_relay_fuzz::parts`), each one
//! ng datagram from the SIP controller, handled as `ng_server.rs` handles
//! it: split into cookie and command, looked up in the reply cache,
//! dispatched into a session engine (an in-memory media plane: no
//! sockets, no XDP), the reply encoded and cached. A second and a tick
//! pass between datagrams.
//!
//! Asserted:
//! - bencode: what decodes encodes, and decodes again to the same value;
//! - replies: every reply encodes into a datagram the client side reads
//!   back to the same cookie and dictionary;
//! - engine: after every command, every port a stream owns is bound and
//!   nothing else is, routes use bound ports only, and the media plane's
//!   contract holds (no double bind, no route on an unbound port);
//! - restart: a new engine adopts every call from the records the first
//!   one kept, with the same ports.

#![no_main]

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;
use media_relay_fuzz::{engine, parts};
use media_user::session::Now;
use ng::{Lookup, Reply, ReplyCache, Value};

fn bencode_round_trip(bytes: &[u8]) {
    let Ok(value) = Value::decode(bytes) else {
        return;
    };
    let encoded = value.encode().expect("what decodes encodes");
    assert_eq!(Value::decode(&encoded).as_ref(), Ok(&value), "re-decoded");
}

/// The reply datagram, checked to read back as sent.
fn reply_bytes(cookie: &[u8], reply: &Reply) -> Vec<u8> {
    let bytes = ng::encode_reply(cookie, reply);
    let (back, value) = ng::parse_reply(&bytes).expect("a reply parses");
    assert_eq!(back, cookie);
    assert_eq!(value, reply.to_value(), "a reply reads back as sent");
    bytes
}

fuzz_target!(|data: &[u8]| {
    let datagrams = parts(data, 24);
    for d in &datagrams {
        bencode_round_trip(d);
        if let Some(space) = d.iter().position(|&b| b == b' ') {
            bencode_round_trip(&d[space + 1..]);
        }
    }

    let start = Now::read();
    let mut now = start;
    let mut engine = engine::engine(now);
    let mut cache = ReplyCache::new(64, 1 << 16, Duration::from_secs(30));
    let source: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
    let mut cached_at = Instant::now();
    for d in &datagrams {
        let Ok((cookie, command)) = ng::parse_datagram(d) else {
            continue;
        };
        let digest = cache.digest(d);
        cached_at += Duration::from_millis(100);
        let reply = match cache.lookup(source, &cookie, digest, cached_at) {
            Lookup::Retransmission(_) => continue,
            Lookup::Refused(why) => {
                // Answered, applied nowhere, cached nowhere.
                reply_bytes(&cookie, &Reply::Error(why.to_string()));
                continue;
            }
            Lookup::Miss => match command {
                Err(e) => Reply::from(e),
                Ok(command) => engine.handle(command, now),
            },
        };
        let bytes = reply_bytes(&cookie, &reply);
        cache.insert(source, cookie, digest, bytes, cached_at);
        engine::check(&engine);
        now = now + Duration::from_secs(1);
        engine.tick(now);
        engine::check(&engine);
    }

    let mut restarted = engine::engine_over(engine.backend().restarted(), now);
    let restored = restarted.restore(now);
    assert!(restored.skipped.is_empty(), "{:?}", restored.skipped);
    assert_eq!(restored.adopted, engine.call_count(), "calls adopted");
    assert_eq!(
        restarted.owned_ports(),
        engine.owned_ports(),
        "ports adopted"
    );
    engine::check(&restarted);
});
