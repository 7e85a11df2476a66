//! The userspace path's I/O: a few threads, each polling its share of the
//! media sockets, reading them in batches and forwarding in batches.
//!
//! Why not one task per socket: at a few thousand packets a second per
//! core a task per socket means a wake-up, a `recvfrom` and a `sendto`
//! per packet, and the scheduler is what fills the queue (the benchmark
//! measured p99 1.2 s near the limit). Here each worker thread owns an
//! edge-triggered epoll set (mio) of sockets and keeps the sockets that
//! are readable in a ready queue, served round robin: each turn takes at
//! most [`BATCH`] datagrams from one socket with one `recvmmsg` and sends
//! those it forwards with one `sendmmsg` per outgoing socket. A socket
//! that still has data goes to the back of the queue, so under overload
//! every call gets its turn in order and none starves; a socket's
//! datagrams are taken in order and sent in order by one thread, so the
//! relay reorders nothing.
//!
//! Bounded delay: every datagram carries the kernel's receive time
//! (`SO_TIMESTAMPNS`); one that waited longer than the configured bound
//! ([`IoConfig::max_delay`]) is dropped and counted (stale), never sent
//! late. Receive buffers are sized for a burst, not to hold seconds of
//! media ([`RECV_BUFFER`]): past the bound a packet is worth nothing.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use mio::{Events, Interest, Poll, Registry, Token, Waker, unix::SourceFd};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::forwarder::{Decision, PortState, rtp_header};
use crate::session::PacketEvent;

/// Datagrams read from one socket per turn (and sent per `sendmmsg`).
pub const BATCH: usize = 32;
/// The largest datagram taken whole: a UDP payload over IPv4 can be no
/// larger. A longer one (IPv6 jumbograms) is counted as an error.
const SLOT: usize = 65_507;
/// Requested receive buffer per socket: a burst of some 100 small packets
/// (the kernel doubles the figure for its bookkeeping). More would only
/// hold packets that are stale by the time they are read.
pub const RECV_BUFFER: usize = 64 << 10;
/// The default staleness bound.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(5);
/// The waker's token; sockets count up from 1.
const WAKE: Token = Token(0);

/// The default nice value of the I/O threads: media waits for nothing a
/// batch job on the same host does.
pub const DEFAULT_NICE: i32 = -10;

/// How the userspace path runs.
#[derive(Clone, Copy, Debug)]
pub struct IoConfig {
    /// Worker threads (at least 1).
    pub threads: usize,
    /// A datagram older than this when read is dropped, not forwarded.
    pub max_delay: Duration,
    /// Nice value of the worker threads (-20…19; below 0 needs
    /// CAP_SYS_NICE, else they keep the process's).
    pub nice: i32,
}

impl Default for IoConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            max_delay: DEFAULT_MAX_DELAY,
            nice: DEFAULT_NICE,
        }
    }
}

/// A bound media socket and what its datagrams need.
pub(super) struct Served {
    pub local: SocketAddr,
    pub socket: Arc<UdpSocket>,
    pub state: Arc<PortState>,
}

/// What a worker shares with the pool.
struct Shared {
    ports: Mutex<HashMap<usize, Arc<Served>>>,
    stop: AtomicBool,
}

/// One worker as the pool sees it (shared by every socket it serves).
struct WorkerRef {
    shared: Arc<Shared>,
    registry: Registry,
    waker: Waker,
    /// RTP sockets it serves, by local address (what the pool balances).
    rtp_by_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl WorkerRef {
    fn rtp_on(&self, ip: IpAddr) -> usize {
        self.rtp_by_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }

    fn count_rtp(&self, ip: IpAddr, added: bool) {
        let mut by_ip = self
            .rtp_by_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = by_ip.entry(ip).or_insert(0);
        if added {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_ip.remove(&ip);
            }
        }
    }
}

/// A socket served by a worker; dropping it stops serving it (the socket
/// itself closes when its last user lets go).
pub(super) struct Registration {
    worker: Arc<WorkerRef>,
    token: usize,
    /// The local address, when it is an RTP socket counted for balance.
    rtp_ip: Option<IpAddr>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(ip) = self.rtp_ip {
            self.worker.count_rtp(ip, false);
        }
        let served = self
            .worker
            .shared
            .ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.token);
        if let Some(s) = served {
            let fd = s.socket.as_raw_fd();
            // Closing the descriptor would remove it from the epoll set
            // too, but other holders (routes) may keep it open.
            let _ = self.worker.registry.deregister(&mut SourceFd(&fd));
        }
    }
}

