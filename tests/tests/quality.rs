//! Per-stream quality against ground truth: a call through `media-relay
//! run`, A and B both sending 20 ms G.711 RTP, with one leg impaired at a
//! time, in XDP native and on the userspace path:
//!
//! - jitter: A's packets leave 20 ms apart plus a uniform 0–18 ms offset
//!   each (this machine's kernel has no `sch_netem`, so the sender
//!   injects the delay variation itself: the truth is exact). The relay's
//!   interarrival jitter for A's stream must match RFC 3550's jitter
//!   computed by B's socket on the same packets within 10 %, and the
//!   injected truth (E|D| of two such offsets: 6 ms) within the
//!   estimator's noise; B's stream, on the clean leg, matches what A's
//!   socket sees (0 on an idle host) and stays under half of A's;
//! - a shaper: `tc tbf` on A's veth at a rate below the stream's, so a
//!   queue builds: the relay's "delay above minimum" for A's stream
//!   follows the queue B's socket sees within 10 %, and B's stream shows
//!   none;
//! - loss: A's sender leaves out 2 % of its packets, one at a time, then
//!   bursts of 4 (the kernel has no netem: the truth is what was left
//!   out): the relay's lost count and its bursts (count, longest) equal
//!   the truth;
//! - alerts: each impairment raises its alert (jitter, delay_rise, loss,
//!   burst) on A's leg within 5 s of its start, never on B's, and a clean
//!   phase after it logs the recovery (thresholds in a config file, set
//!   where these impairments cross them).

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use media_relay_tests::{
    Bed, BedOptions, TestDir,
    bed::{A_V4, B_V4},
    calls::{a_calls_b, stream},
    daemon::{Daemon, NgClient},
    media::{recv_stamped, rtp, stamp_arrivals, udp_socket},
    root_test,
};
use media_user::ng::Value;

/// Packets per direction with jitter on A's leg: 6 s of 20 ms packets.
const JITTER_PACKETS: u16 = 300;
/// Packets per direction through the shaper: 2 s.
const SHAPED_PACKETS: u16 = 100;
const WARM: u16 = 20;

/// An arrival: when B's (or A's) kernel received the packet (realtime
/// ns) and its RTP timestamp.
type Arrival = (u64, u32);

/// RFC 3550 §A.8 jitter, in ms, of `arrivals` in arrival order (8 kHz).
fn rfc3550_jitter_ms(arrivals: &[Arrival]) -> f64 {
    let mut j = 0.0;
    let mut last: Option<f64> = None;
    for transit in transits_ms(arrivals) {
        if let Some(l) = last {
            j += ((transit - l).abs() - j) / 16.0;
        }
        last = Some(transit);
    }
    j
}

/// Relative transit times (arrival − RTP timestamp), ms, from the first.
fn transits_ms(arrivals: &[Arrival]) -> impl Iterator<Item = f64> + '_ {
    let t0 = arrivals.first().map_or(0, |a| a.0);
    arrivals
        .iter()
        .map(move |&(t, ts)| (t - t0) as f64 / 1e6 - f64::from(ts) / 8.0)
}

/// One direction of the call: a party's socket, where it sends (its relay
/// port), the other party's socket, the party's SSRC.
#[derive(Clone, Copy)]
struct Leg<'a> {
    from: &'a UdpSocket,
    to: SocketAddr,
    at: &'a UdpSocket,
    ssrc: u32,
}

/// Send `n` packets from `seq0` every 20 ms along `leg`, each `wobble(i)`
/// µs late, while the other party receives what the relay forwards. The
/// RTP timestamp is the packet's nominal send time since `epoch` (8 kHz),
/// as a phone's sampling clock: pauses between calls of this function do
/// not look like delay.
fn talk(
    leg: Leg<'_>,
    seq0: u16,
    n: u16,
    epoch: Instant,
    wobble: impl Fn(u16) -> u64,
) -> anyhow::Result<Vec<Arrival>> {
    talk_dropping(leg, seq0, n, epoch, wobble, |_| false)
}

