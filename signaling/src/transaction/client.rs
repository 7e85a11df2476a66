//! Client transactions: the INVITE machine of RFC 3261 Figure 5 (with RFC
//! 6026's "Accepted" state) and the non-INVITE machine of Figure 6.
//!
//! A client transaction sends a request, retransmits it over an unreliable
//! transport until a response comes or the transaction times out, and
//! filters the responses it passes up: the first final, every provisional,
//! and (INVITE, RFC 6026 §7.2) every 2xx while "Accepted".

use std::time::Instant;

use super::{
    Action, StatusClass,
    timers::{Retransmit, Timers, deadline, doubled, doubled_up_to, fired},
};

/// The state of a client transaction (RFC 3261 Figures 5 and 6, RFC 6026
/// Figure 5's replacement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE only (Figure 5): the request is out, no response yet. Timer A
    /// retransmits it (unreliable transports), Timer B times it out
    /// (§17.1.1.2).
    Calling,
    /// Non-INVITE only (Figure 6): the request is out, no response yet.
    /// Timer E retransmits it (unreliable transports), Timer F times it out
    /// (§17.1.2.2).
    Trying,
    /// A provisional response came. INVITE (Figure 5): no more
    /// retransmissions and no timer; the proxy's own Timer C (§16.6 step 11)
    /// bounds this state. Non-INVITE (Figure 6): Timer E keeps
    /// retransmitting, every T2, and Timer F still runs (§17.1.2.2).
    Proceeding,
    /// INVITE only (RFC 6026 §7.2): a 2xx came and was passed up. Further
    /// 2xx (retransmissions, or from other forks) are passed up too, until
    /// Timer M ends the transaction. The ACK for a 2xx is not the
    /// transaction's business (§17.1.1.3, §13.2.2.4).
    Accepted,
    /// A final response came and was passed up (any final for non-INVITE,
    /// 3xx–6xx for INVITE). INVITE (Figure 5): retransmitted finals are
    /// absorbed and re-acknowledged until Timer D. Non-INVITE (Figure 6):
    /// retransmitted responses are absorbed until Timer K (§17.1.2.2).
    Completed,
    /// Over; the TU drops the transaction (§17.1.1.2, §17.1.2.2).
    Terminated,
}

/// What the TU does with a response the client transaction received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseVerdict {
    /// Pass it up (a provisional, the first final, or — INVITE in Accepted —
    /// a 2xx retransmission, which a proxy forwards per RFC 6026 §7.2).
    Forward,
    /// A retransmission the transaction absorbed (e.g. a repeated non-2xx
    /// final; the ACK has been re-sent if the TU supplied one), or a
    /// response that has no place in the current state.
    Absorb,
}

/// A client transaction (RFC 3261 §17.1).
#[derive(Debug, Clone)]
pub struct ClientTransaction {
    /// Figure 5 (INVITE) or Figure 6.
    invite: bool,
    /// Whether the transport is reliable (TCP): no retransmissions, zero
    /// Timers D and K.
    reliable: bool,
    timers: Timers,
    state: ClientState,
    /// The request, as sent and retransmitted.
    request: Vec<u8>,
    /// INVITE: the ACK for the non-2xx final, once the TU built it.
    ack: Option<Vec<u8>>,
    got_provisional: bool,
    /// Timer A (INVITE, "Calling") or E (non-INVITE, "Trying" and
    /// "Proceeding").
    retransmit: Option<Retransmit>,
    /// Timer B (INVITE, "Calling") or F (non-INVITE, "Trying" and
    /// "Proceeding"): the transaction times out.
    timeout: Option<Instant>,
    /// Timer D or K ("Completed") or M ("Accepted"): the transaction ends
    /// quietly.
    end: Option<Instant>,
}

