//! The media plane: the real [`Backend`] of the session engine.
//!
//! Every leased port is a bound UDP socket (so a packet the XDP program
//! does not forward reaches a real socket and nothing else can take the
//! port) served by one of the userspace path's I/O threads (`io_threads.rs`): it
//! forwards what XDP is off for, or hands back (no flow yet, learning,
//! neighbour miss, TTL, IPv4↔IPv6). Routes are mirrored into XDP flows
//! whenever the data plane can express them.

mod forwarder;
#[cfg(test)]
mod fuzz_seeds;
mod io_threads;

pub use io_threads::{DEFAULT_MAX_DELAY, DEFAULT_NICE, IoConfig, WAIT_BOUNDS_US, waited_key};

/// The userspace path's packet decisions, pure, for the fuzz targets
/// (`fuzz/`). Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::forwarder::{accept, is_rtcp, rtp_header};
}

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::Arc,
};

use forwarder::{PortState, UserCounters, UserRoute};
use io_threads::{IoPool, Registration, Served};
use media_ebpf::{Flow, FlowKey, RtcpSeen};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{
    dataplane::{DataPlane, FlowCounters},
    session::{At, Backend, Counters, PacketEvent, Path, Quality, Route, RtcpReports, Source},
};

/// A stream on a shared port (`port-sharing`), by (local, slot): its
/// route, the source its XDP flow is keyed by, and its own counters.
///
/// Its two sets of counters are made when first needed: most streams are
/// forwarded by their XDP flow from start to end, and a restart at scale
/// adopts hundreds of thousands of them at once (allocating and zeroing
/// half a kilobyte each that would never be written took a fifth of the
/// adoption's time).
#[derive(Default)]
struct SharedStream {
    route: Option<Route>,
    /// The source of its XDP flow (`FlowKey::shared(local, key)`), if one
    /// is installed.
    flow: Option<SocketAddr>,
    /// What the daemon forwarded for it: none yet while `None`.
    state: Option<Box<PortState>>,
    /// Counters of its flows since removed (the source moved): none while
    /// `None`.
    retired: Option<Box<FlowCounters>>,
}

impl SharedStream {
    /// What the daemon forwarded for it.
    fn user(&self) -> UserCounters {
        self.state
            .as_ref()
            .map_or_else(|| PortState::default().counters(), |s| s.counters())
    }
}

/// Remove shared stream `st`'s XDP flow (on `local`), keeping its
/// counters.
fn remove_shared_flow(dataplane: Option<&mut DataPlane>, local: SocketAddr, st: &mut SharedStream) {
    let Some(remote) = st.flow.take() else {
        return;
    };
    if let Some(dp) = dataplane {
        match dp.flows_mut().remove(&FlowKey::shared(local, remote)) {
            Ok(last) => retire(st.retired.get_or_insert_default(), last),
            Err(e) => warn!(%local, %remote, error = %e, "removing a shared port's XDP flow"),
        }
    }
}

/// Fold a removed flow's counters into `retired`.
fn retire(retired: &mut FlowCounters, last: FlowCounters) {
    retired.packets += last.packets;
    retired.bytes += last.bytes;
    if last.last_seen >= retired.last_seen && last.last_rtp.is_some() {
        // The stream's latest RTP header outlives the flow: a later
        // re-latch is judged against it.
        retired.last_rtp = last.last_rtp;
    }
    retired.last_seen = retired.last_seen.max(last.last_seen);
    retired.seq.absorb(&last.seq);
    retired.quality = last.quality;
    retired.rtcp = last.rtcp;
}

/// One port: bound, or adopted and waiting for its socket (see
/// [`MediaPlane::take_unbound`]).
struct Port {
    socket: Option<Arc<UdpSocket>>,
    state: Arc<PortState>,
    /// Served by an I/O thread until dropped.
    served: Option<Registration>,
    /// The route last set, kept to complete its userspace half once the
    /// sockets it names are bound.
    route: Option<Route>,
    /// An XDP flow is installed for packets arriving here.
    flow: bool,
    /// Kernel counters of flows removed from this port (kept so the
    /// stream's totals never go backwards), their sequence windows folded
    /// together.
    retired: FlowCounters,
}

