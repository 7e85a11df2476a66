//! Property-style tests: all four machines driven by random event sequences
//! from a fixed-seed generator (so a failure replays exactly), checking the
//! invariants the TU relies on after every step:
//!
//! - no deadline is ever in the past, and after `on_timer(now)` none is
//!   at or before `now`;
//! - a deadline is exact: `on_timer` at it always does something;
//! - `Terminated` is reported exactly once, last, and nothing follows it;
//!   `Timeout` comes only right before it;
//! - states move only along the figures' edges and belong to the machine;
//! - every state only timers can leave has a deadline (nothing leaks), so
//!   letting time run ends such a transaction;
//! - whatever is sent is the request, the TU's ACK or the TU's response;
//! - nothing panics, even with zero or absurd timers.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use super::{
    Action, ClientState, ClientTransaction, ResponseVerdict, ServerState, ServerTransaction, Timers,
};

/// SplitMix64: tiny, good enough to shuffle events, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        let index = usize::try_from(self.below(items.len() as u64)).unwrap_or(0);
        items[index]
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// Valid codes of every class, and some that are not status codes at all.
const STATUSES: &[u16] = &[100, 180, 183, 200, 202, 302, 404, 486, 503, 603, 0, 99, 700];

const REQUEST: &[u8] = b"REQUEST";

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn sane_timers(rng: &mut Rng) -> Timers {
    if rng.chance(2) {
        return Timers::default();
    }
    Timers {
        t1: ms(rng.pick(&[0, 1, 50, 100, 500, 1_000])),
        t2: ms(rng.pick(&[0, 1, 100, 4_000])),
        t4: ms(rng.pick(&[0, 1, 5_000])),
    }
}

fn absurd_timers(rng: &mut Rng) -> Timers {
    let huge = [
        Duration::MAX,
        Duration::from_secs(u64::MAX / 2),
        Duration::ZERO,
        ms(1),
    ];
    Timers {
        t1: rng.pick(&huge),
        t2: rng.pick(&huge),
        t4: rng.pick(&huge),
    }
}

/// Whether `state` is one of the machine's (Figures 5 and 6, RFC 6026).
fn client_state_belongs(invite: bool, state: ClientState) -> bool {
    match state {
        ClientState::Calling | ClientState::Accepted => invite,
        ClientState::Trying => !invite,
        ClientState::Proceeding | ClientState::Completed | ClientState::Terminated => true,
    }
}

fn client_edge(from: ClientState, to: ClientState) -> bool {
    let rank = |state: ClientState| match state {
        ClientState::Calling | ClientState::Trying => 0,
        ClientState::Proceeding => 1,
        ClientState::Accepted | ClientState::Completed => 2,
        ClientState::Terminated => 3,
    };
    from == to || rank(to) > rank(from)
}

/// Whether `state` is one of the machine's (Figures 7 and 8, RFC 6026).
fn server_state_belongs(invite: bool, state: ServerState) -> bool {
    match state {
        ServerState::Accepted | ServerState::Confirmed => invite,
        ServerState::Trying => !invite,
        ServerState::Proceeding | ServerState::Completed | ServerState::Terminated => true,
    }
}

fn server_edge(from: ServerState, to: ServerState) -> bool {
    let rank = |state: ServerState| match state {
        ServerState::Trying => 0,
        ServerState::Proceeding => 1,
        ServerState::Accepted | ServerState::Completed => 2,
        ServerState::Confirmed => 3,
        ServerState::Terminated => 4,
    };
    let confirmed_from_completed = to != ServerState::Confirmed
        || matches!(from, ServerState::Completed | ServerState::Confirmed);
    from == to || (rank(to) > rank(from) && confirmed_from_completed)
}

/// One transaction under test, with what the test knows it should hold.
struct Run {
    machine: Machine,
    invite: bool,
    now: Instant,
    terminated: bool,
    /// Client: the last ACK handed over. Server: the last response sent.
    sent: Option<Vec<u8>>,
    /// Whether the timers are sane enough for every deadline to exist.
    sane: bool,
    step: u64,
}

/// The state of a transaction before a step.
struct Before {
    client: Option<ClientState>,
    server: Option<ServerState>,
    deadline: Option<Instant>,
}

enum Machine {
    Client(ClientTransaction),
    Server(ServerTransaction),
}

impl Run {
    fn new(rng: &mut Rng, start: Instant, sane: bool) -> Self {
        let invite = rng.chance(2);
        let reliable = rng.chance(2);
        let timers = if sane {
            sane_timers(rng)
        } else {
            absurd_timers(rng)
        };
        let (machine, actions) = if rng.chance(2) {
            let (tx, actions) =
                ClientTransaction::new(invite, reliable, REQUEST.to_vec(), start, timers);
            assert_eq!(actions, [Action::Send(REQUEST.to_vec())]);
            (Machine::Client(tx), actions)
        } else {
            (
                Machine::Server(ServerTransaction::new(invite, reliable, start, timers)),
                Vec::new(),
            )
        };
        let mut run = Self {
            machine,
            invite,
            now: start,
            terminated: false,
            sent: None,
            sane,
            step: 0,
        };
        run.check(&actions, false, None);
        run
    }

