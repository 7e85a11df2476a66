//! `cargo xtask lint-bpf`: clippy on the XDP programs, for the BPF target.
//!
//! The programs' modules only exist under `cfg(target_arch = "bpf")`, so
//! the host's `cargo clippy --workspace` sees their stubs alone. This checks
//! them as media-user's build script builds them (see aya-build): with the
//! nightly toolchain, `-Z build-std=core`, the `bpf_target_arch` cfg and
//! the release profile, into a target directory of its own. Clippy does not
//! link, so bpf-linker is not needed; nightly's rust-src and clippy are
//! (`cargo xtask setup`).

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{step, workspace_root};

pub fn bpf() -> anyhow::Result<()> {
    let target = if cfg!(target_endian = "big") {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    };
    step(&format!(
        "clippy on the XDP programs ({target}, nightly, -D warnings)"
    ));
    let root = workspace_root();
    let status = Command::new("rustup")
        .args(["run", "nightly", "cargo", "clippy"])
        .args(["--package", "media-ebpf", "--bins", "--release"])
        .args(["--target", target, "-Z", "build-std=core", "--target-dir"])
        .arg(root.join("target/bpf-clippy"))
        .args(["--", "-D", "warnings"])
        // As aya-build sets it (aya-ebpf reads it for the host's pt_regs).
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        )
        // The outer (stable) cargo's compiler must not leak in.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .current_dir(&root)
        .status()
        .context("running `rustup run nightly cargo clippy` (is rustup installed?)")?;
    if !status.success() {
        bail!(
            "clippy on the XDP programs failed ({status}); see above. If nightly lacks clippy \
             or rust-src, `cargo xtask setup` adds them"
        );
    }
    Ok(())
}
