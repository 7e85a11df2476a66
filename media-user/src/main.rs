//! `media-relay`: the appliance's one binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use media_user::{
    cli,
    config::{DEFAULT_LISTEN_NG, FileConfig, InterfaceEntry, RunConfig},
    daemon::{self, XdpModeArg},
    logging::{self, LogFormat},
};

#[derive(Parser)]
#[command(name = "media-relay", version, about = "XDP RTP media relay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the media daemon.
    Run(RunArgs),
    /// Validate a configuration (file plus flags) without starting anything.
    Check(RunArgs),
    /// The running daemon's calls, one line each (or the last ended ones).
    Calls {
        #[command(flatten)]
        target: Target,
        /// The most recently ended calls instead (their final figures).
        #[arg(long)]
        ended: bool,
        /// At most this many calls.
        #[arg(long, default_value_t = 500)]
        limit: usize,
    },
    /// One call in detail: streams, endpoints, latching, counters.
    Call {
        #[command(flatten)]
        target: Target,
        /// The call's SIP Call-ID.
        call_id: String,
    },
    /// Totals, ports, XDP mode per interface, data-plane counters.
    Stats {
        #[command(flatten)]
        target: Target,
    },
    /// End everything a stopped or crashed daemon left forwarding: detach
    /// the XDP program from every interface, remove the pinned maps (flows
    /// and call records), release the media ports. Refused while a daemon
    /// runs on these pins. (A plain stop keeps calls up for the next start.)
    Teardown {
        /// Read pin-root and the port range from this configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// bpffs directory of the pins (default: the configuration's, else
        /// /sys/fs/bpf/media-relay).
        #[arg(long)]
        pin_root: Option<PathBuf>,
    },
}

