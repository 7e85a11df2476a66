//! Attaching the relay program to an interface, with native → generic
//! fallback, through a bpf_link pinned in bpffs: the program stays
//! attached whatever happens to the daemon (a crash, a stop, an upgrade),
//! until the link's pin is removed (`media-relay teardown`). A daemon that
//! finds its interface's link pinned adopts it and swaps its own program
//! in with one atomic `bpf_link_update`: no packet misses a program.

use std::path::{Path, PathBuf};

use aya::programs::{
    ProgramError, Xdp, XdpMode as AyaMode,
    links::{FdLink, LinkError, PinnedLink},
    xdp::{XdpLink, XdpLinkId},
};
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

impl AttachedMode {
    fn from_name(s: &str) -> Option<Self> {
        match s {
            "native" => Some(Self::Native),
            "generic" => Some(Self::Generic),
            _ => None,
        }
    }
}

/// How an attachment is held.
#[derive(Debug)]
enum Held {
    /// A pinned bpf_link (the normal case): it outlives this process.
    Pinned { path: PathBuf, link: FdLink },
    /// Attached without a bpf_link (a kernel without XDP links): owned by
    /// the program, detached when it goes.
    Owned(XdpLinkId),
}

/// The relay program attached to one interface.
#[derive(Debug)]
pub struct Attachment {
    pub interface: String,
    pub ifindex: u32,
    pub mode: AttachedMode,
    /// Whether `auto` had to fall back from native to generic.
    pub fell_back: bool,
    /// Found attached (a pinned link of an earlier run) and taken over.
    pub adopted: bool,
    held: Held,
}

