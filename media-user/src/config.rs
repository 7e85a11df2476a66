//! Configuration: an optional TOML file, overridden by command-line flags.
//!
//! Every key of the file is also a flag (`port-min` ↔ `--port-min`).
//! Unknown keys are errors, so a typo never passes silently, and every
//! error is one line naming the key, the value and what is expected.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use thiserror::Error;

mod stun;

pub use stun::Advertise;

use crate::{
    daemon::XdpModeArg, interfaces::InterfaceSpec, logging::LogFormat, ng_server::NgAllow,
    session::SessionConfig,
};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}, line {line}{key}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("config key `{key}` = {value}: {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: String,
    },
    #[error("config key `sip.{key}` = {value}: {expected}")]
    InvalidSip {
        key: String,
        value: String,
        expected: String,
    },
}

/// The `[quality-alerts]` table: when the quality watch calls a leg
/// degraded (README, Media quality per leg). Every key optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct QualityAlertsFile {
    /// Interarrival jitter, milliseconds.
    pub jitter_ms: Option<f64>,
    /// Loss over the last 5 s, percent.
    pub loss_percent: Option<f64>,
    /// Mean length of the bursts of loss over the last 5 s, packets.
    pub burst_packets: Option<f64>,
    /// Relative transit delay above its recent minimum, milliseconds.
    pub delay_rise_ms: Option<f64>,
}

impl QualityAlertsFile {
    fn thresholds(&self) -> Result<crate::session::AlertThresholds, ConfigError> {
        let d = crate::session::AlertThresholds::default();
        let check = |key: &'static str, v: Option<f64>, default: f64, max: f64| {
            let v = v.unwrap_or(default);
            if v.is_finite() && v > 0.0 && v <= max {
                Ok(v)
            } else {
                Err(ConfigError::Invalid {
                    key,
                    value: v.to_string(),
                    expected: format!("above 0 and at most {max}"),
                })
            }
        };
        let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
        Ok(crate::session::AlertThresholds {
            jitter: ms(check(
                "quality-alerts.jitter-ms",
                self.jitter_ms,
                d.jitter.as_secs_f64() * 1000.0,
                10_000.0,
            )?),
            loss_percent: check(
                "quality-alerts.loss-percent",
                self.loss_percent,
                d.loss_percent,
                100.0,
            )?,
            burst_packets: check(
                "quality-alerts.burst-packets",
                self.burst_packets,
                d.burst_packets,
                10_000.0,
            )?,
            delay_rise: ms(check(
                "quality-alerts.delay-rise-ms",
                self.delay_rise_ms,
                d.delay_rise.as_secs_f64() * 1000.0,
                60_000.0,
            )?),
        })
    }
}

/// One `[[interface]]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InterfaceEntry {
    /// Logical name for ng `direction` / `from-interface` (default: netdev).
    pub name: Option<String>,
    pub netdev: String,
    /// Addresses told to peers instead of the local ones (1:1 NAT), or
    /// `"stun"` to discover the public address.
    #[serde(default)]
    pub advertise: Advertise,
    /// This interface's STUN servers (default: the top-level ones).
    pub stun_servers: Option<Vec<String>>,
    /// This interface's seconds between STUN re-checks.
    pub stun_interval: Option<u64>,
    /// Local addresses to use (default: the netdev's first of each family).
    #[serde(default)]
    pub address: Vec<IpAddr>,
}

