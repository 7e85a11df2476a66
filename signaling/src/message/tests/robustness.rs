//! Mutated corpus messages: every truncation, every single-byte
//! substitution (from a set of bytes that mean something to the grammar,
//! plus a case flip) and deletion, and seeded random multi-byte
//! mutations. Framing, parsing, every accessor, writing, every edit and
//! every builder run on each; nothing may panic, and whatever parses must
//! write back to bytes that parse to the same message — after edits too.

use std::net::IpAddr;

use super::*;
use crate::message::{Frame, MAX_MESSAGE, Method, StreamFramer, datagram};

/// Bytes with a meaning somewhere in the grammar, and a few without.
const INTERESTING: &[u8] = &[
    0x00, b'\r', b'\n', b' ', b'\t', b',', b';', b':', b'<', b'>', b'"', b'\\', b'[', b']', b'@',
    b'=', b'/', b'?', b'0', b'9', b'a', b'Z', 0x7f, 0x80, 0xc3, 0xff,
];

/// SplitMix64: a tiny deterministic PRNG, so runs are reproducible
/// without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn byte(&mut self) -> u8 {
        if self.next().is_multiple_of(2) {
            INTERESTING[self.below(INTERESTING.len())]
        } else {
            self.next() as u8
        }
    }
}

/// Everything a caller may do with some bytes.
fn exercise(bytes: &[u8]) {
    // Framing: the framer and the datagram path agree on complete
    // messages, and the framer always makes progress.
    let datagram_frame = datagram(bytes, MAX_MESSAGE);
    let mut framer = StreamFramer::new(MAX_MESSAGE);
    framer.push(bytes);
    let mut frames = 0;
    while let Some(frame) = framer.next_frame() {
        frames += 1;
        assert!(frames <= bytes.len() + 1, "the framer must make progress");
        if frames == 1
            && let (Ok(Frame::Message(streamed)), Ok(Frame::Message(whole))) =
                (&frame, &datagram_frame)
            && !bytes.starts_with(b"\r\n")
        {
            assert_eq!(streamed, whole);
        }
    }

    let message = match Message::parse(bytes) {
        Ok(message) => message,
        Err(error) => {
            assert!(!error.to_string().contains('\n'));
            if let Some(rejection) = Message::rejection(bytes, &error, Some("r1")) {
                let _ = rejection.to_bytes();
                let _ = rejection.top_via();
            }
            return;
        }
    };

    // Accessors.
    let _ = (
        message.is_request(),
        message.method(),
        message.method_name(),
    );
    let _ = (message.status(), message.reason(), message.request_uri());
    let _ = (message.call_id(), message.from_tag(), message.to_tag());
    let _ = (message.cseq(), message.max_forwards(), message.via_count());
    let top = message.top_via();
    assert_eq!(
        message.try_top_via(),
        Some(top),
        "a parsed message has a valid top Via"
    );
    for value in message.routes().iter().chain(&message.record_routes()) {
        Message::uri_of(value).expect("validated at parse");
    }
    let _ = (
        message.contact_uri(),
        message.contact_uri_str(),
        message.content_type(),
    );
    let _ = (
        message.header("v"),
        message.headers("Route"),
        message.fields().count(),
    );
    if let Some(uri) = message.request_uri() {
        let _ = crate::message::format_uri(uri);
    }

    // Writing is lossless.
    let written = message.to_bytes();
    let again = Message::parse(&written)
        .unwrap_or_else(|e| panic!("written message does not parse: {e}\n{}", text(&written)));
    assert_eq!(again, message, "{}", text(&written));

    // The edits a proxy makes keep a valid message valid.
    let mut edited = message.clone();
    edited.set_top_via_received("203.0.113.7".parse::<IpAddr>().unwrap(), 40000);
    edited.push_via("SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKrobust;rport");
    edited.set_top_via_received("::ffff:198.51.100.1".parse::<IpAddr>().unwrap(), 5062);
    edited.prepend_record_route("<sip:198.18.1.1:5060;lr;ma=t>");
    let _ = edited.pop_route();
    let _ = edited.set_request_uri("sip:bob@[2001:db8::2]:5070;transport=tcp");
    edited.set_max_forwards(message.max_forwards().saturating_sub(1));
    edited.set_to_tag("relay-tag");
    edited.set_header("X-Robust", "a\r\nb\0c");
    edited.remove_header("Subject");
    edited.set_body(b"v=0\r\n".to_vec(), Some("application/sdp"));
    let written = edited.to_bytes();
    let again = Message::parse(&written)
        .unwrap_or_else(|e| panic!("edited message does not parse: {e}\n{}", text(&written)));
    assert_eq!(again, edited, "{}", text(&written));
    assert_eq!(
        edited.pop_via().as_deref(),
        Some(
            "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKrobust;received=198.51.100.1;rport=5062"
        )
    );
    edited.set_body(Vec::new(), None);
    let _ = edited.to_bytes();

    // Builders.
    let response = message.response(487, "Request Terminated", Some("t-487"));
    Message::parse(&response.to_bytes()).expect("a response to a parsed message parses");
    if message.is_request() {
        let cancel = message.cancel();
        let ack = message.ack_for(&response);
        if message.method() == Method::Invite {
            Message::parse(&cancel.to_bytes()).expect("CANCEL parses");
            Message::parse(&ack.to_bytes()).expect("ACK parses");
        }
    } else {
        let _ = message.cancel();
        let _ = message.ack_for(&message);
    }
}

