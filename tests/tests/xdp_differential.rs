//! Differential test of the data plane: the same random and mutated frames
//! through BPF_PROG_TEST_RUN on the loaded relay program and through the
//! host reference model of its decision (`media_relay_tests::xdp_model`).
//! Any disagreement — action, output bytes, outcome counter, or the
//! forwarded flow's counters — fails the test, with the seed, the case and
//! both verdicts.
//!
//! The bed is the usual one (`Bed`, static neighbours) plus a third
//! interface in the relay namespace, `rc`, that the relay is not attached
//! to (for `egress_not_allowed`). Flows are drawn from the seed: IPv4 and
//! IPv6, any-source and shared ports, source checks (address and port,
//! address only, a stray expected source of the other family written past
//! the flow table, a port check without an address check), learning, RTP
//! with and without a re-latch SSRC, IPv4↔IPv6 (bridged) flows, peers behind a
//! gateway, without a neighbour, without a route and behind `rc`. Frames
//! are aimed at them from the expected source or a neighbouring one,
//! arrive on either attached interface, and half of them are mutated.
//! Halfway, five flows are removed and five replaced in place; the last
//! seventh of the frames arrive with the daemon gone (its heartbeat
//! stopped, a media port range set). The program runs on one CPU, so its
//! per-CPU flow counters read back as one.
//!
//!     XDP_DIFF_SEED=<u64> XDP_DIFF_FRAMES=<n> \
//!       cargo test -p media-relay-tests --test xdp_differential -- --nocapture

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Instant,
};

use anyhow::Context as _;
use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData},
    programs::{TestRun as _, TestRunOptions},
};
use media_ebpf::{
    Flow, FlowKey,
    flow::{CHECK_SOURCE_PORT, FAMILY_V4, FAMILY_V6},
};
use media_relay_tests::{
    Bed, BedOptions, Relay,
    bed::{A_MAC, A_V4, A_V6, B_MAC, B_V4, B_V6, RA_MAC, RA_V4, RA_V6, RB_MAC, RB_V4, RB_V6},
    frame::{UdpFrame, fix_ipv4_header_checksum, xdp_md},
    root_test,
    xdp_model::{Action, Counters, Daemon, Interface, Model, Neighbour, Network, Route, Verdict},
};
use media_user::dataplane::XdpMode;
use rand::{Rng, SeedableRng as _, rngs::StdRng, seq::IndexedRandom as _};

/// The relay namespace's third interface (not attached) and its neighbour.
const RC_MAC: [u8; 6] = [0x02, 0, 0, 0, 3, 1];
const C_MAC: [u8; 6] = [0x02, 0, 0, 0, 3, 2];
const RC_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 1);
const C_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
const RC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 3, 0, 0, 0, 1);
const C_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 3, 0, 0, 0, 2);

const DEFAULT_FRAMES: usize = 20_000;
/// The daemon's media range while it is absent (the last phase).
const ABSENT_RANGE: (u16, u16) = (30_000, 30_499);
/// Disagreements reported in full (all are counted).
const REPORTED: usize = 8;

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An installed flow and what the frame generator knows about it.
struct Installed {
    key: FlowKey,
    /// Sources its legitimate packets come from.
    source: SocketAddr,
    /// Its re-latch SSRC, if any.
    ssrc: Option<u32>,
    what: String,
    /// Removed midway.
    removed: bool,
}

/// The bed, the loaded program and the facts the model needs.
struct Fixture {
    relay: Relay,
    bed: Bed,
    ra: u32,
    rb: u32,
    network: Network,
}

impl Fixture {
    fn new() -> anyhow::Result<Self> {
        let bed = Bed::new(BedOptions {
            peer_xdp: false,
            static_neighbours: true,
        })?;
        // rc: a veth pair inside the relay namespace, routed and with a
        // resolved neighbour, but without the relay program.
        bed.relay.ip(&[
            "link",
            "add",
            "rc",
            "address",
            &mac(RC_MAC),
            "type",
            "veth",
            "peer",
            "name",
            "rcp",
        ])?;
        bed.relay
            .ip(&["addr", "add", &format!("{RC_V4}/24"), "dev", "rc"])?;
        bed.relay
            .ip(&["addr", "add", &format!("{RC_V6}/64"), "dev", "rc", "nodad"])?;
        for dev in ["rc", "rcp"] {
            bed.relay.ip(&["link", "set", dev, "up"])?;
        }
        for ip in [IpAddr::from(C_V4), IpAddr::from(C_V6)] {
            bed.relay.ip(&[
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                &mac(C_MAC),
                "dev",
                "rc",
                "nud",
                "permanent",
            ])?;
        }
        let relay = Relay::start(&bed, XdpMode::Generic, 1024)?;
        let (ra, rb, rc) = bed.relay.enter(|| {
            let i = media_user::host::ifindex;
            Ok((i("ra")?, i("rb")?, i("rc")?))
        })?;
        let mtu = |dev: &str| -> anyhow::Result<u16> {
            let out = bed.relay.ip(&["-o", "link", "show", dev])?;
            let mtu = out
                .split_whitespace()
                .skip_while(|w| *w != "mtu")
                .nth(1)
                .context("mtu in `ip link show`")?;
            Ok(mtu.parse()?)
        };
        let iface = |ifindex, mac, mtu, attached| Interface {
            ifindex,
            mac,
            mtu,
            attached,
            // The data plane enables forwarding where it attaches.
            forwarding: attached,
        };
        let route = |net: IpAddr, prefix, ifindex, via: Option<IpAddr>| Route {
            net,
            prefix,
            ifindex,
            via,
        };
        let neighbour = |ip: IpAddr, ifindex, mac| Neighbour { ip, ifindex, mac };
        let net6 = |third| Ipv6Addr::new(0x2001, 2, 0, third, 0, 0, 0, 0).into();
        let network = Network {
            interfaces: vec![
                iface(ra, RA_MAC, mtu("ra")?, true),
                iface(rb, RB_MAC, mtu("rb")?, true),
                iface(rc, RC_MAC, mtu("rc")?, false),
            ],
            routes: vec![
                route(Ipv4Addr::new(198, 18, 1, 0).into(), 24, ra, None),
                route(Ipv4Addr::new(198, 18, 2, 0).into(), 24, rb, None),
                route(Ipv4Addr::new(198, 18, 3, 0).into(), 24, rc, None),
                route(
                    Ipv4Addr::new(198, 19, 0, 0).into(),
                    16,
                    rb,
                    Some(B_V4.into()),
                ),
                route(net6(1), 64, ra, None),
                route(net6(2), 64, rb, None),
                route(net6(3), 64, rc, None),
                route(net6(0xff00), 56, rb, Some(B_V6.into())),
            ],
            neighbours: vec![
                neighbour(A_V4.into(), ra, A_MAC),
                neighbour(A_V6.into(), ra, A_MAC),
                neighbour(B_V4.into(), rb, B_MAC),
                neighbour(B_V6.into(), rb, B_MAC),
                neighbour(C_V4.into(), rc, C_MAC),
                neighbour(C_V6.into(), rc, C_MAC),
            ],
            local: [RA_V4, RB_V4, RC_V4]
                .map(IpAddr::from)
                .into_iter()
                .chain([RA_V6, RB_V6, RC_V6].map(IpAddr::from))
                .collect(),
        };
        Ok(Self {
            relay,
            bed,
            ra,
            rb,
            network,
        })
    }
}

