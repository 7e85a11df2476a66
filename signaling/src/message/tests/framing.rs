//! StreamFramer and datagram.

use super::*;
use crate::message::{Frame, MAX_MESSAGE, MessageError, StreamFramer, datagram};

/// Everything the framer yields until it has nothing more.
fn drain(framer: &mut StreamFramer) -> Vec<Result<Frame, MessageError>> {
    std::iter::from_fn(|| framer.next_frame()).collect()
}

/// A TCP stream: two messages, keepalives before, between and after.
fn stream() -> (Vec<u8>, Vec<Frame>) {
    let invite = wire(SIPP_INVITE);
    let bye = wire(SIPP_BYE);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"\r\n\r\n");
    bytes.extend_from_slice(&invite);
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(&bye);
    bytes.extend_from_slice(b"\r\n\r\n\r\n\r\n");
    bytes.extend_from_slice(&invite);
    let frames = vec![
        Frame::Ping,
        Frame::Message(invite.clone()),
        Frame::Pong,
        Frame::Message(bye),
        Frame::Ping,
        Frame::Ping,
        Frame::Message(invite),
    ];
    (bytes, frames)
}

#[test]
fn whole_stream_in_one_push() {
    let (bytes, expected) = stream();
    let mut framer = StreamFramer::new(MAX_MESSAGE);
    framer.push(&bytes);
    let frames: Vec<Frame> = drain(&mut framer).into_iter().map(Result::unwrap).collect();
    assert_eq!(frames, expected);
    assert_eq!(framer.buffered(), 0);
    assert!(!framer.failed());
}

/// The stream cut in two at every byte boundary, then byte by byte.
#[test]
fn split_at_every_byte_boundary() {
    let (bytes, expected) = stream();
    for cut in 0..=bytes.len() {
        let mut framer = StreamFramer::new(MAX_MESSAGE);
        let mut frames = Vec::new();
        for part in [&bytes[..cut], &bytes[cut..]] {
            framer.push(part);
            frames.extend(drain(&mut framer).into_iter().map(Result::unwrap));
        }
        assert_eq!(frames, expected, "cut at {cut}");
    }
    let mut framer = StreamFramer::new(MAX_MESSAGE);
    let mut frames = Vec::new();
    for byte in &bytes {
        framer.push(std::slice::from_ref(byte));
        frames.extend(drain(&mut framer).into_iter().map(Result::unwrap));
    }
    assert_eq!(frames, expected, "byte by byte");
}

/// Each framed message parses, and framing with Content-Length = body is
/// what the parser would cut too.
#[test]
fn framed_messages_parse() {
    let (bytes, _) = stream();
    let mut framer = StreamFramer::new(MAX_MESSAGE);
    framer.push(&bytes);
    for frame in drain(&mut framer) {
        if let Frame::Message(message) = frame.unwrap() {
            let parsed = Message::parse(&message).unwrap();
            assert_eq!(
                parsed.to_bytes(),
                Message::parse(&parsed.to_bytes()).unwrap().to_bytes()
            );
        }
    }
}

#[test]
fn compact_and_folded_content_length_frame_too() {
    let compact = wire(COMPACT);
    let folded = wire(
        "\
OPTIONS sip:a@b SIP/2.0
Content-Length:
 3

abcOPTIONS",
    );
    let mut framer = StreamFramer::new(MAX_MESSAGE);
    framer.push(&compact);
    framer.push(&folded);
    let frames = drain(&mut framer);
    assert_eq!(
        frames,
        [
            Ok(Frame::Message(compact)),
            Ok(Frame::Message(
                folded[..folded.len() - "OPTIONS".len()].to_vec()
            ))
        ]
    );
    assert_eq!(framer.buffered(), "OPTIONS".len());
}

#[test]
fn missing_content_length_fails_the_stream() {
    let mut framer = StreamFramer::new(MAX_MESSAGE);
    framer.push(&wire(SIPP_INVITE).into_iter().collect::<Vec<_>>());
    framer.push(&wire(&SIPP_BYE.replace("Content-Length: 0\n", "")));
    framer.push(&wire(SIPP_ACK));
    let frames = drain(&mut framer);
    assert_eq!(frames.len(), 2);
    assert!(matches!(frames[0], Ok(Frame::Message(_))));
    assert_eq!(frames[1], Err(MessageError::NoContentLength));
    // Nothing after the error, whatever arrives.
    assert!(framer.failed());
    framer.push(&wire(SIPP_ACK));
    assert_eq!(framer.next_frame(), None);
    assert_eq!(framer.buffered(), 0);
}

#[test]
fn unreadable_content_length_fails_the_stream() {
    for (value, error) in [
        (
            "abc",
            MessageError::BadContentLength {
                value: "abc".to_owned(),
            },
        ),
        (
            "-1",
            MessageError::BadContentLength {
                value: "-1".to_owned(),
            },
        ),
        (
            "99999999999999999999999",
            MessageError::BadContentLength {
                value: "99999999999999999999999".to_owned(),
            },
        ),
        (
            "0\nContent-Length: 0",
            MessageError::DuplicateHeader {
                name: "Content-Length",
            },
        ),
    ] {
        let mut framer = StreamFramer::new(MAX_MESSAGE);
        framer.push(&wire(
            &SIPP_BYE.replace("Content-Length: 0", &format!("l: {value}")),
        ));
        assert_eq!(framer.next_frame(), Some(Err(error)), "{value}");
    }
}

