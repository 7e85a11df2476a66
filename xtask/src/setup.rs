//! `cargo xtask setup`: every prerequisite, installed idempotently.
//!
//! - Debian packages: LLVM 22 (bpf-linker links against the same LLVM
//!   major as the nightly rustc), iproute2, ethtool, bpftool, util-linux
//!   (setpriv), procps (sysctl), and the real third-party peers the tests
//!   drive (SIPp, rtpengine-ng-client).
//! - `rust-src` for the nightly toolchain (`-Z build-std=core`).
//! - bpf-linker 0.13 built against LLVM 22.

use anyhow::{Context as _, bail};

use crate::util::{self, output, step};

const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "iproute2",
    "ethtool",
    "bpftool",
    "util-linux",
    "procps",
    "sip-tester",
    "rtpengine-utils",
    "rtpengine-daemon",
];

const BPF_LINKER_VERSION: &str = "0.13";

fn installed(pkg: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", pkg])
        .is_some_and(|s| s.contains("install ok installed"))
}

pub fn run() -> anyhow::Result<()> {
    step("checking prerequisites");
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("    Debian packages: all present");
    } else {
        if !util::is_root() {
            bail!(
                "missing Debian packages {}: run `sudo cargo xtask setup` (or apt-get install them)",
                missing.join(" ")
            );
        }
        step(&format!(
            "installing Debian packages: {}",
            missing.join(" ")
        ));
        util::run("apt-get", &["update", "-q"])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&missing);
        util::run("apt-get", &args).context("apt-get install")?;
    }

    let components = output(
        "rustup",
        &["component", "list", "--installed", "--toolchain", "nightly"],
    )
    .context("rustup with a nightly toolchain is required to build the XDP program")?;
    if components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("    nightly rust-src: present");
    } else {
        step("installing rust-src for the nightly toolchain");
        util::run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }

    let linker = output("bpf-linker", &["--version"]).unwrap_or_default();
    if linker.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        eprintln!("    {}: present", linker.trim());
    } else {
        step(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        ));
        let status = std::process::Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                &format!("~{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env(
                "PATH",
                format!(
                    "/usr/lib/llvm-22/bin:{}",
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .status()
            .context("running cargo install bpf-linker")?;
        if !status.success() {
            bail!("installing bpf-linker failed ({status}); see the output above");
        }
    }
    step("prerequisites ready");
    Ok(())
}
