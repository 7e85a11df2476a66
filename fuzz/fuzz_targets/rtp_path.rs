//! RTP/RTCP: the packet checks of the userspace path, latching in the
//! session engine, and the sequence-window loss accounting both paths
//! keep (media-ebpf/src/seq.rs).
//!
//! Two calls are set up through the engine (an in-memory media plane, no
//! sockets): a plain one and one whose offerer multiplexes RTCP while the
//! answerer does not (demultiplexed by the relay). The input is then a
//! sequence of parts (`media_relay_fuzz::parts`), each one UDP payload
//! arriving on a relay port, its first byte saying where and when: bits
//! 0–2 which bound port, bits 3–5 which source (either party at its SDP
//! address or another port, the other party spoofed, strangers over IPv4
//! and IPv6), bit 6 whether the data plane (XDP) saw it first, bit 7
//! whether 1.5 s pass (and the engine's tick runs) before it, else 20 ms.
//!
//! Each packet goes the way the daemon takes it: XDP forwards it if the
//! route accepts its source, else the userspace path decides (forward,
//! hand to the engine's latching, drop); forwarded RTP is accounted in
//! the port's sequence windows.
//!
//! Asserted:
//! - parsing: an RTP header is never read from an RTCP packet, nor from
//!   fewer than 12 bytes or another RTP version;
//! - sequence windows: `received` counts every RTP packet; `expected`
//!   matches a reference model of RFC 3550 §A.1 in unbounded integers;
//!   folding the two paths' windows together adds up `received`, and
//!   folding in an empty window changes nothing;
//! - engine: latching decisions keep its port and route invariants
//!   (every port a stream owns is bound, routes use bound ports only);
//! - quality (media-ebpf/src/quality.rs, what both paths keep per
//!   stream): fed every RTP packet a port accounts (its RTP timestamp, the
//!   fuzzer's clock, 8 kHz or an unknown clock rate by the port's pair),
//!   its sequence window is exactly a plain window's, gaps, duplicates and
//!   reordered packets never outnumber the packets, and the jitter never
//!   exceeds the largest transit difference seen; every payload on an
//!   RTCP port goes through the RTCP record, whose SR and block counts
//!   never exceed the packets of those types.

#![no_main]

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use libfuzzer_sys::fuzz_target;
use media_ebpf::{
    RtcpSeen, SeqWindow, StreamQuality,
    quality::RTCP_WORDS,
    seq::{MAX_DROPOUT, MAX_MISORDER},
};
use media_relay_fuzz::{engine, parts};
use media_user::{
    media::fuzzing::{accept, is_rtcp, rtp_header},
    ng::{Command, Flags, Ice, OfferAnswer, Replace, RtcpMux},
    session::{Now, PacketEvent},
};

const A: &str = "198.18.1.2";
const B: &str = "203.0.113.20";

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

fn sources() -> [SocketAddr; 8] {
    [
        sa("198.18.1.2:5000"),
        sa("198.18.1.2:5001"),
        sa("198.18.1.2:40404"),
        sa("203.0.113.20:6000"),
        sa("203.0.113.20:6001"),
        sa("203.0.113.20:50505"),
        sa("198.18.3.3:4444"),
        sa("[2001:2::66]:4444"),
    ]
}

fn sdp(addr: &str, port: u16, mux: bool) -> Vec<u8> {
    let mux = if mux { "a=rtcp-mux\r\n" } else { "" };
    format!(
        "v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n{mux}a=sendrecv\r\n"
    )
    .into_bytes()
}

fn offer_answer(
    call: &str,
    from: &str,
    to: Option<&str>,
    sdp: Vec<u8>,
    mux: RtcpMux,
) -> OfferAnswer {
    OfferAnswer {
        call_id: call.to_owned(),
        from_tag: from.to_owned(),
        to_tag: to.map(str::to_owned),
        via_branch: None,
        sdp,
        flags: Flags::default(),
        replace: Replace::default(),
        direction: vec!["priv".to_owned(), "pub".to_owned()],
        from_interface: None,
        to_interface: None,
        rtcp_mux: mux,
        ice: Ice::default(),
        received_from: None,
        media_address: None,
        label: None,
        address_family: None,
    }
}

