//! Prometheus metrics and the health endpoint (`--metrics-listen`).
//!
//! The recorder is the `metrics` facade's Prometheus exporter: code all
//! over the appliance (the SIP agent, the ng server) records through the
//! `metrics` macros, and the daemon's event loop turns the session engine's
//! and the data plane's own counters into metrics once a second
//! ([`Snapshot::publish`]). That costs a handful of map reads (the per-CPU
//! outcome counters), never a walk over the calls. An HTTP server (axum)
//! serves `/metrics` (text exposition) and `/health`.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::{info, warn};

/// The process-wide recorder: installed once, on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Per-leg quality as histograms (one observation per leg and
        // check), never one series per call.
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("media_relay_leg_jitter_seconds".into()),
                &[0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("media_relay_leg_mos".into()),
                    &[1.0, 2.0, 2.6, 3.1, 3.6, 4.0, 4.2, 4.3, 4.4, 4.5],
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            warn!(
                "a metrics recorder was already installed; /metrics shows only what reaches ours"
            );
        }
        describe();
        handle
    })
}

fn describe() {
    describe_gauge!(
        "media_relay_calls_active",
        "Calls the media engine holds now"
    );
    describe_counter!("media_relay_calls_total", "Calls the media engine took on");
    describe_counter!(
        "media_relay_calls_ended_total",
        "Calls ended, by reason (delete, timeout, silent_timeout, offer_timeout)"
    );
    describe_counter!(
        "media_relay_calls_failed_total",
        "Offers/answers refused, by reason (ports_exhausted, other)"
    );
    describe_gauge!("media_relay_ports_in_use", "Media ports leased to calls");
    describe_gauge!("media_relay_ports_free", "Media ports available");
    describe_gauge!("media_relay_ports_total", "Media ports in the range");
    describe_counter!(
        "media_relay_ng_commands_total",
        "ng commands handled, by command"
    );
    describe_counter!(
        "media_relay_ng_errors_total",
        "ng commands answered with an error, by command"
    );
    describe_counter!(
        "media_relay_ng_undecodable_total",
        "ng datagrams that could not be decoded (dropped)"
    );
    describe_counter!(
        "media_relay_ng_retransmissions_total",
        "ng requests answered from the reply cache"
    );
    describe_counter!(
        "media_relay_ng_refused_total",
        "ng requests refused before they were applied, by reason (cookie_reused, cookie_too_long; source_not_allowed: outside ng-allow, dropped unanswered)"
    );
    describe_counter!(
        "media_relay_ng_cache_evictions_total",
        "Cached ng replies dropped before their TTL to stay within ng-cache-bytes"
    );
    describe_gauge!(
        "media_relay_ng_cache_bytes",
        "Bytes held by the ng reply cache"
    );
    describe_counter!(
        "media_relay_userspace_wait_seconds_bucket",
        Unit::Seconds,
        "Datagrams the userspace path read after waiting at most `le` seconds since the kernel received them (cumulative histogram buckets)"
    );
    describe_counter!(
        "media_relay_userspace_wait_seconds_count",
        "Datagrams the userspace path read with a receive timestamp"
    );
    describe_histogram!(
        "media_relay_ng_duration_seconds",
        Unit::Seconds,
        "Time from an ng request's arrival to its reply"
    );
    describe_counter!(
        "media_relay_rejected_sources_total",
        "Packets or requests refused for their source, by path (xdp, userspace, sip)"
    );
    describe_counter!(
        "media_relay_xdp_packets_total",
        "Packets the XDP program saw, by outcome"
    );
    describe_gauge!(
        "media_relay_xdp_attached",
        "1 per interface the XDP program is attached to, with its mode"
    );
    describe_gauge!(
        "media_relay_xdp_flows",
        "Flows installed in the XDP flow table"
    );
    describe_gauge!(
        "media_relay_xdp_flow_capacity",
        "Capacity of the XDP flow table"
    );
    describe_counter!(
        "media_relay_userspace_packets_total",
        "Packets the daemon forwarded itself (latching, XDP off or unsuitable)"
    );
    describe_counter!(
        "media_relay_userspace_bytes_total",
        "Bytes the daemon forwarded itself"
    );
    describe_counter!(
        "media_relay_userspace_stale_dropped_total",
        "Packets the userspace path dropped for waiting longer than userspace-max-delay (never sent late)"
    );
    describe_counter!(
        "media_relay_userspace_reads_total",
        "recvmmsg calls of the userspace path (datagrams / reads = the batch size reached)"
    );
    describe_counter!(
        "media_relay_userspace_datagrams_total",
        "Datagrams the userspace path read"
    );
    describe_counter!(
        "media_relay_sip_requests_total",
        "SIP requests received, by method"
    );
    describe_counter!(
        "media_relay_sip_responses_total",
        "SIP responses sent upstream, by method and code"
    );
    describe_counter!(
        "media_relay_sip_calls_failed_total",
        "INVITEs answered with a final failure, by code"
    );
    describe_counter!(
        "media_relay_sip_rejected_total",
        "Requests the SIP agent refused itself, by reason"
    );
    describe_gauge!("media_relay_sip_calls_active", "Calls the SIP agent tracks");
    describe_gauge!("media_relay_up", "1 while the daemon's event loop runs");
    describe_histogram!(
        "media_relay_leg_jitter_seconds",
        Unit::Seconds,
        "Interarrival jitter the relay measured on a party's RTP, by side: one observation per leg and quality check (about once a second)"
    );
    describe_histogram!(
        "media_relay_leg_mos",
        "MOS estimate of a leg (simplified E-model), by side: one observation per leg and quality check"
    );
    describe_gauge!(
        "media_relay_quality_degraded_legs",
        "Legs whose media quality is past a [quality-alerts] threshold now, by side (trunk, pbx; caller/callee for other controllers)"
    );
    describe_counter!(
        "media_relay_public_address_changes_total",
        "Times a public address discovered with STUN (advertise = \"stun\") changed, by interface and family"
    );
    describe_gauge!(
        "media_relay_public_address_known",
        "1 when the public address of an interface (advertise = \"stun\") is known, 0 while offers are refused for want of it"
    );
    describe_gauge!(
        "media_relay_public_address_degraded",
        "1 while every STUN server of an interface fails (the last known address stays in effect)"
    );
    describe_gauge!(
        "media_relay_public_address_confirmed_age_seconds",
        "Seconds since a STUN server last confirmed the public address"
    );
    describe_gauge!(
        "media_relay_stun_servers_disagree",
        "1 while an interface's STUN servers report different mapped endpoints (symmetric NAT?)"
    );
    describe_counter!(
        "media_relay_shared_port_unattributed_total",
        "Packets on shared ports (port-sharing) from sources no call could be given unambiguously: dropped"
    );
    describe_gauge!(
        "media_relay_shared_pairs",
        "Shared port pairs in the range (port-sharing)"
    );
    describe_gauge!(
        "media_relay_shared_pairs_in_use",
        "Shared port pairs carrying at least one stream"
    );
    describe_gauge!(
        "media_relay_shared_streams",
        "Streams (one per call side and m= line) on shared port pairs"
    );
    describe_gauge!(
        "media_relay_shared_streams_per_pair_max",
        "The most streams one shared port pair carries"
    );
    describe_counter!(
        "media_relay_quality_alerts_total",
        "Times a leg crossed a [quality-alerts] threshold, by side and figure (jitter, loss, burst, delay_rise)"
    );
}

