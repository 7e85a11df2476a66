//! The seed corpus of the `sdp_rewrite` fuzz target (`fuzz/corpus/`):
//! every SDP of these tests — the corpus, and the inputs of the rewrite
//! and inspect tables — once each. Written by
//! `cargo xtask fuzz --write-seeds` (README, "Fuzzing"); ignored by a
//! plain `cargo test`.

use std::{collections::BTreeSet, fs, path::Path};

#[test]
#[ignore = "writes fuzz/corpus/sdp_rewrite: cargo xtask fuzz --write-seeds"]
fn write_fuzz_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/sdp_rewrite");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mut seen = BTreeSet::new();
    let mut sdps: Vec<String> = super::corpus::all().into_iter().map(|(_, s)| s).collect();
    sdps.extend(super::rewrite_table::cases().into_iter().map(|c| c.input));
    sdps.extend(super::inspect_table::cases().into_iter().map(|(_, s, _)| s));
    for sdp in sdps {
        if seen.insert(sdp.clone()) {
            fs::write(dir.join(format!("sdp_{:02}", seen.len())), sdp).unwrap();
        }
    }
}
