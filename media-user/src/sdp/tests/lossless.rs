//! Writing back what `inspect` read changes nothing, byte for byte — and
//! why we cannot let sdp-types write the SDP.

use super::{corpus::*, *};

/// Every SDP of the tests: the corpus, and the inputs and outputs of the
/// tables.
fn every_sdp() -> Vec<(&'static str, String)> {
    let mut all = all();
    for case in super::rewrite_table::cases() {
        all.push((case.name, case.input));
        all.push((case.name, case.expected));
    }
    for (name, sdp, _) in super::inspect_table::cases() {
        all.push((name, sdp));
    }
    all
}

#[test]
fn identity_rewrite_is_byte_identical() {
    let every = every_sdp();
    assert!(every.len() > 50, "{} SDPs", every.len());
    for (name, sdp) in every {
        let info = inspect(sdp.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut same = identity(&info).unwrap_or_else(|| panic!("{name}: no identity"));
        let out = rewrite(sdp.as_bytes(), &same).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(String::from_utf8_lossy(&out), sdp, "corpus SDP {name}");

        // Writing the same sess-version is no change either.
        same.origin_version = Some(info.origin_version);
        let out = rewrite(sdp.as_bytes(), &same).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&out),
            sdp,
            "corpus SDP {name}, same o="
        );
    }
}

/// Documents the decision in the module doc: sdp-types' writer normalizes
/// (CRLF, single spaces, RFC 8866 field order) and drops what it does not
/// model, so it cannot be used to write the relayed SDP.
#[test]
fn sdp_types_writer_is_not_lossless() {
    let write = |sdp: &str| {
        let session = sdp_types::Session::parse(sdp.as_bytes()).expect("corpus parses");
        let mut out = Vec::new();
        session.write(&mut out).expect("write to a Vec");
        String::from_utf8(out).expect("sdp-types writes UTF-8")
    };

    // LF becomes CRLF.
    assert_ne!(write(&lf(IPV6)), lf(IPV6));
    assert_eq!(write(&lf(IPV6)), crlf(IPV6));

    let odd = write(ODD);
    assert_ne!(odd, ODD);
    // Runs of spaces collapse, unknown lines and media-level r= vanish.
    assert!(odd.contains("o=- 1 2 IN IP6"));
    assert!(!odd.contains("x=unknown line"));
    assert!(!odd.contains("r=7d"));
    // A session-level a= before t= is moved after it.
    let reordered = crlf(&[
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "a=tool:x",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
    ]);
    assert_ne!(write(&reordered), reordered);
}
