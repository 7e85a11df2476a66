//! The tokio shell around the I/O-free [`Agent`]: UDP (`udp.rs`) and TCP
//! (`tcp.rs`) transports, the ng client (`ng.rs`), the runtime directory
//! (`rundir.rs`) with the Record-Route secret (`secret.rs`) and the
//! records of established calls (`dialog_store.rs`), timers. One task owns
//! the agent; socket tasks frame and parse, and hand it messages through
//! one bounded queue; it hands back what to send and what to keep.

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::{
        mpsc::{self, error::TrySendError},
        watch,
    },
};
use tracing::{debug, info, warn};

pub mod dialog_store;
mod ng;
pub mod rundir;
pub mod secret;
mod tcp;
mod udp;

use self::{
    dialog_store::DialogStore,
    ng::{Inflight, NgClient},
    tcp::{Conn, ConnSlot, ConnTable},
};
use crate::{
    config::{Advertise, Facing, SipConfig},
    message::{Message, MessageError},
    proxy::{Agent, ConnId, NgOutcome, Output, Peer, Transport, TransportStats},
};

/// Events waiting for the agent's task at most. Messages and ng replies
/// beyond are dropped (counted; UDP peers retransmit, RFC 3261 §17);
/// connection events wait for room instead.
const EVENT_QUEUE: usize = 4096;

/// Bytes of SIP messages (parsed or not) waiting for the agent's task at
/// most: beyond, they are dropped as on a full queue. Without it, a flood
/// of the largest messages (`max-message`, 64 KiB) would hold 4 096 x 64
/// KiB = 256 MiB while the agent catches up; with it, 16 MiB, some 16 000
/// messages of a typical 1 KiB.
const EVENT_QUEUE_BYTES: usize = 16 << 20;

/// At most one warning about dropped events per this many seconds.
const DROP_WARNING_EVERY: u64 = 10;

enum Event {
    Message(Peer, Message, Charge),
    Malformed(Peer, Vec<u8>, MessageError, Charge),
    NgReply(ng::Reply),
    Connected(ConnId, SocketAddr, Conn),
    Closed(ConnId),
    ConnectFailed(SocketAddr),
}

/// What the socket tasks share.
struct Context {
    cfg: Arc<SipConfig>,
    stats: Arc<TransportStats>,
    events: mpsc::Sender<Event>,
    table: Mutex<ConnTable>,
    epoch: Instant,
    /// Seconds since `epoch` (+1) of the last warning about drops.
    last_drop_warning: AtomicU64,
    /// Bytes of the messages in the queue ([`EVENT_QUEUE_BYTES`]).
    queued_bytes: Arc<AtomicUsize>,
}

/// A message's share of [`EVENT_QUEUE_BYTES`], given back when the agent
/// has handled it (or the event is dropped).
struct Charge {
    bytes: usize,
    queued: Arc<AtomicUsize>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Context {
    /// Hand an event to the agent without waiting; `false` when the agent
    /// has stopped. A full queue drops it (counted, warned about).
    fn submit(&self, ev: Event) -> bool {
        match self.events.try_send(ev) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped();
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Room for `bytes` more in the queue; `None` (counted as dropped)
    /// when they would exceed [`EVENT_QUEUE_BYTES`].
    fn charge(&self, bytes: usize) -> Option<Charge> {
        let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let charge = Charge {
            bytes,
            queued: self.queued_bytes.clone(),
        };
        if before + bytes > EVENT_QUEUE_BYTES {
            drop(charge);
            self.dropped();
            return None;
        }
        Some(charge)
    }

    /// Parse one frame's message and hand it to the agent.
    fn deliver(&self, peer: Peer, bytes: Vec<u8>) -> bool {
        let Some(charge) = self.charge(bytes.len()) else {
            return !self.events.is_closed();
        };
        let ev = match Message::parse(&bytes) {
            Ok(m) => Event::Message(peer, m, charge),
            Err(e) => Event::Malformed(peer, bytes, e, charge),
        };
        self.submit(ev)
    }

    /// Hand the agent a datagram or stream that does not frame (`raw`:
    /// what a 400 may be built from).
    fn malformed(&self, peer: Peer, raw: &[u8], e: MessageError) -> bool {
        let Some(charge) = self.charge(raw.len()) else {
            return !self.events.is_closed();
        };
        self.submit(Event::Malformed(peer, raw.to_vec(), e, charge))
    }

    fn dropped(&self) {
        let total = self.stats.events_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.epoch.elapsed().as_secs() + 1;
        let last = self.last_drop_warning.load(Ordering::Relaxed);
        if (last == 0 || now >= last + DROP_WARNING_EVERY)
            && self
                .last_drop_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                dropped_total = total,
                "SIP agent overloaded: messages dropped (its input queue is full)"
            );
        }
    }
}

