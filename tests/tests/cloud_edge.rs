//! The relay behind a cloud edge (issue 15, public address discovery):
//!
//! ```text
//!  ns carrier                ns edge (1:1 NAT, nft)        ns relay           ns pbx
//!  c0 ───────── veth ──────── ep      ei ───── veth ───── ra   rb ── veth ── p0
//!  198.18.50.2 (SIPp UAC)    198.18.50.1  198.18.52.1     198.18.52.2
//!  198.18.50.3:3478/3479                                    198.18.53.1  198.18.53.2
//!  (coturn, STUN only)       public 198.18.51.10 ↔ 198.18.52.2, later 198.18.51.20
//! ```
//!
//! The edge forwards to the relay only UDP 5060 and the relay's port range
//! (150 ports) at the public address; the relay learns that address with
//! STUN (`advertise = "stun"`), refusing offers until it knows it. A SIPp
//! call from the carrier through the SIP agent completes with RTP both
//! ways, the carrier seeing the relay's media at the public address (the
//! SDP it got carries it). Then the edge's public address changes; after
//! the relay's re-check (`stun-interval = 2`) the next call carries the
//! new one, the change is logged and counted, and `/health` and
//! `statistics` show the address in effect. Finally the STUN servers stop:
//! the relay keeps the last known address and `/health` says degraded.
//!
//! The SIP agent advertises the same public address towards the carrier
//! (`trunk-advertise = "media"`): before discovery it refuses the
//! carrier's INVITE with 503 and Retry-After; afterwards the 200 the
//! carrier receives carries it in Record-Route, the carrier's ACK and BYE
//! go to it with a Route naming it (SIPp `rrs="true"`, `[routes]`) and
//! reach the PBX through the NAT, a call from the PBX reaches the carrier
//! with it in Via and Record-Route, nothing the carrier receives names the
//! private address, and after the change the next call carries the new
//! one.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use media_relay_tests::{
    Netns, TestDir,
    daemon::{Daemon, NgClient},
    http, root_test,
    sipp::{PCAP, RtpCount, RtpCounter, Sipp, SippOptions, pcap_packet_count, run_pair},
};
use media_user::ng::Value;

const CARRIER: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 2);
const STUN_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 3);
const EDGE_OUT: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 1);
const EDGE_IN: Ipv4Addr = Ipv4Addr::new(198, 18, 52, 1);
const RELAY_A: Ipv4Addr = Ipv4Addr::new(198, 18, 52, 2);
const RELAY_B: Ipv4Addr = Ipv4Addr::new(198, 18, 53, 1);
const PBX: Ipv4Addr = Ipv4Addr::new(198, 18, 53, 2);
const PUBLIC_1: Ipv4Addr = Ipv4Addr::new(198, 18, 51, 10);
const PUBLIC_2: Ipv4Addr = Ipv4Addr::new(198, 18, 51, 20);
const STUN_PORTS: [u16; 2] = [3478, 3479];
const PORT_MIN: u16 = 40_000;
/// 150 ports forwarded, as one major provider allows.
const PORT_MAX: u16 = 40_149;
const SIP: u16 = 5060;
const CARRIER_MEDIA: u16 = 10_000;
const PBX_MEDIA: u16 = 20_000;
const METRICS: &str = "127.0.0.1:9464";
const DEADLINE: Duration = Duration::from_secs(60);

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// A process the test started, killed by PID on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The four namespaces (removed on drop, after the processes in them).
struct CloudEdge {
    carrier: Netns,
    edge: Netns,
    relay: Netns,
    pbx: Netns,
}

fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> anyhow::Result<()> {
    media_relay_tests::netns::run(Command::new("ip").args([
        "link",
        "add",
        "name",
        a_dev,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ]))
    .context("creating veth pair")?;
    Ok(())
}

