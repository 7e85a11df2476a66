//! A bound port's state on the userspace path: its route, the decision
//! for each datagram, and its counters. The I/O is `io_threads.rs`.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex, RwLock, RwLockReadGuard,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::SystemTime,
};

use media_ebpf::{RtcpSeen, SeqWindow, StreamQuality, quality::RTCP_WORDS};

use crate::session::Source;

/// Where packets arriving on this port go.
pub(super) struct UserRoute {
    pub out: Arc<UdpSocket>,
    pub dest: SocketAddr,
    pub source: Source,
    pub demux: Option<(Arc<UdpSocket>, SocketAddr)>,
    /// The stream carries RTP: its sequence numbers are accounted.
    pub rtp: bool,
    /// Its RTP clock rate (Hz; 0 unknown), for jitter.
    pub clock_rate: u32,
}

#[derive(Default)]
pub(super) struct PortState {
    route: RwLock<Option<UserRoute>>,
    /// A shared port (`port-sharing`): many streams, told apart by their
    /// sources; every packet that reaches its socket goes to the engine,
    /// which finds its stream (XDP forwards the known sources' own).
    shared: AtomicBool,
    packets: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    /// Datagrams dropped for waiting longer than the staleness bound.
    stale: AtomicU64,
    /// Nanoseconds since the UNIX epoch of the last forwarded packet.
    last_ns: AtomicU64,
    /// 1 << 48 | SSRC << 16 | sequence of the last forwarded RTP packet.
    last_rtp: AtomicU64,
    /// The current route carries RTP (see [`UserRoute::rtp`]).
    rtp: AtomicBool,
    /// The current route's clock rate (see [`UserRoute::clock_rate`]).
    clock_rate: AtomicU32,
    /// Sequence and quality accounting of the RTP that arrived on this
    /// path (the same record and code as the data plane's per flow).
    quality: Mutex<StreamQuality>,
    /// The RTCP reports that passed (times: realtime ns): on an RTCP
    /// route every packet, on an RTP route the RTCP multiplexed on it
    /// (rtcp-mux).
    rtcp: Mutex<RtcpSeen>,
}

pub(super) struct UserCounters {
    pub packets: u64,
    pub bytes: u64,
    pub errors: u64,
    pub stale: u64,
    pub last_packet: Option<SystemTime>,
    pub last_rtp: Option<(u32, u16)>,
    pub seq: SeqWindow,
    pub quality: StreamQuality,
    /// Times in realtime ns.
    pub rtcp: RtcpSeen,
}

/// What becomes of one datagram.
pub(super) enum Decision {
    /// Send it out of `socket` to `dest`.
    Forward {
        socket: Arc<UdpSocket>,
        dest: SocketAddr,
    },
    /// Not from the stream's source: dropped and counted.
    Refuse,
    /// The engine decides (no route, learning, a re-latch candidate).
    HandOver,
}

/// The port's route, read-locked for one batch of decisions.
pub(super) struct Decider<'a>(RwLockReadGuard<'a, Option<UserRoute>>, bool);

impl Decider<'_> {
    pub(super) fn decide(&self, from: SocketAddr, data: &[u8]) -> Decision {
        if self.1 {
            return Decision::HandOver;
        }
        let Some(route) = self.0.as_ref() else {
            return Decision::Refuse;
        };
        match accept(route.source, from, rtp_header(data)) {
            None => Decision::Refuse,
            Some(false) => Decision::HandOver,
            Some(true) => match &route.demux {
                Some((socket, dest)) if is_rtcp(data) => Decision::Forward {
                    socket: socket.clone(),
                    dest: *dest,
                },
                _ => Decision::Forward {
                    socket: route.out.clone(),
                    dest: route.dest,
                },
            },
        }
    }
}