impl ClientTransaction {
    /// Start: `request` is sent at once (returned as [`Action::Send`]).
    /// `invite` selects Figure 5 vs 6; `reliable` = TCP.
    ///
    /// INVITE enters "Calling" with Timers A and B running (§17.1.1.2);
    /// non-INVITE enters "Trying" with Timers E and F (§17.1.2.2). Over a
    /// reliable transport A and E are not used.
    #[must_use = "the request must be sent"]
    pub fn new(
        invite: bool,
        reliable: bool,
        request: Vec<u8>,
        now: Instant,
        timers: Timers,
    ) -> (Self, Vec<Action>) {
        let (state, retransmit, timeout) = if invite {
            (
                ClientState::Calling,
                timers.timer_a(reliable),
                timers.timer_b(),
            )
        } else {
            (
                ClientState::Trying,
                timers.timer_e(reliable),
                timers.timer_f(),
            )
        };
        let actions = vec![Action::Send(request.clone())];
        let transaction = Self {
            invite,
            reliable,
            timers,
            state,
            request,
            ack: None,
            got_provisional: false,
            retransmit: Retransmit::start(now, retransmit),
            timeout: deadline(now, timeout),
            end: None,
        };
        (transaction, actions)
    }

    /// A response matched to this transaction (the TU matches by branch +
    /// CSeq method, §17.1.3).
    ///
    /// A status outside 100–699 is absorbed and changes nothing.
    #[must_use = "the verdict says whether to forward the response"]
    pub fn on_response(&mut self, status: u16, now: Instant) -> (ResponseVerdict, Vec<Action>) {
        let class = StatusClass::of(status);
        if class == StatusClass::Invalid {
            return (ResponseVerdict::Absorb, Vec::new());
        }
        if self.invite {
            self.on_invite_response(class, now)
        } else {
            self.on_non_invite_response(class, now)
        }
    }

    /// Figure 5, with RFC 6026's "Accepted" state (§7.2).
    fn on_invite_response(
        &mut self,
        class: StatusClass,
        now: Instant,
    ) -> (ResponseVerdict, Vec<Action>) {
        use ClientState::{Accepted, Calling, Completed, Proceeding};
        let forward = (ResponseVerdict::Forward, Vec::new());
        let absorb = (ResponseVerdict::Absorb, Vec::new());
        match (self.state, class) {
            // §17.1.1.2: a provisional stops the retransmissions; Timer B
            // only acts in "Calling".
            (Calling | Proceeding, StatusClass::Provisional) => {
                self.got_provisional = true;
                self.enter(Proceeding, None);
                forward
            }
            // RFC 6026 §7.2: a 2xx moves to "Accepted" and starts Timer M.
            (Calling | Proceeding, StatusClass::Success) => {
                self.enter(Accepted, deadline(now, self.timers.timer_m()));
                forward
            }
            // §17.1.1.2: a 3xx–6xx moves to "Completed" and starts Timer D;
            // the TU supplies the ACK (§17.1.1.3) through `set_ack`.
            (Calling | Proceeding, StatusClass::Failure) => {
                self.ack = None;
                self.enter(Completed, deadline(now, self.timers.timer_d(self.reliable)));
                forward
            }
            // RFC 6026 §7.2: every 2xx is passed up while "Accepted".
            (Accepted, StatusClass::Success) => forward,
            // §17.1.1.2: a retransmitted final is absorbed and acknowledged
            // again.
            (Completed, StatusClass::Failure) => {
                let resend = self.ack.iter().cloned().map(Action::Send).collect();
                (ResponseVerdict::Absorb, resend)
            }
            // Nothing else has a place in these states (a late provisional,
            // a non-2xx after a 2xx, ...), nor in "Terminated".
            _ => absorb,
        }
    }

    /// Figure 6.
    fn on_non_invite_response(
        &mut self,
        class: StatusClass,
        now: Instant,
    ) -> (ResponseVerdict, Vec<Action>) {
        use ClientState::{Completed, Proceeding, Trying};
        match (self.state, class) {
            // §17.1.2.2: Timer E keeps running, but from now on fires every
            // T2 (see `on_timer`); Timer F keeps running.
            (Trying | Proceeding, StatusClass::Provisional) => {
                self.got_provisional = true;
                self.state = Proceeding;
                (ResponseVerdict::Forward, Vec::new())
            }
            // §17.1.2.2: any final moves to "Completed" and starts Timer K.
            (Trying | Proceeding, StatusClass::Success | StatusClass::Failure) => {
                self.enter(Completed, deadline(now, self.timers.timer_k(self.reliable)));
                (ResponseVerdict::Forward, Vec::new())
            }
            // §17.1.2.2: "Completed" absorbs every retransmitted response.
            _ => (ResponseVerdict::Absorb, Vec::new()),
        }
    }

