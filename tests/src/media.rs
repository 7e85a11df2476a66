//! Real sockets playing the call's parties: UDP sockets inside a
//! namespace, RTP packets, bounded receive loops.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::Context as _;

use crate::netns::Netns;

/// A UDP socket bound to `addr` inside `ns`, reads timing out after
/// `timeout`, with a receive buffer large enough for a test's burst:
/// frames from XDP become skbs that own a whole page, so the default
/// buffer holds only ~50 of them.
pub fn udp_socket(ns: &Netns, addr: SocketAddr, timeout: Duration) -> anyhow::Result<UdpSocket> {
    ns.enter(move || {
        let s = UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        crate::sockopt::big_rcvbuf(&s, 8 << 20)?;
        Ok(s)
    })
}

/// An RTP packet (RFC 3550 §5.1): version 2, PT 8 (PCMA), 160 bytes of
/// payload that also encode the sequence number, for checking.
pub fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 8];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..160u16).map(|i| (i as u8) ^ (seq as u8)));
    p
}

/// Receive until the socket times out or `max` datagrams arrived,
/// returning them with their sources.
pub fn drain(s: &UdpSocket, max: usize) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < max {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => got.push((buf[..n].to_vec(), from)),
            Err(_) => break,
        }
    }
    got
}

/// Turn on kernel receive timestamps (`SO_TIMESTAMPNS`) for
/// [`recv_stamped`].
pub fn stamp_arrivals(s: &UdpSocket) -> anyhow::Result<()> {
    nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        .context("SO_TIMESTAMPNS")
}

/// Receive one datagram into `buf`: its length and when the kernel
/// received it (realtime ns; the socket must have [`stamp_arrivals`] on).
pub fn recv_stamped(s: &UdpSocket, buf: &mut [u8]) -> anyhow::Result<(usize, Option<u64>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let msg = recvmsg::<SockaddrStorage>(
        std::os::fd::AsRawFd::as_raw_fd(s),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )?;
    let mut at = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmTimestampns(ts) = c {
            at = Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64);
        }
    }
    Ok((msg.bytes, at))
}
