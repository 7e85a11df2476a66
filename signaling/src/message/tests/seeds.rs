//! The seed corpus of the `sip_agent` fuzz target (`fuzz/corpus/`), made
//! from this corpus: every message alone from the trunk, and whole calls
//! through the agent. Written by `cargo xtask fuzz --write-seeds`
//! (README, "Fuzzing"); ignored by a plain `cargo test`.
//!
//! A seed is a sequence of parts, each `<who><bytes>` (`T`/`P`: the
//! trunk/PBX over UDP, `t`: the trunk over TCP, else a stranger). Replies
//! from downstream carry `@branch@` where the agent's own Via branch goes
//! and `@rr@` where its Record-Route entries go; requests inside a dialog
//! carry `@route@`: the fuzz target fills them in from what the agent
//! sent, which a seed cannot know (the agent's branches are random).

use std::{fs, path::Path};

use super::{CORPUS, SIPP_180, SIPP_183, SIPP_200, SIPP_487, wire};

/// Between two parts of a seed (`fuzz/src/lib.rs`, `SEPARATOR`).
const SEPARATOR: &[u8] = b"\n--fuzz--\n";

const SIPP_INVITE_V: &str = "\
INVITE sip:service@198.18.98.2:5060 SIP/2.0
Via: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK-fz-1;rport
From: sipp <sip:sipp@198.18.1.2:5060>;tag=fzTag001
To: service <sip:service@198.18.1.1:5060>
Call-ID: fz-1@198.18.1.2
CSeq: 1 INVITE
Contact: sip:sipp@198.18.1.2:5060
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: 133

v=0
o=user1 53655765 2353687637 IN IP4 198.18.1.2
s=-
c=IN IP4 198.18.1.2
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
";

/// `fixture`, a response to the SIPp INVITE, as the PBX sends it back
/// through the agent: the agent's Via on top, its Record-Route entries,
/// the trunk's Via and dialog of [`SIPP_INVITE_V`].
fn from_pbx(fixture: &str) -> String {
    let mut out = String::new();
    for line in fixture.lines() {
        if line.starts_with("Via:") {
            out.push_str("Via: SIP/2.0/UDP 198.18.2.1:5060;branch=@branch@;rport\n");
            out.push_str("Via: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK-fz-1;rport\n");
            if fixture.contains(" 200 ") || fixture.contains(" 18") {
                out.push_str("Record-Route: @rr@\n");
            }
        } else if line.starts_with("Record-Route:") {
        } else {
            out.push_str(
                &line
                    .replace("1-4711@198.18.98.1", "fz-1@198.18.1.2")
                    .replace("4711SIPpTag001", "fzTag001"),
            );
            out.push('\n');
        }
    }
    out
}

/// A request of the trunk inside the dialog: `Route: @route@`.
fn in_dialog(method: &str, cseq: u32) -> String {
    format!(
        "{method} sip:service@198.18.2.2:5060 SIP/2.0
Via: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK-fz-{cseq}{method};rport
Route: @route@
From: sipp <sip:sipp@198.18.1.2:5060>;tag=fzTag001
To: service <sip:service@198.18.1.1:5060>;tag=1102SIPpTag012
Call-ID: fz-1@198.18.1.2
CSeq: {cseq} {method}
Max-Forwards: 70
Content-Length: 0

"
    )
}

/// The PBX's 200 to a request of the trunk inside the dialog.
fn ok_from_pbx(method: &str, cseq: u32) -> String {
    format!(
        "SIP/2.0 200 OK
Via: SIP/2.0/UDP 198.18.2.1:5060;branch=@branch@;rport
Via: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK-fz-{cseq}{method};rport
From: sipp <sip:sipp@198.18.1.2:5060>;tag=fzTag001
To: service <sip:service@198.18.1.1:5060>;tag=1102SIPpTag012
Call-ID: fz-1@198.18.1.2
CSeq: {cseq} {method}
Content-Length: 0

"
    )
}

const CANCEL_V: &str = "\
CANCEL sip:service@198.18.98.2:5060 SIP/2.0
Via: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK-fz-1;rport
From: sipp <sip:sipp@198.18.1.2:5060>;tag=fzTag001
To: service <sip:service@198.18.1.1:5060>
Call-ID: fz-1@198.18.1.2
CSeq: 1 CANCEL
Max-Forwards: 70
Content-Length: 0

