//! The engine driven in memory: ng commands in, replies, SDP and routes
//! out, against a recording backend.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io,
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime},
};

use super::{
    Backend, Counters, Engine, Now, PacketEvent, PortAllocator, Restored, Route, SessionConfig,
    Source, latch::Latch, model::Call, record::ENGINE_ID,
};
use crate::{
    interfaces::{Interface, Interfaces},
    ng::{Command, Delete, Flags, Ice, List, OfferAnswer, Query, Replace, Reply, RtcpMux, Value},
    sdp,
};

mod bridging;
mod random_sequences;
mod regressions;
mod restart;
mod sharing;
mod stun;
mod watch;

/// Records what the engine asks of the media plane.
#[derive(Default)]
pub(super) struct Fake {
    pub(super) open: HashSet<SocketAddr>,
    pub(super) routes: HashMap<SocketAddr, Route>,
    pub(super) counters: HashMap<SocketAddr, Counters>,
    pub(super) sent: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Ports "held by another process".
    pub(super) busy: HashSet<u16>,
    /// What the kernel would pick as source towards a peer.
    pub(super) route_source: HashMap<IpAddr, IpAddr>,
    /// Call records kept (`persist`), as the pinned store keeps them.
    pub(super) store: BTreeMap<String, Vec<u8>>,
    /// What `take_persisted` hands over, once (see [`Fake::restarted`]).
    pub(super) persisted: Option<Vec<(String, Vec<u8>)>>,
    /// Records written and forgotten.
    pub(super) writes: usize,
    pub(super) forgets: usize,
    /// Shared pairs open (by RTP port) and their references.
    pub(super) shared: HashMap<SocketAddr, usize>,
    /// Routes of streams on shared ports, by (local, slot).
    pub(super) shared_routes: HashMap<(SocketAddr, SocketAddr), Route>,
    /// Packets forwarded for shared streams, by (local, slot).
    pub(super) shared_sent: Vec<((SocketAddr, SocketAddr), SocketAddr, SocketAddr)>,
    /// How long a counter read takes (a map lookup at scale), and how many
    /// were made.
    pub(super) read_delay: Duration,
    pub(super) reads: std::cell::Cell<usize>,
}

impl Fake {
    /// The media plane of a daemon started again: what the kernel keeps
    /// (the records, the data plane's counters, the host's routes and the
    /// ports other processes hold) is there, the sockets and what the
    /// process knew are gone. Routes live with the sockets here, so the new
    /// engine must program every one of them again.
    pub(super) fn restarted(&self) -> Self {
        Self {
            counters: self.counters.clone(),
            busy: self.busy.clone(),
            route_source: self.route_source.clone(),
            store: self.store.clone(),
            persisted: Some(
                self.store
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            ..Self::default()
        }
    }

    /// The ids of the calls whose records are kept.
    pub(super) fn kept_calls(&self) -> Vec<&str> {
        self.store
            .keys()
            .filter(|k| *k != ENGINE_ID)
            .map(String::as_str)
            .collect()
    }
}

impl Backend for Fake {
    fn open_pair(&mut self, addr: IpAddr, port: u16) -> io::Result<()> {
        if self.busy.contains(&port) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        assert!(self.open.insert(SocketAddr::new(addr, port)), "double bind");
        assert!(
            self.open.insert(SocketAddr::new(addr, port + 1)),
            "double bind"
        );
        Ok(())
    }

    fn close_pair(&mut self, addr: IpAddr, port: u16) {
        for p in [port, port + 1] {
            let a = SocketAddr::new(addr, p);
            assert!(self.open.remove(&a), "closing an unbound port {a}");
            self.routes.remove(&a);
            self.counters.remove(&a);
        }
    }

    fn set_route(&mut self, local: SocketAddr, route: Option<Route>) {
        assert!(self.open.contains(&local), "route on unbound {local}");
        match route {
            Some(r) => {
                assert!(self.open.contains(&r.out), "route out of unbound {}", r.out);
                self.routes.insert(local, r);
            }
            None => {
                self.routes.remove(&local);
            }
        }
    }

    fn counters(&self, local: SocketAddr) -> Counters {
        self.reads.set(self.reads.get() + 1);
        if !self.read_delay.is_zero() {
            std::thread::sleep(self.read_delay);
        }
        self.counters.get(&local).copied().unwrap_or_default()
    }

    fn forward(&mut self, _arrived: SocketAddr, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        self.sent.push((from, to, data.to_vec()));
    }

    fn route_source(&self, peer: IpAddr) -> Option<IpAddr> {
        self.route_source.get(&peer).copied()
    }

    fn persist(&mut self, id: &str, record: Option<&[u8]>) {
        match record {
            Some(r) => {
                self.writes += 1;
                self.store.insert(id.to_owned(), r.to_vec());
            }
            None => {
                self.forgets += 1;
                self.store.remove(id);
            }
        }
    }

    fn take_persisted(&mut self) -> Vec<(String, Vec<u8>)> {
        self.persisted.take().unwrap_or_default()
    }

    fn open_shared(&mut self, addr: IpAddr, port: u16) -> io::Result<()> {
        let rtp = SocketAddr::new(addr, port);
        if let Some(n) = self.shared.get_mut(&rtp) {
            *n += 1;
            return Ok(());
        }
        self.open_pair(addr, port)?;
        self.shared.insert(rtp, 1);
        Ok(())
    }

