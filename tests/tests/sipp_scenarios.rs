//! The SIPp scenarios of `tests/sipp/`, proven against each other before
//! the SIP agent uses them: every UAC file against its UAS file, in the
//! test bed's namespaces `a` (carrier side) and `b` (PBX side), with the
//! relay namespace as a plain IP router between them. So a failure of an
//! agent test with these files points at the agent, not at the scenarios.
//!
//! Each case checks SIPp's own verdict on both sides (exit 0, every call
//! successful) and the RTP that really arrived at each side: the exact
//! number of packets `g711a.pcap` holds per played stream, from the peer's
//! media address only, one SSRC, PCMA, correct UDP checksums; and no RTP
//! at all where the call has no media.

use std::{
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    time::Duration,
};

use media_relay_tests::{
    Bed, BedOptions, Netns, TestDir,
    bed::{A_V4, A_V6, B_V4, B_V6},
    root_test,
    sipp::{PCAP, RtpCount, RtpCounter, SippOptions, Transport, pcap_packet_count, run_pair},
};

const SIP_PORT: u16 = 5060;
/// Media ports (`-mp`) of the carrier-side and PBX-side SIPp: distinct,
/// so a capture shows at a glance which side a stream belongs to.
const A_MEDIA: u16 = 10000;
const B_MEDIA: u16 = 20000;
/// Bounds every SIPp pair (the longest case, hold, takes about 16 s).
const DEADLINE: Duration = Duration::from_secs(60);

/// The bed with the relay namespace forwarding, so that `a` and `b` reach
/// each other through it as they will reach the agent.
fn routed_bed() -> anyhow::Result<Bed> {
    let bed = Bed::new(BedOptions::default())?;
    bed.relay.sysctl("net.ipv4.ip_forward", "1")?;
    bed.relay.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    Ok(bed)
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

/// One side of the call: its namespace and addresses.
struct Side<'a> {
    ns: &'a Netns,
    ip: IpAddr,
    media_port: u16,
}

impl Side<'_> {
    fn sip(&self) -> SocketAddr {
        SocketAddr::new(self.ip, SIP_PORT)
    }
    fn media(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.media_port)
    }
}

/// What a case expects.
struct Expect {
    /// RTP streams (whole pcaps) arriving at the UAS and at the UAC.
    streams_at_uas: u64,
    streams_at_uac: u64,
}

const NO_MEDIA: Expect = Expect {
    streams_at_uas: 0,
    streams_at_uac: 0,
};
const ONE_EACH_WAY: Expect = Expect {
    streams_at_uas: 1,
    streams_at_uac: 1,
};

/// Run `<case>_uac.xml` against `<case>_uas.xml` for one call, the UAC on
/// the carrier side (`a`) unless `from_pbx`, and check both verdicts and
/// the RTP each side received.
fn one_call(
    test: &str,
    case: &str,
    transport: Transport,
    family: Family,
    from_pbx: bool,
    expect: &Expect,
) -> anyhow::Result<()> {
    root_test(test, |t| {
        one_call_in(t, case, transport, family, from_pbx, expect)
    })
}

fn one_call_in(
    t: &TestDir,
    case: &str,
    transport: Transport,
    family: Family,
    from_pbx: bool,
    expect: &Expect,
) -> anyhow::Result<()> {
    let bed = routed_bed()?;
    let (a_ip, b_ip): (IpAddr, IpAddr) = match family {
        Family::V4 => (A_V4.into(), B_V4.into()),
        Family::V6 => (A_V6.into(), B_V6.into()),
    };
    let a = Side {
        ns: &bed.a,
        ip: a_ip,
        media_port: A_MEDIA,
    };
    let b = Side {
        ns: &bed.b,
        ip: b_ip,
        media_port: B_MEDIA,
    };
    let (uac_side, uas_side) = if from_pbx { (&b, &a) } else { (&a, &b) };

    let mut uas = SippOptions::uas(
        &format!("{case}_uas.xml"),
        uas_side.sip(),
        uas_side.ip,
        uas_side.media_port,
    );
    uas.transport = transport;
    let mut uac = SippOptions::uac(
        &format!("{case}_uac.xml"),
        uac_side.sip(),
        uas_side.sip(),
        uac_side.ip,
        uac_side.media_port,
    );
    uac.transport = transport;

    let at_uas = RtpCounter::start(uas_side.ns, uas_side.media_port..=uas_side.media_port)?;
    let at_uac = RtpCounter::start(uac_side.ns, uac_side.media_port..=uac_side.media_port)?;
    let (uas_result, uac_result) = run_pair(t, uas_side.ns, &uas, uac_side.ns, &uac, DEADLINE)?;
    let at_uas = at_uas.stop()?;
    let at_uac = at_uac.stop()?;
    uac_result.ensure_all_succeeded()?;
    uas_result.ensure_all_succeeded()?;

    let per_stream = pcap_packet_count(PCAP)?;
    check_rtp(
        "at the UAS",
        &at_uas,
        per_stream * expect.streams_at_uas,
        uac_side.media(),
    )?;
    check_rtp(
        "at the UAC",
        &at_uac,
        per_stream * expect.streams_at_uac,
        uas_side.media(),
    )?;
    Ok(())
}