/// The file, every key optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    #[serde(default)]
    pub interface: Vec<InterfaceEntry>,
    pub listen_ng: Option<SocketAddr>,
    /// Networks (CIDRs, or single addresses) of the controllers the ng
    /// server answers; unset or empty: everyone who reaches `listen-ng`.
    pub ng_allow: Option<Vec<String>>,
    pub port_min: Option<u16>,
    pub port_max: Option<u16>,
    pub xdp_mode: Option<XdpModeArg>,
    /// For the first interface: an address, or `"stun"`.
    pub advertise: Option<Advertise>,
    /// STUN servers (`ip:port`) of interfaces with `advertise = "stun"`.
    pub stun_servers: Option<Vec<String>>,
    /// Seconds between STUN re-checks of the public address.
    pub stun_interval: Option<u64>,
    pub timeout: Option<u64>,
    pub silent_timeout: Option<u64>,
    pub offer_timeout: Option<u64>,
    pub delete_delay: Option<u64>,
    pub learning_window: Option<u64>,
    pub ng_cache_ttl: Option<u64>,
    /// Bytes the ng reply cache may hold (replies, cookies, digests).
    pub ng_cache_bytes: Option<u64>,
    /// m= lines per SDP at most (and twice that per call).
    pub max_media: Option<u64>,
    /// Seconds a released port pair rests before reuse.
    pub port_quarantine: Option<u64>,
    /// Port sharing: many calls per local port pair, told apart by their
    /// remote endpoints (`docs/port-sharing.md`).
    pub port_sharing: Option<bool>,
    /// Streams a shared pair carries at most.
    pub port_sharing_max_per_port: Option<u64>,
    pub max_flows: Option<u32>,
    /// Per-stream quality accounting in the XDP program (loss, jitter,
    /// RTCP); off keeps the flows' packet and byte counters only.
    pub quality_telemetry: Option<bool>,
    /// Threads of the userspace path (0: one per CPU).
    pub userspace_threads: Option<u64>,
    /// Milliseconds a packet may wait on the userspace path before it is
    /// dropped as stale.
    pub userspace_max_delay: Option<u64>,
    /// Nice value of the userspace path's threads.
    pub userspace_nice: Option<i32>,
    /// Microseconds: a CPU wake-up latency request (PM QoS) held while
    /// the daemon runs; absent: none.
    pub cpu_wake_latency: Option<u32>,
    pub pin_root: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    /// Prometheus `/metrics` and `/health` over HTTP (off when absent).
    pub metrics_listen: Option<SocketAddr>,
    /// When a leg's media quality is called degraded.
    pub quality_alerts: Option<QualityAlertsFile>,
    /// The SIP agent (runs inside `media-relay run` when present).
    pub sip: Option<signaling::config::SipFile>,
    /// Flag only: the SIP agent's trunk-side listen address (overrides
    /// `sip.trunk-listen`).
    #[serde(skip)]
    pub sip_listen: Option<SocketAddr>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, key) = e.span().map_or((0, String::new()), |span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                let src = text.lines().nth(line - 1).unwrap_or_default();
                let key = src
                    .split('=')
                    .next()
                    .map(str::trim)
                    .filter(|k| !k.is_empty() && !k.starts_with('['))
                    .map(|k| format!(" (`{k}`)"))
                    .unwrap_or_default();
                (line, key)
            });
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                key,
                message: e.message().replace('\n', " ").trim().to_owned(),
            }
        })
    }
}

/// `ng-allow`'s entries: CIDRs (`198.18.2.0/24`, `2001:db8::/32`) or
/// single addresses (a /32 or /128); a network with host bits set is an
/// error naming the network meant, so a typo never widens or narrows it
/// silently.
pub fn parse_ng_allow(entries: &[String]) -> Result<NgAllow, ConfigError> {
    let mut nets = Vec::with_capacity(entries.len());
    for entry in entries {
        let text = entry.trim();
        let invalid = |expected: String| ConfigError::Invalid {
            key: "ng-allow",
            value: entry.clone(),
            expected,
        };
        let net = match text.parse::<ipnet::IpNet>() {
            Ok(net) => net,
            Err(_) => match text.parse::<IpAddr>() {
                Ok(ip) => ipnet::IpNet::from(ip),
                Err(_) => {
                    return Err(invalid(
                        "a network in CIDR form (e.g. 10.0.0.0/8, 2001:db8::/32) or a single address"
                            .into(),
                    ));
                }
            },
        };
        if net.trunc() != net {
            return Err(invalid(format!(
                "host bits set; write the network, {}",
                net.trunc()
            )));
        }
        nets.push(net);
    }
    Ok(NgAllow::new(nets))
}