/// Totals of the userspace path's own decisions.
#[derive(Default)]
pub(super) struct IoTotals {
    /// Datagrams dropped because they waited longer than the bound.
    pub stale: AtomicU64,
    /// `recvmmsg` calls and the datagrams they returned (batching).
    pub reads: AtomicU64,
    pub datagrams: AtomicU64,
    /// Datagrams refused for their source: not the route's (latched or
    /// strict) source, or a port with no route. Counted with the packets
    /// the engine refuses in `media_relay_rejected_sources_total{path="userspace"}`.
    pub refused: AtomicU64,
}

pub(super) struct IoPool {
    workers: Vec<(Arc<WorkerRef>, Option<JoinHandle<()>>)>,
    tokens: AtomicUsize,
    pub totals: Arc<IoTotals>,
}

impl IoPool {
    /// The worker that serves `local`. RTP ports (even: pairs start on an
    /// even port) go to the worker with the fewest RTP sockets on the same
    /// local address, ties broken at random; an RTP port's pair (odd, RTCP,
    /// little traffic) goes by its number.
    ///
    /// Why per address and not simply in turn: the media of one direction
    /// arrives on the ports of one side, and a call opens its sides in
    /// order, so dealing RTP ports in turn put every caller-side port on
    /// the first of two threads — a one-way load (the capacity bench, a
    /// direction whose other side is silent) was served by one core while
    /// the other idled (seen with `perf`: 99.7 % of the path's samples on
    /// `media-io-0`). Counting per local address balances each side (each
    /// interface) on its own; the random tie-break keeps a fixed opening
    /// order from lining the sides up where both share one address.
    fn worker_for(&mut self, local: SocketAddr) -> usize {
        let n = self.workers.len();
        if !local.port().is_multiple_of(2) {
            return usize::from(local.port() / 2) % n;
        }
        let loads: Vec<usize> = self
            .workers
            .iter()
            .map(|(w, _)| w.rtp_on(local.ip()))
            .collect();
        let least = loads.iter().copied().min().unwrap_or(0);
        let candidates: Vec<usize> = (0..n).filter(|&i| loads[i] == least).collect();
        candidates[rand::random_range(0..candidates.len())]
    }

    pub fn start(cfg: IoConfig, events: &mpsc::Sender<PacketEvent>) -> io::Result<Self> {
        let totals = Arc::new(IoTotals::default());
        let mut workers = Vec::new();
        for i in 0..cfg.threads.max(1) {
            let poll = Poll::new()?;
            let shared = Arc::new(Shared {
                ports: Mutex::new(HashMap::new()),
                stop: AtomicBool::new(false),
            });
            let worker = Arc::new(WorkerRef {
                shared: shared.clone(),
                registry: poll.registry().try_clone()?,
                waker: Waker::new(poll.registry(), WAKE)?,
                rtp_by_ip: Mutex::new(HashMap::new()),
            });
            let run = Worker {
                poll,
                shared,
                events: events.clone(),
                max_delay: cfg.max_delay,
                totals: totals.clone(),
            };
            let nice = cfg.nice;
            let thread = std::thread::Builder::new()
                .name(format!("media-io-{i}"))
                .spawn(move || {
                    set_nice(nice, i == 0);
                    run.run();
                })?;
            workers.push((worker, Some(thread)));
        }
        Ok(Self {
            workers,
            tokens: AtomicUsize::new(1),
            totals,
        })
    }

