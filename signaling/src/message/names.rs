//! Header names: the full spelling we write, and the compact forms we
//! accept (RFC 3261 §7.3.3, §20; the extension RFCs that define one).
//!
//! Names compare case-insensitively (§7.3.1). A known header is stored
//! under its full name as the RFC spells it, whichever form or case it
//! arrived in, so lookups and output never see a compact form; an unknown
//! header keeps its name exactly as received.

use std::borrow::Cow;

/// Known headers: (full name, compact form).
const KNOWN: &[(&str, Option<&str>)] = &[
    ("Accept", None),
    ("Accept-Contact", Some("a")), // RFC 3841
    ("Accept-Encoding", None),
    ("Accept-Language", None),
    ("Alert-Info", None),
    ("Allow", None),
    ("Allow-Events", Some("u")), // RFC 6665
    ("Authentication-Info", None),
    ("Authorization", None),
    ("Call-ID", Some("i")),
    ("Call-Info", None),
    ("Contact", Some("m")),
    ("Content-Disposition", None),
    ("Content-Encoding", Some("e")),
    ("Content-Language", None),
    ("Content-Length", Some("l")),
    ("Content-Type", Some("c")),
    ("CSeq", None),
    ("Date", None),
    ("Error-Info", None),
    ("Event", Some("o")), // RFC 6665
    ("Expires", None),
    ("From", Some("f")),
    ("Identity", Some("y")), // RFC 8224
    ("In-Reply-To", None),
    ("Max-Forwards", None),
    ("MIME-Version", None),
    ("Min-Expires", None),
    ("Min-SE", None), // RFC 4028
    ("Organization", None),
    ("P-Asserted-Identity", None), // RFC 3325
    ("P-Preferred-Identity", None),
    ("Priority", None),
    ("Privacy", None), // RFC 3323
    ("Proxy-Authenticate", None),
    ("Proxy-Authorization", None),
    ("Proxy-Require", None),
    ("RAck", None),   // RFC 3262
    ("Reason", None), // RFC 3326
    ("Record-Route", None),
    ("Refer-To", Some("r")),       // RFC 3515
    ("Referred-By", Some("b")),    // RFC 3892
    ("Reject-Contact", Some("j")), // RFC 3841
    ("Replaces", None),            // RFC 3891
    ("Reply-To", None),
    ("Request-Disposition", Some("d")), // RFC 3841
    ("Require", None),
    ("Retry-After", None),
    ("Route", None),
    ("RSeq", None), // RFC 3262
    ("Server", None),
    ("Session-Expires", Some("x")), // RFC 4028
    ("Subject", Some("s")),
    ("Subscription-State", None), // RFC 6665
    ("Supported", Some("k")),
    ("Timestamp", None),
    ("To", Some("t")),
    ("Unsupported", None),
    ("User-Agent", None),
    ("Via", Some("v")),
    ("Warning", None),
    ("WWW-Authenticate", None),
];

pub(super) const VIA: &str = "Via";
pub(super) const FROM: &str = "From";
pub(super) const TO: &str = "To";
pub(super) const CALL_ID: &str = "Call-ID";
pub(super) const CSEQ: &str = "CSeq";
pub(super) const CONTACT: &str = "Contact";
pub(super) const CONTENT_LENGTH: &str = "Content-Length";
pub(super) const CONTENT_TYPE: &str = "Content-Type";
pub(super) const MAX_FORWARDS: &str = "Max-Forwards";
pub(super) const ROUTE: &str = "Route";
pub(super) const RECORD_ROUTE: &str = "Record-Route";
pub(super) const TIMESTAMP: &str = "Timestamp";

/// The full name of a known header given in any case, full or compact.
/// (Runs for every header line: a length check first keeps it cheap.)
pub(super) fn known(name: &str) -> Option<&'static str> {
    if name.len() == 1 {
        for &(full, compact) in KNOWN {
            if let Some(compact) = compact
                && compact.eq_ignore_ascii_case(name)
            {
                return Some(full);
            }
        }
        return None;
    }
    KNOWN
        .iter()
        .map(|&(full, _)| full)
        .find(|full| full.len() == name.len() && full.eq_ignore_ascii_case(name))
}

/// The name a header is stored and written under.
pub(super) fn canonical(name: &str) -> Cow<'_, str> {
    known(name).map_or(Cow::Borrowed(name), Cow::Borrowed)
}

/// Headers whose comma-joined values (§7.3.1) are kept as one entry per
/// value, because a proxy adds and removes them one at a time (§16.6,
/// §16.7, §16.12).
pub(super) fn is_list(canonical_name: &str) -> bool {
    [VIA, ROUTE, RECORD_ROUTE].contains(&canonical_name)
}
