//! `media-relay-sip`: the SIP agent on its own, driving media nodes
//! (media-relay, rtpengine, several of them) over ng. Reads the `[sip]`
//! section of a media-relay configuration file.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;
use signaling::config::{SipConfig, SipFile};

#[derive(Parser)]
#[command(name = "media-relay-sip", version, about = "media-relay's SIP agent")]
struct Cli {
    /// TOML file with a [sip] section (media-relay's configuration file).
    #[arg(long)]
    config: PathBuf,
}

fn load(path: &PathBuf) -> anyhow::Result<SipConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("config {}: {}", path.display(), e.message()))?;
    let sip = table
        .get("sip")
        .cloned()
        .with_context(|| format!("config {}: no [sip] section", path.display()))?;
    let file: SipFile = sip.try_into().map_err(|e: toml::de::Error| {
        anyhow::anyhow!("config {} [sip]: {}", path.display(), e.message())
    })?;
    Ok(SipConfig::resolve(file)?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = load(&cli.config).and_then(|cfg| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(async {
                // SIGTERM (systemctl stop/restart) and SIGINT stop the agent
                // cleanly: its last dialog records are written for the next.
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .context("handling SIGTERM")?;
                signaling::runtime::run(cfg, async move {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                })
                .await
            })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("media-relay-sip: {e:#}");
            ExitCode::FAILURE
        }
    }
}
