//! What a restarted agent needs of an established call, in the form that
//! outlives the agent's process. The agent emits a call's record when its
//! dialog is established or changes ([`Output::Dialog`]) and `None` when
//! the call ends; the runtime keeps them in memory-backed storage
//! (`runtime/dialog_store.rs`) and hands them to the next agent
//! ([`Agent::restore`]) before it serves traffic. A restored call is a
//! known dialog again: its in-dialog requests match it, `calls` counts it,
//! and a media timeout ends it with a BYE to both sides as before.
//!
//! A record is one version byte, then the call in postcard's wire format
//! (serde; a compact encoding with a written, stable specification). A
//! record of another version, one that does not decode, one not saved for
//! [`MAX_AGE`], or one whose trunk the configuration no longer has is
//! skipped and counted, never misread.
//!
//! CSeq: the agent's own BYE carries the CSeq of the party it stands in
//! for, plus one, and a UA refuses a request whose CSeq is lower than one
//! it has seen in the dialog (RFC 3261 §12.2.2: 500). Records reach the
//! store at most once a second, so the last requests a party sent before
//! the agent died may be missing from its record; a restored party's CSeq
//! is therefore raised by [`CSEQ_MARGIN`], far more in-dialog requests
//! than a dialog sends in a second. Raising it is harmless: the agent's
//! BYE is the dialog's last request (§12.2.1.1 only asks for "higher").

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    agent::{Call, Side},
    dialog::{Dialog, Party, tag_of},
};
use crate::config::SipConfig;

/// The record layout; bump it when [`Record`] changes. A record of any
/// other version is skipped (an older agent never misreads a newer one's).
pub const VERSION: u8 = 1;

/// A record not saved for this long is skipped: a call that ended while
/// no agent ran (its BYE found none) must not live on forever.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Added to each party's CSeq when a call is restored (see the module
/// doc).
pub const CSEQ_MARGIN: u32 = 1000;

/// RFC 3261 §8.1.1.5: a CSeq sequence number is less than 2**31.
pub const MAX_CSEQ: u32 = (1 << 31) - 1;

/// Why a record was not restored (the counter's label).
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum Skip {
    #[error("the record does not decode")]
    Unreadable,
    #[error("record version {0}, this agent reads {VERSION}")]
    Version(u8),
    #[error("the record was saved more than a day ago")]
    Stale,
    #[error("the record's trunk is not configured any more")]
    UnknownTrunk,
}

impl Skip {
    pub const fn reason(self) -> &'static str {
        match self {
            Skip::Unreadable => "unreadable",
            Skip::Version(_) => "version",
            Skip::Stale => "stale",
            Skip::UnknownTrunk => "unknown_trunk",
        }
    }
}

/// A side, by the name the configuration gives it (a trunk's index may
/// change between runs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum SideName {
    Pbx,
    Trunk(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PartyRecord {
    target: String,
    routes: Vec<String>,
    cseq: u32,
}

/// One established call (version [`VERSION`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    call_id: String,
    /// Unix seconds when the record was made.
    saved: u64,
    from_side: SideName,
    to_side: SideName,
    node: SocketAddr,
    late_offer: bool,
    caller_side_local: SocketAddr,
    callee_side_local: SocketAddr,
    /// The caller's From and the callee's To header values, with tags.
    caller_header: String,
    callee_header: String,
    caller: PartyRecord,
    callee: PartyRecord,
}

fn side_name(cfg: &SipConfig, side: Side) -> SideName {
    match side {
        Side::Pbx => SideName::Pbx,
        Side::Trunk(i) => SideName::Trunk(cfg.trunks[i].0.name.clone()),
    }
}

fn side_of(cfg: &SipConfig, name: &SideName) -> Result<Side, Skip> {
    match name {
        SideName::Pbx => Ok(Side::Pbx),
        SideName::Trunk(n) => cfg
            .trunks
            .iter()
            .position(|(t, _)| t.name == *n)
            .map(Side::Trunk)
            .ok_or(Skip::UnknownTrunk),
    }
}

fn party_record(p: &Party) -> PartyRecord {
    PartyRecord {
        target: p.target.clone(),
        routes: p.routes.clone(),
        cseq: p.cseq,
    }
}

