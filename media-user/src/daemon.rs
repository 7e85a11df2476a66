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
    dataplane::{
        self, DataPlane, XdpMode,
        lock::{PinLock, PinLockError},
    },
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
/// How long one heartbeat tells the XDP program that a daemon runs
/// (written every 250 ms tick): a crashed daemon is noticed within this.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Remove XDP links an earlier run pinned, without loading anything: for
/// `--xdp-mode off` (the program must not keep forwarding beside the
/// userspace path) and for `media-relay teardown`.
fn unpin_links(pin_root: &std::path::Path) -> Vec<String> {
    let dir = pin_root.join(media_ebpf::maps::LINKS_DIR);
    let mut gone = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if std::fs::remove_file(e.path()).is_ok() {
                gone.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    gone
}

fn load_dataplane(cfg: &RunConfig, interfaces: &Interfaces) -> anyhow::Result<Option<DataPlane>> {
    let mode = match cfg.xdp_mode {
        XdpModeArg::Auto => XdpMode::Auto,
        XdpModeArg::Native => XdpMode::Native,
        XdpModeArg::Generic => XdpMode::Generic,
        XdpModeArg::Off => {
            for link in unpin_links(&cfg.pin_root) {
                warn!(
                    link,
                    "XDP off: detached the XDP program an earlier run left attached"
                );
            }
            info!("XDP off: every packet takes the userspace path");
            println!("media-relay: XDP off (userspace forwarding)");
            return Ok(None);
        }
    };
    let mut dp = DataPlane::load(&dataplane::Options {
        pin_root: cfg.pin_root.clone(),
        max_flows: cfg.max_flows,
    })?;
    dp.set_quality_telemetry(cfg.quality_telemetry);
    if !cfg.quality_telemetry {
        info!("quality telemetry off: XDP keeps the flows' counters only");
    }
    let mut netdevs: Vec<&str> = interfaces.0.iter().map(|i| i.netdev.as_str()).collect();
    netdevs.dedup();
    for netdev in &netdevs {
        let a = dp.attach(netdev, mode)?;
        println!(
            "media-relay: XDP {} on {}{}",
            a.mode,
            a.interface,
            if a.adopted {
                " (adopted from the previous run: program replaced in place)"
            } else if a.fell_back {
                " (native unavailable, fell back)"
            } else {
                ""
            }
        );
    }
    for other in dp.pinned_interfaces() {
        if !netdevs.contains(&other.as_str()) {
            dp.release_interface(&other)?;
            warn!(interface = %other, "XDP detached from an interface no longer configured");
        }
    }
    dp.forget_other_egress();
    Ok(Some(dp))
}

/// The stores beside the flows, if bpffs is there to hold them: the call
/// records (the pinned `SESSIONS` map) and the counters of what this
/// daemon forwarded itself (`PORT_COUNTERS`).
fn open_stores(
    cfg: &RunConfig,
) -> Option<(
    dataplane::sessions::SessionStore,
    dataplane::port_counters::PortCounterStore,
)> {
    let dir = cfg.pin_root.join(media_ebpf::maps::LAYOUT_VERSION);
    let opened = crate::host::ensure_bpffs(&dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            std::fs::create_dir_all(&dir)?;
            let sessions =
                dataplane::sessions::SessionStore::open(&dir, cfg.max_flows.saturating_mul(2))?;
            let counters = dataplane::port_counters::PortCounterStore::open(&dir, cfg.max_flows)?;
            Ok((sessions, counters))
        });
    match opened {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "call records cannot be kept: calls will not survive a restart");
            None
        }
    }
}

/// One daemon per pin root ([`PinLock`]). Another daemon or a teardown
/// holding it is an error; a pin root that cannot be made (no bpffs: the
/// data plane says so in its own words when it loads) is not.
fn lock_pins(pin_root: &std::path::Path) -> anyhow::Result<Option<PinLock>> {
    let made = crate::host::ensure_bpffs(pin_root)
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(std::fs::create_dir_all(pin_root)?));
    if let Err(e) = made {
        debug!(error = %e, pin_root = %pin_root.display(), "pin root not lockable");
        return Ok(None);
    }
    match PinLock::acquire(pin_root) {
        Ok(lock) => Ok(Some(lock)),
        Err(e @ PinLockError::Held { .. }) => Err(e.into()),
        Err(e) => {
            warn!(error = %e, "running without the pin root's lock");
            Ok(None)
        }
    }
}