    fn close_shared(&mut self, addr: IpAddr, port: u16) {
        let rtp = SocketAddr::new(addr, port);
        let n = self
            .shared
            .get_mut(&rtp)
            .expect("closing a shared pair not open");
        *n -= 1;
        if *n == 0 {
            self.shared.remove(&rtp);
            assert!(
                !self
                    .shared_routes
                    .keys()
                    .any(|(l, _)| l.ip() == addr && (l.port() == port || l.port() == port + 1)),
                "a shared pair closed with routes on it"
            );
            self.close_pair(addr, port);
        }
    }

    fn set_route_at(&mut self, at: super::At, route: Option<Route>) {
        match at {
            super::At::Own(local) => self.set_route(local, route),
            super::At::Shared { local, slot } => {
                assert!(self.open.contains(&local), "route on unbound {local}");
                match route {
                    Some(r) => {
                        assert!(self.open.contains(&r.out), "route out of unbound {}", r.out);
                        self.shared_routes.insert((local, slot), r);
                    }
                    None => {
                        self.shared_routes.remove(&(local, slot));
                    }
                }
            }
        }
    }

    fn drop_stream(&mut self, at: super::At) {
        match at {
            super::At::Own(local) => self.set_route(local, None),
            super::At::Shared { local, slot } => {
                self.shared_routes.remove(&(local, slot));
            }
        }
    }

    fn counters_at(&self, at: super::At) -> Counters {
        match at {
            super::At::Own(local) => self.counters(local),
            super::At::Shared { .. } => Counters::default(),
        }
    }