pub struct MediaPlane {
    dataplane: Option<DataPlane>,
    ports: HashMap<SocketAddr, Port>,
    io: IoPool,
    /// CLOCK_MONOTONIC ↔ wall clock, to report XDP's last-seen times.
    boot: std::time::SystemTime,
    /// Packets and bytes the userspace path forwarded on ports since
    /// closed.
    closed_user: (u64, u64),
    /// Where call records survive a restart (`None`: they do not).
    sessions: Option<crate::dataplane::sessions::SessionStore>,
    /// What an earlier run kept, until the engine takes it.
    persisted: Vec<(String, Vec<u8>)>,
    /// Adopted ports whose sockets are not bound yet.
    unbound: Vec<SocketAddr>,
    /// Records that could not be kept (logged each time).
    persist_errors: u64,
    /// Where each port's own counters outlive the process, what an earlier
    /// run left there (taken as its ports open again), and what was last
    /// written.
    port_store: Option<crate::dataplane::port_counters::PortCounterStore>,
    port_seeds: HashMap<SocketAddr, crate::dataplane::port_counters::PortRecord>,
    port_flushed: HashMap<SocketAddr, crate::dataplane::port_counters::PortRecord>,
    /// Ports held with no XDP flow (of either kind, see [`held`]) while
    /// there is a data plane: until it is empty the program must pass
    /// packets that find no flow to the stack.
    unheld: std::collections::HashSet<SocketAddr>,
    /// Shared pairs (by RTP port): how many leases hold each.
    shared_refs: HashMap<SocketAddr, usize>,
    /// Streams on shared ports, by (local, slot).
    /// Boxed: the table stays small (it grows to hundreds of thousands
    /// of entries with port sharing, and is rehashed as it grows).
    streams: HashMap<(SocketAddr, SocketAddr), Box<SharedStream>>,
}

/// The flow that holds a port the data plane does not forward for (no
/// route, a route only the userspace path can carry): it hands every
/// packet to the daemon's socket — a learning flow whose expected source,
/// the port itself, no packet from the wire has — so that a port with no
/// flow is one no call holds. `rtp` as the port's stream (pairs start on
/// even ports), so that the flow's quality slot keeps its kind.
fn held(local: SocketAddr, rtp: bool) -> Flow {
    let f = Flow::new(local, local).with_source(local).learning(true);
    if rtp { f.rtp() } else { f }
}

/// The XDP flow for a route, if the data plane can express it. A route
/// leaving in the other family than it arrives in (`local` IPv4, `out` and
/// `dest` IPv6, or the reverse: IPv4↔IPv6 bridging) is one: the data plane
/// rewrites the IP header between the families.
fn xdp_flow(local: SocketAddr, r: &Route) -> Option<Flow> {
    if r.demux_rtcp.is_some() || !Flow::is_consistent(r.out, r.dest) {
        return None;
    }
    let mut f = Flow::new(r.out, r.dest);
    if r.rtp {
        f = f.rtp().with_clock_rate(r.clock_rate);
    }
    // A packet arriving at `local` has `local`'s family: an expected source
    // of the other family can never match, and the data plane must not
    // compare one (the flow table refuses it). The userspace path decides.
    let same_family =
        |a: SocketAddr| a.ip().to_canonical().is_ipv4() == local.ip().to_canonical().is_ipv4();
    match r.source {
        Source::Learning(Some(a)) | Source::Latched { addr: a, .. } if !same_family(a) => None,
        Source::Any => Some(f),
        Source::Learning(Some(a)) => Some(f.with_source(a).learning(true)),
        // Learning with nothing to prefer: every packet needs a decision.
        Source::Learning(None) => None,
        Source::Latched { addr, relatch_ssrc } => {
            let f = f.with_source(addr);
            Some(match relatch_ssrc {
                Some(s) if r.rtp => f.with_relatch_ssrc(s),
                _ => f,
            })
        }
    }
}

impl MediaPlane {
    /// Start the userspace path's I/O threads (`io`); packets the engine
    /// must decide go to `events`.
    pub fn new(
        dataplane: Option<DataPlane>,
        events: &mpsc::Sender<PacketEvent>,
        io: IoConfig,
    ) -> io::Result<Self> {
        let boot = monotonic_epoch();
        Ok(Self {
            dataplane,
            ports: HashMap::new(),
            io: IoPool::start(io, events)?,
            boot,
            closed_user: (0, 0),
            sessions: None,
            persisted: Vec::new(),
            unbound: Vec::new(),
            persist_errors: 0,
            port_store: None,
            port_seeds: HashMap::new(),
            port_flushed: HashMap::new(),
            unheld: std::collections::HashSet::new(),
            shared_refs: HashMap::new(),
            streams: HashMap::new(),
        })
    }

    /// Every port held has an XDP flow: packets for the media range that
    /// find none are for no call (see `DataPlane::heartbeat`).
    #[must_use]
    pub fn every_port_held(&self) -> bool {
        self.dataplane.is_some() && self.unheld.is_empty()
    }

