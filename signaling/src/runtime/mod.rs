//! The tokio shell around the I/O-free [`Agent`]: UDP and TCP transports,
//! the ng client, timers. One task owns the agent; socket tasks parse and
//! hand it messages; it hands back what to send.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
};
use tracing::{debug, info, warn};

mod ng;
pub mod secret;

use self::ng::{Inflight, NgClient};
use crate::{
    config::SipConfig,
    message::{self, Frame, Message, MessageError, StreamFramer},
    proxy::{Agent, ConnId, NgOutcome, Output, Peer, Transport},
};

enum Event {
    Message(Peer, Message),
    Malformed(Peer, Vec<u8>, MessageError),
    Connected(ConnId, SocketAddr, mpsc::UnboundedSender<Vec<u8>>),
    Closed(ConnId),
    ConnectFailed(SocketAddr),
}

/// Parse one frame's message and hand it to the agent.
fn deliver(events: &mpsc::UnboundedSender<Event>, peer: Peer, bytes: Vec<u8>) {
    let ev = match Message::parse(&bytes) {
        Ok(m) => Event::Message(peer, m),
        Err(e) => Event::Malformed(peer, bytes, e),
    };
    let _ = events.send(ev);
}

async fn udp_reader(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    max: usize,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, remote)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let peer = Peer {
            transport: Transport::Udp,
            conn: None,
            local,
            remote,
        };
        match message::datagram(&buf[..n], max) {
            Ok(Frame::Message(bytes)) => deliver(&events, peer, bytes),
            Ok(Frame::Ping) => {
                // RFC 5626 §3.5.1 (datagram keepalives are CRLFCRLF too).
                let _ = socket.send_to(b"\r\n", remote).await;
            }
            Ok(Frame::Pong) => {}
            Err(e) => {
                let _ = events.send(Event::Malformed(peer, buf[..n].to_vec(), e));
            }
        }
    }
}

static NEXT_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Serve one TCP connection: frames in, writes out.
fn spawn_conn(
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    max: usize,
    events: mpsc::UnboundedSender<Event>,
) -> ConnId {
    let conn = NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let _ = events.send(Event::Connected(conn, remote, tx.clone()));
    let (mut reader, mut writer) = stream.into_split();
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut framer = StreamFramer::new(max);
        let mut buf = vec![0u8; 16_384];
        let peer = Peer {
            transport: Transport::Tcp,
            conn: Some(conn),
            local,
            remote,
        };
        'conn: loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            framer.push(&buf[..n]);
            while let Some(frame) = framer.next_frame() {
                match frame {
                    Ok(Frame::Message(bytes)) => deliver(&events, peer, bytes),
                    Ok(Frame::Ping) => {
                        let _ = tx.send(b"\r\n".to_vec());
                    }
                    Ok(Frame::Pong) => {}
                    Err(e) => {
                        let _ = events.send(Event::Malformed(peer, Vec::new(), e));
                        break 'conn;
                    }
                }
            }
        }
        let _ = events.send(Event::Closed(conn));
    });
    conn
}

