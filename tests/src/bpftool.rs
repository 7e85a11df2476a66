//! `bpftool -j` for the tests that look into pinned maps and links.

use anyhow::Context as _;

/// `bpftool -j ARGS`, parsed.
pub fn json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = std::process::Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("running bpftool")?;
    anyhow::ensure!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The first 8 bytes of a key bpftool printed (`["0x12", ...]`), as the
/// little-endian u64 they hold (a session record's call hash).
pub fn key_prefix(key: &serde_json::Value) -> anyhow::Result<u64> {
    let bytes = key
        .as_array()
        .context("a key that is no byte list")?
        .iter()
        .take(8)
        .map(|b| {
            let s = b.as_str().context("a key byte that is no string")?;
            Ok(u8::from_str_radix(s.trim_start_matches("0x"), 16)?)
        })
        .collect::<anyhow::Result<Vec<u8>>>()?;
    let bytes: [u8; 8] = bytes
        .try_into()
        .ok()
        .context("a key shorter than 8 bytes")?;
    Ok(u64::from_le_bytes(bytes))
}
