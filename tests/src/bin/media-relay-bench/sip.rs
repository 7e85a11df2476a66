//! The SIP agent: how many calls per second it sustains with media
//! anchoring (SIPp), and the delay it adds to call setup (INVITE in →
//! INVITE out, 200 in → 200 out), measured by a probe playing both ends.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use std::fmt::Write as _;

use anyhow::Context as _;
use media_relay_tests::{
    Bed, BedOptions,
    bed::{self, A_V4, B_V4, RA_V4},
    daemon::Daemon,
    sipp::{Sipp, SippOptions},
};

use crate::figure::{Derived, Figure, MIN_RUNS, SPREAD_RUNS, Verdict, target};

const SIP: u16 = 5060;

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn config(tag: &str) -> anyhow::Result<PathBuf> {
    crate::files().write(
        &format!("sip-{tag}.toml"),
        bed::agent_config(
            // Released pairs rest 2 s, not the default 32: at a thousand
            // calls a second the default would hold 64 000 pairs.
            "port-min = 20000\nport-max = 59999\nport-quarantine = 2",
            "max-calls = 100000\ninvite-rate = 100000",
        ),
    )
}

fn start(tag: &str) -> anyhow::Result<(Bed, Daemon)> {
    let bed = Bed::new(BedOptions {
        peer_xdp: true,
        static_neighbours: false,
    })?;
    let cfg = config(tag)?;
    let daemon = Daemon::start(
        crate::files(),
        &bed.relay,
        &[
            "--config",
            &cfg.to_string_lossy(),
            "--xdp-mode",
            "native",
            "--ng-cache-ttl",
            "2",
        ],
    )?;
    Ok((bed, daemon))
}

fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

fn recv_until(
    s: &UdpSocket,
    pred: impl Fn(&str) -> bool,
) -> anyhow::Result<(String, SocketAddr, Instant)> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = s.recv_from(&mut buf).context("probe: no answer in time")?;
        let t = Instant::now();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if pred(&text) {
            return Ok((text, from, t));
        }
    }
}

const SDP_A: &str = "v=0\r\no=- 1 1 IN IP4 198.18.1.2\r\ns=-\r\nc=IN IP4 198.18.1.2\r\nt=0 0\r\nm=audio 10000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";
const SDP_B: &str = "v=0\r\no=- 1 1 IN IP4 198.18.2.2\r\ns=-\r\nc=IN IP4 198.18.2.2\r\nt=0 0\r\nm=audio 20000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";

