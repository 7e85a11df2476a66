//! `cargo xtask setup`: every prerequisite, installed idempotently.
//!
//! - Debian packages: LLVM 22 (bpf-linker links against the same LLVM
//!   major as the nightly rustc), iproute2, ethtool, bpftool, util-linux
//!   (setpriv), procps (sysctl), and the real third-party peers the tests
//!   drive (SIPp, rtpengine-ng-client; coturn as the STUN server, nftables
//!   and conntrack for the cloud-edge NAT), and fonts-dejavu-core (the text
//!   of the bench report's plots).
//! - `rust-src` for the nightly toolchain (`-Z build-std=core`), and its
//!   clippy (`cargo xtask lint-bpf`).
//! - bpf-linker 0.13 built against LLVM 22.
//! - cargo-deb 3 (`cargo xtask package`), which needs dpkg-dev's
//!   dpkg-shlibdeps (the package's Depends) and binutils' strip.
//! - cargo-fuzz (`cargo xtask fuzz`), which builds with the nightly
//!   toolchain.

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
    // The cloud-edge test: the edge's 1:1 NAT (nft), its conntrack
    // flushed when the public address changes, and a real STUN server
    // (coturn's turnserver in STUN-only mode).
    "nftables",
    "conntrack",
    "coturn",
    "rtpengine-utils",
    "rtpengine-daemon",
    "dpkg-dev",
    "fonts-dejavu-core",
];

/// What the build alone needs of [`PACKAGES`] (bpf-linker links LLVM 22).
const BUILD_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev"];

const BPF_LINKER_VERSION: &str = "0.13";

/// cargo-deb's major version: 3.x needs Rust 1.85 (the workspace's is
/// 1.95); a new major may change the `[package.metadata.deb]` format.
const CARGO_DEB_MAJOR: u32 = 3;
const CARGO_DEB_MIN_RUST: (u32, u32) = (1, 85);

fn installed(pkg: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", pkg])
        .is_some_and(|s| s.contains("install ok installed"))
}

pub fn run() -> anyhow::Result<()> {
    step("checking prerequisites");
    packages(PACKAGES)?;
    // rust-src for `-Z build-std=core`; clippy for `cargo xtask lint-bpf`.
    nightly_components(&["rust-src", "clippy"])?;
    bpf_linker()?;
    ensure_cargo_deb()?;
    ensure_fuzzing()?;
    step("prerequisites ready");
    Ok(())
}

/// What building the daemon with its XDP object needs, and no more (no
/// test peers: `cargo xtask build-and-load` runs on the appliance):
/// LLVM 22 for bpf-linker, the nightly `rust-src`, bpf-linker.
pub fn ensure_build() -> anyhow::Result<()> {
    step("checking the build's prerequisites");
    packages(BUILD_PACKAGES)?;
    nightly_components(&["rust-src"])?;
    bpf_linker()
}

/// Install the Debian packages of `wanted` that are missing (as root).
fn packages(wanted: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("    Debian packages: all present");
        return Ok(());
    }
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
    Ok(())
}

/// Add the nightly toolchain's `components` that are missing.
fn nightly_components(components: &[&str]) -> anyhow::Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--installed", "--toolchain", "nightly"],
    )
    .context("rustup with a nightly toolchain is required to build the XDP program")?;
    for component in components {
        if installed.lines().any(|l| l.starts_with(component)) {
            eprintln!("    nightly {component}: present");
        } else {
            step(&format!("installing {component} for the nightly toolchain"));
            util::run(
                "rustup",
                &["component", "add", component, "--toolchain", "nightly"],
            )?;
        }
    }
    Ok(())
}

/// bpf-linker [`BPF_LINKER_VERSION`], built against LLVM 22 if missing.
fn bpf_linker() -> anyhow::Result<()> {
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
    Ok(())
}

/// What `cargo xtask fuzz` needs: the nightly toolchain (libFuzzer's
/// coverage instrumentation) and cargo-fuzz, installed with
/// `cargo install` if it is missing. Idempotent.
pub fn ensure_fuzzing() -> anyhow::Result<()> {
    let Some(nightly) = output("rustup", &["run", "nightly", "rustc", "--version"]) else {
        bail!(
            "fuzzing needs the nightly toolchain: `rustup toolchain install nightly` \
             (it also builds the XDP program)"
        );
    };
    eprintln!("    {}: present", nightly.trim());
    let installed = output("cargo", &["fuzz", "--version"]).unwrap_or_default();
    if installed.starts_with("cargo-fuzz ") {
        eprintln!("    {}: present", installed.trim());
        return Ok(());
    }
    step("installing cargo-fuzz (about a minute)");
    util::run("cargo", &["install", "cargo-fuzz", "--locked"]).context("cargo install cargo-fuzz")
}

/// `(major, minor)` of `rustc --version` ("rustc 1.95.0 (…)").
fn rustc_version() -> Option<(u32, u32)> {
    let v = output("rustc", &["--version"])?;
    let mut parts = v.split_whitespace().nth(1)?.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// cargo-deb (`cargo deb`), installed with `cargo install` if it is missing
/// or of another major version. Idempotent.
pub fn ensure_cargo_deb() -> anyhow::Result<()> {
    let installed = output("cargo", &["deb", "--version"]).unwrap_or_default();
    let installed = installed.trim();
    if installed.starts_with(&format!("cargo-deb {CARGO_DEB_MAJOR}.")) {
        eprintln!("    {installed}: present");
        return Ok(());
    }
    let (min_major, min_minor) = CARGO_DEB_MIN_RUST;
    match rustc_version() {
        None => bail!("`rustc --version` failed: install Rust with rustup (https://rustup.rs)"),
        Some(v) if v < CARGO_DEB_MIN_RUST => bail!(
            "cargo-deb {CARGO_DEB_MAJOR} needs Rust {min_major}.{min_minor} or newer, this \
             rustc is {}.{}: run `rustup update stable`",
            v.0,
            v.1
        ),
        Some(_) => {}
    }
    step(&format!(
        "installing cargo-deb {CARGO_DEB_MAJOR}.x ({}; about a minute)",
        if installed.is_empty() {
            "not installed".to_owned()
        } else {
            format!("found {installed}")
        }
    ));
    let status = std::process::Command::new("cargo")
        .args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            &format!("^{CARGO_DEB_MAJOR}"),
        ])
        .status()
        .context("running cargo install cargo-deb")?;
    if !status.success() {
        bail!(
            "installing cargo-deb failed ({status}); see the output above. To retry by hand: \
             `cargo install cargo-deb --locked --version ^{CARGO_DEB_MAJOR}` (liblzma-dev \
             helps if the xz2 crate fails to build)"
        );
    }
    let now = output("cargo", &["deb", "--version"]).with_context(
        || "cargo-deb was installed but `cargo deb --version` fails: is ~/.cargo/bin on PATH?",
    )?;
    eprintln!("    {}: installed", now.trim());
    Ok(())
}