/// [`talk`], leaving out the packets `dropped(i)` names: lost before the
/// relay, as the network would lose them (their sequence numbers and
/// timestamps are skipped).
fn talk_dropping(
    leg: Leg<'_>,
    seq0: u16,
    n: u16,
    epoch: Instant,
    wobble: impl Fn(u16) -> u64,
    dropped: impl Fn(u16) -> bool,
) -> anyhow::Result<Vec<Arrival>> {
    stamp_arrivals(leg.at)?;
    std::thread::scope(|s| {
        let rx = s.spawn(|| {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            // The socket's read timeout ends it (400 ms after the last).
            while let Ok((len, Some(t))) = recv_stamped(leg.at, &mut buf) {
                if len >= 12 && buf[8..12] == leg.ssrc.to_be_bytes() {
                    got.push((t, u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]])));
                }
            }
            got
        });
        let start = Instant::now();
        for i in 0..n {
            let nominal = start + Duration::from_millis(20 * u64::from(i));
            let due = nominal + Duration::from_micros(wobble(i));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if dropped(i) {
                continue;
            }
            let mut p = rtp(leg.ssrc, seq0 + i);
            let ts = (nominal.duration_since(epoch).as_micros() * 8 / 1000) as u32;
            p[4..8].copy_from_slice(&ts.to_be_bytes());
            leg.from.send_to(&p, leg.to)?;
        }
        Ok(rx.join().expect("receiver thread"))
    })
}

/// Both legs at once, `n` packets each from `seq0`, `ab`'s sent with
/// `wobble`; what each leg's receiver got, all of it.
fn both_talk(
    ab: Leg<'_>,
    ba: Leg<'_>,
    seq0: u16,
    n: u16,
    epoch: Instant,
    wobble: impl Fn(u16) -> u64 + Send,
) -> anyhow::Result<(Vec<Arrival>, Vec<Arrival>)> {
    both_talk_dropping(ab, ba, seq0, n, epoch, wobble, |_| false)
}

/// [`both_talk`], A's packets `dropped(i)` left out (lost on A's leg).
fn both_talk_dropping(
    ab: Leg<'_>,
    ba: Leg<'_>,
    seq0: u16,
    n: u16,
    epoch: Instant,
    wobble: impl Fn(u16) -> u64 + Send,
    dropped: impl Fn(u16) -> bool + Send + Sync + Copy,
) -> anyhow::Result<(Vec<Arrival>, Vec<Arrival>)> {
    let (at_b, at_a) = std::thread::scope(|s| {
        let t = s.spawn(move || talk_dropping(ab, seq0, n, epoch, wobble, dropped));
        let at_a = talk(ba, seq0, n, epoch, |_| 0);
        (t.join().expect("A's sender"), at_a)
    });
    let (at_b, at_a) = (at_b?, at_a?);
    let sent = (0..n).filter(|i| !dropped(*i)).count();
    anyhow::ensure!(
        at_b.len() == sent && at_a.len() == usize::from(n),
        "{} of {sent} and {} of {n} arrived",
        at_b.len(),
        at_a.len()
    );
    Ok((at_b, at_a))
}

/// A quality alert (or recovery) in the daemon's JSON log.
#[derive(Clone, Debug, PartialEq)]
struct Alert {
    leg: String,
    side: String,
    figure: String,
    measured: String,
    degraded: bool,
}

/// Every quality alert and recovery in `log`, in order.
fn alerts(log: &str) -> Vec<Alert> {
    log.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let f = v.get("fields")?;
            let degraded = match f.get("message")?.as_str()? {
                "media quality degraded" => true,
                "media quality recovered" => false,
                _ => return None,
            };
            let s = |k: &str| {
                f.get(k)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            Some(Alert {
                leg: s("leg"),
                side: s("side"),
                figure: s("figure"),
                measured: s("measured"),
                degraded,
            })
        })
        .collect()
}

/// Run `f` while reading the daemon's log every 50 ms, and `settle`
/// longer: the alerts logged meanwhile, each with when it was first seen
/// (from the start of `f`).
fn watching<T>(
    daemon: &Daemon,
    settle: Duration,
    f: impl FnOnce() -> T,
) -> (T, Vec<(Duration, Alert)>) {
    let before = alerts(&daemon.log_text()).len();
    let start = Instant::now();
    let done = std::sync::Mutex::new(None::<Instant>);
    std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut seen: Vec<(Duration, Alert)> = Vec::new();
            loop {
                let until = *done.lock().expect("lock");
                for a in alerts(&daemon.log_text())
                    .into_iter()
                    .skip(before + seen.len())
                {
                    seen.push((start.elapsed(), a));
                }
                if until.is_some_and(|u| Instant::now() >= u) {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let out = f();
        *done.lock().expect("lock") = Some(Instant::now() + settle);
        (out, watcher.join().expect("log watcher"))
    })
}

