//! The agent's runtime directory: what must outlive the agent's process
//! but not the host — the Record-Route secret (`secret.rs`) and the
//! dialogs of established calls (`dialog_store.rs`). It is
//! `$RUNTIME_DIRECTORY` (systemd sets it from `RuntimeDirectory=`), else
//! `/run/media-relay`, and it is used only when it is memory-backed
//! (tmpfs/ramfs): a failing or read-only disk must never stop signaling,
//! and a reboot, which ends every call anyway, also ends what is kept here.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

/// linux/magic.h: the filesystems that live in memory only.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Why the runtime directory (or a file in it) cannot be used.
#[derive(Debug, Error)]
pub enum RunDirError {
    #[error("{path} is not on a memory-backed filesystem (tmpfs/ramfs)")]
    NotInMemory { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is writable by others or not owned by this user")]
    Insecure { path: PathBuf },
}

impl RunDirError {
    /// The file or directory does not exist.
    pub fn not_found(&self) -> bool {
        matches!(self, RunDirError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

pub(super) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RunDirError + '_ {
    move |source| RunDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The runtime directory: `$RUNTIME_DIRECTORY` (its first entry: systemd
/// joins several with `:`), else `/run/media-relay`.
pub fn path() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| {
            v.to_string_lossy()
                .split(':')
                .next()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("/run/media-relay"))
}

/// Whether `path` (or, while it does not exist, its parent) is on tmpfs
/// or ramfs.
pub(super) fn memory_backed(path: &Path) -> Result<bool, RunDirError> {
    let probe = if path.exists() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    let fs = nix::sys::statfs::statfs(probe).map_err(|e| RunDirError::Io {
        path: probe.to_owned(),
        source: e.into(),
    })?;
    let kind = fs.filesystem_type().0 as i64;
    Ok(kind == TMPFS_MAGIC || kind == RAMFS_MAGIC)
}

/// Owned by us, with none of `mask`'s permission bits.
pub(super) fn check_private(
    path: &Path,
    meta: &fs::Metadata,
    mask: u32,
) -> Result<(), RunDirError> {
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & mask != 0 {
        return Err(RunDirError::Insecure {
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// `dir`, memory-backed, created 0700 if missing, ours and writable by
/// nobody else.
pub fn prepare(dir: &Path) -> Result<(), RunDirError> {
    if !memory_backed(dir)? {
        return Err(RunDirError::NotInMemory {
            path: dir.to_owned(),
        });
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error(dir)(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(io_error(dir))?;
    if !meta.is_dir() {
        return Err(RunDirError::Insecure {
            path: dir.to_owned(),
        });
    }
    // systemd creates RuntimeDirectory= 0755 by default: readable is fine
    // (the files are 0600), writable by others is not (they could swap
    // them).
    check_private(dir, &meta, 0o022)
}

/// Open a regular file of ours for reading, never through a symlink;
/// `mask`: the permission bits it must not have.
pub fn open_private(path: &Path, mask: u32) -> Result<File, RunDirError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(o_nofollow())
        .open(path)
        .map_err(io_error(path))?;
    let meta = f.metadata().map_err(io_error(path))?;
    if !meta.is_file() {
        return Err(RunDirError::Insecure {
            path: path.to_owned(),
        });
    }
    check_private(path, &meta, mask)?;
    Ok(f)
}

/// Create `path` (0600, never through a symlink), replacing a file left
/// there (a file written aside, before it is renamed or linked in place).
pub fn create_private(path: &Path) -> Result<File, RunDirError> {
    let _ = fs::remove_file(path);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(o_nofollow())
        .open(path)
        .map_err(io_error(path))
}
