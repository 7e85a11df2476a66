//! `cargo xtask demo`. (Skeleton: being implemented.)

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("the demo is being implemented")
}
