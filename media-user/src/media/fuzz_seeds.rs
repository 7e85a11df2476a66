//! The seed corpus of the `rtp_path` fuzz target (`fuzz/corpus/`): RTP
//! and RTCP as peers send it, in the target's framing (a part per packet,
//! its first byte saying on which relay port, from whom, by which path
//! and when; see `fuzz/fuzz_targets/rtp_path.rs`). Written by
//! `cargo xtask fuzz --write-seeds` (README, "Fuzzing"); ignored by a
//! plain `cargo test`.

use std::{fs, path::Path};

const SEPARATOR: &[u8] = b"\n--fuzz--\n";

/// Sources, as the target numbers them.
const A: u8 = 0;
const A_RTCP: u8 = 1;
const A_NAT: u8 = 2;
const B: u8 = 3;
const B_RTCP: u8 = 4;
const STRANGER: u8 = 6;
const STRANGER_V6: u8 = 7;

/// The target's header byte: port index, source, XDP first, 1.5 s later.
fn header(port: u8, source: u8, xdp: bool, later: bool) -> u8 {
    port & 7 | (source & 7) << 3 | u8::from(xdp) << 6 | u8::from(later) << 7
}

/// A PCMA packet of 20 ms.
fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 8];
    p.extend(seq.to_be_bytes());
    p.extend((u32::from(seq) * 160).to_be_bytes());
    p.extend(ssrc.to_be_bytes());
    p.extend([0xd5; 20]);
    p
}

/// An RTCP sender report (RFC 3550 §6.4.1) without report blocks.
fn sender_report(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend(ssrc.to_be_bytes());
    p.extend([0x12; 8]);
    p.extend(1600u32.to_be_bytes());
    p.extend(10u32.to_be_bytes());
    p.extend(1600u32.to_be_bytes());
    p
}

/// An RTCP receiver report (RFC 3550 §6.4.2) with one report block.
fn receiver_report(ssrc: u32, about: u32) -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7];
    p.extend(ssrc.to_be_bytes());
    p.extend(about.to_be_bytes());
    p.extend([0, 0, 0, 2, 0, 0, 0, 10, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0]);
    p
}

fn part(port: u8, source: u8, xdp: bool, later: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![header(port, source, xdp, later)];
    p.extend_from_slice(payload);
    p
}

fn seed(parts: Vec<Vec<u8>>) -> Vec<u8> {
    parts.join(SEPARATOR)
}

#[test]
#[ignore = "writes fuzz/corpus/rtp_path: cargo xtask fuzz --write-seeds"]
fn write_fuzz_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/rtp_path");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, parts: Vec<Vec<u8>>| fs::write(dir.join(name), seed(parts)).unwrap();
    let (sa, sb) = (0x1111_1111, 0x2222_2222);

    // Each party's stream on every port the calls hold, by either path.
    for port in 0..8u8 {
        let source = if port < 4 { A } else { B };
        write(
            &format!("stream_port{port}"),
            (0..24)
                .map(|i| part(port, source, i % 3 == 0, i == 12, &rtp(sa, 100 + i)))
                .collect(),
        );
    }
    write(
        "both_ways_with_rtcp",
        (0..20u16)
            .flat_map(|i| {
                let mut v = vec![
                    part(0, A, true, false, &rtp(sa, i)),
                    part(4, B, false, false, &rtp(sb, 500 + i)),
                ];
                if i % 5 == 4 {
                    v.push(part(1, A_RTCP, false, false, &sender_report(sa)));
                    v.push(part(5, B_RTCP, false, false, &receiver_report(sb, sa)));
                    v.push(part(2, A, false, false, &sender_report(sa)));
                }
                v
            })
            .collect(),
    );
    write(
        "nat_then_sdp_address",
        (0..16)
            .map(|i| part(0, if i < 8 { A_NAT } else { A }, false, i == 8, &rtp(sa, i)))
            .collect(),
    );
    write(
        "sequence_wrap_reorder_duplicate_restart",
        [
            65530, 65531, 65533, 65532, 65535, 0, 0, 2, 1, 5, 4000, 4001, 3990, 4002,
        ]
        .into_iter()
        .enumerate()
        .map(|(i, seq)| part(0, A, i % 2 == 0, false, &rtp(sa, seq)))
        .chain([part(0, A, false, false, &rtp(sa + 1, 7))])
        .collect(),
    );
    write(
        "strangers_before_and_after_latching",
        (0..12u16)
            .map(|i| match i % 4 {
                0 => part(0, STRANGER, false, i == 4, &rtp(sa, i)),
                1 => part(4, STRANGER_V6, false, false, &rtp(sb, i)),
                2 => part(0, B, false, false, &rtp(sa, i)),
                _ => part(0, A, true, false, &rtp(sa, i)),
            })
            .collect(),
    );
    write(
        "not_rtp",
        vec![
            part(0, A, false, false, b""),
            part(0, A, false, false, &[0x80; 11]),
            part(0, A, false, false, &[0x40; 12]),
            part(0, A, false, false, b"STUN or anything else"),
        ],
    );
}
