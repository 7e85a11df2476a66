//! `cargo xtask package`. (Skeleton: being implemented.)

pub fn run(install_test: bool) -> anyhow::Result<()> {
    let _ = install_test;
    anyhow::bail!("packaging is being implemented")
}
