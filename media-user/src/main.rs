//! `media-relay`: the appliance's one binary.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use media_user::{
    daemon::{self, RunConfig, XdpModeArg},
    logging::{self, LogFormat},
};

#[derive(Parser)]
#[command(name = "media-relay", version, about = "XDP RTP media relay")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the media daemon.
    Run {
        /// Network interface to attach the XDP data plane to (repeatable).
        #[arg(long = "interface", short = 'i')]
        interfaces: Vec<String>,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
        xdp_mode: XdpModeArg,
        /// Capacity of the flow table (one flow per direction per stream).
        #[arg(long, default_value_t = media_ebpf::maps::DEFAULT_MAX_FLOWS)]
        max_flows: u32,
        /// bpffs directory for pinned maps (a layout version is appended).
        #[arg(long, default_value = media_ebpf::maps::PIN_ROOT)]
        pin_root: PathBuf,
        /// Seconds between data-plane counter summaries (debug log level).
        #[arg(long, default_value_t = 10)]
        stats_interval: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Run {
            interfaces,
            xdp_mode,
            max_flows,
            pin_root,
            stats_interval,
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(daemon::run(RunConfig {
                    interfaces,
                    xdp_mode,
                    max_flows,
                    pin_root,
                    stats_interval,
                }))
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
