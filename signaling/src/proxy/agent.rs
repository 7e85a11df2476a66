//! The transaction user of a stateful, record-routing proxy (RFC 3261
//! §16): the [`Agent`], what it keeps per transaction and per call, and
//! where each input is dispatched. The work itself is in the sibling files:
//! `routing.rs` (where a request goes), `ack_cancel.rs`, `responses.rs`,
//! `media.rs` (media anchoring over ng) and `stats.rs` (counters).
//!
//! Requests from a trunk go to the PBX; requests from the PBX go to the
//! trunk a rule selects; anyone else gets 403. The agent Record-Routes
//! twice when a request crosses from one side to the other (one entry per
//! side, RFC 5658 §4), each signed for the call (`signature.rs`), so
//! in-dialog requests come back through it and are let through by that
//! signature or by the dialog the agent remembers (`in_dialog.rs`) — the
//! signature is what lets a restarted agent carry on with calls it does
//! not remember. It remembers its established calls all the same when the
//! runtime kept their records (`record.rs`, [`Agent::restore`]).

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant, SystemTime},
};

use tracing::{debug, warn};

use super::{
    NgOutcome, Output, Peer, advertise::Advertised, dialog::Dialog, in_dialog::Reoffer, media,
    ratelimit::RateLimit, record, signature::RouteKey, stats::Stats,
};
use crate::{
    config::SipConfig,
    message::{Message, MessageError, Method},
    transaction::{Action, ClientTransaction, ServerTransaction, Timers},
};

/// RFC 3261 §17.2.3: a server transaction is identified by the branch,
/// the sent-by of the top Via and the method (ACK matches its INVITE).
pub(super) type ServerKey = (String, String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Trunk(usize),
    Pbx,
}

impl Side {
    /// The party's ng `label` (`media::Sdp::label`).
    pub(super) const fn label(self) -> &'static str {
        match self {
            Side::Trunk(_) => "trunk",
            Side::Pbx => "pbx",
        }
    }
}

pub(super) struct ServerEntry {
    pub(super) tx: ServerTransaction,
    pub(super) peer: Peer,
    pub(super) request: Message,
    /// The client transaction forwarding this request.
    pub(super) client: Option<String>,
    /// A CANCEL arrived.
    pub(super) cancelled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Forwarding a request of a server transaction.
    Forward,
    /// A CANCEL we sent downstream.
    Cancel,
    /// Our own BYE (media timeout).
    OwnBye,
}

pub(super) struct ClientEntry {
    pub(super) tx: ClientTransaction,
    pub(super) peer: Peer,
    pub(super) request: Message,
    pub(super) server: Option<ServerKey>,
    pub(super) purpose: Purpose,
    /// CANCEL requested before any provisional response (§9.1: wait).
    pub(super) cancel_pending: bool,
}

/// A call, from its first INVITE.
pub(super) struct Call {
    pub(super) caller_tag: String,
    pub(super) from_side: Side,
    pub(super) to_side: Side,
    pub(super) node: SocketAddr,
    /// The INVITE carried no SDP: the 2xx has the offer, the ACK the answer.
    pub(super) late_offer: bool,
    pub(super) dialog: Option<Dialog>,
    /// To-tags that answered with SDP (forking).
    pub(super) answered_tags: Vec<String>,
    /// Rewritten SDP per (CSeq, to-tag, status), for retransmissions.
    pub(super) sdp_cache: HashMap<(u32, String, u16), Vec<u8>>,
    pub(super) created: Instant,
    pub(super) ended: bool,
    /// Restored from an earlier agent's record and not yet seen in its
    /// media node's `list` (`Agent::check_restored`).
    pub(super) restored: bool,
}

pub(super) enum Pending {
    /// A request to forward once the media node rewrote its SDP.
    Request {
        server: Option<ServerKey>,
        message: Message,
        peer: Peer,
        branch: String,
    },
    /// A response to forward upstream once rewritten.
    Response {
        server: ServerKey,
        message: Message,
        cache: Option<(String, (u32, String, u16))>,
    },
    /// An ACK (late-offer answer) to forward statelessly once rewritten.
    Ack { message: Message, peer: Peer },
    /// A validly signed re-offer for a call this agent does not remember
    /// (it restarted), waiting for the media node to say whether it still
    /// has the call.
    Reoffer(Box<Reoffer>),
    /// A delete: nothing waits for it.
    Delete,
    /// A `list` poll of a media node.
    Poll { node: SocketAddr },
}