    /// Keep every port's own counters in `store` (the pinned
    /// `PORT_COUNTERS` map), starting from what an earlier run left there.
    #[must_use]
    pub fn with_port_counters(
        mut self,
        store: crate::dataplane::port_counters::PortCounterStore,
    ) -> Self {
        self.port_seeds = store.load();
        self.port_store = Some(store);
        self
    }

    /// Write the counters of ports that changed since the last time (the
    /// daemon's tick, once a second): a crash loses at most that second of
    /// what the daemon forwarded itself.
    pub fn flush_counters(&mut self) {
        let Some(store) = self.port_store.as_mut() else {
            return;
        };
        for (local, port) in &self.ports {
            let u = port.state.counters();
            let rtp_word = |r: Option<(u32, u16)>| {
                r.map_or(0, |(ssrc, seq)| {
                    1 << 48 | u64::from(ssrc) << 16 | u64::from(seq)
                })
            };
            let rec = crate::dataplane::port_counters::PortRecord {
                packets: u.packets,
                bytes: u.bytes,
                errors: u.errors,
                last_ns: u.last_packet.map_or(0, |t| {
                    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64)
                }),
                last_rtp: rtp_word(u.last_rtp),
                retired_packets: port.retired.packets,
                retired_bytes: port.retired.bytes,
                retired_last_seen_ns: port.retired.last_seen.map_or(0, |d| d.as_nanos() as u64),
                retired_last_rtp: rtp_word(port.retired.last_rtp),
                seq: u.seq,
                retired_seq: port.retired.seq,
            };
            if self.port_flushed.get(local) != Some(&rec) {
                if let Err(e) = store.put(*local, &rec) {
                    warn!(%local, error = %e, "keeping the port's counters failed");
                    continue;
                }
                self.port_flushed.insert(*local, rec);
            }
        }
    }

    /// Keep call records in `store` (the pinned `SESSIONS` map), and read
    /// what an earlier run kept there for the engine to adopt.
    #[must_use]
    pub fn with_sessions(mut self, mut store: crate::dataplane::sessions::SessionStore) -> Self {
        match store.load() {
            Ok(records) => self.persisted = records,
            Err(e) => {
                warn!(error = %e, "reading the calls an earlier run kept failed; starting without them");
            }
        }
        self.sessions = Some(store);
        self
    }

    /// Call records that could not be kept.
    pub fn persist_errors(&self) -> u64 {
        self.persist_errors
    }

    /// Packets and bytes the daemon forwarded itself (the userspace path),
    /// since it started, closed ports included.
    pub fn userspace_totals(&self) -> (u64, u64) {
        let ports = self.ports.values().map(|p| &*p.state);
        let streams = self.streams.values().filter_map(|s| s.state.as_deref());
        ports
            .chain(streams)
            .fold(self.closed_user, |(p, b), state| {
                let c = state.counters();
                (p + c.packets, b + c.bytes)
            })
    }

    pub fn dataplane(&self) -> Option<&DataPlane> {
        self.dataplane.as_ref()
    }

    pub fn dataplane_mut(&mut self) -> Option<&mut DataPlane> {
        self.dataplane.as_mut()
    }

    /// Bound ports.
    pub fn bound(&self) -> usize {
        self.ports.values().filter(|p| p.socket.is_some()).count()
    }

    /// Datagrams the userspace path dropped because they waited longer
    /// than the staleness bound, since the daemon started.
    pub fn userspace_stale(&self) -> u64 {
        self.io
            .totals
            .stale
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Datagrams the userspace path's I/O threads refused for their source
    /// (not the route's source, or no route), since the daemon started.
    pub fn userspace_refused(&self) -> u64 {
        self.io
            .totals
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The userspace path's stale drops, `recvmmsg` calls and datagrams
    /// read, since the daemon started.
    pub fn userspace_io(&self) -> (u64, u64, u64) {
        let t = &self.io.totals;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        (get(&t.stale), get(&t.reads), get(&t.datagrams))
    }

    /// How long the datagrams the userspace path read had waited (from
    /// the kernel's receive timestamp), per bucket of [`WAIT_BOUNDS_US`]
    /// (the last: longer than its last bound), since the daemon started.
    pub fn userspace_waited(&self) -> [u64; WAIT_BOUNDS_US.len() + 1] {
        self.io.totals.waited.read()
    }

    fn open(&mut self, local: SocketAddr) -> io::Result<()> {
        let socket = io_threads::bind(local)?;
        self.add_port(local);
        self.attach(local, socket)
    }

    /// The port's state, its counters continuing from what an earlier run
    /// left (no socket yet).
    fn add_port(&mut self, local: SocketAddr) {
        let state = Arc::new(PortState::default());
        let mut retired = FlowCounters::default();
        if let Some(r) = self.port_seeds.remove(&local) {
            // What an earlier run counted on this port: counters continue.
            state.seed(r.packets, r.bytes, r.errors, r.last_ns, r.last_rtp, r.seq);
            let rtp = |w: u64| (w >> 48 == 1).then_some(((w >> 16) as u32, w as u16));
            retired = FlowCounters {
                packets: r.retired_packets,
                bytes: r.retired_bytes,
                last_seen: (r.retired_last_seen_ns != 0)
                    .then(|| std::time::Duration::from_nanos(r.retired_last_seen_ns)),
                last_rtp: rtp(r.retired_last_rtp),
                seq: r.retired_seq,
                ..FlowCounters::default()
            };
            self.port_flushed.insert(local, r);
        }
        self.ports.insert(
            local,
            Port {
                socket: None,
                state,
                served: None,
                route: None,
                flow: false,
                retired,
            },
        );
        if self.dataplane.is_some() {
            // Until its first route gives it a flow.
            self.unheld.insert(local);
        }
    }

    /// Give a port its bound socket and serve it.
    fn attach(&mut self, local: SocketAddr, socket: UdpSocket) -> io::Result<()> {
        let Some(port) = self.ports.get_mut(&local) else {
            return Ok(());
        };
        let socket = Arc::new(socket);
        port.served = Some(self.io.add(Served {
            local,
            socket: socket.clone(),
            state: port.state.clone(),
        })?);
        port.socket = Some(socket);
        Ok(())
    }

    /// Adopted ports still without a socket (each once): the daemon binds
    /// them in the background ([`bind_all`]) and hands them back through
    /// [`attach_bound`](Self::attach_bound).
    pub fn take_unbound(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.unbound)
    }

    /// Sockets bound in the background: each port still waiting gets its
    /// own (a port released meanwhile is not reopened). Returns the ports
    /// whose socket could not be had (another program took the port
    /// during the gap): their calls cannot be served.
    pub fn attach_bound(
        &mut self,
        bound: Vec<(SocketAddr, io::Result<UdpSocket>)>,
    ) -> Vec<(SocketAddr, io::Error)> {
        let mut failed = Vec::new();
        for (local, socket) in bound {
            if self.ports.get(&local).is_none_or(|p| p.socket.is_some()) {
                continue;
            }
            if let Err(e) = socket.and_then(|s| self.attach(local, s)) {
                failed.push((local, e));
            }
        }
        failed
    }

    /// Complete the userspace half of every route whose sockets were not
    /// all bound when it was set.
    pub fn complete_routes(&mut self) {
        let todo: Vec<(SocketAddr, Route)> = self
            .ports
            .iter()
            .filter_map(|(local, p)| p.route.clone().map(|r| (*local, r)))
            .collect();
        for (local, route) in todo {
            self.set_user_route(local, Some(&route));
        }
    }

    /// The userspace half of a route; returns whether the port exists.
    fn set_user_route(&mut self, local: SocketAddr, route: Option<&Route>) -> bool {
        let socket = |a: &SocketAddr| self.ports.get(a).and_then(|p| p.socket.clone());
        let user = route.and_then(|r| {
            let out = socket(&r.out)?;
            let demux = r.demux_rtcp.and_then(|(o, d)| Some((socket(&o)?, d)));
            Some(UserRoute {
                out,
                dest: r.dest,
                source: r.source,
                demux,
                rtp: r.rtp,
                clock_rate: r.clock_rate,
            })
        });
        let Some(port) = self.ports.get_mut(&local) else {
            return false;
        };
        port.state.set_route(user);
        port.route = route.cloned();
        true
    }

    fn remove_flow(&mut self, local: SocketAddr) {
        let Some(port) = self.ports.get_mut(&local) else {
            return;
        };
        if !port.flow {
            return;
        }
        port.flow = false;
        if let Some(dp) = self.dataplane.as_mut() {
            match dp.flows_mut().remove(&FlowKey::new(local)) {
                Ok(last) => retire(&mut port.retired, last),
                Err(e) => warn!(%local, error = %e, "removing XDP flow"),
            }
        }
    }
}

