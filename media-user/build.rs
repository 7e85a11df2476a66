//! Builds the XDP programs of `media-ebpf` for the BPF target (with the
//! nightly toolchain and bpf-linker, see `cargo xtask setup`) into OUT_DIR,
//! from where `src/dataplane/object.rs` embeds them.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
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
