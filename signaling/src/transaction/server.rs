//! Server transactions: the INVITE machine of RFC 3261 Figure 7 (with RFC
//! 6026's "Accepted" state) and the non-INVITE machine of Figure 8.
//!
//! A server transaction sends the responses the TU gives it, answers a
//! retransmitted request with the last of them, retransmits a non-2xx final
//! to INVITE over an unreliable transport until the ACK comes, and lingers
//! after the final to absorb retransmissions. It never retransmits a 2xx:
//! that is the TU's business (RFC 6026 §7.1; a proxy forwards the 2xx
//! retransmissions the UAS sends, §16.7).

use std::time::Instant;

use super::{
    Action, StatusClass,
    timers::{Retransmit, Timers, deadline, doubled_up_to, fired},
};

/// The state of a server transaction (RFC 3261 Figures 7 and 8, RFC 6026
/// Figure 7's replacement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE only (Figure 8): the request arrived, the TU has not
    /// answered; retransmissions of the request are discarded (§17.2.2).
    Trying,
    /// INVITE (Figure 7): the state a new transaction starts in; the TU
    /// sends 100 Trying itself (§16.2, §17.2.1). Both machines: the TU sent
    /// a provisional, which a retransmitted request gets again. No timer.
    Proceeding,
    /// INVITE only (RFC 6026 §7.1): the TU sent a 2xx. Retransmitted INVITEs
    /// are absorbed, further 2xx from the TU are sent, ACKs belong to the
    /// TU, until Timer L ends the transaction.
    Accepted,
    /// The TU sent a final response (3xx–6xx for INVITE, any final for
    /// non-INVITE). INVITE (Figure 7): Timer G retransmits it (unreliable
    /// transports) until the ACK comes or Timer H gives up (§17.2.1).
    /// Non-INVITE (Figure 8): a retransmitted request gets it again until
    /// Timer J (§17.2.2).
    Completed,
    /// INVITE only (Figure 7): the ACK for the non-2xx final came; further
    /// ACKs are absorbed until Timer I (§17.2.1).
    Confirmed,
    /// Over; the TU drops the transaction (§17.2.1, §17.2.2).
    Terminated,
}

/// A server transaction (RFC 3261 §17.2).
#[derive(Debug, Clone)]
pub struct ServerTransaction {
    /// Figure 7 (INVITE) or Figure 8.
    invite: bool,
    /// Whether the transport is reliable (TCP): no Timer G, zero Timers I
    /// and J.
    reliable: bool,
    timers: Timers,
    state: ServerState,
    /// When the request arrived.
    started: Instant,
    /// The last response sent: its status and bytes.
    last: Option<(u16, Vec<u8>)>,
    /// Timer G (INVITE, "Completed").
    retransmit: Option<Retransmit>,
    /// Timer H (INVITE, "Completed"): no ACK came.
    timeout: Option<Instant>,
    /// Timer I ("Confirmed"), J (non-INVITE "Completed") or L ("Accepted"):
    /// the transaction ends quietly.
    end: Option<Instant>,
}

impl ServerTransaction {
    /// A new request arrived (not a retransmission). INVITE starts in
    /// Proceeding (the TU sends 100 Trying itself, §16.2/§17.2.1),
    /// non-INVITE in Trying.
    #[must_use]
    pub fn new(invite: bool, reliable: bool, now: Instant, timers: Timers) -> Self {
        Self {
            invite,
            reliable,
            timers,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            started: now,
            last: None,
            retransmit: None,
            timeout: None,
            end: None,
        }
    }