impl CloudEdge {
    fn new() -> anyhow::Result<Self> {
        let e = Self {
            carrier: Netns::new("carrier")?,
            edge: Netns::new("edge")?,
            relay: Netns::new("relay")?,
            pbx: Netns::new("pbx")?,
        };
        veth(&e.carrier, "c0", &e.edge, "ep")?;
        veth(&e.edge, "ei", &e.relay, "ra")?;
        veth(&e.relay, "rb", &e.pbx, "p0")?;
        for (ns, dev, addrs) in [
            (&e.carrier, "c0", vec![CARRIER, STUN_HOST]),
            (&e.edge, "ep", vec![EDGE_OUT]),
            (&e.edge, "ei", vec![EDGE_IN]),
            (&e.relay, "ra", vec![RELAY_A]),
            (&e.relay, "rb", vec![RELAY_B]),
            (&e.pbx, "p0", vec![PBX]),
        ] {
            for a in addrs {
                ns.ip(&["addr", "add", &format!("{a}/24"), "dev", dev])?;
            }
            ns.ip(&["link", "set", dev, "up"])?;
            ns.exec("ethtool", &["-K", dev, "tx", "off"])?;
        }
        // The carrier reaches every public address through the edge; the
        // relay reaches everything but the PBX through the edge.
        e.carrier.ip(&[
            "route",
            "add",
            "198.18.51.0/24",
            "via",
            &EDGE_OUT.to_string(),
        ])?;
        e.relay
            .ip(&["route", "add", "default", "via", &EDGE_IN.to_string()])?;
        e.pbx
            .ip(&["route", "add", "default", "via", &RELAY_B.to_string()])?;
        e.edge.sysctl("net.ipv4.ip_forward", "1")?;
        e.nat(PUBLIC_1)?;
        Ok(e)
    }

    /// The edge's 1:1 NAT for `public` (replacing any before it), its
    /// connection tracking forgotten, as after an instance's restart.
    fn nat(&self, public: Ipv4Addr) -> anyhow::Result<()> {
        let _ = self.edge.exec("nft", &["delete", "table", "ip", "mr_edge"]);
        let rules = format!(
            "table ip mr_edge {{
  chain edge_pre {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"ep\" ip daddr {public} udp dport {{ {SIP}, {PORT_MIN}-{PORT_MAX} }} dnat to {RELAY_A}
  }}
  chain edge_post {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"ep\" ip saddr {RELAY_A} snat to {public}
  }}
  chain edge_forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname \"ei\" oifname \"ep\" accept
    iifname \"ep\" oifname \"ei\" ip daddr {RELAY_A} udp dport {{ {SIP}, {PORT_MIN}-{PORT_MAX} }} ct status dnat accept
  }}
}}
"
        );
        let mut child = self
            .edge
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("nft (install nftables: cargo xtask setup)")?;
        std::io::Write::write_all(
            child.stdin.as_mut().context("nft's stdin")?,
            rules.as_bytes(),
        )?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Entries of the old mapping would keep rewriting to it.
        let _ = self.edge.exec("conntrack", &["-F"]);
        Ok(())
    }

    /// coturn in STUN-only mode on the public side, one per port.
    fn stun_servers(&self, dir: &TestDir) -> anyhow::Result<Vec<Killed>> {
        let mut out = Vec::new();
        for port in STUN_PORTS {
            let log = dir.path().join(format!("turnserver-{port}.log"));
            let child = self
                .carrier
                .command("turnserver")
                .args([
                    "-n",
                    "--stun-only",
                    "--no-cli",
                    "--no-tls",
                    "--no-dtls",
                    "--simple-log",
                    "--log-file",
                ])
                .arg(&log)
                .args(["-L", &STUN_HOST.to_string(), "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("turnserver (install coturn: cargo xtask setup)")?;
            out.push(Killed(child));
        }
        Ok(out)
    }
}

fn config(dir: &TestDir) -> anyhow::Result<std::path::PathBuf> {
    let servers = STUN_PORTS
        .iter()
        .map(|p| format!("\"{STUN_HOST}:{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    dir.write(
        "media-relay.toml",
        format!(
            r#"port-min = {PORT_MIN}
port-max = {PORT_MAX}
stun-servers = [{servers}]
stun-interval = 2
metrics-listen = "{METRICS}"

[[interface]]
name = "public"
netdev = "ra"
advertise = "stun"
[[interface]]
name = "private"
netdev = "rb"

[sip]
trunk-listen = "{RELAY_A}:{SIP}"
pbx-listen = "{RELAY_B}:{SIP}"
pbx = "{PBX}:{SIP}"
max-calls = 10
media = ["127.0.0.1:2223"]
media-poll = 1
trunk-advertise = "media"
record-route-secret = "cloud_edge: a secret of 32 bytes or more"

[[sip.trunk]]
name = "carrier"
sources = ["{CARRIER}"]
target = "{CARRIER}:{SIP}"
default = true
"#
        ),
    )
}

/// `/health` of the relay: (HTTP status, JSON).
fn health(e: &CloudEdge) -> anyhow::Result<(u16, serde_json::Value)> {
    let (status, body) = http::get(&e.relay, METRICS.parse()?, "/health")?;
    Ok((
        status,
        serde_json::from_str(&body).with_context(|| format!("/health: {body}"))?,
    ))
}

/// Wait (bounded) until `/health` reports `public` as the address in
/// effect on the `ra` interface.
fn await_public(e: &CloudEdge, public: Ipv4Addr) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, h) = health(e)?;
        let entry = &h["public_addresses"][0];
        if status == 200
            && h["status"] == "ok"
            && entry["address"] == public.to_string()
            && entry["status"] == "ok"
        {
            return Ok(h);
        }
        ensure!(
            Instant::now() < deadline,
            "/health does not show {public} after 20 s: {status} {h}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn offer_value(call: &str) -> Value {
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {CARRIER}\r\ns=-\r\nc=IN IP4 {CARRIER}\r\nt=0 0\r\nm=audio 10000 RTP/AVP 8\r\n"
    );
    Value::dict()
        .with("command", "offer")
        .with("call-id", call)
        .with("from-tag", "carrier-tag")
        .with("sdp", sdp.as_str())
}