/// `media-relay teardown`: detach the XDP program from every interface an
/// earlier run attached it to, remove every pinned map (the flows, the
/// call records), and give the media ports back to the kernel's ephemeral
/// range. Ends every call a stopped or crashed daemon left forwarding.
/// Refuses while a daemon runs on these pins (stop it first).
pub fn teardown(pin_root: &std::path::Path, ports: (u16, u16)) -> anyhow::Result<()> {
    // Held while tearing down, so no daemon starts on half-removed pins.
    let _lock = if pin_root.exists() {
        Some(PinLock::acquire(pin_root)?)
    } else {
        None
    };
    let links = unpin_links(pin_root);
    dataplane::remove_pins(pin_root)?;
    crate::host::release_ports(ports.0, ports.1);
    println!(
        "media-relay: torn down: {} (detached from {}), media ports {}-{} released",
        pin_root.display(),
        if links.is_empty() {
            "nothing".to_owned()
        } else {
            links.join(", ")
        },
        ports.0,
        ports.1
    );
    Ok(())
}

/// Adopted ports being bound in the background.
struct Binding {
    ports: usize,
    started: std::time::Instant,
    /// Ports another program took meanwhile (their calls ended).
    lost: usize,
    rx: mpsc::UnboundedReceiver<Vec<(std::net::SocketAddr, std::io::Result<std::net::UdpSocket>)>>,
}

