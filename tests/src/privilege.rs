//! Root-only tests say so loudly when they cannot run.

use std::io::Write as _;

/// `true` if this process is root. Otherwise prints a SKIPPED banner for
/// `test` straight to the terminal (bypassing the test harness's output
/// capture, so it is never hidden) and returns `false`.
#[must_use]
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {test} needs root (network namespaces, XDP, bpffs); run the tests as \
         root, e.g. `sudo cargo xtask test` ***\n"
    );
    false
}