/// Everything `media-relay run` needs, resolved.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub interfaces: Vec<InterfaceSpec>,
    pub listen_ng: SocketAddr,
    /// `ng-allow`: whom the ng server answers.
    pub ng_allow: NgAllow,
    pub port_min: u16,
    pub port_max: u16,
    pub xdp_mode: XdpModeArg,
    pub session: SessionConfig,
    pub max_flows: u32,
    /// `quality-telemetry`: the XDP program's per-stream quality
    /// accounting (`CONTROL_NO_QUALITY` when off).
    pub quality_telemetry: bool,
    /// The userspace path's threads and staleness bound.
    pub io: crate::media::IoConfig,
    /// `cpu-wake-latency`: microseconds every CPU stays within of running
    /// while the daemon runs (`host::hold_cpu_wake_latency`); `None`: the
    /// host's own idle settings.
    pub cpu_wake_latency: Option<u32>,
    pub pin_root: PathBuf,
    pub log_format: LogFormat,
    /// Where `/metrics` and `/health` are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How long ng replies are kept to answer retransmissions.
    pub ng_cache_ttl: Duration,
    /// How many bytes of replies the ng cache holds at most.
    pub ng_cache_bytes: usize,
    /// How long a released port pair rests before reuse.
    pub port_quarantine: Duration,
    /// `port-sharing`: `Some(max streams per pair)` when on.
    pub port_sharing: Option<usize>,
    /// The SIP agent, if configured.
    pub sip: Option<signaling::config::SipConfig>,
    /// Seconds between data-plane counter summaries (debug log level).
    pub stats_interval: u64,
}

pub const DEFAULT_LISTEN_NG: &str = "127.0.0.1:2223";
pub const DEFAULT_PORT_MIN: u16 = 30_000;
pub const DEFAULT_PORT_MAX: u16 = 40_000;
/// `port-sharing-max-per-port` at most: a port's unknown sources are
/// attributed by one pass over its streams (`sharing.rs`).
pub const MAX_PORT_SHARING_PER_PORT: u64 = 4096;
/// 8 MiB: some 300 ng requests a second (100 calls/s) for well over the
/// seconds a controller retransmits in, at the size of a typical reply.
pub const DEFAULT_NG_CACHE_BYTES: u64 = 8 << 20;
/// `cpu-wake-latency` at most: past a millisecond every idle state of
/// common hardware is allowed, so a request would change nothing.
pub const MAX_CPU_WAKE_LATENCY_US: u32 = 1000;
/// Below this one largest reply (a 64 KiB datagram) would not fit.
pub const MIN_NG_CACHE_BYTES: u64 = 64 << 10;