/// Peers a flow may send to: routed, behind a gateway, with no
/// neighbour, with no route, behind the interface the relay is not on.
fn peer(rng: &mut StdRng, v6: bool) -> (IpAddr, &'static str) {
    // Mostly forwardable: the rewrite is what most needs checking.
    let kinds = [
        "a (ra)",
        "a (ra)",
        "b (rb)",
        "b (rb)",
        "far (via b)",
        "far (via b)",
        "no neighbour",
        "no route",
        "rc (not attached)",
    ];
    let kind = *kinds.choose(rng).expect("not empty");
    let ip: IpAddr = match (kind, v6) {
        ("a (ra)", false) => A_V4.into(),
        ("a (ra)", true) => A_V6.into(),
        ("b (rb)", false) => B_V4.into(),
        ("b (rb)", true) => B_V6.into(),
        ("far (via b)", false) => Ipv4Addr::new(198, 19, rng.random(), rng.random()).into(),
        ("far (via b)", true) => Ipv6Addr::new(
            0x2001,
            2,
            0,
            0xff00 | rng.random_range(0..=0xff),
            rng.random(),
            rng.random(),
            rng.random(),
            rng.random(),
        )
        .into(),
        ("no neighbour", false) => Ipv4Addr::new(
            198,
            18,
            rng.random_range(1..=2),
            rng.random_range(100..=200),
        )
        .into(),
        ("no neighbour", true) => {
            Ipv6Addr::new(0x2001, 2, 0, rng.random_range(1..=2), 0, 0, 0, 0x77).into()
        }
        ("no route", false) => {
            Ipv4Addr::new(198, 18, rng.random_range(9..=99), rng.random_range(1..=254)).into()
        }
        ("no route", true) => Ipv6Addr::new(0x2001, 2, 0, 9, 0, 0, 0, rng.random()).into(),
        (_, false) => C_V4.into(),
        (_, true) => C_V6.into(),
    };
    (ip, kind)
}

/// A sender address on a's side.
fn sender(rng: &mut StdRng, v6: bool) -> IpAddr {
    if v6 {
        if rng.random_bool(0.5) {
            A_V6.into()
        } else {
            Ipv6Addr::new(0x2001, 2, 0, 0x10, 0, 0, rng.random(), rng.random()).into()
        }
    } else if rng.random_bool(0.5) {
        A_V4.into()
    } else {
        Ipv4Addr::new(198, 18, 1, rng.random_range(2..=254)).into()
    }
}

