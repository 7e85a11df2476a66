//! The reports: `query` (a call's legs, streams and counters; also the
//! reply to `delete`), `list` and `statistics`, and the helpers that build
//! ng reply dictionaries.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Instant, SystemTime},
};

use super::{
    backend::{Backend, Counters, RtcpReports},
    engine::{ENDED_LISTED, Engine},
    error::CommandError,
    latch::Latch,
    quality::Leg,
    watch::LegWatch,
};
use crate::ng::{List, Query, Reply, Value};

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn dict(pairs: Vec<(&str, Value)>) -> Value {
    Value::Dict(
        pairs
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

pub(super) fn text(s: impl AsRef<str>) -> Value {
    Value::Bytes(s.as_ref().as_bytes().to_vec())
}

fn int(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

fn endpoint(a: SocketAddr) -> Value {
    dict(vec![
        ("family", text(if a.is_ipv4() { "IPv4" } else { "IPv6" })),
        ("address", text(a.ip().to_string())),
        ("port", int(u64::from(a.port()))),
    ])
}

pub(super) fn ok(pairs: Vec<(&str, Value)>) -> Reply {
    Reply::Ok(
        pairs
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

impl<B: Backend> Engine<B> {
    fn stream_report(
        &self,
        (local, slot): (SocketAddr, Option<SocketAddr>),
        latch: &Latch,
        component: u8,
        totals: &mut [Counters; 2],
    ) -> Value {
        let c = self.counters_of(local, slot);
        let t = &mut totals[usize::from(component)];
        t.packets += c.packets;
        t.bytes += c.bytes;
        t.errors += c.errors;
        t.stale += c.stale;
        t.kernel_packets += c.kernel_packets;
        t.kernel_bytes += c.kernel_bytes;
        // Clamped per stream, so that one stream's duplicates do not hide
        // another's loss in the totals.
        t.rtp_expected += c.rtp_expected;
        t.rtp_received += c.rtp_received.min(c.rtp_expected);
        let mut flags = vec![text(if component == 0 { "RTP" } else { "RTCP" })];
        if latch.is_confirmed() {
            flags.push(text("confirmed"));
        }
        if c.kernel_packets > 0 {
            flags.push(text("kernelized"));
        }
        let mut stats = vec![
            ("packets", int(c.packets)),
            ("bytes", int(c.bytes)),
            ("errors", int(c.errors)),
            // Dropped by the userspace path for waiting longer than its
            // bound (never sent late).
            ("stale dropped", int(c.stale)),
            ("kernel packets", int(c.kernel_packets)),
            ("kernel bytes", int(c.kernel_bytes)),
        ];
        // RTP: packets lost on their way to the relay (RFC 3550 §A.3).
        if component == 0 {
            stats.push(("lost", int(c.lost())));
            stats.push(("expected", int(c.rtp_expected)));
        }
        let mut d = vec![
            ("local port", int(u64::from(local.port()))),
            ("flags", Value::List(flags)),
            ("stats", dict(stats)),
        ];
        if let Some(e) = latch.endpoint() {
            d.push(("endpoint", endpoint(e)));
        }
        if let Some(a) = latch.advertised() {
            d.push(("advertised endpoint", endpoint(a)));
        }
        if let Some(t) = c.last_packet {
            d.push(("last packet", Value::Int(unix(t))));
        }
        if let Some(q) = c.quality.filter(|_| component == 0) {
            d.push(("quality", quality(&q)));
        }
        if let Some(r) = &c.rtcp {
            d.push(("rtcp", rtcp(r)));
        }
        dict(d)
    }

    /// The `query` dictionary of a call (also returned by `delete`).
    pub(super) fn report(
        &self,
        call_id: &str,
        only_tag: Option<&str>,
    ) -> Option<BTreeMap<Vec<u8>, Value>> {
        let call = self.calls.get(call_id)?;
        let mut totals = [Counters::default(); 2];
        let mut tags = BTreeMap::new();
        // Dictionaries lose the order the parties joined in (the caller
        // first); operators' tools show legs in it.
        let mut order = Vec::new();
        let mut worst: Option<f64> = None;
        for (mi, mono) in call.monos.iter().enumerate() {
            if only_tag.is_some_and(|t| t != mono.tag) {
                continue;
            }
            order.push(text(&mono.tag));
            let mut medias = Vec::new();
            for (i, m) in mono.media.iter().enumerate() {
                let mut streams = Vec::new();
                if let Some((rtp, rtcp)) = m.locals(mono.local) {
                    streams.push(self.stream_report((rtp, m.slot), &m.rtp, 0, &mut totals));
                    streams.push(self.stream_report((rtcp, m.slot), &m.rtcp, 1, &mut totals));
                }
                let mut flags = vec![text("initialized")];
                if m.mux {
                    flags.push(text("rtcp-mux"));
                }
                medias.push(dict(vec![
                    ("index", int(i as u64 + 1)),
                    ("type", text(&m.kind)),
                    ("protocol", text(&m.protocol)),
                    ("flags", Value::List(flags)),
                    ("streams", Value::List(streams)),
                ]));
            }
            let mut d = vec![
                ("tag", text(&mono.tag)),
                ("created", Value::Int(unix(mono.created))),
                ("medias", Value::List(medias)),
            ];
            // The leg's quality: of its first RTP media carrying packets.
            if let Some(leg) = self.leg(call, mi) {
                if let Some(m) = leg.mos() {
                    worst = Some(worst.map_or(m, |w: f64| w.min(m)));
                }
                d.push(("quality", leg_quality(&leg)));
            }
            if let Some(w) = call.watch.get(mi) {
                d.push(("quality summary", summary(w)));
            }
            if let Some(l) = &mono.label {
                d.push(("label", text(l)));
            }
            if let Some(peer) = mono.peer.and_then(|p| call.monos.get(p)) {
                d.push(("in dialogue with", text(&peer.tag)));
            }
            tags.insert(mono.tag.as_bytes().to_vec(), dict(d));
        }
        let stats = |c: &Counters, rtp: bool| {
            let mut d = vec![
                ("packets", int(c.packets)),
                ("bytes", int(c.bytes)),
                ("errors", int(c.errors)),
                ("stale dropped", int(c.stale)),
                ("kernel packets", int(c.kernel_packets)),
                ("kernel bytes", int(c.kernel_bytes)),
            ];
            if rtp {
                d.push(("lost", int(c.lost())));
                d.push(("expected", int(c.rtp_expected)));
            }
            dict(d)
        };
        let mut out = BTreeMap::new();
        out.insert(b"created".to_vec(), Value::Int(unix(call.created)));
        out.insert(b"last signal".to_vec(), Value::Int(unix(call.last_signal)));
        out.insert(b"tags".to_vec(), Value::Dict(tags));
        out.insert(b"tag order".to_vec(), Value::List(order));
        if let Some(w) = worst {
            // ×10, as rtpengine reports MOS (43 = 4.3).
            out.insert(b"worst MOS".to_vec(), int((w * 10.0).round() as u64));
        }
        out.insert(
            b"totals".to_vec(),
            dict(vec![
                ("RTP", stats(&totals[0], true)),
                ("RTCP", stats(&totals[1], false)),
            ]),
        );
        Some(out)
    }

    pub(super) fn query(&self, cmd: &Query) -> Result<Reply, CommandError> {
        let tag = cmd.from_tag.as_deref();
        if let Some(r) = self.report(&cmd.call_id, tag) {
            return Ok(Reply::Ok(r));
        }
        // A call that is over: its final report, and how it ended.
        let f = self
            .finished
            .iter()
            .rev()
            .find(|f| f.call_id == cmd.call_id)
            .ok_or(CommandError::UnknownCallId)?;
        let Ok(Value::Dict(mut r)) = Value::decode(&f.report) else {
            return Err(CommandError::ReportUnreadable);
        };
        r.insert(
            b"ended".to_vec(),
            dict(vec![
                ("reason", text(f.reason)),
                ("at", Value::Int(unix(f.at))),
                (
                    "duration ms",
                    int(u64::try_from(f.duration.as_millis()).unwrap_or(u64::MAX)),
                ),
            ]),
        );
        Ok(Reply::Ok(r))
    }

    pub(super) fn list(&self, cmd: &List) -> Reply {
        let limit = cmd.limit.map_or(32, |l| l.max(1)) as usize;
        let calls = self.calls.keys().take(limit).map(text).collect();
        // Ended calls are context, not the answer: a bounded few, so the
        // reply always fits one datagram.
        let ended = self
            .ended
            .iter()
            .rev()
            .take(limit.min(ENDED_LISTED))
            .map(|e| {
                dict(vec![
                    ("call-id", text(&e.call_id)),
                    ("reason", text(e.reason.name())),
                    ("at", Value::Int(unix(e.at))),
                ])
            })
            .collect();
        let finished = self
            .finished
            .iter()
            .rev()
            .take(limit.min(ENDED_LISTED))
            .map(|f| text(&f.call_id))
            .collect();
        ok(vec![
            ("calls", Value::List(calls)),
            ("timed out", Value::List(ended)),
            ("ended", Value::List(finished)),
        ])
    }

    pub(super) fn statistics(&self, now: Instant) -> Reply {
        let t = &self.totals;
        let (lp, lb, le) = self.live_totals();
        let (p, b, e) = (
            t.ended_packets + lp,
            t.ended_bytes + lb,
            t.ended_errors + le,
        );
        let current = dict(vec![
            ("sessionsown", int(self.calls.len() as u64)),
            ("sessionsforeign", int(0)),
            ("sessionstotal", int(self.calls.len() as u64)),
            ("transcodedmedia", int(0)),
            ("packetrate", int(self.rates.0 as u64)),
            ("byterate", int(self.rates.1 as u64)),
            ("errorrate", int(self.rates.2 as u64)),
        ]);
        let total = dict(vec![
            (
                "uptime",
                text(
                    now.saturating_duration_since(self.started)
                        .as_secs()
                        .to_string(),
                ),
            ),
            ("managedsessions", int(t.managed_sessions)),
            ("rejectedsessions", int(t.rejected_sessions)),
            ("timeoutsessions", int(t.timeouts)),
            ("silenttimeoutsessions", int(t.silent_timeouts)),
            ("offertimeoutsessions", int(t.offer_timeouts)),
            ("regularterminatedsessions", int(t.regular_terminated)),
            ("relayedpackets", int(p)),
            ("relayedbytes", int(b)),
            ("relayedpacketerrors", int(e)),
        ]);
        let count = |k: &str| int(t.commands.get(k).copied().unwrap_or(0));
        let control = dict(vec![
            ("totalpingcount", count("ping")),
            ("totaloffercount", count("offer")),
            ("totalanswercount", count("answer")),
            ("totaldeletecount", count("delete")),
            ("totalquerycount", count("query")),
            ("totallistcount", count("list")),
            ("totalstatistics", count("statistics")),
            ("totalerrorcount", int(t.errors)),
        ]);
        // With port sharing: the shared pairs (carrying a stream or not).
        let (pairs, pairs_used) = self.shared_figures().map_or_else(
            || (self.ports.capacity(), self.ports.in_use()),
            |f| (f.pairs, f.pairs_in_use),
        );
        let ports = dict(vec![
            ("total", int(pairs as u64 * 2)),
            ("used", int(pairs_used as u64 * 2)),
            ("free", int(pairs.saturating_sub(pairs_used) as u64 * 2)),
            ("exhaustions", int(t.port_exhaustions)),
        ]);
        let plane = Value::Dict(
            self.backend
                .describe()
                .into_iter()
                .map(|(k, v)| (k.into_bytes(), int(v)))
                .collect(),
        );
        let mut sections = vec![
            ("currentstatistics", current),
            ("totalstatistics", total),
            ("controlstatistics", control),
            ("ports", ports),
            ("media plane", plane),
        ];
        if let Some(f) = self.shared_figures() {
            sections.push((
                "port sharing",
                dict(vec![
                    ("pairs", int(f.pairs as u64)),
                    ("pairs in use", int(f.pairs_in_use as u64)),
                    ("streams", int(f.streams as u64)),
                    ("max streams on a pair", int(f.max_streams_on_a_pair as u64)),
                    ("unattributed", int(f.unattributed)),
                ]),
            ));
        }
        let publics = self.interfaces.publics();
        if !publics.is_empty() {
            sections.push((
                "public addresses",
                Value::List(publics.iter().map(|p| public_address(p)).collect()),
            ));
        }
        ok(vec![("statistics", dict(sections))])
    }
}

/// One public address discovery (`advertise = "stun"`) for `statistics`:
/// the address in effect, when a server last confirmed it (Unix seconds),
/// `ok`/`degraded`/`unknown`, and what went wrong if anything.
fn public_address(p: &crate::stun::PublicAddress) -> Value {
    let s = p.state();
    let mut pairs = vec![
        ("interface", text(&p.interface)),
        ("family", text(p.family())),
        ("local", text(p.local.to_string())),
        ("status", text(s.status())),
        ("changes", int(s.changes)),
    ];
    if let Some(a) = s.address {
        pairs.push(("address", text(a.to_string())));
    }
    if let Some(m) = s.mapped {
        pairs.push(("mapped", text(m.to_string())));
    }
    if let Some(t) = s.confirmed {
        pairs.push(("last confirmed", Value::Int(unix(t))));
    }
    if let Some(d) = &s.degraded {
        pairs.push(("degraded", text(d)));
    }
    if let Some(d) = &s.disagreement {
        pairs.push(("disagreement", text(d)));
    }
    dict(pairs)
}

/// A stream's quality figures at arrival (`Counters::quality`) as the
/// `quality` dictionary of its `query` entry. Timing figures are absent
/// when the payload's clock rate is unknown (`clock rate` 0).
fn quality(q: &super::backend::Quality) -> Value {
    let mut d = vec![
        ("path", text(q.path.name())),
        ("clock rate", int(u64::from(q.clock_rate))),
        ("max gap us", int(u64::from(q.max_gap_us))),
        ("gaps", int(u64::from(q.gaps))),
        ("longest gap", int(u64::from(q.longest_gap))),
        ("duplicates", int(u64::from(q.duplicates))),
        ("reordered", int(u64::from(q.reordered))),
    ];
    if let Some(j) = q.jitter_us {
        // rtpengine reports jitter in milliseconds.
        d.push(("jitter", int(u64::from(j / 1000))));
        d.push(("jitter us", int(u64::from(j))));
    }
    if let Some(x) = q.delay_above_min_us {
        d.push(("delay above minimum us", int(u64::from(x))));
    }
    dict(d)
}

/// The RTCP a party sent through this port, as `rtcp` in its `query`
/// entry: how many SRs and report blocks passed, and the last block's
/// figures (the party's view of what it receives).
fn rtcp(r: &RtcpReports) -> Value {
    let mut d = vec![
        ("sender reports", int(u64::from(r.sender_reports))),
        ("report blocks", int(u64::from(r.blocks))),
    ];
    if let Some(b) = &r.last_block {
        d.push(("fraction lost", int(u64::from(b.fraction_lost))));
        d.push(("cumulative lost", Value::Int(i64::from(b.cumulative_lost))));
        d.push(("jitter", int(u64::from(b.jitter))));
        d.push(("highest seq", int(u64::from(b.highest))));
        d.push(("last report", Value::Int(unix(b.at))));
    }
    dict(d)
}

/// What the quality watch saw of a leg over the call (`watch.rs`), as
/// `quality summary` in its tag's `query` entry (and in the report an
/// ended call leaves): MOS ×10 lowest, mean and highest over the checks,
/// the worst figures, and which figures are degraded now.
fn summary(w: &LegWatch) -> Value {
    let s = &w.summary;
    let mut d = vec![
        ("checks", int(u64::from(s.checks))),
        ("max jitter us", int(s.max_jitter_us)),
        (
            "max loss permille",
            int((s.max_loss_percent * 10.0).round() as u64),
        ),
        ("max delay rise us", int(s.max_delay_rise_us)),
        ("bursts", int(s.bursts)),
        ("longest burst", int(s.longest_burst)),
        ("degraded checks", int(u64::from(s.degraded_checks))),
        (
            "degraded",
            Value::List(w.degraded().map(|f| text(f.name())).collect()),
        ),
    ];
    if let Some(avg) = s.mos_avg() {
        d.push(("MOS min", int((s.mos_min * 10.0).round() as u64)));
        d.push(("MOS avg", int((avg * 10.0).round() as u64)));
        d.push(("MOS max", int((s.mos_max * 10.0).round() as u64)));
    }
    dict(d)
}

/// A leg's figures (`session::quality`) as `quality` in its tag's `query`
/// entry. MOS ×10 as rtpengine reports it.
fn leg_quality(leg: &Leg) -> Value {
    let mut d = vec![(
        "inbound loss permille",
        int((leg.inbound_loss() * 10.0).round() as u64),
    )];
    if let Some(q) = &leg.inbound {
        d.push(("path", text(q.path.name())));
        if let Some(j) = q.jitter_us {
            d.push(("inbound jitter us", int(u64::from(j))));
        }
        if let Some(x) = q.delay_above_min_us {
            d.push(("inbound delay above minimum us", int(u64::from(x))));
        }
    }
    if let Some(l) = leg.far_loss() {
        d.push(("far end loss permille", int((l * 10.0).round() as u64)));
    }
    if let Some(j) = leg.far_jitter_us() {
        d.push(("far end jitter us", int(j)));
    }
    if let Some(rtt) = leg.rtt_us {
        d.push(("round trip us", int(rtt)));
    }
    if let Some(m) = leg.mos() {
        d.push(("MOS", int((m * 10.0).round() as u64)));
    }
    dict(d)
}
