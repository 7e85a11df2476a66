//! Binding transactions over UDP with RFC 8489's retransmission (§6.2.1):
//! the request is sent again after RTO, 2·RTO, 4·RTO, … until `rc`
//! requests have gone out; after the last the client waits `rm`·RTO more.
//! Several servers are asked at once from one socket, so that their
//! answers about the same local endpoint can be compared (symmetric NAT).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::net::UdpSocket;
use tracing::debug;

use super::codec::{self, StunError, TransactionId};

/// Retransmission parameters (RFC 8489 §6.2.1: RTO ≥ 500 ms, Rc 7, Rm 16
/// by default; bounded lower here so a round ends well within a minute).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retransmit {
    pub rto: Duration,
    pub rc: u32,
    pub rm: u32,
}

impl Default for Retransmit {
    /// Requests at 0, 0.5, 1.5, 3.5 and 7.5 s; given up at 11.5 s.
    fn default() -> Self {
        Self {
            rto: Duration::from_millis(500),
            rc: 5,
            rm: 8,
        }
    }
}

impl Retransmit {
    /// When the transaction started at 0 gives up.
    pub fn give_up_after(&self) -> Duration {
        let mut t = Duration::ZERO;
        let mut rto = self.rto;
        for _ in 1..self.rc {
            t += rto;
            rto *= 2;
        }
        t + self.rto * self.rm
    }
}

/// What one server said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Mapped(SocketAddr),
    Failed(String),
}

struct Transaction {
    server: SocketAddr,
    id: TransactionId,
    request: Vec<u8>,
    sent: u32,
    next: Instant,
    rto: Duration,
    deadline: Option<Instant>,
    answer: Option<Answer>,
}

/// Ask every server in `servers` for the mapped address of `socket`;
/// answers in the order of `servers`. Bounded by
/// [`Retransmit::give_up_after`].
pub async fn query_all(
    socket: &UdpSocket,
    servers: &[SocketAddr],
    rt: Retransmit,
) -> Vec<(SocketAddr, Answer)> {
    let start = Instant::now();
    let mut txs: Vec<Transaction> = servers
        .iter()
        .map(|&server| {
            let id: TransactionId = rand::random();
            Transaction {
                server,
                id,
                request: codec::binding_request(&id),
                sent: 0,
                next: start,
                rto: rt.rto,
                deadline: None,
                answer: None,
            }
        })
        .collect();
    let mut buf = vec![0u8; 1500];
    let hard_stop = start + rt.give_up_after() + Duration::from_millis(100);
    loop {
        let now = Instant::now();
        for t in txs.iter_mut().filter(|t| t.answer.is_none()) {
            if t.deadline.is_some_and(|d| now >= d) {
                t.answer = Some(Answer::Failed(format!("no answer to {} requests", t.sent)));
                continue;
            }
            if t.sent < rt.rc && now >= t.next {
                if let Err(e) = socket.send_to(&t.request, t.server).await {
                    // Unreachable and the like: the transaction fails now
                    // (RFC 8489 §6.2.1 allows it).
                    t.answer = Some(Answer::Failed(format!("sending: {e}")));
                    continue;
                }
                t.sent += 1;
                debug!(server = %t.server, attempt = t.sent, "STUN Binding request sent");
                if t.sent == rt.rc {
                    t.deadline = Some(now + rt.rto * rt.rm);
                } else {
                    t.next = now + t.rto;
                    t.rto *= 2;
                }
            }
        }
        let pending: Vec<&Transaction> = txs.iter().filter(|t| t.answer.is_none()).collect();
        if pending.is_empty() || now >= hard_stop {
            break;
        }
        let wake = pending
            .iter()
            .map(|t| t.deadline.unwrap_or(t.next))
            .min()
            .unwrap_or(now)
            .min(hard_stop);
        let Ok(received) = tokio::time::timeout_at(wake.into(), socket.recv_from(&mut buf)).await
        else {
            continue;
        };
        let (n, from) = match received {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors surface here on a connected-less socket too
                // (Linux reports them on the next call): keep waiting.
                debug!(error = %e, "STUN socket receive error");
                continue;
            }
        };
        let datagram = &buf[..n];
        let Some(id) = codec::transaction_id(datagram) else {
            continue;
        };
        let Some(t) = txs
            .iter_mut()
            .find(|t| t.id == id && t.answer.is_none() && t.server == from)
        else {
            continue;
        };
        t.answer = Some(match codec::binding_response(datagram, &id) {
            Ok(mapped) => Answer::Mapped(mapped),
            Err(StunError::ErrorResponse { code, reason }) => {
                Answer::Failed(format!("error response {code} {reason}"))
            }
            // Not a valid response to us: ignored, as if never received.
            Err(e) => {
                debug!(server = %from, error = %e, "STUN response ignored");
                t.answer = None;
                continue;
            }
        });
    }
    txs.into_iter()
        .map(|t| {
            let answer = t
                .answer
                .unwrap_or_else(|| Answer::Failed(format!("no answer to {} requests", t.sent)));
            (t.server, answer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_is_bounded() {
        assert_eq!(
            Retransmit::default().give_up_after(),
            Duration::from_millis(11_500)
        );
    }

    /// A server on loopback that ignores the first request and answers
    /// the second: one retransmission, one mapped address.
    #[tokio::test]
    async fn retransmits_and_decodes() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let addr = server.local_addr().unwrap();
        let srv = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let mut seen = 0;
            while let Ok((n, from)) = server.recv_from(&mut buf) {
                seen += 1;
                if seen < 2 {
                    continue;
                }
                let m = codec::decode(&buf[..n]).unwrap();
                let mut r = vec![0x01, 0x01, 0x00, 0x0c];
                r.extend_from_slice(&codec::MAGIC_COOKIE.to_be_bytes());
                r.extend_from_slice(&m.id);
                let std::net::IpAddr::V4(ip) = from.ip() else {
                    unreachable!()
                };
                let c = codec::MAGIC_COOKIE.to_be_bytes();
                let port = from.port() ^ 0x2112;
                r.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
                r.extend_from_slice(&port.to_be_bytes());
                for (b, k) in ip.octets().iter().zip(c) {
                    r.push(b ^ k);
                }
                server.send_to(&r, from).unwrap();
                break;
            }
            seen
        });
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let rt = Retransmit {
            rto: Duration::from_millis(50),
            rc: 4,
            rm: 4,
        };
        let answers = query_all(&socket, &[addr], rt).await;
        assert_eq!(answers, vec![(addr, Answer::Mapped(local))]);
        assert_eq!(srv.join().unwrap(), 2);
    }

    /// Nobody answers: the transaction fails after its bounded schedule.
    #[tokio::test]
    async fn silence_fails_within_the_bound() {
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sink.local_addr().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rt = Retransmit {
            rto: Duration::from_millis(20),
            rc: 3,
            rm: 2,
        };
        let t = Instant::now();
        let answers = query_all(&socket, &[addr], rt).await;
        assert!(matches!(answers[0].1, Answer::Failed(_)), "{answers:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(sink);
    }
}