/// RFC 3550 §A.1 in unbounded integers: what a [`SeqWindow`] must count.
#[derive(Default)]
struct Reference {
    window: Option<(u32, i64, i64)>,
    closed: i64,
    received: i64,
}

impl Reference {
    fn update(&mut self, ssrc: u32, seq: u16) {
        self.received += 1;
        if let Some((s, base, max)) = &mut self.window
            && *s == ssrc
        {
            let delta = i64::from(seq.wrapping_sub(*max as u16) as i16);
            if delta > -i64::from(MAX_MISORDER) && delta < i64::from(MAX_DROPOUT) {
                let ext = *max + delta;
                *max = (*max).max(ext);
                *base = (*base).min(ext);
                return;
            }
        }
        if let Some((_, base, max)) = self.window {
            self.closed += max - base + 1;
        }
        self.window = Some((ssrc, i64::from(seq), i64::from(seq)));
    }

    fn expected(&self) -> i64 {
        self.closed + self.window.map_or(0, |(_, base, max)| max - base + 1)
    }
}

/// What one port's paths account.
#[derive(Default)]
struct Port {
    kernel: SeqWindow,
    user: SeqWindow,
    all: Reference,
    quality: StreamQuality,
    plain: SeqWindow,
    /// The largest |transit difference| the quality record saw, in
    /// timestamp units (0 without a clock rate).
    max_d: u64,
    last_transit: Option<u32>,
    rtcp: RtcpSeen,
    /// Payloads on an RTCP port that start like an SR, like an RR.
    srs: u32,
    rrs: u32,
}

/// The RTP timestamp of an RTP payload (12 bytes or more).
fn timestamp(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[4], p[5], p[6], p[7]])
}