    /// Which machine, in which state.
    fn label(&self) -> String {
        match &self.machine {
            Machine::Client(tx) => format!("client invite={} {:?}", self.invite, tx.state()),
            Machine::Server(tx) => format!("server invite={} {:?}", self.invite, tx.state()),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match &self.machine {
            Machine::Client(tx) => tx.next_deadline(),
            Machine::Server(tx) => tx.next_deadline(),
        }
    }

    fn on_timer(&mut self) -> Vec<Action> {
        match &mut self.machine {
            Machine::Client(tx) => tx.on_timer(self.now),
            Machine::Server(tx) => tx.on_timer(self.now),
        }
    }

    fn is_terminated(&self) -> bool {
        match &self.machine {
            Machine::Client(tx) => tx.state() == ClientState::Terminated,
            Machine::Server(tx) => tx.state() == ServerState::Terminated,
        }
    }

    /// States that only a message or the TU moves on: no deadline needed.
    fn awaits_peer_or_tu(&self) -> bool {
        match &self.machine {
            Machine::Client(tx) => tx.is_invite() && tx.state() == ClientState::Proceeding,
            Machine::Server(tx) => {
                matches!(tx.state(), ServerState::Trying | ServerState::Proceeding)
            }
        }
    }

    /// What the checks compare with after a step.
    fn snapshot(&self) -> Before {
        let (client, server) = match &self.machine {
            Machine::Client(tx) => (Some(tx.state()), None),
            Machine::Server(tx) => (None, Some(tx.state())),
        };
        Before {
            client,
            server,
            deadline: self.next_deadline(),
        }
    }

    /// One random event.
    fn step(&mut self, rng: &mut Rng) {
        self.step += 1;
        let before = self.snapshot();
        let mut timer = false;
        let actions = match rng.below(10) {
            0 => {
                self.now += ms(rng.below(2_000));
                Vec::new()
            }
            1 => {
                self.now += ms(rng.below(40_000));
                Vec::new()
            }
            // The TU's timer wheel fires (late, if time ran past it).
            2 | 3 => match self.next_deadline() {
                Some(at) => {
                    self.now = self.now.max(at);
                    timer = true;
                    let actions = self.on_timer();
                    assert!(!actions.is_empty(), "a deadline that does nothing");
                    actions
                }
                None => Vec::new(),
            },
            4 => {
                timer = true;
                self.on_timer()
            }
            _ => self.message(rng),
        };
        self.check(&actions, timer, Some(before));
    }

    /// A message from the peer or a call from the TU.
    fn message(&mut self, rng: &mut Rng) -> Vec<Action> {
        let now = self.now;
        let terminated = self.terminated;
        match &mut self.machine {
            Machine::Client(tx) => match rng.below(8) {
                0 => {
                    let ack = format!("ACK {}", self.step).into_bytes();
                    let actions = tx.set_ack(ack.clone());
                    if !actions.is_empty() {
                        assert_eq!(actions, [Action::Send(ack.clone())]);
                        self.sent = Some(ack);
                    }
                    actions
                }
                1 if rng.chance(4) => tx.on_transport_error(),
                _ => {
                    let (verdict, actions) = tx.on_response(rng.pick(STATUSES), now);
                    if terminated {
                        assert_eq!(verdict, ResponseVerdict::Absorb);
                    }
                    if verdict == ResponseVerdict::Forward {
                        assert!(
                            actions.is_empty(),
                            "a forwarded response is no retransmission"
                        );
                    }
                    actions
                }
            },
            Machine::Server(tx) => match rng.below(8) {
                0 => {
                    let again = tx.on_retransmission();
                    if again.is_some() {
                        assert!(matches!(
                            tx.state(),
                            ServerState::Proceeding | ServerState::Completed
                        ));
                        assert_eq!(
                            again, self.sent,
                            "a retransmitted request gets the last response"
                        );
                    }
                    Vec::new()
                }
                1 => {
                    let absorbed = tx.on_ack(now);
                    if terminated {
                        assert!(!absorbed);
                    }
                    Vec::new()
                }
                2 if rng.chance(4) => tx.on_transport_error(),
                _ => {
                    let status = rng.pick(STATUSES);
                    let bytes = format!("{status} {}", self.step).into_bytes();
                    let actions = tx.send_response(status, bytes.clone(), now);
                    if !actions.is_empty() {
                        assert_eq!(actions, [Action::Send(bytes.clone())]);
                        assert_eq!(tx.last_status(), Some(status));
                        self.sent = Some(bytes);
                    }
                    actions
                }
            },
        }
    }

    fn check(&mut self, actions: &[Action], timer: bool, before: Option<Before>) {
        let deadline_before = before.as_ref().and_then(|before| before.deadline);
        // Nothing after Terminated; Terminated once, last; Timeout right
        // before it.
        if self.terminated {
            assert!(actions.is_empty(), "actions after Terminated: {actions:?}");
        }
        for (index, action) in actions.iter().enumerate() {
            match action {
                Action::Terminated => {
                    assert_eq!(index + 1, actions.len(), "Terminated is not last");
                    self.terminated = true;
                }
                Action::Timeout => {
                    assert_eq!(actions.get(index + 1), Some(&Action::Terminated));
                }
                Action::Send(bytes) => {
                    let expected = match &self.machine {
                        // A retransmitted request, or the TU's ACK again.
                        Machine::Client(_) => {
                            bytes == REQUEST || self.sent.as_deref() == Some(bytes.as_slice())
                        }
                        Machine::Server(_) => self.sent.as_deref() == Some(bytes.as_slice()),
                    };
                    assert!(expected, "sent something unexpected: {bytes:?}");
                }
            }
        }
        assert_eq!(
            self.is_terminated(),
            self.terminated,
            "state and report disagree"
        );

        // Deadlines: never in the past; none left due after on_timer; none
        // once terminated; present whenever only a timer can move on.
        let deadline = self.next_deadline();
        if let Some(at) = deadline {
            // A deadline the sloppy TU let pass may stay; a new one may not
            // be set in the past.
            assert!(
                at >= self.now || deadline == deadline_before,
                "a deadline in the past"
            );
            if timer {
                assert!(at > self.now, "on_timer left a due deadline");
            }
        }
        if self.terminated {
            assert_eq!(deadline, None);
        } else if self.sane && !self.awaits_peer_or_tu() {
            assert!(
                deadline.is_some(),
                "a state only a timer can leave has no deadline"
            );
        }

        // The figures' edges, within the machine's own states.
        let (client_before, server_before) = before.map_or((None, None), |b| (b.client, b.server));
        match &self.machine {
            Machine::Client(tx) => {
                assert!(client_state_belongs(self.invite, tx.state()));
                if let Some(from) = client_before {
                    assert!(
                        client_edge(from, tx.state()),
                        "{from:?} -> {:?}",
                        tx.state()
                    );
                    if actions.contains(&Action::Timeout) {
                        assert!(matches!(
                            from,
                            ClientState::Calling | ClientState::Trying | ClientState::Proceeding
                        ));
                    }
                }
            }
            Machine::Server(tx) => {
                assert!(server_state_belongs(self.invite, tx.state()));
                if let Some(from) = server_before {
                    assert!(
                        server_edge(from, tx.state()),
                        "{from:?} -> {:?}",
                        tx.state()
                    );
                    if actions.contains(&Action::Timeout) {
                        assert!(self.invite && from == ServerState::Completed);
                    }
                }
            }
        }
    }

    /// Lets time run out: a transaction that does not wait on its peer or
    /// the TU must end.
    fn drain(&mut self) {
        let mut fired = 0_u32;
        while let Some(at) = self.next_deadline() {
            let before = self.snapshot();
            self.now = at;
            let actions = self.on_timer();
            assert!(!actions.is_empty(), "a deadline that does nothing");
            self.check(&actions, true, Some(before));
            fired += 1;
            assert!(fired < 200_000, "the timers never run out");
        }
        if self.sane {
            assert!(self.terminated || self.awaits_peer_or_tu());
        }
    }
}

#[test]
fn random_event_sequences_keep_the_invariants() {
    let mut rng = Rng(0x5eed_2026_0326_1000);
    let start = Instant::now();
    let mut seen = HashSet::new();
    for _ in 0..4_000 {
        let mut run = Run::new(&mut rng, start, true);
        seen.insert(run.label());
        for _ in 0..rng.below(60) {
            run.step(&mut rng);
            seen.insert(run.label());
        }
        run.drain();
    }
    // Not vacuous: every state of all four machines was visited (client
    // INVITE 5, non-INVITE 4; server INVITE 5, non-INVITE 4).
    assert_eq!(seen.len(), 18, "{seen:?}");
}

#[test]
fn absurd_timers_neither_panic_nor_spin() {
    let mut rng = Rng(0x0ab5);
    let start = Instant::now();
    for _ in 0..1_000 {
        let mut run = Run::new(&mut rng, start, false);
        for _ in 0..rng.below(40) {
            run.step(&mut rng);
        }
        run.drain();
    }
}