async fn tcp_acceptor(
    listener: TcpListener,
    local: SocketAddr,
    max: usize,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                spawn_conn(stream, local, remote, max, events.clone());
            }
            Err(e) => {
                warn!(error = %e, "accepting a SIP TCP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
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

/// Bind every socket (errors here are the operator's: one line each) and
/// start the agent's task.
pub async fn start(cfg: SipConfig) -> anyhow::Result<Running> {
    let (events_tx, events) = mpsc::unbounded_channel::<Event>();
    let mut udp: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut listens = vec![cfg.trunk_listen];
    if cfg.pbx_listen != cfg.trunk_listen {
        listens.push(cfg.pbx_listen);
    }
    let max = cfg.max_message;
    for &local in &listens {
        if cfg.udp {
            let s = Arc::new(
                UdpSocket::bind(local)
                    .await
                    .with_context(|| format!("cannot listen for SIP (UDP) on {local}"))?,
            );
            tokio::spawn(udp_reader(s.clone(), local, max, events_tx.clone()));
            udp.insert(local, s);
        }
        if cfg.tcp {
            let l = TcpListener::bind(local)
                .await
                .with_context(|| format!("cannot listen for SIP (TCP) on {local}"))?;
            tokio::spawn(tcp_acceptor(l, local, max, events_tx.clone()));
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
    let (replies_tx, replies) = mpsc::unbounded_channel::<ng::Reply>();
    tokio::spawn(ng::reader(ng_socket.clone(), replies_tx));
    let ngc = NgClient {
        socket: ng_socket,
        inflight: Inflight::new(cfg.ng_timeout),
    };
    info!(
        trunk_listen = %cfg.trunk_listen,
        pbx_listen = %cfg.pbx_listen,
        pbx = %cfg.pbx,
        udp = cfg.udp,
        tcp = cfg.tcp,
        media = ?cfg.media,
        "SIP agent running"
    );

    let (key, _) = secret::load(cfg.record_route_secret.clone(), &secret::runtime_dir())
        .context("creating the Record-Route secret")?;
    let agent = Agent::new(cfg, key, Instant::now());

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(agent, events_tx, events, replies, udp, ngc, stopped));
    Ok(Running { stop, task })
}

/// The agent's own task.
async fn serve(
    mut agent: Agent,
    events_tx: mpsc::UnboundedSender<Event>,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut replies: mpsc::UnboundedReceiver<ng::Reply>,
    udp: HashMap<SocketAddr, Arc<UdpSocket>>,
    mut ngc: NgClient,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let max = agent.config().max_message;
    let mut conns: HashMap<ConnId, (SocketAddr, mpsc::UnboundedSender<Vec<u8>>)> = HashMap::new();
    let mut by_remote: HashMap<SocketAddr, ConnId> = HashMap::new();
    // Bytes waiting for an outgoing TCP connection being set up.
    let mut connecting: HashMap<SocketAddr, Vec<Vec<u8>>> = HashMap::new();
    tokio::pin!(shutdown);
    let mut metrics_tick = tokio::time::interval(Duration::from_secs(1));
    metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let deadline = ngc
            .next_due()
            .map_or(agent.next_deadline(), |d| d.min(agent.next_deadline()));
        tokio::select! {
            _ = &mut shutdown => break,
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                let now = Instant::now();
                match ev {
                    Event::Message(peer, m) => agent.on_message(peer, m, now),
                    Event::Malformed(peer, raw, e) => agent.on_malformed(peer, &raw, &e),
                    Event::Connected(conn, remote, tx) => {
                        by_remote.insert(remote, conn);
                        if let Some(queued) = connecting.remove(&remote) {
                            for b in queued {
                                let _ = tx.send(b);
                            }
                        }
                        conns.insert(conn, (remote, tx));
                    }
                    Event::ConnectFailed(remote) => {
                        connecting.remove(&remote);
                    }
                    Event::Closed(conn) => {
                        if let Some((remote, _)) = conns.remove(&conn) {
                            by_remote.remove(&remote);
                        }
                    }
                }
            }
            reply = replies.recv() => {
                let Some(reply) = reply else { break };
                if let Some(id) = ngc.inflight.take_reply(&reply.cookie, reply.from) {
                    agent.on_ng(id, NgOutcome::Reply(reply.value), Instant::now());
                }
            }
            _ = metrics_tick.tick() => {
                crate::metrics::publish(agent.stats(), agent.calls());
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                for id in ngc.tick(now) {
                    agent.on_ng(id, NgOutcome::Timeout, now);
                }
                agent.on_timer(now);
            }
        }
        for out in agent.drain() {
            match out {
                Output::Ng { id, node, request } => ngc.send(id, node, &request),
                Output::Send { peer, bytes } => match peer.transport {
                    Transport::Udp => {
                        let socket = udp.get(&peer.local).or_else(|| udp.values().next());
                        if let Some(s) = socket
                            && let Err(e) = s.try_send_to(&bytes, peer.remote)
                        {
                            debug!(remote = %peer.remote, error = %e, "SIP datagram not sent");
                        }
                    }
                    Transport::Tcp => {
                        let conn = peer
                            .conn
                            .filter(|c| conns.contains_key(c))
                            .or_else(|| by_remote.get(&peer.remote).copied());
                        if let Some((_, tx)) = conn.and_then(|c| conns.get(&c)) {
                            let _ = tx.send(bytes);
                        } else {
                            let queue = connecting.entry(peer.remote).or_default();
                            queue.push(bytes);
                            if queue.len() == 1 {
                                let events = events_tx.clone();
                                let (local, remote) = (peer.local, peer.remote);
                                tokio::spawn(async move {
                                    match connect_from(local, remote).await {
                                        Ok(stream) => {
                                            spawn_conn(stream, local, remote, max, events);
                                        }
                                        Err(e) => {
                                            warn!(%remote, error = %e, "SIP TCP connection failed");
                                            let _ = events.send(Event::ConnectFailed(remote));
                                        }
                                    }
                                });
                            }
                        }
                    }
                },
            }
        }
    }
    info!(calls = agent.calls(), "SIP agent stopped");
}

/// Connect from our listen address's IP (so the peer sees the side's
/// address), any port.
async fn connect_from(local: SocketAddr, remote: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if remote.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if local.is_ipv4() == remote.is_ipv4() {
        socket.bind(SocketAddr::new(local.ip(), 0))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(remote))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