fuzz_target!(|data: &[u8]| {
    let mut now = Now::read();
    let mut engine = engine::engine(now);
    let plain = RtcpMux::default();
    let demux = RtcpMux {
        demux: true,
        ..RtcpMux::default()
    };
    let setup = [
        Command::Offer(offer_answer(
            "c1",
            "a1",
            None,
            sdp(A, 5000, false),
            plain.clone(),
        )),
        Command::Answer(offer_answer(
            "c1",
            "a1",
            Some("b1"),
            sdp(B, 6000, false),
            plain,
        )),
        Command::Offer(offer_answer(
            "c2",
            "a2",
            None,
            sdp(A, 5000, true),
            demux.clone(),
        )),
        Command::Answer(offer_answer(
            "c2",
            "a2",
            Some("b2"),
            sdp(B, 6000, false),
            demux,
        )),
    ];
    for command in setup {
        let reply = engine.handle(command, now);
        assert!(
            !matches!(reply, media_user::ng::Reply::Error(_)),
            "the set-up is refused: {reply:?}"
        );
    }
    let mut ports: Vec<SocketAddr> = engine.backend().open.iter().copied().collect();
    ports.sort();
    assert!(!ports.is_empty(), "the calls hold ports");
    let sources = sources();
    let mut accounted: HashMap<SocketAddr, Port> = HashMap::new();

    for part in parts(data, 256) {
        let Some((&h, payload)) = part.split_first() else {
            continue;
        };
        let local = ports[usize::from(h & 7) % ports.len()];
        let from = sources[usize::from(h >> 3 & 7)];
        let via_xdp = h & 0x40 != 0;
        if h & 0x80 != 0 {
            now = now + Duration::from_millis(1500);
            engine.tick(now);
            engine::check(&engine);
        } else {
            now = now + Duration::from_millis(20);
        }

        let rtp = rtp_header(payload);
        if rtp.is_some() {
            assert!(payload.len() >= 12 && payload[0] >> 6 == 2 && !is_rtcp(payload));
        }
        let Some(route) = engine.backend().routes.get(&local).cloned() else {
            continue;
        };
        let forwarded_by_xdp = via_xdp && matches!(accept(route.source, from, rtp), Some(true));
        let decision = if forwarded_by_xdp {
            Some(true)
        } else {
            accept(route.source, from, rtp)
        };
        match decision {
            Some(true) => {
                let plane = &mut engine.backend_mut().counters;
                let c = plane.entry(local).or_default();
                c.packets += 1;
                c.bytes += payload.len() as u64 + 28;
                if forwarded_by_xdp {
                    c.kernel_packets += 1;
                    c.kernel_bytes += payload.len() as u64 + 28;
                }
                if let Some(last) = rtp {
                    c.last_rtp = Some(last);
                }
                if route.rtp
                    && let Some((ssrc, seq)) = rtp
                {
                    let port = accounted.entry(local).or_default();
                    let window = if forwarded_by_xdp {
                        &mut port.kernel
                    } else {
                        &mut port.user
                    };
                    window.update(ssrc, seq);
                    port.all.update(ssrc, seq);
                    c.rtp_received += 1;
                    // The per-stream quality record, on the fuzzer's clock;
                    // a stream's clock rate is its route's: 8 kHz on every
                    // other pair, unknown on the rest.
                    let rate = if (local.port() / 2) % 2 == 0 { 8000 } else { 0 };
                    let now_ns = now.mono_ns;
                    let ts = timestamp(payload);
                    let same = port.quality.seq.is_initialised() && port.quality.seq.ssrc == ssrc;
                    port.quality.update(ssrc, seq, ts, now_ns, rate);
                    port.plain.update(ssrc, seq);
                    if rate > 0 {
                        let arrival = (now_ns / 1000 * 8000 / 1_000_000) as u32;
                        let transit = arrival.wrapping_sub(ts);
                        if let (true, Some(last)) =
                            (same && port.quality.transit_valid(), port.last_transit)
                        {
                            let d = u64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
                            port.max_d = port.max_d.max(d);
                        }
                        port.last_transit = Some(transit);
                    } else {
                        port.last_transit = None;
                    }
                } else if !route.rtp {
                    let port = accounted.entry(local).or_default();
                    let mut w = [0u32; RTCP_WORDS];
                    let n = (payload.len() / 4).min(RTCP_WORDS);
                    for (i, c) in payload.chunks_exact(4).take(n).enumerate() {
                        w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                    }
                    port.rtcp.update(&w, n, now.mono_ns);
                    if payload.len() >= 2 && payload[0] >> 6 == 2 {
                        port.srs += u32::from(payload[1] == 200);
                        port.rrs += u32::from(payload[1] == 201);
                    }
                }
            }
            Some(false) => {
                engine.on_packet(
                    PacketEvent {
                        local,
                        from,
                        rtp,
                        data: payload.to_vec(),
                    },
                    now,
                );
                engine::check(&engine);
            }
            None => {
                engine
                    .backend_mut()
                    .counters
                    .entry(local)
                    .or_default()
                    .errors += 1
            }
        }
    }

    for (local, port) in &accounted {
        let q = &port.quality;
        // The same window (its flags also carry the record's own bits).
        let window = SeqWindow {
            flags: q.seq.flags & media_ebpf::seq::SEQ_INITIALISED,
            ..q.seq
        };
        assert_eq!(window, port.plain, "{local}: the quality record's window");
        let received = q.seq.received();
        assert!(q.gap_count() <= received, "{local}: gaps {q:?}");
        assert!(
            q.duplicates.saturating_add(q.reordered) <= received,
            "{local}: duplicates and reordered {q:?}"
        );
        assert!(
            u64::from(q.jitter()) <= port.max_d,
            "{local}: jitter {} above the largest difference {} ({q:?})",
            q.jitter(),
            port.max_d
        );
        assert!(
            port.rtcp.sr_count <= port.srs && port.rtcp.block_count <= port.srs + port.rrs,
            "{local}: RTCP {:?} from {} SR-like and {} RR-like payloads",
            port.rtcp,
            port.srs,
            port.rrs
        );
        if port.kernel.received() + port.user.received() == 0 {
            continue;
        }
        let mut merged = port.kernel;
        merged.absorb(&port.user);
        let received = i64::from(port.kernel.received()) + i64::from(port.user.received());
        assert_eq!(i64::from(merged.received()), received, "{local}: received");
        assert_eq!(
            port.all.received, received,
            "{local}: every RTP packet counted"
        );
        let mut alone = port.kernel;
        alone.absorb(&SeqWindow::default());
        assert_eq!(alone, port.kernel, "{local}: folding in nothing");
        // One path alone: the window counts what the reference does.
        for (window, other) in [(&port.kernel, &port.user), (&port.user, &port.kernel)] {
            if other.received() == 0 {
                assert_eq!(
                    i64::from(window.expected()),
                    port.all.expected(),
                    "{local}: expected packets"
                );
            }
        }
    }
});
