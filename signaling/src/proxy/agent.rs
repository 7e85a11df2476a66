//! The transaction user of a stateful, record-routing proxy (RFC 3261
//! §16), with media anchoring (see `media.rs`).
//!
//! Requests from a trunk go to the PBX; requests from the PBX go to the
//! trunk a rule selects; anyone else gets 403. The agent Record-Routes
//! twice when a request crosses from one side to the other (one entry per
//! side, RFC 5658 §4), so in-dialog requests come back through it and
//! route by their Route headers alone — which is also what lets a
//! restarted agent carry on with calls it does not remember.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant, SystemTime},
};

use tracing::{debug, info, warn};

use super::{
    NgOutcome, Output, Peer, Transport,
    dialog::Dialog,
    media::{self, Sdp},
    ratelimit::RateLimit,
};
use crate::{
    config::SipConfig,
    message::{Message, MessageError, Method},
    transaction::{Action, ClientTransaction, ResponseVerdict, ServerTransaction, Timers},
};

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
    pub no_route: u64,
    pub ng_errors: u64,
    pub media_timeouts: u64,
    pub stray_responses: u64,
    pub calls_total: u64,
}

impl Stats {
    fn count_response(&mut self, method: &str, status: u16) {
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

/// RFC 3261 §17.2.3: a server transaction is identified by the branch,
/// the sent-by of the top Via and the method (ACK matches its INVITE).
type ServerKey = (String, String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Trunk(usize),
    Pbx,
}

struct ServerEntry {
    tx: ServerTransaction,
    peer: Peer,
    request: Message,
    /// The client transaction forwarding this request.
    client: Option<String>,
    /// A CANCEL arrived.
    cancelled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// Forwarding a request of a server transaction.
    Forward,
    /// A CANCEL we sent downstream.
    Cancel,
    /// Our own BYE (media timeout).
    OwnBye,
}

struct ClientEntry {
    tx: ClientTransaction,
    peer: Peer,
    request: Message,
    server: Option<ServerKey>,
    purpose: Purpose,
    /// CANCEL requested before any provisional response (§9.1: wait).
    cancel_pending: bool,
}

/// A call, from its first INVITE.
struct Call {
    caller_tag: String,
    from_side: Side,
    to_side: Side,
    node: SocketAddr,
    /// The INVITE carried no SDP: the 2xx has the offer, the ACK the answer.
    late_offer: bool,
    dialog: Option<Dialog>,
    /// To-tags that answered with SDP (forking).
    answered_tags: Vec<String>,
    /// Rewritten SDP per (CSeq, to-tag, status), for retransmissions.
    sdp_cache: HashMap<(u32, String, u16), Vec<u8>>,
    created: Instant,
    ended: bool,
}

enum Pending {
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
    /// A delete: nothing waits for it.
    Delete,
    /// A `list` poll of a media node.
    Poll,
}

/// The party whose SDP an offer carries.
struct Party<'a> {
    tag: &'a str,
    /// The other party's tag, once known (re-offers).
    other: Option<&'a str>,
    /// The SIP message's source address.
    source: IpAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TxRef {
    Server(ServerKey),
    Client(String),
}

pub struct Agent {
    cfg: SipConfig,
    timers: Timers,
    servers: HashMap<ServerKey, ServerEntry>,
    clients: HashMap<String, ClientEntry>,
    calls: HashMap<String, Call>,
    pending: HashMap<u64, Pending>,
    deadlines: BinaryHeap<Reverse<(Instant, TxRef)>>,
    next_id: u64,
    next_branch: u64,
    nonce: u64,
    rate: RateLimit,
    next_poll: Instant,
    next_sweep: Instant,
    stats: Stats,
    out: Vec<Output>,
}

fn host_port(uri: &rsip::Uri) -> Option<SocketAddr> {
    let ip = match &uri.host_with_port.host {
        rsip::Host::IpAddr(ip) => *ip,
        rsip::Host::Domain(d) => d.to_string().trim_matches(['[', ']']).parse().ok()?,
    };
    let port = match &uri.host_with_port.port {
        Some(p) => p.to_string().parse().ok()?,
        None => 5060,
    };
    Some(SocketAddr::new(ip, port))
}

fn uri_transport(uri: &rsip::Uri) -> Option<Transport> {
    uri.params.iter().find_map(|p| match p {
        rsip::Param::Transport(t) => {
            if t.to_string().eq_ignore_ascii_case("tcp") {
                Some(Transport::Tcp)
            } else {
                Some(Transport::Udp)
            }
        }
        _ => None,
    })
}

fn addr_text(a: SocketAddr) -> String {
    match a.ip() {
        IpAddr::V4(v4) => format!("{v4}:{}", a.port()),
        IpAddr::V6(v6) => format!("[{v6}]:{}", a.port()),
    }
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
    pub fn new(cfg: SipConfig, now: Instant) -> Self {
        let nonce = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let rate = RateLimit::new(cfg.invite_rate);
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
            next_poll,
            next_sweep: now + Duration::from_secs(30),
            stats: Stats::default(),
            out: Vec::new(),
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

    fn send(&mut self, peer: Peer, bytes: Vec<u8>) {
        self.out.push(Output::Send { peer, bytes });
    }

    fn ng(&mut self, node: SocketAddr, request: ng::Value, pending: Pending) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, pending);
        self.out.push(Output::Ng { id, node, request });
        id
    }

    fn new_branch(&mut self) -> String {
        let b = format!("z9hG4bK-mr{:x}-{:x}", self.nonce, self.next_branch);
        self.next_branch += 1;
        b
    }

    fn schedule(&mut self, at: Option<Instant>, r: TxRef) {
        if let Some(at) = at {
            self.deadlines.push(Reverse((at, r)));
        }
    }

    fn listen_of(&self, side: Side) -> SocketAddr {
        match side {
            Side::Trunk(_) => self.cfg.trunk_listen,
            Side::Pbx => self.cfg.pbx_listen,
        }
    }

    fn is_ours(&self, a: SocketAddr) -> bool {
        a == self.cfg.trunk_listen || a == self.cfg.pbx_listen
    }

    /// Which side a source belongs to.
    fn classify(&self, remote: SocketAddr) -> Option<Side> {
        if self.cfg.pbx_sources.iter().any(|s| s.matches(remote)) {
            return Some(Side::Pbx);
        }
        self.cfg
            .trunks
            .iter()
            .position(|(_, sources)| sources.iter().any(|s| s.matches(remote)))
            .map(Side::Trunk)
    }

    fn interface_name(&self, side: Side) -> Option<&str> {
        match side {
            Side::Trunk(_) => self.cfg.media_trunk_interface.as_deref(),
            Side::Pbx => self.cfg.media_pbx_interface.as_deref(),
        }
    }

    fn direction(&self, from: Side, to: Side) -> Option<(String, String)> {
        Some((
            self.interface_name(from)?.to_owned(),
            self.interface_name(to)?.to_owned(),
        ))
    }

    fn node_for(&self, call_id: &str) -> SocketAddr {
        // Stable spread of calls over media nodes.
        let h = call_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        self.cfg.media[(h % self.cfg.media.len() as u64) as usize]
    }

    fn record_route(&self, local: SocketAddr, t: Transport) -> String {
        match t {
            Transport::Udp => format!("<sip:{};lr>", addr_text(local)),
            Transport::Tcp => format!("<sip:{};transport=tcp;lr>", addr_text(local)),
        }
    }

    fn via(&self, local: SocketAddr, t: Transport, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            t.via_name(),
            addr_text(local)
        )
    }