    /// INVITE only: the ACK the TU built for a non-2xx final response
    /// (§17.1.1.3). Sent now, and again for each retransmitted final while
    /// Completed.
    ///
    /// Call it right after [`Self::on_response`] moved the transaction to
    /// "Completed" (over TCP, Timer D is zero: before the next `on_timer`).
    /// Refused (no action) in any other state and for non-INVITE.
    #[must_use = "the ACK must be sent"]
    pub fn set_ack(&mut self, ack: Vec<u8>) -> Vec<Action> {
        if !self.invite || self.state != ClientState::Completed {
            return Vec::new();
        }
        let actions = vec![Action::Send(ack.clone())];
        self.ack = Some(ack);
        actions
    }

    /// Time passed; call when `now >= next_deadline()`. Returns
    /// retransmissions, Timeout, Terminated.
    #[must_use = "the actions must be performed"]
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        // Timer B (§17.1.1.2) or F (§17.1.2.2).
        if fired(self.timeout, now) {
            return self.terminate(true);
        }
        // Timer D (§17.1.1.2), K (§17.1.2.2) or M (RFC 6026 §7.2).
        if fired(self.end, now) {
            return self.terminate(false);
        }
        match self.retransmit {
            Some(timer) if timer.at <= now => {
                let t2 = self.timers.t2;
                self.retransmit = match self.state {
                    // Timer A doubles without a cap (§17.1.1.2).
                    ClientState::Calling => timer.next(now, doubled),
                    // Timer E doubles up to T2 in "Trying" and is reset to
                    // T2 in "Proceeding" (§17.1.2.2).
                    ClientState::Trying => timer.next(now, doubled_up_to(t2)),
                    _ => timer.next(now, |_| t2),
                };
                vec![Action::Send(self.request.clone())]
            }
            _ => Vec::new(),
        }
    }

    /// A transport error sending (§17.1.4): the transaction ends at once.
    ///
    /// Before a final response this is [`Action::Timeout`] then
    /// [`Action::Terminated`] (the TU answers upstream, §16.9). After one
    /// (an ACK that could not be sent) only [`Action::Terminated`]: the TU
    /// already has its final response and must not answer twice.
    #[must_use = "the actions must be performed"]
    pub fn on_transport_error(&mut self) -> Vec<Action> {
        match self.state {
            ClientState::Calling | ClientState::Trying | ClientState::Proceeding => {
                self.terminate(true)
            }
            ClientState::Accepted | ClientState::Completed => self.terminate(false),
            ClientState::Terminated => Vec::new(),
        }
    }

    /// The next instant [`Self::on_timer`] has something to do, if any.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.retransmit.map(|timer| timer.at),
            self.timeout,
            self.end,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    #[must_use]
    pub fn state(&self) -> ClientState {
        self.state
    }

    #[must_use]
    pub fn is_invite(&self) -> bool {
        self.invite
    }

    /// The request bytes (e.g. for building a CANCEL/ACK).
    #[must_use]
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Whether a provisional response was received (a CANCEL may be sent
    /// only then, §9.1).
    #[must_use]
    pub fn got_provisional(&self) -> bool {
        self.got_provisional
    }

    /// Moves to `state`, which has no retransmission and no timeout, only
    /// (perhaps) an end.
    fn enter(&mut self, state: ClientState, end: Option<Instant>) {
        self.state = state;
        self.retransmit = None;
        self.timeout = None;
        self.end = end;
    }

    /// Moves to "Terminated" and says so, once.
    fn terminate(&mut self, timed_out: bool) -> Vec<Action> {
        if self.state == ClientState::Terminated {
            return Vec::new();
        }
        self.enter(ClientState::Terminated, None);
        self.ack = None;
        if timed_out {
            vec![Action::Timeout, Action::Terminated]
        } else {
            vec![Action::Terminated]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::testing::{ms, send, timeline},
        *,
    };
    use crate::transaction::Action::{Terminated, Timeout};

    const REQ: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\r\n";
    const ACK: &[u8] = b"ACK sip:bob@example.com SIP/2.0\r\n\r\n";

    fn start(invite: bool, reliable: bool) -> (ClientTransaction, Instant) {
        let now = Instant::now();
        let (tx, actions) =
            ClientTransaction::new(invite, reliable, REQ.to_vec(), now, Timers::default());
        assert_eq!(actions, [send(REQ)]);
        (tx, now)
    }

    // ---- INVITE, Figure 5 -------------------------------------------------

    #[test]
    fn invite_starts_calling_and_sends_the_request_at_once() {
        let (tx, t0) = start(true, false);
        assert_eq!(tx.state(), ClientState::Calling);
        assert!(tx.is_invite());
        assert_eq!(tx.request(), REQ);
        assert!(!tx.got_provisional());
        assert_eq!(tx.next_deadline(), Some(t0 + ms(500)));
    }

    #[test]
    fn invite_udp_retransmits_per_timer_a_then_times_out_at_timer_b() {
        let (mut tx, t0) = start(true, false);
        let expected = [
            (500, send(REQ)),
            (1_500, send(REQ)),
            (3_500, send(REQ)),
            (7_500, send(REQ)),
            (15_500, send(REQ)),
            (31_500, send(REQ)),
            (32_000, Timeout),
            (32_000, Terminated),
        ];
        assert_eq!(timeline(&mut tx, t0, ms(100_000)), expected);
        assert_eq!(tx.state(), ClientState::Terminated);
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn invite_tcp_never_retransmits_and_times_out_at_timer_b() {
        let (mut tx, t0) = start(true, true);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(32_000)));
        assert_eq!(
            timeline(&mut tx, t0, ms(100_000)),
            [(32_000, Timeout), (32_000, Terminated)]
        );
    }

    #[test]
    fn invite_provisional_stops_retransmissions_and_timer_b() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.on_timer(t0 + ms(500)), [send(REQ)]);
        assert_eq!(
            tx.on_response(100, t0 + ms(700)),
            (ResponseVerdict::Forward, vec![])
        );
        assert_eq!(tx.state(), ClientState::Proceeding);
        assert!(tx.got_provisional());
        // Only the proxy's Timer C (the TU's) bounds "Proceeding".
        assert_eq!(tx.next_deadline(), None);
        assert_eq!(tx.on_timer(t0 + ms(100_000)), []);
        // Further provisionals are passed up.
        assert_eq!(
            tx.on_response(180, t0 + ms(900)),
            (ResponseVerdict::Forward, vec![])
        );
        assert_eq!(
            tx.on_response(183, t0 + ms(950)),
            (ResponseVerdict::Forward, vec![])
        );
        assert_eq!(tx.state(), ClientState::Proceeding);
    }

    #[test]
    fn invite_failure_completes_acks_and_reacks_each_retransmission() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(
            tx.on_response(180, t0 + ms(100)),
            (ResponseVerdict::Forward, vec![])
        );
        let t = t0 + ms(2_000);
        assert_eq!(tx.on_response(486, t), (ResponseVerdict::Forward, vec![]));
        assert_eq!(tx.state(), ClientState::Completed);
        assert_eq!(tx.set_ack(ACK.to_vec()), [send(ACK)]);
        for later in [100, 600, 1_600] {
            assert_eq!(
                tx.on_response(486, t + ms(later)),
                (ResponseVerdict::Absorb, vec![send(ACK)])
            );
        }
        assert_eq!(tx.state(), ClientState::Completed);
        // Timer D: 32 s over UDP, no retransmission meanwhile.
        assert_eq!(timeline(&mut tx, t0, ms(100_000)), [(34_000, Terminated)]);
    }

    #[test]
    fn invite_failure_straight_from_calling_stops_timers_a_and_b() {
        let (mut tx, t0) = start(true, false);
        let t = t0 + ms(100);
        assert_eq!(tx.on_response(603, t), (ResponseVerdict::Forward, vec![]));
        assert!(!tx.got_provisional());
        assert_eq!(tx.next_deadline(), Some(t + ms(32_000)));
    }

    #[test]
    fn invite_retransmitted_failure_before_the_ack_is_built_is_absorbed_silently() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(
            tx.on_response(404, t0 + ms(100)),
            (ResponseVerdict::Forward, vec![])
        );
        assert_eq!(
            tx.on_response(404, t0 + ms(200)),
            (ResponseVerdict::Absorb, vec![])
        );
    }

    #[test]
    fn invite_completed_absorbs_everything_else_without_acking() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(
            tx.on_response(500, t0 + ms(100)),
            (ResponseVerdict::Forward, vec![])
        );
        assert_eq!(tx.set_ack(ACK.to_vec()), [send(ACK)]);
        for status in [100, 180, 200] {
            assert_eq!(
                tx.on_response(status, t0 + ms(200)),
                (ResponseVerdict::Absorb, vec![])
            );
        }
        assert_eq!(tx.state(), ClientState::Completed);
    }

    #[test]
    fn invite_tcp_timer_d_is_zero_but_the_ack_goes_out_first() {
        let (mut tx, t0) = start(true, true);
        let t = t0 + ms(3_000);
        assert_eq!(tx.on_response(486, t), (ResponseVerdict::Forward, vec![]));
        assert_eq!(tx.state(), ClientState::Completed);
        assert_eq!(tx.next_deadline(), Some(t));
        assert_eq!(tx.set_ack(ACK.to_vec()), [send(ACK)]);
        assert_eq!(tx.on_timer(t), [Terminated]);
        assert_eq!(tx.state(), ClientState::Terminated);
    }

    #[test]
    fn invite_2xx_accepts_forwards_further_2xx_and_ends_at_timer_m() {
        for reliable in [false, true] {
            let (mut tx, t0) = start(true, reliable);
            assert_eq!(
                tx.on_response(180, t0 + ms(100)),
                (ResponseVerdict::Forward, vec![])
            );
            let t = t0 + ms(1_000);
            assert_eq!(tx.on_response(200, t), (ResponseVerdict::Forward, vec![]));
            assert_eq!(tx.state(), ClientState::Accepted);
            // RFC 6026 §7.2: retransmitted (or forked) 2xx go up to the TU.
            assert_eq!(
                tx.on_response(200, t + ms(500)),
                (ResponseVerdict::Forward, vec![])
            );
            assert_eq!(
                tx.on_response(202, t + ms(600)),
                (ResponseVerdict::Forward, vec![])
            );
            // Anything else has no place here.
            for status in [180, 486] {
                assert_eq!(
                    tx.on_response(status, t + ms(700)),
                    (ResponseVerdict::Absorb, vec![])
                );
            }
            // The ACK for a 2xx is end to end, not the transaction's.
            assert_eq!(tx.set_ack(ACK.to_vec()), []);
            assert_eq!(tx.state(), ClientState::Accepted);
            // Timer M = 64*T1 on any transport.
            assert_eq!(timeline(&mut tx, t0, ms(100_000)), [(33_000, Terminated)]);
        }
    }

    #[test]
    fn invite_2xx_straight_from_calling_accepts() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(
            tx.on_response(200, t0 + ms(50)),
            (ResponseVerdict::Forward, vec![])
        );
        assert_eq!(tx.state(), ClientState::Accepted);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(32_050)));
    }

    #[test]
    fn set_ack_is_refused_outside_invite_completed() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.set_ack(ACK.to_vec()), []);
        assert_eq!(tx.on_response(183, t0), (ResponseVerdict::Forward, vec![]));
        assert_eq!(tx.set_ack(ACK.to_vec()), []);
        let (mut tx, t0) = start(false, false);
        assert_eq!(tx.on_response(404, t0), (ResponseVerdict::Forward, vec![]));
        assert_eq!(tx.set_ack(ACK.to_vec()), []);
    }

    #[test]
    fn on_timer_before_the_deadline_does_nothing() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.on_timer(t0), []);
        assert_eq!(tx.on_timer(t0 + ms(499)), []);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(500)));
    }

    #[test]
    fn a_late_tick_sends_one_retransmission_and_keeps_the_schedule() {
        let (mut tx, t0) = start(true, false);
        // The retransmissions due at 0.5, 1.5 and 3.5 s collapse into one.
        assert_eq!(tx.on_timer(t0 + ms(4_000)), [send(REQ)]);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(7_500)));
    }

    #[test]
    fn a_due_timeout_wins_over_a_due_retransmission() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.on_timer(t0 + ms(40_000)), [Timeout, Terminated]);
    }

    #[test]
    fn transport_error_before_a_final_times_out() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.on_response(100, t0), (ResponseVerdict::Forward, vec![]));
        assert_eq!(tx.on_transport_error(), [Timeout, Terminated]);
        assert_eq!(tx.state(), ClientState::Terminated);
        assert_eq!(tx.next_deadline(), None);
        assert_eq!(tx.on_transport_error(), []);
    }

    #[test]
    fn transport_error_after_a_final_only_terminates() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.on_response(486, t0), (ResponseVerdict::Forward, vec![]));
        assert_eq!(tx.on_transport_error(), [Terminated]);
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.on_response(200, t0), (ResponseVerdict::Forward, vec![]));
        assert_eq!(tx.on_transport_error(), [Terminated]);
    }

    #[test]
    fn terminated_is_reported_once_and_then_nothing_happens() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.on_response(486, t0), (ResponseVerdict::Forward, vec![]));
        assert_eq!(tx.set_ack(ACK.to_vec()), [send(ACK)]);
        assert_eq!(tx.on_timer(t0 + ms(32_000)), [Terminated]);
        assert_eq!(tx.on_timer(t0 + ms(64_000)), []);
        assert_eq!(
            tx.on_response(486, t0 + ms(64_000)),
            (ResponseVerdict::Absorb, vec![])
        );
        assert_eq!(
            tx.on_response(200, t0 + ms(64_000)),
            (ResponseVerdict::Absorb, vec![])
        );
        assert_eq!(tx.set_ack(ACK.to_vec()), []);
        assert_eq!(tx.on_transport_error(), []);
        assert_eq!(tx.next_deadline(), None);
        assert_eq!(tx.state(), ClientState::Terminated);
    }

    #[test]
    fn invalid_status_codes_are_absorbed_and_change_nothing() {
        for invite in [true, false] {
            let (mut tx, t0) = start(invite, false);
            let before = tx.state();
            for status in [0, 99, 700, u16::MAX] {
                assert_eq!(
                    tx.on_response(status, t0),
                    (ResponseVerdict::Absorb, vec![])
                );
            }
            assert_eq!(tx.state(), before);
            assert!(!tx.got_provisional());
            assert_eq!(tx.next_deadline(), Some(t0 + ms(500)));
        }
    }

    #[test]
    fn timers_scale_with_t1() {
        let t0 = Instant::now();
        let timers = Timers {
            t1: ms(100),
            ..Timers::default()
        };
        let (mut tx, _) = ClientTransaction::new(true, false, REQ.to_vec(), t0, timers);
        let expected = [
            (100, send(REQ)),
            (300, send(REQ)),
            (700, send(REQ)),
            (1_500, send(REQ)),
            (3_100, send(REQ)),
            (6_300, send(REQ)),
            (6_400, Timeout),
            (6_400, Terminated),
        ];
        assert_eq!(timeline(&mut tx, t0, ms(100_000)), expected);
    }

    // ---- non-INVITE, Figure 6 ---------------------------------------------

    #[test]
    fn non_invite_starts_trying() {
        let (tx, t0) = start(false, false);
        assert_eq!(tx.state(), ClientState::Trying);
        assert!(!tx.is_invite());
        assert_eq!(tx.next_deadline(), Some(t0 + ms(500)));
    }

    #[test]
    fn non_invite_udp_timer_e_doubles_up_to_t2_then_timer_f() {
        let (mut tx, t0) = start(false, false);
        let mut expected: Vec<(u64, Action)> = [
            500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500,
        ]
        .into_iter()
        .map(|at| (at, send(REQ)))
        .collect();
        expected.extend([(32_000, Timeout), (32_000, Terminated)]);
        assert_eq!(timeline(&mut tx, t0, ms(100_000)), expected);
    }

    #[test]
    fn non_invite_proceeding_retransmits_every_t2() {
        let (mut tx, t0) = start(false, false);
        assert_eq!(
            tx.on_response(100, t0 + ms(200)),
            (ResponseVerdict::Forward, vec![])
        );
        assert_eq!(tx.state(), ClientState::Proceeding);
        assert!(tx.got_provisional());
        // The pending Timer E fires as set, then every T2 until Timer F.
        let mut expected: Vec<(u64, Action)> =
            [500, 4_500, 8_500, 12_500, 16_500, 20_500, 24_500, 28_500]
                .into_iter()
                .map(|at| (at, send(REQ)))
                .collect();
        expected.extend([(32_000, Timeout), (32_000, Terminated)]);
        assert_eq!(timeline(&mut tx, t0, ms(100_000)), expected);
    }

    #[test]
    fn non_invite_provisional_after_backoff_resets_timer_e_to_t2_when_it_fires() {
        let (mut tx, t0) = start(false, false);
        assert_eq!(
            timeline(&mut tx, t0, ms(2_000)),
            [(500, send(REQ)), (1_500, send(REQ))]
        );
        assert_eq!(
            tx.on_response(180, t0 + ms(2_000)),
            (ResponseVerdict::Forward, vec![])
        );
        let sends: Vec<u64> = timeline(&mut tx, t0, ms(20_000))
            .into_iter()
            .map(|(at, _)| at)
            .collect();
        assert_eq!(sends, [3_500, 7_500, 11_500, 15_500, 19_500]);
    }

    #[test]
    fn non_invite_tcp_never_retransmits_and_times_out_at_timer_f() {
        let (mut tx, t0) = start(false, true);
        assert_eq!(
            tx.on_response(100, t0 + ms(10)),
            (ResponseVerdict::Forward, vec![])
        );
        assert_eq!(
            timeline(&mut tx, t0, ms(100_000)),
            [(32_000, Timeout), (32_000, Terminated)]
        );
    }

    #[test]
    fn non_invite_final_completes_and_absorbs_until_timer_k() {
        for (status, provisional_first) in [(200, false), (404, true), (503, false)] {
            let (mut tx, t0) = start(false, false);
            if provisional_first {
                assert_eq!(
                    tx.on_response(100, t0 + ms(100)),
                    (ResponseVerdict::Forward, vec![])
                );
            }
            let t = t0 + ms(1_000);
            assert_eq!(
                tx.on_response(status, t),
                (ResponseVerdict::Forward, vec![])
            );
            assert_eq!(tx.state(), ClientState::Completed);
            for again in [status, 100, 200, 500] {
                assert_eq!(
                    tx.on_response(again, t + ms(100)),
                    (ResponseVerdict::Absorb, vec![])
                );
            }
            // Timer K = T4 over UDP; no retransmissions in "Completed".
            assert_eq!(timeline(&mut tx, t0, ms(100_000)), [(6_000, Terminated)]);
        }
    }

    #[test]
    fn non_invite_tcp_timer_k_is_zero() {
        let (mut tx, t0) = start(false, true);
        let t = t0 + ms(1_000);
        assert_eq!(tx.on_response(200, t), (ResponseVerdict::Forward, vec![]));
        assert_eq!(tx.next_deadline(), Some(t));
        assert_eq!(tx.on_timer(t), [Terminated]);
    }

    #[test]
    fn non_invite_transport_error() {
        let (mut tx, _) = start(false, false);
        assert_eq!(tx.on_transport_error(), [Timeout, Terminated]);
        assert_eq!(tx.on_timer(Instant::now() + ms(100_000)), []);
        let (mut tx, t0) = start(false, false);
        assert_eq!(tx.on_response(200, t0), (ResponseVerdict::Forward, vec![]));
        assert_eq!(tx.on_transport_error(), [Terminated]);
    }
}
