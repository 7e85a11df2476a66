//! Churn soak (issue 13, "Hardening"): thousands of calls set up and torn
//! down through the SIP agent with media flowing — SIPp as the trunk
//! (namespace `a`) and as the PBX (`b`), `load_media` scenarios (every
//! call its own media port, `g711a.pcap` played both ways until the BYE),
//! `media-relay run` with `[sip]` in XDP native mode in between.
//!
//! Measured before the first call, sampled during the run (the peak), and
//! after each of [`ROUNDS`] rounds of calls once the last call is gone:
//! the process's resident memory and open file descriptors
//! (`/proc/PID/status`, `/proc/PID/fd`: the media daemon and the SIP agent
//! are one process), bound ports and ports in use, XDP flows (ng
//! `statistics`), entries of every pinned hash map (bpftool), media
//! sessions, and the agent's calls, transactions and pending ng requests.
//! After every round everything but memory is back to its baseline
//! exactly; memory after the last round is within [`RSS_TOLERANCE_KIB`]
//! of what it was after the first (the allocator keeps the first round's
//! high-water mark; a leak grows with every round). The table is printed.
//!
//! `MR_CHURN_CALLS` (default 2 500) and `MR_CHURN_RATE` (calls/s, default
//! 25) size the run.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use media_relay_tests::{
    Bed, BedOptions, Netns, TestDir,
    bed::{self, A_V4, B_V4, RA_V4},
    daemon::{Daemon, NgClient},
    root_test,
    sipp::{RtpCounter, SippOptions, run_pair},
};
use media_user::ng::Value;

const SIP: u16 = 5060;
const A_MEDIA: u16 = 10000;
const B_MEDIA: u16 = 20000;
/// How long each call lasts (SIPp `-d`): with 25 calls/s, some 75 calls
/// are up at once.
const CALL_LENGTH: Duration = Duration::from_secs(3);
/// The port quarantine of this run (`port-quarantine`), seconds: short,
/// so the ports of the last calls are free again soon after.
const QUARANTINE: u64 = 2;
/// Rounds of calls: the first brings the process to its working size, the
/// others must not grow it.
const ROUNDS: u32 = 2;
/// How much more resident memory the process may hold after the last
/// round than after the first: 2 MiB, under 2 KiB a call of a 1 250-call
/// round (a call's records, routes and messages are larger than that).
const RSS_TOLERANCE_KIB: u64 = 2 * 1024;

fn env_u32(key: &str, default: u32) -> u32 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One measurement.
#[derive(Clone, Debug, Default)]
struct Sample {
    rss_kib: u64,
    fds: u64,
    /// UDP sockets in the relay namespace, as the kernel lists them (`ss`):
    /// the media ports, the SIP agent's, ng's and the test's ng client.
    udp_sockets: u64,
    bound_ports: u64,
    ports_used: u64,
    xdp_flows: u64,
    sessions: u64,
    agent_calls: u64,
    agent_transactions: u64,
    agent_pending_ng: u64,
    /// Entries per pinned hash map (the engine's own record in SESSIONS
    /// not counted).
    maps: BTreeMap<String, u64>,
}

impl Sample {
    fn rows(&self) -> Vec<(String, u64)> {
        let mut out = vec![
            ("RSS (KiB)".to_owned(), self.rss_kib),
            ("open fds".to_owned(), self.fds),
            (
                "UDP sockets in the relay namespace".to_owned(),
                self.udp_sockets,
            ),
            ("bound ports".to_owned(), self.bound_ports),
            ("ports in use".to_owned(), self.ports_used),
            ("xdp flows".to_owned(), self.xdp_flows),
            ("media sessions".to_owned(), self.sessions),
            ("agent calls".to_owned(), self.agent_calls),
            ("agent transactions".to_owned(), self.agent_transactions),
            ("agent pending ng".to_owned(), self.agent_pending_ng),
        ];
        out.extend(
            self.maps
                .iter()
                .map(|(k, v)| (format!("pinned {k} entries"), *v)),
        );
        out
    }

