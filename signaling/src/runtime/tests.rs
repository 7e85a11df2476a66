//! The runtime on loopback: SIP over TCP limits (issue 16, item 7). Real
//! sockets on 127.0.0.0/8 only; every wait is bounded.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream, UdpSocket},
};

use super::{Running, start};
use crate::config::{SipConfig, SipFile};

/// A port the kernel says is free on 127.0.0.1 for TCP and UDP.
fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An agent on 127.0.0.1:`port` (trunk and PBX side), the trunk at
/// 127.0.0.1, the PBX at 127.0.0.2; `extra` goes into the `[sip]` table.
async fn agent(port: u16, extra: &str) -> Running {
    let text = format!(
        r#"
trunk-listen = "127.0.0.1:{port}"
pbx = "127.0.0.2:5060"
media = ["127.0.0.1:9"]
record-route-secret = "runtime tests secret, long enough to sign"
{extra}
[[trunk]]
name = "carrier"
sources = ["127.0.0.1"]
target = "127.0.0.1:5999"
default = true
"#
    );
    let f: SipFile = toml::from_str(&text).unwrap();
    start(SipConfig::resolve(f).unwrap()).await.unwrap()
}

/// Connect to `to` from `from` (any port).
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from, 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// Whether the agent closed `s` within `within` (EOF or reset).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A keepalive answer: still open.
            Ok(Ok(_)) => {}
        }
    }
}

