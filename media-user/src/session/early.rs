//! Media that overtakes its answer.
//!
//! A called party sends its 183 or 200 and its first RTP at the same
//! moment (SIPp does, and so do many gateways' early media). The RTP goes
//! straight to the relay; the answer goes through the SIP agent and an ng
//! `answer` first, so the first packets can reach the engine while the
//! answerer's SDP is still unknown. Before the answer only sources that
//! match what signalling said about a party are accepted (an RTP bleed
//! defence, `latch.rs`), and nothing is known about the answerer yet: those
//! packets would be refused and the first words of early media lost.
//!
//! Instead the engine holds them, a few per call and briefly, and decides
//! when the answer arrives, exactly as if they had come just after the
//! dialogue was answered *but still by the before-the-answer rule*: a
//! packet from the answerer's SDP address or IP is forwarded; anyone
//! else's is refused and counted then. A packet held longer than
//! [`MAX_AGE`] is refused (late media is worse than none), and the hold is
//! bounded per call, per source address within a call, and in all, so a
//! stranger spraying unanswered ports gains nothing, costs a fixed amount
//! of memory, and cannot take the slots the answerer's own first packets
//! need (one address fills half a call's hold at most).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::engine::PacketEvent;

/// How long a packet may wait for its answer.
pub const MAX_AGE: Duration = Duration::from_millis(200);
/// Packets held per call (a stream's first ones; the race is a few ms).
pub const MAX_PER_CALL: usize = 8;
/// Packets held per call from one source IP address.
pub const MAX_PER_SOURCE_IP: usize = MAX_PER_CALL / 2;
/// Packets held over all calls.
pub const MAX_TOTAL: usize = 2048;

/// Packets waiting for their call's answer, by call-id.
#[derive(Debug, Default)]
pub struct EarlyHold {
    by_call: HashMap<String, Vec<(Instant, PacketEvent)>>,
    total: usize,
}

impl EarlyHold {
    /// Hold `ev` for `call`; `false` (not held: refuse it) when a bound is
    /// reached.
    pub fn hold(&mut self, call: &str, ev: PacketEvent, now: Instant) -> bool {
        if self.total >= MAX_TOTAL {
            return false;
        }
        let held = self.by_call.entry(call.to_owned()).or_default();
        if held.len() >= MAX_PER_CALL
            || held
                .iter()
                .filter(|(_, h)| h.from.ip() == ev.from.ip())
                .count()
                >= MAX_PER_SOURCE_IP
        {
            return false;
        }
        held.push((now, ev));
        self.total += 1;
        true
    }

    /// The packets held for `call`, oldest first, split into those still
    /// fresh at `now` and the number too old to deliver.
    pub fn take(&mut self, call: &str, now: Instant) -> (Vec<PacketEvent>, usize) {
        let Some(held) = self.by_call.remove(call) else {
            return (Vec::new(), 0);
        };
        self.total -= held.len();
        let mut fresh = Vec::with_capacity(held.len());
        let mut stale = 0;
        for (at, ev) in held {
            if now.saturating_duration_since(at) <= MAX_AGE {
                fresh.push(ev);
            } else {
                stale += 1;
            }
        }
        (fresh, stale)
    }

    /// Drop every packet held longer than [`MAX_AGE`]; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        self.by_call.retain(|_, held| {
            let before = held.len();
            held.retain(|(at, _)| now.saturating_duration_since(*at) <= MAX_AGE);
            dropped += before - held.len();
            !held.is_empty()
        });
        self.total -= dropped;
        dropped
    }

    /// Packets held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.total
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u16) -> PacketEvent {
        from(n, "198.18.2.2:6000")
    }

    fn from(n: u16, source: &str) -> PacketEvent {
        PacketEvent {
            local: "198.18.2.1:30000".parse().unwrap(),
            from: source.parse().unwrap(),
            rtp: Some((1, n)),
            data: vec![0; 12],
        }
    }

    #[test]
    fn bounded_per_call_per_source_and_in_all() {
        let mut h = EarlyHold::default();
        let t = Instant::now();
        for n in 0..MAX_PER_CALL {
            // Two sources, each up to its half.
            let source = if n % 2 == 0 {
                "198.18.2.2:6000"
            } else {
                "198.18.2.3:6000"
            };
            assert!(h.hold("a", from(u16::try_from(n).unwrap(), source), t));
        }
        assert!(!h.hold("a", ev(99), t), "a ninth packet for one call");
        assert!(
            !h.hold("a", from(99, "198.18.2.9:6000"), t),
            "a ninth packet for one call, from a third source"
        );
        assert_eq!(h.len(), MAX_PER_CALL);
        let mut calls = 1;
        while h.len() < MAX_TOTAL {
            assert!(h.hold(&format!("c{calls}"), ev(0), t));
            calls += 1;
        }
        assert!(!h.hold("another", ev(0), t), "past the total bound");
    }

    #[test]
    fn a_stranger_spraying_cannot_take_the_answerers_slots() {
        let mut h = EarlyHold::default();
        let t = Instant::now();
        // A stranger sprays from one address, several ports.
        let held = (0..100u16)
            .filter(|n| h.hold("a", from(*n, &format!("198.18.9.9:{}", 1000 + n)), t))
            .count();
        assert_eq!(held, MAX_PER_SOURCE_IP);
        // The answerer's first packets still fit.
        for n in 0..u16::try_from(MAX_PER_CALL - MAX_PER_SOURCE_IP).unwrap() {
            assert!(h.hold("a", ev(n), t), "the answerer's packet {n}");
        }
        let (fresh, stale) = h.take("a", t);
        assert_eq!(stale, 0);
        assert_eq!(fresh.len(), MAX_PER_CALL);
    }

    #[test]
    fn old_packets_are_not_delivered() {
        let mut h = EarlyHold::default();
        let t = Instant::now();
        h.hold("a", ev(1), t);
        h.hold("a", ev(2), t + Duration::from_millis(150));
        let (fresh, stale) = h.take("a", t + Duration::from_millis(250));
        assert_eq!(stale, 1);
        assert_eq!(
            fresh.iter().map(|e| e.rtp).collect::<Vec<_>>(),
            [Some((1, 2))]
        );
        assert!(h.is_empty());

        h.hold("b", ev(1), t);
        h.hold("c", ev(1), t + Duration::from_millis(100));
        assert_eq!(h.expire(t + Duration::from_millis(250)), 1);
        assert_eq!(h.len(), 1);
        assert_eq!(h.take("b", t).0.len(), 0);
        assert_eq!(h.take("c", t + Duration::from_millis(250)).0.len(), 1);
        assert!(h.is_empty());
    }
}