impl RunConfig {
    /// Merge: flags (`flags`, whose `Some`/non-empty values win) over the
    /// file over defaults; then validate.
    pub fn resolve(
        file: FileConfig,
        flags: FileConfig,
        stats_interval: u64,
    ) -> Result<Self, ConfigError> {
        let interfaces = if flags.interface.is_empty() {
            file.interface
        } else {
            flags.interface
        };
        let advertise = flags.advertise.or(file.advertise);
        let mut interfaces = interfaces;
        if let Some(a) = &advertise {
            match interfaces.first_mut() {
                Some(first) => a.apply_to(&mut first.advertise),
                None => {
                    return Err(ConfigError::Invalid {
                        key: "advertise",
                        value: a.to_string(),
                        expected: "needs an interface to apply to (--interface or [[interface]])"
                            .into(),
                    });
                }
            }
        }
        let stun_servers = flags.stun_servers.or(file.stun_servers);
        let stun_interval = flags.stun_interval.or(file.stun_interval);
        if let Some(servers) = &stun_servers
            && !servers.is_empty()
            && !interfaces.iter().any(|i| i.advertise.stun)
        {
            return Err(ConfigError::Invalid {
                key: "stun-servers",
                value: servers.join(", "),
                expected: "no interface has advertise = \"stun\" to use them".into(),
            });
        }
        let mut specs = Vec::with_capacity(interfaces.len());
        for i in interfaces {
            let name = i.name.clone().unwrap_or_else(|| i.netdev.clone());
            let (advertise, stun) = stun::resolve(
                &name,
                &i.advertise,
                i.stun_servers.as_deref().or(stun_servers.as_deref()),
                i.stun_interval.or(stun_interval),
            )?;
            specs.push(InterfaceSpec {
                name: i.name,
                netdev: i.netdev,
                advertise,
                addresses: i.address,
                stun,
            });
        }
        let mut names = std::collections::HashSet::new();
        for s in &specs {
            let name = s.name.clone().unwrap_or_else(|| s.netdev.clone());
            if !names.insert(name.clone()) {
                return Err(ConfigError::Invalid {
                    key: "interface",
                    value: name,
                    expected: "each interface name may appear once".into(),
                });
            }
        }
        let port_min = flags.port_min.or(file.port_min).unwrap_or(DEFAULT_PORT_MIN);
        let port_max = flags.port_max.or(file.port_max).unwrap_or(DEFAULT_PORT_MAX);
        if port_min < 1024 {
            return Err(ConfigError::Invalid {
                key: "port-min",
                value: port_min.to_string(),
                expected: "at least 1024".into(),
            });
        }
        if port_max <= port_min {
            return Err(ConfigError::Invalid {
                key: "port-max",
                value: port_max.to_string(),
                expected: format!(
                    "greater than port-min ({port_min}), leaving room for one RTP/RTCP pair"
                ),
            });
        }
        let port_sharing = match (
            flags.port_sharing.or(file.port_sharing).unwrap_or(false),
            flags
                .port_sharing_max_per_port
                .or(file.port_sharing_max_per_port),
        ) {
            (_, Some(n)) if !(2..=MAX_PORT_SHARING_PER_PORT).contains(&n) => {
                return Err(ConfigError::Invalid {
                    key: "port-sharing-max-per-port",
                    value: n.to_string(),
                    expected: format!(
                        "from 2 to {MAX_PORT_SHARING_PER_PORT} (streams per shared port pair)"
                    ),
                });
            }
            (false, _) => None,
            (true, n) => Some(
                n.map_or(crate::session::sharing::DEFAULT_MAX_PER_PORT, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                }),
            ),
        };
        let secs = |key: &'static str,
                    v: Option<u64>,
                    default: u64,
                    min: u64|
         -> Result<Duration, ConfigError> {
            let v = v.unwrap_or(default);
            if v < min {
                return Err(ConfigError::Invalid {
                    key,
                    value: v.to_string(),
                    expected: format!("at least {min} seconds"),
                });
            }
            Ok(Duration::from_secs(v))
        };
        let session = SessionConfig {
            timeout: secs("timeout", flags.timeout.or(file.timeout), 60, 1)?,
            silent_timeout: secs(
                "silent-timeout",
                flags.silent_timeout.or(file.silent_timeout),
                3600,
                1,
            )?,
            offer_timeout: secs(
                "offer-timeout",
                flags.offer_timeout.or(file.offer_timeout),
                3600,
                1,
            )?,
            delete_delay: secs(
                "delete-delay",
                flags.delete_delay.or(file.delete_delay),
                0,
                0,
            )?,
            learning_window: secs(
                "learning-window",
                flags.learning_window.or(file.learning_window),
                3,
                0,
            )?,
            max_media: {
                let v = flags
                    .max_media
                    .or(file.max_media)
                    .unwrap_or(crate::session::DEFAULT_MAX_MEDIA as u64);
                if !(1..=1024).contains(&v) {
                    return Err(ConfigError::Invalid {
                        key: "max-media",
                        value: v.to_string(),
                        expected: "between 1 and 1024 m= lines".into(),
                    });
                }
                v as usize
            },
            alerts: file
                .quality_alerts
                .clone()
                .unwrap_or_default()
                .thresholds()?,
        };
        let ng_cache_bytes = flags
            .ng_cache_bytes
            .or(file.ng_cache_bytes)
            .unwrap_or(DEFAULT_NG_CACHE_BYTES);
        if ng_cache_bytes < MIN_NG_CACHE_BYTES {
            return Err(ConfigError::Invalid {
                key: "ng-cache-bytes",
                value: ng_cache_bytes.to_string(),
                expected: format!(
                    "at least {MIN_NG_CACHE_BYTES} bytes (one reply of the largest size)"
                ),
            });
        }
        let max_flows = flags
            .max_flows
            .or(file.max_flows)
            .unwrap_or(media_ebpf::maps::DEFAULT_MAX_FLOWS);
        if max_flows == 0 {
            return Err(ConfigError::Invalid {
                key: "max-flows",
                value: "0".into(),
                expected: "at least 1".into(),
            });
        }
        let io = {
            let threads = flags
                .userspace_threads
                .or(file.userspace_threads)
                .unwrap_or(0);
            if threads > 64 {
                return Err(ConfigError::Invalid {
                    key: "userspace-threads",
                    value: threads.to_string(),
                    expected: "between 0 (one per CPU) and 64".into(),
                });
            }
            let ms = flags
                .userspace_max_delay
                .or(file.userspace_max_delay)
                .unwrap_or(crate::media::DEFAULT_MAX_DELAY.as_millis() as u64);
            if !(1..=1000).contains(&ms) {
                return Err(ConfigError::Invalid {
                    key: "userspace-max-delay",
                    value: ms.to_string(),
                    expected: "between 1 and 1000 milliseconds".into(),
                });
            }
            let nice = flags
                .userspace_nice
                .or(file.userspace_nice)
                .unwrap_or(crate::media::DEFAULT_NICE);
            if !(-20..=19).contains(&nice) {
                return Err(ConfigError::Invalid {
                    key: "userspace-nice",
                    value: nice.to_string(),
                    expected: "a nice value between -20 and 19".into(),
                });
            }
            let mut io = crate::media::IoConfig {
                max_delay: Duration::from_millis(ms),
                nice,
                ..crate::media::IoConfig::default()
            };
            if threads > 0 {
                io.threads = threads as usize;
            }
            io
        };
        let cpu_wake_latency = flags.cpu_wake_latency.or(file.cpu_wake_latency);
        if let Some(us) = cpu_wake_latency.filter(|us| *us > MAX_CPU_WAKE_LATENCY_US) {
            return Err(ConfigError::Invalid {
                key: "cpu-wake-latency",
                value: us.to_string(),
                expected: format!(
                    "between 0 (idle CPUs poll) and {MAX_CPU_WAKE_LATENCY_US} microseconds"
                ),
            });
        }
        let ng_allow = parse_ng_allow(&flags.ng_allow.or(file.ng_allow).unwrap_or_default())?;
        Ok(Self {
            interfaces: specs,
            ng_allow,
            listen_ng: flags
                .listen_ng
                .or(file.listen_ng)
                .unwrap_or_else(|| DEFAULT_LISTEN_NG.parse().expect("valid default")),
            port_min,
            port_max,
            xdp_mode: flags.xdp_mode.or(file.xdp_mode).unwrap_or_default(),
            session,
            max_flows,
            quality_telemetry: flags
                .quality_telemetry
                .or(file.quality_telemetry)
                .unwrap_or(true),
            io,
            cpu_wake_latency,
            pin_root: flags
                .pin_root
                .or(file.pin_root)
                .unwrap_or_else(|| PathBuf::from(media_ebpf::maps::PIN_ROOT)),
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            metrics_listen: flags.metrics_listen.or(file.metrics_listen),
            ng_cache_ttl: secs(
                "ng-cache-ttl",
                flags.ng_cache_ttl.or(file.ng_cache_ttl),
                30,
                1,
            )?,
            ng_cache_bytes: usize::try_from(ng_cache_bytes).unwrap_or(usize::MAX),
            port_quarantine: secs(
                "port-quarantine",
                flags.port_quarantine.or(file.port_quarantine),
                crate::session::ports::DEFAULT_PORT_QUARANTINE.as_secs(),
                0,
            )?,
            port_sharing,
            sip: match (file.sip, flags.sip_listen) {
                (None, None) => None,
                (None, Some(a)) => {
                    return Err(ConfigError::Invalid {
                        key: "sip-listen",
                        value: a.to_string(),
                        expected: "a [sip] section in the config file (trunks, pbx) to go with it"
                            .into(),
                    });
                }
                (Some(mut sip), listen) => {
                    if listen.is_some() {
                        sip.trunk_listen = listen;
                    }
                    Some(
                        signaling::config::SipConfig::resolve(sip).map_err(|e| match e {
                            signaling::config::SipConfigError::Invalid {
                                key,
                                value,
                                expected,
                            } => ConfigError::InvalidSip {
                                key,
                                value,
                                expected,
                            },
                        })?,
                    )
                }
            },
            stats_interval,
        })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod example {
    use super::*;

    /// The shipped example must stay valid.
    #[test]
    fn example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/media-relay.example.toml");
        let file = FileConfig::load(&path).unwrap();
        let c = RunConfig::resolve(file, FileConfig::default(), 10).unwrap();
        assert_eq!(c.interfaces.len(), 2);
        assert_eq!(c.interfaces[1].name.as_deref(), Some("pbx"));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            c.session.alerts,
            crate::session::AlertThresholds::default(),
            "the example states the defaults"
        );
    }

    /// So must the demo's.
    #[test]
    fn demo_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/demo.toml");
        let file = FileConfig::load(&path).unwrap();
        let c = RunConfig::resolve(file, FileConfig::default(), 10).unwrap();
        assert_eq!(c.interfaces[0].netdev, "ra");
        assert!(c.sip.is_some());
    }
}