impl Attachment {
    /// Whether the attachment outlives this process.
    pub fn is_pinned(&self) -> bool {
        matches!(self.held, Held::Pinned { .. })
    }
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
    #[error("pinned XDP link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error(
        "pinning the XDP link of {interface} at {path} failed: {source}; is {dir} on bpffs?",
        dir = path.parent().map(|p| p.display().to_string()).unwrap_or_default()
    )]
    Pin {
        interface: String,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("taking over the XDP link of {interface} ({path}) failed: {source}")]
    Replace {
        interface: String,
        path: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("removing the pinned XDP link {path}: {source}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The pin of `interface`'s link in `dir`, and the mode it was made with.
fn pinned_link(dir: &Path, interface: &str) -> Option<(PathBuf, AttachedMode)> {
    ["native", "generic"].into_iter().find_map(|m| {
        let path = dir.join(format!("{interface}@{m}"));
        path.exists()
            .then(|| (path, AttachedMode::from_name(m).expect("a known mode")))
    })
}

/// Interfaces with a link pinned in `dir`.
pub(super) fn pinned_interfaces(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let (iface, mode) = name.rsplit_once('@')?;
            AttachedMode::from_name(mode).map(|_| iface.to_owned())
        })
        .collect()
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

/// Take over `interface`'s pinned link, if there is one: the new
/// program replaces the old one atomically. `None` when nothing is pinned,
/// or the pin is stale (its interface went away); a stale pin is removed.
fn adopt(
    program: &mut Xdp,
    dir: &Path,
    interface: &str,
    ifindex: u32,
    wanted: XdpMode,
) -> Result<Option<Attachment>, AttachError> {
    let Some((path, mode)) = pinned_link(dir, interface) else {
        return Ok(None);
    };
    let link_err = |source| AttachError::Link {
        path: path.clone(),
        source,
    };
    let fd: FdLink = PinnedLink::from_pin(&path).map_err(link_err)?.into();
    let link = XdpLink::try_from(fd).map_err(link_err)?;
    let id = match program.attach_to_link(link) {
        Ok(id) => id,
        Err(e) => {
            // The interface was deleted (and maybe re-created) since: the
            // link is defunct. Start afresh.
            warn!(interface, path = %path.display(), error = %e, "stale pinned XDP link removed");
            std::fs::remove_file(&path).map_err(|source| AttachError::Unpin {
                path: path.clone(),
                source,
            })?;
            return Ok(None);
        }
    };
    let link = program
        .take_link(id)
        .map_err(|source| AttachError::Replace {
            interface: interface.to_owned(),
            path: path.clone(),
            source: Box::new(source),
        })?;
    let link = FdLink::try_from(link).map_err(link_err)?;
    let wanted_mode = match wanted {
        XdpMode::Native => Some(AttachedMode::Native),
        XdpMode::Generic => Some(AttachedMode::Generic),
        XdpMode::Auto => None,
    };
    if wanted_mode.is_some_and(|w| w != mode) {
        warn!(
            interface,
            attached = %mode,
            "XDP stays in the mode its calls started in; `media-relay teardown` (which ends them) and a restart change it"
        );
    }
    info!(interface, ifindex, mode = %mode, "XDP link adopted: program replaced in place");
    Ok(Some(Attachment {
        interface: interface.to_owned(),
        ifindex,
        mode,
        fell_back: false,
        adopted: true,
        held: Held::Pinned { path, link },
    }))
}

/// Attach to `interface`, adopting a link an earlier run pinned in `dir`,
/// else attaching afresh and pinning the new link there.
pub(super) fn attach(
    program: &mut Xdp,
    dir: &Path,
    interface: &str,
    ifindex: u32,
    mode: XdpMode,
) -> Result<Attachment, AttachError> {
    if let Some(a) = adopt(program, dir, interface, ifindex, mode)? {
        return Ok(a);
    }
    let (got, fell_back, id) = attach_new(program, interface, ifindex, mode)?;
    let path = dir.join(format!("{interface}@{got}"));
    let link = program
        .take_link(id)
        .map_err(|source| AttachError::Failed {
            interface: interface.to_owned(),
            mode: got.name(),
            source,
        })?;
    let held = match FdLink::try_from(link) {
        Ok(fd) => {
            let pinned = fd.pin(&path).map_err(|source| AttachError::Pin {
                interface: interface.to_owned(),
                path: path.clone(),
                source,
            })?;
            Held::Pinned {
                path,
                link: pinned.into(),
            }
        }
        Err(_) => {
            // No bpf_link for XDP on this kernel: the attachment went with
            // the link; attach again, owned by the program.
            warn!(
                interface,
                "XDP attached without a bpf_link: calls will not survive a restart of the daemon"
            );
            let (_, _, id) = attach_new(program, interface, ifindex, mode)?;
            Held::Owned(id)
        }
    };
    Ok(Attachment {
        interface: interface.to_owned(),
        ifindex,
        mode: got,
        fell_back,
        adopted: false,
        held,
    })
}

fn attach_new(
    program: &mut Xdp,
    interface: &str,
    ifindex: u32,
    mode: XdpMode,
) -> Result<(AttachedMode, bool, XdpLinkId), AttachError> {
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
    Ok((got, fell_back, link))
}

/// Detach for good: remove the link's pin (the kernel detaches once this
/// process drops its descriptor too).
pub(super) fn detach(program: &mut Xdp, a: Attachment) -> Result<(), AttachError> {
    match a.held {
        Held::Pinned { path, link } => {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(AttachError::Unpin { path, source: e });
                }
                _ => {}
            }
            drop(link);
        }
        Held::Owned(id) => program.detach(id).map_err(|source| AttachError::Detach {
            interface: a.interface.clone(),
            source,
        })?,
    }
    info!(interface = a.interface, "XDP detached");
    Ok(())
}

/// Remove a pinned link found in `dir` for an interface this daemon is
/// not configured for (the program detaches from it).
pub(super) fn unpin_other(dir: &Path, interface: &str) -> Result<(), AttachError> {
    if let Some((path, _)) = pinned_link(dir, interface) {
        std::fs::remove_file(&path).map_err(|source| AttachError::Unpin { path, source })?;
        info!(
            interface,
            "XDP detached from an interface no longer configured"
        );
    }
    Ok(())
}