/// The party whose SDP an offer carries.
pub(super) struct Party<'a> {
    pub(super) tag: &'a str,
    /// The other party's tag, once known (re-offers).
    pub(super) other: Option<&'a str>,
    /// The SIP message's source address.
    pub(super) source: IpAddr,
    /// Its side, when known.
    pub(super) side: Option<Side>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TxRef {
    Server(ServerKey),
    Client(String),
}

pub struct Agent {
    pub(super) cfg: SipConfig,
    timers: Timers,
    pub(super) servers: HashMap<ServerKey, ServerEntry>,
    pub(super) clients: HashMap<String, ClientEntry>,
    pub(super) calls: HashMap<String, Call>,
    pub(super) pending: HashMap<u64, Pending>,
    deadlines: BinaryHeap<Reverse<(Instant, TxRef)>>,
    next_id: u64,
    next_branch: u64,
    nonce: u64,
    pub(super) rate: RateLimit,
    /// Refusals answered per source.
    pub(super) refusals: RateLimit,
    /// Signs our Record-Route entries.
    pub(super) key: RouteKey,
    next_poll: Instant,
    next_sweep: Instant,
    /// The wall clock at an instant (records carry unix times).
    epoch: (Instant, SystemTime),
    pub(super) stats: Stats,
    out: Vec<Output>,
    /// Advertised addresses (`advertise.rs`).
    pub(super) adv: Advertised,
}

/// What [`Agent::restore`] made of the records it was given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Calls known again.
    pub calls: usize,
    /// Records skipped, by reason (`record::Skip::reason`).
    pub skipped: BTreeMap<&'static str, u64>,
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        481 => "Call/Transaction Does Not Exist",
        483 => "Too Many Hops",
        487 => "Request Terminated",
        500 => "Server Internal Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

impl Agent {
    /// An agent signing its Record-Route entries with `key` (the runtime
    /// loads it: `record-route-secret`, or the runtime directory).
    pub fn new(cfg: SipConfig, key: RouteKey, now: Instant) -> Self {
        let wall = SystemTime::now();
        let nonce = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let rate = RateLimit::new(cfg.invite_rate);
        let refusals = RateLimit::new(cfg.refusal_rate);
        let next_poll = now + cfg.media_poll;
        Self {
            cfg,
            timers: Timers::default(),
            servers: HashMap::new(),
            clients: HashMap::new(),
            calls: HashMap::new(),
            pending: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_id: 1,
            next_branch: 1,
            nonce,
            rate,
            refusals,
            key,
            next_poll,
            next_sweep: now + Duration::from_secs(30),
            epoch: (now, wall),
            stats: Stats::default(),
            out: Vec::new(),
            adv: Advertised::default(),
        }
    }

    pub fn config(&self) -> &SipConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Calls the agent tracks.
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// Live transactions (server + client).
    pub fn transactions(&self) -> usize {
        self.servers.len() + self.clients.len()
    }

    /// ng requests awaiting a reply.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Calls established before a restart, from the records an earlier
    /// agent emitted ([`Output::Dialog`]) and the runtime kept; `wall` is
    /// the wall clock at `now`. Call it before any traffic. Each call
    /// restored is emitted again (with its CSeqs raised, `record.rs`), so
    /// the store ends up holding exactly the calls restored; an unusable
    /// record is skipped and counted, and a later one for the same call
    /// replaces an earlier one.
    pub fn restore<R: AsRef<[u8]>>(
        &mut self,
        records: impl IntoIterator<Item = R>,
        now: Instant,
        wall: SystemTime,
    ) -> Restored {
        self.epoch = (now, wall);
        let now_unix = self.unix_time(now);
        let mut restored = Restored::default();
        let mut ids = Vec::new();
        for bytes in records {
            match record::decode(&self.cfg, bytes.as_ref(), now_unix, now) {
                Ok(call) => {
                    let Some(id) = call.dialog.as_ref().map(|d| d.call_id.clone()) else {
                        continue;
                    };
                    if self.calls.insert(id.clone(), call).is_none() {
                        ids.push(id);
                    }
                }
                Err(skip) => {
                    debug!(reason = skip.reason(), error = %skip, "dialog record skipped");
                    *restored.skipped.entry(skip.reason()).or_default() += 1;
                }
            }
        }
        for id in &ids {
            self.save(id, now);
        }
        restored.calls = ids.len();
        self.stats.dialogs_restored += ids.len() as u64;
        for (reason, n) in &restored.skipped {
            *self
                .stats
                .dialogs_skipped
                .entry((*reason).to_owned())
                .or_default() += n;
        }
        restored
    }

