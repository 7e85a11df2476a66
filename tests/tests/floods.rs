//! Floods and exhaustion (issue 13, hardening): what the open internet and
//! a misbehaving trunk can send, in bounded amounts, and what must hold
//! meanwhile.
//!
//! - `ng-allow`: a controller outside it gets no answer at all (IPv4 and
//!   IPv6, a dual-stack ng socket), is counted (ng `statistics`,
//!   `/metrics`) and logged once per 10 s; a controller inside is served.
//! - An INVITE flood from one trunk at 10x `invite-rate`: limited per
//!   source (503 + Retry-After), while a second trunk's calls all complete.
//! - Garbage on the SIP ports (UDP; TCP: idle connections, slow-loris
//!   partial messages, garbage streams, more connections than allowed)
//!   and on the ng port: counted, memory bounded, a call and ng commands
//!   during the flood succeed.
//! - Port exhaustion: ng `offer` beyond the range is an ng error, the
//!   INVITE through the agent a 503; the call holding the ports keeps its
//!   media; new calls succeed once ports are free again.
//! - Probing the media range: unallocated ports and an allocated idle one
//!   answer strangers with nothing — no datagram, no ICMP.
//!
//! Every traffic loop is bounded in count and time; every figure is
//! printed (`--nocapture`) for the README's table.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use media_relay_tests::{
    Bed, BedOptions, Netns, TestDir,
    bed::{A_V4, A_V6, B_V4, B_V6, RA_V4, RA_V6, RB_V4, RB_V6},
    daemon::{Daemon, NgClient},
    http,
    media::{drain, rtp, udp_socket},
    root_test,
    sipp::{Sipp, SippOptions},
};
use media_user::ng::{self, Value};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

const SIP: u16 = 5060;
const METRICS: &str = "127.0.0.1:9464";
const SECRET: &str = "record-route-secret = \"floods: a secret of 32 bytes or more\"";

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// A /metrics sample of the daemon in `ns`.
fn metric(ns: &Netns, series: &str) -> anyhow::Result<f64> {
    let (status, body) = http::get(ns, METRICS.parse()?, "/metrics")?;
    ensure!(status == 200, "/metrics answered {status}");
    http::sample(&body, series).with_context(|| format!("no {series} in /metrics:\n{body}"))
}

