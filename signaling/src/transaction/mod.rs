//! RFC 3261 §17 transactions, with RFC 6026's correction of how 2xx
//! responses to INVITE are handled.
//!
//! Four state machines: [`ClientTransaction`] (Figure 5 for INVITE,
//! Figure 6 otherwise) and [`ServerTransaction`] (Figure 7 for INVITE,
//! Figure 8 otherwise), each with its timers from Table 4 ([`Timers`]).
//!
//! # I/O-free
//! Like quinn-proto, this layer owns no socket and no clock. The transaction
//! user (the proxy core, "TU") feeds it events with the current time and
//! performs the [`Action`]s it returns, in order. It does not parse SIP
//! either: it sees status codes, "is this INVITE" and "is this transport
//! reliable" as booleans, and message bytes the TU built. Matching a message
//! to its transaction (§17.1.3, §17.2.3) is the TU's job too.
//!
//! # Time
//! After any call, `next_deadline()` is the exact instant the transaction
//! next needs [`on_timer`](ClientTransaction::on_timer), or `None` if only a
//! message or the TU can move it on; the TU keeps every transaction's
//! deadline in one timer wheel or heap and re-reads it after each call.
//! Calling `on_timer` early does nothing; calling it exactly at the
//! deadline always does something. If the TU calls late:
//! - a due timeout or end-of-transaction timer wins: a retransmission due at
//!   the same time is not sent;
//! - retransmissions it missed collapse into one, and the schedule stays on
//!   its grid (see [`Timers`] for the intervals).
//!
//! Over a reliable transport Timers D, I, J and K are zero: the transaction
//! enters the state they guard with its deadline at the instant of the
//! event, and the TU's next `on_timer` (due at once) terminates it. This
//! leaves the TU the chance to act first, e.g. to hand a client INVITE
//! transaction the ACK for a non-2xx final ([`ClientTransaction::set_ack`]).
//!
//! # Ending
//! A transaction reports [`Action::Terminated`] exactly once, as the last
//! action of the call that ended it. After that every call is a no-op that
//! returns no action, and the TU drops the transaction.

mod client;
mod server;
mod timers;

#[cfg(test)]
mod invariants;

pub use client::{ClientState, ClientTransaction, ResponseVerdict};
pub use server::{ServerState, ServerTransaction};
pub use timers::Timers;

/// Something for the TU to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// (Re)transmit these bytes to the transaction's peer.
    Send(Vec<u8>),
    /// The transaction timed out (Timer B / F: the TU answers 408 upstream,
    /// §16.8; Timer H: no ACK came), or, for a client transaction that has
    /// no final response yet, the transport failed (§17.1.4). Always
    /// followed by [`Action::Terminated`].
    Timeout,
    /// The transaction is over; the TU drops it.
    Terminated,
}

/// The class of a response status code (RFC 3261 §7.2, §21), as far as the
/// state machines care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusClass {
    /// 1xx.
    Provisional,
    /// 2xx: the one class RFC 6026 treats apart for INVITE.
    Success,
    /// 3xx–6xx.
    Failure,
    /// Outside 100–699: not a SIP status code. The state machines ignore it
    /// rather than guess.
    Invalid,
}

impl StatusClass {
    fn of(status: u16) -> Self {
        match status {
            100..=199 => Self::Provisional,
            200..=299 => Self::Success,
            300..=699 => Self::Failure,
            _ => Self::Invalid,
        }
    }
}

/// Test helpers shared by the state machines' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::time::{Duration, Instant};

    use super::{Action, ClientTransaction, ServerTransaction};

    /// A transaction the virtual clock can drive.
    pub(crate) trait Clocked {
        fn next_deadline(&self) -> Option<Instant>;
        fn on_timer(&mut self, now: Instant) -> Vec<Action>;
    }

    impl Clocked for ClientTransaction {
        fn next_deadline(&self) -> Option<Instant> {
            ClientTransaction::next_deadline(self)
        }
        fn on_timer(&mut self, now: Instant) -> Vec<Action> {
            ClientTransaction::on_timer(self, now)
        }
    }

    impl Clocked for ServerTransaction {
        fn next_deadline(&self) -> Option<Instant> {
            ServerTransaction::next_deadline(self)
        }
        fn on_timer(&mut self, now: Instant) -> Vec<Action> {
            ServerTransaction::on_timer(self, now)
        }
    }

    /// Milliseconds.
    pub(crate) fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Lets time pass, firing every deadline up to `start + until`: what
    /// happened when, in milliseconds since `start`.
    pub(crate) fn timeline(
        tx: &mut impl Clocked,
        start: Instant,
        until: Duration,
    ) -> Vec<(u64, Action)> {
        let mut happened = Vec::new();
        while let Some(at) = tx.next_deadline().filter(|&at| at <= start + until) {
            let actions = tx.on_timer(at);
            assert!(!actions.is_empty(), "a deadline that does nothing");
            let since = u64::try_from((at - start).as_millis()).unwrap_or(u64::MAX);
            happened.extend(actions.into_iter().map(|action| (since, action)));
        }
        happened
    }

    /// `Send(bytes)`, shorter.
    pub(crate) fn send(bytes: &[u8]) -> Action {
        Action::Send(bytes.to_vec())
    }
}
