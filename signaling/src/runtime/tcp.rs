//! SIP over TCP (RFC 3261 §18): accepting and opening connections, one
//! reader and one writer task per connection, and the limits that keep
//! descriptors and memory bounded whatever peers do:
//!
//! - a source that is neither a trunk nor the PBX is closed at accept;
//! - `tcp-max-connections` in all (accepted and opened) and
//!   `tcp-max-per-source` accepted per source address;
//! - `tcp-idle-timeout` without a byte either way (CRLF keepalives, RFC
//!   5626 §3.5.1, count) closes a connection;
//! - `tcp-message-timeout`: a message begun must be complete within it
//!   (slow senders holding partial messages), and never exceed
//!   `max-message` (the framer refuses it);
//! - `tcp-write-queue` bytes waiting for a peer that does not read, at
//!   most: beyond, the connection is dropped.
//!
//! Each is counted in [`TransportStats`].

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
    sync::{mpsc, watch},
};
use tracing::{debug, warn};

use super::{Context, Event};
use crate::{
    message::{Frame, StreamFramer},
    proxy::{ConnId, Peer, Transport, TransportStats},
};

/// A write that makes no progress for this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Connections open, in all and per source (accepted ones).
#[derive(Default)]
pub(super) struct ConnTable {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Why a connection is not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    MaxConnections,
    PerSource,
}

/// A place in the [`ConnTable`], given back on drop.
pub(super) struct ConnSlot {
    ctx: Arc<Context>,
    source: Option<IpAddr>,
}

impl ConnSlot {
    /// A place for a connection accepted from `source` (`None`: one the
    /// agent opens; only the total limits those).
    pub(super) fn take(ctx: &Arc<Context>, source: Option<IpAddr>) -> Result<Self, Refused> {
        let limits = ctx.cfg.tcp_limits;
        let source = source.map(|ip| ip.to_canonical());
        let mut t = ctx.table.lock().expect("connection table lock");
        if t.total >= limits.max_connections {
            return Err(Refused::MaxConnections);
        }
        if let Some(ip) = source {
            let n = t.per_source.entry(ip).or_default();
            if *n >= limits.max_per_source {
                return Err(Refused::PerSource);
            }
            *n += 1;
        }
        t.total += 1;
        ctx.stats.tcp_connections.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            ctx: ctx.clone(),
            source,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut t = self.ctx.table.lock().expect("connection table lock");
        t.total = t.total.saturating_sub(1);
        if let Some(ip) = self.source
            && let Some(n) = t.per_source.get_mut(&ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.per_source.remove(&ip);
            }
        }
        self.ctx
            .stats
            .tcp_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a connection's tasks and the agent's task share.
struct ConnState {
    /// Bytes handed to the writer and not yet written.
    queued: AtomicUsize,
    /// Set once: both tasks stop.
    closing: watch::Sender<bool>,
    /// Milliseconds since `epoch` of the last byte read or written.
    last_activity: AtomicU64,
    epoch: Instant,
    _slot: ConnSlot,
}

impl ConnState {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_activity.fetch_max(ms, Ordering::Relaxed);
    }

    fn last_activity(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_activity.load(Ordering::Relaxed))
    }
}

/// The agent's handle on a connection: a bounded write queue.
#[derive(Clone)]
pub(super) struct Conn {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    state: Arc<ConnState>,
    cap: usize,
}

impl Conn {
    /// Queue `bytes`; `false` when that would exceed `tcp-write-queue`
    /// (the caller then closes the connection) or the writer is gone.
    pub(super) fn send(&self, bytes: Vec<u8>) -> bool {
        let len = bytes.len();
        let before = self.state.queued.fetch_add(len, Ordering::Relaxed);
        if before + len > self.cap {
            self.state.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        self.tx.send(bytes).is_ok()
    }

    /// Close at once (queued bytes are dropped).
    pub(super) fn close(&self) {
        self.state.closing.send_replace(true);
    }
}

/// Serve one connection (accepted or opened): a reader task (frames in,
/// to the agent) and a writer task. The reader announces it to the agent
/// before anything it reads, and reports its end.
pub(super) fn spawn(
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    slot: ConnSlot,
    ctx: &Arc<Context>,
) {
    let _ = stream.set_nodelay(true);
    let id: ConnId = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let epoch = Instant::now();
    let state = Arc::new(ConnState {
        queued: AtomicUsize::new(0),
        closing: watch::channel(false).0,
        last_activity: AtomicU64::new(0),
        epoch,
        _slot: slot,
    });
    let conn = Conn {
        tx,
        state: state.clone(),
        cap: ctx.cfg.tcp_limits.write_queue,
    };
    let (reader, writer) = stream.into_split();
    tokio::spawn(write_loop(writer, rx, state.clone()));
    tokio::spawn(read_loop(reader, id, local, remote, conn, ctx.clone()));
}

async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    state: Arc<ConnState>,
) {
    let mut closing = state.closing.subscribe();
    loop {
        let bytes = tokio::select! {
            _ = closing.wait_for(|c| *c) => break,
            b = rx.recv() => match b {
                Some(b) => b,
                None => break,
            },
        };
        let len = bytes.len();
        let written = tokio::select! {
            _ = closing.wait_for(|c| *c) => break,
            r = tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&bytes)) => r,
        };
        state.queued.fetch_sub(len, Ordering::Relaxed);
        if !matches!(written, Ok(Ok(()))) {
            break;
        }
        state.touch();
    }
    // Stop the reader too (a write that failed or timed out).
    state.closing.send_replace(true);
}