/// Install a seeded set of flows (those the table refuses written into
/// the pinned FLOWS map directly) and return them.
fn install_flows(fx: &mut Fixture, rng: &mut StdRng) -> anyhow::Result<Vec<Installed>> {
    let mut installed = Vec::new();
    let mut used = std::collections::HashSet::<(IpAddr, u16)>::new();
    let mut raw: BpfHashMap<MapData, FlowKey, Flow> = BpfHashMap::try_from(Map::HashMap(
        MapData::from_pin(fx.relay.pin_dir().join(media_ebpf::maps::FLOWS))?,
    ))?;
    for n in 0..56 {
        let v6 = n % 2 == 1;
        let local_ip: IpAddr = match (v6, rng.random_bool(0.5)) {
            (false, true) => RA_V4.into(),
            (false, false) => RB_V4.into(),
            (true, true) => RA_V6.into(),
            (true, false) => RB_V6.into(),
        };
        let port = loop {
            // Even ports, so that port ± 1 is never another flow's.
            let p = rng.random_range(15_000..=15_499u16) * 2;
            if used.insert((local_ip, p)) {
                break p;
            }
        };
        let local = sa(local_ip, port);
        // One in four bridges families (IPv4↔IPv6, rewritten in XDP;
        // "family change" in `what`).
        let out_v6 = if rng.random_ratio(1, 4) { !v6 } else { v6 };
        let (peer_ip, peer_kind) = peer(rng, out_v6);
        let relay_out: IpAddr = match (out_v6, rng.random_bool(0.5)) {
            (false, true) => RB_V4.into(),
            (false, false) => RA_V4.into(),
            (true, true) => RB_V6.into(),
            (true, false) => RA_V6.into(),
        };
        let mut flow = Flow::new(
            sa(relay_out, rng.random_range(1..=65535)),
            sa(peer_ip, rng.random_range(1..=65535)),
        );
        let source = sa(sender(rng, v6), rng.random_range(1024..=65535));
        let mut what = format!(
            "{local} → {} ({peer_kind}{})",
            flow.peer(),
            if out_v6 == v6 { "" } else { ", family change" }
        );
        let shared = rng.random_ratio(1, 8);
        let key = if shared {
            what.push_str(&format!(", shared port keyed on {source}"));
            FlowKey::shared(local, source)
        } else {
            FlowKey::new(local)
        };
        let mut stray = false;
        match rng.random_range(0..20) {
            0..=5 => {}
            6..=12 => {
                flow = flow.with_source(source);
                what.push_str(&format!(", source {source}"));
            }
            13..=16 => {
                flow = flow.with_source_addr(source.ip());
                what.push_str(&format!(", source address {}", source.ip()));
            }
            17..=18 => {
                flow = flow.with_source(source);
                stray = true;
                what.push_str(&format!(
                    ", source {source} stored as the other family (written past the table)"
                ));
            }
            _ => {
                // A port check alone means nothing.
                flow.expect_port = source.port().to_be_bytes();
                flow.flags |= CHECK_SOURCE_PORT;
                what.push_str(", port check without an address check");
            }
        }
        if rng.random_ratio(1, 4) {
            flow = flow.learning(true);
            what.push_str(", learning");
        }
        let mut ssrc = None;
        if rng.random_bool(0.5) {
            flow = flow.rtp().with_clock_rate(8000);
            what.push_str(", RTP");
        }
        if rng.random_ratio(1, 3) {
            let s = if rng.random_ratio(1, 8) {
                0
            } else {
                rng.random()
            };
            flow = flow.with_relatch_ssrc(s);
            ssrc = Some(s);
            what.push_str(&format!(", re-latch SSRC {s:#x}"));
        }
        fx.relay
            .flows_mut()
            .install(key, flow)
            .with_context(|| format!("installing {what}"))?;
        if stray {
            let mut f = fx.relay.flows().get(&key)?;
            f.expect_family = if v6 { FAMILY_V4 } else { FAMILY_V6 };
            raw.insert(key, f, 0)?;
        }
        installed.push(Installed {
            key,
            source,
            ssrc,
            what,
            removed: false,
        });
        // A shared port usually has more than one remote.
        if shared && rng.random_bool(0.7) {
            let other = sa(sender(rng, v6), rng.random_range(1024..=65535));
            let k2 = FlowKey::shared(local, other);
            let (p2, kind2) = peer(rng, v6);
            let f2 = Flow::new(
                sa(relay_out_same_family(relay_out, v6), 40_000),
                sa(p2, 40_002),
            )
            .with_source(other)
            .rtp();
            fx.relay.flows_mut().install(k2, f2)?;
            installed.push(Installed {
                key: k2,
                source: other,
                ssrc: None,
                removed: false,
                what: format!(
                    "{local} → {} ({kind2}), shared port keyed on {other}, source {other}, RTP",
                    f2.peer()
                ),
            });
        }
    }
    Ok(installed)
}

fn relay_out_same_family(relay_out: IpAddr, v6: bool) -> IpAddr {
    match (relay_out.is_ipv6(), v6) {
        (a, b) if a == b => relay_out,
        (_, true) => RB_V6.into(),
        (_, false) => RB_V4.into(),
    }
}

