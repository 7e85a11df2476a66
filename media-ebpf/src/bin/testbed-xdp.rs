//! Helper XDP programs for the test bed and the benchmarks; never loaded by
//! the daemon.
//!
//! - `xdp_pass`: lets native-mode `XDP_TX`/`XDP_REDIRECT` frames be delivered
//!   on a veth (the receiving peer must run an XDP program).
//! - `xdp_sink`: counts UDP packets to a port range at the far end and drops
//!   them, for rates a socket cannot keep up with.
//! - `xdp_gen`: run with `BPF_PROG_TEST_RUN` live frames on a veth to
//!   transmit one prepared frame many times, spreading it over evenly
//!   spaced destination ports (`PORTS`), or over a list of (source port,
//!   destination port) pairs (`PORT_LIST`, for relays that allocate ports
//!   at random). Live-frame pages are recycled without being
//!   re-initialised, and the relay rewrites the headers of every frame it
//!   forwards, so the generator restores the headers from `TEMPLATE` each
//!   time.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
        macros::{map, xdp},
        maps::{Array, PerCpuArray},
        programs::XdpContext,
    };
    use media_ebpf::csum::{Delta, udp_update};
    use network_types::{
        eth::{EthHdr, EtherType},
        ip::{Ipv4Hdr, Ipv6Hdr},
        udp::UdpHdr,
    };

    /// `[0]` first port, `[1]` number of ports, `[2]` step between them
    /// (0 means 2: RTP ports), for both the sink's match and the
    /// generator's spread. `[3]`: generator only, number of `PORT_LIST`
    /// entries to cycle through instead (0: use the range).
    #[map(name = "PORTS")]
    static PORTS: Array<u32> = Array::with_max_entries(4, 0);

    /// Generator: `(source port << 16) | destination port` per entry, used
    /// round-robin when `PORTS[3]` is not 0.
    #[map(name = "PORT_LIST")]
    static PORT_LIST: Array<u32> = Array::with_max_entries(PORT_LIST_MAX, 0);

    const PORT_LIST_MAX: u32 = 65536;

    /// Generator: the frame's headers (Ethernet + IP + UDP), restored into
    /// every frame before its port is set.
    #[map(name = "TEMPLATE")]
    static TEMPLATE: Array<Template> = Array::with_max_entries(1, 0);

    #[repr(C)]
    pub struct Template {
        /// Header length in bytes (even, at most 64).
        len: u32,
        bytes: [u8; 64],
    }

    /// Sink: `[0]` packets, `[1]` bytes. Generator: `[2]` frames sent.
    #[map(name = "TALLY")]
    static TALLY: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

    #[inline(always)]
    fn bump(i: u32, by: u64) {
        if let Some(c) = TALLY.get_ptr_mut(i) {
            // SAFETY: per-CPU slot, migration disabled during XDP.
            unsafe { *c += by };
        }
    }

    /// Offset of the UDP header, if this is an unfragmented UDP packet.
    #[inline(always)]
    fn udp_offset(ctx: &XdpContext) -> Option<(usize, bool)> {
        let start = ctx.data();
        let end = ctx.data_end();
        if start + EthHdr::LEN > end {
            return None;
        }
        let eth = start as *const EthHdr;
        // SAFETY: bounds checked above.
        let et = unsafe { (*eth).ether_type };
        if et == EtherType::Ipv4 as u16 {
            if start + EthHdr::LEN + Ipv4Hdr::LEN + UdpHdr::LEN > end {
                return None;
            }
            let ip = (start + EthHdr::LEN) as *const Ipv4Hdr;
            // SAFETY: bounds checked above.
            let (vihl, proto) = unsafe { ((*ip).vihl, (*ip).proto) };
            (vihl == 0x45 && proto == 17).then_some((EthHdr::LEN + Ipv4Hdr::LEN, false))
        } else if et == EtherType::Ipv6 as u16 {
            if start + EthHdr::LEN + Ipv6Hdr::LEN + UdpHdr::LEN > end {
                return None;
            }
            let ip = (start + EthHdr::LEN) as *const Ipv6Hdr;
            // SAFETY: bounds checked above.
            let nh = unsafe { (*ip).next_hdr };
            (nh == 17).then_some((EthHdr::LEN + Ipv6Hdr::LEN, true))
        } else {
            None
        }
    }

    #[inline(always)]
    fn ports() -> (u32, u32, u32) {
        let step = PORTS.get(2).copied().unwrap_or(0);
        (
            PORTS.get(0).copied().unwrap_or(0),
            PORTS.get(1).copied().unwrap_or(0),
            if step == 0 { 2 } else { step },
        )
    }

    #[xdp]
    pub fn xdp_pass(_ctx: XdpContext) -> u32 {
        XDP_PASS
    }

    #[xdp]
    pub fn xdp_sink(ctx: XdpContext) -> u32 {
        let Some((off, _)) = udp_offset(&ctx) else {
            return XDP_PASS;
        };
        let start = ctx.data();
        if start + off + UdpHdr::LEN > ctx.data_end() {
            return XDP_PASS;
        }
        let udp = (start + off) as *const UdpHdr;
        // SAFETY: bounds checked above.
        let dport = u32::from(u16::from_be_bytes(unsafe { (*udp).dst }));
        let (first, n, step) = ports();
        if dport < first || dport >= first + step * n {
            return XDP_PASS;
        }
        bump(0, 1);
        bump(1, (ctx.data_end() - start) as u64);
        XDP_DROP
    }

    #[xdp]
    pub fn xdp_gen(ctx: XdpContext) -> u32 {
        if let Some(t) = TEMPLATE.get(0) {
            let start = ctx.data();
            let end = ctx.data_end();
            let src = t.bytes.as_ptr().cast::<u16>();
            let mut i = 0usize;
            while i < 32 {
                if 2 * i + 2 > t.len as usize || start + 2 * i + 2 > end {
                    break;
                }
                // SAFETY: in bounds of the packet (checked above) and of the
                // template (i < 32); both 2-aligned.
                unsafe { ((start + 2 * i) as *mut u16).write(src.add(i).read()) };
                i += 1;
            }
        }
        let Some((off, v6)) = udp_offset(&ctx) else {
            return XDP_TX;
        };
        let start = ctx.data();
        if start + off + UdpHdr::LEN > ctx.data_end() {
            return XDP_TX;
        }
        let udp = (start + off) as *mut UdpHdr;
        let (first, n, step) = ports();
        let listed = PORTS.get(3).copied().unwrap_or(0);
        let sent = TALLY.get(2).copied().unwrap_or(0);
        bump(2, 1);
        if listed > 0 {
            let i = (sent % u64::from(listed)) as u32;
            if let Some(&e) = PORT_LIST.get(i) {
                let (sport, dport) = (((e >> 16) as u16).to_be_bytes(), (e as u16).to_be_bytes());
                // SAFETY: bounds checked above.
                unsafe {
                    let d = Delta::new()
                        .bytes2(&(*udp).src, &sport)
                        .bytes2(&(*udp).dst, &dport);
                    (*udp).src = sport;
                    (*udp).dst = dport;
                    (*udp).check =
                        udp_update(u16::from_be_bytes((*udp).check), d, !v6).to_be_bytes();
                }
            }
        } else if n > 1 {
            let port = (first + step * (sent % u64::from(n)) as u32) as u16;
            // SAFETY: bounds checked above.
            unsafe {
                let old = (*udp).dst;
                let new = port.to_be_bytes();
                let d = Delta::new().bytes2(&old, &new);
                (*udp).dst = new;
                (*udp).check = udp_update(u16::from_be_bytes((*udp).check), d, !v6).to_be_bytes();
            }
        }
        XDP_TX
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}