/// Which daemon the operator commands talk to, and how they print.
#[derive(Args)]
struct Target {
    /// The daemon's ng address (default: its `listen-ng`, from --config
    /// if given, else 127.0.0.1:2223).
    #[arg(long)]
    ng: Option<SocketAddr>,
    /// Read the ng address from this configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl Target {
    fn client(&self) -> anyhow::Result<cli::NgClient> {
        let addr = match (self.ng, &self.config) {
            (Some(a), _) => a,
            (None, Some(path)) => FileConfig::load(path)?
                .listen_ng
                .unwrap_or_else(|| DEFAULT_LISTEN_NG.parse().expect("valid default")),
            (None, None) => DEFAULT_LISTEN_NG.parse().expect("valid default"),
        };
        cli::NgClient::new(addr)
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn operator(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Calls {
            target,
            ended,
            limit,
        } => {
            let calls = cli::calls(&mut target.client()?, limit, ended)?;
            if target.json {
                print_json(&calls)
            } else {
                println!("{}", cli::calls_table(&calls));
                Ok(())
            }
        }
        Command::Call { target, call_id } => {
            let report = cli::call(&mut target.client()?, &call_id)?;
            if target.json {
                let mut j = cli::to_json(&report);
                if let Some(o) = j.as_object_mut() {
                    o.remove("result");
                    o.insert("call-id".into(), call_id.into());
                }
                print_json(&j)
            } else {
                println!("{}", cli::call_table(&call_id, &report));
                Ok(())
            }
        }
        Command::Stats { target } => {
            let s = cli::stats(&mut target.client()?)?;
            if target.json {
                print_json(&cli::to_json(&s))
            } else {
                print!("{}", cli::stats_table(&s));
                Ok(())
            }
        }
        Command::Teardown { config, pin_root } => {
            let file = match &config {
                Some(path) => FileConfig::load(path)?,
                None => FileConfig::default(),
            };
            let root = pin_root
                .or(file.pin_root)
                .unwrap_or_else(|| PathBuf::from(media_ebpf::maps::PIN_ROOT));
            let ports = (
                file.port_min
                    .unwrap_or(media_user::config::DEFAULT_PORT_MIN),
                file.port_max
                    .unwrap_or(media_user::config::DEFAULT_PORT_MAX),
            );
            daemon::teardown(&root, ports)
        }
        Command::Run(_) | Command::Check(_) => unreachable!("not an operator command"),
    }
}

/// Every key of the config file, as a flag; flags win over the file.
#[derive(Args)]
struct RunArgs {
    /// TOML configuration file (see config/media-relay.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Network interface to relay media on and attach XDP to (repeatable);
    /// replaces the file's [[interface]] tables.
    #[arg(long = "interface", short = 'i')]
    interfaces: Vec<String>,
    /// Where the ng control protocol listens (no authentication: keep it on loopback).
    #[arg(long)]
    listen_ng: Option<SocketAddr>,
    /// Answer ng only from these networks (CIDR or address; repeatable or
    /// comma-separated); others are dropped unanswered and counted.
    #[arg(long, value_delimiter = ',')]
    ng_allow: Vec<String>,
    /// First port of the media port range.
    #[arg(long)]
    port_min: Option<u16>,
    /// Last port of the media port range.
    #[arg(long)]
    port_max: Option<u16>,
    /// XDP attach mode.
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpModeArg>,
    /// Address to advertise in SDP for the first interface (1:1 NAT), or
    /// `stun` to discover it with --stun-server.
    #[arg(long)]
    advertise: Option<media_user::config::Advertise>,
    /// STUN server (ip:port) for `advertise = "stun"` (repeatable or
    /// comma-separated).
    #[arg(long = "stun-server", value_delimiter = ',')]
    stun_servers: Vec<String>,
    /// Seconds between STUN re-checks of the public address (default 60).
    #[arg(long)]
    stun_interval: Option<u64>,
    /// Seconds without media before a live call is ended.
    #[arg(long)]
    timeout: Option<u64>,
    /// Seconds without media before a call on hold is ended.
    #[arg(long)]
    silent_timeout: Option<u64>,
    /// Seconds an offer may stay unanswered.
    #[arg(long)]
    offer_timeout: Option<u64>,
    /// Default seconds between `delete` and the release of a call's ports.
    #[arg(long)]
    delete_delay: Option<u64>,
    /// Seconds a stream learns its peer's source after its first packet.
    #[arg(long)]
    learning_window: Option<u64>,
    /// Run the SIP agent too, trunks sending to this address (needs the
    /// [sip] section of the config file for trunks and the PBX).
    #[arg(long)]
    sip_listen: Option<SocketAddr>,
    /// Seconds ng replies are kept to answer retransmitted requests.
    #[arg(long)]
    ng_cache_ttl: Option<u64>,
    /// Bytes of ng replies kept for retransmissions at most (oldest evicted).
    #[arg(long)]
    ng_cache_bytes: Option<u64>,
    /// m= lines per SDP at most (twice that per call).
    #[arg(long)]
    max_media: Option<u64>,
    /// Seconds a released port pair rests before another call gets it.
    #[arg(long)]
    port_quarantine: Option<u64>,
    /// Port sharing: many calls per local port pair, told apart by their
    /// remote endpoints (`port-sharing = true`; for a narrow forwarded
    /// port range).
    #[arg(long)]
    port_sharing: bool,
    /// Streams one shared port pair carries at most (default 64).
    #[arg(long)]
    port_sharing_max_per_port: Option<u64>,
    /// Capacity of the XDP flow table (one flow per direction per stream).
    #[arg(long)]
    max_flows: Option<u32>,
    /// Switch the XDP program's per-stream quality accounting (loss,
    /// jitter, RTCP) off; flows keep their packet and byte counters
    /// (`quality-telemetry = false`).
    #[arg(long)]
    no_quality_telemetry: bool,
    /// Threads of the userspace path (0: one per CPU).
    #[arg(long)]
    userspace_threads: Option<u64>,
    /// Milliseconds a packet may wait on the userspace path before it is
    /// dropped as stale (default 5).
    #[arg(long)]
    userspace_max_delay: Option<u64>,
    /// Nice value of the userspace path's threads (default -10; below 0
    /// needs CAP_SYS_NICE).
    #[arg(long, allow_hyphen_values = true)]
    userspace_nice: Option<i32>,
    /// Hold a CPU wake-up latency request of this many microseconds while
    /// running (0: idle CPUs poll; for dedicated hosts, VMs whose idle
    /// vCPUs halt at once above all).
    #[arg(long)]
    cpu_wake_latency: Option<u32>,
    /// bpffs directory for pinned maps (a layout version is appended).
    #[arg(long)]
    pin_root: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Serve Prometheus `/metrics` and `/health` on this address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Seconds between status summaries (debug log level).
    #[arg(long, default_value_t = 10)]
    stats_interval: u64,
}

impl RunArgs {
    fn resolve(self) -> anyhow::Result<RunConfig> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let flags = FileConfig {
            interface: self
                .interfaces
                .into_iter()
                .map(|netdev| InterfaceEntry {
                    netdev,
                    ..InterfaceEntry::default()
                })
                .collect(),
            listen_ng: self.listen_ng,
            ng_allow: (!self.ng_allow.is_empty()).then_some(self.ng_allow),
            port_min: self.port_min,
            port_max: self.port_max,
            xdp_mode: self.xdp_mode,
            advertise: self.advertise,
            stun_servers: (!self.stun_servers.is_empty()).then_some(self.stun_servers),
            stun_interval: self.stun_interval,
            timeout: self.timeout,
            silent_timeout: self.silent_timeout,
            offer_timeout: self.offer_timeout,
            delete_delay: self.delete_delay,
            learning_window: self.learning_window,
            ng_cache_ttl: self.ng_cache_ttl,
            ng_cache_bytes: self.ng_cache_bytes,
            max_media: self.max_media,
            port_quarantine: self.port_quarantine,
            port_sharing: self.port_sharing.then_some(true),
            port_sharing_max_per_port: self.port_sharing_max_per_port,
            max_flows: self.max_flows,
            quality_telemetry: self.no_quality_telemetry.then_some(false),
            userspace_threads: self.userspace_threads,
            userspace_max_delay: self.userspace_max_delay,
            userspace_nice: self.userspace_nice,
            cpu_wake_latency: self.cpu_wake_latency,
            pin_root: self.pin_root,
            log_format: self.log_format,
            metrics_listen: self.metrics_listen,
            quality_alerts: None,
            sip: None,
            sip_listen: self.sip_listen,
        };
        Ok(RunConfig::resolve(file, flags, self.stats_interval)?)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => args.resolve().map(|cfg| {
            println!(
                "configuration OK: {} interface(s), ng on {}, ports {}-{}, XDP {:?}, SIP agent {}",
                cfg.interfaces.len(),
                cfg.listen_ng,
                cfg.port_min,
                cfg.port_max,
                cfg.xdp_mode,
                cfg.sip.as_ref().map_or_else(
                    || "off".to_owned(),
                    |s| format!("on {} / {}", s.trunk_listen, s.pbx_listen)
                )
            );
        }),
        Command::Run(args) => args.resolve().and_then(|cfg| {
            logging::init(cfg.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(daemon::run(cfg)))
        }),
        command => operator(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("media-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}