/// A UDP payload: RTP (sometimes of the flow's re-latch SSRC), RTP edge
/// cases, RTCP, short, empty, or big enough to exceed the MTU.
fn payload(rng: &mut StdRng, ssrc: Option<u32>) -> (Vec<u8>, &'static str) {
    let rtp = |rng: &mut StdRng, len: usize, b0: u8, b1: u8| {
        let ssrc = match ssrc {
            Some(s) if rng.random_bool(0.6) => s,
            _ => rng.random(),
        };
        let mut p = vec![b0, b1];
        p.extend_from_slice(&rng.random::<u16>().to_be_bytes());
        p.extend_from_slice(&rng.random::<u32>().to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.resize(len.max(12), 0xd5);
        p.truncate(len);
        p
    };
    match rng.random_range(0..20) {
        0..=8 => {
            let len = rng.random_range(12..=200);
            let pt = *[0u8, 8, 9, 18, 96, 101, 127]
                .choose(rng)
                .expect("not empty");
            let marker = if rng.random_ratio(1, 4) { 0x80 } else { 0 };
            (rtp(rng, len, 0x80, marker | pt), "RTP")
        }
        9..=10 => {
            // Packet types around RTCP's 192–223 (72–95 with the marker).
            let b1 = *[191u8, 192, 200, 201, 206, 223, 224, 63, 64, 95, 96]
                .choose(rng)
                .expect("not empty");
            let len = rng.random_range(12..=80);
            // Report counts 0–2: an SR or RR with a first block the data
            // plane keeps when it is long enough.
            let b0 = 0x80 | rng.random_range(0..=2u8);
            (rtp(rng, len, b0, b1), "RTCP-ish")
        }
        11 => {
            let b0 = *[0x00u8, 0x40, 0xc0, 0xbf].choose(rng).expect("not empty");
            let len = rng.random_range(12..=80);
            (rtp(rng, len, b0, 0), "RTP, other version")
        }
        12..=13 => {
            let len = rng.random_range(0..=13);
            (rtp(rng, len, 0x80, 0), "RTP cut to 0..13 bytes")
        }
        14 => (Vec::new(), "empty"),
        15 => {
            let len = rng.random_range(1400..=1600);
            (rtp(rng, len, 0x80, 0), "RTP, around the MTU")
        }
        _ => {
            let len = rng.random_range(0..=120);
            ((0..len).map(|_| rng.random()).collect(), "random bytes")
        }
    }
}

/// IP header length and UDP offset of an unmutated frame.
fn l4(frame: &[u8]) -> usize {
    if frame[12..14] == [0x86, 0xdd] {
        54
    } else {
        34
    }
}

fn set16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn get16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// Recompute the UDP checksum of an unmutated-layout frame (after a
/// mutation that should leave it valid).
fn fix_udp_checksum(f: &mut [u8]) {
    let at = l4(f);
    let len = usize::from(get16(f, at + 4));
    if at + len > f.len() || len < 8 {
        return;
    }
    let h = etherparse::UdpHeader {
        source_port: get16(f, at),
        destination_port: get16(f, at + 2),
        length: len as u16,
        checksum: 0,
    };
    let data = &f[at + 8..at + len];
    let c = if at == 54 {
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s.copy_from_slice(&f[22..38]);
        d.copy_from_slice(&f[38..54]);
        h.calc_checksum_ipv6_raw(s, d, data)
    } else {
        let mut s = [0u8; 4];
        let mut d = [0u8; 4];
        s.copy_from_slice(&f[26..30]);
        d.copy_from_slice(&f[30..34]);
        h.calc_checksum_ipv4_raw(s, d, data)
    }
    .expect("fits");
    if !(at == 34 && get16(f, 40) == 0) {
        set16(f, at + 6, c);
    }
}

/// Apply one seeded mutation to `f`; returns its class and what it did.
/// A `second` mutation of a frame already mutated only flips, cuts, pads
/// or rewrites fields at fixed offsets (the first may have moved them).
fn mutate(rng: &mut StdRng, f: &mut Vec<u8>, second: bool) -> (&'static str, String) {
    let v6 = f[12..14] == [0x86, 0xdd];
    let at = l4(f);
    let fix_ip = |f: &mut Vec<u8>| {
        if !v6 {
            fix_ipv4_header_checksum(f);
        }
    };
    let pick = if second {
        *[0u8, 2, 3, 14, 15, 17].choose(rng).expect("not empty")
    } else {
        rng.random_range(0..19)
    };
    match pick {
        0 => {
            let n = rng.random_range(1..=3);
            let mut offs = Vec::new();
            for _ in 0..n {
                let i = rng.random_range(0..f.len() * 8);
                f[i / 8] ^= 1 << (i % 8);
                offs.push(i);
            }
            ("bit flips", format!("bits {offs:?} flipped"))
        }
        1 => {
            // In the headers, the IPv4 header checksum fixed after: the
            // flip gets past the checksum check.
            let i = rng.random_range(0..(at + 8) * 8);
            f[i / 8] ^= 1 << (i % 8);
            if !v6 && (14..34).contains(&(i / 8)) && f[14] & 0x0f == 5 {
                fix_ipv4_header_checksum(f);
                (
                    "header bit flip, checksum fixed",
                    format!("header bit {i} flipped, IPv4 header checksum fixed"),
                )
            } else {
                ("header bit flip", format!("header bit {i} flipped"))
            }
        }
        2 => {
            let cuts = [
                14,
                15,
                20,
                33,
                34,
                41,
                42,
                53,
                54,
                61,
                62,
                at + 8 + 11,
                at + 8 + 12,
                f.len() - 1,
            ];
            let mut cut = *cuts.choose(rng).expect("not empty");
            if rng.random_ratio(1, 4) {
                cut = rng.random_range(14..=f.len());
            }
            let cut = cut.clamp(14, f.len());
            f.truncate(cut);
            ("truncation", format!("truncated to {cut} bytes"))
        }
        3 => {
            let n = rng.random_range(1..=40);
            let kind = rng.random_range(0..3);
            for i in 0..n {
                let b = match kind {
                    0 => 0,
                    1 => rng.random(),
                    // Looks like the start of an RTP header.
                    _ => [0x80, 0x00].get(i).copied().unwrap_or(0x11),
                };
                f.push(b);
            }
            (
                "trailing padding",
                format!(
                    "{n} bytes of Ethernet padding ({})",
                    ["zero", "random", "RTP-like"][kind]
                ),
            )
        }
        4 => {
            // A shorter datagram in the same frame: the rest is padding,
            // which may hold the RTP header the datagram lost.
            let udp_len = get16(f, at + 4);
            let k = rng.random_range(1..=udp_len.saturating_sub(8).max(1));
            let new = udp_len.saturating_sub(k).max(8);
            set16(f, at + 4, new);
            if v6 {
                set16(f, 18, new);
            } else {
                set16(f, 16, new + 20);
                fix_ip(f);
            }
            fix_udp_checksum(f);
            (
                "datagram shortened, padding kept",
                format!("datagram shortened to {new} bytes, the rest left as padding"),
            )
        }
        5 => {
            let d: i32 = *[-9, -8, -1, 1, 2, 100].choose(rng).expect("not empty");
            let field = if v6 { 18 } else { 16 };
            let v = (i32::from(get16(f, field)) + d).clamp(0, 65535) as u16;
            set16(f, field, v);
            fix_ip(f);
            ("wrong IP length", format!("IP length {d:+}"))
        }
        6 => {
            let d: i32 = *[-8, -1, 1, 8, -1000].choose(rng).expect("not empty");
            let v = (i32::from(get16(f, at + 4)) + d).clamp(0, 65535) as u16;
            set16(f, at + 4, v);
            ("wrong UDP length", format!("UDP length {d:+}"))
        }
        7 if !v6 => {
            let x: u8 = rng.random_range(1..=255);
            f[25] ^= x;
            (
                "bad IPv4 header checksum",
                format!("IPv4 header checksum low byte ^ {x:#x}"),
            )
        }
        8 => {
            let ttl = *[0u8, 1, 2, 255].choose(rng).expect("not empty");
            f[if v6 { 21 } else { 22 }] = ttl;
            fix_ip(f);
            ("TTL", format!("TTL / hop limit {ttl}"))
        }
        9 if !v6 => {
            // No-operation options ended by end-of-list (RFC 791).
            const NOP: u8 = 1;
            const EOL: u8 = 0;
            let words = rng.random_range(1..=10u8);
            let opts: Vec<u8> = (0..usize::from(words) * 4)
                .map(|i| if i % 4 == 3 { EOL } else { NOP })
                .collect();
            f.splice(34..34, opts);
            f[14] = 0x40 | (5 + words);
            let tl = get16(f, 16).wrapping_add(u16::from(words) * 4);
            set16(f, 16, tl);
            fix_ip(f);
            ("IPv4 options", format!("IPv4 options, IHL {}", 5 + words))
        }
        10 if !v6 => {
            let (flags, what) = *[
                (0x2000u16, "MF"),
                (0x0001, "offset 8"),
                (0x1fff, "largest offset"),
                (0x4000, "DF only (not a fragment)"),
                (0x8000, "reserved flag only (not a fragment)"),
                (0x6000, "DF + MF"),
            ]
            .choose(rng)
            .expect("not empty");
            set16(f, 20, flags);
            fix_ip(f);
            (
                "IPv4 flags/fragment",
                format!("IPv4 flags/offset {flags:#06x}: {what}"),
            )
        }
        11 => {
            let tag: u16 = *[0x8100u16, 0x88a8].choose(rng).expect("not empty");
            let mut t = tag.to_be_bytes().to_vec();
            t.extend_from_slice(&rng.random_range(0..4096u16).to_be_bytes());
            f.splice(12..12, t);
            ("VLAN tag", format!("VLAN tag {tag:#06x}"))
        }
        12 => {
            if v6 {
                let nh = *[0u8, 43, 44, 60, 6, 58, 136]
                    .choose(rng)
                    .expect("not empty");
                f[20] = nh;
                ("not UDP", format!("IPv6 next header {nh}"))
            } else {
                let p = *[6u8, 1, 136, 0, 41].choose(rng).expect("not empty");
                f[23] = p;
                fix_ip(f);
                ("not UDP", format!("IPv4 protocol {p}"))
            }
        }
        13 if v6 => {
            // A real hop-by-hop options header (PadN) before the UDP header.
            f.splice(54..54, [17u8, 0, 1, 4, 0, 0, 0, 0]);
            f[20] = 0;
            let pl = get16(f, 18).wrapping_add(8);
            set16(f, 18, pl);
            (
                "IPv6 extension header",
                "IPv6 hop-by-hop extension header".to_owned(),
            )
        }
        14 => {
            set16(f, at + 6, 0);
            ("UDP checksum 0", "UDP checksum 0".to_owned())
        }
        15 => {
            let d: u16 = rng.random_range(1..=0xfffe);
            let c = get16(f, at + 6);
            set16(f, at + 6, c.wrapping_add(d));
            (
                "wrong UDP checksum",
                format!("UDP checksum + {d:#x} (wrong)"),
            )
        }
        16 => {
            if !v6 && rng.random_bool(0.5) {
                f[14] = 0x40 | rng.random_range(0..5);
                fix_ip(f);
                return ("IP version/IHL", format!("IPv4 IHL {}", f[14] & 0x0f));
            }
            let version = *[6u8, 4, 5, 0].choose(rng).expect("not empty");
            f[14] = (version << 4) | (f[14] & 0x0f);
            fix_ip(f);
            ("IP version/IHL", format!("IP version {version}"))
        }
        17 => {
            let et: u16 = *[0x0806u16, 0x86dd, 0x0800, 0x88cc, 0x0000]
                .choose(rng)
                .expect("not empty");
            set16(f, 12, et);
            ("EtherType", format!("EtherType {et:#06x}"))
        }
        _ => {
            let i = rng
                .random_range(at + 8..f.len().max(at + 9))
                .min(f.len() - 1);
            f[i] = rng.random();
            ("payload byte", format!("payload byte {i} replaced"))
        }
    }
}

/// Tallies for the report.
#[derive(Default)]
struct Tally {
    by_outcome: BTreeMap<&'static str, u64>,
    by_action: BTreeMap<&'static str, u64>,
    mutated: u64,
    mutations: BTreeMap<&'static str, u64>,
}

/// A frame as sent: its number in the run, description, bytes, ingress.
struct Sent<'a> {
    seed: u64,
    n: usize,
    what: &'a str,
    frame: &'a [u8],
    ingress: &'a str,
}