/// The next chunk of bound sockets (`None`: all are); never resolves
/// when nothing is being bound.
async fn next_bound(
    binding: &mut Option<Binding>,
) -> Option<Vec<(std::net::SocketAddr, std::io::Result<std::net::UdpSocket>)>> {
    match binding {
        Some(b) => b.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The `cpu-wake-latency` request; a host that refuses it costs latency,
/// not media, so the daemon runs on and says why.
fn hold_wake_latency(us: u32) -> Option<crate::host::CpuWakeLatency> {
    match crate::host::hold_cpu_wake_latency(us) {
        Ok(held) => {
            // Lower when another process asks for less.
            let in_force = crate::host::cpu_wake_latency_now()
                .map_or_else(|e| format!("unknown ({e})"), |v| format!("{v} µs"));
            info!(
                requested_us = us,
                %in_force,
                "CPU wake-up latency request held: idle CPUs stay within it of running"
            );
            Some(held)
        }
        Err(e) => {
            warn!(
                requested_us = us,
                error = %e,
                path = crate::host::CPU_DMA_LATENCY,
                "CPU wake-up latency request refused: the host's idle settings stay (run as root, or give the daemon write access to the path)"
            );
            None
        }
    }
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
    // Before anything touches the pins; held until this function returns
    // (declared first, dropped last).
    let _pin_lock = lock_pins(&cfg.pin_root)?;
    // `cpu-wake-latency`: in force until this function returns.
    let _wake_latency = cfg.cpu_wake_latency.and_then(hold_wake_latency);
    for i in &interfaces.0 {
        info!(
            name = %i.name,
            netdev = %i.netdev,
            v4 = ?i.v4,
            v6 = ?i.v6,
            advertise_v4 = ?i.advertise_v4,
            advertise_v6 = ?i.advertise_v6,
            stun_v4 = i.public_v4.is_some(),
            stun_v6 = i.public_v6.is_some(),
            "media interface"
        );
    }
    // `advertise = "stun"`: discovery starts before anything is served;
    // offers are refused until it has an answer.
    let publics = interfaces.publics();
    // What the SIP agent advertises with `trunk-advertise = "media"`.
    let sip_feeds = match &cfg.sip {
        Some(sip) => {
            crate::interfaces::sip_public_feeds(&interfaces, sip).map_err(|e| anyhow::anyhow!(e))?
        }
        None => signaling::runtime::PublicFeeds::default(),
    };
    let dataplane = load_dataplane(&cfg, &interfaces)?;
    crate::host::reserve_ports(cfg.port_min, cfg.port_max);
    crate::host::raise_nofile(u64::from(cfg.port_max - cfg.port_min) + 1);
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let mut media = MediaPlane::new(dataplane, &events_tx, cfg.io)
        .context("starting the userspace path's threads")?;
    info!(
        threads = cfg.io.threads,
        max_delay_ms = cfg.io.max_delay.as_millis() as u64,
        nice = cfg.io.nice,
        "userspace path"
    );
    if let Some((sessions, counters)) = open_stores(&cfg) {
        media = media.with_sessions(sessions).with_port_counters(counters);
    }
    let ports = PortAllocator::new(cfg.port_min, cfg.port_max, cfg.port_quarantine)
        .map_err(|e| anyhow::anyhow!("port range: {e}"))?;
    let mut engine = Engine::new(cfg.session.clone(), media, interfaces, ports, Now::read());
    if let Some(max_per_port) = cfg.port_sharing {
        let shared = crate::session::sharing::SharedPorts::new(
            cfg.port_min,
            cfg.port_max,
            max_per_port,
            cfg.port_quarantine,
        )
        .map_err(|e| anyhow::anyhow!("port range: {e}"))?;
        info!(
            pairs = shared.pairs(),
            max_per_port,
            capacity = shared.capacity(),
            "port sharing: many calls per port pair, told apart by their remote endpoints"
        );
        engine = engine.with_sharing(shared);
    }
    // Calls an earlier run left: adopted before anything is served, so the
    // first ng request already sees them.
    let restored = engine.restore(Now::read());
    if restored.adopted > 0 || !restored.skipped.is_empty() {
        println!(
            "media-relay: adopted {} call(s) of the previous run in {} ms{}",
            restored.adopted,
            restored.took.as_millis(),
            if restored.skipped.is_empty() {
                String::new()
            } else {
                format!(" ({} could not be: see the log)", restored.skipped.len())
            }
        );
    }
    sweep_orphan_flows(&mut engine);
    // The adopted calls' sockets are bound after ng answers, on every
    // core (`media::bind_all`): binding is most of adopting a call. Until
    // all are, no heartbeat is written, so the XDP program keeps dropping
    // what it would pass up for the daemon's ports, as while no daemon
    // ran (no port-unreachable for a port not bound yet); the flows of
    // every call forward throughout.
    let unbound = engine.backend_mut().take_unbound();
    let mut binding = (!unbound.is_empty()).then(|| Binding {
        ports: unbound.len(),
        started: std::time::Instant::now(),
        lost: 0,
        rx: crate::media::bind_all(unbound, cfg.io.threads),
    });

    let socket = ng_server::bind(cfg.listen_ng)?;
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
        cfg.ng_allow.clone(),
    ));
    info!(listen_ng = %cfg.listen_ng, ports = %format!("{}-{}", cfg.port_min, cfg.port_max), "media-relay running; stop with Ctrl-C or SIGTERM");
    if cfg.ng_allow.nets().is_empty() {
        if !cfg.listen_ng.ip().is_loopback() {
            warn!(listen_ng = %cfg.listen_ng, "the ng protocol has no authentication: keep this address off untrusted networks, or name the controllers in ng-allow");
        }
    } else {
        let allowed: Vec<String> = cfg
            .ng_allow
            .nets()
            .iter()
            .map(ToString::to_string)
            .collect();
        info!(ng_allow = %allowed.join(","), "ng answered only from these networks");
    }

    let discovery = crate::stun::spawn(publics.clone(), crate::stun::Retransmit::default());
    let health = Health::new();
    health.set_publics(publics.clone());
    let metrics_server = match cfg.metrics_listen {
        Some(listen) => Some(metrics::serve(listen, health.clone()).await?),
        None => None,
    };
    let mut metrics_tick = tokio::time::interval(Duration::from_secs(1));
    metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    // The SIP agent drives this daemon over ng like any controller would.
    let sip = match cfg.sip.clone() {
        Some(sip) => Some(
            signaling::runtime::start_with(sip, &signaling::runtime::rundir::path(), sip_feeds)
                .await?,
        ),
        None => None,
    };

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_flush = std::time::Instant::now();
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
            chunk = next_bound(&mut binding), if binding.is_some() => match chunk {
                Some(bound) => {
                    let now = Now::read();
                    for (local, e) in engine.backend_mut().attach_bound(bound) {
                        engine.port_lost(local, &e, now);
                        if let Some(b) = binding.as_mut() {
                            b.lost += 1;
                        }
                    }
                }
                None => {
                    engine.backend_mut().complete_routes();
                    if let Some(b) = binding.take() {
                        info!(
                            ports = b.ports,
                            lost = b.lost,
                            took_ms = b.started.elapsed().as_millis() as u64,
                            "the adopted calls' sockets are bound: the userspace path serves them again"
                        );
                    }
                }
            },
            _ = tick.tick() => {
                engine.tick(Now::read());
                if last_flush.elapsed() >= Duration::from_secs(1) {
                    engine.backend_mut().flush_counters();
                    last_flush = std::time::Instant::now();
                }
                let held = engine.backend().every_port_held();
                if binding.is_none()
                    && let Some(dp) = engine.backend_mut().dataplane_mut()
                {
                    dp.heartbeat(HEARTBEAT, (cfg.port_min, cfg.port_max), held);
                }
            }
            _ = metrics_tick.tick() => {
                let snapshot = snapshot(&engine, &stats);
                health.beat(describe_dataplane(&snapshot));
                if metrics_server.is_some() {
                    snapshot.publish();
                    health.publish_publics();
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
    for d in discovery {
        d.abort();
    }
    if let Some(m) = metrics_server {
        m.abort();
    }
    let calls = engine.call_count();
    let mut media = engine;
    media.backend_mut().flush_counters();
    if let Some(dp) = media.backend_mut().dataplane_mut() {
        // The program stays attached (pinned links) and keeps forwarding
        // the calls; packets that would need a daemon are dropped until the
        // next one starts and adopts them.
        dp.absent();
        if let Ok(o) = dp.outcomes() {
            info!(outcomes = ?o, "data plane totals");
        }
        info!(
            calls,
            "stopped; XDP keeps forwarding the calls until the next start adopts them (`media-relay teardown` ends them)"
        );
    }
    Ok(())
}

/// Flows no adopted call owns (its record was skipped, or the previous run
/// crashed between programming a call and keeping its record): nobody
/// would ever remove them, and their ports may be leased again.
fn sweep_orphan_flows(engine: &mut Engine<MediaPlane>) {
    let orphans: Vec<media_ebpf::FlowKey> =
        engine.backend().dataplane().map_or_else(Vec::new, |dp| {
            dp.flows()
                .keys()
                .filter(|k| !engine.owns_flow(k.local(), k.remote()))
                .copied()
                .collect()
        });
    if orphans.is_empty() {
        return;
    }
    if let Some(dp) = engine.backend_mut().dataplane_mut() {
        for k in &orphans {
            let _ = dp.flows_mut().remove(k);
        }
    }
    warn!(flows = orphans.len(), "removed flows no adopted call owns");
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
        // With port sharing: pairs carrying at least one stream.
        ports_in_use: engine
            .shared_figures()
            .map_or(ports.in_use(), |f| f.pairs_in_use) as u64
            * 2,
        ports_free: engine
            .shared_figures()
            .map_or(ports.free(), |f| f.pairs - f.pairs_in_use) as u64
            * 2,
        ports_total: engine
            .shared_figures()
            .map_or(ports.capacity(), |f| f.pairs) as u64
            * 2,
        commands: t.commands.iter().map(|(k, v)| (*k, *v)).collect(),
        command_errors: t.command_errors.iter().map(|(k, v)| (*k, *v)).collect(),
        ng_undecodable: control.undecodable.load(Relaxed),
        ng_retransmissions: control.retransmissions.load(Relaxed),
        ng_cookie_reused: control.cookie_reused.load(Relaxed),
        ng_cookie_too_long: control.cookie_too_long.load(Relaxed),
        ng_source_refused: control.source_refused.load(Relaxed),
        ng_cache_evictions: control.cache_evictions.load(Relaxed),
        ng_cache_bytes: control.cache_bytes.load(Relaxed),
        // Refused by the engine's latching and by the I/O threads (a
        // stranger on a latched or strict port: never handed over).
        refused_sources_userspace: t.refused_sources + engine.backend().userspace_refused(),
        userspace_forwarded: engine.backend().userspace_totals(),
        userspace_io: engine.backend().userspace_io(),
        userspace_waited: engine.backend().userspace_waited(),
        degraded_legs: engine
            .watch_totals()
            .degraded_legs
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect(),
        quality_alerts: engine
            .watch_totals()
            .alerts
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect(),
        sharing: engine.shared_figures(),
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
