//! The agent's ng client: requests out with a cookie, replies matched back
//! to the request they answer, retransmitted twice before a timeout is
//! reported. [`Inflight`] is the bookkeeping, free of I/O (tested below);
//! [`NgClient`] puts it on a socket.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::UdpSocket;
use tracing::{debug, warn};

/// One request awaiting its reply.
struct Request {
    id: u64,
    node: SocketAddr,
    bytes: Vec<u8>,
    due: Instant,
    tries: u8,
}

/// Requests awaiting replies, by cookie.
///
/// Cookies are `sip-<16 hex digits, random per process>-<n>`
/// ([`ng::blocking::Cookies`], shared with the operator CLI): a media node
/// caches replies by cookie (rtpengine's ng protocol documentation), so an
/// agent restarted within that cache's lifetime, or a second agent on the
/// same node, must never reuse a cookie — a counter starting at 1 would be
/// answered with another call's cached reply.
pub(super) struct Inflight {
    cookies: ng::blocking::Cookies,
    requests: HashMap<Vec<u8>, Request>,
    timeout: Duration,
}

impl Inflight {
    pub(super) fn new(timeout: Duration) -> Self {
        Self {
            cookies: ng::blocking::Cookies::new("sip"),
            requests: HashMap::new(),
            timeout,
        }
    }

    /// Encode request `id` for `node`; the bytes to send.
    pub(super) fn add(
        &mut self,
        id: u64,
        node: SocketAddr,
        request: &ng::Value,
        now: Instant,
    ) -> Result<Vec<u8>, ng::NgError> {
        let cookie = self.cookies.next().into_bytes();
        let bytes = ng::encode_request(&cookie, request)?;
        self.requests.insert(
            cookie,
            Request {
                id,
                node,
                bytes: bytes.clone(),
                due: now + self.timeout,
                tries: 0,
            },
        );
        Ok(bytes)
    }

    /// The request a reply with `cookie` from `from` answers (and forget
    /// it): `None` when it answers none of ours — the whole cookie must be
    /// one we sent (prefix included), from the node we sent it to.
    pub(super) fn take_reply(&mut self, cookie: &[u8], from: SocketAddr) -> Option<u64> {
        let r = self.requests.get(cookie)?;
        let same_node =
            r.node.ip().to_canonical() == from.ip().to_canonical() && r.node.port() == from.port();
        if !same_node {
            return None;
        }
        self.requests.remove(cookie).map(|r| r.id)
    }

    /// Requests to send again, and the ids of those that got no reply at
    /// all (forgotten).
    pub(super) fn tick(&mut self, now: Instant) -> (Vec<(SocketAddr, Vec<u8>)>, Vec<u64>) {
        let mut again = Vec::new();
        let mut timed_out = Vec::new();
        self.requests.retain(|_, r| {
            if r.due > now {
                return true;
            }
            if r.tries >= 2 {
                timed_out.push(r.id);
                return false;
            }
            r.tries += 1;
            r.due = now + self.timeout;
            again.push((r.node, r.bytes.clone()));
            true
        });
        (again, timed_out)
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        self.requests.values().map(|r| r.due).min()
    }
}

/// [`Inflight`] on the agent's ng socket.
pub(super) struct NgClient {
    pub(super) socket: Arc<UdpSocket>,
    pub(super) inflight: Inflight,
}

impl NgClient {
    pub(super) fn send(&mut self, id: u64, node: SocketAddr, request: &ng::Value) {
        match self.inflight.add(id, node, request, Instant::now()) {
            Ok(bytes) => {
                let _ = self.socket.try_send_to(&bytes, node);
            }
            Err(e) => warn!(error = %e, "ng request could not be encoded"),
        }
    }

    /// Retransmit overdue requests; the ids of those given up on.
    pub(super) fn tick(&mut self, now: Instant) -> Vec<u64> {
        let (again, timed_out) = self.inflight.tick(now);
        for (node, bytes) in again {
            let _ = self.socket.try_send_to(&bytes, node);
        }
        timed_out
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        self.inflight.next_due()
    }
}

/// A decoded ng reply: its cookie, where it came from, its dictionary.
pub(super) struct Reply {
    pub(super) cookie: Vec<u8>,
    pub(super) from: SocketAddr,
    pub(super) value: ng::Value,
}

/// Read replies off the ng socket and hand them to the agent's task, which
/// matches them against [`Inflight`].
pub(super) async fn reader(socket: Arc<UdpSocket>, ctx: Arc<super::Context>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            () = ctx.events.closed() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let Ok((n, from)) = received else {
            continue;
        };
        let Ok((cookie, value)) = ng::parse_reply(&buf[..n]) else {
            debug!("undecodable ng reply dropped");
            continue;
        };
        if !ctx.submit(super::Event::NgReply(Reply {
            cookie,
            from,
            value,
        })) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> SocketAddr {
        "127.0.0.1:2223".parse().unwrap()
    }

    fn ping() -> ng::Value {
        ng::Value::dict().with("command", "ping")
    }

    fn cookie_of(bytes: &[u8]) -> Vec<u8> {
        // A request is "<cookie> <bencoded dict>".
        let space = bytes.iter().position(|b| *b == b' ').unwrap();
        bytes[..space].to_vec()
    }

    /// Issue 16, item 2: an agent restarted within the media node's reply
    /// cache lifetime, or a second agent on the same node, must never send
    /// a cookie the node has already answered for another request.
    #[test]
    fn cookies_differ_across_agents_and_restarts() {
        let now = Instant::now();
        let mut first = Inflight::new(Duration::from_millis(500));
        let mut restarted = Inflight::new(Duration::from_millis(500));
        let a = cookie_of(&first.add(1, node(), &ping(), now).unwrap());
        let b = cookie_of(&restarted.add(1, node(), &ping(), now).unwrap());
        assert_ne!(
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b),
            "request 1 of two agents (or of one agent and its restart) share a cookie"
        );
        let a2 = cookie_of(&first.add(2, node(), &ping(), now).unwrap());
        assert_ne!(a, a2, "two requests of one agent share a cookie");
    }

    /// A reply is ours only when its whole cookie is one we sent, and it
    /// comes from the node we sent it to.
    #[test]
    fn a_reply_to_another_agents_request_is_not_ours() {
        let now = Instant::now();
        let mut ours = Inflight::new(Duration::from_millis(500));
        let mut other = Inflight::new(Duration::from_millis(500));
        let mine = cookie_of(&ours.add(1, node(), &ping(), now).unwrap());
        let theirs = cookie_of(&other.add(1, node(), &ping(), now).unwrap());
        assert_eq!(
            ours.take_reply(&theirs, node()),
            None,
            "another agent's reply to its request 1 was taken for ours"
        );
        let stranger: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        assert_eq!(ours.take_reply(&mine, stranger), None, "from elsewhere");
        assert_eq!(ours.take_reply(&mine, node()), Some(1));
        assert_eq!(ours.take_reply(&mine, node()), None, "answered once");
    }

    #[test]
    fn retransmitted_twice_then_timed_out() {
        let t0 = Instant::now();
        let step = Duration::from_millis(500);
        let mut f = Inflight::new(step);
        f.add(7, node(), &ping(), t0).unwrap();
        assert_eq!(f.tick(t0 + step).0.len(), 1);
        assert_eq!(f.tick(t0 + step * 2).0.len(), 1);
        let (again, gone) = f.tick(t0 + step * 3);
        assert!(again.is_empty());
        assert_eq!(gone, vec![7]);
        assert_eq!(f.next_due(), None);
    }
}
