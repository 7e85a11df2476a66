//! The appliance as an operator meets it: `/metrics` and `/health` scraped
//! over HTTP during a real call and checked against the packets sent, and
//! the operator CLI (`media-relay calls | call | stats`) run against the
//! same daemon.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use media_relay_tests::{
    Bed, BedOptions, Netns,
    bed::{A_V4, B_V4},
    daemon::{Daemon, NgClient, binary},
    http,
    media::{drain, rtp, udp_socket},
    root_test,
};
use media_user::ng::Value;
use serde_json::Value as Json;

const METRICS: &str = "127.0.0.1:9464";
const CALL: &str = "operator-call-1";

fn sdp(addr: Ipv4Addr, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    )
}

fn relay_of(reply: &Value) -> anyhow::Result<SocketAddr> {
    let sdp = reply.get("sdp").and_then(Value::as_str).context("no sdp")?;
    let info = media_user::sdp::inspect(sdp.as_bytes())?;
    let m = info.media.first().context("no media")?;
    Ok(SocketAddr::new(m.connection.context("no c=")?, m.port))
}

/// `media-relay <args>` inside `ns`: (success, stdout, stderr).
fn cli(ns: &Netns, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new("timeout")
        .arg("20")
        .args(["ip", "netns", "exec", ns.name()])
        .arg(binary())
        .args(args)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn cli_ok(ns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    let (ok, out, err) = cli(ns, args)?;
    ensure!(ok, "media-relay {args:?} failed: {err}{out}");
    Ok(out)
}

/// Send RTP with sequence numbers `seqs` from `from` to `to`; returns how
/// many arrived at `at`.
fn send(
    from: &UdpSocket,
    to: SocketAddr,
    at: &UdpSocket,
    ssrc: u32,
    seqs: &[u16],
) -> anyhow::Result<usize> {
    for (i, &seq) in seqs.iter().enumerate() {
        from.send_to(&rtp(ssrc, seq), to)?;
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(drain(at, seqs.len() + 10).len())
}

fn scrape(bed: &Bed) -> anyhow::Result<String> {
    let (status, body) = http::get(&bed.relay, METRICS.parse()?, "/metrics")?;
    ensure!(status == 200, "/metrics answered {status}: {body}");
    Ok(body)
}

fn metric(body: &str, series: &str) -> anyhow::Result<f64> {
    http::sample(body, series).with_context(|| format!("no sample {series} in:\n{body}"))
}

#[test]
fn metrics_and_cli_follow_a_call() -> anyhow::Result<()> {
    root_test("metrics_and_cli_follow_a_call", |t| {
        let bed = Bed::new(BedOptions::default())?;
        let daemon = Daemon::start_legs(
            t,
            &bed.relay,
            "generic",
            &[
                "--port-min",
                "30000",
                "--port-max",
                "30099",
                "--learning-window",
                "1",
                "--metrics-listen",
                METRICS,
                "--log-format",
                "json",
            ],
        )?;
        let ng = NgClient::new(&bed.relay, daemon.ng)?;

        // Healthy before any call, and saying how the data plane runs.
        let (status, health) = http::get(&bed.relay, METRICS.parse()?, "/health")?;
        ensure!(status == 200, "/health answered {status}: {health}");
        ensure!(health.contains("\"status\":\"ok\""), "{health}");
        ensure!(health.contains("XDP generic on ra"), "{health}");

        let offer = ng.ok(&Value::dict()
            .with("command", "offer")
            .with("call-id", CALL)
            .with("from-tag", "carrier")
            .with("sdp", sdp(A_V4, 5000).as_str()))?;
        let relay_b = relay_of(&offer)?;
        let answer = ng.ok(&Value::dict()
            .with("command", "answer")
            .with("call-id", CALL)
            .with("from-tag", "carrier")
            .with("to-tag", "pbx")
            .with("sdp", sdp(B_V4, 6000).as_str()))?;
        let relay_a = relay_of(&answer)?;
        let timeout = Duration::from_millis(400);
        let a = udp_socket(&bed.a, SocketAddr::new(IpAddr::V4(A_V4), 5000), timeout)?;
        let b = udp_socket(&bed.b, SocketAddr::new(IpAddr::V4(B_V4), 6000), timeout)?;

        // Both parties speak (latching), the learning window closes, then
        // the bulk of the media goes through XDP. A skips 3 sequence numbers.
        let skipped = [150u16, 151, 260];
        let a_seqs: Vec<u16> = (0..400).filter(|s| !skipped.contains(s)).collect();
        let b_seqs: Vec<u16> = (0..300).collect();
        let mut arrived = send(&a, relay_a, &b, 0xa, &a_seqs[..10])?;
        arrived += send(&b, relay_b, &a, 0xb, &b_seqs[..10])?;
        std::thread::sleep(Duration::from_millis(1300));
        arrived += send(&a, relay_a, &b, 0xa, &a_seqs[10..])?;
        arrived += send(&b, relay_b, &a, 0xb, &b_seqs[10..])?;
        let sent = a_seqs.len() + b_seqs.len();
        ensure!(arrived == sent, "{arrived} of {sent} packets arrived");

        // The metrics agree with the traffic (published once a second).
        std::thread::sleep(Duration::from_millis(1300));
        let m = scrape(&bed)?;
        ensure!(metric(&m, "media_relay_calls_active")? == 1.0);
        ensure!(metric(&m, "media_relay_calls_total")? == 1.0);
        ensure!(metric(&m, "media_relay_ng_commands_total{command=\"offer\"}")? == 1.0);
        ensure!(metric(&m, "media_relay_ng_commands_total{command=\"answer\"}")? == 1.0);
        ensure!(metric(&m, "media_relay_ports_in_use")? == 4.0);
        ensure!(metric(&m, "media_relay_ports_free")? == 96.0);
        ensure!(
            metric(
                &m,
                "media_relay_xdp_attached{interface=\"ra\",mode=\"generic\"}"
            )? == 1.0
        );
        let xdp = http::sum(
            &m,
            "media_relay_xdp_packets_total",
            &["outcome=\"redirected\""],
        ) + http::sum(
            &m,
            "media_relay_xdp_packets_total",
            &["outcome=\"transmitted\""],
        );
        let user = metric(&m, "media_relay_userspace_packets_total")?;
        ensure!(
            xdp + user == sent as f64,
            "XDP forwarded {xdp} + userspace {user} != {sent} sent:\n{m}"
        );
        ensure!(
            xdp >= (sent - 40) as f64,
            "most media should take XDP: {xdp} of {sent}"
        );
        ensure!(
            m.contains("# TYPE media_relay_ng_duration_seconds summary"),
            "{m}"
        );

        // The CLI sees the same call.
        let out = cli_ok(&bed.relay, &["calls", "--json"])?;
        let calls: Json = serde_json::from_str(&out).with_context(|| out.clone())?;
        let call = calls
            .as_array()
            .and_then(|c| c.iter().find(|c| c["call_id"] == CALL))
            .with_context(|| format!("{CALL} in {out}"))?;
        let legs = call["legs"].as_array().context("legs")?;
        ensure!(legs.len() == 2, "{out}");
        let leg = |tag: &str| {
            legs.iter()
                .find(|l| l["tag"] == tag)
                .cloned()
                .with_context(|| format!("leg {tag} in {out}"))
        };
        let (carrier, pbx) = (leg("carrier")?, leg("pbx")?);
        ensure!(carrier["packets"] == a_seqs.len(), "{out}");
        ensure!(pbx["packets"] == b_seqs.len(), "{out}");
        ensure!(carrier["lost"] == skipped.len(), "{out}");
        ensure!(pbx["lost"] == 0, "{out}");
        ensure!(carrier["path"] == "xdp" && pbx["path"] == "xdp", "{out}");
        ensure!(carrier["endpoint"] == "198.18.1.2:5000", "{out}");

        let table = cli_ok(&bed.relay, &["calls"])?;
        ensure!(table.contains(CALL) && table.contains("xdp/xdp"), "{table}");
        ensure!(
            table.contains(&format!("{}/{}", a_seqs.len(), b_seqs.len())),
            "{table}"
        );
        ensure!(table.contains("1 call "), "{table}");

        let detail = cli_ok(&bed.relay, &["call", CALL])?;
        ensure!(detail.contains("confirmed"), "{detail}");
        ensure!(detail.contains(&relay_a.port().to_string()), "{detail}");
        ensure!(detail.contains("198.18.2.2:6000"), "{detail}");

        let stats = cli_ok(&bed.relay, &["stats", "--json"])?;
        let s: Json = serde_json::from_str(&stats)?;
        ensure!(s["ports"]["used"] == 4, "{stats}");
        ensure!(s["currentstatistics"]["sessionsown"] == 1, "{stats}");
        let human = cli_ok(&bed.relay, &["stats"])?;
        ensure!(human.contains("XDP generic on ra"), "{human}");
        ensure!(human.contains("4 in use"), "{human}");

        // Ended calls keep their final figures.
        ng.ok(&Value::dict()
            .with("command", "delete")
            .with("call-id", CALL))?;
        let out = cli_ok(&bed.relay, &["calls", "--ended", "--json"])?;
        let ended: Json = serde_json::from_str(&out)?;
        let call = ended
            .as_array()
            .and_then(|c| c.iter().find(|c| c["call_id"] == CALL))
            .with_context(|| format!("{CALL} in {out}"))?;
        ensure!(call["ended"] == "deleted", "{out}");
        let total: u64 = call["legs"]
            .as_array()
            .context("legs")?
            .iter()
            .filter_map(|l| l["packets"].as_u64())
            .sum();
        ensure!(total == sent as u64, "{out}");
        std::thread::sleep(Duration::from_millis(1300));
        let m = scrape(&bed)?;
        ensure!(metric(&m, "media_relay_calls_active")? == 0.0);
        ensure!(metric(&m, "media_relay_calls_ended_total{reason=\"delete\"}")? == 1.0);
        ensure!(metric(&m, "media_relay_ports_in_use")? == 0.0);

        // One call followed through the JSON logs: the ng commands' span and
        // the routes it programs into the data plane carry its call-id.
        let log = daemon.log_text();
        let lines: Vec<Json> = log
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        ensure!(lines.len() > 5, "too few JSON log lines:\n{log}");
        for msg in ["call created", "route", "call deleted"] {
            ensure!(
                lines.iter().any(|l| l["fields"]["message"] == msg
                    && (l["fields"]["call_id"] == CALL || l["span"]["call_id"] == CALL)),
                "no {msg:?} JSON log line with call_id {CALL}:\n{log}"
            );
        }

        // A clear error when nothing listens.
        let (ok, _, err) = cli(&bed.relay, &["calls", "--ng", "127.0.0.1:9"])?;
        ensure!(!ok && err.contains("no reply from media-relay"), "{err}");
        let (ok, _, err) = cli(&bed.relay, &["call", "no-such-call"])?;
        ensure!(!ok && err.contains("no call \"no-such-call\""), "{err}");
        Ok(())
    })
}