    fn max(&mut self, o: &Self) {
        let Self {
            rss_kib,
            fds,
            udp_sockets,
            bound_ports,
            ports_used,
            xdp_flows,
            sessions,
            agent_calls,
            agent_transactions,
            agent_pending_ng,
            maps,
        } = self;
        for (m, v) in [
            (rss_kib, o.rss_kib),
            (fds, o.fds),
            (udp_sockets, o.udp_sockets),
            (bound_ports, o.bound_ports),
            (ports_used, o.ports_used),
            (xdp_flows, o.xdp_flows),
            (sessions, o.sessions),
            (agent_calls, o.agent_calls),
            (agent_transactions, o.agent_transactions),
            (agent_pending_ng, o.agent_pending_ng),
        ] {
            *m = (*m).max(v);
        }
        for (k, v) in &o.maps {
            let e = maps.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn proc_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// The agent's counters (OPTIONS sip:stats@ → 200 with a JSON body),
/// asked from the trunk's address.
fn agent_stats(ns: &Netns) -> anyhow::Result<serde_json::Value> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let s = ns.enter(|| Ok(UdpSocket::bind(SocketAddr::new(A_V4.into(), 5998))?))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let req = format!(
        "OPTIONS sip:stats@{RA_V4}:{SIP} SIP/2.0\r\nVia: SIP/2.0/UDP {A_V4}:5998;branch=z9hG4bK-churn-{pid}-{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{A_V4}>;tag=probe\r\nTo: <sip:stats@{RA_V4}>\r\n\
         Call-ID: churn-stats-{pid}-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    s.send_to(req.as_bytes(), SocketAddr::new(RA_V4.into(), SIP))?;
    let mut buf = vec![0u8; 65536];
    let (len, _) = s.recv_from(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
    anyhow::ensure!(text.starts_with("SIP/2.0 200"), "stats: {text}");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    Ok(serde_json::from_str(body)?)
}

/// Entries of every pinned hash map under `dir` (arrays have a fixed
/// number of entries and are left out), the engine's own record in
/// SESSIONS not counted.
fn pinned_map_entries(dir: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let engine = media_user::dataplane::sessions::call_hash(media_user::session::record::ENGINE_ID);
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let p = path.to_string_lossy();
        let show = media_relay_tests::bpftool::json(&["map", "show", "pinned", &p])?;
        let kind = show["type"].as_str().unwrap_or_default();
        if !kind.contains("hash") {
            continue;
        }
        let dump = media_relay_tests::bpftool::json(&["map", "dump", "pinned", &p])?;
        let entries = dump.as_array().context("bpftool's dump is no list")?;
        let n = if name == "SESSIONS" {
            entries
                .iter()
                .filter(|e| {
                    media_relay_tests::bpftool::key_prefix(&e["key"]).is_ok_and(|k| k != engine)
                })
                .count()
        } else {
            entries.len()
        };
        out.insert(name, n as u64);
    }
    Ok(out)
}

/// Measure now; the agent is asked only with `agent_ns` (each question is
/// a transaction of its own, which lingers for Timer J, 32 s).
fn sample(
    pid: u32,
    relay: &Netns,
    ng: &NgClient,
    agent_ns: Option<&Netns>,
    pin_dir: Option<&Path>,
) -> anyhow::Result<Sample> {
    let s = ng.ok(&Value::dict().with("command", "statistics"))?;
    let st = s.get("statistics").context("no statistics")?;
    let int = |v: Option<&Value>| v.and_then(Value::as_int).unwrap_or(0).max(0) as u64;
    let plane = st.get("media plane");
    let agent = match agent_ns {
        Some(ns) => agent_stats(ns)?,
        None => serde_json::Value::Null,
    };
    let a = |k: &str| agent[k].as_u64().unwrap_or(0);
    Ok(Sample {
        rss_kib: proc_rss_kib(pid),
        fds: proc_fds(pid),
        udp_sockets: relay.exec("ss", &["-Huan"])?.lines().count() as u64,
        bound_ports: int(plane.and_then(|p| p.get("bound ports"))),
        ports_used: int(st.get("ports").and_then(|p| p.get("used"))),
        xdp_flows: int(plane.and_then(|p| p.get("xdp flows"))),
        sessions: int(st
            .get("currentstatistics")
            .and_then(|c| c.get("sessionsown"))),
        agent_calls: a("calls"),
        agent_transactions: a("transactions"),
        agent_pending_ng: a("pending_ng"),
        maps: match pin_dir {
            Some(d) => pinned_map_entries(d)?,
            None => BTreeMap::new(),
        },
    })
}

fn print_table(calls: u32, rate: u32, took: Duration, columns: &[(String, &Sample)]) {
    let mut out = format!(
        "\nchurn soak: {calls} calls at {rate}/s in {ROUNDS} rounds, {} s each, {:.0} s of calls\n| measure |",
        CALL_LENGTH.as_secs(),
        took.as_secs_f64()
    );
    for (name, _) in columns {
        let _ = write!(out, " {name} |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(columns.len()));
    out.push('\n');
    let rows: Vec<Vec<(String, u64)>> = columns.iter().map(|(_, s)| s.rows()).collect();
    for (i, (k, _)) in rows[0].iter().enumerate() {
        let _ = write!(out, "| {k} |");
        for r in &rows {
            let _ = write!(out, " {} |", r.get(i).map_or(0, |r| r.1));
        }
        out.push('\n');
    }
    println!("{out}");
}

/// Everything but memory is back to `baseline` in `after`.
fn check_back(what: &str, baseline: &Sample, after: &Sample) -> anyhow::Result<()> {
    let exact = |name: &str, b: u64, a: u64| {
        anyhow::ensure!(a == b, "{name}: {b} before the run, {a} {what}");
        Ok(())
    };
    exact("open fds", baseline.fds, after.fds)?;
    exact(
        "UDP sockets in the relay namespace",
        baseline.udp_sockets,
        after.udp_sockets,
    )?;
    exact("bound ports", baseline.bound_ports, after.bound_ports)?;
    exact("ports in use", baseline.ports_used, after.ports_used)?;
    exact("xdp flows", baseline.xdp_flows, after.xdp_flows)?;
    exact("media sessions", baseline.sessions, after.sessions)?;
    exact("agent calls", baseline.agent_calls, after.agent_calls)?;
    exact(
        "agent transactions",
        baseline.agent_transactions,
        after.agent_transactions,
    )?;
    exact(
        "agent pending ng",
        baseline.agent_pending_ng,
        after.agent_pending_ng,
    )?;
    anyhow::ensure!(
        after.maps == baseline.maps,
        "pinned map entries: {:?} before the run, {:?} {what}",
        baseline.maps,
        after.maps
    );
    Ok(())
}

/// One round: `calls` calls while a monitor samples twice a second (the
/// pinned maps every 5 s: a dump of a few hundred entries costs bpftool
/// some milliseconds); then the teardown — the media daemon's calls gone
/// and the quarantined ports released (asked over ng only), then the
/// agent's last transactions ended (server transactions of non-INVITE
/// requests, the BYEs and the monitor's OPTIONS, linger for Timer J, 32 s
/// after their last message) before the agent is asked once more. Returns
/// the peak, the state after, and how long the calls took.
fn round(
    t: &TestDir,
    bed: &Bed,
    daemon: &Daemon,
    ng: &NgClient,
    baseline: &Sample,
    calls: u32,
    rate: u32,
) -> anyhow::Result<(Sample, Sample, Duration)> {
    let pid = daemon.pid();
    let pin_dir = daemon.pin_dir();
    let stop = AtomicBool::new(false);
    let (peak, took) = std::thread::scope(|scope| -> anyhow::Result<(Sample, Duration)> {
        let monitor = scope.spawn(|| -> anyhow::Result<Sample> {
            let ng = NgClient::new(&bed.relay, daemon.ng)?;
            let mut peak = Sample::default();
            let mut n = 0u32;
            // Bounded: the calls' own deadline is shorter.
            let end = Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let maps = n.is_multiple_of(10).then_some(pin_dir.as_path());
                peak.max(&sample(pid, &bed.relay, &ng, Some(&bed.a), maps)?);
                n += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(peak)
        });
        let start = Instant::now();
        let r = run_calls(t, bed, calls, rate);
        stop.store(true, Ordering::Relaxed);
        let peak = monitor
            .join()
            .map_err(|_| anyhow::anyhow!("monitor panicked"))??;
        r?;
        Ok((peak, start.elapsed()))
    })?;
    let ended = Instant::now();
    let deadline = ended + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let s = sample(pid, &bed.relay, ng, None, Some(&pin_dir))?;
        let settled = s.sessions == baseline.sessions
            && s.bound_ports == baseline.bound_ports
            && s.xdp_flows == baseline.xdp_flows
            && s.maps == baseline.maps;
        if settled || Instant::now() > deadline {
            break;
        }
    }
    std::thread::sleep((ended + Duration::from_secs(33)).saturating_duration_since(Instant::now()));
    let after = sample(pid, &bed.relay, ng, Some(&bed.a), Some(&pin_dir))?;
    Ok((peak, after, took))
}

fn soak(t: &TestDir) -> anyhow::Result<()> {
    let calls = env_u32("MR_CHURN_CALLS", 2500).clamp(ROUNDS, 2500);
    let rate = env_u32("MR_CHURN_RATE", 25).max(1);
    let bed = Bed::new(BedOptions {
        peer_xdp: true,
        static_neighbours: false,
    })?;
    let config = t.write(
        "media-relay.toml",
        bed::agent_config(
            &format!("port-min = 30000\nport-max = 39999\nport-quarantine = {QUARANTINE}"),
            &format!(
                "max-calls = {}\nmedia = [\"127.0.0.1:2223\"]\nmedia-poll = 1\nrecord-route-secret = \"churn_soak: a secret of 32 bytes or more\"",
                calls + 100
            ),
        ),
    )?;
    let config_arg = config.to_string_lossy().into_owned();
    let daemon = Daemon::start(
        t,
        &bed.relay,
        &[
            "--config",
            &config_arg,
            "--xdp-mode",
            "native",
            "--learning-window",
            "1",
        ],
    )?;
    let result = (|| -> anyhow::Result<()> {
        let ng = NgClient::new(&bed.relay, daemon.ng)?;
        let baseline = sample(
            daemon.pid(),
            &bed.relay,
            &ng,
            Some(&bed.a),
            Some(&daemon.pin_dir()),
        )?;
        let mut peak = Sample::default();
        let mut afters = Vec::new();
        let mut took = Duration::ZERO;
        for r in 0..ROUNDS {
            let (p, after, d) = round(t, &bed, &daemon, &ng, &baseline, calls / ROUNDS, rate)?;
            anyhow::ensure!(
                p.sessions > 0 && p.xdp_flows > 0 && p.bound_ports > baseline.bound_ports,
                "round {} never had calls up: peak {p:?}",
                r + 1
            );
            peak.max(&p);
            took += d;
            afters.push(after);
        }
        let mut columns = vec![
            ("baseline".to_owned(), &baseline),
            ("peak".to_owned(), &peak),
        ];
        for (r, a) in afters.iter().enumerate() {
            columns.push((format!("after round {}", r + 1), a));
        }
        print_table(calls, rate, took, &columns);
        for (r, a) in afters.iter().enumerate() {
            check_back(&format!("after round {}", r + 1), &baseline, a)?;
        }
        // Memory: the first round takes the process to its working size
        // (allocator arenas, the agent's transactions lingering 32 s, the ng
        // reply cache); the later rounds, as many calls again, must not
        // add to it.
        let first = afters[0].rss_kib;
        let last = afters[afters.len() - 1].rss_kib;
        anyhow::ensure!(
            last <= first + RSS_TOLERANCE_KIB,
            "resident memory {first} KiB after the first round, {last} KiB after the last (tolerance {RSS_TOLERANCE_KIB} KiB): a leak of {} bytes a call",
            (last.saturating_sub(first)) * 1024 / u64::from(calls / ROUNDS * (ROUNDS - 1))
        );
        Ok(())
    })();
    if result.is_err() {
        eprintln!(
            "--- media-relay log (tail) ---\n{}",
            tail(&daemon.log_text(), 60)
        );
    }
    result
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `calls` `load_media` calls at `rate` calls/s through the agent; every
/// call gets RTP at both ends (counted per call's media port).
fn run_calls(t: &TestDir, bed: &Bed, calls: u32, rate: u32) -> anyhow::Result<()> {
    let sip = |ip: std::net::Ipv4Addr| SocketAddr::new(IpAddr::V4(ip), SIP);
    let mut uas = SippOptions::uas("load_media_uas.xml", sip(B_V4), B_V4.into(), B_MEDIA);
    uas.calls = calls;
    uas.trace_msg = false;
    let mut uac = SippOptions::uac(
        "load_media_uac.xml",
        sip(A_V4),
        sip(RA_V4),
        A_V4.into(),
        A_MEDIA,
    );
    uac.calls = calls;
    uac.rate = Some(rate);
    uac.call_length = CALL_LENGTH;
    uac.trace_msg = false;
    // SIPp gives up after `-timeout`: the whole run, with room.
    let run = Duration::from_secs(u64::from(calls / rate) + 60);
    uas.timeout = run;
    uac.timeout = run;
    let span = u16::try_from(4 * (calls - 1))?;
    let at_uas = RtpCounter::start(&bed.b, B_MEDIA..=B_MEDIA + span)?;
    let at_uac = RtpCounter::start(&bed.a, A_MEDIA..=A_MEDIA + span)?;
    let (uas_r, uac_r) = run_pair(t, &bed.b, &uas, &bed.a, &uac, run + Duration::from_secs(10))?;
    let at_uas = at_uas.stop()?;
    let at_uac = at_uac.stop()?;
    uac_r.ensure_all_succeeded()?;
    uas_r.ensure_all_succeeded()?;
    anyhow::ensure!(
        uac_r.successful == u64::from(calls) && uac_r.failed == 0,
        "{} calls succeeded, {} failed",
        uac_r.successful,
        uac_r.failed
    );
    for (side, count) in [("PBX", &at_uas), ("trunk", &at_uac)] {
        anyhow::ensure!(
            count.by_port.len() == calls as usize && count.bad_checksums == 0,
            "RTP reached {} of {calls} calls' ports at the {side} ({} packets, {} bad checksums)",
            count.by_port.len(),
            count.packets,
            count.bad_checksums
        );
    }
    println!(
        "churn soak: RTP at the PBX {} packets, at the trunk {} packets",
        at_uas.packets, at_uac.packets
    );
    Ok(())
}

#[test]
fn churn_soak_through_the_sip_agent() -> anyhow::Result<()> {
    root_test("churn_soak_through_the_sip_agent", soak)
}