/// A running agent.
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stop the agent and wait (bounded) for it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// Run the agent until `shutdown` completes.
pub async fn run(cfg: SipConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let running = start(cfg).await?;
    shutdown.await;
    running.stop().await;
    Ok(())
}

/// The media interface's public address in effect, as the media daemon of
/// the same process publishes it (`None` while unknown).
pub type PublicFeed = watch::Receiver<Option<IpAddr>>;

/// What feeds `trunk-advertise = "media"` / `pbx-advertise = "media"`.
#[derive(Clone, Debug, Default)]
pub struct PublicFeeds {
    pub trunk: Option<PublicFeed>,
    pub pbx: Option<PublicFeed>,
}

/// [`start_in`] the runtime directory ([`rundir::path`]).
pub async fn start(cfg: SipConfig) -> anyhow::Result<Running> {
    start_with(cfg, &rundir::path(), PublicFeeds::default()).await
}

/// [`start_with`] no public address feeds.
pub async fn start_in(cfg: SipConfig, runtime_dir: &Path) -> anyhow::Result<Running> {
    start_with(cfg, runtime_dir, PublicFeeds::default()).await
}

/// Bind every socket (errors here are the operator's: one line each),
/// restore the calls an earlier agent left in `runtime_dir`, and start the
/// agent's task, which follows `publics` for the sides advertising
/// `"media"` (each such side needs its feed).
pub async fn start_with(
    cfg: SipConfig,
    runtime_dir: &Path,
    publics: PublicFeeds,
) -> anyhow::Result<Running> {
    for (facing, feed) in [(Facing::Trunk, &publics.trunk), (Facing::Pbx, &publics.pbx)] {
        if cfg.advertise(facing) == Some(Advertise::Media) && feed.is_none() {
            anyhow::bail!(
                "sip.{} = \"media\" needs the media daemon in the same process (media-relay run with [sip])",
                facing.key()
            );
        }
    }
    let (key, _) = secret::load(cfg.record_route_secret.clone(), runtime_dir)
        .context("creating the Record-Route secret")?;
    let mut agent = Agent::new(cfg.clone(), key, Instant::now());
    let mut publics = publics;
    for (facing, feed) in [
        (Facing::Trunk, &mut publics.trunk),
        (Facing::Pbx, &mut publics.pbx),
    ] {
        if let Some(rx) = feed {
            agent.set_public(facing, *rx.borrow_and_update());
        }
    }
    let (events_tx, events) = mpsc::channel::<Event>(EVENT_QUEUE);
    let ctx = Arc::new(Context {
        cfg: Arc::new(cfg),
        stats: agent.stats().transport.clone(),
        events: events_tx,
        table: Mutex::new(ConnTable::default()),
        epoch: Instant::now(),
        last_drop_warning: AtomicU64::new(0),
        queued_bytes: Arc::new(AtomicUsize::new(0)),
    });
    let cfg = &ctx.cfg;
    let mut udp: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut listens = vec![cfg.trunk_listen];
    if cfg.pbx_listen != cfg.trunk_listen {
        listens.push(cfg.pbx_listen);
    }
    let mut tcp = Vec::new();
    for &local in &listens {
        if cfg.udp {
            let s = UdpSocket::bind(local)
                .await
                .with_context(|| format!("cannot listen for SIP (UDP) on {local}"))?;
            udp.insert(local, Arc::new(s));
        }
        if cfg.tcp {
            let l = TcpListener::bind(local)
                .await
                .with_context(|| format!("cannot listen for SIP (TCP) on {local}"))?;
            tcp.push((l, local));
        }
    }
    let ng_bind: SocketAddr = if cfg.media.iter().all(SocketAddr::is_ipv4) {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let ng_socket = Arc::new(
        UdpSocket::bind(ng_bind)
            .await
            .context("binding the ng client socket")?,
    );
    // Everything bound: the calls of an earlier agent, then the tasks.
    let (store, records) = DialogStore::open(runtime_dir, agent.stats().dialog_store.clone());
    if !records.is_empty() {
        let started = Instant::now();
        let restored = agent.restore(&records, Instant::now(), SystemTime::now());
        let took_ms = started.elapsed().as_millis() as u64;
        if restored.skipped.is_empty() {
            info!(
                calls = restored.calls,
                took_ms, "calls of an earlier SIP agent restored"
            );
        } else {
            warn!(
                calls = restored.calls,
                skipped = ?restored.skipped,
                took_ms,
                "calls of an earlier SIP agent restored; records skipped (counted: dialogs_skipped)"
            );
        }
    }
    drop(records);
    for (&local, s) in &udp {
        tokio::spawn(udp::reader(s.clone(), local, ctx.clone()));
    }
    for (l, local) in tcp {
        tokio::spawn(tcp::acceptor(l, local, ctx.clone()));
    }
    tokio::spawn(ng::reader(ng_socket.clone(), ctx.clone()));
    let ngc = NgClient {
        socket: ng_socket,
        inflight: Inflight::new(cfg.ng_timeout),
    };
    info!(
        trunk_listen = %cfg.trunk_listen,
        pbx_listen = %cfg.pbx_listen,
        trunk_advertise = ?cfg.trunk_advertise,
        pbx_advertise = ?cfg.pbx_advertise,
        pbx = %cfg.pbx,
        udp = cfg.udp,
        tcp = cfg.tcp,
        media = ?cfg.media,
        "SIP agent running"
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let io = Io {
        ctx,
        udp,
        ngc,
        conns: Connections::default(),
        store,
    };
    let task = tokio::spawn(serve(agent, io, events, stopped, publics));
    Ok(Running { stop, task })
}

/// The agent's TCP connections, as its task sees them.
#[derive(Default)]
struct Connections {
    by_id: HashMap<ConnId, (SocketAddr, Conn)>,
    by_remote: HashMap<SocketAddr, ConnId>,
    /// Bytes waiting for a connection the agent is opening.
    connecting: HashMap<SocketAddr, (usize, Vec<Vec<u8>>)>,
}

impl Connections {
    fn remove(&mut self, id: ConnId) -> Option<Conn> {
        let (remote, conn) = self.by_id.remove(&id)?;
        if self.by_remote.get(&remote) == Some(&id) {
            self.by_remote.remove(&remote);
        }
        Some(conn)
    }

    /// Send over TCP: on the request's own connection if it is still
    /// open, else one to the peer, else a new one.
    fn send(&mut self, ctx: &Arc<Context>, peer: Peer, bytes: Vec<u8>) {
        let id = peer
            .conn
            .filter(|c| self.by_id.contains_key(c))
            .or_else(|| self.by_remote.get(&peer.remote).copied());
        if let Some(id) = id
            && let Some((_, conn)) = self.by_id.get(&id)
        {
            if !conn.send(bytes) {
                TransportStats::count(&ctx.stats.tcp_write_queue_full);
                debug!(remote = %peer.remote, "SIP TCP peer not reading: connection dropped");
                conn.close();
                self.remove(id);
            }
            return;
        }
        let cap = ctx.cfg.tcp_limits.write_queue;
        let (queued, waiting) = self.connecting.entry(peer.remote).or_default();
        if *queued + bytes.len() > cap {
            debug!(remote = %peer.remote, "SIP TCP connection still being opened: bytes dropped");
            return;
        }
        *queued += bytes.len();
        waiting.push(bytes);
        if waiting.len() > 1 {
            return;
        }
        let Ok(slot) = ConnSlot::take(ctx, None) else {
            TransportStats::count(&ctx.stats.tcp_refused_max_connections);
            self.connecting.remove(&peer.remote);
            return;
        };
        let ctx = ctx.clone();
        let (local, remote) = (peer.local, peer.remote);
        tokio::spawn(async move {
            match tcp::connect_from(local, remote).await {
                Ok(stream) => tcp::spawn(stream, local, remote, slot, &ctx),
                Err(e) => {
                    warn!(%remote, error = %e, "SIP TCP connection failed");
                    drop(slot);
                    let _ = ctx.events.send(Event::ConnectFailed(remote)).await;
                }
            }
        });
    }
}

/// What the agent's task does the agent's bidding with.
struct Io {
    ctx: Arc<Context>,
    udp: HashMap<SocketAddr, Arc<UdpSocket>>,
    ngc: NgClient,
    conns: Connections,
    store: DialogStore,
}

impl Io {
    /// Carry out what the agent asked for.
    fn carry_out(&mut self, agent: &mut Agent) {
        for out in agent.drain() {
            match out {
                Output::Ng { id, node, request } => self.ngc.send(id, node, &request),
                Output::Send { peer, bytes } => match peer.transport {
                    Transport::Udp => {
                        let socket = self
                            .udp
                            .get(&peer.local)
                            .or_else(|| self.udp.values().next());
                        if let Some(s) = socket
                            && let Err(e) = s.try_send_to(&bytes, peer.remote)
                        {
                            debug!(remote = %peer.remote, error = %e, "SIP datagram not sent");
                        }
                    }
                    Transport::Tcp => self.conns.send(&self.ctx, peer, bytes),
                },
                Output::Dialog { call_id, record } => self.store.apply(call_id, record),
            }
        }
    }
}

/// The agent's own task.
async fn serve(
    mut agent: Agent,
    mut io: Io,
    mut events: mpsc::Receiver<Event>,
    shutdown: tokio::sync::oneshot::Receiver<()>,
    publics: PublicFeeds,
) {
    tokio::pin!(shutdown);
    let PublicFeeds {
        trunk: mut trunk_public,
        pbx: mut pbx_public,
    } = publics;
    let mut metrics_tick = tokio::time::interval(Duration::from_secs(1));
    metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // What restoring asked for (the restored calls' records, re-emitted):
    // then the store has them all and may write.
    io.carry_out(&mut agent);
    io.store.ready();
    loop {
        let deadline = io
            .ngc
            .next_due()
            .map_or(agent.next_deadline(), |d| d.min(agent.next_deadline()));
        tokio::select! {
            _ = &mut shutdown => break,
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                let now = Instant::now();
                let conns = &mut io.conns;
                match ev {
                    Event::Message(peer, m, _charge) => agent.on_message(peer, m, now),
                    Event::Malformed(peer, raw, e, _charge) => {
                        agent.on_malformed(peer, &raw, &e, now);
                    }
                    Event::NgReply(reply) => {
                        if let Some(id) = io.ngc.inflight.take_reply(&reply.cookie, reply.from) {
                            agent.on_ng(id, NgOutcome::Reply(reply.value), now);
                        }
                    }
                    Event::Connected(id, remote, conn) => {
                        conns.by_remote.insert(remote, id);
                        if let Some((_, waiting)) = conns.connecting.remove(&remote) {
                            for b in waiting {
                                let _ = conn.send(b);
                            }
                        }
                        conns.by_id.insert(id, (remote, conn));
                    }
                    Event::ConnectFailed(remote) => {
                        conns.connecting.remove(&remote);
                    }
                    Event::Closed(id) => {
                        conns.remove(id);
                    }
                }
            }
            p = next_public(&mut trunk_public) => match p {
                Some(ip) => agent.set_public(Facing::Trunk, ip),
                None => trunk_public = None,
            },
            p = next_public(&mut pbx_public) => match p {
                Some(ip) => agent.set_public(Facing::Pbx, ip),
                None => pbx_public = None,
            },
            _ = metrics_tick.tick() => {
                crate::metrics::publish(agent.stats(), agent.calls());
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                for id in io.ngc.tick(now) {
                    agent.on_ng(id, NgOutcome::Timeout, now);
                }
                agent.on_timer(now);
            }
        }
        io.carry_out(&mut agent);
    }
    // Close every connection; the socket tasks end as the queue closes.
    for (_, conn) in io.conns.by_id.values() {
        conn.close();
    }
    // The calls go on without us: their records stay for the next agent.
    let store = io.store;
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
    info!(calls = agent.calls(), "SIP agent stopped");
}

/// The next public address a feed publishes; `None` when its sender is
/// gone (the last value stays in effect); never, without a feed.
async fn next_public(feed: &mut Option<PublicFeed>) -> Option<Option<IpAddr>> {
    match feed {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(*rx.borrow_and_update()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
