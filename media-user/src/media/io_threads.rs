//! The userspace path's I/O: a few threads that share one epoll set of
//! every media socket, reading each ready socket in a batch and
//! forwarding in batches.
//!
//! Why not one task per socket: at a few thousand packets a second per
//! core a task per socket means a wake-up, a `recvfrom` and a `sendto`
//! per packet, and the scheduler is what fills the queue (the benchmark
//! measured p99 1.2 s near the limit).
//!
//! Why one set for all threads, not a share of the sockets per thread:
//! a thread that the scheduler does not run holds up every socket it owns.
//! With a share each, two busy threads that ended up on one CPU (the
//! other taken by interrupts or another process) ran in turns of 10–14 ms
//! (`perf sched`: 12.9 ms the longest wait), so half the calls waited past
//! the staleness bound while the other half flowed — the userspace path
//! lost 0.1 % at a quarter of the rate it carried flat out. Here whichever
//! thread is running takes the next ready socket and serves one turn (at
//! most [`BATCH`] datagrams with one `recvmmsg`, those it forwards sent
//! with one `sendmmsg` per outgoing socket). A thread holds at most
//! [`EVENTS`] sockets at a time, so one that is preempted holds up few. A
//! socket is served by one thread at a time (its [`Turn`]) and its
//! datagrams are taken and sent in order: the relay reorders nothing. A
//! socket that may still have data after its turn is reported again at
//! the back of the ready list, so under overload every call gets its turn
//! in order and none starves.
//!
//! Sockets are registered edge-triggered: a turn that emptied its socket
//! costs no system call to arm it again (with `EPOLLONESHOT` it cost an
//! `epoll_ctl` and a take of the set's lock per turn, and at media's rates
//! a turn is mostly one datagram). A datagram that arrives while another
//! thread serves its socket is reported to a free thread, which leaves the
//! socket to the one serving it and tells it to look again.
//!
//! Bounded delay: every datagram carries the kernel's receive time
//! (`SO_TIMESTAMPNS`); one that waited longer than the configured bound
//! ([`IoConfig::max_delay`]) is dropped and counted (stale), never sent
//! late. Receive buffers are sized for a burst, not to hold seconds of
//! media ([`RECV_BUFFER`]): past the bound a packet is worth nothing.

use std::{
    collections::HashMap,
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use nix::{
    errno::Errno,
    sys::{
        epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout},
        eventfd::{EfdFlags, EventFd},
    },
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::forwarder::{Decision, PortState, rtp_header};
use crate::session::PacketEvent;

/// Datagrams read from one socket per turn (and sent per `sendmmsg`).
pub const BATCH: usize = 32;
/// Ready sockets a thread takes per wait: few, so that a thread the
/// scheduler preempts holds up few sockets (the others take the rest).
pub const EVENTS: usize = 4;
/// The largest datagram taken whole: a UDP payload over IPv4 can be no
/// larger. A longer one (IPv6 jumbograms) is counted as an error.
const SLOT: usize = 65_507;
/// Requested receive buffer per socket: a burst of some 100 small packets
/// (the kernel doubles the figure for its bookkeeping). More would only
/// hold packets that are stale by the time they are read.
pub const RECV_BUFFER: usize = 64 << 10;
/// The default staleness bound.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(5);
/// The stop event's token; sockets count up from 1.
const WAKE: u64 = 0;

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

/// What the workers share: the epoll set and what its tokens name.
struct Shared {
    epoll: Epoll,
    /// Written under the write lock together with the epoll set (add,
    /// delete); a worker arms a socket again only under the read lock and
    /// while its token is here, so it never arms a descriptor that was
    /// closed and reused.
    ports: RwLock<HashMap<u64, Arc<Entry>>>,
    stop: AtomicBool,
    /// Readable once the pool stops (level-triggered: wakes every worker).
    wake: EventFd,
}

/// The interest of a served socket: each time data arrives (edge), to
/// one worker.
fn armed(token: u64) -> EpollEvent {
    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, token)
}