/// Why a reader stopped.
enum End {
    Eof,
    Closed,
    Idle,
    Slow,
    Unframeable,
    AgentGone,
}

async fn read_loop(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    id: ConnId,
    local: SocketAddr,
    remote: SocketAddr,
    conn: Conn,
    ctx: Arc<Context>,
) {
    let limits = ctx.cfg.tcp_limits;
    let peer = Peer {
        transport: Transport::Tcp,
        conn: Some(id),
        local,
        remote,
    };
    if ctx
        .events
        .send(Event::Connected(id, remote, conn.clone()))
        .await
        .is_err()
    {
        return;
    }
    let state = conn.state.clone();
    let mut closing = state.closing.subscribe();
    let mut framer = StreamFramer::new(ctx.cfg.max_message);
    let mut buf = vec![0u8; 16_384];
    // Since when the framer has held part of a message.
    let mut partial_since: Option<Instant> = None;
    let end = loop {
        let idle_at = state.last_activity() + limits.idle_timeout;
        let slow_at = partial_since.map(|t| t + limits.message_timeout);
        let deadline = slow_at.map_or(idle_at, |s| s.min(idle_at));
        let n = tokio::select! {
            _ = closing.wait_for(|c| *c) => break End::Closed,
            () = ctx.events.closed() => break End::AgentGone,
            () = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                if slow_at.is_some_and(|s| now >= s) {
                    break End::Slow;
                }
                if now >= state.last_activity() + limits.idle_timeout {
                    break End::Idle;
                }
                // The writer was active meanwhile.
                continue;
            }
            r = reader.read(&mut buf) => match r {
                Ok(0) | Err(_) => break End::Eof,
                Ok(n) => n,
            },
        };
        state.touch();
        framer.push(&buf[..n]);
        let mut complete = false;
        let mut failed = false;
        while let Some(frame) = framer.next_frame() {
            match frame {
                Ok(Frame::Message(bytes)) => {
                    complete = true;
                    if !ctx.deliver(peer, bytes) {
                        failed = true;
                        break;
                    }
                }
                Ok(Frame::Ping) => {
                    complete = true;
                    let _ = conn.send(b"\r\n".to_vec());
                }
                Ok(Frame::Pong) => complete = true,
                Err(e) => {
                    // Oversize, no Content-Length, garbage: counted as
                    // malformed by the agent, and the stream is lost.
                    ctx.malformed(peer, &[], e);
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            break if ctx.events.is_closed() {
                End::AgentGone
            } else {
                End::Unframeable
            };
        }
        partial_since = match (framer.buffered(), complete) {
            (0, _) => None,
            (_, true) => Some(Instant::now()),
            (_, false) => partial_since.or_else(|| Some(Instant::now())),
        };
    };
    match end {
        End::Idle => {
            TransportStats::count(&ctx.stats.tcp_idle_closed);
            debug!(%remote, "SIP TCP connection idle: closed");
        }
        End::Slow => {
            TransportStats::count(&ctx.stats.tcp_slow_closed);
            debug!(%remote, "SIP TCP connection too slow delivering a message: closed");
        }
        End::Eof | End::Closed | End::Unframeable | End::AgentGone => {}
    }
    conn.close();
    let _ = ctx.events.send(Event::Closed(id)).await;
}

/// Accept connections on `listener` until the agent stops.
pub(super) async fn acceptor(listener: TcpListener, local: SocketAddr, ctx: Arc<Context>) {
    loop {
        let accepted = tokio::select! {
            () = ctx.events.closed() => return,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, most likely: wait a little.
                warn!(error = %e, "accepting a SIP TCP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !ctx.cfg.knows_source(remote) {
            TransportStats::count(&ctx.stats.tcp_refused_unknown_source);
            debug!(%remote, "SIP TCP connection from an unknown source closed");
            continue;
        }
        match ConnSlot::take(&ctx, Some(remote.ip())) {
            Ok(slot) => spawn(stream, local, remote, slot, &ctx),
            Err(why) => {
                let counter = match why {
                    Refused::MaxConnections => &ctx.stats.tcp_refused_max_connections,
                    Refused::PerSource => &ctx.stats.tcp_refused_per_source,
                };
                TransportStats::count(counter);
                debug!(%remote, ?why, "SIP TCP connection over the limit closed");
            }
        }
    }
}

/// Open a connection from our listen address's IP (so the peer sees the
/// side's address), any port.
pub(super) async fn connect_from(
    local: SocketAddr,
    remote: SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = if remote.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if local.is_ipv4() == remote.is_ipv4() {
        socket.bind(SocketAddr::new(local.ip(), 0))?;
    }
    tokio::time::timeout(Duration::from_secs(5), socket.connect(remote))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}