/// When `leg`'s `figure` was first seen to degrade (or recover).
fn seen_at(
    seen: &[(Duration, Alert)],
    leg: &str,
    figure: &str,
    degraded: bool,
) -> Option<Duration> {
    seen.iter()
        .find(|(_, a)| a.leg == leg && a.figure == figure && a.degraded == degraded)
        .map(|(t, _)| *t)
}

/// The alert about `figure` on A's leg came within 5 s, named A's side
/// and what was measured; B's leg raised none.
fn alerted_on_a(
    mode: &str,
    what: &str,
    seen: &[(Duration, Alert)],
    figure: &str,
    measured: &str,
) -> anyhow::Result<()> {
    let (at, alert) = seen
        .iter()
        .find(|(_, a)| a.leg == "a" && a.figure == figure && a.degraded)
        .with_context(|| format!("{mode}: {what}: no {figure} alert on A's leg in {seen:?}"))?;
    let at = *at;
    println!(
        "{mode}: {what}: {figure} alert on A's leg ({} side, {}) {:.1} s after it began",
        alert.side,
        alert.measured,
        at.as_secs_f64()
    );
    anyhow::ensure!(
        at <= Duration::from_secs(5),
        "{mode}: {what}: the {figure} alert came {:.1} s after it began",
        at.as_secs_f64()
    );
    anyhow::ensure!(
        alert.side == "caller" && alert.measured == measured,
        "{mode}: {what}: {alert:?}"
    );
    anyhow::ensure!(
        !seen.iter().any(|(_, a)| a.leg == "b" && a.degraded),
        "{mode}: {what}: B's clean leg raised an alert: {seen:?}"
    );
    Ok(())
}

/// `leg`'s `figures` all recovered in `seen`.
fn recovered(
    mode: &str,
    what: &str,
    seen: &[(Duration, Alert)],
    figures: &[&str],
) -> anyhow::Result<()> {
    for figure in figures {
        let at = seen_at(seen, "a", figure, false)
            .with_context(|| format!("{mode}: {what}: A's {figure} did not recover: {seen:?}"))?;
        println!(
            "{mode}: {what}: A's {figure} recovered {:.1} s after",
            at.as_secs_f64()
        );
    }
    Ok(())
}

fn query(ng: &NgClient) -> anyhow::Result<Value> {
    ng.ok(&Value::dict()
        .with("command", "query")
        .with("call-id", "quality"))
}

/// The `quality` dictionary of the stream on `port`.
fn quality(q: &Value, port: u16) -> anyhow::Result<&Value> {
    stream(q, port)
        .and_then(|s| s.get("quality"))
        .with_context(|| format!("no quality for port {port} in {q:?}"))
}

fn int(d: &Value, key: &str) -> anyhow::Result<i64> {
    d.get(key)
        .and_then(Value::as_int)
        .with_context(|| format!("{key} in {d:?}"))
}