/// One call by hand: returns (INVITE in → out, 200 in → out).
fn probe_call(uac: &UdpSocket, uas: &UdpSocket, i: usize) -> anyhow::Result<(Duration, Duration)> {
    let agent = sa(RA_V4, SIP);
    let call_id = format!("probe-{i}-{}", std::process::id());
    let invite = format!(
        "INVITE sip:100@{RA_V4}:{SIP} SIP/2.0\r\nVia: SIP/2.0/UDP {A_V4}:5080;branch=z9hG4bK-p{i}\r\nMax-Forwards: 70\r\n\
         From: <sip:probe@{A_V4}>;tag=a{i}\r\nTo: <sip:100@{RA_V4}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:probe@{A_V4}:5080>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
        SDP_A.len()
    );
    let t0 = Instant::now();
    uac.send_to(invite.as_bytes(), agent)?;
    let (inv, from, t1) = recv_until(uas, |m| m.starts_with("INVITE") && m.contains(&call_id))?;
    let mut ok = String::from("SIP/2.0 200 OK\r\n");
    for v in header(&inv, "Via") {
        ok.push_str(&format!("Via: {v}\r\n"));
    }
    for v in header(&inv, "Record-Route") {
        ok.push_str(&format!("Record-Route: {v}\r\n"));
    }
    let to = header(&inv, "To")
        .first()
        .copied()
        .unwrap_or_default()
        .to_owned();
    ok.push_str(&format!(
        "From: {}\r\nTo: {to};tag=b{i}\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:pbx@{B_V4}:{SIP}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_B}",
        header(&inv, "From").first().copied().unwrap_or_default(),
        SDP_B.len()
    ));
    let t2 = Instant::now();
    uas.send_to(ok.as_bytes(), from)?;
    let (ok_in, _, t3) = recv_until(uac, |m| {
        m.starts_with("SIP/2.0 200") && m.contains("INVITE")
    })?;
    // ACK and BYE along the route set, then the BYE's 200 both ways.
    let mut routes: Vec<&str> = header(&ok_in, "Record-Route");
    routes.reverse();
    let route_lines: String = routes.iter().map(|r| format!("Route: {r}\r\n")).collect();
    let to_tagged = header(&ok_in, "To")
        .first()
        .copied()
        .unwrap_or_default()
        .to_owned();
    for (method, cseq) in [("ACK", 1), ("BYE", 2)] {
        let req = format!(
            "{method} sip:pbx@{B_V4}:{SIP} SIP/2.0\r\nVia: SIP/2.0/UDP {A_V4}:5080;branch=z9hG4bK-p{i}-{method}\r\n{route_lines}\
             Max-Forwards: 70\r\nFrom: <sip:probe@{A_V4}>;tag=a{i}\r\nTo: {to_tagged}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        uac.send_to(req.as_bytes(), agent)?;
    }
    let (bye, from, _) = recv_until(uas, |m| m.starts_with("BYE") && m.contains(&call_id))?;
    let mut ok = String::from("SIP/2.0 200 OK\r\n");
    for v in header(&bye, "Via") {
        ok.push_str(&format!("Via: {v}\r\n"));
    }
    for n in ["From", "To", "Call-ID", "CSeq"] {
        ok.push_str(&format!(
            "{n}: {}\r\n",
            header(&bye, n).first().copied().unwrap_or_default()
        ));
    }
    ok.push_str("Content-Length: 0\r\n\r\n");
    uas.send_to(ok.as_bytes(), from)?;
    recv_until(uac, |m| m.starts_with("SIP/2.0 200") && m.contains("BYE"))?;
    Ok((t1 - t0, t3 - t2))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// Setup delay of `calls` probe calls on a fresh daemon: (INVITE, 200)
/// percentiles (p50, p99, p99.9), µs.
fn delay_run(calls: usize) -> anyhow::Result<([f64; 3], [f64; 3])> {
    let (bed, daemon) = start("delay")?;
    let uac = bed.a.enter(|| Ok(UdpSocket::bind(sa(A_V4, 5080))?))?;
    let uas = bed.b.enter(|| Ok(UdpSocket::bind(sa(B_V4, SIP))?))?;
    uac.set_read_timeout(Some(Duration::from_secs(3)))?;
    uas.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut invite = Vec::with_capacity(calls);
    let mut ok = Vec::with_capacity(calls);
    for i in 0..calls {
        let (a, b) = probe_call(&uac, &uas, i)?;
        invite.push(a.as_secs_f64() * 1e6);
        ok.push(b.as_secs_f64() * 1e6);
    }
    drop((uac, uas, daemon, bed));
    invite.sort_by(f64::total_cmp);
    ok.sort_by(f64::total_cmp);
    let p = |v: &[f64]| {
        [
            percentile(v, 0.5),
            percentile(v, 0.99),
            percentile(v, 0.999),
        ]
    };
    Ok((p(&invite), p(&ok)))
}

/// One SIPp run of `rate` calls/s for `seconds`, on an idle host.
fn cps_run(rate: u32, seconds: u32) -> anyhow::Result<CpsRun> {
    // The previous run's namespaces are torn down by the kernel in the
    // background (its sockets, veths, XDP programs): wait for 1 s of idle
    // host, so that no run shares the CPUs with that (on this project's
    // machine every wait so far was the minimum: a guard, and a record).
    let idle = crate::host::wait_idle(Duration::from_millis(250), 4, Duration::from_secs(30));
    let (bed, daemon) = start(&format!("cps{rate}"))?;
    let n = rate * seconds;
    let mut server = SippOptions::uas("load_uas.xml", sa(B_V4, SIP), B_V4.into(), 20000);
    server.calls = n;
    server.trace_msg = false;
    let mut client = SippOptions::uac(
        "load_uac.xml",
        sa(A_V4, SIP),
        sa(RA_V4, SIP),
        A_V4.into(),
        10000,
    );
    client.calls = n;
    client.rate = Some(rate);
    client.call_length = Duration::from_millis(200);
    client.trace_msg = false;
    let started = Instant::now();
    let end = started + Duration::from_secs(u64::from(seconds) * 6 + 30);
    let uas = Sipp::start(crate::files(), &bed.b, &server)?;
    let uac = Sipp::start(crate::files(), &bed.a, &client)?;
    // The calls are the UAC's: it counts every call it placed as
    // successful or failed. The UAS only says whether it saw them all (it
    // waits for calls that failed on the way, and is stopped then).
    let result = uac.wait(end.saturating_duration_since(Instant::now()));
    let grace = match &result {
        Ok(r) if r.exit_code == 0 => end.saturating_duration_since(Instant::now()),
        _ => Duration::ZERO,
    };
    if let Err(e) = uas.wait(grace.max(Duration::from_secs(3))) {
        let e = e.to_string();
        eprintln!(
            "    {rate} calls/s, the UAS: {}",
            e.lines().next().unwrap_or_default()
        );
    }
    let secs = started.elapsed().as_secs_f64();
    drop((daemon, bed));
    let (ok_calls, failed) = match result {
        Ok(c) => (c.successful, u64::from(n) - c.successful.min(u64::from(n))),
        Err(e) => {
            eprintln!("    {rate} calls/s, the UAC: {e:#}");
            (0, u64::from(n))
        }
    };
    eprintln!(
        "    {rate} calls/s: {ok_calls} ok, {failed} failed in {secs:.1} s (after {:.1} s for the host to idle)",
        idle.waited.as_secs_f64()
    );
    Ok(CpsRun {
        rate,
        ok: ok_calls,
        failed,
        idle_wait_s: idle.waited.as_secs_f64(),
    })
}

/// One SIPp run.
#[derive(Clone, Copy, Debug)]
struct CpsRun {
    rate: u32,
    ok: u64,
    failed: u64,
    /// How long the host took to idle before it.
    idle_wait_s: f64,
}

/// Every SIPp run; the sustained rate.
type Cps = (Vec<CpsRun>, Option<u32>);

/// The SIP agent's figures. The setup delay is measured one run (a fresh
/// daemon) at a time, and the bench spreads the runs over its whole length
/// (`main`), so that their spread holds the host's drift over a run; calls
/// per second is one search, at the part's own place.
pub struct Trials {
    quick: bool,
    calls: usize,
    runs: usize,
    delay: [[Figure; 3]; 2],
    cps: Option<Cps>,
}

impl Trials {
    pub fn new(quick: bool) -> Self {
        Self {
            quick,
            calls: if quick { 100 } else { 700 },
            runs: 0,
            delay: Default::default(),
            cps: None,
        }
    }

    /// One run of the setup delay, unless [`SPREAD_RUNS`] are done.
    pub fn delay_trial(&mut self) -> anyhow::Result<()> {
        if self.runs >= SPREAD_RUNS {
            return Ok(());
        }
        self.runs += 1;
        eprintln!(
            "==> sip: {} calls by a probe, timing the agent (run {} of {SPREAD_RUNS})",
            self.calls, self.runs
        );
        let (inv, ok) = delay_run(self.calls)?;
        for k in 0..3 {
            self.delay[0][k].push(inv[k]);
            self.delay[1][k].push(ok[k]);
        }
        Ok(())
    }

    /// The calls-per-second search (once).
    pub fn calls_per_second(&mut self) -> anyhow::Result<()> {
        if self.cps.is_none() {
            self.cps = Some(cps_search(self.quick)?);
        }
        Ok(())
    }

    /// What is still missing, then `sip.json`.
    pub fn finish(mut self, machine: &str, out: &Path) -> anyhow::Result<()> {
        while self.runs < SPREAD_RUNS {
            self.delay_trial()?;
        }
        self.calls_per_second()?;
        let Self {
            quick,
            calls,
            delay,
            cps,
            ..
        } = self;
        let (results, sustained) = cps.unwrap_or_default();
        let (rates, seconds) = cps_plan(quick);
        let mut md = format!(
            "Setup delay added by the agent (µs, one call at a time, including the media node's ng round trip; \
             {SPREAD_RUNS} runs of {calls} calls, spread over the bench's length when every part runs; median (min–max)):\n\n\
             | hop | p50 | p99 | p99.9 |\n|---|---:|---:|---:|\n"
        );
        for (name, d) in [
            ("INVITE in → INVITE out (offer)", &delay[0]),
            ("200 in → 200 out (answer)", &delay[1]),
        ] {
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} |",
                d[0].show(0),
                d[1].show(0),
                d[2].show(0)
            );
        }
        let _ = writeln!(
            md,
            "\nCalls per second through the agent with media anchoring (SIPp UAC → agent → SIPp UAS, {seconds} s per \
             run, calls held 200 ms; SIPp, the agent and the media daemon share the machine's CPUs). The sustained rate is \
             the highest one with no failed call in each of {MIN_RUNS} runs.\n\n| offered calls/s | runs | successful | failed |\n|---:|---:|---:|---:|"
        );
        // One row per rate, in order (the search revisits rates).
        let mut rows: Vec<u32> = results.iter().map(|r| r.rate).collect();
        rows.sort_unstable();
        rows.dedup();
        for rate in &rows {
            let rs: Vec<_> = results.iter().filter(|r| r.rate == *rate).collect();
            let _ = writeln!(
                md,
                "| {rate} | {} | {} | {} |",
                rs.len(),
                rs.iter().map(|r| r.ok).sum::<u64>(),
                rs.iter().map(|r| r.failed).sum::<u64>()
            );
        }
        let top = *rates.last().unwrap_or(&0);
        let cps_verdict = match sustained {
            _ if quick => Verdict::NotJudged(format!("--quick offers at most {top} calls/s")),
            Some(r) => Verdict::of(r >= 1000),
            None => Verdict::Missed,
        };
        let reading = cps_reading(&results, sustained);
        let _ = writeln!(
            md,
            "\nSustained: {} calls/s{} (target ≥ 1 000: {}).",
            sustained.map_or("none".to_owned(), |r| r.to_string()),
            match reading.and_then(|r| r.range) {
                Some((lo, hi)) if hi > lo => format!(
                    "; the limit lies between it and {hi:.0}, the lowest rate above it where calls failed"
                ),
                _ => String::new(),
            },
            cps_verdict.sentence()
        );
        let delay_verdict = |d: &[Figure; 3]| Verdict::of(d[1].median() < 2000.0);
        let targets = vec![
            target(
                "SIP calls/s sustained with media anchoring",
                reading,
                ">= 1000",
                &cps_verdict,
            ),
            target(
                "SIP setup delay added, INVITE p99 (µs)",
                &delay[0][1],
                "< 2000",
                &delay_verdict(&delay[0]),
            ),
            target(
                "SIP setup delay added, 200 OK p99 (µs)",
                &delay[1][1],
                "< 2000",
                &delay_verdict(&delay[1]),
            ),
        ];
        print!("## SIP agent\n\n{md}\n");
        let leg = |d: &[Figure; 3]| serde_json::json!({ "p50": d[0].json(), "p99": d[1].json(), "p999": d[2].json() });
        let json = serde_json::json!({
            "machine": machine,
            "setup_delay_us": { "calls_per_run": calls, "runs": SPREAD_RUNS, "invite": leg(&delay[0]), "ok": leg(&delay[1]) },
            "cps": results.iter().map(|r| serde_json::json!({
                "rate": r.rate, "successful": r.ok, "failed": r.failed, "idle_wait_s": r.idle_wait_s,
            })).collect::<Vec<_>>(),
            "sustained_cps": sustained,
            "targets": targets,
            "markdown": md,
        });
        let path = out.join("sip.json");
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
        println!("report: {}\n", path.display());
        Ok(())
    }
}