/// One frame's disagreement, in full.
fn report(
    sent: &Sent<'_>,
    want: &Verdict,
    got: (Option<Action>, u32, &[u8], &[String]),
    problems: &[String],
) -> String {
    let Sent {
        seed,
        n,
        what,
        frame,
        ingress,
    } = *sent;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "frame {n} (XDP_DIFF_SEED={seed}): {what}, arriving on {ingress}"
    );
    for p in problems {
        let _ = writeln!(s, "  ✗ {p}");
    }
    let _ = writeln!(s, "  input   {}", hex(frame));
    let _ = writeln!(
        s,
        "  model   {} {}",
        want.action.name(),
        want.outcome.name()
    );
    let _ = writeln!(
        s,
        "  program {} (raw {}), outcomes counted {:?}",
        got.0.map_or("?", Action::name),
        got.1,
        got.3
    );
    if want.output != got.2 {
        let _ = writeln!(s, "  model output   {}", hex(&want.output));
        let _ = writeln!(s, "  program output {}", hex(got.2));
        let diff: Vec<String> = want
            .output
            .iter()
            .zip(got.2)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("[{i}] {a:02x}≠{b:02x}"))
            .collect();
        let _ = writeln!(
            s,
            "  differing bytes (model≠program): {} (lengths {} / {})",
            diff.join(" "),
            want.output.len(),
            got.2.len()
        );
    }
    s
}

