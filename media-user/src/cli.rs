//! The operator CLI: `media-relay calls`, `media-relay call <call-id>` and
//! `media-relay stats`, talking ng to the running daemon (on loopback by
//! default, where the daemon listens unless told otherwise). Human tables
//! by default, JSON with `--json`.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use comfy_table::{Table, presets::NOTHING};
use serde_json::{Map, Value as Json, json};

use crate::ng::{self, Value};

/// Attempts per request, each waiting this long for the reply.
const ATTEMPTS: u32 = 3;
const WAIT: Duration = Duration::from_millis(700);

/// The CLI's ng client: [`ng::blocking::Client`] with retransmissions, and
/// errors worded for an operator.
pub struct NgClient {
    client: ng::blocking::Client,
}

impl NgClient {
    pub fn new(addr: SocketAddr) -> anyhow::Result<Self> {
        let any: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let socket = UdpSocket::bind(any).context("binding a UDP socket for ng")?;
        Ok(Self {
            client: ng::blocking::Client::new(socket, addr, "cli").attempts(ATTEMPTS),
        })
    }

    /// Send `request` (a dictionary with `command`), retransmitting with
    /// the same cookie; the reply's dictionary, or its `error-reason`.
    pub fn request(&mut self, request: &Value) -> anyhow::Result<Value> {
        let addr = self.client.server();
        let reply = match self.client.request(request, WAIT) {
            Ok(reply) => reply,
            Err(
                ng::blocking::ClientError::NoReply { .. }
                | ng::blocking::ClientError::Refused { .. },
            ) => bail!(
                "no reply from media-relay on {addr} (is `media-relay run` running? point at it with --ng <addr> or --config <file>)"
            ),
            Err(e @ ng::blocking::ClientError::Send { .. }) => {
                return Err(e).context("sending to media-relay's ng address");
            }
            Err(e) => return Err(e.into()),
        };
        if reply.get("result").and_then(Value::as_str) == Some("error") {
            let reason = reply
                .get("error-reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            bail!("media-relay answered: {reason}");
        }
        Ok(reply)
    }
}

/// ng value → JSON (byte strings as UTF-8 text, lossily).
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Bytes(b) => Json::String(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => json!(i),
        Value::List(l) => Json::Array(l.iter().map(to_json).collect()),
        Value::Dict(d) => Json::Object(
            d.iter()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), to_json(v)))
                .collect::<Map<_, _>>(),
        ),
    }
}

fn int(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_int).unwrap_or(0)
}

fn u(v: Option<&Value>) -> u64 {
    u64::try_from(int(v)).unwrap_or(0)
}

fn list(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_list).unwrap_or(&[])
}

