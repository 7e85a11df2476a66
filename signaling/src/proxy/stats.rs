//! The agent's counters: what operators see (OPTIONS `sip:stats@…`, the
//! metrics endpoint) and tests read.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use super::agent::Agent;
use crate::message::Method;

/// Counters, visible to operators (and tests).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub requests: BTreeMap<String, u64>,
    pub responses: BTreeMap<u16, u64>,
    /// Responses sent, by (method of the request, status).
    pub responses_by_method: BTreeMap<(String, u16), u64>,
    /// INVITEs answered with a final failure (≥ 300), by status.
    pub invite_failures: BTreeMap<u16, u64>,
    pub rejected_sources: u64,
    pub malformed: u64,
    pub rate_limited: u64,
    pub max_calls_rejected: u64,
    /// New requests refused (503) while a public address to advertise
    /// (`"media"`) was not known yet.
    pub advertise_unknown: u64,
    pub no_route: u64,
    pub ng_errors: u64,
    pub media_timeouts: u64,
    pub stray_responses: u64,
    pub calls_total: u64,
    /// In-dialog requests refused, by reason (`unknown_dialog`,
    /// `bad_signature`, `forbidden_target`, `loop`, `ended_call`).
    pub in_dialog_refused: BTreeMap<String, u64>,
    /// Refusals (of any kind) not answered: over `refusal-rate`.
    pub refusals_unanswered: u64,
    /// Calls known again from the records of an earlier agent
    /// ([`Agent::restore`]).
    pub dialogs_restored: u64,
    /// Records not restored, by reason (`unreadable`, `version`, `stale`,
    /// `unknown_trunk`).
    pub dialogs_skipped: BTreeMap<String, u64>,
    /// Restored calls their media node did not have: ended with BYEs
    /// (`Agent::check_restored`).
    pub restored_without_media: u64,
    /// What the transports count (their tasks write, this only reads).
    pub transport: Arc<TransportStats>,
    /// What the runtime's store of records counts (it writes, this only
    /// reads).
    pub dialog_store: Arc<DialogStoreStats>,
}

/// Counters of the runtime's store of dialog records
/// (`runtime/dialog_store.rs`), shared with its writer.
#[derive(Debug, Default)]
pub struct DialogStoreStats {
    /// 1 when records are kept in the runtime directory, 0 when in memory
    /// only (no memory-backed runtime directory).
    pub kept: AtomicU64,
    /// Records in the last file written.
    pub records: AtomicU64,
    /// Bytes of the last file written.
    pub bytes: AtomicU64,
    /// Files written.
    pub writes: AtomicU64,
    /// Microseconds the last write took (encode, write aside, rename).
    pub last_write_us: AtomicU64,
    /// Writes that failed (the next change tries again).
    pub write_errors: AtomicU64,
    /// Files found unreadable at start (not ours, another format).
    pub unreadable_files: AtomicU64,
}

impl DialogStoreStats {
    /// Every counter with its name (JSON and metrics).
    pub fn fields(&self) -> [(&'static str, u64); 7] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("kept", get(&self.kept)),
            ("records", get(&self.records)),
            ("bytes", get(&self.bytes)),
            ("writes", get(&self.writes)),
            ("last_write_us", get(&self.last_write_us)),
            ("write_errors", get(&self.write_errors)),
            ("unreadable_files", get(&self.unreadable_files)),
        ]
    }
}

/// Counters of the transport layer (`runtime`), shared with its tasks.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// TCP connections open now (accepted and opened by the agent).
    pub tcp_connections: AtomicU64,
    /// Connections closed at accept: not a trunk or PBX source.
    pub tcp_refused_unknown_source: AtomicU64,
    /// Connections refused (accepted and closed, or not opened): over
    /// `tcp-max-connections`.
    pub tcp_refused_max_connections: AtomicU64,
    /// Connections closed at accept: over `tcp-max-per-source`.
    pub tcp_refused_per_source: AtomicU64,
    /// Closed after `tcp-idle-timeout` without a byte either way.
    pub tcp_idle_closed: AtomicU64,
    /// Closed for holding a partial message longer than
    /// `tcp-message-timeout`.
    pub tcp_slow_closed: AtomicU64,
    /// Closed because `tcp-write-queue` bytes were waiting to be sent.
    pub tcp_write_queue_full: AtomicU64,
    /// Messages dropped because the agent's input queue was full.
    pub events_dropped: AtomicU64,
}

impl TransportStats {
    /// Add one to `counter`.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter with its name (JSON and metrics).
    pub fn fields(&self) -> [(&'static str, u64); 8] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("tcp_connections", get(&self.tcp_connections)),
            (
                "tcp_refused_unknown_source",
                get(&self.tcp_refused_unknown_source),
            ),
            (
                "tcp_refused_max_connections",
                get(&self.tcp_refused_max_connections),
            ),
            ("tcp_refused_per_source", get(&self.tcp_refused_per_source)),
            ("tcp_idle_closed", get(&self.tcp_idle_closed)),
            ("tcp_slow_closed", get(&self.tcp_slow_closed)),
            ("tcp_write_queue_full", get(&self.tcp_write_queue_full)),
            ("events_dropped", get(&self.events_dropped)),
        ]
    }
}

impl Stats {
    pub(super) fn count_response(&mut self, method: &str, status: u16) {
        *self.responses.entry(status).or_default() += 1;
        *self
            .responses_by_method
            .entry((method.to_owned(), status))
            .or_default() += 1;
        if method == Method::Invite.as_str() && status >= 300 {
            *self.invite_failures.entry(status).or_default() += 1;
        }
    }
}

impl Agent {
    /// The counters as one JSON object.
    pub fn stats_json(&self) -> String {
        let s = &self.stats;
        let map = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let fields = |f: &[(&str, u64)]| {
            f.iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let codes = s
            .responses
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "{{\"calls\":{},\"transactions\":{},\"pending_ng\":{},\"calls_total\":{},\"requests\":{{{}}},\"responses\":{{{codes}}},\"rejected_sources\":{},\"malformed\":{},\"rate_limited\":{},\"max_calls_rejected\":{},\"advertise_unknown\":{},\"no_route\":{},\"ng_errors\":{},\"media_timeouts\":{},\"stray_responses\":{},\"in_dialog_refused\":{{{}}},\"refusals_unanswered\":{},\"dialogs_restored\":{},\"dialogs_skipped\":{{{}}},\"restored_without_media\":{},\"dialog_store\":{{{}}},\"transport\":{{{}}}}}",
            self.calls.len(),
            self.transactions(),
            self.pending.len(),
            s.calls_total,
            map(&s.requests),
            s.rejected_sources,
            s.malformed,
            s.rate_limited,
            s.max_calls_rejected,
            s.advertise_unknown,
            s.no_route,
            s.ng_errors,
            s.media_timeouts,
            s.stray_responses,
            map(&s.in_dialog_refused),
            s.refusals_unanswered,
            s.dialogs_restored,
            map(&s.dialogs_skipped),
            s.restored_without_media,
            fields(&s.dialog_store.fields()),
            fields(&s.transport.fields()),
        )
    }
}