fn jitter_one_leg(t: &TestDir, mode: &str) -> anyhow::Result<()> {
    let bed = Bed::new(BedOptions {
        peer_xdp: mode == "native",
        static_neighbours: true,
    })?;
    // Thresholds the impairments below cross (the defaults suit phones:
    // 30 ms of jitter; the sender's here is 6 ms, B's clean leg under 1).
    let config = t.write(
        "media-relay.toml",
        "[quality-alerts]\njitter-ms = 4.0\nloss-percent = 1.0\nburst-packets = 3.0\ndelay-rise-ms = 100.0\n",
    )?;
    let config = config.to_str().context("config path")?;
    let daemon = Daemon::start(
        t,
        &bed.relay,
        &[
            "--config",
            config,
            "--log-format",
            "json",
            "-i",
            "ra",
            "-i",
            "rb",
            "--xdp-mode",
            mode,
            "--port-min",
            "32000",
            "--port-max",
            "32999",
            "--learning-window",
            "1",
            // Quality is measured here, not the staleness bound: a loaded
            // CI host must not make the userspace path drop packets.
            "--userspace-max-delay",
            "1000",
        ],
    )?;
    let ng = NgClient::new(&bed.relay, daemon.ng)?;
    let result = (|| -> anyhow::Result<()> {
        let timeout = Duration::from_millis(400);
        let a = udp_socket(&bed.a, SocketAddr::new(A_V4.into(), 5000), timeout)?;
        let b = udp_socket(&bed.b, SocketAddr::new(B_V4.into(), 6000), timeout)?;
        let (relay_a, relay_b) = a_calls_b(&ng, "quality")?;
        // Both speak; the learning window closes; XDP takes over.
        let ab = Leg {
            from: &a,
            to: relay_a,
            at: &b,
            ssrc: 0xa1,
        };
        let ba = Leg {
            from: &b,
            to: relay_b,
            at: &a,
            ssrc: 0xb1,
        };
        let epoch = Instant::now();
        talk(ab, 0, WARM, epoch, |_| 0)?;
        talk(ba, 0, WARM, epoch, |_| 0)?;
        std::thread::sleep(Duration::from_millis(1300));
        let path = if mode == "off" { "userspace" } else { "xdp" };

        // Jitter: a uniform offset in 0..18 ms per packet of A's (a fixed
        // LCG: the same packets every run); under the 20 ms interval, so
        // the sender never has to hold one back.
        let wobble = |i: u16| {
            let x = u64::from(i)
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % 18_000
        };
        let (talked, seen) = watching(&daemon, Duration::from_millis(500), || {
            both_talk(ab, ba, WARM, JITTER_PACKETS, epoch, wobble)
        });
        let (at_b, at_a) = talked?;
        alerted_on_a(mode, "jitter", &seen, "jitter", "inbound")?;
        let q = query(&ng)?;
        let (qa, qb) = (quality(&q, relay_a.port())?, quality(&q, relay_b.port())?);
        for (who, d) in [("A", qa), ("B", qb)] {
            anyhow::ensure!(
                d.get("path").and_then(Value::as_str) == Some(path),
                "{who}'s stream measured on {:?}, want {path}",
                d.get("path")
            );
            anyhow::ensure!(int(d, "clock rate")? == 8000, "{who}: clock rate {d:?}");
        }
        let relay_ms = int(qa, "jitter us")? as f64 / 1000.0;
        let socket_ms = rfc3550_jitter_ms(&at_b);
        let clean_ms = int(qb, "jitter us")? as f64 / 1000.0;
        let clean_socket_ms = rfc3550_jitter_ms(&at_a);
        // E|D| of two independent uniform 0..18 ms offsets.
        let truth_ms = 18.0 / 3.0;
        println!(
            "{mode}: jitter on A's leg (sent 20 ms ± 9 ms apart): relay {relay_ms:.2} ms, B's socket \
             {socket_ms:.2} ms, injected E|D| {truth_ms:.2} ms; B's clean leg: relay {clean_ms:.3} ms, \
             A's socket {clean_socket_ms:.3} ms; A's largest gap {} µs",
            int(qa, "max gap us")?,
        );
        anyhow::ensure!(
            (relay_ms - socket_ms).abs() <= 0.1 * socket_ms,
            "jitter on A's leg: relay {relay_ms:.2} ms vs B's socket {socket_ms:.2} ms: more than 10 % apart"
        );
        // J averages |D| over ~16 packets: within 40 % of the truth.
        anyhow::ensure!(
            (relay_ms - truth_ms).abs() <= 0.4 * truth_ms,
            "jitter on A's leg: relay {relay_ms:.2} ms, injected E|D| {truth_ms:.2} ms"
        );
        // The clean leg's truth is what A's socket saw: B's sender is
        // exact only on an idle host.
        anyhow::ensure!(
            (clean_ms - clean_socket_ms).abs() <= 0.1 * clean_socket_ms + 0.25,
            "jitter on B's leg: relay {clean_ms:.3} ms vs A's socket {clean_socket_ms:.3} ms"
        );
        anyhow::ensure!(
            clean_ms < relay_ms / 2.0,
            "the clean leg shows {clean_ms:.2} ms of jitter, the impaired one {relay_ms:.2} ms: \
             which leg is degraded is not told apart"
        );

        // A shaper: tbf on A's veth below the stream's rate (50 × 214-byte
        // frames a second = 86 kbit/s): a queue builds on A's leg.
        bed.a.exec(
            "tc",
            &[
                "qdisc", "add", "dev", "a0", "root", "tbf", "rate", "56kbit", "burst", "1600",
                "limit", "100000",
            ],
        )?;
        let seq0 = WARM + JITTER_PACKETS;
        let (shaped, seen) = watching(&daemon, Duration::from_millis(1500), || {
            both_talk(ab, ba, seq0, SHAPED_PACKETS, epoch, |_| 0)
        });
        bed.a.exec("tc", &["qdisc", "del", "dev", "a0", "root"])?;
        let (at_b, at_a) = shaped?;
        alerted_on_a(mode, "shaper", &seen, "delay_rise", "inbound")?;
        let q = query(&ng)?;
        let (qa, qb) = (quality(&q, relay_a.port())?, quality(&q, relay_b.port())?);
        let relay_ms = int(qa, "delay above minimum us")? as f64 / 1000.0;
        let clean_ms = int(qb, "delay above minimum us")? as f64 / 1000.0;
        // At the sockets: the last packet's transit above the phase's
        // lowest.
        let above = |arrivals: &[Arrival]| {
            let transits: Vec<f64> = transits_ms(arrivals).collect();
            let lowest = transits.iter().copied().fold(f64::INFINITY, f64::min);
            transits.last().copied().unwrap_or(0.0) - lowest
        };
        let (socket_ms, clean_socket_ms) = (above(&at_b), above(&at_a));
        println!(
            "{mode}: shaper on A's leg (tbf 56 kbit/s): delay above minimum: relay {relay_ms:.1} ms, \
             B's socket {socket_ms:.1} ms; B's clean leg: relay {clean_ms:.1} ms, A's socket {clean_socket_ms:.1} ms"
        );
        anyhow::ensure!(
            socket_ms > 300.0,
            "the shaper built no queue ({socket_ms:.1} ms at B's socket): the test is not testing"
        );
        // The relay's minimum may also hold a packet of the jitter phase
        // (up to 10 ms lower).
        anyhow::ensure!(
            (relay_ms - socket_ms).abs() <= 0.1 * socket_ms + 10.0,
            "delay above minimum on A's leg: relay {relay_ms:.1} ms vs B's socket {socket_ms:.1} ms"
        );
        // A's socket also sees the relay → A hop, which the relay does not:
        // on a loaded host its scheduling adds a few ms there.
        anyhow::ensure!(
            (clean_ms - clean_socket_ms).abs() <= 0.1 * clean_socket_ms + 3.0,
            "delay above minimum on B's clean leg: relay {clean_ms:.1} ms vs A's socket {clean_socket_ms:.1} ms"
        );
        anyhow::ensure!(
            clean_ms < relay_ms / 10.0,
            "the clean leg shows {clean_ms:.1} ms of queue, the shaped one {relay_ms:.1} ms"
        );
        let seq0 = seq0 + SHAPED_PACKETS;
        losses(&daemon, &ng, ab, ba, seq0, epoch, mode)?;
        rtcp_round_trip(&bed, &ng, relay_a, relay_b, mode)
    })();
    daemon.report_failure(&result);
    result
}