/// The record of an established call (`None` while it has no dialog).
pub(super) fn encode(cfg: &SipConfig, call: &Call, saved: u64) -> Option<Vec<u8>> {
    let d = call.dialog.as_ref()?;
    let record = Record {
        call_id: d.call_id.clone(),
        saved,
        from_side: side_name(cfg, call.from_side),
        to_side: side_name(cfg, call.to_side),
        node: call.node,
        late_offer: call.late_offer,
        caller_side_local: d.caller_side_local,
        callee_side_local: d.callee_side_local,
        caller_header: d.caller.own.clone(),
        callee_header: d.callee.own.clone(),
        caller: party_record(&d.caller),
        callee: party_record(&d.callee),
    };
    postcard::to_extend(&record, vec![VERSION]).ok()
}

/// A record back into a call (CSeqs raised by [`CSEQ_MARGIN`]), if it is
/// usable at unix time `now_unix`.
pub(super) fn decode(
    cfg: &SipConfig,
    bytes: &[u8],
    now_unix: u64,
    now: Instant,
) -> Result<Call, Skip> {
    let (&version, body) = bytes.split_first().ok_or(Skip::Unreadable)?;
    if version != VERSION {
        return Err(Skip::Version(version));
    }
    let r: Record = postcard::from_bytes(body).map_err(|_| Skip::Unreadable)?;
    if now_unix.saturating_sub(r.saved) > MAX_AGE.as_secs() {
        return Err(Skip::Stale);
    }
    let from_side = side_of(cfg, &r.from_side)?;
    let to_side = side_of(cfg, &r.to_side)?;
    // A party without a tag (RFC 2543 allowed it) has the empty tag, as
    // in the agent that wrote the record (`routing.rs`, `media.rs`).
    let caller_tag = tag_of(&r.caller_header).unwrap_or_default();
    let callee_tag = tag_of(&r.callee_header).unwrap_or_default();
    let raised = |cseq: u32| cseq.saturating_add(CSEQ_MARGIN).min(MAX_CSEQ);
    let party = |p: PartyRecord, own: &str, other: &str| Party {
        target: p.target,
        routes: p.routes,
        own: own.to_owned(),
        other: other.to_owned(),
        cseq: raised(p.cseq),
    };
    let dialog = Dialog {
        call_id: r.call_id,
        caller: party(r.caller, &r.caller_header, &r.callee_header),
        callee: party(r.callee, &r.callee_header, &r.caller_header),
        caller_side_local: r.caller_side_local,
        callee_side_local: r.callee_side_local,
    };
    Ok(Call {
        caller_tag,
        from_side,
        to_side,
        node: r.node,
        late_offer: r.late_offer,
        dialog: Some(dialog),
        answered_tags: vec![callee_tag],
        sdp_cache: std::collections::HashMap::new(),
        created: now,
        ended: false,
        restored: true,
    })
}

/// `n` distinct records of a typical carrier call (E.164 numbers, a
/// display name, one proxy on each side): what the store's tests and
/// measurements hold.
#[cfg(test)]
pub(crate) fn sample_records(cfg: &SipConfig, n: usize, saved: u64) -> Vec<Vec<u8>> {
    let party = |target: &str, route: &str, own: &str, other: &str, cseq| Party {
        target: target.to_owned(),
        routes: vec![route.to_owned()],
        own: own.to_owned(),
        other: other.to_owned(),
        cseq,
    };
    (0..n)
        .map(|i| {
            let from = format!(
                "\"+49 30 1234567\" <sip:+49301234567@198.18.1.2;user=phone>;tag=as{i:08x}-1f2e3d"
            );
            let to = format!("<sip:+4940987654@198.18.1.1;user=phone>;tag=pbx-{i:08x}-9a8b");
            let call = Call {
                caller_tag: format!("as{i:08x}-1f2e3d"),
                from_side: Side::Trunk(0),
                to_side: Side::Pbx,
                node: "127.0.0.1:2223".parse().unwrap(),
                late_offer: false,
                dialog: Some(Dialog {
                    call_id: format!("{i:08x}-4f1c2b7e9d@198.18.1.2"),
                    caller: party(
                        "sip:+49301234567@198.18.1.2:5060;transport=udp",
                        "<sip:198.18.1.3;lr>",
                        &from,
                        &to,
                        1,
                    ),
                    callee: party(
                        "sip:4940987654@198.18.2.2:5060",
                        "<sip:198.18.2.3;lr>",
                        &to,
                        &from,
                        0,
                    ),
                    caller_side_local: "198.18.1.1:5060".parse().unwrap(),
                    callee_side_local: "198.18.2.1:5060".parse().unwrap(),
                }),
                answered_tags: Vec::new(),
                sdp_cache: std::collections::HashMap::new(),
                created: Instant::now(),
                ended: false,
                restored: false,
            };
            encode(cfg, &call, saved).unwrap()
        })
        .collect()
}