fn corpus() -> Vec<Vec<u8>> {
    CORPUS.iter().map(|(_, fixture)| wire(fixture)).collect()
}

#[test]
fn the_corpus_itself() {
    for bytes in corpus() {
        exercise(&bytes);
    }
}

#[test]
fn every_truncation() {
    on_all_cores(|bytes| {
        for end in 0..bytes.len() {
            exercise(&bytes[..end]);
        }
    });
}

/// Runs `job` on each corpus message, spread over the machine's cores
/// (these loops are the bulk of the suite's time).
fn on_all_cores(job: impl Fn(&[u8]) + Sync) {
    let corpus = corpus();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some(bytes) =
                    corpus.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    job(bytes);
                }
            });
        }
    });
}

#[test]
fn every_single_byte_substitution_and_deletion() {
    on_all_cores(|bytes| {
        let mut mutated = bytes.to_vec();
        for at in 0..bytes.len() {
            let original = bytes[at];
            let flipped = if original.is_ascii_alphabetic() {
                original ^ 0x20
            } else {
                original
            };
            for &b in INTERESTING.iter().chain([&flipped]) {
                if b != original {
                    mutated[at] = b;
                    exercise(&mutated);
                }
            }
            mutated[at] = original;
            let mut deleted = bytes.to_vec();
            deleted.remove(at);
            exercise(&deleted);
        }
    });
}

#[test]
fn seeded_random_multi_byte_mutations() {
    let corpus = corpus();
    let mut rng = Rng(0x5151_0000_3261_2026);
    for _ in 0..6_000 {
        let mut bytes = corpus[rng.below(corpus.len())].clone();
        for _ in 0..=rng.below(6) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(6) {
                0 if at < bytes.len() => bytes[at] = rng.byte(),
                1 => {
                    let n = 1 + rng.below(4);
                    for _ in 0..n {
                        bytes.insert(at.min(bytes.len()), rng.byte());
                    }
                }
                2 => {
                    let end = (at + 1 + rng.below(16)).min(bytes.len());
                    bytes.drain(at.min(end)..end);
                }
                3 => {
                    // Splice a piece of another message in.
                    let other = &corpus[rng.below(corpus.len())];
                    let from = rng.below(other.len());
                    let to = (from + 1 + rng.below(64)).min(other.len());
                    bytes.splice(at..at, other[from..to].iter().copied());
                }
                4 => {
                    // Duplicate a stretch (repeated headers, doubled lines).
                    let end = (at + 1 + rng.below(80)).min(bytes.len());
                    let piece = bytes[at.min(end)..end].to_vec();
                    bytes.splice(at..at, piece);
                }
                _ => {
                    let tokens: [&[u8]; 8] = [
                        b"\r\n",
                        b"\r\n ",
                        b",",
                        b";",
                        b"<",
                        b">",
                        b"\"",
                        b"\r\n\r\n",
                    ];
                    let token = tokens[rng.below(tokens.len())];
                    bytes.splice(at..at, token.iter().copied());
                }
            }
        }
        exercise(&bytes);
    }
}

/// Inputs built to be hard: huge counts of small things.
#[test]
fn pathological_inputs() {
    let many_vias = format!(
        "OPTIONS sip:a@b SIP/2.0\r\nVia: {}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n",
        vec!["SIP/2.0/UDP h;branch=z9hG4bK1"; 2000].join(",")
    );
    let message = Message::parse(many_vias.as_bytes()).unwrap();
    assert_eq!(message.via_count(), 2000);
    exercise(many_vias.as_bytes());

    let many_folds = format!(
        "OPTIONS sip:a@b SIP/2.0\r\nSubject: x{}\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n",
        "\r\n y".repeat(5000)
    );
    exercise(many_folds.as_bytes());

    let quotes = format!(
        "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: {}<sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n",
        "\"\\".repeat(5000)
    );
    exercise(quotes.as_bytes());

    exercise(&[b'\r'; 10_000]);
    exercise(&b"\r\n".repeat(5000));
    exercise(&[0xff; 1000]);
    exercise(&b":\r\n".repeat(3000));
}
