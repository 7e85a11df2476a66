//! `media-relay run`: the media daemon's event loop.
//!
//! One task owns the session engine (and through it the media plane and
//! the XDP maps): ng requests, packets handed over for latching decisions
//! and the periodic tick reach it one at a time, which is what makes it the
//! single writer of the data plane.
//!
//! It is also where the clocks are read ([`Now::read`], once per event):
//! the engine itself reads none.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use serde::Deserialize;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{debug, info, warn};

use crate::{
    config::RunConfig,
    dataplane::{self, DataPlane, XdpMode},
    interfaces::Interfaces,
    media::MediaPlane,
    metrics::{self, Health, Snapshot},
    ng_server::{self, ControlStats, Request},
    session::{Engine, Now, PortAllocator},
};

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpModeArg {
    /// Native where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native (driver) mode; fail on interfaces that cannot.
    Native,
    /// Generic (skb) mode.
    Generic,
    /// No XDP: every packet takes the userspace path.
    Off,
}

/// Packets handed to the engine for latching decisions that may queue.
const EVENT_QUEUE: usize = 4096;

fn load_dataplane(cfg: &RunConfig, interfaces: &Interfaces) -> anyhow::Result<Option<DataPlane>> {
    let mode = match cfg.xdp_mode {
        XdpModeArg::Auto => XdpMode::Auto,
        XdpModeArg::Native => XdpMode::Native,
        XdpModeArg::Generic => XdpMode::Generic,
        XdpModeArg::Off => {
            info!("XDP off: every packet takes the userspace path");
            println!("media-relay: XDP off (userspace forwarding)");
            return Ok(None);
        }
    };
    let mut dp = DataPlane::load(&dataplane::Options {
        pin_root: cfg.pin_root.clone(),
        max_flows: cfg.max_flows,
    })?;
    // Sessions do not survive a restart yet: flows left by a previous run
    // belong to nobody, and their ports may be leased again.
    let stale: Vec<_> = dp.flows().keys().copied().collect();
    if !stale.is_empty() {
        for k in &stale {
            dp.flows_mut().remove(k)?;
        }
        warn!(flows = stale.len(), "removed flows left by a previous run");
    }
    let mut netdevs: Vec<&str> = interfaces.0.iter().map(|i| i.netdev.as_str()).collect();
    netdevs.dedup();
    for netdev in netdevs {
        let a = dp.attach(netdev, mode)?;
        println!(
            "media-relay: XDP {} on {}{}",
            a.mode,
            a.interface,
            if a.fell_back {
                " (native unavailable, fell back)"
            } else {
                ""
            }
        );
    }
    Ok(Some(dp))
}

pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    if cfg.interfaces.is_empty() {
        anyhow::bail!(
            "no media interface: give --interface <netdev> (or [[interface]] in the config file)"
        );
    }
    let interfaces = Interfaces::discover(&cfg.interfaces)?;
    for i in &interfaces.0 {
        info!(
            name = %i.name,
            netdev = %i.netdev,
            v4 = ?i.v4,
            v6 = ?i.v6,
            advertise_v4 = ?i.advertise_v4,
            advertise_v6 = ?i.advertise_v6,
            "media interface"
        );
    }
    let dataplane = load_dataplane(&cfg, &interfaces)?;
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let media = MediaPlane::new(dataplane, events_tx);
    let ports = PortAllocator::new(cfg.port_min, cfg.port_max, cfg.port_quarantine)
        .map_err(|e| anyhow::anyhow!("port range: {e}"))?;
    let mut engine = Engine::new(cfg.session.clone(), media, interfaces, ports, Now::read());

    let socket = ng_server::bind(cfg.listen_ng).await?;
    let (req_tx, mut requests) = mpsc::channel::<Request>(1024);
    let stats = Arc::new(ControlStats::default());
    let server = tokio::spawn(ng_server::serve(
        socket,
        req_tx,
        stats.clone(),
        ng_server::CacheLimits {
            ttl: cfg.ng_cache_ttl,
            bytes: cfg.ng_cache_bytes,
        },
    ));
    info!(listen_ng = %cfg.listen_ng, ports = %format!("{}-{}", cfg.port_min, cfg.port_max), "media-relay running; stop with Ctrl-C or SIGTERM");
    if !cfg.listen_ng.ip().is_loopback() {
        warn!(listen_ng = %cfg.listen_ng, "the ng protocol has no authentication: keep this address off untrusted networks");
    }

    let health = Health::new();
    let metrics_server = match cfg.metrics_listen {
        Some(listen) => Some(metrics::serve(listen, health.clone()).await?),
        None => None,
    };
    let mut metrics_tick = tokio::time::interval(Duration::from_secs(1));
    metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    // The SIP agent drives this daemon over ng like any controller would.
    let sip = match cfg.sip.clone() {
        Some(sip) => Some(signaling::runtime::start(sip).await?),
        None => None,
    };

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut summary = tokio::time::interval(Duration::from_secs(cfg.stats_interval.max(1)));
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            Some(req) = requests.recv() => {
                let reply = engine.handle(req.command, Now::read());
                let _ = req.reply.send(reply);
            }
            Some(ev) = events.recv() => engine.on_packet(ev, Now::read()),
            _ = tick.tick() => engine.tick(Now::read()),
            _ = metrics_tick.tick() => {
                let snapshot = snapshot(&engine, &stats);
                health.beat(describe_dataplane(&snapshot));
                if metrics_server.is_some() {
                    snapshot.publish();
                    metrics::upkeep();
                }
            }
            _ = summary.tick() => {
                let outcomes = engine.backend().dataplane().and_then(|dp| dp.outcomes().ok());
                debug!(
                    calls = engine.call_count(),
                    ports_in_use = engine.ports().in_use() * 2,
                    ng_requests = stats.requests.load(std::sync::atomic::Ordering::Relaxed),
                    outcomes = ?outcomes,
                    "status"
                );
            }
        }
    }
    info!(calls = engine.call_count(), "shutting down");
    if let Some(sip) = sip {
        sip.stop().await;
    }
    server.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    let mut media = engine;
    if let Some(dp) = media.backend_mut().dataplane_mut() {
        dp.detach_all()?;
        if let Ok(o) = dp.outcomes() {
            info!(outcomes = ?o, "data plane totals");
        }
    }
    Ok(())
}

/// The engine's, the ng server's and the data plane's figures for
/// `/metrics` (cheap: no walk over the calls).
fn snapshot(engine: &Engine<MediaPlane>, control: &ControlStats) -> Snapshot {
    use std::sync::atomic::Ordering::Relaxed;
    let t = engine.totals();
    let ports = engine.ports();
    let mut s = Snapshot {
        calls_active: engine.call_count() as u64,
        calls_total: t.managed_sessions,
        ended: vec![
            ("delete", t.regular_terminated),
            ("timeout", t.timeouts),
            ("silent_timeout", t.silent_timeouts),
            ("offer_timeout", t.offer_timeouts),
        ],
        failed: vec![
            ("offer_rejected", t.rejected_sessions),
            ("ports_exhausted", t.port_exhaustions),
        ],
        ports_in_use: ports.in_use() as u64 * 2,
        ports_free: ports.free() as u64 * 2,
        ports_total: ports.capacity() as u64 * 2,
        commands: t.commands.iter().map(|(k, v)| (*k, *v)).collect(),
        command_errors: t.command_errors.iter().map(|(k, v)| (*k, *v)).collect(),
        ng_undecodable: control.undecodable.load(Relaxed),
        ng_retransmissions: control.retransmissions.load(Relaxed),
        ng_cookie_reused: control.cookie_reused.load(Relaxed),
        ng_cookie_too_long: control.cookie_too_long.load(Relaxed),
        ng_cache_evictions: control.cache_evictions.load(Relaxed),
        ng_cache_bytes: control.cache_bytes.load(Relaxed),
        refused_sources_userspace: t.refused_sources,
        userspace_forwarded: engine.backend().userspace_totals(),
        ..Snapshot::default()
    };
    if let Some(dp) = engine.backend().dataplane() {
        if let Ok(o) = dp.outcomes() {
            s.xdp_outcomes = o.into_iter().collect();
        }
        s.xdp_attached = dp
            .attachments()
            .iter()
            .map(|a| (a.interface.clone(), a.mode.to_string()))
            .collect();
        s.xdp_flows = Some((dp.flows().len() as u64, u64::from(dp.flows().capacity())));
    }
    s
}

fn describe_dataplane(s: &Snapshot) -> String {
    if s.xdp_attached.is_empty() {
        return "XDP off (userspace forwarding)".to_owned();
    }
    s.xdp_attached
        .iter()
        .map(|(i, m)| format!("XDP {m} on {i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
