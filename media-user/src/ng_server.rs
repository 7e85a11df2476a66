//! The ng control server: datagrams in, the session engine's replies out.
//!
//! Replies are cached by cookie, so a retransmitted request (the SIP
//! controller's timer fired before our reply arrived) gets the identical
//! reply and is never applied twice. The protocol has no authentication:
//! listen on loopback (the default) or a management network.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    net::UdpSocket,
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use crate::ng::{self, Command, Reply, ReplyCache};

/// A command for the engine, with where to put its reply.
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Reply>,
}

/// Datagrams the server could not even reply to (no cookie).
#[derive(Debug, Default)]
pub struct ControlStats {
    pub undecodable: AtomicU64,
    pub retransmissions: AtomicU64,
    pub requests: AtomicU64,
}

/// Replies kept at most, whatever the TTL (`ng-cache-ttl`, 30 s by
/// default: Kamailio's rtpengine module retries for a few seconds).
const CACHE_ENTRIES: usize = 65_536;

/// Serve ng on `socket` until the engine goes away.
pub async fn serve(
    socket: UdpSocket,
    engine: mpsc::Sender<Request>,
    stats: Arc<ControlStats>,
    cache_ttl: Duration,
) {
    let mut cache = ReplyCache::new(CACHE_ENTRIES, cache_ttl);
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "ng socket receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let (cookie, command) = match ng::parse_datagram(&buf[..n]) {
            Ok(parsed) => parsed,
            Err(e) => {
                stats.undecodable.fetch_add(1, Ordering::Relaxed);
                debug!(%from, error = %e, "undecodable ng datagram dropped");
                continue;
            }
        };
        let now = Instant::now();
        if let Some(cached) = cache.get(&cookie, now) {
            stats.retransmissions.fetch_add(1, Ordering::Relaxed);
            let _ = socket.send_to(cached, from).await;
            continue;
        }
        let reply = match command {
            Err(e) => Reply::Error(e.to_string()),
            Ok(command) => {
                let name = command.name();
                let (tx, rx) = oneshot::channel();
                if engine.send(Request { command, reply: tx }).await.is_err() {
                    return;
                }
                match rx.await {
                    Ok(r) => {
                        metrics::histogram!("media_relay_ng_duration_seconds", "command" => name)
                            .record(now.elapsed().as_secs_f64());
                        r
                    }
                    Err(_) => return,
                }
            }
        };
        let bytes = ng::encode_reply(&cookie, &reply);
        if let Err(e) = socket.send_to(&bytes, from).await {
            debug!(%from, error = %e, "ng reply not sent");
        }
        cache.insert(cookie, bytes, now);
    }
}

/// Bind the ng socket, with a clear error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    UdpSocket::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for ng on {addr}: {e}; choose another --listen-ng (is another media-relay or rtpengine running?)"
        )
    })
}