    /// Serve `served` from one of the workers (in turn).
    pub fn add(&mut self, served: Served) -> io::Result<Registration> {
        let index = self.worker_for(served.local);
        let rtp_ip = served
            .local
            .port()
            .is_multiple_of(2)
            .then_some(served.local.ip());
        let (worker, _) = &self.workers[index];
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let fd = served.socket.as_raw_fd();
        // Known to the worker before its first event can name it.
        worker
            .shared
            .ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(token, Arc::new(served));
        if let Some(ip) = rtp_ip {
            worker.count_rtp(ip, true);
        }
        let registration = Registration {
            worker: worker.clone(),
            token,
            rtp_ip,
        };
        worker
            .registry
            .register(&mut SourceFd(&fd), Token(token), Interest::READABLE)?;
        Ok(registration)
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        for (w, _) in &self.workers {
            w.shared.stop.store(true, Ordering::Relaxed);
            let _ = w.waker.wake();
        }
        for (_, thread) in &mut self.workers {
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

struct Worker {
    poll: Poll,
    shared: Arc<Shared>,
    events: mpsc::Sender<PacketEvent>,
    max_delay: Duration,
    totals: Arc<IoTotals>,
}

/// Whether a socket may have more to read.
enum Drained {
    Yes,
    Maybe,
}

impl Worker {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut ready: VecDeque<usize> = VecDeque::new();
        let mut queued: HashSet<usize> = HashSet::new();
        let mut batch = Batch::new();
        loop {
            // Block only when no socket is known to have data.
            let timeout = (!ready.is_empty()).then_some(Duration::ZERO);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!(error = %e, "polling media sockets failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                return;
            }
            for ev in &events {
                let t = ev.token().0;
                if t != WAKE.0 && queued.insert(t) {
                    ready.push_back(t);
                }
            }
            // One turn for each socket that is ready now.
            for _ in 0..ready.len() {
                let Some(t) = ready.pop_front() else { break };
                let served = self
                    .shared
                    .ports
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&t)
                    .cloned();
                let more =
                    served.is_some_and(|s| matches!(self.serve(&s, &mut batch), Drained::Maybe));
                if more {
                    ready.push_back(t);
                } else {
                    queued.remove(&t);
                }
            }
        }
    }

    /// Read up to [`BATCH`] datagrams from one socket and dispose of each.
    fn serve(&self, s: &Served, batch: &mut Batch) -> Drained {
        let n = match batch.receive(&s.socket) {
            Ok(0) => return Drained::Yes,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::Yes,
            Err(e) => {
                // An ICMP error queued on the socket and the like: it is
                // consumed by the failed call; try again next turn.
                debug!(local = %s.local, error = %e, "receiving failed");
                return Drained::Maybe;
            }
        };
        self.totals.reads.fetch_add(1, Ordering::Relaxed);
        self.totals.datagrams.fetch_add(n as u64, Ordering::Relaxed);
        let now = SystemTime::now();
        let mut stale = 0u64;
        batch.out.clear();
        {
            let decide = s.state.decider();
            for i in 0..n {
                let m = batch.meta[i];
                if m.truncated {
                    s.state.error();
                    continue;
                }
                // A clock step back makes the age negative: fresh.
                if m.received
                    .is_some_and(|t| now.duration_since(t).is_ok_and(|age| age > self.max_delay))
                {
                    s.state.stale(&batch.slots[i][..m.len], m.received);
                    stale += 1;
                    continue;
                }
                let data = &batch.slots[i][..m.len];
                match decide.decide(m.from, data) {
                    Decision::Forward { socket, dest } => batch.out.push((i, socket, dest)),
                    Decision::Refuse => {
                        s.state.error();
                        self.totals.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Decision::HandOver => {
                        let ev = PacketEvent {
                            local: s.local,
                            from: m.from,
                            rtp: rtp_header(data),
                            data: data.to_vec(),
                        };
                        // A full queue means a flood: drop rather than queue
                        // without bound.
                        if self.events.try_send(ev).is_err() {
                            s.state.error();
                        }
                    }
                }
            }
        }
        if stale > 0 {
            self.totals.stale.fetch_add(stale, Ordering::Relaxed);
        }
        batch.send(s);
        // Hold no socket past the batch: a closed port's socket must close.
        batch.out.clear();
        if n == BATCH {
            Drained::Maybe
        } else {
            Drained::Yes
        }
    }
}

/// Give the calling thread `nice` (Linux keeps a nice value per thread).
fn set_nice(nice: i32, report: bool) {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority(2) takes plain integers and touches no memory.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if r != 0 && report {
        let e = io::Error::last_os_error();
        warn!(
            nice,
            error = %e,
            "the userspace path's threads keep the process's priority (a negative userspace-nice needs CAP_SYS_NICE)"
        );
    }
}

/// What `recvmmsg` said about one datagram.
#[derive(Clone, Copy)]
struct Meta {
    len: usize,
    from: SocketAddr,
    truncated: bool,
    received: Option<SystemTime>,
}

/// Room for one `SCM_TIMESTAMPNS` control message (a `timespec`), in
/// `u64`s so it is aligned for a `cmsghdr`.
const CMSG_WORDS: usize = 8;

/// A worker's buffers, reused for every batch.
struct Batch {
    slots: Vec<Box<[u8]>>,
    meta: Vec<Meta>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    control: Vec<[u64; CMSG_WORDS]>,
    headers: Vec<libc::mmsghdr>,
    /// Datagrams to forward: slot, out socket, destination.
    out: Vec<(usize, Arc<UdpSocket>, SocketAddr)>,
}

impl Batch {
    fn new() -> Self {
        let mut slots: Vec<Box<[u8]>> = (0..BATCH)
            .map(|_| vec![0u8; SLOT].into_boxed_slice())
            .collect();
        let iovs = slots
            .iter_mut()
            .map(|s| libc::iovec {
                iov_base: s.as_mut_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        Self {
            slots,
            meta: Vec::with_capacity(BATCH),
            // SAFETY: all-zero is a valid sockaddr_storage and mmsghdr.
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovs,
            control: vec![[0; CMSG_WORDS]; BATCH],
            // SAFETY: as above (null pointers, zero lengths).
            headers: vec![unsafe { std::mem::zeroed() }; BATCH],
            out: Vec::with_capacity(BATCH),
        }
    }

    /// One `recvmmsg(2)`: up to [`BATCH`] datagrams with their sources and
    /// kernel receive times.
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.meta.clear();
        for (i, h) in self.headers.iter_mut().enumerate() {
            // Reset each time: the kernel shortens the lengths it fills.
            h.msg_hdr.msg_name = std::ptr::from_mut(&mut self.names[i]).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = std::ptr::from_mut(&mut self.iovs[i]);
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.control[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = size_of::<[u64; CMSG_WORDS]>();
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: each header points at its own live name, iovec (over a
        // live slot of the length it says) and control buffer, which
        // outlive the call and are not otherwise borrowed during it.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for i in 0..n as usize {
            let h = &self.headers[i];
            let from =
                socket_addr(&self.names[i]).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            self.meta.push(Meta {
                len: h.msg_len as usize,
                from,
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                received: timestamp(&h.msg_hdr),
            });
        }
        Ok(self.meta.len())
    }

    /// Send what [`Worker::serve`] decided to forward, in order: one
    /// `sendmmsg` per run of datagrams leaving by the same socket.
    fn send(&mut self, s: &Served) {
        let mut start = 0;
        while start < self.out.len() {
            let sock = self.out[start].1.clone();
            let end = self.out[start..]
                .iter()
                .position(|(_, o, _)| !Arc::ptr_eq(o, &sock))
                .map_or(self.out.len(), |p| start + p);
            let mut from = start;
            // Each pass sends what it can; a datagram the kernel refuses
            // is counted and skipped.
            while from < end {
                let run = &self.out[from..end];
                let sent = match send_many(&sock, run, &self.slots, &self.meta) {
                    Ok(n) => n,
                    Err(e) => {
                        debug!(local = %s.local, error = %e, "sending failed");
                        0
                    }
                };
                for (i, _, _) in &run[..sent] {
                    let m = &self.meta[*i];
                    s.state
                        .record(s.local, &self.slots[*i][..m.len], true, m.received);
                }
                if sent < run.len() {
                    let (i, _, _) = &run[sent];
                    let m = &self.meta[*i];
                    s.state
                        .record(s.local, &self.slots[*i][..m.len], false, m.received);
                }
                from += sent + 1;
            }
            start = end;
        }
    }
}

/// The address the kernel wrote into a `sockaddr_storage`.
fn socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in,
            // which is smaller than the storage.
            let a: libc::sockaddr_in = unsafe { std::ptr::read(std::ptr::from_ref(ss).cast()) };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { std::ptr::read(std::ptr::from_ref(ss).cast()) };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The `SCM_TIMESTAMPNS` of a received message, if it carries one.
fn timestamp(h: &libc::msghdr) -> Option<SystemTime> {
    // SAFETY: the header's control buffer and length are what the kernel
    // filled; the CMSG_* macros stay within `msg_controllen`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(
                    SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                );
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// One `sendmmsg(2)` of `run` (slot, socket, destination) on `socket`:
/// how many were sent (the first of the rest failed).
fn send_many(
    socket: &UdpSocket,
    run: &[(usize, Arc<UdpSocket>, SocketAddr)],
    slots: &[Box<[u8]>],
    meta: &[Meta],
) -> io::Result<usize> {
    let dests: Vec<socket2::SockAddr> = run.iter().map(|(_, _, d)| (*d).into()).collect();
    let mut iovs: Vec<libc::iovec> = run
        .iter()
        .map(|(i, _, _)| libc::iovec {
            iov_base: slots[*i].as_ptr().cast_mut().cast(),
            iov_len: meta[*i].len,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(&dests)
        .map(|(iov, d)| {
            // SAFETY: an all-zero msghdr is valid (no name, no control).
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = d.as_ptr().cast_mut().cast();
            h.msg_namelen = d.len();
            h.msg_iov = std::ptr::from_mut(iov);
            h.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            }
        })
        .collect();
    // SAFETY: every header points at a live iovec (over a live slot of
    // `meta[i].len <= SLOT` bytes) and a live address, all of which outlive
    // the call; the kernel only reads them (and writes `msg_len`).
    let n = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A media socket bound to `local`: non-blocking, IPv6-only for IPv6,
/// receive timestamps on, receive buffer [`RECV_BUFFER`].
pub(super) fn bind(local: SocketAddr) -> io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(local),
        socket2::Type::DGRAM.nonblocking(),
        Some(socket2::Protocol::UDP),
    )?;
    if local.is_ipv6() {
        s.set_only_v6(true)?;
    }
    let _ = s.set_recv_buffer_size(RECV_BUFFER);
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        .map_err(io::Error::from)?;
    s.bind(&local.into())?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{media::forwarder::UserRoute, session::Source};

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 8];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&0xa1u32.to_be_bytes());
        p.extend_from_slice(&[0xd5; 160]);
        p
    }

    fn local() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    /// What `add` does for the balance, without sockets.
    fn place(pool: &mut IoPool, local: SocketAddr) -> usize {
        let w = pool.worker_for(local);
        if local.port().is_multiple_of(2) {
            pool.workers[w].0.count_rtp(local.ip(), true);
        }
        w
    }

    /// Calls open their sides in order (caller's RTP and RTCP, then the
    /// callee's): each side's RTP ports spread evenly over the workers
    /// (a one-way load uses every core), whatever the port numbers; each
    /// RTCP port has a worker too; removing sockets frees their share.
    #[test]
    fn each_sides_rtp_ports_are_dealt_evenly_over_the_workers() {
        let (tx, _rx) = mpsc::channel(16);
        let (a, b) = (
            IpAddr::from(Ipv4Addr::new(198, 18, 1, 1)),
            IpAddr::from(Ipv4Addr::new(198, 18, 2, 1)),
        );
        for threads in [2, 3, 4] {
            let mut pool = IoPool::start(
                IoConfig {
                    threads,
                    max_delay: Duration::from_secs(1),
                    nice: 0,
                },
                &tx,
            )
            .unwrap();
            let mut rtp = [vec![0usize; threads], vec![0usize; threads]];
            // Random-looking even ports, as the allocator hands them out.
            for k in 0..120u32 {
                for (side, ip) in [a, b].into_iter().enumerate() {
                    let port = 30_000 + ((k * 7_919 + side as u32) % 5_000) as u16 * 2;
                    for p in [port, port + 1] {
                        let w = place(&mut pool, SocketAddr::new(ip, p));
                        assert!(w < threads);
                        if p % 2 == 0 {
                            rtp[side][w] += 1;
                        }
                    }
                }
            }
            for side in &rtp {
                assert_eq!(side, &vec![120 / threads; threads], "{threads} workers");
            }
            // Sockets closed on worker 0 make it the next choice.
            pool.workers[0].0.count_rtp(a, false);
            pool.workers[0].0.count_rtp(a, false);
            assert_eq!(pool.worker_for(SocketAddr::new(a, 40_000)), 0);
        }
    }

    /// Both sides on one address (one interface): the caller's RTP ports
    /// do not line up on one worker (a fixed tie-break would put every
    /// first-opened port on the first thread).
    #[test]
    fn one_address_both_sides_still_spread_each_side() {
        let (tx, _rx) = mpsc::channel(16);
        let mut pool = IoPool::start(
            IoConfig {
                threads: 2,
                max_delay: Duration::from_secs(1),
                nice: 0,
            },
            &tx,
        )
        .unwrap();
        let ip = IpAddr::from(Ipv4Addr::new(198, 18, 1, 1));
        let mut caller = [0usize; 2];
        for k in 0..120u16 {
            caller[place(&mut pool, SocketAddr::new(ip, 30_000 + 4 * k))] += 1;
            place(&mut pool, SocketAddr::new(ip, 30_002 + 4 * k));
        }
        // Binomial(120, ½): below 30 has a probability of about 1e-8.
        assert!(caller.iter().all(|&n| n >= 30), "{caller:?}");
    }

    /// Loopback: 300 packets in bursts queued on a port (more than a
    /// batch, so several turns) are forwarded out of the route's socket, every one,
    /// in order, from the relay's address; a stranger's are refused and
    /// counted, a learning port's handed to the engine.
    #[test]
    fn batches_forward_everything_in_order_and_refuse_strangers() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut pool = IoPool::start(
            IoConfig {
                threads: 1,
                max_delay: Duration::from_secs(10),
                nice: 0,
            },
            &tx,
        )
        .unwrap();
        let port = Arc::new(bind(local()).unwrap());
        let out = Arc::new(bind(local()).unwrap());
        let learning = Arc::new(bind(local()).unwrap());
        let dest = UdpSocket::bind(local()).unwrap();
        // Room for all 300: the test reads them after sending.
        socket2::SockRef::from(&dest)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
        dest.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let peer = UdpSocket::bind(local()).unwrap();
        let stranger = UdpSocket::bind(local()).unwrap();
        let state = Arc::new(PortState::default());
        state.set_route(Some(UserRoute {
            out: out.clone(),
            dest: dest.local_addr().unwrap(),
            source: Source::Latched {
                addr: peer.local_addr().unwrap(),
                relatch_ssrc: None,
            },
            demux: None,
            rtp: true,
            clock_rate: 8000,
        }));
        let learning_state = Arc::new(PortState::default());
        learning_state.set_route(Some(UserRoute {
            out: out.clone(),
            dest: dest.local_addr().unwrap(),
            source: Source::Learning(None),
            demux: None,
            rtp: true,
            clock_rate: 8000,
        }));
        let _a = pool
            .add(Served {
                local: port.local_addr().unwrap(),
                socket: port.clone(),
                state: state.clone(),
            })
            .unwrap();
        let _b = pool
            .add(Served {
                local: learning.local_addr().unwrap(),
                socket: learning.clone(),
                state: learning_state,
            })
            .unwrap();
        let to = port.local_addr().unwrap();
        // Bursts of 50: more than a batch, less than the receive buffer
        // holds (64 KiB, a burst by design).
        for seq in 0..300u16 {
            peer.send_to(&rtp(seq), to).unwrap();
            if seq % 100 == 0 {
                stranger.send_to(&rtp(9999), to).unwrap();
            }
            if seq % 50 == 49 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        stranger
            .send_to(&rtp(7), learning.local_addr().unwrap())
            .unwrap();
        let mut buf = [0u8; 2048];
        for seq in 0..300u16 {
            let (n, from) = dest.recv_from(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "packet {seq} not forwarded ({e}): {:?}",
                    state.counters().packets
                )
            });
            assert_eq!(from, out.local_addr().unwrap());
            assert_eq!(&buf[..n], rtp(seq).as_slice(), "packet {seq} in order");
        }
        let ev = rx.blocking_recv().expect("handed over");
        assert_eq!(ev.from, stranger.local_addr().unwrap());
        assert_eq!(ev.rtp, Some((0xa1, 7)));
        let c = state.counters();
        assert_eq!((c.packets, c.errors, c.stale), (300, 3, 0));
        let t = &pool.totals;
        let (reads, datagrams) = (
            t.reads.load(Ordering::Relaxed),
            t.datagrams.load(Ordering::Relaxed),
        );
        assert_eq!(datagrams, 304);
        assert!(reads <= datagrams);
        // The stranger's 3 on the latched port, not the one handed over.
        assert_eq!(t.refused.load(Ordering::Relaxed), 3);
    }
}
