//! The generator's fallback where the kernel refuses BPF_PROG_TEST_RUN
//! live frames (EPERM): the same frames, their ports spread the same way
//! as `xdp_gen` spreads them, written to an AF_PACKET socket on the same
//! device with `sendmmsg`. Each frame then crosses the veth as an skb and
//! is turned into an XDP frame at the relay's end: the relay's path is
//! the same, the generator's own cost higher (its rate is lower).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
};

/// Frames per `sendmmsg` call.
const BATCH: usize = 256;

/// How each frame's UDP ports are chosen, frame `k` of the generator's
/// life (as `xdp_gen` does from its `PORTS` and `PORT_LIST` maps).
#[derive(Clone, Debug)]
pub enum Spread {
    /// Destination port `first + step * (k % n)`; the frame's own if
    /// `n` ≤ 1.
    Step { first: u16, n: u32, step: u32 },
    /// (source, destination) `list[k % len]`.
    List(Vec<(u16, u16)>),
}

impl Spread {
    /// (source, destination) of frame `k`, given the frame's own.
    fn ports(&self, k: u64, own: (u16, u16)) -> (u16, u16) {
        match self {
            Self::Step { first, n, step } if *n > 1 => {
                let i = (k % u64::from(*n)) as u32;
                (own.0, (u32::from(*first) + step * i) as u16)
            }
            Self::Step { .. } => own,
            Self::List(l) => l[(k % l.len() as u64) as usize],
        }
    }
}

/// One's-complement update of a 16-bit checksum for a 16-bit word that
/// changed from `old` to `new` (RFC 1624, eqn. 3).
fn csum_update(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends copies of one frame out of a device (see the module).
pub struct PacketSender {
    fd: OwnedFd,
    frame: Vec<u8>,
    /// Where the UDP header starts in `frame`.
    udp: usize,
    /// IPv4 (a zero UDP checksum means none).
    v4: bool,
    bufs: Vec<Vec<u8>>,
}

impl PacketSender {
    /// A socket on `ifindex` of the calling thread's network namespace,
    /// for `frame` (Ethernet + IP + UDP, its UDP header at `udp`).
    pub fn open(ifindex: u32, frame: &[u8], udp: usize) -> io::Result<Self> {
        if frame.len() < udp + 8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame shorter than its headers",
            ));
        }
        // Protocol 0: the socket sends only, nothing is queued to it.
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor of our own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: bind(2) with a sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // Straight to the device's transmit, as a NIC's driver would get
        // it (no qdisc between).
        let one: libc::c_int = 1;
        // SAFETY: setsockopt(2) with an int of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        let v4 = frame.get(12..14) == Some(&[0x08, 0x00][..]);
        Ok(Self {
            fd,
            frame: frame.to_vec(),
            udp,
            v4,
            bufs: vec![frame.to_vec(); BATCH],
        })
    }

    /// Send `n` frames, frame `k` (counted by `sent` over every call)
    /// with the ports `spread` gives it.
    pub fn send(&mut self, n: u32, spread: &Spread, sent: &AtomicU64) -> io::Result<()> {
        let u = self.udp;
        let word = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
        let own = (word(&self.frame, u), word(&self.frame, u + 2));
        let check = word(&self.frame, u + 6);
        let mut left = n as usize;
        while left > 0 {
            let m = left.min(BATCH);
            let k0 = sent.fetch_add(m as u64, Ordering::Relaxed);
            for (i, buf) in self.bufs[..m].iter_mut().enumerate() {
                let (s, d) = spread.ports(k0 + i as u64, own);
                let mut c = csum_update(csum_update(check, own.0, s), own.1, d);
                if self.v4 && check == 0 {
                    c = 0;
                } else if c == 0 {
                    c = 0xffff;
                }
                buf[u..u + 2].copy_from_slice(&s.to_be_bytes());
                buf[u + 2..u + 4].copy_from_slice(&d.to_be_bytes());
                buf[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
            }
            let mut iov: Vec<libc::iovec> = self.bufs[..m]
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            // SAFETY: all-zero is a valid mmsghdr (no name, no control).
            let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; m];
            for (h, v) in msgs.iter_mut().zip(iov.iter_mut()) {
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
            }
            let mut done = 0;
            while done < m {
                // SAFETY: `msgs[done..]` point at iovecs and buffers that
                // outlive the call.
                let r = unsafe {
                    libc::sendmmsg(
                        self.fd.as_raw_fd(),
                        msgs[done..].as_mut_ptr(),
                        (m - done) as u32,
                        0,
                    )
                };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        // The device could not take it (the far end's
                        // ring full): dropped, as a live frame the veth
                        // cannot queue is; the frame was offered.
                        Some(libc::ENOBUFS) => {
                            done += 1;
                            continue;
                        }
                        _ => return Err(e),
                    }
                }
                done += r as usize;
            }
            left -= m;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one's-complement sum of `b` (big-endian 16-bit words).
    fn sum(b: &[u8]) -> u16 {
        let mut s: u32 = b
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn checksum_updates_match_a_full_sum() {
        // A checksum over words including 1234 and 5678 ...
        let mut words = vec![0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x00, 0x01];
        let check = !sum(&words);
        // ... then 5678 becomes 4321: the update equals the new full sum.
        words[2..4].copy_from_slice(&0x4321u16.to_be_bytes());
        assert_eq!(csum_update(check, 0x5678, 0x4321), !sum(&words));
        assert_eq!(csum_update(check, 0x5678, 0x5678), check);
    }

    #[test]
    fn ports_spread_as_xdp_gen_spreads_them() {
        let s = Spread::Step {
            first: 2000,
            n: 3,
            step: 4,
        };
        let got: Vec<u16> = (0..5).map(|k| s.ports(k, (7, 9)).1).collect();
        assert_eq!(got, vec![2000, 2004, 2008, 2000, 2004]);
        assert_eq!(s.ports(1, (7, 9)).0, 7);
        let one = Spread::Step {
            first: 2000,
            n: 1,
            step: 4,
        };
        assert_eq!(one.ports(5, (7, 9)), (7, 9));
        let l = Spread::List(vec![(1, 2), (3, 4)]);
        assert_eq!((l.ports(0, (7, 9)), l.ports(3, (7, 9))), ((1, 2), (3, 4)));
    }
}
