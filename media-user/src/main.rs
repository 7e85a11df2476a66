//! `media-relay`: the appliance's one binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use media_user::{
    config::{FileConfig, InterfaceEntry, RunConfig},
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
    /// First port of the media port range.
    #[arg(long)]
    port_min: Option<u16>,
    /// Last port of the media port range.
    #[arg(long)]
    port_max: Option<u16>,
    /// XDP attach mode.
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpModeArg>,
    /// Address to advertise in SDP for the first interface (1:1 NAT).
    #[arg(long)]
    advertise: Option<std::net::IpAddr>,
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
    /// Capacity of the XDP flow table (one flow per direction per stream).
    #[arg(long)]
    max_flows: Option<u32>,
    /// bpffs directory for pinned maps (a layout version is appended).
    #[arg(long)]
    pin_root: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
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
            port_min: self.port_min,
            port_max: self.port_max,
            xdp_mode: self.xdp_mode,
            advertise: self.advertise,
            timeout: self.timeout,
            silent_timeout: self.silent_timeout,
            offer_timeout: self.offer_timeout,
            delete_delay: self.delete_delay,
            learning_window: self.learning_window,
            ng_cache_ttl: self.ng_cache_ttl,
            max_flows: self.max_flows,
            pin_root: self.pin_root,
            log_format: self.log_format,
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