#[test]
fn oversize_fails_the_stream() {
    // Declared too large: known as soon as the headers are in.
    let mut framer = StreamFramer::new(1000);
    let head = wire(&SIPP_BYE.replace("Content-Length: 0", "Content-Length: 5000"));
    framer.push(&head);
    let head_len = head.len();
    assert_eq!(
        framer.next_frame(),
        Some(Err(MessageError::TooLarge {
            size: head_len + 5000,
            max: 1000
        }))
    );
    // Headers that never end.
    let mut framer = StreamFramer::new(1000);
    framer.push(b"INVITE sip:a@b SIP/2.0\r\n");
    let mut failed = None;
    for i in 0..200 {
        framer.push(format!("X-Filler-{i}: aaaaaaaaaa\r\n").as_bytes());
        if let Some(result) = framer.next_frame() {
            failed = Some(result);
            break;
        }
    }
    assert!(matches!(
        failed,
        Some(Err(MessageError::TooLarge { max: 1000, size })) if size > 1000
    ));
    // A start line that never ends.
    let mut framer = StreamFramer::new(100);
    framer.push(&[b'A'; 101]);
    assert_eq!(
        framer.next_frame(),
        Some(Err(MessageError::TooLarge {
            size: 101,
            max: 100
        }))
    );
    // Exactly at the limit is fine.
    let bye = wire(SIPP_BYE);
    let mut framer = StreamFramer::new(bye.len());
    framer.push(&bye);
    assert_eq!(framer.next_frame(), Some(Ok(Frame::Message(bye))));
}

#[test]
fn garbage_fails_the_stream_early() {
    let cases: [(&[u8], &str); 5] = [
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            "\u{16}\u{3}\u{1}\u{2}\0\u{1}\0\u{1}\u{fffd}\u{3}\u{3}",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            b"INVITE sip:a@b SIP/2.0\nVia: x\n",
            "INVITE sip:a@b SIP/2.0\nVia: x\n",
        ),
        (b"\r\n\rX", "\rX"),
        (b"hello\0", "hello\0"),
    ];
    for (bytes, excerpt) in cases {
        let mut framer = StreamFramer::new(MAX_MESSAGE);
        framer.push(bytes);
        let frames = drain(&mut framer);
        assert_eq!(
            frames.last(),
            Some(&Err(MessageError::NotSip {
                excerpt: excerpt.to_owned()
            })),
            "{bytes:?}"
        );
    }
    // An incomplete start line that could still be SIP waits.
    let mut framer = StreamFramer::new(MAX_MESSAGE);
    framer.push(b"INVITE sip:a@b SIP/2.");
    assert_eq!(framer.next_frame(), None);
    framer.push(b"0\r");
    assert_eq!(framer.next_frame(), None);
}

#[test]
fn keepalives_wait_for_their_end() {
    let mut framer = StreamFramer::new(MAX_MESSAGE);
    framer.push(b"\r");
    assert_eq!(framer.next_frame(), None);
    framer.push(b"\n");
    assert_eq!(framer.next_frame(), None);
    framer.push(b"\r");
    assert_eq!(framer.next_frame(), None);
    framer.push(b"\n");
    assert_eq!(framer.next_frame(), Some(Ok(Frame::Ping)));
    assert_eq!(framer.next_frame(), None);
    framer.push(b"\r\nSIP/2.0 200 OK\r\n");
    assert_eq!(framer.next_frame(), Some(Ok(Frame::Pong)));
    assert_eq!(framer.next_frame(), None);
}

#[test]
fn datagrams() {
    let invite = wire(SIPP_INVITE);
    assert_eq!(
        datagram(&invite, MAX_MESSAGE),
        Ok(Frame::Message(invite.clone()))
    );

    // Longer than Content-Length: cut to it (§18.3).
    let mut padded = invite.clone();
    padded.extend_from_slice(b"\r\n\r\ntrailing junk");
    assert_eq!(
        datagram(&padded, MAX_MESSAGE),
        Ok(Frame::Message(invite.clone()))
    );
    assert_eq!(
        Message::parse(&padded).unwrap(),
        Message::parse(&invite).unwrap()
    );

    // Shorter: refused.
    assert_eq!(
        datagram(&invite[..invite.len() - 1], MAX_MESSAGE),
        Err(MessageError::BodyShorterThanContentLength {
            content_length: 133,
            body: 132
        })
    );

    // No Content-Length: the rest of the datagram.
    let no_length = wire(&SIPP_INVITE.replace("Content-Length:   133\n", ""));
    assert_eq!(
        datagram(&no_length, MAX_MESSAGE),
        Ok(Frame::Message(no_length.clone()))
    );
    assert_eq!(Message::parse(&no_length).unwrap().body().len(), 133);

    // Leading CRLFs are skipped (§7.5).
    let mut leading = b"\r\n\r\n".to_vec();
    leading.extend_from_slice(&invite);
    assert_eq!(
        datagram(&leading, MAX_MESSAGE),
        Ok(Frame::Message(invite.clone()))
    );

    // Keepalives.
    assert_eq!(datagram(b"\r\n\r\n", MAX_MESSAGE), Ok(Frame::Ping));
    assert_eq!(datagram(b"\r\n", MAX_MESSAGE), Ok(Frame::Pong));
    assert_eq!(datagram(b"\r\n\r\n\r\n", MAX_MESSAGE), Ok(Frame::Pong));
    assert_eq!(datagram(b"", MAX_MESSAGE), Ok(Frame::Pong));

    // Too large, headers never closed.
    assert_eq!(
        datagram(&invite, 100),
        Err(MessageError::TooLarge {
            size: invite.len(),
            max: 100
        })
    );
    assert_eq!(
        datagram(b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n", MAX_MESSAGE),
        Err(MessageError::Truncated)
    );
    assert_eq!(
        datagram(b"\0\0\0\0", MAX_MESSAGE),
        Err(MessageError::Truncated)
    );
}