/// A served socket and whose turn it is.
struct Entry {
    served: Served,
    turn: Turn,
}

/// Who serves a socket: no worker, one worker, or one worker that must
/// look again because data arrived during its turn (reported to another
/// worker, which left the socket to it).
#[derive(Default)]
struct Turn(AtomicU8);

const FREE: u8 = 0;
const SERVED: u8 = 1;
const AGAIN: u8 = 2;

impl Turn {
    /// Take the socket, or, when a worker serves it, tell that worker to
    /// look again (false: leave it).
    fn take(&self) -> bool {
        loop {
            match self
                .0
                .compare_exchange(FREE, SERVED, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(AGAIN) => return false,
                Err(_) => {
                    if self
                        .0
                        .compare_exchange(SERVED, AGAIN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return false;
                    }
                    // Let go meanwhile, perhaps before what this event
                    // reports arrived: take it.
                }
            }
        }
    }

    /// Let the socket go after a turn; true when it must be reported
    /// again (`more`: the turn filled its batch, so data may remain with
    /// no edge to report it; or data arrived during the turn).
    fn give_back(&self, more: bool) -> bool {
        if !more
            && self
                .0
                .compare_exchange(SERVED, FREE, Ordering::Release, Ordering::Relaxed)
                .is_ok()
        {
            return false;
        }
        self.0.store(FREE, Ordering::Release);
        true
    }
}

/// A socket served by the pool; dropping it stops serving it (the socket
/// itself closes when its last user lets go).
pub(super) struct Registration {
    shared: Arc<Shared>,
    token: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut ports = self
            .shared
            .ports
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = ports.remove(&self.token) {
            // Closing the descriptor would remove it from the epoll set
            // too, but other holders (routes) may keep it open.
            let _ = self.shared.epoll.delete(e.served.socket.as_ref());
        }
    }
}

/// Upper bounds (µs) of the buckets of [`IoTotals::waited`]; the last
/// bucket holds what waited longer than the last bound.
pub const WAIT_BOUNDS_US: [u64; 7] = [50, 100, 250, 500, 1_000, 2_500, 5_000];

/// How long datagrams waited in the userspace path: from the kernel's
/// receive timestamp to the I/O thread's read, in buckets.
#[derive(Default)]
pub(super) struct Waited {
    /// Datagrams per bucket ([`WAIT_BOUNDS_US`], then one more).
    buckets: [AtomicU64; WAIT_BOUNDS_US.len() + 1],
}

/// The bucket of [`WAIT_BOUNDS_US`] a wait falls in.
fn wait_bucket(wait: Duration) -> usize {
    let us = wait.as_micros();
    WAIT_BOUNDS_US.partition_point(|&b| u128::from(b) < us)
}

/// The name of wait bucket `i` in `statistics`: `userspace waited <= 50
/// us`, …, `userspace waited > 5000 us`.
pub fn waited_key(i: usize) -> String {
    match WAIT_BOUNDS_US.get(i) {
        Some(b) => format!("userspace waited <= {b} us"),
        None => format!(
            "userspace waited > {} us",
            WAIT_BOUNDS_US[WAIT_BOUNDS_US.len() - 1]
        ),
    }
}