#[test]
fn program_agrees_with_the_model() -> anyhow::Result<()> {
    root_test("program_agrees_with_the_model", |_dir| {
        let seed: u64 = env("XDP_DIFF_SEED").unwrap_or_else(|| rand::rng().random());
        let frames: usize = env("XDP_DIFF_FRAMES").unwrap_or(DEFAULT_FRAMES);
        eprintln!(
            "xdp_differential: seed {seed}, {frames} frames \
             (XDP_DIFF_SEED={seed} XDP_DIFF_FRAMES={frames} to replay)"
        );
        let mut rng = StdRng::seed_from_u64(seed);
        let mut fx = Fixture::new()?;
        let mut installed = install_flows(&mut fx, &mut rng)?;
        eprintln!("{} flows installed", installed.len());
        run(&mut fx, &mut installed, &mut rng, seed, frames)
    })
}

/// The flows as the data plane sees them (what the model reads).
fn read_flows(fx: &Fixture, installed: &[Installed]) -> anyhow::Result<HashMap<FlowKey, Flow>> {
    installed
        .iter()
        .filter(|i| !i.removed)
        .map(|i| Ok((i.key, fx.relay.flows().get(&i.key)?)))
        .collect()
}

/// Midway: remove a few flows (their packets find none from now on) and
/// replace a few in place with another peer and source policy (counters
/// kept).
/// Returns the flows updated from one without RTP to one with: their
/// quality slots start again (an RTCP record becomes a sequence window).
fn churn(
    fx: &mut Fixture,
    installed: &mut [Installed],
    rng: &mut StdRng,
) -> anyhow::Result<Vec<FlowKey>> {
    let mut became_rtp = Vec::new();
    let live: Vec<usize> = (0..installed.len())
        .filter(|&i| !installed[i].removed)
        .collect();
    let picked: Vec<usize> = live.choose_multiple(rng, 10).copied().collect();
    for (n, &i) in picked.iter().enumerate() {
        let it = &mut installed[i];
        if n % 2 == 0 {
            fx.relay.flows_mut().remove(&it.key)?;
            it.removed = true;
            it.what.push_str(" [removed midway]");
            continue;
        }
        let v6 = it.key.family == FAMILY_V6;
        let (peer_ip, kind) = peer(rng, v6);
        let relay_out: IpAddr = if v6 { RB_V6.into() } else { RB_V4.into() };
        let mut flow = Flow::new(
            sa(relay_out, rng.random_range(1..=65535)),
            sa(peer_ip, rng.random_range(1..=65535)),
        )
        .rtp();
        if rng.random_bool(0.5) {
            flow = flow.with_source(it.source);
        }
        if rng.random_bool(0.5) {
            let s: u32 = rng.random();
            flow = flow.with_relatch_ssrc(s);
            it.ssrc = Some(s);
        }
        if fx.relay.flows().get(&it.key)?.flags & media_ebpf::flow::RTP == 0 {
            became_rtp.push(it.key);
        }
        fx.relay.flows_mut().update(it.key, flow)?;
        let _ = write!(
            it.what,
            " [updated midway: → {} ({kind}), RTP{}{}]",
            flow.peer(),
            flow.expected_source()
                .map(|s| format!(", source {s}"))
                .unwrap_or_default(),
            it.ssrc
                .map(|s| format!(", re-latch SSRC {s:#x}"))
                .unwrap_or_default()
        );
    }
    Ok(became_rtp)
}

