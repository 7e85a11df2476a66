//! The ng control server: datagrams in, the session engine's replies out.
//!
//! Replies are cached by source address and cookie, with a digest of the
//! request, so a retransmitted request (the SIP controller's timer fired
//! before our reply arrived) gets the identical reply and is never applied
//! twice, while the same cookie with another request (a controller that
//! restarted and counts cookies from 1 again, two controllers alike) is
//! never answered with another request's reply: from another source it is
//! another request; from the same source it is refused with an error. The
//! protocol has no authentication: listen on loopback (the default) or a
//! management network, and name the controllers in `ng-allow`
//! ([`NgAllow`]): datagrams from anyone else are dropped unanswered,
//! counted and logged (at most one warning per [`REFUSAL_WARNING_EVERY`]).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ipnet::IpNet;
use tokio::{
    net::UdpSocket,
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use crate::ng::{self, Command, Lookup, Reply, ReplyCache, Value};

/// A command for the engine, with where to put its reply.
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Reply>,
}

/// What the ng server saw, for metrics.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Datagrams the server could not even reply to (no cookie).
    pub undecodable: AtomicU64,
    pub retransmissions: AtomicU64,
    pub requests: AtomicU64,
    /// A cookie reused by its source for another request: refused.
    pub cookie_reused: AtomicU64,
    /// A cookie longer than [`ng::MAX_COOKIE_LEN`]: refused.
    pub cookie_too_long: AtomicU64,
    /// Cached replies dropped before their TTL to stay within the cache's
    /// bounds (`ng-cache-bytes`, the entry cap).
    pub cache_evictions: AtomicU64,
    /// Bytes the reply cache holds now.
    pub cache_bytes: AtomicU64,
    /// Datagrams from a source outside `ng-allow`: dropped unanswered.
    pub source_refused: AtomicU64,
}

/// `ng-allow`: the networks whose controllers the ng server answers; empty
/// answers everyone (the protocol has no authentication of its own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NgAllow {
    nets: Vec<IpNet>,
}

impl NgAllow {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self { nets }
    }

    /// The networks, as configured (empty: everyone).
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// Whether a datagram from `ip` is answered. An IPv4 controller seen
    /// on a dual-stack socket (`::ffff:a.b.c.d`) matches the IPv4 networks.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.is_empty() || self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// At most one warning about refused sources (and one about undecodable
/// datagrams) per this long; each datagram is counted regardless.
pub const REFUSAL_WARNING_EVERY: Duration = Duration::from_secs(10);

/// The ng socket's receive buffer: a controller's burst (a SIP proxy
/// replaying its retransmissions after a pause, or garbage from a source
/// inside `ng-allow`) queues instead of being dropped by the kernel before
/// the server reads it. The kernel caps it at `net.core.rmem_max` unless
/// the daemon may force it (CAP_NET_ADMIN).
pub const RECV_BUFFER: usize = 4 << 20;

/// A warning that goes out at most once per [`REFUSAL_WARNING_EVERY`],
/// with how many events it stands for.
#[derive(Debug, Default)]
struct Throttled {
    last: Option<Instant>,
    since: u64,
}