impl Waited {
    /// Add a batch's counts per bucket (one atomic add per bucket used,
    /// not per datagram: the workers share these counters).
    fn add(&self, counts: &[u64; WAIT_BOUNDS_US.len() + 1]) {
        for (b, &n) in self.buckets.iter().zip(counts) {
            if n > 0 {
                b.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Datagrams per bucket.
    pub fn read(&self) -> [u64; WAIT_BOUNDS_US.len() + 1] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }
}

/// Totals of the userspace path's own decisions.
#[derive(Default)]
pub(super) struct IoTotals {
    /// How long the datagrams read had waited (those with a receive
    /// timestamp, stale ones included).
    pub waited: Waited,
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
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    tokens: AtomicU64,
    pub totals: Arc<IoTotals>,
}

impl IoPool {
    pub fn start(cfg: IoConfig, events: &mpsc::Sender<PacketEvent>) -> io::Result<Self> {
        let totals = Arc::new(IoTotals::default());
        let shared = Arc::new(Shared {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            ports: RwLock::new(HashMap::new()),
            stop: AtomicBool::new(false),
            wake: EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
        });
        shared
            .epoll
            .add(&shared.wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        let mut threads = Vec::new();
        for i in 0..cfg.threads.max(1) {
            let run = Worker {
                shared: shared.clone(),
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
            threads.push(thread);
        }
        Ok(Self {
            shared,
            threads,
            tokens: AtomicU64::new(WAKE + 1),
            totals,
        })
    }

    /// Serve `served` (by whichever worker is free when it is ready).
    pub fn add(&mut self, served: Served) -> io::Result<Registration> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let socket = served.socket.clone();
        let mut ports = self
            .shared
            .ports
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Known to the workers before its first event can name it.
        ports.insert(
            token,
            Arc::new(Entry {
                served,
                turn: Turn::default(),
            }),
        );
        if let Err(e) = self.shared.epoll.add(socket.as_ref(), armed(token)) {
            ports.remove(&token);
            return Err(e.into());
        }
        Ok(Registration {
            shared: self.shared.clone(),
            token,
        })
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = self.shared.wake.write(1);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    events: mpsc::Sender<PacketEvent>,
    max_delay: Duration,
    totals: Arc<IoTotals>,
}

impl Worker {
    fn run(self) {
        let mut events = [EpollEvent::empty(); EVENTS];
        let mut batch = Batch::new();
        loop {
            let n = match self.shared.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!(error = %e, "polling media sockets failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if self.shared.stop.load(Ordering::Relaxed) {
                return;
            }
            for ev in &events[..n] {
                let token = ev.data();
                if token == WAKE {
                    continue;
                }
                let served = self
                    .shared
                    .ports
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&token)
                    .cloned();
                let Some(e) = served else { continue };
                if !e.turn.take() {
                    continue;
                }
                let full = self.serve(&e.served, &mut batch);
                if !e.turn.give_back(full) {
                    continue;
                }
                // Reported again (at the back of the ready list) if it
                // has data: modifying an entry polls it. Only while
                // registered: its descriptor may be closed and reused.
                let ports = self
                    .shared
                    .ports
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                let s = &e.served;
                if ports.contains_key(&token)
                    && let Err(e) = self
                        .shared
                        .epoll
                        .modify(s.socket.as_ref(), &mut armed(token))
                {
                    warn!(local = %s.local, error = %e, "a media socket could not be polled again");
                }
            }
        }
    }

    /// Read up to [`BATCH`] datagrams from one socket and dispose of each;
    /// true when it may have more (a full batch, or a failed read).
    fn serve(&self, s: &Served, batch: &mut Batch) -> bool {
        let n = match batch.receive(&s.socket) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                // An ICMP error queued on the socket and the like: it is
                // consumed by the failed call, and datagrams may wait
                // behind it: report the socket again.
                debug!(local = %s.local, error = %e, "receiving failed");
                return true;
            }
        };
        self.totals.reads.fetch_add(1, Ordering::Relaxed);
        self.totals.datagrams.fetch_add(n as u64, Ordering::Relaxed);
        let now = SystemTime::now();
        let mut stale = 0u64;
        let mut waited = [0u64; WAIT_BOUNDS_US.len() + 1];
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
                let age = m
                    .received
                    .map(|t| now.duration_since(t).unwrap_or_default());
                if let Some(age) = age {
                    waited[wait_bucket(age)] += 1;
                }
                if age.is_some_and(|age| age > self.max_delay) {
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
        self.totals.waited.add(&waited);
        if stale > 0 {
            self.totals.stale.fetch_add(stale, Ordering::Relaxed);
        }
        batch.send(s);
        // Hold no socket past the batch: a closed port's socket must close.
        batch.out.clear();
        n == BATCH
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

    /// A route on `out` to `dest` that takes any source.
    fn route_to(out: &Arc<UdpSocket>, dest: SocketAddr) -> Arc<PortState> {
        let state = Arc::new(PortState::default());
        state.set_route(Some(UserRoute {
            out: out.clone(),
            dest,
            source: Source::Any,
            demux: None,
            rtp: true,
            clock_rate: 8000,
        }));
        state
    }

    /// A pool of `threads` workers with a bound no datagram of these tests
    /// reaches (10 s), and the engine's end of its events.
    fn pool(threads: usize) -> (IoPool, mpsc::Receiver<PacketEvent>) {
        let (tx, rx) = mpsc::channel(16);
        let pool = IoPool::start(
            IoConfig {
                threads,
                max_delay: Duration::from_secs(10),
                nice: 0,
            },
            &tx,
        )
        .unwrap();
        (pool, rx)
    }

    /// Serve `socket` with `state`.
    fn serve(pool: &mut IoPool, socket: &Arc<UdpSocket>, state: &Arc<PortState>) -> Registration {
        pool.add(Served {
            local: socket.local_addr().unwrap(),
            socket: socket.clone(),
            state: state.clone(),
        })
        .unwrap()
    }

    /// A test's ports: each socket with its route.
    type Ports = Vec<(Arc<UdpSocket>, Arc<PortState>)>;

    /// `n` ports served by `pool`, each routed out of `out` to `dest`.
    fn routed_ports(
        pool: &mut IoPool,
        n: usize,
        out: &Arc<UdpSocket>,
        dest: &UdpSocket,
    ) -> (Ports, Vec<Registration>) {
        let ports: Ports = (0..n)
            .map(|_| {
                (
                    Arc::new(bind(local()).unwrap()),
                    route_to(out, dest.local_addr().unwrap()),
                )
            })
            .collect();
        let served = ports
            .iter()
            .map(|(socket, state)| serve(pool, socket, state))
            .collect();
        (ports, served)
    }

    /// Wait (at most 2 s) until the pool has read a datagram.
    fn wait_for_a_read(pool: &IoPool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while pool.totals.datagrams.load(Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "nothing read");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Two workers, 20 ports. The worker that takes port 0 is stuck
    /// deciding for it (its route is locked, as a thread the scheduler
    /// does not run): the other worker still serves the 19 others, each
    /// packet. With a share of the ports per worker, about half of them
    /// would wait for the stuck one. Once it runs again, port 0's packet
    /// goes out too.
    #[test]
    fn a_stuck_worker_holds_up_only_the_socket_it_serves() {
        let (mut pool, _rx) = pool(2);
        let out = Arc::new(bind(local()).unwrap());
        let dest = UdpSocket::bind(local()).unwrap();
        dest.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let peer = UdpSocket::bind(local()).unwrap();
        let (ports, _served) = routed_ports(&mut pool, 20, &out, &dest);
        let held = ports[0].1.hold();
        peer.send_to(&rtp(0), ports[0].0.local_addr().unwrap())
            .unwrap();
        // A worker has taken port 0's packet and waits for its route.
        wait_for_a_read(&pool);
        for (i, (socket, _)) in ports.iter().enumerate().skip(1) {
            peer.send_to(&rtp(i as u16), socket.local_addr().unwrap())
                .unwrap();
        }
        let mut buf = [0u8; 2048];
        let mut seen = Vec::new();
        for _ in 1..20 {
            let (n, _) = dest.recv_from(&mut buf).unwrap_or_else(|e| {
                panic!("only {} of the 19 free ports were served ({e})", seen.len())
            });
            seen.push(u16::from_be_bytes([buf[2], buf[3]]));
            assert!(n > 12);
        }
        seen.sort_unstable();
        assert_eq!(seen, (1..20).collect::<Vec<u16>>());
        // Held at least 10 ms before its route is free.
        std::thread::sleep(Duration::from_millis(10));
        drop(held);
        let (_, _) = dest.recv_from(&mut buf).expect("port 0 served once free");
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 0);
        // Port 0's packet was read at once, so it waited in the socket no
        // longer than the others; all 20 are counted, with a receive time.
        let waited = pool.totals.waited.read();
        assert_eq!(waited.iter().sum::<u64>(), 20, "{waited:?}");
    }

    /// The wait buckets: a wait goes to the first bucket whose bound it
    /// does not exceed, past the last bound to the last bucket.
    #[test]
    fn waits_land_in_their_buckets() {
        let mut counts = [0u64; WAIT_BOUNDS_US.len() + 1];
        for us in [0, 50, 51, 999, 1_000, 4_999, 5_000, 5_001, 2_000_000] {
            counts[wait_bucket(Duration::from_micros(us))] += 1;
        }
        assert_eq!(counts, [2, 1, 0, 0, 2, 0, 2, 2]);
        let w = Waited::default();
        w.add(&counts);
        w.add(&counts);
        assert_eq!(w.read(), [4, 2, 0, 0, 4, 0, 4, 4]);
    }

    /// A datagram that sat in its socket while no worker could read it is
    /// counted with the wait it had: 30 ms, past the last bound (and
    /// forwarded, the bound being 10 s here).
    #[test]
    fn a_datagram_that_sat_in_its_socket_counts_its_wait() {
        let (mut pool, _rx) = pool(1);
        let out = Arc::new(bind(local()).unwrap());
        let dest = UdpSocket::bind(local()).unwrap();
        dest.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let peer = UdpSocket::bind(local()).unwrap();
        let (a, b) = (
            Arc::new(bind(local()).unwrap()),
            Arc::new(bind(local()).unwrap()),
        );
        let (sa, sb) = (
            route_to(&out, dest.local_addr().unwrap()),
            route_to(&out, dest.local_addr().unwrap()),
        );
        let _ra = serve(&mut pool, &a, &sa);
        let _rb = serve(&mut pool, &b, &sb);
        // The only worker is stuck on a's packet; b's waits in its socket.
        let held = sa.hold();
        peer.send_to(&rtp(0), a.local_addr().unwrap()).unwrap();
        wait_for_a_read(&pool);
        peer.send_to(&rtp(1), b.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        drop(held);
        let mut buf = [0u8; 2048];
        for _ in 0..2 {
            dest.recv_from(&mut buf).expect("forwarded");
        }
        let waited = pool.totals.waited.read();
        assert_eq!(waited.iter().sum::<u64>(), 2, "{waited:?}");
        assert_eq!(waited[WAIT_BOUNDS_US.len()], 1, "{waited:?}");
    }

    /// Loopback: 300 packets in bursts queued on a port (more than a
    /// batch, so several turns) are forwarded out of the route's socket, every one,
    /// in order, from the relay's address; a stranger's are refused and
    /// counted, a learning port's handed to the engine.
    #[test]
    fn batches_forward_everything_in_order_and_refuse_strangers() {
        let (mut pool, mut rx) = pool(1);
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
        let _a = serve(&mut pool, &port, &state);
        let _b = serve(&mut pool, &learning, &learning_state);
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

    /// A socket's turn: taken once; a second taker leaves it and tells
    /// the first to look again; given back after an empty turn it needs
    /// no report unless told to look again, after a full one always.
    #[test]
    fn a_turn_is_taken_once_and_told_to_look_again() {
        let t = Turn::default();
        assert!(t.take());
        assert!(!t.give_back(false), "an emptied socket, nothing new");
        assert!(t.take());
        assert!(!t.take(), "served by another");
        assert!(!t.take(), "still");
        assert!(t.give_back(false), "data arrived during the turn");
        assert!(t.take(), "free again");
        assert!(t.give_back(true), "a full batch: more may wait");
        assert!(t.take());
    }

    /// Two workers, 16 ports, 400 datagrams each sent back to back from
    /// four peers at once: datagrams keep arriving while a port is
    /// served, and every one must still be forwarded (none left in its
    /// socket for want of an event), each port's in order.
    #[test]
    fn datagrams_arriving_during_a_turn_are_not_left_behind() {
        const PORTS: usize = 16;
        const EACH: u16 = 400;
        let (mut pool, _rx) = pool(2);
        let out = Arc::new(bind(local()).unwrap());
        let dest = UdpSocket::bind(local()).unwrap();
        socket2::SockRef::from(&dest)
            .set_recv_buffer_size(8 << 20)
            .unwrap();
        dest.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let (ports, _served) = routed_ports(&mut pool, PORTS, &out, &dest);
        for (socket, _) in &ports {
            // Room for a whole burst: the test is about events, not
            // buffers.
            socket2::SockRef::from(socket.as_ref())
                .set_recv_buffer_size(4 << 20)
                .unwrap();
        }
        let targets: Vec<SocketAddr> = ports.iter().map(|(s, _)| s.local_addr().unwrap()).collect();
        std::thread::scope(|scope| {
            for peer in 0..4 {
                let targets = &targets;
                scope.spawn(move || {
                    let socket = UdpSocket::bind(local()).unwrap();
                    for seq in 0..EACH {
                        for (i, to) in targets.iter().enumerate() {
                            if i % 4 == peer {
                                let mut p = rtp(seq);
                                p[8..12].copy_from_slice(&(i as u32).to_be_bytes());
                                socket.send_to(&p, to).unwrap();
                            }
                        }
                        if seq % 100 == 99 {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                });
            }
        });
        let mut next = [0u16; PORTS];
        let mut buf = [0u8; 2048];
        for n in 0..PORTS * usize::from(EACH) {
            let (_, _) = dest.recv_from(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "{n} of {} forwarded, then nothing ({e}); next expected per port: {next:?}",
                    PORTS * usize::from(EACH)
                )
            });
            let port = u32::from_be_bytes(buf[8..12].try_into().unwrap()) as usize;
            let seq = u16::from_be_bytes([buf[2], buf[3]]);
            assert_eq!(seq, next[port], "port {port} in order");
            next[port] += 1;
        }
        assert_eq!(pool.totals.stale.load(Ordering::Relaxed), 0);
    }

    /// Two workers, 32 ports, 300 rounds of one datagram to every port
    /// at once, the next round only once the last is forwarded whole: a
    /// datagram left in its socket without an event would wait for a
    /// next one that never comes (at media's rates, 20 ms later: stale).
    #[test]
    fn a_lone_datagram_is_never_left_in_its_socket() {
        const PORTS: usize = 32;
        let (mut pool, _rx) = pool(2);
        let out = Arc::new(bind(local()).unwrap());
        let dest = UdpSocket::bind(local()).unwrap();
        socket2::SockRef::from(&dest)
            .set_recv_buffer_size(1 << 20)
            .unwrap();
        dest.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let (ports, _served) = routed_ports(&mut pool, PORTS, &out, &dest);
        let peer = UdpSocket::bind(local()).unwrap();
        let mut buf = [0u8; 2048];
        for round in 0..300u16 {
            for (socket, _) in &ports {
                peer.send_to(&rtp(round), socket.local_addr().unwrap())
                    .unwrap();
            }
            for n in 0..PORTS {
                dest.recv_from(&mut buf).unwrap_or_else(|e| {
                    panic!("round {round}: {n} of {PORTS} forwarded, then nothing ({e})")
                });
                assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), round);
            }
        }
    }
}
