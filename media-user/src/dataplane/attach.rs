//! Attaching the relay program to an interface, with native → generic
//! fallback.

use aya::programs::{ProgramError, Xdp, XdpMode as AyaMode, xdp::XdpLinkId};
use thiserror::Error;
use tracing::{info, warn};

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, otherwise generic.
    Auto,
    /// Native (driver) mode only: fail if the driver cannot.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
}

/// The mode an attachment actually got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
}

impl AttachedMode {
    pub const fn name(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        }
    }
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The relay program attached to one interface.
#[derive(Debug)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    pub mode: AttachedMode,
    /// Whether `auto` had to fall back from native to generic.
    pub fell_back: bool,
    link: XdpLinkId,
}

#[derive(Debug, Error)]
pub enum AttachError {
    #[error(
        "interface {interface}: native XDP is not available ({source}); use --xdp-mode generic \
         (or auto) on this interface"
    )]
    NativeUnsupported {
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error(
        "interface {interface} already has an XDP program attached; see `ip link show dev \
         {interface}` and remove it with `ip link set dev {interface} xdp off` if it is stale"
    )]
    Busy { interface: String },
    #[error("attaching XDP ({mode}) to {interface} failed: {source}")]
    Failed {
        interface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("the relay is already attached to {interface}")]
    AlreadyAttached { interface: String },
    #[error("the relay is not attached to {interface}")]
    NotAttached { interface: String },
    #[error("detaching XDP from {interface} failed: {source}")]
    Detach {
        interface: String,
        #[source]
        source: ProgramError,
    },
}

fn errno(e: &ProgramError) -> Option<i32> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        source = s.source();
    }
    None
}

fn try_attach(
    program: &mut Xdp,
    interface: &str,
    ifindex: u32,
    mode: AttachedMode,
) -> Result<XdpLinkId, AttachError> {
    let aya_mode = match mode {
        AttachedMode::Native => AyaMode::Driver,
        AttachedMode::Generic => AyaMode::Skb,
    };
    program
        .attach_to_if_index(ifindex, aya_mode)
        .map_err(|source| match errno(&source) {
            Some(libc::EBUSY | libc::EEXIST) => AttachError::Busy {
                interface: interface.to_owned(),
            },
            Some(libc::EOPNOTSUPP) if mode == AttachedMode::Native => {
                AttachError::NativeUnsupported {
                    interface: interface.to_owned(),
                    source,
                }
            }
            _ => AttachError::Failed {
                interface: interface.to_owned(),
                mode: mode.name(),
                source,
            },
        })
}

pub(super) fn attach(
    program: &mut Xdp,
    interface: &str,
    ifindex: u32,
    mode: XdpMode,
) -> Result<Attachment, AttachError> {
    let (link, got, fell_back) = match mode {
        XdpMode::Native => (
            try_attach(program, interface, ifindex, AttachedMode::Native)?,
            AttachedMode::Native,
            false,
        ),
        XdpMode::Generic => (
            try_attach(program, interface, ifindex, AttachedMode::Generic)?,
            AttachedMode::Generic,
            false,
        ),
        XdpMode::Auto => match try_attach(program, interface, ifindex, AttachedMode::Native) {
            Ok(link) => (link, AttachedMode::Native, false),
            Err(e @ AttachError::Busy { .. }) => return Err(e),
            Err(e) => {
                warn!(
                    interface,
                    reason = %e,
                    "native XDP unavailable, falling back to generic mode (slower)"
                );
                (
                    try_attach(program, interface, ifindex, AttachedMode::Generic)?,
                    AttachedMode::Generic,
                    true,
                )
            }
        },
    };
    info!(interface, ifindex, mode = %got, fell_back, "XDP attached");
    Ok(Attachment {
        interface: interface.to_owned(),
        ifindex,
        mode: got,
        fell_back,
        link,
    })
}

pub(super) fn detach(program: &mut Xdp, a: Attachment) -> Result<(), AttachError> {
    program
        .detach(a.link)
        .map_err(|source| AttachError::Detach {
            interface: a.interface.clone(),
            source,
        })?;
    info!(interface = a.interface, "XDP detached");
    Ok(())
}