fn offer(ng: &NgClient, call: &str) -> anyhow::Result<Value> {
    ng.request(&offer_value(call))
}

fn check_rtp(where_: &str, count: &RtpCount, packets: u64, from: Ipv4Addr) -> anyhow::Result<()> {
    ensure!(
        count.packets == packets,
        "{where_}: {} RTP packets, want {packets}",
        count.packets
    );
    ensure!(
        count.bad_checksums == 0,
        "{where_}: bad checksums {count:?}"
    );
    ensure!(
        !count.sources.is_empty() && count.sources.iter().all(|s| s.ip() == IpAddr::V4(from)),
        "{where_}: RTP from {:?}, want only {from}",
        count.sources
    );
    Ok(())
}

/// SDP `c=` lines the carrier's SIPp received (its message trace).
fn sdp_addresses_at_carrier(logs: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(logs.join("messages.log"))
        .with_context(|| format!("reading {}", logs.join("messages.log").display()))?;
    // Received messages are logged after a "message received" line; the
    // UAC sent c=IN IP4 CARRIER itself, so any other c= line was received.
    Ok(text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("c=IN IP4 "))
        .filter(|a| *a != CARRIER.to_string())
        .map(str::to_owned)
        .collect())
}

/// The log without its colours (`\x1b[…m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The SIP messages the carrier's SIPp sent and received (its trace),
/// checked: the relay's private address appears nowhere in them.
fn carrier_trace(logs: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(logs.join("messages.log"))
        .with_context(|| format!("reading {}", logs.join("messages.log").display()))?;
    ensure!(
        !text.contains(&RELAY_A.to_string()),
        "the carrier was told the private address {RELAY_A}:\n{text}"
    );
    Ok(text)
}

/// The values of header `name` in a trace (case-insensitive name).
fn header_lines<'a>(trace: &'a str, name: &str) -> Vec<&'a str> {
    trace
        .lines()
        .map(str::trim)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .collect()
}

/// One call from the carrier to the public address through the agent.
fn call(dir: &TestDir, e: &CloudEdge, public: Ipv4Addr) -> anyhow::Result<()> {
    let uas = SippOptions::uas("basic_uas.xml", sa(PBX, SIP), PBX.into(), PBX_MEDIA);
    let uac = SippOptions::uac(
        "basic_uac.xml",
        sa(CARRIER, SIP),
        sa(public, SIP),
        CARRIER.into(),
        CARRIER_MEDIA,
    );
    let at_pbx = RtpCounter::start(&e.pbx, PBX_MEDIA..=PBX_MEDIA)?;
    let at_carrier = RtpCounter::start(&e.carrier, CARRIER_MEDIA..=CARRIER_MEDIA)?;
    let (uas_result, uac_result) = run_pair(dir, &e.pbx, &uas, &e.carrier, &uac, DEADLINE)?;
    let (at_pbx, at_carrier) = (at_pbx.stop()?, at_carrier.stop()?);
    // The UAS got the ACK and the BYE the carrier routed by the
    // Record-Route (to the public address): popped, forwarded through
    // the NAT.
    uac_result.ensure_all_succeeded()?;
    uas_result.ensure_all_succeeded()?;
    let per = pcap_packet_count(PCAP)?;
    check_rtp("at the PBX", &at_pbx, per, RELAY_B)?;
    check_rtp("at the carrier", &at_carrier, per, public)?;
    let seen = sdp_addresses_at_carrier(uac_result.logs())?;
    ensure!(
        !seen.is_empty() && seen.iter().all(|a| *a == public.to_string()),
        "the SDP the carrier got carries {seen:?}, want {public}"
    );
    let trace = carrier_trace(uac_result.logs())?;
    let ours = format!("<sip:{public}:{SIP};lr;mr=");
    // The trunk side's entry names the public address (the PBX side's,
    // the other of the two, is for the PBX).
    let rr = header_lines(&trace, "Record-Route");
    ensure!(
        rr.iter().any(|v| v.starts_with(&ours)),
        "Record-Route at the carrier: {rr:?}, want {ours}…"
    );
    // ACK and BYE, routed by it: their first Route is the public entry.
    let routes = header_lines(&trace, "Route");
    ensure!(
        routes.iter().filter(|v| v.starts_with(&ours)).count() >= 2,
        "Route of the carrier's ACK/BYE: {routes:?}, want {ours}…"
    );
    Ok(())
}