/// The SIP agent's counters (OPTIONS sip:stats@ → 200 with a JSON body),
/// asked from `from` (a trunk's address in namespace `a`); retried, since
/// a flood may have filled the agent's input queue.
fn agent_stats(ns: &Netns, from: Ipv4Addr) -> anyhow::Result<serde_json::Value> {
    static N: AtomicU64 = AtomicU64::new(0);
    let s = ns.enter(|| Ok(UdpSocket::bind(sa(from, 5999))?))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let pid = std::process::id();
    for _ in 0..5 {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let req = format!(
            "OPTIONS sip:stats@{RA_V4}:{SIP} SIP/2.0\r\nVia: SIP/2.0/UDP {from}:5999;branch=z9hG4bK-stats-{pid}-{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@{from}>;tag=probe\r\nTo: <sip:stats@{RA_V4}>\r\n\
             Call-ID: stats-{pid}-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        s.send_to(req.as_bytes(), sa(RA_V4, SIP))?;
        let mut buf = vec![0u8; 65536];
        let Ok((n, _)) = s.recv_from(&mut buf) else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        ensure!(text.starts_with("SIP/2.0 200"), "stats: {text}");
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        return Ok(serde_json::from_str(body)?);
    }
    bail!("the agent did not answer OPTIONS sip:stats@ five times")
}

fn int(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The highest RSS of `pid` seen every 50 ms until stopped.
struct RssPeak {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl RssPeak {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = rss_kib(pid);
            // Bounded: 10 minutes at most.
            for _ in 0..12_000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map_or(0, |t| t.join().unwrap_or_default())
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An offer/answer SDP of one PCMA stream at `addr`:`port`.
fn sdp(addr: IpAddr, port: u16) -> String {
    let v = if addr.is_ipv4() { 4 } else { 6 };
    format!(
        "v=0\r\no=- 1 1 IN IP{v} {addr}\r\ns=-\r\nc=IN IP{v} {addr}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    )
}

/// The relay's address in an SDP we got back (c= and the first m= port).
fn relay_of(reply: &Value) -> anyhow::Result<SocketAddr> {
    let sdp = reply
        .get("sdp")
        .and_then(Value::as_str)
        .with_context(|| format!("no sdp in {reply:?}"))?;
    let ip = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 ").or(l.strip_prefix("c=IN IP6 ")))
        .context("no c= line")?
        .trim()
        .parse()?;
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split_whitespace().next())
        .context("no m=audio line")?
        .parse()?;
    Ok(SocketAddr::new(ip, port))
}

/// Call `call_id` over ng from A (`A_V4`:`a_port`) to B (`B_V4`:`b_port`):
/// the relay's address for A's media and for B's.
fn a_calls_b(
    ng: &NgClient,
    call_id: &str,
    a_port: u16,
    b_port: u16,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let relay_b = relay_of(
        &ng.ok(&Value::dict()
            .with("command", "offer")
            .with("call-id", call_id)
            .with("from-tag", "a")
            .with("sdp", sdp(A_V4.into(), a_port).as_str()))?,
    )?;
    let relay_a = relay_of(
        &ng.ok(&Value::dict()
            .with("command", "answer")
            .with("call-id", call_id)
            .with("from-tag", "a")
            .with("to-tag", "b")
            .with("sdp", sdp(B_V4.into(), b_port).as_str()))?,
    )?;
    Ok((relay_a, relay_b))
}

/// `n` RTP packets each way through a call; all must arrive, from the
/// relay's addresses.
fn media_both_ways(
    a: &UdpSocket,
    relay_a: SocketAddr,
    b: &UdpSocket,
    relay_b: SocketAddr,
    ssrc: u32,
    first_seq: u16,
    n: u16,
) -> anyhow::Result<()> {
    for (from, to, rx, seen_from) in [(a, relay_a, b, relay_b), (b, relay_b, a, relay_a)] {
        for seq in first_seq..first_seq + n {
            from.send_to(&rtp(ssrc, seq), to)?;
            if seq % 10 == 9 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let got = drain(rx, usize::from(n) + 5);
        ensure!(
            got.len() == usize::from(n),
            "{} of {n} RTP packets sent to {to} arrived",
            got.len()
        );
        ensure!(
            got.iter().all(|(_, src)| *src == seen_from),
            "RTP arrived from elsewhere than {seen_from}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------
// ng-allow
// ---------------------------------------------------------------------

/// `ng-allow` on a dual-stack ng socket (`[::]:2223`): controllers in b
/// (198.18.2.0/24) and A's IPv6 address (a /128) are served; A's IPv4
/// address and B's IPv6 address are outside and get nothing back for 50
/// datagrams each — pings and an offer, which is not applied. The refusals
/// are counted in ng `statistics` and `/metrics`, and logged once (the
/// warning is rate-limited) with the source.
#[test]
fn ng_allow_answers_only_the_controllers_listed() -> anyhow::Result<()> {
    root_test("ng_allow_answers_only_the_controllers_listed", |t| {
        const REFUSED_EACH: usize = 50;
        let bed = Bed::new(BedOptions::default())?;
        let allow = format!("127.0.0.1,::1,198.18.2.0/24,{A_V6}/128");
        let daemon = Daemon::start_ng(
            t,
            &bed.relay,
            &[
                "-i",
                "ra",
                "-i",
                "rb",
                "--xdp-mode",
                "off",
                "--ng-allow",
                &allow,
                "--metrics-listen",
                METRICS,
            ],
            "[::]:2223".parse()?,
        )?;
        let result = (|| -> anyhow::Result<()> {
            // Inside: B over IPv4, A over IPv6 (its /128).
            let inside_v4 = NgClient::bind(&bed.b, sa(B_V4, 0), sa(RB_V4, 2223))?;
            let inside_v6 = NgClient::bind(&bed.a, sa(A_V6, 0), sa(RA_V6, 2223))?;
            inside_v4.ok(&Value::dict().with("command", "ping"))?;
            inside_v6.ok(&Value::dict().with("command", "ping"))?;
            inside_v4.ok(&Value::dict()
                .with("command", "offer")
                .with("call-id", "allowed")
                .with("from-tag", "a")
                .with("sdp", sdp(A_V4.into(), 5000).as_str()))?;

            // Outside: A over IPv4 (first, so the one warning names it),
            // B over IPv6.
            let outside = [
                (
                    bed.a.enter(|| Ok(UdpSocket::bind(sa(A_V4, 0))?))?,
                    sa(RA_V4, 2223),
                ),
                (
                    bed.b.enter(|| Ok(UdpSocket::bind(sa(B_V6, 0))?))?,
                    sa(RB_V6, 2223),
                ),
            ];
            for (i, (s, server)) in outside.iter().enumerate() {
                for n in 0..REFUSED_EACH {
                    let dict = if n == 0 {
                        Value::dict()
                            .with("command", "offer")
                            .with("call-id", "intruder")
                            .with("from-tag", "x")
                            .with("sdp", sdp(A_V4.into(), 5002).as_str())
                    } else {
                        Value::dict().with("command", "ping")
                    };
                    s.send_to(
                        &ng::encode_request(format!("out-{i}-{n}").as_bytes(), &dict)?,
                        *server,
                    )?;
                }
            }
            for (s, server) in &outside {
                s.set_read_timeout(Some(Duration::from_millis(1500)))?;
                let mut buf = [0u8; 2048];
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    bail!(
                        "a controller outside ng-allow got {n} bytes back from {from} (sent to {server})"
                    );
                }
            }

            // The allowed controllers still are; the intruder's offer was
            // never applied.
            let list = inside_v6.ok(&Value::dict().with("command", "list"))?;
            let calls: Vec<&str> = list
                .get("calls")
                .and_then(Value::as_list)
                .context("calls")?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            ensure!(calls == ["allowed"], "calls {calls:?}");
            let refused = (2 * REFUSED_EACH) as i64;
            let st = inside_v4.ok(&Value::dict().with("command", "statistics"))?;
            let counted = st
                .get("statistics")
                .and_then(|s| s.get("controlstatistics"))
                .and_then(|c| c.get("refusedsourcecount"))
                .and_then(Value::as_int);
            ensure!(
                counted == Some(refused),
                "statistics refusedsourcecount {counted:?}, want {refused}"
            );
            // /metrics is copied once a second.
            std::thread::sleep(Duration::from_millis(1500));
            let m = metric(
                &bed.relay,
                "media_relay_ng_refused_total{reason=\"source_not_allowed\"}",
            )?;
            ensure!(m == refused as f64, "/metrics source_not_allowed {m}");
            let log = daemon.log_text();
            let warnings: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("outside ng-allow"))
                .collect();
            ensure!(
                warnings.len() == 1
                    && warnings[0].contains("WARN")
                    && warnings[0].contains(&A_V4.to_string()),
                "want one warning naming {A_V4} for {refused} refusals within 10 s, got {warnings:#?}"
            );
            println!(
                "ng-allow: {refused} datagrams from 2 controllers outside it (IPv4 and IPv6): 0 answered, \
                 {refused} counted, {} warning logged; 2 controllers inside served",
                warnings.len()
            );
            Ok(())
        })();
        daemon.report_failure(&result);
        result
    })
}

// ---------------------------------------------------------------------
// Probing the media range
// ---------------------------------------------------------------------

/// `Icmp: OutDestUnreachs` and `Icmp6OutDestUnreachs` of a namespace.
fn dest_unreachs_sent(ns: &Netns) -> anyhow::Result<(u64, u64)> {
    let snmp = ns.exec("cat", &["/proc/net/snmp"])?;
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (
        icmp.next().context("no Icmp: header")?,
        icmp.next().context("no Icmp: values")?,
    );
    let v4 = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutDestUnreachs")
        .context("no OutDestUnreachs")?
        .1
        .parse()?;
    let snmp6 = ns.exec("cat", &["/proc/net/snmp6"])?;
    let v6 = snmp6
        .lines()
        .find_map(|l| l.strip_prefix("Icmp6OutDestUnreachs"))
        .context("no Icmp6OutDestUnreachs")?
        .trim()
        .parse()?;
    Ok((v4, v6))
}

/// Counts ICMP and ICMPv6 destination-unreachable messages arriving in a
/// namespace (raw sockets), until stopped.
struct IcmpCounter {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl IcmpCounter {
    fn start(ns: &Netns) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (domain, proto, unreachable) in [
            (socket2::Domain::IPV4, socket2::Protocol::ICMPV4, 3u8),
            (socket2::Domain::IPV6, socket2::Protocol::ICMPV6, 1u8),
        ] {
            let s = ns.enter(|| {
                let s = socket2::Socket::new(domain, socket2::Type::RAW, Some(proto))?;
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(s)
            })?;
            let flag = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut n = 0;
                let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
                // Bounded: 2 minutes at most.
                let end = Instant::now() + Duration::from_secs(120);
                while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                    let Ok(len) = s.recv(&mut buf) else { continue };
                    // SAFETY: recv initialised the first `len` bytes.
                    let bytes: Vec<u8> = buf[..len]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    // An IPv4 raw socket gets the IP header too; IPv6's
                    // starts at the ICMPv6 header.
                    let ty = if domain == socket2::Domain::IPV4 {
                        let ihl = usize::from(bytes.first().copied().unwrap_or(0) & 0x0f) * 4;
                        bytes.get(ihl).copied()
                    } else {
                        bytes.first().copied()
                    };
                    if ty == Some(unreachable) {
                        n += 1;
                    }
                }
                n
            }));
        }
        Ok(Self { stop, threads })
    }

    /// (ICMP, ICMPv6) destination-unreachable messages received.
    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut counts = self.threads.drain(..).map(|t| t.join().unwrap_or(0));
        (counts.next().unwrap_or(0), counts.next().unwrap_or(0))
    }
}

impl Drop for IcmpCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Two strangers (198.18.1.3 and 2001:2:0:1::3, port 7000) in namespace
/// a, each with raw sockets counting the ICMP that reaches the namespace.
struct Prober {
    v4: UdpSocket,
    v6: UdpSocket,
}

impl Prober {
    fn new(bed: &Bed) -> anyhow::Result<Self> {
        let stranger_v4 = Ipv4Addr::new(198, 18, 1, 3);
        let stranger_v6 = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 3);
        bed.a
            .ip(&["addr", "add", &format!("{stranger_v4}/24"), "dev", "a0"])?;
        bed.a.ip(&[
            "addr",
            "add",
            &format!("{stranger_v6}/64"),
            "dev",
            "a0",
            "nodad",
        ])?;
        Ok(Self {
            v4: udp_socket(&bed.a, sa(stranger_v4, 7000), Duration::from_millis(10))?,
            v6: udp_socket(&bed.a, sa(stranger_v6, 7000), Duration::from_millis(10))?,
        })
    }

    /// Datagrams that came back to either socket.
    fn echoed(&self) -> usize {
        let mut n = 0;
        let mut buf = [0u8; 2048];
        for s in [&self.v4, &self.v6] {
            while s.recv_from(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    }
}

/// What a probe drew: datagrams back, ICMP(v6) unreachables received in
/// the prober's namespace, and sent by the relay's (its OutDestUnreachs).
#[derive(Debug, PartialEq, Eq)]
struct Drawn {
    echoed: usize,
    received: (u64, u64),
    sent: (u64, u64),
}

/// Run `send` (which returns how many datagrams it sent) with ICMP
/// counted, then wait for stragglers.
fn drawn(
    bed: &Bed,
    prober: &Prober,
    send: impl FnOnce() -> anyhow::Result<usize>,
) -> anyhow::Result<(usize, Drawn)> {
    let icmp = IcmpCounter::start(&bed.a)?;
    let before = dest_unreachs_sent(&bed.relay)?;
    let n = send()?;
    std::thread::sleep(Duration::from_millis(1000));
    let after = dest_unreachs_sent(&bed.relay)?;
    let echoed = prober.echoed();
    Ok((
        n,
        Drawn {
            echoed,
            received: icmp.stop(),
            sent: (after.0 - before.0, after.1 - before.1),
        },
    ))
}

const NOTHING: Drawn = Drawn {
    echoed: 0,
    received: (0, 0),
    sent: (0, 0),
};

/// The daemon for the probes: media range 42000–42099, learning window
/// 1 s.
fn probe_daemon(t: &TestDir, bed: &Bed, mode: &str) -> anyhow::Result<Daemon> {
    Daemon::start_legs(
        t,
        &bed.relay,
        mode,
        &[
            "--port-min",
            "42000",
            "--port-max",
            "42099",
            "--learning-window",
            "1",
        ],
    )
}

/// A stranger probes allocated ports whose calls are idle: the relay port
/// of an offer not yet answered, and both relay ports of an answered call
/// whose parties spoke and whose learning window has closed. Nothing
/// comes back — no datagram, no ICMP (counted by raw sockets at the
/// prober and by the relay namespace's OutDestUnreachs) — and nothing
/// reaches the call's parties. A closed port outside the media range,
/// probed last, does draw port-unreachables: the counting works.
fn probe_idle_calls(t: &TestDir, mode: &str) -> anyhow::Result<()> {
    let bed = Bed::new(BedOptions {
        peer_xdp: mode == "native",
        static_neighbours: false,
    })?;
    let daemon = probe_daemon(t, &bed, mode)?;
    let result = (|| -> anyhow::Result<()> {
        let ng = NgClient::new(&bed.relay, daemon.ng)?;
        let offered = relay_of(
            &ng.ok(&Value::dict()
                .with("command", "offer")
                .with("call-id", "offered")
                .with("from-tag", "a")
                .with("sdp", sdp(A_V4.into(), 5100).as_str()))?,
        )?;
        let a = udp_socket(&bed.a, sa(A_V4, 5000), Duration::from_millis(300))?;
        let b = udp_socket(&bed.b, sa(B_V4, 6000), Duration::from_millis(300))?;
        let (relay_a, relay_b) = a_calls_b(&ng, "latched", 5000, 6000)?;
        media_both_ways(&a, relay_a, &b, relay_b, 0xca11, 0, 5)?;
        // The learning window (1 s) closes; the call falls silent.
        std::thread::sleep(Duration::from_millis(1300));
        let prober = Prober::new(&bed)?;
        let (sent, idle) = drawn(&bed, &prober, || {
            let mut n = 0;
            for seq in 0..20 {
                for to in [offered, relay_a, relay_b] {
                    prober.v4.send_to(&rtp(0x0bad, seq), to)?;
                    n += 1;
                }
            }
            Ok(n)
        })?;
        let at_parties = drain(&a, 100).len() + drain(&b, 100).len();
        let (control_sent, control) = drawn(&bed, &prober, || {
            for _ in 0..3 {
                prober.v4.send_to(b"probe", sa(RA_V4, 41_998))?;
                prober.v6.send_to(b"probe", sa(RA_V6, 41_998))?;
            }
            Ok(6)
        })?;
        println!(
            "probe ({mode}): {sent} datagrams from a stranger to an offered call's port and a latched idle \
             call's 2 ports: {idle:?}, {at_parties} reached the parties; control ({control_sent} to port \
             41998, outside the range): {control:?}"
        );
        ensure!(
            control.received.0 >= 1 && control.received.1 >= 1 && control.sent.0 >= 1,
            "the ICMP counting does not see the control's port-unreachables: {control:?}"
        );
        ensure!(idle == NOTHING, "probing idle calls drew {idle:?}");
        ensure!(
            at_parties == 0,
            "{at_parties} stranger datagrams reached the parties"
        );
        // The call itself still works.
        media_both_ways(&a, relay_a, &b, relay_b, 0xca11, 5, 5)?;
        Ok(())
    })();
    daemon.report_failure(&result);
    result
}

#[test]
fn probing_idle_calls_draws_nothing_native() -> anyhow::Result<()> {
    root_test("probing_idle_calls_draws_nothing_native", |t| {
        probe_idle_calls(t, "native")
    })
}

#[test]
fn probing_idle_calls_draws_nothing_off() -> anyhow::Result<()> {
    root_test("probing_idle_calls_draws_nothing_off", |t| {
        probe_idle_calls(t, "off")
    })
}

/// Strangers probe every port of the media range no call holds (3
/// datagrams per port, IPv4 and IPv6) while a call holds others: with
/// XDP nothing may come back — the daemon holds a flow for every port of
/// its calls (one that hands packets to its socket where XDP does not
/// forward), so the program drops what finds no flow in the range
/// instead of letting the kernel answer port-unreachable. With
/// `--xdp-mode off` the kernel owns those ports: no datagram comes back,
/// and its ICMP is rate-limited (a burst of 6 per family, then about one
/// a second per prober): a dozen answers to ~600 probes, no storm.
fn probe_unallocated(t: &TestDir, mode: &str) -> anyhow::Result<()> {
    let bed = Bed::new(BedOptions {
        peer_xdp: mode == "native",
        static_neighbours: false,
    })?;
    let daemon = probe_daemon(t, &bed, mode)?;
    let result = (|| -> anyhow::Result<()> {
        // A call holds ports of the range meanwhile.
        let ng = NgClient::new(&bed.relay, daemon.ng)?;
        let held = ng.ok(&Value::dict()
            .with("command", "offer")
            .with("call-id", "held")
            .with("from-tag", "a")
            .with(
                "sdp",
                "v=0\r\no=- 1 1 IN IP4 198.18.1.2\r\ns=-\r\nc=IN IP4 198.18.1.2\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n",
            ))?;
        ensure!(held.get("sdp").is_some(), "the held call: {held:?}");
        let q = ng.ok(&Value::dict()
            .with("command", "query")
            .with("call-id", "held"))?;
        let mut held_ports = Vec::new();
        for tag in q.get("tags").and_then(Value::as_dict).into_iter().flatten() {
            for m in tag
                .1
                .get("medias")
                .and_then(Value::as_list)
                .into_iter()
                .flatten()
            {
                for st in m
                    .get("streams")
                    .and_then(Value::as_list)
                    .into_iter()
                    .flatten()
                {
                    if let Some(p) = st.get("local port").and_then(Value::as_int) {
                        held_ports.push(u16::try_from(p)?);
                    }
                }
            }
        }
        ensure!(!held_ports.is_empty(), "the held call has no ports: {q:?}");
        let unheld: Vec<u16> = (42_000..=42_099u16)
            .filter(|p| !held_ports.contains(p))
            .collect();
        let prober = Prober::new(&bed)?;
        let (sent, got) = drawn(&bed, &prober, || {
            let mut n = 0;
            for &port in &unheld {
                for seq in 0..3 {
                    prober.v4.send_to(&rtp(0x5eed, seq), sa(RA_V4, port))?;
                    prober.v6.send_to(&rtp(0x5eed, seq), sa(RA_V6, port))?;
                    n += 2;
                }
                if port % 10 == 9 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(n)
        })?;
        println!(
            "probe ({mode}): {sent} datagrams to the {} ports of the range no call holds (a call holds {held_ports:?}): {got:?}",
            unheld.len()
        );
        if mode == "off" {
            // The kernel's limit: a burst of 6 per family, then about one
            // a second per prober (the probe takes about a second).
            let icmp = got.received.0 + got.received.1;
            ensure!(
                got.echoed == 0 && icmp <= 16,
                "probing unallocated ports drew {got:?}: more than the kernel's rate limit lets through"
            );
        } else {
            ensure!(got == NOTHING, "probing unallocated ports drew {got:?}");
        }
        Ok(())
    })();
    daemon.report_failure(&result);
    result
}

#[test]
fn probing_unallocated_ports_draws_nothing_native() -> anyhow::Result<()> {
    root_test("probing_unallocated_ports_draws_nothing_native", |t| {
        probe_unallocated(t, "native")
    })
}

#[test]
fn probing_unallocated_ports_draws_nothing_generic() -> anyhow::Result<()> {
    root_test("probing_unallocated_ports_draws_nothing_generic", |t| {
        probe_unallocated(t, "generic")
    })
}

#[test]
fn probing_unallocated_ports_off_draws_only_rate_limited_icmp() -> anyhow::Result<()> {
    root_test(
        "probing_unallocated_ports_off_draws_only_rate_limited_icmp",
        |t| probe_unallocated(t, "off"),
    )
}

// ---------------------------------------------------------------------
// The SIP agent under floods
// ---------------------------------------------------------------------

/// A media-relay configuration with the SIP agent: media on `ra` and `rb`,
/// the trunk side on `ra`, the PBX side on `rb`, the PBX at b; `top`
/// before the tables, `sip` into `[sip]`; `trunks` as (name, sources in
/// TOML), the first one the default.
fn agent_toml(top: &str, sip: &str, trunks: &[(&str, &str)]) -> String {
    let mut s = format!(
        r#"{top}
[[interface]]
netdev = "ra"
[[interface]]
netdev = "rb"

[sip]
trunk-listen = "{RA_V4}:{SIP}"
pbx-listen = "{RB_V4}:{SIP}"
pbx = "{B_V4}:{SIP}"
media = ["127.0.0.1:2223"]
media-poll = 1
{SECRET}
{sip}
"#
    );
    for (i, (name, sources)) in trunks.iter().enumerate() {
        s.push_str(&format!(
            "\n[[sip.trunk]]\nname = \"{name}\"\nsources = [{sources}]\ntarget = \"{A_V4}:{SIP}\"\ndefault = {}\n",
            i == 0
        ));
    }
    s
}

/// `media-relay run --config <toml>` in the relay namespace, XDP native,
/// /metrics on.
fn start_agent(t: &TestDir, bed: &Bed, toml: &str) -> anyhow::Result<Daemon> {
    let config = t.write("media-relay.toml", toml)?;
    let config = config.to_string_lossy().into_owned();
    Daemon::start(
        t,
        &bed.relay,
        &[
            "--config",
            &config,
            "--xdp-mode",
            "native",
            "--learning-window",
            "1",
            "--metrics-listen",
            METRICS,
        ],
    )
}

/// No call left at the media daemon (waiting a little for BYEs in flight).
fn no_calls_left(ng: &NgClient) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = ng.ok(&Value::dict().with("command", "list"))?;
        let n = list
            .get("calls")
            .and_then(Value::as_list)
            .map_or(0, <[Value]>::len);
        if n == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "calls left at the media daemon: {list:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One trunk sends INVITEs at 10x `invite-rate` (500 at 100/s, SIPp's
/// `flood_uac.xml`) while a second trunk places 20 calls at 4/s. The
/// agent limits per source address: the flood gets 503 + Retry-After for
/// what exceeds its own rate (every INVITE answered one way or the other),
/// and every call of the second trunk completes.
#[test]
fn an_invite_flood_from_one_trunk_leaves_another_trunks_calls_alone() -> anyhow::Result<()> {
    root_test(
        "an_invite_flood_from_one_trunk_leaves_another_trunks_calls_alone",
        |t| {
            const RATE: u64 = 10;
            const FLOOD_RATE: u32 = 100;
            const FLOOD_CALLS: u32 = 500;
            const OTHER_CALLS: u32 = 20;
            let bed = Bed::new(BedOptions {
                peer_xdp: true,
                static_neighbours: false,
            })?;
            let other = Ipv4Addr::new(198, 18, 1, 3);
            bed.a
                .ip(&["addr", "add", &format!("{other}/24"), "dev", "a0"])?;
            let daemon = start_agent(
                t,
                &bed,
                &agent_toml(
                    "",
                    &format!("invite-rate = {RATE}"),
                    &[
                        ("flood", &format!("\"{A_V4}\"")),
                        ("other", &format!("\"{other}\"")),
                    ],
                ),
            )?;
            let result = (|| -> anyhow::Result<()> {
                let ng = NgClient::new(&bed.relay, daemon.ng)?;
                // The PBX answers whatever comes; it is stopped (by PID) at
                // the end, its count of calls unknown in advance.
                let mut uas = SippOptions::uas("load_uas.xml", sa(B_V4, SIP), B_V4.into(), 20000);
                uas.calls = 100_000;
                uas.trace_msg = false;
                uas.timeout = Duration::from_secs(120);
                let pbx = Sipp::start(t, &bed.b, &uas)?;
                let mut flood = SippOptions::uac(
                    "flood_uac.xml",
                    sa(A_V4, SIP),
                    sa(RA_V4, SIP),
                    A_V4.into(),
                    10000,
                );
                flood.calls = FLOOD_CALLS;
                flood.rate = Some(FLOOD_RATE);
                let mut calls = SippOptions::uac(
                    "load_uac.xml",
                    sa(other, SIP),
                    sa(RA_V4, SIP),
                    other.into(),
                    30000,
                );
                calls.calls = OTHER_CALLS;
                calls.rate = Some(4);
                calls.call_length = Duration::from_millis(200);
                let t0 = Instant::now();
                let flooder = Sipp::start(t, &bed.a, &flood)?;
                std::thread::sleep(Duration::from_millis(500));
                let caller = Sipp::start(t, &bed.a, &calls)?;
                let caller_r = caller.wait(Duration::from_secs(60))?;
                let flood_r = flooder.wait(Duration::from_secs(60))?;
                let flood_secs = t0.elapsed().as_secs_f64();
                drop(pbx);
                let st = agent_stats(&bed.a, A_V4)?;
                let limited = int(&st["rate_limited"]);
                let total = int(&st["calls_total"]);
                let admitted = total.saturating_sub(u64::from(OTHER_CALLS));
                let messages = std::fs::read_to_string(flood_r.logs().join("messages.log"))
                    .unwrap_or_default();
                let (refusals, retry_after) = (
                    messages.matches("SIP/2.0 503 ").count(),
                    messages.matches("Retry-After: 1").count(),
                );
                println!(
                    "INVITE flood: {FLOOD_CALLS} INVITEs at {FLOOD_RATE}/s from one trunk (invite-rate {RATE}/s) \
                     over {flood_secs:.1} s: {limited} refused 503 (Retry-After: 1 on {retry_after} of {refusals} \
                     503s SIPp got), {admitted} admitted; the other trunk: {} of {OTHER_CALLS} calls completed",
                    caller_r.successful
                );
                caller_r.ensure_all_succeeded()?;
                flood_r.ensure_all_succeeded()?;
                ensure!(
                    limited + admitted == u64::from(FLOOD_CALLS),
                    "{limited} limited + {admitted} admitted != {FLOOD_CALLS}: {st}"
                );
                // One second's burst plus the rate over the run (and a
                // second of slack), no more.
                let allowed = RATE + RATE * (flood_secs.ceil() as u64 + 1);
                ensure!(
                    admitted >= RATE && admitted <= allowed,
                    "{admitted} flood INVITEs admitted, want {RATE}..={allowed}"
                );
                ensure!(
                    refusals >= usize::try_from(limited)? && retry_after >= refusals,
                    "503s seen {refusals}, with Retry-After {retry_after}, limited {limited}"
                );
                no_calls_left(&ng)
            })();
            daemon.report_failure(&result);
            result
        },
    )
}

/// Kernel UDP receive-buffer drops in a namespace (`Udp: RcvbufErrors`):
/// datagrams that never reached the daemon because it was behind.
fn udp_rcvbuf_errors(ns: &Netns) -> anyhow::Result<u64> {
    let snmp = ns.exec("cat", &["/proc/net/snmp"])?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        udp.next().context("no Udp: header")?,
        udp.next().context("no Udp: values")?,
    );
    Ok(names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .context("no RcvbufErrors")?
        .1
        .parse()?)
}

/// Garbage datagrams for the SIP port, made once and sent in turn
/// ([`SipGarbage::get`]): random bytes mostly, every tenth a SIP-looking
/// request with a broken CSeq (which draws a 400, within refusal-rate),
/// every tenth a request head with a huge Content-Length, every fiftieth
/// 60 000 random bytes.
struct SipGarbage {
    random: Vec<Vec<u8>>,
    big: Vec<u8>,
}

impl SipGarbage {
    fn new(rng: &mut StdRng) -> Self {
        Self {
            random: (0..64)
                .map(|_| {
                    let len = rng.random_range(1..1400);
                    (0..len).map(|_| rng.random()).collect()
                })
                .collect(),
            big: (0..60_000).map(|_| rng.random()).collect(),
        }
    }

    fn get(&self, i: usize, src: SocketAddr) -> std::borrow::Cow<'_, [u8]> {
        if i % 50 == 49 {
            return self.big.as_slice().into();
        }
        match i % 10 {
            7 => format!(
                "OPTIONS sip:x@{RA_V4} SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bK-g{i}\r\n\
                 From: <sip:g@{src}>;tag=g\r\nTo: <sip:x@{RA_V4}>\r\nCall-ID: g{i}\r\nCSeq: ABC OPTIONS\r\n\r\n"
            )
            .into_bytes()
            .into(),
            8 => format!(
                "INVITE sip:{i}@{RA_V4} SIP/2.0\r\nVia: {}\r\nContent-Length: 99999\r\n\r\n",
                "x".repeat(i % 1000)
            )
            .into_bytes()
            .into(),
            _ => self.random[i % self.random.len()].as_slice().into(),
        }
    }
}

/// What the TCP part of the garbage flood saw.
#[derive(Debug, Default)]
struct TcpFlood {
    attempted: usize,
    /// Closed by the agent within 1 s (over a limit, or garbage).
    closed_at_once: usize,
    /// Closed after 1 s: idle and slow-loris connections.
    closed_later: usize,
    /// The longest a connection stayed open.
    longest: Duration,
}

/// Connections from `sources` (`per_source` each, in turn): a third idle,
/// a third slow-loris (a message begun, one header line every 300 ms,
/// never finished), a third a stream of random bytes. Every connection
/// must be closed by the agent within `within`.
fn tcp_flood(
    ns: &Netns,
    sources: &[Ipv4Addr],
    per_source: usize,
    within: Duration,
) -> anyhow::Result<TcpFlood> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let agent = std::net::SocketAddrV4::new(RA_V4, SIP);
    let conns = ns.enter(|| {
        let mut conns = Vec::new();
        for from in sources {
            for n in 0..per_source {
                let fd = socket(
                    AddressFamily::Inet,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
                bind(
                    raw,
                    &SockaddrIn::from(std::net::SocketAddrV4::new(*from, 0)),
                )?;
                connect(raw, &SockaddrIn::from(agent))?;
                let s = TcpStream::from(fd);
                s.set_nonblocking(true)?;
                conns.push((s, n % 3));
            }
        }
        Ok(conns)
    })?;
    // Let the agent accept (or refuse) every connection before any
    // closes and frees its place.
    std::thread::sleep(Duration::from_millis(500));
    let mut rng = StdRng::seed_from_u64(13);
    let mut out = TcpFlood {
        attempted: conns.len(),
        ..TcpFlood::default()
    };
    let t0 = Instant::now();
    let mut open: Vec<(TcpStream, usize, usize)> =
        conns.into_iter().map(|(s, kind)| (s, kind, 0)).collect();
    let mut buf = [0u8; 4096];
    while !open.is_empty() && t0.elapsed() < within {
        let elapsed = t0.elapsed();
        let mut still = Vec::with_capacity(open.len());
        for (mut s, kind, mut lines) in open {
            let closed = match s.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            let wrote = match kind {
                // Slow-loris: a header line every 300 ms.
                1 if elapsed >= Duration::from_millis(300) * u32::try_from(lines)? => {
                    let line = if lines == 0 {
                        format!("INVITE sip:pbx@{RA_V4} SIP/2.0\r\n")
                    } else {
                        format!("X-Slow-{lines}: loris\r\n")
                    };
                    lines += 1;
                    s.write_all(line.as_bytes())
                }
                // Garbage: 64 KiB of random bytes once.
                2 if lines == 0 => {
                    lines = 1;
                    let junk: Vec<u8> = (0..65_536).map(|_| rng.random()).collect();
                    s.write_all(&junk).or_else(|e| {
                        if e.kind() == std::io::ErrorKind::WouldBlock {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                }
                _ => Ok(()),
            };
            if closed || wrote.is_err() {
                if elapsed < Duration::from_secs(1) {
                    out.closed_at_once += 1;
                } else {
                    out.closed_later += 1;
                }
                out.longest = out.longest.max(elapsed);
            } else {
                still.push((s, kind, lines));
            }
        }
        open = still;
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        open.is_empty(),
        "{} of {} connections still open after {within:?}",
        open.len(),
        out.attempted
    );
    Ok(out)
}

/// Garbage on every port the appliance listens on, at once, bounded:
/// 20 000 datagrams each from a trunk and a stranger to the SIP port; 120
/// TCP connections from three trunk addresses (limits 32 per source, 48
/// in all), idle, slow-loris and garbage; 20 000 datagrams to the ng port.
/// Meanwhile 5 SIP calls and 20 ng offer/delete pairs all succeed, every
/// connection is closed within the configured times, the garbage is
/// counted, and the process's resident memory stays within a bound.
#[test]
fn garbage_floods_are_counted_bounded_and_calls_still_work() -> anyhow::Result<()> {
    root_test(
        "garbage_floods_are_counted_bounded_and_calls_still_work",
        |t| {
            const UDP_EACH: usize = 20_000;
            const NG_GARBAGE: usize = 20_000;
            const TCP_PER_SOURCE: usize = 40;
            const MAX_CONNECTIONS: usize = 48;
            const PER_SOURCE: usize = 32;
            const IDLE: u64 = 4;
            const MESSAGE: u64 = 2;
            // The bound on growth under the flood (see the README's table).
            const RSS_GROWTH_KIB: u64 = 64 << 10;
            let bed = Bed::new(BedOptions {
                peer_xdp: true,
                static_neighbours: false,
            })?;
            let trunks = [
                A_V4,
                Ipv4Addr::new(198, 18, 1, 3),
                Ipv4Addr::new(198, 18, 1, 4),
            ];
            let stranger = Ipv4Addr::new(198, 18, 1, 9);
            for ip in &trunks[1..] {
                bed.a
                    .ip(&["addr", "add", &format!("{ip}/24"), "dev", "a0"])?;
            }
            bed.a
                .ip(&["addr", "add", &format!("{stranger}/24"), "dev", "a0"])?;
            let daemon = start_agent(
                t,
                &bed,
                &agent_toml(
                    "",
                    &format!(
                        "tcp-max-connections = {MAX_CONNECTIONS}\ntcp-max-per-source = {PER_SOURCE}\n\
                         tcp-idle-timeout = {IDLE}\ntcp-message-timeout = {MESSAGE}"
                    ),
                    &[("carrier", "\"198.18.1.0/29\"")],
                ),
            )?;
            let result = (|| -> anyhow::Result<()> {
                // The legitimate controller retransmits, as Kamailio's
                // rtpengine module does: under the flood one datagram may
                // be lost (counted in the kernel's receive-buffer drops).
                let ng = NgClient::new(&bed.relay, daemon.ng)?.attempts(3);
                // Warm up: one call, so the figures compare like with like.
                let mut uas = SippOptions::uas("load_uas.xml", sa(B_V4, SIP), B_V4.into(), 20000);
                uas.calls = 6;
                uas.timeout = Duration::from_secs(90);
                let pbx = Sipp::start(t, &bed.b, &uas)?;
                let mut warm = SippOptions::uac(
                    "load_uac.xml",
                    sa(A_V4, SIP),
                    sa(RA_V4, SIP),
                    A_V4.into(),
                    10000,
                );
                warm.calls = 1;
                Sipp::start(t, &bed.a, &warm)?
                    .wait(Duration::from_secs(30))?
                    .ensure_all_succeeded()?;
                let before_stats = agent_stats(&bed.a, A_V4)?;
                let undecodable_before = metric(&bed.relay, "media_relay_ng_undecodable_total")?;
                let retransmitted_before =
                    metric(&bed.relay, "media_relay_ng_retransmissions_total")?;
                let rcvbuf_before = udp_rcvbuf_errors(&bed.relay)?;
                let rss_before = daemon.rss_kib();
                let peak = RssPeak::start(daemon.pid());
                let t0 = Instant::now();

                let (sip_udp, ng_flood, tcp, calls, ng_ok) = std::thread::scope(|s| {
                    // SIP over UDP: a trunk and a stranger.
                    let sip_udp = s.spawn(|| -> anyhow::Result<(usize, usize)> {
                        let socks = [
                            udp_socket(&bed.a, sa(A_V4, 6000), Duration::from_millis(1))?,
                            udp_socket(&bed.a, sa(stranger, 6000), Duration::from_millis(1))?,
                        ];
                        let garbage = SipGarbage::new(&mut StdRng::seed_from_u64(5060));
                        let (mut sent, mut back) = (0, 0);
                        let mut buf = [0u8; 4096];
                        let end = Instant::now() + Duration::from_secs(30);
                        for i in 0..UDP_EACH {
                            for s in &socks {
                                s.send_to(&garbage.get(i, s.local_addr()?), sa(RA_V4, SIP))?;
                                sent += 1;
                            }
                            if i % 100 == 99 {
                                for s in &socks {
                                    while s.recv_from(&mut buf).is_ok() {
                                        back += 1;
                                    }
                                }
                                std::thread::sleep(Duration::from_millis(2));
                            }
                            if Instant::now() > end {
                                break;
                            }
                        }
                        for s in &socks {
                            while s.recv_from(&mut buf).is_ok() {
                                back += 1;
                            }
                        }
                        Ok((sent, back))
                    });
                    // ng: random datagrams (mostly undecodable: no cookie),
                    // and every fourth a cookie with a bogus command.
                    let ng_flood = s.spawn(|| -> anyhow::Result<(usize, usize)> {
                        let s = udp_socket(
                            &bed.relay,
                            sa(Ipv4Addr::LOCALHOST, 0),
                            Duration::from_millis(1),
                        )?;
                        let mut rng = StdRng::seed_from_u64(2223);
                        // No spaces: without one there is no cookie.
                        let pool: Vec<Vec<u8>> = (0..64)
                            .map(|_| {
                                let len = rng.random_range(1..1400);
                                (0..len).map(|_| rng.random_range(0x21u8..=0xff)).collect()
                            })
                            .collect();
                        let (mut sent, mut back) = (0, 0);
                        let mut buf = vec![0u8; 65_536];
                        let end = Instant::now() + Duration::from_secs(30);
                        for i in 0..NG_GARBAGE {
                            if i % 4 == 3 {
                                s.send_to(
                                    format!("g{i} d7:command5:boguse").as_bytes(),
                                    daemon.ng,
                                )?;
                            } else {
                                s.send_to(&pool[i % pool.len()], daemon.ng)?;
                            }
                            sent += 1;
                            if i % 50 == 49 {
                                while s.recv_from(&mut buf).is_ok() {
                                    back += 1;
                                }
                                std::thread::sleep(Duration::from_millis(2));
                            }
                            if Instant::now() > end {
                                break;
                            }
                        }
                        s.set_read_timeout(Some(Duration::from_millis(300)))?;
                        while s.recv_from(&mut buf).is_ok() {
                            back += 1;
                        }
                        Ok((sent, back))
                    });
                    let tcp = s.spawn(|| {
                        tcp_flood(
                            &bed.a,
                            &trunks,
                            TCP_PER_SOURCE,
                            Duration::from_secs(IDLE.max(MESSAGE) + 4),
                        )
                    });
                    // The legitimate traffic, meanwhile.
                    let calls = s.spawn(|| -> anyhow::Result<u64> {
                        std::thread::sleep(Duration::from_millis(300));
                        let mut uac = SippOptions::uac(
                            "load_uac.xml",
                            sa(A_V4, SIP),
                            sa(RA_V4, SIP),
                            A_V4.into(),
                            10000,
                        );
                        uac.calls = 5;
                        uac.rate = Some(2);
                        uac.call_length = Duration::from_millis(500);
                        let r = Sipp::start(t, &bed.a, &uac)?.wait(Duration::from_secs(60))?;
                        r.ensure_all_succeeded()?;
                        Ok(r.successful)
                    });
                    let ng_ok = s.spawn(|| -> anyhow::Result<usize> {
                        for i in 0..20 {
                            let call = format!("legit-{i}");
                            ng.ok(&Value::dict()
                                .with("command", "offer")
                                .with("call-id", call.as_str())
                                .with("from-tag", "a")
                                .with("sdp", sdp(A_V4.into(), 5000).as_str()))?;
                            ng.ok(&Value::dict()
                                .with("command", "delete")
                                .with("call-id", call.as_str()))?;
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Ok(20)
                    });
                    (
                        sip_udp.join().expect("sip udp thread"),
                        ng_flood.join().expect("ng thread"),
                        tcp.join().expect("tcp thread"),
                        calls.join().expect("calls thread"),
                        ng_ok.join().expect("ng client thread"),
                    )
                });
                let flood_secs = t0.elapsed().as_secs_f64();
                let ((sip_sent, sip_back), (ng_sent, ng_back), tcp, calls, ng_ok) =
                    (sip_udp?, ng_flood?, tcp?, calls?, ng_ok?);
                std::thread::sleep(Duration::from_millis(1500));
                let rss_peak = peak.stop();
                let rss_after = daemon.rss_kib();
                drop(pbx);
                let st = agent_stats(&bed.a, A_V4)?;
                let d = |k: &str| int(&st[k]).saturating_sub(int(&before_stats[k]));
                let tr = |k: &str| {
                    int(&st["transport"][k]).saturating_sub(int(&before_stats["transport"][k]))
                };
                let undecodable =
                    metric(&bed.relay, "media_relay_ng_undecodable_total")? - undecodable_before;
                let rcvbuf = udp_rcvbuf_errors(&bed.relay)? - rcvbuf_before;
                let retransmitted = metric(&bed.relay, "media_relay_ng_retransmissions_total")?
                    - retransmitted_before;
                println!(
                    "garbage flood, {flood_secs:.1} s:\n\
                     - SIP/UDP: {sip_sent} datagrams ({:.0}/s; half from a stranger) → {} counted malformed, \
                     {} dropped at the agent's full queue (both with the TCP garbage), {sip_back} answered \
                     (400s, within refusal-rate), {} refusals unanswered\n\
                     - SIP/TCP: {} connections from 3 trunk addresses (limits {PER_SOURCE}/source, \
                     {MAX_CONNECTIONS} in all) → refused per source {}, over the total {}, slow-loris \
                     closed {}, idle closed {}; {} closed within 1 s, {} later, the last \
                     after {:.1} s\n\
                     - ng: {ng_sent} datagrams ({:.0}/s) → {undecodable} undecodable, {ng_back} answered \
                     (bogus commands); kernel UDP receive-buffer drops in the namespace {rcvbuf}\n\
                     - meanwhile: {calls} of 5 SIP calls, {ng_ok} of 20 ng offer/delete pairs succeeded \
                     ({retransmitted} requests retransmitted by the controller)\n\
                     - RSS: {rss_before} KiB before, {rss_peak} KiB peak, {rss_after} KiB after \
                     (bound: before + {RSS_GROWTH_KIB} KiB)",
                    sip_sent as f64 / flood_secs,
                    d("malformed"),
                    tr("events_dropped"),
                    d("refusals_unanswered"),
                    tcp.attempted,
                    tr("tcp_refused_per_source"),
                    tr("tcp_refused_max_connections"),
                    tr("tcp_slow_closed"),
                    tr("tcp_idle_closed"),
                    tcp.closed_at_once,
                    tcp.closed_later,
                    tcp.longest.as_secs_f64(),
                    ng_sent as f64 / flood_secs,
                );
                // Every datagram was counted by the agent, or dropped
                // (counted) at its full queue, or by the kernel (counted).
                let sip_counted = d("malformed") + tr("events_dropped") + rcvbuf;
                ensure!(
                    sip_counted + 2 >= sip_sent as u64,
                    "SIP garbage: {sip_sent} sent, {sip_counted} accounted for: {st}"
                );
                ensure!(
                    undecodable as u64 + ng_back as u64 + rcvbuf >= ng_sent as u64,
                    "ng garbage: {ng_sent} sent, {undecodable} undecodable + {ng_back} answered + {rcvbuf} dropped"
                );
                ensure!(
                    tr("tcp_refused_per_source") + tr("tcp_refused_max_connections")
                        == (tcp.attempted - MAX_CONNECTIONS) as u64,
                    "TCP: {} attempted, {MAX_CONNECTIONS} allowed: {st}",
                    tcp.attempted
                );
                ensure!(
                    tr("tcp_refused_per_source") == (TCP_PER_SOURCE - PER_SOURCE) as u64,
                    "TCP: refused per source: {st}"
                );
                // 400s within refusal-rate (20/s) per source: 2 sources.
                let answerable = 2.0 * 20.0 * (flood_secs + 1.0);
                ensure!(
                    sip_back as f64 <= answerable,
                    "{sip_back} 400s answered in {flood_secs:.1} s, refusal-rate allows {answerable}"
                );
                ensure!(
                    tr("tcp_slow_closed") >= 1 && tr("tcp_idle_closed") >= 1,
                    "slow and idle connections closed: {st}"
                );
                ensure!(
                    int(&st["transport"]["tcp_connections"]) == 0,
                    "connections left: {st}"
                );
                ensure!(
                    rss_peak <= rss_before + RSS_GROWTH_KIB,
                    "RSS grew from {rss_before} to {rss_peak} KiB"
                );
                no_calls_left(&ng)
            })();
            daemon.report_failure(&result);
            result
        },
    )
}

// ---------------------------------------------------------------------
// Port exhaustion
// ---------------------------------------------------------------------

/// A range of 4 port pairs (2 calls, `port-quarantine = 0`): the third
/// offer over ng is an ng error ("Ran out of ports") that leaves nothing
/// behind, an INVITE through the agent meanwhile gets 503, the calls
/// holding the ports keep their media; once one call is deleted, SIP calls
/// go through again (one at a time: the free pairs fit one), and so does
/// the refused ng call.
#[test]
fn port_exhaustion_is_refused_cleanly_and_recovers() -> anyhow::Result<()> {
    root_test("port_exhaustion_is_refused_cleanly_and_recovers", |t| {
        let bed = Bed::new(BedOptions {
            peer_xdp: true,
            static_neighbours: false,
        })?;
        let daemon = start_agent(
            t,
            &bed,
            &agent_toml(
                "port-min = 40000\nport-max = 40007\nport-quarantine = 0",
                "",
                &[("carrier", &format!("\"{A_V4}\""))],
            ),
        )?;
        let result = (|| -> anyhow::Result<()> {
            let ng = NgClient::new(&bed.relay, daemon.ng)?;
            let a = udp_socket(&bed.a, sa(A_V4, 5000), Duration::from_millis(300))?;
            let b = udp_socket(&bed.b, sa(B_V4, 6000), Duration::from_millis(300))?;
            let (relay_a, relay_b) = a_calls_b(&ng, "one", 5000, 6000)?;
            media_both_ways(&a, relay_a, &b, relay_b, 0x0001, 0, 20)?;
            a_calls_b(&ng, "two", 5002, 6002)?;

            // Full: the third offer is refused, and leaves nothing.
            let ctl = ng.request(
                &Value::dict()
                    .with("command", "offer")
                    .with("call-id", "three")
                    .with("from-tag", "a")
                    .with("sdp", sdp(A_V4.into(), 5004).as_str()),
            )?;
            let reason = ctl.get("error-reason").and_then(Value::as_str);
            ensure!(
                ctl.get("result").and_then(Value::as_str) == Some("error")
                    && reason == Some("Ran out of ports"),
                "the offer beyond the range: {ctl:?}"
            );
            let st = ng.ok(&Value::dict().with("command", "statistics"))?;
            let ports = st
                .get("statistics")
                .and_then(|s| s.get("ports"))
                .context("ports in statistics")?;
            let port = |k: &str| ports.get(k).and_then(Value::as_int).unwrap_or(-1);
            ensure!(
                (port("total"), port("used"), port("exhaustions")) == (8, 8, 1),
                "ports after the refusal: {ports:?}"
            );

            // Through the agent: 503 (max_calls_uac.xml expects exactly
            // that), with nothing sent to the PBX.
            let refused = SippOptions::uac(
                "max_calls_uac.xml",
                sa(A_V4, SIP),
                sa(RA_V4, SIP),
                A_V4.into(),
                10100,
            );
            Sipp::start(t, &bed.a, &refused)?
                .wait(Duration::from_secs(30))?
                .ensure_all_succeeded()?;
            let agent = agent_stats(&bed.a, A_V4)?;
            ensure!(
                int(&agent["ng_errors"]) == 1 && int(&agent["responses"]["503"]) == 1,
                "the agent's refusal: {agent}"
            );
            let st = ng.ok(&Value::dict().with("command", "statistics"))?;
            let exhaustions = st
                .get("statistics")
                .and_then(|s| s.get("ports"))
                .and_then(|p| p.get("exhaustions"))
                .and_then(Value::as_int);
            ensure!(exhaustions == Some(2), "exhaustions {exhaustions:?}");

            // The call holding ports kept its media throughout.
            media_both_ways(&a, relay_a, &b, relay_b, 0x0001, 20, 20)?;

            // Ports free again: SIP calls go through, one at a time.
            ng.ok(&Value::dict()
                .with("command", "delete")
                .with("call-id", "two"))?;
            let mut uas = SippOptions::uas("load_uas.xml", sa(B_V4, SIP), B_V4.into(), 20000);
            uas.calls = 3;
            let mut uac = SippOptions::uac(
                "load_uac.xml",
                sa(A_V4, SIP),
                sa(RA_V4, SIP),
                A_V4.into(),
                10000,
            );
            uac.calls = 3;
            uac.limit = Some(1);
            uac.call_length = Duration::from_millis(300);
            let (uas_r, uac_r) = media_relay_tests::sipp::run_pair(
                t,
                &bed.b,
                &uas,
                &bed.a,
                &uac,
                Duration::from_secs(60),
            )?;
            uac_r.ensure_all_succeeded()?;
            uas_r.ensure_all_succeeded()?;
            // And the refused ng call now fits.
            a_calls_b(&ng, "three", 5004, 6004)?;
            media_both_ways(&a, relay_a, &b, relay_b, 0x0001, 40, 20)?;
            println!(
                "port exhaustion: 4 pairs (2 calls) full → ng offer: error-reason {reason:?}; INVITE: 503; \
                 the holding call's 60 RTP packets each way all arrived; after one delete: 3 of 3 SIP calls, \
                 then the refused ng call, succeeded"
            );
            for call in ["one", "three"] {
                ng.ok(&Value::dict()
                    .with("command", "delete")
                    .with("call-id", call))?;
            }
            no_calls_left(&ng)
        })();
        daemon.report_failure(&result);
        result
    })
}
