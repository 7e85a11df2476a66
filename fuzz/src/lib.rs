//! What the fuzz targets share: how one input holds several messages, and
//! the session engine over an in-memory media plane.
//!
//! A target that needs a sequence of messages (datagrams into the SIP
//! agent, ng commands into the engine, packets into a call) reads its
//! input as parts separated by [`SEPARATOR`], a line of its own that
//! neither SIP, SDP nor bencode contains, so the seed files stay readable
//! and libFuzzer's mutations can add, drop and reorder parts.

pub mod engine;

/// Between two parts of one input.
pub const SEPARATOR: &[u8] = b"\n--fuzz--\n";

/// The parts of `data`, at most `max` of them (later ones are ignored:
/// they would only slow every execution down).
pub fn parts(data: &[u8], max: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < max {
        match find(rest, SEPARATOR) {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => {
                out.push(rest);
                break;
            }
        }
    }
    out
}

/// Parts joined: the inverse of [`parts`] (used to write seeds).
pub fn join<T: AsRef<[u8]>>(parts: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(SEPARATOR);
        }
        out.extend_from_slice(part.as_ref());
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_join_are_inverse() {
        let joined = join(&[&b"a"[..], b"", b"bc"]);
        assert_eq!(parts(&joined, 10), vec![&b"a"[..], b"", b"bc"]);
        assert_eq!(parts(&joined, 2), vec![&b"a"[..], b""]);
        assert_eq!(parts(b"", 10), vec![&b""[..]]);
    }
}
