//! `cargo xtask bench`: builds and runs the benchmark binary (release, as
//! root) from the tests crate, which owns the test bed.

use crate::{
    setup,
    util::{self, step},
};

pub fn run(
    quick: bool,
    only: &[String],
    compare: &[String],
    report_only: bool,
    host_idle: bool,
    probe: Option<&str>,
) -> anyhow::Result<()> {
    // Writing the report again needs no privileges.
    if !report_only && !util::is_root() {
        util::banner(
            "the benchmarks need root (network namespaces, XDP): run `sudo cargo xtask bench`",
        );
        anyhow::bail!("not root");
    }
    if !report_only {
        // One command on a fresh clone: the XDP object's toolchain and the
        // peers measured beside the relay (rtpengine, SIPp) first.
        setup::run()?;
    }
    step("building the benchmark (release)");
    // The benchmark drives the `media-relay` daemon too.
    util::cargo(&[
        "build",
        "--release",
        "--package",
        "media-relay-tests",
        "--package",
        "media-user",
        "--bins",
    ])?;
    let bin = util::target_dir().join("release/media-relay-bench");
    let out = util::target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    step("running the benchmark");
    let out_s = out.to_string_lossy().into_owned();
    let mut args = vec!["--out", out_s.as_str()];
    if quick {
        args.push("--quick");
    }
    for part in only {
        args.push("--only");
        args.push(part);
    }
    // Relative to the workspace, as the rest of the command's paths.
    let compare: Vec<String> = compare
        .iter()
        .map(|c| {
            util::workspace_root()
                .join(c)
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for c in &compare {
        args.push("--compare");
        args.push(c);
    }
    if report_only {
        args.push("--report-only");
    }
    if host_idle {
        args.push("--host-idle");
    }
    if let Some(p) = probe {
        args.push("--probe");
        args.push(p);
    }
    util::run(bin, &args)
}