/// What the event loop publishes once a second.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub calls_active: u64,
    pub calls_total: u64,
    pub ended: Vec<(&'static str, u64)>,
    pub failed: Vec<(&'static str, u64)>,
    pub ports_in_use: u64,
    pub ports_free: u64,
    pub ports_total: u64,
    pub commands: Vec<(&'static str, u64)>,
    pub command_errors: Vec<(&'static str, u64)>,
    pub ng_undecodable: u64,
    pub ng_retransmissions: u64,
    pub ng_cookie_reused: u64,
    pub ng_cookie_too_long: u64,
    /// Datagrams from sources outside `ng-allow`.
    pub ng_source_refused: u64,
    pub ng_cache_evictions: u64,
    pub ng_cache_bytes: u64,
    pub refused_sources_userspace: u64,
    pub xdp_outcomes: Vec<(&'static str, u64)>,
    pub xdp_attached: Vec<(String, String)>,
    pub xdp_flows: Option<(u64, u64)>,
    pub userspace_forwarded: (u64, u64),
    /// Stale drops, reads, datagrams read (the userspace path's I/O).
    pub userspace_io: (u64, u64, u64),
    /// Datagrams per wait bucket (`media::WAIT_BOUNDS_US`, then longer).
    pub userspace_waited: [u64; crate::media::WAIT_BOUNDS_US.len() + 1],
    /// Degraded legs now, by side.
    pub degraded_legs: Vec<(&'static str, u64)>,
    /// Quality alerts, by side and figure.
    pub quality_alerts: Vec<((&'static str, &'static str), u64)>,
    /// Port sharing's figures, when it is on.
    pub sharing: Option<crate::session::SharedFigures>,
}

impl Snapshot {
    /// Hand every figure to the recorder (counters as absolute values:
    /// their owners count, we only copy).
    pub fn publish(&self) {
        gauge!("media_relay_up").set(1.0);
        gauge!("media_relay_calls_active").set(self.calls_active as f64);
        counter!("media_relay_calls_total").absolute(self.calls_total);
        for (reason, n) in &self.ended {
            counter!("media_relay_calls_ended_total", "reason" => *reason).absolute(*n);
        }
        for (reason, n) in &self.failed {
            counter!("media_relay_calls_failed_total", "reason" => *reason).absolute(*n);
        }
        gauge!("media_relay_ports_in_use").set(self.ports_in_use as f64);
        gauge!("media_relay_ports_free").set(self.ports_free as f64);
        gauge!("media_relay_ports_total").set(self.ports_total as f64);
        for (command, n) in &self.commands {
            counter!("media_relay_ng_commands_total", "command" => *command).absolute(*n);
        }
        for (command, n) in &self.command_errors {
            counter!("media_relay_ng_errors_total", "command" => *command).absolute(*n);
        }
        counter!("media_relay_ng_undecodable_total").absolute(self.ng_undecodable);
        counter!("media_relay_ng_retransmissions_total").absolute(self.ng_retransmissions);
        counter!("media_relay_ng_refused_total", "reason" => "cookie_reused")
            .absolute(self.ng_cookie_reused);
        counter!("media_relay_ng_refused_total", "reason" => "cookie_too_long")
            .absolute(self.ng_cookie_too_long);
        counter!("media_relay_ng_refused_total", "reason" => "source_not_allowed")
            .absolute(self.ng_source_refused);
        counter!("media_relay_ng_cache_evictions_total").absolute(self.ng_cache_evictions);
        gauge!("media_relay_ng_cache_bytes").set(self.ng_cache_bytes as f64);
        counter!("media_relay_rejected_sources_total", "path" => "userspace")
            .absolute(self.refused_sources_userspace);
        for (outcome, n) in &self.xdp_outcomes {
            counter!("media_relay_xdp_packets_total", "outcome" => *outcome).absolute(*n);
            if *outcome == "source_rejected" {
                counter!("media_relay_rejected_sources_total", "path" => "xdp").absolute(*n);
            }
        }
        for (interface, mode) in &self.xdp_attached {
            gauge!("media_relay_xdp_attached", "interface" => interface.clone(), "mode" => mode.clone())
                .set(1.0);
        }
        if let Some((flows, capacity)) = self.xdp_flows {
            gauge!("media_relay_xdp_flows").set(flows as f64);
            gauge!("media_relay_xdp_flow_capacity").set(capacity as f64);
        }
        counter!("media_relay_userspace_packets_total").absolute(self.userspace_forwarded.0);
        counter!("media_relay_userspace_bytes_total").absolute(self.userspace_forwarded.1);
        counter!("media_relay_userspace_stale_dropped_total").absolute(self.userspace_io.0);
        counter!("media_relay_userspace_reads_total").absolute(self.userspace_io.1);
        counter!("media_relay_userspace_datagrams_total").absolute(self.userspace_io.2);
        // A histogram's buckets (cumulative, `le` in seconds) and count,
        // from the I/O threads' own counts.
        let mut below = 0;
        for (i, n) in self.userspace_waited.iter().enumerate() {
            below += n;
            let le = crate::media::WAIT_BOUNDS_US
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |us| format!("{}", *us as f64 / 1e6));
            counter!("media_relay_userspace_wait_seconds_bucket", "le" => le).absolute(below);
        }
        counter!("media_relay_userspace_wait_seconds_count").absolute(below);
        for side in ["trunk", "pbx"] {
            if !self.degraded_legs.iter().any(|(s, _)| *s == side) {
                gauge!("media_relay_quality_degraded_legs", "side" => side).set(0.0);
            }
        }
        for (side, n) in &self.degraded_legs {
            gauge!("media_relay_quality_degraded_legs", "side" => *side).set(*n as f64);
        }
        if let Some(f) = &self.sharing {
            counter!("media_relay_shared_port_unattributed_total").absolute(f.unattributed);
            gauge!("media_relay_shared_pairs").set(f.pairs as f64);
            gauge!("media_relay_shared_pairs_in_use").set(f.pairs_in_use as f64);
            gauge!("media_relay_shared_streams").set(f.streams as f64);
            gauge!("media_relay_shared_streams_per_pair_max").set(f.max_streams_on_a_pair as f64);
        }
        for ((side, figure), n) in &self.quality_alerts {
            counter!("media_relay_quality_alerts_total", "side" => *side, "figure" => *figure)
                .absolute(*n);
        }
    }
}

/// What `/health` reports: the event loop's heartbeat and the data plane.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` of the event loop's last turn.
    last_beat_ms: AtomicU64,
    /// A short description of the data plane (attachments).
    dataplane: Mutex<String>,
    /// Public address discoveries (`advertise = "stun"`).
    publics: Mutex<Vec<crate::stun::Public>>,
}

/// The event loop is considered stuck after this long without a beat.
const STALE: Duration = Duration::from_secs(5);

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            dataplane: Mutex::new(String::new()),
            publics: Mutex::new(Vec::new()),
        })
    }

    pub fn set_publics(&self, publics: Vec<crate::stun::Public>) {
        if let Ok(mut p) = self.publics.lock() {
            *p = publics;
        }
    }

    /// The discoveries' figures as metrics (called once a second).
    pub fn publish_publics(&self) {
        let Ok(publics) = self.publics.lock() else {
            return;
        };
        let now = std::time::SystemTime::now();
        for p in publics.iter() {
            let s = p.state();
            let labels = [
                ("interface", p.interface.clone()),
                ("family", p.family().to_owned()),
            ];
            counter!("media_relay_public_address_changes_total", &labels).absolute(s.changes);
            let flag = |b: bool| if b { 1.0 } else { 0.0 };
            gauge!("media_relay_public_address_known", &labels).set(flag(s.address.is_some()));
            gauge!("media_relay_public_address_degraded", &labels).set(flag(s.degraded.is_some()));
            gauge!("media_relay_stun_servers_disagree", &labels)
                .set(flag(s.disagreement.is_some()));
            if let Some(t) = s.confirmed {
                gauge!("media_relay_public_address_confirmed_age_seconds", &labels)
                    .set(now.duration_since(t).unwrap_or_default().as_secs_f64());
            }
        }
    }

    /// `/health`'s `public_addresses`: per discovery the address in
    /// effect, when it was last confirmed, and its status; and whether
    /// offers can be taken at all (every address known).
    fn publics_report(&self) -> (Vec<serde_json::Value>, bool, bool) {
        let publics = self.publics.lock().map(|p| p.clone()).unwrap_or_default();
        let now = std::time::SystemTime::now();
        let unix = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let mut all_known = true;
        let mut degraded = false;
        let list = publics
            .iter()
            .map(|p| {
                let s = p.state();
                all_known &= s.address.is_some();
                degraded |= s.degraded.is_some() || s.disagreement.is_some();
                serde_json::json!({
                    "interface": p.interface,
                    "family": p.family(),
                    "local": p.local.to_string(),
                    "status": s.status(),
                    "address": s.address.map(|a| a.to_string()),
                    "mapped": s.mapped.map(|a| a.to_string()),
                    "last_confirmed_unix": s.confirmed.map(unix),
                    "last_confirmed_seconds_ago": s.confirmed.map(|t| now.duration_since(t).unwrap_or_default().as_secs()),
                    "changes": s.changes,
                    "degraded": s.degraded,
                    "disagreement": s.disagreement,
                })
            })
            .collect();
        (list, all_known, degraded)
    }

    pub fn beat(&self, dataplane: String) {
        self.last_beat_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Ok(mut d) = self.dataplane.lock() {
            *d = dataplane;
        }
    }

    /// (healthy, JSON body). `status` is `stalled` (503) when the event
    /// loop stopped, `no_public_address` (503) while a public address to
    /// be discovered is unknown (offers are refused), `degraded` (200)
    /// while every STUN server of an interface fails or servers disagree
    /// on the mapped endpoint, else `ok`.
    fn report(&self) -> (bool, String) {
        let now = self.started.elapsed().as_millis() as u64;
        let age = now.saturating_sub(self.last_beat_ms.load(Ordering::Relaxed));
        let beating = Duration::from_millis(age) < STALE;
        let dp = self.dataplane.lock().map(|d| d.clone()).unwrap_or_default();
        let (publics, all_known, degraded) = self.publics_report();
        let status = if !beating {
            "stalled"
        } else if !all_known {
            "no_public_address"
        } else if degraded {
            "degraded"
        } else {
            "ok"
        };
        let mut body = serde_json::json!({
            "status": status,
            "event_loop_ms_since_beat": age,
            "dataplane": dp,
        });
        if !publics.is_empty() {
            body["public_addresses"] = serde_json::Value::Array(publics);
        }
        (beating && all_known, format!("{body}\n"))
    }
}

async fn metrics_page() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle().render(),
    )
}

async fn health_page(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let (healthy, body) = health.report();
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// Bind `listen` and serve `/metrics` and `/health` until the task is
/// dropped. Binding errors are returned (a wrong address must stop the
/// start, not be discovered later).
pub async fn serve(
    listen: SocketAddr,
    health: Arc<Health>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let _ = handle();
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!("cannot serve metrics on {listen}: {e}; choose another --metrics-listen")
    })?;
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/health", get(health_page))
        .with_state(health);
    info!(metrics_listen = %listen, "serving /metrics and /health");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics server stopped");
        }
    }))
}

/// Recorder upkeep (histogram buckets); call periodically.
pub fn upkeep() {
    handle().run_upkeep();
}