";

/// The PBX ends the call: a BYE along the agent's Record-Route.
const BYE_FROM_PBX: &str = "\
BYE sip:sipp@198.18.1.2:5060 SIP/2.0
Via: SIP/2.0/UDP 198.18.2.2:5060;branch=z9hG4bK-pbx-bye;rport
Route: @rr@
From: service <sip:service@198.18.1.1:5060>;tag=1102SIPpTag012
To: sipp <sip:sipp@198.18.1.2:5060>;tag=fzTag001
Call-ID: fz-1@198.18.1.2
CSeq: 7 BYE
Max-Forwards: 70
Content-Length: 0

";

/// `<who>` and the message in wire form, its Content-Length set to its
/// body's length (the fixtures here are edited copies).
fn part(who: u8, text: &str) -> Vec<u8> {
    let bytes = wire(text);
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a message with an end of head");
    let (head, body) = (&bytes[..head_end], &bytes[head_end + 4..]);
    let head = String::from_utf8_lossy(head)
        .lines()
        .map(|line| {
            if line.starts_with("Content-Length:") {
                format!("Content-Length: {}", body.len())
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    let mut out = vec![who];
    out.extend(head.as_bytes());
    out.extend(b"\r\n\r\n");
    out.extend(body);
    out
}

fn seed(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.join(SEPARATOR)
}

#[test]
#[ignore = "writes fuzz/corpus/sip_agent: cargo xtask fuzz --write-seeds"]
fn write_fuzz_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/sip_agent");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: Vec<u8>| fs::write(dir.join(name), bytes).unwrap();

    for (name, fixture) in CORPUS {
        write(&format!("message_{name}"), part(b'T', fixture));
    }
    let invite = part(b'T', SIPP_INVITE_V);
    let ringing = part(b'P', &from_pbx(SIPP_180));
    let progress = part(b'P', &from_pbx(SIPP_183));
    let answered = part(b'P', &from_pbx(SIPP_200));
    write(
        "call_answered_and_ended_by_the_trunk",
        seed(&[
            invite.clone(),
            part(b'P', &from_pbx(super::SIPP_100)),
            ringing.clone(),
            progress.clone(),
            answered.clone(),
            part(b'T', &in_dialog("ACK", 1)),
            part(b'T', &in_dialog("BYE", 2)),
            part(b'P', &ok_from_pbx("BYE", 2)),
        ]),
    );
    write(
        "call_answered_and_ended_by_the_pbx",
        seed(&[
            invite.clone(),
            answered.clone(),
            part(b'T', &in_dialog("ACK", 1)),
            part(b'P', BYE_FROM_PBX),
        ]),
    );
    write(
        "call_cancelled",
        seed(&[
            invite.clone(),
            ringing.clone(),
            part(b'T', CANCEL_V),
            part(
                b'P',
                &ok_from_pbx("CANCEL", 1).replace("fz-1CANCEL", "fz-1"),
            ),
            part(b'P', &from_pbx(SIPP_487)),
        ]),
    );
    write(
        "call_re_invited",
        seed(&[
            invite.clone(),
            answered.clone(),
            part(b'T', &in_dialog("ACK", 1)),
            part(
                b'T',
                &in_dialog("INVITE", 3).replace(
                    "Content-Length: 0\n\n",
                    &SIPP_INVITE_V[SIPP_INVITE_V.find("Content-Type").unwrap()..],
                ),
            ),
            part(b'P', &ok_from_pbx("INVITE", 3)),
        ]),
    );
    // Over TCP, the INVITE split across two reads.
    let tcp = part(b't', &SIPP_INVITE_V.replace("UDP", "TCP"));
    let (first, second) = tcp.split_at(tcp.len() / 2);
    let mut second = second.to_vec();
    second.insert(0, b't');
    write(
        "call_over_tcp",
        seed(&[first.to_vec(), second, answered.clone()]),
    );
    write("stranger_invite", part(b'X', SIPP_INVITE_V));
    write("keepalive", b"T\r\n\r\n".to_vec());
}