    /// The same request arrived again: the last response to resend, if any
    /// (§17.2.1, §17.2.2).
    ///
    /// That is the last provisional in "Proceeding" and the final in
    /// "Completed". Nothing otherwise: in "Trying" there is nothing to send
    /// yet (§17.2.2); "Accepted" absorbs the INVITE (RFC 6026 §7.1);
    /// "Confirmed" only absorbs ACKs and a late INVITE gets nothing.
    #[must_use = "the response must be sent again"]
    pub fn on_retransmission(&mut self) -> Option<Vec<u8>> {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => {
                self.last.as_ref().map(|(_, bytes)| bytes.clone())
            }
            ServerState::Trying
            | ServerState::Accepted
            | ServerState::Confirmed
            | ServerState::Terminated => None,
        }
    }

    /// The TU sends a response `status` (bytes already built): returns Send
    /// (and arms timers G/H/J/L as the figures say). Sending anything after
    /// a final response is refused (returns no action) except, in INVITE
    /// Accepted state, further 2xx (RFC 6026: forwarded 2xx
    /// retransmissions).
    ///
    /// A status outside 100–699 is refused too.
    #[must_use = "the response must be sent"]
    pub fn send_response(&mut self, status: u16, bytes: Vec<u8>, now: Instant) -> Vec<Action> {
        let class = StatusClass::of(status);
        let accepted = if self.invite {
            self.send_invite_response(class, now)
        } else {
            self.send_non_invite_response(class, now)
        };
        if !accepted {
            return Vec::new();
        }
        let actions = vec![Action::Send(bytes.clone())];
        self.last = Some((status, bytes));
        actions
    }

    /// Figure 7, with RFC 6026's "Accepted" state (§7.1): moves on for a
    /// response the TU may send now, or says it may not.
    fn send_invite_response(&mut self, class: StatusClass, now: Instant) -> bool {
        use ServerState::{Accepted, Completed, Proceeding};
        match (self.state, class) {
            (Proceeding, StatusClass::Provisional) | (Accepted, StatusClass::Success) => true,
            // RFC 6026 §7.1: a 2xx moves to "Accepted" and starts Timer L.
            (Proceeding, StatusClass::Success) => {
                self.enter(Accepted, deadline(now, self.timers.timer_l()));
                true
            }
            // §17.2.1: a 3xx–6xx moves to "Completed" and starts Timers G
            // (unreliable transports) and H.
            (Proceeding, StatusClass::Failure) => {
                self.enter(Completed, None);
                self.retransmit = Retransmit::start(now, self.timers.timer_g(self.reliable));
                self.timeout = deadline(now, self.timers.timer_h());
                true
            }
            _ => false,
        }
    }

    /// Figure 8: moves on for a response the TU may send now, or says it may
    /// not.
    fn send_non_invite_response(&mut self, class: StatusClass, now: Instant) -> bool {
        use ServerState::{Completed, Proceeding, Trying};
        match (self.state, class) {
            (Trying | Proceeding, StatusClass::Provisional) => {
                self.state = Proceeding;
                true
            }
            // §17.2.2: a final moves to "Completed" and starts Timer J.
            (Trying | Proceeding, StatusClass::Success | StatusClass::Failure) => {
                self.enter(Completed, deadline(now, self.timers.timer_j(self.reliable)));
                true
            }
            _ => false,
        }
    }

    /// INVITE: an ACK for a non-2xx final arrived (Completed → Confirmed,
    /// Timer I). Returns whether it was absorbed (true) — an ACK in Accepted
    /// (for a 2xx) is not the transaction's (false: the TU forwards it end
    /// to end).
    ///
    /// In "Confirmed" further ACKs are absorbed (§17.2.1). An ACK in
    /// "Proceeding" acknowledges nothing the transaction sent and is
    /// absorbed (dropped) too. For a non-INVITE or a terminated transaction
    /// it is not the transaction's (false).
    #[must_use = "an ACK not absorbed must be forwarded"]
    pub fn on_ack(&mut self, now: Instant) -> bool {
        if !self.invite {
            return false;
        }
        match self.state {
            // §17.2.1: stop retransmitting (G) and waiting (H); Timer I.
            ServerState::Completed => {
                self.enter(
                    ServerState::Confirmed,
                    deadline(now, self.timers.timer_i(self.reliable)),
                );
                true
            }
            ServerState::Confirmed | ServerState::Proceeding => true,
            ServerState::Accepted | ServerState::Trying | ServerState::Terminated => false,
        }
    }

    /// Time passed; call when `now >= next_deadline()`. Returns
    /// retransmissions of the final (Timer G), Timeout (Timer H),
    /// Terminated.
    #[must_use = "the actions must be performed"]
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        // Timer H (§17.2.1).
        if fired(self.timeout, now) {
            return self.terminate(true);
        }
        // Timer I (§17.2.1), J (§17.2.2) or L (RFC 6026 §7.1).
        if fired(self.end, now) {
            return self.terminate(false);
        }
        // Timer G doubles up to T2 (§17.2.1).
        match (self.retransmit, &self.last) {
            (Some(timer), Some((_, bytes))) if timer.at <= now => {
                let bytes = bytes.clone();
                self.retransmit = timer.next(now, doubled_up_to(self.timers.t2));
                vec![Action::Send(bytes)]
            }
            _ => Vec::new(),
        }
    }

    /// A transport error sending a response (§17.2.4): the transaction ends
    /// at once with [`Action::Terminated`].
    #[must_use = "the actions must be performed"]
    pub fn on_transport_error(&mut self) -> Vec<Action> {
        self.terminate(false)
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
    pub fn state(&self) -> ServerState {
        self.state
    }

    #[must_use]
    pub fn is_invite(&self) -> bool {
        self.invite
    }

    /// Status of the last response sent, if any.
    #[must_use]
    pub fn last_status(&self) -> Option<u16> {
        self.last.as_ref().map(|&(status, _)| status)
    }

    /// When the request arrived (the `now` given to [`Self::new`]).
    #[must_use]
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Moves to `state`, which has no retransmission and no timeout, only
    /// (perhaps) an end.
    fn enter(&mut self, state: ServerState, end: Option<Instant>) {
        self.state = state;
        self.retransmit = None;
        self.timeout = None;
        self.end = end;
    }

    /// Moves to "Terminated" and says so, once.
    fn terminate(&mut self, timed_out: bool) -> Vec<Action> {
        if self.state == ServerState::Terminated {
            return Vec::new();
        }
        self.enter(ServerState::Terminated, None);
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

    const TRYING: &[u8] = b"SIP/2.0 100 Trying\r\n\r\n";
    const RINGING: &[u8] = b"SIP/2.0 180 Ringing\r\n\r\n";
    const OK: &[u8] = b"SIP/2.0 200 OK\r\n\r\n";
    const BUSY: &[u8] = b"SIP/2.0 486 Busy Here\r\n\r\n";
    const NOT_FOUND: &[u8] = b"SIP/2.0 404 Not Found\r\n\r\n";

    fn start(invite: bool, reliable: bool) -> (ServerTransaction, Instant) {
        let now = Instant::now();
        (
            ServerTransaction::new(invite, reliable, now, Timers::default()),
            now,
        )
    }

    // ---- INVITE, Figure 7 -------------------------------------------------

    #[test]
    fn invite_starts_proceeding_without_timers() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.state(), ServerState::Proceeding);
        assert!(tx.is_invite());
        assert_eq!(tx.started(), t0);
        assert_eq!(tx.next_deadline(), None);
        assert_eq!(tx.last_status(), None);
        // Nothing to resend before the TU's 100 Trying.
        assert_eq!(tx.on_retransmission(), None);
    }

    #[test]
    fn invite_retransmission_gets_the_last_provisional() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.send_response(100, TRYING.to_vec(), t0), [send(TRYING)]);
        assert_eq!(tx.on_retransmission().as_deref(), Some(TRYING));
        assert_eq!(
            tx.send_response(180, RINGING.to_vec(), t0 + ms(10)),
            [send(RINGING)]
        );
        assert_eq!(tx.on_retransmission().as_deref(), Some(RINGING));
        assert_eq!(tx.state(), ServerState::Proceeding);
        assert_eq!(tx.last_status(), Some(180));
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn invite_failure_udp_retransmits_per_timer_g_until_timer_h() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.send_response(100, TRYING.to_vec(), t0), [send(TRYING)]);
        assert_eq!(tx.send_response(486, BUSY.to_vec(), t0), [send(BUSY)]);
        assert_eq!(tx.state(), ServerState::Completed);
        assert_eq!(tx.last_status(), Some(486));
        let mut expected: Vec<(u64, Action)> = [
            500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500,
        ]
        .into_iter()
        .map(|at| (at, send(BUSY)))
        .collect();
        expected.extend([(32_000, Timeout), (32_000, Terminated)]);
        assert_eq!(timeline(&mut tx, t0, ms(100_000)), expected);
    }

    #[test]
    fn invite_failure_tcp_has_no_timer_g_only_timer_h() {
        let (mut tx, t0) = start(true, true);
        assert_eq!(tx.send_response(503, BUSY.to_vec(), t0), [send(BUSY)]);
        assert_eq!(
            timeline(&mut tx, t0, ms(100_000)),
            [(32_000, Timeout), (32_000, Terminated)]
        );
    }

    #[test]
    fn invite_retransmission_in_completed_gets_the_final() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.send_response(180, RINGING.to_vec(), t0), [send(RINGING)]);
        assert_eq!(tx.send_response(486, BUSY.to_vec(), t0), [send(BUSY)]);
        assert_eq!(tx.on_retransmission().as_deref(), Some(BUSY));
    }

    #[test]
    fn invite_ack_confirms_and_timer_i_terminates() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.send_response(486, BUSY.to_vec(), t0), [send(BUSY)]);
        assert_eq!(tx.on_timer(t0 + ms(500)), [send(BUSY)]);
        let t = t0 + ms(1_000);
        assert!(tx.on_ack(t));
        assert_eq!(tx.state(), ServerState::Confirmed);
        // Further ACKs are absorbed; a late INVITE gets nothing.
        assert!(tx.on_ack(t + ms(100)));
        assert_eq!(tx.on_retransmission(), None);
        assert_eq!(tx.send_response(486, BUSY.to_vec(), t), []);
        // No more Timer G, no Timer H: Timer I = T4 over UDP.
        assert_eq!(timeline(&mut tx, t0, ms(100_000)), [(6_000, Terminated)]);
    }

    #[test]
    fn invite_ack_tcp_timer_i_is_zero() {
        let (mut tx, t0) = start(true, true);
        assert_eq!(tx.send_response(486, BUSY.to_vec(), t0), [send(BUSY)]);
        let t = t0 + ms(200);
        assert!(tx.on_ack(t));
        assert_eq!(tx.state(), ServerState::Confirmed);
        assert_eq!(tx.next_deadline(), Some(t));
        assert_eq!(tx.on_timer(t), [Terminated]);
    }

    #[test]
    fn invite_2xx_accepts_and_timer_l_terminates() {
        for reliable in [false, true] {
            let (mut tx, t0) = start(true, reliable);
            assert_eq!(tx.send_response(100, TRYING.to_vec(), t0), [send(TRYING)]);
            let t = t0 + ms(2_000);
            assert_eq!(tx.send_response(200, OK.to_vec(), t), [send(OK)]);
            assert_eq!(tx.state(), ServerState::Accepted);
            // RFC 6026 §7.1: the transaction does not retransmit the 2xx, a
            // retransmitted INVITE is absorbed, the TU's 2xx retransmissions
            // pass, and the ACK is the TU's.
            assert_eq!(tx.next_deadline(), Some(t + ms(32_000)));
            assert_eq!(tx.on_retransmission(), None);
            assert_eq!(tx.send_response(200, OK.to_vec(), t + ms(500)), [send(OK)]);
            assert!(!tx.on_ack(t + ms(600)));
            assert_eq!(tx.state(), ServerState::Accepted);
            // No provisional nor non-2xx after a 2xx.
            assert_eq!(tx.send_response(180, RINGING.to_vec(), t), []);
            assert_eq!(tx.send_response(486, BUSY.to_vec(), t), []);
            assert_eq!(tx.last_status(), Some(200));
            assert_eq!(timeline(&mut tx, t0, ms(100_000)), [(34_000, Terminated)]);
        }
    }

    #[test]
    fn invite_responses_after_a_failure_are_refused() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.send_response(486, BUSY.to_vec(), t0), [send(BUSY)]);
        for (status, bytes) in [(180, RINGING), (200, OK), (486, BUSY)] {
            assert_eq!(tx.send_response(status, bytes.to_vec(), t0), []);
        }
        assert_eq!(tx.last_status(), Some(486));
        assert_eq!(tx.state(), ServerState::Completed);
    }

    #[test]
    fn invite_ack_in_proceeding_is_dropped() {
        let (mut tx, t0) = start(true, false);
        assert!(tx.on_ack(t0));
        assert_eq!(tx.state(), ServerState::Proceeding);
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn transport_error_terminates() {
        for invite in [true, false] {
            let (mut tx, t0) = start(invite, false);
            assert_eq!(
                tx.send_response(404, NOT_FOUND.to_vec(), t0),
                [send(NOT_FOUND)]
            );
            assert_eq!(tx.on_transport_error(), [Terminated]);
            assert_eq!(tx.state(), ServerState::Terminated);
            assert_eq!(tx.next_deadline(), None);
            assert_eq!(tx.on_transport_error(), []);
        }
    }

    #[test]
    fn terminated_is_reported_once_and_then_nothing_happens() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.send_response(486, BUSY.to_vec(), t0), [send(BUSY)]);
        assert!(tx.on_ack(t0));
        assert_eq!(tx.on_timer(t0 + ms(5_000)), [Terminated]);
        assert_eq!(tx.on_timer(t0 + ms(50_000)), []);
        assert_eq!(tx.on_retransmission(), None);
        assert_eq!(tx.send_response(200, OK.to_vec(), t0), []);
        assert!(!tx.on_ack(t0 + ms(50_000)));
        assert_eq!(tx.on_transport_error(), []);
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn invalid_status_codes_are_refused() {
        for invite in [true, false] {
            let (mut tx, t0) = start(invite, false);
            for status in [0, 99, 700, u16::MAX] {
                assert_eq!(tx.send_response(status, OK.to_vec(), t0), []);
            }
            assert_eq!(tx.last_status(), None);
            assert_eq!(tx.next_deadline(), None);
        }
    }

    #[test]
    fn a_late_tick_sends_one_retransmission_of_the_final() {
        let (mut tx, t0) = start(true, false);
        assert_eq!(tx.send_response(486, BUSY.to_vec(), t0), [send(BUSY)]);
        assert_eq!(tx.on_timer(t0 + ms(499)), []);
        assert_eq!(tx.on_timer(t0 + ms(5_000)), [send(BUSY)]);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(7_500)));
        assert_eq!(tx.on_timer(t0 + ms(40_000)), [Timeout, Terminated]);
    }

    // ---- non-INVITE, Figure 8 ---------------------------------------------

    #[test]
    fn non_invite_retransmission_before_a_response_is_discarded() {
        let (mut tx, _) = start(false, false);
        assert_eq!(tx.state(), ServerState::Trying);
        assert!(!tx.is_invite());
        assert_eq!(tx.on_retransmission(), None);
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn non_invite_retransmission_after_a_provisional_gets_it() {
        let (mut tx, t0) = start(false, false);
        assert_eq!(tx.send_response(100, TRYING.to_vec(), t0), [send(TRYING)]);
        assert_eq!(tx.state(), ServerState::Proceeding);
        assert_eq!(tx.on_retransmission().as_deref(), Some(TRYING));
        assert_eq!(tx.send_response(183, RINGING.to_vec(), t0), [send(RINGING)]);
        assert_eq!(tx.on_retransmission().as_deref(), Some(RINGING));
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn non_invite_final_completes_and_timer_j_terminates() {
        for (status, bytes, provisional_first) in [(200, OK, false), (404, NOT_FOUND, true)] {
            let (mut tx, t0) = start(false, false);
            if provisional_first {
                assert_eq!(tx.send_response(100, TRYING.to_vec(), t0), [send(TRYING)]);
            }
            let t = t0 + ms(1_000);
            assert_eq!(tx.send_response(status, bytes.to_vec(), t), [send(bytes)]);
            assert_eq!(tx.state(), ServerState::Completed);
            assert_eq!(tx.on_retransmission().as_deref(), Some(bytes));
            // Nothing more may be sent, and nothing is retransmitted.
            assert_eq!(tx.send_response(100, TRYING.to_vec(), t), []);
            assert_eq!(tx.send_response(200, OK.to_vec(), t), []);
            assert_eq!(tx.last_status(), Some(status));
            // Timer J = 64*T1 over UDP.
            assert_eq!(timeline(&mut tx, t0, ms(100_000)), [(33_000, Terminated)]);
        }
    }

    #[test]
    fn non_invite_tcp_timer_j_is_zero() {
        let (mut tx, t0) = start(false, true);
        let t = t0 + ms(100);
        assert_eq!(tx.send_response(200, OK.to_vec(), t), [send(OK)]);
        assert_eq!(tx.next_deadline(), Some(t));
        assert_eq!(tx.on_timer(t), [Terminated]);
    }

    #[test]
    fn non_invite_ack_is_never_the_transactions() {
        let (mut tx, t0) = start(false, false);
        assert!(!tx.on_ack(t0));
        assert_eq!(tx.send_response(200, OK.to_vec(), t0), [send(OK)]);
        assert!(!tx.on_ack(t0));
        assert_eq!(tx.state(), ServerState::Completed);
    }
}