fn run(
    fx: &mut Fixture,
    installed: &mut [Installed],
    rng: &mut StdRng,
    seed: u64,
    frames: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut counters: HashMap<FlowKey, Counters> = HashMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut disagreements = 0usize;
    let absent_from = frames - frames / 7;
    let churn_at = frames / 2;
    let mut flows = read_flows(fx, installed)?;
    let mut daemon = Daemon {
        running: true,
        ports: (0, 0),
        every_port_held: false,
    };
    // From here the daemon says it holds a flow for every port of its
    // calls: packets for its range that find none are dropped.
    let held_from = churn_at + (absent_from - churn_at) / 2;
    let ns = std::fs::File::open(format!("/run/netns/{}", fx.bed.relay.name()))?;
    // Every program run on the CPU this one started on (one it may use).
    // SAFETY: sched_getcpu(3) has no preconditions.
    let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).context("sched_getcpu")?;
    let mut before = fx.relay.outcomes()?;
    for n in 0..frames {
        if n == churn_at {
            check_all_counters(fx, installed, &mut counters, &mut failures, "before churn")?;
            for key in churn(fx, installed, rng)? {
                if let Some(c) = counters.get_mut(&key) {
                    *c = Counters {
                        rtp_packets: 0,
                        rtcp_flow: false,
                        sender_reports: 0,
                        report_blocks: 0,
                        mux_sender_reports: 0,
                        mux_report_blocks: 0,
                        ..*c
                    };
                }
            }
            flows = read_flows(fx, installed)?;
            eprintln!("frame {n}: 5 flows removed, 5 updated in place");
        }
        if n == held_from {
            fx.relay
                .heartbeat(std::time::Duration::from_secs(3600), ABSENT_RANGE, true);
            daemon = Daemon {
                running: true,
                ports: ABSENT_RANGE,
                every_port_held: true,
            };
            eprintln!("frame {n}: every port of the daemon's range {ABSENT_RANGE:?} is held");
        }
        if n == absent_from {
            check_all_counters(
                fx,
                installed,
                &mut counters,
                &mut failures,
                "daemon present",
            )?;
            fx.relay
                .heartbeat(std::time::Duration::from_secs(3600), ABSENT_RANGE, false);
            fx.relay.absent();
            daemon = Daemon {
                running: false,
                ports: ABSENT_RANGE,
                every_port_held: false,
            };
            eprintln!("frame {n}: the daemon is gone from now on (media ports {ABSENT_RANGE:?})");
        }
        let (frame, what, ingress, classes) = generate(fx, installed, rng);
        let ingress_name = if ingress == fx.ra { "ra" } else { "rb" };
        let model = Model {
            flows: &flows,
            network: &fx.network,
            daemon,
        };
        let want = model.run(&frame, ingress);
        let (raw, out) = test_run(fx, &ns, cpu, &frame, ingress)?;
        let after = fx.relay.outcomes()?;
        let counted: Vec<String> = after
            .iter()
            .filter_map(|(k, v)| {
                let d = v - before[k];
                (d > 0).then(|| format!("{k}+{d}"))
            })
            .collect();
        let mut problems = Vec::new();
        let action = Action::from_raw(raw);
        if action != Some(want.action) {
            problems.push(format!(
                "action: model {}, program {}",
                want.action.name(),
                action.map_or("unknown", Action::name)
            ));
        }
        if out != want.output {
            problems.push("output bytes differ".to_owned());
        }
        // Exactly the model's outcome counted once; not_ip / not_udp may
        // also count background traffic (IPv6 MLD, router solicitations)
        // on the attached interfaces.
        for (name, v) in &after {
            let d = v - before[name];
            let noisy = matches!(*name, "not_ip" | "not_udp");
            let expected = u64::from(*name == want.outcome.name());
            if d != expected && !(noisy && d > expected) {
                problems.push(format!(
                    "outcome {name} counted {d} times, model says {expected}"
                ));
            }
        }
        before = after;
        if let Some(fwd) = want.forwarded {
            let c = counters.entry(fwd.key).or_default();
            c.account(&fwd);
            check_counters(fx, &fwd.key, c, &mut problems)?;
        }
        *tally.by_outcome.entry(want.outcome.name()).or_default() += 1;
        *tally.by_action.entry(want.action.name()).or_default() += 1;
        if !classes.is_empty() {
            tally.mutated += 1;
        }
        for c in classes {
            *tally.mutations.entry(c).or_default() += 1;
        }
        if !problems.is_empty() {
            disagreements += 1;
            if failures.len() < REPORTED {
                let sent = Sent {
                    seed,
                    n,
                    what: &what,
                    frame: &frame,
                    ingress: ingress_name,
                };
                failures.push(report(
                    &sent,
                    &want,
                    (action, raw, &out, &counted),
                    &problems,
                ));
            }
        }
    }
    check_all_counters(fx, installed, &mut counters, &mut failures, "daemon absent")?;
    let secs = started.elapsed().as_secs_f64();

    eprintln!(
        "\n{frames} frames in {secs:.1} s ({:.0}/s), {} mutated, {disagreements} disagreements",
        frames as f64 / secs,
        tally.mutated
    );
    eprintln!("by action:  {:?}", tally.by_action);
    eprintln!("by outcome:");
    for (k, v) in &tally.by_outcome {
        eprintln!("  {k:<20} {v:>6}");
    }
    eprintln!("by mutation:");
    for (k, v) in &tally.mutations {
        eprintln!("  {k:<32} {v:>6}");
    }
    let forwarded: u64 = counters.values().map(|c| c.packets).sum();
    let bridging: Vec<&FlowKey> = installed
        .iter()
        .filter(|i| i.what.contains("family change"))
        .map(|i| &i.key)
        .collect();
    let bridged: u64 = bridging
        .iter()
        .filter_map(|k| counters.get(*k))
        .map(|c| c.packets)
        .sum();
    eprintln!(
        "flows that forwarded: {} of {}, {forwarded} packets; IPv4↔IPv6 (bridging) flows: {}, \
         {bridged} packets",
        counters.values().filter(|c| c.packets > 0).count(),
        installed.len(),
        bridging.len()
    );
    anyhow::ensure!(
        failures.is_empty() && disagreements == 0,
        "{disagreements} of {frames} frames disagree (seed {seed}; first {}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// One program run on `frame` arriving on `ingress`, in the relay
/// namespace (the FIB lookups are its), on `cpu`.
fn test_run(
    fx: &Fixture,
    ns: &std::fs::File,
    cpu: usize,
    frame: &[u8],
    ingress: u32,
) -> anyhow::Result<(u32, Vec<u8>)> {
    let md = xdp_md(frame.len(), ingress);
    let program = fx.relay.program();
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            // Every run on one CPU: the per-CPU flow counters then hold the
            // last forwarded packet's RTP header, as the model does (read
            // back, the CPU that forwarded last wins, whatever the other
            // recorded).
            let pinned = media_relay_tests::cpu::Pinned::to(cpu);
            anyhow::ensure!(
                pinned.is_pinned(),
                "could not pin the test run to CPU {cpu}"
            );
            let mut out = vec![0u8; frame.len() + 256];
            let r = program.test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&md),
                ..TestRunOptions::default()
            })?;
            out.truncate(r.data_size_out as usize);
            Ok((r.return_value, out))
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A frame for one of the flows (or for no flow), possibly mutated;
/// returns it, its description, its ingress interface and the classes of
/// its mutations.
fn generate(
    fx: &Fixture,
    installed: &[Installed],
    rng: &mut StdRng,
) -> (Vec<u8>, String, u32, Vec<&'static str>) {
    let ingress = if rng.random_ratio(7, 10) {
        fx.ra
    } else {
        fx.rb
    };
    let ingress_mac = if ingress == fx.ra { RA_MAC } else { RB_MAC };
    let (mut dst, src, ssrc, mut what) = if rng.random_ratio(1, 12) {
        // No flow: a local address and a port nobody installed.
        let v6 = rng.random_bool(0.5);
        let ip: IpAddr = if v6 { RA_V6.into() } else { RA_V4.into() };
        let port = *[rng.random_range(30_000..=30_999), rng.random(), 5060, 2223]
            .choose(rng)
            .expect("not empty");
        (
            sa(ip, port),
            sa(sender(rng, v6), rng.random_range(1024..=65535)),
            None,
            format!("to {ip}:{port} (a port drawn at random)"),
        )
    } else {
        let i = installed.choose(rng).expect("flows installed");
        let dst = i.key.local();
        let src = match rng.random_range(0..10) {
            0..=6 => i.source,
            7 => sa(i.source.ip(), i.source.port().wrapping_add(1)),
            8 => sa(sender(rng, dst.is_ipv6()), i.source.port()),
            _ => sa(sender(rng, dst.is_ipv6()), rng.random_range(1024..=65535)),
        };
        (dst, src, i.ssrc, format!("flow {}", i.what))
    };
    // Ports and addresses next to the installed ones.
    match rng.random_range(0..25) {
        0 => {
            dst.set_port(dst.port().wrapping_add(1));
            what.push_str(", local port + 1");
        }
        1 => {
            dst.set_port(dst.port().wrapping_sub(1));
            what.push_str(", local port − 1");
        }
        2 => {
            dst.set_ip(if dst.is_ipv6() {
                RB_V6.into()
            } else {
                RB_V4.into()
            });
            what.push_str(", the other leg's local address");
        }
        _ => {}
    }
    let (body, kind) = payload(rng, ssrc);
    let smac = if ingress == fx.ra { A_MAC } else { B_MAC };
    let mut f = UdpFrame::new(ingress_mac, smac, src, dst, &body);
    f.ttl = *[64u8, 64, 64, 2, 255, 1, 0, 17]
        .choose(rng)
        .expect("not empty");
    f.tos = rng.random();
    f.id = rng.random();
    f.no_udp_checksum = dst.is_ipv4() && rng.random_ratio(1, 10);
    let _ = write!(
        what,
        "; from {src} to {dst}, TTL {}, {kind} ({} bytes){}",
        f.ttl,
        body.len(),
        if f.no_udp_checksum {
            ", UDP checksum 0"
        } else {
            ""
        }
    );
    let mut frame = f.bytes();
    let mut classes = Vec::new();
    if rng.random_bool(0.5) {
        let (class, m) = mutate(rng, &mut frame, false);
        classes.push(class);
        let _ = write!(what, " | mutated: {m}");
        if rng.random_ratio(1, 4) && frame.len() > 62 {
            let (class, m) = mutate(rng, &mut frame, true);
            classes.push(class);
            let _ = write!(what, "; then {m}");
        }
    }
    (frame, what, ingress, classes)
}