/// `count` is exactly `packets` RTP packets (0: none at all), all from
/// `from`, one SSRC, PCMA, with right checksums.
fn check_rtp(where_: &str, count: &RtpCount, packets: u64, from: SocketAddr) -> anyhow::Result<()> {
    anyhow::ensure!(
        count.packets == packets,
        "{where_}: {} RTP packets, want {packets}: {count:?}",
        count.packets
    );
    anyhow::ensure!(
        count.bad_checksums == 0 && count.rtcp == 0,
        "{where_}: {count:?}"
    );
    if packets > 0 {
        anyhow::ensure!(
            count.sources.iter().eq([&from]) && count.ssrcs.len() == 1,
            "{where_}: RTP from {:?} (SSRCs {:?}), want only {from}",
            count.sources,
            count.ssrcs
        );
        anyhow::ensure!(
            count.payload_types.iter().eq([&8]),
            "{where_}: payload types {:?}, want PCMA (8)",
            count.payload_types
        );
    }
    Ok(())
}

#[test]
fn basic_udp() -> anyhow::Result<()> {
    one_call(
        "sipp_scenarios::basic_udp",
        "basic",
        Transport::Udp,
        Family::V4,
        false,
        &ONE_EACH_WAY,
    )
}

#[test]
fn basic_tcp() -> anyhow::Result<()> {
    one_call(
        "sipp_scenarios::basic_tcp",
        "basic",
        Transport::Tcp,
        Family::V4,
        false,
        &ONE_EACH_WAY,
    )
}

#[test]
fn basic_ipv6() -> anyhow::Result<()> {
    one_call(
        "sipp_scenarios::basic_ipv6",
        "basic",
        Transport::Udp,
        Family::V6,
        false,
        &ONE_EACH_WAY,
    )
}

/// The PBX calls out: the basic files with the roles swapped.
#[test]
fn pbx_to_trunk() -> anyhow::Result<()> {
    one_call(
        "sipp_scenarios::pbx_to_trunk",
        "basic",
        Transport::Udp,
        Family::V4,
        true,
        &ONE_EACH_WAY,
    )
}

#[test]
fn busy() -> anyhow::Result<()> {
    one_call(
        "sipp_scenarios::busy",
        "busy",
        Transport::Udp,
        Family::V4,
        false,
        &NO_MEDIA,
    )
}

#[test]
fn cancel_udp() -> anyhow::Result<()> {
    one_call(
        "sipp_scenarios::cancel_udp",
        "cancel",
        Transport::Udp,
        Family::V4,
        false,
        &NO_MEDIA,
    )
}

#[test]
fn cancel_tcp() -> anyhow::Result<()> {
    one_call(
        "sipp_scenarios::cancel_tcp",
        "cancel",
        Transport::Tcp,
        Family::V4,
        false,
        &NO_MEDIA,
    )
}

/// B to A during the 183, A to B after the 200.
#[test]
fn early_media() -> anyhow::Result<()> {
    one_call(
        "sipp_scenarios::early_media",
        "early_media",
        Transport::Udp,
        Family::V4,
        false,
        &ONE_EACH_WAY,
    )
}

/// Media both ways before the hold and again after the resume.
#[test]
fn hold() -> anyhow::Result<()> {
    one_call(
        "sipp_scenarios::hold",
        "hold",
        Transport::Udp,
        Family::V4,
        false,
        &Expect {
            streams_at_uas: 2,
            streams_at_uac: 2,
        },
    )
}