/// The sustained rate as a figure: its range runs up to the lowest rate
/// above it where calls failed, for the limit lies somewhere between (the
/// rates are steps, 200 calls/s apart: two runs a step apart may have the
/// same limit). Without a failing rate above it, the range is the rate.
fn cps_reading(results: &[CpsRun], sustained: Option<u32>) -> Option<Derived> {
    let s = sustained?;
    let failed_above = results
        .iter()
        .filter(|r| r.rate > s && r.failed > 0)
        .map(|r| r.rate)
        .min()
        .unwrap_or(s);
    Some(Derived {
        value: f64::from(s),
        range: Some((f64::from(s), f64::from(failed_above))),
    })
}

/// The SIPp rates tried, and seconds per run.
fn cps_plan(quick: bool) -> (&'static [u32], u32) {
    if quick {
        (&[100, 200], 3)
    } else {
        (&[200, 400, 600, 800, 1000, 1200, 1500], 5)
    }
}

/// Calls per second with SIPp: rising one run per rate until calls fail,
/// then the highest passing rate again until it has [`MIN_RUNS`] runs
/// without a failed call (one lower if it fails meanwhile). Returns every
/// run and the sustained rate.
fn cps_search(quick: bool) -> anyhow::Result<Cps> {
    let (rates, seconds) = cps_plan(quick);
    let mut results: Vec<CpsRun> = Vec::new();
    let mut highest = None;
    for (i, &rate) in rates.iter().enumerate() {
        eprintln!("==> sip: SIPp at {rate} calls/s for {seconds} s");
        let run = cps_run(rate, seconds)?;
        results.push(run);
        if run.failed > 0 {
            break;
        }
        highest = Some(i);
    }
    let mut sustained = None;
    while let Some(i) = highest {
        let rate = rates[i];
        let mut runs = results.iter().filter(|r| r.rate == rate).count();
        let mut clean = true;
        while runs < MIN_RUNS {
            eprintln!(
                "==> sip: SIPp at {rate} calls/s again ({} of {MIN_RUNS})",
                runs + 1
            );
            let run = cps_run(rate, seconds)?;
            results.push(run);
            runs += 1;
            if run.failed > 0 {
                clean = false;
                break;
            }
        }
        if clean {
            sustained = Some(rate);
            break;
        }
        highest = i.checked_sub(1);
    }
    Ok((results, sustained))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sustained rate's range reaches the lowest failing rate above
    /// it, so runs a step apart agree; without one it is the rate alone.
    #[test]
    fn the_sustained_rate_spans_up_to_the_first_failing_rate() {
        let run = |rate, ok, failed| CpsRun {
            rate,
            ok,
            failed,
            idle_wait_s: 1.0,
        };
        let run1 = [
            run(800, 4000, 0),
            run(1000, 5000, 0),
            run(1200, 5978, 22),
            run(1000, 4803, 197),
            run(800, 4000, 0),
            run(800, 4000, 0),
        ];
        let r = cps_reading(&run1, Some(800)).unwrap();
        assert_eq!((r.value, r.range), (800.0, Some((800.0, 1000.0))));
        let run2 = [
            run(1000, 5000, 0),
            run(1200, 6000, 0),
            run(1500, 5605, 1895),
            run(1200, 5147, 853),
            run(1000, 5000, 0),
            run(1000, 5000, 0),
        ];
        let r2 = cps_reading(&run2, Some(1000)).unwrap();
        assert_eq!(r2.range, Some((1000.0, 1200.0)));
        let t1 = target("cps", Some(r), ">= 1000", &Verdict::Missed);
        let t2 = target("cps", Some(r2), ">= 1000", &Verdict::Met);
        assert!(crate::compare::readings_agree(&t1, &t2));
        // Every rate passed: nothing above it is known.
        let all = [run(1500, 7500, 0)];
        assert_eq!(
            cps_reading(&all, Some(1500)).unwrap().range,
            Some((1500.0, 1500.0))
        );
        assert!(cps_reading(&run1, None).is_none());
    }
}
