//! A blocking ng client over a UDP socket, for one-off requests: the
//! operator CLI and the tests. (The SIP agent has its own asynchronous
//! client in its tokio runtime; both build requests and read replies with
//! [`crate::encode_request`] and [`crate::parse_reply`].)
//!
//! A request is sent with a fresh cookie and retransmitted with the *same*
//! cookie when no reply came in time, as rtpengine's clients do: the server
//! answers a retransmission from its reply cache and applies the command
//! once.

use std::{
    hash::{BuildHasher as _, Hasher as _},
    io,
    net::{SocketAddr, UdpSocket},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use thiserror::Error;

use crate::{NgError, Value, encode_request, parse_reply};

/// Cookies unique across processes, restarts and clients: a random 64-bit
/// prefix per generator and a counter. A server caches replies by cookie,
/// so a cookie that repeats (a counter restarting at 1 after a restart, two
/// clients counting alike) would be answered with another request's reply.
#[derive(Debug)]
pub struct Cookies {
    prefix: String,
    next: AtomicU64,
}

impl Cookies {
    /// A generator with a random prefix and a short label (`cli`, `sip`,
    /// `test`) that tells the operator whose requests a cookie belongs to.
    pub fn new(label: &str) -> Self {
        // RandomState is seeded from the OS's randomness per instance; the
        // pid and time make a collision of two generators impossible in
        // practice even if the seed were not.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        Self {
            prefix: format!("{label}-{:016x}-", h.finish()),
            next: AtomicU64::new(1),
        }
    }

    /// The next cookie.
    pub fn next(&self) -> String {
        format!(
            "{}{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Why a request got no usable reply.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("the request cannot be encoded: {0}")]
    Encode(#[source] NgError),
    #[error("sending to {server}: {source}")]
    Send {
        server: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("receiving from {server}: {source}")]
    Receive {
        server: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// ICMP port unreachable: nothing listens there.
    #[error("nothing listens for ng on {server}")]
    Refused { server: SocketAddr },
    #[error("no reply from {server} within {waited:?}")]
    NoReply {
        server: SocketAddr,
        waited: Duration,
    },
}

/// A blocking ng client. Safe to share between threads of one test.
#[derive(Debug)]
pub struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    cookies: Cookies,
    attempts: u32,
}

impl Client {
    /// A client sending from `socket` (bound by the caller, e.g. inside a
    /// network namespace) to `server`; one attempt per request unless
    /// [`Client::attempts`] says otherwise.
    pub fn new(socket: UdpSocket, server: SocketAddr, label: &str) -> Self {
        Self {
            socket,
            server,
            cookies: Cookies::new(label),
            attempts: 1,
        }
    }

    /// Send each request up to `n` times (same cookie) before giving up.
    #[must_use]
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = n.max(1);
        self
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Send `dict` and return the reply dictionary as it is (its `result`
    /// may be `error`). Each attempt waits `wait` for the reply; replies
    /// to earlier requests (other cookies) and datagrams from other
    /// addresses are skipped.
    pub fn request(&self, dict: &Value, wait: Duration) -> Result<Value, ClientError> {
        let cookie = self.cookies.next();
        let bytes = encode_request(cookie.as_bytes(), dict).map_err(ClientError::Encode)?;
        let server = self.server;
        self.socket
            .set_read_timeout(Some(wait))
            .map_err(|source| ClientError::Receive { server, source })?;
        let mut buf = vec![0u8; 65_536];
        for _ in 0..self.attempts {
            self.socket
                .send_to(&bytes, server)
                .map_err(|source| ClientError::Send { server, source })?;
            loop {
                match self.socket.recv_from(&mut buf) {
                    Ok((n, from)) if from == server => match parse_reply(&buf[..n]) {
                        Ok((c, reply)) if c == cookie.as_bytes() => return Ok(reply),
                        // A late reply to an earlier request, or garbage.
                        _ => {}
                    },
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    // ECONNREFUSED from this or an earlier datagram.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        return Err(ClientError::Refused { server });
                    }
                    Err(source) => return Err(ClientError::Receive { server, source }),
                }
            }
        }
        Err(ClientError::NoReply {
            server,
            waited: wait * self.attempts,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn cookies_differ_between_generators_and_requests() {
        let a = Cookies::new("t");
        let b = Cookies::new("t");
        let all: BTreeSet<String> = (0..100).flat_map(|_| [a.next(), b.next()]).collect();
        assert_eq!(all.len(), 200);
        assert!(a.next().starts_with("t-"));
    }

    #[test]
    fn retransmits_with_the_same_cookie_and_skips_stale_replies() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let client = Client::new(UdpSocket::bind("127.0.0.1:0").unwrap(), addr, "t").attempts(3);
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            // Ignore the first attempt; answer the second twice, first
            // under another cookie (a stale reply), then under its own.
            let (n1, from) = server.recv_from(&mut buf).unwrap();
            let first = buf[..n1].to_vec();
            let (n2, _) = server.recv_from(&mut buf).unwrap();
            assert_eq!(first, buf[..n2], "a retransmission is byte-identical");
            let cookie = &first[..first.iter().position(|&b| b == b' ').unwrap()];
            server.send_to(b"other d6:result4:ponge", from).unwrap();
            let mut reply = cookie.to_vec();
            reply.extend(b" d6:result4:ponge");
            server.send_to(&reply, from).unwrap();
        });
        let r = client
            .request(
                &Value::dict().with("command", "ping"),
                Duration::from_millis(300),
            )
            .unwrap();
        assert_eq!(r.get("result").and_then(Value::as_str), Some("pong"));
        t.join().unwrap();
    }

    #[test]
    fn no_reply_is_an_error_naming_the_server() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = Client::new(
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            silent.local_addr().unwrap(),
            "t",
        )
        .attempts(2);
        let e = client
            .request(
                &Value::dict().with("command", "ping"),
                Duration::from_millis(50),
            )
            .unwrap_err();
        assert!(matches!(e, ClientError::NoReply { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&silent.local_addr().unwrap().to_string())
        );
    }
}