#[test]
fn late_offer() -> anyhow::Result<()> {
    one_call(
        "sipp_scenarios::late_offer",
        "late_offer",
        Transport::Udp,
        Family::V4,
        false,
        &ONE_EACH_WAY,
    )
}

#[test]
fn options() -> anyhow::Result<()> {
    one_call(
        "sipp_scenarios::options",
        "options",
        Transport::Udp,
        Family::V4,
        false,
        &NO_MEDIA,
    )
}

#[test]
fn malformed() -> anyhow::Result<()> {
    one_call(
        "sipp_scenarios::malformed",
        "malformed",
        Transport::Udp,
        Family::V4,
        false,
        &NO_MEDIA,
    )
}

#[test]
fn unknown_source() -> anyhow::Result<()> {
    one_call(
        "sipp_scenarios::unknown_source",
        "unknown_source",
        Transport::Udp,
        Family::V4,
        false,
        &NO_MEDIA,
    )
}

#[test]
fn max_calls() -> anyhow::Result<()> {
    one_call(
        "sipp_scenarios::max_calls",
        "max_calls",
        Transport::Udp,
        Family::V4,
        false,
        &NO_MEDIA,
    )
}

/// The media ports `[auto_media_port]` gives calls 1..=`calls`.
fn auto_media_ports(base: u16, calls: u16) -> RangeInclusive<u16> {
    base..=base + 4 * (calls - 1)
}

/// `calls` calls of `<case>` at 100 calls/s, each `call_length` long;
/// returns the RTP that arrived at the UAS and at the UAC.
fn load_in(
    t: &TestDir,
    case: &str,
    calls: u16,
    call_length: Duration,
) -> anyhow::Result<(RtpCount, RtpCount)> {
    let bed = routed_bed()?;
    let mut uas = SippOptions::uas(
        &format!("{case}_uas.xml"),
        SocketAddr::new(B_V4.into(), SIP_PORT),
        B_V4.into(),
        B_MEDIA,
    );
    uas.calls = calls.into();
    uas.trace_msg = false;
    let mut uac = SippOptions::uac(
        &format!("{case}_uac.xml"),
        SocketAddr::new(A_V4.into(), SIP_PORT),
        SocketAddr::new(B_V4.into(), SIP_PORT),
        A_V4.into(),
        A_MEDIA,
    );
    uac.calls = calls.into();
    uac.rate = Some(100);
    uac.call_length = call_length;
    uac.trace_msg = false;
    let at_uas = RtpCounter::start(&bed.b, auto_media_ports(B_MEDIA, calls))?;
    let at_uac = RtpCounter::start(&bed.a, auto_media_ports(A_MEDIA, calls))?;
    let (uas_result, uac_result) = run_pair(t, &bed.b, &uas, &bed.a, &uac, DEADLINE)?;
    let at_uas = at_uas.stop()?;
    let at_uac = at_uac.stop()?;
    uac_result.ensure_all_succeeded()?;
    uas_result.ensure_all_succeeded()?;
    anyhow::ensure!(
        at_uas.bad_checksums == 0 && at_uac.bad_checksums == 0,
        "bad checksums: {at_uas:?} {at_uac:?}"
    );
    Ok((at_uas, at_uac))
}

/// 100 calls at 100 calls/s, signalling only (the load run uses 1 000).
#[test]
fn load_signalling() -> anyhow::Result<()> {
    root_test("load_signalling", |t| {
        let (at_uas, at_uac) = load_in(t, "load", 100, Duration::ZERO)?;
        anyhow::ensure!(
            at_uas.packets == 0 && at_uac.packets == 0,
            "RTP in a signalling-only load: {at_uas:?} {at_uac:?}"
        );
        Ok(())
    })
}

/// 100 calls at 100 calls/s with one second of RTP each way: every call's
/// own media port gets RTP, on both sides.
#[test]
fn load_media() -> anyhow::Result<()> {
    root_test("load_media", |t| {
        let (at_uas, at_uac) = load_in(t, "load_media", 100, Duration::from_secs(1))?;
        for (where_, count) in [("UAS", &at_uas), ("UAC", &at_uac)] {
            anyhow::ensure!(
                count.by_port.len() == 100 && count.payload_types.iter().eq([&8]),
                "RTP at the {where_} reached {} of 100 calls' ports: {count:?}",
                count.by_port.len()
            );
        }
        Ok(())
    })
}