impl PortState {
    /// The route, for deciding a batch of datagrams.
    pub(super) fn decider(&self) -> Decider<'_> {
        Decider(
            self.route
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            self.shared.load(Ordering::Relaxed),
        )
    }

    /// Hold the route's write lock: a worker deciding for this port waits
    /// (a stand-in for a thread the scheduler does not run).
    #[cfg(test)]
    pub(super) fn hold(&self) -> std::sync::RwLockWriteGuard<'_, Option<UserRoute>> {
        self.route
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Mark the port shared (see [`PortState::shared`]).
    pub(super) fn set_shared(&self) {
        self.shared.store(true, Ordering::Relaxed);
    }

    /// A datagram that could not be forwarded (refused, undeliverable).
    pub(super) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A datagram dropped as stale: it reached the relay (its sequence
    /// number is not a loss on the way here) but is not forwarded.
    pub(super) fn stale(&self, data: &[u8], received: Option<SystemTime>) {
        self.stale.fetch_add(1, Ordering::Relaxed);
        self.account(data, received);
    }

    /// Account a packet's arrival (at `received`, the kernel's timestamp,
    /// else now): RTP in the port's quality record, RTCP reports (on an
    /// RTCP port, or multiplexed on an RTP port) in its RTCP record, as
    /// the data plane keeps them.
    fn account(&self, data: &[u8], received: Option<SystemTime>) {
        let at = || {
            received
                .unwrap_or_else(SystemTime::now)
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        let rtp = if self.rtp.load(Ordering::Relaxed) {
            rtp_header(data)
        } else {
            None
        };
        let Some((ssrc, seq)) = rtp else {
            // Not RTP: an RTCP port's packet, or one on an RTP port that
            // is not RTP (RTCP multiplexed on it, RFC 5761; anything else
            // is not an SR or RR and leaves the record alone).
            let mut w = [0u32; RTCP_WORDS];
            let n = (data.len() / 4).min(RTCP_WORDS);
            for (i, c) in data.chunks_exact(4).take(n).enumerate() {
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
            self.rtcp
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .update(&w, n, at());
            return;
        };
        let ts = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        let rate = self.clock_rate.load(Ordering::Relaxed);
        self.quality
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .update(ssrc, seq, ts, at(), rate);
    }

    pub(super) fn set_route(&self, route: Option<UserRoute>) {
        self.rtp
            .store(route.as_ref().is_some_and(|r| r.rtp), Ordering::Relaxed);
        self.clock_rate.store(
            route.as_ref().map_or(0, |r| r.clock_rate),
            Ordering::Relaxed,
        );
        *self
            .route
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = route;
    }

    /// Count one packet that arrived here and was (or failed to be)
    /// forwarded; `received` is when it arrived (the kernel's timestamp).
    pub(super) fn record(
        &self,
        local: SocketAddr,
        data: &[u8],
        sent: bool,
        received: Option<SystemTime>,
    ) {
        let rtp = rtp_header(data);
        // It arrived from the party either way: not lost on its way here.
        self.account(data, received);
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
        // The quality figures beyond the sequence window start again.
        *self
            .quality
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = StreamQuality {
            seq,
            ..StreamQuality::default()
        };
    }

    pub(super) fn counters(&self) -> UserCounters {
        let quality = *self
            .quality
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ns = self.last_ns.load(Ordering::Relaxed);
        let rtp = self.last_rtp.load(Ordering::Relaxed);
        UserCounters {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            last_packet: (ns != 0)
                .then(|| SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns)),
            last_rtp: (rtp >> 48 == 1).then_some(((rtp >> 16) as u32, rtp as u16)),
            seq: quality.seq,
            quality,
            rtcp: *self
                .rtcp
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }
}

/// The RTP header's (SSRC, sequence), if `p` is RTP (version 2 and not an
/// RTCP packet type, RFC 5761 §4).
pub fn rtp_header(p: &[u8]) -> Option<(u32, u16)> {
    if p.len() < 12 || p[0] & 0xc0 != 0x80 || is_rtcp(p) {
        return None;
    }
    Some((
        u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

/// RTCP packet types 192–223 (RFC 5761 §4).
pub fn is_rtcp(p: &[u8]) -> bool {
    p.len() >= 2 && (64..96).contains(&(p[1] & 0x7f))
}

/// What the userspace path does with a packet from `from` (its RTP
/// header `rtp`) on a port whose route accepts `source`: forward it
/// (`Some(true)`), hand it to the session engine for a latching decision
/// (`Some(false)`), or drop it (`None`).
pub fn accept(source: Source, from: SocketAddr, rtp: Option<(u32, u16)>) -> Option<bool> {
    match source {
        Source::Any => Some(true),
        Source::Learning(Some(a)) if a == from => Some(true),
        Source::Learning(_) => Some(false),
        Source::Latched { addr, .. } if addr == from => Some(true),
        Source::Latched {
            relatch_ssrc: Some(s),
            ..
        } if rtp.is_some_and(|(ssrc, _)| ssrc == s) => Some(false),
        Source::Latched { .. } => None,
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
            s.record(local, &rtp(0xa1, seq), true, None);
        }
        // RTCP multiplexed on the port (SR, PT 200) and non-RTP: not RTP.
        let mut sr = rtp(0xa1, 60);
        sr[1] = 200;
        s.record(local, &sr, true, None);
        s.record(local, b"\x00\x00hello, world", true, None);
        // A packet that arrived but could not be sent was not lost on its
        // way here.
        s.record(local, &rtp(0xa1, 50), false, None);
        let c = s.counters();
        assert_eq!(
            (c.seq.expected(), c.seq.received(), c.seq.lost()),
            (51, 49, 2)
        );
        assert_eq!(c.packets, 50);
        assert_eq!(c.errors, 1);
        // The SR multiplexed on the RTP port is read as RTCP (rtcp-mux),
        // the other packet is not.
        assert_eq!((c.rtcp.sr_count, c.rtcp.block_count), (1, 0));
    }

    /// RTCP multiplexed on an RTP port (rtcp-mux): an RR's report block
    /// lands in the port's RTCP record as on an RTCP port, and leaves the
    /// RTP stream's record alone.
    #[test]
    fn rtcp_mux_on_an_rtp_port_is_read() {
        let local: SocketAddr = "198.18.0.1:30002".parse().unwrap();
        let s = PortState::default();
        s.rtp.store(true, Ordering::Relaxed);
        for seq in 0..3 {
            s.record(local, &rtp(0xa1, seq), true, None);
        }
        let before = s.counters().quality;
        let mut rr = vec![0x81, 201, 0, 7];
        for w in [0xb2u32, 0xa1, (10 << 24) | 3, 2, 77, 0x1234_5678, 0x8000] {
            rr.extend_from_slice(&w.to_be_bytes());
        }
        s.record(local, &rr, true, None);
        let c = s.counters();
        assert_eq!(
            (c.rtcp.block_count, c.rtcp.reporter, c.rtcp.source),
            (1, 0xb2, 0xa1)
        );
        assert_eq!((c.rtcp.cumulative_lost(), c.rtcp.jitter), (3, 77));
        assert_eq!((c.rtcp.lsr, c.rtcp.dlsr), (0x1234_5678, 0x8000));
        assert_eq!(c.quality, before);
        assert_eq!(c.packets, 4);
    }

    #[test]
    fn non_rtp_routes_keep_no_window() {
        let local: SocketAddr = "198.18.0.1:30001".parse().unwrap();
        let s = PortState::default();
        s.set_route(None);
        for seq in [0, 5, 9] {
            s.record(local, &rtp(0xa1, seq), true, None);
        }
        assert_eq!(s.counters().seq, SeqWindow::default());
        assert_eq!(s.counters().packets, 3);
    }
}
