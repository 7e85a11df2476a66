//! `media-relay run`: load the data plane, attach it, serve until SIGINT or
//! SIGTERM, detach.

use std::path::PathBuf;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info};

use crate::dataplane::{self, DataPlane, XdpMode};

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
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

/// What `run` needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeArg,
    pub max_flows: u32,
    pub pin_root: PathBuf,
    /// Seconds between data-plane counter summaries in the log (debug level).
    pub stats_interval: u64,
}

pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let mode = match cfg.xdp_mode {
        XdpModeArg::Auto => Some(XdpMode::Auto),
        XdpModeArg::Native => Some(XdpMode::Native),
        XdpModeArg::Generic => Some(XdpMode::Generic),
        XdpModeArg::Off => None,
    };
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let mut dp = match mode {
        None => {
            info!("XDP off: no data plane loaded");
            println!("media-relay: XDP off");
            None
        }
        Some(mode) => {
            let mut dp = DataPlane::load(&dataplane::Options {
                pin_root: cfg.pin_root.clone(),
                max_flows: cfg.max_flows,
            })?;
            for interface in &cfg.interfaces {
                let a = dp.attach(interface, mode)?;
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
            if cfg.interfaces.is_empty() {
                info!("no --interface given: data plane loaded but not attached");
            }
            Some(dp)
        }
    };
    info!("media-relay running; stop with Ctrl-C or SIGTERM");

    let mut tick = tokio::time::interval(std::time::Duration::from_secs(cfg.stats_interval.max(1)));
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = tick.tick() => {
                if let Some(dp) = &dp
                    && let Ok(o) = dp.outcomes()
                {
                    debug!(flows = dp.flows().len(), outcomes = ?o, "data plane");
                }
            }
        }
    }
    info!("shutting down");
    if let Some(dp) = dp.as_mut() {
        dp.detach_all()?;
        if let Ok(o) = dp.outcomes() {
            info!(outcomes = ?o, flows = dp.flows().len(), "data plane totals; flows stay pinned");
        }
    }
    Ok(())
}
