//! Builds the XDP programs of `media-ebpf` for the BPF target (with the
//! nightly toolchain and bpf-linker, see `cargo xtask setup`) into OUT_DIR,
//! from where `src/dataplane/object.rs` embeds them.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // A fuzzing build (cargo-fuzz compiles with `--cfg fuzzing`, which
    // build scripts see as CARGO_CFG_FUZZING) drives the parsers and the
    // session engine only and never loads an XDP program: empty objects
    // stand in (loading one fails), which saves building the programs for
    // the BPF target, a minute of the CI fuzz step (`cargo xtask fuzz`).
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
        for program in ["media-relay-xdp", "testbed-xdp"] {
            std::fs::write(out.join(program), []).context("writing an empty object")?;
        }
        return Ok(());
    }
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest)
        .parent()
        .context("media-user has a parent directory")?
        .join("media-ebpf");
    let root = root.to_str().context("workspace path is UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "media-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the XDP programs failed; `cargo xtask setup` installs the nightly \
         rust-src component and bpf-linker they need",
    )
}