    /// What the I/O layer must do now.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// When `on_timer` is next due.
    pub fn next_deadline(&self) -> Instant {
        let tx = self.deadlines.peek().map(|Reverse((t, _))| *t);
        let mut d = self.next_poll.min(self.next_sweep);
        if let Some(t) = tx {
            d = d.min(t);
        }
        d
    }

    // ---- plumbing ----------------------------------------------------------

    /// Unix seconds at `now`.
    fn unix_time(&self, now: Instant) -> u64 {
        let (at, wall) = self.epoch;
        let wall = match now.checked_duration_since(at) {
            Some(d) => wall + d,
            None => wall
                .checked_sub(at.duration_since(now))
                .unwrap_or(SystemTime::UNIX_EPOCH),
        };
        wall.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// Emit the record of `call_id` (established calls only).
    pub(super) fn save(&mut self, call_id: &str, now: Instant) {
        let saved = self.unix_time(now);
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        if call.dialog.is_none() {
            return;
        }
        match record::encode(&self.cfg, call, saved) {
            Some(bytes) => self.out.push(Output::Dialog {
                call_id: call_id.to_owned(),
                record: Some(bytes),
            }),
            None => warn!(%call_id, "dialog record not encoded"),
        }
    }

    /// Forget a call, and its record if it had one.
    pub(super) fn forget(&mut self, call_id: &str) -> Option<Call> {
        let call = self.calls.remove(call_id)?;
        if call.dialog.is_some() {
            self.out.push(Output::Dialog {
                call_id: call_id.to_owned(),
                record: None,
            });
        }
        Some(call)
    }

    pub(super) fn send(&mut self, peer: Peer, bytes: Vec<u8>) {
        self.out.push(Output::Send { peer, bytes });
    }

    pub(super) fn ng(&mut self, node: SocketAddr, request: ng::Value, pending: Pending) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, pending);
        self.out.push(Output::Ng { id, node, request });
        id
    }

    pub(super) fn new_branch(&mut self) -> String {
        let b = format!("z9hG4bK-mr{:x}-{:x}", self.nonce, self.next_branch);
        self.next_branch += 1;
        b
    }

    pub(super) fn schedule(&mut self, at: Option<Instant>, r: TxRef) {
        if let Some(at) = at {
            self.deadlines.push(Reverse((at, r)));
        }
    }

    /// Respond to a request without a transaction (errors before one
    /// exists, CANCEL's 200).
    pub(super) fn respond_stateless(
        &mut self,
        peer: Peer,
        req: &Message,
        status: u16,
        extra: &[(&str, &str)],
    ) {
        let mut r = req.response(status, reason(status), (status > 100).then_some("mr-proxy"));
        for (k, v) in extra {
            r.set_header(k, v);
        }
        self.stats.count_response(req.method().as_str(), status);
        self.send(peer, r.to_bytes());
    }

    /// Respond through the server transaction of `key`.
    pub(super) fn respond(&mut self, key: &ServerKey, status: u16, now: Instant) {
        let Some(entry) = self.servers.get(key) else {
            return;
        };
        let to_tag = (status > 100 && entry.request.to_tag().is_none()).then_some("mr-proxy");
        let r = entry.request.response(status, reason(status), to_tag);
        self.forward_response(key, r, now);
    }

    pub(super) fn forward_response(&mut self, key: &ServerKey, response: Message, now: Instant) {
        let status = response.status().unwrap_or(500);
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        let actions = entry.tx.send_response(status, response.to_bytes(), now);
        let peer = entry.peer;
        let next = entry.tx.next_deadline();
        let method = entry.request.method();
        self.stats.count_response(method.as_str(), status);
        self.run_server_actions(key, peer, actions);
        self.schedule(next, TxRef::Server(key.clone()));
    }

    fn run_server_actions(&mut self, key: &ServerKey, peer: Peer, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send(bytes) => self.send(peer, bytes),
                Action::Timeout => debug!(branch = %key.0, "server transaction timed out (no ACK)"),
                Action::Terminated => {
                    self.servers.remove(key);
                }
            }
        }
    }

    /// Start a client transaction sending `request` to `peer`.
    pub(super) fn start_client(
        &mut self,
        branch: String,
        request: Message,
        peer: Peer,
        server: Option<ServerKey>,
        purpose: Purpose,
        now: Instant,
    ) {
        let invite = request.method() == Method::Invite;
        let (tx, actions) = ClientTransaction::new(
            invite,
            peer.transport.reliable(),
            request.to_bytes(),
            now,
            self.timers,
        );
        let next = tx.next_deadline();
        if let Some(k) = &server
            && let Some(s) = self.servers.get_mut(k)
        {
            s.client = Some(branch.clone());
        }
        self.clients.insert(
            branch.clone(),
            ClientEntry {
                tx,
                peer,
                request,
                server,
                purpose,
                cancel_pending: false,
            },
        );
        self.run_client_actions(&branch, actions, now);
        self.schedule(next, TxRef::Client(branch));
    }

    pub(super) fn run_client_actions(&mut self, branch: &str, actions: Vec<Action>, now: Instant) {
        for a in actions {
            match a {
                Action::Send(bytes) => {
                    if let Some(c) = self.clients.get(branch) {
                        let peer = c.peer;
                        self.send(peer, bytes);
                    }
                }
                Action::Timeout => self.client_timed_out(branch, now),
                Action::Terminated => {
                    self.clients.remove(branch);
                }
            }
        }
    }

    /// Timer B/F: nobody answered downstream (§16.8: 408 upstream).
    fn client_timed_out(&mut self, branch: &str, now: Instant) {
        let Some(c) = self.clients.get(branch) else {
            return;
        };
        let (server, purpose, method) = (c.server.clone(), c.purpose, c.request.method());
        let call_id = c.request.call_id().to_owned();
        debug!(%branch, %call_id, ?method, "no answer downstream");
        if purpose != Purpose::Forward {
            return;
        }
        if let Some(key) = server
            && let Some(s) = self.servers.get(&key)
            && s.tx.last_status().is_none_or(|st| st < 200)
        {
            self.respond(&key, 408, now);
        }
        if method == Method::Invite && self.calls.get(&call_id).is_some_and(|c| c.dialog.is_none())
        {
            self.end_call(&call_id, None);
        }
        if method == Method::Bye {
            self.forget(&call_id);
        }
    }

    pub(super) fn respond_with(
        &mut self,
        key: &ServerKey,
        status: u16,
        extra: &[(&str, &str)],
        now: Instant,
    ) {
        let Some(entry) = self.servers.get(key) else {
            return;
        };
        let mut r = entry
            .request
            .response(status, reason(status), Some("mr-proxy"));
        for (k, v) in extra {
            r.set_header(k, v);
        }
        self.forward_response(key, r, now);
    }

    // ---- input ----------------------------------------------------------

    /// A message that failed to parse: 400 if a response can be formed,
    /// within `refusal-rate` per source like every refusal (garbage comes
    /// from anyone, spoofed sources included: answering all of it would
    /// reflect a flood at whoever the sources name).
    pub fn on_malformed(&mut self, peer: Peer, raw: &[u8], error: &MessageError, now: Instant) {
        self.stats.malformed += 1;
        debug!(remote = %peer.remote, %error, "malformed SIP message");
        if let Some(r) = Message::rejection(raw, error, Some("mr-proxy")) {
            if !self.refusals.admit(peer.remote.ip(), now) {
                self.stats.refusals_unanswered += 1;
                return;
            }
            *self
                .stats
                .responses
                .entry(r.status().unwrap_or(400))
                .or_default() += 1;
            self.send(peer, r.to_bytes());
        }
    }

    /// A parsed message arrived.
    pub fn on_message(&mut self, peer: Peer, mut msg: Message, now: Instant) {
        // Everything logged about this message carries its call's id.
        let _span = tracing::info_span!("sip", call_id = %msg.call_id()).entered();
        if !msg.is_request() {
            self.on_response(peer, msg, now);
            return;
        }
        let method = msg.method();
        *self
            .stats
            .requests
            .entry(method.as_str().to_owned())
            .or_default() += 1;
        msg.set_top_via_received(peer.remote.ip(), peer.remote.port());
        let Some(side) = self.classify(peer.remote) else {
            self.stats.rejected_sources += 1;
            debug!(remote = %peer.remote, ?method, "request from an unknown source refused");
            if method != Method::Ack {
                if self.refusals.admit(peer.remote.ip(), now) {
                    self.respond_stateless(peer, &msg, 403, &[]);
                } else {
                    self.stats.refusals_unanswered += 1;
                }
            }
            return;
        };
        match method {
            Method::Ack => self.on_ack(peer, side, msg, now),
            Method::Cancel => self.on_cancel(peer, &msg, now),
            _ => {
                let via = msg.top_via();
                let key: ServerKey = (
                    via.branch.clone().unwrap_or_default(),
                    format!("{}:{}", via.host, via.port_or_default()),
                    method.as_str().to_owned(),
                );
                if let Some(s) = self.servers.get_mut(&key) {
                    if let Some(bytes) = s.tx.on_retransmission() {
                        let peer = s.peer;
                        self.send(peer, bytes);
                    }
                    return;
                }
                let invite = method == Method::Invite;
                let tx =
                    ServerTransaction::new(invite, peer.transport.reliable(), now, self.timers);
                self.servers.insert(
                    key.clone(),
                    ServerEntry {
                        tx,
                        peer,
                        request: msg.clone(),
                        client: None,
                        cancelled: false,
                    },
                );
                if msg.max_forwards() == 0 {
                    self.respond(&key, 483, now);
                    return;
                }
                if msg.to_tag().is_some() {
                    self.in_dialog(key, side, msg, now);
                } else if method == Method::Options && self.addressed_to_us(&msg) {
                    self.options(&key, &msg, now);
                } else {
                    self.new_request(key, side, msg, now);
                }
            }
        }
    }

    // ---- ng and timers ---------------------------------------------------

    /// The media node answered (or did not).
    pub fn on_ng(&mut self, id: u64, outcome: NgOutcome, now: Instant) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let reply = match &outcome {
            NgOutcome::Reply(v) => Some(v),
            NgOutcome::Timeout => None,
        };
        match p {
            Pending::Request {
                server,
                message,
                peer,
                branch,
            } => self.on_offer_reply(server, message, peer, branch, reply, now),
            Pending::Response {
                server,
                message,
                cache,
            } => self.on_answer_reply(server, message, cache, reply, now),
            Pending::Reoffer(r) => self.on_reoffer_query(*r, reply, now),
            Pending::Ack { message, peer } => self.on_ack_reply(message, peer, reply),
            Pending::Delete => {
                if reply.is_none() {
                    self.stats.ng_errors += 1;
                }
            }
            Pending::Poll { node } => {
                if let Some(v) = reply {
                    for call_id in media::timed_out(v) {
                        self.media_timeout(&call_id, now);
                    }
                    self.check_restored(node, v, now);
                }
            }
        }
    }

    /// Run due timers: transactions, media polls, housekeeping.
    pub fn on_timer(&mut self, now: Instant) {
        while let Some(Reverse((at, r))) = self.deadlines.peek().cloned() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            match r {
                TxRef::Server(k) => {
                    let Some(s) = self.servers.get_mut(&k) else {
                        continue;
                    };
                    if s.tx.next_deadline().is_none_or(|d| d > now) {
                        continue;
                    }
                    let actions = s.tx.on_timer(now);
                    let (peer, next) = (s.peer, s.tx.next_deadline());
                    self.run_server_actions(&k, peer, actions);
                    if self.servers.contains_key(&k) {
                        self.schedule(next, TxRef::Server(k));
                    }
                }
                TxRef::Client(b) => {
                    let Some(c) = self.clients.get_mut(&b) else {
                        continue;
                    };
                    if c.tx.next_deadline().is_none_or(|d| d > now) {
                        continue;
                    }
                    let actions = c.tx.on_timer(now);
                    let next = c.tx.next_deadline();
                    self.run_client_actions(&b, actions, now);
                    if self.clients.contains_key(&b) {
                        self.schedule(next, TxRef::Client(b));
                    }
                }
            }
        }
        if now >= self.next_poll {
            self.next_poll = now + self.cfg.media_poll;
            let nodes = self.cfg.media.clone();
            for node in nodes {
                self.ng(node, media::list(), Pending::Poll { node });
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now + Duration::from_secs(30);
            self.rate.sweep(now);
            self.refusals.sweep(now);
            // A call that never got a dialog and has no transaction left
            // (its INVITE vanished): forget it.
            let live: std::collections::HashSet<String> = self
                .servers
                .values()
                .map(|s| s.request.call_id().to_owned())
                .chain(
                    self.clients
                        .values()
                        .map(|c| c.request.call_id().to_owned()),
                )
                .collect();
            let stale: Vec<String> = self
                .calls
                .iter()
                .filter(|(id, c)| {
                    c.dialog.is_none()
                        && !live.contains(*id)
                        && now.duration_since(c.created) > Duration::from_secs(60)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in stale {
                self.end_call(&id, Some("abandoned"));
            }
        }
    }
}
