//! `cargo xtask demo`: the whole appliance at work. Checks prerequisites,
//! builds media-relay and the demo driver (release), then runs the demo
//! as root: a carrier and a PBX (SIPp) in network namespaces, media-relay
//! between them with `config/demo.toml`, a few real calls with audio and a
//! per-call table. The driver lives in the tests crate, with the test bed
//! it shares with the tests and benchmarks.

use crate::{
    setup,
    util::{self, step},
};

pub fn run() -> anyhow::Result<()> {
    if !util::is_root() {
        util::banner(
            "the demo creates network namespaces and attaches XDP: run `sudo cargo xtask demo`",
        );
        anyhow::bail!("not root");
    }
    setup::run()?;
    step("building media-relay and the demo driver (release; a few minutes the first time)");
    let release = util::build_release(&[
        ("media-user", "media-relay"),
        ("media-relay-tests", "media-relay-demo"),
    ])?;
    step("running the demo");
    util::run(
        release.join("media-relay-demo"),
        &["--config", "config/demo.toml"],
    )
}