/// The agent's counters (OPTIONS sip:stats@ over UDP, from the trunk).
async fn stats(port: u16) -> String {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = s.local_addr().unwrap();
    let req = format!(
        "OPTIONS sip:stats@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-st{}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=t\r\nTo: <sip:stats@127.0.0.1>\r\n\
         Call-ID: stats-{}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        me.port(),
        me.port()
    );
    let mut buf = vec![0u8; 65_536];
    // Retransmitted every second as a UAC would (RFC 3261 §17.1.2): an
    // agent still working through a flood's backlog on a loaded host may
    // take a while; the transaction answers a retransmission again.
    for _ in 0..15 {
        s.send_to(req.as_bytes(), ("127.0.0.1", port))
            .await
            .unwrap();
        if let Ok(n) = tokio::time::timeout(Duration::from_secs(1), s.recv(&mut buf)).await {
            let n = n.unwrap();
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    panic!("the agent did not answer OPTIONS within 15 s")
}

/// A counter of the stats JSON.
fn counter(json: &str, name: &str) -> u64 {
    let key = format!("\"{name}\":");
    json.split_once(&key)
        .and_then(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no {name} in {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_capped_per_source_and_strangers_closed_at_once() {
    let port = free_port();
    let running = agent(port, "").await;
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    // A source that is neither a trunk nor the PBX: closed at once.
    let mut stranger = connect_from([127, 0, 0, 3].into(), to).await;
    assert!(
        closed_within(&mut stranger, Duration::from_secs(2)).await,
        "a connection from an unknown source stays open"
    );
    // The trunk: 32 connections (the default per source), the rest closed.
    let mut conns = Vec::new();
    for _ in 0..40 {
        conns.push(connect_from([127, 0, 0, 1].into(), to).await);
    }
    let mut closed = 0;
    for c in &mut conns {
        if closed_within(c, Duration::from_millis(300)).await {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 8,
        "of 40 connections from one source, {closed} closed"
    );
    let st = stats(port).await;
    assert!(st.contains("\"tcp_refused_unknown_source\":1"), "{st}");
    assert!(st.contains("\"tcp_refused_per_source\":8"), "{st}");
    assert!(st.contains("\"tcp_connections\":32"), "{st}");
    drop(conns);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_tcp_connections_are_closed() {
    let port = free_port();
    let running = agent(
        port,
        "tcp-idle-timeout = 1\ntcp-message-timeout = 2\ntcp-max-connections = 3",
    )
    .await;
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    // Keepalives are activity: a connection pinging every 300 ms lives on.
    let mut alive = connect_from([127, 0, 0, 1].into(), to).await;
    let mut idle = connect_from([127, 0, 0, 1].into(), to).await;
    // Slow loris: a byte of a message every 300 ms, never finished.
    let mut slow = connect_from([127, 0, 0, 1].into(), to).await;
    let mut over = connect_from([127, 0, 0, 1].into(), to).await;
    assert!(
        closed_within(&mut over, Duration::from_millis(500)).await,
        "a 4th connection beyond tcp-max-connections = 3 stays open"
    );
    let started = Instant::now();
    let head = b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK-s";
    let mut idle_closed = None;
    let mut slow_closed = None;
    for i in 0..20 {
        let tick = Instant::now();
        alive.write_all(b"\r\n\r\n").await.unwrap();
        if slow_closed.is_none() && slow.write_all(&head[i..=i]).await.is_err() {
            slow_closed = Some(started.elapsed());
        }
        if idle_closed.is_none() && closed_within(&mut idle, Duration::from_millis(300)).await {
            idle_closed = Some(started.elapsed());
        }
        if slow_closed.is_none() && closed_within(&mut slow, Duration::from_millis(1)).await {
            slow_closed = Some(started.elapsed());
        }
        if idle_closed.is_some() && slow_closed.is_some() {
            break;
        }
        tokio::time::sleep_until((tick + Duration::from_millis(300)).into()).await;
    }
    let idle_closed = idle_closed.expect("an idle connection stays open");
    let slow_closed = slow_closed.expect("a connection dribbling a message stays open");
    assert!(idle_closed >= Duration::from_millis(900), "{idle_closed:?}");
    assert!(
        slow_closed >= Duration::from_millis(1900),
        "{slow_closed:?}"
    );
    assert!(
        !closed_within(&mut alive, Duration::from_millis(100)).await,
        "keepalives did not keep the connection open"
    );
    let st = stats(port).await;
    assert!(st.contains("\"tcp_idle_closed\":1"), "{st}");
    assert!(st.contains("\"tcp_slow_closed\":1"), "{st}");
    assert!(st.contains("\"tcp_refused_max_connections\":1"), "{st}");
    running.stop().await;
}

/// A peer that sends requests but never reads the answers: its queue in
/// the agent is bounded, and the connection dropped when it is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_is_dropped_when_its_write_queue_is_full() {
    let port = free_port();
    let running = agent(port, "tcp-write-queue = 65535").await;
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpSocket::new_v4().unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut c = s.connect(to).await.unwrap();
    let me = c.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    let mut dropped = false;
    while Instant::now() < deadline && sent < 200_000 {
        let req = format!(
            "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bK-w{sent}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=t\r\nTo: <sip:x@127.0.0.1>\r\n\
             Call-ID: w-{sent}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        match tokio::time::timeout(Duration::from_secs(1), c.write_all(req.as_bytes())).await {
            Ok(Ok(())) => sent += 1,
            _ => {
                dropped = true;
                break;
            }
        }
    }
    // The agent may have closed it while our writes still fitted in the
    // kernel's buffers: the stats say.
    let st = stats(port).await;
    let body = st.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert_eq!(
        counter(body, "tcp_write_queue_full"),
        1,
        "after {sent} requests (writes failing: {dropped}): {body}"
    );
    running.stop().await;
}

/// A flood of the largest messages holds at most `EVENT_QUEUE_BYTES`
/// while the agent catches up: the rest are dropped (counted), and the
/// room comes back as the agent handles what is queued.
#[tokio::test]
async fn the_agents_queue_is_bounded_in_bytes() {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    };

    use super::{Context, EVENT_QUEUE, EVENT_QUEUE_BYTES, Event, tcp::ConnTable};
    use crate::{
        message::MessageError,
        proxy::{Peer, Transport, TransportStats},
    };

    let f: SipFile = toml::from_str(
        r#"
trunk-listen = "127.0.0.1:5060"
pbx = "127.0.0.2:5060"
[[trunk]]
name = "carrier"
sources = ["127.0.0.1"]
target = "127.0.0.1:5999"
"#,
    )
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(EVENT_QUEUE);
    let ctx = Context {
        cfg: Arc::new(SipConfig::resolve(f).unwrap()),
        stats: Arc::new(TransportStats::default()),
        events: tx,
        table: Mutex::new(ConnTable::default()),
        epoch: Instant::now(),
        last_drop_warning: AtomicU64::new(0),
        queued_bytes: Arc::new(AtomicUsize::new(0)),
    };
    let peer = Peer {
        transport: Transport::Udp,
        conn: None,
        local: "127.0.0.1:5060".parse().unwrap(),
        remote: "127.0.0.9:5060".parse().unwrap(),
    };
    let big = vec![b'x'; 65_535];
    let too_large = || MessageError::TooLarge {
        size: 65_535,
        max: 1024,
    };
    for _ in 0..1000 {
        assert!(ctx.malformed(peer, &big, too_large()));
    }
    let fit = EVENT_QUEUE_BYTES / big.len();
    assert_eq!(
        ctx.stats.events_dropped.load(Ordering::Relaxed),
        (1000 - fit) as u64
    );
    assert!(ctx.queued_bytes.load(Ordering::Relaxed) <= EVENT_QUEUE_BYTES);
    // The agent handles them: the bytes are given back.
    for _ in 0..fit {
        drop(rx.recv().await.unwrap());
    }
    assert_eq!(ctx.queued_bytes.load(Ordering::Relaxed), 0);
    assert!(ctx.malformed(peer, &big, too_large()));
    assert_eq!(
        ctx.stats.events_dropped.load(Ordering::Relaxed),
        (1000 - fit) as u64
    );
}

/// `trunk-advertise = "media"`: refused without a feed; with one, new
/// INVITEs get 503 + Retry-After until it publishes an address, then go on.
#[tokio::test]
async fn media_advertise_follows_its_feed() {
    let port = free_port();
    let text = format!(
        r#"
trunk-listen = "127.0.0.1:{port}"
trunk-advertise = "media"
pbx = "127.0.0.2:5060"
media = ["127.0.0.1:9"]
transports = ["udp"]
record-route-secret = "runtime tests secret, long enough to sign"
[[trunk]]
name = "carrier"
sources = ["127.0.0.1"]
target = "127.0.0.1:5999"
default = true
"#
    );
    let cfg = SipConfig::resolve(toml::from_str::<SipFile>(&text).unwrap()).unwrap();
    let Err(e) = start(cfg.clone()).await else {
        panic!("started without a feed");
    };
    assert!(e.to_string().contains("needs the media daemon"), "{e}");
    let (tx, rx) = tokio::sync::watch::channel(None);
    let feeds = super::PublicFeeds {
        trunk: Some(rx),
        pbx: None,
    };
    let agent = super::start_with(cfg, &super::rundir::path(), feeds)
        .await
        .unwrap();
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = s.local_addr().unwrap();
    let invite = |n: u32| {
        format!(
            "INVITE sip:100@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-adv{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=t{n}\r\nTo: <sip:100@127.0.0.1>\r\n\
             Call-ID: adv-{n}\r\nCSeq: 1 INVITE\r\nContact: <sip:t@{me}>\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let mut b = vec![0u8; 65536];
    let mut first_answer = async |n: u32| {
        s.send_to(invite(n).as_bytes(), ("127.0.0.1", port))
            .await
            .unwrap();
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut b))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        String::from_utf8_lossy(&b[..len]).into_owned()
    };
    let refused = first_answer(0).await;
    assert!(
        refused.starts_with("SIP/2.0 503") && refused.contains("Retry-After: 5\r\n"),
        "{refused}"
    );
    tx.send_replace(Some("198.19.0.7".parse().unwrap()));
    let mut taken = false;
    for n in 1..=20 {
        let answer = first_answer(n).await;
        if answer.starts_with("SIP/2.0 100") {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        taken,
        "INVITEs still refused after the feed published an address"
    );
    agent.stop().await;
}