impl MediaPlane {
    /// Shared pairs open, and streams on them.
    #[must_use]
    pub fn shared_figures(&self) -> (usize, usize) {
        (self.shared_refs.len(), self.streams.len())
    }

    /// One more reference to the shared pair at `port`, opened if it is
    /// the first: bound now, or (`later`) by the daemon in the background
    /// ([`take_unbound`](Self::take_unbound)).
    fn share(&mut self, addr: IpAddr, port: u16, later: bool) -> io::Result<()> {
        let rtp = SocketAddr::new(addr, port);
        if let Some(n) = self.shared_refs.get_mut(&rtp) {
            *n += 1;
            return Ok(());
        }
        if later {
            self.adopt_pair(addr, port)?;
        } else {
            self.open_pair(addr, port)?;
        }
        for p in [port, port + 1] {
            if let Some(s) = self.ports.get(&SocketAddr::new(addr, p)) {
                // No any-source flow: unknown sources reach this socket
                // (the port stays in `unheld`, so the program passes
                // them), and the engine attributes them.
                s.state.set_shared();
            }
        }
        self.shared_refs.insert(rtp, 1);
        Ok(())
    }

    /// Remove a shared stream's XDP flow, keeping its counters.
    fn remove_shared_flow(&mut self, local: SocketAddr, slot: SocketAddr) {
        if let Some(st) = self.streams.get_mut(&(local, slot)) {
            remove_shared_flow(self.dataplane.as_mut(), local, st);
        }
    }