    /// Respond to a request without a transaction (errors before one
    /// exists, CANCEL's 200).
    fn respond_stateless(
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
    fn respond(&mut self, key: &ServerKey, status: u16, now: Instant) {
        let Some(entry) = self.servers.get(key) else {
            return;
        };
        let to_tag = (status > 100 && entry.request.to_tag().is_none()).then_some("mr-proxy");
        let r = entry.request.response(status, reason(status), to_tag);
        self.forward_response(key, r, now);
    }

    fn forward_response(&mut self, key: &ServerKey, response: Message, now: Instant) {
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
    fn start_client(
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

    fn run_client_actions(&mut self, branch: &str, actions: Vec<Action>, now: Instant) {
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
            self.calls.remove(&call_id);
        }
    }

    /// Free a call: delete its media (unless `to_tag` names one losing
    /// branch only) and forget it.
    fn end_call(&mut self, call_id: &str, reason_log: Option<&str>) {
        if let Some(call) = self.calls.remove(call_id) {
            if !call.ended {
                let req = media::delete(call_id, Some(&call.caller_tag), None);
                self.ng(call.node, req, Pending::Delete);
            }
            if let Some(r) = reason_log {
                info!(%call_id, reason = r, "call ended");
            }
        }
    }

    // ---- input ----------------------------------------------------------

    /// A message that failed to parse: 400 if a response can be formed.
    pub fn on_malformed(&mut self, peer: Peer, raw: &[u8], error: &MessageError) {
        self.stats.malformed += 1;
        debug!(remote = %peer.remote, %error, "malformed SIP message");
        if let Some(r) = Message::rejection(raw, error, Some("mr-proxy")) {
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
                self.respond_stateless(peer, &msg, 403, &[]);
            }
            return;
        };
        match method {
            Method::Ack => self.on_ack(peer, msg, now),
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

    fn addressed_to_us(&self, msg: &Message) -> bool {
        msg.request_uri().and_then(host_port).is_some_and(|a| {
            a.ip() == self.cfg.trunk_listen.ip() || a.ip() == self.cfg.pbx_listen.ip()
        })
    }

    /// OPTIONS to the agent: 200 (keepalive / health check). With the user
    /// part `stats`, the body carries the agent's counters as JSON.
    fn options(&mut self, key: &ServerKey, msg: &Message, now: Instant) {
        let Some(entry) = self.servers.get(key) else {
            return;
        };
        let mut r = entry.request.response(200, "OK", Some("mr-proxy"));
        r.set_header("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO");
        let wants_stats = msg
            .request_uri()
            .and_then(|u| u.user().map(str::to_owned))
            .is_some_and(|u| u == "stats");
        if wants_stats {
            r.set_body(self.stats_json().into_bytes(), Some("application/json"));
        }
        self.forward_response(key, r, now);
    }

    /// The counters as one JSON object.
    pub fn stats_json(&self) -> String {
        let s = &self.stats;
        let map = |m: &BTreeMap<String, u64>| {
            m.iter()
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
            "{{\"calls\":{},\"transactions\":{},\"pending_ng\":{},\"calls_total\":{},\"requests\":{{{}}},\"responses\":{{{codes}}},\"rejected_sources\":{},\"malformed\":{},\"rate_limited\":{},\"max_calls_rejected\":{},\"no_route\":{},\"ng_errors\":{},\"media_timeouts\":{},\"stray_responses\":{}}}",
            self.calls.len(),
            self.transactions(),
            self.pending.len(),
            s.calls_total,
            map(&s.requests),
            s.rejected_sources,
            s.malformed,
            s.rate_limited,
            s.max_calls_rejected,
            s.no_route,
            s.ng_errors,
            s.media_timeouts,
            s.stray_responses
        )
    }

    /// Where a new (out-of-dialog) request goes: trunk → PBX; PBX → the
    /// trunk a rule selects (Request-URI user prefix, then host, then the
    /// default trunk).
    fn route_new(&self, from: Side, msg: &Message, transport: Transport) -> Option<(Peer, Side)> {
        let (to_side, remote) = match from {
            Side::Trunk(_) => (Side::Pbx, self.cfg.pbx),
            Side::Pbx => {
                let uri = msg.request_uri()?;
                let user = uri.user().unwrap_or_default().to_owned();
                let host = uri.host_with_port.host.to_string();
                let trunks = &self.cfg.trunks;
                let i = trunks
                    .iter()
                    .position(|(t, _)| t.prefixes.iter().any(|p| user.starts_with(p.as_str())))
                    .or_else(|| {
                        trunks.iter().position(|(t, _)| {
                            t.hosts.iter().any(|h| h.eq_ignore_ascii_case(&host))
                        })
                    })
                    .or_else(|| trunks.iter().position(|(t, _)| t.default))?;
                (Side::Trunk(i), trunks[i].0.target)
            }
        };
        let transport = if (transport == Transport::Tcp && self.cfg.tcp) || !self.cfg.udp {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        Some((
            Peer {
                transport,
                conn: None,
                local: self.listen_of(to_side),
                remote,
            },
            to_side,
        ))
    }

    /// A request starting a dialog or standing alone (INVITE, OPTIONS
    /// beyond us, MESSAGE, …).
    fn new_request(&mut self, key: ServerKey, side: Side, msg: Message, now: Instant) {
        let method = msg.method();
        let peer = self.servers[&key].peer;
        if method == Method::Invite {
            if !self.rate.admit(peer.remote.ip(), now) {
                self.stats.rate_limited += 1;
                self.respond_with(&key, 503, &[("Retry-After", "1")], now);
                return;
            }
            if self.calls.len() >= self.cfg.max_calls as usize {
                self.stats.max_calls_rejected += 1;
                self.respond_with(&key, 503, &[("Retry-After", "5")], now);
                return;
            }
            // §16.2: a proxy answers an INVITE with 100 at once.
            self.respond(&key, 100, now);
        }
        let Some((out, to_side)) = self.route_new(side, &msg, peer.transport) else {
            self.stats.no_route += 1;
            self.respond(&key, 404, now);
            return;
        };
        let branch = self.new_branch();
        let mut fwd = msg.clone();
        fwd.set_max_forwards(msg.max_forwards().saturating_sub(1));
        if method == Method::Invite {
            // Both sides' entries when the request crosses over (the
            // outbound side's on top: it is the one the callee reaches).
            fwd.prepend_record_route(&self.record_route(peer.local, peer.transport));
            if out.local != peer.local || out.transport != peer.transport {
                fwd.prepend_record_route(&self.record_route(out.local, out.transport));
            }
        }
        fwd.push_via(&self.via(out.local, out.transport, &branch));
        if method != Method::Invite {
            self.start_client(branch, fwd, out, Some(key), Purpose::Forward, now);
            return;
        }
        let call_id = msg.call_id().to_owned();
        let caller_tag = msg.from_tag().unwrap_or_default();
        let node = self.node_for(&call_id);
        self.stats.calls_total += 1;
        self.calls.insert(
            call_id.clone(),
            Call {
                caller_tag: caller_tag.clone(),
                from_side: side,
                to_side,
                node,
                late_offer: msg.body().is_empty(),
                dialog: None,
                answered_tags: Vec::new(),
                sdp_cache: HashMap::new(),
                created: now,
                ended: false,
            },
        );
        if msg.body().is_empty() {
            self.start_client(branch, fwd, out, Some(key), Purpose::Forward, now);
            return;
        }
        let direction = self.direction(side, to_side);
        let offerer = Party {
            tag: &caller_tag,
            other: None,
            source: peer.remote.ip(),
        };
        self.offer_then_forward(node, &msg, &offerer, direction, key, fwd, out, branch);
    }

    /// Ask the media node to anchor `msg`'s SDP offer; `fwd` leaves (with
    /// the node's SDP) when the reply comes.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per kind of offer; a struct would only rename them"
    )]
    fn offer_then_forward(
        &mut self,
        node: SocketAddr,
        msg: &Message,
        offerer: &Party<'_>,
        direction: Option<(String, String)>,
        key: ServerKey,
        fwd: Message,
        out: Peer,
        branch: String,
    ) {
        let via_branch = msg.top_via().branch;
        let req = media::offer(&Sdp {
            call_id: msg.call_id(),
            from_tag: offerer.tag,
            to_tag: offerer.other,
            via_branch: via_branch.as_deref(),
            sdp: msg.body(),
            received_from: offerer.source,
            direction: direction.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        });
        self.ng(
            node,
            req,
            Pending::Request {
                server: Some(key),
                message: fwd,
                peer: out,
                branch,
            },
        );
    }

    fn respond_with(&mut self, key: &ServerKey, status: u16, extra: &[(&str, &str)], now: Instant) {
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

    /// Pop our own Route entries; return the local address the request
    /// leaves from (the second of ours popped, when it crossed sides).
    fn pop_our_routes(&self, msg: &mut Message, arrived: SocketAddr) -> SocketAddr {
        let mut out = arrived;
        let mut popped = 0;
        while let Some(first) = msg.routes().first().cloned() {
            let ours = Message::uri_of(&first)
                .ok()
                .and_then(|u| host_port(&u))
                .filter(|a| self.is_ours(*a));
            let Some(addr) = ours else { break };
            msg.pop_route();
            popped += 1;
            if popped >= 2 || addr != arrived {
                out = addr;
            }
        }
        out
    }

    /// Where an in-dialog request goes: the first remaining Route, or
    /// the Request-URI (loose routing, §16.12).
    fn in_dialog_dest(
        &self,
        msg: &Message,
        local: SocketAddr,
        transport: Transport,
    ) -> Option<Peer> {
        let uri = match msg.routes().first() {
            Some(r) => Message::uri_of(r).ok()?,
            None => msg.request_uri()?.clone(),
        };
        let remote = host_port(&uri)?;
        let t = uri_transport(&uri).unwrap_or(transport);
        Some(Peer {
            transport: t,
            conn: None,
            local,
            remote,
        })
    }

    fn in_dialog(&mut self, key: ServerKey, side: Side, msg: Message, now: Instant) {
        let method = msg.method();
        let peer = self.servers[&key].peer;
        let call_id = msg.call_id().to_owned();
        if let Some(call) = self.calls.get_mut(&call_id)
            && let Some(d) = call.dialog.as_mut()
        {
            d.saw_request(msg.from_tag().as_deref(), msg.cseq().0);
        }
        if method == Method::Bye {
            // Delete media at once; also for calls this agent does not
            // remember (it restarted): the media node knows them.
            let node = self
                .calls
                .get(&call_id)
                .map_or_else(|| self.node_for(&call_id), |c| c.node);
            let req = media::delete(&call_id, msg.from_tag().as_deref(), None);
            self.ng(node, req, Pending::Delete);
            if let Some(c) = self.calls.get_mut(&call_id) {
                c.ended = true;
            }
        }
        let mut fwd = msg.clone();
        let local = self.pop_our_routes(&mut fwd, peer.local);
        let Some(out) = self.in_dialog_dest(&fwd, local, peer.transport) else {
            self.stats.no_route += 1;
            self.respond(&key, 404, now);
            return;
        };
        if self.is_ours(out.remote) {
            // Addressed to us with no route onwards: not a dialog we are in
            // (§12.2.2), and forwarding it would loop.
            self.respond(&key, 481, now);
            return;
        }
        fwd.set_max_forwards(msg.max_forwards().saturating_sub(1));
        let branch = self.new_branch();
        fwd.push_via(&self.via(out.local, out.transport, &branch));
        let has_sdp = !msg.body().is_empty();
        if matches!(method, Method::Invite | Method::Update) && has_sdp {
            let from_tag = msg.from_tag().unwrap_or_default();
            let to_tag = msg.to_tag();
            let (node, direction) = match self.calls.get(&call_id) {
                Some(c) => {
                    // The re-offer comes from either side.
                    let (a, b) = if side == c.from_side {
                        (c.from_side, c.to_side)
                    } else {
                        (c.to_side, c.from_side)
                    };
                    (c.node, self.direction(a, b))
                }
                None => (self.node_for(&call_id), None),
            };
            let offerer = Party {
                tag: &from_tag,
                other: to_tag.as_deref(),
                source: peer.remote.ip(),
            };
            self.offer_then_forward(node, &msg, &offerer, direction, key, fwd, out, branch);
            return;
        }
        self.start_client(branch, fwd, out, Some(key), Purpose::Forward, now);
    }

    /// ACK: for a non-2xx final it belongs to our server transaction
    /// (absorbed); for a 2xx it is a request of its own, forwarded
    /// statelessly by its Route headers — with the answer SDP of a late
    /// offer rewritten.
    fn on_ack(&mut self, peer: Peer, msg: Message, now: Instant) {
        let via = msg.top_via();
        let key: ServerKey = (
            via.branch.clone().unwrap_or_default(),
            format!("{}:{}", via.host, via.port_or_default()),
            Method::Invite.as_str().to_owned(),
        );
        if let Some(s) = self.servers.get_mut(&key)
            && s.tx.on_ack(now)
        {
            return;
        }
        if msg.to_tag().is_none() {
            return;
        }
        let mut fwd = msg.clone();
        let local = self.pop_our_routes(&mut fwd, peer.local);
        let Some(out) = self.in_dialog_dest(&fwd, local, peer.transport) else {
            self.stats.no_route += 1;
            return;
        };
        if self.is_ours(out.remote) {
            return;
        }
        fwd.set_max_forwards(msg.max_forwards().saturating_sub(1));
        let branch = self.new_branch();
        fwd.push_via(&self.via(out.local, out.transport, &branch));
        let call_id = msg.call_id().to_owned();
        let late = self.calls.get(&call_id).is_some_and(|c| c.late_offer);
        if late && !msg.body().is_empty() {
            // The callee offered in its 2xx; the ACK answers: the offerer
            // is the callee (the ACK's To), the answerer the caller.
            let node = self
                .calls
                .get(&call_id)
                .map_or_else(|| self.node_for(&call_id), |c| c.node);
            let to_tag = msg.to_tag().unwrap_or_default();
            let from_tag = msg.from_tag();
            let req = media::answer(&Sdp {
                call_id: &call_id,
                from_tag: &to_tag,
                to_tag: from_tag.as_deref(),
                via_branch: None,
                sdp: msg.body(),
                received_from: peer.remote.ip(),
                direction: None,
            });
            self.ng(
                node,
                req,
                Pending::Ack {
                    message: fwd,
                    peer: out,
                },
            );
            return;
        }
        self.send(out, fwd.to_bytes());
    }

    /// CANCEL (§9.2, §16.10): 200 at once; cancel downstream when it can
    /// be (after a provisional), or answer 487 ourselves if the INVITE has
    /// not left yet (it waits for its media offer).
    fn on_cancel(&mut self, peer: Peer, msg: &Message, now: Instant) {
        let via = msg.top_via();
        let key: ServerKey = (
            via.branch.clone().unwrap_or_default(),
            format!("{}:{}", via.host, via.port_or_default()),
            Method::Invite.as_str().to_owned(),
        );
        if !self.servers.contains_key(&key) {
            self.respond_stateless(peer, msg, 481, &[]);
            return;
        }
        self.respond_stateless(peer, msg, 200, &[]);
        let Some(entry) = self.servers.get_mut(&key) else {
            return;
        };
        if entry.tx.last_status().is_some_and(|s| s >= 200) || entry.cancelled {
            return;
        }
        entry.cancelled = true;
        let client = entry.client.clone();
        let call_id = msg.call_id().to_owned();
        match client {
            Some(branch) => {
                let send_now = self
                    .clients
                    .get(&branch)
                    .is_some_and(|c| c.tx.got_provisional());
                if send_now {
                    self.send_cancel(&branch, now);
                } else if let Some(c) = self.clients.get_mut(&branch) {
                    c.cancel_pending = true;
                }
            }
            None => {
                // Still waiting for the media offer: it will not be sent.
                self.pending.retain(
                    |_, p| !matches!(p, Pending::Request { server: Some(k), .. } if *k == key),
                );
                self.respond(&key, 487, now);
            }
        }
        self.end_call(&call_id, Some("cancelled"));
    }

    fn send_cancel(&mut self, invite_branch: &str, now: Instant) {
        let Some(c) = self.clients.get(invite_branch) else {
            return;
        };
        let cancel = c.request.cancel();
        let peer = c.peer;
        self.start_client(
            format!("{invite_branch}/CANCEL"),
            cancel,
            peer,
            None,
            Purpose::Cancel,
            now,
        );
    }

    // ---- responses ----------------------------------------------------------

    fn on_response(&mut self, _peer: Peer, mut msg: Message, now: Instant) {
        let status = msg.status().unwrap_or(0);
        let via = msg.top_via();
        let Some(branch) = via.branch.clone() else {
            self.stats.stray_responses += 1;
            return;
        };
        let key = if msg.method() == Method::Cancel {
            format!("{branch}/CANCEL")
        } else {
            branch
        };
        let Some(c) = self.clients.get_mut(&key) else {
            self.stats.stray_responses += 1;
            return;
        };
        let (verdict, actions) = c.tx.on_response(status, now);
        let next = c.tx.next_deadline();
        self.run_client_actions(&key, actions, now);
        self.schedule(next, TxRef::Client(key.clone()));
        if verdict == ResponseVerdict::Absorb {
            return;
        }
        let Some(c) = self.clients.get_mut(&key) else {
            return;
        };
        let (purpose, server, request) = (c.purpose, c.server.clone(), c.request.clone());
        let cancel_now = c.cancel_pending && (101..200).contains(&status);
        if cancel_now {
            c.cancel_pending = false;
        }
        // The ACK of a non-2xx final (§17.1.1.3), built here, sent by the
        // transaction (and again on retransmissions).
        if request.method() == Method::Invite && status >= 300 {
            let ack = request.ack_for(&msg).to_bytes();
            let actions = c.tx.set_ack(ack);
            self.run_client_actions(&key, actions, now);
        }
        if cancel_now {
            self.send_cancel(&key, now);
        }
        if purpose != Purpose::Forward {
            return;
        }
        let Some(server) = server else { return };
        msg.pop_via();
        let method = request.method();
        let call_id = msg.call_id().to_owned();
        if method == Method::Invite && status == 100 {
            return;
        }
        if method == Method::Bye && status >= 200 {
            self.calls.remove(&call_id);
        }
        if method == Method::Invite && status >= 300 {
            let established = self.calls.get(&call_id).is_some_and(|c| c.dialog.is_some());
            if established {
                // A re-INVITE failed: the call goes on.
            } else {
                self.end_call(&call_id, Some("failed"));
            }
            self.forward_response(&server, msg, now);
            return;
        }
        if method == Method::Invite && (200..300).contains(&status) {
            self.establish(&call_id, &request, &msg, &server);
        }
        let has_sdp = !msg.body().is_empty();
        let media_method = matches!(method, Method::Invite | Method::Update);
        if has_sdp && media_method && status < 300 {
            self.response_sdp(server, request, msg, now);
            return;
        }
        self.forward_response(&server, msg, now);
    }

    /// Remember the dialog of the first 2xx to an initial INVITE, and drop
    /// the media of branches that lost (forking).
    fn establish(&mut self, call_id: &str, forwarded: &Message, ok: &Message, server: &ServerKey) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        if call.dialog.is_some() || forwarded.to_tag().is_some() {
            return;
        }
        let (from_side, to_side) = (call.from_side, call.to_side);
        let caller_local = self
            .servers
            .get(server)
            .map_or(self.listen_of(from_side), |s| s.peer.local);
        let callee_local = self.listen_of(to_side);
        let ours: Vec<String> = [Transport::Udp, Transport::Tcp]
            .iter()
            .flat_map(|t| {
                [
                    self.record_route(caller_local, *t),
                    self.record_route(callee_local, *t),
                ]
            })
            .collect();
        let dialog = Dialog::establish(forwarded, ok, &ours, caller_local, callee_local);
        let winner = ok.to_tag();
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        call.dialog = dialog;
        let losers: Vec<String> = call
            .answered_tags
            .iter()
            .filter(|t| Some(*t) != winner.as_ref())
            .cloned()
            .collect();
        let (node, caller) = (call.node, call.caller_tag.clone());
        for t in losers {
            let req = media::delete(call_id, Some(&caller), Some(&t));
            self.ng(node, req, Pending::Delete);
        }
    }

    /// An 18x/2xx with SDP: the answer to the INVITE's offer — or, for a
    /// late offer, the offer itself.
    fn response_sdp(&mut self, server: ServerKey, request: Message, msg: Message, now: Instant) {
        let call_id = msg.call_id().to_owned();
        let status = msg.status().unwrap_or(0);
        let to_tag = msg.to_tag().unwrap_or_default();
        let cseq = msg.cseq().0;
        let cache_key = (cseq, to_tag.clone(), status);
        let cached = self
            .calls
            .get(&call_id)
            .and_then(|c| c.sdp_cache.get(&cache_key).cloned());
        if let Some(sdp) = cached {
            let mut m = msg;
            let ct = m.content_type();
            m.set_body(sdp, ct.as_deref());
            self.forward_response(&server, m, now);
            return;
        }
        let received = self
            .clients
            .values()
            .find(|c| c.server.as_ref() == Some(&server))
            .map_or_else(|| self.cfg.pbx.ip(), |c| c.peer.remote.ip());
        let (node, late, from_side, to_side) = match self.calls.get_mut(&call_id) {
            Some(c) => {
                if !c.answered_tags.contains(&to_tag) {
                    c.answered_tags.push(to_tag.clone());
                }
                (
                    c.node,
                    c.late_offer && request.to_tag().is_none(),
                    c.from_side,
                    c.to_side,
                )
            }
            None => (self.node_for(&call_id), false, Side::Pbx, Side::Pbx),
        };
        let req_from = request.from_tag().unwrap_or_default();
        let req_to = request.to_tag();
        let req = if late {
            // Late offer: the callee offers in the 2xx.
            let direction = self.direction(to_side, from_side);
            media::offer(&Sdp {
                call_id: &call_id,
                from_tag: &to_tag,
                to_tag: Some(&req_from),
                via_branch: None,
                sdp: msg.body(),
                received_from: received,
                direction: direction.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
            })
        } else {
            let answerer = req_to.clone().unwrap_or(to_tag.clone());
            media::answer(&Sdp {
                call_id: &call_id,
                from_tag: &req_from,
                to_tag: Some(&answerer),
                via_branch: None,
                sdp: msg.body(),
                received_from: received,
                direction: None,
            })
        };
        self.ng(
            node,
            req,
            Pending::Response {
                server,
                message: msg,
                cache: Some((call_id, cache_key)),
            },
        );
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
                mut message,
                peer,
                branch,
            } => match reply.map(media::sdp_of) {
                Some(Ok(sdp)) => {
                    let ct = message.content_type();
                    message.set_body(sdp, ct.as_deref());
                    self.start_client(branch, message, peer, server, Purpose::Forward, now);
                }
                other => {
                    self.stats.ng_errors += 1;
                    let why = match other {
                        Some(Err(e)) => e,
                        _ => "media node did not answer".to_owned(),
                    };
                    warn!(call_id = %message.call_id(), reason = %why, "media offer failed; refusing the request");
                    let call_id = message.call_id().to_owned();
                    if let Some(k) = server {
                        self.respond_with(
                            &k,
                            503,
                            &[("Warning", "399 media-relay \"media unavailable\"")],
                            now,
                        );
                    }
                    if message.method() == Method::Invite && message.to_tag().is_none() {
                        self.end_call(&call_id, Some("media unavailable"));
                    }
                }
            },
            Pending::Response {
                server,
                mut message,
                cache,
            } => {
                match reply.map(media::sdp_of) {
                    Some(Ok(sdp)) => {
                        if let Some((call_id, key)) = cache
                            && let Some(c) = self.calls.get_mut(&call_id)
                        {
                            c.sdp_cache.insert(key, sdp.clone());
                        }
                        let ct = message.content_type();
                        message.set_body(sdp, ct.as_deref());
                    }
                    _ => {
                        // The answer cannot be anchored; the call still
                        // goes on (media flows end to end).
                        self.stats.ng_errors += 1;
                        warn!(call_id = %message.call_id(), "media answer failed; forwarding the SDP unchanged");
                    }
                }
                self.forward_response(&server, message, now);
            }
            Pending::Ack { mut message, peer } => {
                if let Some(Ok(sdp)) = reply.map(media::sdp_of) {
                    let ct = message.content_type();
                    message.set_body(sdp, ct.as_deref());
                } else {
                    self.stats.ng_errors += 1;
                }
                self.send(peer, message.to_bytes());
            }
            Pending::Delete => {
                if reply.is_none() {
                    self.stats.ng_errors += 1;
                }
            }
            Pending::Poll => {
                if let Some(v) = reply {
                    for call_id in media::timed_out(v) {
                        self.media_timeout(&call_id, now);
                    }
                }
            }
        }
    }

    /// The media node ended a call for lack of media: end it on both
    /// sides with a BYE.
    fn media_timeout(&mut self, call_id: &str, now: Instant) {
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        let Some(d) = call.dialog else {
            return;
        };
        self.stats.media_timeouts += 1;
        info!(%call_id, "media timed out: sending BYE to both sides");
        for (to_caller, local) in [(true, d.caller_side_local), (false, d.callee_side_local)] {
            let Some(uri) = Message::uri_of(d.next_hop(to_caller)).ok() else {
                continue;
            };
            let Some(remote) = host_port(&uri) else {
                continue;
            };
            let transport = uri_transport(&uri).unwrap_or(Transport::Udp);
            let peer = Peer {
                transport,
                conn: None,
                local,
                remote,
            };
            let branch = self.new_branch();
            let via = self.via(local, transport, &branch);
            match d.bye_to(to_caller, &via) {
                Some(bye) => self.start_client(branch, bye, peer, None, Purpose::OwnBye, now),
                None => warn!(%call_id, "could not build the BYE"),
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
                self.ng(node, media::list(), Pending::Poll);
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now + Duration::from_secs(30);
            self.rate.sweep(now);
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
