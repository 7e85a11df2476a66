//! (being written)

use std::path::Path;

pub fn run(_quick: bool, _machine: &str, _out: &Path) -> anyhow::Result<()> {
    Ok(())
}
