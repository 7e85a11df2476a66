//! The SDP as lines of text, each with its own terminator, so that every
//! line the relay does not change can be copied back byte for byte.

/// One line of the original SDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Line<'a> {
    /// The line without its terminator.
    pub(super) text: &'a str,
    /// `"\r\n"`, `"\n"`, or `""` for a last line without one.
    pub(super) eol: &'static str,
}

impl<'a> Line<'a> {
    /// The type letter of a `<type>=<value>` line (RFC 8866 §5).
    pub(super) fn key(&self) -> Option<u8> {
        match self.text.as_bytes() {
            [key, b'=', ..] => Some(*key),
            _ => None,
        }
    }

    /// What follows `<type>=`.
    pub(super) fn value(&self) -> Option<&'a str> {
        self.key().and_then(|_| self.text.get(2..))
    }
}

/// Split `text` into lines the way `sdp-types` does (bstr's `lines()`): a
/// line ends at `\n`, and a `\r` right before it belongs to the terminator.
/// Line `i` here is line `i + 1` in `sdp-types`' error messages, because
/// both count empty lines.
///
/// RFC 8866 §5 mandates CRLF, but LF-only SDP is common (RFC 8866 §5
/// itself asks parsers to accept it), so both are kept as they come.
pub(super) fn split_lines(text: &str) -> Vec<Line<'_>> {
    let mut lines = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match rest.split_once('\n') {
            Some((line, next)) => {
                let (text, eol) = match line.strip_suffix('\r') {
                    Some(text) => (text, "\r\n"),
                    None => (line, "\n"),
                };
                lines.push(Line { text, eol });
                rest = next;
            }
            None => {
                lines.push(Line {
                    text: rest,
                    eol: "",
                });
                rest = "";
            }
        }
    }
    lines
}

/// The line ending for lines the relay adds: the first line's, else CRLF
/// as RFC 8866 §5 prescribes.
pub(super) fn eol_style(lines: &[Line<'_>]) -> &'static str {
    match lines
        .iter()
        .map(|line| line.eol)
        .find(|eol| !eol.is_empty())
    {
        Some(eol) => eol,
        None => "\r\n",
    }
}

/// Byte ranges of the space-separated fields of `text`, runs of spaces
/// being one separator — the field splitting `sdp-types` applies to `o=`.
pub(super) fn fields(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = None;
    for (at, byte) in text.bytes().enumerate() {
        match (byte == b' ', start) {
            (false, None) => start = Some(at),
            (true, Some(from)) => {
                out.push(from..at);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(from) = start {
        out.push(from..text.len());
    }
    out
}

/// `text` with each range replaced by its string; ranges must not overlap.
/// A range that does not fit `text` is ignored rather than panicking.
pub(super) fn splice(text: &str, mut edits: Vec<(std::ops::Range<usize>, String)>) -> String {
    edits.sort_by_key(|(range, _)| range.start);
    let mut out = String::with_capacity(text.len() + 16);
    let mut at = 0;
    for (range, replacement) in edits {
        let (Some(before), true) = (text.get(at..range.start), text.get(range.clone()).is_some())
        else {
            continue;
        };
        out.push_str(before);
        out.push_str(&replacement);
        at = range.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_terminators() {
        let lines = split_lines("v=0\r\no=x\n\r\ns=-");
        assert_eq!(
            lines,
            [
                Line {
                    text: "v=0",
                    eol: "\r\n"
                },
                Line {
                    text: "o=x",
                    eol: "\n"
                },
                Line {
                    text: "",
                    eol: "\r\n"
                },
                Line {
                    text: "s=-",
                    eol: ""
                },
            ]
        );
        assert_eq!(eol_style(&lines), "\r\n");
        assert_eq!(eol_style(&split_lines("v=0")), "\r\n");
        assert_eq!(eol_style(&split_lines("v=0\ns=-\r\n")), "\n");
    }

    #[test]
    fn fields_and_splice() {
        let text = "-  1 2 IN IP4 198.18.99.1 ";
        let f = fields(text);
        assert_eq!(f.len(), 6);
        assert_eq!(&text[f[2].clone()], "2");
        let out = splice(
            text,
            vec![
                (f[5].clone(), "192.0.2.1".into()),
                (f[2].clone(), "3".into()),
            ],
        );
        assert_eq!(out, "-  1 3 IN IP4 192.0.2.1 ");
        // Out-of-range edits are dropped, not a panic.
        assert_eq!(splice("abc", vec![(5..9, "x".into())]), "abc");
    }
}
