//! One daemon per pin root: an exclusive `flock(2)` on the pin root
//! directory, taken before anything is loaded or attached and held for
//! the daemon's life.
//!
//! The kernel drops the lock with the last descriptor, so a daemon killed
//! with `kill -9` never leaves it behind, and the lock is there from the
//! first moment the daemon can touch the pins: unlike the data plane's
//! heartbeat (written once the calls are adopted, for the XDP program's
//! sake), it leaves no window in which `media-relay teardown` or a second
//! daemon could take a starting daemon's pins from under it.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PinLockError {
    #[error(
        "a media-relay daemon is running on {path}: stop it first (systemctl stop media-relay, \
         or SIGTERM); two processes must not share its calls"
    )]
    Held { path: PathBuf },
    #[error("cannot lock the pin directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The pin root, locked for as long as this value lives.
#[derive(Debug)]
pub struct PinLock {
    _lock: Flock<File>,
}

impl PinLock {
    /// Lock an existing pin root without waiting: [`PinLockError::Held`]
    /// while another process (a running daemon, a teardown) holds it.
    pub fn acquire(pin_root: &Path) -> Result<Self, PinLockError> {
        let io_err = |source| PinLockError::Io {
            path: pin_root.to_owned(),
            source,
        };
        let dir = File::open(pin_root).map_err(io_err)?;
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Self { _lock: lock }),
            Err((_, Errno::EWOULDBLOCK)) => Err(PinLockError::Held {
                path: pin_root.to_owned(),
            }),
            Err((_, e)) => Err(io_err(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = PinLock::acquire(dir.path()).unwrap();
        let second = PinLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(second, PinLockError::Held { .. }), "{second}");
        assert!(second.to_string().contains("stop it first"), "{second}");
        drop(first);
        PinLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_missing_pin_root_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nothing-here");
        let e = PinLock::acquire(&missing).unwrap_err();
        assert!(matches!(e, PinLockError::Io { .. }));
        assert!(e.to_string().contains("nothing-here"), "{e}");
    }
}