    /// A shared stream's route: kept for the engine's forwarding, and as
    /// an XDP flow keyed by its source where the data plane can express
    /// it (the flow moves when the source does).
    fn set_shared_route(&mut self, local: SocketAddr, slot: SocketAddr, route: Option<Route>) {
        let key = route.as_ref().and_then(|r| match r.source {
            Source::Learning(a) => a,
            Source::Latched { addr, .. } => Some(addr),
            // Refused by the engine for sharing calls: no flow.
            Source::Any => None,
        });
        let flow = route
            .as_ref()
            .zip(key)
            .and_then(|(r, k)| Some((k, xdp_flow(local, r)?)));
        // One search of the table (hundreds of thousands of streams with
        // port sharing, each programmed again on a restart).
        let st = self.streams.entry((local, slot)).or_default();
        if st.flow.is_some() && st.flow != flow.as_ref().map(|(k, _)| *k) {
            remove_shared_flow(self.dataplane.as_mut(), local, st);
        }
        st.route = route;
        let Some((remote, flow)) = flow else {
            return;
        };
        let Some(dp) = self.dataplane.as_mut() else {
            return;
        };
        // Updated in place when the source stays, its counters continuing.
        match dp.flows_mut().set(FlowKey::shared(local, remote), flow) {
            Ok(()) => st.flow = Some(remote),
            Err(e) => {
                warn!(%local, %remote, error = %e, "installing a shared port's XDP flow failed; the daemon forwards");
            }
        }
    }

    /// The counters of what arrived at a port or a shared stream, both
    /// paths together: `user` the userspace path's, `retired` those of
    /// flows since removed, `flow` the key of the flow installed.
    fn combine(
        &self,
        user: &UserCounters,
        mut kernel: FlowCounters,
        route: Option<&Route>,
        flow: Option<FlowKey>,
    ) -> Counters {
        let rtcp_port = route.is_some_and(|r| !r.rtp);
        let mono = |ns: u64| self.boot + std::time::Duration::from_nanos(ns);
        let real =
            |ns: u64| std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
        // RTCP reports: the userspace path's, the retired flows', the
        // current flow's (an RTCP flow's quality slot holds them; an RTP
        // flow keeps the RTCP multiplexed on its port in `rtcp`).
        let kernel_rtcp = |c: &FlowCounters| {
            if rtcp_port {
                RtcpSeen::from_slot(&c.quality)
            } else {
                c.rtcp
            }
        };
        let mut rtcp = RtcpReports::default()
            .merge(&user.rtcp, real)
            .merge(&kernel_rtcp(&kernel), mono);
        // Both paths may have forwarded parts of one stream: fold their
        // windows so one path's packets are not the other's gaps.
        let mut seq = user.seq;
        seq.absorb(&kernel.seq);
        if let Some(key) = flow
            && let Some(dp) = &self.dataplane
            && let Ok(c) = dp.flows().counters(&key)
        {
            kernel.packets += c.packets;
            kernel.bytes += c.bytes;
            kernel.last_seen = kernel.last_seen.max(c.last_seen);
            if c.last_rtp.is_some() {
                kernel.last_rtp = c.last_rtp;
            }
            seq.absorb(&c.seq);
            kernel.quality = c.quality;
            rtcp = rtcp.merge(&kernel_rtcp(&c), mono);
        }
        let kernel_last = kernel.last_seen.map(|d| self.boot + d);
        // Quality: of the path that carried the stream last (each
        // measures only what it saw; their figures do not add up).
        let clock_rate = route.map_or(0, |r| r.clock_rate);
        let quality = match (user.last_packet, kernel_last) {
            (Some(u), Some(k)) if k > u => Quality::of(&kernel.quality, Path::Xdp, clock_rate),
            (None, Some(_)) => Quality::of(&kernel.quality, Path::Xdp, clock_rate),
            (Some(_), _) => Quality::of(&user.quality, Path::Userspace, clock_rate),
            (None, None) => None,
        };
        Counters {
            packets: user.packets + kernel.packets,
            bytes: user.bytes + kernel.bytes,
            errors: user.errors,
            stale: user.stale,
            kernel_packets: kernel.packets,
            kernel_bytes: kernel.bytes,
            rtp_expected: u64::from(seq.expected()),
            rtp_received: u64::from(seq.received()),
            last_packet: match (user.last_packet, kernel_last) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            last_rtp: match (user.last_packet, kernel_last) {
                (Some(a), Some(b)) if b > a => kernel.last_rtp.or(user.last_rtp),
                (None, Some(_)) => kernel.last_rtp,
                _ => user.last_rtp.or(kernel.last_rtp),
            },
            quality: quality.filter(|_| !rtcp_port),
            // An RTCP port's reports, or an RTP port's rtcp-mux ones.
            rtcp: Some(rtcp).filter(|r| r.sender_reports + r.blocks > 0),
        }
    }
}