/// One call from the PBX to the carrier: the INVITE the carrier receives
/// names the relay by the public address in Via and Record-Route.
fn call_from_pbx(dir: &TestDir, e: &CloudEdge, public: Ipv4Addr) -> anyhow::Result<()> {
    let uas = SippOptions::uas(
        "basic_uas.xml",
        sa(CARRIER, SIP),
        CARRIER.into(),
        CARRIER_MEDIA,
    );
    let uac = SippOptions::uac(
        "basic_uac.xml",
        sa(PBX, SIP),
        sa(RELAY_B, SIP),
        PBX.into(),
        PBX_MEDIA,
    );
    let at_pbx = RtpCounter::start(&e.pbx, PBX_MEDIA..=PBX_MEDIA)?;
    let at_carrier = RtpCounter::start(&e.carrier, CARRIER_MEDIA..=CARRIER_MEDIA)?;
    let (uas_result, uac_result) = run_pair(dir, &e.carrier, &uas, &e.pbx, &uac, DEADLINE)?;
    let (at_pbx, at_carrier) = (at_pbx.stop()?, at_carrier.stop()?);
    uac_result.ensure_all_succeeded()?;
    uas_result.ensure_all_succeeded()?;
    let per = pcap_packet_count(PCAP)?;
    check_rtp("at the PBX", &at_pbx, per, RELAY_B)?;
    check_rtp("at the carrier", &at_carrier, per, public)?;
    let trace = carrier_trace(uas_result.logs())?;
    let via = format!("SIP/2.0/UDP {public}:{SIP};");
    let vias = header_lines(&trace, "Via");
    ensure!(
        vias.iter().any(|v| v.starts_with(&via)),
        "Via at the carrier: {vias:?}, want {via}…"
    );
    let rr = header_lines(&trace, "Record-Route");
    let ours = format!("<sip:{public}:{SIP};lr;mr=");
    ensure!(
        rr.iter().any(|v| v.starts_with(&ours)),
        "Record-Route at the carrier: {rr:?}, want {ours}…"
    );
    Ok(())
}

/// Before discovery the agent refuses the carrier's INVITE: 503 with
/// Retry-After, rather than advertise its private address.
fn refused_before_discovery(dir: &TestDir, e: &CloudEdge) -> anyhow::Result<()> {
    let uac = SippOptions::uac(
        "max_calls_uac.xml",
        sa(CARRIER, SIP),
        sa(PUBLIC_1, SIP),
        CARRIER.into(),
        CARRIER_MEDIA,
    );
    let result = Sipp::start(dir, &e.carrier, &uac)?.wait(DEADLINE)?;
    result.ensure_all_succeeded()?;
    let trace = carrier_trace(result.logs())?;
    ensure!(
        header_lines(&trace, "Retry-After").contains(&"5"),
        "no Retry-After: 5 in the 503:\n{trace}"
    );
    Ok(())
}