    fn forward_at(&mut self, arrived: super::At, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        match arrived {
            super::At::Own(a) => self.forward(a, from, to, data),
            super::At::Shared { local, slot } => {
                self.shared_sent.push(((local, slot), from, to));
                self.sent.push((from, to, data.to_vec()));
            }
        }
    }
}

/// The daemon of `e` restarted at `now` with the allocator `ports`: a new
/// engine with the same configuration over [`Fake::restarted`], after
/// [`Engine::restore`]. `e` lives on, so both can be driven alike.
pub(super) fn restart(
    e: &Engine<Fake>,
    ports: PortAllocator,
    now: Now,
) -> (Engine<Fake>, Restored) {
    let mut new = Engine::new(
        e.cfg.clone(),
        e.backend().restarted(),
        e.interfaces.clone(),
        ports,
        now,
    );
    let restored = new.restore(now);
    (new, restored)
}

/// Wall-clock times are kept to the millisecond.
fn ms(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

fn assert_same_latch(a: &Latch, b: &Latch, what: &str) {
    assert!(a.same_but_sequence(b), "{what}: {a:?} vs {b:?}");
}

/// The call as `b` holds it is the call as `a` does: every field but the
/// tick's schedule, wall-clock times to the millisecond, latches but for
/// the last RTP sequence number (which records do not follow).
pub(super) fn assert_same_call(a: &Call, b: &Call) {
    let id = &a.id;
    assert_eq!(a.id, b.id);
    assert_eq!(ms(a.created), ms(b.created), "{id}");
    assert_eq!(ms(a.last_signal), ms(b.last_signal), "{id}");
    assert_eq!(
        (a.created_at, a.last_signal_at, a.answered, a.delete_at),
        (b.created_at, b.last_signal_at, b.answered, b.delete_at),
        "{id}"
    );
    assert_eq!(a.monos.len(), b.monos.len(), "{id}");
    for (x, (ma, mb)) in a.monos.iter().zip(&b.monos).enumerate() {
        let what = format!("{id} party {x}");
        assert_eq!(
            (
                &ma.tag,
                &ma.label,
                ms(ma.created),
                ma.iface,
                ma.local,
                ma.peer,
                ma.sent_sdp,
                ma.flags,
                ma.sdp_seen
            ),
            (
                &mb.tag,
                &mb.label,
                ms(mb.created),
                mb.iface,
                mb.local,
                mb.peer,
                mb.sent_sdp,
                mb.flags,
                mb.sdp_seen
            ),
            "{what}"
        );
        assert_eq!(ma.media.len(), mb.media.len(), "{what}");
        for (i, (da, db)) in ma.media.iter().zip(&mb.media).enumerate() {
            let what = format!("{what} media {i}");
            assert_eq!(
                (
                    &da.kind,
                    &da.protocol,
                    da.port,
                    da.mux,
                    da.mux_in_sdp,
                    da.direction,
                    da.zero_address
                ),
                (
                    &db.kind,
                    &db.protocol,
                    db.port,
                    db.mux,
                    db.mux_in_sdp,
                    db.direction,
                    db.zero_address
                ),
                "{what}"
            );
            assert_same_latch(&da.rtp, &db.rtp, &what);
            assert_same_latch(&da.rtcp, &db.rtcp, &what);
        }
    }
}

/// `b` (restarted from `a`) holds `a`'s calls, ports and routes, and
/// reports them alike.
pub(super) fn assert_same_engine(a: &Engine<Fake>, b: &Engine<Fake>) {
    assert_eq!(
        a.calls.keys().collect::<Vec<_>>(),
        b.calls.keys().collect::<Vec<_>>()
    );
    for (id, call) in &a.calls {
        assert_same_call(call, &b.calls[id]);
        assert_eq!(a.report(id, None), b.report(id, None), "{id}");
    }
    assert_eq!(a.owners, b.owners);
    assert_eq!(a.ports().in_use(), b.ports().in_use());
    assert_eq!(a.backend().open, b.backend().open);
    assert_eq!(a.backend().routes, b.backend().routes);
    assert_eq!(b.backend().kept_calls(), a.backend().kept_calls());
}

pub(super) const CARRIER: &str = "198.18.1.1";
pub(super) const PBX: &str = "198.18.2.1";

/// Party A's offer from behind a NAT: a private SDP address
/// (198.18.99.5:4000), its SIP from the NAT's public address 198.18.1.2
/// (ng `received from`), as the SIP agent and Kamailio send it.
pub(super) fn nat_offer(call: &str) -> Command {
    let mut o = oa(call, "a", None, offer_sdp("198.18.99.5", 4000));
    o.received_from = Some(ip("198.18.1.2"));
    Command::Offer(o)
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) fn engine_with(ifaces: Vec<Interface>, min: u16, max: u16) -> Engine<Fake> {
    let mut fake = Fake::default();
    fake.route_source.insert(ip("198.18.1.2"), ip(CARRIER));
    fake.route_source.insert(ip("198.18.2.2"), ip(PBX));
    Engine::new(
        SessionConfig::default(),
        fake,
        Interfaces(ifaces),
        PortAllocator::new(min, max, Duration::from_secs(2)).unwrap(),
        Now::read(),
    )
}

pub(super) fn iface(name: &str, v4: &str) -> Interface {
    Interface::plain(name, Some(v4.parse().unwrap()), None)
}

/// One interface (both legs on it).
pub(super) fn engine() -> Engine<Fake> {
    engine_with(vec![iface("eth0", CARRIER)], 30000, 30099)
}

pub(super) fn offer_sdp(addr: &str, port: u16) -> Vec<u8> {
    format!(
        "v=0\r\no=- 1000 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
    .into_bytes()
}

pub(super) fn oa(call: &str, from: &str, to: Option<&str>, sdp: Vec<u8>) -> OfferAnswer {
    OfferAnswer {
        call_id: call.into(),
        from_tag: from.into(),
        to_tag: to.map(Into::into),
        via_branch: None,
        sdp,
        flags: Flags::default(),
        replace: Replace::default(),
        direction: Vec::new(),
        from_interface: None,
        to_interface: None,
        rtcp_mux: RtcpMux::default(),
        ice: Ice::default(),
        received_from: None,
        media_address: None,
        label: None,
        address_family: None,
    }
}

pub(super) fn sdp_of(reply: &Reply) -> Vec<u8> {
    match reply {
        Reply::Ok(d) => match d.get(b"sdp".as_slice()) {
            Some(Value::Bytes(b)) => b.clone(),
            other => panic!("no sdp in reply: {other:?}"),
        },
        other => panic!("not ok: {other:?}"),
    }
}

pub(super) fn ok_dict(reply: Reply) -> BTreeMap<Vec<u8>, Value> {
    match reply {
        Reply::Ok(d) => d,
        other => panic!("not ok: {other:?}"),
    }
}

/// (address, port) of the first m= line of an SDP.
pub(super) fn media_endpoint(s: &[u8]) -> SocketAddr {
    let info = sdp::inspect(s).unwrap();
    SocketAddr::new(info.media[0].connection.unwrap(), info.media[0].port)
}

/// Offer from A (198.18.1.2:5000), answer from B (198.18.2.2:6000).
pub(super) fn basic_call(e: &mut Engine<Fake>, call: &str) -> (SocketAddr, SocketAddr) {
    let now = Now::read();
    let r = e.handle(
        Command::Offer(oa(call, "a-tag", None, offer_sdp("198.18.1.2", 5000))),
        now,
    );
    let to_b = media_endpoint(&sdp_of(&r));
    let r = e.handle(
        Command::Answer(oa(
            call,
            "a-tag",
            Some("b-tag"),
            offer_sdp("198.18.2.2", 6000),
        )),
        now,
    );
    let to_a = media_endpoint(&sdp_of(&r));
    (to_a, to_b)
}

#[test]
fn offer_answer_anchor_media_and_program_both_directions() {
    let mut e = engine();
    let (to_a, to_b) = basic_call(&mut e, "c1");
    // A is told to send to the relay, B too, on distinct even ports.
    assert_eq!(to_a.ip(), ip(CARRIER));
    assert_eq!(to_b.ip(), ip(CARRIER));
    assert_ne!(to_a, to_b);
    assert_eq!(to_a.port() % 2, 0);
    let f = &e.backend().routes;
    // A → relay(to_a) → out from to_b → B.
    let r = &f[&to_a];
    assert_eq!((r.out, r.dest), (to_b, sa("198.18.2.2:6000")));
    assert_eq!(r.source, Source::Learning(Some(sa("198.18.1.2:5000"))));
    assert!(r.rtp);
    // RTCP on port + 1 both ways.
    let r = &f[&SocketAddr::new(to_a.ip(), to_a.port() + 1)];
    assert_eq!(r.dest, sa("198.18.2.2:6001"));
    assert!(!r.rtp);
    let r = &f[&to_b];
    assert_eq!((r.out, r.dest), (to_a, sa("198.18.1.2:5000")));
    assert_eq!(f.len(), 4);
    assert_eq!(e.owned_ports(), 4);
}

#[test]
fn offer_alone_routes_early_media_back_to_the_offerer() {
    let mut e = engine();
    let now = Now::read();
    let r = e.handle(
        Command::Offer(oa("c", "a", None, offer_sdp("198.18.1.2", 5000))),
        now,
    );
    let to_b = media_endpoint(&sdp_of(&r));
    // B's address is unknown: nothing to send A's media to yet, but B's
    // early media (183) can reach A, learning B's source.
    let f = &e.backend().routes;
    assert_eq!(f.len(), 2, "{f:?}");
    let r = &f[&to_b];
    assert_eq!(r.dest, sa("198.18.1.2:5000"));
    assert_eq!(r.source, Source::Learning(None));
}

#[test]
fn two_interfaces_anchor_across_carrier_and_pbx_sides() {
    let mut e = engine_with(
        vec![iface("carrier", CARRIER), iface("pbx", PBX)],
        30000,
        30099,
    );
    let (to_a, to_b) = basic_call(&mut e, "c1");
    assert_eq!(
        to_a.ip(),
        ip(CARRIER),
        "the carrier is told the carrier-side address"
    );
    assert_eq!(to_b.ip(), ip(PBX), "the PBX is told the PBX-side address");
    assert_eq!(e.backend().routes[&to_a].out, to_b);
}

#[test]
fn direction_names_interfaces() {
    let mut e = engine_with(
        vec![iface("carrier", CARRIER), iface("pbx", PBX)],
        30000,
        30099,
    );
    let mut o = oa("c", "a", None, offer_sdp("198.18.2.2", 5000));
    o.direction = vec!["pbx".into(), "carrier".into()];
    let to_b = media_endpoint(&sdp_of(&e.handle(Command::Offer(o), Now::read())));
    assert_eq!(to_b.ip(), ip(CARRIER));
    let mut o = oa("d", "a", None, offer_sdp("198.18.2.2", 5000));
    o.direction = vec!["nope".into(), "carrier".into()];
    assert_eq!(
        e.handle(Command::Offer(o), Now::read()),
        Reply::Error("Unknown interface 'nope'".into())
    );
    assert_eq!(e.call_count(), 1, "a refused first offer leaves nothing");
}

#[test]
fn advertised_address_is_what_peers_see() {
    let mut i = iface("eth0", CARRIER);
    i.advertise_v4 = Some("203.0.113.10".parse().unwrap());
    let mut e = engine_with(vec![i], 30000, 30099);
    let r = e.handle(
        Command::Offer(oa("c", "a", None, offer_sdp("198.18.1.2", 5000))),
        Now::read(),
    );
    let s = String::from_utf8(sdp_of(&r)).unwrap();
    assert!(s.contains("c=IN IP4 203.0.113.10\r\n"), "{s}");
    // Sockets and routes stay on the local address.
    assert!(e.backend().open.iter().all(|a| a.ip() == ip(CARRIER)));
}

#[test]
fn delete_frees_everything_and_retransmitted_delete_warns() {
    let mut e = engine();
    basic_call(&mut e, "c1");
    let now = Now::read();
    let d = Delete {
        call_id: "c1".into(),
        from_tag: Some("a-tag".into()),
        to_tag: None,
        via_branch: None,
        delete_delay: None,
    };
    let reply = ok_dict(e.handle(Command::Delete(d.clone()), now));
    assert!(
        reply.contains_key(b"totals".as_slice()),
        "delete reports the call's stats"
    );
    assert!(e.backend().open.is_empty());
    assert!(e.backend().routes.is_empty());
    assert_eq!(
        (e.call_count(), e.owned_ports(), e.ports().in_use()),
        (0, 0, 0)
    );
    let again = ok_dict(e.handle(Command::Delete(d), now));
    assert!(again.contains_key(b"warning".as_slice()));
}

#[test]
fn delete_delay_keeps_media_until_due() {
    let mut e = engine();
    basic_call(&mut e, "c1");
    let now = Now::read();
    e.handle(
        Command::Delete(Delete {
            call_id: "c1".into(),
            from_tag: None,
            to_tag: None,
            via_branch: None,
            delete_delay: Some(5),
        }),
        now,
    );
    e.tick(now + Duration::from_secs(4));
    assert_eq!(e.call_count(), 1);
    e.tick(now + Duration::from_secs(5));
    assert_eq!(e.call_count(), 0);
    assert!(e.backend().open.is_empty());
}

#[test]
fn port_exhaustion_is_an_ng_error_and_leaves_nothing_behind() {
    // Two pairs: enough for one call only.
    let mut e = engine_with(vec![iface("eth0", CARRIER)], 30000, 30003);
    basic_call(&mut e, "c1");
    let r = e.handle(
        Command::Offer(oa("c2", "x", None, offer_sdp("198.18.1.2", 7000))),
        Now::read(),
    );
    assert_eq!(r, Reply::Error("Ran out of ports".into()));
    assert_eq!(e.call_count(), 1);
    assert_eq!(e.totals().port_exhaustions, 1);
    assert_eq!(e.backend().open.len(), 4, "only the first call's ports");
}

#[test]
fn ports_held_elsewhere_are_skipped() {
    let mut e = engine();
    e.backend_mut().busy.insert(30000);
    let (to_a, to_b) = basic_call(&mut e, "c1");
    assert!(to_a.port() != 30000 && to_b.port() != 30000);
}

#[test]
fn rejected_streams_stay_port_zero_with_nothing_allocated() {
    let mut e = engine();
    let sdp = b"v=0\r\no=- 1 1 IN IP4 198.18.1.2\r\ns=-\r\nc=IN IP4 198.18.1.2\r\nt=0 0\r\n\
m=audio 5000 RTP/AVP 8\r\nm=video 0 RTP/AVP 96\r\n"
        .to_vec();
    let r = e.handle(Command::Offer(oa("c", "a", None, sdp)), Now::read());
    let info = sdp::inspect(&sdp_of(&r)).unwrap();
    assert_ne!(info.media[0].port, 0);
    assert_eq!(info.media[1].port, 0);
    assert_eq!(
        e.backend().open.len(),
        4,
        "two pairs for the audio stream only"
    );
}

#[test]
fn reoffer_updates_in_place_and_bumps_the_version_only_on_change() {
    let mut e = engine();
    let now = Now::read();
    let first = sdp_of(&e.handle(
        Command::Offer(oa("c", "a", None, offer_sdp("198.18.1.2", 5000))),
        now,
    ));
    e.handle(
        Command::Answer(oa("c", "a", Some("b"), offer_sdp("198.18.2.2", 6000))),
        now,
    );
    let v1 = sdp::inspect(&first).unwrap().origin_version;
    // The same offer again (a retransmission that bypassed the cookie cache):
    // the same ports, the same version.
    let same = sdp_of(&e.handle(
        Command::Offer(oa("c", "a", Some("b"), offer_sdp("198.18.1.2", 5000))),
        now,
    ));
    assert_eq!(same, first);
    // A re-INVITE moving A's port: B still sends to the same relay port;
    // the version moves only if the body we send changes.
    let to_b = media_endpoint(&first);
    let moved = sdp_of(&e.handle(
        Command::Offer(oa("c", "a", Some("b"), offer_sdp("198.18.1.2", 5100))),
        now,
    ));
    assert_eq!(media_endpoint(&moved), to_b, "the relay keeps its ports");
    let ports_before = e.backend().open.clone();
    assert_eq!(
        e.backend().routes[&to_b].dest,
        sa("198.18.1.2:5100"),
        "B's media now goes to A's new port"
    );
    assert_eq!(e.backend().open, ports_before);
    assert_eq!(
        sdp::inspect(&moved).unwrap().origin_version,
        v1,
        "same body for B: same version"
    );
    // A hold (sendonly) changes the body for B: the version moves.
    let hold = String::from_utf8(offer_sdp("198.18.1.2", 5100))
        .unwrap()
        .replace("a=sendrecv", "a=sendonly");
    let held = sdp_of(&e.handle(
        Command::Offer(oa("c", "a", Some("b"), hold.into_bytes())),
        now,
    ));
    assert_eq!(sdp::inspect(&held).unwrap().origin_version, v1 + 1);
}

#[test]
fn hold_with_zero_address_passes_through() {
    let mut e = engine();
    let now = Now::read();
    basic_call(&mut e, "c");
    let s = sdp_of(&e.handle(
        Command::Offer(oa("c", "a-tag", Some("b-tag"), offer_sdp("0.0.0.0", 5000))),
        now,
    ));
    let info = sdp::inspect(&s).unwrap();
    assert_eq!(info.media[0].connection, Some(ip("0.0.0.0")));
    assert_ne!(info.media[0].port, 0);
}

#[test]
fn nat_latching_through_the_engine() {
    let mut e = engine();
    e.handle(nat_offer("c"), Now::read());
    let now = Now::read();
    let r = e.handle(
        Command::Answer(oa("c", "a", Some("b"), offer_sdp("198.18.2.2", 6000))),
        now,
    );
    let to_a = media_endpoint(&sdp_of(&r));
    let to_b = *e
        .backend()
        .routes
        .iter()
        .find(|(_, r)| r.dest == sa("198.18.99.5:4000"))
        .unwrap()
        .0;
    // A's packets really come from its NAT.
    let nat = sa("198.18.1.2:40000");
    e.on_packet(
        PacketEvent {
            local: to_a,
            from: nat,
            rtp: Some((0x55, 1)),
            data: b"rtp".to_vec(),
        },
        now,
    );
    assert_eq!(
        e.backend().sent,
        vec![(to_b, sa("198.18.2.2:6000"), b"rtp".to_vec())],
        "forwarded while latching"
    );
    assert_eq!(
        e.backend().routes[&to_b].dest,
        nat,
        "B's media goes to A's NAT now"
    );
    assert_eq!(
        e.backend().routes[&to_a].source,
        Source::Learning(Some(nat))
    );
    // After the learning window the source is strict (with the SSRC the
    // data plane saw, for re-latching).
    e.backend_mut().counters.insert(
        to_a,
        Counters {
            packets: 10,
            kernel_packets: 9,
            last_rtp: Some((0x55, 10)),
            last_packet: Some(SystemTime::now()),
            ..Counters::default()
        },
    );
    e.tick(now + Duration::from_secs(3));
    assert_eq!(
        e.backend().routes[&to_a].source,
        Source::Latched {
            addr: nat,
            relatch_ssrc: Some(0x55)
        }
    );
    // A stranger is not forwarded: another SSRC, or A's SSRC out of
    // sequence.
    let sent = e.backend().sent.len();
    for rtp in [Some((0x99, 11)), Some((0x55, 4000)), None] {
        e.on_packet(
            PacketEvent {
                local: to_a,
                from: sa("198.18.1.66:1"),
                rtp,
                data: b"x".to_vec(),
            },
            now + Duration::from_secs(4),
        );
    }
    assert_eq!(e.backend().sent.len(), sent);
    assert_eq!(e.backend().routes[&to_b].dest, nat);
    // A's NAT rebinding (same SSRC, next sequence number) re-latches.
    let rebound = sa("198.18.1.2:40002");
    e.on_packet(
        PacketEvent {
            local: to_a,
            from: rebound,
            rtp: Some((0x55, 11)),
            data: b"y".to_vec(),
        },
        now + Duration::from_secs(5),
    );
    assert_eq!(e.backend().routes[&to_b].dest, rebound);
    assert_eq!(e.backend().sent.len(), sent + 1);
}

#[test]
fn flags_shape_the_source_policy() {
    let mut e = engine();
    let now = Now::read();
    let mut o = oa("c", "a", None, offer_sdp("198.18.1.2", 5000));
    o.flags.asymmetric = true;
    e.handle(Command::Offer(o), now);
    let r = e.handle(
        Command::Answer(oa("c", "a", Some("b"), offer_sdp("198.18.2.2", 6000))),
        now,
    );
    let to_a = media_endpoint(&sdp_of(&r));
    assert_eq!(e.backend().routes[&to_a].source, Source::Any);

    let mut o = oa("d", "a", None, offer_sdp("198.18.1.2", 5000));
    o.flags.strict_source = true;
    e.handle(Command::Offer(o), now);
    let r = e.handle(
        Command::Answer(oa("d", "a", Some("b"), offer_sdp("198.18.2.2", 6000))),
        now,
    );
    let to_a = media_endpoint(&sdp_of(&r));
    assert_eq!(
        e.backend().routes[&to_a].source,
        Source::Latched {
            addr: sa("198.18.1.2:5000"),
            relatch_ssrc: None
        }
    );

    // SIP source address: the endpoint is the SIP message's source.
    let mut o = oa("e", "a", None, offer_sdp("198.18.99.5", 5000));
    o.flags.sip_source_address = true;
    o.received_from = Some(ip("198.18.1.2"));
    e.handle(Command::Offer(o), now);
    let r = e.handle(
        Command::Answer(oa("e", "a", Some("b"), offer_sdp("198.18.2.2", 6000))),
        now,
    );
    let to_a = media_endpoint(&sdp_of(&r));
    let to_b = e.backend().routes[&to_a].out;
    assert_eq!(e.backend().routes[&to_b].dest, sa("198.18.1.2:5000"));
}

#[test]
fn rtcp_mux_offer_accept_and_demux() {
    let mut e = engine();
    let now = Now::read();
    let mux_sdp = |addr: &str, port: u16| {
        String::from_utf8(offer_sdp(addr, port))
            .unwrap()
            .replace("a=sendrecv\r\n", "a=sendrecv\r\na=rtcp-mux\r\n")
            .into_bytes()
    };
    // A offers mux; we demux towards B (B does not do mux).
    let mut o = oa("c", "a", None, mux_sdp("198.18.1.2", 5000));
    o.rtcp_mux.demux = true;
    let to_b_sdp = sdp_of(&e.handle(Command::Offer(o), now));
    assert!(
        !sdp::inspect(&to_b_sdp).unwrap().media[0].rtcp_mux,
        "demuxed towards B"
    );
    let mut a = oa("c", "a", Some("b"), offer_sdp("198.18.2.2", 6000));
    a.rtcp_mux.accept = true;
    let to_a_sdp = sdp_of(&e.handle(Command::Answer(a), now));
    let info = sdp::inspect(&to_a_sdp).unwrap();
    assert!(info.media[0].rtcp_mux, "mux accepted towards A");
    let to_a = media_endpoint(&to_a_sdp);
    let to_b = media_endpoint(&to_b_sdp);
    // A's RTCP arrives muxed on the RTP port: split towards B's RTCP port.
    let r = &e.backend().routes[&to_a];
    assert_eq!(
        r.demux_rtcp,
        Some((
            SocketAddr::new(to_b.ip(), to_b.port() + 1),
            sa("198.18.2.2:6001")
        ))
    );
    // B's RTCP (port + 1) goes to A's RTP port, from the relay's RTP port.
    let r = &e.backend().routes[&SocketAddr::new(to_b.ip(), to_b.port() + 1)];
    assert_eq!((r.out, r.dest), (to_a, sa("198.18.1.2:5000")));
}

#[test]
fn ice_is_stripped_by_default() {
    let mut e = engine();
    let s = String::from_utf8(offer_sdp("198.18.1.2", 5000))
        .unwrap()
        .replace(
            "a=sendrecv\r\n",
            "a=sendrecv\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=candidate:1 1 UDP 2130706431 198.18.1.2 5000 typ host\r\n",
        );
    let out = sdp_of(&e.handle(
        Command::Offer(oa("c", "a", None, s.into_bytes())),
        Now::read(),
    ));
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("ice-") && !out.contains("candidate"), "{out}");
}

#[test]
fn offer_timeout_and_media_timeout_end_calls_and_are_reported() {
    let mut e = engine();
    let t0 = Now::read();
    e.handle(
        Command::Offer(oa("never", "a", None, offer_sdp("198.18.1.2", 5000))),
        t0,
    );
    basic_call(&mut e, "quiet");
    e.tick(t0 + Duration::from_secs(59));
    assert_eq!(e.call_count(), 2);
    // Counters are read every 5 s once nothing is learning.
    e.tick(t0 + Duration::from_secs(65));
    assert_eq!(e.call_count(), 1, "no media for 60 s on the answered call");
    e.tick(t0 + Duration::from_secs(3606));
    assert_eq!(e.call_count(), 0, "offer never answered");
    assert!(e.backend().open.is_empty());
    let reasons: Vec<_> = e
        .ended()
        .map(|x| (x.call_id.as_str(), x.reason.name()))
        .collect();
    assert_eq!(
        reasons,
        vec![("quiet", "timeout"), ("never", "offer timeout")]
    );
    let list = ok_dict(e.handle(Command::List(List { limit: None }), t0));
    match &list[b"timed out".as_slice()] {
        Value::List(l) => assert_eq!(l.len(), 2),
        other => panic!("{other:?}"),
    }
}

/// A mass timeout (an outage silences every call at once) is spread over
/// ticks: one tick ends at most `ENDS_PER_TICK` calls, the rest at the
/// next ticks, none is forgotten.
#[test]
fn a_mass_timeout_is_spread_over_ticks() {
    let mut e = engine_with(vec![iface("eth0", CARRIER)], 20000, 29999);
    let t0 = Now::read();
    let calls = super::engine::ENDS_PER_TICK * 2 + 100;
    for i in 0..calls {
        basic_call(&mut e, &format!("quiet-{i}"));
    }
    e.tick(t0 + Duration::from_secs(65));
    let left = e.call_count();
    assert!(
        left >= calls - super::engine::ENDS_PER_TICK && left < calls,
        "one tick ended {} of {calls}",
        calls - left
    );
    let mut t = t0 + Duration::from_secs(65);
    // The time budget may end fewer a tick on a slow or busy machine.
    for _ in 0..1000 {
        if e.call_count() == 0 {
            break;
        }
        t = t + Duration::from_millis(250);
        e.tick(t);
    }
    assert_eq!(e.call_count(), 0, "every call ended at later ticks");
    assert_eq!(e.ended().count(), calls.min(super::engine::ENDED_KEPT));
    assert!(e.backend().open.is_empty());
}

/// Counter checks are bounded per tick: with reads that cost 1 ms and 200
/// calls due, one tick reads for about `CHECK_BUDGET`, not 800 ms; the
/// calls left are read at the next ticks, and timeouts still end them all.
#[test]
fn counter_checks_are_spread_over_ticks() {
    let mut e = engine_with(vec![iface("eth0", CARRIER)], 20000, 29999);
    let t0 = Now::read();
    let calls = 200;
    for i in 0..calls {
        basic_call(&mut e, &format!("c-{i}"));
    }
    // The quality watch (budgeted by calls, not time) kept out of this.
    for c in e.calls.values_mut() {
        c.next_quality = t0.mono + Duration::from_secs(3600);
    }
    e.backend_mut().read_delay = Duration::from_millis(1);
    e.backend().reads.set(0);
    let started = std::time::Instant::now();
    e.tick(t0 + Duration::from_secs(1));
    let took = started.elapsed();
    let reads = e.backend().reads.get();
    // Four ports a call (RTP and RTCP of both legs).
    assert!(
        reads > 0 && reads < calls * 4 / 2,
        "one tick read {reads} counters of {}",
        calls * 4
    );
    assert!(
        took < super::engine::CHECK_BUDGET * 4,
        "one tick took {took:?}"
    );
    // The rest at later ticks: after a minute without media every call
    // has been read and timed out.
    e.backend_mut().read_delay = Duration::ZERO;
    let mut t = t0 + Duration::from_secs(65);
    for _ in 0..100 {
        t = t + Duration::from_millis(250);
        e.tick(t);
    }
    assert_eq!(e.call_count(), 0);
}

#[test]
fn media_keeps_a_call_alive_and_hold_uses_the_silent_timeout() {
    let mut e = engine();
    let t0 = Now::read();
    let (to_a, _) = basic_call(&mut e, "c");
    e.backend_mut().counters.insert(
        to_a,
        Counters {
            packets: 1,
            last_packet: Some(SystemTime::now() + Duration::from_secs(100)),
            ..Counters::default()
        },
    );
    e.tick(t0 + Duration::from_secs(120));
    assert_eq!(e.call_count(), 1, "media seen recently");
    // Both sides on hold: only the silent timeout applies.
    let mut f = engine();
    basic_call(&mut f, "h");
    let inactive = |addr: &str, port| {
        String::from_utf8(offer_sdp(addr, port))
            .unwrap()
            .replace("a=sendrecv", "a=inactive")
            .into_bytes()
    };
    f.handle(
        Command::Offer(oa(
            "h",
            "a-tag",
            Some("b-tag"),
            inactive("198.18.1.2", 5000),
        )),
        t0,
    );
    f.handle(
        Command::Answer(oa(
            "h",
            "a-tag",
            Some("b-tag"),
            inactive("198.18.2.2", 6000),
        )),
        t0,
    );
    f.tick(t0 + Duration::from_secs(120));
    assert_eq!(f.call_count(), 1, "on hold: silent timeout, not timeout");
    f.tick(t0 + Duration::from_secs(3601));
    assert_eq!(f.call_count(), 0);
    assert_eq!(
        f.ended().next().map(|x| x.reason.name()),
        Some("silent timeout")
    );
}

#[test]
fn query_list_statistics_and_errors() {
    let mut e = engine();
    let now = Now::read();
    let (to_a, _) = basic_call(&mut e, "c1");
    e.backend_mut().counters.insert(
        to_a,
        Counters {
            packets: 7,
            bytes: 1400,
            kernel_packets: 7,
            last_packet: Some(SystemTime::now()),
            ..Counters::default()
        },
    );
    let q = ok_dict(e.handle(
        Command::Query(Query {
            call_id: "c1".into(),
            from_tag: None,
            to_tag: None,
        }),
        now,
    ));
    let tags = q[b"tags".as_slice()].as_dict().unwrap();
    assert_eq!(tags.len(), 2);
    let a = tags[b"a-tag".as_slice()].as_dict().unwrap();
    assert_eq!(a[b"in dialogue with".as_slice()].as_str(), Some("b-tag"));
    let streams = a[b"medias".as_slice()].as_list().unwrap()[0]
        .get("streams")
        .and_then(Value::as_list)
        .unwrap()
        .to_vec();
    let rtp = &streams[0];
    assert_eq!(
        rtp.get("local port").and_then(Value::as_int),
        Some(i64::from(to_a.port()))
    );
    assert_eq!(
        rtp.get("stats")
            .and_then(|s| s.get("packets"))
            .and_then(Value::as_int),
        Some(7)
    );
    assert_eq!(
        rtp.get("advertised endpoint")
            .and_then(|s| s.get("port"))
            .and_then(Value::as_int),
        Some(5000)
    );
    let flags: Vec<_> = rtp
        .get("flags")
        .and_then(Value::as_list)
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    assert!(flags.contains(&"kernelized".to_owned()), "{flags:?}");
    let totals = q[b"totals".as_slice()]
        .get("RTP")
        .and_then(|t| t.get("packets"))
        .and_then(Value::as_int);
    assert_eq!(totals, Some(7));

    let l = ok_dict(e.handle(Command::List(List { limit: Some(5) }), now));
    assert_eq!(
        l[b"calls".as_slice()],
        Value::List(vec![Value::Bytes(b"c1".to_vec())])
    );
    let s = ok_dict(e.handle(Command::Statistics, now));
    let cur = s[b"statistics".as_slice()]
        .get("currentstatistics")
        .unwrap();
    assert_eq!(cur.get("sessionsown").and_then(Value::as_int), Some(1));
    assert_eq!(e.handle(Command::Ping, now), Reply::Pong);
    assert!(matches!(
        e.handle(
            Command::Query(Query {
                call_id: "nope".into(),
                from_tag: None,
                to_tag: None
            }),
            now
        ),
        Reply::Error(_)
    ));
    assert!(matches!(
        e.handle(
            Command::Answer(oa("nope", "a", Some("b"), offer_sdp("198.18.2.2", 1))),
            now
        ),
        Reply::Error(_)
    ));
    assert!(matches!(
        e.handle(
            Command::Offer(oa("bad", "a", None, b"not sdp".to_vec())),
            now
        ),
        Reply::Error(_)
    ));
    assert_eq!(e.call_count(), 1, "failed commands leave nothing");
}

#[test]
fn many_calls_leave_nothing_behind() {
    let mut e = engine_with(vec![iface("eth0", CARRIER)], 20000, 60000);
    let now = Now::read();
    for i in 0..2000 {
        let id = format!("call-{i}");
        basic_call(&mut e, &id);
        e.handle(
            Command::Delete(Delete {
                call_id: id,
                from_tag: None,
                to_tag: None,
                via_branch: None,
                delete_delay: None,
            }),
            now,
        );
    }
    assert_eq!(
        (e.call_count(), e.owned_ports(), e.ports().in_use()),
        (0, 0, 0)
    );
    assert!(e.backend().open.is_empty() && e.backend().routes.is_empty());
    assert_eq!(e.totals().managed_sessions, 2000);
}