fn has_flag(stream: &Value, flag: &str) -> bool {
    list(stream.get("flags"))
        .iter()
        .any(|f| f.as_str() == Some(flag))
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// `65s` → `1m05s`.
fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn endpoint_text(v: Option<&Value>) -> String {
    let Some(e) = v else {
        return "-".to_owned();
    };
    let addr = e.get("address").and_then(Value::as_str).unwrap_or("?");
    let port = int(e.get("port"));
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// One party of a call as the `calls` table shows it: what arrived from
/// it and was forwarded to the other side.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Leg {
    pub tag: String,
    pub endpoint: String,
    pub packets: u64,
    pub bytes: u64,
    /// RTP packets lost before reaching the relay (sequence gaps).
    pub lost: u64,
    /// Forwarded by XDP (part of `packets`, `bytes`).
    pub xdp_packets: u64,
    pub xdp_bytes: u64,
    /// `xdp`, `userspace`, or `-` before any packet.
    pub path: &'static str,
    /// Interarrival jitter of what the party sends, as the relay measured
    /// it (µs); `None` before RTP or with an unknown clock rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_us: Option<u64>,
    /// The leg's MOS ×10 (see README, Media quality per leg).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mos_x10: Option<u64>,
}

/// One call, summarised from its `query` report.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallSummary {
    pub call_id: String,
    pub age_s: i64,
    pub legs: Vec<Leg>,
    /// For ended calls: reason and duration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// Summarise a `query` reply.
pub fn summarise(call_id: &str, report: &Value) -> CallSummary {
    let now = now_unix();
    let mut legs = Vec::new();
    if let Some(tags) = report.get("tags").and_then(Value::as_dict) {
        for tag in tags.values() {
            let mut leg = Leg {
                tag: tag.get("tag").and_then(Value::as_str).unwrap_or("").into(),
                path: "-",
                ..Leg::default()
            };
            for media in list(tag.get("medias")) {
                for stream in list(media.get("streams")) {
                    let stats = stream.get("stats");
                    let stat = |k: &str| u(stats.and_then(|s| s.get(k)));
                    leg.packets += stat("packets");
                    leg.bytes += stat("bytes");
                    leg.lost += stat("lost");
                    leg.xdp_packets += stat("kernel packets");
                    leg.xdp_bytes += stat("kernel bytes");
                    if has_flag(stream, "RTP") && leg.endpoint.is_empty() {
                        leg.endpoint = endpoint_text(stream.get("endpoint"));
                    }
                }
            }
            let quality = tag.get("quality");
            let figure = |k: &str| {
                quality
                    .and_then(|q| q.get(k))
                    .and_then(Value::as_int)
                    .and_then(|v| u64::try_from(v).ok())
            };
            leg.jitter_us = figure("inbound jitter us");
            leg.mos_x10 = figure("MOS");
            leg.path = match (leg.packets, leg.xdp_packets) {
                (0, _) => "-",
                (_, 0) => "userspace",
                (p, x) if x * 2 >= p => "xdp",
                _ => "mixed",
            };
            legs.push(leg);
        }
    }
    // In the order the parties joined (the caller first), when the
    // report says.
    let order: Vec<&str> = list(report.get("tag order"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    legs.sort_by_key(|l| order.iter().position(|t| *t == l.tag).unwrap_or(usize::MAX));
    let created = int(report.get("created"));
    let ended = report.get("ended");
    CallSummary {
        call_id: call_id.to_owned(),
        age_s: now - created,
        legs,
        ended: ended
            .and_then(|e| e.get("reason"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        duration_ms: ended.map(|e| u(e.get("duration ms"))),
    }
}

fn list_ids(client: &mut NgClient, limit: usize, key: &str) -> anyhow::Result<Vec<String>> {
    let reply = client.request(
        &Value::dict()
            .with("command", "list")
            .with("limit", Value::Int(limit as i64)),
    )?;
    Ok(list(reply.get(key))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect())
}

/// `calls`: live calls (or, with `ended`, the last ended ones).
pub fn calls(client: &mut NgClient, limit: usize, ended: bool) -> anyhow::Result<Vec<CallSummary>> {
    let ids = list_ids(client, limit, if ended { "ended" } else { "calls" })?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let q = Value::dict()
            .with("command", "query")
            .with("call-id", id.as_str());
        match client.request(&q) {
            Ok(report) => out.push(summarise(&id, &report)),
            // Ended between `list` and `query`.
            Err(e) if e.to_string().contains("Unknown call-id") => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| b.age_s.cmp(&a.age_s).then(a.call_id.cmp(&b.call_id)));
    Ok(out)
}

fn joined<T: ToString>(legs: &[Leg], f: impl Fn(&Leg) -> T) -> String {
    if legs.is_empty() {
        return "-".to_owned();
    }
    legs.iter()
        .map(|l| f(l).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

pub fn calls_table(calls: &[CallSummary]) -> String {
    let ended = calls.iter().any(|c| c.ended.is_some());
    let mut t = Table::new();
    t.load_preset(NOTHING);
    let mut header = vec![
        "CALL-ID",
        if ended { "DURATION" } else { "AGE" },
        "LEGS",
        "PACKETS",
        "BYTES",
        "LOST",
        "JITTER",
        "MOS",
        "PATH",
    ];
    if ended {
        header.push("ENDED");
    }
    t.set_header(header);
    for c in calls {
        let when = match c.duration_ms {
            Some(ms) => format!("{:.1}s", ms as f64 / 1000.0),
            None => age(c.age_s),
        };
        let mut row = vec![
            c.call_id.clone(),
            when,
            c.legs.len().to_string(),
            joined(&c.legs, |l| l.packets),
            joined(&c.legs, |l| l.bytes),
            joined(&c.legs, |l| l.lost),
            joined(&c.legs, |l| {
                l.jitter_us
                    .map_or_else(|| "-".to_owned(), |j| format!("{:.1}ms", j as f64 / 1000.0))
            }),
            joined(&c.legs, |l| {
                l.mos_x10
                    .map_or_else(|| "-".to_owned(), |m| format!("{:.1}", m as f64 / 10.0))
            }),
            joined(&c.legs, |l| l.path),
        ];
        if ended {
            row.push(c.ended.clone().unwrap_or_default());
        }
        t.add_row(row);
    }
    let noun = if ended { "ended call" } else { "call" };
    format!(
        "{t}\n{} {noun}{} (per-leg figures a/b: what each party sent through the relay; \
         JITTER as it arrived, MOS of the leg — see `media-relay call <id>` for every figure)",
        calls.len(),
        if calls.len() == 1 { "" } else { "s" }
    )
}

/// `call <call-id>`: the `query` report.
pub fn call(client: &mut NgClient, call_id: &str) -> anyhow::Result<Value> {
    client
        .request(
            &Value::dict()
                .with("command", "query")
                .with("call-id", call_id),
        )
        .map_err(|e| {
            if e.to_string().contains("Unknown call-id") {
                anyhow::anyhow!(
                    "no call {call_id:?} on this relay (live or among the last ended); see `media-relay calls`"
                )
            } else {
                e
            }
        })
}

pub fn call_table(call_id: &str, report: &Value) -> String {
    let now = now_unix();
    let created = int(report.get("created"));
    let mut out = format!("call {call_id}\n  created {} ago", age(now - created));
    if let Some(e) = report.get("ended") {
        out.push_str(&format!(
            ", ended ({}) after {:.1}s",
            e.get("reason").and_then(Value::as_str).unwrap_or("?"),
            u(e.get("duration ms")) as f64 / 1000.0
        ));
    }
    let last_signal = int(report.get("last signal"));
    if last_signal > 0 {
        out.push_str(&format!(", last signal {} ago", age(now - last_signal)));
    }
    out.push('\n');
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(vec![
        "LEG",
        "PEER-OF",
        "MEDIA",
        "STREAM",
        "LOCAL",
        "ENDPOINT",
        "ADVERTISED",
        "LATCH",
        "PATH",
        "PACKETS",
        "BYTES",
        "LOST",
        "ERRORS",
        "LAST",
    ]);
    if let Some(tags) = report.get("tags").and_then(Value::as_dict) {
        for tag in tags.values() {
            let name = tag.get("tag").and_then(Value::as_str).unwrap_or("");
            let peer = tag
                .get("in dialogue with")
                .and_then(Value::as_str)
                .unwrap_or("-");
            for media in list(tag.get("medias")) {
                let m = format!(
                    "{} {}",
                    int(media.get("index")),
                    media.get("type").and_then(Value::as_str).unwrap_or("?")
                );
                for stream in list(media.get("streams")) {
                    let stats = stream.get("stats");
                    let stat = |k: &str| u(stats.and_then(|s| s.get(k)));
                    let kind = if has_flag(stream, "RTCP") {
                        "RTCP"
                    } else {
                        "RTP"
                    };
                    let latch = if has_flag(stream, "confirmed") {
                        "confirmed"
                    } else if stream.get("endpoint").is_some() {
                        "learning"
                    } else {
                        "waiting"
                    };
                    let path = match (stat("packets"), stat("kernel packets")) {
                        (0, _) => "-",
                        (_, 0) => "userspace",
                        _ => "xdp",
                    };
                    let last = stream
                        .get("last packet")
                        .and_then(Value::as_int)
                        .map_or("-".to_owned(), |t| format!("{} ago", age(now - t)));
                    t.add_row(vec![
                        name.to_owned(),
                        peer.to_owned(),
                        m.clone(),
                        kind.to_owned(),
                        int(stream.get("local port")).to_string(),
                        endpoint_text(stream.get("endpoint")),
                        endpoint_text(stream.get("advertised endpoint")),
                        latch.to_owned(),
                        path.to_owned(),
                        stat("packets").to_string(),
                        stat("bytes").to_string(),
                        if kind == "RTP" {
                            stat("lost").to_string()
                        } else {
                            "-".to_owned()
                        },
                        stat("errors").to_string(),
                        last,
                    ]);
                }
            }
        }
    }
    out.push_str(&t.to_string());
    if let Some(q) = quality_table(report) {
        out.push_str("\nquality per leg (what the party sends, as it arrived; FAR: the party's own RTCP report; RTT relay <-> party)\n");
        out.push_str(&q);
    }
    out
}

/// One row per leg with quality figures (`None` when no leg has any).
fn quality_table(report: &Value) -> Option<String> {
    let tags = report.get("tags").and_then(Value::as_dict)?;
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(vec![
        "LEG",
        "SIDE",
        "PATH",
        "JITTER",
        "DELAY+",
        "MAX-GAP",
        "LOSS",
        "BURSTS",
        "DUP",
        "REORD",
        "FAR-LOSS",
        "FAR-JITTER",
        "RTT",
        "MOS",
        "MOS-MIN/AVG/MAX",
        "DEGRADED",
    ]);
    let mut rows = 0;
    let ms = |us: Option<i64>| us.map_or("-".to_owned(), |v| format!("{:.1}ms", v as f64 / 1000.0));
    let permille =
        |v: Option<i64>| v.map_or("-".to_owned(), |v| format!("{:.1}%", v as f64 / 10.0));
    let mos = |v: Option<i64>| v.map_or("-".to_owned(), |v| format!("{:.1}", v as f64 / 10.0));
    for tag in tags.values() {
        let (Some(q), summary) = (tag.get("quality"), tag.get("quality summary")) else {
            continue;
        };
        let f = |d: Option<&Value>, k: &str| d.and_then(|d| d.get(k)).and_then(Value::as_int);
        // Bursts: of the leg's first RTP stream with figures.
        let stream_q = list(tag.get("medias"))
            .iter()
            .flat_map(|m| list(m.get("streams")))
            .find_map(|s| s.get("quality"));
        let bursts = match (f(stream_q, "gaps"), f(stream_q, "longest gap")) {
            (Some(n), Some(l)) => format!("{n} (max {l})"),
            _ => "-".to_owned(),
        };
        let side = tag
            .get("label")
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_owned();
        let min_avg_max = match (
            f(summary, "MOS min"),
            f(summary, "MOS avg"),
            f(summary, "MOS max"),
        ) {
            (Some(a), Some(b), Some(c)) => {
                format!("{}/{}/{}", mos(Some(a)), mos(Some(b)), mos(Some(c)))
            }
            _ => "-".to_owned(),
        };
        let degraded: Vec<&str> = summary
            .map(|s| list(s.get("degraded")))
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        t.add_row(vec![
            tag.get("tag")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            side,
            q.get("path")
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_owned(),
            ms(f(Some(q), "inbound jitter us")),
            ms(f(Some(q), "inbound delay above minimum us")),
            ms(f(stream_q, "max gap us")),
            permille(f(Some(q), "inbound loss permille")),
            bursts,
            f(stream_q, "duplicates").map_or("-".to_owned(), |v| v.to_string()),
            f(stream_q, "reordered").map_or("-".to_owned(), |v| v.to_string()),
            permille(f(Some(q), "far end loss permille")),
            ms(f(Some(q), "far end jitter us")),
            ms(f(Some(q), "round trip us")),
            mos(f(Some(q), "MOS")),
            min_avg_max,
            if degraded.is_empty() {
                "-".to_owned()
            } else {
                degraded.join(",")
            },
        ]);
        rows += 1;
    }
    (rows > 0).then(|| t.to_string())
}

mod public;

/// `stats`: the `statistics` reply.
pub fn stats(client: &mut NgClient) -> anyhow::Result<Value> {
    let reply = client.request(&Value::dict().with("command", "statistics"))?;
    reply
        .get("statistics")
        .cloned()
        .context("the reply has no `statistics`: is this media-relay (or an older rtpengine)?")
}

pub fn stats_table(s: &Value) -> String {
    let section = |k: &str| {
        s.get(k)
            .and_then(Value::as_dict)
            .cloned()
            .unwrap_or_default()
    };
    let num = |d: &std::collections::BTreeMap<Vec<u8>, Value>, k: &str| {
        d.get(k.as_bytes()).map_or_else(
            || "-".to_owned(),
            |v| match v {
                Value::Int(i) => i.to_string(),
                Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "?".to_owned(),
            },
        )
    };
    let cur = section("currentstatistics");
    let tot = section("totalstatistics");
    let ctl = section("controlstatistics");
    let ports = section("ports");
    let plane = section("media plane");
    let mut out = String::new();
    out.push_str(&format!(
        "calls      {} active; {} total, {} rejected; ended: {} deleted, {} timeout, {} silent timeout, {} offer timeout\n",
        num(&cur, "sessionsown"),
        num(&tot, "managedsessions"),
        num(&tot, "rejectedsessions"),
        num(&tot, "regularterminatedsessions"),
        num(&tot, "timeoutsessions"),
        num(&tot, "silenttimeoutsessions"),
        num(&tot, "offertimeoutsessions"),
    ));
    out.push_str(&format!(
        "media      {} packets, {} bytes, {} errors relayed; now {} pkt/s, {} B/s\n",
        num(&tot, "relayedpackets"),
        num(&tot, "relayedbytes"),
        num(&tot, "relayedpacketerrors"),
        num(&cur, "packetrate"),
        num(&cur, "byterate"),
    ));
    out.push_str(&format!(
        "ports      {} in use, {} free of {} ({} exhaustions)\n",
        num(&ports, "used"),
        num(&ports, "free"),
        num(&ports, "total"),
        num(&ports, "exhaustions"),
    ));
    if let Some(sharing) = s.get("port sharing").and_then(Value::as_dict) {
        out.push_str(&format!(
            "sharing    {} streams on {} of {} shared pairs (at most {} on one); {} packets unattributed\n",
            num(sharing, "streams"),
            num(sharing, "pairs in use"),
            num(sharing, "pairs"),
            num(sharing, "max streams on a pair"),
            num(sharing, "unattributed"),
        ));
    }
    out.push_str(&format!(
        "ng         offer {} answer {} delete {} query {} list {} ping {} statistics {}; errors {}\n",
        num(&ctl, "totaloffercount"),
        num(&ctl, "totalanswercount"),
        num(&ctl, "totaldeletecount"),
        num(&ctl, "totalquerycount"),
        num(&ctl, "totallistcount"),
        num(&ctl, "totalpingcount"),
        num(&ctl, "totalstatistics"),
        num(&ctl, "totalerrorcount"),
    ));
    out.push_str(&format!("uptime     {}s\n", num(&tot, "uptime")));
    out.push_str(&public::lines(s));
    let mut modes = Vec::new();
    let mut outcomes = Table::new();
    outcomes.load_preset(NOTHING);
    outcomes.set_header(vec!["XDP OUTCOME", "PACKETS"]);
    for (k, v) in &plane {
        let k = String::from_utf8_lossy(k);
        let v = v.as_int().unwrap_or(0);
        if let Some(rest) = k.strip_prefix("xdp ") {
            if let Some((mode, iface)) = rest.split_once(" on ") {
                modes.push(format!("{mode} on {iface}"));
            } else if rest != "flows" && rest != "flow capacity" && v > 0 {
                outcomes.add_row(vec![rest.to_owned(), v.to_string()]);
            }
        }
    }
    if modes.is_empty() {
        out.push_str("data plane XDP off: every packet takes the userspace path\n");
    } else {
        out.push_str(&format!(
            "data plane XDP {}; {} flows of {}; {} bound ports\n",
            modes.join(", "),
            num(&plane, "xdp flows"),
            num(&plane, "xdp flow capacity"),
            num(&plane, "bound ports"),
        ));
        out.push_str(&outcomes.to_string());
        out.push_str("\n(outcomes not shown: 0 packets)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(port: i64, flags: &[&str], packets: i64, kernel: i64, lost: i64) -> Value {
        Value::dict()
            .with("local port", Value::Int(port))
            .with("flags", Value::list(flags.iter().copied()))
            .with(
                "stats",
                Value::dict()
                    .with("packets", Value::Int(packets))
                    .with("bytes", Value::Int(packets * 172))
                    .with("errors", Value::Int(0))
                    .with("lost", Value::Int(lost))
                    .with("kernel packets", Value::Int(kernel)),
            )
            .with(
                "endpoint",
                Value::dict()
                    .with("family", "IPv4")
                    .with("address", "198.18.1.2")
                    .with("port", Value::Int(4000)),
            )
    }

    fn report() -> Value {
        let media = |s: Vec<Value>| {
            Value::list([Value::dict()
                .with("index", Value::Int(1))
                .with("type", "audio")
                .with("streams", Value::List(s))])
        };
        let a = Value::dict()
            .with("tag", "a")
            .with("in dialogue with", "b")
            .with(
                "medias",
                media(vec![
                    stream(30000, &["RTP", "confirmed", "kernelized"], 100, 98, 3),
                    stream(30001, &["RTCP"], 2, 0, 0),
                ]),
            );
        let a = a
            .with(
                "quality",
                Value::dict()
                    .with("path", "xdp")
                    .with("inbound jitter us", Value::Int(31_500))
                    .with("inbound loss permille", Value::Int(25))
                    .with("MOS", Value::Int(39)),
            )
            .with("label", "trunk")
            .with(
                "quality summary",
                Value::dict()
                    .with("MOS min", Value::Int(35))
                    .with("MOS avg", Value::Int(40))
                    .with("MOS max", Value::Int(44))
                    .with("degraded", Value::list(["jitter"])),
            );
        let b = Value::dict().with("tag", "b").with(
            "medias",
            media(vec![
                stream(30002, &["RTP"], 10, 0, 0),
                stream(30003, &["RTCP"], 0, 0, 0),
            ]),
        );
        Value::dict()
            .with("created", Value::Int(now_unix() - 65))
            .with("tags", Value::dict().with("a", a).with("b", b))
    }

    #[test]
    fn summary_per_leg() {
        let s = summarise("c1", &report());
        assert_eq!(s.legs.len(), 2);
        assert_eq!(s.legs[0].tag, "a");
        assert_eq!(s.legs[0].packets, 102);
        assert_eq!(s.legs[0].lost, 3);
        assert_eq!(s.legs[0].path, "xdp");
        assert_eq!(s.legs[0].endpoint, "198.18.1.2:4000");
        assert_eq!(s.legs[1].path, "userspace");
        assert!((64..=66).contains(&s.age_s));
        let table = calls_table(&[s]);
        assert!(table.contains("102/10"), "{table}");
        assert!(table.contains("3/0"), "{table}");
        assert!(table.contains("xdp/userspace"), "{table}");
        assert!(table.contains("1m0"), "{table}");
    }

    #[test]
    fn call_table_rows() {
        let t = call_table("c1", &report());
        let streams = t.split("\nquality per leg").next().unwrap_or_default();
        assert_eq!(streams.lines().count(), 2 + 1 + 4, "{t}");
        assert!(t.contains("confirmed"), "{t}");
        assert!(t.contains("learning"), "{t}");
        // A's leg has quality figures, B's none.
        let q = t.split("quality per leg").nth(1).expect("a quality table");
        assert_eq!(q.lines().count(), 1 + 1 + 1, "{t}");
        for want in ["trunk", "31.5ms", "2.5%", "3.9", "3.5/4.0/4.4", "jitter"] {
            assert!(q.contains(want), "{want} in {q}");
        }
    }

    #[test]
    fn json_of_ng_values() {
        let v = Value::dict()
            .with("a", Value::Int(1))
            .with("b", Value::list(["x"]));
        assert_eq!(to_json(&v), json!({"a": 1, "b": ["x"]}));
    }

    #[test]
    fn ages() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(65), "1m05s");
        assert_eq!(age(7300), "2h01m");
    }

    #[test]
    fn stats_show_port_sharing_when_on() {
        let off = Value::dict().with("ports", Value::dict().with("total", Value::Int(150)));
        assert!(!stats_table(&off).contains("sharing"));
        let on = Value::dict().with(
            "port sharing",
            Value::dict()
                .with("pairs", Value::Int(75))
                .with("pairs in use", Value::Int(75))
                .with("streams", Value::Int(2000))
                .with("max streams on a pair", Value::Int(27))
                .with("unattributed", Value::Int(75)),
        );
        assert!(stats_table(&on).contains(
            "sharing    2000 streams on 75 of 75 shared pairs (at most 27 on one); 75 packets unattributed"
        ));
    }
}