/// Packets per direction of a clean phase: 8 s, longer than the window
/// loss is judged over, so the last loss leaves it.
const CLEAN_PACKETS: u16 = 400;
/// Packets per direction of the random loss phase (6 s) and of the burst
/// phase (5 s).
const LOSS_PACKETS: u16 = 300;
const BURST_PACKETS: u16 = 250;

/// After the shaper: clean (jitter and delay recover), 2 % random loss
/// on A's leg (a loss alert, no burst alert; the relay's count of lost
/// packets is the truth), clean (loss recovers), bursts of 4 packets
/// (a burst alert; bursts counted as sent), clean (bursts recover).
fn losses(
    daemon: &Daemon,
    ng: &NgClient,
    ab: Leg<'_>,
    ba: Leg<'_>,
    seq0: u16,
    epoch: Instant,
    mode: &str,
) -> anyhow::Result<()> {
    let clean = |seq0: u16| {
        watching(daemon, Duration::from_millis(1500), || {
            both_talk(ab, ba, seq0, CLEAN_PACKETS, epoch, |_| 0)
        })
    };
    let (talked, seen) = clean(seq0);
    talked?;
    recovered(
        mode,
        "clean after the shaper",
        &seen,
        &["jitter", "delay_rise"],
    )?;
    let seq0 = seq0 + CLEAN_PACKETS;

    let lost_so_far = |q: &Value| -> anyhow::Result<i64> {
        stream(q, ab.to.port())
            .and_then(|s| s.get("stats"))
            .map(|s| int(s, "lost"))
            .context("A's stream stats")?
    };
    let before = lost_so_far(&query(ng)?)?;
    // 2 % random loss: one packet in 50 on average, never two in a row
    // (a fixed LCG: the same packets every run).
    let random = |i: u16| {
        let x = u64::from(i)
            .wrapping_mul(2_862_933_555_777_941_757)
            .wrapping_add(3_037_000_493);
        (x >> 40) % 50 == 7 && i > 0
    };
    let truth = (0..LOSS_PACKETS).filter(|i| random(*i)).count() as i64;
    let (talked, seen) = watching(daemon, Duration::from_millis(500), || {
        both_talk_dropping(ab, ba, seq0, LOSS_PACKETS, epoch, |_| 0, random)
    });
    talked?;
    let lost = lost_so_far(&query(ng)?)? - before;
    println!(
        "{mode}: random loss on A's leg: {truth} of {LOSS_PACKETS} left out, the relay counted {lost} lost"
    );
    anyhow::ensure!(
        lost == truth,
        "{mode}: {truth} packets lost, the relay counted {lost}"
    );
    alerted_on_a(mode, "random loss", &seen, "loss", "inbound")?;
    anyhow::ensure!(
        seen_at(&seen, "a", "burst", true).is_none(),
        "{mode}: single losses called a burst: {seen:?}"
    );
    let seq0 = seq0 + LOSS_PACKETS;
    let (talked, seen) = clean(seq0);
    talked?;
    recovered(mode, "clean after random loss", &seen, &["loss"])?;
    let seq0 = seq0 + CLEAN_PACKETS;

    // Bursts: 4 packets in a row, every 50th (a Gilbert channel's bad
    // state, 80 ms fades, 8 % lost).
    let bursty = |i: u16| i % 50 >= 20 && i % 50 < 24;
    let q0 = query(ng)?;
    let gaps_before = int(quality(&q0, ab.to.port())?, "gaps")?;
    let (talked, seen) = watching(daemon, Duration::from_millis(500), || {
        both_talk_dropping(ab, ba, seq0, BURST_PACKETS, epoch, |_| 0, bursty)
    });
    talked?;
    let q = query(ng)?;
    let qa = quality(&q, ab.to.port())?;
    let bursts = int(qa, "gaps")? - gaps_before;
    let longest = int(qa, "longest gap")?;
    let truth = i64::from(BURST_PACKETS / 50);
    println!(
        "{mode}: bursts on A's leg: {truth} bursts of 4 left out, the relay counted {bursts}, longest {longest}"
    );
    anyhow::ensure!(
        bursts == truth && longest == 4,
        "{mode}: {truth} bursts of 4 sent, the relay counted {bursts}, longest {longest}"
    );
    alerted_on_a(mode, "bursts", &seen, "burst", "inbound")?;
    let seq0 = seq0 + BURST_PACKETS;
    let (talked, seen) = clean(seq0);
    talked?;
    recovered(mode, "clean after bursts", &seen, &["burst", "loss"])?;
    Ok(())
}

