//! The periodic tick: delayed deletes, learning windows, the media and
//! offer timeouts that end a call without a `delete`, and the rate samples
//! `statistics` reports.

use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, warn};

use super::{
    backend::{Backend, Counters},
    clock::Now,
    engine::{
        CHECK_BUDGET, END_BUDGET, ENDED_KEPT, ENDS_PER_TICK, EndReason, Ended, Engine,
        LEARNING_CHECK, RATE_SAMPLE, TIMEOUT_CHECK,
    },
};

impl<B: Backend> Engine<B> {
    /// Periodic work: learning windows, timeouts, delayed deletes, rates.
    pub fn tick(&mut self, clock: Now) {
        let now = clock.mono;
        // Only the calls due: a delayed delete, or a counter check.
        let due: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.delete_at.is_some_and(|t| now >= t) || now >= c.next_check)
            .map(|(id, _)| id.clone())
            .collect();
        let mut ended = Vec::new();
        let checking = Instant::now();
        let mut unchecked = 0usize;
        for id in due {
            let delete_due = self
                .calls
                .get(&id)
                .is_some_and(|c| c.delete_at.is_some_and(|t| now >= t));
            if !delete_due && checking.elapsed() >= CHECK_BUDGET {
                // Still due: the next tick reads it.
                unchecked += 1;
                continue;
            }
            if let Some(reason) = self.tick_call(&id, clock) {
                ended.push((id, reason));
            }
        }
        if unchecked > 0 {
            debug!(
                calls = unchecked,
                "calls due a counter check left for the next tick (at most {} ms a tick)",
                CHECK_BUDGET.as_millis()
            );
        }
        let started = Instant::now();
        let mut deferred = 0usize;
        for (n, (id, reason)) in ended.into_iter().enumerate() {
            if n >= ENDS_PER_TICK || started.elapsed() >= END_BUDGET {
                // Due still: looked at again by the next tick.
                if let Some(call) = self.calls.get_mut(&id) {
                    call.next_check = now;
                }
                deferred += 1;
                continue;
            }
            match reason {
                None => self.drop_call(&id, clock, Some("deleted")),
                Some(reason) => {
                    match reason {
                        EndReason::Timeout => self.totals.timeouts += 1,
                        EndReason::SilentTimeout => self.totals.silent_timeouts += 1,
                        EndReason::OfferTimeout => self.totals.offer_timeouts += 1,
                    }
                    warn!(call_id = %id, reason = reason.name(), "call ended by the relay");
                    self.drop_call(&id, clock, Some(reason.name()));
                    if self.ended.len() == ENDED_KEPT {
                        self.ended.pop_front();
                    }
                    self.ended.push_back(Ended {
                        call_id: id,
                        reason,
                        at: clock.wall,
                    });
                }
            }
        }
        if deferred > 0 {
            debug!(
                calls = deferred,
                "calls due to end left for the next tick (at most {ENDS_PER_TICK} or {} ms a tick)",
                END_BUDGET.as_millis()
            );
        }
        self.totals.refused_sources += self.early.expire(now) as u64;
        self.watch_quality(clock);
        self.sample_rates(now);
        self.flush(clock);
        self.keep_engine_record(clock);
    }

    /// Returns `Some(None)` for a due delayed delete, `Some(Some(reason))`
    /// for a timeout.
    #[expect(
        clippy::option_option,
        reason = "delete vs. timeout, both ending the call"
    )]
    fn tick_call(&mut self, id: &str, clock: Now) -> Option<Option<EndReason>> {
        let now = clock.mono;
        let call = self.calls.get_mut(id)?;
        if call.delete_at.is_some_and(|t| now >= t) {
            return Some(None);
        }
        // Reading counters costs map lookups: calls still learning are
        // looked at every second, the others every few seconds (timeouts
        // are counted in seconds anyway).
        if now < call.next_check {
            return None;
        }
        call.next_check = now
            + if call.learning() {
                LEARNING_CHECK
            } else {
                TIMEOUT_CHECK
            };
        let call = self.calls.get(id)?;
        let wall_now = clock.wall;
        let mut last_media: Option<SystemTime> = None;
        let mut changed = Vec::new();
        let mut all_held = true;
        let mono_count = call.monos.len();
        // Learning windows and XDP-seen traffic.
        let mut counters: Vec<(usize, usize, [Counters; 2])> = Vec::new();
        for (mi, mono) in call.monos.iter().enumerate() {
            for (i, m) in mono.media.iter().enumerate() {
                if !m.held() && !m.rejected() {
                    all_held = false;
                }
                if let Some((rtp, rtcp)) = m.locals(mono.local) {
                    counters.push((
                        mi,
                        i,
                        [
                            self.counters_of(rtp, m.slot),
                            self.counters_of(rtcp, m.slot),
                        ],
                    ));
                }
            }
        }
        let call = self.calls.get_mut(id)?;
        call.seen = counters
            .iter()
            .flat_map(|(_, _, c)| c)
            .fold((0, 0, 0), |(p, b, e), c| {
                (p + c.packets, b + c.bytes, e + c.errors)
            });
        let mut touched = false;
        for (mi, i, [crtp, crtcp]) in counters {
            for c in [&crtp, &crtcp] {
                if let Some(t) = c.last_packet {
                    last_media = Some(last_media.map_or(t, |l| l.max(t)));
                }
            }
            let Some(m) = call.monos.get_mut(mi).and_then(|m| m.media.get_mut(i)) else {
                continue;
            };
            // Learning windows, and what the data plane forwarded without
            // us: a latched stream keeps the data plane's last RTP (SSRC,
            // sequence) so that a NAT rebinding is judged against the
            // stream as it is now (issue 16, item 1).
            for (latch, c) in [(&mut m.rtp, &crtp), (&mut m.rtcp, &crtcp)] {
                let was = latch.clone();
                if latch.sync(c.packets, c.last_rtp, now) {
                    changed.push(mi);
                }
                touched |= !latch.same_but_sequence(&was);
            }
        }
        if touched {
            self.dirty.insert(id.to_owned());
        }
        changed.sort_unstable();
        changed.dedup();
        for mi in changed {
            if mi < mono_count {
                self.program(id, mi, now);
            }
        }
        let call = self.calls.get(id)?;
        if !call.answered {
            if now.duration_since(call.last_signal_at) >= self.cfg.offer_timeout {
                return Some(Some(EndReason::OfferTimeout));
            }
            return None;
        }
        let since_signal = now.duration_since(call.last_signal_at);
        let since_media = last_media
            .map_or(since_signal, |t| {
                wall_now.duration_since(t).unwrap_or(Duration::ZERO)
            })
            .min(since_signal);
        let (limit, reason) = if all_held {
            (self.cfg.silent_timeout, EndReason::SilentTimeout)
        } else {
            (self.cfg.timeout, EndReason::Timeout)
        };
        tracing::trace!(
            call_id = %id,
            since_media_ms = since_media.as_millis() as u64,
            since_signal_ms = since_signal.as_millis() as u64,
            media_seen = last_media.is_some(),
            all_held,
            limit_s = limit.as_secs(),
            "timeout check"
        );
        (since_media >= limit).then_some(Some(reason))
    }

    fn sample_rates(&mut self, now: Instant) {
        let (t0, p0, b0, e0) = self.last_sample;
        if now.duration_since(t0) < RATE_SAMPLE {
            return;
        }
        // Ended calls included, so rates do not dip when calls end; live
        // ones as the tick last read them (every second or few).
        let (lp, lb, le) = self.calls.values().fold((0, 0, 0), |(p, b, e), c| {
            (p + c.seen.0, b + c.seen.1, e + c.seen.2)
        });
        let (p, b, e) = (
            self.totals.ended_packets + lp,
            self.totals.ended_bytes + lb,
            self.totals.ended_errors + le,
        );
        let dt = now.duration_since(t0).as_secs_f64();
        if dt > 0.0 {
            self.rates = (
                p.saturating_sub(p0) as f64 / dt,
                b.saturating_sub(b0) as f64 / dt,
                e.saturating_sub(e0) as f64 / dt,
            );
            self.last_sample = (now, p, b, e);
        }
    }
}
