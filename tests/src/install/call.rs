//! A call through the installed daemon: offered and answered over ng,
//! carrying RTP both ways between two sockets in the peer namespace (50
//! packets a second each, as G.711 at 20 ms), across a restart of the
//! daemon. Every packet sent must arrive.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{PEER_ADDR, bed::Bed, check};
use crate::{
    daemon::NgClient,
    media::{rtp, udp_socket},
    paths::offer_answer,
};

const PERIOD: Duration = Duration::from_millis(20);
/// However long the restart takes, the traffic ends by then.
const LIMIT: Duration = Duration::from_secs(90);

/// What one party sent (count) and received (sequence numbers).
#[derive(Default)]
struct Party {
    sent: u16,
    received: BTreeSet<u16>,
    foreign: u64,
}

/// A call in progress; [`Call::finish`] stops it and checks it lost
/// nothing.
pub struct Call {
    id: String,
    stop: Arc<AtomicBool>,
    traffic: JoinHandle<anyhow::Result<(Party, Party)>>,
}

impl Call {
    /// Offer and answer call `id` at the daemon serving ng on `bed.ng`,
    /// with parties at `PEER_ADDR:port` and `PEER_ADDR:port + 2`, and start
    /// their media.
    pub fn start(bed: &Bed, id: &str, port: u16) -> anyhow::Result<Self> {
        let ng = NgClient::new(&bed.ns, bed.ng)?;
        let a = SocketAddr::from((PEER_ADDR, port));
        let b = SocketAddr::from((PEER_ADDR, port + 2));
        let (a_to, b_to) = offer_answer(&ng, id, a, b, &[])
            .with_context(|| format!("install test check failed: setting up call {id} over ng"))?;
        let wait = Duration::from_millis(2);
        let sa = udp_socket(&bed.peer, a, wait)?;
        let sb = udp_socket(&bed.peer, b, wait)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let traffic = std::thread::spawn(move || traffic(&sa, a_to, &sb, b_to, &flag));
        eprintln!("    call {id}: {a} -> {a_to} | {b_to} <- {b}, RTP both ways, 50 pps each");
        Ok(Self {
            id: id.to_owned(),
            stop,
            traffic,
        })
    }

    /// Stop the media and check that both parties received every packet
    /// the other sent, across whatever happened meanwhile (`during`).
    pub fn finish(self, during: &str) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let (a, b) = self
            .traffic
            .join()
            .map_err(|_| anyhow::anyhow!("the call's traffic thread panicked"))??;
        let lost =
            |from: &Party, to: &Party| (0..from.sent).filter(|s| !to.received.contains(s)).count();
        let (lost_ab, lost_ba) = (lost(&a, &b), lost(&b, &a));
        check(
            &format!(
                "call {}: its media flowed through {during}: {} + {} RTP packets, 0 lost",
                self.id, a.sent, b.sent
            ),
            lost_ab == 0 && lost_ba == 0 && a.sent > 0 && b.sent > 0,
            || {
                format!(
                    "A → B: {lost_ab} of {} lost; B → A: {lost_ba} of {} lost \
                     ({} + {} datagrams from elsewhere)",
                    a.sent, b.sent, a.foreign, b.foreign
                )
            },
        )
    }
}

/// Send one packet each way every 20 ms, read what arrives, until `stop`
/// (bounded by [`LIMIT`]); then half a second for the last ones.
fn traffic(
    sa: &UdpSocket,
    a_to: SocketAddr,
    sb: &UdpSocket,
    b_to: SocketAddr,
    stop: &AtomicBool,
) -> anyhow::Result<(Party, Party)> {
    let (mut a, mut b) = (Party::default(), Party::default());
    let started = Instant::now();
    let mut next = started;
    let receive = |s: &UdpSocket, p: &mut Party, ssrc: u32| {
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            if n >= 12 && buf[8..12] == ssrc.to_be_bytes() {
                p.received.insert(u16::from_be_bytes([buf[2], buf[3]]));
            } else {
                p.foreign += 1;
            }
        }
    };
    while !stop.load(Ordering::Relaxed) && started.elapsed() < LIMIT {
        if Instant::now() >= next {
            sa.send_to(&rtp(0xa11ce, a.sent), a_to)?;
            a.sent += 1;
            sb.send_to(&rtp(0xb0b, b.sent), b_to)?;
            b.sent += 1;
            next += PERIOD;
        }
        // Each read waits at most 2 ms.
        receive(sa, &mut a, 0xb0b);
        receive(sb, &mut b, 0xa11ce);
    }
    let tail = Instant::now();
    while tail.elapsed() < Duration::from_millis(500) {
        receive(sa, &mut a, 0xb0b);
        receive(sb, &mut b, 0xa11ce);
    }
    Ok((a, b))
}