/// Compare a flow's counters with the model's; on a mismatch, report it
/// and take the program's (so that one miscount is reported once, not
/// again with every later packet of the flow).
fn check_counters(
    fx: &Fixture,
    key: &FlowKey,
    want: &mut Counters,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let got = fx.relay.flows().counters(key)?;
    // An RTP flow's quality slot holds its sequence window; a flow
    // without RTP's, the RTCP it saw.
    let rtcp = media_ebpf::RtcpSeen::from_slot(&got.quality);
    let (seq_ssrc, seq_received, reports) = if want.rtcp_flow {
        (None, 0, (rtcp.sr_count, rtcp.block_count))
    } else {
        (
            got.seq.is_initialised().then_some(got.seq.ssrc),
            got.seq.received,
            (0, 0),
        )
    };
    // The RTCP multiplexed on an RTP flow (`FLOW_RTCP`; zero on a flow
    // without RTP).
    let mux = (got.rtcp.sr_count, got.rtcp.block_count);
    let want_ssrc = want.last_rtp.map(|(s, _)| s);
    if got.packets != want.packets
        || got.bytes != want.bytes
        || got.last_rtp != want.last_rtp
        || got.last_seen.is_some() != (want.packets > 0)
        || seq_received != want.rtp_packets
        || seq_ssrc != want_ssrc
        || reports != (want.sender_reports, want.report_blocks)
        || mux != (want.mux_sender_reports, want.mux_report_blocks)
    {
        problems.push(format!(
            "flow {}{} counters: program packets {} bytes {} last RTP {:?} window {{ssrc {:?}, received {}}} \
             RTCP SRs/blocks {:?} rtcp-mux SRs/blocks {:?}, model packets {} bytes {} last RTP {:?} \
             RTP packets {} RTCP SRs/blocks {:?} rtcp-mux SRs/blocks {:?}",
            key.local(),
            key.remote().map(|r| format!(" from {r}")).unwrap_or_default(),
            got.packets,
            got.bytes,
            got.last_rtp,
            seq_ssrc,
            seq_received,
            reports,
            mux,
            want.packets,
            want.bytes,
            want.last_rtp,
            want.rtp_packets,
            (want.sender_reports, want.report_blocks),
            (want.mux_sender_reports, want.mux_report_blocks),
        ));
        *want = Counters {
            packets: got.packets,
            bytes: got.bytes,
            last_rtp: got.last_rtp,
            rtp_packets: seq_received,
            rtcp_flow: want.rtcp_flow,
            sender_reports: reports.0,
            report_blocks: reports.1,
            mux_sender_reports: mux.0,
            mux_report_blocks: mux.1,
        };
    }
    Ok(())
}

/// Every flow's counters, also of flows the model never forwarded on.
fn check_all_counters(
    fx: &Fixture,
    installed: &[Installed],
    counters: &mut HashMap<FlowKey, Counters>,
    failures: &mut Vec<String>,
    phase: &str,
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for i in installed.iter().filter(|i| !i.removed) {
        let want = counters.entry(i.key).or_default();
        check_counters(fx, &i.key, want, &mut problems)?;
    }
    if !problems.is_empty() {
        failures.push(format!(
            "flow counters at the end of the phase \"{phase}\":\n  {}",
            problems.join("\n  ")
        ));
    }
    Ok(())
}
