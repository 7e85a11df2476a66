//! Where the Record-Route signing secret comes from. It must outlive the
//! agent's process — calls set up before a restart carry the signature in
//! their route sets — but not be left lying on a disk:
//!
//! 1. `record-route-secret` in the configuration (the operator's choice,
//!    e.g. the same secret on two agents that stand in for each other);
//! 2. else `sip-record-route.key` in the runtime directory (`rundir.rs`:
//!    `$RUNTIME_DIRECTORY`, which systemd sets from `RuntimeDirectory=`,
//!    else `/run/media-relay`): 32 random bytes, created on the first
//!    start (directory 0700, file 0600), read on the next ones — only if
//!    that directory is memory-backed (tmpfs/ramfs), so a reboot, which
//!    ends every call anyway, also ends the secret;
//! 3. else a random secret in memory only, with a warning: after a restart
//!    the in-dialog requests of older calls are refused.

use std::{
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
};

use thiserror::Error;
use tracing::{info, warn};

use super::rundir::{self, RunDirError};
use crate::proxy::RouteKey;

/// The file's name in the runtime directory.
pub const FILE: &str = "sip-record-route.key";

/// Bytes of a generated secret.
const SECRET_BYTES: usize = 32;

/// Why the runtime directory cannot hold the secret.
#[derive(Debug, Error)]
pub enum SecretError {
    #[error(transparent)]
    Dir(#[from] RunDirError),
    #[error("{path} holds {len} bytes, not {SECRET_BYTES}")]
    BadLength { path: PathBuf, len: usize },
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// Where the secret came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Config,
    /// Read from this file, or created there (`created`).
    File {
        path: PathBuf,
        created: bool,
    },
    /// In memory only.
    Memory,
}

fn random_secret() -> Result<[u8; SECRET_BYTES], SecretError> {
    let mut b = [0u8; SECRET_BYTES];
    getrandom::fill(&mut b).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(b)
}

fn read_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
    // The file is the secret: nobody else may read it.
    let mut f = rundir::open_private(path, 0o077)?;
    let mut bytes = Vec::with_capacity(SECRET_BYTES);
    io::Read::by_ref(&mut f)
        .take(SECRET_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(rundir::io_error(path))?;
    if bytes.len() != SECRET_BYTES {
        return Err(SecretError::BadLength {
            path: path.to_owned(),
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

/// The secret kept in `dir`: read, or created on the first start. Two
/// agents starting at once agree on one: the file appears complete or
/// not at all (written aside, then hard-linked into place).
pub fn from_dir(dir: &Path) -> Result<(Vec<u8>, bool), SecretError> {
    rundir::prepare(dir)?;
    let path = dir.join(FILE);
    match read_secret(&path) {
        Ok(bytes) => return Ok((bytes, false)),
        Err(SecretError::Dir(e)) if e.not_found() => {}
        Err(e) => return Err(e),
    }
    let secret = random_secret()?;
    let aside = dir.join(format!(".{FILE}.{}", std::process::id()));
    let mut f = rundir::create_private(&aside)?;
    f.write_all(&secret).map_err(rundir::io_error(&aside))?;
    drop(f);
    let linked = std::fs::hard_link(&aside, &path);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => Ok((secret.to_vec(), true)),
        // Another agent was first: use its secret.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok((read_secret(&path)?, false)),
        Err(e) => Err(rundir::io_error(&path)(e).into()),
    }
}

/// The agent's key: from the configuration, else from `dir`, else in
/// memory (logged either way). Fails only without randomness from the OS.
pub fn load(configured: Option<RouteKey>, dir: &Path) -> Result<(RouteKey, Origin), SecretError> {
    if let Some(key) = configured {
        info!("Record-Route secret from the configuration (record-route-secret)");
        return Ok((key, Origin::Config));
    }
    let problem = match from_dir(dir) {
        Ok((bytes, created)) => {
            if let Some(key) = RouteKey::new(&bytes) {
                let path = dir.join(FILE);
                info!(path = %path.display(), created, "Record-Route secret from the runtime directory");
                return Ok((key, Origin::File { path, created }));
            }
            format!("{} too short", dir.join(FILE).display())
        }
        Err(e) => e.to_string(),
    };
    warn!(
        problem = %problem,
        "Record-Route secret kept in memory only: after a restart, in-dialog requests of calls \
         older than this process will be refused (set sip.record-route-secret, or give the agent \
         a memory-backed runtime directory: systemd RuntimeDirectory=, or $RUNTIME_DIRECTORY)"
    );
    let bytes = random_secret()?;
    Ok((
        RouteKey::new(&bytes).expect("32 bytes is long enough"),
        Origin::Memory,
    ))
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;

    /// A fresh directory on /dev/shm (tmpfs on every Linux), removed on drop.
    struct ShmDir(PathBuf);

    impl ShmDir {
        fn new(name: &str) -> Self {
            let p = PathBuf::from(format!(
                "/dev/shm/mr-secret-test-{}-{name}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&p);
            Self(p)
        }
    }

    impl Drop for ShmDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sign(k: &RouteKey) -> String {
        k.sign("call-1")
    }

    #[test]
    fn created_on_the_first_start_and_read_on_the_next() {
        let d = ShmDir::new("reload");
        let (first, origin) = load(None, &d.0).unwrap();
        let path = d.0.join(FILE);
        assert_eq!(
            origin,
            Origin::File {
                path: path.clone(),
                created: true
            }
        );
        let dir_mode = fs::metadata(&d.0).unwrap().permissions().mode() & 0o777;
        let file_mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!((dir_mode, file_mode), (0o700, 0o600));
        assert_eq!(fs::read(&path).unwrap().len(), 32);
        // The restart: the same key, so the same signatures.
        let (again, origin) = load(None, &d.0).unwrap();
        assert_eq!(
            origin,
            Origin::File {
                path,
                created: false
            }
        );
        assert_eq!(sign(&first), sign(&again));
        // Nothing left aside.
        assert_eq!(fs::read_dir(&d.0).unwrap().count(), 1);
    }

    #[test]
    fn the_configured_secret_wins() {
        let d = ShmDir::new("config");
        let k = RouteKey::new(&[5; 32]).unwrap();
        let (key, origin) = load(Some(k.clone()), &d.0).unwrap();
        assert_eq!(origin, Origin::Config);
        assert_eq!(sign(&key), sign(&k));
        assert!(!d.0.exists(), "no file written");
    }

    #[test]
    fn a_file_others_can_read_or_of_the_wrong_size_is_not_used() {
        let d = ShmDir::new("insecure");
        from_dir(&d.0).unwrap();
        let path = d.0.join(FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            from_dir(&d.0),
            Err(SecretError::Dir(RunDirError::Insecure { .. }))
        ));
        let (_, origin) = load(None, &d.0).unwrap();
        assert_eq!(origin, Origin::Memory);
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"short").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            from_dir(&d.0),
            Err(SecretError::BadLength { len: 5, .. })
        ));
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert!(from_dir(&d.0).is_err(), "a symlink is not followed");
    }

    /// A directory on a disk is never used, silently or not: the secret
    /// stays in memory (and a warning says what that means).
    #[test]
    fn a_disk_backed_directory_is_not_used() {
        let disk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target-secret-test");
        if rundir::memory_backed(&disk).unwrap() {
            eprintln!("{} is memory-backed here; nothing to check", disk.display());
            return;
        }
        assert!(matches!(
            from_dir(&disk),
            Err(SecretError::Dir(RunDirError::NotInMemory { .. }))
        ));
        assert!(!disk.exists(), "nothing created on the disk");
        let (a, origin) = load(None, &disk).unwrap();
        assert_eq!(origin, Origin::Memory);
        let (b, _) = load(None, &disk).unwrap();
        assert_ne!(sign(&a), sign(&b), "random per process");
    }
}
