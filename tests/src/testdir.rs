//! The files a test owns: one temporary directory per test (configuration
//! files, SDP, daemon logs, SIPp logs), removed when the test passes, kept
//! — and its path printed — when it fails.
//!
//! Why: the root tests run in parallel threads of one process, so any path
//! derived from the process (`/tmp/mr-<pid>-<name>`) is shared between
//! tests and one test's file can be overwritten by another's between write
//! and read. A directory created by `tempfile` is unique and private to the
//! test that made it.
//!
//! Everything else a root test uses is per test too (see README, Tests):
//! network namespaces carry the pid and a counter (`mr-<role>-<pid>-<n>`),
//! so interface names, loopback ports (ng on 127.0.0.1:2223, SIP on 5060,
//! SIPp's control port) and sysctls live inside namespaces of that test
//! alone; bpffs pin directories carry the pid and a counter. The package
//! install test is the exception: it owns fixed host paths (the unit's pin
//! directory, the installed package) and runs alone, after every other
//! tier, from `cargo xtask test`.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
};

use anyhow::Context as _;

/// A test's own temporary directory. Removed on drop, unless the test
/// panicked or [`TestDir::keep`] was called (by [`root_test`] when the test
/// returned an error): then it stays and its path is printed.
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    label: String,
    keep: AtomicBool,
    counter: AtomicU32,
}

/// `name` reduced to characters that are safe in a file name.
fn file_safe(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    if s.is_empty() { "test".to_owned() } else { s }
}

impl TestDir {
    /// A new directory `mr-<label>-XXXXXX` under the temp dir (`$TMPDIR`).
    pub fn new(label: &str) -> anyhow::Result<Self> {
        let label = file_safe(label);
        let dir = tempfile::Builder::new()
            .prefix(&format!("mr-{label}-"))
            .tempdir()
            .context("creating the test's temporary directory (is $TMPDIR writable?)")?;
        Ok(Self {
            dir: Some(dir),
            label,
            keep: AtomicBool::new(false),
            counter: AtomicU32::new(0),
        })
    }

    /// A directory labelled with the running test's name (libtest names
    /// each test's thread after the test).
    pub fn for_current_test() -> anyhow::Result<Self> {
        let thread = std::thread::current();
        Self::new(thread.name().unwrap_or("test"))
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }

    /// A path in this directory for a new file called `name`, unique
    /// within the directory (`<n>-<name>`): two daemons of one test never
    /// share a log.
    pub fn unique(&self, name: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.path().join(format!("{n}-{}", file_safe(name)))
    }

    /// Write `contents` to a new file named after `name`; returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> anyhow::Result<PathBuf> {
        let path = self.unique(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Create a new subdirectory named after `name`; returns its path.
    pub fn create_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.unique(name);
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(path)
    }

    /// Keep the directory when this is dropped (the test failed).
    pub fn keep(&self) {
        self.keep.store(true, Ordering::Relaxed);
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        if self.keep.load(Ordering::Relaxed) || std::thread::panicking() {
            let path = dir.keep();
            // Straight to stderr: the harness shows captured output only for
            // failed tests, which is exactly when this matters.
            let _ = writeln!(
                std::io::stderr(),
                "test files of {} kept in {}",
                self.label,
                path.display()
            );
        }
    }
}

/// Run the root-only test `name`: without root, print the SKIPPED banner
/// ([`crate::require_root`]) and pass; with root, run `f` with a fresh
/// [`TestDir`] that is removed if `f` succeeds and kept (its path added to
/// the error) if it fails or panics.
pub fn root_test(name: &str, f: impl FnOnce(&TestDir) -> anyhow::Result<()>) -> anyhow::Result<()> {
    if !crate::require_root(name) {
        return Ok(());
    }
    let dir = TestDir::new(name)?;
    match f(&dir) {
        Ok(()) => Ok(()),
        Err(e) => {
            dir.keep();
            Err(e.context(format!(
                "{name} failed; its files are kept in {}",
                dir.path().display()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_when_passed_kept_when_failed() {
        let passed = TestDir::new("unit-pass").unwrap();
        let f = passed.write("a.txt", "x").unwrap();
        let g = passed.write("a.txt", "y").unwrap();
        assert_ne!(f, g, "the same name twice gives two files");
        let root = passed.path().to_owned();
        drop(passed);
        assert!(!root.exists());

        let failed = TestDir::new("unit/fail me").unwrap();
        let root = failed.path().to_owned();
        assert!(
            root.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("mr-unit_fail_me-")
        );
        failed.keep();
        drop(failed);
        assert!(root.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn two_directories_never_share_a_path() {
        let a = TestDir::new("same").unwrap();
        let b = TestDir::new("same").unwrap();
        assert_ne!(a.path(), b.path());
        assert_ne!(
            a.write("x.sdp", "a").unwrap(),
            b.write("x.sdp", "b").unwrap()
        );
    }
}