/// Bind `addrs` on `threads` threads (socket creation and `bind(2)` are
/// most of adopting a call, and they scale over cores), handing back
/// chunks as they are done; the channel closes when all are.
pub fn bind_all(
    addrs: Vec<SocketAddr>,
    threads: usize,
) -> mpsc::UnboundedReceiver<Vec<(SocketAddr, io::Result<UdpSocket>)>> {
    const CHUNK: usize = 512;
    let (tx, rx) = mpsc::unbounded_channel();
    let threads = threads.clamp(1, addrs.len().max(1));
    let per = addrs.len().div_ceil(threads);
    for (i, share) in addrs.chunks(per.max(1)).enumerate() {
        let owned = share.to_vec();
        let sender = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("media-bind-{i}"))
            .spawn(move || {
                for chunk in owned.chunks(CHUNK) {
                    let bound = chunk.iter().map(|a| (*a, io_threads::bind(*a))).collect();
                    if sender.send(bound).is_err() {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            // Bind this share here instead: slower, never lost.
            warn!(error = %e, "starting a binding thread failed");
            let bound = share.iter().map(|a| (*a, io_threads::bind(*a))).collect();
            let _ = tx.send(bound);
        }
    }
    rx
}

/// The wall-clock time at which CLOCK_MONOTONIC was zero.
fn monotonic_epoch() -> std::time::SystemTime {
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(std::time::Duration::from)
        .unwrap_or_default();
    std::time::SystemTime::now() - mono
}

impl Backend for MediaPlane {
    fn open_pair(&mut self, addr: IpAddr, port: u16) -> io::Result<()> {
        let rtp = SocketAddr::new(addr, port);
        let rtcp = SocketAddr::new(
            addr,
            port.checked_add(1).ok_or(io::ErrorKind::InvalidInput)?,
        );
        self.open(rtp)?;
        if let Err(e) = self.open(rtcp) {
            self.ports.remove(&rtp);
            return Err(e);
        }
        Ok(())
    }

    fn adopt_pair(&mut self, addr: IpAddr, port: u16) -> io::Result<()> {
        let rtp = SocketAddr::new(addr, port);
        let rtcp = SocketAddr::new(
            addr,
            port.checked_add(1).ok_or(io::ErrorKind::InvalidInput)?,
        );
        for local in [rtp, rtcp] {
            self.add_port(local);
            self.unbound.push(local);
        }
        Ok(())
    }

    fn close_pair(&mut self, addr: IpAddr, port: u16) {
        for p in [port, port.wrapping_add(1)] {
            let local = SocketAddr::new(addr, p);
            self.remove_flow(local);
            self.unheld.remove(&local);
            if let Some(p) = self.ports.remove(&local) {
                let c = p.state.counters();
                self.closed_user.0 += c.packets;
                self.closed_user.1 += c.bytes;
            }
            self.port_flushed.remove(&local);
            if let Some(store) = self.port_store.as_mut() {
                store.remove(local);
            }
        }
    }

    fn set_route(&mut self, local: SocketAddr, route: Option<Route>) {
        // Userspace first, so a packet XDP hands over finds the new route.
        if !self.set_user_route(local, route.as_ref()) {
            debug!(%local, "route for an unbound port ignored");
            return;
        }
        let Some(dp) = self.dataplane.as_mut() else {
            return;
        };
        // A flow that forwards, else one that hands packets to the daemon:
        // either way updated in place, its counters continuing.
        let flow = route
            .as_ref()
            .and_then(|r| xdp_flow(local, r))
            .unwrap_or_else(|| {
                held(
                    local,
                    route
                        .as_ref()
                        .map_or(local.port().is_multiple_of(2), |r| r.rtp),
                )
            });
        match dp.flows_mut().set(FlowKey::new(local), flow) {
            Ok(()) => {
                if let Some(p) = self.ports.get_mut(&local) {
                    p.flow = true;
                }
                self.unheld.remove(&local);
            }
            Err(e) => {
                // The userspace path still forwards; packets for ports
                // without flows go to the stack until this one has one.
                warn!(%local, error = %e, "installing XDP flow failed; forwarding in userspace");
                self.remove_flow(local);
                self.unheld.insert(local);
            }
        }
    }

    fn counters(&self, local: SocketAddr) -> Counters {
        let Some(port) = self.ports.get(&local) else {
            return Counters::default();
        };
        let flow = port.flow.then(|| FlowKey::new(local));
        self.combine(
            &port.state.counters(),
            port.retired,
            port.route.as_ref(),
            flow,
        )
    }

    fn open_shared(&mut self, addr: IpAddr, port: u16) -> io::Result<()> {
        self.share(addr, port, false)
    }

    fn adopt_shared(&mut self, addr: IpAddr, port: u16) -> io::Result<()> {
        // Bound after ng answers, with the own-port calls' sockets
        // (`take_unbound`): XDP forwards the known sources meanwhile.
        self.share(addr, port, true)
    }

    fn reserve_shared(&mut self, additional: usize) {
        self.streams.reserve(additional);
    }

    fn close_shared(&mut self, addr: IpAddr, port: u16) {
        let rtp = SocketAddr::new(addr, port);
        let Some(n) = self.shared_refs.get_mut(&rtp) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        self.shared_refs.remove(&rtp);
        let rtcp = SocketAddr::new(addr, port.wrapping_add(1));
        let left: Vec<(SocketAddr, SocketAddr)> = self
            .streams
            .keys()
            .filter(|(l, _)| *l == rtp || *l == rtcp)
            .copied()
            .collect();
        for (l, slot) in left {
            self.drop_stream(At::Shared { local: l, slot });
        }
        self.close_pair(addr, port);
    }

    fn set_route_at(&mut self, at: At, route: Option<Route>) {
        match at {
            At::Own(local) => self.set_route(local, route),
            At::Shared { local, slot } => self.set_shared_route(local, slot, route),
        }
    }

    fn drop_stream(&mut self, at: At) {
        match at {
            At::Own(local) => self.set_route(local, None),
            At::Shared { local, slot } => {
                self.remove_shared_flow(local, slot);
                if let Some(c) = self
                    .streams
                    .remove(&(local, slot))
                    .and_then(|st| st.state.map(|s| s.counters()))
                {
                    self.closed_user.0 += c.packets;
                    self.closed_user.1 += c.bytes;
                }
            }
        }
    }

    fn counters_at(&self, at: At) -> Counters {
        match at {
            At::Own(local) => self.counters(local),
            At::Shared { local, slot } => {
                let Some(st) = self.streams.get(&(local, slot)) else {
                    return Counters::default();
                };
                let flow = st.flow.map(|r| FlowKey::shared(local, r));
                let retired = st.retired.as_deref().copied().unwrap_or_default();
                self.combine(&st.user(), retired, st.route.as_ref(), flow)
            }
        }
    }

    fn forward_at(&mut self, arrived: At, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let At::Shared { local, slot } = arrived else {
            self.forward(arrived.local(), from, to, data);
            return;
        };
        let Some(socket) = self.ports.get(&from).and_then(|p| p.socket.as_ref()) else {
            return;
        };
        let sent = socket.send_to(data, to);
        if let Some(st) = self.streams.get_mut(&(local, slot)) {
            st.state
                .get_or_insert_default()
                .record(local, data, sent.is_ok(), None);
        }
        if let Err(e) = sent {
            debug!(%from, %to, error = %e, "send failed");
        }
    }

    fn forward(&mut self, arrived: SocketAddr, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let Some(socket) = self.ports.get(&from).and_then(|p| p.socket.as_ref()) else {
            return;
        };
        let sent = socket.send_to(data, to);
        if let Some(a) = self.ports.get(&arrived) {
            a.state.record(arrived, data, sent.is_ok(), None);
        }
        if let Err(e) = sent {
            debug!(%from, %to, error = %e, "send failed");
        }
    }

    fn describe(&self) -> Vec<(String, u64)> {
        let mut out = vec![("bound ports".to_owned(), self.ports.len() as u64)];
        if !self.shared_refs.is_empty() {
            out.push((
                "shared pairs open".to_owned(),
                self.shared_refs.len() as u64,
            ));
            out.push(("shared streams".to_owned(), self.streams.len() as u64));
        }
        // What the daemon forwarded itself: with `xdp redirected`/`xdp tx`
        // this accounts for every packet relayed.
        let (packets, bytes) = self.userspace_totals();
        out.push(("userspace forwarded".to_owned(), packets));
        out.push(("userspace forwarded bytes".to_owned(), bytes));
        out.push(("userspace stale dropped".to_owned(), self.userspace_stale()));
        // How long what it read had waited, per bucket.
        let waited = self.userspace_waited();
        for (i, n) in waited.iter().enumerate() {
            out.push((waited_key(i), *n));
        }
        out.push((
            "userspace refused sources".to_owned(),
            self.userspace_refused(),
        ));
        if let Some(dp) = &self.dataplane {
            out.push(("xdp flows".to_owned(), dp.flows().len() as u64));
            out.push((
                "xdp flow capacity".to_owned(),
                u64::from(dp.flows().capacity()),
            ));
            for a in dp.attachments() {
                out.push((format!("xdp {} on {}", a.mode, a.interface), 1));
            }
            if let Ok(o) = dp.outcomes() {
                out.extend(o.into_iter().map(|(k, v)| (format!("xdp {k}"), v)));
            }
        }
        out
    }

    fn persist(&mut self, id: &str, record: Option<&[u8]>) {
        let Some(store) = self.sessions.as_mut() else {
            return;
        };
        let r = match record {
            Some(bytes) => store.put(id, bytes),
            None => store.remove(id),
        };
        if let Err(e) = r {
            self.persist_errors += 1;
            warn!(call_id = %id, error = %e, "the call's record could not be kept: it will not survive a restart");
        }
    }

    fn take_persisted(&mut self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.persisted)
    }

    fn route_source(&self, peer: IpAddr) -> Option<IpAddr> {
        let any: SocketAddr = if peer.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let s = UdpSocket::bind(any).ok()?;
        // connect() on UDP only picks a route and source address; nothing is sent.
        s.connect(SocketAddr::new(peer, 9)).ok()?;
        s.local_addr().ok().map(|a| a.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn route(source: Source) -> Route {
        Route {
            out: sa("198.18.2.1:30002"),
            dest: sa("198.18.2.2:6000"),
            source,
            rtp: true,
            clock_rate: 8000,
            demux_rtcp: None,
        }
    }

    #[test]
    fn no_xdp_flow_expects_a_source_of_the_other_family() {
        let local = sa("198.18.1.1:30000");
        let v6 = sa("[2001:2:0:1::2]:5000");
        let v4 = sa("198.18.1.2:5000");
        for source in [
            Source::Learning(Some(v6)),
            Source::Latched {
                addr: v6,
                relatch_ssrc: None,
            },
        ] {
            assert_eq!(xdp_flow(local, &route(source)), None, "{source:?}");
        }
        let f = xdp_flow(
            local,
            &route(Source::Latched {
                addr: v4,
                relatch_ssrc: Some(7),
            }),
        )
        .expect("same family");
        assert_eq!(f.expected_source(), Some(v4));
        // IPv4-mapped is IPv4 on the wire.
        let mapped = sa("[::ffff:198.18.1.2]:5000");
        assert!(xdp_flow(local, &route(Source::Learning(Some(mapped)))).is_some());
    }

    #[test]
    fn a_bridged_route_is_an_xdp_flow_of_the_outbound_family() {
        // Arrives at an IPv4 port, leaves as IPv6 (and the reverse).
        let local = sa("198.18.1.1:30000");
        let r = Route {
            out: sa("[2001:2:0:2::1]:30002"),
            dest: sa("[2001:2:0:2::2]:6000"),
            ..route(Source::Latched {
                addr: sa("198.18.1.2:5000"),
                relatch_ssrc: Some(7),
            })
        };
        let f = xdp_flow(local, &r).expect("bridged in XDP");
        assert_eq!(f.family, media_ebpf::flow::FAMILY_V6);
        assert_eq!((f.relay(), f.peer()), (r.out, r.dest));
        assert_eq!(f.expect_family, media_ebpf::flow::FAMILY_V4);
        let back = Route {
            out: sa("198.18.1.1:30000"),
            dest: sa("198.18.1.2:5000"),
            ..route(Source::Any)
        };
        let f = xdp_flow(sa("[2001:2:0:2::1]:30002"), &back).expect("bridged in XDP");
        assert_eq!(f.family, media_ebpf::flow::FAMILY_V4);
        // A route whose own two ends differ in family is no flow at all.
        let mixed = Route {
            dest: sa("[2001:2:0:2::2]:6000"),
            ..route(Source::Any)
        };
        assert_eq!(xdp_flow(local, &mixed), None);
    }
}