impl Throttled {
    /// Count one event; `Some(events since the last warning)` when a
    /// warning is due now.
    fn due(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < REFUSAL_WARNING_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

/// Replies kept at most, whatever the TTL and the byte budget.
const CACHE_ENTRIES: usize = 65_536;

/// The reply cache's bounds.
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    /// `ng-cache-ttl` (30 s by default: Kamailio's rtpengine module
    /// retries for a few seconds).
    pub ttl: Duration,
    /// `ng-cache-bytes`.
    pub bytes: usize,
}

/// Serve ng on `socket` until the engine goes away, answering only the
/// sources `allow` permits.
pub async fn serve(
    socket: UdpSocket,
    engine: mpsc::Sender<Request>,
    stats: Arc<ControlStats>,
    limits: CacheLimits,
    allow: NgAllow,
) {
    let mut cache = ReplyCache::new(CACHE_ENTRIES, limits.bytes, limits.ttl);
    let mut buf = vec![0u8; 65_536];
    let mut refusals = Throttled::default();
    let mut undecodable = Throttled::default();
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "ng socket receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !allow.permits(from.ip()) {
            let total = stats.source_refused.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(refused) = refusals.due(Instant::now()) {
                // An IPv4 controller on a dual-stack socket: shown as IPv4.
                let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                warn!(
                    %from,
                    refused,
                    refused_total = total,
                    "ng datagrams from a source outside ng-allow dropped unanswered; add the controller's network to ng-allow if it is one"
                );
            }
            continue;
        }
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let datagram = &buf[..n];
        let (cookie, command) = match ng::parse_datagram(datagram) {
            Ok(parsed) => parsed,
            Err(e) => {
                let total = stats.undecodable.fetch_add(1, Ordering::Relaxed) + 1;
                // One line per interval, not per datagram: a flood of
                // garbage must not become a flood of log lines (writing
                // them would slow the server for the requests that count).
                if let Some(dropped) = undecodable.due(Instant::now()) {
                    warn!(
                        %from,
                        error = %e,
                        dropped,
                        dropped_total = total,
                        "undecodable ng datagrams dropped unanswered (the last one's source and error shown); is something other than an ng controller sending here?"
                    );
                }
                continue;
            }
        };
        let now = Instant::now();
        let digest = cache.digest(datagram);
        match cache.lookup(from, &cookie, digest, now) {
            Lookup::Retransmission(cached) => {
                stats.retransmissions.fetch_add(1, Ordering::Relaxed);
                let _ = socket.send_to(cached, from).await;
                continue;
            }
            Lookup::Refused(why) => {
                let counter = match why {
                    ng::CacheRefusal::CookieTooLong { .. } => &stats.cookie_too_long,
                    ng::CacheRefusal::CookieReused => &stats.cookie_reused,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                warn!(%from, reason = %why, "ng request refused");
                let bytes = ng::encode_reply(&cookie, &Reply::Error(why.to_string()));
                if let Err(e) = socket.send_to(&bytes, from).await {
                    debug!(%from, error = %e, "ng reply not sent");
                }
                continue;
            }
            Lookup::Miss => {}
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
                    Ok(mut r) => {
                        metrics::histogram!("media_relay_ng_duration_seconds", "command" => name)
                            .record(now.elapsed().as_secs_f64());
                        if name == "statistics" {
                            add_control_figures(&mut r, &stats);
                        }
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
        cache.insert(from, cookie, digest, bytes, now);
        stats
            .cache_evictions
            .store(cache.evictions(), Ordering::Relaxed);
        stats
            .cache_bytes
            .store(cache.bytes() as u64, Ordering::Relaxed);
    }
}

/// The ng server's own figures in a `statistics` reply, beside the
/// engine's command counts: `controlstatistics.refusedsourcecount`, the
/// datagrams dropped for a source outside `ng-allow`.
fn add_control_figures(reply: &mut Reply, stats: &ControlStats) {
    let Reply::Ok(top) = reply else { return };
    let Some(Value::Dict(statistics)) = top.get_mut(b"statistics".as_slice()) else {
        return;
    };
    let control = statistics
        .entry(b"controlstatistics".to_vec())
        .or_insert_with(Value::dict);
    if let Value::Dict(control) = control {
        let refused = stats.source_refused.load(Ordering::Relaxed);
        control.insert(
            b"refusedsourcecount".to_vec(),
            Value::Int(i64::try_from(refused).unwrap_or(i64::MAX)),
        );
    }
}

/// Bind the ng socket with a [`RECV_BUFFER`] receive buffer, with a clear
/// error.
pub fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let cannot = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot listen for ng on {addr}: {e}; choose another --listen-ng (is another media-relay or rtpengine running?)"
        )
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(cannot)?;
    if addr.is_ipv6() {
        // `[::]` answers IPv4 controllers too, as a std bind would.
        let _ = socket.set_only_v6(false);
    }
    // SO_RCVBUFFORCE needs CAP_NET_ADMIN (the daemon has it); without it
    // the kernel caps the size at net.core.rmem_max.
    if nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::RcvBufForce,
        &RECV_BUFFER,
    )
    .is_err()
    {
        let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    }
    socket.set_nonblocking(true).map_err(cannot)?;
    socket.bind(&addr.into()).map_err(cannot)?;
    UdpSocket::from_std(socket.into()).map_err(cannot)
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket as StdUdpSocket;

    use super::*;

    /// An ng server on loopback in front of an engine that answers `query`
    /// with the call-id it was asked about (and a `pad` of `pad` bytes),
    /// counting the commands it applied.
    async fn server(bytes: usize, pad: usize) -> (SocketAddr, Arc<ControlStats>, Arc<AtomicU64>) {
        server_allowing(bytes, pad, NgAllow::default()).await
    }

    /// [`server`] answering only the sources `allow` permits.
    async fn server_allowing(
        bytes: usize,
        pad: usize,
        allow: NgAllow,
    ) -> (SocketAddr, Arc<ControlStats>, Arc<AtomicU64>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel::<Request>(16);
        let applied = Arc::new(AtomicU64::new(0));
        let count = applied.clone();
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                count.fetch_add(1, Ordering::Relaxed);
                let reply = match req.command {
                    Command::Query(q) => Reply::Ok(
                        [
                            (b"call-id".to_vec(), Value::Bytes(q.call_id.into_bytes())),
                            (b"pad".to_vec(), Value::Bytes(vec![b'p'; pad])),
                        ]
                        .into_iter()
                        .collect(),
                    ),
                    Command::Statistics => Reply::Ok(
                        [(
                            b"statistics".to_vec(),
                            Value::dict()
                                .with("controlstatistics", Value::dict().with("totalpingcount", 0)),
                        )]
                        .into_iter()
                        .collect(),
                    ),
                    _ => Reply::Pong,
                };
                let _ = req.reply.send(reply);
            }
        });
        let stats = Arc::new(ControlStats::default());
        tokio::spawn(serve(
            socket,
            tx,
            stats.clone(),
            CacheLimits {
                ttl: Duration::from_secs(30),
                bytes,
            },
            allow,
        ));
        (addr, stats, applied)
    }

    fn client() -> StdUdpSocket {
        let s = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    /// Send a `query` for `call` under `cookie`; the reply dictionary.
    fn ask(s: &StdUdpSocket, server: SocketAddr, cookie: &[u8], call: &str) -> Value {
        let req = ng::encode_request(
            cookie,
            &Value::dict().with("command", "query").with("call-id", call),
        )
        .unwrap();
        s.send_to(&req, server).unwrap();
        let mut buf = vec![0u8; 65_536];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        let (got, reply) = ng::parse_reply(&buf[..n]).unwrap();
        assert_eq!(got, cookie);
        reply
    }

    fn call(v: &Value) -> Option<&str> {
        v.get("call-id").and_then(Value::as_str)
    }

    fn reason(v: &Value) -> Option<&str> {
        v.get("error-reason").and_then(Value::as_str)
    }

    /// Issue 16, item 2: two controllers (or one restarted) using the same
    /// cookie for different requests each get the reply to their own
    /// request; a retransmission still gets the cached reply.
    #[tokio::test]
    async fn the_same_cookie_from_two_sources_gets_two_replies() {
        let (server, stats, applied) = server(1 << 20, 0).await;
        let replies = tokio::task::spawn_blocking(move || {
            let (one, two) = (client(), client());
            (
                ask(&one, server, b"mr-sip-1", "call-one"),
                ask(&two, server, b"mr-sip-1", "call-two"),
                ask(&one, server, b"mr-sip-1", "call-one"),
                ask(&two, server, b"mr-sip-1", "call-two"),
            )
        })
        .await
        .unwrap();
        assert_eq!(call(&replies.0), Some("call-one"));
        assert_eq!(
            call(&replies.1),
            Some("call-two"),
            "the second source got the first one's reply: {:?}",
            replies.1
        );
        assert_eq!(
            replies.2, replies.0,
            "a retransmission gets the cached reply"
        );
        assert_eq!(replies.3, replies.1);
        assert_eq!(stats.retransmissions.load(Ordering::Relaxed), 2);
        assert_eq!(applied.load(Ordering::Relaxed), 2, "each applied once");
    }

    /// A cookie reused by one source for another request is an error, not
    /// a replay of the first request's reply, and is not applied.
    #[tokio::test]
    async fn a_reused_cookie_is_an_error() {
        let (server, stats, applied) = server(1 << 20, 0).await;
        let (first, reused, again) = tokio::task::spawn_blocking(move || {
            let s = client();
            (
                ask(&s, server, b"c1", "call-one"),
                ask(&s, server, b"c1", "call-three"),
                ask(&s, server, b"c1", "call-one"),
            )
        })
        .await
        .unwrap();
        assert_eq!(call(&first), Some("call-one"));
        assert_eq!(
            reused.get("result").and_then(Value::as_str),
            Some("error"),
            "{reused:?}"
        );
        assert_eq!(
            reason(&reused),
            Some(
                "cookie already used for a different request from this address: use a new cookie for every request"
            )
        );
        assert_eq!(
            again, first,
            "the first request's retransmission still works"
        );
        assert_eq!(applied.load(Ordering::Relaxed), 1);
        assert_eq!(stats.cookie_reused.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn an_oversized_cookie_is_an_error() {
        let (server, stats, applied) = server(1 << 20, 0).await;
        let reply =
            tokio::task::spawn_blocking(move || ask(&client(), server, &[b'k'; 129], "call-one"))
                .await
                .unwrap();
        assert_eq!(
            reason(&reply),
            Some("cookie of 129 bytes is longer than 128: use a shorter cookie")
        );
        assert_eq!(applied.load(Ordering::Relaxed), 0);
        assert_eq!(stats.cookie_too_long.load(Ordering::Relaxed), 1);
    }

    /// Issue 16, item 8: the cache is bounded by bytes: large replies
    /// evict the oldest ones (counted), and an evicted request's
    /// retransmission is applied again rather than answered from nowhere.
    #[tokio::test]
    async fn the_byte_budget_evicts_and_counts() {
        let (server, stats, applied) = server(64 << 10, 10_000).await;
        let replies = tokio::task::spawn_blocking(move || {
            let s = client();
            let mut replies = Vec::new();
            for i in 0..20 {
                replies.push(ask(
                    &s,
                    server,
                    format!("c{i}").as_bytes(),
                    &format!("call-{i}"),
                ));
            }
            // The newest is still cached, the oldest is not.
            replies.push(ask(&s, server, b"c19", "call-19"));
            replies.push(ask(&s, server, b"c0", "call-0"));
            replies
        })
        .await
        .unwrap();
        for (i, r) in replies.iter().take(20).enumerate() {
            assert_eq!(call(r), Some(format!("call-{i}").as_str()));
        }
        assert_eq!(call(&replies[21]), Some("call-0"));
        // Six replies of ~10 KB fit in 64 KiB: 14 evicted.
        assert_eq!(stats.cache_evictions.load(Ordering::Relaxed), 14 + 1);
        assert!(stats.cache_bytes.load(Ordering::Relaxed) <= 64 << 10);
        assert_eq!(stats.retransmissions.load(Ordering::Relaxed), 1);
        assert_eq!(applied.load(Ordering::Relaxed), 21);
    }

    fn nets(list: &[&str]) -> NgAllow {
        NgAllow::new(list.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn ng_allow_matches_v4_v6_and_mapped_sources() {
        let allow = nets(&["198.18.2.0/24", "2001:2:0:2::/64", "127.0.0.1/32"]);
        for (ip, permitted) in [
            ("198.18.2.2", true),
            ("198.18.2.255", true),
            ("198.18.1.2", false),
            ("198.18.3.2", false),
            ("127.0.0.1", true),
            ("127.0.0.2", false),
            ("2001:2:0:2::2", true),
            ("2001:2:0:1::2", false),
            ("::ffff:198.18.2.7", true),
            ("::ffff:198.18.1.7", false),
            ("::1", false),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(allow.permits(ip), permitted, "{ip}");
        }
        // Unset: everyone, as before ng-allow existed.
        assert!(NgAllow::default().permits("203.0.113.9".parse().unwrap()));
        assert!(NgAllow::default().permits("2001:db8::1".parse().unwrap()));
    }

    /// A source outside ng-allow gets no reply at all, nothing is applied
    /// and it is counted; an allowed one is served, and `statistics` tells
    /// it how many were refused.
    #[tokio::test]
    async fn a_source_outside_ng_allow_is_dropped_and_counted() {
        // Only 127.0.0.2 may talk: the default client (127.0.0.1) may not.
        let (server, stats, applied) = server_allowing(1 << 20, 0, nets(&["127.0.0.2/32"])).await;
        let (refused, statistics) = tokio::task::spawn_blocking(move || {
            let stranger = client();
            stranger
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut got = Vec::new();
            for i in 0..5 {
                let req = ng::encode_request(
                    format!("s{i}").as_bytes(),
                    &Value::dict().with("command", "ping"),
                )
                .unwrap();
                stranger.send_to(&req, server).unwrap();
                let mut buf = [0u8; 1024];
                got.push(stranger.recv_from(&mut buf).is_ok());
            }
            let allowed = StdUdpSocket::bind("127.0.0.2:0").unwrap();
            allowed
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let req =
                ng::encode_request(b"c1", &Value::dict().with("command", "statistics")).unwrap();
            allowed.send_to(&req, server).unwrap();
            let mut buf = vec![0u8; 65_536];
            let (n, _) = allowed.recv_from(&mut buf).unwrap();
            (got, ng::parse_reply(&buf[..n]).unwrap().1)
        })
        .await
        .unwrap();
        assert_eq!(refused, [false; 5], "a refused source got a reply");
        assert_eq!(stats.source_refused.load(Ordering::Relaxed), 5);
        assert_eq!(
            stats.requests.load(Ordering::Relaxed),
            1,
            "only the allowed one"
        );
        assert_eq!(applied.load(Ordering::Relaxed), 1);
        let control = statistics
            .get("statistics")
            .and_then(|s| s.get("controlstatistics"))
            .unwrap();
        assert_eq!(
            control.get("refusedsourcecount").and_then(Value::as_int),
            Some(5),
            "{statistics:?}"
        );
        assert_eq!(
            control.get("totalpingcount").and_then(Value::as_int),
            Some(0),
            "the engine's figures stay"
        );
    }
}