/// RTCP through the relay: A sends an SR towards B; B answers with an RR
/// naming it (LSR) after holding it 150 ms (DLSR), reporting 25 % lost
/// and a jitter of 80 units. The relay reports B's far-end view and the
/// round trip relay ↔ B from its own clock: the time between the SR and
/// the RR passing, less DLSR — microseconds on this bed, plus B's
/// scheduling.
fn rtcp_round_trip(
    bed: &Bed,
    ng: &NgClient,
    relay_a: SocketAddr,
    relay_b: SocketAddr,
    mode: &str,
) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(1000);
    let a = udp_socket(&bed.a, SocketAddr::new(A_V4.into(), 5001), timeout)?;
    let b = udp_socket(&bed.b, SocketAddr::new(B_V4.into(), 6001), timeout)?;
    let (to_a, to_b) = (
        SocketAddr::new(relay_a.ip(), relay_a.port() + 1),
        SocketAddr::new(relay_b.ip(), relay_b.port() + 1),
    );
    // Empty RRs first: each side's RTCP latches, the learning window
    // closes, and (with XDP) the reports below take the data plane.
    let mut buf = [0u8; 256];
    for (from, to, at, ssrc) in [(&a, to_a, &b, 0xa1u32), (&b, to_b, &a, 0xb1)] {
        let mut empty = vec![0x80, 201, 0, 1];
        empty.extend_from_slice(&ssrc.to_be_bytes());
        from.send_to(&empty, to)?;
        at.recv_from(&mut buf).context("an empty RR")?;
    }
    std::thread::sleep(Duration::from_millis(1300));
    let mut sr = vec![0x80, 200, 0, 6];
    sr.extend_from_slice(&0xa1u32.to_be_bytes());
    sr.extend_from_slice(&0x0000_e9a1u32.to_be_bytes());
    sr.extend_from_slice(&0x5555_0000u32.to_be_bytes());
    sr.extend_from_slice(&[0; 12]);
    let ntp_mid = 0xe9a1_5555u32;
    a.send_to(&sr, to_a)?;
    let (len, _) = b.recv_from(&mut buf).context("the SR at B")?;
    anyhow::ensure!(buf[..len] == sr[..], "the SR changed on its way");
    std::thread::sleep(Duration::from_millis(150));
    let mut rr = vec![0x81, 201, 0, 7];
    rr.extend_from_slice(&0xb1u32.to_be_bytes());
    rr.extend_from_slice(&0xa1u32.to_be_bytes());
    rr.extend_from_slice(&((64u32 << 24) | 0x11).to_be_bytes());
    rr.extend_from_slice(&1000u32.to_be_bytes());
    rr.extend_from_slice(&80u32.to_be_bytes());
    rr.extend_from_slice(&ntp_mid.to_be_bytes());
    // DLSR: 150 ms in 1/65536 s.
    rr.extend_from_slice(&(150 * 65_536 / 1000u32).to_be_bytes());
    b.send_to(&rr, to_b)?;
    let (len, _) = a.recv_from(&mut buf).context("the RR at A")?;
    anyhow::ensure!(buf[..len] == rr[..], "the RR changed on its way");

    let q = query(ng)?;
    let b_tag = q
        .get("tags")
        .and_then(|t| t.get("b"))
        .and_then(|t| t.get("quality"))
        .with_context(|| format!("no quality for B's leg in {q:?}"))?;
    let rtcp = stream(&q, to_b.port())
        .and_then(|s| s.get("rtcp"))
        .context("no rtcp on B's RTCP stream")?;
    let rtt_us = int(b_tag, "round trip us")?;
    println!(
        "{mode}: RTCP: B's leg round trip {rtt_us} µs (B held the SR 150 ms, said so in DLSR); \
         far end loss {} ‰, jitter {} µs; MOS ×10 {}; B's RTCP stream {}",
        int(b_tag, "far end loss permille")?,
        int(b_tag, "far end jitter us")?,
        int(b_tag, "MOS")?,
        media_user::cli::to_json(rtcp),
    );
    anyhow::ensure!(
        (0..30_000).contains(&rtt_us),
        "round trip relay ↔ B {rtt_us} µs: DLSR not taken off, or not the relay's clock"
    );
    anyhow::ensure!(
        int(b_tag, "far end loss permille")? == 250,
        "B reported 25 % lost: {b_tag:?}"
    );
    // 80 units of A's 8 kHz stream.
    anyhow::ensure!(int(b_tag, "far end jitter us")? == 10_000, "{b_tag:?}");
    anyhow::ensure!(
        (int(rtcp, "sender reports")?, int(rtcp, "report blocks")?) == (0, 1),
        "B's RTCP stream: {rtcp:?}"
    );
    anyhow::ensure!(int(rtcp, "cumulative lost")? == 0x11, "{rtcp:?}");
    let kernel = stream(&q, to_b.port())
        .and_then(|s| s.get("stats"))
        .map(|s| int(s, "kernel packets"))
        .context("B's RTCP stats")??;
    anyhow::ensure!(
        (kernel >= 1) == (mode != "off"),
        "{mode}: B's RTCP stream: {kernel} packets through XDP"
    );
    // 25 % lost: a MOS near the model's floor.
    anyhow::ensure!(int(b_tag, "MOS")? < 20, "{b_tag:?}");
    Ok(())
}

#[test]
fn jitter_on_one_leg_xdp_native() -> anyhow::Result<()> {
    root_test("jitter_on_one_leg_xdp_native", |t| {
        jitter_one_leg(t, "native")
    })
}

#[test]
fn jitter_on_one_leg_userspace() -> anyhow::Result<()> {
    root_test("jitter_on_one_leg_userspace", |t| jitter_one_leg(t, "off"))
}
