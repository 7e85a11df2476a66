//! One bound port's task: the userspace forwarding path.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::SystemTime,
};

use media_ebpf::SeqWindow;
use tokio::{net::UdpSocket, sync::mpsc};

use crate::session::{PacketEvent, Source};

/// Where packets arriving on this port go.
pub(super) struct UserRoute {
    pub out: Arc<UdpSocket>,
    pub dest: SocketAddr,
    pub source: Source,
    pub demux: Option<(Arc<UdpSocket>, SocketAddr)>,
    /// The stream carries RTP: its sequence numbers are accounted.
    pub rtp: bool,
}

#[derive(Default)]
pub(super) struct PortState {
    route: RwLock<Option<UserRoute>>,
    packets: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    /// Nanoseconds since the UNIX epoch of the last forwarded packet.
    last_ns: AtomicU64,
    /// 1 << 48 | SSRC << 16 | sequence of the last forwarded RTP packet.
    last_rtp: AtomicU64,
    /// The current route carries RTP (see [`UserRoute::rtp`]).
    rtp: AtomicBool,
    /// Sequence accounting of the RTP this path forwarded.
    seq: Mutex<SeqWindow>,
}

pub(super) struct UserCounters {
    pub packets: u64,
    pub bytes: u64,
    pub errors: u64,
    pub last_packet: Option<SystemTime>,
    pub last_rtp: Option<(u32, u16)>,
    pub seq: SeqWindow,
}

impl PortState {
    pub(super) fn set_route(&self, route: Option<UserRoute>) {
        self.rtp
            .store(route.as_ref().is_some_and(|r| r.rtp), Ordering::Relaxed);
        *self
            .route
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = route;
    }

    /// Count one packet that arrived here and was (or failed to be)
    /// forwarded.
    pub(super) fn record(&self, local: SocketAddr, data: &[u8], sent: bool) {
        let rtp = rtp_header(data);
        // It arrived from the party either way: not lost on its way here.
        if self.rtp.load(Ordering::Relaxed)
            && let Some((ssrc, seq)) = rtp
        {
            self.seq
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .update(ssrc, seq);
        }
        if !sent {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.packets.fetch_add(1, Ordering::Relaxed);
        // IP length, as the data plane counts it: payload + UDP + IP header.
        let ip = if local.is_ipv4() { 28 } else { 48 };
        self.bytes
            .fetch_add(data.len() as u64 + ip, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.last_ns.store(now, Ordering::Relaxed);
        if let Some((ssrc, seq)) = rtp {
            self.last_rtp.store(
                1 << 48 | u64::from(ssrc) << 16 | u64::from(seq),
                Ordering::Relaxed,
            );
        }
    }

    /// Start from what an earlier run of the daemon counted on this port
    /// (its record in the pinned `PORT_COUNTERS` map).
    pub(super) fn seed(
        &self,
        packets: u64,
        bytes: u64,
        errors: u64,
        last_ns: u64,
        last_rtp: u64,
        seq: SeqWindow,
    ) {
        self.packets.store(packets, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        self.errors.store(errors, Ordering::Relaxed);
        self.last_ns.store(last_ns, Ordering::Relaxed);
        self.last_rtp.store(last_rtp, Ordering::Relaxed);
        *self
            .seq
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = seq;
    }

    pub(super) fn counters(&self) -> UserCounters {
        let ns = self.last_ns.load(Ordering::Relaxed);
        let rtp = self.last_rtp.load(Ordering::Relaxed);
        UserCounters {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_packet: (ns != 0)
                .then(|| SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns)),
            last_rtp: (rtp >> 48 == 1).then_some(((rtp >> 16) as u32, rtp as u16)),
            seq: *self
                .seq
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }
}

/// The RTP header's (SSRC, sequence), if `p` is RTP (version 2 and not an
/// RTCP packet type, RFC 5761 §4).
pub(crate) fn rtp_header(p: &[u8]) -> Option<(u32, u16)> {
    if p.len() < 12 || p[0] & 0xc0 != 0x80 || is_rtcp(p) {
        return None;
    }
    Some((
        u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

/// RTCP packet types 192–223 (RFC 5761 §4).
fn is_rtcp(p: &[u8]) -> bool {
    p.len() >= 2 && (64..96).contains(&(p[1] & 0x7f))
}

/// Serve one port until the task is aborted (port released).
pub(super) async fn serve(
    local: SocketAddr,
    socket: Arc<UdpSocket>,
    state: Arc<PortState>,
    events: mpsc::Sender<PacketEvent>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let data = &buf[..n];
        let rtp = rtp_header(data);
        // Decide under the read lock; sending is non-blocking.
        let handed_over = {
            let guard = state
                .route
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(route) = guard.as_ref() else {
                state.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let accept = match route.source {
                Source::Any => Some(true),
                Source::Learning(Some(a)) if a == from => Some(true),
                Source::Learning(_) => Some(false),
                Source::Latched { addr, .. } if addr == from => Some(true),
                Source::Latched {
                    relatch_ssrc: Some(s),
                    ..
                } if rtp.is_some_and(|(ssrc, _)| ssrc == s) => Some(false),
                Source::Latched { .. } => None,
            };
            match accept {
                None => {
                    state.errors.fetch_add(1, Ordering::Relaxed);
                    false
                }
                Some(false) => true,
                Some(true) => {
                    let sent = match &route.demux {
                        Some((sock, dest)) if is_rtcp(data) => sock.try_send_to(data, *dest),
                        _ => route.out.try_send_to(data, route.dest),
                    };
                    state.record(local, data, sent.is_ok());
                    false
                }
            }
        };
        if handed_over {
            let ev = PacketEvent {
                local,
                from,
                rtp,
                data: data.to_vec(),
            };
            // A full queue means a flood: drop rather than queue without bound.
            if events.try_send(ev).is_err() {
                state.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 8];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xd5; 20]);
        p
    }

    #[test]
    fn userspace_path_accounts_rtp_sequence_numbers() {
        let local: SocketAddr = "198.18.0.1:30000".parse().unwrap();
        let s = PortState::default();
        s.rtp.store(true, Ordering::Relaxed);
        for seq in (0..50).filter(|q| ![7, 30].contains(q)) {
            s.record(local, &rtp(0xa1, seq), true);
        }
        // RTCP multiplexed on the port (SR, PT 200) and non-RTP: not RTP.
        let mut sr = rtp(0xa1, 60);
        sr[1] = 200;
        s.record(local, &sr, true);
        s.record(local, b"\x00\x00hello, world", true);
        // A packet that arrived but could not be sent was not lost on its
        // way here.
        s.record(local, &rtp(0xa1, 50), false);
        let c = s.counters();
        assert_eq!(
            (c.seq.expected(), c.seq.received(), c.seq.lost()),
            (51, 49, 2)
        );
        assert_eq!(c.packets, 50);
        assert_eq!(c.errors, 1);
    }

    #[test]
    fn non_rtp_routes_keep_no_window() {
        let local: SocketAddr = "198.18.0.1:30001".parse().unwrap();
        let s = PortState::default();
        s.set_route(None);
        for seq in [0, 5, 9] {
            s.record(local, &rtp(0xa1, seq), true);
        }
        assert_eq!(s.counters().seq, SeqWindow::default());
        assert_eq!(s.counters().packets, 3);
    }
}