#[test]
fn relay_behind_a_cloud_edge_discovers_and_follows_its_public_address() -> anyhow::Result<()> {
    root_test("cloud_edge", |dir| {
        let e = CloudEdge::new()?;
        let config = config(dir)?;
        let config_arg = config.to_string_lossy().into_owned();
        // No STUN server yet: the relay must refuse offers.
        let daemon = Daemon::start(
            dir,
            &e.relay,
            &[
                "--config",
                &config_arg,
                "--xdp-mode",
                "generic",
                "--learning-window",
                "1",
            ],
        )?;
        let ng = NgClient::new(&e.relay, daemon.ng)?;
        let refused = offer(&ng, "before-discovery")?;
        ensure!(
            refused.get("result").and_then(Value::as_str) == Some("error")
                && refused.get("error-reason").and_then(Value::as_str)
                    == Some("public address not yet known"),
            "offer before discovery: {refused:?}"
        );
        let (status, h) = health(&e)?;
        ensure!(
            status == 503 && h["status"] == "no_public_address",
            "/health before discovery: {status} {h}"
        );
        refused_before_discovery(dir, &e)?;

        let stun = e.stun_servers(dir)?;
        let h = await_public(&e, PUBLIC_1)?;
        let entry = &h["public_addresses"][0];
        ensure!(
            entry["interface"] == "public"
                && entry["last_confirmed_unix"].as_u64().is_some()
                && entry["disagreement"].is_null(),
            "/health: {h}"
        );
        let stats = ng.ok(&Value::dict().with("command", "statistics"))?;
        let listed = stats
            .get("statistics")
            .and_then(|s| s.get("public addresses"))
            .and_then(Value::as_list)
            .and_then(|l| l.first())
            .and_then(|p| p.get("address"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        ensure!(
            listed.as_deref() == Some(PUBLIC_1.to_string().as_str()),
            "statistics: {stats:?}"
        );

        call(dir, &e, PUBLIC_1)?;

        // The instance gets another public address.
        e.nat(PUBLIC_2)?;
        let h = await_public(&e, PUBLIC_2)?;
        ensure!(h["public_addresses"][0]["changes"] == 1, "/health: {h}");
        // Published with the other metrics, once a second.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, metrics) = http::get(&e.relay, METRICS.parse()?, "/metrics")?;
            let changes = http::sample(
                &metrics,
                "media_relay_public_address_changes_total{interface=\"public\",family=\"ipv4\"}",
            );
            if changes == Some(1.0) {
                break;
            }
            ensure!(Instant::now() < deadline, "changes metric {changes:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = strip_ansi(&daemon.log_text());
        ensure!(
            log.lines().any(|l| l.contains("public address changed")
                && l.contains(&format!("old={PUBLIC_1}"))
                && l.contains(&format!("new={PUBLIC_2}"))),
            "no warning of the change in the daemon's log"
        );

        call(dir, &e, PUBLIC_2)?;
        call_from_pbx(dir, &e, PUBLIC_2)?;
        let log = strip_ansi(&daemon.log_text());
        ensure!(
            log.lines().any(|l| l.contains("SIP agent advertises")
                && l.contains(&format!("address={PUBLIC_2}:{SIP}"))),
            "the agent did not log the new address it advertises"
        );
        // The operator's view.
        let stats = media_relay_tests::netns::run(
            e.relay
                .command(media_relay_tests::daemon::binary())
                .arg("stats"),
        )?;
        ensure!(
            stats.contains(&format!(
                "public     public ipv4 {PUBLIC_2} (ok, confirmed "
            )),
            "media-relay stats:\n{stats}"
        );

        // Every STUN server gone: the last known address stays in effect,
        // /health says degraded (still 200: calls are taken).
        drop(stun);
        let deadline = Instant::now() + Duration::from_secs(30);
        let h = loop {
            let (status, h) = health(&e)?;
            if h["status"] == "degraded" {
                ensure!(status == 200, "/health degraded answers {status}");
                break h;
            }
            ensure!(
                Instant::now() < deadline,
                "/health not degraded 30 s after the STUN servers stopped: {h}"
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        let entry = &h["public_addresses"][0];
        ensure!(
            entry["status"] == "degraded"
                && entry["address"] == PUBLIC_2.to_string()
                && entry["degraded"]
                    .as_str()
                    .is_some_and(|d| d.contains("3478")),
            "/health: {h}"
        );
        // An offer from the PBX's side: the SDP for the carrier.
        let kept = ng
            .ok(&offer_value("after-stun-failed")
                .with("direction", Value::list(["private", "public"])))?;
        let sdp = kept.get("sdp").and_then(Value::as_str).unwrap_or_default();
        ensure!(
            sdp.contains(&format!("c=IN IP4 {PUBLIC_2}")),
            "offer while degraded: {sdp}"
        );
        drop(daemon);
        Ok(())
    })
}
