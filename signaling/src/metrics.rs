//! The agent's counters as `metrics` (Prometheus when the media daemon
//! installed its recorder; nothing otherwise). Copied once a second from
//! [`Stats`] as absolute values: the agent counts, this only publishes.

use metrics::{counter, gauge};

use crate::proxy::Stats;

pub fn publish(stats: &Stats, calls: usize) {
    gauge!("media_relay_sip_calls_active").set(calls as f64);
    counter!("media_relay_sip_calls_total").absolute(stats.calls_total);
    for (method, n) in &stats.requests {
        counter!("media_relay_sip_requests_total", "method" => method.clone()).absolute(*n);
    }
    for ((method, code), n) in &stats.responses_by_method {
        counter!(
            "media_relay_sip_responses_total",
            "method" => method.clone(),
            "code" => code.to_string()
        )
        .absolute(*n);
    }
    for (code, n) in &stats.invite_failures {
        counter!("media_relay_sip_calls_failed_total", "code" => code.to_string()).absolute(*n);
    }
    for (reason, n) in [
        ("untrusted_source", stats.rejected_sources),
        ("malformed", stats.malformed),
        ("rate_limited", stats.rate_limited),
        ("max_calls", stats.max_calls_rejected),
        ("advertise_unknown", stats.advertise_unknown),
        ("no_route", stats.no_route),
        ("ng_error", stats.ng_errors),
        ("stray_response", stats.stray_responses),
    ] {
        counter!("media_relay_sip_rejected_total", "reason" => reason).absolute(n);
    }
    // In-dialog requests not forwarded (unknown_dialog, bad_signature,
    // forbidden_target, loop, ended_call).
    for (reason, n) in &stats.in_dialog_refused {
        counter!("media_relay_sip_rejected_total", "reason" => reason.clone()).absolute(*n);
    }
    counter!("media_relay_sip_refusals_unanswered_total").absolute(stats.refusals_unanswered);
    counter!("media_relay_rejected_sources_total", "path" => "sip")
        .absolute(stats.rejected_sources);
    counter!("media_relay_sip_media_timeouts_total").absolute(stats.media_timeouts);
    counter!("media_relay_sip_dialogs_restored_total").absolute(stats.dialogs_restored);
    counter!("media_relay_sip_restored_without_media_total").absolute(stats.restored_without_media);
    for (reason, n) in &stats.dialogs_skipped {
        counter!("media_relay_sip_dialogs_skipped_total", "reason" => reason.clone()).absolute(*n);
    }
    for (name, n) in stats.dialog_store.fields() {
        match name {
            "kept" => gauge!("media_relay_sip_dialog_store_kept").set(n as f64),
            "records" => gauge!("media_relay_sip_dialog_store_records").set(n as f64),
            "bytes" => gauge!("media_relay_sip_dialog_store_bytes").set(n as f64),
            "last_write_us" => {
                gauge!("media_relay_sip_dialog_store_last_write_seconds").set(n as f64 / 1e6);
            }
            counted => {
                // writes, write_errors, unreadable_files
                counter!(format!("media_relay_sip_dialog_store_{counted}_total")).absolute(n);
            }
        }
    }
    for (name, n) in stats.transport.fields() {
        match name {
            "tcp_connections" => gauge!("media_relay_sip_tcp_connections").set(n as f64),
            "events_dropped" => counter!("media_relay_sip_events_dropped_total").absolute(n),
            refused if refused.starts_with("tcp_refused_") => {
                let reason = &refused["tcp_refused_".len()..];
                counter!("media_relay_sip_tcp_refused_total", "reason" => reason).absolute(n);
            }
            closed => {
                // tcp_idle_closed, tcp_slow_closed, tcp_write_queue_full
                let reason = closed
                    .trim_start_matches("tcp_")
                    .trim_end_matches("_closed");
                counter!("media_relay_sip_tcp_closed_total", "reason" => reason).absolute(n);
            }
        }
    }
}
